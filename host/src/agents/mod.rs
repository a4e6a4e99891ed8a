//! Agents (SPEC §6): their configuration and the built-in ones.
//!
//! Owns three things:
//!
//! - **Configuration** ([`registry`]): `[agents.<name>]` sections validated into an
//!   [`AgentRegistry`] of [`AgentSpec`]s (kinds `echo`, `openai`, `worker`), agent state
//!   (online / offline / archived / unknown) and worker token verification.
//! - **The run interface**: a run's context goes in as a [`RunInput`]; text deltas stream out
//!   through a `tokio::sync::mpsc::Sender<String>`; the outcome is an [`AgentReply`] or an
//!   [`AgentError`]; a [`CancellationToken`] stops the run promptly.
//! - **Worker presence** ([`presence`]): when workers of each `worker` agent last polled
//!   (shared through the database) and [`agent_state`], the registry's answer fed with it.
//! - **The built-in agents** ([`BuiltinAgent`]): [`echo::EchoAgent`] and
//!   [`openai::OpenAiAgent`] (any OpenAI-compatible `/v1/chat/completions`, streamed).
//!
//! Must not touch the run store, sessions or delivery: the run layer reads the context, calls
//! [`BuiltinAgent::run`], and persists parts and the reply itself. `worker` agents are not run
//! here (external processes do that through the worker API); the registry only knows their
//! tokens and offline window.

pub mod echo;
pub mod openai;
pub mod presence;
pub mod registry;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

pub use echo::EchoAgent;
pub use openai::OpenAiAgent;
pub use presence::{AgentPresence, agent_state};
pub use registry::{
    AgentConfig, AgentConfigError, AgentKind, AgentRegistry, AgentSpec, AgentState, AgentsConfig,
    CompactionSettings, DEFAULT_AGENT, OpenAiSettings, WorkerSettings, configured_agent_names,
};

/// Who said a context message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person in the chat.
    User,
    /// The agent (earlier replies).
    Assistant,
    /// Instructions or summaries (e.g. a compaction summary).
    System,
}

impl Role {
    /// The chat-completions role name: `"user"`, `"assistant"` or `"system"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }
}

/// One message of a run's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContextMessage {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub body: String,
    /// For a command turn `{"command": {"name", "args"}}` (a command the host does not run
    /// itself, name and args intact), for an action turn `{"action": {"name", "value",
    /// "message_id"}}`; absent for plain messages.
    /// Its attachments' records are under `attachments` (`kind`, `name`, `mime`, `size`,
    /// `ref`, and with the blob store `blob_id`, `state`, `url`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The stored images of its attachments, read for a built-in agent whose model accepts
    /// images (never serialized: workers fetch blobs by URL).
    #[serde(skip)]
    pub images: Vec<InlineImage>,
}

impl ContextMessage {
    /// A message with `role` and `body`.
    pub fn new(role: Role, body: impl Into<String>) -> ContextMessage {
        ContextMessage {
            role,
            body: body.into(),
            meta: None,
            images: Vec::new(),
        }
    }

    /// One line per attachment record of its meta, naming it for an agent that reads text:
    /// `[attachment: image "photo.png", image/png, 1234 bytes]`, or why its bytes are missing.
    pub fn attachment_lines(&self) -> Vec<String> {
        let Some(records) = self
            .meta
            .as_ref()
            .and_then(|meta| meta["attachments"].as_array())
        else {
            return Vec::new();
        };
        records.iter().map(attachment_line).collect()
    }
}

/// The text line naming one attachment record (see [`ContextMessage::attachment_lines`]).
fn attachment_line(record: &serde_json::Value) -> String {
    let mut line = format!("[attachment: {}", record["kind"].as_str().unwrap_or("file"));
    if let Some(name) = record["name"].as_str().filter(|n| !n.is_empty()) {
        line.push_str(&format!(" {name:?}"));
    }
    match record["state"].as_str() {
        Some("failed") => {
            let why = record["error"].as_str().unwrap_or("the download failed");
            line.push_str(&format!(", not available: {why}]"));
        }
        Some("pending") => line.push_str(", still downloading]"),
        _ => {
            if let Some(mime) = record["mime"].as_str() {
                line.push_str(&format!(", {mime}"));
            }
            if let Some(size) = record["size"].as_u64() {
                line.push_str(&format!(", {size} bytes"));
            }
            line.push(']');
        }
    }
    line
}

