//! Flush decisions and delivery (the `outbound` export): what a debounced batch leads to
//! (multica-lark §J, §K5), where a reply, error or notice goes and how it is sent (§L, §S), and
//! the typing reaction (§M).
//!
//! Everything here is plain Rust. The few host calls delivery needs (HTTP, kv for the token
//! cache, logging) go through the [`LarkHost`] trait, which `component` implements on the host
//! imports, so the whole flow (token cache, token refresh, thread fallback, error
//! classification) builds and tests natively. Rendering is `render`'s; wire requests and answers
//! are `rest`'s.

use serde_json::Value;

use crate::decode::ChatType;
use crate::render::{self, Rendered};
use crate::rest::{
    self, ApiError, ApiErrorKind, ReceiveIdType, TYPING_EMOJI, TenantToken,
    is_thread_reply_unsupported,
};
use crate::transport::HttpRequestSpec;

/// A message older than this (milliseconds) gets no typing reaction (replay protection, §M1).
pub const TYPING_MAX_AGE_MS: i64 = 2 * 60 * 1000;
/// Prefix of the kv key the tenant token is cached under (followed by the `app_id`).
pub const TOKEN_KEY_PREFIX: &str = "tenant_access_token:";

/// State of the agent bound to the installation at flush time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// A worker (or a built-in agent) can take the run.
    Online,
    /// No worker is online; the run waits.
    Offline,
    /// The agent is archived; no run starts.
    Archived,
}

/// The parts of a batch message the flush decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMessage {
    /// Channel message id (empty when unknown).
    pub message_id: String,
    /// Creation time, milliseconds since the Unix epoch (≤ 0 when unknown).
    pub create_time_ms: i64,
}

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

/// A one-time binding link for an unbound sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingLink {
    /// The link the button opens.
    pub url: String,
    /// The sender to direct-message.
    pub open_id: String,
    /// Lifetime of the link (not shown: the reference card does not mention it).
    pub expires_in_minutes: u32,
}

/// Things the host asks the plugin to tell the user (the WIT `notice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Grey card: the agent is offline, the message is kept.
    AgentOffline,
    /// Grey card: the agent is archived.
    AgentArchived,
    /// Binding card as a DM to the sender.
    NeedsBinding(BindingLink),
    /// Grey card: the next message starts a fresh context.
    FreshPending,
    /// Grey card: `/issue` usage.
    IssueUsage,
    /// Plain text `Created <id> — <title>` (+ link).
    IssueCreated {
        /// Issue title.
        title: String,
        /// Host reference: an id or a URL.
        reference: String,
    },
    /// Free text from the host, rendered like a reply.
    Text(String),
}

/// What to deliver (the WIT `content`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The agent's reply: text or markdown card.
    Reply(String),
    /// A failed run: the error card.
    RunError(String),
    /// A notice.
    Notice(Notice),
}

/// What the host should do after a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushAction {
    /// Make the session's run pending.
    StartRun,
    /// Tell the user something.
    Notice(Notice),
    /// Turn a typing indicator on or off for one message.
    Typing {
        /// Channel message id the indicator is attached to.
        message_id: String,
        /// On or off.
        on: bool,
    },
}

/// Decides what a flushed batch leads to:
///
/// - online: the run becomes pending and the newest message gets the typing reaction (unless it
///   has no id or was created more than [`TYPING_MAX_AGE_MS`] before `now_ms`; an unknown
///   creation time does not skip it);
/// - offline: the run becomes pending (it waits for a worker) and the chat gets the
///   `agent_offline` notice; no typing reaction, nothing is about to happen;
/// - archived: the `agent_archived` notice only; no run.
pub fn flush_actions(
    agent: AgentState,
    messages: &[BatchMessage],
    now_ms: i64,
) -> Vec<FlushAction> {
    match agent {
        AgentState::Archived => vec![FlushAction::Notice(Notice::AgentArchived)],
        AgentState::Offline => vec![
            FlushAction::StartRun,
            FlushAction::Notice(Notice::AgentOffline),
        ],
        AgentState::Online => {
            let mut actions = vec![FlushAction::StartRun];
            if let Some(newest) = messages.last().filter(|m| typing_wanted(m, now_ms)) {
                actions.push(FlushAction::Typing {
                    message_id: newest.message_id.clone(),
                    on: true,
                });
            }
            actions
        }
    }
}

fn typing_wanted(message: &BatchMessage, now_ms: i64) -> bool {
    !message.message_id.is_empty()
        && (message.create_time_ms <= 0 || now_ms - message.create_time_ms <= TYPING_MAX_AGE_MS)
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
}

