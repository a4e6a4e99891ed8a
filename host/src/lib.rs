//! switchboard: a WebAssembly-pluggable integration host that connects chat channels to AI
//! agents.
//!
//! The host owns timers, storage and networking; channel plugins (wasm components implementing
//! the `switchboard:channel` WIT contract in `wit/`) decode, enrich, parse commands and render
//! replies. Start with [`runtime::Runtime`] (loading and calling plugins) and
//! [`capabilities`] (what plugins may touch). `ARCHITECTURE.md` maps the whole data flow.

pub mod agents;
pub mod api;
pub mod app;
pub mod approvals;
pub mod auth;
pub mod batch;
pub mod bindings;
pub mod blobs;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dispatch;
pub use switchboard_core::domain;
pub use switchboard_core::hygiene;
pub mod ingest;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod onboarding;
pub mod pairing;
pub mod retention;
pub mod runs;
pub mod runtime;
pub use switchboard_core::store;
