//! The session event stream (SPEC §5; reference `chat-runs.md` A.11):
//! `GET /api/sessions/{id}/events?after=<message id>` as Server-Sent Events, behind the admin
//! bearer token like the rest of `/api`.
//!
//! A subscriber first gets a snapshot, in this order: the run `status`; the buffered
//! `message_part`s of the run streaming right now; the `message`s with an id above `after`
//! (default: the `Last-Event-ID` header, else 0 = the whole history); a `queue_update` when the
//! queue is not empty. Then live events: `message`, `message_part`, `status`, `queue_update`,
//! `error`. Each SSE event is named after [`SessionEvent::name`]; its data is the event as
//! JSON (with an `"event"` tag); `message` events carry the message id as SSE `id`, so a
//! reconnecting client resumes with `Last-Event-ID`.
//!
//! [`Subscription`] is the transport-free core (the benchmark drives it directly). It
//! subscribes to the hub *before* reading the snapshot, so nothing published in between is
//! missed; a `message` that arrives live although the snapshot already had it (same id, same
//! content) is dropped, while an edit (same id, new content) goes through. A subscriber that
//! falls more than the hub's channel capacity behind (`broadcast` lag) is never waited for:
//! when it reads again it resynchronises from the database — the status, the messages after
//! the last one it was sent, the queue — and continues live; parts missed meanwhile are not
//! repeated (the stored reply supersedes them). Unknown session → 404 JSON error. At host
//! shutdown every stream gets an `error` event ("the host is shutting down; reconnect to
//! resume") and ends, so the graceful shutdown does not wait on open streams.
//!
//! Fan-out cost (1,000 subscribers on one session, issue 5): live events are the hub's
//! [`SharedEvent`]s, so each is JSON-encoded once for all subscribers
//! ([`SharedEvent::sse_frame`]); a subscriber takes everything already queued for it per
//! wake-up ([`Subscription::next_batch`]) and writes it as one body chunk ([`sse_chunk`]); and
//! while events come faster than [`COALESCE_WINDOW`] it lets them accumulate for the rest of
//! the window, so under load it is woken, and writes to its socket, about once per window
//! rather than once per event. An idle stream gets an SSE comment every 15 s (proxies drop
//! silent connections).
//!
//! Owns the snapshot order, de-duplication and resync; it must not hold SQL (reads go through
//! `RunStore`) or publish events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{ApiError, AppState};
use crate::runs::relay::message_fingerprint;
use crate::runs::{EventHub, EventReceiver, SessionEvent, SharedEvent};
use crate::store::{Message, RunStore, StoreError};

/// The most events [`Subscription::next_batch`] hands out at once (one SSE body chunk).
pub const MAX_BATCH_EVENTS: usize = 64;
/// [`Subscription::next_batch`]'s default coalescing window: a subscriber woken sooner than
/// this after its previous batch waits out the rest of the window and takes everything
/// that arrived meanwhile, so under sustained load each subscriber wakes (and writes) at most
/// about once per window instead of once per event. The first event after a quiet period
/// goes out at once. Short enough not to be seen by a person; see docs/benchmarks.md. (The
/// hub's channel holds 256 events: a window's worth up to 25,600 events a second; beyond, a
/// subscriber lags and resynchronises as any slow one does.)
pub const COALESCE_WINDOW: Duration = Duration::from_millis(10);
/// How long a stream may stay silent before it gets a keep-alive comment.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/sessions/{id}/events", get(session_events))
}

/// Query of `GET /api/sessions/{id}/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Send messages with a larger id in the snapshot.
    after: Option<i64>,
}

