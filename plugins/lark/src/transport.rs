//! Long-connection transport logic (lark-protocol §1): classifying inbound frames, building ACKs
//! and pings, endpoint discovery and handshake-failure classification.
//!
//! Everything here is a pure function of its inputs. The host owns the socket, the ping timer,
//! fragment reassembly and backoff; the `component` glue performs the one HTTP call.

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use crate::frame::{
    Frame, FrameError, FrameRef, HEADER_BIZ_RT, HEADER_MESSAGE_ID, HEADER_SEQ, HEADER_SUM,
    HEADER_TRACE_ID, HeaderRef, METHOD_CONTROL, METHOD_DATA,
};

/// Default Open Platform base URL (Feishu, mainland China).
pub const DEFAULT_BASE_URL: &str = "https://open.feishu.cn";

/// The notice locale an installation defaults to, from its edition's base URL (blank: the
/// default, Feishu): `zh_cn` on Feishu (`*.feishu.cn`), `en_us` on Lark international
/// (`*.larksuite.com`), none for any other address (a private deployment or a test stand-in:
/// the host's default applies).
pub fn default_locale(base_url: &str) -> Option<&'static str> {
    let base = base_url.trim();
    let base = if base.is_empty() {
        DEFAULT_BASE_URL
    } else {
        base
    };
    let host = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split(['/', ':', '?'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if under("feishu.cn") {
        Some("zh_cn")
    } else if under("larksuite.com") {
        Some("en_us")
    } else {
        None
    }
}
/// Path of the endpoint discovery call, relative to the base URL.
pub const ENDPOINT_PATH: &str = "/callback/ws/endpoint";

/// Fragment fields of a data frame; the host reassembles by (connection, message id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Transport message id shared by the fragments (not the chat message id); empty if absent.
    pub message_id: String,
    /// 0-based fragment index (0 when missing or unparsable).
    pub seq: u32,
    /// Number of fragments (1 when missing, unparsable or not positive).
    pub total: u32,
}

/// Connection tuning pushed by the server, converted to milliseconds. `None` = keep the current
/// value (Lark sends 0 or omits a field when it has nothing to say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionHints {
    /// Application ping period.
    pub ping_interval_ms: Option<u64>,
    /// Wait between reconnect attempts after the first one.
    pub reconnect_interval_ms: Option<u64>,
    /// Upper bound of the random delay before the first reconnect attempt.
    pub reconnect_jitter_ms: Option<u64>,
    /// Maximum reconnect attempts; negative = unlimited.
    pub reconnect_count: Option<i32>,
}

impl ConnectionHints {
    /// Whether the hints carry no value at all.
    pub fn is_empty(&self) -> bool {
        *self == ConnectionHints::default()
    }
}

/// A control frame (ping or pong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFrame {
    /// `ping` or `pong`.
    pub kind: String,
    /// Frame to send back. Always `None` for Lark: a server ping is not answered (§1.6).
    pub reply: Option<Vec<u8>>,
    /// New connection tuning carried by a pong.
    pub hints: Option<ConnectionHints>,
}

/// One data frame (possibly one fragment of a larger payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// Always `event` for Lark (card callbacks also travel as `event`).
    pub kind: String,
    /// Where this fragment belongs.
    pub fragment: Fragment,
    /// This fragment's bytes (a split may fall inside a UTF-8 sequence).
    pub payload: Vec<u8>,
    /// Server trace id, for logs.
    pub trace_id: Option<String>,
}

/// What an inbound frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameClass {
    /// Ping or pong.
    Control(ControlFrame),
    /// Event data (reassemble, decode, then ACK the completing frame).
    Data(DataFrame),
    /// Not for us; the reason is logged and no ACK is sent.
    Ignore(String),
}

/// Classifies one inbound binary WebSocket message.
pub fn classify_frame(bytes: &[u8]) -> Result<FrameClass, FrameError> {
    Ok(match classify_frame_ref(bytes)? {
        FrameClassRef::Control(control) => FrameClass::Control(control),
        FrameClassRef::Data(data) => FrameClass::Data(data.to_owned_frame()),
        FrameClassRef::Ignore(reason) => FrameClass::Ignore(reason),
    })
}

