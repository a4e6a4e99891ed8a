//! Every Lark fixture (`tests/fixtures/lark`) through the bundled wasm plugin, driven by the
//! host's inbound pipeline (`ingest::pipeline`): decoded messages, ignore reasons, frame
//! classification and host reassembly, ACK bytes, webhook verification, endpoint discovery and
//! handshake failures. Expectations are the native plugin tests' (`plugins/lark/tests`); where it
//! is cheap the wasm answer is also compared with the native `switchboard_lark` answer.

#[path = "support/runtime.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{LocalServer, TestRuntime};
use switchboard::capabilities::BaseUrlOverride;
use switchboard::dispatch::{Builtin, Command};
use switchboard::domain::InstallationContext;
use switchboard::ingest::pipeline::{
    self, DecodeOutcome, FrameIntake, FrameOutcome, WebhookOutcome,
};
use switchboard::runtime::transport::{AckStatus, ConnectError, WebhookRequest};
use switchboard::runtime::types::{ChatKind, InboundMessage, PluginError};
use switchboard::runtime::{Plugin, Runtime};
use switchboard_lark as native;

// The fixtures' constants (tests/fixtures/lark/README.md and plugins/lark/tests/common).
const APP_ID: &str = "cli_a5f3c2e1d4b6a789";
const BOT_OPEN_ID: &str = "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51";
const BOT_UNION_ID: &str = "on_5a1c7e3b9d2f48a6c0e7b3d91f4a2c68";
const ALICE_OPEN_ID: &str = "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4";
const ALICE_UNION_ID: &str = "on_8c2e4a6b0d1f39e7c5a3b9d7f1e2c4a6";
const BOB_OPEN_ID: &str = "ou_d41e7a9c3b5f20e8c6a4b2d0f9e7c1a3";
const P2P_CHAT: &str = "oc_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
const GROUP_CHAT: &str = "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081";
const ENCRYPT_KEY: &str = "fixture-encrypt-key-7Hq2";
const VERIFICATION_TOKEN: &str = "vT9kQ2mXw7LpR4sZ";

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lark")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("valid hex")
}

/// Standard base64 with padding (the fixtures' encoding of callback answers).
fn unbase64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digits: Vec<u32> = text
        .bytes()
        .filter(|&c| c != b'=')
        .map(|c| ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let acc = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn files_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix) && name.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn runtime() -> Runtime {
    TestRuntime {
        load_bundled: true,
        ..Default::default()
    }
    .build()
}

fn lark(runtime: &Runtime) -> Arc<Plugin> {
    runtime.plugin("lark").expect("the lark plugin is bundled")
}

/// The fixtures' installation: bot identity and webhook secrets.
fn installation() -> Arc<InstallationContext> {
    Arc::new(
        InstallationContext::new("inst-lark")
            .with_config("app_id", APP_ID)
            .with_config("bot_open_id", BOT_OPEN_ID)
            .with_config("bot_union_id", BOT_UNION_ID)
            .with_secret("encrypt_key", ENCRYPT_KEY)
            .with_secret("verification_token", VERIFICATION_TOKEN),
    )
}

fn native_ctx() -> native::decode::DecodeContext<'static> {
    native::decode::DecodeContext::new(BOT_OPEN_ID, BOT_UNION_ID)
}

/// The sender's alt ids as contract 0.2 carries them: `union_id`, then `user_id`, when known.
fn alt_ids(union_id: Option<&str>, user_id: Option<&str>) -> Vec<(String, String)> {
    [("union_id", union_id), ("user_id", user_id)]
        .into_iter()
        .filter_map(|(scheme, id)| Some((scheme.to_string(), id?.to_string())))
        .collect()
}

/// The alt id of `scheme` of a wasm message's sender.
fn alt_id<'a>(message: &'a InboundMessage, scheme: &str) -> Option<&'a str> {
    message
        .sender
        .alt_ids
        .iter()
        .find(|(s, _)| s == scheme)
        .map(|(_, id)| id.as_str())
}

/// Asserts the wasm message equals the native one, field by field, in contract 0.2's terms:
/// the chat is a `chat` record, the sender a `participant` (open_id as its id, union_id and
/// user_id as alt ids, `app` senders as bots), mentions say whether they name the bot, and a
/// direct chat is always addressed to the bot (the native decoder keeps `false` there).
fn assert_same_message(name: &str, wasm: &InboundMessage, native: &native::decode::InboundMessage) {
    assert_eq!(wasm.event_id, native.event_id, "{name}: event_id");
    assert_eq!(wasm.message_id, native.message_id, "{name}: message_id");
    assert_eq!(wasm.chat.id, native.chat_id, "{name}: chat id");
    let native_direct = native.chat_type == native::decode::ChatType::Direct;
    let expected_kind = if native_direct {
        ChatKind::Direct
    } else {
        ChatKind::Group
    };
    assert_eq!(wasm.chat.kind, expected_kind, "{name}: chat kind");
    assert_eq!(wasm.chat.title, None, "{name}: Lark events carry no title");
    assert_eq!(wasm.sender.id, native.sender.open_id, "{name}: sender");
    assert_eq!(
        wasm.sender.alt_ids,
        alt_ids(
            native.sender.union_id.as_deref(),
            native.sender.user_id.as_deref()
        ),
        "{name}: sender alt ids"
    );
    assert_eq!(
        wasm.sender.is_bot,
        native.sender.kind == "app",
        "{name}: sender is_bot"
    );
    assert_eq!(wasm.sender.display_name, None, "{name}: sender name");
    assert_eq!(
        wasm.message_type, native.message_type,
        "{name}: message_type"
    );
    assert_eq!(wasm.body, native.body, "{name}: body");
    assert_eq!(
        wasm.command_body, native.command_body,
        "{name}: command_body"
    );
    assert_eq!(
        wasm.addressed_to_bot,
        native.addressed_to_bot || native_direct,
        "{name}: addressed (always in a direct chat)"
    );
    assert_eq!(wasm.parent_id, native.parent_id, "{name}: parent_id");
    assert_eq!(wasm.root_id, native.root_id, "{name}: root_id");
    assert_eq!(wasm.thread_id, native.thread_id, "{name}: thread_id");
    assert_eq!(
        wasm.create_time_ms, native.create_time_ms,
        "{name}: create_time_ms"
    );
    let wasm_mentions: Vec<_> = wasm
        .mentions
        .iter()
        .map(|m| (&m.key, &m.name, &m.id, m.is_bot))
        .collect();
    let bot = native_ctx().bot;
    let native_mentions: Vec<_> = native
        .mentions
        .iter()
        .map(|m| (&m.key, &m.name, &m.open_id, bot.is_mentioned_by(m)))
        .collect();
    assert_eq!(wasm_mentions, native_mentions, "{name}: mentions");
    let wasm_attachments: Vec<_> = wasm
        .attachments
        .iter()
        .map(|a| (a.kind.as_str(), a.name.as_deref(), a.ref_.as_str()))
        .collect();
    let native_attachments: Vec<_> = native
        .attachments
        .iter()
        .map(|a| (a.kind, a.name.as_deref(), a.key.as_str()))
        .collect();
    assert_eq!(wasm_attachments, native_attachments, "{name}: attachments");
    for attachment in &wasm.attachments {
        assert_eq!(
            (&attachment.mime, attachment.size),
            (&None, None),
            "{name}: Lark events give no mime or size"
        );
    }
}

