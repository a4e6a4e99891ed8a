//! Connection ownership (SPEC §3): which installations this process holds a
//! long connection for.
//!
//! Every `poll_interval` the supervisor lists the installations and wants a connection for each
//! active one whose transport ([`transport_of`]) is a WebSocket or a long poll (webhook
//! installations are left alone) and whose channel has a plugin. For each it starts an owner task that first takes the
//! installation's lease — a fenced token in the installation row, compare-and-set on both
//! backends (on SQLite only this process competes, through the same code path) — and only then
//! runs the [`Connector`] (or the [`Poller`]). The owner renews the lease every `renew_interval` (±10 % jitter); when
//! a renewal says the token is gone, or no renewal succeeded before `ttl − safety_margin` since
//! the last good one, the connection is closed — before the lease can expire and another replica
//! could take it. A contended lease ends the owner; the next sweep tries again.
//!
//! Revoked or deleted installations are stopped at the next sweep; a changed fingerprint (channel,
//! routing key, config, secrets) stops the old connection and starts a new one. On shutdown every
//! connection is stopped (an event in progress is finished and ACKed), leases are released, and
//! [`Supervisor::spawn`]'s task ends — the caller flushes debounce windows after that.
//!
//! Owns owner tasks and lease timing. Must not hold SQL (that is `store`) or touch sockets (that
//! is the connector).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::Clock;
use crate::ingest::connector::backoff::BackoffPolicy;
use crate::ingest::connector::{Connector, ConnectorSettings};
use crate::ingest::poller::Poller;
use crate::ingest::service::Ingest;
use crate::runtime::Runtime;
use crate::runtime::manifest::Transports;
use crate::store::{Installation, InstallationStore};

/// The installation config key that selects the transport among those the plugin declares:
/// `webhook`, `websocket` or `long-poll`.
pub const CONNECTION_CONFIG_KEY: &str = "connection";

/// How an installation receives its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The channel calls the host's hooks URL; nothing to keep open.
    Webhook,
    /// The host holds a WebSocket.
    WebSocket,
    /// The host long-polls.
    LongPoll,
}

/// The transport of `installation` under a plugin declaring `declared`: config `connection`
/// when it names a declared transport, else the plugin's only connected transport when it has
/// no webhooks, else webhooks.
pub fn transport_of(installation: &Installation, declared: Transports) -> Transport {
    let chosen = installation
        .config
        .get(CONNECTION_CONFIG_KEY)
        .map(|value| value.to_ascii_lowercase());
    match chosen.as_deref() {
        Some("websocket" | "socket") if declared.websocket => Transport::WebSocket,
        Some("long-poll" | "long_poll" | "longpoll" | "poll") if declared.long_poll => {
            Transport::LongPoll
        }
        Some("webhook") if declared.webhook => Transport::Webhook,
        _ if declared.webhook => Transport::Webhook,
        _ if declared.long_poll => Transport::LongPoll,
        _ => Transport::WebSocket,
    }
}

/// Tunables of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// How often the installations are listed.
    pub poll_interval: Duration,
    /// Lease lifetime written with every acquire or renewal.
    pub lease_ttl: Duration,
    /// Renewal period (jittered ±10 %).
    pub renew_interval: Duration,
    /// The connection closes this long before the lease could expire.
    pub safety_margin: Duration,
    /// Wait before retrying a failed renewal (while the lease is still confirmed).
    pub error_retry: Duration,
    /// How long a restart waits for the old connection to close and release its lease.
    pub restart_wait: Duration,
    /// The connectors' settings.
    pub connector: ConnectorSettings,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            poll_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(60),
            renew_interval: Duration::from_secs(20),
            safety_margin: Duration::from_secs(5),
            error_retry: Duration::from_secs(2),
            restart_wait: Duration::from_secs(10),
            connector: ConnectorSettings::default(),
        }
    }
}

impl SupervisorSettings {
    /// The settings a `[connections]` config section asks for.
    pub fn from_config(config: &crate::config::ConnectionsConfig) -> SupervisorSettings {
        let ms = Duration::from_millis;
        let defaults = SupervisorSettings::default();
        SupervisorSettings {
            poll_interval: ms(config.poll_interval_ms),
            lease_ttl: ms(config.lease_ttl_ms),
            renew_interval: ms(config.lease_renew_interval_ms),
            safety_margin: ms(config.lease_safety_margin_ms),
            error_retry: defaults.error_retry.min(ms(config.lease_renew_interval_ms)),
            restart_wait: defaults.restart_wait,
            connector: ConnectorSettings {
                backoff: BackoffPolicy {
                    initial: ms(config.backoff_initial_ms),
                    max: ms(config.backoff_max_ms),
                    reset_after: ms(config.backoff_reset_after_ms),
                },
                default_ping_interval: ms(config.ping_interval_ms),
                write_timeout: ms(config.write_timeout_ms),
                handshake_timeout: ms(config.handshake_timeout_ms),
                ..ConnectorSettings::default()
            },
        }
    }

