//! Issue 18, part 2: Lark card actions (`card.action.trigger`) end to end — the real
//! `App::serve`, the bundled Lark plugin, a worker agent, and `tests/fake-lark`. On SQLite and
//! PostgreSQL:
//!
//! - a card action over the long connection is ACKed with the host's toast (its catalogue's
//!   "received" words; base64 in the ACK's
//!   `data`, decoded at the fake) and reaches the worker as an action turn with its value; the
//!   stored turn names the user who pressed the button;
//! - the same over an encrypted, signed webhook, answered with the toast as the HTTP body; a
//!   bad signature is refused and stores nothing;
//! - a card action built by the official Node SDK (`@larksuiteoapi/node-sdk`: its `pbbp2`
//!   frame encoder and the event a `card.action.trigger` handler receives) is decoded, ACKed
//!   with the toast in a frame the SDK's decoder reads, and reaches the worker.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use base64::Engine as _;
use fake_lark::FakeLark;
use serde_json::{Value, json};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "card-action-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "card-action-worker-token-0123456789";
const FIXTURE: &str = "event_card_action_trigger.json";
const USER: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";

struct World {
    test_db: db::TestDb,
    base: String,
    client: reqwest::Client,
    fake: FakeLark,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl World {
    async fn start(test_db: db::TestDb) -> World {
        let fake = FakeLark::start().await;
        let mut config = Config::default();
        config.database.url = test_db.url.clone();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config
            .plugins
            .base_urls
            .insert("https://open.feishu.cn".into(), fake.origin().to_string());
        config.plugins.base_urls.insert(
            "wss://msg-frontier.feishu.cn".into(),
            fake.ws_origin().to_string(),
        );
        let c = &mut config.connections;
        c.poll_interval_ms = 100;
        c.backoff_initial_ms = 50;
        c.backoff_max_ms = 400;
        config.delivery.first_backoff_ms = 50;
        config.delivery.poll_interval_ms = 50;
        let team: AgentConfig = serde_json::from_value(
            json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000}),
        )
        .unwrap();
        config.agents.insert("team".into(), team);
        let app = App::from_config(&config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        World {
            test_db,
            base,
            client: reqwest::Client::new(),
            fake,
            stop: Some(stop),
            task,
        }
    }

    fn name(&self) -> &str {
        &self.test_db.name
    }

    /// An installation of `app_id` bound to the worker agent, with extra `config`.
    async fn installation(&self, app_id: &str, config: Value) -> String {
        let mut values = json!({"app_id": app_id, "reply_mode": "final"});
        values
            .as_object_mut()
            .unwrap()
            .extend(config.as_object().unwrap().clone());
        let response = self
            .client
            .post(format!("{}/api/installations", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "channel": "lark", "routing_key": app_id, "name": app_id,
                    "agent": "team", "debounce_ms": 50,
                    "config": values,
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "card-action-secret",
                    },
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let created: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// The worker claims the next run (waiting up to 10 s) and returns the claim.
    async fn claim(&self) -> Value {
        for _ in 0..20 {
            let response = self
                .client
                .post(format!(
                    "{}/api/agents/team/runs/claim?wait_ms=500",
                    self.base
                ))
                .bearer_auth(WORKER_TOKEN)
                .header("x-switchboard-worker", "card-action-worker")
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                let claim: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                if claim["kind"] != "compact" {
                    return claim;
                }
            }
        }
        panic!("{}: no run to claim", self.name());
    }

    /// Completes a claimed run with `reply`.
    async fn complete(&self, claim: &Value, reply: &str) {
        let status = self
            .client
            .post(format!(
                "{}/api/agents/team/runs/{}/{}/complete",
                self.base,
                claim["session_id"].as_str().unwrap(),
                claim["run_id"].as_str().unwrap()
            ))
            .bearer_auth(WORKER_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"reply": reply}).to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{}", self.name());
    }

