//! Sends, chunking, idempotency records, streaming edits, typing and the lifecycle, over a mock
//! Bot API.

use std::collections::HashMap;

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::outbound::Content;
use switchboard_plugin_sdk::types::{ChatKind, Notice, NoticeKind, PluginError, SessionTarget};
use switchboard_telegram::api::{self, ApiError};
use switchboard_telegram::outbound::{self, Client, Failure};

#[derive(Default)]
struct Mock {
    calls: Vec<(String, Value)>,
    kv: HashMap<String, String>,
    /// Error answers to give, in order, before succeeding.
    errors: Vec<ApiError>,
    next_id: i64,
}

impl Client for Mock {
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Failure> {
        self.calls.push((method.into(), params));
        if !self.errors.is_empty() {
            return Err(Failure::Api(self.errors.remove(0)));
        }
        self.next_id += 1;
        Ok(match method {
            "sendMessage" => json!({"message_id": 100 + self.next_id}),
            "getMe" => {
                json!({"id": 7000000001_i64, "is_bot": true, "username": "switchboard_test_bot"})
            }
            _ => json!(true),
        })
    }
    fn recall(&mut self, key: &str) -> Option<String> {
        self.kv.get(key).cloned()
    }
    fn remember(&mut self, key: &str, value: &str) {
        self.kv.insert(key.into(), value.into());
    }
}

fn target(thread: Option<&str>) -> SessionTarget {
    SessionTarget {
        session_id: "s1".into(),
        chat_id: "-1001234567890".into(),
        chat_kind: ChatKind::Group,
        thread_id: thread.map(str::to_string),
        reply_to: Some("-1001234567890:41".into()),
        in_thread: thread.is_some(),
    }
}

fn error(code: i64, description: &str, retry_after_s: Option<u32>) -> ApiError {
    ApiError {
        status: code as u16,
        code,
        description: description.into(),
        retry_after_s,
    }
}

#[test]
fn a_reply_is_html_in_the_topic_replying_to_the_message() {
    let mut mock = Mock::default();
    let id = outbound::deliver(
        &mut mock,
        &target(Some("40")),
        &Content::Reply("**hi** <you>".into()),
        "k1",
    )
    .unwrap();
    assert_eq!(id, "-1001234567890:101");
    assert_eq!(mock.calls.len(), 1);
    let (method, params) = &mock.calls[0];
    assert_eq!(method, "sendMessage");
    assert_eq!(
        params,
        &json!({
            "chat_id": "-1001234567890", "message_thread_id": 40, "text": "<b>hi</b> &lt;you&gt;",
            "parse_mode": "HTML",
            "reply_parameters": {"message_id": 41, "allow_sending_without_reply": true},
        })
    );
}

#[test]
fn a_long_reply_is_several_messages_and_a_retry_sends_only_the_rest() {
    let text = ["x".repeat(3000), "x".repeat(3000), "x".repeat(3000)].join("\n\n");
    let mut whole = Mock::default();
    outbound::deliver(
        &mut whole,
        &target(None),
        &Content::Reply(text.clone()),
        "k2",
    )
    .unwrap();
    assert_eq!(whole.calls.len(), 3, "three chunks");
    assert!(
        whole.calls[1].1.get("reply_parameters").is_none(),
        "only the first replies"
    );

    // A delivery whose second send fails: retried, it sends the second and third only.
    struct FailSecond(Mock);
    impl Client for FailSecond {
        fn call(&mut self, method: &str, params: Value) -> Result<Value, Failure> {
            // The second send hits a rate limit; the first is recorded.
            if self.0.calls.len() == 1 {
                self.0.calls.push((method.into(), params));
                return Err(Failure::Api(error(
                    429,
                    "Too Many Requests: retry after 3",
                    Some(3),
                )));
            }
            self.0.call(method, params)
        }
        fn recall(&mut self, key: &str) -> Option<String> {
            self.0.recall(key)
        }
        fn remember(&mut self, key: &str, value: &str) {
            self.0.remember(key, value)
        }
    }
    let mut flaky = FailSecond(Mock::default());
    let failure = outbound::deliver(
        &mut flaky,
        &target(None),
        &Content::Reply(text.clone()),
        "k3",
    )
    .unwrap_err();
    assert!(failure.retryable);
    assert_eq!(failure.retry_after_ms, Some(3000));
    assert_eq!(failure.code, Some(429));
    let first = outbound::deliver(&mut flaky, &target(None), &Content::Reply(text), "k3").unwrap();
    let sends = flaky
        .0
        .calls
        .iter()
        .filter(|(m, _)| m == "sendMessage")
        .count();
    assert_eq!(sends, 4, "1 sent + 1 refused + the 2 left");
    assert_eq!(first, "-1001234567890:101", "the first message's id");
    assert_eq!(flaky.0.kv["sent:k3"].split(',').count(), 3);
}

