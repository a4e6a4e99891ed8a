//! Host configuration: one TOML file with environment overrides, every default usable as is.
//!
//! Precedence: built-in defaults < the TOML file (`--config`, default `switchboard.toml` when it
//! exists) < environment variables `SWITCHBOARD_<SECTION>__<KEY>` (e.g.
//! `SWITCHBOARD_DATABASE__URL`) < command-line flags. This module only reads and validates; it
//! opens nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Database.
    pub database: DatabaseConfig,
    /// Secrets-at-rest key.
    pub secrets: SecretsConfig,
    /// Plugins.
    pub plugins: PluginsConfig,
    /// Inbound processing.
    pub ingest: IngestConfig,
    /// Long connections (installations with `connection = "websocket"`).
    pub connections: ConnectionsConfig,
    /// Session runs.
    pub runs: RunsConfig,
    /// Pruning of dedup, audit, binding-token and expired kv rows.
    pub retention: RetentionConfig,
    /// The delivery outbox (replies, error cards, notices).
    pub delivery: DeliveryConfig,
    /// The blob store: attachments downloaded after their message is stored.
    pub blobs: BlobsConfig,
    /// Agents by name (`[agents.<name>]`); an `echo` agent exists even when none is configured.
    pub agents: crate::agents::AgentsConfig,
    /// The product's name in notices (`{product}`; unset or blank: `switchboard`). The bot's
    /// name (`{bot}`) is each installation's `bot_name` config.
    pub product_name: Option<String>,
    /// The words of the host's notices, per locale: `[notices.<locale>] <kind> = "text"`, where
    /// kind is `binding_required`, `fresh_context`, `agent_offline`, `agent_archived`,
    /// `run_error`, `command_usage`, `help`, `status` or `info`; `{detail}`, `{reference}`,
    /// `{bot}` and `{product}` are filled in. Unset kinds keep the built-in text.
    pub notices: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// `[delivery]`: how the outbox delivers replies, error cards and notices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How often each replica looks for due rows nobody woke it for (other replicas' rows,
    /// retries, rows of a replica that died).
    pub poll_interval_ms: u64,
    /// How long a claim holds a row: a replica that dies mid-delivery leaves it to another
    /// (or to itself after a restart) this long after claiming it.
    pub lease_ms: u64,
    /// Attempts before a row is given up (`failed`: admin API `GET /api/outbox?state=failed`,
    /// metric `switchboard_outbox_deliveries_total{outcome="failed"}`).
    pub attempts: u32,
    /// Wait before the second attempt, doubled for each further one…
    pub first_backoff_ms: u64,
    /// …up to this.
    pub max_backoff_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            poll_interval_ms: 1_000,
            lease_ms: 30_000,
            attempts: 8,
            first_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
        }
    }
}

impl DeliveryConfig {
    /// Checks every value's range; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let check = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "[delivery] {key} = {value} is out of range: use {min}..={max}"
                ))
            }
        };
        check("poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        check("lease_ms", self.lease_ms, 100, 3_600_000)?;
        check("attempts", u64::from(self.attempts), 1, 100)?;
        check("first_backoff_ms", self.first_backoff_ms, 1, 3_600_000)?;
        check(
            "max_backoff_ms",
            self.max_backoff_ms,
            self.first_backoff_ms,
            86_400_000,
        )?;
        Ok(())
    }
}

/// `[blobs]`: where downloaded attachments are kept and how they are downloaded (issue 18).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    /// Directory of the stored files (content-addressed by SHA-256; created when missing).
    /// Replicas sharing one PostgreSQL database must share this directory too (a network
    /// mount), or a worker asking one replica for a blob another stored gets 503 + retry.
    pub dir: PathBuf,
    /// Largest file stored, in bytes; a bigger attachment is refused and left as a `failed`
    /// placeholder (default 20 MiB).
    pub max_file_bytes: u64,
    /// Most bytes stored per installation; a download that would pass it fails the same way
    /// (default 1 GiB).
    pub max_installation_bytes: u64,
    /// Download attempts of one attachment before it is given up (`failed`).
    pub attempts: u32,
    /// Wait before the second attempt, doubled for each further one…
    pub first_backoff_ms: u64,
    /// …up to this.
    pub max_backoff_ms: u64,
    /// How long a claim holds a download: a replica that dies mid-download leaves it to
    /// another (or to the next start) after this.
    pub lease_ms: u64,
    /// How often each replica looks for due downloads nobody woke it for.
    pub poll_interval_ms: u64,
    /// How long a run waits for its messages' pending downloads before it starts anyway with
    /// placeholders (0: never waits).
    pub run_wait_ms: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        BlobsConfig {
            dir: PathBuf::from(".switchboard/blobs"),
            max_file_bytes: 20 << 20,
            max_installation_bytes: 1 << 30,
            attempts: 5,
            first_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            lease_ms: 60_000,
            poll_interval_ms: 500,
            run_wait_ms: 10_000,
        }
    }
}

