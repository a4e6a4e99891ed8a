//! The `clock` capability: wall-clock time. Plugins own no timers; the host's clock is injectable
//! so tests control time.
//!
//! The grant also decides what WASI's `wasi:clocks/wall-clock` (what guest std's `SystemTime`
//! reads) tells the plugin: the same host clock with the grant, the Unix epoch without
//! ([`WasiWallClock`]).

use std::sync::Arc;
use std::time::Duration;

use super::call::CallState;
use crate::bindings::switchboard::channel::clock::Host;
use crate::domain::Clock;

impl Host for CallState {
    fn now_ms(&mut self) -> i64 {
        self.services.clock.now_ms()
    }
}

/// The `wasi:clocks/wall-clock` of one plugin store: the host's [`Clock`] when the manifest
/// grants `clock`, otherwise a clock stopped at the Unix epoch (1970-01-01T00:00:00Z), so a
/// plugin without the grant learns nothing about the time from WASI either. The monotonic clock
/// is not affected (it tells durations, not the time).
pub(crate) struct WasiWallClock(Option<Arc<dyn Clock>>);

impl WasiWallClock {
    /// The host clock for a plugin granted `clock`, the epoch for any other.
    pub(crate) fn new(granted: bool, clock: &Arc<dyn Clock>) -> WasiWallClock {
        WasiWallClock(granted.then(|| clock.clone()))
    }
}

impl wasmtime_wasi::HostWallClock for WasiWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        match &self.0 {
            Some(clock) => Duration::from_millis(u64::try_from(clock.now_ms()).unwrap_or(0)),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi::HostWallClock;

    struct Fixed(i64);

    impl Clock for Fixed {
        fn now_ms(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn the_wasi_wall_clock_is_the_host_clock_only_with_the_grant() {
        let clock: Arc<dyn Clock> = Arc::new(Fixed(1_750_000_000_123));
        let granted = WasiWallClock::new(true, &clock);
        assert_eq!(granted.now(), Duration::from_millis(1_750_000_000_123));
        let refused = WasiWallClock::new(false, &clock);
        assert_eq!(refused.now(), Duration::ZERO, "the Unix epoch");
    }
}
