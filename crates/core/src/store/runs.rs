//! The run lifecycle of a session (SPEC §5; reference `chat-runs.md` A.3–A.9): run states,
//! atomic acquisition, fenced ownership (heartbeat, reply, release), stale recovery, the queue of
//! messages that arrive while a run is active, and the operator operations (promote, dequeue,
//! interrupt, edit, delete).
//!
//! # States and transitions
//!
//! A session's `run_state` is `idle`, `pending` (a run should happen), `running` (owned by one
//! worker) or `error` (the last run failed; `last_error` says why).
//!
//! | From | To | By |
//! |---|---|---|
//! | idle / error | pending | the debounce flush claim (`claim_flush`), an API submission, a promote, an edit |
//! | pending | running | [`RunStore::acquire`] (oldest `pending_since_ms` first) |
//! | running | idle | [`RunStore::release`] with `Completed` / `Interrupted`; [`RunStore::interrupt`] |
//! | running | error | [`RunStore::release`] with `Failed` (stores `last_error`) |
//! | running | pending | release with `Shutdown`; stale recovery; promote; edit |
//! | any | pending | [`RunStore::edit_message`], [`RunStore::promote_queued`] |
//!
//! Every acquisition mints a new `run_id` (a UUID): the fencing token. Heartbeats, replies and
//! releases only touch the row while it is `running` with that `run_id`; a worker that lost
//! ownership (interrupted, recovered as stale, edited away) changes nothing and must stop.
//! Going to `pending` always clears `last_error`.
//!
//! # The queue
//!
//! While a session is `running`, new user turns (channel messages through
//! [`IngestStore::append`](super::IngestStore::append), API submissions through
//! [`RunStore::enqueue_api`]) wait in `queued_messages` and are not part of the running run's
//! context. API submissions also queue while `pending`. When the run ends (release, interrupt),
//! the whole queue is promoted into the history in order and the session's durable debounce
//! window is armed: the returned [`FlushTicket`] goes to the debouncer, whose flush claim marks
//! the session pending, so the next run sees the backlog. API submissions beyond
//! [`QUEUE_CAP`] are refused ([`RunError::QueueFull`]); channel messages are never refused: at
//! the cap the message is queued and the run is interrupted at once (same promotion).
//!
//! Callers pass "now" in; nothing here reads the clock or publishes events (that is
//! `crate::runs`).

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::flush::FlushTicket;
use super::ingest::Message;
use super::installations::{from_row_both, in_write_tx, on_reader, on_writer};
use super::outbox::{
    NewOutboxRow, OutboxContent, OutboxRow, OutboxTarget, claim_inserted, insert_outbox,
};
use super::{Backend, Database, Inner, StoreError};

/// How many messages may wait in one session's queue before API submissions are refused (and
/// a channel message interrupts the running run).
pub const QUEUE_CAP: usize = 20;

/// The columns every message read selects (same as the ingest store's).
pub(super) const MESSAGE_COLS: &str = "id, session_id, role, kind, body, command_body, \
     channel_message_id, sender_id, context_revision, created_at_ms, meta";

/// The columns every queued-message read selects.
const QUEUED_COLS: &str = "id, session_id, body, command_body, channel_message_id, thread_id, \
     sender_id, source, created_at_ms";

/// SQL `SET` fragment that clears the ownership of a run.
pub(super) const CLEAR_OWNERSHIP: &str = "worker_id = NULL, run_id = NULL, \
     run_started_at_ms = NULL, heartbeat_at_ms = NULL, run_context_upto = NULL, \
     run_context_revision = NULL, run_kind = NULL";

/// A session's run state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Nothing to do.
    Idle,
    /// A run should happen; a worker will acquire it.
    Pending,
    /// A worker owns the run.
    Running,
    /// The last run failed (see `last_error`).
    Error,
}

impl RunState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Idle => "idle",
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Error => "error",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<RunState, StoreError> {
        match s {
            "idle" => Ok(RunState::Idle),
            "pending" => Ok(RunState::Pending),
            "running" => Ok(RunState::Running),
            "error" => Ok(RunState::Error),
            other => Err(StoreError::Corrupt {
                what: format!("unknown session run_state {other:?}"),
            }),
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The session, message or queued message does not exist; nothing changed.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. "session 1234".
        what: String,
    },
    /// Only user messages can be edited; nothing changed.
    #[error("message {message_id} has role {role}; only user messages can be edited")]
    NotUser {
        /// The message.
        message_id: i64,
        /// Its role.
        role: String,
    },
    /// The session's queue is full; nothing changed. Wait for the current run to finish, or
    /// delete or promote queued messages.
    #[error(
        "session {session_id} already has {cap} queued messages; wait for the current run to \
         finish or remove queued messages"
    )]
    QueueFull {
        /// The session.
        session_id: String,
        /// The cap that was reached.
        cap: usize,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run handed to a worker by [`RunStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunClaim {
    /// The session.
    pub session_id: String,
    /// The fencing token: present it to every later call for this run.
    pub run_id: String,
    /// The worker that owns the run.
    pub worker_id: String,
    /// The session's installation.
    pub installation_id: String,
    /// The installation's agent (what was asked for).
    pub agent: String,
    /// The context revision the run works on.
    pub context_revision: i64,
    /// The largest message id the run sees (later messages wait for the next run).
    pub context_upto: i64,
    /// The channel's chat id.
    pub chat_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// The topic thread the session is keyed on, if any.
    pub thread_id: Option<String>,
    /// The last inbound channel message id: where a reply anchors.
    pub reply_to_message_id: Option<String>,
    /// That message's topic thread, if any.
    pub reply_thread_id: Option<String>,
    /// When the run started (epoch ms).
    pub started_at_ms: i64,
}

/// How a run ended, as its worker reports it to [`RunStore::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The run finished (reply stored or nothing to say): `idle`.
    Completed,
    /// The run failed: `error`, with this text stored as `last_error`.
    Failed(String),
    /// The run stopped itself on an interrupt: `idle`.
    Interrupted,
    /// The host is shutting down: back to `pending` so another worker retries it.
    Shutdown,
}

/// A session's installation, chat and reply anchor as a run's end reads them: installation id,
/// chat id, chat type, thread id, reply-to message id, reply thread id, run context revision.
type SessionAnchor = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// How a run ends for good, as [`RunStore::finish_run`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFinish {
    /// The run finished: `idle`; a non-blank reply is stored and delivered.
    Completed {
        /// The agent's reply, if it had one.
        reply: Option<String>,
        /// The context size the agent reported (prompt + completion tokens), recorded for
        /// compaction as covering the reply (or the run's context without one).
        context_tokens: Option<i64>,
    },
    /// The run failed: `error`.
    Failed {
        /// What went wrong, for the operator (`last_error`, logs).
        error: String,
        /// The reference the chat is given instead (never the error itself).
        reference: String,
    },
}

