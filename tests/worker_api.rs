//! The worker HTTP API over real HTTP (router on 127.0.0.1:0, reqwest): authentication, the
//! long-poll claim, context, heartbeats, streamed parts, complete / fail with ownership fencing,
//! the run-end observer, and worker presence (shared through the database, clock injected).
//! Every test runs on SQLite and PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/time.rs"]
mod time;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::agents::{AgentConfig, AgentPresence, AgentRegistry, AgentState, agent_state};
use switchboard::api::WorkerApi;
use switchboard::api::worker::WorkerApiSettings;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::domain::Clock;
use switchboard::runs::{RunEnded, RunOutcome, SessionEvent};
use switchboard::store::{
    AppendRequest, ChatKind, NewInstallation, RunState, SessionKey, TurnKind,
};
use time::ManualClock;

const TOKEN: &str = "bot-worker-token-0123456789";
const OTHER_TOKEN: &str = "other-worker-token-0123456789";
const ARCHIVED_TOKEN: &str = "archived-worker-token-0123456789";
const PROMPT: &str = "You are a helpful bot.";
const OFFLINE_AFTER_MS: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;

fn worker_agent(token: &str) -> AgentConfig {
    AgentConfig {
        kind: Some("worker".into()),
        token: Some(token.into()),
        offline_after_ms: Some(OFFLINE_AFTER_MS as u64),
        ..Default::default()
    }
}

fn agents_config() -> switchboard::agents::AgentsConfig {
    let mut agents = switchboard::agents::AgentsConfig::new();
    agents.insert(
        "bot".into(),
        AgentConfig {
            system_prompt: Some(PROMPT.into()),
            ..worker_agent(TOKEN)
        },
    );
    agents.insert("other".into(), worker_agent(OTHER_TOKEN));
    agents.insert(
        "retired".into(),
        AgentConfig {
            archived: true,
            ..worker_agent(ARCHIVED_TOKEN)
        },
    );
    agents
}

/// A host serving the real router, with a recording observer and a manual clock.
struct Host {
    base: String,
    http: reqwest::Client,
    app_state: switchboard::api::AppState,
    clock: Arc<ManualClock>,
    registry: Arc<AgentRegistry>,
    ended: Arc<Mutex<Vec<RunEnded>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(test_db: &db::TestDb) -> Host {
        Host::start_with(test_db, Duration::from_secs(3600)).await
    }

    /// A host that also loads the plugins in `dir`.
    async fn start_with_plugins(test_db: &db::TestDb, dir: &Path) -> Host {
        Host::start_config(test_db, Duration::from_secs(3600), Some(dir)).await
    }

    /// A host whose waiting claims re-check for pending runs every `repoll_interval`.
    async fn start_with(test_db: &db::TestDb, repoll_interval: Duration) -> Host {
        Host::start_config(test_db, repoll_interval, None).await
    }

    async fn start_config(
        test_db: &db::TestDb,
        repoll_interval: Duration,
        plugins: Option<&Path>,
    ) -> Host {
        let mut config = Config::default();
        config.plugins.dir = plugins.map(Path::to_path_buf);
        config.database.url = test_db.url.clone();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir =
            Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"));
        config.agents = agents_config();
        let clock = ManualClock::new(T0);
        let mut app = App::build(&config, clock.clone())
            .await
            .expect("app builds");
        let registry = Arc::new(AgentRegistry::from_config(&config.agents).unwrap());
        let ended: Arc<Mutex<Vec<RunEnded>>> = Arc::default();
        let recorder = ended.clone();
        // The real API, rebuilt with a recording observer and without the safety re-poll (so a
        // claim that wakes was woken by the pending signal).
        let workers = WorkerApi::new(
            app.state.runs.clone(),
            registry.clone(),
            AgentPresence::new(app.state.db.workers(), clock.clone()),
        )
        .with_observer(Arc::new(move |e: RunEnded| {
            recorder.lock().unwrap().push(e)
        }))
        .with_settings(WorkerApiSettings { repoll_interval });
        app.state.workers = Some(workers);
        let router = app.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Host {
            base,
            http: reqwest::Client::new(),
            app_state: app.state,
            clock,
            registry,
            ended,
            _server: server,
        }
    }

