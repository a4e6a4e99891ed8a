//! Context compaction (SPEC §7; reference `chat-runs.md` A.12 and part B): when a session's
//! context fills the agent's window, the agent summarises the older part and the host stores the
//! summary as a hidden boundary (`crate::store::compaction`), so later runs see system prompt +
//! summary + the messages after it.
//!
//! # Occupancy
//!
//! The figure compared with the threshold is the context's size in tokens. Agents report it:
//! the `openai` agent's `usage` at the end of a run, workers' `usage` on heartbeats (each step)
//! and on `complete`; the host keeps the latest (`prompt + completion` tokens: the context the
//! next step sends) with the message id it covers. Messages added after that id, and every
//! message when nothing was reported (or after a compaction), are estimated from their size:
//! [`estimate_tokens`], a quarter of the characters rounded up plus 4 tokens of framing per
//! message — no tokenizer, deliberately rough and on the high side for English text.
//!
//! # Triggers
//!
//! Per agent `context_limit_tokens` × `compact_threshold_percent` (0 or absent: never
//! automatically). Automatic compaction is attempted once per new message (no retry on the
//! same context, no thrash right after a compaction) and stops for a session after
//! [`MAX_CONSECUTIVE_FAILURES`] consecutive failures until one succeeds (a manual request).
//!
//! - **Pre-run**: built-in agents compact inside the run, before the context is read
//!   ([`Compactor::before_builtin_run`]); for worker agents the claim hands out a *compaction
//!   job* (`"kind": "compact"`) whose completion is the summary, after which the session is
//!   pending again and the next claim is the run itself ([`Compactor::before_worker_run`]).
//! - **Mid-run** (workers): a heartbeat reporting usage at or over the threshold is answered
//!   `{"continue": true, "compact": true}`; the worker summarises and posts the summary
//!   (`…/compact`), then re-reads its context and goes on ([`Compactor::step`],
//!   [`Compactor::worker_summary`]). Built-in agents run one step per run, so their usage is
//!   checked at the next run's start.
//! - **Manual** ([`Compactor::compact_now`]): admin API and CLI, from `idle`, `pending` or
//!   `error` (never while running). Built-in agents summarise at once; for worker agents the
//!   session becomes pending with a manual request and the next claim is the compaction job.
//!
//! The summary comes from the agent: `echo` makes a deterministic one ("summary of N
//! messages: …"), `openai` gets the conversation plus [`SUMMARY_PROMPT`] as a final user
//! message through the same client, workers get the same prompt in their job. It must arrive
//! within the compaction timeout (default [`DEFAULT_COMPACTION_TIMEOUT`]); an empty one is a
//! failure. Trailing unanswered user messages are never summarised: they stay verbatim after
//! the boundary.
//!
//! # Events
//!
//! `compaction_start`, then `compaction_done` (boundary id, tokens before and after) with the
//! visible notice as a `message`, or `compaction_failed` (error, consecutive failures). A failure
//! never fails the run. The hidden boundary is never published as a `message`, and no retained
//! message is published again. Events are local to the replica that compacts (the notice row
//! reaches other replicas as a message).
//!
//! Owns the order of these steps; holds no SQL (`crate::store::compaction`) and speaks no HTTP
//! (`crate::api::worker` maps the worker side).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RunService, SessionEvent};
use crate::agents::{
    AgentRegistry, AgentSpec, BuiltinAgent, ContextMessage, Role, RunInput, Usage, openai,
};
use crate::store::{
    CompactionSource, CompactionState, CompactionStore, MAX_CONSECUTIVE_FAILURES, Message,
    NewSummary, RunClaim, RunState, StoreError,
};

/// How long an agent may take to produce a summary (chatd uses 90 s too).
pub const DEFAULT_COMPACTION_TIMEOUT: Duration = Duration::from_secs(90);

/// The instruction sent (as the last user message) when asking an agent for a summary.
pub const SUMMARY_PROMPT: &str = "The conversation so far is about to be compacted to save \
     context. Write a dense, factual summary that lets you continue seamlessly without the \
     earlier messages: the user's goal and requests, decisions made, concrete details (names, \
     numbers, paths, commands, APIs, links), errors met and how they were fixed, what is done, \
     what is in progress and what remains, and the exact next step. Reply with the summary only.";

