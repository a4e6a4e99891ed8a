//! One inbound event payload, end to end: routing key → installation → decode → enrich (bounded)
//! → command → dispatcher (durable) → arm the debounce window. Shared by the webhook endpoint and
//! the long-connection connector, so both answer the channel only after the message is durable.
//!
//! Owns the order of plugin calls around the dispatcher; must not hold SQL (that is `store`) or
//! decide product outcomes (that is `dispatch`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::approvals::{Approvals, is_approval_action};
use crate::batch::Debouncer;
use crate::dispatch::Command;
use crate::dispatch::{DispatchError, Dispatcher, DropReason, EventMeta, Outcome};
use crate::domain::InstallationContext;
use crate::hygiene;
use crate::ingest::pipeline::{self, DecodeOutcome};
use crate::metrics::Metrics;
use crate::runtime::transport::EventReading;
use crate::runtime::types::{ActionAnswer, InboundMessage};
use crate::runtime::{CallError, Plugin, enricher};
use crate::store::Installation;

/// Limits the enricher runs under.
#[derive(Debug, Clone, Copy)]
pub struct EnrichLimits {
    /// Budget from the event's arrival; what is left when enrichment starts is what it gets.
    pub budget: Duration,
    /// Outbound requests per message.
    pub max_requests: u32,
    /// Context messages per message.
    pub max_context_messages: u32,
}

impl Default for EnrichLimits {
    fn default() -> Self {
        EnrichLimits {
            budget: Duration::from_secs(2),
            max_requests: 8,
            max_context_messages: 20,
        }
    }
}

/// The installation an inbound unit was authenticated for: its secrets verified the webhook
/// request, or its credentials opened the long connection that carried the frame. An event is
/// ingested only into this installation; one that names another is refused
/// ([`DropReason::RoutedElsewhere`]), never re-routed.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    /// The installation.
    pub installation: &'a Installation,
    /// Its call context (config and decrypted secrets).
    pub cx: &'a Arc<InstallationContext>,
}

impl Verified<'_> {
    /// Whether a payload with `routing_key` belongs elsewhere: it names a routing key and that
    /// key is not this installation's. A payload without one belongs to the installation its
    /// URL or connection names.
    pub fn routes_elsewhere(&self, routing_key: Option<&str>) -> bool {
        routing_key.is_some_and(|key| !key.is_empty() && key != self.installation.routing_key)
    }
}

/// What became of one payload.
#[derive(Debug)]
pub enum PayloadOutcome {
    /// The dispatcher's product outcome (the message is durable, or deliberately dropped).
    Dispatched(Outcome),
    /// Not a chat message (the plugin said why); acknowledged, not audited.
    Ignored(String),
    /// The plugin could not understand the payload; acknowledged so it is not redelivered forever.
    Invalid(String),
    /// A pressed control, answered by the host (a toast, maybe an updated message): `outcome`
    /// is what became of the press (an approval press is not stored as a turn: `Answered`).
    Action {
        /// What became of the press.
        outcome: Box<PayloadOutcome>,
        /// The host's answer, for the plugin's `answer-action`.
        answer: ActionAnswer,
    },
    /// A press on one of the host's own approval buttons, decided (or refused) without a turn.
    Answered,
}

impl PayloadOutcome {
    /// A short label for logs and the `x-switchboard-outcome` header: `ingested`,
    /// `dropped:duplicate`, `needs_binding`, `ignored`, `invalid`, ….
    pub fn label(&self) -> String {
        match self {
            PayloadOutcome::Dispatched(Outcome::Dropped(reason)) => {
                format!("dropped:{}", reason.as_str())
            }
            PayloadOutcome::Dispatched(outcome) => outcome.as_str().to_string(),
            PayloadOutcome::Ignored(_) => "ignored".into(),
            PayloadOutcome::Invalid(_) => "invalid".into(),
            PayloadOutcome::Action { outcome, .. } => outcome.label(),
            PayloadOutcome::Answered => "approval".into(),
        }
    }

    /// The host's answer to a pressed control, if this outcome is one.
    pub fn action_answer(&self) -> Option<&ActionAnswer> {
        match self {
            PayloadOutcome::Action { answer, .. } => Some(answer),
            _ => None,
        }
    }
}

/// Why a payload could not be processed; the channel should redeliver.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A plugin call failed (trap, timeout, limit).
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The database failed.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

