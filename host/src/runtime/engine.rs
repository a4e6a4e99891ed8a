//! The one shared wasmtime `Engine` and its epoch ticker.
//!
//! Configuration follows the measurements in `reference/wasm-hosts.md`: epoch interruption on,
//! component-model concurrency off (≈250 ns cheaper per call), the pooling allocator with a
//! fallback to on-demand allocation when the address space cannot hold the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::manifest::MAX_MEMORY_MIB;

/// Engine tuning. Every field has a default that works for the bundled plugins.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Use the pooling allocator (falls back to on-demand if it cannot be set up).
    pub pooling: bool,
    /// Component instances the pool holds at once (all plugins, all installations).
    pub max_instances: u32,
    /// Epoch tick: the granularity of deadlines.
    pub epoch_tick: Duration,
    /// Guest stack limit.
    pub max_wasm_stack: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            pooling: true,
            max_instances: 256,
            epoch_tick: Duration::from_millis(2),
            max_wasm_stack: 1 << 20,
        }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots, copy-on-write heaps: fast instantiation.
    Pooling,
    /// Allocation per instance.
    OnDemand,
}

fn base_config(settings: &EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .max_wasm_stack(settings.max_wasm_stack)
        .async_stack_size(settings.max_wasm_stack + (1 << 20))
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Builds the engine, preferring the pooling allocator.
pub(crate) fn build_engine(settings: &EngineSettings) -> wasmtime::Result<(Engine, Allocator)> {
    if settings.pooling {
        let n = settings.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // Per-component caps admit a componentize-py (Python) plugin: CPython, libc and the
        // app are linked as 38 core module instances in one component. They bound one
        // component, not the pool: the totals below are what is reserved.
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .max_core_instances_per_component(64)
            .total_memories(n * 2)
            .max_memories_per_component(8)
            .total_tables(n * 4)
            .max_tables_per_component(32)
            .total_stacks(n)
            .max_memory_size((MAX_MEMORY_MIB as usize) << 20)
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(16 << 10);
        let mut config = base_config(settings);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) => tracing::warn!(
                "pooling allocator unavailable ({e:#}); falling back to on-demand allocation"
            ),
        }
    }
    Ok((Engine::new(&base_config(settings))?, Allocator::OnDemand))
}

/// A thread that advances the engine's epoch every tick. A thread (not a task) keeps ticking
/// even when the async executor is starved, so deadlines hold under load.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("switchboard-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
