//! A loaded plugin: its manifest, grants, the `InstancePre` shared by all its instances, the warm
//! instance pool and its health. Every export call goes through [`Plugin::call`], which applies
//! the deadline (epoch interruption + an outer timeout that also covers host imports), the memory
//! cap, failure classification and recycling.
//!
//! Instances are kept warm per installation and never shared between concurrent calls or between
//! installations; any failure discards the instance.
//!
//! The warm-call path is measured (`benches/runtime.rs`, `examples/callcost.rs`): it reads the
//! clock once, takes the pool lock twice with a cheap hash of the installation id, lends the
//! instance to the guest call by reference (no moves of the bindings, no boxed future), and
//! registers the outer timeout's timer only when the call does not finish in its first poll.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use super::cache::LoadPath;
use super::error::{Blame, CallError, Cause};
use super::manifest::Manifest;
use super::state::HostState;
use crate::bindings::{ChannelPlugin, ChannelPluginPre};
use crate::capabilities::{Activity, Grants, Services};
use crate::domain::InstallationContext;

/// The exported interfaces, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Export {
    /// `transport`
    Transport,
    /// `decoder`
    Decoder,
    /// `enricher`
    Enricher,
    /// `commands`
    Commands,
    /// `outbound`
    Outbound,
    /// `lifecycle` (network calls, like `outbound`)
    Lifecycle,
}

impl Export {
    fn budget(self, manifest: &Manifest) -> Duration {
        let b = &manifest.budgets;
        match self {
            Export::Transport => b.transport,
            Export::Decoder => b.decoder,
            Export::Enricher => b.enricher,
            Export::Commands => b.commands,
            Export::Outbound | Export::Lifecycle => b.outbound,
        }
    }
}

/// Pool and failure-policy settings shared by all plugins.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// A warm instance is discarded after this many calls.
    pub recycle_after_calls: u32,
    /// Idle warm instances kept per (plugin, installation).
    pub max_idle_per_installation: usize,
    /// Idle warm instances kept per plugin across all its installations. Idle instances hold
    /// slots of the engine's instance pool ([`super::EngineSettings::max_instances`]); keep this
    /// well below it so calls in flight always find a slot, however many installations (long
    /// connections) the host serves. At the cap, parking evicts another installation's instance.
    pub max_idle_total: usize,
    /// Consecutive guest failures after which the plugin is reported degraded.
    pub degraded_after_failures: u32,
    /// Extra time the outer timeout allows beyond the budget before it cancels the call.
    pub timeout_grace: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            recycle_after_calls: 10_000,
            max_idle_per_installation: 4,
            max_idle_total: 128,
            degraded_after_failures: 5,
            timeout_grace: Duration::from_millis(50),
        }
    }
}

/// A plugin's health as shown by `plugins list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Serving.
    Healthy,
    /// Failing repeatedly; still called, and recovers on the next success.
    Degraded,
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
        })
    }
}

#[derive(Default)]
struct Health {
    consecutive_failures: AtomicU32,
    degraded: AtomicBool,
    calls: AtomicU64,
    failures: AtomicU64,
    instantiations: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// Counters for one plugin.
#[derive(Debug, Clone)]
pub struct PluginStats {
    /// Healthy or degraded.
    pub state: HealthState,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (trap, timeout, limit, host failure).
    pub failures: u64,
    /// Current run of failures.
    pub consecutive_failures: u32,
    /// Instances created.
    pub instantiations: u64,
    /// Text of the last failure.
    pub last_failure: Option<String>,
}

/// A warm instance: a store and the bindings instantiated in it.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: ChannelPlugin,
    calls: u32,
}

/// Warm instances are boxed: the bindings are large, and the pool moves instances around.
pub(crate) type Warm = Box<WarmInstance>;

/// Hasher of the warm pool's keys (installation ids). The ids are the host's own (an id reaches
/// the pool only after the installation was found), so there is no key flooding to defend
/// against, and SipHash would be a visible share of a warm call. FxHash's mixing step.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Idle warm instances per installation id, and how many there are in all.
#[derive(Default)]
struct IdlePool {
    by_installation: HashMap<String, Vec<Warm>, BuildHasherDefault<IdHasher>>,
    total: usize,
}

