//! A plugin for testing the host runtime. `decoder.decode` reads its payload as a command:
//!
//! | payload | behaviour |
//! |---|---|
//! | `echo:<text>` | a message whose body is `<text>` |
//! | `group:<text>` | the same in a group chat, addressed to the bot only if `<text>` has `@bot` |
//! | `attach:<kind>:<ref>` | a message with one attachment of `<kind>` whose reference is `<ref>` |
//! | `action:<name>=<value>` | an action (button press) `<name>` with `<value>` |
//! | `ignore:<reason>` | ignored with `<reason>` |
//! | `loop` | spins forever (the host must cut it at its deadline) |
//! | `alloc:<mib>` | allocates and touches `<mib>` MiB (a memory bomb past the cap) |
//! | `panic:<text>` | panics with `<text>` |
//! | `http:<url>` | GETs `<url>` through host http; body = status and response text |
//! | `http-auth:<url>` | the same with `Authorization` and `Cookie` headers |
//! | `kv-set:<key>=<value>` / `kv-get:<key>` / `kv-del:<key>` | host kv; body = the outcome |
//! | `ctx:<key>` | body = the installation id, config `<key>` and whether secret `<key>` exists |
//! | `wall-clock` | body = milliseconds since the Unix epoch as guest std reads them (WASI) |
//! | `env:<name>` | body = the environment variable (or `<none>`), how many there are, and args |
//!
//! Any other payload is ignored. `transport.classify-frame` wraps a frame as one data frame
//! (a `bad-reading:…` frame comes with an event-reading that contradicts `decode`);
//! `verify-webhook` accepts any request body as one payload. The other exports answer trivially
//! but usefully:
//!
//! - `commands.parse`: `/name args` → `{name, args}` (name lower-cased, `@suffix` dropped).
//! - `outbound.deliver`: a reply or notice whose text starts with `fail:` is a retryable
//!   delivery error, `fatal:` a permanent one; otherwise the receipt's message id is
//!   `test-<idempotency key>` (none when the key is empty).
//! - `stream-begin` answers the handle `stream-<idempotency key>`, `stream-end` a receipt with
//!   the handle; a text starting with `fail:` fails them as in `deliver`.
//! - `fetch-attachment` answers the reference itself as `text/plain` bytes.
//! - `lifecycle.on-install` stores `webhook_url` (when not empty); it refuses the installation
//!   when its config has `refuse_install`. `on-uninstall` succeeds.
//! - Long-poll is not served (the manifest declares webhook and websocket): those exports keep
//!   the SDK's "not supported" defaults, as do `routing-key`, `answer-action`, `enrich` and
//!   `on-uninstall`.

use switchboard_plugin_sdk::types::{
    Attachment, Chat, ChatKind, InboundAction, InboundMessage, Mention, Participant, PluginError,
    SessionTarget,
};
use switchboard_plugin_sdk::{Channel, commands, decoder, outbound, transport};
use switchboard_plugin_sdk::{http, installation, kv};

switchboard_plugin_sdk::manifest!("../manifest.toml");

struct Testing;

fn chat(kind: ChatKind) -> Chat {
    Chat {
        id: "test-chat".into(),
        kind,
        title: None,
    }
}

fn participant() -> Participant {
    Participant {
        id: "test-user".into(),
        display_name: None,
        is_bot: false,
        alt_ids: Vec::new(),
    }
}