/// Put before the summary in the hidden boundary message.
pub const SUMMARY_PREFIX: &str = "Summary of the earlier conversation (it was compacted to save \
     context; the messages after this one are verbatim). Continue from here.\n\n";

/// Estimated tokens of one message body: chars / 4 rounded up, plus 4 for the role framing.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4) + 4
}

/// Why a compaction could not be done or asked for.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// No such session.
    #[error("session {0} not found")]
    NotFound(String),
    /// A run owns the session; only its own agent may compact now.
    #[error("session {0} is running; wait for the run to end (or interrupt it) and ask again")]
    Busy(String),
    /// Everything in the context is either already summarised or still unanswered.
    #[error("nothing to compact in session {0}: no answered messages since the last summary")]
    NothingToCompact(String),
    /// The session's agent is not configured.
    #[error("agent {agent:?} of session {session_id} is not configured; add [agents.{agent}]")]
    UnknownAgent {
        /// The session.
        session_id: String,
        /// The agent named by its installation.
        agent: String,
    },
    /// The agent could not produce a summary (the session is unchanged).
    #[error("compaction failed: {0}")]
    Failed(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a manual request did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ManualOutcome {
    /// A built-in agent summarised: the boundary is stored.
    Compacted(Compaction),
    /// A worker agent's session: the next claim hands out the compaction job.
    Requested,
}

/// A stored compaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Compaction {
    /// The hidden boundary message.
    pub boundary_message_id: i64,
    /// The visible notice message.
    pub notice_message_id: i64,
    /// Occupancy before.
    pub tokens_before: u64,
    /// Estimated occupancy after.
    pub tokens_after: u64,
}

/// How a summary attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Stored.
    Done(Compaction),
    /// Not stored (failure recorded and published).
    Failed(String),
    /// The caller no longer owns the run: nothing stored.
    Lost,
}

/// A compaction job handed to a worker instead of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactJob {
    /// Why.
    pub source: CompactionSource,
    /// What to summarise, oldest first (the previous summary first, if any).
    pub messages: Vec<ContextMessage>,
    /// The instruction to follow.
    pub prompt: &'static str,
    /// The summary must be posted within this.
    pub timeout: Duration,
}

/// What a worker should do after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAnswer {
    /// Go on.
    Continue,
    /// Go on, but compact now: post a summary to `…/compact`, then re-read the context.
    CompactNow,
    /// Stop: the compaction job timed out and was taken back.
    Stop,
}

/// What to summarise.
struct Plan {
    revision: i64,
    /// The last message id the summary replaces.
    summary_upto: i64,
    /// The summary's input (the previous boundary, then the answered turns).
    input: Vec<ContextMessage>,
    /// How many conversation turns it replaces.
    summarized: usize,
    /// Estimated tokens of what stays (system prompt + trailing turns).
    kept_tokens: u64,
}

fn role_of(message: &Message) -> Role {
    match message.role.as_str() {
        "assistant" => Role::Assistant,
        "system" => Role::System,
        _ => Role::User,
    }
}

/// The compaction service. Cheap to clone.
#[derive(Clone)]
pub struct Compactor {
    runs: RunService,
    agents: Arc<AgentRegistry>,
    store: CompactionStore,
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Compactor {
    /// A compactor for the sessions of `runs`, with the agents of `agents`.
    pub fn new(runs: RunService, agents: Arc<AgentRegistry>) -> Compactor {
        let store = runs.store().database().compaction();
        Compactor {
            runs,
            agents,
            store,
            http: openai::http_client(),
            timeout: DEFAULT_COMPACTION_TIMEOUT,
        }
    }

    /// Summaries must arrive within `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Compactor {
        self.timeout = timeout;
        self
    }

    /// The compaction store.
    pub fn store(&self) -> &CompactionStore {
        &self.store
    }

    /// The agents.
    pub fn agents(&self) -> &Arc<AgentRegistry> {
        &self.agents
    }

