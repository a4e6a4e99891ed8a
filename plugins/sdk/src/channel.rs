//! [`Channel`]: the exports of the `switchboard:channel` world as one trait with defaults.
//!
//! Every export exists in every component, but the host calls only what the manifest declares
//! (`transports`, `[features]`). A plugin implements `decode` and what it declares; the rest keep
//! the defaults here, which answer "not supported" in the form the host handles gracefully and
//! names in its logs: a `fatal` plugin error, a `terminal` connect error, a non-retryable delivery
//! error, a `bad-token` webhook rejection (a request that cannot be authenticated is never
//! accepted), no routing key, no command, the body unchanged.
//!
//! The blanket implementations below turn a [`Channel`] into the six generated `Guest` traits, so
//! [`crate::export_plugin!`] can export it. Each forwarded call first installs the panic hook
//! ([`crate::install_panic_hook`]), so a panic's message reaches the host's log.

use crate::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
use crate::types::{ActionAnswer, InboundMessage, Notice, PluginError, SessionTarget};

/// The words of every default answer: what is not supported, and why the host should not have
/// asked (the manifest does not declare it).
#[must_use]
pub fn not_supported(what: &str) -> String {
    format!("not supported: this plugin does not serve {what} (its manifest does not declare it)")
}

fn not_delivered(what: &str) -> outbound::DeliveryError {
    outbound::DeliveryError {
        code: None,
        message: not_supported(what),
        retryable: false,
        retry_after_ms: None,
    }
}

/// A channel plugin: `decode` plus whichever exports its manifest declares.
///
/// Every method is an associated function (the host may recycle the instance between any two
/// calls, so there is no `self` to keep state in: state that outlives a call lives in the host's
/// `kv`). The documentation of each export is in `wit/channel.wit`.
pub trait Channel {
    /// `decoder.decode`: one complete event payload → a message, an action or `ignored`.
    /// Malformed input is [`PluginError::InvalidInput`] ([`crate::json::parse`] answers it).
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError>;

