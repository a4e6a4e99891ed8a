//! Flush decisions and delivery (the `outbound` export).
//!
//! Pending: the real logic (agent-state notices, reply rendering, REST delivery, typing
//! reactions) lands in a later issue; see the plugin README. Until then a flush always starts
//! the run and turns the typing indicator on for the newest message, and every delivery fails
//! with [`DELIVERY_UNAVAILABLE`] (not retryable).

/// Message of the non-retryable delivery error returned while delivery is unavailable.
pub const DELIVERY_UNAVAILABLE: &str = "lark outbound delivery is not available in this build";

/// What the host should do after a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushAction {
    /// Make the session's run pending.
    StartRun,
    /// Turn a typing indicator on or off for one message.
    Typing {
        /// Channel message id the indicator is attached to.
        message_id: String,
        /// On or off.
        on: bool,
    },
}

/// The actions for a flushed batch whose newest message is `last_message_id`: start the run,
/// then a typing indicator on that message (skipped when it has no id).
pub fn flush_actions(last_message_id: Option<&str>) -> Vec<FlushAction> {
    let mut actions = vec![FlushAction::StartRun];
    if let Some(message_id) = last_message_id.filter(|id| !id.is_empty()) {
        actions.push(FlushAction::Typing {
            message_id: message_id.to_string(),
            on: true,
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_starts_the_run_and_types_on_the_last_message() {
        assert_eq!(
            flush_actions(Some("om_2")),
            vec![
                FlushAction::StartRun,
                FlushAction::Typing {
                    message_id: "om_2".into(),
                    on: true
                }
            ]
        );
        assert_eq!(flush_actions(Some("")), vec![FlushAction::StartRun]);
        assert_eq!(flush_actions(None), vec![FlushAction::StartRun]);
    }
}
