//! The built-in agent executor: this host acts as the worker for `echo` and `openai` agents.
//!
//! A loop acquires pending runs of every built-in, non-archived agent (the same fenced
//! acquisition external workers use), and runs each one in its own task: context → agent →
//! streamed parts → stored reply → release → delivery through the channel plugin. While a run
//! streams, an ownership-checked heartbeat keeps it alive and a status subscription cancels it
//! promptly when the session is interrupted, edited or promoted (any state other than
//! `running`); a run that lost its ownership stores nothing and delivers nothing.
//!
//! Owns the order of those steps. Must not hold SQL (`crate::store`), speak HTTP
//! (`crate::api`) or render channel messages (the plugin's `outbound`, via
//! [`crate::delivery`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Compactor, RunService, SessionEvent};
use crate::agents::{
    AgentError, AgentKind, AgentRegistry, BuiltinAgent, ContextMessage, Role, RunInput, openai,
};
use crate::blobs::Blobs;
use crate::delivery::{Delivery, Outbox, chat_kind};
use crate::runtime::types;
use crate::store::{
    Finished, InstallationStore, Message, RunClaim, RunEnd, RunFinish, RunState, StoreError,
};

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// This replica's worker id (recorded on the runs it owns).
    pub worker_id: String,
    /// How often to look for pending runs when not woken earlier.
    pub poll_interval: Duration,
    /// Ownership-checked heartbeat period of a running run.
    pub heartbeat_interval: Duration,
    /// Runs executed at the same time (further pending runs wait).
    pub max_concurrent_runs: usize,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            worker_id: format!("host-{}", uuid::Uuid::new_v4().simple()),
            poll_interval: Duration::from_millis(250),
            heartbeat_interval: Duration::from_secs(10),
            max_concurrent_runs: 16,
        }
    }
}

/// Runs built-in agents. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    runs: RunService,
    agents: Arc<AgentRegistry>,
    delivery: Delivery,
    installations: InstallationStore,
    settings: ExecutorSettings,
    http: reqwest::Client,
    compactor: Option<Compactor>,
    outbox: Option<Outbox>,
    /// Sessions a draining executor may still acquire (see [`Executor::drain_only`]).
    drain_scope: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Downloaded attachments (`None`: contexts carry the records as stored).
    blobs: Option<Blobs>,
}

/// Most images one run hands a model that accepts images (the newest are kept).
pub const MAX_RUN_IMAGES: usize = 8;

/// How one run ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunResult {
    /// The reply was stored (and delivery attempted).
    Replied {
        /// The stored assistant message.
        message_id: i64,
    },
    /// The agent failed; the session is in `error` (and the error card was attempted).
    Failed(String),
    /// The run was interrupted or lost its ownership: nothing stored, nothing delivered.
    Abandoned,
    /// The host is stopping: the run went back to pending for another worker.
    ShutDown,
}

impl Executor {
    /// An executor for the built-in agents of `agents`.
    pub fn new(
        runs: RunService,
        agents: Arc<AgentRegistry>,
        delivery: Delivery,
        installations: InstallationStore,
        settings: ExecutorSettings,
    ) -> Executor {
        Executor {
            runs,
            agents,
            delivery,
            installations,
            settings,
            http: openai::http_client(),
            compactor: None,
            outbox: None,
            drain_scope: Arc::default(),
            blobs: None,
        }
    }

    /// Runs wait (bounded by `[blobs] run_wait_ms`) for their messages' attachment downloads,
    /// then see each record's state; a model that accepts images gets the stored ones.
    pub fn with_blobs(mut self, blobs: Blobs) -> Executor {
        self.blobs = Some(blobs);
        self
    }

    /// Wakes `outbox`'s delivery worker whenever a run end enqueued a reply or error card
    /// (without it, the worker finds them at its next poll).
    pub fn with_outbox(mut self, outbox: Outbox) -> Executor {
        self.outbox = Some(outbox);
        self
    }

    /// Also compacts contexts before runs and records the usage agents report (without it,
    /// runs never compact).
    pub fn with_compactor(mut self, compactor: Compactor) -> Executor {
        self.compactor = Some(compactor);
        self
    }

