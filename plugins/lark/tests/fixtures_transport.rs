//! One test per `ws_*.json` fixture: byte-identical frame encoding and decoding, frame
//! classification, ACKs, endpoint discovery and handshake failures.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use switchboard_lark::decode::{Decoded, decode_event};
use switchboard_lark::frame::{Frame, Header};
use switchboard_lark::transport::{
    AckStatus, ConnectError, ConnectionHints, ControlFrame, Fragment, FrameClass, build_ack,
    build_ping, classify_frame, classify_handshake_failure, endpoint_request,
    parse_endpoint_response,
};

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

/// The frame a fixture's `decoded` object describes.
fn frame_from_decoded(decoded: &Value) -> Frame {
    let headers = decoded
        .get("headers")
        .or_else(|| decoded.get("decoded_headers"))
        .and_then(Value::as_array)
        .expect("headers")
        .iter()
        .map(|header| Header::new(str_at(header, "/key"), str_at(header, "/value")))
        .collect();
    Frame {
        seq_id: decoded["SeqID"].as_u64().unwrap(),
        log_id: decoded["LogID"].as_u64().unwrap(),
        service: decoded["service"].as_i64().unwrap() as i32,
        method: decoded["method"].as_i64().unwrap() as i32,
        headers,
        payload_encoding: None,
        payload_type: None,
        payload: decoded
            .get("payload_base64")
            .and_then(Value::as_str)
            .map(b64),
        log_id_new: None,
    }
}

/// Decodes the fixture bytes (hex and base64 agree), checks the semantic fields and that
/// re-encoding reproduces the exact bytes.
fn assert_frame_round_trip(frame_fixture: &Value, decoded: &Value) -> (Vec<u8>, Frame) {
    let bytes = unhex(str_at(frame_fixture, "/hex"));
    if let Some(base64) = frame_fixture.get("base64").and_then(Value::as_str) {
        assert_eq!(b64(base64), bytes, "hex and base64 encodings disagree");
    }
    let frame = Frame::decode_bytes(&bytes).expect("fixture frame decodes");
    let expected = frame_from_decoded(decoded);
    assert_eq!(frame.seq_id, expected.seq_id);
    assert_eq!(frame.log_id, expected.log_id);
    assert_eq!(frame.service, expected.service);
    assert_eq!(frame.method, expected.method);
    assert_eq!(frame.headers, expected.headers);
    assert_eq!(frame.payload, expected.payload);
    assert_eq!(
        frame.encode_bytes(),
        bytes,
        "re-encoding is not byte-identical"
    );
    (bytes, frame)
}

#[test]
fn ws_frame_ping() {
    let fixture = fixture_json("ws_frame_ping.json");
    let frame = &fixture["frame"];
    let (bytes, decoded) = assert_frame_round_trip(frame, &frame["decoded"]);
    assert_eq!(build_ping(4921), bytes, "ping must match the golden vector");
    assert_eq!(decoded, Frame::ping(4921));
    assert_eq!(
        classify_frame(&bytes).unwrap(),
        FrameClass::Control(ControlFrame {
            kind: "ping".into(),
            reply: None,
            hints: None,
        }),
        "a server ping is ignored, never answered"
    );
}

#[test]
fn ws_frame_pong_with_config() {
    let fixture = fixture_json("ws_frame_pong_with_config.json");
    let frame = &fixture["frame"];
    let (bytes, decoded) = assert_frame_round_trip(frame, &frame["decoded"]);
    // gogo style: the empty optional strings are present and must survive the round trip.
    assert_eq!(decoded.payload_encoding.as_deref(), Some(""));
    assert_eq!(decoded.log_id_new.as_deref(), Some(""));
    let effect = &fixture["expected_effect"];
    let seconds = |name: &str| effect[name].as_u64().unwrap() * 1000;
    assert_eq!(
        classify_frame(&bytes).unwrap(),
        FrameClass::Control(ControlFrame {
            kind: "pong".into(),
            reply: None,
            hints: Some(ConnectionHints {
                ping_interval_ms: Some(seconds("ping_interval_s")),
                reconnect_interval_ms: Some(seconds("reconnect_interval_s")),
                reconnect_jitter_ms: Some(seconds("reconnect_nonce_s")),
                reconnect_count: Some(effect["reconnect_count"].as_i64().unwrap() as i32),
            }),
        })
    );
}

