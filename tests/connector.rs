//! The long connection end to end over real loopback sockets (issue 6): the host (`App::serve`,
//! its supervisor and connector, the embedded Lark wasm plugin) against `fake-lark` (endpoint
//! discovery, pbbp2 WebSocket, REST). Every case runs on SQLite and PostgreSQL: a message pushed
//! over the WebSocket is stored once and ACKed; fragments; a lost ACK → redelivery → stored once;
//! a forced database failure → NACK → reconnect → stored once; the fake closes the socket →
//! reconnect with a fresh URL; a stolen lease closes the connection; revocation and changed
//! credentials; graceful shutdown delivers the pending run; and (PostgreSQL) two hosts on one
//! database hold one connection between them.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;
#[path = "support/runtime.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fake_lark::{FakeLark, FakeOptions};
use serde_json::Value;
use sqlx::Connection;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{Backend, InstallationStore, NewInstallation, SecretCipher};

const APP_ID: &str = lark::APP_ID;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 25 ms for up to 20 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..800 {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn host_config(database_url: &str, key: &str, fake: &FakeLark) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(key.to_string());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    // REST and discovery go to the fake; the WebSocket URL discovery answers with is the fake's,
    // which the host dials only because an override targets it.
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
    c.lease_ttl_ms = 3_000;
    c.lease_renew_interval_ms = 200;
    c.lease_safety_margin_ms = 500;
    c.backoff_initial_ms = 50;
    c.backoff_max_ms = 400;
    config
}

/// A running host.
struct Host {
    /// `http://127.0.0.1:<port>` of its HTTP surface.
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Host {
    async fn start(config: &Config) -> Host {
        let app = App::from_config(config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Host {
            base,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// One backend's world: database, fake Lark, host, and a websocket installation.
struct World {
    t: db::TestDb,
    key: String,
    fake: FakeLark,
    installations: InstallationStore,
    installation: String,
    host: Option<Host>,
}

impl World {
    async fn start(t: db::TestDb, options: FakeOptions, debounce_ms: i64) -> World {
        init_logs();
        let key = SecretCipher::generate_key_hex();
        let installations =
            t.db.installations(SecretCipher::from_key_str(&key).unwrap());
        let created = installations
            .create(
                &NewInstallation {
                    channel: "lark".into(),
                    routing_key: APP_ID.into(),
                    name: "ws".into(),
                    // The plugin reads its app id and the bot's id from the config (contract
                    // 0.2: the host adds nothing to it); `connection` picks the transport.
                    config: BTreeMap::from([
                        ("connection".into(), "websocket".into()),
                        ("app_id".into(), APP_ID.into()),
                        ("bot_open_id".into(), lark::BOT_OPEN_ID.into()),
                        // The echo replies are asserted as plain messages, not streamed cards.
                        ("reply_mode".into(), "final".into()),
                    ]),
                    secrets: BTreeMap::from([("app_secret".into(), "s3cret".into())]),
                    agent: "echo".into(),
                    debounce_ms,
                    ..Default::default()
                },
                1_731_300_000_000,
            )
            .await
            .unwrap();
        let fake = FakeLark::start_with(options).await;
        let host = Host::start(&host_config(&t.url, &key, &fake)).await;
        let world = World {
            t,
            key,
            fake,
            installations,
            installation: created.id,
            host: Some(host),
        };
        world.connected(1).await;
        world
    }

    fn name(&self) -> &str {
        &self.t.name
    }

    /// Waits until the fake has accepted `n` connections in total and one is open.
    async fn connected(&self, n: u64) {
        let fake = &self.fake;
        eventually(&format!("{}: connection #{n}", self.name()), || async move {
            (fake.connections() >= n && fake.live_connections() == 1).then_some(())
        })
        .await;
    }

    /// The stored bodies of messages with channel id `message_id`.
    async fn stored_bodies(&self, message_id: &str) -> Vec<String> {
        let ingest = self.t.db.ingest();
        let mut bodies = Vec::new();
        for session in ingest.list_sessions(&self.installation).await.unwrap() {
            bodies.extend(
                ingest
                    .list_messages(&session.id)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|m| m.channel_message_id.as_deref() == Some(message_id))
                    .map(|m| m.body),
            );
        }
        bodies
    }

    /// How many user messages with channel id `message_id` are stored.
    async fn stored(&self, message_id: &str) -> usize {
        self.stored_bodies(message_id).await.len()
    }

    /// Waits for a 200 ACK of transport message `tm`.
    async fn acked(&self, tm: &str) {
        let fake = &self.fake;
        eventually(&format!("{}: ACK of {tm}", self.name()), || async move {
            fake.acks()
                .iter()
                .any(|a| a.message_id == tm && a.code == 200)
                .then_some(())
        })
        .await;
    }

    fn push_text(&self, message_id: &str, text: &str) -> String {
        let event: Value = serde_json::from_slice(&lark::text_event(message_id, text)).unwrap();
        self.fake.push_event(APP_ID, &event)
    }

    async fn stop(mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await;
        }
    }

    /// Runs raw SQL on the test database.
    async fn sql(&self, statements: &[&str]) {
        match self.t.db.backend() {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.t.url).await.unwrap();
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap();
                }
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.t.url).await.unwrap();
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap();
                }
            }
        }
    }
}

