//! Migration 0008 (channel-neutral schema, contract 0.2) on a database written by 0.1, on SQLite
//! and PostgreSQL: a database migrated only to version 7 is filled with 0.1-shaped rows through
//! raw SQL, then the host's own migrator runs. Every row of every table survives with identical
//! values in every column that exists before and after; the bot ids move into the installation's
//! config JSON (never overwriting a key it already has), a binding's union id into alt_ids; a
//! 'channel' session and an 'action' message with meta can be stored; message ids keep
//! increasing; a second run changes nothing. Every test is bounded in time.

#[path = "support/db.rs"]
mod db;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::Row;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use switchboard::store::Database;

/// The last migration a 0.1 host shipped.
const V01_LAST: i64 = 7;

/// Runs a test body with a deadline.
async fn bounded<F: Future<Output = ()>>(seconds: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(seconds), body)
        .await
        .expect("the test finished within its deadline");
}

/// The migration files of `dir` (`sqlite` or `postgres`) up to `upto`, read from the workspace:
/// the same text the host embeds, so the checksums sqlx records match the host's migrator.
#[derive(Debug, Clone)]
struct FilesUpTo {
    dir: &'static str,
    upto: i64,
}

impl MigrationSource<'static> for FilesUpTo {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(self.dir);
            let mut migrations = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                let name = entry?.file_name().into_string().map_err(|_| "file name")?;
                let Some((version, description)) = name
                    .strip_suffix(".sql")
                    .and_then(|stem| stem.split_once('_'))
                else {
                    continue;
                };
                let version: i64 = version.parse()?;
                if version > self.upto {
                    continue;
                }
                let sql = std::fs::read_to_string(path.join(&name))?;
                migrations.push(Migration::new(
                    version,
                    Cow::Owned(description.to_owned()),
                    MigrationType::Simple,
                    Cow::Owned(sql),
                    false,
                ));
            }
            migrations.sort_by_key(|m| m.version);
            Ok(migrations)
        })
    }
}

/// Rows as text: every selected value cast to TEXT by the query, NULL as `None`.
type Rows = Vec<Vec<Option<String>>>;

