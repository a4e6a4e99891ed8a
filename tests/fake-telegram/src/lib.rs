//! A local fake of the Telegram Bot API on a loopback port, for the tests and
//! `switchboard demo --channel telegram`. Every method is under `/bot{token}/{method}` (JSON
//! body, or query parameters); a wrong token gets `401 {"ok":false,"error_code":401,
//! "description":"Unauthorized"}`, as Telegram answers.
//!
//! | method | behaviour |
//! |---|---|
//! | `getMe` | the bot ([`BOT_ID`], [`BOT_USERNAME`]) |
//! | `getUpdates` `{offset, timeout, allowed_updates}` | drops the updates below `offset` (they are confirmed), answers the rest at once, or holds up to `timeout` s for one; 409 while a webhook is set, and 409 to a held poll a newer one replaced |
//! | `setWebhook` `{url, secret_token, allowed_updates}` / `deleteWebhook` / `getWebhookInfo` | records the webhook; while one is set, queued updates are POSTed to it (header `X-Telegram-Bot-Api-Secret-Token`) until answered 2xx, with backoff |
//! | `sendMessage` `{chat_id, text, parse_mode, message_thread_id, reply_parameters}` | records the message; HTML is checked (known tags, balanced, at most 4,096 UTF-16 units of text) |
//! | `editMessageText` `{chat_id, message_id, text, parse_mode}` | replaces the text; the same text is 400 "message is not modified" |
//! | `sendChatAction` / `answerCallbackQuery` / `getFile` and `/file/bot{token}/{path}` | recorded / recorded (unknown id: 400) / files added with [`FakeTelegram::add_file`] |
//!
//! Failures: [`FakeTelegram::fail_next`] (say a 429 with `retry_after`),
//! [`FakeTelegram::block_bot`] (403 for every send to a chat) and
//! [`FakeTelegram::set_send_delay`] (sends and edits held before they are carried out).
//! [`FakeTelegram::served`] lists the `getUpdates` answers that carried updates.
//!
//! ```ignore
//! let fake = FakeTelegram::start("123:abc").await;
//! // point the plugin's https://api.telegram.org at fake.base_url()
//! let ann = User::new(111, "Ann");
//! fake.message(&Chat::private(&ann), &ann, "hello").push();
//! // … the host polls, runs the agent, replies …
//! let sent = fake.sent();
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The bot's user id.
pub const BOT_ID: i64 = 7_000_000_001;
/// The bot's username (without `@`).
pub const BOT_USERNAME: &str = "switchboard_test_bot";
/// The bot's first name.
pub const BOT_NAME: &str = "Switchboard Test Bot";
/// The longest a poll is held, whatever its `timeout`.
pub const MAX_HOLD: Duration = Duration::from_secs(50);
/// The header a webhook request carries the secret in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// Telegram's longest message text, in UTF-16 code units.
pub const MAX_TEXT_UNITS: usize = 4096;

/// A Telegram user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub first_name: String,
    pub is_bot: bool,
}

impl User {
    /// A person called `first_name`.
    pub fn new(id: i64, first_name: &str) -> User {
        User {
            id,
            first_name: first_name.into(),
            is_bot: false,
        }
    }

    /// The fake's bot.
    pub fn bot() -> User {
        User {
            id: BOT_ID,
            first_name: BOT_NAME.into(),
            is_bot: true,
        }
    }

    fn json(&self) -> Value {
        let mut user = json!({"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name});
        if self.is_bot {
            user["username"] = json!(BOT_USERNAME);
        }
        user
    }
}

/// A chat: private (the user's id), a group, or a forum supergroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: i64,
    /// `private`, `group` or `supergroup`.
    pub kind: &'static str,
    pub title: Option<String>,
    pub is_forum: bool,
}

impl Chat {
    /// The private chat of `user` with the bot.
    pub fn private(user: &User) -> Chat {
        Chat {
            id: user.id,
            kind: "private",
            title: None,
            is_forum: false,
        }
    }