#[test]
fn ws_frame_event_single_and_ack() {
    let fixture = fixture_json("ws_frame_event_single_and_ack.json");
    let inbound = &fixture["inbound"];
    let (bytes, _) = assert_frame_round_trip(inbound, &inbound["decoded"]);
    let payload = str_at(inbound, "/decoded/payload_utf8").as_bytes().to_vec();

    let FrameClass::Data(data) = classify_frame(&bytes).unwrap() else {
        panic!("expected a data frame");
    };
    assert_eq!(data.kind, "event");
    assert_eq!(
        data.fragment,
        Fragment {
            message_id: "c2a4e6f8-0b1d-4f3a-9c5e-7a9b1d3f5e70".into(),
            seq: 0,
            total: 1,
        }
    );
    assert_eq!(data.trace_id.as_deref(), Some("9a7c5e3b1d2f4a6c"));
    assert_eq!(data.payload, payload);

    // The ACK: same ids and headers + biz_rt, payload {"code":200,…}; byte-identical.
    let ack = &fixture["ack"];
    let (ack_bytes, ack_frame) = assert_frame_round_trip(ack, &ack["decoded"]);
    assert_eq!(
        build_ack(&bytes, AckStatus::Ok, 3, None).unwrap(),
        ack_bytes
    );
    assert_eq!(ack_frame.header("biz_rt"), Some("3"));

    // A NACK differs only in the code.
    let nack =
        Frame::decode_bytes(&build_ack(&bytes, AckStatus::Failed, 3, None).unwrap()).unwrap();
    assert_eq!(
        nack.payload.as_deref(),
        Some(&br#"{"code":500,"headers":null,"data":null}"#[..])
    );
    assert_eq!(nack.headers, ack_frame.headers);

    // The payload is the group-mentions event.
    let Decoded::Message(message) = decode_event(&payload, &bot_ctx()).unwrap() else {
        panic!("payload should decode to a message");
    };
    assert_eq!(
        message,
        decode_message("event_receive_text_group_mentions.json")
    );
}

#[test]
fn ws_frame_event_fragmented() {
    let fixture = fixture_json("ws_frame_event_fragmented.json");
    let fragments = fixture["fragments"].as_array().unwrap();
    assert_eq!(fragments.len(), 2);
    let mut frames = Vec::new();
    for (index, fragment) in fragments.iter().enumerate() {
        let (bytes, _) = assert_frame_round_trip(fragment, fragment);
        let FrameClass::Data(data) = classify_frame(&bytes).unwrap() else {
            panic!("fragment {index} should be a data frame");
        };
        assert_eq!(
            data.fragment,
            Fragment {
                message_id: "5e7a9c1b-3d5f-4a7b-9c1d-3e5f7a9b1c2d".into(),
                seq: index as u32,
                total: 2,
            }
        );
        assert_eq!(
            data.payload.len() as u64,
            fragment["payload_len"].as_u64().unwrap()
        );
        frames.push((bytes, data));
    }
    // Concatenate in seq order whatever the arrival order (bytes first, then JSON).
    let mut arrived: Vec<_> = frames.iter().rev().collect();
    arrived.sort_by_key(|(_, data)| data.fragment.seq);
    let reassembled: Vec<u8> = arrived
        .iter()
        .flat_map(|(_, data)| data.payload.clone())
        .collect();
    assert_eq!(
        reassembled,
        str_at(&fixture, "/reassembled_payload_utf8").as_bytes()
    );
    assert!(
        decode_event(&frames[0].1.payload, &bot_ctx()).is_err(),
        "the first fragment alone is not a complete JSON document"
    );

    let Decoded::Message(message) = decode_event(&reassembled, &bot_ctx()).unwrap() else {
        panic!("reassembled payload should decode to a message");
    };
    assert_eq!(message, decode_message("event_receive_post_all_tags.json"));

    // One ACK, built from the completing (last) fragment.
    let ack = &fixture["ack"];
    let (ack_bytes, _) = assert_frame_round_trip(ack, &ack["decoded"]);
    assert_eq!(
        build_ack(&frames[1].0, AckStatus::Ok, 5, None).unwrap(),
        ack_bytes
    );
    assert_ne!(
        build_ack(&frames[0].0, AckStatus::Ok, 5, None).unwrap(),
        ack_bytes
    );
}

#[test]
fn ws_frame_card_type_ignored() {
    let fixture = fixture_json("ws_frame_card_type_ignored.json");
    let frame = &fixture["frame"];
    let (bytes, _) = assert_frame_round_trip(frame, &frame["decoded"]);
    match classify_frame(&bytes).unwrap() {
        FrameClass::Ignore(reason) => assert!(reason.contains("card"), "{reason}"),
        other => panic!("type=card frames must be ignored, got {other:?}"),
    }
}

#[test]
fn ws_frame_card_action_callback_and_ack() {
    let fixture = fixture_json("ws_frame_card_action_callback_and_ack.json");
    let inbound = &fixture["inbound"];
    let (bytes, _) = assert_frame_round_trip(inbound, &inbound["decoded"]);
    let FrameClass::Data(data) = classify_frame(&bytes).unwrap() else {
        panic!("card callbacks travel as ordinary event frames");
    };
    assert_eq!(data.fragment.total, 1);
    match decode_event(&data.payload, &bot_ctx()).unwrap() {
        Decoded::Ignored(reason) => assert!(reason.contains("card.action.trigger")),
        other => panic!("a card callback is not a chat message: {other:?}"),
    }

    // The callback reply travels base64-encoded in the ACK's `data`.
    let ack = &fixture["ack"];
    let (ack_bytes, _) = assert_frame_round_trip(ack, &ack["decoded"]);
    let ack_payload: Value = serde_json::from_str(str_at(ack, "/decoded/payload_utf8")).unwrap();
    let response = b64(ack_payload["data"].as_str().unwrap());
    let response_json: Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(response_json, fixture["callback_response_json"]);
    assert_eq!(
        build_ack(&bytes, AckStatus::Ok, 41, Some(&response)).unwrap(),
        ack_bytes
    );
}

#[test]
fn ws_endpoint_response_ok() {
    let fixture = fixture_json("ws_endpoint_response_ok.json");
    let request = endpoint_request("https://open.feishu.cn", APP_ID, "s3cret").unwrap();
    assert_eq!(request.method, str_at(&fixture, "/request/method"));
    assert_eq!(request.url, str_at(&fixture, "/request/url"));
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["AppID"], fixture["request"]["body"]["AppID"]);
    assert_eq!(body["AppSecret"], "s3cret");
    assert!(
        request
            .headers
            .iter()
            .any(|(key, value)| key == "locale" && value == "zh")
    );
    assert!(
        request
            .headers
            .iter()
            .any(|(key, value)| key == "Content-Type" && value.starts_with("application/json"))
    );

    let response = serde_json::to_vec(&fixture["response"]["body"]).unwrap();
    let plan = parse_endpoint_response(200, &response).unwrap();
    assert_eq!(plan.url, str_at(&fixture, "/response/body/data/URL"));
    assert_eq!(plan.connection_id, "7436250981472903205");
    assert_eq!(plan.service_id, 4921);
    let ping = fixture_json("ws_frame_ping.json");
    assert_eq!(plan.ping_frame, unhex(str_at(&ping, "/frame/hex")));
    assert_eq!(
        plan.hints,
        ConnectionHints {
            ping_interval_ms: Some(120_000),
            reconnect_interval_ms: Some(120_000),
            reconnect_jitter_ms: Some(30_000),
            reconnect_count: Some(-1),
        }
    );
}

