//! Outbound delivery (SPEC §6): replies, run errors, notices and typing indicators, carried out
//! through the channel plugin's `outbound` export.
//!
//! Owns *how* something reaches the channel: finding the installation's plugin, one delivery
//! attempt at a time (the outbox worker in `outbox.rs` retries what the plugin classified
//! retryable, with backoff and a budget), logging every failure with the channel's error code,
//! and remembering the typing indicator of each session's pending
//! run so that it can be cleared on reply, failure or interrupt.
//!
//! Must not decide *what* is said (the dispatcher decides outcomes, runs and agents decide
//! replies) and holds no SQL: callers pass installations and sessions in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::dispatch::{Builtin, Outcome};
use crate::domain::notice::{Notice, NoticeKind, NoticeTexts};
use crate::ingest::service::OutcomeObserver;
use crate::runs::RunService;
use crate::runs::observer::{RunEndObserver, RunEnded, RunOutcome};
use crate::runtime::{CallError, Plugin, Runtime, outbound, types};
use crate::store::{IngestStore, Installation, InstallationStore, PairingAsk, Session};

pub mod outbox;
pub mod pace;
pub mod stream;
pub use outbox::{Outbox, OutboxSettings};
pub use stream::Streamer;

/// The `{detail}` of the `help` notice: the built-in commands.
const HELP: &str = "/new [text] — start a fresh conversation\n\
/stop — stop the current answer\n\
/compact — summarise the conversation so far\n\
/status — show what is happening\n\
/help — this list";

/// The reference a failed run is known by in chats and logs: the first 8 characters of its run
/// id.
pub fn run_reference(run_id: &str) -> &str {
    run_id.get(..8).unwrap_or(run_id)
}

/// Why something could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryFailure {
    /// No loaded plugin serves the installation's channel.
    #[error(
        "no plugin serves channel {channel:?}: load one (switchboard plugins list) or revoke the installation"
    )]
    NoPlugin {
        /// The installation's channel type.
        channel: String,
    },
    /// The plugin call itself failed (trap, timeout, limit).
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The channel refused the delivery.
    #[error(
        "channel refused the delivery{}: {message}",
        code.map(|c| format!(" (code {c})")).unwrap_or_default()
    )]
    Refused {
        /// The channel's error code, if any.
        code: Option<i64>,
        /// The plugin's description.
        message: String,
        /// Whether the last failure was still classified retryable.
        retryable: bool,
        /// The least wait before a retry the channel asked for (a rate limit's `Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
}

impl DeliveryFailure {
    fn refused(error: outbound::DeliveryError) -> DeliveryFailure {
        DeliveryFailure::Refused {
            code: error.code,
            message: error.message,
            retryable: error.retryable,
            retry_after: error
                .retry_after_ms
                .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
        }
    }

    /// Whether trying again later may help (a plugin call that failed, a retryable refusal).
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryFailure::NoPlugin { .. } => false,
            DeliveryFailure::Plugin(_) => true,
            DeliveryFailure::Refused { retryable, .. } => *retryable,
        }
    }

    /// The least wait before a retry the channel asked for, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            DeliveryFailure::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a streamed reply ends without its run's reply: the host's words that close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStop {
    /// The run was interrupted or handed back: the `stream_interrupted` words.
    Interrupted,
    /// The run failed: the `run_error` notice's words, with its reference.
    Failed(Notice),
}

/// Attempts at ending an interrupted run's stream (no outbox row stands behind it).
const INTERRUPTED_END_ATTEMPTS: u32 = 3;

/// The typing indicator shown on one message while its run is pending or running.
#[derive(Debug, Clone)]
struct TypingIndicator {
    message_id: String,
    handle: Option<String>,
    /// Re-shows the indicator while it is on (manifest `typing_refresh_ms`); aborted when it
    /// goes off.
    refresher: Option<tokio::task::AbortHandle>,
}

