//! Every event shape of issue 16, decoded from fixtures written from Slack's documented payloads.

mod common;

use common::{BOT, MockHost, fixture};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::decoder::Decoded;
use switchboard_plugin_sdk::types::{ChatKind, InboundAction, InboundMessage, PluginError};
use switchboard_slack::decode::decode;
use switchboard_slack::{keys, webhook};

fn message(host: &mut MockHost, name: &str) -> InboundMessage {
    match decode(host, &fixture(name)).unwrap() {
        Decoded::Message(message) => message,
        other => panic!("{name}: not a message: {other:?}"),
    }
}

fn ignored(name: &str) -> String {
    match decode(&mut MockHost::new(), &fixture(name)).unwrap() {
        Decoded::Ignored(reason) => reason,
        other => panic!("{name}: not ignored: {other:?}"),
    }
}

fn action(payload: &[u8]) -> InboundAction {
    match decode(&mut MockHost::new(), payload).unwrap() {
        Decoded::Action(action) => action,
        other => panic!("not an action: {other:?}"),
    }
}

#[test]
fn a_dm_is_direct_addressed_and_one_session_with_links_and_mentions_read() {
    let mut host = MockHost::new();
    let m = message(&mut host, "im_message.json");
    assert_eq!(m.message_id, "D0DM000001:1718000000.000100");
    assert_eq!(m.event_id, "Ev0IM00001");
    assert_eq!(
        (m.chat.id.as_str(), m.chat.kind),
        ("D0DM000001", ChatKind::Direct)
    );
    assert_eq!(m.sender.id, "U0ALICE001");
    assert!(m.addressed_to_bot);
    assert_eq!(m.thread_id, None, "a DM without thread_ts is one session");
    assert_eq!(m.create_time_ms, 1_718_000_000_000);
    assert_eq!(
        m.body,
        "Hi & welcome: see [the docs](https://example.com/docs) and https://example.com/raw, ask @carol in #general <soon>"
    );
    assert_eq!(m.command_body, m.body);
    assert_eq!(m.mentions.len(), 1);
    assert_eq!(m.mentions[0].key, "<@U0CAROL01|carol>");
    assert_eq!(m.mentions[0].id.as_deref(), Some("U0CAROL01"));
    assert!(!m.mentions[0].is_bot);
}

#[test]
fn a_channel_message_without_a_mention_is_not_addressed() {
    let mut host = MockHost::new();
    let m = message(&mut host, "channel_message.json");
    assert_eq!(m.chat.kind, ChatKind::Channel);
    assert!(!m.addressed_to_bot);
    assert_eq!(m.thread_id, None);
    assert!(host.kv.is_empty(), "no thread recorded for chatter");
}

#[test]
fn a_top_level_mention_starts_a_thread_keyed_by_its_ts_and_strips_the_bot_from_the_command() {
    let mut host = MockHost::new();
    host.kv.insert(keys::name(BOT), b"switchboard".to_vec());
    let m = message(&mut host, "app_mention.json");
    assert_eq!(m.message_id, "C0GENERAL1:1718000002.000300");
    assert_eq!(
        m.chat.kind,
        ChatKind::Channel,
        "app_mention has no channel_type: C… is a channel"
    );
    assert!(m.addressed_to_bot);
    assert_eq!(m.thread_id.as_deref(), Some("1718000002.000300"));
    assert_eq!(m.body, "@switchboard /summarize the thread\nplease");
    assert_eq!(m.command_body, "/summarize the thread\nplease");
    assert!(m.mentions[0].is_bot);
    assert!(
        host.kv
            .contains_key(&keys::thread("C0GENERAL1", "1718000002.000300")),
        "the bot is part of the thread"
    );
    let command = switchboard_slack::commands::parse_command(&m.command_body).unwrap();
    assert_eq!(
        (command.name.as_str(), command.args.as_str()),
        ("summarize", "the thread\nplease")
    );
}

#[test]
fn a_thread_reply_addresses_the_bot_only_in_a_thread_it_is_part_of() {
    let mut host = MockHost::new();
    let outside = message(&mut host, "thread_reply.json");
    assert!(!outside.addressed_to_bot, "not the bot's thread");
    assert_eq!(
        outside.chat.kind,
        ChatKind::Group,
        "a private channel is a group"
    );
    host.kv.insert(
        keys::thread("G0PRIVATE1", "1718000002.000300"),
        b"1".to_vec(),
    );
    let inside = message(&mut host, "thread_reply.json");
    assert!(inside.addressed_to_bot);
    assert_eq!(inside.thread_id.as_deref(), Some("1718000002.000300"));
    assert_eq!(
        inside.parent_id.as_deref(),
        Some("G0PRIVATE1:1718000002.000300")
    );
    assert_eq!(inside.root_id, inside.parent_id);
}

