//! The `pbbp2.Frame` protobuf message that every binary WebSocket message of the Lark long
//! connection carries (lark-protocol §1.4).
//!
//! The schema is proto2: fields 1–4 are `required` and therefore always encoded, even when zero
//! (a proto3-style encoder would drop them and the server would reject the frame). Fields 6–9 are
//! `optional`; their presence is tracked so that a decoded frame re-encodes byte for byte — the Go
//! server emits empty fields 6/7/9, other senders omit them.
//!
//! [`Frame`] is the owned prost message. The hot paths (classifying inbound frames, building
//! ACKs) use [`FrameRef`] instead: a reader that accepts and rejects exactly the buffers prost
//! does, but borrows the header strings and the payload from the input, so a frame is never
//! copied to be looked at; [`FrameRef::encode_ack`] writes the ACK with prost's byte layout.

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

/// One header of a [`FrameRef`], borrowed from the frame bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    /// Header name.
    pub key: &'a str,
    /// Header value.
    pub value: &'a str,
}

/// A `pbbp2.Frame` decoded without copying: strings and payload borrow from the input.
///
/// [`FrameRef::parse`] accepts exactly the buffers [`Frame::decode_bytes`] accepts (same varint,
/// key, wire-type, length, UTF-8 and group-nesting rules, unknown fields skipped, a repeated
/// scalar field keeps its last value) and yields the same field values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Field 1, SeqID.
    pub seq_id: u64,
    /// Field 2, LogID.
    pub log_id: u64,
    /// Field 3, service.
    pub service: i32,
    /// Field 4, method.
    pub method: i32,
    /// Field 5, headers in wire order; lookups take the first match.
    pub headers: Vec<HeaderRef<'a>>,
    /// Field 6.
    pub payload_encoding: Option<&'a str>,
    /// Field 7.
    pub payload_type: Option<&'a str>,
    /// Field 8, the payload bytes.
    pub payload: Option<&'a [u8]>,
    /// Field 9.
    pub log_id_new: Option<&'a str>,
}

/// prost's nesting budget for skipping groups (`RECURSION_LIMIT`).
const RECURSION_LIMIT: u32 = 100;

/// Protobuf wire types.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_START_GROUP: u8 = 3;
const WIRE_END_GROUP: u8 = 4;
const WIRE_FIXED32: u8 = 5;

