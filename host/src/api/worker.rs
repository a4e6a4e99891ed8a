//! The worker HTTP API (SPEC §6): external processes run the runs of `worker` agents.
//!
//! Every endpoint lives under `/api/agents/{agent}/` and is authenticated with
//! `Authorization: Bearer <token>` of THAT agent (`[agents.<agent>] token`). A worker:
//!
//! 1. `POST runs/claim?wait_ms=N` — long-polls (default 25 s, at most 60 s) for the oldest
//!    pending run of the agent; `200` with the run and its context, or `204` when nothing became
//!    pending in time. The worker id comes from the `x-switchboard-worker` header or the body's
//!    `worker_id` (default `anonymous`).
//! 2. `GET runs/{session}/{run}/context` — the run's context again. A message's `meta` carries a
//!    command (`{"command": {"name", "args"}}`: a command the host does not run itself), an
//!    action (`{"action": {"name", "value", "message_id"}}`) and its attachments' records
//!    (`{"attachments": [{kind, name, mime, size, ref, blob_id, state, url, …}]}`: `state` is
//!    `pending`, `stored` — with the stored `size`, the `mime` sniffed from the bytes and
//!    `sha256` — or `failed` with an `error`; a claim waits up to `[blobs] run_wait_ms` for
//!    pending downloads first). `GET blobs/{blob_id}` (the record's `url`, relative to the
//!    host) hands out a stored attachment's bytes: `503` + `Retry-After` while pending, `410`
//!    once failed, `404` for another agent's. `GET runs/{session}/{run}/attachment
//!    ?message=<channel message id>&ref=<ref>` still works: from the blob store when stored,
//!    else through the channel plugin (only attachments of the run's context; 404 otherwise).
//! 3. `POST runs/{session}/{run}/heartbeat` every `heartbeat_interval_ms`, optionally with the
//!    usage of the last model step (`{"usage": {"prompt_tokens", "completion_tokens"}}`) —
//!    `{"continue": true}`, or `409 {"continue": false}`: the run was
//!    interrupted, edited away or recovered as stale, and the worker must stop.
//!    `{"continue": true, "compact": true}` means "compact now" (the context reached the
//!    agent's threshold): post a summary of the context to `…/compact`, re-read the context
//!    (`GET …/context`: system prompt + summary + the messages after it) and go on.
//! 4. `POST runs/{session}/{run}/parts {"text"}` — streams a piece of the reply to subscribers.
//! 5. `POST runs/{session}/{run}/complete {"reply", "usage"?}` or `…/fail {"error"}`.
//! 6. `POST runs/{session}/{run}/compact {"summary"}` (or `{"error"}` when no summary could be
//!    made) — `{"compacted": true, "boundary_message_id", "tokens_before", "tokens_after"}` or
//!    `{"compacted": false, "error"}` (the run goes on uncompacted).
//! 7. `POST runs/{session}/{run}/approvals {"prompt", "approvers"?, "timeout_s"?}` — only the
//!    run's owner — `{"approval_id", "state": "pending", "expires_at_ms"}`: the host sends the
//!    prompt to the session's chat with approve/reject buttons (`crate::approvals`: prompt ≤ 4000
//!    bytes, ≤ 50 approvers by participant id, none = anyone in the chat, timeout 1 s – 1 day,
//!    default 15 min). `GET runs/{session}/{run}/approvals/{id}?wait_s=N` waits up to N ≤ 30 s
//!    while it is pending: `{"state": "pending"|"approved"|"rejected"|"expired",
//!    "decided_by", "decided_by_name", "decided_at_ms", "expires_at_ms"}` (404 on another run's
//!    path or another agent's token).
//!
//! A claim's `"kind"` is `"run"` or `"compact"`: a compaction job (the context reached the
//! threshold before the run, or an operator asked). Its `context` is what to summarise and
//! `compact.prompt` how; the summary is the `reply` of `…/complete` (within
//! `compact.timeout_ms`; empty = failed, as is `…/fail`). The session's run comes as the next
//! claim, on the compacted context. See `crate::runs::compaction`.
//!
//! Every call is fenced by the run id: a worker that lost the run gets `409` and changes nothing.
//! Every authenticated call also records the worker as seen ([`AgentPresence`]): an agent whose
//! workers stop polling goes offline after its `offline_after_ms`.
//!
//! Waking: a waiting claim is woken by the run service's [`PendingSignal`] (every `pending`
//! status it publishes in this process) and, for pending runs made elsewhere (another replica,
//! code bypassing the service), re-checks every [`WorkerApiSettings::repoll_interval`].
//!
//! Known limit: a worker that disconnects during a long-poll is not noticed until the answer is
//! written; a run claimed in that instant stays `running` until stale recovery returns it to
//! pending (the run service's stale window).
//!
//! Owns request parsing, authentication and the mapping to HTTP; holds no SQL (it calls
//! [`RunService`], [`AgentPresence`], [`WorkerStore`] and [`Blobs`]). Errors are JSON
//! `{"error": …, "hint": …}`: what went wrong and what to do.
//!
//! [`PendingSignal`]: crate::runs::PendingSignal

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::agents::{
    AgentKind, AgentPresence, AgentRegistry, AgentSpec, ContextMessage, Role, Usage,
};
use crate::approvals::{ApprovalError, ApprovalRequest, Approvals, MAX_WAIT};
use crate::blobs::Blobs;
use crate::runs::compaction::{CompactJob, Finished, StepAnswer};
use crate::runs::{Compactor, NoopObserver, RunEndObserver, RunEnded, RunOutcome, RunService};
use crate::store::{
    BlobRow, BlobState, Message, RunClaim, RunEnd, RunFinish, RunOwner, RunState, StoreError,
    WorkerStore,
};

/// Header naming the worker (recorded as the run's owner; for logs and the admin API).
pub const WORKER_HEADER: &str = "x-switchboard-worker";
/// Worker id used when the worker names itself neither in the header nor in the body.
pub const ANONYMOUS_WORKER: &str = "anonymous";
/// Longest accepted worker id, in bytes.
pub const MAX_WORKER_ID_BYTES: usize = 128;
/// Long-poll wait of a claim without `wait_ms`.
pub const DEFAULT_CLAIM_WAIT: Duration = Duration::from_millis(25_000);
/// Longest long-poll wait; larger `wait_ms` values are clamped to it.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_millis(60_000);
/// Default interval at which a waiting claim re-checks for pending runs without a wake-up.
pub const DEFAULT_REPOLL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest accepted request body of the worker API (a whole reply fits).
pub const WORKER_MAX_BODY_BYTES: usize = 4 << 20;
/// Longest stored `last_error` of a failed run, in bytes (longer errors are cut).
pub const MAX_ERROR_BYTES: usize = 4096;
/// Runs whose owner this process verified, before the cache is reset.
const VERIFIED_RUNS_CAP: usize = 4096;

/// Tunables of the worker API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerApiSettings {
    /// How often a waiting claim looks for pending runs when nothing woke it.
    pub repoll_interval: Duration,
}

impl Default for WorkerApiSettings {
    fn default() -> Self {
        WorkerApiSettings {
            repoll_interval: DEFAULT_REPOLL_INTERVAL,
        }
    }
}

/// A run this process knows to belong to `agent` (and `session`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VerifiedRun {
    session_id: String,
    agent: String,
}

