//! Typed entry points for the plugin exports. Each one is a thin wrapper over
//! [`Plugin::call`](super::plugin::Plugin), which owns deadlines, limits and recycling.
//!
//! Results are two-layered: the outer `Result` is the runtime's (trap, timeout, limit), the inner
//! one is what the plugin itself answered.

use std::sync::Arc;

use super::error::CallError;
use super::plugin::{Export, Plugin, WarmInstance};
use crate::bindings::{commands, decoder, enricher, http, outbound, transport, types};
use crate::domain::InstallationContext;

/// Calls `interface.function(args…)` on the warm instance lent for the call.
macro_rules! guest {
    ($interface:ident . $function:ident ( $($arg:expr),* )) => {
        async |warm: &mut WarmInstance| {
            warm.bindings.$interface().$function(&mut warm.store, $($arg),*).await
        }
    };
}

/// The outcome of a call: the runtime's error outside, the plugin's answer inside.
pub type CallResult<T, E> = Result<Result<T, E>, CallError>;

impl Plugin {
    /// `transport.classify-frame`: what an inbound WebSocket frame is.
    pub async fn classify_frame(
        &self,
        cx: &Arc<InstallationContext>,
        frame: &[u8],
    ) -> CallResult<transport::FrameClass, types::PluginError> {
        self.call(
            cx,
            Export::Transport,
            "transport.classify-frame",
            guest!(switchboard_channel_transport.call_classify_frame(frame)),
        )
        .await
    }

    /// `transport.build-ack`: the acknowledgement for a completed data message.
    pub async fn build_ack(
        &self,
        cx: &Arc<InstallationContext>,
        frame: &[u8],
        status: transport::AckStatus,
        processing_ms: u32,
        response: Option<&[u8]>,
    ) -> CallResult<Vec<u8>, types::PluginError> {
        self.call(
            cx,
            Export::Transport,
            "transport.build-ack",
            guest!(switchboard_channel_transport.call_build_ack(
                frame,
                status,
                processing_ms,
                response
            )),
        )
        .await
    }

    /// `transport.answer-action`: the channel's answer bytes for the action event `payload`
    /// carrying the host's `answer` (none: the transport's default answer).
    pub async fn answer_action(
        &self,
        cx: &Arc<InstallationContext>,
        payload: &[u8],
        answer: &types::ActionAnswer,
    ) -> Result<Option<Vec<u8>>, CallError> {
        self.call(
            cx,
            Export::Transport,
            "transport.answer-action",
            guest!(switchboard_channel_transport.call_answer_action(payload, answer)),
        )
        .await
    }

    /// `transport.plan-connection`: endpoint discovery for a new connection.
    pub async fn connect_plan(
        &self,
        cx: &Arc<InstallationContext>,
    ) -> CallResult<transport::ConnectPlan, transport::ConnectError> {
        self.call(
            cx,
            Export::Transport,
            "transport.plan-connection",
            guest!(switchboard_channel_transport.call_plan_connection()),
        )
        .await
    }

