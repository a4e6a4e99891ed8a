//! Replies and notices as HTML messages (several when long), streaming by `editMessageText`,
//! the typing action and the installation's lifecycle, over a small [`Client`] trait so the flows
//! test natively.
//!
//! Telegram has no idempotency key. A send records the ids of the messages it posted in `kv`
//! under the delivery's key after each message, and a retry posts only what is not recorded.
//! The crash window: a message Telegram accepted whose answer (or record) was lost — a timeout,
//! a crash between the answer and the `kv` write — is posted again by the retry.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::{
    Content, DeliveryError,
};
use switchboard_plugin_sdk::types::{Notice, PluginError, SessionTarget};

use crate::api::{ALLOWED_UPDATES, ApiError, id_text, refused};
use crate::render;

/// The text of a streamed reply's message before its first update.
pub const PLACEHOLDER: &str = "…";

/// What a call that reached nothing or got an error answer failed with.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Telegram answered with an error.
    Api(ApiError),
    /// No answer (timeout, transport, not allowed), already classified.
    Unanswered(DeliveryError),
}

impl Failure {
    /// The delivery error the host acts on.
    pub fn delivery(self) -> DeliveryError {
        match self {
            Failure::Api(error) => error.delivery_error(),
            Failure::Unanswered(error) => error,
        }
    }

    /// The lifecycle error the host acts on: a refused token is `unauthorized`, a transient
    /// failure `retryable`, any other refusal `fatal`.
    pub fn plugin_error(self, what: &str) -> PluginError {
        match self {
            Failure::Api(e) if matches!(e.code, 401 | 404) => PluginError::Unauthorized(format!(
                "Telegram refused the bot token ({what}): check bot_token"
            )),
            Failure::Api(e) if e.code == 429 || e.status >= 500 => {
                PluginError::Retryable(format!("{what}: {}", e.description))
            }
            Failure::Api(e) => PluginError::Fatal(format!("{what}: {}", e.description)),
            Failure::Unanswered(e) if e.retryable => {
                PluginError::Retryable(format!("{what}: {}", e.message))
            }
            Failure::Unanswered(e) => PluginError::Fatal(format!("{what}: {}", e.message)),
        }
    }
}

/// The host as the flows need it: Bot API calls and the plugin's `kv`.
pub trait Client {
    /// Calls a Bot API method and answers its `result`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Failure>;
    /// A recorded value (none when unset or unreadable).
    fn recall(&mut self, key: &str) -> Option<String>;
    /// Records a value (best effort: a lost record only widens the crash window).
    fn remember(&mut self, key: &str, value: &str);
}

/// Where messages go: a chat, its forum topic, and the message they answer.
#[derive(Debug, Clone, PartialEq)]
struct Destination {
    chat_id: String,
    thread: Option<i64>,
    reply_to: Option<i64>,
}

/// The Telegram message id of a `{chat_id}:{message_id}` key.
fn telegram_id(key: &str) -> Option<i64> {
    key.rsplit(':').next()?.parse().ok()
}

impl Destination {
    fn of(target: &SessionTarget) -> Destination {
        Destination {
            chat_id: target.chat_id.clone(),
            thread: target.thread_id.as_deref().and_then(|t| t.parse().ok()),
            reply_to: target.reply_to.as_deref().and_then(telegram_id),
        }
    }

    fn with_params(&self, mut params: Value) -> Value {
        params["chat_id"] = json!(self.chat_id);
        if let Some(thread) = self.thread {
            params["message_thread_id"] = json!(thread);
        }
        params
    }
}

/// A notice's text: the host's words, its reference and link each on a line of its own.
pub fn notice_text(notice: &Notice) -> String {
    let mut text = notice.text.trim().to_string();
    for extra in [&notice.reference, &notice.link].into_iter().flatten() {
        if !extra.is_empty() && !text.contains(extra.as_str()) {
            text = format!("{text}\n{extra}");
        }
    }
    text
}

