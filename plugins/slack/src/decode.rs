//! Payloads → neutral records (channels-protocols §1.3, 1.5, 1.7).
//!
//! A payload is an Events API body (`event_callback`), an interactivity payload
//! (`block_actions`), a slash command (`"type": "slash_commands"`, made by `webhook` from the
//! form) or any of these inside a Socket Mode envelope (`{"envelope_id", "payload"}`), which is
//! unwrapped first — so `replay` takes raw bodies and envelopes alike.
//!
//! - message id `{channel}:{ts}`: the same message as a `message` and an `app_mention` event, and
//!   every redelivery, is one message to the host's dedup;
//! - chat kinds: `im` → direct, `mpim` and `group` (private channels) → group, `channel` (public)
//!   → channel; an event without `channel_type` (`app_mention`) is read from the id's first
//!   letter (`D`, `G`, `C`);
//! - thread: `thread_ts`; a top-level mention outside a DM starts a thread keyed by its own `ts`
//!   (the reply goes into that thread); a DM without `thread_ts` is one session;
//! - addressed: a DM, a mention of `bot_user_id`, or a reply in a thread the bot is part of (kv
//!   `thread:…`, written when the bot is mentioned in a thread or replies in it);
//! - ignored with a reason: bot messages (`bot_id`, or `user` = `bot_user_id`), edits, deletions,
//!   joins and every other subtype or event type that is not a chat message.

use serde_json::Value;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::decoder::Decoded;
use switchboard_plugin_sdk::types::{
    Attachment, Chat, ChatKind, InboundAction, InboundMessage, Mention, Participant, PluginError,
};

use crate::{Host, THREAD_TTL_MS, keys, ts_ms};

/// How long Slack waits for an interaction's ACK.
pub const ACTION_DEADLINE_MS: u32 = 3_000;

/// Message subtypes that are chat messages; every other subtype is ignored.
const CHAT_SUBTYPES: &[&str] = &["", "file_share", "thread_broadcast", "me_message"];

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn some(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// Decodes one payload for the installation whose bot is `bot_user_id`.
pub fn decode(host: &mut impl Host, payload: &[u8]) -> Result<Decoded, PluginError> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|_| PluginError::InvalidInput("the payload is not JSON".into()))?;
    let value = match value.get("envelope_id") {
        Some(_) => match value.get("payload") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => {
                let kind = str_at(&value, "/type");
                return Ok(Decoded::Ignored(format!(
                    "Socket Mode {kind:?} without payload"
                )));
            }
        },
        None if matches!(str_at(&value, "/type"), "hello" | "disconnect") => {
            let kind = str_at(&value, "/type");
            return Ok(Decoded::Ignored(format!("Socket Mode {kind}")));
        }
        None => value,
    };
    let bot = host.config("bot_user_id").unwrap_or_default();
    match str_at(&value, "/type") {
        "event_callback" => event(host, &value, &bot),
        "block_actions" => action(&value),
        "slash_commands" => slash_command(host, &value),
        // A Socket Mode slash command's payload is the bare form fields.
        "" if value.get("command").is_some() => slash_command(host, &value),
        "url_verification" => Ok(Decoded::Ignored("url_verification handshake".into())),
        other => Ok(Decoded::Ignored(format!(
            "payload type {other:?} is not handled"
        ))),
    }
}

/// The chat kind of a channel: by `channel_type` when given, else by the id's first letter.
pub fn chat_kind(channel: &str, channel_type: &str) -> ChatKind {
    match (channel_type, channel.as_bytes().first()) {
        ("im", _) | ("", Some(b'D')) => ChatKind::Direct,
        ("mpim" | "group", _) | ("", Some(b'G')) => ChatKind::Group,
        _ => ChatKind::Channel,
    }
}

