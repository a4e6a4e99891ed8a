//! Delivery (the `outbound` export): where a reply or notice goes and how it is sent
//! (reference §L, §S), the typing reaction (§M) and attachment downloads (§N2).
//!
//! Everything here is plain Rust. The few host calls delivery needs (HTTP, kv for the token
//! cache, logging) go through the [`LarkHost`] trait, which `component` implements on the host
//! imports, so the whole flow (token cache, token refresh, thread fallback, error
//! classification) builds and tests natively. Rendering is `render`'s; wire requests and answers
//! are `rest`'s. What a notice says is the host's: the plugin only picks its look.

use serde_json::Value;

use crate::decode::ChatType;
use crate::render::{self, Button, CardStyle, Rendered};
use crate::rest::{
    self, ApiError, ApiErrorKind, BotInfo, ReceiveIdType, TYPING_EMOJI, TenantToken,
    is_thread_reply_unsupported,
};
use crate::transport::HttpRequestSpec;

/// Prefix of the kv key the tenant token is cached under (followed by the `app_id`).
pub const TOKEN_KEY_PREFIX: &str = "tenant_access_token:";

/// Where replies to a session go (the WIT `session-target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTarget {
    /// The host's session id (for logs).
    pub session_id: String,
    /// Lark `chat_id`.
    pub chat_id: String,
    /// Direct or group chat.
    pub chat_type: ChatType,
    /// Topic thread of the session, if any.
    pub thread_id: Option<String>,
    /// Last inbound message id.
    pub reply_to: Option<String>,
    /// Whether the last trigger was inside a topic thread.
    pub in_thread: bool,
}

/// Which notice the host decided is due (the WIT `notice-kind`); it picks the card's look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The sender must bind their account: the binding card, with `link` as its button.
    BindingRequired,
    /// `new` was received.
    FreshContext,
    /// No worker is online for the agent.
    AgentOffline,
    /// The agent is archived.
    AgentArchived,
    /// A run failed: the error card.
    RunError,
    /// A command was used wrongly.
    CommandUsage,
    /// The answer to `help`.
    Help,
    /// The answer to `status`.
    Status,
    /// Anything else the host or an operator says.
    Info,
    /// A question to approve or reject, with the host's buttons (none once decided).
    Approval,
}

/// Something the host asks the plugin to tell the user (the WIT `notice`). The text is the
/// host's, already in `locale`; the plugin adds nothing but a button label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Which notice it is.
    pub kind: NoticeKind,
    /// BCP 47 tag of the installation's locale (button labels).
    pub locale: String,
    /// The text to show.
    pub text: String,
    /// A link to offer as a button.
    pub link: Option<String>,
    /// A short reference for the operator, shown small.
    pub reference: Option<String>,
    /// When set, the `open_id` the notice is sent to privately instead of the chat.
    pub recipient: Option<String>,
    /// The host's buttons (callback buttons on the card).
    pub actions: Vec<render::ActionButton>,
}

/// What to deliver (the WIT `content`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The agent's reply: text or markdown card.
    Reply(String),
    /// A notice.
    Notice(Notice),
}

/// The messages of a notice, by its kind:
///
/// - `run-error`: the blue error card (`update_multi`);
/// - `binding-required`: the blue binding card, its button labelled for the binding;
/// - `info`, `help` and `status` without a link or reference: like a reply (text, or a markdown
///   card when the text has markdown);
/// - everything else: the grey notice card.
///
/// Cards are titled `header` (none when it is blank), show the reference small and the link as
/// a button labelled for `locale`. A notice with nothing to show sends nothing.
pub fn notice_messages(notice: &Notice, header: &str) -> Vec<Rendered> {
    let link = notice
        .link
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let reference = notice
        .reference
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let style = match notice.kind {
        NoticeKind::Approval => {
            return vec![render::approval_card(header, &notice.text, &notice.actions)];
        }
        NoticeKind::RunError => CardStyle::Error,
        NoticeKind::BindingRequired => CardStyle::Binding,
        NoticeKind::Info | NoticeKind::Help | NoticeKind::Status
            if link.is_none() && reference.is_none() =>
        {
            return render::reply_messages(&notice.text);
        }
        _ => CardStyle::Notice,
    };
    if notice.text.trim().is_empty() && link.is_none() && reference.is_none() {
        return Vec::new();
    }
    let button = link.map(|url| Button {
        label: render::link_label(&notice.locale, notice.kind == NoticeKind::BindingRequired),
        url,
    });
    vec![render::notice_card(
        style,
        header,
        &notice.text,
        reference,
        button,
    )]
}

/// Where the messages of one delivery go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Chat-level send (`receive_id_type=chat_id`).
    Chat {
        /// Lark `chat_id`.
        chat_id: String,
    },
    /// Threaded reply to `message_id` (`reply_in_thread=true`), falling back to a chat-level
    /// send to `chat_id` when Lark says the thread reply is impossible.
    Thread {
        /// The last inbound message of the session.
        message_id: String,
        /// Fallback chat.
        chat_id: String,
    },
    /// A DM (`receive_id_type=open_id`).
    Direct {
        /// The user's `open_id`.
        open_id: String,
    },
}

/// A failed delivery (the WIT `delivery-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// Lark `code`, when Lark answered with one.
    pub code: Option<i64>,
    /// What went wrong.
    pub message: String,
    /// Whether retrying later may help: rate limits, 5xx, transport failures.
    pub retryable: bool,
    /// How long a rate-limited send must wait before its retry, from Lark's
    /// `x-ogw-ratelimit-reset` header (seconds), so the host's outbox does not retry into the
    /// same window.
    pub retry_after_ms: Option<u32>,
}

