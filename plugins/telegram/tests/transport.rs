//! Webhook verification and long-poll requests and answers.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::{
    ConnectError, WebhookRejection, WebhookVerdict,
};
use switchboard_plugin_sdk::http::Response;
use switchboard_telegram::transport::{
    POLL_TIMEOUT_MS, SECRET_HEADER, parse_poll, poll_request, verify_webhook,
};

const SECRET: &str = "s3cret_Token-1";

fn header(value: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("X-Telegram-Bot-Api-Secret-Token".into(), value.into()),
    ]
}

fn update() -> Vec<u8> {
    br#"{"update_id":5,"message":{"message_id":1,"date":1,"chat":{"id":1,"type":"private"},"from":{"id":1,"first_name":"A"},"text":"hi"}}"#.to_vec()
}

fn verify(
    headers: &[(String, String)],
    body: Vec<u8>,
    secret: Option<&str>,
) -> Result<WebhookVerdict, WebhookRejection> {
    verify_webhook("POST", headers, body, secret)
}

#[test]
fn the_right_secret_is_accepted_and_answered_after_storing() {
    let WebhookVerdict::Events(events) = verify(&header(SECRET), update(), Some(SECRET)).unwrap()
    else {
        panic!("events")
    };
    assert_eq!(events.payloads, vec![update()]);
    assert_eq!(events.signed_at_ms, None);
    assert_eq!(events.response.status, 200);
    assert_eq!(events.response.body, b"{}");
    assert_eq!(SECRET_HEADER, "x-telegram-bot-api-secret-token");
}

#[test]
fn a_callback_query_is_answered_in_the_webhook_reply() {
    let body =
        br#"{"update_id":6,"callback_query":{"id":"cb-9","from":{"id":1},"data":"x"}}"#.to_vec();
    let WebhookVerdict::Events(events) = verify(&header(SECRET), body, Some(SECRET)).unwrap()
    else {
        panic!("events")
    };
    let answer: Value = serde_json::from_slice(&events.response.body).unwrap();
    assert_eq!(
        answer,
        json!({"method": "answerCallbackQuery", "callback_query_id": "cb-9"})
    );
    // The host's words replace it (a refusal as an alert); a message gets none.
    let body = br#"{"update_id":6,"callback_query":{"id":"cb-9","from":{"id":1},"data":"x"}}"#;
    let answer: Value = serde_json::from_slice(
        &switchboard_telegram::transport::callback_answer(body, "You can't approve this", true)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        answer,
        json!({"method": "answerCallbackQuery", "callback_query_id": "cb-9",
               "text": "You can't approve this", "show_alert": true})
    );
    assert!(
        switchboard_telegram::transport::callback_answer(&update(), "Received", false).is_none()
    );
}

#[test]
fn wrong_missing_or_unset_secrets_are_refused() {
    let bad = |r: Result<WebhookVerdict, WebhookRejection>| {
        matches!(r, Err(WebhookRejection::BadToken(_)))
    };
    assert!(bad(verify(
        &header("s3cret_Token-2"),
        update(),
        Some(SECRET)
    )));
    assert!(bad(verify(
        &header("s3cret_Token-1x"),
        update(),
        Some(SECRET)
    )));
    assert!(bad(verify(&header(""), update(), Some(SECRET))));
    assert!(bad(verify(&[], update(), Some(SECRET))));
    assert!(
        bad(verify(&header(SECRET), update(), None)),
        "no secret: never accepted"
    );
    assert!(
        bad(verify(&header(""), update(), Some(""))),
        "an empty secret is no secret"
    );
    // Refused before the body is read: garbage with a wrong token is a bad token, not malformed.
    assert!(bad(verify(
        &header("nope"),
        b"garbage".to_vec(),
        Some(SECRET)
    )));
}

