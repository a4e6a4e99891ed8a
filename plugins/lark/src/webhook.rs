//! Webhook (HTTP callback) verification (lark-protocol §2): signature, AES-256-CBC decryption,
//! verification token, URL-verification challenge and the v1/v2 event envelopes.
//!
//! Order of checks: signature over the raw body (when present) → decrypt → parse → token. A URL
//! verification request is not signed by Lark, so an encrypted request without a signature is
//! only accepted when it decrypts to a `url_verification`. Hostile input never panics: every
//! failure is a [`WebhookRejection`] with a reason.

use std::fmt;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Header carrying the request timestamp used in the signature.
pub const HEADER_TIMESTAMP: &str = "X-Lark-Request-Timestamp";
/// Header carrying the request nonce used in the signature.
pub const HEADER_NONCE: &str = "X-Lark-Request-Nonce";
/// Header carrying the lowercase hex SHA-256 signature.
pub const HEADER_SIGNATURE: &str = "X-Lark-Signature";

type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256>;

/// The installation's webhook secrets.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookSecrets<'a> {
    /// Encrypt Key: enables decryption and the signature check.
    pub encrypt_key: Option<&'a str>,
    /// Verification Token: checked on every request when set.
    pub verification_token: Option<&'a str>,
}

/// An inbound webhook request.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// HTTP method (Lark always POSTs).
    pub method: &'a str,
    /// Headers as received; names are compared case-insensitively.
    pub headers: &'a [(String, String)],
    /// The exact request body bytes.
    pub body: &'a [u8],
}

/// The HTTP answer Lark expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// Response body.
    pub body: Vec<u8>,
}

/// Verified events and the answer to send once they are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvents {
    /// Plaintext event JSON payloads, ready for the decoder.
    pub payloads: Vec<Vec<u8>>,
    /// `200 {"msg":"success"}`.
    pub response: WebhookResponse,
}

/// A verified webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookVerdict {
    /// URL verification: answer `{"challenge":…}` immediately, nothing to ingest.
    Challenge(WebhookResponse),
    /// An event delivery.
    Events(WebhookEvents),
}

/// Why a webhook request was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookRejection {
    /// Signature missing or wrong.
    BadSignature(String),
    /// Verification token missing or wrong.
    BadToken(String),
    /// The `encrypt` field could not be decrypted (or no Encrypt Key is configured).
    DecryptFailed(String),
    /// Not a Lark webhook request.
    Malformed(String),
}

impl fmt::Display for WebhookRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookRejection::BadSignature(reason) => write!(f, "bad signature: {reason}"),
            WebhookRejection::BadToken(reason) => write!(f, "bad verification token: {reason}"),
            WebhookRejection::DecryptFailed(reason) => write!(f, "decryption failed: {reason}"),
            WebhookRejection::Malformed(reason) => write!(f, "malformed request: {reason}"),
        }
    }
}

impl std::error::Error for WebhookRejection {}

