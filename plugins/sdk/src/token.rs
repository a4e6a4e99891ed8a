//! Access tokens cached in the host's `kv` until they expire.
//!
//! Channels that authenticate API calls with a short-lived token (fetched with the app's
//! credentials) should fetch it once per lifetime, not once per call. Instance memory does not
//! survive between calls (the host may recycle the instance at any time), so the token lives in
//! `kv` with a time-to-live a little shorter than its own: [`get_or_refresh`].
//!
//! ```
//! use switchboard_plugin_sdk::token::{self, Fresh, MemoryKv};
//! let store = MemoryKv::default();
//! let first: Result<String, String> =
//!     token::get_or_refresh(&store, "token", || Ok(Fresh { token: "t-1".into(), expires_in_ms: 7_200_000 }));
//! let second: Result<String, String> =
//!     token::get_or_refresh(&store, "token", || Err("not called: the cached token is used".into()));
//! assert_eq!(first.unwrap(), "t-1");
//! assert_eq!(second.unwrap(), "t-1");
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::kv;

/// The most of a token's lifetime given up so that a cached token is never used just as it
/// expires: one minute, or half the lifetime of a shorter-lived token.
const EXPIRY_MARGIN_MS: u64 = 60_000;

/// A key/value store with time-to-live: [`HostKv`] in the host, [`MemoryKv`] in tests.
pub trait Store {
    /// A live value, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, kv::Error>;
    /// Stores a value that expires after `ttl_ms`.
    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), kv::Error>;
    /// Removes a value; whether it existed.
    fn delete(&self, key: &str) -> Result<bool, kv::Error>;
}

/// The host's `kv` (the manifest must request `kv`). Outside the host (a native build) every
/// operation answers `unavailable`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostKv;

impl Store for HostKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, kv::Error> {
        #[cfg(target_family = "wasm")]
        {
            kv::get(key)
        }
        #[cfg(not(target_family = "wasm"))]
        {
            let _ = key;
            Err(outside_the_host())
        }
    }
    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), kv::Error> {
        #[cfg(target_family = "wasm")]
        {
            kv::set(key, value, Some(ttl_ms))
        }
        #[cfg(not(target_family = "wasm"))]
        {
            let _ = (key, value, ttl_ms);
            Err(outside_the_host())
        }
    }
    fn delete(&self, key: &str) -> Result<bool, kv::Error> {
        #[cfg(target_family = "wasm")]
        {
            kv::delete(key)
        }
        #[cfg(not(target_family = "wasm"))]
        {
            let _ = key;
            Err(outside_the_host())
        }
    }
}

#[cfg(not(target_family = "wasm"))]
fn outside_the_host() -> kv::Error {
    kv::Error::Unavailable("the host's kv is only reachable inside the host".into())
}

/// An in-memory [`Store`] for native tests (time-to-live is recorded, not enforced).
#[derive(Debug, Default)]
pub struct MemoryKv {
    values: RefCell<HashMap<String, (Vec<u8>, u64)>>,
}

impl MemoryKv {
    /// The time-to-live `key` was last stored with.
    #[must_use]
    pub fn ttl_ms(&self, key: &str) -> Option<u64> {
        self.values.borrow().get(key).map(|(_, ttl)| *ttl)
    }
}

impl Store for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, kv::Error> {
        Ok(self
            .values
            .borrow()
            .get(key)
            .map(|(value, _)| value.clone()))
    }
    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), kv::Error> {
        self.values
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), ttl_ms));
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<bool, kv::Error> {
        Ok(self.values.borrow_mut().remove(key).is_some())
    }
}

/// A token just fetched from the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    /// The token.
    pub token: String,
    /// How long the channel says it is valid, in milliseconds.
    pub expires_in_ms: u64,
}

/// The token cached under `key`, or a fresh one from `refresh`, cached until shortly before it
/// expires.
///
/// The cache is an optimisation, never a reason to fail: a store that cannot be read means a
/// refresh, one that cannot be written means the next call refreshes again. Only `refresh`'s own
/// error is returned.
pub fn get_or_refresh<E>(
    store: &impl Store,
    key: &str,
    refresh: impl FnOnce() -> Result<Fresh, E>,
) -> Result<String, E> {
    if let Ok(Some(bytes)) = store.get(key)
        && let Ok(token) = String::from_utf8(bytes)
        && !token.is_empty()
    {
        return Ok(token);
    }
    let fresh = refresh()?;
    let margin = EXPIRY_MARGIN_MS.min(fresh.expires_in_ms / 2);
    let ttl_ms = fresh.expires_in_ms - margin;
    if ttl_ms > 0 {
        let _ = store.set(key, fresh.token.as_bytes(), ttl_ms);
    }
    Ok(fresh.token)
}

/// Forgets the token under `key` (the channel refused it before its time): the next
/// [`get_or_refresh`] fetches a new one.
pub fn invalidate(store: &impl Store, key: &str) {
    let _ = store.delete(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(token: &str, expires_in_ms: u64) -> Result<Fresh, String> {
        Ok(Fresh {
            token: token.into(),
            expires_in_ms,
        })
    }

    #[test]
    fn a_cached_token_is_reused_until_invalidated() {
        let store = MemoryKv::default();
        assert_eq!(
            get_or_refresh(&store, "t", || fresh("one", 7_200_000)),
            Ok("one".into())
        );
        assert_eq!(store.ttl_ms("t"), Some(7_200_000 - 60_000));
        assert_eq!(
            get_or_refresh(&store, "t", || fresh("two", 7_200_000)),
            Ok("one".into())
        );
        invalidate(&store, "t");
        assert_eq!(
            get_or_refresh(&store, "t", || fresh("two", 7_200_000)),
            Ok("two".into())
        );
    }

    #[test]
    fn short_lived_tokens_keep_half_their_life_and_zero_is_not_cached() {
        let store = MemoryKv::default();
        get_or_refresh(&store, "short", || fresh("s", 10_000)).unwrap();
        assert_eq!(store.ttl_ms("short"), Some(5_000));
        get_or_refresh(&store, "none", || fresh("n", 0)).unwrap();
        assert_eq!(store.ttl_ms("none"), None);
    }

    #[test]
    fn a_refresh_error_is_returned_and_an_unreachable_store_means_a_refresh() {
        let store = MemoryKv::default();
        assert_eq!(
            get_or_refresh(&store, "t", || Err::<Fresh, _>("refused".to_string())),
            Err("refused".into())
        );
        // Natively the host kv is unavailable: every call refreshes, none fails for it.
        assert_eq!(
            get_or_refresh(&HostKv, "t", || fresh("direct", 1_000)),
            Ok("direct".into())
        );
    }
}
