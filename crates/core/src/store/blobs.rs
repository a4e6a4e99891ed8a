//! The blob table (issue 18, migration 0011): one row per attachment of a stored message — the
//! durable download job (state, attempts, lease, next attempt) and, once downloaded, the record
//! of the stored file (size, sha256, sniffed mime) or of why it failed.
//!
//! Rows are inserted in the transaction that stores their message ([`insert_blob_jobs!`], used
//! by the append paths of `ingest`), so a message that is durable always has its jobs and a job
//! never exists for a message that was rolled back. A download worker claims due rows under a
//! lease ([`BlobStore::claim_due`]: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the single writer on
//! SQLite); a row whose replica died mid-download is claimed again once the lease expires — by
//! another replica, or by the next process.
//!
//! It owns the SQL of the blob table only; it must not touch files, call plugins or decide what
//! a failure means (the host's `blobs` module does).

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::installations::{from_row_both, on_reader, on_writer};
use super::{Backend, Database, Inner, StoreError};

/// The key of an attachment record (in a message's `meta.attachments[i]`) that names its blob.
pub const BLOB_ID_KEY: &str = "blob_id";

/// Most blob ids one [`BlobStore::get_many`] reads (longer lists are read in chunks).
const IDS_PER_QUERY: usize = 100;

/// The download state of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Not downloaded yet (waiting for an attempt or being downloaded).
    Pending,
    /// Downloaded and stored; `size`, `sha256` and `mime` are set.
    Stored,
    /// Given up: over a size cap, refused by the channel, or out of attempts; `error` says why.
    Failed,
}

impl BlobState {
    /// The stored name: `pending`, `stored` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobState::Pending => "pending",
            BlobState::Stored => "stored",
            BlobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<BlobState> {
        Some(match s {
            "pending" => BlobState::Pending,
            "stored" => BlobState::Stored,
            "failed" => BlobState::Failed,
            _ => return None,
        })
    }
}

/// One row of the blob table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// The blob id (random; what workers put in the URL).
    pub id: String,
    /// The installation whose channel holds the bytes.
    pub installation_id: String,
    /// The session of the message.
    pub session_id: String,
    /// The channel's message id (`fetch-attachment`'s first argument).
    pub channel_message_id: String,
    /// The plugin's opaque reference (`fetch-attachment`'s second argument).
    pub attachment_ref: String,
    /// `image`, `file`, `audio`, `video`, …
    pub kind: String,
    /// The MIME type the channel declared (a hint only).
    pub declared_mime: Option<String>,
    /// Where the download stands.
    pub state: BlobState,
    /// Attempts made (claims counted).
    pub attempts: i64,
    /// Size in bytes, once stored.
    pub size: Option<i64>,
    /// SHA-256 of the bytes as lower-case hex, once stored (the file's name in the store).
    pub sha256: Option<String>,
    /// The MIME type sniffed from the bytes (else the declared one), once stored.
    pub mime: Option<String>,
    /// Why the last attempt failed (or why the blob failed for good).
    pub error: Option<String>,
    /// When the row was inserted (epoch ms).
    pub created_at_ms: i64,
}

const COLS: &str = "id, installation_id, session_id, channel_message_id, attachment_ref, kind, \
     declared_mime, state, attempts, size, sha256, mime, error, created_at_ms";

from_row_both!(BlobRow, |row| {
    let state: String = row.try_get("state")?;
    Ok(BlobRow {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        session_id: row.try_get("session_id")?,
        channel_message_id: row.try_get("channel_message_id")?,
        attachment_ref: row.try_get("attachment_ref")?,
        kind: row.try_get("kind")?,
        declared_mime: row.try_get("declared_mime")?,
        state: BlobState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown blob state {state:?}").into(),
        })?,
        attempts: row.try_get("attempts")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        mime: row.try_get("mime")?,
        error: row.try_get("error")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
});

/// Inside transaction `$tx`: one pending blob row per attachment record of `$request` (an
/// `AppendRequest`) that carries a [`BLOB_ID_KEY`], due at once. A record without one, or a
/// message without a channel message id (nothing to fetch it by), gets no row. An id that
/// exists already is left alone.
macro_rules! insert_blob_jobs {
    ($tx:ident, $fail:expr, $request:expr, $now_ms:expr) => {{
        let request: &$crate::store::AppendRequest = $request;
        if !request.channel_message_id.is_empty() {
            for record in &request.attachments {
                let Some(id) = record[$crate::store::blobs::BLOB_ID_KEY].as_str() else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO blobs (id, installation_id, session_id, channel_message_id,
                         attachment_ref, kind, declared_mime, next_attempt_at_ms, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(&request.installation_id)
                .bind(&request.session_id)
                .bind(&request.channel_message_id)
                .bind(record["ref"].as_str().unwrap_or(""))
                .bind(record["kind"].as_str().unwrap_or("file"))
                .bind(record["mime"].as_str())
                .bind($now_ms)
                .execute(&mut *$tx)
                .await
                .map_err($fail)?;
            }
        }
    }};
}

pub(super) use insert_blob_jobs;

/// The blob store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct BlobStore {
    db: Database,
}

