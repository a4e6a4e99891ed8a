//! One test per `event_*.json` fixture: the decoded message (or the ignore reason) and the
//! routing key.

mod common;

use common::*;
use switchboard_lark::decode::{
    Attachment, ChatType, DecodeContext, InboundMessage, Sender, routing_key,
};
use switchboard_lark::mentions::Mention;

fn alice() -> Sender {
    Sender {
        open_id: ALICE_OPEN_ID.into(),
        union_id: Some(ALICE_UNION_ID.into()),
        user_id: Some("a1b2c3d4".into()),
        kind: "user".into(),
    }
}

fn bob() -> Sender {
    Sender {
        open_id: BOB_OPEN_ID.into(),
        union_id: Some("on_1e3c5a7b9d2f4e6a8c0b2d4f6e8a0c2e".into()),
        user_id: Some("e5f6a7b8".into()),
        kind: "user".into(),
    }
}

fn bot_mention() -> Mention {
    Mention {
        key: "@_user_1".into(),
        name: "Helper Bot".into(),
        open_id: Some(BOT_OPEN_ID.into()),
        union_id: Some(BOT_UNION_ID.into()),
    }
}

fn bob_mention(key: &str) -> Mention {
    Mention {
        key: key.into(),
        name: "Bob Li".into(),
        open_id: Some(BOB_OPEN_ID.into()),
        union_id: Some("on_1e3c5a7b9d2f4e6a8c0b2d4f6e8a0c2e".into()),
    }
}

/// Asserts the body and that a non-text message carries no command body.
fn assert_media_like(message: &InboundMessage, message_type: &str, body: &str) {
    assert_eq!(message.message_type, message_type);
    assert_eq!(message.body, body);
    assert_eq!(
        message.command_body, "",
        "only text and post carry a command body"
    );
    assert_eq!(message.app_id, APP_ID);
}

#[test]
fn event_receive_text_p2p() {
    let message = decode_message("event_receive_text_p2p.json");
    assert_eq!(
        message,
        InboundMessage {
            app_id: APP_ID.into(),
            event_id: "9d41f2c7000000000000000000001eef".into(),
            message_id: "om_5b3c000000000000000000000000a001".into(),
            chat_id: P2P_CHAT.into(),
            chat_type: ChatType::Direct,
            sender: alice(),
            message_type: "text".into(),
            body: "Can you summarise yesterday's design review?\n会后请发我纪要".into(),
            command_body: "Can you summarise yesterday's design review?\n会后请发我纪要".into(),
            addressed_to_bot: false,
            parent_id: None,
            root_id: None,
            thread_id: None,
            create_time_ms: 1_731_300_000_000,
            mentions: vec![],
            attachments: vec![],
        }
    );
    assert_eq!(
        routing_key(&fixture_bytes("event_receive_text_p2p.json")).as_deref(),
        Some(APP_ID)
    );
}

#[test]
fn event_receive_text_p2p_no_user_id() {
    let message = decode_message("event_receive_text_p2p_no_user_id.json");
    assert_eq!(message.body, "ping");
    assert_eq!(message.sender.open_id, BOB_OPEN_ID);
    assert_eq!(
        message.sender.user_id, None,
        "user_id: null must decode as absent"
    );
    assert_eq!(
        message.sender.union_id.as_deref(),
        Some("on_1e3c5a7b9d2f4e6a8c0b2d4f6e8a0c2e")
    );
    assert_eq!(message.chat_type, ChatType::Direct);
}

#[test]
fn event_receive_text_group_mentions() {
    let message = decode_message("event_receive_text_group_mentions.json");
    assert_eq!(message.chat_type, ChatType::Group);
    assert!(message.addressed_to_bot);
    assert_eq!(
        message.body,
        "please review @Bob Li's PR [PR #42](https://git.example.com/org/repo/pull/42) before 5pm"
    );
    assert_eq!(message.command_body, message.body);
    assert_eq!(
        message.mentions,
        vec![bot_mention(), bob_mention("@_user_2")]
    );

    // Without any bot identity nothing is stripped and the group message is not addressed.
    let unknown = decode_message_with(
        "event_receive_text_group_mentions.json",
        &DecodeContext::default(),
    );
    assert!(!unknown.addressed_to_bot);
    assert!(
        unknown
            .body
            .starts_with("@Helper Bot please review @Bob Li's PR")
    );

    // open_id fallback when the installation has no union_id.
    let by_open_id = decode_message_with(
        "event_receive_text_group_mentions.json",
        &DecodeContext::new(BOT_OPEN_ID, ""),
    );
    assert!(by_open_id.addressed_to_bot);
    assert_eq!(by_open_id.body, message.body);
}

#[test]
fn event_receive_text_mention_all() {
    let message = decode_message("event_receive_text_mention_all.json");
    assert_eq!(message.body, "@all stand-up moves to 10:30 today");
    assert!(message.mentions.is_empty());
    assert!(
        !message.addressed_to_bot,
        "@all is not an @-mention of the bot"
    );
}