#[test]
fn a_recorded_delivery_is_not_sent_again() {
    let mut mock = Mock::default();
    let content = Content::Reply("once".into());
    let a = outbound::deliver(&mut mock, &target(None), &content, "k4").unwrap();
    let b = outbound::deliver(&mut mock, &target(None), &content, "k4").unwrap();
    assert_eq!(a, b);
    assert_eq!(mock.calls.len(), 1);
}

#[test]
fn refusals_are_classified() {
    let blocked = error(403, "Forbidden: bot was blocked by the user", None).delivery_error();
    assert!(!blocked.retryable);
    assert!(
        blocked
            .message
            .contains("blocked by the user or removed from the chat")
    );
    assert!(error(502, "Bad Gateway", None).delivery_error().retryable);
    assert!(
        !error(400, "Bad Request: chat not found", None)
            .delivery_error()
            .retryable
    );
    assert!(!error(401, "Unauthorized", None).delivery_error().retryable);
    let response = switchboard_plugin_sdk::http::Response {
        status: 429,
        headers: Vec::new(),
        body: br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#.to_vec(),
    };
    let parsed = api::result(&response).unwrap_err();
    assert_eq!(parsed.retry_after_s, Some(5));
    assert_eq!(parsed.delivery_error().retry_after_ms, Some(5000));
}

#[test]
fn a_notice_is_plain_text_and_a_private_one_goes_to_the_recipient() {
    let mut mock = Mock::default();
    let notice = Notice {
        kind: NoticeKind::BindingRequired,
        locale: "en".into(),
        text: "Bind your account <first>.".into(),
        link: Some("https://sb.test/bind/1".into()),
        reference: None,
        recipient: Some("111222333".into()),
        actions: Vec::new(),
    };
    outbound::deliver(
        &mut mock,
        &target(Some("40")),
        &Content::Notice(notice),
        "n1",
    )
    .unwrap();
    let params = &mock.calls[0].1;
    assert_eq!(params["chat_id"], "111222333");
    assert_eq!(
        params["text"],
        "Bind your account &lt;first&gt;.\nhttps://sb.test/bind/1"
    );
    assert!(params.get("message_thread_id").is_none() && params.get("reply_parameters").is_none());
}

#[test]
fn streaming_begins_edits_and_ends_with_the_rest_as_new_messages() {
    let mut mock = Mock::default();
    let handle = outbound::stream_begin(&mut mock, &target(Some("40")), "stream-r1").unwrap();
    assert_eq!(handle, "-1001234567890:101");
    assert_eq!(
        outbound::stream_begin(&mut mock, &target(Some("40")), "stream-r1").unwrap(),
        handle,
        "recorded"
    );
    assert_eq!(mock.calls.len(), 1);
    assert_eq!(mock.calls[0].1["text"], outbound::PLACEHOLDER);
    outbound::stream_update(&mut mock, &handle, "par").unwrap();
    assert_eq!(
        mock.calls[1],
        (
            "editMessageText".to_string(),
            json!({"chat_id": "-1001234567890", "message_id": 101, "text": "par", "parse_mode": "HTML"})
        )
    );
    // The same text again: Telegram's "not modified" is no failure.
    mock.errors.push(error(400, "Bad Request: message is not modified: specified new message content and reply markup are exactly the same", None));
    outbound::stream_update(&mut mock, &handle, "par").unwrap();
    let long = ["y".repeat(3000), "y".repeat(3000)].join("\n\n");
    let end = outbound::stream_end(&mut mock, &target(Some("40")), &handle, &long).unwrap();
    assert_eq!(end, handle);
    let tail = mock.calls.last().unwrap();
    assert_eq!(tail.0, "sendMessage");
    assert_eq!(tail.1["message_thread_id"], 40);
    assert!(tail.1.get("reply_parameters").is_none());
    let edit_failure = {
        mock.errors
            .push(error(400, "Bad Request: message to edit not found", None));
        outbound::stream_update(&mut mock, &handle, "z").unwrap_err()
    };
    assert!(!edit_failure.retryable);
}

