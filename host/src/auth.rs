//! Bearer tokens the host checks: the admin token, the metrics token and worker agents' tokens.
//!
//! A configured token is kept only as its SHA-256 ([`TokenDigest`]); a presented token is hashed
//! and the two digests are compared with the one constant-time helper of the host and the
//! plugins, [`switchboard_plugin_sdk::secret::eq`]. Comparing fixed-size digests also hides the
//! configured token's length. Owns no HTTP: handlers extract the header ([`bearer`]) and answer.

use std::fmt;

use sha2::{Digest, Sha256};
use switchboard_plugin_sdk::secret;

/// The fewest characters an admin token may have (`[server] admin_token`): shorter ones are
/// refused at start-up.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// A secret token kept as its SHA-256 only; the token itself is dropped once hashed.
///
/// Equality between two digests is constant-time too; `Debug` never shows the digest.
#[derive(Clone, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Hashes a configured token.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token this digest was made from: SHA-256(presented) compared
    /// with the kept digest in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self == &TokenDigest::of(presented)
    }

    /// A 32-byte key for `purpose`, derived from the digest (SHA-256 of the purpose and the
    /// digest): replicas configured with the same token derive the same key, and changing the
    /// token changes every derived key. The console signs its session cookies with one.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(purpose.as_bytes());
        hasher.update([0u8]);
        hasher.update(self.0);
        hasher.finalize().into()
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &TokenDigest) -> bool {
        secret::eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(***)")
    }
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_matches_its_token_only() {
        let digest = TokenDigest::of("0123456789abcdef0123456789abcdef");
        assert!(digest.matches("0123456789abcdef0123456789abcdef"));
        assert!(!digest.matches("0123456789abcdef0123456789abcdeF"));
        assert!(!digest.matches("0123456789abcdef0123456789abcde"));
        assert!(!digest.matches(""));
        assert_eq!(digest, TokenDigest::of("0123456789abcdef0123456789abcdef"));
        assert_ne!(digest, TokenDigest::of("another token"));
    }

    #[test]
    fn derived_keys_follow_the_token_and_the_purpose() {
        let digest = TokenDigest::of("0123456789abcdef0123456789abcdef");
        let key = digest.derive_key("console");
        assert_eq!(
            key,
            TokenDigest::of("0123456789abcdef0123456789abcdef").derive_key("console")
        );
        assert_ne!(key, digest.derive_key("another purpose"));
        assert_ne!(key, TokenDigest::of("another token").derive_key("console"));
        assert_ne!(key, digest.0, "the key is not the digest itself");
    }

    #[test]
    fn debug_shows_no_digest() {
        let digest = TokenDigest::of("secret");
        let hex = hex::encode(digest.0);
        let shown = format!("{digest:?}");
        assert!(!shown.contains(&hex[..8]), "{shown}");
        assert_eq!(shown, "TokenDigest(***)");
    }

    #[test]
    fn bearer_reads_the_authorization_header() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer tok en".parse().unwrap());
        assert_eq!(bearer(&headers), Some("tok en"));
    }
}
