//! Per-session, in-process event fan-out (SPEC §5 event stream; reference `chat-runs.md` A.11).
//!
//! [`EventHub`] keeps one bounded `tokio::sync::broadcast` channel per session with subscribers,
//! created on first subscription and dropped once the last subscriber is gone and no run is
//! streaming. Publishing never blocks and never fails: a subscriber that falls more than the
//! channel's capacity behind gets `RecvError::Lagged` (and should resynchronise from the
//! database, or be dropped); producers never wait for it.
//!
//! The channels carry [`SharedEvent`]s: one allocation per published event, shared by every
//! subscriber, so a delivery is a reference-count bump whatever the number of subscribers, and
//! the event's SSE frame ([`SharedEvent::sse_frame`]) is encoded once, by the first subscriber
//! that needs it, instead of once per subscriber. [`EventReceiver::recv_shared`] hands out the
//! shared event (the fan-out path, the executor); [`EventReceiver::recv`] an owned copy, for
//! consumers that want to own or match it (tests, the demo).
//!
//! The hub also holds the in-flight `message_part` events of the run that is streaming in each
//! session, so a late subscriber can be given them in its snapshot ([`EventHub::subscribe`]
//! returns them atomically with the receiver, so nothing is missed or duplicated). Buffering
//! starts before the `running` status is published, is cleared whenever a reply is stored and
//! ends with the run.
//!
//! Extending: the cross-replica relay (`crate::runs::relay`, PostgreSQL LISTEN/NOTIFY) sees
//! durable events through an [`EventTap`] and feeds the events it reads back from the database
//! in through [`EventHub::publish_local`]; the SSE endpoint calls [`EventHub::subscribe`].
//! Nothing here touches the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::store::{CompactionSource, Message, QueuedMessage, RunState};

/// Events each session's channel holds before the slowest subscriber starts lagging.
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Text of in-flight parts buffered per session for late subscribers; beyond it, parts are
/// still broadcast but no longer buffered.
pub const MAX_BUFFERED_PART_BYTES: usize = 1 << 20;

/// The `error` event [`EventHub::close_streams`] sends before streams end.
pub const SHUTDOWN_MESSAGE: &str = "the host is shutting down; reconnect to resume";

/// One event of a session's stream. Serialises as an object tagged with its SSE event name in
/// `"event"` (`message`, `message_part`, `status`, `queue_update`, `error`, `compaction_start`,
/// `compaction_done`, `compaction_failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    /// A durable message row (new, promoted or edited).
    Message {
        /// The row id (stream cursor).
        id: i64,
        /// `user`, `assistant` or `system`.
        role: String,
        /// `message`, `command` or `notice`.
        kind: String,
        /// The text.
        body: String,
        /// When it was stored (epoch ms).
        created_at_ms: i64,
    },
    /// A piece of the reply that the running run is streaming (ephemeral).
    MessagePart {
        /// The run producing it.
        run_id: String,
        /// The text delta.
        text: String,
    },
    /// The session's run state changed.
    Status {
        /// The new state.
        state: RunState,
        /// Why the last run failed (state `error`).
        last_error: Option<String>,
    },
    /// The session's queue changed: the whole queue, oldest first.
    QueueUpdate {
        /// The queued messages.
        queue: Vec<QueuedMessage>,
    },
    /// A run failed or the session went away.
    Error {
        /// What happened.
        message: String,
    },
    /// A compaction of the session's context started (summary requested from the agent).
    CompactionStart {
        /// `pre_run`, `mid_run` or `manual`.
        source: CompactionSource,
        /// The context's occupancy that triggered it (tokens; reported or estimated).
        context_tokens: u64,
        /// The agent's context limit, if configured.
        limit_tokens: Option<u64>,
        /// The agent's threshold (percent of the limit), if configured.
        threshold_percent: Option<u8>,
    },
    /// A compaction finished: the summary is stored as a hidden boundary message.
    CompactionDone {
        /// `pre_run`, `mid_run` or `manual`.
        source: CompactionSource,
        /// The hidden boundary message holding the summary.
        boundary_message_id: i64,
        /// Occupancy before (tokens; reported or estimated).
        tokens_before: u64,
        /// Estimated occupancy of the compacted context.
        tokens_after: u64,
    },
    /// A compaction failed; the context is unchanged and the run (if any) goes on.
    CompactionFailed {
        /// `pre_run`, `mid_run` or `manual`.
        source: CompactionSource,
        /// What went wrong.
        error: String,
        /// Consecutive failures so far.
        consecutive_failures: u32,
        /// Whether automatic compaction is now stopped for the session (until one succeeds).
        automatic_disabled: bool,
    },
}

