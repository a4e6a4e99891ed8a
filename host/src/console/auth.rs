//! Console sign-in: the session cookie and the per-session CSRF token.
//!
//! Owns the cookie's format, signature, expiry and attributes, the CSRF token derived from a
//! session, and the log-out list. It must not speak HTTP beyond reading the `Cookie` header and
//! writing `Set-Cookie` values, and must not hold any other state.
//!
//! A session cookie is `<id>.<expires_at_ms>.<tag>`: a random 128-bit id, its expiry, and an
//! HMAC-SHA256 tag over both under a key derived from the admin token's digest
//! ([`TokenDigest::derive_key`]). Nothing is stored on sign-in, so every replica configured with
//! the same admin token accepts the cookie, and changing the admin token signs every console
//! user out. Log-out adds the session id to an in-memory list until the cookie would have
//! expired anyway (per replica: a cookie copied before log-out stays valid on another replica
//! until its expiry). The CSRF token is an HMAC of the session id under the same key, so it
//! needs no storage either. Every tag and token is compared in constant time
//! ([`switchboard_plugin_sdk::secret::eq`]).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use switchboard_plugin_sdk::secret;

use crate::auth::TokenDigest;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "switchboard_console";
/// How long a console session lasts after sign-in (12 h); then the operator signs in again.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// The most signed-out sessions remembered at once (expired ones are forgotten first); past it
/// the oldest is forgotten, which only matters for a cookie copied before its log-out.
const MAX_REVOKED: usize = 10_000;
/// Purpose label of the derived signing key.
const KEY_PURPOSE: &str = "switchboard console session v1";

type HmacSha256 = Hmac<Sha256>;

/// A verified console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The random session id (hex).
    pub id: String,
    /// When the session ends (epoch ms).
    pub expires_at_ms: i64,
}

/// Signs and checks console sessions; `None` admin token = the console is disabled.
pub struct ConsoleAuth {
    admin: Option<TokenDigest>,
    key: [u8; 32],
    secure: bool,
    revoked: Mutex<HashMap<String, i64>>,
    /// Wrong sign-in tokens per client address: (failures, start of the window in epoch ms).
    failures: Mutex<HashMap<std::net::IpAddr, (u32, i64)>>,
}

/// Wrong tokens one address may present per [`SIGN_IN_WINDOW_MS`] before sign-in answers 429
/// without looking at the token (a guessing client learns nothing more until the window ends).
pub const SIGN_IN_FAILURES: u32 = 5;
/// The window of [`SIGN_IN_FAILURES`].
pub const SIGN_IN_WINDOW_MS: i64 = 60_000;
/// Addresses remembered at most; older windows are forgotten first when full.
const SIGN_IN_ADDRESSES: usize = 10_000;

