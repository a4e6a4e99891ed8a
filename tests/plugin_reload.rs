//! Safe plugin updates (issue 20): `plugins.lock`, reloads and probation, through a real
//! `serve` child with the `testing` plugin loaded from a plugins directory.
//!
//! - Strict mode: without a lock file, or with a plugin file that is not the pinned one, `serve`
//!   refuses to start and says which plugin, both digests and what to run; a changed file
//!   offered to a running host by `plugins reload` is refused and the pinned version keeps
//!   serving.
//! - Hot reload under load: while webhooks keep arriving, a changed plugin file is swapped in
//!   by `switchboard plugins reload`; every request is answered 200 and every message stored.
//! - Probation: a new version whose calls fail (its manifest caps memory below what it needs)
//!   is rolled back after `probation_failures` failures; the rollback is counted in `/metrics`
//!   and the previous version serves again.

#[path = "support/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

const ADMIN: &str = "plugin-reload-admin-token-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(120);

fn testing_wasm() -> Vec<u8> {
    std::fs::read(
        Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR).join("switchboard_testing.wasm"),
    )
    .unwrap()
}

/// The same component with a custom section appended: a different file (and digest) that
/// behaves the same.
fn revised(wasm: &[u8], revision: u8) -> Vec<u8> {
    let name = b"switchboard-test-revision";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.push(revision);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // fits one LEB128 byte
    out.extend_from_slice(&section);
    out
}

/// The component with its embedded manifest capping memory at 1 MiB (the same length, so the
/// binary stays valid): a call that needs 2 MiB fails on it and succeeds on the original.
fn starved(wasm: &[u8]) -> Vec<u8> {
    let from = b"memory_mib = 16";
    let to = b"memory_mib = 1 ";
    // The manifest text is in the component twice (the custom section the host reads, and
    // the string the section was made from): change every copy.
    let mut out = wasm.to_vec();
    let mut changed = 0;
    for at in 0..out.len().saturating_sub(from.len()) {
        if &out[at..at + from.len()] == from {
            out[at..at + to.len()].copy_from_slice(to);
            changed += 1;
        }
    }
    assert!(
        changed > 0,
        "the testing plugin's manifest caps memory at 16 MiB"
    );
    out
}

fn sha256(bytes: &[u8]) -> String {
    switchboard::runtime::sha256_hex(bytes)
}

fn config(port: u16, plugins: &Path, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"

[database]
url = "sqlite://switchboard.db?mode=rwc"

[plugins]
dir = "{plugins}"
{extra}
"#,
        plugins = plugins.display()
    )
}

/// Runs the CLI in `dir` with `args`; returns (success, output).
fn cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .current_dir(dir)
        .env("SWITCHBOARD_CACHE_DIR", serve::shared_cache_dir())
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `serve` with `config(port)`, expected to refuse to start: its log.
fn refused_start(dir: &Path, config_text: &str) -> String {
    let path = dir.join("refused.toml");
    std::fs::write(&path, config_text).unwrap();
    let (ok, output) = cli(dir, &["--config", path.to_str().unwrap(), "serve"]);
    assert!(
        !ok,
        "serve started although it should have refused:\n{output}"
    );
    output
}

struct Host {
    serve: serve::ServeChild,
    http: reqwest::Client,
}

