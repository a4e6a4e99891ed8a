//! Issue 18, part 1: Lark replies streamed into CardKit cards, end to end — the real
//! `App::serve`, the bundled Lark plugin, a worker agent streaming parts through the worker API,
//! and `tests/fake-lark` standing in for the Open Platform (it checks CardKit's sequence rule and
//! records every card update with its arrival time). On SQLite and PostgreSQL:
//!
//! - a streamed reply is one card: ordered updates (sequences increasing, at most 10 a second),
//!   then closed with the whole reply;
//! - a 200 KB streamed reply continues in follow-up cards, in order, with code fences closed and
//!   reopened and no character cut; with `reply_mode = final` it arrives as ordered messages;
//! - an interrupted run and a failed run both leave a closed card with the host's words;
//! - a run whose worker vanished (no heartbeat) is recovered as stale: its card is closed with
//!   the host's words and its typing reaction removed (issue 20);
//! - card creation failing falls back to one plain reply;
//! - retried sends and a retried card end carry the same `uuid` and post once;
//! - `reply_mode = final` sends one plain reply and no card; a bad `reply_mode` is refused.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use fake_lark::{Card, CardOp, Failure, FakeLark, RestRequest, Route};
use serde_json::{Value, json};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::domain::notice::{Notice, NoticeKind, NoticeTexts};

const ADMIN: &str = "streaming-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "streaming-worker-token-0123456789";

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

impl World {
    async fn start(database_url: &str) -> World {
        World::start_with(database_url, |_| {}).await
    }

