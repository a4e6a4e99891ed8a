//! A test channel plugin that proves the host's long-poll transport, actions and streamed replies.
//! It talks to a small fake channel API (`tests/fake-poll`), all under `{base}/bot{token}/`:
//!
//! | request | answer |
//! |---|---|
//! | `GET updates?offset=N&timeout_s=S` | `{"updates":[…],"next_offset":N}`, held up to `S` s while empty |
//! | `POST send` `{"chat_id","text","idempotency_key","reply_to"}` | `{"message_id"}` |
//! | `POST edit` `{"message_id","text","final"}` | `{"ok":true}` |
//! | `GET me` | `{"id","name"}` |
//!
//! Updates are `{"update_id":7,"message":{…}}` (a chat message) or `{"update_id":8,"action":{…}}`
//! (a button press). The plugin declares only `long-poll`; the webhook and WebSocket exports
//! refuse, and typing and attachments are not offered.
//!
//! Installation: secret `token` (required), config `base_url` (default `http://poll.test`).
//!
//! Everything here is plain Rust over the SDK's types, so it is unit tested natively; the wasm
//! glue in `component` only reads the installation and sends the requests built here.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands::Command,
    decoder::Decoded,
    outbound::{Content, DeliveryError},
    transport::{ConnectError, PollBatch},
};
use switchboard_plugin_sdk::http::{self, Request, Response};
use switchboard_plugin_sdk::types::{
    Chat, ChatKind, InboundAction, InboundMessage, Mention, Participant, PluginError,
};

#[cfg(target_family = "wasm")]
mod component;

switchboard_plugin_sdk::manifest!("../manifest.toml");

/// The channel API's base URL when the installation sets no `base_url`.
pub const DEFAULT_BASE_URL: &str = "http://poll.test";

/// How long the channel holds an empty poll, in seconds (`timeout_s`).
pub const POLL_HOLD_S: u32 = 2;

/// The poll request's own timeout: the hold plus room for a slow answer.
pub const POLL_TIMEOUT_MS: u32 = 5_000;

/// Timeout asked for each send, edit and `me` request (the host clamps it to the call's deadline).
pub const CALL_TIMEOUT_MS: u32 = 5_000;

/// What the bot is called in group messages: a message addresses it when its text has this.
pub const BOT_MENTION: &str = "@bot";

/// Text of a streamed reply's message before its first update.
pub const STREAM_PLACEHOLDER: &str = "…";

/// Why a call that needs the token cannot be made.
pub const NO_TOKEN: &str = "the installation has no `token` secret";

/// Why every WebSocket and webhook export refuses.
pub const ONLY_LONG_POLL: &str =
    "the testing-poll plugin only long-polls (its manifest declares `long-poll` alone)";

/// The API root of an installation: `{base}/bot{token}` (a trailing `/` of `base` is dropped).
pub fn api_root(base_url: Option<&str>, token: &str) -> String {
    let base = base_url
        .filter(|base| !base.is_empty())
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/');
    format!("{base}/bot{token}")
}

fn json_request(method: &str, url: String, body: Option<&Value>, timeout_ms: u32) -> Request {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Request {
        method: method.into(),
        url,
        headers,
        body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        timeout_ms: Some(timeout_ms),
    }
}

// ----- long-poll -------------------------------------------------------------------------------

/// The poll of the events after `cursor` (the channel's `offset`; none = from the start).
/// A cursor that is not a number is not this plugin's: polling cannot go on from it.
pub fn poll_request(root: &str, cursor: Option<&str>) -> Result<Request, ConnectError> {
    let offset = match cursor {
        None => "0",
        Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c,
        Some(c) => {
            return Err(ConnectError::Terminal(format!(
                "the stored cursor {c:?} is not an update offset"
            )));
        }
    };
    Ok(json_request(
        "GET",
        format!("{root}/updates?offset={offset}&timeout_s={POLL_HOLD_S}"),
        None,
        POLL_TIMEOUT_MS,
    ))
}

fn body_json(response: &Response) -> Option<Value> {
    serde_json::from_slice(&response.body).ok()
}

fn body_text(response: &Response) -> String {
    let text = String::from_utf8_lossy(&response.body);
    text.chars().take(200).collect()
}

