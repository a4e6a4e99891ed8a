//! Retention: the bounded deletes that keep the bookkeeping tables from growing without bound
//! (issue 14) — dedup claims, the drop audit, binding tokens, expired plugin kv rows, delivered
//! outbox rows and pairing codes.
//!
//! Owns one statement per table, each deleting at most `limit` rows whose age is past a cutoff
//! the caller computes (the periodic task in `crate::retention` decides when and how often, and
//! loops until a batch comes back short). On SQLite a batch is chosen by `rowid` through the
//! single writer; on PostgreSQL by key with `FOR UPDATE SKIP LOCKED`, so replicas pruning at
//! the same time, and writers holding a row, never wait on each other, and the age test is
//! repeated on the row actually deleted, so a row refreshed concurrently (a reclaimed dedup
//! claim, a kv key rewritten with a new expiry) is kept.
//!
//! Blob rows (issue 18) are pruned here too ([`RetentionStore::prune_blobs`]): downloaded or
//! failed rows created before the cutoff, and those of a session that no longer exists; the
//! statement returns each deleted row's digest so the caller can delete files no row names any
//! more (files are the host's, never this module's). Pending rows are left to the download
//! worker, so a download in flight never loses its row.
//!
//! Must not touch anything else: sessions, messages, runs, user bindings, installations and
//! kv rows without an expiry are never deleted here, and nothing here reads the clock.

use sqlx::Row;

use super::installations::on_writer;
use super::{Backend, Database, Inner, StoreError};

/// A table the retention task prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainedTable {
    /// `inbound_dedup`: claims (processed or still in flight) received before the cutoff.
    Dedup,
    /// `inbound_audit`: drop records received before the cutoff.
    Audit,
    /// `binding_tokens`: used tokens (at once) and unused ones that expired before the cutoff.
    BindingTokens,
    /// `plugin_kv`: rows whose expiry is at or before the cutoff (the caller's "now").
    Kv,
    /// `outbox`: rows delivered before the cutoff (pending and failed rows are never pruned).
    Outbox,
    /// `pairings`: codes (approved, denied or never used) that expired before the cutoff; the
    /// binding an approval made stays.
    Pairings,
    /// `blobs`: downloaded or failed attachments created before the cutoff, and those of
    /// deleted sessions (pending ones never). Not in [`RetainedTable::ALL`]: its files go with
    /// it, so the host's retention task prunes it through [`RetentionStore::prune_blobs`] when
    /// it knows the blob directory.
    Blobs,
}

impl RetainedTable {
    /// Every pruned table, in the order a pass visits them.
    pub const ALL: [RetainedTable; 6] = [
        RetainedTable::Dedup,
        RetainedTable::Audit,
        RetainedTable::BindingTokens,
        RetainedTable::Kv,
        RetainedTable::Outbox,
        RetainedTable::Pairings,
    ];

    /// The table's SQL name, also the `table` label of the pruned-rows metric.
    pub fn as_str(self) -> &'static str {
        match self {
            RetainedTable::Dedup => "inbound_dedup",
            RetainedTable::Audit => "inbound_audit",
            RetainedTable::BindingTokens => "binding_tokens",
            RetainedTable::Kv => "plugin_kv",
            RetainedTable::Outbox => "outbox",
            RetainedTable::Pairings => "pairings",
            RetainedTable::Blobs => "blobs",
        }
    }

    /// The bounded delete: `$1` the cutoff (Unix epoch ms), `$2` the most rows to delete.
    fn delete_sql(self, backend: Backend) -> &'static str {
        match (self, backend) {
            // A claim in flight is refreshed (received_at_ms = now) whenever it is taken over, so
            // one received before the cutoff (days ago, far beyond RECLAIM_AFTER_MS) is dead.
            (RetainedTable::Dedup, Backend::Sqlite) => {
                "DELETE FROM inbound_dedup WHERE rowid IN (
                     SELECT rowid FROM inbound_dedup WHERE received_at_ms < $1 LIMIT $2)"
            }
            (RetainedTable::Dedup, Backend::Postgres) => {
                "DELETE FROM inbound_dedup
                 WHERE (installation_id, message_id) IN (
                     SELECT installation_id, message_id FROM inbound_dedup
                     WHERE received_at_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
                   AND received_at_ms < $1"
            }
            (RetainedTable::Audit, Backend::Sqlite) => {
                "DELETE FROM inbound_audit WHERE id IN (
                     SELECT id FROM inbound_audit WHERE received_at_ms < $1 LIMIT $2)"
            }
            (RetainedTable::Audit, Backend::Postgres) => {
                "DELETE FROM inbound_audit WHERE id IN (
                     SELECT id FROM inbound_audit WHERE received_at_ms < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            (RetainedTable::BindingTokens, Backend::Sqlite) => {
                "DELETE FROM binding_tokens WHERE rowid IN (
                     SELECT rowid FROM binding_tokens
                     WHERE consumed_at_ms IS NOT NULL OR expires_at_ms < $1 LIMIT $2)"
            }
            (RetainedTable::BindingTokens, Backend::Postgres) => {
                "DELETE FROM binding_tokens
                 WHERE token_hash IN (
                     SELECT token_hash FROM binding_tokens
                     WHERE consumed_at_ms IS NOT NULL OR expires_at_ms < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)
                   AND (consumed_at_ms IS NOT NULL OR expires_at_ms < $1)"
            }
            (RetainedTable::Kv, Backend::Sqlite) => {
                "DELETE FROM plugin_kv WHERE rowid IN (
                     SELECT rowid FROM plugin_kv
                     WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1 LIMIT $2)"
            }
            (RetainedTable::Outbox, Backend::Sqlite) => {
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox
                     WHERE state = 'delivered' AND done_at_ms < $1 LIMIT $2)"
            }
            (RetainedTable::Outbox, Backend::Postgres) => {
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox
                     WHERE state = 'delivered' AND done_at_ms < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            (RetainedTable::Pairings, Backend::Sqlite) => {
                "DELETE FROM pairings WHERE rowid IN (
                     SELECT rowid FROM pairings WHERE expires_at_ms < $1 LIMIT $2)"
            }
            (RetainedTable::Pairings, Backend::Postgres) => {
                "DELETE FROM pairings WHERE id IN (
                     SELECT id FROM pairings WHERE expires_at_ms < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            (RetainedTable::Blobs, Backend::Sqlite) => {
                "DELETE FROM blobs WHERE id IN (
                     SELECT b.id FROM blobs b
                     WHERE b.state <> 'pending'
                       AND (b.created_at_ms < $1
                            OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id))
                     LIMIT $2)
                 RETURNING id, installation_id, sha256, size"
            }
            (RetainedTable::Blobs, Backend::Postgres) => {
                "DELETE FROM blobs WHERE id IN (
                     SELECT b.id FROM blobs b
                     WHERE b.state <> 'pending'
                       AND (b.created_at_ms < $1
                            OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = b.session_id))
                     LIMIT $2 FOR UPDATE OF b SKIP LOCKED)
                   AND state <> 'pending'
                 RETURNING id, installation_id, sha256, size"
            }
            (RetainedTable::Kv, Backend::Postgres) => {
                "DELETE FROM plugin_kv
                 WHERE (plugin, installation, key) IN (
                     SELECT plugin, installation, key FROM plugin_kv
                     WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)
                   AND expires_at_ms IS NOT NULL AND expires_at_ms <= $1"
            }
        }
    }

    fn op(self) -> &'static str {
        match self {
            RetainedTable::Dedup => "retention prune inbound_dedup",
            RetainedTable::Audit => "retention prune inbound_audit",
            RetainedTable::BindingTokens => "retention prune binding_tokens",
            RetainedTable::Kv => "retention prune plugin_kv",
            RetainedTable::Outbox => "retention prune outbox",
            RetainedTable::Pairings => "retention prune pairings",
            RetainedTable::Blobs => "retention prune blobs",
        }
    }
}

