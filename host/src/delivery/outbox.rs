//! The delivery worker: drains the durable outbox (`store::OutboxStore`) through the channel
//! plugins. One runs on every replica.
//!
//! Owns *when* an outbox row is attempted: it claims due rows under a lease, delivers each once
//! through [`Delivery::send_once`] with the row's idempotency key, and marks it delivered, puts
//! it back with exponential backoff (a retryable refusal or a failed plugin call), or gives it
//! up as `failed` (a permanent refusal, or the retry budget spent) where the admin API and
//! `/metrics` show it. A reply or error card also clears the session's typing indicator once it
//! is delivered. Rows enqueued on this replica wake the worker at once; others (another
//! replica's, retries, a crashed claim whose lease ran out) are found by polling.
//!
//! Must not decide what is said (rows arrive complete) and holds no SQL of its own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[cfg(test)]
use serde_json::json;
use tokio::sync::Notify;
use tracing::Instrument;

use super::{Content, Delivery, DeliveryFailure};
use crate::domain::Clock;
use crate::domain::notice::{Notice, NoticeKind};
use crate::metrics::Metrics;
use crate::runtime::types;
use crate::store::{
    InstallationStore, NewOutboxRow, OutboxContent, OutboxRow, OutboxStore, OutboxTarget,
};

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct OutboxSettings {
    /// How often to look for rows nobody woke this replica for.
    pub poll_interval: Duration,
    /// How long a claim holds a row before another replica may try it.
    pub lease: Duration,
    /// Attempts before a row is given up.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_backoff: Duration,
    /// Upper bound of one wait.
    pub max_backoff: Duration,
    /// Rows claimed at once (one per session, delivered concurrently).
    pub batch: u32,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            attempts: 8,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            batch: 16,
        }
    }
}

impl OutboxSettings {
    /// The settings `[delivery]` asks for (validate it first).
    pub fn from_config(config: &crate::config::DeliveryConfig) -> OutboxSettings {
        OutboxSettings {
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            lease: Duration::from_millis(config.lease_ms),
            attempts: config.attempts,
            first_backoff: Duration::from_millis(config.first_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            ..OutboxSettings::default()
        }
    }

    /// The wait after attempt `attempts` failed.
    /// The wait before retry `attempts + 1`: the backoff, or the channel's `retry_after` when it
    /// asked for longer, never beyond `max_backoff`.
    fn wait(&self, attempts: i64, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(attempts);
        match retry_after {
            Some(asked) if asked > backoff => asked.min(self.max_backoff.max(backoff)),
            _ => backoff,
        }
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.first_backoff
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_backoff)
    }
}

/// The outbox as the rest of the host sees it: enqueue notices, wake the worker, run it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: OutboxStore,
    installations: InstallationStore,
    delivery: Delivery,
    clock: Arc<dyn Clock>,
    /// This replica's lease owner name.
    owner: String,
    settings: OutboxSettings,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Rows handed over with [`Outbox::deliver_claimed`] whose attempt has not ended.
    in_flight: tokio::sync::watch::Sender<usize>,
}

/// What one attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The channel took it.
    Delivered,
    /// It failed and will be tried again.
    Retrying,
    /// It failed for good.
    Failed,
    /// Another replica took the row over meanwhile (its lease ran out); nothing recorded.
    LostLease,
}

impl Outbox {
    /// A worker delivering `store`'s rows through `delivery`, leasing them as `owner`.
    pub fn new(
        store: OutboxStore,
        installations: InstallationStore,
        delivery: Delivery,
        clock: Arc<dyn Clock>,
        owner: String,
        settings: OutboxSettings,
        metrics: Arc<Metrics>,
    ) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                store,
                installations,
                delivery,
                clock,
                owner,
                settings,
                wake: Notify::new(),
                metrics,
                in_flight: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The store it drains.
    pub fn store(&self) -> &OutboxStore {
        &self.inner.store
    }

    /// Tells the worker that rows are due now (it would find them at its next poll anyway).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The lease a row enqueued by this replica can be claimed with in its own transaction
    /// (owner, lease in ms), to be handed to [`Outbox::deliver_claimed`].
    pub fn lease(&self) -> (&str, i64) {
        let lease_ms = i64::try_from(self.inner.settings.lease.as_millis()).unwrap_or(i64::MAX);
        (&self.inner.owner, lease_ms)
    }

