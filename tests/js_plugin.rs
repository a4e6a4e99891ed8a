//! The JavaScript `hello-js` channel (`plugins/hello-js`, built by componentize-js) through the
//! real host (issue 20: plugins in more than one language).
//!
//! The tests run the plugin's `build.sh` (which installs the pinned componentize-js into the
//! plugin directory with `npm ci` from the committed lockfile, and fails naming what is missing
//! when Node or the registry is not there), then:
//! - `switchboard plugins inspect` loads the component and shows its manifest, grants and
//!   imports;
//! - `switchboard replay` runs the fixtures of `tests/fixtures/hello-js` (signed with Python's
//!   `hmac`, not by the plugin): a signed request is read, a tampered one rejected, a raw
//!   payload decoded;
//! - `serve` with `--plugins-dir` on the built plugin and an `echo` agent: a signed message is
//!   stored and the echo reply POSTed, signed, to a loopback receiver; a bad or missing signature
//!   is 401 and stores nothing;
//! - the cost of a call and of an instantiation beside the Python `http` plugin and the Rust
//!   `slack` plugin, in one run (`docs/benchmarks.md`).

#[path = "support/serve.rs"]
mod serve;
#[path = "support/signed_hook.rs"]
mod signed_hook;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use signed_hook::{now_s, signature, start_receiver};

const ADMIN: &str = "hello-js-admin-token-0123456789abcdef";
const SIGNING_SECRET: &str = "hello-js-signing-secret-0123456789";
/// The fixtures' secret (`tests/fixtures/hello-js/README.md`).
const FIXTURE_SECRET: &str = "fixture-signing-secret-hello-js";
/// The reserved callback origin of the plugin's manifest, mapped by the operator.
const CALLBACK_ORIGIN: &str = "https://callback.switchboard.invalid";
/// `npm ci` of the tools plus componentize-js, on a loaded 2-core machine.
const BUILD_LIMIT: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a build script with its output directory; panics with its output unless it succeeds.
async fn run_build(script: &'static str, out: PathBuf, needs: &str) -> PathBuf {
    let path = repo().join(script);
    let run = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg(&path)
                .env("SWITCHBOARD_PLUGIN_OUT", &out)
                .stdin(std::process::Stdio::null())
                .output()
        })
    };
    let output = tokio::time::timeout(BUILD_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("{script} took over {BUILD_LIMIT:?}"))
        .unwrap()
        .unwrap_or_else(|e| panic!("bash runs {script}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed ({}); it needs {needs}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    out
}

/// Builds (or finds up to date) `hello-js.wasm` + `hello-js.toml` in a directory of their own,
/// and compiles the component into the suite's artifact cache, once per test binary.
async fn build_plugin() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let out = run_build(
                "plugins/hello-js/build.sh",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("hello-js-plugins"),
                "Node 20+ with npm, and the npm registry for `npm ci` the first time",
            )
            .await;
            assert!(out.join("hello-js.wasm").is_file() && out.join("hello-js.toml").is_file());
            compile_into_cache(out.join("hello-js.wasm")).await;
            out
        })
        .await
        .clone()
}

