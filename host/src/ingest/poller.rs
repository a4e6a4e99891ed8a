//! The long-poll transport: for an installation whose plugin declares `long-poll`, the host asks
//! the plugin for the next request (`plan-poll`), sends it through the plugin's `http`
//! allow-list, hands the response to `parse-poll`, stores every event it carries, and only then
//! advances the durable cursor. A crash between storing and advancing replays the round; the
//! dedup claim drops what was already stored.
//!
//! The supervisor runs a poller under the same lease as a WebSocket connection, so at most one
//! replica polls an installation. Owns the round loop and the cursor; must not decode, store
//! messages itself (that is [`Ingest`]) or hold SQL (the cursor lives in the kv backend under a
//! host-reserved scope no plugin can name).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::capabilities::http::send_checked;
use crate::domain::{KvBackend, KvScope};
use crate::ingest::connector::backoff::{Backoff, BackoffPolicy};
use crate::ingest::service::{Ingest, Verified};
use crate::runtime::Plugin;
use crate::runtime::transport::ConnectError;
use crate::store::Installation;

/// The kv scope's plugin name for cursors: a `:` cannot appear in a plugin's name.
const CURSOR_SCOPE: &str = "switchboard:long-poll";
/// The cursor's key in that scope.
const CURSOR_KEY: &str = "cursor";
/// Longest cursor kept (bytes).
const MAX_CURSOR_BYTES: usize = 1024;
/// A round's request never waits longer than this, whatever the plugin asks.
const MAX_ROUND: Duration = Duration::from_secs(120);
/// The round's timeout when the plugin names none.
const DEFAULT_ROUND: Duration = Duration::from_secs(40);
/// Wait after a round that stored nothing because an event failed (the channel redelivers).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Polls one installation until stopped.
pub struct Poller {
    plugin: Arc<Plugin>,
    installation: Installation,
    ingest: Arc<Ingest>,
    backoff: BackoffPolicy,
}

/// What a round ended with.
enum Round {
    /// Events stored (or none came); the cursor moved. Poll again after the wait.
    Done(Duration),
    /// Something failed; back off.
    Retry(String),
    /// The plugin says polling cannot work (bad credentials): stop until the config changes.
    Terminal(String),
}

impl Poller {
    /// A poller for `installation` through `plugin`.
    pub fn new(
        plugin: Arc<Plugin>,
        installation: Installation,
        ingest: Arc<Ingest>,
        backoff: BackoffPolicy,
    ) -> Poller {
        Poller {
            plugin,
            installation,
            ingest,
            backoff,
        }
    }

