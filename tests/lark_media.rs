//! Issue 18, media ingestion: attachments of Lark messages downloaded into the blob store after
//! the message is stored, end to end — the real `App::serve`, the bundled Lark plugin's
//! `fetch-attachment`, `tests/fake-lark` serving message resources (bytes per key, a key that
//! fails with a Lark error, an oversized file), and a worker agent reading its run's context
//! and the blobs through the worker API. On SQLite and PostgreSQL:
//!
//! - an image message stores a blob (sha256 and the type sniffed from the bytes asserted, the
//!   file on disk), the claim shows it `stored` with its URL, the worker fetches the bytes with
//!   its token; without a token 401, another agent's token 404; the old `…/attachment` route
//!   serves the stored bytes without asking the channel again;
//! - a post with an image produces a blob too; an `openai` agent with `vision = true` gets the
//!   stored image as an `image_url` part (the run waited for the download);
//! - a download the channel refuses, a file over the per-file cap and one that would pass the
//!   installation's cap leave `failed` placeholders with a reason (410 for the bytes), and the
//!   message and its run still happen;
//! - a reply quoting an image message and a forwarded bundle holding an image: the enricher
//!   reports those images as attachments of the reply/forward (marked `origin = "context"`);
//!   the quoted one is downloaded through the message that carries it and served to the
//!   worker; the forwarded one is tried once and left a `failed` placeholder, since Lark
//!   serves no resource of a merged forward's sub-messages (234043); a quoted image whose
//!   download fails leaves a `failed` placeholder while the message (with its quoted block)
//!   is stored and its run happens;
//! - a download still pending when its process was stopped — and one a killed process held
//!   under a lease — is completed by the next process on the same database.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_lark::{Failure, FakeLark, Route};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{BlobRow, BlobState, Database};

const ADMIN: &str = "media-admin-token-0123456789abcdef0123";
const WORKER_TOKEN: &str = "media-worker-token-0123456789";
const OTHER_TOKEN: &str = "media-other-token-0123456789";
const APP_ID: &str = "cli_media0app0000001";
/// The per-file cap the tests configure.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// A 1×1 PNG.
fn png() -> Vec<u8> {
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    bytes.extend_from_slice(b"\0\0\0\rIDATx\x9cc\xf8\x0f\0\x01\x01\x01\0\x18\xdd\x8d\xb0");
    bytes.extend_from_slice(b"\0\0\0\0IEND\xaeB`\x82");
    bytes
}

/// A small PDF.
fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What every host of one test shares: the channel, the database, the secrets key and the
/// blob directory.
struct Shared {
    fake: Arc<FakeLark>,
    database_url: String,
    key: String,
    blobs: PathBuf,
    /// Origin of the OpenAI-compatible mock the `eyes` agent (`vision = true`) talks to.
    model: String,
    /// The request bodies the mock received.
    model_requests: Arc<Mutex<Vec<Value>>>,
    /// `[blobs] max_installation_bytes` of the hosts.
    max_installation_bytes: u64,
}

/// The OpenAI-compatible mock: records the request, streams "I see it".
async fn mock_model(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    seen.lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let mut sse = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": "I see it"}}]})
    );
    sse.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ));
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

