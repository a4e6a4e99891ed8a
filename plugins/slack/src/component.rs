//! The `switchboard:channel` exports (wasm builds only): [`Imports`] is the [`Host`] on the host
//! imports; every export calls the logic modules with it. No protocol logic lives here.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
use switchboard_plugin_sdk::http::{self, Request, Response};
use switchboard_plugin_sdk::types::{InboundMessage, PluginError, SessionTarget};
use switchboard_plugin_sdk::{clock, install_panic_hook, installation, kv, log, log_write};

use crate::{
    Host, api, commands as command_logic, decode, enrich, outbound as out, socket, webhook,
};

/// Why the long-poll exports refuse.
const NO_LONG_POLL: &str = "Slack events come over webhooks or Socket Mode, not long-polling";

struct SlackPlugin;

switchboard_plugin_sdk::export_channel_plugin!(SlackPlugin);

/// [`Host`] on the imports; kv failures are logged and read as misses.
struct Imports;

impl Host for Imports {
    fn send(&mut self, request: &Request) -> Result<Response, http::Error> {
        http::send(request)
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        kv::get(key).unwrap_or_else(|e| {
            self.warn(&format!("kv get failed: {e:?}"));
            None
        })
    }
    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        if let Err(e) = kv::set(key, value, Some(ttl_ms)) {
            self.warn(&format!("kv set failed: {e:?}"));
        }
    }
    fn now_ms(&mut self) -> i64 {
        clock::now_ms()
    }
    fn remaining_ms(&mut self) -> u64 {
        installation::remaining_ms()
    }
    fn config(&mut self, key: &str) -> Option<String> {
        installation::config(key).filter(|v| !v.is_empty())
    }
    fn secret(&mut self, key: &str) -> Option<String> {
        installation::secret(key).filter(|v| !v.is_empty())
    }
    fn warn(&mut self, message: &str) {
        log_write(log::Level::Warn, message, &[]);
    }
}

/// Logs a failed delivery call for the operator and passes it on.
fn logged<T>(
    export: &str,
    result: Result<T, outbound::DeliveryError>,
) -> Result<T, outbound::DeliveryError> {
    if let Err(e) = &result {
        let retryable = e.retryable.to_string();
        log_write(
            log::Level::Warn,
            &e.message,
            &[("export", export), ("retryable", &retryable)],
        );
    }
    result
}

impl transport::Guest for SlackPlugin {
    fn classify_frame(frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        install_panic_hook();
        let (class, note) = socket::classify_frame(&frame)?;
        if let Some(note) = note {
            let level = if note.contains("link_disabled") {
                log::Level::Error
            } else {
                log::Level::Info
            };
            log_write(level, &note, &[]);
        }
        Ok(class)
    }
    fn build_ack(
        frame: Vec<u8>,
        status: transport::AckStatus,
        _processing_ms: u32,
        response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        install_panic_hook();
        socket::build_ack(&frame, status, response.as_deref())
    }
    fn answer_action(
        _payload: Vec<u8>,
        _answer: switchboard_plugin_sdk::types::ActionAnswer,
    ) -> Option<Vec<u8>> {
        // Slack shows no toast for a button press, and its interactivity answer (an empty 200,
        // or the Socket Mode ACK) carries nothing the user sees: the default answer goes out.
        None
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        install_panic_hook();
        let token = Imports.secret("app_token").ok_or_else(|| {
            transport::ConnectError::Terminal(
                "Socket Mode needs the installation's app_token (xapp-…)".into(),
            )
        })?;
        let response = http::send(&socket::open_request(&token)).map_err(|e| {
            let error = api::ApiError::http("apps.connections.open", &e);
            match error.retryable {
                true => transport::ConnectError::Retryable(error.operator_message()),
                false => transport::ConnectError::Terminal(error.operator_message()),
            }
        })?;
        socket::parse_open(&response, clock::now_ms())
    }
    fn classify_handshake_failure(
        status: u16,
        _headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        socket::classify_handshake_failure(status)
    }
    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        install_panic_hook();
        let secret = Imports.secret("signing_secret");
        webhook::verify(&request, secret.as_deref(), clock::now_ms())
    }
    fn routing_key(payload: Vec<u8>) -> Option<String> {
        install_panic_hook();
        webhook::routing_key(&payload)
    }
    fn plan_poll(_cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NO_LONG_POLL.into()))
    }
    fn parse_poll(
        _cursor: Option<String>,
        _response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NO_LONG_POLL.into()))
    }
}

impl decoder::Guest for SlackPlugin {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        install_panic_hook();
        decode::decode(&mut Imports, &payload)
    }
}

impl enricher::Guest for SlackPlugin {
    fn enrich(message: InboundMessage, budget: enricher::Budget) -> enricher::Enrichment {
        install_panic_hook();
        enrich::enrich(&mut Imports, &message, &budget)
    }
}

impl commands::Guest for SlackPlugin {
    fn parse(text: String) -> Option<commands::Command> {
        command_logic::parse_command(&text)
    }
}

impl outbound::Guest for SlackPlugin {
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        let result = out::deliver(
            &mut Imports,
            &delivery.target,
            &delivery.content,
            &delivery.idempotency_key,
        );
        logged("deliver", result).map(|message_id| outbound::Receipt { message_id })
    }
    fn set_typing(
        target: SessionTarget,
        change: outbound::TypingChange,
        handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        install_panic_hook();
        logged(
            "set-typing",
            out::set_typing(&mut Imports, &target, &change, handle.as_deref()),
        )
    }
    fn stream_begin(
        target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        install_panic_hook();
        logged(
            "stream-begin",
            out::stream_begin(&mut Imports, &target, &idempotency_key),
        )
    }
    fn stream_update(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        install_panic_hook();
        logged(
            "stream-update",
            out::stream_update(&mut Imports, &target, &handle, &text),
        )
    }
    fn stream_end(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        let result = out::stream_end(&mut Imports, &target, &handle, &text);
        logged("stream-end", result).map(|message_id| outbound::Receipt { message_id })
    }
    fn update_notice(
        target: SessionTarget,
        message_id: Option<String>,
        _update_token: Option<String>,
        notice: switchboard_plugin_sdk::types::Notice,
    ) -> Result<(), outbound::DeliveryError> {
        install_panic_hook();
        logged(
            "update-notice",
            out::update_notice(&mut Imports, &target, message_id.as_deref(), &notice),
        )
    }
    fn fetch_attachment(
        _message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        install_panic_hook();
        api::fetch_attachment(&mut Imports, &reference)
    }
}

impl lifecycle::Guest for SlackPlugin {
    /// Checks the bot token with `auth.test` and learns `bot_user_id` and `team_id`. Nothing is
    /// registered: the Request URLs are set in the app's settings (the installation's URL,
    /// `…/interactive` and `…/commands`), or Socket Mode is used.
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        install_panic_hook();
        let pairs = api::on_install(&mut Imports)?;
        log_write(
            log::Level::Info,
            "Slack app checked; set its Event Subscriptions Request URL (or use Socket Mode)",
            &[("request_url", &webhook_url)],
        );
        Ok(pairs)
    }
    fn on_uninstall() -> Result<(), PluginError> {
        Ok(())
    }
}
