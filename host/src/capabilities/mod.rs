//! Host capabilities offered to plugins: `log`, `http`, `kv`, `clock`, the per-call
//! `installation` context and the pure `crypto` primitives.
//!
//! This module owns the import implementations and decides what gets linked (through
//! [`policy`]); it must not call into plugins or know about channels. Each plugin gets exactly the
//! interfaces its manifest requests: an interface that is not granted is not linked, so the
//! plugin cannot even instantiate if it imports it (the runtime reports that before linking).

mod call;
pub mod clock;
pub mod crypto;
pub mod dns;
pub mod http;
pub mod installation;
pub mod kv;
pub mod log;
pub mod policy;

use std::sync::Arc;

use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::WasiView;

use crate::bindings::switchboard::channel as wit;
use crate::domain::{Clock, KvBackend, KvQuota, SystemClock};
pub(crate) use call::{Activity, CallState};
use policy::AllowList;
pub use policy::{BaseUrlOverride, HttpPolicy, WebSocketPolicy};

/// The capabilities a plugin requests (its manifest's `[capabilities]`). Anything not requested
/// is not linked.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    /// Structured logging through the host.
    pub log: bool,
    /// Wall-clock time.
    pub clock: bool,
    /// Outbound HTTP destinations (`scheme://host[:port]`, `*.suffix` wildcards). `None` = no http.
    pub http: Option<AllowList>,
    /// Scoped key/value store quota. `None` = no kv.
    pub kv: Option<KvRequest>,
    /// WebSocket origins the host may dial for the plugin's long connections
    /// (`wss://host[:port]`). `None` = the plugin cannot hold long connections.
    pub websocket: Option<AllowList>,
}

/// The kv quota a plugin asks for.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KvRequest {
    /// Live keys per (plugin, installation).
    pub max_keys: u64,
    /// Total value bytes per (plugin, installation).
    pub max_bytes: u64,
}

/// The capabilities one plugin was granted: its manifest's requests under the operator's policy.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `log` import.
    pub log: bool,
    /// `clock` import.
    pub clock: bool,
    /// `http` import and its destinations.
    pub http: Option<HttpPolicy>,
    /// Long connections the host may dial for the plugin (not a WIT import: the host's
    /// connector dials, the plugin only names the URL in its connect plan).
    pub websocket: Option<WebSocketPolicy>,
    /// `kv` import and its quota.
    pub kv: Option<KvQuota>,
}

/// What the operator decides for every plugin.
#[derive(Debug, Clone, Default)]
pub struct OperatorPolicy {
    /// Base-URL overrides (e.g. a channel's API origin → a local fake).
    pub base_url_overrides: Vec<BaseUrlOverride>,
}

impl Grants {
    /// Resolves a manifest's requests under the operator policy and the host limits.
    pub fn resolve(caps: &Requests, operator: &OperatorPolicy, limits: &ServiceLimits) -> Grants {
        Grants {
            log: caps.log,
            clock: caps.clock,
            http: caps
                .http
                .clone()
                .map(|allow| HttpPolicy::new(allow, operator.base_url_overrides.clone())),
            websocket: caps
                .websocket
                .clone()
                .map(|allow| WebSocketPolicy::new(allow, operator.base_url_overrides.clone())),
            kv: caps.kv.map(|kv| KvQuota {
                max_keys: kv.max_keys,
                max_bytes: kv.max_bytes,
                max_value_bytes: limits.kv_max_value_bytes.min(kv.max_bytes),
            }),
        }
    }

    /// Capability names, for listings (`log`, `clock`, `http`, `kv`, `websocket`).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.log {
            names.push("log");
        }
        if self.clock {
            names.push("clock");
        }
        if self.http.is_some() {
            names.push("http");
        }
        if self.kv.is_some() {
            names.push("kv");
        }
        if self.websocket.is_some() {
            names.push("websocket");
        }
        names
    }

    /// Whether the WIT interface `name` (`http`, `kv`, …) is granted. `types`, `installation`
    /// and `crypto` (pure functions that reach nothing outside the call) are always available.
    pub fn allows_interface(&self, name: &str) -> bool {
        match name {
            "types" | "installation" | "crypto" => true,
            "log" => self.log,
            "clock" => self.clock,
            "http" => self.http.is_some(),
            "kv" => self.kv.is_some(),
            _ => false,
        }
    }
}

/// Host-wide limits on what capabilities move.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Largest HTTP request body a plugin may send.
    pub http_max_request_bytes: u64,
    /// Largest HTTP response body a plugin may receive.
    pub http_max_response_bytes: u64,
    /// Redirect hops followed (each one checked against the allow-list).
    pub http_max_redirects: u32,
    /// Largest single kv value.
    pub kv_max_value_bytes: u64,
    /// Log records per call before the rest are dropped.
    pub log_max_records_per_call: u32,
    /// Longest log message kept (longer ones are truncated).
    pub log_max_message_bytes: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            http_max_request_bytes: 1 << 20,
            http_max_response_bytes: 8 << 20,
            http_max_redirects: 5,
            kv_max_value_bytes: 64 << 10,
            log_max_records_per_call: 100,
            log_max_message_bytes: 4096,
        }
    }
}

