//! The inbound dispatcher (SPEC §3).
//!
//! Owns the ordered, durable pipeline one decoded message goes through before the channel gets
//! its ACK: installation → dedup claim → group filter → identity policy → session → command
//! handling and append (with the in-transaction dedup Mark and the durable debounce arm) →
//! outcome. Every drop writes an audit row without message content. Product outcomes are
//! [`Outcome`]s; only infrastructure failures are [`DispatchError`]s (the channel should
//! redeliver), and they release the dedup claim first so the redelivery is processed.
//!
//! The common case takes a shorter route with the same results: when the group filter and
//! the identity policy (which only read) let the message through and its session already
//! exists (its id is cached per chat), the dedup claim is made inside the append transaction
//! itself
//! ([`IngestStore::claim_and_append`]) — one write transaction per message instead of a claim
//! and then an append, and no claim is ever left in flight. A duplicate is still dropped as
//! `duplicate` (audited once); drops, pairing codes and first messages of a chat keep the
//! claim-first order, so replays never re-audit or re-send a code.
//!
//! Must not touch wasm or HTTP: the caller decodes, enriches and parses commands through the
//! plugin, hands the results in, and renders the outcome (reply, notice, pairing code) itself.
//! SQL lives in `crate::store`; time comes from an injectable [`Clock`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::domain::Clock;
use crate::runtime::types::{Attachment, ChatKind as WireChatKind, InboundMessage};
use crate::store::{
    AccessPolicy, AppendOutcome, AppendRequest, AppendedMessage, AuditEntry, ChatKind, DedupClaim,
    FlushTicket, IngestStore, Installation, InstallationStore, OutboxTarget, PairingAsk,
    PairingRequest, PairingStore, SessionKey, StoreError, TurnKind,
};

/// The commands the host runs itself; any other name goes to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// `stop`: interrupt the session's current run.
    Stop,
    /// `compact`: summarise the session's context now.
    Compact,
    /// `status`: the session's run state.
    Status,
    /// `help`: the commands.
    Help,
}

impl Builtin {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Stop => "stop",
            Builtin::Compact => "compact",
            Builtin::Status => "status",
            Builtin::Help => "help",
        }
    }
}

/// What an inbound event means to the host, beyond its text: the plugin's command parse
/// (`{name, args}`) sorted into the host's built-ins and the agent's commands, or an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `new`: a fresh context, starting with `args` when not empty.
    New(String),
    /// A command the host answers itself.
    Builtin(Builtin),
    /// Any other command: a `command` turn for the agent, name and args intact.
    Agent {
        /// The command's name.
        name: String,
        /// Its argument text.
        args: String,
    },
    /// A button or card callback: an `action` turn for the agent.
    Action {
        /// The control's name.
        name: String,
        /// The control's value.
        value: String,
        /// The channel message carrying the control.
        on_message: Option<String>,
        /// The channel's token for updating that message later (never stored with the turn).
        update_token: Option<String>,
    },
}

impl Command {
    /// The host's reading of a parsed command `{name, args}` (names compare case-insensitively).
    pub fn parsed(name: &str, args: &str) -> Command {
        let name = name.trim().to_ascii_lowercase();
        let args = args.trim().to_owned();
        match name.as_str() {
            "new" => Command::New(args),
            "stop" => Command::Builtin(Builtin::Stop),
            "compact" => Command::Builtin(Builtin::Compact),
            "status" => Command::Builtin(Builtin::Status),
            "help" => Command::Builtin(Builtin::Help),
            _ => Command::Agent { name, args },
        }
    }
}

/// The event type recorded in audit rows when the caller does not know a better one.
pub const DEFAULT_EVENT_TYPE: &str = "message";

/// Why an inbound event was dropped (the audit's `drop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No installation for the event's routing key (no dedup claim is made).
    InvalidEvent,
    /// The installation is revoked.
    RevokedInstallation,
    /// Already processed, or being processed right now.
    Duplicate,
    /// A group message that does not address the bot.
    NotAddressedInGroup,
    /// The sender cannot be bound (no channel user id) under the `bound` policy.
    UnboundUser,
    /// The event names another installation than the one whose secrets verified it (or whose
    /// connection carried it): never ingested there, never re-routed.
    RoutedElsewhere,
    /// A verified event that is not a chat message the host handles (the plugin ignored it).
    UnsupportedEvent,
    /// A verified event with an id the backends cannot store (a NUL character, or longer than
    /// [`MAX_ID_BYTES`](crate::hygiene::MAX_ID_BYTES)) or an oversized text
    /// ([`crate::hygiene`]); refused as malformed instead of failing every redelivery.
    UnstorableValue,
}