    /// Delivers a row already claimed with [`Outbox::lease`], on a task of its own: no claim
    /// statement, no wait for a poll. Should this replica die first, the lease runs out and any
    /// replica delivers it.
    pub fn deliver_claimed(&self, row: OutboxRow) {
        let span = row_span(&row);
        let this = self.clone();
        this.inner.in_flight.send_modify(|n| *n += 1);
        tokio::spawn(
            async move {
                let _counted = InFlight(&this.inner.in_flight);
                this.attempt(row).await
            }
            .instrument(span),
        );
    }

    /// Waits until every row handed over with [`Outbox::deliver_claimed`] had its attempt.
    pub async fn wait_idle(&self) {
        let mut idle = self.inner.in_flight.subscribe();
        let _ = idle.wait_for(|n| *n == 0).await;
    }

    /// Enqueues a notice for the session of `target` and wakes the worker. A failure to store it
    /// is logged: the notice is lost, the message that caused it is not.
    pub async fn enqueue_notice(
        &self,
        installation_id: &str,
        target: &types::SessionTarget,
        notice: &Notice,
    ) {
        let content = OutboxContent::Notice {
            notice: serde_json::to_value(notice).unwrap_or_default(),
        };
        // A notice outside any session (a pairing code DM) is ordered on its own.
        let session_id = if target.session_id.is_empty() {
            sessionless_key()
        } else {
            target.session_id.clone()
        };
        let row = NewOutboxRow {
            installation_id,
            session_id: &session_id,
            run_id: None,
            content: &content,
            target: &outbox_target(target),
        };
        match self
            .inner
            .store
            .enqueue(&row, self.inner.clock.now_ms())
            .await
        {
            Ok(_) => self.wake(),
            Err(e) => {
                tracing::error!(installation = installation_id, session = %target.session_id, "notice not enqueued: {e}")
            }
        }
    }

