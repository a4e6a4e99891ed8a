//! The enricher's pure half (reference §F6, §F8–§F14): how fetched messages become the
//! `<recent_context>`, `<quoted_message>` and `<forwarded_messages>` blocks, who each speaker is
//! called, and what a failed fetch means (its category, whether one retry may help, and the
//! one-line note that replaces the recent-context block).
//!
//! No host calls and no budget logic here: `enrich` fetches, this module renders. Message
//! content is flattened by [`RestMessage::render_body`] (the decoder's `content` and `mentions`
//! modules), with empty bot identifiers so every mention, the bot's included, reads `@name`.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::outbound::TransportFailure;
use crate::rest::{ApiError, RestMessage};

/// `msg_type` of a merged-and-forwarded bundle.
pub const MERGE_FORWARD: &str = "merge_forward";
/// Most children a forwarded transcript inlines (Lark's own bound on a bundle); the rest are
/// counted in a `... (N more truncated)` line.
pub const FORWARD_CHILDREN_CAP: usize = 100;
/// Text of a recalled message.
pub const DELETED_MESSAGE: &str = "[deleted message]";
/// Text of a message that flattens to nothing.
pub const EMPTY_MESSAGE: &str = "[empty message]";
/// A forward inside the recent window (never expanded).
pub const RECENT_FORWARD: &str = "[merge_forward, expand manually]";
/// A forward inside a forwarded transcript (never recursed into).
pub const NESTED_FORWARD: &str = "[nested merge_forward, expand manually]";
/// Body of a forwarded transcript without children.
pub const NO_FORWARDED_CONTENT: &str = "[no forwarded content available]";
/// The forwarded block that replaces a transcript that could not be fetched.
pub const FORWARD_ERROR_BLOCK: &str =
    "<forwarded_messages type=\"error\">[unable to fetch]</forwarded_messages>";

/// Why the recent-context fetch (or any enrichment fetch) failed (reference §F10–§F11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCategory {
    /// The message has no `chat_id` to read history from.
    ChannelUnbound,
    /// The bot may not read the chat (99991002, 230001, 230027, scope codes, HTTP 403, …).
    PermissionDenied,
    /// The history is recalled or invisible (230110, 230011, 230050).
    MessageDeleted,
    /// The request or the enrichment deadline timed out.
    Timeout,
    /// A frequency limit (230020, 99991400, HTTP 429).
    RateLimited,
    /// The tenant token was rejected even after a refresh (99991663, 99991664, 99991671).
    TokenExpired,
    /// 5xx, connection failures, or the request budget ran out.
    Temporary,
    /// Anything else, including answers that are not Lark envelopes.
    Unknown,
}

impl FailureCategory {
    /// The category's name in logs and notes (`permission_denied`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCategory::ChannelUnbound => "channel_unbound",
            FailureCategory::PermissionDenied => "permission_denied",
            FailureCategory::MessageDeleted => "message_deleted",
            FailureCategory::Timeout => "timeout",
            FailureCategory::RateLimited => "rate_limited",
            FailureCategory::TokenExpired => "token_expired",
            FailureCategory::Temporary => "temporary",
            FailureCategory::Unknown => "unknown",
        }
    }

    /// The line that stands in for the `<recent_context>` block (verbatim reference copy).
    pub fn unavailable_line(self) -> &'static str {
        match self {
            FailureCategory::ChannelUnbound => {
                "[Recent Lark context unavailable: chat binding is missing. Continuing with the latest message.]"
            }
            FailureCategory::PermissionDenied => {
                "[Recent Lark context unavailable: the bot cannot read this chat history. Continuing with the latest message.]"
            }
            FailureCategory::MessageDeleted => {
                "[Recent Lark context unavailable: the referenced chat history is deleted or no longer visible. Continuing with the latest message.]"
            }
            FailureCategory::Timeout
            | FailureCategory::RateLimited
            | FailureCategory::TokenExpired
            | FailureCategory::Temporary => {
                "[Recent Lark context temporarily unavailable; continuing with the latest message.]"
            }
            FailureCategory::Unknown => {
                "[Recent Lark context unavailable; continuing with the latest message.]"
            }
        }
    }
}

