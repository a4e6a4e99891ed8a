//! The blob store (issue 18, "media ingestion"): the bytes of inbound attachments, downloaded
//! after their message is durable and kept on disk for agents.
//!
//! - The dispatcher gives every attachment record of a message a random `blob_id`; the store
//!   inserts one pending row per record in the transaction that stores the message
//!   (`store::blobs`), so the ACK never waits for a download and a stored message always has
//!   its jobs.
//! - [`BlobWorker`] (one per replica) claims due rows under a lease, calls the plugin's
//!   `outbound.fetch-attachment` (the host never learns the channel's URL), checks the caps,
//!   sniffs the type from the bytes ([`sniff_mime`]; the channel's declared type is a hint
//!   only), writes the file ([`BlobFiles`], content-addressed by SHA-256) and records it —
//!   or retries with backoff, and after the last attempt (or at once, over a cap) records the
//!   blob `failed` with a reason: a placeholder; the message and its run go on.
//! - [`Blobs`] is what readers use: [`Blobs::annotate`] adds `state`, `url` (and `size`,
//!   `mime`, `sha256` or `error`) to the records of a run's context, [`Blobs::wait_settled`]
//!   lets a run wait (bounded) for its messages' downloads, [`Blobs::read`] hands out the
//!   bytes of a stored blob.
//!
//! Owns the blob directory, the download policy and the records' annotation. Must not hold
//! SQL (that is `store::blobs`), speak HTTP (the worker API serves blobs) or know any channel.

mod files;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

pub use files::{BlobFiles, FileError, sha256_hex};
pub use worker::{BlobWorker, DownloadOutcome};

use crate::agents::InlineImage;
use crate::config::BlobsConfig;
use crate::store::{BLOB_ID_KEY, BlobRow, BlobState, BlobStore, Database, Message, StoreError};

/// How often [`Blobs::wait_settled`] looks at the pending downloads again.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// The `state` of an attachment record whose blob retention deleted (no `url`).
pub const EXPIRED: &str = "expired";
/// The type of bytes nothing more specific is known about.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Tunables of the blob store (`[blobs]`).
#[derive(Debug, Clone)]
pub struct BlobSettings {
    /// Directory of the files.
    pub dir: std::path::PathBuf,
    /// Largest file stored, in bytes.
    pub max_file_bytes: u64,
    /// Most bytes stored per installation.
    pub max_installation_bytes: u64,
    /// Attempts before a download is given up.
    pub attempts: u32,
    /// Wait before the second attempt, doubled per attempt…
    pub first_backoff: Duration,
    /// …up to this.
    pub max_backoff: Duration,
    /// How long a claim holds a download.
    pub lease: Duration,
    /// How often the worker looks for due downloads.
    pub poll_interval: Duration,
    /// How long a run waits for its messages' pending downloads.
    pub run_wait: Duration,
}

impl BlobSettings {
    /// The settings of a validated `[blobs]` section.
    pub fn from_config(config: &BlobsConfig) -> BlobSettings {
        BlobSettings {
            dir: config.dir.clone(),
            max_file_bytes: config.max_file_bytes,
            max_installation_bytes: config.max_installation_bytes,
            attempts: config.attempts,
            first_backoff: Duration::from_millis(config.first_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            lease: Duration::from_millis(config.lease_ms),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            run_wait: Duration::from_millis(config.run_wait_ms),
        }
    }
}

impl Default for BlobSettings {
    fn default() -> Self {
        BlobSettings::from_config(&BlobsConfig::default())
    }
}

/// A failure reading blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The directory failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The blob is not stored (pending or failed).
    #[error("blob {id} is {state}, not stored")]
    NotStored {
        /// The blob.
        id: String,
        /// Its state.
        state: &'static str,
    },
}

/// The readers' side of the blob store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: BlobStore,
    files: BlobFiles,
    settings: Arc<BlobSettings>,
}

impl Blobs {
    /// The blob store of `db` with `settings`.
    pub fn new(db: &Database, settings: BlobSettings) -> Blobs {
        Blobs {
            store: db.blobs(),
            files: BlobFiles::new(settings.dir.clone()),
            settings: Arc::new(settings),
        }
    }

    /// The table.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The directory.
    pub fn files(&self) -> &BlobFiles {
        &self.files
    }

    /// The settings.
    pub fn settings(&self) -> &BlobSettings {
        &self.settings
    }

    /// The row of blob `id`.
    pub async fn get(&self, id: &str) -> Result<Option<BlobRow>, StoreError> {
        self.store.get(id).await
    }

