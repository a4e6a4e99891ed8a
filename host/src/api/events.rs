//! The session event stream (SPEC §5; reference `chat-runs.md` A.11):
//! `GET /api/sessions/{id}/events?after=<message id>` as Server-Sent Events, behind the admin
//! bearer token like the rest of `/api`, or the operator console's session cookie when no
//! `Authorization` header is sent (a browser's `EventSource` cannot send one).
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
//! falls more than the hub's capacity behind (lag) is never waited for: when it reads again it
//! resynchronises from the database — the status, the messages after the last one it was
//! sent, the queue — and continues live; parts missed meanwhile are not repeated (the stored
//! reply supersedes them). Unknown session → 404 JSON error. At host shutdown every stream gets
//! an `error` event ("the host is shutting down; reconnect to resume") and ends, so the
//! graceful shutdown does not wait on open streams.
//!
//! Fan-out cost (1,000 subscribers on one session, issue 5): with a coalescing window (the
//! default, [`COALESCE_WINDOW`], `[server] event_coalesce_ms`), a subscription follows the
//! session's batches ([`EventHub::subscribe_batches`]): everything published within one
//! window, with its SSE frames already laid out back to back in one buffer by the hub. A
//! subscriber that is in sync — nothing left of its snapshot to de-duplicate against the
//! batch — writes that shared buffer as its body chunk as is ([`Delivery::is_shared`]): one
//! reference-count bump per window, whatever the number of events. Only a subscriber still
//! catching up (its first batch after subscribing or after a resync, when the batch may hold
//! messages its snapshot had) looks at events one by one and builds a chunk of its own. With
//! the window off (0), each event is handed out as it arrives (per-event receiver; a delivery
//! holds whatever was queued). An idle stream gets an SSE comment every 15 s (proxies drop
//! silent connections).
//!
//! Owns the snapshot order, de-duplication and resync; it must not hold SQL (reads go through
//! `RunStore`) or publish events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::runs::events::{BatchReceiver, BatchRecv, EventBatch, message_id_range};
use crate::runs::relay::message_fingerprint;
use crate::runs::{EventHub, EventReceiver, SessionEvent, SharedEvent};
use crate::store::{Message, RunStore, StoreError};

/// The most events a delivery of snapshot or resync events holds (one SSE body chunk); a
/// live batch holds whatever its window gathered.
pub const MAX_BATCH_EVENTS: usize = 64;
/// The default coalescing window of a subscription: the hub gathers the events published
/// within it into one batch, so under sustained load each subscriber wakes (and writes) about
/// once per window instead of once per event. The first event after a quiet period goes out
/// at once. Short enough not to be seen by a person; see docs/benchmarks.md.
pub const COALESCE_WINDOW: Duration = crate::runs::events::DEFAULT_COALESCE_WINDOW;
/// How long a stream may stay silent before it gets a keep-alive comment (below `[server]
/// idle_timeout_ms`, which `ServerConfig::validate` checks).
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The route (nested under `/api`), registered with its `#[utoipa::path]` operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(session_events))
}

/// Query of `GET /api/sessions/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Send messages with a larger id in the snapshot.
    after: Option<i64>,
}

/// The session's events as Server-Sent Events.
///
/// A snapshot first (`status`, the parts of the run streaming now, the `message`s after
/// `after` or `Last-Event-ID`, a `queue_update`), then live `message`, `message_part`,
/// `status`, `queue_update` and `error` events; each event's data is JSON with an `event` tag.
/// A browser signed in to the console may present its session cookie instead of the token.
#[utoipa::path(
    get,
    path = "/sessions/{id}/events",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id."),
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this message id (when `after` is not given)."),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`.", content_type = "text/event-stream", body = String),
        (status = 400, description = "A `Last-Event-ID` that is not a message id.", body = super::ErrorBody),
        (status = 404, description = "No such session.", body = super::ErrorBody),
    ),
)]
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
    let subscription = Subscription::open_with_window(
        s.runs.hub(),
        s.runs.store(),
        &session_id,
        after,
        s.event_coalescing,
    )
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found(format!("session {session_id} not found")))?;
    tracing::debug!(session = %session_id, after, "event stream opened");
    let chunks = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let delivery = subscription.next_delivery().await?;
        Some((Ok::<_, Infallible>(delivery.into_chunk()), subscription))
    });
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

