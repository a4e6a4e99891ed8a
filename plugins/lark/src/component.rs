//! The `switchboard:channel` exports (wasm builds only): reads the installation through the host
//! imports, calls the plain-Rust logic modules and converts between their types and the
//! generated WIT types. No protocol logic lives here.
//!
//! Installation config keys (the manifest's `[installation]` schema): `app_id`, `bot_open_id`,
//! `bot_union_id`, `base_url` (default `https://open.feishu.cn`), `agent_name` (card headers,
//! none by default), `recent_context_size` (enricher, default 10, 0 = off); `on-install` adds
//! `bot_open_id` and `bot_name`. Secrets: `app_secret`, `encrypt_key`, `verification_token`.

use switchboard_plugin_sdk::bindings::exports::switchboard::channel::{
    commands, decoder, enricher, lifecycle, outbound, transport,
};
use switchboard_plugin_sdk::types::{
    self, Attachment, Chat, ChatKind, InboundMessage, Mention, Participant, PluginError,
};
use switchboard_plugin_sdk::{clock, http, install_panic_hook, installation, kv, log, log_write};

use crate::card_action;
use crate::decode::{self, DecodeContext, Decoded};
use crate::mentions::BotIdentity;
use crate::outbound::{
    Credentials, DeliveryFailure, LarkClient, LarkHost, PluginFailure, TransportFailure,
};
use crate::transport::{
    AckStatus, ConnectError, ConnectPlan, ConnectionHints, DATA_KIND_EVENT, FrameClassRef,
    HttpRequestSpec,
};
use crate::webhook::{self, WebhookRejection, WebhookSecrets, WebhookVerdict};
use crate::{
    commands as command_logic, enrich as enrich_logic, outbound as outbound_logic,
    transport as transport_logic,
};

/// What `plan-poll` and `parse-poll` answer: events come over the long connection or webhooks.
const NO_LONG_POLL: &str = "this channel does not long-poll";

/// Timeout asked of the host for the endpoint discovery call (the host clamps it to the call's
/// remaining deadline).
const ENDPOINT_TIMEOUT_MS: u32 = 10_000;