    /// The stored turns of `installation` whose channel message id is `id`, as
    /// `(kind, sender, body)`.
    async fn stored(&self, installation: &str, id: &str) -> Vec<(String, Option<String>, String)> {
        let ingest = self.test_db.db.ingest();
        let mut found = Vec::new();
        for session in ingest.list_sessions(installation).await.unwrap() {
            for message in ingest.list_messages(&session.id).await.unwrap() {
                if message.channel_message_id.as_deref() == Some(id) {
                    found.push((message.kind, message.sender_id, message.body));
                }
            }
        }
        found
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

/// The fixture's card action, re-addressed to `app_id` with event id `event_id`.
fn card_action(app_id: &str, event_id: &str) -> Value {
    let mut event: Value =
        serde_json::from_slice(&std::fs::read(lark::fixture(FIXTURE)).unwrap()).unwrap();
    event["header"]["app_id"] = json!(app_id);
    event["header"]["event_id"] = json!(event_id);
    event
}

/// Checks a toast answer: `{"toast":{"type","content",…}}` with non-empty text.
fn assert_toast(answer: &[u8], name: &str) {
    let answer: Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("{name}: the answer is not JSON ({e})"));
    assert_eq!(answer["toast"]["type"], "info", "{name}: {answer}");
    assert!(
        answer["toast"]["content"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{name}: {answer}"
    );
}

/// Checks the claimed context's last message is the action turn with its name and value.
fn assert_action_turn(claim: &Value, value_part: &str, name: &str) {
    let messages = claim["context"]["messages"].as_array().unwrap();
    let turn = messages.last().unwrap();
    assert_eq!(turn["role"], "user", "{name}: {claim}");
    let body = turn["body"].as_str().unwrap();
    // The enricher may quote the card's message (parent) before the action line.
    assert!(body.contains("[action approve] "), "{name}: {body}");
    assert!(body.contains(value_part), "{name}: {body}");
    let action = &turn["meta"]["action"];
    assert_eq!(action["name"], "approve", "{name}: {claim}");
    assert!(
        action["value"].as_str().unwrap().contains(value_part),
        "{name}: {claim}"
    );
    assert_eq!(
        action["message_id"], "om_5b3c0000000000000000000000ccc001",
        "{name}: {claim}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_action_over_the_websocket_is_acked_with_the_toast_and_reaches_the_worker() {
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_cardws1";
        let id = world
            .installation(app_id, json!({"connection": "websocket"}))
            .await;
        eventually("the long connection", || {
            (world.fake.live_connections() == 1).then_some(())
        })
        .await;

        let tm = world
            .fake
            .push_event(app_id, &card_action(app_id, "ev-card-ws-1"));
        let ack = eventually("the ACK", || {
            world.fake.acks().into_iter().find(|a| a.message_id == tm)
        })
        .await;
        assert_eq!(ack.code, 200, "{name}");
        let data = ack.data.expect("the ACK carries the callback answer");
        let answer = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .unwrap_or_else(|e| panic!("{name}: data is not base64 ({e}): {data}"));
        assert_toast(&answer, &name);

        let claim = world.claim().await;
        assert_action_turn(&claim, "req-42", &name);
        let stored = world.stored(&id, "ev-card-ws-1").await;
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        assert_eq!(stored[0].0, "action", "{name}");
        assert_eq!(stored[0].1.as_deref(), Some(USER), "{name}: the user");
        world.complete(&claim, "approved").await;

        // A re-push of the same callback is ACKed with the toast again and stored once.
        let again = world
            .fake
            .push_event(app_id, &card_action(app_id, "ev-card-ws-1"));
        let ack = eventually("the second ACK", || {
            world
                .fake
                .acks()
                .into_iter()
                .find(|a| a.message_id == again)
        })
        .await;
        assert_eq!(ack.code, 200, "{name}");
        assert!(ack.data.is_some(), "{name}: the re-push is answered too");
        assert_eq!(world.stored(&id, "ev-card-ws-1").await.len(), 1, "{name}");
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_action_over_a_webhook_is_answered_with_the_toast_and_reaches_the_worker() {
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_cardhook1";
        let id = world.installation(app_id, json!({})).await;
        let event = serde_json::to_vec(&card_action(app_id, "ev-card-hook-1")).unwrap();

        // A tampered signature is refused, without the toast, and nothing is stored.
        let (mut headers, body) = lark::encrypted_delivery(&event, [9; 16]);
        for (key, value) in headers.iter_mut() {
            if key == "x-lark-signature" {
                *value = "0".repeat(64);
            }
        }
        let mut request = world
            .client
            .post(format!("{}/hooks/lark/{id}", world.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{name}");
        assert!(
            !response.text().await.unwrap().contains("toast"),
            "{name}: no answer to a forged callback"
        );
        assert!(world.stored(&id, "ev-card-hook-1").await.is_empty());

        let (headers, body) = lark::encrypted_delivery(&event, [7; 16]);
        let mut request = world
            .client
            .post(format!("{}/hooks/lark/{id}", world.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{name}");
        assert_toast(&response.bytes().await.unwrap(), &name);

        let claim = world.claim().await;
        assert_action_turn(&claim, "req-42", &name);
        let stored = world.stored(&id, "ev-card-hook-1").await;
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        assert_eq!(stored[0].1.as_deref(), Some(USER), "{name}: the user");
        world.complete(&claim, "approved").await;
        world.stop().await;
    }
}

/// The directory `npm ci` installed the official Lark Node SDK into (`tests/sdk/lark-node`'s
/// exact version): `LARK_NODE_SDK_DIR` when it already holds that install, else a new temp dir.
/// Panics (never skips) with what to install when Node or the package is missing.
fn lark_node_sdk() -> std::path::PathBuf {
    const HOWTO: &str = "this test needs Node.js (>= 18) and npm, and the npm registry to \
         install @larksuiteoapi/node-sdk: install Node (e.g. `apt-get install nodejs npm`), or \
         run `npm ci` in a copy of tests/sdk/lark-node and point LARK_NODE_SDK_DIR at it";
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/lark-node");
    let lock = std::fs::read(sources.join("package-lock.json")).unwrap();
    let installed = |dir: &std::path::Path| {
        dir.join("node_modules/@larksuiteoapi/node-sdk/package.json")
            .is_file()
            && std::fs::read(dir.join("package-lock.json")).ok().as_deref() == Some(&lock[..])
    };
    if let Some(dir) = std::env::var_os("LARK_NODE_SDK_DIR").map(std::path::PathBuf::from)
        && installed(&dir)
    {
        return dir;
    }
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|out| out.status.success()),
        "`node` is not runnable ({node:?}); {HOWTO}"
    );
    // One install per lock file, reused by later runs (`installed` checks it).
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lock.hash(&mut hasher);
        hasher.finish()
    };
    let dir = std::env::temp_dir().join(format!("switchboard-lark-node-sdk-{digest:016x}"));
    if installed(&dir) {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(sources.join(file), dir.join(file)).unwrap();
    }
    let npm = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .output();
    match &npm {
        Ok(out) if out.status.success() && installed(&dir) => dir,
        _ => panic!("`npm ci` of @larksuiteoapi/node-sdk failed ({npm:?}); {HOWTO}"),
    }
}

/// Runs `tests/sdk/lark-node/card_action.cjs` with the SDK in `sdk`; its JSON output.
fn node_sdk(sdk: &std::path::Path, args: &[&str]) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sdk/lark-node/card_action.cjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .args(args)
        .env("LARK_NODE_SDK_DIR", sdk)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the Node SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_action_framed_by_the_official_node_sdk_is_acked_in_a_frame_it_reads() {
    use switchboard_lark::transport::{AckStatus, FrameClass, build_ack, classify_frame};
    let sdk = lark_node_sdk();
    let app_id = "cli_cardsdk1";
    let event_file = std::env::temp_dir().join(format!(
        "switchboard-card-action-{}.json",
        std::process::id()
    ));
    std::fs::write(
        &event_file,
        serde_json::to_vec(&card_action(app_id, "ev-card-sdk-1")).unwrap(),
    )
    .unwrap();
    let encoded = node_sdk(&sdk, &["encode", event_file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&event_file);
    let frame = hex::decode(encoded["frame_hex"].as_str().unwrap()).unwrap();
    let seen = &encoded["handler"];

    // The plugin's codec reads the SDK's frame; its decoder agrees with what the SDK's handler got.
    let FrameClass::Data(data) = classify_frame(&frame).unwrap() else {
        panic!("the SDK's event frame is a data frame");
    };
    assert_eq!(data.kind, "event");
    let action = switchboard_lark::card_action::decode_card_action(&data.payload)
        .unwrap()
        .expect("a card action");
    assert_eq!(seen["event_id"], action.event_id.as_str());
    assert_eq!(seen["app_id"], action.app_id.as_str());
    assert_eq!(seen["open_id"], action.open_id.as_str());
    assert_eq!(seen["open_chat_id"], action.chat_id.as_str());
    assert_eq!(
        seen["open_message_id"],
        action.message_id.as_deref().unwrap()
    );
    assert_eq!(seen["value"]["action"], action.name.as_str());
    assert_eq!(
        seen["value"],
        serde_json::from_str::<Value>(&action.value).unwrap()
    );

    // The plugin's ACK, read by the SDK's decoder: the same frame, biz_rt added, code 200 and
    // the toast in `data` encoded the way the SDK encodes its handlers' answers.
    // The answer the host gives a plain card action (its "received" words in the default
    // locale), built by the plugin's `answer-action`.
    let response = switchboard_lark::card_action::answer_body("Received", "info", None);
    let ack = build_ack(&frame, AckStatus::Ok, 12, Some(&response)).unwrap();
    let read = node_sdk(&sdk, &["decode", &hex::encode(&ack)]);
    assert_eq!(read["SeqID"], 7760);
    assert_eq!(
        (read["service"].clone(), read["method"].clone()),
        (json!(4921), json!(1))
    );
    let headers = read["headers"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["message_id", "sdk-card-action-1"])),
        "{read}"
    );
    assert!(headers.contains(&json!(["biz_rt", "12"])), "{read}");
    assert_eq!(read["payload"]["code"], 200, "{read}");
    assert_eq!(read["answer"]["toast"]["type"], "info", "{read}");
    let ours = read["payload"]["data"].as_str().unwrap();
    assert_toast(
        &base64::engine::general_purpose::STANDARD
            .decode(ours)
            .unwrap(),
        "sdk",
    );
    // The SDK's own ACK data for a handler answer is base64 of its JSON, as ours is.
    let sdk_data = base64::engine::general_purpose::STANDARD
        .decode(encoded["sdk_ack_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&sdk_data).unwrap()["toast"]["content"],
        "sdk handler"
    );

    // The payload of the SDK's frame through the real host on both databases.
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        // English: the plugin's on-install would default a Feishu installation to zh_cn.
        let id = world
            .installation(
                app_id,
                json!({"connection": "websocket", "locale": "en_us"}),
            )
            .await;
        eventually("the long connection", || {
            (world.fake.live_connections() == 1).then_some(())
        })
        .await;
        let tm = world.fake.push_payload(app_id, data.payload.clone());
        let ack = eventually("the ACK", || {
            world.fake.acks().into_iter().find(|a| a.message_id == tm)
        })
        .await;
        assert_eq!(ack.code, 200, "{name}");
        assert_eq!(ack.data.as_deref(), Some(ours), "{name}: the same toast");
        let claim = world.claim().await;
        assert_action_turn(&claim, "req-42", &name);
        let stored = world.stored(&id, "ev-card-sdk-1").await;
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        assert_eq!(stored[0].1.as_deref(), Some(USER), "{name}");
        world.complete(&claim, "approved").await;
        world.stop().await;
    }
}