    /// Checks `renew_interval < lease_ttl` and `0 < safety_margin < lease_ttl − renew_interval`
    /// (otherwise a healthy owner could lose its lease between renewals).
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_interval.is_zero() || self.renew_interval >= self.lease_ttl {
            return Err(format!(
                "lease renew interval {:?} must be positive and shorter than the lease TTL {:?}",
                self.renew_interval, self.lease_ttl
            ));
        }
        if self.safety_margin.is_zero()
            || self.safety_margin >= self.lease_ttl - self.renew_interval
        {
            return Err(format!(
                "lease safety margin {:?} must be positive and shorter than TTL − renew interval ({:?})",
                self.safety_margin,
                self.lease_ttl - self.renew_interval
            ));
        }
        if self.poll_interval.is_zero() {
            return Err("the installation poll interval must be positive".into());
        }
        Ok(())
    }
}

/// Starts, stops and restarts long connections for the installations that use them.
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    installations: InstallationStore,
    runtime: Arc<Runtime>,
    ingest: Arc<Ingest>,
    clock: Arc<dyn Clock>,
    settings: SupervisorSettings,
    node_id: String,
    /// Unreadable installations at the last sweep (warned about when the number changes).
    unreadable: std::sync::Mutex<usize>,
}

/// One owner task.
struct Owned {
    fingerprint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// A supervisor over `installations`; `clock` stamps lease expiries.
    pub fn new(
        installations: InstallationStore,
        runtime: Arc<Runtime>,
        ingest: Arc<Ingest>,
        clock: Arc<dyn Clock>,
        settings: SupervisorSettings,
    ) -> Supervisor {
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        Supervisor {
            inner: Arc::new(Inner {
                installations,
                runtime,
                ingest,
                clock,
                settings,
                node_id,
                unreadable: std::sync::Mutex::new(0),
            }),
        }
    }

    /// This process's node id (the prefix of its lease tokens).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Runs until `stop` fires; then stops every connection (finishing and ACKing events in
    /// progress), releases the leases and returns.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<()> {
        let inner = self.inner;
        let span = tracing::info_span!("supervisor", node = %inner.node_id);
        tokio::spawn(
            async move {
                let mut owned: HashMap<String, Owned> = HashMap::new();
                let mut generation: u64 = 0;
                tracing::info!("long-connection supervisor started");
                loop {
                    inner.sweep(&mut owned, &mut generation).await;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(inner.settings.poll_interval) => {}
                    }
                }
                tracing::info!(connections = owned.len(), "stopping long connections");
                for owner in owned.values() {
                    owner.stop.cancel();
                }
                for (_, owner) in owned.drain() {
                    let _ = owner.task.await;
                }
                tracing::info!("long connections stopped");
            }
            .instrument(span),
        )
    }
}

