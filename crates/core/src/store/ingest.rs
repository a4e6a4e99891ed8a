//! The durable side of the inbound pipeline (SPEC §3 steps 2–8, §4): user bindings and binding
//! tokens, dedup claims, the drop audit, sessions, the user-message append (with its in-transaction
//! dedup Mark, or the dedup claim itself, and the durable debounce arm) and channel command
//! records.
//!
//! The append is the ingest hot path, and each statement costs a round trip to the database
//! (on SQLite, two thread hand-offs to the connection's thread): its common case is the dedup
//! step, one `UPDATE sessions … RETURNING` and the message `INSERT`.
//!
//! Callers pass "now" in; nothing here reads the clock. Nothing here decides pipeline order
//! either: that is the dispatcher's job (`crate::dispatch`).

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use base64::Engine as _;
use rand::RngCore;

use super::blobs::insert_blob_jobs;
use super::installations::{from_row_both, in_write_tx, is_unique_violation, on_reader, on_writer};
use super::runs::QUEUE_CAP;
use super::runs::{CLEAR_OWNERSHIP, promote_queue_and_arm};
use super::{Backend, Database, Inner, StoreError};

/// Inserts or refreshes a user binding inside transaction `$tx`; evaluates to the
/// [`UserBinding`], or returns [`BindingError::BoundToOtherUser`] from the enclosing function
/// (which drops, and so rolls back, the transaction). Known alt ids are never erased.
macro_rules! upsert_binding {
    ($tx:ident, $fail:ident, $installation_id:expr, $channel_user_id:expr, $user_ref:expr,
     $alt_ids:expr, $now_ms:expr) => {{
        let binding: Option<UserBinding> = sqlx::query_as(
            "INSERT INTO user_bindings (installation_id, channel_user_id, user_ref, alt_ids,
                 bound_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (installation_id, channel_user_id) DO UPDATE
             SET alt_ids = CASE WHEN excluded.alt_ids = '[]' THEN user_bindings.alt_ids
                                ELSE excluded.alt_ids END,
                 bound_at_ms = excluded.bound_at_ms
             WHERE user_bindings.user_ref = excluded.user_ref
             RETURNING installation_id, channel_user_id, user_ref, alt_ids, bound_at_ms",
        )
        .bind($installation_id)
        .bind($channel_user_id)
        .bind($user_ref)
        .bind(alt_ids_json($alt_ids))
        .bind($now_ms)
        .fetch_optional(&mut *$tx)
        .await
        .map_err($fail)?;
        match binding {
            Some(binding) => binding,
            None => {
                return Err(BindingError::BoundToOtherUser {
                    channel_user_id: $channel_user_id.to_string(),
                });
            }
        }
    }};
}

pub(super) use upsert_binding;

/// A dedup claim still in flight may be taken over by a redelivery once it is this old (ms).
pub const RECLAIM_AFTER_MS: i64 = 60_000;
/// How long a binding link stays valid (ms): 15 minutes.
pub const BINDING_TOKEN_TTL_MS: i64 = 15 * 60_000;

/// Why a binding could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The binding link is unknown, expired or already used; nothing changed.
    #[error("the binding token is unknown, expired or already used; mint a new one")]
    InvalidToken,
    /// The channel user is already bound to a different host user; nothing changed.
    #[error("channel user {channel_user_id} is already bound to a different user")]
    BoundToOtherUser {
        /// The channel user id.
        channel_user_id: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A channel user bound to a host user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserBinding {
    /// The installation the channel user id belongs to.
    pub installation_id: String,
    /// The channel user id (the participant id the plugin reports).
    pub channel_user_id: String,
    /// The host-side user.
    pub user_ref: String,
    /// Other ids of the same channel user, as `(scheme, id)` pairs; a message whose sender
    /// carries one of them matches this binding too.
    pub alt_ids: Vec<(String, String)>,
    /// When the binding was made or refreshed (epoch ms).
    pub bound_at_ms: i64,
}

from_row_both!(UserBinding, |row| {
    Ok(UserBinding {
        installation_id: row.try_get("installation_id")?,
        channel_user_id: row.try_get("channel_user_id")?,
        user_ref: row.try_get("user_ref")?,
        alt_ids: parse_alt_ids(&row.try_get::<String, _>("alt_ids")?),
        bound_at_ms: row.try_get("bound_at_ms")?,
    })
});

/// The stored form of alt ids: a JSON array of `[scheme, id]` pairs (empty ids dropped).
pub(super) fn alt_ids_json(alt_ids: &[(String, String)]) -> String {
    let pairs: Vec<&(String, String)> = alt_ids.iter().filter(|(_, id)| !id.is_empty()).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

/// Reads stored alt ids; anything unreadable counts as none.
pub(super) fn parse_alt_ids(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A dedup claim on one channel message: finalize it with [`IngestStore::mark_dedup`] or
/// [`IngestStore::release_dedup`], or hand it to [`IngestStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupClaim {
    /// The installation the message arrived for.
    pub installation_id: String,
    /// The channel message id.
    pub message_id: String,
    /// The fencing token of this claim.
    pub token: String,
}

/// One drop, for the audit (never any message content).
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    /// The installation, when known (`None` for an unknown routing key).
    pub installation_id: Option<String>,
    /// Channel type.
    pub channel: String,
    /// Chat id (empty = NULL).
    pub chat_id: String,
    /// The channel's event type, e.g. `im.message.receive_v1`.
    pub event_type: String,
    /// Channel event id (empty = NULL).
    pub event_id: String,
    /// Channel message id (empty = NULL).
    pub message_id: String,
    /// Why the event was dropped (`duplicate`, `unbound_user`, …).
    pub drop_reason: String,
}

/// A stored audit row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    /// Increasing id.
    pub id: i64,
    /// The installation, if known.
    pub installation_id: Option<String>,
    /// Channel type.
    pub channel: String,
    /// Chat id.
    pub chat_id: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Channel event id.
    pub event_id: Option<String>,
    /// Channel message id.
    pub message_id: Option<String>,
    /// Why it was dropped.
    pub drop_reason: String,
    /// When (epoch ms).
    pub received_at_ms: i64,
}

from_row_both!(AuditRow, |row| {
    Ok(AuditRow {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        channel: row.try_get("channel")?,
        chat_id: row.try_get("chat_id")?,
        event_type: row.try_get("event_type")?,
        event_id: row.try_get("event_id")?,
        message_id: row.try_get("message_id")?,
        drop_reason: row.try_get("drop_reason")?,
        received_at_ms: row.try_get("received_at_ms")?,
    })
});

