//! Builds Lark webhook deliveries the way the platform sends them (used by `demo`): v2 event
//! envelopes, AES-256-CBC sealing with key = sha256(encrypt key) and a signature over the raw body.

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One mention inside a message.
pub struct Mention<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub open_id: &'a str,
}

/// The parts of an `im.message.receive_v1` event the demo varies.
pub struct Event<'a> {
    pub app_id: &'a str,
    pub token: &'a str,
    pub message_id: &'a str,
    pub chat_id: &'a str,
    pub group: bool,
    pub sender_open_id: &'a str,
    pub message_type: &'a str,
    pub content: Value,
    pub mentions: Vec<Mention<'a>>,
    pub parent_id: Option<&'a str>,
    pub create_time_ms: i64,
}

impl Event<'_> {
    /// The v2 envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mentions: Vec<Value> = self
            .mentions
            .iter()
            .map(|m| json!({"key": m.key, "id": {"open_id": m.open_id}, "name": m.name, "tenant_key": "demo-tenant"}))
            .collect();
        let envelope = json!({
            "schema": "2.0",
            "header": {
                "event_id": format!("ev_{}", self.message_id),
                "token": self.token,
                "create_time": self.create_time_ms.to_string(),
                "event_type": "im.message.receive_v1",
                "tenant_key": "demo-tenant",
                "app_id": self.app_id,
            },
            "event": {
                "sender": {"sender_id": {"open_id": self.sender_open_id}, "sender_type": "user", "tenant_key": "demo-tenant"},
                "message": {
                    "message_id": self.message_id,
                    "parent_id": self.parent_id,
                    "root_id": self.parent_id,
                    "create_time": self.create_time_ms.to_string(),
                    "chat_id": self.chat_id,
                    "chat_type": if self.group { "group" } else { "p2p" },
                    "message_type": self.message_type,
                    "content": self.content.to_string(),
                    "mentions": mentions,
                },
            },
        });
        serde_json::to_vec(&envelope).expect("JSON")
    }
}

/// Seals `plaintext` for a webhook: returns (headers, raw body).
pub fn seal(
    encrypt_key: &str,
    plaintext: &[u8],
    iv: [u8; 16],
    timestamp: &str,
    nonce: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut blob = iv.to_vec();
    blob.extend_from_slice(&ciphertext);
    let body = serde_json::to_vec(
        &json!({ "encrypt": base64::engine::general_purpose::STANDARD.encode(blob) }),
    )
    .expect("JSON");
    let mut signed = Sha256::new();
    signed.update(timestamp.as_bytes());
    signed.update(nonce.as_bytes());
    signed.update(encrypt_key.as_bytes());
    signed.update(&body);
    let headers = vec![
        (
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ),
        ("x-lark-request-timestamp".into(), timestamp.into()),
        ("x-lark-request-nonce".into(), nonce.into()),
        ("x-lark-signature".into(), hex::encode(signed.finalize())),
    ];
    (headers, body)
}
