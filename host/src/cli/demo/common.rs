//! What every channel's demo shares: the host on a fresh SQLite file, an installation added the
//! way an operator adds one (the plugin's `on-install` talks to the fake), waiting for each
//! event's ingest report, letting debounce windows and runs settle, and printing the sessions and
//! the drop audit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::AppState;
use crate::app::App;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::ingest::service::Dispatched;
use crate::onboarding::{AddOptions, add};
use crate::store::{Installation, NewInstallation, SecretCipher};

/// The host of one demo, serving on a loopback port.
pub struct DemoHost {
    pub state: AppState,
    pub base: String,
    pub watch: tokio::sync::broadcast::Receiver<Arc<Dispatched>>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A demo config: a fresh SQLite file in `dir`, a new secrets key, `base_urls` pointing the
/// plugin's origins at the fake, quick reconnects and polls.
pub fn config(dir: &Path, cache_dir: Option<PathBuf>, base_urls: &[(&str, &str)]) -> Config {
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.join("demo.db").display());
    config.secrets.key = Some(SecretCipher::generate_key_hex());
    config.plugins.cache_dir = cache_dir;
    for (origin, target) in base_urls {
        config
            .plugins
            .base_urls
            .insert(origin.to_string(), target.to_string());
    }
    config.connections.poll_interval_ms = 200;
    config.connections.backoff_initial_ms = 200;
    config.connections.backoff_max_ms = 1_000;
    config.delivery.first_backoff_ms = 200;
    config.delivery.max_backoff_ms = 2_000;
    config
}

impl DemoHost {
    /// Builds the app and serves it on a loopback port.
    pub async fn start(config: &Config) -> anyhow::Result<DemoHost> {
        let app = App::from_config(config).await?;
        let state = app.state.clone();
        let watch = state.ingest.watch();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(DemoHost {
            state,
            base,
            watch,
            stop,
            server,
        })
    }

    /// Adds an installation of `channel` as `installations add` does (schema check, the
    /// plugin's `on-install` against the fake, store).
    pub async fn install(
        &self,
        channel: &str,
        name: &str,
        config: &[(&str, &str)],
        secrets: &[(&str, &str)],
        debounce_ms: i64,
    ) -> anyhow::Result<Installation> {
        let pairs = |values: &[(&str, &str)]| -> BTreeMap<String, String> {
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let new = NewInstallation {
            channel: channel.into(),
            name: name.into(),
            config: pairs(config),
            secrets: pairs(secrets),
            debounce_ms,
            ..NewInstallation::default()
        };
        let options = AddOptions {
            skip_on_install: false,
            public_url: self.base.clone(),
            // The demo configures its own agents; it binds only the default one.
            agents: None,
        };
        let installation = add(
            &self.state.runtime,
            &self.state.installations,
            new,
            &options,
            SystemClock.now_ms(),
        )
        .await
        .with_context(|| format!("adding the demo's {channel} installation"))?;
        Ok(installation)
    }

    /// The next ingest report for channel message `message_id`.
    pub async fn report_for(&mut self, message_id: &str) -> anyhow::Result<Arc<Dispatched>> {
        let within = Duration::from_secs(10);
        let found = tokio::time::timeout(within, async {
            loop {
                match self.watch.recv().await {
                    Ok(report) if report.message.message_id == message_id => return Ok(report),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match found {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => anyhow::bail!("the host's ingest reports ended: {e}"),
            Err(_) => anyhow::bail!(
                "the host did not process {message_id} within {} s",
                within.as_secs()
            ),
        }
    }

    /// Waits (at most 15 s) until no debounce window is open and no run is pending or running
    /// for `installation`, then a moment for the last deliveries.
    pub async fn settle(&self, installation: &Installation) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let sessions = self.state.records.list_sessions(&installation.id).await?;
            let busy = sessions.iter().any(|s| {
                s.flush_due_at_ms.is_some() || s.run_state == "pending" || s.run_state == "running"
            });
            if !busy || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Prints every session of `installation` with its messages, and the drop audit; returns
    /// (messages stored, agent replies stored, audit rows).
    pub async fn print_sessions(
        &self,
        installation: &Installation,
    ) -> anyhow::Result<(usize, usize, usize)> {
        println!("\nsessions:");
        let (mut stored, mut runs) = (0, 0);
        for history in self
            .state
            .records
            .list_session_histories(&installation.id)
            .await?
        {
            let s = &history.session;
            println!(
                "  {} ({}, context revision {}, run {})",
                s.chat_key, s.chat_type, s.context_revision, s.run_state
            );
            for m in &history.messages {
                stored += 1;
                if m.role == "assistant" {
                    runs += 1;
                }
                println!(
                    "      #{:<3} {:<9} {:<8} r{} {}",
                    m.id,
                    m.role,
                    m.kind,
                    m.context_revision,
                    preview(&m.body)
                );
            }
        }
        let audit = self
            .state
            .records
            .list_audit(Some(&installation.id), 1000)
            .await?;
        println!("\ndropped (audit rows, never any content):");
        for row in &audit {
            println!(
                "  {:<24} message {}",
                row.drop_reason,
                row.message_id.as_deref().unwrap_or("-")
            );
        }
        Ok((stored, runs, audit.len()))
    }

    /// Stops the host and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await.context("demo server task")?
    }
}

/// One line of `text`, at most 60 characters.
pub fn preview(text: &str) -> String {
    let line = text.replace('\n', " ⏎ ");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(59).collect::<String>())
    } else {
        line
    }
}

/// Waits (at most 10 s) until `done` holds.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
