//! The Lark plugin's `enricher` export through the host runtime: the real wasm plugin, its
//! tenant-token cache in the host kv store (SQLite and PostgreSQL), and a local fake Lark REST
//! server (axum on 127.0.0.1:0) that `https://open.feishu.cn` is redirected to. Covers the quoted
//! parent, merge_forward transcripts (cap and nesting), recent group context, speaker names, and
//! every failure mode degrading to its placeholder while the body is still returned
//! (reference §F, §S, §6.5).

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;
#[path = "support/time.rs"]
mod time;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use switchboard::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::{InstallationContext, KvBackend};
use switchboard::runtime::enricher::{Budget, Enrichment};
use switchboard::runtime::types::{Chat, ChatKind, InboundMessage, Participant};
use switchboard::runtime::{Plugin, Runtime, RuntimeSettings};
use time::ManualClock;

const APP_ID: &str = "cli_a5f3c2e1d4b6a789";
const APP_SECRET: &str = "s3cret";
const CHAT: &str = "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081";
const TRIGGER: &str = "om_trigger_0001";
const PARENT: &str = "om_parent_0001";
const CHARLIE: &str = "ou_charlie";
const ALICE: &str = "ou_alice";
const BOB: &str = "ou_bob";
const NOW: i64 = 1_731_300_000_000;
const TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";
const LIST: &str = "/open-apis/im/v1/messages?container_id_type";
const USERS: &str = "/open-apis/contact/v3/users/batch";

const QUOTED_ERROR: &str = "<quoted_message message_id=\"om_parent_0001\" type=\"error\">[unable to fetch]</quoted_message>";
const TEMPORARY_NOTE: &str =
    "[Recent Lark context temporarily unavailable; continuing with the latest message.]";

/// A scripted answer.
#[derive(Clone)]
enum Answer {
    /// Status and raw body.
    Body(u16, String),
    /// Never answers (the plugin's request times out).
    Stall,
}

/// The fake's state: what it saw and the one-shot scripted answers.
#[derive(Default)]
struct FakeState {
    /// `METHOD path?query` and the authorization header of every request.
    seen: Mutex<Vec<(String, Option<String>)>>,
    /// (fragment, answer): the first entry whose fragment the request's path and query
    /// contains answers it, once.
    script: Mutex<Vec<(String, Answer)>>,
    tokens: AtomicUsize,
}

struct FakeLark {
    state: Arc<FakeState>,
    port: u16,
}

impl FakeLark {
    async fn start() -> FakeLark {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeLark { state, port }
    }

    fn script(&self, fragment: &str, answer: Answer) {
        self.state
            .script
            .lock()
            .unwrap()
            .push((fragment.to_string(), answer));
    }

    fn json(&self, fragment: &str, status: u16, body: Value) {
        self.script(fragment, Answer::Body(status, body.to_string()));
    }

    fn items(&self, fragment: &str, items: Vec<Value>) {
        self.json(
            fragment,
            200,
            json!({"code": 0, "msg": "success", "data": {"items": items, "has_more": false}}),
        );
    }

    fn users(&self, names: &[(&str, &str)]) {
        let items: Vec<Value> = names
            .iter()
            .map(|(id, name)| json!({"open_id": id, "name": name}))
            .collect();
        self.json(
            USERS,
            200,
            json!({"code": 0, "msg": "success", "data": {"items": items}}),
        );
    }

    fn calls(&self) -> Vec<String> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(call, _)| call.clone())
            .collect()
    }

    fn count(&self, fragment: &str) -> usize {
        self.calls()
            .iter()
            .filter(|call| call.contains(fragment))
            .count()
    }

    fn authorizations(&self) -> Vec<Option<String>> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, auth)| auth.clone())
            .collect()
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    state
        .seen
        .lock()
        .unwrap()
        .push((format!("{method} {path_and_query}"), authorization));
    let scripted = {
        let mut script = state.script.lock().unwrap();
        script
            .iter()
            .position(|(fragment, _)| path_and_query.contains(fragment.as_str()))
            .map(|at| script.remove(at).1)
    };
    match scripted {
        Some(Answer::Body(status, body)) => (StatusCode::from_u16(status).unwrap(), body),
        Some(Answer::Stall) => std::future::pending().await,
        None if path_and_query == TOKEN_PATH => {
            let n = state.tokens.fetch_add(1, Ordering::SeqCst) + 1;
            let body = json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-{n}"), "expire": 7200});
            (StatusCode::OK, body.to_string())
        }
        None => (
            StatusCode::NOT_FOUND,
            json!({"code": 404, "msg": format!("unscripted {path_and_query}")}).to_string(),
        ),
    }
}

