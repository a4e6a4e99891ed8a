//! Approvals (issue 18): a worker asks the chat to approve or reject a step of its run and waits
//! for the decision; the host sends the question as an `approval` notice with two buttons,
//! recognises presses on its own buttons channel-neutrally (the action name [`APPROVE`] or
//! [`REJECT`], the approval id as the value), checks the approver list, records the decision
//! once, wakes the waiting worker and answers the press — all before the channel's answer
//! deadline — with words from the notice catalogue in the installation's locale.
//!
//! Owns the approval rules (who may decide, what a press answers, limits) and the wake-ups of
//! waiting workers. Must not hold SQL (that is `store::ApprovalStore`), speak HTTP (the worker
//! API is in `api::worker`) or know any channel: plugins render the buttons and the answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::delivery::outbox::outbox_target;
use crate::delivery::{Delivery, render_notice, session_target};
use crate::domain::Clock;
use crate::domain::notice::{self, Decided, Notice, NoticeButton, NoticeKind, NoticeTexts};
use crate::runtime::types;
use crate::store::{
    Approval, ApprovalState, ApprovalStore, Database, Decision, IngestStore, Installation,
    InstallationStore, NewApproval, NewOutboxRow, OutboxContent, OutboxStore, StoreError,
};

/// The action name of the approve button (what a press carries back).
pub const APPROVE: &str = "ap.y";
/// The action name of the reject button.
pub const REJECT: &str = "ap.n";
/// Longest prompt, in bytes.
pub const MAX_PROMPT_BYTES: usize = 4000;
/// Most approvers one approval may name.
pub const MAX_APPROVERS: usize = 50;
/// Longest approver id, in bytes.
pub const MAX_APPROVER_BYTES: usize = 256;
/// How long an approval waits for a decision when the worker names no `timeout_s`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest `timeout_s` (a day).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest long-poll of `GET …/approvals/{id}?wait_s=N`.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting worker re-reads its approval when nothing woke it (a press handled by
/// another replica).
const REPOLL: Duration = Duration::from_secs(1);
/// How often the expiry sweep runs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A press on one of the host's approval buttons, as the channel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Press<'a> {
    /// Who pressed.
    pub sender: &'a types::Participant,
    /// The chat the press came from.
    pub chat_id: &'a str,
    /// The action name ([`APPROVE`] or [`REJECT`]).
    pub name: &'a str,
    /// The action value (the approval id).
    pub value: &'a str,
    /// The channel message carrying the buttons, when the channel names it.
    pub on_message: Option<&'a str>,
    /// The channel's token to update that message later, when it issues one.
    pub update_token: Option<&'a str>,
}

/// Whether an action is a press on one of the host's approval buttons.
pub fn is_approval_action(name: &str) -> bool {
    name == APPROVE || name == REJECT
}

