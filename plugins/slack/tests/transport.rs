//! Webhook verification (good, bad, stale, missing signatures; a missing secret; challenges;
//! form bodies; routing keys) and Socket Mode (frames, ACKs, connections.open, handshakes).

mod common;

use common::fixture;
use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::{
    AckStatus, ConnectError, FrameClass, WebhookRejection, WebhookRequest, WebhookVerdict,
};
use switchboard_plugin_sdk::http::Response;
use switchboard_plugin_sdk::types::PluginError;
use switchboard_slack::{socket, webhook};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const NOW_MS: i64 = 1_718_000_000_000;

fn signed(body: &[u8], ts: i64, secret: &str) -> WebhookRequest {
    let ts = ts.to_string();
    WebhookRequest {
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: vec![
            ("X-Slack-Request-Timestamp".into(), ts.clone()),
            (
                "X-Slack-Signature".into(),
                webhook::signature(secret, &ts, body),
            ),
            ("X-Slack-Retry-Num".into(), "1".into()),
        ],
        body: body.to_vec(),
    }
}

fn verify(request: &WebhookRequest) -> Result<WebhookVerdict, WebhookRejection> {
    webhook::verify(request, Some(SECRET), NOW_MS)
}

#[test]
fn the_signature_matches_slacks_documented_example() {
    // api.slack.com "Verifying requests from Slack": the worked example's inputs and signature.
    let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    assert_eq!(
        webhook::signature(SECRET, "1531420618", body),
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    );
}

#[test]
fn a_good_signature_yields_the_body_and_its_timestamp() {
    let body = fixture("im_message.json");
    let Ok(WebhookVerdict::Events(events)) = verify(&signed(&body, NOW_MS / 1000 - 30, SECRET))
    else {
        panic!("not verified");
    };
    assert_eq!(
        events.payloads,
        vec![body],
        "the Events API body, byte for byte"
    );
    assert_eq!(events.signed_at_ms, Some(NOW_MS - 30_000));
    assert_eq!(
        (events.response.status, events.response.body.len()),
        (200, 0)
    );
}

#[test]
fn a_signature_in_upper_case_hex_is_accepted() {
    let body = fixture("im_message.json");
    let mut request = signed(&body, NOW_MS / 1000, SECRET);
    request.headers[1].1 = request.headers[1]
        .1
        .to_uppercase()
        .replacen("V0=", "v0=", 1);
    assert!(verify(&request).is_ok());
}

#[test]
fn bad_stale_missing_and_unverifiable_requests_are_rejected() {
    let body = fixture("im_message.json");
    let wrong = signed(&body, NOW_MS / 1000, "another-secret");
    assert!(matches!(
        verify(&wrong),
        Err(WebhookRejection::BadSignature(_))
    ));
    let mut tampered = signed(&body, NOW_MS / 1000, SECRET);
    tampered.body.push(b' ');
    assert!(matches!(
        verify(&tampered),
        Err(WebhookRejection::BadSignature(_))
    ));
    let stale = signed(&body, NOW_MS / 1000 - 301, SECRET);
    assert!(
        matches!(verify(&stale), Err(WebhookRejection::BadSignature(why)) if why.contains("five minutes"))
    );
    let future = signed(&body, NOW_MS / 1000 + 301, SECRET);
    assert!(matches!(
        verify(&future),
        Err(WebhookRejection::BadSignature(_))
    ));
    for header in ["X-Slack-Signature", "X-Slack-Request-Timestamp"] {
        let mut missing = signed(&body, NOW_MS / 1000, SECRET);
        missing.headers.retain(|(k, _)| k != header);
        assert!(
            matches!(verify(&missing), Err(WebhookRejection::BadSignature(_))),
            "{header}"
        );
    }
    let mut garbled = signed(&body, NOW_MS / 1000, SECRET);
    garbled.headers[0].1 = "yesterday".into();
    assert!(matches!(
        verify(&garbled),
        Err(WebhookRejection::BadSignature(_))
    ));
    let request = signed(&body, NOW_MS / 1000, SECRET);
    assert!(
        matches!(
            webhook::verify(&request, None, NOW_MS),
            Err(WebhookRejection::BadToken(_))
        ),
        "no secret: never accepted"
    );
    let mut get = signed(&body, NOW_MS / 1000, SECRET);
    get.method = "GET".into();
    assert!(matches!(verify(&get), Err(WebhookRejection::Malformed(_))));
}