/// Timeout asked of the host for each outbound REST call (the host clamps it to the call's
/// remaining deadline).
const OUTBOUND_TIMEOUT_MS: u32 = 10_000;

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
                // A whole event is read now, saving the host three calls (routing key,
                // decode, command parse); fragments are decoded once the host reassembled them.
                let event = (fragment.total <= 1).then(|| read_event(&frame, &Bot::from_config()));
                transport::FrameClass::Data(transport::DataFrame {
                    kind: DATA_KIND_EVENT.to_string(),
                    fragment,
                    payload: frame,
                    trace_id,
                    event,
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

    fn answer_action(_payload: Vec<u8>, answer: types::ActionAnswer) -> Option<Vec<u8>> {
        install_panic_hook();
        let tone = match answer.tone {
            types::AnswerTone::Info => "info",
            types::AnswerTone::Success => "success",
            types::AnswerTone::Warning => "warning",
            types::AnswerTone::Error => "error",
        };
        // The pressed card is replaced by the host's re-rendered notice (an approval showing
        // its decision): the same card the notice would be sent as.
        let card = answer.update.map(|notice| {
            let notice = logic_notice(notice);
            let header = config("agent_name").unwrap_or_default();
            crate::render::approval_card_json(&header, &notice.text, &notice.actions)
        });
        Some(crate::card_action::answer_body(&answer.toast, tone, card))
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
            Ok(WebhookVerdict::Events(events)) => {
                // Read now, with the installation the request is verified for (the host always
                // names one).
                let readings = if installation::id().is_empty() {
                    Vec::new()
                } else {
                    let bot = Bot::from_config();
                    events
                        .payloads
                        .iter()
                        .map(|payload| read_event(payload, &bot))
                        .collect()
                };
                Ok(transport::WebhookVerdict::Events(
                    transport::WebhookEvents {
                        payloads: events.payloads,
                        readings,
                        signed_at_ms: events.signed_at_ms,
                        response: wit_webhook_response(events.response),
                    },
                ))
            }
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

impl decoder::Guest for LarkPlugin {
    fn decode(payload: Vec<u8>) -> Result<decoder::Decoded, PluginError> {
        install_panic_hook();
        decode_payload(&payload)
    }
}

/// `decoder.decode`.
fn decode_payload(payload: &[u8]) -> Result<decoder::Decoded, PluginError> {
    if let Some(action) = decode_action(payload)? {
        return Ok(decoder::Decoded::Action(wit_action(action)));
    }
    let bot = Bot::from_config();
    decode_native(payload, &bot).map(|decoded| match decoded {
        Decoded::Ignored(reason) => decoder::Decoded::Ignored(reason),
        Decoded::Message(message) => decoder::Decoded::Message(wit_message(message, &bot)),
    })
}

/// The installation's bot ids (config keys `bot_open_id` and `bot_union_id`; empty = unknown).
struct Bot {
    open_id: String,
    union_id: String,
}

impl Bot {
    fn from_config() -> Self {
        Bot {
            open_id: config("bot_open_id").unwrap_or_default(),
            union_id: config("bot_union_id").unwrap_or_default(),
        }
    }

    fn identity(&self) -> BotIdentity<'_> {
        BotIdentity {
            open_id: &self.open_id,
            union_id: &self.union_id,
        }
    }
}

/// The decoder logic with the installation's bot ids, before conversion to the WIT types (a
/// reading also needs the envelope's `app_id`).
fn decode_native(payload: &[u8], bot: &Bot) -> Result<Decoded, PluginError> {
    let ctx = DecodeContext {
        bot: bot.identity(),
    };
    decode::decode_event(payload, &ctx).map_err(|err| PluginError::InvalidInput(err.to_string()))
}

/// What `routing-key`, `decode` and `commands.parse` answer for one whole event payload, in
/// one parse when the payload is a v2 message event (its `header.app_id` is the routing key).
fn read_event(payload: &[u8], bot: &Bot) -> transport::EventReading {
    match decode_action(payload) {
        Ok(None) => {}
        Ok(Some(mut action)) => {
            let routing_key = if action.app_id.is_empty() {
                decode::routing_key(payload)
            } else {
                Some(std::mem::take(&mut action.app_id))
            };
            return transport::EventReading {
                routing_key,
                decoded: Ok(decoder::Decoded::Action(wit_action(action))),
                command: None,
            };
        }
        Err(error) => {
            return transport::EventReading {
                routing_key: decode::routing_key(payload),
                decoded: Err(error),
                command: None,
            };
        }
    }
    let (decoded, routing_key, command) = match decode_native(payload, bot) {
        Ok(Decoded::Message(mut message)) => {
            let routing_key = if message.app_id.is_empty() {
                decode::routing_key(payload)
            } else {
                Some(std::mem::take(&mut message.app_id))
            };
            let command = parse_command(&message.command_body);
            (
                Ok(decoder::Decoded::Message(wit_message(message, bot))),
                routing_key,
                command,
            )
        }
        Ok(Decoded::Ignored(reason)) => (
            Ok(decoder::Decoded::Ignored(reason)),
            decode::routing_key(payload),
            None,
        ),
        Err(error) => (Err(error), decode::routing_key(payload), None),
    };
    transport::EventReading {
        routing_key,
        decoded,
        command,
    }
}

impl enricher::Guest for LarkPlugin {
    /// Quoted parents, forwarded transcripts, recent group context and speaker names (see
    /// `enrich`), within the host's budget; failures become placeholders, never errors.
    fn enrich(message: InboundMessage, budget: enricher::Budget) -> enricher::Enrichment {
        install_panic_hook();
        let settings = enrich_logic::Settings {
            recent_context_size: config("recent_context_size")
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(enrich_logic::DEFAULT_RECENT_CONTEXT_SIZE),
        };
        let budget = enrich_logic::Budget {
            deadline_ms: budget.deadline_ms,
            max_requests: budget.max_requests,
            max_context_messages: budget.max_context_messages,
        };
        let credentials = credentials();
        let message = logic_message(message);
        let enriched = enrich_logic::enrich(
            &mut EnrichImportHost,
            &credentials,
            &settings,
            &message,
            budget,
        );
        enricher::Enrichment {
            body: enriched.body,
            notes: enriched.notes,
            attachments: enriched
                .attachments
                .into_iter()
                .map(|found| Attachment {
                    kind: found.kind.to_string(),
                    name: found.name,
                    mime: None,
                    size: None,
                    ref_: found.key,
                })
                .collect(),
        }
    }
}

/// [`enrich_logic::EnrichHost`] on the host imports: requests with the timeout the enricher
/// asks for, the call's remaining deadline, kv and logs as in delivery.
struct EnrichImportHost;

impl enrich_logic::EnrichHost for EnrichImportHost {
    fn send(
        &mut self,
        request: &HttpRequestSpec,
        timeout_ms: u32,
    ) -> Result<crate::outbound::HttpAnswer, TransportFailure> {
        send_rest(request, timeout_ms)
    }

    fn remaining_ms(&mut self) -> u64 {
        installation::remaining_ms()
    }

    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        ImportHost.kv_get(key)
    }

    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        ImportHost.kv_set(key, value, ttl_ms)
    }

    fn kv_delete(&mut self, key: &str) {
        ImportHost.kv_delete(key)
    }

    fn warn(&mut self, message: &str, fields: &[(&str, &str)]) {
        log_write(log::Level::Warn, message, fields);
    }
}

