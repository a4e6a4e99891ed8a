//! One test per `rest_*.json` fixture: the answers the enricher and outbound delivery read
//! (token, bot identity, message objects, send/reply answers, error classification).

mod common;

use common::*;
use serde_json::Value;
use switchboard_lark::content::flatten_content;
use switchboard_lark::rest::{
    ApiErrorKind, check_response, parse_bot_info, parse_message_items, parse_sent_message,
    parse_tenant_token, tenant_token_request,
};

fn status_of(response: &Value) -> u16 {
    response["status"].as_u64().unwrap() as u16
}

fn body_of(response: &Value) -> Vec<u8> {
    serde_json::to_vec(&response["body"]).unwrap()
}

fn headers_of(case: &Value) -> Vec<(String, String)> {
    case.get("headers")
        .and_then(Value::as_object)
        .map(|headers| {
            headers
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rest_tenant_access_token() {
    let fixture = fixture_json("rest_tenant_access_token.json");
    let request = tenant_token_request("https://open.feishu.cn", APP_ID, "s3cret");
    assert_eq!(request.method, str_at(&fixture, "/request/method"));
    assert_eq!(request.url, str_at(&fixture, "/request/url"));
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["app_id"], fixture["request"]["body"]["app_id"]);
    assert_eq!(body["app_secret"], "s3cret");

    let response = &fixture["response"];
    let token = parse_tenant_token(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(token.token, "t-g1049bcdfixture0a1b2c3d4e5f6a7b8c9d0e1f2");
    assert_eq!(token.expire_s, 7200);
    // Cache rule (reference §S1): expire − 60 s.
    assert_eq!(token.cache_ttl_ms(), (7200 - 60) * 1000);
}

#[test]
fn rest_bot_info() {
    let fixture = fixture_json("rest_bot_info.json");
    let response = &fixture["response"];
    let bot = parse_bot_info(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(bot.open_id, BOT_OPEN_ID);
    assert_eq!(bot.app_name, "Helper Bot");
}

#[test]
fn rest_get_message_single() {
    let fixture = fixture_json("rest_get_message_single.json");
    let response = &fixture["response"];
    let items = parse_message_items(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(items.len(), 1);
    let parent = &items[0];
    assert_eq!(parent.message_id, "om_5b3c000000000000000000000000a011");
    assert_eq!(parent.sender_type, "app");
    assert_eq!(parent.sender_id, "cli_b6e4d3f2a1c0b987");
    assert_eq!(parent.create_time_ms, 1_731_300_014_500);
    assert_eq!(
        parent.parent_id.as_deref(),
        Some("om_5b3c000000000000000000000000a00f")
    );
    assert!(!parent.deleted);
    assert_eq!(
        parent.render_body(),
        "Option 1: roll back. Option 2: hotfix."
    );
}

#[test]
fn rest_get_message_merge_forward() {
    let fixture = fixture_json("rest_get_message_merge_forward.json");
    let response = &fixture["response"];
    let items = parse_message_items(status_of(response), &[], &body_of(response)).unwrap();
    let forward_id = "om_5b3c000000000000000000000000f001";
    assert_eq!(items.len(), 5);

    // The container comes first, without upper_message_id and with a plain-text body.
    assert_eq!(items[0].message_id, forward_id);
    assert_eq!(items[0].upper_message_id, None);
    assert_eq!(items[0].content, "Merged and Forwarded Message");
    assert_eq!(items[0].render_body(), "[Forwarded messages]");

    // Direct children point at the container; the nested forward's child points at it.
    let direct: Vec<&str> = items
        .iter()
        .filter(|item| item.upper_message_id.as_deref() == Some(forward_id))
        .map(|item| item.message_id.as_str())
        .collect();
    assert_eq!(
        direct,
        vec![
            "om_5b3c000000000000000000000000a01b",
            "om_5b3c000000000000000000000000a01c",
            "om_5b3c000000000000000000000000a01d",
        ]
    );
    assert_eq!(
        items[4].upper_message_id.as_deref(),
        Some("om_5b3c000000000000000000000000a01d")
    );

    // Bodies: REST mentions carry a bare open_id; every mention renders as @name.
    let bodies: Vec<String> = items.iter().map(|item| item.render_body()).collect();
    assert_eq!(bodies[1], "@Alice Wang the canary is failing on eu-west");
    assert_eq!(items[1].mentions[0].open_id.as_deref(), Some(ALICE_OPEN_ID));
    assert_eq!(bodies[2], "[Image]");
    assert_eq!(bodies[3], "[Forwarded messages]");
    assert_eq!(bodies[4], "Root cause\nExpired TLS cert on the LB");
    assert_eq!(items[4].sender_type, "app");

    // Siblings sort by create_time, not list order.
    let mut children: Vec<_> = items[1..4].iter().collect();
    children.sort_by_key(|item| item.create_time_ms);
    assert_eq!(
        children[0].message_id,
        "om_5b3c000000000000000000000000a01b"
    );
}

#[test]
fn rest_reply_message_post() {
    let fixture = fixture_json("rest_reply_message_post.json");
    // The request's md node (send-only) flattens to its markdown text.
    let sent = str_at(&fixture, "/request/body/content");
    assert!(flatten_content("post", sent).starts_with("**Summary**\n- cause: expired cert"));

    let response = &fixture["response"];
    let reply = parse_sent_message(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(reply.message_id, "om_5b3c0000000000000000000000eee002");
    assert_eq!(reply.thread_id.as_deref(), Some("omt_1a7c3e9b5d2f4"));
    assert_eq!(reply.sender_type, "app");
    // The echo re-expresses md as text/code_block paragraphs.
    assert_eq!(
        reply.render_body(),
        "Summary\ncause: expired cert\nfix: rotated at 10:42\nkubectl rollout status deploy/lb"
    );
}

#[test]
fn rest_send_message_interactive() {
    let fixture = fixture_json("rest_send_message_interactive.json");
    // A schema 2.0 card (header + body.elements) renders title, markdown and buttons.
    let card = flatten_content("interactive", str_at(&fixture, "/request/body/content"));
    assert_eq!(
        card,
        "[Card] Deploy approval: api-gateway\n\
         Requested by <at id=\"ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4\"></at>\n\
         Version **2.3.0 → 2.3.1**\n\
         [Approve]"
    );
    let response = &fixture["response"];
    let sent = parse_sent_message(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(sent.message_id, "om_5b3c0000000000000000000000eee003");
    assert_eq!(sent.msg_type, "interactive");
    assert_eq!(sent.chat_id, P2P_CHAT);
}

#[test]
fn rest_send_message_text() {
    let fixture = fixture_json("rest_send_message_text.json");
    let response = &fixture["response"];
    let sent = parse_sent_message(status_of(response), &[], &body_of(response)).unwrap();
    assert_eq!(sent.message_id, "om_5b3c0000000000000000000000eee001");
    assert_eq!(sent.chat_id, GROUP_CHAT);
    assert_eq!(
        sent.render_body(),
        "@Alice Wang build #812 passed: [details](https://ci.example.com/812)"
    );
}

#[test]
fn rest_error_rate_limited() {
    let fixture = fixture_json("rest_error_rate_limited.json");
    let expected_retry_after = [Some(1), Some(2), None];
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), expected_retry_after.len());
    for (case, retry_after) in cases.iter().zip(expected_retry_after) {
        let err = check_response(status_of(case), &headers_of(case), &body_of(case)).unwrap_err();
        assert_eq!(err.kind(), ApiErrorKind::RateLimited, "{case}");
        assert_eq!(err.retry_after_s, retry_after, "{case}");
        assert_eq!(err.code, case["body"]["code"].as_i64().unwrap());
        assert!(err.is_retryable());
    }
}

#[test]
fn rest_error_token_invalid() {
    let fixture = fixture_json("rest_error_token_invalid.json");
    let expected = [
        (ApiErrorKind::TokenInvalid, true),
        (ApiErrorKind::Other, false),
        (ApiErrorKind::Permission, false),
    ];
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), expected.len());
    for (case, (kind, retryable)) in cases.iter().zip(expected) {
        let err = check_response(status_of(case), &[], &body_of(case)).unwrap_err();
        assert_eq!(err.kind(), kind, "{case}");
        assert_eq!(err.is_retryable(), retryable, "{case}");
        assert!(err.to_string().contains(&format!("code={}", err.code)));
    }
}
