//! The built-in agents and agent configuration (SPEC §6).
//!
//! The `openai` agent runs against a local OpenAI-compatible server (axum on 127.0.0.1:0, in
//! this file) that checks each request and streams SSE deltas split awkwardly across chunks:
//! streaming with usage, HTTP errors with the API's message, a stalled server (timeout),
//! cancellation mid-stream. Then the `echo` agent, and config parsing and validation (defaults,
//! errors that name agent and key, archived and offline states with an injected now, worker
//! token verification).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use switchboard::agents::{
    AgentConfigError, AgentError, AgentKind, AgentRegistry, AgentReply, AgentState, AgentsConfig,
    BuiltinAgent, CancellationToken, ContextMessage, EchoAgent, InlineImage, OpenAiAgent,
    OpenAiSettings, Role, RunInput, Usage,
};
use switchboard::config::Config;

// ---------------------------------------------------------------------------------------------
// The mock OpenAI-compatible server.

/// What the mock does with the next request.
#[derive(Clone)]
enum Behaviour {
    /// 200 `text/event-stream` with these body chunks, each written separately.
    Stream(Vec<Vec<u8>>),
    /// This status and body (JSON when it parses as JSON).
    Fail(u16, String),
    /// Never answers.
    StallBeforeHeaders,
    /// Sends these chunks, then keeps the stream open without writing; reports on `closed`
    /// when the client goes away.
    StallAfter(Vec<Vec<u8>>),
}

/// A request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

struct MockState {
    behaviour: Behaviour,
    seen: Mutex<Vec<Seen>>,
    closed: Mutex<Option<oneshot::Sender<()>>>,
}

struct Mock {
    base_url: String,
    state: Arc<MockState>,
    closed: Option<oneshot::Receiver<()>>,
}

impl Mock {
    async fn start(behaviour: Behaviour) -> Mock {
        let (closed_tx, closed_rx) = oneshot::channel();
        let state = Arc::new(MockState {
            behaviour,
            seen: Mutex::new(Vec::new()),
            closed: Mutex::new(Some(closed_tx)),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Mock {
            base_url,
            state,
            closed: Some(closed_rx),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(state): State<Arc<MockState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    if uri.path() != "/v1/chat/completions" {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    }
    match state.behaviour.clone() {
        Behaviour::Stream(chunks) => sse(chunks, None),
        Behaviour::StallAfter(chunks) => {
            let closed = state.closed.lock().unwrap().take();
            sse(chunks, closed)
        }
        Behaviour::Fail(status, body) => {
            let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain"
            };
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap()
        }
        Behaviour::StallBeforeHeaders => std::future::pending().await,
    }
}

/// A streamed SSE response writing `chunks` one by one; with `hold`, the stream stays open
/// afterwards and `hold` fires once the client has dropped the connection.
fn sse(chunks: Vec<Vec<u8>>, hold: Option<oneshot::Sender<()>>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                break;
            }
            // Let each chunk reach the socket on its own rather than coalesced with the next.
            tokio::task::yield_now().await;
        }
        if let Some(hold) = hold {
            tx.closed().await;
            let _ = hold.send(());
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// One SSE event per value (`data: <json>` + blank line), then `data: [DONE]`; CRLF line ends
/// in every other event, and a comment line first.
fn sse_text(events: &[Value]) -> Vec<u8> {
    let mut text = String::from(": OPENROUTER PROCESSING\n\n");
    for (i, event) in events.iter().enumerate() {
        let end = if i % 2 == 0 { "\r\n" } else { "\n" };
        text.push_str(&format!("data: {event}{end}{end}"));
    }
    text.push_str("data: [DONE]\n\n");
    text.into_bytes()
}

/// Splits `bytes` awkwardly: pieces of 1, 7, 13, 2, 29, … bytes (mid-line, mid-JSON, between
/// CR and LF, inside multi-byte characters).
fn awkward_chunks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let sizes = [1usize, 7, 13, 2, 29, 3, 17];
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let end = (at + sizes[i % sizes.len()]).min(bytes.len());
        out.push(bytes[at..end].to_vec());
        at = end;
        i += 1;
    }
    out
}

fn delta_event(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "test-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    })
}

fn settings(base_url: &str, timeout_ms: u64) -> OpenAiSettings {
    OpenAiSettings {
        base_url: base_url.to_string(),
        model: "test-model".into(),
        api_key: Some("sk-test-123".into()),
        timeout_ms,
        max_tokens: Some(256),
        vision: false,
    }
}

fn client() -> reqwest::Client {
    switchboard::agents::openai::http_client()
}

fn input() -> RunInput {
    RunInput {
        session_id: "sess-1".into(),
        run_id: "run-1".into(),
        system_prompt: Some("You are terse.".into()),
        messages: vec![
            ContextMessage::new(Role::User, "hi"),
            ContextMessage::new(Role::Assistant, "hello"),
            ContextMessage::new(Role::System, "summary so far"),
            ContextMessage::new(Role::User, "what is 2+2?"),
        ],
    }
}

/// Runs `agent`, collecting every part sent.
async fn run_collect(
    agent: &BuiltinAgent,
    input: &RunInput,
    cancel: CancellationToken,
) -> (Result<AgentReply, AgentError>, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(4);
    let collect = tokio::spawn(async move {
        let mut parts = Vec::new();
        while let Some(part) = rx.recv().await {
            parts.push(part);
        }
        parts
    });
    let result = agent.run(input, tx, cancel).await;
    (result, collect.await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// openai

#[tokio::test]
async fn openai_streams_deltas_in_order_and_reads_usage() {
    let deltas = ["The", " answer", " is 4", " — 四", ".\nDone"];
    let mut events: Vec<Value> = vec![json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                     "finish_reason": null}]
    })];
    events.extend(deltas.iter().map(|d| delta_event(d)));
    events.push(json!({
        "id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    }));
    events.push(json!({
        "id": "chatcmpl-1", "choices": [],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}
    }));
    let chunks = awkward_chunks(&sse_text(&events));
    assert!(chunks.len() > 20, "the stream really is split");
    let mock = Mock::start(Behaviour::Stream(chunks)).await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&mock.base_url, 60_000),
        client(),
    ));

    let (result, parts) = run_collect(&agent, &input(), CancellationToken::new()).await;
    let reply = result.expect("the completion succeeds");

    assert_eq!(parts, deltas, "each delta forwarded once, in order");
    assert_eq!(reply.text, deltas.concat());
    assert_eq!(
        reply.usage,
        Some(Usage {
            prompt_tokens: 31,
            completion_tokens: 9,
            total_tokens: 40
        })
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.authorization.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(request.body["model"], "test-model");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["max_tokens"], 256);
    assert_eq!(
        request.body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "summary so far"},
            {"role": "user", "content": "what is 2+2?"},
        ]),
        "system prompt first, then the context with its roles, in order"
    );
}

