//! mrkdwn rendering, Block Kit chunking at Slack's limits, error classification, delivery
//! (threads, idempotency, ephemeral notices), streaming, typing, attachments, `on-install` and
//! the enricher, against a scripted host.

mod common;

use common::{BOT, BOT_TOKEN, MockHost};
use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::enricher::Budget;
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::{
    Content, TypingChange,
};
use switchboard_plugin_sdk::http::Error as HttpError;
use switchboard_plugin_sdk::types::{
    Chat, ChatKind, InboundMessage, Mention, Notice, NoticeKind, Participant, PluginError,
    SessionTarget,
};
use switchboard_slack::mrkdwn::{self, BLOCKS_MAX, SECTION_MAX, TEXT_MAX};
use switchboard_slack::{api, enrich, keys, outbound};

fn target(chat: &str, kind: ChatKind, thread: Option<&str>) -> SessionTarget {
    SessionTarget {
        session_id: "s1".into(),
        chat_id: chat.into(),
        chat_kind: kind,
        thread_id: thread.map(str::to_string),
        reply_to: None,
        in_thread: thread.is_some(),
    }
}

#[test]
fn markdown_becomes_mrkdwn() {
    let md = "# Title\nSome **bold**, *italic*, ~~gone~~ and `a<b>` with [docs](https://x.io/a?b=1) & more.\n- one\n* two\n1. three\n> quoted\n```rust\nlet x = a && b;\n```";
    assert_eq!(
        mrkdwn::to_mrkdwn(md),
        "*Title*\nSome *bold*, _italic_, ~gone~ and `a&lt;b&gt;` with <https://x.io/a?b=1|docs> &amp; more.\n• one\n• two\n1. three\n> quoted\n```\nlet x = a &amp;&amp; b;\n```"
    );
    assert_eq!(
        mrkdwn::inline("2 * 3 * 4 and snake_case_name"),
        "2 * 3 * 4 and snake_case_name"
    );
    assert_eq!(mrkdwn::inline("[not a link] (x)"), "[not a link] (x)");
}

#[test]
fn short_plain_replies_are_text_and_structured_ones_blocks() {
    let plain = mrkdwn::render("just **text**");
    assert_eq!(
        plain,
        vec![mrkdwn::Message {
            text: "just *text*".into(),
            blocks: None
        }]
    );
    let structured = mrkdwn::render("## Plan\nstep one\n## Risks\nnone");
    let blocks = structured[0].blocks.as_ref().unwrap();
    let kinds: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["header", "section", "header", "section"]);
    assert_eq!(blocks[0]["text"]["text"], "Plan");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert!(
        structured[0].text.contains("step one"),
        "the fallback text carries the content"
    );
}

#[test]
fn long_replies_are_chunked_at_slacks_limits() {
    let paragraph = "word ".repeat(199) + "end.\n\n";
    let long = paragraph.repeat(200); // ~200,000 characters
    let messages = mrkdwn::render(&long);
    assert!(
        messages.len() >= 2,
        "more than 50 sections: several messages"
    );
    let mut sections = 0;
    for message in &messages {
        let blocks = message.blocks.as_ref().unwrap();
        assert!(blocks.len() <= BLOCKS_MAX);
        assert!(message.text.chars().count() <= TEXT_MAX);
        for block in blocks {
            assert!(block["text"]["text"].as_str().unwrap().chars().count() <= SECTION_MAX);
            sections += 1;
        }
    }
    let words: usize = messages
        .iter()
        .flat_map(|m| m.blocks.clone().unwrap())
        .map(|b| b["text"]["text"].as_str().unwrap().matches("word").count())
        .sum();
    assert_eq!(words, 199 * 200, "nothing lost in the cuts");
    assert!(sections > BLOCKS_MAX);
    let headed = mrkdwn::render(&format!("# {}\nbody", "h".repeat(400)));
    assert_eq!(
        headed[0].blocks.as_ref().unwrap()[0]["text"]["text"]
            .as_str()
            .unwrap()
            .len(),
        150
    );
}

