//! Shared helpers for the fixture-driven tests: fixture loading and the fixtures' constants.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;
use switchboard_lark::decode::{DecodeContext, Decoded, InboundMessage, decode_event};

/// The fixtures' app id.
pub const APP_ID: &str = "cli_a5f3c2e1d4b6a789";
/// The fixtures' bot open_id ("Helper Bot").
pub const BOT_OPEN_ID: &str = "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51";
/// The bot's union_id as it appears in the fixtures' mentions.
pub const BOT_UNION_ID: &str = "on_5a1c7e3b9d2f48a6c0e7b3d91f4a2c68";
/// Alice's open_id.
pub const ALICE_OPEN_ID: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";
/// Alice's union_id.
pub const ALICE_UNION_ID: &str = "on_8c2e4a6b0d1f39e7c5a3b9d7f1e2c4a6";
/// Bob's open_id.
pub const BOB_OPEN_ID: &str = "ou_d41e7a9c3b5f20e8c6a4b2d0f9e7c1a3";
/// The fixtures' p2p chat.
pub const P2P_CHAT: &str = "oc_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
/// The fixtures' group chat.
pub const GROUP_CHAT: &str = "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081";
/// The fixtures' Encrypt Key.
pub const ENCRYPT_KEY: &str = "fixture-encrypt-key-7Hq2";
/// The fixtures' Verification Token.
pub const VERIFICATION_TOKEN: &str = "vT9kQ2mXw7LpR4sZ";

/// `tests/fixtures/lark` of this repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/lark")
}

/// The raw bytes of a fixture file.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path)
        .unwrap_or_else(|err| panic!("cannot read fixture {}: {err}", path.display()))
}

/// A fixture parsed as JSON.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name))
        .unwrap_or_else(|err| panic!("fixture {name} is not JSON: {err}"))
}

/// A string field of a JSON value by JSON pointer.
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

/// Decodes hex (the fixtures' frame encoding).
pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("valid hex")
}

/// The decode context of the fixtures' bot (union_id known).
pub fn bot_ctx() -> DecodeContext<'static> {
    DecodeContext::new(BOT_OPEN_ID, BOT_UNION_ID)
}

/// Decodes a fixture event with the fixtures' bot and expects a message.
pub fn decode_message(name: &str) -> InboundMessage {
    decode_message_with(name, &bot_ctx())
}

/// Decodes a fixture event with `ctx` and expects a message.
pub fn decode_message_with(name: &str, ctx: &DecodeContext<'_>) -> InboundMessage {
    match decode_event(&fixture_bytes(name), ctx) {
        Ok(Decoded::Message(message)) => message,
        other => panic!("{name}: expected a message, got {other:?}"),
    }
}

/// Decodes a fixture event and expects it to be ignored; returns the reason.
pub fn decode_ignored(name: &str) -> String {
    match decode_event(&fixture_bytes(name), &bot_ctx()) {
        Ok(Decoded::Ignored(reason)) => reason,
        other => panic!("{name}: expected ignored, got {other:?}"),
    }
}
