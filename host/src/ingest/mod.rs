//! Inbound path pieces that the host owns between the socket and the dispatcher: fragment
//! reassembly of multi-frame events. Must not decode payloads (that is the plugin's job).

pub mod reassembly;
