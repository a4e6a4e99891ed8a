//! Approvals (issue 18): a worker asks the chat to approve or reject a step of its run, and
//! waits for the decision. The request, its approvers and its one decision are stored here so
//! they survive a restart and every replica agrees on them.
//!
//! Owns the SQL of the `approvals` table only (migration 0012). A decision is recorded at most
//! once (`UPDATE … WHERE state = 'pending'`): a second press, a redelivered press or a press
//! racing the expiry changes nothing. Must not decide who may approve (that is the host's
//! approval service), call plugins or read the clock: callers pass "now" in.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::installations::{from_row_both, in_write_tx, on_reader, on_writer};
use super::outbox::{NewOutboxRow, insert_outbox};
use super::{Backend, Database, Inner, StoreError};

/// The idempotency key of the outbox row that delivers approval `id`'s buttons: one notice per
/// approval (a second row for the same approval fails its insert, and with it the creation).
pub fn approval_notice_key(id: &str) -> String {
    format!("approval-{id}")
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a press.
    Pending,
    /// An approver pressed approve.
    Approved,
    /// An approver pressed reject.
    Rejected,
    /// Nobody decided before the deadline.
    Expired,
}

impl ApprovalState {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Option<ApprovalState> {
        Some(match text {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "rejected" => ApprovalState::Rejected,
            "expired" => ApprovalState::Expired,
            _ => return None,
        })
    }
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Short random id, carried by the buttons.
    pub id: String,
    /// The installation whose chat decides.
    pub installation_id: String,
    /// The session whose run asked.
    pub session_id: String,
    /// The run that asked.
    pub run_id: String,
    /// The agent of that run.
    pub agent: String,
    /// The question shown to the chat.
    pub prompt: String,
    /// Participant ids that may decide; empty: anyone in the session's chat.
    pub approvers: Vec<String>,
    /// Where it stands.
    pub state: ApprovalState,
    /// Participant id of the decider.
    pub decided_by: Option<String>,
    /// The decider's display name, when the channel gave one.
    pub decided_by_name: Option<String>,
    /// When it was decided or expired.
    pub decided_at_ms: Option<i64>,
    /// The channel message that carries the buttons, once known (from a press or the outbox).
    pub card_message_id: Option<String>,
    /// A channel token a press carried, to update the card later (never shown).
    #[serde(skip)]
    pub update_token: Option<String>,
    /// The outbox row that delivers the buttons.
    pub outbox_id: Option<i64>,
    /// Whether the card of an expired approval was updated (or given up on).
    pub card_updated: bool,
    /// When it was asked.
    pub created_at_ms: i64,
    /// When it expires unless decided.
    pub expires_at_ms: i64,
}

const COLS: &str = "id, installation_id, session_id, run_id, agent, prompt, approvers, state, \
     decided_by, decided_by_name, decided_at_ms, card_message_id, update_token, outbox_id, \
     card_updated, created_at_ms, expires_at_ms";

from_row_both!(Approval, |row| {
    let approvers: String = row.try_get("approvers")?;
    let state: String = row.try_get("state")?;
    Ok(Approval {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        session_id: row.try_get("session_id")?,
        run_id: row.try_get("run_id")?,
        agent: row.try_get("agent")?,
        prompt: row.try_get("prompt")?,
        approvers: serde_json::from_str(&approvers).map_err(|e| sqlx::Error::ColumnDecode {
            index: "approvers".into(),
            source: Box::new(e),
        })?,
        state: ApprovalState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown approval state {state:?}").into(),
        })?,
        decided_by: row.try_get("decided_by")?,
        decided_by_name: row.try_get("decided_by_name")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        card_message_id: row.try_get("card_message_id")?,
        update_token: row.try_get("update_token")?,
        outbox_id: row.try_get("outbox_id")?,
        card_updated: row.try_get("card_updated")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
});

/// An approval to store.
#[derive(Debug, Clone)]
pub struct NewApproval<'a> {
    /// Its id (short, random, unguessable: it travels on buttons).
    pub id: &'a str,
    /// The installation whose chat decides.
    pub installation_id: &'a str,
    /// The session whose run asks.
    pub session_id: &'a str,
    /// The run that asks.
    pub run_id: &'a str,
    /// Its agent.
    pub agent: &'a str,
    /// The question.
    pub prompt: &'a str,
    /// Who may decide (empty: anyone in the chat).
    pub approvers: &'a [String],
    /// When it expires unless decided.
    pub expires_at_ms: i64,
}

/// What became of a press.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This press decided it (the row after the decision).
    Recorded(Approval),
    /// It was already decided, or expired: nothing changed (the row as it is).
    Unchanged(Approval),
    /// No such approval.
    Missing,
}

/// The approvals store: a cheap, cloneable handle on the [`Database`].
#[derive(Debug, Clone)]
pub struct ApprovalStore {
    db: Database,
}