impl BlobStore {
    pub(super) fn new(db: Database) -> Self {
        BlobStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Claims up to `limit` due rows for `owner` until `now_ms + lease_ms`, counting an attempt
    /// each; oldest first. A row is due when it is pending, its next attempt time has come and
    /// no live lease holds it.
    pub async fn claim_due(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<BlobRow>, StoreError> {
        let fail = StoreError::query("blob claim", self.backend());
        let skip_locked = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE blobs SET lease_owner = $1, lease_expires_at_ms = $2 + $3,
                 attempts = attempts + 1
             WHERE id IN (
                 SELECT b.id FROM blobs b
                 WHERE b.state = 'pending' AND b.next_attempt_at_ms <= $2
                   AND (b.lease_expires_at_ms IS NULL OR b.lease_expires_at_ms <= $2)
                 ORDER BY b.next_attempt_at_ms, b.id LIMIT $4 {skip_locked})
             RETURNING {COLS}"
        );
        let mut rows: Vec<BlobRow> = on_writer!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(owner)
                .bind(now_ms)
                .bind(lease_ms)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        rows.sort_by_key(|row| row.created_at_ms);
        Ok(rows)
    }

    /// Records a claimed row as stored, if `owner` still holds it; returns whether it did.
    pub async fn mark_stored(
        &self,
        id: &str,
        owner: &str,
        stored: &StoredBlob<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("blob mark stored", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE blobs SET state = 'stored', size = $3, sha256 = $4, mime = $5,
                     error = NULL, done_at_ms = $6, lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .bind(stored.size)
            .bind(stored.sha256)
            .bind(stored.mime)
            .bind(now_ms)
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
        id: &str,
        owner: &str,
        next_attempt_at_ms: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("blob reschedule", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE blobs SET next_attempt_at_ms = $3, error = $4,
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

    /// Gives a claimed row up (`failed` with `error`); returns whether `owner` still held it.
    pub async fn mark_failed(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("blob mark failed", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE blobs SET state = 'failed', error = $3, done_at_ms = $4,
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

    /// The row `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<BlobRow>, StoreError> {
        let fail = StoreError::query("blob get", self.backend());
        let sql = format!("SELECT {COLS} FROM blobs WHERE id = $1");
        let row = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        Ok(row)
    }

    /// The rows of `ids` that exist (any order).
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<BlobRow>, StoreError> {
        let fail = StoreError::query("blob get many", self.backend());
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let placeholders = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT {COLS} FROM blobs WHERE id IN ({placeholders})");
            let found: Vec<BlobRow> = on_reader!(self.db, |pool| {
                let mut query = sqlx::query_as(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(pool).await.map_err(fail)?
            });
            rows.extend(found);
        }
        Ok(rows)
    }

    /// The rows of `session_id`'s attachments, oldest first.
    pub async fn for_session(&self, session_id: &str) -> Result<Vec<BlobRow>, StoreError> {
        let fail = StoreError::query("blob list", self.backend());
        let sql =
            format!("SELECT {COLS} FROM blobs WHERE session_id = $1 ORDER BY created_at_ms, id");
        let rows = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(session_id)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        Ok(rows)
    }

    /// The digests among `digests` that a stored row names (its file must stay).
    pub async fn referenced_digests(
        &self,
        digests: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let fail = StoreError::query("blob digests in use", self.backend());
        let mut found = std::collections::HashSet::new();
        for chunk in digests.chunks(IDS_PER_QUERY) {
            let placeholders = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT DISTINCT sha256 FROM blobs
                 WHERE state = 'stored' AND sha256 IN ({placeholders})"
            );
            let rows: Vec<String> = on_reader!(self.db, |pool| {
                let mut query = sqlx::query_scalar(&sql);
                for digest in chunk {
                    query = query.bind(*digest);
                }
                query.fetch_all(pool).await.map_err(fail)?
            });
            found.extend(rows);
        }
        Ok(found)
    }

    /// Bytes of the stored blobs of `installation_id` (what its quota counts).
    pub async fn stored_bytes(&self, installation_id: &str) -> Result<i64, StoreError> {
        let fail = StoreError::query("blob usage", self.backend());
        // SUM over BIGINT is NUMERIC on PostgreSQL: cast back so both backends read an i64.
        let bytes: i64 = on_reader!(self.db, |pool| {
            sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs
                 WHERE installation_id = $1 AND state = 'stored'",
            )
            .bind(installation_id)
            .fetch_one(pool)
            .await
            .map_err(fail)?
        });
        Ok(bytes)
    }
}

/// What a finished download recorded.
#[derive(Debug, Clone, Copy)]
pub struct StoredBlob<'a> {
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 as lower-case hex.
    pub sha256: &'a str,
    /// The MIME type (sniffed, else the declared one).
    pub mime: &'a str,
}
