//! Open Platform REST answers the plugin reads (lark-protocol §5): the tenant access token,
//! the bot identity, message objects and error envelopes.
//!
//! These are the parsing halves of the calls the enricher and outbound delivery make through
//! host `http`, plus the request builders of the outbound calls (send, reply, reactions) and the
//! error-code sets those calls act on. Choosing retries stays with the callers.

use std::fmt;

use serde_json::Value;

use crate::content::render_content;
use crate::mentions::{BotIdentity, Mention, resolve_mentions};
use crate::transport::{DEFAULT_BASE_URL, HttpRequestSpec};

/// Path of the internal tenant access token call.
pub const TENANT_TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";
/// Seconds a cached token is given up before its expiry (reference §S1).
pub const TOKEN_EXPIRY_MARGIN_S: u64 = 60;
/// A token lifetime below this many seconds is treated as this long before the margin is taken
/// (reference §S1), so a short `expire` still caches the token for a minute.
pub const TOKEN_MIN_EXPIRE_S: u64 = 120;
/// Path of the send-message call (`?receive_id_type=…` is appended).
pub const SEND_MESSAGE_PATH: &str = "/open-apis/im/v1/messages";
/// Emoji of the typing-indicator reaction (reference §M1).
pub const TYPING_EMOJI: &str = "Typing";

/// What a failed REST call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// Gateway (99991400, HTTP 429) or IM (230020) frequency limit: back off, then retry.
    RateLimited,
    /// Tenant/app token invalid or expired (99991663, 99991664, 99991671): drop the cached
    /// token, fetch a new one and retry once.
    TokenInvalid,
    /// Scope, availability or allow-list problems: the operator must act.
    Permission,
    /// Anything else.
    Other,
}

/// A failed REST call: a non-2xx status or a non-zero `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the response.
    pub http_status: u16,
    /// Lark `code` (0 when the body carried none).
    pub code: i64,
    /// Lark `msg`, or a description of what was wrong with the response.
    pub msg: String,
    /// Seconds to wait, from `x-ogw-ratelimit-reset`.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// Classifies the error by its code (and HTTP 429).
    pub fn kind(&self) -> ApiErrorKind {
        match self.code {
            99_991_400 | 230_020 => ApiErrorKind::RateLimited,
            99_991_663 | 99_991_664 | 99_991_671 => ApiErrorKind::TokenInvalid,
            99_991_401 | 99_991_672 | 99_991_673 | 230_006 | 230_013 | 230_027 => {
                ApiErrorKind::Permission
            }
            _ if self.http_status == 429 => ApiErrorKind::RateLimited,
            _ => ApiErrorKind::Other,
        }
    }

    /// Whether retrying (after a backoff or a token refresh) may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ApiErrorKind::RateLimited | ApiErrorKind::TokenInvalid
        ) || (self.code == 0 && self.http_status >= 500)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lark api http {} code={} msg={}",
            self.http_status, self.code, self.msg
        )
    }
}

impl std::error::Error for ApiError {}

/// Checks a REST response envelope and returns its JSON body when `code == 0` and the status is
/// 2xx.
pub fn check_response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Value, ApiError> {
    let retry_after_s = headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("x-ogw-ratelimit-reset"))
        .and_then(|(_, value)| value.trim().parse().ok());
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|value| value.get("code"))
        .and_then(Value::as_i64);
    let msg = parsed
        .as_ref()
        .and_then(|value| value.get("msg"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match (parsed, code) {
        (Some(value), Some(0)) if (200..300).contains(&status) => Ok(value),
        (Some(_), Some(code)) => Err(ApiError {
            http_status: status,
            code,
            msg,
            retry_after_s,
        }),
        _ => Err(ApiError {
            http_status: status,
            code: 0,
            msg: if (200..300).contains(&status) {
                "response body is not a Lark JSON envelope".into()
            } else {
                format!("http {status}")
            },
            retry_after_s,
        }),
    }
}

/// A tenant access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantToken {
    /// The bearer token (`t-…`).
    pub token: String,
    /// Lifetime in seconds as returned by Lark.
    pub expire_s: u64,
}

