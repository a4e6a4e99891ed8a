//! Runs (SPEC §5): the run lifecycle of sessions as a service — the store's transitions
//! ([`RunStore`]) plus event publishing ([`EventHub`]), arming the debounce for promoted queues,
//! and stale-run recovery at boot and periodically.
//!
//! Owns the order of side effects around a transition (store first, then events; part
//! buffering before the `running` status). It must not hold SQL (that is `crate::store::runs`),
//! run agents (`crate::agents`) or speak HTTP (`crate::api`). The worker HTTP API, the SSE
//! endpoint and built-in agents call this service; the admin API and CLI call its operations.
//!
//! Every state change publishes a `status` event read back from the database, queue changes a
//! `queue_update` with the whole queue, stored rows a `message`; failures also an `error`.
//! Events are best effort: a failed read-back is logged, never returned as the operation's
//! error (the transition itself is durable).

pub mod compaction;
pub mod events;
pub mod executor;
pub mod observer;
pub mod relay;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use compaction::Compactor;
pub use events::{EventHub, EventReceiver, EventTap, SessionEvent, SharedEvent};
pub use observer::{NoopObserver, PendingSignal, RunEndObserver, RunEnded, RunOutcome};

use crate::batch::Debouncer;
use crate::domain::Clock;
use crate::metrics::{Metrics, RunResult};
use crate::store::{
    Database, Edited, Finished, FlushTicket, Message, QUEUE_CAP, QueuedMessage, ReleaseOutcome,
    RunClaim, RunEnd, RunError, RunFinish, RunStatus, RunStore, StoreError, Submitted, Transition,
};

/// Default stale window: a run whose heartbeat is older goes back to pending (≈10 missed 30 s
/// heartbeats).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5 * 60);

/// Tunables of the run service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// A running run whose last heartbeat is older than this is recovered (back to pending).
    pub stale_after: Duration,
    /// How often the recovery loop looks for stale runs (default `stale_after / 5`).
    pub recovery_interval: Duration,
    /// Queued messages per session beyond which API submissions are refused (HTTP 429).
    /// Channel messages are never refused; they interrupt the run at [`QUEUE_CAP`].
    pub queue_cap: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings::with_stale_after(DEFAULT_STALE_AFTER)
    }
}

impl RunSettings {
    /// Settings with this stale window, recovery every fifth of it, and the default queue cap.
    pub fn with_stale_after(stale_after: Duration) -> RunSettings {
        RunSettings {
            stale_after,
            recovery_interval: (stale_after / 5).max(Duration::from_millis(1)),
            queue_cap: QUEUE_CAP,
        }
    }
}

/// One pass of a driven recovery loop ([`RunService::spawn_recovery_loop_driven`]): the loop
/// answers with the sessions the pass recovered.
pub type RecoveryTick = oneshot::Sender<Vec<String>>;

/// The run service: a cheap, cloneable handle (all clones share the hub and the debouncer).
#[derive(Clone)]
pub struct RunService {
    store: RunStore,
    clock: Arc<dyn Clock>,
    hub: EventHub,
    settings: RunSettings,
    debouncer: Option<Debouncer>,
    /// Raised whenever a published status is `pending` (wakes long-polling workers).
    pending: PendingSignal,
    /// Sees every published part (streamed replies).
    part_observer: Option<PartObserver>,
    /// Told when a run stops without a reply (its streamed reply is ended).
    stop_observer: Option<StopObserver>,
    /// Told when a run is recovered as stale (its typing indicator is cleared).
    recovery_observer: Option<StopObserver>,
    /// Counts and times run ends (`/metrics`).
    metrics: Option<Arc<Metrics>>,
}

/// How a run handed back through [`RunService::release`] counts in `/metrics`.
fn release_result(end: &RunEnd) -> RunResult {
    match end {
        RunEnd::Completed => RunResult::Completed,
        RunEnd::Failed(_) => RunResult::Failed,
        RunEnd::Interrupted => RunResult::Interrupted,
        RunEnd::Shutdown => RunResult::Requeued,
    }
}