/// A refreshed indicator is refreshed for at most this long (a run that outlives it keeps the
/// last one until it ends).
const MAX_TYPING_REFRESH: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Delivers content through channel plugins. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    runtime: Arc<Runtime>,
    texts: Arc<NoticeTexts>,
    streams: stream::Streams,
    /// Session id → its indicator. In memory: after a restart a stale indicator stays on the
    /// message (cosmetic), which is what the reference does too.
    typing: Arc<Mutex<HashMap<String, TypingIndicator>>>,
    /// Per-chat and per-installation token buckets every sending plugin call waits on.
    pacer: Arc<pace::Pacer>,
}

/// What to deliver, before a notice's words are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The agent's reply.
    Reply(String),
    /// A notice the host decided on.
    Notice(Notice),
}

impl Content {
    fn kind(&self) -> &'static str {
        match self {
            Content::Reply(_) => "reply",
            Content::Notice(notice) => notice.kind.as_str(),
        }
    }
}

/// Where replies to `session` go: the channel chat, its thread, and the last inbound message
/// as the reply anchor.
pub fn session_target(session: &Session) -> types::SessionTarget {
    types::SessionTarget {
        session_id: session.id.clone(),
        chat_id: session.chat_id.clone(),
        chat_kind: chat_kind(&session.chat_type),
        thread_id: session.thread_id.clone(),
        reply_to: session.reply_to_message_id.clone(),
        in_thread: session.reply_thread_id.is_some(),
    }
}

/// The contract's chat kind of a stored name (`direct` for anything unknown).
pub fn chat_kind(text: &str) -> types::ChatKind {
    match text {
        "group" => types::ChatKind::Group,
        "channel" => types::ChatKind::Channel,
        _ => types::ChatKind::Direct,
    }
}

/// The stored name of a contract chat kind.
pub fn chat_kind_name(kind: types::ChatKind) -> &'static str {
    match kind {
        types::ChatKind::Direct => "direct",
        types::ChatKind::Group => "group",
        types::ChatKind::Channel => "channel",
    }
}

/// The notice an ingest outcome asks for, if any: an unbound sender is told their pairing code
/// (or to try later when too many are pending), privately.
pub fn outcome_notice(outcome: &Outcome) -> Option<Notice> {
    match outcome {
        Outcome::NeedsBinding { user_id, pairing } => {
            let notice = match pairing {
                PairingAsk::Code { code, .. } => {
                    Notice::new(NoticeKind::BindingRequired).with_detail(code.clone())
                }
                PairingAsk::Full => Notice::new(NoticeKind::BindingRequired)
                    .with_text_key(crate::domain::notice::PAIRING_FULL),
            };
            Some(Notice {
                recipient: Some(user_id.clone()),
                ..notice
            })
        }
        Outcome::FreshPending { .. } => Some(Notice::new(NoticeKind::FreshContext)),
        Outcome::Dropped(_) | Outcome::Ingested { .. } | Outcome::Builtin { .. } => None,
    }
}

/// The target of an ingest notice: the chat the message came from, anchored on it.
pub fn message_target(session_id: &str, message: &types::InboundMessage) -> types::SessionTarget {
    types::SessionTarget {
        session_id: session_id.to_string(),
        chat_id: message.chat.id.clone(),
        chat_kind: message.chat.kind,
        thread_id: message.thread_id.clone(),
        reply_to: Some(message.message_id.clone()).filter(|id| !id.is_empty()),
        in_thread: message.thread_id.is_some(),
    }
}

