//! A local fake of the Lark Open Platform, for tests and `switchboard demo`.
//!
//! One [`FakeLark`] listens on two loopback ports:
//!
//! - **HTTP** ([`FakeLark::origin`]): endpoint discovery (`POST /callback/ws/endpoint`, answering
//!   a single-use `ws://` URL and a `ClientConfig`) and the REST calls the host makes — tenant
//!   token, bot info, send, reply, reactions, get message, list messages, batch users, message
//!   resources (files by key, [`FakeLark::add_resource`], or a Lark error per key), and the
//!   CardKit calls of streamed replies (create a card entity, put an element's content, change
//!   its settings: [`FakeLark::cards`] records every update in order with its sequence and
//!   arrival time, refuses a sequence that does not increase like the platform, and sends a card
//!   entity once) — with switchable failures ([`FakeLark::set_failure`]: rate limit, token
//!   expired, permission denied, 5xx, slow, or any code).
//! - **WebSocket**: the long connection speaking `pbbp2` frames (lark-protocol §1): answers every
//!   client ping with a pong carrying the `ClientConfig`, delivers events pushed with
//!   [`FakeLark::push_event`] as data frames (split into several fragments above
//!   [`FakeOptions::max_frame_payload`]), expects the ACK within [`FakeOptions::ack_timeout`] and
//!   redelivers the event when the ACK is missing or says 500, like the platform does.
//!
//! Frames are encoded and decoded with the Lark plugin's own codec (`switchboard_lark::frame`).
//!
//! Owns only its sockets and its in-memory record of what it saw; it knows nothing about the
//! host. Everything runs on the caller's tokio runtime; dropping the fake stops it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_lark::frame::{
    Frame, HEADER_MESSAGE_ID, HEADER_SEQ, HEADER_SUM, HEADER_TRACE_ID, HEADER_TYPE, Header,
    METHOD_CONTROL, METHOD_DATA,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The bot `GET /open-apis/bot/v3/info` answers unless [`FakeLark::set_bot`] chose another.
pub const DEFAULT_BOT_OPEN_ID: &str = "ou_fakelark0bot0000000000000000001";
/// The app name `GET /open-apis/bot/v3/info` answers by default.
pub const DEFAULT_BOT_NAME: &str = "Fake Lark bot";

/// Tunables of a [`FakeLark`].
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// How long the fake waits for an event's ACK before it redelivers it (the platform: 3 s).
    pub ack_timeout: Duration,
    /// Delay before an event whose ACK said 500 (or whose connection closed) is delivered again.
    pub redeliver_after: Duration,
    /// Largest payload of one data frame; bigger events are split into fragments.
    pub max_frame_payload: usize,
    /// `ClientConfig.PingInterval` in seconds, sent at discovery and in every pong.
    pub ping_interval_s: i64,
    /// `service_id` of the WebSocket URL.
    pub service_id: i32,
    /// Deliveries of one event before the fake gives up on it.
    pub max_deliveries: u32,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            ack_timeout: Duration::from_secs(3),
            redeliver_after: Duration::from_millis(50),
            max_frame_payload: 64 * 1024,
            ping_interval_s: 120,
            service_id: 4921,
            max_deliveries: 20,
        }
    }
}

/// One ACK frame the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Transport message id (the `message_id` header), as returned by [`FakeLark::push_event`].
    pub message_id: String,
    /// The `code` of the ACK payload (200 handled, 500 failed).
    pub code: i64,
    /// The connection (1-based, in accept order) it arrived on.
    pub connection: u64,
    /// The fragment index of the acknowledged frame (the completing fragment).
    pub seq: u32,
    /// The `biz_rt` header (processing time in ms) if present.
    pub biz_rt: Option<String>,
    /// The ACK payload's `data` as sent (base64 of a callback's answer, e.g. a card action's
    /// toast); `None` when `null` or absent.
    pub data: Option<String>,
    /// From queueing the delivery's frames to receiving this ACK (`None` for an ACK of an event
    /// no longer in flight).
    pub latency: Option<Duration>,
}

/// One REST request the fake received.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

/// Which REST calls a failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Every call below except [`Route::Endpoint`] and [`Route::TenantToken`].
    Api,
    /// `POST /callback/ws/endpoint`.
    Endpoint,
    /// `POST /open-apis/auth/v3/tenant_access_token/internal`.
    TenantToken,
    /// `GET /open-apis/bot/v3/info`.
    BotInfo,
    /// `GET /open-apis/im/v1/messages/{id}`.
    GetMessage,
    /// `GET /open-apis/im/v1/messages?container_id_type=…`.
    ListMessages,
    /// `GET /open-apis/contact/v3/users/batch`.
    BatchUsers,
    /// `POST /open-apis/im/v1/messages?receive_id_type=…`.
    Send,
    /// `POST /open-apis/im/v1/messages/{id}/reply`.
    Reply,
    /// `POST`/`DELETE …/reactions`.
    Reactions,
    /// `POST /open-apis/cardkit/v1/cards` (create a card entity).
    CardCreate,
    /// `PUT /open-apis/cardkit/v1/cards/{id}/elements/{element}/content`.
    CardContent,
    /// `PATCH /open-apis/cardkit/v1/cards/{id}/settings`.
    CardSettings,
    /// `POST /open-apis/interactive/v1/card/update` (a delayed update with a callback token).
    CardUpdate,
    /// `PATCH /open-apis/im/v1/messages/{id}` (a sent card replaced).
    PatchMessage,
    /// `GET /open-apis/im/v1/messages/{id}/resources/{key}?type=image|file` (a message's file;
    /// never one of a merged forward's sub-messages: Lark answers 234043).
    Resource,
}