/// What the worker endpoints need. Cheap to clone.
#[derive(Clone)]
pub struct WorkerApi {
    runs: RunService,
    agents: Arc<AgentRegistry>,
    presence: AgentPresence,
    workers: WorkerStore,
    observer: Arc<dyn RunEndObserver>,
    settings: WorkerApiSettings,
    stop: CancellationToken,
    /// run id → owner facts checked against the database (so streamed parts need no read).
    verified: Arc<Mutex<HashMap<String, VerifiedRun>>>,
    /// Context compaction (`None`: never compacts, usage is ignored).
    compactor: Option<Compactor>,
    /// Downloaded attachments (`None`: `…/blobs/{id}` answers 503, contexts carry the records
    /// as stored).
    blobs: Option<Blobs>,
    /// Approvals (`None`: `…/approvals` answers 503).
    approvals: Option<Approvals>,
}

impl std::fmt::Debug for WorkerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerApi")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl WorkerApi {
    /// The worker API over `runs` (its database also holds presence), authenticating against
    /// `agents`, recording sightings in `presence`. Ended runs go to a [`NoopObserver`] until
    /// [`WorkerApi::with_observer`].
    pub fn new(runs: RunService, agents: Arc<AgentRegistry>, presence: AgentPresence) -> WorkerApi {
        let workers = runs.store().database().workers();
        WorkerApi {
            runs,
            agents,
            presence,
            workers,
            observer: Arc::new(NoopObserver),
            settings: WorkerApiSettings::default(),
            stop: CancellationToken::new(),
            verified: Arc::default(),
            compactor: None,
            blobs: None,
            approvals: None,
        }
    }

    /// Also serves downloaded attachments (`GET …/blobs/{blob_id}`), annotates contexts with
    /// their states and URLs, and makes a claim wait (bounded) for its run's downloads.
    pub fn with_blobs(mut self, blobs: Blobs) -> WorkerApi {
        self.blobs = Some(blobs);
        self
    }

    /// Also serves `…/approvals` (without it, those endpoints answer 503).
    pub fn with_approvals(mut self, approvals: Approvals) -> WorkerApi {
        self.approvals = Some(approvals);
        self
    }

    /// Also compacts contexts: compaction jobs at claims, "compact now" on heartbeats, the
    /// `…/compact` endpoint (without it, usage is ignored and `…/compact` answers 503).
    pub fn with_compactor(mut self, compactor: Compactor) -> WorkerApi {
        self.compactor = Some(compactor);
        self
    }

    /// Tells `observer` about every run a worker completes, fails or finds lost.
    pub fn with_observer(mut self, observer: Arc<dyn RunEndObserver>) -> WorkerApi {
        self.observer = observer;
        self
    }

    /// Other tunables.
    pub fn with_settings(mut self, settings: WorkerApiSettings) -> WorkerApi {
        self.settings = settings;
        self
    }

    /// The approval service, when this host serves approvals.
    pub fn approvals(&self) -> Option<&Approvals> {
        self.approvals.as_ref()
    }

    /// The run service.
    pub fn runs(&self) -> &RunService {
        &self.runs
    }

    /// The agents.
    pub fn agents(&self) -> &Arc<AgentRegistry> {
        &self.agents
    }

    /// Worker presence.
    pub fn presence(&self) -> &AgentPresence {
        &self.presence
    }

    /// Ends every waiting claim now with `204` and answers later claims at once (call when the
    /// host starts shutting down, so long-polls do not hold the graceful shutdown).
    pub fn stop_long_polls(&self) {
        self.stop.cancel();
    }

    fn verified(&self) -> MutexGuard<'_, HashMap<String, VerifiedRun>> {
        // Single inserts/removes only: a poisoned lock is still consistent.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, run_id: &str, session_id: &str, agent: &str) {
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_RUNS_CAP {
            verified.clear(); // entries are re-verified from the database on demand
        }
        verified.insert(
            run_id.to_owned(),
            VerifiedRun {
                session_id: session_id.to_owned(),
                agent: agent.to_owned(),
            },
        );
    }

    fn forget(&self, run_id: &str) {
        self.verified().remove(run_id);
    }

    fn is_verified(&self, run_id: &str, session_id: &str, agent: &str) -> bool {
        self.verified()
            .get(run_id)
            .is_some_and(|v| v.session_id == session_id && v.agent == agent)
    }

    /// Heartbeat period suggested to workers: a tenth of the stale window (≥ 1 ms).
    fn heartbeat_interval_ms(&self) -> u64 {
        (millis(self.runs.settings().stale_after) / 10).max(1)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The routes, with their full `/api/agents/…` paths (merged at the router's root: they are
/// not behind the admin token). Each is registered with its `#[utoipa::path]` operation, so
/// it is in the OpenAPI document (`super::openapi`) by construction.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(claim))
        .routes(routes!(context))
        .routes(routes!(attachment))
        .routes(routes!(blob))
        .routes(routes!(heartbeat))
        .routes(routes!(parts))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(compact_run))
        .routes(routes!(request_approval))
        .routes(routes!(approval_state))
        .layer(DefaultBodyLimit::max(WORKER_MAX_BODY_BYTES))
}

/// The path parameters of every call about one run.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read through `RunPath`'s tuple; this names the parameters for the document
struct RunParams {
    /// The agent (`[agents.<agent>]`, kind = "worker"); the token must be this agent's.
    agent: String,
    /// The claim's `session_id`.
    session: String,
    /// The claim's `run_id`: calls about a run the worker no longer owns answer 409.
    run: String,
}

// ------------------------------------------------------------------------------------ errors

/// An error answered as JSON `{"error": …, "hint": …}` (plus `"continue": false` where the
/// worker must stop).
#[derive(Debug)]
struct WorkerError {
    status: StatusCode,
    error: String,
    hint: String,
    stop: bool,
}

/// The body of every worker API error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkerErrorBody {
    /// What went wrong.
    error: String,
    /// What to do about it.
    hint: String,
    /// `false` on the answers to `…/heartbeat` that tell the worker to stop working on the run.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    keep_going: Option<bool>,
}

impl WorkerError {
    fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> WorkerError {
        WorkerError {
            status,
            error: error.into(),
            hint: hint.into(),
            stop: false,
        }
    }

    /// The same error, saying `"continue": false`: the worker must stop working on the run.
    fn stop(mut self) -> WorkerError {
        self.stop = true;
        self
    }

    fn internal(error: impl std::fmt::Display) -> WorkerError {
        tracing::error!("worker API request failed: {error}");
        WorkerError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the host log",
            "retry later; the run is unchanged unless a later call says otherwise",
        )
    }

    /// The run is not (or no longer) owned by the caller: nothing changed.
    fn not_owner(session_id: &str, run_id: &str) -> WorkerError {
        WorkerError::new(
            StatusCode::CONFLICT,
            format!(
                "run {run_id} of session {session_id} is no longer owned by this worker \
                 (interrupted, edited, recovered as stale or already ended); nothing changed"
            ),
            "stop working on this run and claim the next one",
        )
    }

    fn no_such_run(agent: &str, session_id: &str, run_id: &str) -> WorkerError {
        WorkerError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent} has no run {run_id} in session {session_id}"),
            "use the session_id and run_id of a claim made with this agent's token",
        )
    }

    fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> WorkerError {
        WorkerError::new(StatusCode::BAD_REQUEST, error, hint)
    }
}

impl From<StoreError> for WorkerError {
    fn from(e: StoreError) -> Self {
        WorkerError::internal(e)
    }
}

impl From<JsonRejection> for WorkerError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let hint = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request bodies are limited to {WORKER_MAX_BODY_BYTES} bytes")
        } else {
            "send a JSON body with `Content-Type: application/json` as the API describes".into()
        };
        WorkerError::new(status, rejection.body_text(), hint)
    }
}

impl From<PathRejection> for WorkerError {
    fn from(rejection: PathRejection) -> Self {
        WorkerError::bad_request(
            rejection.body_text(),
            "use /api/agents/{agent}/runs/{session_id}/{run_id}/…",
        )
    }
}