/// The contract's form of `notice` for `installation`: its words (and its buttons' labels) in
/// the installation's locale, from `texts`.
pub fn render_notice(
    texts: &NoticeTexts,
    installation: &Installation,
    notice: &Notice,
) -> types::Notice {
    let locale = installation.locale();
    types::Notice {
        kind: match notice.kind {
            NoticeKind::BindingRequired => types::NoticeKind::BindingRequired,
            NoticeKind::FreshContext => types::NoticeKind::FreshContext,
            NoticeKind::AgentOffline => types::NoticeKind::AgentOffline,
            NoticeKind::AgentArchived => types::NoticeKind::AgentArchived,
            NoticeKind::RunError => types::NoticeKind::RunError,
            NoticeKind::CommandUsage => types::NoticeKind::CommandUsage,
            NoticeKind::Help => types::NoticeKind::Help,
            NoticeKind::Status => types::NoticeKind::Status,
            NoticeKind::Info => types::NoticeKind::Info,
            NoticeKind::Approval => types::NoticeKind::Approval,
        },
        locale: locale.to_string(),
        text: texts.render_for(
            notice,
            locale,
            installation.config.get("bot_name").map(String::as_str),
        ),
        link: notice.link.clone(),
        reference: notice.reference.clone(),
        recipient: notice.recipient.clone(),
        actions: notice
            .actions
            .iter()
            .map(|button| types::NoticeAction {
                name: button.name.clone(),
                label: texts.word(&button.label, locale),
                value: button.value.clone(),
                primary: button.primary,
            })
            .collect(),
    }
}

impl Delivery {
    /// Delivery through `runtime`'s plugins, with notice words from `texts`.
    pub fn new(runtime: Arc<Runtime>, texts: Arc<NoticeTexts>) -> Delivery {
        Delivery {
            runtime,
            texts,
            streams: Arc::default(),
            typing: Arc::new(Mutex::new(HashMap::new())),
            pacer: Arc::new(pace::Pacer::new()),
        }
    }

    /// Waits for a token of the plugin's `[pacing]` buckets for one send to `chat` (the
    /// session's chat, or a private notice's recipient) of `installation`.
    async fn pace(&self, plugin: &Plugin, installation: &Installation, chat: &str) {
        self.pacer
            .wait(plugin.manifest().pacing, &installation.id, chat)
            .await;
    }

    /// The contract's form of `notice` for `installation`: its words in the installation's
    /// locale.
    pub fn render_notice(&self, installation: &Installation, notice: &Notice) -> types::Notice {
        render_notice(&self.texts, installation, notice)
    }

    /// The plugin serving `installation`, if loaded.
    pub fn plugin_of(&self, installation: &Installation) -> Option<Arc<Plugin>> {
        self.runtime.plugin_for_channel(&installation.channel)
    }

    fn plugin(&self, installation: &Installation) -> Result<Arc<Plugin>, DeliveryFailure> {
        self.runtime
            .plugin_for_channel(&installation.channel)
            .ok_or_else(|| DeliveryFailure::NoPlugin {
                channel: installation.channel.clone(),
            })
    }

    /// One attempt at delivering `content`, with `idempotency_key` for the channel (the outbox
    /// retries, with its own backoff and budget, and hands the same key to every attempt).
    pub async fn send_once(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        content: Content,
        idempotency_key: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let plugin = self.plugin(installation)?;
        let cx = Arc::new(installation.context());
        let kind = content.kind();
        let content = match content {
            Content::Reply(text) => outbound::Content::Reply(text),
            Content::Notice(notice) => {
                outbound::Content::Notice(self.render_notice(installation, &notice))
            }
        };
        let chat = match &content {
            outbound::Content::Notice(types::Notice {
                recipient: Some(recipient),
                ..
            }) => recipient.as_str(),
            _ => target.chat_id.as_str(),
        };
        self.pace(&plugin, installation, chat).await;
        let delivery = outbound::Delivery {
            target: target.clone(),
            content,
            idempotency_key: idempotency_key.to_string(),
        };
        match plugin.deliver(&cx, &delivery).await {
            Ok(Ok(receipt)) => {
                tracing::info!(installation = %installation.id, session = %target.session_id, kind, sent = receipt.message_id.as_deref(), "delivered");
                Ok(receipt.message_id)
            }
            Ok(Err(refused)) => Err(DeliveryFailure::refused(refused)),
            Err(call) => Err(call.into()),
        }
    }

