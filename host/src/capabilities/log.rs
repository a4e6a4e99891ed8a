//! The `log` capability: guest log records become `tracing` events carrying the plugin and
//! installation ids, truncated and rate-limited per call. A record from the SDK's panic hook is
//! also kept so a following trap can be reported with the guest's own message.

use super::call::CallState;
use crate::bindings::switchboard::channel::log::{Host, Level};

/// Message the guest SDK's panic hook logs (with a `panic` field).
const PANIC_RECORD: &str = "guest panicked";

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Host for CallState {
    fn write(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if message == PANIC_RECORD
            && let Some((_, panic)) = fields.iter().find(|(k, _)| k == "panic")
        {
            self.guest_panic = Some(panic.clone());
        }
        self.log_records += 1;
        let limits = &self.services.limits;
        if self.log_records > limits.log_max_records_per_call {
            if self.log_records == limits.log_max_records_per_call + 1 {
                tracing::warn!(plugin = %self.plugin, installation = %self.installation.id,
                    "plugin log limit of {} records per call reached; dropping the rest",
                    limits.log_max_records_per_call);
            }
            return;
        }
        let message = truncate(&message, limits.log_max_message_bytes);
        let fields = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", truncate(v, 512)))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &*self.plugin;
        let installation = &self.installation.id;
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", plugin, installation, fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", plugin, installation, fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", plugin, installation, fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", plugin, installation, fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", plugin, installation, fields, "{message}")
            }
        }
    }
}