    /// A session of a new installation bound to `agent`.
    async fn session(&self, agent: &str) -> String {
        self.session_of("lark", agent).await
    }

    /// A session of a new `channel` installation bound to `agent`.
    async fn session_of(&self, channel: &str, agent: &str) -> String {
        let installation = self
            .app_state
            .installations
            .create(
                &NewInstallation {
                    channel: channel.into(),
                    routing_key: format!("cli_{}", uuid::Uuid::new_v4().simple()),
                    agent: agent.into(),
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .await
            .unwrap();
        self.app_state
            .records
            .ensure_session(
                &installation.id,
                &SessionKey::new("oc_chat", ChatKind::Direct, None),
                "chat",
                self.clock.now_ms(),
            )
            .await
            .unwrap()
            .id
    }

    /// Stores a user message through the run service (the session becomes pending).
    async fn submit(&self, session: &str, body: &str) {
        self.app_state.runs.submit(session, body).await.unwrap();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-switchboard-worker", "test-worker");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn claim(&self, agent: &str, token: &str, wait_ms: u64) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/agents/{agent}/runs/claim?wait_ms={wait_ms}"),
            Some(token),
            None,
        )
        .await
    }

    /// POST `…/runs/{session}/{run}/{action}` as agent `bot`.
    async fn run_call(&self, claim: &Value, action: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &run_path("bot", claim, action),
            Some(TOKEN),
            Some(body),
        )
        .await
    }

    async fn state(&self, session: &str) -> (RunState, Option<String>) {
        let status = self.app_state.runs.status(session).await.unwrap().unwrap();
        (status.state, status.last_error)
    }

    async fn bodies(&self, session: &str) -> Vec<(String, String)> {
        self.app_state
            .records
            .list_messages(session)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.role, m.body))
            .collect()
    }

    fn ended(&self) -> Vec<RunEnded> {
        self.ended.lock().unwrap().clone()
    }
}

fn run_path(agent: &str, claim: &Value, action: &str) -> String {
    format!(
        "/api/agents/{agent}/runs/{}/{}/{action}",
        claim["session_id"].as_str().unwrap(),
        claim["run_id"].as_str().unwrap()
    )
}

#[tokio::test]
async fn requests_without_the_agents_token_are_refused() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;

        let (status, body) = host
            .call(
                reqwest::Method::POST,
                "/api/agents/bot/runs/claim?wait_ms=0",
                None,
                None,
            )
            .await;
        assert_eq!(status, 401, "{name}: missing token: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("Authorization"),
            "{name}: {body}"
        );
        assert!(
            body["hint"].as_str().unwrap().contains("[agents.bot]"),
            "{name}: {body}"
        );

        let (status, body) = host.claim("bot", "not-the-token-at-all", 0).await;
        assert_eq!(status, 401, "{name}: wrong token: {body}");
        // Another agent's (valid) token does not open this agent.
        let (status, _) = host.claim("bot", OTHER_TOKEN, 0).await;
        assert_eq!(status, 401, "{name}: other agent's token");

        let (status, body) = host.claim("nobody", TOKEN, 0).await;
        assert_eq!(status, 404, "{name}: unknown agent: {body}");
        let (status, body) = host.claim("echo", TOKEN, 0).await;
        assert_eq!(status, 409, "{name}: built-in agent: {body}");

        // Nothing was claimed by any of those.
        assert_eq!(host.state(&session).await.0, RunState::Pending, "{name}");
        // And the session's run is invisible to another agent's worker.
        let (status, claim) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 200, "{name}: {claim}");
        let (status, body) = host
            .call(
                reqwest::Method::POST,
                &run_path("other", &claim, "heartbeat"),
                Some(OTHER_TOKEN),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 404, "{name}: another agent's run: {body}");
    }
}