/// The retention store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct RetentionStore {
    db: Database,
}

impl RetentionStore {
    pub(super) fn new(db: Database) -> Self {
        RetentionStore { db }
    }

    /// Deletes at most `limit` rows of `table` that are past `cutoff_ms` and returns how many it
    /// deleted; fewer than `limit` means nothing else was due (at the time of the statement).
    ///
    /// What `cutoff_ms` means per table (Unix epoch milliseconds):
    /// - [`RetainedTable::Dedup`]: claims received before it, processed or not. It must lie well
    ///   before "now minus [`RECLAIM_AFTER_MS`](super::RECLAIM_AFTER_MS)", or a claim still in
    ///   flight could lose its row (its Mark would then find nothing and roll the append back).
    /// - [`RetainedTable::Audit`]: drop records received before it.
    /// - [`RetainedTable::BindingTokens`]: unused tokens that expired before it; used tokens go
    ///   whatever the cutoff.
    /// - [`RetainedTable::Kv`]: rows expired at it (expiry at or before it): pass "now".
    /// - [`RetainedTable::Pairings`]: codes that expired before it, whatever became of them.
    /// - [`RetainedTable::Blobs`]: rows created before it (or of deleted sessions); this leaves
    ///   their files behind — the host prunes blobs with [`RetentionStore::prune_blobs`].
    ///
    /// One statement, in its own implicit transaction: on SQLite it holds the writer only for
    /// this batch.
    pub async fn prune_batch(
        &self,
        table: RetainedTable,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let backend = self.db.backend();
        let fail = StoreError::query(table.op(), backend);
        let deleted = on_writer!(self.db, |pool| {
            sqlx::query(table.delete_sql(backend))
                .bind(cutoff_ms)
                .bind(i64::from(limit))
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(deleted)
    }
}

/// One blob row [`RetentionStore::prune_blobs`] deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedBlob {
    /// The blob id.
    pub id: String,
    /// Its installation (whose stored bytes shrink by `size`).
    pub installation_id: String,
    /// The digest of its file, when it was stored (the file may be shared with other rows).
    pub sha256: Option<String>,
    /// Its size, when it was stored.
    pub size: Option<i64>,
}

impl RetentionStore {
    /// Deletes at most `limit` blob rows past `cutoff_ms` (see [`RetainedTable::Blobs`]) and
    /// returns them; fewer than `limit` means nothing else was due. The files are the
    /// caller's: delete those no remaining row names
    /// ([`BlobStore::referenced_digests`](super::BlobStore::referenced_digests)).
    pub async fn prune_blobs(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<PrunedBlob>, StoreError> {
        let backend = self.db.backend();
        let fail = StoreError::query(RetainedTable::Blobs.op(), backend);
        let sql = RetainedTable::Blobs.delete_sql(backend);
        let pruned = on_writer!(self.db, |pool| {
            sqlx::query(sql)
                .bind(cutoff_ms)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(fail)?
                .iter()
                .map(|row| {
                    Ok(PrunedBlob {
                        id: row.try_get("id")?,
                        installation_id: row.try_get("installation_id")?,
                        sha256: row.try_get("sha256")?,
                        size: row.try_get("size")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(fail)?
        });
        Ok(pruned)
    }
}
