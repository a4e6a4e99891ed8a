//! The domain: plain data types and small traits shared by `store`, `runtime` and `capabilities`
//! — the installation a plugin call runs for and its secrets ([`InstallationContext`],
//! [`Secret`]), the injectable wall clock ([`Clock`], [`SystemClock`]) and the plugin kv
//! vocabulary with the backend trait that the `kv` capability calls and the store implements
//! ([`KvBackend`], [`KvScope`], [`KvQuota`], [`KvError`]) and a channel's installation schema
//! ([`schema`]).
//!
//! A leaf: it must not import any other module of this crate, nor wasmtime or SQL, so every
//! layer can depend on it without depending on each other.

mod clock;
mod installation;
mod kv;
pub mod notice;
pub mod schema;

pub use clock::{Clock, SystemClock};
pub use installation::{InstallationContext, Secret};
pub use kv::{KvBackend, KvError, KvFuture, KvQuota, KvScope};
