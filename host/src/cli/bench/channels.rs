//! `switchboard bench channels`: the Slack and Telegram plugins' inbound paths (issues 16 and 17),
//! wasm vs native, printing the same JSON lines as the Node peers in `scripts/peers/` (the
//! official Bolt for JavaScript and grammY) so one run compares all four.
//!
//! Cases, each a pool of distinct inputs generated here from templates and written out once
//! (`--write-inputs DIR`) so every peer reads the same bytes (`input_sha256`: the first 16 hex
//! digits of the sha256 of the case's input file):
//!
//! - `slack_events_api`: signed `event_callback` bodies (v0 HMAC-SHA256 headers) →
//!   `transport.verify-webhook`, then `decoder.decode` of the payload;
//! - `slack_socket_mode`: Socket Mode `events_api` envelopes → `transport.classify-frame`,
//!   `decoder.decode`, `transport.build-ack`;
//! - `telegram_webhook`: `Update`s with the `X-Telegram-Bot-Api-Secret-Token` header →
//!   `transport.verify-webhook` (which reads each update: no decode call);
//! - `telegram_poll`: `getUpdates` answers of 100 updates → `transport.parse-poll` (which reads
//!   each update).
//!
//! `switchboard-wasm` runs the bundled plugin through the [`Runtime`] (plugin kv in memory, as
//! `replay` does); `switchboard-native` calls the plugin crates' plain-Rust functions for the
//! same steps. Each (case, peer) runs in a fresh child process, one event in flight, after a
//! warm-up on the same path; CPU time is `getrusage` over the timed loop (as `bench decode`).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use hmac::Mac as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    decoder as sdk_decoder, transport as sdk_transport,
};
use switchboard_plugin_sdk::http as sdk_http;
use switchboard_slack as slack;
use switchboard_telegram as telegram;

use super::{Json, PeerChoice, build_profile, contains, cpu_seconds, rss_now_mb, rusage};
use crate::bindings::http;
use crate::capabilities::{OperatorPolicy, ServiceLimits, Services};
use crate::cli::GlobalArgs;
use crate::domain::{InstallationContext, KvBackend, KvFuture, KvQuota, KvScope};
use crate::runtime::bundled::BUNDLED;
use crate::runtime::{Plugin, Runtime, RuntimeSettings, Source, decoder, transport};

/// Distinct bodies per webhook and Socket Mode case, cycled.
const POOL: usize = 256;
/// Updates in one `getUpdates` answer.
const POLL_BATCH: usize = 100;
/// Distinct `getUpdates` answers (6,400 distinct updates), cycled.
const POLL_ANSWERS: usize = 64;
/// The peers' configuration, written beside the input files.
const CONFIG_FILE: &str = "bench-inputs.json";

/// The bench app's Signing Secret (a test value, not a real app's).
const SLACK_SIGNING_SECRET: &str = "bench-slack-signing-secret-0123456789abcdef";
/// The bench bot's user id (`bot_user_id`).
const SLACK_BOT_USER: &str = "UBENCHBOT01";
/// The bench bot's `bot_id` (Bolt's `ignoreSelf` compares it).
const SLACK_BOT_ID: &str = "BBENCHBOT01";
/// The bench workspace.
const SLACK_TEAM: &str = "TBENCH00001";
/// The webhook `secret_token` (a test value).
const TELEGRAM_SECRET: &str = "bench-telegram-secret_0123456789abcdef";
/// The bench bot's user id (`bot_id`).
const TELEGRAM_BOT_ID: u64 = 7_000_000_001;
/// The bench bot's username (`bot_username`).
const TELEGRAM_BOT_USERNAME: &str = "switchboard_bench_bot";
/// Unix seconds the templates' own times start from (ts, date).
const EPOCH: u64 = 1_718_000_000;

/// `switchboard bench channels …`
#[derive(Debug, Args)]
pub struct ChannelsArgs {
    /// Timed events per case (for `telegram_poll` a multiple of 100: updates, 100 an answer).
    #[arg(short = 'n', long = "count", env = "N", default_value_t = 10_000)]
    count: usize,
    /// Warm-up events per case on the same path (default: min(2000, N)).
    #[arg(long)]
    warmup: Option<usize>,
    /// Comma-separated cases.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slack_events_api,slack_socket_mode,telegram_webhook,telegram_poll"
    )]
    cases: Vec<Case>,
    /// Which path(s) to measure.
    #[arg(long, value_enum, default_value_t = PeerChoice::Both)]
    peer: PeerChoice,
    /// Read the inputs from this directory (written by `--write-inputs`); default: generate
    /// them in memory, signed now.
    #[arg(long, value_name = "DIR", conflicts_with = "write_inputs")]
    inputs: Option<PathBuf>,
    /// Write every case's inputs and the peers' configuration to DIR, print one line per case
    /// and exit.
    #[arg(long, value_name = "DIR")]
    write_inputs: Option<PathBuf>,
    /// Unix seconds the Slack requests are signed at (default: now). Signatures older than
    /// five minutes are refused, by the plugin and by the peers.
    #[arg(long, value_name = "SECONDS")]
    signed_at: Option<u64>,
    /// Run one case in this process (used for the per-case child processes).
    #[arg(long, hide = true)]
    case: Option<Case>,
}

