//! The `clock` capability: wall-clock time. Plugins own no timers; the host's clock is injectable
//! so tests control time.

use crate::runtime::bindings::switchboard::channel::clock::Host;
use crate::runtime::state::HostState;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

impl Host for HostState {
    fn now_ms(&mut self) -> i64 {
        self.services.clock.now_ms()
    }
}