/// Told about every dispatched message, after it is durable (notices, typing indicators).
/// Must not block: spawn anything slow, the channel's ACK waits for this call.
pub trait OutcomeObserver: Send + Sync {
    /// `message` of `installation` was dispatched with `outcome`.
    fn dispatched(&self, installation: &Installation, message: &InboundMessage, outcome: &Outcome);
}

/// One dispatched message as [`Ingest::watch`] reports it: what the plugin decoded and enriched,
/// and what the dispatcher made of it.
#[derive(Debug, Clone)]
pub struct Dispatched {
    /// The installation it arrived for.
    pub installation_id: String,
    /// The decoded, enriched message (the body that was stored, when it was).
    pub message: InboundMessage,
    /// The outcome label (as [`PayloadOutcome::label`]).
    pub outcome: String,
}

/// How many reports a slow [`Ingest::watch`] receiver may fall behind before it misses some.
const WATCH_CAPACITY: usize = 256;

/// The inbound service.
pub struct Ingest {
    dispatcher: Arc<Dispatcher>,
    debouncer: Debouncer,
    enrich: EnrichLimits,
    observer: Option<Arc<dyn OutcomeObserver>>,
    watchers: tokio::sync::broadcast::Sender<Arc<Dispatched>>,
    metrics: Arc<Metrics>,
    webhook_max_skew: Duration,
    /// Decides presses on the host's approval buttons and words every action's answer.
    approvals: Option<Approvals>,
}

/// The default replay window of signed webhook requests (`[ingest] webhook_max_skew_s`).
pub const DEFAULT_WEBHOOK_MAX_SKEW: Duration = Duration::from_secs(300);

impl Ingest {
    /// Wires the dispatcher and the debouncer.
    pub fn new(dispatcher: Arc<Dispatcher>, debouncer: Debouncer, enrich: EnrichLimits) -> Ingest {
        Ingest {
            dispatcher,
            debouncer,
            enrich,
            observer: None,
            watchers: tokio::sync::broadcast::channel(WATCH_CAPACITY).0,
            metrics: Arc::default(),
            webhook_max_skew: DEFAULT_WEBHOOK_MAX_SKEW,
            approvals: None,
        }
    }

    /// Decides presses on the host's approval buttons with `approvals` and answers every
    /// pressed control with its words (without it, actions get the plugin's default answer).
    pub fn with_approvals(mut self, approvals: Approvals) -> Ingest {
        self.approvals = Some(approvals);
        self
    }

    /// Refuses signed webhook requests whose timestamp is further than `skew` from the clock.
    pub fn with_webhook_max_skew(mut self, skew: Duration) -> Ingest {
        self.webhook_max_skew = skew;
        self
    }

    /// The replay window of signed webhook requests.
    pub fn webhook_max_skew(&self) -> Duration {
        self.webhook_max_skew
    }

