//! Pairing (issue 19): how a sender the `bound` policy does not know gets access. The sender is
//! given a short code ([`PairingStore::request`]); the operator approves it
//! ([`PairingStore::approve`]), which creates the binding and queues the "access granted"
//! notice in one transaction, or denies it ([`PairingStore::deny`]).
//!
//! Codes are 8 characters from an alphabet without look-alikes (no `0`/`O`, `1`/`I`), drawn
//! from the operating system's CSPRNG, valid for [`PAIRING_TTL_MS`]; an installation has at most
//! [`MAX_PENDING_PAIRINGS`] pending codes. A code is looked up by its SHA-256, so finding one
//! never compares the code itself (no timing signal about how much of a guess was right).
//!
//! Owns the SQL of the `pairings` table only; it must not decide what the sender is told (the
//! caller hands in the notice) or call plugins.

use rand::Rng;
use rand::rngs::OsRng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::ingest::{alt_ids_json, parse_alt_ids, upsert_binding};
use super::installations::{from_row_both, in_write_tx, is_unique_violation, on_reader};
use super::outbox::{NewOutboxRow, OutboxContent, OutboxTarget, insert_outbox};
use super::{Backend, BindingError, Database, Inner, StoreError, UserBinding};

/// How long a pairing code stays valid (ms): one hour.
pub const PAIRING_TTL_MS: i64 = 60 * 60_000;
/// The most pending (unexpired, undecided) codes one installation may have at a time.
pub const MAX_PENDING_PAIRINGS: i64 = 3;
/// Characters in a pairing code.
pub const PAIRING_CODE_LEN: usize = 8;
/// The code alphabet: 32 characters, none easily mistaken for another (no `I`, `O`, `0`, `1`),
/// so 40 bits per code.
const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A fresh code from the operating system's CSPRNG.
fn new_code() -> String {
    let mut rng = OsRng;
    (0..PAIRING_CODE_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A code as typed by a person: spaces and dashes dropped, upper case.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// What a code is stored and found by.
fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(normalize_code(code).as_bytes()))
}

/// Who asks for access, and where they can be told the answer.
#[derive(Debug, Clone)]
pub struct PairingRequest<'a> {
    /// The installation asked.
    pub installation_id: &'a str,
    /// The sender's channel user id (the participant id the plugin reports).
    pub sender_id: &'a str,
    /// The sender's other ids (`[scheme, id]`); the binding carries them.
    pub sender_alt_ids: &'a [(String, String)],
    /// The sender's display name, if the channel gave one (shown to the operator).
    pub sender_name: Option<&'a str>,
    /// The chat the sender wrote from: where the answer goes.
    pub target: &'a OutboxTarget,
}

/// What the sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingAsk {
    /// A code to give to the operator: a new one, or the sender's pending one.
    Code {
        /// The code.
        code: String,
        /// When it expires (epoch ms).
        expires_at_ms: i64,
        /// Whether it was created just now (false: the sender's existing code).
        created: bool,
    },
    /// The installation already has [`MAX_PENDING_PAIRINGS`] pending codes: nothing was
    /// created; the sender should try again later.
    Full,
}

/// A pairing as the operator sees it (the code itself is never shown: the operator gets it
/// from the sender, which is what proves who is asking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pairing {
    /// Row id.
    pub id: String,
    /// The installation.
    pub installation_id: String,
    /// The sender's channel user id.
    pub sender_id: String,
    /// The sender's other ids.
    pub sender_alt_ids: Vec<(String, String)>,
    /// The sender's display name, if known.
    pub sender_name: Option<String>,
    /// `pending`, `approved` or `denied` (a pending code past `expires_at_ms` is expired).
    pub status: String,
    /// When the code was issued (epoch ms).
    pub created_at_ms: i64,
    /// When it expires (epoch ms).
    pub expires_at_ms: i64,
    /// When it was approved or denied.
    pub decided_at_ms: Option<i64>,
    /// Where the sender is told the answer.
    #[serde(skip)]
    pub target: OutboxTarget,
}

