//! `switchboard replay`: the integrator's offline harness. Runs recorded inbound units (raw event
//! payloads, WebSocket frames, webhook requests) through a plugin exactly as the host's inbound
//! path would (via [`crate::ingest::pipeline`]) and prints one channel-neutral JSON object per
//! decoded unit on stdout; with `--outbound`, renders one delivery through the plugin and prints
//! the HTTP requests it would send, captured locally instead of sent.
//!
//! Owns: recognising the input files' wrapper shapes (never a channel's own keys), the
//! installation built from the command line, the capture of outbound requests and rendering all
//! of it as JSON lines. It must not decide anything a plugin or the pipeline decides, and never
//! touches storage (plugin kv lives in memory for the run).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::GlobalArgs;
use crate::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use crate::dispatch::Command;
use crate::domain::notice::{DEFAULT_LOCALE, Notice, NoticeKind, NoticeTexts};
use crate::domain::{InstallationContext, KvBackend, KvError, KvFuture, KvQuota, KvScope};
use crate::ingest::pipeline::{self, DecodeOutcome, FrameIntake, FrameOutcome, WebhookOutcome};
use crate::runtime::transport::{AckStatus, ConnectionHints, EventReading, WebhookRequest};
use crate::runtime::types::{ChatKind, InboundMessage};
use crate::runtime::{CallError, Plugin, Runtime, RuntimeSettings, Source, outbound, types};

const AFTER_HELP: &str = "\
INPUTS (each file is one inbound unit; only the shape of its wrapper decides how it is replayed,
never a channel's own keys):
  frame fixture     A JSON object holding binary WebSocket frames as `hex` (or `base64`): at the
                    top level, under `frame` or `inbound`, or a list under `fragments`/`frames`.
                    The frames of one file go in order through the plugin's frame classification
                    and the host's fragment reassembly (one connection per file); a completed
                    message is decoded.
  webhook request   A JSON object with `request`: {method?, path?, query?, headers, raw_body |
                    body} (`raw_body`: the exact bytes; `body`: JSON, sent compactly; method POST
                    by default; a `request` with a `url` is not one). Verified (signature,
                    decryption, token) by the plugin; every event it carries is decoded.
  event payload     Anything else, JSON or not: the raw payload as the channel sends it, fed as it
                    is (byte for byte) to the plugin's decoder.
  A directory stands for its `*.json` files, sorted by name.
  When the plugin reads an event already while classifying a frame or verifying a webhook (an
  `event-reading`, which the host uses in place of routing-key/decode/commands.parse), the
  reading is checked against those calls; one that differs is a line of kind `error` naming both.

INSTALLATION: the plugin runs as installation `replay` whose config and secrets are exactly the
--config-value and --secret pairs: the host adds nothing, so without the plugin's bot identity
no group message is addressed to the bot, and without its webhook secrets signed or encrypted
requests are rejected. The keys are the plugin's own (the `[installation]` schema of its
manifest). The flag is --config-value, not --config: `--config FILE` is the global configuration
file.