/// A data frame whose payload still borrows from the frame bytes (see [`classify_frame_ref`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrameRef<'a> {
    /// Where this fragment belongs.
    pub fragment: Fragment,
    /// This fragment's bytes, a slice of the classified frame.
    pub payload: &'a [u8],
    /// Server trace id, for logs.
    pub trace_id: Option<&'a str>,
}

impl DataFrameRef<'_> {
    /// The owned [`DataFrame`] (the payload is copied once).
    pub fn to_owned_frame(&self) -> DataFrame {
        DataFrame {
            kind: DATA_KIND_EVENT.to_string(),
            fragment: self.fragment.clone(),
            payload: self.payload.to_vec(),
            trace_id: self.trace_id.map(str::to_string),
        }
    }
}

/// [`FrameClass`] with the data payload borrowed from the frame bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameClassRef<'a> {
    /// Ping or pong.
    Control(ControlFrame),
    /// Event data; its kind is always `event`.
    Data(DataFrameRef<'a>),
    /// Not for us; the reason is logged and no ACK is sent.
    Ignore(String),
}

/// The `type` of the data frames that carry events.
pub const DATA_KIND_EVENT: &str = "event";

/// Classifies one inbound binary WebSocket message without copying its payload.
pub fn classify_frame_ref(bytes: &[u8]) -> Result<FrameClassRef<'_>, FrameError> {
    let frame = FrameRef::parse(bytes)?;
    let kind = frame.kind();
    Ok(match frame.method {
        METHOD_CONTROL => classify_control(&frame, kind),
        METHOD_DATA => classify_data(&frame, kind),
        other => {
            FrameClassRef::Ignore(format!("frame with unknown method {other} (type `{kind}`)"))
        }
    })
}

fn classify_control<'a>(frame: &FrameRef<'a>, kind: &str) -> FrameClassRef<'a> {
    match kind {
        // A server-sent ping is not answered (lark-protocol §1.6; the SDKs ignore it).
        "ping" => FrameClassRef::Control(ControlFrame {
            kind: kind.to_string(),
            reply: None,
            hints: None,
        }),
        "pong" => {
            let hints = frame
                .payload
                .filter(|payload| !payload.is_empty())
                .and_then(|payload| serde_json::from_slice::<ClientConfig>(payload).ok())
                .map(|config| config.to_hints())
                .filter(|hints| !hints.is_empty());
            FrameClassRef::Control(ControlFrame {
                kind: kind.to_string(),
                reply: None,
                hints,
            })
        }
        "" => FrameClassRef::Ignore("control frame without a `type` header".into()),
        other => FrameClassRef::Ignore(format!("control frame of unknown type `{other}`")),
    }
}

fn classify_data<'a>(frame: &FrameRef<'a>, kind: &str) -> FrameClassRef<'a> {
    match kind {
        DATA_KIND_EVENT => FrameClassRef::Data(DataFrameRef {
            fragment: fragment_fields(
                frame.header(HEADER_SUM),
                frame.header(HEADER_SEQ),
                frame.header(HEADER_MESSAGE_ID),
            ),
            payload: frame.payload.unwrap_or_default(),
            trace_id: frame
                .header(HEADER_TRACE_ID)
                .filter(|value| !value.is_empty()),
        }),
        "card" => FrameClassRef::Ignore(
            "data frame of type `card` (legacy card channel) is dropped without ACK".into(),
        ),
        "" => FrameClassRef::Ignore("data frame without a `type` header".into()),
        other => FrameClassRef::Ignore(format!("data frame of unknown type `{other}`")),
    }
}

/// Reads the fragment headers leniently: a missing or unparsable `sum` (or one that is not
/// positive) means a single frame, a missing or unparsable `seq` means index 0.
pub fn fragment_of(frame: &Frame) -> Fragment {
    fragment_fields(
        frame.header(HEADER_SUM),
        frame.header(HEADER_SEQ),
        frame.header(HEADER_MESSAGE_ID),
    )
}