/// The WIT message as the logic modules' type (the routing key is not needed after decoding;
/// the enricher reads neither attachments nor mention union ids).
fn logic_message(message: InboundMessage) -> decode::InboundMessage {
    let mut union_id = None;
    let mut user_id = None;
    for (scheme, id) in message.sender.alt_ids {
        match scheme.as_str() {
            "union_id" => union_id = Some(id),
            "user_id" => user_id = Some(id),
            _ => {}
        }
    }
    decode::InboundMessage {
        app_id: String::new(),
        event_id: message.event_id,
        message_id: message.message_id,
        chat_id: message.chat.id,
        chat_type: logic_chat_type(message.chat.kind),
        sender: decode::Sender {
            open_id: message.sender.id,
            union_id,
            user_id,
            kind: if message.sender.is_bot { "app" } else { "user" }.into(),
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
            .map(|mention| crate::mentions::Mention {
                key: mention.key,
                name: mention.name,
                open_id: mention.id,
                union_id: None,
            })
            .collect(),
        attachments: Vec::new(),
    }
}

/// Lark has direct and group chats; a `channel` is treated as a group.
fn logic_chat_type(kind: ChatKind) -> decode::ChatType {
    match kind {
        ChatKind::Direct => decode::ChatType::Direct,
        ChatKind::Group | ChatKind::Channel => decode::ChatType::Group,
    }
}

impl commands::Guest for LarkPlugin {
    fn parse(text: String) -> Option<commands::Command> {
        install_panic_hook();
        parse_command(&text)
    }
}

/// `commands.parse`.
fn parse_command(text: &str) -> Option<commands::Command> {
    command_logic::parse_command(text).map(|command| commands::Command {
        name: command.name,
        args: command.args,
    })
}

impl outbound::Guest for LarkPlugin {
    fn deliver(delivery: outbound::Delivery) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        let target = logic_target(delivery.target);
        let content = match delivery.content {
            outbound::Content::Reply(text) => outbound_logic::Content::Reply(text),
            outbound::Content::Notice(notice) => {
                outbound_logic::Content::Notice(logic_notice(notice))
            }
        };
        let header = config("agent_name").unwrap_or_default();
        let credentials = credentials();
        let mut host = ImportHost;
        LarkClient::new(&mut host, &credentials)
            .with_idempotency_key(&delivery.idempotency_key)
            .deliver(&target, &content, &header)
            .map(|message_id| outbound::Receipt { message_id })
            .map_err(|failure| reported(failure, "deliver", &target.session_id))
    }

    fn set_typing(
        target: outbound::SessionTarget,
        change: outbound::TypingChange,
        handle: Option<String>,
    ) -> Result<Option<String>, outbound::DeliveryError> {
        install_panic_hook();
        let credentials = credentials();
        let mut host = ImportHost;
        let mut client = LarkClient::new(&mut host, &credentials);
        let result = if change.on {
            client.add_typing(&change.message_id)
        } else {
            client
                .remove_typing(&change.message_id, handle.as_deref().unwrap_or(""))
                .map(|()| None)
        };
        result.map_err(|failure| reported(failure, "set-typing", &target.session_id))
    }

    /// A CardKit card sent to the session (see `cardkit`); never an error: without a card the
    /// handle says so and the end sends an ordinary reply.
    fn stream_begin(
        target: outbound::SessionTarget,
        idempotency_key: String,
    ) -> Result<String, outbound::DeliveryError> {
        install_panic_hook();
        let target = logic_target(target);
        let credentials = credentials();
        let mut host = ImportHost;
        Ok(LarkClient::new(&mut host, &credentials).stream_begin(&target, &idempotency_key))
    }

    fn stream_update(
        target: outbound::SessionTarget,
        handle: String,
        text: String,
    ) -> Result<(), outbound::DeliveryError> {
        install_panic_hook();
        let target = logic_target(target);
        let credentials = credentials();
        let mut host = ImportHost;
        LarkClient::new(&mut host, &credentials)
            .stream_update(&target, &handle, &text)
            .map_err(|failure| reported(failure, "stream-update", &target.session_id))
    }

    fn stream_end(
        target: outbound::SessionTarget,
        handle: String,
        text: String,
    ) -> Result<outbound::Receipt, outbound::DeliveryError> {
        install_panic_hook();
        let target = logic_target(target);
        let credentials = credentials();
        let mut host = ImportHost;
        LarkClient::new(&mut host, &credentials)
            .stream_end(&target, &handle, &text)
            .map(|message_id| outbound::Receipt { message_id })
            .map_err(|failure| reported(failure, "stream-end", &target.session_id))
    }

    /// The card of `notice` (an approval card; its buttons, if any, kept) replaces the card the
    /// user pressed: through the callback token when the host has one, else by message id.
    fn update_notice(
        target: outbound::SessionTarget,
        message_id: Option<String>,
        update_token: Option<String>,
        notice: types::Notice,
    ) -> Result<(), outbound::DeliveryError> {
        install_panic_hook();
        let notice = logic_notice(notice);
        let header = config("agent_name").unwrap_or_default();
        let card = crate::render::approval_card_json(&header, &notice.text, &notice.actions);
        let credentials = credentials();
        let mut host = ImportHost;
        LarkClient::new(&mut host, &credentials)
            .update_card(message_id.as_deref(), update_token.as_deref(), &card)
            .map_err(|failure| reported(failure, "update-notice", &target.session_id))
    }

    /// The message resource API: `type=image` for an `img_…` key, `type=file` otherwise; by the
    /// message id and key a context `ref` carries, else by `message_id` and the `ref`.
    fn fetch_attachment(
        message_id: String,
        reference: String,
    ) -> Result<outbound::AttachmentContent, PluginError> {
        install_panic_hook();
        let credentials = credentials();
        let mut host = ImportHost;
        // An attachment of a quoted or forwarded message names its own message (enrich).
        let (message_id, key) = enrich_logic::resource_of(&message_id, &reference);
        LarkClient::new(&mut host, &credentials)
            .fetch_resource(message_id, key)
            .map(|resource| outbound::AttachmentContent {
                mime: resource.mime,
                body: resource.body,
            })
            .map_err(|failure| plugin_error(failure, "fetch-attachment"))
    }
}

