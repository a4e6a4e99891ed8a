//! Every update shape of the issue, decoded from the hand-written fixtures in `fixtures/`.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::decoder::Decoded;
use switchboard_plugin_sdk::types::{ChatKind, InboundAction, InboundMessage, PluginError};
use switchboard_telegram::commands::parse;
use switchboard_telegram::decode::{Bot, CALLBACK_DEADLINE_MS, decode};

const BOT: Bot = Bot {
    id: "7000000001",
    username: "switchboard_test_bot",
    now_ms: 1_800_000_000_000,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn message(name: &str) -> InboundMessage {
    match decode(&fixture(name), &BOT) {
        Ok(Decoded::Message(m)) => m,
        other => panic!("{name}: {other:?}"),
    }
}

fn ignored(name: &str) -> String {
    match decode(&fixture(name), &BOT) {
        Ok(Decoded::Ignored(reason)) => reason,
        other => panic!("{name}: {other:?}"),
    }
}

fn command(m: &InboundMessage) -> Option<(String, String)> {
    parse(&m.command_body).map(|c| (c.name, c.args))
}

#[test]
fn a_private_text_is_addressed_and_keyed_by_chat_and_message() {
    let m = message("private_text");
    assert_eq!(m.event_id, "900000001");
    assert_eq!(m.message_id, "111222333:10");
    assert_eq!(
        (m.chat.id.as_str(), m.chat.kind),
        ("111222333", ChatKind::Direct)
    );
    assert_eq!(m.chat.title.as_deref(), Some("Ann Lee"));
    assert_eq!(m.sender.id, "111222333");
    assert_eq!(m.sender.display_name.as_deref(), Some("Ann Lee"));
    assert!(!m.sender.is_bot);
    assert_eq!(m.body, "Hello <bot> & friends");
    assert_eq!(m.command_body, m.body);
    assert_eq!(m.message_type, "text");
    assert!(m.addressed_to_bot);
    assert_eq!((&m.thread_id, &m.parent_id), (&None, &None));
    assert_eq!(m.create_time_ms, 1_767_225_600_000);
    assert_eq!(command(&m), None);
}

#[test]
fn group_addressing_rules() {
    let plain = message("group_not_addressed");
    assert_eq!(plain.chat.kind, ChatKind::Group);
    assert_eq!(plain.chat.title.as_deref(), Some("Team chat"));
    assert!(!plain.addressed_to_bot, "a mention of someone else");
    assert_eq!(plain.mentions.len(), 1);
    assert!(!plain.mentions[0].is_bot);

    let mention = message("group_mention");
    assert!(
        mention.addressed_to_bot,
        "a mention entity of @bot_username (any case)"
    );
    assert_eq!(mention.mentions[0].key, "@Switchboard_Test_Bot");
    assert!(mention.mentions[0].is_bot);
    assert_eq!(mention.mentions[0].id.as_deref(), Some("7000000001"));

    let reply = message("group_reply_to_bot");
    assert!(reply.addressed_to_bot, "a reply to the bot's own message");
    assert_eq!(reply.parent_id.as_deref(), Some("-4012345678:19"));
    assert_eq!(
        reply.body,
        "[in reply to the bot: \"2+2 is 4.\"]\nand what about 3+3?"
    );
    assert_eq!(reply.command_body, "and what about 3+3?");

    let ours = message("group_command_ours");
    assert!(ours.addressed_to_bot);
    assert_eq!(ours.command_body, "/new start over");
    assert_eq!(command(&ours), Some(("new".into(), "start over".into())));

    let other = message("group_command_other");
    assert!(!other.addressed_to_bot, "a command for another bot");
    assert_eq!(command(&other), None, "and never one of ours");
}

#[test]
fn a_forum_topic_is_the_thread_and_its_creation_is_no_quote() {
    let m = message("forum_topic");
    assert_eq!(m.chat.kind, ChatKind::Group);
    assert_eq!(m.chat.id, "-1001234567890");
    assert_eq!(m.thread_id.as_deref(), Some("40"));
    assert!(m.addressed_to_bot);
    assert_eq!(m.parent_id, None);
    assert_eq!(m.body, "@switchboard_test_bot status of the release?");
    assert_eq!(m.command_body, "status of the release?");
}

#[test]
fn media_bodies_captions_and_attachments() {
    let photo = message("photo_caption");
    assert_eq!(photo.message_type, "photo");
    assert_eq!(photo.body, "[photo] what is this bird?");
    assert_eq!(photo.command_body, "what is this bird?");
    assert_eq!(photo.attachments.len(), 1);
    let a = &photo.attachments[0];
    assert_eq!((a.kind.as_str(), a.ref_.as_str()), ("image", "AgAC-large"));
    assert_eq!(
        (a.size, a.mime.as_deref()),
        (Some(98765), Some("image/jpeg"))
    );

    let document = message("document");
    assert_eq!(document.body, "[document: report.pdf] /summarize please");
    assert_eq!(
        command(&document),
        Some(("summarize".into(), "please".into()))
    );
    let a = &document.attachments[0];
    assert_eq!((a.kind.as_str(), a.ref_.as_str()), ("file", "BQAC-doc"));
    assert_eq!(
        (a.name.as_deref(), a.mime.as_deref(), a.size),
        (Some("report.pdf"), Some("application/pdf"), Some(204800))
    );

    let video = message("video");
    assert_eq!(
        (video.message_type.as_str(), video.body.as_str()),
        ("video", "[video, 12 s]")
    );
    assert_eq!(video.attachments[0].ref_, "BAAC-vid");
    assert_eq!(video.attachments[0].mime.as_deref(), Some("video/mp4"));

    let voice = message("voice");
    assert_eq!(voice.body, "[voice message, 3 s]");
    assert_eq!(
        (
            voice.attachments[0].kind.as_str(),
            voice.attachments[0].ref_.as_str()
        ),
        ("audio", "AwAC-voice")
    );
}

#[test]
fn stickers_locations_contacts_polls_and_dice_have_meaningful_bodies() {
    let sticker = message("sticker");
    assert_eq!(sticker.body, "[sticker 👍 from the set \"HotCherry\"]");
    assert_eq!(sticker.attachments[0].kind, "sticker");
    assert_eq!(message("location").body, "[location: 48.858844, 2.294351]");
    assert_eq!(message("contact").body, "[contact: Carol Diaz, +15550100]");
    let poll = message("poll");
    assert_eq!(poll.body, "[poll: Ship on Friday? — options: Yes / No]");
    assert!(!poll.addressed_to_bot, "a poll in a group addresses nobody");
    assert_eq!(message("dice").body, "[dice 🎲: 4]");
}

#[test]
fn edits_membership_and_service_messages_are_ignored_with_a_reason() {
    assert_eq!(
        ignored("edited_message"),
        "an edit does not start a new turn"
    );
    assert!(ignored("my_chat_member").contains("my_chat_member"));
    assert!(ignored("service_new_members").contains("new_chat_members"));
    assert!(matches!(
        decode(br#"{"update_id":1,"inline_query":{"id":"q"}}"#, &BOT),
        Ok(Decoded::Ignored(r)) if r.contains("inline_query")
    ));
}

#[test]
fn a_callback_query_is_an_action_on_its_message() {
    let a: InboundAction = match decode(&fixture("callback_query"), &BOT) {
        Ok(Decoded::Action(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (a.event_id.as_str(), a.action_id.as_str()),
        ("900000018", "4382bfdwdsb323b2d9")
    );
    assert_eq!(
        (a.name.as_str(), a.value.as_str()),
        ("approve", "deploy-42")
    );
    assert_eq!(a.message_id.as_deref(), Some("-1001234567890:30"));
    assert_eq!(a.thread_id.as_deref(), Some("40"));
    assert_eq!(a.chat.kind, ChatKind::Group);
    assert_eq!(a.sender.id, "111222333");
    assert_eq!(a.answer_deadline_ms, Some(CALLBACK_DEADLINE_MS));
    assert_eq!(a.create_time_ms, BOT.now_ms);
}

#[test]
fn broken_updates_are_invalid_input() {
    for payload in [
        &b"not json"[..],
        br#"{"message":{}}"#,
        br#"{"update_id":1,"message":{"message_id":1,"date":1,"text":"x"}}"#,
    ] {
        assert!(
            matches!(decode(payload, &BOT), Err(PluginError::InvalidInput(_))),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn commands_follow_the_lark_rules() {
    let p = |t: &str| parse(t).map(|c| (c.name, c.args));
    assert_eq!(p("/New"), Some(("new".into(), String::new())));
    assert_eq!(
        p("  /stop now\nplease "),
        Some(("stop".into(), "now\nplease".into()))
    );
    assert_eq!(p("/new@other_bot"), None);
    assert_eq!(p("/usr/bin"), None);
    assert_eq!(p("hello /new"), None);
    assert_eq!(p("/"), None);
}
