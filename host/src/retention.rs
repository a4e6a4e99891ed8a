//! The retention task (issue 14): dedup claims, drop-audit rows, binding tokens and expired
//! plugin kv rows only matter for a while; this task deletes them once they no longer do, so
//! those tables stop growing without bound.
//!
//! Owns when pruning happens and how far back it reaches: a pass shortly after start-up
//! (`[retention] first_run_after_s`) and then every `interval_s`; each pass computes its cutoffs
//! once from the injectable [`Clock`] and `[retention]`, and visits every table in bounded
//! batches (`batch_size` rows per statement) until a batch comes back short, yielding between
//! batches so other writers (on SQLite: the one writer connection) get their turn. Rows pruned
//! are counted in `switchboard_retention_pruned_rows_total{table=…}`.
//!
//! Blobs (issue 18), when the task knows the blob directory ([`Retention::with_blobs`]): rows
//! downloaded or failed longer ago than `blob_days`, and those of deleted sessions, are deleted
//! in batches like the tables (`table="blobs"`), and after each batch the files no remaining
//! stored row names; an installation's stored bytes (what its cap counts) are summed from the
//! rows, so they shrink with them. Then one sweep deletes files no row names that are older
//! than [`ORPHAN_FILE_GRACE`] (a download whose record was lost, a temporary a crash left),
//! counted in `switchboard_retention_blob_files_deleted_total`. A pending download is never
//! touched: its row is the worker's until it settles.
//!
//! Must not hold SQL (that is [`crate::store::RetentionStore`]) or decide anything beyond a
//! row's age; every replica may run it (PostgreSQL replicas skip each other's locked rows).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobFiles;
use crate::config::RetentionConfig;
use crate::domain::Clock;
use crate::metrics::Metrics;
use crate::store::{BlobStore, Database, RetainedTable, RetentionStore, StoreError};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Dedup claims younger than this are never pruned, whatever the settings say: a claim in
/// flight is at most seconds old (its time is refreshed when taken over), and deleting it would
/// make its Mark fail.
const MIN_DEDUP_AGE_MS: i64 = DAY_MS;
/// A blob file no row names is deleted only once it is this old: a download writes its file
/// before it records the row as stored, and must not lose the file in between.
pub const ORPHAN_FILE_GRACE: Duration = Duration::from_secs(3_600);

/// How much is kept and how often the task prunes: `[retention]` in typed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Time between passes.
    pub interval: Duration,
    /// Time from [`Retention::spawn`] to the first pass.
    pub first_run_after: Duration,
    /// Dedup claims received longer ago than this are deleted (ms; never less than a day).
    pub dedup_max_age_ms: i64,
    /// Audit rows received longer ago than this are deleted (ms).
    pub audit_max_age_ms: i64,
    /// Outbox rows delivered longer ago than this are deleted (ms).
    pub outbox_max_age_ms: i64,
    /// Unused binding tokens expired longer ago than this are deleted (ms); used ones at once.
    pub binding_token_grace_ms: i64,
    /// Downloaded or failed blobs created longer ago than this are deleted with their files (ms).
    pub blob_max_age_ms: i64,
    /// Most rows one delete statement removes.
    pub batch_size: u32,
}

impl RetentionSettings {
    /// The settings of a `[retention]` section (validate it first: see
    /// [`RetentionConfig::validate`]).
    pub fn from_config(config: &RetentionConfig) -> RetentionSettings {
        let ms = |count: u64, unit_ms: i64| {
            i64::try_from(count)
                .unwrap_or(i64::MAX)
                .saturating_mul(unit_ms)
        };
        RetentionSettings {
            interval: Duration::from_secs(config.interval_s),
            first_run_after: Duration::from_secs(config.first_run_after_s),
            dedup_max_age_ms: ms(config.dedup_days, DAY_MS),
            audit_max_age_ms: ms(config.audit_days, DAY_MS),
            outbox_max_age_ms: ms(config.outbox_days, DAY_MS),
            binding_token_grace_ms: ms(config.binding_token_grace_hours, HOUR_MS),
            blob_max_age_ms: ms(config.blob_days, DAY_MS),
            batch_size: config.batch_size.max(1),
        }
    }