/// Events handed out together, with their body chunk ([`Subscription::next_delivery`]).
#[derive(Debug)]
pub struct Delivery {
    events: DeliveryEvents,
    chunk: Bytes,
}

#[derive(Debug)]
enum DeliveryEvents {
    /// The hub's batch from `from` on, with (a slice of) its own chunk.
    Shared { batch: Arc<EventBatch>, from: usize },
    /// Snapshot or resync events, per-event deliveries, or a batch filtered by
    /// de-duplication, with a chunk built for them.
    Owned(Vec<SharedEvent>),
}

impl Delivery {
    fn owned(events: Vec<SharedEvent>) -> Delivery {
        Delivery {
            chunk: sse_chunk(&events),
            events: DeliveryEvents::Owned(events),
        }
    }

    /// The events, in order.
    pub fn events(&self) -> &[SharedEvent] {
        match &self.events {
            DeliveryEvents::Shared { batch, from } => &batch.events()[*from..],
            DeliveryEvents::Owned(events) => events,
        }
    }

    /// The events' SSE frames back to back: one response body chunk.
    pub fn chunk(&self) -> &Bytes {
        &self.chunk
    }

    /// The body chunk.
    pub fn into_chunk(self) -> Bytes {
        self.chunk
    }

    /// Whether this is (the end of) a batch of the hub as is: its events and chunk are shared
    /// with every other subscriber in sync, nothing was filtered or copied for this one.
    pub fn is_shared(&self) -> bool {
        matches!(self.events, DeliveryEvents::Shared { .. })
    }
}

/// Where a subscription's live events come from.
#[derive(Debug)]
enum Source {
    /// The coalescing window is off: each event as it is published.
    Events(EventReceiver),
    /// The session's batches, one per window.
    Batches(BatchReceiver),
}

/// One subscriber of a session's events: the snapshot, then live events, de-duplicated and
/// resynchronised after lag (see the module doc).
#[derive(Debug)]
pub struct Subscription {
    session_id: String,
    store: RunStore,
    source: Source,
    /// Snapshot or resync events not yet handed out.
    pending: VecDeque<SharedEvent>,
    /// Events of a delivery [`Subscription::next`] has not handed out yet.
    unread: VecDeque<SharedEvent>,
    /// The largest message id handed out (or the `after` cursor).
    cursor: i64,
    /// Messages read from the database (snapshot, last resync) that may also arrive live:
    /// id → content fingerprint.
    read: HashMap<i64, u64>,
    /// The largest id in `read` (when it was filled): a live message above it cannot be a
    /// duplicate.
    read_max: i64,
    resyncs: u64,
    /// The per-event receiver reported lag after events already taken: resynchronise before
    /// the next delivery.
    lagged: Option<u64>,
    /// Says when the host shuts down (per-event source): the stream ends.
    hub: EventHub,
}

impl Subscription {
    /// Subscribes to `session_id` on `hub` with the default coalescing window
    /// ([`COALESCE_WINDOW`]), then reads the snapshot from `store`. `None` if the session does
    /// not exist.
    pub async fn open(
        hub: &EventHub,
        store: &RunStore,
        session_id: &str,
        after: i64,
    ) -> Result<Option<Subscription>, StoreError> {
        Subscription::open_with_window(hub, store, session_id, after, COALESCE_WINDOW).await
    }

