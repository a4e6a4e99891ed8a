//! The `pbbp2.Frame` codec (reference §B1–B4 and its ws_frame tests).

use switchboard_lark::frame::{Frame, Header, METHOD_CONTROL, METHOD_DATA};
use switchboard_lark::transport::{AckStatus, build_ack, build_ping};

fn bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn round_trip_preserves_every_field() {
    let frame = Frame {
        seq_id: u64::MAX,
        log_id: 1_186_203_341,
        service: -3,
        method: METHOD_DATA,
        headers: vec![
            Header::new("type", "event"),
            Header::new("message_id", "m-1"),
            Header::new("type", "shadowed"),
        ],
        payload_encoding: Some("gzip".into()),
        payload_type: Some("json".into()),
        payload: Some(b"{\"a\":1}".to_vec()),
        log_id_new: Some("log-2".into()),
    };
    let encoded = frame.encode_bytes();
    let decoded = Frame::decode_bytes(&encoded).unwrap();
    assert_eq!(decoded, frame);
    assert_eq!(decoded.encode_bytes(), encoded);
    // Header lookup: first match wins.
    assert_eq!(decoded.header("type"), Some("event"));
    assert_eq!(decoded.kind(), "event");
    assert_eq!(decoded.header("missing"), None);
}

#[test]
fn marshal_is_sdk_byte_compatible() {
    // Minimal style (fields 6/7/9 absent), as the fixtures' ping.
    assert_eq!(
        build_ping(7),
        bytes(&[
            &[
                0x08, 0x00, 0x10, 0x00, 0x18, 0x07, 0x20, 0x00, 0x2a, 0x0c, 0x0a, 0x04
            ],
            b"type",
            &[0x12, 0x04],
            b"ping",
        ])
    );
    // gogo style (the Go SDK's golden vectors): empty 6/7/9 present; a decoded frame keeps them.
    let gogo_pong = bytes(&[
        &[
            0x08, 0x00, 0x10, 0x00, 0x18, 0x2a, 0x20, 0x00, 0x2a, 0x0c, 0x0a, 0x04,
        ],
        b"type",
        &[0x12, 0x04],
        b"pong",
        &[0x32, 0x00, 0x3a, 0x00, 0x4a, 0x00],
    ]);
    let pong = Frame::decode_bytes(&gogo_pong).unwrap();
    assert_eq!(pong.service, 42);
    assert_eq!(pong.kind(), "pong");
    assert_eq!(pong.payload, None);
    assert_eq!(pong.encode_bytes(), gogo_pong);
    let gogo_zero = [
        0x08, 0x00, 0x10, 0x00, 0x18, 0x00, 0x20, 0x00, 0x32, 0x00, 0x3a, 0x00, 0x4a, 0x00,
    ];
    assert_eq!(
        Frame::decode_bytes(&gogo_zero).unwrap().encode_bytes(),
        gogo_zero
    );
}

#[test]
fn marshal_emits_required_zero_fields() {
    assert_eq!(
        Frame::default().encode_bytes(),
        [0x08, 0x00, 0x10, 0x00, 0x18, 0x00, 0x20, 0x00]
    );
    let ping = Frame::ping(0);
    assert_eq!(ping.method, METHOD_CONTROL);
    assert!(
        ping.encode_bytes()
            .starts_with(&[0x08, 0x00, 0x10, 0x00, 0x18, 0x00, 0x20, 0x00])
    );
}

#[test]
fn marshal_payload_absent_vs_empty() {
    let absent = Frame::default().encode_bytes();
    assert!(!absent.contains(&0x42));
    let empty = Frame {
        payload: Some(Vec::new()),
        ..Frame::default()
    }
    .encode_bytes();
    assert_eq!(
        &empty[8..],
        &[0x42, 0x00],
        "an empty payload emits tag + zero length"
    );
    assert_eq!(
        Frame::decode_bytes(&empty).unwrap().payload,
        Some(Vec::new())
    );
}

#[test]
fn ack_reuses_inbound_ids_and_headers() {
    let inbound = Frame {
        seq_id: 9,
        log_id: 10,
        service: 7,
        method: METHOD_DATA,
        headers: vec![
            Header::new("type", "event"),
            Header::new("message_id", "om-42"),
        ],
        payload: Some(b"{}".to_vec()),
        ..Frame::default()
    }
    .encode_bytes();
    let ack = Frame::decode_bytes(&build_ack(&inbound, AckStatus::Ok, 12, None).unwrap()).unwrap();
    assert_eq!(
        (ack.seq_id, ack.log_id, ack.service, ack.method),
        (9, 10, 7, METHOD_DATA)
    );
    assert_eq!(
        ack.headers,
        vec![
            Header::new("type", "event"),
            Header::new("message_id", "om-42"),
            Header::new("biz_rt", "12"),
        ]
    );
    let payload = ack.payload.unwrap();
    assert_eq!(payload, br#"{"code":200,"headers":null,"data":null}"#);
    assert_eq!(payload.len(), 39);

    let nack =
        Frame::decode_bytes(&build_ack(&inbound, AckStatus::Failed, 0, None).unwrap()).unwrap();
    assert_eq!(
        nack.payload.as_deref().unwrap(),
        br#"{"code":500,"headers":null,"data":null}"#
    );
    assert_eq!(nack.header("biz_rt"), Some("0"));
}

#[test]
fn ack_echoes_non_empty_log_id_new() {
    let inbound = Frame {
        method: METHOD_DATA,
        headers: vec![Header::new("type", "event")],
        log_id_new: Some("trace-9".into()),
        payload_encoding: Some(String::new()),
        ..Frame::default()
    }
    .encode_bytes();
    let ack = Frame::decode_bytes(&build_ack(&inbound, AckStatus::Ok, 1, None).unwrap()).unwrap();
    assert_eq!(ack.log_id_new.as_deref(), Some("trace-9"));
    assert_eq!(
        ack.payload_encoding, None,
        "empty optional strings are not echoed"
    );
}

#[test]
fn unmarshal_rejects_empty_truncated_and_mistyped_buffers() {
    assert!(Frame::decode_bytes(&[]).is_err());
    let valid = build_ping(4921);
    for cut in 1..valid.len() {
        // Every strict prefix that ends inside a field is an error.
        let prefix = &valid[..cut];
        if matches!(cut, 2 | 4 | 7 | 9) {
            continue; // field boundaries: a shorter valid frame
        }
        assert!(
            Frame::decode_bytes(prefix).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
    // Field 1 (SeqID) with wire type 2 (length-delimited) instead of varint.
    assert!(Frame::decode_bytes(&[0x0a, 0x00]).is_err());
    // A length running past the end.
    assert!(Frame::decode_bytes(&[0x42, 0x05, b'a']).is_err());
}

#[test]
fn unmarshal_skips_unknown_fields() {
    // Field 31 (varint 5) between known fields.
    let frame = Frame::decode_bytes(&[
        0x08, 0x00, 0x10, 0x00, 0xf8, 0x01, 0x05, 0x18, 0x07, 0x20, 0x00,
    ])
    .unwrap();
    assert_eq!(frame.service, 7);
    assert_eq!(frame.method, METHOD_CONTROL);
}
