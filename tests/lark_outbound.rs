//! The Lark plugin's `outbound` export through the host runtime: the real wasm plugin, its
//! tenant-token cache in the host kv store (SQLite and PostgreSQL), and a local fake Lark REST
//! server (axum on 127.0.0.1:0) that `https://open.feishu.cn` is redirected to. Every test
//! asserts the exact requests the plugin made (reference §L, §M, §S, §6.5–6.6).

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;
#[path = "support/time.rs"]
mod time;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use switchboard::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::notice::{Notice as HostNotice, NoticeKind as HostKind, NoticeTexts};
use switchboard::domain::{InstallationContext, KvBackend};
use switchboard::runtime::outbound::{Content, Delivery, DeliveryError, Receipt, TypingChange};
use switchboard::runtime::types::{ChatKind, Notice, NoticeKind, SessionTarget};
use switchboard::runtime::{Plugin, Runtime, RuntimeSettings};
use time::ManualClock;

const APP_ID: &str = "cli_a5f3c2e1d4b6a789";
const APP_SECRET: &str = "s3cret";
const GROUP_CHAT: &str = "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081";
const TRIGGER: &str = "om_5b3c000000000000000000000000a00f";
const ALICE: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";
const NOW: i64 = 1_731_300_000_000;
const TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";
const SEND_TO_CHAT: &str = "/open-apis/im/v1/messages?receive_id_type=chat_id";

/// One request the fake Lark server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    authorization: Option<String>,
    content_type: Option<String>,
    /// The JSON body (`Null` when empty).
    body: Value,
}

/// The fake's state: what it saw, scripted answers, token and id counters.
#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    /// (uri fragment, status, body): the first entry whose fragment the request's path and query
    /// contains answers it, once.
    script: Mutex<VecDeque<(String, u16, Value)>>,
    token_expire_s: AtomicU64,
    tokens: AtomicUsize,
    ids: AtomicUsize,
}

/// A fake Lark Open Platform.
struct FakeLark {
    state: Arc<FakeState>,
    port: u16,
}

impl FakeLark {
    async fn start() -> FakeLark {
        let state = Arc::new(FakeState::default());
        state.token_expire_s.store(7200, Ordering::SeqCst);
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeLark { state, port }
    }

    /// Answers the next request whose path and query contains `fragment` with `status` + `body`.
    fn script(&self, fragment: &str, status: u16, body: Value) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((fragment.to_string(), status, body));
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// `METHOD path?query` of every request, in order.
    fn calls(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|seen| format!("{} {}", seen.method, seen.uri))
            .collect()
    }

    fn token_calls(&self) -> usize {
        self.seen().iter().filter(|s| s.uri == TOKEN_PATH).count()
    }

    /// The requests other than token calls.
    fn api_calls(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.uri != TOKEN_PATH)
            .collect()
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: path_and_query.clone(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).expect("the plugin sends JSON bodies")
        },
    });
    {
        let mut script = state.script.lock().unwrap();
        if let Some(at) = script
            .iter()
            .position(|(fragment, _, _)| path_and_query.contains(fragment.as_str()))
        {
            let (_, status, body) = script.remove(at).unwrap();
            return (StatusCode::from_u16(status).unwrap(), Json(body));
        }
    }
    let n = if path_and_query == TOKEN_PATH {
        state.tokens.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        state.ids.fetch_add(1, Ordering::SeqCst) + 1
    };
    let body = if path_and_query == TOKEN_PATH {
        json!({
            "code": 0, "msg": "ok",
            "tenant_access_token": format!("t-{n}"),
            "expire": state.token_expire_s.load(Ordering::SeqCst),
        })
    } else if path_and_query.ends_with("/reactions") {
        json!({"code": 0, "msg": "success", "data": {"reaction_id": format!("r_{n}")}})
    } else if method == Method::DELETE {
        json!({"code": 0, "msg": "success"})
    } else {
        json!({"code": 0, "msg": "success", "data": {"message_id": format!("om_sent_{n}")}})
    };
    (StatusCode::OK, Json(body))
}

/// One backend's world: the fake, a runtime whose kv is the test database and whose clock is
/// manual, and the installation.
struct World {
    name: String,
    fake: FakeLark,
    clock: Arc<ManualClock>,
    plugin: Arc<Plugin>,
    cx: Arc<InstallationContext>,
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
            InstallationContext::new(format!("inst-outbound-{}", t.name))
                .with_config("app_id", APP_ID)
                .with_config("agent_name", "Helper Bot")
                .with_secret("app_secret", APP_SECRET),
        );
        worlds.push(World {
            name: t.name.clone(),
            fake,
            clock,
            plugin,
            cx,
            _runtime: runtime,
            _db: t,
        });
    }
    worlds
}

