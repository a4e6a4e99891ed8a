//! `Update` → neutral records: messages (text, captions, media, stickers, locations, contacts,
//! polls, dice), callback queries as actions, everything else ignored with a reason.
//!
//! Ids: a message's id is `{chat_id}:{message_id}` (Telegram's `message_id` is unique only per
//! chat); the event id is the `update_id`. A forum topic (`is_topic_message`) is the session's
//! thread, keyed on `message_thread_id`.

use serde_json::Value;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::decoder::Decoded;
use switchboard_plugin_sdk::types::{
    Attachment, Chat, ChatKind, InboundAction, InboundMessage, Mention, Participant, PluginError,
};

use crate::api::id_text;

/// How long Telegram's client waits for `answerCallbackQuery` (undocumented; about 15 s is
/// observed, so the host is told less).
pub const CALLBACK_DEADLINE_MS: u32 = 10_000;

/// The longest quoted parent kept in a reply's body (characters).
const QUOTE_CHARS: usize = 300;

/// What the decoder knows about the installation's bot, and the time of the call.
#[derive(Debug, Clone, Copy)]
pub struct Bot<'a> {
    /// `bot_id` config: replies to this user are replies to the bot.
    pub id: &'a str,
    /// `bot_username` config, without `@`: mentions and `/cmd@username`.
    pub username: &'a str,
    /// Now, in ms since the epoch (a callback query carries no time).
    pub now_ms: i64,
}

fn invalid(what: impl Into<String>) -> PluginError {
    PluginError::InvalidInput(what.into())
}

/// Decodes one raw `Update`.
pub fn decode(payload: &[u8], bot: &Bot) -> Result<Decoded, PluginError> {
    let update: Value =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let event_id = update
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid("not a Telegram update: no `update_id`"))?
        .to_string();
    if let Some(message) = update.get("message").or_else(|| update.get("channel_post")) {
        return decode_message(event_id, message, bot);
    }
    if let Some(query) = update.get("callback_query") {
        return decode_callback(event_id, query, bot);
    }
    let kind = update
        .as_object()
        .and_then(|fields| fields.keys().find(|k| *k != "update_id"))
        .map_or("empty", String::as_str);
    Ok(Decoded::Ignored(match kind {
        "edited_message" | "edited_channel_post" => "an edit does not start a new turn".into(),
        "my_chat_member" => "the bot's own membership changed (my_chat_member)".into(),
        other => format!("`{other}` updates are not handled"),
    }))
}

/// `{chat_id}:{message_id}`; none for Telegram's id 0 (ephemeral and scheduled messages).
fn message_key(chat_id: &str, message: &Value) -> Option<String> {
    let id = message.get("message_id")?.as_i64().filter(|id| *id != 0)?;
    Some(format!("{chat_id}:{id}"))
}

fn full_name(user: &Value) -> Option<String> {
    let parts: Vec<&str> = ["first_name", "last_name", "title"]
        .iter()
        .filter_map(|k| user[*k].as_str())
        .collect();
    let name = parts.join(" ").trim().to_string();
    (!name.is_empty()).then_some(name)
}

fn chat_of(message: &Value) -> Result<Chat, PluginError> {
    let chat = &message["chat"];
    let id = id_text(&chat["id"]).ok_or_else(|| invalid("the message has no `chat.id`"))?;
    let kind = match chat["type"].as_str() {
        Some("private") => ChatKind::Direct,
        Some("channel") => ChatKind::Channel,
        _ => ChatKind::Group,
    };
    Ok(Chat {
        id,
        kind,
        title: full_name(chat),
    })
}

fn participant(user: &Value) -> Option<Participant> {
    Some(Participant {
        id: id_text(&user["id"])?,
        display_name: full_name(user),
        is_bot: user["is_bot"].as_bool().unwrap_or(false),
        alt_ids: Vec::new(),
    })
}

/// The forum topic of a message, if it is a topic message.
fn topic(message: &Value) -> Option<String> {
    (message["is_topic_message"] == Value::Bool(true))
        .then(|| id_text(&message["message_thread_id"]))
        .flatten()
}

/// The text of `text` at UTF-16 `offset` and `length` (entities count in UTF-16 code units).
fn utf16_slice(text: &str, offset: usize, length: usize) -> &str {
    let (mut units, mut start, mut end) = (0, None, text.len());
    for (at, ch) in text.char_indices() {
        if units >= offset && start.is_none() {
            start = Some(at);
        }
        if units >= offset + length {
            end = at;
            break;
        }
        units += ch.len_utf16();
    }
    start.map_or("", |start| &text[start..end.max(start)])
}