impl lifecycle::Guest for LarkPlugin {
    /// Checks the credentials with a fresh tenant token and learns the bot's `open_id` and name
    /// (`GET /open-apis/bot/v3/info`). Nothing is registered: Lark's event URL is set in the
    /// developer console.
    fn on_install(_webhook_url: String) -> Result<Vec<(String, String)>, PluginError> {
        install_panic_hook();
        let credentials = credentials();
        let mut host = ImportHost;
        let bot = LarkClient::new(&mut host, &credentials)
            .bot_info()
            .map_err(|failure| plugin_error(failure, "on-install"))?;
        // Notices default to the language of the channel's edition: Chinese on Feishu, English
        // on Lark international (the host keeps an operator's `locale`).
        let locale = crate::transport::default_locale(&credentials.base_url).unwrap_or_default();
        Ok([
            ("bot_open_id", bot.open_id),
            ("bot_name", bot.app_name),
            ("locale", locale.to_string()),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_string(), value))
        .collect())
    }

    fn on_uninstall() -> Result<(), PluginError> {
        Ok(())
    }
}

/// Logs a failed non-delivery call and converts it to the WIT error.
fn plugin_error(failure: PluginFailure, export: &str) -> PluginError {
    let (kind, error) = match failure {
        PluginFailure::InvalidInput(message) => {
            ("invalid-input", PluginError::InvalidInput(message))
        }
        PluginFailure::Unauthorized(message) => {
            ("unauthorized", PluginError::Unauthorized(message))
        }
        PluginFailure::Retryable(message) => ("retryable", PluginError::Retryable(message)),
        PluginFailure::Fatal(message) => ("fatal", PluginError::Fatal(message)),
    };
    let message = match &error {
        PluginError::InvalidInput(message)
        | PluginError::Unauthorized(message)
        | PluginError::Retryable(message)
        | PluginError::Fatal(message) => message.as_str(),
    };
    log_write(
        log::Level::Warn,
        message,
        &[("export", export), ("error", kind)],
    );
    error
}

