//! The domain: plain data types and small traits shared by `store`, `runtime` and `capabilities`
//! — the installation a plugin call runs for and its secrets ([`InstallationContext`],
//! [`Secret`]) and the injectable wall clock ([`Clock`], [`SystemClock`]).
//!
//! A leaf: it must not import any other module of this crate, nor wasmtime or SQL, so every
//! layer can depend on it without depending on each other.

mod clock;
mod installation;

pub use clock::{Clock, SystemClock};
pub use installation::{InstallationContext, Secret};
