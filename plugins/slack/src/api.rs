//! The Web API (channels-protocols §1.8): `https://slack.com/api/{method}` with a bearer token,
//! JSON bodies for writes and query strings for reads. Errors come back as HTTP 200 with
//! `{"ok": false, "error": code}`, rate limits as 429 with `Retry-After` (seconds).
//!
//! Classification: `ratelimited`, 5xx, timeouts and transport failures are retryable (a rate
//! limit with its `Retry-After`); a refused token, a deactivated account, a channel the bot is
//! not in or cannot see, a missing scope and every other answer are terminal, with a message
//! that tells the operator what to do. Also here: `auth.test` for `on-install` and attachment
//! downloads.

use serde_json::Value;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::{
    AttachmentContent, DeliveryError,
};
use switchboard_plugin_sdk::http::{Error as HttpError, Request, Response};
use switchboard_plugin_sdk::types::PluginError;

use crate::{API_ROOT, Host};

/// Timeout asked for every request (the host clamps it to the call's deadline).
pub const TIMEOUT_MS: u32 = 10_000;
/// The wait assumed when a 429 carries no `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MS: u32 = 1_000;
/// Where Slack serves `url_private` files; the bot token is never sent anywhere else.
pub const FILES_ORIGIN: &str = "https://files.slack.com/";

/// A failed Web API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The method called (`chat.postMessage`).
    pub method: String,
    /// Slack's error code (`not_in_channel`), or `http_<status>` / `transport`.
    pub code: String,
    /// Extra detail (the scope a `missing_scope` needs, a transport error).
    pub detail: String,
    /// Whether a later retry may help.
    pub retryable: bool,
    /// The wait Slack asked for (a rate limit's `Retry-After`).
    pub retry_after_ms: Option<u32>,
}

impl ApiError {
    fn new(method: &str, code: &str, detail: String, retry_after_ms: Option<u32>) -> ApiError {
        let retryable = retry_after_ms.is_some()
            || code.starts_with("http_5")
            || matches!(
                code,
                "ratelimited"
                    | "rate_limited"
                    | "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout"
                    | "timeout"
                    | "transport"
            );
        ApiError {
            method: method.into(),
            code: code.into(),
            detail,
            retryable,
            retry_after_ms,
        }
    }

    /// Whether the bot's credentials are refused (`on-install` answers `unauthorized`).
    pub fn is_auth(&self) -> bool {
        matches!(
            self.code.as_str(),
            "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" | "account_inactive"
        )
    }

    /// What the operator reads: the method, Slack's code and what to do about it.
    pub fn operator_message(&self) -> String {
        let advice = match self.code.as_str() {
            "ratelimited" | "rate_limited" => {
                "Slack rate-limited the app; retried after Retry-After"
            }
            "not_in_channel" => "the bot is not a member of the channel: invite it (/invite @bot)",
            "channel_not_found" => "the channel does not exist or the bot cannot see it",
            "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" => {
                "Slack refused the token: update the installation's bot_token (or app_token)"
            }
            "account_inactive" => "the bot's account is deactivated: reinstall the Slack app",
            "missing_scope" => "the token lacks an OAuth scope: add it and reinstall the app",
            "is_archived" => "the channel is archived",
            "msg_too_long" | "invalid_blocks" | "msg_blocks_too_long" => {
                "Slack refused the message's size or blocks"
            }
            _ if self.retryable => "a transient failure; retried",
            _ => "Slack refused the call",
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.detail)
        };
        format!(
            "Slack {} failed: {}{detail} — {advice}",
            self.method, self.code
        )
    }

    /// The outbox's view: retryable or not, with Slack's `Retry-After`.
    pub fn delivery(&self) -> DeliveryError {
        DeliveryError {
            code: None,
            message: self.operator_message(),
            retryable: self.retryable,
            retry_after_ms: self.retry_after_ms,
        }
    }

    /// A plugin error: refused credentials, transient, or fatal.
    pub fn plugin(&self) -> PluginError {
        match self {
            e if e.is_auth() => PluginError::Unauthorized(e.operator_message()),
            e if e.retryable => PluginError::Retryable(e.operator_message()),
            e => PluginError::Fatal(e.operator_message()),
        }
    }

    /// A request that never got an answer.
    pub fn http(method: &str, error: &HttpError) -> ApiError {
        let (code, detail) = match error {
            HttpError::Timeout => ("timeout", String::new()),
            HttpError::Transport(why) => ("transport", why.clone()),
            HttpError::NotAllowed(what) => {
                ("not_allowed", format!("{what} is outside the allow-list"))
            }
            HttpError::TooLarge(cap) => ("too_large", format!("over the host's {cap}-byte cap")),
            HttpError::InvalidRequest(why) => ("invalid_request", why.clone()),
        };
        ApiError::new(method, code, detail, None)
    }
}