#[tokio::test]
async fn openai_sends_stored_images_as_image_parts_only_to_a_vision_model() {
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    let message = ContextMessage {
        meta: Some(json!({"attachments": [{
            "kind": "image", "name": "cat.png", "ref": "img_1", "blob_id": "bl_1",
            "state": "stored", "mime": "image/png", "size": png.len(),
        }, {
            "kind": "file", "name": "big.bin", "ref": "file_1", "blob_id": "bl_2",
            "state": "failed", "error": "the file is 9 bytes, over the per-file cap of 8 bytes",
        }]})),
        images: vec![InlineImage {
            mime: "image/png".into(),
            bytes: png.clone().into(),
        }],
        ..ContextMessage::new(Role::User, "what is this?")
    };
    let text = format!(
        "what is this?\n[attachment: image \"cat.png\", image/png, {} bytes]\n[attachment: file \"big.bin\", not available: the file is 9 bytes, over the per-file cap of 8 bytes]",
        png.len()
    );
    let events = [
        delta_event("a cat"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ];
    for vision in [true, false] {
        let mock = Mock::start(Behaviour::Stream(vec![sse_text(&events)])).await;
        let mut s = settings(&mock.base_url, 60_000);
        s.vision = vision;
        let agent = BuiltinAgent::OpenAi(OpenAiAgent::new("eyes", s, client()));
        let input = RunInput {
            session_id: "sess-1".into(),
            run_id: "run-1".into(),
            system_prompt: None,
            messages: vec![message.clone()],
        };
        let (result, _) = tokio::time::timeout(
            Duration::from_secs(10),
            run_collect(&agent, &input, CancellationToken::new()),
        )
        .await
        .expect("the completion ends");
        assert_eq!(result.unwrap().text, "a cat");
        let content = mock.seen()[0].body["messages"][0]["content"].clone();
        if vision {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD.encode(&png);
            assert_eq!(
                content,
                json!([
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}},
                ]),
                "vision: the text with its attachment lines, then the image"
            );
        } else {
            assert_eq!(content, json!(text), "no vision: text lines only");
        }
    }
}