fn inbound(body: String) -> InboundMessage {
    InboundMessage {
        event_id: String::new(),
        message_id: String::new(),
        chat: chat(ChatKind::Direct),
        sender: participant(),
        message_type: "text".into(),
        command_body: body.clone(),
        body,
        addressed_to_bot: true,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: 0,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn message(body: String) -> decoder::Decoded {
    decoder::Decoded::Message(inbound(body))
}

fn group_message(text: &str) -> decoder::Decoded {
    let addressed = text.contains("@bot");
    let mut message = inbound(text.to_string());
    message.chat = chat(ChatKind::Group);
    message.addressed_to_bot = addressed;
    if addressed {
        message.mentions.push(Mention {
            key: "@bot".into(),
            name: "bot".into(),
            id: None,
            is_bot: true,
        });
    }
    decoder::Decoded::Message(message)
}

fn attachment_message(arg: &str) -> decoder::Decoded {
    let (kind, reference) = arg.split_once(':').unwrap_or((arg, ""));
    let mut message = inbound(String::new());
    message.message_id = format!("att-{reference}");
    message.message_type = kind.to_string();
    message.attachments.push(Attachment {
        kind: kind.to_string(),
        name: Some(format!("{reference}.bin")),
        mime: Some("application/octet-stream".into()),
        size: Some(reference.len() as u64),
        ref_: reference.to_string(),
    });
    decoder::Decoded::Message(message)
}

fn action(arg: &str) -> decoder::Decoded {
    let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
    decoder::Decoded::Action(InboundAction {
        event_id: String::new(),
        action_id: format!("action-{name}-{value}"),
        chat: chat(ChatKind::Direct),
        sender: participant(),
        message_id: None,
        thread_id: None,
        name: name.to_string(),
        value: value.to_string(),
        answer_deadline_ms: None,
        update_token: None,
        create_time_ms: 0,
    })
}

fn spin_forever() -> ! {
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::hint::black_box(x);
    }
}

fn allocate(mib: usize) -> usize {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        blocks.push(vec![1u8; 1 << 20]);
    }
    std::hint::black_box(&blocks);
    blocks.len()
}

