//! Debounce timers and flushes (SPEC §4).
//!
//! Each user message (re)arms its session's silence window: the dispatcher stores the window's
//! end (`sessions.flush_due_at_ms`) and bumps the session's `flush_generation` in the same
//! transaction as the message, then hands the resulting [`FlushTicket`] to [`Debouncer::arm`].
//! This module owns what happens next:
//!
//! - **Timers.** One in-memory timer per session; the latest generation wins and replaces the
//!   previous timer. Time comes from an injected [`Clock`] and an injected [`Timers`] wheel, so
//!   tests drive it without sleeping ([`TokioTimers`] is the production wheel).
//! - **The generation fence.** A timer that fires claims its window through
//!   [`Database::claim_flush`], which does nothing unless the session's generation is still the
//!   ticket's: a superseded timer that fires late, or a second replica's timer for the same
//!   window, is a no-op.
//! - **Boot recovery.** Windows are durable, so [`Debouncer::recover`] re-arms every open window
//!   at boot; overdue ones flush at once. A crash inside a window loses no run.
//! - **The cluster owns the windows.** Every replica sweeps the database periodically
//!   ([`Debouncer::sweep`], [`Debouncer::spawn_sweeper`]) for windows overdue by more than one
//!   sweep interval, whoever armed them: a window whose replica died, or whose timer was never
//!   armed, is flushed at most two intervals after its end. The generation fence makes a
//!   duplicate claim harmless.
//! - **FlushAll.** [`Debouncer::flush_all`] (graceful shutdown, after inbound delivery stopped)
//!   flushes the windows this replica armed itself, at once, and waits for in-flight flushes;
//!   later arms flush inline. Windows only in the database are left to the other replicas'
//!   sweeps (or the next boot).
//!
//! It does not touch wasm or HTTP: the flush action (calling the plugin's outbound flush and
//! carrying out its actions) is an injected [`FlushHandler`]. The claim itself already marks the
//! session's run pending.
//!
//! Flush tasks are spawned on the current Tokio runtime: use a [`Debouncer`] inside one.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::domain::Clock;
use crate::store::{Database, FlushBatch, FlushTicket, StoreError};

/// How long after a failed claim (a database error) the window is tried again.
pub const CLAIM_RETRY_MS: i64 = 5_000;

/// A boxed, sendable future: what [`FlushHandler::flush`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The flush action: what the host does with a claimed batch (call the plugin's outbound flush
/// and carry out its actions).
///
/// It runs after the claim committed: the batch's messages count as flushed and the run is
/// pending whatever the handler does, so an error is logged (with the session) and not retried.
/// Any `Fn(FlushBatch) -> impl Future<Output = anyhow::Result<()>>` closure is a handler.
pub trait FlushHandler: Send + Sync {
    /// Handles one claimed batch (never empty).
    fn flush(&self, batch: FlushBatch) -> BoxFuture<anyhow::Result<()>>;
}

impl<F, Fut> FlushHandler for F
where
    F: Fn(FlushBatch) -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn flush(&self, batch: FlushBatch) -> BoxFuture<anyhow::Result<()>> {
        Box::pin(self(batch))
    }
}

/// What a timer runs when it fires.
pub type TimerCallback = Box<dyn FnOnce() + Send + 'static>;

/// A timer wheel: runs callbacks once the host's clock reaches their due time.
///
/// Production uses [`TokioTimers`]; tests use a manual wheel whose time only moves when the test
/// says so.
pub trait Timers: Send + Sync {
    /// Calls `fire` once, when the clock reaches `due_at_ms` (at once, on another task, if it
    /// already has), unless the returned handle is cancelled or dropped first.
    ///
    /// Must never call `fire` before returning: the caller may hold locks that `fire` takes.
    fn schedule(&self, due_at_ms: i64, fire: TimerCallback) -> TimerHandle;
}

/// A scheduled timer. Dropping or [cancelling](TimerHandle::cancel) it stops the timer if it has
/// not fired yet.
pub struct TimerHandle {
    cancel: Option<Box<dyn FnOnce() + Send + 'static>>,
}

impl TimerHandle {
    /// A handle that runs `cancel` when cancelled or dropped (at most once).
    pub fn new(cancel: impl FnOnce() + Send + 'static) -> TimerHandle {
        TimerHandle {
            cancel: Some(Box::new(cancel)),
        }
    }

    /// Stops the timer if it has not fired yet.
    pub fn cancel(self) {
        drop(self);
    }

    /// Lets go of the handle without cancelling anything (the timer has fired).
    pub fn disarm(mut self) {
        self.cancel = None;
    }
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHandle")
            .field("armed", &self.cancel.is_some())
            .finish()
    }
}