impl SessionEvent {
    /// The SSE event name (`message`, `message_part`, `status`, `queue_update`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::Message { .. } => "message",
            SessionEvent::MessagePart { .. } => "message_part",
            SessionEvent::Status { .. } => "status",
            SessionEvent::QueueUpdate { .. } => "queue_update",
            SessionEvent::Error { .. } => "error",
            SessionEvent::CompactionStart { .. } => "compaction_start",
            SessionEvent::CompactionDone { .. } => "compaction_done",
            SessionEvent::CompactionFailed { .. } => "compaction_failed",
        }
    }

    /// The `message` event of a stored row.
    pub fn message(message: &Message) -> SessionEvent {
        SessionEvent::Message {
            id: message.id,
            role: message.role.clone(),
            kind: message.kind.clone(),
            body: message.body.clone(),
            created_at_ms: message.created_at_ms,
        }
    }

    /// The event as one Server-Sent Events frame: `event: <name>`, `data: <the event as
    /// JSON>`, for `message` events `id: <message id>` (the client's `Last-Event-ID`), then
    /// the blank line that ends the frame. The same bytes axum's `sse::Event` writes for
    /// `.event(name).data(json).id(id)`; compact JSON has no raw newline, so one `data` line.
    pub fn sse_frame(&self) -> Bytes {
        let json = serde_json::to_vec(self).unwrap_or_else(|e| {
            // Plain strings and integers only: cannot fail; keep the stream going regardless.
            tracing::error!("session event not encoded: {e}");
            b"{}".to_vec()
        });
        let name = self.name();
        let mut frame = BytesMut::with_capacity(json.len() + name.len() + 40);
        frame.put_slice(b"event: ");
        frame.put_slice(name.as_bytes());
        frame.put_slice(b"\ndata: ");
        frame.put_slice(&json);
        frame.put_u8(b'\n');
        if let SessionEvent::Message { id, .. } = self {
            frame.put_slice(format!("id: {id}\n").as_bytes());
        }
        frame.put_u8(b'\n');
        frame.freeze()
    }
}

/// A published [`SessionEvent`], shared by every subscriber that receives it: cloning it is a
/// reference-count bump, and its SSE frame is encoded at most once. Dereferences to the event.
#[derive(Clone)]
pub struct SharedEvent(Arc<SharedInner>);

struct SharedInner {
    event: SessionEvent,
    /// [`SessionEvent::sse_frame`], filled by the first subscriber that asks (not by the
    /// publisher: producers do no encoding work on behalf of subscribers).
    frame: OnceLock<Bytes>,
}

impl SharedEvent {
    /// Wraps `event` for sharing.
    pub fn new(event: SessionEvent) -> SharedEvent {
        SharedEvent(Arc::new(SharedInner {
            event,
            frame: OnceLock::new(),
        }))
    }

    /// The event.
    pub fn event(&self) -> &SessionEvent {
        &self.0.event
    }

    /// The event's SSE frame ([`SessionEvent::sse_frame`]), encoded on the first call and
    /// shared by every holder afterwards (cloning the returned `Bytes` does not copy).
    pub fn sse_frame(&self) -> &Bytes {
        self.0.frame.get_or_init(|| self.0.event.sse_frame())
    }

    /// The event, owned: moved out when this is the last holder, cloned otherwise.
    pub fn into_event(self) -> SessionEvent {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => inner.event,
            Err(shared) => shared.event.clone(),
        }
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = SessionEvent;

    fn deref(&self) -> &SessionEvent {
        &self.0.event
    }
}

impl From<SessionEvent> for SharedEvent {
    fn from(event: SessionEvent) -> SharedEvent {
        SharedEvent::new(event)
    }
}

impl std::fmt::Debug for SharedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.event.fmt(f)
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &SharedEvent) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.event == other.0.event
    }
}

impl Eq for SharedEvent {}

impl PartialEq<SessionEvent> for SharedEvent {
    fn eq(&self, other: &SessionEvent) -> bool {
        self.0.event == *other
    }
}

