//! Guest SDK for switchboard channel plugins.
//!
//! A plugin crate depends on this crate, implements the six `Guest` traits of the
//! `switchboard:channel` world (see `wit/channel.wit`) on one type, and exports it:
//!
//! ```ignore
//! use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{commands, decoder};
//! struct MyChannel;
//! impl decoder::Guest for MyChannel { /* … */ }
//! // … transport, enricher, commands, outbound, lifecycle …
//! switchboard_plugin_sdk::export_channel_plugin!(MyChannel);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2`; the result is a component the host loads.
//! Declare the plugin's manifest with [`manifest!`] so the host can read it from the component.
//!
//! [`secret::eq`] is the one constant-time comparison of tokens, signatures and digests, shared
//! by the plugins and the host.
//!
//! Everything here is plain Rust: the host-facing functions ([`log`], [`http`], [`kv`], …) are
//! only callable inside the host, but the types compile natively so plugin logic can be unit
//! tested with `cargo test`.

/// Generated bindings of the `switchboard:channel` world (imports and export traits).
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "channel-plugin",
        pub_export_macro: true,
        export_macro_name: "export_channel_plugin",
        default_bindings_module: "switchboard_plugin_sdk::bindings",
    });
}

pub mod secret;

pub use bindings::export_channel_plugin;
pub use bindings::switchboard::channel::types;
pub use bindings::switchboard::channel::{clock, crypto, http, installation, kv, log};

/// Version of the WIT contract this SDK was generated from (the `switchboard:channel` package).
pub const CONTRACT_VERSION: &str = "0.2.0";

/// Name of the custom section the host reads the plugin manifest from.
pub const MANIFEST_SECTION: &str = "switchboard-manifest";

/// Embeds a plugin manifest (TOML) in the component as the `switchboard-manifest` custom section.
///
/// ```ignore
/// switchboard_plugin_sdk::manifest!("../manifest.toml");
/// ```
#[macro_export]
macro_rules! manifest {
    ($path:literal) => {
        #[cfg(target_family = "wasm")]
        #[used]
        #[unsafe(link_section = "switchboard-manifest")]
        static SWITCHBOARD_MANIFEST: [u8; include_bytes!($path).len()] = *include_bytes!($path);
    };
}

/// Writes a log record through the host (no-op when not running inside the host).
pub fn log_write(level: log::Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_family = "wasm")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        log::write(level, message, &fields);
    }
    #[cfg(not(target_family = "wasm"))]
    let _ = (level, message, fields);
}

/// Installs a panic hook that forwards the panic message and location through the host `log`
/// import before the guest aborts, so the host can report *why* a call trapped.
/// (The host also captures the guest's stderr, which receives Rust's default panic output.)
pub fn install_panic_hook() {
    #[cfg(target_family = "wasm")]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = info.to_string();
                log::write(
                    log::Level::Error,
                    "guest panicked",
                    &[("panic".to_string(), message)],
                );
            }));
        });
    }
}
