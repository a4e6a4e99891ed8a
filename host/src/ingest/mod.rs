//! Inbound path pieces that the host owns between the socket and the dispatcher: fragment
//! reassembly of multi-frame events, and the decode step that drives a plugin over one inbound
//! unit (`pipeline`). Must not decode payloads itself (that is the plugin's job).

pub mod pipeline;
pub mod reassembly;
pub mod service;
