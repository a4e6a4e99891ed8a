//! Context compaction (SPEC §7): pre-run compaction of built-in agents (echo; openai against a
//! local OpenAI-compatible server), mid-run "compact now" and compaction jobs of a worker driven
//! through the HTTP API, failures and the three-failure stop, manual compaction, threshold 0,
//! events and history. Every test runs on SQLite and PostgreSQL, with a manual clock.

#[path = "support/db.rs"]
mod db;
#[path = "support/time.rs"]
mod time;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use switchboard::agents::{AgentConfig, AgentRegistry, AgentsConfig, CancellationToken};
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::delivery::Delivery;
use switchboard::domain::Clock;
use switchboard::runs::compaction::{SUMMARY_PREFIX, SUMMARY_PROMPT};
use switchboard::runs::executor::{Executor, ExecutorSettings, RunResult};
use switchboard::runs::{EventReceiver, SessionEvent};
use switchboard::store::{ChatKind, CompactionSource, NewInstallation, RunState, SessionKey};
use time::ManualClock;

const ADMIN: &str = "admin-token-for-compaction-tests";
const TOKEN: &str = "bot-worker-token-0123456789";
const PROMPT: &str = "You are terse.";
const T0: i64 = 1_700_000_000_000;

fn agent(value: Value) -> AgentConfig {
    serde_json::from_value(value).unwrap()
}

/// A host serving the real router, a built-in executor and a manual clock.
struct Host {
    base: String,
    http: reqwest::Client,
    state: switchboard::api::AppState,
    clock: Arc<ManualClock>,
    executor: Executor,
    _server: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(test_db: &db::TestDb, agents: AgentsConfig) -> Host {
        let mut config = Config::default();
        config.database.url = test_db.url.clone();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir =
            Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"));
        config.server.admin_token = Some(ADMIN.into());
        config.agents = agents;
        let clock = ManualClock::new(T0);
        let app = App::build(&config, clock.clone())
            .await
            .expect("app builds");
        let registry = Arc::new(AgentRegistry::from_config(&config.agents).unwrap());
        // Installations use a channel without a plugin: deliveries fail at once (not tested here).
        let delivery = Delivery::new(
            app.state.runtime.clone(),
            Arc::new(switchboard::domain::notice::NoticeTexts::default()),
        );
        let executor = Executor::new(
            app.state.runs.clone(),
            registry,
            delivery,
            app.state.installations.clone(),
            ExecutorSettings::default(),
        )
        .with_compactor(app.state.compactor.clone());
        let router = app.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Host {
            base,
            http: reqwest::Client::new(),
            state: app.state,
            clock,
            executor,
            _server: server,
        }
    }

    /// A session of a new installation bound to `agent`, and its installation id.
    async fn session(&self, agent: &str) -> (String, String) {
        let installation = self
            .state
            .installations
            .create(
                &NewInstallation {
                    channel: "none".into(),
                    routing_key: format!("cli_{}", uuid::Uuid::new_v4().simple()),
                    agent: agent.into(),
                    ..Default::default()
                },
                self.clock.now_ms(),
            )
            .await
            .unwrap();
        let session = self
            .state
            .records
            .ensure_session(
                &installation.id,
                &SessionKey::new("oc_chat", ChatKind::Direct, None),
                "chat",
                self.clock.now_ms(),
            )
            .await
            .unwrap()
            .id;
        (session, installation.id)
    }

    fn subscribe(&self, session: &str) -> EventReceiver {
        self.state.runs.hub().subscribe(session).1
    }