impl<'a> FrameRef<'a> {
    /// Decodes one binary WebSocket message, like [`Frame::decode_bytes`] but borrowing.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.is_empty() {
            return Err(FrameError(
                "empty frame: a pbbp2 frame has at least its four required fields".into(),
            ));
        }
        Self::parse_fields(bytes).map_err(|err| FrameError(format!("malformed pbbp2 frame: {err}")))
    }

    fn parse_fields(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut frame = FrameRef {
            headers: Vec::with_capacity(8),
            ..FrameRef::default()
        };
        let mut reader = WireReader::new(bytes);
        while !reader.is_empty() {
            let (tag, wire_type) = reader.key()?;
            match tag {
                1 => frame.seq_id = reader.varint_field("Frame.SeqID", wire_type)?,
                2 => frame.log_id = reader.varint_field("Frame.LogID", wire_type)?,
                3 => frame.service = reader.varint_field("Frame.service", wire_type)? as i32,
                4 => frame.method = reader.varint_field("Frame.method", wire_type)? as i32,
                5 => {
                    let body = reader.len_field("Frame.headers", wire_type)?;
                    frame.headers.push(parse_header(body)?);
                }
                6 => {
                    frame.payload_encoding =
                        Some(reader.str_field("Frame.PayloadEncoding", wire_type)?)
                }
                7 => frame.payload_type = Some(reader.str_field("Frame.PayloadType", wire_type)?),
                8 => frame.payload = Some(reader.len_field("Frame.payload", wire_type)?),
                9 => frame.log_id_new = Some(reader.str_field("Frame.LogIDNew", wire_type)?),
                _ => reader.skip(tag, wire_type, RECURSION_LIMIT)?,
            }
        }
        Ok(frame)
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|header| header.key == key)
            .map(|header| header.value)
    }

    /// The `type` header (empty when absent).
    pub fn kind(&self) -> &'a str {
        self.header(HEADER_TYPE).unwrap_or("")
    }

    /// Encodes the ACK of this frame, byte for byte what prost encodes for the [`Frame`] with:
    /// the same SeqID, LogID, service and method; the headers followed by `extra_header`; fields
    /// 6, 7 and 9 only when non-empty; and `payload`.
    pub fn encode_ack(&self, extra_header: HeaderRef<'_>, payload: &[u8]) -> Vec<u8> {
        let non_empty = |value: Option<&'a str>| value.filter(|value| !value.is_empty());
        let optional = [
            (6, non_empty(self.payload_encoding).map(str::as_bytes)),
            (7, non_empty(self.payload_type).map(str::as_bytes)),
            (8, Some(payload)),
            (9, non_empty(self.log_id_new).map(str::as_bytes)),
        ];
        let headers = || self.headers.iter().copied().chain([extra_header]);
        let len = 4
            + varint_len(self.seq_id)
            + varint_len(self.log_id)
            + varint_len(self.service as u64)
            + varint_len(self.method as u64)
            + headers()
                .map(|header| len_field_len(header_len(header)))
                .sum::<usize>()
            + optional
                .iter()
                .filter_map(|(_, value)| value.map(|value| len_field_len(value.len())))
                .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        put_key(1, WIRE_VARINT, &mut out);
        put_varint(self.seq_id, &mut out);
        put_key(2, WIRE_VARINT, &mut out);
        put_varint(self.log_id, &mut out);
        put_key(3, WIRE_VARINT, &mut out);
        // int32 is encoded sign-extended to 64 bits, as prost does.
        put_varint(self.service as u64, &mut out);
        put_key(4, WIRE_VARINT, &mut out);
        put_varint(self.method as u64, &mut out);
        for header in headers() {
            put_key(5, WIRE_LEN, &mut out);
            put_varint(header_len(header) as u64, &mut out);
            put_bytes(1, header.key.as_bytes(), &mut out);
            put_bytes(2, header.value.as_bytes(), &mut out);
        }
        for (tag, value) in optional {
            if let Some(value) = value {
                put_bytes(tag, value, &mut out);
            }
        }
        debug_assert_eq!(out.len(), len);
        out
    }
}

/// Decodes one `pbbp2.Header` message body.
fn parse_header(body: &[u8]) -> Result<HeaderRef<'_>, WireError> {
    let mut header = HeaderRef::default();
    let mut reader = WireReader::new(body);
    while !reader.is_empty() {
        let (tag, wire_type) = reader.key()?;
        match tag {
            1 => header.key = reader.str_field("Header.key", wire_type)?,
            2 => header.value = reader.str_field("Header.value", wire_type)?,
            // prost skips a nested message's unknown fields one recursion level down.
            _ => reader.skip(tag, wire_type, RECURSION_LIMIT - 1)?,
        }
    }
    Ok(header)
}

/// Why the wire bytes are not a valid message. Small and `Copy`, so the reader's results stay
/// cheap on the success path; the text (prost's wording) is only built for an error.
#[derive(Debug, Clone, Copy)]
struct WireError {
    /// The field being read, e.g. `Frame.headers`.
    field: Option<&'static str>,
    reason: WireReason,
}

#[derive(Debug, Clone, Copy)]
enum WireReason {
    InvalidVarint,
    InvalidKey(u64),
    InvalidWireTypeValue(u8),
    InvalidTag,
    BufferUnderflow,
    UnexpectedWireType { actual: u8, expected: u8 },
    InvalidString,
    RecursionLimit,
    UnexpectedEndGroup,
}

impl WireError {
    #[cold]
    fn new(reason: WireReason) -> Self {
        WireError {
            field: None,
            reason,
        }
    }

