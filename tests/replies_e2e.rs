//! Runs, agents and replies end to end over real HTTP (issue 5): an encrypted, signed Lark
//! webhook lands, the debounce window flushes, the bound agent runs and the reply reaches a local
//! fake of the Lark REST API with the exact request the reference describes. Covers the
//! `openai` agent against a local OpenAI-compatible server (reply and failure → error card), an
//! archived agent (notice, no run) and an offline `worker` agent (notice, the run waits, then a
//! worker claims it through the worker API and its reply is delivered). SQLite and PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::domain::notice::{Notice, NoticeKind, NoticeTexts};

const ADMIN: &str = "replies-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "replies-worker-token-0123456789";
/// The app name the fake Lark answers for the bot.
const BOT_NAME: &str = "E2E Helper";

/// One request the fake Lark received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>, Arc<std::sync::atomic::AtomicU32>);

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

async fn fake_lark(
    State(seen): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().to_string();
    seen.0.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let is_send = method == Method::POST && path == "/open-apis/im/v1/messages";
    if is_send
        && seen
            .1
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    {
        // A scripted server error: retryable, so the host tries again.
        return (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"code": 0, "msg": "bad gateway"})),
        )
            .into_response();
    }
    let answer = if path.ends_with("/tenant_access_token/internal") {
        json!({"code": 0, "msg": "ok", "tenant_access_token": "t-e2e", "expire": 7200})
    } else if method == Method::GET && path == "/open-apis/bot/v3/info" {
        // On-install asks who the bot is (the bot object is top-level, not under `data`).
        json!({"code": 0, "msg": "ok", "bot": {"open_id": lark::BOT_OPEN_ID, "app_name": BOT_NAME}})
    } else if path.ends_with("/reactions") {
        json!({"code": 0, "msg": "success", "data": {"reaction_id": "r_e2e"}})
    } else if method == Method::DELETE {
        json!({"code": 0, "msg": "success"})
    } else {
        json!({"code": 0, "msg": "success", "data": {"message_id": "om_sent"}})
    };
    axum::Json(answer).into_response()
}

/// The requests an OpenAI-compatible mock received, and what it streams back: "gpt says: " +
/// the last user message, in three deltas; a last message containing "please fail" → HTTP 500.
async fn mock_openai(
    State(seen): State<Recorder>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap();
    seen.0.lock().unwrap().push(Seen {
        method: "POST".into(),
        uri: "/v1/chat/completions".into(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: request.clone(),
    });
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    if last.contains("please fail") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "the model is overloaded"}})),
        )
            .into_response();
    }
    let reply = format!("gpt says: {last}");
    let (a, b) = reply.split_at(reply.len() / 2);
    let mut sse = String::new();
    for delta in ["", a, b] {
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": delta}}]})
        ));
    }
    sse.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
    ));
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

async fn serve_fake(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    origin
}

fn agent(value: Value) -> AgentConfig {
    serde_json::from_value(value).expect("agent config")
}