    /// The cutoff of `table` for a pass at `now_ms` (see [`RetentionStore::prune_batch`]).
    pub fn cutoff_ms(&self, table: RetainedTable, now_ms: i64) -> i64 {
        match table {
            RetainedTable::Dedup => {
                now_ms.saturating_sub(self.dedup_max_age_ms.max(MIN_DEDUP_AGE_MS))
            }
            RetainedTable::Audit => now_ms.saturating_sub(self.audit_max_age_ms),
            RetainedTable::Outbox => now_ms.saturating_sub(self.outbox_max_age_ms),
            // Pairing codes live an hour; they are kept as long as binding tokens past expiry.
            RetainedTable::BindingTokens | RetainedTable::Pairings => {
                now_ms.saturating_sub(self.binding_token_grace_ms)
            }
            RetainedTable::Kv => now_ms,
            RetainedTable::Blobs => now_ms.saturating_sub(self.blob_max_age_ms),
        }
    }
}

impl Default for RetentionSettings {
    /// The settings of the default `[retention]` section.
    fn default() -> Self {
        RetentionSettings::from_config(&RetentionConfig::default())
    }
}

/// What one table lost in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablePruned {
    /// The table.
    pub table: RetainedTable,
    /// Rows deleted.
    pub rows: u64,
    /// Delete statements run (the last one came back short, or the pass was stopped).
    pub batches: u64,
}

/// What one pass deleted, per table in visiting order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// One entry per table the pass reached.
    pub tables: Vec<TablePruned>,
    /// Blob files deleted (their last row went, or no row named them).
    pub blob_files: u64,
}

impl PruneReport {
    /// Rows deleted from `table` (0 if the pass did not reach it).
    pub fn rows(&self, table: RetainedTable) -> u64 {
        self.entry(table).map_or(0, |t| t.rows)
    }

    /// Delete statements run on `table` (0 if the pass did not reach it).
    pub fn batches(&self, table: RetainedTable) -> u64 {
        self.entry(table).map_or(0, |t| t.batches)
    }

    /// Rows deleted from every table.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    fn entry(&self, table: RetainedTable) -> Option<&TablePruned> {
        self.tables.iter().find(|t| t.table == table)
    }
}

/// The retention task: a cheap, cloneable handle (store, clock, settings, metrics).
#[derive(Clone)]
pub struct Retention {
    store: RetentionStore,
    clock: Arc<dyn Clock>,
    settings: RetentionSettings,
    metrics: Option<Arc<Metrics>>,
    /// The blob rows and their directory, when blobs are pruned.
    blobs: Option<(BlobStore, BlobFiles)>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Retention {
    /// Prunes `db`, reading "now" from `clock`.
    pub fn new(db: &Database, clock: Arc<dyn Clock>, settings: RetentionSettings) -> Retention {
        Retention {
            store: db.retention(),
            clock,
            settings,
            metrics: None,
            blobs: None,
        }
    }

    /// Counts pruned rows in `metrics` (every table's series shows from now on, at 0 at first).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Retention {
        for table in RetainedTable::ALL.into_iter().chain([RetainedTable::Blobs]) {
            metrics.pruned(table.as_str(), 0);
        }
        metrics.blob_files_deleted(0);
        self.metrics = Some(metrics);
        self
    }

