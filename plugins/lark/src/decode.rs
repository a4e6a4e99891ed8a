//! Event payload → inbound chat message (reference §C, lark-protocol §2.6 and §3).
//!
//! Only `im.message.receive_v1` produces a message; every other event, non-event envelopes
//! (`heartbeat`, `frame_ack`, …) and legacy v1 envelopes are ignored with a reason. The decoder
//! is stateless and cheap: it needs nothing but the payload and the bot's identity, and it parses
//! a payload once, borrowing its strings (only the decoded message's own fields are allocated).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use crate::content::Attachment;
use crate::content::render_with_attachments;
use crate::json::visit_rest_as;
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
    /// Images, files, audio and video of the message ([`crate::content::attachments`]).
    pub attachments: Vec<Attachment>,
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
///
/// The payload is parsed once, into borrowed typed structs: the envelope with the message, then
/// the message's `content` string into the fields its type uses. Only a payload that this one
/// pass rejects is read again the strict way (envelope first, then the message of a receive
/// event), so that a malformed `event` of an event type that is ignored anyway is still ignored.
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
    // Validating the UTF-8 once lets serde_json skip it string by string; a payload that is
    // not UTF-8 is still read as bytes (its invalid bytes may sit in ignored fields).
    let envelope = match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str::<Envelope<'_>>(text),
        Err(_) => serde_json::from_slice::<Envelope<'_>>(payload),
    };
    let Ok(envelope) = envelope else {
        return decode_in_two_passes(payload, ctx);
    };
    let header = envelope.header.unwrap_or_default();
    let event = envelope.event.0;
    let event_kind = event.as_ref().and_then(|event| event.kind.0.as_deref());
    let kinds = [&envelope.schema, &envelope.kind, &envelope.uuid];
    if let Some(reason) = triage(kinds, &header, event_kind) {
        return Ok(Decoded::Ignored(reason));
    }
    let event = event.ok_or(DecodeError::MissingField("event"))?;
    build_message(header, event.sender, event.message, ctx)
}

/// The strict reading, for payloads the one-pass parse rejects: the envelope alone first (a
/// syntax error is an error), then, for a receive event, the message.
fn decode_in_two_passes(payload: &[u8], ctx: &DecodeContext<'_>) -> Result<Decoded, DecodeError> {
    let probe: Probe<'_> =
        serde_json::from_slice(payload).map_err(|err| DecodeError::InvalidJson(err.to_string()))?;
    let header = probe.header.unwrap_or_default();
    let event_kind = probe
        .event
        .as_ref()
        .and_then(|event| event.kind.0.as_deref());
    if let Some(reason) = triage(
        [&probe.schema, &probe.kind, &probe.uuid],
        &header,
        event_kind,
    ) {
        return Ok(Decoded::Ignored(reason));
    }
    let envelope: ReceiveEnvelope<'_> =
        serde_json::from_slice(payload).map_err(|err| DecodeError::InvalidJson(err.to_string()))?;
    let event = envelope.event.ok_or(DecodeError::MissingField("event"))?;
    build_message(header, event.sender, event.message, ctx)
}

