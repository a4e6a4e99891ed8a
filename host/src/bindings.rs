//! Host-side bindings of the `switchboard:channel` world, generated from `wit/`: the import
//! traits `capabilities` implements and the export wrappers `runtime` calls. A leaf: it imports
//! no other module of this crate.
//!
//! Exports are called with `call_async`; the `http` and `kv` imports are async because they wait
//! on the network and the database. Everything else is plain synchronous code.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "channel-plugin",
    imports: {
        "switchboard:channel/http": async,
        "switchboard:channel/kv": async,
    },
    exports: { default: async },
});

pub use exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
// `self::`: doc-tests see this crate as the extern crate `switchboard` too, which would make a
// bare `switchboard::` ambiguous with the generated module of the same name.
pub use self::switchboard::channel::{http, types};
