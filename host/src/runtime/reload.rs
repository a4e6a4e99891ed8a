//! Swapping changed plugins in from the plugins directory while the host runs, on probation.
//!
//! A reload (`switchboard plugins reload`, `POST /api/plugins/reload` or SIGHUP) reads every
//! `*.wasm` of the plugins directory; a file whose sha256 differs from the loaded version is
//! compiled, checked (and, in strict mode, checked against `plugins.lock`) and swapped in:
//! calls that start afterwards get the new version, calls in flight finish on the old one
//! (they hold it). The old version is kept for the probation window; if the new one fails
//! `probation_failures` calls within it, the old one is swapped back, logged and counted.
//!
//! Owns the reload pass and the probation watch. It does not know channels or installations,
//! and it never touches bundled plugins (they change only with the binary).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::lock::{LockError, PluginLock};
use super::{Plugin, Runtime, Source, sha256_hex};

/// How a reload works.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    /// The plugins directory (`[plugins] dir`); no directory, nothing to reload.
    pub dir: Option<PathBuf>,
    /// The lock file (`[plugins] lock_file`).
    pub lock_file: PathBuf,
    /// Refuse plugins the lock file does not pin at their exact digest.
    pub strict: bool,
    /// How long a swapped-in version is watched.
    pub probation: Duration,
    /// Failed calls within the probation window that roll a new version back.
    pub probation_failures: u64,
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    /// Plugins whose new version was swapped in (now on probation).
    pub swapped: Vec<Swapped>,
    /// Plugins loaded for the first time.
    pub added: Vec<Added>,
    /// Plugins whose file did not change.
    pub unchanged: Vec<String>,
    /// Files that were not loaded, and why (the previous version, if any, keeps running).
    pub refused: Vec<Refused>,
}

/// A plugin swapped to a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Swapped {
    /// The plugin.
    pub name: String,
    /// The digest of the version replaced.
    pub from: String,
    /// The digest of the version now serving.
    pub to: String,
}

/// A plugin loaded for the first time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Added {
    /// The plugin.
    pub name: String,
    /// Its digest.
    pub sha256: String,
}

/// A file that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Refused {
    /// The file.
    pub file: String,
    /// Why.
    pub error: String,
}