/// Renders and sends `content`; answers the first message's `{chat_id}:{message_id}`. A notice
/// for one recipient goes to that user's private chat with the bot.
pub fn deliver(
    c: &mut dyn Client,
    target: &SessionTarget,
    content: &Content,
    key: &str,
) -> Result<String, DeliveryError> {
    let (destination, chunks) = match content {
        Content::Reply(text) => (Destination::of(target), render::markdown_chunks(text)),
        Content::Notice(notice) => {
            let destination = match notice.recipient.as_deref().filter(|r| !r.is_empty()) {
                Some(user) if user != target.chat_id => Destination {
                    chat_id: user.into(),
                    thread: None,
                    reply_to: None,
                },
                _ => Destination::of(target),
            };
            (destination, render::plain_chunks(&notice_text(notice)))
        }
    };
    let keyboard = match content {
        Content::Notice(notice) => inline_keyboard(notice),
        Content::Reply(_) => None,
    };
    let record = (!key.is_empty()).then(|| format!("sent:{key}"));
    send_all(c, &destination, &chunks, record.as_deref(), keyboard)
}

/// Longest `callback_data` Telegram accepts, in bytes.
pub const CALLBACK_DATA_MAX: usize = 64;

/// The host's buttons as an inline keyboard on one row: each button's `callback_data` is
/// `name:value`, which the decoder splits back at the first `:`. A button whose data would
/// exceed [`CALLBACK_DATA_MAX`] bytes is left out (Telegram would refuse the whole message).
pub fn inline_keyboard(notice: &Notice) -> Option<Value> {
    let row: Vec<Value> = notice
        .actions
        .iter()
        .map(|action| (action, format!("{}:{}", action.name, action.value)))
        .filter(|(_, data)| data.len() <= CALLBACK_DATA_MAX)
        .map(|(action, data)| json!({"text": action.label, "callback_data": data}))
        .collect();
    (!row.is_empty()).then(|| json!({ "inline_keyboard": [row] }))
}

/// Sends `chunks` in order (the first replies to the destination's message), skipping those
/// `record` says were sent, and records each one sent.
fn send_all(
    c: &mut dyn Client,
    to: &Destination,
    chunks: &[String],
    record: Option<&str>,
    keyboard: Option<Value>,
) -> Result<String, DeliveryError> {
    let placeholder = [PLACEHOLDER.to_string()];
    let chunks = if chunks.is_empty() {
        &placeholder[..]
    } else {
        chunks
    };
    let mut sent: Vec<String> = record
        .and_then(|key| c.recall(key))
        .map(|ids| ids.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    for (index, chunk) in chunks.iter().enumerate().skip(sent.len()) {
        let mut params = to.with_params(json!({"text": chunk, "parse_mode": "HTML"}));
        if let (0, Some(reply_to)) = (index, to.reply_to) {
            params["reply_parameters"] =
                json!({"message_id": reply_to, "allow_sending_without_reply": true});
        }
        // Buttons go under the last message, below the whole text.
        if let Some(keyboard) = keyboard.as_ref().filter(|_| index + 1 == chunks.len()) {
            params["reply_markup"] = keyboard.clone();
        }
        let message = c.call("sendMessage", params).map_err(Failure::delivery)?;
        let id = id_text(&message["message_id"])
            .ok_or_else(|| refused("sendMessage answered no message_id"))?;
        sent.push(format!("{}:{id}", to.chat_id));
        if let Some(key) = record {
            c.remember(key, &sent.join(","));
        }
    }
    Ok(sent.swap_remove(0))
}

/// `editMessageText` of the message `handle` (`{chat_id}:{message_id}`); the same text again
/// is no failure.
fn edit(c: &mut dyn Client, handle: &str, text: &str) -> Result<(), DeliveryError> {
    let (chat_id, message_id) = handle
        .rsplit_once(':')
        .and_then(|(chat, id)| Some((chat, id.parse::<i64>().ok()?)))
        .ok_or_else(|| refused(format!("{handle:?} is not a message of this plugin")))?;
    let params =
        json!({"chat_id": chat_id, "message_id": message_id, "text": text, "parse_mode": "HTML"});
    match c.call("editMessageText", params) {
        Ok(_) => Ok(()),
        Err(Failure::Api(error)) if error.is_not_modified() => Ok(()),
        Err(failure) => Err(failure.delivery()),
    }
}

/// Replaces the message `message_id` (`{chat_id}:{message_id}`, as a receipt or a press names
/// it) with `notice`'s text and its buttons (none: the keyboard goes). Telegram issues no
/// update token.
pub fn update_notice(
    c: &mut dyn Client,
    message_id: Option<&str>,
    notice: &Notice,
) -> Result<(), DeliveryError> {
    let handle = message_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| refused("Telegram edits a message by its id; none was given"))?;
    let (chat_id, id) = handle
        .rsplit_once(':')
        .and_then(|(chat, id)| Some((chat, id.parse::<i64>().ok()?)))
        .ok_or_else(|| refused(format!("{handle:?} is not a message of this plugin")))?;
    let text = render::plain_chunks(&notice_text(notice))
        .into_iter()
        .next()
        .unwrap_or_else(|| PLACEHOLDER.into());
    let mut params =
        json!({"chat_id": chat_id, "message_id": id, "text": text, "parse_mode": "HTML"});
    if let Some(keyboard) = inline_keyboard(notice) {
        params["reply_markup"] = keyboard;
    }
    match c.call("editMessageText", params) {
        Ok(_) => Ok(()),
        Err(Failure::Api(error)) if error.is_not_modified() => Ok(()),
        Err(failure) => Err(failure.delivery()),
    }
}