#[test]
fn a_code_block_cut_in_two_is_closed_and_reopened() {
    let code = format!("```\n{}```", "let x = 1;\n".repeat(600));
    let pieces = mrkdwn::chunks(&mrkdwn::to_mrkdwn(&code), SECTION_MAX);
    assert!(pieces.len() >= 2);
    for piece in &pieces {
        assert!(piece.chars().count() <= SECTION_MAX);
        assert_eq!(
            piece.matches("```").count() % 2,
            0,
            "balanced fences: {piece:.40}"
        );
    }
    let multibyte = "é".repeat(7_000);
    assert!(
        mrkdwn::chunks(&multibyte, SECTION_MAX)
            .iter()
            .all(|p| p.chars().count() <= SECTION_MAX)
    );
}

fn answer(
    status: u16,
    headers: &[(&str, &str)],
    body: Value,
) -> switchboard_plugin_sdk::http::Response {
    switchboard_plugin_sdk::http::Response {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string().into_bytes(),
    }
}

#[test]
fn errors_are_classified() {
    let limited = api::read(
        "chat.postMessage",
        &answer(
            429,
            &[("Retry-After", "7")],
            json!({"ok": false, "error": "ratelimited"}),
        ),
    )
    .unwrap_err();
    assert!(limited.retryable);
    assert_eq!(limited.retry_after_ms, Some(7_000));
    let no_header = api::read("chat.postMessage", &answer(429, &[], json!({}))).unwrap_err();
    assert_eq!(no_header.retry_after_ms, Some(api::DEFAULT_RETRY_AFTER_MS));
    for (code, advice) in [
        ("not_in_channel", "invite"),
        ("channel_not_found", "cannot see"),
        ("invalid_auth", "bot_token"),
        ("account_inactive", "deactivated"),
    ] {
        let error = api::read(
            "chat.postMessage",
            &answer(200, &[], json!({"ok": false, "error": code})),
        )
        .unwrap_err();
        assert!(!error.retryable, "{code} is terminal");
        let delivery = error.delivery();
        assert!(!delivery.retryable && delivery.retry_after_ms.is_none());
        assert!(
            delivery.message.contains(code) && delivery.message.contains(advice),
            "{}",
            delivery.message
        );
    }
    let scope = api::read(
        "chat.postMessage",
        &answer(
            200,
            &[],
            json!({"ok": false, "error": "missing_scope", "needed": "chat:write"}),
        ),
    )
    .unwrap_err();
    assert!(scope.operator_message().contains("chat:write"));
    assert!(
        api::read("x", &answer(502, &[], json!({})))
            .unwrap_err()
            .retryable
    );
    assert!(api::ApiError::http("x", &HttpError::Timeout).retryable);
    assert!(!api::ApiError::http("x", &HttpError::NotAllowed("evil".into())).retryable);
    assert!(matches!(
        api::read(
            "auth.test",
            &answer(200, &[], json!({"ok": false, "error": "invalid_auth"}))
        )
        .unwrap_err()
        .plugin(),
        PluginError::Unauthorized(_)
    ));
}

#[test]
fn a_reply_goes_into_the_thread_once_per_idempotency_key() {
    let mut host = MockHost::new();
    let t = target("C0GENERAL1", ChatKind::Channel, Some("1718000002.000300"));
    let content = Content::Reply("hello **there**".into());
    let first = outbound::deliver(&mut host, &t, &content, "reply-run-1").unwrap();
    assert_eq!(host.methods(), ["chat.postMessage"]);
    let sent = host.body(0);
    assert_eq!(
        (
            sent["channel"].as_str(),
            sent["thread_ts"].as_str(),
            sent["text"].as_str()
        ),
        (
            Some("C0GENERAL1"),
            Some("1718000002.000300"),
            Some("hello *there*")
        )
    );
    assert_eq!(
        host.requests[0].headers[0],
        ("authorization".into(), format!("Bearer {BOT_TOKEN}"))
    );
    assert!(
        host.kv
            .contains_key(&keys::thread("C0GENERAL1", "1718000002.000300")),
        "the bot is now part of the thread"
    );
    let again = outbound::deliver(&mut host, &t, &content, "reply-run-1").unwrap();
    assert_eq!(again, first);
    assert_eq!(host.requests.len(), 1, "a retried delivery posts nothing");
}

