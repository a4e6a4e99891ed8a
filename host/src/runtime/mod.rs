//! The plugin runtime: one shared wasmtime engine, the precompiled-artifact cache, the plugin
//! loader (manifest, contract version, capability check, linking) and the registry of loaded
//! plugins.
//!
//! This module owns everything about running wasm. It must not know about channels, sessions or
//! the database schema: what a plugin may touch is decided in `capabilities`, and what its
//! answers mean is decided by the ingest and dispatch code that calls it.

pub mod bundled;
pub mod cache;
pub mod engine;
pub mod error;
pub mod exports;
pub mod lock;
pub mod manifest;
pub mod plugin;
pub mod reload;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::bindings::ChannelPluginPre;
pub use crate::bindings::{commands, decoder, enricher, outbound, transport, types};
pub use cache::{ArtifactCache, LoadPath, sha256_hex};
pub use engine::{Allocator, EngineSettings};
pub use error::{Blame, CallError, Cause, LoadError};
pub use exports::CallResult;
pub use manifest::{CONTRACT_VERSION, Manifest};
pub use plugin::{Export, HealthState, Plugin, PluginStats, PoolSettings, Source};

use crate::capabilities::{self, Grants, Services};
use engine::EpochTicker;
use plugin::PluginParts;
use state::HostState;

/// The outcome of loading one file of a plugins directory.
pub type DirEntryLoad = (PathBuf, Result<Arc<Plugin>, LoadError>);

/// Runtime settings; the defaults suit the bundled plugins.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// Engine tuning.
    pub engine: EngineSettings,
    /// Warm pool and failure policy.
    pub pool: PoolSettings,
    /// Where precompiled artifacts are kept; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
}