fn fragment_fields(sum: Option<&str>, seq: Option<&str>, message_id: Option<&str>) -> Fragment {
    let total = sum
        .and_then(|value| value.trim().parse::<u32>().ok())
        .filter(|total| *total > 0)
        .unwrap_or(1);
    let seq = seq
        .and_then(|value| value.trim().parse::<u32>().ok())
        .unwrap_or(0);
    Fragment {
        message_id: message_id.unwrap_or("").to_string(),
        seq,
        total,
    }
}

/// How a completed data message was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Durably accepted or deliberately ignored: `code` 200.
    Ok,
    /// Infrastructure failure, Lark should redeliver: `code` 500.
    Failed,
}

impl AckStatus {
    /// The HTTP-like status code Lark expects in the ACK payload.
    pub fn code(self) -> u16 {
        match self {
            AckStatus::Ok => 200,
            AckStatus::Failed => 500,
        }
    }
}

/// Builds the ACK for a completed data message from the frame that completed it (§1.8).
///
/// SeqID, LogID, service and method are copied; the optional string fields are copied when they
/// are non-empty; the headers are echoed in order with `biz_rt` (the processing time) appended.
/// The payload is `{"code":200|500,"headers":null,"data":…}` where `data` is the base64 of the
/// callback `response` (for example a card-action toast), or `null`.
pub fn build_ack(
    completing_frame: &[u8],
    status: AckStatus,
    processing_ms: u32,
    response: Option<&[u8]>,
) -> Result<Vec<u8>, FrameError> {
    // The inbound payload is validated as a length-delimited field but never copied or read.
    let inbound = FrameRef::parse(completing_frame)?;
    if inbound.method != METHOD_DATA {
        return Err(FrameError(format!(
            "only data frames are acknowledged; this frame has method {}",
            inbound.method
        )));
    }
    let mut digits = itoa_buffer();
    let biz_rt = HeaderRef {
        key: HEADER_BIZ_RT,
        value: format_u32(processing_ms, &mut digits),
    };
    // A card callback's answer travels in its ACK (§1.9): the host's answer (`answer-action`)
    // when it gives one, else an empty answer that changes nothing.
    let response = match (response, status, inbound.payload) {
        (None, AckStatus::Ok, Some(payload)) if crate::card_action::is_card_action(payload) => {
            Some(crate::card_action::DEFAULT_RESPONSE)
        }
        (response, ..) => response,
    };
    Ok(inbound.encode_ack(biz_rt, &ack_payload(status, response)))
}

/// The ACK payload JSON: `{"code":…,"headers":null,"data":<base64 or null>}`.
pub fn ack_payload(status: AckStatus, response: Option<&[u8]>) -> Vec<u8> {
    // Field order matters for byte-exact output; build the JSON by hand. Base64 needs no JSON
    // escaping.
    let data_len = response.map_or(4, |bytes| bytes.len().div_ceil(3) * 4 + 2);
    let mut out = String::with_capacity(40 + data_len);
    out.push_str("{\"code\":");
    let mut digits = itoa_buffer();
    out.push_str(format_u32(u32::from(status.code()), &mut digits));
    out.push_str(",\"headers\":null,\"data\":");
    match response {
        Some(bytes) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push('}');
    out.into_bytes()
}

/// Room for the decimal digits of a `u32`.
fn itoa_buffer() -> [u8; 10] {
    [0; 10]
}

/// `value` in decimal, written into `buffer` (no allocation).
fn format_u32(mut value: u32, buffer: &mut [u8; 10]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).expect("ASCII digits")
}

/// The encoded application-level ping for a connection's `service_id`.
pub fn build_ping(service_id: i32) -> Vec<u8> {
    Frame::ping(service_id).encode_bytes()
}

