//! The `switchboard:channel` exports (wasm builds only): reads the installation through the host
//! imports, calls the plain-Rust logic modules and converts between their types and the
//! generated WIT types. No protocol logic lives here.
//!
//! Installation config keys: `app_id`, `bot_open_id`, `bot_union_id`, `base_url` (default
//! `https://open.feishu.cn`). Secrets: `app_secret`, `encrypt_key`, `verification_token`.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, outbound, transport,
};
use switchboard_plugin_sdk::types::{ChatType, InboundMessage, Mention, PluginError, Sender};
use switchboard_plugin_sdk::{http, install_panic_hook, installation};

use crate::commands::Command;
use crate::decode::{self, DecodeContext, Decoded};
use crate::outbound::{DELIVERY_UNAVAILABLE, FlushAction};
use crate::transport::{
    AckStatus, ConnectError, ConnectPlan, ConnectionHints, DATA_KIND_EVENT, FrameClassRef,
    HttpRequestSpec,
};
use crate::webhook::{self, WebhookRejection, WebhookSecrets, WebhookVerdict};
use crate::{commands as command_logic, outbound as outbound_logic, transport as transport_logic};

/// Timeout asked of the host for the endpoint discovery call (the host clamps it to the call's
/// remaining deadline).
const ENDPOINT_TIMEOUT_MS: u32 = 10_000;

/// The exported plugin type.
struct LarkPlugin;

switchboard_plugin_sdk::export_channel_plugin!(LarkPlugin);

/// A non-secret config value, `None` when unset or empty.
fn config(key: &str) -> Option<String> {
    installation::config(key).filter(|value| !value.is_empty())
}

/// A secret, `None` when unset or empty.
fn secret(key: &str) -> Option<String> {
    installation::secret(key).filter(|value| !value.is_empty())
}

impl transport::Guest for LarkPlugin {
    fn classify_frame(mut frame: Vec<u8>) -> Result<transport::FrameClass, PluginError> {
        install_panic_hook();
        let class = transport_logic::classify_frame_ref(&frame)
            .map_err(|err| PluginError::InvalidInput(err.to_string()))?;
        Ok(match class {
            FrameClassRef::Control(control) => {
                transport::FrameClass::Control(transport::ControlFrame {
                    kind: control.kind,
                    reply: control.reply,
                    hints: control.hints.map(wit_hints),
                })
            }
            FrameClassRef::Data(data) => {
                let fragment = transport::Fragment {
                    message_id: data.fragment.message_id,
                    seq: data.fragment.seq,
                    total: data.fragment.total,
                };
                let trace_id = data.trace_id.map(str::to_string);
                // The payload is moved to the front of the frame's own buffer rather than
                // copied into a new one.
                let payload = subslice_range(&frame, data.payload);
                frame.copy_within(payload.clone(), 0);
                frame.truncate(payload.len());
                transport::FrameClass::Data(transport::DataFrame {
                    kind: DATA_KIND_EVENT.to_string(),
                    fragment,
                    payload: frame,
                    trace_id,
                })
            }
            FrameClassRef::Ignore(reason) => transport::FrameClass::Ignore(reason),
        })
    }

    fn build_ack(
        frame: Vec<u8>,
        status: transport::AckStatus,
        processing_ms: u32,
        response: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        install_panic_hook();
        let status = match status {
            transport::AckStatus::Ok => AckStatus::Ok,
            transport::AckStatus::Failed => AckStatus::Failed,
        };
        transport_logic::build_ack(&frame, status, processing_ms, response.as_deref())
            .map_err(|err| PluginError::InvalidInput(err.to_string()))
    }

    fn plan_connection() -> Result<transport::ConnectPlan, transport::ConnectError> {
        install_panic_hook();
        let base_url =
            config("base_url").unwrap_or_else(|| transport_logic::DEFAULT_BASE_URL.into());
        let app_id = config("app_id").unwrap_or_default();
        let app_secret = secret("app_secret").unwrap_or_default();
        let result = transport_logic::endpoint_request(&base_url, &app_id, &app_secret)
            .and_then(|request| send(&request))
            .and_then(|response| {
                transport_logic::parse_endpoint_response(response.status, &response.body)
            });
        match result {
            Ok(plan) => Ok(wit_plan(plan)),
            Err(err) => Err(wit_connect_error(err)),
        }
    }