    /// Counts outcomes (and, through [`Ingest::metrics`], the connectors' ACKs) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Ingest {
        self.metrics = metrics;
        self
    }

    /// Where outcomes are counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reports every message dispatched from now on (for the demo's transcript and operator
    /// tooling). Costs nothing while no receiver exists; a receiver that falls more than 256
    /// reports behind misses the oldest (`RecvError::Lagged`) and never slows ingestion.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Arc<Dispatched>> {
        self.watchers.subscribe()
    }

    /// Also tells `observer` about every dispatched message.
    pub fn with_observer(mut self, observer: Arc<dyn OutcomeObserver>) -> Ingest {
        self.observer = Some(observer);
        self
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Processes one complete event payload that arrived at `arrived` for the `verified`
    /// installation: [`Ingest::prepare`], then [`Ingest::finish`].
    pub async fn payload(
        &self,
        plugin: &Plugin,
        payload: &[u8],
        arrived: Instant,
        verified: Verified<'_>,
        read: Option<EventReading>,
    ) -> Result<PayloadOutcome, IngestError> {
        match self
            .prepare(plugin, payload, arrived, verified, read)
            .await?
        {
            Prepared::Done(outcome) => Ok(outcome),
            Prepared::Message(message) => self.finish(plugin, *message).await,
        }
    }

    /// The routing key of `payload`: the plugin's reading of it when there is one, otherwise
    /// a `routing-key` call with the verified installation's context.
    pub async fn routing_key(
        &self,
        plugin: &Plugin,
        payload: &[u8],
        verified: Verified<'_>,
        read: Option<&EventReading>,
    ) -> Result<Option<String>, IngestError> {
        Ok(match read {
            Some(read) => read.routing_key.clone(),
            None => plugin.routing_key(verified.cx, payload).await?,
        })
    }

    /// The first, cheap half of [`Ingest::payload`]: routing check → decode (plugin calls; no
    /// writes for a chat message of the verified installation). A connector runs it in arrival
    /// order, so it knows each message's chat before it lets messages of different chats
    /// [`finish`](Ingest::finish) concurrently. `read` is the event as the plugin already read
    /// it (with the verified installation's context) while classifying its frame or verifying
    /// its request: its routing key, decoding and command are used instead of calling the
    /// plugin again.
    ///
    /// An event that names another installation, or reaches a revoked one, is audited and
    /// dropped; an event the plugin ignores is audited as `unsupported_event`. A message with an
    /// id the backends cannot store (a NUL, or too long: [`crate::hygiene`]) is audited as
    /// `unstorable_value` and answered [`PayloadOutcome::Invalid`]; NUL characters in its text
    /// are removed.
    pub async fn prepare(
        &self,
        plugin: &Plugin,
        payload: &[u8],
        arrived: Instant,
        verified: Verified<'_>,
        read: Option<EventReading>,
    ) -> Result<Prepared, IngestError> {
        let channel = &plugin.manifest().channel;
        let result = self.decode(plugin, payload, arrived, verified, read).await;
        match &result {
            Ok(Prepared::Done(outcome)) => self.metrics.ingested(channel, &outcome.label()),
            Ok(Prepared::Message(_)) => {}
            Err(_) => self.metrics.ingested(channel, "error"),
        }
        result
    }

    /// The second half: enrich (bounded by what is left of the budget since arrival) →
    /// dispatch (durable) → arm the debounce window → observers.
    pub async fn finish(
        &self,
        plugin: &Plugin,
        prepared: PreparedMessage,
    ) -> Result<PayloadOutcome, IngestError> {
        let span = tracing::info_span!(
            "ingest",
            plugin = plugin.name(),
            installation = %prepared.installation.id,
            message_id = %prepared.message.message_id,
        );
        let arrived = prepared.arrived;
        let result = self.dispatch(plugin, prepared).instrument(span).await;
        let channel = &plugin.manifest().channel;
        let label = match &result {
            Ok(outcome) => {
                self.metrics.ingest_latency(channel, arrived.elapsed());
                outcome.label()
            }
            Err(_) => "error".to_string(),
        };
        self.metrics.ingested(channel, &label);
        result
    }

    async fn decode(
        &self,
        plugin: &Plugin,
        payload: &[u8],
        arrived: Instant,
        verified: Verified<'_>,
        read: Option<EventReading>,
    ) -> Result<Prepared, IngestError> {
        let Verified { installation, cx } = verified;
        let routing_key = self
            .routing_key(plugin, payload, verified, read.as_ref())
            .await?;
        let decoded = match read {
            Some(read) => pipeline::read_outcome(read),
            None => pipeline::decode_payload(plugin, cx, payload).await?,
        };
        let done = |outcome| Ok(Prepared::Done(outcome));
        let elsewhere = verified.routes_elsewhere(routing_key.as_deref());
        if elsewhere || !installation.is_active() {
            // Only the ids go into the audit row; the body is never stored.
            let meta = match &decoded {
                DecodeOutcome::Message { message, .. } => EventMeta::of(message),
                _ => EventMeta::default(),
            };
            let outcome = if elsewhere {
                tracing::warn!(
                    installation = %installation.id,
                    routing_key = routing_key.as_deref().unwrap_or_default(),
                    message_id = %meta.message_id,
                    "event names another installation than the one it was verified for; dropped"
                );
                self.dispatcher
                    .refuse(installation, &meta, DropReason::RoutedElsewhere)
                    .await
            } else {
                self.dispatcher
                    .reject_installation(
                        &installation.channel,
                        Some(&installation.routing_key),
                        &meta,
                    )
                    .await?
            };
            return done(PayloadOutcome::Dispatched(outcome));
        }
        match decoded {
            DecodeOutcome::Message {
                mut message,
                mut command,
            } => {
                // What the backends cannot store is refused now (ids) or removed (NUL in
                // text), instead of failing the insert on every redelivery.
                match pipeline::sanitize_message(&mut message, command.as_mut()) {
                    Ok(0) => {}
                    Ok(stripped) => tracing::info!(
                        installation = %installation.id,
                        message_id = %message.message_id,
                        stripped,
                        "removed NUL characters from the message text"
                    ),
                    Err(problem) => {
                        tracing::warn!(
                            installation = %installation.id,
                            message_id = %hygiene::printable(&message.message_id),
                            "event refused: {problem}"
                        );
                        self.dispatcher
                            .refuse(
                                installation,
                                &EventMeta::of(&message),
                                DropReason::UnstorableValue,
                            )
                            .await;
                        return done(PayloadOutcome::Invalid(problem.to_string()));
                    }
                }
                if let (
                    Some(approvals),
                    Some(Command::Action {
                        name,
                        value,
                        on_message,
                        update_token,
                    }),
                ) = (&self.approvals, &command)
                    && is_approval_action(name)
                {
                    // The host's own button: decided here, before the channel's deadline, and
                    // not stored as a turn (the waiting worker learns the decision).
                    let press = crate::approvals::Press {
                        sender: &message.sender,
                        chat_id: &message.chat.id,
                        name,
                        value,
                        on_message: on_message.as_deref(),
                        update_token: update_token.as_deref(),
                    };
                    let answer = approvals
                        .press(installation, &press)
                        .await
                        .map_err(|e| IngestError::Dispatch(DispatchError::from(e)))?;
                    return done(PayloadOutcome::Action {
                        outcome: Box::new(PayloadOutcome::Answered),
                        answer,
                    });
                }
                Ok(Prepared::Message(Box::new(PreparedMessage {
                    installation: installation.clone(),
                    cx: cx.clone(),
                    message,
                    command,
                    arrived,
                })))
            }
            DecodeOutcome::Ignored(reason) => {
                tracing::debug!(installation = %installation.id, "event ignored: {reason}");
                let meta = EventMeta {
                    event_type: "event".into(),
                    ..EventMeta::default()
                };
                self.dispatcher
                    .refuse(installation, &meta, DropReason::UnsupportedEvent)
                    .await;
                done(PayloadOutcome::Ignored(reason))
            }
            DecodeOutcome::Invalid(e) => {
                done(PayloadOutcome::Invalid(pipeline::describe_plugin_error(&e)))
            }
        }
    }

    async fn dispatch(
        &self,
        plugin: &Plugin,
        prepared: PreparedMessage,
    ) -> Result<PayloadOutcome, IngestError> {
        let PreparedMessage {
            installation,
            cx,
            mut message,
            command,
            arrived,
        } = prepared;
        let is_action = matches!(command, Some(Command::Action { .. }));
        let mut context_attachments = Vec::new();
        let left = self.enrich.budget.saturating_sub(arrived.elapsed());
        if !left.is_zero() {
            let budget = enricher::Budget {
                deadline_ms: left.as_millis() as u64,
                max_requests: self.enrich.max_requests,
                max_context_messages: self.enrich.max_context_messages,
            };
            match plugin.enrich(&cx, &message, budget).await {
                Ok(enriched) => {
                    // What could not be fetched is already a placeholder in the body; the
                    // notes say why, for the operator.
                    for note in &enriched.notes {
                        tracing::info!(note = %note, "enrichment degraded");
                    }
                    // Fetched text obeys the decoded body's rules (crate::hygiene).
                    let mut body = enriched.body;
                    hygiene::strip_nul(&mut body);
                    if body.len() <= hygiene::MAX_TEXT_BYTES {
                        message.body = body;
                    } else {
                        tracing::warn!(
                            bytes = body.len(),
                            "enriched body too large, keeping the plain body"
                        );
                    }
                    context_attachments =
                        storable_context_attachments(&message.attachments, enriched.attachments);
                }
                // Enrichment degrades, never drops: keep the decoded body.
                Err(e) => tracing::warn!("enrichment failed, keeping the plain body: {e}"),
            }
        }
        // Storing, arming the window and telling the observer run on a task of their own: a
        // request dropped mid-way (the channel hung up) cannot leave a stored message without
        // its timer or its typing indicator. (The debounce sweep would still find the window.)
        let dispatcher = self.dispatcher.clone();
        let debouncer = self.debouncer.clone();
        let observer = self.observer.clone();
        let task = tokio::spawn(
            async move {
                let outcome = dispatcher
                    .dispatch_on_own_task(
                        &installation,
                        &message,
                        &context_attachments,
                        command.as_ref(),
                        "message",
                    )
                    .await?;
                if let Outcome::Ingested {
                    flush: Some(ticket),
                    ..
                } = &outcome
                {
                    debouncer.arm(ticket.clone()).await;
                }
                if let Some(observer) = &observer {
                    observer.dispatched(&installation, &message, &outcome);
                }
                Ok::<_, DispatchError>((installation, message, outcome))
            }
            .in_current_span(),
        );
        let (installation, message, outcome) = task
            .await
            .map_err(|e| DispatchError::Aborted(e.to_string()))??;
        if let Outcome::Ingested {
            session_id,
            message_id,
            ..
        } = &outcome
        {
            // One line per accepted message, ids only (never its content).
            tracing::info!(
                installation = %installation.id,
                session = %session_id,
                message_id = %message.message_id,
                row = message_id,
                "message accepted"
            );
        }
        let mut outcome = PayloadOutcome::Dispatched(outcome);
        if is_action && let Some(approvals) = &self.approvals {
            outcome = PayloadOutcome::Action {
                answer: approvals.received(&installation),
                outcome: Box::new(outcome),
            };
        }
        if self.watchers.receiver_count() > 0 {
            let _ = self.watchers.send(Arc::new(Dispatched {
                installation_id: installation.id.clone(),
                message: message.clone(),
                outcome: outcome.label(),
            }));
        }
        tracing::debug!(outcome = %outcome.label(), "dispatched");
        Ok(outcome)
    }
}

