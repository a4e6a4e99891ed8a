//! Context compaction state (SPEC §7; reference `chat-runs.md` A.12 and part B): the prompt
//! occupancy agents report, the consecutive-failure counter, a compaction asked of a worker,
//! and the hidden boundary message that holds a summary.
//!
//! # Persistence shape (chatd style: one log)
//!
//! A compaction adds two rows and deletes nothing:
//!
//! - the **boundary**: role `system`, kind `summary`, hidden (the stream and the channel never
//!   show it as new), holding the summary; its `summary_upto` is the last message id the summary
//!   replaces;
//! - a visible **notice** (role `system`, kind `notice`) saying the session was compacted.
//!
//! A run's context ([`CompactionStore::context`]) is then the newest boundary of the run's
//! revision followed by the conversation turns (kind `message`) after its `summary_upto`: the
//! trailing unanswered user messages, which compaction never summarises, stay verbatim after the
//! summary. Without a boundary it is every turn, as before. The history (admin API, `sessions
//! show`) keeps every row. Editing a summarised message deletes every later row, the boundary
//! included, so the context is whole again.
//!
//! Callers pass "now" in; nothing here reads the clock, runs agents or publishes events (that is
//! `crate::runs::compaction`).

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::ingest::Message;
use super::installations::{from_row_both, in_write_tx, on_reader, on_writer};
use super::runs::MESSAGE_COLS;
use super::{Backend, Database, Inner, RunState, StoreError};

/// Consecutive failures after which automatic compaction stops for a session (until a
/// compaction succeeds, e.g. a manual one).
pub const MAX_CONSECUTIVE_FAILURES: i64 = 3;

/// Why a compaction happens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionSource {
    /// Before a run starts (occupancy at or over the threshold).
    PreRun,
    /// At a step boundary inside a run (the worker reported usage at or over the threshold).
    MidRun,
    /// Asked for by an operator (admin API, CLI).
    Manual,
}

impl CompactionSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompactionSource::PreRun => "pre_run",
            CompactionSource::MidRun => "mid_run",
            CompactionSource::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Result<CompactionSource, StoreError> {
        match s {
            "pre_run" => Ok(CompactionSource::PreRun),
            "mid_run" => Ok(CompactionSource::MidRun),
            "manual" => Ok(CompactionSource::Manual),
            other => Err(StoreError::Corrupt {
                what: format!("unknown compaction_source {other:?}"),
            }),
        }
    }
}

/// A session's compaction facts, read in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionState {
    /// The session.
    pub session_id: String,
    /// Its installation.
    pub installation_id: String,
    /// Its run state.
    pub state: RunState,
    /// The current run while running.
    pub run_id: Option<String>,
    /// Whether the current owner holds a compaction job (`run_kind = 'compact'`).
    pub compact_job: bool,
    /// The session's context revision.
    pub context_revision: i64,
    /// The running run's context bounds (largest message id, revision).
    pub run_context: Option<(i64, i64)>,
    /// The session's largest message id (0 without messages).
    pub max_message_id: i64,
    /// The last reported occupancy: (tokens, the message id and revision it covers).
    pub reported: Option<(i64, i64, i64)>,
    /// Consecutive failed compactions.
    pub failures: i64,
    /// The largest message id when automatic compaction was last attempted.
    pub attempt_upto: Option<i64>,
    /// A compaction asked of a worker and not finished: since when, and why.
    pub requested: Option<(i64, CompactionSource)>,
}

impl CompactionState {
    /// The context a compaction works on now: the running run's bounds, else the session's
    /// revision up to its newest message. `(revision, upto)`.
    pub fn bounds(&self) -> (i64, i64) {
        match (self.state, self.run_context) {
            (RunState::Running, Some((upto, revision))) => (revision, upto),
            _ => (self.context_revision, self.max_message_id),
        }
    }

    /// Whether automatic compaction stopped after [`MAX_CONSECUTIVE_FAILURES`].
    pub fn automatic_disabled(&self) -> bool {
        self.failures >= MAX_CONSECUTIVE_FAILURES
    }

    /// Whether run `run_id` owns the session.
    pub fn owned_by(&self, run_id: &str) -> bool {
        self.state == RunState::Running && self.run_id.as_deref() == Some(run_id)
    }
}

