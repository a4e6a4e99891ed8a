//! Builds `im.message.receive_v1` events the way the Lark platform sends them (v2 envelopes), for
//! `demo` to push through the fake Lark's long connection.

use serde_json::{Value, json};

/// One mention inside a message.
pub struct Mention<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub open_id: &'a str,
}

/// The parts of an `im.message.receive_v1` event the demo varies.
pub struct Event<'a> {
    pub app_id: &'a str,
    pub token: &'a str,
    pub message_id: &'a str,
    pub chat_id: &'a str,
    pub group: bool,
    pub sender_open_id: &'a str,
    pub message_type: &'a str,
    pub content: Value,
    pub mentions: Vec<Mention<'a>>,
    pub parent_id: Option<&'a str>,
    pub create_time_ms: i64,
}

impl Event<'_> {
    /// The v2 envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mentions: Vec<Value> = self
            .mentions
            .iter()
            .map(|m| json!({"key": m.key, "id": {"open_id": m.open_id}, "name": m.name, "tenant_key": "demo-tenant"}))
            .collect();
        let envelope = json!({
            "schema": "2.0",
            "header": {
                "event_id": format!("ev_{}", self.message_id),
                "token": self.token,
                "create_time": self.create_time_ms.to_string(),
                "event_type": "im.message.receive_v1",
                "tenant_key": "demo-tenant",
                "app_id": self.app_id,
            },
            "event": {
                "sender": {"sender_id": {"open_id": self.sender_open_id}, "sender_type": "user", "tenant_key": "demo-tenant"},
                "message": {
                    "message_id": self.message_id,
                    "parent_id": self.parent_id,
                    "root_id": self.parent_id,
                    "create_time": self.create_time_ms.to_string(),
                    "chat_id": self.chat_id,
                    "chat_type": if self.group { "group" } else { "p2p" },
                    "message_type": self.message_type,
                    "content": self.content.to_string(),
                    "mentions": mentions,
                },
            },
        });
        serde_json::to_vec(&envelope).expect("JSON")
    }
}