/// What [`Ingest::prepare`] made of a payload.
#[derive(Debug)]
pub enum Prepared {
    /// Nothing more to do (ignored, invalid, or rejected for its installation).
    Done(PayloadOutcome),
    /// A chat message of an active installation, decoded; [`Ingest::finish`] stores it.
    Message(Box<PreparedMessage>),
}

/// A decoded chat message waiting for [`Ingest::finish`].
#[derive(Debug)]
pub struct PreparedMessage {
    installation: Installation,
    cx: Arc<InstallationContext>,
    message: InboundMessage,
    command: Option<Command>,
    arrived: Instant,
}

impl PreparedMessage {
    /// The chat it belongs to: messages of one chat must be finished in arrival order.
    pub fn chat_id(&self) -> &str {
        &self.message.chat.id
    }
}

/// Most attachments of quoted or forwarded messages one message keeps (each is a download).
pub const MAX_CONTEXT_ATTACHMENTS: usize = 20;

/// The enricher's attachments as the store takes them: NULs removed from their text, those
/// with an empty or over-long `ref` (or kind) dropped, those the message carries itself (same
/// `ref`) or that repeat one dropped, at most [`MAX_CONTEXT_ATTACHMENTS`]. A plugin's answer
/// is input like any other.
fn storable_context_attachments(
    own: &[crate::runtime::types::Attachment],
    found: Vec<crate::runtime::types::Attachment>,
) -> Vec<crate::runtime::types::Attachment> {
    let mut seen: std::collections::HashSet<String> = own.iter().map(|a| a.ref_.clone()).collect();
    let mut kept = Vec::new();
    for mut attachment in found {
        hygiene::strip_nul(&mut attachment.kind);
        hygiene::strip_nul(&mut attachment.ref_);
        for text in [&mut attachment.name, &mut attachment.mime]
            .into_iter()
            .flatten()
        {
            hygiene::strip_nul(text);
        }
        let too_long = attachment.ref_.len() > hygiene::MAX_ID_BYTES
            || attachment.kind.len() > hygiene::MAX_ID_BYTES
            || attachment
                .name
                .as_ref()
                .is_some_and(|name| name.len() > hygiene::MAX_VALUE_BYTES);
        if attachment.ref_.is_empty() || too_long || !seen.insert(attachment.ref_.clone()) {
            continue;
        }
        if kept.len() == MAX_CONTEXT_ATTACHMENTS {
            tracing::info!(
                max = MAX_CONTEXT_ATTACHMENTS,
                "more attachments in the enriched context than kept"
            );
            break;
        }
        kept.push(attachment);
    }
    kept
}