/// A raw connection pool to the test database, next to the host's own.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Raw {
    fn name(&self) -> &'static str {
        match self {
            Raw::Sqlite(_) => "sqlite",
            Raw::Postgres(_) => "postgres",
        }
    }

    /// Applies the migrations up to `upto` only (what a 0.1 host left behind).
    async fn migrate_up_to(&self, upto: i64) {
        let dir = self.name();
        let migrator = Migrator::new(FilesUpTo { dir, upto })
            .await
            .expect("reading the migration files");
        assert_eq!(
            migrator.iter().map(|m| m.version).max(),
            Some(upto),
            "{dir}: migrations 1..={upto} found"
        );
        match self {
            Raw::Sqlite(pool) => migrator.run(pool).await,
            Raw::Postgres(pool) => migrator.run(pool).await,
        }
        .unwrap_or_else(|e| panic!("{dir}: migrating up to {upto}: {e}"));
    }

    /// Runs one or more statements.
    async fn exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Raw::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Raw::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
    }

    /// Runs `sql`, which must select only TEXT values.
    async fn rows(&self, sql: &str) -> Rows {
        let name = self.name();
        match self {
            Raw::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {sql}: {e}"))
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.try_get::<Option<String>, _>(i).unwrap())
                        .collect()
                })
                .collect(),
            Raw::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {sql}: {e}"))
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.try_get::<Option<String>, _>(i).unwrap())
                        .collect()
                })
                .collect(),
        }
    }

    /// The first column of every row; NULL as "NULL".
    async fn column(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .into_iter()
            .map(|row| row[0].clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    /// The one value `sql` selects.
    async fn one(&self, sql: &str) -> String {
        let values = self.column(sql).await;
        assert_eq!(values.len(), 1, "{}: {sql}: one row", self.name());
        values[0].clone()
    }

    /// The application's tables (not sqlx's bookkeeping nor SQLite's own).
    async fn tables(&self) -> Vec<String> {
        self.column(match self {
            Raw::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name"
            }
            Raw::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
                 AND table_name <> '_sqlx_migrations' ORDER BY table_name"
            }
        })
        .await
    }

    /// `table`'s columns in order.
    async fn columns(&self, table: &str) -> Vec<String> {
        self.column(&match self {
            Raw::Sqlite(_) => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            Raw::Postgres(_) => format!(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{table}' \
                 ORDER BY ordinal_position"
            ),
        })
        .await
    }

    /// Every index name, with its table.
    async fn indexes(&self) -> Vec<String> {
        self.column(match self {
            Raw::Sqlite(_) => {
                "SELECT tbl_name || '.' || name FROM sqlite_master WHERE type = 'index' \
                 ORDER BY 1"
            }
            Raw::Postgres(_) => {
                "SELECT (tablename || '.' || indexname)::text FROM pg_indexes \
                 WHERE schemaname = 'public' ORDER BY 1"
            }
        })
        .await
    }

    /// The whole schema as text (tables, columns, constraints, indexes).
    async fn schema(&self) -> Rows {
        self.rows(match self {
            Raw::Sqlite(_) => "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY 1, 2",
            Raw::Postgres(_) => {
                "SELECT 'column', table_name::text, column_name::text, \
                        (data_type || ' ' || is_nullable || ' ' || \
                         COALESCE(column_default, '-'))::text \
                 FROM information_schema.columns WHERE table_schema = 'public' \
                 UNION ALL \
                 SELECT 'constraint', conrelid::regclass::text, conname::text, \
                        pg_get_constraintdef(oid) \
                 FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
                 UNION ALL \
                 SELECT 'index', tablename::text, indexname::text, indexdef \
                 FROM pg_indexes WHERE schemaname = 'public' \
                 ORDER BY 1, 2, 3"
            }
        })
        .await
    }

    /// `columns` of every row of `table`, cast to text, sorted.
    async fn table_rows(&self, table: &str, columns: &[String]) -> Rows {
        let select = columns
            .iter()
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut rows = self.rows(&format!("SELECT {select} FROM {table}")).await;
        rows.sort();
        rows
    }

    /// Every table with its columns and (sorted) rows.
    async fn snapshot(&self) -> BTreeMap<String, (Vec<String>, Rows)> {
        let mut out = BTreeMap::new();
        for table in self.tables().await {
            let columns = self.columns(&table).await;
            let rows = self.table_rows(&table, &columns).await;
            out.insert(table, (columns, rows));
        }
        out
    }

    /// sqlx's record of applied migrations, everything but the timings.
    async fn applied(&self) -> Rows {
        self.rows(
            "SELECT CAST(version AS TEXT), description, CAST(success AS TEXT), \
                    CAST(installed_on AS TEXT) \
             FROM _sqlx_migrations ORDER BY version",
        )
        .await
    }

    async fn close(&self) {
        match self {
            Raw::Sqlite(pool) => pool.close().await,
            Raw::Postgres(pool) => pool.close().await,
        }
    }
}

/// A byte string literal for a BLOB / BYTEA column holding `hex`.
fn bytes_literal(raw: &Raw, hex: &str) -> String {
    match raw {
        Raw::Sqlite(_) => format!("X'{hex}'"),
        Raw::Postgres(_) => format!("'\\x{hex}'::bytea"),
    }
}

