//! Hooks around the run lifecycle for the parts of the host that act on it without owning it.
//!
//! - [`RunEndObserver`]: told when an external worker ended a run through the worker API
//!   (completed, failed) or learned that it lost it (heartbeat refused), so the host can deliver
//!   the reply or the error card to the channel and clear the typing indicator. The default,
//!   [`NoopObserver`], does nothing.
//! - [`PendingSignal`]: a wake-up for long-polling workers, raised whenever this process sees a
//!   session become `pending` ([`crate::runs::RunService`] raises it for every transition it
//!   publishes). It is a hint only: other replicas and writes that bypass the service do not
//!   raise it, so waiters also re-check on a timer.
//!
//! Nothing here touches the database, HTTP or plugins.

use std::sync::Arc;

use tokio::sync::watch;

use crate::agents::Usage;
use crate::store::Message;

/// How a run ended, as the worker API saw it.
// One value per run end, moved once to the observers: boxing the reply would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The worker completed the run and the session is `idle` (or `pending` again if queued
    /// messages were promoted). `reply` is the stored assistant message — `None` if the worker
    /// had nothing to say (empty reply).
    Completed {
        /// The stored reply.
        reply: Option<Message>,
        /// Token usage, as the worker reported it.
        usage: Option<Usage>,
    },
    /// The worker failed the run: the session is in `error` with `last_error` = `error`.
    Failed {
        /// What the worker said went wrong.
        error: String,
    },
    /// A heartbeat found that the worker no longer owns the run (interrupted, recovered as
    /// stale, edited away): the worker was told to stop. Whatever replaced the run has its own
    /// lifecycle; this is a chance to clear a typing indicator.
    Lost,
}

/// One run that ended (or was found lost) through the worker API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnded {
    /// The session.
    pub session_id: String,
    /// The run (fencing token).
    pub run_id: String,
    /// The session's installation (where to deliver).
    pub installation_id: String,
    /// The agent whose worker ran it.
    pub agent: String,
    /// How it ended.
    pub outcome: RunOutcome,
}

/// Told about runs that external workers ended. Called after the database transition is
/// durable and the worker's HTTP request is about to be answered, so implementations must not
/// block: spawn the delivery (`tokio::spawn`) and return. [`RunOutcome::Lost`] may be reported
/// more than once for the same run (each refused heartbeat).
pub trait RunEndObserver: Send + Sync + 'static {
    /// `ended` happened.
    fn run_ended(&self, ended: RunEnded);
}

/// An observer that ignores everything (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl RunEndObserver for NoopObserver {
    fn run_ended(&self, _ended: RunEnded) {}
}

impl<F> RunEndObserver for F
where
    F: Fn(RunEnded) + Send + Sync + 'static,
{
    fn run_ended(&self, ended: RunEnded) {
        self(ended)
    }
}

/// A process-wide "some session became pending" signal. Cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct PendingSignal {
    sender: Arc<watch::Sender<u64>>,
}

impl Default for PendingSignal {
    fn default() -> Self {
        PendingSignal {
            sender: Arc::new(watch::channel(0).0),
        }
    }
}

impl PendingSignal {
    /// A new signal nobody waits on yet.
    pub fn new() -> PendingSignal {
        PendingSignal::default()
    }

    /// Wakes every current waiter. Never blocks.
    pub fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A waiter that sees every [`PendingSignal::notify`] from now on. Subscribe BEFORE
    /// checking for pending runs, so a notification between the check and the wait is not lost.
    pub fn subscribe(&self) -> PendingWaiter {
        PendingWaiter {
            receiver: self.sender.subscribe(),
        }
    }
}

/// Waits for [`PendingSignal::notify`].
#[derive(Debug)]
pub struct PendingWaiter {
    receiver: watch::Receiver<u64>,
}

impl PendingWaiter {
    /// Resolves at the first notification since the last call (or since subscribing). Several
    /// notifications in between resolve it once.
    pub async fn notified(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as the signal; if it is gone nothing will ever notify.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_between_subscribe_and_wait_is_not_lost() {
        let signal = PendingSignal::new();
        let mut waiter = signal.subscribe();
        signal.notify();
        signal.notify();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter.notified())
            .await
            .expect("the notification was kept");
        // Both notifications resolved it once; nothing new since.
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(20), waiter.notified()).await;
        assert!(again.is_err(), "no new notification");
    }
}