OUTPUT: one JSON object per line on stdout, per decoded unit (a webhook with several events gives
several lines; a fragment that does not complete a message gives none). Every key is always
present, null where it does not apply:
  file              the input file
  kind              message | action | ignored | error, and for transport-level units:
                    control (a WebSocket control frame: ping, pong, …), challenge (a webhook URL
                    verification; `body` is the HTTP answer the channel expects) and rejected
                    (a webhook request that failed verification; the host answers 401/400)
  reason            why it was ignored/rejected/an error; the control frame's kind and hints
  event_id, message_id, chat_id, chat_type (direct|group|channel), thread_id, sender_id,
  sender_name, body, command_body, addressed_to_bot
                    the decoded message (kind message or action). For an action (a button or
                    card callback) message_id is the action id, body is `[action NAME] VALUE`
                    (what the agent reads) and command_body is null
  command           the command in command_body as the host reads it: {\"name\": …, \"args\": …}
                    (`new`, the built-ins stop/compact/status/help, or the agent's own), or null
  action            for kind action: {\"name\": …, \"value\": …}; otherwise null
  attachments       the message's attachments: [{\"kind\", \"name\", \"mime\", \"size\", \"ref\"}]

OUTBOUND (--outbound FILE): renders one delivery through the plugin's `outbound.deliver` and sends
nothing. Every origin of the plugin's `capabilities.http` is redirected to a local capture server
(any other destination reaches it as a proxy and is refused), which answers each request 200 with
a generic JSON success (code 0, ok true, a message id, an access token). Each request the plugin
made is printed, in order, as a JSON line {\"method\", \"url\", \"headers\", \"body\"}: `url` as
the plugin wrote it, the `authorization` and `cookie` headers and every --secret value shown as
[redacted], `body` as JSON when it is JSON (else text, or {\"hex\": …}). The delivery's outcome
(receipt or error) goes to stderr. FILE is JSON:
  {\"target\": {\"chat_id\": …, \"chat_type\": \"direct\"|\"group\"|\"channel\", \"thread_id\"?: …,
              \"reply_to\"?: …, \"in_thread\"?: bool},
   \"reply\": \"text\"}
  or the same with, in place of `reply`,
   \"notice\": {\"kind\": \"agent_offline\"|\"binding_required\"|\"fresh_context\"|\"agent_archived\"|
              \"run_error\"|\"command_usage\"|\"help\"|\"status\"|\"info\", \"text\"?, \"detail\"?,
              \"link\"?, \"reference\"?, \"recipient\"?, \"locale\"?}
  A notice without `text` gets the host's built-in words for its locale (`locale`, else the
  config value `locale`, else en), with `detail` and `reference` filled in. `idempotency_key`
  (top level, default `replay`) is handed to the plugin. Inputs given too are replayed first.

Logs go to stderr. Exit status: 0 when every input was processed (even if some were rejected or
errors) and the --outbound delivery succeeded, 1 when that delivery failed, 2 for unusable
arguments (missing file, unknown plugin, a malformed KEY=VALUE or --outbound file).

EXAMPLES (PLUGIN is a loaded plugin's name, CHANNEL a directory of recorded units; a fixtures
directory's README lists the installation values its files were made with):
  switchboard replay --plugin PLUGIN --config-value bot_id=B0T1 \\
    --secret signing_key=fixture-key tests/fixtures/CHANNEL
  switchboard replay --plugin PLUGIN tests/fixtures/CHANNEL/some_event.json | jq .body
  printf 'raw bytes as the channel sends them' > event.bin
  switchboard replay --plugin PLUGIN event.bin
  echo '{\"target\":{\"chat_id\":\"C1\",\"chat_type\":\"group\"},\"reply\":\"**hi**\"}' > reply.json
  switchboard replay --plugin PLUGIN --secret api_secret=s3cret --outbound reply.json";

/// Help heading of the installation options.
const INSTALLATION: &str = "Installation (only what is given here; nothing is assumed)";

/// Arguments of `switchboard replay`.
#[derive(Debug, Args)]
#[command(
    after_help = "See `switchboard replay --help` for the input formats, the output schema, --outbound and examples.",
    after_long_help = AFTER_HELP
)]
pub struct ReplayArgs {
    /// The plugin to run (see `switchboard plugins list`).
    #[arg(long, value_name = "NAME")]
    plugin: String,

    /// Installation config value as KEY=VALUE (repeatable), e.g. a bot id or `locale=en`. Not
    /// `--config`: that is the global configuration-file flag.
    #[arg(long = "config-value", value_name = "KEY=VALUE", help_heading = INSTALLATION)]
    config_values: Vec<String>,

    /// Installation secret as KEY=VALUE (repeatable), e.g. a webhook signing key.
    #[arg(long = "secret", value_name = "KEY=VALUE", help_heading = INSTALLATION)]
    secrets: Vec<String>,

    /// Render the delivery in FILE (a reply or a notice for a target) to the HTTP requests the
    /// plugin would send, captured locally and printed instead of sent.
    #[arg(long, value_name = "FILE")]
    outbound: Option<PathBuf>,

    /// Raw event payloads, frame fixtures or webhook request fixtures; a directory means its
    /// `*.json` files.
    #[arg(required_unless_present = "outbound", value_name = "PATH")]
    inputs: Vec<PathBuf>,
}

/// Unusable arguments: the binary exits with status 2.
#[derive(Debug)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

/// The files to replay, in order: explicit files as given, directories as their sorted `*.json`.
fn collect_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input)
                .map_err(|e| usage(format!("cannot read directory {}: {e}", input.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "json"))
                .collect();
            if found.is_empty() {
                return Err(usage(format!(
                    "directory {} contains no *.json files; pass event payloads, frame or webhook fixtures",
                    input.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(usage(format!(
                "no such file or directory: {}; pass event payloads, frame or webhook fixtures, or directories of them",
                input.display()
            )));
        }
    }
    Ok(files)
}

/// `KEY=VALUE` pairs of `flag`.
fn pairs(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.to_string()))
            }
            _ => Err(usage(format!("{flag} {item:?}: write it as KEY=VALUE"))),
        })
        .collect()
}

/// The installation the replay runs as: exactly the pairs the arguments give.
fn installation(args: &ReplayArgs) -> anyhow::Result<InstallationContext> {
    let mut cx = InstallationContext::new("replay");
    for (key, value) in pairs(&args.config_values, "--config-value")? {
        cx = cx.with_config(&key, value);
    }
    for (key, value) in pairs(&args.secrets, "--secret")? {
        cx = cx.with_secret(&key, value);
    }
    Ok(cx)
}

/// The host services of a replay: plugin kv in memory, and `operator`'s overrides.
fn services(operator: OperatorPolicy) -> Services {
    Services::new(
        Some(Arc::new(MemoryKv::default())),
        operator,
        ServiceLimits::default(),
    )
}

/// The runtime settings the configuration names (the artifact cache).
fn runtime_settings(config: &crate::config::Config) -> RuntimeSettings {
    RuntimeSettings {
        cache_dir: config.plugins.cache_dir.clone(),
        ..RuntimeSettings::default()
    }
}

/// The runtime with the bundled plugins and those of the configured plugins directory
/// (`[plugins] dir` or `--plugins-dir`), as `GlobalArgs::runtime` loads them, on the replay's
/// services.
fn load_runtime(global: &GlobalArgs) -> anyhow::Result<Runtime> {
    let config = global.config()?;
    let runtime = Runtime::new(
        runtime_settings(&config),
        services(OperatorPolicy::default()),
    )?;
    runtime.load_bundled()?;
    if let Some(dir) = &config.plugins.dir {
        let results = runtime.load_dir(dir).map_err(|e| {
            anyhow::anyhow!("{e} (check [plugins] dir, --plugins-dir or SWITCHBOARD_PLUGINS_DIR)")
        })?;
        for (path, result) in results {
            if let Err(e) = result {
                eprintln!("warning: skipped {}: {e}", path.display());
            }
        }
    }
    Ok(runtime)
}

/// Runs `switchboard replay`.
pub async fn run(global: &GlobalArgs, args: ReplayArgs) -> anyhow::Result<()> {
    let files = collect_files(&args.inputs)?;
    let cx = Arc::new(installation(&args)?);
    let outbound = args.outbound.as_deref().map(read_outbound).transpose()?;
    let runtime = load_runtime(global)?;
    let Some(plugin) = runtime.plugin(&args.plugin) else {
        let loaded: Vec<String> = runtime
            .plugins()
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        return Err(usage(format!(
            "unknown plugin `{}`; loaded plugins: {} (add more with --plugins-dir)",
            args.plugin,
            if loaded.is_empty() {
                "none".to_string()
            } else {
                loaded.join(", ")
            }
        )));
    };
    let mut out = Output::new();
    for file in &files {
        for line in replay_file(&plugin, &cx, file).await {
            if !out.line(&line)? {
                return Ok(());
            }
        }
    }
    if let Some(request) = outbound {
        run_outbound(global, &plugin, &cx, request, &mut out).await?;
    }
    Ok(())
}

/// stdout, one JSON value per line.
struct Output {
    stdout: std::io::StdoutLock<'static>,
}

impl Output {
    fn new() -> Output {
        Output {
            stdout: std::io::stdout().lock(),
        }
    }

    /// Writes one line; `false` when the reader went away (`| head`): nothing more to do.
    fn line(&mut self, value: &impl Serialize) -> anyhow::Result<bool> {
        let text = serde_json::to_string(value)?;
        match writeln!(self.stdout, "{text}").and_then(|()| self.stdout.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        }
    }
}

/// One output line. Every field is serialised, `null` when not applicable.
#[derive(Debug, Default, Serialize)]
struct Line {
    file: String,
    kind: &'static str,
    reason: Option<String>,
    event_id: Option<String>,
    message_id: Option<String>,
    chat_id: Option<String>,
    chat_type: Option<&'static str>,
    thread_id: Option<String>,
    sender_id: Option<String>,
    sender_name: Option<String>,
    body: Option<String>,
    command_body: Option<String>,
    command: Option<Value>,
    action: Option<Value>,
    addressed_to_bot: Option<bool>,
    attachments: Option<Vec<Value>>,
}

impl Line {
    fn new(file: &Path, kind: &'static str, reason: Option<String>) -> Line {
        Line {
            file: file.display().to_string(),
            kind,
            reason,
            ..Line::default()
        }
    }

    fn error(file: &Path, reason: String) -> Line {
        Line::new(file, "error", Some(reason))
    }

    fn call_failed(file: &Path, error: &CallError) -> Line {
        Line::error(file, format!("plugin call failed: {error}"))
    }

    /// The fields a message and an action share.
    fn decoded(file: &Path, kind: &'static str, message: InboundMessage) -> Line {
        Line {
            file: file.display().to_string(),
            kind,
            reason: None,
            event_id: Some(message.event_id),
            message_id: Some(message.message_id),
            chat_id: Some(message.chat.id),
            chat_type: Some(match message.chat.kind {
                ChatKind::Direct => "direct",
                ChatKind::Group => "group",
                ChatKind::Channel => "channel",
            }),
            thread_id: message.thread_id,
            sender_id: Some(message.sender.id),
            sender_name: message.sender.display_name,
            body: Some(message.body),
            command_body: Some(message.command_body),
            command: None,
            action: None,
            addressed_to_bot: Some(message.addressed_to_bot),
            attachments: Some(
                message
                    .attachments
                    .into_iter()
                    .map(|a| {
                        json!({"kind": a.kind, "name": a.name, "mime": a.mime, "size": a.size, "ref": a.ref_})
                    })
                    .collect(),
            ),
        }
    }

    /// A decoded outcome: a message, an action, or why there is none.
    fn outcome(file: &Path, outcome: DecodeOutcome) -> Line {
        match outcome {
            DecodeOutcome::Message {
                message,
                command: Some(Command::Action { name, value, .. }),
            } => Line {
                command_body: None,
                attachments: None,
                action: Some(json!({ "name": name, "value": value })),
                ..Line::decoded(file, "action", message)
            },
            DecodeOutcome::Message { message, command } => Line {
                command: command.map(command_json),
                ..Line::decoded(file, "message", message)
            },
            DecodeOutcome::Ignored(reason) => Line::new(file, "ignored", Some(reason)),
            DecodeOutcome::Invalid(error) => {
                Line::error(file, pipeline::describe_plugin_error(&error))
            }
        }
    }
}

/// A command as `{name, args}` (actions are lines of their own kind).
fn command_json(command: Command) -> Value {
    let (name, args) = match command {
        Command::New(args) => ("new".to_string(), args),
        Command::Builtin(builtin) => (builtin.name().to_string(), String::new()),
        Command::Agent { name, args } => (name, args),
        Command::Action { name, value, .. } => (name, value),
    };
    json!({ "name": name, "args": args })
}

/// What a replay file holds.
enum Input {
    /// A raw event payload: the file's bytes.
    Event,
    /// Raw WebSocket frames, in order.
    Frames(Vec<Vec<u8>>),
    /// One webhook request.
    Webhook(WebhookRequest),
}

/// Recognises a file's wrapper shape; anything that is no wrapper is a raw event payload. `Err`
/// explains a wrapper that cannot be used (a frame that is not valid hex, …).
fn recognise(bytes: &[u8]) -> Result<Input, String> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(Input::Event);
    };
    let Value::Object(fields) = &value else {
        return Ok(Input::Event);
    };
    for key in ["fragments", "frames"] {
        if let Some(Value::Array(items)) = fields.get(key) {
            let frames = items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    frame_bytes(item)
                        .unwrap_or_else(|| Err("no `hex` or `base64` frame".into()))
                        .map_err(|e| format!("{key}[{index}]: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Input::Frames(frames));
        }
    }
    for key in ["frame", "inbound"] {
        if let Some(result) = fields.get(key).and_then(frame_bytes) {
            return Ok(Input::Frames(vec![
                result.map_err(|e| format!("{key}: {e}"))?,
            ]));
        }
    }
    if let Some(result) = frame_bytes(&value) {
        return Ok(Input::Frames(vec![result?]));
    }
    if let Some(request) = fields.get("request").and_then(webhook_request) {
        return Ok(Input::Webhook(request));
    }
    Ok(Input::Event)
}

/// The bytes of a frame object (`hex` preferred, else `base64`); `None` when it has neither.
fn frame_bytes(value: &Value) -> Option<Result<Vec<u8>, String>> {
    if let Some(text) = value.get("hex").and_then(Value::as_str) {
        return Some(hex::decode(text.trim()).map_err(|e| format!("`hex` is not valid hex: {e}")));
    }
    let text = value.get("base64").and_then(Value::as_str)?;
    Some(decode_base64(text).ok_or_else(|| "`base64` is not valid base64".to_string()))
}

/// An inbound webhook request fixture (`headers` + `raw_body` or `body`, and no `url`: a request
/// with a URL is one a plugin sends, not one it receives).
fn webhook_request(request: &Value) -> Option<WebhookRequest> {
    if request.get("url").is_some() {
        return None;
    }
    let body = match (request.get("raw_body"), request.get("body")) {
        (Some(Value::String(raw)), _) => raw.clone().into_bytes(),
        (_, Some(Value::String(text))) => text.clone().into_bytes(),
        (_, Some(body)) => serde_json::to_vec(body).ok()?,
        _ => return None,
    };
    let headers = match request.get("headers") {
        Some(Value::Object(headers)) => headers
            .iter()
            .map(|(name, value)| {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string);
                (name.clone(), value)
            })
            .collect(),
        Some(_) => return None,
        None => Vec::new(),
    };
    let text = |key: &str, default: &str| {
        request
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    Some(WebhookRequest {
        method: text("method", "POST"),
        path: text("path", ""),
        query: text("query", ""),
        headers,
        body,
    })
}

/// Standard base64 (padding optional, whitespace ignored).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let digits = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Replays one file; never fails (problems become `error` lines).
async fn replay_file(plugin: &Plugin, cx: &Arc<InstallationContext>, file: &Path) -> Vec<Line> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => return vec![Line::error(file, format!("cannot read the file: {e}"))],
    };
    match recognise(&bytes) {
        Err(reason) => vec![Line::error(file, reason)],
        Ok(Input::Event) => vec![decode_line(plugin, cx, file, &bytes, None).await],
        Ok(Input::Frames(frames)) => replay_frames(plugin, cx, file, &frames).await,
        Ok(Input::Webhook(request)) => replay_webhook(plugin, cx, file, &request).await,
    }
}