/// What a 0.1 host could have stored: one or more rows in every table, with the channel-specific
/// columns 0008 removes filled in, NULL and empty.
fn v01_rows(raw: &Raw) -> String {
    let secrets = bytes_literal(raw, "7365616c6564"); // "sealed"
    let kv_value = bytes_literal(raw, "76616c7565"); // "value"
    format!(
        r#"
INSERT INTO plugin_kv (plugin, installation, key, value, expires_at_ms, updated_at_ms)
VALUES ('lark', 'inst-a', 'token', {kv_value}, 1700000900000, 1700000000000);

INSERT INTO installations (id, channel, routing_key, name, config, secrets, bot_open_id,
    bot_union_id, access_policy, status, agent, debounce_ms, lease_token, lease_expires_at_ms,
    created_at_ms, updated_at_ms)
VALUES
    ('inst-a', 'lark', 'cli_a', 'Alpha', '{{"region":"cn"}}', {secrets}, 'ou_bot_a',
     'on_bot_a', 'bound', 'active', 'worker', 1500, 'lease-a', 1700000060000,
     1700000000000, 1700000000100),
    ('inst-b', 'lark', 'cli_b', 'Beta', '{{"bot_open_id":"ou_from_config","note":"x"}}', NULL,
     'ou_column_b', NULL, 'open', 'revoked', 'echo', 3000, NULL, NULL,
     1700000000200, 1700000000300),
    ('inst-c', 'lark', 'cli_c', '', '{{}}', NULL, NULL, '', 'open', 'active', 'echo', 3000,
     NULL, NULL, 1700000000400, 1700000000500);

INSERT INTO user_bindings (installation_id, channel_user_id, user_ref, union_id, bound_at_ms)
VALUES
    ('inst-a', 'ou_alice', 'alice', 'on_alice', 1700000001000),
    ('inst-a', 'ou_bob', 'bob', NULL, 1700000001100),
    ('inst-b', 'ou_carol', 'carol', '', 1700000001200);

INSERT INTO binding_tokens (token_hash, installation_id, channel_user_id, created_at_ms,
    expires_at_ms, consumed_at_ms)
VALUES ('hash-1', 'inst-a', 'ou_dave', 1700000002000, 1700000902000, NULL);

INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, thread_id, title,
    context_revision, fresh_pending, reply_to_message_id, reply_thread_id, run_state,
    flush_due_at_ms, flush_generation, flushed_message_id, created_at_ms, updated_at_ms,
    pending_since_ms, context_tokens, context_tokens_upto, context_tokens_revision,
    compaction_failures, compaction_attempt_upto)
VALUES ('sess-direct', 'inst-a', 'oc_direct', 'oc_direct', 'direct', NULL, 'Alice', 3, TRUE,
    'om_3', NULL, 'pending', 1700000003500, 4, 2, 1700000003000, 1700000003100,
    1700000003200, 1234, 2, 3, 1, 2);

INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, thread_id, title,
    context_revision, fresh_pending, reply_to_message_id, reply_thread_id, run_state,
    flush_generation, flushed_message_id, created_at_ms, updated_at_ms, worker_id, run_id,
    run_started_at_ms, heartbeat_at_ms, run_context_upto, run_context_revision, last_error,
    compaction_requested_at_ms, compaction_source, run_kind)
VALUES ('sess-group', 'inst-a', 'oc_group:omt_1', 'oc_group', 'group', 'omt_1', 'Team', 1,
    FALSE, 'om_9', 'omt_1', 'running', 7, 5, 1700000004000, 1700000004100, 'worker-1',
    'run-1', 1700000004200, 1700000004300, 5, 1, 'previous failure', 1700000004400, 'manual',
    'compact');

INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, title, run_state,
    last_error, created_at_ms, updated_at_ms)
VALUES ('sess-error', 'inst-b', 'oc_err', 'oc_err', 'group', 'Broken', 'error', 'agent down',
    1700000005000, 1700000005100);

INSERT INTO messages (session_id, role, kind, body, command_body, channel_message_id,
    sender_id, context_revision, created_at_ms, summary_upto)