from_row_both!(Pairing, |row| {
    let target: String = row.try_get("target")?;
    Ok(Pairing {
        id: row.try_get("id")?,
        installation_id: row.try_get("installation_id")?,
        sender_id: row.try_get("sender_id")?,
        sender_alt_ids: parse_alt_ids(&row.try_get::<String, _>("sender_alt_ids")?),
        sender_name: row.try_get("sender_name")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        target: serde_json::from_str(&target).map_err(|e| sqlx::Error::ColumnDecode {
            index: "target".into(),
            source: Box::new(e),
        })?,
    })
});

const COLS: &str = "id, installation_id, sender_id, sender_alt_ids, sender_name, status, \
     created_at_ms, expires_at_ms, decided_at_ms, target";

/// Why a code could not be approved or denied.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// No pairing has this code.
    #[error(
        "no pairing has the code {code:?}; check it with the sender (8 characters), or see \
         `switchboard pairing list`"
    )]
    Unknown {
        /// The code as given (normalized).
        code: String,
    },
    /// The code expired before it was approved.
    #[error(
        "the code {code:?} has expired (codes are valid for one hour); ask the sender to write \
         again for a new one"
    )]
    Expired {
        /// The code.
        code: String,
    },
    /// The code was approved or denied already.
    #[error("the code {code:?} was {status} already")]
    Decided {
        /// The code.
        code: String,
        /// `approved` or `denied`.
        status: String,
    },
    /// The sender is bound to another host user already.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`PairingStore::approve`] did.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The pairing, now `approved`.
    pub pairing: Pairing,
    /// The binding it created or refreshed.
    pub binding: UserBinding,
    /// The outbox row of the notice telling the sender.
    pub outbox_id: i64,
}

/// The notice [`PairingStore::approve`] queues for the sender: the ordering key of its outbox
/// row (a session-less key of the caller's choice) and its content.
pub type GrantedNotice = (String, OutboxContent);

/// Pending state of a pairing row at `now_ms`, or why it is not pending.
fn check_pending(pairing: &Pairing, code: &str, now_ms: i64) -> Result<(), PairingError> {
    if pairing.status != "pending" {
        return Err(PairingError::Decided {
            code: code.to_string(),
            status: pairing.status.clone(),
        });
    }
    if pairing.expires_at_ms <= now_ms {
        return Err(PairingError::Expired {
            code: code.to_string(),
        });
    }
    Ok(())
}

/// Pairings on a [`Database`]: a cheap, cloneable handle.
#[derive(Debug, Clone)]
pub struct PairingStore {
    db: Database,
}