struct World {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct Claimed {
    session: String,
    run: String,
    claim: Value,
}

impl World {
    /// A host on `shared` with a worker agent `team` (token [`WORKER_TOKEN`]) and another,
    /// `other`; downloads retried quickly, at most `attempts` times.
    async fn start(shared: &Shared, attempts: u32) -> World {
        let mut config = Config::default();
        config.database.url = shared.database_url.clone();
        config.secrets.key = Some(shared.key.clone());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config.plugins.base_urls.insert(
            "https://open.feishu.cn".into(),
            shared.fake.origin().to_string(),
        );
        config.delivery.first_backoff_ms = 50;
        config.delivery.max_backoff_ms = 200;
        config.delivery.poll_interval_ms = 50;
        config.blobs.dir = shared.blobs.clone();
        config.blobs.max_file_bytes = MAX_FILE_BYTES;
        config.blobs.max_installation_bytes = shared.max_installation_bytes;
        config.blobs.attempts = attempts;
        config.blobs.first_backoff_ms = 50;
        config.blobs.max_backoff_ms = 200;
        config.blobs.lease_ms = 1_000;
        config.blobs.poll_interval_ms = 50;
        config.blobs.run_wait_ms = 2_000;
        let eyes: AgentConfig = serde_json::from_value(json!({
            "kind": "openai", "base_url": shared.model, "model": "vision-model", "vision": true,
        }))
        .unwrap();
        config.agents.insert("eyes".into(), eyes);
        for (name, token) in [("team", WORKER_TOKEN), ("other", OTHER_TOKEN)] {
            let agent: AgentConfig = serde_json::from_value(
                json!({"kind": "worker", "token": token, "offline_after_ms": 60000}),
            )
            .unwrap();
            config.agents.insert(name.into(), agent);
        }
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
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the host stops")
            .expect("the serve task ends")
            .expect("the host stops cleanly");
    }

    /// The open installation of [`APP_ID`], bound to `team`.
    async fn installation(&self) -> String {
        self.installation_for(APP_ID, "team").await
    }

    /// An open installation of `app_id`, bound to `agent`.
    async fn installation_for(&self, app_id: &str, agent: &str) -> String {
        let response = self
            .client
            .post(format!("{}/api/installations", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "channel": "lark", "routing_key": app_id, "name": app_id,
                    "agent": agent, "debounce_ms": 50,
                    "config": {"app_id": app_id},
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "media-secret",
                    },
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let status = response.status();
        let created: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// Delivers a p2p message of `message_type` with `content` through the webhook of the
    /// installation of [`APP_ID`].
    async fn message(
        &self,
        installation: &str,
        message_id: &str,
        message_type: &str,
        content: Value,
    ) {
        self.message_as(APP_ID, installation, message_id, message_type, content)
            .await
    }

    /// Delivers a p2p message to `installation` (of `app_id`) through its webhook.
    async fn message_as(
        &self,
        app_id: &str,
        installation: &str,
        message_id: &str,
        message_type: &str,
        content: Value,
    ) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, "")).unwrap();
        event["header"]["app_id"] = json!(app_id);
        event["event"]["message"]["message_type"] = json!(message_type);
        event["event"]["message"]["content"] = json!(content.to_string());
        self.deliver(installation, event).await
    }

    /// Delivers a p2p text message replying to `parent_id`.
    async fn reply(&self, installation: &str, message_id: &str, parent_id: &str, text: &str) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        event["header"]["app_id"] = json!(APP_ID);
        event["event"]["message"]["parent_id"] = json!(parent_id);
        event["event"]["message"]["root_id"] = json!(parent_id);
        self.deliver(installation, event).await
    }

    /// Delivers the event `event` to `installation`'s webhook, encrypted and signed.
    async fn deliver(&self, installation: &str, event: Value) {
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&event).unwrap(), [7; 16]);
        let mut request = self
            .client
            .post(format!("{}/hooks/lark/{installation}", self.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// `team`'s worker claims the next run (waiting for it).
    async fn claim(&self) -> Claimed {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let response = self
                .client
                .post(format!(
                    "{}/api/agents/team/runs/claim?wait_ms=500",
                    self.base
                ))
                .bearer_auth(WORKER_TOKEN)
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                let claim: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                if claim["kind"] == "compact" {
                    continue;
                }
                return Claimed {
                    session: claim["session_id"].as_str().unwrap().to_string(),
                    run: claim["run_id"].as_str().unwrap().to_string(),
                    claim,
                };
            }
        }
        panic!("no run to claim within {WAIT:?}");
    }

    async fn complete(&self, run: &Claimed, reply: &str) {
        let response = self
            .client
            .post(format!(
                "{}/api/agents/team/runs/{}/{}/complete",
                self.base, run.session, run.run
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"reply": reply}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// GET `path` (relative to the host) with `token`: status, content type, body.
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            status,
            content_type,
            response.bytes().await.unwrap().to_vec(),
        )
    }
}

