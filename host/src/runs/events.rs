//! Per-session, in-process event fan-out (SPEC §5 event stream; reference `chat-runs.md` A.11).
//!
//! [`EventHub`] keeps, per session with subscribers, two ways to follow its events, created on
//! first subscription and dropped once the last subscriber is gone and no run is streaming:
//!
//! - **per event** ([`EventHub::subscribe`] → [`EventReceiver`]): a bounded
//!   `tokio::sync::broadcast` channel; every receiver gets every event as it is published. For
//!   the few in-process consumers that react to single events (the executor watching for an
//!   interrupt, tests, the demo).
//! - **per window** ([`EventHub::subscribe_batches`] → [`BatchReceiver`]): the fan-out path of
//!   the SSE endpoint. Events published within one coalescing window are gathered into one
//!   [`EventBatch`] — the events plus their SSE frames back to back in one buffer, built once —
//!   and appended to the session's batch log; a subscriber takes a whole batch per wake-up (one
//!   read lock and one reference-count bump), whatever the number of events in it. So what 1,000
//!   subscribers cost is per window, not per event: the publisher only appends the event to the
//!   window (and, on the first event after a quiet period, spawns the flush task); the flush
//!   task builds the batch once, appends it and wakes the subscribers. The first event after a
//!   quiet period is flushed at once; while events keep coming, the next flush waits for the
//!   end of the window.
//!
//! Publishing never blocks and never fails: a subscriber that falls more than the channel's
//! capacity behind gets `RecvError::Lagged` (per event) or [`BatchRecv::Lagged`] (the log only
//! keeps the last `capacity` events or so), and should resynchronise from the database, or be
//! dropped; producers never wait for it.
//!
//! Events are [`SharedEvent`]s: one allocation per published event, shared by every
//! subscriber, with its SSE frame ([`SharedEvent::sse_frame`]) encoded once (by the flush task,
//! or by the first per-event consumer that asks). [`EventReceiver::recv_shared`] hands out the
//! shared event (the executor); [`EventReceiver::recv`] an owned copy, for consumers that want
//! to own or match it (tests, the demo).
//!
//! The hub also holds the in-flight `message_part` events of the run that is streaming in each
//! session, so a late subscriber can be given them in its snapshot ([`EventHub::subscribe`] and
//! [`EventHub::subscribe_batches`] return them atomically with the receiver, so nothing is
//! missed or duplicated: batch events carry a per-session sequence number, and a batch
//! receiver skips those published before it subscribed). Buffering starts before the `running`
//! status is published, is cleared whenever a reply is stored and ends with the run.
//!
//! Extending: the cross-replica relay (`crate::runs::relay`, PostgreSQL LISTEN/NOTIFY) sees
//! durable events through an [`EventTap`] and feeds the events it reads back from the database
//! in through [`EventHub::publish_local`]; the SSE endpoint (`crate::api::events`) subscribes
//! to batches. Nothing here touches the database or knows about HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast};

use crate::store::{CompactionSource, Message, QueuedMessage, RunState};

/// Events each session's channel holds before the slowest subscriber starts lagging (per
/// event: exactly; batches: the log keeps at least this many events, in whole batches).
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Text of in-flight parts buffered per session for late subscribers; beyond it, parts are
/// still broadcast but no longer buffered.
pub const MAX_BUFFERED_PART_BYTES: usize = 1 << 20;
/// The default coalescing window of batch subscriptions (`[server] event_coalesce_ms`): short
/// enough not to be seen by a person; see docs/benchmarks.md.
pub const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_millis(10);

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

/// A subscription to one session's events one by one ([`EventHub::subscribe`]): a
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

/// The events one session published within one coalescing window, in order, as batch
/// subscribers receive them ([`BatchReceiver`]): built once by the session's flush task and
/// shared by every subscriber.
#[derive(Debug)]
pub struct EventBatch {
    /// Sequence number of the first event (the session's events are numbered from 0 in
    /// publishing order).
    first_seq: u64,
    events: Vec<SharedEvent>,
    /// Where each event's frame starts in `chunk`.
    offsets: Vec<usize>,
    /// The events' SSE frames back to back.
    chunk: Bytes,
    /// The smallest and largest id of the batch's `message` events.
    message_ids: Option<(i64, i64)>,
}