impl ApprovalStore {
    pub(super) fn new(db: Database) -> Self {
        ApprovalStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Stores a pending approval asked at `now_ms` together with the outbox row `notice` that
    /// delivers its buttons, in one transaction: a failure anywhere (the approval's insert, the
    /// notice's — its key [`approval_notice_key`] exists already — or linking the two) leaves
    /// neither. Returns the approval with its `outbox_id` set.
    pub async fn create_with_notice(
        &self,
        new: &NewApproval<'_>,
        notice: &NewOutboxRow<'_>,
        now_ms: i64,
    ) -> Result<Approval, StoreError> {
        let fail = StoreError::query("approval insert with notice", self.backend());
        let approvers = serde_json::to_string(new.approvers).expect("a list of strings serializes");
        let sql = format!(
            "INSERT INTO approvals (id, installation_id, session_id, run_id, agent, prompt,
                 approvers, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING {COLS}"
        );
        let approval = in_write_tx!(self.db, fail, |tx, _pg| {
            let mut approval: Approval = sqlx::query_as(&sql)
                .bind(new.id)
                .bind(new.installation_id)
                .bind(new.session_id)
                .bind(new.run_id)
                .bind(new.agent)
                .bind(new.prompt)
                .bind(&approvers)
                .bind(now_ms)
                .bind(new.expires_at_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
            let outbox_id =
                insert_outbox!(tx, fail, notice, now_ms, key = approval_notice_key(new.id));
            sqlx::query("UPDATE approvals SET outbox_id = $2 WHERE id = $1")
                .bind(new.id)
                .bind(outbox_id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            approval.outbox_id = Some(outbox_id);
            approval
        });
        Ok(approval)
    }

    /// The approval `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let fail = StoreError::query("approval read", self.backend());
        let sql = format!("SELECT {COLS} FROM approvals WHERE id = $1");
        Ok(on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        }))
    }

    /// Records `state` (approved or rejected) by `by` at `now_ms`, once: only a pending
    /// approval before its deadline changes.
    pub async fn decide(
        &self,
        id: &str,
        state: ApprovalState,
        by: &str,
        by_name: Option<&str>,
        now_ms: i64,
    ) -> Result<Decision, StoreError> {
        debug_assert!(matches!(
            state,
            ApprovalState::Approved | ApprovalState::Rejected
        ));
        let fail = StoreError::query("approval decide", self.backend());
        let sql = format!(
            "UPDATE approvals SET state = $2, decided_by = $3, decided_by_name = $4,
                 decided_at_ms = $5
             WHERE id = $1 AND state = 'pending' AND expires_at_ms > $5
             RETURNING {COLS}"
        );
        let decided: Option<Approval> = on_writer!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .bind(state.as_str())
                .bind(by)
                .bind(by_name)
                .bind(now_ms)
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        if let Some(approval) = decided {
            return Ok(Decision::Recorded(approval));
        }
        Ok(match self.get(id).await? {
            Some(approval) => Decision::Unchanged(approval),
            None => Decision::Missing,
        })
    }

    /// Marks up to `limit` pending approvals whose deadline passed by `now_ms` as expired and
    /// returns them (each exactly once, to whichever replica expired it).
    pub async fn expire_due(&self, now_ms: i64, limit: i64) -> Result<Vec<Approval>, StoreError> {
        let fail = StoreError::query("approval expiry", self.backend());
        let sql = format!(
            "UPDATE approvals SET state = 'expired', decided_at_ms = $1
             WHERE state = 'pending' AND id IN (
                 SELECT id FROM approvals
                 WHERE state = 'pending' AND expires_at_ms <= $1
                 ORDER BY expires_at_ms LIMIT $2)
             RETURNING {COLS}"
        );
        Ok(on_writer!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(now_ms)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        }))
    }

    /// Remembers what a press on approval `id`'s card told about it: the channel message that
    /// carries it and a token to update it later (each kept when the press has none).
    pub async fn note_press(
        &self,
        id: &str,
        message_id: Option<&str>,
        update_token: Option<&str>,
    ) -> Result<(), StoreError> {
        let fail = StoreError::query("approval press note", self.backend());
        on_writer!(self.db, |pool| {
            sqlx::query(
                "UPDATE approvals SET card_message_id = COALESCE($2, card_message_id),
                     update_token = COALESCE($3, update_token)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(message_id)
            .bind(update_token)
            .execute(pool)
            .await
            .map_err(fail)?
            .rows_affected()
        });
        Ok(())
    }

    /// Up to `limit` expired approvals whose card still shows its buttons, oldest first.
    pub async fn cards_to_update(&self, limit: i64) -> Result<Vec<Approval>, StoreError> {
        let fail = StoreError::query("approval cards to update", self.backend());
        let sql = format!(
            "SELECT {COLS} FROM approvals WHERE state = 'expired' AND card_updated = FALSE
             ORDER BY decided_at_ms LIMIT $1"
        );
        Ok(on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        }))
    }

    /// Records that approval `id`'s expired card was updated (or given up on).
    pub async fn mark_card_updated(&self, id: &str) -> Result<(), StoreError> {
        let fail = StoreError::query("approval card updated", self.backend());
        on_writer!(self.db, |pool| {
            sqlx::query("UPDATE approvals SET card_updated = TRUE WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(())
    }
}