/// The attachment records of the claim's messages, in order.
fn records(claim: &Value) -> Vec<Value> {
    claim["context"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["meta"]["attachments"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// Polls the blob rows of `session` until `done` holds for them.
async fn wait_for_rows(
    db: &Database,
    session: &str,
    done: impl Fn(&[BlobRow]) -> bool,
) -> Vec<BlobRow> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = db.blobs().for_session(session).await.unwrap();
        if done(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "blob rows never reached the expected state: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shared(database_url: &str, blobs: &Path) -> Shared {
    let model_requests = Arc::new(Mutex::new(Vec::new()));
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(mock_model))
        .with_state(model_requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Shared {
        fake: Arc::new(FakeLark::start().await),
        database_url: database_url.to_string(),
        key: switchboard::store::SecretCipher::generate_key_hex(),
        blobs: blobs.to_path_buf(),
        model,
        model_requests,
        max_installation_bytes: 1 << 30,
    }
}

#[tokio::test]
async fn the_installation_cap_refuses_what_would_pass_it() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let mut shared = shared(&test_db.url, dir.path()).await;
        shared.max_installation_bytes = MAX_FILE_BYTES;
        let size = MAX_FILE_BYTES as usize * 2 / 3;
        shared.fake.add_resource("file_v3_one", vec![1u8; size]);
        shared.fake.add_resource("file_v3_two", vec![2u8; size]);
        let world = World::start(&shared, 5).await;
        let installation = world.installation().await;
        for (message, key) in [("om_one", "file_v3_one"), ("om_two", "file_v3_two")] {
            world
                .message(
                    &installation,
                    message,
                    "file",
                    json!({"file_key": key, "file_name": format!("{key}.bin")}),
                )
                .await;
        }
        let run = world.claim().await;
        let rows = wait_for_rows(&test_db.db, &run.session, |rows| {
            rows.len() == 2 && rows.iter().all(|r| r.state != BlobState::Pending)
        })
        .await;
        let stored = rows.iter().filter(|r| r.state == BlobState::Stored).count();
        let refused: Vec<&BlobRow> = rows
            .iter()
            .filter(|r| r.state == BlobState::Failed)
            .collect();
        assert_eq!(stored, 1, "{name}: the first fits: {rows:?}");
        let [refused] = refused.as_slice() else {
            panic!("{name}: one refused: {rows:?}");
        };
        assert!(
            refused
                .error
                .as_deref()
                .is_some_and(|e| e.contains("installation's cap")),
            "{name}: {refused:?}"
        );
        world.complete(&run, "ok").await;
        world.stop().await;
    }
}

#[tokio::test]
async fn a_vision_model_gets_the_stored_image_as_an_image_part() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        shared.fake.add_resource("img_v3_seen", png());
        let world = World::start(&shared, 5).await;
        let app_id = "cli_media0eyes000001";
        let installation = world.installation_for(app_id, "eyes").await;
        world
            .message_as(
                app_id,
                &installation,
                "om_eyes_1",
                "image",
                json!({"image_key": "img_v3_seen"}),
            )
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let request = loop {
            if let Some(request) = shared.model_requests.lock().unwrap().first().cloned() {
                break request;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: the model was never asked"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(png());
        assert_eq!(
            request["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": format!("[Image]\n[attachment: image, image/png, {} bytes]", png().len())},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}},
            ]}]),
            "{name}: the run waited for the download and sent the stored image"
        );
        // The model's answer reaches the chat.
        while shared.fake.posted_messages().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: no reply posted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        world.stop().await;
    }
}