/// A benchmark case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum Case {
    /// Signed Events API requests: verify-webhook, then decode.
    SlackEventsApi,
    /// Socket Mode `events_api` envelopes: classify-frame, decode, build-ack.
    SlackSocketMode,
    /// Updates with the secret-token header: verify-webhook (which reads them).
    TelegramWebhook,
    /// `getUpdates` answers of 100 updates: parse-poll (which reads them).
    TelegramPoll,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::SlackEventsApi,
        Case::SlackSocketMode,
        Case::TelegramWebhook,
        Case::TelegramPoll,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::SlackEventsApi => "slack_events_api",
            Case::SlackSocketMode => "slack_socket_mode",
            Case::TelegramWebhook => "telegram_webhook",
            Case::TelegramPoll => "telegram_poll",
        }
    }

    fn channel(self) -> &'static str {
        match self {
            Case::SlackEventsApi | Case::SlackSocketMode => "slack",
            Case::TelegramWebhook | Case::TelegramPoll => "telegram",
        }
    }

    /// Events one input carries.
    fn events_per_input(self) -> usize {
        match self {
            Case::TelegramPoll => POLL_BATCH,
            _ => 1,
        }
    }
}

/// Runs `bench channels`.
pub(crate) fn channels_command(global: &GlobalArgs, args: ChannelsArgs) -> anyhow::Result<()> {
    let warmup = args.warmup.unwrap_or(args.count.min(2000));
    let signed_at = args.signed_at.unwrap_or_else(now_seconds);
    if let Some(dir) = &args.write_inputs {
        return write_inputs(dir, signed_at);
    }
    let source = match &args.inputs {
        Some(dir) => InputSource::Dir(dir.clone()),
        None => InputSource::Generated { signed_at },
    };
    if let Some(case) = args.case {
        let line = run_case(global, args.peer, case, args.count, warmup, &source)?;
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
        "# switchboard bench channels: nproc={} loadavg={} N={} warmup={warmup} inputs={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        args.count,
        match &source {
            InputSource::Dir(dir) => dir.display().to_string(),
            InputSource::Generated { signed_at } => format!("generated, signed at {signed_at}"),
        }
    );
    let exe = std::env::current_exe().context("locating the switchboard binary")?;
    let mut failed = false;
    for case in &args.cases {
        for peer in &peers {
            let mut command = std::process::Command::new(&exe);
            command.args(super::forwarded_global_args(global));
            command
                .args(["bench", "channels", "--case", case.name()])
                .args(["--peer", peer.name()])
                .arg("-n")
                .arg(args.count.to_string())
                .arg("--warmup")
                .arg(warmup.to_string());
            match &source {
                InputSource::Dir(dir) => command.arg("--inputs").arg(dir),
                InputSource::Generated { signed_at } => {
                    command.arg("--signed-at").arg(signed_at.to_string())
                }
            };
            let output = command
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            match stdout.lines().rev().find(|line| line.starts_with('{')) {
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

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ------------------------------------------------------------------ inputs

/// Where a child's inputs come from.
enum InputSource {
    /// Files written by `--write-inputs`.
    Dir(PathBuf),
    /// Generated in memory, Slack requests signed at `signed_at`.
    Generated { signed_at: u64 },
}

/// A case's input file: one input per line (JSON Lines).
fn file_name(case: Case) -> String {
    format!("{}.jsonl", case.name())
}

/// The first 16 hex digits of the sha256 of `bytes`.
fn short_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..16].to_string()
}

fn write_inputs(dir: &Path, signed_at: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = peers_config(signed_at);
    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    for case in Case::ALL {
        let bytes = case_file(case, signed_at);
        let path = dir.join(file_name(case));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        let line = json!({
            "case": case.name(),
            "file": path.display().to_string(),
            "inputs": bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
            "input_sha256": short_sha256(&bytes),
        });
        println!("{line}");
    }
    Ok(())
}

/// What the Node peers need besides the inputs: the secrets and the bots (test values).
fn peers_config(signed_at: u64) -> Value {
    json!({
        "signed_at": signed_at,
        "poll_batch": POLL_BATCH,
        "slack": {
            "signing_secret": SLACK_SIGNING_SECRET,
            "bot_user_id": SLACK_BOT_USER,
            "bot_id": SLACK_BOT_ID,
            "team_id": SLACK_TEAM,
        },
        "telegram": {
            "secret_token": TELEGRAM_SECRET,
            "bot_id": TELEGRAM_BOT_ID,
            "bot_username": TELEGRAM_BOT_USERNAME,
            "bot_first_name": "Switchboard Bench",
        },
    })
}

/// The bytes of a case's input file.
fn case_file(case: Case, signed_at: u64) -> Vec<u8> {
    let lines: Vec<String> = match case {
        Case::SlackEventsApi => (0..POOL)
            .map(|i| {
                let body = slack_body(i);
                let timestamp = signed_at.to_string();
                json!({
                    "headers": {
                        "content-type": "application/json",
                        "x-slack-request-timestamp": timestamp,
                        "x-slack-signature": slack_signature(&timestamp, body.as_bytes()),
                    },
                    "body": body,
                })
                .to_string()
            })
            .collect(),
        Case::SlackSocketMode => (0..POOL).map(slack_envelope).collect(),
        Case::TelegramWebhook => (0..POOL)
            .map(|g| {
                json!({
                    "headers": {
                        "content-type": "application/json",
                        "x-telegram-bot-api-secret-token": TELEGRAM_SECRET,
                    },
                    "body": telegram_update(g).to_string(),
                })
                .to_string()
            })
            .collect(),
        Case::TelegramPoll => (0..POLL_ANSWERS)
            .map(|r| {
                // Distinct from the webhook pool, ascending as Telegram hands them out.
                let updates: Vec<Value> = (0..POLL_BATCH)
                    .map(|j| telegram_update(POOL + r * POLL_BATCH + j))
                    .collect();
                json!({ "ok": true, "result": updates }).to_string()
            })
            .collect(),
    };
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

/// `v0=` + hex HMAC-SHA256(signing secret, `v0:{timestamp}:{body}`), computed here (not with the
/// plugin's code) so the plugin's verification is checked against an independent signer, and
/// Bolt's against both.
fn slack_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(SLACK_SIGNING_SECRET.as_bytes())
        .expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Slack `ts` (seconds with a microsecond fraction).
fn slack_ts(seconds: u64, micros: usize) -> String {
    format!("{seconds}.{micros:06}")
}

/// The `message` event of template `i % 5`: a DM, a channel mention, a thread reply, a
/// `file_share` in a private channel, an mpim message with a link and `<!here>`.
fn slack_event(i: usize) -> Value {
    let n = 4000 + i;
    let ts = slack_ts(EPOCH + i as u64, 100 + i);
    let user = format!("U0BENCH{:03X}", i % 64);
    let mut event = match i % 5 {
        0 => json!({
            "type": "message",
            "channel": format!("D0BENCH{:03X}", i % 32),
            "channel_type": "im",
            "text": format!("hi! can you summarize ticket #{n} for me? café ☕ — thanks"),
        }),
        1 => json!({
            "type": "message",
            "channel": format!("C0BENCH{:02X}", i % 8),
            "channel_type": "channel",
            "text": format!(
                "<@{SLACK_BOT_USER}> please check <https://ci.example.com/builds/{n}|build {n}> &amp; tell <@U0BENCH0A1> when it is green"
            ),
        }),
        2 => json!({
            "type": "message",
            "channel": format!("C0BENCH{:02X}", i % 8),
            "channel_type": "channel",
            "thread_ts": slack_ts(EPOCH - 3600 + i as u64, 1),
            "parent_user_id": "U0BENCH0A1",
            "text": format!("agreed, ship it after <#C0BENCH01|general> signs off (run {n})"),
        }),
        3 => json!({
            "type": "message",
            "subtype": "file_share",
            "channel": format!("G0BENCH{:02X}", i % 8),
            "channel_type": "group",
            "text": format!("here is the failing log for run {n}"),
            "upload": false,
            "files": [{
                "id": format!("F0BENCH{i:04X}"),
                "created": EPOCH + i as u64,
                "name": format!("build-{n}.log"),
                "title": format!("build-{n}.log"),
                "mimetype": "text/plain",
                "filetype": "text",
                "user": user,
                "size": 2048 + i,
                "url_private": format!("https://files.slack.com/files-pri/{SLACK_TEAM}-F0BENCH{i:04X}/build-{n}.log"),
                "url_private_download": format!("https://files.slack.com/files-pri/{SLACK_TEAM}-F0BENCH{i:04X}/download/build-{n}.log"),
            }],
        }),
        _ => json!({
            "type": "message",
            "channel": format!("G0BENCHMP{:X}", i % 4),
            "channel_type": "mpim",
            "text": format!(
                "<!here> standup moved to 10:30, notes at <https://wiki.example.com/standup?id={n}> cc <@{SLACK_BOT_USER}>"
            ),
        }),
    };
    let fields = event.as_object_mut().expect("an object");
    fields.insert("user".into(), json!(user));
    fields.insert("ts".into(), json!(ts));
    fields.insert("event_ts".into(), json!(ts));
    fields.insert("team".into(), json!(SLACK_TEAM));
    fields.insert(
        "client_msg_id".into(),
        json!(format!("{i:08x}-5b1e-4c2a-9d3f-{:012x}", 0xbe7c_0000 + i)),
    );
    event
}

/// The Events API body (`event_callback`) of input `i`.
fn slack_body(i: usize) -> String {
    json!({
        "token": "bench-verification-token",
        "team_id": SLACK_TEAM,
        "context_team_id": SLACK_TEAM,
        "api_app_id": "A0BENCHAPP1",
        "event": slack_event(i),
        "type": "event_callback",
        "event_id": format!("Ev0BENCH{i:08X}"),
        "event_time": EPOCH + i as u64,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": SLACK_TEAM,
            "user_id": SLACK_BOT_USER,
            "is_bot": true,
            "is_enterprise_install": false,
        }],
        "is_ext_shared_channel": false,
        "event_context": format!("4-bench-{i:08x}"),
    })
    .to_string()
}

/// The Socket Mode `events_api` envelope (one text frame) of input `i`.
fn slack_envelope(i: usize) -> String {
    format!(
        r#"{{"envelope_id":"{i:08x}-e9b1-4f0c-8a57-{:012x}","payload":{},"type":"events_api","accepts_response_payload":false,"retry_attempt":0,"retry_reason":""}}"#,
        0x50c0_0000 + i,
        slack_body(i)
    )
}

/// A Telegram user (`from`).
fn telegram_user(g: usize) -> Value {
    const NAMES: [(&str, &str); 5] = [
        ("Ana", "Lima"),
        ("Bo", "Chen"),
        ("Chloé", "Martin"),
        ("Dmitri", "Ivanov"),
        ("Eve", "Okafor"),
    ];
    let (first, last) = NAMES[g % NAMES.len()];
    json!({
        "id": 100_000_000 + (g % 50) as u64,
        "is_bot": false,
        "first_name": first,
        "last_name": last,
        "username": format!("{}_{}", first.to_lowercase(), g % 50),
        "language_code": "en",
    })
}

fn telegram_bot_user() -> Value {
    json!({
        "id": TELEGRAM_BOT_ID,
        "is_bot": true,
        "first_name": "Switchboard Bench",
        "username": TELEGRAM_BOT_USERNAME,
    })
}

/// The `Update` of template `g % 5`: a private text, a group mention, a group reply to the bot,
/// a photo with a caption, a `callback_query` with data.
fn telegram_update(g: usize) -> Value {
    let n = 5000 + g;
    let date = EPOCH + g as u64;
    let from = telegram_user(g);
    let private = json!({
        "id": from["id"],
        "first_name": from["first_name"],
        "last_name": from["last_name"],
        "username": from["username"],
        "type": "private",
    });
    let group = json!({
        "id": -1_001_234_567_000_i64 - (g % 8) as i64,
        "title": format!("Bench Team {}", g % 8),
        "type": "supergroup",
    });
    let message_id = 1000 + g;
    let update_id = 800_000_000 + g;
    match g % 5 {
        0 => json!({
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "from": from,
                "chat": private,
                "date": date,
                "text": format!("hello, what is on my calendar for day {n}? ☀ merci"),
            },
        }),
        1 => {
            let mention = format!("@{TELEGRAM_BOT_USERNAME}");
            json!({
                "update_id": update_id,
                "message": {
                    "message_id": message_id,
                    "from": from,
                    "chat": group,
                    "date": date,
                    "text": format!("{mention} summarize the last {n} messages"),
                    "entities": [{"offset": 0, "length": mention.len(), "type": "mention"}],
                },
            })
        }
        2 => json!({
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "from": from,
                "chat": group,
                "date": date,
                "reply_to_message": {
                    "message_id": message_id - 1,
                    "from": telegram_bot_user(),
                    "chat": group,
                    "date": date - 60,
                    "text": format!("Build {n} passed all checks."),
                },
                "text": format!("thanks! and what about the deploy of build {n}?"),
            },
        }),
        3 => {
            let file = |size: &str, w: u32, h: u32, bytes: usize| {
                json!({
                    "file_id": format!("AgACAgQAAxkBAAI{g:08x}{size}"),
                    "file_unique_id": format!("AQAD{g:08x}{size}"),
                    "file_size": bytes,
                    "width": w,
                    "height": h,
                })
            };
            json!({
                "update_id": update_id,
                "message": {
                    "message_id": message_id,
                    "from": from,
                    "chat": private,
                    "date": date,
                    "photo": [
                        file("s", 90, 67, 1200 + g),
                        file("m", 320, 240, 15_000 + g),
                        file("x", 1280, 960, 120_000 + g),
                    ],
                    "caption": format!("the error screen after login, attempt {n}"),
                },
            })
        }
        _ => json!({
            "update_id": update_id,
            "callback_query": {
                "id": (4_382_000_000_000_000_000_u64 + g as u64).to_string(),
                "from": from,
                "message": {
                    "message_id": message_id,
                    "from": telegram_bot_user(),
                    "chat": private,
                    "date": date,
                    "text": format!("Approve deploy {n}?"),
                    "reply_markup": {"inline_keyboard": [[
                        {"text": "Approve", "callback_data": format!("approve:deploy-{n}")},
                        {"text": "Reject", "callback_data": format!("reject:deploy-{n}")},
                    ]]},
                },
                "chat_instance": "-5012345678901234567",
                "data": format!("approve:deploy-{n}"),
            },
        }),
    }
}