struct World {
    base: String,
    client: reqwest::Client,
    lark: Recorder,
    openai: Recorder,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl World {
    async fn start(database_url: &str) -> World {
        let lark = Recorder::default();
        let lark_origin = serve_fake(
            axum::Router::new()
                .fallback(fake_lark)
                .with_state(lark.clone()),
        )
        .await;
        let openai = Recorder::default();
        let openai_origin = serve_fake(
            axum::Router::new()
                .route("/v1/chat/completions", axum::routing::post(mock_openai))
                .with_state(openai.clone()),
        )
        .await;

        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config
            .plugins
            .base_urls
            .insert("https://open.feishu.cn".into(), lark_origin);
        config.agents.insert(
            "gpt".into(),
            agent(json!({
                "kind": "openai", "base_url": openai_origin, "model": "e2e-model",
                "api_key": "sk-e2e", "system_prompt": "You are terse.", "timeout_ms": 5000,
            })),
        );
        // An agent whose endpoint is unreachable (nothing listens on port 1).
        config.agents.insert(
            "gone".into(),
            agent(json!({
                "kind": "openai", "base_url": "http://127.0.0.1:1", "model": "e2e-model",
                "api_key": "sk-e2e", "timeout_ms": 5000,
            })),
        );
        config.agents.insert(
            "shelved".into(),
            agent(json!({"kind": "echo", "archived": true})),
        );
        config.agents.insert(
            "team".into(),
            agent(json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000})),
        );
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
            lark,
            openai,
            stop: Some(stop),
            task,
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
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
        let status = response.status();
        let value: Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// Creates an open installation bound to `agent` with app id `app_id` (its routing key);
    /// on-install learns the bot from the fake Lark. Returns its id.
    async fn installation(&self, app_id: &str, agent: &str) -> String {
        let created = self
            .admin(
                reqwest::Method::POST,
                "/installations",
                Some(json!({
                    "channel": "lark", "routing_key": app_id, "name": agent,
                    "agent": agent, "debounce_ms": 150,
                    // Lark's on-install would pick zh_cn (a Feishu app): these tests read English.
                    "config": {"app_id": app_id, "locale": "en"},
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "e2e-secret",
                    },
                })),
            )
            .await;
        assert_eq!(
            (
                &created["config"]["bot_open_id"],
                &created["config"]["bot_name"]
            ),
            (&json!(lark::BOT_OPEN_ID), &json!(BOT_NAME)),
            "on-install learned the bot: {created}"
        );
        created["id"].as_str().unwrap().to_string()
    }

    /// Delivers one p2p text message from chat `chat_id` to installation `id` (`app_id`).
    async fn message(&self, id: &str, app_id: &str, chat_id: &str, message_id: &str, text: &str) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        event["header"]["app_id"] = json!(app_id);
        event["event"]["message"]["chat_id"] = json!(chat_id);
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&event).unwrap(), [3; 16]);
        let mut request = self
            .client
            .post(format!("{}/hooks/lark/{id}", self.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        let outcome = response
            .headers()
            .get(switchboard::api::OUTCOME_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(response.status(), 200);
        assert_eq!(outcome.as_deref(), Some("ingested"));
    }

    /// The one session of installation `id`, with its messages.
    async fn session(&self, id: &str) -> Value {
        let sessions = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={id}"),
                None,
            )
            .await;
        sessions[0].clone()
    }

    /// The run status of a session (as listed by [`World::session`]) from the admin API's
    /// session record: state, `last_error`, ….
    async fn run_status(&self, session: &Value) -> Value {
        let id = session["session"]["id"].as_str().unwrap();
        self.admin(reqwest::Method::GET, &format!("/sessions/{id}"), None)
            .await["session"]
            .clone()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// Waits (up to 15 s) until `check` finds what it looks for.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(found) = check() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The host's words for `notice` in English (no operator overrides here).
fn host_text(notice: Notice) -> String {
    NoticeTexts::default().render(&notice, "en")
}

/// The host's English words for `notice`, naming the bot as on-install learned it from the
/// fake Lark (`bot_name`).
fn bot_text(notice: Notice) -> String {
    NoticeTexts::default().render_for(&notice, "en", Some("E2E Helper"))
}

/// The notice card's text and its note (the run reference, if any).
fn card_text(card: &Seen) -> (String, Option<String>) {
    assert_eq!(card.body["msg_type"], "interactive", "{card:?}");
    let content: Value = serde_json::from_str(card.body["content"].as_str().unwrap()).unwrap();
    let text = content["elements"][0]["text"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("a card with text: {content}"))
        .to_string();
    let note = content["elements"][1]["elements"][0]["content"]
        .as_str()
        .map(str::to_string);
    (text, note)
}

/// Asserts that `card` is the run-error notice: exactly the host's text with the run's
/// reference, which the card also shows as its note.
fn assert_run_error_card(card: &Seen, name: &str) {
    let (text, reference) = card_text(card);
    let reference = reference.unwrap_or_else(|| panic!("{name}: a reference note: {card:?}"));
    assert!(!reference.is_empty(), "{name}");
    let mut notice = Notice::new(NoticeKind::RunError);
    notice.reference = Some(reference);
    assert_eq!(text, host_text(notice), "{name}");
}

/// The message sends (chat-level or DM) the fake Lark received for `receive_id`.
fn sends_to(seen: &[Seen], receive_id: &str) -> Vec<Seen> {
    seen.iter()
        .filter(|s| {
            s.method == "POST"
                && s.uri
                    .starts_with("/open-apis/im/v1/messages?receive_id_type=")
                && s.body["receive_id"] == receive_id
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn openai_reply_reaches_lark_and_a_failed_run_sends_the_error_card() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let id = world.installation("cli_e2egpt", "gpt").await;
        // The first send fails with a 502: the delivery is retried and lands.
        world.lark.1.store(1, std::sync::atomic::Ordering::SeqCst);
        world
            .message(&id, "cli_e2egpt", "oc_gpt_chat", "om_gpt_1", "hello there")
            .await;

        let lark = world.lark.clone();
        let send = eventually("the reply at fake Lark", || {
            sends_to(&lark.all(), "oc_gpt_chat").into_iter().next()
        })
        .await;
        assert_eq!(
            send.uri, "/open-apis/im/v1/messages?receive_id_type=chat_id",
            "{name}"
        );
        let lark = world.lark.clone();
        let attempts = eventually("the retried send", || {
            let sends = sends_to(&lark.all(), "oc_gpt_chat");
            (sends.len() >= 2).then_some(sends)
        })
        .await;
        assert_eq!(
            attempts[0].body, attempts[1].body,
            "{name}: the same message again"
        );
        assert_eq!(
            send.authorization.as_deref(),
            Some("Bearer t-e2e"),
            "{name}"
        );
        assert_eq!(send.body["msg_type"], "text", "{name}");
        assert_eq!(
            send.body["content"],
            json!({"text": "gpt says: hello there"}).to_string(),
            "{name}"
        );
        // The model saw the system prompt then the user's message, with the configured model
        // and key, streaming.
        let call = world.openai.all()[0].clone();
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer sk-e2e"),
            "{name}"
        );
        assert_eq!(call.body["model"], "e2e-model", "{name}");
        assert_eq!(call.body["stream"], true, "{name}");
        assert_eq!(
            call.body["messages"],
            json!([
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello there"},
            ]),
            "{name}"
        );
        // The typing indicator went on for the message and came off with the reply.
        let seen = world.lark.all();
        let added = seen
            .iter()
            .position(|s| {
                s.method == "POST" && s.uri == "/open-apis/im/v1/messages/om_gpt_1/reactions"
            })
            .unwrap_or_else(|| panic!("{name}: typing reaction added: {seen:#?}"));
        assert_eq!(
            seen[added].body,
            json!({"reaction_type": {"emoji_type": "Typing"}}),
            "{name}"
        );
        let lark = world.lark.clone();
        eventually("the typing reaction removed", || {
            lark.all()
                .iter()
                .any(|s| {
                    s.method == "DELETE"
                        && s.uri == "/open-apis/im/v1/messages/om_gpt_1/reactions/r_e2e"
                })
                .then_some(())
        })
        .await;
        let session = world.session(&id).await;
        assert_eq!(session["session"]["run_state"], "idle", "{name}");
        let messages: Vec<(String, String)> = session["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["body"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            messages,
            vec![
                ("user".to_string(), "hello there".to_string()),
                ("assistant".to_string(), "gpt says: hello there".to_string()),
            ],
            "{name}"
        );

        // A subscriber of the session's event stream sees channel messages arrive live.
        let session_id = session["session"]["id"].as_str().unwrap().to_string();
        let last_id = session["messages"][1]["id"].as_i64().unwrap();
        let mut stream = world
            .client
            .get(format!(
                "{}/api/sessions/{session_id}/events?after={last_id}",
                world.base
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200, "{name}");

        // A failing model: the session goes to error and the chat gets the error card.
        world
            .message(
                &id,
                "cli_e2egpt",
                "oc_gpt_chat",
                "om_gpt_2",
                "please fail now",
            )
            .await;
        let mut received = String::new();
        while !received.contains("\"body\":\"please fail now\"") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("{name}: no message event; stream so far: {received}"))
                .unwrap()
                .expect("the stream stays open");
            received.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(received.contains("event: message"), "{name}: {received}");
        drop(stream);
        let lark = world.lark.clone();
        let card = eventually("the error card", || {
            sends_to(&lark.all(), "oc_gpt_chat")
                .into_iter()
                .find(|s| s.body["msg_type"] == "interactive")
        })
        .await;
        let content = card.body["content"].as_str().unwrap();
        assert!(
            !content.contains("overloaded") && content.contains("reference"),
            "{name}: the card gives a reference, not the failure: {content}"
        );
        assert_run_error_card(&card, name);
        let session = world.session(&id).await;
        assert_eq!(session["session"]["run_state"], "error", "{name}");
        let status = world.run_status(&session).await;
        assert!(
            status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("the model is overloaded")),
            "{name}: the operator sees the detail: {status}"
        );
        world.stop().await;
    }
}

/// Issue 13: an error card for an unreachable agent endpoint shows the user a reference, never
/// the URL or the OS error; the operator finds the detail in the admin API.
#[tokio::test]
async fn an_unreachable_agent_gives_an_error_card_without_internal_details() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;
        let id = world.installation("cli_e2egone", "gone").await;
        world
            .message(&id, "cli_e2egone", "oc_gone", "om_gone_1", "are you there?")
            .await;
        let lark = world.lark.clone();
        let card = eventually("the error card", || {
            sends_to(&lark.all(), "oc_gone")
                .into_iter()
                .find(|s| s.body["msg_type"] == "interactive")
        })
        .await;
        let content = card.body["content"].as_str().unwrap().to_lowercase();
        for internal in [
            "127.0.0.1",
            "http",
            "refused",
            "connect",
            "os error",
            "error sending",
        ] {
            assert!(
                !content.contains(internal),
                "{name}: the card shows {internal:?}: {content}"
            );
        }
        assert!(content.contains("reference"), "{name}: {content}");
        assert_run_error_card(&card, name);
        // The run was released as failed before its card was sent.
        let session = world.session(&id).await;
        assert_eq!(
            session["session"]["run_state"], "error",
            "{name}: {session}"
        );
        let status = world.run_status(&session).await;
        let detail = status["last_error"].as_str().unwrap_or_default();
        assert!(
            detail.contains("127.0.0.1"),
            "{name}: the operator sees the detail: {status}"
        );
        world.stop().await;
    }
}