#[tokio::test]
async fn an_image_is_stored_and_served_to_its_agent_only() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        shared.fake.add_resource("img_v3_cat", png());
        shared.fake.add_resource("img_v3_inpost", pdf());
        let world = World::start(&shared, 5).await;
        let installation = world.installation().await;
        world
            .message(
                &installation,
                "om_img_1",
                "image",
                json!({"image_key": "img_v3_cat"}),
            )
            .await;
        let run = world.claim().await;
        let [record] = records(&run.claim).try_into().expect("one attachment");
        assert_eq!(record["state"], "stored", "{name}: {record}");
        assert_eq!(record["kind"], "image");
        assert_eq!(record["ref"], "img_v3_cat");
        assert_eq!(record["sha256"], sha256_hex(&png()), "{name}");
        // The channel said application/octet-stream; the bytes say PNG.
        assert_eq!(record["mime"], "image/png", "{name}");
        assert_eq!(record["size"], png().len(), "{name}");
        let url = record["url"].as_str().unwrap().to_string();
        let blob_id = record["blob_id"].as_str().unwrap();
        assert_eq!(url, format!("/api/agents/team/blobs/{blob_id}"));
        let sha = sha256_hex(&png());
        assert_eq!(
            std::fs::read(dir.path().join(&sha[..2]).join(&sha)).unwrap(),
            png(),
            "{name}: the file is content-addressed in the blob directory"
        );

        let (status, content_type, bytes) = world.get(&url, Some(WORKER_TOKEN)).await;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "image/png"),
            "{name}"
        );
        assert_eq!(bytes, png(), "{name}: the bytes are the channel's");
        let (status, _, _) = world.get(&url, None).await;
        assert_eq!(status, 401, "{name}: no token, no bytes");
        let (status, _, _) = world.get(&url, Some("wrong-token")).await;
        assert_eq!(status, 401, "{name}: a wrong token");
        let other = url.replace("/agents/team/", "/agents/other/");
        let (status, _, _) = world.get(&other, Some(OTHER_TOKEN)).await;
        assert_eq!(
            status, 404,
            "{name}: another agent never reaches this agent's blobs"
        );
        let (status, _, _) = world
            .get(
                "/api/agents/team/blobs/bl_does_not_exist",
                Some(WORKER_TOKEN),
            )
            .await;
        assert_eq!(status, 404, "{name}");

        // The old route serves the stored bytes without another download.
        let downloads = shared.fake.resource_downloads("img_v3_cat");
        let (status, content_type, bytes) = world
            .get(
                &format!(
                    "/api/agents/team/runs/{}/{}/attachment?message=om_img_1&ref=img_v3_cat",
                    run.session, run.run
                ),
                Some(WORKER_TOKEN),
            )
            .await;
        assert_eq!(
            (status, content_type.as_str(), bytes),
            (200, "image/png", png())
        );
        assert_eq!(
            shared.fake.resource_downloads("img_v3_cat"),
            downloads,
            "{name}"
        );
        world.complete(&run, "a cat").await;

        // A post with an image: its image becomes a blob too (the type from the bytes: a PDF
        // sent under an image key is stored as what it is).
        world
            .message(
                &installation,
                "om_post_1",
                "post",
                json!({"title": "Look", "content": [[
                    {"tag": "text", "text": "see this "},
                    {"tag": "img", "image_key": "img_v3_inpost"},
                ]]}),
            )
            .await;
        let run = world.claim().await;
        let stored: Vec<Value> = records(&run.claim)
            .into_iter()
            .filter(|r| r["ref"] == "img_v3_inpost")
            .collect();
        let [record] = stored.try_into().expect("the post's image");
        assert_eq!(record["state"], "stored", "{name}: {record}");
        assert_eq!(record["mime"], "application/pdf", "{name}");
        let (status, _, bytes) = world
            .get(record["url"].as_str().unwrap(), Some(WORKER_TOKEN))
            .await;
        assert_eq!((status, bytes), (200, pdf()), "{name}");
        world.complete(&run, "seen").await;
        world.stop().await;
    }
}

