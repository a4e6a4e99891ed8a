//! The `installation` capability: the per-call context (installation id, config values,
//! decrypted secrets, remaining deadline). Secrets are handed over only when asked for by key and
//! are never logged.

use super::call::CallState;
use crate::bindings::switchboard::channel::installation::Host;

impl Host for CallState {
    fn id(&mut self) -> String {
        self.installation.id.clone()
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.installation.config.get(&key).cloned()
    }

    fn secret(&mut self, key: String) -> Option<String> {
        self.installation
            .secrets
            .get(&key)
            .map(|s| s.expose().to_string())
    }

    fn remaining_ms(&mut self) -> u64 {
        CallState::remaining_ms(self)
    }
}
