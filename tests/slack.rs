//! The Slack plugin end to end (issue 16): a real `App::serve` with the bundled Slack plugin
//! against `tests/fake-slack` over loopback HTTP and WebSocket, on SQLite and PostgreSQL.
//!
//! Webhooks: a signed Events API request is stored once and the echo reply lands in the
//! mention's thread; a retry (`X-Slack-Retry-Num`) and the same message as `app_mention` are
//! deduplicated; bad, stale and missing signatures are 401 with nothing stored; a reply in the
//! bot's thread addresses it without a mention; streaming updates are throttled; a rate-limited
//! send is retried after `Retry-After` and posted once.
//!
//! Socket Mode: an envelope is ACKed only once its event is stored; `disconnect` → the host opens
//! a new connection before the old one closes and nothing is lost; button presses and slash
//! commands arrive as action and command turns.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use fake_slack::{BOT_USER_ID, FakeSlack, Signature, TEAM_ID};
use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "slack-e2e-admin-token-0123456789abcdef";
const BOT_TOKEN: &str = "xoxb-1-fake-bot-token";
const APP_TOKEN: &str = "xapp-1-fake-app-token";
const SIGNING_SECRET: &str = "fake-signing-secret-8f14e45f";

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(database_url: &str, key: &str, fake: &FakeSlack) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(key.to_string());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    let urls = &mut config.plugins.base_urls;
    urls.insert("https://slack.com".into(), fake.base_url().to_string());
    urls.insert(
        "https://files.slack.com".into(),
        fake.base_url().to_string(),
    );
    urls.insert(
        "wss://wss-primary.slack.com".into(),
        fake.ws_origin().to_string(),
    );
    config.server.admin_token = Some(ADMIN.into());
    let c = &mut config.connections;
    c.poll_interval_ms = 100;
    c.backoff_initial_ms = 50;
    c.backoff_max_ms = 400;
    config.delivery.first_backoff_ms = 50;
    // Long enough for the fake's Retry-After to be honoured in full.
    config.delivery.max_backoff_ms = 5_000;
    config
}

struct Host {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
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