    /// Replaces a message the plugin sent for a notice (an approval card) with `notice`
    /// (`outbound.update-notice`): through `update_token` when given, else by `message_id`.
    pub async fn update_notice(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        message_id: Option<&str>,
        update_token: Option<&str>,
        notice: &Notice,
    ) -> Result<(), DeliveryFailure> {
        let plugin = self.plugin(installation)?;
        let cx = Arc::new(installation.context());
        self.pace(&plugin, installation, &target.chat_id).await;
        let notice = self.render_notice(installation, notice);
        match plugin
            .update_notice(&cx, target, message_id, update_token, &notice)
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(DeliveryFailure::refused(refused)),
            Err(call) => Err(call.into()),
        }
    }

    /// Delivers run `run_id`'s reply `text`: ends the run's stream with it when this host
    /// streamed the run (`stream-end`), else one `deliver`.
    pub async fn send_reply(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        run_id: Option<&str>,
        text: String,
        idempotency_key: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let handle = match run_id {
            Some(run) => self.take_stream(installation, run).await,
            None => None,
        };
        let (Some(run_id), Some((handle, _))) = (run_id, handle) else {
            return self
                .send_once(installation, target, Content::Reply(text), idempotency_key)
                .await;
        };
        let plugin = self.plugin(installation)?;
        let cx = Arc::new(installation.context());
        self.pace(&plugin, installation, &target.chat_id).await;
        let failure = match plugin.stream_end(&cx, target, &handle, &text).await {
            Ok(Ok(receipt)) => {
                tracing::info!(installation = %installation.id, session = %target.session_id, sent = receipt.message_id.as_deref(), "streamed reply ended");
                stream::forget_handle(&plugin, installation, run_id).await;
                return Ok(receipt.message_id.or(Some(handle)));
            }
            Ok(Err(refused)) => DeliveryFailure::refused(refused),
            Err(call) => call.into(),
        };
        // The outbox retries: the next attempt ends the same stream.
        self.streams
            .lock()
            .expect("streams")
            .insert(run_id.to_string(), stream::RunStream::started(handle, text));
        Err(failure)
    }

    /// Delivers the `run_error` notice of run `run_id`: when this host streams that run, the
    /// stream is ended with the text so far and the notice's words (the streamed message is
    /// the error's place, never left half-finished), else the notice is sent on its own.
    pub async fn send_run_error(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        run_id: Option<&str>,
        notice: Notice,
        idempotency_key: &str,
    ) -> Result<Option<String>, DeliveryFailure> {
        let stream = match run_id {
            Some(run) => self.take_stream(installation, run).await,
            None => None,
        };
        let (Some(run_id), Some((handle, so_far))) = (run_id, stream) else {
            return self
                .send_once(
                    installation,
                    target,
                    Content::Notice(notice),
                    idempotency_key,
                )
                .await;
        };
        let ended = self
            .end_stream_now(
                installation,
                target,
                run_id,
                handle.clone(),
                so_far.clone(),
                StreamStop::Failed(notice),
            )
            .await;
        if ended.is_err() {
            // The outbox retries: the next attempt ends the same stream.
            self.streams.lock().expect("streams").insert(
                run_id.to_string(),
                stream::RunStream::started(handle, so_far),
            );
        }
        ended
    }

    /// Ends run `run_id`'s stream, if this host streams it, after the run stopped without a
    /// reply: the text so far and the `stream_interrupted` words. Nothing in the outbox stands
    /// behind it, so a retryable refusal is retried a few times here; failures are logged.
    pub async fn end_interrupted(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        run_id: &str,
    ) {
        let Some((handle, so_far)) = self.take_stream(installation, run_id).await else {
            return;
        };
        for attempt in 1..=INTERRUPTED_END_ATTEMPTS {
            let ended = self
                .end_stream_now(
                    installation,
                    target,
                    run_id,
                    handle.clone(),
                    so_far.clone(),
                    StreamStop::Interrupted,
                )
                .await;
            match ended {
                Ok(_) => return,
                Err(DeliveryFailure::Refused {
                    retryable: true,
                    retry_after,
                    ..
                }) if attempt < INTERRUPTED_END_ATTEMPTS => {
                    let wait = std::time::Duration::from_secs(u64::from(attempt));
                    tokio::time::sleep(retry_after.unwrap_or(wait).max(wait)).await;
                }
                Err(e) => {
                    tracing::warn!(installation = %installation.id, session = %target.session_id, run = run_id, "the interrupted run's stream could not be ended: {e}");
                    return;
                }
            }
        }
    }

    /// Calls `stream-end` on `handle` with `so_far` and the words of `stop` (in the
    /// installation's locale), after a blank line.
    pub(crate) async fn end_stream_now(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        run_id: &str,
        handle: String,
        so_far: String,
        stop: StreamStop,
    ) -> Result<Option<String>, DeliveryFailure> {
        let words = match &stop {
            StreamStop::Interrupted => self.texts.stream_interrupted(installation.locale()),
            StreamStop::Failed(notice) => self.render_notice(installation, notice).text,
        };
        let text = if so_far.trim().is_empty() {
            words
        } else {
            format!("{}\n\n{words}", so_far.trim_end())
        };
        let plugin = self.plugin(installation)?;
        let cx = Arc::new(installation.context());
        self.pace(&plugin, installation, &target.chat_id).await;
        match plugin.stream_end(&cx, target, &handle, &text).await {
            Ok(Ok(receipt)) => {
                let why = match stop {
                    StreamStop::Interrupted => "interrupted",
                    StreamStop::Failed(_) => "failed",
                };
                tracing::info!(installation = %installation.id, session = %target.session_id, run = run_id, why, "streamed reply closed early");
                stream::forget_handle(&plugin, installation, run_id).await;
                Ok(receipt.message_id.or(Some(handle)))
            }
            Ok(Err(refused)) => Err(DeliveryFailure::refused(refused)),
            Err(call) => Err(call.into()),
        }
    }

    /// The plugin's handle of run `run_id`'s stream and the text it shows, taken out (the caller
    /// ends it), if the run was streamed: from this host's memory — a `stream-begin` or
    /// `stream-update` still in flight is waited for (bounded), so the end is the last word and
    /// the reply is not sent a second time beside a stream that was just starting — or else
    /// from the stored handle, when another replica (or this one before a restart) began it
    /// (the text so far is then unknown here).
    async fn take_stream(
        &self,
        installation: &Installation,
        run_id: &str,
    ) -> Option<(String, String)> {
        // One bound for both waits, well inside the outbox's claim lease (30 s by default): a
        // row whose lease ran out while this waited would be delivered by another replica too.
        const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            {
                let mut streams = self.streams.lock().expect("streams");
                match streams.get(run_id) {
                    Some(stream) => {
                        if !stream.busy || tokio::time::Instant::now() >= deadline {
                            let stream = streams.remove(run_id)?;
                            let text = stream.text().to_string();
                            // Begun here but refused (no handle): delivered whole.
                            return stream.handle.map(|handle| (handle, text));
                        }
                    }
                    None => break,
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let plugin = self.plugin_of(installation)?;
        // Another replica's `stream-begin` in flight is waited for, within the same bound.
        let handle = stream::recall_handle(&plugin, installation, run_id, deadline).await?;
        Some((handle, String::new()))
    }

    /// Shows the typing indicator on `message_id` for the session of `target`, replacing the
    /// session's previous indicator. Failures are logged, never fatal.
    pub async fn typing_on(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        message_id: &str,
    ) {
        if message_id.is_empty() {
            return;
        }
        // The session's slot is claimed before the call, atomically: while an indicator is on
        // (or being put on) nothing is re-sent, whichever message it is on, so a burst of
        // messages adds one reaction, not one per message (each is a rate-limited call).
        {
            let mut typing = self.typing.lock().expect("typing map");
            if typing.contains_key(&target.session_id) {
                return;
            }
            typing.insert(
                target.session_id.clone(),
                TypingIndicator {
                    message_id: message_id.to_string(),
                    handle: None,
                    refresher: None,
                },
            );
        }
        let release = |this: &Delivery| {
            let mut typing = this.typing.lock().expect("typing map");
            if typing
                .get(&target.session_id)
                .is_some_and(|t| t.message_id == message_id && t.handle.is_none())
            {
                typing.remove(&target.session_id);
            }
        };
        let Ok(plugin) = self.plugin(installation) else {
            release(self);
            return;
        };
        let cx = Arc::new(installation.context());
        let change = outbound::TypingChange {
            message_id: message_id.to_string(),
            on: true,
        };
        self.pace(&plugin, installation, &target.chat_id).await;
        match plugin.set_typing(&cx, target, &change, None).await {
            Ok(Ok(handle)) => {
                let kept = {
                    let mut typing = self.typing.lock().expect("typing map");
                    match typing.get_mut(&target.session_id) {
                        Some(slot) if slot.message_id == message_id && slot.handle.is_none() => {
                            slot.handle = handle.clone();
                            slot.refresher =
                                plugin.manifest().features.typing_refresh.map(|every| {
                                    self.spawn_typing_refresh(
                                        installation,
                                        target,
                                        message_id,
                                        &handle,
                                        every,
                                    )
                                });
                            true
                        }
                        _ => false,
                    }
                };
                if !kept {
                    // Cleared (the run ended) while it was being added: take it off again.
                    let off = outbound::TypingChange {
                        message_id: message_id.to_string(),
                        on: false,
                    };
                    self.pace(&plugin, installation, &target.chat_id).await;
                    if let Ok(Err(e)) = plugin
                        .set_typing(&cx, target, &off, handle.as_deref())
                        .await
                    {
                        tracing::warn!(installation = %installation.id, session = %target.session_id, code = e.code, "typing indicator not cleared: {}", e.message)
                    }
                }
            }
            Ok(Err(e)) => {
                release(self);
                tracing::warn!(installation = %installation.id, session = %target.session_id, code = e.code, "typing indicator not shown: {}", e.message)
            }
            Err(e) => {
                release(self);
                tracing::warn!(installation = %installation.id, session = %target.session_id, "typing indicator call failed: {e}")
            }
        }
    }

    /// Calls `set-typing` (on, with the indicator's handle) every `every` while the session's
    /// indicator is still the one on `message_id`, for at most [`MAX_TYPING_REFRESH`].
    fn spawn_typing_refresh(
        &self,
        installation: &Installation,
        target: &types::SessionTarget,
        message_id: &str,
        handle: &Option<String>,
        every: std::time::Duration,
    ) -> tokio::task::AbortHandle {
        let delivery = self.clone();
        let installation = installation.clone();
        let target = target.clone();
        let message_id = message_id.to_string();
        let handle = handle.clone();
        let span = tracing::debug_span!(
            "typing_refresh",
            installation = %installation.id,
            session = %target.session_id
        );
        let task = async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let shown = delivery
                    .indicator(&target.session_id)
                    .is_some_and(|t| t.message_id == message_id);
                if !shown || started.elapsed() >= MAX_TYPING_REFRESH {
                    return;
                }
                let Ok(plugin) = delivery.plugin(&installation) else {
                    return;
                };
                let cx = Arc::new(installation.context());
                let change = outbound::TypingChange {
                    message_id: message_id.clone(),
                    on: true,
                };
                delivery.pace(&plugin, &installation, &target.chat_id).await;
                match plugin
                    .set_typing(&cx, &target, &change, handle.as_deref())
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(
                            code = e.code,
                            "typing indicator not refreshed: {}",
                            e.message
                        )
                    }
                    Err(e) => tracing::debug!("typing refresh call failed: {e}"),
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span)).abort_handle()
    }

    /// Clears the session's typing indicator, if one is shown.
    pub async fn typing_off(&self, installation: &Installation, target: &types::SessionTarget) {
        let Some(indicator) = self
            .typing
            .lock()
            .expect("typing map")
            .remove(&target.session_id)
        else {
            return;
        };
        if let Some(refresher) = &indicator.refresher {
            refresher.abort();
        }
        let Ok(plugin) = self.plugin(installation) else {
            return;
        };
        let cx = Arc::new(installation.context());
        let change = outbound::TypingChange {
            message_id: indicator.message_id,
            on: false,
        };
        self.pace(&plugin, installation, &target.chat_id).await;
        match plugin
            .set_typing(&cx, target, &change, indicator.handle.as_deref())
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(installation = %installation.id, session = %target.session_id, code = e.code, "typing indicator not cleared: {}", e.message)
            }
            Err(e) => {
                tracing::warn!(installation = %installation.id, session = %target.session_id, "typing indicator call failed: {e}")
            }
        }
    }

    /// The message carrying the session's typing indicator, if one is shown.
    pub fn typing_message(&self, session_id: &str) -> Option<String> {
        self.indicator(session_id).map(|t| t.message_id)
    }

    fn indicator(&self, session_id: &str) -> Option<TypingIndicator> {
        self.typing
            .lock()
            .expect("typing map")
            .get(session_id)
            .cloned()
    }
}

