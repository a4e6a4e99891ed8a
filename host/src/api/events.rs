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
//! Owns the snapshot order, de-duplication and resync; it must not hold SQL (reads go through
//! `RunStore`) or publish events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{ApiError, AppState};
use crate::runs::relay::message_fingerprint;
use crate::runs::{EventHub, SessionEvent};
use crate::store::{Message, RunStore, StoreError};

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
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
        .ok_or_else(|| ApiError::not_found(format!("session {session_id} not found")))?;
    tracing::debug!(session = %session_id, after, "event stream opened");
    let stream = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let event = subscription.next().await?;
        Some((Ok(sse_event(&event)), subscription))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The SSE frame of `event`: named after it, JSON data, the message id as SSE `id`.
pub fn sse_event(event: &SessionEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|e| {
        // Plain strings and integers only: cannot fail; keep the stream going regardless.
        tracing::error!("session event not encoded: {e}");
        "{}".to_owned()
    });
    let frame = Event::default().event(event.name()).data(data);
    match event {
        SessionEvent::Message { id, .. } => frame.id(id.to_string()),
        _ => frame,
    }
}

/// One subscriber of a session's events: the snapshot, then live events, de-duplicated and
/// resynchronised after lag (see the module doc).
#[derive(Debug)]
pub struct Subscription {
    session_id: String,
    store: RunStore,
    receiver: broadcast::Receiver<SessionEvent>,
    /// Snapshot or resync events not yet handed out.
    pending: VecDeque<SessionEvent>,
    /// The largest message id handed out (or the `after` cursor).
    cursor: i64,
    /// Messages read from the database (snapshot, last resync) that may also arrive live:
    /// id → content fingerprint.
    read: HashMap<i64, u64>,
    resyncs: u64,
    /// Says when the host shuts down: the stream ends.
    hub: EventHub,
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
        };
        subscription.pending.push_back(SessionEvent::Status {
            state: status.state,
            last_error: status.last_error,
        });
        subscription.pending.extend(parts);
        subscription.push_messages(&messages);
        if !queue.is_empty() {
            subscription
                .pending
                .push_back(SessionEvent::QueueUpdate { queue });
        }
        Ok(Some(subscription))
    }

    /// The next event; `None` when the stream ends (host shutdown: [`EventHub::close_streams`],
    /// whose `error` event is the last one handed out).
    pub async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let SessionEvent::Message { id, .. } = &event {
                    self.cursor = self.cursor.max(*id);
                }
                return Some(event);
            }
            if self.hub.streams_closed() {
                return None;
            }
            let received = self.receiver.recv().await;
            match received {
                Ok(event) => {
                    if self.admit(&event) {
                        return Some(event);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(session = %self.session_id, missed, cursor = self.cursor, "slow event subscriber lagged; resynchronising from the database");
                    self.resync().await;
                }
                Err(RecvError::Closed) => return None,
            }
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
            self.pending.push_back(event);
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
            Ok(Some(status)) => self.pending.push_back(SessionEvent::Status {
                state: status.state,
                last_error: status.last_error,
            }),
            Ok(None) => {
                self.pending.push_back(SessionEvent::Error {
                    message: "the session was deleted".into(),
                });
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
            Ok(queue) => self.pending.push_back(SessionEvent::QueueUpdate { queue }),
            Err(e) => tracing::warn!(session = %self.session_id, "resync: queue not read: {e}"),
        }
    }
}