/// Why an approval cannot be asked for.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The request breaks a limit or is empty; the message says which and what to send.
    #[error("{0}")]
    Invalid(String),
    /// The run's session no longer exists.
    #[error("session {0} no longer exists")]
    NoSession(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a worker asks.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    /// The question shown to the chat.
    pub prompt: String,
    /// Who may decide (participant ids); empty: anyone in the session's chat.
    pub approvers: Vec<String>,
    /// How long to wait for a decision (default [`DEFAULT_TIMEOUT`], at most [`MAX_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

impl ApprovalRequest {
    /// Checks the limits; the error says what to change.
    pub fn validate(&self) -> Result<(), ApprovalError> {
        let invalid = |text: String| Err(ApprovalError::Invalid(text));
        if self.prompt.trim().is_empty() {
            return invalid("the prompt is empty; say what should be approved".into());
        }
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return invalid(format!(
                "the prompt has {} bytes, more than {MAX_PROMPT_BYTES}; shorten it",
                self.prompt.len()
            ));
        }
        if self.approvers.len() > MAX_APPROVERS {
            return invalid(format!(
                "{} approvers, more than {MAX_APPROVERS}; name fewer (or none: anyone in the chat)",
                self.approvers.len()
            ));
        }
        if let Some(bad) = self
            .approvers
            .iter()
            .find(|a| a.trim().is_empty() || a.len() > MAX_APPROVER_BYTES || a.contains('\0'))
        {
            return invalid(format!(
                "approver {bad:?} is not a participant id (empty, NUL or over \
                 {MAX_APPROVER_BYTES} bytes)"
            ));
        }
        if let Some(timeout) = self.timeout
            && (timeout.is_zero() || timeout > MAX_TIMEOUT)
        {
            return invalid(format!(
                "timeout_s must be between 1 and {}",
                MAX_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }
}

/// The approval service. Cheap to clone.
#[derive(Clone)]
pub struct Approvals {
    store: ApprovalStore,
    sessions: IngestStore,
    outbox: OutboxStore,
    texts: Arc<NoticeTexts>,
    clock: Arc<dyn Clock>,
    /// Signalled on every decision or expiry this process records.
    changed: Arc<Notify>,
    /// Wakes the delivery worker after an approval notice is enqueued.
    wake_outbox: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").finish_non_exhaustive()
    }
}

impl Approvals {
    /// The service over `db`, with words from `texts`.
    pub fn new(db: &Database, texts: Arc<NoticeTexts>, clock: Arc<dyn Clock>) -> Approvals {
        Approvals {
            store: db.approvals(),
            sessions: db.ingest(),
            outbox: db.outbox(),
            texts,
            clock,
            changed: Arc::default(),
            wake_outbox: None,
        }
    }

    /// Calls `wake` after enqueueing an approval notice (the delivery worker's wake-up).
    pub fn with_outbox_wake(mut self, wake: Arc<dyn Fn() + Send + Sync>) -> Approvals {
        self.wake_outbox = Some(wake);
        self
    }

    /// The store.
    pub fn store(&self) -> &ApprovalStore {
        &self.store
    }

    /// The catalogue the answers are worded from.
    pub fn texts(&self) -> &Arc<NoticeTexts> {
        &self.texts
    }

    /// Stores the approval run `run_id` of session `session_id` (agent `agent`) asks for and
    /// enqueues its notice (the prompt with approve/reject buttons) to the session's chat.
    pub async fn request(
        &self,
        session_id: &str,
        run_id: &str,
        agent: &str,
        request: &ApprovalRequest,
    ) -> Result<Approval, ApprovalError> {
        request.validate()?;
        let session = self
            .sessions
            .get_session(session_id)
            .await?
            .ok_or_else(|| ApprovalError::NoSession(session_id.to_string()))?;
        let now = self.clock.now_ms();
        let timeout = request.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prompt = request.prompt.trim();
        let notice = Notice {
            actions: vec![
                NoticeButton {
                    name: APPROVE.into(),
                    value: id.clone(),
                    label: notice::BUTTON_APPROVE.into(),
                    primary: true,
                },
                NoticeButton {
                    name: REJECT.into(),
                    value: id.clone(),
                    label: notice::BUTTON_REJECT.into(),
                    primary: false,
                },
            ],
            ..Notice::new(NoticeKind::Approval).with_detail(prompt.to_owned())
        };
        let content = OutboxContent::Notice {
            notice: serde_json::to_value(&notice).expect("a notice serializes"),
        };
        let target = outbox_target(&session_target(&session));
        // The approval and the notice that shows its buttons are one transaction: a stored
        // approval always has its card queued, and a failed request leaves neither behind.
        let approval = self
            .store
            .create_with_notice(
                &NewApproval {
                    id: &id,
                    installation_id: &session.installation_id,
                    session_id,
                    run_id,
                    agent,
                    prompt,
                    approvers: &request.approvers,
                    expires_at_ms: now.saturating_add(timeout.as_millis() as i64),
                },
                &NewOutboxRow {
                    installation_id: &session.installation_id,
                    session_id,
                    run_id: None,
                    content: &content,
                    target: &target,
                },
                now,
            )
            .await?;
        if let Some(wake) = &self.wake_outbox {
            wake();
        }
        tracing::info!(installation = %session.installation_id, session = session_id, run = run_id, approval = %id, "approval requested");
        Ok(approval)
    }

    /// Approval `id` as it stands, marking it expired first when its deadline passed.
    pub async fn current(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let Some(approval) = self.store.get(id).await? else {
            return Ok(None);
        };
        if approval.state == ApprovalState::Pending && approval.expires_at_ms <= self.clock.now_ms()
        {
            self.expire_due().await?;
            return self.store.get(id).await;
        }
        Ok(Some(approval))
    }

    /// Waits up to `wait` for approval `id` to leave `pending` (woken by a decision in this
    /// process, re-reading every second for one made elsewhere); the approval as it then stands.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<Option<Approval>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Registered before the read, so a decision in between wakes this loop.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let approval = self.current(id).await?;
            match &approval {
                Some(a) if a.state == ApprovalState::Pending => {}
                _ => return Ok(approval),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(approval);
            }
            let expiry = approval.as_ref().map_or(REPOLL, |a| {
                Duration::from_millis((a.expires_at_ms - self.clock.now_ms()).max(0) as u64)
            });
            let next = (now + REPOLL.min(expiry)).min(deadline);
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Marks every approval past its deadline as expired (a bounded batch) and wakes waiters.
    pub async fn expire_due(&self) -> Result<Vec<Approval>, StoreError> {
        let expired = self.store.expire_due(self.clock.now_ms(), 100).await?;
        if !expired.is_empty() {
            for approval in &expired {
                tracing::info!(installation = %approval.installation_id, session = %approval.session_id, approval = %approval.id, "approval expired");
            }
            self.changed.notify_waiters();
        }
        Ok(expired)
    }

    /// Runs the expiry sweep until `shutdown`: every second, approvals past their deadline are
    /// marked expired (waking their workers), and the cards of expired approvals are replaced
    /// through `delivery` by the expired card without buttons — with the token a press left,
    /// else by the card's message id. A card whose update fails for good (or that no message id
    /// or token names) is given up on; a retryable failure is tried again next time.
    pub async fn run_expiry(
        self,
        delivery: Delivery,
        installations: InstallationStore,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sweep(&delivery, &installations).await {
                tracing::warn!("the approval expiry sweep failed (retried in a second): {e}");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }

    /// One pass of [`Approvals::run_expiry`].
    pub async fn sweep(
        &self,
        delivery: &Delivery,
        installations: &InstallationStore,
    ) -> Result<(), StoreError> {
        self.expire_due().await?;
        for approval in self.store.cards_to_update(20).await? {
            let Some(installation) = installations.get(&approval.installation_id).await? else {
                self.store.mark_card_updated(&approval.id).await?;
                continue;
            };
            let Some(session) = self.sessions.get_session(&approval.session_id).await? else {
                self.store.mark_card_updated(&approval.id).await?;
                continue;
            };
            let mut message_id = approval.card_message_id.clone();
            if message_id.is_none()
                && let Some(outbox_id) = approval.outbox_id
            {
                message_id = self
                    .outbox
                    .get(outbox_id)
                    .await?
                    .and_then(|row| row.channel_message_id);
            }
            if message_id.is_none() && approval.update_token.is_none() {
                // Not delivered (yet, or ever): nothing to update. A card delivered later
                // than its expiry keeps its buttons, and a press on them answers "expired".
                if approval.outbox_id.is_none() || self.undeliverable(&approval).await? {
                    self.store.mark_card_updated(&approval.id).await?;
                }
                continue;
            }
            let notice = decided_notice(&approval);
            match delivery
                .update_notice(
                    &installation,
                    &session_target(&session),
                    message_id.as_deref(),
                    approval.update_token.as_deref(),
                    &notice,
                )
                .await
            {
                Ok(()) => {
                    tracing::info!(installation = %installation.id, session = %session.id, approval = %approval.id, "expired approval card updated");
                    self.store.mark_card_updated(&approval.id).await?;
                }
                Err(failure) if failure.is_retryable() => {
                    tracing::warn!(installation = %installation.id, approval = %approval.id, "expired approval card not updated yet: {failure}");
                }
                Err(failure) => {
                    tracing::warn!(installation = %installation.id, approval = %approval.id, "expired approval card cannot be updated: {failure}");
                    self.store.mark_card_updated(&approval.id).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether the outbox gave up delivering the approval's card.
    async fn undeliverable(&self, approval: &Approval) -> Result<bool, StoreError> {
        let Some(outbox_id) = approval.outbox_id else {
            return Ok(true);
        };
        Ok(self
            .outbox
            .get(outbox_id)
            .await?
            .is_none_or(|row| row.state != "pending"))
    }

    /// The answer to a press on a control the host has no rule for: "received".
    pub fn received(&self, installation: &Installation) -> types::ActionAnswer {
        types::ActionAnswer {
            toast: self
                .texts
                .word(notice::TOAST_RECEIVED, installation.locale()),
            tone: types::AnswerTone::Info,
            update: None,
        }
    }

    /// A press on approval button `press.name` with `press.value` (the approval id) in a chat
    /// of `installation`: checks that the approval is this chat's and the presser may decide,
    /// records the decision once and answers with a toast and, when the approval is decided,
    /// its card showing the decision without buttons. A refused press changes nothing and
    /// leaves the card as it is. Errors are the database's (the channel redelivers).
    pub async fn press(
        &self,
        installation: &Installation,
        press: &Press<'_>,
    ) -> Result<types::ActionAnswer, StoreError> {
        let locale = installation.locale();
        let sender = press.sender;
        let refuse = || types::ActionAnswer {
            toast: self.texts.word(notice::TOAST_NOT_APPROVER, locale),
            tone: types::AnswerTone::Error,
            update: None,
        };
        let state = if press.name == APPROVE {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        let Some(approval) = self.current(press.value).await? else {
            tracing::warn!(installation = %installation.id, approval = press.value, "press on an unknown approval refused");
            return Ok(refuse());
        };
        // The buttons travel through the channel: a press must come from the approval's own
        // installation and chat, whatever value it carries.
        let chat_ok = approval.installation_id == installation.id
            && self
                .sessions
                .get_session(&approval.session_id)
                .await?
                .is_some_and(|s| s.chat_id == press.chat_id);
        if !chat_ok {
            tracing::warn!(installation = %installation.id, approval = %approval.id, presser = %sender.id, "approval press from another chat refused");
            return Ok(refuse());
        }
        // Any press in the chat (an approver's or not) says which message is the card and may
        // bring a token to update it later (the expiry).
        if press.on_message.is_some() || press.update_token.is_some() {
            self.store
                .note_press(&approval.id, press.on_message, press.update_token)
                .await?;
        }
        let allowed = approval.approvers.is_empty()
            || approval.approvers.contains(&sender.id)
            || sender
                .alt_ids
                .iter()
                .any(|(_, id)| approval.approvers.contains(id));
        if !allowed {
            tracing::info!(installation = %installation.id, approval = %approval.id, presser = %sender.id, "approval press refused: not an approver");
            return Ok(refuse());
        }
        let approval = if approval.state == ApprovalState::Pending {
            match self
                .store
                .decide(
                    &approval.id,
                    state,
                    &sender.id,
                    sender.display_name.as_deref(),
                    self.clock.now_ms(),
                )
                .await?
            {
                Decision::Recorded(decided) => {
                    tracing::info!(installation = %installation.id, session = %decided.session_id, approval = %decided.id, state = decided.state.as_str(), decided_by = %sender.id, "approval decided");
                    self.changed.notify_waiters();
                    decided
                }
                Decision::Unchanged(current) => current,
                Decision::Missing => return Ok(refuse()),
            }
        } else {
            approval
        };
        Ok(self.answer_for(installation, &approval))
    }

    /// The answer (toast and updated card) for a decided or expired approval.
    fn answer_for(&self, installation: &Installation, approval: &Approval) -> types::ActionAnswer {
        let locale = installation.locale();
        let (toast, tone) = match approval.state {
            ApprovalState::Approved => (notice::TOAST_APPROVED, types::AnswerTone::Success),
            ApprovalState::Rejected => (notice::TOAST_REJECTED, types::AnswerTone::Warning),
            ApprovalState::Expired | ApprovalState::Pending => {
                (notice::TOAST_EXPIRED, types::AnswerTone::Warning)
            }
        };
        types::ActionAnswer {
            toast: self.texts.word(toast, locale),
            tone,
            update: Some(render_notice(
                &self.texts,
                installation,
                &decided_notice(approval),
            )),
        }
    }
}

/// The notice an approval's card becomes once decided: the prompt and the decision line, no
/// buttons.
pub fn decided_notice(approval: &Approval) -> Notice {
    let line = match approval.state {
        ApprovalState::Approved => notice::APPROVAL_APPROVED,
        ApprovalState::Rejected => notice::APPROVAL_REJECTED,
        ApprovalState::Expired | ApprovalState::Pending => notice::APPROVAL_EXPIRED,
    };
    Notice {
        decided: Some(Decided {
            line: line.into(),
            by: approval
                .decided_by_name
                .clone()
                .or_else(|| approval.decided_by.clone())
                .unwrap_or_default(),
        }),
        ..Notice::new(NoticeKind::Approval).with_detail(approval.prompt.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_words_that_say_what_to_change() {
        let ok = ApprovalRequest {
            prompt: "Deploy?".into(),
            approvers: vec!["u1".into()],
            timeout: Some(Duration::from_secs(60)),
        };
        assert!(ok.validate().is_ok());
        let long = ApprovalRequest {
            prompt: "x".repeat(MAX_PROMPT_BYTES + 1),
            ..ok.clone()
        };
        assert!(long.validate().unwrap_err().to_string().contains("shorten"));
        let many = ApprovalRequest {
            approvers: vec!["u".into(); MAX_APPROVERS + 1],
            ..ok.clone()
        };
        assert!(many.validate().is_err());
        let empty = ApprovalRequest {
            prompt: "  ".into(),
            ..ok.clone()
        };
        assert!(empty.validate().is_err());
        let forever = ApprovalRequest {
            timeout: Some(MAX_TIMEOUT + Duration::from_secs(1)),
            ..ok
        };
        assert!(forever.validate().is_err());
        assert!(is_approval_action(APPROVE) && is_approval_action(REJECT));
        assert!(!is_approval_action("approve"));
    }
}
