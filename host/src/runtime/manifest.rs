//! Plugin manifests: what a plugin is, which contract it implements, which capabilities it asks
//! for and its per-call budgets.
//!
//! A manifest is TOML, embedded in the component as the `switchboard-manifest` custom section (the
//! guest SDK's `manifest!` macro) or placed beside the `.wasm` file as `<stem>.toml`. This module
//! only parses and validates; granting capabilities is `capabilities::policy`'s job.

use std::time::Duration;

use serde::Deserialize;

use crate::capabilities::policy::{AllowList, AllowListError};
use crate::capabilities::{KvRequest, Requests};
use crate::domain::schema::{InstallationSchema, RawSchema};

/// Name of the custom section holding an embedded manifest.
pub const MANIFEST_SECTION: &str = "switchboard-manifest";

/// The contract version this host implements (the `switchboard:channel` WIT package).
pub const CONTRACT_VERSION: semver::Version = semver::Version::new(0, 2, 0);

/// Budget used for an export whose manifest names none.
const DEFAULT_CALL_BUDGET_MS: u64 = 1_000;
/// Memory cap used when the manifest names none.
const DEFAULT_MEMORY_MIB: u64 = 64;
/// Hard ceiling on any plugin's memory, whatever its manifest asks for.
pub const MAX_MEMORY_MIB: u64 = 1_024;

/// A validated plugin manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Unique plugin name (`chat`).
    pub name: String,
    /// The plugin's own version.
    pub version: semver::Version,
    /// Channel type it serves (`chat`).
    pub channel: String,
    /// WIT contract version it was built against.
    pub contract: semver::Version,
    /// One-line description.
    pub description: String,
    /// Requested capabilities.
    pub capabilities: Requests,
    /// Per-call budgets.
    pub budgets: Budgets,
    /// How the plugin receives events.
    pub transports: Transports,
    /// Optional exports the plugin really implements.
    pub features: Features,
    /// The config and secret keys an installation takes.
    pub installation: InstallationSchema,
    /// Outbound rate limits the channel imposes (manifest `[pacing]`).
    pub pacing: Pacing,
}

/// Outbound sends per second the channel allows (manifest `[pacing]`); the host's delivery
/// layer waits for a token before every plugin call that sends. `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pacing {
    /// Sends per second to one chat (`per_chat_per_s`).
    pub per_chat_per_s: Option<f64>,
    /// Sends per second for one installation, all chats together (`per_installation_per_s`).
    pub per_installation_per_s: Option<f64>,
}

/// The highest rate `[pacing]` accepts: beyond it pacing is meaningless.
const MAX_PACING_PER_S: f64 = 10_000.0;

/// The transports a plugin serves (manifest `transports`). The host never calls a transport
/// export of one the plugin did not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transports {
    /// `webhook`: `verify-webhook` and `routing-key` on the hooks URLs.
    pub webhook: bool,
    /// `websocket`: `plan-connection`, `classify-frame`, `build-ack`.
    pub websocket: bool,
    /// `long-poll`: `plan-poll` and `parse-poll`.
    pub long_poll: bool,
}

impl Transports {
    /// Whether the host keeps a connection (WebSocket or long poll) open per installation.
    pub fn connected(&self) -> bool {
        self.websocket || self.long_poll
    }
}

/// Optional features (manifest `[features]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `set-typing` works.
    pub typing: bool,
    /// `stream-begin`/`stream-update`/`stream-end` work.
    pub streaming: bool,
    /// The decoder emits actions.
    pub actions: bool,
    /// `fetch-attachment` works.
    pub attachments: bool,
    /// Least time between two `stream-update` calls of one reply.
    pub stream_interval: Duration,
    /// While a typing indicator is shown, `set-typing` is called again this often (channels whose
    /// indicator fades by itself); `None`: once.
    pub typing_refresh: Option<Duration>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            typing: false,
            streaming: false,
            actions: false,
            attachments: false,
            stream_interval: Duration::from_millis(DEFAULT_STREAM_INTERVAL_MS),
            typing_refresh: None,
        }
    }
}

/// `stream_interval_ms` when the manifest names none.
const DEFAULT_STREAM_INTERVAL_MS: u64 = 1_000;

