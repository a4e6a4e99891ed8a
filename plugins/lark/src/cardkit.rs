//! Streamed replies in CardKit cards (lark-protocol §3.3): `stream-begin` creates a card entity
//! whose body is one streaming markdown element and sends it to the session; `stream-update`
//! puts the element's whole text; `stream-end` writes the final text and closes streaming mode.
//!
//! Calls are stateless, so what a stream needs between calls lives in the handle the host keeps
//! ([`StreamHandle`]: the first card's id and the reply's idempotency key) and in `kv` under the
//! first card's id ([`CardState`]: the current card, its last `sequence`, how much of the reply
//! earlier cards hold, its recent update times). A reply that outgrows one card (30 KB, measured
//! as [`render::wire_len`]) is continued in follow-up cards: the full card is closed with the
//! part that fits (a code block cut in two is closed and reopened in the next card) and the next
//! one is sent after it, so the parts stay in order. Updates of one card are paced to at most
//! [`OPS_PER_WINDOW`] per [`WINDOW_MS`] (the platform allows 10 per second per card).
//!
//! Nothing here loses a reply: when the card cannot be created or sent the handle says
//! [`StreamHandle::Plain`] (updates do nothing, the end sends an ordinary reply), and when a card
//! cannot be continued or finished the rest goes out as an ordinary reply.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::outbound::{Content, DeliveryFailure, LarkClient, LarkHost, SessionTarget, destination};
use crate::render::{self, CARD_TEXT_BUDGET, Rendered};
use crate::rest;

/// `element_id` of the streaming markdown element (1–20 characters, starting with a letter).
pub const ELEMENT_ID: &str = "reply_md";
/// Prefix of the kv key a stream's [`CardState`] is kept under (followed by the first card id).
pub const STATE_KEY_PREFIX: &str = "cardkit:";
/// How long a stream's state is kept: a stream is ended long before (its state is deleted then).
pub const STATE_TTL_MS: u64 = 6 * 60 * 60 * 1000;
/// Most updates (content or settings) of one card within [`WINDOW_MS`].
pub const OPS_PER_WINDOW: usize = 10;
/// The pacing window: a little over a second, so requests that arrive with uneven latency
/// still stay within the platform's 10 per second.
pub const WINDOW_MS: u64 = 1_100;
/// Characters of the reply the chat list shows for a finished card.
pub const SUMMARY_CHARS: usize = 60;

/// What the host keeps for a stream (the WIT `stream-begin` handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamHandle {
    /// No card: updates are ignored and the end sends an ordinary reply with `key`.
    Plain {
        /// The reply's idempotency key.
        key: String,
    },
    /// A card stream whose state is kept under the first card's id.
    Card {
        /// The first card's id.
        root: String,
        /// The reply's idempotency key.
        key: String,
    },
}

impl StreamHandle {
    /// `plain:{key}` or `card:{root}:{key}`.
    pub fn encode(&self) -> String {
        match self {
            StreamHandle::Plain { key } => format!("plain:{key}"),
            StreamHandle::Card { root, key } => format!("card:{root}:{key}"),
        }
    }

