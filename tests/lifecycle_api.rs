//! Issue 19 over real HTTP against `serve`'s router with the bundled Lark plugin, on SQLite and
//! PostgreSQL: an installation's lifecycle through the admin API (`PATCH` validated against the
//! plugin's schema and the configured agents, `rotate-secret` taking effect for the next signed
//! webhook, revoke and `restore`, a revoked routing key refused on add with the advice to
//! restore) and pairing (an unbound sender's code notice in the outbox, `GET /api/pairings`
//! without codes, approve → binding, the sender's next message accepted, the "granted" notice
//! queued; wrong and decided codes refused).

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{Database, SecretCipher};

const ADMIN: &str = "lifecycle-admin-token-0123456789abcdef";
const APP_SECRET: &str = "lifecycle-app-secret-1";
const NEW_ENCRYPT_KEY: &str = "rotated-encrypt-key-9Zx";
/// The sender of `lark::text_event`.
const SENDER: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";
/// Every request of a test finishes well within this.
const DEADLINE: Duration = Duration::from_secs(60);

struct Server {
    base: String,
    key: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(database_url: &str) -> Server {
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        let key = SecretCipher::generate_key_hex();
        config.secrets.key = Some(key.clone());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        // A second configured agent besides the default `echo`.
        config.agents.insert(
            "night".into(),
            switchboard::agents::AgentConfig {
                kind: Some("echo".into()),
                ..Default::default()
            },
        );
        let app = App::from_config(&config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            key,
            client: reqwest::Client::builder()
                .timeout(DEADLINE)
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
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
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Posts a Lark delivery of `event` signed and encrypted with `encrypt_key`; (status,
    /// outcome header).
    async fn deliver(&self, id: &str, encrypt_key: &str, event: &[u8], iv: u8) -> (u16, String) {
        let (headers, body) =
            lark::encrypted_delivery_with(encrypt_key, event, [iv; 16], lark::now_s());
        let mut request = self
            .client
            .post(format!("{}/hooks/lark/{id}", self.base))
            .body(body);
        for (k, v) in &headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        let outcome = response
            .headers()
            .get(switchboard::api::OUTCOME_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (response.status().as_u16(), outcome)
    }

    /// Every outbox row, newest first.
    async fn outbox(&self) -> Vec<Value> {
        let (status, rows) = self.admin(reqwest::Method::GET, "/outbox", None).await;
        assert_eq!(status, 200, "{rows}");
        rows.as_array().unwrap().clone()
    }

    /// The first queued notice `wanted` accepts, waiting for it: ingest notices are enqueued on
    /// their own task after the webhook is answered.
    async fn notice(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            if let Some(found) = notices(&self.outbox().await).into_iter().find(&wanted) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// Creates a Lark installation (no `on-install`: there is no Open Platform here).
async fn create(server: &Server, policy: &str) -> String {
    let (status, created) = server
        .admin(
            reqwest::Method::POST,
            "/installations",
            Some(json!({
                "channel": "lark",
                "name": "lifecycle bot",
                "config": { "app_id": lark::APP_ID, "bot_open_id": lark::BOT_OPEN_ID },
                "secrets": {
                    "app_secret": APP_SECRET,
                    "encrypt_key": lark::ENCRYPT_KEY,
                    "verification_token": lark::VERIFICATION_TOKEN,
                },
                "access_policy": policy,
                "skip_on_install": true,
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {body}"))
}

#[tokio::test]
async fn update_rotate_revoke_and_restore_through_the_admin_api() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        tokio::time::timeout(DEADLINE * 4, async {
            let server = Server::start(&test_db.url).await;
            let id = create(&server, "open").await;
            let path = format!("/installations/{id}");
            let patch = |body: Value| server.admin(reqwest::Method::PATCH, &path, Some(body));

            // Refused, each with what to do, and nothing changes.
            let (status, body) = patch(json!({ "agent": "nosuchagent" })).await;
            assert_eq!(status, 422, "{name}: {body}");
            let error = error_of(&body);
            assert!(
                error.contains("nosuchagent") && error.contains("echo, night"),
                "{name}: the configured agents are listed: {error}"
            );
            let (status, body) = patch(json!({ "config": { "nosuchkey": "x" } })).await;
            assert_eq!(status, 422, "{name}: {body}");
            assert!(error_of(&body).contains("nosuchkey"), "{name}: {body}");
            let (status, body) = patch(json!({ "unset_config": ["app_id"] })).await;
            assert_eq!(status, 422, "{name}: {body}");
            assert!(error_of(&body).contains("app_id"), "{name}: {body}");
            let (status, body) = patch(json!({ "config": { "app_id": "not-an-app" } })).await;
            assert_eq!(status, 422, "{name}: the schema's pattern: {body}");
            let (status, body) = patch(json!({})).await;
            assert_eq!(status, 422, "{name}: {body}");
            assert!(
                error_of(&body).contains("nothing to change"),
                "{name}: {body}"
            );
            let (status, body) = patch(json!({ "debounce_ms": 0 })).await;
            assert_eq!(status, 400, "{name}: {body}");
            let (status, body) = patch(json!({ "access_policy": "everyone" })).await;
            assert_eq!(status, 422, "{name}: {body}");
            let (status, body) = patch(json!({ "colour": "blue" })).await;
            assert!(
                status == 400 || status == 422,
                "{name}: unknown field: {status} {body}"
            );
            let (status, body) = server
                .admin(
                    reqwest::Method::PATCH,
                    "/installations/no-such-id",
                    Some(json!({ "name": "x" })),
                )
                .await;
            assert_eq!(status, 404, "{name}: {body}");
            let (_, unchanged) = server.admin(reqwest::Method::GET, &path, None).await;
            assert_eq!(
                (
                    unchanged["agent"].as_str(),
                    unchanged["config"]["app_id"].as_str()
                ),
                (Some("echo"), Some(lark::APP_ID)),
                "{name}: {unchanged}"
            );

            // A valid update changes exactly what it names.
            let (status, updated) = patch(json!({
                "name": "renamed",
                "agent": "night",
                "debounce_ms": 1500,
                "config": { "locale": "zh-CN", "agent_name": "Night desk" },
            }))
            .await;
            assert_eq!(status, 200, "{name}: {updated}");
            assert_eq!(updated["name"], "renamed", "{name}");
            assert_eq!(updated["agent"], "night", "{name}");
            assert_eq!(updated["debounce_ms"], 1500, "{name}");
            assert_eq!(updated["config"]["locale"], "zh-CN", "{name}");
            assert_eq!(updated["config"]["app_id"], lark::APP_ID, "{name}: kept");
            assert_eq!(updated["routing_key"], lark::APP_ID, "{name}");
            let (status, updated) = patch(json!({ "unset_config": ["agent_name"] })).await;
            assert_eq!(status, 200, "{name}: {updated}");
            assert!(
                updated["config"].get("agent_name").is_none(),
                "{name}: {updated}"
            );

            // Rotation: names the schema does not declare are refused...
            let rotate = format!("/installations/{id}/rotate-secret");
            let (status, body) = server
                .admin(
                    reqwest::Method::POST,
                    &rotate,
                    Some(json!({ "secrets": { "app_id": "x" } })),
                )
                .await;
            assert_eq!(status, 422, "{name}: {body}");
            assert!(
                error_of(&body).contains("not a secret") && error_of(&body).contains("encrypt_key"),
                "{name}: {body}"
            );
            // ...the old key verifies until the rotation, and only the new one after it.
            let event = lark::text_event("om_rot_1", "before the rotation");
            assert_eq!(
                server.deliver(&id, lark::ENCRYPT_KEY, &event, 1).await,
                (200, "ingested".to_string()),
                "{name}"
            );
            let (status, rotated) = server
                .admin(
                    reqwest::Method::POST,
                    &rotate,
                    Some(json!({ "secrets": { "encrypt_key": NEW_ENCRYPT_KEY } })),
                )
                .await;
            assert_eq!(status, 200, "{name}: {rotated}");
            assert!(
                !rotated.to_string().contains(NEW_ENCRYPT_KEY),
                "{name}: no value shown"
            );
            let event = lark::text_event("om_rot_2", "after the rotation");
            let (status, _) = server.deliver(&id, lark::ENCRYPT_KEY, &event, 2).await;
            assert_eq!(status, 401, "{name}: the old key no longer verifies");
            assert_eq!(
                server.deliver(&id, NEW_ENCRYPT_KEY, &event, 3).await,
                (200, "ingested".to_string()),
                "{name}: the new key verifies without a restart"
            );
            // Stored: the new value, the other secrets as they were.
            let db = Database::connect(&test_db.url).await.unwrap();
            let stored = db
                .installations(SecretCipher::from_key_str(&server.key).unwrap())
                .get(&id)
                .await
                .unwrap()
                .unwrap();
            let secrets: Vec<(&str, &str)> = stored
                .secrets
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose()))
                .collect();
            assert_eq!(
                secrets,
                [
                    ("app_secret", APP_SECRET),
                    ("encrypt_key", NEW_ENCRYPT_KEY),
                    ("verification_token", lark::VERIFICATION_TOKEN)
                ],
                "{name}"
            );
            db.close().await;

            // Revoked: dropped; its routing key cannot be added again, the error says restore.
            let (status, revoked) = server
                .admin(reqwest::Method::POST, &format!("{path}/revoke"), None)
                .await;
            assert_eq!((status, revoked["status"].as_str()), (200, Some("revoked")));
            let event = lark::text_event("om_rot_3", "while revoked");
            let (status, outcome) = server.deliver(&id, NEW_ENCRYPT_KEY, &event, 4).await;
            assert_eq!(status, 200, "{name}");
            assert!(outcome.starts_with("dropped"), "{name}: {outcome}");
            let (status, body) = server
                .admin(
                    reqwest::Method::POST,
                    "/installations",
                    Some(json!({
                        "channel": "lark",
                        "config": { "app_id": lark::APP_ID },
                        "secrets": { "app_secret": APP_SECRET },
                        "skip_on_install": true,
                    })),
                )
                .await;
            assert_eq!(status, 409, "{name}: {body}");
            assert!(
                error_of(&body).contains(&format!("installations restore {id}")),
                "{name}: {body}"
            );
            let (status, restored) = server
                .admin(
                    reqwest::Method::POST,
                    &format!("{path}/restore"),
                    Some(json!({ "skip_on_install": true })),
                )
                .await;
            assert_eq!(status, 200, "{name}: {restored}");
            assert_eq!(restored["status"], "active", "{name}");
            assert_eq!(restored["agent"], "night", "{name}: settings kept");
            let event = lark::text_event("om_rot_4", "restored");
            assert_eq!(
                server.deliver(&id, NEW_ENCRYPT_KEY, &event, 5).await,
                (200, "ingested".to_string()),
                "{name}"
            );
            let (status, _) = server
                .admin(
                    reqwest::Method::POST,
                    "/installations/no-such-id/restore",
                    None,
                )
                .await;
            assert_eq!(status, 404, "{name}");
            server.stop().await;
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the test ran out of time"));
    }
}

/// The notices in the outbox rows, newest first.
fn notices(rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .filter(|r| r["content"]["kind"] == "notice")
        .map(|r| r["content"]["notice"].clone())
        .collect()
}

#[tokio::test]
async fn an_unbound_sender_pairs_through_the_admin_api() {
    for test_db in db::test_databases().await {
        let name = test_db.name.clone();
        tokio::time::timeout(DEADLINE * 4, async {
            let server = Server::start(&test_db.url).await;
            let id = create(&server, "bound").await;

            let event = lark::text_event("om_pair_1", "let me in");
            assert_eq!(
                server.deliver(&id, lark::ENCRYPT_KEY, &event, 1).await,
                (200, "needs_binding".to_string()),
                "{name}"
            );
            // The code notice: the host's words, no link, addressed to the sender.
            let notice = server.notice(|n| n["kind"] == "binding_required").await;
            assert_eq!(notice["recipient"], SENDER, "{name}: {notice}");
            assert!(notice.get("link").is_none(), "{name}: no link: {notice}");
            let code = notice["detail"].as_str().unwrap().to_string();
            assert_eq!(code.len(), 8, "{name}: {code}");

            let (status, pending) = server.admin(reqwest::Method::GET, "/pairings", None).await;
            assert_eq!(status, 200, "{name}: {pending}");
            assert_eq!(pending.as_array().unwrap().len(), 1, "{name}: {pending}");
            assert_eq!(pending[0]["sender_id"], SENDER, "{name}");
            assert_eq!(pending[0]["installation_id"], id.as_str(), "{name}");
            assert!(
                !pending.to_string().contains(&code),
                "{name}: codes are not listed"
            );
            let (status, filtered) = server
                .admin(reqwest::Method::GET, "/pairings?installation=other", None)
                .await;
            assert_eq!((status, filtered), (200, json!([])), "{name}");

            // A wrong code: 404 with what to do; nothing bound.
            let (status, body) = server
                .admin(reqwest::Method::POST, "/pairings/ZZZZ2222/approve", None)
                .await;
            assert_eq!(status, 404, "{name}: {body}");
            assert!(error_of(&body).contains("check it"), "{name}: {body}");

            let (status, approved) = server
                .admin(
                    reqwest::Method::POST,
                    &format!("/pairings/{}/approve", code.to_lowercase()),
                    Some(json!({ "user_ref": "alice@example.com" })),
                )
                .await;
            assert_eq!(status, 200, "{name}: {approved}");
            assert_eq!(approved["pairing"]["status"], "approved", "{name}");
            assert_eq!(
                approved["binding"]["user_ref"], "alice@example.com",
                "{name}"
            );
            let (_, bindings) = server
                .admin(
                    reqwest::Method::GET,
                    &format!("/installations/{id}/bindings"),
                    None,
                )
                .await;
            assert_eq!(bindings[0]["channel_user_id"], SENDER, "{name}: {bindings}");
            // The sender is told, through the outbox.
            // (Queued in the approval's transaction: there at once.)
            let granted = notices(&server.outbox().await)
                .into_iter()
                .find(|n| n["kind"] == "info" && n["text_key"] == "pairing_approved")
                .unwrap_or_else(|| panic!("{name}: a granted notice is queued"));
            assert_eq!(granted["recipient"], SENDER, "{name}: {granted}");

            let event = lark::text_event("om_pair_2", "thanks");
            assert_eq!(
                server.deliver(&id, lark::ENCRYPT_KEY, &event, 2).await,
                (200, "ingested".to_string()),
                "{name}: the sender's next message is accepted"
            );
            let (status, body) = server
                .admin(
                    reqwest::Method::POST,
                    &format!("/pairings/{code}/deny"),
                    None,
                )
                .await;
            assert_eq!(status, 409, "{name}: decided already: {body}");
            let (_, pending) = server.admin(reqwest::Method::GET, "/pairings", None).await;
            assert_eq!(pending, json!([]), "{name}");
            server.stop().await;
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the test ran out of time"));
    }
}