impl TenantToken {
    /// How long the token may be cached: its lifetime (at least [`TOKEN_MIN_EXPIRE_S`]) minus
    /// [`TOKEN_EXPIRY_MARGIN_S`].
    pub fn cache_ttl_ms(&self) -> u64 {
        (self.expire_s.max(TOKEN_MIN_EXPIRE_S) - TOKEN_EXPIRY_MARGIN_S) * 1000
    }
}

/// Whether a failed threaded reply may be retried once as a chat-level send (reference §L6):
/// the target was recalled (230011), its topic is gone (230019), it is invisible (230050), the
/// chat does not support thread replies (230071), the target is an aggregated message (230072)
/// or a self-destructing one (230111). Rate limits (230020), "being sent" (230049), transport
/// errors and 5xx are ambiguous and never fall back.
pub fn is_thread_reply_unsupported(code: i64) -> bool {
    matches!(
        code,
        230_011 | 230_019 | 230_050 | 230_071 | 230_072 | 230_111
    )
}

/// Who a send addresses (`receive_id_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveIdType {
    /// A chat (`oc_…`).
    ChatId,
    /// A user's DM (`ou_…`).
    OpenId,
}

impl ReceiveIdType {
    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiveIdType::ChatId => "chat_id",
            ReceiveIdType::OpenId => "open_id",
        }
    }
}

/// `POST {base}/open-apis/im/v1/messages?receive_id_type=…` with
/// `{receive_id, msg_type, content}` (`content` is the JSON-encoded string).
pub fn send_message_request(
    base_url: &str,
    token: &str,
    receive_id_type: ReceiveIdType,
    receive_id: &str,
    msg_type: &str,
    content: &str,
) -> HttpRequestSpec {
    authorized(
        "POST",
        format!(
            "{}{SEND_MESSAGE_PATH}?receive_id_type={}",
            api_base(base_url),
            receive_id_type.as_str()
        ),
        token,
        serde_json::json!({ "receive_id": receive_id, "msg_type": msg_type, "content": content }),
    )
}

/// Adds Lark's `uuid` field to a send or reply request: Lark sends at most one message per
/// `uuid` within an hour, so a retried delivery is not posted twice. `None` leaves the request
/// as it is; a `uuid` longer than Lark's 50 characters is cut.
pub fn with_uuid(mut request: HttpRequestSpec, uuid: Option<&str>) -> HttpRequestSpec {
    let Some(uuid) = uuid.filter(|uuid| !uuid.is_empty()) else {
        return request;
    };
    let uuid: String = uuid.chars().take(50).collect();
    if let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&request.body) {
        body.insert("uuid".into(), Value::String(uuid));
        request.body = serde_json::to_vec(&Value::Object(body)).expect("JSON serializes");
    }
    request
}

/// `POST {base}/open-apis/im/v1/messages/{message_id}/reply` with
/// `{msg_type, content, reply_in_thread}` (no `receive_id`).
pub fn reply_message_request(
    base_url: &str,
    token: &str,
    message_id: &str,
    msg_type: &str,
    content: &str,
    reply_in_thread: bool,
) -> HttpRequestSpec {
    authorized(
        "POST",
        format!(
            "{}{SEND_MESSAGE_PATH}/{}/reply",
            api_base(base_url),
            path_segment(message_id)
        ),
        token,
        serde_json::json!({
            "msg_type": msg_type,
            "content": content,
            "reply_in_thread": reply_in_thread,
        }),
    )
}