#[test]
fn a_rate_limited_or_refused_send_is_reported_for_the_outbox() {
    let mut host = MockHost::new();
    host.answer_with(
        "chat.postMessage",
        429,
        &[("Retry-After", "3")],
        br#"{"ok":false,"error":"ratelimited"}"#.to_vec(),
    );
    let t = target("D0DM000001", ChatKind::Direct, None);
    let error = outbound::deliver(&mut host, &t, &Content::Reply("x".into()), "k").unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.retry_after_ms, Some(3_000));
    assert!(!host.kv.contains_key(&keys::sent("k")));
    host.answer(
        "chat.postMessage",
        200,
        json!({"ok": false, "error": "not_in_channel"}),
    );
    let error = outbound::deliver(&mut host, &t, &Content::Reply("x".into()), "k").unwrap_err();
    assert!(!error.retryable && error.message.contains("not_in_channel"));
    host.secrets.clear();
    assert!(
        !outbound::deliver(&mut host, &t, &Content::Reply("x".into()), "k")
            .unwrap_err()
            .retryable
    );
}

fn notice(recipient: Option<&str>) -> Content {
    Content::Notice(Notice {
        kind: NoticeKind::BindingRequired,
        locale: "en".into(),
        text: "Link your account first <here>".into(),
        link: Some("https://switchboard.example/bind/abc".into()),
        reference: None,
        recipient: recipient.map(str::to_string),
        actions: Vec::new(),
    })
}

#[test]
fn notices_are_escaped_and_private_ones_ephemeral_outside_dms() {
    let mut host = MockHost::new();
    host.answer(
        "chat.postEphemeral",
        200,
        json!({"ok": true, "message_ts": "1718000200.000001"}),
    );
    let t = target("C0GENERAL1", ChatKind::Channel, Some("1718000002.000300"));
    let ts = outbound::deliver(&mut host, &t, &notice(Some("U0ALICE001")), "n1").unwrap();
    assert_eq!(ts.as_deref(), Some("1718000200.000001"));
    assert_eq!(host.methods(), ["chat.postEphemeral"]);
    let body = host.body(0);
    assert_eq!(body["user"], "U0ALICE001");
    assert_eq!(
        body["text"],
        "Link your account first &lt;here&gt;\n<https://switchboard.example/bind/abc>"
    );
    outbound::deliver(
        &mut host,
        &target("D0DM000001", ChatKind::Direct, None),
        &notice(Some("U0ALICE001")),
        "n2",
    )
    .unwrap();
    assert_eq!(
        host.methods()[1],
        "chat.postMessage",
        "a DM is already private"
    );
}

#[test]
fn streaming_posts_a_placeholder_then_updates_it() {
    let mut host = MockHost::new();
    let t = target("C0GENERAL1", ChatKind::Channel, Some("1718000002.000300"));
    let handle = outbound::stream_begin(&mut host, &t, "stream-run-1").unwrap();
    assert_eq!(host.body(0)["text"], outbound::STREAM_PLACEHOLDER);
    assert_eq!(
        outbound::stream_begin(&mut host, &t, "stream-run-1").unwrap(),
        handle,
        "begin is idempotent"
    );
    outbound::stream_update(&mut host, &t, &handle, "partial **answer**").unwrap();
    let end = outbound::stream_end(&mut host, &t, &handle, "the whole **answer**").unwrap();
    assert_eq!(end.as_deref(), Some(handle.as_str()));
    assert_eq!(
        host.methods(),
        ["chat.postMessage", "chat.update", "chat.update"]
    );
    assert_eq!(
        (host.body(2)["ts"].as_str(), host.body(2)["text"].as_str()),
        (Some(handle.as_str()), Some("the whole *answer*"))
    );
    // A final text longer than one message continues in the thread, once however often retried.
    let long = "word ".repeat(40_000);
    outbound::stream_end(&mut host, &t, &handle, &long).unwrap();
    let posts = host
        .methods()
        .iter()
        .filter(|m| *m == "chat.postMessage")
        .count();
    outbound::stream_end(&mut host, &t, &handle, &long).unwrap();
    assert!(posts > 1);
    assert_eq!(
        host.methods()
            .iter()
            .filter(|m| *m == "chat.postMessage")
            .count(),
        posts
    );
}