impl IdlePool {
    /// Drops one idle instance of an installation other than `keep`; false if there is none.
    /// The emptied entry is removed so later evictions do not scan it again.
    fn evict_other(&mut self, keep: &str) -> bool {
        let Some(victim) = self
            .by_installation
            .iter()
            .find(|(id, idle)| !idle.is_empty() && id.as_str() != keep)
            .map(|(id, _)| id.clone())
        else {
            return false;
        };
        let idle = self.by_installation.get_mut(&victim).expect("just found");
        idle.pop();
        if idle.is_empty() {
            self.by_installation.remove(&victim);
        }
        self.total -= 1;
        true
    }
}

/// Awaits `future` until `limit`, like `tokio::time::timeout`, but registers the timer only if
/// the future does not finish in its first poll: a warm call that runs to completion without
/// yielding (the common case) never touches the timer wheel. Once the future has yielded (an
/// epoch tick, a host import waiting on I/O), the timer is armed for the original `limit`.
/// `None` = the limit passed.
async fn within<F: Future>(limit: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(limit.into())));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded in the host binary.
    Bundled,
    /// Loaded from a file.
    File(std::path::PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Bundled => f.write_str("bundled"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A loaded, linked plugin.
pub struct Plugin {
    name: Arc<str>,
    manifest: Manifest,
    source: Source,
    sha256: String,
    load_path: LoadPath,
    exports: Vec<String>,
    imports: Vec<String>,
    grants: Arc<Grants>,
    engine: Engine,
    pre: ChannelPluginPre<HostState>,
    services: Arc<Services>,
    settings: PoolSettings,
    idle: Mutex<IdlePool>,
    health: Health,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.manifest.version.to_string())
            .field("source", &self.source)
            .field("state", &self.stats().state)
            .finish_non_exhaustive()
    }
}

/// Everything needed to build a [`Plugin`] (produced by the runtime's loader).
pub(crate) struct PluginParts {
    pub manifest: Manifest,
    pub source: Source,
    pub sha256: String,
    pub load_path: LoadPath,
    pub component: Component,
    pub grants: Grants,
    pub pre: ChannelPluginPre<HostState>,
}

impl Plugin {
    pub(crate) fn new(
        parts: PluginParts,
        engine: Engine,
        services: Arc<Services>,
        settings: PoolSettings,
    ) -> Plugin {
        let ty = parts.component.component_type();
        let exports = ty
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let imports = ty
            .imports(&engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Plugin {
            name: Arc::from(parts.manifest.name.as_str()),
            manifest: parts.manifest,
            source: parts.source,
            sha256: parts.sha256,
            load_path: parts.load_path,
            exports,
            imports,
            grants: Arc::new(parts.grants),
            engine,
            pre: parts.pre,
            services,
            settings,
            idle: Mutex::new(IdlePool::default()),
            health: Health::default(),
        }
    }

    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Where it was loaded from.
    pub fn source(&self) -> &Source {
        &self.source
    }
    /// sha256 of the component bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Whether it came from the precompiled cache.
    pub fn load_path(&self) -> LoadPath {
        self.load_path
    }
    /// Names the component exports (with versions).
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
    /// Names the component imports (with versions).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
    /// Capabilities granted.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The host services its calls use (HTTP clients, kv backend, clock, limits).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Health and counters.
    pub fn stats(&self) -> PluginStats {
        let h = &self.health;
        PluginStats {
            state: if h.degraded.load(Ordering::Relaxed) {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            },
            calls: h.calls.load(Ordering::Relaxed),
            failures: h.failures.load(Ordering::Relaxed),
            consecutive_failures: h.consecutive_failures.load(Ordering::Relaxed),
            instantiations: h.instantiations.load(Ordering::Relaxed),
            last_failure: h.last_failure.lock().expect("health lock").clone(),
        }
    }

    /// Drops every idle instance (used on reload and by tests).
    pub fn recycle_all(&self) {
        *self.idle.lock().expect("pool lock") = IdlePool::default();
    }

    /// Idle warm instances held now (all installations).
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().expect("pool lock").total
    }

    /// Instantiates one instance for `installation` ahead of its first call and parks it in the
    /// warm pool (if the pool has room), so the first real call skips instantiation.
    pub async fn prewarm(&self, installation: &Arc<InstallationContext>) -> Result<(), CallError> {
        let warm = self
            .instantiate(installation, self.manifest.budgets.transport)
            .await?;
        self.park(&installation.id, warm);
        Ok(())
    }