/// Decodes a payload through the pipeline and asserts the outcome equals the native decoder's.
async fn decode_like_native(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    name: &str,
    payload: &[u8],
) -> DecodeOutcome {
    let outcome = pipeline::decode_payload(plugin, cx, payload)
        .await
        .unwrap_or_else(|e| panic!("{name}: the call failed: {e}"));
    // Card callbacks are actions (native `card_action`), not messages of `decode_event`.
    if let Ok(Some(expected)) = native::card_action::decode_card_action(payload) {
        match &outcome {
            DecodeOutcome::Message {
                message,
                command: Some(Command::Action { name: n, value, .. }),
            } => {
                assert_eq!(message.message_id, expected.event_id, "{name}: action id");
                assert_eq!(message.sender.id, expected.open_id, "{name}: sender");
                assert_eq!(message.chat.id, expected.chat_id, "{name}: chat");
                assert_eq!((n, value), (&expected.name, &expected.value), "{name}");
            }
            other => panic!("{name}: wasm {other:?} but native {expected:?}"),
        }
        return outcome;
    }
    match (
        &outcome,
        native::decode::decode_event(payload, &native_ctx()),
    ) {
        (
            DecodeOutcome::Message { message, .. },
            Ok(native::decode::Decoded::Message(expected)),
        ) => assert_same_message(name, message, &expected),
        (DecodeOutcome::Ignored(reason), Ok(native::decode::Decoded::Ignored(expected))) => {
            assert_eq!(reason, &expected, "{name}: ignore reason")
        }
        (DecodeOutcome::Invalid(PluginError::InvalidInput(reason)), Err(expected)) => {
            assert_eq!(reason, &expected.to_string(), "{name}: error")
        }
        (wasm, native) => panic!("{name}: wasm {wasm:?} but native {native:?}"),
    }
    outcome
}

/// Decodes a fixture event and expects a message (checked against the native decoder).
async fn message(plugin: &Plugin, cx: &Arc<InstallationContext>, name: &str) -> InboundMessage {
    match decode_like_native(plugin, cx, name, &fixture_bytes(name)).await {
        DecodeOutcome::Message { message, command } => {
            assert!(command.is_none(), "{name}: no fixture carries a command");
            message
        }
        other => panic!("{name}: expected a message, got {other:?}"),
    }
}

/// The `event_*` fixtures (at least the 36 the shared set had when the tests were written).
fn event_fixture_names() -> Vec<String> {
    let names = files_with_prefix("event_");
    assert!(
        names.len() >= 36,
        "found only {} event fixtures",
        names.len()
    );
    names
}

#[tokio::test]
async fn every_event_fixture_decodes_in_wasm_as_natively() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let names = event_fixture_names();
    for name in &names {
        let payload = fixture_bytes(name);
        decode_like_native(&plugin, &cx, name, &payload).await;
        let key = plugin.routing_key(&cx, &payload).await.unwrap();
        assert_eq!(key.as_deref(), Some(APP_ID), "{name}: routing key");
        assert_eq!(key, native::decode::routing_key(&payload), "{name}");
    }
}

#[tokio::test]
async fn text_p2p_decodes_completely() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let message = message(&plugin, &installation(), "event_receive_text_p2p.json").await;
    assert_eq!(message.event_id, "9d41f2c7000000000000000000001eef");
    assert_eq!(message.message_id, "om_5b3c000000000000000000000000a001");
    assert_eq!(message.chat.id, P2P_CHAT);
    assert_eq!(message.chat.kind, ChatKind::Direct);
    assert_eq!(message.sender.id, ALICE_OPEN_ID);
    assert_eq!(
        message.sender.alt_ids,
        alt_ids(Some(ALICE_UNION_ID), Some("a1b2c3d4"))
    );
    assert!(!message.sender.is_bot);
    assert_eq!(message.message_type, "text");
    let text = "Can you summarise yesterday's design review?\n会后请发我纪要";
    assert_eq!(message.body, text);
    assert_eq!(message.command_body, text);
    // Contract 0.2: a direct chat is always addressed to the bot.
    assert!(message.addressed_to_bot);
    assert!(message.attachments.is_empty());
    assert_eq!(
        (message.parent_id, message.root_id, message.thread_id),
        (None, None, None)
    );
    assert_eq!(message.create_time_ms, 1_731_300_000_000);
    assert!(message.mentions.is_empty());

    let no_user_id = self::message(
        &plugin,
        &installation(),
        "event_receive_text_p2p_no_user_id.json",
    )
    .await;
    assert_eq!(no_user_id.body, "ping");
    assert_eq!(no_user_id.sender.id, BOB_OPEN_ID);
    assert_eq!(alt_id(&no_user_id, "user_id"), None);
}