/// An image attachment's bytes, for a model that accepts images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineImage {
    /// Its MIME type as sniffed from the bytes (`image/…`).
    pub mime: String,
    /// The bytes.
    pub bytes: std::sync::Arc<[u8]>,
}

/// Everything an agent gets for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInput {
    /// The session the run belongs to (for logs).
    pub session_id: String,
    /// The run's fencing id (for logs).
    pub run_id: String,
    /// Sent first, as a `system` message. Agents do not add their configured prompt
    /// themselves: the run layer copies [`AgentSpec::system_prompt`] here (later with the
    /// compaction summary).
    pub system_prompt: Option<String>,
    /// The context, oldest first.
    pub messages: Vec<ContextMessage>,
}

/// Token usage reported by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the request (the context).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum (as reported).
    pub total_tokens: u64,
}

impl Usage {
    /// The context a run leaves behind, in tokens: its prompt plus what it generated.
    pub fn context_tokens(&self) -> i64 {
        i64::try_from(self.prompt_tokens.saturating_add(self.completion_tokens)).unwrap_or(i64::MAX)
    }
}

/// A finished run's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    /// The whole reply text (the concatenation of every part sent).
    pub text: String,
    /// Usage, when the agent reports it (`echo` does not).
    pub usage: Option<Usage>,
}

/// Why a run produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The whole response did not arrive within the agent's deadline.
    #[error(
        "the agent did not finish within {timeout_ms} ms; check the endpoint or raise \
         timeout_ms in the agent's config"
    )]
    Timeout {
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// The endpoint answered with a non-success status.
    #[error("the endpoint answered HTTP {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The API's error message (`error.message` of the JSON body), else a body excerpt.
        message: String,
    },
    /// The endpoint could not be reached (connection refused, TLS, DNS, reset).
    #[error("could not reach the endpoint: {0}; check base_url and the network")]
    Transport(String),
    /// The endpoint's answer was not what the protocol says (bad SSE, bad JSON, cut short,
    /// an error event in the stream).
    #[error("unexpected response from the endpoint: {0}")]
    Protocol(String),
    /// The run was cancelled (interrupt, shutdown).
    #[error("the run was cancelled")]
    Cancelled,
    /// The agent cannot run as configured.
    #[error("agent misconfigured: {0}")]
    Config(String),
}

/// A built-in agent, ready to run. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub enum BuiltinAgent {
    /// Replies with what it received.
    Echo(EchoAgent),
    /// An OpenAI-compatible chat-completions client.
    OpenAi(OpenAiAgent),
}

impl BuiltinAgent {
    /// The built-in agent for `spec`, or `None` for `worker` agents (run by external workers).
    /// `http` is shared (connection pool); it should not follow redirects for POSTs, which
    /// [`openai::http_client`] arranges.
    pub fn from_spec(spec: &AgentSpec, http: &reqwest::Client) -> Option<BuiltinAgent> {
        match &spec.kind {
            AgentKind::Echo => Some(BuiltinAgent::Echo(EchoAgent::new(&spec.name))),
            AgentKind::OpenAi(settings) => Some(BuiltinAgent::OpenAi(OpenAiAgent::new(
                &spec.name,
                settings.clone(),
                http.clone(),
            ))),
            AgentKind::Worker(_) => None,
        }
    }

    /// Runs once over `input`: text deltas go to `parts` in order (their concatenation is the
    /// reply's text; the sender is dropped when the run ends, so the receiver sees the end);
    /// `cancel` stops the run promptly with [`AgentError::Cancelled`]. A dropped receiver does
    /// not stop the run.
    pub async fn run(
        &self,
        input: &RunInput,
        parts: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        match self {
            BuiltinAgent::Echo(agent) => agent.run(input, parts, cancel).await,
            BuiltinAgent::OpenAi(agent) => agent.run(input, parts, cancel).await,
        }
    }
}

/// Sends one part unless the run is cancelled first; a closed receiver is ignored.
pub(crate) async fn send_part(
    parts: &mpsc::Sender<String>,
    cancel: &CancellationToken,
    part: String,
) -> Result<(), AgentError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(AgentError::Cancelled),
        _ = parts.send(part) => Ok(()),
    }
}