VALUES
    ('sess-direct', 'user', 'message', 'hello', NULL, 'om_1', 'ou_alice', 3, 1700000006000, NULL),
    ('sess-direct', 'user', 'command', '/issue Broken login', '/issue Broken login', 'om_2',
     'ou_alice', 3, 1700000006100, NULL),
    ('sess-direct', 'system', 'summary', 'what came before', NULL, NULL, NULL, 3,
     1700000006200, 2),
    ('sess-direct', 'assistant', 'notice', 'context compacted', NULL, NULL, NULL, 3,
     1700000006300, NULL),
    ('sess-group', 'user', 'message', '[Team] bob: hi', 'hi', 'om_9', 'ou_bob', 1,
     1700000006400, NULL),
    ('sess-group', 'assistant', 'message', 'to be deleted', NULL, NULL, NULL, 1,
     1700000006500, NULL);

INSERT INTO queued_messages (session_id, body, command_body, channel_message_id, thread_id,
    sender_id, source, fresh_start, created_at_ms)
VALUES
    ('sess-group', 'queued while running', 'queued', 'om_10', 'omt_1', 'ou_bob', 'channel',
     FALSE, 1700000007000),
    ('sess-group', 'fresh start', NULL, NULL, NULL, NULL, 'api', TRUE, 1700000007100);

INSERT INTO inbound_dedup (installation_id, message_id, claim_token, received_at_ms,
    processed_at_ms)
VALUES ('inst-a', 'om_1', 'claim-1', 1700000006000, 1700000006050);

INSERT INTO inbound_audit (installation_id, channel, chat_id, event_type, event_id, message_id,
    drop_reason, received_at_ms)
VALUES ('inst-a', 'lark', 'oc_direct', 'im.message.receive_v1', 'ev-1', 'om_0', 'unbound_user',
    1700000005900);

INSERT INTO commands (installation_id, session_id, message_id, kind, title, description,
    sender_id, created_at_ms)
VALUES ('inst-a', 'sess-direct', 2, 'issue', 'Broken login', NULL, 'ou_alice', 1700000006100);

INSERT INTO agent_presence (agent, last_seen_at_ms) VALUES ('worker', 1700000008000);

INSERT INTO outbox (installation_id, session_id, run_id, kind, content, target,
    idempotency_key, state, attempts, next_attempt_at_ms, lease_owner, lease_expires_at_ms,
    last_error, channel_message_id, created_at_ms, done_at_ms)
VALUES
    ('inst-a', 'sess-group', 'run-0', 'reply', '{{"text":"done"}}',
     '{{"chat_id":"oc_group","reply_to":"om_9"}}', 'idem-1', 'pending', 2, 1700000009000,
     'replica-1', 1700000009500, 'timeout', NULL, 1700000008500, NULL),
    ('inst-a', 'sess-direct', NULL, 'notice', '{{"text":"hi"}}', '{{"chat_id":"oc_direct"}}',
     'idem-2', 'delivered', 1, 1700000008600, NULL, NULL, NULL, 'om_out', 1700000008600,
     1700000008700),
    ('inst-a', 'sessionless:x', NULL, 'notice',
     '{{"kind":"notice","notice":{{"kind":"needs_binding","url":"https://h/bind?token=t","open_id":"ou_bob","expires_in_minutes":15}}}}',
     '{{"chat_id":"oc_direct"}}', 'idem-3', 'pending', 0, 1700000008800, NULL, NULL, NULL, NULL,
     1700000008800, NULL);

-- The newest message is deleted: its id must still never be handed out again.
DELETE FROM messages WHERE id = (SELECT MAX(id) FROM messages);
"#
    )
}

/// The JSON value of `sql`'s one text value.
async fn json_of(raw: &Raw, sql: &str) -> Value {
    let text = raw.one(sql).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {sql}: {text}: {e}", raw.name()))
}