    /// Reads [`StreamHandle::encode`]'s form; `None` for anything else.
    pub fn parse(handle: &str) -> Option<StreamHandle> {
        let (kind, rest) = handle.split_once(':')?;
        match kind {
            "plain" => Some(StreamHandle::Plain {
                key: rest.to_string(),
            }),
            "card" => {
                let (root, key) = rest.split_once(':')?;
                (!root.is_empty()).then(|| StreamHandle::Card {
                    root: root.to_string(),
                    key: key.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// What a card stream remembers between calls (kv, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardState {
    /// The card the reply streams into now; `None` while a follow-up card is due.
    pub card: Option<String>,
    /// Index of that card in the reply (0 = the first), for its `uuid`.
    pub index: u32,
    /// The last `sequence` used on `card` (CardKit wants it strictly increasing per card).
    pub seq: u32,
    /// Bytes of the reply text the cards before `card` hold.
    pub offset: usize,
    /// The fence line `card` starts with (a code block the previous card closed).
    pub reopen: Option<String>,
    /// Digest of the text last written to `card` (an unchanged text is not written again).
    pub shown: u64,
    /// Whether `card` is closed (streaming mode off).
    pub closed: bool,
    /// The first card's message id (the reply's receipt).
    pub message: Option<String>,
    /// When `card` was created (ms; 0 = unknown): sequences are at least the time since.
    pub created_ms: u64,
    /// Times (ms) of the recent updates of `card`, oldest first.
    pub ops: Vec<u64>,
    /// Cards could not be continued: the rest of the reply is sent as an ordinary reply.
    pub plain_rest: bool,
}

/// The schema-2.0 card of a streamed reply: one markdown element holding `text`, streaming
/// while `streaming`. No words of its own: the chat list shows the platform's streaming summary
/// until the card is closed with the reply's own first words.
pub fn streaming_card(text: &str, streaming: bool) -> Value {
    json!({
        "schema": "2.0",
        "config": {
            "streaming_mode": streaming,
            "update_multi": true,
            "streaming_config": {
                "print_frequency_ms": {"default": 70},
                "print_step": {"default": 1},
                "print_strategy": "fast",
            },
        },
        "body": {
            "elements": [
                {"tag": "markdown", "content": text, "element_id": ELEMENT_ID},
            ],
        },
    })
}

/// The settings that close a card: streaming mode off, the chat list's summary from `text`.
pub fn closing_settings(text: &str) -> Value {
    json!({
        "config": {
            "streaming_mode": false,
            "summary": {"content": summary(text)},
        },
    })
}

/// The first [`SUMMARY_CHARS`] characters of `text` on one line ("…" when cut).
pub fn summary(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    match line.char_indices().nth(SUMMARY_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// The IM message that shows card entity `card_id` (`{"type":"card","data":{"card_id":…}}`).
pub fn card_message(card_id: &str) -> Rendered {
    Rendered {
        msg_type: "interactive",
        content: json!({"type": "card", "data": {"card_id": card_id}}).to_string(),
    }
}

/// The `uuid` of the send of the reply's `index`-th card: its own namespace, so that an
/// ordinary reply sent with the reply's key later (after a restart, or as the fallback) is never
/// taken for a card already sent.
pub fn card_uuid(key: &str, index: u32) -> Option<String> {
    (!key.is_empty()).then(|| format!("{key}-c{index}"))
}

/// The key of the ordinary reply that carries what cards could not (its parts get `-{n}`).
fn rest_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}-p")
    }
}

/// FNV-1a, enough to tell whether a card's text changed.
fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The largest character boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn state_key(root: &str) -> String {
    format!("{STATE_KEY_PREFIX}{root}")
}

impl<H: LarkHost> LarkClient<'_, H> {
    /// `stream-begin`: creates the card entity, sends it to the session (a threaded reply in a
    /// topic, as ordinary replies go) with `uuid` `{key}-c0`, and returns the encoded handle.
    /// Any failure gives a [`StreamHandle::Plain`] handle, so the reply is still delivered.
    pub fn stream_begin(&mut self, target: &SessionTarget, key: &str) -> String {
        let plain = || {
            StreamHandle::Plain {
                key: key.to_string(),
            }
            .encode()
        };
        if target.chat_id.trim().is_empty() || self.check_credentials().is_err() {
            return plain();
        }
        let mut dest = destination(target);
        let card = match self.create_card("", true) {
            Ok(card) => card,
            Err(failure) => {
                self.warn_fallback(
                    "lark card not created; the reply is sent plain",
                    target,
                    &failure,
                );
                return plain();
            }
        };
        let uuid = card_uuid(key, 0);
        let message = match self.send_to(
            &mut dest,
            &target.session_id,
            &card_message(&card),
            uuid.as_deref(),
        ) {
            Ok(message) => message,
            Err(failure) => {
                self.warn_fallback(
                    "lark card not sent; the reply is sent plain",
                    target,
                    &failure,
                );
                return plain();
            }
        };
        let state = CardState {
            card: Some(card.clone()),
            shown: digest(""),
            message: Some(message),
            created_ms: self.host.now_ms(),
            ..CardState::default()
        };
        self.save_state(&card, &state);
        StreamHandle::Card {
            root: card,
            key: key.to_string(),
        }
        .encode()
    }

    /// `stream-update`: shows `text` (the whole reply so far), moving on to follow-up cards as
    /// it outgrows one. A plain stream ignores it.
    pub fn stream_update(
        &mut self,
        target: &SessionTarget,
        handle: &str,
        text: &str,
    ) -> Result<(), DeliveryFailure> {
        let Some(StreamHandle::Card { root, key }) = StreamHandle::parse(handle) else {
            return Ok(());
        };
        self.check_credentials()?;
        let mut state = self.load_state(&root);
        let result = self.show(target, &key, text, &mut state);
        self.save_state(&root, &state);
        result
    }

    /// `stream-end`: shows the final `text`, closes the last card and returns the first card's
    /// message id. A plain stream sends an ordinary reply. When a card refuses for good
    /// (deleted, expired, out of sequence), what it could not show goes out as an ordinary reply.
    pub fn stream_end(
        &mut self,
        target: &SessionTarget,
        handle: &str,
        text: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let (root, key) = match StreamHandle::parse(handle) {
            Some(StreamHandle::Card { root, key }) => (root, key),
            Some(StreamHandle::Plain { key }) => {
                return self.clone_with_key(&key).deliver(
                    target,
                    &Content::Reply(text.to_string()),
                    "",
                );
            }
            None => {
                // Not a handle of ours (a host bug): the reply must still arrive.
                return self.deliver(target, &Content::Reply(text.to_string()), "");
            }
        };
        self.check_credentials()?;
        let mut state = self.load_state(&root);
        let result = self.finish(target, &key, text, &mut state);
        match &result {
            Ok(_) => self.host.kv_delete(&state_key(&root)),
            Err(_) => self.save_state(&root, &state),
        }
        result
    }

    /// Shows the final text and closes the card; falls back to an ordinary reply for the rest
    /// when a card refuses for good.
    fn finish(
        &mut self,
        target: &SessionTarget,
        key: &str,
        text: &str,
        state: &mut CardState,
    ) -> Result<Option<String>, DeliveryFailure> {
        let shown = self
            .show(target, key, text, state)
            .and_then(|()| match state.card.clone() {
                Some(card) if !state.closed => {
                    let visible = self.card_text(text, state);
                    self.close_card(&card, &visible, state)
                }
                _ => Ok(()),
            });
        match shown {
            Ok(()) => {}
            Err(failure) if failure.retryable => return Err(failure),
            Err(failure) => {
                self.warn_fallback(
                    "lark card refused the reply's end; the rest is sent plain",
                    target,
                    &failure,
                );
                state.plain_rest = true;
            }
        }
        if state.plain_rest {
            let rest = self.card_text(text, state);
            let sent =
                self.clone_with_key(&rest_key(key))
                    .deliver(target, &Content::Reply(rest), "")?;
            return Ok(state.message.clone().or(sent));
        }
        Ok(state.message.clone())
    }

    /// What the current card shows of `text`: the reopened fence and everything after the
    /// earlier cards' share.
    fn card_text(&self, text: &str, state: &CardState) -> String {
        let start = floor_boundary(text, state.offset);
        let mut out = String::new();
        if let Some(open) = &state.reopen {
            out.push_str(open);
            out.push('\n');
        }
        out.push_str(&text[start..]);
        out
    }

    /// Writes `text` into the stream's cards: the current card gets what fits; a full card is
    /// closed and a follow-up card is created and sent after it, until the text is placed.
    fn show(
        &mut self,
        target: &SessionTarget,
        key: &str,
        text: &str,
        state: &mut CardState,
    ) -> Result<(), DeliveryFailure> {
        // Each round places at least one line (or a budget's worth of one), so this ends.
        loop {
            if state.plain_rest {
                return Ok(());
            }
            let combined = self.card_text(text, state);
            let prefix_len = state.reopen.as_ref().map_or(0, |open| open.len() + 1);
            let chunks = render::plan_chunks(&combined, CARD_TEXT_BUDGET, true);
            let first = chunks[0].render(&combined);
            let Some(card) = state.card.clone() else {
                self.open_follow_up(target, key, &first, state)?;
                continue;
            };
            self.write_content(&card, &first, state)?;
            if chunks.len() == 1 {
                return Ok(());
            }
            let consumed = chunks[0].range.end.saturating_sub(prefix_len);
            if consumed == 0 {
                // Nothing of the reply fits after the reopened fence (cannot happen with the
                // budget's line pieces); keep what is shown rather than loop.
                return Ok(());
            }
            self.close_card(&card, &first, state)?;
            state.offset = floor_boundary(text, state.offset) + consumed;
            state.reopen = chunks[1].reopen.clone();
            state.card = None;
            state.index += 1;
        }
    }

    /// Creates and sends the reply's next card holding `text`. A failure that retrying may fix
    /// is returned; any other sends the rest of the reply plain at the end.
    fn open_follow_up(
        &mut self,
        target: &SessionTarget,
        key: &str,
        text: &str,
        state: &mut CardState,
    ) -> Result<(), DeliveryFailure> {
        let created = self.create_card(text, true).and_then(|card| {
            let mut dest = destination(target);
            let uuid = card_uuid(key, state.index);
            self.send_to(
                &mut dest,
                &target.session_id,
                &card_message(&card),
                uuid.as_deref(),
            )
            .map(|message| (card, message))
        });
        match created {
            Ok((card, message)) => {
                state.card = Some(card);
                state.seq = 0;
                state.shown = digest(text);
                state.closed = false;
                state.created_ms = self.host.now_ms();
                state.ops.clear();
                state.message.get_or_insert(message);
                Ok(())
            }
            Err(failure) if failure.retryable => Err(failure),
            Err(failure) => {
                self.warn_fallback(
                    "lark follow-up card not made; the rest is sent plain",
                    target,
                    &failure,
                );
                state.plain_rest = true;
                Ok(())
            }
        }
    }

    /// `POST /cardkit/v1/cards` with a streaming card holding `text`; returns the card id.
    fn create_card(&mut self, text: &str, streaming: bool) -> Result<String, DeliveryFailure> {
        let base = self.credentials.base_url.clone();
        let card = streaming_card(text, streaming).to_string();
        let value = self
            .authorized(|token| rest::create_card_request(&base, token, &card))
            .map_err(|err| err.into_failure("lark card create failed"))?;
        match value.pointer("/data/card_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(DeliveryFailure::invalid(
                "lark card create answer has no data.card_id",
            )),
        }
    }

    /// Puts `text` into the card's element unless it already shows it.
    fn write_content(
        &mut self,
        card: &str,
        text: &str,
        state: &mut CardState,
    ) -> Result<(), DeliveryFailure> {
        let shown = digest(text);
        if state.shown == shown {
            return Ok(());
        }
        let sequence = self.next_sequence(state);
        let base = self.credentials.base_url.clone();
        self.authorized(|token| {
            rest::card_content_request(&base, token, card, ELEMENT_ID, text, sequence)
        })
        .map_err(|err| err.into_failure("lark card update failed"))?;
        state.shown = shown;
        Ok(())
    }

    /// Turns the card's streaming mode off, with a summary of `text`.
    fn close_card(
        &mut self,
        card: &str,
        text: &str,
        state: &mut CardState,
    ) -> Result<(), DeliveryFailure> {
        let sequence = self.next_sequence(state);
        let settings = closing_settings(text).to_string();
        let base = self.credentials.base_url.clone();
        self.authorized(|token| {
            rest::card_settings_request(&base, token, card, &settings, sequence)
        })
        .map_err(|err| err.into_failure("lark card close failed"))?;
        state.closed = true;
        Ok(())
    }

    /// The next `sequence` of the current card, after waiting out the card's update rate. It
    /// is also at least the milliseconds since the card was created, so a lost state still
    /// counts up.
    fn next_sequence(&mut self, state: &mut CardState) -> u32 {
        let now = self.host.now_ms();
        if now > 0 {
            state.ops.retain(|at| at.saturating_add(WINDOW_MS) > now);
            if state.ops.len() >= OPS_PER_WINDOW {
                let wait = state.ops[0].saturating_add(WINDOW_MS).saturating_sub(now);
                self.host.sleep_ms(wait);
                let now = self.host.now_ms();
                state.ops.retain(|at| at.saturating_add(WINDOW_MS) > now);
            }
            state.ops.push(self.host.now_ms());
        }
        let since_created = if state.created_ms > 0 && now > state.created_ms {
            u32::try_from(now - state.created_ms).unwrap_or(u32::MAX)
        } else {
            0
        };
        let next = state.seq.saturating_add(1).max(since_created);
        // CardKit's sequence is a positive int32.
        state.seq = next.clamp(1, i32::MAX as u32);
        state.seq
    }

    fn load_state(&mut self, root: &str) -> CardState {
        self.host
            .kv_get(&state_key(root))
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| CardState {
                // Lost (kv failure or expiry): carry on in the first card.
                card: Some(root.to_string()),
                ..CardState::default()
            })
    }