impl BlobsConfig {
    /// Checks every value's range; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let check = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "[blobs] {key} = {value} is out of range: use {min}..={max}"
                ))
            }
        };
        if self.dir.as_os_str().is_empty() {
            return Err(
                "[blobs] dir is empty: name a directory, e.g. \".switchboard/blobs\"".into(),
            );
        }
        // The per-file cap bounds what one download holds in memory.
        check("max_file_bytes", self.max_file_bytes, 1, 1 << 30)?;
        check(
            "max_installation_bytes",
            self.max_installation_bytes,
            self.max_file_bytes,
            1 << 50,
        )?;
        check("attempts", u64::from(self.attempts), 1, 100)?;
        check("first_backoff_ms", self.first_backoff_ms, 1, 3_600_000)?;
        check(
            "max_backoff_ms",
            self.max_backoff_ms,
            self.first_backoff_ms,
            86_400_000,
        )?;
        check("lease_ms", self.lease_ms, 1_000, 3_600_000)?;
        check("poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        check("run_wait_ms", self.run_wait_ms, 0, 60_000)?;
        Ok(())
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token for the admin API (`/api/…`). Unset = the admin API answers 503. At least
    /// [`MIN_ADMIN_TOKEN_CHARS`](crate::auth::MIN_ADMIN_TOKEN_CHARS) characters (checked at
    /// start-up by [`ServerConfig::validate`]); only its SHA-256 is kept.
    pub admin_token: Option<String>,
    /// Bearer token `GET /metrics` requires. Unset = `/metrics` is open (what Prometheus
    /// scrapers expect by default; it holds counts only). Only its SHA-256 is kept.
    pub metrics_token: Option<String>,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Public base URL of this host: the installation URLs plugins register with the channel.
    pub public_url: String,
    /// Session event streams (SSE): the hub gathers a session's events per window of this
    /// length into one shared batch that every subscriber writes as one chunk (the first event
    /// after a quiet period goes out at once). Trades up to a window of stream latency on busy
    /// sessions for far less CPU with many subscribers; 0 = every event is written as soon as
    /// it arrives.
    pub event_coalesce_ms: u64,
    /// A request's headers must arrive within this, counted from when the connection opens or
    /// finished its previous response (so it is also the keep-alive idle timeout); slower
    /// connections are closed.
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this once its headers did; slower ones get 408.
    pub body_read_timeout_ms: u64,
    /// Outside a request handler, a connection on which no byte moves either way for this long
    /// is closed (a client that stopped reading its response or event stream). Above the
    /// event streams' 15 s keep-alive.
    pub idle_timeout_ms: u64,
    /// Connections served at once; further ones wait to be accepted until others close.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            metrics_token: None,
            max_body_bytes: 1 << 20,
            public_url: "http://127.0.0.1:8080".into(),
            event_coalesce_ms: 10,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 1_024,
        }
    }
}

/// Checks that `[section] key` is within `min..=max`, naming the key, its environment
/// variable and the range.
fn check_range(section: &str, key: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (min..=max).contains(&value),
        "{section}.{key} (SWITCHBOARD_{}__{}) is {value}; it must be between {min} and {max}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    );
    Ok(())
}

/// One hour, in milliseconds.
const HOUR_MS: u64 = 3_600_000;
/// One day, in milliseconds.
const DAY_MS: u64 = 24 * HOUR_MS;