impl DropReason {
    /// The snake_case name stored in the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidEvent => "invalid_event",
            DropReason::RevokedInstallation => "revoked_installation",
            DropReason::Duplicate => "duplicate",
            DropReason::NotAddressedInGroup => "not_addressed_in_group",
            DropReason::UnboundUser => "unbound_user",
            DropReason::RoutedElsewhere => "routed_elsewhere",
            DropReason::UnsupportedEvent => "unsupported_event",
            DropReason::UnstorableValue => "unstorable_value",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one inbound message. Never an error: the channel gets its ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped (and audited) for the given reason.
    Dropped(DropReason),
    /// The sender is not bound (`bound` policy): the caller tells them their pairing code, or
    /// that too many are pending ([`PairingAsk::Full`]).
    NeedsBinding {
        /// The sender's channel user id (the notice goes to them directly).
        user_id: String,
        /// Their pairing code (new, or the one they already have), or `Full`.
        pairing: PairingAsk,
    },
    /// The message is stored; its session's debounced run is scheduled.
    Ingested {
        /// The session.
        session_id: String,
        /// The stored message row.
        message_id: i64,
        /// The debounce window to arm (durable already; the caller starts the timer).
        flush: Option<FlushTicket>,
    },
    /// A bare `/new`: the session's next message starts a fresh context.
    FreshPending {
        /// The session.
        session_id: String,
    },
    /// A built-in command (not stored as a turn): the caller carries it out and answers.
    Builtin {
        /// The session.
        session_id: String,
        /// Which one.
        command: Builtin,
    },
}

impl Outcome {
    /// The snake_case name of the outcome kind (`dropped`, `needs_binding`, `ingested`,
    /// `fresh_pending`, `builtin`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Dropped(_) => "dropped",
            Outcome::NeedsBinding { .. } => "needs_binding",
            Outcome::Ingested { .. } => "ingested",
            Outcome::FreshPending { .. } => "fresh_pending",
            Outcome::Builtin { .. } => "builtin",
        }
    }
}

/// An infrastructure failure: nothing durable was promised, the claim was released (best
/// effort), and the channel should redeliver (NACK / 5xx).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline task ended without an answer (panic or runtime shutdown). A claim it held
    /// becomes re-claimable after 60 s.
    #[error("the dispatch task ended without an answer: {0}")]
    Aborted(String),
    /// Another delivery of the same message holds its dedup claim and has not finished (or a
    /// crash left the claim open): the message is neither stored nor known to be lost, so it
    /// must not be acknowledged as a duplicate. The channel should retry later; the claim is
    /// taken over once it is older than [`crate::store::RECLAIM_AFTER_MS`].
    #[error(
        "message {message_id} is being processed by another delivery (or a crash left its claim \
         open); retry later"
    )]
    InFlight {
        /// The channel message id.
        message_id: String,
    },
}

/// The identifying fields of an inbound event, for audit rows (never content).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// The channel's event type (e.g. `im.message.receive_v1`).
    pub event_type: String,
    /// Channel event id.
    pub event_id: String,
    /// Channel message id.
    pub message_id: String,
    /// Chat id.
    pub chat_id: String,
}

impl EventMeta {
    /// The ids of a decoded message, with event type [`DEFAULT_EVENT_TYPE`].
    pub fn of(message: &InboundMessage) -> EventMeta {
        EventMeta::of_event(message, DEFAULT_EVENT_TYPE)
    }

    /// The ids of a decoded message delivered as `event_type`, made storable for the audit
    /// ([`hygiene::printable`](crate::hygiene::printable): NUL shown as U+FFFD, clipped).
    pub fn of_event(message: &InboundMessage, event_type: &str) -> EventMeta {
        use crate::hygiene::printable;
        EventMeta {
            event_type: event_type.to_owned(),
            event_id: printable(&message.event_id),
            message_id: printable(&message.message_id),
            chat_id: printable(&message.chat.id),
        }
    }
}