#[tokio::test]
async fn archived_agent_gets_a_notice_and_no_run_offline_worker_runs_when_a_worker_comes() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let world = World::start(&test_db.url).await;

        // Archived: a notice card, no run, the session settles back to idle.
        let shelved = world.installation("cli_e2eshelved", "shelved").await;
        world
            .message(
                &shelved,
                "cli_e2eshelved",
                "oc_shelved",
                "om_sh_1",
                "anyone there?",
            )
            .await;
        let lark = world.lark.clone();
        let notice = eventually("the archived notice", || {
            sends_to(&lark.all(), "oc_shelved").into_iter().next()
        })
        .await;
        assert_eq!(notice.body["msg_type"], "interactive", "{name}");
        assert_eq!(
            card_text(&notice),
            (bot_text(Notice::new(NoticeKind::AgentArchived)), None),
            "{name}: the host's archived notice"
        );
        // (The flush settles the state before it carries out the notice.)
        let session = world.session(&shelved).await;
        assert_eq!(session["session"]["run_state"], "idle", "{name}: no run");
        assert_eq!(session["messages"].as_array().unwrap().len(), 1, "{name}");

        // Offline worker agent: a notice, the run waits as pending.
        let team = world.installation("cli_e2eteam", "team").await;
        world
            .message(
                &team,
                "cli_e2eteam",
                "oc_team",
                "om_team_1",
                "please review PR 7",
            )
            .await;
        let lark = world.lark.clone();
        let offline = eventually("the offline notice", || {
            sends_to(&lark.all(), "oc_team").into_iter().next()
        })
        .await;
        assert_eq!(offline.body["msg_type"], "interactive", "{name}");
        assert_eq!(
            card_text(&offline),
            (bot_text(Notice::new(NoticeKind::AgentOffline)), None),
            "{name}: the host's offline notice"
        );
        assert_ne!(
            offline.body["content"], notice.body["content"],
            "{name}: offline and archived notices differ"
        );
        let session = world.session(&team).await;
        assert_eq!(session["session"]["run_state"], "pending", "{name}");

        // A worker appears, claims the run, completes it: the reply is delivered.
        let claim: Value = world
            .client
            .post(format!(
                "{}/api/agents/team/runs/claim?wait_ms=2000",
                world.base
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("x-switchboard-worker", "e2e-worker")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        assert_eq!(
            claim["context"]["messages"],
            json!([{"role": "user", "body": "please review PR 7"}]),
            "{name}"
        );
        let complete = world
            .client
            .post(format!(
                "{}/api/agents/team/runs/{}/{}/complete",
                world.base,
                claim["session_id"].as_str().unwrap(),
                claim["run_id"].as_str().unwrap()
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"reply": "LGTM, merging."}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(complete.status(), 200, "{name}");
        let lark = world.lark.clone();
        let reply = eventually("the worker's reply at fake Lark", || {
            sends_to(&lark.all(), "oc_team")
                .into_iter()
                .find(|s| s.body["msg_type"] == "text")
        })
        .await;
        assert_eq!(
            reply.body["content"],
            json!({"text": "LGTM, merging."}).to_string(),
            "{name}"
        );
        world.stop().await;
    }
}
