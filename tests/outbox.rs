//! The delivery outbox end to end (issue 14), on SQLite and PostgreSQL, against `fake-lark`:
//! a reply stored with its run's end but never sent (the host died right after the commit) is
//! delivered by the next host to start, exactly once; a channel that keeps failing exhausts the
//! retry budget and the row shows up as `failed` in the admin API and the metrics, and an
//! operator's retry delivers it; every attempt of one row carries the same Lark `uuid`.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fake_lark::{Failure, FakeLark, Route};
use serde_json::Value;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{
    AppendOutcome, AppendRequest, ChatKind, Database, NewInstallation, OutboxContent, RunFinish,
    SecretCipher, SessionKey, TurnKind,
};

const ADMIN: &str = "outbox-admin-token-0123456789abcdef";
const APP_ID: &str = "cli_outbox_app";

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

fn config(database_url: &str, key: &str, fake: &FakeLark) -> Config {
    let mut config = Config::default();
    config.database.url = database_url.to_string();
    config.secrets.key = Some(key.to_string());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config.server.admin_token = Some(ADMIN.into());
    config.connections.enabled = false;
    config
        .plugins
        .base_urls
        .insert("https://open.feishu.cn".into(), fake.origin().to_string());
    config.delivery.poll_interval_ms = 50;
    config.delivery.first_backoff_ms = 20;
    config.delivery.max_backoff_ms = 100;
    config
}