    #[cold]
    fn in_field(self, field: &'static str) -> Self {
        WireError {
            field: Some(field),
            ..self
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed to decode Protobuf message: ")?;
        if let Some(field) = self.field {
            write!(f, "{field}: ")?;
        }
        match self.reason {
            WireReason::InvalidVarint => f.write_str("invalid varint"),
            WireReason::InvalidKey(key) => write!(f, "invalid key value: {key}"),
            WireReason::InvalidWireTypeValue(value) => {
                write!(f, "invalid wire type value: {value}")
            }
            WireReason::InvalidTag => f.write_str("invalid tag value: 0"),
            WireReason::BufferUnderflow => f.write_str("buffer underflow"),
            WireReason::UnexpectedWireType { actual, expected } => {
                write!(f, "invalid wire type: {actual} (expected {expected})")
            }
            WireReason::InvalidString => {
                f.write_str("invalid string value: data is not UTF-8 encoded")
            }
            WireReason::RecursionLimit => f.write_str("recursion limit reached"),
            WireReason::UnexpectedEndGroup => f.write_str("unexpected end group tag"),
        }
    }
}

/// A cursor over protobuf wire bytes.
struct WireReader<'a> {
    rest: &'a [u8],
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Fast path: one byte (keys, small lengths and values).
        if let Some(&byte) = self.rest.first()
            && byte < 0x80
        {
            self.rest = &self.rest[1..];
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for (index, &byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                // The tenth byte may only carry the top bit of a u64.
                if index == 9 && byte >= 0x02 {
                    break;
                }
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(WireError::new(WireReason::InvalidVarint))
    }

    /// A field key: (tag, wire type).
    #[inline]
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::new(WireReason::InvalidKey(key)));
        }
        let wire_type = (key & 0x07) as u8;
        if wire_type > WIRE_FIXED32 {
            return Err(WireError::new(WireReason::InvalidWireTypeValue(wire_type)));
        }
        let tag = key as u32 >> 3;
        if tag < 1 {
            return Err(WireError::new(WireReason::InvalidTag));
        }
        Ok((tag, wire_type))
    }

    #[inline]
    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        if len > self.rest.len() as u64 {
            return Err(WireError::new(WireReason::BufferUnderflow));
        }
        let (taken, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Ok(taken)
    }

    #[inline]
    fn expect_wire_type(field: &'static str, expected: u8, actual: u8) -> Result<(), WireError> {
        if expected == actual {
            Ok(())
        } else {
            Err(WireError::new(WireReason::UnexpectedWireType { actual, expected }).in_field(field))
        }
    }

    #[inline]
    fn varint_field(&mut self, field: &'static str, wire_type: u8) -> Result<u64, WireError> {
        Self::expect_wire_type(field, WIRE_VARINT, wire_type)?;
        self.varint().map_err(|err| err.in_field(field))
    }

    #[inline]
    fn len_field(&mut self, field: &'static str, wire_type: u8) -> Result<&'a [u8], WireError> {
        Self::expect_wire_type(field, WIRE_LEN, wire_type)?;
        let len = self.varint().map_err(|err| err.in_field(field))?;
        self.take(len).map_err(|err| err.in_field(field))
    }

    #[inline]
    fn str_field(&mut self, field: &'static str, wire_type: u8) -> Result<&'a str, WireError> {
        let bytes = self.len_field(field, wire_type)?;
        std::str::from_utf8(bytes)
            .map_err(|_| WireError::new(WireReason::InvalidString).in_field(field))
    }

    /// Skips an unknown field, groups included, within prost's nesting `budget`.
    fn skip(&mut self, tag: u32, wire_type: u8, budget: u32) -> Result<(), WireError> {
        if budget == 0 {
            return Err(WireError::new(WireReason::RecursionLimit));
        }
        let len = match wire_type {
            WIRE_VARINT => self.varint().map(|_| 0)?,
            WIRE_FIXED64 => 8,
            WIRE_LEN => self.varint()?,
            WIRE_START_GROUP => loop {
                let (inner_tag, inner_wire_type) = self.key()?;
                if inner_wire_type == WIRE_END_GROUP {
                    if inner_tag != tag {
                        return Err(WireError::new(WireReason::UnexpectedEndGroup));
                    }
                    break 0;
                }
                self.skip(inner_tag, inner_wire_type, budget - 1)?;
            },
            WIRE_END_GROUP => return Err(WireError::new(WireReason::UnexpectedEndGroup)),
            _ => 4,
        };
        self.take(len).map(|_| ())
    }
}

fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encoded size of a length-delimited field with a one-byte key.
fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn header_len(header: HeaderRef<'_>) -> usize {
    len_field_len(header.key.len()) + len_field_len(header.value.len())
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes a key with a tag below 16 (one byte).
fn put_key(tag: u8, wire_type: u8, out: &mut Vec<u8>) {
    out.push((tag << 3) | wire_type);
}

fn put_bytes(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    put_key(tag, WIRE_LEN, out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames covering every field, negative and large varints, empty and absent optionals.
    fn samples() -> Vec<Frame> {
        let full = Frame {
            seq_id: u64::MAX,
            log_id: 1 << 40,
            service: -7,
            method: METHOD_DATA,
            headers: vec![
                Header::new("type", "event"),
                Header::new("", ""),
                Header::new("trace_id", "é".repeat(100)),
            ],
            payload_encoding: Some("gzip".into()),
            payload_type: Some(String::new()),
            payload: Some(vec![0xff; 300]),
            log_id_new: Some("l".into()),
        };
        vec![
            Frame::default(),
            Frame::ping(4921),
            full,
            Frame {
                method: METHOD_DATA,
                payload: Some(Vec::new()),
                ..Frame::default()
            },
        ]
    }

    fn as_ref_fields(frame: &FrameRef<'_>) -> Frame {
        Frame {
            seq_id: frame.seq_id,
            log_id: frame.log_id,
            service: frame.service,
            method: frame.method,
            headers: frame
                .headers
                .iter()
                .map(|header| Header::new(header.key, header.value))
                .collect(),
            payload_encoding: frame.payload_encoding.map(str::to_string),
            payload_type: frame.payload_type.map(str::to_string),
            payload: frame.payload.map(<[u8]>::to_vec),
            log_id_new: frame.log_id_new.map(str::to_string),
        }
    }

    #[test]
    fn borrowed_reader_matches_prost() {
        for frame in samples() {
            let bytes = frame.encode_bytes();
            assert_eq!(as_ref_fields(&FrameRef::parse(&bytes).unwrap()), frame);
            // Every prefix and every single-byte corruption is accepted or rejected alike.
            for cut in 0..bytes.len() {
                let prefix = &bytes[..cut];
                let prost = Frame::decode_bytes(prefix).ok();
                let ours = FrameRef::parse(prefix).ok().map(|f| as_ref_fields(&f));
                assert_eq!(ours, prost, "prefix of {cut} bytes");
            }
            for at in 0..bytes.len() {
                for byte in [0x00, 0x07, 0x0b, 0x80, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[at] = byte;
                    let prost = Frame::decode_bytes(&corrupt).ok();
                    let ours = FrameRef::parse(&corrupt).ok().map(|f| as_ref_fields(&f));
                    assert_eq!(ours, prost, "byte {at} set to {byte:#x}");
                }
            }
        }
    }

    #[test]
    fn unknown_fields_groups_and_repeats_follow_prost() {
        let cases: [&[u8]; 6] = [
            // Field 20 as a group holding a varint, then method 1.
            &[0xa3, 0x01, 0x08, 0x05, 0xa4, 0x01, 0x20, 0x01],
            // A group closed with the wrong tag.
            &[0xa3, 0x01, 0xac, 0x01],
            // Repeated scalar and optional fields: the last one wins.
            &[0x18, 0x01, 0x18, 0x02, 0x32, 0x01, b'a', 0x32, 0x00],
            // A ten-byte varint whose last byte overflows u64.
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            // Invalid UTF-8 in a header value.
            &[0x2a, 0x04, 0x12, 0x02, 0xc3, 0x28],
            // Wire type 6 does not exist.
            &[0x0e],
        ];
        for bytes in cases {
            let prost = Frame::decode_bytes(bytes).ok();
            let ours = FrameRef::parse(bytes).ok().map(|f| as_ref_fields(&f));
            assert_eq!(ours, prost, "{bytes:02x?}");
        }
    }

    #[test]
    fn ack_encoding_matches_prost() {
        for frame in samples() {
            let bytes = frame.encode_bytes();
            let inbound = FrameRef::parse(&bytes).unwrap();
            let extra = HeaderRef {
                key: HEADER_BIZ_RT,
                value: "12",
            };
            let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
            let mut headers = frame.headers.clone();
            headers.push(Header::new(HEADER_BIZ_RT, "12"));
            let expected = Frame {
                headers,
                payload_encoding: non_empty(&frame.payload_encoding),
                payload_type: non_empty(&frame.payload_type),
                payload: Some(b"{}".to_vec()),
                log_id_new: non_empty(&frame.log_id_new),
                ..frame.clone()
            };
            assert_eq!(inbound.encode_ack(extra, b"{}"), expected.encode_bytes());
        }
    }
}