    /// `transport.verify-webhook` (transport `webhook`). Default: rejected as `bad-token`.
    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        let _ = request;
        Err(transport::WebhookRejection::BadToken(not_supported(
            "the webhook transport",
        )))
    }

    /// `transport.routing-key`: the routing key a payload carries. Default: none.
    fn routing_key(payload: Vec<u8>) -> Option<String> {
        let _ = payload;
        None
    }

    /// `transport.classify-frame` (transport `websocket`). Default: a `fatal` error.
    fn classify_frame(frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        let _ = frame;
        Err(PluginError::Fatal(not_supported("WebSocket frames")))
    }

    /// `transport.build-ack` (transport `websocket`). Default: a `fatal` error.
    fn build_ack(
        frame: Vec<u8>,
        status: transport::AckStatus,
        processing_ms: u32,
        response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        let _ = (frame, status, processing_ms, response);
        Err(PluginError::Fatal(not_supported(
            "WebSocket acknowledgements",
        )))
    }

    /// `transport.answer-action`: the channel's answer to a button press. Default: none (the
    /// transport's default answer goes out).
    fn answer_action(payload: Vec<u8>, answer: ActionAnswer) -> Option<Vec<u8>> {
        let _ = (payload, answer);
        None
    }

    /// `transport.plan-connection` (transport `websocket`). Default: a `terminal` error.
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(not_supported(
            "the websocket transport",
        )))
    }

    /// `transport.classify-handshake-failure` (transport `websocket`). Default: `terminal`.
    fn classify_handshake_failure(
        status: u16,
        headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        let _ = (status, headers);
        transport::ConnectError::Terminal(not_supported("the websocket transport"))
    }

    /// `transport.plan-poll` (transport `long-poll`). Default: a `terminal` error.
    fn plan_poll(cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        let _ = cursor;
        Err(transport::ConnectError::Terminal(not_supported(
            "the long-poll transport",
        )))
    }

    /// `transport.parse-poll` (transport `long-poll`). Default: a `terminal` error.
    fn parse_poll(
        cursor: Option<String>,
        response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        let _ = (cursor, response);
        Err(transport::ConnectError::Terminal(not_supported(
            "the long-poll transport",
        )))
    }

    /// `enricher.enrich`. Default: the body unchanged, no notes.
    fn enrich(message: InboundMessage, budget: enricher::Budget) -> enricher::Enrichment {
        let _ = budget;
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
            attachments: Vec::new(),
        }
    }

    /// `commands.parse`: a command in the user's own text. Default: none (plain text).
    fn parse_command(text: String) -> Option<commands::Command> {
        let _ = text;
        None
    }

    /// `outbound.deliver`. Default: a non-retryable delivery error.
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        let _ = delivery;
        Err(not_delivered("deliveries"))
    }

    /// `outbound.set-typing` (feature `typing`). Default: a non-retryable delivery error.
    fn set_typing(
        target: SessionTarget,
        change: outbound::TypingChange,
        handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        let _ = (target, change, handle);
        Err(not_delivered("typing indicators"))
    }

    /// `outbound.stream-begin` (feature `streaming`). Default: a non-retryable delivery error.
    fn stream_begin(
        target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        let _ = (target, idempotency_key);
        Err(not_delivered("streamed replies"))
    }

    /// `outbound.stream-update` (feature `streaming`). Default: a non-retryable delivery error.
    fn stream_update(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        let _ = (target, handle, text);
        Err(not_delivered("streamed replies"))
    }

    /// `outbound.stream-end` (feature `streaming`). Default: a non-retryable delivery error.
    fn stream_end(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        let _ = (target, handle, text);
        Err(not_delivered("streamed replies"))
    }

    /// `outbound.update-notice`. Default: a non-retryable delivery error (no message updates).
    fn update_notice(
        target: SessionTarget,
        message_id: Option<String>,
        update_token: Option<String>,
        notice: Notice,
    ) -> Result<(), outbound::DeliveryError> {
        let _ = (target, message_id, update_token, notice);
        Err(not_delivered("message updates"))
    }

    /// `outbound.fetch-attachment` (feature `attachments`). Default: a `fatal` error.
    fn fetch_attachment(
        message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        let _ = (message_id, reference);
        Err(PluginError::Fatal(not_supported("attachments")))
    }

    /// `lifecycle.on-install`: check credentials, learn the bot's identity, register the
    /// webhook. Default: accepted, nothing learned.
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        let _ = webhook_url;
        Ok(Vec::new())
    }

    /// `lifecycle.on-uninstall`: undo what `on-install` registered. Default: nothing to undo.
    fn on_uninstall() -> Result<(), PluginError> {
        Ok(())
    }
}

impl<T: Channel> decoder::Guest for T {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        crate::install_panic_hook();
        <T as Channel>::decode(payload)
    }
}

impl<T: Channel> transport::Guest for T {
    fn classify_frame(frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        crate::install_panic_hook();
        <T as Channel>::classify_frame(frame)
    }
    fn build_ack(
        frame: Vec<u8>,
        status: transport::AckStatus,
        processing_ms: u32,
        response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        crate::install_panic_hook();
        <T as Channel>::build_ack(frame, status, processing_ms, response)
    }
    fn answer_action(payload: Vec<u8>, answer: ActionAnswer) -> Option<Vec<u8>> {
        crate::install_panic_hook();
        <T as Channel>::answer_action(payload, answer)
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        crate::install_panic_hook();
        <T as Channel>::plan_connection()
    }
    fn classify_handshake_failure(
        status: u16,
        headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        crate::install_panic_hook();
        <T as Channel>::classify_handshake_failure(status, headers)
    }
    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        crate::install_panic_hook();
        <T as Channel>::verify_webhook(request)
    }
    fn routing_key(payload: Vec<u8>) -> Option<String> {
        crate::install_panic_hook();
        <T as Channel>::routing_key(payload)
    }
    fn plan_poll(cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        crate::install_panic_hook();
        <T as Channel>::plan_poll(cursor)
    }
    fn parse_poll(
        cursor: Option<String>,
        response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        crate::install_panic_hook();
        <T as Channel>::parse_poll(cursor, response)
    }
}

