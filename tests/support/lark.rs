//! Test support: build Lark webhook deliveries the way the platform does (AES-256-CBC with
//! key = sha256(encrypt key), random IV prefix, base64; signature over the raw body).
#![allow(dead_code)]

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use sha2::{Digest, Sha256};

pub const APP_ID: &str = "cli_a5f3c2e1d4b6a789";
pub const ENCRYPT_KEY: &str = "fixture-encrypt-key-7Hq2";
pub const VERIFICATION_TOKEN: &str = "vT9kQ2mXw7LpR4sZ";
pub const BOT_OPEN_ID: &str = "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51";

/// Path of a Lark fixture (`tests/fixtures/lark`).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/lark")
        .join(name)
}

/// The p2p text event with a chosen message id and text.
pub fn text_event(message_id: &str, text: &str) -> Vec<u8> {
    let mut event: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("event_receive_text_p2p.json")).unwrap())
            .unwrap();
    event["header"]["event_id"] = serde_json::json!(format!("ev-{message_id}"));
    event["event"]["message"]["message_id"] = serde_json::json!(message_id);
    event["event"]["message"]["content"] =
        serde_json::json!(serde_json::json!({ "text": text }).to_string());
    serde_json::to_vec(&event).unwrap()
}

/// An encrypted, signed delivery signed now: (headers, raw body).
pub fn encrypted_delivery(plaintext: &[u8], iv: [u8; 16]) -> (Vec<(String, String)>, Vec<u8>) {
    encrypted_delivery_with(ENCRYPT_KEY, plaintext, iv, now_s())
}

/// Seconds since the Unix epoch, as Lark's `X-Lark-Request-Timestamp` carries them.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An encrypted delivery with `encrypt_key`, signed with it at `timestamp` (seconds).
pub fn encrypted_delivery_with(
    encrypt_key: &str,
    plaintext: &[u8],
    iv: [u8; 16],
    timestamp: i64,
) -> (Vec<(String, String)>, Vec<u8>) {
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut blob = iv.to_vec();
    blob.extend_from_slice(&ciphertext);
    let body = serde_json::to_vec(
        &serde_json::json!({ "encrypt": base64::engine::general_purpose::STANDARD.encode(blob) }),
    )
    .unwrap();
    let headers = signed_headers(encrypt_key, &body, timestamp);
    (headers, body)
}

/// The headers of a delivery of `body` signed with `encrypt_key` at `timestamp` (seconds).
pub fn signed_headers(encrypt_key: &str, body: &[u8], timestamp: i64) -> Vec<(String, String)> {
    let (timestamp, nonce) = (timestamp.to_string(), "4242");
    let mut signed = Vec::new();
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(nonce.as_bytes());
    signed.extend_from_slice(encrypt_key.as_bytes());
    signed.extend_from_slice(body);
    let signature = hex::encode(Sha256::digest(&signed));
    vec![
        (
            "content-type".to_string(),
            "application/json; charset=utf-8".to_string(),
        ),
        ("x-lark-request-timestamp".to_string(), timestamp),
        ("x-lark-request-nonce".to_string(), nonce.to_string()),
        ("x-lark-signature".to_string(), signature),
    ]
}