/// `POST {base}/open-apis/im/v1/messages/{message_id}/reactions` with
/// `{"reaction_type":{"emoji_type":…}}`.
pub fn add_reaction_request(
    base_url: &str,
    token: &str,
    message_id: &str,
    emoji_type: &str,
) -> HttpRequestSpec {
    authorized(
        "POST",
        format!(
            "{}{SEND_MESSAGE_PATH}/{}/reactions",
            api_base(base_url),
            path_segment(message_id)
        ),
        token,
        serde_json::json!({ "reaction_type": { "emoji_type": emoji_type } }),
    )
}

/// `DELETE {base}/open-apis/im/v1/messages/{message_id}/reactions/{reaction_id}` (no body).
pub fn delete_reaction_request(
    base_url: &str,
    token: &str,
    message_id: &str,
    reaction_id: &str,
) -> HttpRequestSpec {
    let mut request = authorized(
        "DELETE",
        format!(
            "{}{SEND_MESSAGE_PATH}/{}/reactions/{}",
            api_base(base_url),
            path_segment(message_id),
            path_segment(reaction_id)
        ),
        token,
        Value::Null,
    );
    request.body.clear();
    request
        .headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
    request
}

/// Path of the CardKit card entity calls (`/{card_id}/…` follows).
pub const CARDKIT_CARDS_PATH: &str = "/open-apis/cardkit/v1/cards";

/// `POST {base}/open-apis/cardkit/v1/cards` with `{"type":"card_json","data":<card JSON as a
/// string>}`: creates a card entity (its id is `data.card_id`).
pub fn create_card_request(base_url: &str, token: &str, card_json: &str) -> HttpRequestSpec {
    authorized(
        "POST",
        format!("{}{CARDKIT_CARDS_PATH}", api_base(base_url)),
        token,
        serde_json::json!({ "type": "card_json", "data": card_json }),
    )
}

/// `PUT {base}/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content` with
/// `{content, sequence}`: replaces the element's whole text (a longer text that starts with the
/// old one types out the rest).
pub fn card_content_request(
    base_url: &str,
    token: &str,
    card_id: &str,
    element_id: &str,
    content: &str,
    sequence: u32,
) -> HttpRequestSpec {
    authorized(
        "PUT",
        format!(
            "{}{CARDKIT_CARDS_PATH}/{}/elements/{}/content",
            api_base(base_url),
            path_segment(card_id),
            path_segment(element_id)
        ),
        token,
        serde_json::json!({ "content": content, "sequence": sequence }),
    )
}

/// `PATCH {base}/open-apis/cardkit/v1/cards/{card_id}/settings` with `{settings, sequence}`
/// (`settings` is a JSON document carried as a string).
pub fn card_settings_request(
    base_url: &str,
    token: &str,
    card_id: &str,
    settings: &str,
    sequence: u32,
) -> HttpRequestSpec {
    authorized(
        "PATCH",
        format!(
            "{}{CARDKIT_CARDS_PATH}/{}/settings",
            api_base(base_url),
            path_segment(card_id)
        ),
        token,
        serde_json::json!({ "settings": settings, "sequence": sequence }),
    )
}

/// Path of the delayed card update (a callback token replaces the card a user pressed).
pub const CARD_UPDATE_PATH: &str = "/open-apis/interactive/v1/card/update";

/// `POST {base}/open-apis/interactive/v1/card/update` `{"token": <callback token>, "card": …}`
/// (reference §3.2: token valid 30 min, two uses, only after the callback was answered).
pub fn card_update_request(
    base_url: &str,
    token: &str,
    callback_token: &str,
    card: &Value,
) -> HttpRequestSpec {
    authorized(
        "POST",
        format!("{}{CARD_UPDATE_PATH}", api_base(base_url)),
        token,
        serde_json::json!({ "token": callback_token, "card": card }),
    )
}

/// `PATCH {base}/open-apis/im/v1/messages/{id}` `{"content": <card JSON string>}`: replaces a
/// card the bot sent with `update_multi` (reference §3.2, "full update by message id").
pub fn patch_message_request(
    base_url: &str,
    token: &str,
    message_id: &str,
    card: &Value,
) -> HttpRequestSpec {
    authorized(
        "PATCH",
        format!(
            "{}/open-apis/im/v1/messages/{}",
            api_base(base_url),
            path_segment(message_id)
        ),
        token,
        serde_json::json!({ "content": card.to_string() }),
    )
}