/// A point of the pipeline at which a [`StepHook`] is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Right after the dedup claim was won (not reached without a message id, nor when the
    /// claim is made inside the append transaction: a message to an existing session that
    /// passes the group filter and the identity policy).
    Claimed,
    /// Right before the append transaction.
    BeforeAppend,
}

/// A callback awaited at each [`Step`] (for tests and diagnostics; it runs on the pipeline
/// task, so it can delay, but not cancel, the pipeline).
pub type StepHook = Arc<dyn Fn(Step) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Looks up the installation for an event of `channel` with `routing_key`.
///
/// Unknown (or no routing key) → audit `invalid_event` with no installation and
/// `Err(Outcome::Dropped(InvalidEvent))`; revoked → audit `revoked_installation` and
/// `Err(Outcome::Dropped(RevokedInstallation))`. No dedup claim is made either way. The outer
/// error is an infrastructure failure (including secrets that do not decrypt).
pub async fn resolve_installation(
    installations: &InstallationStore,
    channel: &str,
    routing_key: Option<&str>,
    event: &EventMeta,
    now_ms: i64,
) -> Result<Result<Installation, Outcome>, DispatchError> {
    let found = match routing_key.filter(|k| !k.is_empty()) {
        Some(key) => installations.get_by_routing_key(channel, key).await?,
        None => None,
    };
    let ingest = installations.database().ingest();
    let (installation_id, reason) = match found {
        Some(installation) if installation.is_active() => return Ok(Ok(installation)),
        Some(installation) => (Some(installation.id), DropReason::RevokedInstallation),
        None => (None, DropReason::InvalidEvent),
    };
    let entry = AuditEntry {
        installation_id,
        channel: channel.to_owned(),
        chat_id: event.chat_id.clone(),
        event_type: event.event_type.clone(),
        event_id: event.event_id.clone(),
        message_id: event.message_id.clone(),
        drop_reason: reason.as_str().to_owned(),
    };
    write_audit(&ingest, &entry, now_ms).await;
    tracing::info!(
        channel,
        routing_key = routing_key.unwrap_or(""),
        reason = reason.as_str(),
        "inbound event dropped"
    );
    Ok(Err(Outcome::Dropped(reason)))
}

/// Writes an audit row; a failure is logged and otherwise ignored (the drop stands).
async fn write_audit(ingest: &IngestStore, entry: &AuditEntry, now_ms: i64) {
    if let Err(e) = ingest.insert_audit(entry, now_ms).await {
        tracing::warn!(reason = %entry.drop_reason, "writing the inbound audit row failed: {e}");
    }
}

/// How the claim is finalized once the pipeline body is done.
enum Finalize {
    /// Mark it processed (drops after the claim, pairing codes).
    Mark,
    /// Nothing to do: marked inside the append transaction, or lost.
    Done,
}

/// Most entries in the dispatcher's session id cache; it is emptied when full.
const SESSION_CACHE_CAP: usize = 65_536;

/// Session ids by (installation, chat key), so the common path skips the session read. Never
/// wrong for long: an id whose session was deleted makes the append find no session (nothing
/// is written), and the entry is dropped and the message takes the claim-first path, which
/// creates a new session.
#[derive(Debug, Default)]
struct SessionCache(Mutex<HashMap<(String, String), String>>);

impl SessionCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, installation_id: &str, chat_key: &str) -> Option<String> {
        self.map()
            .get(&(installation_id.to_owned(), chat_key.to_owned()))
            .cloned()
    }

    fn insert(&self, installation_id: &str, chat_key: &str, session_id: &str) {
        let mut map = self.map();
        if map.len() >= SESSION_CACHE_CAP {
            map.clear();
        }
        map.insert(
            (installation_id.to_owned(), chat_key.to_owned()),
            session_id.to_owned(),
        );
    }

    fn remove(&self, installation_id: &str, chat_key: &str) {
        self.map()
            .remove(&(installation_id.to_owned(), chat_key.to_owned()));
    }
}