    /// A basic group (`id` negative, as Telegram's are).
    pub fn group(id: i64, title: &str) -> Chat {
        Chat {
            id,
            kind: "group",
            title: Some(title.into()),
            is_forum: false,
        }
    }

    /// A supergroup with forum topics.
    pub fn forum(id: i64, title: &str) -> Chat {
        Chat {
            id,
            kind: "supergroup",
            title: Some(title.into()),
            is_forum: true,
        }
    }

    fn json(&self) -> Value {
        let mut chat = json!({"id": self.id, "type": self.kind});
        if let Some(title) = &self.title {
            chat["title"] = json!(title);
        }
        if self.is_forum {
            chat["is_forum"] = json!(true);
        }
        chat
    }
}

/// A message the bot sent, as it stands (edits replace `text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub chat_id: i64,
    pub message_id: i64,
    /// The current text: the sent one or the latest edit's.
    pub text: String,
    /// The text of the send itself.
    pub sent_text: String,
    pub parse_mode: Option<String>,
    pub thread_id: Option<i64>,
    /// `reply_parameters.message_id`.
    pub reply_to: Option<i64>,
    /// Accepted edits, in order.
    pub edits: Vec<String>,
    /// When the send arrived (before any send delay).
    pub received_at: Instant,
}

/// A `sendChatAction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAction {
    pub chat_id: i64,
    pub action: String,
    pub thread_id: Option<i64>,
}

/// The registered webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub secret_token: Option<String>,
    pub allowed_updates: Vec<String>,
}

/// The answer a webhook request got.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAnswer {
    pub status: u16,
    pub body: String,
}

/// A `getUpdates` answer that carried updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The `update_id`s answered, in order.
    pub update_ids: Vec<i64>,
    /// The request's `offset`.
    pub offset: Option<i64>,
    /// When the answer was handed to the server to send.
    pub at: Instant,
}

struct Failure {
    method: String,
    remaining: u32,
    status: u16,
    retry_after: Option<u32>,
}

#[derive(Default)]
struct Bot {
    /// Updates not confirmed yet, in `update_id` order.
    queue: Vec<Value>,
    last_update_id: i64,
    last_message_id: i64,
    sent: Vec<SentMessage>,
    actions: Vec<ChatAction>,
    /// Callback queries pushed and not answered yet.
    open_callbacks: Vec<String>,
    answered: Vec<String>,
    webhook: Option<Webhook>,
    webhook_deliveries: Vec<(WebhookAnswer, Instant)>,
    failures: Vec<Failure>,
    blocked: Vec<i64>,
    files: HashMap<String, (String, Vec<u8>)>,
    last_offset: Option<i64>,
    /// The `offset` of the latest `getUpdates` that named one.
    latest_offset: Option<i64>,
    requests: HashMap<String, u64>,
    request_log: Vec<(String, Instant)>,
    served: Vec<Served>,
    /// How long a send or edit waits before it is carried out.
    send_delay: Duration,
}

struct Shared {
    token: String,
    bot: Mutex<Bot>,
    /// Woken on every pushed update and webhook change.
    wake: Notify,
    /// Bumped by every poll: a held poll that sees it change was replaced (409).
    poll_generation: AtomicU64,
    waiting_polls: AtomicUsize,
    /// Sends and edits held by the send delay right now.
    held_sends: AtomicUsize,
    unauthorized: AtomicU64,
    client: reqwest::Client,
}