impl ServerConfig {
    /// Checks the operator tokens before anything starts: an admin token shorter than
    /// [`MIN_ADMIN_TOKEN_CHARS`](crate::auth::MIN_ADMIN_TOKEN_CHARS) characters and an empty
    /// metrics token are refused, with what to do instead. Every number must be within its
    /// range (the error names the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |key, value: u64, min, max| check_range("server", key, value, min, max);
        check(
            "max_body_bytes",
            self.max_body_bytes as u64,
            1_024,
            256 << 20,
        )?;
        check("event_coalesce_ms", self.event_coalesce_ms, 0, 10_000)?;
        check(
            "header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
            600_000,
        )?;
        check(
            "body_read_timeout_ms",
            self.body_read_timeout_ms,
            100,
            HOUR_MS,
        )?;
        let keep_alive = crate::api::events::KEEP_ALIVE_INTERVAL.as_millis() as u64;
        check(
            "idle_timeout_ms",
            self.idle_timeout_ms,
            keep_alive + 5_000,
            DAY_MS,
        )?;
        check("max_connections", self.max_connections as u64, 1, 1_000_000)?;
        use crate::auth::MIN_ADMIN_TOKEN_CHARS;
        if let Some(token) = &self.admin_token {
            let chars = token.chars().count();
            anyhow::ensure!(
                chars >= MIN_ADMIN_TOKEN_CHARS,
                "server.admin_token (SWITCHBOARD_SERVER__ADMIN_TOKEN) is {chars} characters long; \
                 it must have at least {MIN_ADMIN_TOKEN_CHARS}: generate one with \
                 `openssl rand -hex 32` (or leave it unset to disable the admin API)"
            );
        }
        if let Some(token) = &self.metrics_token {
            anyhow::ensure!(
                !token.is_empty(),
                "server.metrics_token (SWITCHBOARD_SERVER__METRICS_TOKEN) is empty: set a token \
                 (e.g. `openssl rand -hex 32`) or leave it unset to keep /metrics open"
            );
        }
        Ok(())
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://file.db` (created if missing) or `postgres://user@host/db`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://switchboard.db".into(),
        }
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// 32-byte key, hex or base64. Takes precedence over `key_file`.
    pub key: Option<String>,
    /// File holding the key; when `key` is unset and the file is missing, created with a fresh
    /// key only for a SQLite database holding no sealed secrets (else start-up is refused).
    pub key_file: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            key: None,
            key_file: PathBuf::from(".switchboard/secret.key"),
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Extra plugins directory (`*.wasm`); `--plugins-dir` overrides it.
    pub dir: Option<PathBuf>,
    /// Precompiled-artifact cache; set from `--cache-dir` / `--no-cache` (not read from the file).
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
    /// Operator base-URL overrides: origin a plugin uses → where requests go instead.
    pub base_urls: BTreeMap<String, String>,
    /// The sha256 pins of directory plugins (`switchboard plugins lock` writes it).
    pub lock_file: PathBuf,
    /// Refuse (at start and on reload) any directory plugin the lock file does not pin at its
    /// exact digest.
    pub strict: bool,
    /// How long a plugin version swapped in by a reload is watched, in seconds.
    pub probation_s: u64,
    /// Failed calls within the probation window that roll the new version back.
    pub probation_failures: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            cache_dir: Some(PathBuf::from(".switchboard/cache")),
            base_urls: BTreeMap::new(),
            lock_file: PathBuf::from("plugins.lock"),
            strict: false,
            probation_s: 60,
            probation_failures: 3,
        }
    }
}

impl PluginsConfig {
    /// Every number within its range (the error names the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        check_range("plugins", "probation_s", self.probation_s, 1, 86_400)?;
        check_range(
            "plugins",
            "probation_failures",
            self.probation_failures,
            1,
            1_000_000,
        )
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Time the enricher may spend per message, from arrival.
    pub enrich_budget_ms: u64,
    /// Replay window of signed webhook requests: a request whose signed timestamp is further
    /// than this from the host's clock (either way) is refused with 401. Channels re-sign
    /// their redeliveries, so a late retry carries a fresh timestamp and still passes.
    pub webhook_max_skew_s: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enrich_budget_ms: 2_000,
            webhook_max_skew_s: 300,
        }
    }
}

