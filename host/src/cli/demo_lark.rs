//! The demo's stand-in for the Lark Open Platform REST API: the calls enrichment and reply
//! delivery make (tenant token, get message — a quoted parent or a merge_forward's children —,
//! list recent messages, batch users, send, reply, reactions), answering success and recording
//! what the bot sent, so `switchboard demo` can show replies without network access or
//! credentials.
//!
//! Not a test fake (that is `tests/`'s job, with switchable failures); it only listens on
//! loopback for the demo's lifetime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{Method, Uri};
use serde_json::{Value, json};

/// One message the bot sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `send` (chat level or DM) or `reply` (to a message, maybe in its thread).
    pub how: String,
    /// Whom: the chat or user id, or the message replied to.
    pub to: String,
    /// `text` or `interactive` (card).
    pub msg_type: String,
    /// The readable text (card markdown flattened).
    pub text: String,
}

#[derive(Default)]
struct Recorded {
    sent: Mutex<Vec<Sent>>,
    reactions: AtomicU64,
    ids: AtomicU64,
}

/// The running fake.
pub struct DemoLark {
    /// Its origin, `http://127.0.0.1:<port>`.
    pub origin: String,
    recorded: Arc<Recorded>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoLark {
    /// Starts listening on an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<DemoLark> {
        let recorded = Arc::new(Recorded::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(recorded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DemoLark {
            origin,
            recorded,
            task,
        })
    }

    /// What the bot sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.recorded.sent.lock().expect("sent log").clone()
    }

    /// Typing reactions added so far.
    pub fn reactions(&self) -> u64 {
        self.recorded.reactions.load(Ordering::SeqCst)
    }
}

impl Drop for DemoLark {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(recorded): State<Arc<Recorded>>,
    method: Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> Json<Value> {
    let path = uri.path();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path.ends_with("/tenant_access_token/internal") {
        return Json(
            json!({"code": 0, "msg": "ok", "tenant_access_token": "t-demo", "expire": 7200}),
        );
    }
    let n = recorded.ids.fetch_add(1, Ordering::SeqCst) + 1;
    if path.contains("/reactions") {
        if method == Method::POST {
            recorded.reactions.fetch_add(1, Ordering::SeqCst);
            return Json(
                json!({"code": 0, "msg": "success", "data": {"reaction_id": format!("r_demo_{n}")}}),
            );
        }
        return Json(json!({"code": 0, "msg": "success"}));
    }
    if method == Method::GET {
        return Json(read_answer(path));
    }
    if method == Method::POST && path.starts_with("/open-apis/im/v1/messages") {
        let (how, to) = match path.strip_suffix("/reply") {
            Some(prefix) => (
                "reply",
                prefix.rsplit('/').next().unwrap_or_default().to_string(),
            ),
            None => (
                "send",
                body["receive_id"].as_str().unwrap_or_default().to_string(),
            ),
        };
        let msg_type = body["msg_type"].as_str().unwrap_or_default().to_string();
        let content: Value = body["content"]
            .as_str()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or(Value::Null);
        recorded.sent.lock().expect("sent log").push(Sent {
            how: how.into(),
            to,
            msg_type,
            text: readable(&content),
        });
        return Json(
            json!({"code": 0, "msg": "success", "data": {"message_id": format!("om_demo_sent_{n}")}}),
        );
    }
    Json(json!({"code": 0, "msg": "success"}))
}

/// A text message item as `GET /open-apis/im/v1/messages/{id}` lists it.
fn text_item(id: &str, upper: Option<&str>, sender: &str, create_time: u64, text: &str) -> Value {
    let mut item = json!({
        "message_id": id, "msg_type": "text", "create_time": create_time.to_string(),
        "deleted": false, "chat_id": "oc_demo_source",
        "sender": {"id": sender, "id_type": "open_id", "sender_type": "user"},
        "body": {"content": json!({"text": text}).to_string()},
    });
    if let Some(upper) = upper {
        item["upper_message_id"] = json!(upper);
    }
    item
}

/// Answers to the enricher's reads: the quoted parent, a forwarded transcript, no recent
/// group history, and the demo users' names.
fn read_answer(path: &str) -> Value {
    if path == "/open-apis/contact/v3/users/batch" {
        let users = [
            ("ou_demo_alice", "Alice"),
            ("ou_demo_bob", "Bob"),
            ("ou_demo_carol", "Carol"),
            ("ou_demo_dave", "Dave"),
        ];
        let items: Vec<Value> = users
            .iter()
            .map(|(id, name)| json!({"open_id": id, "name": name}))
            .collect();
        return json!({"code": 0, "msg": "success", "data": {"items": items}});
    }
    let items = match path.strip_prefix("/open-apis/im/v1/messages/") {
        Some("om_demo_forward") => vec![
            json!({
                "message_id": "om_demo_forward", "msg_type": "merge_forward",
                "create_time": "1731300013000", "deleted": false, "chat_id": "oc_demo_p2p_alice",
                "sender": {"id": "ou_demo_alice", "id_type": "open_id", "sender_type": "user"},
                "body": {"content": "Merged and Forwarded Message"},
            }),
            text_item(
                "om_demo_fwd_1",
                Some("om_demo_forward"),
                "ou_demo_dave",
                1731299400000,
                "the canary is failing on eu-west",
            ),
            text_item(
                "om_demo_fwd_2",
                Some("om_demo_forward"),
                "ou_demo_carol",
                1731299460000,
                "rolling back now",
            ),
        ],
        Some(id) => vec![text_item(
            id,
            None,
            "ou_demo_alice",
            1731300000000,
            "Can you summarise yesterday's design review?",
        )],
        // Listing a chat's recent messages: nothing older than the message itself.
        None => Vec::new(),
    };
    json!({"code": 0, "msg": "success", "data": {"items": items, "has_more": false}})
}

/// The text of a `text` content or the markdown/plain texts of a card, joined.
fn readable(content: &Value) -> String {
    if let Some(text) = content["text"].as_str() {
        return text.to_string();
    }
    let mut texts = Vec::new();
    collect_texts(content, &mut texts);
    texts.join(" / ")
}

fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("content", Value::String(s)) => out.push(s.clone()),
                    _ => collect_texts(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_texts(v, out)),
        _ => {}
    }
}