/// A failed enrichment fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Lark answered with a non-zero `code`, a non-2xx status, or a body that is not what the
    /// call expects.
    Api(ApiError),
    /// The request produced no answer (timeout, connection failure, destination not allowed).
    Transport(TransportFailure),
    /// Too little of the enrichment deadline is left to start another request.
    Deadline,
    /// The budget's `max-requests` are used up.
    RequestLimit,
    /// The message has no `chat_id`.
    MissingChatId,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Api(err) => write!(f, "{err}"),
            FetchError::Transport(failure) => write!(f, "{}", failure.message),
            FetchError::Deadline => write!(f, "enrichment deadline exceeded"),
            FetchError::RequestLimit => write!(f, "enrichment request budget exhausted"),
            FetchError::MissingChatId => write!(f, "missing chat_id"),
        }
    }
}

/// What a failure means: its category and whether one more attempt may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The category.
    pub category: FailureCategory,
    /// Whether a second attempt may succeed (timeouts, token problems, 5xx, connection
    /// failures). Rate limits are not retried: an immediate retry re-hits the limit.
    pub retryable: bool,
}

fn classified(category: FailureCategory, retryable: bool) -> Classified {
    Classified {
        category,
        retryable,
    }
}

/// Classifies a failed fetch (reference §F11): a Lark code names the failure exactly; then
/// the HTTP status; then the wording of the message.
pub fn classify(error: &FetchError) -> Classified {
    use FailureCategory::*;
    match error {
        FetchError::MissingChatId => classified(ChannelUnbound, false),
        FetchError::Deadline => classified(Timeout, true),
        FetchError::RequestLimit => classified(Temporary, false),
        FetchError::Transport(failure) => {
            let text = failure.message.to_lowercase();
            if contains_any(&text, &["timed out", "timeout", "deadline"]) {
                classified(Timeout, true)
            } else if failure.retryable {
                classified(Temporary, true)
            } else {
                classify_text(&text)
            }
        }
        FetchError::Api(err) => {
            match err.code {
                99_991_002 | 230_001 | 230_027 | 230_002 | 230_006 | 230_013 | 99_991_401
                | 99_991_672 | 99_991_673 => return classified(PermissionDenied, false),
                230_110 | 230_011 | 230_050 => return classified(MessageDeleted, false),
                99_991_663 | 99_991_664 | 99_991_671 => return classified(TokenExpired, true),
                230_020 | 99_991_400 => return classified(RateLimited, false),
                _ => {}
            }
            match err.http_status {
                403 => return classified(PermissionDenied, false),
                429 => return classified(RateLimited, false),
                500..=599 => return classified(Temporary, true),
                _ => {}
            }
            classify_text(&err.msg.to_lowercase())
        }
    }
}

/// The wording fallback of §F11 (for errors that carry only a message, e.g. `code=… msg=…`).
fn classify_text(text: &str) -> Classified {
    use FailureCategory::*;
    if contains_any(text, &["missing chat_id", "missing chat id"]) {
        classified(ChannelUnbound, false)
    } else if contains_any(
        text,
        &[
            "code=99991002",
            "code=230001",
            "code=230027",
            "no permission",
            "permission denied",
            "insufficient permissions",
            "forbidden",
            "http 403",
        ],
    ) {
        classified(PermissionDenied, false)
    } else if contains_any(
        text,
        &[
            "code=230110",
            "code=230011",
            "code=230050",
            "deleted",
            "recalled",
            "not visible",
            "invisible",
        ],
    ) {
        classified(MessageDeleted, false)
    } else if contains_any(text, &["code=99991663", "code=99991664"]) {
        classified(TokenExpired, true)
    } else if contains_any(
        text,
        &[
            "code=230020",
            "rate limit",
            "rate_limit",
            "frequency limit",
            "http 429",
        ],
    ) {
        classified(RateLimited, false)
    } else if contains_any(text, &["deadline exceeded", "timeout", "timed out"]) {
        classified(Timeout, true)
    } else if contains_any(
        text,
        &[
            "http 500",
            "http 502",
            "http 503",
            "http 504",
            "connection reset",
            "connection refused",
            "temporary",
        ],
    ) {
        classified(Temporary, true)
    } else {
        classified(Unknown, false)
    }
}

