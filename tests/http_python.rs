//! The Python `http` channel (`plugins/http-python`, built with `plugins/sdk-python` by
//! componentize-py) against a real `serve` (issue 20).
//!
//! The test runs the plugin's `build.sh` (which installs the pinned componentize-py when it is
//! missing, and fails naming the install command when it cannot), starts `serve` with
//! `--plugins-dir` on the built plugin and an `echo` agent, adds an `http` installation whose
//! callback origin the operator maps to a receiver in this test, then checks:
//! - a signed message is stored in a session and the echo reply is POSTed, signed with the
//!   installation's secret, to the receiver, carrying the delivery's idempotency key;
//! - a bad or missing signature and a stale timestamp are 401 and store nothing;
//! - an authenticated body that is not a message is 400 and stores nothing.

#[path = "support/serve.rs"]
mod serve;
#[path = "support/signed_hook.rs"]
mod signed_hook;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use signed_hook::{now_s, signature, start_receiver};

const ADMIN: &str = "http-python-admin-token-0123456789abcdef";
const SIGNING_SECRET: &str = "inbound-signing-secret-0123456789";
const CALLBACK_SECRET: &str = "callback-signing-secret-9876543210";
/// The reserved callback origin of the plugin's manifest, mapped by the operator.
const CALLBACK_ORIGIN: &str = "https://callback.switchboard.invalid";
/// The pinned build tool, as `plugins/sdk-python/requirements-build.txt` names it.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const BUILD_LIMIT: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds (or finds up to date) `http.wasm` + `http.toml` in a directory of their own.
async fn build_plugin() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-python-plugins");
    let script = repo().join("plugins/http-python/build.sh");
    let run = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg(&script)
                .env("SWITCHBOARD_PLUGIN_OUT", &out)
                .stdin(std::process::Stdio::null())
                .output()
        })
    };
    let output = tokio::time::timeout(BUILD_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("plugins/http-python/build.sh took over {BUILD_LIMIT:?}"))
        .unwrap()
        .expect("bash runs plugins/http-python/build.sh");
    assert!(
        output.status.success(),
        "plugins/http-python/build.sh failed ({}); it needs python3 and {COMPONENTIZE_PY} \
         (install it with `python3 -m pip install {COMPONENTIZE_PY}`):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(out.join("http.wasm").is_file() && out.join("http.toml").is_file());
    out
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
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(t) = timestamp {
        request = request.header("X-Switchboard-Timestamp", t);
    }
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
async fn the_python_http_channel_verifies_stores_and_calls_back_signed() {
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
            "channel": "http", "name": "python http", "agent": "echo", "debounce_ms": 100,
            "config": {"callback_url": format!("{CALLBACK_ORIGIN}/replies")},
            "secrets": {"signing_secret": SIGNING_SECRET, "callback_secret": CALLBACK_SECRET},
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
    let hook = format!("{}/hooks/http/{id}", serve.base);

    // Refused: nothing of these may be stored.
    let now = now_s().to_string();
    let forged = message("m-forged", "forged");
    let (status, body) = post_hook(
        &http,
        &hook,
        Some(&now),
        Some(&signature("not-the-secret", &now, &forged)),
        &forged,
    )
    .await;
    assert_eq!(status, 401, "a wrong signature is refused: {body}");
    let (status, _) = post_hook(&http, &hook, Some(&now), None, &forged).await;
    assert_eq!(status, 401, "a missing signature is refused");
    let stale_at = (now_s() - 600).to_string();
    let stale = message("m-stale", "stale");
    let (status, body) = post_hook(
        &http,
        &hook,
        Some(&stale_at),
        Some(&signature(SIGNING_SECRET, &stale_at, &stale)),
        &stale,
    )
    .await;
    assert_eq!(status, 401, "a timestamp 10 minutes old is refused: {body}");
    let malformed = br#"{"message_id": "m-bad", "chat_id": "chat-1"}"#;
    let (status, body) = post_hook(
        &http,
        &hook,
        Some(&now),
        Some(&signature(SIGNING_SECRET, &now, malformed)),
        malformed,
    )
    .await;
    assert_eq!(status, 400, "an authenticated non-message is 400: {body}");
    assert!(
        body.contains("chat_type"),
        "the 400 names the field: {body}"
    );

    // Accepted: stored, answered by the echo agent, the reply POSTed signed to the receiver.
    let good = message("m-1", "hello from python");
    let now = now_s().to_string();
    let (status, body) = post_hook(
        &http,
        &hook,
        Some(&now),
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
        signature(CALLBACK_SECRET, &timestamp, &callback.body),
        "the callback is signed with callback_secret over timestamp.body"
    );
    let sent_at: u64 = timestamp.parse().unwrap();
    assert!(
        sent_at.abs_diff(now_s()) < 300,
        "the callback's timestamp is now"
    );
    let reply: Value = serde_json::from_slice(&callback.body).unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["text"], "echo: hello from python", "{reply}");
    assert_eq!(reply["chat_id"], "chat-1");
    assert_eq!(reply["chat_type"], "direct");
    let key = reply["idempotency_key"].as_str().unwrap();
    assert!(!key.is_empty(), "{reply}");
    assert_eq!(header("idempotency-key"), key);

    // The admin API: one session holding exactly the accepted message and its reply.
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
        ["hello from python", "echo: hello from python"],
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

/// The cost of the Python plugin beside a Rust one (issue 20, `docs/benchmarks.md`): one signed
/// webhook verified and read per call, with a warm instance and with a fresh instance per call
/// (`recycle_after_calls = 1`: the difference is the instantiation). Prints the numbers; asserts
/// only that every call verifies (no timing assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_cost_beside_the_rust_slack_plugin() {
    use std::sync::Arc;
    use switchboard::capabilities::{OperatorPolicy, ServiceLimits, Services};
    use switchboard::domain::InstallationContext;
    use switchboard::runtime::transport::WebhookRequest;
    use switchboard::runtime::{PoolSettings, Runtime, RuntimeSettings};

    let plugins = build_plugin().await;
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
        let python = runtime
            .load_file(&plugins.join("http.wasm"))
            .expect("the Python plugin loads");
        runtime.load_bundled().expect("bundled plugins load");
        let slack = runtime.plugin("slack").expect("slack is bundled");
        (runtime, python, slack)
    };

    let now = now_s().to_string();
    let body = message("m-cost", "how much does a message cost?");
    let python_request = WebhookRequest {
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
    let python_cx = Arc::new(
        InstallationContext::new("cost-python")
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

    let (_warm_runtime, python, slack) = runtime(10_000);
    let python_warm = per_call_us(&python, &python_cx, &python_request, 20, 200).await;
    let slack_warm = per_call_us(&slack, &slack_cx, &slack_request, 20, 200).await;
    let (_cold_runtime, python_cold, slack_cold) = runtime(1);
    let python_fresh = per_call_us(&python_cold, &python_cx, &python_request, 2, 30).await;
    let slack_fresh = per_call_us(&slack_cold, &slack_cx, &slack_request, 2, 30).await;
    println!(
        "python-cost: plugin=http(python) warm_verify_us={python_warm:.0} \
         fresh_instance_verify_us={python_fresh:.0} instantiation_us={:.0}",
        python_fresh - python_warm
    );
    println!(
        "python-cost: plugin=slack(rust) warm_verify_us={slack_warm:.0} \
         fresh_instance_verify_us={slack_fresh:.0} instantiation_us={:.0}",
        slack_fresh - slack_warm
    );
    println!(
        "python-cost: component bytes python={} ",
        std::fs::metadata(plugins.join("http.wasm")).unwrap().len()
    );
}
