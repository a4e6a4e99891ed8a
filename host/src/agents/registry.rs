//! Agent configuration (`[agents.<name>]`) and the validated [`AgentRegistry`] built from it.
//!
//! The raw, serde-facing [`AgentConfig`] is what `config.rs` reads (TOML file + the
//! `SWITCHBOARD_AGENTS__<NAME>__<KEY>` environment overrides). [`AgentRegistry::from_config`]
//! validates every section into an [`AgentSpec`]; a problem is an [`AgentConfigError`] naming the
//! agent, the key, and what to write instead. The registry answers "does this agent exist, may it
//! run, is a worker online" and verifies worker bearer tokens (only their SHA-256 is kept).
//!
//! Holds no state that changes: when a worker was last seen is the caller's (the run store's)
//! business and is passed in, as is the current time.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::TokenDigest;

/// The name of the agent that exists even when nothing is configured (kind `echo`).
pub const DEFAULT_AGENT: &str = "echo";
/// Default OpenAI-compatible endpoint origin (`{base_url}/v1/chat/completions` is called).
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com";
/// Default whole-response deadline of an `openai` agent.
pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// Default window after which a `worker` agent with no poll counts as offline.
pub const DEFAULT_OFFLINE_AFTER_MS: u64 = 60_000;
/// Shortest accepted worker token.
pub const MIN_WORKER_TOKEN_CHARS: usize = 16;

/// The `[agents]` section: agent name → its settings.
///
/// Names coming from environment variables are lower-cased by the config loader, so an agent
/// that should be overridable through `SWITCHBOARD_AGENTS__<NAME>__<KEY>` needs a lower-case name.
pub type AgentsConfig = BTreeMap<String, AgentConfig>;

/// The names of the agents `config` defines, with [`DEFAULT_AGENT`], sorted: what an
/// installation may be bound to. Reads names only (no validation, no environment), so operator
/// commands can check a name without the agents' credentials at hand.
pub fn configured_agent_names(config: &AgentsConfig) -> Vec<String> {
    let mut names: Vec<String> = config.keys().cloned().collect();
    if !names.iter().any(|n| n == DEFAULT_AGENT) {
        names.push(DEFAULT_AGENT.to_string());
    }
    names.sort();
    names
}

/// One `[agents.<name>]` section as written; validated by [`AgentRegistry::from_config`].
///
/// Every key is optional at this level so validation can say exactly what is missing.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `"echo"`, `"openai"` or `"worker"` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// An archived agent is refused: flushes get the `agent_archived` notice and no run.
    pub archived: bool,
    /// System prompt put first in every run's context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// `openai`: endpoint origin (default [`DEFAULT_OPENAI_BASE_URL`]), without `/v1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// `openai`: the model name sent with every request (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `openai`: the API key, sent as `Authorization: Bearer …`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub api_key: Option<String>,
    /// `openai`: name of an environment variable holding the API key (instead of `api_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// `openai`: whole-response deadline in ms (default [`DEFAULT_TIMEOUT_MS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `openai`: `max_tokens` sent with every request (unset = the endpoint's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// `openai`: whether the model accepts images (default false). When true, stored image
    /// attachments of the context go to the model as `image_url` content parts (base64 data
    /// URLs); otherwise every attachment is a text line naming it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    /// The model's context window in tokens (for compaction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_limit_tokens: Option<u64>,
    /// Compact when usage reaches this percent of `context_limit_tokens`: 1–99; 0 or unset
    /// disables compaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact_threshold_percent: Option<u32>,
    /// `worker`: the bearer token workers must present (only its SHA-256 is kept in memory).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub token: Option<String>,
    /// `worker`: offline when no worker was seen for this long (default
    /// [`DEFAULT_OFFLINE_AFTER_MS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_after_ms: Option<u64>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("kind", &self.kind)
            .field("archived", &self.archived)
            .field("system_prompt", &self.system_prompt.as_ref().map(|_| "…"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("api_key_env", &self.api_key_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("vision", &self.vision)
            .field("max_tokens", &self.max_tokens)
            .field("context_limit_tokens", &self.context_limit_tokens)
            .field("compact_threshold_percent", &self.compact_threshold_percent)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("offline_after_ms", &self.offline_after_ms)
            .finish()
    }
}

/// Secrets given through the environment may look like numbers (`SWITCHBOARD_…__TOKEN=1234…`),
/// which the config loader parses as integers; accept them as the string they were.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(Option::<Lenient>::deserialize(d)?.map(|v| match v {
        Lenient::Text(s) => s,
        Lenient::Unsigned(n) => n.to_string(),
        Lenient::Signed(n) => n.to_string(),
    }))
}