/// Carries ingest outcomes and worker run ends to the channel: notices for outcomes, the typing
/// indicator for messages that will run, replies and error cards for runs external workers
/// ended. Every delivery runs in its own task, so callers (the ACK path, the worker API) never
/// wait for the channel.
#[derive(Clone)]
pub struct ChannelReplies {
    delivery: Delivery,
    outbox: Outbox,
    runs: Option<RunService>,
    compactor: Option<crate::runs::Compactor>,
    installations: InstallationStore,
    sessions: IngestStore,
}

impl ChannelReplies {
    /// Sends notices through `outbox` (stored first, retried, visible when they fail) and
    /// typing indicators through `delivery`.
    pub fn new(
        delivery: Delivery,
        outbox: Outbox,
        installations: InstallationStore,
        sessions: IngestStore,
    ) -> ChannelReplies {
        ChannelReplies {
            delivery,
            outbox,
            runs: None,
            compactor: None,
            installations,
            sessions,
        }
    }

    /// Also publishes each ingested message (and the session's state) to `runs`' event
    /// stream: the dispatcher stores turns without going through the run service.
    pub fn with_runs(mut self, runs: RunService) -> ChannelReplies {
        self.runs = Some(runs);
        self
    }

    /// Carries out `compact` commands through `compactor`.
    pub fn with_compactor(mut self, compactor: crate::runs::Compactor) -> ChannelReplies {
        self.compactor = Some(compactor);
        self
    }

