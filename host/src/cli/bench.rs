//! `switchboard bench`: `decode`, the inbound benchmark of issue 3 (below), `ingest`, the
//! webhook → durable → response benchmark of issue 4 ([`ingest`]), and `channels`, the Slack and
//! Telegram inbound benchmark of issues 16 and 17 ([`channels`]).
//!
//! `switchboard bench decode` runs side by side with the official SDK peers in `shared/peers/`
//! (`run_peers.sh`).
//!
//! It feeds the peers' inputs (the same `events/*.json` templates turned into the same 256-body
//! pool, byte for byte: `input_sha256` matches theirs) through the four peer cases, and prints one
//! JSON line per peer and case in the peers' format on stdout:
//!
//! - `switchboard-wasm`: the production path, through the [`Runtime`] and the bundled Lark plugin
//!   (webhooks: `transport.verify-webhook` then `decoder.decode`; WebSocket frames:
//!   `transport.classify-frame`, host reassembly, `decoder.decode`, `transport.build-ack`).
//! - `switchboard-native`: the same steps calling `switchboard_lark`'s plain-Rust functions.
//!
//! The handler counts what the peers' handler counts (events, characters of the readable text,
//! mentions), taken from our decoded message: the plugin already flattens the content and
//! resolves mentions. Like the peers, each (case, peer) runs in a fresh child process (peak RSS
//! per case), sequentially with one event in flight, after a warm-up on the same path; CPU time
//! is the process's user + system time (`getrusage`) over the timed loop.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_lark::{
    decode as lark_decode, transport as lark_transport, webhook as lark_webhook,
};

mod channels;
mod ingest;

use super::GlobalArgs;
use crate::domain::InstallationContext;
use crate::ingest::reassembly::{Fragment, Push, Reassembler};
use crate::runtime::{Plugin, decoder, transport};

/// Event templates, used round-robin (the peers' order).
const EVENT_FILES: [&str; 4] = [
    "im_message_receive_v1_text_mentions.json",
    "im_message_receive_v1_post.json",
    "im_message_receive_v1_image.json",
    "im_message_receive_v1_text_p2p.json",
];
/// Distinct bodies, cycled.
const POOL: usize = 256;
/// The peers' test Encrypt Key (not a real app's).
const ENCRYPT_KEY: &str = "bench-test-encrypt-key-0123456789abcdef";
/// Equals `header.token` in the event files.
const VERIFICATION_TOKEN: &str = "v3rIfIcAtIoNtOkEnBeNcH0000000001";
/// `app_id` of the event files.
const APP_ID: &str = "cli_a1b2c3d4e5f60718";
/// Fragments per event in `ws_frame_fragmented`.
const FRAGMENTS: usize = 3;
/// `input_sha256` every peer run printed (RESULTS.md).
const PEERS_INPUT_SHA256: &str = "c3e07eef56f205b3";
/// Connection id used for reassembly.
const CONNECTION: &str = "bench-connection";

/// `switchboard bench …`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Inbound events (webhook and WebSocket) through the wasm plugin and natively, printing the
    /// SDK peers' JSON lines (shared/peers/RESULTS.md).
    Decode(DecodeArgs),
    /// Webhook deliveries over loopback to an in-process host on a fresh SQLite or PostgreSQL
    /// database: sustained messages per second and latency percentiles (issue 4).
    Ingest(ingest::IngestArgs),
    /// Slack and Telegram inbound events through the wasm plugins and natively, printing the
    /// channel SDK peers' JSON lines (`scripts/peers/`).
    Channels(channels::ChannelsArgs),
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// Timed events per case.
    #[arg(short = 'n', long = "count", env = "N", default_value_t = 20_000)]
    count: usize,
    /// Warm-up events per case on the same path (default: min(2000, N)).
    #[arg(long)]
    warmup: Option<usize>,
    /// Comma-separated cases, named as by the peers.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "webhook_plain,webhook_encrypted,ws_frame,ws_frame_fragmented"
    )]
    cases: Vec<Case>,
    /// The peers' `events/` directory (default: `../shared/peers/events` from the current
    /// directory, then from the workspace).
    #[arg(long, value_name = "DIR")]
    events: Option<PathBuf>,
    /// Which path(s) to measure.
    #[arg(long, value_enum, default_value_t = PeerChoice::Both)]
    peer: PeerChoice,
    /// Run one case in this process (used for the per-case child processes).
    #[arg(long, hide = true)]
    case: Option<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Case {
    WebhookPlain,
    WebhookEncrypted,
    WsFrame,
    WsFrameFragmented,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::WebhookPlain => "webhook_plain",
            Case::WebhookEncrypted => "webhook_encrypted",
            Case::WsFrame => "ws_frame",
            Case::WsFrameFragmented => "ws_frame_fragmented",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerChoice {
    #[value(name = "switchboard-wasm")]
    Wasm,
    #[value(name = "switchboard-native")]
    Native,
    #[value(name = "both")]
    Both,
}

impl PeerChoice {
    fn name(self) -> &'static str {
        match self {
            PeerChoice::Wasm => "switchboard-wasm",
            PeerChoice::Native => "switchboard-native",
            PeerChoice::Both => "both",
        }
    }
}

