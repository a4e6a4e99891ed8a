//! Guest SDK for switchboard channel plugins.
//!
//! A plugin crate depends on this crate, implements [`Channel`] on one type — `decode` and the
//! exports its manifest declares; every other export has a default answer that says clearly
//! that it is not supported — and exports it with [`export_plugin!`]:
//!
//! ```ignore
//! use switchboard_plugin_sdk::{Channel, Decoded, PluginError};
//! struct MyChannel;
//! impl Channel for MyChannel {
//!     fn decode(payload: Vec<u8>) -> Result<Decoded, PluginError> { /* … */ }
//!     // verify_webhook, deliver, … as the manifest declares
//! }
//! switchboard_plugin_sdk::manifest!("../manifest.toml");
//! switchboard_plugin_sdk::export_plugin!(MyChannel);
//! ```
//!
//! (A plugin may also implement the six generated `Guest` traits itself and export them with
//! [`export_channel_plugin!`], as the bundled channels do.)
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the result is a component the
//! host loads. `switchboard plugins new NAME` writes a project that does all of this.
//!
//! Helpers for the common work:
//! - [`json`]: parse a payload into your serde types, `invalid-input` naming what is wrong;
//! - [`signature`]: HMAC-SHA256 request signatures through the host's native `crypto`, compared
//!   in constant time ([`secret::eq`] is the one constant-time comparison of the host and its
//!   plugins);
//! - [`token`]: an access token cached in the host's `kv` until it expires;
//! - [`markdown`]: the hook that turns an agent's markdown reply into the channel's text;
//! - [`now_ms`]: the host's clock.
//!
//! Everything here is plain Rust: the host-facing functions ([`log`], [`http`], [`kv`], …) are
//! only callable inside the host, but the types compile natively so plugin logic can be unit
//! tested with `cargo test`.

#![deny(missing_docs)]

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

mod channel;
pub mod json;
pub mod markdown;
pub mod secret;
pub mod signature;
pub mod token;

pub use bindings::export_channel_plugin;
pub use bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
pub use bindings::switchboard::channel::types;
pub use bindings::switchboard::channel::{clock, crypto, http, installation, kv, log};
pub use channel::{Channel, not_supported};
pub use decoder::Decoded;
pub use types::PluginError;

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

/// Exports a type implementing [`Channel`] as the plugin's component exports (in a wasm build;
/// natively the component's export symbols cannot link, so there it only marks the type's
/// exports as used and the crate's tests build). Write it once, at the crate root:
///
/// ```ignore
/// switchboard_plugin_sdk::export_plugin!(MyChannel);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($($ty:tt)*) => {
        #[cfg(target_family = "wasm")]
        $crate::export_channel_plugin!($($ty)*);
        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            // Referenced, so a native build does not report the plugin's code as dead.
            let _ = <$($ty)* as $crate::decoder::Guest>::decode;
            let _ = <$($ty)* as $crate::transport::Guest>::verify_webhook;
            let _ = <$($ty)* as $crate::transport::Guest>::classify_frame;
            let _ = <$($ty)* as $crate::commands::Guest>::parse;
            let _ = <$($ty)* as $crate::outbound::Guest>::deliver;
            let _ = <$($ty)* as $crate::lifecycle::Guest>::on_install;
        };
    };
}

/// Milliseconds since the Unix epoch: the host's `clock` inside the host (the manifest must
/// request `clock = true`), the system clock in a native build (a plugin's unit tests).
#[must_use]
pub fn now_ms() -> i64 {
    #[cfg(target_family = "wasm")]
    {
        clock::now_ms()
    }
    #[cfg(not(target_family = "wasm"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
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