    /// Stores a user message (the session becomes pending) and runs the built-in agent once.
    async fn turn(&self, session: &str, agent: &str, body: &str) -> RunResult {
        self.clock.set(self.clock.now_ms() + 1_000);
        self.state.runs.submit(session, body).await.unwrap();
        let claim = self
            .state
            .runs
            .acquire(agent, "test-executor")
            .await
            .unwrap()
            .expect("a pending run");
        assert_eq!(claim.session_id, session);
        self.executor.execute(claim, CancellationToken::new()).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
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

    async fn claim(&self) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/agents/bot/runs/claim?wait_ms=0",
            TOKEN,
            None,
        )
        .await
    }

    /// POST `…/runs/{session}/{run}/{action}` as worker agent `bot`.
    async fn run_call(&self, claim: &Value, action: &str, body: Value) -> (u16, Value) {
        let path = format!(
            "/api/agents/bot/runs/{}/{}/{action}",
            claim["session_id"].as_str().unwrap(),
            claim["run_id"].as_str().unwrap()
        );
        self.call(reqwest::Method::POST, &path, TOKEN, Some(body))
            .await
    }

    async fn context(&self, claim: &Value) -> Value {
        let path = format!(
            "/api/agents/bot/runs/{}/{}/context",
            claim["session_id"].as_str().unwrap(),
            claim["run_id"].as_str().unwrap()
        );
        let (status, body) = self.call(reqwest::Method::GET, &path, TOKEN, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn compact_manually(&self, session: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/sessions/{session}/compact"),
            ADMIN,
            None,
        )
        .await
    }

    async fn run_state(&self, session: &str) -> RunState {
        self.state
            .runs
            .status(session)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    async fn failures(&self, session: &str) -> i64 {
        let store = self.state.db.compaction();
        store.state(session).await.unwrap().unwrap().failures
    }
}

/// Everything published so far.
fn drain(events: &mut EventReceiver) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

/// The compaction events' names, in order.
fn compaction_names(events: &[SessionEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(SessionEvent::name)
        .filter(|name| name.starts_with("compaction"))
        .collect()
}

fn done_boundary(events: &[SessionEvent]) -> Option<i64> {
    events.iter().find_map(|e| match e {
        SessionEvent::CompactionDone {
            boundary_message_id,
            ..
        } => Some(*boundary_message_id),
        _ => None,
    })
}

fn echo_agents(threshold: u32) -> AgentsConfig {
    let mut agents = AgentsConfig::new();
    agents.insert(
        "terse".into(),
        agent(json!({
            "kind": "echo",
            "system_prompt": PROMPT,
            "context_limit_tokens": 100,
            "compact_threshold_percent": threshold,
        })),
    );
    agents
}

#[tokio::test]
async fn pre_run_compaction_summarises_answered_turns_and_keeps_the_tail() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db, echo_agents(50)).await; // compact at 50 tokens
        let (session, installation) = host.session("terse").await;
        let mut events = host.subscribe(&session);
        let a = "a".repeat(60);
        let b = "b".repeat(60);

        // Turn 1: system prompt (8) + 60 chars (19) = 27 estimated tokens: under 50.
        assert!(matches!(
            host.turn(&session, "terse", &a).await,
            RunResult::Replied { .. }
        ));
        assert!(compaction_names(&drain(&mut events)).is_empty(), "{name}");

        // Turn 2: 8 + 19 + 21 (the echo) + 19 = 67 ≥ 50: compacted before the run.
        let result = host.turn(&session, "terse", &b).await;
        let RunResult::Replied { message_id: reply } = result else {
            panic!("{name}: {result:?}");
        };
        let published = drain(&mut events);
        assert_eq!(
            compaction_names(&published),
            ["compaction_start", "compaction_done"],
            "{name}"
        );
        let boundary = done_boundary(&published).unwrap();
        let SessionEvent::CompactionStart {
            source,
            context_tokens,
            limit_tokens,
            threshold_percent,
        } = published
            .iter()
            .find(|e| e.name() == "compaction_start")
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(*source, CompactionSource::PreRun);
        assert_eq!(*context_tokens, 67, "{name}: estimated occupancy");
        assert_eq!((*limit_tokens, *threshold_percent), (Some(100), Some(50)));
        // The hidden boundary is never published; the visible notice is.
        let published_messages: Vec<(i64, String)> = published
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Message { id, kind, .. } => Some((*id, kind.clone())),
                _ => None,
            })
            .collect();
        assert!(
            published_messages
                .iter()
                .all(|(id, kind)| *id != boundary && kind != "summary"),
            "{name}: {published_messages:?}"
        );
        assert!(
            published_messages
                .iter()
                .any(|(id, kind)| *id == boundary + 1 && kind == "notice"),
            "{name}: {published_messages:?}"
        );

        // The run answered on the compacted context: the echo saw only the tail's user turn.
        let history = host.state.records.list_messages(&session).await.unwrap();
        let reply_row = history.iter().find(|m| m.id == reply).unwrap();
        assert_eq!(reply_row.body, format!("echo: {b}"), "{name}");
        let summary = history.iter().find(|m| m.id == boundary).unwrap();
        assert_eq!(
            (summary.role.as_str(), summary.kind.as_str()),
            ("system", "summary")
        );
        assert_eq!(
            summary.body,
            format!(
                "{SUMMARY_PREFIX}summary of 2 messages: user: {}… / assistant: echo: {}…",
                "a".repeat(40),
                "a".repeat(34)
            ),
            "{name}"
        );
        let notice = history.iter().find(|m| m.id == boundary + 1).unwrap();
        assert!(
            notice
                .body
                .starts_with("Context compacted before the run: about 67 of 100 tokens"),
            "{name}: {}",
            notice.body
        );

        // The next run's context: system prompt + summary + the turns after it.
        host.clock.set(host.clock.now_ms() + 1_000);
        host.state.runs.submit(&session, "c").await.unwrap();
        let claim = host
            .state
            .runs
            .acquire("terse", "peek")
            .await
            .unwrap()
            .unwrap();
        let context = host
            .state
            .runs
            .run_context(&session, &claim.run_id)
            .await
            .unwrap()
            .unwrap();
        let shape: Vec<(&str, &str, &str)> = context
            .iter()
            .map(|m| {
                (
                    m.role.as_str(),
                    m.kind.as_str(),
                    &m.body[..m.body.len().min(6)],
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("system", "summary", &SUMMARY_PREFIX[..6]),
                ("user", "message", "bbbbbb"),
                ("assistant", "message", "echo: "),
                ("user", "message", "c"),
            ],
            "{name}"
        );

        // Run it: the context grew again, so it compacts a second time. Only the new notice is
        // published as a message — no retained message (the earlier notice, a system message,
        // or the kept user turn) is published again.
        host.executor.execute(claim, CancellationToken::new()).await;
        let published = drain(&mut events);
        assert_eq!(
            compaction_names(&published),
            ["compaction_start", "compaction_done"],
            "{name}"
        );
        let second = done_boundary(&published).unwrap();
        let start = published
            .iter()
            .position(|e| e.name() == "compaction_start")
            .unwrap();
        let done = published
            .iter()
            .position(|e| e.name() == "compaction_done")
            .unwrap();
        let during: Vec<i64> = published[start..done]
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Message { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(during, [second + 1], "{name}: only the new notice");

        // The history keeps every original message: the admin API and the stream's `after=`.
        let (status, histories) = host
            .call(
                reqwest::Method::GET,
                &format!("/api/sessions?installation={installation}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 200);
        let listed: Vec<String> = histories[0]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        for original in [&a, &format!("echo: {a}"), &b, &format!("echo: {b}")] {
            assert!(listed.contains(original), "{name}: {original} missing");
        }
        let streamed = host
            .state
            .runs
            .store()
            .messages_after(&session, 0)
            .await
            .unwrap();
        assert_eq!(
            streamed.iter().filter(|m| m.kind == "message").count(),
            6,
            "{name}: every turn (3 users, 3 replies)"
        );
        assert!(streamed.iter().all(|m| m.kind != "summary"), "{name}");
        assert_eq!(host.failures(&session).await, 0);
    }
}

#[tokio::test]
async fn threshold_zero_never_compacts() {
    for test_db in db::test_databases().await {
        let host = Host::start(&test_db, echo_agents(0)).await;
        let (session, _) = host.session("terse").await;
        let mut events = host.subscribe(&session);
        for i in 0..4 {
            let body = format!("{i}").repeat(200);
            assert!(matches!(
                host.turn(&session, "terse", &body).await,
                RunResult::Replied { .. }
            ));
        }
        assert!(
            compaction_names(&drain(&mut events)).is_empty(),
            "{}",
            test_db.name
        );
        let history = host.state.records.list_messages(&session).await.unwrap();
        assert!(
            history.iter().all(|m| m.kind == "message"),
            "{}",
            test_db.name
        );
        // A manual request still works.
        let (status, body) = host.compact_manually(&session).await;
        assert_eq!(status, 200, "{}: {body}", test_db.name);
        assert_eq!(body["outcome"], "compacted");
    }
}

/// A local OpenAI-compatible server: replies with a large usage figure; summary requests
/// (the last message is the summary prompt) fail until `summaries_work` is set.
#[derive(Clone, Default)]
struct FakeOpenAi {
    summaries_work: Arc<AtomicBool>,
    summary_requests: Arc<Mutex<Vec<Value>>>,
}

async fn completions(
    State(fake): State<FakeOpenAi>,
    Json(request): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let messages = request["messages"].as_array().unwrap();
    let last = messages.last().unwrap()["content"].as_str().unwrap_or("");
    if last == SUMMARY_PROMPT {
        fake.summary_requests.lock().unwrap().push(request.clone());
        if !fake.summaries_work.load(Ordering::SeqCst) {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "summariser overloaded"}})),
            )
                .into_response();
        }
        return Json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "the user said hello several times"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 8},
        }))
        .into_response();
    }
    Json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello back"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 900, "completion_tokens": 10},
    }))
    .into_response()
}

