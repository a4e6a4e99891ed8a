//! The inbound decode step: one inbound unit (a WebSocket frame, a webhook request or an event
//! payload) → a decoded outcome, through a channel plugin.
//!
//! Owns: the order of plugin calls for one unit (classify → host reassembly → decode → command
//! parse; or verify → payloads), and turning the plugin's answers into small typed outcomes that
//! the replay harness (`switchboard replay`), the long-connection connector and the dispatcher
//! share.
//!
//! Must not touch: storage (no dedup, sessions or audit rows), sockets, sending ACKs or HTTP
//! answers (it hands back the bytes to send), or the clock: time is passed in as an [`Instant`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::dispatch::Command;
use crate::domain::InstallationContext;
use crate::hygiene::{MAX_ID_BYTES, MAX_TEXT_BYTES, Unstorable, check, check_opt, strip_nul};
use crate::ingest::reassembly::{Fragment, Limits, Push, Reassembler};
use crate::runtime::transport::{
    ConnectionHints, EventReading, FrameClass, WebhookRejection, WebhookRequest, WebhookResponse,
    WebhookVerdict,
};
use crate::runtime::types::{InboundAction, InboundMessage, PluginError};
use crate::runtime::{CallError, Plugin};

/// What one complete event payload decoded to.
// Produced once per payload and consumed at once; boxing the message would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DecodeOutcome {
    /// A chat message, with the command its `command_body` carries (if any), or an action
    /// (a message-shaped record of it with [`Command::Action`]).
    Message {
        /// The decoded message.
        message: InboundMessage,
        /// The plugin's `commands.parse` of `message.command_body` as the host reads it;
        /// `None` for plain text.
        command: Option<Command>,
    },
    /// Not a chat message for the host; the plugin's reason (logged and audited).
    Ignored(String),
    /// The plugin refused the payload (`invalid-input` for malformed JSON; `retryable` asks the
    /// channel to redeliver).
    Invalid(PluginError),
}

/// Decodes one complete event payload and, for a message, parses its command text.
///
/// The outer `Err` is a runtime failure of a plugin call (trap, timeout, limit).
pub async fn decode_payload(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    payload: &[u8],
) -> Result<DecodeOutcome, CallError> {
    use crate::runtime::decoder::Decoded;
    match plugin.decode(cx, payload).await? {
        Ok(Decoded::Message(message)) => {
            // Nothing the user did not type can be a command: skip the call for empty text.
            let command = if message.command_body.trim().is_empty() {
                None
            } else {
                plugin
                    .parse_command(cx, &message.command_body)
                    .await?
                    .map(|c| Command::parsed(&c.name, &c.args))
            };
            Ok(DecodeOutcome::Message { message, command })
        }
        Ok(Decoded::Action(action)) => Ok(action_outcome(action)),
        Ok(Decoded::Ignored(reason)) => Ok(DecodeOutcome::Ignored(reason)),
        Err(error) => Ok(DecodeOutcome::Invalid(error)),
    }
}

/// An action as the dispatcher takes it: a message-shaped record (the action id is its dedup
/// key, its body what the agent reads) with [`Command::Action`].
pub fn action_outcome(action: InboundAction) -> DecodeOutcome {
    let body = format!("[action {}] {}", action.name, action.value);
    let message = InboundMessage {
        event_id: action.event_id,
        message_id: action.action_id,
        chat: action.chat,
        sender: action.sender,
        message_type: "action".into(),
        body,
        command_body: String::new(),
        addressed_to_bot: true,
        parent_id: action.message_id.clone(),
        root_id: None,
        thread_id: action.thread_id,
        create_time_ms: action.create_time_ms,
        mentions: Vec::new(),
        attachments: Vec::new(),
    };
    DecodeOutcome::Message {
        message,
        command: Some(Command::Action {
            name: action.name,
            value: action.value,
            on_message: action.message_id,
            update_token: action.update_token,
        }),
    }
}

/// The [`DecodeOutcome`] of an event the plugin already read while classifying its frame
/// (`frame-event`: what `decode` and `commands.parse` would have answered).
pub fn read_outcome(event: EventReading) -> DecodeOutcome {
    use crate::runtime::decoder::Decoded;
    match event.decoded {
        Ok(Decoded::Message(message)) => DecodeOutcome::Message {
            message,
            command: event.command.map(|c| Command::parsed(&c.name, &c.args)),
        },
        Ok(Decoded::Action(action)) => action_outcome(action),
        Ok(Decoded::Ignored(reason)) => DecodeOutcome::Ignored(reason),
        Err(error) => DecodeOutcome::Invalid(error),
    }
}

/// A plugin error in plain words (`invalid input: …`, `retryable: …`).
pub fn describe_plugin_error(error: &PluginError) -> String {
    match error {
        PluginError::InvalidInput(reason) => format!("invalid input: {reason}"),
        PluginError::Unauthorized(reason) => format!("unauthorized: {reason}"),
        PluginError::Retryable(reason) => format!("retryable: {reason}"),
        PluginError::Fatal(reason) => format!("fatal: {reason}"),
    }
}

