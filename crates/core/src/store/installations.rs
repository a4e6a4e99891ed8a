//! Channel installations (SPEC §3 step 1, §6, §8): one bot of one channel, bound to one agent.
//!
//! An installation is found by `(channel, routing_key)` (a key its channel's payloads carry, or
//! its own id when they carry none), carries non-secret
//! config as a JSON object of strings and its secrets sealed with the operator's key
//! ([`SecretCipher`]); secrets are opened on every read, so an [`Installation`] in memory always
//! holds plaintext [`Secret`]s, which never print.
//!
//! Also defines the small helper macros the other ingest-side store files share (per-backend
//! pool choice and write transactions).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::secrets::SecretCipher;
use super::{Backend, Database, Inner, StoreError};
use crate::domain::{InstallationContext, Secret};
use crate::hygiene;

/// Runs `$body` with `$pool` bound to a pool suitable for reads (SQLite: the reader pool).
macro_rules! on_reader {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.inner {
            Inner::Sqlite(pools) => {
                let $pool = &pools.reader;
                $body
            }
            Inner::Postgres(pool) => {
                let $pool = pool;
                $body
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to a pool suitable for writes (SQLite: the single writer).
macro_rules! on_writer {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.inner {
            Inner::Sqlite(pools) => {
                let $pool = &pools.writer;
                $body
            }
            Inner::Postgres(pool) => {
                let $pool = pool;
                $body
            }
        }
    };
}

/// Runs `$body` inside a write transaction bound to `$tx` and commits when the body's value is
/// produced. Leaving the body early (`?`, `return`) drops the transaction, which rolls it back.
/// `$pg` is `true` on PostgreSQL, for the few statements whose SQL differs (row locks). SQLite
/// transactions start with `BEGIN IMMEDIATE`, so they hold the write lock from the start.
macro_rules! in_write_tx {
    ($db:expr, $fail:expr, |$tx:ident, $pg:ident| $body:expr) => {
        match &$db.inner {
            Inner::Sqlite(pools) => {
                let mut $tx = pools
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err($fail)?;
                #[allow(unused_variables)]
                let $pg = false;
                let value = $body;
                $tx.commit().await.map_err($fail)?;
                value
            }
            Inner::Postgres(pool) => {
                let mut $tx = pool.begin().await.map_err($fail)?;
                #[allow(unused_variables)]
                let $pg = true;
                let value = $body;
                $tx.commit().await.map_err($fail)?;
                value
            }
        }
    };
}

/// Implements `sqlx::FromRow` for both backends' rows with one body.
macro_rules! from_row_both {
    ($ty:ty, |$row:ident| $body:expr) => {
        impl<'r> sqlx::FromRow<'r, SqliteRow> for $ty {
            fn from_row($row: &'r SqliteRow) -> Result<Self, sqlx::Error> {
                $body
            }
        }
        impl<'r> sqlx::FromRow<'r, PgRow> for $ty {
            fn from_row($row: &'r PgRow) -> Result<Self, sqlx::Error> {
                $body
            }
        }
    };
}

pub(super) use {from_row_both, in_write_tx, on_reader, on_writer};

/// True if `error` is a unique-constraint violation (either backend).
pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Who may talk to an installation's agent (SPEC §3 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessPolicy {
    /// Any sender.
    #[default]
    Open,
    /// Only senders bound to a host user; others get a pairing code to give the operator.
    Bound,
}

impl AccessPolicy {
    /// The stored name: `open` or `bound`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessPolicy::Open => "open",
            AccessPolicy::Bound => "bound",
        }
    }
}

impl fmt::Display for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessPolicy {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "open" => Ok(AccessPolicy::Open),
            "bound" => Ok(AccessPolicy::Bound),
            other => Err(StoreError::Invalid {
                what: format!("access policy {other:?}: expected `open` or `bound`"),
            }),
        }
    }
}

/// Whether an installation receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstallationStatus {
    /// In service.
    Active,
    /// Revoked by the operator: inbound events are dropped (`revoked_installation`).
    Revoked,
}

impl InstallationStatus {
    /// The stored name: `active` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallationStatus::Active => "active",
            InstallationStatus::Revoked => "revoked",
        }
    }
}