#[test]
fn authenticated_garbage_is_malformed() {
    let malformed = |r: Result<WebhookVerdict, WebhookRejection>| {
        matches!(r, Err(WebhookRejection::Malformed(_)))
    };
    assert!(malformed(verify(
        &header(SECRET),
        b"not json".to_vec(),
        Some(SECRET)
    )));
    assert!(malformed(verify(
        &header(SECRET),
        b"{}".to_vec(),
        Some(SECRET)
    )));
    assert!(malformed(verify(
        &header(SECRET),
        br#"{"update_id":"x"}"#.to_vec(),
        Some(SECRET)
    )));
    assert!(malformed(verify_webhook(
        "GET",
        &header(SECRET),
        update(),
        Some(SECRET)
    )));
}

fn response(status: u16, body: Value) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    }
}

#[test]
fn get_updates_asks_from_the_cursor_with_a_long_hold() {
    let first = poll_request("1:tok", None).unwrap();
    assert_eq!(first.url, "https://api.telegram.org/bot1:tok/getUpdates");
    assert_eq!(first.method, "POST");
    assert_eq!(first.timeout_ms, Some(POLL_TIMEOUT_MS));
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["timeout"], 25);
    assert_eq!(body.get("offset"), None);
    assert_eq!(
        body["allowed_updates"],
        json!([
            "message",
            "edited_message",
            "callback_query",
            "my_chat_member"
        ])
    );
    let next: Value =
        serde_json::from_slice(&poll_request("1:tok", Some("42")).unwrap().body).unwrap();
    assert_eq!(next["offset"], 42);
    assert!(matches!(
        poll_request("1:tok", Some("x")),
        Err(ConnectError::Terminal(_))
    ));
}

#[test]
fn a_batch_is_one_payload_per_update_and_the_cursor_one_past_the_last() {
    let ok = json!({"ok": true, "result": [
        {"update_id": 7, "message": {"text": "a"}},
        {"update_id": 8, "callback_query": {"id": "cb-1"}},
    ]});
    let (batch, callbacks) = parse_poll(&response(200, ok)).unwrap();
    assert_eq!(batch.payloads.len(), 2);
    let first: Value = serde_json::from_slice(&batch.payloads[0]).unwrap();
    assert_eq!(first["update_id"], 7);
    assert_eq!(batch.next_cursor.as_deref(), Some("9"));
    assert_eq!(callbacks, vec!["cb-1".to_string()]);
    assert_eq!(batch.retry_after_ms, None);
    let (empty, _) = parse_poll(&response(200, json!({"ok": true, "result": []}))).unwrap();
    assert!(empty.payloads.is_empty());
    assert_eq!(empty.next_cursor, None, "keep the cursor");
}

#[test]
fn poll_failures() {
    let error = |status: u16, description: &str, parameters: Value| {
        response(
            status,
            json!({"ok": false, "error_code": status, "description": description, "parameters": parameters}),
        )
    };
    let conflict = parse_poll(&error(
        409,
        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
        json!({}),
    ));
    assert!(
        matches!(&conflict, Err(ConnectError::Terminal(why)) if why.contains("deleteWebhook") && why.contains("connection=webhook")),
        "{conflict:?}"
    );
    assert!(
        matches!(parse_poll(&error(401, "Unauthorized", json!({}))), Err(ConnectError::Terminal(why)) if why.contains("bot_token"))
    );
    assert!(matches!(
        parse_poll(&error(404, "Not Found", json!({}))),
        Err(ConnectError::Terminal(_))
    ));
    let (wait, _) = parse_poll(&error(
        429,
        "Too Many Requests: retry after 7",
        json!({"retry_after": 7}),
    ))
    .unwrap();
    assert!(wait.payloads.is_empty());
    assert_eq!((wait.next_cursor, wait.retry_after_ms), (None, Some(7000)));
    for status in [500, 502] {
        assert!(matches!(
            parse_poll(&error(status, "Bad Gateway", json!({}))),
            Err(ConnectError::Retryable(_))
        ));
    }
    let html = Response {
        status: 502,
        headers: Vec::new(),
        body: b"<html>".to_vec(),
    };
    assert!(matches!(parse_poll(&html), Err(ConnectError::Retryable(_))));
    let not_a_list = response(200, json!({"ok": true, "result": {}}));
    assert!(matches!(
        parse_poll(&not_a_list),
        Err(ConnectError::Retryable(_))
    ));
}