/// What `GET …/resources/{key}` answers for a key ([`FakeLark::add_resource`],
/// [`FakeLark::add_resource_error`]).
#[derive(Debug, Clone)]
enum Resource {
    /// The file's bytes (served as `application/octet-stream`, like the platform for files).
    Bytes(Vec<u8>),
    /// A Lark error envelope with this HTTP status, code and message.
    Error { status: u16, code: i64, msg: String },
}

/// Which CardKit call changed a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardOp {
    /// An element's content was replaced.
    Content,
    /// The card's settings changed (streaming mode, summary).
    Settings,
}

/// One accepted CardKit update of a card.
#[derive(Debug, Clone)]
pub struct CardUpdate {
    /// What changed.
    pub op: CardOp,
    /// The request's `sequence`.
    pub sequence: i64,
    /// When it arrived, since the fake started.
    pub at: Duration,
    /// The new content (content updates).
    pub content: Option<String>,
}

/// A card entity created through CardKit, as the fake holds it.
#[derive(Debug, Clone)]
pub struct Card {
    /// Its id (`data.card_id` of the create call).
    pub card_id: String,
    /// The card JSON it was created with.
    pub created: Value,
    /// The text of its streaming element now (the first element with an `element_id`).
    pub content: String,
    /// That element's id.
    pub element_id: Option<String>,
    /// Whether streaming mode is on.
    pub streaming: bool,
    /// The summary its settings set last.
    pub summary: Option<String>,
    /// Accepted updates, in arrival order.
    pub updates: Vec<CardUpdate>,
    /// Updates refused for a sequence that did not increase.
    pub refused_sequences: u32,
    /// The message that shows it, once sent.
    pub message_id: Option<String>,
}

impl Card {
    /// The most updates that arrived within any one second.
    pub fn max_updates_per_second(&self) -> usize {
        let times: Vec<Duration> = self.updates.iter().map(|u| u.at).collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < times[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether the sequences of its updates strictly increase.
    pub fn sequences_increase(&self) -> bool {
        self.updates
            .windows(2)
            .all(|pair| pair[0].sequence < pair[1].sequence)
    }
}

/// How a REST call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429, code 99991400, `x-ogw-ratelimit-reset: 1`.
    RateLimit,
    /// HTTP 400, code 99991663 (tenant token invalid or expired).
    TokenExpired,
    /// HTTP 400, code 99991672 (scope not granted).
    PermissionDenied,
    /// HTTP 500 with a JSON error body.
    ServerError,
    /// Answers normally after this delay.
    Slow(Duration),
    /// Any HTTP status and Lark code.
    Code {
        /// HTTP status.
        status: u16,
        /// Lark `code`.
        code: i64,
        /// Lark `msg`.
        msg: String,
    },
}

struct FailureRule {
    route: Route,
    failure: Failure,
    /// Remaining uses; `None` = until cleared.
    remaining: Option<u32>,
}

/// An event being delivered.
#[derive(Debug, Clone)]
struct Delivery {
    transport_id: String,
    app_id: String,
    payload: Vec<u8>,
    deliveries: u32,
    /// Not before this instant (redelivery delay).
    not_before: Instant,
}

struct InFlight {
    delivery: Delivery,
    connection: u64,
    sent_at: Instant,
    deadline: Instant,
}

enum Outgoing {
    Frame(Vec<u8>),
    Close,
}

struct Connection {
    app_id: String,
    tx: mpsc::UnboundedSender<Outgoing>,
}

#[derive(Default)]
struct State {
    /// Unused discovery tickets → app id.
    tickets: HashMap<String, String>,
    connections: HashMap<u64, Connection>,
    accepted: u64,
    refused: u64,
    discoveries: u64,
    pings: u64,
    pending: VecDeque<Delivery>,
    inflight: HashMap<String, InFlight>,
    acks: Vec<Ack>,
    acks_to_lose: u32,
    lost_acks: u64,
    frames_sent: u64,
    deliveries: u64,
    next_seq_id: u64,
    next_id: u64,
    requests: Vec<RestRequest>,
    /// When each of `requests` arrived, since the fake started (pacing tests count per window).
    arrivals: Vec<Duration>,
    /// While set, pings get no pong (with no events pushed, a dead connection that TCP still
    /// holds open).
    silent: bool,
    failures: Vec<FailureRule>,
    messages: HashMap<String, Vec<Value>>,
    chat_messages: Vec<Value>,
    /// `uuid` of a send or reply → the message it posted (Lark posts once per uuid).
    uuids: HashMap<String, String>,
    /// Sends and replies that posted a message (a repeated `uuid` posts nothing).
    posted: Vec<RestRequest>,
    users: HashMap<String, String>,
    /// What `GET /open-apis/bot/v3/info` answers: (open_id, app_name); `None` = the defaults.
    bot: Option<(String, String)>,
    /// CardKit card entities, in creation order.
    cards: Vec<Card>,
    /// Message resources by key.
    resources: HashMap<String, Resource>,
    /// The message a resource belongs to, for keys added with
    /// [`FakeLark::add_message_resource`] (asked through another message: "File not in msg.").
    resource_owners: HashMap<String, String>,
    /// Accepted delayed card updates (callback token + card), in order.
    card_token_updates: Vec<Value>,
}

struct Shared {
    options: FakeOptions,
    started: Instant,
    state: Mutex<State>,
    wake: Notify,
    ws_origin: String,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running fake. Dropping it stops every task and closes every socket.
pub struct FakeLark {
    shared: Arc<Shared>,
    origin: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeLark {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for connection in self.shared.state().connections.values() {
            let _ = connection.tx.send(Outgoing::Close);
        }
    }
}

impl FakeLark {
    /// Starts with [`FakeOptions::default`] on ephemeral loopback ports. Panics if it cannot bind.
    pub async fn start() -> FakeLark {
        FakeLark::start_with(FakeOptions::default()).await
    }