#[tokio::test]
async fn archived_agents_are_refused() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("retired").await;
        host.submit(&session, "hello").await;
        let (status, body) = host.claim("retired", ARCHIVED_TOKEN, 0).await;
        assert_eq!(status, 410, "{name}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("archived agents are refused"),
            "{name}: {body}"
        );
        assert_eq!(host.state(&session).await.0, RunState::Pending, "{name}");
        assert_eq!(
            host.app_state
                .db
                .workers()
                .last_seen("retired")
                .await
                .unwrap(),
            None,
            "{name}: a refused worker is not present"
        );
    }
}

#[tokio::test]
async fn a_claim_with_nothing_pending_answers_204_after_the_wait() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let started = std::time::Instant::now();
        let (status, body) = host.claim("bot", TOKEN, 200).await;
        assert_eq!(status, 204, "{name}: {body}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{name}: the claim waited for wait_ms"
        );
        // Another agent's pending run is not this agent's.
        let session = host.session("other").await;
        host.submit(&session, "for the other agent").await;
        let (status, _) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 204, "{name}");
    }
}

#[tokio::test]
async fn a_waiting_claim_wakes_when_a_run_becomes_pending() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let host = Arc::new(Host::start(&test_db).await);
        let session = host.session("bot").await;
        let waiting = {
            let host = host.clone();
            tokio::spawn(async move { host.claim("bot", TOKEN, 60_000).await })
        };
        // Still waiting: nothing is pending.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "{name}: the claim returned early");
        host.submit(&session, "wake up").await;
        // The re-poll interval is an hour: only the pending signal can end the wait this soon.
        let (status, claim) = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the claim was woken")
            .unwrap();
        assert_eq!(status, 200, "{name}: {claim}");
        assert_eq!(claim["session_id"], session.as_str(), "{name}");
        assert_eq!(claim["agent"], "bot", "{name}");
        assert_eq!(claim["worker_id"], "test-worker", "{name}");
        assert_eq!(claim["context"]["messages"][0]["body"], "wake up", "{name}");
        assert_eq!(host.state(&session).await.0, RunState::Running, "{name}");
    }
}

