//! A local fake of Slack, for tests and `switchboard demo --channel slack`.
//!
//! One [`FakeSlack`] listens on two loopback ports:
//!
//! - **HTTP** ([`FakeSlack::base_url`]): the Web API subset the Slack plugin calls, under
//!   `/api/{method}` — `auth.test`, `users.info`, `conversations.replies`, `chat.postMessage`,
//!   `chat.postEphemeral`, `chat.update`, `reactions.add`/`remove`,
//!   `assistant.threads.setStatus`, `apps.connections.open` — and file downloads under
//!   `/files-pri/…`. Bearer tokens are checked (`invalid_auth`), parameters are read from the
//!   query, a JSON body or a form body. Failures can be injected: rate limits
//!   ([`FakeSlack::rate_limit_next`]) and a terminal error for a channel
//!   ([`FakeSlack::fail_channel`]). Point the host's `https://slack.com` and
//!   `https://files.slack.com` at it.
//! - **Socket Mode** ([`FakeSlack::ws_origin`]): `apps.connections.open` answers a single-use
//!   `ws://…/link/?ticket=…`; a connection gets `hello`, then envelopes (text frames) pushed
//!   with [`FakeSlack::push_message`] and friends; ACKs (`{"envelope_id"}`) are recorded.
//!   [`FakeSlack::disconnect`] sends `disconnect` (`refresh_requested`) and closes the socket
//!   after a grace period; envelopes not ACKed on a closed socket are redelivered on the next
//!   connection (`retry_attempt` + 1), like Slack.
//! - **Events API pusher**: [`FakeSlack::post_event`] signs a body with the signing secret and
//!   POSTs it to a URL as Slack does ([`FakeSlack::post_raw`]: a bad, stale or missing
//!   signature, `X-Slack-Retry-Num`, form bodies).
//!
//! Owns only its sockets and its in-memory record of what it saw; dropping it stops it.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as WsResponse,
};

/// The bot's user id `auth.test` answers.
pub const BOT_USER_ID: &str = "UFAKEBOT01";
/// The bot's bot id (on the bot's own messages).
pub const BOT_ID: &str = "BFAKEBOT01";
/// The workspace id.
pub const TEAM_ID: &str = "TFAKETEAM1";
/// The app id.
pub const APP_ID: &str = "AFAKEAPP01";
/// The bot's name.
pub const BOT_NAME: &str = "switchboard";

/// A message the bot posted (`chat.postMessage` or `chat.postEphemeral`).
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    /// The channel id.
    pub channel: String,
    /// The message `ts`.
    pub ts: String,
    /// The thread it was posted in.
    pub thread_ts: Option<String>,
    /// The current text (the latest `chat.update`'s).
    pub text: String,
    /// Its Block Kit blocks, if any.
    pub blocks: Option<Value>,
    /// The recipient of an ephemeral message.
    pub ephemeral_user: Option<String>,
    /// When the fake received it.
    pub at: Instant,
}

/// One `chat.update`.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The channel id.
    pub channel: String,
    /// The message `ts`.
    pub ts: String,
    /// The text sent.
    pub text: String,
    /// Its Block Kit blocks, if any.
    pub blocks: Option<Value>,
    /// When the fake received it.
    pub at: Instant,
}

/// One reaction change (`reactions.add` or `reactions.remove`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The channel id.
    pub channel: String,
    /// The `ts` of the message reacted to.
    pub timestamp: String,
    /// The emoji name.
    pub name: String,
    /// Added (`reactions.add`) or removed.
    pub added: bool,
}

/// One Socket Mode ACK.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The envelope it acknowledges.
    pub envelope_id: String,
    /// The connection (1-based, in accept order) it came on.
    pub connection: u64,
    /// When the fake received it.
    pub at: Instant,
}

/// One Web API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    /// The Web API method (`chat.postMessage`).
    pub method: String,
    /// The merged parameters (query, JSON or form body).
    pub params: Value,
    /// The HTTP status answered.
    pub status: u16,
    /// Slack's `error` when `ok` was false.
    pub error: Option<String>,
    /// When the fake received it.
    pub at: Instant,
}

