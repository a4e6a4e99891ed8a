//! Retention (issue 14) on SQLite and PostgreSQL: one pass deletes exactly the old dedup claims,
//! old audit rows, used and long-expired binding tokens and expired kv rows — never a fresh or
//! live row, nor a claim still in flight —, bounds every statement by the batch size, counts
//! what it deleted in `/metrics`, and a second pass finds nothing. The app runs the task on its
//! own (and not at all when disabled). Every test is bounded in time.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;
#[path = "support/time.rs"]
mod time;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchboard::app::App;
use switchboard::config::Config;
use switchboard::domain::{KvQuota, KvScope};
use switchboard::metrics::Metrics;
use switchboard::retention::{Retention, RetentionSettings};
use switchboard::store::{
    AuditEntry, Backend, NewOutboxRow, OutboxContent, OutboxTarget, RetainedTable,
};

const NOW: i64 = 1_750_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

const ROOMY: KvQuota = KvQuota {
    max_keys: 1_000,
    max_bytes: 1 << 20,
    max_value_bytes: 1 << 16,
};

/// Runs a test body with a deadline.
async fn bounded<F: Future<Output = ()>>(seconds: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(seconds), body)
        .await
        .expect("the test finished within its deadline");
}

/// The first column of `sql` for every row, as text, read on a connection of its own.
async fn strings(t: &db::TestDb, sql: &str) -> Vec<String> {
    match t.db.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&t.url).await.unwrap();
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    }
}