/// The production timer wheel: one Tokio task per timer, sleeping until the clock reaches the
/// due time.
///
/// The task re-reads the clock after each sleep and sleeps again if it woke early, so a timer
/// never fires before its due time by the clock (which the claim's due check relies on).
#[derive(Clone)]
pub struct TokioTimers {
    clock: Arc<dyn Clock>,
}

impl TokioTimers {
    /// A wheel measuring due times with `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> TokioTimers {
        TokioTimers { clock }
    }
}

impl fmt::Debug for TokioTimers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioTimers").finish_non_exhaustive()
    }
}

impl Timers for TokioTimers {
    fn schedule(&self, due_at_ms: i64, fire: TimerCallback) -> TimerHandle {
        let clock = Arc::clone(&self.clock);
        let task = tokio::spawn(async move {
            loop {
                let left = due_at_ms.saturating_sub(clock.now_ms());
                if left <= 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(left.unsigned_abs())).await;
            }
            fire();
        });
        let abort = task.abort_handle();
        TimerHandle::new(move || abort.abort())
    }
}

/// The debouncer: per-session flush timers over the durable windows in the [`Database`].
///
/// A cheap, cloneable handle; all clones share the timers. Dropping the last clone cancels every
/// timer (the windows stay in the database for [`Debouncer::recover`]).
#[derive(Clone)]
pub struct Debouncer {
    inner: Arc<Inner>,
}

impl fmt::Debug for Debouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state();
        f.debug_struct("Debouncer")
            .field("armed", &state.armed.len())
            .field("stopped", &state.stopped)
            .field("in_flight", &*self.inner.in_flight.borrow())
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    clock: Arc<dyn Clock>,
    timers: Arc<dyn Timers>,
    handler: Arc<dyn FlushHandler>,
    state: Mutex<State>,
    /// Number of flushes spawned and not finished yet.
    in_flight: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    /// The live timer of each session with an open window.
    armed: HashMap<String, Armed>,
    /// Set by FlushAll: no more timers; arms flush inline.
    stopped: bool,
}

struct Armed {
    generation: i64,
    timer: TimerHandle,
}

/// Whether a claim waits for the window's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Only once the window is due (timers, recovery).
    WhenDue,
    /// At once (FlushAll and arms after it).
    Early,
}

impl Debouncer {
    /// A debouncer flushing windows stored in `db`, measuring time with `clock`, waiting with
    /// `timers` and handing claimed batches to `handler`.
    pub fn new(
        db: Database,
        clock: Arc<dyn Clock>,
        timers: Arc<dyn Timers>,
        handler: Arc<dyn FlushHandler>,
    ) -> Debouncer {
        Debouncer {
            inner: Arc::new(Inner {
                db,
                clock,
                timers,
                handler,
                state: Mutex::new(State::default()),
                in_flight: watch::Sender::new(0),
            }),
        }
    }

    /// (Re)arms the session's timer for `ticket`.
    ///
    /// The latest generation wins: a ticket newer than the session's live timer replaces it; a
    /// ticket of the same or an older generation is ignored (so recovery never delays or
    /// duplicates a live window). A ticket already due flushes at once, on its own task.
    ///
    /// After [`Debouncer::flush_all`] nothing waits any more: the window is flushed inline and
    /// this returns once it has been handled.
    pub async fn arm(&self, ticket: FlushTicket) {
        if let Some(ticket) = self.inner.schedule(ticket) {
            let span = flush_span(&ticket);
            self.inner
                .flush(ticket, Claim::Early)
                .instrument(span)
                .await;
        }
    }