impl EventBatch {
    fn new(first_seq: u64, events: Vec<SharedEvent>) -> EventBatch {
        let mut offsets = Vec::with_capacity(events.len());
        let chunk = if let [event] = &events[..] {
            offsets.push(0);
            event.sse_frame().clone() // no copy
        } else {
            let len = events.iter().map(|event| event.sse_frame().len()).sum();
            let mut chunk = BytesMut::with_capacity(len);
            for event in &events {
                offsets.push(chunk.len());
                chunk.extend_from_slice(event.sse_frame());
            }
            chunk.freeze()
        };
        EventBatch {
            first_seq,
            message_ids: message_id_range(&events),
            events,
            offsets,
            chunk,
        }
    }

    /// The sequence number of the first event.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number after the last event.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    /// The events, in publishing order.
    pub fn events(&self) -> &[SharedEvent] {
        &self.events
    }

    /// The events' SSE frames back to back (one response body chunk).
    pub fn chunk(&self) -> &Bytes {
        &self.chunk
    }

    /// The frames of the events from `index` on, without a copy (a slice of
    /// [`EventBatch::chunk`]).
    pub fn chunk_from(&self, index: usize) -> Bytes {
        match self.offsets.get(index) {
            Some(0) => self.chunk.clone(),
            Some(&offset) => self.chunk.slice(offset..),
            None => Bytes::new(),
        }
    }

    /// The smallest and largest id of the batch's `message` events (`None`: it has none).
    pub fn message_ids(&self) -> Option<(i64, i64)> {
        self.message_ids
    }
}

/// The smallest and largest id of the `message` events among `events`.
pub fn message_id_range(events: &[SharedEvent]) -> Option<(i64, i64)> {
    events.iter().fold(None, |range, event| match **event {
        SessionEvent::Message { id, .. } => Some(match range {
            None => (id, id),
            Some((low, high)) => (low.min(id), high.max(id)),
        }),
        _ => range,
    })
}

/// What [`BatchReceiver::recv`] gave.
#[derive(Debug)]
pub enum BatchRecv {
    /// The next batch; its first `skip` events were published before this receiver
    /// subscribed (or already handed out) and are not for it.
    Batch {
        /// The batch.
        batch: Arc<EventBatch>,
        /// Events at its start to skip.
        skip: usize,
    },
    /// This many events were dropped from the log before this receiver read them; the next
    /// receive continues with the oldest batch still kept.
    Lagged(u64),
    /// The hub's streams were closed ([`EventHub::close_streams`]) and this receiver has read
    /// everything up to the shutdown `error` event.
    Closed,
}

/// A subscription to one session's events a window at a time ([`EventHub::subscribe_batches`]).
#[derive(Debug)]
pub struct BatchReceiver {
    batcher: Arc<Batcher>,
    /// The sequence number of the next event to hand out.
    next_seq: u64,
}

impl BatchReceiver {
    /// The next batch (or lag, or the end), waiting for the next flush if there is none yet.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> BatchRecv {
        loop {
            // Woken by a flush (or called with batches waiting): take without registering.
            if let Some(received) = take(&self.batcher, &mut self.next_seq) {
                return received;
            }
            // Register as a waiter before looking again, so a flush in between is not missed.
            let flushed = self.batcher.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if let Some(received) = take(&self.batcher, &mut self.next_seq) {
                return received;
            }
            flushed.await;
        }
    }

    /// The next batch if one is already flushed (or lag, or the end); `None` otherwise.
    pub fn try_recv(&mut self) -> Option<BatchRecv> {
        take(&self.batcher, &mut self.next_seq)
    }
}

/// What a receiver at `next_seq` reads next from `batcher`'s log (advancing `next_seq`).
fn take(batcher: &Batcher, next_seq: &mut u64) -> Option<BatchRecv> {
    // Nothing new (the common case when a subscriber goes back to waiting): an atomic load,
    // not the log's lock.
    if *next_seq >= batcher.flushed_seq.load(Ordering::Acquire)
        && !batcher.closed.load(Ordering::Acquire)
    {
        return None;
    }
    let log = batcher.log.read().unwrap_or_else(|e| e.into_inner());
    if let Some(end) = log.closed
        && *next_seq >= end
    {
        return Some(BatchRecv::Closed);
    }
    if *next_seq >= log.end_seq {
        return None;
    }
    // The log keeps at least its newest batch, so it is not empty here.
    let oldest = log.batches.front()?.first_seq;
    if *next_seq < oldest {
        let missed = oldest - *next_seq;
        *next_seq = oldest;
        return Some(BatchRecv::Lagged(missed));
    }
    let index = log
        .batches
        .partition_point(|batch| batch.end_seq() <= *next_seq);
    let batch = log.batches.get(index)?.clone();
    let skip = (*next_seq - batch.first_seq) as usize;
    *next_seq = batch.end_seq();
    Some(BatchRecv::Batch { batch, skip })
}

