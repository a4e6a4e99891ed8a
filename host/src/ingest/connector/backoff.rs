//! Reconnect backoff of a long connection: start at 2 s, double up to 60 s,
//! start over after a connection that lived at least 60 s; every sleep is jittered uniformly in
//! [0.5×, 1.5×] so replicas that lost their connections together do not reconnect together.
//!
//! Owns only the arithmetic: no timers, no clock (the caller says how long a connection lived
//! and supplies the jitter factor in tests).

use std::time::Duration;

/// Backoff tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First delay (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// A connection that lived at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The backoff state of one installation's reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// Starts at `policy.initial`.
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            next: policy.initial,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    /// Tells the backoff that a connection (or attempt) ended after `lived`; a long-lived one
    /// starts the sequence over.
    pub fn connection_ended(&mut self, lived: Duration) {
        if lived >= self.policy.reset_after {
            self.next = self.policy.initial;
        }
    }

    /// Jumps straight to the largest delay (a terminal error: the operator must act first).
    pub fn saturate(&mut self) {
        self.next = self.policy.max;
    }

    /// The next delay with a random jitter factor in [0.5, 1.5), and doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let factor = rand::thread_rng().gen_range(0.5..1.5);
        self.next_delay_with(factor)
    }

    /// The next delay scaled by `factor` (clamped to [0.5, 1.5]), and doubles the base up to the
    /// maximum.
    pub fn next_delay_with(&mut self, factor: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        base.mul_f64(factor.clamp(0.5, 1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_long_connection() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay_with(1.0).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60]);
        backoff.connection_ended(Duration::from_secs(59));
        assert_eq!(backoff.next_delay_with(1.0).as_secs(), 60);
        backoff.connection_ended(Duration::from_secs(60));
        assert_eq!(backoff.next_delay_with(1.0).as_secs(), 2);
        backoff.saturate();
        assert_eq!(backoff.next_delay_with(1.0).as_secs(), 60);
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        assert_eq!(backoff.next_delay_with(0.1), Duration::from_secs(1));
        assert_eq!(backoff.next_delay_with(9.0), Duration::from_secs(6));
        for _ in 0..100 {
            let mut fresh = Backoff::new(BackoffPolicy::default());
            let delay = fresh.next_delay();
            assert!(delay >= Duration::from_secs(1) && delay < Duration::from_secs(3));
        }
    }
}