/// Decodes one payload into a line. A `reading` the transport call made of the payload is
/// checked against the separate calls the host would otherwise make: the host uses a reading
/// in their place, so one that differs is a plugin bug, reported as an `error` line.
async fn decode_line(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    file: &Path,
    payload: &[u8],
    reading: Option<EventReading>,
) -> Line {
    let outcome = match pipeline::decode_payload(plugin, cx, payload).await {
        Ok(outcome) => outcome,
        Err(error) => return Line::call_failed(file, &error),
    };
    if let Some(reading) = reading {
        let routing_key = match plugin.routing_key(cx, payload).await {
            Ok(key) => key,
            Err(error) => return Line::call_failed(file, &error),
        };
        if reading.routing_key != routing_key {
            return Line::error(
                file,
                format!(
                    "the plugin's event-reading has routing key {:?} but routing-key says {:?}",
                    reading.routing_key, routing_key
                ),
            );
        }
        // The generated WIT types have no `PartialEq`; their Debug form shows every field.
        let (read, decoded) = (
            format!("{:?}", pipeline::read_outcome(reading)),
            format!("{outcome:?}"),
        );
        if read != decoded {
            return Line::error(
                file,
                format!(
                    "the plugin's event-reading differs from decode + commands.parse \
                     (the host uses the reading in their place): read {read}, decoded {decoded}"
                ),
            );
        }
    }
    Line::outcome(file, outcome)
}