#[test]
fn typing_is_a_reaction_or_an_assistant_status() {
    let mut host = MockHost::new();
    let t = target("C0GENERAL1", ChatKind::Channel, Some("1718000002.000300"));
    let on = TypingChange {
        message_id: "C0GENERAL1:1718000002.000300".into(),
        on: true,
    };
    let handle = outbound::set_typing(&mut host, &t, &on, None).unwrap();
    assert_eq!(host.methods(), ["reactions.add"]);
    assert_eq!(
        host.body(0),
        json!({"channel": "C0GENERAL1", "timestamp": "1718000002.000300", "name": "eyes"})
    );
    let refreshed = outbound::set_typing(&mut host, &t, &on, handle.as_deref()).unwrap();
    assert_eq!(refreshed, handle);
    assert_eq!(
        host.requests.len(),
        1,
        "a refresh leaves the reaction as it is"
    );
    let off = TypingChange {
        on: false,
        ..on.clone()
    };
    host.answer(
        "reactions.remove",
        200,
        json!({"ok": false, "error": "no_reaction"}),
    );
    assert_eq!(
        outbound::set_typing(&mut host, &t, &off, handle.as_deref()).unwrap(),
        None,
        "already gone is fine"
    );
    let command = TypingChange {
        message_id: "D0DM000001:cmd:1.2.x".into(),
        on: true,
    };
    assert_eq!(
        outbound::set_typing(&mut host, &t, &command, None).unwrap(),
        None
    );
    assert_eq!(
        host.requests.len(),
        2,
        "nothing to react to on a slash command"
    );

    let mut assistant = MockHost::new();
    assistant.config.insert("assistant".into(), "true".into());
    let handle = outbound::set_typing(&mut assistant, &t, &on, None).unwrap();
    outbound::set_typing(&mut assistant, &t, &off, handle.as_deref()).unwrap();
    assert_eq!(
        assistant.methods(),
        ["assistant.threads.setStatus", "assistant.threads.setStatus"]
    );
    assert_eq!(assistant.body(0)["thread_ts"], "1718000002.000300");
    assert_eq!(assistant.body(1)["status"], "", "cleared");
}

