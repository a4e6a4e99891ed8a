//! What operators and their tools read: logs, `/metrics`, `/healthz` and `/readyz`.
//!
//! - Logs: with `--log-format json` every line the binary writes to stderr is a JSON object
//!   (its own notices and errors too), field values are plain (no Rust debug forms), no ANSI
//!   escape reaches a pipe in either format, and each accepted message has exactly one INFO
//!   line with its ids and none of its content.
//! - `/metrics` of a running host after real traffic, in both text formats, read by the
//!   Prometheus client's own parsers (Python `prometheus_client`, which this project did not
//!   write): no parse error, every expected family with its type, no untyped series.
//! - `/healthz` is liveness only; `/readyz` answers 503 with a reason once the database is gone.
//!
//! The host tests run on SQLite and PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fake_poll::FakePoll;
use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "observability-admin-token-0123456789abcdef";
const TOKEN: &str = "tok-123:abc";
/// The `prometheus_client` release `.ci/run` installs.
const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";
/// Longest a binary run may take.
const DEADLINE: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------- logs

/// The binary with no inherited `SWITCHBOARD_*` variables, in `dir`, with the tests' plugin
/// cache.
fn binary(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("NO_COLOR")
        .env("SWITCHBOARD_CACHE_DIR", support::shared_cache_dir());
    command
}

/// Waits for `child` up to `deadline` (killing it after).
fn wait_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the binary") {
            return Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to its end: (status, stdout, stderr).
fn run(mut command: impl std::borrow::BorrowMut<Command>) -> (ExitStatus, String, String) {
    let command = command.borrow_mut();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        err.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let status = wait_within(&mut child, DEADLINE).expect("the binary ends within the deadline");
    let stderr = stderr.join().unwrap();
    assert!(
        !stderr.contains(&0x1b),
        "an ANSI escape reached a pipe:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    (
        status,
        stdout.join().unwrap(),
        String::from_utf8(stderr).expect("stderr is UTF-8"),
    )
}

/// Every stderr line as a JSON object (panics, naming the line, if one is not).
fn json_lines(stderr: &str) -> Vec<Value> {
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nstderr:\n{stderr}"));
            assert!(value.is_object(), "not a JSON object: {line}");
            assert!(
                value["level"].is_string() && value["fields"].is_object(),
                "a log event has a level and fields: {line}"
            );
            value
        })
        .collect();
    assert!(!lines.is_empty(), "no log line at all");
    // Field values are plain: no `Some(…)`, no `Enum::Variant`, no `Struct { … }`.
    for line in &lines {
        for (key, value) in line["fields"].as_object().unwrap() {
            if let Some(text) = value.as_str()
                && key != "message"
            {
                assert!(
                    !debug_form(text),
                    "field {key} carries a debug form: {line}"
                );
            }
        }
    }
    lines
}

/// Whether `text` looks like Rust's `Debug` output: `Some(…)`, `None`, `Enum::Variant`,
/// `Struct { … }`.
fn debug_form(text: &str) -> bool {
    let ident = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    text.starts_with("Some(")
        || text == "None"
        || text
            .split_once("::")
            .is_some_and(|(a, b)| ident(a) && b.starts_with(|c: char| c.is_ascii_uppercase()))
        || text.split_once(" { ").is_some_and(|(a, _)| ident(a))
}

#[test]
fn debug_forms_are_recognised() {
    for text in [
        "Some(\"om_1\")",
        "None",
        "AgentState::Online",
        "FlushActions { starts_run: true }",
    ] {
        assert!(debug_form(text), "{text}");
    }
    for text in [
        "om_1",
        "online",
        "sqlite::memory:",
        "127.0.0.1:80",
        "[::1]:80",
        "idle",
    ] {
        assert!(!debug_form(text), "{text}");
    }
}

/// The events whose message is `message`.
fn events<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