#[tokio::test]
async fn failing_summaries_never_fail_the_run_and_the_third_stops_automatic_compaction() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let fake = FakeOpenAi::default();
        let router = axum::Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let mut agents = AgentsConfig::new();
        agents.insert(
            "gpt".into(),
            agent(json!({
                "kind": "openai",
                "base_url": origin,
                "model": "m",
                "system_prompt": PROMPT,
                "context_limit_tokens": 1000,
                "compact_threshold_percent": 80,
            })),
        );
        let host = Host::start(&test_db, agents).await;
        let (session, _) = host.session("gpt").await;
        let mut events = host.subscribe(&session);

        // Turn 1: nothing reported yet, the estimate is small. The reply reports 910 tokens.
        assert!(matches!(
            host.turn(&session, "gpt", "hello").await,
            RunResult::Replied { .. }
        ));
        assert!(compaction_names(&drain(&mut events)).is_empty(), "{name}");

        // Turns 2–4: 910 + the new message ≥ 800, the summary fails, the run still replies.
        for attempt in 1..=3u32 {
            let result = host.turn(&session, "gpt", "hello again").await;
            assert!(
                matches!(result, RunResult::Replied { .. }),
                "{name}: {result:?}"
            );
            let published = drain(&mut events);
            assert_eq!(
                compaction_names(&published),
                ["compaction_start", "compaction_failed"],
                "{name}: attempt {attempt}"
            );
            let failed = published
                .iter()
                .find_map(|e| match e {
                    SessionEvent::CompactionFailed {
                        error,
                        consecutive_failures,
                        automatic_disabled,
                        ..
                    } => Some((error.clone(), *consecutive_failures, *automatic_disabled)),
                    _ => None,
                })
                .unwrap();
            assert!(
                failed.0.contains("summariser overloaded"),
                "{name}: {}",
                failed.0
            );
            assert_eq!((failed.1, failed.2), (attempt, attempt == 3), "{name}");
            assert_eq!(host.run_state(&session).await, RunState::Idle, "{name}");
        }
        // The summary request: the conversation, then the summary prompt as a user message.
        let request = fake.summary_requests.lock().unwrap()[0].clone();
        let roles: Vec<&str> = request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"], "{name}");

        // Turn 5: automatic compaction is off for this session.
        host.turn(&session, "gpt", "still there?").await;
        assert!(compaction_names(&drain(&mut events)).is_empty(), "{name}");
        assert_eq!(host.history_summaries(&session).await, 0, "{name}");

        // A manual request that succeeds re-enables it.
        fake.summaries_work.store(true, Ordering::SeqCst);
        let (status, body) = host.compact_manually(&session).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(host.failures(&session).await, 0, "{name}");
        assert_eq!(
            compaction_names(&drain(&mut events)),
            ["compaction_start", "compaction_done"],
            "{name}"
        );
        host.turn(&session, "gpt", "one more").await; // reports 910 again
        drain(&mut events);
        host.turn(&session, "gpt", "and another").await;
        assert_eq!(
            compaction_names(&drain(&mut events)),
            ["compaction_start", "compaction_done"],
            "{name}: automatic compaction is back"
        );
    }
}

