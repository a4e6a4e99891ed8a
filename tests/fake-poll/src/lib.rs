//! A local fake of a long-polling chat channel: the API the `testing-poll` plugin speaks
//! (`plugins/testing-poll`), on a loopback port. Every route is under `/bot{token}/`; a wrong
//! token gets `401 {"error":"unauthorized"}`.
//!
//! | route | behaviour |
//! |---|---|
//! | `GET updates?offset=N&timeout_s=S` | the updates with `update_id >= N` at once if there are any, otherwise held up to `S` seconds (at most 30) for one; `{"updates":[…],"next_offset":M}` where `M` is one past the last update returned (`N` when none) |
//! | `POST send` `{"chat_id","text","idempotency_key","reply_to"}` | `{"message_id"}`; a repeated non-empty `idempotency_key` answers the first send's id and records nothing |
//! | `POST edit` `{"message_id","text","final"}` | `{"ok":true}`; records the edit and replaces the message's text (404 for an unknown message) |
//! | `GET me` | `{"id","name"}` of the bot |
//!
//! [`FakePoll::set_failures`] makes the next sends and edits answer an error status instead.
//!
//! ```ignore
//! let fake = FakePoll::start("123:abc").await;
//! // point the plugin's `http://poll.test` at `fake.base_url()`, install with secret token=123:abc
//! let update_id = fake.push_message("c1", "direct", "u1", "hello");
//! // … the host polls, runs the agent, streams the reply …
//! let sent = fake.sent();
//! let edits = fake.edits(&sent[0].message_id);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The bot's id in `/me` answers.
pub const BOT_ID: &str = "bot-1";
/// The bot's name in `/me` answers.
pub const BOT_NAME: &str = "Fake Poll Bot";
/// `deadline_ms` of the actions [`FakePoll::push_action`] makes.
pub const ACTION_DEADLINE_MS: u64 = 3_000;
/// The longest a poll is held, whatever its `timeout_s`.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// A message the channel holds, as sent (its `text` is the latest: edits replace it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The id the channel gave it (`msg-1`, `msg-2`, …).
    pub message_id: String,
    pub chat_id: String,
    /// The current text: the sent one, or the latest edit's.
    pub text: String,
    /// The text of the send itself.
    pub sent_text: String,
    pub idempotency_key: String,
    pub reply_to: Option<String>,
    pub received_at: Instant,
}

/// One accepted edit of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRecord {
    pub text: String,
    /// Whether the edit carried `"final": true` (a streamed reply's end).
    pub is_final: bool,
    pub received_at: Instant,
}

#[derive(Default)]
struct Channel {
    /// Every update pushed, in `update_id` order (they are never dropped).
    updates: Vec<Value>,
    last_update_id: u64,
    messages: Vec<SentMessage>,
    by_key: HashMap<String, String>,
    edits: Vec<(String, EditRecord)>,
    failures: u32,
    failure_status: u16,
    /// The highest `offset` a poll asked for.
    last_offset: Option<u64>,
}

struct Shared {
    token: String,
    channel: Mutex<Channel>,
    /// Woken on every pushed update.
    wake: Notify,
    poll_requests: AtomicU64,
    send_requests: AtomicU64,
    edit_requests: AtomicU64,
    unauthorized: AtomicU64,
    waiting_polls: AtomicUsize,
}

