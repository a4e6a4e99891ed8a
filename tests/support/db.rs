//! Databases for tests: a fresh, migrated SQLite file database and a fresh, migrated PostgreSQL
//! database, so every database test runs on both backends.
//!
//! Include it from a test crate with `#[path = "support/db.rs"] mod db;`.
//!
//! PostgreSQL is required: the helper connects to `postgres://postgres@127.0.0.1:5432/postgres`
//! (or `$SWITCHBOARD_TEST_PG_URL`), creates a database `sbtest_<random hex>` for the test and
//! drops it again when the returned [`TestDb`] is dropped. If the server cannot be reached the
//! helper panics; tests are never skipped silently.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use switchboard::store::Database;

/// The admin URL used when `SWITCHBOARD_TEST_PG_URL` is not set.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const PG_REQUIRED: &str = "PostgreSQL is required for the test suite: start it with \
     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     or set SWITCHBOARD_TEST_PG_URL";

/// One test database, migrated and ready. Dropping it deletes the database.
pub struct TestDb {
    /// `"sqlite"` or `"postgres"`: use it in assertion messages.
    pub name: String,
    /// The URL the database was opened with (no password in the default setup).
    pub url: String,
    /// The open, migrated database.
    pub db: Database,
    /// Deletes the database's storage when dropped (declared last, so dropped after `db`).
    _guard: Guard,
}

enum Guard {
    /// The SQLite file lives in this directory.
    Sqlite(tempfile::TempDir),
    /// The PostgreSQL database `name` on the server reached through `admin_url`.
    Postgres { admin_url: String, name: String },
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Guard::Postgres { admin_url, name } = self else {
            return; // TempDir removes itself
        };
        // Drop runs inside the test's runtime, where blocking on a future is not allowed: drop
        // the database from a helper thread with its own small runtime. Best effort: a leftover
        // `sbtest_*` database does not affect other tests.
        let admin_url = admin_url.clone();
        let database = name.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                // FORCE ends the test pool's connections, which may still be open.
                let sql = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                sqlx::query(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        });
        if dropper.join().ok().flatten().is_none() {
            eprintln!("note: could not drop test database {name}");
        }
    }
}

/// A fresh migrated SQLite file database and a fresh migrated PostgreSQL database, in that
/// order. Panics (never skips) if PostgreSQL is unreachable.
pub async fn test_databases() -> Vec<TestDb> {
    vec![sqlite_file_db().await, postgres_db().await]
}

/// A fresh migrated SQLite database in a new temporary directory.
pub async fn sqlite_file_db() -> TestDb {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let db = Database::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("opening the test SQLite database: {e}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("migrating the test SQLite database: {e}"));
    TestDb {
        name: "sqlite".into(),
        url,
        db,
        _guard: Guard::Sqlite(dir),
    }
}

/// The PostgreSQL admin URL the tests use.
pub fn pg_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A fresh migrated PostgreSQL database `sbtest_<random hex>`. Panics if the server is down.
pub async fn postgres_db() -> TestDb {
    let admin_url = pg_admin_url();
    let mut admin = match tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect(&admin_url),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("{PG_REQUIRED} (connecting to {admin_url} failed: {e})"),
        Err(_) => panic!("{PG_REQUIRED} (connecting to {admin_url} timed out)"),
    };
    let name = format!("sbtest_{}", random_hex());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    admin.close().await.ok();
    // Construct the guard before anything else can panic, so the database is dropped anyway.
    let guard = Guard::Postgres {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };

    let url = with_database(&admin_url, &name);
    let db = Database::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("opening test database {name}: {e}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("migrating test database {name}: {e}"));
    TestDb {
        name: "postgres".into(),
        url,
        db,
        _guard: guard,
    }
}

/// `url` with its database name (the path) replaced by `database`; query parameters are kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// 16 hex digits that differ between processes, tests and calls.
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hash = Sha256::new();
    hash.update(std::process::id().to_le_bytes());
    hash.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hash.update(now.as_nanos().to_le_bytes());
    hash.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hex::encode(&hash.finalize()[..8])
}
