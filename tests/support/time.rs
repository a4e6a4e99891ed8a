//! Manual time for tests: a clock that only moves when told to and a timer wheel that fires due
//! timers deterministically, in due order, when the test advances it. No sleeping.
//!
//! Include it from a test crate with `#[path = "support/time.rs"] mod time;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use switchboard::batch::{TimerCallback, TimerHandle, Timers};
use switchboard::domain::Clock;

/// A clock that reads a stored time (Unix epoch milliseconds).
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ms: AtomicI64::new(now_ms),
        })
    }

    /// Sets the time (it may go backwards; only tests do that on purpose).
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Wheel {
    next_id: u64,
    /// Pending timers by (due time, scheduling order).
    pending: BTreeMap<(i64, u64), TimerCallback>,
}

/// A timer wheel driven by [`ManualTimers::advance`]. Timers never fire on their own, not even
/// when scheduled in the past: the next `advance` (possibly by 0) fires them.
#[derive(Clone)]
pub struct ManualTimers {
    clock: Arc<ManualClock>,
    wheel: Arc<Mutex<Wheel>>,
}

impl ManualTimers {
    /// A wheel over `clock`.
    pub fn new(clock: Arc<ManualClock>) -> ManualTimers {
        ManualTimers {
            clock,
            wheel: Arc::default(),
        }
    }

    /// Moves the clock forward by `ms`, firing every timer due on the way in due order; the clock
    /// reads each timer's due time while its callback runs, then ends at `now + ms`.
    pub fn advance(&self, ms: i64) {
        let target = self.clock.now_ms() + ms;
        loop {
            let next = {
                let mut wheel = self.wheel.lock().unwrap();
                match wheel.pending.first_key_value() {
                    Some((&(due, _), _)) if due <= target => wheel.pending.pop_first(),
                    _ => None,
                }
            };
            let Some(((due, _), fire)) = next else { break };
            if due > self.clock.now_ms() {
                self.clock.set(due);
            }
            fire(); // outside the wheel's lock: callbacks may schedule or cancel timers
        }
        self.clock.set(target);
    }

    /// How many timers are waiting.
    pub fn pending(&self) -> usize {
        self.wheel.lock().unwrap().pending.len()
    }
}

impl Timers for ManualTimers {
    fn schedule(&self, due_at_ms: i64, fire: TimerCallback) -> TimerHandle {
        let key = {
            let mut wheel = self.wheel.lock().unwrap();
            wheel.next_id += 1;
            let key = (due_at_ms, wheel.next_id);
            wheel.pending.insert(key, fire);
            key
        };
        let wheel = Arc::downgrade(&self.wheel);
        TimerHandle::new(move || {
            if let Some(wheel) = wheel.upgrade() {
                let removed = wheel.lock().unwrap().pending.remove(&key);
                drop(removed); // the callback is dropped outside the lock
            }
        })
    }
}
