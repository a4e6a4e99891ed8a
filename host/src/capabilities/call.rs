//! What the host imports see of one plugin store: the plugin, its grants, the shared services
//! and the call in progress — installation, deadline, whether the store waits in a host import,
//! the guest's panic record and the log records written. The imports are implemented on
//! [`CallState`]; the runtime's per-store state holds one and starts every call with
//! [`CallState::begin`].
//!
//! Starting a call is on the warm-call path: a few plain stores, no locks, no allocation.

use std::sync::Arc;
use std::time::Instant;

use super::{Grants, Services};
use crate::domain::InstallationContext;

/// What the store is doing right now, for blaming timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Running guest code (or idle).
    Guest,
    /// Waiting in a host import (named).
    HostImport(&'static str),
}

/// The imports' view of one store and of the call in progress.
pub(crate) struct CallState {
    /// Plugin name, for logs.
    pub(super) plugin: Arc<str>,
    pub(super) grants: Arc<Grants>,
    pub(super) services: Arc<Services>,
    pub(super) installation: Arc<InstallationContext>,
    deadline: Instant,
    /// Read by the caller when the outer timeout fires (after the call's future is dropped).
    activity: Activity,
    /// Panic message forwarded by the guest SDK's hook during the current call.
    pub(super) guest_panic: Option<String>,
    /// Log records written during the current call (rate limit).
    pub(super) log_records: u32,
}

impl CallState {
    /// The state of a new store, before its first call.
    pub(crate) fn new(plugin: Arc<str>, grants: Arc<Grants>, services: Arc<Services>) -> CallState {
        CallState {
            plugin,
            grants,
            services,
            installation: Arc::new(InstallationContext::default()),
            deadline: Instant::now(),
            activity: Activity::Guest,
            guest_panic: None,
            log_records: 0,
        }
    }

    /// Starts a call (or an instantiation) for `installation` until `deadline`.
    pub(crate) fn begin(&mut self, installation: &Arc<InstallationContext>, deadline: Instant) {
        if !Arc::ptr_eq(&self.installation, installation) {
            self.installation = installation.clone();
        }
        self.deadline = deadline;
        self.activity = Activity::Guest;
        self.guest_panic = None;
        self.log_records = 0;
    }

    /// The current call's deadline.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Records whether the store is in guest code or waiting in a host import.
    pub(super) fn set_activity(&mut self, activity: Activity) {
        self.activity = activity;
    }

    /// What the store was doing last: guest code, or waiting in a host import.
    pub(crate) fn activity(&self) -> Activity {
        self.activity
    }

    /// The panic message the guest's hook logged during the current call, if any.
    pub(crate) fn guest_panic(&self) -> Option<&str> {
        self.guest_panic.as_deref()
    }

    /// Milliseconds left before the call's deadline.
    pub(super) fn remaining_ms(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64
    }
}
