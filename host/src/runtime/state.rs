//! Per-store host state: the installation context of the current call, its deadline, the memory
//! limiter and the guest's captured stderr. One `HostState` lives inside each wasmtime `Store`.
//!
//! Owns nothing durable: anything that must outlive a call lives in the host's services.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::Grants;
use crate::capabilities::Services;

/// A secret value; never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a decrypted secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The plaintext, for handing to the plugin.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The installation a plugin call runs for: id, config values and decrypted secrets.
#[derive(Debug, Clone, Default)]
pub struct InstallationContext {
    /// Host id of the installation; warm instances are never shared between installations.
    pub id: String,
    /// Non-secret config (`app_id`, `bot_open_id`, `base_url`, …).
    pub config: BTreeMap<String, String>,
    /// Decrypted secrets (`app_secret`, `encrypt_key`, `verification_token`, …).
    pub secrets: BTreeMap<String, Secret>,
}

impl InstallationContext {
    /// A context with only an id.
    pub fn new(id: impl Into<String>) -> InstallationContext {
        InstallationContext {
            id: id.into(),
            ..Default::default()
        }
    }
    /// Adds a config value.
    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
        self.config.insert(key.to_string(), value.into());
        self
    }
    /// Adds a secret.
    pub fn with_secret(mut self, key: &str, value: impl Into<String>) -> Self {
        self.secrets.insert(key.to_string(), Secret::new(value));
        self
    }
}

/// Caps linear memory and table growth per store and remembers a refusal, so a trap that follows
/// can be reported as "memory limit" instead of a bare abort.
pub struct MemoryLimiter {
    cap_bytes: usize,
    /// Size that was refused, if any, since the current call started.
    pub(crate) refused: Option<usize>,
    /// Largest memory size granted.
    pub(crate) peak: usize,
}

/// Ceiling on table elements (function references) per table.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    fn new(cap_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            cap_bytes: usize::try_from(cap_bytes).unwrap_or(usize::MAX),
            refused: None,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes || maximum.is_some_and(|max| desired > max) {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What the store is doing right now, for blaming timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Running guest code (or idle).
    Guest,
    /// Waiting in a host import (named).
    HostImport(&'static str),
}

/// The data of one plugin store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    stderr_mark: usize,
    /// Plugin name, for logs.
    pub(crate) plugin: Arc<str>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) services: Arc<Services>,
    pub(crate) installation: Arc<InstallationContext>,
    pub(crate) deadline: Instant,
    /// Shared with the caller, which reads it when the outer timeout fires (the store is gone).
    activity: Arc<Mutex<Activity>>,
    /// Panic message forwarded by the guest SDK's hook during the current call.
    pub(crate) guest_panic: Option<String>,
    /// Log records written during the current call (rate limit).
    pub(crate) log_records: u32,
}

/// Captured guest stderr per store (Rust prints panic messages there).
const STDERR_CAPTURE_BYTES: usize = 64 * 1024;

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Arc<Grants>,
        services: Arc<Services>,
        memory_cap: u64,
    ) -> HostState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        // A WASI context that grants nothing: no files, no env, no args, no sockets, empty stdin.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_cap),
            stderr,
            stderr_mark: 0,
            plugin,
            grants,
            services,
            installation: Arc::new(InstallationContext::default()),
            deadline: Instant::now(),
            activity: Arc::new(Mutex::new(Activity::Guest)),
            guest_panic: None,
            log_records: 0,
        }
    }

    /// Prepares the state for a call (or an instantiation) for `installation` until `deadline`.
    pub(crate) fn begin_call(&mut self, installation: Arc<InstallationContext>, deadline: Instant) {
        self.installation = installation;
        self.deadline = deadline;
        self.set_activity(Activity::Guest);
        self.guest_panic = None;
        self.limiter.refused = None;
        self.log_records = 0;
        self.stderr_mark = self.stderr.contents().len();
    }

    /// Records whether the store is in guest code or waiting in a host import.
    pub(crate) fn set_activity(&self, activity: Activity) {
        *self.activity.lock().expect("activity lock") = activity;
    }

    /// The activity cell, for the caller's timeout report.
    pub(crate) fn activity_probe(&self) -> Arc<Mutex<Activity>> {
        self.activity.clone()
    }

    /// What the guest wrote to stderr since the current call started (trimmed, lossy UTF-8).
    pub(crate) fn stderr_since_call(&self) -> Option<String> {
        let all = self.stderr.contents();
        let text = String::from_utf8_lossy(all.get(self.stderr_mark..).unwrap_or_default());
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    /// Milliseconds left before the call's deadline.
    pub(crate) fn remaining_ms(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
