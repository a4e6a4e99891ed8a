//! The plugin key/value store behind the `kv` capability (SPEC §2): [`KvStore`] implements
//! [`KvBackend`] on the host database.
//!
//! Rows live in `plugin_kv`, keyed by (plugin, installation, key). A value may carry an expiry
//! time; a row whose `expires_at_ms` is at or before the caller's `now_ms` is expired and behaves
//! exactly like an absent key, until the retention task (`crate::retention`, in bounded
//! batches), [`KvStore::purge_expired`] or the next `set` in its scope deletes it. Quotas count
//! live rows only: the number of keys and the sum of value lengths in bytes (keys themselves are
//! not counted; their length is bounded by the capability layer).
//!
//! Keys are stored as TEXT; PostgreSQL TEXT cannot hold NUL characters, so the capability layer
//! must reject keys containing `\0` before they get here.

use sha2::{Digest, Sha256};

use crate::domain::{KvBackend, KvError, KvFuture, KvQuota, KvScope};

use super::installations::{on_reader, on_writer};
use super::{Backend, Database, Inner, StoreError};

/// What one scope currently holds, counting live (unexpired) keys only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvUsage {
    /// Number of live keys.
    pub keys: u64,
    /// Sum of the live values' lengths in bytes.
    pub bytes: u64,
}

/// Why [`KvStore::set`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KvSetError {
    /// The value alone is larger than `max_value_bytes`; nothing was written.
    #[error("kv value too large: {len} bytes, the limit is {max} bytes")]
    ValueTooLarge {
        /// Length of the refused value in bytes.
        len: u64,
        /// The `max_value_bytes` limit.
        max: u64,
    },
    /// Writing would take the scope over its key or byte quota; nothing was written.
    ///
    /// `what` starts with `"keys"` or `"bytes"` and then says by how much, e.g.
    /// `"keys: 11 live keys would exceed max_keys 10"`.
    #[error("kv quota exceeded: {what}")]
    QuotaExceeded {
        /// Which limit (`keys …` or `bytes …`) and the numbers involved.
        what: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The plugin key/value store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct KvStore {
    db: Database,
}

/// The body of `set` once the scope is locked inside transaction `$tx` (either backend).
/// Returns from the enclosing function on refusal or error; the dropped transaction rolls back.
macro_rules! set_in_locked_tx {
    ($tx:ident, $fail:ident, $scope:ident, $key:ident, $value:ident, $expires_at_ms:ident,
     $now_ms:ident, $quota:ident) => {{
        // Expired rows of this scope are absent anyway; dropping them here keeps what is stored
        // (not only what is live) within the quota between purges.
        sqlx::query(
            "DELETE FROM plugin_kv
             WHERE plugin = $1 AND installation = $2
               AND expires_at_ms IS NOT NULL AND expires_at_ms <= $3",
        )
        .bind(&$scope.plugin)
        .bind(&$scope.installation)
        .bind($now_ms)
        .execute(&mut *$tx)
        .await
        .map_err($fail)?;

        // Usage of every other live key: the key being written counts with its new size only.
        let (other_keys, other_bytes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0)
             FROM plugin_kv
             WHERE plugin = $1 AND installation = $2 AND key <> $3
               AND (expires_at_ms IS NULL OR expires_at_ms > $4)",
        )
        .bind(&$scope.plugin)
        .bind(&$scope.installation)
        .bind($key)
        .bind($now_ms)
        .fetch_one(&mut *$tx)
        .await
        .map_err($fail)?;

        let keys = u64::try_from(other_keys).unwrap_or(0).saturating_add(1);
        if keys > $quota.max_keys {
            return Err(KvSetError::QuotaExceeded {
                what: format!(
                    "keys: {keys} live keys would exceed max_keys {}",
                    $quota.max_keys
                ),
            });
        }
        let bytes = u64::try_from(other_bytes)
            .unwrap_or(0)
            .saturating_add($value.len() as u64);
        if bytes > $quota.max_bytes {
            return Err(KvSetError::QuotaExceeded {
                what: format!(
                    "bytes: {bytes} bytes of live values would exceed max_bytes {}",
                    $quota.max_bytes
                ),
            });
        }

        sqlx::query(
            "INSERT INTO plugin_kv (plugin, installation, key, value, expires_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (plugin, installation, key) DO UPDATE
             SET value = excluded.value,
                 expires_at_ms = excluded.expires_at_ms,
                 updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&$scope.plugin)
        .bind(&$scope.installation)
        .bind($key)
        .bind($value)
        .bind($expires_at_ms)
        .bind($now_ms)
        .execute(&mut *$tx)
        .await
        .map_err($fail)?;
    }};
}