/// The dispatcher: a cheap, cloneable handle (stores and clock).
#[derive(Clone)]
pub struct Dispatcher {
    installations: InstallationStore,
    ingest: IngestStore,
    pairings: PairingStore,
    clock: Arc<dyn Clock>,
    hook: Option<StepHook>,
    sessions: Arc<SessionCache>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("backend", &self.installations.database().backend())
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `installations` (and its database) reading time from `clock`.
    pub fn new(installations: InstallationStore, clock: Arc<dyn Clock>) -> Dispatcher {
        let ingest = installations.database().ingest();
        let pairings = installations.database().pairings();
        Dispatcher {
            installations,
            ingest,
            pairings,
            clock,
            hook: None,
            sessions: Arc::default(),
        }
    }

    /// The same dispatcher with `hook` awaited at every [`Step`].
    pub fn with_step_hook(mut self, hook: StepHook) -> Dispatcher {
        self.hook = Some(hook);
        self
    }

    /// The installations store.
    pub fn installations(&self) -> &InstallationStore {
        &self.installations
    }

    /// [`resolve_installation`] with this dispatcher's store and clock.
    pub async fn resolve_installation(
        &self,
        channel: &str,
        routing_key: Option<&str>,
        event: &EventMeta,
    ) -> Result<Result<Installation, Outcome>, DispatchError> {
        resolve_installation(
            &self.installations,
            channel,
            routing_key,
            event,
            self.clock.now_ms(),
        )
        .await
    }

    /// The active installation for `(channel, routing_key)`, if any; writes no audit row (use
    /// [`Dispatcher::reject_installation`] for events it cannot serve).
    pub async fn installation(
        &self,
        channel: &str,
        routing_key: Option<&str>,
    ) -> Result<Option<Installation>, DispatchError> {
        let Some(key) = routing_key.filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        Ok(self
            .installations
            .get_by_routing_key(channel, key)
            .await?
            .filter(Installation::is_active))
    }

    /// Drops an event that [`Dispatcher::installation`] found no active installation for:
    /// audits `invalid_event` (unknown) or `revoked_installation`. Should the installation have
    /// become active in between, the event is still dropped as `invalid_event` (audited with
    /// the installation id).
    pub async fn reject_installation(
        &self,
        channel: &str,
        routing_key: Option<&str>,
        event: &EventMeta,
    ) -> Result<Outcome, DispatchError> {
        match self
            .resolve_installation(channel, routing_key, event)
            .await?
        {
            Err(outcome) => Ok(outcome),
            Ok(installation) => {
                let entry = audit_entry(&installation, event, DropReason::InvalidEvent);
                write_audit(&self.ingest, &entry, self.clock.now_ms()).await;
                Ok(Outcome::Dropped(DropReason::InvalidEvent))
            }
        }
    }

    /// Drops an event that reached `installation` but must not be ingested there (`reason`:
    /// [`DropReason::RoutedElsewhere`], [`DropReason::UnsupportedEvent`]): writes the audit
    /// row (ids only, no content) and answers the drop.
    pub async fn refuse(
        &self,
        installation: &Installation,
        event: &EventMeta,
        reason: DropReason,
    ) -> Outcome {
        self.audit(installation, event, reason, self.clock.now_ms())
            .await;
        Outcome::Dropped(reason)
    }

    /// Runs SPEC §3 steps 2–8 for one decoded (and enriched) message of an active
    /// `installation`: dedup claim → group filter → identity policy → session → command /
    /// append (+ in-transaction Mark) → outcome. `command` is the plugin's parse of the
    /// message's `command_body`; `event_type` goes into audit rows.
    ///
    /// The pipeline runs on its own task, so dropping the returned future (a cancelled
    /// request) does not stop it halfway: the claim is always finalized (Mark, or Release on
    /// an infrastructure failure, which is then returned as the error).
    pub async fn dispatch(
        &self,
        installation: &Installation,
        message: &InboundMessage,
        command: Option<&Command>,
        event_type: &str,
    ) -> Result<Outcome, DispatchError> {
        let this = self.clone();
        let installation = installation.clone();
        let message = message.clone();
        let command = command.cloned();
        let event_type = event_type.to_owned();
        let task = tokio::spawn(async move {
            this.run(&installation, &message, &[], command.as_ref(), &event_type)
                .await
        });
        task.await
            .map_err(|e| DispatchError::Aborted(e.to_string()))?
    }