/// One Socket Mode connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// 1-based, in accept order.
    pub id: u64,
    /// When the upgrade completed.
    pub opened_at: Instant,
    /// When it closed, if it did.
    pub closed_at: Option<Instant>,
}

/// How [`FakeSlack::post_raw`] signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Correctly, now.
    Valid,
    /// With another secret.
    Wrong,
    /// Correctly, ten minutes ago.
    Stale,
    /// Not at all (no signature headers).
    Missing,
}

#[derive(Debug, Clone)]
struct Envelope {
    id: String,
    kind: String,
    payload: Value,
    retry_attempt: u32,
}

struct Connection {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Sent `disconnect`: gets no new envelopes.
    draining: bool,
}

enum Outgoing {
    Text(String),
    Close,
}

#[derive(Default)]
struct State {
    tickets: HashSet<String>,
    connections: BTreeMap<u64, Connection>,
    log: Vec<ConnectionRecord>,
    pending: VecDeque<Envelope>,
    inflight: HashMap<String, (Envelope, u64)>,
    acks: Vec<Ack>,
    counter: u64,
    posted: Vec<Posted>,
    updates: Vec<Update>,
    reactions: Vec<Reaction>,
    statuses: Vec<Value>,
    calls: Vec<ApiCall>,
    rate_limits: u32,
    retry_after_s: u32,
    failing: HashMap<String, String>,
    users: HashMap<String, String>,
    /// Every message of the workspace (pushed by users and posted by the bot), for replies.
    messages: Vec<Value>,
    files: HashMap<String, (String, Vec<u8>)>,
}

struct Shared {
    bot_token: String,
    app_token: String,
    signing_secret: String,
    ws_origin: String,
    base_url: String,
    grace: Mutex<Duration>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running fake. Dropping it stops every task and closes every socket.
pub struct FakeSlack {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    client: reqwest::Client,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for connection in self.shared.state().connections.values() {
            let _ = connection.tx.send(Outgoing::Close);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FakeSlack {
    /// Starts on ephemeral loopback ports, accepting these credentials. Panics if it cannot bind.
    pub async fn start(bot_token: &str, app_token: &str, signing_secret: &str) -> FakeSlack {
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Slack binds a port");
        let ws = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Slack binds a port");
        let shared = Arc::new(Shared {
            bot_token: bot_token.into(),
            app_token: app_token.into(),
            signing_secret: signing_secret.into(),
            ws_origin: format!("ws://{}", ws.local_addr().expect("bound")),
            base_url: format!("http://{}", http.local_addr().expect("bound")),
            grace: Mutex::new(Duration::from_secs(2)),
            state: Mutex::new(State::default()),
        });
        shared
            .state()
            .users
            .insert(BOT_USER_ID.into(), BOT_NAME.into());
        let app = axum::Router::new()
            .fallback(web_api)
            .with_state(shared.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(http, app).await;
            }),
            tokio::spawn(accept_loop(ws, shared.clone())),
        ];
        FakeSlack {
            shared,
            tasks,
            client: reqwest::Client::new(),
        }
    }

    /// `http://127.0.0.1:<port>`: redirect `https://slack.com` and `https://files.slack.com` here.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// `ws://127.0.0.1:<port>`: redirect `wss://wss-primary.slack.com` here.
    pub fn ws_origin(&self) -> &str {
        &self.shared.ws_origin
    }

    /// How long a socket stays open after [`FakeSlack::disconnect`] (default 2 s).
    pub fn set_disconnect_grace(&self, grace: Duration) {
        *self.shared.grace.lock().unwrap_or_else(|p| p.into_inner()) = grace;
    }

    /// Makes `users.info` know `user` as `name`.
    pub fn add_user(&self, user: &str, name: &str) {
        self.shared.state().users.insert(user.into(), name.into());
    }

    /// Serves `bytes` as a file and answers its Slack file object (for a `file_share` event).
    pub fn add_file(&self, name: &str, mime: &str, bytes: &[u8]) -> Value {
        let mut state = self.shared.state();
        let id = format!("F{:08}", next(&mut state));
        let path = format!("/files-pri/{TEAM_ID}-{id}/{name}");
        state
            .files
            .insert(path.clone(), (mime.into(), bytes.to_vec()));
        let url = format!("https://files.slack.com{path}");
        json!({ "id": id, "name": name, "mimetype": mime, "size": bytes.len(),
                "url_private": url, "url_private_download": format!("{url}?download=1") })
    }

