//! The delivery outbox (issue 14): what must reach a chat — a run's reply or error card, a
//! notice — stored durably before anyone tries to send it, and delivered by whichever replica
//! claims it.
//!
//! Rows are written in the transaction of the state change that produced them (a run's end:
//! [`insert_outbox!`], used by `RunStore::finish_run`) or on their own ([`OutboxStore::enqueue`],
//! notices). A delivery worker claims due rows under a lease ([`OutboxStore::claim_due`]:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, the single writer on SQLite), and only the oldest
//! pending row of a session is due, so a session's messages go out in order. A claim's lease
//! expires, so a row whose replica died mid-delivery is retried by another one (or by the same
//! host after a restart). Every attempt carries the row's idempotency key, which channels that
//! support it use to post a retried message only once.
//!
//! It owns the SQL of the outbox only; it must not call plugins or decide what is said.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::installations::{from_row_both, in_write_tx, on_reader, on_writer};
use super::{Backend, Database, Inner, StoreError};

/// What an outbox row delivers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OutboxContent {
    /// An agent's reply.
    Reply {
        /// The reply text.
        text: String,
    },
    /// A failed run: the user sees a notice with the run's reference (never the failure
    /// itself).
    RunError {
        /// The finished text of a row stored before notices had kinds (empty for new rows).
        #[serde(default)]
        text: String,
        /// The run's reference, quoted in the notice.
        #[serde(default)]
        reference: Option<String>,
    },
    /// A notice, in the delivery layer's own JSON form.
    Notice {
        /// The notice.
        notice: serde_json::Value,
    },
}

impl OutboxContent {
    /// The stored `kind` column: `reply`, `run_error` or `notice`.
    pub fn kind(&self) -> &'static str {
        match self {
            OutboxContent::Reply { .. } => "reply",
            OutboxContent::RunError { .. } => "run_error",
            OutboxContent::Notice { .. } => "notice",
        }
    }
}

/// Where an outbox row goes, as the session was when it was enqueued (a later message moves the
/// session's reply anchor; the reply still answers the turn it was made for).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxTarget {
    /// The channel's chat id.
    pub chat_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// The topic thread the session is keyed on, if any.
    pub thread_id: Option<String>,
    /// The inbound message a reply anchors on.
    pub reply_to: Option<String>,
    /// Whether that message was in a topic thread.
    pub in_thread: bool,
}

/// A row to enqueue.
#[derive(Debug, Clone)]
pub struct NewOutboxRow<'a> {
    /// The installation whose channel delivers it.
    pub installation_id: &'a str,
    /// The session it belongs to.
    pub session_id: &'a str,
    /// The run whose end produced it, if any.
    pub run_id: Option<&'a str>,
    /// What to deliver.
    pub content: &'a OutboxContent,
    /// Where.
    pub target: &'a OutboxTarget,
}

/// A stored outbox row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Increasing id (enqueue order).
    pub id: i64,
    /// The installation whose channel delivers it.
    pub installation_id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// The run whose end produced it, if any.
    pub run_id: Option<String>,
    /// What to deliver.
    pub content: OutboxContent,
    /// Where.
    pub target: OutboxTarget,
    /// Handed to the channel with every attempt.
    pub idempotency_key: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts so far (a claim counts as one).
    pub attempts: i64,
    /// When it is due (again).
    pub next_attempt_at_ms: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The channel's id of the sent message, once delivered.
    pub channel_message_id: Option<String>,
    /// When it was enqueued.
    pub created_at_ms: i64,
    /// When it was delivered or given up.
    pub done_at_ms: Option<i64>,
}

/// The columns every row read selects.
pub(super) const COLS: &str = "id, installation_id, session_id, run_id, content, target, idempotency_key, \
     state, attempts, next_attempt_at_ms, last_error, channel_message_id, created_at_ms, \
     done_at_ms";

