//! `card.action.trigger` (the schema 2.0 card callback, reference §3.2) → inbound action, and
//! the answer Lark expects within 3 s: a toast, base64 in the long connection's ACK `data` or
//! as the webhook's HTTP body.
//!
//! Card callbacks are rare next to messages, so this module reads them into a
//! `serde_json::Value` rather than borrowing typed structs: clarity over the last microsecond.

use serde_json::{Map, Value};

/// Why a card callback cannot become an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A part without which the action could be neither deduplicated nor routed.
    MissingField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::MissingField(field) => {
                write!(f, "{CARD_ACTION_EVENT_TYPE} payload has no `{field}`")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The event type of a card callback.
pub const CARD_ACTION_EVENT_TYPE: &str = "card.action.trigger";

/// How long Lark waits for the callback's answer (§3.2: "respond within 3 s").
pub const ANSWER_DEADLINE_MS: u32 = 3000;

/// The callback answer when the host gives none (`answer-action` was not called, or failed):
/// `{}`, which Lark shows as nothing and which leaves the card as it is. The words of every
/// toast are the host's (its catalogue, in the installation's locale), never the plugin's.
pub const DEFAULT_RESPONSE: &[u8] = b"{}";

/// The callback answer carrying the host's words: a toast of `tone` (`info`, `success`,
/// `warning`, `error`) saying `toast`, and, when given, the card that replaces the one pressed
/// (`{"type": "raw", "data": card}`, reference §3.2).
pub fn answer_body(toast: &str, tone: &str, card: Option<Value>) -> Vec<u8> {
    let mut answer = Map::new();
    if !toast.trim().is_empty() {
        answer.insert(
            "toast".into(),
            serde_json::json!({ "type": tone, "content": toast }),
        );
    }
    if let Some(card) = card {
        answer.insert(
            "card".into(),
            serde_json::json!({ "type": "raw", "data": card }),
        );
    }
    Value::Object(answer).to_string().into_bytes()
}

/// A decoded card callback (mirrors the WIT `inbound-action`, plus the routing key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardAction {
    /// `header.app_id`: the routing key of the installation.
    pub app_id: String,
    /// `header.event_id`: the event id and the action's dedup key (re-pushes reuse it).
    pub event_id: String,
    /// `context.open_chat_id` (or the older root-level `open_chat_id`).
    pub chat_id: String,
    /// `operator.open_id`.
    pub open_id: String,
    /// `operator.union_id`, when present.
    pub union_id: Option<String>,
    /// `operator.user_id`, when present.
    pub user_id: Option<String>,
    /// `context.open_message_id` (or the older root-level `open_message_id`).
    pub message_id: Option<String>,
    /// The control's name: `value.action`, else `action.name`, else `action.tag`.
    pub name: String,
    /// `action.value` as JSON; when the card also sent form fields or an input's text, an
    /// object `{"value":…,"form_value":…,"input_value":…}` so the agent sees them too.
    pub value: String,
    /// `event.token` (`c-…`): the delayed-update token, valid 30 min.
    pub token: Option<String>,
    /// `header.create_time` in milliseconds (0 when absent).
    pub create_time_ms: i64,
}