    /// Starts with `options`. Panics if it cannot bind a loopback port.
    pub async fn start_with(options: FakeOptions) -> FakeLark {
        FakeLark::try_start(options)
            .await
            .unwrap_or_else(|e| panic!("fake Lark: binding a loopback port failed: {e}"))
    }

    /// Starts with `options`; fails only if a loopback port cannot be bound.
    pub async fn try_start(options: FakeOptions) -> std::io::Result<FakeLark> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", http.local_addr()?);
        let shared = Arc::new(Shared {
            options,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ws_origin: format!("ws://{}", ws.local_addr()?),
        });
        let app = axum::Router::new()
            .fallback(rest)
            .with_state(shared.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(http, app).await;
            }),
            tokio::spawn(accept_loop(ws, shared.clone())),
            tokio::spawn(delivery_loop(shared.clone())),
        ];
        Ok(FakeLark {
            shared,
            origin,
            tasks,
        })
    }

    /// The HTTP origin, `http://127.0.0.1:<port>`: point the host's `https://open.feishu.cn`
    /// (plugins.base_urls) or an installation's `base_url` at it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The WebSocket origin, `ws://127.0.0.1:<port>`, that discovery answers with: the host dials
    /// it only when an operator override targets it (e.g. `wss://msg-frontier.feishu.cn` → this).
    pub fn ws_origin(&self) -> &str {
        &self.shared.ws_origin
    }

    /// Queues `event` (an event envelope, e.g. `im.message.receive_v1`) for app `app_id`; it is
    /// delivered on a live connection of that app (now, or when one connects) until ACKed with
    /// 200. Returns the transport message id (the `message_id` header of its frames).
    pub fn push_event(&self, app_id: &str, event: &Value) -> String {
        self.push_payload(app_id, serde_json::to_vec(event).expect("JSON serializes"))
    }

    /// Like [`FakeLark::push_event`] with raw payload bytes (e.g. malformed JSON).
    pub fn push_payload(&self, app_id: &str, payload: Vec<u8>) -> String {
        let transport_id = {
            let mut state = self.shared.state();
            state.next_id += 1;
            let transport_id = format!("tm_{:08}", state.next_id);
            state.pending.push_back(Delivery {
                transport_id: transport_id.clone(),
                app_id: app_id.to_string(),
                payload,
                deliveries: 0,
                not_before: Instant::now(),
            });
            transport_id
        };
        self.shared.wake.notify_one();
        transport_id
    }

    /// Every ACK received so far, in arrival order (500s included; lost ones excluded).
    pub fn acks(&self) -> Vec<Ack> {
        self.shared.state().acks.clone()
    }

    /// Pretends the next `n` ACKs never arrived: the events are redelivered after the ACK timeout.
    pub fn lose_acks(&self, n: u32) {
        self.shared.state().acks_to_lose += n;
    }

    /// Events pushed but not yet ACKed with 200 (queued or in flight).
    pub fn unacked(&self) -> usize {
        let state = self.shared.state();
        state.pending.len() + state.inflight.len()
    }

    /// Messages the bot sent (send and reply calls), in order.
    pub fn sent_messages(&self) -> Vec<RestRequest> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == "POST"
                    && r.uri.starts_with("/open-apis/im/v1/messages")
                    && (r.uri.contains("receive_id_type=") || r.uri.ends_with("/reply"))
            })
            .collect()
    }

    /// The delayed card updates accepted (`POST /open-apis/interactive/v1/card/update` bodies:
    /// `{"token", "card"}`), in order.
    pub fn card_token_updates(&self) -> Vec<Value> {
        self.shared.state().card_token_updates.clone()
    }

    /// Messages that were posted, in order: [`FakeLark::sent_messages`] without the requests
    /// whose `uuid` had already posted one (Lark's idempotent send).
    pub fn posted_messages(&self) -> Vec<RestRequest> {
        self.shared.state().posted.clone()
    }

    /// Every REST request (discovery excluded), in order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.shared.state().requests.clone()
    }

    /// Makes every call of `route` fail with `failure` until [`FakeLark::clear_failures`].
    pub fn set_failure(&self, route: Route, failure: Failure) {
        self.shared.state().failures.push(FailureRule {
            route,
            failure,
            remaining: None,
        });
    }

    /// Makes the next `times` calls of `route` fail with `failure`.
    pub fn fail_next(&self, route: Route, failure: Failure, times: u32) {
        self.shared.state().failures.push(FailureRule {
            route,
            failure,
            remaining: Some(times),
        });
    }

    /// Removes every failure rule.
    pub fn clear_failures(&self) {
        self.shared.state().failures.clear();
    }

    /// Closes every open WebSocket (close code 1011); un-ACKed events are redelivered on the next
    /// connection.
    pub fn close_connections(&self) {
        for connection in self.shared.state().connections.values() {
            let _ = connection.tx.send(Outgoing::Close);
        }
    }

    /// Stops (`true`) or resumes answering pings with pongs: a silent connection stays open
    /// but carries nothing, as a dead peer behind a live TCP connection does.
    pub fn set_silent(&self, silent: bool) {
        self.shared.state().silent = silent;
    }

    /// Every REST request (discovery excluded) with its arrival time since the fake started,
    /// in order.
    pub fn request_arrivals(&self) -> Vec<(Duration, RestRequest)> {
        let state = self.shared.state();
        state
            .arrivals
            .iter()
            .copied()
            .zip(state.requests.iter().cloned())
            .collect()
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.state().accepted
    }

    /// WebSocket connections open now.
    pub fn live_connections(&self) -> usize {
        self.shared.state().connections.len()
    }

    /// WebSocket upgrades refused (unknown or reused ticket).
    pub fn refused_connections(&self) -> u64 {
        self.shared.state().refused
    }

    /// Endpoint discovery calls answered with a URL.
    pub fn discoveries(&self) -> u64 {
        self.shared.state().discoveries
    }

    /// Application pings received.
    pub fn pings(&self) -> u64 {
        self.shared.state().pings
    }

    /// Event deliveries made (a fragmented event counts once per delivery).
    pub fn deliveries(&self) -> u64 {
        self.shared.state().deliveries
    }

    /// Makes `GET /open-apis/bot/v3/info` answer this bot (by default [`DEFAULT_BOT_OPEN_ID`]
    /// named [`DEFAULT_BOT_NAME`]).
    pub fn set_bot(&self, open_id: &str, app_name: &str) {
        self.shared.state().bot = Some((open_id.to_string(), app_name.to_string()));
    }

    /// Makes `GET /open-apis/im/v1/messages/{id}` answer `items` (a merge_forward: the container
    /// first, then its descendants) and lists the first item in its chat for list calls.
    pub fn add_message(&self, id: &str, items: Vec<Value>) {
        let mut state = self.shared.state();
        if let Some(first) = items.first() {
            state.chat_messages.push(first.clone());
        }
        state.messages.insert(id.to_string(), items);
    }

    /// Makes `GET /open-apis/im/v1/messages/{any}/resources/{key}` answer `bytes`.
    pub fn add_resource(&self, key: &str, bytes: Vec<u8>) {
        self.shared
            .state()
            .resources
            .insert(key.to_string(), Resource::Bytes(bytes));
    }

    /// Makes `GET /open-apis/im/v1/messages/{message_id}/resources/{key}` answer `bytes`, and
    /// the same key asked through any other message answer Lark's "File not in msg." (the
    /// platform serves a resource only through the message that carries it: a quoted parent's
    /// image through the parent, a forwarded child's through the child).
    pub fn add_message_resource(&self, message_id: &str, key: &str, bytes: Vec<u8>) {
        let mut state = self.shared.state();
        state
            .resources
            .insert(key.to_string(), Resource::Bytes(bytes));
        state
            .resource_owners
            .insert(key.to_string(), message_id.to_string());
    }

    /// The message ids resource `key` was asked through, in arrival order.
    pub fn resource_download_messages(&self, key: &str) -> Vec<String> {
        let needle = format!("/resources/{key}?");
        self.requests()
            .iter()
            .filter(|r| r.uri.contains(&needle))
            .filter_map(|r| {
                let path = r.uri.split('?').next()?;
                let rest = path.strip_prefix("/open-apis/im/v1/messages/")?;
                Some(rest.split('/').next()?.to_string())
            })
            .collect()
    }

    /// Makes `GET …/resources/{key}` answer a Lark error (HTTP `status`, `code`, `msg`).
    pub fn add_resource_error(&self, key: &str, status: u16, code: i64, msg: &str) {
        self.shared.state().resources.insert(
            key.to_string(),
            Resource::Error {
                status,
                code,
                msg: msg.to_string(),
            },
        );
    }

    /// How many resource downloads arrived for `key` (answered or not).
    pub fn resource_downloads(&self, key: &str) -> usize {
        let needle = format!("/resources/{key}?");
        self.requests()
            .iter()
            .filter(|r| r.uri.contains(&needle))
            .count()
    }

    /// Every CardKit card entity created so far, in creation order.
    pub fn cards(&self) -> Vec<Card> {
        self.shared.state().cards.clone()
    }

    /// Makes batch user lookups know `open_id` as `name`.
    pub fn add_user(&self, open_id: &str, name: &str) {
        self.shared
            .state()
            .users
            .insert(open_id.to_string(), name.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket side.

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_socket(stream, shared.clone()));
    }
}