struct World {
    name: String,
    fake: FakeLark,
    plugin: Arc<Plugin>,
    cx: Arc<InstallationContext>,
    _clock: Arc<ManualClock>,
    _runtime: Runtime,
    _db: db::TestDb,
}

async fn worlds() -> Vec<World> {
    let mut worlds = Vec::new();
    for t in db::test_databases().await {
        let fake = FakeLark::start().await;
        let clock = ManualClock::new(NOW);
        let services = Services::new(
            Some(Arc::new(t.db.kv()) as Arc<dyn KvBackend>),
            OperatorPolicy {
                base_url_overrides: vec![
                    BaseUrlOverride::new(
                        "https://open.feishu.cn",
                        &format!("http://127.0.0.1:{}", fake.port),
                    )
                    .unwrap(),
                ],
            },
            ServiceLimits::default(),
        )
        .with_clock(clock.clone());
        let runtime = Runtime::new(
            RuntimeSettings {
                cache_dir: Some(support::shared_cache_dir()),
                ..Default::default()
            },
            services,
        )
        .expect("runtime starts");
        runtime.load_bundled().expect("bundled plugins load");
        let plugin = runtime.plugin("lark").expect("the lark plugin is bundled");
        let cx = Arc::new(
            InstallationContext::new(format!("inst-enricher-{}", t.name))
                .with_config("app_id", APP_ID)
                .with_secret("app_secret", APP_SECRET),
        );
        worlds.push(World {
            name: t.name.clone(),
            fake,
            plugin,
            cx,
            _clock: clock,
            _runtime: runtime,
            _db: t,
        });
    }
    worlds
}

fn budget() -> Budget {
    Budget {
        deadline_ms: 2000,
        max_requests: 8,
        max_context_messages: 20,
    }
}

impl World {
    async fn enrich_within(&self, message: &InboundMessage, budget: Budget) -> Enrichment {
        self.plugin
            .enrich(&self.cx, message, budget)
            .await
            .expect("enrich never fails")
    }

    async fn enrich(&self, message: &InboundMessage) -> Enrichment {
        self.enrich_within(message, budget()).await
    }
}