/// Per-export deadlines and the memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// `transport` calls (frames, ACKs, webhook verification, connect plan).
    pub transport: Duration,
    /// `decoder` calls.
    pub decoder: Duration,
    /// `enricher` calls (they wait on the network).
    pub enricher: Duration,
    /// `commands` calls.
    pub commands: Duration,
    /// `outbound` calls (they wait on the network).
    pub outbound: Duration,
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The TOML does not parse or has unknown fields.
    #[error("manifest of {origin} is not valid TOML for a plugin manifest: {message}")]
    Syntax {
        /// Where the manifest came from.
        origin: String,
        /// The parser's message (names the offending line and key).
        message: String,
    },
    /// A field has an unusable value.
    #[error("manifest of {origin}: `{field}` {problem}")]
    Invalid {
        /// Where the manifest came from.
        origin: String,
        /// The field.
        field: &'static str,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// An allow-list (`capabilities.http` or `capabilities.websocket`) has an unusable entry.
    #[error("manifest of {origin}: capabilities.{field}: {source}")]
    AllowList {
        /// Where the manifest came from.
        origin: String,
        /// `http` or `websocket`.
        field: &'static str,
        /// The entry problem.
        #[source]
        source: AllowListError,
    },
    /// Neither an embedded section nor a file beside the component.
    #[error(
        "{origin} has no manifest: embed one with `switchboard_plugin_sdk::manifest!(\"manifest.toml\")` \
         or put `{beside}` next to it"
    )]
    Missing {
        /// The component.
        origin: String,
        /// The file name that would have been read.
        beside: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    channel: String,
    contract: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    transports: Vec<String>,
    #[serde(default)]
    features: RawFeatures,
    #[serde(default)]
    installation: RawSchema,
    #[serde(default)]
    pacing: RawPacing,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPacing {
    #[serde(default)]
    per_chat_per_s: Option<f64>,
    #[serde(default)]
    per_installation_per_s: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFeatures {
    #[serde(default)]
    typing: bool,
    #[serde(default)]
    streaming: bool,
    #[serde(default)]
    actions: bool,
    #[serde(default)]
    attachments: bool,
    stream_interval_ms: Option<u64>,
    typing_refresh_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    #[serde(default)]
    log: bool,
    #[serde(default)]
    clock: bool,
    http: Option<Vec<String>>,
    kv: Option<KvRequest>,
    websocket: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    transport_ms: Option<u64>,
    decoder_ms: Option<u64>,
    enricher_ms: Option<u64>,
    commands_ms: Option<u64>,
    outbound_ms: Option<u64>,
    memory_mib: Option<u64>,
}

impl Manifest {
    /// Parses and validates manifest TOML. `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |field: &'static str, problem: String| ManifestError::Invalid {
            origin: origin.to_string(),
            field,
            problem,
        };
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid(
                "name",
                format!(
                    "is {:?}; use lowercase letters, digits, `-` and `_`",
                    raw.name
                ),
            ));
        }
        if raw.channel.is_empty() {
            return Err(invalid(
                "channel",
                "must name the channel type, e.g. \"chat\"".into(),
            ));
        }
        let version = semver::Version::parse(&raw.version)
            .map_err(|e| invalid("version", format!("is {:?}, not semver: {e}", raw.version)))?;
        let contract = semver::Version::parse(&raw.contract).map_err(|e| {
            invalid(
                "contract",
                format!(
                    "is {:?}, not a version like \"{CONTRACT_VERSION}\": {e}",
                    raw.contract
                ),
            )
        })?;
        let http = raw
            .capabilities
            .http
            .map(|entries| AllowList::parse(&entries))
            .transpose()
            .map_err(|source| ManifestError::AllowList {
                origin: origin.to_string(),
                field: "http",
                source,
            })?;
        let websocket = raw
            .capabilities
            .websocket
            .map(|entries| AllowList::parse_websocket(&entries))
            .transpose()
            .map_err(|source| ManifestError::AllowList {
                origin: origin.to_string(),
                field: "websocket",
                source,
            })?;
        if let Some(kv) = raw.capabilities.kv
            && (kv.max_keys == 0 || kv.max_bytes == 0)
        {
            return Err(invalid(
                "capabilities.kv",
                "quotas must be greater than zero".into(),
            ));
        }
        let ms = |value: Option<u64>, field: &'static str| -> Result<Duration, ManifestError> {
            match value {
                None => Ok(Duration::from_millis(DEFAULT_CALL_BUDGET_MS)),
                Some(0) => Err(invalid(field, "must be at least 1 millisecond".into())),
                Some(v) if v > 600_000 => Err(invalid(
                    field,
                    format!("is {v} ms; the ceiling is 600000 (10 minutes)"),
                )),
                Some(v) => Ok(Duration::from_millis(v)),
            }
        };
        let mut transports = Transports::default();
        for name in &raw.transports {
            match name.as_str() {
                "webhook" => transports.webhook = true,
                "websocket" => transports.websocket = true,
                "long-poll" => transports.long_poll = true,
                other => {
                    return Err(invalid(
                        "transports",
                        format!(
                            "names {other:?}; the transports are \"webhook\", \"websocket\" and \"long-poll\""
                        ),
                    ));
                }
            }
        }
        // A manifest of another contract may have no `transports`: let the loader refuse it for
        // its contract version, which names both versions, instead of for this key.
        let this_contract =
            contract.major == CONTRACT_VERSION.major && contract.minor == CONTRACT_VERSION.minor;
        if transports == Transports::default() && this_contract {
            return Err(invalid(
                "transports",
                "must name at least one of \"webhook\", \"websocket\", \"long-poll\"".into(),
            ));
        }
        if transports.websocket && transports.long_poll {
            return Err(invalid(
                "transports",
                "may hold \"websocket\" or \"long-poll\", not both (one connection per installation)"
                    .into(),
            ));
        }
        let stream_interval_ms = raw
            .features
            .stream_interval_ms
            .unwrap_or(DEFAULT_STREAM_INTERVAL_MS);
        if !(50..=60_000).contains(&stream_interval_ms) {
            return Err(invalid(
                "features.stream_interval_ms",
                format!("is {stream_interval_ms}; use 50..=60000"),
            ));
        }
        let typing_refresh = match raw.features.typing_refresh_ms {
            None => None,
            Some(ms) if (1_000..=60_000).contains(&ms) && raw.features.typing => {
                Some(Duration::from_millis(ms))
            }
            Some(ms) if !raw.features.typing => {
                return Err(invalid(
                    "features.typing_refresh_ms",
                    format!("is {ms}, but `typing` is false: drop it or set typing = true"),
                ));
            }
            Some(ms) => {
                return Err(invalid(
                    "features.typing_refresh_ms",
                    format!("is {ms}; use 1000..=60000"),
                ));
            }
        };
        let installation =
            InstallationSchema::from_raw(raw.installation).map_err(|e| ManifestError::Invalid {
                origin: origin.to_string(),
                field: "installation",
                problem: e.to_string(),
            })?;
        // 0 (or absent) = unlimited; anything else a finite positive rate within bounds.
        let rate = |value: Option<f64>, field: &'static str| match value {
            None => Ok(None),
            Some(0.0) => Ok(None),
            Some(v) if v.is_finite() && v > 0.0 && v <= MAX_PACING_PER_S => Ok(Some(v)),
            Some(v) => Err(invalid(
                field,
                format!("is {v}; use 0 (unlimited) or a rate in (0, {MAX_PACING_PER_S}]"),
            )),
        };
        let pacing = Pacing {
            per_chat_per_s: rate(raw.pacing.per_chat_per_s, "pacing.per_chat_per_s")?,
            per_installation_per_s: rate(
                raw.pacing.per_installation_per_s,
                "pacing.per_installation_per_s",
            )?,
        };
        let memory_mib = raw.budgets.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib == 0 || memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "budgets.memory_mib",
                format!("is {memory_mib}; use 1..={MAX_MEMORY_MIB}"),
            ));
        }
        Ok(Manifest {
            name: raw.name,
            version,
            channel: raw.channel,
            contract,
            description: raw.description,
            capabilities: Requests {
                log: raw.capabilities.log,
                clock: raw.capabilities.clock,
                http,
                kv: raw.capabilities.kv,
                websocket,
            },
            budgets: Budgets {
                transport: ms(raw.budgets.transport_ms, "budgets.transport_ms")?,
                decoder: ms(raw.budgets.decoder_ms, "budgets.decoder_ms")?,
                enricher: ms(raw.budgets.enricher_ms, "budgets.enricher_ms")?,
                commands: ms(raw.budgets.commands_ms, "budgets.commands_ms")?,
                outbound: ms(raw.budgets.outbound_ms, "budgets.outbound_ms")?,
                memory_bytes: memory_mib * 1024 * 1024,
            },
            transports,
            features: Features {
                typing: raw.features.typing,
                streaming: raw.features.streaming,
                actions: raw.features.actions,
                attachments: raw.features.attachments,
                stream_interval: Duration::from_millis(stream_interval_ms),
                typing_refresh,
            },
            installation,
            pacing,
        })
    }

    /// Reads the embedded manifest section of a component, if it has one.
    pub fn embedded_text(component_bytes: &[u8]) -> Option<String> {
        // `parse_all` walks nested core modules too: the SDK's section lives inside the core
        // module that the component wraps.
        for payload in wasmparser::Parser::new(0).parse_all(component_bytes) {
            if let Ok(wasmparser::Payload::CustomSection(section)) = payload
                && section.name() == MANIFEST_SECTION
            {
                return String::from_utf8(section.data().to_vec()).ok();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "chat"
version = "0.1.0"
channel = "chat"
contract = "0.2.0"
transports = ["webhook"]
[capabilities]
log = true
http = ["https://api.example.com"]
kv = { max_keys = 10, max_bytes = 100 }
[budgets]
decoder_ms = 50
memory_mib = 32
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(GOOD, "test").unwrap();
        assert_eq!(m.name, "chat");
        assert_eq!(m.contract, CONTRACT_VERSION);
        assert!(m.capabilities.log && !m.capabilities.clock);
        assert_eq!(
            m.capabilities.kv,
            Some(KvRequest {
                max_keys: 10,
                max_bytes: 100
            })
        );
        assert_eq!(m.budgets.decoder, Duration::from_millis(50));
        assert_eq!(
            m.budgets.transport,
            Duration::from_millis(DEFAULT_CALL_BUDGET_MS)
        );
        assert_eq!(m.budgets.memory_bytes, 32 << 20);
    }

    #[test]
    fn typing_refresh_needs_typing_and_a_sane_interval() {
        let with = |features: &str| {
            Manifest::parse(
                &GOOD.replace(
                    "[capabilities]",
                    &format!("[features]\n{features}\n[capabilities]"),
                ),
                "x",
            )
        };
        let m = with("typing = true\ntyping_refresh_ms = 4000").unwrap();
        assert_eq!(m.features.typing_refresh, Some(Duration::from_secs(4)));
        assert_eq!(with("typing = true").unwrap().features.typing_refresh, None);
        let err = with("typing_refresh_ms = 4000").unwrap_err();
        assert!(err.to_string().contains("typing = true"), "{err}");
        let err = with("typing = true\ntyping_refresh_ms = 10").unwrap_err();
        assert!(err.to_string().contains("1000..=60000"), "{err}");
    }

    #[test]
    fn pacing_is_validated_and_zero_means_unlimited() {
        let with = |pacing: &str| Manifest::parse(&format!("{GOOD}[pacing]\n{pacing}\n"), "x");
        assert_eq!(
            Manifest::parse(GOOD, "x").unwrap().pacing,
            Pacing::default()
        );
        let m = with("per_chat_per_s = 5\nper_installation_per_s = 50").unwrap();
        assert_eq!(
            m.pacing,
            Pacing {
                per_chat_per_s: Some(5.0),
                per_installation_per_s: Some(50.0)
            }
        );
        let m = with("per_chat_per_s = 0.5\nper_installation_per_s = 0").unwrap();
        assert_eq!(m.pacing.per_chat_per_s, Some(0.5));
        assert_eq!(m.pacing.per_installation_per_s, None, "0 = unlimited");
        let err = with("per_chat_per_s = -1").unwrap_err();
        assert!(err.to_string().contains("pacing.per_chat_per_s"), "{err}");
        let err = with("per_installation_per_s = 1e9").unwrap_err();
        assert!(
            err.to_string().contains("pacing.per_installation_per_s"),
            "{err}"
        );
        let err = with("per_second = 5").unwrap_err();
        assert!(err.to_string().contains("per_second"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_with_the_key_named() {
        let err = Manifest::parse(&GOOD.replace("log = true", "logs = true"), "test").unwrap_err();
        assert!(err.to_string().contains("logs"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err =
            Manifest::parse(&GOOD.replace("memory_mib = 32", "memory_mib = 0"), "x").unwrap_err();
        assert!(err.to_string().contains("budgets.memory_mib"), "{err}");
        let err = Manifest::parse(
            &GOOD.replace("contract = \"0.2.0\"", "contract = \"one\""),
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("contract"), "{err}");
        let err = Manifest::parse(&GOOD.replace("https://api.example.com", "*"), "x").unwrap_err();
        assert!(err.to_string().contains("capabilities.http"), "{err}");
    }
}