impl World {
    async fn deliver(
        &self,
        target: SessionTarget,
        content: Content,
    ) -> Result<Receipt, DeliveryError> {
        self.plugin
            .deliver(
                &self.cx,
                &Delivery {
                    target,
                    content,
                    idempotency_key: String::new(),
                },
            )
            .await
            .expect("the deliver call itself succeeds")
    }

    async fn reply(&self, text: &str) -> Result<Receipt, DeliveryError> {
        self.deliver(target(false), Content::Reply(text.into()))
            .await
    }
}

/// A group session; `in_thread`: the last trigger was inside a topic.
fn target(in_thread: bool) -> SessionTarget {
    SessionTarget {
        session_id: "sess-1".into(),
        chat_id: GROUP_CHAT.into(),
        chat_kind: ChatKind::Group,
        thread_id: in_thread.then(|| "omt_1a7c3e9b5d2f4".to_string()),
        reply_to: Some(TRIGGER.into()),
        in_thread,
    }
}

/// The contract's notice for `host` in `locale`, its text chosen by the host's built-in
/// catalogue (what `Delivery` hands the plugin).
fn notice(host: HostNotice, locale: &str) -> Notice {
    let text = NoticeTexts::default().render(&host, locale);
    assert!(!text.is_empty(), "the host has a text for {:?}", host.kind);
    Notice {
        kind: match host.kind {
            HostKind::BindingRequired => NoticeKind::BindingRequired,
            HostKind::FreshContext => NoticeKind::FreshContext,
            HostKind::AgentOffline => NoticeKind::AgentOffline,
            HostKind::AgentArchived => NoticeKind::AgentArchived,
            HostKind::RunError => NoticeKind::RunError,
            HostKind::CommandUsage => NoticeKind::CommandUsage,
            HostKind::Help => NoticeKind::Help,
            HostKind::Status => NoticeKind::Status,
            HostKind::Info => NoticeKind::Info,
            HostKind::Approval => NoticeKind::Approval,
        },
        locale: locale.into(),
        text,
        link: host.link,
        reference: host.reference,
        recipient: host.recipient,
        actions: Vec::new(),
    }
}

/// The `content` string of a send or reply body, parsed.
fn content_of(seen: &Seen) -> Value {
    serde_json::from_str(seen.body["content"].as_str().expect("content is a string"))
        .expect("content is JSON")
}

