//! Decoder, content flattening and mention behaviour (reference §C–E and the
//! ws_frame_decoder / content_flatten tests), on constructed payloads.

use serde_json::{Value, json};
use switchboard_lark::content::{flatten_content, flatten_post};
use switchboard_lark::decode::{
    ChatType, DecodeContext, DecodeError, Decoded, InboundMessage, decode_event, routing_key,
};
use switchboard_lark::mentions::{BotIdentity, Mention, resolve_mentions};

const BOT_OPEN: &str = "ou_bot";
const BOT_UNION: &str = "on_bot";

/// A v2 `im.message.receive_v1` payload; `message` fields override the defaults.
fn receive_event(message: Value) -> Vec<u8> {
    let mut base = json!({
        "message_id": "om_1",
        "chat_id": "oc_group",
        "chat_type": "group",
        "message_type": "text",
        "content": "{\"text\":\"hello\"}",
        "create_time": "1731300000000"
    });
    for (key, value) in message.as_object().unwrap() {
        base[key] = value.clone();
    }
    serde_json::to_vec(&json!({
        "schema": "2.0",
        "header": {
            "event_id": "ev_1",
            "event_type": "im.message.receive_v1",
            "create_time": "1731300000150",
            "app_id": "cli_app",
            "tenant_key": "t"
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": "ou_alice", "union_id": "on_alice", "user_id": "u1"},
                "sender_type": "user"
            },
            "message": base
        }
    }))
    .unwrap()
}

fn text_content(text: &str) -> String {
    json!({ "text": text }).to_string()
}

fn mention(key: &str, name: &str, open_id: &str, union_id: &str) -> Value {
    json!({"key": key, "name": name, "id": {"open_id": open_id, "union_id": union_id}})
}