/// Feeds a file's frames through one connection's intake.
async fn replay_frames(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    file: &Path,
    frames: &[Vec<u8>],
) -> Vec<Line> {
    let mut intake = FrameIntake::new(format!("replay:{}", file.display()));
    let mut lines = Vec::new();
    let mut incomplete = None;
    for frame in frames {
        let outcome = match intake.push(plugin, cx, frame, Instant::now()).await {
            Ok(outcome) => outcome,
            Err(error) => {
                lines.push(Line::call_failed(file, &error));
                continue;
            }
        };
        match outcome {
            FrameOutcome::Control { kind, hints, .. } => {
                let reason = match hints {
                    Some(hints) => format!("{kind}; {}", describe_hints(&hints)),
                    None => kind,
                };
                lines.push(Line::new(file, "control", Some(reason)));
            }
            FrameOutcome::Ignored(reason) => lines.push(Line::new(file, "ignored", Some(reason))),
            FrameOutcome::Invalid(reason) => lines.push(Line::error(file, reason)),
            FrameOutcome::Partial {
                message_id,
                received,
                total,
            } => incomplete = Some((message_id, received, total)),
            FrameOutcome::Complete {
                payload,
                ack_frame,
                event,
                ..
            } => {
                incomplete = None;
                lines.push(decode_line(plugin, cx, file, &payload, event).await);
                // The host would ACK now; show what it would send to whoever asks for debug logs.
                match plugin
                    .build_ack(cx, &ack_frame, AckStatus::Ok, 0, None)
                    .await
                {
                    Ok(Ok(ack)) => {
                        tracing::debug!(file = %file.display(), ack = %hex::encode(&ack), "ACK frame")
                    }
                    Ok(Err(error)) => tracing::warn!(file = %file.display(),
                        "the plugin cannot build the ACK: {}", pipeline::describe_plugin_error(&error)),
                    Err(error) => tracing::warn!(file = %file.display(), "{error}"),
                }
            }
        }
    }
    // Fragments left over at the end of the file never completed a message.
    if let Some((message_id, received, total)) = incomplete
        && intake.pending_messages() > 0
    {
        lines.push(Line::error(
            file,
            format!("incomplete message {message_id}: {received} of {total} fragments received"),
        ));
    }
    lines
}