    /// A new, increasing message `ts`.
    pub fn next_ts(&self) -> String {
        next_ts(&mut self.shared.state())
    }

    /// A `message` event from `user` (not yet sent anywhere): `channel_type` is `im`, `mpim`,
    /// `group` or `channel`. It is recorded for `conversations.replies`.
    pub fn message_event(
        &self,
        channel: &str,
        channel_type: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> Value {
        let mut state = self.shared.state();
        let ts = next_ts(&mut state);
        let mut event = json!({
            "type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
            "event_ts": ts, "channel_type": channel_type, "team": TEAM_ID,
            "client_msg_id": format!("c0ffee00-0000-4000-8000-{:012}", next(&mut state)),
        });
        if let Some(thread) = thread_ts {
            event["thread_ts"] = json!(thread);
        }
        state.messages.push(event.clone());
        event
    }

    /// The `event_callback` body of `event`, as the Events API posts it.
    pub fn event_callback(&self, event: &Value) -> Value {
        let id = next(&mut self.shared.state());
        json!({
            "token": "deprecated-verification-token", "team_id": TEAM_ID, "api_app_id": APP_ID,
            "type": "event_callback", "event": event, "event_id": format!("Ev{id:010}"),
            "event_time": now_secs(), "event_context": format!("4-eyJ{id}"),
            "authorizations": [{ "enterprise_id": null, "team_id": TEAM_ID, "user_id": BOT_USER_ID,
                                 "is_bot": true, "is_enterprise_install": false }],
            "is_ext_shared_channel": false,
        })
    }

    /// Sends a message over Socket Mode (an `events_api` envelope); answers the message's `ts`.
    pub fn push_message(
        &self,
        channel: &str,
        channel_type: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> String {
        let event = self.message_event(channel, channel_type, user, text, thread_ts);
        self.push_event(&event);
        event["ts"].as_str().unwrap_or_default().to_string()
    }

    /// Sends an `app_mention` of the bot by `user` in a public channel over Socket Mode (the
    /// text starts with `<@bot>`); answers the message's `ts`.
    pub fn push_mention(
        &self,
        channel: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> String {
        let text = format!("<@{BOT_USER_ID}> {text}");
        let mut event = self.message_event(channel, "channel", user, &text, thread_ts);
        event["type"] = json!("app_mention");
        if let Some(fields) = event.as_object_mut() {
            fields.remove("channel_type");
        }
        self.push_event(&event);
        event["ts"].as_str().unwrap_or_default().to_string()
    }

    /// Sends any event inside an `event_callback` over Socket Mode; answers the envelope id.
    pub fn push_event(&self, event: &Value) -> String {
        let body = self.event_callback(event);
        self.push_envelope("events_api", body)
    }

    /// A button press by `user` on the bot's message `message_ts` over Socket Mode (an
    /// `interactive` envelope with `block_actions`); answers the envelope id.
    pub fn push_block_action(
        &self,
        channel: &str,
        user: &str,
        message_ts: &str,
        action_id: &str,
        value: &str,
    ) -> String {
        let n = next(&mut self.shared.state());
        let now = format!("{}.{n:06}", now_secs());
        let payload = json!({
            "type": "block_actions", "user": { "id": user, "username": user, "team_id": TEAM_ID },
            "api_app_id": APP_ID, "token": "deprecated", "trigger_id": format!("{n}.{n}.fake"),
            "team": { "id": TEAM_ID, "domain": "fake" },
            "container": { "type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": false },
            "channel": { "id": channel, "name": "fake" }, "message": { "ts": message_ts, "type": "message" },
            "response_url": format!("{}/actions/{n}", self.shared.base_url),
            "actions": [{ "action_id": action_id, "block_id": "b1", "type": "button", "value": value,
                          "text": { "type": "plain_text", "text": action_id }, "action_ts": now }],
        });
        self.push_envelope("interactive", payload)
    }

    /// A slash command (`/cmd text`) by `user` in `channel` over Socket Mode; answers the
    /// envelope id.
    pub fn push_slash_command(
        &self,
        channel: &str,
        user: &str,
        command: &str,
        text: &str,
    ) -> String {
        let payload = self.slash_command(channel, user, command, text);
        self.push_envelope("slash_commands", payload)
    }

    /// A slash command's fields (what HTTP posts as a form and Socket Mode as `payload`).
    pub fn slash_command(&self, channel: &str, user: &str, command: &str, text: &str) -> Value {
        let n = next(&mut self.shared.state());
        json!({
            "token": "deprecated", "team_id": TEAM_ID, "team_domain": "fake", "channel_id": channel,
            "channel_name": if channel.starts_with('D') { "directmessage" } else { "fake" },
            "user_id": user, "user_name": user, "command": command, "text": text, "api_app_id": APP_ID,
            "is_enterprise_install": "false", "response_url": format!("{}/commands/{n}", self.shared.base_url),
            "trigger_id": format!("{n}.{n}.cmd"),
        })
    }

    /// Queues an envelope of `kind` for Socket Mode; answers its id.
    pub fn push_envelope(&self, kind: &str, payload: Value) -> String {
        let mut state = self.shared.state();
        let id = format!("env-{:06}", next(&mut state));
        state.pending.push_back(Envelope {
            id: id.clone(),
            kind: kind.into(),
            payload,
            retry_attempt: 0,
        });
        flush(&mut state);
        id
    }

    /// Sends `disconnect` (`refresh_requested`) on every open socket and closes each after the
    /// grace period; the sockets get no new envelopes meanwhile.
    pub fn disconnect(&self) {
        self.disconnect_with("refresh_requested");
    }

    /// [`FakeSlack::disconnect`] with another reason (`link_disabled`, `warning`, …).
    pub fn disconnect_with(&self, reason: &str) {
        let grace = *self.shared.grace.lock().unwrap_or_else(|p| p.into_inner());
        let frame = json!({ "type": "disconnect", "reason": reason, "debug_info": { "host": "fake-applink" } });
        let mut state = self.shared.state();
        for connection in state.connections.values_mut().filter(|c| !c.draining) {
            connection.draining = true;
            let _ = connection.tx.send(Outgoing::Text(frame.to_string()));
            let tx = connection.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = tx.send(Outgoing::Close);
            });
        }
    }

    /// Closes every open socket at once (no `disconnect` first).
    pub fn close_connections(&self) {
        for connection in self.shared.state().connections.values() {
            let _ = connection.tx.send(Outgoing::Close);
        }
    }

    /// Signs `body` (JSON) and POSTs it to `url` as the Events API does; answers status and body.
    pub async fn post_event(&self, url: &str, body: &Value) -> (u16, String) {
        self.post_raw(
            url,
            "application/json",
            body.to_string().into_bytes(),
            Signature::Valid,
            None,
        )
        .await
    }

    /// POSTs `body` with `signature` and, when given, `X-Slack-Retry-Num` (reason `http_timeout`).
    pub async fn post_raw(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        signature: Signature,
        retry: Option<u32>,
    ) -> (u16, String) {
        let now = now_secs();
        let mut request = self.client.post(url).header("content-type", content_type);
        let (secret, ts) = match signature {
            Signature::Wrong => ("not-the-signing-secret".to_string(), now),
            Signature::Stale => (self.shared.signing_secret.clone(), now - 600),
            _ => (self.shared.signing_secret.clone(), now),
        };
        if signature != Signature::Missing {
            let ts = ts.to_string();
            let sig = sign(&secret, &ts, &body);
            request = request
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", sig);
        }
        if let Some(n) = retry {
            request = request
                .header("x-slack-retry-num", n.to_string())
                .header("x-slack-retry-reason", "http_timeout");
        }
        let response = request.body(body).send().await.expect("the host answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Makes the next `n` sends (`chat.postMessage`, `chat.postEphemeral`, `chat.update`) answer
    /// 429 `ratelimited` with `Retry-After: retry_after_s`.
    pub fn rate_limit_next(&self, n: u32, retry_after_s: u32) {
        let mut state = self.shared.state();
        state.rate_limits = n;
        state.retry_after_s = retry_after_s;
    }

    /// Makes every send to `channel` answer `{"ok": false, "error": code}` (`not_in_channel`,
    /// `channel_not_found`, …); an empty code clears it.
    pub fn fail_channel(&self, channel: &str, code: &str) {
        let mut state = self.shared.state();
        match code {
            "" => state.failing.remove(channel),
            _ => state.failing.insert(channel.into(), code.into()),
        };
    }

    /// Messages the bot posted, in order.
    pub fn posted(&self) -> Vec<Posted> {
        self.shared.state().posted.clone()
    }

    /// `chat.update`s accepted, in order.
    pub fn updates(&self) -> Vec<Update> {
        self.shared.state().updates.clone()
    }

    /// Reaction changes, in order.
    pub fn reactions(&self) -> Vec<Reaction> {
        self.shared.state().reactions.clone()
    }

    /// `assistant.threads.setStatus` parameters, in order.
    pub fn statuses(&self) -> Vec<Value> {
        self.shared.state().statuses.clone()
    }

    /// Every Web API request, in order.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.shared.state().calls.clone()
    }

    /// Web API requests of `method` so far.
    pub fn requests(&self, method: &str) -> usize {
        self.shared
            .state()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Socket Mode ACKs, in arrival order.
    pub fn acks(&self) -> Vec<Ack> {
        self.shared.state().acks.clone()
    }

    /// Envelopes pushed and not yet ACKed.
    pub fn unacked(&self) -> usize {
        let state = self.shared.state();
        state.pending.len() + state.inflight.len()
    }

    /// Socket Mode connections accepted so far, with when they opened and closed.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.shared.state().log.clone()
    }

    /// Socket Mode connections open now.
    pub fn live_connections(&self) -> usize {
        self.shared.state().connections.len()
    }
}

fn next(state: &mut State) -> u64 {
    state.counter += 1;
    state.counter
}

fn next_ts(state: &mut State) -> String {
    format!("{}.{:06}", now_secs(), next(state))
}

/// Sends queued envelopes on the oldest socket that is not draining.
fn flush(state: &mut State) {
    let Some((&id, connection)) = state.connections.iter().find(|(_, c)| !c.draining) else {
        return;
    };
    let tx = connection.tx.clone();
    while let Some(envelope) = state.pending.pop_front() {
        let frame = json!({
            "type": envelope.kind, "envelope_id": envelope.id, "payload": envelope.payload,
            "accepts_response_payload": envelope.kind == "slash_commands",
            "retry_attempt": envelope.retry_attempt,
            "retry_reason": if envelope.retry_attempt > 0 { "timeout" } else { "" },
        });
        if tx.send(Outgoing::Text(frame.to_string())).is_err() {
            state.pending.push_front(envelope);
            return;
        }
        state.inflight.insert(envelope.id.clone(), (envelope, id));
    }
}

// ---------------------------------------------------------------------------------------------
// Socket Mode.

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_socket(stream, shared.clone()));
        }
    }
}

