//! Event payload → inbound chat message (multica-lark §C, lark-protocol §2.6 and §3).
//!
//! Only `im.message.receive_v1` produces a message; every other event, non-event envelopes
//! (`heartbeat`, `frame_ack`, …) and legacy v1 envelopes are ignored with a reason. The decoder
//! is stateless and cheap: it needs nothing but the payload and the bot's identity.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::content::render_content;
use crate::mentions::{BotIdentity, Mention, resolve_mentions};

/// The event type of a received chat message.
pub const RECEIVE_EVENT_TYPE: &str = "im.message.receive_v1";

/// What the decoder needs to know about the installation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeContext<'a> {
    /// The bot's identity, used for addressing and for removing its own mention.
    pub bot: BotIdentity<'a>,
}

impl<'a> DecodeContext<'a> {
    /// A context for a bot with the given `open_id` and `union_id` (either may be empty).
    pub fn new(bot_open_id: &'a str, bot_union_id: &'a str) -> Self {
        Self {
            bot: BotIdentity {
                open_id: bot_open_id,
                union_id: bot_union_id,
            },
        }
    }
}

/// Kind of conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatType {
    /// One-to-one chat with the bot (`p2p`).
    Direct,
    /// Group chat (`group`, `topic_group` and unknown kinds, which then require an @-mention).
    Group,
}

/// Who sent a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// `sender_id.open_id` (empty when Lark sends none, e.g. system messages).
    pub open_id: String,
    /// `sender_id.union_id`, when present.
    pub union_id: Option<String>,
    /// `sender_id.user_id`, when present (needs an extra scope; often `null`).
    pub user_id: Option<String>,
    /// `sender_type` (`user`, `app`, …); `unknown` when empty.
    pub kind: String,
}

/// A decoded inbound chat message (mirrors the WIT `inbound-message`, plus the routing key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// `header.app_id`: the routing key of the installation.
    pub app_id: String,
    /// `header.event_id` (delivery id), for logs.
    pub event_id: String,
    /// `message.message_id`: the dedup key.
    pub message_id: String,
    /// `message.chat_id`.
    pub chat_id: String,
    /// Direct or group chat.
    pub chat_type: ChatType,
    /// The sender.
    pub sender: Sender,
    /// Raw `message_type`, e.g. `text`, `post`, `image`.
    pub message_type: String,
    /// Flattened body with mentions resolved; what the agent reads.
    pub body: String,
    /// The user's own text before enrichment (text and post messages; empty for other types);
    /// what command parsing reads.
    pub command_body: String,
    /// Group chats: whether the bot is mentioned. Always false for direct chats.
    pub addressed_to_bot: bool,
    /// Message this one replies to.
    pub parent_id: Option<String>,
    /// First message of the reply chain.
    pub root_id: Option<String>,
    /// Topic thread id.
    pub thread_id: Option<String>,
    /// Creation time in milliseconds since the Unix epoch (0 when absent).
    pub create_time_ms: i64,
    /// Mentions in the message, in order.
    pub mentions: Vec<Mention>,
}