/// Kind of chat a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatKind {
    /// One-to-one chat with the bot.
    Direct,
    /// Group chat (or a thread inside one).
    Group,
    /// A broadcast or workspace channel (or a thread inside one).
    Channel,
}

impl ChatKind {
    /// The stored name: `direct`, `group` or `channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
            ChatKind::Channel => "channel",
        }
    }

    /// The kind a stored name names (`None` for an unknown name).
    pub fn parse(name: &str) -> Option<ChatKind> {
        match name {
            "direct" => Some(ChatKind::Direct),
            "group" => Some(ChatKind::Group),
            "channel" => Some(ChatKind::Channel),
            _ => None,
        }
    }
}

/// Which session a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// The isolation key: the chat id, or `chat_id:thread_id` for a topic thread in a group.
    pub chat_key: String,
    /// The real chat id.
    pub chat_id: String,
    /// Direct or group.
    pub chat_type: ChatKind,
    /// The topic thread for group thread sessions; always `None` for direct chats.
    pub thread_id: Option<String>,
}

impl SessionKey {
    /// The key of a message in `chat_id`: group messages inside a topic thread get their own
    /// session (`chat:thread`); direct chats never split on threads.
    pub fn new(chat_id: &str, chat_type: ChatKind, thread_id: Option<&str>) -> SessionKey {
        let thread_id = match chat_type {
            ChatKind::Group | ChatKind::Channel => {
                thread_id.filter(|t| !t.is_empty()).map(str::to_owned)
            }
            ChatKind::Direct => None,
        };
        let chat_key = match &thread_id {
            Some(thread) => format!("{chat_id}:{thread}"),
            None => chat_id.to_owned(),
        };
        SessionKey {
            chat_key,
            chat_id: chat_id.to_owned(),
            chat_type,
            thread_id,
        }
    }
}

/// A stored session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    /// Host id (a UUID).
    pub id: String,
    /// Its installation.
    pub installation_id: String,
    /// Isolation key (chat id or `chat:thread`).
    pub chat_key: String,
    /// Real chat id.
    pub chat_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// Topic thread of a group thread session.
    pub thread_id: Option<String>,
    /// Title.
    pub title: String,
    /// Current context revision (starts at 1; `/new` advances it).
    pub context_revision: i64,
    /// A bare `/new` is waiting: the next message starts a new revision.
    pub fresh_pending: bool,
    /// Last inbound channel message id (reply anchor).
    pub reply_to_message_id: Option<String>,
    /// Its topic thread, if any.
    pub reply_thread_id: Option<String>,
    /// `idle`, `pending`, `running` or `error`.
    pub run_state: String,
    /// End of the pending debounce window, if armed.
    pub flush_due_at_ms: Option<i64>,
    /// Bumped by every arm; fences superseded timers.
    pub flush_generation: i64,
    /// Messages with a larger id are in the pending window.
    pub flushed_message_id: i64,
    /// Creation time (epoch ms).
    pub created_at_ms: i64,
    /// Last change (epoch ms).
    pub updated_at_ms: i64,
}