    /// The built-in agents runs are taken for.
    fn builtin_agents(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|spec| spec.is_builtin() && !spec.archived)
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// Limits what a draining executor acquires to the runs of `sessions` (the windows this
    /// replica flushed on its way out); runs of other sessions are left to other replicas or
    /// the next start.
    pub fn drain_only(&self, sessions: impl IntoIterator<Item = String>) {
        let mut scope = self.drain_scope.lock().unwrap_or_else(|e| e.into_inner());
        scope.clear();
        scope.extend(sessions);
    }

    /// Acquires and starts as many pending runs as capacity allows; returns how many started.
    /// While `draining`, only the sessions of [`Executor::drain_only`] are taken, each at most
    /// once: a session is dropped from the scope once its run started or no agent has one
    /// pending for it.
    async fn acquire_some(
        &self,
        tasks: &mut JoinSet<RunResult>,
        shutdown: &CancellationToken,
        draining: bool,
    ) -> usize {
        if draining {
            return self.acquire_draining(tasks, shutdown).await;
        }
        let mut started = 0;
        for agent in self.builtin_agents() {
            while tasks.len() < self.settings.max_concurrent_runs {
                match self
                    .runs
                    .acquire_in(&agent, &self.settings.worker_id, None)
                    .await
                {
                    Ok(Some(claim)) => {
                        self.start(tasks, claim, shutdown);
                        started += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(
                            agent,
                            "acquiring a run failed (retrying at the next poll): {e}"
                        );
                        break;
                    }
                }
            }
        }
        started
    }

    async fn acquire_draining(
        &self,
        tasks: &mut JoinSet<RunResult>,
        shutdown: &CancellationToken,
    ) -> usize {
        let scope: Vec<String> = {
            let scope = self.drain_scope.lock().unwrap_or_else(|e| e.into_inner());
            scope.iter().cloned().collect()
        };
        let agents = self.builtin_agents();
        let mut started = 0;
        let mut settled = Vec::new();
        for session in scope {
            if tasks.len() >= self.settings.max_concurrent_runs {
                break;
            }
            let mut failed = false;
            let mut acquired = false;
            for agent in &agents {
                match self
                    .runs
                    .acquire_in(agent, &self.settings.worker_id, Some(&session))
                    .await
                {
                    Ok(Some(claim)) => {
                        self.start(tasks, claim, shutdown);
                        started += 1;
                        acquired = true;
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(agent, "acquiring a run failed while draining: {e}");
                        failed = true;
                    }
                }
            }
            if acquired || !failed {
                settled.push(session);
            }
        }
        let mut scope = self.drain_scope.lock().unwrap_or_else(|e| e.into_inner());
        for session in settled {
            scope.remove(&session);
        }
        started
    }

    fn start(&self, tasks: &mut JoinSet<RunResult>, claim: RunClaim, shutdown: &CancellationToken) {
        let executor = self.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("run", session = %claim.session_id, run = %claim.run_id, installation = %claim.installation_id, agent = %claim.agent);
        tasks.spawn(async move { executor.execute(claim, shutdown).await }.instrument(span));
    }

    /// Spawns the acquisition loop. When `drain` is cancelled it stops once nothing is pending
    /// and no run is in flight (graceful shutdown: the flushed windows still get their replies);
    /// when `shutdown` is cancelled it stops taking runs and cancels the runs in flight, which go
    /// back to pending. Await the handle to join them.
    pub fn spawn(
        &self,
        drain: CancellationToken,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let executor = self.clone();
        tokio::spawn(
            async move {
                let mut tasks = JoinSet::new();
                let mut pending = executor.runs.pending_signal().subscribe();
                loop {
                    let started = executor
                        .acquire_some(&mut tasks, &shutdown, drain.is_cancelled())
                        .await;
                    if drain.is_cancelled() && started == 0 && tasks.is_empty() {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = pending.notified() => {}
                        _ = drain.cancelled(), if !drain.is_cancelled() => {}
                        _ = tokio::time::sleep(executor.settings.poll_interval) => {}
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    }
                }
                while tasks.join_next().await.is_some() {}
                tracing::debug!("built-in agent executor stopped");
            }
            .instrument(tracing::info_span!("executor")),
        )
    }