/// A configuration problem: which agent, which key, what is wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[agents.{agent}] {key}: {problem}")]
pub struct AgentConfigError {
    /// The agent's name (the `[agents.<name>]` section).
    pub agent: String,
    /// The offending key (`kind`, `model`, …; `(name)` for the section name itself).
    pub key: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// A validated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// The agent's name.
    pub name: String,
    /// Archived agents are refused (no runs, `agent_archived` notice).
    pub archived: bool,
    /// The configured system prompt (the run layer copies it into `RunInput::system_prompt`).
    pub system_prompt: Option<String>,
    /// Compaction settings (used by the compaction issue; validated here).
    pub compaction: CompactionSettings,
    /// Kind-specific settings.
    pub kind: AgentKind,
}

impl AgentSpec {
    /// The kind as written in the config: `"echo"`, `"openai"` or `"worker"`.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Whether the host runs this agent itself (`echo`, `openai`) rather than external workers.
    pub fn is_builtin(&self) -> bool {
        !matches!(self.kind, AgentKind::Worker(_))
    }
}

/// Compaction settings of one agent (SPEC §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionSettings {
    /// The model's context window in tokens, when configured.
    pub context_limit_tokens: Option<u64>,
    /// 1–99; `None` = compaction disabled (0 or unset in the config).
    pub threshold_percent: Option<u8>,
}

impl CompactionSettings {
    /// The token count at which to compact, or `None` when compaction is disabled.
    pub fn trigger_tokens(&self) -> Option<u64> {
        let limit = self.context_limit_tokens?;
        let percent = u64::from(self.threshold_percent?);
        Some(limit.saturating_mul(percent) / 100)
    }
}

/// Kind-specific settings of a validated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKind {
    /// Built-in: replies with what it received.
    Echo,
    /// Built-in client of an OpenAI-compatible chat-completions endpoint.
    OpenAi(OpenAiSettings),
    /// External processes claim runs over HTTP with a bearer token.
    Worker(WorkerSettings),
}

impl AgentKind {
    /// The kind as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            AgentKind::Echo => "echo",
            AgentKind::OpenAi(_) => "openai",
            AgentKind::Worker(_) => "worker",
        }
    }
}

/// Settings of an `openai` agent.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiSettings {
    /// Endpoint origin without a trailing slash; requests go to `{base_url}/v1/chat/completions`.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// API key (resolved from `api_key_env` when that was used); `None` sends no Authorization.
    pub api_key: Option<String>,
    /// Whole-response deadline in ms.
    pub timeout_ms: u64,
    /// `max_tokens` sent with the request, if any.
    pub max_tokens: Option<u32>,
    /// The model accepts images: stored image attachments are sent as `image_url` parts.
    pub vision: bool,
}

impl OpenAiSettings {
    /// The full chat-completions URL.
    pub fn completions_url(&self) -> String {
        format!("{}/v1/chat/completions", self.base_url)
    }
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_tokens", &self.max_tokens)
            .field("vision", &self.vision)
            .finish()
    }
}

/// Settings of a `worker` agent. The token itself is not kept, only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    token: TokenDigest,
    /// Offline when no worker was seen for this long (ms).
    pub offline_after_ms: u64,
}

impl WorkerSettings {
    /// Builds settings from a plain token (hashed at once).
    pub fn new(token: &str, offline_after_ms: u64) -> WorkerSettings {
        WorkerSettings {
            token: TokenDigest::of(token),
            offline_after_ms,
        }
    }

