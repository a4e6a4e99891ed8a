//! The `switchboard:channel` exports (wasm builds only): reads the installation through the host
//! imports, calls the logic modules and sends their requests. No protocol logic lives here.

use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
use switchboard_plugin_sdk::types::{InboundMessage, PluginError, SessionTarget};
use switchboard_plugin_sdk::{clock, http, install_panic_hook, installation, kv, log, log_write};

use crate::api::{self, CALL_TIMEOUT_MS};
use crate::decode::{self, Bot};
use crate::outbound::{self as flows, Client, Failure};
use crate::{commands as command_logic, transport as transport_logic};

/// Why the WebSocket exports refuse.
const NO_WEBSOCKET: &str = "Telegram has no WebSocket transport: use webhooks or long polling";

/// How long a send's record of posted messages is kept (the outbox gives up within hours).
const RECORD_TTL_MS: u64 = 24 * 3600 * 1000;

struct TelegramPlugin;

switchboard_plugin_sdk::export_channel_plugin!(TelegramPlugin);

fn config(key: &str) -> Option<String> {
    installation::config(key).filter(|value| !value.is_empty())
}

fn token() -> Option<String> {
    installation::secret("bot_token").filter(|value| !value.is_empty())
}

/// Why calls that need the token cannot be made.
const NO_TOKEN: &str = "the installation has no bot_token secret";

fn warn(message: &str, what: &str, error: &dyn std::fmt::Debug) {
    log_write(
        log::Level::Warn,
        message,
        &[("what", what), ("error", &format!("{error:?}"))],
    );
}

/// The Bot API through host `http`, and the plugin's `kv`.
struct Host {
    token: String,
}

impl Host {
    fn new() -> Result<Host, Failure> {
        let token = token().ok_or_else(|| Failure::Unanswered(api::refused(NO_TOKEN)))?;
        Ok(Host { token })
    }
}

impl Client for Host {
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Failure> {
        let request = api::call(&self.token, method, &params, CALL_TIMEOUT_MS);
        let response = http::send(&request).map_err(|error| {
            warn("Bot API request failed", method, &error);
            Failure::Unanswered(api::transport_failure(&error))
        })?;
        api::result(&response).map_err(Failure::Api)
    }
    fn recall(&mut self, key: &str) -> Option<String> {
        kv::get(key)
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }
    fn remember(&mut self, key: &str, value: &str) {
        if let Err(error) = kv::set(key, value.as_bytes(), Some(RECORD_TTL_MS)) {
            warn("a send could not be recorded", key, &error);
        }
    }
}

fn with_host<T>(
    run: impl FnOnce(&mut Host) -> Result<T, outbound::DeliveryError>,
) -> Result<T, outbound::DeliveryError> {
    install_panic_hook();
    run(&mut Host::new().map_err(Failure::delivery)?)
}

fn bot_config() -> (String, String) {
    (
        config("bot_id").unwrap_or_default(),
        config("bot_username").unwrap_or_default(),
    )
}

fn decode_payload(payload: &[u8]) -> Result<decoder::Decoded, PluginError> {
    let (id, username) = bot_config();
    let now_ms = clock::now_ms();
    decode::decode(
        payload,
        &Bot {
            id: &id,
            username: &username,
            now_ms,
        },
    )
}

/// What the host would read from a payload, read now (saves it the decode and parse calls).
fn reading(payload: &[u8]) -> transport::EventReading {
    let decoded = decode_payload(payload);
    let command = match &decoded {
        Ok(decoder::Decoded::Message(message)) => command_logic::parse(&message.command_body),
        _ => None,
    };
    transport::EventReading {
        routing_key: None,
        decoded,
        command,
    }
}