/// Why an envelope is not a chat message (`None` for an `im.message.receive_v1` event), from
/// its top-level `[schema, type, uuid]`, its header and its `event.type`.
fn triage(
    [schema, kind, uuid]: [&Text<'_>; 3],
    header: &EnvelopeHeader<'_>,
    event_kind: Option<&str>,
) -> Option<String> {
    if let Some(kind) = kind.0.as_deref()
        && kind != "event_callback"
    {
        return Some(format!("envelope type `{kind}` is not an event"));
    }
    if schema.0.is_none() && header.event_type.0.is_none() {
        if uuid.0.is_none() && kind.0.is_none() {
            return Some("payload is neither a v2 nor a v1 event envelope".into());
        }
        let event_type = event_kind.unwrap_or("unknown");
        // Refused, not decoded: v1 `message` events lack the v2 message body (`content`,
        // mentions, `thread_id`) the decoder and enricher build on, and Lark stopped offering
        // them to new apps; the reason tells the operator what to subscribe to instead.
        return Some(format!(
            "legacy v1 event `{event_type}` is not handled: subscribe the app to \
             `im.message.receive_v1` (event schema 2.0)"
        ));
    }
    match header.event_type.0.as_deref() {
        Some(RECEIVE_EVENT_TYPE) => None,
        Some(other) if !other.is_empty() => {
            Some(format!("event type `{other}` is not a chat message"))
        }
        _ => Some("event has no `header.event_type`".into()),
    }
}

/// The inbound message of a receive event.
fn build_message(
    header: EnvelopeHeader<'_>,
    sender: Option<EventSender<'_>>,
    message: Option<EventMessage<'_>>,
    ctx: &DecodeContext<'_>,
) -> Result<Decoded, DecodeError> {
    let message = message.ok_or(DecodeError::MissingField("event.message"))?;
    let sender = sender.unwrap_or_default();
    let sender_ids = sender.sender_id.0.unwrap_or_default();

    let mentions: Vec<Mention> = message
        .mentions
        .0
        .into_iter()
        .map(|mention| {
            let ids = mention.id.0.unwrap_or_default();
            Mention {
                key: owned(mention.key.0),
                name: owned(mention.name.0),
                open_id: non_empty(ids.open_id.0),
                union_id: non_empty(ids.union_id.0),
            }
        })
        .collect();

    let chat_type = match message.chat_type.0.as_deref() {
        Some(kind) if kind.eq_ignore_ascii_case("p2p") => ChatType::Direct,
        _ => ChatType::Group,
    };
    let message_type = owned(message.message_type.0);
    let content = message.content.0.unwrap_or_default();
    let (rendered, attachments) = render_with_attachments(&message_type, &content, &mentions);
    let body = resolve_mentions(&rendered, &mentions, &ctx.bot);
    let command_body = match message_type.as_str() {
        "text" | "post" => body.clone(),
        _ => String::new(),
    };
    let addressed_to_bot = chat_type == ChatType::Group && ctx.bot.is_addressed(&mentions);
    let create_time_ms = parse_ms(message.create_time.0.as_deref())
        .or_else(|| parse_ms(header.create_time.0.as_deref()))
        .unwrap_or(0);
    let sender_kind = non_empty(sender.sender_type.0).unwrap_or_else(|| "unknown".into());

    Ok(Decoded::Message(InboundMessage {
        app_id: owned(header.app_id.0),
        event_id: owned(header.event_id.0),
        message_id: owned(message.message_id.0),
        chat_id: owned(message.chat_id.0),
        chat_type,
        sender: Sender {
            open_id: owned(sender_ids.open_id.0),
            union_id: non_empty(sender_ids.union_id.0),
            user_id: non_empty(sender_ids.user_id.0),
            kind: sender_kind,
        },
        message_type,
        body,
        command_body,
        addressed_to_bot,
        parent_id: non_empty(message.parent_id.0),
        root_id: non_empty(message.root_id.0),
        thread_id: non_empty(message.thread_id.0),
        create_time_ms,
        mentions,
        attachments,
    }))
}

/// The routing key (`app_id`) of an event payload: v2 `header.app_id`, else the v1
/// `event.app_id` (or a top-level `app_id`). `None` for unparsable payloads or when absent.
pub fn routing_key(payload: &[u8]) -> Option<String> {
    if !payload.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let probe: Probe<'_> = serde_json::from_slice(payload).ok()?;
    [
        probe.header.and_then(|header| header.app_id.0),
        probe.event.and_then(|event| event.app_id.0),
        probe.app_id.0,
    ]
    .into_iter()
    .flatten()
    .find(|app_id| !app_id.is_empty())
    .map(Cow::into_owned)
}

fn owned(value: Option<Cow<'_, str>>) -> String {
    value.map(Cow::into_owned).unwrap_or_default()
}

fn non_empty(value: Option<Cow<'_, str>>) -> Option<String> {
    value.filter(|value| !value.is_empty()).map(Cow::into_owned)
}

fn parse_ms(value: Option<&str>) -> Option<i64> {
    value.and_then(|value| value.trim().parse::<i64>().ok())
}

/// An event envelope (v2 `{schema, header, event}` or v1 `{uuid, type, event}`) with the
/// sender and message of a receive event, in one pass.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    schema: Text<'a>,
    #[serde(default, borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default, borrow)]
    uuid: Text<'a>,
    /// Not used; read so that a duplicate key fails this parse as it fails [`Probe`].
    #[serde(default, borrow, rename = "app_id")]
    _app_id: Text<'a>,
    #[serde(default, borrow)]
    header: Option<EnvelopeHeader<'a>>,
    #[serde(default, borrow)]
    event: EventObject<'a>,
}

/// Just enough of an envelope to route or triage it; the event body is skipped.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(default, borrow)]
    schema: Text<'a>,
    #[serde(default, borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default, borrow)]
    uuid: Text<'a>,
    #[serde(default, borrow)]
    app_id: Text<'a>,
    #[serde(default, borrow)]
    header: Option<EnvelopeHeader<'a>>,
    #[serde(default, borrow)]
    event: Option<ProbeEvent<'a>>,
}

#[derive(Deserialize)]
struct ProbeEvent<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default, borrow)]
    app_id: Text<'a>,
}

/// The second, strict pass over a receive event: its sender and message.
#[derive(Deserialize)]
struct ReceiveEnvelope<'a> {
    #[serde(default, borrow)]
    event: Option<ReceiveEvent<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ReceiveEvent<'a> {
    #[serde(borrow)]
    sender: Option<EventSender<'a>>,
    #[serde(borrow)]
    message: Option<EventMessage<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EnvelopeHeader<'a> {
    #[serde(borrow)]
    event_id: Text<'a>,
    #[serde(borrow)]
    event_type: Text<'a>,
    #[serde(borrow)]
    create_time: Text<'a>,
    #[serde(borrow)]
    app_id: Text<'a>,
}