    /// Takes an idle instance of `installation_id`, if there is one.
    fn checkout(&self, installation_id: &str) -> Option<Warm> {
        let mut idle = self.idle.lock().expect("pool lock");
        // The emptied entry stays: the instance comes back after the call, and re-inserting
        // the key would allocate on every call.
        let warm = idle.by_installation.get_mut(installation_id)?.pop()?;
        idle.total -= 1;
        Some(warm)
    }

    /// Returns an instance to the idle pool of its installation. Dropped when the installation
    /// already keeps its share; at the plugin-wide cap another installation's idle instance
    /// makes room (the installation calling now is the one likely to call again soon).
    fn park(&self, installation_id: &str, warm: Warm) {
        let mut idle = self.idle.lock().expect("pool lock");
        let kept = idle
            .by_installation
            .get(installation_id)
            .map_or(0, Vec::len);
        if kept >= self.settings.max_idle_per_installation
            || (idle.total >= self.settings.max_idle_total && !idle.evict_other(installation_id))
        {
            return;
        }
        // Look up before inserting: the common case must not allocate a key per call.
        match idle.by_installation.get_mut(installation_id) {
            Some(slot) => slot.push(warm),
            None => {
                idle.by_installation
                    .insert(installation_id.to_string(), vec![warm]);
            }
        }
        idle.total += 1;
    }