    /// Runs the worker until `shutdown` resolves; deliveries in progress then finish first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let claimed = match self.drain_once().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!("claiming outbox rows failed: {e}");
                    0
                }
            };
            if claimed >= self.inner.settings.batch as usize {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.settings.poll_interval) => {}
            }
        }
    }

    /// Claims one batch of due rows and delivers them (concurrently: at most one row per
    /// session is due at a time). Returns how many were claimed.
    pub async fn drain_once(&self) -> Result<usize, crate::store::StoreError> {
        let inner = &self.inner;
        let lease_ms = i64::try_from(inner.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let rows = inner
            .store
            .claim_due(
                &inner.owner,
                inner.clock.now_ms(),
                lease_ms,
                i64::from(inner.settings.batch),
            )
            .await?;
        let claimed = rows.len();
        let mut tasks = tokio::task::JoinSet::new();
        for row in rows {
            let this = self.clone();
            let span = row_span(&row);
            tasks.spawn(async move { this.attempt(row).await }.instrument(span));
        }
        while tasks.join_next().await.is_some() {}
        Ok(claimed)
    }

    /// One attempt at a claimed row, recorded. The lease is renewed while the attempt runs
    /// (a paced send or a wait for another replica's stream can outlast it); should another
    /// replica have taken the row over before the send is done, the attempt stops there.
    pub async fn attempt(&self, row: OutboxRow) -> Attempt {
        let sent = AtomicBool::new(false);
        tokio::select! {
            biased;
            attempt = self.attempt_held(&row, &sent) => attempt,
            () = self.keep_lease(row.id, &sent) => {
                tracing::warn!("another replica took the outbox row over before it was sent; this attempt stops");
                Attempt::LostLease
            }
        }
    }

    /// Renews the lease on row `id` every third of the lease. Returns when the lease is lost
    /// before the send is over (`sent` unset); otherwise runs until dropped. A renewal that
    /// fails (the database) is retried at the next tick: recording the attempt checks the
    /// lease again anyway.
    async fn keep_lease(&self, id: i64, sent: &AtomicBool) {
        let inner = &self.inner;
        let lease_ms = i64::try_from(inner.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let every = (inner.settings.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match inner
                .store
                .renew_lease(id, &inner.owner, inner.clock.now_ms(), lease_ms)
                .await
            {
                Ok(true) => {}
                Ok(false) if !sent.load(Ordering::Acquire) => return,
                // The row was recorded meanwhile (delivered, rescheduled): nothing to keep.
                Ok(false) => std::future::pending::<()>().await,
                Err(e) => tracing::warn!("renewing the outbox row's lease failed: {e}"),
            }
        }
    }

    async fn attempt_held(&self, row: &OutboxRow, sent_flag: &AtomicBool) -> Attempt {
        let row = row.clone();
        let inner = &self.inner;
        let installation = match inner.installations.get(&row.installation_id).await {
            Ok(Some(installation)) => installation,
            Ok(None) => return self.give_up(&row, "the installation is gone").await,
            Err(e) => {
                return self
                    .retry(&row, &format!("reading the installation: {e}"), None)
                    .await;
            }
        };
        let target = session_target(&row.session_id, &row.target);
        let content = match &row.content {
            OutboxContent::Reply { text } => Content::Reply(text.clone()),
            OutboxContent::RunError { text, reference } => Content::Notice(Notice {
                reference: reference.clone(),
                // A row stored before notices had kinds carries its finished text.
                detail: (!text.is_empty()).then(|| text.clone()),
                ..Notice::new(NoticeKind::RunError)
            }),
            OutboxContent::Notice { notice } => match serde_json::from_value(notice.clone()) {
                Ok(notice) => Content::Notice(notice),
                Err(_) => return self.give_up(&row, "unreadable notice").await,
            },
        };
        let ends_run = !matches!(row.content, OutboxContent::Notice { .. });
        let sent = match content {
            // A failed run's words close its stream when this host streams it.
            Content::Notice(notice) if notice.kind == NoticeKind::RunError => {
                inner
                    .delivery
                    .send_run_error(
                        &installation,
                        &target,
                        row.run_id.as_deref(),
                        notice,
                        &row.idempotency_key,
                    )
                    .await
            }
            Content::Reply(text) => {
                inner
                    .delivery
                    .send_reply(
                        &installation,
                        &target,
                        row.run_id.as_deref(),
                        text,
                        &row.idempotency_key,
                    )
                    .await
            }
            content => {
                inner
                    .delivery
                    .send_once(&installation, &target, content, &row.idempotency_key)
                    .await
            }
        };
        sent_flag.store(true, Ordering::Release);
        match sent {
            Ok(sent) => {
                let marked = inner
                    .store
                    .mark_delivered(row.id, &inner.owner, sent.as_deref(), inner.clock.now_ms())
                    .await;
                if ends_run {
                    inner.delivery.typing_off(&installation, &target).await;
                }
                match marked {
                    Ok(true) => {
                        inner.metrics.outbox("delivered");
                        let waited = inner.clock.now_ms().saturating_sub(row.created_at_ms);
                        inner
                            .metrics
                            .delivery_latency(Duration::from_millis(waited.max(0) as u64));
                        Attempt::Delivered
                    }
                    Ok(false) => Attempt::LostLease,
                    Err(e) => {
                        // Delivered, but not recorded: the lease runs out and the row is sent
                        // again with the same idempotency key.
                        tracing::error!("delivered, but marking the outbox row failed: {e}");
                        inner.metrics.outbox("delivered");
                        Attempt::Delivered
                    }
                }
            }
            Err(
                failure @ DeliveryFailure::Refused {
                    retryable: false, ..
                },
            )
            | Err(failure @ DeliveryFailure::NoPlugin { .. }) => {
                self.give_up(&row, &failure.to_string()).await
            }
            Err(failure) => {
                self.retry(&row, &failure.to_string(), failure.retry_after())
                    .await
            }
        }
    }

    /// Reschedules `row` after the backoff of its attempt count, or after the channel's
    /// `retry_after` when that is longer (capped at the longest backoff).
    async fn retry(&self, row: &OutboxRow, error: &str, retry_after: Option<Duration>) -> Attempt {
        let inner = &self.inner;
        if row.attempts >= i64::from(inner.settings.attempts) {
            let error = format!(
                "{error} (gave up after {} attempts; retry it with POST /api/outbox/{}/retry)",
                row.attempts, row.id
            );
            return self.give_up(row, &error).await;
        }
        let wait = inner.settings.wait(row.attempts, retry_after);
        let next = inner
            .clock
            .now_ms()
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        tracing::warn!(
            attempts = row.attempts,
            retry_in_ms = wait.as_millis() as u64,
            "delivery failed; retrying: {error}"
        );
        match inner
            .store
            .reschedule(row.id, &inner.owner, next, error)
            .await
        {
            Ok(true) => {
                inner.metrics.outbox("retried");
                Attempt::Retrying
            }
            Ok(false) => Attempt::LostLease,
            Err(e) => {
                tracing::error!("rescheduling the outbox row failed (its lease runs out): {e}");
                Attempt::Retrying
            }
        }
    }

    async fn give_up(&self, row: &OutboxRow, error: &str) -> Attempt {
        let inner = &self.inner;
        tracing::error!(attempts = row.attempts, "delivery failed for good: {error}");
        match inner
            .store
            .mark_failed(row.id, &inner.owner, error, inner.clock.now_ms())
            .await
        {
            Ok(true) => {
                inner.metrics.outbox("failed");
                Attempt::Failed
            }
            Ok(false) => Attempt::LostLease,
            Err(e) => {
                tracing::error!("marking the outbox row failed (its lease runs out): {e}");
                Attempt::Failed
            }
        }
    }
}

/// The span of one row's attempt: the ids every log line of it carries.
fn row_span(row: &OutboxRow) -> tracing::Span {
    tracing::info_span!(
        "outbox",
        row = row.id,
        installation = %row.installation_id,
        session = %row.session_id,
        kind = row.content.kind(),
    )
}

/// Counts one handed-over row out of flight when dropped (also if its attempt panics).
struct InFlight<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The stored form of a session target.
pub fn outbox_target(target: &types::SessionTarget) -> OutboxTarget {
    OutboxTarget {
        chat_id: target.chat_id.clone(),
        chat_type: super::chat_kind_name(target.chat_kind).into(),
        thread_id: target.thread_id.clone(),
        reply_to: target.reply_to.clone(),
        in_thread: target.in_thread,
    }
}

/// Prefix of the ordering key of a row that belongs to no session.
const SESSIONLESS: &str = "sessionless:";

/// A fresh ordering key for an outbox row that belongs to no session (a private notice): it
/// waits for no other row.
pub fn sessionless_key() -> String {
    format!("{SESSIONLESS}{}", uuid::Uuid::new_v4().simple())
}

/// The session target of a stored row.
pub fn session_target(session_id: &str, target: &OutboxTarget) -> types::SessionTarget {
    let session_id = if session_id.starts_with(SESSIONLESS) {
        ""
    } else {
        session_id
    };
    types::SessionTarget {
        session_id: session_id.to_string(),
        chat_id: target.chat_id.clone(),
        chat_kind: super::chat_kind(&target.chat_type),
        thread_id: target.thread_id.clone(),
        reply_to: target.reply_to.clone(),
        in_thread: target.in_thread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notice_survives_the_outbox_json() {
        for kind in NoticeKind::ALL {
            let notice = Notice {
                link: Some("http://h/bind?token=t".into()),
                recipient: Some("u1".into()),
                ..Notice::new(kind).with_detail("d")
            };
            let json = serde_json::to_value(&notice).unwrap();
            let back: Notice = serde_json::from_value(json).expect("readable");
            assert_eq!(back, notice);
        }
        assert!(serde_json::from_value::<Notice>(json!({"kind": "nope"})).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = OutboxSettings {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..OutboxSettings::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| settings.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn a_channel_retry_after_lengthens_the_wait_up_to_the_cap() {
        let settings = OutboxSettings {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..OutboxSettings::default()
        };
        let secs = |attempts, asked: Option<u64>| {
            settings
                .wait(attempts, asked.map(Duration::from_secs))
                .as_secs()
        };
        assert_eq!(secs(1, None), 1);
        assert_eq!(secs(1, Some(3)), 3, "a longer Retry-After wins");
        assert_eq!(
            secs(3, Some(2)),
            4,
            "a shorter one does not shorten the backoff"
        );
        assert_eq!(secs(1, Some(60)), 10, "capped at the longest backoff");
    }
}