#[test]
fn malformed_bodies_are_refused_after_the_signature() {
    for body in [
        &b"{not json"[..],
        b"[1,2]",
        b"team_id=T1&nothing=useful",
        b"payload=%7Bbroken",
    ] {
        let request = signed(body, NOW_MS / 1000, SECRET);
        assert!(
            matches!(verify(&request), Err(WebhookRejection::Malformed(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn url_verification_answers_the_challenge() {
    let request = signed(&fixture("url_verification.json"), NOW_MS / 1000, SECRET);
    let Ok(WebhookVerdict::Challenge(response)) = verify(&request) else {
        panic!("no challenge")
    };
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
}

#[test]
fn interactivity_and_slash_command_forms_become_json_payloads() {
    let action = fixture("block_actions.json");
    let action: Value = serde_json::from_slice(&action).unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &action.to_string())
        .finish();
    let Ok(WebhookVerdict::Events(events)) =
        verify(&signed(form.as_bytes(), NOW_MS / 1000, SECRET))
    else {
        panic!()
    };
    let payload: Value = serde_json::from_slice(&events.payloads[0]).unwrap();
    assert_eq!(payload, action);
    let Ok(WebhookVerdict::Events(events)) = verify(&signed(
        &fixture("slash_command.form"),
        NOW_MS / 1000,
        SECRET,
    )) else {
        panic!()
    };
    let payload: Value = serde_json::from_slice(&events.payloads[0]).unwrap();
    assert_eq!(
        (
            payload["type"].as_str(),
            payload["command"].as_str(),
            payload["text"].as_str()
        ),
        (Some("slash_commands"), Some("/deploy"), Some("prod now"))
    );
    let ssl = signed(b"ssl_check=1&token=x", NOW_MS / 1000, SECRET);
    assert!(matches!(verify(&ssl), Ok(WebhookVerdict::Challenge(_))));
}

#[test]
fn routing_keys_come_from_every_shape() {
    for name in [
        "im_message.json",
        "block_actions.json",
        "slash_command.form",
        "socket_events_api.json",
        "socket_interactive.json",
        "socket_slash_commands.json",
    ] {
        assert_eq!(
            webhook::routing_key(&fixture(name)).as_deref(),
            Some("T0TEAM0001"),
            "{name}"
        );
    }
    assert_eq!(
        webhook::routing_key(&fixture("url_verification.json")),
        None
    );
    assert_eq!(webhook::routing_key(b"garbage"), None);
}

#[test]
fn socket_frames_are_classified() {
    let (hello, note) = socket::classify_frame(&fixture("socket_hello.json")).unwrap();
    assert!(matches!(hello, FrameClass::Control(c) if c.kind == "hello" && c.reply.is_none()));
    assert!(note.is_none());
    let (refresh, note) = socket::classify_frame(&fixture("socket_disconnect.json")).unwrap();
    assert!(matches!(refresh, FrameClass::Control(c) if c.kind == socket::RECONNECT));
    assert!(note.unwrap().contains("refresh_requested"));
    let (disabled, note) = socket::classify_frame(&fixture("socket_link_disabled.json")).unwrap();
    assert!(matches!(disabled, FrameClass::Control(c) if c.kind == socket::RECONNECT));
    assert!(note.unwrap().contains("Socket Mode was turned off"));
    for (name, kind, id) in [
        (
            "socket_events_api.json",
            "events_api",
            "dbdd0ef3-1543-4f94-bfb4-133d0e6c1545",
        ),
        (
            "socket_interactive.json",
            "interactive",
            "57d6a792-4d35-4d0b-b6aa-3361493e1caf",
        ),
        (
            "socket_slash_commands.json",
            "slash_commands",
            "1d3c3c6b-7e2b-4b4d-9f58-1b8e7c2d3a40",
        ),
    ] {
        let frame = fixture(name);
        let (FrameClass::Data(data), None) = socket::classify_frame(&frame).unwrap() else {
            panic!("{name}")
        };
        assert_eq!(
            (
                data.kind.as_str(),
                data.fragment.message_id.as_str(),
                data.fragment.total
            ),
            (kind, id, 1)
        );
        assert_eq!(
            data.payload, frame,
            "the whole envelope goes to the decoder"
        );
    }
    let (other, _) = socket::classify_frame(br#"{"type":"something_new"}"#).unwrap();
    assert!(matches!(other, FrameClass::Ignore(_)));
    assert!(matches!(
        socket::classify_frame(b"not json"),
        Err(PluginError::InvalidInput(_))
    ));
    assert!(matches!(
        socket::classify_frame(br#"{"type":"events_api","payload":{}}"#),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn an_envelope_is_acked_by_its_id_and_a_failure_is_not_acked() {
    let frame = fixture("socket_events_api.json");
    let ack: Value =
        serde_json::from_slice(&socket::build_ack(&frame, AckStatus::Ok, None).unwrap()).unwrap();
    assert_eq!(
        ack,
        json!({ "envelope_id": "dbdd0ef3-1543-4f94-bfb4-133d0e6c1545" })
    );
    let with = socket::build_ack(
        &fixture("socket_slash_commands.json"),
        AckStatus::Ok,
        Some(br#"{"text":"ok"}"#),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&with).unwrap()["payload"]["text"],
        "ok"
    );
    assert!(
        socket::build_ack(&frame, AckStatus::Failed, None).is_err(),
        "Slack redelivers what is not ACKed"
    );
}

fn response(status: u16, headers: &[(&str, &str)], body: Value) -> Response {
    Response {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string().into_bytes(),
    }
}

#[test]
fn connections_open_gives_the_url_or_a_classified_error() {
    let request = socket::open_request("xapp-1-token");
    assert_eq!(
        (request.method.as_str(), request.url.as_str()),
        ("POST", "https://slack.com/api/apps.connections.open")
    );
    assert!(
        request
            .headers
            .contains(&("authorization".into(), "Bearer xapp-1-token".into()))
    );
    let plan = socket::parse_open(
        &response(
            200,
            &[],
            json!({ "ok": true, "url": "wss://wss-primary.slack.com/link/?ticket=t&app_id=A1" }),
        ),
        7,
    )
    .unwrap();
    assert_eq!(
        plan.url,
        "wss://wss-primary.slack.com/link/?ticket=t&app_id=A1"
    );
    assert!(plan.ping_frame.is_empty(), "protocol pings");
    assert!(!plan.connection_id.contains("ticket"));
    assert!(
        matches!(socket::parse_open(&response(200, &[], json!({ "ok": false, "error": "invalid_auth" })), 7), Err(ConnectError::Terminal(why)) if why.contains("invalid_auth"))
    );
    assert!(matches!(
        socket::parse_open(
            &response(
                429,
                &[("Retry-After", "30")],
                json!({ "ok": false, "error": "ratelimited" })
            ),
            7
        ),
        Err(ConnectError::Retryable(_))
    ));
    assert!(matches!(
        socket::parse_open(&response(503, &[], json!({})), 7),
        Err(ConnectError::Retryable(_))
    ));
    assert!(matches!(
        socket::classify_handshake_failure(401),
        ConnectError::Terminal(_)
    ));
    assert!(matches!(
        socket::classify_handshake_failure(403),
        ConnectError::Terminal(_)
    ));
    assert!(matches!(
        socket::classify_handshake_failure(408),
        ConnectError::Retryable(_)
    ));
}
