//! The host's storage layer (SPEC §8).
//!
//! This module owns everything that talks to the database: connection pools, schema migrations
//! (embedded from `migrations/`) and every SQL statement the host runs. Two backends sit behind
//! one [`Database`] handle, chosen by URL scheme: SQLite (the embedded default, one file in WAL
//! mode) and PostgreSQL (shared by several host replicas). SQL is written once where both
//! dialects agree (`$N` placeholders work on both) and per backend where they differ.
//!
//! It must not touch wasm, plugins' guest code or HTTP: callers (the runtime's capabilities, the
//! CLI, the HTTP layer) pass plain values in and get plain values or a [`StoreError`] back. It
//! also does not read the clock: times are passed in as Unix epoch milliseconds so that callers
//! and tests control "now".

mod append_batch;
mod approvals;
pub(crate) mod blobs;
mod compaction;
mod flush;
mod ingest;
mod installations;
mod kv;
mod migrate;
mod notify;
mod outbox;
mod pairing;
mod retention;
mod runs;
mod secrets;
mod workers;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use approvals::{
    Approval, ApprovalState, ApprovalStore, Decision, NewApproval, approval_notice_key,
};
pub use blobs::{BLOB_ID_KEY, BlobRow, BlobState, BlobStore, StoredBlob};
pub use compaction::{
    Compacted, CompactionSource, CompactionState, CompactionStore, MAX_CONSECUTIVE_FAILURES,
    NewSummary,
};
pub use flush::{BatchMessage, FlushBatch, FlushTicket};
pub use ingest::{
    AppendOutcome, AppendRequest, AppendedMessage, AuditEntry, AuditRow, BINDING_TOKEN_TTL_MS,
    BindingError, ChatKind, CommandRecord, DedupClaim, IngestStore, Message, QueuedTurn,
    RECLAIM_AFTER_MS, Session, SessionHistory, SessionKey, TurnKind, UserBinding,
};
pub use installations::{
    AccessPolicy, DEFAULT_DEBOUNCE_MS, Installation, InstallationSettings, InstallationStatus,
    InstallationStore, NewInstallation, new_installation_id,
};
pub use kv::{KvSetError, KvStore, KvUsage};
pub use notify::{Listener, MAX_NOTIFY_PAYLOAD, Notification};
pub use outbox::{
    NewOutboxRow, OutboxContent, OutboxCounts, OutboxRow, OutboxStore, OutboxTarget, reply_key,
};
pub use pairing::{
    Approved, GrantedNotice, MAX_PENDING_PAIRINGS, PAIRING_CODE_LEN, PAIRING_TTL_MS, Pairing,
    PairingAsk, PairingError, PairingRequest, PairingStore, normalize_code,
};
pub use retention::{PrunedBlob, RetainedTable, RetentionStore};
pub use runs::{
    Edited, Finished, QUEUE_CAP, QueuedMessage, ReleaseOutcome, Released, RunClaim, RunEnd,
    RunError, RunFinish, RunState, RunStatus, RunStore, Submitted, Transition,
};
pub use secrets::{SecretCipher, SecretError};
pub use workers::{RunOwner, WorkerStore};

/// How long a SQLite connection waits for another connection's lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections per SQLite file database (the writer is a separate, single connection).
const SQLITE_READERS: u32 = 4;
/// Connections per PostgreSQL pool.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long opening the first PostgreSQL connection may take.
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which database engine a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite through sqlx (a file in WAL mode, or in memory).
    Sqlite,
    /// PostgreSQL through sqlx.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// A failure of the storage layer.