/// Cranelift compiles the component (the whole JavaScript engine, ≈ 50 s of CPU) into the shared
/// artifact cache here, under its own limit, so that the `switchboard` children below load it
/// from the cache within theirs, and do not all compile it at once.
async fn compile_into_cache(wasm: PathBuf) {
    use switchboard::capabilities::{OperatorPolicy, ServiceLimits, Services};
    use switchboard::runtime::{Runtime, RuntimeSettings};
    let compile = tokio::task::spawn_blocking(move || {
        let settings = RuntimeSettings {
            cache_dir: Some(serve::shared_cache_dir()),
            ..Default::default()
        };
        let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
        let runtime = Runtime::new(settings, services).expect("runtime starts");
        runtime
            .load_file(&wasm)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    tokio::time::timeout(BUILD_LIMIT, compile)
        .await
        .unwrap_or_else(|_| panic!("compiling hello-js.wasm took over {BUILD_LIMIT:?}"))
        .unwrap()
        .unwrap_or_else(|e| panic!("the host refuses hello-js.wasm: {e}"));
}

/// Runs `switchboard <args>` from the workspace root with the built plugin's directory.
async fn switchboard(plugins: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .current_dir(repo())
        .arg("--plugins-dir")
        .arg(plugins)
        .arg("--cache-dir")
        .arg(serve::shared_cache_dir())
        .args(args)
        .env_remove("SWITCHBOARD_PLUGINS_DIR")
        .env_remove("SWITCHBOARD_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let shown = format!("{args:?}");
    let child = command.spawn().expect("the switchboard binary runs");
    let pid = child.id();
    match tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(|| child.wait_with_output()),
    )
    .await
    {
        Ok(output) => output.unwrap().unwrap(),
        Err(_) => {
            // Do not leave it running past the test.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!("switchboard {shown} took over {WAIT:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_plugin_loads_and_is_inspected() {
    let plugins = build_plugin().await;
    let output = switchboard(&plugins, &["plugins", "inspect", "hello-js", "--json"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["name"], "hello-js", "{shown}");
    assert_eq!(shown["channel"], "hello-js");
    assert_eq!(shown["contract"], "0.2.0");
    assert_eq!(shown["transports"]["webhook"], true);
    assert_eq!(
        shown["loaded_from_cache"], true,
        "the child loads the artifact compiled before"
    );
    assert_eq!(shown["capabilities"]["clock"], true);
    assert_eq!(
        shown["capabilities"]["http"],
        json!([CALLBACK_ORIGIN]),
        "{shown}"
    );
    let imports: Vec<&str> = shown["imports"]
        .as_array()
        .expect("imports are listed")
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    // The engine's own WASI: the filesystem (linked with no directory) but never wasi:http,
    // which build.sh disables.
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:filesystem/")),
        "{imports:?}"
    );
    assert!(
        !imports.iter().any(|i| i.starts_with("wasi:http/")),
        "{imports:?}"
    );
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("switchboard:channel/crypto@")),
        "{imports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_the_fixtures_through_the_js_plugin() {
    let plugins = build_plugin().await;
    let secret = format!("signing_secret={FIXTURE_SECRET}");
    let output = switchboard(
        &plugins,
        &[
            "replay",
            "--plugin",
            "hello-js",
            "--secret",
            &secret,
            "tests/fixtures/hello-js",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let by_file = |name: &str| {
        lines
            .iter()
            .find(|l| l["file"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"))
    };

    let direct = by_file("event_direct_text.json");
    assert_eq!(direct["kind"], "message", "{direct}");
    assert_eq!(direct["chat_type"], "direct");
    assert_eq!(direct["sender_id"], "user-4");
    assert_eq!(direct["body"], "hello from a payload");
    assert_eq!(direct["addressed_to_bot"], true);
    assert_eq!(direct["command"], Value::Null);

    let signed = by_file("webhook_signed_command.json");
    assert_eq!(signed["kind"], "message", "{signed}");
    assert_eq!(signed["message_id"], "m-fixture-1");
    assert_eq!(signed["chat_id"], "chat-7");
    assert_eq!(signed["chat_type"], "group");
    assert_eq!(signed["thread_id"], "t-2");
    assert_eq!(signed["sender_name"], "Grace");
    assert_eq!(
        signed["command"],
        json!({"name": "deploy", "args": "staging now"}),
        "the bot suffix is dropped and the name lower-cased: {signed}"
    );

    let tampered = by_file("webhook_tampered_signature.json");
    assert_eq!(tampered["kind"], "rejected", "{tampered}");
    assert_eq!(tampered["body"], Value::Null);
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

/// POSTs `body` to the installation's hook with the given timestamp and signature headers.
async fn post_hook(
    http: &reqwest::Client,
    url: &str,
    timestamp: &str,
    signature: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("X-Switchboard-Timestamp", timestamp)
        .body(body.to_vec());
    if let Some(s) = signature {
        request = request.header("X-Switchboard-Signature", s);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the hook answers in time")
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn message(id: &str, text: &str) -> Vec<u8> {
    json!({
        "message_id": id, "chat_id": "chat-1", "chat_type": "direct",
        "user": {"id": "user-1", "name": "Ada"}, "text": text,
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_channel_verifies_stores_and_calls_back_signed() {
    let plugins = build_plugin().await;
    let (receiver, mut callbacks) = start_receiver(json!({"ok": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = serve::ServeChild::start(dir.path(), |port| config(port, &plugins, &receiver))
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{}/api/installations", serve.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(
            json!({
            "channel": "hello-js", "name": "js hello", "agent": "echo", "debounce_ms": 100,
            "config": {"callback_url": format!("{CALLBACK_ORIGIN}/replies")},
            "secrets": {"signing_secret": SIGNING_SECRET},
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        201,
        "{}\n{}",
        created.text().await.unwrap(),
        serve.log_tail(30)
    );
    let installation: Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    let id = installation["id"].as_str().unwrap().to_string();
    let hook = format!("{}/hooks/hello-js/{id}", serve.base);

    // Refused: nothing of these may be stored.
    let now = now_s().to_string();
    let forged = message("m-forged", "forged");
    let (status, body) = post_hook(
        &http,
        &hook,
        &now,
        Some(&signature("not-the-secret", &now, &forged)),
        &forged,
    )
    .await;
    assert_eq!(status, 401, "a wrong signature is refused: {body}");
    let (status, _) = post_hook(&http, &hook, &now, None, &forged).await;
    assert_eq!(status, 401, "a missing signature is refused");

    // Accepted: stored, answered by the echo agent, the reply POSTed signed to the receiver.
    let good = message("m-1", "hello from javascript");
    let (status, body) = post_hook(
        &http,
        &hook,
        &now,
        Some(&signature(SIGNING_SECRET, &now, &good)),
        &good,
    )
    .await;
    assert_eq!(status, 200, "a signed message is accepted: {body}");

    let callback = tokio::time::timeout(WAIT, callbacks.recv())
        .await
        .unwrap_or_else(|_| panic!("no callback within {WAIT:?}:\n{}", serve.log_tail(40)))
        .expect("the receiver runs");
    let header = |name: &str| {
        callback
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("callback header {name} missing: {callback:?}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let timestamp = header("x-switchboard-timestamp");
    assert_eq!(
        header("x-switchboard-signature"),
        signature(SIGNING_SECRET, &timestamp, &callback.body),
        "the callback is signed over timestamp.body"
    );
    let sent_at: u64 = timestamp.parse().unwrap();
    assert!(
        sent_at.abs_diff(now_s()) < 300,
        "the callback's timestamp is now (the host clock)"
    );
    let reply: Value = serde_json::from_slice(&callback.body).unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["text"], "echo: hello from javascript", "{reply}");
    assert_eq!(reply["chat_id"], "chat-1");
    assert_eq!(reply["chat_type"], "direct");
    let key = reply["idempotency_key"].as_str().unwrap();
    assert!(!key.is_empty(), "{reply}");
    assert_eq!(header("idempotency-key"), key);

    // One session holding exactly the accepted message and its reply.
    let sessions = http
        .get(format!("{}/api/sessions?installation={id}", serve.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sessions: Value = serde_json::from_str(&sessions).unwrap();
    let sessions = sessions.as_array().expect("a list of sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let bodies: Vec<&str> = sessions[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["hello from javascript", "echo: hello from javascript"],
        "nothing refused was stored"
    );
}

/// One webhook request of `plugin` through `runtime`: verify-webhook (signature through host
/// `crypto`, the message read in the same call). Panics unless it yields one event.
async fn verify_once(
    plugin: &switchboard::runtime::Plugin,
    cx: &std::sync::Arc<switchboard::domain::InstallationContext>,
    request: &switchboard::runtime::transport::WebhookRequest,
) {
    use switchboard::runtime::transport::WebhookVerdict;
    let verdict = tokio::time::timeout(WAIT, plugin.verify_webhook(cx, request))
        .await
        .expect("the call ends in time")
        .expect("the call succeeds");
    match verdict {
        Ok(WebhookVerdict::Events(events)) => assert_eq!(events.payloads.len(), 1),
        other => panic!("{} did not verify the request: {other:?}", plugin.name()),
    }
}

/// Microseconds per call of `calls` verify-webhook calls (after `warmup`).
async fn per_call_us(
    plugin: &switchboard::runtime::Plugin,
    cx: &std::sync::Arc<switchboard::domain::InstallationContext>,
    request: &switchboard::runtime::transport::WebhookRequest,
    warmup: u32,
    calls: u32,
) -> f64 {
    for _ in 0..warmup {
        verify_once(plugin, cx, request).await;
    }
    let started = std::time::Instant::now();
    for _ in 0..calls {
        verify_once(plugin, cx, request).await;
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

/// The cost of the JavaScript plugin beside the Python `http` plugin and the Rust `slack`
/// plugin, in one run (issue 20, `docs/benchmarks.md`, the method of the Python row): one signed
/// webhook verified and read per call, with a warm instance and with a fresh instance per call
/// (`recycle_after_calls = 1`: the difference is the instantiation). Prints the numbers;
/// asserts only that every call verifies (no timing assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_plugin_cost_beside_python_and_rust() {
    use std::sync::Arc;
    use switchboard::capabilities::{OperatorPolicy, ServiceLimits, Services};
    use switchboard::domain::InstallationContext;
    use switchboard::runtime::transport::WebhookRequest;
    use switchboard::runtime::{PoolSettings, Runtime, RuntimeSettings};

    let js_dir = build_plugin().await;
    // The directory tests/http_python.rs builds into, so either test finds it up to date.
    let python_dir = run_build(
        "plugins/http-python/build.sh",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-python-plugins"),
        "python3 and componentize-py==0.25.1",
    )
    .await;
    let runtime = |recycle_after_calls: u32| {
        let settings = RuntimeSettings {
            cache_dir: Some(serve::shared_cache_dir()),
            pool: PoolSettings {
                recycle_after_calls,
                ..Default::default()
            },
            ..Default::default()
        };
        let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
        let runtime = Runtime::new(settings, services).expect("runtime starts");
        let js = runtime
            .load_file(&js_dir.join("hello-js.wasm"))
            .expect("the JavaScript plugin loads");
        let python = runtime
            .load_file(&python_dir.join("http.wasm"))
            .expect("the Python plugin loads");
        runtime.load_bundled().expect("bundled plugins load");
        let slack = runtime.plugin("slack").expect("slack is bundled");
        (runtime, js, python, slack)
    };

    let now = now_s().to_string();
    // The JavaScript and Python plugins share the wire: one request serves both.
    let body = message("m-cost", "how much does a message cost?");
    let request = WebhookRequest {
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: vec![
            ("x-switchboard-timestamp".into(), now.clone()),
            (
                "x-switchboard-signature".into(),
                signature(SIGNING_SECRET, &now, &body),
            ),
        ],
        body,
    };
    let cx = Arc::new(
        InstallationContext::new("cost-webhook")
            .with_config("callback_url", format!("{CALLBACK_ORIGIN}/replies"))
            .with_secret("signing_secret", SIGNING_SECRET),
    );
    let slack_body = json!({
        "type": "event_callback", "team_id": "T0001", "api_app_id": "A0001",
        "event_id": "Ev0001", "event_time": 1_700_000_000,
        "event": {"type": "message", "channel": "D0001", "channel_type": "im",
                  "user": "U0002", "text": "how much does a message cost?",
                  "ts": "1700000000.000100"},
    })
    .to_string()
    .into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(format!("v0:{now}:").as_bytes());
    mac.update(&slack_body);
    let slack_request = WebhookRequest {
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: vec![
            ("x-slack-request-timestamp".into(), now.clone()),
            (
                "x-slack-signature".into(),
                format!("v0={}", hex::encode(mac.finalize().into_bytes())),
            ),
        ],
        body: slack_body,
    };
    let slack_cx = Arc::new(
        InstallationContext::new("cost-slack")
            .with_config("bot_user_id", "U0001")
            .with_config("team_id", "T0001")
            .with_secret("bot_token", "xoxb-cost")
            .with_secret("signing_secret", SIGNING_SECRET),
    );

    let (_warm_runtime, js, python, slack) = runtime(10_000);
    let js_warm = per_call_us(&js, &cx, &request, 20, 200).await;
    let python_warm = per_call_us(&python, &cx, &request, 20, 200).await;
    let slack_warm = per_call_us(&slack, &slack_cx, &slack_request, 20, 200).await;
    let (_cold_runtime, js_cold, python_cold, slack_cold) = runtime(1);
    let js_fresh = per_call_us(&js_cold, &cx, &request, 2, 30).await;
    let python_fresh = per_call_us(&python_cold, &cx, &request, 2, 30).await;
    let slack_fresh = per_call_us(&slack_cold, &slack_cx, &slack_request, 2, 30).await;
    for (plugin, warm, fresh) in [
        ("hello-js(javascript)", js_warm, js_fresh),
        ("http(python)", python_warm, python_fresh),
        ("slack(rust)", slack_warm, slack_fresh),
    ] {
        println!(
            "plugin-cost: plugin={plugin} warm_verify_us={warm:.0} \
             fresh_instance_verify_us={fresh:.0} instantiation_us={:.0}",
            fresh - warm
        );
    }
    println!(
        "plugin-cost: component bytes javascript={} python={}",
        std::fs::metadata(js_dir.join("hello-js.wasm"))
            .unwrap()
            .len(),
        std::fs::metadata(python_dir.join("http.wasm"))
            .unwrap()
            .len()
    );
}
