//! The host side of contract 0.2's long-poll transport, actions and streamed replies, end to
//! end against a local fake channel (`tests/fake-poll`) with the `testing-poll` plugin, which
//! uses only those: a real `serve` over SQLite and PostgreSQL.
//!
//! - `on-install` runs when the installation is added and its answer lands in the config.
//! - The supervisor long-polls under the installation's lease; a message is stored, runs, and
//!   its reply is streamed (`stream-begin`, updates, `stream-end`) as exactly one channel message.
//! - The cursor advances only after the events are durable and survives a restart: nothing is
//!   ingested or answered twice.
//! - A button press arrives as an action turn and is answered.
//! - A send that fails is retried by the outbox with the same idempotency key.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use fake_poll::FakePoll;
use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "long-poll-admin-token-0123456789abcdef";
const TOKEN: &str = "tok-123:abc";

struct Host {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config(database_url: &str, secret_key: &str, plugins: &std::path::Path, fake: &str) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(secret_key.to_string());
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

impl Host {
    async fn start(config: &Config) -> Host {
        let app = App::from_config(config).await.expect("app builds");
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
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/api{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        (status, value)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_actions_and_streaming_end_to_end() {
    tokio::time::timeout(Duration::from_secs(150), async {
        for test_db in db::test_databases().await {
            scenario(&test_db.url).await;
            eprintln!("{}: long poll scenario passed", test_db.name);
        }
    })
    .await
    .expect("the long-poll scenario finishes in time");
}

async fn scenario(database_url: &str) {
    let fake = FakePoll::start(TOKEN).await;
    let plugins = plugin_dir();
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let config = config(database_url, &key, plugins.path(), fake.base_url());
    let host = Host::start(&config).await;

    // Values outside the schema are refused, naming the key.
    let (status, refused) = host
        .admin(
            reqwest::Method::POST,
            "/installations",
            Some(json!({"channel": "testing-poll", "secrets": {"token": "has spaces"}})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("token"),
        "{refused}"
    );

    // on-install asked the channel who the bot is; its answer is in the config.
    let (status, created) = host
        .admin(
            reqwest::Method::POST,
            "/installations",
            Some(json!({
                "channel": "testing-poll", "name": "poller", "agent": "echo",
                "debounce_ms": 50, "secrets": {"token": TOKEN},
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["config"]["bot_id"], fake_poll::BOT_ID, "{created}");
    let installation = created["id"].as_str().unwrap().to_string();
    // on-install was told the installation's own URL (a channel without routing keys registers
    // it), and the required `bot_id` the operator left out was accepted because on-install
    // filled it.
    let registered = created["config"]["webhook_url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        registered.ends_with(&format!("/hooks/testing-poll/{installation}")),
        "{created}"
    );

    // A message is long-polled, stored, run, and the reply streamed as one channel message.
    let first = fake.push_message("c1", "direct", "u1", "hello poll");
    let sent = eventually("the streamed reply to end", async || {
        let sent = fake.sent();
        let done = sent
            .first()
            .is_some_and(|m| fake.edits(&m.message_id).last().is_some_and(|e| e.is_final));
        done.then_some(sent)
    })
    .await;
    assert_eq!(sent.len(), 1, "one channel message per reply: {sent:?}");
    let reply = &sent[0];
    assert_eq!(reply.chat_id, "c1");
    let edits = fake.edits(&reply.message_id);
    let last = edits.last().unwrap();
    assert!(
        last.text.contains("hello poll"),
        "the echo reply: {edits:?}"
    );
    assert_eq!(
        edits.iter().filter(|e| e.is_final).count(),
        1,
        "stream-end once: {edits:?}"
    );
    assert!(
        edits.iter().all(|e| e.text.len() <= last.text.len()),
        "updates only grow towards the final text: {edits:?}"
    );
    // The cursor moved past the stored update: the next polls ask for what follows it.
    eventually("the cursor to advance", async || {
        (fake.last_offset() > Some(first)).then_some(())
    })
    .await;

    // A button press is an action turn for the agent, and it is answered.
    fake.push_action(
        "c1",
        "direct",
        "u1",
        &reply.message_id,
        "approve",
        "{\"x\":1}",
    );
    for _ in 0..200 {
        if fake.sent().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if fake.sent().len() != 2 {
        let (_, sessions) = host
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={installation}"),
                None,
            )
            .await;
        let (_, audit) = host.admin(reqwest::Method::GET, "/audit", None).await;
        let (_, outbox) = host.admin(reqwest::Method::GET, "/outbox", None).await;
        panic!(
            "no answer to the action: sent {:?}\nsessions {sessions}\naudit {audit}\noutbox {outbox}",
            fake.sent()
        );
    }
    let (_, sessions) = host
        .admin(
            reqwest::Method::GET,
            &format!("/sessions?installation={installation}"),
            None,
        )
        .await;
    let session = &sessions[0];
    let kinds: Vec<&str> = session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"action"), "an action turn: {session}");

    // A failing send is retried by the outbox with the same key: still one message.
    fake.set_failures(1, 503);
    fake.push_message("c2", "direct", "u2", "second chat");
    // (The failure may hit the stream's start; then the reply is delivered whole.)
    eventually("the retried reply", async || {
        fake.sent()
            .iter()
            .any(|m| {
                m.chat_id == "c2"
                    && (fake.edits(&m.message_id).iter().any(|e| e.is_final)
                        || m.sent_text.contains("second chat"))
            })
            .then_some(())
    })
    .await;
    eventually("every outbox row delivered", async || {
        let (_, rows) = host.admin(reqwest::Method::GET, "/outbox", None).await;
        rows.as_array()?
            .iter()
            .all(|r| r["state"] == "delivered")
            .then_some(())
    })
    .await;
    assert_eq!(fake.pending_failures(), 0, "the scripted failure was hit");
    assert_eq!(fake.sent().iter().filter(|m| m.chat_id == "c2").count(), 1);

    // A restart resumes from the durable cursor: nothing is ingested or answered again.
    let answered = fake.sent().len();
    host.stop().await;
    let polls_before = fake.poll_requests();
    let host = Host::start(&config).await;
    eventually("polling to resume", async || {
        (fake.poll_requests() > polls_before + 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.sent().len(),
        answered,
        "no reply twice after a restart"
    );
    host.stop().await;
}
