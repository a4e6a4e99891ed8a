//! Webhook (HTTP callback) verification (lark-protocol §2): signature, AES-256-CBC decryption,
//! verification token, URL-verification challenge and the v1/v2 event envelopes.
//!
//! Order of checks: signature over the raw body (when present) → decrypt → read → token. A URL
//! verification request is not signed by Lark, so an encrypted request without a signature is
//! only accepted when it decrypts to a `url_verification`. Hostile input never panics: every
//! failure is a [`WebhookRejection`] with a reason.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use crate::crypto;
use crate::json::{JsonStr, MaybeObj, Obj, Present, json_object};

/// Header carrying the request timestamp used in the signature.
pub const HEADER_TIMESTAMP: &str = "X-Lark-Request-Timestamp";
/// Header carrying the request nonce used in the signature.
pub const HEADER_NONCE: &str = "X-Lark-Request-Nonce";
/// Header carrying the lowercase hex SHA-256 signature.
pub const HEADER_SIGNATURE: &str = "X-Lark-Signature";

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
    /// `X-Lark-Request-Timestamp` in milliseconds, when the signature (which covers it) was
    /// verified; the host refuses requests outside its replay window.
    pub signed_at_ms: Option<i64>,
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
///
/// The body (and the decrypted envelope) is read once into a small typed probe of the fields
/// verification needs; the event payload is handed on as the exact bytes received or decrypted.
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
    if encrypt_key.is_none() && verification_token.is_none() {
        // Nothing to authenticate the request with: never accept it as it is.
        return Err(WebhookRejection::BadToken(
            "the installation has neither an `encrypt_key` nor a `verification_token`, so its \
             webhooks cannot be authenticated; add one of them as a secret, or receive events \
             over the long connection (config `connection = websocket`)"
                .into(),
        ));
    }

    let signature = header(request.headers, HEADER_SIGNATURE).filter(|value| !value.is_empty());
    let mut signature_verified = false;
    let mut signed_at_ms = None;
    if let (Some(key), Some(signature)) = (encrypt_key, signature) {
        let timestamp = header(request.headers, HEADER_TIMESTAMP).unwrap_or("");
        let nonce = header(request.headers, HEADER_NONCE).unwrap_or("");
        let expected = signature_hex_bytes(timestamp, nonce, key, request.body);
        if !hex_eq_ignore_case(&expected, signature.trim().as_bytes()) {
            return Err(WebhookRejection::BadSignature(
                "X-Lark-Signature does not match sha256(timestamp + nonce + encrypt_key + body)"
                    .into(),
            ));
        }
        signature_verified = true;
        // Seconds since the epoch; a signed but unreadable timestamp cannot be checked
        // against the replay window, so it is refused rather than ignored.
        let seconds: i64 = timestamp.trim().parse().map_err(|_| {
            WebhookRejection::BadSignature(format!(
                "{HEADER_TIMESTAMP} is not a number of seconds: {timestamp:?}"
            ))
        })?;
        signed_at_ms = Some(seconds.saturating_mul(1000));
    }

    let outer = read_probe(request.body)
        .map_err(|err| WebhookRejection::Malformed(format!("body is not JSON: {err}")))?
        .ok_or_else(|| WebhookRejection::Malformed("body is not a JSON object".into()))?;
    let checks = Checks {
        verification_token,
        needs_signature: encrypt_key.is_some() && !signature_verified,
    };
    let (plaintext, outcome) = match outer.encrypt {
        Encrypt::Text(ciphertext) => {
            let key = encrypt_key.ok_or_else(|| {
                WebhookRejection::DecryptFailed(
                    "the request is encrypted but the installation has no `encrypt_key`".into(),
                )
            })?;
            let plaintext = decrypt(key, &ciphertext).map_err(WebhookRejection::DecryptFailed)?;
            let envelope = read_probe(&plaintext).map_err(|_| {
                WebhookRejection::DecryptFailed(
                    "the decrypted body is not JSON (wrong encrypt key?)".into(),
                )
            })?;
            let outcome = checks.envelope(&envelope.unwrap_or_default())?;
            (Some(plaintext), outcome)
        }
        Encrypt::NotText => {
            return Err(WebhookRejection::Malformed(
                "`encrypt` is not a string".into(),
            ));
        }
        Encrypt::Absent => (None, checks.envelope(&outer)?),
    };
    Ok(match outcome {
        Outcome::Challenge(response) => WebhookVerdict::Challenge(response),
        Outcome::Event => {
            // The plain body or the decrypted envelope, as is: never re-serialized.
            let payload = plaintext.unwrap_or_else(|| request.body.to_vec());
            // A card callback is answered in the HTTP body (§3.2); the host replaces this empty
            // answer with its own (`answer-action`).
            let body = if crate::card_action::is_card_action(&payload) {
                crate::card_action::DEFAULT_RESPONSE.to_vec()
            } else {
                br#"{"msg":"success"}"#.to_vec()
            };
            WebhookVerdict::Events(WebhookEvents {
                payloads: vec![payload],
                signed_at_ms,
                response: WebhookResponse {
                    status: 200,
                    content_type: "application/json; charset=utf-8".into(),
                    body,
                },
            })
        }
    })
}

