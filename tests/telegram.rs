//! The bundled Telegram plugin end to end against a local Bot API (`tests/fake-telegram`): a
//! real `serve` over SQLite and PostgreSQL, installations added over the admin API, the echo
//! agent answering.
//!
//! - Polling: `on-install` learns the bot and deletes any webhook; a message is stored once,
//!   answered as a reply (a placeholder `sendMessage` streamed by edits) with a typing action;
//!   the offset Telegram sees passes an update only once it is durable; a restart on the same
//!   database neither ingests nor answers anything twice; a button press is answered and stored
//!   as an action turn.
//! - Group rules: a message that does not address the bot is not answered, a mention and a reply
//!   to the bot are, `/cmd@otherbot` is not.
//! - Webhooks: `on-install` registers the installation's own URL with the secret; an update
//!   with the secret is stored and answered in its forum topic; a wrong or missing secret is
//!   401 and stores nothing; authenticated garbage is 400; a callback query is answered in the
//!   webhook reply; webhook mode without a secret is refused at install.
//! - Delivery: a 429 is retried after its `retry_after` and delivered once; a 403 (bot
//!   blocked) fails the outbox row for good.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use fake_telegram::{BOT_ID, BOT_USERNAME, Chat, FakeTelegram, User};
use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "telegram-e2e-admin-token-0123456789abcdef";
const TOKEN: &str = "7000000001:AAE-fake_token";
const SECRET: &str = "hook_Secret-123";

struct Host {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config(database_url: &str, secret_key: &str, fake: &str) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(secret_key.to_string());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config
        .plugins
        .base_urls
        .insert("https://api.telegram.org".into(), fake.to_string());
    config.server.admin_token = Some(ADMIN.into());
    config.connections.poll_interval_ms = 100;
    config.delivery.first_backoff_ms = 50;
    // Long enough for a 1 s `retry_after` to be honoured as asked.
    config.delivery.max_backoff_ms = 2_000;
    config
}