    /// Carries out a built-in command of `session_id` and returns the notice that answers it.
    async fn builtin(&self, session_id: &str, command: Builtin) -> Notice {
        let status = Notice::new(NoticeKind::Status);
        match command {
            Builtin::Help => Notice::new(NoticeKind::Help).with_detail(HELP),
            Builtin::Stop => match &self.runs {
                Some(runs) => match runs.interrupt(session_id).await {
                    Ok(t) if t.interrupted_run.is_some() => status.with_detail("Stopped."),
                    Ok(_) => status.with_detail("Nothing is running."),
                    Err(e) => {
                        tracing::warn!(session = %session_id, "stop failed: {e}");
                        status.with_detail("Could not stop the run; please try again.")
                    }
                },
                None => status.with_detail("Nothing is running."),
            },
            Builtin::Compact => match &self.compactor {
                Some(compactor) => match compactor.compact_now(session_id).await {
                    Ok(_) => status.with_detail("The conversation is being summarised."),
                    Err(e) => {
                        tracing::info!(session = %session_id, "compact refused: {e}");
                        status.with_detail("There is nothing to summarise right now.")
                    }
                },
                None => status.with_detail("Summarising is not available here."),
            },
            Builtin::Status => match &self.runs {
                Some(runs) => match runs.status(session_id).await {
                    Ok(Some(run)) => {
                        let queued = runs.queue(session_id).await.map(|q| q.len()).unwrap_or(0);
                        status
                            .with_detail(format!("Run: {}. Queued messages: {queued}.", run.state))
                    }
                    _ => status.with_detail("No conversation yet."),
                },
                None => status.with_detail("No conversation yet."),
            },
        }
    }

