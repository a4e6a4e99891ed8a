//! The download worker: claims due blob rows under a lease and downloads each through its
//! channel plugin's `outbound.fetch-attachment`, then stores, retries or gives it up.
//!
//! Every replica runs one; a row whose replica died mid-download is claimed again after its
//! lease (by another replica or the next start), so a download survives a restart. Reasons
//! recorded on a row are the host's own words (the agent may repeat them to users); the
//! plugin's details go to the log. Owns the download policy only: no SQL of its own (it calls
//! `store::BlobStore`), no HTTP.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Blobs, sniff_mime};
use crate::domain::Clock;
use crate::runtime::{Runtime, types};
use crate::store::{BlobRow, InstallationStore, StoreError, StoredBlob};

/// Rows one claim takes (downloaded one after another).
const CLAIM_BATCH: i64 = 8;

/// What became of one download attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// The file is stored.
    Stored,
    /// This attempt failed; the row is due again later.
    Retry(String),
    /// Given up: the row is `failed` with this reason.
    Failed(String),
    /// Another claim holds the row now (the lease ran out); nothing recorded.
    Lost,
}

/// The download worker of one replica. Cheap to clone.
#[derive(Clone)]
pub struct BlobWorker {
    blobs: Blobs,
    runtime: Arc<Runtime>,
    installations: InstallationStore,
    clock: Arc<dyn Clock>,
    owner: String,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for BlobWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWorker")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// How one download went, before it is recorded.
enum Attempt {
    Bytes {
        body: Vec<u8>,
        channel_mime: Option<String>,
    },
    Retry(String),
    Fail(String),
}

impl BlobWorker {
    /// A worker downloading `blobs`' rows through `runtime`'s plugins, leasing rows as `owner`.
    pub fn new(
        blobs: Blobs,
        runtime: Arc<Runtime>,
        installations: InstallationStore,
        clock: Arc<dyn Clock>,
        owner: String,
    ) -> BlobWorker {
        BlobWorker {
            blobs,
            runtime,
            installations,
            clock,
            owner,
            wake: Arc::default(),
        }
    }

