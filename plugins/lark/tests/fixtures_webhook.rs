//! One test per `webhook_*.json` fixture: challenge answers, signature, decryption and token.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_lark::decode::{Decoded, decode_event};
use switchboard_lark::webhook::{
    WebhookRejection, WebhookRequest, WebhookSecrets, WebhookVerdict, decrypt, signature_hex,
    verify_webhook,
};

fn headers_of(request: &Value) -> Vec<(String, String)> {
    request["headers"]
        .as_object()
        .map(|headers| {
            headers
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn verify(
    headers: &[(String, String)],
    body: &[u8],
    encrypt_key: Option<&str>,
    verification_token: Option<&str>,
) -> Result<WebhookVerdict, WebhookRejection> {
    let request = WebhookRequest {
        method: "POST",
        headers,
        body,
    };
    let secrets = WebhookSecrets {
        encrypt_key,
        verification_token,
    };
    verify_webhook(&request, &secrets)
}

#[test]
fn webhook_url_verification_plain() {
    let fixture = fixture_json("webhook_url_verification_plain.json");
    let headers = headers_of(&fixture["request"]);
    let body = serde_json::to_vec(&fixture["request"]["body"]).unwrap();
    let token = str_at(&fixture, "/verification_token");

    let Ok(WebhookVerdict::Challenge(response)) = verify(&headers, &body, None, Some(token)) else {
        panic!("a url_verification request is answered with its challenge");
    };
    let expected = &fixture["expected_response"];
    assert_eq!(
        u64::from(response.status),
        expected["status"].as_u64().unwrap()
    );
    assert_eq!(
        response.content_type,
        str_at(expected, "/headers/Content-Type")
    );
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer, expected["body"]);

    // The token is checked before answering.
    assert!(matches!(
        verify(&headers, &body, None, Some("another-token")),
        Err(WebhookRejection::BadToken(_))
    ));
}

#[test]
fn webhook_url_verification_encrypted() {
    let fixture = fixture_json("webhook_url_verification_encrypted.json");
    let key = str_at(&fixture, "/encrypt_key");
    let token = str_at(&fixture, "/verification_token");
    let ciphertext = str_at(&fixture, "/request/body/encrypt");
    assert_eq!(
        decrypt(key, ciphertext).unwrap(),
        str_at(&fixture, "/decrypted_plaintext").as_bytes()
    );

    let headers = headers_of(&fixture["request"]);
    let body = serde_json::to_vec(&fixture["request"]["body"]).unwrap();
    // No signature headers: Lark does not sign URL verification.
    let Ok(WebhookVerdict::Challenge(response)) = verify(&headers, &body, Some(key), Some(token))
    else {
        panic!("the encrypted challenge is decrypted and answered");
    };
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer, fixture["expected_response"]["body"]);
    assert_eq!(response.status, 200);

    assert!(matches!(
        verify(&headers, &body, None, Some(token)),
        Err(WebhookRejection::DecryptFailed(_))
    ));
    assert!(matches!(
        verify(&headers, &body, Some("a different key"), Some(token)),
        Err(WebhookRejection::DecryptFailed(_))
    ));
}

#[test]
fn webhook_event_encrypted_signed() {
    let fixture = fixture_json("webhook_event_encrypted_signed.json");
    let key = str_at(&fixture, "/encrypt_key");
    let token = str_at(&fixture, "/verification_token");
    let request = &fixture["request"];
    let headers = headers_of(request);
    let body = str_at(request, "/raw_body").as_bytes();

    // The pieces the fixture spells out.
    assert_eq!(
        signature_hex("1731300001", "218450318", key, body),
        str_at(&fixture, "/expected_signature_sha256_hex")
    );
    assert_eq!(
        hex::encode(Sha256::digest(key.as_bytes())),
        str_at(&fixture, "/aes/key_sha256_hex")
    );
    let encrypted: Value = serde_json::from_slice(body).unwrap();
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        encrypted["encrypt"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(hex::encode(&raw[..16]), str_at(&fixture, "/aes/iv_hex"));

    let Ok(WebhookVerdict::Events(events)) = verify(&headers, body, Some(key), Some(token)) else {
        panic!("a correctly signed delivery is accepted");
    };
    let plaintext = str_at(&fixture, "/decrypted_plaintext").as_bytes();
    assert_eq!(events.payloads, vec![plaintext.to_vec()]);
    let expected = &fixture["expected_response"];
    assert_eq!(
        u64::from(events.response.status),
        expected["status"].as_u64().unwrap()
    );
    let answer: Value = serde_json::from_slice(&events.response.body).unwrap();
    assert_eq!(answer, expected["body"]);

    // The plaintext is the p2p text event.
    let Decoded::Message(message) = decode_event(plaintext, &bot_ctx()).unwrap() else {
        panic!("the delivered event is a chat message");
    };
    assert_eq!(message, decode_message("event_receive_text_p2p.json"));

    // Wrong token, missing signature.
    assert!(matches!(
        verify(&headers, body, Some(key), Some("wrong")),
        Err(WebhookRejection::BadToken(_))
    ));
    let unsigned: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("X-Lark-Signature"))
        .cloned()
        .collect();
    assert!(matches!(
        verify(&unsigned, body, Some(key), Some(token)),
        Err(WebhookRejection::BadSignature(_))
    ));
    // A changed timestamp invalidates the signature too.
    let replayed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            if name == "X-Lark-Request-Timestamp" {
                (name.clone(), "1731309999".into())
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect();
    assert!(matches!(
        verify(&replayed, body, Some(key), Some(token)),
        Err(WebhookRejection::BadSignature(_))
    ));
}

#[test]
fn webhook_event_tampered_signature() {
    let fixture = fixture_json("webhook_event_tampered_signature.json");
    assert_eq!(str_at(&fixture, "/expected"), "signature_mismatch");
    let key = str_at(&fixture, "/encrypt_key");
    let headers = headers_of(&fixture["request"]);
    let body = str_at(&fixture, "/request/raw_body").as_bytes();
    match verify(&headers, body, Some(key), Some(VERIFICATION_TOKEN)) {
        Err(WebhookRejection::BadSignature(reason)) => {
            assert!(reason.contains("does not match"), "{reason}")
        }
        other => panic!("a tampered body must fail the signature check, got {other:?}"),
    }
}