impl Shared {
    fn bot(&self) -> MutexGuard<'_, Bot> {
        self.bot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeTelegram {
    shared: Arc<Shared>,
    base_url: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Telegram's entities of `text`: `bot_command` for a leading `/cmd[@bot]`, `mention` for every
/// `@username` (offsets and lengths in UTF-16 units).
fn entities(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut units = 0;
    for (at, ch) in text.char_indices() {
        let starts_word = at == 0 || text[..at].ends_with(char::is_whitespace);
        if starts_word && (ch == '@' || (ch == '/' && at == 0)) {
            let word: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || (ch == '/' && *c == '@'))
                .collect();
            if !word.is_empty() {
                let kind = if ch == '/' { "bot_command" } else { "mention" };
                found.push(json!({"type": kind, "offset": units, "length": 1 + word.len()}));
            }
        }
        units += ch.len_utf16();
    }
    found
}

impl FakeTelegram {
    /// Starts the fake for the bot `token` on an ephemeral loopback port. Panics if it cannot
    /// bind one.
    pub async fn start(token: &str) -> FakeTelegram {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake Telegram: binding a loopback port failed: {e}"));
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            token: token.to_string(),
            bot: Mutex::new(Bot::default()),
            wake: Notify::new(),
            poll_generation: AtomicU64::new(0),
            waiting_polls: AtomicUsize::new(0),
            held_sends: AtomicUsize::new(0),
            unauthorized: AtomicU64::new(0),
            client: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .route("/{bot}/{method}", post(method).get(method))
            .route("/file/{bot}/{*path}", get(file))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let pusher = tokio::spawn(push_to_webhook(shared.clone()));
        FakeTelegram {
            shared,
            base_url,
            tasks: vec![server, pusher],
        }
    }

    /// `http://127.0.0.1:<port>`: redirect `https://api.telegram.org` here.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bot token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    // ----- injection ----------------------------------------------------------------------

    /// Queues a raw update (its `update_id` is set here, one past the last) and wakes held polls
    /// and the webhook pusher; returns the id.
    pub fn push_update(&self, update: Value) -> i64 {
        let id = {
            let mut bot = self.shared.bot();
            let update = numbered(&mut bot, update);
            if let Some(query) = update["callback_query"]["id"].as_str()
                && !bot.open_callbacks.iter().any(|q| q == query)
            {
                bot.open_callbacks.push(query.to_string());
            }
            let id = update["update_id"].as_i64().unwrap_or_default();
            bot.queue.push(update);
            id
        };
        self.shared.wake.notify_waiters();
        id
    }

    /// Queues updates made with [`MessageBuilder::build`] (their ids kept, so build them in
    /// order) all at once: a held poll answers them in one batch. Returns their ids.
    pub fn push_built(&self, updates: Vec<Value>) -> Vec<i64> {
        let ids = {
            let mut bot = self.shared.bot();
            let ids: Vec<i64> = updates
                .iter()
                .filter_map(|u| u["update_id"].as_i64())
                .collect();
            bot.queue.extend(updates);
            bot.queue.sort_by_key(|u| u["update_id"].as_i64());
            ids
        };
        self.shared.wake.notify_waiters();
        ids
    }

