//! The cross-replica event relay (SPEC §5, §8; reference `chat-runs.md` A.11): with PostgreSQL,
//! durable session events published on one replica reach SSE subscribers on every other
//! replica through `LISTEN/NOTIFY` plus a database read — never by replaying payloads.
//!
//! Owns the notice format, the outbox that turns published durable events into notices, and the
//! listener task that turns other replicas' notices into local events. It must not hold SQL
//! (`crate::store::notify` sends and listens; `crate::store::runs` reads) or speak HTTP.
//!
//! # Design
//!
//! - **Outbox.** [`Relay::start`] installs an [`EventTap`] on the process's [`EventHub`]: every
//!   durable event published through [`EventHub::publish`] (`message`, `status`,
//!   `queue_update`, `error`; never `message_part`) becomes a small [`Notice`] `{session, kind,
//!   after_message_id?, origin}` on one channel, [`CHANNEL`]. The tap only enqueues (an
//!   unbounded queue; its rate is bounded by the database writes that cause the events), so
//!   publishing never waits on the database; one task sends the notices in order with
//!   `pg_notify`, after the change they describe has committed (publishers publish after
//!   their transaction).
//! - **Origin.** Each relay has a random origin id. The originating replica delivers its own
//!   events at once through its local hub (so its subscribers see `running` before the parts
//!   that follow it, with no database round trip) and its listener ignores notices carrying
//!   its own origin: no duplicates there. This differs from A.11, where the originating
//!   replica also takes durable events only from pubsub; the effect — every durable event
//!   exactly once per subscriber, parts only from the local hub — is the same.
//! - **Listener.** One task per process listens on [`CHANNEL`]. For a notice from another
//!   origin about a session that has subscribers in this process, it reads the current state
//!   from the database — `message`: the messages after `min(after_message_id, the last one
//!   relayed)` (so a lost or reordered notice is covered by the next one); `status`: the run
//!   status; `queue`: the whole queue; `error`: the status's `last_error`, or "the session
//!   was deleted" when the row is gone — and publishes the result to the local hub with
//!   [`EventHub::publish_local`] (which the outbox does not see, so nothing loops). One read
//!   per notice and process, however many subscribers the session has here; each SSE
//!   subscriber then drops messages it already had in its snapshot.
//! - **Duplicates.** The listener remembers the last messages it relayed per session (id and a
//!   fingerprint of the content) and relays a row again only if it changed (an edit keeps the
//!   id); sessions without subscribers are forgotten.
//! - **Lost notices.** When the listening connection drops and reconnects, notices sent in
//!   between are lost: the listener then republishes the status and queue of every session
//!   with local subscribers and the messages after the last one it relayed there. (A session
//!   that had no message relayed yet gets its messages with the next message notice, which
//!   reads from the last relayed id onwards.)
//! - **Parts** stay on the replica that runs the session (A.11 without the enterprise part
//!   relay): a subscriber on another replica sees the stored reply, not its streaming.
//!
//! SQLite has no notifications and one process owns the file: [`Relay::start`] answers `None`
//! and the local hub is the whole story.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::events::{EventHub, EventTap, SessionEvent};
use crate::store::{Database, Listener, Notification, RunStore, StoreError};

/// The PostgreSQL notification channel every replica publishes and listens on.
pub const CHANNEL: &str = "switchboard_session_events";

/// Messages per session the listener remembers to avoid relaying a row twice.
const REMEMBERED_MESSAGES: usize = 256;

/// Pause before listening again after the notification connection failed.
const RELISTEN_BACKOFF: Duration = Duration::from_secs(1);

/// What changed, as a notice says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A message row was stored, promoted or edited (`after_message_id` = its id − 1).
    Message,
    /// The run status changed.
    Status,
    /// The queue changed.
    Queue,
    /// A run failed (the text is the status's `last_error`) or the session was deleted.
    Error,
}

impl NoticeKind {
    /// The kind's name as it is serialized (a plain log field).
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Message => "message",
            NoticeKind::Status => "status",
            NoticeKind::Queue => "queue",
            NoticeKind::Error => "error",
        }
    }
}