/// Verifies and unwraps one webhook request.
pub fn verify_webhook(
    request: &WebhookRequest<'_>,
    secrets: &WebhookSecrets<'_>,
) -> Result<WebhookVerdict, WebhookRejection> {
    if !request.method.eq_ignore_ascii_case("POST") {
        return Err(WebhookRejection::Malformed(format!(
            "Lark webhooks are POST requests, got {}",
            request.method
        )));
    }
    let encrypt_key = secrets.encrypt_key.filter(|key| !key.is_empty());
    let verification_token = secrets.verification_token.filter(|token| !token.is_empty());

    let signature = header(request.headers, HEADER_SIGNATURE).filter(|value| !value.is_empty());
    let mut signature_verified = false;
    if let (Some(key), Some(signature)) = (encrypt_key, signature) {
        let timestamp = header(request.headers, HEADER_TIMESTAMP).unwrap_or("");
        let nonce = header(request.headers, HEADER_NONCE).unwrap_or("");
        let expected = signature_hex(timestamp, nonce, key, request.body);
        if !constant_time_eq(
            expected.as_bytes(),
            signature.trim().to_ascii_lowercase().as_bytes(),
        ) {
            return Err(WebhookRejection::BadSignature(
                "X-Lark-Signature does not match sha256(timestamp + nonce + encrypt_key + body)"
                    .into(),
            ));
        }
        signature_verified = true;
    }

    let outer: Value = serde_json::from_slice(request.body)
        .map_err(|err| WebhookRejection::Malformed(format!("body is not JSON: {err}")))?;
    let Value::Object(outer_fields) = &outer else {
        return Err(WebhookRejection::Malformed(
            "body is not a JSON object".into(),
        ));
    };

    let (plaintext, envelope) = match outer_fields.get("encrypt") {
        Some(Value::String(ciphertext)) => {
            let key = encrypt_key.ok_or_else(|| {
                WebhookRejection::DecryptFailed(
                    "the request is encrypted but the installation has no `encrypt_key`".into(),
                )
            })?;
            let plaintext = decrypt(key, ciphertext).map_err(WebhookRejection::DecryptFailed)?;
            let envelope: Value = serde_json::from_slice(&plaintext).map_err(|_| {
                WebhookRejection::DecryptFailed(
                    "the decrypted body is not JSON (wrong encrypt key?)".into(),
                )
            })?;
            (plaintext, envelope)
        }
        Some(_) => {
            return Err(WebhookRejection::Malformed(
                "`encrypt` is not a string".into(),
            ));
        }
        None => (request.body.to_vec(), outer),
    };

    if envelope.get("type").and_then(Value::as_str) == Some("url_verification")
        && envelope.get("schema").is_none()
    {
        // Lark does not sign URL verification requests; the token is the check.
        check_token(verification_token, envelope.get("token"))?;
        let challenge = envelope
            .get("challenge")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                WebhookRejection::Malformed("url_verification without a string `challenge`".into())
            })?;
        let body = serde_json::json!({ "challenge": challenge }).to_string();
        return Ok(WebhookVerdict::Challenge(WebhookResponse {
            status: 200,
            content_type: "application/json".into(),
            body: body.into_bytes(),
        }));
    }

    if encrypt_key.is_some() && !signature_verified {
        return Err(WebhookRejection::BadSignature(
            "an Encrypt Key is configured but the request carries no X-Lark-Signature".into(),
        ));
    }

    let token = if envelope.get("schema").is_some() {
        envelope
            .get("header")
            .and_then(|header| header.get("token"))
    } else if envelope.get("uuid").is_some() {
        envelope.get("token")
    } else {
        return Err(WebhookRejection::Malformed(
            "neither a v2 (`schema`) nor a v1 (`uuid`) event envelope nor a url_verification"
                .into(),
        ));
    };
    check_token(verification_token, token)?;

    Ok(WebhookVerdict::Events(WebhookEvents {
        payloads: vec![plaintext],
        response: WebhookResponse {
            status: 200,
            content_type: "application/json; charset=utf-8".into(),
            body: br#"{"msg":"success"}"#.to_vec(),
        },
    }))
}