    /// Also prunes blobs: the rows of `db` and their files in `files` (see the module docs).
    pub fn with_blobs(mut self, db: &Database, files: BlobFiles) -> Retention {
        self.blobs = Some((db.blobs(), files));
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// Runs one pass now: every table, batch after batch, until a batch comes back short.
    /// Stops at the first failing statement (rows already deleted stay deleted and counted).
    pub async fn run_pass(&self) -> Result<PruneReport, StoreError> {
        self.pass(&CancellationToken::new()).await
    }

    /// One pass; `stop` ends it between two batches.
    async fn pass(&self, stop: &CancellationToken) -> Result<PruneReport, StoreError> {
        let now_ms = self.clock.now_ms();
        let mut report = PruneReport::default();
        for table in RetainedTable::ALL {
            if stop.is_cancelled() {
                break;
            }
            let cutoff_ms = self.settings.cutoff_ms(table, now_ms);
            let mut pruned = TablePruned {
                table,
                rows: 0,
                batches: 0,
            };
            loop {
                let deleted = self
                    .store
                    .prune_batch(table, cutoff_ms, self.settings.batch_size)
                    .await?;
                pruned.rows += deleted;
                pruned.batches += 1;
                if let Some(metrics) = &self.metrics {
                    metrics.pruned(table.as_str(), deleted);
                }
                if deleted < u64::from(self.settings.batch_size) || stop.is_cancelled() {
                    break;
                }
                // Let queued writers take the connection before the next batch.
                tokio::task::yield_now().await;
            }
            report.tables.push(pruned);
        }
        if let Some((blobs, files)) = &self.blobs
            && !stop.is_cancelled()
        {
            self.prune_blobs(blobs, files, now_ms, stop, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// The blob part of a pass: expired rows batch after batch with the files they leave
    /// unnamed, then the sweep of old files no row names.
    async fn prune_blobs(
        &self,
        blobs: &BlobStore,
        files: &BlobFiles,
        now_ms: i64,
        stop: &CancellationToken,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        let table = RetainedTable::Blobs;
        let cutoff_ms = self.settings.cutoff_ms(table, now_ms);
        let mut pruned = TablePruned {
            table,
            rows: 0,
            batches: 0,
        };
        loop {
            let deleted = self
                .store
                .prune_blobs(cutoff_ms, self.settings.batch_size)
                .await?;
            let count = deleted.len() as u64;
            pruned.rows += count;
            pruned.batches += 1;
            if let Some(metrics) = &self.metrics {
                metrics.pruned(table.as_str(), count);
            }
            let mut digests: Vec<String> =
                deleted.into_iter().filter_map(|row| row.sha256).collect();
            digests.sort();
            digests.dedup();
            report.blob_files += self.delete_unnamed(blobs, files, digests).await?;
            if count < u64::from(self.settings.batch_size) || stop.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        report.tables.push(pruned);
        if stop.is_cancelled() {
            return Ok(());
        }
        // Files no row names: a download recorded nowhere (its lease was lost after the write),
        // temporaries a crash left. Only old ones: a download in progress has a fresh file.
        let before = std::time::SystemTime::now() - ORPHAN_FILE_GRACE;
        let listing = files.clone();
        let (digests, temporaries) =
            match tokio::task::spawn_blocking(move || listing.older_than(before)).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    tracing::warn!("retention: listing the blob directory failed: {e}");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("retention: listing the blob directory failed: {e}");
                    return Ok(());
                }
            };
        for chunk in digests.chunks(self.settings.batch_size as usize) {
            report.blob_files += self.delete_unnamed(blobs, files, chunk.to_vec()).await?;
        }
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0u64;
            for temporary in temporaries {
                match std::fs::remove_file(&temporary) {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(
                        path = %temporary.display(),
                        "retention: a stray blob temporary could not be deleted: {e}"
                    ),
                }
            }
            removed
        })
        .await
        .unwrap_or(0);
        report.blob_files += removed;
        if let Some(metrics) = &self.metrics {
            metrics.blob_files_deleted(removed);
        }
        Ok(())
    }

    /// Deletes the files of `digests` that no stored row names; returns how many it deleted.
    /// A file that cannot be deleted is logged and left for the next pass's sweep.
    async fn delete_unnamed(
        &self,
        blobs: &BlobStore,
        files: &BlobFiles,
        digests: Vec<String>,
    ) -> Result<u64, StoreError> {
        if digests.is_empty() {
            return Ok(0);
        }
        let named = blobs
            .referenced_digests(&digests.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        let unnamed: Vec<String> = digests
            .into_iter()
            .filter(|digest| !named.contains(digest))
            .collect();
        let files = files.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0u64;
            for digest in &unnamed {
                match files.remove(digest) {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!("retention: a blob file could not be deleted: {e}"),
                }
            }
            removed
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("retention: the blob file deletion task failed: {e}");
            0
        });
        if let Some(metrics) = &self.metrics {
            metrics.blob_files_deleted(removed);
        }
        Ok(removed)
    }

    /// Runs passes on a task: the first after `first_run_after`, then every `interval` (a pass
    /// that overruns delays the next). Cancelling `stop` ends the task after the current batch.
    /// A failed pass is logged and retried at the next interval.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let first = tokio::time::Instant::now() + self.settings.first_run_after;
            let mut ticks = tokio::time::interval_at(first, self.settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                match self.pass(&stop).await {
                    Ok(report) if report.total_rows() > 0 || report.blob_files > 0 => {
                        tracing::info!(
                            dedup = report.rows(RetainedTable::Dedup),
                            audit = report.rows(RetainedTable::Audit),
                            binding_tokens = report.rows(RetainedTable::BindingTokens),
                            kv = report.rows(RetainedTable::Kv),
                            outbox = report.rows(RetainedTable::Outbox),
                            pairings = report.rows(RetainedTable::Pairings),
                            blobs = report.rows(RetainedTable::Blobs),
                            blob_files = report.blob_files,
                            "retention: pruned old rows"
                        )
                    }
                    Ok(_) => tracing::debug!("retention: nothing to prune"),
                    Err(e) => tracing::warn!("retention pass failed (retried next interval): {e}"),
                }
            }
        })
    }
}