#[tokio::test]
async fn a_waiting_claim_finds_runs_made_pending_elsewhere_by_re_polling() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let host = Arc::new(Host::start_with(&test_db, Duration::from_millis(50)).await);
        let session = host.session("bot").await;
        let waiting = {
            let host = host.clone();
            tokio::spawn(async move { host.claim("bot", TOKEN, 60_000).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "{name}: the claim returned early");
        // Straight through the store (as another replica would): no in-process signal.
        host.app_state
            .runs
            .store()
            .enqueue_api(&session, "from elsewhere", 20, T0)
            .await
            .unwrap();
        let (status, claim) = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the re-poll found the run")
            .unwrap();
        assert_eq!(status, 200, "{name}: {claim}");
        assert_eq!(
            claim["context"]["messages"][0]["body"], "from elsewhere",
            "{name}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_a_json_error() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;
        let huge = "x".repeat(switchboard::api::worker::WORKER_MAX_BODY_BYTES + 1);
        let (status, body) = host
            .run_call(&claim, "complete", json!({ "reply": huge }))
            .await;
        assert_eq!(status, 413, "{name}: {body}");
        assert!(
            body["hint"].as_str().unwrap().contains("bytes"),
            "{name}: {body}"
        );
        assert_eq!(
            host.bodies(&session).await.len(),
            1,
            "{name}: nothing stored"
        );
        assert_eq!(host.state(&session).await.0, RunState::Running, "{name}");
        // Within the cap (larger than the host's general body limit) it is accepted.
        let big = "y".repeat(2 << 20);
        let (status, body) = host
            .run_call(&claim, "complete", json!({ "reply": big }))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
}

#[tokio::test]
async fn the_context_has_the_system_prompt_and_the_messages_in_order() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "first question").await;
        let (status, first) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 200, "{name}: {first}");
        assert!(
            first["heartbeat_interval_ms"].as_u64().unwrap() > 0,
            "{name}"
        );
        assert!(
            first["stale_after_ms"].as_u64().unwrap()
                > first["heartbeat_interval_ms"].as_u64().unwrap(),
            "{name}"
        );
        let (status, _) = host
            .run_call(&first, "complete", json!({"reply": "first answer"}))
            .await;
        assert_eq!(status, 200, "{name}");
        host.submit(&session, "second question").await;

        let (status, claim) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 200, "{name}: {claim}");
        let expected = json!({
            "system_prompt": PROMPT,
            "messages": [
                {"role": "user", "body": "first question"},
                {"role": "assistant", "body": "first answer"},
                {"role": "user", "body": "second question"},
            ],
        });
        assert_eq!(claim["context"], expected, "{name}");
        assert_ne!(claim["run_id"], first["run_id"], "{name}: a new run id");

        // Re-read: the same context.
        let (status, again) = host
            .call(
                reqwest::Method::GET,
                &run_path("bot", &claim, "context"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{name}: {again}");
        assert_eq!(again, expected, "{name}");
        // The previous run's context is no longer readable.
        let (status, body) = host
            .call(
                reqwest::Method::GET,
                &run_path("bot", &first, "context"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 409, "{name}: {body}");
    }
}

#[tokio::test]
async fn a_command_turn_reaches_the_worker_with_its_name_and_args() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        let installation = host
            .app_state
            .records
            .get_session(&session)
            .await
            .unwrap()
            .unwrap()
            .installation_id;
        // What the dispatcher stores for `/issue Login fails\nOn Safari.`: the host does not
        // run `issue` itself, so the agent gets it as a command turn.
        let request = AppendRequest {
            session_id: session.clone(),
            installation_id: installation,
            body: "/issue Login fails\nOn Safari.".into(),
            command_body: "/issue Login fails\nOn Safari.".into(),
            channel_message_id: "om_cmd".into(),
            thread_id: None,
            sender_id: "u1".into(),
            turn: TurnKind::Command {
                name: "issue".into(),
                args: "Login fails\nOn Safari.".into(),
            },
            attachments: Vec::new(),
            debounce_ms: 3_000,
        };
        host.app_state
            .records
            .append(&request, None, host.clock.now_ms())
            .await
            .unwrap();
        host.submit(&session, "thanks").await;
        let (status, claim) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 200, "{name}: {claim}");
        assert_eq!(
            claim["context"]["messages"],
            json!([
                {"role": "user", "body": "/issue Login fails\nOn Safari.",
                 "meta": {"command": {"name": "issue", "args": "Login fails\nOn Safari."}}},
                {"role": "user", "body": "thanks"},
            ]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_worker_fetches_only_the_attachments_of_its_context() {
    let test_db = db::sqlite_file_db().await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR).join("switchboard_testing.wasm"),
        plugins.path().join("switchboard_testing.wasm"),
    )
    .unwrap();
    let host = Host::start_with_plugins(&test_db, plugins.path()).await;
    let session = host.session_of("testing", "bot").await;
    let installation = host
        .app_state
        .records
        .get_session(&session)
        .await
        .unwrap()
        .unwrap()
        .installation_id;
    let request = AppendRequest {
        session_id: session.clone(),
        installation_id: installation,
        body: "[Image]".into(),
        command_body: String::new(),
        channel_message_id: "om_pic".into(),
        thread_id: None,
        sender_id: "u1".into(),
        turn: TurnKind::Plain,
        attachments: vec![
            json!({"kind": "image", "name": null, "mime": null, "size": null, "ref": "img_1"}),
        ],
        debounce_ms: 3_000,
    };
    host.app_state
        .records
        .append(&request, None, host.clock.now_ms())
        .await
        .unwrap();
    host.submit(&session, "what is in it?").await;
    let (status, claim) = host.claim("bot", TOKEN, 0).await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(
        claim["context"]["messages"][0]["meta"]["attachments"][0]["ref"], "img_1",
        "{claim}"
    );
    let fetch = |message: &str, reference: &str| {
        format!(
            "{}?message={message}&ref={reference}",
            run_path("bot", &claim, "attachment")
        )
    };
    let response = host
        .http
        .get(format!("{}{}", host.base, fetch("om_pic", "img_1")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/plain"
    );
    // The testing plugin answers with the ref itself: the bytes came through the plugin.
    assert_eq!(response.text().await.unwrap(), "img_1");
    // Anything not listed in the run's context is refused, whatever the plugin would answer.
    for (message, reference) in [("om_pic", "img_2"), ("om_other", "img_1")] {
        let (status, body) = host
            .call(
                reqwest::Method::GET,
                &fetch(message, reference),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 404, "{message} {reference}: {body}");
    }
    let (status, _) = host
        .call(reqwest::Method::GET, &fetch("om_pic", "img_1"), None, None)
        .await;
    assert_eq!(status, 401, "no token, no bytes");
}

#[tokio::test]
async fn heartbeats_continue_until_the_run_is_interrupted() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;

        host.clock.set(T0 + 5_000);
        let (status, body) = host.run_call(&claim, "heartbeat", json!({})).await;
        assert_eq!((status, body), (200, json!({"continue": true})), "{name}");
        let heartbeat_at = host
            .app_state
            .runs
            .status(&session)
            .await
            .unwrap()
            .unwrap()
            .heartbeat_at_ms;
        assert_eq!(
            heartbeat_at,
            Some(T0 + 5_000),
            "{name}: the heartbeat was stored"
        );
        assert!(host.ended().is_empty(), "{name}");

        host.app_state.runs.interrupt(&session).await.unwrap();
        let (status, body) = host.run_call(&claim, "heartbeat", json!({})).await;
        assert_eq!(status, 409, "{name}: {body}");
        assert_eq!(body["continue"], false, "{name}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("no longer owned"),
            "{name}"
        );
        let ended = host.ended();
        assert_eq!(ended.len(), 1, "{name}");
        assert_eq!(ended[0].outcome, RunOutcome::Lost, "{name}");
        assert_eq!(ended[0].session_id, session, "{name}");
        assert_eq!(ended[0].run_id, claim["run_id"].as_str().unwrap(), "{name}");
    }
}