    /// [`Subscription::open`] with a coalescing window of `window`; zero turns coalescing off
    /// (each event is handed out as soon as it arrives).
    pub async fn open_with_window(
        hub: &EventHub,
        store: &RunStore,
        session_id: &str,
        after: i64,
        window: Duration,
    ) -> Result<Option<Subscription>, StoreError> {
        let (parts, source) = if window.is_zero() {
            let (parts, receiver) = hub.subscribe(session_id);
            (parts, Source::Events(receiver))
        } else {
            let (parts, receiver) = hub.subscribe_batches(session_id, window);
            (parts, Source::Batches(receiver))
        };
        let Some(status) = store.get_run_state(session_id).await? else {
            return Ok(None);
        };
        let messages = store.messages_after(session_id, after).await?;
        let queue = store.list_queue(session_id).await?;
        let mut subscription = Subscription {
            session_id: session_id.to_owned(),
            store: store.clone(),
            source,
            pending: VecDeque::with_capacity(parts.len() + messages.len() + 2),
            unread: VecDeque::new(),
            cursor: after,
            read: HashMap::new(),
            read_max: i64::MIN,
            resyncs: 0,
            lagged: None,
            hub: hub.clone(),
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

    /// The next event; `None` when the stream ends (host shutdown:
    /// [`EventHub::close_streams`], whose `error` event is the last one handed out).
    pub async fn next(&mut self) -> Option<SharedEvent> {
        loop {
            if let Some(event) = self.unread.pop_front() {
                return Some(event);
            }
            let delivery = self.next_delivery().await?;
            self.unread.extend(delivery.events().iter().cloned());
        }
    }

    /// The next events, in order, with their body chunk: the rest of the snapshot or of a
    /// resync (at most [`MAX_BATCH_EVENTS`] at a time), else the next live batch — with the
    /// window on, what the hub gathered in one window (shared as is when this subscriber is in
    /// sync); with it off, whatever is queued (at most [`MAX_BATCH_EVENTS`]). Waits when there
    /// is nothing yet. `None` when the stream ends, as for [`Subscription::next`]. Not
    /// cancel-safe while it resynchronises: drive it to completion.
    pub async fn next_delivery(&mut self) -> Option<Delivery> {
        loop {
            if !self.unread.is_empty() {
                return Some(Delivery::owned(self.unread.drain(..).collect()));
            }
            if let Some(missed) = self.lagged.take() {
                self.resync_after(missed).await;
            }
            if !self.pending.is_empty() {
                let take = self.pending.len().min(MAX_BATCH_EVENTS);
                let events: Vec<SharedEvent> = self.pending.drain(..take).collect();
                for event in &events {
                    if let SessionEvent::Message { id, .. } = **event {
                        self.cursor = self.cursor.max(id);
                    }
                }
                return Some(Delivery::owned(events));
            }
            let received = match &mut self.source {
                Source::Batches(receiver) => receiver.recv().await,
                Source::Events(_) => match self.next_events().await {
                    Ok(Some(delivery)) => return Some(delivery),
                    Ok(None) => return None,
                    Err(missed) => BatchRecv::Lagged(missed),
                },
            };
            match received {
                BatchRecv::Batch { batch, skip } => {
                    if let Some(delivery) = self.deliver(batch, skip) {
                        return Some(delivery);
                    }
                }
                BatchRecv::Lagged(missed) => self.resync_after(missed).await,
                BatchRecv::Closed => return None,
            }
        }
    }

    /// What of the live `batch` from `skip` on goes to this subscriber: all of it, shared,
    /// when nothing in it can be a duplicate of what it read from the database; else the
    /// events `admit` lets through, with a chunk of their own. `None` if nothing is left.
    fn deliver(&mut self, batch: Arc<EventBatch>, skip: usize) -> Option<Delivery> {
        let events = batch.events().get(skip..).filter(|e| !e.is_empty())?;
        let ids = if skip == 0 {
            batch.message_ids()
        } else {
            message_id_range(events)
        };
        // In sync: every message of the batch is newer than anything read (or nothing is
        // left to de-duplicate): `admit` would let every event through.
        if self.read.is_empty() || ids.is_none_or(|(low, _)| low > self.read_max) {
            if let Some((_, high)) = ids {
                self.cursor = self.cursor.max(high);
            }
            return Some(Delivery {
                chunk: batch.chunk_from(skip),
                events: DeliveryEvents::Shared { batch, from: skip },
            });
        }
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            if self.admit(event) {
                kept.push(event.clone());
            }
        }
        if kept.len() == events.len() {
            return Some(Delivery {
                chunk: batch.chunk_from(skip),
                events: DeliveryEvents::Shared { batch, from: skip },
            });
        }
        (!kept.is_empty()).then(|| Delivery::owned(kept))
    }

    /// The per-event source: what is queued (at most [`MAX_BATCH_EVENTS`]), waiting for the
    /// first event. `Ok(None)`: the stream ended; `Err(missed)`: lagged, with nothing taken.
    async fn next_events(&mut self) -> Result<Option<Delivery>, u64> {
        let Source::Events(receiver) = &mut self.source else {
            unreachable!("called for the per-event source only");
        };
        let mut events = Vec::new();
        loop {
            let received = match receiver.try_recv_shared() {
                Err(TryRecvError::Empty) if events.is_empty() => {
                    if self.hub.streams_closed() {
                        return Ok(None);
                    }
                    receiver.recv_shared().await.map_err(|e| match e {
                        RecvError::Lagged(missed) => TryRecvError::Lagged(missed),
                        RecvError::Closed => TryRecvError::Closed,
                    })
                }
                received => received,
            };
            match received {
                Ok(event) => {
                    if admit(&mut self.read, &mut self.cursor, &event) {
                        events.push(event);
                        if events.len() >= MAX_BATCH_EVENTS {
                            break;
                        }
                    }
                }
                // Hand out what came before the gap first; the lag shows on the next call
                // (the receiver reports it once, so it is kept here).
                Err(TryRecvError::Lagged(missed)) if events.is_empty() => return Err(missed),
                Err(TryRecvError::Lagged(missed)) => {
                    self.lagged = Some(missed);
                    break;
                }
                Err(TryRecvError::Closed) if events.is_empty() => return Ok(None),
                Err(TryRecvError::Closed | TryRecvError::Empty) => break,
            }
        }
        Ok(Some(Delivery::owned(events)))
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
                self.read_max = self.read_max.max(id);
            }
            self.pending.push_back(event.into());
        }
    }

    /// Whether a live event goes out (see [`admit`]).
    fn admit(&mut self, event: &SessionEvent) -> bool {
        admit(&mut self.read, &mut self.cursor, event)
    }

    /// Lag: `missed` events are gone; read the state again.
    async fn resync_after(&mut self, missed: u64) {
        tracing::info!(session = %self.session_id, missed, cursor = self.cursor, "slow event subscriber lagged; resynchronising from the database");
        self.resync().await;
    }

    /// After lag: the status, the messages after the cursor and the queue, from the database.
    /// Events still in the channel that these reads already cover are dropped by `admit`.
    async fn resync(&mut self) {
        self.resyncs += 1;
        self.read.clear();
        self.read_max = i64::MIN;
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

/// Whether a live event goes out: drops a `message` that was already `read` from the database
/// with the same content; moves the `cursor` past the messages that go out.
fn admit(read: &mut HashMap<i64, u64>, cursor: &mut i64, event: &SessionEvent) -> bool {
    if read.is_empty() {
        if let SessionEvent::Message { id, .. } = event {
            *cursor = (*cursor).max(*id);
        }
        return true;
    }
    let Some((id, fingerprint)) = message_fingerprint(event) else {
        return true;
    };
    if read.get(&id) == Some(&fingerprint) {
        read.remove(&id);
        return false;
    }
    *cursor = (*cursor).max(id);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that stays silent gets a comment per interval; one that keeps sending does
    /// not, and its chunks pass through unchanged and in order.
    #[tokio::test]
    async fn keep_alive_comments_only_silent_streams() {
        let comment = Bytes::from_static(b":\n\n");
        let silent = futures_util::stream::pending::<Result<Bytes, Infallible>>().boxed();
        let mut silent = KeepAlive::new(silent, Duration::from_millis(20));
        for _ in 0..2 {
            let next = tokio::time::timeout(Duration::from_secs(10), silent.next())
                .await
                .expect("a silent stream gets a keep-alive comment");
            assert_eq!(next.unwrap().unwrap(), comment);
        }

        // Chunks every 2 ms against a 10 s interval: never silent for a whole interval.
        let busy = futures_util::stream::iter(0..20u8)
            .then(|i| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, Infallible>(Bytes::from(vec![i]))
            })
            .boxed();
        let received: Vec<Bytes> = KeepAlive::new(busy, Duration::from_secs(10))
            .map(Result::unwrap)
            .collect()
            .await;
        let expected: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i])).collect();
        assert_eq!(received, expected, "no comment between chunks, none lost");
    }
}