/// Runs a bench subcommand (on a thread of its own: both build their own executors, which
/// cannot be started inside the CLI's runtime).
pub async fn run(global: &GlobalArgs, args: BenchArgs) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(BENCH_THREAD.into())
            .spawn_scoped(scope, || match args.command {
                BenchCommand::Decode(args) => decode_command(global, args),
                BenchCommand::Ingest(args) => ingest::ingest_command(global, args),
                BenchCommand::Channels(args) => channels::channels_command(global, args),
            })
            .context("starting the benchmark thread")?
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the benchmark thread panicked")))
    })
}

/// Name of the thread a bench subcommand runs on (`bench ingest`'s load generator).
const BENCH_THREAD: &str = "bench";

fn decode_command(global: &GlobalArgs, args: DecodeArgs) -> anyhow::Result<()> {
    let warmup = args.warmup.unwrap_or(args.count.min(2000));
    let events = events_dir(args.events.as_deref())?;
    if let Some(case) = args.case {
        let line = run_case(global, args.peer, case, args.count, warmup, &events)?;
        println!("{}", serde_json::to_string(&line)?);
        return Ok(());
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; measure with `cargo build --release`");
    }
    let peers = match args.peer {
        PeerChoice::Both => vec![PeerChoice::Wasm, PeerChoice::Native],
        one => vec![one],
    };
    eprintln!(
        "# switchboard bench decode: nproc={} loadavg={} N={} warmup={warmup} events={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        args.count,
        events.display()
    );
    let exe = std::env::current_exe().context("locating the switchboard binary")?;
    let mut failed = false;
    for case in &args.cases {
        for peer in &peers {
            let mut command = std::process::Command::new(&exe);
            command.args(forwarded_global_args(global));
            command
                .args([
                    "bench",
                    "decode",
                    "--case",
                    case.name(),
                    "--peer",
                    peer.name(),
                ])
                .arg("-n")
                .arg(args.count.to_string())
                .arg("--warmup")
                .arg(warmup.to_string())
                .arg("--events")
                .arg(&events)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit());
            let output = command
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let line = stdout.lines().rev().find(|line| line.starts_with('{'));
            match line {
                Some(line) if output.status.success() => println!("{line}"),
                _ => {
                    failed = true;
                    let error = Json::Object(vec![
                        ("peer".into(), Json::str(peer.name())),
                        ("case".into(), Json::str(case.name())),
                        ("error".into(), Json::str(&format!("{}", output.status))),
                    ]);
                    println!("{}", serde_json::to_string(&error)?);
                }
            }
            std::io::stdout().flush()?;
        }
    }
    if failed {
        bail!("some cases failed (see the `error` lines and stderr)");
    }
    Ok(())
}

/// The global options the parent was given, for its children.
fn forwarded_global_args(global: &GlobalArgs) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = vec![
        "--cache-dir".into(),
        global.cache_dir.clone().into_os_string(),
        "--log".into(),
        global.log.clone().into(),
    ];
    if global.no_cache {
        out.push("--no-cache".into());
    }
    if let Some(file) = &global.config {
        out.push("--config".into());
        out.push(file.clone().into_os_string());
    }
    if let Some(dir) = &global.plugins_dir {
        out.push("--plugins-dir".into());
        out.push(dir.clone().into_os_string());
    }
    if let Some(format) = global.log_format.to_possible_value() {
        out.push("--log-format".into());
        out.push(format.get_name().into());
    }
    out
}