    /// The delivery it uses.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    async fn run_ended(self, ended: RunEnded) {
        let installation = match self.installations.get(&ended.installation_id).await {
            Ok(Some(installation)) => installation,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(session = %ended.session_id, "reading the installation failed; run result not delivered: {e}");
                return;
            }
        };
        let session = match self.sessions.get_session(&ended.session_id).await {
            Ok(Some(session)) => session,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(session = %ended.session_id, "reading the session failed; run result not delivered: {e}");
                return;
            }
        };
        let target = session_target(&session);
        // A reply or error card is already in the outbox (stored with the run's end); its
        // delivery clears the typing indicator. Only an ending without one clears it here.
        let delivered_later = match &ended.outcome {
            RunOutcome::Completed { reply, .. } => reply.is_some(),
            RunOutcome::Lost => {
                // Interrupted while the worker streamed: close what it streamed.
                self.delivery
                    .end_interrupted(&installation, &target, &ended.run_id)
                    .await;
                false
            }
            RunOutcome::Failed { error } => {
                tracing::warn!(
                    session = %ended.session_id,
                    run = %ended.run_id,
                    reference = run_reference(&ended.run_id),
                    "the worker failed the run: {error}"
                );
                true
            }
        };
        if delivered_later {
            self.outbox.wake();
        } else {
            self.delivery.typing_off(&installation, &target).await;
        }
    }
}

