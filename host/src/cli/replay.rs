//! `switchboard replay`: the integrator's offline harness. Runs recorded event payloads, WebSocket
//! frames and webhook requests through a plugin exactly as the host's inbound path would (via
//! [`crate::ingest::pipeline`]) and prints one JSON object per decoded unit on stdout.
//!
//! Owns: recognising the input files' shapes and rendering outcomes as JSON lines. It must not
//! decide anything a plugin or the pipeline decides, and never touches storage.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use super::GlobalArgs;
use crate::dispatch::Command;
use crate::domain::InstallationContext;
use crate::ingest::pipeline::{self, DecodeOutcome, FrameIntake, FrameOutcome, WebhookOutcome};
use crate::runtime::transport::{AckStatus, ConnectionHints, EventReading, WebhookRequest};
use crate::runtime::types::{ChatKind, InboundMessage};
use crate::runtime::{CallError, Plugin};

const AFTER_HELP: &str = "\
INPUTS (the shape of each JSON file decides how it is replayed):
  event payload     A JSON object with `schema`/`header`/`event` (v2) or `type`/`event` (v1): the
                    bytes are decoded as they are (the WebSocket data payload or the decrypted
                    webhook body).
  frame fixture     Binary WebSocket frames as `hex` (or `base64`): at the top level, under `frame`
                    or `inbound`, or a list under `fragments`/`frames`. Frames of one file are fed
                    in order through the plugin's frame classification and the host's fragment
                    reassembly (one connection per file); a completed message is decoded.
  webhook request   `request` with `headers` and `raw_body` (exact bytes) or `body` (JSON, sent
                    compactly) and no `url`: verified (signature, decryption, token) by the plugin;
                    every event it carries is decoded.
  anything else     One line with kind `error` (e.g. the `rest_*.json` REST fixtures).
  A directory stands for its `*.json` files, sorted by name.
  When the plugin reads an event already in `classify-frame` or `verify-webhook` (an
  `event-reading`, which the host uses in place of routing-key/decode/commands.parse), the reading
  is checked against those calls; one that differs is a line of kind `error` naming both.

OUTPUT: one JSON object per line on stdout, per decoded unit (a webhook with several events gives
several lines; a fragment that does not complete a message gives none). Every key is always
present, null where it does not apply:
  file              the input file
  kind              message | ignored | control | challenge | rejected | error
  reason            why it was ignored/rejected/an error; the control frame's kind and hints
  event_id, message_id, chat_id, chat_type (direct|group), sender_open_id, message_type,
  body, command_body, addressed_to_bot, parent_id, root_id, thread_id, create_time_ms
                    the decoded message (kind message); for kind challenge, `body` is the HTTP
                    answer the channel expects
  command           the command in command_body: {\"new\":null}, {\"new\":\"text\"},
                    {\"issue\":{\"title\":…,\"description\":…}}, \"issue_usage\", or null
Logs go to stderr. Exit status: 0 when every input was processed (even if some were rejected or
errors), 2 for unusable arguments (missing file, unknown plugin).

Nothing is assumed about the installation: without --bot-open-id/--bot-union-id no group message is
addressed to the bot, and without --encrypt-key encrypted webhooks are rejected. The Lark fixtures'
README (shared/fixtures/lark/README.md) lists the constants to pass.

EXAMPLE (from the repository checkout, with the Lark fixtures next to it):
  switchboard replay --plugin lark --app-id cli_a5f3c2e1d4b6a789 \\
    --bot-open-id ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51 \\
    --encrypt-key fixture-encrypt-key-7Hq2 --verification-token vT9kQ2mXw7LpR4sZ \\
    ../shared/fixtures/lark
  switchboard replay --plugin lark ../shared/fixtures/lark/event_receive_text_p2p.json | jq .body";

/// Help heading of the installation options.
const INSTALLATION: &str = "Installation (optional; none is assumed)";

/// Arguments of `switchboard replay`.
#[derive(Debug, Args)]
#[command(
    after_help = "See `switchboard replay --help` for the input formats, the output schema and an example.",
    after_long_help = AFTER_HELP
)]
pub struct ReplayArgs {
    /// The plugin to run (see `switchboard plugins list`).
    #[arg(long, value_name = "NAME")]
    plugin: String,

    /// Installation config `app_id`.
    #[arg(long, value_name = "ID", help_heading = INSTALLATION)]
    app_id: Option<String>,

    /// Installation config `bot_open_id` (the bot's own open_id: mention detection).
    #[arg(long, value_name = "ID", help_heading = INSTALLATION)]
    bot_open_id: Option<String>,

    /// Installation config `bot_union_id` (preferred over the open_id for mention detection).
    #[arg(long, value_name = "ID", help_heading = INSTALLATION)]
    bot_union_id: Option<String>,

    /// Installation secret `encrypt_key`: webhook decryption and signature check.
    #[arg(long, value_name = "KEY", help_heading = INSTALLATION)]
    encrypt_key: Option<String>,

    /// Installation secret `verification_token`: checked on every webhook request when given.
    #[arg(long, value_name = "TOKEN", help_heading = INSTALLATION)]
    verification_token: Option<String>,