json_object! {
    /// The fields of a webhook body (or of its decrypted envelope) that verification reads; the
    /// rest is validated as a full parse would, but not kept.
    struct Probe<'a> {
        encrypt: Encrypt<'a> = "encrypt",
        kind: JsonStr<'a> = "type",
        challenge: JsonStr<'a> = "challenge",
        token: JsonStr<'a> = "token",
        schema: Present = "schema",
        uuid: Present = "uuid",
        header: Obj<ProbeHeader<'a>> = "header",
    }
}

json_object! {
    /// The v2 envelope header: only its token.
    struct ProbeHeader<'a> {
        token: JsonStr<'a> = "token",
    }
}

/// The `encrypt` field: absent, a string, or present with another JSON type.
#[derive(Default)]
enum Encrypt<'a> {
    #[default]
    Absent,
    Text(Cow<'a, str>),
    NotText,
}

impl<'de: 'a, 'a> Deserialize<'de> for Encrypt<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match JsonStr::deserialize(deserializer)?.0 {
            Some(text) => Encrypt::Text(text),
            None => Encrypt::NotText,
        })
    }
}

/// Reads a body: `Ok(None)` when it is JSON but not an object. The whole document is validated
/// (UTF-8 at once, then the JSON; the fields that are not read are skipped with
/// [`crate::json::Skip`]).
fn read_probe(bytes: &[u8]) -> Result<Option<Probe<'_>>, String> {
    let text = std::str::from_utf8(bytes).map_err(|err| format!("invalid UTF-8: {err}"))?;
    serde_json::from_str::<MaybeObj<Probe<'_>>>(text)
        .map(|probe| probe.0)
        .map_err(|err| err.to_string())
}

/// What a verified envelope is.
enum Outcome {
    /// URL verification, answered at once.
    Challenge(WebhookResponse),
    /// An event to ingest.
    Event,
}

/// The checks that depend on the envelope.
struct Checks<'s> {
    verification_token: Option<&'s str>,
    /// An Encrypt Key is configured but no signature was verified.
    needs_signature: bool,
}

impl Checks<'_> {
    fn envelope(&self, envelope: &Probe<'_>) -> Result<Outcome, WebhookRejection> {
        if envelope.kind.0.as_deref() == Some("url_verification") && !envelope.schema.0 {
            // Lark does not sign URL verification requests; the token is the check.
            check_token(self.verification_token, envelope.token.0.as_deref())?;
            let challenge = envelope.challenge.0.as_deref().ok_or_else(|| {
                WebhookRejection::Malformed("url_verification without a string `challenge`".into())
            })?;
            let challenge = serde_json::to_string(challenge).expect("a string serializes");
            return Ok(Outcome::Challenge(WebhookResponse {
                status: 200,
                content_type: "application/json".into(),
                body: format!("{{\"challenge\":{challenge}}}").into_bytes(),
            }));
        }

        if self.needs_signature {
            return Err(WebhookRejection::BadSignature(
                "an Encrypt Key is configured but the request carries no X-Lark-Signature".into(),
            ));
        }

        let token = if envelope.schema.0 {
            envelope.header.0.token.0.as_deref()
        } else if envelope.uuid.0 {
            envelope.token.0.as_deref()
        } else {
            return Err(WebhookRejection::Malformed(
                "neither a v2 (`schema`) nor a v1 (`uuid`) event envelope nor a url_verification"
                    .into(),
            ));
        };
        check_token(self.verification_token, token)?;
        Ok(Outcome::Event)
    }
}