fn refusal(status: u16, code: &str, msg: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(msg.to_string()));
    *response.status_mut() =
        tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).expect("valid status");
    let headers = response.headers_mut();
    headers.insert("Handshake-Status", code.parse().expect("header value"));
    headers.insert("Handshake-Msg", msg.parse().expect("header value"));
    response
}

async fn serve_socket(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut app_id = None;
    // The handshake callback's error type is tungstenite's (a whole HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: WsResponse| {
        let ticket = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == "ticket")
            .map(|(_, value)| value.to_string())
            .unwrap_or_default();
        let mut state = shared.state();
        match state.tickets.remove(&ticket) {
            Some(app) => {
                app_id = Some(app);
                Ok(response)
            }
            None => {
                state.refused += 1;
                Err(refusal(514, "514", "ticket unknown or already used"))
            }
        }
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some(app_id) = app_id else { return };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = shared.state();
        state.accepted += 1;
        let id = state.accepted;
        state.connections.insert(id, Connection { app_id, tx });
        id
    };
    shared.wake.notify_one();
    loop {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Frame(bytes)) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) | None => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Error,
                            reason: "fake Lark closes the connection".into(),
                        })))
                        .await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    break;
                }
            },
            inbound = socket.next() => match inbound {
                Some(Ok(Message::Binary(bytes))) => on_frame(&shared, id, &bytes),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut state = shared.state();
    state.connections.remove(&id);
    // Un-ACKed events of a dead connection are delivered again elsewhere.
    let orphans: Vec<String> = state
        .inflight
        .iter()
        .filter(|(_, f)| f.connection == id)
        .map(|(k, _)| k.clone())
        .collect();
    for key in orphans {
        if let Some(flight) = state.inflight.remove(&key) {
            let mut delivery = flight.delivery;
            delivery.not_before = Instant::now() + shared.options.redeliver_after;
            state.pending.push_back(delivery);
        }
    }
    drop(state);
    shared.wake.notify_one();
}

