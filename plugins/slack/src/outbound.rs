//! Replies, notices, typing and streaming (channels-protocols §1.8).
//!
//! - Every message goes into the session's thread (`thread_ts` = the target's thread) and the
//!   thread is recorded in kv as one the bot is part of, so later replies there address it.
//! - Idempotency: Slack has no idempotency key, so the `ts` a delivery posted is recorded in kv
//!   under its key and a later attempt with the same key posts nothing. The window left is a
//!   crash (or a lost answer) between Slack accepting the post and the kv write: that attempt's
//!   retry posts the message a second time.
//! - A notice for one participant (`recipient`) outside a DM is ephemeral (`chat.postEphemeral`).
//! - Streaming: `stream-begin` posts a placeholder and answers its `ts`; updates and the end are
//!   `chat.update` (the host calls at most one update per `stream_interval_ms`, 1 s); a final
//!   text longer than one message continues in further messages in the thread.
//! - Typing: `assistant.threads.setStatus` when config `assistant` is `true` and the session has
//!   a thread, else an `eyes` reaction on the user's message, removed when typing stops. The
//!   host refreshes the indicator every minute (`typing_refresh_ms`): the status is set again
//!   (Slack clears it after two minutes), the reaction is left as it is.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::{
    Content, DeliveryError, TypingChange,
};
use switchboard_plugin_sdk::types::{ChatKind, SessionTarget};

use crate::api::{self, ApiError};
use crate::mrkdwn::{self, Message, TEXT_MAX, escape};
use crate::{Host, SENT_TTL_MS, THREAD_TTL_MS, keys};

/// The text a streamed reply shows before its first update.
pub const STREAM_PLACEHOLDER: &str = "…";
/// The reaction that stands for "typing".
pub const TYPING_REACTION: &str = "eyes";
/// The assistant status that stands for "typing".
pub const TYPING_STATUS: &str = "is thinking…";

/// The messages a content renders to.
pub fn render(content: &Content) -> Vec<Message> {
    match content {
        Content::Reply(text) => mrkdwn::render(text),
        Content::Notice(notice) => {
            let mut text = escape(&notice.text);
            if let Some(link) = notice.link.as_deref().filter(|l| !notice.text.contains(l)) {
                text.push_str(&format!("\n<{link}>"));
            }
            if let Some(reference) = notice
                .reference
                .as_deref()
                .filter(|r| !notice.text.contains(r))
            {
                text.push_str(&format!("\n(reference: `{}`)", escape(reference)));
            }
            let text = mrkdwn::truncate(&text, TEXT_MAX).to_string();
            // The host's buttons: a `section` with the text and an `actions` block, one
            // button per action (`action_id` = the action's name, `value` its value, which a
            // press's `block_actions` carries back unchanged).
            let blocks = (!notice.actions.is_empty()).then(|| {
                let buttons: Vec<Value> = notice
                    .actions
                    .iter()
                    .map(|action| {
                        let mut button = json!({
                            "type": "button",
                            "text": { "type": "plain_text", "text": action.label },
                            "action_id": action.name,
                            "value": action.value,
                        });
                        if action.primary {
                            button["style"] = json!("primary");
                        }
                        button
                    })
                    .collect();
                vec![
                    json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }),
                    json!({ "type": "actions", "elements": buttons }),
                ]
            });
            vec![Message { text, blocks }]
        }
    }
}

fn message_body(target: &SessionTarget, message: &Message) -> Value {
    let mut body = json!({ "channel": target.chat_id, "text": message.text });
    if let Some(blocks) = &message.blocks {
        body["blocks"] = json!(blocks);
    }
    if let Some(thread) = &target.thread_id {
        body["thread_ts"] = json!(thread);
    }
    body
}

/// Posts one message under `key` (empty: no idempotency) and answers its `ts`.
fn post(
    host: &mut impl Host,
    target: &SessionTarget,
    message: &Message,
    key: &str,
) -> Result<String, ApiError> {
    if !key.is_empty()
        && let Some(ts) = host.kv_get(&keys::sent(key))
    {
        return Ok(String::from_utf8_lossy(&ts).into_owned());
    }
    let answer = api::call(
        host,
        "POST",
        "chat.postMessage",
        Some(&message_body(target, message)),
    )?;
    let ts = answer
        .get("ts")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !key.is_empty() {
        host.kv_set(&keys::sent(key), ts.as_bytes(), SENT_TTL_MS);
    }
    if let Some(thread) = &target.thread_id {
        host.kv_set(&keys::thread(&target.chat_id, thread), b"1", THREAD_TTL_MS);
    }
    Ok(ts)
}

/// The idempotency key of the `index`-th message of a delivery.
fn part_key(key: &str, index: usize) -> String {
    match (key.is_empty(), index) {
        (true, _) => String::new(),
        (false, 0) => key.to_string(),
        (false, i) => format!("{key}#{i}"),
    }
}