    /// Whether `token` is this agent's token (SHA-256 compared in constant time).
    pub fn verify_token(&self, token: &str) -> bool {
        self.token.matches(token)
    }
}

impl fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("token_sha256", &"***")
            .field("offline_after_ms", &self.offline_after_ms)
            .finish()
    }
}

/// Whether an agent can take runs right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentState {
    /// Built-in agents always; workers seen within `offline_after_ms`.
    Online,
    /// A worker agent with no worker seen within its window (runs wait as pending).
    Offline,
    /// Configured but archived: refused.
    Archived,
    /// No agent of that name is configured.
    Unknown,
}

/// All configured agents, validated. Always contains [`DEFAULT_AGENT`] unless the config
/// redefines that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentSpec>,
}

impl Default for AgentRegistry {
    /// Only the default `echo` agent.
    fn default() -> Self {
        AgentRegistry::from_config_with_env(&AgentsConfig::new(), |_| None)
            .expect("the default agent set is valid")
    }
}

impl AgentRegistry {
    /// Validates `config`, resolving `api_key_env` from the process environment.
    pub fn from_config(config: &AgentsConfig) -> Result<AgentRegistry, AgentConfigError> {
        AgentRegistry::from_config_with_env(config, |name| std::env::var(name).ok())
    }

    /// Validates `config`, resolving `api_key_env` through `env` (injectable for tests).
    pub fn from_config_with_env(
        config: &AgentsConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentRegistry, AgentConfigError> {
        let mut agents = BTreeMap::new();
        for (name, raw) in config {
            let spec = validate(name, raw, &env)?;
            agents.insert(name.clone(), spec);
        }
        agents
            .entry(DEFAULT_AGENT.to_string())
            .or_insert_with(|| AgentSpec {
                name: DEFAULT_AGENT.to_string(),
                archived: false,
                system_prompt: None,
                compaction: CompactionSettings::default(),
                kind: AgentKind::Echo,
            });
        Ok(AgentRegistry { agents })
    }

    /// The agent called `name`.
    pub fn get(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.get(name)
    }

    /// Every agent, by name.
    pub fn iter(&self) -> impl Iterator<Item = &AgentSpec> {
        self.agents.values()
    }

    /// Whether `name` can take runs at `now_ms`, given when a worker last polled for it
    /// (`None` = never). Built-in agents ignore `last_worker_seen_ms`. A worker seen exactly
    /// `offline_after_ms` ago is still online.
    pub fn state(&self, name: &str, last_worker_seen_ms: Option<i64>, now_ms: i64) -> AgentState {
        let Some(spec) = self.agents.get(name) else {
            return AgentState::Unknown;
        };
        if spec.archived {
            return AgentState::Archived;
        }
        match &spec.kind {
            AgentKind::Echo | AgentKind::OpenAi(_) => AgentState::Online,
            AgentKind::Worker(worker) => match last_worker_seen_ms {
                Some(seen)
                    if i128::from(now_ms) - i128::from(seen)
                        <= i128::from(worker.offline_after_ms) =>
                {
                    AgentState::Online
                }
                _ => AgentState::Offline,
            },
        }
    }

    /// Whether `token` is the bearer token of worker agent `name`. False for unknown and
    /// non-worker agents. Archived agents still verify: check [`AgentRegistry::state`] to refuse
    /// them.
    pub fn verify_worker_token(&self, name: &str, token: &str) -> bool {
        match self.agents.get(name).map(|a| &a.kind) {
            Some(AgentKind::Worker(worker)) => worker.verify_token(token),
            _ => false,
        }
    }
}

const KINDS_HINT: &str = "write kind = \"echo\", \"openai\" or \"worker\"";

fn validate(
    name: &str,
    raw: &AgentConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<AgentSpec, AgentConfigError> {
    let err = |key: &str, problem: String| AgentConfigError {
        agent: name.to_string(),
        key: key.to_string(),
        problem,
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(err(
            "(name)",
            "agent names are 1–64 letters, digits, '-' or '_'; rename the section, e.g. \
             [agents.support-bot]"
                .into(),
        ));
    }
    let kind = match raw.kind.as_deref().map(str::trim) {
        None | Some("") => return Err(err("kind", format!("missing; {KINDS_HINT}"))),
        Some(k @ ("echo" | "openai" | "worker")) => k,
        Some(other) => {
            return Err(err(
                "kind",
                format!("`{other}` is not an agent kind; {KINDS_HINT}"),
            ));
        }
    };

    // Keys that only make sense for one kind are refused elsewhere rather than ignored.
    let openai_keys: [(&str, bool); 7] = [
        ("base_url", raw.base_url.is_some()),
        ("vision", raw.vision.is_some()),
        ("model", raw.model.is_some()),
        ("api_key", raw.api_key.is_some()),
        ("api_key_env", raw.api_key_env.is_some()),
        ("timeout_ms", raw.timeout_ms.is_some()),
        ("max_tokens", raw.max_tokens.is_some()),
    ];
    let worker_keys: [(&str, bool); 2] = [
        ("token", raw.token.is_some()),
        ("offline_after_ms", raw.offline_after_ms.is_some()),
    ];
    let misplaced = |keys: &[(&str, bool)], owner: &str| -> Result<(), AgentConfigError> {
        match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(err(
                key,
                format!(
                    "applies to kind = \"{owner}\" agents only and this agent is kind = \
                     \"{kind}\"; remove it"
                ),
            )),
            None => Ok(()),
        }
    };
    if kind != "openai" {
        misplaced(&openai_keys, "openai")?;
    }
    if kind != "worker" {
        misplaced(&worker_keys, "worker")?;
    }

    let compaction = compaction(raw, &err)?;
    let system_prompt = raw
        .system_prompt
        .as_ref()
        .filter(|p| !p.trim().is_empty())
        .cloned();

    let kind = match kind {
        "echo" => AgentKind::Echo,
        "openai" => AgentKind::OpenAi(openai(raw, env, &err)?),
        _ => AgentKind::Worker(worker(name, raw, &err)?),
    };
    Ok(AgentSpec {
        name: name.to_string(),
        archived: raw.archived,
        system_prompt,
        compaction,
        kind,
    })
}

fn compaction(
    raw: &AgentConfig,
    err: &impl Fn(&str, String) -> AgentConfigError,
) -> Result<CompactionSettings, AgentConfigError> {
    if raw.context_limit_tokens == Some(0) {
        return Err(err(
            "context_limit_tokens",
            "must be the model's context window in tokens, e.g. context_limit_tokens = 128000; \
             remove it if unknown"
                .into(),
        ));
    }
    let threshold_percent = match raw.compact_threshold_percent {
        None | Some(0) => None,
        Some(p @ 1..=99) => Some(p as u8),
        Some(p) => {
            return Err(err(
                "compact_threshold_percent",
                format!(
                    "{p} is out of range; write a percent of context_limit_tokens from 1 to 99 \
                     (e.g. 80), or 0 to disable compaction"
                ),
            ));
        }
    };
    if threshold_percent.is_some() && raw.context_limit_tokens.is_none() {
        return Err(err(
            "context_limit_tokens",
            "missing: compact_threshold_percent needs the model's context window, e.g. \
             context_limit_tokens = 128000 (or set compact_threshold_percent = 0)"
                .into(),
        ));
    }
    Ok(CompactionSettings {
        context_limit_tokens: raw.context_limit_tokens,
        threshold_percent,
    })
}

fn openai(
    raw: &AgentConfig,
    env: &impl Fn(&str) -> Option<String>,
    err: &impl Fn(&str, String) -> AgentConfigError,
) -> Result<OpenAiSettings, AgentConfigError> {
    let model = match raw.model.as_deref().map(str::trim) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(err(
                "model",
                "missing; write the model name, e.g. model = \"gpt-4o-mini\"".into(),
            ));
        }
    };
    let base_url = base_url(raw.base_url.as_deref(), err)?;
    let api_key = match (&raw.api_key, &raw.api_key_env) {
        (Some(_), Some(_)) => {
            return Err(err(
                "api_key_env",
                "set either api_key or api_key_env, not both; remove one".into(),
            ));
        }
        (Some(key), None) if key.trim().is_empty() => {
            return Err(err(
                "api_key",
                "is empty; write the key, use api_key_env = \"OPENAI_API_KEY\", or remove it \
                 for an endpoint without authentication"
                    .into(),
            ));
        }
        (Some(key), None) => Some(key.trim().to_string()),
        (None, Some(var)) => match env(var).filter(|v| !v.trim().is_empty()) {
            Some(key) => Some(key.trim().to_string()),
            None => {
                return Err(err(
                    "api_key_env",
                    format!(
                        "environment variable {var} is not set or empty; export it, or write \
                         api_key = \"…\" instead"
                    ),
                ));
            }
        },
        (None, None) => None,
    };
    let timeout_ms = match raw.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(0) => {
            return Err(err(
                "timeout_ms",
                format!(
                    "must be positive; write the whole-response deadline in ms, e.g. \
                     timeout_ms = {DEFAULT_TIMEOUT_MS}"
                ),
            ));
        }
        Some(ms) => ms,
    };
    if raw.max_tokens == Some(0) {
        return Err(err(
            "max_tokens",
            "must be positive; write e.g. max_tokens = 1024, or remove it for the endpoint's \
             default"
                .into(),
        ));
    }
    Ok(OpenAiSettings {
        base_url,
        model,
        api_key,
        timeout_ms,
        max_tokens: raw.max_tokens,
        vision: raw.vision.unwrap_or(false),
    })
}