/// Result of decoding one event payload.
// Returned once per payload and consumed at once: boxing the message would only add an
// allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Not a chat message for the host; the reason is logged and audited.
    Ignored(String),
    /// A chat message.
    Message(InboundMessage),
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is not a JSON object of the expected shape.
    InvalidJson(String),
    /// A receive event lacks a part it cannot do without.
    MissingField(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidJson(reason) => {
                write!(f, "event payload is not valid JSON: {reason}")
            }
            DecodeError::MissingField(field) => {
                write!(f, "{RECEIVE_EVENT_TYPE} payload has no `{field}`")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one complete event payload (WebSocket data or decrypted webhook body).
pub fn decode_event(payload: &[u8], ctx: &DecodeContext<'_>) -> Result<Decoded, DecodeError> {
    let trimmed = payload.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Decoded::Ignored("empty payload".into()));
    }
    if !trimmed.starts_with(b"{") {
        // Serde would also accept a JSON array for a struct; an envelope is always an object.
        return Err(DecodeError::InvalidJson(
            "payload is not a JSON object".into(),
        ));
    }
    let probe: Probe =
        serde_json::from_slice(payload).map_err(|err| DecodeError::InvalidJson(err.to_string()))?;
    if let Some(kind) = probe.kind.as_deref()
        && kind != "event_callback"
    {
        return Ok(Decoded::Ignored(format!(
            "envelope type `{kind}` is not an event"
        )));
    }
    let header = probe.header.unwrap_or_default();
    if probe.schema.is_none() && header.event_type.is_none() {
        if probe.uuid.is_none() && probe.kind.is_none() {
            return Ok(Decoded::Ignored(
                "payload is neither a v2 nor a v1 event envelope".into(),
            ));
        }
        let event_type = probe
            .event
            .and_then(|event| event.kind)
            .unwrap_or_else(|| "unknown".into());
        return Ok(Decoded::Ignored(format!(
            "legacy v1 event `{event_type}` is not handled"
        )));
    }
    match header.event_type.as_deref() {
        Some(RECEIVE_EVENT_TYPE) => {}
        Some(other) if !other.is_empty() => {
            return Ok(Decoded::Ignored(format!(
                "event type `{other}` is not a chat message"
            )));
        }
        _ => return Ok(Decoded::Ignored("event has no `header.event_type`".into())),
    }

    let envelope: ReceiveEnvelope =
        serde_json::from_slice(payload).map_err(|err| DecodeError::InvalidJson(err.to_string()))?;
    let event = envelope.event.ok_or(DecodeError::MissingField("event"))?;
    let message = event
        .message
        .ok_or(DecodeError::MissingField("event.message"))?;
    let sender = event.sender.unwrap_or_default();
    let sender_ids = sender.sender_id.unwrap_or_default();

    let mentions: Vec<Mention> = message
        .mentions
        .into_iter()
        .map(|mention| {
            let ids = mention.id.unwrap_or_default();
            Mention {
                key: mention.key.unwrap_or_default(),
                name: mention.name.unwrap_or_default(),
                open_id: non_empty(ids.open_id),
                union_id: non_empty(ids.union_id),
            }
        })
        .collect();

    let chat_type = match message.chat_type.as_deref() {
        Some(kind) if kind.eq_ignore_ascii_case("p2p") => ChatType::Direct,
        _ => ChatType::Group,
    };
    let message_type = message.message_type.unwrap_or_default();
    let content = message.content.unwrap_or_default();
    let rendered = render_content(&message_type, &content, &mentions);
    let body = resolve_mentions(&rendered, &mentions, &ctx.bot);
    let command_body = match message_type.as_str() {
        "text" | "post" => body.clone(),
        _ => String::new(),
    };
    let addressed_to_bot = chat_type == ChatType::Group && ctx.bot.is_addressed(&mentions);
    let create_time_ms = parse_ms(message.create_time.as_deref())
        .or_else(|| parse_ms(header.create_time.as_deref()))
        .unwrap_or(0);
    let sender_kind = non_empty(sender.sender_type).unwrap_or_else(|| "unknown".into());

    Ok(Decoded::Message(InboundMessage {
        app_id: header.app_id.unwrap_or_default(),
        event_id: header.event_id.unwrap_or_default(),
        message_id: message.message_id.unwrap_or_default(),
        chat_id: message.chat_id.unwrap_or_default(),
        chat_type,
        sender: Sender {
            open_id: sender_ids.open_id.unwrap_or_default(),
            union_id: non_empty(sender_ids.union_id),
            user_id: non_empty(sender_ids.user_id),
            kind: sender_kind,
        },
        message_type,
        body,
        command_body,
        addressed_to_bot,
        parent_id: non_empty(message.parent_id),
        root_id: non_empty(message.root_id),
        thread_id: non_empty(message.thread_id),
        create_time_ms,
        mentions,
    }))
}