/// A callback for every published reply part: `(session id, run id, text)`. It must not block.
pub type PartObserver = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// A callback for a run that stopped without a reply — interrupted (an interrupt, a promoted
/// or edited message) or handed back at shutdown: `(session id, run id)`. It must not block.
pub type StopObserver = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for RunService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunService")
            .field("settings", &self.settings)
            .field("arms_debouncer", &self.debouncer.is_some())
            .finish_non_exhaustive()
    }
}

impl RunService {
    /// A service on `db`, reading time from `clock` and publishing to `hub`. Without
    /// [`RunService::with_debouncer`] the debounce windows armed for promoted queues stay
    /// durable only (returned to the caller; a booting host's debouncer recovers them).
    pub fn new(
        db: &Database,
        clock: Arc<dyn Clock>,
        hub: EventHub,
        settings: RunSettings,
    ) -> RunService {
        RunService {
            store: db.runs(),
            clock,
            hub,
            settings,
            debouncer: None,
            pending: PendingSignal::new(),
            part_observer: None,
            stop_observer: None,
            recovery_observer: None,
            metrics: None,
        }
    }

    /// Counts run ends by outcome and times runs acquired here in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> RunService {
        self.metrics = Some(metrics);
        self
    }

    /// Run `run` of `session` ended (if `run` is `None`: whichever run the session had).
    fn count_end(&self, session: &str, run: Option<&str>, result: RunResult) {
        if let Some(metrics) = &self.metrics {
            metrics.run_ended(session, run, result);
        }
    }

    /// Also hands every debounce window it arms to `debouncer` (the in-memory wake-up).
    pub fn with_debouncer(mut self, debouncer: Debouncer) -> RunService {
        self.debouncer = Some(debouncer);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// The event hub.
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// The settings.
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// The "a session became pending" signal, raised for every `pending` status this service
    /// publishes (workers waiting in a long-poll subscribe to it). Code that makes a session
    /// pending without this service should call [`RunService::publish_session_state`] (or
    /// [`PendingSignal::notify`]).
    pub fn pending_signal(&self) -> &PendingSignal {
        &self.pending
    }

    /// "Now" on the service's (injectable) clock, in epoch ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    // ---------------------------------------------------------------- worker side

    /// Acquires the oldest pending run of `agent` for `worker_id` (see [`RunStore::acquire`]),
    /// starts buffering its parts and publishes `running`.
    pub async fn acquire(
        &self,
        agent: &str,
        worker_id: &str,
    ) -> Result<Option<RunClaim>, StoreError> {
        self.acquire_in(agent, worker_id, None).await
    }

    /// [`RunService::acquire`] limited to session `only` when given (see
    /// [`RunStore::acquire_in`]).
    pub async fn acquire_in(
        &self,
        agent: &str,
        worker_id: &str,
        only: Option<&str>,
    ) -> Result<Option<RunClaim>, StoreError> {
        let claim = self
            .store
            .acquire_in(agent, worker_id, self.now_ms(), only)
            .await?;
        if let Some(claim) = &claim {
            tracing::info!(session = %claim.session_id, run = %claim.run_id, worker = %worker_id, agent, "run acquired");
            if let Some(metrics) = &self.metrics {
                metrics.run_started(&claim.session_id, &claim.run_id);
            }
            self.hub.begin_parts(&claim.session_id, &claim.run_id);
            self.publish_status(&claim.session_id).await;
        }
        Ok(claim)
    }

    /// Heartbeat of run `run_id`; `false` means the worker lost the run and must stop.
    pub async fn heartbeat(&self, session_id: &str, run_id: &str) -> Result<bool, StoreError> {
        let owned = self
            .store
            .heartbeat(session_id, run_id, self.now_ms())
            .await?;
        if !owned {
            tracing::info!(session = %session_id, run = %run_id, "heartbeat of a run that is no longer owned: the worker must stop");
        }
        Ok(owned)
    }

    /// The messages run `run_id` works on (`None`: not the owner). See [`RunStore::run_context`].
    pub async fn run_context(
        &self,
        session_id: &str,
        run_id: &str,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        self.store.run_context(session_id, run_id).await
    }

    /// Publishes a streamed piece of run `run_id`'s reply (`message_part`); `false` if that run
    /// is not streaming in this host (ended, or lost its ownership).
    pub fn publish_part(&self, session_id: &str, run_id: &str, text: &str) -> bool {
        let published = self.hub.publish_part(session_id, run_id, text);
        if published && let Some(observer) = &self.part_observer {
            observer(session_id, run_id, text);
        }
        published
    }

    /// Also hands every published part to `observer` (the channel's streamed reply).
    pub fn with_part_observer(mut self, observer: PartObserver) -> RunService {
        self.part_observer = Some(observer);
        self
    }

    /// Also tells `observer` about every run that stops without a reply (see
    /// [`RunService::run_stopped`]).
    pub fn with_stop_observer(mut self, observer: StopObserver) -> RunService {
        self.stop_observer = Some(observer);
        self
    }

    /// Also tells `observer` about every run recovered as stale (its worker vanished).
    pub fn with_recovery_observer(mut self, observer: StopObserver) -> RunService {
        self.recovery_observer = Some(observer);
        self
    }

    /// Run `run_id` of `session_id` stopped without a reply (interrupted, or handed back at
    /// shutdown): tells the stop observer, which ends its streamed reply. Called by this
    /// service for the interrupts it carries out and by workers that see their run stop; a
    /// second call for the same run finds nothing left to end.
    pub fn run_stopped(&self, session_id: &str, run_id: &str) {
        if let Some(observer) = &self.stop_observer {
            observer(session_id, run_id);
        }
    }

    /// Stores run `run_id`'s reply (fenced: `None` if not the owner), publishes it and clears
    /// the buffered parts.
    pub async fn append_reply(
        &self,
        session_id: &str,
        run_id: &str,
        body: &str,
    ) -> Result<Option<Message>, StoreError> {
        let message = self
            .store
            .append_reply(session_id, run_id, body, self.now_ms())
            .await?;
        if let Some(message) = &message {
            self.hub.clear_parts(session_id);
            self.hub.publish(session_id, SessionEvent::message(message));
        }
        Ok(message)
    }

    /// Ends run `run_id` for good (see [`RunStore::finish_run`]: reply, state, queue and the
    /// outbox row in one fenced transaction), then publishes what changed as
    /// [`RunService::append_reply`] and [`RunService::release`] do. `None` — nothing stored,
    /// nothing published — when the caller no longer owns the run (another `complete` won, an
    /// interrupt, a stale recovery).
    pub async fn finish_run(
        &self,
        session_id: &str,
        run_id: &str,
        finish: &RunFinish,
    ) -> Result<Option<Finished>, StoreError> {
        self.finish_run_leased(session_id, run_id, finish, None)
            .await
    }

    /// [`RunService::finish_run`] with the outbox row claimed at once for `lease` (see
    /// [`RunStore::finish_run_leased`]).
    pub async fn finish_run_leased(
        &self,
        session_id: &str,
        run_id: &str,
        finish: &RunFinish,
        lease: Option<(&str, i64)>,
    ) -> Result<Option<Finished>, StoreError> {
        let finished = self
            .store
            .finish_run_leased(session_id, run_id, finish, self.now_ms(), lease)
            .await?;
        let Some(done) = &finished else {
            tracing::info!(session = %session_id, run = %run_id, "run end by a worker that no longer owns the run: nothing stored");
            return Ok(None);
        };
        if let Some(message) = &done.reply {
            self.hub.clear_parts(session_id);
            self.hub.publish(session_id, SessionEvent::message(message));
        }
        let released = &done.released;
        tracing::info!(session = %session_id, run = %run_id, state = %released.state, promoted = released.promoted.len(), outbox = done.outbox_id, "run ended");
        let result = match finish {
            RunFinish::Completed { .. } => RunResult::Completed,
            RunFinish::Failed { .. } => RunResult::Failed,
        };
        self.count_end(session_id, Some(run_id), result);
        self.hub.end_parts(session_id);
        self.after_promotion(session_id, &released.promoted, released.flush.as_ref())
            .await;
        self.publish_status(session_id).await;
        if let RunFinish::Failed { error, .. } = finish {
            self.hub.publish(
                session_id,
                SessionEvent::Error {
                    message: error.clone(),
                },
            );
        }
        Ok(finished)
    }

    /// Ends run `run_id` (see [`RunStore::release`]): stops part buffering, publishes the
    /// promoted queue, the new status and, for a failure, an `error`; arms the debounce for
    /// promoted messages. A non-owner changes nothing and publishes nothing.
    pub async fn release(
        &self,
        session_id: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<ReleaseOutcome, StoreError> {
        let outcome = self
            .store
            .release(session_id, run_id, &end, self.now_ms())
            .await?;
        match &outcome {
            ReleaseOutcome::NotOwner => {
                tracing::info!(session = %session_id, run = %run_id, end = release_result(&end).as_str(), "release by a worker that no longer owns the run: nothing changed");
            }
            ReleaseOutcome::Released(released) => {
                tracing::info!(session = %session_id, run = %run_id, state = %released.state, promoted = released.promoted.len(), "run ended");
                self.count_end(session_id, Some(run_id), release_result(&end));
                self.hub.end_parts(session_id);
                self.after_promotion(session_id, &released.promoted, released.flush.as_ref())
                    .await;
                self.publish_status(session_id).await;
                if let RunEnd::Failed(error) = &end {
                    self.hub.publish(
                        session_id,
                        SessionEvent::Error {
                            message: error.clone(),
                        },
                    );
                }
            }
        }
        Ok(outcome)
    }

    // ---------------------------------------------------------------- recovery

    /// Returns runs whose heartbeat is older than the stale window to pending and publishes
    /// their status. Returns the recovered sessions.
    pub async fn recover_stale(&self) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        let stale_before = now.saturating_sub(self.settings.stale_after.as_millis() as i64);
        let recovered = self.store.recover_stale(stale_before, now).await?;
        for (session_id, run_id) in &recovered {
            tracing::warn!(session = %session_id, run = %run_id, "stale run (no heartbeat within the stale window) returned to pending");
            self.count_end(session_id, None, RunResult::Stale);
            self.hub.end_parts(session_id);
            // Its worker is gone: close what it streamed and clear the typing indicator (the
            // retry is a new run with its own stream and indicator).
            if let Some(observer) = &self.recovery_observer {
                observer(session_id, run_id);
            }
            self.publish_status(session_id).await;
            self.publish_queue(session_id).await;
        }
        Ok(recovered.into_iter().map(|(session, _)| session).collect())
    }

    /// Boot recovery: runs left `running` by a host that died are stale once their heartbeat is
    /// older than the window; they go back to pending (see [`RunService::recover_stale`]).
    pub async fn recover_at_boot(&self) -> Result<Vec<String>, StoreError> {
        let recovered = self.recover_stale().await?;
        if !recovered.is_empty() {
            tracing::info!(
                recovered = recovered.len(),
                "stale runs from before the last stop returned to pending"
            );
        }
        Ok(recovered)
    }

    /// One recovery pass; failures are logged (the next pass retries).
    async fn recovery_pass(&self) -> Vec<String> {
        match self.recover_stale().await {
            Ok(recovered) => recovered,
            Err(e) => {
                tracing::error!("stale-run recovery failed (retrying at the next pass): {e}");
                Vec::new()
            }
        }
    }

    /// Spawns the periodic recovery: a pass every [`RunSettings::recovery_interval`] (the
    /// first one interval from now; boot recovery is [`RunService::recover_at_boot`]) until
    /// `shutdown` resolves. Await the handle to wait for the loop to end.
    pub fn spawn_recovery_loop(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let service = self.clone();
        let period = self.settings.recovery_interval;
        tokio::spawn(
            async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tokio::pin!(shutdown);
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = ticks.tick() => {
                            service.recovery_pass().await;
                        }
                    }
                }
                tracing::debug!("stale-run recovery loop stopped");
            }
            .instrument(tracing::info_span!("run_recovery")),
        )
    }

    /// Spawns a recovery loop driven by the caller instead of a timer: one pass per
    /// [`RecoveryTick`] received, answered with the sessions it recovered. Ends when every
    /// sender is dropped. (For tests and embedders with their own scheduling.)
    pub fn spawn_recovery_loop_driven(
        &self,
        mut ticks: mpsc::Receiver<RecoveryTick>,
    ) -> JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(
            async move {
                while let Some(reply) = ticks.recv().await {
                    let recovered = service.recovery_pass().await;
                    let _ = reply.send(recovered);
                }
            }
            .instrument(tracing::info_span!("run_recovery")),
        )
    }

    // ---------------------------------------------------------------- operations

    /// Submits a user message through the API (see [`RunStore::enqueue_api`]; refused with
    /// [`RunError::QueueFull`] beyond [`RunSettings::queue_cap`] queued messages).
    pub async fn submit(&self, session_id: &str, body: &str) -> Result<Submitted, RunError> {
        let submitted = self
            .store
            .enqueue_api(session_id, body, self.settings.queue_cap, self.now_ms())
            .await?;
        match &submitted {
            Submitted::Queued(queued) => {
                tracing::info!(session = %session_id, queued = queued.id, "API message queued behind the active run");
                self.publish_queue(session_id).await;
            }
            Submitted::Appended(message) => {
                tracing::info!(session = %session_id, message = message.id, "API message stored; run pending");
                self.hub.publish(session_id, SessionEvent::message(message));
                self.publish_status(session_id).await;
            }
        }
        Ok(submitted)
    }

    /// Promotes queued message `queued_id` now (interrupting a running run); the session
    /// becomes pending. See [`RunStore::promote_queued`].
    pub async fn promote_queued(
        &self,
        session_id: &str,
        queued_id: i64,
    ) -> Result<(Message, Transition), RunError> {
        let (message, transition) = self
            .store
            .promote_queued(session_id, queued_id, self.now_ms())
            .await?;
        tracing::info!(session = %session_id, queued = queued_id, message = message.id, interrupted_run = transition.interrupted_run.as_deref(), "queued message promoted");
        self.after_interrupt(session_id, &transition);
        self.publish_queue(session_id).await;
        self.hub
            .publish(session_id, SessionEvent::message(&message));
        self.publish_status(session_id).await;
        Ok((message, transition))
    }

    /// Deletes queued message `queued_id`; `false` if there is no such queued message.
    pub async fn delete_queued(&self, session_id: &str, queued_id: i64) -> Result<bool, RunError> {
        let deleted = self.store.delete_queued(session_id, queued_id).await?;
        if deleted {
            tracing::info!(session = %session_id, queued = queued_id, "queued message deleted");
            self.publish_queue(session_id).await;
        }
        Ok(deleted)
    }

    /// Interrupts the session's run (see [`RunStore::interrupt`]); promoted queued messages are
    /// published and their debounce armed.
    pub async fn interrupt(&self, session_id: &str) -> Result<Transition, RunError> {
        let transition = self.store.interrupt(session_id, self.now_ms()).await?;
        tracing::info!(session = %session_id, state = %transition.state, interrupted_run = transition.interrupted_run.as_deref(), "interrupt");
        self.after_interrupt(session_id, &transition);
        self.after_promotion(session_id, &transition.promoted, transition.flush.as_ref())
            .await;
        if transition.interrupted_run.is_some() {
            self.publish_status(session_id).await;
        }
        Ok(transition)
    }

    /// Edits a user message, truncating what follows and clearing the queue (see
    /// [`RunStore::edit_message`]).
    pub async fn edit_message(
        &self,
        session_id: &str,
        message_id: i64,
        body: &str,
    ) -> Result<Edited, RunError> {
        let edited = self
            .store
            .edit_message(session_id, message_id, body, self.now_ms())
            .await?;
        tracing::info!(session = %session_id, message = message_id, truncated = edited.truncated, dequeued = edited.dequeued, "message edited");
        if let Some(run_id) = &edited.interrupted_run {
            tracing::info!(session = %session_id, run = %run_id, "run interrupted by an edit");
            self.count_end(session_id, Some(run_id), RunResult::Interrupted);
            self.hub.end_parts(session_id);
            self.run_stopped(session_id, run_id);
        }
        self.hub
            .publish(session_id, SessionEvent::message(&edited.message));
        self.hub
            .publish(session_id, SessionEvent::QueueUpdate { queue: Vec::new() });
        self.publish_status(session_id).await;
        Ok(edited)
    }

    /// Deletes a session with its messages and queue; `false` if it did not exist. Subscribers
    /// get an `error` event.
    pub async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let deleted = self.store.delete_session(session_id).await?;
        if deleted {
            tracing::info!(session = %session_id, "session deleted");
            if let Some(metrics) = &self.metrics {
                metrics.run_forgotten(session_id);
            }
            self.hub.end_parts(session_id);
            self.hub.publish(
                session_id,
                SessionEvent::Error {
                    message: "the session was deleted".into(),
                },
            );
        }
        Ok(deleted)
    }

    /// The session's run status, if it exists.
    pub async fn status(&self, session_id: &str) -> Result<Option<RunStatus>, StoreError> {
        self.store.get_run_state(session_id).await
    }

    /// The session's queue, oldest first.
    pub async fn queue(&self, session_id: &str) -> Result<Vec<QueuedMessage>, StoreError> {
        self.store.list_queue(session_id).await
    }

    /// Publishes what the dispatcher just did to a session outside this service — message
    /// `message_id` stored (0: the turn was queued instead), and the status and queue that may
    /// have changed with it — if anyone can be listening (subscribers here, or other replicas
    /// through the relay). Best effort, like every publication.
    pub async fn publish_ingested(&self, session_id: &str, message_id: i64) {
        if self.hub.subscriber_count(session_id) == 0 && !self.hub.is_tapped() {
            return;
        }
        if message_id > 0 {
            match self.store.messages_after(session_id, message_id - 1).await {
                Ok(messages) => {
                    if let Some(message) = messages.iter().find(|m| m.id == message_id) {
                        self.hub.publish(session_id, SessionEvent::message(message));
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %session_id, "reading an ingested message back for its event failed: {e}")
                }
            }
        }
        self.publish_session_state(session_id).await;
    }

    /// Publishes the session's current status and queue as read from the database — for
    /// changes made outside this service (the dispatcher queueing a channel message, another
    /// replica).
    pub async fn publish_session_state(&self, session_id: &str) {
        self.publish_status(session_id).await;
        self.publish_queue(session_id).await;
    }

    // ---------------------------------------------------------------- helpers

    /// Publishes the status read back from the database.
    async fn publish_status(&self, session_id: &str) {
        match self.store.get_run_state(session_id).await {
            Ok(Some(status)) => {
                if status.state == crate::store::RunState::Pending {
                    self.pending.notify();
                }
                self.hub.publish(
                    session_id,
                    SessionEvent::Status {
                        state: status.state,
                        last_error: status.last_error,
                    },
                )
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(session = %session_id, "status event not published: {e}"),
        }
    }

    /// Publishes the queue read back from the database.
    async fn publish_queue(&self, session_id: &str) {
        match self.store.list_queue(session_id).await {
            Ok(queue) => self
                .hub
                .publish(session_id, SessionEvent::QueueUpdate { queue }),
            Err(e) => tracing::warn!(session = %session_id, "queue event not published: {e}"),
        }
    }

    /// A run lost its ownership: its parts stop streaming.
    fn after_interrupt(&self, session_id: &str, transition: &Transition) {
        if let Some(run_id) = &transition.interrupted_run {
            tracing::info!(session = %session_id, run = %run_id, "run interrupted");
            self.count_end(session_id, Some(run_id), RunResult::Interrupted);
            self.hub.end_parts(session_id);
            self.run_stopped(session_id, run_id);
        }
    }

    /// Publishes promoted messages and the (now shorter) queue, and arms their debounce window.
    async fn after_promotion(
        &self,
        session_id: &str,
        promoted: &[Message],
        flush: Option<&FlushTicket>,
    ) {
        if promoted.is_empty() {
            return;
        }
        for message in promoted {
            self.hub.publish(session_id, SessionEvent::message(message));
        }
        self.publish_queue(session_id).await;
        if let (Some(ticket), Some(debouncer)) = (flush, &self.debouncer) {
            debouncer.arm(ticket.clone()).await;
        }
    }
}