impl From<QueryRejection> for WorkerError {
    fn from(rejection: QueryRejection) -> Self {
        WorkerError::bad_request(
            rejection.body_text(),
            format!(
                "wait_ms is a number of milliseconds, at most {}",
                millis(MAX_CLAIM_WAIT)
            ),
        )
    }
}

impl IntoResponse for WorkerError {
    fn into_response(self) -> Response {
        let body = WorkerErrorBody {
            error: self.error,
            hint: self.hint,
            keep_going: self.stop.then_some(false),
        };
        (self.status, Json(body)).into_response()
    }
}

type WorkerResult<T> = Result<T, WorkerError>;

// ------------------------------------------------------------------------------ auth

/// The worker API of the host, or 503 when this host does not serve one.
fn api(state: &AppState) -> WorkerResult<&WorkerApi> {
    state.workers.as_ref().ok_or_else(|| {
        WorkerError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host does not serve the worker API",
            "run the host with the run service enabled (switchboard serve)",
        )
    })
}

/// Authenticates a request for `agent` and records the worker as seen. Refuses unknown agents
/// (404), agents the host runs itself (409), a missing or wrong token (401) and archived agents
/// (410).
async fn authorize<'a>(
    api: &'a WorkerApi,
    agent: &str,
    headers: &HeaderMap,
) -> WorkerResult<&'a AgentSpec> {
    let Some(spec) = api.agents.get(agent) else {
        return Err(WorkerError::new(
            StatusCode::NOT_FOUND,
            format!("no agent named {agent} is configured"),
            "check the agent name in the URL against the host's [agents.<name>] sections",
        ));
    };
    if !matches!(spec.kind, AgentKind::Worker(_)) {
        return Err(WorkerError::new(
            StatusCode::CONFLICT,
            format!(
                "agent {agent} is kind = \"{}\": the host runs it itself, workers cannot claim \
                 its runs",
                spec.kind_name()
            ),
            format!(
                "configure [agents.{agent}] kind = \"worker\" with a token to run it externally"
            ),
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None | Some("") => {
            return Err(WorkerError::new(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <worker token>`",
                format!("send the token configured as [agents.{agent}] token"),
            ));
        }
        Some(token) if !api.agents.verify_worker_token(agent, token) => {
            tracing::warn!(agent, "worker API request with a wrong token");
            return Err(WorkerError::new(
                StatusCode::UNAUTHORIZED,
                format!("wrong worker token for agent {agent}"),
                format!(
                    "send the token configured as [agents.{agent}] token (each agent has its own)"
                ),
            ));
        }
        Some(_) => {}
    }
    if spec.archived {
        return Err(WorkerError::new(
            StatusCode::GONE,
            format!("agent {agent} is archived; archived agents are refused"),
            format!(
                "stop this worker, or set [agents.{agent}] archived = false and restart the host"
            ),
        ));
    }
    if let Err(e) = api.presence.seen(agent).await {
        // Presence is best effort: the request itself still works.
        tracing::warn!(agent, "worker presence not recorded: {e}");
    }
    Ok(spec)
}

/// The session's run facts if the session's installation is bound to `agent`: 404 for
/// another agent's session (one agent's token never learns about another agent's runs), 409
/// (nothing changed, stop) for a session that was deleted.
async fn owner_for_agent(
    api: &WorkerApi,
    agent: &str,
    session_id: &str,
    run_id: &str,
) -> WorkerResult<RunOwner> {
    match api.workers.run_owner(session_id).await? {
        Some(owner) if owner.agent == agent => Ok(owner),
        Some(_) => Err(WorkerError::no_such_run(agent, session_id, run_id)),
        None => {
            api.forget(run_id);
            Err(WorkerError::not_owner(session_id, run_id))
        }
    }
}

// ---------------------------------------------------------------------------- context

/// A run's context as workers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerContext {
    /// The agent's system prompt, to send first (as a `system` message), if configured.
    pub system_prompt: Option<String>,
    /// The session's messages the run works on, oldest first.
    pub messages: Vec<ContextMessage>,
}

fn context_of(spec: &AgentSpec, messages: &[Message]) -> WorkerContext {
    WorkerContext {
        system_prompt: spec.system_prompt.clone(),
        messages: messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "assistant" => Role::Assistant,
                    "system" => Role::System,
                    _ => Role::User,
                };
                ContextMessage {
                    meta: m.meta.clone(),
                    ..ContextMessage::new(role, m.body.clone())
                }
            })
            .collect(),
    }
}

/// What a claim hands out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// A run: answer the context.
    #[default]
    Run,
    /// A compaction job: summarise the context as `compact.prompt` says; the summary is the
    /// completion's `reply`.
    Compact,
}

/// How to do a compaction job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompactInstructions {
    /// Why: `pre_run` or `manual`.
    pub source: crate::store::CompactionSource,
    /// The instruction to follow (send it as the last user message after the context).
    pub prompt: String,
    /// Complete with the summary within this (ms); later it counts as failed.
    pub timeout_ms: u64,
}

/// The answer to a successful claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimedRun {
    /// `run` or `compact` (a compaction job).
    #[serde(default)]
    pub kind: ClaimKind,
    /// For a compaction job: how to do it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<CompactInstructions>,
    /// The session.
    pub session_id: String,
    /// The run: present it (in the URL) to every later call.
    pub run_id: String,
    /// The session's installation.
    pub installation_id: String,
    /// The agent.
    pub agent: String,
    /// The worker id recorded as the owner.
    pub worker_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// When the run started (epoch ms).
    pub started_at_ms: i64,
    /// What to answer.
    pub context: WorkerContext,
    /// Send a heartbeat at least this often (ms).
    pub heartbeat_interval_ms: u64,
    /// A run without a heartbeat for this long goes back to pending (ms).
    pub stale_after_ms: u64,
}

// ------------------------------------------------------------------------------ claim

/// Query of `POST …/runs/claim`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ClaimQuery {
    /// How long to wait for a pending run (ms; default 25000, larger values are cut to 60000).
    wait_ms: Option<u64>,
}

/// Optional body of `POST …/runs/claim`.
#[derive(Debug, Default, Deserialize, ToSchema)]
struct ClaimBody {
    /// The worker's name, recorded as the run's owner (the `x-switchboard-worker` header wins).
    worker_id: Option<String>,
}

fn worker_id(headers: &HeaderMap, body: &Bytes) -> WorkerResult<String> {
    let from_header = match headers.get(WORKER_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
            WorkerError::bad_request(
                format!("the {WORKER_HEADER} header is not visible ASCII"),
                "name the worker with letters, digits and punctuation",
            )
        })?),
    };
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ClaimBody>(body)
            .map_err(|e| {
                WorkerError::bad_request(
                    format!("the claim body is not valid JSON: {e}"),
                    "send no body, or {\"worker_id\": \"<name>\"}",
                )
            })?
            .worker_id
    };
    let id = from_header
        .or(from_body)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ANONYMOUS_WORKER.to_owned());
    if id.len() > MAX_WORKER_ID_BYTES || id.chars().any(char::is_control) {
        return Err(WorkerError::bad_request(
            format!(
                "worker id is longer than {MAX_WORKER_ID_BYTES} bytes or has control characters"
            ),
            "use a short name such as the host name and process id",
        ));
    }
    Ok(id)
}

/// Claim the agent's oldest pending run (long-poll).
///
/// Waits up to `wait_ms` for a pending run of the agent. `kind` is `run` (answer the context)
/// or `compact` (summarise the context as `compact.prompt` says; the summary is the `reply` of
/// `…/complete`).
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/claim",
    tag = "worker",
    params(
        ("agent" = String, Path, description = "The agent (kind = \"worker\"); the token must be this agent's."),
        ClaimQuery,
        ("x-switchboard-worker" = Option<String>, Header, description = "The worker's name (else the body's `worker_id`, else `anonymous`); at most 128 bytes."),
    ),
    request_body(content = Option<ClaimBody>, description = "Optional: no body, or `{\"worker_id\"}`."),
    responses(
        (status = 200, description = "A run (or a compaction job) and its context.", body = ClaimedRun),
        (status = 204, description = "Nothing became pending within `wait_ms` (or the host is shutting down): claim again."),
        (status = 400, description = "A worker id that is too long or not visible ASCII, a body that is not JSON, a bad `wait_ms`.", body = WorkerErrorBody),
    ),
)]
async fn claim(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ClaimQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> WorkerResult<Response> {
    let api = api(&state)?;
    let Path(agent) = path?;
    let Query(query) = query?;
    let spec = authorize(api, &agent, &headers).await?;
    let worker = worker_id(&headers, &body)?;
    let wait = query
        .wait_ms
        .map_or(DEFAULT_CLAIM_WAIT, Duration::from_millis)
        .min(MAX_CLAIM_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look, so a run made pending in between wakes us.
    let mut waiter = api.runs.pending_signal().subscribe();
    let mut first = true;
    loop {
        if !first && let Err(e) = api.presence.seen(&agent).await {
            tracing::warn!(agent, "worker presence not recorded: {e}");
        }
        first = false;
        if let Some(claim) = api.runs.acquire(&agent, &worker).await? {
            let job = match &api.compactor {
                Some(compactor) => compactor
                    .before_worker_run(&claim, spec)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(session = %claim.session_id, "pre-run compaction check failed (the run goes on): {e}");
                        None
                    }),
                None => None,
            };
            if let Some(job) = job {
                api.remember(&claim.run_id, &claim.session_id, &claim.agent);
                tracing::info!(agent = %claim.agent, worker = %claim.worker_id, session = %claim.session_id, run = %claim.run_id, "compaction job claimed by a worker");
                return Ok(Json(compact_job(api, spec, &claim, job)).into_response());
            }
            match claimed_run(api, spec, &claim).await {
                Ok(Some(run)) => return Ok(Json(run).into_response()),
                // Lost between the acquisition and the read (interrupted): look again.
                Ok(None) => continue,
                Err(e) => {
                    // Do not strand the run: back to pending for the next claim.
                    let _ = api
                        .runs
                        .release(&claim.session_id, &claim.run_id, RunEnd::Shutdown)
                        .await;
                    return Err(e);
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || api.stop.is_cancelled() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let next_look = (now + api.settings.repoll_interval).min(deadline);
        tokio::select! {
            _ = waiter.notified() => {}
            _ = tokio::time::sleep_until(next_look) => {}
            _ = api.stop.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// The claim's answer; `None` if the run was lost before its context could be read.
async fn claimed_run(
    api: &WorkerApi,
    spec: &AgentSpec,
    claim: &RunClaim,
) -> WorkerResult<Option<ClaimedRun>> {
    let Some(mut messages) = api
        .runs
        .run_context(&claim.session_id, &claim.run_id)
        .await?
    else {
        return Ok(None);
    };
    if let Some(blobs) = &api.blobs {
        // The run waits (bounded) for its messages' downloads, then starts with placeholders.
        if !blobs.wait_settled(&messages).await {
            tracing::info!(session = %claim.session_id, run = %claim.run_id, "the run starts with attachment downloads still pending");
        }
        annotate(api, &claim.agent, &mut messages).await;
    }
    api.remember(&claim.run_id, &claim.session_id, &claim.agent);
    tracing::info!(agent = %claim.agent, worker = %claim.worker_id, session = %claim.session_id, run = %claim.run_id, messages = messages.len(), "run claimed by a worker");
    Ok(Some(ClaimedRun {
        kind: ClaimKind::Run,
        compact: None,
        session_id: claim.session_id.clone(),
        run_id: claim.run_id.clone(),
        installation_id: claim.installation_id.clone(),
        agent: claim.agent.clone(),
        worker_id: claim.worker_id.clone(),
        chat_type: claim.chat_type.clone(),
        started_at_ms: claim.started_at_ms,
        context: context_of(spec, &messages),
        heartbeat_interval_ms: api.heartbeat_interval_ms(),
        stale_after_ms: millis(api.runs.settings().stale_after),
    }))
}

/// The claim's answer for a compaction job.
fn compact_job(api: &WorkerApi, spec: &AgentSpec, claim: &RunClaim, job: CompactJob) -> ClaimedRun {
    ClaimedRun {
        kind: ClaimKind::Compact,
        compact: Some(CompactInstructions {
            source: job.source,
            prompt: job.prompt.to_owned(),
            timeout_ms: millis(job.timeout),
        }),
        session_id: claim.session_id.clone(),
        run_id: claim.run_id.clone(),
        installation_id: claim.installation_id.clone(),
        agent: claim.agent.clone(),
        worker_id: claim.worker_id.clone(),
        chat_type: claim.chat_type.clone(),
        started_at_ms: claim.started_at_ms,
        context: WorkerContext {
            system_prompt: spec.system_prompt.clone(),
            messages: job.messages,
        },
        heartbeat_interval_ms: api.heartbeat_interval_ms(),
        stale_after_ms: millis(api.runs.settings().stale_after),
    }
}

// ------------------------------------------------------------------------ run calls

type RunPath = Result<Path<(String, String, String)>, PathRejection>;

/// The run's context again (after a compaction, for instance).
#[utoipa::path(
    get,
    path = "/api/agents/{agent}/runs/{session}/{run}/context",
    tag = "worker",
    params(RunParams),
    responses(
        (status = 200, description = "The system prompt and the messages the run works on.", body = WorkerContext),
        (status = 409, description = "The worker no longer owns the run: stop.", body = WorkerErrorBody),
    ),
)]
async fn context(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
) -> WorkerResult<Json<WorkerContext>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    let spec = authorize(api, &agent, &headers).await?;
    owner_for_agent(api, &agent, &session_id, &run_id).await?;
    match api.runs.run_context(&session_id, &run_id).await? {
        Some(mut messages) => {
            annotate(api, &agent, &mut messages).await;
            Ok(Json(context_of(spec, &messages)))
        }
        None => Err(WorkerError::not_owner(&session_id, &run_id)),
    }
}

/// Adds the blob states and URLs to the attachment records of `messages` (best effort: on a
/// database failure the records stay as stored).
async fn annotate(api: &WorkerApi, agent: &str, messages: &mut [Message]) {
    if let Some(blobs) = &api.blobs
        && let Err(e) = blobs.annotate(agent, messages).await
    {
        tracing::warn!(
            agent,
            "attachment states could not be read (records as stored): {e}"
        );
    }
}

/// The answer for a blob's bytes: its sniffed type, never sniffed again by the client, and
/// offered as a download.
fn blob_response(row: &BlobRow, bytes: Vec<u8>) -> Response {
    let mime = row
        .mime
        .clone()
        .filter(|m| axum::http::HeaderValue::from_str(m).is_ok())
        .unwrap_or_else(|| crate::blobs::OCTET_STREAM.into());
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (header::CONTENT_DISPOSITION, "attachment".into()),
            (
                header::ETAG,
                format!("\"{}\"", row.sha256.as_deref().unwrap_or("")),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// `503` with `Retry-After`: the blob will be there later.
fn retry_later(error: String, hint: &str, seconds: u64) -> Response {
    let mut response =
        WorkerError::new(StatusCode::SERVICE_UNAVAILABLE, error, hint).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
    response
}

/// The bytes of a downloaded attachment.
///
/// `GET /api/agents/{agent}/blobs/{blob_id}`: the bytes of a downloaded attachment of one of
/// the agent's sessions. `404` for an unknown blob or another agent's; `503` + `Retry-After`
/// while it is still being downloaded; `410` with the reason when the download was given up.
#[utoipa::path(
    get,
    path = "/api/agents/{agent}/blobs/{blob}",
    tag = "worker",
    params(
        ("agent" = String, Path, description = "The agent (kind = \"worker\"); the token must be this agent's."),
        ("blob" = String, Path, description = "A `blob_id` from a context message's `meta.attachments`."),
    ),
    responses(
        (status = 200, description = "The bytes, typed as sniffed when stored (`Content-Disposition: attachment`, `ETag` = the SHA-256).", content_type = "application/octet-stream"),
        (status = 404, description = "No such blob for this agent.", body = WorkerErrorBody),
        (status = 410, description = "The download was given up (the reason is in `error`).", body = WorkerErrorBody),
        (status = 503, description = "Still being downloaded (retry after `Retry-After` seconds), or this host keeps no blobs.", body = WorkerErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    ),
)]
async fn blob(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> WorkerResult<Response> {
    let api = api(&state)?;
    let Path((agent, blob_id)) = path.map_err(|rejection| {
        WorkerError::bad_request(
            rejection.body_text(),
            "use /api/agents/{agent}/blobs/{blob_id} with a blob_id from meta.attachments",
        )
    })?;
    authorize(api, &agent, &headers).await?;
    let Some(blobs) = &api.blobs else {
        return Err(WorkerError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host does not keep attachments",
            "fetch them through …/runs/{session}/{run}/attachment?message=…&ref=…",
        ));
    };
    let missing = || {
        WorkerError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent} has no blob {blob_id}"),
            "use a url (or blob_id) from the meta.attachments of this agent's run contexts",
        )
    };
    let Some(row) = blobs.get(&blob_id).await? else {
        return Err(missing());
    };
    // One agent's token never reaches another agent's sessions (nor learns they exist).
    match api.workers.run_owner(&row.session_id).await? {
        Some(owner) if owner.agent == agent => {}
        _ => return Err(missing()),
    }
    match row.state {
        BlobState::Pending => Ok(retry_later(
            format!("blob {blob_id} is still being downloaded from the channel"),
            "retry after Retry-After seconds; a run's claim already waits up to [blobs] run_wait_ms for its downloads",
            1,
        )),
        BlobState::Failed => Err(WorkerError::new(
            StatusCode::GONE,
            format!(
                "blob {blob_id} could not be downloaded: {}",
                row.error.as_deref().unwrap_or("the download failed")
            ),
            "the attachment record (kind, name) is all there is; tell the user it could not be read",
        )),
        BlobState::Stored => match blobs.read(&row).await {
            Ok(bytes) => Ok(blob_response(&row, bytes)),
            Err(e) => {
                tracing::error!(blob = %blob_id, "a stored blob could not be read: {e}");
                Ok(retry_later(
                    format!("blob {blob_id} is stored but its file cannot be read on this host"),
                    "retry later; the operator must check the [blobs] dir (replicas need a shared one)",
                    5,
                ))
            }
        },
    }
}

/// Query of `GET …/attachment`: the channel message id and the attachment's `ref`, as the
/// context's `meta.attachments` gives them.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AttachmentQuery {
    /// The channel message id of a message in the run's context.
    message: String,
    /// The attachment's `ref` in that message's `meta.attachments`.
    #[serde(rename = "ref")]
    reference: String,
}

/// The bytes of an attachment of a message in the run's context.
///
/// `GET …/attachment?message=…&ref=…`: from the blob store when stored, else fetched through
/// the channel plugin (`outbound.fetch-attachment`). Only attachments of the context's
/// messages can be fetched.
#[utoipa::path(
    get,
    path = "/api/agents/{agent}/runs/{session}/{run}/attachment",
    tag = "worker",
    params(RunParams, AttachmentQuery),
    responses(
        (status = 200, description = "The bytes, with the type the channel or the blob store gave.", content_type = "application/octet-stream"),
        (status = 404, description = "No such attachment in the run's context, or the channel serves none.", body = WorkerErrorBody),
        (status = 409, description = "The worker no longer owns the run: stop.", body = WorkerErrorBody),
        (status = 502, description = "The channel did not hand out the attachment.", body = WorkerErrorBody),
    ),
)]
async fn attachment(
    State(state): State<AppState>,
    path: RunPath,
    query: Result<axum::extract::Query<AttachmentQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> WorkerResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    authorize(api, &agent, &headers).await?;
    let axum::extract::Query(query) = query.map_err(|e| {
        WorkerError::bad_request(
            format!("the query is not usable: {e}"),
            "pass ?message=<channel message id>&ref=<ref> from the context's meta.attachments",
        )
    })?;
    owner_for_agent(api, &agent, &session_id, &run_id).await?;
    let Some(messages) = api.runs.run_context(&session_id, &run_id).await? else {
        return Err(WorkerError::not_owner(&session_id, &run_id));
    };
    let listed = messages.iter().any(|m| {
        m.channel_message_id.as_deref() == Some(query.message.as_str())
            && m.meta
                .as_ref()
                .and_then(|meta| meta["attachments"].as_array())
                .is_some_and(|attachments| {
                    attachments
                        .iter()
                        .any(|a| a["ref"] == query.reference.as_str())
                })
    });
    let missing = || {
        WorkerError::new(
            StatusCode::NOT_FOUND,
            "no such attachment in this run's context",
            "use a message id and ref listed in the context's meta.attachments",
        )
    };
    if !listed {
        return Err(missing());
    }
    // A stored download is served from the blob store without asking the channel again.
    if let Some(blobs) = &api.blobs {
        let blob_id = messages
            .iter()
            .filter(|m| m.channel_message_id.as_deref() == Some(query.message.as_str()))
            .filter_map(|m| m.meta.as_ref()?["attachments"].as_array())
            .flatten()
            .find(|a| a["ref"] == query.reference.as_str())
            .and_then(|a| a[crate::store::BLOB_ID_KEY].as_str());
        if let Some(row) = match blob_id {
            Some(id) => blobs.get(id).await?,
            None => None,
        }
        .filter(|row| row.state == BlobState::Stored)
        {
            match blobs.read(&row).await {
                Ok(bytes) => return Ok(blob_response(&row, bytes)),
                Err(e) => {
                    tracing::warn!(blob = %row.id, "a stored blob could not be read (fetching through the channel): {e}")
                }
            }
        }
    }
    let installation = match state.records.get_session(&session_id).await? {
        Some(session) => state.installations.get(&session.installation_id).await?,
        None => None,
    }
    .ok_or_else(missing)?;
    let plugin = state
        .runtime
        .plugin_for_channel(&installation.channel)
        .filter(|p| p.manifest().features.attachments)
        .ok_or_else(|| {
            WorkerError::new(
                StatusCode::NOT_FOUND,
                "the channel's plugin does not serve attachments",
                "the attachment record is all there is; read its name and kind",
            )
        })?;
    let cx = std::sync::Arc::new(installation.context());
    match plugin
        .fetch_attachment(&cx, &query.message, &query.reference)
        .await
    {
        Ok(Ok(content)) => {
            let mime = content
                .mime
                .filter(|m| axum::http::HeaderValue::from_str(m).is_ok())
                .unwrap_or_else(|| "application/octet-stream".into());
            Ok(([(axum::http::header::CONTENT_TYPE, mime)], content.body).into_response())
        }
        Ok(Err(e)) => {
            tracing::warn!(session = %session_id, run = %run_id, "fetching an attachment failed: {e:?}");
            Err(WorkerError::new(
                StatusCode::BAD_GATEWAY,
                "the channel did not hand out the attachment",
                "try again later",
            ))
        }
        Err(e) => {
            tracing::warn!(session = %session_id, run = %run_id, "the fetch-attachment call failed: {e}");
            Err(WorkerError::new(
                StatusCode::BAD_GATEWAY,
                "the channel did not hand out the attachment",
                "try again later",
            ))
        }
    }
}

/// Optional body of `POST …/heartbeat`.
#[derive(Debug, Default, Deserialize, ToSchema)]
struct HeartbeatBody {
    /// The usage of the last model step (drives "compact now").
    usage: Option<WorkerUsage>,
}

/// The answer to a heartbeat the run survives.
#[derive(Debug, Serialize, ToSchema)]
struct HeartbeatAnswer {
    /// Always `true` here (a `409` says `false`).
    #[serde(rename = "continue")]
    keep_going: bool,
    /// `true`: the context reached the agent's threshold; post a summary to `…/compact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    compact: Option<bool>,
}

/// Keep the run (every `heartbeat_interval_ms`).
///
/// Optionally reports the last model step's usage; the answer may ask for a compaction.
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/heartbeat",
    tag = "worker",
    params(RunParams),
    request_body(content = Option<HeartbeatBody>, description = "Optional: no body, or `{\"usage\": {…}}`."),
    responses(
        (status = 200, description = "Go on (`compact: true`: compact now).", body = HeartbeatAnswer),
        (status = 409, description = "`\"continue\": false`: the run was interrupted, edited away or recovered as stale; stop.", body = WorkerErrorBody),
    ),
)]
async fn heartbeat(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Bytes,
) -> WorkerResult<Json<HeartbeatAnswer>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    let spec = authorize(api, &agent, &headers).await?;
    let beat: HeartbeatBody = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            WorkerError::bad_request(
                format!("the heartbeat body is not valid JSON: {e}"),
                "send no body, or {\"usage\": {\"prompt_tokens\": N, \"completion_tokens\": M}}",
            )
        })?
    };
    let owner = owner_for_agent(api, &agent, &session_id, &run_id)
        .await
        .map_err(|e| match e.status {
            StatusCode::CONFLICT => e.stop(),
            _ => e,
        })?;
    if api.runs.heartbeat(&session_id, &run_id).await? {
        let answer = match &api.compactor {
            Some(compactor) => {
                compactor
                    .step(
                        &session_id,
                        &run_id,
                        spec,
                        beat.usage.map(WorkerUsage::into_usage),
                    )
                    .await?
            }
            None => StepAnswer::Continue,
        };
        match answer {
            StepAnswer::Continue => {
                return Ok(Json(HeartbeatAnswer {
                    keep_going: true,
                    compact: None,
                }));
            }
            StepAnswer::CompactNow => {
                return Ok(Json(HeartbeatAnswer {
                    keep_going: true,
                    compact: Some(true),
                }));
            }
            // A compaction job past its timeout was taken back: the worker must stop.
            StepAnswer::Stop => {
                api.forget(&run_id);
                return Err(WorkerError::not_owner(&session_id, &run_id).stop());
            }
        }
    }
    api.forget(&run_id);
    api.observer.run_ended(RunEnded {
        session_id: session_id.clone(),
        run_id: run_id.clone(),
        installation_id: owner.installation_id,
        agent,
        outcome: RunOutcome::Lost,
    });
    Err(WorkerError::not_owner(&session_id, &run_id).stop())
}