impl IngestConfig {
    /// Every number within its range (the error names the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        check_range(
            "ingest",
            "enrich_budget_ms",
            self.enrich_budget_ms,
            0,
            60_000,
        )?;
        // Up to 100 years: wider windows only make sense for recorded test deliveries.
        let century_s = 100 * DAY_MS / 1_000 * 365;
        check_range(
            "ingest",
            "webhook_max_skew_s",
            self.webhook_max_skew_s,
            1,
            century_s,
        )
    }
}

/// `[connections]`: long connections and their ownership leases (SPEC §3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Hold long connections at all (off: webhook-only host).
    pub enabled: bool,
    /// How often installations are checked for connections to start, stop or restart.
    pub poll_interval_ms: u64,
    /// Lease lifetime; another replica can take an installation over this long after its owner
    /// stopped renewing.
    pub lease_ttl_ms: u64,
    /// Lease renewal period (jittered ±10 %); must be below the TTL.
    pub lease_renew_interval_ms: u64,
    /// The connection closes this long before an unrenewed lease could expire.
    pub lease_safety_margin_ms: u64,
    /// First reconnect delay (doubles, jittered ×0.5–1.5).
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay.
    pub backoff_max_ms: u64,
    /// A connection that lived this long resets the reconnect delay.
    pub backoff_reset_after_ms: u64,
    /// Application ping period when the server does not say.
    pub ping_interval_ms: u64,
    /// Deadline of every socket write.
    pub write_timeout_ms: u64,
    /// Deadline of the WebSocket handshake.
    pub handshake_timeout_ms: u64,
}

impl ConnectionsConfig {
    /// Every number within its range (the error names the key and the range); how they relate
    /// (renewal below the TTL, …) is checked by `SupervisorSettings::validate`.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |key, value, min, max| check_range("connections", key, value, min, max);
        check("poll_interval_ms", self.poll_interval_ms, 10, HOUR_MS)?;
        check("lease_ttl_ms", self.lease_ttl_ms, 100, DAY_MS)?;
        check(
            "lease_renew_interval_ms",
            self.lease_renew_interval_ms,
            10,
            DAY_MS,
        )?;
        check(
            "lease_safety_margin_ms",
            self.lease_safety_margin_ms,
            1,
            DAY_MS,
        )?;
        check("backoff_initial_ms", self.backoff_initial_ms, 1, HOUR_MS)?;
        check(
            "backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_initial_ms,
            DAY_MS,
        )?;
        check(
            "backoff_reset_after_ms",
            self.backoff_reset_after_ms,
            0,
            DAY_MS,
        )?;
        check("ping_interval_ms", self.ping_interval_ms, 100, HOUR_MS)?;
        check("write_timeout_ms", self.write_timeout_ms, 10, 600_000)?;
        check(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            10,
            600_000,
        )
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            enabled: true,
            poll_interval_ms: 5_000,
            lease_ttl_ms: 60_000,
            lease_renew_interval_ms: 20_000,
            lease_safety_margin_ms: 5_000,
            backoff_initial_ms: 2_000,
            backoff_max_ms: 60_000,
            backoff_reset_after_ms: 60_000,
            ping_interval_ms: 120_000,
            write_timeout_ms: 10_000,
            handshake_timeout_ms: 15_000,
        }
    }
}

/// `[runs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsConfig {
    /// A running run whose last heartbeat is older than this goes back to pending (checked at
    /// boot and every fifth of this window).
    pub stale_after_ms: u64,
    /// How often every replica looks for debounce windows overdue by this much, whoever armed
    /// them: a window whose replica died is flushed at most twice this late.
    pub window_sweep_ms: u64,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            // Workers are told to heartbeat every tenth of this (6 s): a minute of silence is
            // ten missed beats, and a crashed worker's session is pending again within ~72 s
            // instead of holding it for five minutes.
            stale_after_ms: 60_000,
            window_sweep_ms: 1_000,
        }
    }
}

impl RunsConfig {
    /// Every number within its range (the error names the key and the range).
    pub fn validate(&self) -> anyhow::Result<()> {
        check_range("runs", "stale_after_ms", self.stale_after_ms, 1_000, DAY_MS)?;
        check_range("runs", "window_sweep_ms", self.window_sweep_ms, 10, 60_000)
    }
}

