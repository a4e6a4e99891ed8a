//! Issue 18, approvals: a worker asks the chat for a decision and waits for it — the real
//! `App::serve`, the bundled Lark plugin, a worker agent and `tests/fake-lark`, on SQLite and
//! PostgreSQL:
//!
//! - the approval card (schema 2.0, two callback buttons labelled in the installation's
//!   locale) reaches the fake;
//! - a non-approver's press is refused with the host's toast and changes nothing;
//! - an approver's press (its frame made by the official Node SDK's encoder) is ACKed with the
//!   toast and the updated card (the decision, no buttons), and the worker's long-poll returns
//!   `approved` with the user;
//! - a second press and a redelivered press change nothing;
//! - an approval nobody decides expires: the card is replaced through the callback token a
//!   press left (`interactive/v1/card/update` at the fake), the worker sees `expired`;
//! - the worker API's abuse cases: another agent's token, another run's path, limits;
//! - notices and toasts in `zh_cn` and `en_us`.

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

const ADMIN: &str = "approvals-admin-token-0123456789abcdef0";
/// The product name the hosts are configured with.
const PRODUCT: &str = "Acme Desk";
const WORKER_TOKEN: &str = "approvals-worker-token-0123456789ab";
const OTHER_TOKEN: &str = "approvals-other-worker-token-012345";
/// The sender of the fixture's p2p message, and the approver.
const USER: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";
/// The fixture's p2p chat.
const CHAT: &str = "oc_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
const STRANGER: &str = "ou_0000000000000000000000000000beef";

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
        // The operator names the product and words the fresh-context notice with it.
        config.product_name = Some(PRODUCT.into());
        config.notices.insert(
            "en".into(),
            [(
                "fresh_context".to_string(),
                "{product}: your next message starts a fresh conversation.".to_string(),
            )]
            .into(),
        );
        config.notices.insert(
            "zh".into(),
            [(
                "fresh_context".to_string(),
                "{product}：好的，下一条消息将开始新的对话。".to_string(),
            )]
            .into(),
        );
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
            test_db,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            fake,
            stop: Some(stop),
            task,
        }
    }

    fn name(&self) -> &str {
        &self.test_db.name
    }

    /// A long-connection installation of `app_id` bound to the `team` worker agent, with the
    /// notice `locale`.
    async fn installation(&self, app_id: &str, locale: &str) -> String {
        let connected = self.fake.live_connections();
        let response = self
            .client
            .post(format!("{}/api/installations", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "channel": "lark", "routing_key": app_id, "name": app_id,
                    "agent": "team", "debounce_ms": 50,
                    "config": {"app_id": app_id, "reply_mode": "final",
                               "connection": "websocket", "locale": locale},
                    "secrets": {
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                        "app_secret": "approvals-secret",
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
        eventually("the long connection", || {
            (self.fake.live_connections() > connected).then_some(())
        })
        .await;
        created["id"].as_str().unwrap().to_string()
    }

    /// The fixture's p2p message with `text`, pushed for `app_id`.
    fn say(&self, app_id: &str, message_id: &str, text: &str) {
        let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        event["header"]["app_id"] = json!(app_id);
        self.fake.push_event(app_id, &event);
    }

    /// The worker claims the next run (waiting up to 10 s).
    async fn claim(&self) -> Value {
        for _ in 0..20 {
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
                if claim["kind"] != "compact" {
                    return claim;
                }
            }
        }
        panic!("{}: no run to claim", self.name());
    }

    fn run_url(&self, agent: &str, claim: &Value) -> String {
        format!(
            "{}/api/agents/{agent}/runs/{}/{}",
            self.base,
            claim["session_id"].as_str().unwrap(),
            claim["run_id"].as_str().unwrap()
        )
    }

    /// `POST …/approvals` with `body` as `agent` (with its token): (status, answer).
    async fn ask_as(&self, agent: &str, token: &str, claim: &Value, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/approvals", self.run_url(agent, claim)))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    /// Asks for an approval as the run's owner; its id.
    async fn ask(&self, claim: &Value, body: Value) -> String {
        let (status, answer) = self.ask_as("team", WORKER_TOKEN, claim, body).await;
        assert_eq!(status, 200, "{}: {answer}", self.name());
        assert_eq!(answer["state"], "pending");
        answer["approval_id"].as_str().unwrap().to_string()
    }

    /// `GET …/approvals/{id}?wait_s=N` as the run's owner: (status, answer).
    async fn approval(&self, claim: &Value, id: &str, wait_s: u64) -> (u16, Value) {
        let response = self
            .client
            .get(format!(
                "{}/approvals/{id}?wait_s={wait_s}",
                self.run_url("team", claim)
            ))
            .bearer_auth(WORKER_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    /// The approval card the bot sent for `approval_id` (waits up to 20 s).
    async fn approval_card(&self, approval_id: &str) -> Value {
        eventually("the approval card", || {
            self.fake.sent_messages().into_iter().find_map(|sent| {
                let content: Value = serde_json::from_str(sent.body["content"].as_str()?).ok()?;
                content.to_string().contains(approval_id).then_some(content)
            })
        })
        .await
    }

    /// Pushes a press of `operator` on button `action` of approval `approval_id` (event id
    /// `event_id`, callback token `token`) and returns the answer in its ACK, decoded.
    async fn press(
        &self,
        app_id: &str,
        event_id: &str,
        operator: &str,
        action: &str,
        approval_id: &str,
        token: &str,
    ) -> Value {
        let event = press_event(app_id, event_id, operator, action, approval_id, token);
        let tm = self.fake.push_event(app_id, &event);
        self.answer_of(&tm).await
    }

    /// The callback answer in the ACK of transport message `tm`, decoded.
    async fn answer_of(&self, tm: &str) -> Value {
        let ack = eventually("the ACK", || {
            self.fake.acks().into_iter().find(|a| a.message_id == tm)
        })
        .await;
        assert_eq!(ack.code, 200, "{}", self.name());
        let data = ack.data.expect("a card callback's ACK carries the answer");
        let answer = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// A `card.action.trigger` of `operator` in the fixture's p2p chat pressing the host's button
/// `action` (`ap.y`/`ap.n`) of approval `approval_id`.
fn press_event(
    app_id: &str,
    event_id: &str,
    operator: &str,
    action: &str,
    approval_id: &str,
    token: &str,
) -> Value {
    let mut event: Value = serde_json::from_slice(
        &std::fs::read(lark::fixture("event_card_action_trigger.json")).unwrap(),
    )
    .unwrap();
    event["header"]["app_id"] = json!(app_id);
    event["header"]["event_id"] = json!(event_id);
    event["event"]["operator"] = json!({"open_id": operator});
    event["event"]["token"] = json!(token);
    event["event"]["action"] = json!({
        "tag": "button",
        "value": {"action": action, "host_value": approval_id},
    });
    event["event"]["context"] = json!({
        "open_message_id": "om_approval_card",
        "open_chat_id": CHAT,
    });
    event
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

/// The buttons of a schema-2.0 approval card: (label, action, host value).
fn buttons(card: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![card];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if map.get("tag") == Some(&json!("button")) {
                    let value = &map["behaviors"][0]["value"];
                    assert_eq!(map["behaviors"][0]["type"], "callback", "{card}");
                    found.push((
                        map["text"]["content"].as_str().unwrap_or("").to_string(),
                        value["action"].as_str().unwrap_or("").to_string(),
                        value["host_value"].as_str().unwrap_or("").to_string(),
                    ));
                } else {
                    stack.extend(map.values());
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found.reverse();
    found
}

/// The Lark Node SDK install (see `tests/lark_card_action.rs`, which documents it).
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

/// `event` as the official Node SDK frames it (its pbbp2 encoder), read back by the plugin's
/// codec: the payload the fake then delivers.
fn sdk_framed_payload(sdk: &std::path::Path, event: &Value) -> Vec<u8> {
    use switchboard_lark::transport::{FrameClass, classify_frame};
    let file = std::env::temp_dir().join(format!(
        "switchboard-approval-press-{}-{}.json",
        std::process::id(),
        event["header"]["event_id"].as_str().unwrap()
    ));
    std::fs::write(&file, serde_json::to_vec(event).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sdk/lark-node/card_action.cjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .args(["encode", file.to_str().unwrap()])
        .env("LARK_NODE_SDK_DIR", sdk)
        .output()
        .expect("node runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the Node SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encoded: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The SDK's handler saw the host's button value as the host wrote it.
    assert_eq!(
        encoded["handler"]["value"],
        event["event"]["action"]["value"]
    );
    let frame = hex::decode(encoded["frame_hex"].as_str().unwrap()).unwrap();
    let FrameClass::Data(data) = classify_frame(&frame).unwrap() else {
        panic!("the SDK's event frame is a data frame");
    };
    data.payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_asked_with_buttons_decided_once_by_an_approver_and_the_worker_wakes() {
    let sdk = lark_node_sdk();
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_approve1";
        world.installation(app_id, "en_us").await;
        world.say(app_id, "om_deploy_1", "deploy v2 please");
        let claim = world.claim().await;

        let id = world
            .ask(
                &claim,
                json!({"prompt": "Deploy v2 to production?", "approvers": [USER], "timeout_s": 300}),
            )
            .await;
        assert!(
            format!("ap.y:{id}").len() <= 64,
            "{name}: a button's data fits 64 bytes"
        );
        let card = world.approval_card(&id).await;
        assert_eq!(card["schema"], "2.0", "{name}: {card}");
        assert!(
            card.to_string().contains("Deploy v2 to production?"),
            "{card}"
        );
        assert_eq!(
            buttons(&card),
            vec![
                ("Approve".to_string(), "ap.y".to_string(), id.clone()),
                ("Reject".to_string(), "ap.n".to_string(), id.clone()),
            ],
            "{name}: {card}"
        );
        let (status, pending) = world.approval(&claim, &id, 0).await;
        assert_eq!((status, pending["state"].clone()), (200, json!("pending")));

        // The worker waits for the decision.
        let waiting = {
            let client = world.client.clone();
            let url = format!("{}/approvals/{id}?wait_s=25", world.run_url("team", &claim));
            tokio::spawn(async move {
                let response = client
                    .get(url)
                    .bearer_auth(WORKER_TOKEN)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (
                    status,
                    serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap(),
                )
            })
        };

        // A non-approver is refused and nothing changes (the card keeps its buttons).
        let refused = world
            .press(
                app_id,
                "ev-stranger-1",
                STRANGER,
                "ap.y",
                &id,
                "c-stranger-token",
            )
            .await;
        assert_eq!(refused["toast"]["type"], "error", "{name}: {refused}");
        assert_eq!(refused["toast"]["content"], "You can't approve this");
        assert!(refused.get("card").is_none(), "{name}: {refused}");
        let (_, still) = world.approval(&claim, &id, 0).await;
        assert_eq!(still["state"], "pending", "{name}: {still}");
        assert!(!waiting.is_finished(), "{name}: the worker still waits");

        // The approver's press, framed by the official SDK's encoder.
        let event = press_event(
            app_id,
            "ev-approve-1",
            USER,
            "ap.y",
            &id,
            "c-approver-token",
        );
        let tm = world
            .fake
            .push_payload(app_id, sdk_framed_payload(&sdk, &event));
        let answer = world.answer_of(&tm).await;
        assert_eq!(answer["toast"]["type"], "success", "{name}: {answer}");
        assert_eq!(answer["toast"]["content"], "Approved", "{name}: {answer}");
        assert_eq!(answer["card"]["type"], "raw", "{name}: {answer}");
        let updated = &answer["card"]["data"];
        assert!(
            updated.to_string().contains("Approved by"),
            "{name}: {updated}"
        );
        assert!(buttons(updated).is_empty(), "{name}: no buttons: {updated}");

        let (status, decided) = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the long-poll answers")
            .unwrap();
        assert_eq!(status, 200, "{name}: {decided}");
        assert_eq!(decided["state"], "approved", "{name}: {decided}");
        assert_eq!(decided["decided_by"], USER, "{name}: {decided}");

        // A second press (reject this time) and a redelivery change nothing.
        let second = world
            .press(
                app_id,
                "ev-reject-1",
                USER,
                "ap.n",
                &id,
                "c-approver-token-2",
            )
            .await;
        assert_eq!(second["toast"]["content"], "Approved", "{name}: {second}");
        let again = world.fake.push_event(app_id, &event);
        let redelivered = world.answer_of(&again).await;
        assert_eq!(redelivered["toast"]["content"], "Approved", "{name}");
        let (_, after) = world.approval(&claim, &id, 0).await;
        assert_eq!(
            (after["state"].clone(), after["decided_by"].clone()),
            (json!("approved"), json!(USER)),
            "{name}: {after}"
        );
        // Approval presses are not turns of the session.
        let ingest = world.test_db.db.ingest();
        for session in ingest
            .list_sessions(claim["installation_id"].as_str().unwrap())
            .await
            .unwrap()
        {
            for message in ingest.list_messages(&session.id).await.unwrap() {
                assert_ne!(message.kind, "action", "{name}: {}", message.body);
            }
        }
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_approval_expires_and_its_card_is_updated_through_the_callback_token() {
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_expire1";
        world.installation(app_id, "en_us").await;
        world.say(app_id, "om_expire_1", "rotate the keys");
        let claim = world.claim().await;
        let id = world
            .ask(
                &claim,
                json!({"prompt": "Rotate the keys?", "approvers": [USER], "timeout_s": 2}),
            )
            .await;
        world.approval_card(&id).await;
        // A stranger's press leaves a callback token; it decides nothing.
        let refused = world
            .press(
                app_id,
                "ev-exp-stranger",
                STRANGER,
                "ap.y",
                &id,
                "c-expiry-token",
            )
            .await;
        assert_eq!(refused["toast"]["type"], "error", "{name}");

        let (status, expired) = world.approval(&claim, &id, 10).await;
        assert_eq!(status, 200, "{name}: {expired}");
        assert_eq!(expired["state"], "expired", "{name}: {expired}");
        assert!(expired["decided_by"].is_null(), "{name}: {expired}");

        let update = eventually("the card update", || {
            world.fake.card_token_updates().into_iter().next()
        })
        .await;
        assert_eq!(update["token"], "c-expiry-token", "{name}: {update}");
        assert!(
            update["card"]
                .to_string()
                .contains("Expired without a decision"),
            "{name}: {update}"
        );
        assert!(buttons(&update["card"]).is_empty(), "{name}: {update}");
        // Once only.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(world.fake.card_token_updates().len(), 1, "{name}");

        // A press after the expiry says so and shows the expired card.
        let late = world
            .press(app_id, "ev-exp-late", USER, "ap.y", &id, "c-late-token")
            .await;
        assert_eq!(
            late["toast"]["content"], "This request has expired",
            "{name}"
        );
        assert!(
            late["card"]["data"].to_string().contains("Expired"),
            "{name}"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_runs_owner_asks_and_sees_approvals_within_limits() {
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_abuse1";
        world.installation(app_id, "en_us").await;
        // A notice in English (the answer to `/new`).
        world.say(app_id, "om_abuse_new", "/new");
        eventually("the fresh-context notice", || {
            world.fake.sent_messages().into_iter().find(|sent| {
                sent.body["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("your next message starts a fresh conversation")
            })
        })
        .await;
        world.say(app_id, "om_abuse_1", "hello");
        let claim = world.claim().await;

        // Another agent's token on this run's path: refused, nothing asked.
        let (status, answer) = world
            .ask_as("other", OTHER_TOKEN, &claim, json!({"prompt": "x"}))
            .await;
        assert_eq!(status, 404, "{name}: {answer}");
        // The right agent with another agent's token.
        let (status, _) = world
            .ask_as("team", OTHER_TOKEN, &claim, json!({"prompt": "x"}))
            .await;
        assert_eq!(status, 401, "{name}");
        // A run id that is not the session's running run.
        let mut stale = claim.clone();
        stale["run_id"] = json!("not-the-run");
        let (status, answer) = world
            .ask_as("team", WORKER_TOKEN, &stale, json!({"prompt": "x"}))
            .await;
        assert_eq!(status, 409, "{name}: {answer}");
        // Limits, each with an error that says what to change.
        for (body, says) in [
            (json!({"prompt": "x".repeat(4001)}), "shorten"),
            (json!({"prompt": "  "}), "empty"),
            (
                json!({"prompt": "x", "approvers": vec!["u"; 51]}),
                "approvers",
            ),
            (json!({"prompt": "x", "timeout_s": 0}), "timeout_s"),
            (json!({"prompt": "x", "timeout_s": 86_401}), "timeout_s"),
        ] {
            let (status, answer) = world.ask_as("team", WORKER_TOKEN, &claim, body).await;
            assert_eq!(status, 400, "{name}: {answer}");
            assert!(
                answer["error"].as_str().unwrap().contains(says),
                "{name}: {answer}"
            );
            assert!(answer["hint"].as_str().is_some(), "{name}: {answer}");
        }
        assert!(
            world
                .test_db
                .db
                .approvals()
                .get("nope")
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );

        // An approval is visible only on its own run's path, with its agent's token.
        let id = world.ask(&claim, json!({"prompt": "Ship it?"})).await;
        let response = world
            .client
            .get(format!("{}/approvals/{id}", world.run_url("team", &stale)))
            .bearer_auth(WORKER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{name}");
        let response = world
            .client
            .get(format!("{}/approvals/{id}", world.run_url("other", &claim)))
            .bearer_auth(OTHER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{name}");
        // Without approvers anyone in the chat decides; a press from another chat does not.
        let mut elsewhere = press_event(app_id, "ev-elsewhere", USER, "ap.y", &id, "c-t1");
        elsewhere["event"]["context"]["open_chat_id"] = json!("oc_some_other_chat");
        let tm = world.fake.push_event(app_id, &elsewhere);
        let answer = world.answer_of(&tm).await;
        assert_eq!(answer["toast"]["type"], "error", "{name}: {answer}");
        let (_, still) = world.approval(&claim, &id, 0).await;
        assert_eq!(still["state"], "pending", "{name}");
        let answer = world
            .press(app_id, "ev-anyone", STRANGER, "ap.n", &id, "c-t2")
            .await;
        assert_eq!(answer["toast"]["content"], "Rejected", "{name}: {answer}");
        let (_, decided) = world.approval(&claim, &id, 0).await;
        assert_eq!(
            (decided["state"].clone(), decided["decided_by"].clone()),
            (json!("rejected"), json!(STRANGER)),
            "{name}"
        );
        world.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_toasts_and_buttons_speak_the_installations_language() {
    for test_db in db::test_databases().await {
        let world = World::start(test_db).await;
        let name = world.name().to_string();
        let app_id = "cli_zh1";
        world.installation(app_id, "zh_cn").await;

        // A notice (the answer to `/new`) in Chinese.
        world.say(app_id, "om_zh_new", "/new");
        let notice = eventually("the fresh-context notice", || {
            world.fake.sent_messages().into_iter().find(|sent| {
                sent.body["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("新的对话")
            })
        })
        .await;
        assert!(
            !notice.body.to_string().contains("fresh conversation"),
            "{name}"
        );
        assert!(
            notice.body.to_string().contains(&format!("{PRODUCT}：")),
            "{name}: the operator's words name the configured product: {}",
            notice.body
        );
        // The same notice in English, on an English installation.
        world.installation("cli_en1", "en").await;
        world.say("cli_en1", "om_en_new", "/new");
        let notice = eventually("the English fresh-context notice", || {
            world.fake.sent_messages().into_iter().find(|sent| {
                sent.body["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("fresh conversation")
            })
        })
        .await;
        assert!(
            notice
                .body
                .to_string()
                .contains(&format!("{PRODUCT}: your next message")),
            "{name}: {}",
            notice.body
        );
        assert!(!notice.body.to_string().contains("{product}"), "{name}");

        // The approval card, its toast and its update in Chinese; a plain action's toast too.
        world.say(app_id, "om_zh_1", "部署吧");
        let claim = world.claim().await;
        let id = world
            .ask(&claim, json!({"prompt": "部署到生产环境？"}))
            .await;
        let card = world.approval_card(&id).await;
        let labels: Vec<String> = buttons(&card).into_iter().map(|b| b.0).collect();
        assert_eq!(labels, ["批准", "拒绝"], "{name}: {card}");
        assert!(card.to_string().contains("需要你的批准"), "{name}: {card}");
        let answer = world
            .press(app_id, "ev-zh-approve", USER, "ap.y", &id, "c-zh")
            .await;
        assert_eq!(answer["toast"]["content"], "已批准", "{name}: {answer}");
        assert!(
            answer["card"]["data"].to_string().contains("批准"),
            "{name}: {answer}"
        );
        let mut plain = press_event(app_id, "ev-zh-plain", USER, "ap.y", &id, "c-zh2");
        plain["event"]["action"]["value"] = json!({"action": "refresh"});
        let tm = world.fake.push_event(app_id, &plain);
        let received = world.answer_of(&tm).await;
        assert_eq!(received["toast"]["content"], "已收到", "{name}: {received}");
        assert_eq!(received["toast"]["type"], "info", "{name}");
        world.stop().await;
    }
}

/// The number of rows `sql` (a `SELECT COUNT(*) …`) counts, read through a connection of its
/// own.
async fn count(test_db: &db::TestDb, sql: &str) -> i64 {
    use switchboard::store::Backend;
    match test_db.db.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&test_db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&test_db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
    }
}

/// Runs `sql` through a connection of its own.
async fn execute(test_db: &db::TestDb, sql: &str) {
    use switchboard::store::Backend;
    match test_db.db.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&test_db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&test_db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Creating an approval stores the row and queues its notice in one transaction: when the
/// notice's insert fails after the approval's row went in (its idempotency key is taken: a
/// real unique violation in the database), neither is left; a second approval with a taken
/// id leaves no second notice either.
#[tokio::test]
async fn an_approval_and_its_notice_are_stored_together_or_not_at_all() {
    use switchboard::store::{
        NewApproval, NewOutboxRow, OutboxContent, OutboxTarget, approval_notice_key,
    };
    let test = async {
        for test_db in db::test_databases().await {
            let name = test_db.name.clone();
            let approvals = test_db.db.approvals();
            let content = OutboxContent::Notice {
                notice: json!({"kind": "approval", "detail": "deploy?"}),
            };
            let target = OutboxTarget {
                chat_id: "oc_chat".into(),
                chat_type: "direct".into(),
                thread_id: None,
                reply_to: None,
                in_thread: false,
            };
            let notice = NewOutboxRow {
                installation_id: "inst_1",
                session_id: "sess_1",
                run_id: None,
                content: &content,
                target: &target,
            };
            let new = |id: &'static str| NewApproval {
                id,
                installation_id: "inst_1",
                session_id: "sess_1",
                run_id: "run_1",
                agent: "team",
                prompt: "deploy?",
                approvers: &[],
                expires_at_ms: 10_000,
            };

            let created = approvals
                .create_with_notice(&new("ap_ok"), &notice, 1_000)
                .await
                .unwrap();
            let outbox_id = created.outbox_id.expect("linked to its notice");
            let row = test_db.db.outbox().get(outbox_id).await.unwrap().unwrap();
            assert_eq!(row.idempotency_key, approval_notice_key("ap_ok"), "{name}");
            assert_eq!(
                approvals.get("ap_ok").await.unwrap().unwrap().outbox_id,
                Some(outbox_id),
                "{name}: the stored row names its notice"
            );

            // A notice under the key the next approval's notice will need is already there.
            execute(
                &test_db,
                &format!(
                    "INSERT INTO outbox (installation_id, session_id, kind, content, target,
                         idempotency_key, next_attempt_at_ms, created_at_ms)
                     VALUES ('inst_1', 'sess_1', 'notice', '{{}}', '{{}}', '{}', 0, 0)",
                    approval_notice_key("ap_clash")
                ),
            )
            .await;
            let outbox_before = count(&test_db, "SELECT COUNT(*) FROM outbox").await;
            let failed = approvals
                .create_with_notice(&new("ap_clash"), &notice, 2_000)
                .await;
            assert!(failed.is_err(), "{name}: the notice's insert fails");
            assert_eq!(
                approvals.get("ap_clash").await.unwrap(),
                None,
                "{name}: the approval row inserted before the failure is rolled back"
            );
            assert_eq!(
                count(&test_db, "SELECT COUNT(*) FROM outbox").await,
                outbox_before,
                "{name}: no notice either"
            );

            // The approval's own insert failing (its id is taken) queues nothing.
            assert!(
                approvals
                    .create_with_notice(&new("ap_ok"), &notice, 3_000)
                    .await
                    .is_err(),
                "{name}"
            );
            assert_eq!(
                count(&test_db, "SELECT COUNT(*) FROM outbox").await,
                outbox_before,
                "{name}"
            );
            assert_eq!(
                count(&test_db, "SELECT COUNT(*) FROM approvals").await,
                1,
                "{name}: only the first approval"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes in time");
}