/// sha256 of what a connection depends on: channel, routing key, config and secrets.
fn fingerprint(installation: &Installation) -> String {
    let mut hash = Sha256::new();
    for part in [&installation.channel, &installation.routing_key] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for (key, value) in &installation.config {
        hash.update(key.as_bytes());
        hash.update([1]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    for (key, value) in &installation.secrets {
        hash.update(key.as_bytes());
        hash.update([2]);
        hash.update(value.expose().as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

impl Inner {
    async fn sweep(self: &Arc<Self>, owned: &mut HashMap<String, Owned>, generation: &mut u64) {
        // Owners that ended (lease held elsewhere) are retried below.
        owned.retain(|_, owner| !owner.task.is_finished());
        let rows = match self.installations.list_each().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(
                    "listing installations failed; keeping the current connections: {e}"
                );
                return;
            }
        };
        let mut wanted: HashMap<String, (Installation, String)> = HashMap::new();
        let mut unreadable = 0usize;
        for row in rows {
            // One unreadable row (wrong secrets key, corrupt config) must not block the others.
            let installation = match row {
                Ok(installation) => installation,
                Err(e) => {
                    unreadable += 1;
                    tracing::debug!("installation skipped: {e}");
                    continue;
                }
            };
            if !installation.is_active() {
                continue;
            }
            let Some(plugin) = self.runtime.plugin_for_channel(&installation.channel) else {
                if installation.config.contains_key(CONNECTION_CONFIG_KEY) {
                    tracing::warn!(installation = %installation.id, channel = %installation.channel, "no plugin serves this channel; no long connection");
                }
                continue;
            };
            if transport_of(&installation, plugin.manifest().transports) == Transport::Webhook {
                continue;
            }
            let print = fingerprint(&installation);
            wanted.insert(installation.id.clone(), (installation, print));
        }
        let changed = {
            let mut last = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *last, unreadable) != unreadable
        };
        if changed && unreadable > 0 {
            tracing::warn!(
                unreadable,
                "installations whose secrets or config cannot be read get no long connection; check the secrets key"
            );
        }
        let mut stopping = Vec::new();
        let ids: Vec<String> = owned.keys().cloned().collect();
        for id in ids {
            let why = match wanted.get(&id) {
                Some((_, print)) if *print == owned[&id].fingerprint => continue,
                Some(_) => "its credentials or config changed: restarting",
                None => "it was revoked, deleted or switched to webhooks",
            };
            tracing::info!(installation = %id, "stopping the long connection: {why}");
            if let Some(owner) = owned.remove(&id) {
                owner.stop.cancel();
                stopping.push(owner.task);
            }
        }
        // A restart waits (bounded) for the old owner to close and release its lease.
        if !stopping.is_empty()
            && tokio::time::timeout(
                self.settings.restart_wait,
                futures_util::future::join_all(stopping),
            )
            .await
            .is_err()
        {
            tracing::warn!(
                wait_ms = self.settings.restart_wait.as_millis() as u64,
                "stopped connections did not close in time; their leases will expire"
            );
        }
        for (id, (installation, print)) in wanted {
            if owned.contains_key(&id) {
                continue;
            }
            *generation += 1;
            let token = format!("{}-g{}", self.node_id, generation);
            let stop = CancellationToken::new();
            let span = tracing::info_span!("owner", installation = %id, lease_gen = *generation);
            let task = tokio::spawn(
                self.clone()
                    .own(installation, token, stop.clone())
                    .instrument(span),
            );
            owned.insert(
                id,
                Owned {
                    fingerprint: print,
                    stop,
                    task,
                },
            );
        }
    }

    /// Takes the lease, runs the connector while renewing it, and releases it at the end.
    async fn own(
        self: Arc<Self>,
        installation: Installation,
        token: String,
        stop: CancellationToken,
    ) {
        let id = installation.id.clone();
        let ttl = self.settings.lease_ttl;
        let ttl_ms = ttl.as_millis() as i64;
        let started = Instant::now();
        match self
            .installations
            .acquire_lease(&id, &token, self.clock.now_ms(), ttl_ms)
            .await
        {
            Ok(true) => tracing::info!("lease acquired; connecting"),
            Ok(false) => {
                tracing::debug!("the lease is held by another owner; not connecting");
                return;
            }
            Err(e) => {
                tracing::warn!("taking the lease failed; retrying at the next sweep: {e}");
                return;
            }
        }
        let Some(plugin) = self.runtime.plugin_for_channel(&installation.channel) else {
            let _ = self.installations.release_lease(&id, &token).await;
            return;
        };
        let mut confirmed_until = started + ttl - self.settings.safety_margin;
        let connection_stop = stop.child_token();
        let mut connection = match transport_of(&installation, plugin.manifest().transports) {
            Transport::LongPoll => {
                let poller = Poller::new(
                    plugin,
                    installation,
                    self.ingest.clone(),
                    self.settings.connector.backoff,
                );
                tokio::spawn(poller.run(connection_stop.clone()).in_current_span())
            }
            _ => {
                let connector = Connector::new(
                    plugin,
                    installation,
                    self.ingest.clone(),
                    self.settings.connector.clone(),
                );
                tokio::spawn(connector.run(connection_stop.clone()).in_current_span())
            }
        };
        let mut wait = jittered(self.settings.renew_interval);
        loop {
            let wake = (Instant::now() + wait).min(confirmed_until);
            tokio::select! {
                // Stopping ends the connector too (child token): report it as the stop it is.
                biased;
                _ = stop.cancelled() => break,
                _ = &mut connection => {
                    if !stop.is_cancelled() {
                        tracing::warn!("the connector ended on its own");
                    }
                    break;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= confirmed_until {
                tracing::error!(
                    "the lease could not be renewed before it might expire; closing the connection"
                );
                break;
            }
            let attempt = Instant::now();
            match self
                .installations
                .renew_lease(&id, &token, self.clock.now_ms(), ttl_ms)
                .await
            {
                Ok(true) => {
                    confirmed_until = attempt + ttl - self.settings.safety_margin;
                    wait = jittered(self.settings.renew_interval);
                }
                Ok(false) => {
                    tracing::warn!(
                        "the lease was taken over or the installation revoked; closing the connection"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!("renewing the lease failed; retrying: {e}");
                    wait = self.settings.error_retry;
                }
            }
        }
        connection_stop.cancel();
        if !connection.is_finished() {
            let _ = connection.await;
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            self.installations.release_lease(&id, &token),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("connection closed; lease released"),
            Ok(Err(e)) => tracing::warn!("releasing the lease failed (it expires by itself): {e}"),
            Err(_) => tracing::warn!("releasing the lease timed out (it expires by itself)"),
        }
    }
}

/// `every` jittered uniformly by ±10 %.
fn jittered(every: Duration) -> Duration {
    use rand::Rng;
    every.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}