/// Connection hints in plain words.
fn describe_hints(hints: &ConnectionHints) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = hints.ping_interval_ms {
        parts.push(format!("ping_interval_ms={ms}"));
    }
    if let Some(ms) = hints.reconnect_interval_ms {
        parts.push(format!("reconnect_interval_ms={ms}"));
    }
    if let Some(ms) = hints.reconnect_jitter_ms {
        parts.push(format!("reconnect_jitter_ms={ms}"));
    }
    if let Some(count) = hints.reconnect_count {
        parts.push(format!("reconnect_count={count}"));
    }
    format!("hints: {}", parts.join(" "))
}

/// Verifies a webhook request and decodes each event it carries.
async fn replay_webhook(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    file: &Path,
    request: &WebhookRequest,
) -> Vec<Line> {
    match pipeline::verify_webhook(plugin, cx, request).await {
        Err(error) => vec![Line::call_failed(file, &error)],
        Ok(WebhookOutcome::Rejected(rejected)) => {
            vec![Line::new(file, "rejected", Some(rejected.to_string()))]
        }
        Ok(WebhookOutcome::Challenge(response)) => {
            let mut line = Line::new(file, "challenge", None);
            line.body = Some(String::from_utf8_lossy(&response.body).into_owned());
            vec![line]
        }
        Ok(WebhookOutcome::Events { payloads, .. }) if payloads.is_empty() => vec![Line::new(
            file,
            "ignored",
            Some("the webhook request carried no events".into()),
        )],
        Ok(WebhookOutcome::Events {
            payloads, readings, ..
        }) => {
            let mut lines = Vec::with_capacity(payloads.len());
            let mut readings = readings.into_iter();
            for payload in &payloads {
                lines.push(decode_line(plugin, cx, file, payload, readings.next()).await);
            }
            lines
        }
    }
}

/// An `--outbound` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundFile {
    target: TargetSpec,
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    notice: Option<NoticeSpec>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Where the delivery goes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    chat_id: String,
    chat_type: ChatType,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    /// Whether to answer inside the thread; by default when `thread_id` is given.
    #[serde(default)]
    in_thread: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChatType {
    Direct,
    Group,
    Channel,
}

/// A notice as the host would decide it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeSpec {
    kind: NoticeKind,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    /// Buttons (`{name, value, label, primary}`; `label` a catalogue key or the words).
    #[serde(default)]
    actions: Vec<crate::domain::notice::NoticeButton>,
}