impl Shared {
    fn channel(&self) -> MutexGuard<'_, Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `bot` (the path segment `bot{token}`) names this channel's bot.
    fn authorized(&self, bot: &str) -> bool {
        let ok = bot.strip_prefix("bot") == Some(self.token.as_str());
        if !ok {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }

    /// Takes one of the failures [`FakePoll::set_failures`] asked for.
    fn take_failure(&self) -> Option<StatusCode> {
        let mut channel = self.channel();
        if channel.failures == 0 {
            return None;
        }
        channel.failures -= 1;
        Some(
            StatusCode::from_u16(channel.failure_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakePoll {
    shared: Arc<Shared>,
    base_url: String,
    task: JoinHandle<()>,
}

impl Drop for FakePoll {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FakePoll {
    /// Starts the fake for the bot `token` on an ephemeral loopback port. Panics if it cannot
    /// bind one.
    pub async fn start(token: &str) -> FakePoll {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake poll channel: binding a loopback port failed: {e}"));
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            token: token.to_string(),
            channel: Mutex::new(Channel::default()),
            wake: Notify::new(),
            poll_requests: AtomicU64::new(0),
            send_requests: AtomicU64::new(0),
            edit_requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            waiting_polls: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/{bot}/updates", get(updates))
            .route("/{bot}/send", post(send))
            .route("/{bot}/edit", post(edit))
            .route("/{bot}/me", get(me))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePoll {
            shared,
            base_url,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`: redirect the plugin's `http://poll.test` here (or set it as the
    /// installation's `base_url`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bot token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Queues a raw update (its `update_id` is set here) and wakes held polls; returns the id.
    pub fn push_update(&self, update: Value) -> u64 {
        self.push_with(|_| update)
    }

    /// Queues the update `make` builds for the next update id.
    fn push_with(&self, make: impl FnOnce(u64) -> Value) -> u64 {
        let id = {
            let mut channel = self.shared.channel();
            channel.last_update_id += 1;
            let id = channel.last_update_id;
            let mut update = make(id);
            if let Value::Object(fields) = &mut update {
                fields.insert("update_id".into(), json!(id));
            }
            channel.updates.push(update);
            id
        };
        self.shared.wake.notify_waiters();
        id
    }

    /// Queues a text message from `user_id` (named after it) in chat `chat_id` of `kind`
    /// (`direct`, `group` or `channel`). Its message id is `m{update_id}`. Returns the update id.
    pub fn push_message(&self, chat_id: &str, kind: &str, user_id: &str, text: &str) -> u64 {
        self.push_with(|id| {
            json!({
                "message": {
                    "id": format!("m{id}"),
                    "chat": { "id": chat_id, "kind": kind },
                    "from": { "id": user_id, "name": user_id },
                    "text": text,
                    "date_ms": now_ms(),
                }
            })
        })
    }

    /// Queues a button press `name` with `value` by `user_id` on message `message_id`. Its action
    /// id is `a{update_id}`, its deadline [`ACTION_DEADLINE_MS`]. Returns the update id.
    pub fn push_action(
        &self,
        chat_id: &str,
        kind: &str,
        user_id: &str,
        message_id: &str,
        name: &str,
        value: &str,
    ) -> u64 {
        self.push_with(|id| {
            json!({
                "action": {
                    "id": format!("a{id}"),
                    "chat": { "id": chat_id, "kind": kind },
                    "from": { "id": user_id, "name": user_id },
                    "message_id": message_id,
                    "name": name,
                    "value": value,
                    "deadline_ms": ACTION_DEADLINE_MS,
                    "date_ms": now_ms(),
                }
            })
        })
    }

    /// The messages the channel holds, in send order (one per idempotency key).
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.channel().messages.clone()
    }

    /// The accepted edits of `message_id`, in arrival order.
    pub fn edits(&self, message_id: &str) -> Vec<EditRecord> {
        self.shared
            .channel()
            .edits
            .iter()
            .filter(|(id, _)| id == message_id)
            .map(|(_, edit)| edit.clone())
            .collect()
    }

    /// Makes the next `n` send and edit requests answer `status` (with `{"error":…}`) without
    /// doing anything. `n = 0` clears.
    pub fn set_failures(&self, n: u32, status: u16) {
        let mut channel = self.shared.channel();
        channel.failures = n;
        channel.failure_status = status;
    }

    /// Failures still to be answered.
    pub fn pending_failures(&self) -> u32 {
        self.shared.channel().failures
    }

    /// `updates` requests with the right token so far.
    pub fn poll_requests(&self) -> u64 {
        self.shared.poll_requests.load(Ordering::SeqCst)
    }

    /// `send` requests with the right token so far (failed and deduplicated ones included).
    pub fn send_requests(&self) -> u64 {
        self.shared.send_requests.load(Ordering::SeqCst)
    }

    /// `edit` requests with the right token so far (failed ones included).
    pub fn edit_requests(&self) -> u64 {
        self.shared.edit_requests.load(Ordering::SeqCst)
    }

    /// Requests refused for a wrong token.
    pub fn unauthorized_requests(&self) -> u64 {
        self.shared.unauthorized.load(Ordering::SeqCst)
    }

    /// Polls being held right now.
    pub fn waiting_polls(&self) -> usize {
        self.shared.waiting_polls.load(Ordering::SeqCst)
    }

    /// The highest `offset` a poll has asked for: everything below it was acknowledged.
    pub fn last_offset(&self) -> Option<u64> {
        self.shared.channel().last_offset
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "unauthorized" })),
    )
        .into_response()
}

fn failure(status: StatusCode) -> Response {
    (status, Json(json!({ "error": "injected failure" }))).into_response()
}

#[derive(Deserialize)]
struct PollQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    timeout_s: u64,
}

/// Decrements the held-poll gauge however the handler ends (the client may go away).
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn updates(
    State(shared): State<Arc<Shared>>,
    Path(bot): Path<String>,
    Query(query): Query<PollQuery>,
) -> Response {
    if !shared.authorized(&bot) {
        return unauthorized();
    }
    shared.poll_requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut channel = shared.channel();
        channel.last_offset = channel.last_offset.max(Some(query.offset));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.timeout_s).min(MAX_HOLD);
    shared.waiting_polls.fetch_add(1, Ordering::SeqCst);
    let _held = Held(&shared.waiting_polls);
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let ready: Vec<Value> = shared
            .channel()
            .updates
            .iter()
            .filter(|u| u["update_id"].as_u64().is_some_and(|id| id >= query.offset))
            .cloned()
            .collect();
        if !ready.is_empty() {
            let next = ready
                .last()
                .and_then(|u| u["update_id"].as_u64())
                .unwrap_or(0)
                + 1;
            return Json(json!({ "updates": ready, "next_offset": next })).into_response();
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Json(json!({ "updates": [], "next_offset": query.offset })).into_response();
        }
    }
}

#[derive(Deserialize)]
struct SendBody {
    chat_id: String,
    text: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    reply_to: Option<String>,
}

async fn send(
    State(shared): State<Arc<Shared>>,
    Path(bot): Path<String>,
    Json(body): Json<SendBody>,
) -> Response {
    if !shared.authorized(&bot) {
        return unauthorized();
    }
    shared.send_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = shared.take_failure() {
        return failure(status);
    }
    let mut channel = shared.channel();
    if !body.idempotency_key.is_empty()
        && let Some(id) = channel.by_key.get(&body.idempotency_key)
    {
        return Json(json!({ "ok": true, "message_id": id })).into_response();
    }
    let message_id = format!("msg-{}", channel.messages.len() + 1);
    if !body.idempotency_key.is_empty() {
        channel
            .by_key
            .insert(body.idempotency_key.clone(), message_id.clone());
    }
    channel.messages.push(SentMessage {
        message_id: message_id.clone(),
        chat_id: body.chat_id,
        text: body.text.clone(),
        sent_text: body.text,
        idempotency_key: body.idempotency_key,
        reply_to: body.reply_to,
        received_at: Instant::now(),
    });
    Json(json!({ "ok": true, "message_id": message_id })).into_response()
}

#[derive(Deserialize)]
struct EditBody {
    message_id: String,
    text: String,
    #[serde(default, rename = "final")]
    is_final: bool,
}

async fn edit(
    State(shared): State<Arc<Shared>>,
    Path(bot): Path<String>,
    Json(body): Json<EditBody>,
) -> Response {
    if !shared.authorized(&bot) {
        return unauthorized();
    }
    shared.edit_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = shared.take_failure() {
        return failure(status);
    }
    let mut channel = shared.channel();
    let Some(message) = channel
        .messages
        .iter_mut()
        .find(|m| m.message_id == body.message_id)
    else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such message" })),
        )
            .into_response();
    };
    message.text = body.text.clone();
    channel.edits.push((
        body.message_id,
        EditRecord {
            text: body.text,
            is_final: body.is_final,
            received_at: Instant::now(),
        },
    ));
    Json(json!({ "ok": true })).into_response()
}

async fn me(State(shared): State<Arc<Shared>>, Path(bot): Path<String>) -> Response {
    if !shared.authorized(&bot) {
        return unauthorized();
    }
    Json(json!({ "id": BOT_ID, "name": BOT_NAME })).into_response()
}