/// The routing key (`app_id`) of an event payload: v2 `header.app_id`, else the v1
/// `event.app_id` (or a top-level `app_id`). `None` for unparsable payloads or when absent.
pub fn routing_key(payload: &[u8]) -> Option<String> {
    if !payload.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let probe: Probe = serde_json::from_slice(payload).ok()?;
    [
        probe.header.and_then(|header| header.app_id),
        probe.event.and_then(|event| event.app_id),
        probe.app_id,
    ]
    .into_iter()
    .flatten()
    .find(|app_id| !app_id.is_empty())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

fn parse_ms(value: Option<&str>) -> Option<i64> {
    value.and_then(|value| value.trim().parse::<i64>().ok())
}

/// Just enough of an envelope to route it; the event body is skipped.
#[derive(Deserialize)]
struct Probe {
    #[serde(default, deserialize_with = "lenient_string")]
    schema: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    uuid: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    app_id: Option<String>,
    #[serde(default)]
    header: Option<EnvelopeHeader>,
    #[serde(default)]
    event: Option<ProbeEvent>,
}

#[derive(Deserialize)]
struct ProbeEvent {
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    app_id: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EnvelopeHeader {
    #[serde(deserialize_with = "lenient_string")]
    event_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    event_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    create_time: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    app_id: Option<String>,
}

#[derive(Deserialize)]
struct ReceiveEnvelope {
    #[serde(default)]
    event: Option<ReceiveEvent>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ReceiveEvent {
    sender: Option<EventSender>,
    message: Option<EventMessage>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventSender {
    #[serde(deserialize_with = "lenient_ids")]
    sender_id: Option<UserIds>,
    #[serde(deserialize_with = "lenient_string")]
    sender_type: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct UserIds {
    #[serde(deserialize_with = "lenient_string")]
    open_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    union_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    user_id: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventMessage {
    #[serde(deserialize_with = "lenient_string")]
    message_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    root_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    parent_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    thread_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    create_time: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    chat_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    chat_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    message_type: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    content: Option<String>,
    #[serde(deserialize_with = "lenient_mentions")]
    mentions: Vec<EventMention>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventMention {
    #[serde(deserialize_with = "lenient_string")]
    key: Option<String>,
    #[serde(deserialize_with = "lenient_ids")]
    id: Option<UserIds>,
    #[serde(deserialize_with = "lenient_string")]
    name: Option<String>,
}

/// Accepts a string or a number as text; `null`, booleans, arrays and objects become `None`
/// (they are consumed, not rejected), so one odd field never fails the whole event.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct LenientString;

    impl<'de> Visitor<'de> for LenientString {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, a number or anything ignorable")
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(Some(value.to_string()))
        }
        fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
            Ok(Some(value))
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(Some(value.to_string()))
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(Some(value.to_string()))
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
            Ok(Some(value.to_string()))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    deserializer.deserialize_any(LenientString)
}

/// Accepts an id object `{open_id, union_id, user_id}` or a bare open_id string (the REST
/// shape); anything else becomes `None`.
fn lenient_ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<UserIds>, D::Error> {
    struct LenientIds;

    impl<'de> Visitor<'de> for LenientIds {
        type Value = Option<UserIds>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an id object or an open_id string")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            UserIds::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(Some(UserIds {
                open_id: Some(value.to_string()),
                ..UserIds::default()
            }))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    deserializer.deserialize_any(LenientIds)
}

/// Accepts a mention array (elements that are not objects are skipped); anything else, `null`
/// included, means no mentions.
fn lenient_mentions<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<EventMention>, D::Error> {
    struct LenientMention(Option<EventMention>);

    impl<'de> Deserialize<'de> for LenientMention {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct MentionVisitor;

            impl<'de> Visitor<'de> for MentionVisitor {
                type Value = LenientMention;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a mention object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    EventMention::deserialize(de::value::MapAccessDeserializer::new(map))
                        .map(|mention| LenientMention(Some(mention)))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(LenientMention(None))
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(LenientMention(None))
                }
            }

            deserializer.deserialize_any(MentionVisitor)
        }
    }

    struct MentionsVisitor;

    impl<'de> Visitor<'de> for MentionsVisitor {
        type Value = Vec<EventMention>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of mentions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut mentions = Vec::new();
            while let Some(LenientMention(mention)) = seq.next_element()? {
                mentions.extend(mention);
            }
            Ok(mentions)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Vec::new())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }

    deserializer.deserialize_any(MentionsVisitor)
}
