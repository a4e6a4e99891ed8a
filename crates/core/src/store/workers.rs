//! What the worker HTTP API needs from the database besides the run lifecycle: worker presence
//! (`agent_presence`, when a worker last polled for an agent) and the agent a session's run
//! belongs to (so a worker token of one agent cannot touch another agent's runs).
//!
//! Presence is shared through the database so that every replica agrees whether an agent is
//! online; throttling the writes (at most one per agent per second per process) is the caller's
//! business (`crate::agents::presence`). Callers pass "now" in; nothing here reads the clock.

use super::installations::{on_reader, on_writer};
use super::{Backend, Database, Inner, RunState, StoreError};

/// The owner-relevant facts of a session's run, as the worker API checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOwner {
    /// The session.
    pub session_id: String,
    /// Its installation.
    pub installation_id: String,
    /// The installation's agent: only that agent's workers may touch the run.
    pub agent: String,
    /// The session's run state.
    pub state: RunState,
    /// The current run's id while running (the fencing token).
    pub run_id: Option<String>,
}

impl RunOwner {
    /// Whether run `run_id` is the session's running run right now.
    pub fn owns(&self, run_id: &str) -> bool {
        self.state == RunState::Running && self.run_id.as_deref() == Some(run_id)
    }
}

/// Worker presence and run-ownership lookups: a cheap, cloneable handle on the [`Database`].
#[derive(Debug, Clone)]
pub struct WorkerStore {
    db: Database,
}

impl WorkerStore {
    pub(super) fn new(db: Database) -> Self {
        WorkerStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Records that a worker of `agent` was seen at `now_ms`. The stored time only moves
    /// forward (a replica with a slightly late clock never moves it back).
    pub async fn touch_presence(&self, agent: &str, now_ms: i64) -> Result<(), StoreError> {
        let fail = StoreError::query("agent presence upsert", self.backend());
        let sql = match self.backend() {
            Backend::Sqlite => {
                "INSERT INTO agent_presence (agent, last_seen_at_ms) VALUES ($1, $2)
                 ON CONFLICT (agent) DO UPDATE
                 SET last_seen_at_ms = MAX(agent_presence.last_seen_at_ms, excluded.last_seen_at_ms)"
            }
            Backend::Postgres => {
                "INSERT INTO agent_presence (agent, last_seen_at_ms) VALUES ($1, $2)
                 ON CONFLICT (agent) DO UPDATE
                 SET last_seen_at_ms = GREATEST(agent_presence.last_seen_at_ms,
                                                excluded.last_seen_at_ms)"
            }
        };
        on_writer!(self.db, |pool| {
            sqlx::query(sql)
                .bind(agent)
                .bind(now_ms)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected()
        });
        Ok(())
    }

    /// When a worker of `agent` was last seen (epoch ms), by any replica; `None` = never.
    pub async fn last_seen(&self, agent: &str) -> Result<Option<i64>, StoreError> {
        let fail = StoreError::query("agent presence read", self.backend());
        on_reader!(self.db, |pool| {
            sqlx::query_scalar("SELECT last_seen_at_ms FROM agent_presence WHERE agent = $1")
                .bind(agent)
                .fetch_optional(pool)
                .await
                .map_err(fail)
        })
    }

    /// The agent and run ownership of session `session_id`, if the session exists.
    pub async fn run_owner(&self, session_id: &str) -> Result<Option<RunOwner>, StoreError> {
        let fail = StoreError::query("run owner", self.backend());
        let row: Option<(String, String, String, Option<String>)> = on_reader!(self.db, |pool| {
            sqlx::query_as(
                "SELECT s.installation_id, i.agent, s.run_state, s.run_id
                 FROM sessions s JOIN installations i ON i.id = s.installation_id
                 WHERE s.id = $1",
            )
            .bind(session_id)
            .fetch_optional(pool)
            .await
            .map_err(fail)?
        });
        row.map(|(installation_id, agent, state, run_id)| {
            Ok(RunOwner {
                session_id: session_id.to_owned(),
                installation_id,
                agent,
                state: RunState::parse(&state)?,
                run_id,
            })
        })
        .transpose()
    }
}