/// A run that [`RunStore::finish_run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The stored reply, if any.
    pub reply: Option<Message>,
    /// The outbox row that will deliver the reply or the error text, if any.
    pub outbox_id: Option<i64>,
    /// That row, claimed by the lease [`RunStore::finish_run_leased`] was given (none when
    /// an older row of the session is still pending: the delivery worker takes it in order).
    pub outbox_row: Option<OutboxRow>,
    /// The session's installation.
    pub installation_id: String,
    /// Where the reply goes (the session's anchor before the queue was promoted).
    pub target: OutboxTarget,
    /// The state change (as for [`RunStore::release`]).
    pub released: Released,
}

/// What [`RunStore::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The caller no longer owned the run: nothing changed.
    NotOwner,
    /// The run ended.
    Released(Released),
}

/// A run that ended under its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The session's state now.
    pub state: RunState,
    /// The queued messages promoted into the history, oldest first.
    pub promoted: Vec<Message>,
    /// The debounce window armed for the promoted messages: hand it to the debouncer.
    pub flush: Option<FlushTicket>,
}

/// A message waiting in a session's queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedMessage {
    /// Increasing id (queue order).
    pub id: i64,
    /// The session.
    pub session_id: String,
    /// What the agent will read.
    pub body: String,
    /// The user's own text, if stored.
    pub command_body: Option<String>,
    /// The channel's message id, for channel messages.
    pub channel_message_id: Option<String>,
    /// The message's topic thread, if any.
    pub thread_id: Option<String>,
    /// The sender's channel user id, if known.
    pub sender_id: Option<String>,
    /// `channel` or `api`.
    pub source: String,
    /// When it was queued (epoch ms).
    pub created_at_ms: i64,
}