    /// Looks for due rows now instead of at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Downloads until `stop` is cancelled: due rows at once, then every poll interval or
    /// wake-up. A database failure is logged and retried at the next poll.
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.blobs.settings.poll_interval;
        loop {
            let claimed = tokio::select! {
                _ = stop.cancelled() => return,
                claimed = self.drain_once() => claimed,
            };
            let busy = match claimed {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!("claiming attachment downloads failed (retried): {e}");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims the due rows (up to a batch) and downloads each once; returns how many it claimed.
    pub async fn drain_once(&self) -> Result<usize, StoreError> {
        let settings = &self.blobs.settings;
        let rows = self
            .blobs
            .store
            .claim_due(
                &self.owner,
                self.clock.now_ms(),
                millis(settings.lease),
                CLAIM_BATCH,
            )
            .await?;
        let claimed = rows.len();
        for row in rows {
            let span = tracing::info_span!(
                "blob.download",
                blob = %row.id,
                installation = %row.installation_id,
                session = %row.session_id,
                message = %row.channel_message_id,
                attempt = row.attempts,
            );
            self.download(row).instrument(span).await?;
        }
        Ok(claimed)
    }

    /// One attempt at `row` (claimed by this worker), recorded.
    pub async fn download(&self, row: BlobRow) -> Result<DownloadOutcome, StoreError> {
        let settings = &self.blobs.settings;
        let outcome = match self.fetch(&row).await? {
            Attempt::Bytes { body, channel_mime } => {
                self.keep(&row, body, channel_mime.as_deref()).await?
            }
            Attempt::Fail(reason) => DownloadOutcome::Failed(reason),
            Attempt::Retry(reason) if row.attempts >= i64::from(settings.attempts) => {
                DownloadOutcome::Failed(format!(
                    "{reason}; gave up after {} attempts",
                    row.attempts
                ))
            }
            Attempt::Retry(reason) => DownloadOutcome::Retry(reason),
        };
        let now = self.clock.now_ms();
        let recorded = match &outcome {
            DownloadOutcome::Stored | DownloadOutcome::Lost => true,
            DownloadOutcome::Retry(reason) => {
                let next = now + millis(backoff(settings, row.attempts));
                self.blobs
                    .store
                    .reschedule(&row.id, &self.owner, next, reason)
                    .await?
            }
            DownloadOutcome::Failed(reason) => {
                self.blobs
                    .store
                    .mark_failed(&row.id, &self.owner, reason, now)
                    .await?
            }
        };
        let outcome = if recorded {
            outcome
        } else {
            DownloadOutcome::Lost
        };
        match &outcome {
            DownloadOutcome::Stored => tracing::info!("attachment stored"),
            DownloadOutcome::Retry(reason) => {
                tracing::info!(%reason, "attachment download failed; retrying later")
            }
            DownloadOutcome::Failed(reason) => {
                tracing::warn!(%reason, "attachment download given up; the message keeps a placeholder")
            }
            DownloadOutcome::Lost => {
                tracing::info!("attachment download taken over by another claim; nothing recorded")
            }
        }
        Ok(outcome)
    }

    /// Asks the channel plugin for the bytes.
    async fn fetch(&self, row: &BlobRow) -> Result<Attempt, StoreError> {
        let Some(installation) = self.installations.get(&row.installation_id).await? else {
            return Ok(Attempt::Fail("the installation was removed".into()));
        };
        let Some(plugin) = self
            .runtime
            .plugin_for_channel(&installation.channel)
            .filter(|p| p.manifest().features.attachments)
        else {
            return Ok(Attempt::Fail(
                "the channel's plugin does not serve attachments".into(),
            ));
        };
        let cx = Arc::new(installation.context());
        Ok(
            match plugin
                .fetch_attachment(&cx, &row.channel_message_id, &row.attachment_ref)
                .await
            {
                Ok(Ok(content)) => Attempt::Bytes {
                    body: content.body,
                    channel_mime: content.mime,
                },
                Ok(Err(types::PluginError::Retryable(detail))) => {
                    tracing::info!(%detail, "the channel could not hand out the attachment now");
                    Attempt::Retry("the channel could not hand out the file now".into())
                }
                Ok(Err(error)) => {
                    tracing::warn!(?error, "the channel refused the attachment");
                    Attempt::Fail("the channel refused to hand out the file".into())
                }
                Err(error) => {
                    tracing::warn!(%error, "the fetch-attachment call failed");
                    Attempt::Retry("the download failed".into())
                }
            },
        )
    }

    /// Checks the caps, then writes the file and records it.
    async fn keep(
        &self,
        row: &BlobRow,
        body: Vec<u8>,
        channel_mime: Option<&str>,
    ) -> Result<DownloadOutcome, StoreError> {
        let settings = &self.blobs.settings;
        let size = body.len() as u64;
        if size > settings.max_file_bytes {
            return Ok(DownloadOutcome::Failed(format!(
                "the file is {size} bytes, over the per-file cap of {} bytes",
                settings.max_file_bytes
            )));
        }
        let used =
            u64::try_from(self.blobs.store.stored_bytes(&row.installation_id).await?).unwrap_or(0);
        if used.saturating_add(size) > settings.max_installation_bytes {
            return Ok(DownloadOutcome::Failed(format!(
                "storing {size} more bytes would pass the installation's cap of {} bytes",
                settings.max_installation_bytes
            )));
        }
        let mime = sniff_mime(&body, row.declared_mime.as_deref().or(channel_mime));
        let files = self.blobs.files.clone();
        let written = tokio::task::spawn_blocking(move || files.put(&body)).await;
        let sha256 = match written {
            Ok(Ok(sha256)) => sha256,
            Ok(Err(e)) => {
                tracing::error!("writing an attachment failed: {e}");
                return Ok(DownloadOutcome::Retry(
                    "the file could not be written".into(),
                ));
            }
            Err(e) => {
                tracing::error!("the attachment write task failed: {e}");
                return Ok(DownloadOutcome::Retry(
                    "the file could not be written".into(),
                ));
            }
        };
        let stored = StoredBlob {
            size: i64::try_from(size).unwrap_or(i64::MAX),
            sha256: &sha256,
            mime: &mime,
        };
        let kept = self
            .blobs
            .store
            .mark_stored(&row.id, &self.owner, &stored, self.clock.now_ms())
            .await?;
        Ok(if kept {
            DownloadOutcome::Stored
        } else {
            DownloadOutcome::Lost
        })
    }
}

/// The wait after attempt `attempts` (1-based): the first backoff, doubled per attempt, capped.
fn backoff(settings: &super::BlobSettings, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    settings
        .first_backoff
        .saturating_mul(1 << doublings)
        .min(settings.max_backoff)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let settings = super::super::BlobSettings {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..Default::default()
        };
        let waits: Vec<u128> = (1..=5).map(|n| backoff(&settings, n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(backoff(&settings, 0).as_millis(), 100);
    }
}