async fn serve_socket(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    // A connection counts as opened when its TCP connection is accepted, before the handshake:
    // the client cannot have finished its handshake (and closed an older socket) before this.
    let accepted_at = Instant::now();
    // The handshake callback's error type is tungstenite's (a whole HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: WsResponse| {
        let query = request.uri().query().unwrap_or("").as_bytes().to_vec();
        let ticket = form_urlencoded::parse(&query)
            .find(|(k, _)| k == "ticket")
            .map(|(_, v)| v.into_owned());
        if ticket.is_some_and(|t| shared.state().tickets.remove(&t)) {
            return Ok(response);
        }
        let mut refusal = ErrorResponse::new(Some("ticket unknown or already used".into()));
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
        Err(refusal)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = shared.state();
        let id = state.log.len() as u64 + 1;
        state.log.push(ConnectionRecord {
            id,
            opened_at: accepted_at,
            closed_at: None,
        });
        let hello = json!({
            "type": "hello", "num_connections": state.connections.len() + 1,
            "debug_info": { "host": "fake-applink", "build_number": 1, "approximate_connection_time": 18060 },
            "connection_info": { "app_id": APP_ID },
        });
        let _ = tx.send(Outgoing::Text(hello.to_string()));
        state.connections.insert(
            id,
            Connection {
                tx,
                draining: false,
            },
        );
        flush(&mut state);
        id
    };
    loop {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Text(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) | None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    break;
                }
            },
            inbound = socket.next() => match inbound {
                Some(Ok(Message::Text(text))) => on_ack(&shared, id, text.as_bytes()),
                Some(Ok(Message::Binary(bytes))) => on_ack(&shared, id, &bytes),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut state = shared.state();
    state.connections.remove(&id);
    if let Some(record) = state.log.iter_mut().find(|r| r.id == id) {
        record.closed_at = Some(Instant::now());
    }
    // Envelopes not ACKed on this socket are delivered again on the next one.
    let orphans: Vec<String> = state
        .inflight
        .iter()
        .filter(|(_, (_, c))| *c == id)
        .map(|(k, _)| k.clone())
        .collect();
    for key in orphans {
        if let Some((mut envelope, _)) = state.inflight.remove(&key) {
            envelope.retry_attempt += 1;
            state.pending.push_back(envelope);
        }
    }
    flush(&mut state);
}