    /// Re-arms every open window stored in the database (boot recovery); overdue windows flush
    /// at once. Returns how many windows were found.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let tickets = self.inner.db.pending_flushes().await?;
        let found = tickets.len();
        let now_ms = self.inner.clock.now_ms();
        let overdue = tickets.iter().filter(|t| t.due_at_ms <= now_ms).count();
        for ticket in tickets {
            self.arm(ticket).await;
        }
        tracing::info!(windows = found, overdue, "re-armed open debounce windows");
        Ok(found)
    }

    /// Arms every window that is due within `horizon_ms` (overdue ones flush at once), wherever
    /// it was armed first; returns how many were found. Live timers of the same generation are
    /// kept (see [`Debouncer::arm`]).
    pub async fn sweep(&self, horizon_ms: i64) -> Result<usize, StoreError> {
        let until = self.inner.clock.now_ms().saturating_add(horizon_ms);
        let tickets = self.inner.db.overdue_flushes(until).await?;
        let found = tickets.len();
        for ticket in tickets {
            self.arm(ticket).await;
        }
        Ok(found)
    }

    /// Sweeps every `interval` until `stop` is cancelled, for windows already overdue by an
    /// `interval`: the timer of the replica that armed a window fires first and claims it, so a
    /// healthy cluster's sweep finds nothing (a cheap indexed query), and a dead replica's window
    /// is flushed at most two intervals after its end.
    pub fn spawn_sweeper(
        &self,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let debouncer = self.clone();
        let horizon_ms = -i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if debouncer.inner.state().stopped {
                        return;
                    }
                    match debouncer.sweep(horizon_ms).await {
                        Ok(0) => {}
                        Ok(found) => tracing::trace!(found, "debounce sweep armed windows"),
                        Err(e) => tracing::warn!("debounce sweep failed (next one retries): {e}"),
                    }
                }
            }
            .instrument(tracing::info_span!("debounce_sweep")),
        )
    }

    /// Graceful shutdown, once inbound delivery has stopped: flushes the windows this replica
    /// armed, once, and returns their sessions.
    ///
    /// Stops accepting timers (later [`arm`](Debouncer::arm)s flush inline), cancels the live
    /// timers, flushes each armed window without waiting for its end, and waits until every
    /// flush in flight, including ones that started earlier, has finished. Windows this replica
    /// never armed are not touched (another replica's sweep or the next boot flushes them); a
    /// window whose claim fails stays in the database the same way.
    pub async fn flush_all(&self) -> Vec<String> {
        let armed: Vec<(String, i64)> = {
            let mut state = self.inner.state();
            state.stopped = true;
            // Dropping the handles cancels the timers.
            state
                .armed
                .drain()
                .map(|(session_id, armed)| (session_id, armed.generation))
                .collect()
        };
        let now_ms = self.inner.clock.now_ms();
        let sessions: Vec<String> = armed.iter().map(|(session, _)| session.clone()).collect();
        let count = armed.len();
        for (session_id, generation) in armed {
            self.inner.spawn_flush(
                FlushTicket {
                    session_id,
                    generation,
                    due_at_ms: now_ms,
                },
                Claim::Early,
            );
        }
        self.wait_idle().await;
        tracing::info!(
            windows = count,
            "FlushAll: flushed this replica's debounce windows"
        );
        sessions
    }

    /// Waits until no flush is in flight (flushes that fired or were started before the call,
    /// and any started while waiting).
    pub async fn wait_idle(&self) {
        let mut idle = self.inner.in_flight.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = idle.wait_for(|in_flight| *in_flight == 0).await;
    }

    /// How many sessions have a live timer.
    pub fn armed(&self) -> usize {
        self.inner.state().armed.len()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every update is a single map operation).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms `ticket` (see [`Debouncer::arm`]). Returns it back if the debouncer is stopped and
    /// the caller must flush it inline.
    fn schedule(self: &Arc<Self>, ticket: FlushTicket) -> Option<FlushTicket> {
        let mut state = self.state();
        if state.stopped {
            return Some(ticket);
        }
        if let Some(live) = state.armed.get(&ticket.session_id)
            && live.generation >= ticket.generation
        {
            tracing::trace!(
                session_id = %ticket.session_id,
                generation = ticket.generation,
                live_generation = live.generation,
                "debounce window already armed with a newer or equal generation; ignored"
            );
            return None;
        }
        if ticket.due_at_ms <= self.clock.now_ms() {
            // Dropping an older live timer cancels it.
            state.armed.remove(&ticket.session_id);
            drop(state);
            self.spawn_flush(ticket, Claim::WhenDue);
            return None;
        }
        let weak = Arc::downgrade(self);
        let fired = ticket.clone();
        let timer = self.timers.schedule(
            ticket.due_at_ms,
            Box::new(move || {
                if let Some(inner) = weak.upgrade() {
                    inner.on_timer(fired);
                }
            }),
        );
        tracing::trace!(
            session_id = %ticket.session_id,
            generation = ticket.generation,
            due_at_ms = ticket.due_at_ms,
            "debounce window armed"
        );
        // Replacing an older live timer drops, and so cancels, it.
        state.armed.insert(
            ticket.session_id,
            Armed {
                generation: ticket.generation,
                timer,
            },
        );
        None
    }

    /// A timer fired: flush its window unless it was superseded or FlushAll took over.
    fn on_timer(self: Arc<Self>, ticket: FlushTicket) {
        {
            let mut state = self.state();
            match state.armed.get(&ticket.session_id) {
                Some(live) if live.generation == ticket.generation => {}
                // Superseded (its replacement owns the window) or stopped (FlushAll owns it).
                _ => return,
            }
            if let Some(live) = state.armed.remove(&ticket.session_id) {
                live.timer.disarm();
            }
            // Counted in flight before the lock is released, so FlushAll waits for it.
            self.begin_flight();
        }
        self.spawn_counted(ticket, Claim::WhenDue);
    }

    fn begin_flight(&self) {
        self.in_flight.send_modify(|n| *n += 1);
    }

    /// Spawns a flush of `ticket` on its own task, counted in flight.
    fn spawn_flush(self: &Arc<Self>, ticket: FlushTicket, claim: Claim) {
        self.begin_flight();
        Arc::clone(self).spawn_counted(ticket, claim);
    }

    /// Spawns a flush already counted in flight by [`Inner::begin_flight`].
    fn spawn_counted(self: Arc<Self>, ticket: FlushTicket, claim: Claim) {
        let span = flush_span(&ticket);
        tokio::spawn(
            async move {
                let _flight = InFlight(&self.in_flight);
                self.flush(ticket, claim).await;
            }
            .instrument(span),
        );
    }

    /// Claims the window and hands the batch to the handler; logs every failure.
    async fn flush(self: &Arc<Self>, ticket: FlushTicket, claim: Claim) {
        let now_ms = self.clock.now_ms();
        let claimed = match claim {
            Claim::WhenDue => {
                self.db
                    .claim_flush(&ticket.session_id, ticket.generation, now_ms)
                    .await
            }
            Claim::Early => {
                self.db
                    .claim_flush_early(&ticket.session_id, ticket.generation, now_ms)
                    .await
            }
        };
        let batch = match claimed {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                tracing::debug!("debounce window superseded or already flushed; nothing to do");
                return;
            }
            Err(error) => {
                self.retry_after_error(ticket, now_ms, &error);
                return;
            }
        };
        if batch.messages.is_empty() {
            tracing::debug!("debounce window closed without user messages");
            return;
        }
        let messages = batch.messages.len();
        let last_message_id = batch.messages.last().map(|m| m.id);
        match self.handler.flush(batch).await {
            Ok(()) => tracing::debug!(messages, last_message_id, "debounce window flushed"),
            Err(error) => tracing::error!(
                messages,
                last_message_id,
                error = %format!("{error:#}"),
                "flush handler failed; the batch was claimed and the run is pending"
            ),
        }
    }

    /// A claim failed (the database): the window is still open, so try again later, unless a
    /// newer timer owns the session or the debouncer is shutting down.
    fn retry_after_error(self: &Arc<Self>, ticket: FlushTicket, now_ms: i64, error: &StoreError) {
        if self.state().stopped {
            tracing::error!(
                %error,
                "claiming the debounce window failed during shutdown; it stays open for the \
                 next boot's recovery"
            );
            return;
        }
        tracing::error!(
            %error,
            retry_in_ms = CLAIM_RETRY_MS,
            "claiming the debounce window failed; retrying"
        );
        let retry = FlushTicket {
            due_at_ms: now_ms.saturating_add(CLAIM_RETRY_MS),
            ..ticket
        };
        if let Some(retry) = self.schedule(retry) {
            // FlushAll started in between and may have missed this window's claim.
            self.spawn_flush(retry, Claim::Early);
        }
    }
}