from_row_both!(Session, |row| {
    Ok(Session {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        chat_key: row.try_get("chat_key")?,
        chat_id: row.try_get("chat_id")?,
        chat_type: row.try_get("chat_type")?,
        thread_id: row.try_get("thread_id")?,
        title: row.try_get("title")?,
        context_revision: row.try_get("context_revision")?,
        fresh_pending: row.try_get("fresh_pending")?,
        reply_to_message_id: row.try_get("reply_to_message_id")?,
        reply_thread_id: row.try_get("reply_thread_id")?,
        run_state: row.try_get("run_state")?,
        flush_due_at_ms: row.try_get("flush_due_at_ms")?,
        flush_generation: row.try_get("flush_generation")?,
        flushed_message_id: row.try_get("flushed_message_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
});

/// The columns every session read selects.
const SESSION_COLUMNS: &str = "id, installation_id, chat_key, chat_id, chat_type, thread_id, \
     title, context_revision, fresh_pending, reply_to_message_id, reply_thread_id, run_state, \
     flush_due_at_ms, flush_generation, flushed_message_id, created_at_ms, updated_at_ms";

/// A stored message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Increasing id.
    pub id: i64,
    /// Its session.
    pub session_id: String,
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// `message`, `command`, `action`, `notice` or `summary`.
    pub kind: String,
    /// What the agent reads (the enriched body).
    pub body: String,
    /// The user's own text, when it differs in purpose from the body (commands).
    pub command_body: Option<String>,
    /// Channel message id.
    pub channel_message_id: Option<String>,
    /// Sender's channel user id.
    pub sender_id: Option<String>,
    /// Context revision the message belongs to.
    pub context_revision: i64,
    /// When it was stored (epoch ms).
    pub created_at_ms: i64,
    /// For `command` turns `{"command": {"name", "args"}}`, for `action` turns
    /// `{"action": {"name", "value", "message_id"}}`; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

from_row_both!(Message, |row| {
    Ok(Message {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        role: row.try_get("role")?,
        kind: row.try_get("kind")?,
        body: row.try_get("body")?,
        command_body: row.try_get("command_body")?,
        channel_message_id: row.try_get("channel_message_id")?,
        sender_id: row.try_get("sender_id")?,
        context_revision: row.try_get("context_revision")?,
        created_at_ms: row.try_get("created_at_ms")?,
        meta: row
            .try_get::<Option<String>, _>("meta")?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
});

/// The columns every message read selects.
const MESSAGE_COLUMNS: &str = "id, session_id, role, kind, body, command_body, \
     channel_message_id, sender_id, context_revision, created_at_ms, meta";

/// A session with its messages, oldest first (admin API).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionHistory {
    /// The session.
    pub session: Session,
    /// Its messages in id order.
    pub messages: Vec<Message>,
}

/// A record created by a channel command (`/issue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// Increasing id.
    pub id: i64,
    /// The installation.
    pub installation_id: String,
    /// The session the command was typed in.
    pub session_id: String,
    /// The command's message row.
    pub message_id: Option<i64>,
    /// `issue`.
    pub kind: String,
    /// Title.
    pub title: String,
    /// Description lines, if any.
    pub description: Option<String>,
    /// Sender's channel user id.
    pub sender_id: Option<String>,
    /// When (epoch ms).
    pub created_at_ms: i64,
}

from_row_both!(CommandRecord, |row| {
    Ok(CommandRecord {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        session_id: row.try_get("session_id")?,
        message_id: row.try_get("message_id")?,
        kind: row.try_get("kind")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        sender_id: row.try_get("sender_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
});

/// What kind of turn an append is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnKind {
    /// A plain message: appended, and the session's debounce window is (re)armed.
    Plain,
    /// `/new <text>`: starts a new context revision with this message; window armed.
    FreshStart,
    /// Bare `/new`: no message; the session's next message starts a new context revision.
    MarkFresh,
    /// A command the host does not run itself: stored as a `command` turn (name and args in
    /// its meta) for the agent; window armed.
    Command {
        /// The command's name.
        name: String,
        /// Its argument text.
        args: String,
    },
    /// A button or card callback: stored as an `action` turn for the agent; window armed.
    Action {
        /// The control's name.
        name: String,
        /// The control's value.
        value: String,
        /// The channel message carrying the control, if known.
        on_message: Option<String>,
    },
}

impl TurnKind {
    /// Whether the turn schedules an agent run (arms the debounce window).
    pub fn runs(&self) -> bool {
        !matches!(self, TurnKind::MarkFresh)
    }

    /// The stored message kind and meta JSON of the turn, with `attachments` (records of the
    /// message's files, downloaded into the blob store after the append) when there are any.
    fn stored(&self, attachments: &[serde_json::Value]) -> (&'static str, Option<String>) {
        let (kind, mut meta) = match self {
            TurnKind::Command { name, args } => (
                "command",
                serde_json::json!({"command": {"name": name, "args": args}}),
            ),
            TurnKind::Action {
                name,
                value,
                on_message,
            } => (
                "action",
                serde_json::json!({"action": {"name": name, "value": value, "message_id": on_message}}),
            ),
            _ => ("message", serde_json::json!({})),
        };
        if !attachments.is_empty() {
            meta["attachments"] = serde_json::Value::Array(attachments.to_vec());
        }
        let empty = meta.as_object().is_some_and(|m| m.is_empty());
        (kind, (!empty).then(|| meta.to_string()))
    }
}

/// One user turn to append to a session.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// Target session.
    pub session_id: String,
    /// Its installation (for command records).
    pub installation_id: String,
    /// What the agent reads.
    pub body: String,
    /// The user's own text (stored when non-empty).
    pub command_body: String,
    /// Channel message id (empty: no reply target is recorded).
    pub channel_message_id: String,
    /// The message's topic thread, if any (recorded with the reply target).
    pub thread_id: Option<String>,
    /// Sender's channel user id.
    pub sender_id: String,
    /// What kind of turn.
    pub turn: TurnKind,
    /// The message's attachments as records `{kind, name, mime, size, ref}` (stored in the
    /// message's meta); a record with a `blob_id` also gets a pending download row in the
    /// append's transaction (`super::blobs`).
    pub attachments: Vec<serde_json::Value>,
    /// The installation's debounce window, for the arm.
    pub debounce_ms: i64,
}

/// The result of [`IngestStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The message is stored (and the claim marked processed).
    Appended(AppendedMessage),
    /// A bare `/new` was recorded (and the claim marked processed).
    FreshPending,
    /// The dedup claim was no longer ours: nothing was written.
    ClaimLost,
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedMessage {
    /// The message row id.
    pub message_id: i64,
    /// The context revision it belongs to.
    pub context_revision: i64,
    /// For turns that run: the armed window `(flush_generation, flush_due_at_ms)`.
    pub flush: Option<(i64, i64)>,
    /// Set when the session was running: the turn went to the session's queue instead of the
    /// history (see [`QueuedTurn`]). `message_id` is then 0 and `flush` `None`, unless the queue
    /// was over the cap and got promoted at once.
    pub queued: Option<QueuedTurn>,
}

/// A turn that arrived while a run was active (SPEC §5): it waits in the session's queue and is
/// promoted into the history when the run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTurn {
    /// The queued row's id.
    pub queued_id: i64,
    /// Set when the queue was over [`QUEUE_CAP`](super::QUEUE_CAP): this run (its id) was
    /// interrupted, the whole queue — this turn included — was promoted into the history
    /// (`message_id` is this turn's message) and the debounce window armed (`flush`).
    pub interrupted_run: Option<String>,
}

/// The ingest store: a cheap, cloneable handle on the [`Database`]'s pools.
#[derive(Debug, Clone)]
pub struct IngestStore {
    db: Database,
}

/// `Some(s)` unless `s` is empty.
fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The stored form of a binding token: sha256 of its text, as hex.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Inside `$tx`: the dedup claim of `$request`'s channel message for its installation, made
/// already processed with `$token` ([`CLAIM_PROCESSED_SQL`]); evaluates to whether it was won.
macro_rules! claim_processed {
    ($tx:ident, $fail:expr, $request:expr, $token:expr, $now_ms:expr) => {{
        let request: &AppendRequest = $request;
        let token: &str = $token;
        let won: Option<String> = sqlx::query_scalar(CLAIM_PROCESSED_SQL)
            .bind(&request.installation_id)
            .bind(&request.channel_message_id)
            .bind(token)
            .bind($now_ms)
            .bind($now_ms - RECLAIM_AFTER_MS)
            .fetch_optional(&mut *$tx)
            .await
            .map_err($fail)?;
        won.as_deref() == Some(token)
    }};
}

/// Inside `$tx`, once the dedup step is done: appends the turn of `$request` (see
/// [`IngestStore::append`]) and evaluates to its [`AppendOutcome`]. A session that does not
/// exist returns `Ok(None)` from the enclosing function (whose transaction then rolls back).
macro_rules! append_turn {
    ($tx:ident, $pg:ident, $fail:expr, $request:expr, $now_ms:expr) => {{
        let request: &AppendRequest = $request;
        let now_ms: i64 = $now_ms;
        if request.turn == TurnKind::MarkFresh {
            // A bare `/new` only flags the session (running or not).
            let flagged = sqlx::query(
                "UPDATE sessions SET fresh_pending = TRUE, updated_at_ms = $2 WHERE id = $1",
            )
            .bind(&request.session_id)
            .bind(now_ms)
            .execute(&mut *$tx)
            .await
            .map_err($fail)?
            .rows_affected();
            if flagged == 0 {
                return Ok(None);
            }
            AppendOutcome::FreshPending
        } else {
            // The common case in one statement: no run is pending or running (or the turn does
            // not run), so advance the revision if a fresh start is due, record the reply
            // target and arm the debounce, all on the row it locks. No row: a run is pending or
            // running (the turn is queued) or the session is gone; the general path finds out
            // which.
            let updated: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE sessions
                 SET context_revision = context_revision
                         + CASE WHEN fresh_pending OR $2 THEN 1 ELSE 0 END,
                     fresh_pending = FALSE,
                     updated_at_ms = $3,
                     reply_to_message_id = COALESCE($4, reply_to_message_id),
                     reply_thread_id = CASE WHEN $4 IS NULL THEN reply_thread_id ELSE $5 END,
                     flush_due_at_ms = CASE WHEN $6 THEN $7 ELSE flush_due_at_ms END,
                     flush_generation = flush_generation + CASE WHEN $6 THEN 1 ELSE 0 END
                 WHERE id = $1 AND (run_state NOT IN ('running', 'pending') OR NOT $6)
                 RETURNING context_revision, flush_generation",
            )
            .bind(&request.session_id)
            .bind(request.turn == TurnKind::FreshStart)
            .bind(now_ms)
            .bind(non_empty(&request.channel_message_id))
            .bind(request.thread_id.as_deref().and_then(non_empty))
            .bind(request.turn.runs())
            .bind(now_ms + request.debounce_ms)
            .fetch_optional(&mut *$tx)
            .await
            .map_err($fail)?;
            match updated {
                Some((revision, generation)) => {
                    let message_id = insert_user_message!($tx, $fail, request, revision, now_ms);
                    let flush = request
                        .turn
                        .runs()
                        .then_some((generation, now_ms + request.debounce_ms));
                    AppendOutcome::Appended(AppendedMessage {
                        message_id,
                        context_revision: revision,
                        flush,
                        queued: None,
                    })
                }
                None => append_general!($tx, $pg, $fail, request, now_ms),
            }
        }
    }};
}

/// Inside `$tx`: inserts the user message of `$request` in context revision `$revision` (kind
/// `command` or `action` with its meta for those turns). Evaluates to the message id.
macro_rules! insert_user_message {
    ($tx:ident, $fail:expr, $request:expr, $revision:expr, $now_ms:expr) => {{
        let request: &AppendRequest = $request;
        let (kind, meta) = request.turn.stored(&request.attachments);
        let message_id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (session_id, role, kind, body, command_body,
                 channel_message_id, sender_id, context_revision, created_at_ms, meta)
             VALUES ($1, 'user', $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id",
        )
        .bind(&request.session_id)
        .bind(kind)
        .bind(&request.body)
        .bind(non_empty(&request.command_body))
        .bind(non_empty(&request.channel_message_id))
        .bind(non_empty(&request.sender_id))
        .bind($revision)
        .bind($now_ms)
        .bind(meta)
        .fetch_one(&mut *$tx)
        .await
        .map_err($fail)?;
        message_id
    }};
}

/// Inside `$tx`, once the dedup step is done: the general append of a turn that is not a bare
/// `/new`, used when the one-statement session update matched no row — the session is running
/// (a turn that runs is queued) or deleted (`return Ok(None)`), or its run ended in between
/// (stored as usual). Evaluates to the [`AppendOutcome`].
macro_rules! append_general {
    ($tx:ident, $pg:ident, $fail:expr, $request:expr, $now_ms:expr) => {{
        let request: &AppendRequest = $request;
        let now_ms: i64 = $now_ms;
        // Lock the session row (SQLite: BEGIN IMMEDIATE already holds the write lock).
        let lock = if $pg {
            "SELECT context_revision, fresh_pending, run_state, run_id FROM sessions
             WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT context_revision, fresh_pending, run_state, run_id FROM sessions
             WHERE id = $1"
        };
        let state: Option<(i64, bool, String, Option<String>)> = sqlx::query_as(lock)
            .bind(&request.session_id)
            .fetch_optional(&mut *$tx)
            .await
            .map_err($fail)?;
        let Some((revision, fresh_pending, run_state, run_id)) = state else {
            return Ok(None);
        };

        // (No early `return Ok(Some(…))` below: leaving the body early rolls the transaction
        // back.)
        let queued_outcome = if (run_state == "running" || run_state == "pending")
            && request.turn.runs()
        {
            // A run is pending or active: the turn waits in the queue (not in that run's
            // context, no debounce), so the run answers the turns it was made for and this one
            // gets a run of its own: it is promoted when the run ends. At the cap it is still
            // queued, and the run is interrupted so the backlog runs next.
            let (kind, meta) = request.turn.stored(&request.attachments);
            let queued_id: i64 = sqlx::query_scalar(
                "INSERT INTO queued_messages (session_id, body, command_body,
                     channel_message_id, thread_id, sender_id, source, fresh_start,
                     created_at_ms, kind, meta)
                 VALUES ($1, $2, $3, $4, $5, $6, 'channel', $7, $8, $9, $10)
                 RETURNING id",
            )
            .bind(&request.session_id)
            .bind(&request.body)
            .bind(non_empty(&request.command_body))
            .bind(non_empty(&request.channel_message_id))
            .bind(request.thread_id.as_deref().and_then(non_empty))
            .bind(non_empty(&request.sender_id))
            .bind(request.turn == TurnKind::FreshStart)
            .bind(now_ms)
            .bind(kind)
            .bind(meta)
            .fetch_one(&mut *$tx)
            .await
            .map_err($fail)?;
            let queued: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM queued_messages WHERE session_id = $1")
                    .bind(&request.session_id)
                    .fetch_one(&mut *$tx)
                    .await
                    .map_err($fail)?;
            sqlx::query("UPDATE sessions SET updated_at_ms = $2 WHERE id = $1")
                .bind(&request.session_id)
                .bind(now_ms)
                .execute(&mut *$tx)
                .await
                .map_err($fail)?;
            if queued <= QUEUE_CAP as i64 {
                Some(AppendOutcome::Appended(AppendedMessage {
                    message_id: 0,
                    context_revision: revision,
                    flush: None,
                    queued: Some(QueuedTurn {
                        queued_id,
                        interrupted_run: None,
                    }),
                }))
            } else {
                // Over the cap: interrupt (running → idle, ownership cleared: the worker's
                // heartbeat and release now fail), promote the whole queue in order and arm the
                // debounce; its claim makes the session pending, so the backlog runs next.
                sqlx::query(&format!(
                    "UPDATE sessions SET run_state = 'idle', last_error = NULL,
                         pending_since_ms = NULL, {CLEAR_OWNERSHIP}, updated_at_ms = $2
                     WHERE id = $1"
                ))
                .bind(&request.session_id)
                .bind(now_ms)
                .execute(&mut *$tx)
                .await
                .map_err($fail)?;
                let (promoted, flush) =
                    promote_queue_and_arm!($tx, $fail, &request.session_id, now_ms);
                let Some(mine) = promoted.last() else {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "session {}: the queue was empty right after a message was queued",
                            request.session_id
                        ),
                    });
                };
                Some(AppendOutcome::Appended(AppendedMessage {
                    message_id: mine.id,
                    context_revision: mine.context_revision,
                    flush: flush.map(|ticket| (ticket.generation, ticket.due_at_ms)),
                    queued: Some(QueuedTurn {
                        queued_id,
                        interrupted_run: run_id,
                    }),
                }))
            }
        } else {
            None
        };

        if let Some(outcome) = queued_outcome {
            outcome
        } else {
            let revision = if fresh_pending || request.turn == TurnKind::FreshStart {
                revision + 1
            } else {
                revision
            };
            let message_id = insert_user_message!($tx, $fail, request, revision, now_ms);

            sqlx::query(
                "UPDATE sessions SET context_revision = $2, fresh_pending = FALSE,
                     updated_at_ms = $3
                 WHERE id = $1",
            )
            .bind(&request.session_id)
            .bind(revision)
            .bind(now_ms)
            .execute(&mut *$tx)
            .await
            .map_err($fail)?;

            if !request.channel_message_id.is_empty() {
                sqlx::query(
                    "UPDATE sessions SET reply_to_message_id = $2, reply_thread_id = $3
                     WHERE id = $1",
                )
                .bind(&request.session_id)
                .bind(&request.channel_message_id)
                .bind(request.thread_id.as_deref().and_then(non_empty))
                .execute(&mut *$tx)
                .await
                .map_err($fail)?;
            }

            let flush = if request.turn.runs() {
                let due_at_ms = now_ms + request.debounce_ms;
                let generation: i64 = sqlx::query_scalar(
                    "UPDATE sessions SET flush_due_at_ms = $2,
                         flush_generation = flush_generation + 1
                     WHERE id = $1
                     RETURNING flush_generation",
                )
                .bind(&request.session_id)
                .bind(due_at_ms)
                .fetch_one(&mut *$tx)
                .await
                .map_err($fail)?;
                Some((generation, due_at_ms))
            } else {
                None
            };

            AppendOutcome::Appended(AppendedMessage {
                message_id,
                context_revision: revision,
                flush,
                queued: None,
            })
        }
    }};
}