impl KvStore {
    pub(super) fn new(db: Database) -> Self {
        KvStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Reads `key` in `scope`. A key that is missing or expired at `now_ms` reads as `None`.
    pub async fn get(
        &self,
        scope: &KvScope,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = StoreError::query("kv get", self.backend());
        on_reader!(self.db, |pool| {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT value FROM plugin_kv
                 WHERE plugin = $1 AND installation = $2 AND key = $3
                   AND (expires_at_ms IS NULL OR expires_at_ms > $4)",
            )
            .bind(&scope.plugin)
            .bind(&scope.installation)
            .bind(key)
            .bind(now_ms)
            .fetch_optional(pool)
            .await
            .map_err(fail)
        })
    }

    /// Writes `value` under `key` in `scope`, replacing any previous value and expiry.
    ///
    /// `expires_at_ms` is the absolute expiry time (`None`: never expires); a time at or before
    /// `now_ms` deletes the key instead. The write is refused, with nothing changed, if the
    /// value is larger than `quota.max_value_bytes` or if afterwards the scope's live keys or
    /// live bytes would exceed `quota` (an overwrite counts the new value instead of adding it).
    ///
    /// The quota check and the write happen in one transaction that holds the scope's write
    /// lock, so concurrent writers to one scope cannot together exceed the quota.
    pub async fn set(
        &self,
        scope: &KvScope,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
    ) -> Result<(), KvSetError> {
        let len = value.len() as u64;
        if len > quota.max_value_bytes {
            return Err(KvSetError::ValueTooLarge {
                len,
                max: quota.max_value_bytes,
            });
        }
        if expires_at_ms.is_some_and(|at| at <= now_ms) {
            // Already expired: the observable result of the write is an absent key.
            self.delete_as(scope, key, "kv set").await?;
            return Ok(());
        }

        let fail = StoreError::query("kv set", self.backend());
        match &self.db.inner {
            Inner::Sqlite(pools) => {
                // The single-connection writer pool already serialises writers inside this
                // process; BEGIN IMMEDIATE takes SQLite's write lock up front so another process
                // on the same file (e.g. `switchboard migrate`) cannot slip a write between our
                // usage read and our insert (and we never need to upgrade a read lock, which
                // could fail with SQLITE_BUSY regardless of the busy timeout).
                let mut tx = pools
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(fail)?;
                set_in_locked_tx!(tx, fail, scope, key, value, expires_at_ms, now_ms, quota);
                tx.commit().await.map_err(fail)?;
            }
            Inner::Postgres(pool) => {
                // Under READ COMMITTED, "check usage, then insert" lets two transactions that
                // each add a new key both pass the check; re-checking after the insert has the
                // same hole (neither sees the other's uncommitted row), and SELECT … FOR UPDATE
                // cannot lock rows that do not exist yet. So each set first takes a
                // transaction-scoped advisory lock on the scope: writers to one scope queue up,
                // the usage query (a fresh snapshot taken after the lock is granted) sees every
                // earlier writer's committed rows, and writers to other scopes are not blocked.
                // The lock is released by commit or rollback, also when the future is dropped.
                let mut tx = pool.begin().await.map_err(fail)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(scope_lock_key(scope))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                set_in_locked_tx!(tx, fail, scope, key, value, expires_at_ms, now_ms, quota);
                tx.commit().await.map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Writes `value` under `key` like [`KvStore::set`], unless the key holds a live value for
    /// which `keep` is true: then nothing changes and that value is returned. Read and write
    /// happen under the scope's write lock, so two writers racing on one key are ordered and
    /// the second sees the first's value (what a plain get-then-set cannot promise).
    #[allow(clippy::too_many_arguments)]
    pub async fn set_unless(
        &self,
        scope: &KvScope,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
        keep: impl Fn(&[u8]) -> bool + Send,
    ) -> Result<Option<Vec<u8>>, KvSetError> {
        let len = value.len() as u64;
        if len > quota.max_value_bytes {
            return Err(KvSetError::ValueTooLarge {
                len,
                max: quota.max_value_bytes,
            });
        }
        let fail = StoreError::query("kv set unless", self.backend());
        let current_sql = "SELECT value FROM plugin_kv
                 WHERE plugin = $1 AND installation = $2 AND key = $3
                   AND (expires_at_ms IS NULL OR expires_at_ms > $4)";
        match &self.db.inner {
            Inner::Sqlite(pools) => {
                let mut tx = pools
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(fail)?;
                let current: Option<Vec<u8>> = sqlx::query_scalar(current_sql)
                    .bind(&scope.plugin)
                    .bind(&scope.installation)
                    .bind(key)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(fail)?;
                if let Some(current) = current.filter(|v| keep(v)) {
                    return Ok(Some(current));
                }
                set_in_locked_tx!(tx, fail, scope, key, value, expires_at_ms, now_ms, quota);
                tx.commit().await.map_err(fail)?;
            }
            Inner::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(fail)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(scope_lock_key(scope))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                let current: Option<Vec<u8>> = sqlx::query_scalar(current_sql)
                    .bind(&scope.plugin)
                    .bind(&scope.installation)
                    .bind(key)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(fail)?;
                if let Some(current) = current.filter(|v| keep(v)) {
                    return Ok(Some(current));
                }
                set_in_locked_tx!(tx, fail, scope, key, value, expires_at_ms, now_ms, quota);
                tx.commit().await.map_err(fail)?;
            }
        }
        Ok(None)
    }

    /// Deletes `key` from `scope`.
    ///
    /// Returns whether a row was removed; that includes an expired row not purged yet, so
    /// `false` means the key was certainly absent.
    pub async fn delete(&self, scope: &KvScope, key: &str) -> Result<bool, StoreError> {
        self.delete_as(scope, key, "kv delete").await
    }

    async fn delete_as(
        &self,
        scope: &KvScope,
        key: &str,
        op: &'static str,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query(op, self.backend());
        let result = on_writer!(self.db, |pool| {
            sqlx::query(
                "DELETE FROM plugin_kv WHERE plugin = $1 AND installation = $2 AND key = $3",
            )
            .bind(&scope.plugin)
            .bind(&scope.installation)
            .bind(key)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(result > 0)
    }

    /// Counts the keys and value bytes of `scope` that are live at `now_ms`.
    pub async fn usage(&self, scope: &KvScope, now_ms: i64) -> Result<KvUsage, StoreError> {
        let fail = StoreError::query("kv usage", self.backend());
        let (keys, bytes): (i64, i64) = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0)
                 FROM plugin_kv
                 WHERE plugin = $1 AND installation = $2
                   AND (expires_at_ms IS NULL OR expires_at_ms > $3)",
            )
            .bind(&scope.plugin)
            .bind(&scope.installation)
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .map_err(fail)?
        });
        Ok(KvUsage {
            keys: u64::try_from(keys).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        })
    }