impl std::fmt::Debug for ConsoleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleAuth")
            .field("enabled", &self.admin.is_some())
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl ConsoleAuth {
    /// The console of a host with this admin token; cookies are `Secure` when the host's
    /// public URL is https.
    pub fn new(admin: Option<TokenDigest>, public_url: &str) -> ConsoleAuth {
        let key = admin
            .as_ref()
            .map(|digest| digest.derive_key(KEY_PURPOSE))
            .unwrap_or([0; 32]);
        ConsoleAuth {
            admin,
            key,
            secure: public_url
                .get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")),
            revoked: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `address` may try a sign-in at `now_ms`; `Err(seconds)` until its window of
    /// failures ends.
    pub fn sign_in_allowed(&self, address: std::net::IpAddr, now_ms: i64) -> Result<(), u64> {
        let failures = self.failures.lock().expect("sign-in failures");
        match failures.get(&address) {
            Some(&(count, since))
                if count >= SIGN_IN_FAILURES && now_ms < since + SIGN_IN_WINDOW_MS =>
            {
                let left_ms = since + SIGN_IN_WINDOW_MS - now_ms;
                Err(u64::try_from(left_ms).unwrap_or(0).div_ceil(1_000).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong token from `address` at `now_ms`.
    pub fn sign_in_failed(&self, address: std::net::IpAddr, now_ms: i64) {
        let mut failures = self.failures.lock().expect("sign-in failures");
        if failures.len() >= SIGN_IN_ADDRESSES && !failures.contains_key(&address) {
            failures.retain(|_, (_, since)| now_ms < *since + SIGN_IN_WINDOW_MS);
            if failures.len() >= SIGN_IN_ADDRESSES {
                return;
            }
        }
        let entry = failures.entry(address).or_insert((0, now_ms));
        if now_ms >= entry.1 + SIGN_IN_WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }

    /// A right token from `address`: its failures are forgotten.
    pub fn sign_in_succeeded(&self, address: std::net::IpAddr) {
        self.failures
            .lock()
            .expect("sign-in failures")
            .remove(&address);
    }

    /// Whether an admin token is configured (else the console refuses every sign-in).
    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether `presented` is the admin token (constant time; false while disabled).
    pub fn token_matches(&self, presented: &str) -> bool {
        self.admin
            .as_ref()
            .is_some_and(|digest| digest.matches(presented))
    }

    /// A new session starting at `now_ms`, and its cookie value.
    pub fn issue(&self, now_ms: i64) -> (ConsoleSession, String) {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let session = ConsoleSession {
            id: hex::encode(id),
            expires_at_ms: now_ms.saturating_add(SESSION_TTL_MS),
        };
        let tag = self.tag(&["session", &session.id, &session.expires_at_ms.to_string()]);
        let value = format!("{}.{}.{tag}", session.id, session.expires_at_ms);
        (session, value)
    }

    /// The session of a cookie value, if its tag is right, it has not expired and it was not
    /// signed out.
    pub fn verify(&self, value: &str, now_ms: i64) -> Option<ConsoleSession> {
        if !self.enabled() {
            return None;
        }
        let mut parts = value.split('.');
        let (id, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let expected = self.tag(&["session", id, expires]);
        // Check the tag before trusting anything else the cookie says.
        if !secret::eq(expected.as_bytes(), tag.as_bytes()) {
            return None;
        }
        let expires_at_ms: i64 = expires.parse().ok()?;
        if expires_at_ms <= now_ms {
            return None;
        }
        if self.revoked.lock().expect("revoked lock").contains_key(id) {
            return None;
        }
        Some(ConsoleSession {
            id: id.to_string(),
            expires_at_ms,
        })
    }

    /// The CSRF token of a session (the hidden field of every console form).
    pub fn csrf_token(&self, session: &ConsoleSession) -> String {
        self.tag(&["csrf", &session.id])
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub fn csrf_matches(&self, session: &ConsoleSession, presented: &str) -> bool {
        secret::eq(self.csrf_token(session).as_bytes(), presented.as_bytes())
    }

    /// Signs the session out on this host until it would have expired.
    pub fn revoke(&self, session: &ConsoleSession, now_ms: i64) {
        let mut revoked = self.revoked.lock().expect("revoked lock");
        revoked.retain(|_, expires| *expires > now_ms);
        if revoked.len() >= MAX_REVOKED
            && let Some(oldest) = revoked
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
        {
            revoked.remove(&oldest);
        }
        revoked.insert(session.id.clone(), session.expires_at_ms);
    }

    /// The `Set-Cookie` value that stores `value` for the session's lifetime.
    pub fn set_cookie(&self, value: &str) -> String {
        self.cookie_header(value, SESSION_TTL_MS / 1000)
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        self.cookie_header("", 0)
    }

    fn cookie_header(&self, value: &str, max_age_s: i64) -> String {
        // Path=/: the session event stream under /api reads the cookie too.
        let mut header = format!(
            "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"
        );
        if self.secure {
            header.push_str("; Secure");
        }
        header
    }

    fn tag(&self, fields: &[&str]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for field in fields {
            // Length-prefixed, so no two field lists sign the same bytes.
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The console cookie's value among the request's `Cookie` headers, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000_000;

    fn auth() -> ConsoleAuth {
        ConsoleAuth::new(Some(TokenDigest::of(TOKEN)), "http://127.0.0.1:8080")
    }

    #[test]
    fn the_admin_token_signs_in_and_nothing_else() {
        let auth = auth();
        assert!(auth.token_matches(TOKEN));
        assert!(!auth.token_matches("0123456789abcdef0123456789abcdeF"));
        assert!(!auth.token_matches(""));
        let disabled = ConsoleAuth::new(None, "http://x");
        assert!(!disabled.enabled());
        assert!(!disabled.token_matches(""));
        assert!(!disabled.token_matches(TOKEN));
    }

    #[test]
    fn an_issued_cookie_verifies_until_it_expires() {
        let auth = auth();
        let (session, value) = auth.issue(NOW);
        assert_eq!(session.expires_at_ms, NOW + SESSION_TTL_MS);
        assert_eq!(auth.verify(&value, NOW + 1), Some(session.clone()));
        assert_eq!(auth.verify(&value, NOW + SESSION_TTL_MS - 1), Some(session));
        assert_eq!(auth.verify(&value, NOW + SESSION_TTL_MS), None);
        // Two sign-ins are two sessions.
        let (other, _) = auth.issue(NOW);
        assert_ne!(other, auth.issue(NOW).0);
    }

    #[test]
    fn a_tampered_or_foreign_cookie_is_refused() {
        let auth = auth();
        let (_, value) = auth.issue(NOW);
        let parts: Vec<&str> = value.split('.').collect();
        // A later expiry with the old tag.
        let extended = format!("{}.{}.{}", parts[0], NOW + 10 * SESSION_TTL_MS, parts[2]);
        assert_eq!(auth.verify(&extended, NOW), None);
        // Another id with the old tag.
        let other_id = format!("{}.{}.{}", "f".repeat(32), parts[1], parts[2]);
        assert_eq!(auth.verify(&other_id, NOW), None);
        // A flipped tag character.
        let mut flipped = value.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(auth.verify(&String::from_utf8(flipped).unwrap(), NOW), None);
        for junk in ["", "...", "a.b.c", &format!("{value}.x"), parts[0]] {
            assert_eq!(auth.verify(junk, NOW), None, "{junk:?}");
        }
        // Signed under another admin token.
        let stranger = ConsoleAuth::new(
            Some(TokenDigest::of("another admin token, long enough")),
            "http://x",
        );
        assert_eq!(stranger.verify(&value, NOW), None);
        // A disabled console accepts nothing, even a cookie signed with its all-zero key.
        let disabled = ConsoleAuth::new(None, "http://x");
        let (_, zero_keyed) = disabled.issue(NOW);
        assert_eq!(disabled.verify(&zero_keyed, NOW), None);
    }

    #[test]
    fn a_signed_out_session_is_refused() {
        let auth = auth();
        let (session, value) = auth.issue(NOW);
        let (other, other_value) = auth.issue(NOW);
        auth.revoke(&session, NOW + 5);
        assert_eq!(auth.verify(&value, NOW + 6), None);
        assert_eq!(auth.verify(&other_value, NOW + 6), Some(other));
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let auth = auth();
        let (session, _) = auth.issue(NOW);
        let (other, _) = auth.issue(NOW);
        let token = auth.csrf_token(&session);
        assert!(auth.csrf_matches(&session, &token));
        assert!(!auth.csrf_matches(&other, &token));
        assert!(!auth.csrf_matches(&session, ""));
        assert!(!auth.csrf_matches(&session, &token[..token.len() - 1]));
        assert_ne!(token, auth.csrf_token(&other));
    }

    #[test]
    fn the_cookie_attributes_follow_the_public_url() {
        let plain = auth().set_cookie("v");
        assert_eq!(
            plain,
            "switchboard_console=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        let https = ConsoleAuth::new(Some(TokenDigest::of(TOKEN)), "HTTPS://switchboard.example");
        assert!(
            https.set_cookie("v").ends_with("; Secure"),
            "{}",
            https.set_cookie("v")
        );
        assert!(https.clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie_value(&headers), None);
        headers.append(
            header::COOKIE,
            "a=1; switchboard_console_x=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), None);
        headers.append(
            header::COOKIE,
            "b=3;  switchboard_console=abc.1.f ; c=4".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), Some("abc.1.f"));
    }
}