async fn session_events(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = match query.after {
        Some(after) => after,
        None => match headers.get("last-event-id") {
            None => 0,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "Last-Event-ID must be a message id (an integer)",
                    )
                })?,
        },
    };
    let subscription = Subscription::open(s.runs.hub(), s.runs.store(), &session_id, after)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("session {session_id} not found")))?
        .with_coalescing(s.event_coalescing);
    tracing::debug!(session = %session_id, after, "event stream opened");
    let chunks = futures_util::stream::unfold(
        (subscription, Vec::with_capacity(MAX_BATCH_EVENTS)),
        |(mut subscription, mut batch)| async move {
            if !subscription.next_batch(&mut batch).await {
                return None;
            }
            let chunk = sse_chunk(&batch);
            batch.clear();
            Some((Ok::<_, Infallible>(chunk), (subscription, batch)))
        },
    );
    let body = Body::from_stream(KeepAlive::new(chunks.boxed(), KEEP_ALIVE_INTERVAL));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// One response body chunk for `batch`: the events' SSE frames back to back (for a single
/// event, its shared frame itself, without a copy).
pub fn sse_chunk(batch: &[SharedEvent]) -> Bytes {
    if let [event] = batch {
        return event.sse_frame().clone();
    }
    let len = batch.iter().map(|event| event.sse_frame().len()).sum();
    let mut chunk = BytesMut::with_capacity(len);
    for event in batch {
        chunk.extend_from_slice(event.sse_frame());
    }
    chunk.freeze()
}

/// Adds an SSE comment (`:`) to a chunk stream whenever it has sent nothing for a whole
/// interval, as axum's `KeepAlive` does, but without re-arming a timer per chunk (that would
/// cost every subscriber a timer update per event). A chunk being produced when the interval
/// ends is not cancelled: the comment goes first and the chunk follows.
struct KeepAlive<S> {
    inner: S,
    ticks: tokio::time::Interval,
    /// A chunk went out since the last tick.
    active: bool,
}

impl<S> KeepAlive<S> {
    fn new(inner: S, interval: Duration) -> KeepAlive<S> {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        KeepAlive {
            inner,
            ticks,
            active: false,
        }
    }
}

impl<S> Stream for KeepAlive<S>
where
    S: Stream<Item = Result<Bytes, Infallible>> + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = this.inner.poll_next_unpin(cx) {
            this.active = true;
            return Poll::Ready(item);
        }
        loop {
            ready!(this.ticks.poll_tick(cx));
            if !std::mem::take(&mut this.active) {
                return Poll::Ready(Some(Ok(Bytes::from_static(b":\n\n"))));
            }
        }
    }
}

/// What a receive from the hub gave (blocking or not).
enum Received {
    Event(SharedEvent),
    Lagged(u64),
    Closed,
    /// Nothing queued (non-blocking receive only).
    Empty,
}

/// One subscriber of a session's events: the snapshot, then live events, de-duplicated and
/// resynchronised after lag (see the module doc).
#[derive(Debug)]
pub struct Subscription {
    session_id: String,
    store: RunStore,
    receiver: EventReceiver,
    /// Snapshot or resync events not yet handed out.
    pending: VecDeque<SharedEvent>,
    /// The largest message id handed out (or the `after` cursor).
    cursor: i64,
    /// Messages read from the database (snapshot, last resync) that may also arrive live:
    /// id → content fingerprint.
    read: HashMap<i64, u64>,
    resyncs: u64,
    /// Says when the host shuts down: the stream ends.
    hub: EventHub,
    /// See [`COALESCE_WINDOW`]; zero = hand out events as soon as they arrive.
    window: Duration,
    /// When the last batch went out (`next_batch`).
    last_batch: Option<tokio::time::Instant>,
    /// The last window ended with events waiting: events come faster than the window, so the
    /// next batch is collected for a whole window without waiting on the channel (the
    /// publisher then wakes nobody).
    busy: bool,
    /// The last batch stopped at [`MAX_BATCH_EVENTS`] with events left: the next one takes
    /// them at once (waiting for a window then would only fall further behind).
    truncated: bool,
}