impl IngestStore {
    pub(super) fn new(db: Database) -> Self {
        IngestStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    // ---------------------------------------------------------------- bindings and tokens

    /// Binds a channel user to `user_ref`, or refreshes an existing binding to the same user
    /// (known alt ids are never erased by an empty list). A binding to a different user is
    /// refused with [`BindingError::BoundToOtherUser`].
    pub async fn bind_user(
        &self,
        installation_id: &str,
        channel_user_id: &str,
        user_ref: &str,
        alt_ids: &[(String, String)],
        now_ms: i64,
    ) -> Result<UserBinding, BindingError> {
        let fail = StoreError::query("binding add", self.backend());
        Ok(in_write_tx!(self.db, fail, |tx, pg| {
            upsert_binding!(
                tx,
                fail,
                installation_id,
                channel_user_id,
                user_ref,
                alt_ids,
                now_ms
            )
        }))
    }

    /// Removes a binding; returns whether it existed.
    pub async fn unbind_user(
        &self,
        installation_id: &str,
        channel_user_id: &str,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("binding remove", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "DELETE FROM user_bindings WHERE installation_id = $1 AND channel_user_id = $2",
            )
            .bind(installation_id)
            .bind(channel_user_id)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// The binding of a channel user, if any: by its id, else by any of its `alt_ids`.
    pub async fn get_binding(
        &self,
        installation_id: &str,
        channel_user_id: &str,
        alt_ids: &[(String, String)],
    ) -> Result<Option<UserBinding>, StoreError> {
        let fail = StoreError::query("binding get", self.backend());
        let by_id: Option<UserBinding> = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT installation_id, channel_user_id, user_ref, alt_ids, bound_at_ms
                 FROM user_bindings WHERE installation_id = $1 AND channel_user_id = $2",
            )
            .bind(installation_id)
            .bind(channel_user_id)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        if by_id.is_some() {
            return Ok(by_id);
        }
        for (scheme, alt) in alt_ids.iter().filter(|(_, id)| !id.is_empty()) {
            // The JSON text narrows the candidates; the parsed pairs decide.
            let needle = format!("%{}%", serde_json::to_string(alt).unwrap_or_default());
            let fail = StoreError::query("binding get by alt id", self.backend());
            let candidates: Vec<UserBinding> = on_reader!(self.db, |pool| {
                sqlx::query_as(
                    "SELECT installation_id, channel_user_id, user_ref, alt_ids, bound_at_ms
                     FROM user_bindings WHERE installation_id = $1 AND alt_ids LIKE $2",
                )
                .bind(installation_id)
                .bind(&needle)
                .fetch_all(pool)
                .await
                .map_err(fail)?
            });
            if let Some(found) = candidates
                .into_iter()
                .find(|b| b.alt_ids.iter().any(|(s, id)| s == scheme && id == alt))
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The bindings of an installation, by channel user id.
    pub async fn list_bindings(
        &self,
        installation_id: &str,
    ) -> Result<Vec<UserBinding>, StoreError> {
        let fail = StoreError::query("binding list", self.backend());
        on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT installation_id, channel_user_id, user_ref, alt_ids, bound_at_ms
                 FROM user_bindings WHERE installation_id = $1 ORDER BY channel_user_id",
            )
            .bind(installation_id)
            .fetch_all(pool)
            .await
            .map_err(fail)
        })
    }