impl PairingStore {
    pub(super) fn new(db: Database) -> Self {
        PairingStore { db }
    }

    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Gives the sender of `request` a code: their pending one if they have one, else a new one
    /// unless the installation has [`MAX_PENDING_PAIRINGS`] pending already ([`PairingAsk::Full`],
    /// nothing written). One write transaction; on PostgreSQL the installation row is locked
    /// first, so two replicas cannot both create the third code.
    pub async fn request(
        &self,
        request: &PairingRequest<'_>,
        now_ms: i64,
    ) -> Result<PairingAsk, StoreError> {
        let fail = StoreError::query("pairing request", self.backend());
        let target = serde_json::to_string(request.target).expect("outbox target serializes");
        let alt_ids = alt_ids_json(request.sender_alt_ids);
        // A clash of two random 40-bit codes is all but impossible; one retry covers it.
        for _ in 0..3 {
            let code = new_code();
            let outcome = in_write_tx!(self.db, fail, |tx, pg| {
                if pg {
                    sqlx::query("SELECT id FROM installations WHERE id = $1 FOR UPDATE")
                        .bind(request.installation_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
                let own: Option<(String, i64)> = sqlx::query_as(
                    "SELECT code, expires_at_ms FROM pairings
                     WHERE installation_id = $1 AND sender_id = $2 AND status = 'pending'
                       AND expires_at_ms > $3
                     ORDER BY expires_at_ms DESC LIMIT 1",
                )
                .bind(request.installation_id)
                .bind(request.sender_id)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
                if let Some((code, expires_at_ms)) = own {
                    Some(PairingAsk::Code {
                        code,
                        expires_at_ms,
                        created: false,
                    })
                } else {
                    let pending: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pairings
                         WHERE installation_id = $1 AND status = 'pending' AND expires_at_ms > $2",
                    )
                    .bind(request.installation_id)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(fail)?;
                    if pending >= MAX_PENDING_PAIRINGS {
                        Some(PairingAsk::Full)
                    } else {
                        let inserted = sqlx::query(
                            "INSERT INTO pairings (id, code_hash, code, installation_id,
                                 sender_id, sender_alt_ids, sender_name, target, status,
                                 created_at_ms, expires_at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
                        )
                        .bind(uuid::Uuid::new_v4().to_string())
                        .bind(code_hash(&code))
                        .bind(&code)
                        .bind(request.installation_id)
                        .bind(request.sender_id)
                        .bind(&alt_ids)
                        .bind(request.sender_name)
                        .bind(&target)
                        .bind(now_ms)
                        .bind(now_ms + PAIRING_TTL_MS)
                        .execute(&mut *tx)
                        .await;
                        match inserted {
                            Ok(_) => Some(PairingAsk::Code {
                                code,
                                expires_at_ms: now_ms + PAIRING_TTL_MS,
                                created: true,
                            }),
                            // The clash aborted the transaction (PostgreSQL): leave it, retry.
                            Err(e) if is_unique_violation(&e) => None,
                            Err(e) => return Err(fail(e)),
                        }
                    }
                }
            });
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
        }
        Err(StoreError::Conflict {
            what: "pairing: three fresh codes clashed with stored ones; try again".into(),
        })
    }

    /// The pending, unexpired pairings at `now_ms` (of one installation, or all), oldest first.
    pub async fn list_pending(
        &self,
        installation_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Pairing>, StoreError> {
        let fail = StoreError::query("pairing list", self.backend());
        let sql = format!(
            "SELECT {COLS} FROM pairings
             WHERE status = 'pending' AND expires_at_ms > $1
               AND ($2 IS NULL OR installation_id = $2)
             ORDER BY created_at_ms, id"
        );
        let rows: Vec<Pairing> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(now_ms)
                .bind(installation_id)
                .fetch_all(pool)
                .await
                .map_err(fail)?
        });
        Ok(rows)
    }