/// A subscription to one session's live events ([`EventHub::subscribe`]): a
/// `tokio::sync::broadcast` receiver of [`SharedEvent`]s, with the channel's errors (`Lagged`
/// after falling behind, `Closed` never while the hub tracks the session).
#[derive(Debug)]
pub struct EventReceiver {
    inner: broadcast::Receiver<SharedEvent>,
}

impl EventReceiver {
    /// The next event, shared (a reference-count bump). Cancel-safe.
    pub async fn recv_shared(&mut self) -> Result<SharedEvent, RecvError> {
        self.inner.recv().await
    }

    /// The next event if one is already queued, shared; `Err(TryRecvError::Empty)` otherwise.
    pub fn try_recv_shared(&mut self) -> Result<SharedEvent, TryRecvError> {
        self.inner.try_recv()
    }

    /// The next event, owned (a copy: use [`EventReceiver::recv_shared`] on hot paths).
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<SessionEvent, RecvError> {
        self.recv_shared().await.map(SharedEvent::into_event)
    }

    /// The next event if one is already queued, owned; `Err(TryRecvError::Empty)` otherwise.
    pub fn try_recv(&mut self) -> Result<SessionEvent, TryRecvError> {
        self.try_recv_shared().map(SharedEvent::into_event)
    }
}

/// The parts of the run streaming in one session.
#[derive(Debug)]
struct PartBuffer {
    run_id: String,
    parts: Vec<SharedEvent>,
    bytes: usize,
}

#[derive(Debug)]
struct SessionStream {
    sender: broadcast::Sender<SharedEvent>,
    parts: Option<PartBuffer>,
}

impl SessionStream {
    fn idle(&self) -> bool {
        self.parts.is_none() && self.sender.receiver_count() == 0
    }
}

/// Sees every durable event published through [`EventHub::publish`] (not parts, not
/// [`EventHub::publish_local`]): the cross-replica relay's outbox (`crate::runs::relay`).
/// Called synchronously by the publisher, outside the hub's lock; it must not block.
pub trait EventTap: Send + Sync + 'static {
    /// `event` was published to `session_id`.
    fn published(&self, session_id: &str, event: &SessionEvent);
}

/// The tap shared by all clones of a hub.
type SharedTap = Arc<RwLock<Option<Arc<dyn EventTap>>>>;

/// The per-session event fan-out; cheap to clone (all clones share the sessions and the tap).
#[derive(Clone)]
pub struct EventHub {
    sessions: Arc<Mutex<HashMap<String, SessionStream>>>,
    capacity: usize,
    tap: SharedTap,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("capacity", &self.capacity)
            .field("tapped", &self.tap().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new(DEFAULT_EVENT_CAPACITY)
    }
}