#[test]
fn event_receive_post_all_tags() {
    let message = decode_message("event_receive_post_all_tags.json");
    assert_eq!(message.message_type, "post");
    assert!(message.addressed_to_bot);
    assert_eq!(
        message.attachments,
        [
            attachment(
                "image",
                None,
                "img_v3_02gh_4c1e8a3b-7f2d-4e9a-b6c5-1d0e9f8a7b6g"
            ),
            attachment(
                "video",
                None,
                "file_v3_00gh_9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6g"
            ),
        ]
    );
    assert_eq!(
        message.body,
        "Release checklist v2.3\n\
         owner: @Bob Li please confirm the items below.\n\
         Runbook (https://wiki.example.com/runbooks/release) (read first)\n\
         [Image]\n\
         [Video]\n\
         \n\
         ---\n\
         fn main() {\n    println!(\"ship it\");\n}\n\
         old step removed\n\
         1. tag the release\n2. announce"
    );
    assert_eq!(message.command_body, message.body);
}

#[test]
fn event_receive_image() {
    let message = decode_message("event_receive_image.json");
    assert_media_like(&message, "image", "[Image]");
    assert_eq!(message.message_id, "om_5b3c000000000000000000000000a006");
    assert_eq!(
        message.attachments,
        [attachment(
            "image",
            None,
            "img_v3_02gh_7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1f0g"
        )]
    );
}

fn attachment(kind: &'static str, name: Option<&str>, key: &str) -> Attachment {
    Attachment {
        kind,
        name: name.map(str::to_string),
        key: key.into(),
    }
}

#[test]
fn event_receive_file() {
    let message = decode_message("event_receive_file.json");
    assert_media_like(&message, "file", "[File] Q3-capacity-plan.pdf");
    assert_eq!(
        message.attachments,
        [attachment(
            "file",
            Some("Q3-capacity-plan.pdf"),
            "file_v3_00gh_1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5g"
        )]
    );
}

#[test]
fn event_receive_audio() {
    let message = decode_message("event_receive_audio.json");
    assert_media_like(&message, "audio", "[Audio] 4.2s");
    assert_eq!(
        message.attachments,
        [attachment(
            "audio",
            None,
            "file_v3_00gh_2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6g"
        )]
    );
}

#[test]
fn event_receive_media() {
    let message = decode_message("event_receive_media.json");
    assert_media_like(
        &message,
        "media",
        "[Video] repro-screen-recording.mp4 (15.3s)",
    );
    assert_eq!(
        message.attachments,
        [attachment(
            "video",
            Some("repro-screen-recording.mp4"),
            "file_v3_00gh_3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6g"
        )]
    );
}

#[test]
fn event_receive_sticker() {
    let message = decode_message("event_receive_sticker.json");
    assert_media_like(&message, "sticker", "[Sticker]");
    assert_eq!(message.sender, bob());
    assert!(
        message.attachments.is_empty(),
        "stickers are not downloadable"
    );
}

#[test]
fn event_receive_interactive() {
    let message = decode_message("event_receive_interactive.json");
    assert_media_like(
        &message,
        "interactive",
        "[Card] Deploy approval: api-gateway\n\
         Requested by @Alice Wang\n\
         Version: 2.3.0 → 2.3.1\n\
         ---\n\
         [Approve] [Reject]\n\
         Auto-expires in 30 minutes",
    );
    assert!(
        !message.addressed_to_bot,
        "direct chats are never 'addressed'"
    );
}

#[test]
fn event_receive_share_chat() {
    let message = decode_message("event_receive_share_chat.json");
    assert_media_like(
        &message,
        "share_chat",
        "[Shared chat] oc_77aa88bb99cc00dd11ee22ff33aa44bb",
    );
}

#[test]
fn event_receive_share_user() {
    let message = decode_message("event_receive_share_user.json");
    assert_media_like(
        &message,
        "share_user",
        &format!("[Shared user] {BOB_OPEN_ID}"),
    );
}

#[test]
fn event_receive_merge_forward() {
    let message = decode_message("event_receive_merge_forward.json");
    assert_media_like(&message, "merge_forward", "[Forwarded messages]");
    assert_eq!(message.message_id, "om_5b3c000000000000000000000000f001");
}

#[test]
fn event_receive_reply_in_thread() {
    let message = decode_message("event_receive_reply_in_thread.json");
    assert_eq!(message.body, "same error on staging, logs attached above");
    assert_eq!(message.thread_id.as_deref(), Some("omt_1a7c3e9b5d2f4"));
    assert_eq!(
        message.root_id.as_deref(),
        Some("om_5b3c000000000000000000000000a00f")
    );
    assert_eq!(message.parent_id, message.root_id);
    assert!(message.addressed_to_bot);
    assert_eq!(message.sender, bob());
}