impl Drop for BatchReceiver {
    fn drop(&mut self) {
        // The hub drops the batcher (and the session, when idle) on its next pass.
        self.batcher.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One session's windowed fan-out: the events of the current window, the flushed batches,
/// and who waits for them.
struct Batcher {
    window: Duration,
    capacity: usize,
    /// Live [`BatchReceiver`]s.
    subscribers: AtomicUsize,
    /// The current window: the publisher appends, the flush task takes.
    pending: Mutex<Pending>,
    /// Flushed batches: the flush task appends, subscribers read.
    log: RwLock<BatchLog>,
    /// Wakes the subscribers after a flush.
    flushed: Notify,
    /// The log's `end_seq`, readable without its lock.
    flushed_seq: AtomicU64,
    /// The log's `closed` is set.
    closed: AtomicBool,
    /// Where flush tasks run when the publisher is outside a runtime: that of the first
    /// subscriber.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("window", &self.window)
            .field("subscribers", &self.subscribers)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pending {
    events: Vec<SharedEvent>,
    /// The sequence number of the next published event.
    next_seq: u64,
    /// A flush task is running (it ends after a window without events).
    flushing: bool,
    /// [`EventHub::close_streams`] was called: the next flush closes the log.
    closing: bool,
}

#[derive(Default)]
struct BatchLog {
    /// Oldest first, consecutive sequence numbers.
    batches: VecDeque<Arc<EventBatch>>,
    /// Events in `batches`.
    events: usize,
    /// The sequence number after the newest batch's last event.
    end_seq: u64,
    /// The shutdown `error` event was flushed: receivers end at this sequence number (the end
    /// of the batch that holds it; 0 for a batcher created after the shutdown).
    closed: Option<u64>,
}

impl Batcher {
    fn new(window: Duration, capacity: usize, closed: bool) -> Batcher {
        Batcher {
            window,
            capacity,
            subscribers: AtomicUsize::new(0),
            pending: Mutex::default(),
            log: RwLock::new(BatchLog {
                closed: closed.then_some(0),
                ..BatchLog::default()
            }),
            flushed: Notify::new(),
            flushed_seq: AtomicU64::new(0),
            closed: AtomicBool::new(closed),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `event` to the current window; starts a flush if none is running. O(1): the
    /// publisher never waits for or works on behalf of subscribers.
    fn push(self: &Arc<Self>, event: SharedEvent, close: bool) {
        let start = {
            let mut pending = self.pending();
            pending.events.push(event);
            pending.next_seq += 1;
            pending.closing |= close;
            !std::mem::replace(&mut pending.flushing, true)
        };
        if start {
            self.start_flush();
        }
    }

    /// Runs the flush loop on the caller's runtime (else the first subscriber's); outside any
    /// runtime, flushes once, inline.
    fn start_flush(self: &Arc<Self>) {
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        match runtime {
            Some(runtime) => {
                runtime.spawn(Flushing(self.clone(), false).run());
            }
            None => {
                self.flush(true);
            }
        }
    }

    /// Moves the current window's events into a batch on the log and wakes the subscribers.
    /// Returns `false` (and marks the flushing over, unless `inline`) when there were none.
    fn flush(&self, inline: bool) -> bool {
        let (first_seq, events, closing) = {
            let mut pending = self.pending();
            if pending.events.is_empty() || inline {
                // Inline: the flush ends here too (a publisher outside any runtime).
                pending.flushing = false;
            }
            if pending.events.is_empty() {
                return false;
            }
            let events = std::mem::take(&mut pending.events);
            let first_seq = pending.next_seq - events.len() as u64;
            (first_seq, events, pending.closing)
        };
        // Encoded and copied once, outside every lock; only one flush runs at a time, so
        // batches are appended in order.
        let batch = Arc::new(EventBatch::new(first_seq, events));
        {
            let mut log = self.log.write().unwrap_or_else(|e| e.into_inner());
            log.events += batch.events.len();
            log.end_seq = batch.end_seq();
            if closing && log.closed.is_none() {
                log.closed = Some(log.end_seq);
                self.closed.store(true, Ordering::Release);
            }
            self.flushed_seq.store(log.end_seq, Ordering::Release);
            log.batches.push_back(batch);
            // Keep at least `capacity` events (and always the newest batch).
            while log.batches.len() > 1 && log.events - log.batches[0].events.len() >= self.capacity
            {
                let oldest = log.batches.pop_front().expect("not empty");
                log.events -= oldest.events.len();
            }
        }
        self.flushed.notify_waiters();
        true
    }
}

/// A batcher's flush task: flushes at once (the first event after a quiet period goes out
/// without delay), then at the end of every window while events keep coming; ends after a
/// window without any. If it is dropped before that (its runtime shut down, possibly before
/// it ever ran), the next publication starts another one instead of waiting for it forever.
struct Flushing(Arc<Batcher>, bool);

impl Flushing {
    async fn run(mut self) {
        while self.0.flush(false) {
            tokio::time::sleep(self.0.window).await;
        }
        self.1 = true; // `flush` marked the flushing over
    }
}

impl Drop for Flushing {
    fn drop(&mut self) {
        if !self.1 {
            self.0.pending().flushing = false;
        }
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
    /// One per coalescing window in use (in practice one: the server's).
    batchers: Vec<Arc<Batcher>>,
}

impl SessionStream {
    /// The in-flight parts buffered for late subscribers (empty when no run is streaming).
    fn buffered_parts(&self) -> Vec<SharedEvent> {
        self.parts
            .as_ref()
            .map(|buffer| buffer.parts.clone())
            .unwrap_or_default()
    }

    /// Forgets batchers whose subscribers are all gone.
    fn prune(&mut self) {
        self.batchers.retain(|batcher| batcher.subscribers() > 0);
    }

    fn idle(&self) -> bool {
        self.parts.is_none() && self.subscribers() == 0
    }

    fn subscribers(&self) -> usize {
        self.sender.receiver_count()
            + self
                .batchers
                .iter()
                .map(|batcher| batcher.subscribers())
                .sum::<usize>()
    }

    /// Hands `event` to every subscriber of the session (wrapped only if anyone listens).
    fn send(&mut self, event: impl Into<SharedEvent>) {
        self.prune();
        let per_event = self.sender.receiver_count() > 0;
        if !per_event && self.batchers.is_empty() {
            return;
        }
        let event = event.into();
        for batcher in &self.batchers {
            batcher.push(event.clone(), false);
        }
        if per_event {
            let _ = self.sender.send(event);
        }
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
    closed: Arc<AtomicBool>,
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
    /// open SSE responses): raises [`EventHub::streams_closed`] and sends every subscriber an
    /// `error` event ([`SHUTDOWN_MESSAGE`]); batch receivers then report
    /// [`BatchRecv::Closed`]. Publishing, part buffering and new subscriptions keep working.
    pub fn close_streams(&self) {
        let mut sessions = self.lock();
        // Raised under the lock: a batcher created from now on starts closed.
        self.closed.store(true, Ordering::SeqCst);
        let shutdown = SharedEvent::new(SessionEvent::Error {
            message: SHUTDOWN_MESSAGE.to_owned(),
        });
        for stream in sessions.values_mut() {
            let _ = stream.sender.send(shutdown.clone());
            stream.prune();
            for batcher in &stream.batchers {
                batcher.push(shutdown.clone(), true);
            }
        }
    }

    /// Whether [`EventHub::close_streams`] was called: a stream ends instead of waiting.
    pub fn streams_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
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
                batchers: Vec::new(),
            })
    }

    /// Subscribes to `session_id`'s live events one by one. Returns the in-flight
    /// `message_part` events buffered so far (for the snapshot) and the receiver of everything
    /// published afterwards, taken atomically: no part is in both or in neither.
    pub fn subscribe(&self, session_id: &str) -> (Vec<SharedEvent>, EventReceiver) {
        let mut sessions = self.lock();
        let stream = self.stream(&mut sessions, session_id);
        let parts = stream.buffered_parts();
        let inner = stream.sender.subscribe();
        (parts, EventReceiver { inner })
    }

    /// Subscribes to `session_id`'s live events a coalescing `window` at a time (the fan-out
    /// path; see the module doc). Returns the buffered in-flight parts, as
    /// [`EventHub::subscribe`] does, and the receiver of the batches of everything published
    /// afterwards. Subscribers with the same window share the session's batches; a zero
    /// window flushes whatever accumulated while the flush task was being scheduled.
    pub fn subscribe_batches(
        &self,
        session_id: &str,
        window: Duration,
    ) -> (Vec<SharedEvent>, BatchReceiver) {
        let mut sessions = self.lock();
        let closed = self.streams_closed();
        let capacity = self.capacity;
        let stream = self.stream(&mut sessions, session_id);
        let parts = stream.buffered_parts();
        stream.prune();
        let batcher = match stream.batchers.iter().find(|b| b.window == window) {
            Some(batcher) => batcher.clone(),
            None => {
                let batcher = Arc::new(Batcher::new(window, capacity, closed));
                stream.batchers.push(batcher.clone());
                batcher
            }
        };
        batcher.subscribers.fetch_add(1, Ordering::AcqRel);
        // Under the hub's lock, as every publication: what is published from here on has
        // this sequence number or a later one.
        let next_seq = batcher.pending().next_seq;
        (parts, BatchReceiver { batcher, next_seq })
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
        if let Some(stream) = sessions.get_mut(session_id) {
            // Without subscribers the event is dropped unwrapped (no allocation).
            stream.send(event);
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
        stream.send(event);
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
            .map(SessionStream::buffered_parts)
            .unwrap_or_default()
    }

    /// How many subscribers `session_id` has (per event and per window).
    pub fn subscriber_count(&self, session_id: &str) -> usize {
        self.lock()
            .get(session_id)
            .map_or(0, SessionStream::subscribers)
    }

    /// The sessions that have subscribers right now.
    pub fn subscribed_sessions(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, stream)| stream.subscribers() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Drops sessions that have neither subscribers nor a streaming run (their channels are
    /// otherwise removed lazily, on the next publish). Returns how many are still tracked.
    pub fn collect_idle(&self) -> usize {
        let mut sessions = self.lock();
        sessions.retain(|_, stream| {
            stream.prune();
            !stream.idle()
        });
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

    fn message(id: i64) -> SessionEvent {
        SessionEvent::Message {
            id,
            role: "user".into(),
            kind: "message".into(),
            body: format!("m{id}"),
            created_at_ms: 1,
        }
    }

    fn ids(events: &[SharedEvent]) -> Vec<i64> {
        events
            .iter()
            .filter_map(|event| match **event {
                SessionEvent::Message { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Waits for the next batch (`Some((batch, skip))`), `None` for lag or the end.
    async fn next_batch(receiver: &mut BatchReceiver) -> (Arc<EventBatch>, usize) {
        match receiver.recv().await {
            BatchRecv::Batch { batch, skip } => (batch, skip),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    // Single-threaded runtime: the flush task only runs when the test awaits, so everything
    // published without awaiting is one window, deterministically.
    #[tokio::test]
    async fn a_window_of_events_is_one_shared_batch_with_one_chunk() {
        let hub = EventHub::default();
        let (_, mut a) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        let (_, mut b) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        let (_, mut one_by_one) = hub.subscribe("s");
        assert_eq!(hub.subscriber_count("s"), 3);
        for id in 1..=100 {
            hub.publish("s", message(id));
        }
        let (batch, skip) = next_batch(&mut a).await;
        assert_eq!(skip, 0);
        assert_eq!(
            ids(batch.events()),
            (1..=100).collect::<Vec<_>>(),
            "in order, once"
        );
        assert_eq!(batch.message_ids(), Some((1, 100)));
        let frames: Vec<u8> = (1..=100).flat_map(|id| message(id).sse_frame()).collect();
        assert_eq!(&batch.chunk()[..], &frames[..], "the frames back to back");
        let (same, _) = next_batch(&mut b).await;
        assert!(Arc::ptr_eq(&batch, &same), "one batch for every subscriber");
        assert!(a.try_recv().is_none(), "nothing else");
        // The per-event receiver still gets each event on its own.
        for id in 1..=100 {
            assert_eq!(one_by_one.try_recv().unwrap(), message(id));
        }
        // The next window: a new batch, continuing the sequence.
        hub.publish("s", message(101));
        let (next, skip) = next_batch(&mut a).await;
        assert_eq!((next.first_seq(), skip), (100, 0));
        assert_eq!(&next.chunk()[..], &message(101).sse_frame()[..]);
    }

    #[tokio::test]
    async fn a_subscriber_joining_mid_window_skips_what_came_before_it() {
        let hub = EventHub::default();
        let (_, mut early) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        hub.begin_parts("s", "run-1");
        for id in 1..=10 {
            hub.publish("s", message(id));
        }
        assert!(hub.publish_part("s", "run-1", "before"));
        let (parts, mut late) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        assert_eq!(
            parts.len(),
            1,
            "the part published before is in the snapshot"
        );
        assert!(hub.publish_part("s", "run-1", "after"));
        for id in 11..=20 {
            hub.publish("s", message(id));
        }
        let (batch, skip) = next_batch(&mut early).await;
        assert_eq!((skip, batch.events().len()), (0, 22));
        let (same, skip) = next_batch(&mut late).await;
        assert!(Arc::ptr_eq(&batch, &same));
        assert_eq!(
            skip, 11,
            "the ten messages and the part before it subscribed"
        );
        let rest = &same.events()[skip..];
        assert!(matches!(&*rest[0], SessionEvent::MessagePart { text, .. } if text == "after"));
        assert_eq!(
            ids(rest),
            (11..=20).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        // Its part of the chunk is a slice of the shared one.
        let frames: Vec<u8> = rest.iter().flat_map(|e| e.sse_frame().to_vec()).collect();
        assert_eq!(&same.chunk_from(skip)[..], &frames[..]);
        assert_eq!(
            same.chunk_from(skip).as_ptr(),
            batch.chunk()[batch.chunk().len() - frames.len()..].as_ptr()
        );
    }

    #[tokio::test]
    async fn a_batch_subscriber_that_falls_behind_the_log_lags() {
        let hub = EventHub::new(8);
        let (_, mut slow) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        let (_, mut fast) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        for round in 0..5 {
            for id in 1..=4 {
                hub.publish("s", message(round * 4 + id)); // would block forever if it waited
            }
            let (batch, _) = next_batch(&mut fast).await; // one window each
            assert_eq!(batch.events().len(), 4);
        }
        // 20 events in 5 batches; the log keeps 8 (the last two batches).
        assert!(matches!(slow.recv().await, BatchRecv::Lagged(12)));
        let (batch, skip) = next_batch(&mut slow).await;
        assert_eq!(
            (ids(&batch.events()[skip..]), skip),
            ((13..=16).collect(), 0)
        );
        let (batch, _) = next_batch(&mut slow).await;
        assert_eq!(ids(batch.events()), (17..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn closing_ends_batch_receivers_after_the_error_event() {
        let hub = EventHub::default();
        let (_, mut receiver) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
        hub.publish("s", message(1));
        hub.close_streams();
        let (batch, _) = next_batch(&mut receiver).await;
        assert_eq!(batch.events()[0], message(1));
        assert!(matches!(
            &*batch.events()[1],
            SessionEvent::Error { message } if message == SHUTDOWN_MESSAGE
        ));
        assert!(matches!(receiver.recv().await, BatchRecv::Closed));
        // Subscribing after the shutdown: the stream ends at once.
        let (_, mut late) = hub.subscribe_batches("t", DEFAULT_COALESCE_WINDOW);
        assert!(matches!(late.recv().await, BatchRecv::Closed));
        drop((receiver, late));
        assert_eq!(
            hub.collect_idle(),
            0,
            "sessions without subscribers are dropped"
        );
    }

    #[test]
    fn a_flush_dropped_with_its_runtime_is_started_again() {
        let hub = EventHub::default();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        let mut receiver = first.block_on(async {
            let (_, receiver) = hub.subscribe_batches("s", DEFAULT_COALESCE_WINDOW);
            hub.publish("s", message(1)); // spawns the flush task, which never runs
            receiver
        });
        drop(first);
        runtime().block_on(async {
            hub.publish("s", message(2));
            let (batch, _) =
                tokio::time::timeout(Duration::from_secs(30), next_batch(&mut receiver))
                    .await
                    .expect("a new flush delivers both events (hung otherwise)");
            assert_eq!(ids(batch.events()), [1, 2]);
        });
    }
}