impl Host {
    /// Starts a host whose public URL is its own listener (the URL `on-install` registers).
    async fn start(config: &Config) -> Host {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = config.clone();
        config.server.public_url = base.clone();
        let app = App::from_config(&config).await.expect("app builds");
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

    async fn install(&self, config: Value, secrets: Value) -> (u16, Value) {
        let body = json!({
            "channel": "telegram", "name": "tg", "agent": "echo", "debounce_ms": 50,
            "config": config, "secrets": secrets,
        });
        self.admin(reqwest::Method::POST, "/installations", Some(body))
            .await
    }

    /// The stored messages of `installation`'s sessions in `chat_id`: (role, kind, body).
    async fn messages(&self, installation: &str, chat_id: i64) -> Vec<(String, String, String)> {
        let (_, sessions) = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={installation}"),
                None,
            )
            .await;
        let chat = chat_id.to_string();
        sessions
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["session"]["chat_id"] == chat.as_str())
            .flat_map(|s| s["messages"].as_array().unwrap().clone())
            .map(|m| {
                let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                (text("role"), text("kind"), text("body"))
            })
            .collect()
    }

    async fn outbox(&self) -> Vec<Value> {
        let (_, rows) = self.admin(reqwest::Method::GET, "/outbox", None).await;
        rows.as_array().cloned().unwrap_or_default()
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

/// The bot's message in `chat_id` whose current text contains `needle`, once there is one.
async fn reply_containing(
    fake: &FakeTelegram,
    chat_id: i64,
    needle: &str,
) -> fake_telegram::SentMessage {
    eventually(
        &format!("a reply containing {needle:?} in {chat_id}"),
        async || {
            fake.sent_to(chat_id)
                .into_iter()
                .find(|m| m.text.contains(needle))
        },
    )
    .await
}

/// Runs `scenario` on SQLite, then on PostgreSQL, within a bound.
async fn run<F: Future<Output = ()>>(name: &'static str, scenario: impl Fn(String) -> F) {
    tokio::time::timeout(Duration::from_secs(240), async {
        for test_db in db::test_databases().await {
            scenario(test_db.url.clone()).await;
            eprintln!("{}: {name} passed", test_db.name);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} finishes in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_groups_callbacks_and_a_restart() {
    run("polling", polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_topics_and_their_perimeter() {
    run("webhooks", webhooks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried_and_blocked_chats_fail() {
    run("delivery failures", delivery_failures).await;
}

async fn polling(database_url: String) {
    let fake = FakeTelegram::start(TOKEN).await;
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let config = config(&database_url, &key, fake.base_url());
    let host = Host::start(&config).await;

    // on-install: getMe fills the required bot config; polling deletes any webhook.
    let (status, created) = host
        .install(json!({"connection": "poll"}), json!({"bot_token": TOKEN}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["config"]["bot_id"], BOT_ID.to_string(), "{created}");
    assert_eq!(created["config"]["bot_username"], BOT_USERNAME, "{created}");
    assert_eq!(fake.requests("deleteWebhook"), 1);
    assert_eq!(fake.webhook(), None);
    let installation = created["id"].as_str().unwrap().to_string();

    // A private message: stored once, answered as a reply, the offset passed it only once durable.
    let ann = User::new(111, "Ann");
    let dm = Chat::private(&ann);
    let first = fake.message(&dm, &ann, "hello telegram").push();
    eventually("the offset to pass the update", async || {
        (fake.last_offset() > Some(first)).then_some(())
    })
    .await;
    let stored = host.messages(&installation, ann.id).await;
    assert!(
        stored
            .iter()
            .any(|(role, _, body)| role == "user" && body == "hello telegram"),
        "the update was durable before Telegram was told to drop it: {stored:?}"
    );
    let reply = reply_containing(&fake, ann.id, "echo: hello telegram").await;
    assert_eq!(reply.parse_mode.as_deref(), Some("HTML"));
    assert!(
        reply.reply_to.is_some(),
        "a reply to the user's message: {reply:?}"
    );
    assert!(
        fake.chat_actions()
            .iter()
            .any(|a| a.chat_id == ann.id && a.action == "typing"),
        "typing was shown: {:?}",
        fake.chat_actions()
    );
    assert_eq!(fake.pending_updates(), 0, "confirmed");

    // Group rules, one message at a time (each answer waited for, so no two share a run).
    let bob = User::new(222, "Bob");
    let group = Chat::group(-4001, "Team");
    fake.message(&group, &bob, "lunch anyone?").push();
    fake.message(&group, &bob, "@switchboard_test_bot ping one")
        .push();
    let pinged = reply_containing(&fake, group.id, "ping one").await;
    fake.message(&group, &bob, "ping two")
        .reply_to(pinged.message_id)
        .push();
    reply_containing(&fake, group.id, "ping two").await;
    fake.message(&group, &bob, "/status@other_bot").push();
    fake.message(&group, &bob, "@switchboard_test_bot ping three")
        .push();
    reply_containing(&fake, group.id, "ping three").await;
    let group_sent = fake.sent_to(group.id);
    assert_eq!(
        group_sent.len(),
        3,
        "mention, reply-to-bot, mention: {group_sent:?}"
    );
    assert!(group_sent.iter().all(|m| !m.text.contains("lunch")));
    let stored = host.messages(&installation, group.id).await;
    let bodies: Vec<&str> = stored.iter().map(|(_, _, b)| b.as_str()).collect();
    assert!(
        !bodies
            .iter()
            .any(|b| b.contains("lunch") || b.contains("other_bot")),
        "unaddressed messages are not turns: {bodies:?}"
    );

    // A button press: answered (the spinner stops) and stored as an action turn, run once.
    let (_, query) = fake.push_callback_query(&dm, &ann, reply.message_id, "approve:deploy-1");
    eventually("the callback query answered", async || {
        fake.answered_callbacks().contains(&query).then_some(())
    })
    .await;
    reply_containing(&fake, ann.id, "[action approve] deploy-1").await;
    let stored = host.messages(&installation, ann.id).await;
    assert_eq!(
        stored
            .iter()
            .filter(|(_, kind, _)| kind == "action")
            .count(),
        1,
        "{stored:?}"
    );

    // A restart on the same database resumes from the durable offset: nothing twice.
    eventually("every outbox row delivered", async || {
        let rows = host.outbox().await;
        rows.iter().all(|r| r["state"] == "delivered").then_some(())
    })
    .await;
    let answered = fake.sent().len();
    let stored_before = host.messages(&installation, ann.id).await.len();
    let offset = fake.last_offset();
    host.stop().await;
    let polls_before = fake.requests("getUpdates");
    let host = Host::start(&config).await;
    eventually("polling to resume", async || {
        (fake.requests("getUpdates") > polls_before && fake.waiting_polls() > 0).then_some(())
    })
    .await;
    assert_eq!(fake.last_offset(), offset);
    assert_eq!(
        fake.latest_offset(),
        offset,
        "the restarted poller asks from the stored offset"
    );
    fake.message(&dm, &ann, "after the restart").push();
    reply_containing(&fake, ann.id, "echo: after the restart").await;
    assert_eq!(
        fake.sent().len(),
        answered + 1,
        "only the new message was answered"
    );
    let stored = host.messages(&installation, ann.id).await;
    assert_eq!(
        stored
            .iter()
            .filter(|(_, _, b)| b == "hello telegram")
            .count(),
        1
    );
    assert_eq!(
        stored.len(),
        stored_before + 2,
        "the new turn and its reply: {stored:?}"
    );
    host.stop().await;
}

async fn webhooks(database_url: String) {
    let fake = FakeTelegram::start(TOKEN).await;
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let config = config(&database_url, &key, fake.base_url());
    let host = Host::start(&config).await;

    // Webhook mode needs the secret it registers.
    let (status, refused) = host.install(json!({}), json!({"bot_token": TOKEN})).await;
    assert!((400..500).contains(&status), "{status} {refused}");
    assert!(refused.to_string().contains("webhook_secret"), "{refused}");
    assert_eq!(fake.webhook(), None);

    let (status, created) = host
        .install(
            json!({"connection": "webhook"}),
            json!({"bot_token": TOKEN, "webhook_secret": SECRET}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let installation = created["id"].as_str().unwrap().to_string();
    let url = format!("{}/hooks/telegram/{installation}", host.base);
    let webhook = fake.webhook().expect("setWebhook was called");
    assert_eq!(webhook.url, url);
    assert_eq!(webhook.secret_token.as_deref(), Some(SECRET));
    assert_eq!(
        webhook.allowed_updates,
        [
            "message",
            "edited_message",
            "callback_query",
            "my_chat_member"
        ]
    );

    // Telegram delivers a topic message with the secret: stored, answered in the topic.
    let ann = User::new(111, "Ann");
    let forum = Chat::forum(-100_777, "Forum HQ");
    fake.message(&forum, &ann, "@switchboard_test_bot how is the release?")
        .in_topic(77)
        .push();
    let reply = reply_containing(&fake, forum.id, "how is the release?").await;
    assert_eq!(reply.thread_id, Some(77), "in the topic: {reply:?}");
    assert!(fake.webhook_deliveries().iter().all(|a| a.status == 200));
    assert_eq!(fake.pending_updates(), 0);

    // A wrong or missing secret: 401, nothing stored.
    for secret in [Some("hook_Secret-124"), Some(""), None] {
        let forged = fake
            .message(&forum, &ann, "@switchboard_test_bot forged")
            .in_topic(77)
            .build();
        let answer = fake.post_webhook(&url, secret, &forged).await;
        assert_eq!(answer.status, 401, "{secret:?}: {answer:?}");
    }
    // Authenticated garbage: 400.
    let client = reqwest::Client::new();
    let garbage = client
        .post(&url)
        .header(fake_telegram::SECRET_HEADER, SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 400);
    let stored = host.messages(&installation, forum.id).await;
    assert!(
        stored.iter().all(|(_, _, b)| !b.contains("forged")),
        "{stored:?}"
    );

    // A button press by webhook is answered in the webhook reply, once the action is durable,
    // with the host's words (its "received" toast in the installation's locale).
    let press = fake.callback_query(&forum, &ann, reply.message_id, "approve:release");
    let query = press["callback_query"]["id"].as_str().unwrap().to_string();
    let mut numbered = press.clone();
    numbered["update_id"] = json!(9_000_001);
    let answer = fake.post_webhook(&url, Some(SECRET), &numbered).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({"method": "answerCallbackQuery", "callback_query_id": query,
               "text": "Received", "show_alert": false})
    );
    assert_eq!(fake.answered_callbacks(), vec![query]);
    let stored = host.messages(&installation, forum.id).await;
    assert!(
        stored.iter().any(|(_, kind, _)| kind == "action"),
        "{stored:?}"
    );

    // Revoking deletes the webhook.
    let (status, _) = host
        .admin(
            reqwest::Method::POST,
            &format!("/installations/{installation}/revoke"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(fake.webhook(), None);
    host.stop().await;
}

async fn delivery_failures(database_url: String) {
    let fake = FakeTelegram::start(TOKEN).await;
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let config = config(&database_url, &key, fake.base_url());
    let host = Host::start(&config).await;
    let (status, created) = host
        .install(json!({"connection": "poll"}), json!({"bot_token": TOKEN}))
        .await;
    assert_eq!(status, 201, "{created}");

    // A rate-limited notice is retried no sooner than Telegram asked, and posted once.
    let ann = User::new(111, "Ann");
    fake.fail_next("sendMessage", 1, 429, Some(1));
    fake.message(&Chat::private(&ann), &ann, "/help").push();
    eventually("the help notice delivered", async || {
        let rows = host.outbox().await;
        (!rows.is_empty() && rows.iter().all(|r| r["state"] == "delivered")).then_some(())
    })
    .await;
    let sent = fake.sent_to(ann.id);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let times = fake.request_times("sendMessage");
    assert_eq!(times.len(), 2, "refused once, then sent");
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "retried after retry_after: {:?}",
        times[1] - times[0]
    );

    // The bot was blocked: the notice fails for good, with the reason.
    let bob = User::new(222, "Bob");
    fake.block_bot(bob.id);
    fake.message(&Chat::private(&bob), &bob, "/help").push();
    let failed = eventually("the outbox row failed", async || {
        let (_, rows) = host
            .admin(reqwest::Method::GET, "/outbox?state=failed", None)
            .await;
        rows.as_array().and_then(|rows| rows.first().cloned())
    })
    .await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked"),
        "{failed}"
    );
    assert_eq!(fake.requests("sendMessage"), 3, "403 is not retried");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_refreshed_while_a_worker_run_is_active() {
    run("typing refresh", typing_refresh).await;
}

/// Telegram's chat action fades after 5 s: the manifest's `typing_refresh_ms` (4 s) makes the host
/// send `sendChatAction` again while a worker holds the run, and not after the reply.
async fn typing_refresh(database_url: String) {
    const WORKER_TOKEN: &str = "typing-worker-token-0123456789";
    let fake = FakeTelegram::start(TOKEN).await;
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let mut config = config(&database_url, &key, fake.base_url());
    config.agents.insert(
        "bot".into(),
        switchboard::agents::AgentConfig {
            kind: Some("worker".into()),
            token: Some(WORKER_TOKEN.into()),
            ..Default::default()
        },
    );
    let host = Host::start(&config).await;
    let body = json!({
        "channel": "telegram", "name": "tg", "agent": "bot", "debounce_ms": 50,
        "config": {"connection": "poll"}, "secrets": {"bot_token": TOKEN},
    });
    let (status, created) = host
        .admin(reqwest::Method::POST, "/installations", Some(body))
        .await;
    assert_eq!(status, 201, "{created}");

    // The worker is online (waiting in a claim) before the message arrives.
    let worker = reqwest::Client::new();
    let claim_url = format!("{}/api/agents/bot/runs/claim?wait_ms=20000", host.base);
    let claim = tokio::spawn({
        let worker = worker.clone();
        async move {
            worker
                .post(claim_url)
                .bearer_auth(WORKER_TOKEN)
                .header("x-switchboard-worker", "typing-test")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let ann = User::new(311, "Ann");
    let dm = Chat::private(&ann);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.message(&dm, &ann, "think about it slowly").push();
    let claim = tokio::time::timeout(Duration::from_secs(20), claim)
        .await
        .expect("the worker claims the run")
        .unwrap();
    let claim: Value = serde_json::from_str(&claim).expect("a claim, not a timeout");
    let typing = |fake: &FakeTelegram| {
        fake.chat_actions()
            .iter()
            .filter(|a| a.chat_id == ann.id && a.action == "typing")
            .count()
    };
    // While the worker holds the run (heartbeating), the indicator is sent again.
    eventually("a refreshed typing indicator", async || {
        let path = format!(
            "{}/api/agents/bot/runs/{}/{}/heartbeat",
            host.base,
            claim["session_id"].as_str().unwrap(),
            claim["run_id"].as_str().unwrap()
        );
        let _ = worker
            .post(path)
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await;
        (typing(&fake) >= 2).then_some(())
    })
    .await;
    let complete = format!(
        "{}/api/agents/bot/runs/{}/{}/complete",
        host.base,
        claim["session_id"].as_str().unwrap(),
        claim["run_id"].as_str().unwrap()
    );
    let response = worker
        .post(complete)
        .bearer_auth(WORKER_TOKEN)
        .header("content-type", "application/json")
        .body(json!({"reply": "done thinking"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    reply_containing(&fake, ann.id, "done thinking").await;
    host.stop().await;
}