impl OutcomeObserver for ChannelReplies {
    fn dispatched(
        &self,
        installation: &Installation,
        message: &types::InboundMessage,
        outcome: &Outcome,
    ) {
        let notice = outcome_notice(outcome);
        let session_id = match outcome {
            Outcome::Ingested { session_id, .. }
            | Outcome::FreshPending { session_id }
            | Outcome::Builtin { session_id, .. } => session_id.clone(),
            Outcome::NeedsBinding { .. } | Outcome::Dropped(_) => String::new(),
        };
        if let (
            Some(runs),
            Outcome::Ingested {
                session_id,
                message_id,
                ..
            },
        ) = (&self.runs, outcome)
        {
            let (runs, session_id, message_id) = (runs.clone(), session_id.clone(), *message_id);
            tokio::spawn(async move { runs.publish_ingested(&session_id, message_id).await });
        }
        if let Outcome::Builtin {
            session_id,
            command,
        } = outcome
        {
            let this = self.clone();
            let (installation_id, command) = (installation.id.clone(), *command);
            let target = message_target(session_id, message);
            let session_id = session_id.clone();
            tokio::spawn(async move {
                let notice = this.builtin(&session_id, command).await;
                this.outbox
                    .enqueue_notice(&installation_id, &target, &notice)
                    .await;
            });
            return;
        }
        let typing = matches!(outcome, Outcome::Ingested { flush: Some(_), .. })
            && self
                .delivery
                .plugin_of(installation)
                .is_some_and(|p| p.manifest().features.typing);
        if notice.is_none() && !typing {
            return;
        }
        let target = message_target(&session_id, message);
        let delivery = self.delivery.clone();
        let outbox = self.outbox.clone();
        let installation = installation.clone();
        let message_id = message.message_id.clone();
        tokio::spawn(async move {
            if let Some(notice) = notice {
                outbox
                    .enqueue_notice(&installation.id, &target, &notice)
                    .await;
            }
            if typing {
                delivery
                    .typing_on(&installation, &target, &message_id)
                    .await;
            }
        });
    }
}

impl RunEndObserver for ChannelReplies {
    fn run_ended(&self, ended: RunEnded) {
        tokio::spawn(self.clone().run_ended(ended));
    }
}