#[tokio::test]
async fn group_mentions_address_the_bot_only_when_it_is_known() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let name = "event_receive_text_group_mentions.json";
    let message = message(&plugin, &installation(), name).await;
    assert_eq!(message.chat.kind, ChatKind::Group);
    assert_eq!(message.chat.id, GROUP_CHAT);
    assert!(message.addressed_to_bot);
    assert_eq!(
        message.body,
        "please review @Bob Li's PR [PR #42](https://git.example.com/org/repo/pull/42) before 5pm"
    );
    assert_eq!(message.mentions.len(), 2);
    assert_eq!(message.mentions[0].id.as_deref(), Some(BOT_OPEN_ID));
    assert!(
        message.mentions[0].is_bot,
        "the first mention names the bot"
    );
    assert_eq!(message.mentions[1].id.as_deref(), Some(BOB_OPEN_ID));
    assert!(!message.mentions[1].is_bot);

    // An installation without a bot identity: nothing stripped, not addressed.
    let anonymous = Arc::new(InstallationContext::new("inst-anonymous"));
    let DecodeOutcome::Message { message, .. } =
        pipeline::decode_payload(&plugin, &anonymous, &fixture_bytes(name))
            .await
            .unwrap()
    else {
        panic!("still a message");
    };
    assert!(!message.addressed_to_bot);
    assert!(message.body.starts_with("@Helper Bot please review"));
    assert!(
        message.mentions.iter().all(|m| !m.is_bot),
        "no mention names an unknown bot"
    );

    let mention_all = self::message(
        &plugin,
        &installation(),
        "event_receive_text_mention_all.json",
    )
    .await;
    assert_eq!(mention_all.body, "@all stand-up moves to 10:30 today");
    assert!(
        !mention_all.addressed_to_bot,
        "@all does not address the bot"
    );
}

#[tokio::test]
async fn every_message_type_has_its_body() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    // (fixture, message_type, body); non-text types carry no command body.
    let cases = [
        ("event_receive_image.json", "image", "[Image]"),
        (
            "event_receive_file.json",
            "file",
            "[File] Q3-capacity-plan.pdf",
        ),
        ("event_receive_audio.json", "audio", "[Audio] 4.2s"),
        (
            "event_receive_media.json",
            "media",
            "[Video] repro-screen-recording.mp4 (15.3s)",
        ),
        ("event_receive_sticker.json", "sticker", "[Sticker]"),
        (
            "event_receive_interactive.json",
            "interactive",
            "[Card] Deploy approval: api-gateway\nRequested by @Alice Wang\nVersion: 2.3.0 → 2.3.1\n---\n[Approve] [Reject]\nAuto-expires in 30 minutes",
        ),
        (
            "event_receive_share_chat.json",
            "share_chat",
            "[Shared chat] oc_77aa88bb99cc00dd11ee22ff33aa44bb",
        ),
        (
            "event_receive_share_user.json",
            "share_user",
            "[Shared user] ou_d41e7a9c3b5f20e8c6a4b2d0f9e7c1a3",
        ),
        (
            "event_receive_merge_forward.json",
            "merge_forward",
            "[Forwarded messages]",
        ),
        (
            "event_receive_location.json",
            "location",
            "[Location] Shanghai Tower, Lujiazui (31.233462, 121.505366)",
        ),
        (
            "event_receive_todo.json",
            "todo",
            "[Todo] Submit the expense report (due 2024-11-12 08:00 UTC)",
        ),
        (
            "event_receive_vote.json",
            "vote",
            "[Vote] Team lunch on Friday?\n- Dumplings\n- Ramen\n- Salad bar",
        ),
        (
            "event_receive_system.json",
            "system",
            "[System] Alice Wang invited Bob Li, Helper Bot to this chat.",
        ),
        ("event_receive_hongbao.json", "hongbao", "[Red packet]"),
        (
            "event_receive_share_calendar_event.json",
            "share_calendar_event",
            "[Calendar event] Sprint 47 planning (2024-11-12 03:00–04:00 UTC)",
        ),
        (
            "event_receive_video_chat.json",
            "video_chat",
            "[Video call] Incident bridge (started 2024-11-11 04:40 UTC)",
        ),
        (
            "event_receive_folder.json",
            "folder",
            "[Folder] design-assets",
        ),
    ];
    for (name, message_type, body) in cases {
        let message = message(&plugin, &cx, name).await;
        assert_eq!(message.message_type, message_type, "{name}");
        assert_eq!(message.body, body, "{name}");
        assert_eq!(message.command_body, "", "{name}: only text and post");
    }
    let system = message(&plugin, &cx, "event_receive_system.json").await;
    assert_eq!(system.sender.id, "");
    assert!(!system.sender.is_bot);
    assert!(system.sender.alt_ids.is_empty());

    // Images and files carry their resource key as the attachment's reference.
    let image = message(&plugin, &cx, "event_receive_image.json").await;
    let [attachment] = image.attachments.as_slice() else {
        panic!("one image attachment: {:?}", image.attachments);
    };
    assert_eq!(attachment.kind, "image");
    assert_eq!(
        attachment.ref_,
        "img_v3_02gh_7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1f0g"
    );
    let file = message(&plugin, &cx, "event_receive_file.json").await;
    let [attachment] = file.attachments.as_slice() else {
        panic!("one file attachment: {:?}", file.attachments);
    };
    assert_eq!(attachment.kind, "file");
    assert_eq!(attachment.name.as_deref(), Some("Q3-capacity-plan.pdf"));
    assert_eq!(
        attachment.ref_,
        "file_v3_00gh_1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5g"
    );

    let post = message(&plugin, &cx, "event_receive_post_all_tags.json").await;
    assert_eq!(post.message_type, "post");
    assert!(post.addressed_to_bot);
    assert!(
        post.body
            .starts_with("Release checklist v2.3\nowner: @Bob Li please confirm"),
        "{}",
        post.body
    );
    assert_eq!(post.command_body, post.body);
}

#[tokio::test]
async fn replies_and_threads_keep_their_ids() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let thread = message(&plugin, &cx, "event_receive_reply_in_thread.json").await;
    assert_eq!(thread.body, "same error on staging, logs attached above");
    assert_eq!(thread.thread_id.as_deref(), Some("omt_1a7c3e9b5d2f4"));
    assert_eq!(
        thread.root_id.as_deref(),
        Some("om_5b3c000000000000000000000000a00f")
    );
    assert_eq!(thread.parent_id, thread.root_id);
    assert!(thread.addressed_to_bot);

    let quote = message(&plugin, &cx, "event_receive_quote_reply_no_thread.json").await;
    assert_eq!(quote.body, "yes, use the second option");
    assert_eq!(
        quote.parent_id.as_deref(),
        Some("om_5b3c000000000000000000000000a011")
    );
    assert_eq!(
        quote.root_id.as_deref(),
        Some("om_5b3c000000000000000000000000a00f")
    );
    assert_eq!(quote.thread_id, None);
}