/// Body of `POST …/parts`.
#[derive(Debug, Deserialize, ToSchema)]
struct PartBody {
    /// The next piece of the reply (appended to what was streamed before).
    text: String,
}

/// `{"ok": true}`: done.
#[derive(Debug, Serialize, ToSchema)]
struct Done {
    /// Always `true`.
    ok: bool,
}

/// Stream a piece of the reply to the session's subscribers.
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/parts",
    tag = "worker",
    params(RunParams),
    request_body = PartBody,
    responses(
        (status = 200, description = "Published.", body = Done),
        (status = 409, description = "The worker no longer owns the run: stop.", body = WorkerErrorBody),
    ),
)]
async fn parts(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Result<Json<PartBody>, JsonRejection>,
) -> WorkerResult<Json<Done>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    authorize(api, &agent, &headers).await?;
    let Json(part) = body?;
    // Fast path: a run this process verified and is streaming.
    if api.is_verified(&run_id, &session_id, &agent)
        && api.runs.publish_part(&session_id, &run_id, &part.text)
    {
        return Ok(Json(Done { ok: true }));
    }
    let owner = owner_for_agent(api, &agent, &session_id, &run_id).await?;
    if !owner.owns(&run_id) {
        api.forget(&run_id);
        return Err(WorkerError::not_owner(&session_id, &run_id));
    }
    // The run is the session's and still running, but this process is not streaming it (it
    // was claimed through another replica, or before a restart): stream it from here too.
    api.remember(&run_id, &session_id, &agent);
    if !api.runs.publish_part(&session_id, &run_id, &part.text) {
        api.runs.hub().begin_parts(&session_id, &run_id);
        api.runs.publish_part(&session_id, &run_id, &part.text);
    }
    Ok(Json(Done { ok: true }))
}

