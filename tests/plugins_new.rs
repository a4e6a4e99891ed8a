//! `switchboard plugins new` end to end (issue 20): for Rust and for Python, the written project
//! builds, passes its own tests, replays its fixtures (and a forged signature is rejected), and
//! the built plugins, loaded by `serve` from a plugins directory, each verify a signed message
//! and POST the echo agent's reply, signed, to a callback receiver.
//!
//! The projects are written under this test's target tmpdir, inside this repository's directory
//! tree: the Rust project's own `[workspace]` table is what lets it build there (and anywhere).
//! Its cargo target directory is kept between runs (warm rebuilds) and its lock file is the
//! workspace's, so the versions are the ones already fetched. Every child process is bounded.

#[path = "support/serve.rs"]
mod serve;
#[path = "support/signed_hook.rs"]
mod signed_hook;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use signed_hook::{now_s, signature, start_receiver};

const ADMIN: &str = "plugins-new-admin-token-0123456789abcdef";
/// The secret the projects' `fixtures/webhook.json` is signed with.
const FIXTURE_SECRET: &str = "fixture-signing-secret";
const CALLBACK_ORIGIN: &str = "https://callback.switchboard.invalid";
/// A cold cargo build of the Rust project (its dependencies natively and for wasm) on 2 cores.
const CARGO_LIMIT: Duration = Duration::from_secs(900);
/// `build.sh` (componentize-py; it installs the pinned version when missing).
const PYTHON_BUILD_LIMIT: Duration = Duration::from_secs(600);
const QUICK_LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(90);

const RUST_NAME: &str = "scaffold-rust";
const PYTHON_NAME: &str = "scaffold-py";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugins-new")
}

