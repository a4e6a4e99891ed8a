//! Bot API calls: the request of a method, the `result` of an answer, and what a failure means
//! for the host (retry after `retry_after`, give up, stop polling).

use serde_json::Value;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::DeliveryError;
use switchboard_plugin_sdk::http::{self, Request, Response};

/// The Bot API origin (the manifest's `http` allow-list; operators may redirect it to a fake).
pub const API_ORIGIN: &str = "https://api.telegram.org";

/// Timeout asked for each method call (the host clamps it to the call's deadline).
pub const CALL_TIMEOUT_MS: u32 = 10_000;

/// The update kinds asked for by `setWebhook` and `getUpdates`.
pub const ALLOWED_UPDATES: [&str; 4] = [
    "message",
    "edited_message",
    "callback_query",
    "my_chat_member",
];

/// A Bot API method call: `POST {origin}/bot{token}/{method}` with a JSON body.
pub fn call(token: &str, method: &str, params: &Value, timeout_ms: u32) -> Request {
    Request {
        method: "POST".into(),
        url: format!("{API_ORIGIN}/bot{token}/{method}"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: params.to_string().into_bytes(),
        timeout_ms: Some(timeout_ms),
    }
}

/// The download of a file `getFile` answered with `file_path`.
pub fn file_download(token: &str, file_path: &str) -> Request {
    Request {
        method: "GET".into(),
        url: format!("{API_ORIGIN}/file/bot{token}/{file_path}"),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: Some(CALL_TIMEOUT_MS),
    }
}

/// A Bot API error answer (`{"ok":false,"error_code","description","parameters"}`), or an
/// answer that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `error_code` (the status when absent).
    pub code: i64,
    /// `description`, or the start of the body.
    pub description: String,
    /// `parameters.retry_after` in seconds (429).
    pub retry_after_s: Option<u32>,
}

/// The `result` of a successful answer, or the error it carries.
pub fn result(response: &Response) -> Result<Value, ApiError> {
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    if (200..300).contains(&response.status)
        && let Some(mut body) = body.clone()
        && body["ok"] == Value::Bool(true)
    {
        return Ok(body["result"].take());
    }
    let body = body.unwrap_or(Value::Null);
    let description = body["description"].as_str().map_or_else(
        || {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        },
        str::to_string,
    );
    Err(ApiError {
        status: response.status,
        code: body["error_code"]
            .as_i64()
            .unwrap_or(i64::from(response.status)),
        description,
        retry_after_s: body["parameters"]["retry_after"]
            .as_u64()
            .map(|s| s.min(u64::from(u32::MAX / 1000)) as u32),
    })
}

impl ApiError {
    /// `editMessageText` with the text the message already has: nothing to do.
    pub fn is_not_modified(&self) -> bool {
        self.code == 400 && self.description.contains("message is not modified")
    }

    /// What a failed send or edit means for the outbox: 429 waits `retry_after`, 5xx retries,
    /// 403 (blocked, kicked) and every other refusal gives up.
    pub fn delivery_error(&self) -> DeliveryError {
        let (message, retryable) = match self.code {
            429 => (format!("Telegram rate limit: {}", self.description), true),
            403 => (
                format!(
                    "the bot was blocked by the user or removed from the chat (Telegram: {})",
                    self.description
                ),
                false,
            ),
            401 | 404 => (
                "Telegram refused the bot token: check the installation's bot_token".into(),
                false,
            ),
            code if code >= 500 || self.status >= 500 => {
                (format!("Telegram failed: {}", self.description), true)
            }
            _ => (format!("Telegram refused: {}", self.description), false),
        };
        DeliveryError {
            code: Some(self.code),
            message,
            retryable,
            retry_after_ms: self.retry_after_s.map(|s| s.saturating_mul(1000)),
        }
    }
}

/// A delivery that cannot be made (not retried): no token, an answer without what it must hold.
pub fn refused(message: impl Into<String>) -> DeliveryError {
    DeliveryError {
        code: None,
        message: message.into(),
        retryable: false,
        retry_after_ms: None,
    }
}

/// A request that got no answer. A timed-out send may have been posted: the retry can repeat it
/// (Telegram has no idempotency key; see `outbound`).
pub fn transport_failure(error: &http::Error) -> DeliveryError {
    DeliveryError {
        code: None,
        message: format!("the Bot API request failed: {error:?}"),
        retryable: matches!(error, http::Error::Timeout | http::Error::Transport(_)),
        retry_after_ms: None,
    }
}

/// A number or string id field as text.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}