/// A `retry_after_ms` field of an error answer.
fn retry_after_ms(response: &Response) -> Option<u32> {
    body_json(response)?
        .get("retry_after_ms")?
        .as_u64()
        .map(|ms| ms.min(u64::from(u32::MAX)) as u32)
}

/// Reads a poll answer. 200: each update becomes its own payload and `next_offset` the next
/// cursor. 401/403: the token is refused, polling stops (`terminal`). 429 and 5xx: `retryable`,
/// except when the answer says how long to wait (`retry_after_ms`): then an empty batch that
/// asks the host to wait exactly that long. Any other status is `terminal`.
pub fn parse_poll(response: &Response) -> Result<PollBatch, ConnectError> {
    let status = response.status;
    match status {
        200..=299 => {
            let value = body_json(response).ok_or_else(|| {
                ConnectError::Retryable(format!(
                    "the poll answer is not JSON: {}",
                    body_text(response)
                ))
            })?;
            let updates = match value.get("updates") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(updates)) => updates.clone(),
                Some(other) => {
                    return Err(ConnectError::Retryable(format!(
                        "`updates` is not a list: {other}"
                    )));
                }
            };
            let next_cursor = value
                .get("next_offset")
                .and_then(Value::as_u64)
                .map(|n| n.to_string());
            Ok(PollBatch {
                payloads: updates
                    .iter()
                    .map(|update| update.to_string().into_bytes())
                    .collect(),
                readings: Vec::new(),
                next_cursor,
                retry_after_ms: None,
            })
        }
        401 | 403 => Err(ConnectError::Terminal(format!(
            "the channel refused the bot token ({status}): {}",
            body_text(response)
        ))),
        429 | 500..=599 => match retry_after_ms(response) {
            Some(ms) => Ok(PollBatch {
                payloads: Vec::new(),
                readings: Vec::new(),
                next_cursor: None,
                retry_after_ms: Some(ms),
            }),
            None => Err(ConnectError::Retryable(format!(
                "the channel answered {status}: {}",
                body_text(response)
            ))),
        },
        _ => Err(ConnectError::Terminal(format!(
            "unexpected poll answer {status}: {}",
            body_text(response)
        ))),
    }
}

// ----- decoder ---------------------------------------------------------------------------------

fn invalid(what: impl Into<String>) -> PluginError {
    PluginError::InvalidInput(what.into())
}

/// A string field, or a number written as one (ids).
fn id_field(object: &Value, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn required_id(object: &Value, key: &str, what: &str) -> Result<String, PluginError> {
    id_field(object, key)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid(format!("{what} has no `{key}`")))
}