fn decode(payload: &[u8], ctx: &DecodeContext<'_>) -> InboundMessage {
    match decode_event(payload, ctx) {
        Ok(Decoded::Message(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn bot_ctx() -> DecodeContext<'static> {
    DecodeContext::new(BOT_OPEN, BOT_UNION)
}

#[test]
fn text_message_in_p2p() {
    let payload = receive_event(json!({"chat_type": "p2p", "chat_id": "oc_dm"}));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.event_id, "ev_1");
    assert_eq!(message.app_id, "cli_app");
    assert_eq!(message.chat_type, ChatType::Direct);
    assert_eq!(message.chat_id, "oc_dm");
    assert_eq!(message.message_id, "om_1");
    assert_eq!(message.sender.open_id, "ou_alice");
    assert_eq!(message.body, "hello");
    assert_eq!(message.command_body, "hello");
    assert!(!message.addressed_to_bot);
    assert_eq!(message.create_time_ms, 1_731_300_000_000);
}

#[test]
fn p2p_is_never_addressed_even_with_a_bot_mention() {
    let payload = receive_event(json!({
        "chat_type": "p2p",
        "content": text_content("@_user_1 hi"),
        "mentions": [mention("@_user_1", "Bot", BOT_OPEN, BOT_UNION)]
    }));
    let message = decode(&payload, &bot_ctx());
    assert!(!message.addressed_to_bot);
    assert_eq!(message.body, "hi");
}

#[test]
fn group_mention_discrimination() {
    let to_bot = receive_event(json!({
        "content": text_content("@_user_1 hi"),
        "mentions": [mention("@_user_1", "Bot", BOT_OPEN, "")]
    }));
    let to_other = receive_event(json!({
        "content": text_content("@_user_1 hi"),
        "mentions": [mention("@_user_1", "Carol", "ou_carol", "")]
    }));
    let ctx = DecodeContext::new(BOT_OPEN, "");
    assert!(decode(&to_bot, &ctx).addressed_to_bot);
    assert!(!decode(&to_other, &ctx).addressed_to_bot);
    assert_eq!(decode(&to_other, &ctx).body, "@Carol hi");
}

#[test]
fn group_mention_union_id_wins() {
    // union_id match beats an open_id mismatch (open_ids differ across bots' perspectives).
    let union_match = receive_event(json!({
        "content": text_content("@_user_1 hi"),
        "mentions": [mention("@_user_1", "Bot", "ou_seen_by_other_app", BOT_UNION)]
    }));
    assert!(decode(&union_match, &bot_ctx()).addressed_to_bot);
    // union_id mismatch beats an open_id match.
    let union_mismatch = receive_event(json!({
        "content": text_content("@_user_1 hi"),
        "mentions": [mention("@_user_1", "Sibling", BOT_OPEN, "on_sibling")]
    }));
    let message = decode(&union_mismatch, &bot_ctx());
    assert!(!message.addressed_to_bot);
    assert_eq!(
        message.body, "@Sibling hi",
        "an open_id-only match is not stripped"
    );
    // open_id fallback only when the installation has no union_id.
    assert!(decode(&union_mismatch, &DecodeContext::new(BOT_OPEN, "")).addressed_to_bot);
    // Neither identifier known: never addressed.
    assert!(!decode(&union_match, &DecodeContext::default()).addressed_to_bot);
}

#[test]
fn mention_placeholder_rewrite() {
    let ctx = bot_ctx();
    let bot = mention("@_user_1", "Helper Bot", BOT_OPEN, BOT_UNION);
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        // Bot mention removed with exactly one adjacent space; others → @Name.
        (
            "@_user_1 ping @_user_2",
            vec![bot.clone(), mention("@_user_2", "Alice", "ou_a", "on_a")],
            "ping @Alice",
        ),
        // Double space, newline and indentation preserved (no trimming).
        (
            "@_user_1  first line\nsecond line",
            vec![bot.clone()],
            " first line\nsecond line",
        ),
        ("@_user_1\n\tindented", vec![bot.clone()], "\n\tindented"),
        // @_user_10 is not mangled by @_user_1.
        (
            "@_user_10 and @_user_1",
            vec![bot.clone(), mention("@_user_10", "Ten", "ou_10", "on_10")],
            "@Ten and",
        ),
        // Both bots mentioned: self removed, sibling named.
        (
            "@_user_1 @_user_2 please coordinate",
            vec![
                bot.clone(),
                mention("@_user_2", "Sibling Bot", "ou_sib", "on_sib"),
            ],
            "@Sibling Bot please coordinate",
        ),
    ];
    for (text, mentions, expected) in cases {
        let payload = receive_event(json!({"content": text_content(text), "mentions": mentions}));
        let message = decode(&payload, &ctx);
        assert_eq!(message.body, expected, "input {text:?}");
        assert_eq!(message.command_body, expected);
    }
}

#[test]
fn non_message_envelopes_are_ignored() {
    let ctx = bot_ctx();
    let ignored = |payload: Value| match decode_event(&serde_json::to_vec(&payload).unwrap(), &ctx)
    {
        Ok(Decoded::Ignored(reason)) => reason,
        other => panic!("expected ignored for {payload}, got {other:?}"),
    };
    assert!(ignored(json!({"type": "heartbeat"})).contains("heartbeat"));
    assert!(ignored(json!({"type": "frame_ack", "data": {}})).contains("frame_ack"));
    assert!(ignored(json!({"schema": "2.0", "header": {"event_type": "im.chat.access_event_v1"}, "event": {}}))
        .contains("im.chat.access_event_v1"));
    assert!(ignored(json!({"schema": "2.0", "header": {}, "event": {}})).contains("event_type"));
    assert!(ignored(json!({"unrelated": true})).contains("envelope"));
}

#[test]
fn empty_payload_is_ignored() {
    for payload in [&b""[..], b"  \n"] {
        assert_eq!(
            decode_event(payload, &bot_ctx()),
            Ok(Decoded::Ignored("empty payload".into()))
        );
    }
}

#[test]
fn malformed_payload_is_an_error() {
    for payload in [
        &b"{not json"[..],
        b"[1,2]",
        b"\"str\"",
        b"{\"schema\":\"2.0\",\"header\":",
    ] {
        assert!(
            matches!(
                decode_event(payload, &bot_ctx()),
                Err(DecodeError::InvalidJson(_))
            ),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
    }
    let no_event = json!({"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}});
    assert_eq!(
        decode_event(&serde_json::to_vec(&no_event).unwrap(), &bot_ctx()),
        Err(DecodeError::MissingField("event"))
    );
    let no_message = json!({"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}, "event": {"sender": {}}});
    assert_eq!(
        decode_event(&serde_json::to_vec(&no_message).unwrap(), &bot_ctx()),
        Err(DecodeError::MissingField("event.message"))
    );
}

#[test]
fn invalid_content_json_gives_empty_body() {
    for message_type in ["text", "post", "image", "interactive"] {
        let payload = receive_event(json!({"message_type": message_type, "content": "{oops"}));
        let message = decode(&payload, &bot_ctx());
        assert_eq!(message.body, "", "{message_type}");
        assert_eq!(message.message_id, "om_1", "still handled");
    }
}

#[test]
fn media_message_keeps_placeholder() {
    let payload = receive_event(json!({
        "message_type": "image",
        "content": "{\"image_key\":\"img_v3_x\"}",
        "message_id": "om_img"
    }));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.body, "[Image]");
    assert_eq!(message.message_type, "image");
    assert_eq!(message.message_id, "om_img");
}

#[test]
fn post_message_flattened() {
    let content = json!({
        "title": "周报",
        "content": [
            [{"tag": "text", "text": "本周完成："}],
            [{"tag": "text", "text": "Lark 集成"}, {"tag": "a", "text": "PR #3277", "href": "https://github.com/multica-ai/multica/pull/3277"}]
        ]
    });
    let payload = receive_event(json!({"message_type": "post", "content": content.to_string()}));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.message_type, "post");
    assert_eq!(
        message.body,
        "周报\n本周完成：\nLark 集成 PR #3277 (https://github.com/multica-ai/multica/pull/3277)"
    );
}

#[test]
fn post_resolves_mentions() {
    let content = json!({
        "title": "",
        "content": [[
            {"tag": "at", "user_id": "@_user_1"},
            {"tag": "text", "text": "ask"},
            {"tag": "at", "user_id": "@_user_2"},
            {"tag": "text", "text": "about it"}
        ]]
    });
    let payload = receive_event(json!({
        "message_type": "post",
        "content": content.to_string(),
        "mentions": [mention("@_user_1", "Bot", BOT_OPEN, BOT_UNION), mention("@_user_2", "Alice", "ou_a", "on_a")]
    }));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.body, "ask @Alice about it");
    assert!(message.addressed_to_bot);
}

#[test]
fn post_at_by_open_id_and_all() {
    let content = json!({"content": [[
        {"tag": "at", "user_id": BOT_OPEN, "user_name": "Helper Bot"},
        {"tag": "text", "text": " hey "},
        {"tag": "at", "user_id": "all"},
        {"tag": "at", "user_id": "ou_stranger", "user_name": "Stranger"}
    ]]});
    let payload = receive_event(json!({
        "message_type": "post",
        "content": content.to_string(),
        "mentions": [mention("@_user_1", "Helper Bot", BOT_OPEN, BOT_UNION)]
    }));
    assert_eq!(decode(&payload, &bot_ctx()).body, "hey @all @Stranger");
}

#[test]
fn captures_reply_linkage() {
    let payload = receive_event(json!({
        "parent_id": "om_parent",
        "root_id": "om_root",
        "content": text_content("/issue fix it")
    }));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.parent_id.as_deref(), Some("om_parent"));
    assert_eq!(message.root_id.as_deref(), Some("om_root"));
    assert_eq!(message.command_body, "/issue fix it");
}

#[test]
fn captures_thread_id_and_non_thread_has_none() {
    let threaded = receive_event(json!({"thread_id": "omt_1"}));
    assert_eq!(
        decode(&threaded, &bot_ctx()).thread_id.as_deref(),
        Some("omt_1")
    );
    let plain = receive_event(json!({"thread_id": ""}));
    assert_eq!(decode(&plain, &bot_ctx()).thread_id, None);
    let absent = receive_event(json!({}));
    assert_eq!(decode(&absent, &bot_ctx()).thread_id, None);
}

#[test]
fn odd_field_types_degrade_instead_of_failing() {
    let payload = receive_event(json!({
        "create_time": 1_731_300_000_999_i64,
        "chat_type": "topic_group",
        "mentions": [null, 5, {"key": "@_user_1", "id": "ou_flat", "name": "Flat"}],
        "root_id": null,
        "content": text_content("@_user_1 ok")
    }));
    let message = decode(&payload, &bot_ctx());
    assert_eq!(message.create_time_ms, 1_731_300_000_999);
    assert_eq!(message.chat_type, ChatType::Group);
    assert_eq!(message.root_id, None);
    assert_eq!(
        message.mentions,
        vec![Mention {
            key: "@_user_1".into(),
            name: "Flat".into(),
            open_id: Some("ou_flat".into()),
            union_id: None,
        }]
    );
    assert_eq!(message.body, "@Flat ok");

    // Missing message create_time falls back to the header's.
    let payload = receive_event(json!({"create_time": null}));
    assert_eq!(
        decode(&payload, &bot_ctx()).create_time_ms,
        1_731_300_000_150
    );
}

#[test]
fn routing_key_prefers_header_app_id() {
    assert_eq!(
        routing_key(&receive_event(json!({}))).as_deref(),
        Some("cli_app")
    );
    assert_eq!(
        routing_key(br#"{"uuid":"u","event":{"app_id":"cli_v1"}}"#).as_deref(),
        Some("cli_v1")
    );
    assert_eq!(
        routing_key(br#"{"schema":"2.0","header":{"app_id":""}}"#),
        None
    );
    assert_eq!(routing_key(b"garbage"), None);
    assert_eq!(
        routing_key(br#"["2.0", null, null, "cli_positional"]"#),
        None
    );
}

// content_flatten tests

#[test]
fn flatten_post_issue_example() {
    let post = json!({"title": "周报", "content": [
        [{"tag": "text", "text": "本周完成："}],
        [{"tag": "text", "text": "Lark 集成"}, {"tag": "a", "text": "PR #3277", "href": "https://github.com/multica-ai/multica/pull/3277"}]
    ]});
    assert_eq!(
        flatten_post(&post, &[]),
        "周报\n本周完成：\nLark 集成 PR #3277 (https://github.com/multica-ai/multica/pull/3277)"
    );
}

#[test]
fn flatten_post_without_title() {
    let post = json!({"content": [[{"tag": "text", "text": "line one"}], [{"tag": "text", "text": "line two"}]]});
    assert_eq!(flatten_post(&post, &[]), "line one\nline two");
}

#[test]
fn flatten_post_media_and_mention_spans() {
    let post = json!({"content": [[
        {"tag": "at", "user_id": "@_user_1"},
        {"tag": "text", "text": "look"},
        {"tag": "img", "image_key": "img_1"},
        {"tag": "emotion", "emoji_type": "SMILE"}
    ]]});
    assert_eq!(flatten_post(&post, &[]), "@_user_1 look [Image]");
}

#[test]
fn flatten_post_at_prefers_resolved_name() {
    let post = json!({"content": [[{"tag": "at", "user_id": "@_user_1", "user_name": "Tom"}]]});
    assert_eq!(flatten_post(&post, &[]), "@Tom");
}

#[test]
fn flatten_post_link_variants_and_hr() {
    let post = json!({"content": [
        [{"tag": "a", "text": "only text"}],
        [{"tag": "a", "href": "https://only.href"}],
        [{"tag": "a", "text": "https://same", "href": "https://same"}],
        [{"tag": "hr"}],
        [{"tag": "code_block", "text": "x = 1"}, {"tag": "unknown", "text": "tail"}, {"tag": "unknown"}]
    ]});
    assert_eq!(
        flatten_post(&post, &[]),
        "only text\nhttps://only.href\nhttps://same\n---\nx = 1 tail"
    );
}

#[test]
fn flatten_post_malformed() {
    for post in [
        json!(null),
        json!("text"),
        json!({}),
        json!({"content": "nope"}),
        json!({"content": []}),
    ] {
        assert_eq!(flatten_post(&post, &[]), "", "{post}");
    }
    assert_eq!(flatten_content("post", "{broken"), "");
    assert_eq!(flatten_content("post", ""), "");
}

#[test]
fn flatten_content_dispatch_by_type() {
    let cases = [
        ("text", r#"{"text":"hi"}"#, "hi"),
        ("image", r#"{"image_key":"img"}"#, "[Image]"),
        ("file", r#"{"file_key":"f"}"#, "[File]"),
        ("audio", r#"{"file_key":"f"}"#, "[Audio]"),
        ("media", r#"{"file_key":"f"}"#, "[Video]"),
        (
            "video",
            r#"{"file_key":"f","name":"clip.mov"}"#,
            "[Video] clip.mov",
        ),
        ("sticker", r#"{"file_key":"f"}"#, "[Sticker]"),
        ("interactive", r#"{"title":"T","elements":[]}"#, "[Card] T"),
        ("share_chat", r#"{"chat_id":"oc_1"}"#, "[Shared chat] oc_1"),
        (
            "merge_forward",
            r#"{"content":"Merged and Forwarded Message"}"#,
            "[Forwarded messages]",
        ),
        (
            "calendar",
            r#"{"summary":"Sync","start_time":"0"}"#,
            "[Calendar invitation] Sync (1970-01-01 00:00 UTC)",
        ),
        (
            "general_calendar",
            r#"{"summary":"Moved"}"#,
            "[Calendar] Moved",
        ),
        ("unknown_type", r#"{"foo":"bar"}"#, "[unknown_type]"),
    ];
    for (message_type, content, expected) in cases {
        assert_eq!(
            flatten_content(message_type, content),
            expected,
            "{message_type}"
        );
    }
}

#[test]
fn card_with_selects_and_pickers() {
    let card = json!({"title": "", "elements": [[
        {"tag": "select_static", "placeholder": "Env", "options": ["dev", "prod"]},
        {"tag": "overflow", "options": [{"text": {"content": "More"}}]},
        {"tag": "date_picker", "initial_date": "2024-11-12"}
    ], {"tag": "div", "text": {"tag": "lark_md", "content": "**bold**"}}]});
    assert_eq!(
        flatten_content("interactive", &card.to_string()),
        "[Card]\n[Env: dev / prod] [Select: More] [Date] 2024-11-12\n**bold**"
    );
}

#[test]
fn resolve_mentions_helper_matches_decoder() {
    let mentions = vec![Mention {
        key: "@_user_1".into(),
        name: "Bot".into(),
        open_id: Some(BOT_OPEN.into()),
        union_id: None,
    }];
    let bot = BotIdentity {
        open_id: BOT_OPEN,
        union_id: "",
    };
    assert_eq!(
        resolve_mentions("hi @_user_1 there", &mentions, &bot),
        "hi there"
    );
}