    /// Runs one acquired run to its end.
    pub async fn execute(&self, claim: RunClaim, shutdown: CancellationToken) -> RunResult {
        match self.try_execute(&claim, shutdown).await {
            Ok(result) => result,
            Err(e) => {
                // The database failed mid-run: leave the run to stale recovery, which returns
                // it to pending once its heartbeat ages out.
                tracing::error!(
                    "run aborted by a storage failure (stale recovery will retry it): {e}"
                );
                RunResult::Abandoned
            }
        }
    }

    async fn try_execute(
        &self,
        claim: &RunClaim,
        shutdown: CancellationToken,
    ) -> Result<RunResult, StoreError> {
        let session = claim.session_id.as_str();
        let run = claim.run_id.as_str();
        let Some(spec) = self.agents.get(&claim.agent).cloned() else {
            return self
                .fail(claim, format!("agent {:?} is not configured", claim.agent))
                .await;
        };
        let Some(agent) = BuiltinAgent::from_spec(&spec, &self.http) else {
            return self
                .fail(
                    claim,
                    format!("agent {:?} is not a built-in agent", claim.agent),
                )
                .await;
        };
        // Subscribe before reading the context, so an interrupt in between is seen.
        let (_, mut events) = self.runs.hub().subscribe(session);
        if let Some(compactor) = &self.compactor
            && let Err(e) = compactor.before_builtin_run(claim, &spec, &agent).await
        {
            tracing::warn!("pre-run compaction check failed (the run goes on): {e}");
        }
        let Some(mut messages) = self.runs.run_context(session, run).await? else {
            return Ok(RunResult::Abandoned);
        };
        let mut images = std::collections::HashMap::new();
        if let Some(blobs) = &self.blobs {
            if !blobs.wait_settled(&messages).await {
                tracing::info!(
                    "the run starts with attachment downloads still pending (placeholders)"
                );
            }
            if let Err(e) = blobs.annotate(&claim.agent, &mut messages).await {
                tracing::warn!(
                    "the run's attachment states could not be read (records as stored): {e}"
                );
            }
            let vision = matches!(&spec.kind, AgentKind::OpenAi(settings) if settings.vision);
            if vision {
                images = blobs
                    .images(&messages, MAX_RUN_IMAGES)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(
                            "the run's images could not be read (sent as text lines): {e}"
                        );
                        Default::default()
                    });
            }
        }
        let input = RunInput {
            session_id: session.to_string(),
            run_id: run.to_string(),
            system_prompt: spec.system_prompt.clone(),
            messages: messages
                .iter()
                .enumerate()
                .filter_map(|(index, message)| {
                    let mut context = context_message(message)?;
                    context.images = images.remove(&index).unwrap_or_default();
                    Some(context)
                })
                .collect(),
        };

        let cancel = CancellationToken::new();
        let (parts_tx, mut parts_rx) = mpsc::channel::<String>(64);
        let agent_run = {
            let cancel = cancel.clone();
            async move { agent.run(&input, parts_tx, cancel).await }
        };
        tokio::pin!(agent_run);
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat_interval);
        heartbeat.tick().await; // the first tick is immediate; the acquisition was the first beat
        let mut lost = false;
        let mut stopping = false;
        let mut parts_open = true;
        let outcome = loop {
            tokio::select! {
                result = &mut agent_run => break result,
                part = parts_rx.recv(), if parts_open => match part {
                    Some(text) => { self.runs.publish_part(session, run, &text); }
                    None => parts_open = false,
                },
                _ = heartbeat.tick() => {
                    if !self.runs.heartbeat(session, run).await.unwrap_or(true) {
                        lost = true;
                        cancel.cancel();
                    }
                }
                // Shared: the executor only looks at status events, no need to copy each one.
                event = events.recv_shared() => match event.as_deref() {
                    // A status may be stale (another task publishes the state it read before
                    // this run was acquired): the store decides whether this run was stopped.
                    Ok(SessionEvent::Status { state, .. })
                        if *state != RunState::Running
                            && !self.runs.heartbeat(session, run).await.unwrap_or(true) =>
                    {
                        lost = true;
                        cancel.cancel();
                    }
                    // A missed status (lag) is caught by the next heartbeat.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    cancel.cancel();
                }
            }
        };
        // Forward parts the agent sent just before finishing.
        while let Ok(text) = parts_rx.try_recv() {
            self.runs.publish_part(session, run, &text);
        }

        match outcome {
            Ok(reply) => {
                // Reply, run end and its delivery in one fenced transaction: a crash after it
                // still delivers the reply (the outbox), a lost run stores nothing.
                let finish = RunFinish::Completed {
                    reply: Some(reply.text),
                    context_tokens: reply
                        .usage
                        .as_ref()
                        .filter(|_| self.compactor.is_some())
                        .map(|usage| usage.context_tokens()),
                };
                let Some(finished) = self.finish(session, run, &finish).await? else {
                    tracing::info!("reply discarded: the run lost its ownership");
                    return Ok(RunResult::Abandoned);
                };
                match finished.reply {
                    Some(message) => Ok(RunResult::Replied {
                        message_id: message.id,
                    }),
                    None => {
                        self.clear_typing(claim).await;
                        Ok(RunResult::Replied { message_id: 0 })
                    }
                }
            }
            Err(AgentError::Cancelled) if stopping && !lost => {
                self.runs.release(session, run, RunEnd::Shutdown).await?;
                // The run is retried from the start: what it streamed is closed, not left
                // "streaming".
                self.runs.run_stopped(session, run);
                Ok(RunResult::ShutDown)
            }
            Err(AgentError::Cancelled) => {
                // Interrupted (or ownership lost): release is fenced, so it only changes
                // something if this run still owns the session.
                self.runs.release(session, run, RunEnd::Interrupted).await?;
                self.runs.run_stopped(session, run);
                self.clear_typing(claim).await;
                Ok(RunResult::Abandoned)
            }
            Err(e) => self.fail(claim, e.to_string()).await,
        }
    }

    /// Ends the run as failed and tells the chat.
    async fn fail(&self, claim: &RunClaim, error: String) -> Result<RunResult, StoreError> {
        tracing::warn!(
            run = %claim.run_id,
            reference = crate::delivery::run_reference(&claim.run_id),
            "run failed: {error}"
        );
        // The chat gets a reference, never the error text (see `delivery::run_reference`).
        let finish = RunFinish::Failed {
            error: error.clone(),
            reference: crate::delivery::run_reference(&claim.run_id).to_string(),
        };
        match self
            .finish(&claim.session_id, &claim.run_id, &finish)
            .await?
        {
            None => Ok(RunResult::Abandoned),
            Some(_) => Ok(RunResult::Failed(error)),
        }
    }

    /// Ends the run for good; its reply or error card is claimed in the same transaction and
    /// delivered at once by this replica's outbox (or, when the session has an older row still
    /// pending, left to the delivery worker, woken).
    async fn finish(
        &self,
        session: &str,
        run: &str,
        finish: &RunFinish,
    ) -> Result<Option<Finished>, StoreError> {
        let lease = self.outbox.as_ref().map(Outbox::lease);
        let finished = self
            .runs
            .finish_run_leased(session, run, finish, lease)
            .await?;
        if let (Some(outbox), Some(done)) = (&self.outbox, &finished) {
            match done.outbox_row.clone() {
                Some(row) => outbox.deliver_claimed(row),
                None if done.outbox_id.is_some() => outbox.wake(),
                None => {}
            }
        }
        Ok(finished)
    }

    async fn clear_typing(&self, claim: &RunClaim) {
        if let Ok(Some(installation)) = self.installations.get(&claim.installation_id).await {
            self.delivery
                .typing_off(&installation, &claim_target(claim))
                .await;
        }
    }
}

/// Where a run's reply goes.
pub fn claim_target(claim: &RunClaim) -> types::SessionTarget {
    types::SessionTarget {
        session_id: claim.session_id.clone(),
        chat_id: claim.chat_id.clone(),
        chat_kind: chat_kind(&claim.chat_type),
        thread_id: claim.thread_id.clone(),
        reply_to: claim.reply_to_message_id.clone(),
        in_thread: claim.reply_thread_id.is_some(),
    }
}

/// A stored message as agent context (notices are not context; a compaction summary is a
/// `system` message).
fn context_message(message: &Message) -> Option<ContextMessage> {
    if message.kind == "notice" {
        return None;
    }
    let role = match message.role.as_str() {
        "assistant" => Role::Assistant,
        "system" => Role::System,
        _ => Role::User,
    };
    Some(ContextMessage {
        meta: message.meta.clone(),
        ..ContextMessage::new(role, message.body.clone())
    })
}