/// How to open a connection: the result of endpoint discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPlan {
    /// Single-use WebSocket URL; it carries credentials, never log it unredacted.
    pub url: String,
    /// The `device_id` query parameter (Lark's connection id), for logs.
    pub connection_id: String,
    /// The `service_id` query parameter, put into every frame the client sends.
    pub service_id: i32,
    /// Encoded ping frame for this connection.
    pub ping_frame: Vec<u8>,
    /// Initial connection tuning from `ClientConfig`.
    pub hints: ConnectionHints,
}

/// Why no connection can be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Try again after backoff.
    Retryable(String),
    /// Do not retry (bad credentials, connection limit, banned app): the operator must act.
    Terminal(String),
}

impl ConnectError {
    /// Whether retrying after a backoff may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Retryable(_))
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        match self {
            ConnectError::Retryable(message) | ConnectError::Terminal(message) => message,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = if self.is_retryable() {
            "retryable"
        } else {
            "terminal"
        };
        write!(f, "{class}: {}", self.message())
    }
}

impl std::error::Error for ConnectError {}

/// An HTTP request the glue sends through the host `http` import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Absolute URL.
    pub url: String,
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
}

/// Builds the endpoint discovery request: `POST {base_url}/callback/ws/endpoint` with the
/// PascalCase body `{"AppID":…,"AppSecret":…}` and the `locale: zh` header every SDK sends.
/// Missing credentials are a terminal error (nothing is sent).
pub fn endpoint_request(
    base_url: &str,
    app_id: &str,
    app_secret: &str,
) -> Result<HttpRequestSpec, ConnectError> {
    if app_id.trim().is_empty() {
        return Err(ConnectError::Terminal(
            "the installation has no `app_id` configured".into(),
        ));
    }
    if app_secret.is_empty() {
        return Err(ConnectError::Terminal(
            "the installation has no `app_secret` secret".into(),
        ));
    }
    let base = base_url.trim().trim_end_matches('/');
    let base = if base.is_empty() {
        DEFAULT_BASE_URL
    } else {
        base
    };
    let body = serde_json::json!({ "AppID": app_id, "AppSecret": app_secret });
    Ok(HttpRequestSpec {
        method: "POST",
        url: format!("{base}{ENDPOINT_PATH}"),
        headers: vec![
            (
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ),
            ("locale".into(), "zh".into()),
        ],
        body: body.to_string().into_bytes(),
    })
}

/// `ClientConfig` of the endpoint response and of pong payloads; values are seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClientConfig {
    #[serde(rename = "PingInterval")]
    ping_interval: Option<i64>,
    #[serde(rename = "ReconnectInterval")]
    reconnect_interval: Option<i64>,
    #[serde(rename = "ReconnectNonce")]
    reconnect_nonce: Option<i64>,
    #[serde(rename = "ReconnectCount")]
    reconnect_count: Option<i64>,
}

impl ClientConfig {
    fn to_hints(&self) -> ConnectionHints {
        let seconds_to_ms = |seconds: Option<i64>| {
            seconds
                .filter(|seconds| *seconds > 0)
                .map(|seconds| (seconds as u64).saturating_mul(1000))
        };
        ConnectionHints {
            ping_interval_ms: seconds_to_ms(self.ping_interval),
            reconnect_interval_ms: seconds_to_ms(self.reconnect_interval),
            reconnect_jitter_ms: seconds_to_ms(self.reconnect_nonce),
            reconnect_count: self
                .reconnect_count
                .filter(|count| *count != 0)
                .map(|count| count.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32),
        }
    }
}

/// Parses pong-style `ClientConfig` JSON into hints (seconds → milliseconds; 0 or missing → keep).
pub fn parse_client_config(json: &[u8]) -> Option<ConnectionHints> {
    serde_json::from_slice::<ClientConfig>(json)
        .ok()
        .map(|config| config.to_hints())
}