fn check_token(expected: Option<&str>, actual: Option<&str>) -> Result<(), WebhookRejection> {
    let Some(expected) = expected else {
        return Ok(());
    };
    match actual {
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
    let hex = signature_hex_bytes(timestamp, nonce, encrypt_key, body);
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// [`signature_hex`] without allocating.
fn signature_hex_bytes(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> [u8; 64] {
    to_hex(&crypto::sha256(&[
        timestamp.as_bytes(),
        nonce.as_bytes(),
        encrypt_key.as_bytes(),
        body,
    ]))
}

/// Decrypts an `encrypt` field: base64 → IV (first 16 bytes) + AES-256-CBC ciphertext with key
/// `sha256(encrypt_key)` → PKCS#7-unpadded plaintext (see [`crypto`] for where the work runs).
///
/// The key digest of the most recent `encrypt_key` is kept per thread (an instance serves one
/// installation at a time), so it is computed once per key rather than once per request.
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
    let (iv, ciphertext) = raw.split_at(16);
    crypto::aes256_cbc_decrypt(&key_for(encrypt_key), iv, ciphertext)
        .ok_or_else(|| "bad PKCS#7 padding after decryption (wrong encrypt key?)".to_string())
}

/// `sha256(encrypt_key)`, the AES-256 key, cached per thread for the most recent key.
fn key_for(encrypt_key: &str) -> [u8; 32] {
    thread_local! {
        static CACHE: RefCell<Option<(String, [u8; 32])>> = const { RefCell::new(None) };
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((key, digest)) = cache.as_ref()
            && key == encrypt_key
        {
            return *digest;
        }
        let digest = crypto::sha256(&[encrypt_key.as_bytes()]);
        *cache = Some((encrypt_key.to_owned(), digest));
        digest
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn to_hex(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Compares two byte strings in constant time (the SDK's one helper; unequal lengths: false).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    switchboard_plugin_sdk::secret::eq(a, b)
}

/// Compares lowercase hex with a signature given in any case, in constant time: the signature is
/// lowercased into a fixed buffer, then compared with the SDK's helper. A signature that is not
/// 64 characters long is refused at once (that length is public: a SHA-256 digest in hex).
fn hex_eq_ignore_case(expected: &[u8; 64], given: &[u8]) -> bool {
    let Ok(given) = <&[u8; 64]>::try_from(given) else {
        return false;
    };
    let lowered = given.map(|byte| byte.to_ascii_lowercase());
    switchboard_plugin_sdk::secret::eq(expected, &lowered)
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
        let token = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("t"),
        };
        for body in [&b"not json"[..], b"", b"[]", b"{}", br#"{"encrypt":5}"#] {
            assert!(matches!(
                verify_post(&[], body, &token),
                Err(WebhookRejection::Malformed(_))
            ));
        }
    }

    #[test]
    fn encrypted_body_without_key_is_rejected() {
        let body = br#"{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}"#;
        let token_only = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("t"),
        };
        assert!(matches!(
            verify_post(&[], body, &token_only),
            Err(WebhookRejection::DecryptFailed(reason)) if reason.contains("encrypt_key")
        ));
    }

    #[test]
    fn an_installation_without_verification_material_accepts_nothing() {
        // An unsigned event and a URL-verification challenge, each with a token of its own:
        // with no secret to check them against, both are refused.
        for body in [
            &br#"{"schema":"2.0","header":{"token":"any","app_id":"cli_x"},"event":{}}"#[..],
            br#"{"type":"url_verification","token":"any","challenge":"c"}"#,
        ] {
            for secrets in [
                WebhookSecrets::default(),
                WebhookSecrets {
                    encrypt_key: Some(""),
                    verification_token: Some(""),
                },
            ] {
                assert!(matches!(
                    verify_post(&[], body, &secrets),
                    Err(WebhookRejection::BadToken(reason)) if reason.contains("neither")
                ));
            }
        }
    }

    #[test]
    fn a_verified_signature_reports_its_timestamp_and_an_unreadable_one_is_refused() {
        let body = br#"{"schema":"2.0","header":{"token":"t"},"event":{}}"#;
        let secrets = WebhookSecrets {
            encrypt_key: Some("key"),
            verification_token: Some("t"),
        };
        let signed = |timestamp: &str| {
            vec![
                (HEADER_TIMESTAMP.to_string(), timestamp.to_string()),
                (HEADER_NONCE.to_string(), "n".to_string()),
                (
                    HEADER_SIGNATURE.to_string(),
                    signature_hex(timestamp, "n", "key", body),
                ),
            ]
        };
        assert!(matches!(
            verify_post(&signed("1700000000"), body, &secrets),
            Ok(WebhookVerdict::Events(events)) if events.signed_at_ms == Some(1_700_000_000_000)
        ));
        assert!(matches!(
            verify_post(&signed("soon"), body, &secrets),
            Err(WebhookRejection::BadSignature(reason)) if reason.contains("Timestamp")
        ));
        // A token-only request carries no signed time.
        let token_only = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("t"),
        };
        assert!(matches!(
            verify_post(&[], body, &token_only),
            Ok(WebhookVerdict::Events(events)) if events.signed_at_ms.is_none()
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