///
/// Messages name the operation and the backend, and never contain a database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL's scheme is neither `sqlite:` nor `postgres://` / `postgresql://`.
    #[error(
        "unsupported database URL {url_redacted}: expected sqlite://<file>, sqlite::memory:, \
         postgres://… or postgresql://…"
    )]
    UnsupportedUrl {
        /// The URL with any password replaced by `***`.
        url_redacted: String,
    },
    /// Opening the database (parsing the URL, creating the file, connecting) failed.
    #[error("connecting to database {url_redacted} failed: {source}")]
    Connect {
        /// The URL with any password replaced by `***`.
        url_redacted: String,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("migrating the {backend} database failed: {source}")]
    Migrate {
        /// The backend being migrated.
        backend: Backend,
        /// What sqlx's migrator reported.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("{op} on {backend} failed: {source}")]
    Query {
        /// The operation that failed, e.g. `"kv set"`.
        op: &'static str,
        /// The backend it ran on.
        backend: Backend,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// Installation secrets could not be opened (wrong key, corrupted value).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A write would break a uniqueness rule, e.g. a second installation for one routing key.
    #[error("{what}")]
    Conflict {
        /// What clashed, in plain words.
        what: String,
    },
    /// The caller passed a value the store refuses.
    #[error("invalid {what}")]
    Invalid {
        /// Which value and why.
        what: String,
    },
    /// A stored row holds a value this binary cannot read.
    #[error("corrupt stored data: {what}")]
    Corrupt {
        /// Which row and value.
        what: String,
    },
}

impl StoreError {
    /// Builds a `map_err` adapter that wraps a sqlx error as a failed `op` on `backend`.
    pub(crate) fn query(op: &'static str, backend: Backend) -> impl Fn(sqlx::Error) -> Self + Copy {
        move |source| StoreError::Query {
            op,
            backend,
            source,
        }
    }
}

/// The pools behind a SQLite database.
///
/// All writes go through `writer`, a pool of exactly one connection: SQLite allows one writer at
/// a time anyway, and queueing writers in the pool (instead of letting several connections fight
/// over the file lock) means transactions never hit `SQLITE_BUSY` among themselves. Reads use
/// `reader`, which in WAL mode runs alongside the writer. For an in-memory database both are the
/// same single-connection pool, because every connection to `:memory:` would be its own database.
#[derive(Clone)]
struct SqlitePools {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Group commit of the dispatcher's claim-and-appends on `writer`.
    appends: std::sync::Arc<append_batch::AppendBatcher>,
}

impl SqlitePools {
    fn new(writer: SqlitePool, reader: SqlitePool) -> SqlitePools {
        let appends = std::sync::Arc::new(append_batch::AppendBatcher::new(writer.clone()));
        SqlitePools {
            writer,
            reader,
            appends,
        }
    }
}

#[derive(Clone)]
enum Inner {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// A handle to the host's database: SQLite or PostgreSQL, chosen by URL scheme.
///
/// Cloning is cheap (the pools are reference counted); all clones share the same connections.
#[derive(Clone)]
pub struct Database {
    inner: Inner,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens a connection pool for `url`.
    ///
    /// Accepted URLs:
    /// - `sqlite://path/to/file.db` (relative) or `sqlite:///abs/path.db`: the file and its parent
    ///   directories are created if missing; WAL journal, `synchronous=NORMAL`, 5 s busy timeout,
    ///   foreign keys on.
    /// - `sqlite::memory:`: a private in-memory database on a single connection, so every clone
    ///   of the handle sees the same data. It disappears when the handle is closed or dropped.
    /// - `postgres://…` / `postgresql://…`: a PostgreSQL pool (libpq-style URL).
    ///
    /// The database is not migrated; call [`Database::migrate`].
    pub async fn connect(url: &str) -> Result<Database, StoreError> {
        let url_redacted = redact_url(url);
        let inner =
            if url.starts_with("sqlite:") {
                Inner::Sqlite(
                    connect_sqlite(url)
                        .await
                        .map_err(|source| StoreError::Connect {
                            url_redacted: url_redacted.clone(),
                            source,
                        })?,
                )
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Inner::Postgres(connect_postgres(url).await.map_err(|source| {
                    StoreError::Connect {
                        url_redacted: url_redacted.clone(),
                        source,
                    }
                })?)
            } else {
                return Err(StoreError::UnsupportedUrl { url_redacted });
            };
        let db = Database { inner };
        tracing::info!(backend = %db.backend(), url = %url_redacted, "database connected");
        Ok(db)
    }

    /// Applies the embedded migrations that this database has not seen yet.
    ///
    /// Safe to call on every boot: on an up-to-date database it changes nothing. On PostgreSQL,
    /// replicas migrating at the same time are serialised by sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let backend = self.backend();
        let fail = |source| StoreError::Migrate { backend, source };
        let migrator = migrate::migrator(backend).await.map_err(fail)?;
        match &self.inner {
            Inner::Sqlite(pools) => migrator.run(&pools.writer).await.map_err(fail)?,
            Inner::Postgres(pool) => migrator.run(pool).await.map_err(fail)?,
        }
        tracing::debug!(%backend, "database migrations up to date");
        Ok(())
    }

    /// The backend this handle talks to.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a trivial query (`SELECT 1`): whether the database answers now (readiness). On
    /// SQLite it asks the read pool, which answers while a long write holds the writer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let backend = self.backend();
        match &self.inner {
            Inner::Sqlite(pools) => sqlx::query("SELECT 1")
                .execute(&pools.reader)
                .await
                .map(drop),
            Inner::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
        .map_err(StoreError::query("ping", backend))
    }

    /// Closes every pooled connection, waiting for checked-out ones to be returned.
    ///
    /// Affects all clones of this handle; later operations fail. An in-memory SQLite database is
    /// gone afterwards.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Sqlite(pools) => {
                pools.reader.close().await;
                pools.writer.close().await;
            }
            Inner::Postgres(pool) => pool.close().await,
        }
    }

    /// The plugin key/value store on this database (a cheap handle sharing its pools).
    pub fn kv(&self) -> KvStore {
        KvStore::new(self.clone())
    }

    /// The installations store on this database; secrets are sealed and opened with `cipher`.
    pub fn installations(&self, cipher: SecretCipher) -> InstallationStore {
        InstallationStore::new(self.clone(), cipher)
    }

    /// The ingest store (bindings, dedup, audit, sessions, messages) on this database.
    pub fn ingest(&self) -> IngestStore {
        IngestStore::new(self.clone())
    }

    /// The pairing store (codes for senders the `bound` policy does not know) on this database.
    pub fn pairings(&self) -> PairingStore {
        PairingStore::new(self.clone())
    }

    /// The run store (run lifecycle, queue, operator operations) on this database.
    pub fn runs(&self) -> RunStore {
        RunStore::new(self.clone())
    }

    /// The delivery outbox on this database.
    pub fn outbox(&self) -> OutboxStore {
        OutboxStore::new(self.clone())
    }

    /// The blob table (attachment downloads, issue 18) on this database.
    pub fn blobs(&self) -> BlobStore {
        BlobStore::new(self.clone())
    }

    /// The compaction store (occupancy, failures, summary boundaries) on this database.
    pub fn compaction(&self) -> CompactionStore {
        CompactionStore::new(self.clone())
    }

    /// The worker store (agent presence, run ownership lookups) on this database.
    pub fn workers(&self) -> WorkerStore {
        WorkerStore::new(self.clone())
    }

    /// The approvals store (issue 18: approval requests and their one decision).
    pub fn approvals(&self) -> ApprovalStore {
        ApprovalStore::new(self.clone())
    }

    /// The retention store (bounded pruning of dedup, audit, binding-token and expired kv rows).
    pub fn retention(&self) -> RetentionStore {
        RetentionStore::new(self.clone())
    }
}