/// The payload of one notification on [`CHANNEL`] (JSON). It only says what to re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The session.
    pub session: String,
    /// What changed.
    pub kind: NoticeKind,
    /// For `message`: re-read the messages with a larger id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_message_id: Option<i64>,
    /// The relay that sent it (its own listener ignores it).
    pub origin: String,
}

impl Notice {
    /// The notice for a durable `event` of `session_id`; `None` for `message_part` (parts never
    /// leave the replica).
    pub fn of(session_id: &str, event: &SessionEvent, origin: &str) -> Option<Notice> {
        let (kind, after_message_id) = match event {
            SessionEvent::Message { id, .. } => (NoticeKind::Message, Some(id - 1)),
            SessionEvent::Status { .. } => (NoticeKind::Status, None),
            SessionEvent::QueueUpdate { .. } => (NoticeKind::Queue, None),
            SessionEvent::Error { .. } => (NoticeKind::Error, None),
            SessionEvent::MessagePart { .. } => return None,
            // Compaction progress is not re-readable from the database: it stays on the replica
            // that ran it (its durable result, the notice message, is relayed as a message).
            SessionEvent::CompactionStart { .. }
            | SessionEvent::CompactionDone { .. }
            | SessionEvent::CompactionFailed { .. } => return None,
        };
        Some(Notice {
            session: session_id.to_owned(),
            kind,
            after_message_id,
            origin: origin.to_owned(),
        })
    }
}

/// The hub tap: durable events → notices → the sender task.
struct Outbox {
    origin: String,
    notices: mpsc::UnboundedSender<Notice>,
}

impl EventTap for Outbox {
    fn published(&self, session_id: &str, event: &SessionEvent) {
        if let Some(notice) = Notice::of(session_id, event, &self.origin) {
            // Err = the relay is stopping: nothing to send any more.
            let _ = self.notices.send(notice);
        }
    }
}

/// A running relay (PostgreSQL only). Stop it with [`Relay::stop`]; dropping it leaves the
/// tasks running until the database is closed.
#[derive(Debug)]
pub struct Relay {
    origin: String,
    hub: EventHub,
    shutdown: watch::Sender<bool>,
    sender: JoinHandle<()>,
    listener: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying `hub`'s durable events through `db`: installs the outbox tap and spawns
    /// the sender and listener tasks. `None` on SQLite (no notifications; nothing to do).
    /// Fails if the listening connection cannot be opened.
    pub async fn start(db: &Database, hub: &EventHub) -> Result<Option<Relay>, StoreError> {
        let Some(listener) = db.listen(CHANNEL).await? else {
            return Ok(None);
        };
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let span = tracing::info_span!("event_relay", origin = %origin);
        let (notices, outbox) = mpsc::unbounded_channel();
        let (shutdown, stop) = watch::channel(false);
        let sender = tokio::spawn(send_notices(db.clone(), outbox).instrument(span.clone()));
        let receiver = Receiver {
            store: db.runs(),
            hub: hub.clone(),
            origin: origin.clone(),
            relayed: HashMap::new(),
        };
        let listener = tokio::spawn(receiver.run(listener, stop).instrument(span));
        hub.set_tap(Some(Arc::new(Outbox {
            origin: origin.clone(),
            notices,
        })));
        tracing::info!(origin = %origin, channel = CHANNEL, "cross-replica event relay started");
        Ok(Some(Relay {
            origin,
            hub: hub.clone(),
            shutdown,
            sender,
            listener,
        }))
    }

    /// This relay's origin id (in the notices it sends).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Stops relaying: removes the tap, sends the notices still queued, stops listening.
    pub async fn stop(self) {
        self.hub.set_tap(None); // drops the outbox: the sender ends once it has drained
        let _ = self.sender.await;
        let _ = self.shutdown.send(true);
        let _ = self.listener.await;
        tracing::info!(origin = %self.origin, "cross-replica event relay stopped");
    }
}