    /// `transport.classify-handshake-failure`: retry or give up after a refused upgrade.
    pub async fn classify_handshake_failure(
        &self,
        cx: &Arc<InstallationContext>,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<transport::ConnectError, CallError> {
        self.call(
            cx,
            Export::Transport,
            "transport.classify-handshake-failure",
            guest!(switchboard_channel_transport.call_classify_handshake_failure(status, headers)),
        )
        .await
    }

    /// `transport.verify-webhook`: signature, decryption and token checks of a webhook request.
    pub async fn verify_webhook(
        &self,
        cx: &Arc<InstallationContext>,
        request: &transport::WebhookRequest,
    ) -> CallResult<transport::WebhookVerdict, transport::WebhookRejection> {
        self.call(
            cx,
            Export::Transport,
            "transport.verify-webhook",
            guest!(switchboard_channel_transport.call_verify_webhook(request)),
        )
        .await
    }

    /// `transport.routing-key`: the routing key an event payload carries (names its installation).
    pub async fn routing_key(
        &self,
        cx: &Arc<InstallationContext>,
        payload: &[u8],
    ) -> Result<Option<String>, CallError> {
        self.call(
            cx,
            Export::Transport,
            "transport.routing-key",
            guest!(switchboard_channel_transport.call_routing_key(payload)),
        )
        .await
    }

    /// `decoder.decode`: an event payload to a message (or an ignore reason).
    pub async fn decode(
        &self,
        cx: &Arc<InstallationContext>,
        payload: &[u8],
    ) -> CallResult<decoder::Decoded, types::PluginError> {
        self.call(
            cx,
            Export::Decoder,
            "decoder.decode",
            guest!(switchboard_channel_decoder.call_decode(payload)),
        )
        .await
    }

    /// `enricher.enrich`: quoted parents, forwarded bundles and context, within `budget`.
    pub async fn enrich(
        &self,
        cx: &Arc<InstallationContext>,
        message: &types::InboundMessage,
        budget: enricher::Budget,
    ) -> Result<enricher::Enrichment, CallError> {
        self.call(
            cx,
            Export::Enricher,
            "enricher.enrich",
            guest!(switchboard_channel_enricher.call_enrich(message, budget)),
        )
        .await
    }

    /// `commands.parse`: a channel command from the user's own text.
    pub async fn parse_command(
        &self,
        cx: &Arc<InstallationContext>,
        text: &str,
    ) -> Result<Option<commands::Command>, CallError> {
        self.call(
            cx,
            Export::Commands,
            "commands.parse",
            guest!(switchboard_channel_commands.call_parse(text)),
        )
        .await
    }

    /// `outbound.deliver`: render and send a reply, error or notice.
    pub async fn deliver(
        &self,
        cx: &Arc<InstallationContext>,
        delivery: &outbound::Delivery,
    ) -> CallResult<outbound::Receipt, outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.deliver",
            guest!(switchboard_channel_outbound.call_deliver(delivery)),
        )
        .await
    }

    /// `outbound.update-notice`: replaces a message the plugin sent for a notice.
    pub async fn update_notice(
        &self,
        cx: &Arc<InstallationContext>,
        target: &types::SessionTarget,
        message_id: Option<&str>,
        update_token: Option<&str>,
        notice: &types::Notice,
    ) -> CallResult<(), outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.update-notice",
            guest!(switchboard_channel_outbound.call_update_notice(
                target,
                message_id,
                update_token,
                notice
            )),
        )
        .await
    }

    /// `outbound.set-typing`: add or clear a typing indicator.
    pub async fn set_typing(
        &self,
        cx: &Arc<InstallationContext>,
        target: &types::SessionTarget,
        change: &outbound::TypingChange,
        handle: Option<&str>,
    ) -> CallResult<Option<String>, outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.set-typing",
            guest!(switchboard_channel_outbound.call_set_typing(target, change, handle)),
        )
        .await
    }

    /// `transport.plan-poll`: the request of the next long-poll round.
    pub async fn plan_poll(
        &self,
        cx: &Arc<InstallationContext>,
        cursor: Option<&str>,
    ) -> CallResult<http::Request, transport::ConnectError> {
        self.call(
            cx,
            Export::Transport,
            "transport.plan-poll",
            guest!(switchboard_channel_transport.call_plan_poll(cursor)),
        )
        .await
    }

    /// `transport.parse-poll`: the events and next cursor of a long-poll response.
    pub async fn parse_poll(
        &self,
        cx: &Arc<InstallationContext>,
        cursor: Option<&str>,
        response: &http::Response,
    ) -> CallResult<transport::PollBatch, transport::ConnectError> {
        self.call(
            cx,
            Export::Transport,
            "transport.parse-poll",
            guest!(switchboard_channel_transport.call_parse_poll(cursor, response)),
        )
        .await
    }

    /// `outbound.stream-begin`: start a streamed reply; the plugin's handle for it.
    pub async fn stream_begin(
        &self,
        cx: &Arc<InstallationContext>,
        target: &types::SessionTarget,
        idempotency_key: &str,
    ) -> CallResult<String, outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.stream-begin",
            guest!(switchboard_channel_outbound.call_stream_begin(target, idempotency_key)),
        )
        .await
    }

    /// `outbound.stream-update`: the streamed reply's text so far.
    pub async fn stream_update(
        &self,
        cx: &Arc<InstallationContext>,
        target: &types::SessionTarget,
        handle: &str,
        text: &str,
    ) -> CallResult<(), outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.stream-update",
            guest!(switchboard_channel_outbound.call_stream_update(target, handle, text)),
        )
        .await
    }

    /// `outbound.stream-end`: the streamed reply's final text.
    pub async fn stream_end(
        &self,
        cx: &Arc<InstallationContext>,
        target: &types::SessionTarget,
        handle: &str,
        text: &str,
    ) -> CallResult<outbound::Receipt, outbound::DeliveryError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.stream-end",
            guest!(switchboard_channel_outbound.call_stream_end(target, handle, text)),
        )
        .await
    }

    /// `outbound.fetch-attachment`: the bytes of an inbound attachment.
    pub async fn fetch_attachment(
        &self,
        cx: &Arc<InstallationContext>,
        message_id: &str,
        reference: &str,
    ) -> CallResult<outbound::AttachmentContent, types::PluginError> {
        self.call(
            cx,
            Export::Outbound,
            "outbound.fetch-attachment",
            guest!(switchboard_channel_outbound.call_fetch_attachment(message_id, reference)),
        )
        .await
    }

    /// `lifecycle.on-install`: config values the channel reports for a new installation.
    pub async fn on_install(
        &self,
        cx: &Arc<InstallationContext>,
        webhook_url: &str,
    ) -> CallResult<Vec<(String, String)>, types::PluginError> {
        self.call(
            cx,
            Export::Lifecycle,
            "lifecycle.on-install",
            guest!(switchboard_channel_lifecycle.call_on_install(webhook_url)),
        )
        .await
    }

    /// `lifecycle.on-uninstall`: undo what `on-install` registered.
    pub async fn on_uninstall(
        &self,
        cx: &Arc<InstallationContext>,
    ) -> CallResult<(), types::PluginError> {
        self.call(
            cx,
            Export::Lifecycle,
            "lifecycle.on-uninstall",
            guest!(switchboard_channel_lifecycle.call_on_uninstall()),
        )
        .await
    }
}