/// The host-side implementations behind the imports, shared by all plugins.
pub struct Services {
    /// Shared HTTP client for plugin egress (redirects are followed by hand so every hop is
    /// checked); its resolver connects only to public addresses ([`dns`]).
    pub(crate) http: reqwest::Client,
    /// The client for destinations inside an operator override's target (local fakes included):
    /// the system resolver, no address rule.
    pub(crate) http_override: reqwest::Client,
    /// Where plugin kv lives (the host database's store); `None` when the host runs without one.
    pub(crate) kv: Option<Arc<dyn KvBackend>>,
    /// Wall clock.
    pub(crate) clock: Arc<dyn Clock>,
    /// Limits.
    pub(crate) limits: ServiceLimits,
    /// Operator policy applied to every plugin's grants.
    pub(crate) operator: OperatorPolicy,
}

impl Services {
    /// Builds the services. `kv` is where plugin kv lives (the host database's kv store), if
    /// anywhere.
    pub fn new(
        kv: Option<Arc<dyn KvBackend>>,
        operator: OperatorPolicy,
        limits: ServiceLimits,
    ) -> Services {
        // Plugin egress goes direct, never through a proxy from the environment: a proxy would
        // resolve the destination itself, out of reach of the address rule.
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .dns_resolver(dns::PublicOnly::shared())
            .build()
            .expect("the TLS backend initialises");
        let http_override = builder().build().expect("the TLS backend initialises");
        Services {
            http,
            http_override,
            kv,
            clock: Arc::new(SystemClock),
            limits,
            operator,
        }
    }

    /// Replaces the clock (tests inject one).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Services {
        self.clock = clock;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &ServiceLimits {
        &self.limits
    }

    /// The operator policy in force.
    pub fn operator(&self) -> &OperatorPolicy {
        &self.operator
    }
}

/// The WASI 0.2 interfaces a plugin gets (names without the `@version`): what a
/// `wasm32-wasip2` Rust std guest imports, none of which reaches outside the store. `wasi:cli`
/// gives no environment variables or arguments (empty), an empty stdin, and stdout/stderr that
/// the host captures or drops; `wasi:clocks/wall-clock` is the host's clock only with the `clock`
/// grant and reads the Unix epoch otherwise ([`clock::WasiWallClock`]); the monotonic clock and
/// randomness (guest std seeds its hash maps from it) are the real ones.
///
/// `wasi:filesystem` is linked with no preopened directories: a guest can list the preopens
/// (there are none) but can never hold a descriptor, so no file is reachable. It is linked at
/// all because language runtimes import it whether the plugin touches files or not (the
/// StarlingMonkey engine of componentize-js does), and refusing them would refuse every
/// JavaScript plugin for an import that can do nothing.
///
/// Not linked at all: `wasi:sockets` (egress goes through the `http` capability, under the
/// policy), `wasi:http`, and anything else. A component importing them is refused at load,
/// naming them ([`unlinked_wasi`]).
pub const WASI_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// The `wasi:` imports among `imports` (component import names such as
/// `wasi:sockets/tcp@0.2.6`) that are not in [`WASI_INTERFACES`], so would not link.
pub fn unlinked_wasi<'a>(imports: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    imports
        .into_iter()
        .filter(|name| name.starts_with("wasi:"))
        .filter(|name| {
            let interface = name
                .split_once('@')
                .map_or(*name, |(interface, _)| interface);
            !WASI_INTERFACES.contains(&interface)
        })
        .collect()
}

/// Links exactly [`WASI_INTERFACES`].
fn link_wasi<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, filesystem, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    // wasi:io (error, poll, streams), both clocks, wasi:random/random, stdin, stdout, stderr.
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(linker)?;
    let l = linker;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    // Over the store's WASI context, which preopens no directory (`HostState::new`).
    filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    Ok(())
}

/// Links the plugin's WASI ([`WASI_INTERFACES`]) and exactly the granted host interfaces, which
/// run on the [`CallState`] that `imports` finds in the store's data.
pub(crate) fn link<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    grants: &Grants,
    imports: fn(&mut T) -> &mut CallState,
) -> wasmtime::Result<()> {
    link_wasi(linker)?;
    wit::types::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    wit::installation::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    wit::crypto::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    if grants.log {
        wit::log::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    }
    if grants.clock {
        wit::clock::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    }
    if grants.http.is_some() {
        wit::http::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    }
    if grants.kv.is_some() {
        wit::kv::add_to_linker::<_, HasSelf<CallState>>(linker, imports)?;
    }
    Ok(())
}

impl wit::types::Host for CallState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_linked_wasi_interfaces_pass() {
        let imports = [
            "switchboard:channel/http@0.1.0",
            "wasi:io/streams@0.2.6",
            "wasi:cli/environment@0.2.6",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:random/insecure-seed@0.2.4",
            "wasi:filesystem/types@0.2.6",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
        ];
        assert_eq!(
            unlinked_wasi(imports),
            vec!["wasi:sockets/tcp@0.2.6", "wasi:http/outgoing-handler@0.2.6",]
        );
    }
}