    /// Mints a one-time binding link token for a channel user: 32 random bytes as base64url
    /// without padding (returned; only its sha256 is stored), valid for 15 minutes.
    pub async fn mint_binding_token(
        &self,
        installation_id: &str,
        channel_user_id: &str,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let fail = StoreError::query("binding token mint", self.backend());
        on_writer!(self.db, |pool| {
            sqlx::query(
                "INSERT INTO binding_tokens (token_hash, installation_id, channel_user_id,
                     created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash(&token))
            .bind(installation_id)
            .bind(channel_user_id)
            .bind(now_ms)
            .bind(now_ms + BINDING_TOKEN_TTL_MS)
            .execute(pool)
            .await
            .map_err(fail)?;
        });
        Ok(token)
    }

    /// Redeems a binding link for `user_ref`: consumes the token (unused and unexpired at
    /// `now_ms`) and creates or refreshes the binding in the same transaction. On any failure
    /// nothing changes and the token stays usable.
    pub async fn redeem_binding_token(
        &self,
        token: &str,
        user_ref: &str,
        alt_ids: &[(String, String)],
        now_ms: i64,
    ) -> Result<UserBinding, BindingError> {
        let fail = StoreError::query("binding token redeem", self.backend());
        let hash = token_hash(token.trim());
        Ok(in_write_tx!(self.db, fail, |tx, pg| {
            let consumed: Option<(String, String)> = sqlx::query_as(
                "UPDATE binding_tokens SET consumed_at_ms = $2
                 WHERE token_hash = $1 AND consumed_at_ms IS NULL AND expires_at_ms > $2
                 RETURNING installation_id, channel_user_id",
            )
            .bind(&hash)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
            let Some((installation_id, channel_user_id)) = consumed else {
                return Err(BindingError::InvalidToken);
            };
            upsert_binding!(
                tx,
                fail,
                &installation_id,
                &channel_user_id,
                user_ref,
                alt_ids,
                now_ms
            )
        }))
    }