#[test]
fn event_receive_quote_reply_no_thread() {
    let message = decode_message("event_receive_quote_reply_no_thread.json");
    assert_eq!(message.body, "yes, use the second option");
    assert_eq!(message.command_body, "yes, use the second option");
    assert_eq!(
        message.parent_id.as_deref(),
        Some("om_5b3c000000000000000000000000a011")
    );
    assert_eq!(
        message.root_id.as_deref(),
        Some("om_5b3c000000000000000000000000a00f")
    );
    assert_eq!(message.thread_id, None);
}

#[test]
fn event_receive_location() {
    let message = decode_message("event_receive_location.json");
    assert_media_like(
        &message,
        "location",
        "[Location] Shanghai Tower, Lujiazui (31.233462, 121.505366)",
    );
}

#[test]
fn event_receive_todo() {
    let message = decode_message("event_receive_todo.json");
    assert_media_like(
        &message,
        "todo",
        "[Todo] Submit the expense report (due 2024-11-12 08:00 UTC)",
    );
}

#[test]
fn event_receive_vote() {
    let message = decode_message("event_receive_vote.json");
    assert_media_like(
        &message,
        "vote",
        "[Vote] Team lunch on Friday?\n- Dumplings\n- Ramen\n- Salad bar",
    );
    assert!(!message.addressed_to_bot, "group message without mentions");
}

#[test]
fn event_receive_system() {
    let message = decode_message("event_receive_system.json");
    assert_media_like(
        &message,
        "system",
        "[System] Alice Wang invited Bob Li, Helper Bot to this chat.",
    );
    assert_eq!(
        message.sender,
        Sender {
            open_id: String::new(),
            union_id: None,
            user_id: None,
            kind: "unknown".into(),
        }
    );
}

#[test]
fn event_receive_hongbao() {
    let message = decode_message("event_receive_hongbao.json");
    assert_media_like(&message, "hongbao", "[Red packet]");
}

#[test]
fn event_receive_share_calendar_event() {
    let message = decode_message("event_receive_share_calendar_event.json");
    assert_media_like(
        &message,
        "share_calendar_event",
        "[Calendar event] Sprint 47 planning (2024-11-12 03:00–04:00 UTC)",
    );
}

#[test]
fn event_receive_video_chat() {
    let message = decode_message("event_receive_video_chat.json");
    assert_media_like(
        &message,
        "video_chat",
        "[Video call] Incident bridge (started 2024-11-11 04:40 UTC)",
    );
}

#[test]
fn event_receive_folder() {
    let message = decode_message("event_receive_folder.json");
    assert_media_like(&message, "folder", "[Folder] design-assets");
    assert!(message.attachments.is_empty());
}

fn assert_ignored_event(name: &str, event_type: &str) {
    let reason = decode_ignored(name);
    assert!(
        reason.contains(event_type),
        "{name}: reason {reason:?} should name {event_type}"
    );
    assert_eq!(routing_key(&fixture_bytes(name)).as_deref(), Some(APP_ID));
}

#[test]
fn event_bot_added_to_chat() {
    assert_ignored_event(
        "event_bot_added_to_chat.json",
        "im.chat.member.bot.added_v1",
    );
}

#[test]
fn event_bot_removed_from_chat() {
    assert_ignored_event(
        "event_bot_removed_from_chat.json",
        "im.chat.member.bot.deleted_v1",
    );
}

#[test]
fn event_bot_p2p_chat_entered() {
    assert_ignored_event(
        "event_bot_p2p_chat_entered.json",
        "im.chat.access_event.bot_p2p_chat_entered_v1",
    );
}

#[test]
fn event_message_read() {
    assert_ignored_event("event_message_read.json", "im.message.message_read_v1");
}

#[test]
fn event_reaction_created() {
    assert_ignored_event(
        "event_reaction_created.json",
        "im.message.reaction.created_v1",
    );
}

#[test]
fn event_reaction_created_by_app() {
    assert_ignored_event(
        "event_reaction_created_by_app.json",
        "im.message.reaction.created_v1",
    );
}

#[test]
fn event_reaction_deleted() {
    assert_ignored_event(
        "event_reaction_deleted.json",
        "im.message.reaction.deleted_v1",
    );
}

#[test]
fn event_message_recalled() {
    assert_ignored_event("event_message_recalled.json", "im.message.recalled_v1");
}

#[test]
fn event_user_added_to_chat() {
    assert_ignored_event(
        "event_user_added_to_chat.json",
        "im.chat.member.user.added_v1",
    );
}

#[test]
fn event_card_action_trigger() {
    assert_ignored_event("event_card_action_trigger.json", "card.action.trigger");
}

#[test]
fn event_v1_message_legacy() {
    // v1 envelopes carry the app id inside `event`.
    assert_ignored_event(
        "event_v1_message_legacy.json",
        "legacy v1 event `message` is not handled: subscribe the app to `im.message.receive_v1`",
    );
}

#[test]
fn event_v1_p2p_chat_create() {
    assert_ignored_event("event_v1_p2p_chat_create.json", "`p2p_chat_create`");
}