/// A p2p text from Charlie (a direct chat is always addressed to the bot).
fn message(body: &str) -> InboundMessage {
    InboundMessage {
        event_id: "ev_1".into(),
        message_id: TRIGGER.into(),
        chat: Chat {
            id: CHAT.into(),
            kind: ChatKind::Direct,
            title: None,
        },
        sender: Participant {
            id: CHARLIE.into(),
            display_name: None,
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: "text".into(),
        body: body.into(),
        command_body: body.into(),
        addressed_to_bot: true,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: NOW,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn quoting(body: &str) -> InboundMessage {
    InboundMessage {
        parent_id: Some(PARENT.into()),
        root_id: Some(PARENT.into()),
        ..message(body)
    }
}

/// A group text from Charlie that addresses the bot.
fn addressed(body: &str) -> InboundMessage {
    let mut message = message(body);
    message.chat.kind = ChatKind::Group;
    message.addressed_to_bot = true;
    message
}

fn forward() -> InboundMessage {
    InboundMessage {
        message_type: "merge_forward".into(),
        body: "[Forwarded messages]".into(),
        command_body: String::new(),
        ..message("")
    }
}

fn item(id: &str, msg_type: &str, content: &str, sender: &str, create_ms: i64) -> Value {
    json!({
        "message_id": id,
        "msg_type": msg_type,
        "create_time": create_ms.to_string(),
        "deleted": false,
        "chat_id": CHAT,
        "sender": {"id": sender, "id_type": "open_id", "sender_type": "user"},
        "body": {"content": content},
    })
}

fn text(id: &str, words: &str, sender: &str, create_ms: i64) -> Value {
    item(
        id,
        "text",
        &json!({"text": words}).to_string(),
        sender,
        create_ms,
    )
}

fn child(mut value: Value, upper: &str) -> Value {
    value["upper_message_id"] = json!(upper);
    value
}

fn sentinel(id: &str, create_ms: i64) -> Value {
    item(
        id,
        "merge_forward",
        "Merged and Forwarded Message",
        ALICE,
        create_ms,
    )
}

#[tokio::test]
async fn a_quoted_parent_becomes_a_quoted_block_with_one_get() {
    for w in worlds().await {
        let n = &w.name;
        let mut parent = text(PARENT, "@_user_1 ship \"v2\"?", ALICE, NOW - 60_000);
        parent["mentions"] =
            json!([{"key": "@_user_1", "id": BOB, "id_type": "open_id", "name": "Bob"}]);
        w.fake.items(&format!("/messages/{PARENT}?"), vec![parent]);
        let out = w.enrich(&quoting("yes or no?")).await;
        assert_eq!(
            out.body,
            "<quoted_message message_id=\"om_parent_0001\" sender=\"User 1\" type=\"text\">\n@Bob ship \"v2\"?\n</quoted_message>\n\nyes or no?",
            "{n}"
        );
        assert!(out.notes.is_empty(), "{n}: {:?}", out.notes);
        assert_eq!(
            w.fake.calls(),
            [
                format!("POST {TOKEN_PATH}"),
                format!("GET /open-apis/im/v1/messages/{PARENT}?user_id_type=open_id"),
            ],
            "{n}"
        );
        assert_eq!(
            w.fake.authorizations()[1].as_deref(),
            Some("Bearer t-1"),
            "{n}"
        );

        // The token is cached in the host kv: a second enrichment makes no token call.
        w.fake.items(
            &format!("/messages/{PARENT}?"),
            vec![text(PARENT, "p", ALICE, 1)],
        );
        w.enrich(&quoting("again")).await;
        assert_eq!(w.fake.count(TOKEN_PATH), 1, "{n}");
    }
}

#[tokio::test]
async fn a_merge_forward_is_one_get_capped_at_100_with_nested_forwards_as_placeholders() {
    for w in worlds().await {
        let n = &w.name;
        let mut items = vec![sentinel(TRIGGER, NOW)];
        // A nested forward (oldest), its own child (a grandchild: not inlined), and 104 texts
        // listed newest first.
        items.push(child(sentinel("om_inner", 1), TRIGGER));
        items.push(child(text("om_grand", "grandchild", BOB, 2), "om_inner"));
        for k in (0..104).rev() {
            let sender = if k % 2 == 0 { ALICE } else { BOB };
            items.push(child(
                text(&format!("om_c{k}"), &format!("line {k}"), sender, 10 + k),
                TRIGGER,
            ));
        }
        w.fake.items(&format!("/messages/{TRIGGER}?"), items);
        let out = w.enrich(&forward()).await;
        let lines: Vec<&str> = out.body.lines().collect();
        assert_eq!(lines[0], "<forwarded_messages count=\"105\">", "{n}");
        assert_eq!(
            lines[1], "[User 1]: [nested merge_forward, expand manually]",
            "{n}"
        );
        assert_eq!(lines[2], "[User 1]: line 0", "{n}");
        assert_eq!(lines[3], "[User 2]: line 1", "{n}");
        assert_eq!(lines[100], "[User 1]: line 98", "{n}");
        assert_eq!(lines[101], "... (5 more truncated)", "{n}");
        assert_eq!(lines[102], "</forwarded_messages>", "{n}");
        assert_eq!(lines.len(), 103, "{n}");
        assert!(!out.body.contains("grandchild"), "{n}");
        assert_eq!(w.fake.count("GET "), 1, "{n}: one GET, never recursed");
    }
}

#[tokio::test]
async fn group_context_with_names_from_one_batch_lookup() {
    for w in worlds().await {
        let n = &w.name;
        let mut bot_card = item("om_card", "interactive", "{\"elements\":[]}", "", NOW - 500);
        bot_card["sender"] = json!({"id": "cli_x", "id_type": "app_id", "sender_type": "app"});
        let mut bot_text = text("om_bot", "deployed", "", NOW - 1_000);
        bot_text["sender"] = json!({"id": "cli_x", "id_type": "app_id", "sender_type": "app"});
        w.fake.items(
            LIST,
            vec![
                text(TRIGGER, "@Helper what now?", CHARLIE, NOW),
                bot_card,
                bot_text,
                text("om_2", "rollback?", BOB, NOW - 2_000),
                text("om_1", "prod is red", ALICE, NOW - 3_000),
            ],
        );
        w.fake.users(&[(ALICE, "Alice"), (CHARLIE, "Charlie")]);
        let out = w.enrich(&addressed("what now?")).await;
        assert_eq!(
            out.body,
            "<recent_context count=\"3\">\n[Alice]: prod is red\n[User 1]: rollback?\n[Bot]: deployed\n</recent_context>\n\n[Charlie]: what now?",
            "{n}"
        );
        let calls = w.fake.calls();
        assert_eq!(
            calls[1],
            format!(
                "GET {LIST}=chat&container_id={CHAT}&end_time={}&sort_type=ByCreateTimeDesc&page_size=10&user_id_type=open_id",
                NOW / 1000
            ),
            "{n}"
        );
        assert_eq!(
            calls[2],
            format!(
                "GET {USERS}?user_id_type=open_id&user_ids={ALICE}&user_ids={BOB}&user_ids={CHARLIE}"
            ),
            "{n}"
        );
        assert_eq!(calls.len(), 3, "{n}");
    }
}

#[tokio::test]
async fn topic_context_is_thread_scoped_and_fails_closed() {
    for w in worlds().await {
        let n = &w.name;
        let mut same = text("om_1", "in topic", ALICE, NOW - 1_000);
        same["thread_id"] = json!("omt_a");
        let mut sibling = text("om_2", "other topic", BOB, NOW - 900);
        sibling["thread_id"] = json!("omt_b");
        let unthreaded = text("om_3", "no thread id", BOB, NOW - 800);
        let mut later = text("om_4", "after trigger", ALICE, NOW + 1);
        later["thread_id"] = json!("omt_a");
        w.fake.items(LIST, vec![later, unthreaded, sibling, same]);
        w.fake.users(&[]);
        let message = InboundMessage {
            thread_id: Some("omt_a".into()),
            ..addressed("and?")
        };
        let out = w.enrich(&message).await;
        assert_eq!(
            out.body, "<recent_context count=\"1\">\n[User 1]: in topic\n</recent_context>\n\nand?",
            "{n}"
        );
        assert_eq!(
            w.fake.calls()[1],
            format!(
                "GET {LIST}=thread&container_id=omt_a&sort_type=ByCreateTimeDesc&page_size=10&user_id_type=open_id"
            ),
            "{n}"
        );
    }
}

#[tokio::test]
async fn a_rate_limited_history_is_the_temporary_note_without_a_retry() {
    for w in worlds().await {
        let n = &w.name;
        w.fake.json(
            LIST,
            400,
            json!({"code": 230020, "msg": "This operation triggers the frequency limit"}),
        );
        w.fake.users(&[]);
        let out = w.enrich(&addressed("still answered")).await;
        assert_eq!(
            out.body,
            format!("{TEMPORARY_NOTE}\n\nstill answered"),
            "{n}"
        );
        assert_eq!(w.fake.count(LIST), 1, "{n}");
        assert!(
            out.notes.iter().any(|note| note.contains("rate_limited")),
            "{n}: {:?}",
            out.notes
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once() {
    for w in worlds().await {
        let n = &w.name;
        // Rejected once: refreshed, and the GET succeeds with the new token.
        let expired = json!({"code": 99991663, "msg": "Invalid access token for authorization"});
        w.fake
            .json(&format!("/messages/{PARENT}?"), 200, expired.clone());
        w.fake.items(
            &format!("/messages/{PARENT}?"),
            vec![text(PARENT, "fine", ALICE, 1)],
        );
        let out = w.enrich(&quoting("q")).await;
        assert!(
            out.body
                .contains("sender=\"User 1\" type=\"text\">\nfine\n"),
            "{n}: {}",
            out.body
        );
        let auth = w.fake.authorizations();
        assert_eq!(auth[1].as_deref(), Some("Bearer t-1"), "{n}");
        assert_eq!(auth[3].as_deref(), Some("Bearer t-2"), "{n}");
        assert_eq!(w.fake.count(TOKEN_PATH), 2, "{n}");

        // Rejected twice: one refresh only, then the error block; the body is kept.
        w.fake
            .json(&format!("/messages/{PARENT}?"), 200, expired.clone());
        w.fake.json(&format!("/messages/{PARENT}?"), 200, expired);
        let out = w.enrich(&quoting("kept")).await;
        assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nkept"), "{n}");
        assert_eq!(w.fake.count(TOKEN_PATH), 3, "{n}");
        assert_eq!(w.fake.count(&format!("/messages/{PARENT}?")), 4, "{n}");
    }
}

#[tokio::test]
async fn permission_denied_history_is_its_note() {
    for w in worlds().await {
        let n = &w.name;
        w.fake.json(
            LIST,
            400,
            json!({"code": 99991672, "msg": "Access denied. One of the following scopes is required"}),
        );
        w.fake.users(&[]);
        let out = w.enrich(&addressed("q")).await;
        assert_eq!(
            out.body,
            "[Recent Lark context unavailable: the bot cannot read this chat history. Continuing with the latest message.]\n\nq",
            "{n}"
        );
        assert_eq!(w.fake.count(LIST), 1, "{n}");
    }
}

#[tokio::test]
async fn server_errors_degrade_or_retry() {
    for w in worlds().await {
        let n = &w.name;
        // A 500 on the quoted parent: the error block (no retry for quotes).
        w.fake.script(
            &format!("/messages/{PARENT}?"),
            Answer::Body(500, "internal error".into()),
        );
        let out = w.enrich(&quoting("q")).await;
        assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nq"), "{n}");
        assert_eq!(w.fake.count(&format!("/messages/{PARENT}?")), 1, "{n}");

        // A 503 on the history: retried once, and the retry renders.
        w.fake.script(LIST, Answer::Body(503, "unavailable".into()));
        w.fake
            .items(LIST, vec![text("om_1", "context", ALICE, NOW - 1)]);
        w.fake.users(&[]);
        let out = w.enrich(&addressed("q")).await;
        assert_eq!(
            out.body, "<recent_context count=\"1\">\n[User 1]: context\n</recent_context>\n\nq",
            "{n}"
        );
        assert_eq!(w.fake.count(LIST), 2, "{n}");
    }
}

#[tokio::test]
async fn a_stalled_history_times_out_within_the_budget_and_the_body_is_kept() {
    for w in worlds().await {
        let n = &w.name;
        w.fake.script(LIST, Answer::Stall);
        let out = w
            .enrich_within(
                &addressed("answer me anyway"),
                Budget {
                    deadline_ms: 600,
                    ..budget()
                },
            )
            .await;
        assert_eq!(
            out.body,
            format!("{TEMPORARY_NOTE}\n\nanswer me anyway"),
            "{n}"
        );
        // The deadline left no room for a retry or the name lookup.
        assert_eq!(w.fake.count(LIST), 1, "{n}");
        assert_eq!(w.fake.count(USERS), 0, "{n}");
        assert!(
            out.notes.iter().any(|note| note.contains("timeout")),
            "{n}: {:?}",
            out.notes
        );
    }
}

#[tokio::test]
async fn a_malformed_answer_degrades_to_the_error_block() {
    for w in worlds().await {
        let n = &w.name;
        w.fake.script(
            &format!("/messages/{TRIGGER}?"),
            Answer::Body(200, "<html>gateway</html>".into()),
        );
        let out = w.enrich(&forward()).await;
        assert_eq!(
            out.body, "<forwarded_messages type=\"error\">[unable to fetch]</forwarded_messages>",
            "{n}"
        );
        w.fake.json(
            &format!("/messages/{PARENT}?"),
            200,
            json!({"code": 0, "msg": "success", "data": {}}),
        );
        let out = w.enrich(&quoting("q")).await;
        assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nq"), "{n}");
    }
}

#[tokio::test]
async fn a_spent_request_budget_degrades_the_rest() {
    for w in worlds().await {
        let n = &w.name;
        // One request: the token call. The quote cannot be fetched.
        let out = w
            .enrich_within(
                &quoting("q"),
                Budget {
                    max_requests: 1,
                    ..budget()
                },
            )
            .await;
        assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nq"), "{n}");
        assert_eq!(w.fake.calls(), [format!("POST {TOKEN_PATH}")], "{n}");
    }
}

#[tokio::test]
async fn nothing_to_enrich_makes_no_request() {
    for w in worlds().await {
        let n = &w.name;
        let out = w.enrich(&message("plain")).await;
        assert_eq!(out.body, "plain", "{n}");
        assert!(out.notes.is_empty(), "{n}");
        let out = w.enrich(&message("/new start over")).await;
        assert_eq!(out.body, "start over", "{n}");
        assert!(w.fake.calls().is_empty(), "{n}");
    }
}
