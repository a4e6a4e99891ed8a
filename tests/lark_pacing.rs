//! Issue 18, part 3: Lark outbound pacing and liveness, end to end — the real `App::serve`, the
//! bundled Lark plugin, a worker agent, and `tests/fake-lark` recording every REST request with
//! its arrival time. On SQLite and PostgreSQL:
//!
//! - a rate-limited send (HTTP 429, `x-ogw-ratelimit-reset: 1`) is retried once, after the
//!   reset, with the same `uuid`, and posts once;
//! - a burst of notices to one chat is spread at the manifest's 5 per second (counted per
//!   window from the fake's arrival records);
//! - a burst of messages in one session adds one typing reaction, not one per message;
//! - a long connection that goes silent (no pong, no frame) is closed after 3 ping intervals,
//!   re-dialled, and the reconnect is counted in `/metrics` with reason `idle`.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fake_lark::{Failure, FakeLark, FakeOptions, RestRequest, Route};
use serde_json::{Value, json};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{NewInstallation, SecretCipher};

const ADMIN: &str = "pacing-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "pacing-worker-token-0123456789abc";

struct World {
    base: String,
    client: reqwest::Client,
    fake: FakeLark,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A claimed run of the worker agent `team`.
struct Run {
    session: String,
    run: String,
}

fn config_for(database_url: &str, fake: &FakeLark) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(SecretCipher::generate_key_hex());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config.server.admin_token = Some(ADMIN.into());
    config
        .plugins
        .base_urls
        .insert("https://open.feishu.cn".into(), fake.origin().to_string());
    config.plugins.base_urls.insert(
        "wss://msg-frontier.feishu.cn".into(),
        fake.ws_origin().to_string(),
    );
    config.delivery.first_backoff_ms = 50;
    // Long enough for the 1 s `x-ogw-ratelimit-reset` not to be cut short by the cap.
    config.delivery.max_backoff_ms = 5_000;
    config.delivery.poll_interval_ms = 50;
    let c = &mut config.connections;
    c.poll_interval_ms = 100;
    c.backoff_initial_ms = 50;
    c.backoff_max_ms = 400;
    let team: AgentConfig = serde_json::from_value(
        json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000}),
    )
    .unwrap();
    config.agents.insert("team".into(), team);
    config
}

impl World {
    async fn start(database_url: &str, options: FakeOptions) -> World {
        let fake = FakeLark::start_with(options).await;
        World::serve(&config_for(database_url, &fake), fake).await
    }