/// What a message holds: its type, the body the agent reads, and its file.
type Content = (&'static str, String, Option<Attachment>);

/// Media that are a file: (message key, attachment kind, what the body calls it).
const FILES: [(&str, &str, &str); 6] = [
    ("animation", "video", "animation"),
    ("video", "video", "video"),
    ("video_note", "video", "video message"),
    ("voice", "audio", "voice message"),
    ("audio", "audio", "audio"),
    ("document", "file", "document"),
];

fn attachment(kind: &str, file: &Value) -> Option<Attachment> {
    let mime = file["mime_type"]
        .as_str()
        .or((kind == "image").then_some("image/jpeg"));
    Some(Attachment {
        kind: kind.into(),
        name: file["file_name"].as_str().map(str::to_string),
        mime: mime.map(str::to_string),
        size: file["file_size"].as_u64(),
        ref_: file["file_id"].as_str()?.to_string(),
    })
}

fn content(m: &Value) -> Option<Content> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(text) = m["text"].as_str() {
        return Some(("text", text.into(), None));
    }
    if let Some(largest) = m["photo"].as_array().and_then(|sizes| sizes.last()) {
        return Some(("photo", "[photo]".into(), attachment("image", largest)));
    }
    for (key, kind, label) in FILES {
        let file = &m[key];
        if file.is_object() {
            let body = match (file["file_name"].as_str(), file["duration"].as_u64()) {
                (Some(name), _) => format!("[{label}: {name}]"),
                (None, Some(seconds)) => format!("[{label}, {seconds} s]"),
                _ => format!("[{label}]"),
            };
            return Some((key, body, attachment(kind, file)));
        }
    }
    let (sticker, venue, location) = (&m["sticker"], &m["venue"], &m["location"]);
    let (contact, poll, dice) = (&m["contact"], &m["poll"], &m["dice"]);
    Some(if sticker.is_object() {
        let set = sticker["set_name"]
            .as_str()
            .map_or(String::new(), |n| format!(" from the set \"{n}\""));
        let body = format!("[sticker {}{set}]", s(&sticker["emoji"]));
        ("sticker", body, attachment("sticker", sticker))
    } else if venue.is_object() {
        let at = &venue["location"];
        let (title, address) = (s(&venue["title"]), s(&venue["address"]));
        let body = format!(
            "[venue: {title}, {address} ({}, {})]",
            at["latitude"], at["longitude"]
        );
        ("location", body, None)
    } else if location.is_object() {
        let body = format!(
            "[location: {}, {}]",
            location["latitude"], location["longitude"]
        );
        ("location", body, None)
    } else if contact.is_object() {
        let name = full_name(contact).unwrap_or_default();
        (
            "contact",
            format!("[contact: {name}, {}]", s(&contact["phone_number"])),
            None,
        )
    } else if poll.is_object() {
        let options: Vec<String> = poll["options"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| s(&o["text"]))
            .collect();
        let body = format!(
            "[poll: {} — options: {}]",
            s(&poll["question"]),
            options.join(" / ")
        );
        ("poll", body, None)
    } else if dice.is_object() {
        (
            "dice",
            format!("[dice {}: {}]", s(&dice["emoji"]), dice["value"]),
            None,
        )
    } else {
        return None;
    })
}

/// The body of the agent: the content, a caption after its marker, and the parent quoted.
fn body_of(message: &Value, mut body: String, bot: &Bot) -> String {
    if let Some(caption) = message["caption"].as_str().filter(|c| !c.is_empty()) {
        body = format!("{body} {caption}");
    }
    let parent = &message["reply_to_message"];
    // In a forum every topic message replies to the topic's creation: not a quote.
    if !parent.is_object() || parent.get("forum_topic_created").is_some() {
        return body;
    }
    let who = if id_text(&parent["from"]["id"]).as_deref() == Some(bot.id) {
        "the bot".to_string()
    } else {
        full_name(&parent["from"]).unwrap_or_else(|| "someone".into())
    };
    let quoted = message["quote"]["text"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            parent["text"]
                .as_str()
                .or(parent["caption"].as_str())
                .map(str::to_string)
        })
        .or_else(|| content(parent).map(|(_, body, _)| body))
        .unwrap_or_else(|| "a message that is not available".into());
    let mut quoted: String = quoted.chars().take(QUOTE_CHARS).collect();
    if quoted.chars().count() == QUOTE_CHARS {
        quoted.push('…');
    }
    format!("[in reply to {who}: \"{quoted}\"]\n{body}")
}