#[tokio::test]
async fn parts_reach_subscribers_only_while_the_worker_owns_the_run() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;
        let run_id = claim["run_id"].as_str().unwrap().to_owned();
        let (_, mut events) = host.app_state.runs.hub().subscribe(&session);

        for text in ["Hel", "lo"] {
            let (status, body) = host.run_call(&claim, "parts", json!({"text": text})).await;
            assert_eq!(status, 200, "{name}: {body}");
        }
        let mut received = Vec::new();
        while received.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("a part arrives")
                .unwrap();
            if let SessionEvent::MessagePart { run_id: r, text } = event {
                assert_eq!(r, run_id, "{name}");
                received.push(text);
            }
        }
        assert_eq!(received, ["Hel", "lo"], "{name}");

        // A malformed part is refused with a JSON error.
        let (status, body) = host.run_call(&claim, "parts", json!({"txt": "x"})).await;
        assert_eq!(status, 422, "{name}: {body}");
        assert!(body["hint"].is_string(), "{name}: {body}");

        host.app_state.runs.interrupt(&session).await.unwrap();
        let (status, body) = host
            .run_call(&claim, "parts", json!({"text": "after"}))
            .await;
        assert_eq!(status, 409, "{name}: {body}");
        assert!(
            host.app_state
                .runs
                .hub()
                .buffered_parts(&session)
                .is_empty(),
            "{name}"
        );
    }
}