fn base_url(
    raw: Option<&str>,
    err: &impl Fn(&str, String) -> AgentConfigError,
) -> Result<String, AgentConfigError> {
    let Some(raw) = raw.map(str::trim) else {
        return Ok(DEFAULT_OPENAI_BASE_URL.to_string());
    };
    let example = "e.g. base_url = \"https://api.openai.com\"";
    let parsed = url::Url::parse(raw)
        .map_err(|e| err("base_url", format!("`{raw}` is not a URL ({e}); {example}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(err(
            "base_url",
            format!("`{raw}` must be an http:// or https:// URL; {example}"),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(err(
            "base_url",
            format!("`{raw}` must not have a query or fragment; {example}"),
        ));
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed.ends_with("/v1") || trimmed.ends_with("/chat/completions") {
        return Err(err(
            "base_url",
            format!(
                "`{raw}` includes the API path; write it without /v1 (the client appends \
                 /v1/chat/completions), {example}"
            ),
        ));
    }
    Ok(trimmed.to_string())
}

fn worker(
    name: &str,
    raw: &AgentConfig,
    err: &impl Fn(&str, String) -> AgentConfigError,
) -> Result<WorkerSettings, AgentConfigError> {
    let token = match raw.token.as_deref() {
        Some(t) if t.chars().count() >= MIN_WORKER_TOKEN_CHARS => t,
        Some(_) => {
            return Err(err(
                "token",
                format!(
                    "too short; use at least {MIN_WORKER_TOKEN_CHARS} random characters (e.g. \
                     the output of `openssl rand -hex 32`)"
                ),
            ));
        }
        None => {
            return Err(err(
                "token",
                format!(
                    "missing; workers authenticate with it: write token = \"<random secret>\" \
                     or set SWITCHBOARD_AGENTS__{}__TOKEN",
                    name.to_ascii_uppercase()
                ),
            ));
        }
    };
    let offline_after_ms = match raw.offline_after_ms {
        None => DEFAULT_OFFLINE_AFTER_MS,
        Some(0) => {
            return Err(err(
                "offline_after_ms",
                format!("must be positive; e.g. offline_after_ms = {DEFAULT_OFFLINE_AFTER_MS}"),
            ));
        }
        Some(ms) => ms,
    };
    Ok(WorkerSettings::new(token, offline_after_ms))
}
