//! Webhooks (the `X-Telegram-Bot-Api-Secret-Token` check) and long polling (`getUpdates`).

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::{
    ConnectError, PollBatch, WebhookEvents, WebhookRejection, WebhookResponse, WebhookVerdict,
};
use switchboard_plugin_sdk::http::{Request, Response};
use switchboard_plugin_sdk::secret;

use crate::api::{self, ALLOWED_UPDATES, ApiError};

/// The header Telegram puts the webhook's `secret_token` in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// How long Telegram holds an empty `getUpdates` (seconds).
pub const POLL_HOLD_S: u32 = 25;

/// The poll request's own timeout: the hold plus room for a slow answer.
pub const POLL_TIMEOUT_MS: u32 = 35_000;

/// What the operator reads when polling meets a webhook.
pub const WEBHOOK_IS_SET: &str = "Telegram refuses getUpdates because a webhook is set for this bot (409 Conflict): delete it (the Bot API's deleteWebhook, or re-add the installation with connection=poll, which deletes it) or switch the installation to webhook mode (connection=webhook)";

/// Verifies a webhook request with the installation's `webhook_secret`: the header must equal it
/// (constant-time compare); a missing secret refuses everything. The answer acknowledges the
/// update, and answers a callback query with Telegram's "method in the webhook reply" so the
/// user's spinner stops once the action is durable.
pub fn verify_webhook(
    method: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    webhook_secret: Option<&str>,
) -> Result<WebhookVerdict, WebhookRejection> {
    let Some(expected) = webhook_secret.filter(|s| !s.is_empty()) else {
        return Err(WebhookRejection::BadToken(
            "the installation has no webhook_secret: webhook requests cannot be authenticated"
                .into(),
        ));
    };
    let presented = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(SECRET_HEADER))
        .map(|(_, value)| value.as_str())
        .ok_or_else(|| WebhookRejection::BadToken(format!("no `{SECRET_HEADER}` header")))?;
    if !secret::eq(presented.as_bytes(), expected.as_bytes()) {
        return Err(WebhookRejection::BadToken(format!(
            "wrong `{SECRET_HEADER}`"
        )));
    }
    if method != "POST" {
        return Err(WebhookRejection::Malformed(format!(
            "Telegram POSTs updates, not {method}"
        )));
    }
    let update: Value = serde_json::from_slice(&body)
        .map_err(|e| WebhookRejection::Malformed(format!("the update is not JSON: {e}")))?;
    if !update["update_id"].is_i64() {
        return Err(WebhookRejection::Malformed(
            "the body has no `update_id`".into(),
        ));
    }
    let answer = match api::id_text(&update["callback_query"]["id"]) {
        Some(id) => json!({"method": "answerCallbackQuery", "callback_query_id": id}),
        None => json!({}),
    };
    Ok(WebhookVerdict::Events(WebhookEvents {
        payloads: vec![body],
        readings: Vec::new(),
        signed_at_ms: None,
        response: WebhookResponse {
            status: 200,
            content_type: "application/json".into(),
            body: answer.to_string().into_bytes(),
        },
    }))
}

/// The webhook answer to a callback query carrying the host's words: `answerCallbackQuery`
/// with `text` (a popup alert when `alert`, for a refusal), as the webhook's response body
/// (Telegram runs a method named in the answer). None when `payload` is no callback query.
pub fn callback_answer(payload: &[u8], text: &str, alert: bool) -> Option<Vec<u8>> {
    let update: Value = serde_json::from_slice(payload).ok()?;
    let id = api::id_text(&update["callback_query"]["id"])?;
    // Telegram shows at most 200 characters.
    let text: String = text.chars().take(200).collect();
    Some(
        json!({"method": "answerCallbackQuery", "callback_query_id": id, "text": text, "show_alert": alert})
            .to_string()
            .into_bytes(),
    )
}

/// `getUpdates` for the updates from `cursor` (the next `offset`; none: what Telegram holds).
/// Calling it with an offset confirms every update below it, so the host's durable cursor is
/// the offset.
pub fn poll_request(token: &str, cursor: Option<&str>) -> Result<Request, ConnectError> {
    let mut params = json!({"timeout": POLL_HOLD_S, "allowed_updates": ALLOWED_UPDATES});
    if let Some(cursor) = cursor {
        let offset: i64 = cursor.parse().map_err(|_| {
            ConnectError::Terminal(format!(
                "the stored cursor {cursor:?} is not an update offset"
            ))
        })?;
        params["offset"] = json!(offset);
    }
    Ok(api::call(token, "getUpdates", &params, POLL_TIMEOUT_MS))
}

/// A poll round's updates: each raw update a payload, the next cursor one past the last
/// `update_id`, and the ids of the callback queries to answer. 409 (a webhook is set) and a
/// refused token stop polling; 429 waits `retry_after`; 5xx backs off.
pub fn parse_poll(response: &Response) -> Result<(PollBatch, Vec<String>), ConnectError> {
    let updates = match api::result(response) {
        Ok(result) => result,
        Err(error) => return poll_failure(error),
    };
    let Value::Array(updates) = updates else {
        return Err(ConnectError::Retryable(
            "getUpdates answered no list of updates".into(),
        ));
    };
    let mut next = None;
    let mut callbacks = Vec::new();
    let payloads = updates
        .iter()
        .map(|update| {
            next = update["update_id"].as_i64().map(|id| id + 1).max(next);
            callbacks.extend(api::id_text(&update["callback_query"]["id"]));
            update.to_string().into_bytes()
        })
        .collect();
    let batch = PollBatch {
        payloads,
        readings: Vec::new(),
        next_cursor: next.map(|n| n.to_string()),
        retry_after_ms: None,
    };
    Ok((batch, callbacks))
}

fn poll_failure(error: ApiError) -> Result<(PollBatch, Vec<String>), ConnectError> {
    match error.code {
        409 => Err(ConnectError::Terminal(format!(
            "{WEBHOOK_IS_SET} (Telegram: {})",
            error.description
        ))),
        401 | 404 => Err(ConnectError::Terminal(format!(
            "Telegram refused the bot token ({}): check the installation's bot_token",
            error.code
        ))),
        429 => Ok((
            PollBatch {
                payloads: Vec::new(),
                readings: Vec::new(),
                next_cursor: None,
                retry_after_ms: Some(error.retry_after_s.unwrap_or(1).saturating_mul(1000)),
            },
            Vec::new(),
        )),
        _ if error.status < 300 || error.status >= 500 || error.code >= 500 => Err(
            ConnectError::Retryable(format!("getUpdates failed: {}", error.description)),
        ),
        code => Err(ConnectError::Terminal(format!(
            "getUpdates was refused ({code}): {}",
            error.description
        ))),
    }
}