#[derive(Debug, Deserialize)]
struct EndpointResponse {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Option<EndpointData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EndpointData {
    #[serde(rename = "URL")]
    url: String,
    #[serde(rename = "ClientConfig")]
    client_config: Option<ClientConfig>,
}

/// Endpoint `code` values that mean "try again" (system busy, internal error).
const RETRYABLE_ENDPOINT_CODES: [i64; 2] = [1, 1_000_040_343];

/// Turns the endpoint discovery answer into a connect plan (§1.2).
///
/// Non-2xx, an unparsable body, `code` 1 / 1000040343 and `code` 0 without a URL are retryable;
/// any other non-zero `code` (bad credentials, disabled app, …) and a URL without a valid int32
/// `service_id` are terminal.
pub fn parse_endpoint_response(status: u16, body: &[u8]) -> Result<ConnectPlan, ConnectError> {
    if !(200..300).contains(&status) {
        return Err(ConnectError::Retryable(format!(
            "endpoint discovery returned HTTP {status}: {}",
            truncate_for_log(body, 512)
        )));
    }
    let response: EndpointResponse = serde_json::from_slice(body).map_err(|err| {
        ConnectError::Retryable(format!(
            "endpoint discovery answered with unreadable JSON ({err}): {}",
            truncate_for_log(body, 512)
        ))
    })?;
    if response.code != 0 {
        let message = format!(
            "endpoint discovery refused with code {}: {}",
            response.code, response.msg
        );
        return Err(if RETRYABLE_ENDPOINT_CODES.contains(&response.code) {
            ConnectError::Retryable(message)
        } else {
            ConnectError::Terminal(message)
        });
    }
    let data = response.data.unwrap_or_default();
    if data.url.trim().is_empty() {
        return Err(ConnectError::Retryable(format!(
            "endpoint discovery returned code 0 without a URL (msg: {})",
            response.msg
        )));
    }
    let service_id = query_param(&data.url, "service_id")
        .ok_or_else(|| {
            ConnectError::Terminal("the WebSocket URL has no `service_id` query parameter".into())
        })?
        .parse::<i32>()
        .map_err(|_| {
            ConnectError::Terminal("the WebSocket URL's `service_id` is not an int32".into())
        })?;
    let connection_id = query_param(&data.url, "device_id").unwrap_or_default();
    let hints = data
        .client_config
        .as_ref()
        .map(ClientConfig::to_hints)
        .unwrap_or_default();
    Ok(ConnectPlan {
        ping_frame: build_ping(service_id),
        url: data.url,
        connection_id,
        service_id,
        hints,
    })
}

/// The value of query parameter `name` in `url` (no percent-decoding: Lark's ids are plain).
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// `Handshake-Autherrcode` meaning "more than 50 connections for this app".
const CONNECTION_LIMIT_AUTH_CODE: &str = "1000040350";

/// Classifies a refused WebSocket upgrade from its HTTP status and response headers (§1.3).
///
/// The reason is in `Handshake-Status` (falling back to the HTTP status), `Handshake-Msg` and
/// `Handshake-Autherrcode` (header names are case-insensitive). 514 + 1000040350 (connection
/// limit) and 403 (forbidden / banned) are terminal; everything else is retryable.
pub fn classify_handshake_failure(status: u16, headers: &[(String, String)]) -> ConnectError {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    };
    let handshake_status = header("handshake-status")
        .and_then(|value| value.parse::<i64>().ok())
        .unwrap_or(i64::from(status));
    let auth_code = header("handshake-autherrcode").unwrap_or("");
    let reason = header("handshake-msg").unwrap_or("");
    let detail = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match handshake_status {
        514 if auth_code == CONNECTION_LIMIT_AUTH_CODE => ConnectError::Terminal(format!(
            "WebSocket upgrade refused: connection limit exceeded (more than 50 connections for this app){detail}"
        )),
        514 => ConnectError::Retryable(format!(
            "WebSocket upgrade refused: authentication failed (auth code {}){detail}",
            if auth_code.is_empty() {
                "none"
            } else {
                auth_code
            }
        )),
        403 => ConnectError::Terminal(format!(
            "WebSocket upgrade refused: forbidden (app banned or not allowed){detail}"
        )),
        other => ConnectError::Retryable(format!(
            "WebSocket upgrade refused with status {other} (HTTP {status}){detail}"
        )),
    }
}