/// Reads and checks an `--outbound` file.
fn read_outbound(path: &Path) -> anyhow::Result<OutboundFile> {
    let bytes = std::fs::read(path).map_err(|e| {
        usage(format!(
            "--outbound {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let file: OutboundFile = serde_json::from_slice(&bytes).map_err(|e| {
        usage(format!(
            "--outbound {}: {e}; expected {{\"target\": {{\"chat_id\", \"chat_type\", \"thread_id\"?, \"reply_to\"?}}, \"reply\": \"text\"}} or a \"notice\" in place of \"reply\" (see --help)",
            path.display()
        ))
    })?;
    if file.reply.is_some() == file.notice.is_some() {
        return Err(usage(format!(
            "--outbound {}: give exactly one of \"reply\" and \"notice\"",
            path.display()
        )));
    }
    Ok(file)
}

impl OutboundFile {
    /// The delivery the host would hand the plugin, in `cx`'s locale.
    fn delivery(self, cx: &InstallationContext) -> outbound::Delivery {
        let target = types::SessionTarget {
            session_id: "replay".into(),
            chat_id: self.target.chat_id,
            chat_kind: match self.target.chat_type {
                ChatType::Direct => types::ChatKind::Direct,
                ChatType::Group => types::ChatKind::Group,
                ChatType::Channel => types::ChatKind::Channel,
            },
            in_thread: self
                .target
                .in_thread
                .unwrap_or(self.target.thread_id.is_some()),
            thread_id: self.target.thread_id,
            reply_to: self.target.reply_to,
        };
        let content = match (self.reply, self.notice) {
            (Some(text), _) => outbound::Content::Reply(text),
            (None, Some(spec)) => outbound::Content::Notice(spec.render(cx)),
            (None, None) => unreachable!("read_outbound checks there is a reply or a notice"),
        };
        outbound::Delivery {
            target,
            content,
            idempotency_key: self.idempotency_key.unwrap_or_else(|| "replay".into()),
        }
    }
}

impl NoticeSpec {
    /// The contract's notice: the given text, else the host's built-in words for the locale.
    fn render(self, cx: &InstallationContext) -> types::Notice {
        let locale = self
            .locale
            .or_else(|| cx.config.get("locale").cloned())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| DEFAULT_LOCALE.to_string());
        let notice = Notice {
            kind: self.kind,
            detail: self.detail,
            link: self.link,
            reference: self.reference,
            recipient: self.recipient,
            text_key: None,
            actions: self.actions,
            decided: None,
        };
        let texts = NoticeTexts::default();
        let text = self
            .text
            .unwrap_or_else(|| NoticeTexts::default().render(&notice, &locale));
        types::Notice {
            kind: match notice.kind {
                NoticeKind::BindingRequired => types::NoticeKind::BindingRequired,
                NoticeKind::FreshContext => types::NoticeKind::FreshContext,
                NoticeKind::AgentOffline => types::NoticeKind::AgentOffline,
                NoticeKind::AgentArchived => types::NoticeKind::AgentArchived,
                NoticeKind::RunError => types::NoticeKind::RunError,
                NoticeKind::CommandUsage => types::NoticeKind::CommandUsage,
                NoticeKind::Help => types::NoticeKind::Help,
                NoticeKind::Status => types::NoticeKind::Status,
                NoticeKind::Info => types::NoticeKind::Info,
                NoticeKind::Approval => types::NoticeKind::Approval,
            },
            actions: notice
                .actions
                .iter()
                .map(|button| types::NoticeAction {
                    name: button.name.clone(),
                    label: texts.word(&button.label, &locale),
                    value: button.value.clone(),
                    primary: button.primary,
                })
                .collect(),
            locale,
            text,
            link: notice.link,
            reference: notice.reference,
            recipient: notice.recipient,
        }
    }
}

/// Renders the `--outbound` delivery through a copy of `plugin` whose HTTP goes to a local
/// capture server, and prints the requests it made.
async fn run_outbound(
    global: &GlobalArgs,
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    file: OutboundFile,
    out: &mut Output,
) -> anyhow::Result<()> {
    let origins: Vec<String> = plugin
        .manifest()
        .capabilities
        .http
        .iter()
        .flat_map(|allow| allow.entries())
        .map(ToString::to_string)
        .collect();
    let secrets: Vec<String> = cx
        .secrets
        .values()
        .map(|s| s.expose().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let capture = Capture::start(&origins, secrets).await?;
    let mut services = services(OperatorPolicy {
        base_url_overrides: capture.overrides.clone(),
    });
    // Destinations no override covers (wildcard entries) reach the capture server as a proxy,
    // which refuses them: nothing leaves this machine.
    services.http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .proxy(reqwest::Proxy::all(&capture.proxy_url)?)
        .build()?;
    let runtime = Runtime::new(runtime_settings(&global.config()?), services)?;
    let capturing = match plugin.source() {
        Source::File(path) => runtime.load_file(path)?,
        Source::Bundled => {
            let mut found = None;
            for bundled in crate::runtime::bundled::BUNDLED {
                let prepared = runtime.prepare(bundled.wasm, Source::Bundled, None)?;
                if prepared.name() == plugin.name() {
                    found = Some(prepared);
                    break;
                }
            }
            found.ok_or_else(|| anyhow::anyhow!("bundled plugin {} not found", plugin.name()))?
        }
    };
    let delivery = file.delivery(cx);
    let result = capturing.deliver(cx, &delivery).await;
    for request in capture.take() {
        if !out.line(&request)? {
            break;
        }
    }
    capture.stop();
    match result {
        Ok(Ok(receipt)) => {
            eprintln!(
                "outbound: delivered; receipt message id {}",
                receipt
                    .message_id
                    .as_deref()
                    .map_or_else(|| "none".to_string(), |id| format!("{id:?}"))
            );
            Ok(())
        }
        Ok(Err(error)) => Err(anyhow::anyhow!(
            "outbound: the plugin could not deliver (code {}, retryable {}): {}",
            error
                .code
                .map_or_else(|| "none".to_string(), |c| c.to_string()),
            error.retryable,
            error.message
        )),
        Err(error) => Err(anyhow::anyhow!("outbound: plugin call failed: {error}")),
    }
}

/// What the capture server answers every request with: a success in the shapes channel APIs
/// commonly use (a zero `code`, `ok`, a message id under `data` and `result`, an access token).
const CAPTURE_ANSWER: &str = r#"{"code":0,"msg":"ok","ok":true,"data":{"message_id":"replay"},"result":{"message_id":1},"access_token":"replay-token","tenant_access_token":"replay-token","token_type":"Bearer","expire":7200,"expires_in":7200}"#;

/// Local servers standing in for every HTTP origin of a plugin, recording what they receive.
struct Capture {
    /// Origin → capture server, for the operator policy.
    overrides: Vec<BaseUrlOverride>,
    /// The proxy every other destination goes through.
    proxy_url: String,
    requests: Arc<Mutex<Vec<CapturedRequest>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One request a plugin made, as printed.
#[derive(Debug, Serialize)]
struct CapturedRequest {
    method: String,
    /// As the plugin wrote it (the origin it stands for, not the capture server's).
    url: String,
    headers: serde_json::Map<String, Value>,
    /// JSON when the body is JSON, else text, else `{"hex": …}`; null when empty.
    body: Value,
}

#[derive(Clone)]
struct CaptureState {
    /// The origin this server stands in for; `None` for the proxy.
    origin: Option<String>,
    secrets: Arc<Vec<String>>,
    requests: Arc<Mutex<Vec<CapturedRequest>>>,
}

impl Capture {
    async fn start(origins: &[String], secrets: Vec<String>) -> anyhow::Result<Capture> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let secrets = Arc::new(secrets);
        let mut capture = Capture {
            overrides: Vec::new(),
            proxy_url: String::new(),
            requests: requests.clone(),
            tasks: Vec::new(),
        };
        let mut served = origins
            .iter()
            // A wildcard entry names no single origin to stand in for: the proxy refuses it.
            .filter(|origin| !origin.contains('*'))
            .map(|origin| Some(origin.clone()))
            .collect::<Vec<_>>();
        served.dedup();
        served.push(None);
        for origin in served {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let local = format!("http://{}", listener.local_addr()?);
            match &origin {
                Some(from) => capture
                    .overrides
                    .push(BaseUrlOverride::new(from, &local).map_err(|e| {
                        anyhow::anyhow!("cannot redirect {from} to the capture server: {e}")
                    })?),
                None => capture.proxy_url = local,
            }
            let state = CaptureState {
                origin,
                secrets: secrets.clone(),
                requests: requests.clone(),
            };
            let app = axum::Router::new()
                .fallback(capture_request)
                .with_state(state);
            capture.tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!("replay capture server stopped: {e}");
                }
            }));
        }
        Ok(capture)
    }

    /// The requests recorded so far, in arrival order.
    fn take(&self) -> Vec<CapturedRequest> {
        std::mem::take(&mut *self.requests.lock().expect("capture lock"))
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Records one request and answers it with [`CAPTURE_ANSWER`].
async fn capture_request(
    axum::extract::State(state): axum::extract::State<CaptureState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{Method, StatusCode, header};
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let url = match &state.origin {
        Some(origin) => format!(
            "{origin}{}",
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ),
        None if parts.method == Method::CONNECT => format!("https://{}", parts.uri),
        None => parts.uri.to_string(),
    };
    let redact = |text: &str| {
        state.secrets.iter().fold(text.to_string(), |text, secret| {
            text.replace(secret.as_str(), "[redacted]")
        })
    };
    if state.origin.is_none() && parts.method == Method::CONNECT {
        eprintln!(
            "outbound: refused a request to {} (no single origin of capabilities.http to stand in for)",
            redact(&url)
        );
        return StatusCode::FORBIDDEN.into_response();
    }
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        // The connection's own headers say nothing about the plugin's request.
        if [header::HOST, header::CONTENT_LENGTH, header::CONNECTION].contains(name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = if name == header::AUTHORIZATION || name == header::COOKIE {
            match value.split_once(' ') {
                Some((scheme, _)) if name == header::AUTHORIZATION => {
                    format!("{scheme} [redacted]")
                }
                _ => "[redacted]".to_string(),
            }
        } else {
            redact(&value)
        };
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                let text = redact(text);
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            Err(_) => json!({ "hex": hex::encode(&bytes) }),
        }
    };
    state
        .requests
        .lock()
        .expect("capture lock")
        .push(CapturedRequest {
            method: parts.method.to_string(),
            url: redact(&url),
            headers,
            body,
        });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        CAPTURE_ANSWER,
    )
        .into_response()
}