    /// The occupancy of `context` (of `revision`): the reported figure plus estimates of the
    /// messages after it, else an estimate of everything (system prompt included).
    pub fn occupancy(
        spec: &AgentSpec,
        state: &CompactionState,
        context: &[Message],
        revision: i64,
    ) -> u64 {
        let estimate = |m: &Message| estimate_tokens(&m.body);
        match state.reported {
            Some((tokens, upto, reported_revision)) if reported_revision == revision => {
                tokens.max(0) as u64
                    + context
                        .iter()
                        .filter(|m| m.id > upto)
                        .map(estimate)
                        .sum::<u64>()
            }
            _ => {
                spec.system_prompt.as_deref().map_or(0, estimate_tokens)
                    + context.iter().map(estimate).sum::<u64>()
            }
        }
    }

    /// Whether automatic compaction is due for a context up to `upto` with `occupancy`.
    fn due(spec: &AgentSpec, state: &CompactionState, occupancy: u64, upto: i64) -> bool {
        let Some(trigger) = spec.compaction.trigger_tokens() else {
            return false; // threshold 0 / unset: never automatically
        };
        !state.automatic_disabled()
            && state.attempt_upto.is_none_or(|attempted| attempted < upto)
            && occupancy >= trigger
    }

    /// What to summarise in `context`: everything but the trailing unanswered user turns.
    /// `None` when that holds no turn the last summary does not already cover.
    fn plan(spec: &AgentSpec, context: &[Message], revision: i64) -> Option<Plan> {
        let cut = context
            .iter()
            .rposition(|m| m.role != "user")
            .map_or(0, |i| i + 1);
        let (summarize, kept) = context.split_at(cut);
        let summary_upto = summarize.iter().rev().find(|m| m.kind == "message")?.id;
        Some(Plan {
            revision,
            summary_upto,
            input: summarize
                .iter()
                .map(|m| ContextMessage::new(role_of(m), m.body.clone()))
                .collect(),
            summarized: summarize.iter().filter(|m| m.kind == "message").count(),
            kept_tokens: spec.system_prompt.as_deref().map_or(0, estimate_tokens)
                + kept.iter().map(|m| estimate_tokens(&m.body)).sum::<u64>(),
        })
    }

    fn now_ms(&self) -> i64 {
        self.runs.now_ms()
    }

    fn publish(&self, session_id: &str, event: SessionEvent) {
        self.runs.hub().publish(session_id, event);
    }

    fn publish_start(
        &self,
        session_id: &str,
        source: CompactionSource,
        context_tokens: u64,
        spec: &AgentSpec,
    ) {
        tracing::info!(session = %session_id, source = source.as_str(), context_tokens, "compaction started");
        self.publish(
            session_id,
            SessionEvent::CompactionStart {
                source,
                context_tokens,
                limit_tokens: spec.compaction.context_limit_tokens,
                threshold_percent: spec.compaction.threshold_percent,
            },
        );
    }

    /// Records and publishes a failure.
    async fn failed(
        &self,
        session_id: &str,
        source: CompactionSource,
        error: String,
    ) -> Result<Finished, StoreError> {
        let failures = self.store.record_failure(session_id, self.now_ms()).await?;
        let automatic_disabled = failures >= MAX_CONSECUTIVE_FAILURES;
        tracing::warn!(session = %session_id, source = source.as_str(), failures, automatic_disabled, "compaction failed: {error}");
        self.publish(
            session_id,
            SessionEvent::CompactionFailed {
                source,
                error: error.clone(),
                consecutive_failures: u32::try_from(failures).unwrap_or(u32::MAX),
                automatic_disabled,
            },
        );
        Ok(Finished::Failed(error))
    }