/// Path of the bot identity call.
pub const BOT_INFO_PATH: &str = "/open-apis/bot/v3/info";

/// `GET {base}/open-apis/bot/v3/info` (no body).
pub fn bot_info_request(base_url: &str, token: &str) -> HttpRequestSpec {
    get(format!("{}{BOT_INFO_PATH}", api_base(base_url)), token)
}

/// `GET {base}/open-apis/im/v1/messages/{message_id}/resources/{key}?type=image|file`: a
/// resource of a message a user sent (lark-protocol §5). `type=image` for an image key
/// (`img_…`), `type=file` for everything else (files, audio, video).
pub fn message_resource_request(
    base_url: &str,
    token: &str,
    message_id: &str,
    key: &str,
) -> HttpRequestSpec {
    let kind = if key.starts_with("img_") {
        "image"
    } else {
        "file"
    };
    get(
        format!(
            "{}{SEND_MESSAGE_PATH}/{}/resources/{}?type={kind}",
            api_base(base_url),
            path_segment(message_id),
            path_segment(key)
        ),
        token,
    )
}

/// A downloaded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The `Content-Type` of the answer, when it has one.
    pub mime: Option<String>,
    /// The bytes.
    pub body: Vec<u8>,
}

/// Reads a resource download: a 2xx answer is the file, unless it is a JSON Lark envelope with
/// a non-zero `code` (an error); any other status is an error (its envelope's code when it has
/// one).
pub fn parse_resource(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<Resource, ApiError> {
    let mime = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty());
    let json = mime.as_deref().is_some_and(|mime| {
        mime.get(..16)
            .is_some_and(|start| start.eq_ignore_ascii_case("application/json"))
    });
    let failed = !(200..300).contains(&status)
        || (json
            && serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|value| value.get("code").and_then(Value::as_i64))
                .is_some_and(|code| code != 0));
    // A non-2xx status or a non-zero code is always an error of `check_response`.
    if failed && let Err(err) = check_response(status, headers, &body) {
        return Err(err);
    }
    Ok(Resource { mime, body })
}

fn get(url: String, token: &str) -> HttpRequestSpec {
    HttpRequestSpec {
        method: "GET",
        url,
        headers: vec![("Authorization".into(), format!("Bearer {token}"))],
        body: Vec::new(),
    }
}

/// The configured base URL without a trailing slash, or [`DEFAULT_BASE_URL`] when blank.
pub fn api_base(base_url: &str) -> &str {
    let base = base_url.trim().trim_end_matches('/');
    if base.is_empty() {
        DEFAULT_BASE_URL
    } else {
        base
    }
}

