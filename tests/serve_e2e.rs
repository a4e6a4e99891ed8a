//! End to end over real HTTP: encrypted, signed Lark webhook deliveries to `serve` land as session
//! messages; a redelivery is dropped as a duplicate; a tampered one gets 401 and stores nothing;
//! an oversized body gets 413; `/metrics` counts the outcomes. Runs on SQLite and PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "e2e-admin-token-0123456789abcdef0";

struct Server {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(database_url: &str) -> Server {
        Server::start_with(database_url, |_| {}).await
    }

    async fn start_with(database_url: &str, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        adjust(&mut config);
        let app = App::from_config(&config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            client: reqwest::Client::new(),
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

    async fn hook(&self, path: &str, headers: &[(String, String)], body: Vec<u8>) -> (u16, String) {
        let (status, _, text) = self.hook_with_outcome(path, headers, body).await;
        (status, text)
    }

    async fn hook_with_outcome(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (u16, String, String) {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        let outcome = response
            .headers()
            .get(switchboard::api::OUTCOME_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            response.status().as_u16(),
            outcome,
            response.text().await.unwrap(),
        )
    }

    /// The bodies of every message stored for `installation`, through the admin API.
    async fn stored_bodies(&self, installation: &str) -> Vec<String> {
        let (status, sessions) = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={installation}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{sessions}");
        message_bodies(&sessions)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

fn message_bodies(sessions: &Value) -> Vec<String> {
    sessions
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn encrypted_signed_webhooks_land_once_and_tampered_ones_store_nothing() {
    for test_db in db::test_databases().await {
        let server = Server::start(&test_db.url).await;
        let name = &test_db.name;

        let (status, _) = server
            .client
            .get(format!("{}/api/installations", server.base))
            .send()
            .await
            .map(|r| (r.status().as_u16(), ()))
            .unwrap();
        assert_eq!(status, 401, "{name}: the admin API needs the token");

        let (status, created) = server
            .admin(
                reqwest::Method::POST,
                "/installations",
                // No Open Platform here to ask who the bot is: the operator says it.
                Some(json!({
                    "channel": "lark",
                    "routing_key": lark::APP_ID,
                    "name": "e2e bot",
                    "config": { "app_id": lark::APP_ID, "bot_open_id": lark::BOT_OPEN_ID },
                    "secrets": lark_secrets(),
                    "skip_on_install": true,
                })),
            )
            .await;
        assert_eq!(status, 201, "{name}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(
            created["secrets"],
            json!(["app_secret", "encrypt_key", "verification_token"]),
            "{name}: only secret names are shown"
        );
        assert!(
            !created.to_string().contains(APP_SECRET),
            "{name}: no secret value is shown: {created}"
        );
        let hook = format!("/hooks/lark/{id}");

        for i in 0..3u8 {
            let event = lark::text_event(&format!("om_e2e_{i}"), &format!("hello number {i}"));
            let (headers, body) = lark::encrypted_delivery(&event, [i; 16]);
            let (status, outcome, answer) = server.hook_with_outcome(&hook, &headers, body).await;
            assert_eq!(status, 200, "{name}: delivery {i}: {answer}");
            assert_eq!(outcome, "ingested", "{name}: delivery {i}");
        }
        // Redelivery of the first message: answered, not stored again.
        let (headers, body) =
            lark::encrypted_delivery(&lark::text_event("om_e2e_0", "hello number 0"), [9; 16]);
        let (status, outcome, _) = server.hook_with_outcome(&hook, &headers, body).await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "dropped:duplicate"),
            "{name}"
        );
        // Tampered body: the signature no longer matches.
        let (headers, mut body) =
            lark::encrypted_delivery(&lark::text_event("om_e2e_tampered", "evil"), [7; 16]);
        let last = body.len() - 3;
        body[last] ^= 0x01;
        let (status, answer) = server.hook(&hook, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");
        // Oversized body: 413 in the same JSON error shape as every other error.
        let (status, answer) = server.hook(&hook, &headers, vec![b'x'; 2 << 20]).await;
        assert_eq!(status, 413, "{name}");
        let error: Value = serde_json::from_str(&answer).expect("a JSON error");
        assert!(
            error["error"].as_str().unwrap().contains("max_body_bytes"),
            "{name}: {answer}"
        );
        // So are the framework's own answers: an unknown route, a wrong method (the shared URL
        // takes POST only; an installation's URL GET and POST). A GET on the installation's URL
        // goes to the plugin (verification handshakes, contract 0.2): Lark has none, so it is
        // malformed there, in the same shape.
        for (method, path, status) in [
            (reqwest::Method::GET, "/no/such/route", 404),
            (reqwest::Method::GET, "/hooks/lark", 405),
            (reqwest::Method::DELETE, hook.as_str(), 405),
            (reqwest::Method::GET, hook.as_str(), 400),
        ] {
            let response = server
                .client
                .request(method, format!("{}{path}", server.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{name}: {path}");
            let error: Value =
                serde_json::from_str(&response.text().await.unwrap()).expect("a JSON error");
            assert!(error["error"].is_string(), "{name}: {path}: {error}");
        }
        // The recorded fixture delivery verbatim: signed in 2024, so a replay today.
        let (headers, body) = recorded_delivery();
        let (status, answer) = server.hook(&hook, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert!(answer.contains("replay window"), "{name}: {answer}");

        let bodies = server.stored_bodies(&id).await;
        assert_eq!(
            bodies.len(),
            3,
            "{name}: three deliveries; redelivery, tampered and replayed not stored: {bodies:?}"
        );
        for i in 0..3 {
            assert_eq!(
                bodies
                    .iter()
                    .filter(|b| **b == format!("hello number {i}"))
                    .count(),
                1,
                "{name}: {bodies:?}"
            );
        }
        assert!(!bodies.iter().any(|b| b.contains("evil")), "{name}");

        let (_, audit) = server
            .admin(
                reqwest::Method::GET,
                &format!("/audit?installation={id}"),
                None,
            )
            .await;
        let reasons: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["drop_reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, vec!["duplicate"], "{name}: {audit}");
        assert!(
            !audit.to_string().contains("hello number"),
            "{name}: audit rows never contain content"
        );

        // Metrics count what happened (no token needed: counts only, no ids or content).
        let response = server
            .client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{name}");
        let metrics = response.text().await.unwrap();
        for expected in [
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"ingested\"} 3",
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"rejected:stale\"} 1",
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"rejected:bad-signature\"} 1",
            "switchboard_webhook_rejections_total{channel=\"lark\",reason=\"stale\"} 1",
            "switchboard_webhook_rejections_total{channel=\"lark\",reason=\"bad-signature\"} 1",
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"dropped:duplicate\"} 1",
            "switchboard_long_connections_open 0",
            "switchboard_plugin_degraded{plugin=\"lark\"} 0",
        ] {
            assert!(
                metrics.contains(expected),
                "{name}: missing {expected:?} in:\n{metrics}"
            );
        }
        let lark_calls: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_plugin_calls_total{plugin=\"lark\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no lark call count in:\n{metrics}"));
        assert!(lark_calls >= 4, "{name}: {lark_calls} plugin calls");
        assert!(
            !metrics.contains("hello number"),
            "{name}: metrics never contain content"
        );

        server.stop().await;
    }
}

/// The recorded encrypted, signed fixture delivery: (headers, raw body).
fn recorded_delivery() -> (Vec<(String, String)>, Vec<u8>) {
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(lark::fixture("webhook_event_encrypted_signed.json")).unwrap(),
    )
    .unwrap();
    let headers = fixture["request"]["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let body = fixture["request"]["raw_body"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    (headers, body)
}

/// Inside a replay window wide enough for its 2024 timestamp, the recorded delivery is
/// accepted with the exact answer the platform expects.
#[tokio::test]
async fn a_recorded_delivery_is_accepted_inside_a_wide_replay_window() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let server = Server::start_with(&test_db.url, |config| {
            config.ingest.webhook_max_skew_s = 20 * 365 * 24 * 3600;
        })
        .await;
        let id = server
            .install(lark::APP_ID, lark::BOT_OPEN_ID, lark_secrets())
            .await;
        let (headers, body) = recorded_delivery();
        let (status, outcome, answer) = server
            .hook_with_outcome(&format!("/hooks/lark/{id}"), &headers, body)
            .await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ingested"),
            "{name}: {answer}"
        );
        let fixture: Value = serde_json::from_slice(
            &std::fs::read(lark::fixture("webhook_event_encrypted_signed.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&answer).unwrap(),
            fixture["expected_response"]["body"],
            "{name}"
        );
        assert_eq!(server.stored_bodies(&id).await.len(), 1, "{name}");
        server.stop().await;
    }
}

/// The app secret every installation here carries (the Lark schema requires one).
const APP_SECRET: &str = "e2e-app-secret-5Rt9";

fn lark_secrets() -> Value {
    json!({
        "app_secret": APP_SECRET,
        "encrypt_key": lark::ENCRYPT_KEY,
        "verification_token": lark::VERIFICATION_TOKEN,
    })
}

const OTHER_APP: &str = "cli_otherapp";
const OTHER_KEY: &str = "other-encrypt-key-3Jd8";
const OTHER_TOKEN: &str = "oT4hV8sLq2WnZ6xR";

impl Server {
    /// Adds a Lark installation of app `app_id` through the admin API (the routing key comes
    /// from `app_id`; no on-install: there is no Open Platform to ask); returns its id.
    async fn install(&self, app_id: &str, bot_open_id: &str, secrets: Value) -> String {
        let (status, created) = self
            .admin(
                reqwest::Method::POST,
                "/installations",
                Some(json!({
                    "channel": "lark",
                    "name": app_id,
                    "config": { "app_id": app_id, "bot_open_id": bot_open_id },
                    "secrets": secrets,
                    "skip_on_install": true,
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["routing_key"], app_id, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// The drop reasons audited for `installation`, oldest first.
    async fn audit_reasons(&self, installation: &str) -> (Vec<String>, String) {
        let (status, audit) = self
            .admin(
                reqwest::Method::GET,
                &format!("/audit?installation={installation}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{audit}");
        let mut reasons: Vec<String> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["drop_reason"].as_str().unwrap().to_string())
            .collect();
        reasons.sort();
        (reasons, audit.to_string())
    }

    /// How many sessions `installation` has (a stored message makes one, and a run needs one).
    async fn session_count(&self, installation: &str) -> usize {
        let (status, sessions) = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={installation}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{sessions}");
        sessions.as_array().unwrap().len()
    }
}

/// A plain (unencrypted) v2 text event of `app_id` carrying `token`.
fn plain_event(app_id: &str, token: &str, message_id: &str, text: &str) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
    event["header"]["app_id"] = json!(app_id);
    event["header"]["token"] = json!(token);
    serde_json::to_vec(&event).unwrap()
}

/// Issue 13, the perimeter: every inbound request is authenticated with the secrets of the
/// installation it lands in, on the shared URL and on installation URLs alike.
#[tokio::test]
async fn every_webhook_is_authenticated_by_the_installation_it_lands_in() {
    for test_db in db::test_databases().await {
        let server = Server::start(&test_db.url).await;
        let name = &test_db.name;
        let a = server
            .install(lark::APP_ID, lark::BOT_OPEN_ID, lark_secrets())
            .await;
        let b = server
            .install(
                OTHER_APP,
                "ou_other_bot",
                json!({
                    "app_secret": "other-app-secret",
                    "encrypt_key": OTHER_KEY,
                    "verification_token": OTHER_TOKEN,
                }),
            )
            .await;
        let bare = server
            .install(
                "cli_bareapp",
                "ou_bare_bot",
                json!({"app_secret": "bare-app-secret"}),
            )
            .await;
        let a_url = format!("/hooks/lark/{a}");
        let b_url = format!("/hooks/lark/{b}");
        let now = lark::now_s();

        // 1. A forged, unsigned event naming A on the shared URL, with a wrong token.
        let forged = plain_event(lark::APP_ID, "guessed-token", "om_forged", "forged");
        let (status, answer) = server.hook("/hooks/lark", &[], forged.clone()).await;
        assert_eq!(status, 401, "{name}: {answer}");
        // The same on A's own URL.
        let (status, answer) = server.hook(&a_url, &[], forged).await;
        assert_eq!(status, 401, "{name}: {answer}");
        // Even with the right token: A has an encrypt key, so an unsigned event is refused.
        let unsigned = plain_event(lark::APP_ID, lark::VERIFICATION_TOKEN, "om_unsigned", "x");
        let (status, answer) = server.hook("/hooks/lark", &[], unsigned).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert!(answer.contains("X-Lark-Signature"), "{name}: {answer}");

        // 2. B's event, encrypted and signed with A's secrets, on A's URL: refused, stored
        //    nowhere, audited on A without content.
        let for_b = plain_event(OTHER_APP, lark::VERIFICATION_TOKEN, "om_for_b", "smuggled");
        let (headers, body) = lark::encrypted_delivery(&for_b, [5; 16]);
        let (status, answer) = server.hook(&a_url, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert!(answer.contains("another installation"), "{name}: {answer}");
        //    The same event on B's URL with A's secrets does not even verify.
        let (headers, body) = lark::encrypted_delivery(&for_b, [6; 16]);
        let (status, answer) = server.hook(&b_url, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");

        // 3. Replay window: five minutes by default, both ways.
        let event = plain_event(lark::APP_ID, lark::VERIFICATION_TOKEN, "om_stale", "stale");
        for skew in [-301, 301, -3600] {
            let (headers, body) =
                lark::encrypted_delivery_with(lark::ENCRYPT_KEY, &event, [8; 16], now + skew);
            let (status, answer) = server.hook(&a_url, &headers, body).await;
            assert_eq!(status, 401, "{name}: skew {skew}: {answer}");
            assert!(answer.contains("replay window"), "{name}: {answer}");
        }

        // 4. Tampered ciphertext and tampered signature: 401.
        let (headers, mut body) = lark::encrypted_delivery(&event, [9; 16]);
        let middle = body.len() / 2;
        body[middle] = if body[middle] == b'A' { b'B' } else { b'A' };
        let (status, answer) = server.hook(&a_url, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");
        let (mut headers, body) = lark::encrypted_delivery(&event, [9; 16]);
        for (key, value) in headers.iter_mut() {
            if key == "x-lark-signature" {
                *value = "0".repeat(64);
            }
        }
        let (status, answer) = server.hook(&a_url, &headers, body).await;
        assert_eq!(status, 401, "{name}: {answer}");

        // 5. Authenticated but malformed: 400 with a JSON error, not 401.
        for body in [&b"not json at all"[..], b"", b"[1,2]"] {
            let headers = lark::signed_headers(lark::ENCRYPT_KEY, body, now);
            let (status, answer) = server.hook(&a_url, &headers, body.to_vec()).await;
            assert_eq!(status, 400, "{name}: {body:?}: {answer}");
            let error: Value = serde_json::from_str(&answer).unwrap();
            assert!(error["error"].is_string(), "{name}: {answer}");
        }
        //    A verified event whose message has the wrong types.
        let mut wrong: Value = serde_json::from_slice(&plain_event(
            lark::APP_ID,
            lark::VERIFICATION_TOKEN,
            "om_w",
            "w",
        ))
        .unwrap();
        wrong["event"]["message"] = json!(42);
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&wrong).unwrap(), [10; 16]);
        let (status, answer) = server.hook(&a_url, &headers, body).await;
        assert_eq!(status, 400, "{name}: {answer}");

        // 6. The shared URL cannot read an encrypted body's installation: 400 naming the URL
        //    to use; nor a URL-verification challenge (which carries no app id).
        let (headers, body) = lark::encrypted_delivery(&event, [11; 16]);
        let (status, answer) = server.hook("/hooks/lark", &headers, body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(
            answer.contains("/hooks/lark/<installation id>"),
            "{name}: {answer}"
        );
        let challenge = json!({"challenge": "c-123", "token": lark::VERIFICATION_TOKEN, "type": "url_verification"});
        let (status, answer) = server
            .hook("/hooks/lark", &[], challenge.to_string().into_bytes())
            .await;
        assert_eq!(status, 400, "{name}: {answer}");
        //    On the installation's URL the challenge is answered after the token check.
        let (status, answer) = server
            .hook(&a_url, &[], challenge.to_string().into_bytes())
            .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert!(answer.contains("c-123"), "{name}: {answer}");
        let wrong_token =
            json!({"challenge": "c-124", "token": "nope", "type": "url_verification"});
        let (status, answer) = server
            .hook(&a_url, &[], wrong_token.to_string().into_bytes())
            .await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert!(!answer.contains("c-124"), "{name}: {answer}");

        // 7. An installation without verification material accepts nothing.
        let bare_event = plain_event("cli_bareapp", "", "om_bare", "unauthenticated");
        for url in [format!("/hooks/lark/{bare}"), "/hooks/lark".to_string()] {
            let (status, answer) = server.hook(&url, &[], bare_event.clone()).await;
            assert_eq!(status, 401, "{name}: {url}: {answer}");
            assert!(answer.contains("neither"), "{name}: {answer}");
        }

        // 8. A verified event that is not a chat message: 200, audited.
        let mut read: Value = serde_json::from_slice(
            &std::fs::read(lark::fixture("event_message_read.json")).unwrap(),
        )
        .unwrap();
        read["header"]["app_id"] = json!(lark::APP_ID);
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&read).unwrap(), [12; 16]);
        let (status, outcome, answer) = server.hook_with_outcome(&a_url, &headers, body).await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ignored"),
            "{name}: {answer}"
        );

        // 9. Valid events are stored once, on either URL.
        let (headers, body) = lark::encrypted_delivery(
            &plain_event(
                lark::APP_ID,
                lark::VERIFICATION_TOKEN,
                "om_ok_1",
                "welcome one",
            ),
            [13; 16],
        );
        let (status, outcome, answer) = server.hook_with_outcome(&a_url, &headers, body).await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ingested"),
            "{name}: {answer}"
        );
        let plain = plain_event(
            lark::APP_ID,
            lark::VERIFICATION_TOKEN,
            "om_ok_2",
            "welcome two",
        );
        let headers = lark::signed_headers(lark::ENCRYPT_KEY, &plain, now);
        let (status, outcome, answer) = server
            .hook_with_outcome("/hooks/lark", &headers, plain.clone())
            .await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ingested"),
            "{name}: {answer}"
        );
        let (status, outcome, _) = server
            .hook_with_outcome("/hooks/lark", &headers, plain)
            .await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "dropped:duplicate"),
            "{name}"
        );
        //    B's own event, with B's secrets, on B's URL.
        let for_b = plain_event(OTHER_APP, OTHER_TOKEN, "om_b_ok", "hello b");
        let (headers, body) = lark::encrypted_delivery_with(OTHER_KEY, &for_b, [14; 16], now);
        let (status, outcome, answer) = server.hook_with_outcome(&b_url, &headers, body).await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ingested"),
            "{name}: {answer}"
        );

        let mut a_bodies = server.stored_bodies(&a).await;
        a_bodies.sort();
        assert_eq!(a_bodies, ["welcome one", "welcome two"], "{name}");
        assert_eq!(server.stored_bodies(&b).await, ["hello b"], "{name}");
        assert_eq!(server.session_count(&bare).await, 0, "{name}");
        let (reasons, audit) = server.audit_reasons(&a).await;
        assert_eq!(
            reasons,
            ["duplicate", "routed_elsewhere", "unsupported_event"],
            "{name}: {audit}"
        );
        assert!(
            !audit.contains("smuggled") && !audit.contains("forged"),
            "{name}: audit rows carry no content: {audit}"
        );
        let (reasons, audit) = server.audit_reasons(&b).await;
        assert!(reasons.is_empty(), "{name}: {audit}");
        server.stop().await;
    }
}

/// A host serving `config` on a loopback port: (base URL, stop signal, serve task).
async fn serve_config(
    config: &Config,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = App::from_config(config).await.expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    (base, stop, task)
}

/// `GET {base}{path}` with an optional bearer token: status, body as JSON (`Null` if it is not
/// JSON) and body as text.
async fn get_with_token(base: &str, path: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), request.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text)
}

/// Operator credentials: an admin token shorter than 32 characters is refused at start-up; the
/// admin API takes its token only (SHA-256 compared in constant time); `/metrics` is open unless
/// `[server] metrics_token` is set, and then takes that token only.
#[tokio::test]
async fn operator_tokens_guard_the_admin_api_and_metrics() {
    let test_db = db::sqlite_file_db().await;
    let mut config = Config::default();
    config.database.url = test_db.url.clone();
    config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config.server.admin_token = Some(ADMIN.into());

    // A 10-character admin token: start-up fails and says what to do.
    let mut short = config.clone();
    short.server.admin_token = Some("0123456789".into());
    let error = match App::from_config(&short).await {
        Ok(_) => panic!("a 10-character admin token was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("10 characters")
            && error.contains("at least 32")
            && error.contains("openssl rand -hex 32"),
        "{error}"
    );
    assert!(
        !error.contains("0123456789"),
        "the token is not echoed: {error}"
    );

    // No metrics token: /metrics is open; the admin API takes its token and nothing else.
    let (base, stop, task) = serve_config(&config).await;
    let (status, _, text) = get_with_token(&base, "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("switchboard_long_connections_open"), "{text}");
    let last_changed = format!("{}X", &ADMIN[..ADMIN.len() - 1]);
    let longer = format!("{ADMIN}0");
    for (token, expected_error) in [
        (None, "missing `Authorization: Bearer <admin token>`"),
        (Some(last_changed.as_str()), "wrong admin token"),
        (Some(&ADMIN[..ADMIN.len() - 1]), "wrong admin token"),
        (Some(longer.as_str()), "wrong admin token"),
    ] {
        let (status, body, text) = get_with_token(&base, "/api/installations", token).await;
        assert_eq!(status, 401, "token {token:?}: {text}");
        assert_eq!(body, json!({ "error": expected_error }), "token {token:?}");
    }
    let (status, body, text) = get_with_token(&base, "/api/installations", Some(ADMIN)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body, json!([]));
    stop.send(()).unwrap();
    task.await.unwrap().expect("clean shutdown");

    // With a metrics token: /metrics takes that token and no other, and opens nothing else.
    const METRICS: &str = "metrics-scrape-token";
    let mut guarded = config.clone();
    guarded.server.metrics_token = Some(METRICS.into());
    let (base, stop, task) = serve_config(&guarded).await;
    for (token, expected_error) in [
        (
            None,
            "missing `Authorization: Bearer <metrics token>` (server.metrics_token is set)",
        ),
        (Some("metrics-scrape-tokeN"), "wrong metrics token"),
        (Some(ADMIN), "wrong metrics token"),
    ] {
        let (status, body, text) = get_with_token(&base, "/metrics", token).await;
        assert_eq!(status, 401, "token {token:?}: {text}");
        assert_eq!(body, json!({ "error": expected_error }), "token {token:?}");
    }
    let (status, _, text) = get_with_token(&base, "/metrics", Some(METRICS)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("switchboard_long_connections_open"), "{text}");
    let (status, _, text) = get_with_token(&base, "/api/installations", Some(METRICS)).await;
    assert_eq!(
        status, 401,
        "the metrics token opens no admin route: {text}"
    );
    let (status, _, text) = get_with_token(&base, "/api/installations", Some(ADMIN)).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, _) = get_with_token(&base, "/healthz", None).await;
    assert_eq!(status, 200, "health stays open");
    stop.send(()).unwrap();
    task.await.unwrap().expect("clean shutdown");
}