#[tokio::test]
async fn a_plain_reply_is_a_text_message_to_the_chat() {
    for w in worlds().await {
        let n = &w.name;
        let text = "line 1\nsays \"hi\" — 中文 🚀 {\"not\":\"json\"}";
        let receipt = w.reply(text).await.expect("delivered");
        assert_eq!(receipt.message_id.as_deref(), Some("om_sent_1"), "{n}");

        let seen = w.fake.seen();
        assert_eq!(
            w.fake.calls(),
            [format!("POST {TOKEN_PATH}"), format!("POST {SEND_TO_CHAT}")],
            "{n}"
        );
        // The token call: credentials in the body, no bearer.
        assert_eq!(
            seen[0].body,
            json!({"app_id": APP_ID, "app_secret": APP_SECRET}),
            "{n}"
        );
        assert_eq!(seen[0].authorization, None, "{n}");
        assert_eq!(
            seen[0].content_type.as_deref(),
            Some("application/json; charset=utf-8")
        );
        // The send: bearer token, receive_id/msg_type/content, content is `{"text": …}` as a string.
        let send = &seen[1];
        assert_eq!(send.authorization.as_deref(), Some("Bearer t-1"), "{n}");
        assert_eq!(
            send.content_type.as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(
            send.body,
            json!({
                "receive_id": GROUP_CHAT,
                "msg_type": "text",
                "content": json!({"text": text}).to_string(),
            }),
            "{n}"
        );
        assert_eq!(content_of(send), json!({"text": text}), "{n}");
    }
}

/// Issue 14: the outbox's idempotency key reaches Lark as the `uuid` of every send and
/// threaded reply (the n-th message of a delivery gets `{key}-{n}`), so a retried delivery is
/// posted once; without a key no `uuid` is sent.
#[tokio::test]
async fn an_idempotency_key_becomes_the_uuid_of_each_send() {
    for w in worlds().await {
        let n = &w.name;
        for (target, key) in [(target(false), "k-chat"), (target(true), "k-thread")] {
            w.plugin
                .deliver(
                    &w.cx,
                    &Delivery {
                        target,
                        content: Content::Reply("hello".into()),
                        idempotency_key: key.into(),
                    },
                )
                .await
                .unwrap()
                .expect("delivered");
        }
        let sends = w.fake.api_calls();
        let uuids: Vec<&str> = sends
            .iter()
            .map(|s| s.body["uuid"].as_str().unwrap_or("none"))
            .collect();
        assert_eq!(uuids, ["k-chat-0", "k-thread-0"], "{n}: {sends:?}");
        assert!(sends[1].uri.ends_with("/reply"), "{n}: {sends:?}");
        w.reply("no key").await.expect("delivered");
        let last = w.fake.api_calls().pop().unwrap();
        assert!(last.body.get("uuid").is_none(), "{n}: {last:?}");
    }
}

#[tokio::test]
async fn a_markdown_reply_in_a_topic_is_a_threaded_schema_2_card() {
    for w in worlds().await {
        let n = &w.name;
        let markdown = "**Summary**\n- cause: expired cert\n\n```bash\nkubectl rollout status\n```";
        let receipt = w
            .deliver(target(true), Content::Reply(markdown.into()))
            .await
            .expect("delivered");
        assert_eq!(receipt.message_id.as_deref(), Some("om_sent_1"), "{n}");
        let calls = w.fake.api_calls();
        assert_eq!(calls.len(), 1, "{n}");
        let reply = &calls[0];
        assert_eq!(
            format!("{} {}", reply.method, reply.uri),
            format!("POST /open-apis/im/v1/messages/{TRIGGER}/reply"),
            "{n}"
        );
        assert_eq!(reply.authorization.as_deref(), Some("Bearer t-1"));
        assert_eq!(reply.body["msg_type"], "interactive", "{n}");
        assert_eq!(reply.body["reply_in_thread"], true, "{n}");
        assert!(
            reply.body.get("receive_id").is_none(),
            "{n}: a reply has no receive_id"
        );
        assert_eq!(
            content_of(reply),
            json!({
                "schema": "2.0",
                "body": {"elements": [{"tag": "markdown", "content": markdown}]},
            }),
            "{n}"
        );
    }
}

#[tokio::test]
async fn a_gone_reply_target_falls_back_to_the_chat_and_ambiguous_errors_do_not() {
    for w in worlds().await {
        let n = &w.name;
        // The trigger was recalled: one threaded attempt, then the chat-level send.
        w.fake.script(
            "/reply",
            400,
            json!({"code": 230011, "msg": "message recalled"}),
        );
        let receipt = w
            .deliver(target(true), Content::Reply("done".into()))
            .await
            .expect("delivered at chat level");
        assert_eq!(receipt.message_id.as_deref(), Some("om_sent_1"), "{n}");
        let calls = w.fake.api_calls();
        assert_eq!(
            calls.iter().map(|c| c.uri.as_str()).collect::<Vec<_>>(),
            [
                &format!("/open-apis/im/v1/messages/{TRIGGER}/reply"),
                SEND_TO_CHAT
            ],
            "{n}"
        );
        assert_eq!(calls[1].body["receive_id"], GROUP_CHAT, "{n}");
        assert_eq!(
            calls[0].body["content"], calls[1].body["content"],
            "{n}: same message"
        );

        // A rate limit is ambiguous: no fallback, retryable, code kept.
        w.fake.script(
            "/reply",
            400,
            json!({"code": 230020, "msg": "frequency limit"}),
        );
        let err = w
            .deliver(target(true), Content::Reply("again".into()))
            .await
            .expect_err("refused");
        assert_eq!(err.code, Some(230020), "{n}");
        assert!(err.retryable, "{n}");
        assert_eq!(w.fake.api_calls().len(), 3, "{n}: exactly one more attempt");
    }
}

#[tokio::test]
async fn the_token_is_cached_in_kv_and_refetched_after_99991663() {
    for w in worlds().await {
        let n = &w.name;
        w.reply("one").await.expect("first");
        w.reply("two").await.expect("second");
        assert_eq!(
            w.fake.token_calls(),
            1,
            "{n}: one token call for two deliveries"
        );

        // Lark says the token expired: dropped, fetched again, the send retried once.
        w.fake.script(
            SEND_TO_CHAT,
            200,
            json!({"code": 99991663, "msg": "token expired"}),
        );
        w.reply("three").await.expect("third, after a refresh");
        w.reply("four")
            .await
            .expect("fourth, with the new token cached");
        assert_eq!(w.fake.token_calls(), 2, "{n}");
        let auth: Vec<_> = w
            .fake
            .api_calls()
            .iter()
            .map(|c| c.authorization.clone().unwrap())
            .collect();
        assert_eq!(
            auth,
            [
                "Bearer t-1",
                "Bearer t-1",
                "Bearer t-1",
                "Bearer t-2",
                "Bearer t-2"
            ],
            "{n}"
        );
        assert_eq!(
            w.fake.calls(),
            [
                format!("POST {TOKEN_PATH}"),
                format!("POST {SEND_TO_CHAT}"),
                format!("POST {SEND_TO_CHAT}"),
                format!("POST {SEND_TO_CHAT}"),
                format!("POST {TOKEN_PATH}"),
                format!("POST {SEND_TO_CHAT}"),
                format!("POST {SEND_TO_CHAT}"),
            ],
            "{n}"
        );
    }
}

#[tokio::test]
async fn the_cached_token_expires_60_s_before_lark_says_with_a_120_s_floor() {
    for w in worlds().await {
        let n = &w.name;
        // expire 7200 s: cached until 7140 s later.
        w.reply("a").await.unwrap();
        w.clock.set(NOW + 7_139_999);
        w.reply("b").await.unwrap();
        assert_eq!(w.fake.token_calls(), 1, "{n}");
        w.clock.set(NOW + 7_140_000);
        w.reply("c").await.unwrap();
        assert_eq!(w.fake.token_calls(), 2, "{n}: refetched at expire − 60 s");

        // expire 10 s is treated as 120 s: cached for 60 s.
        w.fake.state.token_expire_s.store(10, Ordering::SeqCst);
        // (The token fetched at 7140 s is good until 14 280 s.)
        let start = NOW + 2 * 7_140_000;
        w.clock.set(start);
        w.reply("d").await.unwrap();
        assert_eq!(w.fake.token_calls(), 3, "{n}");
        w.clock.set(start + 59_999);
        w.reply("e").await.unwrap();
        assert_eq!(w.fake.token_calls(), 3, "{n}: still cached");
        w.clock.set(start + 60_000);
        w.reply("f").await.unwrap();
        assert_eq!(w.fake.token_calls(), 4, "{n}");
    }
}

/// A run error is the blue error card (`update_multi`) titled with the agent's name: exactly
/// the host's text, and the run's reference small underneath.
#[tokio::test]
async fn a_failed_run_gets_the_error_card() {
    for w in worlds().await {
        let n = &w.name;
        let mut run_error = HostNotice::new(HostKind::RunError);
        run_error.reference = Some("run-7f3a".into());
        let notice = notice(run_error, "en");
        assert!(notice.text.contains("run-7f3a"), "{n}: {}", notice.text);
        let text = notice.text.clone();
        w.deliver(target(false), Content::Notice(notice))
            .await
            .expect("delivered");
        let send = &w.fake.api_calls()[0];
        assert_eq!(send.uri, SEND_TO_CHAT, "{n}");
        assert_eq!(send.body["msg_type"], "interactive", "{n}");
        assert_eq!(
            content_of(send),
            json!({
                "config": {"wide_screen_mode": true, "update_multi": true},
                "header": {"template": "blue", "title": {"tag": "plain_text", "content": "Helper Bot"}},
                "elements": [
                    {"tag": "div", "text": {"tag": "plain_text", "content": text}},
                    {"tag": "note", "elements": [{"tag": "plain_text", "content": "run-7f3a"}]},
                ],
            }),
            "{n}"
        );
    }
}

/// Contract 0.2: the host chooses every notice's words; the plugin shows exactly that text in
/// the card of the notice's kind, titled with the configured `agent_name`, and adds only a
/// button label in the notice's locale.
#[tokio::test]
async fn every_notice_is_rendered_as_the_reference_shows_it() {
    for w in worlds().await {
        let n = &w.name;
        let grey = |body: &str| {
            json!({
                "config": {"wide_screen_mode": true},
                "header": {"template": "grey", "title": {"tag": "plain_text", "content": "Helper Bot"}},
                "elements": [{"tag": "div", "text": {"tag": "plain_text", "content": body}}],
            })
        };
        for locale in ["en", "zh-CN"] {
            for host in [
                HostNotice::new(HostKind::AgentOffline),
                HostNotice::new(HostKind::AgentArchived),
                HostNotice::new(HostKind::FreshContext),
                HostNotice::new(HostKind::CommandUsage).with_detail("/issue <title>"),
            ] {
                let notice = notice(host, locale);
                let text = notice.text.clone();
                w.deliver(target(false), Content::Notice(notice))
                    .await
                    .expect("delivered");
                let send = w.fake.api_calls().pop().unwrap();
                assert_eq!(send.uri, SEND_TO_CHAT, "{n}");
                assert_eq!(send.body["msg_type"], "interactive", "{n}");
                assert_eq!(content_of(&send), grey(&text), "{n} {locale}");
            }
        }

        // A notice for a topic trigger threads into the topic.
        w.deliver(
            target(true),
            Content::Notice(notice(HostNotice::new(HostKind::FreshContext), "en")),
        )
        .await
        .unwrap();
        let send = w.fake.api_calls().pop().unwrap();
        assert_eq!(
            send.uri,
            format!("/open-apis/im/v1/messages/{TRIGGER}/reply"),
            "{n}"
        );
        assert_eq!(send.body["reply_in_thread"], true, "{n}");

        // Plain information (a command's result, a status line) reads like a reply: text.
        for kind in [HostKind::Info, HostKind::Status] {
            let detail = "Created ISS-7 — Fix login\nhttps://sb.example/issues/ISS-7";
            w.deliver(
                target(false),
                Content::Notice(notice(HostNotice::new(kind).with_detail(detail), "en")),
            )
            .await
            .unwrap();
            let send = w.fake.api_calls().pop().unwrap();
            assert_eq!(send.body["msg_type"], "text", "{n} {kind:?}");
            assert_eq!(content_of(&send), json!({"text": detail}), "{n} {kind:?}");
        }

        // binding-required: the binding card with the host's text and the link as a button,
        // sent privately to the recipient (`receive_id_type=open_id`), even from a group topic.
        let url = "https://sb.example/bind?token=abc%2Bdef";
        for (locale, label) in [("zh-CN", "去绑定"), ("en", "Bind account")] {
            let mut binding = HostNotice::new(HostKind::BindingRequired);
            binding.link = Some(url.into());
            binding.recipient = Some(ALICE.into());
            let notice = notice(binding, locale);
            let text = notice.text.clone();
            w.deliver(target(true), Content::Notice(notice))
                .await
                .unwrap();
            let send = w.fake.api_calls().pop().unwrap();
            assert_eq!(
                send.uri, "/open-apis/im/v1/messages?receive_id_type=open_id",
                "{n}"
            );
            assert_eq!(send.body["receive_id"], ALICE, "{n}");
            assert_eq!(send.body["msg_type"], "interactive", "{n}");
            assert_eq!(
                content_of(&send),
                json!({
                    "config": {"wide_screen_mode": true},
                    "header": {"template": "blue", "title": {"tag": "plain_text", "content": "Helper Bot"}},
                    "elements": [
                        {"tag": "div", "text": {"tag": "lark_md", "content": text}},
                        {"tag": "action", "actions": [{
                            "tag": "button",
                            "text": {"tag": "plain_text", "content": label},
                            "type": "primary",
                            "url": url,
                        }]},
                    ],
                }),
                "{n} {locale}"
            );
        }
        assert_eq!(w.fake.token_calls(), 1, "{n}");

        // Without an `agent_name` a card has no header (there is no built-in title).
        let untitled = Arc::new(
            InstallationContext::new(format!("inst-untitled-{n}"))
                .with_config("app_id", APP_ID)
                .with_secret("app_secret", APP_SECRET),
        );
        let offline = notice(HostNotice::new(HostKind::AgentOffline), "en");
        let text = offline.text.clone();
        w.plugin
            .deliver(
                &untitled,
                &Delivery {
                    target: target(false),
                    content: Content::Notice(offline),
                    idempotency_key: String::new(),
                },
            )
            .await
            .unwrap()
            .expect("delivered");
        let send = w.fake.api_calls().pop().unwrap();
        assert_eq!(
            content_of(&send),
            json!({
                "config": {"wide_screen_mode": true},
                "elements": [{"tag": "div", "text": {"tag": "plain_text", "content": text}}],
            }),
            "{n}"
        );
    }
}

#[tokio::test]
async fn delivery_failures_carry_the_lark_code_and_say_whether_to_retry() {
    for w in worlds().await {
        let n = &w.name;
        let cases = [
            (
                429,
                json!({"code": 99991400, "msg": "request trigger frequency limit"}),
                Some(99991400),
                true,
            ),
            (
                400,
                json!({"code": 230001, "msg": "invalid content"}),
                Some(230001),
                false,
            ),
            (
                400,
                json!({"code": 230002, "msg": "bot not in chat"}),
                Some(230002),
                false,
            ),
            (502, json!({"code": 0}), None, true),
        ];
        for (status, body, code, retryable) in cases {
            w.fake.script(SEND_TO_CHAT, status, body.clone());
            let err = w.reply("hi").await.expect_err("refused");
            assert_eq!(
                (err.code, err.retryable),
                (code, retryable),
                "{n}: {status} {body}"
            );
        }
        assert_eq!(
            w.fake.api_calls().len(),
            4,
            "{n}: no retries inside the plugin"
        );

        // A blank reply sends nothing at all.
        let receipt = w.reply(" \n ").await.expect("nothing to send");
        assert_eq!(receipt.message_id, None, "{n}");
        assert_eq!(w.fake.api_calls().len(), 4, "{n}");

        // The token endpoint refusing the secret: not retryable, nothing sent.
        let fresh = Arc::new(
            InstallationContext::new(format!("inst-other-{n}"))
                .with_config("app_id", "cli_other")
                .with_secret("app_secret", "wrong"),
        );
        w.fake.script(
            TOKEN_PATH,
            200,
            json!({"code": 10014, "msg": "app secret invalid"}),
        );
        let err = w
            .plugin
            .deliver(
                &fresh,
                &Delivery {
                    target: target(false),
                    content: Content::Reply("hi".into()),
                    idempotency_key: String::new(),
                },
            )
            .await
            .unwrap()
            .expect_err("no token");
        assert_eq!((err.code, err.retryable), (Some(10014), false), "{n}");
        assert_eq!(w.fake.api_calls().len(), 4, "{n}");

        // A session without a chat fails before any request.
        let before = w.fake.seen().len();
        let mut no_chat = target(false);
        no_chat.chat_id = String::new();
        let err = w
            .deliver(no_chat, Content::Reply("hi".into()))
            .await
            .expect_err("invalid");
        assert!(!err.retryable, "{n}");
        assert_eq!(w.fake.seen().len(), before, "{n}");
    }
}

#[tokio::test]
async fn the_typing_reaction_is_added_and_removed() {
    for w in worlds().await {
        let n = &w.name;
        let on = TypingChange {
            message_id: TRIGGER.into(),
            on: true,
        };
        let handle = w
            .plugin
            .set_typing(&w.cx, &target(false), &on, None)
            .await
            .unwrap()
            .expect("added");
        assert_eq!(handle.as_deref(), Some("r_1"), "{n}");
        let off = TypingChange {
            message_id: TRIGGER.into(),
            on: false,
        };
        let cleared = w
            .plugin
            .set_typing(&w.cx, &target(false), &off, handle.as_deref())
            .await
            .unwrap()
            .expect("removed");
        assert_eq!(cleared, None, "{n}");

        let calls = w.fake.api_calls();
        assert_eq!(calls.len(), 2, "{n}");
        assert_eq!(
            format!("{} {}", calls[0].method, calls[0].uri),
            format!("POST /open-apis/im/v1/messages/{TRIGGER}/reactions"),
            "{n}"
        );
        assert_eq!(calls[0].authorization.as_deref(), Some("Bearer t-1"));
        assert_eq!(
            calls[0].body,
            json!({"reaction_type": {"emoji_type": "Typing"}}),
            "{n}"
        );
        assert_eq!(
            format!("{} {}", calls[1].method, calls[1].uri),
            format!("DELETE /open-apis/im/v1/messages/{TRIGGER}/reactions/r_1"),
            "{n}"
        );
        assert_eq!(calls[1].body, Value::Null, "{n}");

        // Off without a handle: nothing to do. A failed add is classified, not fatal.
        w.plugin
            .set_typing(&w.cx, &target(false), &off, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.fake.api_calls().len(), 2, "{n}");
        w.fake.script(
            "/reactions",
            400,
            json!({"code": 231001, "msg": "message not found"}),
        );
        let err = w
            .plugin
            .set_typing(&w.cx, &target(false), &on, None)
            .await
            .unwrap()
            .expect_err("refused");
        assert_eq!((err.code, err.retryable), (Some(231001), false), "{n}");
    }
}