// ------------------------------------------------------------------------- approvals

/// Body of `POST …/approvals`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApprovalBody {
    /// The question shown in the chat (at most 4000 bytes).
    prompt: String,
    /// Who may decide, by participant id (at most 50); none = anyone in the chat.
    #[serde(default)]
    approvers: Vec<String>,
    /// How long the question stays open (1 s – 1 day; default 15 min).
    timeout_s: Option<u64>,
}

/// The answer to an approval request.
#[derive(Debug, Serialize, ToSchema)]
struct ApprovalCreated {
    /// Ask `…/approvals/{approval}` with it.
    approval_id: String,
    /// `pending`.
    state: String,
    /// When it expires unanswered (epoch ms).
    expires_at_ms: i64,
}

/// An approval's state.
#[derive(Debug, Serialize, ToSchema)]
struct ApprovalStatus {
    /// The approval.
    approval_id: String,
    /// `pending`, `approved`, `rejected` or `expired`.
    state: String,
    /// The participant id of who decided.
    decided_by: Option<String>,
    /// Their display name, if the channel gave one.
    decided_by_name: Option<String>,
    /// When it was decided (epoch ms).
    decided_at_ms: Option<i64>,
    /// When it expires (or expired) unanswered (epoch ms).
    expires_at_ms: i64,
}