from_row_both!(QueuedMessage, |row| {
    Ok(QueuedMessage {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        body: row.try_get("body")?,
        command_body: row.try_get("command_body")?,
        channel_message_id: row.try_get("channel_message_id")?,
        thread_id: row.try_get("thread_id")?,
        sender_id: row.try_get("sender_id")?,
        source: row.try_get("source")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
});

/// A session's run status (admin API, stream snapshot).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunStatus {
    /// The session.
    pub session_id: String,
    /// Its installation.
    pub installation_id: String,
    /// Its run state.
    pub state: RunState,
    /// Why the last run failed (state `error` only).
    pub last_error: Option<String>,
    /// The owning worker while running.
    pub worker_id: Option<String>,
    /// The current run's id while running.
    pub run_id: Option<String>,
    /// When the current run started.
    pub run_started_at_ms: Option<i64>,
    /// The current run's last heartbeat.
    pub heartbeat_at_ms: Option<i64>,
    /// Since when the session is pending.
    pub pending_since_ms: Option<i64>,
    /// The session's current context revision.
    pub context_revision: i64,
    /// Last change (epoch ms).
    pub updated_at_ms: i64,
}

/// [`RunStatus`] as read (state still text).
struct RunStatusRow {
    session_id: String,
    installation_id: String,
    state: String,
    last_error: Option<String>,
    worker_id: Option<String>,
    run_id: Option<String>,
    run_started_at_ms: Option<i64>,
    heartbeat_at_ms: Option<i64>,
    pending_since_ms: Option<i64>,
    context_revision: i64,
    updated_at_ms: i64,
}

from_row_both!(RunStatusRow, |row| {
    Ok(RunStatusRow {
        session_id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        state: row.try_get("run_state")?,
        last_error: row.try_get("last_error")?,
        worker_id: row.try_get("worker_id")?,
        run_id: row.try_get("run_id")?,
        run_started_at_ms: row.try_get("run_started_at_ms")?,
        heartbeat_at_ms: row.try_get("heartbeat_at_ms")?,
        pending_since_ms: row.try_get("pending_since_ms")?,
        context_revision: row.try_get("context_revision")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
});

impl RunStatusRow {
    fn into_status(self) -> Result<RunStatus, StoreError> {
        Ok(RunStatus {
            state: RunState::parse(&self.state)?,
            session_id: self.session_id,
            installation_id: self.installation_id,
            last_error: self.last_error,
            worker_id: self.worker_id,
            run_id: self.run_id,
            run_started_at_ms: self.run_started_at_ms,
            heartbeat_at_ms: self.heartbeat_at_ms,
            pending_since_ms: self.pending_since_ms,
            context_revision: self.context_revision,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

/// The columns a [`RunStatus`] read selects.
const STATUS_COLS: &str = "id, installation_id, run_state, last_error, worker_id, run_id, \
     run_started_at_ms, heartbeat_at_ms, pending_since_ms, context_revision, updated_at_ms";

/// What [`RunStore::enqueue_api`] did with a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The session was busy (running or pending): the message waits in the queue.
    Queued(QueuedMessage),
    /// The session was idle or in error: the message is in the history and the session pending.
    Appended(Message),
}

/// A state change made by an operator operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The session's state afterwards.
    pub state: RunState,
    /// The run that lost its ownership (its worker must stop), if one was running.
    pub interrupted_run: Option<String>,
    /// Queued messages promoted into the history, oldest first.
    pub promoted: Vec<Message>,
    /// The debounce window armed for promoted messages: hand it to the debouncer.
    pub flush: Option<FlushTicket>,
}

/// What [`RunStore::edit_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    /// The edited message (same id, new body).
    pub message: Message,
    /// How many later messages were deleted.
    pub truncated: u64,
    /// How many queued messages were deleted.
    pub dequeued: u64,
    /// The run that lost its ownership, if one was running.
    pub interrupted_run: Option<String>,
}

/// A queued row as read for promotion: id, body, command_body, channel_message_id, thread_id,
/// sender_id, fresh_start, created_at_ms.
pub(super) type QueuedRow = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    i64,
);

/// Selects a session's queue (`$1`) for promotion, oldest first.
pub(super) const QUEUED_ROWS_SQL: &str = "SELECT id, kind, meta, body, command_body, \
     channel_message_id, thread_id, sender_id, fresh_start, created_at_ms FROM queued_messages
     WHERE session_id = $1 ORDER BY id";

/// Inside transaction `$tx` (session row already locked): moves `$rows` (queued rows, oldest
/// first) into the history in order — a pending bare `/new` or a queued `/new <text>` starts a
/// new context revision — deletes them from the queue and moves the reply anchor to the last
/// channel message among them. Evaluates to the inserted `Vec<Message>`.
macro_rules! promote_rows {
    ($tx:ident, $fail:expr, $session_id:expr, $rows:expr, $now_ms:expr) => {{
        let rows: Vec<$crate::store::runs::QueuedRow> = $rows;
        let mut promoted: Vec<$crate::store::Message> = Vec::with_capacity(rows.len());
        if !rows.is_empty() {
            let (mut revision, mut fresh): (i64, bool) = sqlx::query_as(
                "SELECT context_revision, fresh_pending FROM sessions WHERE id = $1",
            )
            .bind($session_id)
            .fetch_one(&mut *$tx)
            .await
            .map_err($fail)?;
            let mut anchor: Option<(String, Option<String>)> = None;
            for (
                id,
                kind,
                meta,
                body,
                command_body,
                channel_message_id,
                thread_id,
                sender_id,
                fresh_start,
                created_at_ms,
            ) in rows
            {
                if fresh || fresh_start {
                    revision += 1;
                    fresh = false;
                }
                let message: $crate::store::Message = sqlx::query_as(&format!(
                    "INSERT INTO messages (session_id, role, kind, body, command_body,
                         channel_message_id, sender_id, context_revision, created_at_ms, meta)
                     VALUES ($1, 'user', $8, $2, $3, $4, $5, $6, $7, $9)
                     RETURNING {}",
                    $crate::store::runs::MESSAGE_COLS
                ))
                .bind($session_id)
                .bind(&body)
                .bind(command_body.as_deref())
                .bind(channel_message_id.as_deref())
                .bind(sender_id.as_deref())
                .bind(revision)
                .bind(created_at_ms)
                .bind(&kind)
                .bind(meta.as_deref())
                .fetch_one(&mut *$tx)
                .await
                .map_err($fail)?;
                sqlx::query("DELETE FROM queued_messages WHERE id = $1")
                    .bind(id)
                    .execute(&mut *$tx)
                    .await
                    .map_err($fail)?;
                if let Some(channel_message_id) = channel_message_id {
                    anchor = Some((channel_message_id, thread_id));
                }
                promoted.push(message);
            }
            sqlx::query(
                "UPDATE sessions SET context_revision = $2, fresh_pending = $3, updated_at_ms = $4
                 WHERE id = $1",
            )
            .bind($session_id)
            .bind(revision)
            .bind(fresh)
            .bind($now_ms)
            .execute(&mut *$tx)
            .await
            .map_err($fail)?;
            if let Some((reply_to, thread)) = anchor {
                sqlx::query(
                    "UPDATE sessions SET reply_to_message_id = $2, reply_thread_id = $3
                     WHERE id = $1",
                )
                .bind($session_id)
                .bind(reply_to)
                .bind(thread)
                .execute(&mut *$tx)
                .await
                .map_err($fail)?;
            }
        }
        promoted
    }};
}

/// Inside transaction `$tx`: promotes the whole queue of `$session_id` (see `promote_rows!`)
/// and, if it was not empty, arms the durable debounce window (`now + the installation's
/// debounce`, generation + 1). Evaluates to `(Vec<Message>, Option<FlushTicket>)`.
macro_rules! promote_queue_and_arm {
    ($tx:ident, $fail:expr, $session_id:expr, $now_ms:expr) => {{
        let rows: Vec<$crate::store::runs::QueuedRow> =
            sqlx::query_as($crate::store::runs::QUEUED_ROWS_SQL)
                .bind($session_id)
                .fetch_all(&mut *$tx)
                .await
                .map_err($fail)?;
        let promoted = $crate::store::runs::promote_rows!($tx, $fail, $session_id, rows, $now_ms);
        let flush = if promoted.is_empty() {
            None
        } else {
            let (generation, due_at_ms): (i64, i64) = sqlx::query_as(
                "UPDATE sessions
                 SET flush_due_at_ms = $2 + COALESCE((SELECT i.debounce_ms FROM installations i
                                                      WHERE i.id = sessions.installation_id), $3),
                     flush_generation = flush_generation + 1
                 WHERE id = $1
                 RETURNING flush_generation, flush_due_at_ms",
            )
            .bind($session_id)
            .bind($now_ms)
            .bind($crate::store::DEFAULT_DEBOUNCE_MS)
            .fetch_one(&mut *$tx)
            .await
            .map_err($fail)?;
            Some($crate::store::FlushTicket {
                session_id: $session_id.to_string(),
                generation,
                due_at_ms,
            })
        };
        (promoted, flush)
    }};
}

pub(super) use {promote_queue_and_arm, promote_rows};

/// Inside `$tx`: counts for a message stored directly in the history of a session that goes
/// `pending` without a debounce window (API submission, promote, stale recovery): unless a
/// window is open (its claim will batch the message), the flush cursor moves past it so a later
/// window does not re-batch it.
macro_rules! mark_flushed_unless_window {
    ($tx:ident, $fail:expr, $session_id:expr, $message_id:expr) => {
        sqlx::query(
            "UPDATE sessions SET flushed_message_id = $2
             WHERE id = $1 AND flush_due_at_ms IS NULL AND flushed_message_id < $2",
        )
        .bind($session_id)
        .bind($message_id)
        .execute(&mut *$tx)
        .await
        .map_err($fail)?
    };
}

/// SQL: `$1` session to `pending` at `$2` (clearing ownership and `last_error`; a session that
/// is already pending keeps its place in the acquisition order).
fn to_pending_sql() -> String {
    format!(
        "UPDATE sessions SET run_state = 'pending',
             pending_since_ms = CASE WHEN run_state = 'pending' AND pending_since_ms IS NOT NULL
                                     THEN pending_since_ms ELSE $2 END,
             last_error = NULL, {CLEAR_OWNERSHIP}, updated_at_ms = $2
         WHERE id = $1"
    )
}

/// The session row as locked at the start of an operation.
struct Locked {
    state: RunState,
    run_id: Option<String>,
}

/// Locks session `$session_id` inside `$tx` (PostgreSQL: `FOR UPDATE`; SQLite's
/// `BEGIN IMMEDIATE` already holds the write lock). Evaluates to `Option<Locked>`.
macro_rules! lock_session {
    ($tx:ident, $fail:expr, $pg:ident, $session_id:expr) => {{
        let sql = if $pg {
            "SELECT run_state, run_id FROM sessions WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT run_state, run_id FROM sessions WHERE id = $1"
        };
        let row: Option<(String, Option<String>)> = sqlx::query_as(sql)
            .bind($session_id)
            .fetch_optional(&mut *$tx)
            .await
            .map_err($fail)?;
        match row {
            Some((state, run_id)) => Some(Locked {
                state: RunState::parse(&state)?,
                run_id,
            }),
            None => None,
        }
    }};
}

/// The run store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct RunStore {
    db: Database,
}

impl RunStore {
    pub(super) fn new(db: Database) -> Self {
        RunStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The database this store works on.
    pub fn database(&self) -> &Database {
        &self.db
    }

    // ---------------------------------------------------------------- worker side

    /// Acquires the oldest pending run (by `pending_since_ms`) of an active installation whose
    /// agent is `agent`: the session becomes `running`, owned by `worker_id` under a fresh
    /// `run_id`, with its heartbeat at `now_ms`. `None` when nothing is pending.
    ///
    /// Atomic across workers and replicas: PostgreSQL picks the row with
    /// `FOR UPDATE SKIP LOCKED` (concurrent acquirers skip each other's rows), SQLite runs in one
    /// writer transaction. The run sees the messages stored up to this moment
    /// ([`RunClaim::context_upto`]).
    pub async fn acquire(
        &self,
        agent: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> Result<Option<RunClaim>, StoreError> {
        self.acquire_in(agent, worker_id, now_ms, None).await
    }

    /// [`RunStore::acquire`], limited to session `only` when it is given (a draining host
    /// answers only the windows it flushed itself).
    pub async fn acquire_in(
        &self,
        agent: &str,
        worker_id: &str,
        now_ms: i64,
        only: Option<&str>,
    ) -> Result<Option<RunClaim>, StoreError> {
        let fail = StoreError::query("run acquire", self.backend());
        let run_id = uuid::Uuid::new_v4().to_string();
        type Picked = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let claim = in_write_tx!(self.db, fail, |tx, pg| {
            let lock = if pg {
                "FOR UPDATE OF s SKIP LOCKED"
            } else {
                ""
            };
            let picked: Option<Picked> = sqlx::query_as(&format!(
                "UPDATE sessions
                 SET run_state = 'running', worker_id = $2, run_id = $3, run_started_at_ms = $4,
                     heartbeat_at_ms = $4, pending_since_ms = NULL, last_error = NULL,
                     updated_at_ms = $4
                 WHERE id = (SELECT s.id FROM sessions s
                             JOIN installations i ON i.id = s.installation_id
                             WHERE s.run_state = 'pending' AND i.agent = $1
                               AND i.status = 'active' AND ($5 IS NULL OR s.id = $5)
                             ORDER BY s.pending_since_ms, s.id
                             LIMIT 1 {lock})
                   AND run_state = 'pending'
                 RETURNING id, installation_id, chat_id, chat_type, thread_id,
                           reply_to_message_id, reply_thread_id"
            ))
            .bind(agent)
            .bind(worker_id)
            .bind(&run_id)
            .bind(now_ms)
            .bind(only)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            match picked {
                None => None,
                Some((
                    session_id,
                    installation_id,
                    chat_id,
                    chat_type,
                    thread_id,
                    reply_to_message_id,
                    reply_thread_id,
                )) => {
                    // A second statement (a fresh snapshot on PostgreSQL) while the row is
                    // locked: every append to this session locks the row first, so all of them
                    // have committed and none can start before this transaction ends.
                    let (context_upto, context_revision): (i64, i64) = sqlx::query_as(
                        "UPDATE sessions
                         SET run_context_upto = COALESCE((SELECT MAX(m.id) FROM messages m
                                                          WHERE m.session_id = $1), 0),
                             run_context_revision = context_revision
                         WHERE id = $1
                         RETURNING run_context_upto, run_context_revision",
                    )
                    .bind(&session_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    Some(RunClaim {
                        session_id,
                        run_id: run_id.clone(),
                        worker_id: worker_id.to_owned(),
                        installation_id,
                        agent: agent.to_owned(),
                        context_revision,
                        context_upto,
                        chat_id,
                        chat_type,
                        thread_id,
                        reply_to_message_id,
                        reply_thread_id,
                        started_at_ms: now_ms,
                    })
                }
            }
        });
        Ok(claim)
    }

    /// Records a heartbeat of run `run_id`. `false` (0 rows) means the caller no longer owns the
    /// run — interrupted, recovered as stale, finished — and must stop.
    pub async fn heartbeat(
        &self,
        session_id: &str,
        run_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("run heartbeat", self.backend());
        let updated = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE sessions SET heartbeat_at_ms = $3
                 WHERE id = $1 AND run_id = $2 AND run_state = 'running'",
            )
            .bind(session_id)
            .bind(run_id)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// The messages run `run_id` works on: the run's context revision up to its
    /// [`RunClaim::context_upto`], oldest first. Only conversation turns: notices and commands
    /// (`/issue` records, which are for the host, not the agent) are excluded. After a
    /// compaction it starts with the summary boundary and holds only the turns after what the
    /// summary replaces (see `store::compaction`). `None` if the caller does not own the run.
    pub async fn run_context(
        &self,
        session_id: &str,
        run_id: &str,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        let fail = StoreError::query("run context", self.backend());
        let bounds: Option<(i64, i64)> = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT run_context_upto, run_context_revision FROM sessions
                 WHERE id = $1 AND run_id = $2 AND run_state = 'running'",
            )
            .bind(session_id)
            .bind(run_id)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        let Some((upto, revision)) = bounds else {
            return Ok(None);
        };
        let messages = super::compaction::context_in(&self.db, session_id, revision, upto).await?;
        Ok(Some(messages))
    }

    /// Stores the assistant reply of run `run_id` (in the run's context revision). `None` — and
    /// nothing stored — if the caller does not own the run.
    pub async fn append_reply(
        &self,
        session_id: &str,
        run_id: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<Option<Message>, StoreError> {
        let fail = StoreError::query("run reply", self.backend());
        let message = in_write_tx!(self.db, fail, |tx, pg| {
            let lock = if pg { "FOR UPDATE" } else { "" };
            let revision: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT run_context_revision FROM sessions
                 WHERE id = $1 AND run_id = $2 AND run_state = 'running' {lock}"
            ))
            .bind(session_id)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            match revision {
                None => None,
                Some(revision) => {
                    let message: Message = sqlx::query_as(&format!(
                        "INSERT INTO messages (session_id, role, kind, body, context_revision,
                             created_at_ms)
                         VALUES ($1, 'assistant', 'message', $2, $3, $4)
                         RETURNING {MESSAGE_COLS}"
                    ))
                    .bind(session_id)
                    .bind(body)
                    .bind(revision)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    sqlx::query("UPDATE sessions SET updated_at_ms = $2 WHERE id = $1")
                        .bind(session_id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                    Some(message)
                }
            }
        });
        Ok(message)
    }

    /// Ends run `run_id` for good in ONE transaction fenced by the run id: stores the reply
    /// (if any), moves the session to `idle` (completed) or `error` (failed, with `last_error`),
    /// promotes the queue (see [`RunStore::release`]) and enqueues what the chat must get — the
    /// reply, or the user-facing error text — in the delivery outbox, anchored where the
    /// session's reply anchor was before the promotion. Of concurrent callers for one run only
    /// the first finds it running: the others get `None` and store nothing.
    pub async fn finish_run(
        &self,
        session_id: &str,
        run_id: &str,
        finish: &RunFinish,
        now_ms: i64,
    ) -> Result<Option<Finished>, StoreError> {
        self.finish_run_leased(session_id, run_id, finish, now_ms, None)
            .await
    }

    /// [`RunStore::finish_run`], with the outbox row already claimed by `lease` = (owner,
    /// lease in ms) when no older row of the session is pending: the caller delivers
    /// [`Finished::outbox_row`] itself at once, without a claim of its own or a poll.
    pub async fn finish_run_leased(
        &self,
        session_id: &str,
        run_id: &str,
        finish: &RunFinish,
        now_ms: i64,
        lease: Option<(&str, i64)>,
    ) -> Result<Option<Finished>, StoreError> {
        let fail = StoreError::query("run finish", self.backend());
        let finished = in_write_tx!(self.db, fail, |tx, pg| {
            let locked = lock_session!(tx, fail, pg, session_id);
            match locked {
                Some(Locked {
                    state: RunState::Running,
                    run_id: Some(owner),
                }) if owner == run_id => {
                    let (
                        installation_id,
                        chat_id,
                        chat_type,
                        thread_id,
                        reply_to,
                        reply_thread,
                        revision,
                    ): SessionAnchor = sqlx::query_as(
                        "SELECT installation_id, chat_id, chat_type, thread_id,
                             reply_to_message_id, reply_thread_id, run_context_revision
                         FROM sessions WHERE id = $1",
                    )
                    .bind(session_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    let target = OutboxTarget {
                        chat_id,
                        chat_type,
                        thread_id,
                        reply_to,
                        in_thread: reply_thread.is_some(),
                    };
                    let (reply_text, state, last_error, content) = match finish {
                        RunFinish::Completed { reply, .. } => {
                            let reply = reply.as_deref().filter(|r| !r.trim().is_empty());
                            let content = reply.map(|text| OutboxContent::Reply {
                                text: text.to_string(),
                            });
                            (reply, RunState::Idle, None, content)
                        }
                        RunFinish::Failed { error, reference } => (
                            None,
                            RunState::Error,
                            Some(error.as_str()),
                            Some(OutboxContent::RunError {
                                text: String::new(),
                                reference: Some(reference.clone()),
                            }),
                        ),
                    };
                    let reply = match reply_text {
                        Some(body) => Some(
                            sqlx::query_as::<_, Message>(&format!(
                                "INSERT INTO messages (session_id, role, kind, body,
                                     context_revision, created_at_ms)
                                 VALUES ($1, 'assistant', 'message', $2,
                                     COALESCE($3, (SELECT context_revision FROM sessions
                                                   WHERE id = $1)), $4)
                                 RETURNING {MESSAGE_COLS}"
                            ))
                            .bind(session_id)
                            .bind(body)
                            .bind(revision)
                            .bind(now_ms)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(fail)?,
                        ),
                        None => None,
                    };
                    if let RunFinish::Completed {
                        context_tokens: Some(tokens),
                        ..
                    } = finish
                    {
                        sqlx::query(
                            "UPDATE sessions SET context_tokens = $2,
                                 context_tokens_upto = COALESCE($3, run_context_upto),
                                 context_tokens_revision = run_context_revision
                             WHERE id = $1",
                        )
                        .bind(session_id)
                        .bind(tokens)
                        .bind(reply.as_ref().map(|m| m.id))
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                    }
                    sqlx::query(&format!(
                        "UPDATE sessions SET run_state = $2, last_error = $3,
                             pending_since_ms = NULL, {CLEAR_OWNERSHIP}, updated_at_ms = $4
                         WHERE id = $1"
                    ))
                    .bind(session_id)
                    .bind(state.as_str())
                    .bind(last_error)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                    let outbox_id = match &content {
                        Some(content) => Some(insert_outbox!(
                            tx,
                            fail,
                            &NewOutboxRow {
                                installation_id: &installation_id,
                                session_id,
                                run_id: Some(run_id),
                                content,
                                target: &target,
                            },
                            now_ms
                        )),
                        None => None,
                    };
                    let outbox_row = match (outbox_id, lease) {
                        (Some(id), Some((owner, lease_ms))) => {
                            claim_inserted!(tx, fail, id, owner, now_ms, lease_ms)
                        }
                        _ => None,
                    };
                    let (promoted, flush) = promote_queue_and_arm!(tx, fail, session_id, now_ms);
                    Some(Finished {
                        reply,
                        outbox_id,
                        outbox_row,
                        installation_id,
                        target,
                        released: Released {
                            state,
                            promoted,
                            flush,
                        },
                    })
                }
                _ => None,
            }
        });
        Ok(finished)
    }

    /// Ends run `run_id` as `end` says — `Completed`/`Interrupted` → `idle`, `Failed` → `error`
    /// with `last_error`, `Shutdown` → `pending` (keeping its place in the acquisition order) —
    /// and clears the ownership. If messages were queued meanwhile, all of them are promoted
    /// into the history and the debounce window is armed ([`Released::flush`]): the next run
    /// sees them. A caller that no longer owns the run changes nothing
    /// ([`ReleaseOutcome::NotOwner`]).
    pub async fn release(
        &self,
        session_id: &str,
        run_id: &str,
        end: &RunEnd,
        now_ms: i64,
    ) -> Result<ReleaseOutcome, StoreError> {
        let fail = StoreError::query("run release", self.backend());
        let outcome = in_write_tx!(self.db, fail, |tx, pg| {
            let locked = lock_session!(tx, fail, pg, session_id);
            match locked {
                Some(Locked {
                    state: RunState::Running,
                    run_id: Some(owner),
                }) if owner == run_id => {
                    let (state, last_error) = match end {
                        RunEnd::Completed | RunEnd::Interrupted => (RunState::Idle, None),
                        RunEnd::Failed(error) => (RunState::Error, Some(error.as_str())),
                        RunEnd::Shutdown => (RunState::Pending, None),
                    };
                    sqlx::query(&format!(
                        "UPDATE sessions SET run_state = $2, last_error = $3,
                             pending_since_ms = CASE WHEN $2 = 'pending'
                                                     THEN COALESCE(run_started_at_ms, $4)
                                                     ELSE NULL END,
                             {CLEAR_OWNERSHIP}, updated_at_ms = $4
                         WHERE id = $1"
                    ))
                    .bind(session_id)
                    .bind(state.as_str())
                    .bind(last_error)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                    let (promoted, flush) = promote_queue_and_arm!(tx, fail, session_id, now_ms);
                    ReleaseOutcome::Released(Released {
                        state,
                        promoted,
                        flush,
                    })
                }
                _ => ReleaseOutcome::NotOwner,
            }
        });
        Ok(outcome)
    }

    /// Returns runs whose heartbeat is older than `stale_before_ms` to `pending` (ownership
    /// cleared, so any worker may take them; queued messages promoted so the retry sees them)
    /// and lists them as `(session id, run id)` — the run id of the run taken back, so its
    /// streamed reply and typing indicator can be closed. Sessions that are not running are
    /// never touched.
    pub async fn recover_stale(
        &self,
        stale_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let fail = StoreError::query("run stale recovery", self.backend());
        let recovered = in_write_tx!(self.db, fail, |tx, pg| {
            let lock = if pg { "FOR UPDATE SKIP LOCKED" } else { "" };
            let recovered: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
                "SELECT id, run_id FROM sessions
                 WHERE run_state = 'running'
                   AND COALESCE(heartbeat_at_ms, run_started_at_ms, 0) < $1
                 ORDER BY id {lock}"
            ))
            .bind(stale_before_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
            for (id, _) in &recovered {
                sqlx::query(&format!(
                    "UPDATE sessions SET run_state = 'pending',
                         pending_since_ms = COALESCE(run_started_at_ms, $2), last_error = NULL,
                         {CLEAR_OWNERSHIP}, updated_at_ms = $2
                     WHERE id = $1"
                ))
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                let rows: Vec<QueuedRow> = sqlx::query_as(QUEUED_ROWS_SQL)
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(fail)?;
                let promoted = promote_rows!(tx, fail, id, rows, now_ms);
                if let Some(last) = promoted.last() {
                    mark_flushed_unless_window!(tx, fail, id, last.id);
                }
            }
            recovered
                .into_iter()
                .map(|(session, run)| (session, run.unwrap_or_default()))
                .collect::<Vec<_>>()
        });
        Ok(recovered)
    }

    // ---------------------------------------------------------------- operations

    /// Submits a user message through the API. A busy session (`running` or `pending`) queues
    /// it — refused with [`RunError::QueueFull`] once `cap` messages wait — while an idle or
    /// failed session stores it in the history and becomes `pending` at once (no debounce).
    pub async fn enqueue_api(
        &self,
        session_id: &str,
        body: &str,
        cap: usize,
        now_ms: i64,
    ) -> Result<Submitted, RunError> {
        let fail = StoreError::query("run submit", self.backend());
        let submitted = in_write_tx!(self.db, fail, |tx, pg| {
            let Some(locked) = lock_session!(tx, fail, pg, session_id) else {
                return Err(not_found_session(session_id));
            };
            match locked.state {
                RunState::Running | RunState::Pending => {
                    let queued: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM queued_messages WHERE session_id = $1",
                    )
                    .bind(session_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    if queued >= cap as i64 {
                        return Err(RunError::QueueFull {
                            session_id: session_id.to_owned(),
                            cap,
                        });
                    }
                    let row: QueuedMessage = sqlx::query_as(&format!(
                        "INSERT INTO queued_messages (session_id, body, source, created_at_ms)
                         VALUES ($1, $2, 'api', $3)
                         RETURNING {QUEUED_COLS}"
                    ))
                    .bind(session_id)
                    .bind(body)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    Submitted::Queued(row)
                }
                RunState::Idle | RunState::Error => {
                    let rows: Vec<QueuedRow> = vec![(
                        0,
                        "message".to_owned(),
                        None,
                        body.to_owned(),
                        None,
                        None,
                        None,
                        None,
                        false,
                        now_ms,
                    )];
                    // Inserted like a promoted queue row (revision rules included); the DELETE of
                    // queued row 0 matches nothing.
                    let mut promoted = promote_rows!(tx, fail, session_id, rows, now_ms);
                    let message = promoted.remove(0);
                    sqlx::query(&to_pending_sql())
                        .bind(session_id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                    mark_flushed_unless_window!(tx, fail, session_id, message.id);
                    Submitted::Appended(message)
                }
            }
        });
        Ok(submitted)
    }

    /// Promotes queued message `queued_id` into the history now and makes the session
    /// `pending`; a running run is interrupted (its ownership cleared) so the promoted message
    /// runs next. Other queued messages stay queued.
    pub async fn promote_queued(
        &self,
        session_id: &str,
        queued_id: i64,
        now_ms: i64,
    ) -> Result<(Message, Transition), RunError> {
        let fail = StoreError::query("queue promote", self.backend());
        let result = in_write_tx!(self.db, fail, |tx, pg| {
            let Some(locked) = lock_session!(tx, fail, pg, session_id) else {
                return Err(not_found_session(session_id));
            };
            let row: Option<QueuedRow> = sqlx::query_as(
                "SELECT id, kind, meta, body, command_body, channel_message_id, thread_id,
                     sender_id, fresh_start, created_at_ms
                 FROM queued_messages WHERE session_id = $1 AND id = $2",
            )
            .bind(session_id)
            .bind(queued_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            let Some(row) = row else {
                return Err(RunError::NotFound {
                    what: format!("queued message {queued_id} of session {session_id}"),
                });
            };
            let mut promoted = promote_rows!(tx, fail, session_id, vec![row], now_ms);
            let message = promoted.remove(0);
            sqlx::query(&to_pending_sql())
                .bind(session_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            mark_flushed_unless_window!(tx, fail, session_id, message.id);
            (
                message,
                Transition {
                    state: RunState::Pending,
                    interrupted_run: interrupted(&locked),
                    promoted: Vec::new(),
                    flush: None,
                },
            )
        });
        Ok(result)
    }

    /// Deletes queued message `queued_id`; `false` if the session has no such queued message.
    pub async fn delete_queued(
        &self,
        session_id: &str,
        queued_id: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("queue delete", self.backend());
        let deleted = on_writer!(self.db, |pool| {
            sqlx::query("DELETE FROM queued_messages WHERE session_id = $1 AND id = $2")
                .bind(session_id)
                .bind(queued_id)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Interrupts the session's run: `running` → `idle` with the ownership cleared (the worker's
    /// next heartbeat or release finds it gone). Queued messages are then promoted and the
    /// debounce window armed, exactly as when a run ends. A `pending` session stays pending (the
    /// new message wins); `idle`/`error` sessions are unchanged.
    pub async fn interrupt(&self, session_id: &str, now_ms: i64) -> Result<Transition, RunError> {
        let fail = StoreError::query("run interrupt", self.backend());
        let transition = in_write_tx!(self.db, fail, |tx, pg| {
            let Some(locked) = lock_session!(tx, fail, pg, session_id) else {
                return Err(not_found_session(session_id));
            };
            if locked.state == RunState::Running {
                sqlx::query(&format!(
                    "UPDATE sessions SET run_state = 'idle', last_error = NULL,
                         pending_since_ms = NULL, {CLEAR_OWNERSHIP}, updated_at_ms = $2
                     WHERE id = $1"
                ))
                .bind(session_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                let (promoted, flush) = promote_queue_and_arm!(tx, fail, session_id, now_ms);
                Transition {
                    state: RunState::Idle,
                    interrupted_run: interrupted(&locked),
                    promoted,
                    flush,
                }
            } else {
                Transition {
                    state: locked.state,
                    interrupted_run: None,
                    promoted: Vec::new(),
                    flush: None,
                }
            }
        });
        Ok(transition)
    }

    /// Edits user message `message_id`: new body, every later message deleted, the queue
    /// cleared, and the session `pending` (ownership and `last_error` cleared, context revision
    /// set to the edited message's). Refused with [`RunError::NotFound`] for a message that is
    /// not in the session and [`RunError::NotUser`] for a non-user message.
    pub async fn edit_message(
        &self,
        session_id: &str,
        message_id: i64,
        body: &str,
        now_ms: i64,
    ) -> Result<Edited, RunError> {
        let fail = StoreError::query("message edit", self.backend());
        let edited = in_write_tx!(self.db, fail, |tx, pg| {
            let Some(locked) = lock_session!(tx, fail, pg, session_id) else {
                return Err(not_found_session(session_id));
            };
            let role: Option<String> =
                sqlx::query_scalar("SELECT role FROM messages WHERE session_id = $1 AND id = $2")
                    .bind(session_id)
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(fail)?;
            match role.as_deref() {
                None => {
                    return Err(RunError::NotFound {
                        what: format!("message {message_id} of session {session_id}"),
                    });
                }
                Some("user") => {}
                Some(other) => {
                    return Err(RunError::NotUser {
                        message_id,
                        role: other.to_owned(),
                    });
                }
            }
            let message: Message = sqlx::query_as(&format!(
                "UPDATE messages SET body = $2 WHERE id = $1 RETURNING {MESSAGE_COLS}"
            ))
            .bind(message_id)
            .bind(body)
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
            let truncated = sqlx::query("DELETE FROM messages WHERE session_id = $1 AND id > $2")
                .bind(session_id)
                .bind(message_id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?
                .rows_affected();
            let dequeued = sqlx::query("DELETE FROM queued_messages WHERE session_id = $1")
                .bind(session_id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?
                .rows_affected();
            sqlx::query(&to_pending_sql())
                .bind(session_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            sqlx::query(
                "UPDATE sessions SET context_revision = $2, fresh_pending = FALSE WHERE id = $1",
            )
            .bind(session_id)
            .bind(message.context_revision)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            Edited {
                message,
                truncated,
                dequeued,
                interrupted_run: interrupted(&locked),
            }
        });
        Ok(edited)
    }

    /// Deletes a session with its messages and queue (a running run loses its ownership with
    /// the row). `false` if there was no such session.
    pub async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let fail = StoreError::query("session delete", self.backend());
        let deleted = in_write_tx!(self.db, fail, |tx, pg| {
            for sql in [
                "DELETE FROM queued_messages WHERE session_id = $1",
                "DELETE FROM messages WHERE session_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(session_id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    // ---------------------------------------------------------------- reads

    /// The run status of a session, if it exists.
    pub async fn get_run_state(&self, session_id: &str) -> Result<Option<RunStatus>, StoreError> {
        let fail = StoreError::query("run status", self.backend());
        let sql = format!("SELECT {STATUS_COLS} FROM sessions WHERE id = $1");
        let row: Option<RunStatusRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(session_id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        row.map(RunStatusRow::into_status).transpose()
    }

    /// The run status of every session (of one installation, if given), oldest session first.
    pub async fn list_statuses(
        &self,
        installation_id: Option<&str>,
    ) -> Result<Vec<RunStatus>, StoreError> {
        let fail = StoreError::query("run status list", self.backend());
        let sql = format!(
            "SELECT {STATUS_COLS} FROM sessions
             WHERE $1 IS NULL OR installation_id = $1
             ORDER BY created_at_ms, id"
        );
        let rows: Vec<RunStatusRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(installation_id)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        rows.into_iter().map(RunStatusRow::into_status).collect()
    }

    /// The session's queue, oldest first.
    pub async fn list_queue(&self, session_id: &str) -> Result<Vec<QueuedMessage>, StoreError> {
        let fail = StoreError::query("queue list", self.backend());
        let sql =
            format!("SELECT {QUEUED_COLS} FROM queued_messages WHERE session_id = $1 ORDER BY id");
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(session_id)
                .fetch_all(pool)
                .await
                .map_err(fail)
        })
    }

    /// The session's messages with an id above `after_id`, oldest first (stream snapshots).
    /// Hidden compaction boundaries (kind `summary`) are left out: users never see them as new.
    pub async fn messages_after(
        &self,
        session_id: &str,
        after_id: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let fail = StoreError::query("message list", self.backend());
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages
             WHERE session_id = $1 AND id > $2 AND kind <> 'summary' ORDER BY id"
        );
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(session_id)
                .bind(after_id)
                .fetch_all(pool)
                .await
                .map_err(fail)
        })
    }
}

/// The run id that an operation on a `locked` session takes the ownership from.
fn interrupted(locked: &Locked) -> Option<String> {
    match locked.state {
        RunState::Running => locked.run_id.clone(),
        _ => None,
    }
}

fn not_found_session(session_id: &str) -> RunError {
    RunError::NotFound {
        what: format!("session {session_id}"),
    }
}

impl RunStore {
    /// Takes back a `pending` state that no run will serve (the flush found the agent archived):
    /// `pending` → `idle`. Turns queued while it was pending are promoted into the history and
    /// their window armed (its flush tells them the same). Any other state is left alone.
    /// Returns whether it changed, and the window to hand to the debouncer.
    pub async fn settle_pending(
        &self,
        session_id: &str,
        now_ms: i64,
    ) -> Result<(bool, Option<FlushTicket>), StoreError> {
        let fail = StoreError::query("run settle pending", self.backend());
        let settled = in_write_tx!(self.db, fail, |tx, _pg| {
            let changed = sqlx::query(
                "UPDATE sessions SET run_state = 'idle', pending_since_ms = NULL, updated_at_ms = $2
                 WHERE id = $1 AND run_state = 'pending'",
            )
            .bind(session_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(fail)?
            .rows_affected()
                > 0;
            let flush = if changed {
                promote_queue_and_arm!(tx, fail, session_id, now_ms).1
            } else {
                None
            };
            (changed, flush)
        });
        Ok(settled)
    }
}
