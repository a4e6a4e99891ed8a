//! The OpenAPI document of the worker and admin APIs (issue 20) against a real `serve`.
//!
//! - `GET /api/openapi.json` answers without a token, says `openapi: 3.1.x` and the crate's
//!   version, marks worker routes `agent_token` and admin routes `admin_token`, and holds no
//!   secret; a validator we did not write (`openapi-spec-validator` from PyPI, installed by
//!   `.ci/run`) accepts it and rejects broken copies of it.
//! - The endpoint table of `docs/api.md` is the one rendered from the document.
//! - Real answers of a claim → context → heartbeat → parts → approval → complete cycle, of the
//!   admin API and of refused calls conform to the document's response schemas (strictly: no
//!   undocumented fields), checked by `tests/openapi/check_responses.py` with
//!   openapi-schema-validator's OAS 3.1 validator; a tampered answer is rejected.

#[path = "support/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fake_telegram::{Chat, FakeTelegram, User};
use serde_json::{Value, json};

const ADMIN: &str = "openapi-test-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "openapi-test-agent-token-0123456789abcdef";
const BOT_TOKEN: &str = "7000000002:AAE-openapi_token";
/// How long one validator run may take (Python start-up and imports included).
const VALIDATOR_LIMIT: Duration = Duration::from_secs(60);
/// The markers around the generated endpoint table in docs/api.md.
const TABLE_BEGIN: &str =
    "<!-- endpoints:begin (generated from /api/openapi.json by tests/openapi.rs) -->";
const TABLE_END: &str = "<!-- endpoints:end -->";

fn config(port: u16, telegram: Option<&str>) -> String {
    let base_urls = telegram
        .map(|fake| format!("[plugins.base_urls]\n\"https://api.telegram.org\" = \"{fake}\"\n"))
        .unwrap_or_default();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"

[database]
url = "sqlite://switchboard.db?mode=rwc"

{base_urls}
[delivery]
poll_interval_ms = 100
first_backoff_ms = 200

[runs]
window_sweep_ms = 200

[connections]
poll_interval_ms = 200

[agents.coder]
kind = "worker"
token = "{WORKER_TOKEN}"
"#
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `python3 args…`, bounded by [`VALIDATOR_LIMIT`]; (success, stdout + stderr).
async fn python(args: Vec<String>) -> (bool, String) {
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs")
    });
    let output = tokio::time::timeout(VALIDATOR_LIMIT, run)
        .await
        .expect("the validator finishes in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `python3 -m openapi_spec_validator FILE` on `document`.
async fn spec_validator(dir: &Path, name: &str, document: &Value) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    python(vec![
        "-m".into(),
        "openapi_spec_validator".into(),
        file.display().to_string(),
    ])
    .await
}

async fn fetch_document(http: &reqwest::Client, base: &str) -> Value {
    let answer = http
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "the document is served without a token"
    );
    assert_eq!(
        answer.headers()["content-type"],
        "application/json",
        "served as JSON"
    );
    serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
}