/// True for the URL forms sqlx treats as an in-memory SQLite database.
fn is_sqlite_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory")
}

async fn connect_sqlite(url: &str) -> Result<SqlitePools, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);

    if is_sqlite_memory(url) {
        // One connection that is never recycled: the database lives exactly as long as it.
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        return Ok(SqlitePools::new(pool.clone(), pool));
    }

    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    if let Some(parent) = options.get_filename().parent()
        && !parent.as_os_str().is_empty()
    {
        tokio::fs::create_dir_all(parent).await?;
    }
    // The writer connects first: it creates the file and switches it to WAL before any reader
    // opens it.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(SQLITE_READERS)
        .connect_with(options)
        .await?;
    Ok(SqlitePools::new(writer, reader))
}

async fn connect_postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("switchboard");
    // One plain connection first: sqlx's pool retries a refused connection until its acquire
    // timeout and then reports only "pool timed out", while a direct attempt fails at once with
    // the real reason (refused, unknown host, authentication, missing database).
    match tokio::time::timeout(
        POSTGRES_CONNECT_TIMEOUT,
        PgConnection::connect_with(&options),
    )
    .await
    {
        Ok(first) => first?.close().await?,
        Err(_) => {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", POSTGRES_CONNECT_TIMEOUT.as_secs()),
            )));
        }
    }
    PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .connect_with(options)
        .await
}

/// Returns `url` with any password replaced by `***`, for logs and error messages.
///
/// Handles the password in the user-info part (`scheme://user:secret@host/…`) and in query
/// parameters (`?password=secret`). Everything else is kept as is.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);

    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
        // The last '@' ends the user info, so an unencoded '@' in a password is still hidden.
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
    } else {
        out.push_str(authority);
    }

    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _))
                    if ["password", "pass", "pwd", "sslpassword"]
                        .contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/sb?sslmode=require"),
            "postgres://app:***@db.example:5432/sb?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://app:p@ss@db/sb"),
            "postgresql://app:***@db/sb"
        );
        assert_eq!(
            redact_url("postgres://db/sb?user=app&password=s3cret"),
            "postgres://db/sb?user=app&password=***"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact_url("sqlite://data/sb.db"), "sqlite://data/sb.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn memory_urls_are_recognised() {
        assert!(is_sqlite_memory("sqlite::memory:"));
        assert!(is_sqlite_memory("sqlite://:memory:"));
        assert!(is_sqlite_memory("sqlite://?mode=memory"));
        assert!(!is_sqlite_memory("sqlite://data/memory.db"));
        assert!(!is_sqlite_memory("sqlite:///tmp/x.db?mode=rwc"));
    }
}