/// The installation's Open Platform credentials.
fn credentials() -> Credentials {
    Credentials {
        base_url: config("base_url").unwrap_or_default(),
        app_id: config("app_id").unwrap_or_default(),
        app_secret: secret("app_secret").unwrap_or_default(),
    }
}

/// Logs a failed outbound call with its Lark code and converts it to the WIT error.
fn reported(failure: DeliveryFailure, export: &str, session: &str) -> outbound::DeliveryError {
    let code = failure
        .code
        .map(|code| code.to_string())
        .unwrap_or_default();
    let retryable = failure.retryable.to_string();
    log_write(
        log::Level::Warn,
        &failure.message,
        &[
            ("export", export),
            ("session", session),
            ("lark_code", &code),
            ("retryable", &retryable),
        ],
    );
    outbound::DeliveryError {
        code: failure.code,
        message: failure.message,
        retryable: failure.retryable,
        retry_after_ms: failure.retry_after_ms,
    }
}

/// [`LarkHost`] on the host imports. kv failures are logged and treated as a cache miss.
struct ImportHost;

impl LarkHost for ImportHost {
    fn send(
        &mut self,
        request: &HttpRequestSpec,
    ) -> Result<crate::outbound::HttpAnswer, TransportFailure> {
        send_rest(request, OUTBOUND_TIMEOUT_MS)
    }

    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        match kv::get(key) {
            Ok(value) => value,
            Err(err) => {
                self.warn(
                    "kv get failed; fetching a new token",
                    &[("error", &format!("{err:?}"))],
                );
                None
            }
        }
    }

    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        if let Err(err) = kv::set(key, value, Some(ttl_ms)) {
            self.warn(
                "kv set failed; the token is not cached",
                &[("error", &format!("{err:?}"))],
            );
        }
    }

    fn kv_delete(&mut self, key: &str) {
        if let Err(err) = kv::delete(key) {
            self.warn("kv delete failed", &[("error", &format!("{err:?}"))]);
        }
    }

    fn warn(&mut self, message: &str, fields: &[(&str, &str)]) {
        log_write(log::Level::Warn, message, fields);
    }

    fn now_ms(&mut self) -> u64 {
        u64::try_from(clock::now_ms()).unwrap_or(0)
    }

    fn sleep_ms(&mut self, ms: u64) {
        // WASI's monotonic clock: the call waits in the host, not spinning in the guest.
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Sends a REST request through host `http` with `timeout_ms` (the host clamps it to the call's
/// remaining deadline). A destination outside the allow-list, an invalid request and an
/// oversized answer are not retryable; timeouts and transport failures are.
fn send_rest(
    request: &HttpRequestSpec,
    timeout_ms: u32,
) -> Result<crate::outbound::HttpAnswer, TransportFailure> {
    let wire = http::Request {
        method: request.method.to_string(),
        url: request.url.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
        timeout_ms: Some(timeout_ms),
    };
    http::send(&wire)
        .map(|response| crate::outbound::HttpAnswer {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
        .map_err(|err| match err {
            http::Error::NotAllowed(destination) => TransportFailure {
                message: format!("{destination} is outside the plugin's http allow-list"),
                retryable: false,
            },
            http::Error::InvalidRequest(reason) => TransportFailure {
                message: format!("invalid request: {reason}"),
                retryable: false,
            },
            http::Error::TooLarge(limit) => TransportFailure {
                message: format!("body exceeded the host's {limit}-byte cap"),
                retryable: false,
            },
            http::Error::Timeout => TransportFailure {
                message: "request timed out".into(),
                retryable: true,
            },
            http::Error::Transport(reason) => TransportFailure {
                message: format!("transport failure: {reason}"),
                retryable: true,
            },
        })
}

fn logic_target(target: types::SessionTarget) -> outbound_logic::SessionTarget {
    outbound_logic::SessionTarget {
        session_id: target.session_id,
        chat_id: target.chat_id,
        chat_type: logic_chat_type(target.chat_kind),
        thread_id: target.thread_id,
        reply_to: target.reply_to,
        in_thread: target.in_thread,
    }
}

fn logic_notice(notice: types::Notice) -> outbound_logic::Notice {
    use outbound_logic::NoticeKind as Kind;
    outbound_logic::Notice {
        kind: match notice.kind {
            types::NoticeKind::BindingRequired => Kind::BindingRequired,
            types::NoticeKind::FreshContext => Kind::FreshContext,
            types::NoticeKind::AgentOffline => Kind::AgentOffline,
            types::NoticeKind::AgentArchived => Kind::AgentArchived,
            types::NoticeKind::RunError => Kind::RunError,
            types::NoticeKind::CommandUsage => Kind::CommandUsage,
            types::NoticeKind::Help => Kind::Help,
            types::NoticeKind::Status => Kind::Status,
            types::NoticeKind::Info => Kind::Info,
            types::NoticeKind::Approval => Kind::Approval,
        },
        locale: notice.locale,
        text: notice.text,
        link: notice.link,
        reference: notice.reference,
        recipient: notice.recipient,
        actions: notice
            .actions
            .into_iter()
            .map(|action| crate::render::ActionButton {
                name: action.name,
                label: action.label,
                value: action.value,
                primary: action.primary,
            })
            .collect(),
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

/// A `card.action.trigger` payload as a card action (none for other events).
fn decode_action(payload: &[u8]) -> Result<Option<card_action::CardAction>, PluginError> {
    card_action::decode_card_action(payload)
        .map_err(|err| PluginError::InvalidInput(err.to_string()))
}

/// The card action as the WIT type: the event id is the action id (Lark re-pushes an
/// unanswered callback with the same id), and the answer is due within 3 s.
fn wit_action(action: card_action::CardAction) -> types::InboundAction {
    let alt_ids = [("union_id", action.union_id), ("user_id", action.user_id)]
        .into_iter()
        .filter_map(|(scheme, id)| Some((scheme.to_string(), id?)))
        .collect();
    types::InboundAction {
        action_id: action.event_id.clone(),
        event_id: action.event_id,
        chat: Chat {
            id: action.chat_id,
            // The callback does not say whether the card's chat is a group or a direct chat.
            kind: ChatKind::Group,
            title: None,
        },
        sender: Participant {
            id: action.open_id,
            display_name: None,
            is_bot: false,
            alt_ids,
        },
        message_id: action.message_id,
        thread_id: None,
        name: action.name,
        value: action.value,
        answer_deadline_ms: Some(card_action::ANSWER_DEADLINE_MS),
        // The callback token (30 min, two uses) lets a later update replace the card.
        update_token: action.token,
        create_time_ms: action.create_time_ms,
    }
}

/// The decoded message as the WIT type. Everything is moved, not copied; the sender's
/// `union_id` and `user_id` become alt ids, and direct chats are always addressed to the bot
/// (the contract's rule; the logic type keeps `false` for them).
fn wit_message(message: decode::InboundMessage, bot: &Bot) -> InboundMessage {
    let bot = bot.identity();
    let direct = message.chat_type == decode::ChatType::Direct;
    let sender = message.sender;
    let alt_ids = match (sender.union_id, sender.user_id) {
        (None, None) => Vec::new(),
        (union_id, user_id) => [("union_id", union_id), ("user_id", user_id)]
            .into_iter()
            .filter_map(|(scheme, id)| Some((scheme.to_string(), id?)))
            .collect(),
    };
    InboundMessage {
        event_id: message.event_id,
        message_id: message.message_id,
        chat: Chat {
            id: message.chat_id,
            kind: if direct {
                ChatKind::Direct
            } else {
                ChatKind::Group
            },
            title: None,
        },
        sender: Participant {
            id: sender.open_id,
            display_name: None,
            is_bot: sender.kind == "app",
            alt_ids,
        },
        message_type: message.message_type,
        body: message.body,
        command_body: message.command_body,
        addressed_to_bot: message.addressed_to_bot || direct,
        parent_id: message.parent_id,
        root_id: message.root_id,
        thread_id: message.thread_id,
        create_time_ms: message.create_time_ms,
        mentions: message
            .mentions
            .into_iter()
            .map(|mention| Mention {
                is_bot: bot.is_mentioned_by(&mention),
                key: mention.key,
                name: mention.name,
                id: mention.open_id,
            })
            .collect(),
        attachments: message
            .attachments
            .into_iter()
            .map(|attachment| Attachment {
                kind: attachment.kind.to_string(),
                name: attachment.name,
                mime: None,
                size: None,
                ref_: attachment.key,
            })
            .collect(),
    }
}