impl DeliveryFailure {
    /// A failure found before anything was sent: never retryable.
    pub fn invalid(message: impl Into<String>) -> Self {
        DeliveryFailure {
            code: None,
            message: message.into(),
            retryable: false,
        }
    }
}

/// The messages of a delivery and where they go. Validation happens here, before any token is
/// fetched: a chat destination needs a `chat_id`, a binding DM an `open_id` and a URL. An empty
/// message list (blank reply) means nothing is sent.
pub fn plan_delivery(
    target: &SessionTarget,
    content: &Content,
    header: &str,
) -> Result<(Destination, Vec<Rendered>), DeliveryFailure> {
    if let Content::Notice(Notice::NeedsBinding(link)) = content {
        if link.open_id.trim().is_empty() {
            return Err(DeliveryFailure::invalid(
                "binding prompt has no open_id to direct-message",
            ));
        }
        if link.url.trim().is_empty() {
            return Err(DeliveryFailure::invalid("binding prompt has no bind URL"));
        }
        return Ok((
            Destination::Direct {
                open_id: link.open_id.clone(),
            },
            vec![render::binding_card(&link.url)],
        ));
    }
    if target.chat_id.trim().is_empty() {
        return Err(DeliveryFailure::invalid(format!(
            "session {} has no chat_id to deliver to",
            target.session_id
        )));
    }
    let messages = match content {
        Content::Reply(text) | Content::Notice(Notice::Text(text)) => render::reply_messages(text),
        Content::RunError(error) => vec![render::error_card(header, error)],
        Content::Notice(notice) => vec![match notice {
            Notice::AgentOffline => render::notice_card(header, render::AGENT_OFFLINE_COPY),
            Notice::AgentArchived => render::notice_card(header, render::AGENT_ARCHIVED_COPY),
            Notice::FreshPending => render::notice_card(header, render::FRESH_PENDING_COPY),
            Notice::IssueUsage => render::notice_card(header, render::ISSUE_USAGE_COPY),
            Notice::IssueCreated { title, reference } => {
                render::text_message(&render::issue_created_text(title, reference))
            }
            Notice::NeedsBinding(_) | Notice::Text(_) => unreachable!("handled above"),
        }],
    };
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
enum CallError {
    Api(ApiError),
    Transport(TransportFailure),
}

impl CallError {
    fn code(&self) -> Option<i64> {
        match self {
            CallError::Api(err) if err.code != 0 => Some(err.code),
            _ => None,
        }
    }

    fn into_failure(self, what: &str) -> DeliveryFailure {
        match self {
            CallError::Api(err) => DeliveryFailure {
                code: (err.code != 0).then_some(err.code),
                retryable: err.kind() == ApiErrorKind::RateLimited || err.http_status >= 500,
                message: format!("{what}: {err}"),
            },
            CallError::Transport(failure) => DeliveryFailure {
                code: None,
                retryable: failure.retryable,
                message: format!("{what}: {}", failure.message),
            },
        }
    }
}

/// A Lark Open Platform client over a [`LarkHost`] for one call of the plugin.
pub struct LarkClient<'a, H: LarkHost> {
    host: &'a mut H,
    credentials: &'a Credentials,
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
            let uuid = uuid.as_deref();
            let sent = match &destination {
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
                                ("session", &target.session_id),
                                ("message_id", message_id),
                                ("code", &code),
                            ],
                        );
                        let chat_id = chat_id.clone();
                        destination = Destination::Chat {
                            chat_id: chat_id.clone(),
                        };
                        self.send(ReceiveIdType::ChatId, &chat_id, message, uuid)
                    }
                    other => other,
                },
            };
            let id = sent.map_err(|err| err.into_failure("lark send failed"))?;
            first_id.get_or_insert(id);
        }
        Ok(first_id)
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

    fn check_credentials(&self) -> Result<(), DeliveryFailure> {
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
    fn authorized(&mut self, build: impl Fn(&str) -> HttpRequestSpec) -> Result<Value, CallError> {
        let token = self.token()?;
        match self.exchange(&build(&token)) {
            Err(CallError::Api(err)) if err.kind() == ApiErrorKind::TokenInvalid => {
                let code = err.code.to_string();
                self.host.warn(
                    "lark tenant token rejected; fetching a new one",
                    &[("code", &code)],
                );
                self.host.kv_delete(&self.token_key());
                let token = self.fetch_token()?;
                self.exchange(&build(&token))
            }
            other => other,
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

    fn exchange(&mut self, request: &HttpRequestSpec) -> Result<Value, CallError> {
        let answer = self.host.send(request).map_err(CallError::Transport)?;
        rest::check_response(answer.status, &answer.headers, &answer.body).map_err(CallError::Api)
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

    const NOW: i64 = 1_731_300_000_000;

    fn message(id: &str, create_time_ms: i64) -> BatchMessage {
        BatchMessage {
            message_id: id.into(),
            create_time_ms,
        }
    }

    #[test]
    fn online_starts_the_run_and_types_on_the_newest_message() {
        let batch = [message("om_1", NOW - 5_000), message("om_2", NOW - 1_000)];
        assert_eq!(
            flush_actions(AgentState::Online, &batch, NOW),
            vec![
                FlushAction::StartRun,
                FlushAction::Typing {
                    message_id: "om_2".into(),
                    on: true
                }
            ]
        );
        // No id, or older than two minutes: no typing. Unknown time: typing.
        assert_eq!(
            flush_actions(AgentState::Online, &[message("", NOW)], NOW),
            vec![FlushAction::StartRun]
        );
        assert_eq!(
            flush_actions(
                AgentState::Online,
                &[message("om_1", NOW - TYPING_MAX_AGE_MS - 1)],
                NOW
            ),
            vec![FlushAction::StartRun]
        );
        assert_eq!(
            flush_actions(
                AgentState::Online,
                &[message("om_1", NOW - TYPING_MAX_AGE_MS)],
                NOW
            )
            .len(),
            2
        );
        assert_eq!(
            flush_actions(AgentState::Online, &[message("om_1", 0)], NOW).len(),
            2
        );
        assert_eq!(
            flush_actions(AgentState::Online, &[], NOW),
            vec![FlushAction::StartRun]
        );
    }

    #[test]
    fn offline_keeps_the_run_pending_and_notifies_without_typing() {
        assert_eq!(
            flush_actions(AgentState::Offline, &[message("om_1", NOW)], NOW),
            vec![
                FlushAction::StartRun,
                FlushAction::Notice(Notice::AgentOffline)
            ]
        );
    }

    #[test]
    fn archived_notifies_and_starts_nothing() {
        assert_eq!(
            flush_actions(AgentState::Archived, &[message("om_1", NOW)], NOW),
            vec![FlushAction::Notice(Notice::AgentArchived)]
        );
    }

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
        assert_eq!(
            plan(Content::RunError("boom".into())),
            vec![render::error_card(header, "boom")]
        );
        let cases = [
            (Notice::AgentOffline, render::AGENT_OFFLINE_COPY),
            (Notice::AgentArchived, render::AGENT_ARCHIVED_COPY),
            (Notice::FreshPending, render::FRESH_PENDING_COPY),
            (Notice::IssueUsage, render::ISSUE_USAGE_COPY),
        ];
        for (notice, copy) in cases {
            assert_eq!(
                plan(Content::Notice(notice)),
                vec![render::notice_card(header, copy)]
            );
        }
        assert_eq!(
            plan(Content::Notice(Notice::IssueCreated {
                title: "Fix login".into(),
                reference: "MUL-42".into()
            })),
            vec![render::text_message("Created MUL-42 — Fix login")]
        );
        assert_eq!(
            plan(Content::Notice(Notice::Text("operator says hi".into()))),
            vec![render::text_message("operator says hi")]
        );

        // The binding prompt is a DM, whatever the session's chat.
        let link = BindingLink {
            url: "https://app.example/bind?token=x".into(),
            open_id: "ou_alice".into(),
            expires_in_minutes: 15,
        };
        let (destination, messages) = plan_delivery(
            &target(true),
            &Content::Notice(Notice::NeedsBinding(link.clone())),
            header,
        )
        .unwrap();
        assert_eq!(
            destination,
            Destination::Direct {
                open_id: "ou_alice".into()
            }
        );
        assert_eq!(messages, vec![render::binding_card(&link.url)]);
    }

    #[test]
    fn plans_are_validated_before_anything_is_sent() {
        let mut no_chat = target(false);
        no_chat.chat_id = String::new();
        let err = plan_delivery(&no_chat, &Content::Reply("hi".into()), "H").unwrap_err();
        assert!(!err.retryable && err.message.contains("chat_id"), "{err:?}");
        let link = |url: &str, open_id: &str| {
            Content::Notice(Notice::NeedsBinding(BindingLink {
                url: url.into(),
                open_id: open_id.into(),
                expires_in_minutes: 15,
            }))
        };
        assert!(plan_delivery(&target(false), &link("", "ou_1"), "H").is_err());
        assert!(plan_delivery(&target(false), &link("https://x", ""), "H").is_err());
        // A DM needs no chat.
        assert!(plan_delivery(&no_chat, &link("https://x", "ou_1"), "H").is_ok());
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
}