    /// Creates a fresh instance for `installation`, under the budget of `export`.
    pub(crate) async fn instantiate(
        &self,
        installation: &Arc<InstallationContext>,
        budget: Duration,
    ) -> Result<Warm, CallError> {
        let started = Instant::now();
        let deadline = started + budget;
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                self.name.clone(),
                self.grants.clone(),
                self.services.clone(),
                self.manifest.budgets.memory_bytes,
            ),
        );
        store.limiter(|state| &mut state.limiter);
        // Yield to the executor every tick so a busy guest cannot hog a worker thread, and trap
        // once the call's deadline has passed. A new store's deadline is 0: set it before
        // instantiating, because instantiation runs guest code too.
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().call.deadline() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store.data_mut().begin_call(installation, deadline);
        store.set_epoch_deadline(1);
        self.health.instantiations.fetch_add(1, Ordering::Relaxed);
        let outcome = within(
            deadline + self.settings.timeout_grace,
            self.pre.instantiate_async(&mut store),
        )
        .await;
        match outcome {
            Some(Ok(bindings)) => Ok(Box::new(WarmInstance {
                store,
                bindings,
                calls: 0,
            })),
            Some(Err(error)) => {
                let mut failure = self.classify("instantiate", error, store.data(), budget);
                if let Cause::Trap(what) | Cause::Host(what) = &failure.cause {
                    failure.cause = Cause::Instantiate(what.clone());
                }
                Err(self.record_failure(failure))
            }
            None => Err(self.record_failure(self.timeout_error(
                "instantiate",
                budget,
                store.data().call.activity(),
            ))),
        }
    }

    /// Runs one export call: warm instance (or a new one), deadline, classification, recycling.
    ///
    /// `invoke` gets the instance by reference for the duration of the call. If the outer
    /// timeout fires, its future is dropped (which unwinds the guest) and the instance, still
    /// owned here, is inspected and discarded.
    pub(crate) async fn call<R>(
        &self,
        installation: &Arc<InstallationContext>,
        export: Export,
        export_name: &'static str,
        invoke: impl AsyncFnOnce(&mut WarmInstance) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let budget = export.budget(&self.manifest);
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        let mut warm = match self.checkout(&installation.id) {
            Some(warm) => warm,
            None => self.instantiate(installation, budget).await?,
        };
        let started = Instant::now();
        warm.store
            .data_mut()
            .begin_call(installation, started + budget);
        warm.store.set_epoch_deadline(1);
        let limit = started + budget + self.settings.timeout_grace;
        let outcome = if tracing::level_enabled!(tracing::Level::TRACE) {
            let span = tracing::trace_span!("plugin_call", plugin = %self.name, export = export_name, installation = %installation.id);
            tracing::Instrument::instrument(within(limit, invoke(&mut warm)), span).await
        } else {
            within(limit, invoke(&mut warm)).await
        };
        match outcome {
            Some(Ok(value)) => {
                self.record_success();
                warm.calls += 1;
                if warm.calls < self.settings.recycle_after_calls {
                    self.park(&installation.id, warm);
                }
                Ok(value)
            }
            // The instance is dropped here: after a trap wasmtime refuses to enter it again.
            Some(Err(error)) => Err(self.record_failure(self.classify(
                export_name,
                error,
                warm.store.data(),
                budget,
            ))),
            None => Err(self.record_failure(self.timeout_error(
                export_name,
                budget,
                warm.store.data().call.activity(),
            ))),
        }
    }

    fn timeout_error(
        &self,
        export: &'static str,
        budget: Duration,
        activity: Activity,
    ) -> CallError {
        let (phase, blame) = match activity {
            Activity::Guest => ("guest code".to_string(), Blame::Guest),
            Activity::HostImport(import) => (format!("host import {import}"), Blame::Host),
        };
        CallError {
            plugin: self.name.to_string(),
            export,
            cause: Cause::Timeout { budget, phase },
            blame,
            guest_message: None,
        }
    }

    fn classify(
        &self,
        export: &'static str,
        error: wasmtime::Error,
        state: &HostState,
        budget: Duration,
    ) -> CallError {
        let guest_message = state
            .call
            .guest_panic()
            .map(str::to_owned)
            .or_else(|| state.stderr_since_call());
        let (cause, blame) = if let Some(requested) = state.limiter.refused {
            (
                Cause::MemoryLimit {
                    cap_bytes: self.manifest.budgets.memory_bytes,
                    requested_bytes: requested as u64,
                },
                Blame::Guest,
            )
        } else if let Some(trap) = error.downcast_ref::<Trap>() {
            let cause = match trap {
                Trap::Interrupt => Cause::Timeout {
                    budget,
                    phase: "guest code".into(),
                },
                Trap::UnreachableCodeReached => Cause::Panic,
                Trap::StackOverflow => {
                    Cause::Trap("stack overflow (deep recursion in the guest)".into())
                }
                Trap::MemoryOutOfBounds => {
                    Cause::Trap("out-of-bounds memory access (a guest memory bug)".into())
                }
                Trap::IntegerDivisionByZero => Cause::Trap("integer division by zero".into()),
                other => Cause::Trap(other.to_string()),
            };
            (cause, Blame::Guest)
        } else {
            (Cause::Host(format!("{error:#}")), Blame::Host)
        };
        CallError {
            plugin: self.name.to_string(),
            export,
            cause,
            blame,
            guest_message,
        }
    }

    fn record_success(&self) {
        self.health.consecutive_failures.store(0, Ordering::Relaxed);
        // Load first: the swap is a locked instruction, and the plugin is rarely degraded.
        if self.health.degraded.load(Ordering::Relaxed)
            && self.health.degraded.swap(false, Ordering::Relaxed)
        {
            tracing::info!(plugin = %self.name, "plugin recovered: calls succeed again");
        }
    }

    fn record_failure(&self, error: CallError) -> CallError {
        let h = &self.health;
        h.failures.fetch_add(1, Ordering::Relaxed);
        *h.last_failure.lock().expect("health lock") = Some(error.to_string());
        tracing::warn!(plugin = %self.name, export = error.export, blame = %error.blame, "{error}");
        if error.blame == Blame::Guest {
            let run = h.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if run >= self.settings.degraded_after_failures
                && !h.degraded.swap(true, Ordering::Relaxed)
            {
                tracing::error!(plugin = %self.name, consecutive_failures = run,
                    "plugin degraded after {run} consecutive failures; it stays loaded and recovers on the next successful call");
            }
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_finishes_at_once_registers_no_timer() {
        // No time driver: creating a timer would panic.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let limit = Instant::now() + Duration::from_secs(1);
        assert_eq!(rt.block_on(within(limit, async { 7 })), Some(7));
    }

    #[test]
    fn a_call_that_yields_is_still_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let limit = Instant::now() + Duration::from_secs(60);
        let yielding = async {
            tokio::task::yield_now().await;
            8
        };
        assert_eq!(rt.block_on(within(limit, yielding)), Some(8));
        // A limit already passed cuts a call that does not finish in its first poll.
        let passed = Instant::now();
        assert_eq!(
            rt.block_on(within(passed, std::future::pending::<()>())),
            None
        );
    }

    #[test]
    fn pool_keys_hash_apart() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let ids = [
            "",
            "a",
            "b",
            "installation-1",
            "installation-2",
            "0123456789abcdef",
        ];
        let hashes: std::collections::HashSet<u64> =
            ids.iter().map(|id| hasher.hash_one(id)).collect();
        assert_eq!(hashes.len(), ids.len());
    }
}