    /// Stores a summary (or records the failure) and publishes the outcome.
    #[allow(clippy::too_many_arguments)] // one call site per trigger; a struct would only rename them
    async fn finish(
        &self,
        session_id: &str,
        fence: Option<&str>,
        source: CompactionSource,
        spec: &AgentSpec,
        plan: Option<Plan>,
        tokens_before: u64,
        summary: Result<String, String>,
    ) -> Result<Finished, StoreError> {
        let summary = match summary {
            Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
            Ok(_) => {
                let error = "the agent returned an empty summary".to_owned();
                return self.failed(session_id, source, error).await;
            }
            Err(error) => return self.failed(session_id, source, error).await,
        };
        let Some(plan) = plan else {
            let error = "nothing to compact: no answered messages since the last summary";
            return self.failed(session_id, source, error.into()).await;
        };
        let boundary_body = format!("{SUMMARY_PREFIX}{summary}");
        let notice_body = notice_text(source, spec, tokens_before, plan.summarized);
        let stored = self
            .store
            .persist(
                &NewSummary {
                    session_id,
                    fence,
                    revision: plan.revision,
                    summary_upto: plan.summary_upto,
                    boundary_body: &boundary_body,
                    notice_body: &notice_body,
                },
                self.now_ms(),
            )
            .await?;
        let Some(compacted) = stored else {
            tracing::info!(session = %session_id, "compaction discarded: the session changed hands");
            return Ok(Finished::Lost);
        };
        let done = Compaction {
            boundary_message_id: compacted.boundary.id,
            notice_message_id: compacted.notice.id,
            tokens_before,
            tokens_after: plan.kept_tokens + estimate_tokens(&boundary_body),
        };
        tracing::info!(session = %session_id, source = source.as_str(), boundary = done.boundary_message_id, tokens_before, tokens_after = done.tokens_after, summarized = plan.summarized, "compaction done");
        self.publish(session_id, SessionEvent::message(&compacted.notice));
        self.publish(
            session_id,
            SessionEvent::CompactionDone {
                source,
                boundary_message_id: done.boundary_message_id,
                tokens_before,
                tokens_after: done.tokens_after,
            },
        );
        Ok(Finished::Done(done))
    }

    /// A summary from a built-in agent, within the timeout.
    async fn summarize_builtin(
        &self,
        spec: &AgentSpec,
        agent: &BuiltinAgent,
        session_id: &str,
        run_id: &str,
        plan: &Plan,
    ) -> Result<String, String> {
        match agent {
            BuiltinAgent::Echo(_) => Ok(echo_summary(&plan.input)),
            BuiltinAgent::OpenAi(_) => {
                let mut messages = plan.input.clone();
                messages.push(ContextMessage::new(Role::User, SUMMARY_PROMPT));
                let input = RunInput {
                    session_id: session_id.to_owned(),
                    run_id: run_id.to_owned(),
                    system_prompt: spec.system_prompt.clone(),
                    messages,
                };
                // The summary is not streamed to subscribers: its parts go nowhere.
                let (parts, _dropped) = mpsc::channel(1);
                let cancel = CancellationToken::new();
                match tokio::time::timeout(self.timeout, agent.run(&input, parts, cancel.clone()))
                    .await
                {
                    Ok(Ok(reply)) => Ok(reply.text),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => {
                        cancel.cancel();
                        Err(format!("no summary within {} ms", self.timeout.as_millis()))
                    }
                }
            }
        }
    }