/// `decode` and what the manifest declares; the rest are the SDK's defaults (the panic hook is
/// installed by the SDK before every call).
impl Channel for Testing {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        let text = String::from_utf8(payload)
            .map_err(|_| PluginError::InvalidInput("payload is not UTF-8".into()))?;
        let (command, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let body = match command {
            "echo" => arg.to_string(),
            "group" => return Ok(group_message(arg)),
            "attach" => return Ok(attachment_message(arg)),
            "action" => return Ok(action(arg)),
            "ignore" => return Ok(decoder::Decoded::Ignored(arg.to_string())),
            "loop" => spin_forever(),
            "alloc" => format!("allocated {} MiB", allocate(arg.parse().unwrap_or(1))),
            "panic" => panic!("{arg}"),
            "http" | "http-auth" => {
                let mut headers = vec![("x-test".to_string(), "1".to_string())];
                if command == "http-auth" {
                    headers.push(("Authorization".into(), "Bearer plugin-token".into()));
                    headers.push(("Cookie".into(), "session=plugin-cookie".into()));
                }
                let request = http::Request {
                    method: "GET".into(),
                    url: arg.to_string(),
                    headers,
                    body: Vec::new(),
                    timeout_ms: None,
                };
                match http::send(&request) {
                    Ok(response) => format!(
                        "{} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ),
                    Err(error) => return Err(PluginError::Retryable(format!("{error:?}"))),
                }
            }
            "kv-set" => {
                let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
                match kv::set(key, value.as_bytes(), None) {
                    Ok(()) => "ok".into(),
                    Err(error) => format!("error {error:?}"),
                }
            }
            "kv-get" => match kv::get(arg) {
                Ok(Some(value)) => String::from_utf8_lossy(&value).into_owned(),
                Ok(None) => "<none>".into(),
                Err(error) => format!("error {error:?}"),
            },
            "kv-del" => match kv::delete(arg) {
                Ok(existed) => existed.to_string(),
                Err(error) => format!("error {error:?}"),
            },
            "ctx" => format!(
                "{}|{}|{}",
                installation::id(),
                installation::config(arg).unwrap_or_default(),
                installation::secret(arg).is_some()
            ),
            "wall-clock" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
            "env" => format!(
                "{}|vars={}|args={}",
                std::env::var(arg).unwrap_or_else(|_| "<none>".into()),
                std::env::vars_os().count(),
                std::env::args_os().count()
            ),
            _ => {
                return Ok(decoder::Decoded::Ignored(format!(
                    "unknown test command {command:?}"
                )));
            }
        };
        Ok(message(body))
    }

    fn classify_frame(frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        // `bad-reading:…` frames come with an event-reading that contradicts `decode` (which
        // ignores the unknown command): what `switchboard replay` must flag.
        let event = frame
            .starts_with(b"bad-reading:")
            .then(|| transport::EventReading {
                routing_key: None,
                decoded: Ok(message("not what decode says".into())),
                command: None,
            });
        Ok(transport::FrameClass::Data(transport::DataFrame {
            kind: "event".into(),
            fragment: transport::Fragment {
                message_id: "m".into(),
                seq: 0,
                total: 1,
            },
            payload: frame,
            trace_id: None,
            event,
        }))
    }
    fn build_ack(
        frame: Vec<u8>,
        _status: transport::AckStatus,
        _ms: u32,
        _response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        Ok(frame)
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(
            "the testing plugin has no connection".into(),
        ))
    }
    fn classify_handshake_failure(
        status: u16,
        _headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        transport::ConnectError::Retryable(format!("status {status}"))
    }
    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        Ok(transport::WebhookVerdict::Events(
            transport::WebhookEvents {
                payloads: vec![request.body],
                readings: Vec::new(),
                signed_at_ms: None,
                response: transport::WebhookResponse {
                    status: 200,
                    content_type: "application/json".into(),
                    body: b"{}".to_vec(),
                },
            },
        ))
    }
    fn parse_command(text: String) -> Option<commands::Command> {
        let rest = text.trim().strip_prefix('/')?;
        let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let name = head.split('@').next().unwrap_or("").to_lowercase();
        (!name.is_empty()).then(|| commands::Command {
            name,
            args: args.trim().to_string(),
        })
    }
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        let text = match &delivery.content {
            outbound::Content::Reply(text) => text,
            outbound::Content::Notice(notice) => &notice.text,
        };
        check_text(text)?;
        let key = delivery.idempotency_key;
        Ok(outbound::Receipt {
            message_id: (!key.is_empty()).then(|| format!("test-{key}")),
        })
    }
    fn set_typing(
        _target: SessionTarget,
        _change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        Ok(None)
    }
    fn stream_begin(
        _target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        Ok(format!("stream-{idempotency_key}"))
    }
    fn stream_update(
        _target: SessionTarget,
        _handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        check_text(&text)
    }
    fn stream_end(
        _target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        check_text(&text)?;
        Ok(outbound::Receipt {
            message_id: Some(handle),
        })
    }
    fn update_notice(
        _target: SessionTarget,
        _message_id: Option<String>,
        _update_token: Option<String>,
        _notice: switchboard_plugin_sdk::types::Notice,
    ) -> Result<(), outbound::DeliveryError> {
        Err(outbound::DeliveryError {
            code: None,
            message: "this test plugin updates no messages".into(),
            retryable: false,
            retry_after_ms: None,
        })
    }
    fn fetch_attachment(
        _message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        Ok(outbound::AttachmentContent {
            mime: Some("text/plain".into()),
            body: reference.into_bytes(),
        })
    }
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        if installation::config("refuse_install").is_some() {
            return Err(PluginError::Unauthorized(
                "the installation asks to be refused (`refuse_install`)".into(),
            ));
        }
        Ok(if webhook_url.is_empty() {
            Vec::new()
        } else {
            vec![("webhook_url".into(), webhook_url)]
        })
    }
}

/// `fail:…` is a retryable delivery error and `fatal:…` a permanent one.
fn check_text(text: &str) -> Result<(), outbound::DeliveryError> {
    let retryable = if text.starts_with("fail:") {
        true
    } else if text.starts_with("fatal:") {
        false
    } else {
        return Ok(());
    };
    Err(outbound::DeliveryError {
        code: Some(if retryable { 500 } else { 400 }),
        message: text.to_string(),
        retryable,
        retry_after_ms: None,
    })
}

switchboard_plugin_sdk::export_plugin!(Testing);