    /// The bytes of a stored blob.
    pub async fn read(&self, row: &BlobRow) -> Result<Vec<u8>, BlobError> {
        let Some(sha256) = row
            .sha256
            .clone()
            .filter(|_| row.state == BlobState::Stored)
        else {
            return Err(BlobError::NotStored {
                id: row.id.clone(),
                state: row.state.as_str(),
            });
        };
        let files = self.files.clone();
        let bytes = tokio::task::spawn_blocking(move || files.get(&sha256))
            .await
            .map_err(|e| FileError::Io {
                path: "(blob read task)".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(bytes)
    }

    /// The blob rows the records of `messages` name, by id.
    async fn rows_of(&self, messages: &[Message]) -> Result<HashMap<String, BlobRow>, StoreError> {
        let ids: Vec<&str> = messages.iter().flat_map(blob_ids).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect())
    }

    /// Waits until no download of `messages`' attachments is pending, at most the configured
    /// `run_wait` (then the run goes on with placeholders). Returns whether all settled. A
    /// database failure ends the wait (the run is not held up by it).
    pub async fn wait_settled(&self, messages: &[Message]) -> bool {
        let ids: Vec<&str> = messages.iter().flat_map(blob_ids).collect();
        if ids.is_empty() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + self.settings.run_wait;
        loop {
            match self.store.get_many(&ids).await {
                Ok(rows) if rows.iter().all(|r| r.state != BlobState::Pending) => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("reading the downloads a run waits for failed: {e}");
                    return false;
                }
            }
            if tokio::time::Instant::now() + WAIT_POLL > deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Adds to every attachment record of `messages` that names a blob its `state`, the `url`
    /// agent `agent`'s workers fetch it from (relative to the host's base URL), and `size`,
    /// `mime`, `sha256` once stored or `error` once failed; a blob retention deleted is
    /// [`EXPIRED`] without a URL.
    pub async fn annotate(&self, agent: &str, messages: &mut [Message]) -> Result<(), StoreError> {
        let rows = self.rows_of(messages).await?;
        for message in messages.iter_mut() {
            let Some(records) = message
                .meta
                .as_mut()
                .and_then(|meta| meta.get_mut("attachments"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for record in records {
                let Some(id) = record[BLOB_ID_KEY].as_str() else {
                    continue;
                };
                match rows.get(id) {
                    Some(row) => annotate_record(record, row, agent),
                    // Retention deleted it (and its file): say so rather than hand out a URL
                    // that answers 404.
                    None => record["state"] = json!(EXPIRED),
                }
            }
        }
        Ok(())
    }

    /// The stored images of `messages`, by message index (for a model that accepts images):
    /// at most `max_images` in all, the newest first kept.
    pub async fn images(
        &self,
        messages: &[Message],
        max_images: usize,
    ) -> Result<HashMap<usize, Vec<InlineImage>>, StoreError> {
        let rows = self.rows_of(messages).await?;
        let mut out: HashMap<usize, Vec<InlineImage>> = HashMap::new();
        let mut taken = 0;
        for (index, message) in messages.iter().enumerate().rev() {
            for id in blob_ids(message) {
                let Some(row) = rows.get(id) else { continue };
                let is_image = row.mime.as_deref().is_some_and(|m| m.starts_with("image/"));
                if row.state != BlobState::Stored || !is_image || taken >= max_images {
                    continue;
                }
                match self.read(row).await {
                    Ok(bytes) => {
                        taken += 1;
                        out.entry(index).or_default().push(InlineImage {
                            mime: row.mime.clone().unwrap_or_default(),
                            bytes: bytes.into(),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(blob = %row.id, "a stored image could not be read: {e}")
                    }
                }
            }
        }
        for images in out.values_mut() {
            images.reverse();
        }
        Ok(out)
    }
}

/// The blob ids the attachment records of `message` name.
fn blob_ids(message: &Message) -> impl Iterator<Item = &str> {
    message
        .meta
        .as_ref()
        .and_then(|meta| meta["attachments"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|record| record[BLOB_ID_KEY].as_str())
}

/// The path workers fetch blob `id` from with agent `agent`'s token.
pub fn blob_path(agent: &str, id: &str) -> String {
    format!("/api/agents/{agent}/blobs/{id}")
}

fn annotate_record(record: &mut Value, row: &BlobRow, agent: &str) {
    record["state"] = json!(row.state.as_str());
    record["url"] = json!(blob_path(agent, &row.id));
    match row.state {
        BlobState::Stored => {
            record["size"] = json!(row.size);
            record["mime"] = json!(row.mime);
            record["sha256"] = json!(row.sha256);
        }
        BlobState::Failed => {
            record["error"] = json!(row.error);
        }
        BlobState::Pending => {}
    }
}

/// The MIME type of `bytes`: sniffed from their content when recognisable; otherwise the
/// channel's `declared` type when it is a plain `type/subtype` that could not be rendered as
/// a page (a hint only: never `text/html`, scripts or XML); otherwise
/// `application/octet-stream`.
pub fn sniff_mime(bytes: &[u8], declared: Option<&str>) -> String {
    if let Some(kind) = infer::get(bytes) {
        return kind.mime_type().to_owned();
    }
    let declared = declared
        .map(|d| {
            d.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|d| {
            let mut parts = d.splitn(2, '/');
            let (kind, sub) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(kind) && token(sub)
        })
        .filter(|d| {
            !(d.contains("html")
                || d.contains("xml")
                || d.contains("javascript")
                || d == "image/svg")
        });
    declared.unwrap_or_else(|| OCTET_STREAM.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_comes_from_the_bytes_and_the_declared_one_is_a_hint() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
        assert_eq!(sniff_mime(png, Some("application/pdf")), "image/png");
        assert_eq!(sniff_mime(b"%PDF-1.7\n", None), "application/pdf");
        assert_eq!(
            sniff_mime(b"plain words", Some("text/plain; charset=utf-8")),
            "text/plain"
        );
        for risky in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "bad type",
            "",
        ] {
            assert_eq!(
                sniff_mime(b"just words", Some(risky)),
                OCTET_STREAM,
                "{risky}"
            );
        }
        assert_eq!(sniff_mime(b"??", None), OCTET_STREAM);
    }
}
