//! Worker presence (SPEC §6): "an agent is offline when no worker has polled within a
//! configurable window" (`offline_after_ms` of a `worker` agent).
//!
//! The worker API calls [`AgentPresence::seen`] on every authenticated request (a long-poll
//! claim keeps calling it while it waits); the flush path asks [`agent_state`] whether to start
//! a run or send the `agent_offline` notice. Presence lives in the database
//! (`agent_presence`, through [`WorkerStore`]) so every replica on a shared PostgreSQL agrees;
//! writes are throttled to at most one per agent per [`DEFAULT_PRESENCE_WRITE_INTERVAL`] per
//! process, which delays what other replicas see by at most that interval — far below any
//! sensible offline window. This process's own sightings are also kept in memory, so its answers
//! are exact and survive a failing database read.
//!
//! Owns no SQL (that is `crate::store::workers`) and never reads the wall clock directly: time
//! comes from the injected [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{AgentKind, AgentRegistry, AgentState};
use crate::domain::Clock;
use crate::store::{StoreError, WorkerStore};

/// At most one presence write per agent per process within this interval.
pub const DEFAULT_PRESENCE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// What this process knows about one agent.
#[derive(Debug, Clone, Copy, Default)]
struct Local {
    /// The latest sighting (epoch ms).
    seen_ms: Option<i64>,
    /// When this process last wrote the sighting to the database.
    written_ms: Option<i64>,
}

struct Inner {
    store: WorkerStore,
    clock: Arc<dyn Clock>,
    write_interval_ms: i64,
    /// Keyed by configured agent names only (callers authenticate first), so it stays small.
    local: Mutex<HashMap<String, Local>>,
}

/// When workers were last seen, per agent. Cheap to clone (clones share the throttle state).
#[derive(Clone)]
pub struct AgentPresence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPresence")
            .field("write_interval_ms", &self.inner.write_interval_ms)
            .finish_non_exhaustive()
    }
}

impl AgentPresence {
    /// Presence stored through `store`, timed by `clock`, written at most once per
    /// [`DEFAULT_PRESENCE_WRITE_INTERVAL`] per agent.
    pub fn new(store: WorkerStore, clock: Arc<dyn Clock>) -> AgentPresence {
        AgentPresence::with_write_interval(store, clock, DEFAULT_PRESENCE_WRITE_INTERVAL)
    }

    /// Like [`AgentPresence::new`] with another write throttle (`0` writes every sighting).
    pub fn with_write_interval(
        store: WorkerStore,
        clock: Arc<dyn Clock>,
        interval: Duration,
    ) -> AgentPresence {
        AgentPresence {
            inner: Arc::new(Inner {
                store,
                clock,
                write_interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
                local: Mutex::default(),
            }),
        }
    }

    /// The clock presence is measured with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Local>> {
        // Every update is a single field write: a poisoned lock is still consistent.
        self.inner.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a worker of `agent` was seen now. Writes the database unless this process
    /// wrote `agent`'s presence within the write interval; returns whether it wrote. A failed
    /// write is returned (and retried by the next sighting); the in-memory sighting stays.
    pub async fn seen(&self, agent: &str) -> Result<bool, StoreError> {
        let now = self.inner.clock.now_ms();
        {
            let mut local = self.lock();
            let entry = local.entry(agent.to_owned()).or_default();
            entry.seen_ms = Some(entry.seen_ms.map_or(now, |seen| seen.max(now)));
            let due = match entry.written_ms {
                None => true,
                // A clock that went backwards also writes (the store keeps the maximum).
                Some(written) => now < written || now - written >= self.inner.write_interval_ms,
            };
            if !due {
                return Ok(false);
            }
            // Claimed before the write, so concurrent sightings do not write too.
            entry.written_ms = Some(now);
        }
        match self.inner.store.touch_presence(agent, now).await {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Some(entry) = self.lock().get_mut(agent)
                    && entry.written_ms == Some(now)
                {
                    entry.written_ms = None;
                }
                Err(e)
            }
        }
    }

    /// When a worker of `agent` was last seen by any replica (epoch ms); `None` = never. A
    /// failing database read is logged and answered from this process's own sightings.
    pub async fn last_seen(&self, agent: &str) -> Option<i64> {
        let local = self.lock().get(agent).and_then(|l| l.seen_ms);
        match self.inner.store.last_seen(agent).await {
            Ok(stored) => stored.max(local),
            Err(e) => {
                tracing::warn!(
                    agent,
                    "agent presence not read (answering from this process's own sightings): {e}"
                );
                local
            }
        }
    }

    /// Like [`AgentPresence::last_seen`], but a failing database read is returned.
    pub async fn try_last_seen(&self, agent: &str) -> Result<Option<i64>, StoreError> {
        let local = self.lock().get(agent).and_then(|l| l.seen_ms);
        Ok(self.inner.store.last_seen(agent).await?.max(local))
    }
}

/// Whether agent `name` can take runs at `now_ms`: [`AgentRegistry::state`] fed with the
/// worker presence. Reads the database only for non-archived `worker` agents.
pub async fn agent_state(
    registry: &AgentRegistry,
    presence: &AgentPresence,
    name: &str,
    now_ms: i64,
) -> AgentState {
    let needs_presence = registry
        .get(name)
        .is_some_and(|spec| !spec.archived && matches!(spec.kind, AgentKind::Worker(_)));
    let last_seen = if needs_presence {
        presence.last_seen(name).await
    } else {
        None
    };
    registry.state(name, last_seen, now_ms)
}