/// A fresh installation id (a random UUID), for [`InstallationStore::create_with_id`].
pub fn new_installation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What an operator provides to register an installation.
///
/// `Default` gives an `open`, `echo`-agent installation with the default 3 s debounce and empty
/// channel and routing key (which [`InstallationStore::create`] refuses: fill them in).
#[derive(Clone)]
pub struct NewInstallation {
    /// Plugin channel type (the manifest's `channel`).
    pub channel: String,
    /// How inbound events on the channel's shared URL find the installation; empty: none (the
    /// installation's id is stored instead).
    pub routing_key: String,
    /// Display name.
    pub name: String,
    /// Non-secret config values.
    pub config: BTreeMap<String, String>,
    /// Secrets (app secret, encrypt key, verification token); sealed before they are stored.
    pub secrets: BTreeMap<String, String>,
    /// Identity policy.
    pub access_policy: AccessPolicy,
    /// The bound agent.
    pub agent: String,
    /// Debounce window in milliseconds (1 ms to one hour,
    /// [`MAX_DEBOUNCE_MS`](crate::hygiene::MAX_DEBOUNCE_MS)).
    pub debounce_ms: i64,
}

impl Default for NewInstallation {
    fn default() -> Self {
        NewInstallation {
            channel: String::new(),
            routing_key: String::new(),
            name: String::new(),
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            access_policy: AccessPolicy::Open,
            agent: "echo".into(),
            debounce_ms: DEFAULT_DEBOUNCE_MS,
        }
    }
}

impl fmt::Debug for NewInstallation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewInstallation")
            .field("channel", &self.channel)
            .field("routing_key", &self.routing_key)
            .field("name", &self.name)
            .field("config", &self.config)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("access_policy", &self.access_policy)
            .field("agent", &self.agent)
            .field("debounce_ms", &self.debounce_ms)
            .finish()
    }
}

/// The debounce window of a new installation unless told otherwise (SPEC §4: 3 s).
pub const DEFAULT_DEBOUNCE_MS: i64 = 3_000;

/// The settings of an installation an operator may change after adding it
/// ([`InstallationStore::update_settings`]); secrets change through
/// [`InstallationStore::set_secrets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationSettings {
    /// Routing key (empty: the installation's id).
    pub routing_key: String,
    /// Display name.
    pub name: String,
    /// Non-secret config values.
    pub config: BTreeMap<String, String>,
    /// Identity policy.
    pub access_policy: AccessPolicy,
    /// The bound agent.
    pub agent: String,
    /// Debounce window in milliseconds.
    pub debounce_ms: i64,
}

impl Installation {
    /// Its current settings, to change and write back.
    pub fn settings(&self) -> InstallationSettings {
        InstallationSettings {
            routing_key: self.routing_key.clone(),
            name: self.name.clone(),
            config: self.config.clone(),
            access_policy: self.access_policy,
            agent: self.agent.clone(),
            debounce_ms: self.debounce_ms,
        }
    }
}

/// A stored installation with its secrets opened.
#[derive(Debug, Clone)]
pub struct Installation {
    /// Host id (a UUID).
    pub id: String,
    /// Plugin channel type.
    pub channel: String,
    /// Routing key.
    pub routing_key: String,
    /// Display name.
    pub name: String,
    /// Non-secret config values.
    pub config: BTreeMap<String, String>,
    /// Decrypted secrets.
    pub secrets: BTreeMap<String, Secret>,
    /// Identity policy.
    pub access_policy: AccessPolicy,
    /// Active or revoked.
    pub status: InstallationStatus,
    /// The bound agent.
    pub agent: String,
    /// Debounce window in milliseconds.
    pub debounce_ms: i64,
    /// Creation time (epoch ms).
    pub created_at_ms: i64,
    /// Last change (epoch ms).
    pub updated_at_ms: i64,
}

impl Installation {
    /// Whether inbound events are accepted.
    pub fn is_active(&self) -> bool {
        self.status == InstallationStatus::Active
    }