fn check_token(expected: Option<&str>, actual: Option<&Value>) -> Result<(), WebhookRejection> {
    let Some(expected) = expected else {
        return Ok(());
    };
    match actual.and_then(Value::as_str) {
        Some(actual) if constant_time_eq(actual.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(WebhookRejection::BadToken(
            "the verification token does not match the installation's".into(),
        )),
        None => Err(WebhookRejection::BadToken(
            "the request carries no verification token".into(),
        )),
    }
}

/// `lowercase_hex(sha256(timestamp + nonce + encrypt_key + body))`.
pub fn signature_hex(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(timestamp.as_bytes());
    hasher.update(nonce.as_bytes());
    hasher.update(encrypt_key.as_bytes());
    hasher.update(body);
    to_hex(&hasher.finalize())
}

/// Decrypts an `encrypt` field: base64 → IV (first 16 bytes) + AES-256-CBC ciphertext with key
/// `sha256(encrypt_key)` → PKCS#7-unpadded plaintext.
pub fn decrypt(encrypt_key: &str, ciphertext_base64: &str) -> Result<Vec<u8>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(ciphertext_base64.trim())
        .map_err(|err| format!("`encrypt` is not valid base64: {err}"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(format!(
            "`encrypt` decodes to {} bytes; expected a 16-byte IV plus a non-empty multiple of 16",
            raw.len()
        ));
    }
    let key = Sha256::digest(encrypt_key.as_bytes());
    let (iv, ciphertext) = raw.split_at(16);
    let decryptor = Aes256CbcDecryptor::new_from_slices(&key, iv)
        .map_err(|_| "invalid AES key or IV length".to_string())?;
    decryptor
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| "bad PKCS#7 padding after decryption (wrong encrypt key?)".to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Compares two byte strings without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_post(
        headers: &[(String, String)],
        body: &[u8],
        secrets: &WebhookSecrets<'_>,
    ) -> Result<WebhookVerdict, WebhookRejection> {
        let request = WebhookRequest {
            method: "POST",
            headers,
            body,
        };
        verify_webhook(&request, secrets)
    }

    #[test]
    fn documented_known_answer_decrypts() {
        // Known-answer test from the official docs (lark-protocol §2.3).
        let plaintext =
            decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").unwrap();
        assert_eq!(plaintext, b"hello world");
    }

    #[test]
    fn hostile_ciphertexts_are_rejected_without_panicking() {
        for input in [
            "",
            "!!!",
            "AAAA",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            &"A".repeat(44),
        ] {
            assert!(decrypt("k", input).is_err(), "{input:?} should not decrypt");
        }
        // Valid length, wrong key → padding error (with overwhelming probability).
        assert!(decrypt("wrong key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").is_err());
    }

    #[test]
    fn non_post_and_non_json_are_malformed() {
        let request = WebhookRequest {
            method: "GET",
            headers: &[],
            body: b"{}",
        };
        assert!(matches!(
            verify_webhook(&request, &WebhookSecrets::default()),
            Err(WebhookRejection::Malformed(_))
        ));
        for body in [&b"not json"[..], b"[]", b"{}", br#"{"encrypt":5}"#] {
            assert!(matches!(
                verify_post(&[], body, &WebhookSecrets::default()),
                Err(WebhookRejection::Malformed(_))
            ));
        }
    }

    #[test]
    fn encrypted_body_without_key_is_rejected() {
        let body = br#"{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}"#;
        assert!(matches!(
            verify_post(&[], body, &WebhookSecrets::default()),
            Err(WebhookRejection::DecryptFailed(reason)) if reason.contains("encrypt_key")
        ));
    }

    #[test]
    fn plain_event_token_is_checked() {
        let body = br#"{"schema":"2.0","header":{"token":"good","event_type":"x"},"event":{}}"#;
        let good = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("good"),
        };
        let bad = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("other"),
        };
        assert!(matches!(
            verify_post(&[], body, &good),
            Ok(WebhookVerdict::Events(events)) if events.payloads == vec![body.to_vec()]
        ));
        assert!(matches!(
            verify_post(&[], body, &bad),
            Err(WebhookRejection::BadToken(_))
        ));
        let v1 = br#"{"uuid":"u","type":"event_callback","event":{}}"#;
        assert!(matches!(
            verify_post(&[], v1, &good),
            Err(WebhookRejection::BadToken(reason)) if reason.contains("no verification token")
        ));
    }

    #[test]
    fn signed_plain_body_is_accepted_and_unsigned_rejected_when_key_is_set() {
        let body = br#"{"schema":"2.0","header":{"token":"t"},"event":{}}"#;
        let secrets = WebhookSecrets {
            encrypt_key: Some("key"),
            verification_token: Some("t"),
        };
        let signature = signature_hex("1", "2", "key", body);
        let headers = vec![
            (HEADER_TIMESTAMP.to_string(), "1".to_string()),
            (HEADER_NONCE.to_string(), "2".to_string()),
            (HEADER_SIGNATURE.to_string(), signature.to_uppercase()),
        ];
        assert!(matches!(
            verify_post(&headers, body, &secrets),
            Ok(WebhookVerdict::Events(_))
        ));
        assert!(matches!(
            verify_post(&[], body, &secrets),
            Err(WebhookRejection::BadSignature(_))
        ));
    }
}