/// One webhook request as the HTTP ingress hands it over.
#[derive(Debug, Clone)]
struct HttpInput {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A case's inputs, parsed.
enum CaseInputs {
    /// Webhook requests.
    Webhook(Vec<HttpInput>),
    /// WebSocket text frames.
    Frames(Vec<Vec<u8>>),
    /// Long-poll answer bodies.
    Polls(Vec<Vec<u8>>),
}

impl CaseInputs {
    fn len(&self) -> usize {
        match self {
            CaseInputs::Webhook(v) => v.len(),
            CaseInputs::Frames(v) | CaseInputs::Polls(v) => v.len(),
        }
    }
}

/// Reads a case's file: the parsed inputs and its `input_sha256`.
fn load_inputs(case: Case, source: &InputSource) -> anyhow::Result<(CaseInputs, String)> {
    let bytes = match source {
        InputSource::Dir(dir) => {
            let path = dir.join(file_name(case));
            std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (write it with `bench channels --write-inputs {}`)",
                    path.display(),
                    dir.display()
                )
            })?
        }
        InputSource::Generated { signed_at } => case_file(case, *signed_at),
    };
    let digest = short_sha256(&bytes);
    let lines = bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty());
    let inputs = match case {
        Case::SlackEventsApi | Case::TelegramWebhook => CaseInputs::Webhook(
            lines
                .map(|line| {
                    let value: Value = serde_json::from_slice(line)?;
                    let headers = value["headers"]
                        .as_object()
                        .context("an input without headers")?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    let body = value["body"]
                        .as_str()
                        .context("an input without a body")?
                        .as_bytes()
                        .to_vec();
                    Ok(HttpInput { headers, body })
                })
                .collect::<anyhow::Result<_>>()?,
        ),
        Case::SlackSocketMode => CaseInputs::Frames(lines.map(<[u8]>::to_vec).collect()),
        Case::TelegramPoll => CaseInputs::Polls(lines.map(<[u8]>::to_vec).collect()),
    };
    if inputs.len() == 0 {
        bail!("{}: no inputs", case.name());
    }
    Ok((inputs, digest))
}