fn chat(update: &Value, what: &str) -> Result<Chat, PluginError> {
    let chat = update
        .get("chat")
        .ok_or_else(|| invalid(format!("{what} has no `chat`")))?;
    let kind = match chat.get("kind").and_then(Value::as_str) {
        Some("direct") => ChatKind::Direct,
        Some("group") => ChatKind::Group,
        Some("channel") => ChatKind::Channel,
        other => return Err(invalid(format!("{what}: unknown chat kind {other:?}"))),
    };
    Ok(Chat {
        id: required_id(chat, "id", "the chat")?,
        kind,
        title: chat
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn sender(update: &Value, what: &str) -> Result<Participant, PluginError> {
    let from = update
        .get("from")
        .ok_or_else(|| invalid(format!("{what} has no `from`")))?;
    Ok(Participant {
        id: required_id(from, "id", "the sender")?,
        display_name: from.get("name").and_then(Value::as_str).map(str::to_string),
        is_bot: from.get("is_bot").and_then(Value::as_bool).unwrap_or(false),
        alt_ids: Vec::new(),
    })
}

fn decode_message(event_id: String, message: &Value) -> Result<Decoded, PluginError> {
    let chat = chat(message, "the message")?;
    let text = message
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mentioned = text.contains(BOT_MENTION);
    let addressed_to_bot = chat.kind == ChatKind::Direct || mentioned;
    let mentions = if mentioned {
        vec![Mention {
            key: BOT_MENTION.into(),
            name: "bot".into(),
            id: None,
            is_bot: true,
        }]
    } else {
        Vec::new()
    };
    Ok(Decoded::Message(InboundMessage {
        event_id,
        message_id: required_id(message, "id", "the message")?,
        sender: sender(message, "the message")?,
        chat,
        message_type: "text".into(),
        body: text.clone(),
        command_body: text,
        addressed_to_bot,
        parent_id: id_field(message, "reply_to"),
        root_id: None,
        thread_id: id_field(message, "thread_id"),
        create_time_ms: message.get("date_ms").and_then(Value::as_i64).unwrap_or(0),
        mentions,
        attachments: Vec::new(),
    }))
}

fn decode_action(event_id: String, action: &Value) -> Result<Decoded, PluginError> {
    let value = match action.get("value") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(Decoded::Action(InboundAction {
        event_id,
        action_id: required_id(action, "id", "the action")?,
        chat: chat(action, "the action")?,
        sender: sender(action, "the action")?,
        message_id: id_field(action, "message_id"),
        thread_id: id_field(action, "thread_id"),
        name: action
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the action has no `name`"))?
            .to_string(),
        value,
        answer_deadline_ms: action
            .get("deadline_ms")
            .and_then(Value::as_u64)
            .map(|ms| ms.min(u64::from(u32::MAX)) as u32),
        update_token: None,
        create_time_ms: action.get("date_ms").and_then(Value::as_i64).unwrap_or(0),
    }))
}

/// Decodes one update: a `message` or an `action`; anything else is ignored. Not JSON, or a
/// message or action missing its ids, chat or sender, is `invalid-input`.
pub fn decode(payload: &[u8]) -> Result<Decoded, PluginError> {
    let update: Value =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if !update.is_object() {
        return Ok(Decoded::Ignored("the update is not a JSON object".into()));
    }
    let event_id = id_field(&update, "update_id").unwrap_or_default();
    if let Some(message) = update.get("message") {
        decode_message(event_id, message)
    } else if let Some(action) = update.get("action") {
        decode_action(event_id, action)
    } else {
        Ok(Decoded::Ignored(format!(
            "update {event_id:?} carries neither a message nor an action"
        )))
    }
}

// ----- commands --------------------------------------------------------------------------------

/// `/name args`: the name lower-cased without a `@bot` suffix, the rest trimmed (it may span
/// lines). None for plain text or a bare `/`.
pub fn parse_command(text: &str) -> Option<Command> {
    let rest = text.trim().strip_prefix('/')?;
    let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or_default().to_lowercase();
    (!name.is_empty()).then(|| Command {
        name,
        args: args.trim().to_string(),
    })
}

// ----- outbound --------------------------------------------------------------------------------

/// The text a delivery shows: a reply as is, a notice as its text with its link (if any) on a
/// line of its own.
pub fn render(content: &Content) -> String {
    match content {
        Content::Reply(text) => text.clone(),
        Content::Notice(notice) => match &notice.link {
            Some(link) if !link.is_empty() => format!("{}\n{link}", notice.text),
            _ => notice.text.clone(),
        },
    }
}

/// `POST send`.
pub fn send_request(
    root: &str,
    chat_id: &str,
    text: &str,
    idempotency_key: &str,
    reply_to: Option<&str>,
) -> Request {
    let body = json!({
        "chat_id": chat_id,
        "text": text,
        "idempotency_key": idempotency_key,
        "reply_to": reply_to,
    });
    json_request("POST", format!("{root}/send"), Some(&body), CALL_TIMEOUT_MS)
}

/// `POST edit`; `final` marks a streamed reply's last edit.
pub fn edit_request(root: &str, message_id: &str, text: &str, is_final: bool) -> Request {
    let mut body = json!({ "message_id": message_id, "text": text });
    if is_final {
        body["final"] = Value::Bool(true);
    }
    json_request("POST", format!("{root}/edit"), Some(&body), CALL_TIMEOUT_MS)
}

/// A delivery error that does not come from the channel (no token, bad answer).
pub fn local_failure(message: impl Into<String>, retryable: bool) -> DeliveryError {
    DeliveryError {
        code: None,
        message: message.into(),
        retryable,
        retry_after_ms: None,
    }
}

/// A non-2xx answer: retryable for 429 (after its `Retry-After`, in seconds) and 5xx.
fn status_failure(response: &Response) -> DeliveryError {
    let status = response.status;
    let detail = body_json(response)
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body_text(response));
    DeliveryError {
        code: Some(i64::from(status)),
        message: format!("the channel answered {status}: {detail}"),
        retryable: status == 429 || status >= 500,
        retry_after_ms: response
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, value)| value.trim().parse::<u32>().ok())
            .map(|seconds| seconds.saturating_mul(1000)),
    }
}