/// Sends queued notices in order until the outbox is dropped.
async fn send_notices(db: Database, mut notices: mpsc::UnboundedReceiver<Notice>) {
    while let Some(notice) = notices.recv().await {
        let payload = match serde_json::to_string(&notice) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(session = %notice.session, "notice not encoded: {e}");
                continue;
            }
        };
        if let Err(e) = db.notify(CHANNEL, &payload).await {
            // Best effort, like A.11's pubsub: other replicas catch up with the next notice
            // for the session (message reads start at the last relayed id).
            tracing::warn!(session = %notice.session, kind = notice.kind.as_str(), "notice not sent (other replicas see this change with the next one): {e}");
        }
    }
}

/// What the listener relayed in one session.
#[derive(Debug, Default)]
struct Relayed {
    /// The largest message id relayed.
    high: i64,
    /// The last relayed messages: id and content fingerprint.
    recent: VecDeque<(i64, u64)>,
}

impl Relayed {
    /// Records `message`; `false` if exactly this row was relayed already.
    fn record(&mut self, id: i64, fingerprint: u64) -> bool {
        if let Some(position) = self.recent.iter().position(|(i, _)| *i == id) {
            if self.recent[position].1 == fingerprint {
                return false;
            }
            // An edit: the row changed and every later message was deleted.
            self.recent.retain(|(i, _)| *i < id);
        }
        if self.recent.len() == REMEMBERED_MESSAGES {
            self.recent.pop_front();
        }
        self.recent.push_back((id, fingerprint));
        self.high = self.high.max(id);
        true
    }
}

