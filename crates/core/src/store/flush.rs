//! Durable debounce windows (SPEC §4): claiming a session's flush and finding windows to re-arm.
//!
//! When the dispatcher appends a user message it sets, in the same transaction,
//! `sessions.flush_due_at_ms` (the end of the silence window) and bumps
//! `sessions.flush_generation`, and hands a [`FlushTicket`] to the debouncer. When the ticket's
//! timer fires, [`Database::claim_flush`] takes the batch: only if the session's generation is
//! still the ticket's (the generation fence: a superseded timer is a no-op) and the window is
//! still open and due. The claim clears the due-at, advances `flushed_message_id` past the batch
//! and marks the session's run pending, all in one transaction, so each message is flushed at
//! most once even with several replicas or a re-armed timer racing for the same window.
//!
//! Appends must lock the session row (update it) before inserting their message, so that message
//! ids within one session become visible in id order; otherwise a claim could advance
//! `flushed_message_id` past a message whose transaction has not committed yet.

use super::{Database, Inner, StoreError};

/// A debounce window to wait for: "flush `session_id` at `due_at_ms` if its generation is still
/// `generation`".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlushTicket {
    /// The session whose window this is.
    pub session_id: String,
    /// The session's `flush_generation` when the window was (re)armed.
    pub generation: i64,
    /// When the window ends (Unix epoch milliseconds).
    pub due_at_ms: i64,
}

/// One user message of a flushed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMessage {
    /// The message row's id (increasing within the database).
    pub id: i64,
    /// The enriched text the agent reads.
    pub body: String,
    /// The channel user who sent it, if known.
    pub sender_id: Option<String>,
    /// The channel's id of the message, if it had one.
    pub channel_message_id: Option<String>,
    /// The context revision the message belongs to (`/new` starts a new one).
    pub context_revision: i64,
    /// When the host stored it (Unix epoch milliseconds).
    pub created_at_ms: i64,
}

/// What a claimed flush hands to the plugin's outbound flush: the session and its new messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushBatch {
    /// The session's id.
    pub session_id: String,
    /// The generation whose window was claimed.
    pub generation: i64,
    /// The installation (bot) the session belongs to.
    pub installation_id: String,
    /// The channel's chat id.
    pub chat_id: String,
    /// `"direct"` or `"group"`.
    pub chat_type: String,
    /// The topic thread the session is keyed on, if any.
    pub thread_id: Option<String>,
    /// The last inbound message id: where replies anchor.
    pub reply_to_message_id: Option<String>,
    /// The topic thread of that message, if any.
    pub reply_thread_id: Option<String>,
    /// The session's current context revision.
    pub context_revision: i64,
    /// The user messages not flushed before, oldest first. Empty if the window held none (for
    /// example, only commands were appended); then the run state was left unchanged.
    pub messages: Vec<BatchMessage>,
}

/// The session row as returned by the fenced claim update.
type SessionRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// A message row as selected for a batch.
type MessageRow = (i64, String, Option<String>, Option<String>, i64, i64);

/// The body of a claim inside transaction `$tx` (either backend). Evaluates to
/// `Result<Option<FlushBatch>, StoreError>`; returns early on errors (the dropped transaction
/// rolls back).
macro_rules! claim_in_tx {
    ($tx:ident, $fail:ident, $session_id:ident, $generation:ident, $due_by_ms:ident,
     $now_ms:ident) => {{
        // The fence: only the latest generation's open window, and only once it is due. The
        // row stays locked (Postgres) until commit, so a concurrent append's session update
        // waits for this claim and then arms a fresh window for its message.
        let row: Option<SessionRow> = sqlx::query_as(
            "UPDATE sessions SET flush_due_at_ms = NULL, updated_at_ms = $4
             WHERE id = $1 AND flush_generation = $2
               AND flush_due_at_ms IS NOT NULL AND flush_due_at_ms <= $3
             RETURNING installation_id, chat_id, chat_type, thread_id, reply_to_message_id,
                       reply_thread_id, context_revision, flushed_message_id",
        )
        .bind($session_id)
        .bind($generation)
        .bind($due_by_ms)
        .bind($now_ms)
        .fetch_optional(&mut *$tx)
        .await
        .map_err($fail)?;
        match row {
            None => None,
            Some((
                installation_id,
                chat_id,
                chat_type,
                thread_id,
                reply_to_message_id,
                reply_thread_id,
                context_revision,
                flushed_message_id,
            )) => {
                let rows: Vec<MessageRow> = sqlx::query_as(
                    "SELECT id, body, sender_id, channel_message_id, context_revision,
                            created_at_ms
                     FROM messages
                     WHERE session_id = $1 AND id > $2 AND role = 'user'
                       AND kind IN ('message', 'command', 'action')
                     ORDER BY id",
                )
                .bind($session_id)
                .bind(flushed_message_id)
                .fetch_all(&mut *$tx)
                .await
                .map_err($fail)?;
                if let Some(last) = rows.last() {
                    // A run already in progress keeps its state (never 'running' → 'pending'):
                    // the new messages wait for the next run (SPEC §5), which the run system
                    // schedules when this one ends. Becoming pending stamps the acquisition
                    // order and clears the last error.
                    sqlx::query(
                        "UPDATE sessions
                         SET flushed_message_id = $2,
                             pending_since_ms = CASE WHEN run_state IN ('idle', 'error')
                                                     THEN $3 ELSE pending_since_ms END,
                             last_error = CASE WHEN run_state IN ('idle', 'error')
                                               THEN NULL ELSE last_error END,
                             run_state = CASE WHEN run_state IN ('idle', 'error') THEN 'pending'
                                              ELSE run_state END
                         WHERE id = $1",
                    )
                    .bind($session_id)
                    .bind(last.0)
                    .bind($now_ms)
                    .execute(&mut *$tx)
                    .await
                    .map_err($fail)?;
                }
                Some(FlushBatch {
                    session_id: $session_id.to_owned(),
                    generation: $generation,
                    installation_id,
                    chat_id,
                    chat_type,
                    thread_id,
                    reply_to_message_id,
                    reply_thread_id,
                    context_revision,
                    messages: rows
                        .into_iter()
                        .map(
                            |(
                                id,
                                body,
                                sender_id,
                                channel_message_id,
                                context_revision,
                                created_at_ms,
                            )| BatchMessage {
                                id,
                                body,
                                sender_id,
                                channel_message_id,
                                context_revision,
                                created_at_ms,
                            },
                        )
                        .collect(),
                })
            }
        }
    }};
}

