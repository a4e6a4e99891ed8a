//! The composition root: builds the host from a [`Config`] — database and migrations, the
//! secrets key, the plugin runtime, dispatcher, debouncer and HTTP router — and runs it with a
//! graceful shutdown (stop inbound → flush every pending window once → exit).
//!
//! Owns wiring only; every behaviour lives in the modules it wires.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{self, AppState};
use crate::batch::{Debouncer, FlushHandler, TokioTimers};
use crate::capabilities::{
    BaseUrlOverride, Clock, OperatorPolicy, ServiceLimits, Services, SystemClock,
};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::ingest::service::{EnrichLimits, Ingest};
use crate::runs::relay::Relay;
use crate::runs::{EventHub, RunService, RunSettings};
use crate::runtime::{Runtime, RuntimeSettings, outbound, types};
use crate::store::{Database, FlushBatch, InstallationStore, SecretCipher};

/// A built host, ready to serve.
pub struct App {
    /// Shared handler state.
    pub state: AppState,
    /// Debounce timers (flushed on shutdown).
    pub debouncer: Debouncer,
    /// The cross-replica event relay (PostgreSQL only; stopped on shutdown).
    relay: Option<Relay>,
    max_body_bytes: usize,
}

/// Reads the configured key, or creates the key file on first start.
pub fn load_secret_key(config: &Config) -> anyhow::Result<SecretCipher> {
    if let Some(key) = &config.secrets.key {
        return SecretCipher::from_key_str(key).context("secrets.key (SWITCHBOARD_SECRETS__KEY)");
    }
    let path = &config.secrets.key_file;
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_private(path, &SecretCipher::generate_key_hex())
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::warn!(key_file = %path.display(), "generated a new secrets key; back it up — installations' secrets cannot be read without it");
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

/// Builds the plugin runtime from the config (bundled plugins plus the plugins directory).
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
        kv,
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
        for (path, result) in runtime.load_dir(dir)? {
            if let Err(e) = result {
                tracing::error!(path = %path.display(), "plugin not loaded: {e}");
            }
        }
    }
    Ok(runtime)
}

/// The flush action: ask the channel plugin what the batch leads to and carry it out. (The store
/// already marked the session's run pending when it claimed the batch; runs and delivery are
/// carried out by later stages.)
struct PluginFlush {
    runtime: Arc<Runtime>,
    installations: InstallationStore,
}

impl PluginFlush {
    async fn flush(
        runtime: Arc<Runtime>,
        installations: InstallationStore,
        batch: FlushBatch,
    ) -> anyhow::Result<()> {
        let installation = installations
            .get(&batch.installation_id)
            .await?
            .with_context(|| {
                format!(
                    "installation {} of session {} is gone",
                    batch.installation_id, batch.session_id
                )
            })?;
        let plugin = runtime
            .plugin_for_channel(&installation.channel)
            .with_context(|| format!("no plugin serves channel {}", installation.channel))?;
        let chat_type = if batch.chat_type == "group" {
            types::ChatType::Group
        } else {
            types::ChatType::Direct
        };
        let request = outbound::FlushBatch {
            target: types::SessionTarget {
                session_id: batch.session_id.clone(),
                chat_id: batch.chat_id.clone(),
                chat_type,
                thread_id: batch.thread_id.clone(),
                reply_to: batch.reply_to_message_id.clone(),
                in_thread: batch.reply_thread_id.is_some(),
            },
            messages: batch
                .messages
                .iter()
                .map(|m| outbound::BatchMessage {
                    message_id: m.channel_message_id.clone().unwrap_or_default(),
                    sender_open_id: m.sender_id.clone().unwrap_or_default(),
                    body: m.body.clone(),
                    create_time_ms: m.created_at_ms,
                })
                .collect(),
            agent: outbound::AgentState::Online,
        };
        let cx = Arc::new(installation.context());
        match plugin.flush(&cx, &request).await? {
            Ok(actions) => {
                tracing::info!(session = %batch.session_id, messages = batch.messages.len(), ?actions, "flushed")
            }
            Err(e) => {
                tracing::warn!(session = %batch.session_id, "plugin refused the flush: {e:?}")
            }
        }
        Ok(())
    }
}

