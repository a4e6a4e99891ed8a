//! The `{{name}}` channel plugin: a minimal webhook channel to grow into your own.
//!
//! Inbound: your system POSTs one signed JSON message per request to
//! `/hooks/{{name}}/{installation}`:
//!
//! ```text
//! X-Switchboard-Timestamp: <unix seconds>
//! X-Switchboard-Signature: sha256=<hex HMAC-SHA256(signing_secret, timestamp + "." + body)>
//!
//! {"message_id": "m-1", "chat_id": "chat-1", "user_id": "user-1", "user_name": "Ada"?,
//!  "text": "hello", "sent_at_ms": 1767225600000?}
//! ```
//!
//! Outbound: a reply or notice is POSTed as `{"chat_id", "text", "idempotency_key"}` to the
//! installation's `callback_url`, signed the same way.
//!
//! Only `decode` and the exports the manifest declares are written here; every other export keeps
//! the SDK's default answer ("not supported"). Every call is stateless: keep nothing in statics.

use serde::{Deserialize, Serialize};
use switchboard_plugin_sdk::markdown::{PlainText, Renderer};
use switchboard_plugin_sdk::types::{Chat, ChatKind, InboundMessage, Participant, PluginError};
use switchboard_plugin_sdk::{Channel, Decoded, commands, json, outbound, signature, transport};

switchboard_plugin_sdk::manifest!("../manifest.toml");

/// Header carrying the signed timestamp (Unix seconds), compared case-insensitively.
pub const TIMESTAMP_HEADER: &str = "x-switchboard-timestamp";
/// Header carrying `sha256=<hex signature>`.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
const SIGNATURE_PREFIX: &str = "sha256=";

/// One inbound message as your system sends it.
#[derive(Debug, Deserialize)]
pub struct WireMessage {
    /// Your id of the message (the host deduplicates on it).
    pub message_id: String,
    /// The conversation.
    pub chat_id: String,
    /// The sender.
    pub user_id: String,
    /// The sender's display name.
    #[serde(default)]
    pub user_name: Option<String>,
    /// What the user wrote.
    pub text: String,
    /// When it was sent (milliseconds since the Unix epoch); default: now.
    #[serde(default)]
    pub sent_at_ms: Option<i64>,
}

/// The body of a callback.
#[derive(Debug, Serialize)]
struct Callback<'a> {
    chat_id: &'a str,
    text: &'a str,
    idempotency_key: &'a str,
}

/// The wire message → the host's neutral record; `invalid-input` naming the problem otherwise.
pub fn read_message(payload: &[u8]) -> Result<InboundMessage, PluginError> {
    let wire: WireMessage = json::parse(payload, "the message")?;
    Ok(InboundMessage {
        event_id: wire.message_id.clone(),
        message_id: wire.message_id,
        chat: Chat {
            id: wire.chat_id,
            kind: ChatKind::Direct,
            title: None,
        },
        sender: Participant {
            id: wire.user_id,
            display_name: wire.user_name,
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: "text".into(),
        body: wire.text.clone(),
        command_body: wire.text,
        // A direct chat always addresses the bot.
        addressed_to_bot: true,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: wire
            .sent_at_ms
            .unwrap_or_else(switchboard_plugin_sdk::now_ms),
        mentions: Vec::new(),
        attachments: Vec::new(),
    })
}

/// `/name args` → `{name, args}` (name lower-cased, `@suffix` dropped); none for plain text.
pub fn parse_command(text: &str) -> Option<commands::Command> {
    let rest = text.trim().strip_prefix('/')?;
    let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or("").to_lowercase();
    (!name.is_empty()).then(|| commands::Command {
        name,
        args: args.trim().to_string(),
    })
}

/// The value of header `name` (lower-case), if present.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The `X-Switchboard-Signature` value of `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let parts: [&[u8]; 3] = [timestamp.as_bytes(), b".", body];
    format!(
        "{SIGNATURE_PREFIX}{}",
        signature::hmac_sha256_hex(secret.as_bytes(), &parts)
    )
}

fn undelivered(message: String, retryable: bool, code: Option<i64>) -> outbound::DeliveryError {
    outbound::DeliveryError {
        code,
        message,
        retryable,
        retry_after_ms: None,
    }
}

/// The plugin: one type, no state.
pub struct Plugin;