fn client_config(options: &FakeOptions) -> Value {
    json!({
        "ReconnectCount": -1,
        "ReconnectInterval": 120,
        "ReconnectNonce": 30,
        "PingInterval": options.ping_interval_s,
    })
}

fn on_frame(shared: &Shared, connection: u64, bytes: &[u8]) {
    let Ok(frame) = Frame::decode_bytes(bytes) else {
        return;
    };
    let mut state = shared.state();
    if frame.method == METHOD_CONTROL {
        if frame.kind() == "ping" {
            state.pings += 1;
            let pong = Frame {
                service: frame.service,
                method: METHOD_CONTROL,
                headers: vec![Header::new(HEADER_TYPE, "pong")],
                payload: Some(client_config(&shared.options).to_string().into_bytes()),
                ..Frame::default()
            };
            if let Some(c) = state.connections.get(&connection).filter(|_| !state.silent) {
                let _ = c.tx.send(Outgoing::Frame(pong.encode_bytes()));
            }
        }
        return;
    }
    if frame.method != METHOD_DATA {
        return;
    }
    let message_id = frame.header(HEADER_MESSAGE_ID).unwrap_or("").to_string();
    let ack_payload = frame
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_slice::<Value>(p).ok());
    let code = ack_payload
        .as_ref()
        .and_then(|v| v["code"].as_i64())
        .unwrap_or(0);
    let data = ack_payload
        .as_ref()
        .and_then(|v| v["data"].as_str())
        .map(str::to_string);
    if state.acks_to_lose > 0 {
        state.acks_to_lose -= 1;
        state.lost_acks += 1;
        return;
    }
    let latency = state
        .inflight
        .get(&message_id)
        .map(|flight| flight.sent_at.elapsed());
    state.acks.push(Ack {
        message_id: message_id.clone(),
        code,
        connection,
        seq: frame
            .header(HEADER_SEQ)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        biz_rt: frame.header("biz_rt").map(str::to_string),
        data,
        latency,
    });
    if let Some(flight) = state.inflight.remove(&message_id)
        && code != 200
    {
        let mut delivery = flight.delivery;
        delivery.not_before = Instant::now() + shared.options.redeliver_after;
        state.pending.push_back(delivery);
        drop(state);
        shared.wake.notify_one();
    }
}