impl Host {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/api{path}", self.serve.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn serving_sha(&self) -> String {
        let (_, plugins) = self.api(reqwest::Method::GET, "/plugins", None).await;
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "testing")
            .map(|p| p["sha256"].as_str().unwrap().to_string())
            .expect("the testing plugin is loaded")
    }

    async fn installation(&self) -> String {
        let (status, created) = self
            .api(
                reqwest::Method::POST,
                "/installations",
                Some(json!({"channel": "testing", "name": "reload", "debounce_ms": 50})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    async fn post(&self, installation: &str, body: &str) -> u16 {
        self.http
            .post(format!("{}/hooks/testing/{installation}", self.serve.base))
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("testing.wasm"), testing_wasm()).unwrap();
    (dir, plugins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_unpinned_and_changed_plugins() {
    let (dir, plugins) = setup();
    let d = dir.path();
    let strict = "strict = true\nlock_file = \"plugins.lock\"";

    // No lock file at all.
    let output = refused_start(d, &config(serve::free_port(), &plugins, strict));
    assert!(output.contains("plugins.lock"), "{output}");

    // Pinned: serve starts.
    let (ok, output) = cli(
        d,
        &[
            "--plugins-dir",
            plugins.to_str().unwrap(),
            "plugins",
            "lock",
        ],
    );
    assert!(ok, "{output}");
    let v1 = sha256(&testing_wasm());
    assert!(
        output.contains(&v1),
        "plugins lock prints the pin: {output}"
    );
    let host = Host {
        serve: serve::ServeChild::start(d, |port| config(port, &plugins, strict))
            .await
            .unwrap(),
        http: reqwest::Client::new(),
    };
    assert_eq!(host.serving_sha().await, v1);

    // A changed file offered to the running host is refused; the pinned version serves on.
    let v2 = revised(&testing_wasm(), 2);
    std::fs::write(plugins.join("testing.wasm"), &v2).unwrap();
    let (status, report) = host
        .api(reqwest::Method::POST, "/plugins/reload", None)
        .await;
    assert_eq!(status, 200, "{report}");
    let refused = report["refused"].to_string();
    assert!(
        refused.contains(&sha256(&v2)) && refused.contains(&v1) && refused.contains("plugins lock"),
        "{report}"
    );
    assert_eq!(host.serving_sha().await, v1);
    drop(host);

    // The same changed file at start-up: serve refuses, naming both digests.
    let output = refused_start(d, &config(serve::free_port(), &plugins, strict));
    assert!(
        output.contains("changed") && output.contains(&sha256(&v2)) && output.contains(&v1),
        "{output}"
    );
    // An unpinned extra plugin is refused too.
    std::fs::write(plugins.join("testing.wasm"), testing_wasm()).unwrap();
    std::fs::write(d.join("plugins.lock"), "[plugins]\n").unwrap();
    let output = refused_start(d, &config(serve::free_port(), &plugins, strict));
    assert!(output.contains("not pinned"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_plugin_is_swapped_under_load_without_losing_an_event() {
    let (dir, plugins) = setup();
    let d = dir.path();
    let host = std::sync::Arc::new(Host {
        serve: serve::ServeChild::start(d, |port| config(port, &plugins, ""))
            .await
            .unwrap(),
        http: reqwest::Client::new(),
    });
    let installation = host.installation().await;
    const SENDERS: usize = 2;
    const EACH: usize = 120;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (host, installation, sent) = (host.clone(), installation.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..EACH {
                statuses.push(
                    host.post(&installation, &format!("echo:load-{sender}-{i}"))
                        .await,
                );
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            statuses
        }));
    }
    // Swap mid-load, through the CLI as an operator would.
    serve::eventually("the load to be under way", DEADLINE, async || {
        (sent.load(std::sync::atomic::Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    let v2 = revised(&testing_wasm(), 2);
    std::fs::write(plugins.join("testing.wasm"), &v2).unwrap();
    let config_path = d.join("reload.toml");
    std::fs::write(&config_path, config(0, &plugins, "")).unwrap();
    let (ok, output) = cli(
        d,
        &[
            "--config",
            config_path.to_str().unwrap(),
            "plugins",
            "reload",
            "--url",
            &host.serve.base,
        ],
    );
    assert!(ok, "{output}");
    assert!(
        output.contains("\"swapped\"") && output.contains(&sha256(&v2)),
        "{output}"
    );
    let during = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        during < SENDERS * EACH,
        "the swap happened after the load ended; nothing was shown"
    );
    for sender in senders {
        let statuses = sender.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "failed requests: {statuses:?}"
        );
    }
    assert_eq!(host.serving_sha().await, sha256(&v2));

    // Every message is stored once.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", d.join("switchboard.db").display()))
        .await
        .unwrap();
    let stored: i64 = serve::eventually("every message stored", DEADLINE, async || {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE body LIKE 'load-%'")
                .fetch_one(&db)
                .await
                .unwrap();
        (count as usize >= SENDERS * EACH).then_some(count)
    })
    .await;
    assert_eq!(stored as usize, SENDERS * EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_during_probation_is_rolled_back() {
    let (dir, plugins) = setup();
    let d = dir.path();
    let probation = "probation_s = 60\nprobation_failures = 3";
    let host = Host {
        serve: serve::ServeChild::start(d, |port| config(port, &plugins, probation))
            .await
            .unwrap(),
        http: reqwest::Client::new(),
    };
    let installation = host.installation().await;
    // 2 MiB of guest memory: fine under the pinned manifest's 16 MiB cap.
    assert_eq!(host.post(&installation, "alloc:2").await, 200);
    let v1 = sha256(&testing_wasm());

    let bad = starved(&testing_wasm());
    std::fs::write(plugins.join("testing.wasm"), &bad).unwrap();
    let (status, report) = host
        .api(reqwest::Method::POST, "/plugins/reload", None)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["swapped"][0]["to"], sha256(&bad), "{report}");
    // Its calls fail; after the third failure the previous version is back.
    serve::eventually("the rollback", DEADLINE, async || {
        let _ = host.post(&installation, "alloc:2").await;
        (host.serving_sha().await == v1).then_some(())
    })
    .await;
    assert_eq!(host.post(&installation, "alloc:2").await, 200);
    let metrics = host
        .http
        .get(format!("{}/metrics", host.serve.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_plugin_rollbacks_total{plugin=\"testing\"} 1"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&host.serve.log).unwrap();
    assert!(log.contains("failed during probation"), "{log}");
}