fn approvals_of(api: &WorkerApi) -> WorkerResult<&Approvals> {
    api.approvals.as_ref().ok_or_else(|| {
        WorkerError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host does not serve approvals",
            "run the host with `switchboard serve`, which enables them",
        )
    })
}

/// Ask the chat for an approval.
///
/// `POST …/approvals {"prompt", "approvers"?, "timeout_s"?}` → `{"approval_id", "expires_at_ms"}`:
/// only the run's owner; the question goes to the session's chat with approve/reject buttons.
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/approvals",
    tag = "worker",
    params(RunParams),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "Asked; poll `…/approvals/{approval}`.", body = ApprovalCreated),
        (status = 400, description = "A prompt, approver list or timeout out of bounds.", body = WorkerErrorBody),
        (status = 409, description = "The worker no longer owns the run: stop.", body = WorkerErrorBody),
        (status = 503, description = "This host does not serve approvals.", body = WorkerErrorBody),
    ),
)]
async fn request_approval(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Result<Json<ApprovalBody>, JsonRejection>,
) -> WorkerResult<Json<ApprovalCreated>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    authorize(api, &agent, &headers).await?;
    let approvals = approvals_of(api)?;
    let Json(body) = body?;
    let owner = owner_for_agent(api, &agent, &session_id, &run_id).await?;
    if !owner.owns(&run_id) {
        api.forget(&run_id);
        return Err(WorkerError::not_owner(&session_id, &run_id));
    }
    let request = ApprovalRequest {
        prompt: body.prompt,
        approvers: body.approvers,
        timeout: body.timeout_s.map(Duration::from_secs),
    };
    match approvals
        .request(&session_id, &run_id, &agent, &request)
        .await
    {
        Ok(approval) => Ok(Json(ApprovalCreated {
            approval_id: approval.id,
            state: approval.state.as_str().to_owned(),
            expires_at_ms: approval.expires_at_ms,
        })),
        Err(ApprovalError::Invalid(problem)) => Err(WorkerError::bad_request(
            format!("approval refused: {problem}"),
            "send {\"prompt\": \"…\", \"approvers\": [\"<participant id>\", …]?, \"timeout_s\": N?}",
        )),
        Err(ApprovalError::NoSession(_)) => Err(WorkerError::not_owner(&session_id, &run_id)),
        Err(ApprovalError::Store(e)) => Err(WorkerError::internal(e)),
    }
}