fn fast_acks() -> FakeOptions {
    FakeOptions {
        ack_timeout: Duration::from_millis(600),
        // A NACK loop redelivers every few hundred milliseconds until the test repairs the
        // database; the fake's default budget (20) can run out first on a loaded machine.
        max_deliveries: 1_000,
        ..FakeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_websocket_is_stored_once_and_acked() {
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let tm = w.push_text("om_ws_1", "hello over the long connection");
        w.acked(&tm).await;
        assert_eq!(w.stored("om_ws_1").await, 1, "{}", w.name());
        let acks = w.fake.acks();
        assert_eq!(acks.len(), 1, "{}: {acks:?}", w.name());
        assert!(
            acks[0].biz_rt.is_some(),
            "{}: the ACK carries biz_rt",
            w.name()
        );
        assert!(
            w.fake.pings() >= 1,
            "{}: ping right after connecting",
            w.name()
        );
        assert_eq!(w.fake.discoveries(), 1, "{}", w.name());
        let metrics = reqwest::get(format!("{}/metrics", w.host.as_ref().unwrap().base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for expected in [
            "switchboard_long_connections_open 1",
            "switchboard_long_connection_acks_total{channel=\"lark\",kind=\"ack\"} 1",
            "switchboard_ingest_events_total{channel=\"lark\",outcome=\"ingested\"} 1",
        ] {
            assert!(
                metrics.contains(expected),
                "{}: missing {expected:?} in:\n{metrics}",
                w.name()
            );
        }
        w.stop().await;
    }
}

/// Issue 13: an event on installation A's connection that names installation B is ACKed (so it
/// is not redelivered), audited on A without content, and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_another_installation_on_a_connection_is_acked_audited_and_dropped() {
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let other = w
            .installations
            .create(
                &NewInstallation {
                    channel: "lark".into(),
                    routing_key: "cli_other_app".into(),
                    name: "other".into(),
                    config: BTreeMap::from([("app_id".into(), "cli_other_app".into())]),
                    secrets: BTreeMap::from([("verification_token".into(), "t".into())]),
                    agent: "echo".into(),
                    ..Default::default()
                },
                1_731_300_000_000,
            )
            .await
            .unwrap();
        let mut event: Value =
            serde_json::from_slice(&lark::text_event("om_ws_smuggled", "smuggled text")).unwrap();
        event["header"]["app_id"] = "cli_other_app".into();
        let tm = w.fake.push_event(APP_ID, &event);
        w.acked(&tm).await;
        assert_eq!(w.stored("om_ws_smuggled").await, 0, "{}", w.name());
        let ingest = w.t.db.ingest();
        assert!(
            ingest.list_sessions(&other.id).await.unwrap().is_empty(),
            "{}: nothing reaches the other installation",
            w.name()
        );
        let audit = ingest.list_audit(Some(&w.installation), 50).await.unwrap();
        let reasons: Vec<&str> = audit.iter().map(|a| a.drop_reason.as_str()).collect();
        assert_eq!(reasons, ["routed_elsewhere"], "{}: {audit:?}", w.name());
        assert_eq!(
            audit[0].message_id.as_deref(),
            Some("om_ws_smuggled"),
            "{}",
            w.name()
        );
        // The connection goes on: A's own events are still stored.
        let tm = w.push_text("om_ws_own", "mine");
        w.acked(&tm).await;
        assert_eq!(w.stored("om_ws_own").await, 1, "{}", w.name());
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_event_is_reassembled_and_acked_once() {
    for t in db::test_databases().await {
        let options = FakeOptions {
            max_frame_payload: 97,
            ..FakeOptions::default()
        };
        let w = World::start(t, options, 3_000).await;
        let text = "fragmented 你好 ".repeat(20);
        let tm = w.push_text("om_frag_1", &text);
        w.acked(&tm).await;
        let ack = w
            .fake
            .acks()
            .into_iter()
            .find(|a| a.message_id == tm)
            .unwrap();
        assert!(
            ack.seq > 0,
            "{}: ACK built from the completing fragment",
            w.name()
        );
        assert_eq!(
            w.fake.acks().len(),
            1,
            "{}: one ACK for all fragments",
            w.name()
        );
        assert_eq!(w.stored("om_frag_1").await, 1, "{}", w.name());
        let ingest = w.t.db.ingest();
        let session = &ingest.list_sessions(&w.installation).await.unwrap()[0];
        let messages = ingest.list_messages(&session.id).await.unwrap();
        assert!(
            messages.iter().any(|m| m.body.contains(text.trim())),
            "{}: the reassembled body is intact: {messages:?}",
            w.name()
        );
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_is_redelivered_and_stored_once() {
    for t in db::test_databases().await {
        let w = World::start(t, fast_acks(), 3_000).await;
        w.fake.lose_acks(1);
        let tm = w.push_text("om_lost_ack", "said once");
        w.acked(&tm).await;
        assert_eq!(w.fake.deliveries(), 2, "{}: delivered again", w.name());
        assert_eq!(
            w.stored("om_lost_ack").await,
            1,
            "{}: stored once",
            w.name()
        );
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_is_nacked_then_redelivered_on_a_new_connection_and_stored_once() {
    for t in db::test_databases().await {
        let w = World::start(t, fast_acks(), 3_000).await;
        let (break_it, repair): (&[&str], &[&str]) = match w.t.db.backend() {
            Backend::Sqlite => (
                &["CREATE TRIGGER forced_failure BEFORE INSERT ON messages \
                   BEGIN SELECT RAISE(ABORT, 'forced failure'); END"],
                &["DROP TRIGGER forced_failure"],
            ),
            Backend::Postgres => (
                &[
                    "CREATE FUNCTION forced_failure() RETURNS trigger AS $$ \
                     BEGIN RAISE EXCEPTION 'forced failure'; END $$ LANGUAGE plpgsql",
                    "CREATE TRIGGER forced_failure BEFORE INSERT ON messages \
                     FOR EACH ROW EXECUTE FUNCTION forced_failure()",
                ],
                &["DROP TRIGGER forced_failure ON messages"],
            ),
        };
        w.sql(break_it).await;
        let tm = w.push_text("om_nack", "stored after the database recovers");
        let fake = &w.fake;
        let tm_ref = &tm;
        eventually("a NACK", || async move {
            fake.acks()
                .iter()
                .any(|a| a.message_id == *tm_ref && a.code == 500)
                .then_some(())
        })
        .await;
        // The NACK closes the connection; the host comes back on a fresh one.
        w.connected(2).await;
        assert_eq!(w.stored("om_nack").await, 0, "{}", w.name());
        w.sql(repair).await;
        w.acked(&tm).await;
        assert_eq!(w.stored("om_nack").await, 1, "{}: stored once", w.name());
        assert_eq!(
            w.fake.refused_connections(),
            0,
            "{}: a fresh URL per connection",
            w.name()
        );
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reconnects_after_the_server_closes_the_socket() {
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        w.fake.close_connections();
        w.connected(2).await;
        w.fake.close_connections();
        w.connected(3).await;
        // Each reconnect is counted, labelled with why the connection ended.
        let metrics = reqwest::get(format!("{}/metrics", w.host.as_ref().unwrap().base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let reconnects: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("switchboard_reconnects_total{channel=\"lark\",reason="))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(reconnects, 2, "{}: {metrics}", w.name());
        assert_eq!(
            w.fake.discoveries(),
            3,
            "{}: one discovery per connection",
            w.name()
        );
        assert_eq!(w.fake.refused_connections(), 0, "{}", w.name());
        let tm = w.push_text("om_after_reconnect", "still here");
        w.acked(&tm).await;
        assert_eq!(w.stored("om_after_reconnect").await, 1, "{}", w.name());
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lease_closes_the_connection_until_the_lease_is_free_again() {
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let (token, _) = w
            .installations
            .lease(&w.installation)
            .await
            .unwrap()
            .unwrap();
        let far = 4_000_000_000_000i64;
        w.sql(&[&format!(
            "UPDATE installations SET lease_token = 'intruder', lease_expires_at_ms = {far} \
             WHERE id = '{}'",
            w.installation
        )])
        .await;
        let fake = &w.fake;
        eventually("the connection to close", || async move {
            (fake.live_connections() == 0).then_some(())
        })
        .await;
        assert_eq!(fake.connections(), 1, "{}", w.name());
        w.sql(&[&format!(
            "UPDATE installations SET lease_token = NULL, lease_expires_at_ms = NULL WHERE id = '{}'",
            w.installation
        )])
        .await;
        w.connected(2).await;
        let (again, _) = w
            .installations
            .lease(&w.installation)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(again, token, "{}: a new lease generation", w.name());
        assert_ne!(again, "intruder", "{}", w.name());
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_credentials_restart_and_revocation_stops_the_connection() {
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let secrets = BTreeMap::from([("app_secret".to_string(), "rotated".to_string())]);
        assert!(
            w.installations
                .set_secrets(&w.installation, &secrets, 1)
                .await
                .unwrap()
        );
        w.connected(2).await;
        assert!(w.installations.revoke(&w.installation, 2).await.unwrap());
        let fake = &w.fake;
        eventually("the connection to stop", || async move {
            (fake.live_connections() == 0).then_some(())
        })
        .await;
        let installations = &w.installations;
        let id = &w.installation;
        eventually("the lease to be released", || async move {
            installations
                .lease(id)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_the_pending_window_and_delivers_the_reply() {
    for t in db::test_databases().await {
        // A window far longer than the test: only the shutdown flush can start the run.
        let w = World::start(t, FakeOptions::default(), 600_000).await;
        let tm = w.push_text("om_shutdown", "answer me before you go");
        w.acked(&tm).await;
        assert!(w.fake.sent_messages().is_empty(), "{}", w.name());
        let name = w.name().to_string();
        let World { t, fake, host, .. } = w;
        host.unwrap().stop().await;
        let sent = fake.sent_messages();
        assert_eq!(sent.len(), 1, "{name}: the echo reply went out: {sent:?}");
        assert!(
            sent[0].body["content"]
                .as_str()
                .unwrap_or("")
                .contains("answer me before you go"),
            "{name}: {sent:?}"
        );
        drop(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_postgres_database_hold_one_connection() {
    let t = db::postgres_db().await;
    let w = World::start(t, FakeOptions::default(), 3_000).await;
    let (first, _) = w
        .installations
        .lease(&w.installation)
        .await
        .unwrap()
        .unwrap();
    let second = Host::start(&host_config(&w.t.url, &w.key, &w.fake)).await;
    // The second host sweeps every 100 ms; give it many chances to take over.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(w.fake.connections(), 1, "the second host did not connect");
    assert_eq!(w.fake.discoveries(), 1);
    let (still, _) = w
        .installations
        .lease(&w.installation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still, first, "the first host kept its lease");
    // The first host stops and releases the lease; the second takes over.
    let World {
        t,
        fake,
        installations,
        installation,
        host,
        ..
    } = w;
    host.unwrap().stop().await;
    eventually("the second host to connect", || async {
        (fake.connections() == 2 && fake.live_connections() == 1).then_some(())
    })
    .await;
    let (taken, _) = installations.lease(&installation).await.unwrap().unwrap();
    assert_ne!(taken, first);
    let tm = fake.push_event(
        APP_ID,
        &serde_json::from_slice::<Value>(&lark::text_event("om_second_host", "hi")).unwrap(),
    );
    eventually("the second host's ACK", || async {
        fake.acks()
            .iter()
            .any(|a| a.message_id == tm && a.code == 200 && a.connection == 2)
            .then_some(())
    })
    .await;
    second.stop().await;
    drop(t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_sealed_with_another_key_does_not_block_the_others() {
    for t in db::test_databases().await {
        let other = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
        t.db.installations(other)
            .create(
                &NewInstallation {
                    channel: "lark".into(),
                    routing_key: "cli_sealed_elsewhere".into(),
                    config: BTreeMap::from([("connection".into(), "websocket".into())]),
                    secrets: BTreeMap::from([("app_secret".into(), "x".into())]),
                    ..Default::default()
                },
                1,
            )
            .await
            .unwrap();
        // World::start waits for the websocket installation's connection.
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let tm = w.push_text("om_beside_unreadable", "still served");
        w.acked(&tm).await;
        assert_eq!(w.stored("om_beside_unreadable").await, 1, "{}", w.name());
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_url_outside_the_allow_list_is_never_dialled() {
    // One backend is enough: the refusal happens before any database work.
    let t = db::test_databases().await.remove(0);
    init_logs();
    let key = SecretCipher::generate_key_hex();
    t.db.installations(SecretCipher::from_key_str(&key).unwrap())
        .create(
            &NewInstallation {
                channel: "lark".into(),
                routing_key: APP_ID.into(),
                config: BTreeMap::from([
                    ("connection".into(), "websocket".into()),
                    ("app_id".into(), APP_ID.into()),
                ]),
                secrets: BTreeMap::from([("app_secret".into(), "s3cret".into())]),
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    let fake = FakeLark::start().await;
    // Discovery is pointed at the fake, but no override targets its WebSocket origin: the URL
    // it answers with (ws://127.0.0.1:<port>) is outside the Lark manifest's
    // capabilities.websocket, so the host must not dial it.
    let mut config = host_config(&t.url, &key, &fake);
    config
        .plugins
        .base_urls
        .remove("wss://msg-frontier.feishu.cn");
    let host = Host::start(&config).await;
    // A second discovery means the first attempt ended (refused) and the connector retried.
    eventually("a retried discovery", || async {
        (fake.discoveries() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        fake.connections(),
        0,
        "the host dialled a URL outside the allow-list"
    );
    assert_eq!(fake.refused_connections(), 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_with_a_quote_starts_fresh_and_keeps_the_quoted_block() {
    // the reference inventory #126: `/new` + quote → directive removed, quoted block kept.
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 3_000).await;
        let template: Value =
            serde_json::from_slice(&lark::text_event("om_fresh_quote", "/new summarise this"))
                .unwrap();
        let chat = template["event"]["message"]["chat_id"].clone();
        w.fake.add_message(
            "om_quoted_parent",
            vec![serde_json::json!({
                "message_id": "om_quoted_parent", "msg_type": "text",
                "create_time": "1731300000000", "deleted": false, "chat_id": chat,
                "sender": {"id": "ou_someone", "id_type": "open_id", "sender_type": "user"},
                "body": {"content": serde_json::json!({"text": "the quarterly numbers"}).to_string()},
            })],
        );
        let mut event = template;
        event["event"]["message"]["parent_id"] = Value::from("om_quoted_parent");
        let tm = w.fake.push_event(APP_ID, &event);
        w.acked(&tm).await;
        let bodies = w.stored_bodies("om_fresh_quote").await;
        assert_eq!(bodies.len(), 1, "{}: {bodies:?}", w.name());
        let body = &bodies[0];
        assert!(
            body.contains("<quoted_message")
                && body.contains("the quarterly numbers")
                && body.contains("summarise this")
                && !body.contains("/new"),
            "{}: {body}",
            w.name()
        );
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_chats_is_stored_once_each_and_in_order_within_every_chat() {
    // Events of different chats are stored concurrently, one chat's events in arrival order.
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 60_000).await;
        let chats = ["oc_burst_a", "oc_burst_b", "oc_burst_c"];
        let mut pushed = Vec::new();
        for i in 0..30 {
            let chat = chats[i % chats.len()];
            let id = format!("om_burst_{i:02}");
            let mut event: Value =
                serde_json::from_slice(&lark::text_event(&id, &format!("burst {i}"))).unwrap();
            event["event"]["message"]["chat_id"] = Value::from(chat);
            pushed.push(w.fake.push_event(APP_ID, &event));
        }
        for tm in &pushed {
            w.acked(tm).await;
        }
        let ingest = w.t.db.ingest();
        let sessions = ingest.list_sessions(&w.installation).await.unwrap();
        assert_eq!(sessions.len(), chats.len(), "{}", w.name());
        let mut stored = 0;
        for session in sessions {
            let ids: Vec<String> = ingest
                .list_messages(&session.id)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| m.channel_message_id)
                .collect();
            stored += ids.len();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "{}: a chat's messages out of order", w.name());
        }
        assert_eq!(stored, 30, "{}: every event stored once", w.name());
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enrichment_fetch_is_a_placeholder_and_the_message_is_still_stored_and_answered() {
    use fake_lark::{Failure, Route};
    for t in db::test_databases().await {
        let w = World::start(t, FakeOptions::default(), 100).await;
        let failures = [
            ("rate_limit", Some(Failure::RateLimit)),
            ("permission", Some(Failure::PermissionDenied)),
            ("server_error", Some(Failure::ServerError)),
            ("withdrawn", None), // the parent does not exist: code 230011
        ];
        for (name, failure) in failures {
            w.fake.clear_failures();
            if let Some(failure) = failure {
                w.fake.set_failure(Route::GetMessage, failure);
            }
            let id = format!("om_degraded_{name}");
            let chat = format!("oc_degraded_{name}");
            let mut event: Value =
                serde_json::from_slice(&lark::text_event(&id, &format!("about that, {name}")))
                    .unwrap();
            event["event"]["message"]["chat_id"] = Value::from(chat.as_str());
            event["event"]["message"]["parent_id"] = Value::from("om_parent_unreachable");
            let tm = w.fake.push_event(APP_ID, &event);
            w.acked(&tm).await;
            let bodies = w.stored_bodies(&id).await;
            assert_eq!(bodies.len(), 1, "{} {name}: stored once", w.name());
            assert!(
                bodies[0].contains("type=\"error\">[unable to fetch]")
                    && bodies[0].contains(&format!("about that, {name}")),
                "{} {name}: {}",
                w.name(),
                bodies[0]
            );
            // The echo agent's answer reaches the (fake) chat.
            let fake = &w.fake;
            let chat = chat.as_str();
            eventually(&format!("{} {name}: the reply", w.name()), || async move {
                fake.sent_messages()
                    .iter()
                    .any(|r| {
                        r.body["receive_id"].as_str() == Some(chat)
                            && r.body["content"]
                                .as_str()
                                .is_some_and(|c| c.contains("echo: "))
                    })
                    .then_some(())
            })
            .await;
        }
        w.fake.clear_failures();
        w.stop().await;
    }
}