#[tokio::test]
async fn openai_without_key_or_prompt_sends_neither() {
    let events = [
        delta_event("ok"),
        json!({"choices": [{"index": 0, "delta": {},
        "finish_reason": "stop"}]}),
    ];
    let mock = Mock::start(Behaviour::Stream(vec![sse_text(&events)])).await;
    let mut s = settings(&mock.base_url, 60_000);
    s.api_key = None;
    s.max_tokens = None;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new("local", s, client()));
    let mut input = input();
    input.system_prompt = None;
    let (result, parts) = run_collect(&agent, &input, CancellationToken::new()).await;
    assert_eq!(result.unwrap().text, "ok");
    assert_eq!(parts, ["ok"]);
    let seen = mock.seen();
    assert_eq!(seen[0].authorization, None);
    assert!(seen[0].body.get("max_tokens").is_none());
    assert_eq!(seen[0].body["messages"][0]["role"], "user");
    assert_eq!(seen[0].body["messages"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn openai_http_errors_carry_the_servers_message() {
    let unauthorized = Mock::start(Behaviour::Fail(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-test***123.",
                         "type": "invalid_request_error", "code": "invalid_api_key"}})
        .to_string(),
    ))
    .await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&unauthorized.base_url, 60_000),
        client(),
    ));
    let (result, parts) = run_collect(&agent, &input(), CancellationToken::new()).await;
    assert_eq!(
        result.unwrap_err(),
        AgentError::Http {
            status: 401,
            message: "Incorrect API key provided: sk-test***123.".into()
        }
    );
    assert!(parts.is_empty());

    let broken = Mock::start(Behaviour::Fail(500, "upstream exploded\n".into())).await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&broken.base_url, 60_000),
        client(),
    ));
    let (result, _) = run_collect(&agent, &input(), CancellationToken::new()).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        AgentError::Http {
            status: 500,
            message: "upstream exploded".into()
        }
    );
    assert!(
        err.to_string().contains("HTTP 500: upstream exploded"),
        "{err}"
    );
}

#[tokio::test]
async fn openai_error_event_and_cut_stream_are_protocol_errors() {
    let error_event = json!({"error": {"message": "model overloaded"}});
    let mock = Mock::start(Behaviour::Stream(vec![sse_text(&[
        delta_event("par"),
        error_event,
    ])]))
    .await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&mock.base_url, 60_000),
        client(),
    ));
    let (result, parts) = run_collect(&agent, &input(), CancellationToken::new()).await;
    match result {
        Err(AgentError::Protocol(what)) => assert!(what.contains("model overloaded"), "{what}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(parts, ["par"]);

    // No [DONE] and no finish_reason: the reply may be truncated.
    let cut = Mock::start(Behaviour::Stream(vec![
        format!("data: {}\n\n", delta_event("half")).into_bytes(),
    ]))
    .await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&cut.base_url, 60_000),
        client(),
    ));
    let (result, _) = run_collect(&agent, &input(), CancellationToken::new()).await;
    assert!(matches!(result, Err(AgentError::Protocol(_))), "{result:?}");
}

#[tokio::test]
async fn openai_stalled_server_times_out() {
    for behaviour in [
        Behaviour::StallBeforeHeaders,
        Behaviour::StallAfter(vec![sse_text(&[delta_event("slow")])[..40].to_vec()]),
    ] {
        let mock = Mock::start(behaviour).await;
        let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
            "gpt",
            settings(&mock.base_url, 300),
            client(),
        ));
        let (result, _) = run_collect(&agent, &input(), CancellationToken::new()).await;
        assert_eq!(result.unwrap_err(), AgentError::Timeout { timeout_ms: 300 });
        assert_eq!(mock.seen().len(), 1, "the request reached the server");
    }
}

