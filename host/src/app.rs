//! The composition root: builds the host from a [`Config`] — database and migrations, the
//! secrets key, the plugin runtime, dispatcher, debouncer, the retention task, the attachment
//! download worker and HTTP router —
//! and runs it with a graceful shutdown (stop inbound → flush every pending window once → exit).
//!
//! Owns wiring only; every behaviour lives in the modules it wires.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::agents::{AgentPresence, AgentRegistry, AgentState, CancellationToken, agent_state};
use crate::api::{self, AppState};
use crate::auth::TokenDigest;
use crate::batch::{Debouncer, FlushHandler, TokioTimers};
use crate::blobs::{BlobSettings, BlobWorker, Blobs};
use crate::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use crate::config::Config;
use crate::delivery::{ChannelReplies, Delivery, Outbox, OutboxSettings, Streamer};
use crate::dispatch::Dispatcher;
use crate::domain::notice::{Notice, NoticeKind, NoticeTexts};
use crate::domain::{Clock, KvBackend, SystemClock};
use crate::ingest::service::{EnrichLimits, Ingest};
use crate::ingest::supervisor::{Supervisor, SupervisorSettings};
use crate::metrics::Metrics;
use crate::retention::{Retention, RetentionSettings};
use crate::runs::executor::{Executor, ExecutorSettings};
use crate::runs::relay::Relay;
use crate::runs::{Compactor, EventHub, RunService, RunSettings};
use crate::runtime::{Runtime, RuntimeSettings, types};
use crate::store::{Backend, Database, FlushBatch, InstallationStore, SecretCipher};

/// How long a graceful shutdown waits for built-in agent runs in flight.
const SHUTDOWN_RUN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A built host, ready to serve.
pub struct App {
    /// Shared handler state.
    pub state: AppState,
    /// Debounce timers (flushed on shutdown).
    pub debouncer: Debouncer,
    /// The cross-replica event relay (PostgreSQL only; stopped on shutdown).
    relay: Option<Relay>,
    /// Runs the built-in agents (`echo`, `openai`).
    executor: Executor,
    /// Long connections (none when `[connections] enabled = false`).
    supervisor: Option<Supervisor>,
    /// The pruning task (none when `[retention] enabled = false`).
    retention: Option<Retention>,
    /// Request and connection limits of `[server]`.
    http: api::HttpLimits,
    /// The delivery worker of this replica.
    outbox: Outbox,
    /// How often the debounce sweep runs (`[runs] window_sweep_ms`).
    window_sweep: std::time::Duration,
    /// The attachment download worker of this replica.
    blob_worker: BlobWorker,
    /// Approvals: the expiry sweep runs while serving.
    approvals: crate::approvals::Approvals,
    /// What updates expired approval cards.
    delivery: Delivery,
}

/// Why start-up found no secrets key and generated none (the key is generated only for a fresh
/// SQLite database: a new key cannot open secrets an earlier key sealed, and PostgreSQL replicas
/// would each seal with their own).
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    /// No key is configured and the key file does not exist, but the database holds secrets
    /// sealed with some key.
    #[error(
        "no secrets key, and {installations} installation(s) in the database hold secrets sealed \
         with one: refusing to generate a new key, which could not open them. The key is looked \
         for in `[secrets] key` (or SWITCHBOARD_SECRETS__KEY), then in the file `[secrets] \
         key_file` (or SWITCHBOARD_SECRETS__KEY_FILE) = {key_file}, read here as {resolved}, \
         which does not exist. Provide the key the secrets were stored with: start from the \
         directory that holds {key_file}, point key_file at that file, or set the key itself."
    )]
    MissingForSealedSecrets {
        /// Installations whose secrets are sealed.
        installations: i64,
        /// `[secrets] key_file` as configured.
        key_file: String,
        /// The key file as resolved against the working directory.
        resolved: String,
    },
    /// PostgreSQL, no key configured and no key file: every replica must share one key, so
    /// none is generated.
    #[error(
        "no secrets key: on PostgreSQL the key must be given explicitly (every replica needs \
         the same one), so none is generated. The key is looked for in `[secrets] key` (or \
         SWITCHBOARD_SECRETS__KEY), then in the file `[secrets] key_file` (or \
         SWITCHBOARD_SECRETS__KEY_FILE) = {key_file}, read here as {resolved}, which does not \
         exist. Create a key with `switchboard keygen`, then set SWITCHBOARD_SECRETS__KEY to it \
         or write it to a file (mode 600) that key_file names."
    )]
    PostgresNeedsKey {
        /// `[secrets] key_file` as configured.
        key_file: String,
        /// The key file as resolved against the working directory.
        resolved: String,
    },
}