    fn save_state(&mut self, root: &str, state: &CardState) {
        let bytes = serde_json::to_vec(state).expect("JSON serializes");
        self.host.kv_set(&state_key(root), &bytes, STATE_TTL_MS);
    }

    /// A client for the same installation whose sends carry `uuid`s from `key`.
    fn clone_with_key(&mut self, key: &str) -> LarkClient<'_, H> {
        LarkClient::new(&mut *self.host, self.credentials).with_idempotency_key(key)
    }

    fn warn_fallback(&mut self, message: &str, target: &SessionTarget, failure: &DeliveryFailure) {
        let code = failure.code.map(|c| c.to_string()).unwrap_or_default();
        self.host.warn(
            message,
            &[
                ("session", &target.session_id),
                ("code", &code),
                ("error", &failure.message),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::decode::ChatType;
    use crate::outbound::{Credentials, HttpAnswer, TransportFailure};
    use crate::transport::HttpRequestSpec;

    /// A small Lark: tokens, sends, card entities with CardKit's sequence rule, failures by path
    /// fragment; a clock that moves 1 ms per reading and by every sleep.
    #[derive(Default)]
    struct FakeHost {
        requests: Vec<(String, String, Value)>,
        kv: HashMap<String, Vec<u8>>,
        warnings: Vec<String>,
        /// (path fragment, status, code): fails the next request whose path contains it.
        fail: Vec<(String, u16, i64)>,
        /// card id → (last sequence, texts written, closed).
        cards: Vec<(String, u32, Vec<String>, bool)>,
        /// Card JSON at creation, by card id.
        created: HashMap<String, Value>,
        clock: u64,
        slept: u64,
        next: u32,
    }

    impl FakeHost {
        fn card(&mut self, id: &str) -> &mut (String, u32, Vec<String>, bool) {
            self.cards
                .iter_mut()
                .find(|c| c.0 == id)
                .expect("a known card")
        }

        fn paths(&self) -> Vec<String> {
            self.requests
                .iter()
                .map(|(method, path, _)| format!("{method} {path}"))
                .collect()
        }

        /// The `uuid`s of the message sends, in order.
        fn uuids(&self) -> Vec<String> {
            self.requests
                .iter()
                .filter(|(_, path, _)| path.starts_with("/open-apis/im/v1/messages"))
                .map(|(_, _, body)| body["uuid"].as_str().unwrap_or("").to_string())
                .collect()
        }
    }

    fn ok(data: Value) -> Result<HttpAnswer, TransportFailure> {
        Ok(HttpAnswer {
            status: 200,
            headers: Vec::new(),
            body: json!({"code": 0, "msg": "ok", "data": data})
                .to_string()
                .into_bytes(),
        })
    }

    impl LarkHost for FakeHost {
        fn send(&mut self, request: &HttpRequestSpec) -> Result<HttpAnswer, TransportFailure> {
            let path = request
                .url
                .trim_start_matches("https://open.feishu.cn")
                .to_string();
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            self.requests
                .push((request.method.to_string(), path.clone(), body.clone()));
            if path.ends_with("/tenant_access_token/internal") {
                return Ok(HttpAnswer {
                    status: 200,
                    headers: Vec::new(),
                    body: json!({"code": 0, "tenant_access_token": "t-1", "expire": 7200})
                        .to_string()
                        .into_bytes(),
                });
            }
            if let Some(at) = self
                .fail
                .iter()
                .position(|(f, _, _)| path.contains(f.as_str()))
            {
                let (_, status, code) = self.fail.remove(at);
                return Ok(HttpAnswer {
                    status,
                    headers: Vec::new(),
                    body: json!({"code": code, "msg": "refused"})
                        .to_string()
                        .into_bytes(),
                });
            }
            self.next += 1;
            let n = self.next;
            if path == "/open-apis/cardkit/v1/cards" {
                let id = format!("card{n}");
                let card: Value = serde_json::from_str(body["data"].as_str().unwrap()).unwrap();
                let text = card["body"]["elements"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string();
                self.cards.push((id.clone(), 0, vec![text], false));
                self.created.insert(id.clone(), card);
                return ok(json!({"card_id": id}));
            }
            if let Some(rest) = path.strip_prefix("/open-apis/cardkit/v1/cards/") {
                let id = rest.split('/').next().unwrap().to_string();
                let sequence = body["sequence"].as_u64().unwrap() as u32;
                let card = self.card(&id);
                if sequence <= card.1 {
                    return Ok(HttpAnswer {
                        status: 400,
                        headers: Vec::new(),
                        body: json!({"code": 300_317, "msg": "sequence"})
                            .to_string()
                            .into_bytes(),
                    });
                }
                card.1 = sequence;
                if rest.ends_with("/content") {
                    card.2.push(body["content"].as_str().unwrap().to_string());
                } else {
                    let settings: Value =
                        serde_json::from_str(body["settings"].as_str().unwrap()).unwrap();
                    assert_eq!(settings["config"]["streaming_mode"], false);
                    card.3 = true;
                }
                return ok(json!({}));
            }
            ok(json!({"message_id": format!("om_{n}")}))
        }
        fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.kv.get(key).cloned()
        }
        fn kv_set(&mut self, key: &str, value: &[u8], _ttl_ms: u64) {
            self.kv.insert(key.into(), value.to_vec());
        }
        fn kv_delete(&mut self, key: &str) {
            self.kv.remove(key);
        }
        fn warn(&mut self, message: &str, _fields: &[(&str, &str)]) {
            self.warnings.push(message.into());
        }
        fn now_ms(&mut self) -> u64 {
            self.clock += 1;
            1_700_000_000_000 + self.clock
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.clock += ms;
            self.slept += ms;
        }
    }

    fn credentials() -> Credentials {
        Credentials {
            base_url: String::new(),
            app_id: "cli_1".into(),
            app_secret: "s".into(),
        }
    }

    fn target(in_thread: bool) -> SessionTarget {
        SessionTarget {
            session_id: "s-1".into(),
            chat_id: "oc_1".into(),
            chat_type: ChatType::Group,
            thread_id: in_thread.then(|| "omt_1".to_string()),
            reply_to: Some("om_9".into()),
            in_thread,
        }
    }

    const KEY: &str = "reply-0b5e0c1e-2f57-4a39-8d6b-5a0f3f0e9a11";

    #[test]
    fn handles_round_trip() {
        for handle in [
            StreamHandle::Plain { key: KEY.into() },
            StreamHandle::Card {
                root: "7355".into(),
                key: KEY.into(),
            },
            StreamHandle::Plain { key: String::new() },
        ] {
            assert_eq!(StreamHandle::parse(&handle.encode()), Some(handle));
        }
        assert_eq!(StreamHandle::parse("card::k"), None);
        assert_eq!(StreamHandle::parse("om_123"), None);
    }

    #[test]
    fn the_card_json_streams_one_markdown_element() {
        assert_eq!(
            streaming_card("hi", true),
            json!({
                "schema": "2.0",
                "config": {
                    "streaming_mode": true,
                    "update_multi": true,
                    "streaming_config": {
                        "print_frequency_ms": {"default": 70},
                        "print_step": {"default": 1},
                        "print_strategy": "fast",
                    },
                },
                "body": {"elements": [
                    {"tag": "markdown", "content": "hi", "element_id": "reply_md"},
                ]},
            })
        );
        assert_eq!(
            closing_settings("  line one\n line two  "),
            json!({"config": {"streaming_mode": false, "summary": {"content": "line one line two"}}})
        );
        let long = summary(&"字".repeat(100));
        assert_eq!(long.chars().count(), SUMMARY_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(
            serde_json::from_str::<Value>(&card_message("c1").content).unwrap(),
            json!({"type": "card", "data": {"card_id": "c1"}})
        );
        assert!(
            KEY.len() + "-c99".len() <= 50,
            "card uuids fit Lark's 50 characters"
        );
    }

    #[test]
    fn a_stream_creates_sends_updates_and_closes_one_card() {
        let creds = credentials();
        let mut host = FakeHost::default();
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(true), KEY);
        assert_eq!(
            StreamHandle::parse(&handle),
            Some(StreamHandle::Card {
                root: "card1".into(),
                key: KEY.into()
            })
        );
        client.stream_update(&target(true), &handle, "Hel").unwrap();
        client
            .stream_update(&target(true), &handle, "Hello")
            .unwrap();
        client
            .stream_update(&target(true), &handle, "Hello")
            .unwrap();
        let receipt = client
            .stream_end(&target(true), &handle, "Hello, world")
            .unwrap();
        assert_eq!(receipt.as_deref(), Some("om_2"));
        assert_eq!(
            host.paths()[1..],
            [
                "POST /open-apis/cardkit/v1/cards",
                "POST /open-apis/im/v1/messages/om_9/reply",
                "PUT /open-apis/cardkit/v1/cards/card1/elements/reply_md/content",
                "PUT /open-apis/cardkit/v1/cards/card1/elements/reply_md/content",
                "PUT /open-apis/cardkit/v1/cards/card1/elements/reply_md/content",
                "PATCH /open-apis/cardkit/v1/cards/card1/settings",
            ]
        );
        // The card went into the topic as an interactive message naming the card, once.
        let (_, _, reply) = &host.requests[2];
        assert_eq!(reply["msg_type"], "interactive");
        assert_eq!(reply["reply_in_thread"], true);
        assert_eq!(host.uuids(), [format!("{KEY}-c0")]);
        assert_eq!(host.created["card1"]["config"]["streaming_mode"], true);
        let card = &host.cards[0];
        assert_eq!(
            card.2,
            ["", "Hel", "Hello", "Hello, world"],
            "no unchanged rewrite"
        );
        assert!(card.3, "closed");
        assert!(
            !host.kv.keys().any(|k| k.starts_with(STATE_KEY_PREFIX)),
            "the state is gone once the stream ended"
        );
    }

    #[test]
    fn a_long_reply_moves_on_to_follow_up_cards_in_order() {
        let creds = credentials();
        let mut host = FakeHost::default();
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(false), KEY);
        let mut text = String::from("# Report\n```rust\n");
        for i in 0..4_000 {
            text.push_str(&format!("let v{i} = \"值{i}\";\n"));
        }
        text.push_str("```\nDone.\n");
        // Streamed in growing steps, then ended.
        let mut at = 0;
        while at < text.len() {
            at = floor_boundary(&text, at + 7_919);
            client
                .stream_update(&target(false), &handle, &text[..at])
                .unwrap();
            if at == text.len() {
                break;
            }
            at += 1;
        }
        let receipt = client.stream_end(&target(false), &handle, &text).unwrap();
        assert_eq!(receipt.as_deref(), Some("om_2"), "the first card's message");
        assert!(host.cards.len() >= 3, "{} cards", host.cards.len());
        let mut joined = String::new();
        for (index, (id, _, texts, closed)) in host.cards.iter().enumerate() {
            assert!(closed, "card {index} closed");
            let last = texts.last().unwrap();
            assert!(
                render::wire_len(last) <= CARD_TEXT_BUDGET,
                "card {index} fits"
            );
            let fences = last.lines().filter(|l| l.starts_with("```")).count();
            assert_eq!(fences % 2, 0, "card {index} {id} has balanced fences");
            let mut part = last.as_str();
            if index > 0 {
                part = part.strip_prefix("```rust\n").expect("the fence reopened");
            }
            if index + 1 < host.cards.len() {
                part = part.strip_suffix("```\n").expect("the fence closed");
            }
            joined.push_str(part);
        }
        assert_eq!(joined, text, "nothing lost, duplicated or reordered");
        let expected: Vec<String> = (0..host.cards.len())
            .map(|i| format!("{KEY}-c{i}"))
            .collect();
        assert_eq!(host.uuids(), expected);
    }

    #[test]
    fn updates_of_one_card_are_paced() {
        let creds = credentials();
        let mut host = FakeHost::default();
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(false), KEY);
        let mut text = String::new();
        for i in 0..25 {
            text.push_str(&format!("word{i} "));
            client
                .stream_update(&target(false), &handle, &text)
                .unwrap();
        }
        client.stream_end(&target(false), &handle, &text).unwrap();
        assert!(host.slept > 0, "it waited");
        let sequences = host.cards[0].1;
        assert!(
            sequences >= 26,
            "every update had its own, increasing sequence"
        );
    }

    #[test]
    fn pacing_keeps_every_window_within_the_limit() {
        let creds = credentials();
        let mut host = FakeHost::default();
        let mut state = CardState {
            card: Some("card1".into()),
            ..CardState::default()
        };
        let mut client = LarkClient::new(&mut host, &creds);
        let mut times = Vec::new();
        for _ in 0..35 {
            client.next_sequence(&mut state);
            times.push(*state.ops.last().unwrap());
        }
        for (i, at) in times.iter().enumerate() {
            let within = times[i..].iter().filter(|t| **t < at + WINDOW_MS).count();
            assert!(within <= OPS_PER_WINDOW, "{within} updates in a window");
        }
    }

    #[test]
    fn a_card_that_cannot_be_created_falls_back_to_a_plain_reply() {
        let creds = credentials();
        let mut host = FakeHost::default();
        host.fail.push(("/cardkit/v1/cards".into(), 400, 230_099));
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(false), KEY);
        assert_eq!(handle, format!("plain:{KEY}"));
        client
            .stream_update(&target(false), &handle, "partial")
            .unwrap();
        let receipt = client
            .stream_end(&target(false), &handle, "the answer")
            .unwrap();
        assert!(receipt.is_some());
        let (_, path, body) = host.requests.last().unwrap();
        assert_eq!(path, "/open-apis/im/v1/messages?receive_id_type=chat_id");
        assert_eq!(body["msg_type"], "text");
        assert_eq!(body["uuid"], format!("{KEY}-0"));
        assert_eq!(host.warnings.len(), 1);
        assert_eq!(host.cards.len(), 0);
    }

    #[test]
    fn a_card_refused_at_the_end_sends_the_rest_plain() {
        let creds = credentials();
        let mut host = FakeHost::default();
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(false), KEY);
        client
            .stream_update(&target(false), &handle, "part")
            .unwrap();
        // The message was recalled: the card refuses for good.
        client.host.fail.push(("/elements/".into(), 400, 230_011));
        let receipt = client
            .stream_end(&target(false), &handle, "part and the rest")
            .unwrap();
        assert_eq!(receipt.as_deref(), Some("om_2"));
        let (_, _, body) = host.requests.last().unwrap();
        assert_eq!(
            body["content"],
            json!({"text": "part and the rest"}).to_string()
        );
        assert_eq!(body["uuid"], format!("{KEY}-p-0"));

        // A retryable refusal is returned (the host retries the end), state kept.
        let mut host = FakeHost::default();
        let mut client = LarkClient::new(&mut host, &creds);
        let handle = client.stream_begin(&target(false), KEY);
        client.host.fail.push(("/settings".into(), 429, 99_991_400));
        let err = client
            .stream_end(&target(false), &handle, "done")
            .unwrap_err();
        assert!(err.retryable);
        assert!(client.stream_end(&target(false), &handle, "done").is_ok());
        assert!(host.cards[0].3, "closed by the retry");
        assert_eq!(host.cards[0].2, ["", "done"], "the text written once");
    }
}