#[tokio::test]
async fn openai_cancellation_mid_stream_stops_reading() {
    let first = sse_text(&[delta_event("one"), delta_event("two")]);
    // Everything but the final `data: [DONE]`: the stream then stays open.
    let open = first[..first.len() - "data: [DONE]\n\n".len()].to_vec();
    let mut mock = Mock::start(Behaviour::StallAfter(awkward_chunks(&open))).await;
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&mock.base_url, 600_000),
        client(),
    ));
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(4);
    let run = {
        let agent = agent.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { agent.run(&input(), tx, cancel).await })
    };
    assert_eq!(rx.recv().await.as_deref(), Some("one"));
    assert_eq!(rx.recv().await.as_deref(), Some("two"));
    cancel.cancel();
    assert_eq!(run.await.unwrap().unwrap_err(), AgentError::Cancelled);
    assert_eq!(
        rx.recv().await,
        None,
        "the parts channel is closed when the run ends"
    );
    // The connection was dropped: the server sees its stream's receiver go away. (The guard
    // only keeps a broken build from hanging; it is not a speed assertion.)
    tokio::time::timeout(Duration::from_secs(30), mock.closed.take().unwrap())
        .await
        .expect("the client dropped the connection")
        .unwrap();
}

#[tokio::test]
async fn openai_unreachable_endpoint_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let agent = BuiltinAgent::OpenAi(OpenAiAgent::new(
        "gpt",
        settings(&base_url, 60_000),
        client(),
    ));
    let (result, _) = run_collect(&agent, &input(), CancellationToken::new()).await;
    assert!(
        matches!(result, Err(AgentError::Transport(_))),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// echo

#[tokio::test]
async fn echo_replies_with_the_user_messages_since_the_last_reply() {
    let registry = AgentRegistry::default();
    let spec = registry.get("echo").expect("echo exists by default");
    let agent = BuiltinAgent::from_spec(spec, &client()).expect("echo is built in");
    let input = RunInput {
        session_id: "s".into(),
        run_id: "r".into(),
        system_prompt: Some("ignored".into()),
        messages: vec![
            ContextMessage::new(Role::User, "old question"),
            ContextMessage::new(Role::Assistant, "echo: old question"),
            ContextMessage::new(Role::User, "hello there"),
            ContextMessage::new(Role::System, "not echoed"),
            ContextMessage::new(Role::User, "second line"),
        ],
    };
    let (result, parts) = run_collect(&agent, &input, CancellationToken::new()).await;
    let reply = result.unwrap();
    assert_eq!(reply.text, "echo: hello there\nsecond line");
    assert_eq!(reply.usage, None);
    assert!(parts.len() > 1, "streamed in several parts: {parts:?}");
    assert_eq!(parts.concat(), reply.text);

    let cancel = CancellationToken::new();
    cancel.cancel();
    let (result, parts) = run_collect(&agent, &input, cancel).await;
    assert_eq!(result.unwrap_err(), AgentError::Cancelled);
    assert!(parts.is_empty());

    let first_turn = RunInput {
        messages: vec![ContextMessage::new(Role::User, "ping")],
        ..input
    };
    assert_eq!(EchoAgent::reply_text(&first_turn), "echo: ping");
}

// ---------------------------------------------------------------------------------------------
// configuration

fn registry(toml_text: &str) -> Result<AgentRegistry, AgentConfigError> {
    let agents: AgentsConfig = toml::from_str(toml_text).expect("valid TOML for the section");
    AgentRegistry::from_config_with_env(&agents, |var| {
        (var == "TEST_OPENAI_KEY").then(|| "sk-from-env".to_string())
    })
}

#[test]
fn defaults_give_an_echo_agent() {
    let config = Config::default();
    assert!(config.agents.is_empty());
    let registry = AgentRegistry::from_config(&config.agents).unwrap();
    let echo = registry.get("echo").unwrap();
    assert_eq!(echo.kind, AgentKind::Echo);
    assert!(!echo.archived && echo.is_builtin());
    assert_eq!(registry.iter().count(), 1);
    assert_eq!(registry.state("echo", None, 0), AgentState::Online);
    assert_eq!(registry.state("nope", None, 0), AgentState::Unknown);
}

#[test]
fn config_file_with_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        r#"
[agents.gpt]
kind = "openai"
model = "gpt-4o-mini"
api_key = "sk-file"
system_prompt = "Be brief."
context_limit_tokens = 128000
compact_threshold_percent = 80

[agents.local]
kind = "openai"
base_url = "http://127.0.0.1:11434/"
model = "llama3"
timeout_ms = 5000
max_tokens = 512

[agents.claude-code]
kind = "worker"
token = "worker-secret-0123456789"
offline_after_ms = 30000

[agents.old]
kind = "echo"
archived = true
"#,
    )
    .unwrap();
    let config = Config::load(Some(&path)).unwrap();
    let registry = AgentRegistry::from_config(&config.agents).unwrap();

    let gpt = registry.get("gpt").unwrap();
    let AgentKind::OpenAi(s) = &gpt.kind else {
        panic!("gpt is openai: {gpt:?}")
    };
    assert_eq!(s.base_url, "https://api.openai.com");
    assert_eq!(
        s.completions_url(),
        "https://api.openai.com/v1/chat/completions"
    );
    assert_eq!(s.timeout_ms, 120_000);
    assert_eq!(s.api_key.as_deref(), Some("sk-file"));
    assert_eq!(s.max_tokens, None);
    assert_eq!(gpt.system_prompt.as_deref(), Some("Be brief."));
    assert_eq!(gpt.compaction.threshold_percent, Some(80));
    assert_eq!(gpt.compaction.trigger_tokens(), Some(102_400));
    assert!(
        !format!("{gpt:?}").contains("sk-file"),
        "the key is redacted in Debug"
    );

    let AgentKind::OpenAi(local) = &registry.get("local").unwrap().kind else {
        panic!("local is openai")
    };
    assert_eq!(local.base_url, "http://127.0.0.1:11434");
    assert_eq!((local.timeout_ms, local.max_tokens), (5000, Some(512)));
    assert_eq!(local.api_key, None);
    assert_eq!(
        registry.get("local").unwrap().compaction.trigger_tokens(),
        None,
        "compaction disabled when unset"
    );

    let worker = registry.get("claude-code").unwrap();
    assert_eq!(worker.kind_name(), "worker");
    assert!(!worker.is_builtin());
    assert!(BuiltinAgent::from_spec(worker, &client()).is_none());
    assert!(!format!("{worker:?}").contains("worker-secret"));

    assert_eq!(registry.state("old", None, 0), AgentState::Archived);
    assert!(registry.get("echo").is_some(), "the default echo stays");
    assert_eq!(registry.iter().count(), 5);
}

