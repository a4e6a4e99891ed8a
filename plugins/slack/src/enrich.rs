//! The enricher: names for `<@U…>` mentions (`users.info`, cached in kv for a day) and, for a
//! reply in a thread, the thread so far (`conversations.replies`), within the host's budget of
//! requests, context messages and time. It never fails: whatever cannot be fetched becomes a
//! placeholder in the body and a note.

use serde_json::Value;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::enricher::{
    Budget, Enrichment,
};
use switchboard_plugin_sdk::types::InboundMessage;

use crate::decode::Text;
use crate::{Host, NAME_TTL_MS, api, keys};

/// Time kept back for building the answer: no request starts with less left.
const RESERVE_MS: u64 = 300;

struct Limits {
    requests: u32,
}

impl Limits {
    fn take(&mut self, host: &mut impl Host) -> bool {
        let ok = self.requests > 0 && host.remaining_ms() > RESERVE_MS;
        self.requests = self.requests.saturating_sub(u32::from(ok));
        ok
    }
}

/// A user's display name: kv, else `users.info` while the budget lasts (cached on success).
fn name(host: &mut impl Host, user: &str, limits: &mut Limits) -> Option<String> {
    if let Some(name) = host
        .kv_get(&keys::name(user))
        .and_then(|n| String::from_utf8(n).ok())
    {
        return Some(name);
    }
    if !limits.take(host) {
        return None;
    }
    let answer = api::call(host, "GET", &format!("users.info?user={user}"), None).ok()?;
    let name = [
        "/user/profile/display_name",
        "/user/profile/real_name",
        "/user/real_name",
        "/user/name",
    ]
    .iter()
    .filter_map(|p| answer.pointer(p).and_then(Value::as_str))
    .find(|n| !n.is_empty())?
    .to_string();
    host.kv_set(&keys::name(user), name.as_bytes(), NAME_TTL_MS);
    Some(name)
}

/// Enriches one decoded message.
pub fn enrich(host: &mut impl Host, message: &InboundMessage, budget: &Budget) -> Enrichment {
    let mut limits = Limits {
        requests: budget.max_requests,
    };
    let mut body = message.body.clone();
    let mut notes = Vec::new();
    for mention in &message.mentions {
        let Some(id) = mention.id.as_deref().filter(|id| *id == mention.name) else {
            continue;
        };
        match name(host, id, &mut limits) {
            Some(name) => body = body.replace(&format!("@{id}"), &format!("@{name}")),
            None => notes.push(format!("no name for {id}")),
        }
    }
    let thread = message
        .root_id
        .as_deref()
        .filter(|_| message.parent_id.is_some());
    let Some(thread_ts) = thread
        .and_then(|root| root.split_once(':'))
        .map(|(_, ts)| ts)
    else {
        return Enrichment {
            body,
            notes,
            attachments: Vec::new(),
        };
    };
    if budget.max_context_messages == 0 {
        return Enrichment {
            body,
            notes,
            attachments: Vec::new(),
        };
    }
    let own_ts = message.message_id.split_once(':').map_or("", |(_, ts)| ts);
    let method = format!(
        "conversations.replies?channel={}&ts={thread_ts}&limit={}",
        message.chat.id,
        budget.max_context_messages.saturating_add(1).min(200)
    );
    let replies = if limits.take(host) {
        api::call(host, "GET", &method, None).map_err(|e| e.operator_message())
    } else {
        Err("out of budget".into())
    };
    let replies = match replies {
        Ok(answer) => answer
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(why) => {
            notes.push(format!("thread context unavailable: {why}"));
            return Enrichment {
                body: format!("[Earlier messages of this thread are unavailable]\n{body}"),
                notes,
                attachments: Vec::new(),
            };
        }
    };
    let bot = host.config("bot_user_id").unwrap_or_default();
    let earlier: Vec<&Value> = replies
        .iter()
        .filter(|m| {
            m.get("ts")
                .and_then(Value::as_str)
                .is_some_and(|ts| ts != own_ts && ts < own_ts)
        })
        .collect();
    let keep = earlier
        .len()
        .saturating_sub(budget.max_context_messages as usize);
    let mut lines = Vec::new();
    for reply in &earlier[keep..] {
        let user = reply.get("user").and_then(Value::as_str).unwrap_or("");
        let speaker = if user.is_empty() || user == bot {
            "assistant".to_string()
        } else {
            name(host, user, &mut limits).unwrap_or_else(|| user.to_string())
        };
        let text = Text::render(
            host,
            reply.get("text").and_then(Value::as_str).unwrap_or(""),
            &bot,
        );
        lines.push(format!("{speaker}: {}", text.body));
    }
    if lines.is_empty() {
        return Enrichment {
            body,
            notes,
            attachments: Vec::new(),
        };
    }
    Enrichment {
        body: format!(
            "[Earlier in this thread]\n{}\n[/Earlier]\n{body}",
            lines.join("\n")
        ),
        notes,
        attachments: Vec::new(),
    }
}
