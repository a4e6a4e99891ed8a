//! A plugin that tries to leave its sandbox through plain Rust std: `fs:<path>` reads a file,
//! `tcp:<addr>` opens a TCP connection, `udp:<addr>` sends a datagram. Using them makes the
//! component import `wasi:filesystem` (which the host links with no directory, so no file is
//! reachable) and `wasi:sockets`, which the host does not link: it must refuse to load the
//! component and name the sockets interfaces.
//!
//! Everything else about it is a well-formed plugin of contract 0.2 (its own copy of the WIT in
//! `wit/`, so it does not go through the SDK): the WASI imports are the one reason to refuse it.
//! It imports none of the host capabilities and its manifest requests none.

wit_bindgen::generate!({ path: "wit", world: "channel-plugin" });

use std::io::Write;

use exports::switchboard::channel::{commands, decoder, enricher, lifecycle, outbound, transport};
use switchboard::channel::types::{
    Chat, ChatKind, InboundMessage, Participant, PluginError, SessionTarget,
};

struct Escape;

/// What every export but `decode` answers.
const NOTHING: &str = "the escape plugin only decodes";

fn message(body: String) -> decoder::Decoded {
    decoder::Decoded::Message(InboundMessage {
        event_id: String::new(),
        message_id: String::new(),
        chat: Chat {
            id: "escape-chat".into(),
            kind: ChatKind::Direct,
            title: None,
        },
        sender: Participant {
            id: "escape-user".into(),
            display_name: None,
            is_bot: false,
            alt_ids: Vec::new(),
        },
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
    })
}

impl decoder::Guest for Escape {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        let text = String::from_utf8_lossy(&payload).into_owned();
        let (command, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let outcome = match command {
            "fs" => std::fs::read_to_string(arg).map(|contents| contents.len()),
            "tcp" => std::net::TcpStream::connect(arg).and_then(|mut s| s.write(b"hello")),
            "udp" => std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"hi", arg)),
            _ => Ok(0),
        };
        Ok(message(match outcome {
            Ok(n) => format!("escaped: {n} bytes"),
            Err(e) => format!("refused: {e}"),
        }))
    }
}

impl transport::Guest for Escape {
    fn classify_frame(_frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        Err(PluginError::Fatal(NOTHING.into()))
    }
    fn build_ack(
        _frame: Vec<u8>,
        _status: transport::AckStatus,
        _processing_ms: u32,
        _response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::Fatal(NOTHING.into()))
    }
    fn answer_action(
        _payload: Vec<u8>,
        _answer: switchboard::channel::types::ActionAnswer,
    ) -> Option<Vec<u8>> {
        None
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NOTHING.into()))
    }
    fn classify_handshake_failure(
        _status: u16,
        _headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        transport::ConnectError::Terminal(NOTHING.into())
    }
    fn verify_webhook(
        _request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        Err(transport::WebhookRejection::Malformed(NOTHING.into()))
    }
    fn routing_key(_payload: Vec<u8>) -> Option<String> {
        None
    }
    fn plan_poll(_cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NOTHING.into()))
    }
    fn parse_poll(
        _cursor: Option<String>,
        _response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NOTHING.into()))
    }
}

impl enricher::Guest for Escape {
    fn enrich(message: InboundMessage, _budget: enricher::Budget) -> enricher::Enrichment {
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
        }
    }
}

impl commands::Guest for Escape {
    fn parse(_text: String) -> Option<commands::Command> {
        None
    }
}

fn undeliverable() -> outbound::DeliveryError {
    outbound::DeliveryError {
        code: None,
        message: NOTHING.into(),
        retryable: false,
        retry_after_ms: None,
    }
}

impl outbound::Guest for Escape {
    fn deliver(
        _delivery: outbound::Delivery,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        Err(undeliverable())
    }
    fn set_typing(
        _target: SessionTarget,
        _change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        Err(undeliverable())
    }
    fn stream_begin(
        _target: SessionTarget,
        _idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        Err(undeliverable())
    }
    fn stream_update(
        _target: SessionTarget,
        _handle: String,
        _text: String,
    ) -> Result<(), outbound::DeliveryError> {
        Err(undeliverable())
    }
    fn stream_end(
        _target: SessionTarget,
        _handle: String,
        _text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        Err(undeliverable())
    }
    fn update_notice(
        _target: switchboard::channel::types::SessionTarget,
        _message_id: Option<String>,
        _update_token: Option<String>,
        _notice: switchboard::channel::types::Notice,
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
        _reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        Err(PluginError::Fatal(NOTHING.into()))
    }
}

impl lifecycle::Guest for Escape {
    fn on_install(_webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        Ok(Vec::new())
    }
    fn on_uninstall() -> Result<(), PluginError> {
        Ok(())
    }
}

export!(Escape);
