//! A plugin for testing the host runtime. `decoder.decode` reads its payload as a command:
//!
//! | payload | behaviour |
//! |---|---|
//! | `echo:<text>` | a message whose body is `<text>` |
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
//! The other exports answer trivially so the whole contract is exported.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, outbound, transport,
};
use switchboard_plugin_sdk::types::{ChatType, InboundMessage, PluginError, Sender, SessionTarget};
use switchboard_plugin_sdk::{http, installation, kv};

switchboard_plugin_sdk::manifest!("../manifest.toml");

struct Testing;

fn message(body: String) -> decoder::Decoded {
    decoder::Decoded::Message(InboundMessage {
        event_id: String::new(),
        message_id: String::new(),
        chat_id: "test-chat".into(),
        chat_type: ChatType::Direct,
        sender: Sender {
            open_id: "test-user".into(),
            union_id: None,
            user_id: None,
            kind: "user".into(),
        },
        message_type: "text".into(),
        command_body: body.clone(),
        body,
        addressed_to_bot: false,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: 0,
        mentions: Vec::new(),
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

impl decoder::Guest for Testing {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        switchboard_plugin_sdk::install_panic_hook();
        let text = String::from_utf8(payload)
            .map_err(|_| PluginError::InvalidInput("payload is not UTF-8".into()))?;
        let (command, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let body = match command {
            "echo" => arg.to_string(),
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
}

impl transport::Guest for Testing {
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
    fn routing_key(_payload: Vec<u8>) -> Option<String> {
        None
    }
}

impl enricher::Guest for Testing {
    fn enrich(message: InboundMessage, _budget: enricher::Budget) -> enricher::Enrichment {
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
        }
    }
}

impl commands::Guest for Testing {
    fn parse(text: String) -> Option<commands::Command> {
        (text.trim() == "/new").then_some(commands::Command::NewContext(None))
    }
}

impl outbound::Guest for Testing {
    fn flush(_batch: outbound::FlushBatch) -> Result<Vec<outbound::FlushAction>, PluginError> {
        Ok(vec![outbound::FlushAction::StartRun])
    }
    fn deliver(
        _delivery: outbound::Delivery,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        Ok(outbound::Receipt { message_id: None })
    }
    fn set_typing(
        _target: SessionTarget,
        _change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        Ok(None)
    }
}

switchboard_plugin_sdk::export_channel_plugin!(Testing);