    /// The pairing with `code` (any status), if there is one.
    pub async fn find(&self, code: &str) -> Result<Option<Pairing>, StoreError> {
        let fail = StoreError::query("pairing find", self.backend());
        let sql = format!("SELECT {COLS} FROM pairings WHERE code_hash = $1");
        let row: Option<Pairing> = on_reader!(self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(code_hash(code))
                .fetch_optional(pool)
                .await
                .map_err(fail)?
        });
        Ok(row)
    }

    /// Approves the pending, unexpired pairing with `code`: binds its sender to `user_ref`
    /// (default: the sender's own id) with their alt ids, marks it approved and queues the
    /// notice `granted` builds for it in the outbox — all in one transaction, so a failure
    /// leaves the code pending and nothing else changed.
    pub async fn approve(
        &self,
        code: &str,
        user_ref: Option<&str>,
        granted: impl FnOnce(&Pairing) -> GrantedNotice,
        now_ms: i64,
    ) -> Result<Approved, PairingError> {
        let code = normalize_code(code);
        match self.approve_tx(&code, user_ref, granted, now_ms).await {
            Ok(outcome) => outcome,
            Err(BindingError::Store(e)) => Err(PairingError::Store(e)),
            Err(binding) => Err(PairingError::Binding(binding)),
        }
    }

    /// The transaction of [`approve`](Self::approve). The outer error is the binding's (a
    /// sender bound to someone else, or the database), which rolls everything back; the inner
    /// one a code that is not pending (nothing was written, so committing changes nothing).
    async fn approve_tx(
        &self,
        code: &str,
        user_ref: Option<&str>,
        granted: impl FnOnce(&Pairing) -> GrantedNotice,
        now_ms: i64,
    ) -> Result<Result<Approved, PairingError>, BindingError> {
        let fail = StoreError::query("pairing approve", self.backend());
        Ok(in_write_tx!(self.db, fail, |tx, pg| {
            let sql = format!(
                "SELECT {COLS} FROM pairings WHERE code_hash = $1{}",
                if pg { " FOR UPDATE" } else { "" }
            );
            let found: Option<Pairing> = sqlx::query_as(&sql)
                .bind(code_hash(code))
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
            match found {
                None => Err(PairingError::Unknown {
                    code: code.to_string(),
                }),
                Some(pairing) => match check_pending(&pairing, code, now_ms) {
                    Err(refused) => Err(refused),
                    Ok(()) => {
                        let user_ref = user_ref.unwrap_or(&pairing.sender_id).to_string();
                        let binding = upsert_binding!(
                            tx,
                            fail,
                            &pairing.installation_id,
                            &pairing.sender_id,
                            &user_ref,
                            &pairing.sender_alt_ids,
                            now_ms
                        );
                        sqlx::query(
                            "UPDATE pairings SET status = 'approved', decided_at_ms = $2
                             WHERE id = $1",
                        )
                        .bind(&pairing.id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                        let (session_key, content) = granted(&pairing);
                        let row = NewOutboxRow {
                            installation_id: &pairing.installation_id,
                            session_id: &session_key,
                            run_id: None,
                            content: &content,
                            target: &pairing.target,
                        };
                        let outbox_id = insert_outbox!(tx, fail, &row, now_ms);
                        Ok(Approved {
                            pairing: Pairing {
                                status: "approved".into(),
                                decided_at_ms: Some(now_ms),
                                ..pairing
                            },
                            binding,
                            outbox_id,
                        })
                    }
                },
            }
        }))
    }

    /// Denies the pending, unexpired pairing with `code`: the sender gets no access (and no
    /// notice; they may ask again later).
    pub async fn deny(&self, code: &str, now_ms: i64) -> Result<Pairing, PairingError> {
        let code = normalize_code(code);
        let fail = StoreError::query("pairing deny", self.backend());
        let result: Result<Pairing, PairingError> = in_write_tx!(self.db, fail, |tx, pg| {
            let sql = format!(
                "SELECT {COLS} FROM pairings WHERE code_hash = $1{}",
                if pg { " FOR UPDATE" } else { "" }
            );
            let found: Option<Pairing> = sqlx::query_as(&sql)
                .bind(code_hash(&code))
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
            match found {
                None => Err(PairingError::Unknown { code: code.clone() }),
                Some(pairing) => match check_pending(&pairing, &code, now_ms) {
                    Err(refused) => Err(refused),
                    Ok(()) => {
                        sqlx::query(
                            "UPDATE pairings SET status = 'denied', decided_at_ms = $2
                             WHERE id = $1",
                        )
                        .bind(&pairing.id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                        Ok(Pairing {
                            status: "denied".into(),
                            decided_at_ms: Some(now_ms),
                            ..pairing
                        })
                    }
                },
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_unambiguous_alphabet_and_normalize() {
        for _ in 0..200 {
            let code = new_code();
            assert_eq!(code.len(), PAIRING_CODE_LEN);
            assert!(code.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
        }
        assert_eq!(normalize_code(" abcd-efgh "), "ABCDEFGH");
        assert_eq!(code_hash("abcd efgh"), code_hash("ABCDEFGH"));
        assert_ne!(code_hash("ABCDEFGH"), code_hash("ABCDEFGJ"));
    }
}
