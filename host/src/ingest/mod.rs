//! Inbound path pieces that the host owns between the socket and the dispatcher: fragment
//! reassembly of multi-frame events, the decode step that drives a plugin over one inbound unit
//! (`pipeline`), one payload end to end (`service`), the long connection of one installation
//! (`connector`) and which installations this process holds connections for (`supervisor`).
//! Must not decode payloads itself (that is the plugin's job).

pub mod connector;
pub mod pipeline;
pub mod poller;
pub mod reassembly;
pub mod service;
pub mod supervisor;