fn decode_message(event_id: String, m: &Value, bot: &Bot) -> Result<Decoded, PluginError> {
    let chat = chat_of(m)?;
    let Some((kind, body, attachment)) = content(m) else {
        let what = m.as_object().and_then(|fields| {
            fields.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "message_id"
                        | "from"
                        | "sender_chat"
                        | "chat"
                        | "date"
                        | "message_thread_id"
                        | "is_topic_message"
                )
            })
        });
        return Ok(Decoded::Ignored(format!(
            "a service message ({}) is not a turn",
            what.map_or("empty", String::as_str)
        )));
    };
    let sender = participant(&m["from"])
        .or_else(|| participant(&m["sender_chat"]))
        .ok_or_else(|| invalid("the message has no sender"))?;
    let text = m["text"]
        .as_str()
        .or(m["caption"].as_str())
        .unwrap_or_default();
    let entities = m["entities"]
        .as_array()
        .or(m["caption_entities"].as_array());
    let mut addressed = false;
    let mut other_bots_command = false;
    let mut command_body = text.to_string();
    let mut mentions = Vec::new();
    for entity in entities.into_iter().flatten() {
        let offset = entity["offset"].as_u64().unwrap_or(0) as usize;
        let slice = utf16_slice(
            text,
            offset,
            entity["length"].as_u64().unwrap_or(0) as usize,
        );
        match entity["type"].as_str() {
            Some("mention") => {
                let name = slice.trim_start_matches('@');
                let ours = name.eq_ignore_ascii_case(bot.username);
                addressed |= ours;
                mentions.push(Mention {
                    key: slice.into(),
                    name: name.into(),
                    id: ours.then(|| bot.id.to_string()),
                    is_bot: ours,
                });
            }
            Some("text_mention") => {
                let id = id_text(&entity["user"]["id"]);
                let ours = id.as_deref() == Some(bot.id);
                addressed |= ours;
                mentions.push(Mention {
                    key: String::new(),
                    name: slice.into(),
                    id,
                    is_bot: ours,
                });
            }
            Some("bot_command") if offset == 0 => {
                if let Some((command, target)) = slice.split_once('@') {
                    if target.eq_ignore_ascii_case(bot.username) {
                        addressed = true;
                        command_body = format!("{command}{}", &text[slice.len()..]);
                    } else {
                        other_bots_command = true;
                    }
                }
            }
            _ => {}
        }
    }
    // `@bot /new`: the command after this bot's own leading mention.
    if let Some(rest) = command_body.strip_prefix('@')
        && rest.len() >= bot.username.len()
        && rest.is_char_boundary(bot.username.len())
        && rest[..bot.username.len()].eq_ignore_ascii_case(bot.username)
        && !bot.username.is_empty()
    {
        command_body = rest[bot.username.len()..].trim_start().to_string();
    }
    addressed |= id_text(&m["reply_to_message"]["from"]["id"]).as_deref() == Some(bot.id);
    let addressed = chat.kind == ChatKind::Direct || (addressed && !other_bots_command);
    let parent = &m["reply_to_message"];
    let parent_id = (parent.get("forum_topic_created").is_none())
        .then(|| message_key(&chat.id, parent))
        .flatten();
    Ok(Decoded::Message(InboundMessage {
        event_id,
        message_id: message_key(&chat.id, m).unwrap_or_default(),
        body: body_of(m, body, bot),
        message_type: kind.into(),
        command_body,
        addressed_to_bot: addressed,
        parent_id,
        root_id: None,
        thread_id: topic(m),
        create_time_ms: m["date"].as_i64().unwrap_or(0).saturating_mul(1000),
        mentions,
        attachments: attachment.into_iter().collect(),
        sender,
        chat,
    }))
}

fn decode_callback(event_id: String, q: &Value, bot: &Bot) -> Result<Decoded, PluginError> {
    let action_id = id_text(&q["id"]).ok_or_else(|| invalid("the callback query has no `id`"))?;
    let message = &q["message"];
    if !message.is_object() {
        return Ok(Decoded::Ignored(
            "a callback query from an inline message has no chat".into(),
        ));
    }
    let chat = chat_of(message)?;
    let data = q["data"]
        .as_str()
        .or(q["game_short_name"].as_str())
        .unwrap_or_default();
    let (name, value) = data.split_once(':').unwrap_or((data, ""));
    Ok(Decoded::Action(InboundAction {
        event_id,
        action_id,
        sender: participant(&q["from"])
            .ok_or_else(|| invalid("the callback query has no `from`"))?,
        message_id: message_key(&chat.id, message),
        thread_id: topic(message),
        name: name.into(),
        value: value.into(),
        answer_deadline_ms: Some(CALLBACK_DEADLINE_MS),
        update_token: None,
        create_time_ms: bot.now_ms,
        chat,
    }))
}