from_row_both!(OutboxRow, |row| {
    let content: String = row.try_get("content")?;
    let target: String = row.try_get("target")?;
    let decode = |what: &str, e: serde_json::Error| sqlx::Error::ColumnDecode {
        index: what.to_string(),
        source: Box::new(e),
    };
    Ok(OutboxRow {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        session_id: row.try_get("session_id")?,
        run_id: row.try_get("run_id")?,
        content: serde_json::from_str(&content).map_err(|e| decode("content", e))?,
        target: serde_json::from_str(&target).map_err(|e| decode("target", e))?,
        idempotency_key: row.try_get("idempotency_key")?,
        state: row.try_get("state")?,
        attempts: row.try_get::<i64, _>("attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
        last_error: row.try_get("last_error")?,
        channel_message_id: row.try_get("channel_message_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        done_at_ms: row.try_get("done_at_ms")?,
    })
});

/// Inside transaction `$tx`: inserts `$row` (a [`NewOutboxRow`]) due at `$now_ms` with its
/// idempotency key ([`idempotency_key`], or `key = …` given); evaluates to its id. The key is
/// unique: a row whose key exists already fails the statement (and so the transaction).
macro_rules! insert_outbox {
    ($tx:ident, $fail:expr, $row:expr, $now_ms:expr) => {{
        let row: &$crate::store::outbox::NewOutboxRow<'_> = $row;
        insert_outbox!(
            $tx,
            $fail,
            row,
            $now_ms,
            key = $crate::store::outbox::idempotency_key(row)
        )
    }};
    ($tx:ident, $fail:expr, $row:expr, $now_ms:expr, key = $key:expr) => {{
        let row: &$crate::store::outbox::NewOutboxRow<'_> = $row;
        let key: String = $key;
        let content = serde_json::to_string(row.content).expect("outbox content serializes");
        let target = serde_json::to_string(row.target).expect("outbox target serializes");
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (installation_id, session_id, run_id, kind, content, target,
                 idempotency_key, next_attempt_at_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             RETURNING id",
        )
        .bind(row.installation_id)
        .bind(row.session_id)
        .bind(row.run_id)
        .bind(row.content.kind())
        .bind(content)
        .bind(target)
        .bind(key)
        .bind($now_ms)
        .fetch_one(&mut *$tx)
        .await
        .map_err($fail)?;
        id
    }};
}

/// The idempotency key a new row gets: for a run's reply `reply-<run id>` (a run has at most
/// one reply, and a streamed reply was started with the same key, so a redelivery after a
/// crash is recognised by the channel as the same message), otherwise a fresh UUID.
pub fn idempotency_key(row: &NewOutboxRow<'_>) -> String {
    match (row.run_id, row.content) {
        (Some(run_id), OutboxContent::Reply { .. }) => reply_key(run_id),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The idempotency key of run `run_id`'s reply (and of its stream).
pub fn reply_key(run_id: &str) -> String {
    format!("reply-{run_id}")
}

/// Inside transaction `$tx`: claims the row `$id` just inserted for `$owner` until
/// `$now_ms + $lease_ms` (counting an attempt), unless an older row of its session is still
/// pending; evaluates to the claimed [`OutboxRow`], if it was.
macro_rules! claim_inserted {
    ($tx:ident, $fail:expr, $id:expr, $owner:expr, $now_ms:expr, $lease_ms:expr) => {{
        let row: Option<$crate::store::outbox::OutboxRow> = sqlx::query_as(&format!(
            "UPDATE outbox SET lease_owner = $2, lease_expires_at_ms = $3 + $4,
                 attempts = attempts + 1
             WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM outbox e
                                           WHERE e.session_id = outbox.session_id
                                             AND e.state = 'pending' AND e.id < outbox.id)
             RETURNING {}",
            $crate::store::outbox::COLS
        ))
        .bind($id)
        .bind($owner)
        .bind($now_ms)
        .bind($lease_ms)
        .fetch_optional(&mut *$tx)
        .await
        .map_err($fail)?;
        row
    }};
}

pub(super) use {claim_inserted, insert_outbox};

/// Counts of outbox rows by state (metrics, admin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    /// Waiting for (another) attempt.
    pub pending: i64,
    /// Given up after their retry budget, or refused for good.
    pub failed: i64,
}

/// The outbox store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    db: Database,
}

impl OutboxStore {
    pub(super) fn new(db: Database) -> Self {
        OutboxStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Enqueues one row on its own (notices); returns its id.
    pub async fn enqueue(&self, row: &NewOutboxRow<'_>, now_ms: i64) -> Result<i64, StoreError> {
        let fail = StoreError::query("outbox enqueue", self.backend());
        let id = in_write_tx!(self.db, fail, |tx, _pg| {
            insert_outbox!(tx, fail, row, now_ms)
        });
        Ok(id)
    }

    /// The row `id`, if it exists.
    pub async fn get(&self, id: i64) -> Result<Option<OutboxRow>, StoreError> {
        let fail = StoreError::query("outbox read", self.backend());
        let sql = format!("SELECT {COLS} FROM outbox WHERE id = $1");
        Ok(on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        }))
    }

    /// Claims up to `limit` due rows for `owner` until `now_ms + lease_ms`, counting an attempt
    /// each; oldest first. A row is due when it is pending, its next attempt time has come, no
    /// live lease holds it, and no older row of its session is still pending (so one session's
    /// messages go out in order).
    pub async fn claim_due(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let fail = StoreError::query("outbox claim", self.backend());
        let skip_locked = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE outbox SET lease_owner = $1, lease_expires_at_ms = $2 + $3,
                 attempts = attempts + 1
             WHERE id IN (
                 SELECT o.id FROM outbox o
                 WHERE o.state = 'pending' AND o.next_attempt_at_ms <= $2
                   AND (o.lease_expires_at_ms IS NULL OR o.lease_expires_at_ms <= $2)
                   AND NOT EXISTS (SELECT 1 FROM outbox e
                                   WHERE e.session_id = o.session_id AND e.state = 'pending'
                                     AND e.id < o.id)
                 ORDER BY o.id LIMIT $4 {skip_locked})
             RETURNING {COLS}"
        );
        let mut rows: Vec<OutboxRow> = on_writer!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(owner)
                .bind(now_ms)
                .bind(lease_ms)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    /// Extends `owner`'s lease on the claimed row `id` to `now_ms + lease_ms`; returns whether
    /// `owner` still held it (false: the row was taken over or finished meanwhile). An attempt
    /// that may outlast its lease (a paced send, a wait for a stream handle) renews it, so no
    /// other replica claims the row while the first one is still sending it.
    pub async fn renew_lease(
        &self,
        id: i64,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("outbox lease renewal", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE outbox SET lease_expires_at_ms = $3 + $4
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(now_ms)
            .bind(lease_ms)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Marks a claimed row delivered, if `owner` still holds it; returns whether it did.
    pub async fn mark_delivered(
        &self,
        id: i64,
        owner: &str,
        channel_message_id: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("outbox mark delivered", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE outbox SET state = 'delivered', done_at_ms = $3,
                     channel_message_id = $4, lease_owner = NULL, lease_expires_at_ms = NULL,
                     last_error = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(now_ms)
            .bind(channel_message_id)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Puts a claimed row back for another attempt at `next_attempt_at_ms`, recording why this
    /// one failed; returns whether `owner` still held it.
    pub async fn reschedule(
        &self,
        id: i64,
        owner: &str,
        next_attempt_at_ms: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("outbox reschedule", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at_ms = $3, last_error = $4,
                     lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(next_attempt_at_ms)
            .bind(error)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Gives a claimed row up (`failed`, visible in the admin API and metrics); returns whether
    /// `owner` still held it.
    pub async fn mark_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("outbox mark failed", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE outbox SET state = 'failed', last_error = $3, done_at_ms = $4,
                     lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(error)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Puts a failed row back in the queue, due now with a fresh attempt budget (the operator
    /// fixed what made it fail); returns whether it was failed.
    pub async fn retry_failed(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        let fail = StoreError::query("outbox retry", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = $2,
                     done_at_ms = NULL
                 WHERE id = $1 AND state = 'failed'",
            )
            .bind(id)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Rows in `state` (any state when `None`), newest first, at most `limit`.
    pub async fn list(
        &self,
        state: Option<&str>,
        session_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let fail = StoreError::query("outbox list", self.backend());
        let sql = format!(
            "SELECT {COLS} FROM outbox
             WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR session_id = $2)
             ORDER BY id DESC LIMIT $3"
        );
        let rows = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(state)
                .bind(session_id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        Ok(rows)
    }

    /// How many rows are pending and failed.
    pub async fn counts(&self) -> Result<OutboxCounts, StoreError> {
        let fail = StoreError::query("outbox counts", self.backend());
        let (pending, failed): (i64, i64) = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0)
                 FROM outbox WHERE state <> 'delivered'",
            )
            .fetch_one(pool)
            .await
            .map_err(fail)?
        });
        Ok(OutboxCounts { pending, failed })
    }
}