    /// A compaction request left behind by an earlier run (its worker never sent the summary):
    /// counted as a failure. Manual requests wait for their job.
    async fn settle_abandoned(&self, state: &CompactionState) -> Result<(), StoreError> {
        if let Some((_, source)) = state.requested
            && source != CompactionSource::Manual
            && !state.compact_job
        {
            let error = "the run ended before the worker sent the summary".to_owned();
            self.failed(&state.session_id, source, error).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ built-in agents

    /// Pre-run check of a built-in agent's run (call before reading the run's context): if the
    /// context is at or over the threshold, summarise it now. Failures are recorded and
    /// published; the run goes on either way.
    pub async fn before_builtin_run(
        &self,
        claim: &RunClaim,
        spec: &AgentSpec,
        agent: &BuiltinAgent,
    ) -> Result<Option<Finished>, StoreError> {
        if spec.compaction.trigger_tokens().is_none() {
            return Ok(None); // never automatically: no reads on the run's path
        }
        let session = claim.session_id.as_str();
        let Some(state) = self.store.state(session).await? else {
            return Ok(None);
        };
        let (revision, upto) = (claim.context_revision, claim.context_upto);
        let context = self.store.context(session, revision, upto).await?;
        let occupancy = Compactor::occupancy(spec, &state, &context, revision);
        if !Compactor::due(spec, &state, occupancy, upto) {
            return Ok(None);
        }
        self.store.mark_attempt(session, upto).await?;
        let Some(plan) = Compactor::plan(spec, &context, revision) else {
            return Ok(None);
        };
        let source = CompactionSource::PreRun;
        self.publish_start(session, source, occupancy, spec);
        let summary = self
            .summarize_builtin(spec, agent, session, &claim.run_id, &plan)
            .await;
        self.finish(
            session,
            Some(&claim.run_id),
            source,
            spec,
            Some(plan),
            occupancy,
            summary,
        )
        .await
        .map(Some)
    }

    /// Records the usage a run reported with its reply (`upto`: the reply's id). Best effort.
    pub async fn record_usage(
        &self,
        session_id: &str,
        run_id: &str,
        usage: Usage,
        upto: Option<i64>,
    ) {
        let tokens = usage.context_tokens();
        if let Err(e) = self
            .store
            .record_usage(session_id, run_id, tokens, upto)
            .await
        {
            tracing::warn!(session = %session_id, run = %run_id, "usage not recorded: {e}");
        }
    }

    // ---------------------------------------------------------------------- workers

    /// Pre-run check at a worker's claim: `Some` when the claimed run became a compaction job
    /// (manual request, or the context at or over the threshold).
    pub async fn before_worker_run(
        &self,
        claim: &RunClaim,
        spec: &AgentSpec,
    ) -> Result<Option<CompactJob>, StoreError> {
        let session = claim.session_id.as_str();
        let Some(state) = self.store.state(session).await? else {
            return Ok(None);
        };
        self.settle_abandoned(&state).await?;
        let (revision, upto) = (claim.context_revision, claim.context_upto);
        let context = self.store.context(session, revision, upto).await?;
        let occupancy = Compactor::occupancy(spec, &state, &context, revision);
        let plan = Compactor::plan(spec, &context, revision);
        let source = if matches!(state.requested, Some((_, CompactionSource::Manual))) {
            if plan.is_none() {
                self.failed(
                    session,
                    CompactionSource::Manual,
                    "nothing to compact: no answered messages since the last summary".into(),
                )
                .await?;
                return Ok(None);
            }
            CompactionSource::Manual
        } else if Compactor::due(spec, &state, occupancy, upto) {
            self.store.mark_attempt(session, upto).await?;
            CompactionSource::PreRun
        } else {
            return Ok(None);
        };
        let Some(plan) = plan else {
            return Ok(None);
        };
        let now = self.now_ms();
        if !self
            .store
            .request(session, &claim.run_id, source, true, None, now)
            .await?
        {
            return Ok(None);
        }
        self.publish_start(session, source, occupancy, spec);
        Ok(Some(CompactJob {
            source,
            messages: plan.input,
            prompt: SUMMARY_PROMPT,
            timeout: self.timeout,
        }))
    }

    /// A worker's heartbeat of run `run_id`, with the usage of its last step if it reports one:
    /// records it and says whether to compact now (at or over the threshold, or an earlier
    /// "compact now" still unanswered), or to stop (a compaction job past its timeout, taken
    /// back). A mid-run request past the timeout counts as a failure and the run goes on.
    pub async fn step(
        &self,
        session_id: &str,
        run_id: &str,
        spec: &AgentSpec,
        usage: Option<Usage>,
    ) -> Result<StepAnswer, StoreError> {
        if let Some(usage) = usage {
            self.record_usage(session_id, run_id, usage, None).await;
        }
        let Some(state) = self.store.state(session_id).await? else {
            return Ok(StepAnswer::Continue);
        };
        if !state.owned_by(run_id) {
            return Ok(StepAnswer::Continue);
        }
        let timed_out = |at: i64| {
            self.now_ms().saturating_sub(at)
                > i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)
        };
        if let Some((at, source)) = state.requested {
            if !timed_out(at) {
                return Ok(if state.compact_job {
                    StepAnswer::Continue
                } else {
                    StepAnswer::CompactNow
                });
            }
            let error = format!(
                "the worker sent no summary within {} ms",
                self.timeout.as_millis()
            );
            self.failed(session_id, source, error).await?;
            if state.compact_job {
                self.end_job(session_id, run_id, source).await?;
                return Ok(StepAnswer::Stop);
            }
            return Ok(StepAnswer::Continue);
        }
        if usage.is_none() || state.compact_job {
            return Ok(StepAnswer::Continue);
        }
        let (revision, upto) = state.bounds();
        let context = self.store.context(session_id, revision, upto).await?;
        let occupancy = Compactor::occupancy(spec, &state, &context, revision);
        if !Compactor::due(spec, &state, occupancy, upto) {
            return Ok(StepAnswer::Continue);
        }
        let source = CompactionSource::MidRun;
        if !self
            .store
            .request(session_id, run_id, source, false, Some(upto), self.now_ms())
            .await?
        {
            return Ok(StepAnswer::Continue);
        }
        self.publish_start(session_id, source, occupancy, spec);
        Ok(StepAnswer::CompactNow)
    }

    /// A worker posted the summary of run `run_id`'s context (mid-run, or a compaction job's
    /// completion), or `Err` with why it could not. A summary nobody asked for is accepted too
    /// (`compaction_start` is published with it).
    pub async fn worker_summary(
        &self,
        session_id: &str,
        run_id: &str,
        spec: &AgentSpec,
        summary: Result<String, String>,
    ) -> Result<Finished, StoreError> {
        let Some(state) = self.store.state(session_id).await? else {
            return Ok(Finished::Lost);
        };
        if !state.owned_by(run_id) {
            return Ok(Finished::Lost);
        }
        let (revision, upto) = state.bounds();
        let context = self.store.context(session_id, revision, upto).await?;
        let occupancy = Compactor::occupancy(spec, &state, &context, revision);
        let source = match state.requested {
            Some((_, source)) => source,
            None => {
                self.publish_start(session_id, CompactionSource::MidRun, occupancy, spec);
                CompactionSource::MidRun
            }
        };
        let plan = Compactor::plan(spec, &context, revision);
        let finished = self
            .finish(
                session_id,
                Some(run_id),
                source,
                spec,
                plan,
                occupancy,
                summary,
            )
            .await?;
        if state.compact_job && finished != Finished::Lost {
            self.end_job(session_id, run_id, source).await?;
        }
        Ok(finished)
    }

    /// Whether run `run_id` is a compaction job.
    pub async fn is_job(&self, session_id: &str, run_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .state(session_id)
            .await?
            .is_some_and(|s| s.owned_by(run_id) && s.compact_job))
    }