/// `demo` with JSON logs on a pipe: JSON lines only, and exactly one `message accepted` INFO
/// line per message the transcript shows as ingested, with its ids and without its text.
#[test]
fn json_logs_are_json_lines_with_one_accepted_line_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run(binary(
        dir.path(),
        &["--log-format", "json", "--log", "info", "demo"],
    ));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let lines = json_lines(&stderr);

    let ingested = stdout.lines().filter(|l| l.ends_with("→ ingested")).count();
    assert!(ingested >= 5, "the demo ingests messages:\n{stdout}");
    let accepted = events(&lines, "message accepted");
    assert_eq!(
        accepted.len(),
        ingested,
        "one accepted line per ingested message:\n{stdout}\n{stderr}"
    );
    let mut ids = std::collections::HashSet::new();
    for line in &accepted {
        assert_eq!(line["level"], "INFO", "{line}");
        let fields = line["fields"].as_object().unwrap();
        for id in ["installation", "session", "message_id"] {
            let value = fields[id].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{id} in {line}");
        }
        assert!(fields["row"].as_i64().is_some_and(|r| r > 0), "{line}");
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys.len(),
            5,
            "ids only (message, installation, session, message_id, row): {line}"
        );
        assert!(
            ids.insert(fields["message_id"].as_str().unwrap().to_string()),
            "each message once: {line}"
        );
    }
    // The demo's texts are in the transcript, never in the logs.
    for text in ["Can you summarise", "lunch anyone", "draft a launch email"] {
        assert!(stdout.contains(text), "{stdout}");
        assert!(!stderr.contains(text), "content in the logs: {text}");
    }
    // Fields that used to carry debug forms are plain now.
    let flushed = events(&lines, "flushed");
    assert!(!flushed.is_empty(), "{stderr}");
    assert!(
        flushed.iter().all(|l| l["fields"]["agent"] == "online"),
        "{flushed:?}"
    );
    let delivered = events(&lines, "delivered");
    assert!(
        delivered
            .iter()
            .any(|l| l["fields"]["sent"].as_str().is_some_and(|s| !s.is_empty())),
        "{delivered:?}"
    );
}

/// Human logs on a pipe carry no colours either.
#[test]
fn human_logs_on_a_pipe_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    // `run` asserts that no ESC byte reached the pipe.
    let (status, stdout, stderr) = run(binary(dir.path(), &["--log", "info", "demo"]));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stderr.contains("message accepted"), "{stderr}");
}

/// `GET path` over plain HTTP/1.1 with a 30 s read timeout: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `serve --log-format json`: the listening notice is a JSON event too (it used to be the one
/// plain line), health and readiness answer, and SIGTERM ends it with only JSON written.
#[test]
fn serve_with_json_logs_writes_only_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = binary(
        d,
        &["--log-format", "json", "serve", "--listen", "127.0.0.1:0"],
    )
    .env(
        "SWITCHBOARD_DATABASE__URL",
        format!("sqlite://{}", d.join("obs.db").display()),
    )
    .env(
        "SWITCHBOARD_SECRETS__KEY",
        switchboard::store::SecretCipher::generate_key_hex(),
    )
    .env("SWITCHBOARD_SERVER__ADMIN_TOKEN", ADMIN)
    .env("SWITCHBOARD_CONNECTIONS__ENABLED", "false")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = Instant::now();
    let addr = loop {
        let Ok(line) = rx.recv_timeout(DEADLINE.saturating_sub(started.elapsed())) else {
            let _ = child.kill();
            panic!(
                "serve did not say where it listens: {}",
                reader.join().unwrap()
            );
        };
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        if event["fields"]["message"] == "switchboard listening" {
            break event["fields"]["address"].as_str().unwrap().to_string();
        }
    };
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok".to_string()));
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready".to_string()));

    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_within(&mut child, DEADLINE).expect("serve stops");
    let log = reader.join().unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.as_bytes().contains(&0x1b), "{log}");
    let lines = json_lines(&log);
    let listening = events(&lines, "switchboard listening");
    assert_eq!(listening.len(), 1, "{log}");
    assert_eq!(
        listening[0]["fields"]["plugins"].as_u64().map(|n| n > 0),
        Some(true)
    );
}

/// A command that fails with JSON logs reports its error as a JSON event (exit status kept);
/// with human logs as the familiar `error: …` line.
#[test]
fn a_failing_command_reports_its_error_in_the_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = ("SWITCHBOARD_DATABASE__URL", "mysql://127.0.0.1/nowhere");
    let (status, _, stderr) =
        run(binary(dir.path(), &["--log-format", "json", "migrate"]).env(bad_db.0, bad_db.1));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines = json_lines(&stderr);
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    let message = last["fields"]["message"].as_str().unwrap();
    assert!(message.contains("mysql://127.0.0.1/nowhere"), "{message}");

    let (status, _, stderr) = run(binary(dir.path(), &["migrate"]).env(bad_db.0, bad_db.1));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ")),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------- the host

struct Host {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    db: switchboard::store::Database,
}