#[test]
fn typing_is_a_chat_action_in_the_topic() {
    let mut mock = Mock::default();
    outbound::typing(&mut mock, &target(Some("40"))).unwrap();
    assert_eq!(
        mock.calls[0],
        (
            "sendChatAction".to_string(),
            json!({"chat_id": "-1001234567890", "message_thread_id": 40, "action": "typing"})
        )
    );
}

#[test]
fn install_learns_the_bot_and_registers_or_deletes_the_webhook() {
    let mut mock = Mock::default();
    let pairs = outbound::install(
        &mut mock,
        "https://sb.test/hooks/telegram/i1",
        false,
        Some("sec_1"),
    )
    .unwrap();
    assert_eq!(
        pairs,
        vec![
            ("bot_id".to_string(), "7000000001".to_string()),
            (
                "bot_username".to_string(),
                "switchboard_test_bot".to_string()
            )
        ]
    );
    assert_eq!(
        mock.calls[1],
        (
            "setWebhook".to_string(),
            json!({
                "url": "https://sb.test/hooks/telegram/i1", "secret_token": "sec_1",
                "allowed_updates": ["message", "edited_message", "callback_query", "my_chat_member"],
            })
        )
    );
    let mut poll = Mock::default();
    outbound::install(&mut poll, "https://sb.test/hooks/telegram/i1", true, None).unwrap();
    assert_eq!(poll.calls[1].0, "deleteWebhook");
    assert!(matches!(
        outbound::install(&mut Mock::default(), "u", false, None),
        Err(PluginError::InvalidInput(_))
    ));
    let mut refused = Mock {
        errors: vec![error(401, "Unauthorized", None)],
        ..Mock::default()
    };
    assert!(matches!(
        outbound::install(&mut refused, "u", true, None),
        Err(PluginError::Unauthorized(_))
    ));
    let mut uninstall = Mock::default();
    outbound::uninstall(&mut uninstall, false).unwrap();
    outbound::uninstall(&mut uninstall, true).unwrap();
    assert_eq!(uninstall.calls.len(), 1);
    assert!(outbound::polls(Some("poll")) && outbound::polls(Some("long-poll")));
    assert!(!outbound::polls(Some("webhook")) && !outbound::polls(None));
}

/// The host's approval notice, with its two buttons or (decided) none.
fn approval_notice(actions: bool) -> Notice {
    use switchboard_plugin_sdk::types::NoticeAction;
    let button = |name: &str, label: &str, primary| NoticeAction {
        name: name.into(),
        label: label.into(),
        value: "0123456789abcdef0123456789abcdef".into(),
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
fn a_notice_with_actions_carries_an_inline_keyboard_and_its_update_drops_it() {
    let mut mock = Mock::default();
    let sent = outbound::deliver(
        &mut mock,
        &target(None),
        &Content::Notice(approval_notice(true)),
        "ap1",
    )
    .unwrap();
    let (method, params) = &mock.calls[0];
    assert_eq!(method, "sendMessage");
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        params["reply_markup"],
        json!({"inline_keyboard": [[
            {"text": "Approve", "callback_data": format!("ap.y:{id}")},
            {"text": "Reject", "callback_data": format!("ap.n:{id}")},
        ]]})
    );
    for button in params["reply_markup"]["inline_keyboard"][0]
        .as_array()
        .unwrap()
    {
        assert!(button["callback_data"].as_str().unwrap().len() <= outbound::CALLBACK_DATA_MAX);
    }
    // A button whose data would not fit 64 bytes is left out rather than refused by Telegram.
    let mut long = approval_notice(true);
    long.actions[0].value = "x".repeat(70);
    assert_eq!(
        outbound::inline_keyboard(&long).unwrap()["inline_keyboard"][0]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The decided notice replaces the message's text and keyboard.
    outbound::update_notice(&mut mock, Some(&sent), &approval_notice(false)).unwrap();
    let (method, params) = &mock.calls[1];
    assert_eq!(method, "editMessageText");
    assert!(params.get("reply_markup").is_none(), "{params}");
    assert_eq!(params["chat_id"], "-1001234567890");
    assert!(outbound::update_notice(&mut mock, None, &approval_notice(false)).is_err());
}