/// A running host.
struct Host {
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

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

/// What a host that died right after a run's end leaves behind: an installation, a session
/// whose echo run ended with `reply` (stored, its outbox row pending) and nothing sent.
/// Returns the session id.
async fn a_run_ended_but_never_delivered(db: &Database, key: &str, reply: &str) -> String {
    let installations = db.installations(SecretCipher::from_key_str(key).unwrap());
    let installation = installations
        .create(
            &NewInstallation {
                channel: "lark".into(),
                routing_key: APP_ID.into(),
                name: "outbox".into(),
                config: BTreeMap::from([("app_id".into(), APP_ID.into())]),
                secrets: BTreeMap::from([
                    ("app_secret".into(), "s3cret".into()),
                    ("verification_token".into(), "t0ken".into()),
                ]),
                agent: "echo".into(),
                debounce_ms: 10,
                ..Default::default()
            },
            1_000,
        )
        .await
        .unwrap();
    let ingest = db.ingest();
    let session = ingest
        .ensure_session(
            &installation.id,
            &SessionKey::new("oc_outbox", ChatKind::Direct, None),
            "t",
            1_000,
        )
        .await
        .unwrap();
    let request = AppendRequest {
        session_id: session.id.clone(),
        installation_id: installation.id.clone(),
        body: "hello".into(),
        command_body: "hello".into(),
        channel_message_id: "om_outbox_1".into(),
        thread_id: None,
        sender_id: "ou_user".into(),
        turn: TurnKind::Plain,
        attachments: Vec::new(),
        debounce_ms: 10,
    };
    let AppendOutcome::Appended(appended) = ingest.append(&request, None, 1_000).await.unwrap()
    else {
        panic!("appended");
    };
    let (generation, _) = appended.flush.unwrap();
    db.claim_flush_early(&session.id, generation, 1_001)
        .await
        .unwrap()
        .expect("the window is claimed: the run is pending");
    let runs = db.runs();
    let claim = runs
        .acquire("echo", "host-that-dies", 1_002)
        .await
        .unwrap()
        .expect("the pending run");
    let finished = runs
        .finish_run(
            &session.id,
            &claim.run_id,
            &RunFinish::Completed {
                reply: Some(reply.into()),
                context_tokens: None,
            },
            1_003,
        )
        .await
        .unwrap()
        .expect("the run's owner ends it");
    assert!(finished.outbox_id.is_some());
    session.id
}

/// One more echo run in `session`: a user message, its window claimed, the run acquired.
/// Returns the run id.
async fn another_run(db: &Database, session: &str, n: i64) -> String {
    let ingest = db.ingest();
    let installation_id = ingest
        .get_session(session)
        .await
        .unwrap()
        .unwrap()
        .installation_id;
    let request = AppendRequest {
        session_id: session.into(),
        installation_id,
        body: format!("again {n}"),
        command_body: format!("again {n}"),
        channel_message_id: format!("om_again_{n}"),
        thread_id: None,
        sender_id: "ou_user".into(),
        turn: TurnKind::Plain,
        attachments: Vec::new(),
        debounce_ms: 10,
    };
    let now = 10_000 * n;
    let AppendOutcome::Appended(appended) = ingest.append(&request, None, now).await.unwrap()
    else {
        panic!("appended");
    };
    let (generation, _) = appended.flush.expect("the session is idle: a window");
    db.claim_flush_early(session, generation, now + 1)
        .await
        .unwrap()
        .expect("claimed");
    db.runs()
        .acquire("echo", "host", now + 2)
        .await
        .unwrap()
        .expect("the pending run")
        .run_id
}

/// The run's end claims its own outbox row for the replica that ends it (delivered at once,
/// no claim statement, no poll), unless an older row of the session is still pending: then
/// the row waits its turn for the delivery worker.
#[tokio::test]
async fn a_run_end_claims_its_row_unless_an_older_one_of_the_session_waits() {
    for t in db::test_databases().await {
        let name = t.name.clone();
        let key = SecretCipher::generate_key_hex();
        let session = a_run_ended_but_never_delivered(&t.db, &key, "first").await;
        let runs = t.db.runs();
        let reply = |text: &str| RunFinish::Completed {
            reply: Some(text.into()),
            context_tokens: None,
        };
        // Row 1 ("first") is still pending: the second reply must not overtake it.
        let run = another_run(&t.db, &session, 2).await;
        let second = runs
            .finish_run_leased(
                &session,
                &run,
                &reply("second"),
                20_010,
                Some(("me", 5_000)),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(second.outbox_id.is_some(), "{name}");
        assert!(
            second.outbox_row.is_none(),
            "{name}: waits behind the first"
        );

        // Both delivered in order; then a run end claims its row itself.
        let outbox = t.db.outbox();
        for expected in ["first", "second"] {
            let rows = outbox.claim_due("worker", 30_000, 5_000, 10).await.unwrap();
            assert_eq!(rows.len(), 1, "{name}: one row of the session at a time");
            assert_eq!(
                rows[0].content,
                OutboxContent::Reply {
                    text: expected.into()
                },
                "{name}"
            );
            assert!(
                outbox
                    .mark_delivered(rows[0].id, "worker", None, 30_001)
                    .await
                    .unwrap()
            );
        }
        let run = another_run(&t.db, &session, 4).await;
        let third = runs
            .finish_run_leased(&session, &run, &reply("third"), 40_010, Some(("me", 5_000)))
            .await
            .unwrap()
            .unwrap();
        let row = third.outbox_row.expect("claimed in the run's transaction");
        assert_eq!(row.attempts, 1, "{name}");
        assert_eq!(
            row.content,
            OutboxContent::Reply {
                text: "third".into()
            },
            "{name}"
        );
        // Leased: no other replica claims it until the lease runs out.
        assert!(
            outbox
                .claim_due("other", 40_011, 5_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let taken = outbox.claim_due("other", 45_011, 5_000, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "{name}: after the lease, any replica");
        assert!(
            !outbox
                .mark_delivered(row.id, "me", None, 45_012)
                .await
                .unwrap()
        );
    }
}

/// A slow attempt renews its lease: while the holder renews, no other replica claims the row
/// (two replicas sending one reply is what renewing prevents); a replica that does not hold
/// the row cannot renew it, and after the holder stops renewing the row is free again.
#[tokio::test]
async fn a_renewed_lease_keeps_other_replicas_off_the_row() {
    for t in db::test_databases().await {
        let name = t.name.clone();
        let key = SecretCipher::generate_key_hex();
        a_run_ended_but_never_delivered(&t.db, &key, "slow").await;
        let outbox = t.db.outbox();
        let rows = outbox.claim_due("slow", 30_000, 1_500, 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{name}");
        let id = rows[0].id;
        // The holder renews every 500 ms for 4.5 s of the store's clock, well past its first
        // lease; the other replica polls in between and finds nothing.
        for step in 1..=9 {
            let now = 30_000 + step * 500;
            assert!(
                outbox.renew_lease(id, "slow", now, 1_500).await.unwrap(),
                "{name}: the holder renews at {now}"
            );
            assert!(
                outbox
                    .claim_due("other", now + 1, 1_500, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "{name}: a renewed row is not due for another replica at {}",
                now + 1
            );
            assert!(
                !outbox
                    .renew_lease(id, "other", now + 2, 1_500)
                    .await
                    .unwrap(),
                "{name}: only the holder renews"
            );
        }
        // The holder stops (a crash): once the last renewal runs out, another replica takes it.
        let taken = outbox
            .claim_due("other", 34_500 + 1_500, 1_500, 10)
            .await
            .unwrap();
        assert_eq!(
            taken.len(),
            1,
            "{name}: free after the last renewal ran out"
        );
        assert!(
            !outbox.renew_lease(id, "slow", 36_001, 1_500).await.unwrap(),
            "{name}: the old holder learns it lost the row"
        );
        assert!(
            outbox
                .mark_delivered(id, "other", None, 36_002)
                .await
                .unwrap()
        );
        assert!(
            !outbox
                .renew_lease(id, "other", 36_003, 1_500)
                .await
                .unwrap(),
            "{name}: a delivered row is not renewed"
        );
    }
}

/// Bodies of the messages the fake posted (sends and replies), with their uuids.
fn posted(fake: &FakeLark) -> Vec<(String, Option<String>)> {
    fake.posted_messages()
        .into_iter()
        .map(|r| {
            let content: Value = serde_json::from_str(r.body["content"].as_str().unwrap_or("{}"))
                .unwrap_or_default();
            (
                content["text"].as_str().unwrap_or_default().to_string(),
                r.body["uuid"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stored_before_a_crash_is_delivered_once_by_the_next_host() {
    for t in db::test_databases().await {
        let name = t.name.clone();
        let key = SecretCipher::generate_key_hex();
        let fake = FakeLark::start().await;
        let session = a_run_ended_but_never_delivered(&t.db, &key, "said before the crash").await;
        assert!(fake.sent_messages().is_empty(), "{name}");

        let config = config(&t.url, &key, &fake);
        let host = Host::start(&config).await;
        let fake_ref = &fake;
        let sent = eventually(&format!("{name}: the reply"), || async move {
            let posted = posted(fake_ref);
            (!posted.is_empty()).then_some(posted)
        })
        .await;
        assert_eq!(sent.len(), 1, "{name}: {sent:?}");
        assert_eq!(sent[0].0, "said before the crash", "{name}");
        assert!(
            sent[0]
                .1
                .as_deref()
                .is_some_and(|uuid| uuid.ends_with("-0")),
            "{name}: sent with the row's idempotency key: {sent:?}"
        );
        // Marked delivered right after the channel answered.
        let (host_ref, session_ref) = (&host, &session);
        let row = eventually(&format!("{name}: the row marked"), || async move {
            let (status, rows) = host_ref
                .get(&format!("/api/outbox?session={session_ref}"))
                .await;
            assert_eq!(status, 200, "{rows}");
            let rows: Value = serde_json::from_str(&rows).unwrap();
            (rows[0]["state"] == "delivered").then(|| rows[0].clone())
        })
        .await;
        assert_eq!(row["attempts"], 1, "{name}: {row}");
        assert_eq!(row["content"]["text"], "said before the crash", "{name}");
        host.stop().await;

        // Another start finds nothing left to send.
        let host = Host::start(&config).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(posted(&fake).len(), 1, "{name}: delivered once");
        host.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_keeps_failing_exhausts_the_budget_visibly_and_a_retry_delivers() {
    for t in db::test_databases().await {
        let name = t.name.clone();
        let key = SecretCipher::generate_key_hex();
        let fake = FakeLark::start().await;
        fake.set_failure(Route::Send, Failure::ServerError);
        let session = a_run_ended_but_never_delivered(&t.db, &key, "patience").await;

        let mut config = config(&t.url, &key, &fake);
        config.delivery.attempts = 3;
        let host = Host::start(&config).await;
        let host_ref = &host;
        let failed = eventually(&format!("{name}: the row given up"), || async move {
            let (_, rows) = host_ref.get("/api/outbox?state=failed").await;
            let rows: Value = serde_json::from_str(&rows).unwrap();
            rows.as_array().filter(|r| !r.is_empty()).cloned()
        })
        .await;
        assert_eq!(failed.len(), 1, "{name}: {failed:?}");
        let row = &failed[0];
        assert_eq!(row["session_id"], session.as_str(), "{name}");
        assert_eq!(row["attempts"], 3, "{name}: {row}");
        assert!(
            row["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("gave up after 3 attempts")),
            "{name}: {row}"
        );
        // Every attempt carried the same uuid; none posted.
        let uuids: Vec<String> = fake
            .sent_messages()
            .iter()
            .map(|r| r.body["uuid"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(uuids.len(), 3, "{name}: {uuids:?}");
        assert!(
            uuids.iter().all(|u| *u == uuids[0] && !u.is_empty()),
            "{name}: {uuids:?}"
        );
        assert!(fake.posted_messages().is_empty(), "{name}");
        let (_, metrics) = host.get("/metrics").await;
        for expected in [
            "switchboard_outbox_deliveries_total{outcome=\"failed\"} 1",
            "switchboard_outbox_deliveries_total{outcome=\"retried\"} 2",
        ] {
            assert!(
                metrics.contains(expected),
                "{name}: {expected} in\n{metrics}"
            );
        }

        // The operator fixes the channel and retries the row.
        fake.clear_failures();
        let id = row["id"].as_i64().unwrap();
        let (status, answer) = host.post(&format!("/api/outbox/{id}/retry")).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let fake_ref = &fake;
        eventually(
            &format!("{name}: delivered after the retry"),
            || async move { (posted(fake_ref).len() == 1).then_some(()) },
        )
        .await;
        assert_eq!(posted(&fake)[0].0, "patience", "{name}");
        let (status, answer) = host.post(&format!("/api/outbox/{id}/retry")).await;
        assert_eq!(
            status, 409,
            "{name}: only failed rows are retried: {answer}"
        );
        host.stop().await;
    }
}