/// How many rows `table` holds.
async fn count(t: &db::TestDb, table: &str) -> usize {
    strings(t, &format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
        .await
        .first()
        .map(|n| n.parse().unwrap())
        .unwrap()
}

fn audit(reason: &str) -> AuditEntry {
    AuditEntry {
        installation_id: Some("inst-1".into()),
        channel: "lark".into(),
        chat_id: "oc_chat".into(),
        event_type: "im.message.receive_v1".into(),
        event_id: String::new(),
        message_id: String::new(),
        drop_reason: reason.into(),
    }
}

/// The value of `switchboard_retention_pruned_rows_total{table=…}` in a rendering.
fn pruned_metric(text: &str, table: &str) -> Option<u64> {
    let prefix = format!("switchboard_retention_pruned_rows_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|value| value.trim().parse().unwrap())
}

fn settings(batch_size: u32) -> RetentionSettings {
    RetentionSettings {
        batch_size,
        ..RetentionSettings::default()
    }
}

#[tokio::test]
async fn a_pass_prunes_exactly_the_old_used_and_expired_rows_and_a_second_pass_nothing() {
    bounded(120, async {
        for t in db::test_databases().await {
            let name = t.name.as_str();
            let ingest = t.db.ingest();

            // Dedup (7 days): processed and dead in-flight claims older than that go; a claim
            // exactly 7 days old, a fresh processed one, a live one in flight and an old claim
            // taken over a moment ago stay.
            for (id, at, mark) in [
                ("old-done", NOW - 8 * DAY, true),
                ("old-dead-claim", NOW - 8 * DAY, false),
                ("edge", NOW - 7 * DAY, true),
                ("fresh-done", NOW - 6 * DAY, true),
                ("reclaimed", NOW - 8 * DAY, false),
            ] {
                let claim = ingest.claim_dedup("inst-1", id, at).await.unwrap().unwrap();
                if mark {
                    assert!(ingest.mark_dedup(&claim, at + 1_000).await.unwrap());
                }
            }
            let live = ingest
                .claim_dedup("inst-1", "in-flight", NOW - 30_000)
                .await
                .unwrap()
                .unwrap();
            let reclaimed = ingest
                .claim_dedup("inst-1", "reclaimed", NOW - 10_000)
                .await
                .unwrap()
                .expect("a claim in flight for days is taken over");

            // Audit (30 days).
            for _ in 0..3 {
                ingest
                    .insert_audit(&audit("old"), NOW - 31 * DAY)
                    .await
                    .unwrap();
            }
            for _ in 0..2 {
                ingest
                    .insert_audit(&audit("fresh"), NOW - 29 * DAY)
                    .await
                    .unwrap();
            }

            // Binding tokens: used ones go at once, unused ones a day after they expired.
            let long_expired = ingest
                .mint_binding_token("inst-1", "ou_a", NOW - 3 * DAY)
                .await
                .unwrap();
            let used = ingest
                .mint_binding_token("inst-1", "ou_b", NOW - 10 * MINUTE)
                .await
                .unwrap();
            ingest
                .redeem_binding_token(&used, "user-b", &[], NOW - 5 * MINUTE)
                .await
                .unwrap();
            let _recently_expired = ingest
                .mint_binding_token("inst-1", "ou_c", NOW - 2 * HOUR)
                .await
                .unwrap();
            let live_token = ingest
                .mint_binding_token("inst-1", "ou_d", NOW - 5 * MINUTE)
                .await
                .unwrap();
            assert_ne!(long_expired, live_token);

            // Kv: expired rows (at or before now) go; later and eternal ones stay. (A write
            // drops its own scope's expired rows, so the long-expired one has a scope of its own.)
            let kv = t.db.kv();
            let scope = KvScope::new("lark", "inst-1");
            let other = KvScope::new("lark", "inst-2");
            kv.set(&other, "gone", b"x", Some(NOW - 1_000), NOW - 2_000, ROOMY)
                .await
                .unwrap();
            kv.set(&scope, "at-now", b"x", Some(NOW), NOW - 10, ROOMY)
                .await
                .unwrap();
            kv.set(&scope, "later", b"x", Some(NOW + MINUTE), NOW - 10, ROOMY)
                .await
                .unwrap();
            kv.set(&scope, "forever", b"x", None, NOW - 10, ROOMY)
                .await
                .unwrap();

            // Outbox (7 days): rows delivered before that go; recently delivered, failed and
            // pending rows stay (a failed row waits for an operator's retry).
            let outbox = t.db.outbox();
            let target = OutboxTarget {
                chat_id: "oc_1".into(),
                chat_type: "direct".into(),
                thread_id: None,
                reply_to: None,
                in_thread: false,
            };
            let mut ids = Vec::new();
            for session in ["s-old", "s-recent", "s-failed", "s-pending"] {
                let content = OutboxContent::Reply {
                    text: session.into(),
                };
                let row = NewOutboxRow {
                    installation_id: "inst-1",
                    session_id: session,
                    run_id: None,
                    content: &content,
                    target: &target,
                };
                ids.push(outbox.enqueue(&row, NOW - 40 * DAY).await.unwrap());
            }
            let claimed = outbox
                .claim_due("replica", NOW - 40 * DAY, MINUTE, 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 4, "{name}");
            assert!(
                outbox
                    .mark_delivered(ids[0], "replica", None, NOW - 8 * DAY)
                    .await
                    .unwrap()
            );
            assert!(
                outbox
                    .mark_delivered(ids[1], "replica", None, NOW - DAY)
                    .await
                    .unwrap()
            );
            assert!(
                outbox
                    .mark_failed(ids[2], "replica", "gone", NOW - 30 * DAY)
                    .await
                    .unwrap()
            );
            assert!(
                outbox
                    .reschedule(ids[3], "replica", NOW + MINUTE, "later")
                    .await
                    .unwrap()
            );

            let clock = time::ManualClock::new(NOW);
            let metrics = Arc::new(Metrics::default());
            let retention =
                Retention::new(&t.db, clock.clone(), settings(1_000)).with_metrics(metrics.clone());
            for table in RetainedTable::ALL {
                assert_eq!(
                    pruned_metric(&metrics.render(), table.as_str()),
                    Some(0),
                    "{name}: every table's series shows before the first pass"
                );
            }

            let report = retention.run_pass().await.unwrap();
            assert_eq!(report.rows(RetainedTable::Dedup), 2, "{name}: {report:?}");
            assert_eq!(report.rows(RetainedTable::Audit), 3, "{name}: {report:?}");
            assert_eq!(
                report.rows(RetainedTable::BindingTokens),
                2,
                "{name}: {report:?}"
            );
            assert_eq!(report.rows(RetainedTable::Kv), 2, "{name}: {report:?}");
            assert_eq!(report.rows(RetainedTable::Outbox), 1, "{name}: {report:?}");
            assert_eq!(report.total_rows(), 10, "{name}");
            assert_eq!(
                strings(&t, "SELECT session_id FROM outbox ORDER BY id").await,
                ["s-recent", "s-failed", "s-pending"],
                "{name}: outbox rows kept"
            );

            assert_eq!(
                strings(
                    &t,
                    "SELECT message_id FROM inbound_dedup ORDER BY message_id"
                )
                .await,
                ["edge", "fresh-done", "in-flight", "reclaimed"],
                "{name}: dedup rows kept"
            );
            assert_eq!(
                strings(&t, "SELECT drop_reason FROM inbound_audit ORDER BY id").await,
                ["fresh", "fresh"],
                "{name}: audit rows kept"
            );
            assert_eq!(
                strings(
                    &t,
                    "SELECT channel_user_id FROM binding_tokens ORDER BY channel_user_id"
                )
                .await,
                ["ou_c", "ou_d"],
                "{name}: binding tokens kept"
            );
            assert_eq!(
                strings(&t, "SELECT key FROM plugin_kv ORDER BY key").await,
                ["forever", "later"],
                "{name}: kv rows kept"
            );

            let text = metrics.render();
            for (table, rows) in [
                ("inbound_dedup", 2),
                ("inbound_audit", 3),
                ("binding_tokens", 2),
                ("plugin_kv", 2),
                ("outbox", 1),
            ] {
                assert_eq!(
                    pruned_metric(&text, table),
                    Some(rows),
                    "{name}: {table} in:\n{text}"
                );
            }
            assert!(
                text.contains("# TYPE switchboard_retention_pruned_rows counter"),
                "{name}: {text}"
            );

            // Nothing else is due at the same time.
            let again = retention.run_pass().await.unwrap();
            assert_eq!(again.total_rows(), 0, "{name}: {again:?}");
            assert_eq!(
                pruned_metric(&metrics.render(), "inbound_dedup"),
                Some(2),
                "{name}: the metric counts rows, not passes"
            );

            // The kept claims in flight are still live: their Marks land.
            assert!(ingest.mark_dedup(&live, NOW).await.unwrap(), "{name}");
            assert!(ingest.mark_dedup(&reclaimed, NOW).await.unwrap(), "{name}");
            // The live binding link still works; once used, it goes at the next pass.
            ingest
                .redeem_binding_token(&live_token, "user-d", &[], NOW)
                .await
                .unwrap();
            let third = retention.run_pass().await.unwrap();
            assert_eq!(
                third.rows(RetainedTable::BindingTokens),
                1,
                "{name}: {third:?}"
            );
            assert_eq!(third.total_rows(), 1, "{name}: {third:?}");

            // Later the kept rows age out in turn.
            clock.set(NOW + 31 * DAY);
            let later = retention.run_pass().await.unwrap();
            assert_eq!(later.rows(RetainedTable::Dedup), 4, "{name}: {later:?}");
            assert_eq!(later.rows(RetainedTable::Audit), 2, "{name}: {later:?}");
            assert_eq!(
                later.rows(RetainedTable::BindingTokens),
                1,
                "{name}: {later:?}"
            );
            assert_eq!(later.rows(RetainedTable::Kv), 1, "{name}: {later:?}");
            assert_eq!(count(&t, "plugin_kv").await, 1, "{name}: forever stays");
        }
    })
    .await;
}

#[tokio::test]
async fn batches_bound_every_statement() {
    bounded(120, async {
        for t in db::test_databases().await {
            let name = t.name.as_str();
            let ingest = t.db.ingest();
            for i in 0..35 {
                let id = format!("m{i}");
                let claim = ingest
                    .claim_dedup("inst-1", &id, NOW - 10 * DAY)
                    .await
                    .unwrap()
                    .unwrap();
                ingest.mark_dedup(&claim, NOW - 10 * DAY).await.unwrap();
            }
            for _ in 0..30 {
                ingest
                    .insert_audit(&audit("old"), NOW - 40 * DAY)
                    .await
                    .unwrap();
            }
            let kv = t.db.kv();
            let scope = KvScope::new("lark", "inst-1");
            for i in 0..7 {
                kv.set(
                    &scope,
                    &format!("k{i}"),
                    b"v",
                    Some(NOW - 1),
                    NOW - 2,
                    ROOMY,
                )
                .await
                .unwrap();
            }

            let metrics = Arc::new(Metrics::default());
            let retention = Retention::new(&t.db, time::ManualClock::new(NOW), settings(10))
                .with_metrics(metrics.clone());
            let report = retention.run_pass().await.unwrap();
            // 35 rows: 10 + 10 + 10 + 5; 30 rows: 10 + 10 + 10 + an empty batch; 7: one batch.
            assert_eq!(report.rows(RetainedTable::Dedup), 35, "{name}: {report:?}");
            assert_eq!(report.batches(RetainedTable::Dedup), 4, "{name}");
            assert_eq!(report.rows(RetainedTable::Audit), 30, "{name}");
            assert_eq!(report.batches(RetainedTable::Audit), 4, "{name}");
            assert_eq!(report.rows(RetainedTable::Kv), 7, "{name}");
            assert_eq!(report.batches(RetainedTable::Kv), 1, "{name}");
            assert_eq!(report.batches(RetainedTable::BindingTokens), 1, "{name}");
            assert_eq!(count(&t, "inbound_dedup").await, 0, "{name}");
            assert_eq!(count(&t, "inbound_audit").await, 0, "{name}");
            assert_eq!(count(&t, "plugin_kv").await, 0, "{name}");
            let text = metrics.render();
            assert_eq!(pruned_metric(&text, "inbound_dedup"), Some(35), "{text}");
            assert_eq!(pruned_metric(&text, "inbound_audit"), Some(30), "{text}");
            assert_eq!(pruned_metric(&text, "plugin_kv"), Some(7), "{text}");

            let again = retention.run_pass().await.unwrap();
            assert_eq!(again.total_rows(), 0, "{name}: {again:?}");
            assert!(
                RetainedTable::ALL
                    .iter()
                    .all(|&table| again.batches(table) == 1),
                "{name}: one short statement per table: {again:?}"
            );
        }
    })
    .await;
}

/// A host on `url` whose retention task starts at once and runs every second.
fn config(url: &str, enabled: bool) -> Config {
    let mut config = Config::default();
    config.database.url = url.to_string();
    config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
    config.plugins.cache_dir = Some(support::shared_cache_dir());
    config.connections.enabled = false;
    config.retention.enabled = enabled;
    config.retention.interval_s = 1;
    config.retention.first_run_after_s = 0;
    config.retention.batch_size = 2;
    config
}

struct Serving {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(config: &Config) -> Serving {
    let app = App::from_config(config).await.expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    Serving { base, stop, task }
}

impl Serving {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().expect("clean shutdown");
    }
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn the_serving_app_prunes_on_its_own() {
    bounded(120, async {
        for t in db::test_databases().await {
            let name = t.name.as_str();
            let ingest = t.db.ingest();
            let now = system_now();
            for _ in 0..5 {
                ingest
                    .insert_audit(&audit("old"), now - 40 * DAY)
                    .await
                    .unwrap();
            }
            ingest
                .insert_audit(&audit("fresh"), now - DAY)
                .await
                .unwrap();
            ingest
                .claim_dedup("inst-1", "old", now - 10 * DAY)
                .await
                .unwrap()
                .unwrap();

            let server = serve(&config(&t.url, true)).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if count(&t, "inbound_audit").await == 1 && count(&t, "inbound_dedup").await == 0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: the task pruned nothing within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                strings(&t, "SELECT drop_reason FROM inbound_audit").await,
                ["fresh"],
                "{name}"
            );
            let text = reqwest::get(format!("{}/metrics", server.base))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(pruned_metric(&text, "inbound_audit"), Some(5), "{text}");
            assert_eq!(pruned_metric(&text, "inbound_dedup"), Some(1), "{text}");
            // Rows that age out while the host runs go at a later pass.
            ingest
                .insert_audit(&audit("old"), system_now() - 40 * DAY)
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while count(&t, "inbound_audit").await != 1 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: no later pass within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::timeout(Duration::from_secs(30), server.shut_down())
                .await
                .expect("shutdown within 30 s");
        }
    })
    .await;
}

#[tokio::test]
async fn a_disabled_task_prunes_nothing_and_bad_settings_stop_the_build() {
    bounded(120, async {
        let t = db::sqlite_file_db().await;
        t.db.ingest()
            .insert_audit(&audit("old"), system_now() - 400 * DAY)
            .await
            .unwrap();
        let server = serve(&config(&t.url, false)).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(count(&t, "inbound_audit").await, 1);
        let text = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(pruned_metric(&text, "inbound_audit"), None, "{text}");
        server.shut_down().await;

        let mut bad = config(&t.url, true);
        bad.retention.dedup_days = 0;
        let err = match App::from_config(&bad).await {
            Ok(_) => panic!("dedup_days = 0 is refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("[retention]") && err.contains("retention.dedup_days"),
            "{err}"
        );
    })
    .await;
}

/// Runs `sql` on a connection of its own.
async fn execute(t: &db::TestDb, sql: &str) {
    match t.db.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&t.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// The value of `switchboard_retention_blob_files_deleted_total` in a rendering.
fn blob_files_metric(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("switchboard_retention_blob_files_deleted_total "))
        .map(|value| value.trim().parse().unwrap())
}

/// Blobs (30 days by default): downloaded and failed rows older than that, and those of a
/// session that no longer exists, go with the files no remaining row names; a live blob, a file
/// an old and a live row share, and a pending download stay; the installation's stored bytes
/// (its cap's measure) shrink with the rows; an old file no row names and a crash's temporary
/// are swept, a fresh unnamed file is not. A second pass deletes nothing.
#[tokio::test]
async fn expired_and_orphaned_blobs_go_with_their_files_and_live_ones_stay() {
    use switchboard::blobs::BlobFiles;
    bounded(120, async {
        for t in db::test_databases().await {
            let name = t.name.as_str();
            let dir = tempfile::tempdir().unwrap();
            let files = BlobFiles::new(dir.path().join("blobs"));
            let old = files.put(b"old bytes").unwrap();
            let live = files.put(b"live bytes!").unwrap();
            let shared = files.put(b"shared").unwrap();
            let orphan = files.put(b"orphaned session").unwrap();
            let stray = files.put(b"recorded nowhere").unwrap();
            let fresh_stray = files.put(b"being recorded").unwrap();
            let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7_200);
            let age = |path: &std::path::Path| {
                std::fs::File::options()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_modified(two_hours_ago)
                    .unwrap();
            };
            age(&files.path_of(&stray).unwrap());
            let temporary = files.path_of(&stray).unwrap().with_file_name(".tmp-crashed");
            std::fs::write(&temporary, b"half").unwrap();
            age(&temporary);

            execute(
                &t,
                &format!(
                    "INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type,
                         title, created_at_ms, updated_at_ms)
                     VALUES ('s-live', 'inst-1', 'direct:oc_1', 'oc_1', 'direct', 'chat', {NOW}, {NOW})"
                ),
            )
            .await;
            // (id, session, state, digest, size, created)
            type BlobSeed<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, i64, i64);
            let rows: [BlobSeed<'_>; 7] = [
                ("b-old", "s-live", "stored", Some(old.as_str()), 9, NOW - 40 * DAY),
                ("b-live", "s-live", "stored", Some(live.as_str()), 11, NOW - DAY),
                ("b-failed-old", "s-live", "failed", None, 0, NOW - 40 * DAY),
                ("b-orphan", "s-gone", "stored", Some(orphan.as_str()), 16, NOW - DAY),
                ("b-shared-old", "s-live", "stored", Some(shared.as_str()), 6, NOW - 40 * DAY),
                ("b-shared-live", "s-live", "stored", Some(shared.as_str()), 6, NOW - DAY),
                ("b-pending-old", "s-live", "pending", None, 0, NOW - 40 * DAY),
            ];
            for (id, session, state, sha256, size, created) in rows {
                let (sha256, size) = match sha256 {
                    Some(sha256) => (format!("'{sha256}'"), size.to_string()),
                    None => ("NULL".to_string(), "NULL".to_string()),
                };
                execute(
                    &t,
                    &format!(
                        "INSERT INTO blobs (id, installation_id, session_id, channel_message_id,
                             attachment_ref, kind, state, next_attempt_at_ms, size, sha256,
                             created_at_ms)
                         VALUES ('{id}', 'inst-1', '{session}', 'om_{id}', 'img_{id}', 'image',
                             '{state}', {created}, {size}, {sha256}, {created})"
                    ),
                )
                .await;
            }
            let blobs = t.db.blobs();
            assert_eq!(
                blobs.stored_bytes("inst-1").await.unwrap(),
                9 + 11 + 16 + 6 + 6,
                "{name}"
            );

            let metrics = Arc::new(Metrics::default());
            let retention = Retention::new(&t.db, time::ManualClock::new(NOW), settings(2))
                .with_metrics(metrics.clone())
                .with_blobs(&t.db, files.clone());
            assert_eq!(pruned_metric(&metrics.render(), "blobs"), Some(0), "{name}");
            let report = retention.run_pass().await.unwrap();
            assert_eq!(report.rows(RetainedTable::Blobs), 4, "{name}: {report:?}");
            assert_eq!(report.batches(RetainedTable::Blobs), 3, "{name}: 2 + 2 + 0");
            assert_eq!(
                strings(&t, "SELECT id FROM blobs ORDER BY id").await,
                ["b-live", "b-pending-old", "b-shared-live"],
                "{name}"
            );
            let exists = |sha256: &str| files.path_of(sha256).unwrap().exists();
            assert!(!exists(&old), "{name}: the expired blob's file went");
            assert!(!exists(&orphan), "{name}: the deleted session's file went");
            assert!(exists(&live), "{name}: a live blob's file stays");
            assert!(exists(&shared), "{name}: a file a live row names stays");
            assert!(!exists(&stray), "{name}: an old file no row names went");
            assert!(exists(&fresh_stray), "{name}: a fresh one may be a download in flight");
            assert!(!temporary.exists(), "{name}: the crash's temporary went");
            assert_eq!(report.blob_files, 4, "{name}: {report:?}");
            assert_eq!(
                blobs.stored_bytes("inst-1").await.unwrap(),
                11 + 6,
                "{name}: the installation's cap counts what is left"
            );
            let text = metrics.render();
            assert_eq!(pruned_metric(&text, "blobs"), Some(4), "{text}");
            assert_eq!(blob_files_metric(&text), Some(4), "{text}");

            let again = retention.run_pass().await.unwrap();
            assert_eq!(again.rows(RetainedTable::Blobs), 0, "{name}: {again:?}");
            assert_eq!(again.blob_files, 0, "{name}: {again:?}");
        }
    })
    .await;
}