fn authorized(method: &'static str, url: String, token: &str, body: Value) -> HttpRequestSpec {
    HttpRequestSpec {
        method,
        url,
        headers: vec![
            ("Authorization".into(), format!("Bearer {token}")),
            (
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ),
        ],
        body: body.to_string().into_bytes(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (ids are `om_…`, so this is
/// normally the identity).
fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The token request: `POST {base}/open-apis/auth/v3/tenant_access_token/internal`.
pub fn tenant_token_request(base_url: &str, app_id: &str, app_secret: &str) -> HttpRequestSpec {
    let base = api_base(base_url);
    HttpRequestSpec {
        method: "POST",
        url: format!("{base}{TENANT_TOKEN_PATH}"),
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body: serde_json::json!({ "app_id": app_id, "app_secret": app_secret })
            .to_string()
            .into_bytes(),
    }
}

/// Reads the token answer (top-level `tenant_access_token` and `expire`, not under `data`).
pub fn parse_tenant_token(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<TenantToken, ApiError> {
    let value = check_response(status, headers, body)?;
    let token = value
        .get("tenant_access_token")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| missing(status, "tenant_access_token"))?;
    let expire_s = value
        .get("expire")
        .and_then(Value::as_u64)
        .ok_or_else(|| missing(status, "expire"))?;
    Ok(TenantToken {
        token: token.to_string(),
        expire_s,
    })
}

/// The bot's identity from `GET /open-apis/bot/v3/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotInfo {
    /// The bot's `open_id`, used to recognise @bot mentions.
    pub open_id: String,
    /// The app's display name.
    pub app_name: String,
}

/// Reads `GET /open-apis/bot/v3/info` (top-level `bot` object, not `data`).
pub fn parse_bot_info(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<BotInfo, ApiError> {
    let value = check_response(status, headers, body)?;
    let bot = value.get("bot").ok_or_else(|| missing(status, "bot"))?;
    let open_id = bot
        .get("open_id")
        .and_then(Value::as_str)
        .filter(|open_id| !open_id.is_empty())
        .ok_or_else(|| missing(status, "bot.open_id"))?;
    Ok(BotInfo {
        open_id: open_id.to_string(),
        app_name: bot
            .get("app_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// A message object of the REST API (flat sender and mention ids, `msg_type`, `body.content`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestMessage {
    /// `message_id`.
    pub message_id: String,
    /// `msg_type`.
    pub msg_type: String,
    /// `create_time` in milliseconds (0 when absent).
    pub create_time_ms: i64,
    /// Whether the message was recalled.
    pub deleted: bool,
    /// `chat_id` (children of a forward keep their source chat).
    pub chat_id: String,
    /// `sender.id` (`ou_…` for users, `cli_…` for apps).
    pub sender_id: String,
    /// `sender.sender_type` (`user`, `app`, …).
    pub sender_type: String,
    /// Raw `body.content` (JSON string, or plain text for forward containers and recalls).
    pub content: String,
    /// `mentions[]` with the flat id mapped to `open_id`.
    pub mentions: Vec<Mention>,
    /// `upper_message_id`: the direct parent container of a forwarded child.
    pub upper_message_id: Option<String>,
    /// `parent_id`.
    pub parent_id: Option<String>,
    /// `root_id`.
    pub root_id: Option<String>,
    /// `thread_id`.
    pub thread_id: Option<String>,
}

impl RestMessage {
    /// Readable text of the message with every mention (the bot's included) as `@name`.
    pub fn render_body(&self) -> String {
        let rendered = render_content(&self.msg_type, &self.content, &self.mentions);
        resolve_mentions(&rendered, &self.mentions, &BotIdentity::default())
    }

    fn from_value(item: &Value) -> Self {
        let text = |pointer: &str| {
            item.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let optional = |pointer: &str| Some(text(pointer)).filter(|value| !value.is_empty());
        let mentions = item
            .get("mentions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|mention| {
                let field = |name: &str| mention.get(name).and_then(Value::as_str).unwrap_or("");
                let open_id = match field("id_type") {
                    "" | "open_id" => Some(field("id").to_string()).filter(|id| !id.is_empty()),
                    _ => None,
                };
                Mention {
                    key: field("key").to_string(),
                    name: field("name").to_string(),
                    open_id,
                    union_id: None,
                }
            })
            .collect();
        RestMessage {
            message_id: text("/message_id"),
            msg_type: text("/msg_type"),
            create_time_ms: text("/create_time").trim().parse().unwrap_or(0),
            deleted: item
                .get("deleted")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_id: text("/chat_id"),
            sender_id: text("/sender/id"),
            sender_type: text("/sender/sender_type"),
            content: text("/body/content"),
            mentions,
            upper_message_id: optional("/upper_message_id"),
            parent_id: optional("/parent_id"),
            root_id: optional("/root_id"),
            thread_id: optional("/thread_id"),
        }
    }
}

/// Reads `data.items[]` of `GET /open-apis/im/v1/messages/{id}` (or a message list).
pub fn parse_message_items(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<RestMessage>, ApiError> {
    let value = check_response(status, headers, body)?;
    let items = value
        .pointer("/data/items")
        .and_then(Value::as_array)
        .ok_or_else(|| missing(status, "data.items"))?;
    Ok(items.iter().map(RestMessage::from_value).collect())
}

/// Reads the `data` message object of a send or reply answer.
pub fn parse_sent_message(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<RestMessage, ApiError> {
    let value = check_response(status, headers, body)?;
    let data = value.get("data").ok_or_else(|| missing(status, "data"))?;
    let message = RestMessage::from_value(data);
    if message.message_id.is_empty() {
        return Err(missing(status, "data.message_id"));
    }
    Ok(message)
}

fn missing(status: u16, field: &str) -> ApiError {
    ApiError {
        http_status: status,
        code: 0,
        msg: format!("response has no `{field}`"),
        retry_after_s: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_json_error_bodies_keep_the_status() {
        let err = check_response(502, &[], b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(err.http_status, 502);
        assert_eq!(err.msg, "http 502");
        assert!(err.is_retryable());
        let err = check_response(200, &[], b"{}").unwrap_err();
        assert!(err.msg.contains("envelope"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn token_cache_ttl_keeps_a_margin_and_clamps_short_lifetimes() {
        let ttl = |expire_s| {
            TenantToken {
                token: "t-1".into(),
                expire_s,
            }
            .cache_ttl_ms()
        };
        assert_eq!(ttl(7200), 7_140_000, "expire − 60 s");
        assert_eq!(ttl(121), 61_000);
        assert_eq!(ttl(120), 60_000);
        assert_eq!(ttl(10), 60_000, "clamped to 120 s, then − 60 s");
        assert_eq!(ttl(0), 60_000);
    }

    #[test]
    fn thread_fallback_codes() {
        for code in [230_011, 230_019, 230_050, 230_071, 230_072, 230_111] {
            assert!(is_thread_reply_unsupported(code), "{code}");
        }
        for code in [0, 230_020, 230_049, 230_001, 99_991_663, 99_991_400] {
            assert!(!is_thread_reply_unsupported(code), "{code}");
        }
    }

    fn body(request: &HttpRequestSpec) -> Value {
        serde_json::from_slice(&request.body).unwrap()
    }

    #[test]
    fn send_request_shape() {
        let request = send_message_request(
            "https://open.feishu.cn/",
            "t-abc",
            ReceiveIdType::ChatId,
            "oc_1",
            "text",
            r#"{"text":"hi"}"#,
        );
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.url,
            "https://open.feishu.cn/open-apis/im/v1/messages?receive_id_type=chat_id"
        );
        assert_eq!(
            request.headers,
            vec![
                ("Authorization".to_string(), "Bearer t-abc".to_string()),
                (
                    "Content-Type".to_string(),
                    "application/json; charset=utf-8".to_string()
                ),
            ]
        );
        assert_eq!(
            body(&request),
            serde_json::json!({"receive_id": "oc_1", "msg_type": "text", "content": "{\"text\":\"hi\"}"})
        );
        let dm = send_message_request("", "t", ReceiveIdType::OpenId, "ou_1", "interactive", "{}");
        assert_eq!(
            dm.url,
            "https://open.feishu.cn/open-apis/im/v1/messages?receive_id_type=open_id"
        );
    }

    #[test]
    fn a_uuid_is_added_to_the_body_and_cut_to_fifty_characters() {
        let plain = send_message_request("", "t", ReceiveIdType::ChatId, "oc_1", "text", "{}");
        assert_eq!(with_uuid(plain.clone(), None).body, plain.body);
        assert_eq!(with_uuid(plain.clone(), Some("")).body, plain.body);
        let keyed = with_uuid(plain.clone(), Some("k-1"));
        assert_eq!(body(&keyed)["uuid"], "k-1");
        assert_eq!(body(&keyed)["receive_id"], "oc_1");
        let long = with_uuid(plain, Some(&"x".repeat(80)));
        assert_eq!(body(&long)["uuid"].as_str().unwrap().len(), 50);
    }

    #[test]
    fn reply_request_shape() {
        let request = reply_message_request(
            "http://127.0.0.1:9",
            "t-abc",
            "om_1",
            "interactive",
            "{}",
            true,
        );
        assert_eq!(
            request.url,
            "http://127.0.0.1:9/open-apis/im/v1/messages/om_1/reply"
        );
        assert_eq!(
            body(&request),
            serde_json::json!({"msg_type": "interactive", "content": "{}", "reply_in_thread": true})
        );
        assert!(body(&request).get("receive_id").is_none());
    }

    #[test]
    fn reaction_request_shapes() {
        let add = add_reaction_request("https://open.feishu.cn", "t", "om_1", TYPING_EMOJI);
        assert_eq!(add.method, "POST");
        assert_eq!(
            add.url,
            "https://open.feishu.cn/open-apis/im/v1/messages/om_1/reactions"
        );
        assert_eq!(
            body(&add),
            serde_json::json!({"reaction_type": {"emoji_type": "Typing"}})
        );
        let delete = delete_reaction_request("https://open.feishu.cn", "t", "om_1", "r/1 x");
        assert_eq!(delete.method, "DELETE");
        assert_eq!(
            delete.url,
            "https://open.feishu.cn/open-apis/im/v1/messages/om_1/reactions/r%2F1%20x"
        );
        assert!(delete.body.is_empty());
        assert_eq!(
            delete.headers,
            vec![("Authorization".to_string(), "Bearer t".to_string())]
        );
    }

    #[test]
    fn token_request_shape() {
        let request = tenant_token_request("https://open.larksuite.com/", "cli_1", "s");
        assert_eq!(
            request.url,
            "https://open.larksuite.com/open-apis/auth/v3/tenant_access_token/internal"
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"app_id": "cli_1", "app_secret": "s"})
        );
    }

    #[test]
    fn bot_info_and_resource_request_shapes() {
        let request = bot_info_request("https://open.larksuite.com/", "t-1");
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.url,
            "https://open.larksuite.com/open-apis/bot/v3/info"
        );
        assert_eq!(
            request.headers,
            [("Authorization".to_string(), "Bearer t-1".to_string())]
        );
        assert!(request.body.is_empty());

        let image = message_resource_request("", "t-1", "om_1", "img_v3_x");
        assert_eq!(
            image.url,
            "https://open.feishu.cn/open-apis/im/v1/messages/om_1/resources/img_v3_x?type=image"
        );
        let file = message_resource_request("", "t-1", "om_1", "file v3/x");
        assert_eq!(
            file.url,
            "https://open.feishu.cn/open-apis/im/v1/messages/om_1/resources/file%20v3%2Fx?type=file"
        );
    }

    #[test]
    fn resources_are_bytes_unless_lark_says_otherwise() {
        let headers = |mime: &str| vec![("Content-Type".to_string(), mime.to_string())];
        let resource = parse_resource(200, &headers("image/png"), vec![1, 2]).unwrap();
        assert_eq!(resource.mime.as_deref(), Some("image/png"));
        assert_eq!(resource.body, [1, 2]);
        assert_eq!(parse_resource(200, &[], vec![]).unwrap().mime, None);
        let err = parse_resource(
            200,
            &headers("application/json"),
            br#"{"code":234001,"msg":"bad"}"#.to_vec(),
        )
        .unwrap_err();
        assert_eq!(err.code, 234_001);
        let err = parse_resource(404, &headers("text/html"), b"<html>".to_vec()).unwrap_err();
        assert_eq!((err.http_status, err.code), (404, 0));
    }
}
