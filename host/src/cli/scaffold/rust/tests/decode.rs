//! The plugin's own checks, natively (`cargo test`): the fixtures decode as expected, bad input
//! is `invalid-input`, and the webhook fixture is signed with the fixture secret.

use {{lib}}::{Plugin, parse_command, sign};
use switchboard_plugin_sdk::types::{ChatKind, PluginError};
use switchboard_plugin_sdk::{Channel, Decoded};

/// The secret `fixtures/webhook.json` is signed with (`--secret signing_secret=…` in replay).
const FIXTURE_SECRET: &str = "fixture-signing-secret";

#[test]
fn the_fixture_message_decodes() {
    let payload = include_bytes!("../fixtures/message.json").to_vec();
    let Ok(Decoded::Message(message)) = <Plugin as Channel>::decode(payload) else {
        panic!("fixtures/message.json must decode to a message");
    };
    assert_eq!(message.message_id, "m-1");
    assert_eq!(message.chat.id, "chat-1");
    assert!(matches!(message.chat.kind, ChatKind::Direct));
    assert_eq!(message.sender.id, "user-1");
    assert_eq!(message.sender.display_name.as_deref(), Some("Ada"));
    assert_eq!(message.body, "hello from a fixture");
    assert!(message.addressed_to_bot);
    assert_eq!(message.create_time_ms, 1_767_225_600_000);
}

#[test]
fn malformed_payloads_are_invalid_input_naming_the_problem() {
    match <Plugin as Channel>::decode(b"not json".to_vec()) {
        Err(PluginError::InvalidInput(_)) => {}
        other => panic!("not JSON must be invalid-input: {other:?}"),
    }
    match <Plugin as Channel>::decode(br#"{"message_id":"m","user_id":"u","text":"t"}"#.to_vec()) {
        Err(PluginError::InvalidInput(why)) => assert!(why.contains("chat_id"), "{why}"),
        other => panic!("a missing field must be invalid-input: {other:?}"),
    }
}

#[test]
fn the_webhook_fixture_is_signed_with_the_fixture_secret() {
    let fixture: serde_json::Value =
        serde_json::from_slice(include_bytes!("../fixtures/webhook.json")).unwrap();
    let request = &fixture["request"];
    let body = request["raw_body"].as_str().unwrap().as_bytes();
    let timestamp = request["headers"]["x-switchboard-timestamp"]
        .as_str()
        .unwrap();
    let presented = request["headers"]["x-switchboard-signature"]
        .as_str()
        .unwrap();
    assert_eq!(sign(FIXTURE_SECRET, timestamp, body), presented);
    assert_ne!(sign("another-secret", timestamp, body), presented);
}

#[test]
fn commands_are_read_from_the_text() {
    let command = parse_command("/New@bot  start over ").unwrap();
    assert_eq!(
        (command.name.as_str(), command.args.as_str()),
        ("new", "start over")
    );
    assert!(parse_command("just text").is_none());
}