// ------------------------------------------------------------------ the two paths

/// What the handler reads of one event (the same for both paths, so they can be compared).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handled {
    /// Message id, or action id.
    id: String,
    /// The message body; for an action `name:value` (the callback data).
    text: String,
    /// Mentions in the message.
    mentions: usize,
    /// Whether it is an action.
    action: bool,
}

fn action_text(name: &str, value: &str) -> String {
    if value.is_empty() {
        name.to_string()
    } else {
        format!("{name}:{value}")
    }
}

fn handled_wasm(decoded: decoder::Decoded) -> anyhow::Result<Handled> {
    match decoded {
        decoder::Decoded::Message(m) => Ok(Handled {
            id: m.message_id,
            text: m.body,
            mentions: m.mentions.len(),
            action: false,
        }),
        decoder::Decoded::Action(a) => Ok(Handled {
            id: a.action_id,
            text: action_text(&a.name, &a.value),
            mentions: 0,
            action: true,
        }),
        decoder::Decoded::Ignored(reason) => bail!("event ignored: {reason}"),
    }
}

fn handled_native(decoded: sdk_decoder::Decoded) -> anyhow::Result<Handled> {
    match decoded {
        sdk_decoder::Decoded::Message(m) => Ok(Handled {
            id: m.message_id,
            text: m.body,
            mentions: m.mentions.len(),
            action: false,
        }),
        sdk_decoder::Decoded::Action(a) => Ok(Handled {
            id: a.action_id,
            text: action_text(&a.name, &a.value),
            mentions: 0,
            action: true,
        }),
        sdk_decoder::Decoded::Ignored(reason) => bail!("event ignored: {reason}"),
    }
}