    /// [`Dispatcher::dispatch`] on the caller's task, for a caller that already runs on a task
    /// of its own together with what must follow the outcome (arming the window, observers):
    /// such a task cannot be dropped halfway either, and the message costs one spawn, not two.
    /// `context_attachments` are the ones the enricher found in the quoted or forwarded
    /// messages: stored after the message's own, marked with [`CONTEXT_ORIGIN`], and
    /// downloaded like them.
    pub async fn dispatch_on_own_task(
        &self,
        installation: &Installation,
        message: &InboundMessage,
        context_attachments: &[Attachment],
        command: Option<&Command>,
        event_type: &str,
    ) -> Result<Outcome, DispatchError> {
        self.run(
            installation,
            message,
            context_attachments,
            command,
            event_type,
        )
        .await
    }

    async fn step(&self, step: Step) {
        if let Some(hook) = &self.hook {
            hook(step).await;
        }
    }

    async fn audit(
        &self,
        installation: &Installation,
        event: &EventMeta,
        reason: DropReason,
        now_ms: i64,
    ) {
        write_audit(
            &self.ingest,
            &audit_entry(installation, event, reason),
            now_ms,
        )
        .await;
        tracing::info!(
            installation = %installation.id,
            message_id = %event.message_id,
            reason = reason.as_str(),
            "inbound message dropped"
        );
    }

    /// The pipeline with its claim handling; runs on the dispatch task.
    async fn run(
        &self,
        installation: &Installation,
        message: &InboundMessage,
        context: &[Attachment],
        command: Option<&Command>,
        event_type: &str,
    ) -> Result<Outcome, DispatchError> {
        let now_ms = self.clock.now_ms();
        let event = EventMeta::of_event(message, event_type);

        // Steps 2–8 in one transaction when they can be (see the module docs).
        if !message.message_id.is_empty()
            && let Some(outcome) = self
                .claim_in_append(installation, message, context, command, &event, now_ms)
                .await
                .inspect_err(|error| {
                    tracing::warn!(
                        installation = %installation.id,
                        message_id = %message.message_id,
                        "dispatch failed, the channel should redeliver: {error}"
                    );
                })?
        {
            return Ok(outcome);
        }

        // Step 2: dedup claim (none without a message id).
        let claim = if message.message_id.is_empty() {
            None
        } else {
            match self
                .ingest
                .claim_dedup(&installation.id, &message.message_id, now_ms)
                .await?
            {
                Some(claim) => Some(claim),
                None => return self.duplicate(installation, &event, now_ms).await,
            }
        };
        if claim.is_some() {
            self.step(Step::Claimed).await;
        }

        match self
            .after_claim(
                installation,
                message,
                context,
                command,
                &event,
                claim.as_ref(),
                now_ms,
            )
            .await
        {
            Ok((outcome, finalize)) => {
                if let (Finalize::Mark, Some(claim)) = (finalize, &claim) {
                    self.mark(claim).await;
                }
                Ok(outcome)
            }
            Err(error) => {
                if let Some(claim) = &claim {
                    self.release(claim).await;
                }
                tracing::warn!(
                    installation = %installation.id,
                    message_id = %message.message_id,
                    "dispatch failed, the channel should redeliver: {error}"
                );
                Err(error)
            }
        }
    }

    /// The answer for a message whose dedup claim another delivery won: a duplicate (audited)
    /// once that delivery has finished, [`DispatchError::InFlight`] while it has not — an ACK
    /// then could lose the message if that delivery never finishes.
    async fn duplicate(
        &self,
        installation: &Installation,
        event: &EventMeta,
        now_ms: i64,
    ) -> Result<Outcome, DispatchError> {
        if self
            .ingest
            .dedup_in_flight(&installation.id, &event.message_id)
            .await?
        {
            tracing::info!(
                installation = %installation.id,
                message_id = %event.message_id,
                "a redelivery met a claim still in flight; asking the channel to retry"
            );
            return Err(DispatchError::InFlight {
                message_id: event.message_id.clone(),
            });
        }
        self.audit(installation, event, DropReason::Duplicate, now_ms)
            .await;
        Ok(Outcome::Dropped(DropReason::Duplicate))
    }