/// Runs reloads, one at a time.
pub struct Reloader {
    runtime: Arc<Runtime>,
    settings: ReloadSettings,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader of `runtime`'s directory plugins.
    pub fn new(runtime: Arc<Runtime>, settings: ReloadSettings) -> Arc<Reloader> {
        Arc::new(Reloader {
            runtime,
            settings,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ReloadSettings {
        &self.settings
    }

    /// Strict mode at start-up: every plugin loaded from the directory must be pinned at its
    /// digest. The first violation is the error (the host must not start with it).
    pub fn check_loaded(&self) -> Result<(), LockError> {
        if !self.settings.strict {
            return Ok(());
        }
        let lock = PluginLock::read(&self.settings.lock_file)?;
        for plugin in self.runtime.plugins() {
            if let Source::File(path) = plugin.source() {
                lock.check(
                    plugin.name(),
                    plugin.sha256(),
                    path,
                    &self.settings.lock_file,
                )?;
            }
        }
        Ok(())
    }

    /// One reload pass over the directory (see the module doc).
    pub async fn reload(self: &Arc<Self>) -> ReloadReport {
        let _one = self.one_at_a_time.lock().await;
        let mut report = ReloadReport::default();
        let Some(dir) = self.settings.dir.clone() else {
            return report;
        };
        let lock = if self.settings.strict {
            match PluginLock::read(&self.settings.lock_file) {
                Ok(lock) => Some(lock),
                Err(e) => {
                    report.refused.push(Refused {
                        file: dir.display().to_string(),
                        error: e.to_string(),
                    });
                    return report;
                }
            }
        } else {
            None
        };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
                .collect(),
            Err(e) => {
                report.refused.push(Refused {
                    file: dir.display().to_string(),
                    error: format!("cannot read the plugins directory: {e}"),
                });
                return report;
            }
        };
        files.sort();
        for file in files {
            match self.reload_file(&file, lock.as_ref()).await {
                Ok(Outcome::Unchanged(name)) => report.unchanged.push(name),
                Ok(Outcome::Added(added)) => report.added.push(added),
                Ok(Outcome::Swapped(swapped)) => report.swapped.push(swapped),
                Err(error) => {
                    tracing::error!(file = %file.display(), "plugin reload refused: {error}");
                    self.runtime.count_reload("", "refused");
                    report.refused.push(Refused {
                        file: file.display().to_string(),
                        error,
                    });
                }
            }
        }
        tracing::info!(
            swapped = report.swapped.len(),
            added = report.added.len(),
            unchanged = report.unchanged.len(),
            refused = report.refused.len(),
            "plugins reloaded"
        );
        report
    }

    async fn reload_file(
        self: &Arc<Self>,
        file: &Path,
        lock: Option<&PluginLock>,
    ) -> Result<Outcome, String> {
        let wasm = std::fs::read(file).map_err(|e| format!("cannot read it: {e}"))?;
        let sha256 = sha256_hex(&wasm);
        let current = self
            .runtime
            .plugins()
            .into_iter()
            .find(|p| matches!(p.source(), Source::File(path) if path == file));
        if let Some(current) = &current
            && current.sha256() == sha256
        {
            return Ok(Outcome::Unchanged(current.name().to_string()));
        }
        let beside = std::fs::read_to_string(file.with_extension("toml")).ok();
        let runtime = self.runtime.clone();
        let source = Source::File(file.to_path_buf());
        // Compiling takes a while: off the async workers.
        let plugin =
            tokio::task::spawn_blocking(move || runtime.prepare(&wasm, source, beside.as_deref()))
                .await
                .map_err(|e| format!("compiling it panicked: {e}"))?
                .map_err(|e| e.to_string())?;
        if let Some(lock) = lock {
            lock.check(plugin.name(), &sha256, file, &self.settings.lock_file)
                .map_err(|e| e.to_string())?;
        }
        let name = plugin.name().to_string();
        match self.runtime.plugin(&name) {
            Some(old) if matches!(old.source(), Source::Bundled) => Err(format!(
                "it is named `{name}`, like a bundled plugin; bundled plugins change only with the binary"
            )),
            Some(old) => {
                let from = old.sha256().to_string();
                self.runtime.replace(plugin.clone());
                self.runtime.count_reload(&name, "swapped");
                tracing::info!(plugin = %name, from = %from, to = %sha256, "plugin swapped; on probation");
                self.watch(old, plugin);
                Ok(Outcome::Swapped(Swapped {
                    name,
                    from,
                    to: sha256,
                }))
            }
            None => {
                self.runtime.register(plugin).map_err(|e| e.to_string())?;
                self.runtime.count_reload(&name, "added");
                Ok(Outcome::Added(Added { name, sha256 }))
            }
        }
    }

    /// Watches `new` for the probation window; swaps `old` back if it fails too often.
    fn watch(self: &Arc<Self>, old: Arc<Plugin>, new: Arc<Plugin>) {
        let this = self.clone();
        let baseline = new.stats().failures;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + this.settings.probation;
            let name = new.name().to_string();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let failures = new.stats().failures.saturating_sub(baseline);
                if failures >= this.settings.probation_failures {
                    if this.runtime.replace_if_current(&new, old.clone()) {
                        this.runtime.count_rollback(&name);
                        tracing::error!(
                            plugin = %name,
                            failed = failures,
                            rolled_back_to = %old.sha256(),
                            refused = %new.sha256(),
                            last_failure = new.stats().last_failure.as_deref().unwrap_or(""),
                            "the new plugin version failed during probation; the previous version is back"
                        );
                    }
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::info!(plugin = %name, sha256 = %new.sha256(), "plugin passed probation");
                    return;
                }
                if this
                    .runtime
                    .plugin(&name)
                    .is_none_or(|serving| !Arc::ptr_eq(&serving, &new))
                {
                    return; // replaced again meanwhile: that reload watches its own version
                }
            }
        });
    }
}

enum Outcome {
    Unchanged(String),
    Added(Added),
    Swapped(Swapped),
}