/// The plugin steps of the cases, through wasm or natively.
trait Driver {
    /// Verifies a webhook request and reads its events (the plugin's readings, else a decode).
    async fn webhook(&mut self, input: &HttpInput) -> anyhow::Result<Vec<Handled>>;
    /// Classifies a data frame, decodes its event and builds the ACK.
    async fn frame(&mut self, frame: &[u8]) -> anyhow::Result<(Handled, Vec<u8>)>;
    /// Parses a long-poll answer and reads its events.
    async fn poll(&mut self, body: &[u8]) -> anyhow::Result<Vec<Handled>>;
}

/// The production path: the bundled plugin through the [`Runtime`].
struct WasmDriver {
    plugin: Arc<Plugin>,
    cx: Arc<InstallationContext>,
}

impl WasmDriver {
    async fn decode(&self, payload: &[u8]) -> anyhow::Result<Handled> {
        match self.plugin.decode(&self.cx, payload).await? {
            Ok(decoded) => handled_wasm(decoded),
            Err(error) => bail!("decode failed: {error:?}"),
        }
    }

    /// Each payload's reading when the plugin made one, else its decode (as the host does).
    async fn read_all(
        &self,
        payloads: Vec<Vec<u8>>,
        readings: Vec<transport::EventReading>,
    ) -> anyhow::Result<Vec<Handled>> {
        let mut readings = readings.into_iter();
        let mut out = Vec::with_capacity(payloads.len());
        for payload in payloads {
            out.push(match readings.next() {
                Some(reading) => match reading.decoded {
                    Ok(decoded) => handled_wasm(decoded)?,
                    Err(error) => bail!("decode failed: {error:?}"),
                },
                None => self.decode(&payload).await?,
            });
        }
        Ok(out)
    }
}

impl Driver for WasmDriver {
    async fn webhook(&mut self, input: &HttpInput) -> anyhow::Result<Vec<Handled>> {
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
                if events.response.status != 200 {
                    bail!("webhook answered {}", events.response.status);
                }
                self.read_all(events.payloads, events.readings).await
            }
            Ok(transport::WebhookVerdict::Challenge(_)) => bail!("unexpected challenge"),
            Err(rejection) => bail!("webhook rejected: {rejection:?}"),
        }
    }

    async fn frame(&mut self, frame: &[u8]) -> anyhow::Result<(Handled, Vec<u8>)> {
        let received = Instant::now();
        let data = match self.plugin.classify_frame(&self.cx, frame).await? {
            Ok(transport::FrameClass::Data(data)) => data,
            Ok(other) => bail!("not a data frame: {other:?}"),
            Err(error) => bail!("classify-frame failed: {error:?}"),
        };
        let handled = match data.event {
            Some(reading) => match reading.decoded {
                Ok(decoded) => handled_wasm(decoded)?,
                Err(error) => bail!("decode failed: {error:?}"),
            },
            None => self.decode(&data.payload).await?,
        };
        let processing_ms = u32::try_from(received.elapsed().as_millis()).unwrap_or(u32::MAX);
        let ack = self
            .plugin
            .build_ack(
                &self.cx,
                frame,
                transport::AckStatus::Ok,
                processing_ms,
                None,
            )
            .await?
            .map_err(|error| anyhow::anyhow!("build-ack failed: {error:?}"))?;
        Ok((handled, ack))
    }

    async fn poll(&mut self, body: &[u8]) -> anyhow::Result<Vec<Handled>> {
        let response = http::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
        };
        match self.plugin.parse_poll(&self.cx, None, &response).await? {
            Ok(batch) => self.read_all(batch.payloads, batch.readings).await,
            Err(error) => bail!("parse-poll failed: {error:?}"),
        }
    }
}

/// What the Slack plugin's logic needs from a host, natively: kv in memory, the installation,
/// the clock; no requests (decoding makes none).
#[derive(Default)]
struct SlackNativeHost {
    kv: HashMap<String, Vec<u8>>,
}