    /// Marks the claim processed after a product outcome decided outside the append
    /// transaction. A failure is logged: the outcome stands, and the claim becomes
    /// re-claimable after 60 s.
    async fn mark(&self, claim: &DedupClaim) {
        match self.ingest.mark_dedup(claim, self.clock.now_ms()).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                message_id = %claim.message_id,
                "dedup claim was taken over before it could be marked"
            ),
            Err(e) => tracing::warn!(
                message_id = %claim.message_id,
                "marking the dedup claim failed: {e}"
            ),
        }
    }

    /// Releases the claim after an infrastructure failure so a redelivery is processed.
    async fn release(&self, claim: &DedupClaim) {
        if let Err(e) = self.ingest.release_dedup(claim).await {
            tracing::warn!(
                message_id = %claim.message_id,
                "releasing the dedup claim failed (re-claimable after 60 s): {e}"
            );
        }
    }

    /// Steps 2–8 with the dedup claim inside the append transaction, when the message passes
    /// the group filter and the identity policy and its session exists. `Ok(None)`: it does
    /// not (or the session was deleted meanwhile); nothing was written and no claim was made,
    /// so the caller runs the claim-first pipeline. An error leaves no claim behind either
    /// (the transaction rolled back), so the redelivery is processed.
    async fn claim_in_append(
        &self,
        installation: &Installation,
        message: &InboundMessage,
        context: &[Attachment],
        command: Option<&Command>,
        event: &EventMeta,
        now_ms: i64,
    ) -> Result<Option<Outcome>, DispatchError> {
        // Step 3, decided without side effects: a drop takes the claim-first path, and so
        // does a built-in command (it appends nothing).
        if !addressed(message) || matches!(command, Some(Command::Builtin(_))) {
            return Ok(None);
        }
        // Step 4: likewise, only a sender with a binding (under `bound`) goes on.
        if installation.access_policy == AccessPolicy::Bound {
            let user_id = message.sender.id.as_str();
            if user_id.is_empty()
                || self
                    .ingest
                    .get_binding(&installation.id, user_id, &message.sender.alt_ids)
                    .await?
                    .is_none()
            {
                return Ok(None);
            }
        }
        // Step 5: an existing session only; creating one before the claim would create it for
        // duplicates too.
        let key = session_key(message);
        let session_id = match self.sessions.get(&installation.id, &key.chat_key) {
            Some(id) => id,
            None => match self
                .ingest
                .find_session(&installation.id, &key.chat_key)
                .await?
            {
                Some(session) => {
                    self.sessions
                        .insert(&installation.id, &key.chat_key, &session.id);
                    session.id
                }
                None => return Ok(None),
            },
        };

        // Steps 6–8.
        let request = append_request(installation, message, context, command, &session_id);
        self.step(Step::BeforeAppend).await;
        let Some(appended) = self.ingest.claim_and_append(&request, now_ms).await? else {
            // Deleted (a cached id may outlive its session): the claim-first path makes a new
            // one.
            self.sessions.remove(&installation.id, &key.chat_key);
            return Ok(None);
        };
        let outcome = match appended {
            AppendOutcome::ClaimLost => self.duplicate(installation, event, now_ms).await?,
            AppendOutcome::FreshPending => Outcome::FreshPending { session_id },
            AppendOutcome::Appended(appended) => appended_outcome(appended, session_id),
        };
        Ok(Some(outcome))
    }

    /// Steps 3–8, once the claim (if any) is held.
    // The message's parts travel separately as in `run`; a struct for one private call would
    // only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn after_claim(
        &self,
        installation: &Installation,
        message: &InboundMessage,
        context: &[Attachment],
        command: Option<&Command>,
        event: &EventMeta,
        claim: Option<&DedupClaim>,
        now_ms: i64,
    ) -> Result<(Outcome, Finalize), DispatchError> {
        // Step 3: group chats must address the bot.
        if !addressed(message) {
            let reason = DropReason::NotAddressedInGroup;
            self.audit(installation, event, reason, now_ms).await;
            return Ok((Outcome::Dropped(reason), Finalize::Mark));
        }

        // Step 4: identity policy.
        if installation.access_policy == AccessPolicy::Bound {
            let user_id = message.sender.id.as_str();
            let bound = if user_id.is_empty() {
                None
            } else {
                self.ingest
                    .get_binding(&installation.id, user_id, &message.sender.alt_ids)
                    .await?
            };
            if bound.is_none() {
                self.audit(installation, event, DropReason::UnboundUser, now_ms)
                    .await;
                if user_id.is_empty() {
                    // Nobody to give a code to.
                    return Ok((Outcome::Dropped(DropReason::UnboundUser), Finalize::Mark));
                }
                let target = pairing_target(message);
                let request = PairingRequest {
                    installation_id: &installation.id,
                    sender_id: user_id,
                    sender_alt_ids: &message.sender.alt_ids,
                    sender_name: message.sender.display_name.as_deref(),
                    target: &target,
                };
                let pairing = self.pairings.request(&request, now_ms).await?;
                if pairing == PairingAsk::Full {
                    tracing::info!(
                        installation = %installation.id,
                        "an unbound sender asked for access while the pending pairing codes are at the cap"
                    );
                }
                return Ok((
                    Outcome::NeedsBinding {
                        user_id: user_id.to_owned(),
                        pairing,
                    },
                    Finalize::Mark,
                ));
            }
        }

        // Step 5: the session.
        let key = session_key(message);
        let title = session_title(&installation.channel, &key);
        let session = self
            .ingest
            .ensure_session(&installation.id, &key, &title, now_ms)
            .await?;
        self.sessions
            .insert(&installation.id, &key.chat_key, &session.id);

        // A built-in command appends nothing: the caller carries it out.
        if let Some(Command::Builtin(command)) = command {
            return Ok((
                Outcome::Builtin {
                    session_id: session.id,
                    command: *command,
                },
                Finalize::Mark,
            ));
        }

        // Steps 6–7: the turn, appended with the in-transaction Mark.
        let request = append_request(installation, message, context, command, &session.id);
        self.step(Step::BeforeAppend).await;
        let appended = match self.ingest.append(&request, claim, now_ms).await? {
            AppendOutcome::ClaimLost => {
                let outcome = self.duplicate(installation, event, now_ms).await?;
                return Ok((outcome, Finalize::Done));
            }
            AppendOutcome::FreshPending => {
                return Ok((
                    Outcome::FreshPending {
                        session_id: session.id,
                    },
                    Finalize::Done,
                ));
            }
            AppendOutcome::Appended(appended) => appended,
        };

        // Step 8: the outcome.
        Ok((appended_outcome(appended, session.id), Finalize::Done))
    }
}

