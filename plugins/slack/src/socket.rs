//! Socket Mode (channels-protocols §1.6): `apps.connections.open` with the app-level token gives
//! a single-use WSS URL; Slack sends JSON text frames — `hello`, `disconnect`, and the envelopes
//! `events_api`, `interactive` and `slash_commands`, each ACKed by echoing its `envelope_id`.
//!
//! The host sends the ACK only once the envelope's event is durable, and on `disconnect` (a
//! control frame of kind `reconnect`) opens a fresh connection at once, finishing the envelopes
//! in flight on the old one. An envelope is handed to the decoder whole: it unwraps `payload`.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::{
    AckStatus, ConnectError, ConnectPlan, ConnectionHints, ControlFrame, DataFrame, Fragment,
    FrameClass,
};
use switchboard_plugin_sdk::http::{Request, Response};
use switchboard_plugin_sdk::types::PluginError;

use crate::api::{self, ApiError};

/// Control kind that makes the host reconnect at once (a fresh `plan-connection`).
pub const RECONNECT: &str = "reconnect";

/// What a frame is, and a log line for the operator when it needs one.
pub fn classify_frame(frame: &[u8]) -> Result<(FrameClass, Option<String>), PluginError> {
    let envelope: Value = serde_json::from_slice(frame)
        .map_err(|_| PluginError::InvalidInput("a Socket Mode frame that is not JSON".into()))?;
    let control = |kind: &str| {
        FrameClass::Control(ControlFrame {
            kind: kind.into(),
            reply: None,
            hints: None,
        })
    };
    let kind = envelope.get("type").and_then(Value::as_str).unwrap_or("");
    Ok(match kind {
        "hello" => (control("hello"), None),
        "disconnect" => {
            let reason = envelope.get("reason").and_then(Value::as_str).unwrap_or("");
            let note = match reason {
                "link_disabled" => format!(
                    "Slack disconnected Socket Mode ({reason}): Socket Mode was turned off for \
                     this app; turn it on again or switch the installation to webhooks"
                ),
                _ => format!("Slack asked for a new Socket Mode connection ({reason})"),
            };
            (control(RECONNECT), Some(note))
        }
        "events_api" | "interactive" | "slash_commands" => {
            let envelope_id = envelope_id(&envelope)?;
            let data = DataFrame {
                kind: kind.into(),
                fragment: Fragment {
                    message_id: envelope_id.clone(),
                    seq: 0,
                    total: 1,
                },
                payload: frame.to_vec(),
                trace_id: Some(envelope_id),
                event: None,
            };
            (FrameClass::Data(data), None)
        }
        other => (
            FrameClass::Ignore(format!("Socket Mode message type {other:?}")),
            None,
        ),
    })
}

fn envelope_id(envelope: &Value) -> Result<String, PluginError> {
    envelope
        .get("envelope_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            PluginError::InvalidInput("a Socket Mode envelope without envelope_id".into())
        })
}

/// The ACK of an envelope: `{"envelope_id": …}` (with the response payload, if any). Slack has no
/// negative ACK: a failed envelope is answered with an error, the host sends nothing, and Slack
/// redelivers what was not ACKed.
pub fn build_ack(
    frame: &[u8],
    status: AckStatus,
    response: Option<&[u8]>,
) -> Result<Vec<u8>, PluginError> {
    if status == AckStatus::Failed {
        return Err(PluginError::Retryable(
            "not ACKed: Slack redelivers the envelope".into(),
        ));
    }
    let envelope: Value = serde_json::from_slice(frame)
        .map_err(|_| PluginError::InvalidInput("a Socket Mode frame that is not JSON".into()))?;
    let mut ack = json!({ "envelope_id": envelope_id(&envelope)? });
    if let Some(payload) = response.and_then(|r| serde_json::from_slice::<Value>(r).ok()) {
        ack["payload"] = payload;
    }
    Ok(ack.to_string().into_bytes())
}

/// `POST apps.connections.open` with the app-level token (Slack refuses it as a form field).
pub fn open_request(app_token: &str) -> Request {
    api::request("POST", "apps.connections.open", app_token, None)
}

/// The connect plan from `apps.connections.open`'s answer. No application ping: the host sends
/// WebSocket protocol pings, which Slack answers.
pub fn parse_open(response: &Response, now_ms: i64) -> Result<ConnectPlan, ConnectError> {
    let body = api::read("apps.connections.open", response).map_err(|error| match error {
        ApiError {
            retryable: true, ..
        } => ConnectError::Retryable(error.operator_message()),
        _ => ConnectError::Terminal(error.operator_message()),
    })?;
    let url = body
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| ConnectError::Retryable("apps.connections.open answered no url".into()))?;
    Ok(ConnectPlan {
        url: url.into(),
        connection_id: format!("slack-socket-{now_ms}"),
        ping_frame: Vec::new(),
        hints: ConnectionHints {
            ping_interval_ms: None,
            reconnect_interval_ms: None,
            reconnect_jitter_ms: None,
            reconnect_count: None,
        },
    })
}

/// A refused upgrade: 401/403 mean the ticket or the app is refused (terminal); anything else
/// (a used or expired ticket, 5xx) is worth a fresh `apps.connections.open`.
pub fn classify_handshake_failure(status: u16) -> ConnectError {
    match status {
        401 | 403 => ConnectError::Terminal(format!(
            "Slack refused the Socket Mode connection ({status}): check the app_token and that \
             Socket Mode is on"
        )),
        _ => ConnectError::Retryable(format!("the Socket Mode upgrade failed with {status}")),
    }
}