impl slack::Host for SlackNativeHost {
    fn send(
        &mut self,
        _request: &sdk_http::Request,
    ) -> Result<sdk_http::Response, sdk_http::Error> {
        Err(sdk_http::Error::NotAllowed(
            "the benchmark makes no requests".into(),
        ))
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn kv_set(&mut self, key: &str, value: &[u8], _ttl_ms: u64) {
        self.kv.insert(key.to_string(), value.to_vec());
    }
    fn now_ms(&mut self) -> i64 {
        now_ms()
    }
    fn remaining_ms(&mut self) -> u64 {
        1_000
    }
    fn config(&mut self, key: &str) -> Option<String> {
        match key {
            "bot_user_id" => Some(SLACK_BOT_USER.into()),
            "team_id" => Some(SLACK_TEAM.into()),
            _ => None,
        }
    }
    fn secret(&mut self, key: &str) -> Option<String> {
        (key == "signing_secret").then(|| SLACK_SIGNING_SECRET.into())
    }
    fn warn(&mut self, message: &str) {
        eprintln!("slack plugin: {message}");
    }
}

/// The same steps with the plugin crates' plain-Rust functions.
enum NativeDriver {
    Slack(SlackNativeHost),
    Telegram,
}

/// The Telegram decoder, and the command parse the wasm reading also makes.
fn telegram_read(payload: &[u8]) -> anyhow::Result<Handled> {
    let bot_id = TELEGRAM_BOT_ID.to_string();
    let bot = telegram::decode::Bot {
        id: &bot_id,
        username: TELEGRAM_BOT_USERNAME,
        now_ms: now_ms(),
    };
    let decoded = telegram::decode::decode(payload, &bot)
        .map_err(|error| anyhow::anyhow!("decode failed: {error:?}"))?;
    if let sdk_decoder::Decoded::Message(message) = &decoded {
        std::hint::black_box(telegram::commands::parse(&message.command_body));
    }
    handled_native(decoded)
}

impl Driver for NativeDriver {
    async fn webhook(&mut self, input: &HttpInput) -> anyhow::Result<Vec<Handled>> {
        let verdict = match self {
            NativeDriver::Slack(_) => {
                let request = sdk_transport::WebhookRequest {
                    method: "POST".into(),
                    path: String::new(),
                    query: String::new(),
                    headers: input.headers.clone(),
                    body: input.body.clone(),
                };
                slack::webhook::verify(&request, Some(SLACK_SIGNING_SECRET), now_ms())
            }
            NativeDriver::Telegram => telegram::transport::verify_webhook(
                "POST",
                &input.headers,
                input.body.clone(),
                Some(TELEGRAM_SECRET),
            ),
        };
        let events = match verdict {
            Ok(sdk_transport::WebhookVerdict::Events(events)) => events,
            Ok(sdk_transport::WebhookVerdict::Challenge(_)) => bail!("unexpected challenge"),
            Err(rejection) => bail!("webhook rejected: {rejection:?}"),
        };
        if events.response.status != 200 {
            bail!("webhook answered {}", events.response.status);
        }
        events
            .payloads
            .iter()
            .map(|payload| match self {
                NativeDriver::Slack(host) => slack::decode::decode(host, payload)
                    .map_err(|error| anyhow::anyhow!("decode failed: {error:?}"))
                    .and_then(handled_native),
                NativeDriver::Telegram => telegram_read(payload),
            })
            .collect()
    }

    async fn frame(&mut self, frame: &[u8]) -> anyhow::Result<(Handled, Vec<u8>)> {
        let NativeDriver::Slack(host) = self else {
            bail!("Telegram has no WebSocket transport");
        };
        let data = match slack::socket::classify_frame(frame) {
            Ok((sdk_transport::FrameClass::Data(data), _)) => data,
            Ok((other, _)) => bail!("not a data frame: {other:?}"),
            Err(error) => bail!("classify-frame failed: {error:?}"),
        };
        let handled = slack::decode::decode(host, &data.payload)
            .map_err(|error| anyhow::anyhow!("decode failed: {error:?}"))
            .and_then(handled_native)?;
        let ack = slack::socket::build_ack(frame, sdk_transport::AckStatus::Ok, None)
            .map_err(|error| anyhow::anyhow!("build-ack failed: {error:?}"))?;
        Ok((handled, ack))
    }

    async fn poll(&mut self, body: &[u8]) -> anyhow::Result<Vec<Handled>> {
        let NativeDriver::Telegram = self else {
            bail!("Slack has no long-poll transport");
        };
        let response = sdk_http::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
        };
        let (batch, _callbacks) = telegram::transport::parse_poll(&response)
            .map_err(|error| anyhow::anyhow!("parse-poll failed: {error:?}"))?;
        batch
            .payloads
            .iter()
            .map(|payload| telegram_read(payload))
            .collect()
    }
}

// ------------------------------------------------------------------ plugin kv in memory

/// Plugin kv in memory for the wasm path (the native path keeps a map): the Slack decoder reads
/// names and threads and records the threads the bot joins.
#[derive(Default)]
struct MemoryKv {
    entries: Mutex<HashMap<(KvScope, String), Vec<u8>>>,
}

impl KvBackend for MemoryKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        _now_ms: i64,
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        let value = self
            .entries
            .lock()
            .expect("kv lock")
            .get(&(scope.clone(), key.to_string()))
            .cloned();
        Box::pin(std::future::ready(Ok(value)))
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        _expires_at_ms: Option<i64>,
        _now_ms: i64,
        _quota: KvQuota,
    ) -> KvFuture<'a, ()> {
        self.entries
            .lock()
            .expect("kv lock")
            .insert((scope.clone(), key.to_string()), value.to_vec());
        Box::pin(std::future::ready(Ok(())))
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