/// The id and a content fingerprint of a `message` event (`None` for other events): two
/// events with the same of both are the same row, unchanged.
pub(crate) fn message_fingerprint(event: &SessionEvent) -> Option<(i64, u64)> {
    let SessionEvent::Message {
        id,
        role,
        kind,
        body,
        created_at_ms,
    } = event
    else {
        return None;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (role, kind, body, created_at_ms).hash(&mut hasher);
    Some((*id, hasher.finish()))
}

/// The listener task's state.
struct Receiver {
    store: RunStore,
    hub: EventHub,
    origin: String,
    relayed: HashMap<String, Relayed>,
}

impl Receiver {
    async fn run(mut self, mut listener: Listener, mut stop: watch::Receiver<bool>) {
        loop {
            let next = tokio::select! {
                _ = stop.changed() => break,
                next = listener.next() => next,
            };
            match next {
                Ok(Notification::Payload(payload)) => match serde_json::from_str(&payload) {
                    Ok(notice) => self.apply(notice).await,
                    Err(e) => tracing::warn!(%payload, "ignoring a malformed notice: {e}"),
                },
                Ok(Notification::Reconnected) => {
                    tracing::warn!(
                        "event relay reconnected: notices may have been lost; resynchronising"
                    );
                    self.resync_all().await;
                }
                Err(e) if Listener::is_closed_error(&e) => break,
                Err(e) => {
                    tracing::warn!(
                        "event relay lost its listening connection (retrying in {RELISTEN_BACKOFF:?}): {e}"
                    );
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tokio::time::sleep(RELISTEN_BACKOFF) => {}
                    }
                    if listener.relisten().await.is_ok() {
                        self.resync_all().await;
                    }
                }
            }
        }
        tracing::debug!("event relay listener stopped");
    }

    /// Turns another replica's notice into local events read from the database.
    async fn apply(&mut self, notice: Notice) {
        if notice.origin == self.origin {
            return; // delivered locally when it was published
        }
        if self.hub.subscriber_count(&notice.session) == 0 {
            self.relayed.remove(&notice.session);
            return;
        }
        let session = notice.session.as_str();
        tracing::debug!(
            session,
            kind = notice.kind.as_str(),
            after = notice.after_message_id,
            "relaying a change from another replica"
        );
        match notice.kind {
            NoticeKind::Message => {
                self.relay_messages(session, notice.after_message_id.unwrap_or(0))
                    .await
            }
            NoticeKind::Status => self.relay_status(session).await,
            NoticeKind::Queue => self.relay_queue(session).await,
            NoticeKind::Error => self.relay_error(session).await,
        }
    }

    async fn relay_messages(&mut self, session: &str, after: i64) {
        let from = match self.relayed.get(session) {
            Some(relayed) if relayed.high > 0 => after.min(relayed.high),
            _ => after,
        };
        let messages = match self.store.messages_after(session, from).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(session, after = from, "relayed messages not read: {e}");
                return;
            }
        };
        let relayed = self.relayed.entry(session.to_owned()).or_default();
        for message in &messages {
            let event = SessionEvent::message(message);
            if let Some((id, fingerprint)) = message_fingerprint(&event)
                && relayed.record(id, fingerprint)
            {
                self.hub.publish_local(session, event);
            }
        }
    }

    async fn relay_status(&mut self, session: &str) {
        match self.store.get_run_state(session).await {
            Ok(Some(status)) => self.hub.publish_local(
                session,
                SessionEvent::Status {
                    state: status.state,
                    last_error: status.last_error,
                },
            ),
            Ok(None) => {} // deleted: the `error` notice says so
            Err(e) => tracing::warn!(session, "relayed status not read: {e}"),
        }
    }

    async fn relay_queue(&mut self, session: &str) {
        match self.store.list_queue(session).await {
            Ok(queue) => self
                .hub
                .publish_local(session, SessionEvent::QueueUpdate { queue }),
            Err(e) => tracing::warn!(session, "relayed queue not read: {e}"),
        }
    }

    async fn relay_error(&mut self, session: &str) {
        let message = match self.store.get_run_state(session).await {
            Ok(Some(status)) => status.last_error,
            Ok(None) => {
                self.relayed.remove(session);
                Some("the session was deleted".to_owned())
            }
            Err(e) => {
                tracing::warn!(session, "relayed error not read: {e}");
                None
            }
        };
        if let Some(message) = message {
            self.hub
                .publish_local(session, SessionEvent::Error { message });
        }
    }

    /// After lost notices: the state of every session with local subscribers, again.
    async fn resync_all(&mut self) {
        let sessions = self.hub.subscribed_sessions();
        self.relayed.retain(|session, _| sessions.contains(session));
        for session in &sessions {
            self.relay_status(session).await;
            self.relay_queue(session).await;
            if let Some(high) = self.relayed.get(session).map(|r| r.high) {
                self.relay_messages(session, high).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunState;

    #[test]
    fn notices_name_what_to_reread_and_never_carry_parts() {
        let message = SessionEvent::Message {
            id: 42,
            role: "user".into(),
            kind: "message".into(),
            body: "a long body that is never put in a notice".into(),
            created_at_ms: 1,
        };
        let notice = Notice::of("s1", &message, "me").unwrap();
        assert_eq!(notice.kind, NoticeKind::Message);
        assert_eq!(notice.after_message_id, Some(41));
        let json = serde_json::to_string(&notice).unwrap();
        assert_eq!(
            json,
            r#"{"session":"s1","kind":"message","after_message_id":41,"origin":"me"}"#
        );
        let status = SessionEvent::Status {
            state: RunState::Running,
            last_error: None,
        };
        assert_eq!(
            serde_json::to_string(&Notice::of("s1", &status, "me").unwrap()).unwrap(),
            r#"{"session":"s1","kind":"status","origin":"me"}"#
        );
        let part = SessionEvent::MessagePart {
            run_id: "r".into(),
            text: "t".into(),
        };
        assert_eq!(Notice::of("s1", &part, "me"), None);
    }

    #[test]
    fn a_row_is_relayed_again_only_when_it_changed() {
        let mut relayed = Relayed::default();
        assert!(relayed.record(5, 1));
        assert!(relayed.record(6, 2));
        assert!(!relayed.record(6, 2), "same row again");
        assert!(!relayed.record(5, 1));
        assert_eq!(relayed.high, 6);
        assert!(relayed.record(5, 9), "edited: same id, new content");
        assert!(
            relayed.record(6, 2),
            "the edit truncated 6; a row 6 is new again"
        );
        for id in 100..100 + REMEMBERED_MESSAGES as i64 {
            assert!(relayed.record(id, 0));
        }
        assert_eq!(relayed.recent.len(), REMEMBERED_MESSAGES);
    }
}