impl Channel for Plugin {
    fn decode(payload: Vec<u8>) -> Result<Decoded, PluginError> {
        Ok(Decoded::Message(read_message(&payload)?))
    }

    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        use transport::WebhookRejection::{BadSignature, BadToken, Malformed};
        // Never accept a request that cannot be authenticated.
        let secret = switchboard_plugin_sdk::installation::secret("signing_secret")
            .ok_or_else(|| BadToken("the installation has no signing_secret".into()))?;
        let (Some(timestamp), Some(presented)) = (
            header(&request.headers, TIMESTAMP_HEADER),
            header(&request.headers, SIGNATURE_HEADER),
        ) else {
            return Err(BadSignature(
                "X-Switchboard-Timestamp and X-Switchboard-Signature are required".into(),
            ));
        };
        let signed_at_s: i64 = timestamp
            .parse()
            .map_err(|_| BadSignature("X-Switchboard-Timestamp must be Unix seconds".into()))?;
        let parts: [&[u8]; 3] = [timestamp.as_bytes(), b".", &request.body];
        let valid = presented
            .strip_prefix(SIGNATURE_PREFIX)
            .is_some_and(|hex| signature::verify_hmac_sha256_hex(secret.as_bytes(), &parts, hex));
        if !valid {
            return Err(BadSignature("the signature does not match".into()));
        }
        // Authenticated from here on: a body that is not a message is the sender's bug (400).
        let message = read_message(&request.body).map_err(|e| match e {
            PluginError::InvalidInput(why) => Malformed(why),
            other => Malformed(format!("{other:?}")),
        })?;
        let reading = transport::EventReading {
            routing_key: None,
            command: parse_command(&message.command_body),
            decoded: Ok(Decoded::Message(message)),
        };
        Ok(transport::WebhookVerdict::Events(
            transport::WebhookEvents {
                payloads: vec![request.body],
                readings: vec![reading],
                // The host refuses a timestamp outside its replay window.
                signed_at_ms: Some(signed_at_s.saturating_mul(1000)),
                response: transport::WebhookResponse {
                    status: 200,
                    content_type: "application/json".into(),
                    body: br#"{"ok":true}"#.to_vec(),
                },
            },
        ))
    }

    fn parse_command(text: String) -> Option<commands::Command> {
        parse_command(&text)
    }

    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        use switchboard_plugin_sdk::{http, installation};
        let url = installation::config("callback_url").ok_or_else(|| {
            undelivered("the installation has no callback_url".into(), false, None)
        })?;
        let secret = installation::secret("signing_secret").ok_or_else(|| {
            undelivered("the installation has no signing_secret".into(), false, None)
        })?;
        let text = match &delivery.content {
            // Agents answer in markdown; this channel shows plain text.
            outbound::Content::Reply(markdown) => PlainText.render(markdown),
            outbound::Content::Notice(notice) => notice.text.clone(),
        };
        let body = json::to_vec(&Callback {
            chat_id: &delivery.target.chat_id,
            text: &text,
            idempotency_key: &delivery.idempotency_key,
        });
        let timestamp = (switchboard_plugin_sdk::now_ms() / 1000).to_string();
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (TIMESTAMP_HEADER.to_string(), timestamp.clone()),
            (
                SIGNATURE_HEADER.to_string(),
                sign(&secret, &timestamp, &body),
            ),
        ];
        if !delivery.idempotency_key.is_empty() {
            headers.push(("idempotency-key".into(), delivery.idempotency_key.clone()));
        }
        let request = http::Request {
            method: "POST".into(),
            url,
            headers,
            body,
            timeout_ms: Some(5_000),
        };
        let response = http::send(&request).map_err(|e| {
            let retryable = matches!(e, http::Error::Timeout | http::Error::Transport(_));
            undelivered(format!("the callback failed: {e:?}"), retryable, None)
        })?;
        match response.status {
            200..=299 => Ok(outbound::Receipt { message_id: None }),
            status => Err(undelivered(
                format!("the callback answered HTTP {status}"),
                status == 429 || status >= 500,
                Some(i64::from(status)),
            )),
        }
    }

    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        use switchboard_plugin_sdk::installation;
        if installation::secret("signing_secret").is_none() {
            return Err(PluginError::InvalidInput(
                "a {{name}} installation needs the signing_secret secret".into(),
            ));
        }
        switchboard_plugin_sdk::log_write(
            switchboard_plugin_sdk::log::Level::Info,
            "{{name}} installation ready",
            &[("webhook_url", &webhook_url)],
        );
        Ok(Vec::new())
    }
}

switchboard_plugin_sdk::export_plugin!(Plugin);