/// Query of `GET …/approvals/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ApprovalWait {
    /// Wait up to this many seconds (at most 30) while the approval is pending.
    wait_s: Option<u64>,
}

/// An approval's state (long-poll while pending).
///
/// `GET …/approvals/{id}?wait_s=N` → `{"state", "decided_by", "decided_by_name",
/// "decided_at_ms"}`, waiting up to N (≤ 30) seconds while it is pending. Only the agent whose
/// run asked sees it, on that run's path.
#[utoipa::path(
    get,
    path = "/api/agents/{agent}/runs/{session}/{run}/approvals/{approval}",
    tag = "worker",
    params(
        RunParams,
        ("approval" = String, Path, description = "The `approval_id` that `POST …/approvals` answered."),
        ApprovalWait,
    ),
    responses(
        (status = 200, description = "The approval as it is (still `pending` when `wait_s` ran out).", body = ApprovalStatus),
        (status = 404, description = "This run asked for no such approval.", body = WorkerErrorBody),
        (status = 503, description = "This host does not serve approvals.", body = WorkerErrorBody),
    ),
)]
async fn approval_state(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    query: Result<Query<ApprovalWait>, QueryRejection>,
    headers: HeaderMap,
) -> WorkerResult<Json<ApprovalStatus>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id, approval_id)) = path?;
    let Query(query) = query.map_err(|e| {
        WorkerError::bad_request(
            e.body_text(),
            format!(
                "wait_s is a number of seconds, at most {}",
                MAX_WAIT.as_secs()
            ),
        )
    })?;
    authorize(api, &agent, &headers).await?;
    let approvals = approvals_of(api)?;
    let not_found = || {
        WorkerError::new(
            StatusCode::NOT_FOUND,
            format!("run {run_id} of session {session_id} asked for no approval {approval_id}"),
            "use the approval_id that POST …/approvals answered, on the same run's path",
        )
    };
    let mine = |a: &crate::store::Approval| {
        a.agent == agent && a.session_id == session_id && a.run_id == run_id
    };
    match approvals.current(&approval_id).await? {
        Some(a) if mine(&a) => {}
        _ => return Err(not_found()),
    }
    let wait = Duration::from_secs(query.wait_s.unwrap_or(0)).min(MAX_WAIT);
    let approval = tokio::select! {
        found = approvals.wait(&approval_id, wait) => found?,
        // Shutting down: answer with the state as it is.
        _ = api.stop.cancelled() => approvals.current(&approval_id).await?,
    }
    .ok_or_else(not_found)?;
    Ok(Json(ApprovalStatus {
        approval_id: approval.id,
        state: approval.state.as_str().to_owned(),
        decided_by: approval.decided_by,
        decided_by_name: approval.decided_by_name,
        decided_at_ms: approval.decided_at_ms,
        expires_at_ms: approval.expires_at_ms,
    }))
}

/// Token usage as workers report it (missing counts are 0).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
struct WorkerUsage {
    /// Tokens of the prompt (the context occupancy the compaction threshold is judged by).
    prompt_tokens: u64,
    /// Tokens of the completion.
    completion_tokens: u64,
    /// Their sum, if the model reported one.
    total_tokens: Option<u64>,
}

impl WorkerUsage {
    fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self
                .total_tokens
                .unwrap_or(self.prompt_tokens.saturating_add(self.completion_tokens)),
        }
    }
}

/// Body of `POST …/complete`.
#[derive(Debug, Deserialize, ToSchema)]
struct CompleteBody {
    /// The whole reply (blank: no reply is delivered); for a compaction job, the summary.
    #[serde(default)]
    reply: String,
    /// The usage of the run's last model step.
    usage: Option<WorkerUsage>,
}

/// The answer to a completed run.
#[derive(Debug, Serialize, ToSchema)]
struct RunCompleted {
    /// Always `true`.
    ok: bool,
    /// The stored reply's message id (none for a blank reply).
    message_id: Option<i64>,
    /// Whether the session was released (always `true` today).
    released: bool,
    /// The session's run state now (`pending` when messages queued meanwhile).
    state: Option<RunState>,
}

/// The answer to `…/complete`: a run's, or a compaction job's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum CompleteAnswer {
    /// A run was completed.
    Run(RunCompleted),
    /// A compaction job was completed (its `reply` was the summary).
    Job(JobAnswer),
}

/// Complete the run with its reply.
///
/// For a compaction job, `reply` is the summary (blank = failed).
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/complete",
    tag = "worker",
    params(RunParams),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "Stored; the reply is on its way to the chat.", body = CompleteAnswer),
        (status = 409, description = "The worker no longer owns the run (another call ended it first): nothing stored.", body = WorkerErrorBody),
    ),
)]
async fn complete(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Result<Json<CompleteBody>, JsonRejection>,
) -> WorkerResult<Json<CompleteAnswer>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    authorize(api, &agent, &headers).await?;
    let Json(body) = body?;
    let owner = owner_for_agent(api, &agent, &session_id, &run_id).await?;
    if !owner.owns(&run_id) {
        api.forget(&run_id);
        return Err(WorkerError::not_owner(&session_id, &run_id));
    }
    let usage = body.usage.map(WorkerUsage::into_usage);
    if let Some(compactor) = &api.compactor {
        if compactor.is_job(&session_id, &run_id).await? {
            let spec = api
                .agents
                .get(&agent)
                .ok_or_else(|| WorkerError::internal("agent vanished"))?;
            let finished = compactor
                .worker_summary(&session_id, &run_id, spec, Ok(body.reply))
                .await?;
            api.forget(&run_id);
            return job_answer(&session_id, &run_id, finished)
                .map(|Json(job)| Json(CompleteAnswer::Job(job)));
        }
        compactor.run_ending(&session_id, &run_id).await?;
    }
    // Reply, run end and the reply's delivery in one transaction fenced by the run id: of
    // concurrent completes (a worker retrying after a timeout) the first wins and the others
    // store nothing and get 409.
    let finish = RunFinish::Completed {
        reply: Some(body.reply).filter(|reply| !reply.trim().is_empty()),
        context_tokens: usage
            .as_ref()
            .filter(|_| api.compactor.is_some())
            .map(|usage| usage.context_tokens()),
    };
    let finished = api.runs.finish_run(&session_id, &run_id, &finish).await?;
    api.forget(&run_id);
    let Some(finished) = finished else {
        return Err(WorkerError::not_owner(&session_id, &run_id));
    };
    let reply = finished.reply;
    let state_now = Some(finished.released.state);
    tracing::info!(agent, session = %session_id, run = %run_id, reply = reply.as_ref().map(|m| m.id), prompt_tokens = usage.as_ref().map(|u| u.prompt_tokens), completion_tokens = usage.as_ref().map(|u| u.completion_tokens), "run completed by a worker");
    let message_id = reply.as_ref().map(|m| m.id);
    api.observer.run_ended(RunEnded {
        session_id,
        run_id,
        installation_id: owner.installation_id,
        agent,
        outcome: RunOutcome::Completed { reply, usage },
    });
    Ok(Json(CompleteAnswer::Run(RunCompleted {
        ok: true,
        message_id,
        released: state_now.is_some(),
        state: state_now,
    })))
}