    /// Polls until `stop` fires (a round in progress is finished first when it is storing).
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.backoff);
        let mut round: u64 = 0;
        tracing::info!("long polling started");
        while !stop.is_cancelled() {
            round += 1;
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                outcome = self.round() => outcome,
            };
            let wait = match outcome {
                Round::Done(wait) => {
                    backoff = Backoff::new(self.backoff);
                    wait
                }
                Round::Retry(why) => {
                    backoff.connection_ended(started.elapsed());
                    let wait = backoff.next_delay();
                    self.ingest
                        .metrics()
                        .reconnect(&self.installation.channel, "poll_failed");
                    tracing::warn!(
                        round,
                        wait_ms = wait.as_millis() as u64,
                        "long-poll round failed; retrying: {why}"
                    );
                    wait
                }
                Round::Terminal(why) => {
                    tracing::error!(
                        round,
                        "long polling stopped: {why}. Fix the installation's credentials or config; polling restarts when they change"
                    );
                    stop.cancelled().await;
                    break;
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        tracing::info!("long polling stopped");
    }

    fn scope(&self) -> KvScope {
        KvScope::new(CURSOR_SCOPE, self.installation.id.clone())
    }

    fn kv(&self) -> Option<&Arc<dyn KvBackend>> {
        self.plugin.services().kv.as_ref()
    }

    async fn cursor(&self) -> Result<Option<String>, String> {
        let Some(kv) = self.kv() else {
            return Ok(None);
        };
        let now = self.plugin.services().clock.now_ms();
        kv.get(&self.scope(), CURSOR_KEY, now)
            .await
            .map(|v| v.and_then(|bytes| String::from_utf8(bytes).ok()))
            .map_err(|e| format!("reading the cursor: {e}"))
    }

    async fn save_cursor(&self, cursor: &str) -> Result<(), String> {
        let Some(kv) = self.kv() else {
            return Ok(());
        };
        let quota = crate::domain::KvQuota {
            max_keys: 1,
            max_bytes: MAX_CURSOR_BYTES as u64,
            max_value_bytes: MAX_CURSOR_BYTES as u64,
        };
        let now = self.plugin.services().clock.now_ms();
        kv.set(
            &self.scope(),
            CURSOR_KEY,
            cursor.as_bytes(),
            None,
            now,
            quota,
        )
        .await
        .map_err(|e| format!("storing the cursor: {e}"))
    }

    async fn round(&self) -> Round {
        let cursor = match self.cursor().await {
            Ok(cursor) => cursor,
            Err(e) => return Round::Retry(e),
        };
        let cx = Arc::new(self.installation.context());
        let request = match self.plugin.plan_poll(&cx, cursor.as_deref()).await {
            Ok(Ok(request)) => request,
            Ok(Err(ConnectError::Terminal(why))) => return Round::Terminal(why),
            Ok(Err(ConnectError::Retryable(why))) => return Round::Retry(why),
            Err(call) => return Round::Retry(format!("plan-poll failed: {call}")),
        };
        let Some(policy) = self.plugin.grants().http.clone() else {
            return Round::Terminal(
                "the plugin long-polls but has no `http` grant: allow its hosts in the manifest"
                    .into(),
            );
        };
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(DEFAULT_ROUND)
            .min(MAX_ROUND);
        let response = match send_checked(&policy, self.plugin.services(), request, timeout).await {
            Ok(response) => response,
            Err(e) => return Round::Retry(format!("the poll request failed: {e:?}")),
        };
        let arrived = Instant::now();
        let batch = match self
            .plugin
            .parse_poll(&cx, cursor.as_deref(), &response)
            .await
        {
            Ok(Ok(batch)) => batch,
            Ok(Err(ConnectError::Terminal(why))) => return Round::Terminal(why),
            Ok(Err(ConnectError::Retryable(why))) => return Round::Retry(why),
            Err(call) => return Round::Retry(format!("parse-poll failed: {call}")),
        };
        let events = batch.payloads.len();
        let mut readings = batch.readings.into_iter();
        let verified = Verified {
            installation: &self.installation,
            cx: &cx,
        };
        // In order: one chat's events must be stored in arrival order, and a round is small.
        for payload in &batch.payloads {
            let read = readings.next();
            if let Err(e) = self
                .ingest
                .payload(&self.plugin, payload, arrived, verified, read)
                .await
            {
                // The cursor stays: the channel hands the round's events out again, and the
                // stored ones are dropped as duplicates.
                tracing::warn!(events, "an event of the round could not be stored: {e}");
                return Round::Done(RETRY_AFTER_FAILURE);
            }
        }
        if let Some(next) = batch.next_cursor.filter(|c| Some(c) != cursor.as_ref()) {
            if next.len() > MAX_CURSOR_BYTES {
                return Round::Terminal(format!(
                    "the plugin's cursor is {} bytes; the limit is {MAX_CURSOR_BYTES}",
                    next.len()
                ));
            }
            if let Err(e) = self.save_cursor(&next).await {
                return Round::Retry(e);
            }
        }
        if events > 0 {
            tracing::debug!(events, "long-poll round stored");
        }
        Round::Done(Duration::from_millis(
            batch.retry_after_ms.map_or(0, u64::from),
        ))
    }
}