impl Database {
    /// Claims the debounce window of generation `generation` of `session_id`, if it is due at
    /// `now_ms`.
    ///
    /// Returns `None` (and changes nothing) unless the session's `flush_generation` is still
    /// `generation`, a window is open (`flush_due_at_ms` set) and it ends at or before `now_ms`:
    /// a superseded or already claimed timer is a no-op. Otherwise, in one transaction: closes the
    /// window, reads the user messages after `flushed_message_id` (the batch), advances
    /// `flushed_message_id` to the last of them and, if there were any, marks the run pending
    /// (a running run is left alone).
    pub async fn claim_flush(
        &self,
        session_id: &str,
        generation: i64,
        now_ms: i64,
    ) -> Result<Option<FlushBatch>, StoreError> {
        self.claim_flush_by(session_id, generation, now_ms, now_ms)
            .await
    }

    /// Like [`Database::claim_flush`], but claims the window even if it ends after `now_ms`.
    ///
    /// For graceful shutdown (FlushAll), which flushes every open window once without waiting
    /// for its end. The generation fence still applies.
    pub async fn claim_flush_early(
        &self,
        session_id: &str,
        generation: i64,
        now_ms: i64,
    ) -> Result<Option<FlushBatch>, StoreError> {
        self.claim_flush_by(session_id, generation, i64::MAX, now_ms)
            .await
    }

    async fn claim_flush_by(
        &self,
        session_id: &str,
        generation: i64,
        due_by_ms: i64,
        now_ms: i64,
    ) -> Result<Option<FlushBatch>, StoreError> {
        let fail = StoreError::query("claim flush", self.backend());
        let batch = match &self.inner {
            Inner::Sqlite(pools) => {
                // BEGIN IMMEDIATE takes the write lock up front, so the fence check, the batch
                // read and the advance see one consistent state even against another process.
                let mut tx = pools
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(fail)?;
                let batch = claim_in_tx!(tx, fail, session_id, generation, due_by_ms, now_ms);
                tx.commit().await.map_err(fail)?;
                batch
            }
            Inner::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(fail)?;
                let batch = claim_in_tx!(tx, fail, session_id, generation, due_by_ms, now_ms);
                tx.commit().await.map_err(fail)?;
                batch
            }
        };
        Ok(batch)
    }

    /// Open windows that end at or before `now_ms`, earliest first.
    pub async fn overdue_flushes(&self, now_ms: i64) -> Result<Vec<FlushTicket>, StoreError> {
        self.open_flushes("overdue flushes", now_ms).await
    }

    /// Every open window, earliest first: what a booting host re-arms.
    pub async fn pending_flushes(&self) -> Result<Vec<FlushTicket>, StoreError> {
        self.open_flushes("pending flushes", i64::MAX).await
    }

    async fn open_flushes(
        &self,
        op: &'static str,
        due_by_ms: i64,
    ) -> Result<Vec<FlushTicket>, StoreError> {
        let fail = StoreError::query(op, self.backend());
        let sql = "SELECT id, flush_generation, flush_due_at_ms FROM sessions
                   WHERE flush_due_at_ms IS NOT NULL AND flush_due_at_ms <= $1
                   ORDER BY flush_due_at_ms, id";
        let rows: Vec<(String, i64, i64)> = match &self.inner {
            Inner::Sqlite(pools) => sqlx::query_as(sql)
                .bind(due_by_ms)
                .fetch_all(&pools.reader)
                .await
                .map_err(fail)?,
            Inner::Postgres(pool) => sqlx::query_as(sql)
                .bind(due_by_ms)
                .fetch_all(pool)
                .await
                .map_err(fail)?,
        };
        Ok(rows
            .into_iter()
            .map(|(session_id, generation, due_at_ms)| FlushTicket {
                session_id,
                generation,
                due_at_ms,
            })
            .collect())
    }
}