/// The whole scenario on one backend: `raw` reaches an empty database, `url` opens it for the
/// host.
async fn v01_database_migrates_with_data_intact(raw: Raw, url: &str) {
    let name = raw.name();

    // A 0.1 database: migrations 1..=7, then 0.1-shaped rows.
    raw.migrate_up_to(V01_LAST).await;
    raw.exec(&v01_rows(&raw))
        .await
        .unwrap_or_else(|e| panic!("{name}: inserting 0.1 rows: {e}"));
    let before = raw.snapshot().await;
    let indexes_before = raw.indexes().await;
    // Six messages were written to a fresh table (ids 1..=6) and the newest deleted again.
    let max_id_before: i64 = 6;
    assert_eq!(
        raw.column("SELECT CAST(MAX(id) AS TEXT) FROM messages")
            .await,
        ["5"],
        "{name}: the newest message was deleted"
    );
    assert_eq!(before["messages"].1.len(), 5, "{name}: messages kept");

    // The host's migrator brings it up to date.
    let host = Database::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{name}: connecting: {e}"));
    host.migrate()
        .await
        .unwrap_or_else(|e| panic!("{name}: migrating a 0.1 database: {e}"));
    let applied = raw
        .column("SELECT CAST(version AS TEXT) FROM _sqlx_migrations ORDER BY version")
        .await;
    // Every shipped migration, 0008 and whatever came after it (the folders are the list).
    let mut shipped: Vec<i64> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))
            .unwrap()
            .filter_map(|entry| {
                let file = entry.unwrap().file_name().into_string().unwrap();
                file.split('_').next()?.parse().ok()
            })
            .collect();
    shipped.sort_unstable();
    assert!(
        shipped.starts_with(&[1, 2, 3, 4, 5, 6, 7, 8]),
        "{shipped:?}"
    );
    // Compared as numbers (PostgreSQL orders the text column as text).
    let mut applied: Vec<i64> = applied.iter().map(|v| v.parse().unwrap()).collect();
    applied.sort_unstable();
    assert_eq!(applied, shipped, "{name}: migrations applied");

    // Every row of every table survives, identical in every column that still exists
    // (installations.config is checked on its own below).
    let after = raw.snapshot().await;
    // (Later migrations may add tables, e.g. 0011's blobs; none may go.)
    let lost: Vec<&String> = before
        .keys()
        .filter(|table| !after.contains_key(*table))
        .collect();
    assert!(lost.is_empty(), "{name}: tables lost: {lost:?}");
    for (table, (columns_before, rows_before)) in &before {
        let (columns_after, _) = &after[table];
        let kept: Vec<String> = columns_before
            .iter()
            .filter(|c| columns_after.contains(c))
            .filter(|c| !(table == "installations" && *c == "config"))
            // A notice in the old shape is rewritten (checked below); the others compare here.
            .filter(|c| !(table == "outbox" && *c == "content"))
            .cloned()
            .collect();
        let positions: Vec<usize> = kept
            .iter()
            .map(|c| columns_before.iter().position(|b| b == c).unwrap())
            .collect();
        let mut expected: Rows = rows_before
            .iter()
            .map(|row| positions.iter().map(|&i| row[i].clone()).collect())
            .collect();
        expected.sort();
        assert_eq!(
            raw.table_rows(table, &kept).await,
            expected,
            "{name}: rows of {table} in columns {kept:?}"
        );
        assert!(!rows_before.is_empty(), "{name}: {table} had rows");
    }
    // The same indexes on the tables that were there (tables added later bring their own).
    let added: Vec<&String> = after
        .keys()
        .filter(|table| !before.contains_key(*table))
        .collect();
    let indexes_after: Vec<String> = raw
        .indexes()
        .await
        .into_iter()
        .filter(|index| {
            !added
                .iter()
                .any(|table| index.starts_with(&format!("{table}.")))
        })
        .collect();
    assert_eq!(indexes_after, indexes_before, "{name}: the same indexes");

    // Outbox contents: untouched unless a notice was in an old shape, which gets the new one.
    let contents = raw
        .column("SELECT content FROM outbox ORDER BY idempotency_key")
        .await;
    assert_eq!(
        contents[0], r#"{"text":"done"}"#,
        "{name}: a reply is untouched"
    );
    assert_eq!(
        contents[1], r#"{"text":"hi"}"#,
        "{name}: an unknown shape is untouched"
    );
    let binding: serde_json::Value = serde_json::from_str(&contents[2]).unwrap();
    assert_eq!(
        binding,
        serde_json::json!({"kind": "notice", "notice": {
            "kind": "binding_required", "link": "https://h/bind?token=t", "recipient": "ou_bob"
        }}),
        "{name}: the old binding notice in the new shape"
    );

    // Columns: the old ones are gone, the new ones at the end.
    let installation_columns = raw.columns("installations").await;
    assert!(
        !installation_columns.iter().any(|c| c == "bot_open_id"),
        "{name}: bot_open_id is no longer a column: {installation_columns:?}"
    );
    assert!(
        !installation_columns.iter().any(|c| c == "bot_union_id"),
        "{name}: bot_union_id is no longer a column: {installation_columns:?}"
    );
    assert_eq!(
        raw.columns("user_bindings").await,
        [
            "installation_id",
            "channel_user_id",
            "user_ref",
            "bound_at_ms",
            "alt_ids"
        ],
        "{name}: user_bindings columns"
    );
    assert_eq!(
        raw.columns("messages").await.last().map(String::as_str),
        Some("meta"),
        "{name}: messages.meta"
    );
    assert_eq!(
        after["sessions"].0, before["sessions"].0,
        "{name}: sessions columns in the same order"
    );

    // The bot ids joined the config JSON; a key the config already had was kept.
    let config = |id: &str| format!("SELECT config FROM installations WHERE id = '{id}'");
    assert_eq!(
        json_of(&raw, &config("inst-a")).await,
        json!({"region": "cn", "bot_open_id": "ou_bot_a", "bot_union_id": "on_bot_a"}),
        "{name}: inst-a config"
    );
    assert_eq!(
        json_of(&raw, &config("inst-b")).await,
        json!({"bot_open_id": "ou_from_config", "note": "x"}),
        "{name}: inst-b config keeps its own bot_open_id; NULL adds nothing"
    );
    assert_eq!(
        raw.one(&config("inst-c")).await,
        "{}",
        "{name}: inst-c config untouched (NULL and empty ids)"
    );

    // The union id became an alt id; no union id, no alt ids.
    let alt_ids =
        |user: &str| format!("SELECT alt_ids FROM user_bindings WHERE channel_user_id = '{user}'");
    assert_eq!(
        json_of(&raw, &alt_ids("ou_alice")).await,
        json!([["union_id", "on_alice"]]),
        "{name}: alice's alt ids"
    );
    assert_eq!(
        json_of(&raw, &alt_ids("ou_bob")).await,
        json!([]),
        "{name}: bob's alt ids"
    );
    assert_eq!(
        json_of(&raw, &alt_ids("ou_carol")).await,
        json!([]),
        "{name}: carol's alt ids (empty union id)"
    );
    assert_eq!(
        raw.column("SELECT CAST(COUNT(*) AS TEXT) FROM messages WHERE meta IS NOT NULL")
            .await,
        ["0"],
        "{name}: old messages have no meta"
    );

    // New values are accepted; the CHECKs still refuse anything else.
    raw.exec(
        "INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, title, \
             created_at_ms, updated_at_ms) \
         VALUES ('sess-channel', 'inst-a', 'ch_news', 'ch_news', 'channel', 'News', \
             1700000010000, 1700000010000)",
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: a 'channel' session: {e}"));
    let bad_session = raw
        .exec(
            "INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, title, \
                 created_at_ms, updated_at_ms) \
             VALUES ('sess-bad', 'inst-a', 'x', 'x', 'forum', 'X', 1, 1)",
        )
        .await;
    assert!(bad_session.is_err(), "{name}: chat_type 'forum' refused");

    let action_meta = r#"{"action":{"name":"react","args":{"emoji":"+1"}}}"#;
    let action_id: i64 = raw
        .one(&format!(
            "INSERT INTO messages (session_id, role, kind, body, context_revision, \
                 created_at_ms, meta) \
             VALUES ('sess-channel', 'user', 'action', 'reacted +1', 1, 1700000010100, \
                 '{action_meta}') \
             RETURNING CAST(id AS TEXT)"
        ))
        .await
        .parse()
        .unwrap();
    assert!(
        action_id > max_id_before,
        "{name}: message ids keep increasing: {action_id} after {max_id_before}"
    );
    let command_id: i64 = raw
        .one(
            r#"INSERT INTO messages (session_id, role, kind, body, context_revision,
                   created_at_ms, meta)
               VALUES ('sess-channel', 'user', 'command', '/issue Title', 1, 1700000010200,
                   '{"command":{"name":"issue","args":"Title"}}')
               RETURNING CAST(id AS TEXT)"#,
        )
        .await
        .parse()
        .unwrap();
    assert!(command_id > action_id, "{name}: ids increase");
    assert_eq!(
        json_of(
            &raw,
            &format!("SELECT meta FROM messages WHERE id = {action_id}")
        )
        .await,
        serde_json::from_str::<Value>(action_meta).unwrap(),
        "{name}: meta stored"
    );
    let bad_message = raw
        .exec(
            "INSERT INTO messages (session_id, role, kind, body, context_revision, \
                 created_at_ms) \
             VALUES ('sess-channel', 'user', 'reaction', 'x', 1, 1)",
        )
        .await;
    assert!(bad_message.is_err(), "{name}: kind 'reaction' refused");

    // A second run (a fresh handle, as on the next boot) changes nothing.
    host.close().await;
    let data = raw.snapshot().await;
    let schema = raw.schema().await;
    let recorded = raw.applied().await;
    let host = Database::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{name}: reconnecting: {e}"));
    host.migrate()
        .await
        .unwrap_or_else(|e| panic!("{name}: migrating again: {e}"));
    host.close().await;
    assert_eq!(
        raw.applied().await,
        recorded,
        "{name}: nothing newly applied"
    );
    assert_eq!(raw.schema().await, schema, "{name}: schema unchanged");
    assert_eq!(raw.snapshot().await, data, "{name}: data unchanged");

    raw.close().await;
}