/// At most `limit` bytes of `body` as lossy UTF-8, for error messages.
fn truncate_for_log(body: &[u8], limit: usize) -> String {
    let cut = body.len().min(limit);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if body.len() > limit {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Header;

    #[test]
    fn fragment_headers_are_lenient() {
        let mut frame = Frame {
            method: METHOD_DATA,
            headers: vec![Header::new("type", "event")],
            ..Frame::default()
        };
        assert_eq!(
            fragment_of(&frame),
            Fragment {
                message_id: String::new(),
                seq: 0,
                total: 1
            }
        );
        frame.headers.push(Header::new("sum", "x"));
        frame.headers.push(Header::new("seq", "-2"));
        frame.headers.push(Header::new("message_id", "m-1"));
        assert_eq!(
            fragment_of(&frame),
            Fragment {
                message_id: "m-1".into(),
                seq: 0,
                total: 1
            }
        );
        let frame = Frame {
            headers: vec![
                Header::new("sum", "0"),
                Header::new("seq", "3"),
                Header::new("sum", "9"),
            ],
            ..Frame::default()
        };
        // First match wins: sum "0" is not positive → single frame; seq passes through.
        assert_eq!(fragment_of(&frame).total, 1);
        assert_eq!(fragment_of(&frame).seq, 3);
    }

    #[test]
    fn ack_payload_encodes_response_as_base64() {
        assert_eq!(
            ack_payload(AckStatus::Failed, None),
            br#"{"code":500,"headers":null,"data":null}"#
        );
        assert_eq!(
            ack_payload(AckStatus::Ok, Some(b"{}")),
            br#"{"code":200,"headers":null,"data":"e30="}"#
        );
    }

    #[test]
    fn the_default_locale_follows_the_edition() {
        assert_eq!(default_locale(""), Some("zh_cn"));
        assert_eq!(default_locale("https://open.feishu.cn/"), Some("zh_cn"));
        assert_eq!(default_locale("https://open.larksuite.com"), Some("en_us"));
        assert_eq!(default_locale("http://127.0.0.1:8080"), None);
        assert_eq!(default_locale("https://feishu.cn.example.com"), None);
    }

    #[test]
    fn build_ack_rejects_control_frames_and_garbage() {
        let ping = build_ping(7);
        assert!(build_ack(&ping, AckStatus::Ok, 1, None).is_err());
        assert!(build_ack(&[], AckStatus::Ok, 1, None).is_err());
        assert!(build_ack(&[0xff, 0xff], AckStatus::Ok, 1, None).is_err());
    }

    #[test]
    fn server_ping_is_not_answered() {
        let class = classify_frame(&build_ping(42)).unwrap();
        assert_eq!(
            class,
            FrameClass::Control(ControlFrame {
                kind: "ping".into(),
                reply: None,
                hints: None
            })
        );
    }

    #[test]
    fn pong_with_malformed_config_has_no_hints() {
        let pong = Frame {
            method: METHOD_CONTROL,
            headers: vec![Header::new("type", "pong")],
            payload: Some(b"not json".to_vec()),
            ..Frame::default()
        };
        match classify_frame(&pong.encode_bytes()).unwrap() {
            FrameClass::Control(control) => {
                assert_eq!(control.kind, "pong");
                assert_eq!(control.hints, None);
            }
            other => panic!("expected a control frame, got {other:?}"),
        }
    }

    #[test]
    fn unknown_method_and_types_are_ignored() {
        let frame = Frame {
            method: 5,
            ..Frame::default()
        };
        assert!(matches!(
            classify_frame(&frame.encode_bytes()).unwrap(),
            FrameClass::Ignore(reason) if reason.contains("method 5")
        ));
        let frame = Frame {
            method: METHOD_DATA,
            headers: vec![Header::new("type", "mystery")],
            ..Frame::default()
        };
        assert!(matches!(
            classify_frame(&frame.encode_bytes()).unwrap(),
            FrameClass::Ignore(reason) if reason.contains("mystery")
        ));
        let frame = Frame {
            method: METHOD_CONTROL,
            ..Frame::default()
        };
        assert!(matches!(
            classify_frame(&frame.encode_bytes()).unwrap(),
            FrameClass::Ignore(_)
        ));
    }

    #[test]
    fn endpoint_request_shape() {
        let request = endpoint_request("https://open.larksuite.com/", "cli_1", "s3cret").unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.url,
            "https://open.larksuite.com/callback/ws/endpoint"
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"AppID": "cli_1", "AppSecret": "s3cret"})
        );
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "locale" && v == "zh")
        );
        assert!(
            !request
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        );
        let defaulted = endpoint_request("", "cli_1", "s").unwrap();
        assert_eq!(defaulted.url, "https://open.feishu.cn/callback/ws/endpoint");
    }

    #[test]
    fn endpoint_request_requires_credentials() {
        assert!(matches!(
            endpoint_request(DEFAULT_BASE_URL, "", "secret"),
            Err(ConnectError::Terminal(message)) if message.contains("app_id")
        ));
        assert!(matches!(
            endpoint_request(DEFAULT_BASE_URL, "cli_1", ""),
            Err(ConnectError::Terminal(message)) if message.contains("app_secret")
        ));
    }

    #[test]
    fn endpoint_url_without_valid_service_id_is_terminal() {
        let body = br#"{"code":0,"msg":"ok","data":{"URL":"wss://x/ws?device_id=1"}}"#;
        assert!(matches!(
            parse_endpoint_response(200, body),
            Err(ConnectError::Terminal(message)) if message.contains("service_id")
        ));
        let body = br#"{"code":0,"msg":"ok","data":{"URL":"wss://x/ws?service_id=99999999999"}}"#;
        assert!(matches!(
            parse_endpoint_response(200, body),
            Err(ConnectError::Terminal(message)) if message.contains("int32")
        ));
    }

    #[test]
    fn endpoint_without_url_or_with_garbage_is_retryable() {
        let body = br#"{"code":0,"msg":"ok","data":{"URL":""}}"#;
        assert!(
            parse_endpoint_response(200, body)
                .unwrap_err()
                .is_retryable()
        );
        assert!(
            parse_endpoint_response(200, b"<html>")
                .unwrap_err()
                .is_retryable()
        );
    }

    #[test]
    fn endpoint_error_quotes_lark_message() {
        let body = br#"{"code":10003,"msg":"app type not supported","data":null}"#;
        let err = parse_endpoint_response(200, body).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("10003"));
        assert!(err.message().contains("app type not supported"));
    }

    #[test]
    fn endpoint_http_error_body_is_truncated() {
        let body = vec![b'x'; 2000];
        let err = parse_endpoint_response(502, &body).unwrap_err();
        assert!(err.is_retryable());
        assert!(err.message().contains("HTTP 502"));
        assert!(err.message().len() < 700);
    }

    #[test]
    fn zero_config_values_mean_keep() {
        let hints =
            parse_client_config(br#"{"PingInterval":0,"ReconnectCount":0,"ReconnectInterval":5}"#)
                .unwrap();
        assert_eq!(
            hints,
            ConnectionHints {
                ping_interval_ms: None,
                reconnect_interval_ms: Some(5000),
                reconnect_jitter_ms: None,
                reconnect_count: None
            }
        );
    }

    #[test]
    fn handshake_classification() {
        let headers = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(
            !classify_handshake_failure(400, &headers(&[("handshake-status", "403")]))
                .is_retryable()
        );
        assert!(
            classify_handshake_failure(
                400,
                &headers(&[("Handshake-Status", "514"), ("Handshake-Autherrcode", "1")])
            )
            .is_retryable()
        );
        assert!(classify_handshake_failure(502, &[]).is_retryable());
        // Without headers the HTTP status is used.
        assert!(!classify_handshake_failure(403, &[]).is_retryable());
        assert!(
            classify_handshake_failure(400, &headers(&[("Handshake-Status", "junk")]))
                .is_retryable()
        );
    }
}