impl transport::Guest for TelegramPlugin {
    fn classify_frame(_frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        Err(PluginError::Fatal(NO_WEBSOCKET.into()))
    }
    fn build_ack(
        _: Vec<u8>,
        _: transport::AckStatus,
        _: u32,
        _: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::Fatal(NO_WEBSOCKET.into()))
    }
    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        Err(transport::ConnectError::Terminal(NO_WEBSOCKET.into()))
    }
    fn answer_action(
        payload: Vec<u8>,
        answer: switchboard_plugin_sdk::types::ActionAnswer,
    ) -> Option<Vec<u8>> {
        install_panic_hook();
        transport_logic::callback_answer(
            &payload,
            &answer.toast,
            matches!(
                answer.tone,
                switchboard_plugin_sdk::types::AnswerTone::Error
            ),
        )
    }
    fn classify_handshake_failure(_: u16, _: Vec<(String, String)>) -> transport::ConnectError {
        transport::ConnectError::Terminal(NO_WEBSOCKET.into())
    }
    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        install_panic_hook();
        let secret = installation::secret("webhook_secret");
        let mut verdict = transport_logic::verify_webhook(
            &request.method,
            &request.headers,
            request.body,
            secret.as_deref(),
        )?;
        if let transport::WebhookVerdict::Events(events) = &mut verdict {
            events.readings = events.payloads.iter().map(|p| reading(p)).collect();
        }
        Ok(verdict)
    }
    fn routing_key(_payload: Vec<u8>) -> Option<String> {
        // Updates carry none: the installation's URL or poll loop is authoritative.
        None
    }
    fn plan_poll(cursor: Option<String>) -> Result<transport::Request, transport::ConnectError> {
        install_panic_hook();
        let token = token().ok_or_else(|| transport::ConnectError::Terminal(NO_TOKEN.into()))?;
        transport_logic::poll_request(&token, cursor.as_deref())
    }
    fn parse_poll(
        _cursor: Option<String>,
        response: transport::Response,
    ) -> Result<transport::PollBatch, transport::ConnectError> {
        install_panic_hook();
        let (mut batch, callbacks) = transport_logic::parse_poll(&response)?;
        batch.readings = batch.payloads.iter().map(|p| reading(p)).collect();
        // Stop the users' spinners (best effort: an unanswered query only times out).
        if let Ok(mut host) = Host::new() {
            for id in callbacks {
                if let Err(failure) =
                    host.call("answerCallbackQuery", json!({"callback_query_id": id}))
                {
                    warn(
                        "a callback query was not answered",
                        &id,
                        &failure.delivery().message,
                    );
                }
            }
        }
        Ok(batch)
    }
}

impl decoder::Guest for TelegramPlugin {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        install_panic_hook();
        decode_payload(&payload)
    }
}

impl enricher::Guest for TelegramPlugin {
    fn enrich(message: InboundMessage, _budget: enricher::Budget) -> enricher::Enrichment {
        // The decoder already quoted the replied-to message (the Bot API cannot fetch a message
        // by id, so the update's own copy is all there is); nothing else to fetch.
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
            attachments: Vec::new(),
        }
    }
}

impl commands::Guest for TelegramPlugin {
    fn parse(text: String) -> Option<commands::Command> {
        command_logic::parse(&text)
    }
}

impl outbound::Guest for TelegramPlugin {
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        with_host(|host| {
            flows::deliver(
                host,
                &delivery.target,
                &delivery.content,
                &delivery.idempotency_key,
            )
        })
        .map(|id| outbound::Receipt {
            message_id: Some(id),
        })
    }
    fn set_typing(
        target: SessionTarget,
        change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        if !change.on {
            // Telegram's indicator ends by itself (5 s) or with the bot's next message.
            return Ok(None);
        }
        with_host(|host| flows::typing(host, &target)).map(|()| Some("typing".into()))
    }
    fn stream_begin(
        target: SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        with_host(|host| flows::stream_begin(host, &target, &idempotency_key))
    }
    fn stream_update(
        _target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        with_host(|host| flows::stream_update(host, &handle, &text))
    }
    fn stream_end(
        target: SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        with_host(|host| flows::stream_end(host, &target, &handle, &text)).map(|id| {
            outbound::Receipt {
                message_id: Some(id),
            }
        })
    }
    fn update_notice(
        _target: SessionTarget,
        message_id: Option<String>,
        _update_token: Option<String>,
        notice: switchboard_plugin_sdk::types::Notice,
    ) -> Result<(), outbound::DeliveryError> {
        with_host(|host| flows::update_notice(host, message_id.as_deref(), &notice))
    }
    fn fetch_attachment(
        _message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        install_panic_hook();
        let mut host = Host::new().map_err(|f| f.plugin_error("getFile"))?;
        let file = host
            .call("getFile", json!({"file_id": reference}))
            .map_err(|f| f.plugin_error("getFile"))?;
        let path = file["file_path"].as_str().ok_or_else(|| {
            PluginError::Fatal("getFile answered no file_path (over 20 MB?)".into())
        })?;
        let response = http::send(&api::file_download(&host.token, path)).map_err(|error| {
            PluginError::Retryable(format!("the file download failed: {error:?}"))
        })?;
        if !(200..300).contains(&response.status) {
            return Err(PluginError::Fatal(format!(
                "the file download answered {}",
                response.status
            )));
        }
        let mime = response
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.clone());
        Ok(outbound::AttachmentContent {
            mime,
            body: response.body,
        })
    }
}

impl lifecycle::Guest for TelegramPlugin {
    fn on_install(webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        install_panic_hook();
        let mut host = Host::new().map_err(|_| PluginError::Unauthorized(NO_TOKEN.into()))?;
        let secret = installation::secret("webhook_secret");
        let poll = flows::polls(config("connection").as_deref());
        flows::install(&mut host, &webhook_url, poll, secret.as_deref())
    }
    fn on_uninstall() -> Result<(), PluginError> {
        install_panic_hook();
        let mut host = Host::new().map_err(|_| PluginError::Unauthorized(NO_TOKEN.into()))?;
        flows::uninstall(&mut host, flows::polls(config("connection").as_deref()))
    }
}