#[test]
fn ws_endpoint_response_error() {
    let fixture = fixture_json("ws_endpoint_response_error.json");
    for case in fixture["cases"].as_array().unwrap() {
        let status = case["status"].as_u64().unwrap() as u16;
        let body = match &case["body"] {
            Value::Null => Vec::new(),
            body => serde_json::to_vec(body).unwrap(),
        };
        let err = parse_endpoint_response(status, &body).expect_err("every case is a failure");
        assert_eq!(
            err.is_retryable(),
            case["retryable"].as_bool().unwrap(),
            "case {case}: got {err}"
        );
        if let Some(msg) = case.pointer("/body/msg").and_then(Value::as_str) {
            assert!(err.message().contains(msg), "Lark's msg is quoted: {err}");
        }
    }
}

#[test]
fn ws_handshake_error_exceed_conn_limit() {
    let fixture = fixture_json("ws_handshake_error_exceed_conn_limit.json");
    let status = fixture["response"]["status"].as_u64().unwrap() as u16;
    let headers: Vec<(String, String)> = fixture["response"]["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
        .collect();
    let err = classify_handshake_failure(status, &headers);
    assert_eq!(
        err.is_retryable(),
        fixture["expected"]["retryable"].as_bool().unwrap()
    );
    assert!(
        matches!(&err, ConnectError::Terminal(message) if message.contains("exceed connection limit")),
        "{err}"
    );

    // Header names are case-insensitive; other auth failures are retryable.
    let lower: Vec<(String, String)> = headers
        .iter()
        .map(|(key, value)| (key.to_lowercase(), value.clone()))
        .collect();
    assert!(!classify_handshake_failure(status, &lower).is_retryable());
    let other_auth: Vec<(String, String)> = vec![("Handshake-Status".into(), "514".into())];
    assert!(classify_handshake_failure(status, &other_auth).is_retryable());
}