/// The secrets key: `[secrets] key`, else the file `[secrets] key_file`. The file is created
/// with a fresh key only on SQLite and only while no installation holds sealed secrets;
/// otherwise a missing key is a [`SecretKeyError`] naming where it was looked for.
pub async fn load_secret_key(config: &Config, db: &Database) -> anyhow::Result<SecretCipher> {
    if let Some(key) = &config.secrets.key {
        return SecretCipher::from_key_str(key).context("secrets.key (SWITCHBOARD_SECRETS__KEY)");
    }
    let path = &config.secrets.key_file;
    if !path.exists() {
        let key_file = path.display().to_string();
        let resolved = std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        let sealed = db
            .installations_with_sealed_secrets()
            .await
            .context("counting the installations with sealed secrets")?;
        if sealed > 0 {
            return Err(SecretKeyError::MissingForSealedSecrets {
                installations: sealed,
                key_file,
                resolved,
            }
            .into());
        }
        if db.backend() == Backend::Postgres {
            return Err(SecretKeyError::PostgresNeedsKey { key_file, resolved }.into());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_private(path, &SecretCipher::generate_key_hex())
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::warn!(key_file = %resolved, "generated a new secrets key for this fresh SQLite database; back it up — installations' secrets cannot be read without it");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secrets key file {}", path.display()))?;
    SecretCipher::from_key_str(text.trim())
        .with_context(|| format!("secrets key file {}", path.display()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// Builds the plugin runtime from the config (bundled plugins plus the plugins directory); `kv`
/// (the host database's kv store) becomes the `kv` capability's backend.
pub fn build_runtime(
    config: &Config,
    kv: Option<crate::store::KvStore>,
) -> anyhow::Result<Runtime> {
    let overrides = config
        .plugins
        .base_urls
        .iter()
        .map(|(from, to)| {
            BaseUrlOverride::new(from, to)
                .with_context(|| format!("plugins.base_urls entry {from:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let services = Services::new(
        kv.map(|kv| Arc::new(kv) as Arc<dyn KvBackend>),
        OperatorPolicy {
            base_url_overrides: overrides,
        },
        ServiceLimits::default(),
    );
    let settings = RuntimeSettings {
        cache_dir: config.plugins.cache_dir.clone(),
        ..Default::default()
    };
    let runtime = Runtime::new(settings, services)?;
    runtime.load_bundled()?;
    if let Some(dir) = &config.plugins.dir {
        let results = runtime.load_dir(dir).map_err(|e| {
            anyhow::anyhow!(
                "{e} (check [plugins] dir, --plugins-dir or SWITCHBOARD_PLUGINS_DIR / \
                 SWITCHBOARD_PLUGINS__DIR)"
            )
        })?;
        for (path, result) in results {
            if let Err(e) = result {
                tracing::error!(path = %path.display(), "plugin not loaded: {e}");
            }
        }
    }
    Ok(runtime)
}

/// The flush action (SPEC §4): decide what the batch leads to, given the bound agent's state,
/// and carry it out — the run (the store already made it pending when it claimed the batch; an
/// archived agent takes that back), a notice and the typing indicator.
#[derive(Clone)]
struct PluginFlush {
    runtime: Arc<Runtime>,
    installations: InstallationStore,
    runs: RunService,
    agents: Arc<AgentRegistry>,
    presence: AgentPresence,
    delivery: Delivery,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
}

impl PluginFlush {
    async fn flush(self, batch: FlushBatch) -> anyhow::Result<()> {
        let installation = self
            .installations
            .get(&batch.installation_id)
            .await?
            .with_context(|| {
                format!(
                    "installation {} of session {} is gone",
                    batch.installation_id, batch.session_id
                )
            })?;
        let plugin = self
            .runtime
            .plugin_for_channel(&installation.channel)
            .with_context(|| format!("no plugin serves channel {}", installation.channel))?;
        let now = self.clock.now_ms();
        let agent = agent_state(&self.agents, &self.presence, &installation.agent, now).await;
        if agent == AgentState::Unknown {
            tracing::error!(installation = %installation.id, agent = %installation.agent, "the installation's agent is not configured: add [agents.{}] to the config; its runs wait as pending", installation.agent);
        }
        let target = types::SessionTarget {
            session_id: batch.session_id.clone(),
            chat_id: batch.chat_id.clone(),
            chat_kind: crate::delivery::chat_kind(&batch.chat_type),
            thread_id: batch.thread_id.clone(),
            reply_to: batch.reply_to_message_id.clone(),
            in_thread: batch.reply_thread_id.is_some(),
        };
        let actions = flush_actions(agent, &batch, now);
        tracing::info!(
            session = %batch.session_id,
            messages = batch.messages.len(),
            agent = agent_state_label(agent),
            starts_run = actions.starts_run,
            notice = actions.notice.map(NoticeKind::as_str),
            typing = actions.typing_on.is_some(),
            "flushed"
        );
        if !actions.starts_run && !batch.messages.is_empty() {
            self.runs
                .store()
                .settle_pending(&batch.session_id, self.clock.now_ms())
                .await?;
        }
        self.runs.publish_session_state(&batch.session_id).await;
        if let Some(kind) = actions.notice {
            self.outbox
                .enqueue_notice(&installation.id, &target, &Notice::new(kind))
                .await;
        }
        if let Some(message_id) = actions.typing_on
            && plugin.manifest().features.typing
        {
            self.delivery
                .typing_on(&installation, &target, &message_id)
                .await;
        }
        Ok(())
    }
}

/// A typing indicator is not shown on a message older than this (a redelivered backlog).
const TYPING_MAX_AGE_MS: i64 = 2 * 60_000;

/// What a flush leads to.
#[derive(Debug, PartialEq, Eq)]
struct FlushActions {
    /// The run stays pending (otherwise it is settled).
    starts_run: bool,
    /// A notice to send.
    notice: Option<NoticeKind>,
    /// The message to show the typing indicator on.
    typing_on: Option<String>,
}

/// The agent state as a log field (a plain word, not the enum's debug form).
fn agent_state_label(state: AgentState) -> &'static str {
    match state {
        AgentState::Online => "online",
        AgentState::Offline => "offline",
        AgentState::Archived => "archived",
        AgentState::Unknown => "unknown",
    }
}

/// The host's flush decision by the bound agent's state: an archived agent gets no run and a
/// notice; an offline one keeps the run pending and says so; an online one shows the typing
/// indicator on the newest message (unless it is an old redelivery).
fn flush_actions(agent: AgentState, batch: &FlushBatch, now_ms: i64) -> FlushActions {
    match agent {
        AgentState::Archived => FlushActions {
            starts_run: false,
            notice: Some(NoticeKind::AgentArchived),
            typing_on: None,
        },
        AgentState::Offline | AgentState::Unknown => FlushActions {
            starts_run: true,
            notice: Some(NoticeKind::AgentOffline),
            typing_on: None,
        },
        AgentState::Online => FlushActions {
            starts_run: true,
            notice: None,
            typing_on: batch
                .messages
                .last()
                .filter(|m| m.created_at_ms <= 0 || now_ms - m.created_at_ms <= TYPING_MAX_AGE_MS)
                .and_then(|m| m.channel_message_id.clone())
                .filter(|id| !id.is_empty()),
        },
    }
}

impl FlushHandler for PluginFlush {
    fn flush(&self, batch: FlushBatch) -> crate::batch::BoxFuture<anyhow::Result<()>> {
        Box::pin(self.clone().flush(batch))
    }
}

impl App {
    /// Connects, migrates and wires everything (no socket is opened yet).
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        config.validate()?;
        config
            .retention
            .validate()
            .context("invalid [retention] configuration")?;
        let db = Database::connect(&config.database.url).await?;
        db.migrate().await?;
        let cipher = load_secret_key(config, &db).await?;
        let installations = db.installations(cipher);
        let runtime = Arc::new(build_runtime(config, Some(db.kv()))?);
        let reloader = crate::runtime::reload::Reloader::new(
            runtime.clone(),
            crate::runtime::reload::ReloadSettings {
                dir: config.plugins.dir.clone(),
                lock_file: config.plugins.lock_file.clone(),
                strict: config.plugins.strict,
                probation: std::time::Duration::from_secs(config.plugins.probation_s),
                probation_failures: config.plugins.probation_failures,
            },
        );
        reloader.check_loaded()?;
        let agents = Arc::new(
            AgentRegistry::from_config(&config.agents).context("invalid [agents] configuration")?,
        );
        let presence = AgentPresence::new(db.workers(), clock.clone());
        let run_settings = RunSettings::with_stale_after(std::time::Duration::from_millis(
            config.runs.stale_after_ms,
        ));
        // The flush handler needs the run service and the run service the debouncer: the
        // handler's copy only settles and publishes states, which need no debouncer.
        let metrics = Arc::new(Metrics::new(runtime.clone()));
        let unarmed_runs = RunService::new(&db, clock.clone(), EventHub::default(), run_settings)
            .with_metrics(metrics.clone());
        let texts = Arc::new(
            NoticeTexts::new(config.notices.clone())
                .with_product_name(config.product_name.as_deref()),
        );
        let delivery = Delivery::new(runtime.clone(), texts.clone());
        config
            .delivery
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config
            .blobs
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // The directory is created with the first stored file.
        let blobs = Blobs::new(&db, BlobSettings::from_config(&config.blobs));
        let blob_worker = BlobWorker::new(
            blobs.clone(),
            runtime.clone(),
            installations.clone(),
            clock.clone(),
            format!("host-{}", uuid::Uuid::new_v4().simple()),
        );
        let outbox = Outbox::new(
            db.outbox(),
            installations.clone(),
            delivery.clone(),
            clock.clone(),
            format!("host-{}", uuid::Uuid::new_v4().simple()),
            OutboxSettings::from_config(&config.delivery),
            metrics.clone(),
        );
        let handler = Arc::new(PluginFlush {
            runtime: runtime.clone(),
            installations: installations.clone(),
            runs: unarmed_runs.clone(),
            agents: agents.clone(),
            presence: presence.clone(),
            delivery: delivery.clone(),
            outbox: outbox.clone(),
            clock: clock.clone(),
        });
        let debouncer = Debouncer::new(
            db.clone(),
            clock.clone(),
            Arc::new(TokioTimers::new(clock.clone())),
            handler,
        );
        let streamer = Streamer::new(delivery.clone(), installations.clone(), db.ingest());
        let stopped = streamer.clone();
        let recovered = streamer.clone();
        let runs = unarmed_runs
            .with_debouncer(debouncer.clone())
            .with_part_observer(Arc::new(move |session: &str, run: &str, text: &str| {
                streamer.part(session, run, text)
            }))
            .with_stop_observer(Arc::new(move |session: &str, run: &str| {
                stopped.stopped(session, run)
            }))
            .with_recovery_observer(Arc::new(move |session: &str, run: &str| {
                recovered.recovered(session, run)
            }));
        runs.recover_at_boot().await?;
        let recovered = debouncer.recover().await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "re-armed durable debounce windows from before the last stop"
            );
        }
        let public_url: Arc<str> = Arc::from(config.server.public_url.as_str());
        let compactor = Compactor::new(runs.clone(), agents.clone());
        let replies = Arc::new(
            ChannelReplies::new(
                delivery.clone(),
                outbox.clone(),
                installations.clone(),
                db.ingest(),
            )
            .with_runs(runs.clone())
            .with_compactor(compactor.clone()),
        );
        let dispatcher = Arc::new(Dispatcher::new(installations.clone(), clock.clone()));
        let enrich = EnrichLimits {
            budget: std::time::Duration::from_millis(config.ingest.enrich_budget_ms),
            ..Default::default()
        };
        let wake = outbox.clone();
        let approvals = crate::approvals::Approvals::new(&db, texts, clock.clone())
            .with_outbox_wake(Arc::new(move || wake.wake()));
        let ingest = Arc::new(
            Ingest::new(dispatcher, debouncer.clone(), enrich)
                .with_approvals(approvals.clone())
                .with_webhook_max_skew(std::time::Duration::from_secs(
                    config.ingest.webhook_max_skew_s,
                ))
                .with_observer(replies.clone())
                .with_metrics(metrics.clone()),
        );
        let relay = Relay::start(&db, runs.hub()).await?;
        let supervisor = if config.connections.enabled {
            let settings = SupervisorSettings::from_config(&config.connections);
            settings
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid [connections] configuration: {e}"))?;
            Some(Supervisor::new(
                installations.clone(),
                runtime.clone(),
                ingest.clone(),
                clock.clone(),
                settings,
            ))
        } else {
            None
        };
        let retention = config.retention.enabled.then(|| {
            Retention::new(
                &db,
                clock.clone(),
                RetentionSettings::from_config(&config.retention),
            )
            .with_metrics(metrics.clone())
            .with_blobs(&db, blobs.files().clone())
        });
        let workers = api::WorkerApi::new(runs.clone(), agents.clone(), presence)
            .with_observer(replies)
            .with_compactor(compactor.clone())
            .with_blobs(blobs.clone())
            .with_approvals(approvals.clone());
        let card_delivery = delivery.clone();
        let executor = Executor::new(
            runs.clone(),
            agents,
            delivery,
            installations.clone(),
            ExecutorSettings {
                // The period workers are told too: a tenth of the stale window, so a short
                // window (tests, an impatient operator) never recovers a live built-in run.
                heartbeat_interval: std::time::Duration::from_millis(
                    (config.runs.stale_after_ms / 10).max(100),
                ),
                ..ExecutorSettings::default()
            },
        )
        .with_compactor(compactor.clone())
        .with_outbox(outbox.clone())
        .with_blobs(blobs);
        let state = AppState {
            runtime,
            ingest,
            records: db.ingest(),
            runs,
            workers: Some(workers),
            compactor,
            db,
            installations,
            clock,
            console: Arc::new(crate::console::ConsoleAuth::new(
                config.server.admin_token.as_deref().map(TokenDigest::of),
                &config.server.public_url,
            )),
            admin_token: config.server.admin_token.as_deref().map(TokenDigest::of),
            metrics_token: config.server.metrics_token.as_deref().map(TokenDigest::of),
            public_url,
            agent_names: crate::agents::configured_agent_names(&config.agents).into(),
            outbox: outbox.clone(),
            metrics,
            event_coalescing: std::time::Duration::from_millis(config.server.event_coalesce_ms),
            reloader,
        };
        Ok(App {
            state,
            debouncer,
            relay,
            executor,
            supervisor,
            retention,
            http: api::HttpLimits::from_config(&config.server),
            outbox,
            window_sweep: std::time::Duration::from_millis(config.runs.window_sweep_ms),
            blob_worker,
            approvals,
            delivery: card_delivery,
        })
    }

    /// Builds with the system clock.
    pub async fn from_config(config: &Config) -> anyhow::Result<App> {
        App::build(config, Arc::new(SystemClock)).await
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone(), self.http)
    }

    /// Serves until `shutdown` resolves, then stops inbound, flushes every pending window once
    /// and closes the database.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(%address, plugins = self.state.runtime.plugins().len(), "serving");
        let drain = CancellationToken::new();
        let stop_runs = CancellationToken::new();
        let executor = self.executor.spawn(drain.clone(), stop_runs.clone());
        // Every replica flushes the cluster's windows that come due, whoever armed them.
        let stop_sweeper = CancellationToken::new();
        let sweeper = self
            .debouncer
            .spawn_sweeper(self.window_sweep, stop_sweeper.clone());
        // Replies stored before a crash (here or on a replica that died) go out now.
        let stop_outbox = CancellationToken::new();
        let outbox = tokio::spawn(
            self.outbox
                .clone()
                .run(stop_outbox.clone().cancelled_owned()),
        );
        // Attachments stored before a crash (here or on a replica that died) are downloaded now.
        let stop_blobs = CancellationToken::new();
        let blob_worker = tokio::spawn(self.blob_worker.clone().run(stop_blobs.clone()));
        let (stop_recovery, recovery_stopped) = tokio::sync::oneshot::channel::<()>();
        let recovery = self.state.runs.spawn_recovery_loop(async {
            let _ = recovery_stopped.await;
        });
        // Pruning runs while the host serves and stops (between two batches) on shutdown.
        let stop_retention = CancellationToken::new();
        let retention = self
            .retention
            .take()
            .map(|retention| retention.spawn(stop_retention.clone()));
        // Approvals past their deadline expire (and their cards lose their buttons) while serving.
        let stop_approvals = CancellationToken::new();
        let approvals = tokio::spawn(self.approvals.clone().run_expiry(
            self.delivery.clone(),
            self.state.installations.clone(),
            stop_approvals.clone().cancelled_owned(),
        ));
        // Long connections run alongside the HTTP server and stop with it (inbound first).
        let stop_connections = CancellationToken::new();
        let connections = self
            .supervisor
            .take()
            .map(|supervisor| supervisor.spawn(stop_connections.clone()));
        // Waiting worker claims end (204) and open event streams end as soon as shutdown
        // starts; the server then waits for the requests in flight.
        let workers = self.state.workers.clone();
        let hub = self.state.runs.hub().clone();
        let shutdown = async move {
            shutdown.await;
            hub.close_streams();
            if let Some(workers) = workers {
                workers.stop_long_polls();
            }
        };
        api::server::serve(listener, self.router(), self.http, shutdown)
            .await
            .context("HTTP server")?;
        if let Some(connections) = connections {
            stop_connections.cancel();
            let _ = connections.await;
        }
        let _ = stop_recovery.send(());
        let _ = recovery.await;
        stop_approvals.cancel();
        let _ = approvals.await;
        stop_retention.cancel();
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        stop_sweeper.cancel();
        let _ = sweeper.await;
        tracing::info!("inbound stopped; flushing this replica's debounce windows");
        let flushed = self.debouncer.flush_all().await;
        // The draining executor answers only those; other pending runs stay for the replicas
        // that keep running (or the next start).
        self.executor.drain_only(flushed);
        // Replies to what was flushed still go out; runs still going after the grace period
        // are cancelled and return to pending for the next start.
        drain.cancel();
        let mut executor = executor;
        if tokio::time::timeout(SHUTDOWN_RUN_GRACE, &mut executor)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = SHUTDOWN_RUN_GRACE.as_secs(),
                "runs still in flight after the grace period: cancelling them (they return to pending)"
            );
            stop_runs.cancel();
            let _ = executor.await;
        }
        // What the last runs enqueued is delivered before the worker stops (bounded: a row
        // that does not go out in time stays in the outbox for the next start or a replica).
        self.outbox.wake();
        let last = async {
            self.outbox.wait_idle().await;
            while let Ok(claimed) = self.outbox.drain_once().await {
                if claimed == 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_RUN_GRACE, last)
            .await
            .is_err()
        {
            tracing::warn!("outbox rows still due at shutdown stay queued for the next start");
        }
        stop_outbox.cancel();
        let _ = outbox.await;
        // A download in progress is abandoned; its lease lets the next start retry it.
        stop_blobs.cancel();
        let _ = blob_worker.await;
        if let Some(relay) = self.relay {
            relay.stop().await;
        }
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod flush_tests {
    use super::*;
    use crate::store::BatchMessage;

    fn batch(created_at_ms: &[i64]) -> FlushBatch {
        FlushBatch {
            session_id: "s".into(),
            generation: 1,
            installation_id: "i".into(),
            chat_id: "c".into(),
            chat_type: "direct".into(),
            thread_id: None,
            reply_to_message_id: None,
            reply_thread_id: None,
            context_revision: 1,
            messages: created_at_ms
                .iter()
                .enumerate()
                .map(|(n, at)| BatchMessage {
                    id: n as i64,
                    body: "hi".into(),
                    sender_id: Some("u".into()),
                    channel_message_id: Some(format!("m{n}")),
                    context_revision: 1,
                    created_at_ms: *at,
                })
                .collect(),
        }
    }

    #[test]
    fn the_agent_state_decides_run_notice_and_typing() {
        let now = 1_000_000;
        let fresh = batch(&[now - 5_000, now - 1_000]);
        assert_eq!(
            flush_actions(AgentState::Archived, &fresh, now),
            FlushActions {
                starts_run: false,
                notice: Some(NoticeKind::AgentArchived),
                typing_on: None
            }
        );
        for offline in [AgentState::Offline, AgentState::Unknown] {
            assert_eq!(
                flush_actions(offline, &fresh, now),
                FlushActions {
                    starts_run: true,
                    notice: Some(NoticeKind::AgentOffline),
                    typing_on: None
                }
            );
        }
        assert_eq!(
            flush_actions(AgentState::Online, &fresh, now),
            FlushActions {
                starts_run: true,
                notice: None,
                typing_on: Some("m1".into())
            }
        );
        // A redelivered backlog (the newest message older than two minutes) gets no indicator.
        let old = batch(&[now - TYPING_MAX_AGE_MS - 1]);
        assert_eq!(flush_actions(AgentState::Online, &old, now).typing_on, None);
    }
}