/// A request that got no answer. The outcome of a timed-out send is unknown: retrying is safe
/// because sends carry the idempotency key.
pub fn transport_failure(error: &http::Error) -> DeliveryError {
    let retryable = matches!(error, http::Error::Timeout | http::Error::Transport(_));
    local_failure(format!("the request failed: {error:?}"), retryable)
}

/// The message id of a `send` answer.
pub fn sent_message_id(response: &Response) -> Result<String, DeliveryError> {
    if !(200..300).contains(&response.status) {
        return Err(status_failure(response));
    }
    body_json(response)
        .and_then(|v| id_field(&v, "message_id"))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            local_failure(
                format!("the send answer has no message_id: {}", body_text(response)),
                false,
            )
        })
}

/// Whether an `edit` succeeded.
pub fn edit_outcome(response: &Response) -> Result<(), DeliveryError> {
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(status_failure(response))
    }
}

// ----- lifecycle -------------------------------------------------------------------------------

/// `GET me`.
pub fn me_request(root: &str) -> Request {
    json_request("GET", format!("{root}/me"), None, CALL_TIMEOUT_MS)
}

/// What `me` says about the bot, as installation config: `bot_id` and `bot_name`.
pub fn parse_me(response: &Response) -> Result<Vec<(String, String)>, PluginError> {
    match response.status {
        200..=299 => {
            let me = body_json(response)
                .ok_or_else(|| PluginError::Retryable("the `me` answer is not JSON".into()))?;
            let id = id_field(&me, "id")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| PluginError::Fatal("the `me` answer has no bot id".into()))?;
            let mut pairs = vec![("bot_id".to_string(), id)];
            if let Some(name) = me.get("name").and_then(Value::as_str) {
                pairs.push(("bot_name".into(), name.to_string()));
            }
            Ok(pairs)
        }
        401 | 403 => Err(PluginError::Unauthorized(format!(
            "the channel refused the bot token ({})",
            response.status
        ))),
        429 | 500..=599 => Err(PluginError::Retryable(format!(
            "the channel answered {}",
            response.status
        ))),
        status => Err(PluginError::Fatal(format!(
            "unexpected `me` answer {status}: {}",
            body_text(response)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin_sdk::types::{Notice, NoticeKind};

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn message(payload: &str) -> InboundMessage {
        match decode(payload.as_bytes()) {
            Ok(Decoded::Message(m)) => m,
            other => panic!("{payload}: {other:?}"),
        }
    }

    const DIRECT: &str = r#"{"update_id":7,"message":{"id":"m7","chat":{"id":"c1","kind":"direct"},"from":{"id":"u1","name":"Ann"},"text":"hi","date_ms":1700000000000}}"#;

    #[test]
    fn a_direct_message_decodes_addressed_to_the_bot() {
        let m = message(DIRECT);
        assert_eq!((m.event_id.as_str(), m.message_id.as_str()), ("7", "m7"));
        assert_eq!((m.chat.id.as_str(), m.chat.kind), ("c1", ChatKind::Direct));
        assert_eq!(m.sender.id, "u1");
        assert_eq!(m.sender.display_name.as_deref(), Some("Ann"));
        assert!(!m.sender.is_bot);
        assert_eq!((m.body.as_str(), m.command_body.as_str()), ("hi", "hi"));
        assert!(m.addressed_to_bot);
        assert!(m.mentions.is_empty() && m.attachments.is_empty());
        assert_eq!(m.create_time_ms, 1_700_000_000_000);
    }

    #[test]
    fn a_group_message_is_addressed_only_when_it_mentions_the_bot() {
        let group = |text: &str| {
            message(
                &json!({"update_id": 9, "message": {"id": "m9", "chat": {"id": "g", "kind": "group"},
                    "from": {"id": "u2"}, "text": text, "date_ms": 1}})
                .to_string(),
            )
        };
        let plain = group("hello all");
        assert_eq!(plain.chat.kind, ChatKind::Group);
        assert!(!plain.addressed_to_bot && plain.mentions.is_empty());
        let mentioned = group("@bot what time is it");
        assert!(mentioned.addressed_to_bot);
        assert_eq!(mentioned.mentions.len(), 1);
        assert!(mentioned.mentions[0].is_bot);
        assert_eq!(mentioned.body, "@bot what time is it");
    }

    #[test]
    fn an_action_decodes_with_its_value_and_deadline() {
        let payload = r#"{"update_id":8,"action":{"id":"a8","chat":{"id":"c1","kind":"direct"},"from":{"id":"u1","name":"Ann"},"message_id":"m7","name":"approve","value":"{\"x\":1}","deadline_ms":3000}}"#;
        match decode(payload.as_bytes()).unwrap() {
            Decoded::Action(a) => {
                assert_eq!((a.event_id.as_str(), a.action_id.as_str()), ("8", "a8"));
                assert_eq!(a.chat.id, "c1");
                assert_eq!(a.sender.id, "u1");
                assert_eq!(a.message_id.as_deref(), Some("m7"));
                assert_eq!(
                    (a.name.as_str(), a.value.as_str()),
                    ("approve", r#"{"x":1}"#)
                );
                assert_eq!(a.answer_deadline_ms, Some(3000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_updates_are_ignored_and_broken_ones_are_invalid() {
        assert!(matches!(
            decode(br#"{"update_id":3,"poll":{}}"#),
            Ok(Decoded::Ignored(_))
        ));
        assert!(matches!(decode(b"[1,2]"), Ok(Decoded::Ignored(_))));
        assert!(matches!(
            decode(b"not json"),
            Err(PluginError::InvalidInput(_))
        ));
        assert!(matches!(
            decode(br#"{"update_id":3,"message":{"id":"m","from":{"id":"u"}}}"#),
            Err(PluginError::InvalidInput(why)) if why.contains("chat")
        ));
        // A message without text (a sticker) has an empty body.
        let m = message(
            r#"{"update_id":4,"message":{"id":"m4","chat":{"id":"c","kind":"direct"},"from":{"id":"u"}}}"#,
        );
        assert_eq!(m.body, "");
    }

    #[test]
    fn the_poll_request_carries_the_offset_and_the_hold() {
        let root = api_root(None, "123:abc");
        let first = poll_request(&root, None).unwrap();
        assert_eq!(first.method, "GET");
        assert_eq!(
            first.url,
            "http://poll.test/bot123:abc/updates?offset=0&timeout_s=2"
        );
        assert_eq!(first.timeout_ms, Some(5000));
        let next = poll_request(&root, Some("42")).unwrap();
        assert!(next.url.ends_with("offset=42&timeout_s=2"), "{}", next.url);
        assert!(matches!(
            poll_request(&root, Some("x&y=1")),
            Err(ConnectError::Terminal(_))
        ));
        assert_eq!(
            api_root(Some("http://127.0.0.1:9/"), "t"),
            "http://127.0.0.1:9/bott"
        );
    }

    #[test]
    fn a_poll_answer_becomes_one_payload_per_update_and_the_next_cursor() {
        let batch = parse_poll(&response(
            200,
            &format!(r#"{{"updates":[{DIRECT},{{"update_id":8}}],"next_offset":9}}"#),
        ))
        .unwrap();
        assert_eq!(batch.payloads.len(), 2);
        assert_eq!(
            message(std::str::from_utf8(&batch.payloads[0]).unwrap()).message_id,
            "m7"
        );
        assert_eq!(batch.next_cursor.as_deref(), Some("9"));
        assert!(batch.readings.is_empty());
        assert_eq!(batch.retry_after_ms, None);
        let empty = parse_poll(&response(200, r#"{"updates":[],"next_offset":9}"#)).unwrap();
        assert!(empty.payloads.is_empty());
        assert_eq!(empty.next_cursor.as_deref(), Some("9"));
    }

    #[test]
    fn poll_failures_are_terminal_or_retryable_by_status() {
        assert!(matches!(
            parse_poll(&response(401, r#"{"error":"unauthorized"}"#)),
            Err(ConnectError::Terminal(_))
        ));
        assert!(matches!(
            parse_poll(&response(404, "")),
            Err(ConnectError::Terminal(_))
        ));
        for status in [429, 500, 503] {
            assert!(
                matches!(
                    parse_poll(&response(status, "busy")),
                    Err(ConnectError::Retryable(_))
                ),
                "{status}"
            );
        }
        let wait = parse_poll(&response(429, r#"{"retry_after_ms":1500}"#)).unwrap();
        assert!(wait.payloads.is_empty());
        assert_eq!((wait.next_cursor, wait.retry_after_ms), (None, Some(1500)));
        assert!(matches!(
            parse_poll(&response(200, "<html>")),
            Err(ConnectError::Retryable(_))
        ));
    }

    #[test]
    fn commands_are_slash_name_and_args() {
        let parsed = |text: &str| parse_command(text).map(|c| (c.name, c.args));
        assert_eq!(parsed("/new"), Some(("new".into(), String::new())));
        assert_eq!(
            parsed("  /New@bot start over \n and more "),
            Some(("new".into(), "start over \n and more".into()))
        );
        assert_eq!(
            parsed("/deploy prod"),
            Some(("deploy".into(), "prod".into()))
        );
        assert_eq!(parsed("hello /new"), None);
        assert_eq!(parsed("/"), None);
        assert_eq!(parsed("/ new"), None);
    }

    #[test]
    fn outbound_requests_and_answers() {
        let root = api_root(None, "t");
        let send = send_request(&root, "c1", "hello", "key-1", Some("m7"));
        assert_eq!(
            (send.method.as_str(), send.url.as_str()),
            ("POST", "http://poll.test/bott/send")
        );
        let body: Value = serde_json::from_slice(&send.body).unwrap();
        assert_eq!(
            body,
            json!({"chat_id": "c1", "text": "hello", "idempotency_key": "key-1", "reply_to": "m7"})
        );
        let edit: Value =
            serde_json::from_slice(&edit_request(&root, "msg-1", "done", true).body).unwrap();
        assert_eq!(
            edit,
            json!({"message_id": "msg-1", "text": "done", "final": true})
        );
        let partial: Value =
            serde_json::from_slice(&edit_request(&root, "msg-1", "do", false).body).unwrap();
        assert_eq!(partial.get("final"), None);

        assert_eq!(
            sent_message_id(&response(200, r#"{"message_id":"msg-3"}"#)).unwrap(),
            "msg-3"
        );
        let server = sent_message_id(&response(503, r#"{"error":"down"}"#)).unwrap_err();
        assert!(server.retryable && server.code == Some(503) && server.message.contains("down"));
        assert!(sent_message_id(&response(429, "")).unwrap_err().retryable);
        assert!(!sent_message_id(&response(400, "")).unwrap_err().retryable);
        assert!(edit_outcome(&response(200, "{}")).is_ok());
        assert!(!edit_outcome(&response(404, "")).unwrap_err().retryable);
        assert!(transport_failure(&http::Error::Timeout).retryable);
        assert!(!transport_failure(&http::Error::NotAllowed("x".into())).retryable);
    }

    #[test]
    fn notices_render_their_text_and_link() {
        let notice = |link: Option<&str>| {
            Content::Notice(Notice {
                kind: NoticeKind::BindingRequired,
                locale: "en".into(),
                text: "Bind your account first.".into(),
                link: link.map(str::to_string),
                reference: None,
                recipient: None,
                actions: Vec::new(),
            })
        };
        assert_eq!(
            render(&notice(Some("https://x/b/1"))),
            "Bind your account first.\nhttps://x/b/1"
        );
        assert_eq!(render(&notice(None)), "Bind your account first.");
        assert_eq!(render(&Content::Reply("hi".into())), "hi");
    }

    #[test]
    fn me_becomes_the_bot_config() {
        assert_eq!(
            parse_me(&response(200, r#"{"id":"bot-1","name":"Poll Bot"}"#)).unwrap(),
            vec![
                ("bot_id".to_string(), "bot-1".to_string()),
                ("bot_name".to_string(), "Poll Bot".to_string())
            ]
        );
        assert!(matches!(
            parse_me(&response(401, "")),
            Err(PluginError::Unauthorized(_))
        ));
        assert!(matches!(
            parse_me(&response(502, "")),
            Err(PluginError::Retryable(_))
        ));
    }
}