/// Runs `command` to completion within `limit` (killed past it), panicking with its output
/// unless it succeeds.
fn run(what: &str, command: &mut Command, limit: Duration) -> Output {
    let logs = tmp().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let slug: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (out_path, err_path) = (
        logs.join(format!("{slug}.out")),
        logs.join(format!("{slug}.err")),
    );
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} took over {limit:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `switchboard ARGS` with a clean environment and a cache in the test tmpdir.
fn switchboard(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--cache-dir")
        .arg(serve::shared_cache_dir())
        .args(args);
    command
}

/// `switchboard plugins new NAME --lang LANG --dir DIR` into a fresh directory.
fn scaffold(name: &str, lang: &str) -> PathBuf {
    let dir = tmp().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let output = run(
        &format!("plugins new {name}"),
        switchboard(&["plugins", "new", name, "--lang", lang, "--dir"]).arg(&dir),
        QUICK_LIMIT,
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("manifest.toml"),
        "lists what it wrote: {printed}"
    );
    assert!(
        printed.contains("next: cd "),
        "names the next command: {printed}"
    );
    for file in [
        "manifest.toml",
        "README.md",
        "fixtures/message.json",
        "fixtures/webhook.json",
    ] {
        assert!(dir.join(file).is_file(), "{name}: {file} is written");
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("replay --plugin"),
        "the README's next step is replay"
    );
    // Refuses to write over it.
    let again = switchboard(&["plugins", "new", name, "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing directory is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    dir
}

/// Writes and builds the Rust project, runs its tests; the component, in `plugins`.
fn build_rust(plugins: &Path) {
    let dir = scaffold(RUST_NAME, "rust");
    // The workspace's versions, already fetched (cargo drops the entries the project lacks).
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = tmp().join("rust-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = run(
        "cargo test (Rust project)",
        Command::new(&cargo)
            .args(["test", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target),
        CARGO_LIMIT,
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("4 passed"),
        "the decode tests ran: {report}"
    );
    run(
        "cargo build (Rust project, wasm32-wasip2)",
        Command::new(&cargo)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target),
        CARGO_LIMIT,
    );
    let built = target.join("wasm32-wasip2/release/scaffold_rust.wasm");
    std::fs::copy(&built, plugins.join(format!("{RUST_NAME}.wasm")))
        .unwrap_or_else(|e| panic!("{} is built: {e}", built.display()));
}

/// Writes and builds the Python project, runs its tests; the component and manifest in `plugins`.
fn build_python(plugins: &Path) {
    let dir = scaffold(PYTHON_NAME, "python");
    run(
        "build.sh (Python project)",
        Command::new("bash")
            .arg(dir.join("build.sh"))
            .env("SWITCHBOARD_PLUGIN_OUT", plugins),
        PYTHON_BUILD_LIMIT,
    );
    assert!(plugins.join(format!("{PYTHON_NAME}.wasm")).is_file());
    assert!(plugins.join(format!("{PYTHON_NAME}.toml")).is_file());
    let output = run(
        "python3 -m unittest (Python project)",
        Command::new("python3")
            .args(["-m", "unittest", "-v"])
            .current_dir(&dir),
        QUICK_LIMIT,
    );
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        report.contains("Ran 4 tests") && report.contains("OK"),
        "{report}"
    );
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// `replay` of the project's fixtures, a forged signature, and `--outbound`.
fn replay(plugins: &Path, name: &str) {
    let dir = tmp().join(name);
    let plugins_dir = plugins.to_str().unwrap();
    let secret = format!("signing_secret={FIXTURE_SECRET}");
    let output = run(
        &format!("replay {name}"),
        switchboard(&[
            "--plugins-dir",
            plugins_dir,
            "replay",
            "--plugin",
            name,
            "--secret",
        ])
        .arg(&secret)
        .arg(dir.join("fixtures")),
        QUICK_LIMIT,
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2, "{name}: one line per fixture: {lines:?}");
    for line in &lines {
        assert_eq!(line["kind"], "message", "{name}: {line}");
        assert_eq!(line["body"], "hello from a fixture", "{name}: {line}");
        assert_eq!(line["chat_id"], "chat-1");
        assert_eq!(line["sender_name"], "Ada");
    }

    let forged = run(
        &format!("replay {name} with another secret"),
        switchboard(&[
            "--plugins-dir",
            plugins_dir,
            "replay",
            "--plugin",
            name,
            "--secret",
        ])
        .arg("signing_secret=not-the-fixture-secret")
        .arg(dir.join("fixtures/webhook.json")),
        QUICK_LIMIT,
    );
    let lines = json_lines(&forged);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["kind"], "rejected",
        "{name}: a forged signature: {}",
        lines[0]
    );

    let outbound = run(
        &format!("replay --outbound {name}"),
        switchboard(&[
            "--plugins-dir",
            plugins_dir,
            "replay",
            "--plugin",
            name,
            "--secret",
        ])
        .arg(&secret)
        .args([
            "--config-value",
            &format!("callback_url={CALLBACK_ORIGIN}/replies"),
        ])
        .arg("--outbound")
        .arg(dir.join("outbound/reply.json")),
        QUICK_LIMIT,
    );
    let requests = json_lines(&outbound);
    assert_eq!(requests.len(), 1, "{name}: one callback: {requests:?}");
    assert_eq!(requests[0]["method"], "POST");
    assert_eq!(requests[0]["url"], format!("{CALLBACK_ORIGIN}/replies"));
    assert_eq!(requests[0]["body"]["chat_id"], "chat-1", "{}", requests[0]);
    let text = requests[0]["body"]["text"].as_str().unwrap();
    assert!(text.contains("from the agent"), "{name}: {text}");
}

fn config(port: u16, plugins: &Path, receiver: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"

[database]
url = "sqlite://switchboard.db?mode=rwc"

[plugins]
dir = "{plugins}"

[plugins.base_urls]
"{CALLBACK_ORIGIN}" = "{receiver}"

[delivery]
poll_interval_ms = 100
first_backoff_ms = 200

[runs]
window_sweep_ms = 200

[agents.echo]
kind = "echo"
"#,
        plugins = plugins.display()
    )
}

/// Adds an installation of `channel` whose callbacks go to `/{channel}` on the receiver; the
/// installation's hook URL.
async fn install(
    http: &reqwest::Client,
    serve: &serve::ServeChild,
    channel: &str,
    secret: &str,
) -> String {
    let created = tokio::time::timeout(
        WAIT,
        http.post(format!("{}/api/installations", serve.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "channel": channel, "name": channel, "agent": "echo", "debounce_ms": 100,
                    "config": {"callback_url": format!("{CALLBACK_ORIGIN}/{channel}")},
                    "secrets": {"signing_secret": secret},
                })
                .to_string(),
            )
            .send(),
    )
    .await
    .expect("the admin API answers in time")
    .unwrap();
    let status = created.status();
    let text = created.text().await.unwrap();
    assert_eq!(status, 201, "{channel}: {text}\n{}", serve.log_tail(30));
    let installation: Value = serde_json::from_str(&text).unwrap();
    format!(
        "{}/hooks/{channel}/{}",
        serve.base,
        installation["id"].as_str().unwrap()
    )
}