/// Step 3's test: messages outside direct chats must address the bot.
fn addressed(message: &InboundMessage) -> bool {
    message.chat.kind == WireChatKind::Direct || message.addressed_to_bot
}

/// The session key of `message` (step 5).
/// Where a pairing's answer goes: the chat the sender wrote from, anchored on their message
/// (the notice itself is addressed to the sender).
fn pairing_target(message: &InboundMessage) -> OutboxTarget {
    OutboxTarget {
        chat_id: message.chat.id.clone(),
        chat_type: session_key(message).chat_type.as_str().to_string(),
        thread_id: message.thread_id.clone(),
        reply_to: Some(message.message_id.clone()).filter(|id| !id.is_empty()),
        in_thread: message.thread_id.is_some(),
    }
}

fn session_key(message: &InboundMessage) -> SessionKey {
    let chat_kind = match message.chat.kind {
        WireChatKind::Direct => ChatKind::Direct,
        WireChatKind::Group => ChatKind::Group,
        WireChatKind::Channel => ChatKind::Channel,
    };
    SessionKey::new(&message.chat.id, chat_kind, message.thread_id.as_deref())
}

/// The key of an attachment record that says where the enricher found it (see
/// [`CONTEXT_ORIGIN`]); the message's own attachments have none.
pub const ORIGIN_KEY: &str = "origin";
/// [`ORIGIN_KEY`]'s value for an attachment of a quoted or forwarded message (one the enricher
/// returned), not of the message itself.
pub const CONTEXT_ORIGIN: &str = "context";