#[tokio::test]
async fn non_message_events_are_ignored_with_their_type() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let cases = [
        (
            "event_bot_added_to_chat.json",
            "im.chat.member.bot.added_v1",
        ),
        (
            "event_bot_removed_from_chat.json",
            "im.chat.member.bot.deleted_v1",
        ),
        (
            "event_bot_p2p_chat_entered.json",
            "im.chat.access_event.bot_p2p_chat_entered_v1",
        ),
        ("event_message_read.json", "im.message.message_read_v1"),
        (
            "event_reaction_created.json",
            "im.message.reaction.created_v1",
        ),
        (
            "event_reaction_created_by_app.json",
            "im.message.reaction.created_v1",
        ),
        (
            "event_reaction_deleted.json",
            "im.message.reaction.deleted_v1",
        ),
        ("event_message_recalled.json", "im.message.recalled_v1"),
        (
            "event_user_added_to_chat.json",
            "im.chat.member.user.added_v1",
        ),
        ("event_v1_message_legacy.json", "legacy v1 event `message`"),
        ("event_v1_p2p_chat_create.json", "`p2p_chat_create`"),
    ];
    for (name, event_type) in cases {
        match decode_like_native(&plugin, &cx, name, &fixture_bytes(name)).await {
            DecodeOutcome::Ignored(reason) => {
                assert!(reason.contains(event_type), "{name}: {reason}")
            }
            other => panic!("{name}: expected ignored, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn commands_are_parsed_from_the_command_body() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let original = String::from_utf8(fixture_bytes("event_receive_text_p2p.json")).unwrap();
    // The content is a JSON string inside JSON: a newline is `\\n` in the file.
    let text = r"Can you summarise yesterday's design review?\\n会后请发我纪要";
    assert!(original.contains(text), "the p2p fixture's content text");
    let with_text = |replacement: &str| original.replace(text, replacement).into_bytes();

    // (typed, the plugin's `{name, args}`, the host's reading of it). Contract 0.2 commands are
    // generic: `/issue` is an agent command like any other, with its args intact.
    let cases: [(&str, (&str, &str), Command); 6] = [
        (
            r"/issue Login page crashes\\nSteps: open /login",
            ("issue", "Login page crashes\nSteps: open /login"),
            Command::Agent {
                name: "issue".into(),
                args: "Login page crashes\nSteps: open /login".into(),
            },
        ),
        (
            "/issue",
            ("issue", ""),
            Command::Agent {
                name: "issue".into(),
                args: String::new(),
            },
        ),
        ("/new", ("new", ""), Command::New(String::new())),
        (
            "/new start over",
            ("new", "start over"),
            Command::New("start over".into()),
        ),
        ("/STATUS", ("status", ""), Command::Builtin(Builtin::Status)),
        ("/help", ("help", ""), Command::Builtin(Builtin::Help)),
    ];
    for (typed, (name, args), expected) in cases {
        let payload = with_text(typed);
        let DecodeOutcome::Message { command, message } =
            decode_like_native(&plugin, &cx, typed, &payload).await
        else {
            panic!("{typed}: expected a message");
        };
        assert_eq!(command, Some(expected), "{typed}: the host's reading");
        // The plugin's own answer, and the same answer natively.
        let parsed = plugin
            .parse_command(&cx, &message.command_body)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{typed}: a command"));
        assert_eq!(
            (parsed.name.as_str(), parsed.args.as_str()),
            (name, args),
            "{typed}: wasm command"
        );
        let native = native::commands::parse_command(&message.command_body)
            .unwrap_or_else(|| panic!("{typed}: a native command"));
        assert_eq!(
            (native.name.as_str(), native.args.as_str()),
            (name, args),
            "{typed}: native command"
        );
    }
    // Plain text is no command, for the plugin and the host.
    let DecodeOutcome::Message { command, message } =
        decode_like_native(&plugin, &cx, "plain", &with_text("see /usr/bin")).await
    else {
        panic!("plain text is a message");
    };
    assert_eq!(command, None);
    assert!(
        plugin
            .parse_command(&cx, &message.command_body)
            .await
            .unwrap()
            .is_none()
    );
}

/// Pushes one frame and returns the outcome.
async fn push(
    intake: &mut FrameIntake,
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    frame: &[u8],
) -> FrameOutcome {
    intake
        .push(plugin, cx, frame, Instant::now())
        .await
        .expect("classify-frame call")
}

#[tokio::test]
async fn ws_frame_ping() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("ws_frame_ping.json");
    let bytes = unhex(str_at(&fixture, "/frame/hex"));
    let mut intake = FrameIntake::new("conn");
    match push(&mut intake, &plugin, &installation(), &bytes).await {
        FrameOutcome::Control { kind, reply, hints } => {
            assert_eq!(kind, "ping");
            assert!(reply.is_none(), "a server ping is never answered");
            assert!(hints.is_none());
        }
        other => panic!("expected a control frame, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_frame_pong_with_config() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("ws_frame_pong_with_config.json");
    let bytes = unhex(str_at(&fixture, "/frame/hex"));
    let effect = &fixture["expected_effect"];
    let ms = |name: &str| Some(effect[name].as_u64().unwrap() * 1000);
    let mut intake = FrameIntake::new("conn");
    let FrameOutcome::Control { kind, hints, .. } =
        push(&mut intake, &plugin, &installation(), &bytes).await
    else {
        panic!("a pong is a control frame");
    };
    assert_eq!(kind, "pong");
    let hints = hints.expect("the pong carries a ClientConfig");
    assert_eq!(hints.ping_interval_ms, ms("ping_interval_s"));
    assert_eq!(hints.reconnect_interval_ms, ms("reconnect_interval_s"));
    assert_eq!(hints.reconnect_jitter_ms, ms("reconnect_nonce_s"));
    assert_eq!(
        hints.reconnect_count,
        Some(effect["reconnect_count"].as_i64().unwrap() as i32)
    );
}

#[tokio::test]
async fn ws_frame_event_single_and_ack() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let fixture = fixture_json("ws_frame_event_single_and_ack.json");
    let bytes = unhex(str_at(&fixture, "/inbound/hex"));
    let mut intake = FrameIntake::new("conn");
    let FrameOutcome::Complete {
        kind,
        payload,
        ack_frame,
        fragments,
        trace_id,
        event,
    } = push(&mut intake, &plugin, &cx, &bytes).await
    else {
        panic!("a single-frame event completes at once");
    };
    // Read in the classify call, as the separate calls would have read it.
    let event = event.expect("the plugin reads a single-frame event while classifying it");
    assert_eq!(event.routing_key.as_deref(), Some("cli_a5f3c2e1d4b6a789"));
    match (
        pipeline::read_outcome(event),
        decode_like_native(&plugin, &cx, "single frame", &payload).await,
    ) {
        (
            DecodeOutcome::Message {
                message: read,
                command: None,
            },
            DecodeOutcome::Message {
                message,
                command: None,
            },
        ) => {
            // The generated WIT types have no `PartialEq`; their Debug form shows every field.
            assert_eq!(format!("{read:?}"), format!("{message:?}"))
        }
        other => panic!("the frame event differs from the decode call: {other:?}"),
    }
    assert_eq!(kind, "event");
    assert_eq!(fragments, 1);
    assert_eq!(trace_id.as_deref(), Some("9a7c5e3b1d2f4a6c"));
    assert_eq!(
        payload,
        str_at(&fixture, "/inbound/decoded/payload_utf8").as_bytes()
    );
    assert_eq!(ack_frame, bytes);
    assert_eq!(intake.pending_messages(), 0);

    // The payload is the group-mentions event.
    let DecodeOutcome::Message { message, .. } =
        decode_like_native(&plugin, &cx, "single frame", &payload).await
    else {
        panic!("the payload is a message");
    };
    let expected = self::message(&plugin, &cx, "event_receive_text_group_mentions.json").await;
    assert_eq!(message.message_id, expected.message_id);
    assert_eq!(message.body, expected.body);

    // ACK through the plugin: byte-identical to the fixture and to the native encoder.
    let ack = plugin
        .build_ack(&cx, &ack_frame, AckStatus::Ok, 3, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, unhex(str_at(&fixture, "/ack/hex")));
    assert_eq!(
        ack,
        native::transport::build_ack(&bytes, native::transport::AckStatus::Ok, 3, None).unwrap()
    );
    let nack = plugin
        .build_ack(&cx, &ack_frame, AckStatus::Failed, 3, None)
        .await
        .unwrap()
        .unwrap();
    let nack = native::frame::Frame::decode_bytes(&nack).unwrap();
    assert_eq!(
        nack.payload.as_deref(),
        Some(&br#"{"code":500,"headers":null,"data":null}"#[..])
    );
}

#[tokio::test]
async fn ws_frame_event_fragmented() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let fixture = fixture_json("ws_frame_event_fragmented.json");
    let frames: Vec<Vec<u8>> = fixture["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|fragment| unhex(str_at(fragment, "/hex")))
        .collect();
    assert_eq!(frames.len(), 2);
    let expected_payload = str_at(&fixture, "/reassembled_payload_utf8").as_bytes();

    // In order: the first fragment is buffered, the second completes the message, once.
    let mut intake = FrameIntake::new("conn-a");
    let mut completions = Vec::new();
    for (index, frame) in frames.iter().enumerate() {
        match push(&mut intake, &plugin, &cx, frame).await {
            FrameOutcome::Partial {
                message_id,
                received,
                total,
            } => {
                assert_eq!(index, 0, "only the first fragment is partial");
                assert_eq!(message_id, "5e7a9c1b-3d5f-4a7b-9c1d-3e5f7a9b1c2d");
                assert_eq!((received, total), (1, 2));
                assert_eq!(intake.pending_messages(), 1);
            }
            FrameOutcome::Complete {
                payload,
                ack_frame,
                fragments,
                event,
                ..
            } => {
                assert!(
                    event.is_none(),
                    "a fragment is never read before reassembly"
                );
                completions.push((index, payload, ack_frame, fragments))
            }
            other => panic!("fragment {index}: unexpected {other:?}"),
        }
    }
    assert_eq!(completions.len(), 1, "exactly one completion");
    let (index, payload, ack_frame, fragments) = completions.pop().unwrap();
    assert_eq!((index, fragments), (1, 2));
    assert_eq!(payload, expected_payload);
    assert_eq!(ack_frame, frames[1], "the completing frame is ACKed");
    assert_eq!(intake.pending_messages(), 0);

    let ack = plugin
        .build_ack(&cx, &ack_frame, AckStatus::Ok, 5, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, unhex(str_at(&fixture, "/ack/hex")));

    // The reassembled payload is the post fixture; the first fragment alone is not JSON.
    let DecodeOutcome::Message { message, .. } =
        decode_like_native(&plugin, &cx, "reassembled", &payload).await
    else {
        panic!("the reassembled payload is a message");
    };
    let post = self::message(&plugin, &cx, "event_receive_post_all_tags.json").await;
    assert_eq!(message.body, post.body);
    let native::transport::FrameClass::Data(first) =
        native::transport::classify_frame(&frames[0]).unwrap()
    else {
        panic!("fragment 0 is a data frame");
    };
    assert!(matches!(
        decode_like_native(&plugin, &cx, "first fragment", &first.payload).await,
        DecodeOutcome::Invalid(PluginError::InvalidInput(_))
    ));
    // A lone second fragment is buffered, never completed.
    assert!(matches!(
        push(&mut FrameIntake::new("conn-lone"), &plugin, &cx, &frames[1]).await,
        FrameOutcome::Partial {
            received: 1,
            total: 2,
            ..
        }
    ));

    // Out of order: still one completion with the same payload, completed by fragment 0.
    let mut intake = FrameIntake::new("conn-b");
    assert!(matches!(
        push(&mut intake, &plugin, &cx, &frames[1]).await,
        FrameOutcome::Partial { received: 1, .. }
    ));
    let FrameOutcome::Complete {
        payload, ack_frame, ..
    } = push(&mut intake, &plugin, &cx, &frames[0]).await
    else {
        panic!("the second arrival completes the message");
    };
    assert_eq!(payload, expected_payload);
    assert_eq!(ack_frame, frames[0]);
}

#[tokio::test]
async fn ws_frame_card_type_ignored() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("ws_frame_card_type_ignored.json");
    let bytes = unhex(str_at(&fixture, "/frame/hex"));
    let mut intake = FrameIntake::new("conn");
    match push(&mut intake, &plugin, &installation(), &bytes).await {
        FrameOutcome::Ignored(reason) => assert!(reason.contains("card"), "{reason}"),
        other => panic!("type=card frames are ignored, got {other:?}"),
    }
    assert_eq!(intake.pending_messages(), 0);
}

#[tokio::test]
async fn event_card_action_trigger_is_an_action() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let name = "event_card_action_trigger.json";
    match decode_like_native(&plugin, &installation(), name, &fixture_bytes(name)).await {
        DecodeOutcome::Message { message, .. } => {
            assert_eq!(message.message_type, "action");
            assert_eq!(
                message.parent_id.as_deref(),
                Some("om_5b3c0000000000000000000000ccc001")
            );
        }
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn ws_frame_card_action_callback_and_ack() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let fixture = fixture_json("ws_frame_card_action_callback_and_ack.json");
    let bytes = unhex(str_at(&fixture, "/inbound/hex"));
    let mut intake = FrameIntake::new("conn");
    let FrameOutcome::Complete {
        payload, ack_frame, ..
    } = push(&mut intake, &plugin, &cx, &bytes).await
    else {
        panic!("card callbacks travel as ordinary event frames");
    };
    // A card callback is an action (native `decode_event` reads chat messages only).
    match pipeline::decode_payload(&plugin, &cx, &payload)
        .await
        .unwrap()
    {
        DecodeOutcome::Message {
            message,
            command: Some(Command::Action { name, value, .. }),
        } => {
            assert_eq!(name, "approve");
            assert!(value.contains("req-42"), "{value}");
            assert_eq!(message.message_id, "9d41f2c7000000000000000000041bbe");
            assert_eq!(message.sender.id, "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4");
        }
        other => panic!("a card callback is an action: {other:?}"),
    }
    // The callback answer travels base64-encoded in the ACK's `data`.
    let ack_payload: Value =
        serde_json::from_str(str_at(&fixture, "/ack/decoded/payload_utf8")).unwrap();
    let response = unbase64(ack_payload["data"].as_str().unwrap());
    let response_json: Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(response_json, fixture["callback_response_json"]);
    let ack = plugin
        .build_ack(&cx, &ack_frame, AckStatus::Ok, 41, Some(&response))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, unhex(str_at(&fixture, "/ack/hex")));
}

#[tokio::test]
async fn malformed_frames_are_invalid() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let mut intake = FrameIntake::new("conn");
    match push(
        &mut intake,
        &plugin,
        &installation(),
        b"\xff\xff\xff not protobuf",
    )
    .await
    {
        FrameOutcome::Invalid(reason) => assert!(reason.starts_with("invalid input"), "{reason}"),
        other => panic!("garbage must be invalid, got {other:?}"),
    }
}

