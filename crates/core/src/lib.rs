//! switchboard below the wasm runtime: the leaf [`domain`] types, input [`hygiene`] and the
//! SQLite/PostgreSQL [`store`]. It depends on no wasm engine, HTTP server or plugin binding, so
//! the store and its tests compile and run without wasmtime; the `switchboard` host crate
//! re-exports these modules under the same names.

pub mod domain;
pub mod hygiene;
pub mod store;