/// The turn `message` makes (by its parsed `command`) and its append to `session_id` (steps
/// 6–7); `context` are the attachments the enricher found in quoted or forwarded messages.
fn append_request(
    installation: &Installation,
    message: &InboundMessage,
    context: &[Attachment],
    command: Option<&Command>,
    session_id: &str,
) -> AppendRequest {
    let (turn, body) = match command {
        // A built-in never reaches the append (see `after_claim`); stored as plain text if it
        // did.
        None | Some(Command::Builtin(_)) => (TurnKind::Plain, message.body.clone()),
        Some(Command::New(text)) => match text.trim() {
            // The enricher already stripped the directive and kept what it added (a quoted
            // parent, a transcript); only an unenriched body still carries the command.
            text if !text.is_empty() => {
                let enriched = message.body.trim() != message.command_body.trim();
                let body = if enriched { &message.body } else { text };
                (TurnKind::FreshStart, body.to_owned())
            }
            _ => (TurnKind::MarkFresh, String::new()),
        },
        Some(Command::Agent { name, args }) => (
            TurnKind::Command {
                name: name.clone(),
                args: args.clone(),
            },
            message.body.clone(),
        ),
        Some(Command::Action {
            name,
            value,
            on_message,
            ..
        }) => (
            TurnKind::Action {
                name: name.clone(),
                value: value.clone(),
                on_message: on_message.clone(),
            },
            message.body.clone(),
        ),
    };
    AppendRequest {
        session_id: session_id.to_owned(),
        installation_id: installation.id.clone(),
        body,
        command_body: message.command_body.clone(),
        channel_message_id: message.message_id.clone(),
        thread_id: message.thread_id.clone(),
        sender_id: message.sender.id.clone(),
        turn,
        // Each record names the blob its bytes are downloaded into after the message is stored
        // (a random id: `store::blobs`, `crate::blobs`); without a channel message id there is
        // nothing to fetch the bytes by, so no blob.
        attachments: message
            .attachments
            .iter()
            .map(|a| (a, false))
            .chain(context.iter().map(|a| (a, true)))
            .map(|(a, from_context)| {
                let mut record = serde_json::json!({
                    "kind": a.kind, "name": a.name, "mime": a.mime, "size": a.size, "ref": a.ref_,
                });
                if from_context {
                    record[ORIGIN_KEY] = serde_json::json!(CONTEXT_ORIGIN);
                }
                if !message.message_id.is_empty() {
                    record[crate::store::BLOB_ID_KEY] =
                        serde_json::json!(format!("bl_{}", uuid::Uuid::new_v4().simple()));
                }
                record
            })
            .collect(),
        debounce_ms: installation.debounce_ms,
    }
}

/// The outcome of an appended `turn` in `session_id` (step 8).
fn appended_outcome(appended: AppendedMessage, session_id: String) -> Outcome {
    let flush = appended.flush.map(|(generation, due_at_ms)| FlushTicket {
        session_id: session_id.clone(),
        generation,
        due_at_ms,
    });
    Outcome::Ingested {
        session_id,
        message_id: appended.message_id,
        flush,
    }
}

/// The audit row for a drop of `event` on `installation`.
fn audit_entry(installation: &Installation, event: &EventMeta, reason: DropReason) -> AuditEntry {
    AuditEntry {
        installation_id: Some(installation.id.clone()),
        channel: installation.channel.clone(),
        chat_id: event.chat_id.clone(),
        event_type: event.event_type.clone(),
        event_id: event.event_id.clone(),
        message_id: event.message_id.clone(),
        drop_reason: reason.as_str().to_owned(),
    }
}

/// A new session's title, by chat kind.
fn session_title(channel: &str, key: &SessionKey) -> String {
    let kind = key.chat_type.as_str();
    match (key.chat_type, &key.thread_id) {
        (ChatKind::Direct, _) => format!("{channel} direct chat {}", key.chat_id),
        (_, None) => format!("{channel} {kind} chat {}", key.chat_id),
        (_, Some(thread)) => format!("{channel} thread {thread} in {kind} {}", key.chat_id),
    }
}