/// `[retention]`: a background task that prunes what only matters for a while (issue 14).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Run the task at all (off: nothing is ever pruned).
    pub enabled: bool,
    /// Seconds between passes (1 to 604800).
    pub interval_s: u64,
    /// Seconds from start-up to the first pass (0 to 86400).
    pub first_run_after_s: u64,
    /// Dedup claims are kept this many days (1 to 3650); a redelivery of an older message is
    /// processed again. Channels redeliver for hours at most (one retries up to about 6 hours).
    pub dedup_days: u64,
    /// Drop-audit rows are kept this many days (1 to 3650).
    pub audit_days: u64,
    /// Delivered outbox rows (replies, notices) are kept this many days (1 to 3650); failed
    /// ones stay until an operator retries them.
    pub outbox_days: u64,
    /// Unused binding tokens, and pairing codes whatever became of them, are deleted this many
    /// hours after they expired (0 to 8760); used binding tokens at the next pass.
    pub binding_token_grace_hours: u64,
    /// Downloaded attachments (blobs) are kept this many days (1 to 3650), then deleted with
    /// their files; failed ones (placeholders) and those of deleted sessions go too.
    pub blob_days: u64,
    /// Most rows one delete statement removes (1 to 100000); a pass repeats it until a batch
    /// comes back short, letting other writers in between batches.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            interval_s: 3_600,
            first_run_after_s: 60,
            dedup_days: 7,
            audit_days: 30,
            outbox_days: 7,
            binding_token_grace_hours: 24,
            blob_days: 30,
            batch_size: 1_000,
        }
    }
}

impl RetentionConfig {
    /// Checks every value's range, naming the key, its environment variable and the range.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn check(key: &str, value: u64, min: u64, max: u64, unit: &str) -> anyhow::Result<()> {
            anyhow::ensure!(
                (min..=max).contains(&value),
                "retention.{key} (SWITCHBOARD_RETENTION__{}) is {value}; it must be between \
                 {min} and {max} {unit}",
                key.to_ascii_uppercase()
            );
            Ok(())
        }
        check("interval_s", self.interval_s, 1, 7 * 86_400, "seconds")?;
        check(
            "first_run_after_s",
            self.first_run_after_s,
            0,
            86_400,
            "seconds",
        )?;
        check("dedup_days", self.dedup_days, 1, 3_650, "days")?;
        check("audit_days", self.audit_days, 1, 3_650, "days")?;
        check("outbox_days", self.outbox_days, 1, 3_650, "days")?;
        check("blob_days", self.blob_days, 1, 3_650, "days")?;
        check(
            "binding_token_grace_hours",
            self.binding_token_grace_hours,
            0,
            8_760,
            "hours",
        )?;
        check("batch_size", u64::from(self.batch_size), 1, 100_000, "rows")?;
        Ok(())
    }
}

/// The file read when `--config` is not given (only if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "switchboard.toml";