#[tokio::test]
async fn failed_downloads_leave_placeholders_and_the_run_still_happens() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        shared
            .fake
            .add_resource_error("file_v3_gone", 400, 234_003, "File not in msg.");
        shared
            .fake
            .add_resource("file_v3_big", vec![7u8; MAX_FILE_BYTES as usize + 1]);
        let world = World::start(&shared, 5).await;
        let installation = world.installation().await;
        world
            .message(
                &installation,
                "om_file_gone",
                "file",
                json!({"file_key": "file_v3_gone", "file_name": "gone.pdf"}),
            )
            .await;
        world
            .message(
                &installation,
                "om_file_big",
                "file",
                json!({"file_key": "file_v3_big", "file_name": "big.bin"}),
            )
            .await;
        let run = world.claim().await;
        let mut found = records(&run.claim);
        // Both messages may be one run or two (debounce): collect until both were seen.
        if found.len() < 2 {
            world.complete(&run, "one").await;
            let next = world.claim().await;
            found.extend(records(&next.claim));
            world.complete(&next, "two").await;
        } else {
            world.complete(&run, "both").await;
        }
        let by_ref = |reference: &str| {
            found
                .iter()
                .find(|r| r["ref"] == reference)
                .unwrap_or_else(|| panic!("{name}: no record of {reference}: {found:?}"))
                .clone()
        };
        let gone = by_ref("file_v3_gone");
        assert_eq!(gone["state"], "failed", "{name}: {gone}");
        assert_eq!(gone["name"], "gone.pdf");
        assert_eq!(
            gone["error"], "the channel refused to hand out the file",
            "{name}: the host's words, not the channel's"
        );
        assert_eq!(
            shared.fake.resource_downloads("file_v3_gone"),
            1,
            "{name}: a refusal is not retried"
        );
        let big = by_ref("file_v3_big");
        assert_eq!(big["state"], "failed", "{name}: {big}");
        assert!(
            big["error"].as_str().unwrap().contains("per-file cap"),
            "{name}: {big}"
        );
        let (status, _, body) = world
            .get(big["url"].as_str().unwrap(), Some(WORKER_TOKEN))
            .await;
        assert_eq!(status, 410, "{name}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("per-file cap"),
            "{body}"
        );
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .all(|e| !e.unwrap().path().is_dir()),
            "{name}: nothing was written for refused files"
        );
        // The messages and the runs survived: the replies reached the chat.
        let deadline = tokio::time::Instant::now() + WAIT;
        while shared.fake.posted_messages().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: no reply posted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        world.stop().await;
    }
}

#[tokio::test]
async fn a_pending_download_is_completed_by_the_next_process() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        shared.fake.add_resource("img_v3_later", png());
        shared.fake.add_resource("img_v3_leased", png());
        // The channel is down: every download fails (retryable), so the rows stay pending.
        shared
            .fake
            .set_failure(Route::Resource, Failure::ServerError);
        let world = World::start(&shared, 100).await;
        let installation = world.installation().await;
        world
            .message(
                &installation,
                "om_later",
                "image",
                json!({"image_key": "img_v3_later"}),
            )
            .await;
        world
            .message(
                &installation,
                "om_leased",
                "image",
                json!({"image_key": "img_v3_leased"}),
            )
            .await;
        let db = &test_db.db;
        let session = {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let downloads = shared.fake.resource_downloads("img_v3_later")
                    + shared.fake.resource_downloads("img_v3_leased");
                if downloads >= 2 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: no download tried"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let run = world.claim().await; // the run does not wait forever for them
            for record in records(&run.claim) {
                assert_eq!(record["state"], "pending", "{name}: {record}");
            }
            world.complete(&run, "later").await;
            run.session
        };
        world.stop().await;
        let rows = db.blobs().for_session(&session).await.unwrap();
        assert!(
            rows.len() == 2 && rows.iter().all(|r| r.state == BlobState::Pending),
            "{name}: the stopped host left them pending: {rows:?}"
        );
        // A process that claimed one (once its backoff passed) and was killed mid-download:
        // its lease holds the row for a second more.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let leased = db
                .blobs()
                .claim_due("killed-host", now_ms, 1_000, 1)
                .await
                .unwrap();
            if leased.len() == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: nothing came due"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The channel is back; the next process finishes both (the leased one after its lease).
        shared.fake.clear_failures();
        let world = World::start(&shared, 100).await;
        let rows = wait_for_rows(db, &session, |rows| {
            rows.len() == 2 && rows.iter().all(|r| r.state == BlobState::Stored)
        })
        .await;
        for row in &rows {
            assert_eq!(
                row.sha256.as_deref(),
                Some(sha256_hex(&png()).as_str()),
                "{name}"
            );
            assert_eq!(row.mime.as_deref(), Some("image/png"), "{name}");
        }
        world.stop().await;
    }
}

