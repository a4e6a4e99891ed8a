//! The `kv` capability: a key/value store scoped to (plugin, installation), with TTLs and the
//! quota granted to the plugin, kept by the host's [`KvBackend`] (the host database's
//! `store::KvStore`, wired in by `app`).

use std::sync::Arc;

use super::call::{Activity, CallState};
use crate::bindings::switchboard::channel::kv::{Error, Host};
use crate::domain::{KvBackend, KvError, KvScope};

/// Longest key accepted.
const MAX_KEY_BYTES: usize = 256;

impl CallState {
    fn kv_target(&self, key: &str) -> Result<(Arc<dyn KvBackend>, KvScope), Error> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidKey(format!(
                "keys must be 1..={MAX_KEY_BYTES} bytes, got {}",
                key.len()
            )));
        }
        if key.contains('\0') {
            // PostgreSQL TEXT cannot hold NUL; refuse it on every backend alike.
            return Err(Error::InvalidKey(
                "keys may not contain NUL characters".into(),
            ));
        }
        let store = self
            .services
            .kv
            .clone()
            .ok_or_else(|| Error::Unavailable("this host runs without a database".into()))?;
        let scope = KvScope {
            plugin: self.plugin.to_string(),
            installation: self.installation.id.clone(),
        };
        Ok((store, scope))
    }

    fn kv_unavailable(&self, op: &str, error: impl std::fmt::Display) -> Error {
        tracing::error!(plugin = %self.plugin, installation = %self.installation.id, "kv {op} failed: {error}");
        Error::Unavailable(format!("kv {op} failed; retry later"))
    }
}

impl Host for CallState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        let (store, scope) = self.kv_target(&key)?;
        let now = self.services.clock.now_ms();
        self.set_activity(Activity::HostImport("kv.get"));
        let result = store.get(&scope, &key, now).await;
        self.set_activity(Activity::Guest);
        result.map_err(|e| self.kv_unavailable("get", e))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        let (store, scope) = self.kv_target(&key)?;
        let Some(quota) = self.grants.kv else {
            return Err(Error::Unavailable(
                "the kv capability is not granted".into(),
            ));
        };
        let now = self.services.clock.now_ms();
        let expires = ttl_ms.map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
        self.set_activity(Activity::HostImport("kv.set"));
        let result = store.set(&scope, &key, &value, expires, now, quota).await;
        self.set_activity(Activity::Guest);
        match result {
            Ok(()) => Ok(()),
            Err(KvError::ValueTooLarge { max, .. }) => Err(Error::ValueTooLarge(max)),
            Err(KvError::QuotaExceeded { what }) => Err(Error::QuotaExceeded(what)),
            Err(e @ KvError::Unavailable(_)) => Err(self.kv_unavailable("set", e)),
        }
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        let (store, scope) = self.kv_target(&key)?;
        self.set_activity(Activity::HostImport("kv.delete"));
        let result = store.delete(&scope, &key).await;
        self.set_activity(Activity::Guest);
        result.map_err(|e| self.kv_unavailable("delete", e))
    }
}