    // ---------------------------------------------------------------- dedup

    /// Claims a channel message for processing with a fresh token: inserts the claim, or takes
    /// over a claim still in flight that was made more than [`RECLAIM_AFTER_MS`] before
    /// `now_ms`. `None` = duplicate (already processed, or actively claimed).
    pub async fn claim_dedup(
        &self,
        installation_id: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Option<DedupClaim>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let fail = StoreError::query("dedup claim", self.backend());
        let won: Option<String> = on_writer!(self.db, |pool| {
            sqlx::query_scalar(
                "INSERT INTO inbound_dedup (installation_id, message_id, claim_token,
                     received_at_ms, processed_at_ms)
                 VALUES ($1, $2, $3, $4, NULL)
                 ON CONFLICT (installation_id, message_id) DO UPDATE
                 SET claim_token = excluded.claim_token, received_at_ms = excluded.received_at_ms
                 WHERE inbound_dedup.processed_at_ms IS NULL
                   AND inbound_dedup.received_at_ms < $5
                 RETURNING claim_token",
            )
            .bind(installation_id)
            .bind(message_id)
            .bind(&token)
            .bind(now_ms)
            .bind(now_ms - RECLAIM_AFTER_MS)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        Ok(won.filter(|t| *t == token).map(|token| DedupClaim {
            installation_id: installation_id.to_owned(),
            message_id: message_id.to_owned(),
            token,
        }))
    }

    /// Whether `message_id` has a dedup claim that is not processed yet (a delivery in flight,
    /// or one a crash left open).
    pub async fn dedup_in_flight(
        &self,
        installation_id: &str,
        message_id: &str,
    ) -> Result<bool, StoreError> {
        let fail = StoreError::query("dedup state", self.backend());
        let open: i64 = on_writer!(self.db, |pool| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM inbound_dedup
                 WHERE installation_id = $1 AND message_id = $2 AND processed_at_ms IS NULL",
            )
            .bind(installation_id)
            .bind(message_id)
            .fetch_one(pool)
            .await
            .map_err(fail)?
        });
        Ok(open > 0)
    }

    /// Marks a claimed message processed, if the claim is still ours and unfinished; returns
    /// whether it was.
    pub async fn mark_dedup(&self, claim: &DedupClaim, now_ms: i64) -> Result<bool, StoreError> {
        let fail = StoreError::query("dedup mark", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(MARK_SQL)
                .bind(&claim.installation_id)
                .bind(&claim.message_id)
                .bind(&claim.token)
                .bind(now_ms)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Deletes a claim so a redelivery is processed again, if the claim is still ours and
    /// unfinished; returns whether it was.
    pub async fn release_dedup(&self, claim: &DedupClaim) -> Result<bool, StoreError> {
        let fail = StoreError::query("dedup release", self.backend());
        let affected = on_writer!(self.db, |pool| {
            sqlx::query(
                "DELETE FROM inbound_dedup
                 WHERE installation_id = $1 AND message_id = $2 AND claim_token = $3
                   AND processed_at_ms IS NULL",
            )
            .bind(&claim.installation_id)
            .bind(&claim.message_id)
            .bind(&claim.token)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    // ---------------------------------------------------------------- audit

    /// Records a drop. Empty strings are stored as NULL. Carries no message content by design.
    pub async fn insert_audit(&self, entry: &AuditEntry, now_ms: i64) -> Result<(), StoreError> {
        let fail = StoreError::query("audit insert", self.backend());
        on_writer!(self.db, |pool| {
            sqlx::query(
                "INSERT INTO inbound_audit (installation_id, channel, chat_id, event_type,
                     event_id, message_id, drop_reason, received_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(entry.installation_id.as_deref().and_then(non_empty))
            .bind(&entry.channel)
            .bind(non_empty(&entry.chat_id))
            .bind(&entry.event_type)
            .bind(non_empty(&entry.event_id))
            .bind(non_empty(&entry.message_id))
            .bind(&entry.drop_reason)
            .bind(now_ms)
            .execute(pool)
            .await
            .map_err(fail)?;
        });
        Ok(())
    }

    /// The newest audit rows (newest first), of one installation or of all, at most `limit`.
    pub async fn list_audit(
        &self,
        installation_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let fail = StoreError::query("audit list", self.backend());
        const COLS: &str = "id, installation_id, channel, chat_id, event_type, event_id, \
             message_id, drop_reason, received_at_ms";
        let limit = i64::from(limit);
        on_reader!(self.db, |pool| {
            match installation_id {
                Some(id) => sqlx::query_as(&format!(
                    "SELECT {COLS} FROM inbound_audit WHERE installation_id = $1
                     ORDER BY id DESC LIMIT $2"
                ))
                .bind(id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail),
                None => sqlx::query_as(&format!(
                    "SELECT {COLS} FROM inbound_audit ORDER BY id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail),
            }
        })
    }

    // ---------------------------------------------------------------- sessions

    /// The session for `key`, created (with `title`) if missing. Concurrent first messages all
    /// get the same session: the insert that loses the unique race re-reads the winner.
    pub async fn ensure_session(
        &self,
        installation_id: &str,
        key: &SessionKey,
        title: &str,
        now_ms: i64,
    ) -> Result<Session, StoreError> {
        let fail = StoreError::query("session ensure", self.backend());
        if let Some(session) = self.find_session(installation_id, &key.chat_key).await? {
            return Ok(session);
        }
        let select = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE installation_id = $1 AND chat_key = $2"
        );
        let insert = format!(
            "INSERT INTO sessions (id, installation_id, chat_key, chat_id, chat_type, thread_id,
                 title, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (installation_id, chat_key) DO NOTHING
             RETURNING {SESSION_COLUMNS}"
        );
        let id = uuid::Uuid::new_v4().to_string();
        on_writer!(self.db, |pool| {
            let created: Option<Session> = match sqlx::query_as(&insert)
                .bind(&id)
                .bind(installation_id)
                .bind(&key.chat_key)
                .bind(&key.chat_id)
                .bind(key.chat_type.as_str())
                .bind(key.thread_id.as_deref())
                .bind(title)
                .bind(now_ms)
                .fetch_optional(pool)
                .await
            {
                Ok(row) => row,
                // Belt and braces: ON CONFLICT covers the race, but a unique violation still
                // means someone else won.
                Err(e) if is_unique_violation(&e) => None,
                Err(e) => return Err(fail(e)),
            };
            match created {
                Some(session) => Ok(session),
                None => sqlx::query_as(&select)
                    .bind(installation_id)
                    .bind(&key.chat_key)
                    .fetch_optional(pool)
                    .await
                    .map_err(fail)?
                    .ok_or_else(|| StoreError::Conflict {
                        what: format!(
                            "session {} of installation {installation_id} was deleted while \
                             it was being created",
                            key.chat_key
                        ),
                    }),
            }
        })
    }

    /// The session of `installation_id` for `chat_key`, if it exists (never creates one).
    pub async fn find_session(
        &self,
        installation_id: &str,
        chat_key: &str,
    ) -> Result<Option<Session>, StoreError> {
        let fail = StoreError::query("session ensure", self.backend());
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE installation_id = $1 AND chat_key = $2"
        );
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(installation_id)
                .bind(chat_key)
                .fetch_optional(pool)
                .await
                .map_err(fail)
        })
    }

    /// The session `id`, if it exists.
    pub async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let fail = StoreError::query("session get", self.backend());
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(fail)
        })
    }

    /// The sessions of an installation, oldest first.
    pub async fn list_sessions(&self, installation_id: &str) -> Result<Vec<Session>, StoreError> {
        let fail = StoreError::query("session list", self.backend());
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE installation_id = $1
             ORDER BY created_at_ms, id"
        );
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(installation_id)
                .fetch_all(pool)
                .await
                .map_err(fail)
        })
    }

    /// The messages of a session, oldest first.
    pub async fn list_messages(&self, session_id: &str) -> Result<Vec<Message>, StoreError> {
        let fail = StoreError::query("message list", self.backend());
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 ORDER BY id");
        on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(session_id)
                .fetch_all(pool)
                .await
                .map_err(fail)
        })
    }

    /// The sessions of an installation with their messages (admin API), oldest first.
    pub async fn list_session_histories(
        &self,
        installation_id: &str,
    ) -> Result<Vec<SessionHistory>, StoreError> {
        let sessions = self.list_sessions(installation_id).await?;
        let fail = StoreError::query("session history list", self.backend());
        let sql = format!(
            "SELECT {} FROM messages m JOIN sessions s ON s.id = m.session_id
             WHERE s.installation_id = $1 ORDER BY m.id",
            MESSAGE_COLUMNS
                .split(", ")
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let messages: Vec<Message> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(installation_id)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        let mut histories: Vec<SessionHistory> = sessions
            .into_iter()
            .map(|session| SessionHistory {
                session,
                messages: Vec::new(),
            })
            .collect();
        let index: std::collections::HashMap<String, usize> = histories
            .iter()
            .enumerate()
            .map(|(i, h)| (h.session.id.clone(), i))
            .collect();
        for message in messages {
            // A session created between the two reads has no entry; it shows up next time.
            if let Some(&i) = index.get(&message.session_id) {
                histories[i].messages.push(message);
            }
        }
        Ok(histories)
    }

    /// The command records of an installation, oldest first.
    pub async fn list_commands(
        &self,
        installation_id: &str,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let fail = StoreError::query("command list", self.backend());
        on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT id, installation_id, session_id, message_id, kind, title, description,
                     sender_id, created_at_ms
                 FROM commands WHERE installation_id = $1 ORDER BY id",
            )
            .bind(installation_id)
            .fetch_all(pool)
            .await
            .map_err(fail)
        })
    }

    // ---------------------------------------------------------------- append

    /// Appends one user turn in ONE transaction with the dedup Mark of `claim` (when given):
    /// if the claim is no longer ours nothing is written and the outcome is
    /// [`AppendOutcome::ClaimLost`].
    ///
    /// In the same transaction: a pending bare `/new` (or a [`TurnKind::FreshStart`]) advances
    /// the session's context revision and clears the flag; the message is stored (kind
    /// `command` for `/issue` turns) with the reply target (channel message id and thread)
    /// recorded on the session; `/issue <title>` inserts a command record; turns that run arm
    /// the durable debounce (`flush_due_at_ms = now + debounce`, `flush_generation + 1`).
    /// [`TurnKind::MarkFresh`] only sets the session's fresh flag.
    ///
    /// While the session's run is `running`, turns that run go to the session's queue instead
    /// (no debounce; [`AppendedMessage::queued`]); commands and `/new` flags are applied as usual.
    ///
    /// A session that no longer exists is a [`StoreError::Conflict`] (nothing is written).
    pub async fn append(
        &self,
        request: &AppendRequest,
        claim: Option<&DedupClaim>,
        now_ms: i64,
    ) -> Result<AppendOutcome, StoreError> {
        let fence = match claim {
            Some(claim) => Fence::Mark(claim),
            None => Fence::None,
        };
        match self.append_fenced(request, fence, now_ms).await? {
            Some(outcome) => Ok(outcome),
            None => Err(session_deleted(&request.session_id)),
        }
    }

    /// Claims the turn's channel message (`request.channel_message_id`, which must not be
    /// empty) for `request.installation_id` and appends it, in ONE transaction: the claim row
    /// is written already processed, so there is no claim in flight to Mark or Release later.
    ///
    /// The claim follows [`IngestStore::claim_dedup`]'s rule (a claim still in flight is taken
    /// over once older than [`RECLAIM_AFTER_MS`]); when it is not won (already processed, or
    /// in flight) nothing is written and the outcome is [`AppendOutcome::ClaimLost`], i.e. a
    /// duplicate. Concurrent deliveries store the message once: SQLite's transactions take the
    /// write lock at `BEGIN`, and on PostgreSQL a conflicting insert waits for the transaction
    /// that holds the row.
    ///
    /// Otherwise as [`IngestStore::append`], except that a session that no longer exists is
    /// `Ok(None)`: nothing was written and no claim was made, so the caller can take the
    /// ordinary path (claim, ensure the session, append).
    ///
    /// On SQLite, concurrent calls share one transaction (group commit, `super::append_batch`):
    /// each returns once the transaction holding its append has committed.
    pub async fn claim_and_append(
        &self,
        request: &AppendRequest,
        now_ms: i64,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        if request.channel_message_id.is_empty() {
            return Err(StoreError::Invalid {
                what: "claim-and-append without a channel message id".into(),
            });
        }
        let token = uuid::Uuid::new_v4().to_string();
        if let Inner::Sqlite(pools) = &self.db.inner
            && let Some(result) = pools.appends.submit(request, &token, now_ms).await
        {
            return result;
        }
        self.append_fenced(request, Fence::Claim { token }, now_ms)
            .await
    }

    /// [`IngestStore::append`] with the dedup handling of `fence`; `Ok(None)`: the session
    /// does not exist (nothing written).
    async fn append_fenced(
        &self,
        request: &AppendRequest,
        fence: Fence<'_>,
        now_ms: i64,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let fail = StoreError::query("message append", self.backend());
        let outcome = in_write_tx!(self.db, fail, |tx, pg| {
            // The dedup step first: a lost claim costs nothing, and on PostgreSQL the row lock
            // it takes makes a concurrent claim of the same message wait for this transaction's
            // outcome.
            match &fence {
                Fence::None => {}
                Fence::Mark(claim) => {
                    let marked = sqlx::query(MARK_SQL)
                        .bind(&claim.installation_id)
                        .bind(&claim.message_id)
                        .bind(&claim.token)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?
                        .rows_affected();
                    if marked == 0 {
                        return Ok(Some(AppendOutcome::ClaimLost));
                    }
                }
                Fence::Claim { token } => {
                    if !claim_processed!(tx, fail, request, token.as_str(), now_ms) {
                        return Ok(Some(AppendOutcome::ClaimLost));
                    }
                }
            }
            let outcome = append_turn!(tx, pg, fail, request, now_ms);
            if matches!(outcome, AppendOutcome::Appended(_)) {
                insert_blob_jobs!(tx, fail, request, now_ms);
            }
            Some(outcome)
        });
        Ok(outcome)
    }
}