impl Subscription {
    /// Subscribes to `session_id` on `hub`, then reads the snapshot from `store`. `None` if
    /// the session does not exist.
    pub async fn open(
        hub: &EventHub,
        store: &RunStore,
        session_id: &str,
        after: i64,
    ) -> Result<Option<Subscription>, StoreError> {
        let (parts, receiver) = hub.subscribe(session_id);
        let Some(status) = store.get_run_state(session_id).await? else {
            return Ok(None);
        };
        let messages = store.messages_after(session_id, after).await?;
        let queue = store.list_queue(session_id).await?;
        let mut subscription = Subscription {
            session_id: session_id.to_owned(),
            store: store.clone(),
            receiver,
            pending: VecDeque::with_capacity(parts.len() + messages.len() + 2),
            cursor: after,
            read: HashMap::new(),
            resyncs: 0,
            hub: hub.clone(),
            window: COALESCE_WINDOW,
            last_batch: None,
            busy: false,
            truncated: false,
        };
        subscription.pending.push_back(
            SessionEvent::Status {
                state: status.state,
                last_error: status.last_error,
            }
            .into(),
        );
        subscription.pending.extend(parts);
        subscription.push_messages(&messages);
        if !queue.is_empty() {
            subscription
                .pending
                .push_back(SessionEvent::QueueUpdate { queue }.into());
        }
        Ok(Some(subscription))
    }

    /// Sets the coalescing window of [`Subscription::next_batch`] ([`COALESCE_WINDOW`] by
    /// default; zero turns coalescing off).
    pub fn with_coalescing(mut self, window: Duration) -> Subscription {
        self.window = window;
        self
    }

    /// The next event, as soon as there is one (no coalescing); `None` when the stream ends
    /// (host shutdown: [`EventHub::close_streams`], whose `error` event is the last one
    /// handed out).
    pub async fn next(&mut self) -> Option<SharedEvent> {
        let mut one = Vec::with_capacity(1);
        self.fill(&mut one, 1, false).await;
        one.pop()
    }

    /// Appends to `batch` the next events, in order: whatever is ready right now (the rest of
    /// the snapshot or of a resync, then everything already queued live), at most
    /// [`MAX_BATCH_EVENTS`]. When nothing is, it waits for the next event, and if that comes
    /// within the coalescing window of the previous batch ([`COALESCE_WINDOW`]), for the end
    /// of the window too. Returns `false` (nothing appended) when the stream ends, as
    /// [`Subscription::next`] does. Not cancel-safe while it resynchronises: drive it to
    /// completion.
    pub async fn next_batch(&mut self, batch: &mut Vec<SharedEvent>) -> bool {
        let coalesce = !self.window.is_zero();
        let filled = self.fill(batch, MAX_BATCH_EVENTS, coalesce).await;
        if filled && coalesce {
            self.last_batch = Some(tokio::time::Instant::now());
        }
        filled
    }

    /// The end of the coalescing window opened by the last batch, if it is still open.
    fn window_end(&self) -> Option<tokio::time::Instant> {
        let end = self.last_batch? + self.window;
        (tokio::time::Instant::now() < end).then_some(end)
    }