/// Sends pending events on live connections and takes back the ones whose ACK timed out.
async fn delivery_loop(shared: Arc<Shared>) {
    loop {
        let next_wake = {
            let mut state = shared.state();
            let now = Instant::now();
            // Timed-out ACKs: redeliver.
            let expired: Vec<String> = state
                .inflight
                .iter()
                .filter(|(_, f)| f.deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                if let Some(flight) = state.inflight.remove(&key) {
                    state.pending.push_back(flight.delivery);
                }
            }
            let mut waiting = VecDeque::new();
            while let Some(mut delivery) = state.pending.pop_front() {
                if delivery.deliveries >= shared.options.max_deliveries {
                    continue; // given up, like the platform after its retries
                }
                let target = (delivery.not_before <= now)
                    .then(|| {
                        state
                            .connections
                            .iter()
                            .filter(|(_, c)| c.app_id == delivery.app_id)
                            .map(|(id, _)| *id)
                            .min()
                    })
                    .flatten();
                let Some(connection) = target else {
                    waiting.push_back(delivery);
                    continue;
                };
                let frames = data_frames(&mut state, &shared.options, &delivery);
                let tx = state.connections[&connection].tx.clone();
                let sent = frames
                    .into_iter()
                    .all(|frame| tx.send(Outgoing::Frame(frame)).is_ok());
                if !sent {
                    waiting.push_back(delivery);
                    continue;
                }
                delivery.deliveries += 1;
                state.deliveries += 1;
                state.inflight.insert(
                    delivery.transport_id.clone(),
                    InFlight {
                        delivery,
                        connection,
                        sent_at: now,
                        deadline: now + shared.options.ack_timeout,
                    },
                );
            }
            state.pending = waiting;
            state
                .inflight
                .values()
                .map(|f| f.deadline)
                .chain(state.pending.iter().map(|d| d.not_before))
                .filter(|at| *at > now)
                .min()
        };
        let sleep = next_wake
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// The data frames of one delivery (fragments above `max_frame_payload`).
fn data_frames(state: &mut State, options: &FakeOptions, delivery: &Delivery) -> Vec<Vec<u8>> {
    let chunk = options.max_frame_payload.max(1);
    let pieces: Vec<&[u8]> = if delivery.payload.is_empty() {
        vec![&[][..]]
    } else {
        delivery.payload.chunks(chunk).collect()
    };
    let sum = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(seq, piece)| {
            state.next_seq_id += 1;
            state.frames_sent += 1;
            Frame {
                seq_id: state.next_seq_id,
                log_id: 7_000_000 + state.next_seq_id,
                service: options.service_id,
                method: METHOD_DATA,
                headers: vec![
                    Header::new(HEADER_TYPE, "event"),
                    Header::new(HEADER_MESSAGE_ID, delivery.transport_id.clone()),
                    Header::new(HEADER_SUM, sum.to_string()),
                    Header::new(HEADER_SEQ, seq.to_string()),
                    Header::new(
                        HEADER_TRACE_ID,
                        format!("trace-{}-{}", delivery.transport_id, delivery.deliveries),
                    ),
                    Header::new("instance_id", "fake-instance"),
                ],
                payload: Some(piece.to_vec()),
                ..Frame::default()
            }
            .encode_bytes()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP side.

fn route_of(method: &Method, path: &str, query: &str) -> Option<Route> {
    const MESSAGES: &str = "/open-apis/im/v1/messages";
    const CARDS: &str = "/open-apis/cardkit/v1/cards";
    Some(match (method.as_str(), path) {
        ("POST", "/callback/ws/endpoint") => Route::Endpoint,
        ("POST", "/open-apis/auth/v3/tenant_access_token/internal") => Route::TenantToken,
        ("GET", "/open-apis/contact/v3/users/batch") => Route::BatchUsers,
        ("GET", "/open-apis/bot/v3/info") => Route::BotInfo,
        ("POST", MESSAGES) if query.contains("receive_id_type=") => Route::Send,
        ("GET", MESSAGES) => Route::ListMessages,
        (_, p) if p.starts_with(MESSAGES) && p.contains("/reactions") => Route::Reactions,
        ("POST", CARDS) => Route::CardCreate,
        ("PUT", p) if p.starts_with(CARDS) && p.ends_with("/content") => Route::CardContent,
        ("PATCH", p) if p.starts_with(CARDS) && p.ends_with("/settings") => Route::CardSettings,
        ("POST", p) if p.starts_with(MESSAGES) && p.ends_with("/reply") => Route::Reply,
        ("GET", p) if p.starts_with(MESSAGES) && p.contains("/resources/") => Route::Resource,
        ("POST", "/open-apis/interactive/v1/card/update") => Route::CardUpdate,
        ("PATCH", p) if p.starts_with(MESSAGES) => Route::PatchMessage,
        ("GET", p) if p.starts_with(MESSAGES) => Route::GetMessage,
        _ => return None,
    })
}

/// The failure that applies to `route` now, if any (uses up one counted use).
fn take_failure(state: &mut State, route: Route) -> Option<Failure> {
    let applies = |rule: &FailureRule| {
        rule.route == route
            || (rule.route == Route::Api && !matches!(route, Route::Endpoint | Route::TenantToken))
    };
    let at = state
        .failures
        .iter()
        .position(|rule| applies(rule) && rule.remaining != Some(0))?;
    let rule = &mut state.failures[at];
    if let Some(left) = &mut rule.remaining {
        *left -= 1;
    }
    Some(rule.failure.clone())
}

fn lark_error(status: u16, code: i64, msg: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({"code": code, "msg": msg})),
    )
        .into_response()
}

fn ok(data: Value) -> Response {
    axum::Json(json!({"code": 0, "msg": "success", "data": data})).into_response()
}

fn query_values<'a>(query: &'a str, name: &str) -> Vec<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .collect()
}