/// Whether an event payload is a card callback (a cheap probe for `build-ack`, which sees the
/// frame but not the decoded event).
pub fn is_card_action(payload: &[u8]) -> bool {
    // A substring check first keeps message ACKs from paying for a JSON parse.
    if !contains(payload, CARD_ACTION_EVENT_TYPE.as_bytes()) {
        return false;
    }
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|root| {
            root.get("header")?
                .get("event_type")?
                .as_str()
                .map(|kind| kind == CARD_ACTION_EVENT_TYPE)
        })
        .unwrap_or(false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Decodes a card callback; `Ok(None)` when the payload is another kind of event (the message
/// decoder then reads it). A card callback without an event id, chat or operator is an error:
/// it could be neither deduplicated nor routed.
pub fn decode_card_action(payload: &[u8]) -> Result<Option<CardAction>, DecodeError> {
    if !contains(payload, CARD_ACTION_EVENT_TYPE.as_bytes()) {
        return Ok(None);
    }
    let Ok(root) = serde_json::from_slice::<Value>(payload) else {
        // Not JSON: the message decoder reports it the usual way.
        return Ok(None);
    };
    let header = root.get("header");
    let field = |value: Option<&Value>, key: &str| -> Option<String> {
        value?
            .get(key)?
            .as_str()
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    if header
        .and_then(|h| h.get("event_type"))
        .and_then(Value::as_str)
        != Some(CARD_ACTION_EVENT_TYPE)
    {
        return Ok(None);
    }
    let event = root
        .get("event")
        .filter(|event| event.is_object())
        .ok_or(DecodeError::MissingField("event"))?;
    let event_id = field(header, "event_id").ok_or(DecodeError::MissingField("header.event_id"))?;
    let context = event.get("context");
    let chat_id = field(context, "open_chat_id")
        .or_else(|| field(Some(event), "open_chat_id"))
        .ok_or(DecodeError::MissingField("event.context.open_chat_id"))?;
    let message_id =
        field(context, "open_message_id").or_else(|| field(Some(event), "open_message_id"));
    let operator = event.get("operator");
    let open_id =
        field(operator, "open_id").ok_or(DecodeError::MissingField("event.operator.open_id"))?;
    let action = event.get("action");
    let raw_value = action
        .and_then(|a| a.get("value"))
        .cloned()
        .unwrap_or(Value::Null);
    let name = raw_value
        .get("action")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .or_else(|| field(action, "name"))
        .or_else(|| field(action, "tag"))
        .unwrap_or_else(|| "card_action".into());
    // The host's own buttons carry `{"action": name, "host_value": value}`: the value goes
    // back as the host wrote it (the WIT promise that a notice-action's value returns as is).
    let host_value = raw_value
        .get(crate::render::HOST_VALUE_KEY)
        .and_then(Value::as_str)
        .map(str::to_string);
    let form_value = action
        .and_then(|a| a.get("form_value"))
        .filter(|form| form.as_object().is_some_and(|form| !form.is_empty()));
    let input_value = field(action, "input_value");
    let value = if let Some(host_value) = host_value {
        host_value
    } else if form_value.is_none() && input_value.is_none() {
        raw_value.to_string()
    } else {
        let mut object = Map::new();
        object.insert("value".into(), raw_value);
        if let Some(form) = form_value {
            object.insert("form_value".into(), form.clone());
        }
        if let Some(input) = input_value {
            object.insert("input_value".into(), Value::String(input));
        }
        Value::Object(object).to_string()
    };
    let create_time_ms = header
        .and_then(|h| h.get("create_time"))
        .and_then(|time| match time {
            Value::String(text) => text.trim().parse().ok(),
            other => other.as_i64(),
        })
        .unwrap_or(0);
    Ok(Some(CardAction {
        app_id: field(header, "app_id").unwrap_or_default(),
        event_id,
        chat_id,
        open_id,
        union_id: field(operator, "union_id"),
        user_id: field(operator, "user_id"),
        message_id,
        name,
        value,
        token: field(Some(event), "token"),
        create_time_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str =
        include_str!("../../../tests/fixtures/lark/event_card_action_trigger.json");

    #[test]
    fn the_fixture_decodes_into_an_action() {
        let action = decode_card_action(FIXTURE.as_bytes()).unwrap().unwrap();
        assert_eq!(action.event_id, "9d41f2c7000000000000000000041bbe");
        assert_eq!(action.app_id, "cli_a5f3c2e1d4b6a789");
        assert_eq!(action.chat_id, "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081");
        assert_eq!(action.open_id, "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4");
        assert_eq!(
            action.union_id.as_deref(),
            Some("on_8c2e4a6b0d1f39e7c5a3b9d7f1e2c4a6")
        );
        assert_eq!(
            action.message_id.as_deref(),
            Some("om_5b3c0000000000000000000000ccc001")
        );
        assert_eq!(action.name, "approve");
        let value: Value = serde_json::from_str(&action.value).unwrap();
        assert_eq!(value["request_id"], "req-42");
        assert_eq!(
            action.token.as_deref(),
            Some("c-4e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f")
        );
        assert_eq!(action.create_time_ms, 1_731_300_038_150);
        assert!(is_card_action(FIXTURE.as_bytes()));
    }

    #[test]
    fn name_falls_back_to_the_action_name_then_the_tag_and_forms_are_kept() {
        let payload = r#"{"schema":"2.0","header":{"event_id":"e1","event_type":"card.action.trigger"},
            "event":{"operator":{"open_id":"ou_1"},"open_chat_id":"oc_old","open_message_id":"om_old",
            "action":{"tag":"select_static","form_value":{"reason":"ok"},"input_value":"hi"}}}"#;
        let action = decode_card_action(payload.as_bytes()).unwrap().unwrap();
        assert_eq!(action.name, "select_static");
        assert_eq!(
            (action.chat_id.as_str(), action.message_id.as_deref()),
            ("oc_old", Some("om_old"))
        );
        let value: Value = serde_json::from_str(&action.value).unwrap();
        assert_eq!(value["form_value"]["reason"], "ok");
        assert_eq!(value["input_value"], "hi");
        assert!(value["value"].is_null());

        let named = r#"{"header":{"event_id":"e2","event_type":"card.action.trigger"},
            "event":{"operator":{"open_id":"ou_1"},"context":{"open_chat_id":"oc_1"},
            "action":{"tag":"button","name":"confirm","value":{"k":1}}}}"#;
        let action = decode_card_action(named.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (action.name.as_str(), action.value.as_str()),
            ("confirm", r#"{"k":1}"#)
        );
    }

    #[test]
    fn other_events_and_garbage_are_not_card_actions() {
        let message = include_str!("../../../tests/fixtures/lark/event_receive_text_p2p.json");
        assert_eq!(decode_card_action(message.as_bytes()), Ok(None));
        assert!(!is_card_action(message.as_bytes()));
        // The type named in a message text is not enough.
        let text = r#"{"header":{"event_type":"im.message.receive_v1"},"event":{"message":{"content":"card.action.trigger"}}}"#;
        assert_eq!(decode_card_action(text.as_bytes()), Ok(None));
        assert!(!is_card_action(text.as_bytes()));
        assert_eq!(decode_card_action(b"card.action.trigger {"), Ok(None));
        assert!(!is_card_action(b""));
    }

    #[test]
    fn a_card_action_without_its_ids_is_refused() {
        for (payload, missing) in [
            (
                r#"{"header":{"event_type":"card.action.trigger"},"event":{"operator":{"open_id":"ou_1"},"context":{"open_chat_id":"oc_1"}}}"#,
                "header.event_id",
            ),
            (
                r#"{"header":{"event_id":"e","event_type":"card.action.trigger"},"event":{"operator":{"open_id":"ou_1"}}}"#,
                "event.context.open_chat_id",
            ),
            (
                r#"{"header":{"event_id":"e","event_type":"card.action.trigger"},"event":{"context":{"open_chat_id":"oc_1"}}}"#,
                "event.operator.open_id",
            ),
            (
                r#"{"header":{"event_id":"e","event_type":"card.action.trigger"}}"#,
                "event",
            ),
        ] {
            assert_eq!(
                decode_card_action(payload.as_bytes()),
                Err(DecodeError::MissingField(missing)),
                "{payload}"
            );
        }
    }

    /// An `event` data frame carrying `payload`.
    fn event_frame(payload: &[u8]) -> Vec<u8> {
        use crate::frame::{Frame, Header, METHOD_DATA};
        Frame {
            seq_id: 3,
            service: 7,
            method: METHOD_DATA,
            headers: vec![
                Header::new("type", "event"),
                Header::new("message_id", "m1"),
            ],
            payload: Some(payload.to_vec()),
            ..Frame::default()
        }
        .encode_bytes()
    }

    /// The `data` of an ACK frame, base64-decoded (none when `null`).
    fn ack_data(ack: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let frame = crate::frame::Frame::decode_bytes(ack).unwrap();
        let payload: Value = serde_json::from_slice(&frame.payload.unwrap()).unwrap();
        assert_eq!(payload["code"], 200);
        payload["data"].as_str().map(|data| {
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap()
        })
    }

    #[test]
    fn a_card_action_ack_carries_the_toast_and_a_message_ack_none() {
        use crate::transport::{AckStatus, build_ack};
        let ack = build_ack(&event_frame(FIXTURE.as_bytes()), AckStatus::Ok, 5, None).unwrap();
        assert_eq!(ack_data(&ack).as_deref(), Some(DEFAULT_RESPONSE));
        // A response the host gives wins over the toast.
        let ack = build_ack(
            &event_frame(FIXTURE.as_bytes()),
            AckStatus::Ok,
            5,
            Some(b"{}"),
        )
        .unwrap();
        assert_eq!(ack_data(&ack).as_deref(), Some(&b"{}"[..]));
        // A NACK (the event was not stored) answers nothing: Lark re-pushes it.
        let nack = build_ack(&event_frame(FIXTURE.as_bytes()), AckStatus::Failed, 5, None).unwrap();
        let frame = crate::frame::Frame::decode_bytes(&nack).unwrap();
        assert_eq!(
            frame.payload.unwrap(),
            br#"{"code":500,"headers":null,"data":null}"#
        );
        let message = include_str!("../../../tests/fixtures/lark/event_receive_text_p2p.json");
        let ack = build_ack(&event_frame(message.as_bytes()), AckStatus::Ok, 5, None).unwrap();
        assert_eq!(ack_data(&ack), None);
    }

    #[test]
    fn a_card_action_webhook_is_answered_with_the_toast() {
        use crate::webhook::{WebhookRequest, WebhookSecrets, WebhookVerdict, verify_webhook};
        let secrets = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("vT9kQ2mXw7LpR4sZ"),
        };
        let headers = Vec::new();
        let answer = |body: &[u8]| match verify_webhook(
            &WebhookRequest {
                method: "POST",
                headers: &headers,
                body,
            },
            &secrets,
        ) {
            Ok(WebhookVerdict::Events(events)) => events.response.body,
            other => panic!("not events: {other:?}"),
        };
        assert_eq!(answer(FIXTURE.as_bytes()), DEFAULT_RESPONSE);
        let message = include_str!("../../../tests/fixtures/lark/event_receive_text_p2p.json");
        assert_eq!(answer(message.as_bytes()), br#"{"msg":"success"}"#);
        // A wrong token is refused before anything is answered.
        let wrong = WebhookSecrets {
            encrypt_key: None,
            verification_token: Some("other"),
        };
        let request = WebhookRequest {
            method: "POST",
            headers: &headers,
            body: FIXTURE.as_bytes(),
        };
        assert!(verify_webhook(&request, &wrong).is_err());
    }

    #[test]
    fn the_error_names_the_event_type_and_the_field() {
        assert_eq!(
            DecodeError::MissingField("event.operator.open_id").to_string(),
            "card.action.trigger payload has no `event.operator.open_id`"
        );
    }

    #[test]
    fn the_answer_carries_the_host_words_and_the_card() {
        let answer: Value = serde_json::from_slice(&answer_body(
            "已批准",
            "success",
            Some(serde_json::json!({"schema": "2.0"})),
        ))
        .unwrap();
        assert_eq!(answer["toast"]["type"], "success");
        assert_eq!(answer["toast"]["content"], "已批准");
        assert_eq!(answer["card"]["type"], "raw");
        assert_eq!(answer["card"]["data"]["schema"], "2.0");
        let bare: Value = serde_json::from_slice(&answer_body("Received", "info", None)).unwrap();
        assert!(bare.get("card").is_none());
        assert_eq!(bare["toast"]["content"], "Received");
    }

    #[test]
    fn a_host_button_press_gives_back_the_host_value() {
        let payload = r#"{"header":{"event_id":"e3","event_type":"card.action.trigger"},
            "event":{"operator":{"open_id":"ou_1"},"context":{"open_chat_id":"oc_1"},
            "action":{"tag":"button","value":{"action":"ap.y","host_value":"abc123"}}}}"#;
        let action = decode_card_action(payload.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (action.name.as_str(), action.value.as_str()),
            ("ap.y", "abc123")
        );
    }
}