#[test]
fn attachments_are_downloaded_from_slacks_file_origin_only() {
    let mut host = MockHost::new();
    let url = "https://files.slack.com/files-pri/T1-F1/report.pdf";
    host.answer_with(
        url,
        200,
        &[("Content-Type", "application/pdf")],
        b"%PDF-1.7".to_vec(),
    );
    let content = api::fetch_attachment(&mut host, url).unwrap();
    assert_eq!(
        (content.mime.as_deref(), content.body.as_slice()),
        (Some("application/pdf"), &b"%PDF-1.7"[..])
    );
    assert!(matches!(
        api::fetch_attachment(&mut host, "https://evil.example/steal"),
        Err(PluginError::InvalidInput(_))
    ));
    assert!(matches!(
        api::fetch_attachment(&mut host, "https://files.slack.com.evil.example/x"),
        Err(PluginError::InvalidInput(_))
    ));
    assert_eq!(host.requests.len(), 1, "the token went nowhere else");
    host.answer_with(
        url,
        200,
        &[("content-type", "text/html; charset=utf-8")],
        b"<html>".to_vec(),
    );
    assert!(matches!(
        api::fetch_attachment(&mut host, url),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn on_install_learns_the_bot_and_checks_the_workspace() {
    let mut host = MockHost::new();
    host.answer(
        "auth.test",
        200,
        json!({"ok": true, "user_id": "U0BOT00001", "team_id": "T0TEAM0001", "bot_id": "B1"}),
    );
    let pairs = api::on_install(&mut host).unwrap();
    assert_eq!(
        pairs,
        [
            ("bot_user_id".to_string(), "U0BOT00001".to_string()),
            ("team_id".into(), "T0TEAM0001".into())
        ]
    );
    host.config.insert("team_id".into(), "T0OTHER001".into());
    host.answer(
        "auth.test",
        200,
        json!({"ok": true, "user_id": "U0BOT00001", "team_id": "T0TEAM0001"}),
    );
    assert!(matches!(
        api::on_install(&mut host),
        Err(PluginError::InvalidInput(_))
    ));
    host.answer(
        "auth.test",
        200,
        json!({"ok": false, "error": "invalid_auth"}),
    );
    assert!(matches!(
        api::on_install(&mut host),
        Err(PluginError::Unauthorized(_))
    ));
    host.fail("auth.test", HttpError::Timeout);
    assert!(matches!(
        api::on_install(&mut host),
        Err(PluginError::Retryable(_))
    ));
}

fn reply_in_thread() -> InboundMessage {
    InboundMessage {
        event_id: "Ev1".into(),
        message_id: "C0GENERAL1:1718000003.000400".into(),
        chat: Chat {
            id: "C0GENERAL1".into(),
            kind: ChatKind::Channel,
            title: None,
        },
        sender: Participant {
            id: "U0ALICE001".into(),
            display_name: None,
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: "text".into(),
        body: "ask @U0CAROL01 please".into(),
        command_body: "ask @U0CAROL01 please".into(),
        addressed_to_bot: true,
        parent_id: Some("C0GENERAL1:1718000002.000300".into()),
        root_id: Some("C0GENERAL1:1718000002.000300".into()),
        thread_id: Some("1718000002.000300".into()),
        create_time_ms: 0,
        mentions: vec![Mention {
            key: "<@U0CAROL01>".into(),
            name: "U0CAROL01".into(),
            id: Some("U0CAROL01".into()),
            is_bot: false,
        }],
        attachments: Vec::new(),
    }
}

fn budget(requests: u32, messages: u32) -> Budget {
    Budget {
        deadline_ms: 2_000,
        max_requests: requests,
        max_context_messages: messages,
    }
}

#[test]
fn the_enricher_names_mentions_and_reads_the_thread_within_the_budget() {
    let mut host = MockHost::new();
    host.kv.insert(keys::name("U0ALICE001"), b"alice".to_vec());
    host.answer("users.info", 200, json!({"ok": true, "user": {"id": "U0CAROL01", "name": "carol.c", "profile": {"display_name": "Carol", "real_name": "Carol C"}}}));
    host.answer(
        "conversations.replies",
        200,
        json!({"ok": true, "messages": [
            {"user": "U0ALICE001", "text": "<@U0BOT00001> what is up?", "ts": "1718000002.000300"},
            {"user": BOT, "bot_id": "B1", "text": "echo: what is up?", "ts": "1718000002.000350"},
            {"user": "U0ALICE001", "text": "ask <@U0CAROL01> please", "ts": "1718000003.000400"},
        ]}),
    );
    let enriched = enrich::enrich(&mut host, &reply_in_thread(), &budget(5, 10));
    assert_eq!(
        enriched.body,
        "[Earlier in this thread]\nalice: @U0BOT00001 what is up?\nassistant: echo: what is up?\n[/Earlier]\nask @Carol please"
    );
    assert!(enriched.notes.is_empty(), "{:?}", enriched.notes);
    assert_eq!(
        host.kv.get(&keys::name("U0CAROL01")).map(Vec::as_slice),
        Some(&b"Carol"[..]),
        "the name is cached"
    );
    assert!(
        host.requests[1]
            .url
            .contains("conversations.replies?channel=C0GENERAL1&ts=1718000002.000300&limit=11")
    );

    // The budget: one context message, and no request left for the name.
    let mut host = MockHost::new();
    host.answer(
        "conversations.replies",
        200,
        json!({"ok": true, "messages": [
            {"user": "U0ALICE001", "text": "first", "ts": "1718000001.000000"},
            {"user": "U0DAVE0001", "text": "second", "ts": "1718000002.000000"},
        ]}),
    );
    let enriched = enrich::enrich(&mut host, &reply_in_thread(), &budget(1, 1));
    assert_eq!(host.methods(), ["users.info"], "one request only");
    assert!(enriched.body.contains("unavailable"), "{}", enriched.body);
    assert!(!enriched.notes.is_empty());
}

#[test]
fn the_enricher_puts_placeholders_on_failures() {
    let mut host = MockHost::new();
    host.answer(
        "users.info",
        200,
        json!({"ok": false, "error": "user_not_found"}),
    );
    host.fail("conversations.replies", HttpError::Timeout);
    let enriched = enrich::enrich(&mut host, &reply_in_thread(), &budget(5, 10));
    assert!(
        enriched
            .body
            .starts_with("[Earlier messages of this thread are unavailable]\n")
    );
    assert!(
        enriched.body.ends_with("ask @U0CAROL01 please"),
        "the id stays when the name is unknown"
    );
    assert_eq!(enriched.notes.len(), 2, "{:?}", enriched.notes);
    let mut top_level = reply_in_thread();
    top_level.parent_id = None;
    top_level.mentions.clear();
    let mut quiet = MockHost::new();
    assert_eq!(
        enrich::enrich(&mut quiet, &top_level, &budget(5, 10)).body,
        "ask @U0CAROL01 please"
    );
    assert!(
        quiet.requests.is_empty(),
        "nothing to fetch for a thread's first message"
    );
}

/// The host's approval notice with its two buttons.
fn approval_notice(actions: bool) -> Notice {
    use switchboard_plugin_sdk::types::NoticeAction;
    let button = |name: &str, label: &str, primary| NoticeAction {
        name: name.into(),
        label: label.into(),
        value: "a1b2c3".into(),
        primary,
    };
    Notice {
        kind: NoticeKind::Approval,
        locale: "en".into(),
        text: "Your approval is needed:\nDeploy v2?".into(),
        link: None,
        reference: None,
        recipient: None,
        actions: if actions {
            vec![
                button("ap.y", "Approve", true),
                button("ap.n", "Reject", false),
            ]
        } else {
            Vec::new()
        },
    }
}

#[test]
fn a_notice_with_actions_is_a_section_and_an_actions_block_that_updates_without_them() {
    let mut host = MockHost::new();
    let t = target("C0GENERAL1", ChatKind::Channel, None);
    let ts = outbound::deliver(
        &mut host,
        &t,
        &Content::Notice(approval_notice(true)),
        "ap1",
    )
    .unwrap()
    .unwrap();
    let body = host.body(0);
    assert_eq!(body["blocks"][0]["type"], "section", "{body}");
    assert!(
        body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("Deploy v2?")
    );
    let buttons = &body["blocks"][1];
    assert_eq!(buttons["type"], "actions", "{body}");
    assert_eq!(
        buttons["elements"],
        json!([
            {"type": "button", "text": {"type": "plain_text", "text": "Approve"},
             "action_id": "ap.y", "value": "a1b2c3", "style": "primary"},
            {"type": "button", "text": {"type": "plain_text", "text": "Reject"},
             "action_id": "ap.n", "value": "a1b2c3"},
        ])
    );
    // The decided card replaces it without buttons (by ts, or a press's `channel:ts`).
    outbound::update_notice(
        &mut host,
        &t,
        Some(&format!("C0GENERAL1:{ts}")),
        &approval_notice(false),
    )
    .unwrap();
    let update = host.body(1);
    assert_eq!(host.methods()[1], "chat.update");
    assert_eq!(update["ts"], json!(ts));
    assert_eq!(update["blocks"], json!([]), "{update}");
    assert!(outbound::update_notice(&mut host, &t, None, &approval_notice(false)).is_err());
}
