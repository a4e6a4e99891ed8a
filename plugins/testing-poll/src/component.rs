//! The `switchboard:channel` exports (wasm builds only): reads the installation through the host
//! imports, sends the requests the crate root builds and reads their answers with it.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
use switchboard_plugin_sdk::types::{InboundMessage, PluginError, SessionTarget};
use switchboard_plugin_sdk::{http, install_panic_hook, installation, log, log_write};

use crate::{
    NO_TOKEN, ONLY_LONG_POLL, STREAM_PLACEHOLDER, api_root, decode, edit_outcome, edit_request,
    local_failure, me_request, parse_command, parse_me, parse_poll, poll_request, render,
    send_request, sent_message_id, transport_failure,
};

struct PollPlugin;

switchboard_plugin_sdk::export_channel_plugin!(PollPlugin);

/// The installation's API root, or none without a token.
fn root() -> Option<String> {
    let token = installation::secret("token").filter(|token| !token.is_empty())?;
    let base = installation::config("base_url");
    Some(api_root(base.as_deref(), &token))
}

fn outbound_root() -> Result<String, outbound::DeliveryError> {
    root().ok_or_else(|| local_failure(NO_TOKEN, false))
}

fn send(request: &http::Request) -> Result<http::Response, outbound::DeliveryError> {
    http::send(request).map_err(|error| {
        let failure = transport_failure(&error);
        log_write(
            log::Level::Warn,
            "channel request failed",
            &[("error", &failure.message)],
        );
        failure
    })
}

/// Sends `text` to the target's chat and answers the new message's id.
fn post(target: &SessionTarget, text: &str, key: &str) -> Result<String, outbound::DeliveryError> {
    let request = send_request(
        &outbound_root()?,
        &target.chat_id,
        text,
        key,
        target.reply_to.as_deref(),
    );
    sent_message_id(&send(&request)?)
}

fn edit(handle: &str, text: &str, is_final: bool) -> Result<(), outbound::DeliveryError> {
    let request = edit_request(&outbound_root()?, handle, text, is_final);
    edit_outcome(&send(&request)?)
}

impl transport::Guest for PollPlugin {
    fn classify_frame(_frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        Err(PluginError::Fatal(ONLY_LONG_POLL.into()))
    }
    fn build_ack(
        _frame: Vec<u8>,
        _status: transport::AckStatus,
        _processing_ms: u32,
        _response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::Fatal(ONLY_LONG_POLL.into()))
    }
    fn answer_action(
        _payload: Vec<u8>,
        _answer: switchboard_plugin_sdk::types::ActionAnswer,
    ) -> Option<Vec<u8>> {
        None
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(ONLY_LONG_POLL.into()))
    }
    fn classify_handshake_failure(
        _status: u16,
        _headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        transport::ConnectError::Terminal(ONLY_LONG_POLL.into())
    }
    fn verify_webhook(
        _request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        Err(transport::WebhookRejection::Malformed(
            ONLY_LONG_POLL.into(),
        ))
    }
    fn routing_key(_payload: Vec<u8>) -> Option<String> {
        // The poll loop's installation is authoritative; updates carry no routing key.
        None
    }
    fn plan_poll(cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        install_panic_hook();
        let root = root().ok_or_else(|| transport::ConnectError::Terminal(NO_TOKEN.into()))?;
        poll_request(&root, cursor.as_deref())
    }
    fn parse_poll(
        _cursor: Option<String>,
        response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        install_panic_hook();
        parse_poll(&response)
    }
}

impl decoder::Guest for PollPlugin {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        install_panic_hook();
        decode(&payload)
    }
}

impl enricher::Guest for PollPlugin {
    fn enrich(message: InboundMessage, _budget: enricher::Budget) -> enricher::Enrichment {
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
            attachments: Vec::new(),
        }
    }
}

impl commands::Guest for PollPlugin {
    fn parse(text: String) -> Option<commands::Command> {
        parse_command(&text)
    }
}

impl outbound::Guest for PollPlugin {
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        let text = render(&delivery.content);
        let message_id = post(&delivery.target, &text, &delivery.idempotency_key)?;
        Ok(outbound::Receipt {
            message_id: Some(message_id),
        })
    }
    fn set_typing(
        _target: SessionTarget,
        _change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        Err(local_failure(
            "the testing-poll plugin has no typing indicator",
            false,
        ))
    }
    fn stream_begin(
        target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        install_panic_hook();
        post(&target, STREAM_PLACEHOLDER, &idempotency_key)
    }
    fn stream_update(
        _target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        install_panic_hook();
        edit(&handle, &text, false)
    }
    fn stream_end(
        _target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        edit(&handle, &text, true)?;
        Ok(outbound::Receipt {
            message_id: Some(handle),
        })
    }
    fn update_notice(
        _target: switchboard_plugin_sdk::types::SessionTarget,
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
        _reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        Err(PluginError::Fatal(
            "the testing-poll plugin has no attachments".into(),
        ))
    }
}

impl lifecycle::Guest for PollPlugin {
    /// Learns the bot from `me`, and reports the URL the host would have it register (the
    /// host's tests check it names the installation).
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        install_panic_hook();
        let root = root().ok_or_else(|| PluginError::Unauthorized(NO_TOKEN.into()))?;
        let response = http::send(&me_request(&root))
            .map_err(|error| PluginError::Retryable(format!("`me` failed: {error:?}")))?;
        let mut learned = parse_me(&response)?;
        learned.push(("webhook_url".to_string(), webhook_url));
        Ok(learned)
    }
    fn on_uninstall() -> Result<(), PluginError> {
        Ok(())
    }
}