/// What one inbound WebSocket frame led to.
// Produced once per frame and consumed at once (like `DecodeOutcome`); boxing the completed
// event would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FrameOutcome {
    /// A control frame (ping, pong, …).
    Control {
        /// `ping`, `pong`, ….
        kind: String,
        /// Frame to send back, if the protocol wants one.
        reply: Option<Vec<u8>>,
        /// New connection tuning carried by the frame.
        hints: Option<ConnectionHints>,
    },
    /// Not for the host (the plugin's reason); no ACK.
    Ignored(String),
    /// A fragment of a larger message was buffered; no ACK yet.
    Partial {
        /// Transport message id shared by the fragments.
        message_id: String,
        /// Distinct fragments received so far.
        received: u32,
        /// Fragments expected.
        total: u32,
    },
    /// A data message is complete: decode `payload`, then ACK once, built from `ack_frame`.
    Complete {
        /// Data kind (`event`, `callback`, …).
        kind: String,
        /// The reassembled payload (the fragments' bytes in `seq` order).
        payload: Vec<u8>,
        /// The raw frame that completed the message: the one to build the ACK from.
        ack_frame: Vec<u8>,
        /// Number of fragments the message had.
        fragments: u32,
        /// Channel trace id, for logs.
        trace_id: Option<String>,
        /// The event as the plugin already read it with the connection's installation context
        /// (single-frame events, when the plugin offers it): saves the routing-key, decode and
        /// command calls when the event is that installation's.
        event: Option<EventReading>,
    },
    /// The frame could not be used (the plugin's error or a reassembly guard rail); no ACK.
    Invalid(String),
}

/// The frame intake of one connection: classifies raw frames through the plugin and reassembles
/// fragmented data messages in the host. Keep one per socket and drop it when the socket closes
/// (fragments belong to the socket that received them).
#[derive(Debug)]
pub struct FrameIntake {
    connection_id: String,
    reassembler: Reassembler,
}

impl FrameIntake {
    /// An intake for `connection_id` with the default reassembly limits.
    pub fn new(connection_id: impl Into<String>) -> FrameIntake {
        FrameIntake::with_limits(connection_id, Limits::default())
    }

    /// An intake for `connection_id` with the given reassembly limits.
    pub fn with_limits(connection_id: impl Into<String>, limits: Limits) -> FrameIntake {
        FrameIntake {
            connection_id: connection_id.into(),
            reassembler: Reassembler::new(limits),
        }
    }

    /// The connection this intake serves.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// Number of incomplete messages buffered.
    pub fn pending_messages(&self) -> usize {
        self.reassembler.pending_messages()
    }

    /// Drops incomplete messages whose last fragment is a TTL older than `now`; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        self.reassembler.purge_expired(now)
    }

    /// Feeds one raw frame received at `now`. The outer `Err` is a runtime failure of the
    /// classify call.
    pub async fn push(
        &mut self,
        plugin: &Plugin,
        cx: &Arc<InstallationContext>,
        frame: &[u8],
        now: Instant,
    ) -> Result<FrameOutcome, CallError> {
        let data = match plugin.classify_frame(cx, frame).await? {
            Err(error) => return Ok(FrameOutcome::Invalid(describe_plugin_error(&error))),
            Ok(FrameClass::Ignore(reason)) => return Ok(FrameOutcome::Ignored(reason)),
            Ok(FrameClass::Control(control)) => {
                return Ok(FrameOutcome::Control {
                    kind: control.kind,
                    reply: control.reply,
                    hints: control.hints,
                });
            }
            Ok(FrameClass::Data(data)) => data,
        };
        let fragment = Fragment {
            connection_id: &self.connection_id,
            message_id: &data.fragment.message_id,
            seq: data.fragment.seq,
            total: data.fragment.total,
            bytes: &data.payload,
        };
        Ok(match self.reassembler.push(fragment, now) {
            Ok(Push::Pending { received, total }) => FrameOutcome::Partial {
                message_id: data.fragment.message_id,
                received,
                total,
            },
            Ok(Push::Complete(completed)) => FrameOutcome::Complete {
                kind: data.kind,
                payload: completed.payload,
                ack_frame: frame.to_vec(),
                fragments: completed.total,
                trace_id: data.trace_id,
                // Only a whole single-frame event can have been read at classification.
                event: data.event.filter(|_| completed.total <= 1),
            },
            Err(error) => {
                FrameOutcome::Invalid(format!("reassembly refused the fragment: {error}"))
            }
        })
    }
}

/// Why a webhook request was rejected; the host stores nothing and answers 401 (400 for
/// `malformed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRejected {
    /// `bad-signature`, `bad-token`, `decrypt-failed` or `malformed`.
    pub kind: &'static str,
    /// The plugin's explanation.
    pub reason: String,
}