struct StateRow {
    session_id: String,
    installation_id: String,
    state: String,
    run_id: Option<String>,
    run_kind: Option<String>,
    context_revision: i64,
    run_context_upto: Option<i64>,
    run_context_revision: Option<i64>,
    max_message_id: i64,
    context_tokens: Option<i64>,
    context_tokens_upto: Option<i64>,
    context_tokens_revision: Option<i64>,
    failures: i64,
    attempt_upto: Option<i64>,
    requested_at_ms: Option<i64>,
    source: Option<String>,
}

from_row_both!(StateRow, |row| {
    Ok(StateRow {
        session_id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        state: row.try_get("run_state")?,
        run_id: row.try_get("run_id")?,
        run_kind: row.try_get("run_kind")?,
        context_revision: row.try_get("context_revision")?,
        run_context_upto: row.try_get("run_context_upto")?,
        run_context_revision: row.try_get("run_context_revision")?,
        max_message_id: row.try_get("max_message_id")?,
        context_tokens: row.try_get("context_tokens")?,
        context_tokens_upto: row.try_get("context_tokens_upto")?,
        context_tokens_revision: row.try_get("context_tokens_revision")?,
        failures: row.try_get("compaction_failures")?,
        attempt_upto: row.try_get("compaction_attempt_upto")?,
        requested_at_ms: row.try_get("compaction_requested_at_ms")?,
        source: row.try_get("compaction_source")?,
    })
});

impl StateRow {
    fn into_state(self) -> Result<CompactionState, StoreError> {
        let reported = match (
            self.context_tokens,
            self.context_tokens_upto,
            self.context_tokens_revision,
        ) {
            (Some(tokens), Some(upto), Some(revision)) => Some((tokens, upto, revision)),
            _ => None,
        };
        let requested = match (self.requested_at_ms, self.source.as_deref()) {
            (Some(at), Some(source)) => Some((at, CompactionSource::parse(source)?)),
            _ => None,
        };
        Ok(CompactionState {
            session_id: self.session_id,
            installation_id: self.installation_id,
            state: RunState::parse(&self.state)?,
            run_id: self.run_id,
            compact_job: self.run_kind.as_deref() == Some("compact"),
            context_revision: self.context_revision,
            run_context: self.run_context_upto.zip(self.run_context_revision),
            max_message_id: self.max_message_id,
            reported,
            failures: self.failures,
            attempt_upto: self.attempt_upto,
            requested,
        })
    }
}

/// What [`CompactionStore::persist`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSummary<'a> {
    /// The session.
    pub session_id: &'a str,
    /// The run that must own the session (pre-run, mid-run, compaction job), or `None`: the
    /// session must not be running (manual compaction of a built-in agent's session).
    pub fence: Option<&'a str>,
    /// The context revision the summary belongs to.
    pub revision: i64,
    /// The last message id the summary replaces.
    pub summary_upto: i64,
    /// The boundary's text (prefix + summary).
    pub boundary_body: &'a str,
    /// The visible notice's text.
    pub notice_body: &'a str,
}

/// The rows a compaction added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The hidden boundary (kind `summary`).
    pub boundary: Message,
    /// The visible notice (kind `notice`).
    pub notice: Message,
}

/// Compaction state on the database: a cheap, cloneable handle.
#[derive(Debug, Clone)]
pub struct CompactionStore {
    db: Database,
}

/// The columns of a [`CompactionState`] read (`s` = sessions).
const STATE_SQL: &str = "SELECT s.id, s.installation_id, s.run_state, s.run_id, s.run_kind,
         s.context_revision, s.run_context_upto, s.run_context_revision,
         COALESCE((SELECT MAX(m.id) FROM messages m WHERE m.session_id = s.id), 0)
             AS max_message_id,
         s.context_tokens, s.context_tokens_upto, s.context_tokens_revision,
         s.compaction_failures, s.compaction_attempt_upto, s.compaction_requested_at_ms,
         s.compaction_source
     FROM sessions s WHERE s.id = $1";