impl<T: Channel> enricher::Guest for T {
    fn enrich(message: InboundMessage, budget: enricher::Budget) -> enricher::Enrichment {
        crate::install_panic_hook();
        <T as Channel>::enrich(message, budget)
    }
}

impl<T: Channel> commands::Guest for T {
    fn parse(text: String) -> Option<commands::Command> {
        crate::install_panic_hook();
        <T as Channel>::parse_command(text)
    }
}

impl<T: Channel> outbound::Guest for T {
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::deliver(delivery)
    }
    fn set_typing(
        target: SessionTarget,
        change: outbound::TypingChange,
        handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::set_typing(target, change, handle)
    }
    fn stream_begin(
        target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::stream_begin(target, idempotency_key)
    }
    fn stream_update(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::stream_update(target, handle, text)
    }
    fn stream_end(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::stream_end(target, handle, text)
    }
    fn update_notice(
        target: SessionTarget,
        message_id: Option<String>,
        update_token: Option<String>,
        notice: Notice,
    ) -> Result<(), outbound::DeliveryError> {
        crate::install_panic_hook();
        <T as Channel>::update_notice(target, message_id, update_token, notice)
    }
    fn fetch_attachment(
        message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        crate::install_panic_hook();
        <T as Channel>::fetch_attachment(message_id, reference)
    }
}

impl<T: Channel> lifecycle::Guest for T {
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        crate::install_panic_hook();
        <T as Channel>::on_install(webhook_url)
    }
    fn on_uninstall() -> Result<(), PluginError> {
        crate::install_panic_hook();
        <T as Channel>::on_uninstall()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel that implements `decode` only: every other export answers "not supported".
    struct DecodeOnly;
    impl Channel for DecodeOnly {
        fn decode(_payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
            Ok(decoder::Decoded::Ignored("test".into()))
        }
    }

    fn target() -> SessionTarget {
        SessionTarget {
            session_id: "s".into(),
            chat_id: "c".into(),
            chat_kind: crate::types::ChatKind::Direct,
            thread_id: None,
            reply_to: None,
            in_thread: false,
        }
    }

    #[test]
    fn unserved_exports_answer_not_supported_clearly() {
        let request = transport::WebhookRequest {
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            headers: Vec::new(),
            body: b"{}".to_vec(),
        };
        match <DecodeOnly as transport::Guest>::verify_webhook(request) {
            Err(transport::WebhookRejection::BadToken(why)) => {
                assert!(why.starts_with("not supported:"), "{why}");
                assert!(why.contains("webhook"), "{why}");
            }
            other => panic!("an unserved webhook must be rejected: {other:?}"),
        }
        match <DecodeOnly as transport::Guest>::classify_frame(b"x".to_vec()) {
            Err(PluginError::Fatal(why)) => assert!(why.contains("WebSocket"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            <DecodeOnly as transport::Guest>::plan_poll(None),
            Err(transport::ConnectError::Terminal(why)) if why.contains("long-poll")
        ));
        let delivery = outbound::Delivery {
            target: target(),
            content: outbound::Content::Reply("hi".into()),
            idempotency_key: "k".into(),
        };
        let error = <DecodeOnly as outbound::Guest>::deliver(delivery).unwrap_err();
        assert!(!error.retryable, "not supported is not worth a retry");
        assert!(error.message.starts_with("not supported:"));
        assert!(<DecodeOnly as commands::Guest>::parse("/new".into()).is_none());
        assert_eq!(
            <DecodeOnly as lifecycle::Guest>::on_install("https://x".into()).unwrap(),
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn decode_is_forwarded() {
        assert!(matches!(
            <DecodeOnly as decoder::Guest>::decode(Vec::new()),
            Ok(decoder::Decoded::Ignored(reason)) if reason == "test"
        ));
    }
}
