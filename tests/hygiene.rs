//! Issue 14, over real HTTP: nothing accepted is lost, nothing is retried forever.
//!
//! - Input hygiene (SQLite and PostgreSQL): a Lark event with NUL in its text is stored with the
//!   NUL removed (200); one with NUL in its message id is refused with 400 and an
//!   `unstorable_value` audit row, and nothing is stored; the admin API refuses NUL in paths,
//!   queries and JSON bodies, oversized routing keys and out-of-range debounce windows with 400;
//!   a worker's reply has its NUL removed and is stored.
//! - Server timeouts (the backend does not matter: SQLite): connections that send their headers
//!   slowly are closed after `header_read_timeout_ms` while normal requests are still served; a
//!   slow body gets 408; connections beyond `max_connections` wait and are served once others
//!   close; a client that stops reading is cut after the idle timeout, while time inside a
//!   handler does not count.
//!
//! Every test is bounded in time.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::agents::AgentConfig;
use switchboard::app::App;
use switchboard::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "hygiene-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "hygiene-worker-token-0123456789";

struct Server {
    addr: SocketAddr,
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(database_url: &str, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config.connections.enabled = false;
        // Replies go nowhere (nothing listens on port 1), quickly.
        config
            .plugins
            .base_urls
            .insert("https://open.feishu.cn".into(), "http://127.0.0.1:1".into());
        config.agents.insert(
            "team".into(),
            serde_json::from_value::<AgentConfig>(
                json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000}),
            )
            .unwrap(),
        );
        adjust(&mut config);
        let app = App::from_config(&config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
        }
    }

    /// An admin API call with a raw body (so it can hold what `json!` would escape).
    async fn admin_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/api{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.admin_raw(method, path, body.map(|b| b.to_string()))
            .await
    }

    async fn install(&self, agent: &str) -> String {
        let (status, created) = self
            .admin(
                reqwest::Method::POST,
                "/installations",
                // No Open Platform here to ask who the bot is: the operator says it.
                Some(json!({
                    "channel": "lark",
                    "routing_key": lark::APP_ID,
                    "agent": agent,
                    "debounce_ms": 100,
                    "config": {"app_id": lark::APP_ID, "bot_open_id": lark::BOT_OPEN_ID},
                    "secrets": {
                        "app_secret": "hygiene-app-secret",
                        "encrypt_key": lark::ENCRYPT_KEY,
                        "verification_token": lark::VERIFICATION_TOKEN,
                    },
                    "skip_on_install": true,
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// Delivers `event` to installation `id`: (status, outcome header, body).
    async fn deliver(&self, id: &str, event: &[u8], iv: u8) -> (u16, String, String) {
        let (headers, body) = lark::encrypted_delivery(event, [iv; 16]);
        let mut request = self
            .client
            .post(format!("{}/hooks/lark/{id}", self.base))
            .body(body);
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

    /// The installation's sessions with their messages (admin API).
    async fn sessions(&self, id: &str) -> Value {
        let (status, sessions) = self
            .admin(
                reqwest::Method::GET,
                &format!("/sessions?installation={id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{sessions}");
        sessions
    }

    async fn bodies(&self, id: &str) -> Vec<String> {
        self.bodies_of(id, |_| true).await
    }

    /// The users' messages stored for installation `id` (not the agent's replies, which a
    /// slow test may or may not have waited for).
    async fn user_bodies(&self, id: &str) -> Vec<String> {
        self.bodies_of(id, |m| m["role"] == "user").await
    }

    async fn bodies_of(&self, id: &str, keep: impl Fn(&Value) -> bool) -> Vec<String> {
        let sessions = self.sessions(id).await;
        sessions
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["messages"].as_array().unwrap().clone())
            .filter(|m| keep(m))
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect()
    }

    async fn audit_reasons(&self, id: &str) -> Vec<String> {
        let (status, audit) = self
            .admin(
                reqwest::Method::GET,
                &format!("/audit?installation={id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{audit}");
        audit
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["drop_reason"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .expect("clean shutdown");
    }
}

/// Runs `test` with a deadline, so a hung server fails the test instead of hanging the suite.
async fn bounded<T>(what: &str, seconds: u64, test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), test)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {seconds} s"))
}

/// The p2p text event with its message id, chat id and text chosen (a clean event id).
fn event_with(message_id: &str, chat_id: &str, text: &str) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
    event["header"]["event_id"] = json!(format!("ev-{}", message_id.len()));
    event["event"]["message"]["chat_id"] = json!(chat_id);
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test]
async fn nul_in_text_is_removed_and_stored_nul_in_ids_is_refused_with_an_audit_row() {
    bounded("NUL over the webhook", 120, async {
        for test_db in db::test_databases().await {
            let name = &test_db.name;
            let server = Server::start(&test_db.url, |_| {}).await;
            let id = server.install("echo").await;

            // NUL in the text: sanitised and stored (on PostgreSQL this was a 500 forever).
            let event = lark::text_event("om_nul_text", "hello\u{0}wor\u{0}ld");
            let (status, outcome, answer) = server.deliver(&id, &event, 1).await;
            assert_eq!(
                (status, outcome.as_str()),
                (200, "ingested"),
                "{name}: {answer}"
            );
            // A redelivery is a duplicate, not a second message.
            let (status, outcome, _) = server.deliver(&id, &event, 2).await;
            assert_eq!(
                (status, outcome.as_str()),
                (200, "dropped:duplicate"),
                "{name}"
            );

            // NUL in the message id: refused (400), audited, nothing stored — every time.
            for iv in [3, 4] {
                let event = event_with("om_bad\u{0}id", "oc_chat", "an id cannot be repaired");
                let (status, outcome, answer) = server.deliver(&id, &event, iv).await;
                assert_eq!(status, 400, "{name}: {outcome} {answer}");
                let error: Value = serde_json::from_str(&answer).expect("a JSON error");
                let error = error["error"].as_str().unwrap();
                assert!(
                    error.contains("message_id") && error.contains("NUL"),
                    "{name}: {error}"
                );
            }
            // NUL in the chat id, and an id longer than any channel's: the same.
            let event = event_with("om_bad_chat", "oc_\u{0}", "x");
            let (status, _, answer) = server.deliver(&id, &event, 5).await;
            assert_eq!(status, 400, "{name}: {answer}");
            // (Contract 0.2 names the neutral chat's field.)
            assert!(answer.contains("chat.id"), "{name}: {answer}");
            let long_id = format!("om_{}", "x".repeat(600));
            let (status, _, answer) = server
                .deliver(&id, &event_with(&long_id, "oc_chat", "x"), 6)
                .await;
            assert_eq!(status, 400, "{name}: {answer}");
            assert!(answer.contains("at most 512 bytes"), "{name}: {answer}");

            assert_eq!(
                server.user_bodies(&id).await,
                vec!["helloworld".to_string()],
                "{name}: only the sanitised text is stored"
            );
            let reasons = server.audit_reasons(&id).await;
            assert_eq!(
                reasons
                    .iter()
                    .filter(|r| r.as_str() == "unstorable_value")
                    .count(),
                4,
                "{name}: one audit row per refused delivery: {reasons:?}"
            );
            // The audit row itself is storable: the NUL is shown as U+FFFD.
            let (_, audit) = server
                .admin(
                    reqwest::Method::GET,
                    &format!("/audit?installation={id}"),
                    None,
                )
                .await;
            assert!(
                audit.to_string().contains("om_bad\u{FFFD}id"),
                "{name}: {audit}"
            );

            // The admin API's session operations refuse NUL in submitted text.
            let sessions = server.sessions(&id).await;
            let session = sessions[0]["session"]["id"].as_str().unwrap().to_string();
            let (status, error) = server
                .admin_raw(
                    reqwest::Method::POST,
                    &format!("/sessions/{session}/messages"),
                    Some(r#"{"body":"a\u0000b"}"#.into()),
                )
                .await;
            assert_eq!(status, 400, "{name}: {error}");
            assert!(
                error["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("body contains a NUL"),
                "{name}: {error}"
            );
            // `\\u0000` is six characters of text, not a NUL: accepted.
            let (status, error) = server
                .admin_raw(
                    reqwest::Method::POST,
                    &format!("/sessions/{session}/messages"),
                    Some(r#"{"body":"write \\u0000 for NUL"}"#.into()),
                )
                .await;
            // Stored (201), or queued behind the run the first message made pending (202).
            assert!(status == 201 || status == 202, "{name}: {status} {error}");
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_refuses_unstorable_and_out_of_range_values_with_400() {
    bounded("admin API bounds", 120, async {
        for test_db in db::test_databases().await {
            let name = &test_db.name;
            let server = Server::start(&test_db.url, |_| {}).await;
            // Values that fit the Lark schema, so that each case reaches the storage bounds.
            let base = json!({
                "channel": "lark",
                "routing_key": "cli_bounds",
                "config": {"app_id": "cli_bounds"},
                "secrets": {"app_secret": "s", "encrypt_key": "k", "verification_token": "t"},
                "skip_on_install": true,
            });
            let with = |key: &str, value: Value| {
                let mut body = base.clone();
                body[key] = value;
                body
            };
            for (case, body, expected) in [
                (
                    "900 KB routing key",
                    with("routing_key", json!("k".repeat(900 * 1024))),
                    "routing_key is 921600 bytes long; at most 256",
                ),
                (
                    "i64::MAX debounce",
                    with("debounce_ms", json!(i64::MAX)),
                    "between 1 and 3600000",
                ),
                ("zero debounce", with("debounce_ms", json!(0)), "debounce"),
                (
                    "long name",
                    with("name", json!("n".repeat(257))),
                    "name is 257 bytes long",
                ),
                (
                    // `locale` is the host's own key: no schema bounds it, the store does.
                    "long config value",
                    with(
                        "config",
                        json!({"app_id": "cli_bounds", "locale": "u".repeat(70 * 1024)}),
                    ),
                    "config.locale is 71680 bytes long",
                ),
            ] {
                let (status, error) = server
                    .admin(reqwest::Method::POST, "/installations", Some(body))
                    .await;
                assert_eq!(status, 400, "{name}: {case}: {error}");
                let message = error["error"].as_str().unwrap_or_default();
                assert!(message.contains(expected), "{name}: {case}: {message}");
            }
            // A schema key is bounded before that, by the schema: 422 naming it.
            let long_url = format!("https://{}", "u".repeat(70 * 1024));
            let (status, error) = server
                .admin(
                    reqwest::Method::POST,
                    "/installations",
                    Some(with(
                        "config",
                        json!({"app_id": "cli_bounds", "base_url": long_url}),
                    )),
                )
                .await;
            assert_eq!(status, 422, "{name}: long base_url: {error}");
            let message = error["error"].as_str().unwrap_or_default();
            assert!(
                message.contains("config `base_url` is longer than 4096 bytes"),
                "{name}: {message}"
            );
            // NUL anywhere in an admin JSON body: 400 naming the field.
            for (body, field) in [
                (
                    r#"{"channel":"lark","routing_key":"cli_\u0000"}"#,
                    "routing_key",
                ),
                (
                    r#"{"channel":"lark","routing_key":"cli_x","config":{"base_url":"a\u0000"}}"#,
                    "config.base_url",
                ),
            ] {
                let (status, error) = server
                    .admin_raw(reqwest::Method::POST, "/installations", Some(body.into()))
                    .await;
                assert_eq!(status, 400, "{name}: {body}: {error}");
                let message = error["error"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("{field} contains a NUL")),
                    "{name}: {message}"
                );
            }
            let (status, all) = server
                .admin(reqwest::Method::GET, "/installations", None)
                .await;
            assert_eq!(
                (status, all),
                (200, json!([])),
                "{name}: nothing was created"
            );

            // A NUL in a path or query: 400 in the JSON error shape (was a 500 on PostgreSQL).
            for path in [
                "/api/installations/%00",
                "/api/sessions/%00",
                "/api/sessions/%00/events",
                "/api/audit?installation=%00",
                "/api/sessions?installation=a%00b",
            ] {
                let response = server
                    .client
                    .get(format!("{}{path}", server.base))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 400, "{name}: {path}");
                let error: Value =
                    serde_json::from_str(&response.text().await.unwrap()).expect("a JSON error");
                assert!(
                    error["error"].as_str().unwrap().contains("NUL"),
                    "{name}: {path}: {error}"
                );
            }
            let response = server
                .client
                .post(format!("{}/hooks/lark/%00", server.base))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "{name}: webhook path");
            // A too-long installation id is simply not found.
            let (status, _) = server
                .admin(
                    reqwest::Method::GET,
                    &format!("/installations/{}", "i".repeat(4096)),
                    None,
                )
                .await;
            assert_eq!(status, 404, "{name}");
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_worker_reply_with_nul_is_stored_without_it() {
    bounded("worker reply with NUL", 120, async {
        for test_db in db::test_databases().await {
            let name = &test_db.name;
            let server = Server::start(&test_db.url, |_| {}).await;
            let id = server.install("team").await;
            let (status, _, answer) = server
                .deliver(&id, &lark::text_event("om_for_worker", "review please"), 1)
                .await;
            assert_eq!(status, 200, "{name}: {answer}");
            // The debounce window (100 ms) closes; the long poll then gets the run.
            let response = server
                .client
                .post(format!(
                    "{}/api/agents/team/runs/claim?wait_ms=10000",
                    server.base
                ))
                .bearer_auth(WORKER_TOKEN)
                .header("x-switchboard-worker", "hygiene-worker")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{name}");
            let claim: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            let response = server
                .client
                .post(format!(
                    "{}/api/agents/team/runs/{}/{}/complete",
                    server.base,
                    claim["session_id"].as_str().unwrap(),
                    claim["run_id"].as_str().unwrap()
                ))
                .bearer_auth(WORKER_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"reply":"LG\u0000TM"}"#)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert_eq!(status, 200, "{name}: {}", response.text().await.unwrap());
            let bodies = server.bodies(&id).await;
            assert_eq!(bodies, vec!["review please", "LGTM"], "{name}");
            server.stop().await;
        }
    })
    .await;
}

/// One client that sends a request's bytes one every `pace`, forever; returns how long the
/// server took to close the connection (`None`: not within `limit`).
async fn slow_header_client(addr: SocketAddr, pace: Duration, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(pace);
    let closed = async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {} // an error answer, then the close
                },
                _ = tick.tick() => {
                    let byte = request.get(sent).copied().unwrap_or(b'a');
                    sent += 1;
                    if stream.write_all(&[byte]).await.is_err() {
                        return started.elapsed();
                    }
                }
            }
        }
    };
    tokio::time::timeout(limit, closed).await.ok()
}

#[tokio::test]
async fn slow_header_connections_are_closed_while_normal_requests_are_served() {
    bounded("slow headers", 60, async {
        let test_db = db::sqlite_file_db().await;
        let server = Server::start(&test_db.url, |config| {
            config.server.header_read_timeout_ms = 1_000;
        })
        .await;
        let clients: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn(slow_header_client(
                    server.addr,
                    Duration::from_millis(200),
                    Duration::from_secs(8),
                ))
            })
            .collect();
        // While they trickle, a normal request is served at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let response = server
            .client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        for client in clients {
            let closed = client
                .await
                .unwrap()
                .expect("a slow-header connection is closed by the server");
            assert!(
                closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
                "closed after {closed:?}, expected about the 1 s header read timeout"
            );
        }
        // An idle keep-alive connection is closed after the same timeout.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the idle keep-alive connection is closed")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    bounded("slow body", 60, async {
        let test_db = db::sqlite_file_db().await;
        let server = Server::start(&test_db.url, |config| {
            config.server.body_read_timeout_ms = 500;
        })
        .await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"POST /hooks/lark/some-installation HTTP/1.1\r\nHost: slow\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        let started = Instant::now();
        let (mut read, mut write) = stream.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..99 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(b" ").await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), read.read_to_end(&mut answer))
            .await
            .expect("answered and closed before the body could finish (10 s)")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_read_timeout_ms"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        trickle.abort();
        server.stop().await;
    })
    .await;
}

/// Sends a whole `GET /healthz` on `stream` and reads the answer's first bytes.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: cap\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_when_others_close() {
    bounded("connection cap", 60, async {
        let test_db = db::sqlite_file_db().await;
        let server = Server::start(&test_db.url, |config| {
            config.server.max_connections = 4;
        })
        .await;
        // Four connections hold every slot (a partial request line each).
        let mut holders = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(b"GET").await.unwrap();
            holders.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A fifth is not served while they are open…
        let mut fifth = TcpStream::connect(server.addr).await.unwrap();
        let waiting = tokio::spawn(async move { healthz(&mut fifth).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "served beyond max_connections = 4");
        // …and is served as soon as one of them closes.
        drop(holders.pop());
        let answer = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("served once a slot was free")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(holders);
        // With every slot free again, a burst beyond the cap is served in turn.
        let burst: Vec<_> = (0..12)
            .map(|_| {
                let addr = server.addr;
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.unwrap();
                    healthz(&mut stream).await
                })
            })
            .collect();
        for answer in burst {
            let answer = answer.await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_but_handler_time_does_not_count() {
    use switchboard::api::HttpLimits;
    const BIG: usize = 32 << 20;
    bounded("idle timeout", 60, async {
        let router = axum::Router::new()
            .route("/big", axum::routing::get(|| async { vec![b'x'; BIG] }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    "done"
                }),
            );
        let limits = HttpLimits {
            idle_timeout: Duration::from_millis(500),
            ..HttpLimits::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(switchboard::api::server::serve(
            listener,
            router,
            limits,
            async {
                let _ = stopped.await;
            },
        ));

        // A handler that takes three idle timeouts still answers.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: idle\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );

        // A client that stops reading a large answer is cut after the idle timeout.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: idle\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received += n,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .expect("the connection was closed");
        assert!(
            received < BIG,
            "the whole {BIG}-byte answer arrived ({received} bytes): the stalled connection \
             was not cut"
        );

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    })
    .await;
}

/// Not an assertion (allocators keep freed memory as they please): the resident memory of a
/// `switchboard serve` process before, during and after 2,000 connections that send their
/// headers at 1 byte/s. Run with `cargo nextest run -p switchboard --test hygiene
/// --run-ignored only` and read its output.
#[tokio::test]
#[ignore = "a measurement, not a check; prints RSS figures"]
async fn measure_memory_of_a_slow_header_burst() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    /// Kills the server when the measurement ends, however it ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--listen", &addr.to_string()])
            .arg("--cache-dir")
            .arg(support::shared_cache_dir())
            .current_dir(dir.path())
            .env("SWITCHBOARD_DATABASE__URL", "sqlite://hygiene.db")
            .env("SWITCHBOARD_CONNECTIONS__ENABLED", "false")
            .env("SWITCHBOARD_SERVER__MAX_CONNECTIONS", "4096")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string()
    };
    for _ in 0..300 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("idle:                 {}", rss());
    let clients: Vec<_> = (0..2_000)
        .map(|_| {
            tokio::spawn(slow_header_client(
                addr,
                Duration::from_secs(1),
                Duration::from_secs(40),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("2000 slow clients:    {}", rss());
    let mut closed = Vec::new();
    for client in clients {
        closed.push(client.await.unwrap());
    }
    let cut = closed.iter().filter(|c| c.is_some()).count();
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    println!("closed by the server: {cut} of 2000, the last after {slowest:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after they closed:    {}", rss());
    drop(child);
}

/// Runs the binary in `dir` with `args` and `env` (its database and key file in `dir`),
/// within two minutes: (exit code, stderr).
fn cli(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .current_dir(dir)
        .env(
            "SWITCHBOARD_DATABASE__URL",
            format!("sqlite://{}", dir.join("cli.db").display()),
        )
        .env("SWITCHBOARD_CACHE_DIR", support::shared_cache_dir())
        .env("SWITCHBOARD_SECRETS__KEY_FILE", dir.join("secret.key"))
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("`switchboard {}` ran longer than 120 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap())
}

#[test]
fn the_cli_refuses_out_of_range_installations_and_serve_out_of_range_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // Offline: no on-install (there is no Open Platform to ask), the bot id given.
    let add = |extra: &[&str]| {
        let mut args = vec![
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "bot_open_id=ou_x",
            "--secret",
            "app_secret=s",
            "--skip-on-install",
        ];
        args.extend_from_slice(extra);
        cli(dir.path(), &args, &[])
    };
    let app = ["--config-value", "app_id=cli_ok"];
    let max = i64::MAX.to_string();
    let (code, err) = add(&[&app[..], &["--debounce-ms", &max]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--debounce-ms") && err.contains("1..=3600000"),
        "{err}"
    );
    // A 300-byte app id fits the schema; the routing key taken from it does not fit the store.
    let long_app = format!("app_id=cli_{}", "k".repeat(296));
    let (code, err) = add(&["--config-value", &long_app]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("routing_key is 300 bytes long; at most 256"),
        "{err}"
    );
    // `locale` is the host's own key: no schema bounds it, the store does.
    let long_value = format!("locale={}", "u".repeat(70 * 1024));
    let (code, err) = add(&[&app[..], &["--config-value", &long_value]].concat());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("config.locale is"), "{err}");
    // A schema key is bounded by the schema first.
    let long_url = format!("base_url=https://{}", "u".repeat(70 * 1024));
    let (code, err) = add(&[&app[..], &["--config-value", &long_url]].concat());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("config `base_url` is longer than 4096 bytes"),
        "{err}"
    );
    let (code, err) = add(&app);
    assert_eq!(code, Some(0), "{err}");

    let (code, err) = cli(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SWITCHBOARD_SERVER__MAX_CONNECTIONS", "0")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("server.max_connections (SWITCHBOARD_SERVER__MAX_CONNECTIONS) is 0")
            && err.contains("between 1 and 1000000"),
        "{err}"
    );
}