    /// The per-call context handed to the channel plugin: its config values and secrets, as
    /// stored (the host adds nothing).
    pub fn context(&self) -> InstallationContext {
        InstallationContext {
            id: self.id.clone(),
            config: self.config.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// The installation's locale for notices (config `locale`, default
    /// [`DEFAULT_LOCALE`](crate::domain::notice::DEFAULT_LOCALE)).
    pub fn locale(&self) -> &str {
        self.config
            .get("locale")
            .map(String::as_str)
            .filter(|l| !l.is_empty())
            .unwrap_or(crate::domain::notice::DEFAULT_LOCALE)
    }
}

/// An installation row as stored (secrets still sealed).
struct InstallationRow {
    id: String,
    channel: String,
    routing_key: String,
    name: String,
    config: String,
    secrets: Option<Vec<u8>>,
    access_policy: String,
    status: String,
    agent: String,
    debounce_ms: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
}

from_row_both!(InstallationRow, |row| {
    Ok(InstallationRow {
        id: row.try_get("id")?,
        channel: row.try_get("channel")?,
        routing_key: row.try_get("routing_key")?,
        name: row.try_get("name")?,
        config: row.try_get("config")?,
        secrets: row.try_get("secrets")?,
        access_policy: row.try_get("access_policy")?,
        status: row.try_get("status")?,
        agent: row.try_get("agent")?,
        debounce_ms: row.try_get("debounce_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
});

/// The columns every installation read selects.
const COLUMNS: &str = "id, channel, routing_key, name, config, secrets, access_policy, status, \
     agent, debounce_ms, created_at_ms, updated_at_ms";

impl InstallationRow {
    fn open(self, cipher: &SecretCipher) -> Result<Installation, StoreError> {
        let config = parse_config(&self.id, &self.config)?;
        let secrets = match &self.secrets {
            Some(sealed) => cipher
                .decrypt(&self.id, sealed)?
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
            None => BTreeMap::new(),
        };
        let access_policy = self
            .access_policy
            .parse()
            .map_err(|_| StoreError::Corrupt {
                what: format!(
                    "installation {}: access policy {:?}",
                    self.id, self.access_policy
                ),
            })?;
        let status = match self.status.as_str() {
            "active" => InstallationStatus::Active,
            "revoked" => InstallationStatus::Revoked,
            other => {
                return Err(StoreError::Corrupt {
                    what: format!("installation {}: status {other:?}", self.id),
                });
            }
        };
        Ok(Installation {
            id: self.id,
            channel: self.channel,
            routing_key: self.routing_key,
            name: self.name,
            config,
            secrets,
            access_policy,
            status,
            agent: self.agent,
            debounce_ms: self.debounce_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

/// Reads the config column: a JSON object whose string values are kept as they are and other
/// values as their JSON text.
fn parse_config(id: &str, text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            what: format!("installation {id}: config is not a JSON object: {e}"),
        })?;
    Ok(object
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

impl Database {
    /// How many installations (revoked ones included) hold secrets sealed with a key: the
    /// start-up check that refuses to generate a new key for a database whose secrets only an
    /// earlier key can open. Needs no key itself.
    pub async fn installations_with_sealed_secrets(&self) -> Result<i64, StoreError> {
        let fail = StoreError::query("installations with sealed secrets", self.backend());
        let count: i64 = on_reader!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM installations WHERE secrets IS NOT NULL")
                .fetch_one(pool)
                .await
                .map_err(fail)?
        });
        Ok(count)
    }
}

/// Installations on a [`Database`]: a cheap, cloneable handle that seals and opens secrets.
#[derive(Debug, Clone)]
pub struct InstallationStore {
    db: Database,
    cipher: SecretCipher,
}

impl InstallationStore {
    pub(super) fn new(db: Database, cipher: SecretCipher) -> Self {
        InstallationStore { db, cipher }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The database this store writes to.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Registers an installation (status active) with a new UUID id.
    ///
    /// A second installation for the same `(channel, routing_key)` is refused with
    /// [`StoreError::Conflict`]; an empty channel or routing key, a debounce outside 1 ms to
    /// one hour, or a value the backends cannot store (a NUL character, or longer than the
    /// bounds of [`crate::hygiene`]) with [`StoreError::Invalid`].
    pub async fn create(
        &self,
        new: &NewInstallation,
        now_ms: i64,
    ) -> Result<Installation, StoreError> {
        self.create_with_id(&new_installation_id(), new, now_ms)
            .await
    }

    /// [`create`](Self::create) under an id chosen beforehand with [`new_installation_id`] (so
    /// the plugin's `on-install` can be told the installation's own URL before the row exists).
    pub async fn create_with_id(
        &self,
        id: &str,
        new: &NewInstallation,
        now_ms: i64,
    ) -> Result<Installation, StoreError> {
        if new.channel.is_empty() {
            return Err(StoreError::Invalid {
                what: "installation: the channel must not be empty".into(),
            });
        }
        check_new(new)?;
        let id = id.to_string();
        // A channel whose payloads carry no routing key is routed by its installation URL or
        // connection only; the id keeps `(channel, routing_key)` unique.
        let routing_key = if new.routing_key.is_empty() {
            &id
        } else {
            &new.routing_key
        };
        let sealed = (!new.secrets.is_empty()).then(|| self.cipher.encrypt(&id, &new.secrets));
        let config = serde_json::to_string(&new.config).unwrap_or_else(|_| "{}".into());
        let fail = StoreError::query("installation create", self.backend());
        let result = on_writer!(self.db, |pool| {
            sqlx::query(
                "INSERT INTO installations (id, channel, routing_key, name, config, secrets,
                     access_policy, status, agent, debounce_ms, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $10)",
            )
            .bind(&id)
            .bind(&new.channel)
            .bind(routing_key)
            .bind(&new.name)
            .bind(&config)
            .bind(sealed.as_deref())
            .bind(new.access_policy.as_str())
            .bind(&new.agent)
            .bind(new.debounce_ms)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    what: format!(
                        "an installation for channel {} with routing key {} already exists",
                        new.channel, new.routing_key
                    ),
                });
            }
            Err(e) => return Err(fail(e)),
        }
        self.get(&id).await?.ok_or_else(|| StoreError::Corrupt {
            what: format!("installation {id} vanished right after it was created"),
        })
    }

    /// The installation `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Installation>, StoreError> {
        if !storable_key(id) {
            return Ok(None);
        }
        let fail = StoreError::query("installation get", self.backend());
        let sql = format!("SELECT {COLUMNS} FROM installations WHERE id = $1");
        let row: Option<InstallationRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        row.map(|r| r.open(&self.cipher)).transpose()
    }

    /// The installation of `channel` with `routing_key` (active or revoked), if any.
    pub async fn get_by_routing_key(
        &self,
        channel: &str,
        routing_key: &str,
    ) -> Result<Option<Installation>, StoreError> {
        if !storable_key(channel) || !storable_key(routing_key) {
            return Ok(None);
        }
        let fail = StoreError::query("installation get by routing key", self.backend());
        let sql =
            format!("SELECT {COLUMNS} FROM installations WHERE channel = $1 AND routing_key = $2");
        let row: Option<InstallationRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(channel)
                .bind(routing_key)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        row.map(|r| r.open(&self.cipher)).transpose()
    }

    /// Every installation, oldest first.
    pub async fn list(&self) -> Result<Vec<Installation>, StoreError> {
        let fail = StoreError::query("installation list", self.backend());
        let sql = format!("SELECT {COLUMNS} FROM installations ORDER BY created_at_ms, id");
        let rows: Vec<InstallationRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql).fetch_all(pool).await.map_err(fail)?
        });
        rows.into_iter().map(|r| r.open(&self.cipher)).collect()
    }

    /// Every installation, oldest first, each opened on its own: a row whose secrets cannot be
    /// opened (wrong key, corrupt row) is its own `Err` instead of failing the whole list.
    pub async fn list_each(&self) -> Result<Vec<Result<Installation, StoreError>>, StoreError> {
        let fail = StoreError::query("installation list", self.backend());
        let sql = format!("SELECT {COLUMNS} FROM installations ORDER BY created_at_ms, id");
        let rows: Vec<InstallationRow> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql).fetch_all(pool).await.map_err(fail)?
        });
        Ok(rows.into_iter().map(|r| r.open(&self.cipher)).collect())
    }

    /// Marks the installation revoked; returns whether it exists.
    pub async fn revoke(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.update(
            "installation revoke",
            "UPDATE installations SET status = 'revoked', updated_at_ms = $2 WHERE id = $1",
            id,
            None,
            now_ms,
        )
        .await
    }

    /// Puts a revoked installation back in service; returns whether it exists. Its sessions,
    /// bindings and secrets are as they were when it was revoked.
    pub async fn restore(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.update(
            "installation restore",
            "UPDATE installations SET status = 'active', updated_at_ms = $2 WHERE id = $1",
            id,
            None,
            now_ms,
        )
        .await
    }

    /// Writes the operator-editable settings of installation `id` in one statement: routing
    /// key, name, config, policy, agent and debounce (checked like [`create`](Self::create)).
    /// Returns whether it exists; a routing key another installation of the channel holds is
    /// [`StoreError::Conflict`].
    pub async fn update_settings(
        &self,
        id: &str,
        settings: &InstallationSettings,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        use hygiene::{MAX_NAME_BYTES, check};
        check("routing_key", &settings.routing_key, MAX_NAME_BYTES).map_err(invalid)?;
        check("name", &settings.name, MAX_NAME_BYTES).map_err(invalid)?;
        check("agent", &settings.agent, MAX_NAME_BYTES).map_err(invalid)?;
        check_map("config", &settings.config)?;
        check_debounce(settings.debounce_ms)?;
        let routing_key = if settings.routing_key.is_empty() {
            id
        } else {
            &settings.routing_key
        };
        let config = serde_json::to_string(&settings.config).unwrap_or_else(|_| "{}".into());
        let fail = StoreError::query("installation update", self.backend());
        let result = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE installations SET routing_key = $2, name = $3, config = $4,
                     access_policy = $5, agent = $6, debounce_ms = $7, updated_at_ms = $8
                 WHERE id = $1",
            )
            .bind(id)
            .bind(routing_key)
            .bind(&settings.name)
            .bind(&config)
            .bind(settings.access_policy.as_str())
            .bind(&settings.agent)
            .bind(settings.debounce_ms)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match result {
            Ok(affected) => Ok(affected > 0),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict {
                what: format!(
                    "another installation of the channel already has routing key {routing_key}"
                ),
            }),
            Err(e) => Err(fail(e)),
        }
    }

    /// Binds the installation to `agent`; returns whether it exists.
    pub async fn set_agent(&self, id: &str, agent: &str, now_ms: i64) -> Result<bool, StoreError> {
        hygiene::check("agent", agent, hygiene::MAX_NAME_BYTES).map_err(invalid)?;
        self.update(
            "installation set agent",
            "UPDATE installations SET agent = $3, updated_at_ms = $2 WHERE id = $1",
            id,
            Some(Value::Text(agent)),
            now_ms,
        )
        .await
    }

    /// Changes the identity policy; returns whether the installation exists.
    pub async fn set_access_policy(
        &self,
        id: &str,
        policy: AccessPolicy,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.update(
            "installation set access policy",
            "UPDATE installations SET access_policy = $3, updated_at_ms = $2 WHERE id = $1",
            id,
            Some(Value::Text(policy.as_str())),
            now_ms,
        )
        .await
    }

    /// Changes the debounce window (1 ms to one hour); returns whether the installation exists.
    pub async fn set_debounce_ms(
        &self,
        id: &str,
        debounce_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_debounce(debounce_ms)?;
        self.update(
            "installation set debounce",
            "UPDATE installations SET debounce_ms = $3, updated_at_ms = $2 WHERE id = $1",
            id,
            Some(Value::Int(debounce_ms)),
            now_ms,
        )
        .await
    }

    /// Replaces the installation's secrets (sealed again with a fresh nonce); returns whether it
    /// exists.
    pub async fn set_secrets(
        &self,
        id: &str,
        secrets: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_map("secrets", secrets)?;
        let sealed = (!secrets.is_empty()).then(|| self.cipher.encrypt(id, secrets));
        self.update(
            "installation set secrets",
            "UPDATE installations SET secrets = $3, updated_at_ms = $2 WHERE id = $1",
            id,
            Some(Value::Bytes(sealed.as_deref())),
            now_ms,
        )
        .await
    }

    /// Replaces the installation's config map; returns whether it exists.
    pub async fn set_config(
        &self,
        id: &str,
        config: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        check_map("config", config)?;
        let text = serde_json::to_string(config).unwrap_or_else(|_| "{}".into());
        self.update(
            "installation set config",
            "UPDATE installations SET config = $3, updated_at_ms = $2 WHERE id = $1",
            id,
            Some(Value::Text(&text)),
            now_ms,
        )
        .await
    }

    /// Takes the long-connection lease of installation `id` for `token` until `now_ms + ttl_ms`
    /// (compare-and-set): succeeds only if the installation is active and the lease is free,
    /// expired, or already `token`'s. Returns whether `token` holds the lease now.
    pub async fn acquire_lease(
        &self,
        id: &str,
        token: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.lease_update(
            "installation lease acquire",
            "UPDATE installations SET lease_token = $2, lease_expires_at_ms = $3 + $4
             WHERE id = $1 AND status = 'active'
               AND (lease_token IS NULL OR lease_expires_at_ms IS NULL
                    OR lease_expires_at_ms <= $3 OR lease_token = $2)",
            id,
            token,
            now_ms,
            ttl_ms,
        )
        .await
    }

    /// Extends `token`'s lease of installation `id` to `now_ms + ttl_ms`. False when the token
    /// no longer holds it (another owner took it over) or the installation was revoked: the
    /// caller must close its connection.
    pub async fn renew_lease(
        &self,
        id: &str,
        token: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.lease_update(
            "installation lease renew",
            "UPDATE installations SET lease_expires_at_ms = $3 + $4
             WHERE id = $1 AND status = 'active' AND lease_token = $2",
            id,
            token,
            now_ms,
            ttl_ms,
        )
        .await
    }

    /// Gives the lease of installation `id` up if `token` holds it; returns whether it did.
    pub async fn release_lease(&self, id: &str, token: &str) -> Result<bool, StoreError> {
        let fail = StoreError::query("installation lease release", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE installations SET lease_token = NULL, lease_expires_at_ms = NULL
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// The current lease of installation `id`: `(token, expires_at_ms)`, if any.
    pub async fn lease(&self, id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let fail = StoreError::query("installation lease read", self.backend());
        let row: Option<(Option<String>, Option<i64>)> = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT lease_token, lease_expires_at_ms FROM installations WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        Ok(match row {
            Some((Some(token), Some(expires))) => Some((token, expires)),
            _ => None,
        })
    }

    async fn lease_update(
        &self,
        op: &'static str,
        sql: &str,
        id: &str,
        token: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query(op, self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(sql)
                .bind(id)
                .bind(token)
                .bind(now_ms)
                .bind(ttl_ms)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Runs a one-row update `sql` with `$1` = id, `$2` = now and an optional `$3`.
    async fn update(
        &self,
        op: &'static str,
        sql: &str,
        id: &str,
        value: Option<Value<'_>>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query(op, self.backend());
        let affected = on_writer!(self.db, |pool| {
            let query = sqlx::query(sql).bind(id).bind(now_ms);
            let query = match value {
                None => query,
                Some(Value::Text(text)) => query.bind(text),
                Some(Value::Int(int)) => query.bind(int),
                Some(Value::Bytes(bytes)) => query.bind(bytes),
            };
            query.execute(pool).await.map_err(fail)?.rows_affected()
        });
        Ok(affected > 0)
    }
}

/// A value for the third placeholder of [`InstallationStore::update`].
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Bytes(Option<&'a [u8]>),
}

fn check_debounce(debounce_ms: i64) -> Result<(), StoreError> {
    hygiene::check_debounce_ms(debounce_ms).map_err(|what| StoreError::Invalid { what })
}

fn invalid(problem: hygiene::Unstorable) -> StoreError {
    StoreError::Invalid {
        what: format!("installation: {problem}"),
    }
}

/// Whether `key` could be a stored id or routing key: no NUL (which PostgreSQL cannot even
/// compare) and within [`hygiene::MAX_ID_BYTES`]. A lookup of anything else finds nothing.
fn storable_key(key: &str) -> bool {
    hygiene::check("key", key, hygiene::MAX_ID_BYTES).is_ok()
}

/// Config or secret names and values: no NUL, names up to [`hygiene::MAX_NAME_BYTES`], values
/// up to [`hygiene::MAX_VALUE_BYTES`].
fn check_map(what: &str, map: &BTreeMap<String, String>) -> Result<(), StoreError> {
    for (key, value) in map {
        hygiene::check(&format!("{what} name"), key, hygiene::MAX_NAME_BYTES).map_err(invalid)?;
        hygiene::check(
            &format!("{what}.{}", hygiene::printable(key)),
            value,
            hygiene::MAX_VALUE_BYTES,
        )
        .map_err(invalid)?;
    }
    Ok(())
}

/// Every value of a new installation: storable, within its bound ([`crate::hygiene`]).
fn check_new(new: &NewInstallation) -> Result<(), StoreError> {
    use hygiene::{MAX_NAME_BYTES, check};
    check("channel", &new.channel, MAX_NAME_BYTES).map_err(invalid)?;
    check("routing_key", &new.routing_key, MAX_NAME_BYTES).map_err(invalid)?;
    check("name", &new.name, MAX_NAME_BYTES).map_err(invalid)?;
    check("agent", &new.agent, MAX_NAME_BYTES).map_err(invalid)?;
    check_map("config", &new.config)?;
    check_map("secrets", &new.secrets)?;
    check_debounce(new.debounce_ms)
}