/// Issue 14: a worker that retries `complete` after a client timeout races itself. Whatever the
/// interleaving, the first call wins: one reply stored, one outbox row (one delivery), the
/// others get 409 and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completes_store_and_deliver_one_reply() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        for calls in [2usize, 4] {
            let session = host.session("bot").await;
            host.submit(&session, "hello").await;
            let (_, claim) = host.claim("bot", TOKEN, 0).await;
            let answers = futures_util::future::join_all((0..calls).map(|i| {
                host.run_call(
                    &claim,
                    "complete",
                    json!({ "reply": format!("answer {i}") }),
                )
            }))
            .await;
            let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
            statuses.sort();
            let mut expected = vec![409; calls - 1];
            expected.insert(0, 200);
            assert_eq!(statuses, expected, "{name}: {calls} calls: {answers:?}");
            let replies: Vec<String> = host
                .bodies(&session)
                .await
                .into_iter()
                .filter(|(role, _)| role == "assistant")
                .map(|(_, body)| body)
                .collect();
            assert_eq!(replies.len(), 1, "{name}: {calls} calls: {replies:?}");
            let rows = host
                .app_state
                .db
                .outbox()
                .list(None, Some(&session), 10)
                .await
                .unwrap();
            assert_eq!(
                rows.len(),
                1,
                "{name}: {calls} calls: one delivery: {rows:?}"
            );
            assert_eq!(
                rows[0].content,
                switchboard::store::OutboxContent::Reply {
                    text: replies[0].clone()
                },
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn complete_stores_the_reply_and_the_session_goes_idle() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;
        let (status, body) = host
            .run_call(
                &claim,
                "complete",
                json!({"reply": "Hello!", "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["state"], "idle", "{name}: {body}");
        assert_eq!(
            host.bodies(&session).await,
            [
                ("user".to_owned(), "hello".to_owned()),
                ("assistant".to_owned(), "Hello!".to_owned())
            ],
            "{name}"
        );
        assert_eq!(host.state(&session).await, (RunState::Idle, None), "{name}");
        let ended = host.ended();
        assert_eq!(ended.len(), 1, "{name}");
        let RunOutcome::Completed { reply, usage } = &ended[0].outcome else {
            panic!("{name}: {ended:?}");
        };
        assert_eq!(reply.as_ref().unwrap().body, "Hello!", "{name}");
        assert_eq!(
            reply.as_ref().unwrap().id,
            body["message_id"].as_i64().unwrap(),
            "{name}"
        );
        let usage = usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.total_tokens), (7, 9), "{name}");
        assert_eq!(ended[0].agent, "bot", "{name}");

        // Completing again: the run is over.
        let (status, _) = host
            .run_call(&claim, "complete", json!({"reply": "twice"}))
            .await;
        assert_eq!(status, 409, "{name}");
        assert_eq!(host.bodies(&session).await.len(), 2, "{name}");
    }
}

#[tokio::test]
async fn fail_sets_the_error_state_and_last_error() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;
        let (status, body) = host
            .run_call(&claim, "fail", json!({"error": "model exploded"}))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["state"], "error", "{name}");
        assert_eq!(
            host.state(&session).await,
            (RunState::Error, Some("model exploded".to_owned())),
            "{name}"
        );
        assert_eq!(
            host.bodies(&session).await.len(),
            1,
            "{name}: no reply stored"
        );
        let ended = host.ended();
        assert_eq!(
            ended[0].outcome,
            RunOutcome::Failed {
                error: "model exploded".into()
            },
            "{name}"
        );
        // Failing again: not the owner any more.
        let (status, _) = host
            .run_call(&claim, "fail", json!({"error": "again"}))
            .await;
        assert_eq!(status, 409, "{name}");
        assert_eq!(host.ended().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn complete_after_losing_ownership_changes_nothing() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, stale) = host.claim("bot", TOKEN, 0).await;
        // An edit interrupts the run and makes the session pending; another worker takes it.
        let first = host
            .app_state
            .records
            .list_messages(&session)
            .await
            .unwrap()[0]
            .id;
        host.app_state
            .runs
            .edit_message(&session, first, "hello, edited")
            .await
            .unwrap();
        let (status, current) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 200, "{name}");
        let before = host.app_state.runs.status(&session).await.unwrap().unwrap();

        let (status, body) = host
            .run_call(&stale, "complete", json!({"reply": "too late"}))
            .await;
        assert_eq!(status, 409, "{name}: {body}");
        assert!(
            body["hint"].as_str().unwrap().contains("stop"),
            "{name}: {body}"
        );
        let (status, _) = host
            .run_call(&stale, "fail", json!({"error": "late"}))
            .await;
        assert_eq!(status, 409, "{name}");
        assert_eq!(
            host.bodies(&session).await,
            [("user".to_owned(), "hello, edited".to_owned())],
            "{name}: no reply stored"
        );
        let after = host.app_state.runs.status(&session).await.unwrap().unwrap();
        assert_eq!(after, before, "{name}: the current run is untouched");
        assert_eq!(
            after.run_id.as_deref(),
            current["run_id"].as_str(),
            "{name}"
        );
        assert!(host.ended().is_empty(), "{name}: nothing to deliver");
    }
}