/// The events directory: `--events`, else `../shared/peers/events` from the current directory,
/// else from the workspace this binary was built in.
fn events_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_events = |dir: &Path| EVENT_FILES.iter().all(|f| dir.join(f).is_file());
    if let Some(dir) = given {
        if !has_events(dir) {
            bail!(
                "--events {}: expected the peers' event files ({}) there",
                dir.display(),
                EVENT_FILES.join(", ")
            );
        }
        return Ok(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
    }
    let mut tried = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        tried.push(cwd.join("../shared/peers/events"));
    }
    tried.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/events"));
    for dir in &tried {
        if has_events(dir) {
            return Ok(dir.canonicalize().unwrap_or_else(|_| dir.clone()));
        }
    }
    bail!(
        "the peers' events directory was not found (tried {}); run from the workspace root or pass --events DIR (shared/peers/events)",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ------------------------------------------------------------------ order-preserving JSON

/// A JSON value that keeps object keys in document order, so the bodies re-serialize exactly as
/// the peers' `JSON.stringify` / `json.dumps(separators=(",", ":"), ensure_ascii=False)` do.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn str(value: &str) -> Json {
        Json::String(value.to_string())
    }

    fn uint(value: u64) -> Json {
        Json::Number(value.into())
    }

    /// `value` rounded to `digits` decimals.
    fn float(value: f64, digits: i32) -> Json {
        let scale = 10f64.powi(digits);
        serde_json::Number::from_f64((value * scale).round() / scale)
            .map_or(Json::Null, Json::Number)
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(fields) => fields.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn string_mut(&mut self, path: &[&str]) -> anyhow::Result<&mut String> {
        let mut value = self;
        for key in path {
            value = value
                .field_mut(key)
                .with_context(|| format!("event template has no `{}`", path.join(".")))?;
        }
        match value {
            Json::String(s) => Ok(s),
            _ => bail!("event template field `{}` is not a string", path.join(".")),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            fields.push((key, value));
        }
        Ok(Json::Object(fields))
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

// ------------------------------------------------------------------ inputs (as the peers build them)

/// Replaces the last 8 characters of `s` with `suffix` (JavaScript `s.slice(0, -8) + suffix`).
fn replace_tail(s: &mut String, suffix: &str) {
    let keep = s.chars().count().saturating_sub(8);
    *s = s.chars().take(keep).collect::<String>() + suffix;
}

/// Adds `i` to a decimal string (`String(Number(s) + i)`).
fn offset_decimal(s: &mut String, i: usize) -> anyhow::Result<()> {
    let value: i64 = s
        .parse()
        .with_context(|| format!("create_time {s:?} is not an integer"))?;
    *s = (value + i as i64).to_string();
    Ok(())
}

/// The 256 compact bodies and the first 16 hex digits of the sha256 of their concatenation.
fn build_plain_pool(dir: &Path) -> anyhow::Result<(Vec<Vec<u8>>, String)> {
    let templates = EVENT_FILES
        .iter()
        .map(|file| {
            let path = dir.join(file);
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice::<Json>(&text)
                .with_context(|| format!("parsing {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut bodies = Vec::with_capacity(POOL);
    let mut hasher = Sha256::new();
    for i in 0..POOL {
        let mut event = templates[i % templates.len()].clone();
        let suffix = format!("{i:08x}");
        replace_tail(event.string_mut(&["header", "event_id"])?, &suffix);
        offset_decimal(event.string_mut(&["header", "create_time"])?, i)?;
        replace_tail(
            event.string_mut(&["event", "message", "message_id"])?,
            &suffix,
        );
        offset_decimal(event.string_mut(&["event", "message", "create_time"])?, i)?;
        let body = serde_json::to_vec(&event)?;
        hasher.update(&body);
        bodies.push(body);
    }
    let digest = hex::encode(hasher.finalize())[..16].to_string();
    Ok((bodies, digest))
}

/// `base64(iv ‖ AES-256-CBC(sha256(key), iv, PKCS7(plaintext)))`, what Lark sends when an
/// Encrypt Key is set. The IV is derived from `i` (the peers draw a random one).
fn aes_encrypt(key: &str, plaintext: &[u8], i: usize) -> String {
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let key = Sha256::digest(key.as_bytes());
    let iv: [u8; 16] = Sha256::digest(format!("bench-iv-{i}").as_bytes())[..16]
        .try_into()
        .expect("16 bytes");
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(&key, &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut raw = iv.to_vec();
    raw.extend_from_slice(&ciphertext);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// One prepared webhook delivery.
struct WebhookInput {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn prepare_webhook(bodies: &[Vec<u8>], encrypted: bool) -> Vec<WebhookInput> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, plain)| {
            let timestamp = (1_718_000_000 + i).to_string();
            let nonce = format!("{:016x}", 0x5eed_0000 + i);
            let (body, key) = if encrypted {
                let envelope = Json::Object(vec![(
                    "encrypt".into(),
                    Json::String(aes_encrypt(ENCRYPT_KEY, plain, i)),
                )]);
                (
                    serde_json::to_vec(&envelope).expect("serializable"),
                    ENCRYPT_KEY,
                )
            } else {
                (plain.clone(), "")
            };
            let signature = lark_webhook::signature_hex(&timestamp, &nonce, key, &body);
            // Header names as an HTTP server delivers them (lower-case).
            let headers = vec![
                (
                    "content-type".into(),
                    "application/json; charset=utf-8".into(),
                ),
                ("x-lark-request-timestamp".into(), timestamp),
                ("x-lark-request-nonce".into(), nonce),
                ("x-lark-signature".into(), signature),
                ("x-request-id".into(), format!("bench-{i}")),
            ];
            WebhookInput { body, headers }
        })
        .collect()
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn field_varint(num: u64, value: u64, out: &mut Vec<u8>) {
    varint(num << 3, out);
    varint(value, out);
}

fn field_bytes(num: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint((num << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn frame_header(key: &str, value: &str, out: &mut Vec<u8>) {
    let mut entry = Vec::new();
    field_bytes(1, key.as_bytes(), &mut entry);
    field_bytes(2, value.as_bytes(), &mut entry);
    field_bytes(5, &entry, out);
}

/// The peers' `pbbp2.Frame` bytes, in three parts: a common prefix (SeqID, LogID, service 7,
/// method 1 = data, `type=event`), a per-event `message_id` header and per-fragment suffixes
/// (`sum`, `seq`, `trace_id`, payload).
struct WsInputs {
    prefix: Vec<u8>,
    suffixes: Vec<Vec<Vec<u8>>>,
    mids: Vec<Vec<u8>>,
}

fn prepare_ws(bodies: &[Vec<u8>], fragments: usize, total_events: usize) -> WsInputs {
    let mut prefix = Vec::new();
    field_varint(1, 0, &mut prefix);
    field_varint(2, 0, &mut prefix);
    field_varint(3, 7, &mut prefix);
    field_varint(4, 1, &mut prefix);
    frame_header("type", "event", &mut prefix);
    let suffixes = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let trace = format!("trace-{i:024x}");
            let step = body.len().div_ceil(fragments);
            (0..fragments)
                .map(|k| {
                    let part = &body[(k * step).min(body.len())..((k + 1) * step).min(body.len())];
                    let mut out = Vec::new();
                    frame_header("sum", &fragments.to_string(), &mut out);
                    frame_header("seq", &k.to_string(), &mut out);
                    frame_header("trace_id", &trace, &mut out);
                    field_bytes(8, part, &mut out);
                    out
                })
                .collect()
        })
        .collect();
    let mids = (0..total_events)
        .map(|i| {
            let mut out = Vec::new();
            frame_header("message_id", &format!("ws_{i:016x}"), &mut out);
            out
        })
        .collect();
    WsInputs {
        prefix,
        suffixes,
        mids,
    }
}

// ------------------------------------------------------------------ the two paths

/// One fragment as classified.
struct DataFragment {
    message_id: String,
    seq: u32,
    total: u32,
    payload: Vec<u8>,
    /// A single-frame event the plugin already decoded while classifying (the host then makes
    /// no decode call, as the connector does): (readable body, mention count).
    read: Option<(String, usize)>,
}

/// One verified webhook payload.
struct Verified {
    payload: Vec<u8>,
    /// (readable body, mention count) of the plugin's reading, if it read the payload.
    read: Option<(String, usize)>,
}

/// The body and mention count of a reading the plugin made in a transport call.
fn read_message(reading: transport::EventReading) -> anyhow::Result<(String, usize)> {
    match reading.decoded {
        Ok(decoder::Decoded::Message(message)) => Ok((message.body, message.mentions.len())),
        Ok(decoder::Decoded::Action(_)) => bail!("an action, not a message"),
        Ok(decoder::Decoded::Ignored(reason)) => bail!("event ignored: {reason}"),
        Err(error) => bail!("decode failed: {error:?}"),
    }
}

/// The plugin steps, through wasm or natively.
trait Driver {
    /// Verifies a webhook request; the plaintext event payloads, each with the plugin's
    /// reading of it when it made one (the host then makes no decode call, as the webhook
    /// endpoint does).
    async fn verify(&mut self, input: &WebhookInput) -> anyhow::Result<Vec<Verified>>;
    /// Classifies a frame, which must be a data frame.
    async fn classify(&mut self, frame: &[u8]) -> anyhow::Result<DataFragment>;
    /// Decodes a payload, which must be a chat message: (readable body, mention count).
    async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<(String, usize)>;
    /// The ACK frame for the completing frame.
    async fn ack(&mut self, frame: &[u8], processing_ms: u32) -> anyhow::Result<Vec<u8>>;
}

struct WasmDriver {
    plugin: Arc<Plugin>,
    cx: Arc<InstallationContext>,
}

impl Driver for WasmDriver {
    async fn verify(&mut self, input: &WebhookInput) -> anyhow::Result<Vec<Verified>> {
        // What the HTTP ingress hands the plugin: the request copied into the WIT record.
        let request = transport::WebhookRequest {
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            headers: input.headers.clone(),
            body: input.body.clone(),
        };
        match self.plugin.verify_webhook(&self.cx, &request).await? {
            Ok(transport::WebhookVerdict::Events(events)) => {
                let mut readings = events.readings.into_iter();
                events
                    .payloads
                    .into_iter()
                    .map(|payload| {
                        let read = readings.next().map(read_message).transpose()?;
                        Ok(Verified { payload, read })
                    })
                    .collect()
            }
            Ok(transport::WebhookVerdict::Challenge(_)) => bail!("unexpected url_verification"),
            Err(rejection) => bail!("webhook rejected: {rejection:?}"),
        }
    }

    async fn classify(&mut self, frame: &[u8]) -> anyhow::Result<DataFragment> {
        match self.plugin.classify_frame(&self.cx, frame).await? {
            Ok(transport::FrameClass::Data(data)) => Ok(DataFragment {
                message_id: data.fragment.message_id,
                seq: data.fragment.seq,
                total: data.fragment.total,
                payload: data.payload,
                read: data.event.map(read_message).transpose()?,
            }),
            Ok(other) => bail!("not a data frame: {other:?}"),
            Err(error) => bail!("classify-frame failed: {error:?}"),
        }
    }

    async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<(String, usize)> {
        match self.plugin.decode(&self.cx, payload).await? {
            Ok(decoder::Decoded::Message(message)) => Ok((message.body, message.mentions.len())),
            Ok(decoder::Decoded::Action(_)) => bail!("an action, not a message"),
            Ok(decoder::Decoded::Ignored(reason)) => bail!("event ignored: {reason}"),
            Err(error) => bail!("decode failed: {error:?}"),
        }
    }

    async fn ack(&mut self, frame: &[u8], processing_ms: u32) -> anyhow::Result<Vec<u8>> {
        self.plugin
            .build_ack(
                &self.cx,
                frame,
                transport::AckStatus::Ok,
                processing_ms,
                None,
            )
            .await?
            .map_err(|error| anyhow::anyhow!("build-ack failed: {error:?}"))
    }
}

struct NativeDriver {
    encrypt_key: Option<&'static str>,
    verification_token: Option<&'static str>,
}

impl Driver for NativeDriver {
    async fn verify(&mut self, input: &WebhookInput) -> anyhow::Result<Vec<Verified>> {
        let request = lark_webhook::WebhookRequest {
            method: "POST",
            headers: &input.headers,
            body: &input.body,
        };
        let secrets = lark_webhook::WebhookSecrets {
            encrypt_key: self.encrypt_key,
            verification_token: self.verification_token,
        };
        match lark_webhook::verify_webhook(&request, &secrets) {
            Ok(lark_webhook::WebhookVerdict::Events(events)) => Ok(events
                .payloads
                .into_iter()
                .map(|payload| Verified {
                    payload,
                    read: None,
                })
                .collect()),
            Ok(lark_webhook::WebhookVerdict::Challenge(_)) => bail!("unexpected url_verification"),
            Err(rejection) => bail!("webhook rejected: {rejection}"),
        }
    }

    async fn classify(&mut self, frame: &[u8]) -> anyhow::Result<DataFragment> {
        match lark_transport::classify_frame(frame)? {
            lark_transport::FrameClass::Data(data) => Ok(DataFragment {
                message_id: data.fragment.message_id,
                seq: data.fragment.seq,
                total: data.fragment.total,
                payload: data.payload,
                read: None,
            }),
            other => bail!("not a data frame: {other:?}"),
        }
    }

    async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<(String, usize)> {
        let ctx = lark_decode::DecodeContext::new("", "");
        match lark_decode::decode_event(payload, &ctx)? {
            lark_decode::Decoded::Message(message) => Ok((message.body, message.mentions.len())),
            lark_decode::Decoded::Ignored(reason) => bail!("event ignored: {reason}"),
        }
    }

    async fn ack(&mut self, frame: &[u8], processing_ms: u32) -> anyhow::Result<Vec<u8>> {
        Ok(lark_transport::build_ack(
            frame,
            lark_transport::AckStatus::Ok,
            processing_ms,
            None,
        )?)
    }
}

/// What the peers' handler accumulates.
#[derive(Debug, Default)]
struct Sink {
    handled: u64,
    text_chars: u64,
    mentions: u64,
}

impl Sink {
    fn handle(&mut self, body: &str, mentions: usize) {
        self.handled += 1;
        self.text_chars += body.chars().count() as u64;
        self.mentions += mentions as u64;
    }
}

async fn run_webhook<D: Driver>(
    driver: &mut D,
    pool: &[WebhookInput],
    n: usize,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    for i in 0..n {
        for verified in driver.verify(&pool[i % pool.len()]).await? {
            let (body, mentions) = match verified.read {
                Some(read) => read,
                None => driver.decode(&verified.payload).await?,
            };
            sink.handle(&body, mentions);
        }
    }
    Ok(())
}

/// ACKs sent during a phase.
#[derive(Debug, Default)]
struct Acks {
    count: usize,
    last: Vec<u8>,
}

async fn run_ws<D: Driver>(
    driver: &mut D,
    ws: &WsInputs,
    reassembler: &mut Reassembler,
    (start, n): (usize, usize),
    sink: &mut Sink,
    acks: &mut Acks,
) -> anyhow::Result<()> {
    for i in start..start + n {
        let mid = &ws.mids[i];
        for suffix in &ws.suffixes[i % ws.suffixes.len()] {
            // A fresh buffer per frame, as a socket read delivers it.
            let frame = [ws.prefix.as_slice(), mid, suffix].concat();
            let received = Instant::now();
            let fragment = driver.classify(&frame).await?;
            let pushed = reassembler.push(
                Fragment {
                    connection_id: CONNECTION,
                    message_id: &fragment.message_id,
                    seq: fragment.seq,
                    total: fragment.total,
                    bytes: &fragment.payload,
                },
                received,
            )?;
            if let Push::Complete(completed) = pushed {
                let (body, mentions) = match fragment.read {
                    Some(read) => read,
                    None => driver.decode(&completed.payload).await?,
                };
                sink.handle(&body, mentions);
                let processing_ms =
                    u32::try_from(received.elapsed().as_millis()).unwrap_or(u32::MAX);
                acks.last = driver.ack(&frame, processing_ms).await?;
                acks.count += 1;
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ measurement

/// Process CPU time (user + system, all threads) in seconds.
fn cpu_seconds() -> f64 {
    let usage = rusage();
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn rusage() -> libc::rusage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) failed");
    // SAFETY: zero-initialised and filled by the successful call above.
    unsafe { usage.assume_init() }
}

/// Current resident set size in MiB (`VmRSS`).
fn rss_now_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Timed-loop figures.
struct Timed {
    seconds: f64,
    cpu: f64,
    rss_before_mb: f64,
}

async fn measure<D: Driver>(
    driver: &mut D,
    case: Case,
    inputs: &CaseInputs,
    n: usize,
    warmup: usize,
    sink: &mut Sink,
) -> anyhow::Result<Timed> {
    match inputs {
        CaseInputs::Webhook(pool) => {
            run_webhook(driver, pool, warmup, sink).await?;
            *sink = Sink::default();
            let rss_before_mb = rss_now_mb();
            let c0 = cpu_seconds();
            let t0 = Instant::now();
            run_webhook(driver, pool, n, sink).await?;
            Ok(Timed {
                seconds: t0.elapsed().as_secs_f64(),
                cpu: cpu_seconds() - c0,
                rss_before_mb,
            })
        }
        CaseInputs::Ws(ws) => {
            let mut reassembler = Reassembler::default();
            let mut acks = Acks::default();
            run_ws(driver, ws, &mut reassembler, (0, warmup), sink, &mut acks).await?;
            *sink = Sink::default();
            acks = Acks::default();
            let rss_before_mb = rss_now_mb();
            let c0 = cpu_seconds();
            let t0 = Instant::now();
            run_ws(driver, ws, &mut reassembler, (warmup, n), sink, &mut acks).await?;
            let timed = Timed {
                seconds: t0.elapsed().as_secs_f64(),
                cpu: cpu_seconds() - c0,
                rss_before_mb,
            };
            if acks.count != n {
                bail!("{}: expected {n} acks, got {}", case.name(), acks.count);
            }
            if n > 0 && !contains(&acks.last, br#"{"code":200"#) {
                bail!("{}: unexpected ack frame {:?}", case.name(), acks.last);
            }
            Ok(timed)
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

enum CaseInputs {
    Webhook(Vec<WebhookInput>),
    Ws(WsInputs),
}

/// Runs one case for one peer in this process; the peers' JSON line.
fn run_case(
    global: &GlobalArgs,
    peer: PeerChoice,
    case: Case,
    n: usize,
    warmup: usize,
    events: &Path,
) -> anyhow::Result<Json> {
    let (bodies, digest) = build_plain_pool(events)?;
    if digest != PEERS_INPUT_SHA256 {
        eprintln!(
            "warning: input_sha256 {digest} differs from the peers' {PEERS_INPUT_SHA256}: are the event files in {} the peers' ones?",
            events.display()
        );
    }
    let inputs = match case {
        Case::WebhookPlain => CaseInputs::Webhook(prepare_webhook(&bodies, false)),
        Case::WebhookEncrypted => CaseInputs::Webhook(prepare_webhook(&bodies, true)),
        Case::WsFrame => CaseInputs::Ws(prepare_ws(&bodies, 1, warmup + n)),
        Case::WsFrameFragmented => CaseInputs::Ws(prepare_ws(&bodies, FRAGMENTS, warmup + n)),
    };
    // The secrets each peer case configures: the token for plain webhooks, key and token for
    // encrypted ones, none for the long connection (plaintext, unsigned).
    let (encrypt_key, verification_token) = match case {
        Case::WebhookPlain => (None, Some(VERIFICATION_TOKEN)),
        Case::WebhookEncrypted => (Some(ENCRYPT_KEY), Some(VERIFICATION_TOKEN)),
        Case::WsFrame | Case::WsFrameFragmented => (None, None),
    };
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the current-thread executor")?;
    let mut sink = Sink::default();
    let (timed, sdk_version, runtime) = match peer {
        PeerChoice::Wasm => {
            let host = global.runtime()?;
            let plugin = host
                .plugin_for_channel("lark")
                .context("the Lark plugin is not loaded")?;
            let mut cx = InstallationContext::new(format!("bench-{}", case.name()))
                .with_config("app_id", APP_ID);
            if let Some(key) = encrypt_key {
                cx = cx.with_secret("encrypt_key", key);
            }
            if let Some(token) = verification_token {
                cx = cx.with_secret("verification_token", token);
            }
            let sdk_version = format!(
                "switchboard {} / lark plugin {} ({}, sha256 {})",
                env!("CARGO_PKG_VERSION"),
                plugin.manifest().version,
                plugin.source(),
                &plugin.sha256()[..12]
            );
            let runtime = format!(
                "wasmtime component ({:?} allocator), {} build",
                host.allocator(),
                build_profile()
            );
            let mut driver = WasmDriver {
                plugin,
                cx: Arc::new(cx),
            };
            let timed =
                executor.block_on(measure(&mut driver, case, &inputs, n, warmup, &mut sink))?;
            (timed, sdk_version, runtime)
        }
        PeerChoice::Native => {
            let mut driver = NativeDriver {
                encrypt_key,
                verification_token,
            };
            let timed =
                executor.block_on(measure(&mut driver, case, &inputs, n, warmup, &mut sink))?;
            let sdk_version = format!(
                "switchboard {} / switchboard-lark {} (native)",
                env!("CARGO_PKG_VERSION"),
                env!("CARGO_PKG_VERSION")
            );
            (
                timed,
                sdk_version,
                format!("Rust native, {} build", build_profile()),
            )
        }
        PeerChoice::Both => {
            bail!("--case runs one peer: pass --peer switchboard-wasm or switchboard-native")
        }
    };
    if sink.handled != n as u64 {
        bail!("handler saw {} events, expected {n}", sink.handled);
    }
    let peak_kb = rusage().ru_maxrss as f64; // KiB on Linux
    let Timed {
        seconds,
        cpu,
        rss_before_mb,
    } = timed;
    let per_event = |total: f64| if n == 0 { 0.0 } else { total * 1e6 / n as f64 };
    Ok(Json::Object(vec![
        ("peer".into(), Json::str(peer.name())),
        ("case".into(), Json::str(case.name())),
        ("events".into(), Json::uint(n as u64)),
        ("seconds".into(), Json::float(seconds, 4)),
        ("events_per_sec".into(), Json::float(n as f64 / seconds, 1)),
        ("us_per_event".into(), Json::float(per_event(seconds), 2)),
        ("cpu_seconds".into(), Json::float(cpu, 4)),
        ("cpu_us_per_event".into(), Json::float(per_event(cpu), 2)),
        ("peak_rss_mb".into(), Json::float(peak_kb / 1024.0, 1)),
        ("rss_before_timed_mb".into(), Json::float(rss_before_mb, 1)),
        ("warmup".into(), Json::uint(warmup as u64)),
        ("handled".into(), Json::uint(sink.handled)),
        ("text_chars".into(), Json::uint(sink.text_chars)),
        ("mentions".into(), Json::uint(sink.mentions)),
        ("input_sha256".into(), Json::String(digest)),
        ("sdk_version".into(), Json::String(sdk_version)),
        ("runtime".into(), Json::String(runtime)),
    ]))
}

fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_json_round_trips_compactly() {
        let text = r#"{ "b": 1, "a": [true, null, "x\"y", "李"], "c": {"z": 1.5} }"#;
        let value: Json = serde_json::from_str(text).unwrap();
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            r#"{"b":1,"a":[true,null,"x\"y","李"],"c":{"z":1.5}}"#
        );
    }

    #[test]
    fn frames_decode_with_the_plugin_codec() {
        let body = br#"{"schema":"2.0"}"#.to_vec();
        let ws = prepare_ws(std::slice::from_ref(&body), FRAGMENTS, 1);
        let mut joined = Vec::new();
        for (k, suffix) in ws.suffixes[0].iter().enumerate() {
            let frame = [ws.prefix.as_slice(), &ws.mids[0], suffix].concat();
            match lark_transport::classify_frame(&frame).unwrap() {
                lark_transport::FrameClass::Data(data) => {
                    assert_eq!(data.fragment.message_id, "ws_0000000000000000");
                    assert_eq!((data.fragment.seq, data.fragment.total), (k as u32, 3));
                    joined.extend_from_slice(&data.payload);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(joined, body);
    }

    #[test]
    fn encrypted_bodies_verify_with_the_plugin() {
        let inputs = prepare_webhook(
            &[br#"{"schema":"2.0","header":{"token":"t"}}"#.to_vec()],
            true,
        );
        let request = lark_webhook::WebhookRequest {
            method: "POST",
            headers: &inputs[0].headers,
            body: &inputs[0].body,
        };
        let secrets = lark_webhook::WebhookSecrets {
            encrypt_key: Some(ENCRYPT_KEY),
            verification_token: Some("t"),
        };
        assert!(matches!(
            lark_webhook::verify_webhook(&request, &secrets),
            Ok(lark_webhook::WebhookVerdict::Events(_))
        ));
    }
}