    /// A message update of `from` in `chat`, to customise, [`MessageBuilder::push`] or
    /// [`MessageBuilder::build`] (for [`FakeTelegram::post_webhook`]).
    pub fn message<'a>(&'a self, chat: &Chat, from: &User, text: &str) -> MessageBuilder<'a> {
        MessageBuilder {
            fake: self,
            chat: chat.clone(),
            from: from.clone(),
            text: text.into(),
            thread: None,
            reply_to: None,
        }
    }

    /// Queues a press of the button carrying `data` on the bot's message `message_id`; returns
    /// the update id and the callback query id.
    pub fn push_callback_query(
        &self,
        chat: &Chat,
        from: &User,
        message_id: i64,
        data: &str,
    ) -> (i64, String) {
        let update = self.callback_query(chat, from, message_id, data);
        let query = update["callback_query"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (self.push_update(update), query)
    }

    /// A callback query update (not queued): for [`FakeTelegram::post_webhook`].
    pub fn callback_query(&self, chat: &Chat, from: &User, message_id: i64, data: &str) -> Value {
        let thread = self
            .shared
            .bot()
            .sent
            .iter()
            .find(|m| m.chat_id == chat.id && m.message_id == message_id)
            .and_then(|m| m.thread_id);
        let mut message = json!({
            "message_id": message_id, "from": User::bot().json(), "chat": chat.json(),
            "date": now_s(), "text": "(buttons)",
        });
        if let Some(thread) = thread {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
        }
        let id = format!(
            "cbq-{}-{message_id}-{}",
            from.id,
            self.shared.bot().last_update_id + 1
        );
        self.shared.bot().open_callbacks.push(id.clone());
        json!({"callback_query": {
            "id": id, "from": from.json(), "message": message,
            "chat_instance": format!("ci{}", chat.id), "data": data,
        }})
    }

    /// The next `n` calls of `method` answer `status` (with `parameters.retry_after` when
    /// given) and do nothing.
    pub fn fail_next(&self, method: &str, n: u32, status: u16, retry_after: Option<u32>) {
        self.shared.bot().failures.push(Failure {
            method: method.into(),
            remaining: n,
            status,
            retry_after,
        });
    }

    /// Every later `sendMessage` and `editMessageText` waits `delay` before it is carried out
    /// (a slow network): a client that goes away meanwhile cancels it.
    pub fn set_send_delay(&self, delay: Duration) {
        self.shared.bot().send_delay = delay;
    }

    /// Every send, edit and chat action to `chat_id` answers 403: the user blocked the bot (or
    /// it was removed from the group).
    pub fn block_bot(&self, chat_id: i64) {
        self.shared.bot().blocked.push(chat_id);
    }

    /// A file `getFile` knows as `file_id`, served at `file_path`.
    pub fn add_file(&self, file_id: &str, file_path: &str, bytes: &[u8]) {
        self.shared
            .bot()
            .files
            .insert(file_id.into(), (file_path.into(), bytes.to_vec()));
    }

    /// POSTs `update` to `url` as Telegram does (`secret` in [`SECRET_HEADER`]); a method in a
    /// 2xx answer (`{"method":"answerCallbackQuery",…}`) is carried out, as Telegram does.
    pub async fn post_webhook(
        &self,
        url: &str,
        secret: Option<&str>,
        update: &Value,
    ) -> WebhookAnswer {
        post_update(&self.shared, url, secret, update).await
    }

    // ----- observation --------------------------------------------------------------------

    /// The messages the bot sent, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.bot().sent.clone()
    }

    /// The messages the bot sent to `chat_id`.
    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.sent()
            .into_iter()
            .filter(|m| m.chat_id == chat_id)
            .collect()
    }

    /// The chat actions, in order.
    pub fn chat_actions(&self) -> Vec<ChatAction> {
        self.shared.bot().actions.clone()
    }

    /// The callback query ids answered, in order.
    pub fn answered_callbacks(&self) -> Vec<String> {
        self.shared.bot().answered.clone()
    }

    /// The webhook, if one is set.
    pub fn webhook(&self) -> Option<Webhook> {
        self.shared.bot().webhook.clone()
    }

    /// The answers of the updates the fake pushed to the webhook itself, in order.
    pub fn webhook_deliveries(&self) -> Vec<WebhookAnswer> {
        self.shared
            .bot()
            .webhook_deliveries
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Calls of `method` with the right token (failed ones included).
    pub fn requests(&self, method: &str) -> u64 {
        self.shared.bot().requests.get(method).copied().unwrap_or(0)
    }

    /// When each call of `method` arrived.
    pub fn request_times(&self, method: &str) -> Vec<Instant> {
        let bot = self.shared.bot();
        bot.request_log
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Requests refused for a wrong token.
    pub fn unauthorized_requests(&self) -> u64 {
        self.shared.unauthorized.load(Ordering::SeqCst)
    }

    /// Sends and edits waiting out the send delay right now.
    pub fn sends_in_flight(&self) -> usize {
        self.shared.held_sends.load(Ordering::SeqCst)
    }

    /// The `getUpdates` answers that carried updates, in order.
    pub fn served(&self) -> Vec<Served> {
        self.shared.bot().served.clone()
    }

    /// Polls being held right now.
    pub fn waiting_polls(&self) -> usize {
        self.shared.waiting_polls.load(Ordering::SeqCst)
    }

    /// The highest `offset` a `getUpdates` asked for: every update below it is confirmed.
    pub fn last_offset(&self) -> Option<i64> {
        self.shared.bot().last_offset
    }

    /// The `offset` the latest `getUpdates` asked for (a poller that went back would show here).
    pub fn latest_offset(&self) -> Option<i64> {
        self.shared.bot().latest_offset
    }

    /// Updates still queued (not confirmed by an offset nor delivered to the webhook).
    pub fn pending_updates(&self) -> usize {
        self.shared.bot().queue.len()
    }
}

fn numbered(bot: &mut Bot, mut update: Value) -> Value {
    bot.last_update_id += 1;
    if let Value::Object(fields) = &mut update {
        fields.insert("update_id".into(), json!(bot.last_update_id));
    }
    update
}

/// A message update being built.
pub struct MessageBuilder<'a> {
    fake: &'a FakeTelegram,
    chat: Chat,
    from: User,
    text: String,
    thread: Option<i64>,
    reply_to: Option<i64>,
}