    /// Adds up to `max` events (at least 1) to `batch`; with `coalesce`, waits for the end of
    /// an open coalescing window before taking live events it had to wait for.
    async fn fill(&mut self, batch: &mut Vec<SharedEvent>, max: usize, coalesce: bool) -> bool {
        let limit = batch.len() + max.max(1);
        let start = batch.len();
        let behind = std::mem::take(&mut self.truncated);
        loop {
            // Snapshot and resync events go before anything still in the channel.
            while batch.len() < limit
                && let Some(event) = self.pending.pop_front()
            {
                if let SessionEvent::Message { id, .. } = *event {
                    self.cursor = self.cursor.max(id);
                }
                batch.push(event);
            }
            if batch.len() >= limit {
                self.truncated = true;
                return true;
            }
            let waiting = batch.len() == start;
            if waiting && self.hub.streams_closed() {
                return false;
            }
            let received = if waiting && coalesce && self.busy && !behind {
                // Events came all through the last window: collect the next window's without
                // registering as a waiter (the publisher wakes nobody), then take them all.
                if let Some(end) = self.window_end() {
                    tokio::time::sleep_until(end).await;
                }
                let received = self.try_receive();
                self.busy = !matches!(received, Received::Empty);
                received
            } else {
                // Take what is already queued without waiting; wait only for the first event.
                match self.try_receive() {
                    Received::Empty if waiting => {
                        let received = match self.receiver.recv_shared().await {
                            Ok(event) => Received::Event(event),
                            Err(RecvError::Lagged(missed)) => Received::Lagged(missed),
                            Err(RecvError::Closed) => Received::Closed,
                        };
                        // Woken soon after the last batch: let the window fill first.
                        if coalesce
                            && matches!(received, Received::Event(_))
                            && let Some(end) = self.window_end()
                        {
                            self.busy = true;
                            tokio::time::sleep_until(end).await;
                        }
                        received
                    }
                    received => received,
                }
            };
            match received {
                Received::Event(event) => {
                    if self.admit(&event) {
                        batch.push(event);
                    }
                }
                Received::Lagged(missed) => {
                    tracing::info!(session = %self.session_id, missed, cursor = self.cursor, "slow event subscriber lagged; resynchronising from the database");
                    self.resync().await;
                }
                Received::Closed => return batch.len() > start,
                // Nothing more queued: hand out what there is, or (after a window that
                // stayed empty) wait on the channel.
                Received::Empty if batch.len() > start => return true,
                Received::Empty => {}
            }
        }
    }

    /// A receive that does not wait.
    fn try_receive(&mut self) -> Received {
        match self.receiver.try_recv_shared() {
            Ok(event) => Received::Event(event),
            Err(TryRecvError::Lagged(missed)) => Received::Lagged(missed),
            Err(TryRecvError::Closed) => Received::Closed,
            Err(TryRecvError::Empty) => Received::Empty,
        }
    }

    /// The largest message id handed out so far (the `after` cursor to resume from).
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// How many times this subscriber lagged and resynchronised.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    fn push_messages(&mut self, messages: &[Message]) {
        for message in messages {
            let event = SessionEvent::message(message);
            if let Some((id, fingerprint)) = message_fingerprint(&event) {
                self.read.insert(id, fingerprint);
            }
            self.pending.push_back(event.into());
        }
    }

    /// Whether a live event goes out: drops a `message` that was already read from the
    /// database with the same content.
    fn admit(&mut self, event: &SessionEvent) -> bool {
        if self.read.is_empty() {
            if let SessionEvent::Message { id, .. } = event {
                self.cursor = self.cursor.max(*id);
            }
            return true;
        }
        let Some((id, fingerprint)) = message_fingerprint(event) else {
            return true;
        };
        if self.read.get(&id) == Some(&fingerprint) {
            self.read.remove(&id);
            return false;
        }
        self.cursor = self.cursor.max(id);
        true
    }

    /// After lag: the status, the messages after the cursor and the queue, from the database.
    /// Events still in the channel that these reads already cover are dropped by `admit`.
    async fn resync(&mut self) {
        self.resyncs += 1;
        self.read.clear();
        match self.store.get_run_state(&self.session_id).await {
            Ok(Some(status)) => self.pending.push_back(
                SessionEvent::Status {
                    state: status.state,
                    last_error: status.last_error,
                }
                .into(),
            ),
            Ok(None) => {
                self.pending.push_back(
                    SessionEvent::Error {
                        message: "the session was deleted".into(),
                    }
                    .into(),
                );
                return;
            }
            Err(e) => tracing::warn!(session = %self.session_id, "resync: status not read: {e}"),
        }
        match self
            .store
            .messages_after(&self.session_id, self.cursor)
            .await
        {
            Ok(messages) => self.push_messages(&messages),
            Err(e) => tracing::warn!(session = %self.session_id, "resync: messages not read: {e}"),
        }
        match self.store.list_queue(&self.session_id).await {
            Ok(queue) => self
                .pending
                .push_back(SessionEvent::QueueUpdate { queue }.into()),
            Err(e) => tracing::warn!(session = %self.session_id, "resync: queue not read: {e}"),
        }
    }
}