/// A REST message item (`GET /open-apis/im/v1/messages/{id}`) of `msg_type` from a user.
fn rest_item(id: &str, msg_type: &str, content: &str, create_ms: i64) -> Value {
    json!({
        "message_id": id,
        "msg_type": msg_type,
        "create_time": create_ms.to_string(),
        "deleted": false,
        "chat_id": "oc_media_chat",
        "sender": {"id": "ou_media_sender", "id_type": "open_id", "sender_type": "user"},
        "body": {"content": content},
    })
}

/// The record of the claim whose `ref` is `reference`.
fn record_of(claim: &Value, reference: &str) -> Value {
    let found: Vec<Value> = records(claim)
        .into_iter()
        .filter(|r| r["ref"] == reference)
        .collect();
    let [record] = found.try_into().unwrap_or_else(|found: Vec<Value>| {
        panic!("one record with ref {reference}: {found:?} in {claim}")
    });
    record
}

#[tokio::test]
async fn quoted_images_are_downloaded_and_forwarded_ones_are_placeholders() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        // The quoted parent: an image message whose bytes Lark serves through the parent only.
        shared.fake.add_message(
            "om_parent_img",
            vec![rest_item(
                "om_parent_img",
                "image",
                r#"{"image_key":"img_v3_quoted"}"#,
                1_000,
            )],
        );
        shared
            .fake
            .add_message_resource("om_parent_img", "img_v3_quoted", png());
        // A forwarded bundle: the container, a text child and an image child.
        let mut image_child = rest_item(
            "om_fwd_child_2",
            "image",
            r#"{"image_key":"img_v3_forwarded"}"#,
            2_000,
        );
        image_child["upper_message_id"] = json!("om_fwd_1");
        let mut text_child = rest_item("om_fwd_child_1", "text", r#"{"text":"look"}"#, 1_500);
        text_child["upper_message_id"] = json!("om_fwd_1");
        shared.fake.add_message(
            "om_fwd_1",
            vec![
                rest_item(
                    "om_fwd_1",
                    "merge_forward",
                    "Merged and Forwarded Message",
                    3_000,
                ),
                text_child,
                image_child,
            ],
        );
        shared
            .fake
            .add_message_resource("om_fwd_child_2", "img_v3_forwarded", pdf());
        let world = World::start(&shared, 5).await;
        let installation = world.installation().await;

        // 1. A reply quoting the image.
        world
            .reply(
                &installation,
                "om_reply_1",
                "om_parent_img",
                "what is this?",
            )
            .await;
        let run = world.claim().await;
        let record = record_of(&run.claim, "om_parent_img/img_v3_quoted");
        assert_eq!(record["state"], "stored", "{name}: {record}");
        assert_eq!(record["origin"], "context", "{name}: {record}");
        assert_eq!(record["kind"], "image", "{name}");
        assert_eq!(record["sha256"], sha256_hex(&png()), "{name}");
        assert_eq!(record["mime"], "image/png", "{name}");
        let (status, content_type, bytes) = world
            .get(record["url"].as_str().unwrap(), Some(WORKER_TOKEN))
            .await;
        assert_eq!(
            (status, content_type.as_str(), bytes),
            (200, "image/png", png()),
            "{name}: the worker fetches the quoted image with its token"
        );
        let (status, _, _) = world.get(record["url"].as_str().unwrap(), None).await;
        assert_eq!(status, 401, "{name}: not without it");
        assert_eq!(
            shared.fake.resource_download_messages("img_v3_quoted"),
            ["om_parent_img"],
            "{name}: downloaded once, through the quoted message"
        );
        let body = run.claim["context"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["body"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(body.contains("quoted_message"), "{name}: {body}");
        world.complete(&run, "a picture").await;

        // 2. A forwarded bundle with an image. Lark serves no resource of a merged forward's
        // sub-messages (234043): the image is reported, tried once through its own message,
        // and left as a placeholder the agent sees; the message itself is stored.
        world
            .message(&installation, "om_fwd_1", "merge_forward", json!({}))
            .await;
        let run = world.claim().await;
        let record = record_of(&run.claim, "om_fwd_child_2/img_v3_forwarded");
        assert_eq!(record["state"], "failed", "{name}: {record}");
        assert_eq!(record["origin"], "context", "{name}");
        assert_eq!(
            record["error"], "the channel refused to hand out the file",
            "{name}: {record}"
        );
        let (status, _, _) = world
            .get(record["url"].as_str().unwrap(), Some(WORKER_TOKEN))
            .await;
        assert_eq!(status, 410, "{name}: a placeholder has no bytes");
        assert_eq!(
            shared.fake.resource_download_messages("img_v3_forwarded"),
            ["om_fwd_child_2"],
            "{name}: tried once, through the forwarded child, not retried"
        );
        let other = record["url"]
            .as_str()
            .unwrap()
            .replace("/agents/team/", "/agents/other/");
        let (status, _, _) = world.get(&other, Some(OTHER_TOKEN)).await;
        assert_eq!(status, 404, "{name}: another agent never reaches it");
        world.complete(&run, "forwarded").await;
        world.stop().await;
    }
}

#[tokio::test]
async fn a_quoted_image_that_fails_to_download_leaves_a_placeholder_and_the_message() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(&test_db.url, dir.path()).await;
        shared.fake.add_message(
            "om_parent_gone",
            vec![rest_item(
                "om_parent_gone",
                "image",
                r#"{"image_key":"img_v3_gone"}"#,
                1_000,
            )],
        );
        shared
            .fake
            .add_resource_error("img_v3_gone", 400, 234_003, "File not in msg.");
        let world = World::start(&shared, 2).await;
        let installation = world.installation().await;
        world
            .reply(
                &installation,
                "om_reply_gone",
                "om_parent_gone",
                "and this one?",
            )
            .await;
        // The run waited for the download to settle: the claim shows the placeholder.
        let run = world.claim().await;
        let claimed = run.claim.clone();
        let record = record_of(&claimed, "om_parent_gone/img_v3_gone");
        assert_eq!(record["state"], "failed", "{name}: {record}");
        assert_eq!(
            record["error"], "the channel refused to hand out the file",
            "{name}: {record}"
        );
        let rows = wait_for_rows(&test_db.db, &run.session, |rows| !rows.is_empty()).await;
        assert_eq!(rows.len(), 1, "{name}: {rows:?}");
        assert_eq!(rows[0].state, BlobState::Failed, "{name}: {rows:?}");
        assert_eq!(rows[0].channel_message_id, "om_reply_gone", "{name}");
        let (status, _, _) = world
            .get(record["url"].as_str().unwrap(), Some(WORKER_TOKEN))
            .await;
        assert_eq!(status, 410, "{name}: a placeholder has no bytes");
        let messages = claimed["context"]["messages"].as_array().unwrap();
        assert!(
            messages.iter().any(|m| m["body"]
                .as_str()
                .is_some_and(|b| b.contains("and this one?"))),
            "{name}: the message is stored: {claimed}"
        );
        world.complete(&run, "could not see it").await;
        world.stop().await;
    }
}