impl Host {
    async fn history_summaries(&self, session: &str) -> usize {
        let history = self.state.records.list_messages(session).await.unwrap();
        history.iter().filter(|m| m.kind == "summary").count()
    }
}

fn worker_agents() -> AgentsConfig {
    let mut agents = AgentsConfig::new();
    agents.insert(
        "bot".into(),
        agent(json!({
            "kind": "worker",
            "token": TOKEN,
            "system_prompt": PROMPT,
            "context_limit_tokens": 1000,
            "compact_threshold_percent": 80,
        })),
    );
    agents
}

/// A worker's whole run over HTTP: claim (a run), complete with `reply` and `usage`.
async fn worker_turn(host: &Host, session: &str, body: &str, reply: &str, usage: Value) {
    host.clock.set(host.clock.now_ms() + 1_000);
    host.state.runs.submit(session, body).await.unwrap();
    let (status, claim) = host.claim().await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["kind"], "run");
    let (status, done) = host
        .run_call(&claim, "complete", json!({"reply": reply, "usage": usage}))
        .await;
    assert_eq!(status, 200, "{done}");
}

#[tokio::test]
async fn a_worker_compacts_mid_run_when_told_and_the_run_completes() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db, worker_agents()).await;
        let (session, _) = host.session("bot").await;
        worker_turn(&host, &session, "first question", "first answer", json!({})).await;
        let mut events = host.subscribe(&session);

        host.clock.set(host.clock.now_ms() + 1_000);
        host.state
            .runs
            .submit(&session, "second question")
            .await
            .unwrap();
        let (_, claim) = host.claim().await;
        assert_eq!(
            claim["kind"], "run",
            "{name}: small context, no compaction job"
        );
        // A step under the threshold: go on.
        let (status, beat) = host
            .run_call(
                &claim,
                "heartbeat",
                json!({"usage": {"prompt_tokens": 300, "completion_tokens": 5}}),
            )
            .await;
        assert_eq!((status, &beat), (200, &json!({"continue": true})), "{name}");
        // A step at 850 + 20 ≥ 800: compact now.
        let (status, beat) = host
            .run_call(
                &claim,
                "heartbeat",
                json!({"usage": {"prompt_tokens": 850, "completion_tokens": 20}}),
            )
            .await;
        assert_eq!(
            (status, &beat),
            (200, &json!({"continue": true, "compact": true})),
            "{name}"
        );
        // Asked again until answered (a plain heartbeat without usage too).
        let (_, beat) = host.run_call(&claim, "heartbeat", json!({})).await;
        assert_eq!(beat["compact"], true, "{name}");
        assert_eq!(
            compaction_names(&drain(&mut events)),
            ["compaction_start"],
            "{name}"
        );

        let (status, compacted) = host
            .run_call(
                &claim,
                "compact",
                json!({"summary": "asked twice, answered once"}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {compacted}");
        assert_eq!(compacted["compacted"], true, "{name}");
        assert_eq!(compacted["tokens_before"], 870, "{name}");
        let published = drain(&mut events);
        assert_eq!(compaction_names(&published), ["compaction_done"], "{name}");
        assert_eq!(
            done_boundary(&published),
            compacted["boundary_message_id"].as_i64(),
            "{name}"
        );

        // The worker re-reads its context: system prompt + summary + the unanswered turn.
        let context = host.context(&claim).await;
        assert_eq!(context["system_prompt"], PROMPT);
        let messages = context["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{name}: {context}");
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(
            messages[0]["body"],
            format!("{SUMMARY_PREFIX}asked twice, answered once")
        );
        assert_eq!(
            messages[1],
            json!({"role": "user", "body": "second question"})
        );
        let (_, beat) = host.run_call(&claim, "heartbeat", json!({})).await;
        assert_eq!(beat, json!({"continue": true}), "{name}: answered");

        let (status, done) = host
            .run_call(&claim, "complete", json!({"reply": "second answer"}))
            .await;
        assert_eq!(status, 200, "{name}: {done}");
        assert_eq!(host.run_state(&session).await, RunState::Idle, "{name}");
        assert!(compaction_names(&drain(&mut events)).is_empty(), "{name}");
        let bodies: Vec<String> = host
            .state
            .records
            .list_messages(&session)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.kind == "message")
            .map(|m| m.body)
            .collect();
        assert_eq!(
            bodies,
            [
                "first question",
                "first answer",
                "second question",
                "second answer"
            ],
            "{name}: every turn kept"
        );
    }
}