async fn rest(
    Extract(shared): Extract<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let Some(route) = route_of(&method, &path, &query) else {
        return lark_error(404, 404, &format!("fake Lark has no {method} {path}"));
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = RestRequest {
        method: method.to_string(),
        uri: uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_default(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
    };
    let failure = {
        let mut state = shared.state();
        if route != Route::Endpoint {
            state.requests.push(request.clone());
            let arrived = shared.started.elapsed();
            state.arrivals.push(arrived);
        }
        take_failure(&mut state, route)
    };
    match failure {
        None => {}
        Some(Failure::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Failure::RateLimit) => {
            let mut response = lark_error(429, 99_991_400, "request trigger frequency limit");
            response
                .headers_mut()
                .insert("x-ogw-ratelimit-reset", "1".parse().expect("header"));
            return response;
        }
        Some(Failure::TokenExpired) => {
            return lark_error(
                400,
                99_991_663,
                "Invalid access token for authorization. Please make a request with token attached.",
            );
        }
        Some(Failure::PermissionDenied) => {
            return lark_error(
                400,
                99_991_672,
                "Access denied. One of the following scopes is required: [im:message]",
            );
        }
        Some(Failure::ServerError) => return lark_error(500, 1, "internal server error"),
        Some(Failure::Code { status, code, msg }) => return lark_error(status, code, &msg),
    }
    let mut state = shared.state();
    state.next_id += 1;
    let n = state.next_id;
    match route {
        Route::Endpoint => {
            let app_id = body["AppID"].as_str().unwrap_or("").to_string();
            if app_id.is_empty() || body["AppSecret"].as_str().unwrap_or("").is_empty() {
                return axum::Json(
                    json!({"code": 1_000_040_344, "msg": "AppID or AppSecret is empty"}),
                )
                .into_response();
            }
            let ticket = format!("tk{n:08}");
            state.tickets.insert(ticket.clone(), app_id.clone());
            state.discoveries += 1;
            let url = format!(
                "{}/ws/v2?fpid=493&aid={app_id}&device_id={n}&access_key=ak{n}&service_id={}&ticket={ticket}",
                shared.ws_origin, shared.options.service_id
            );
            axum::Json(json!({
                "code": 0, "msg": "ok",
                "data": {"URL": url, "ClientConfig": client_config(&shared.options)},
            }))
            .into_response()
        }
        Route::TenantToken => axum::Json(json!({
            "code": 0, "msg": "ok", "tenant_access_token": format!("t-fake{n}"), "expire": 7200,
        }))
        .into_response(),
        Route::Send | Route::Reply => {
            let uuid = body["uuid"].as_str().filter(|u| !u.is_empty());
            if let Some(known) = uuid.and_then(|u| state.uuids.get(u)) {
                return ok(json!({"message_id": known}));
            }
            let id = format!("om_sent_{n}");
            // A card entity sent by id: it must exist, and is sent once.
            let card_id = (body["msg_type"] == "interactive")
                .then(|| body["content"].as_str())
                .flatten()
                .and_then(|content| serde_json::from_str::<Value>(content).ok())
                .filter(|content| content["type"] == "card")
                .map(|content| {
                    content["data"]["card_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                });
            if let Some(card_id) = card_id {
                let Some(card) = state.cards.iter_mut().find(|c| c.card_id == card_id) else {
                    return lark_error(
                        400,
                        230_099,
                        "Failed to create card content: card not found",
                    );
                };
                if card.message_id.is_some() {
                    return lark_error(
                        400,
                        230_099,
                        "Failed to create card content: the card entity was sent already",
                    );
                }
                card.message_id = Some(id.clone());
            }
            if let Some(uuid) = uuid {
                state.uuids.insert(uuid.to_string(), id.clone());
            }
            // This request, not the last one recorded: others may have arrived meanwhile (a
            // slow answer, concurrent calls).
            state.posted.push(request);
            ok(json!({"message_id": id}))
        }
        Route::BotInfo => {
            let (open_id, app_name) = state.bot.clone().unwrap_or_else(|| {
                (
                    DEFAULT_BOT_OPEN_ID.to_string(),
                    DEFAULT_BOT_NAME.to_string(),
                )
            });
            // The bot object is top-level, not under `data`.
            axum::Json(json!({
                "code": 0, "msg": "ok",
                "bot": {"open_id": open_id, "app_name": app_name, "activate_status": 2},
            }))
            .into_response()
        }
        Route::CardCreate => {
            let card = body["data"]
                .as_str()
                .and_then(|data| serde_json::from_str::<Value>(data).ok());
            let Some(card) = card.filter(|c| body["type"] == "card_json" && c["schema"] == "2.0")
            else {
                return lark_error(400, 300_301, "card_json data must be a schema 2.0 card");
            };
            let element = card["body"]["elements"]
                .as_array()
                .and_then(|elements| elements.iter().find(|e| e["element_id"].is_string()));
            let card_id = format!("ck_{n:06}");
            state.cards.push(Card {
                card_id: card_id.clone(),
                content: element
                    .and_then(|e| e["content"].as_str())
                    .unwrap_or("")
                    .to_string(),
                element_id: element
                    .and_then(|e| e["element_id"].as_str())
                    .map(str::to_string),
                streaming: card["config"]["streaming_mode"] == true,
                summary: None,
                created: card,
                updates: Vec::new(),
                refused_sequences: 0,
                message_id: None,
            });
            ok(json!({"card_id": card_id}))
        }
        Route::CardContent | Route::CardSettings => {
            let at = shared.started.elapsed();
            let mut segments = path
                .trim_start_matches("/open-apis/cardkit/v1/cards/")
                .split('/');
            let card_id = segments.next().unwrap_or("").to_string();
            let element_id =
                (route == Route::CardContent).then(|| segments.nth(1).unwrap_or("").to_string());
            let Some(card) = state.cards.iter_mut().find(|c| c.card_id == card_id) else {
                return lark_error(400, 300_302, "card not found");
            };
            let Some(sequence) = body["sequence"].as_i64().filter(|s| *s > 0) else {
                return lark_error(400, 300_303, "sequence must be a positive integer");
            };
            if card
                .updates
                .last()
                .is_some_and(|last| sequence <= last.sequence)
            {
                card.refused_sequences += 1;
                return lark_error(400, 300_317, "sequence number compare failed");
            }
            let update = if let Some(element_id) = element_id {
                if card.element_id.as_deref() != Some(element_id.as_str()) {
                    return lark_error(400, 300_304, "element not found");
                }
                let Some(content) = body["content"].as_str() else {
                    return lark_error(400, 300_305, "content is required");
                };
                card.content = content.to_string();
                CardUpdate {
                    op: CardOp::Content,
                    sequence,
                    at,
                    content: Some(content.to_string()),
                }
            } else {
                let Some(settings) = body["settings"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                else {
                    return lark_error(400, 300_305, "settings must be a JSON string");
                };
                if let Some(streaming) = settings["config"]["streaming_mode"].as_bool() {
                    card.streaming = streaming;
                }
                if let Some(summary) = settings["config"]["summary"]["content"].as_str() {
                    card.summary = Some(summary.to_string());
                }
                CardUpdate {
                    op: CardOp::Settings,
                    sequence,
                    at,
                    content: None,
                }
            };
            card.updates.push(update);
            ok(json!({}))
        }
        Route::CardUpdate => {
            // Lark wants a callback token (`c-…`) and the whole card.
            let token_ok = body["token"].as_str().is_some_and(|t| t.starts_with("c-"));
            if !token_ok || !body["card"].is_object() {
                return lark_error(400, 200_300, "invalid token or card");
            }
            state.card_token_updates.push(body.clone());
            ok(json!({}))
        }
        Route::PatchMessage => {
            let content = body["content"]
                .as_str()
                .and_then(|c| serde_json::from_str::<Value>(c).ok());
            if content.is_none() {
                return lark_error(400, 230_001, "content is not a card");
            }
            ok(json!({}))
        }
        Route::Reactions if method == Method::DELETE => {
            axum::Json(json!({"code": 0, "msg": "success"})).into_response()
        }
        Route::Reactions => ok(json!({"reaction_id": format!("r_{n}")})),
        Route::GetMessage => {
            let id = path.trim_start_matches("/open-apis/im/v1/messages/");
            match state.messages.get(id) {
                Some(items) => ok(json!({"items": items})),
                None => lark_error(400, 230_011, "The message was withdrawn or does not exist."),
            }
        }
        Route::ListMessages => {
            let kind = query_values(&query, "container_id_type").first().copied();
            let container = query_values(&query, "container_id")
                .first()
                .copied()
                .unwrap_or("");
            let field = if kind == Some("thread") {
                "thread_id"
            } else {
                "chat_id"
            };
            let end_ms = query_values(&query, "end_time")
                .first()
                .and_then(|s| s.parse::<i64>().ok())
                .map(|s| s * 1000);
            let page = query_values(&query, "page_size")
                .first()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(20);
            let create_time = |v: &Value| {
                v["create_time"]
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            let mut items: Vec<Value> = state
                .chat_messages
                .iter()
                .filter(|m| m[field].as_str() == Some(container))
                .filter(|m| end_ms.is_none_or(|end| create_time(m) <= end))
                .cloned()
                .collect();
            items.sort_by_key(|m| std::cmp::Reverse(create_time(m)));
            items.truncate(page);
            ok(json!({"items": items, "has_more": false}))
        }
        Route::BatchUsers => {
            let items: Vec<Value> = query_values(&query, "user_ids")
                .into_iter()
                .filter_map(|id| {
                    state
                        .users
                        .get(id)
                        .map(|name| json!({"open_id": id, "name": name}))
                })
                .collect();
            ok(json!({"items": items}))
        }
        Route::Resource => {
            // Like every other API call, a download needs a tenant token the fake issued.
            let token_ok = request
                .authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer t-fake"));
            if !token_ok {
                return lark_error(
                    400,
                    99_991_663,
                    "Invalid access token for authorization. Please make a request with token attached.",
                );
            }
            let key = path.rsplit('/').next().unwrap_or("");
            let kind = query_values(&query, "type").first().copied().unwrap_or("");
            if !matches!(kind, "image" | "file") || (key.starts_with("img_") != (kind == "image")) {
                return lark_error(400, 234_001, "Invalid request param: type");
            }
            let message_id = path
                .trim_start_matches("/open-apis/im/v1/messages/")
                .split('/')
                .next()
                .unwrap_or("");
            // Lark serves no resource of a merged forward's sub-messages (error 234043),
            // whichever key is asked for.
            let forwarded_child = state.messages.values().flatten().any(|item| {
                item["message_id"] == message_id
                    && item["upper_message_id"]
                        .as_str()
                        .is_some_and(|up| !up.is_empty())
            });
            if forwarded_child {
                return lark_error(
                    400,
                    234_043,
                    "Unsupported message type: resources of a merged forward's sub-messages",
                );
            }
            if state
                .resource_owners
                .get(key)
                .is_some_and(|owner| owner != message_id)
            {
                return lark_error(400, 234_003, "File not in msg.");
            }
            match state.resources.get(key) {
                Some(Resource::Bytes(bytes)) => (
                    [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
                    bytes.clone(),
                )
                    .into_response(),
                Some(Resource::Error { status, code, msg }) => lark_error(*status, *code, msg),
                None => lark_error(400, 234_003, "File not in msg."),
            }
        }
        Route::Api => lark_error(404, 404, "unreachable route"),
    }
}