#[tokio::test]
async fn presence_is_offline_before_a_poll_online_after_and_offline_after_the_window() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db).await;
        // Another replica's view: its own presence handle on the same database.
        let replica = AgentPresence::new(test_db.db.workers(), host.clock.clone());
        let state = |now| agent_state(&host.registry, &replica, "bot", now);

        assert_eq!(state(T0).await, AgentState::Offline, "{name}: never polled");
        let (status, _) = host.claim("bot", TOKEN, 0).await;
        assert_eq!(status, 204, "{name}");
        assert_eq!(
            state(T0).await,
            AgentState::Online,
            "{name}: right after a claim"
        );
        assert_eq!(replica.last_seen("bot").await, Some(T0), "{name}");

        host.clock.set(T0 + OFFLINE_AFTER_MS);
        assert_eq!(
            state(T0 + OFFLINE_AFTER_MS).await,
            AgentState::Online,
            "{name}: edge"
        );
        host.clock.set(T0 + OFFLINE_AFTER_MS + 1);
        assert_eq!(
            state(T0 + OFFLINE_AFTER_MS + 1).await,
            AgentState::Offline,
            "{name}: no poll within the window"
        );
        // Any authenticated call counts as a poll.
        let session = host.session("bot").await;
        host.submit(&session, "hello").await;
        let (_, claim) = host.claim("bot", TOKEN, 0).await;
        host.clock.set(T0 + 3 * OFFLINE_AFTER_MS);
        host.run_call(&claim, "heartbeat", json!({})).await;
        assert_eq!(
            state(T0 + 3 * OFFLINE_AFTER_MS).await,
            AgentState::Online,
            "{name}"
        );
        // Other agents' states are their own.
        assert_eq!(state(T0).await, AgentState::Online, "{name}");
        assert_eq!(
            agent_state(&host.registry, &replica, "other", T0).await,
            AgentState::Offline,
            "{name}"
        );
        assert_eq!(
            agent_state(&host.registry, &replica, "retired", T0).await,
            AgentState::Archived,
            "{name}"
        );
        assert_eq!(
            agent_state(&host.registry, &replica, "echo", T0).await,
            AgentState::Online,
            "{name}"
        );
    }
}

#[tokio::test]
async fn presence_writes_are_throttled_per_agent() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let clock = ManualClock::new(T0);
        let presence = AgentPresence::new(test_db.db.workers(), clock.clone());
        assert!(
            presence.seen("bot").await.unwrap(),
            "{name}: first sighting writes"
        );
        clock.set(T0 + 500);
        assert!(
            !presence.seen("bot").await.unwrap(),
            "{name}: within a second: no write"
        );
        assert!(presence.seen("other").await.unwrap(), "{name}: per agent");
        // This process still knows the latest sighting; the database has the written one.
        assert_eq!(presence.last_seen("bot").await, Some(T0 + 500), "{name}");
        assert_eq!(
            test_db.db.workers().last_seen("bot").await.unwrap(),
            Some(T0),
            "{name}"
        );
        clock.set(T0 + 1_000);
        assert!(
            presence.seen("bot").await.unwrap(),
            "{name}: a second later: write"
        );
        assert_eq!(
            test_db.db.workers().last_seen("bot").await.unwrap(),
            Some(T0 + 1_000),
            "{name}"
        );
        // A replica with a late clock never moves the stored time back.
        let late = AgentPresence::new(test_db.db.workers(), ManualClock::new(T0 - 10_000));
        assert!(late.seen("bot").await.unwrap(), "{name}");
        assert_eq!(
            test_db.db.workers().last_seen("bot").await.unwrap(),
            Some(T0 + 1_000),
            "{name}"
        );
    }
}
