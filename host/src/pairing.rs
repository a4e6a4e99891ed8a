//! Approving a pairing code, the one path the CLI (`switchboard pairing approve`) and the admin
//! API (`POST /api/pairings/{code}/approve`) share: the store binds the sender and, in the same
//! transaction, queues the "access granted" notice ([`PAIRING_APPROVED`], kind `info`,
//! addressed to the sender in the chat they wrote from) in the delivery outbox, which renders it
//! in the installation's locale when it is sent.
//!
//! Owns what the granted notice is; must not hold SQL (that is `store::PairingStore`) or call
//! plugins (the outbox worker delivers).

use crate::delivery::outbox::sessionless_key;
use crate::domain::notice::{Notice, NoticeKind, PAIRING_APPROVED};
use crate::store::{Approved, OutboxContent, Pairing, PairingError, PairingStore};

/// The notice telling `pairing`'s sender they have access, and its outbox ordering key.
fn granted(pairing: &Pairing) -> (String, OutboxContent) {
    let notice = Notice {
        recipient: Some(pairing.sender_id.clone()),
        ..Notice::new(NoticeKind::Info).with_text_key(PAIRING_APPROVED)
    };
    let content = OutboxContent::Notice {
        notice: serde_json::to_value(&notice).expect("a notice serializes"),
    };
    (sessionless_key(), content)
}

/// Approves `code`: the sender is bound to `user_ref` (default: their channel user id) and told
/// so through the outbox. A running host delivers the notice within its outbox poll interval;
/// the caller may wake its outbox to send it at once.
pub async fn approve(
    pairings: &PairingStore,
    code: &str,
    user_ref: Option<&str>,
    now_ms: i64,
) -> Result<Approved, PairingError> {
    let approved = pairings.approve(code, user_ref, granted, now_ms).await?;
    tracing::info!(
        installation = %approved.pairing.installation_id,
        pairing = %approved.pairing.id,
        outbox_row = approved.outbox_id,
        "pairing approved; the sender is bound and told"
    );
    Ok(approved)
}