/// Starts a streamed reply: a placeholder message replying to the target's message.
pub fn stream_begin(
    c: &mut dyn Client,
    target: &SessionTarget,
    key: &str,
) -> Result<String, DeliveryError> {
    let record = (!key.is_empty()).then(|| format!("stream:{key}"));
    send_all(
        c,
        &Destination::of(target),
        &[PLACEHOLDER.into()],
        record.as_deref(),
        None,
    )
}

/// Shows the reply so far (what fits in one message).
pub fn stream_update(c: &mut dyn Client, handle: &str, text: &str) -> Result<(), DeliveryError> {
    let chunks = render::markdown_chunks(text);
    edit(
        c,
        handle,
        chunks.first().map_or(PLACEHOLDER, String::as_str),
    )
}

/// Finishes a streamed reply: its message shows the first part, and the rest follows as new
/// messages in the same chat and topic.
pub fn stream_end(
    c: &mut dyn Client,
    target: &SessionTarget,
    handle: &str,
    text: &str,
) -> Result<String, DeliveryError> {
    let chunks = render::markdown_chunks(text);
    edit(
        c,
        handle,
        chunks.first().map_or(PLACEHOLDER, String::as_str),
    )?;
    if chunks.len() > 1 {
        let to = Destination {
            reply_to: None,
            ..Destination::of(target)
        };
        send_all(c, &to, &chunks[1..], Some(&format!("end:{handle}")), None)?;
    }
    Ok(handle.to_string())
}

/// `sendChatAction typing` (Telegram shows it for 5 s; the host refreshes it).
pub fn typing(c: &mut dyn Client, target: &SessionTarget) -> Result<(), DeliveryError> {
    let params = Destination::of(target).with_params(json!({"action": "typing"}));
    c.call("sendChatAction", params)
        .map(drop)
        .map_err(Failure::delivery)
}

/// Whether the host's `connection` config selects long polling.
pub fn polls(connection: Option<&str>) -> bool {
    connection.is_some_and(|c| {
        matches!(
            c.to_ascii_lowercase().as_str(),
            "poll" | "long-poll" | "long_poll" | "longpoll"
        )
    })
}

/// `on-install`: learns the bot's id and username (getMe), then registers the webhook (with the
/// secret and the update kinds) or, for polling, deletes any webhook so getUpdates works.
pub fn install(
    c: &mut dyn Client,
    webhook_url: &str,
    poll: bool,
    webhook_secret: Option<&str>,
) -> Result<Vec<(String, String)>, PluginError> {
    let me = c
        .call("getMe", json!({}))
        .map_err(|f| f.plugin_error("getMe"))?;
    let id = id_text(&me["id"]).ok_or_else(|| PluginError::Fatal("getMe answered no id".into()))?;
    let username = me["username"].as_str().unwrap_or_default().to_string();
    if poll {
        c.call("deleteWebhook", json!({}))
            .map_err(|f| f.plugin_error("deleteWebhook"))?;
    } else {
        let secret = webhook_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
            PluginError::InvalidInput(
                "webhook mode needs the webhook_secret secret (or set connection=poll)".into(),
            )
        })?;
        let params =
            json!({"url": webhook_url, "secret_token": secret, "allowed_updates": ALLOWED_UPDATES});
        c.call("setWebhook", params)
            .map_err(|f| f.plugin_error("setWebhook"))?;
    }
    Ok(vec![
        ("bot_id".into(), id),
        ("bot_username".into(), username),
    ])
}

/// `on-uninstall`: a webhook installation deletes its webhook.
pub fn uninstall(c: &mut dyn Client, poll: bool) -> Result<(), PluginError> {
    if !poll {
        c.call("deleteWebhook", json!({}))
            .map_err(|f| f.plugin_error("deleteWebhook"))?;
    }
    Ok(())
}