impl FlushHandler for PluginFlush {
    fn flush(&self, batch: FlushBatch) -> crate::batch::BoxFuture<anyhow::Result<()>> {
        Box::pin(PluginFlush::flush(
            self.runtime.clone(),
            self.installations.clone(),
            batch,
        ))
    }
}

impl App {
    /// Connects, migrates and wires everything (no socket is opened yet).
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        let db = Database::connect(&config.database.url).await?;
        db.migrate().await?;
        let cipher = load_secret_key(config)?;
        let installations = db.installations(cipher);
        let runtime = Arc::new(build_runtime(config, Some(db.kv()))?);
        let handler = Arc::new(PluginFlush {
            runtime: runtime.clone(),
            installations: installations.clone(),
        });
        let debouncer = Debouncer::new(
            db.clone(),
            clock.clone(),
            Arc::new(TokioTimers::new(clock.clone())),
            handler,
        );
        let recovered = debouncer.recover().await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "re-armed durable debounce windows from before the last stop"
            );
        }
        let dispatcher = Arc::new(Dispatcher::new(installations.clone(), clock.clone()));
        let enrich = EnrichLimits {
            budget: std::time::Duration::from_millis(config.ingest.enrich_budget_ms),
            ..Default::default()
        };
        let ingest = Arc::new(Ingest::new(dispatcher, debouncer.clone(), enrich));
        let run_settings = RunSettings::with_stale_after(std::time::Duration::from_millis(
            config.runs.stale_after_ms,
        ));
        let runs = RunService::new(&db, clock.clone(), EventHub::default(), run_settings)
            .with_debouncer(debouncer.clone());
        runs.recover_at_boot().await?;
        let relay = Relay::start(&db, runs.hub()).await?;
        let agents = Arc::new(
            crate::agents::AgentRegistry::from_config(&config.agents)
                .context("invalid [agents] configuration")?,
        );
        let workers = api::WorkerApi::new(
            runs.clone(),
            agents,
            crate::agents::AgentPresence::new(db.workers(), clock.clone()),
        );
        let state = AppState {
            runtime,
            ingest,
            records: db.ingest(),
            runs,
            workers: Some(workers),
            db,
            installations,
            clock,
            admin_token: config.server.admin_token.as_deref().map(Arc::from),
            public_url: Arc::from(config.server.public_url.as_str()),
        };
        Ok(App {
            state,
            debouncer,
            relay,
            max_body_bytes: config.server.max_body_bytes,
        })
    }

    /// Builds with the system clock.
    pub async fn from_config(config: &Config) -> anyhow::Result<App> {
        App::build(config, Arc::new(SystemClock)).await
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone(), self.max_body_bytes)
    }

    /// Serves until `shutdown` resolves, then stops inbound, flushes every pending window once
    /// and closes the database.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(%address, plugins = self.state.runtime.plugins().len(), "serving");
        let (stop_recovery, recovery_stopped) = tokio::sync::oneshot::channel::<()>();
        let recovery = self.state.runs.spawn_recovery_loop(async {
            let _ = recovery_stopped.await;
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown({
                // Waiting worker claims end (204) and open event streams end as soon as
                // shutdown starts.
                let workers = self.state.workers.clone();
                let hub = self.state.runs.hub().clone();
                async move {
                    shutdown.await;
                    hub.close_streams();
                    if let Some(workers) = workers {
                        workers.stop_long_polls();
                    }
                }
            })
            .await
            .context("HTTP server")?;
        let _ = stop_recovery.send(());
        let _ = recovery.await;
        tracing::info!("inbound stopped; flushing pending debounce windows");
        self.debouncer.flush_all().await;
        if let Some(relay) = self.relay {
            relay.stop().await;
        }
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