#[test]
fn config_load_refuses_bad_agents_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[agents.gpt]\nkind = \"openai\"\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("[agents.gpt] model: missing"), "{err}");
    assert!(
        err.contains("model = \"gpt-4o-mini\""),
        "says what to write: {err}"
    );

    std::fs::write(&path, "[agents.gpt]\nkind = \"openai\"\nmodle = \"x\"\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("modle"), "{err}");
}

#[test]
fn validation_errors_name_agent_and_key_and_the_fix() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[a]\narchived = true",
            "kind",
            "write kind = \"echo\", \"openai\" or \"worker\"",
        ),
        ("[a]\nkind = \"gpt\"", "kind", "`gpt` is not an agent kind"),
        (
            "[a]\nkind = \"echo\"\nmodel = \"m\"",
            "model",
            "kind = \"openai\" agents only",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\ntoken = \"x\"",
            "token",
            "remove it",
        ),
        (
            "[a]\nkind = \"worker\"",
            "token",
            "SWITCHBOARD_AGENTS__A__TOKEN",
        ),
        (
            "[a]\nkind = \"worker\"\ntoken = \"short\"",
            "token",
            "at least 16",
        ),
        (
            "[a]\nkind = \"worker\"\ntoken = \"0123456789abcdef\"\noffline_after_ms = 0",
            "offline_after_ms",
            "must be positive",
        ),
        ("[a]\nkind = \"openai\"\nmodel = \"  \"", "model", "missing"),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\nbase_url = \"https://api.openai.com/v1\"",
            "base_url",
            "without /v1",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\nbase_url = \"ftp://x\"",
            "base_url",
            "http://",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\nbase_url = \"nope\"",
            "base_url",
            "not a URL",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\ntimeout_ms = 0",
            "timeout_ms",
            "positive",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\nmax_tokens = 0",
            "max_tokens",
            "positive",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\napi_key = \"k\"\napi_key_env = \"TEST_OPENAI_KEY\"",
            "api_key_env",
            "not both",
        ),
        (
            "[a]\nkind = \"openai\"\nmodel = \"m\"\napi_key_env = \"UNSET_VAR\"",
            "api_key_env",
            "UNSET_VAR is not set",
        ),
        (
            "[a]\nkind = \"echo\"\ncompact_threshold_percent = 100\ncontext_limit_tokens = 1000",
            "compact_threshold_percent",
            "from 1 to 99",
        ),
        (
            "[a]\nkind = \"echo\"\ncompact_threshold_percent = 80",
            "context_limit_tokens",
            "context_limit_tokens = 128000",
        ),
        (
            "[a]\nkind = \"echo\"\ncontext_limit_tokens = 0",
            "context_limit_tokens",
            "remove it",
        ),
        ("[\"a b\"]\nkind = \"echo\"", "(name)", "letters, digits"),
    ];
    for (text, key, hint) in cases {
        let err = registry(text).expect_err(text);
        assert_eq!(&err.key, key, "{text}: {err}");
        assert!(err.to_string().contains(hint), "{text}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("[agents.{}] {key}: ", err.agent)),
            "{err}"
        );
    }
}