/// One [`IngestStore::claim_and_append`] of a group-commit batch: the request, its fresh claim
/// token and its "now".
pub(super) struct ClaimedAppend<'a> {
    /// The turn (its channel message id is claimed).
    pub request: &'a AppendRequest,
    /// The claim's fencing token.
    pub token: &'a str,
    /// The caller's now (epoch ms).
    pub now_ms: i64,
}

/// Runs several claim-and-appends in ONE transaction on SQLite's writer (group commit; see
/// `super::append_batch`): per append the claim, then the turn, exactly as
/// [`IngestStore::claim_and_append`] would in a transaction of its own, in `appends` order.
/// Returns one outcome per append once the transaction has committed.
///
/// `Ok(None)`: the session of one of them no longer exists; nothing was committed (that case
/// needs the append's own transaction, to roll back its claim). An error also means nothing
/// was committed.
pub(super) async fn commit_claimed_batch(
    writer: &sqlx::SqlitePool,
    appends: &[ClaimedAppend<'_>],
) -> Result<Option<Vec<AppendOutcome>>, StoreError> {
    let fail = StoreError::query("message append", Backend::Sqlite);
    let pg = false;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(fail)?;
    let mut outcomes = Vec::with_capacity(appends.len());
    for append in appends {
        let request = append.request;
        let outcome = if claim_processed!(tx, fail, request, append.token, append.now_ms) {
            let outcome = append_turn!(tx, pg, fail, request, append.now_ms);
            if matches!(outcome, AppendOutcome::Appended(_)) {
                insert_blob_jobs!(tx, fail, request, append.now_ms);
            }
            outcome
        } else {
            // Nothing of this one was written; the others go on.
            AppendOutcome::ClaimLost
        };
        outcomes.push(outcome);
    }
    tx.commit().await.map_err(fail)?;
    Ok(Some(outcomes))
}

/// How an append settles the message's dedup claim, inside its transaction.
enum Fence<'a> {
    /// No dedup (no channel message id, or the caller handles it).
    None,
    /// Mark this earlier claim processed, fenced by its token.
    Mark(&'a DedupClaim),
    /// Claim the request's channel message now, already processed, with this token.
    Claim {
        /// The fresh fencing token.
        token: String,
    },
}

/// The error for an append to a session that no longer exists.
fn session_deleted(session_id: &str) -> StoreError {
    StoreError::Conflict {
        what: format!("session {session_id} was deleted before the message could be stored"),
    }
}

/// The fenced dedup Mark: `$1` installation, `$2` message id, `$3` token, `$4` now.
const MARK_SQL: &str = "UPDATE inbound_dedup SET processed_at_ms = $4
     WHERE installation_id = $1 AND message_id = $2 AND claim_token = $3
       AND processed_at_ms IS NULL";

/// A dedup claim made already processed, inside an append transaction: `$1` installation,
/// `$2` message id, `$3` token, `$4` now, `$5` the reclaim horizon (a claim in flight received
/// before it is taken over). Returns the row's token: ours iff the claim was won.
const CLAIM_PROCESSED_SQL: &str = "INSERT INTO inbound_dedup (installation_id, message_id,
         claim_token, received_at_ms, processed_at_ms)
     VALUES ($1, $2, $3, $4, $4)
     ON CONFLICT (installation_id, message_id) DO UPDATE
     SET claim_token = excluded.claim_token, received_at_ms = excluded.received_at_ms,
         processed_at_ms = excluded.processed_at_ms
     WHERE inbound_dedup.processed_at_ms IS NULL
       AND inbound_dedup.received_at_ms < $5
     RETURNING claim_token";