    fn classify_handshake_failure(
        status: u16,
        headers: Vec<(String, String)>,
    ) -> transport::ConnectError {
        install_panic_hook();
        wit_connect_error(transport_logic::classify_handshake_failure(
            status, &headers,
        ))
    }

    fn verify_webhook(
        request: transport::WebhookRequest,
    ) -> Result<transport::WebhookVerdict, transport::WebhookRejection> {
        install_panic_hook();
        let encrypt_key = secret("encrypt_key");
        let verification_token = secret("verification_token");
        let secrets = WebhookSecrets {
            encrypt_key: encrypt_key.as_deref(),
            verification_token: verification_token.as_deref(),
        };
        let logic_request = webhook::WebhookRequest {
            method: &request.method,
            headers: &request.headers,
            body: &request.body,
        };
        match webhook::verify_webhook(&logic_request, &secrets) {
            Ok(WebhookVerdict::Challenge(response)) => Ok(transport::WebhookVerdict::Challenge(
                wit_webhook_response(response),
            )),
            Ok(WebhookVerdict::Events(events)) => Ok(transport::WebhookVerdict::Events(
                transport::WebhookEvents {
                    payloads: events.payloads,
                    response: wit_webhook_response(events.response),
                },
            )),
            Err(rejection) => Err(match rejection {
                WebhookRejection::BadSignature(reason) => {
                    transport::WebhookRejection::BadSignature(reason)
                }
                WebhookRejection::BadToken(reason) => transport::WebhookRejection::BadToken(reason),
                WebhookRejection::DecryptFailed(reason) => {
                    transport::WebhookRejection::DecryptFailed(reason)
                }
                WebhookRejection::Malformed(reason) => {
                    transport::WebhookRejection::Malformed(reason)
                }
            }),
        }
    }

    fn routing_key(payload: Vec<u8>) -> Option<String> {
        install_panic_hook();
        decode::routing_key(&payload)
    }
}

impl decoder::Guest for LarkPlugin {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        install_panic_hook();
        let bot_open_id = config("bot_open_id").unwrap_or_default();
        let bot_union_id = config("bot_union_id").unwrap_or_default();
        let ctx = DecodeContext::new(&bot_open_id, &bot_union_id);
        match decode::decode_event(&payload, &ctx) {
            Ok(Decoded::Ignored(reason)) => Ok(decoder::Decoded::Ignored(reason)),
            Ok(Decoded::Message(message)) => Ok(decoder::Decoded::Message(wit_message(message))),
            Err(err) => Err(PluginError::InvalidInput(err.to_string())),
        }
    }
}

impl enricher::Guest for LarkPlugin {
    /// Pending (see README): the body is returned unchanged.
    fn enrich(message: InboundMessage, _budget: enricher::Budget) -> enricher::Enrichment {
        install_panic_hook();
        enricher::Enrichment {
            body: message.body,
            notes: Vec::new(),
        }
    }
}

impl commands::Guest for LarkPlugin {
    fn parse(text: String) -> Option<commands::Command> {
        install_panic_hook();
        command_logic::parse_command(&text).map(|command| match command {
            Command::NewContext(body) => commands::Command::NewContext(body),
            Command::Issue { title, description } => {
                commands::Command::Issue(commands::IssueRequest { title, description })
            }
            Command::IssueUsage => commands::Command::IssueUsage,
        })
    }
}

impl outbound::Guest for LarkPlugin {
    fn flush(batch: outbound::FlushBatch) -> Result<Vec<outbound::FlushAction>, PluginError> {
        install_panic_hook();
        let last_message_id = batch
            .messages
            .last()
            .map(|message| message.message_id.as_str());
        Ok(outbound_logic::flush_actions(last_message_id)
            .into_iter()
            .map(|action| match action {
                FlushAction::StartRun => outbound::FlushAction::StartRun,
                FlushAction::Typing { message_id, on } => {
                    outbound::FlushAction::Typing(outbound::TypingChange { message_id, on })
                }
            })
            .collect())
    }

    fn deliver(
        _delivery: outbound::Delivery,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        Err(delivery_unavailable())
    }

    fn set_typing(
        _target: outbound::SessionTarget,
        _change: outbound::TypingChange,
        _handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        install_panic_hook();
        Err(delivery_unavailable())
    }
}