async fn post_signed(http: &reqwest::Client, hook: &str, secret: &str, body: &[u8]) -> u16 {
    let now = now_s().to_string();
    let request = http
        .post(hook)
        .header("content-type", "application/json")
        .header("X-Switchboard-Timestamp", &now)
        .header("X-Switchboard-Signature", signature(secret, &now, body))
        .body(body.to_vec())
        .send();
    tokio::time::timeout(WAIT, request)
        .await
        .expect("the hook answers in time")
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rust_and_python_plugins_build_test_replay_and_answer_through_serve() {
    let plugins = tmp().join("plugins");
    if plugins.exists() {
        std::fs::remove_dir_all(&plugins).unwrap();
    }
    std::fs::create_dir_all(&plugins).unwrap();
    build_rust(&plugins);
    build_python(&plugins);
    for name in [RUST_NAME, PYTHON_NAME] {
        replay(&plugins, name);
    }

    let (receiver, mut callbacks) = start_receiver(json!({"message_id": "receiver-1"})).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = serve::ServeChild::start(dir.path(), |port| config(port, &plugins, &receiver))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for channel in [RUST_NAME, PYTHON_NAME] {
        let secret = format!("{channel}-signing-secret-0123456789");
        let hook = install(&http, &serve, channel, &secret).await;
        let text = format!("hello {channel}");
        let body = json!({
            "message_id": format!("m-{channel}"), "chat_id": "chat-1", "user_id": "user-1",
            "user_name": "Ada", "text": text,
        })
        .to_string()
        .into_bytes();

        // A forged signature is refused and stores nothing (no callback follows it).
        assert_eq!(
            post_signed(&http, &hook, "not-the-secret", &body).await,
            401,
            "{channel}: a wrong signature is refused"
        );
        assert_eq!(
            post_signed(&http, &hook, &secret, &body).await,
            200,
            "{channel}: a signed message is accepted\n{}",
            serve.log_tail(30)
        );
        let callback = tokio::time::timeout(WAIT, callbacks.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{channel}: no callback within {WAIT:?}:\n{}",
                    serve.log_tail(40)
                )
            })
            .expect("the receiver runs");
        assert_eq!(callback.path, format!("/{channel}"), "{callback:?}");
        let header = |name: &str| {
            callback
                .headers
                .get(name)
                .unwrap_or_else(|| panic!("{channel}: callback header {name} missing"))
                .to_str()
                .unwrap()
                .to_string()
        };
        let timestamp = header("x-switchboard-timestamp");
        assert_eq!(
            header("x-switchboard-signature"),
            signature(&secret, &timestamp, &callback.body),
            "{channel}: the callback is signed with the installation's secret"
        );
        let reply: Value = serde_json::from_slice(&callback.body).unwrap();
        assert_eq!(reply["text"], format!("echo: {text}"), "{channel}: {reply}");
        assert_eq!(reply["chat_id"], "chat-1");
        assert!(!reply["idempotency_key"].as_str().unwrap().is_empty());
    }
    assert!(
        callbacks.try_recv().is_err(),
        "exactly one callback per channel: the forged messages were not stored"
    );
}