fn contains_any(text: &str, needles: &[&str]) -> bool {
    needles.iter().any(|needle| text.contains(needle))
}

/// Labels the speakers of one block (reference §F14): app senders are `Bot`; a sender whose
/// name resolved is called by it; the others are `User 1`, `User 2`, … in order of first
/// appearance (a missing sender id counts as one speaker, `unknown`).
pub struct SpeakerLabels<'a> {
    names: &'a HashMap<String, String>,
    seen: HashMap<String, String>,
    next: usize,
}

impl<'a> SpeakerLabels<'a> {
    /// A labeller over resolved `open_id → name`s (empty when names were not looked up).
    pub fn new(names: &'a HashMap<String, String>) -> Self {
        SpeakerLabels {
            names,
            seen: HashMap::new(),
            next: 0,
        }
    }

    /// The label of `message`'s sender.
    pub fn label(&mut self, message: &RestMessage) -> String {
        if message.sender_type == "app" {
            return "Bot".into();
        }
        let key = if message.sender_id.is_empty() {
            "unknown"
        } else {
            message.sender_id.as_str()
        };
        if let Some(label) = self.seen.get(key) {
            return label.clone();
        }
        let label = match self.names.get(key).filter(|name| !name.is_empty()) {
            Some(name) => name.clone(),
            None => {
                self.next += 1;
                format!("User {}", self.next)
            }
        };
        self.seen.insert(key.to_string(), label.clone());
        label
    }
}

/// Readable text of a fetched message: `[deleted message]` when recalled, else its flattened
/// content with mentions as `@name` (empty when there is nothing to show).
pub fn message_text(message: &RestMessage) -> String {
    if message.deleted {
        return DELETED_MESSAGE.into();
    }
    message.render_body()
}

fn line_text(message: &RestMessage, forward_placeholder: &str) -> String {
    if message.msg_type == MERGE_FORWARD && !message.deleted {
        return forward_placeholder.into();
    }
    let text = message_text(message);
    if text.is_empty() {
        EMPTY_MESSAGE.into()
    } else {
        text
    }
}

/// The direct children of the forward `forward_id` among the items of one GET: every item other
/// than the container whose `upper_message_id` is the container (or absent). Descendants of a
/// nested forward (whose `upper_message_id` is that nested forward) are left out: the nested
/// forward renders as a placeholder.
pub fn forward_children<'m>(items: &'m [RestMessage], forward_id: &str) -> Vec<&'m RestMessage> {
    items
        .iter()
        .filter(|item| item.message_id != forward_id)
        .filter(|item| {
            item.upper_message_id
                .as_deref()
                .is_none_or(|upper| upper == forward_id)
        })
        .collect()
}