#[test]
fn file_share_becomes_attachments() {
    let m = message(&mut MockHost::new(), "file_share.json");
    assert_eq!(m.message_type, "file");
    assert_eq!(m.body, "here is the report");
    assert_eq!(m.attachments.len(), 2);
    let pdf = &m.attachments[0];
    assert_eq!(
        (
            pdf.kind.as_str(),
            pdf.name.as_deref(),
            pdf.mime.as_deref(),
            pdf.size
        ),
        (
            "file",
            Some("report.pdf"),
            Some("application/pdf"),
            Some(48213)
        )
    );
    assert_eq!(
        pdf.ref_,
        "https://files.slack.com/files-pri/T0TEAM0001-F0FILE0001/download/report.pdf"
    );
    assert_eq!(m.attachments[1].kind, "image");
    assert_eq!(
        m.attachments[1].ref_,
        "https://files.slack.com/files-pri/T0TEAM0001-F0FILE0002/chart.png"
    );
}

#[test]
fn bots_edits_deletions_joins_and_other_events_are_ignored_with_a_reason() {
    assert!(ignored("bot_message.json").contains("bot"));
    assert!(
        ignored("own_message.json").contains("bot"),
        "user = bot_user_id"
    );
    assert!(ignored("message_changed.json").contains("message_changed"));
    assert!(ignored("message_deleted.json").contains("message_deleted"));
    assert!(ignored("channel_join.json").contains("channel_join"));
    assert!(ignored("reaction_added.json").contains("reaction_added"));
    assert!(ignored("url_verification.json").contains("url_verification"));
    assert!(ignored("socket_hello.json").contains("hello"));
    assert!(ignored("socket_disconnect.json").contains("disconnect"));
}

#[test]
fn block_actions_become_actions() {
    let a = action(&fixture("block_actions.json"));
    assert_eq!(a.action_id, "1718000011.12345.abcdef");
    assert_eq!(
        (a.name.as_str(), a.value.as_str()),
        ("approve", "{\"deploy\":42}")
    );
    assert_eq!(
        (a.chat.id.as_str(), a.chat.kind),
        ("C0GENERAL1", ChatKind::Channel)
    );
    assert_eq!(a.sender.id, "U0ALICE001");
    assert_eq!(a.sender.display_name.as_deref(), Some("alice"));
    assert_eq!(
        a.message_id.as_deref(),
        Some("C0GENERAL1:1718000010.001200")
    );
    assert_eq!(
        a.thread_id.as_deref(),
        Some("1718000002.000300"),
        "the button's thread"
    );
    assert_eq!(a.answer_deadline_ms, Some(3_000));
    assert_eq!(a.create_time_ms, 1_718_000_011_001);
}

#[test]
fn slash_commands_become_command_messages_over_http_and_socket_mode() {
    let form = webhook::read_body(&fixture("slash_command.form")).unwrap();
    for payload in [
        form.to_string().into_bytes(),
        fixture("socket_slash_commands.json"),
    ] {
        let m = match decode(&mut MockHost::new(), &payload).unwrap() {
            Decoded::Message(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.command_body, "/deploy prod now");
        assert_eq!(m.chat.kind, ChatKind::Direct);
        assert!(m.addressed_to_bot);
        assert_eq!(m.message_id, "D0DM000001:cmd:1718000012.12345.cmd");
        assert_eq!(m.sender.display_name.as_deref(), Some("alice"));
        let command = switchboard_slack::commands::parse_command(&m.command_body).unwrap();
        assert_eq!(
            (command.name.as_str(), command.args.as_str()),
            ("deploy", "prod now")
        );
    }
}

#[test]
fn socket_mode_envelopes_are_unwrapped() {
    let mut host = MockHost::new();
    let m = message(&mut host, "socket_events_api.json");
    assert_eq!(m.message_id, "C0GENERAL1:1718000002.000300");
    let a = action(&fixture("socket_interactive.json"));
    assert_eq!(a.name, "approve");
}

#[test]
fn the_same_message_as_message_and_app_mention_has_one_message_id() {
    let mention = message(&mut MockHost::new(), "app_mention.json");
    let mut body: serde_json::Value = serde_json::from_slice(&fixture("app_mention.json")).unwrap();
    body["event"]["type"] = "message".into();
    body["event"]["channel_type"] = "channel".into();
    body["event_id"] = "Ev0OTHER001".into();
    let plain = match decode(&mut MockHost::new(), body.to_string().as_bytes()).unwrap() {
        Decoded::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(plain.message_id, mention.message_id);
    assert_ne!(plain.event_id, mention.event_id);
}

#[test]
fn malformed_payloads_are_invalid_input() {
    for payload in [
        &b"not json"[..],
        br#"{"type":"event_callback"}"#,
        br#"{"type":"event_callback","event":{"type":"message","text":"x"}}"#,
        br#"{"type":"block_actions","actions":[]}"#,
    ] {
        assert!(
            matches!(
                decode(&mut MockHost::new(), payload),
                Err(PluginError::InvalidInput(_))
            ),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn commands_parse_like_lark() {
    use switchboard_slack::commands::parse_command;
    assert_eq!(parse_command("/new").map(|c| c.name), Some("new".into()));
    assert_eq!(
        parse_command("  /Stop  now ").map(|c| (c.name, c.args)),
        Some(("stop".into(), "now".into()))
    );
    assert!(parse_command("/usr/bin is a path").is_none());
    assert!(parse_command("hello /new").is_none());
    assert!(parse_command("/").is_none());
}