/// A Web API request: `method` may carry a query string (`users.info?user=U1`); `body` is sent
/// as JSON.
pub fn request(http_method: &str, method: &str, token: &str, body: Option<&Value>) -> Request {
    let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    if body.is_some() {
        headers.push((
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ));
    }
    Request {
        method: http_method.into(),
        url: format!("{API_ROOT}/{method}"),
        headers,
        body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        timeout_ms: Some(TIMEOUT_MS),
    }
}

/// `Retry-After` in milliseconds.
fn retry_after(response: &Response) -> Option<u32> {
    let (_, value) = response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    value
        .trim()
        .parse::<u32>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}

/// Reads the answer to `method`: the JSON of `ok: true`, else the classified error.
pub fn read(method: &str, response: &Response) -> Result<Value, ApiError> {
    let method = method.split('?').next().unwrap_or(method);
    if response.status == 429 {
        let wait = retry_after(response).unwrap_or(DEFAULT_RETRY_AFTER_MS);
        return Err(ApiError::new(
            method,
            "ratelimited",
            format!("retry after {wait} ms"),
            Some(wait),
        ));
    }
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    let Some(body) = body.filter(|_| response.status < 300) else {
        return Err(ApiError::new(
            method,
            &format!("http_{}", response.status),
            String::new(),
            None,
        ));
    };
    if body.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(body);
    }
    let code = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error");
    let detail = body
        .get("needed")
        .and_then(Value::as_str)
        .map(|s| format!("needs {s}"));
    let wait = matches!(code, "ratelimited" | "rate_limited")
        .then(|| retry_after(response).unwrap_or(DEFAULT_RETRY_AFTER_MS));
    Err(ApiError::new(
        method,
        code,
        detail.unwrap_or_default(),
        wait,
    ))
}

/// Calls `method` with the installation's bot token.
pub fn call(
    host: &mut impl Host,
    http_method: &str,
    method: &str,
    body: Option<&Value>,
) -> Result<Value, ApiError> {
    let name = method.split('?').next().unwrap_or(method);
    let token = host.secret("bot_token").ok_or_else(|| {
        ApiError::new(
            name,
            "not_authed",
            "the installation has no bot_token".into(),
            None,
        )
    })?;
    let response = host
        .send(&request(http_method, method, &token, body))
        .map_err(|e| ApiError::http(name, &e))?;
    read(name, &response)
}

/// `on-install`: `auth.test` checks the bot token and answers the bot's user id and workspace;
/// a `team_id` the operator gave must be the token's.
pub fn on_install(host: &mut impl Host) -> Result<Vec<(String, String)>, PluginError> {
    let auth = call(host, "POST", "auth.test", None).map_err(|e| e.plugin())?;
    let user_id = auth.get("user_id").and_then(Value::as_str).unwrap_or("");
    let team_id = auth.get("team_id").and_then(Value::as_str).unwrap_or("");
    if user_id.is_empty() {
        return Err(PluginError::Unauthorized(
            "auth.test answered no user_id: is bot_token a bot token (xoxb-)?".into(),
        ));
    }
    if let Some(given) = host.config("team_id").filter(|given| given != team_id) {
        return Err(PluginError::InvalidInput(format!(
            "the bot token belongs to workspace {team_id}, not team_id {given}"
        )));
    }
    Ok([("bot_user_id", user_id), ("team_id", team_id)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Downloads a file's `url_private` with the bot token. Only Slack's file origin is asked (the
/// token must not go anywhere else); an HTML answer is Slack's login page: the token cannot read
/// the file.
pub fn fetch_attachment(host: &mut impl Host, url: &str) -> Result<AttachmentContent, PluginError> {
    if !url.starts_with(FILES_ORIGIN) {
        return Err(PluginError::InvalidInput(format!(
            "not a Slack file URL: {url}"
        )));
    }
    let token = host
        .secret("bot_token")
        .ok_or_else(|| PluginError::Unauthorized("the installation has no bot_token".into()))?;
    let request = Request {
        method: "GET".into(),
        url: url.into(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        body: Vec::new(),
        timeout_ms: Some(TIMEOUT_MS),
    };
    let response = host
        .send(&request)
        .map_err(|e| ApiError::http("files", &e).plugin())?;
    let mime = response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone());
    match response.status {
        200 if mime.as_deref().is_some_and(|m| m.starts_with("text/html")) => {
            Err(PluginError::Unauthorized(
                "Slack answered its login page: the bot token cannot read this file (files:read)"
                    .into(),
            ))
        }
        200 => Ok(AttachmentContent {
            mime,
            body: response.body,
        }),
        401 | 403 => Err(PluginError::Unauthorized(format!(
            "Slack refused the file download ({})",
            response.status
        ))),
        404 => Err(PluginError::Fatal("the file is gone".into())),
        status => Err(PluginError::Retryable(format!(
            "the file download answered {status}"
        ))),
    }
}