/// Counts one flush out of flight when dropped (also if the flush panics).
struct InFlight<'a>(&'a watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn flush_span(ticket: &FlushTicket) -> tracing::Span {
    tracing::info_span!(
        "debounce_flush",
        session_id = %ticket.session_id,
        generation = ticket.generation,
        due_at_ms = ticket.due_at_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SystemClock;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn tokio_timers_fire_at_due_time_unless_cancelled() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let timers = TokioTimers::new(Arc::clone(&clock));
        let (fired, mut fired_rx) = mpsc::unbounded_channel();
        let schedule = |name: &'static str, due_at_ms: i64| {
            let fired = fired.clone();
            let clock = Arc::clone(&clock);
            timers.schedule(
                due_at_ms,
                Box::new(move || {
                    let _ = fired.send((name, clock.now_ms() >= due_at_ms));
                }),
            )
        };
        let start = clock.now_ms();
        let cancelled = schedule("cancelled", start + 10);
        let kept = schedule("kept", start + 30);
        let past = schedule("past", start - 1_000);
        cancelled.cancel();

        let mut seen = Vec::new();
        for _ in 0..2 {
            let next = tokio::time::timeout(Duration::from_secs(10), fired_rx.recv()).await;
            seen.push(next.expect("timer fires").expect("channel open"));
        }
        assert_eq!(seen, [("past", true), ("kept", true)]);
        kept.disarm();
        past.disarm();
        drop(fired);
        assert_eq!(
            fired_rx.recv().await,
            None,
            "the cancelled timer never fired"
        );
    }
}