    async fn serve(config: &Config, fake: FakeLark) -> World {
        let app = App::from_config(config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        World {
            base,
            client: reqwest::Client::new(),
            fake,
            stop: Some(stop),
            task,
        }
    }

    /// An open webhook installation `app_id` bound to the worker agent, replying whole.
    async fn installation(&self, app_id: &str) -> String {
        let response = self
            .client
            .post(format!("{}/api/installations", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "channel": "lark", "routing_key": app_id, "name": app_id,
                    "agent": "team", "debounce_ms": 50,
                    "config": {"app_id": app_id, "reply_mode": "final"},
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "pacing-secret",
                    },
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let created: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// A p2p text message in `chat_id` through the installation's webhook.
    async fn message(&self, id: &str, app_id: &str, chat_id: &str, message_id: &str, text: &str) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        event["header"]["app_id"] = json!(app_id);
        event["event"]["message"]["chat_id"] = json!(chat_id);
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&event).unwrap(), [7; 16]);
        let mut request = self
            .client
            .post(format!("{}/hooks/lark/{id}", self.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }

    /// The worker claims the next run (waiting up to 10 s for it).
    async fn claim(&self) -> Run {
        for _ in 0..20 {
            let response = self
                .client
                .post(format!(
                    "{}/api/agents/team/runs/claim?wait_ms=500",
                    self.base
                ))
                .bearer_auth(WORKER_TOKEN)
                .header("x-switchboard-worker", "pacing-worker")
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                let claim: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                if claim["kind"] == "compact" {
                    continue;
                }
                return Run {
                    session: claim["session_id"].as_str().unwrap().to_string(),
                    run: claim["run_id"].as_str().unwrap().to_string(),
                };
            }
        }
        panic!("no run to claim");
    }

    async fn complete(&self, run: &Run, reply: &str) {
        let status = self
            .client
            .post(format!(
                "{}/api/agents/team/runs/{}/{}/complete",
                self.base, run.session, run.run
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body(json!({ "reply": reply }).to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// Waits (up to `limit`) until `check` finds what it looks for.
async fn eventually_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(30), check).await
}

fn is_send(request: &RestRequest) -> bool {
    request.method == "POST"
        && request.uri.starts_with("/open-apis/im/v1/messages")
        && (request.uri.contains("receive_id_type=") || request.uri.ends_with("/reply"))
}

fn is_reaction(request: &RestRequest, method: &str) -> bool {
    request.method == method && request.uri.contains("/reactions")
}

/// The arrival times of the sends the fake recorded, in order.
fn send_arrivals(fake: &FakeLark) -> Vec<Duration> {
    fake.request_arrivals()
        .into_iter()
        .filter(|(_, r)| is_send(r))
        .map(|(at, _)| at)
        .collect()
}

/// The most arrivals in any window of `window` starting at an arrival.
fn most_in_a_window(arrivals: &[Duration], window: Duration) -> usize {
    arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|at| **at >= *start && **at < *start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_is_retried_once_after_the_reset_with_the_same_uuid() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url, FakeOptions::default()).await;
        let id = world.installation("cli_pace1").await;
        // HTTP 429, code 99991400, `x-ogw-ratelimit-reset: 1`.
        world.fake.fail_next(Route::Send, Failure::RateLimit, 1);
        world
            .message(&id, "cli_pace1", "oc_pace1", "om_p1", "hi")
            .await;
        let run = world.claim().await;
        world.complete(&run, "plain answer").await;
        let posted = eventually("the retried send posted", || {
            let posted = world.fake.posted_messages();
            (!posted.is_empty()).then_some(posted)
        })
        .await;
        assert_eq!(posted.len(), 1, "{name}: posted once");
        let sends = world.fake.sent_messages();
        assert_eq!(sends.len(), 2, "{name}: refused once, then sent once");
        assert_eq!(sends[0].body["uuid"], sends[1].body["uuid"], "{name}");
        assert_eq!(
            sends[0].body["uuid"],
            format!("reply-{}-0", run.run),
            "{name}"
        );
        // The outbox waited out the reset (1 s), not its 50 ms first backoff.
        let arrivals = send_arrivals(&world.fake);
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= Duration::from_millis(950),
            "{name}: retried after {waited:?}"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notices_to_one_chat_is_spread_at_the_declared_rate() {
    const BURST: usize = 15;
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url, FakeOptions::default()).await;
        let id = world.installation("cli_pace2").await;
        // Every `/help` is answered at once with a notice to the same chat.
        for i in 0..BURST {
            world
                .message(&id, "cli_pace2", "oc_pace2", &format!("om_h{i}"), "/help")
                .await;
        }
        eventually("every help notice posted", || {
            (world.fake.posted_messages().len() >= BURST).then_some(())
        })
        .await;
        let arrivals = send_arrivals(&world.fake);
        assert_eq!(arrivals.len(), BURST, "{name}");
        // Lark declares 5 per second per chat: sends are at least 200 ms apart when they leave,
        // so no one-second window holds more than 5 (6 allowed for transit jitter) and the
        // burst takes about (15 - 1) × 200 ms = 2.8 s (2 s asserted).
        let most = most_in_a_window(&arrivals, Duration::from_secs(1));
        assert!(
            most <= 6,
            "{name}: {most} sends in one second: {arrivals:?}"
        );
        let span = arrivals[BURST - 1] - arrivals[0];
        assert!(
            span >= Duration::from_secs(2),
            "{name}: burst took {span:?}"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_messages_in_one_session_adds_one_typing_reaction() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url, FakeOptions::default()).await;
        let id = world.installation("cli_pace3").await;
        for i in 0..5 {
            world
                .message(&id, "cli_pace3", "oc_pace3", &format!("om_t{i}"), "hello")
                .await;
        }
        eventually("the typing reaction added", || {
            world
                .fake
                .requests()
                .iter()
                .any(|r| is_reaction(r, "POST"))
                .then_some(())
        })
        .await;
        // Absence needs a wait: long enough for the other four messages' typing changes to
        // have been made (they were dispatched before the webhook answered).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let requests = world.fake.requests();
        let added = requests.iter().filter(|r| is_reaction(r, "POST")).count();
        let removed = requests.iter().filter(|r| is_reaction(r, "DELETE")).count();
        assert_eq!(
            (added, removed),
            (1, 0),
            "{name}: one reaction, never moved"
        );
        // The reply takes it off.
        let run = world.claim().await;
        world.complete(&run, "answer").await;
        eventually("the typing reaction removed", || {
            world
                .fake
                .requests()
                .iter()
                .any(|r| is_reaction(r, "DELETE"))
                .then_some(())
        })
        .await;
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_redialled_after_three_ping_intervals_and_counted() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let fake = FakeLark::start_with(FakeOptions {
            ping_interval_s: 1,
            ..FakeOptions::default()
        })
        .await;
        let config = config_for(&test_db.url, &fake);
        let installations = test_db.db.installations(
            SecretCipher::from_key_str(config.secrets.key.as_deref().unwrap()).unwrap(),
        );
        installations
            .create(
                &NewInstallation {
                    channel: "lark".into(),
                    routing_key: lark::APP_ID.into(),
                    name: "ws".into(),
                    config: BTreeMap::from([
                        ("connection".into(), "websocket".into()),
                        ("app_id".into(), lark::APP_ID.into()),
                        ("bot_open_id".into(), lark::BOT_OPEN_ID.into()),
                    ]),
                    secrets: BTreeMap::from([("app_secret".into(), "s3cret".into())]),
                    agent: "team".into(),
                    debounce_ms: 50,
                    ..Default::default()
                },
                1_731_300_000_000,
            )
            .await
            .unwrap();
        let world = World::serve(&config, fake).await;
        eventually("the first connection and its pongs", || {
            (world.fake.live_connections() == 1 && world.fake.pings() >= 2).then_some(())
        })
        .await;
        assert_eq!(world.fake.connections(), 1, "{name}");
        // The peer goes silent: no pong, no frame. After 3 ping intervals (3 s; the old rule,
        // 2 intervals + 10 s, is 12 s) the host drops the socket and dials again.
        world.fake.set_silent(true);
        let silent_since = tokio::time::Instant::now();
        eventually_within("the re-dial", Duration::from_secs(11), || {
            (world.fake.connections() >= 2).then_some(())
        })
        .await;
        let after = silent_since.elapsed();
        assert!(
            after >= Duration::from_secs(2),
            "{name}: re-dialled {after:?} after the silence began"
        );
        world.fake.set_silent(false);
        let metrics = world.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l
                    .starts_with("switchboard_reconnects_total{channel=\"lark\",reason=\"idle\"}")),
            "{name}: {metrics}"
        );
        world.stop().await;
    }
}