fn event(host: &mut impl Host, body: &Value, bot: &str) -> Result<Decoded, PluginError> {
    let event = body.get("event").filter(|e| e.is_object()).ok_or_else(|| {
        PluginError::InvalidInput("event_callback without an event object".into())
    })?;
    let kind = str_at(event, "/type");
    if kind != "message" && kind != "app_mention" {
        return Ok(Decoded::Ignored(format!(
            "event {kind:?} is not a chat message"
        )));
    }
    let user = str_at(event, "/user");
    if event.get("bot_id").is_some_and(|b| !b.is_null()) || (!bot.is_empty() && user == bot) {
        return Ok(Decoded::Ignored(
            "a bot's message (the bot's own, or another app's)".into(),
        ));
    }
    let subtype = str_at(event, "/subtype");
    if !CHAT_SUBTYPES.contains(&subtype) {
        return Ok(Decoded::Ignored(format!(
            "message subtype {subtype:?} is not a new chat message"
        )));
    }
    let (channel, ts) = (str_at(event, "/channel"), str_at(event, "/ts"));
    if channel.is_empty() || ts.is_empty() || user.is_empty() {
        return Err(PluginError::InvalidInput(
            "a message without channel, ts or user".into(),
        ));
    }
    let kind_of_chat = chat_kind(channel, str_at(event, "/channel_type"));
    let direct = kind_of_chat == ChatKind::Direct;
    let thread_ts = some(str_at(event, "/thread_ts"));
    let text = Text::render(host, str_at(event, "/text"), bot);
    let in_bot_thread = thread_ts
        .as_ref()
        .is_some_and(|t| host.kv_get(&keys::thread(channel, t)).is_some());
    let addressed = direct || text.mentions_bot || kind == "app_mention" || in_bot_thread;
    // A top-level mention outside a DM starts a thread session keyed by its own ts.
    let thread_id = match &thread_ts {
        Some(t) => Some(t.clone()),
        None if !direct && addressed => Some(ts.to_string()),
        None => None,
    };
    if addressed
        && !direct
        && let Some(thread) = &thread_id
    {
        host.kv_set(&keys::thread(channel, thread), b"1", THREAD_TTL_MS);
    }
    let attachments = files(event);
    let message_type = if attachments.is_empty() {
        "text"
    } else {
        "file"
    };
    Ok(Decoded::Message(InboundMessage {
        event_id: str_at(body, "/event_id").to_string(),
        message_id: format!("{channel}:{ts}"),
        chat: Chat {
            id: channel.into(),
            kind: kind_of_chat,
            title: None,
        },
        sender: Participant {
            id: user.into(),
            display_name: host
                .kv_get(&keys::name(user))
                .and_then(|n| String::from_utf8(n).ok()),
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: message_type.into(),
        body: text.body,
        command_body: text.command_body,
        addressed_to_bot: addressed,
        parent_id: thread_ts
            .clone()
            .filter(|t| t != ts)
            .map(|t| format!("{channel}:{t}")),
        root_id: thread_ts.map(|t| format!("{channel}:{t}")),
        thread_id,
        create_time_ms: ts_ms(ts).unwrap_or_default(),
        mentions: text.mentions,
        attachments,
    }))
}

/// `files[]` of a `file_share` message; `ref` is the `url_private_download` (or `url_private`)
/// that `fetch-attachment` downloads with the bot token.
fn files(event: &Value) -> Vec<Attachment> {
    let Some(files) = event.get("files").and_then(Value::as_array) else {
        return Vec::new();
    };
    files
        .iter()
        .filter_map(|file| {
            let url = some(str_at(file, "/url_private_download"))
                .or_else(|| some(str_at(file, "/url_private")))?;
            let mime = some(str_at(file, "/mimetype"));
            let kind = mime
                .as_deref()
                .and_then(|m| m.split('/').next())
                .filter(|k| matches!(*k, "image" | "audio" | "video"))
                .unwrap_or("file");
            Some(Attachment {
                kind: kind.into(),
                name: some(str_at(file, "/name")),
                mime,
                size: file.get("size").and_then(Value::as_u64),
                ref_: url,
            })
        })
        .collect()
}

fn action(body: &Value) -> Result<Decoded, PluginError> {
    let pressed = body
        .pointer("/actions/0")
        .ok_or_else(|| PluginError::InvalidInput("block_actions without actions".into()))?;
    let channel = some(str_at(body, "/channel/id"))
        .or_else(|| some(str_at(body, "/container/channel_id")))
        .ok_or_else(|| PluginError::InvalidInput("block_actions outside a channel".into()))?;
    let user = str_at(body, "/user/id");
    if user.is_empty() {
        return Err(PluginError::InvalidInput(
            "block_actions without a user".into(),
        ));
    }
    let action_ts = str_at(pressed, "/action_ts");
    let message_ts =
        some(str_at(body, "/container/message_ts")).or_else(|| some(str_at(body, "/message/ts")));
    let thread_ts = some(str_at(body, "/container/thread_ts"))
        .or_else(|| some(str_at(body, "/message/thread_ts")));
    let value = some(str_at(pressed, "/value"))
        .or_else(|| some(str_at(pressed, "/selected_option/value")))
        .unwrap_or_else(|| pressed.to_string());
    let name = some(str_at(pressed, "/action_id")).unwrap_or_else(|| "action".into());
    let trigger = str_at(body, "/trigger_id");
    Ok(Decoded::Action(InboundAction {
        event_id: trigger.into(),
        action_id: if trigger.is_empty() {
            format!("{user}:{action_ts}")
        } else {
            trigger.into()
        },
        chat: Chat {
            kind: chat_kind(&channel, ""),
            id: channel.clone(),
            title: None,
        },
        sender: Participant {
            id: user.into(),
            display_name: some(str_at(body, "/user/name"))
                .or_else(|| some(str_at(body, "/user/username"))),
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_id: message_ts.map(|ts| format!("{channel}:{ts}")),
        thread_id: thread_ts,
        name,
        value,
        answer_deadline_ms: Some(ACTION_DEADLINE_MS),
        update_token: None,
        create_time_ms: ts_ms(action_ts).unwrap_or_default(),
    }))
}

fn slash_command(host: &mut impl Host, body: &Value) -> Result<Decoded, PluginError> {
    let (command, channel, user) = (
        str_at(body, "/command"),
        str_at(body, "/channel_id"),
        str_at(body, "/user_id"),
    );
    if !command.starts_with('/') || channel.is_empty() || user.is_empty() {
        return Err(PluginError::InvalidInput(
            "a slash command without command, channel_id or user_id".into(),
        ));
    }
    let kind = match str_at(body, "/channel_name") {
        "directmessage" => ChatKind::Direct,
        "privategroup" | "mpdm" => ChatKind::Group,
        _ => chat_kind(channel, ""),
    };
    let text = str_at(body, "/text").trim();
    let typed = if text.is_empty() {
        command.to_string()
    } else {
        format!("{command} {text}")
    };
    let trigger = str_at(body, "/trigger_id");
    let now = host.now_ms();
    Ok(Decoded::Message(InboundMessage {
        event_id: trigger.into(),
        message_id: format!(
            "{channel}:cmd:{}",
            if trigger.is_empty() {
                now.to_string()
            } else {
                trigger.into()
            }
        ),
        chat: Chat {
            id: channel.into(),
            kind,
            title: some(str_at(body, "/channel_name")),
        },
        sender: Participant {
            id: user.into(),
            display_name: some(str_at(body, "/user_name")),
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: "command".into(),
        body: typed.clone(),
        command_body: typed,
        addressed_to_bot: true,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: now,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }))
}

/// A message's text read out of Slack's markup.
#[derive(Debug, Default)]
pub struct Text {
    /// What the agent reads: mentions as `@name` (the cached name, else the id), links as
    /// markdown, entities unescaped.
    pub body: String,
    /// The same without the bot's own mentions, trimmed: what `commands.parse` reads.
    pub command_body: String,
    /// Every user mention (`key` is the raw `<@U…>` token).
    pub mentions: Vec<Mention>,
    /// Whether `<@bot_user_id>` is among them.
    pub mentions_bot: bool,
}

impl Text {
    /// Reads `raw` (`<@U1>`, `<#C1|name>`, `<!here>`, `<url|label>`, `&amp;` …).
    pub fn render(host: &mut impl Host, raw: &str, bot: &str) -> Text {
        let mut text = Text::default();
        let mut rest = raw;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                break;
            };
            let literal = unescape(&rest[..open]);
            text.body.push_str(&literal);
            text.command_body.push_str(&literal);
            let token = &rest[open + 1..open + close];
            let (target, label) = match token.split_once('|') {
                Some((target, label)) => (target, Some(unescape(label))),
                None => (token, None),
            };
            let (shown, in_command) = if let Some(user) = target.strip_prefix('@') {
                let name = label
                    .map(|l| l.trim_start_matches('@').to_string())
                    .or_else(|| {
                        host.kv_get(&keys::name(user))
                            .and_then(|n| String::from_utf8(n).ok())
                    })
                    .unwrap_or_else(|| user.to_string());
                let is_bot = !bot.is_empty() && user == bot;
                text.mentions_bot |= is_bot;
                text.mentions.push(Mention {
                    key: format!("<{token}>"),
                    name: name.clone(),
                    id: Some(user.into()),
                    is_bot,
                });
                (format!("@{name}"), !is_bot)
            } else if let Some(channel) = target.strip_prefix('#') {
                (
                    format!("#{}", label.unwrap_or_else(|| channel.into())),
                    true,
                )
            } else if let Some(special) = target.strip_prefix('!') {
                let name = special.split('^').next().unwrap_or(special);
                (label.unwrap_or_else(|| format!("@{name}")), true)
            } else {
                let url = unescape(target);
                let shown = match label {
                    Some(label) if label != url => format!("[{label}]({url})"),
                    _ => url.trim_start_matches("mailto:").to_string(),
                };
                (shown, true)
            };
            text.body.push_str(&shown);
            if in_command {
                text.command_body.push_str(&shown);
            }
            rest = &rest[open + close + 1..];
        }
        let tail = unescape(rest);
        text.body.push_str(&tail);
        text.command_body.push_str(&tail);
        text.command_body = text.command_body.trim().to_string();
        text
    }
}

/// Slack escapes only `&`, `<` and `>` in text.
pub fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