impl DeliveryFailure {
    /// A failure found before anything was sent: never retryable.
    pub fn invalid(message: impl Into<String>) -> Self {
        DeliveryFailure {
            code: None,
            message: message.into(),
            retryable: false,
            retry_after_ms: None,
        }
    }
}

/// The messages of a delivery and where they go. Validation happens here, before any token is
/// fetched: a chat destination needs a `chat_id`, a private notice a non-blank recipient. An
/// empty message list (blank reply) means nothing is sent.
///
/// A notice with a `recipient` goes privately to that `open_id` (`receive_id_type=open_id`),
/// whatever the session's chat; everything else goes to the session's chat ([`destination`]).
pub fn plan_delivery(
    target: &SessionTarget,
    content: &Content,
    header: &str,
) -> Result<(Destination, Vec<Rendered>), DeliveryFailure> {
    let (recipient, messages) = match content {
        Content::Reply(text) => (None, render::reply_messages(text)),
        Content::Notice(notice) => (notice.recipient.as_deref(), notice_messages(notice, header)),
    };
    if let Some(recipient) = recipient {
        if recipient.trim().is_empty() {
            return Err(DeliveryFailure::invalid(
                "notice has a blank recipient to send to privately",
            ));
        }
        return Ok((
            Destination::Direct {
                open_id: recipient.to_string(),
            },
            messages,
        ));
    }
    if target.chat_id.trim().is_empty() {
        return Err(DeliveryFailure::invalid(format!(
            "session {} has no chat_id to deliver to",
            target.session_id
        )));
    }
    Ok((destination(target), messages))
}

/// A threaded reply to the last message when the last trigger was in a topic, a chat-level
/// send otherwise (ordinary replies are not native replies, §L5).
pub fn destination(target: &SessionTarget) -> Destination {
    match target.reply_to.as_deref().filter(|id| !id.is_empty()) {
        Some(message_id) if target.in_thread => Destination::Thread {
            message_id: message_id.to_string(),
            chat_id: target.chat_id.clone(),
        },
        _ => Destination::Chat {
            chat_id: target.chat_id.clone(),
        },
    }
}

/// An HTTP answer of any status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

/// A request that produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportFailure {
    /// What happened.
    pub message: String,
    /// Timeouts and connection failures are; a denied destination or a bad request is not.
    pub retryable: bool,
}

/// The host calls delivery needs. `component` implements it on the host imports; kv failures
/// are the implementation's to log and swallow (a cache miss only costs a token call).
pub trait LarkHost {
    /// Sends one request through host `http`.
    fn send(&mut self, request: &HttpRequestSpec) -> Result<HttpAnswer, TransportFailure>;
    /// Reads a live kv value.
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Writes a kv value that expires after `ttl_ms`.
    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64);
    /// Deletes a kv value.
    fn kv_delete(&mut self, key: &str);
    /// Logs a warning (never with secrets or tokens in it).
    fn warn(&mut self, message: &str, fields: &[(&str, &str)]);
    /// Wall-clock milliseconds (pacing of card updates; 0 when unknown, which turns pacing by
    /// time off).
    fn now_ms(&mut self) -> u64 {
        0
    }
    /// Waits `ms` milliseconds (pacing of card updates).
    fn sleep_ms(&mut self, _ms: u64) {}
}

/// The installation's Open Platform credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Open Platform base URL (blank = `https://open.feishu.cn`).
    pub base_url: String,
    /// `app_id`.
    pub app_id: String,
    /// `app_secret`.
    pub app_secret: String,
}

/// Why one REST call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    Api(ApiError),
    Transport(TransportFailure),
}

impl CallError {
    pub(crate) fn code(&self) -> Option<i64> {
        match self {
            CallError::Api(err) if err.code != 0 => Some(err.code),
            _ => None,
        }
    }

    /// As a plugin failure; with `credentials` (the token call) any refusal means the
    /// credentials are wrong.
    fn into_plugin_failure(self, what: &str, credentials: bool) -> PluginFailure {
        match self {
            CallError::Transport(failure) if failure.retryable => {
                PluginFailure::Retryable(format!("{what}: {}", failure.message))
            }
            CallError::Transport(failure) => {
                PluginFailure::Fatal(format!("{what}: {}", failure.message))
            }
            CallError::Api(err)
                if err.kind() == ApiErrorKind::RateLimited || err.http_status >= 500 =>
            {
                PluginFailure::Retryable(format!("{what}: {err}"))
            }
            CallError::Api(err)
                if (credentials && (err.code != 0 || err.http_status >= 400))
                    || matches!(
                        err.kind(),
                        ApiErrorKind::TokenInvalid | ApiErrorKind::Permission
                    ) =>
            {
                PluginFailure::Unauthorized(format!("{what}: {err}"))
            }
            CallError::Api(err) => PluginFailure::Fatal(format!("{what}: {err}")),
        }
    }

    pub(crate) fn into_failure(self, what: &str) -> DeliveryFailure {
        match self {
            CallError::Api(err) => DeliveryFailure {
                code: (err.code != 0).then_some(err.code),
                retryable: err.kind() == ApiErrorKind::RateLimited || err.http_status >= 500,
                retry_after_ms: (err.kind() == ApiErrorKind::RateLimited)
                    .then_some(err.retry_after_s)
                    .flatten()
                    .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX)),
                message: format!("{what}: {err}"),
            },
            CallError::Transport(failure) => DeliveryFailure {
                code: None,
                retryable: failure.retryable,
                retry_after_ms: None,
                message: format!("{what}: {}", failure.message),
            },
        }
    }
}