/// A runtime holding the channel's bundled plugin (and `--plugins-dir`'s, which replace it).
fn runtime_for(global: Option<&GlobalArgs>, channel: &str) -> anyhow::Result<Runtime> {
    let services = Services::new(
        Some(Arc::new(MemoryKv::default())),
        OperatorPolicy::default(),
        ServiceLimits::default(),
    );
    let settings = RuntimeSettings {
        cache_dir: global.and_then(|g| (!g.no_cache).then(|| g.cache_dir.clone())),
        ..RuntimeSettings::default()
    };
    let runtime = Runtime::new(settings, services)?;
    let file = format!("switchboard_{channel}.wasm");
    let bundled = BUNDLED
        .iter()
        .find(|b| b.file == file)
        .with_context(|| format!("{file} is not bundled in this binary"))?;
    runtime.register(runtime.prepare(bundled.wasm, Source::Bundled, None)?)?;
    if let Some(dir) = global.and_then(|g| g.plugins_dir.as_ref()) {
        for path in std::fs::read_dir(dir)
            .with_context(|| format!("reading --plugins-dir {}", dir.display()))?
        {
            let path = path?.path();
            if path.file_name().and_then(|n| n.to_str()) == Some(file.as_str()) {
                let wasm = std::fs::read(&path)?;
                let plugin = runtime.prepare(&wasm, Source::File(path.clone()), None)?;
                runtime.replace(plugin);
            }
        }
    }
    Ok(runtime)
}

/// The installation the wasm path runs as: the bench bot's config and the webhook secret (no
/// bot token: nothing may call out, as in the peers).
fn installation(case: Case) -> InstallationContext {
    let cx = InstallationContext::new(format!("bench-{}", case.name()));
    match case.channel() {
        "slack" => cx
            .with_config("bot_user_id", SLACK_BOT_USER)
            .with_config("team_id", SLACK_TEAM)
            .with_secret("signing_secret", SLACK_SIGNING_SECRET),
        _ => cx
            .with_config("bot_id", TELEGRAM_BOT_ID.to_string())
            .with_config("bot_username", TELEGRAM_BOT_USERNAME)
            .with_secret("webhook_secret", TELEGRAM_SECRET),
    }
}

// ------------------------------------------------------------------ measurement

/// What the handler accumulates.
#[derive(Debug, Default)]
struct Sink {
    handled: u64,
    actions: u64,
    text_chars: u64,
    mentions: u64,
}

impl Sink {
    fn handle(&mut self, handled: &Handled) {
        self.handled += 1;
        self.actions += u64::from(handled.action);
        self.text_chars += handled.text.chars().count() as u64;
        self.mentions += handled.mentions as u64;
    }
}

/// Feeds inputs `start..start + count` (cycled) through `driver`.
async fn run<D: Driver>(
    driver: &mut D,
    inputs: &CaseInputs,
    (start, count): (usize, usize),
    sink: &mut Sink,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut last_ack = None;
    for i in start..start + count {
        match inputs {
            CaseInputs::Webhook(pool) => {
                for handled in driver.webhook(&pool[i % pool.len()]).await? {
                    sink.handle(&handled);
                }
            }
            CaseInputs::Frames(frames) => {
                // A fresh buffer per frame, as a socket read delivers it.
                let frame = frames[i % frames.len()].clone();
                let (handled, ack) = driver.frame(&frame).await?;
                sink.handle(&handled);
                last_ack = Some(ack);
            }
            CaseInputs::Polls(answers) => {
                let events = driver.poll(&answers[i % answers.len()]).await?;
                if events.len() != POLL_BATCH {
                    bail!("a poll answer read as {} events", events.len());
                }
                for handled in &events {
                    sink.handle(handled);
                }
            }
        }
    }
    Ok(last_ack)
}

/// Timed-loop figures.
struct Timed {
    seconds: f64,
    cpu: f64,
    rss_before_mb: f64,
}