#[tokio::test]
async fn worker_agents_get_compaction_jobs_before_runs_and_on_manual_requests() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let host = Host::start(&test_db, worker_agents()).await;
        let (session, _) = host.session("bot").await;
        worker_turn(
            &host,
            &session,
            "q1",
            "a1",
            json!({"prompt_tokens": 880, "completion_tokens": 10}),
        )
        .await;
        let mut events = host.subscribe(&session);

        // 890 reported ≥ 800: the claim is a compaction job over the answered turns.
        host.clock.set(host.clock.now_ms() + 1_000);
        host.state.runs.submit(&session, "q2").await.unwrap();
        let (_, job) = host.claim().await;
        assert_eq!(job["kind"], "compact", "{name}: {job}");
        assert_eq!(job["compact"]["prompt"], SUMMARY_PROMPT);
        assert_eq!(job["compact"]["source"], "pre_run");
        let bodies: Vec<&str> = job["context"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(
            bodies,
            ["q1", "a1"],
            "{name}: the trailing question is not summarised"
        );
        let (status, done) = host
            .run_call(
                &job,
                "complete",
                json!({"reply": "q1 was answered with a1"}),
            )
            .await;
        assert_eq!(
            (status, done["compacted"].as_bool()),
            (200, Some(true)),
            "{name}: {done}"
        );
        assert_eq!(host.run_state(&session).await, RunState::Pending, "{name}");
        assert_eq!(
            compaction_names(&drain(&mut events)),
            ["compaction_start", "compaction_done"],
            "{name}"
        );

        // The next claim is the run itself, on the compacted context.
        let (_, claim) = host.claim().await;
        assert_eq!(claim["kind"], "run", "{name}");
        let bodies: Vec<&str> = claim["context"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(
            bodies,
            [
                format!("{SUMMARY_PREFIX}q1 was answered with a1").as_str(),
                "q2"
            ],
            "{name}"
        );
        // The run fails: the session is in error. A manual compaction is allowed from there.
        let (status, _) = host
            .run_call(&claim, "fail", json!({"error": "tool crashed"}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(host.run_state(&session).await, RunState::Error, "{name}");
        let (status, body) = host.compact_manually(&session).await;
        assert_eq!(
            status, 409,
            "{name}: nothing answered since the summary: {body}"
        );

        worker_turn(&host, &session, "q3", "a3", json!({})).await;
        let (status, body) = host.compact_manually(&session).await;
        assert_eq!(
            (status, &body["outcome"]),
            (202, &json!("requested")),
            "{name}: {body}"
        );
        assert_eq!(host.run_state(&session).await, RunState::Pending, "{name}");
        let (_, job) = host.claim().await;
        assert_eq!(job["kind"], "compact", "{name}: {job}");
        assert_eq!(job["compact"]["source"], "manual");
        // An empty summary is a failure; the manual job ends and the session is idle.
        let (status, done) = host
            .run_call(&job, "complete", json!({"reply": "  "}))
            .await;
        assert_eq!(
            (status, done["compacted"].as_bool()),
            (200, Some(false)),
            "{name}: {done}"
        );
        assert_eq!(host.run_state(&session).await, RunState::Idle, "{name}");
        let published = drain(&mut events);
        assert_eq!(
            compaction_names(&published),
            ["compaction_start", "compaction_failed"],
            "{name}"
        );
        assert_eq!(host.failures(&session).await, 1, "{name}");
    }
}

/// A slow model: answers after 400 ms.
async fn slow_completion() -> Json<Value> {
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    Json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2},
    }))
}

/// A status event published from a state read before the run was acquired (the flush handler
/// does this) must not cancel the run: only the store decides whether the run lost the session.
#[tokio::test]
async fn a_stale_status_event_does_not_cancel_a_running_run() {
    let test_db = db::sqlite_file_db().await;
    let router = axum::Router::new().route("/v1/chat/completions", post(slow_completion));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let mut agents = AgentsConfig::new();
    agents.insert(
        "gpt".into(),
        agent(json!({"kind": "openai", "base_url": origin, "model": "m"})),
    );
    let host = Arc::new(Host::start(&test_db, agents).await);
    let (session, _) = host.session("gpt").await;
    let turn = {
        let host = host.clone();
        let session = session.clone();
        tokio::spawn(async move { host.turn(&session, "gpt", "hello").await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while host.run_state(&session).await != RunState::Running {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the run starts");
    host.state.runs.hub().publish(
        &session,
        SessionEvent::Status {
            state: RunState::Pending,
            last_error: None,
        },
    );
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), turn)
        .await
        .expect("the run ends")
        .unwrap();
    assert!(matches!(result, RunResult::Replied { .. }), "{result:?}");
    assert_eq!(host.run_state(&session).await, RunState::Idle);
}