#[test]
fn api_key_env_and_disabled_compaction() {
    let registry = registry(
        "[gpt]\nkind = \"openai\"\nmodel = \"m\"\napi_key_env = \"TEST_OPENAI_KEY\"\n\
         compact_threshold_percent = 0\ncontext_limit_tokens = 8000\n",
    )
    .unwrap();
    let spec = registry.get("gpt").unwrap();
    let AgentKind::OpenAi(s) = &spec.kind else {
        panic!("openai")
    };
    assert_eq!(s.api_key.as_deref(), Some("sk-from-env"));
    assert_eq!(spec.compaction.context_limit_tokens, Some(8000));
    assert_eq!(spec.compaction.threshold_percent, None);
    assert_eq!(spec.compaction.trigger_tokens(), None);
}

#[test]
fn worker_offline_window_with_injected_now() {
    let registry = registry(
        "[w]\nkind = \"worker\"\ntoken = \"0123456789abcdef-token\"\noffline_after_ms = 1000\n\
         [gone]\nkind = \"worker\"\ntoken = \"0123456789abcdef-other\"\narchived = true\n",
    )
    .unwrap();
    let now = 1_700_000_000_000;
    assert_eq!(
        registry.state("w", None, now),
        AgentState::Offline,
        "never seen"
    );
    assert_eq!(registry.state("w", Some(now), now), AgentState::Online);
    assert_eq!(
        registry.state("w", Some(now - 1000), now),
        AgentState::Online
    );
    assert_eq!(
        registry.state("w", Some(now - 1001), now),
        AgentState::Offline
    );
    assert_eq!(
        registry.state("w", Some(now + 5), now),
        AgentState::Online,
        "a replica's clock slightly ahead does not make the worker offline"
    );
    assert_eq!(registry.state("gone", Some(now), now), AgentState::Archived);
    assert_eq!(
        registry.state("missing", Some(now), now),
        AgentState::Unknown
    );
    // The default window.
    let default = self::registry("[d]\nkind = \"worker\"\ntoken = \"0123456789abcdef\"").unwrap();
    assert_eq!(
        default.state("d", Some(now - 60_000), now),
        AgentState::Online
    );
    assert_eq!(
        default.state("d", Some(now - 60_001), now),
        AgentState::Offline
    );
}

#[test]
fn worker_token_verification() {
    let registry = registry(
        "[w]\nkind = \"worker\"\ntoken = \"0123456789abcdef-token\"\n\
         [v]\nkind = \"worker\"\ntoken = \"another-token-0123456\"\n",
    )
    .unwrap();
    assert!(registry.verify_worker_token("w", "0123456789abcdef-token"));
    assert!(!registry.verify_worker_token("w", "0123456789abcdef-toke"));
    assert!(
        !registry.verify_worker_token("w", "another-token-0123456"),
        "v's token"
    );
    assert!(!registry.verify_worker_token("w", ""));
    assert!(!registry.verify_worker_token("missing", "0123456789abcdef-token"));
    assert!(
        !registry.verify_worker_token("echo", ""),
        "built-in agents take no tokens"
    );
}

#[test]
fn numeric_secrets_from_the_environment_are_strings() {
    // `SWITCHBOARD_AGENTS__W__TOKEN=1234567890123456` reaches the config as an integer.
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};
    let config: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string("[agents.w]\nkind = \"worker\"\n"))
        .merge(Serialized::default("agents.w.token", 1234567890123456u64))
        .extract()
        .unwrap();
    let registry = AgentRegistry::from_config(&config.agents).unwrap();
    assert!(registry.verify_worker_token("w", "1234567890123456"));
}