impl MessageBuilder<'_> {
    /// In the forum topic `thread_id`.
    pub fn in_topic(mut self, thread_id: i64) -> Self {
        self.thread = Some(thread_id);
        self
    }

    /// A reply to the message `message_id` of the chat (the bot's, when the bot sent it).
    pub fn reply_to(mut self, message_id: i64) -> Self {
        self.reply_to = Some(message_id);
        self
    }

    /// The update with a fresh `update_id` and `message_id`, not queued.
    pub fn build(self) -> Value {
        let mut bot = self.fake.shared.bot();
        bot.last_message_id += 1;
        let mut message = json!({
            "message_id": bot.last_message_id, "from": self.from.json(), "chat": self.chat.json(),
            "date": now_s(), "text": self.text,
        });
        let entities = entities(&self.text);
        if !entities.is_empty() {
            message["entities"] = Value::Array(entities);
        }
        if let Some(thread) = self.thread {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
        }
        if let Some(parent) = self.reply_to {
            let sent = bot
                .sent
                .iter()
                .find(|m| m.chat_id == self.chat.id && m.message_id == parent);
            let (from, text) = match sent {
                Some(m) => (User::bot().json(), m.text.clone()),
                None => (
                    json!({"id": 1, "is_bot": false, "first_name": "Someone"}),
                    "…".into(),
                ),
            };
            message["reply_to_message"] = json!({
                "message_id": parent, "from": from, "chat": self.chat.json(), "date": now_s(), "text": text,
            });
        }
        numbered(&mut bot, json!({"message": message}))
    }

    /// Queues the update; returns its `update_id`.
    pub fn push(self) -> i64 {
        let fake = self.fake;
        let update = self.build();
        let id = update["update_id"].as_i64().unwrap_or_default();
        fake.shared.bot().queue.push(update);
        fake.shared.wake.notify_waiters();
        id
    }
}

// ----- the API ----------------------------------------------------------------------------

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn error(status: u16, description: &str, retry_after: Option<u32>) -> Response {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if let Some(seconds) = retry_after {
        body["parameters"] = json!({"retry_after": seconds});
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// The call's parameters: the JSON body, or the query string.
fn params(body: &Bytes, query: HashMap<String, String>) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        Value::Object(
            query
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
                .collect(),
        )
    })
}