/// Plugin kv for the run, in memory: nothing a replay does is stored.
#[derive(Default)]
struct MemoryKv {
    entries: Mutex<HashMap<KvKey, KvEntry>>,
}

/// A kv key within its scope.
type KvKey = (KvScope, String);

/// A kv value and when it expires (milliseconds since the epoch; `None`: never).
type KvEntry = (Vec<u8>, Option<i64>);

impl KvBackend for MemoryKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        now_ms: i64,
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        let entries = self.entries.lock().expect("kv lock");
        let value = entries
            .get(&(scope.clone(), key.to_string()))
            .filter(|(_, expires)| expires.is_none_or(|at| at > now_ms))
            .map(|(value, _)| value.clone());
        Box::pin(std::future::ready(Ok(value)))
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
    ) -> KvFuture<'a, ()> {
        let mut entries = self.entries.lock().expect("kv lock");
        entries.retain(|_, (_, expires)| expires.is_none_or(|at| at > now_ms));
        let (keys, bytes) = entries
            .iter()
            .filter(|((s, k), _)| s == scope && k != key)
            .fold((0u64, 0u64), |(keys, bytes), (_, (v, _))| {
                (keys + 1, bytes + v.len() as u64)
            });
        let len = value.len() as u64;
        let result = if len > quota.max_value_bytes {
            Err(KvError::ValueTooLarge {
                len,
                max: quota.max_value_bytes,
            })
        } else if keys + 1 > quota.max_keys {
            Err(KvError::QuotaExceeded {
                what: format!("keys: {} would exceed {}", keys + 1, quota.max_keys),
            })
        } else if bytes + len > quota.max_bytes {
            Err(KvError::QuotaExceeded {
                what: format!("bytes: {} would exceed {}", bytes + len, quota.max_bytes),
            })
        } else {
            entries.insert(
                (scope.clone(), key.to_string()),
                (value.to_vec(), expires_at_ms),
            );
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn delete<'a>(&'a self, scope: &'a KvScope, key: &'a str) -> KvFuture<'a, bool> {
        let removed = self
            .entries
            .lock()
            .expect("kv lock")
            .remove(&(scope.clone(), key.to_string()))
            .is_some();
        Box::pin(std::future::ready(Ok(removed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("e30=").as_deref(), Some(&b"{}"[..]));
        assert_eq!(decode_base64("e30").as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            decode_base64("aGVsbG8gd29ybGQ=").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("e3*="), None);
    }

    #[test]
    fn wrappers_are_recognised_and_anything_else_is_a_raw_payload() {
        for raw in [
            &br#"{"schema":"2.0","header":{},"event":{}}"#[..],
            br#"{"update_id":1,"message":{"text":"hi"}}"#,
            br#"{"request":{"url":"https://x","headers":{},"body":{}}}"#,
            b"[1]",
            b"echo:hi",
            b"",
        ] {
            assert!(matches!(recognise(raw), Ok(Input::Event)), "{raw:?}");
        }
        assert!(
            matches!(recognise(br#"{"frame":{"hex":"0800"}}"#), Ok(Input::Frames(f)) if f == vec![vec![8, 0]])
        );
        assert!(
            matches!(recognise(br#"{"fragments":[{"base64":"CAA="},{"hex":"08"}]}"#), Ok(Input::Frames(f)) if f.len() == 2)
        );
        assert!(matches!(
            recognise(br#"{"request":{"headers":{},"raw_body":"{}"}}"#),
            Ok(Input::Webhook(r)) if r.method == "POST" && r.body == b"{}"
        ));
        assert!(matches!(
            recognise(br#"{"request":{"method":"GET","path":"/hook","query":"a=1","headers":{"x":"1"},"body":{"k":1}}}"#),
            Ok(Input::Webhook(r)) if r.method == "GET" && r.path == "/hook" && r.query == "a=1"
                && r.body == br#"{"k":1}"# && r.headers == vec![("x".to_string(), "1".to_string())]
        ));
        assert!(
            matches!(recognise(br#"{"frame":{"hex":"zz"}}"#), Err(reason) if reason.contains("hex"))
        );
    }

    #[test]
    fn pairs_need_a_key_and_an_equals_sign() {
        let ok = pairs(&["a=b=c".into(), " k =".into()], "--secret").unwrap();
        assert_eq!(ok["a"], "b=c");
        assert_eq!(ok["k"], "");
        for bad in ["novalue", "=x"] {
            let error = pairs(&[bad.to_string()], "--config-value").unwrap_err();
            assert!(error.is::<UsageError>(), "{bad}");
        }
    }

    #[test]
    fn notices_without_text_get_the_catalogue_words() {
        let cx = InstallationContext::new("replay").with_config("locale", "zh-CN");
        let spec: NoticeSpec = serde_json::from_value(json!({"kind": "agent_offline"})).unwrap();
        let notice = spec.render(&cx);
        assert_eq!(notice.locale, "zh-CN");
        assert!(notice.text.contains("不在线"), "{}", notice.text);
        let spec: NoticeSpec =
            serde_json::from_value(json!({"kind": "info", "text": "hello", "locale": "en"}))
                .unwrap();
        assert_eq!(spec.render(&cx).text, "hello");
    }
}
