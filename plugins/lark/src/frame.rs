//! The `pbbp2.Frame` protobuf message that every binary WebSocket message of the Lark long
//! connection carries (lark-protocol §1.4).
//!
//! The schema is proto2: fields 1–4 are `required` and therefore always encoded, even when zero
//! (a proto3-style encoder would drop them and the server would reject the frame). Fields 6–9 are
//! `optional`; their presence is tracked so that a decoded frame re-encodes byte for byte — the Go
//! server emits empty fields 6/7/9, other senders omit them.

use prost::Message;

/// `method` value of a control frame (ping, pong).
pub const METHOD_CONTROL: i32 = 0;
/// `method` value of a data frame (events, ACKs).
pub const METHOD_DATA: i32 = 1;

/// Header key holding the frame kind (`ping`, `pong`, `event`, `card`).
pub const HEADER_TYPE: &str = "type";
/// Header key holding the transport message id shared by the fragments of one payload.
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Header key holding the number of fragments.
pub const HEADER_SUM: &str = "sum";
/// Header key holding the 0-based fragment index.
pub const HEADER_SEQ: &str = "seq";
/// Header key holding the server trace id.
pub const HEADER_TRACE_ID: &str = "trace_id";
/// Header key the client appends to an ACK: its processing time in milliseconds.
pub const HEADER_BIZ_RT: &str = "biz_rt";

/// One key/value header of a frame (`pbbp2.Header`).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Header {
    /// Header name, e.g. `type`.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Header value; always a string on the wire, numbers are decimal.
    #[prost(string, required, tag = "2")]
    pub value: String,
}

impl Header {
    /// Builds a header from a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// One long-connection frame (`pbbp2.Frame`).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Frame {
    /// Server-assigned sequence id; echoed in the ACK, 0 in pings.
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    /// Server-assigned log id; echoed in the ACK, 0 in pings.
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    /// The `service_id` of the connection URL.
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    /// [`METHOD_CONTROL`] or [`METHOD_DATA`].
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    /// Headers in wire order; lookups take the first match.
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    /// Unused by Lark; kept for byte-exact round trips.
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    /// Unused by Lark; kept for byte-exact round trips.
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    /// JSON bytes (event, pong config, ACK response), absent in pings.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    /// String log id; echoed in the ACK when present.
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

impl Frame {
    /// Decodes one binary WebSocket message. Unknown fields are skipped; an empty buffer, a
    /// truncated buffer or a known field with the wrong wire type is an error.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.is_empty() {
            return Err(FrameError(
                "empty frame: a pbbp2 frame has at least its four required fields".into(),
            ));
        }
        Frame::decode(bytes).map_err(|err| FrameError(format!("malformed pbbp2 frame: {err}")))
    }

    /// Encodes the frame (fields in ascending tag order, headers in order).
    pub fn encode_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|header| header.key == key)
            .map(|header| header.value.as_str())
    }

    /// The `type` header (empty when absent).
    pub fn kind(&self) -> &str {
        self.header(HEADER_TYPE).unwrap_or("")
    }

    /// The application-level ping a client sends right after connecting and then every ping
    /// interval: `SeqID=0, LogID=0, service, method=0, headers=[type=ping]`, no payload.
    pub fn ping(service_id: i32) -> Self {
        Frame {
            service: service_id,
            method: METHOD_CONTROL,
            headers: vec![Header::new(HEADER_TYPE, "ping")],
            ..Frame::default()
        }
    }
}