/// A JSON request body (the suite's reqwest has no `json` feature).
trait JsonBody {
    fn json_body(self, body: Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The endpoint table of docs/api.md, rendered from the document.
fn endpoint_table(document: &Value) -> String {
    let mut table = String::from("| Method | Path | What | Auth |\n|---|---|---|---|\n");
    let paths = document["paths"].as_object().unwrap();
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let auth = operation["security"]
                .as_array()
                .and_then(|requirements| requirements.first())
                .and_then(|requirement| requirement.as_object())
                .and_then(|requirement| requirement.keys().next().cloned())
                .map_or("none".to_string(), |scheme| format!("`{scheme}`"));
            table.push_str(&format!(
                "| {} | `{path}` | {} | {auth} |\n",
                method.to_uppercase(),
                operation["summary"]
                    .as_str()
                    .unwrap_or("")
                    .replace('|', "\\|"),
            ));
        }
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_31_and_the_reference_page_lists_its_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve::ServeChild::start(dir.path(), |port| config(port, None))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let document = fetch_document(&http, &serve.base).await;

    // The contract.
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &document["components"]["securitySchemes"];
    for scheme in ["agent_token", "admin_token"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    let text = document.to_string();
    assert!(
        !text.contains(ADMIN) && !text.contains(WORKER_TOKEN),
        "the document holds no secret"
    );
    // Every operation is there with the scheme its route group's middleware enforces.
    let paths = document["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            operations += 1;
            let expected = if path == "/api/openapi.json" {
                json!([{}])
            } else if path.starts_with("/api/agents/") {
                json!([{"agent_token": []}])
            } else {
                json!([{"admin_token": []}])
            };
            assert_eq!(operation["security"], expected, "{method} {path}");
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has a summary"
            );
        }
    }
    assert!(
        paths.contains_key("/api/agents/{agent}/runs/claim")
            && paths.contains_key("/api/installations")
            && paths.contains_key("/api/sessions/{id}/events"),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(operations >= 40, "only {operations} operations");
    // Out of scope: webhooks, the console, health and metrics.
    assert!(
        paths
            .keys()
            .all(|p| p.starts_with("/api/") && !p.starts_with("/api/hooks")),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // No token is needed for the document, and a wrong one does not matter either.
    let with_wrong_token = http
        .get(format!("{}/api/openapi.json", serve.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(with_wrong_token.status(), 200);

    // A validator we did not write accepts it…
    let (valid, output) = spec_validator(dir.path(), "openapi.json", &document).await;
    assert!(
        valid,
        "openapi-spec-validator refused the document:\n{output}"
    );
    assert!(output.contains("OK"), "{output}");
    // …and refuses broken copies: without the required `info.version`; with a path parameter
    // that does not say where it is.
    let mut no_version = document.clone();
    no_version["info"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    let (valid, output) = spec_validator(dir.path(), "no-version.json", &no_version).await;
    assert!(!valid, "a document without info.version passed:\n{output}");
    assert!(output.contains("version"), "{output}");
    let mut no_in = document.clone();
    no_in["paths"]["/api/agents/{agent}/runs/claim"]["post"]["parameters"][0]
        .as_object_mut()
        .unwrap()
        .remove("in");
    let (valid, output) = spec_validator(dir.path(), "no-in.json", &no_in).await;
    assert!(!valid, "a parameter without `in` passed:\n{output}");

    // The reference page's endpoint table is the document's.
    let page = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    let fresh = endpoint_table(&document);
    let current = page
        .split_once(TABLE_BEGIN)
        .and_then(|(_, rest)| rest.split_once(TABLE_END))
        .map(|(table, _)| table.trim())
        .expect("docs/api.md has the endpoint table markers");
    assert!(
        current == fresh.trim(),
        "docs/api.md's endpoint table differs from the document; replace the text between the \
         markers with:\n\n{fresh}"
    );
}

/// The answers a test saw: what `check_responses.py` checks.
#[derive(Default)]
struct Samples(Vec<Value>);

impl Samples {
    /// Sends `request`, records its answer under `template`, returns (status, body).
    async fn call(&mut self, template: &str, request: reqwest::RequestBuilder) -> (u16, Value) {
        let request = request.build().unwrap();
        let method = request.method().to_string();
        let answer = reqwest::Client::new().execute(request).await.unwrap();
        let status = answer.status().as_u16();
        let bytes = answer.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {template} → {status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        self.0.push(json!({
            "method": method, "path": template, "status": status, "body": body,
        }));
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_of_a_worker_cycle_and_the_admin_api_conform_to_the_document() {
    let fake = FakeTelegram::start(BOT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let origin = fake.base_url().to_string();
    let serve = serve::ServeChild::start(dir.path(), |port| config(port, Some(&origin)))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = serve.base.clone();
    let document = fetch_document(&http, &base).await;
    let mut samples = Samples::default();
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN);
    let worker = |request: reqwest::RequestBuilder| request.bearer_auth(WORKER_TOKEN);

    let (status, installation) = samples
        .call(
            "/api/installations",
            admin(http.post(format!("{base}/api/installations"))).json_body(json!({
                "channel": "telegram", "name": "openapi", "agent": "coder",
                "debounce_ms": 100, "config": {"connection": "poll"},
                "secrets": {"bot_token": BOT_TOKEN},
            })),
        )
        .await;
    assert_eq!(status, 201, "{installation}");
    let installation_id = installation["id"].as_str().unwrap().to_string();

    // A chat message makes a run; a worker goes through its whole cycle.
    let user = User::new(77, "Grace");
    let chat = Chat::private(&user);
    fake.message(&chat, &user, "hello document").push();
    let runs = format!("{base}/api/agents/coder/runs");
    let (status, claim) = samples
        .call(
            "/api/agents/{agent}/runs/claim",
            worker(http.post(format!("{runs}/claim?wait_ms=20000")))
                .header("x-switchboard-worker", "openapi-test"),
        )
        .await;
    assert_eq!(status, 200, "{claim}");
    let run = format!(
        "{runs}/{}/{}",
        claim["session_id"].as_str().unwrap(),
        claim["run_id"].as_str().unwrap()
    );
    let session_id = claim["session_id"].as_str().unwrap().to_string();
    let template = "/api/agents/{agent}/runs/{session}/{run}";
    let (status, _) = samples
        .call(
            &format!("{template}/context"),
            worker(http.get(format!("{run}/context"))),
        )
        .await;
    assert_eq!(status, 200);
    let (status, beat) = samples
        .call(
            &format!("{template}/heartbeat"),
            worker(http.post(format!("{run}/heartbeat")))
                .json_body(json!({"usage": {"prompt_tokens": 12, "completion_tokens": 3}})),
        )
        .await;
    assert_eq!((status, &beat["continue"]), (200, &json!(true)), "{beat}");
    let (status, _) = samples
        .call(
            &format!("{template}/parts"),
            worker(http.post(format!("{run}/parts"))).json_body(json!({"text": "hello "})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, asked) = samples
        .call(
            &format!("{template}/approvals"),
            worker(http.post(format!("{run}/approvals")))
                .json_body(json!({"prompt": "Deploy the document?", "timeout_s": 60})),
        )
        .await;
    assert_eq!(status, 200, "{asked}");
    let (status, approval) = samples
        .call(
            &format!("{template}/approvals/{{approval}}"),
            worker(http.get(format!(
                "{run}/approvals/{}?wait_s=0",
                asked["approval_id"].as_str().unwrap()
            ))),
        )
        .await;
    assert_eq!((status, &approval["state"]), (200, &json!("pending")));
    let (status, completed) = samples
        .call(
            &format!("{template}/complete"),
            worker(http.post(format!("{run}/complete"))).json_body(json!({
                "reply": "hello back", "usage": {"prompt_tokens": 20, "completion_tokens": 4},
            })),
        )
        .await;
    assert_eq!(status, 200, "{completed}");
    // The run is over: a heartbeat is told to stop, a claim finds nothing, a wrong token is
    // refused.
    let (status, stop) = samples
        .call(
            &format!("{template}/heartbeat"),
            worker(http.post(format!("{run}/heartbeat"))),
        )
        .await;
    assert_eq!((status, &stop["continue"]), (409, &json!(false)), "{stop}");
    let (status, _) = samples
        .call(
            "/api/agents/{agent}/runs/claim",
            worker(http.post(format!("{runs}/claim?wait_ms=0"))),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = samples
        .call(
            "/api/agents/{agent}/runs/claim",
            http.post(format!("{runs}/claim?wait_ms=0"))
                .bearer_auth("not-the-token"),
        )
        .await;
    assert_eq!(status, 401);

    // The admin API.
    for (template, url) in [
        ("/api/installations", format!("{base}/api/installations")),
        (
            "/api/installations/{id}",
            format!("{base}/api/installations/{installation_id}"),
        ),
        (
            "/api/sessions",
            format!("{base}/api/sessions?installation={installation_id}"),
        ),
        (
            "/api/sessions/{id}",
            format!("{base}/api/sessions/{session_id}"),
        ),
        ("/api/outbox", format!("{base}/api/outbox")),
        ("/api/plugins", format!("{base}/api/plugins")),
        ("/api/audit", format!("{base}/api/audit")),
        ("/api/pairings", format!("{base}/api/pairings")),
    ] {
        let (status, body) = samples.call(template, admin(http.get(url))).await;
        assert_eq!(status, 200, "{template}: {body}");
    }
    let (status, submitted) = samples
        .call(
            "/api/sessions/{id}/messages",
            admin(http.post(format!("{base}/api/sessions/{session_id}/messages")))
                .json_body(json!({"body": "from the operator"})),
        )
        .await;
    assert!(status == 201 || status == 202, "{status} {submitted}");
    let (status, _) = samples
        .call(
            "/api/sessions/{id}/interrupt",
            admin(http.post(format!("{base}/api/sessions/{session_id}/interrupt"))),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = samples
        .call(
            "/api/installations/{id}",
            admin(http.get(format!("{base}/api/installations/no-such-installation"))),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = samples
        .call(
            "/api/installations",
            http.get(format!("{base}/api/installations")),
        )
        .await;
    assert_eq!(status, 401);

    // Every answer conforms to the document.
    let document_file = dir.path().join("openapi.json");
    std::fs::write(&document_file, document.to_string()).unwrap();
    let check = repo().join("tests/openapi/check_responses.py");
    let run_check = async |name: &str, samples: &[Value]| {
        let file = dir.path().join(name);
        std::fs::write(&file, serde_json::to_vec_pretty(samples).unwrap()).unwrap();
        python(vec![
            check.display().to_string(),
            document_file.display().to_string(),
            file.display().to_string(),
        ])
        .await
    };
    let (conform, output) = run_check("samples.json", &samples.0).await;
    assert!(
        conform,
        "answers do not conform to the document:\n{output}\nserve log:\n{}",
        serve.log_tail(30)
    );
    assert!(
        output.contains(&format!("{0} of {0} answers conform", samples.0.len())),
        "{output}"
    );
    // The check can fail: a claim without its run id, an answer with an undocumented field.
    let mut tampered = samples.0.clone();
    let claim_sample = tampered
        .iter_mut()
        .find(|s| s["path"] == "/api/agents/{agent}/runs/claim" && s["status"] == 200)
        .unwrap();
    claim_sample["body"]
        .as_object_mut()
        .unwrap()
        .remove("run_id");
    let (conform, output) = run_check("tampered.json", &tampered).await;
    assert!(!conform && output.contains("run_id"), "{output}");
    let mut extra = samples.0.clone();
    let list = extra
        .iter_mut()
        .find(|s| s["path"] == "/api/installations" && s["status"] == 200)
        .unwrap();
    list["body"][0]["secret_values"] = json!({"bot_token": "leaked"});
    let (conform, output) = run_check("extra.json", &extra).await;
    assert!(!conform && output.contains("secret_values"), "{output}");
}