/// Body of `POST …/fail`.
#[derive(Debug, Deserialize, ToSchema)]
struct FailBody {
    /// What went wrong (kept for the operator, cut to 4096 bytes; the chat sees a notice with
    /// the run's reference, never this text).
    #[serde(default)]
    error: String,
}

/// The answer to a failed run.
#[derive(Debug, Serialize, ToSchema)]
struct RunFailed {
    /// Always `true`.
    ok: bool,
    /// The session's run state now.
    state: RunState,
}

/// The answer to `…/fail`: a run's, or a compaction job's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum FailAnswer {
    /// A run was failed.
    Run(RunFailed),
    /// A compaction job was failed.
    Job(JobAnswer),
}

/// `error` cut to at most [`MAX_ERROR_BYTES`] on a character boundary.
fn clip_error(error: &str) -> String {
    let error = error.trim();
    if error.is_empty() {
        return "the worker reported a failure without a message".into();
    }
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Fail the run.
///
/// The chat gets a notice with the run's reference; the error is kept for the operator.
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/fail",
    tag = "worker",
    params(RunParams),
    request_body = FailBody,
    responses(
        (status = 200, description = "Recorded.", body = FailAnswer),
        (status = 409, description = "The worker no longer owns the run: nothing changed.", body = WorkerErrorBody),
    ),
)]
async fn fail(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Result<Json<FailBody>, JsonRejection>,
) -> WorkerResult<Json<FailAnswer>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    authorize(api, &agent, &headers).await?;
    let Json(body) = body?;
    let owner = owner_for_agent(api, &agent, &session_id, &run_id).await?;
    let error = clip_error(&body.error);
    if let Some(compactor) = &api.compactor {
        if compactor.is_job(&session_id, &run_id).await? {
            let spec = api
                .agents
                .get(&agent)
                .ok_or_else(|| WorkerError::internal("agent vanished"))?;
            let finished = compactor
                .worker_summary(&session_id, &run_id, spec, Err(error))
                .await?;
            api.forget(&run_id);
            return job_answer(&session_id, &run_id, finished)
                .map(|Json(job)| Json(FailAnswer::Job(job)));
        }
        compactor.run_ending(&session_id, &run_id).await?;
    }
    let finish = RunFinish::Failed {
        error: error.clone(),
        reference: crate::delivery::run_reference(&run_id).to_string(),
    };
    let finished = api.runs.finish_run(&session_id, &run_id, &finish).await?;
    api.forget(&run_id);
    let Some(finished) = finished else {
        return Err(WorkerError::not_owner(&session_id, &run_id));
    };
    let released = finished.released;
    tracing::info!(agent, session = %session_id, run = %run_id, %error, "run failed by its worker");
    api.observer.run_ended(RunEnded {
        session_id,
        run_id,
        installation_id: owner.installation_id,
        agent,
        outcome: RunOutcome::Failed { error },
    });
    Ok(Json(FailAnswer::Run(RunFailed {
        ok: true,
        state: released.state,
    })))
}

/// What a compaction summary did.
#[derive(Debug, Serialize, ToSchema)]
struct JobAnswer {
    /// Always `true`.
    ok: bool,
    /// Whether the summary was stored (`false`: the session stays uncompacted; go on).
    compacted: bool,
    /// The hidden boundary message (compacted only).
    #[serde(skip_serializing_if = "Option::is_none")]
    boundary_message_id: Option<i64>,
    /// Context occupancy before (compacted only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_before: Option<u64>,
    /// Estimated occupancy after (compacted only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_after: Option<u64>,
    /// Why nothing was stored (not compacted only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The answer to a compaction job's completion (or failure), and to `…/compact`.
fn job_answer(session_id: &str, run_id: &str, finished: Finished) -> WorkerResult<Json<JobAnswer>> {
    match finished {
        Finished::Done(done) => Ok(Json(JobAnswer {
            ok: true,
            compacted: true,
            boundary_message_id: Some(done.boundary_message_id),
            tokens_before: Some(done.tokens_before),
            tokens_after: Some(done.tokens_after),
            error: None,
        })),
        Finished::Failed(error) => Ok(Json(JobAnswer {
            ok: true,
            compacted: false,
            boundary_message_id: None,
            tokens_before: None,
            tokens_after: None,
            error: Some(error),
        })),
        Finished::Lost => Err(WorkerError::not_owner(session_id, run_id)),
    }
}

/// Body of `POST …/compact`: the summary, or why none could be made.
#[derive(Debug, Deserialize, ToSchema)]
struct CompactBody {
    /// The summary of the context (replaces the messages it covers).
    summary: Option<String>,
    /// Why no summary could be made (the run goes on uncompacted).
    error: Option<String>,
}

/// Compact the context mid-run (after a heartbeat said `compact: true`).
///
/// Then re-read `…/context` (system prompt + summary + the messages after it) and go on.
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/runs/{session}/{run}/compact",
    tag = "worker",
    params(RunParams),
    request_body = CompactBody,
    responses(
        (status = 200, description = "Compacted, or not (`compacted: false` with the reason).", body = JobAnswer),
        (status = 409, description = "The worker no longer owns the run: stop.", body = WorkerErrorBody),
        (status = 503, description = "This host does not compact contexts: go on without.", body = WorkerErrorBody),
    ),
)]
async fn compact_run(
    State(state): State<AppState>,
    path: RunPath,
    headers: HeaderMap,
    body: Result<Json<CompactBody>, JsonRejection>,
) -> WorkerResult<Json<JobAnswer>> {
    let api = api(&state)?;
    let Path((agent, session_id, run_id)) = path?;
    let spec = authorize(api, &agent, &headers).await?;
    let Json(body) = body?;
    owner_for_agent(api, &agent, &session_id, &run_id).await?;
    let Some(compactor) = &api.compactor else {
        return Err(WorkerError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this host does not compact contexts",
            "go on without compacting",
        ));
    };
    let summary = match (body.summary, body.error) {
        (Some(summary), _) => Ok(summary),
        (None, Some(error)) => Err(clip_error(&error)),
        (None, None) => Ok(String::new()),
    };
    let finished = compactor
        .worker_summary(&session_id, &run_id, spec, summary)
        .await?;
    job_answer(&session_id, &run_id, finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let clipped = clip_error(&long);
        assert!(clipped.len() <= MAX_ERROR_BYTES + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
        assert_eq!(
            clip_error("  "),
            "the worker reported a failure without a message"
        );
        assert_eq!(clip_error(" boom "), "boom");
    }

    #[test]
    fn the_worker_id_comes_from_the_header_then_the_body() {
        let mut headers = HeaderMap::new();
        let body = Bytes::from_static(br#"{"worker_id": "from-body"}"#);
        assert_eq!(worker_id(&headers, &body).unwrap(), "from-body");
        assert_eq!(
            worker_id(&headers, &Bytes::new()).unwrap(),
            ANONYMOUS_WORKER
        );
        headers.insert(WORKER_HEADER, "from-header".parse().unwrap());
        assert_eq!(worker_id(&headers, &body).unwrap(), "from-header");
        assert!(worker_id(&HeaderMap::new(), &Bytes::from_static(b"{not json")).is_err());
        let long = format!(
            r#"{{"worker_id": "{}"}}"#,
            "w".repeat(MAX_WORKER_ID_BYTES + 1)
        );
        assert!(worker_id(&HeaderMap::new(), &Bytes::from(long)).is_err());
    }
}