#[tokio::test]
async fn sqlite_v01_database_migrates_with_data_intact() {
    bounded(60, async {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let path = dir.path().join("switchboard.db");
        let url = format!("sqlite://{}", path.display());
        // As the host opens it: foreign keys on (0008 must not lose rows to ON DELETE CASCADE).
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("opening the SQLite file");
        v01_database_migrates_with_data_intact(Raw::Sqlite(pool), &url).await;
    })
    .await;
}

/// A fresh, empty PostgreSQL database, dropped again with the guard.
struct PgScratch {
    admin_url: String,
    name: String,
}

impl PgScratch {
    /// Creates `sbtest_<uuid>` on the test server. Panics (never skips) if it is unreachable.
    async fn create() -> (PgScratch, String) {
        let admin_url = db::pg_admin_url();
        let mut admin =
            match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&admin_url))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => panic!("PostgreSQL is required ({admin_url}): {e}"),
                Err(_) => panic!("PostgreSQL is required ({admin_url}): connecting timed out"),
            };
        let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        admin.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("the PostgreSQL admin URL parses");
        url.set_path(&format!("/{name}"));
        (PgScratch { admin_url, name }, url.into())
    }
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: drop the database from a helper thread.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if dropped.ok().flatten().is_none() {
            eprintln!("note: could not drop test database {}", self.name);
        }
    }
}

#[tokio::test]
async fn postgres_v01_database_migrates_with_data_intact() {
    bounded(60, async {
        let (_scratch, url) = PgScratch::create().await;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
        v01_database_migrates_with_data_intact(Raw::Postgres(pool), &url).await;
    })
    .await;
}