/// `deliver`: answers the `ts` of the first message posted.
pub fn deliver(
    host: &mut impl Host,
    target: &SessionTarget,
    content: &Content,
    key: &str,
) -> Result<Option<String>, DeliveryError> {
    let messages = render(content);
    if let Content::Notice(notice) = content
        && let Some(user) = notice.recipient.as_deref()
        && target.chat_kind != ChatKind::Direct
    {
        let mut body = message_body(target, &messages[0]);
        body["user"] = json!(user);
        let answer =
            api::call(host, "POST", "chat.postEphemeral", Some(&body)).map_err(|e| e.delivery())?;
        return Ok(answer
            .get("message_ts")
            .and_then(Value::as_str)
            .map(str::to_string));
    }
    let mut first = None;
    for (index, message) in messages.iter().enumerate() {
        let ts = post(host, target, message, &part_key(key, index)).map_err(|e| e.delivery())?;
        first.get_or_insert(ts);
    }
    Ok(first)
}

/// `stream-begin`: the placeholder's `ts` is the handle.
pub fn stream_begin(
    host: &mut impl Host,
    target: &SessionTarget,
    key: &str,
) -> Result<String, DeliveryError> {
    let placeholder = Message {
        text: STREAM_PLACEHOLDER.into(),
        blocks: None,
    };
    post(host, target, &placeholder, key).map_err(|e| e.delivery())
}

fn update(
    host: &mut impl Host,
    target: &SessionTarget,
    ts: &str,
    message: &Message,
) -> Result<(), ApiError> {
    let mut body = json!({ "channel": target.chat_id, "ts": ts, "text": message.text });
    // Blocks replace the placeholder's; an empty list clears earlier ones.
    body["blocks"] = json!(message.blocks.clone().unwrap_or_default());
    api::call(host, "POST", "chat.update", Some(&body)).map(drop)
}

/// `update-notice`: the message `message_id` (a receipt's `ts`, or a press's
/// `{channel}:{ts}`) re-rendered as `notice` with `chat.update` (its buttons go when the notice
/// has none). Slack issues no update token; without a message id nothing can be updated.
pub fn update_notice(
    host: &mut impl Host,
    target: &SessionTarget,
    message_id: Option<&str>,
    notice: &switchboard_plugin_sdk::types::Notice,
) -> Result<(), DeliveryError> {
    let Some(id) = message_id.filter(|id| !id.is_empty()) else {
        return Err(DeliveryError {
            code: None,
            message: "Slack updates a message by its ts; none was given".into(),
            retryable: false,
            retry_after_ms: None,
        });
    };
    let ts = id.rsplit(':').next().unwrap_or(id);
    let messages = render(&Content::Notice(notice.clone()));
    update(host, target, ts, &messages[0]).map_err(|e| e.delivery())
}

/// `stream-update`: the reply so far, in the placeholder (its first message's worth).
pub fn stream_update(
    host: &mut impl Host,
    target: &SessionTarget,
    ts: &str,
    text: &str,
) -> Result<(), DeliveryError> {
    let messages = mrkdwn::render(text);
    update(host, target, ts, &messages[0]).map_err(|e| e.delivery())
}

/// `stream-end`: the final text; what does not fit the placeholder follows in the thread (keyed
/// by the handle, so a retried end posts each continuation once).
pub fn stream_end(
    host: &mut impl Host,
    target: &SessionTarget,
    ts: &str,
    text: &str,
) -> Result<Option<String>, DeliveryError> {
    let messages = mrkdwn::render(text);
    update(host, target, ts, &messages[0]).map_err(|e| e.delivery())?;
    for (index, message) in messages.iter().enumerate().skip(1) {
        post(
            host,
            target,
            message,
            &format!("end:{}:{ts}#{index}", target.chat_id),
        )
        .map_err(|e| e.delivery())?;
    }
    Ok(Some(ts.to_string()))
}

/// `set-typing`. The handle says which indicator was shown (`status` or `reaction`).
pub fn set_typing(
    host: &mut impl Host,
    target: &SessionTarget,
    change: &TypingChange,
    handle: Option<&str>,
) -> Result<Option<String>, DeliveryError> {
    let assistant = host.config("assistant").as_deref() == Some("true");
    let use_status = match handle {
        Some(handle) => handle == "status",
        None => assistant && target.thread_id.is_some(),
    };
    if use_status {
        let body = json!({
            "channel_id": target.chat_id,
            "thread_ts": target.thread_id,
            "status": if change.on { TYPING_STATUS } else { "" },
        });
        api::call(host, "POST", "assistant.threads.setStatus", Some(&body))
            .map_err(|e| e.delivery())?;
        return Ok(change.on.then(|| "status".into()));
    }
    // A reaction stays until removed: a refresh has nothing to do.
    if change.on && handle == Some("reaction") {
        return Ok(Some("reaction".into()));
    }
    // The message id is `{channel}:{ts}`; a slash command has no message to react to.
    let Some((channel, ts)) = change
        .message_id
        .split_once(':')
        .filter(|(_, ts)| crate::ts_ms(ts).is_some())
    else {
        return Ok(None);
    };
    let body = json!({ "channel": channel, "timestamp": ts, "name": TYPING_REACTION });
    let method = if change.on {
        "reactions.add"
    } else {
        "reactions.remove"
    };
    match api::call(host, "POST", method, Some(&body)) {
        Ok(_) => Ok(change.on.then(|| "reaction".into())),
        Err(e) if matches!(e.code.as_str(), "already_reacted" | "no_reaction") => {
            Ok(change.on.then(|| "reaction".into()))
        }
        Err(e) => Err(e.delivery()),
    }
}