impl EventHub {
    /// A hub whose per-session channels hold `capacity` events (at least 1) before a slow
    /// subscriber lags.
    pub fn new(capacity: usize) -> EventHub {
        EventHub {
            sessions: Arc::default(),
            capacity: capacity.max(1),
            tap: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// Tells every stream reading this hub to end (host shutdown: an HTTP server waits for
    /// open SSE responses): raises [`EventHub::streams_closed`] and wakes every subscriber with
    /// an `error` event ([`SHUTDOWN_MESSAGE`]). Publishing, part buffering and new
    /// subscriptions keep working.
    pub fn close_streams(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let shutdown = SharedEvent::new(SessionEvent::Error {
            message: SHUTDOWN_MESSAGE.to_owned(),
        });
        for stream in self.lock().values() {
            let _ = stream.sender.send(shutdown.clone());
        }
    }

    /// Whether [`EventHub::close_streams`] was called: a stream ends instead of waiting.
    pub fn streams_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Installs (`Some`) or removes (`None`) the tap that sees every durable event published
    /// from now on, on every clone of this hub.
    pub fn set_tap(&self, tap: Option<Arc<dyn EventTap>>) {
        *self.tap.write().unwrap_or_else(|e| e.into_inner()) = tap;
    }

    /// Whether a tap is installed (durable events then matter beyond this process's
    /// subscribers: other replicas may have some).
    pub fn is_tapped(&self) -> bool {
        self.tap.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn tap(&self) -> Option<Arc<dyn EventTap>> {
        self.tap.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SessionStream>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is a
        // single insert/remove/push), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream<'a>(
        &self,
        sessions: &'a mut HashMap<String, SessionStream>,
        session_id: &str,
    ) -> &'a mut SessionStream {
        sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| SessionStream {
                sender: broadcast::channel(self.capacity).0,
                parts: None,
            })
    }

    /// Subscribes to `session_id`'s live events. Returns the in-flight `message_part` events
    /// buffered so far (for the snapshot) and the receiver of everything published afterwards,
    /// taken atomically: no part is in both or in neither.
    pub fn subscribe(&self, session_id: &str) -> (Vec<SharedEvent>, EventReceiver) {
        let mut sessions = self.lock();
        let stream = self.stream(&mut sessions, session_id);
        let parts = stream
            .parts
            .as_ref()
            .map(|buffer| buffer.parts.clone())
            .unwrap_or_default();
        let inner = stream.sender.subscribe();
        (parts, EventReceiver { inner })
    }

    /// Publishes a durable event to `session_id`'s subscribers and hands it to the tap, if one
    /// is installed. Never blocks; without subscribers it is dropped. (Parts go through
    /// [`EventHub::publish_part`].)
    pub fn publish(&self, session_id: &str, event: SessionEvent) {
        if let Some(tap) = self.tap() {
            tap.published(session_id, &event);
        }
        self.publish_local(session_id, event);
    }

    /// Publishes an event to this process's subscribers only (the tap does not see it): for
    /// events that come from elsewhere, such as the cross-replica relay's database reads.
    pub fn publish_local(&self, session_id: &str, event: SessionEvent) {
        let mut sessions = self.lock();
        if let Some(stream) = sessions.get(session_id) {
            // Without receivers the event is dropped unwrapped (no allocation); `send` failing
            // would mean the same.
            if stream.sender.receiver_count() > 0 {
                let _ = stream.sender.send(SharedEvent::new(event));
            }
            if stream.idle() {
                sessions.remove(session_id);
            }
        }
    }

    /// Starts buffering the parts of run `run_id` in `session_id` (replacing any earlier
    /// buffer). Call before publishing the `running` status, so a subscriber that sees
    /// `running` also gets every part.
    pub fn begin_parts(&self, session_id: &str, run_id: &str) {
        let mut sessions = self.lock();
        self.stream(&mut sessions, session_id).parts = Some(PartBuffer {
            run_id: run_id.to_owned(),
            parts: Vec::new(),
            bytes: 0,
        });
    }

    /// Publishes a streamed piece of run `run_id`'s reply and buffers it for late subscribers.
    /// Returns `false` (and publishes nothing) if that run is not the one streaming in the
    /// session — it ended or lost its ownership.
    pub fn publish_part(&self, session_id: &str, run_id: &str, text: &str) -> bool {
        let mut sessions = self.lock();
        let Some(stream) = sessions.get_mut(session_id) else {
            return false;
        };
        let Some(buffer) = stream.parts.as_mut().filter(|b| b.run_id == run_id) else {
            return false;
        };
        let event = SharedEvent::new(SessionEvent::MessagePart {
            run_id: run_id.to_owned(),
            text: text.to_owned(),
        });
        if buffer.bytes + text.len() <= MAX_BUFFERED_PART_BYTES {
            buffer.bytes += text.len();
            buffer.parts.push(event.clone());
        }
        let _ = stream.sender.send(event);
        true
    }

    /// Forgets the buffered parts of `session_id` (a reply was stored: late subscribers now
    /// read it from the database). Buffering continues for the same run.
    pub fn clear_parts(&self, session_id: &str) {
        if let Some(buffer) = self
            .lock()
            .get_mut(session_id)
            .and_then(|stream| stream.parts.as_mut())
        {
            buffer.parts.clear();
            buffer.bytes = 0;
        }
    }

    /// Stops buffering parts in `session_id` (the run ended) and forgets them.
    pub fn end_parts(&self, session_id: &str) {
        let mut sessions = self.lock();
        if let Some(stream) = sessions.get_mut(session_id) {
            stream.parts = None;
            if stream.idle() {
                sessions.remove(session_id);
            }
        }
    }

    /// The buffered in-flight parts of `session_id`, oldest first.
    pub fn buffered_parts(&self, session_id: &str) -> Vec<SharedEvent> {
        self.lock()
            .get(session_id)
            .and_then(|stream| stream.parts.as_ref())
            .map(|buffer| buffer.parts.clone())
            .unwrap_or_default()
    }

    /// How many subscribers `session_id` has.
    pub fn subscriber_count(&self, session_id: &str) -> usize {
        self.lock()
            .get(session_id)
            .map_or(0, |stream| stream.sender.receiver_count())
    }

    /// The sessions that have subscribers right now.
    pub fn subscribed_sessions(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, stream)| stream.sender.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Drops sessions that have neither subscribers nor a streaming run (their channels are
    /// otherwise removed lazily, on the next publish). Returns how many are still tracked.
    pub fn collect_idle(&self) -> usize {
        let mut sessions = self.lock();
        sessions.retain(|_, stream| !stream.idle());
        sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: RunState) -> SessionEvent {
        SessionEvent::Status {
            state,
            last_error: None,
        }
    }

    #[test]
    fn events_are_tagged_with_their_sse_name() {
        let json = serde_json::to_value(SessionEvent::MessagePart {
            run_id: "r".into(),
            text: "hi".into(),
        })
        .unwrap();
        assert_eq!(json["event"], "message_part");
        assert_eq!(json["text"], "hi");
        let json = serde_json::to_value(status(RunState::Error)).unwrap();
        assert_eq!(json["event"], "status");
        assert_eq!(json["state"], "error");
        assert_eq!(status(RunState::Idle).name(), "status");
    }

    #[test]
    fn the_sse_frame_names_the_event_and_carries_the_message_id() {
        let message = SessionEvent::Message {
            id: 7,
            role: "user".into(),
            kind: "message".into(),
            body: "two\nlines".into(),
            created_at_ms: 1,
        };
        assert_eq!(
            std::str::from_utf8(&message.sse_frame()).unwrap(),
            "event: message\ndata: {\"event\":\"message\",\"id\":7,\"role\":\"user\",\
             \"kind\":\"message\",\"body\":\"two\\nlines\",\"created_at_ms\":1}\nid: 7\n\n"
        );
        assert_eq!(
            std::str::from_utf8(&status(RunState::Idle).sse_frame()).unwrap(),
            "event: status\ndata: {\"event\":\"status\",\"state\":\"idle\",\"last_error\":null}\n\n"
        );
    }

    #[tokio::test]
    async fn every_subscriber_shares_one_event_and_one_encoding() {
        let hub = EventHub::default();
        let (_, mut a) = hub.subscribe("s");
        let (_, mut b) = hub.subscribe("s");
        hub.publish("s", status(RunState::Pending));
        let (a, b) = (a.recv_shared().await.unwrap(), b.try_recv_shared().unwrap());
        assert!(
            Arc::ptr_eq(&a.0, &b.0),
            "one allocation for every subscriber"
        );
        assert_eq!(
            a.sse_frame().as_ptr(),
            b.sse_frame().as_ptr(),
            "encoded once"
        );
        assert_eq!(a, status(RunState::Pending));
        assert_eq!(b.into_event(), status(RunState::Pending), "owned copy");
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_and_never_blocks_the_producer() {
        let hub = EventHub::new(4);
        let (_, mut slow) = hub.subscribe("s");
        for _ in 0..100 {
            hub.publish("s", status(RunState::Pending)); // would block forever if it waited
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        assert_eq!(slow.recv().await.unwrap(), status(RunState::Pending));
    }

    #[tokio::test]
    async fn parts_are_buffered_for_late_subscribers_until_cleared() {
        let hub = EventHub::default();
        assert!(!hub.publish_part("s", "run-1", "lost"), "not streaming yet");
        hub.begin_parts("s", "run-1");
        assert!(hub.publish_part("s", "run-1", "Hel"));
        assert!(!hub.publish_part("s", "run-0", "stale run"));
        let (snapshot, mut live) = hub.subscribe("s");
        assert_eq!(snapshot.len(), 1);
        assert!(hub.publish_part("s", "run-1", "lo"));
        assert_eq!(
            live.recv().await.unwrap(),
            SessionEvent::MessagePart {
                run_id: "run-1".into(),
                text: "lo".into()
            }
        );
        assert_eq!(hub.buffered_parts("s").len(), 2);
        hub.clear_parts("s");
        assert!(hub.buffered_parts("s").is_empty());
        hub.end_parts("s");
        assert!(!hub.publish_part("s", "run-1", "after the end"));
        drop(live);
        assert_eq!(hub.collect_idle(), 0);
    }
}