/// The `event` object of the one-pass parse: its v1 `type`, and the sender and message of a
/// receive event.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    /// Not used; read so that a duplicate key fails this parse as it fails [`ProbeEvent`].
    #[serde(borrow, rename = "app_id")]
    _app_id: Text<'a>,
    #[serde(borrow)]
    sender: Option<EventSender<'a>>,
    #[serde(borrow)]
    message: Option<EventMessage<'a>>,
}

/// `event` in the one-pass parse: an object or `null`. Anything else fails the pass, so that
/// the strict two-pass reading decides (serde reads an array as the struct's fields in order,
/// which differs between the one-pass and the two-pass structs).
#[derive(Default)]
struct EventObject<'a>(Option<Event<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for EventObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for EventVisitor<'a> {
            type Value = EventObject<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Event::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|event| EventObject(Some(event)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(EventObject(None))
            }
        }

        deserializer.deserialize_any(EventVisitor(PhantomData))
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventSender<'a> {
    #[serde(borrow)]
    sender_id: Ids<'a>,
    #[serde(borrow)]
    sender_type: Text<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct UserIds<'a> {
    #[serde(borrow)]
    open_id: Text<'a>,
    #[serde(borrow)]
    union_id: Text<'a>,
    #[serde(borrow)]
    user_id: Text<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventMessage<'a> {
    #[serde(borrow)]
    message_id: Text<'a>,
    #[serde(borrow)]
    root_id: Text<'a>,
    #[serde(borrow)]
    parent_id: Text<'a>,
    #[serde(borrow)]
    thread_id: Text<'a>,
    #[serde(borrow)]
    create_time: Text<'a>,
    #[serde(borrow)]
    chat_id: Text<'a>,
    #[serde(borrow)]
    chat_type: Text<'a>,
    #[serde(borrow)]
    message_type: Text<'a>,
    #[serde(borrow)]
    content: Text<'a>,
    #[serde(borrow)]
    mentions: Mentions<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EventMention<'a> {
    #[serde(borrow)]
    key: Text<'a>,
    #[serde(borrow)]
    id: Ids<'a>,
    #[serde(borrow)]
    name: Text<'a>,
}

/// A string or a number as text; `null`, booleans, arrays and objects become `None` (they are
/// consumed, not rejected), so one odd field never fails the whole event.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or anything ignorable")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(value))))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(value.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(value))))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(value.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(value.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(value.to_string()))))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(self)
            }
            visit_rest_as!(IgnoredAny => Text(None); bool, unit, seq, map);
        }

        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

/// Accepts an id object `{open_id, union_id, user_id}` or a bare open_id string (the REST
/// shape); anything else becomes `None`.
#[derive(Default)]
struct Ids<'a>(Option<UserIds<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Ids<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdsVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for IdsVisitor<'a> {
            type Value = Ids<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id object or an open_id string")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                UserIds::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|ids| Ids(Some(ids)))
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Ids::open_id(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Ids::open_id(Cow::Owned(value.to_owned())))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Ids(None))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(self)
            }
            visit_rest_as!(IgnoredAny => Ids(None); bool, i64, u64, f64, unit, seq);
        }

        deserializer.deserialize_any(IdsVisitor(PhantomData))
    }
}

impl<'a> Ids<'a> {
    fn open_id(open_id: Cow<'a, str>) -> Self {
        Ids(Some(UserIds {
            open_id: Text(Some(open_id)),
            ..UserIds::default()
        }))
    }
}

/// A mention array (elements that are not objects are skipped); anything else, `null`
/// included, means no mentions.
#[derive(Default)]
struct Mentions<'a>(Vec<EventMention<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Mentions<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One element: a mention object, or `None` for anything else.
        struct Element<'a>(Option<EventMention<'a>>);

        impl<'de: 'a, 'a> Deserialize<'de> for Element<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ElementVisitor<'a>(PhantomData<&'a ()>);

                impl<'de: 'a, 'a> Visitor<'de> for ElementVisitor<'a> {
                    type Value = Element<'a>;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a mention object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        EventMention::deserialize(de::value::MapAccessDeserializer::new(map))
                            .map(|mention| Element(Some(mention)))
                    }
                    visit_rest_as!(IgnoredAny => Element(None); bool, i64, u64, f64, str, unit, seq);
                }

                deserializer.deserialize_any(ElementVisitor(PhantomData))
            }
        }

        struct MentionsVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for MentionsVisitor<'a> {
            type Value = Mentions<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of mentions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut mentions = Vec::new();
                while let Some(Element(mention)) = seq.next_element()? {
                    mentions.extend(mention);
                }
                Ok(Mentions(mentions))
            }
            visit_rest_as!(IgnoredAny => Mentions(Vec::new()); bool, i64, u64, f64, str, unit, map);
        }

        deserializer.deserialize_any(MentionsVisitor(PhantomData))
    }
}