impl fmt::Display for WebhookRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

/// What one webhook request led to.
#[derive(Debug, Clone)]
pub enum WebhookOutcome {
    /// URL verification: send this answer at once; nothing to ingest.
    Challenge(WebhookResponse),
    /// Verified events: decode each payload, then send `response` once they are durable.
    Events {
        /// Plaintext event payloads, ready for [`decode_payload`].
        payloads: Vec<Vec<u8>>,
        /// The payloads as the plugin already read them with the request's installation
        /// context, in the same order; empty when the plugin left that to the host.
        readings: Vec<EventReading>,
        /// The signed timestamp of the request (milliseconds since the epoch), when its
        /// signature covers one: the caller checks it against the replay window.
        signed_at_ms: Option<i64>,
        /// The answer the channel expects.
        response: WebhookResponse,
    },
    /// The request failed verification.
    Rejected(WebhookRejected),
}

/// Verifies (signature, decryption, token) and unwraps one webhook request through the plugin.
/// The outer `Err` is a runtime failure of the call.
pub async fn verify_webhook(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    request: &WebhookRequest,
) -> Result<WebhookOutcome, CallError> {
    Ok(match plugin.verify_webhook(cx, request).await? {
        Ok(WebhookVerdict::Challenge(response)) => WebhookOutcome::Challenge(response),
        Ok(WebhookVerdict::Events(events)) => WebhookOutcome::Events {
            readings: if events.readings.len() == events.payloads.len() {
                events.readings
            } else {
                // Not one per payload: not trusted, the host reads the payloads itself.
                Vec::new()
            },
            payloads: events.payloads,
            signed_at_ms: events.signed_at_ms,
            response: events.response,
        },
        Err(rejection) => {
            let (kind, reason) = match rejection {
                WebhookRejection::BadSignature(reason) => ("bad-signature", reason),
                WebhookRejection::BadToken(reason) => ("bad-token", reason),
                WebhookRejection::DecryptFailed(reason) => ("decrypt-failed", reason),
                WebhookRejection::Malformed(reason) => ("malformed", reason),
            };
            WebhookOutcome::Rejected(WebhookRejected { kind, reason })
        }
    })
}

/// Makes a decoded inbound message storable: refuses it when an id holds a NUL or is longer
/// than [`MAX_ID_BYTES`], or its body or command text is longer than [`MAX_TEXT_BYTES`];
/// otherwise removes NUL characters from its text (body, command body, mentions) and from
/// `command`'s text. Returns how many NUL characters were removed.
pub fn sanitize_message(
    message: &mut InboundMessage,
    command: Option<&mut Command>,
) -> Result<usize, Unstorable> {
    let ids: [(&str, Option<&str>); 7] = [
        ("event_id", Some(&message.event_id)),
        ("message_id", Some(&message.message_id)),
        ("chat.id", Some(&message.chat.id)),
        ("sender.id", Some(&message.sender.id)),
        ("parent_id", message.parent_id.as_deref()),
        ("root_id", message.root_id.as_deref()),
        ("thread_id", message.thread_id.as_deref()),
    ];
    for (field, value) in ids {
        check_opt(field, value, MAX_ID_BYTES)?;
    }
    for (scheme, id) in &message.sender.alt_ids {
        check("sender.alt_ids", scheme, MAX_ID_BYTES)?;
        check("sender.alt_ids", id, MAX_ID_BYTES)?;
    }
    check("message_type", &message.message_type, MAX_ID_BYTES)?;
    for (field, text) in [
        ("body", &message.body),
        ("command_body", &message.command_body),
    ] {
        if text.len() > MAX_TEXT_BYTES {
            return Err(Unstorable::TooLong {
                field: field.to_owned(),
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
    }
    let mut stripped = strip_nul(&mut message.body) + strip_nul(&mut message.command_body);
    if let Some(name) = &mut message.sender.display_name {
        stripped += strip_nul(name);
    }
    for mention in &mut message.mentions {
        stripped += strip_nul(&mut mention.key) + strip_nul(&mut mention.name);
        if let Some(id) = &mut mention.id {
            stripped += strip_nul(id);
        }
    }
    for attachment in &mut message.attachments {
        stripped += strip_nul(&mut attachment.kind) + strip_nul(&mut attachment.ref_);
        for text in [&mut attachment.name, &mut attachment.mime]
            .into_iter()
            .flatten()
        {
            stripped += strip_nul(text);
        }
    }
    if let Some(command) = command {
        stripped += match command {
            Command::New(text) => strip_nul(text),
            Command::Agent { name, args } => strip_nul(name) + strip_nul(args),
            Command::Action { name, value, .. } => strip_nul(name) + strip_nul(value),
            Command::Builtin(_) => 0,
        };
    }
    Ok(stripped)
}