impl Host {
    async fn start(config: &Config) -> Host {
        let app = App::from_config(config).await.expect("app builds");
        let db = app.state.db.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Host {
            base,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
            db,
        }
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api{path}", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        (status, value)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

fn config(database_url: &str, plugins: &Path, fake: &str) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
    config.plugins.dir = Some(plugins.to_path_buf());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config
        .plugins
        .base_urls
        .insert("http://poll.test".into(), fake.to_string());
    config.server.admin_token = Some(ADMIN.into());
    config.connections.poll_interval_ms = 100;
    config.delivery.first_backoff_ms = 50;
    config.delivery.max_backoff_ms = 200;
    config
}

/// A directory holding only the testing-poll plugin.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        support::test_plugin("switchboard_testing_poll.wasm"),
        dir.path().join("switchboard_testing_poll.wasm"),
    )
    .unwrap();
    dir
}

/// Waits (up to 20 s) until `check` finds what it looks for.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Reads a scrape with the Prometheus client's parser for `format` (`text` = 0.0.4,
/// `openmetrics`), warnings as errors: family name → (type, sample count). Fails, never skips,
/// when Python or the package is missing.
fn parse_with_prometheus_client(format: &str, scrape: &str) -> BTreeMap<String, (String, usize)> {
    const SCRIPT: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families as classic
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
parse = openmetrics if sys.argv[1] == "openmetrics" else classic
families = {}
for family in parse(sys.stdin.read()):
    if family.name in families:
        raise ValueError("family listed twice: " + family.name)
    families[family.name] = [family.type, len(family.samples)]
print(json.dumps(families))
"#;
    let install =
        format!("install it with `python3 -m pip install {PROMETHEUS_CLIENT}` (.ci/run does)");
    let mut child = Command::new("python3")
        .args(["-W", "error", "-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to read /metrics with the Prometheus client's parser ({e}); install Python 3, then {install}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!("Python's prometheus_client is missing ({stderr}); {install}"),
        _ => panic!("the {format} parser refused the scrape: {stderr}\n{scrape}"),
    }
    let parsed: BTreeMap<String, (String, usize)> =
        serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    parsed
}

/// Families every scrape lists, with their types (as the parsers name them: counters without
/// `_total`).
const FAMILIES: [(&str, &str); 18] = [
    ("switchboard_build_info", "gauge"),
    ("switchboard_ingest_events", "counter"),
    ("switchboard_webhook_rejections", "counter"),
    ("switchboard_ingest_latency_seconds", "histogram"),
    ("switchboard_long_connection_acks", "counter"),
    ("switchboard_ack_latency_seconds", "histogram"),
    ("switchboard_long_connections_open", "gauge"),
    ("switchboard_reconnects", "counter"),
    ("switchboard_runs", "counter"),
    ("switchboard_run_duration_seconds", "histogram"),
    ("switchboard_outbox_deliveries", "counter"),
    ("switchboard_delivery_latency_seconds", "histogram"),
    ("switchboard_retention_pruned_rows", "counter"),
    ("switchboard_plugin_calls", "counter"),
    ("switchboard_plugin_failures", "counter"),
    ("switchboard_plugin_instantiations", "counter"),
    ("switchboard_plugin_degraded", "gauge"),
    ("switchboard_plugin_idle_instances", "gauge"),
];

/// Families that have samples once a message was ingested, run and answered.
const AFTER_TRAFFIC: [&str; 6] = [
    "switchboard_ingest_events",
    "switchboard_webhook_rejections",
    "switchboard_ingest_latency_seconds",
    "switchboard_runs",
    "switchboard_run_duration_seconds",
    "switchboard_delivery_latency_seconds",
];

fn check_families(
    name: &str,
    format: &str,
    families: &BTreeMap<String, (String, usize)>,
    traffic: bool,
) {
    for (family, kind) in FAMILIES {
        let Some((found, samples)) = families.get(family) else {
            panic!("{name} {format}: no family {family} in {families:?}");
        };
        assert_eq!(found, kind, "{name} {format}: type of {family}");
        if traffic && AFTER_TRAFFIC.contains(&family) {
            assert!(*samples > 0, "{name} {format}: {family} has samples");
        }
    }
    for (family, (kind, _)) in families {
        assert!(
            kind != "unknown" && kind != "untyped",
            "{name} {format}: {family} is {kind}"
        );
    }
}

/// Scrapes `/metrics` in both formats and reads each with its parser.
async fn scrape_both(name: &str, host: &Host, traffic: bool) -> String {
    // No Accept header, and the classic text format asked for: the classic format.
    for accept in [None, Some("text/plain; version=0.0.4")] {
        let (status, content_type, text) = host.get("/metrics", accept).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        check_families(
            name,
            "text",
            &parse_with_prometheus_client("text", &text),
            traffic,
        );
    }
    // What Prometheus sends: OpenMetrics first.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, content_type, text) = host.get("/metrics", Some(prometheus)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    check_families(
        name,
        "openmetrics",
        &parse_with_prometheus_client("openmetrics", &text),
        traffic,
    );
    text
}