fn delivery_unavailable() -> outbound::DeliveryError {
    outbound::DeliveryError {
        code: None,
        message: DELIVERY_UNAVAILABLE.to_string(),
        retryable: false,
    }
}

/// Status and body of an HTTP answer.
struct HttpAnswer {
    status: u16,
    body: Vec<u8>,
}

/// Sends a request through host `http`. A destination outside the allow-list or an unusable
/// request is terminal (the operator must fix the config); timeouts, oversized answers and
/// transport failures are retryable.
fn send(request: &HttpRequestSpec) -> Result<HttpAnswer, ConnectError> {
    let wire = http::Request {
        method: request.method.to_string(),
        url: request.url.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
        timeout_ms: Some(ENDPOINT_TIMEOUT_MS),
    };
    match http::send(&wire) {
        Ok(response) => Ok(HttpAnswer {
            status: response.status,
            body: response.body,
        }),
        Err(http::Error::NotAllowed(destination)) => Err(ConnectError::Terminal(format!(
            "endpoint discovery is not allowed to reach {destination} (plugin http allow-list)"
        ))),
        Err(http::Error::InvalidRequest(reason)) => Err(ConnectError::Terminal(format!(
            "endpoint discovery request is invalid: {reason}"
        ))),
        Err(http::Error::Timeout) => Err(ConnectError::Retryable(
            "endpoint discovery timed out".into(),
        )),
        Err(http::Error::TooLarge(limit)) => Err(ConnectError::Retryable(format!(
            "endpoint discovery answer exceeded the host's {limit}-byte cap"
        ))),
        Err(http::Error::Transport(reason)) => Err(ConnectError::Retryable(format!(
            "endpoint discovery failed: {reason}"
        ))),
    }
}

/// The position of `inner` within `outer` (`0..0` for an empty `inner`, which may not point
/// into `outer`).
fn subslice_range(outer: &[u8], inner: &[u8]) -> std::ops::Range<usize> {
    if inner.is_empty() {
        return 0..0;
    }
    let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    let end = start
        .checked_add(inner.len())
        .filter(|end| *end <= outer.len())
        .expect("the payload is a slice of the frame");
    start..end
}

fn wit_hints(hints: ConnectionHints) -> transport::ConnectionHints {
    transport::ConnectionHints {
        ping_interval_ms: hints.ping_interval_ms,
        reconnect_interval_ms: hints.reconnect_interval_ms,
        reconnect_jitter_ms: hints.reconnect_jitter_ms,
        reconnect_count: hints.reconnect_count,
    }
}

fn wit_plan(plan: ConnectPlan) -> transport::ConnectPlan {
    transport::ConnectPlan {
        url: plan.url,
        connection_id: plan.connection_id,
        ping_frame: plan.ping_frame,
        hints: wit_hints(plan.hints),
    }
}

fn wit_connect_error(err: ConnectError) -> transport::ConnectError {
    match err {
        ConnectError::Retryable(reason) => transport::ConnectError::Retryable(reason),
        ConnectError::Terminal(reason) => transport::ConnectError::Terminal(reason),
    }
}

fn wit_webhook_response(response: webhook::WebhookResponse) -> transport::WebhookResponse {
    transport::WebhookResponse {
        status: response.status,
        content_type: response.content_type,
        body: response.body,
    }
}

fn wit_message(message: decode::InboundMessage) -> InboundMessage {
    InboundMessage {
        event_id: message.event_id,
        message_id: message.message_id,
        chat_id: message.chat_id,
        chat_type: match message.chat_type {
            decode::ChatType::Direct => ChatType::Direct,
            decode::ChatType::Group => ChatType::Group,
        },
        sender: Sender {
            open_id: message.sender.open_id,
            union_id: message.sender.union_id,
            user_id: message.sender.user_id,
            kind: message.sender.kind,
        },
        message_type: message.message_type,
        body: message.body,
        command_body: message.command_body,
        addressed_to_bot: message.addressed_to_bot,
        parent_id: message.parent_id,
        root_id: message.root_id,
        thread_id: message.thread_id,
        create_time_ms: message.create_time_ms,
        mentions: message
            .mentions
            .into_iter()
            .map(|mention| Mention {
                key: mention.key,
                name: mention.name,
                open_id: mention.open_id,
                union_id: mention.union_id,
            })
            .collect(),
    }
}
