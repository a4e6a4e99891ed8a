//! The plugin kv vocabulary: whose data an operation touches ([`KvScope`]), how much a scope may
//! hold ([`KvQuota`]) and the backend the `kv` capability reads and writes through
//! ([`KvBackend`]; `store::KvStore` implements it on the host database).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;

/// Whose data a kv operation touches: one plugin's view of one channel installation.
///
/// Two scopes never see each other's keys, even when only one of the fields differs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvScope {
    /// The plugin's name, as in its manifest.
    pub plugin: String,
    /// The installation (e.g. one bot of a channel) the call is made for.
    pub installation: String,
}

impl KvScope {
    /// Builds a scope from a plugin name and an installation id.
    pub fn new(plugin: impl Into<String>, installation: impl Into<String>) -> Self {
        KvScope {
            plugin: plugin.into(),
            installation: installation.into(),
        }
    }
}

/// Limits on one scope's kv data, from the plugin manifest / operator config.
#[derive(Debug, Clone, Copy)]
pub struct KvQuota {
    /// Most live keys the scope may hold.
    pub max_keys: u64,
    /// Most bytes the scope's live values may add up to.
    pub max_bytes: u64,
    /// Largest single value, in bytes.
    pub max_value_bytes: u64,
}

/// Why a [`KvBackend`] refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The value alone is larger than `max_value_bytes`; nothing was written.
    #[error("kv value too large: {len} bytes, the limit is {max} bytes")]
    ValueTooLarge {
        /// Length of the refused value in bytes.
        len: u64,
        /// The `max_value_bytes` limit.
        max: u64,
    },
    /// Writing would take the scope over its key or byte quota; nothing was written.
    ///
    /// `what` starts with `"keys"` or `"bytes"` and then says by how much.
    #[error("kv quota exceeded: {what}")]
    QuotaExceeded {
        /// Which limit (`keys …` or `bytes …`) and the numbers involved.
        what: String,
    },
    /// The backend failed (e.g. the database is down); a later retry may succeed.
    #[error(transparent)]
    Unavailable(Box<dyn Error + Send + Sync>),
}

/// The future a [`KvBackend`] operation returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// Where plugin kv data lives: what the `kv` capability needs, whatever stores it.
///
/// Expiry is the caller's clock (`now_ms`): a key whose expiry is at or before `now_ms` is
/// absent. Quotas count live keys and live value bytes of the scope.
pub trait KvBackend: Send + Sync {
    /// Reads `key` in `scope`; a missing or expired key reads as `None`.
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        now_ms: i64,
    ) -> KvFuture<'a, Option<Vec<u8>>>;

    /// Writes `value` under `key` in `scope` until `expires_at_ms` (`None`: never expires),
    /// or refuses with nothing changed when it would exceed `quota`.
    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
    ) -> KvFuture<'a, ()>;

    /// Deletes `key` from `scope`; whether a row was removed.
    fn delete<'a>(&'a self, scope: &'a KvScope, key: &'a str) -> KvFuture<'a, bool>;

    /// Writes like [`KvBackend::set`] unless `key` holds a live value for which `keep` is
    /// true; then nothing changes and that value is returned (`None`: written). The default
    /// reads, then writes: enough for a backend used by one process. A backend shared by
    /// several processes (the database store) overrides it with one locked transaction, so two
    /// writers racing on a key are ordered.
    #[allow(clippy::too_many_arguments)]
    fn set_unless<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        expires_at_ms: Option<i64>,
        now_ms: i64,
        quota: KvQuota,
        keep: &'a (dyn Fn(&[u8]) -> bool + Send + Sync),
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if let Some(current) = self.get(scope, key, now_ms).await?
                && keep(&current)
            {
                return Ok(Some(current));
            }
            self.set(scope, key, value, expires_at_ms, now_ms, quota)
                .await?;
            Ok(None)
        })
    }
}