    /// Ends a compaction job: a pre-run job's session is pending again (keeping its place: the
    /// run itself comes next), a manual job's is idle.
    async fn end_job(
        &self,
        session_id: &str,
        run_id: &str,
        source: CompactionSource,
    ) -> Result<(), StoreError> {
        let end = match source {
            CompactionSource::Manual => crate::store::RunEnd::Completed,
            _ => crate::store::RunEnd::Shutdown,
        };
        self.runs.release(session_id, run_id, end).await?;
        Ok(())
    }

    /// Run `run_id` is ending (completed or failed by its worker): a "compact now" it never
    /// answered counts as a failure.
    pub async fn run_ending(&self, session_id: &str, run_id: &str) -> Result<(), StoreError> {
        if let Some(state) = self.store.state(session_id).await?
            && state.owned_by(run_id)
            && !state.compact_job
            && let Some((_, source)) = state.requested
        {
            let error = "the run ended before the worker sent the summary".to_owned();
            self.failed(session_id, source, error).await?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------------- manual

    /// Compacts a session now (admin API, CLI): from `idle`, `pending` or `error`, never while
    /// running. Built-in agents summarise at once; a worker agent's session becomes pending
    /// with a manual request (the next claim is the compaction job). A manual success
    /// re-enables automatic compaction.
    pub async fn compact_now(&self, session_id: &str) -> Result<ManualOutcome, CompactError> {
        let db = self.runs.store().database();
        let owner = db
            .workers()
            .run_owner(session_id)
            .await?
            .ok_or_else(|| CompactError::NotFound(session_id.to_owned()))?;
        let spec = self
            .agents
            .get(&owner.agent)
            .ok_or_else(|| CompactError::UnknownAgent {
                session_id: session_id.to_owned(),
                agent: owner.agent.clone(),
            })?;
        let state = self
            .store
            .state(session_id)
            .await?
            .ok_or_else(|| CompactError::NotFound(session_id.to_owned()))?;
        if state.state == RunState::Running {
            return Err(CompactError::Busy(session_id.to_owned()));
        }
        let (revision, upto) = state.bounds();
        let context = self.store.context(session_id, revision, upto).await?;
        let Some(plan) = Compactor::plan(spec, &context, revision) else {
            return Err(CompactError::NothingToCompact(session_id.to_owned()));
        };
        let occupancy = Compactor::occupancy(spec, &state, &context, revision);
        let Some(agent) = BuiltinAgent::from_spec(spec, &self.http) else {
            return match self.store.request_manual(session_id, self.now_ms()).await? {
                None => Err(CompactError::NotFound(session_id.to_owned())),
                Some(RunState::Running) => Err(CompactError::Busy(session_id.to_owned())),
                Some(_) => {
                    tracing::info!(session = %session_id, agent = %owner.agent, "manual compaction requested from the agent's workers");
                    self.runs.publish_session_state(session_id).await;
                    Ok(ManualOutcome::Requested)
                }
            };
        };
        let source = CompactionSource::Manual;
        self.publish_start(session_id, source, occupancy, spec);
        let run_id = format!("manual-{}", uuid::Uuid::new_v4().simple());
        let summary = self
            .summarize_builtin(spec, &agent, session_id, &run_id, &plan)
            .await;
        match self
            .finish(
                session_id,
                None,
                source,
                spec,
                Some(plan),
                occupancy,
                summary,
            )
            .await?
        {
            Finished::Done(done) => Ok(ManualOutcome::Compacted(done)),
            Finished::Failed(error) => Err(CompactError::Failed(error)),
            Finished::Lost => Err(CompactError::Busy(session_id.to_owned())),
        }
    }
}

/// The `echo` agent's summary: deterministic, for demos and tests.
pub fn echo_summary(messages: &[ContextMessage]) -> String {
    let said: Vec<String> = messages
        .iter()
        .map(|m| {
            let mut text: String = m.body.chars().take(40).collect();
            if m.body.chars().count() > 40 {
                text.push('…');
            }
            format!("{}: {}", m.role.as_str(), text.replace('\n', " "))
        })
        .collect();
    format!(
        "summary of {} messages: {}",
        messages.len(),
        said.join(" / ")
    )
}

/// The visible notice of a compaction.
fn notice_text(
    source: CompactionSource,
    spec: &AgentSpec,
    tokens_before: u64,
    summarized: usize,
) -> String {
    let limits = spec
        .compaction
        .context_limit_tokens
        .zip(spec.compaction.threshold_percent);
    let when = match source {
        CompactionSource::PreRun => "before the run",
        CompactionSource::MidRun => "during the run",
        CompactionSource::Manual => "on request",
    };
    match limits {
        Some((limit, threshold)) => format!(
            "Context compacted {when}: about {tokens_before} of {limit} tokens ({}%, threshold \
             {threshold}%); {summarized} earlier messages summarized.",
            tokens_before.saturating_mul(100) / limit.max(1)
        ),
        None => format!(
            "Context compacted {when}: about {tokens_before} tokens; {summarized} earlier \
             messages summarized."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_a_quarter_of_the_characters_plus_framing() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("abcd"), 5);
        assert_eq!(estimate_tokens("abcde"), 6);
        assert_eq!(estimate_tokens("你好你好"), 5);
    }

    #[test]
    fn the_echo_summary_is_deterministic() {
        let messages = vec![
            ContextMessage::new(Role::User, "hello"),
            ContextMessage::new(Role::Assistant, "echo: hello"),
        ];
        assert_eq!(
            echo_summary(&messages),
            "summary of 2 messages: user: hello / assistant: echo: hello"
        );
    }
}