/// A failed call that is not a delivery (the WIT `plugin-error`): setting an installation up,
/// downloading an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFailure {
    /// The request cannot be made as asked (an empty id).
    InvalidInput(String),
    /// The credentials are missing or wrong, or the app lacks the bot capability or a scope.
    Unauthorized(String),
    /// A transient failure: rate limit, 5xx, timeout, connection failure.
    Retryable(String),
    /// Anything else (an unreadable answer, a destination outside the allow-list).
    Fatal(String),
}

/// A Lark Open Platform client over a [`LarkHost`] for one call of the plugin.
pub struct LarkClient<'a, H: LarkHost> {
    pub(crate) host: &'a mut H,
    pub(crate) credentials: &'a Credentials,
    idempotency_key: Option<String>,
}

impl<'a, H: LarkHost> LarkClient<'a, H> {
    /// A client for `credentials`.
    pub fn new(host: &'a mut H, credentials: &'a Credentials) -> Self {
        LarkClient {
            host,
            credentials,
            idempotency_key: None,
        }
    }

    /// Sends every message of the next deliveries with a Lark `uuid` derived from `key` (the
    /// n-th message of a split reply gets `{key}-{n}`), so a delivery retried after an unknown
    /// outcome is not posted twice. An empty key sends none.
    pub fn with_idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = (!key.is_empty()).then(|| key.to_string());
        self
    }

    fn uuid(&self, index: usize) -> Option<String> {
        self.idempotency_key
            .as_ref()
            .map(|key| format!("{key}-{index}"))
    }

    /// Renders and sends `content` (see [`plan_delivery`]); returns the id of the first message
    /// sent (none when there was nothing to send). A threaded reply that Lark refuses with a
    /// thread-unsupported code ([`is_thread_reply_unsupported`]) is sent once more at chat level,
    /// and the rest of a split reply follows it there.
    pub fn deliver(
        &mut self,
        target: &SessionTarget,
        content: &Content,
        header: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let (mut destination, messages) = plan_delivery(target, content, header)?;
        if messages.is_empty() {
            return Ok(None);
        }
        self.check_credentials()?;
        let mut first_id = None;
        for (index, message) in messages.iter().enumerate() {
            let uuid = self.uuid(index);
            let id = self.send_to(
                &mut destination,
                &target.session_id,
                message,
                uuid.as_deref(),
            )?;
            first_id.get_or_insert(id);
        }
        Ok(first_id)
    }

    /// Replaces a card the bot sent with `card`: through the press's callback token when there
    /// is one (`interactive/v1/card/update`), else by the message id (`PATCH` of the message).
    pub fn update_card(
        &mut self,
        message_id: Option<&str>,
        callback_token: Option<&str>,
        card: &Value,
    ) -> Result<(), DeliveryFailure> {
        self.check_credentials()?;
        let base = self.credentials.base_url.clone();
        match (
            callback_token.filter(|t| !t.is_empty()),
            message_id.filter(|m| !m.is_empty()),
        ) {
            (Some(callback), _) => self
                .authorized(|token| rest::card_update_request(&base, token, callback, card))
                .map(drop)
                .map_err(|e| e.into_failure("card update")),
            (None, Some(id)) => self
                .authorized(|token| rest::patch_message_request(&base, token, id, card))
                .map(drop)
                .map_err(|e| e.into_failure("message update")),
            (None, None) => Err(DeliveryFailure::invalid(
                "neither a callback token nor a message id names the card to update",
            )),
        }
    }

    /// Sends one message to `destination` with Lark's `uuid`. A threaded reply that Lark
    /// refuses with a thread-unsupported code ([`is_thread_reply_unsupported`]) is sent once
    /// more at chat level, and `destination` becomes that chat for the messages that follow.
    pub(crate) fn send_to(
        &mut self,
        destination: &mut Destination,
        session_id: &str,
        message: &Rendered,
        uuid: Option<&str>,
    ) -> Result<String, DeliveryFailure> {
        let sent = match &*destination {
            Destination::Chat { chat_id } => {
                self.send(ReceiveIdType::ChatId, chat_id, message, uuid)
            }
            Destination::Direct { open_id } => {
                self.send(ReceiveIdType::OpenId, open_id, message, uuid)
            }
            Destination::Thread {
                message_id,
                chat_id,
            } => match self.reply_in_thread(message_id, message, uuid) {
                Err(err) if err.code().is_some_and(is_thread_reply_unsupported) => {
                    let code = err.code().unwrap_or_default().to_string();
                    self.host.warn(
                        "lark thread reply refused; sending at chat level",
                        &[
                            ("session", session_id),
                            ("message_id", message_id),
                            ("code", &code),
                        ],
                    );
                    let chat_id = chat_id.clone();
                    *destination = Destination::Chat {
                        chat_id: chat_id.clone(),
                    };
                    self.send(ReceiveIdType::ChatId, &chat_id, message, uuid)
                }
                other => other,
            },
        };
        sent.map_err(|err| err.into_failure("lark send failed"))
    }

    /// Adds the typing reaction to `message_id` and returns its reaction id (none, without a
    /// call, when the message id is empty).
    pub fn add_typing(&mut self, message_id: &str) -> Result<Option<String>, DeliveryFailure> {
        if message_id.is_empty() {
            return Ok(None);
        }
        self.check_credentials()?;
        let base = self.credentials.base_url.clone();
        let value = self
            .authorized(|token| rest::add_reaction_request(&base, token, message_id, TYPING_EMOJI))
            .map_err(|err| err.into_failure("lark add reaction failed"))?;
        match value.pointer("/data/reaction_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Some(id.to_string())),
            _ => Err(DeliveryFailure::invalid(
                "lark add reaction answer has no data.reaction_id",
            )),
        }
    }

    /// Removes the reaction `reaction_id` from `message_id` (nothing to do when either is
    /// empty).
    pub fn remove_typing(
        &mut self,
        message_id: &str,
        reaction_id: &str,
    ) -> Result<(), DeliveryFailure> {
        if message_id.is_empty() || reaction_id.is_empty() {
            return Ok(());
        }
        self.check_credentials()?;
        let base = self.credentials.base_url.clone();
        self.authorized(|token| {
            rest::delete_reaction_request(&base, token, message_id, reaction_id)
        })
        .map(|_| ())
        .map_err(|err| err.into_failure("lark remove reaction failed"))
    }

    /// The bot's identity (`GET /open-apis/bot/v3/info`) with a freshly fetched tenant token:
    /// what an installation learns when it is added, checking its credentials on the way.
    pub fn bot_info(&mut self) -> Result<BotInfo, PluginFailure> {
        if self.credentials.app_id.is_empty() || self.credentials.app_secret.is_empty() {
            return Err(PluginFailure::Unauthorized(
                "installation has no app_id/app_secret".into(),
            ));
        }
        self.fetch_token()
            .map_err(|err| err.into_plugin_failure("lark tenant token failed", true))?;
        let base = self.credentials.base_url.clone();
        self.authorized_with(
            |token| rest::bot_info_request(&base, token),
            |answer| rest::parse_bot_info(answer.status, &answer.headers, &answer.body),
        )
        .map_err(|err| err.into_plugin_failure("lark bot info failed", false))
    }

    /// Downloads the resource `key` (an `image_key` or `file_key`) of the message `message_id`
    /// through the message resource API.
    pub fn fetch_resource(
        &mut self,
        message_id: &str,
        key: &str,
    ) -> Result<rest::Resource, PluginFailure> {
        if message_id.trim().is_empty() || key.trim().is_empty() {
            return Err(PluginFailure::InvalidInput(
                "a resource download needs a message id and a key".into(),
            ));
        }
        if self.credentials.app_id.is_empty() || self.credentials.app_secret.is_empty() {
            return Err(PluginFailure::Unauthorized(
                "installation has no app_id/app_secret".into(),
            ));
        }
        let base = self.credentials.base_url.clone();
        self.authorized_with(
            |token| rest::message_resource_request(&base, token, message_id, key),
            |answer| rest::parse_resource(answer.status, &answer.headers, answer.body),
        )
        .map_err(|err| err.into_plugin_failure("lark resource download failed", false))
    }

    pub(crate) fn check_credentials(&self) -> Result<(), DeliveryFailure> {
        if self.credentials.app_id.is_empty() || self.credentials.app_secret.is_empty() {
            return Err(DeliveryFailure::invalid(
                "installation has no app_id/app_secret: configure both to deliver to Lark",
            ));
        }
        Ok(())
    }

    fn send(
        &mut self,
        receive_id_type: ReceiveIdType,
        receive_id: &str,
        message: &Rendered,
        uuid: Option<&str>,
    ) -> Result<String, CallError> {
        let base = self.credentials.base_url.clone();
        let value = self.authorized(|token| {
            rest::with_uuid(
                rest::send_message_request(
                    &base,
                    token,
                    receive_id_type,
                    receive_id,
                    message.msg_type,
                    &message.content,
                ),
                uuid,
            )
        })?;
        sent_message_id(&value)
    }

    fn reply_in_thread(
        &mut self,
        message_id: &str,
        message: &Rendered,
        uuid: Option<&str>,
    ) -> Result<String, CallError> {
        let base = self.credentials.base_url.clone();
        let value = self.authorized(|token| {
            rest::with_uuid(
                rest::reply_message_request(
                    &base,
                    token,
                    message_id,
                    message.msg_type,
                    &message.content,
                    true,
                ),
                uuid,
            )
        })?;
        sent_message_id(&value)
    }

    /// Runs an authorized call; when Lark says the token is invalid (99991663/99991664/
    /// 99991671) the cached token is dropped and the call runs once more with a new one.
    pub(crate) fn authorized(
        &mut self,
        build: impl Fn(&str) -> HttpRequestSpec,
    ) -> Result<Value, CallError> {
        self.authorized_with(build, |answer| {
            rest::check_response(answer.status, &answer.headers, &answer.body)
        })
    }

    /// [`Self::authorized`] with the answer read by `read`.
    fn authorized_with<T>(
        &mut self,
        build: impl Fn(&str) -> HttpRequestSpec,
        read: impl Fn(HttpAnswer) -> Result<T, ApiError>,
    ) -> Result<T, CallError> {
        let token = self.token()?;
        let answer = self
            .host
            .send(&build(&token))
            .map_err(CallError::Transport)?;
        match read(answer) {
            Err(err) if err.kind() == ApiErrorKind::TokenInvalid => {
                let code = err.code.to_string();
                self.host.warn(
                    "lark tenant token rejected; fetching a new one",
                    &[("code", &code)],
                );
                self.host.kv_delete(&self.token_key());
                let token = self.fetch_token()?;
                let answer = self
                    .host
                    .send(&build(&token))
                    .map_err(CallError::Transport)?;
                read(answer).map_err(CallError::Api)
            }
            other => other.map_err(CallError::Api),
        }
    }

    /// The cached tenant token, or a new one.
    fn token(&mut self) -> Result<String, CallError> {
        if let Some(token) = self
            .host
            .kv_get(&self.token_key())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|token| !token.is_empty())
        {
            return Ok(token);
        }
        self.fetch_token()
    }

    /// Fetches a tenant token and caches it for [`TenantToken::cache_ttl_ms`].
    fn fetch_token(&mut self) -> Result<String, CallError> {
        let request = rest::tenant_token_request(
            &self.credentials.base_url,
            &self.credentials.app_id,
            &self.credentials.app_secret,
        );
        let answer = self.host.send(&request).map_err(CallError::Transport)?;
        let token: TenantToken =
            rest::parse_tenant_token(answer.status, &answer.headers, &answer.body).map_err(
                |mut err| {
                    err.msg = format!("tenant token: {}", err.msg);
                    CallError::Api(err)
                },
            )?;
        self.host.kv_set(
            &self.token_key(),
            token.token.as_bytes(),
            token.cache_ttl_ms(),
        );
        Ok(token.token)
    }

    fn token_key(&self) -> String {
        format!("{TOKEN_KEY_PREFIX}{}", self.credentials.app_id)
    }
}