fn int(params: &Value, key: &str) -> Option<i64> {
    match &params[key] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn method(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if bot.strip_prefix("bot") != Some(shared.token.as_str()) {
        shared.unauthorized.fetch_add(1, Ordering::SeqCst);
        return error(401, "Unauthorized", None);
    }
    let p = params(&body, query);
    let arrived = Instant::now();
    if matches!(method.as_str(), "sendMessage" | "editMessageText") {
        let delay = shared.bot().send_delay;
        if !delay.is_zero() {
            shared.held_sends.fetch_add(1, Ordering::SeqCst);
            let _held = Held(&shared.held_sends);
            tokio::time::sleep(delay).await;
        }
    }
    {
        let mut bot = shared.bot();
        *bot.requests.entry(method.clone()).or_default() += 1;
        bot.request_log.push((method.clone(), Instant::now()));
        if let Some(failure) = bot
            .failures
            .iter_mut()
            .find(|f| f.method == method && f.remaining > 0)
        {
            failure.remaining -= 1;
            let description = match failure.status {
                429 => format!(
                    "Too Many Requests: retry after {}",
                    failure.retry_after.unwrap_or(1)
                ),
                status => format!("injected failure {status}"),
            };
            return error(failure.status, &description, failure.retry_after);
        }
        let chat = int(&p, "chat_id");
        if matches!(
            method.as_str(),
            "sendMessage" | "editMessageText" | "sendChatAction"
        ) && chat.is_some_and(|c| bot.blocked.contains(&c))
        {
            return error(403, "Forbidden: bot was blocked by the user", None);
        }
    }
    match method.as_str() {
        "getMe" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": BOT_NAME, "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
        })),
        "getUpdates" => get_updates(shared, p).await,
        "setWebhook" => set_webhook(&shared, &p),
        "deleteWebhook" => {
            shared.bot().webhook = None;
            ok(json!(true))
        }
        "getWebhookInfo" => {
            let bot = shared.bot();
            let url = bot.webhook.as_ref().map_or("", |w| w.url.as_str());
            ok(json!({"url": url, "pending_update_count": bot.queue.len()}))
        }
        "sendMessage" => send_message(&shared, &p, arrived),
        "editMessageText" => edit_message(&shared, &p),
        "sendChatAction" => {
            let Some(chat_id) = int(&p, "chat_id") else {
                return error(400, "Bad Request: chat_id is empty", None);
            };
            shared.bot().actions.push(ChatAction {
                chat_id,
                action: p["action"].as_str().unwrap_or_default().into(),
                thread_id: int(&p, "message_thread_id"),
            });
            ok(json!(true))
        }
        "answerCallbackQuery" => answer_callback(&shared, &p),
        "getFile" => {
            let id = p["file_id"].as_str().unwrap_or_default();
            match shared.bot().files.get(id) {
                Some((path, bytes)) => ok(json!({
                    "file_id": id, "file_unique_id": format!("u-{id}"), "file_size": bytes.len(), "file_path": path,
                })),
                None => error(400, "Bad Request: invalid file_id", None),
            }
        }
        _ => error(404, "Not Found", None),
    }
}

fn answer_callback(shared: &Shared, p: &Value) -> Response {
    let id = p["callback_query_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut bot = shared.bot();
    match bot.open_callbacks.iter().position(|q| *q == id) {
        Some(at) => {
            bot.open_callbacks.remove(at);
            bot.answered.push(id);
            ok(json!(true))
        }
        None => error(
            400,
            "Bad Request: query is too old and response timeout expired or query ID is invalid",
            None,
        ),
    }
}

async fn get_updates(shared: Arc<Shared>, p: Value) -> Response {
    let generation = shared.poll_generation.fetch_add(1, Ordering::SeqCst) + 1;
    // A newer poll replaces a held one: wake it so it answers 409.
    shared.wake.notify_waiters();
    let offset = int(&p, "offset");
    let hold = Duration::from_secs(int(&p, "timeout").unwrap_or(0).max(0) as u64).min(MAX_HOLD);
    let deadline = tokio::time::Instant::now() + hold;
    shared.waiting_polls.fetch_add(1, Ordering::SeqCst);
    let _held = Held(&shared.waiting_polls);
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        {
            let mut bot = shared.bot();
            if bot.webhook.is_some() {
                return error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                    None,
                );
            }
            if shared.poll_generation.load(Ordering::SeqCst) != generation {
                return error(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                    None,
                );
            }
            if let Some(offset) = offset {
                // Calling with an offset confirms every update below it.
                bot.queue
                    .retain(|u| u["update_id"].as_i64().is_some_and(|id| id >= offset));
                bot.last_offset = bot.last_offset.max(Some(offset));
                bot.latest_offset = Some(offset);
            }
            let ready: Vec<Value> = bot.queue.iter().take(100).cloned().collect();
            if !ready.is_empty() {
                let update_ids = ready
                    .iter()
                    .filter_map(|u| u["update_id"].as_i64())
                    .collect();
                bot.served.push(Served {
                    update_ids,
                    offset,
                    at: Instant::now(),
                });
                return ok(Value::Array(ready));
            }
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return ok(json!([]));
        }
    }
}