/// A runtime whose `https://open.feishu.cn` goes to a local server answering `status` + `body`.
async fn discovery(status: &str, body: &str) -> Result<String, ConnectError> {
    let status: &'static str = Box::leak(status.to_string().into_boxed_str());
    let body: &'static str = Box::leak(body.to_string().into_boxed_str());
    let server = LocalServer::start(status, "", body, Duration::ZERO).await;
    let runtime = TestRuntime {
        load_bundled: true,
        overrides: vec![
            BaseUrlOverride::new(
                "https://open.feishu.cn",
                &format!("http://127.0.0.1:{}", server.port),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
    .build();
    let cx = Arc::new(
        InstallationContext::new("inst-lark")
            .with_config("app_id", APP_ID)
            .with_secret("app_secret", "s3cret"),
    );
    let plan = lark(&runtime).connect_plan(&cx).await.unwrap()?;
    assert!(
        server
            .last_request
            .lock()
            .unwrap()
            .starts_with("POST /callback/ws/endpoint"),
        "the discovery request went to the local server"
    );
    let ping = fixture_json("ws_frame_ping.json");
    assert_eq!(plan.ping_frame, unhex(str_at(&ping, "/frame/hex")));
    assert_eq!(plan.hints.ping_interval_ms, Some(120_000));
    assert_eq!(plan.hints.reconnect_interval_ms, Some(120_000));
    assert_eq!(plan.hints.reconnect_jitter_ms, Some(30_000));
    assert_eq!(plan.hints.reconnect_count, Some(-1));
    Ok(format!("{} {}", plan.connection_id, plan.url))
}

#[tokio::test]
async fn ws_endpoint_response_ok() {
    let fixture = fixture_json("ws_endpoint_response_ok.json");
    let body = serde_json::to_string(&fixture["response"]["body"]).unwrap();
    let plan = discovery("200 OK", &body).await.expect("a plan");
    assert_eq!(
        plan,
        format!(
            "7436250981472903205 {}",
            str_at(&fixture, "/response/body/data/URL")
        )
    );
}

#[tokio::test]
async fn ws_endpoint_response_error() {
    let fixture = fixture_json("ws_endpoint_response_error.json");
    for case in fixture["cases"].as_array().unwrap() {
        let status = match case["status"].as_u64().unwrap() {
            200 => "200 OK",
            503 => "503 Service Unavailable",
            other => panic!("no status line for {other}"),
        };
        let body = match &case["body"] {
            Value::Null => String::new(),
            body => body.to_string(),
        };
        let error = discovery(status, &body)
            .await
            .expect_err("every case is a failure");
        let retryable = matches!(error, ConnectError::Retryable(_));
        assert_eq!(
            retryable,
            case["retryable"].as_bool().unwrap(),
            "case {case}: {error:?}"
        );
    }
}

#[tokio::test]
async fn ws_handshake_error_exceed_conn_limit() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("ws_handshake_error_exceed_conn_limit.json");
    let status = fixture["response"]["status"].as_u64().unwrap() as u16;
    let headers: Vec<(String, String)> = fixture["response"]["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let error = plugin
        .classify_handshake_failure(&installation(), status, &headers)
        .await
        .unwrap();
    assert!(!fixture["expected"]["retryable"].as_bool().unwrap());
    match error {
        ConnectError::Terminal(message) => {
            assert!(message.contains("exceed connection limit"), "{message}")
        }
        other => panic!("the connection limit is terminal, got {other:?}"),
    }
}

/// The webhook request of a fixture: `raw_body` bytes as they are, or `body` sent compactly.
fn webhook_request(fixture: &Value) -> WebhookRequest {
    let request = &fixture["request"];
    let body = match request.get("raw_body") {
        Some(raw) => raw.as_str().unwrap().as_bytes().to_vec(),
        None => serde_json::to_vec(&request["body"]).unwrap(),
    };
    WebhookRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: request["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
        body,
    }
}

/// The native verdict for the same request and secrets, as (kind, body-or-reason).
fn native_webhook(request: &WebhookRequest, key: Option<&str>, token: Option<&str>) -> String {
    let logic = native::webhook::WebhookRequest {
        method: &request.method,
        headers: &request.headers,
        body: &request.body,
    };
    let secrets = native::webhook::WebhookSecrets {
        encrypt_key: key,
        verification_token: token,
    };
    match native::webhook::verify_webhook(&logic, &secrets) {
        Ok(native::webhook::WebhookVerdict::Challenge(r)) => {
            format!("challenge {}", String::from_utf8_lossy(&r.body))
        }
        Ok(native::webhook::WebhookVerdict::Events(e)) => format!("events {:?}", e.payloads),
        Err(rejection) => format!("rejected {rejection:?}"),
    }
}

fn wasm_webhook(outcome: &WebhookOutcome) -> String {
    match outcome {
        WebhookOutcome::Challenge(r) => format!("challenge {}", String::from_utf8_lossy(&r.body)),
        WebhookOutcome::Events { payloads, .. } => format!("events {payloads:?}"),
        WebhookOutcome::Rejected(rejected) => {
            let variant = match rejected.kind {
                "bad-signature" => "BadSignature",
                "bad-token" => "BadToken",
                "decrypt-failed" => "DecryptFailed",
                "malformed" => "Malformed",
                other => panic!("unknown rejection kind {other}"),
            };
            format!("rejected {variant}({:?})", rejected.reason)
        }
    }
}

async fn verify(
    plugin: &Plugin,
    cx: &Arc<InstallationContext>,
    request: &WebhookRequest,
) -> WebhookOutcome {
    let outcome = pipeline::verify_webhook(plugin, cx, request)
        .await
        .expect("verify-webhook call");
    let secret = |key: &str| cx.secrets.get(key).map(|s| s.expose().to_string());
    let (key, token) = (secret("encrypt_key"), secret("verification_token"));
    assert_eq!(
        wasm_webhook(&outcome),
        native_webhook(request, key.as_deref(), token.as_deref()),
        "wasm and native verdicts differ"
    );
    outcome
}

#[tokio::test]
async fn webhook_url_verification_plain() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("webhook_url_verification_plain.json");
    let request = webhook_request(&fixture);
    // No Encrypt Key configured for a plain endpoint; the token is checked.
    let cx = Arc::new(
        InstallationContext::new("inst-plain")
            .with_secret("verification_token", VERIFICATION_TOKEN),
    );
    let WebhookOutcome::Challenge(response) = verify(&plugin, &cx, &request).await else {
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

    let wrong =
        Arc::new(InstallationContext::new("inst-wrong").with_secret("verification_token", "nope"));
    match verify(&plugin, &wrong, &request).await {
        WebhookOutcome::Rejected(rejected) => assert_eq!(rejected.kind, "bad-token"),
        other => panic!("a wrong token is rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_url_verification_encrypted() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("webhook_url_verification_encrypted.json");
    let request = webhook_request(&fixture);
    let WebhookOutcome::Challenge(response) = verify(&plugin, &installation(), &request).await
    else {
        panic!("the encrypted challenge is decrypted and answered");
    };
    assert_eq!(response.status, 200);
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer, fixture["expected_response"]["body"]);

    let keyless = Arc::new(
        InstallationContext::new("inst-keyless")
            .with_secret("verification_token", VERIFICATION_TOKEN),
    );
    match verify(&plugin, &keyless, &request).await {
        WebhookOutcome::Rejected(rejected) => assert_eq!(rejected.kind, "decrypt-failed"),
        other => panic!("without the key nothing decrypts, got {other:?}"),
    }
    // Without any verification material nothing is even looked at.
    let bare = Arc::new(InstallationContext::new("inst-bare"));
    match verify(&plugin, &bare, &request).await {
        WebhookOutcome::Rejected(rejected) => assert_eq!(rejected.kind, "bad-token"),
        other => panic!("an installation without secrets accepts nothing, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_event_encrypted_signed() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let fixture = fixture_json("webhook_event_encrypted_signed.json");
    let request = webhook_request(&fixture);
    let WebhookOutcome::Events {
        payloads,
        readings,
        signed_at_ms,
        response,
    } = verify(&plugin, &cx, &request).await
    else {
        panic!("a correctly signed delivery is accepted");
    };
    // The signature covers the timestamp: it is reported for the host's replay window.
    let timestamp: i64 = fixture["request"]["headers"]["X-Lark-Request-Timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(signed_at_ms, Some(timestamp * 1000));
    // Read in the verify call (the request came with an installation), as decode reads it.
    let [reading] = <[_; 1]>::try_from(readings).expect("one reading per payload");
    assert_eq!(reading.routing_key.as_deref(), Some(APP_ID));
    let DecodeOutcome::Message { message: read, .. } = pipeline::read_outcome(reading) else {
        panic!("the reading is a chat message");
    };
    assert_eq!(
        payloads,
        vec![str_at(&fixture, "/decrypted_plaintext").as_bytes().to_vec()]
    );
    assert_eq!(response.status, 200);
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer, fixture["expected_response"]["body"]);

    let DecodeOutcome::Message { message, .. } =
        decode_like_native(&plugin, &cx, "webhook event", &payloads[0]).await
    else {
        panic!("the delivered event is a chat message");
    };
    let direct = self::message(&plugin, &cx, "event_receive_text_p2p.json").await;
    assert_eq!(message.message_id, direct.message_id);
    assert_eq!(message.body, direct.body);
    assert_eq!(format!("{read:?}"), format!("{message:?}"));

    // Without an installation (the channel-wide URL) the host routes first: nothing is read.
    let anonymous = Arc::new(
        InstallationContext::new("")
            .with_secret("encrypt_key", ENCRYPT_KEY)
            .with_secret("verification_token", VERIFICATION_TOKEN),
    );
    let WebhookOutcome::Events {
        payloads, readings, ..
    } = verify(&plugin, &anonymous, &request).await
    else {
        panic!("the delivery verifies with the same secrets");
    };
    assert_eq!(payloads.len(), 1);
    assert!(
        readings.is_empty(),
        "read without an installation: {readings:?}"
    );

    // A changed timestamp breaks the signature.
    let mut replayed = request.clone();
    for (name, value) in &mut replayed.headers {
        if name == "X-Lark-Request-Timestamp" {
            *value = "1731309999".into();
        }
    }
    match verify(&plugin, &cx, &replayed).await {
        WebhookOutcome::Rejected(rejected) => assert_eq!(rejected.kind, "bad-signature"),
        other => panic!("a replayed timestamp is rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_event_tampered_signature() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let fixture = fixture_json("webhook_event_tampered_signature.json");
    assert_eq!(str_at(&fixture, "/expected"), "signature_mismatch");
    let request = webhook_request(&fixture);
    match verify(&plugin, &installation(), &request).await {
        WebhookOutcome::Rejected(rejected) => {
            assert_eq!(rejected.kind, "bad-signature");
            assert!(rejected.reason.contains("does not match"), "{rejected}");
        }
        other => panic!("a tampered body must fail the signature check, got {other:?}"),
    }
}

/// The REST fixtures are answers the plugin reads over `http`, not inbound units: handed to the
/// decoder anyway, the wasm plugin answers exactly as the native one (no trap, no message).
#[tokio::test]
async fn rest_fixtures_are_not_events() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let names = [
        "rest_bot_info.json",
        "rest_error_rate_limited.json",
        "rest_error_token_invalid.json",
        "rest_get_message_merge_forward.json",
        "rest_get_message_single.json",
        "rest_reply_message_post.json",
        "rest_send_message_interactive.json",
        "rest_send_message_text.json",
        "rest_tenant_access_token.json",
    ];
    assert_eq!(
        names.to_vec(),
        files_with_prefix("rest_"),
        "the REST fixture set"
    );
    for name in names {
        let outcome = decode_like_native(&plugin, &cx, name, &fixture_bytes(name)).await;
        assert!(
            !matches!(outcome, DecodeOutcome::Message { .. }),
            "{name} is not a chat message"
        );
    }
}

/// Every fixture file is named by a test in this file.
#[test]
fn every_fixture_file_is_covered() {
    let source = include_str!("lark_wasm.rs");
    let names = files_with_prefix("");
    assert!(names.len() >= 58, "found only {} fixtures", names.len());
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !source.contains(&format!("\"{name}\"")))
        .collect();
    assert!(missing.is_empty(), "fixtures not covered: {missing:?}");
}

/// Every event fixture, sent as one data frame: the event the plugin reads in the classify
/// call is what the separate routing-key, decode and command calls answer (the connector uses
/// it in their place).
#[tokio::test]
async fn frame_events_read_at_classification_match_the_separate_calls() {
    let runtime = runtime();
    let plugin = lark(&runtime);
    let cx = installation();
    let names = event_fixture_names();
    // Plus commands, which the fixtures do not carry.
    let mut payloads: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|name| (name.clone(), fixture_bytes(name)))
        .collect();
    let text_event = fixture_json("event_receive_text_p2p.json");
    for text in ["/new", "/issue Broken login\nsteps to reproduce", "/issue"] {
        let mut event = text_event.clone();
        event["event"]["message"]["content"] =
            Value::String(serde_json::json!({ "text": text }).to_string());
        payloads.push((
            format!("command {text:?}"),
            serde_json::to_vec(&event).unwrap(),
        ));
    }
    payloads.push(("not JSON".into(), b"{not json".to_vec()));
    let mut commands = 0;
    for (name, payload) in &payloads {
        let frame = native::frame::Frame {
            seq_id: 1,
            log_id: 2,
            service: 7,
            method: native::frame::METHOD_DATA,
            headers: vec![
                native::frame::Header::new("type", "event"),
                native::frame::Header::new("message_id", "ws-1"),
                native::frame::Header::new("sum", "1"),
                native::frame::Header::new("seq", "0"),
            ],
            payload_encoding: None,
            payload_type: None,
            payload: Some(payload.clone()),
            log_id_new: None,
        }
        .encode_bytes();
        let FrameOutcome::Complete {
            event,
            payload: reassembled,
            ..
        } = push(&mut FrameIntake::new("conn"), &plugin, &cx, &frame).await
        else {
            panic!("{name}: a single data frame completes at once");
        };
        assert_eq!(&reassembled, payload, "{name}: payload");
        let event = event.unwrap_or_else(|| panic!("{name}: not read at classification"));
        let routing_key = plugin.routing_key(&cx, payload).await.unwrap();
        assert_eq!(event.routing_key, routing_key, "{name}: routing key");
        let separate = pipeline::decode_payload(&plugin, &cx, payload)
            .await
            .unwrap();
        match (pipeline::read_outcome(event), separate) {
            (
                DecodeOutcome::Message {
                    message: read,
                    command: read_command,
                },
                DecodeOutcome::Message { message, command },
            ) => {
                // The generated WIT types have no `PartialEq`; their Debug form shows every field.
                assert_eq!(
                    format!("{read:?}"),
                    format!("{message:?}"),
                    "{name}: message"
                );
                assert_eq!(
                    format!("{read_command:?}"),
                    format!("{command:?}"),
                    "{name}: command"
                );
                commands += usize::from(
                    command
                        .as_ref()
                        .is_some_and(|c| !matches!(c, Command::Action { .. })),
                );
            }
            (DecodeOutcome::Ignored(read), DecodeOutcome::Ignored(reason)) => {
                assert_eq!(read, reason, "{name}: ignore reason")
            }
            (DecodeOutcome::Invalid(read), DecodeOutcome::Invalid(error)) => {
                assert_eq!(format!("{read:?}"), format!("{error:?}"), "{name}: error")
            }
            other => panic!("{name}: read {other:?}"),
        }
    }
    assert_eq!(commands, 3, "the three command texts parse as commands");
}