    /// Deletes every row, in every scope, that is expired at `now_ms`; returns how many.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        let fail = StoreError::query("kv purge_expired", self.backend());
        let purged = on_writer!(self.db, |pool| {
            sqlx::query(
                "DELETE FROM plugin_kv WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1",
            )
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        if purged > 0 {
            tracing::debug!(purged, backend = %self.backend(), "purged expired kv rows");
        }
        Ok(purged)
    }
}

impl From<KvSetError> for KvError {
    fn from(error: KvSetError) -> KvError {
        match error {
            KvSetError::ValueTooLarge { len, max } => KvError::ValueTooLarge { len, max },
            KvSetError::QuotaExceeded { what } => KvError::QuotaExceeded { what },
            KvSetError::Store(error) => KvError::Unavailable(Box::new(error)),
        }
    }
}

impl KvBackend for KvStore {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        now_ms: i64,
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            KvStore::get(self, scope, key, now_ms)
                .await
                .map_err(|e| KvError::Unavailable(Box::new(e)))
        })
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
    ) -> KvFuture<'a, ()> {
        Box::pin(async move {
            KvStore::set(self, scope, key, value, expires_at_ms, now_ms, quota)
                .await
                .map_err(KvError::from)
        })
    }

    fn delete<'a>(&'a self, scope: &'a KvScope, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            KvStore::delete(self, scope, key)
                .await
                .map_err(|e| KvError::Unavailable(Box::new(e)))
        })
    }

    fn set_unless<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
        keep: &'a (dyn Fn(&[u8]) -> bool + Send + Sync),
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            KvStore::set_unless(self, scope, key, value, expires_at_ms, now_ms, quota, keep)
                .await
                .map_err(KvError::from)
        })
    }
}

/// The PostgreSQL advisory-lock key of a scope: 64 bits of a hash of the scope, under a
/// namespace prefix so that other advisory locks of the host do not collide with it by design.
/// Identical in every replica, since it depends only on the scope.
fn scope_lock_key(scope: &KvScope) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"switchboard.kv\0");
    hash.update(scope.plugin.as_bytes());
    hash.update(b"\0");
    hash.update(scope.installation.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}