impl Config {
    /// Loads defaults, then `file` (required to exist when given explicitly), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                anyhow::ensure!(
                    path.exists(),
                    "config file {} does not exist",
                    path.display()
                );
                figment = figment.merge(Toml::file(path));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        // Only sectioned variables (`SWITCHBOARD_DATABASE__URL`) are config; flat ones such as
        // `SWITCHBOARD_PLUGINS_DIR` belong to command-line flags.
        let sectioned = Env::prefixed("SWITCHBOARD_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        figment = figment.merge(sectioned);
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        crate::agents::AgentRegistry::from_config(&config.agents)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// Checks the sections the host starts with before anything opens: `[server]` (tokens
    /// and numbers), `[ingest]`, `[connections]` and `[runs]`; every number must be within
    /// its range, and the error names the key, its environment variable and the range.
    /// `App::build` calls it.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.ingest.validate()?;
        self.connections.validate()?;
        self.runs.validate()?;
        self.plugins.validate()?;
        let unknown = crate::domain::notice::NoticeTexts::new(self.notices.clone()).unknown_keys();
        if !unknown.is_empty() {
            anyhow::bail!(
                "invalid configuration: {} name no notice; the notices are binding_required, \
                 fresh_context, agent_offline, agent_archived, run_error, command_usage, help, \
                 status and info, and the texts stream_interrupted, pairing_full and \
                 pairing_approved",
                unknown.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_out_of_the_box() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database.url.starts_with("sqlite://"));
        assert_eq!(c.ingest.enrich_budget_ms, 2000);
        assert_eq!(c.server.event_coalesce_ms, 10);
    }

    #[test]
    fn short_admin_tokens_and_empty_metrics_tokens_are_refused() {
        let mut server = ServerConfig::default();
        server.validate().expect("no tokens: valid");
        server.admin_token = Some("change-me!".into());
        let err = server.validate().unwrap_err().to_string();
        assert!(
            err.contains("10 characters") && err.contains("openssl rand -hex 32"),
            "{err}"
        );
        assert!(
            !err.contains("change-me!"),
            "the token is never shown: {err}"
        );
        server.admin_token = Some("é".repeat(31));
        assert!(server.validate().is_err(), "characters, not bytes, count");
        server.admin_token = Some("x".repeat(32));
        server.validate().expect("32 characters are enough");
        server.metrics_token = Some(String::new());
        let err = server.validate().unwrap_err().to_string();
        assert!(err.contains("metrics_token"), "{err}");
        server.metrics_token = Some("scrape".into());
        server.validate().expect("any non-empty metrics token");
    }

    #[test]
    fn retention_defaults_and_ranges() {
        let mut retention = Config::default().retention;
        retention.validate().expect("defaults are valid");
        assert!(retention.enabled);
        assert_eq!((retention.dedup_days, retention.audit_days), (7, 30));
        assert_eq!((retention.interval_s, retention.batch_size), (3_600, 1_000));
        retention.dedup_days = 0;
        let err = retention.validate().unwrap_err().to_string();
        assert!(
            err.contains("retention.dedup_days")
                && err.contains("SWITCHBOARD_RETENTION__DEDUP_DAYS")
                && err.contains("between 1 and 3650 days"),
            "{err}"
        );
        retention.dedup_days = 7;
        retention.batch_size = 0;
        let err = retention.validate().unwrap_err().to_string();
        assert!(err.contains("retention.batch_size"), "{err}");
        retention.batch_size = 10;
        retention.interval_s = 0;
        let err = retention.validate().unwrap_err().to_string();
        assert!(err.contains("retention.interval_s"), "{err}");
        retention.interval_s = 1;
        retention.first_run_after_s = 0;
        retention.binding_token_grace_hours = 0;
        retention.validate().expect("the smallest values are valid");
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nevent_coalesce_ms = 0\n[database]\nurl = \"postgres://x@127.0.0.1/db\"\n[plugins.base_urls]\n\"https://api.example.com\" = \"http://127.0.0.1:9\"\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.database.url, "postgres://x@127.0.0.1/db");
        assert_eq!(c.server.event_coalesce_ms, 0);
        assert_eq!(
            c.plugins
                .base_urls
                .get("https://api.example.com")
                .map(String::as_str),
            Some("http://127.0.0.1:9")
        );
        std::fs::write(&path, "[database]\nurll = \"x\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn every_number_is_bounded_with_a_clear_message() {
        let config = Config::default();
        config.validate().expect("defaults are valid");
        let mut c = config.clone();
        c.server.header_read_timeout_ms = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("server.header_read_timeout_ms")
                && err.contains("SWITCHBOARD_SERVER__HEADER_READ_TIMEOUT_MS")
                && err.contains("between 100 and 600000"),
            "{err}"
        );
        let mut c = config.clone();
        c.server.idle_timeout_ms = 15_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.idle_timeout_ms"), "{err}");
        let mut c = config.clone();
        c.server.max_connections = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_connections")
        );
        let mut c = config.clone();
        c.runs.stale_after_ms = u64::MAX;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("runs.stale_after_ms")
        );
        let mut c = config.clone();
        c.connections.backoff_max_ms = c.connections.backoff_initial_ms - 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("backoff_max_ms")
        );
        let mut c = config.clone();
        c.ingest.webhook_max_skew_s = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("webhook_max_skew_s")
        );
        let mut c = config;
        c.ingest.webhook_max_skew_s = 20 * 365 * 24 * 3600;
        c.validate()
            .expect("a 20-year replay window (recorded fixtures) is allowed");
    }
}