fn on_ack(shared: &Shared, connection: u64, bytes: &[u8]) {
    let Some(id) = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["envelope_id"].as_str().map(str::to_string))
    else {
        return;
    };
    let mut state = shared.state();
    state.inflight.remove(&id);
    state.acks.push(Ack {
        envelope_id: id,
        connection,
        at: Instant::now(),
    });
}

// ---------------------------------------------------------------------------------------------
// Web API.

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// The request's parameters: query, then a JSON or form body.
fn params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut params = Map::new();
    let query = uri.query().unwrap_or("").as_bytes();
    for (k, v) in form_urlencoded::parse(query) {
        params.insert(k.into_owned(), json!(v));
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json_body {
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
            params.extend(fields);
        }
    } else {
        for (k, v) in form_urlencoded::parse(body) {
            params.insert(k.into_owned(), json!(v));
        }
    }
    Value::Object(params)
}

async fn web_api(
    Extract(shared): Extract<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    if path.starts_with("/files-pri/") {
        let state = shared.state();
        return match state.files.get(&path) {
            _ if token != shared.bot_token => (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html>login</html>",
            )
                .into_response(),
            Some((mime, bytes)) => (
                StatusCode::OK,
                [("content-type", mime.clone())],
                bytes.clone(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let method = path.strip_prefix("/api/").unwrap_or(&path).to_string();
    let params = params(&uri, &headers, &body);
    let mut state = shared.state();
    let expected = if method == "apps.connections.open" {
        &shared.app_token
    } else {
        &shared.bot_token
    };
    let (status, reply) = if token.is_empty() {
        (
            StatusCode::OK,
            json!({ "ok": false, "error": "not_authed" }),
        )
    } else if token != *expected {
        (
            StatusCode::OK,
            json!({ "ok": false, "error": "invalid_auth" }),
        )
    } else {
        call(&shared, &mut state, &method, &params)
    };
    let error = reply
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string);
    state.calls.push(ApiCall {
        method,
        params,
        status: status.as_u16(),
        error,
        at: Instant::now(),
    });
    let retry_after = state.retry_after_s.to_string();
    drop(state);
    let mut response = answer(status, reply);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", retry_after.parse().expect("a number"));
    }
    response
}

fn text_of(params: &Value, key: &str) -> String {
    params
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn call(shared: &Shared, state: &mut State, method: &str, params: &Value) -> (StatusCode, Value) {
    let p = |key: &str| text_of(params, key);
    let ok = |body: Value| {
        let mut body = body;
        body["ok"] = json!(true);
        (StatusCode::OK, body)
    };
    let fail = |code: &str| (StatusCode::OK, json!({ "ok": false, "error": code }));
    let sending = matches!(
        method,
        "chat.postMessage" | "chat.postEphemeral" | "chat.update"
    );
    if sending && state.rate_limits > 0 {
        state.rate_limits -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "ok": false, "error": "ratelimited" }),
        );
    }
    if sending && let Some(code) = state.failing.get(&p("channel")) {
        return fail(&code.clone());
    }
    match method {
        "auth.test" => ok(json!({
            "url": "https://fake.slack.com/", "team": "Fake Team", "user": BOT_NAME, "team_id": TEAM_ID,
            "user_id": BOT_USER_ID, "bot_id": BOT_ID, "app_id": APP_ID, "is_enterprise_install": false,
        })),
        "users.info" => match state.users.get(&p("user")) {
            Some(name) => ok(
                json!({ "user": { "id": p("user"), "name": name, "real_name": name,
                "profile": { "display_name": name, "real_name": name } } }),
            ),
            None => fail("user_not_found"),
        },
        "conversations.replies" => {
            let (channel, ts) = (p("channel"), p("ts"));
            let mut thread: Vec<Value> = state
                .messages
                .iter()
                .filter(|m| {
                    m["channel"] == json!(channel)
                        && (m["ts"] == json!(ts) || m["thread_ts"] == json!(ts))
                })
                .cloned()
                .collect();
            if thread.is_empty() {
                return fail("thread_not_found");
            }
            thread.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
            let limit = p("limit").parse().unwrap_or(1000);
            thread.truncate(limit);
            ok(json!({ "messages": thread, "has_more": false }))
        }
        "chat.postMessage" | "chat.postEphemeral" => {
            let (channel, text) = (p("channel"), p("text"));
            if channel.is_empty() {
                return fail("channel_not_found");
            }
            if text.is_empty() && params.get("blocks").is_none() {
                return fail("no_text");
            }
            let ts = next_ts(state);
            let thread_ts = Some(p("thread_ts")).filter(|t| !t.is_empty());
            let ephemeral = method == "chat.postEphemeral";
            state.posted.push(Posted {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                text: text.clone(),
                blocks: params.get("blocks").cloned(),
                ephemeral_user: ephemeral.then(|| p("user")),
                at: Instant::now(),
            });
            if ephemeral {
                return ok(json!({ "message_ts": ts }));
            }
            let message = json!({ "type": "message", "channel": channel, "user": BOT_USER_ID, "bot_id": BOT_ID,
                                  "text": text, "ts": ts, "thread_ts": thread_ts });
            state.messages.push(message.clone());
            ok(json!({ "channel": channel, "ts": ts, "message": message }))
        }
        "chat.update" => {
            let (channel, ts, text) = (p("channel"), p("ts"), p("text"));
            let Some(posted) = state
                .posted
                .iter_mut()
                .find(|m| m.channel == channel && m.ts == ts)
            else {
                return fail("message_not_found");
            };
            posted.text = text.clone();
            posted.blocks = params.get("blocks").cloned();
            let blocks = posted.blocks.clone();
            state.updates.push(Update {
                channel: channel.clone(),
                ts: ts.clone(),
                text,
                blocks,
                at: Instant::now(),
            });
            ok(json!({ "channel": channel, "ts": ts }))
        }
        "reactions.add" | "reactions.remove" => {
            let added = method == "reactions.add";
            let reaction = Reaction {
                channel: p("channel"),
                timestamp: p("timestamp"),
                name: p("name"),
                added,
            };
            let shown = state
                .reactions
                .iter()
                .rev()
                .find(|r| {
                    r.channel == reaction.channel
                        && r.timestamp == reaction.timestamp
                        && r.name == reaction.name
                })
                .is_some_and(|r| r.added);
            if added && shown {
                return fail("already_reacted");
            }
            if !added && !shown {
                return fail("no_reaction");
            }
            state.reactions.push(reaction);
            ok(json!({}))
        }
        "assistant.threads.setStatus" => {
            state.statuses.push(params.clone());
            ok(json!({}))
        }
        "apps.connections.open" => {
            let ticket = format!("fake-ticket-{}", next(state));
            state.tickets.insert(ticket.clone());
            ok(
                json!({ "url": format!("{}/link/?ticket={ticket}&app_id={APP_ID}", shared.ws_origin) }),
            )
        }
        _ => fail("unknown_method"),
    }
}

/// Slack's request signature: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under the
/// signing secret.
fn sign(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(signing_secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}