    /// [`World::start`] with `adjust` applied to the host's config.
    async fn start_with(database_url: &str, adjust: impl FnOnce(&mut Config)) -> World {
        let fake = FakeLark::start().await;
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config
            .plugins
            .base_urls
            .insert("https://open.feishu.cn".into(), fake.origin().to_string());
        config.delivery.first_backoff_ms = 50;
        config.delivery.max_backoff_ms = 200;
        config.delivery.poll_interval_ms = 50;
        let team: AgentConfig = serde_json::from_value(
            json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000}),
        )
        .unwrap();
        config.agents.insert("team".into(), team);
        adjust(&mut config);
        let app = App::from_config(&config).await.expect("app builds");
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

    /// An open installation `app_id` bound to the worker agent, with extra `config`.
    async fn installation(&self, app_id: &str, config: Value) -> String {
        // Lark's on-install would pick zh_cn (a Feishu app): these tests read English.
        let mut values = json!({"app_id": app_id, "locale": "en"});
        values
            .as_object_mut()
            .unwrap()
            .extend(config.as_object().unwrap().clone());
        let (status, created) = self
            .admin(
                reqwest::Method::POST,
                "/installations",
                Some(json!({
                    "channel": "lark", "routing_key": app_id, "name": app_id,
                    "agent": "team", "debounce_ms": 50,
                    "config": values,
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "streaming-secret",
                    },
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// A p2p text message from `chat_id` through the installation's webhook.
    async fn message(&self, id: &str, app_id: &str, chat_id: &str, message_id: &str, text: &str) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        event["header"]["app_id"] = json!(app_id);
        event["event"]["message"]["chat_id"] = json!(chat_id);
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&event).unwrap(), [5; 16]);
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
                .header("x-switchboard-worker", "streaming-worker")
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

    async fn run_call(&self, run: &Run, action: &str, body: Value) -> u16 {
        self.client
            .post(format!(
                "{}/api/agents/team/runs/{}/{}/{action}",
                self.base, run.session, run.run
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Posts `parts` as streamed parts, `gap` apart.
    async fn stream(&self, run: &Run, parts: &[String], gap: Duration) {
        for part in parts {
            assert_eq!(
                self.run_call(run, "parts", json!({"text": part})).await,
                200
            );
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
    }

    /// Waits until a card entity exists whose message was sent.
    async fn first_card(&self) -> Card {
        eventually("a card sent", || {
            self.fake
                .cards()
                .into_iter()
                .find(|c| c.message_id.is_some())
        })
        .await
    }

    /// Waits until `count` cards exist and every one is closed.
    async fn closed_cards(&self, count: usize) -> Vec<Card> {
        eventually("the cards closed", || {
            let cards = self.fake.cards();
            (cards.len() >= count && cards.iter().all(|c| !c.streaming)).then_some(cards)
        })
        .await
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// Waits (up to 20 s) until `check` finds what it looks for.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(found) = check() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The card ids the posted messages show, in posting order.
fn posted_card_ids(posted: &[RestRequest]) -> Vec<String> {
    posted
        .iter()
        .filter(|r| r.body["msg_type"] == "interactive")
        .filter_map(|r| serde_json::from_str::<Value>(r.body["content"].as_str()?).ok())
        .filter(|content| content["type"] == "card")
        .map(|content| content["data"]["card_id"].as_str().unwrap().to_string())
        .collect()
}

/// The text messages posted, in order.
fn posted_texts(posted: &[RestRequest]) -> Vec<String> {
    posted
        .iter()
        .filter(|r| r.body["msg_type"] == "text")
        .map(|r| {
            let content: Value = serde_json::from_str(r.body["content"].as_str().unwrap()).unwrap();
            content["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// `count` words as streamed parts.
fn word_parts(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("word{i} ")).collect()
}

/// Checks what a closed card recorded: accepted sequences increasing, none refused, at most 10
/// updates within any second, the last content update `text`, a summary.
fn assert_closed_card(card: &Card, text: &str, name: &str) {
    assert!(!card.streaming, "{name}: closed");
    assert!(card.message_id.is_some(), "{name}: sent");
    assert!(card.sequences_increase(), "{name}: {:?}", card.updates);
    assert_eq!(card.refused_sequences, 0, "{name}");
    assert!(
        card.max_updates_per_second() <= 10,
        "{name}: {} updates within a second",
        card.max_updates_per_second()
    );
    assert_eq!(card.content, text, "{name}: the card shows the whole text");
    let last = card.updates.last().unwrap();
    assert_eq!(
        last.op,
        CardOp::Settings,
        "{name}: closing is the last update"
    );
    assert!(card.summary.is_some(), "{name}");
    assert_eq!(card.created["config"]["streaming_mode"], true, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_is_one_card_updated_in_order_and_closed() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let id = world.installation("cli_stream1", json!({})).await;
        world
            .message(&id, "cli_stream1", "oc_stream1", "om_s1", "tell me a story")
            .await;
        let run = world.claim().await;
        // 60 parts over about 1.5 s: more than the platform's 10 updates a second if each
        // part were shown.
        let parts = word_parts(60);
        world.stream(&run, &parts, Duration::from_millis(25)).await;
        let reply = parts.concat();
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let cards = world.closed_cards(1).await;
        assert_eq!(cards.len(), 1, "{name}: one card");
        let card = &cards[0];
        assert_closed_card(card, &reply, name);
        let contents = card
            .updates
            .iter()
            .filter(|u| u.op == CardOp::Content)
            .count();
        assert!(
            (1..parts.len()).contains(&contents),
            "{name}: {contents} content updates for {} parts (throttled)",
            parts.len()
        );
        // Each content update extends the previous one: the text only grows.
        let texts: Vec<&str> = card
            .updates
            .iter()
            .filter_map(|u| u.content.as_deref())
            .collect();
        assert!(
            texts.windows(2).all(|w| w[1].starts_with(w[0])),
            "{name}: {texts:?}"
        );
        // The card was the reply: one message, interactive, naming the card, with the
        // reply's uuid namespace; no plain reply beside it.
        let posted = world.fake.posted_messages();
        assert_eq!(posted_card_ids(&posted), [card.card_id.as_str()], "{name}");
        assert_eq!(posted.len(), 1, "{name}: {posted:?}");
        assert_eq!(
            posted[0].body["uuid"],
            format!("reply-{}-c0", run.run),
            "{name}"
        );
        world.stop().await;
    }
}

/// The text a sequence of cards (or messages) shows without the fences the split added.
fn rejoin(parts: &[String]) -> String {
    let mut joined = String::new();
    for (index, part) in parts.iter().enumerate() {
        let mut part = part.as_str();
        if index > 0
            && let Some(rest) = part.strip_prefix("```rust\n")
        {
            part = rest;
        }
        if index + 1 < parts.len()
            && let Some(rest) = part.strip_suffix("```\n")
        {
            part = rest;
        }
        joined.push_str(part);
    }
    joined
}

/// A 200 KB markdown reply: a code block with multibyte characters, then prose.
fn long_reply() -> String {
    let mut text = String::from("# Report\n```rust\n");
    let mut i = 0;
    while text.len() < 200 * 1024 {
        text.push_str(&format!("let v{i} = \"值{i} — ✓\";\n"));
        i += 1;
    }
    text.push_str("```\nThe end: 完.\n");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_reply_arrives_as_ordered_parts_streamed_or_final() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let reply = long_reply();

        // Streamed: follow-up cards, in order, each closed.
        let id = world.installation("cli_stream2", json!({})).await;
        world
            .message(&id, "cli_stream2", "oc_stream2", "om_l1", "the long report")
            .await;
        let run = world.claim().await;
        let mut parts = Vec::new();
        let mut at = 0;
        while at < reply.len() {
            let mut end = (at + 10_000).min(reply.len());
            while !reply.is_char_boundary(end) {
                end += 1;
            }
            parts.push(reply[at..end].to_string());
            at = end;
        }
        world.stream(&run, &parts, Duration::from_millis(20)).await;
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let cards = eventually("every card closed", || {
            let cards = world.fake.cards();
            let shown: usize = cards.iter().map(|c| c.content.len()).sum();
            (shown >= reply.len() && cards.iter().all(|c| !c.streaming)).then_some(cards)
        })
        .await;
        assert!(cards.len() >= 7, "{name}: {} cards", cards.len());
        let posted = world.fake.posted_messages();
        let ids: Vec<String> = cards.iter().map(|c| c.card_id.clone()).collect();
        assert_eq!(
            posted_card_ids(&posted),
            ids,
            "{name}: sent in creation order"
        );
        for (index, card) in cards.iter().enumerate() {
            assert!(card.sequences_increase(), "{name}: card {index}");
            assert_eq!(card.refused_sequences, 0, "{name}: card {index}");
            assert!(card.max_updates_per_second() <= 10, "{name}: card {index}");
            assert!(card.content.len() <= 30_000, "{name}: card {index}");
            let fences = card
                .content
                .lines()
                .filter(|l| l.starts_with("```"))
                .count();
            assert_eq!(fences % 2, 0, "{name}: card {index} balances its fences");
            assert_eq!(
                posted[index].body["uuid"],
                format!("reply-{}-c{index}", run.run),
                "{name}"
            );
        }
        let shown: Vec<String> = cards.iter().map(|c| c.content.clone()).collect();
        assert_eq!(rejoin(&shown), reply, "{name}: the whole reply, in order");

        // Final: ordered messages (markdown: cards of at most 30 KB each, sent whole).
        let id = world
            .installation("cli_stream3", json!({"reply_mode": "final"}))
            .await;
        world
            .message(&id, "cli_stream3", "oc_stream3", "om_l2", "again, whole")
            .await;
        let before = world.fake.posted_messages().len();
        let run = world.claim().await;
        world.stream(&run, &parts[..2], Duration::ZERO).await;
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let messages = eventually("the whole reply posted", || {
            let posted = world.fake.posted_messages()[before..].to_vec();
            let texts: Vec<String> = posted
                .iter()
                .map(|r| {
                    let card: Value =
                        serde_json::from_str(r.body["content"].as_str().unwrap()).unwrap();
                    card["body"]["elements"][0]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            (texts.concat().len() >= reply.len()).then_some((posted, texts))
        })
        .await;
        let (posted, texts) = messages;
        assert!(posted.len() >= 7, "{name}: {} messages", posted.len());
        for (index, request) in posted.iter().enumerate() {
            assert!(
                serde_json::to_vec(&request.body).unwrap().len() <= 30_000,
                "{name}: message {index} within the card limit"
            );
            assert_eq!(
                request.body["uuid"],
                format!("reply-{}-{index}", run.run),
                "{name}"
            );
        }
        assert_eq!(rejoin(&texts), reply, "{name}: the whole reply, in order");
        assert_eq!(
            world.fake.cards().len(),
            cards.len(),
            "{name}: no card entity"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_and_failed_runs_leave_closed_cards() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let id = world.installation("cli_stream4", json!({})).await;

        // Interrupted by the operator while streaming.
        world
            .message(
                &id,
                "cli_stream4",
                "oc_stream4",
                "om_i1",
                "a long answer please",
            )
            .await;
        let run = world.claim().await;
        world
            .stream(&run, &word_parts(5), Duration::from_millis(20))
            .await;
        world.first_card().await;
        let (status, body) = world
            .admin(
                reqwest::Method::POST,
                &format!("/sessions/{}/interrupt", run.session),
                None,
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["interrupted_run"], run.run, "{name}");
        let cards = world.closed_cards(1).await;
        let words = NoticeTexts::default().stream_interrupted("en");
        let expected = format!("{}\n\n{words}", word_parts(5).concat().trim_end());
        assert_closed_card(&cards[0], &expected, name);

        // Failed by the worker while streaming: the card closes with the run-error words
        // (with the reference), and no separate error card is sent.
        world
            .message(&id, "cli_stream4", "oc_stream4", "om_i2", "now fail")
            .await;
        let run = world.claim().await;
        world
            .stream(&run, &word_parts(3), Duration::from_millis(20))
            .await;
        eventually("a second card", || {
            (world.fake.cards().len() == 2).then_some(())
        })
        .await;
        assert_eq!(
            world
                .run_call(
                    &run,
                    "fail",
                    json!({"error": "tool crashed: secret detail"})
                )
                .await,
            200,
            "{name}"
        );
        let cards = world.closed_cards(2).await;
        let mut notice = Notice::new(NoticeKind::RunError);
        notice.reference = Some(run.run[..8].to_string());
        let error_words = NoticeTexts::default().render(&notice, "en");
        let expected = format!("{}\n\n{error_words}", word_parts(3).concat().trim_end());
        assert_closed_card(&cards[1], &expected, name);
        assert!(!cards[1].content.contains("secret detail"), "{name}");
        let posted = world.fake.posted_messages();
        assert_eq!(posted.len(), 2, "{name}: only the two cards: {posted:?}");
        assert_eq!(posted_card_ids(&posted).len(), 2, "{name}");
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_worker_s_run_is_recovered_with_its_card_closed_and_typing_cleared() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start_with(&test_db.url, |config| {
            config.runs.stale_after_ms = 1_500;
        })
        .await;
        let id = world.installation("cli_stream7", json!({})).await;
        world
            .message(&id, "cli_stream7", "oc_stream7", "om_v1", "answer slowly")
            .await;
        let typing_on = eventually("the typing reaction", || {
            world
                .fake
                .requests()
                .into_iter()
                .find(|r| r.method == "POST" && r.uri.contains("/om_v1/reactions"))
        })
        .await;
        assert!(typing_on.body["reaction_type"].is_object(), "{name}");
        // The worker claims, streams a little, and is never heard of again.
        let run = world.claim().await;
        world
            .stream(&run, &word_parts(4), Duration::from_millis(20))
            .await;
        world.first_card().await;

        let cards = world.closed_cards(1).await;
        let words = NoticeTexts::default().stream_interrupted("en");
        let expected = format!("{}\n\n{words}", word_parts(4).concat().trim_end());
        assert_closed_card(&cards[0], &expected, name);
        eventually("the typing reaction removed", || {
            world
                .fake
                .requests()
                .into_iter()
                .find(|r| r.method == "DELETE" && r.uri.contains("/om_v1/reactions/"))
        })
        .await;
        // The run went back to pending: a worker that comes back gets it again.
        let again = world.claim().await;
        assert_eq!(again.session, run.session, "{name}");
        assert_eq!(
            world.run_call(&run, "heartbeat", json!({})).await,
            409,
            "{name}: the vanished worker's run is no longer its own"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_creation_failing_falls_back_to_a_plain_reply() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let id = world.installation("cli_stream5", json!({})).await;
        world.fake.fail_next(
            Route::CardCreate,
            Failure::Code {
                status: 400,
                code: 99_991_672,
                msg: "Access denied. One of the following scopes is required: [cardkit:card:write]"
                    .into(),
            },
            1,
        );
        world
            .message(&id, "cli_stream5", "oc_stream5", "om_f1", "hello")
            .await;
        let run = world.claim().await;
        let parts = word_parts(8);
        world.stream(&run, &parts, Duration::from_millis(10)).await;
        let reply = parts.concat();
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let posted = eventually("the plain reply", || {
            let posted = world.fake.posted_messages();
            (!posted.is_empty()).then_some(posted)
        })
        .await;
        assert_eq!(posted_texts(&posted), [reply.as_str()], "{name}");
        assert_eq!(
            posted[0].body["uuid"],
            format!("reply-{}-0", run.run),
            "{name}"
        );
        assert!(world.fake.cards().is_empty(), "{name}: no card");
        let creates = world
            .fake
            .requests()
            .iter()
            .filter(|r| r.uri == "/open-apis/cardkit/v1/cards")
            .count();
        assert_eq!(creates, 1, "{name}: tried once");
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_carry_the_same_uuid_and_post_once() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;

        // A plain reply whose first send fails with a 5xx: sent again with the same uuid.
        let id = world
            .installation("cli_stream6", json!({"reply_mode": "final"}))
            .await;
        world.fake.fail_next(Route::Send, Failure::ServerError, 1);
        world
            .message(&id, "cli_stream6", "oc_stream6", "om_r1", "hi")
            .await;
        let run = world.claim().await;
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": "plain answer"}))
                .await,
            200,
            "{name}"
        );
        let sends = eventually("the retried send", || {
            let sends = world.fake.sent_messages();
            (sends.len() >= 2 && !world.fake.posted_messages().is_empty()).then_some(sends)
        })
        .await;
        assert_eq!(sends[0].body["uuid"], sends[1].body["uuid"], "{name}");
        assert_eq!(
            sends[0].body["uuid"],
            format!("reply-{}-0", run.run),
            "{name}"
        );
        assert_eq!(world.fake.posted_messages().len(), 1, "{name}: posted once");

        // A streamed reply whose closing is rate limited once: the outbox ends it again; the
        // card is closed once, its sequences still increasing, nothing posted twice.
        let id = world.installation("cli_stream7", json!({})).await;
        world
            .message(&id, "cli_stream7", "oc_stream7", "om_r2", "stream it")
            .await;
        let run = world.claim().await;
        world
            .stream(&run, &word_parts(4), Duration::from_millis(10))
            .await;
        world.first_card().await;
        world
            .fake
            .fail_next(Route::CardSettings, Failure::RateLimit, 1);
        let reply = word_parts(4).concat();
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let cards = world.closed_cards(1).await;
        assert_closed_card(&cards[0], &reply, name);
        let closes = cards[0]
            .updates
            .iter()
            .filter(|u| u.op == CardOp::Settings)
            .count();
        assert_eq!(closes, 1, "{name}");
        let settings_calls = world
            .fake
            .requests()
            .iter()
            .filter(|r| r.uri.ends_with("/settings"))
            .count();
        assert_eq!(settings_calls, 2, "{name}: refused once, then closed");
        assert_eq!(world.fake.posted_messages().len(), 2, "{name}");
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_mode_final_sends_one_plain_reply_and_a_bad_mode_is_refused() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let (status, body) = world
            .admin(
                reqwest::Method::POST,
                "/installations",
                Some(json!({
                    "channel": "lark", "routing_key": "cli_stream8", "agent": "team",
                    "config": {"app_id": "cli_stream8", "reply_mode": "sometimes"},
                    "secrets": {"app_secret": "s"},
                })),
            )
            .await;
        assert_eq!(status, 422, "{name}: {body}");
        assert!(body.to_string().contains("reply_mode"), "{name}: {body}");

        let id = world
            .installation("cli_stream9", json!({"reply_mode": "final"}))
            .await;
        world
            .message(&id, "cli_stream9", "oc_stream9", "om_m1", "hello")
            .await;
        let run = world.claim().await;
        let parts = word_parts(10);
        world.stream(&run, &parts, Duration::from_millis(10)).await;
        let reply = parts.concat();
        assert_eq!(
            world
                .run_call(&run, "complete", json!({"reply": reply}))
                .await,
            200,
            "{name}"
        );
        let posted = eventually("the reply", || {
            let posted = world.fake.posted_messages();
            (!posted.is_empty()).then_some(posted)
        })
        .await;
        assert_eq!(posted_texts(&posted), [reply], "{name}");
        assert!(world.fake.cards().is_empty(), "{name}: no card");
        assert!(
            !world
                .fake
                .requests()
                .iter()
                .any(|r| r.uri.starts_with("/open-apis/cardkit")),
            "{name}: no CardKit call"
        );
        world.stop().await;
    }
}