/// `data.message_id` of a send or reply answer (its absence is an error, §S3).
fn sent_message_id(value: &Value) -> Result<String, CallError> {
    match value.pointer("/data/message_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(CallError::Api(ApiError {
            http_status: 200,
            code: 0,
            msg: "response has no `data.message_id`".into(),
            retry_after_s: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use serde_json::json;

    use super::*;

    fn target(in_thread: bool) -> SessionTarget {
        SessionTarget {
            session_id: "s-1".into(),
            chat_id: "oc_1".into(),
            chat_type: ChatType::Group,
            thread_id: in_thread.then(|| "omt_1".to_string()),
            reply_to: Some("om_9".into()),
            in_thread,
        }
    }

    #[test]
    fn destinations_follow_the_last_trigger() {
        assert_eq!(
            destination(&target(true)),
            Destination::Thread {
                message_id: "om_9".into(),
                chat_id: "oc_1".into()
            }
        );
        assert_eq!(
            destination(&target(false)),
            Destination::Chat {
                chat_id: "oc_1".into()
            }
        );
        let mut no_anchor = target(true);
        no_anchor.reply_to = None;
        assert_eq!(
            destination(&no_anchor),
            Destination::Chat {
                chat_id: "oc_1".into()
            }
        );
    }

    fn notice(kind: NoticeKind, text: &str) -> Notice {
        Notice {
            actions: Vec::new(),
            kind,
            locale: "en".into(),
            text: text.into(),
            link: None,
            reference: None,
            recipient: None,
        }
    }

    #[test]
    fn plans_for_every_content() {
        let header = "Helper";
        let plan = |content: Content| plan_delivery(&target(false), &content, header).unwrap().1;
        assert_eq!(
            plan(Content::Reply("hi".into())),
            vec![render::text_message("hi")]
        );
        assert_eq!(
            plan(Content::Reply("# hi".into())),
            vec![render::markdown_card("# hi")]
        );
        assert!(plan(Content::Reply("   ".into())).is_empty());

        // A failed run: the blue error card with the host's text and the reference.
        let mut run_error = notice(NoticeKind::RunError, "Run failed: boom");
        run_error.reference = Some("run-7".into());
        assert_eq!(
            plan(Content::Notice(run_error)),
            vec![render::notice_card(
                CardStyle::Error,
                header,
                "Run failed: boom",
                Some("run-7"),
                None
            )]
        );

        // The grey card, whatever the text.
        for kind in [
            NoticeKind::AgentOffline,
            NoticeKind::AgentArchived,
            NoticeKind::FreshContext,
            NoticeKind::CommandUsage,
        ] {
            assert_eq!(
                plan(Content::Notice(notice(kind, "host text"))),
                vec![render::notice_card(
                    CardStyle::Notice,
                    header,
                    "host text",
                    None,
                    None
                )],
                "{kind:?}"
            );
        }

        // Informational answers read like replies unless they carry a link or a reference.
        for kind in [NoticeKind::Info, NoticeKind::Help, NoticeKind::Status] {
            assert_eq!(
                plan(Content::Notice(notice(kind, "operator says hi"))),
                vec![render::text_message("operator says hi")],
                "{kind:?}"
            );
            assert_eq!(
                plan(Content::Notice(notice(kind, "**bold**"))),
                vec![render::markdown_card("**bold**")],
                "{kind:?}"
            );
        }
        let mut linked = notice(NoticeKind::Info, "see the dashboard");
        linked.link = Some("https://ops.example/d".into());
        linked.locale = "zh-CN".into();
        assert_eq!(
            plan(Content::Notice(linked)),
            vec![render::notice_card(
                CardStyle::Notice,
                header,
                "see the dashboard",
                None,
                Some(Button {
                    label: render::LINK_LABEL_ZH,
                    url: "https://ops.example/d"
                })
            )]
        );

        // Nothing to show: nothing is sent.
        assert!(plan(Content::Notice(notice(NoticeKind::FreshContext, " "))).is_empty());

        // The binding prompt is private, whatever the session's chat.
        let mut binding = notice(NoticeKind::BindingRequired, "Bind your account first.");
        binding.link = Some("https://app.example/bind?token=x".into());
        binding.recipient = Some("ou_alice".into());
        let (destination, messages) =
            plan_delivery(&target(true), &Content::Notice(binding), header).unwrap();
        assert_eq!(
            destination,
            Destination::Direct {
                open_id: "ou_alice".into()
            }
        );
        assert_eq!(
            messages,
            vec![render::notice_card(
                CardStyle::Binding,
                header,
                "Bind your account first.",
                None,
                Some(Button {
                    label: render::BINDING_LABEL_EN,
                    url: "https://app.example/bind?token=x"
                })
            )]
        );
    }

    #[test]
    fn plans_are_validated_before_anything_is_sent() {
        let mut no_chat = target(false);
        no_chat.chat_id = String::new();
        let err = plan_delivery(&no_chat, &Content::Reply("hi".into()), "H").unwrap_err();
        assert!(!err.retryable && err.message.contains("chat_id"), "{err:?}");
        let private = |recipient: &str| {
            let mut notice = notice(NoticeKind::Info, "psst");
            notice.recipient = Some(recipient.into());
            Content::Notice(notice)
        };
        assert!(plan_delivery(&target(false), &private(" "), "H").is_err());
        // A private notice needs no chat.
        assert!(plan_delivery(&no_chat, &private("ou_1"), "H").is_ok());
    }

    /// A scripted host: answers requests in order and records them; kv is a map.
    #[derive(Default)]
    struct Scripted {
        answers: VecDeque<Result<HttpAnswer, TransportFailure>>,
        requests: Vec<HttpRequestSpec>,
        kv: HashMap<String, (Vec<u8>, u64)>,
        warnings: Vec<String>,
    }

    impl Scripted {
        fn answer(mut self, status: u16, body: Value) -> Self {
            self.answers.push_back(Ok(HttpAnswer {
                status,
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            }));
            self
        }

        fn paths(&self) -> Vec<String> {
            self.requests
                .iter()
                .map(|request| {
                    let path = request.url.trim_start_matches("https://open.feishu.cn");
                    format!("{} {path}", request.method)
                })
                .collect()
        }
    }

    impl LarkHost for Scripted {
        fn send(&mut self, request: &HttpRequestSpec) -> Result<HttpAnswer, TransportFailure> {
            self.requests.push(request.clone());
            self.answers.pop_front().expect("a scripted answer")
        }
        fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.kv.get(key).map(|(value, _)| value.clone())
        }
        fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
            self.kv.insert(key.into(), (value.to_vec(), ttl_ms));
        }
        fn kv_delete(&mut self, key: &str) {
            self.kv.remove(key);
        }
        fn warn(&mut self, message: &str, _fields: &[(&str, &str)]) {
            self.warnings.push(message.into());
        }
    }

    fn credentials() -> Credentials {
        Credentials {
            base_url: String::new(),
            app_id: "cli_1".into(),
            app_secret: "s3cret".into(),
        }
    }

    fn token_answer(token: &str, expire: u64) -> Value {
        json!({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})
    }

    fn sent(id: &str) -> Value {
        json!({"code": 0, "msg": "success", "data": {"message_id": id}})
    }

    fn lark_error(code: i64) -> Value {
        json!({"code": code, "msg": "refused"})
    }

    fn auth_of(request: &HttpRequestSpec) -> &str {
        &request.headers[0].1
    }

    #[test]
    fn token_is_fetched_once_and_cached_with_its_ttl() {
        let creds = credentials();
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 10))
            .answer(200, sent("om_a"))
            .answer(200, sent("om_b"));
        let mut client = LarkClient::new(&mut host, &creds);
        let content = Content::Reply("hi".into());
        assert_eq!(
            client.deliver(&target(false), &content, "H"),
            Ok(Some("om_a".into()))
        );
        assert_eq!(
            client.deliver(&target(false), &content, "H"),
            Ok(Some("om_b".into()))
        );
        assert_eq!(
            host.paths(),
            vec![
                "POST /open-apis/auth/v3/tenant_access_token/internal",
                "POST /open-apis/im/v1/messages?receive_id_type=chat_id",
                "POST /open-apis/im/v1/messages?receive_id_type=chat_id",
            ]
        );
        assert_eq!(auth_of(&host.requests[2]), "Bearer t-1");
        assert_eq!(
            host.kv.get("tenant_access_token:cli_1"),
            Some(&(b"t-1".to_vec(), 60_000)),
            "expire 10 s is clamped to 120 s, minus 60 s"
        );
    }

    #[test]
    fn an_invalid_token_is_dropped_and_the_call_retried_once() {
        let creds = credentials();
        let mut host = Scripted::default()
            .answer(200, token_answer("t-old", 7200))
            .answer(200, lark_error(99_991_663))
            .answer(200, token_answer("t-new", 7200))
            .answer(200, sent("om_a"));
        let mut client = LarkClient::new(&mut host, &creds);
        assert_eq!(
            client.deliver(&target(false), &Content::Reply("hi".into()), "H"),
            Ok(Some("om_a".into()))
        );
        assert_eq!(auth_of(&host.requests[1]), "Bearer t-old");
        assert_eq!(auth_of(&host.requests[3]), "Bearer t-new");
        assert_eq!(host.kv["tenant_access_token:cli_1"].0, b"t-new");

        // A second rejection is not retried again and is not retryable.
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(200, lark_error(99_991_664))
            .answer(200, token_answer("t-2", 7200))
            .answer(200, lark_error(99_991_664));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!(err.code, Some(99_991_664));
        assert!(!err.retryable);
        assert_eq!(host.requests.len(), 4);
    }

    #[test]
    fn a_thread_reply_falls_back_to_the_chat_only_on_classified_codes() {
        let creds = credentials();
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(400, lark_error(230_011))
            .answer(200, sent("om_chat"));
        let receipt = LarkClient::new(&mut host, &creds)
            .deliver(&target(true), &Content::Reply("hi".into()), "H")
            .unwrap();
        assert_eq!(receipt, Some("om_chat".into()));
        assert_eq!(
            host.paths()[1..],
            [
                "POST /open-apis/im/v1/messages/om_9/reply",
                "POST /open-apis/im/v1/messages?receive_id_type=chat_id",
            ]
        );
        assert_eq!(host.warnings.len(), 1);

        for (status, code, retryable) in
            [(400, 230_020, true), (400, 230_049, false), (503, 0, true)]
        {
            let body = if code == 0 {
                json!({"oops": true})
            } else {
                lark_error(code)
            };
            let mut host = Scripted::default()
                .answer(200, token_answer("t-1", 7200))
                .answer(status, body);
            let err = LarkClient::new(&mut host, &creds)
                .deliver(&target(true), &Content::Reply("hi".into()), "H")
                .unwrap_err();
            assert_eq!(host.requests.len(), 2, "code {code}: no fallback");
            assert_eq!(err.code, (code != 0).then_some(code));
            assert_eq!(err.retryable, retryable, "code {code}");
        }
    }

    #[test]
    fn failures_are_classified() {
        let creds = credentials();
        // Token endpoint refuses the secret: not retryable, code kept.
        let mut host = Scripted::default().answer(200, lark_error(10_014));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!((err.code, err.retryable), (Some(10_014), false));
        assert!(err.message.contains("tenant token"), "{}", err.message);

        // Gateway rate limit on the send: retryable.
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(429, lark_error(99_991_400));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!((err.code, err.retryable), (Some(99_991_400), true));
        assert_eq!(err.retry_after_ms, None, "no reset header, no wait");

        // A 429 with `x-ogw-ratelimit-reset` tells the host how long to wait.
        let mut host = Scripted::default().answer(200, token_answer("t-1", 7200));
        host.answers.push_back(Ok(HttpAnswer {
            status: 429,
            headers: vec![("X-Ogw-Ratelimit-Reset".into(), " 3 ".into())],
            body: lark_error(99_991_400).to_string().into_bytes(),
        }));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!(
            (err.code, err.retryable, err.retry_after_ms),
            (Some(99_991_400), true, Some(3_000))
        );

        // A reset header on a refusal that is not a rate limit is ignored.
        let mut host = Scripted::default().answer(200, token_answer("t-1", 7200));
        host.answers.push_back(Ok(HttpAnswer {
            status: 400,
            headers: vec![("x-ogw-ratelimit-reset".into(), "3".into())],
            body: lark_error(230_049).to_string().into_bytes(),
        }));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!((err.retryable, err.retry_after_ms), (false, None));

        // Transport failure: as the host classified it.
        let mut host = Scripted::default();
        host.answers.push_back(Err(TransportFailure {
            message: "connection refused".into(),
            retryable: true,
        }));
        let err = LarkClient::new(&mut host, &creds)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert_eq!((err.code, err.retryable), (None, true));

        // Missing credentials: nothing is sent.
        let none = Credentials {
            app_secret: String::new(),
            ..credentials()
        };
        let mut host = Scripted::default();
        let err = LarkClient::new(&mut host, &none)
            .deliver(&target(false), &Content::Reply("hi".into()), "H")
            .unwrap_err();
        assert!(!err.retryable);
        assert!(host.requests.is_empty());
    }

    #[test]
    fn blank_replies_send_nothing() {
        let creds = credentials();
        let mut host = Scripted::default();
        assert_eq!(
            LarkClient::new(&mut host, &creds).deliver(
                &target(false),
                &Content::Reply("\n".into()),
                "H"
            ),
            Ok(None)
        );
        assert!(host.requests.is_empty());
    }

    #[test]
    fn typing_adds_and_removes_the_reaction() {
        let creds = credentials();
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(200, json!({"code": 0, "data": {"reaction_id": "r_1"}}))
            .answer(200, json!({"code": 0, "msg": "success"}));
        let mut client = LarkClient::new(&mut host, &creds);
        assert_eq!(client.add_typing("om_1"), Ok(Some("r_1".into())));
        assert_eq!(client.remove_typing("om_1", "r_1"), Ok(()));
        assert_eq!(client.add_typing(""), Ok(None));
        assert_eq!(client.remove_typing("om_1", ""), Ok(()));
        assert_eq!(
            host.paths()[1..],
            [
                "POST /open-apis/im/v1/messages/om_1/reactions",
                "DELETE /open-apis/im/v1/messages/om_1/reactions/r_1",
            ]
        );

        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(400, lark_error(230_020));
        let err = LarkClient::new(&mut host, &creds)
            .add_typing("om_1")
            .unwrap_err();
        assert_eq!((err.code, err.retryable), (Some(230_020), true));
    }

    #[test]
    fn bot_info_fetches_a_fresh_token_and_reads_the_bot() {
        let creds = credentials();
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(
                200,
                json!({"code": 0, "msg": "ok", "bot": {"open_id": "ou_bot", "app_name": "Helper"}}),
            );
        host.kv
            .insert("tenant_access_token:cli_1".into(), (b"stale".to_vec(), 1));
        let info = LarkClient::new(&mut host, &creds).bot_info().unwrap();
        assert_eq!(
            info,
            BotInfo {
                open_id: "ou_bot".into(),
                app_name: "Helper".into()
            }
        );
        assert_eq!(
            host.paths(),
            vec![
                "POST /open-apis/auth/v3/tenant_access_token/internal",
                "GET /open-apis/bot/v3/info",
            ]
        );
        assert_eq!(auth_of(&host.requests[1]), "Bearer t-1");
    }

    #[test]
    fn bot_info_failures_say_what_the_operator_must_do() {
        let creds = credentials();
        // A refused secret: unauthorized.
        let mut host = Scripted::default().answer(400, lark_error(10_014));
        let err = LarkClient::new(&mut host, &creds).bot_info().unwrap_err();
        assert!(matches!(err, PluginFailure::Unauthorized(_)), "{err:?}");
        // Missing credentials: unauthorized, nothing sent.
        let none = Credentials {
            app_id: String::new(),
            ..credentials()
        };
        let mut host = Scripted::default();
        let err = LarkClient::new(&mut host, &none).bot_info().unwrap_err();
        assert!(matches!(err, PluginFailure::Unauthorized(_)), "{err:?}");
        assert!(host.requests.is_empty());
        // A transport failure or a 5xx: retryable.
        let mut host = Scripted::default();
        host.answers.push_back(Err(TransportFailure {
            message: "connection refused".into(),
            retryable: true,
        }));
        let err = LarkClient::new(&mut host, &creds).bot_info().unwrap_err();
        assert!(matches!(err, PluginFailure::Retryable(_)), "{err:?}");
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(503, json!({"oops": true}));
        let err = LarkClient::new(&mut host, &creds).bot_info().unwrap_err();
        assert!(matches!(err, PluginFailure::Retryable(_)), "{err:?}");
        // The app has no bot: a permission code is the operator's to fix.
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(400, lark_error(99_991_672));
        let err = LarkClient::new(&mut host, &creds).bot_info().unwrap_err();
        assert!(matches!(err, PluginFailure::Unauthorized(_)), "{err:?}");
    }

    #[test]
    fn resources_are_downloaded_by_key_type() {
        let creds = credentials();
        let mut host = Scripted::default().answer(200, token_answer("t-1", 7200));
        for (key, mime) in [("img_v3_1", "image/png"), ("file_v3_1", "video/mp4")] {
            host.answers.push_back(Ok(HttpAnswer {
                status: 200,
                headers: vec![("Content-Type".into(), mime.into())],
                body: vec![0, 1, 2],
            }));
            let resource = LarkClient::new(&mut host, &creds)
                .fetch_resource("om_1", key)
                .unwrap();
            assert_eq!(resource.mime.as_deref(), Some(mime));
            assert_eq!(resource.body, [0, 1, 2]);
        }
        assert_eq!(
            host.paths()[1..],
            [
                "GET /open-apis/im/v1/messages/om_1/resources/img_v3_1?type=image",
                "GET /open-apis/im/v1/messages/om_1/resources/file_v3_1?type=file",
            ]
        );

        // A JSON error envelope is an error with its code, also with status 200.
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(400, lark_error(234_003));
        let err = LarkClient::new(&mut host, &creds)
            .fetch_resource("om_1", "file_1")
            .unwrap_err();
        assert!(
            matches!(&err, PluginFailure::Fatal(message) if message.contains("code=234003")),
            "{err:?}"
        );
        let mut host = Scripted::default().answer(200, token_answer("t-1", 7200));
        host.answers.push_back(Ok(HttpAnswer {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: br#"{"code":230110,"msg":"message deleted"}"#.to_vec(),
        }));
        let err = LarkClient::new(&mut host, &creds)
            .fetch_resource("om_1", "file_1")
            .unwrap_err();
        assert!(
            matches!(&err, PluginFailure::Fatal(message) if message.contains("code=230110")),
            "{err:?}"
        );
        // Rate limits are retryable, a missing scope is the operator's.
        let mut host = Scripted::default()
            .answer(200, token_answer("t-1", 7200))
            .answer(429, lark_error(99_991_400))
            .answer(400, lark_error(99_991_672));
        let mut client = LarkClient::new(&mut host, &creds);
        assert!(matches!(
            client.fetch_resource("om_1", "img_1"),
            Err(PluginFailure::Retryable(_))
        ));
        assert!(matches!(
            client.fetch_resource("om_1", "img_1"),
            Err(PluginFailure::Unauthorized(_))
        ));
        // A JSON file is a file.
        let mut host = Scripted::default().answer(200, token_answer("t-1", 7200));
        host.answers.push_back(Ok(HttpAnswer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"name":"data"}"#.to_vec(),
        }));
        let resource = LarkClient::new(&mut host, &creds)
            .fetch_resource("om_1", "file_1")
            .unwrap();
        assert_eq!(resource.body, br#"{"name":"data"}"#);
        // Nothing to fetch without ids.
        let mut host = Scripted::default();
        assert!(matches!(
            LarkClient::new(&mut host, &creds).fetch_resource("", "file_1"),
            Err(PluginFailure::InvalidInput(_))
        ));
        assert!(host.requests.is_empty());
    }
}