/// A host after real traffic — a message long-polled, stored, run by the echo agent and its
/// reply delivered, and a webhook refused — scraped in both formats and read by the Prometheus
/// client's parsers; on SQLite and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_client_in_both_formats() {
    tokio::time::timeout(Duration::from_secs(240), async {
        for test_db in db::test_databases().await {
            metrics_scenario(&test_db.name, &test_db.url).await;
            eprintln!("{}: metrics scenario passed", test_db.name);
        }
    })
    .await
    .expect("the metrics scenario finishes in time");
}

async fn metrics_scenario(name: &str, database_url: &str) {
    let fake = FakePoll::start(TOKEN).await;
    let plugins = plugin_dir();
    let host = Host::start(&config(database_url, plugins.path(), fake.base_url())).await;

    // From start-up, before any event: every family, with its type.
    scrape_both(name, &host, false).await;

    let (status, created) = host
        .admin_post(
            "/installations",
            json!({
                "channel": "testing-poll", "name": "poller", "agent": "echo",
                "debounce_ms": 50, "secrets": {"token": TOKEN},
            }),
        )
        .await;
    assert_eq!(status, 201, "{name}: {created}");
    fake.push_message("c1", "direct", "u1", "hello metrics");
    eventually("the reply", async || {
        fake.sent()
            .iter()
            .any(|m| fake.edits(&m.message_id).iter().any(|e| e.is_final))
            .then_some(())
    })
    .await;
    // A webhook that names no installation is refused and counted.
    let response = host
        .client
        .post(format!("{}/hooks/lark", host.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 400, "{name}: {}", response.text().await.unwrap());
    // The delivery is recorded after the channel answered: wait for its count.
    let text = eventually("the delivery to be counted", async || {
        let (_, _, text) = host.get("/metrics", None).await;
        text.contains("switchboard_delivery_latency_seconds_count 1")
            .then_some(text)
    })
    .await;
    for sample in [
        "switchboard_ingest_events_total{channel=\"testing-poll\",outcome=\"ingested\"} 1",
        "switchboard_webhook_rejections_total{channel=\"lark\",reason=\"unroutable\"} 1",
        "switchboard_ingest_latency_seconds_count{channel=\"testing-poll\"} 1",
        "switchboard_runs_total{outcome=\"completed\"} 1",
        "switchboard_run_duration_seconds_count{outcome=\"completed\"} 1",
        "switchboard_outbox_deliveries_total{outcome=\"delivered\"} 1",
    ] {
        assert!(text.contains(sample), "{name}: no {sample:?} in:\n{text}");
    }
    assert!(!text.contains("hello metrics"), "{name}: no content");

    let open = scrape_both(name, &host, true).await;
    assert!(
        open.contains(&format!(
            "switchboard_build_info{{version=\"{}\",contract_version=\"0.2.0\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{name}: {open}"
    );
    host.stop().await;
}

// ---------------------------------------------------------------------------------- health

/// `/healthz` is liveness (no database); `/readyz` asks the database: 200 while it answers,
/// 503 with a reason (and no URL) once it is gone. On SQLite and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_and_healthz_does_not() {
    tokio::time::timeout(Duration::from_secs(120), async {
        for test_db in db::test_databases().await {
            let name = &test_db.name;
            let mut config = Config::default();
            config.database.url = test_db.url.clone();
            config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
            config.plugins.cache_dir = Some(support::shared_cache_dir());
            config.connections.enabled = false;
            let host = Host::start(&config).await;
            assert_eq!(
                host.get("/readyz", None).await,
                (200, "text/plain; charset=utf-8".into(), "ready".into()),
                "{name}"
            );
            assert_eq!(host.get("/healthz", None).await.0, 200, "{name}");

            host.db.close().await;
            let (status, content_type, body) = host.get("/readyz", None).await;
            assert_eq!(status, 503, "{name}: {body}");
            assert_eq!(content_type, "application/json", "{name}");
            let body: Value = serde_json::from_str(&body).unwrap();
            let reason = body["error"].as_str().unwrap();
            assert!(
                reason.starts_with("not ready: the ") && reason.contains("database"),
                "{name}: {reason}"
            );
            assert!(!reason.contains("://"), "{name}: no URL in {reason}");
            // Liveness does not depend on the database.
            assert_eq!(host.get("/healthz", None).await.0, 200, "{name}");
            // The host cannot flush to a closed database; end it without waiting for that.
            host.task.abort();
            eprintln!("{name}: readiness passed");
        }
    })
    .await
    .expect("the readiness checks finish in time");
}