/// `<forwarded_messages count="N">` with one `[speaker]: text` line per direct child, oldest
/// first (stable by `create_time`), at most [`FORWARD_CHILDREN_CAP`] lines plus
/// `... (K more truncated)`; `count` is the number of children before the cap. No children:
/// `[no forwarded content available]`.
pub fn forwarded_block(
    items: &[RestMessage],
    forward_id: &str,
    names: &HashMap<String, String>,
) -> String {
    let mut children = forward_children(items, forward_id);
    let total = children.len();
    if total == 0 {
        return format!(
            "<forwarded_messages count=\"0\">\n{NO_FORWARDED_CONTENT}\n</forwarded_messages>"
        );
    }
    children.sort_by_key(|child| child.create_time_ms);
    let truncated = total.saturating_sub(FORWARD_CHILDREN_CAP);
    children.truncate(FORWARD_CHILDREN_CAP);
    let mut labels = SpeakerLabels::new(names);
    let mut out = format!("<forwarded_messages count=\"{total}\">\n");
    for (at, child) in children.iter().enumerate() {
        if at > 0 {
            out.push('\n');
        }
        let label = labels.label(child);
        let _ = write!(out, "[{label}]: {}", line_text(child, NESTED_FORWARD));
    }
    if truncated > 0 {
        let _ = write!(out, "\n... ({truncated} more truncated)");
    }
    out.push_str("\n</forwarded_messages>");
    out
}

/// The quoted parent `parent_id` from the items its GET returned (reference §F12). A failed
/// fetch, no items or a recalled parent give the error block; a parent that is itself a forward
/// carries its transcript (from the same items) inside.
pub fn quoted_block(
    parent_id: &str,
    fetched: Result<&[RestMessage], &FetchError>,
    names: &HashMap<String, String>,
) -> String {
    let items = match fetched {
        Ok(items) if !items.is_empty() => items,
        _ => return quoted_error_block(parent_id),
    };
    let parent = quoted_parent(items, parent_id);
    if parent.deleted {
        return quoted_error_block(parent_id);
    }
    let sender = SpeakerLabels::new(names).label(parent);
    let (msg_type, inner) = if parent.msg_type == MERGE_FORWARD {
        (
            MERGE_FORWARD,
            forwarded_block(items, &parent.message_id, names),
        )
    } else {
        let text = message_text(parent);
        let text = if text.is_empty() {
            EMPTY_MESSAGE.to_string()
        } else {
            text
        };
        (parent.msg_type.as_str(), text)
    };
    format!(
        "<quoted_message message_id={} sender={} type={}>\n{inner}\n</quoted_message>",
        go_quote(parent_id),
        go_quote(&sender),
        go_quote(msg_type)
    )
}

/// The parent among the items of its GET: the item with its id, else the first.
pub fn quoted_parent<'m>(items: &'m [RestMessage], parent_id: &str) -> &'m RestMessage {
    items
        .iter()
        .find(|item| item.message_id == parent_id)
        .unwrap_or(&items[0])
}

/// The quoted block of a parent that could not be read.
pub fn quoted_error_block(parent_id: &str) -> String {
    format!(
        "<quoted_message message_id={} type=\"error\">[unable to fetch]</quoted_message>",
        go_quote(parent_id)
    )
}

/// `<recent_context count="N">` with one `[speaker]: text` line per message (already filtered
/// and ordered oldest first); `None` for an empty window (no block at all).
pub fn recent_block(kept: &[RestMessage], names: &HashMap<String, String>) -> Option<String> {
    if kept.is_empty() {
        return None;
    }
    let mut labels = SpeakerLabels::new(names);
    let mut out = format!("<recent_context count=\"{}\">\n", kept.len());
    for (at, message) in kept.iter().enumerate() {
        if at > 0 {
            out.push('\n');
        }
        let label = labels.label(message);
        let _ = write!(out, "[{label}]: {}", line_text(message, RECENT_FORWARD));
    }
    out.push_str("\n</recent_context>");
    Some(out)
}

/// A string as Go's `%q` writes it: double-quoted, with `"` and `\` escaped, `\n`, `\r`, `\t`
/// and other control characters escaped, printable Unicode kept as is.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0b}' => out.push_str("\\v"),
            ch if (ch as u32) < 0x20 || ch == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", ch as u32);
            }
            ch if ch.is_control() => {
                let _ = write!(out, "\\u{:04x}", ch as u32);
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}