async fn measure<D: Driver>(
    driver: &mut D,
    inputs: &CaseInputs,
    (warmup, n): (usize, usize),
    sink: &mut Sink,
) -> anyhow::Result<Timed> {
    run(driver, inputs, (0, warmup), sink).await?;
    *sink = Sink::default();
    let rss_before_mb = rss_now_mb();
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let last_ack = run(driver, inputs, (warmup, n), sink).await?;
    let timed = Timed {
        seconds: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
        rss_before_mb,
    };
    if let Some(ack) = last_ack
        && !contains(&ack, br#"{"envelope_id":""#)
    {
        bail!("unexpected ack frame {:?}", String::from_utf8_lossy(&ack));
    }
    Ok(timed)
}

/// Runs one case for one peer in this process; its JSON line.
fn run_case(
    global: &GlobalArgs,
    peer: PeerChoice,
    case: Case,
    n: usize,
    warmup: usize,
    source: &InputSource,
) -> anyhow::Result<Json> {
    let per_input = case.events_per_input();
    if !n.is_multiple_of(per_input) || !warmup.is_multiple_of(per_input) {
        bail!(
            "{}: N and --warmup must be multiples of {per_input} (updates per getUpdates answer)",
            case.name()
        );
    }
    let (inputs, digest) = load_inputs(case, source)?;
    let steps = (warmup / per_input, n / per_input);
    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the current-thread executor")?;
    let mut sink = Sink::default();
    let (timed, sdk_version, runtime_name) = match peer {
        PeerChoice::Wasm => {
            let host = runtime_for(Some(global), case.channel())?;
            let plugin = host
                .plugin_for_channel(case.channel())
                .with_context(|| format!("the {} plugin is not loaded", case.channel()))?;
            let sdk_version = format!(
                "switchboard {} / {} plugin {} ({}, sha256 {})",
                env!("CARGO_PKG_VERSION"),
                case.channel(),
                plugin.manifest().version,
                plugin.source(),
                &plugin.sha256()[..12]
            );
            let runtime_name = format!(
                "wasmtime component ({:?} allocator), {} build",
                host.allocator(),
                build_profile()
            );
            let mut driver = WasmDriver {
                plugin,
                cx: Arc::new(installation(case)),
            };
            let timed = executor.block_on(measure(&mut driver, &inputs, steps, &mut sink))?;
            (timed, sdk_version, runtime_name)
        }
        PeerChoice::Native => {
            let mut driver = match case.channel() {
                "slack" => NativeDriver::Slack(SlackNativeHost::default()),
                _ => NativeDriver::Telegram,
            };
            let timed = executor.block_on(measure(&mut driver, &inputs, steps, &mut sink))?;
            let sdk_version = format!(
                "switchboard {} / switchboard-{} {} (native)",
                env!("CARGO_PKG_VERSION"),
                case.channel(),
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
        ("actions".into(), Json::uint(sink.actions)),
        ("text_chars".into(), Json::uint(sink.text_chars)),
        ("mentions".into(), Json::uint(sink.mentions)),
        ("input_sha256".into(), Json::String(digest)),
        ("sdk_version".into(), Json::String(sdk_version)),
        ("runtime".into(), Json::String(runtime_name)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED_AT: u64 = 1_718_000_000;

    #[test]
    fn inputs_are_deterministic_and_distinct() {
        for case in Case::ALL {
            let first = case_file(case, SIGNED_AT);
            assert_eq!(
                short_sha256(&first),
                short_sha256(&case_file(case, SIGNED_AT))
            );
            let lines: std::collections::HashSet<&[u8]> = first
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            let expected = if case == Case::TelegramPoll {
                POLL_ANSWERS
            } else {
                POOL
            };
            assert_eq!(lines.len(), expected, "{}: distinct inputs", case.name());
        }
        // Only the Slack requests depend on the signing time.
        assert_ne!(
            case_file(Case::SlackEventsApi, SIGNED_AT),
            case_file(Case::SlackEventsApi, SIGNED_AT + 1)
        );
        assert_eq!(
            case_file(Case::TelegramWebhook, SIGNED_AT),
            case_file(Case::TelegramWebhook, SIGNED_AT + 1)
        );
    }

    #[test]
    fn the_signature_is_slacks_v0_scheme() {
        // Recomputed by the plugin's own signer: both sides agree byte for byte.
        let body = slack_body(3);
        assert_eq!(
            slack_signature("1718000000", body.as_bytes()),
            slack::webhook::signature(SLACK_SIGNING_SECRET, "1718000000", body.as_bytes())
        );
    }

    /// The first inputs of every case (each template at least once) read the same through the
    /// wasm plugin and natively, and every one is handled (none ignored, none rejected).
    #[test]
    fn wasm_and_native_read_the_same_events() {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let source = InputSource::Generated {
            signed_at: now_seconds(),
        };
        for channel in ["slack", "telegram"] {
            let runtime = runtime_for(None, channel).unwrap();
            let plugin = runtime.plugin_for_channel(channel).unwrap();
            for case in Case::ALL.into_iter().filter(|c| c.channel() == channel) {
                let (inputs, _) = load_inputs(case, &source).unwrap();
                let mut wasm = WasmDriver {
                    plugin: plugin.clone(),
                    cx: Arc::new(installation(case)),
                };
                let mut native = match channel {
                    "slack" => NativeDriver::Slack(SlackNativeHost::default()),
                    _ => NativeDriver::Telegram,
                };
                let count = if case == Case::TelegramPoll { 1 } else { 6 };
                let read = |driver: &mut dyn FnMut(usize) -> anyhow::Result<Vec<Handled>>| {
                    (0..count)
                        .flat_map(|i| driver(i).unwrap())
                        .collect::<Vec<_>>()
                };
                let mut via_wasm = |i: usize| {
                    executor.block_on(async {
                        match &inputs {
                            CaseInputs::Webhook(pool) => wasm.webhook(&pool[i]).await,
                            CaseInputs::Frames(frames) => {
                                let (handled, ack) = wasm.frame(&frames[i]).await?;
                                assert!(contains(&ack, br#"{"envelope_id":""#));
                                Ok(vec![handled])
                            }
                            CaseInputs::Polls(answers) => wasm.poll(&answers[i]).await,
                        }
                    })
                };
                let from_wasm = read(&mut via_wasm);
                let mut via_native = |i: usize| {
                    executor.block_on(async {
                        match &inputs {
                            CaseInputs::Webhook(pool) => native.webhook(&pool[i]).await,
                            CaseInputs::Frames(frames) => {
                                Ok(vec![native.frame(&frames[i]).await?.0])
                            }
                            CaseInputs::Polls(answers) => native.poll(&answers[i]).await,
                        }
                    })
                };
                let from_native = read(&mut via_native);
                let expected = count * case.events_per_input();
                assert_eq!(from_wasm.len(), expected, "{}", case.name());
                assert_eq!(from_wasm, from_native, "{}", case.name());
                assert!(
                    from_wasm.iter().any(|h| h.mentions > 0),
                    "{}: some mentions",
                    case.name()
                );
                if channel == "telegram" {
                    assert!(from_wasm.iter().any(|h| h.action), "{}", case.name());
                }
            }
        }
    }

    #[test]
    fn a_wrong_signature_is_refused_natively() {
        let source = InputSource::Generated {
            signed_at: now_seconds(),
        };
        let (CaseInputs::Webhook(pool), _) = load_inputs(Case::SlackEventsApi, &source).unwrap()
        else {
            panic!("webhook inputs");
        };
        let mut input = pool[0].clone();
        input.body.push(b' ');
        let mut driver = NativeDriver::Slack(SlackNativeHost::default());
        let executor = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = executor.block_on(driver.webhook(&input)).unwrap_err();
        assert!(error.to_string().contains("rejected"), "{error}");
    }
}
