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
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
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
                Some(json!({
                    "channel": "lark",
                    "routing_key": lark::APP_ID,
                    "name": "e2e bot",
                    "bot_open_id": lark::BOT_OPEN_ID,
                    "secrets": { "encrypt_key": lark::ENCRYPT_KEY, "verification_token": lark::VERIFICATION_TOKEN },
                })),
            )
            .await;
        assert_eq!(status, 201, "{name}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(
            created["secrets"],
            json!(["encrypt_key", "verification_token"]),
            "{name}: only secret names are shown"
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
        // Oversized body.
        let (status, _) = server.hook(&hook, &headers, vec![b'x'; 2 << 20]).await;
        assert_eq!(status, 413, "{name}");
        // The recorded fixture delivery verbatim.
        let fixture: Value = serde_json::from_slice(
            &std::fs::read(lark::fixture("webhook_event_encrypted_signed.json")).unwrap(),
        )
        .unwrap();
        let headers: Vec<(String, String)> = fixture["request"]["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let (status, answer) = server
            .hook(
                &hook,
                &headers,
                fixture["request"]["raw_body"]
                    .as_str()
                    .unwrap()
                    .as_bytes()
                    .to_vec(),
            )
            .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            serde_json::from_str::<Value>(&answer).unwrap(),
            fixture["expected_response"]["body"],
            "{name}"
        );

        let bodies = server.stored_bodies(&id).await;
        assert_eq!(
            bodies.len(),
            4,
            "{name}: three deliveries + the fixture, redelivery and tampered not stored: {bodies:?}"
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
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"ingested\"} 4",
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
        assert!(lark_calls >= 5, "{name}: {lark_calls} plugin calls");
        assert!(
            !metrics.contains("hello number"),
            "{name}: metrics never contain content"
        );

        server.stop().await;
    }
}

/// A webhook sent to one installation's URL whose event carries another installation's app id:
/// the plugin read it with the URL's installation (issue 3's one-call path), but the host routes
/// it by its key and decodes it again with the right installation's context — here the one whose
/// bot the message mentions, so the mention is removed and the group message is addressed.
#[tokio::test]
async fn a_webhook_event_for_another_installation_is_decoded_with_that_installations_context() {
    for test_db in db::test_databases().await {
        let server = Server::start(&test_db.url).await;
        let name = &test_db.name;
        let mut ids = Vec::new();
        for (routing_key, bot_open_id) in [
            (lark::APP_ID, "ou_not_the_mentioned_bot"),
            ("cli_other_app", lark::BOT_OPEN_ID),
        ] {
            let (status, created) = server
                .admin(
                    reqwest::Method::POST,
                    "/installations",
                    Some(json!({
                        "channel": "lark",
                        "routing_key": routing_key,
                        "name": routing_key,
                        "bot_open_id": bot_open_id,
                        "secrets": { "encrypt_key": lark::ENCRYPT_KEY, "verification_token": lark::VERIFICATION_TOKEN },
                    })),
                )
                .await;
            assert_eq!(status, 201, "{name}: {created}");
            ids.push(created["id"].as_str().unwrap().to_string());
        }
        let mut event: Value = serde_json::from_slice(
            &std::fs::read(lark::fixture("event_receive_text_group_mentions.json")).unwrap(),
        )
        .unwrap();
        event["header"]["app_id"] = json!("cli_other_app");
        let (headers, body) =
            lark::encrypted_delivery(&serde_json::to_vec(&event).unwrap(), [3; 16]);
        let (status, outcome, answer) = server
            .hook_with_outcome(&format!("/hooks/lark/{}", ids[0]), &headers, body)
            .await;
        assert_eq!(
            (status, outcome.as_str()),
            (200, "ingested"),
            "{name}: {answer}"
        );

        for (id, expected) in [(&ids[0], 0), (&ids[1], 1)] {
            let bodies = server.stored_bodies(id).await;
            assert_eq!(
                bodies.len(),
                expected,
                "{name}: installation {id}: {bodies:?}"
            );
            if let [body] = bodies.as_slice() {
                assert!(
                    body.starts_with("please review @Bob Li's PR"),
                    "{name}: decoded with the other installation's bot: {body:?}"
                );
            }
        }
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