/// Decrements a gauge (held polls, held sends) however the handler ends (the client may go away).
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn set_webhook(shared: &Shared, p: &Value) -> Response {
    let url = p["url"].as_str().unwrap_or_default();
    if url.is_empty() {
        shared.bot().webhook = None;
        return ok(json!(true));
    }
    let secret = p["secret_token"].as_str().map(str::to_string);
    if let Some(secret) = &secret
        && (secret.is_empty()
            || secret.len() > 256
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return error(
            400,
            "Bad Request: secret token contains unallowed characters",
            None,
        );
    }
    let allowed_updates = p["allowed_updates"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    shared.bot().webhook = Some(Webhook {
        url: url.into(),
        secret_token: secret,
        allowed_updates,
    });
    shared.wake.notify_waiters();
    ok(json!(true))
}

const TAGS: &[&str] = &[
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "tg-emoji",
    "code",
    "pre",
    "blockquote",
];

/// The text Telegram shows for `text` in `parse_mode`: with HTML, known tags only, balanced,
/// entities decoded. An error is Telegram's "can't parse entities".
fn visible_text(text: &str, parse_mode: Option<&str>) -> Result<String, String> {
    if parse_mode != Some("HTML") {
        return Ok(text.to_string());
    }
    let (mut out, mut open, mut rest) = (String::new(), Vec::<String>::new(), text);
    while let Some(at) = rest.find(['<', '&']) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with('&') {
            let end = rest.find(';').filter(|e| *e <= 8).ok_or("unescaped &")?;
            out.push(match &rest[1..end] {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                other => return Err(format!("unsupported entity &{other};")),
            });
            rest = &rest[end + 1..];
            continue;
        }
        let end = rest.find('>').ok_or("unclosed tag")?;
        let tag = &rest[1..end];
        let (closing, name) = match tag.strip_prefix('/') {
            Some(name) => (true, name.trim()),
            None => (false, tag.split_whitespace().next().unwrap_or_default()),
        };
        if !TAGS.contains(&name) {
            return Err(format!("unsupported start tag \"{name}\""));
        }
        if closing {
            if open.pop().as_deref() != Some(name) {
                return Err(format!("unmatched end tag \"{name}\""));
            }
        } else {
            open.push(name.to_string());
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    match open.last() {
        Some(tag) => Err(format!(
            "can't find end tag corresponding to start tag \"{tag}\""
        )),
        None => Ok(out),
    }
}

/// The visible text of a send or edit, or Telegram's 400 answer.
fn checked_text(p: &Value) -> Result<String, Box<Response>> {
    let text = p["text"].as_str().unwrap_or_default();
    let visible = visible_text(text, p["parse_mode"].as_str()).map_err(|why| {
        Box::new(error(
            400,
            &format!("Bad Request: can't parse entities: {why}"),
            None,
        ))
    })?;
    if visible.trim().is_empty() {
        return Err(Box::new(error(
            400,
            "Bad Request: message text is empty",
            None,
        )));
    }
    if utf16_len(&visible) > MAX_TEXT_UNITS {
        return Err(Box::new(error(
            400,
            "Bad Request: message is too long",
            None,
        )));
    }
    Ok(text.to_string())
}

fn message_json(m: &SentMessage) -> Value {
    let mut message = json!({
        "message_id": m.message_id, "from": User::bot().json(), "chat": {"id": m.chat_id},
        "date": now_s(), "text": m.text,
    });
    if let Some(thread) = m.thread_id {
        message["message_thread_id"] = json!(thread);
    }
    message
}

fn send_message(shared: &Shared, p: &Value, arrived: Instant) -> Response {
    let Some(chat_id) = int(p, "chat_id") else {
        return error(400, "Bad Request: chat_id is empty", None);
    };
    let text = match checked_text(p) {
        Ok(text) => text,
        Err(answer) => return *answer,
    };
    let mut bot = shared.bot();
    bot.last_message_id += 1;
    let message = SentMessage {
        chat_id,
        message_id: bot.last_message_id,
        text: text.clone(),
        sent_text: text,
        parse_mode: p["parse_mode"].as_str().map(str::to_string),
        thread_id: int(p, "message_thread_id"),
        reply_to: int(&p["reply_parameters"], "message_id"),
        edits: Vec::new(),
        received_at: arrived,
    };
    let answer = message_json(&message);
    bot.sent.push(message);
    ok(answer)
}

fn edit_message(shared: &Shared, p: &Value) -> Response {
    let (Some(chat_id), Some(message_id)) = (int(p, "chat_id"), int(p, "message_id")) else {
        return error(
            400,
            "Bad Request: message identifier is not specified",
            None,
        );
    };
    let text = match checked_text(p) {
        Ok(text) => text,
        Err(answer) => return *answer,
    };
    let mut bot = shared.bot();
    let Some(message) = bot
        .sent
        .iter_mut()
        .find(|m| m.chat_id == chat_id && m.message_id == message_id)
    else {
        return error(400, "Bad Request: message to edit not found", None);
    };
    if message.text == text {
        return error(
            400,
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
            None,
        );
    }
    message.text = text.clone();
    message.edits.push(text);
    ok(message_json(message))
}

async fn file(
    State(shared): State<Arc<Shared>>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    if bot.strip_prefix("bot") != Some(shared.token.as_str()) {
        shared.unauthorized.fetch_add(1, Ordering::SeqCst);
        return error(401, "Unauthorized", None);
    }
    let found = shared
        .bot()
        .files
        .values()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| bytes.clone());
    match found {
        Some(bytes) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        None => error(404, "Not Found", None),
    }
}

// ----- webhooks ---------------------------------------------------------------------------

async fn post_update(
    shared: &Shared,
    url: &str,
    secret: Option<&str>,
    update: &Value,
) -> WebhookAnswer {
    let mut request = shared
        .client
        .post(url)
        .header("content-type", "application/json")
        .body(update.to_string());
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret);
    }
    let answer = match request.send().await {
        Ok(response) => WebhookAnswer {
            status: response.status().as_u16(),
            body: response.text().await.unwrap_or_default(),
        },
        Err(e) => WebhookAnswer {
            status: 0,
            body: e.to_string(),
        },
    };
    // A method in the answer is carried out (Telegram gives no result back).
    if (200..300).contains(&answer.status)
        && let Ok(reply) = serde_json::from_str::<Map<String, Value>>(&answer.body)
        && reply.get("method").and_then(Value::as_str) == Some("answerCallbackQuery")
    {
        let _ = answer_callback(shared, &Value::Object(reply));
    }
    answer
}

/// While a webhook is set, delivers the queued updates to it in order, one at a time, each until
/// it is answered 2xx (the delay doubles after a failure, up to 5 s), as Telegram does.
async fn push_to_webhook(shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = {
            let bot = shared.bot();
            bot.webhook.clone().zip(bot.queue.first().cloned())
        };
        let Some((webhook, update)) = next else {
            woken.await;
            continue;
        };
        let answer = post_update(
            &shared,
            &webhook.url,
            webhook.secret_token.as_deref(),
            &update,
        )
        .await;
        let delivered = (200..300).contains(&answer.status);
        {
            let mut bot = shared.bot();
            bot.webhook_deliveries.push((answer, Instant::now()));
            if delivered {
                bot.queue.retain(|u| u["update_id"] != update["update_id"]);
            }
        }
        if delivered {
            delay = Duration::from_millis(100);
        } else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