impl CompactionStore {
    pub(super) fn new(db: Database) -> Self {
        CompactionStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The session's compaction facts, if it exists.
    pub async fn state(&self, session_id: &str) -> Result<Option<CompactionState>, StoreError> {
        let fail = StoreError::query("compaction state", self.backend());
        let row: Option<StateRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(STATE_SQL)
                .bind(session_id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        row.map(StateRow::into_state).transpose()
    }

    /// The context of revision `revision` up to message `upto`, oldest first: the newest
    /// boundary (if any) and then the conversation turns after what it replaces (see the
    /// module doc). Notices and commands are never context.
    pub async fn context(
        &self,
        session_id: &str,
        revision: i64,
        upto: i64,
    ) -> Result<Vec<Message>, StoreError> {
        context_in(&self.db, session_id, revision, upto).await
    }

    /// Records the occupancy run `run_id` reported (`tokens` of context after its last step),
    /// covering the messages up to `upto` (default: the run's context). `false` if the caller
    /// does not own the run.
    pub async fn record_usage(
        &self,
        session_id: &str,
        run_id: &str,
        tokens: i64,
        upto: Option<i64>,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("compaction usage", self.backend());
        let updated = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE sessions SET context_tokens = $3,
                     context_tokens_upto = COALESCE($4, run_context_upto),
                     context_tokens_revision = run_context_revision
                 WHERE id = $1 AND run_id = $2 AND run_state = 'running'",
            )
            .bind(session_id)
            .bind(run_id)
            .bind(tokens)
            .bind(upto)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Records that a compaction was asked of run `run_id`'s worker at `now_ms` for `source`
    /// (`job`: the run itself becomes a compaction job) and, for automatic ones, that automatic
    /// compaction was attempted at `attempt_upto`. `false` if the caller does not own the run.
    pub async fn request(
        &self,
        session_id: &str,
        run_id: &str,
        source: CompactionSource,
        job: bool,
        attempt_upto: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("compaction request", self.backend());
        let updated = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE sessions SET compaction_requested_at_ms = $3, compaction_source = $4,
                     run_kind = CASE WHEN $5 THEN 'compact' ELSE run_kind END,
                     compaction_attempt_upto = COALESCE($6, compaction_attempt_upto)
                 WHERE id = $1 AND run_id = $2 AND run_state = 'running'",
            )
            .bind(session_id)
            .bind(run_id)
            .bind(now_ms)
            .bind(source.as_str())
            .bind(job)
            .bind(attempt_upto)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// Asks the agent's workers for a manual compaction: the request is recorded and an idle or
    /// failed session becomes `pending`, so the next claim hands out a compaction job. Returns
    /// the state the session was in (`None`: no such session). A running session is left alone.
    pub async fn request_manual(
        &self,
        session_id: &str,
        now_ms: i64,
    ) -> Result<Option<RunState>, StoreError> {
        let fail = StoreError::query("compaction manual request", self.backend());
        let before = in_write_tx!(self.db, fail, |tx, pg| {
            let lock = if pg { "FOR UPDATE" } else { "" };
            let state: Option<String> = sqlx::query_scalar(&format!(
                "SELECT run_state FROM sessions WHERE id = $1 {lock}"
            ))
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            match state {
                None => None,
                Some(state) => {
                    let state = RunState::parse(&state)?;
                    if state != RunState::Running {
                        sqlx::query(
                            "UPDATE sessions SET compaction_requested_at_ms = $2,
                                 compaction_source = 'manual', run_state = 'pending',
                                 pending_since_ms = COALESCE(pending_since_ms, $2),
                                 last_error = NULL, updated_at_ms = $2
                             WHERE id = $1",
                        )
                        .bind(session_id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                    }
                    Some(state)
                }
            }
        });
        Ok(before)
    }

    /// Records that automatic compaction was attempted with the context up to `upto` (no second
    /// automatic attempt until newer messages exist).
    pub async fn mark_attempt(&self, session_id: &str, upto: i64) -> Result<(), StoreError> {
        let fail = StoreError::query("compaction attempt", self.backend());
        on_writer!(self.db, |pool| {
            sqlx::query("UPDATE sessions SET compaction_attempt_upto = $2 WHERE id = $1")
                .bind(session_id)
                .bind(upto)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(())
    }

    /// Records a failed compaction: the counter goes up and any request is cleared. Returns the
    /// number of consecutive failures now.
    pub async fn record_failure(&self, session_id: &str, now_ms: i64) -> Result<i64, StoreError> {
        let fail = StoreError::query("compaction failure", self.backend());
        let failures: Option<i64> = on_writer!(self.db, |pool| {
            sqlx::query_scalar(
                "UPDATE sessions SET compaction_failures = compaction_failures + 1,
                     compaction_requested_at_ms = NULL, compaction_source = NULL,
                     updated_at_ms = $2
                 WHERE id = $1 RETURNING compaction_failures",
            )
            .bind(session_id)
            .bind(now_ms)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        Ok(failures.unwrap_or(0))
    }

    /// Stores a summary: the hidden boundary and the visible notice, in one transaction fenced
    /// as [`NewSummary::fence`] says. The failure counter is reset, the request cleared, the
    /// reported occupancy forgotten (it described the old context) and, when a run owns the
    /// session, its context extended to the new rows (so it reads the compacted context).
    /// `None` — nothing stored — if the fence does not hold.
    pub async fn persist(
        &self,
        summary: &NewSummary<'_>,
        now_ms: i64,
    ) -> Result<Option<Compacted>, StoreError> {
        let fail = StoreError::query("compaction persist", self.backend());
        let session_id = summary.session_id;
        let compacted = in_write_tx!(self.db, fail, |tx, pg| {
            let lock = if pg { "FOR UPDATE" } else { "" };
            let row: Option<(String, Option<String>)> = sqlx::query_as(&format!(
                "SELECT run_state, run_id FROM sessions WHERE id = $1 {lock}"
            ))
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            let holds = match (&row, summary.fence) {
                (None, _) => false,
                (Some((state, run_id)), Some(fence)) => {
                    state == "running" && run_id.as_deref() == Some(fence)
                }
                (Some((state, _)), None) => state != "running",
            };
            if !holds {
                None
            } else {
                let insert = format!(
                    "INSERT INTO messages (session_id, role, kind, body, context_revision,
                         created_at_ms, summary_upto)
                     VALUES ($1, 'system', $2, $3, $4, $5, $6)
                     RETURNING {MESSAGE_COLS}"
                );
                let boundary: Message = sqlx::query_as(&insert)
                    .bind(session_id)
                    .bind("summary")
                    .bind(summary.boundary_body)
                    .bind(summary.revision)
                    .bind(now_ms)
                    .bind(summary.summary_upto)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                let notice: Message = sqlx::query_as(&insert)
                    .bind(session_id)
                    .bind("notice")
                    .bind(summary.notice_body)
                    .bind(summary.revision)
                    .bind(now_ms)
                    .bind(None::<i64>)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                sqlx::query(
                    "UPDATE sessions SET context_tokens = NULL, context_tokens_upto = NULL,
                         context_tokens_revision = NULL, compaction_failures = 0,
                         compaction_attempt_upto = $2, compaction_requested_at_ms = NULL,
                         compaction_source = NULL,
                         run_context_upto = CASE WHEN run_state = 'running' THEN $2
                                                 ELSE run_context_upto END,
                         updated_at_ms = $3
                     WHERE id = $1",
                )
                .bind(session_id)
                .bind(notice.id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                Some(Compacted { boundary, notice })
            }
        });
        Ok(compacted)
    }
}

/// See [`CompactionStore::context`]; shared with `RunStore::run_context`.
pub(super) async fn context_in(
    db: &Database,
    session_id: &str,
    revision: i64,
    upto: i64,
) -> Result<Vec<Message>, StoreError> {
    let fail = StoreError::query("run context", db.backend());
    let boundary_sql = format!(
        "SELECT {MESSAGE_COLS}, summary_upto FROM messages
         WHERE session_id = $1 AND id <= $2 AND context_revision = $3 AND kind = 'summary'
         ORDER BY id DESC LIMIT 1"
    );
    let boundary: Option<(Message, i64)> = on_reader!(db, |pool| {
        match sqlx::query(&boundary_sql)
            .bind(session_id)
            .bind(upto)
            .bind(revision)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        {
            None => None,
            Some(row) => {
                let summary_upto: Option<i64> = row.try_get("summary_upto").map_err(fail)?;
                let message: Message = sqlx::FromRow::from_row(&row).map_err(fail)?;
                Some((message, summary_upto.unwrap_or(0)))
            }
        }
    });
    let after = boundary.as_ref().map_or(0, |(_, upto)| *upto);
    let sql = format!(
        "SELECT {MESSAGE_COLS} FROM messages
         WHERE session_id = $1 AND id <= $2 AND context_revision = $3
           AND kind IN ('message', 'command', 'action')
           AND id > $4
         ORDER BY id"
    );
    let tail: Vec<Message> = on_reader!(db, |pool| {
        sqlx::query_as(&sql)
            .bind(session_id)
            .bind(upto)
            .bind(revision)
            .bind(after)
            .fetch_all(pool)
            .await
            .map_err(fail)?
    });
    let mut context = Vec::with_capacity(tail.len() + 1);
    context.extend(boundary.map(|(message, _)| message));
    context.extend(tail);
    Ok(context)
}