    /// Adds a Slack installation over the admin API (bot_user_id left to on-install).
    async fn install(&self, connection: &str) -> String {
        let (status, created) = self
            .admin(
                reqwest::Method::POST,
                "/installations",
                Some(json!({
                    "channel": "slack", "name": format!("slack-{connection}"), "agent": "echo",
                    "debounce_ms": 50, "config": { "connection": connection },
                    "secrets": { "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "app_token": APP_TOKEN },
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            created["config"]["bot_user_id"], BOT_USER_ID,
            "on-install learned the bot: {created}"
        );
        assert_eq!(created["config"]["team_id"], TEAM_ID, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// Every stored message of the installation: (session thread id, message JSON).
    async fn messages(&self, installation: &str) -> Vec<(Option<String>, Value)> {
        let (_, sessions) = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={installation}"),
                None,
            )
            .await;
        let mut out = Vec::new();
        for history in sessions.as_array().cloned().unwrap_or_default() {
            let thread = history["session"]["thread_id"].as_str().map(str::to_string);
            for message in history["messages"].as_array().cloned().unwrap_or_default() {
                out.push((thread.clone(), message));
            }
        }
        out
    }

    /// The user messages whose channel message id is `id`.
    async fn stored(&self, installation: &str, id: &str) -> usize {
        self.messages(installation)
            .await
            .iter()
            .filter(|(_, m)| m["channel_message_id"] == json!(id))
            .count()
    }

    async fn outbox_settled(&self) {
        eventually("every outbox row delivered", async || {
            let (_, rows) = self.admin(reqwest::Method::GET, "/outbox", None).await;
            rows.as_array()?
                .iter()
                .all(|r| r["state"] == "delivered")
                .then_some(())
        })
        .await;
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

async fn fake() -> FakeSlack {
    FakeSlack::start(BOT_TOKEN, APP_TOKEN, SIGNING_SECRET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_end_to_end() {
    init_logs();
    tokio::time::timeout(Duration::from_secs(240), async {
        for test_db in db::test_databases().await {
            webhooks(&test_db.url).await;
            eprintln!("{}: Slack webhook scenario passed", test_db.name);
        }
    })
    .await
    .expect("the webhook scenario finishes in time");
}

async fn webhooks(database_url: &str) {
    let fake = fake().await;
    fake.add_user("U0ALICE", "alice");
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let host = Host::start(&config(database_url, &key, &fake)).await;
    let installation = host.install("webhook").await;
    let url = format!("{}/hooks/slack/{installation}", host.base);

    // url_verification: the challenge comes back, after the signature check.
    let challenge = json!({ "token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification" });
    let (status, body) = fake.post_event(&url, &challenge).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    );
    let (status, _) = fake
        .post_raw(
            &url,
            "application/json",
            challenge.to_string().into_bytes(),
            Signature::Wrong,
            None,
        )
        .await;
    assert_eq!(status, 401, "an unsigned challenge is refused");

    // A top-level mention in a public channel: stored once, the echo reply in its thread.
    let event = fake.message_event(
        "C0GENERAL",
        "channel",
        "U0ALICE",
        &format!("<@{BOT_USER_ID}> hello slack"),
        None,
    );
    let ts = event["ts"].as_str().unwrap().to_string();
    let message_id = format!("C0GENERAL:{ts}");
    let body = fake.event_callback(&event);
    let (status, answer) = fake.post_event(&url, &body).await;
    assert_eq!(
        (status, answer.as_str()),
        (200, ""),
        "ACKed with an empty 200"
    );
    let reply = eventually("the echo reply", async || {
        fake.posted()
            .into_iter()
            .find(|p| p.text.contains("hello slack") && p.text.starts_with("echo"))
    })
    .await;
    assert_eq!(reply.channel, "C0GENERAL");
    assert_eq!(
        reply.thread_ts.as_deref(),
        Some(ts.as_str()),
        "the reply is in the mention's thread"
    );
    assert_eq!(host.stored(&installation, &message_id).await, 1);
    let stored = host.messages(&installation).await;
    let (thread, message) = stored
        .iter()
        .find(|(_, m)| m["channel_message_id"] == json!(message_id))
        .unwrap();
    assert_eq!(
        thread.as_deref(),
        Some(ts.as_str()),
        "a mention starts a thread session"
    );
    assert_eq!(
        message["body"], "@switchboard hello slack",
        "the mention as a name: {message}"
    );

    // Streaming: the reply was a placeholder edited by chat.update, throttled to ~1/s: the
    // echo agent's three parts made fewer stream updates than parts.
    let edits: Vec<_> = fake
        .updates()
        .into_iter()
        .filter(|u| u.ts == reply.ts)
        .collect();
    assert!(!edits.is_empty(), "the stream ended with chat.update");
    assert!(edits.len() - 1 < 3, "stream updates throttled: {edits:?}");
    assert!(edits.last().unwrap().text.contains("hello slack"));
    host.outbox_settled().await;

    // Redeliveries: a retry of the same body and the same message as `app_mention` (another
    // event id) are ACKed and stored nowhere; no second reply.
    let (status, _) = fake
        .post_raw(
            &url,
            "application/json",
            body.to_string().into_bytes(),
            Signature::Valid,
            Some(1),
        )
        .await;
    assert_eq!(status, 200);
    let mut mention = event.clone();
    mention["type"] = json!("app_mention");
    mention.as_object_mut().unwrap().remove("channel_type");
    let (status, _) = fake.post_event(&url, &fake.event_callback(&mention)).await;
    assert_eq!(status, 200);
    // A later message proves the host went past the duplicates before we count.
    let later = fake.message_event("D0ALICE", "im", "U0ALICE", "after the retries", None);
    assert_eq!(
        fake.post_event(&url, &fake.event_callback(&later)).await.0,
        200
    );
    eventually("the later DM's reply", async || {
        fake.posted()
            .into_iter()
            .find(|p| p.channel == "D0ALICE")
            .map(drop)
    })
    .await;
    assert_eq!(
        host.stored(&installation, &message_id).await,
        1,
        "stored once"
    );
    assert_eq!(
        fake.posted()
            .iter()
            .filter(|p| p.thread_ts.as_deref() == Some(&ts))
            .count(),
        1,
        "one reply"
    );
    host.outbox_settled().await;

    // Bad, stale and missing signatures: 401, nothing stored.
    for (signature, text) in [
        (Signature::Wrong, "forged"),
        (Signature::Stale, "replayed"),
        (Signature::Missing, "unsigned"),
    ] {
        let event = fake.message_event("D0ALICE", "im", "U0ALICE", text, None);
        let id = format!("D0ALICE:{}", event["ts"].as_str().unwrap());
        let bytes = fake.event_callback(&event).to_string().into_bytes();
        let (status, _) = fake
            .post_raw(&url, "application/json", bytes, signature, None)
            .await;
        assert_eq!(status, 401, "{signature:?}");
        assert_eq!(
            host.stored(&installation, &id).await,
            0,
            "{signature:?}: nothing stored"
        );
    }

    // A reply in the bot's thread, without a mention, addresses the bot and continues the
    // thread's session.
    let threaded = fake.message_event(
        "C0GENERAL",
        "channel",
        "U0ALICE",
        "and a follow-up",
        Some(&ts),
    );
    assert_eq!(
        fake.post_event(&url, &fake.event_callback(&threaded))
            .await
            .0,
        200
    );
    eventually("the follow-up's reply in the thread", async || {
        fake.posted()
            .into_iter()
            .find(|p| p.text.contains("follow-up") && p.thread_ts.as_deref() == Some(&ts))
            .map(drop)
    })
    .await;
    host.outbox_settled().await;
    // A channel message that does not address the bot is not stored.
    let chatter = fake.message_event("C0GENERAL", "channel", "U0ALICE", "just chatting", None);
    assert_eq!(
        fake.post_event(&url, &fake.event_callback(&chatter))
            .await
            .0,
        200
    );
    let chatter_id = format!("C0GENERAL:{}", chatter["ts"].as_str().unwrap());
    assert_eq!(host.stored(&installation, &chatter_id).await, 0);

    // A rate-limited send: the help notice is retried after Retry-After and posted once.
    let before = fake.posted().len();
    fake.rate_limit_next(1, 2);
    let help = fake.message_event("D0ALICE", "im", "U0ALICE", "/help", None);
    assert_eq!(
        fake.post_event(&url, &fake.event_callback(&help)).await.0,
        200
    );
    eventually("the help notice", async || {
        (fake.posted().len() > before).then_some(())
    })
    .await;
    host.outbox_settled().await;
    let sends: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postMessage")
        .collect();
    let limited = sends
        .iter()
        .position(|c| c.status == 429)
        .expect("one send was rate-limited");
    let retried = &sends[limited + 1];
    assert_eq!(retried.status, 200);
    assert!(
        retried.at.duration_since(sends[limited].at) >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    assert_eq!(fake.posted().len(), before + 1, "posted once");

    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_end_to_end() {
    init_logs();
    tokio::time::timeout(Duration::from_secs(240), async {
        for test_db in db::test_databases().await {
            socket_mode(&test_db.url).await;
            eprintln!("{}: Slack Socket Mode scenario passed", test_db.name);
        }
    })
    .await
    .expect("the Socket Mode scenario finishes in time");
}

async fn socket_mode(database_url: &str) {
    let fake = fake().await;
    fake.set_disconnect_grace(Duration::from_secs(5));
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let host = Host::start(&config(database_url, &key, &fake)).await;
    let installation = host.install("socket").await;
    eventually("the Socket Mode connection", async || {
        (fake.live_connections() == 1).then_some(())
    })
    .await;
    assert_eq!(fake.requests("apps.connections.open"), 1);

    // An event is ACKed only once it is durable: when the ACK is seen, the message is stored.
    let ts = fake.push_message("D0BOB", "im", "U0BOB", "hello socket", None);
    let ack = eventually("the ACK", async || fake.acks().into_iter().next()).await;
    assert_eq!(
        host.stored(&installation, &format!("D0BOB:{ts}")).await,
        1,
        "stored before the ACK"
    );
    assert_eq!(ack.connection, 1);
    eventually("the DM reply", async || {
        fake.posted()
            .into_iter()
            .find(|p| p.channel == "D0BOB" && p.text.contains("hello socket"))
            .map(drop)
    })
    .await;
    host.outbox_settled().await;

    // `disconnect`: the host connects again before the old socket closes; an envelope pushed
    // meanwhile goes to the new socket; nothing is lost or stored twice.
    fake.disconnect();
    let second = fake.push_message("D0BOB", "im", "U0BOB", "during the switch", None);
    eventually("the second connection", async || {
        (fake.connections().len() >= 2).then_some(())
    })
    .await;
    let acked = eventually("the second envelope's ACK", async || {
        let acks = fake.acks();
        (acks.len() >= 2).then(|| acks[1].clone())
    })
    .await;
    assert_eq!(acked.connection, 2, "delivered on the new socket");
    let log = fake.connections();
    assert!(
        log[0]
            .closed_at
            .is_none_or(|closed| closed > log[1].opened_at),
        "the new connection opened before the old one closed: {log:?}"
    );
    assert_eq!(
        host.stored(&installation, &format!("D0BOB:{second}")).await,
        1
    );
    assert_eq!(host.stored(&installation, &format!("D0BOB:{ts}")).await, 1);
    eventually("the old socket closed", async || {
        (fake.live_connections() == 1).then_some(())
    })
    .await;
    assert_eq!(fake.unacked(), 0, "nothing lost");
    assert_eq!(
        fake.requests("apps.connections.open"),
        2,
        "one fresh URL per connection"
    );
    host.outbox_settled().await;

    // A button press on the bot's reply is an action turn; a slash command a command turn.
    let reply = fake
        .posted()
        .into_iter()
        .find(|p| p.channel == "D0BOB")
        .unwrap();
    fake.push_block_action("D0BOB", "U0BOB", &reply.ts, "approve", "{\"id\":7}");
    fake.push_slash_command("D0BOB", "U0BOB", "/deploy", "prod now");
    let kinds = eventually("the action and command turns", async || {
        let kinds: Vec<String> = host
            .messages(&installation)
            .await
            .iter()
            .filter_map(|(_, m)| m["kind"].as_str().map(str::to_string))
            .collect();
        (kinds.iter().any(|k| k == "action") && kinds.iter().any(|k| k == "command"))
            .then_some(kinds)
    })
    .await;
    assert!(kinds.contains(&"action".to_string()), "{kinds:?}");
    eventually("every envelope ACKed", async || {
        (fake.unacked() == 0).then_some(())
    })
    .await;
    host.stop().await;
}