    /// Event payloads, frame fixtures or webhook request fixtures; a directory means its
    /// `*.json` files.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
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

/// Runs `switchboard replay`.
pub async fn run(global: &GlobalArgs, args: ReplayArgs) -> anyhow::Result<()> {
    let files = collect_files(&args.inputs)?;
    let runtime = global.runtime()?;
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
    let cx = Arc::new(installation(&args));
    let mut stdout = std::io::stdout().lock();
    for file in &files {
        let lines = replay_file(&plugin, &cx, file).await;
        for line in lines {
            let text = serde_json::to_string(&line)?;
            match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
                Ok(()) => {}
                // The reader went away (`| head`): nothing more to do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(anyhow::anyhow!("cannot write to stdout: {e}")),
            }
        }
    }
    Ok(())
}

/// The installation the replay runs as: only what the arguments give.
fn installation(args: &ReplayArgs) -> InstallationContext {
    let mut cx = InstallationContext::new("replay");
    let config = [
        ("app_id", &args.app_id),
        ("bot_open_id", &args.bot_open_id),
        ("bot_union_id", &args.bot_union_id),
    ];
    for (key, value) in config {
        if let Some(value) = value {
            cx = cx.with_config(key, value.clone());
        }
    }
    let secrets = [
        ("encrypt_key", &args.encrypt_key),
        ("verification_token", &args.verification_token),
    ];
    for (key, value) in secrets {
        if let Some(value) = value {
            cx = cx.with_secret(key, value.clone());
        }
    }
    cx
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
    sender_id: Option<String>,
    sender_name: Option<String>,
    attachments: Option<Value>,
    message_type: Option<String>,
    body: Option<String>,
    command_body: Option<String>,
    command: Option<Value>,
    addressed_to_bot: Option<bool>,
    parent_id: Option<String>,
    root_id: Option<String>,
    thread_id: Option<String>,
    create_time_ms: Option<i64>,
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

    fn message(file: &Path, message: InboundMessage, command: Option<Command>) -> Line {
        Line {
            file: file.display().to_string(),
            kind: "message",
            reason: None,
            event_id: Some(message.event_id),
            message_id: Some(message.message_id),
            chat_id: Some(message.chat.id),
            chat_type: Some(match message.chat.kind {
                ChatKind::Direct => "direct",
                ChatKind::Group => "group",
                ChatKind::Channel => "channel",
            }),
            sender_id: Some(message.sender.id),
            sender_name: message.sender.display_name,
            attachments: Some(Value::Array(
                message
                    .attachments
                    .into_iter()
                    .map(|a| {
                        json!({"kind": a.kind, "name": a.name, "mime": a.mime, "size": a.size, "ref": a.ref_})
                    })
                    .collect(),
            )),
            message_type: Some(message.message_type),
            body: Some(message.body),
            command_body: Some(message.command_body),
            command: Some(command.map_or(Value::Null, command_json)),
            addressed_to_bot: Some(message.addressed_to_bot),
            parent_id: message.parent_id,
            root_id: message.root_id,
            thread_id: message.thread_id,
            create_time_ms: Some(message.create_time_ms),
        }
    }
}

/// A command as a small JSON value.
fn command_json(command: Command) -> Value {
    match command {
        Command::New(args) => json!({ "name": "new", "args": args }),
        Command::Builtin(builtin) => json!({ "name": builtin.name(), "args": "" }),
        Command::Agent { name, args } => json!({ "name": name, "args": args }),
        Command::Action { name, value, .. } => json!({ "action": name, "value": value }),
    }
}

/// What a replay file holds.
enum Input {
    /// An event payload: the file's bytes.
    Event,
    /// Raw WebSocket frames, in order.
    Frames(Vec<Vec<u8>>),
    /// One webhook request.
    Webhook(WebhookRequest),
}

/// Recognises a file's shape; `Err` explains why it is none of the inputs.
fn recognise(bytes: &[u8]) -> Result<Input, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(fields) = &value else {
        return Err("not a JSON object".into());
    };
    let has = |key: &str| fields.contains_key(key);
    if has("event") && ((has("schema") && has("header")) || has("type")) {
        return Ok(Input::Event);
    }
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
    Err("not an event, frame or webhook request: expected an event payload (`schema`/`header`/`event` or v1 `type`/`event`), a frame (`hex`/`base64`, `frame`, `inbound`, `fragments`) or a webhook `request` with `headers` and `raw_body`/`body`".into())
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
/// with a URL is one the plugin sends, not one it receives).
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
    Some(WebhookRequest {
        method: request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("POST")
            .to_string(),
        path: request
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        query: request
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
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
    match outcome {
        DecodeOutcome::Message { message, command } => Line::message(file, message, command),
        DecodeOutcome::Ignored(reason) => Line::new(file, "ignored", Some(reason)),
        DecodeOutcome::Invalid(error) => Line::error(file, pipeline::describe_plugin_error(&error)),
    }
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
    fn shapes_are_recognised() {
        assert!(matches!(
            recognise(br#"{"schema":"2.0","header":{},"event":{}}"#),
            Ok(Input::Event)
        ));
        assert!(matches!(
            recognise(br#"{"uuid":"u","type":"event_callback","event":{}}"#),
            Ok(Input::Event)
        ));
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
        let outbound = recognise(br#"{"request":{"url":"https://x","headers":{},"body":{}}}"#);
        assert!(
            matches!(outbound, Err(reason) if reason.starts_with("not an event, frame or webhook request"))
        );
        assert!(matches!(recognise(b"[1]"), Err(reason) if reason == "not a JSON object"));
        assert!(
            matches!(recognise(br#"{"frame":{"hex":"zz"}}"#), Err(reason) if reason.contains("hex"))
        );
    }
}