/// The plugin host runtime.
pub struct Runtime {
    engine: Engine,
    allocator: Allocator,
    _ticker: EpochTicker,
    cache: ArtifactCache,
    services: Arc<Services>,
    settings: RuntimeSettings,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Reloads by (plugin, outcome) and probation rollbacks by plugin, for `/metrics`.
    reloads: std::sync::Mutex<BTreeMap<(String, &'static str), u64>>,
    rollbacks: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Whether a plugin built against `found` can run on a host implementing `supported`
/// (semver: same major, and for 0.x the same minor).
pub fn contract_compatible(found: &semver::Version, supported: &semver::Version) -> bool {
    found.major == supported.major && (supported.major > 0 || found.minor == supported.minor)
}

/// The `switchboard:channel` interface and version in a component item name such as
/// `switchboard:channel/decoder@0.1.0`.
fn channel_interface(name: &str) -> Option<(&str, Option<semver::Version>)> {
    let rest = name.strip_prefix("switchboard:channel/")?;
    match rest.split_once('@') {
        Some((interface, version)) => Some((interface, semver::Version::parse(version).ok())),
        None => Some((rest, None)),
    }
}

impl Runtime {
    /// Starts the engine (and its epoch ticker).
    pub fn new(settings: RuntimeSettings, services: Services) -> Result<Runtime, LoadError> {
        let (engine, allocator) =
            engine::build_engine(&settings.engine).map_err(|e| LoadError::Wasm {
                origin: "engine".into(),
                stage: "configure",
                message: format!("{e:#}"),
            })?;
        let allocator_label = match allocator {
            engine::Allocator::Pooling => "pooling",
            engine::Allocator::OnDemand => "on_demand",
        };
        tracing::debug!(allocator = allocator_label, "wasm engine ready");
        let ticker = EpochTicker::start(engine.clone(), settings.engine.epoch_tick);
        Ok(Runtime {
            engine,
            allocator,
            _ticker: ticker,
            cache: ArtifactCache::new(settings.cache_dir.clone()),
            services: Arc::new(services),
            settings,
            plugins: RwLock::new(BTreeMap::new()),
            reloads: Default::default(),
            rollbacks: Default::default(),
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator in use (pooling unless it could not be set up).
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// The artifact cache.
    pub fn cache(&self) -> &ArtifactCache {
        &self.cache
    }

    /// Compiles (or loads from cache), checks and links a component without registering it.
    /// `beside_manifest` is the text of a manifest file next to it, used when none is embedded.
    pub fn prepare(
        &self,
        wasm: &[u8],
        source: Source,
        beside_manifest: Option<&str>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let origin = source.to_string();
        let manifest_text = Manifest::embedded_text(wasm)
            .or_else(|| beside_manifest.map(str::to_string))
            .ok_or_else(|| {
                LoadError::Manifest(manifest::ManifestError::Missing {
                    origin: origin.clone(),
                    beside: match &source {
                        Source::File(path) => path.with_extension("toml").display().to_string(),
                        Source::Bundled => "<name>.toml".into(),
                    },
                })
            })?;
        let manifest = Manifest::parse(&manifest_text, &origin)?;
        if !contract_compatible(&manifest.contract, &CONTRACT_VERSION) {
            return Err(LoadError::UnsupportedContract {
                origin,
                found: manifest.contract,
                supported: CONTRACT_VERSION,
            });
        }
        let sha256 = sha256_hex(wasm);
        let (component, load_path) =
            self.cache
                .load(&self.engine, wasm, &sha256)
                .map_err(|e| LoadError::Wasm {
                    origin: origin.clone(),
                    stage: "compile",
                    message: format!("{e:#}"),
                })?;
        let ty = component.component_type();
        let exported: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let versions: Vec<semver::Version> = exported
            .iter()
            .filter_map(|name| channel_interface(name))
            .filter_map(|(_, v)| v)
            .collect();
        let Some(found) = versions.first() else {
            return Err(LoadError::Mismatch {
                origin,
                problem: format!(
                    "the component exports no switchboard:channel interface (it exports: {}); build it with switchboard-plugin-sdk",
                    if exported.is_empty() {
                        "nothing".to_string()
                    } else {
                        exported.join(", ")
                    }
                ),
            });
        };
        if !contract_compatible(found, &CONTRACT_VERSION) {
            return Err(LoadError::UnsupportedContract {
                origin,
                found: found.clone(),
                supported: CONTRACT_VERSION,
            });
        }
        if !contract_compatible(found, &manifest.contract) {
            return Err(LoadError::Mismatch {
                origin,
                problem: format!(
                    "its manifest says contract {} but the component implements {found}; fix `contract` in the manifest",
                    manifest.contract
                ),
            });
        }
        let grants = Grants::resolve(
            &manifest.capabilities,
            &self.services.operator,
            &self.services.limits,
        );
        for (name, _) in ty.imports(&self.engine) {
            if let Some((interface, _)) = channel_interface(name)
                && !grants.allows_interface(interface)
            {
                return Err(LoadError::Mismatch {
                    origin,
                    problem: format!(
                        "it imports `{name}` but its manifest does not request the `{interface}` capability; \
                             add `{interface}` under [capabilities] in the manifest (or stop using it)"
                    ),
                });
            }
        }
        let imports: Vec<&str> = ty.imports(&self.engine).map(|(name, _)| name).collect();
        let unlinked = capabilities::unlinked_wasi(imports);
        if !unlinked.is_empty() {
            return Err(LoadError::Mismatch {
                origin,
                problem: format!(
                    "it imports {}, which plugins are not given: the host links no sockets or \
                     other WASI beyond stdio, clocks, randomness and a filesystem without \
                     directories; reach the network through the `http` capability and keep \
                     state in `kv`",
                    unlinked
                        .iter()
                        .map(|name| format!("`{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut linker = Linker::new(&self.engine);
        let link_error = |e: wasmtime::Error| LoadError::Wasm {
            origin: origin.clone(),
            stage: "link",
            message: format!("{e:#}"),
        };
        capabilities::link(&mut linker, &grants, HostState::imports).map_err(link_error)?;
        let instance_pre = linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = ChannelPluginPre::new(instance_pre).map_err(link_error)?;
        let parts = PluginParts {
            manifest,
            source,
            sha256,
            load_path,
            component,
            grants,
            pre,
        };
        Ok(Arc::new(Plugin::new(
            parts,
            self.engine.clone(),
            self.services.clone(),
            self.settings.pool.clone(),
        )))
    }

    /// Registers a prepared plugin; refuses a duplicate name.
    pub fn register(&self, plugin: Arc<Plugin>) -> Result<Arc<Plugin>, LoadError> {
        let mut plugins = self.plugins.write().expect("plugin registry lock");
        if let Some(existing) = plugins.get(plugin.name()) {
            return Err(LoadError::Duplicate {
                name: plugin.name().to_string(),
                existing: existing.source().to_string(),
            });
        }
        tracing::debug!(plugin = plugin.name(), version = %plugin.manifest().version, source = %plugin.source(),
            cached = plugin.load_path() == LoadPath::Cached, "plugin loaded");
        plugins.insert(plugin.name().to_string(), plugin.clone());
        Ok(plugin)
    }

    /// Replaces (or adds) a plugin by name; the old version's warm instances are dropped with it.
    pub fn replace(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        let old = self
            .plugins
            .write()
            .expect("plugin registry lock")
            .insert(plugin.name().to_string(), plugin);
        if let Some(old) = &old {
            old.recycle_all();
        }
        old
    }

    /// Replaces `current` with `with` only if `current` is still the registered version of its
    /// name (a rollback must not undo a later reload); `false` otherwise.
    pub fn replace_if_current(&self, current: &Arc<Plugin>, with: Arc<Plugin>) -> bool {
        let mut plugins = self.plugins.write().expect("plugin registry lock");
        match plugins.get(current.name()) {
            Some(serving) if Arc::ptr_eq(serving, current) => {
                plugins.insert(with.name().to_string(), with);
                current.recycle_all();
                true
            }
            _ => false,
        }
    }

    /// Counts a reload outcome (`swapped`, `added`, `refused`) of `plugin` (empty: unknown).
    pub fn count_reload(&self, plugin: &str, outcome: &'static str) {
        *self
            .reloads
            .lock()
            .expect("reload counters")
            .entry((plugin.to_string(), outcome))
            .or_default() += 1;
    }

    /// Counts a probation rollback of `plugin`.
    pub fn count_rollback(&self, plugin: &str) {
        *self
            .rollbacks
            .lock()
            .expect("rollback counters")
            .entry(plugin.to_string())
            .or_default() += 1;
    }

    /// Reloads so far by (plugin, outcome).
    pub fn reload_counts(&self) -> Vec<((String, &'static str), u64)> {
        let counts = self.reloads.lock().expect("reload counters");
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Probation rollbacks so far by plugin.
    pub fn rollback_counts(&self) -> Vec<(String, u64)> {
        let counts = self.rollbacks.lock().expect("rollback counters");
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Loads and registers the plugins embedded in this binary.
    pub fn load_bundled(&self) -> Result<Vec<Arc<Plugin>>, LoadError> {
        bundled::BUNDLED
            .iter()
            .map(|b| {
                self.prepare(b.wasm, Source::Bundled, None)
                    .and_then(|p| self.register(p))
            })
            .collect()
    }

    /// Loads and registers one `.wasm` file (its manifest embedded or as `<stem>.toml` beside it).
    pub fn load_file(&self, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let beside = std::fs::read_to_string(path.with_extension("toml")).ok();
        let plugin = self.prepare(&wasm, Source::File(path.to_path_buf()), beside.as_deref())?;
        self.register(plugin)
    }

    /// Loads every `*.wasm` in `dir`; each file succeeds or fails on its own.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<DirEntryLoad>, LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|path| {
                let result = self.load_file(&path);
                if let Err(e) = &result {
                    tracing::error!("{e}");
                }
                (path, result)
            })
            .collect())
    }

    /// A loaded plugin by name.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("plugin registry lock")
            .get(name)
            .cloned()
    }

    /// All loaded plugins, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("plugin registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// The plugin serving a channel type.
    pub fn plugin_for_channel(&self, channel: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("plugin registry lock")
            .values()
            .find(|p| p.manifest().channel == channel)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_compatibility_follows_semver() {
        let v = |s| semver::Version::parse(s).unwrap();
        assert!(contract_compatible(&v("0.1.3"), &v("0.1.0")));
        assert!(!contract_compatible(&v("0.2.0"), &v("0.1.0")));
        assert!(!contract_compatible(&v("1.0.0"), &v("0.1.0")));
        assert!(contract_compatible(&v("1.4.0"), &v("1.0.0")));
        assert!(!contract_compatible(&v("2.0.0"), &v("1.0.0")));
    }

    #[test]
    fn channel_interface_names_are_parsed() {
        let (iface, version) = channel_interface("switchboard:channel/decoder@0.1.0").unwrap();
        assert_eq!(iface, "decoder");
        assert_eq!(version, Some(semver::Version::new(0, 1, 0)));
        assert!(channel_interface("wasi:cli/stderr@0.2.0").is_none());
    }
}
