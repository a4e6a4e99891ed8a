//! PostgreSQL notifications (`pg_notify` / `LISTEN`) for the cross-replica event relay
//! (`crate::runs::relay`, SPEC §8).
//!
//! Owns the two statements of the relay: sending a notification and listening on a channel.
//! SQLite has no notifications (one process owns the file): [`Database::notify`] is a no-op
//! there and [`Database::listen`] answers `None`. Payloads are opaque text here; their meaning
//! belongs to the caller.

use sqlx::postgres::PgListener;

use super::{Backend, Database, Inner, StoreError};

/// PostgreSQL refuses notification payloads of 8000 bytes or more.
pub const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// A dedicated connection listening on one notification channel (PostgreSQL only).
pub struct Listener {
    inner: PgListener,
    channel: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// What [`Listener::next`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A notification's payload.
    Payload(String),
    /// The connection was lost and has been re-established: notifications sent in between are
    /// lost, so the caller should resynchronise from the database.
    Reconnected,
}

impl Listener {
    /// Waits for the next notification. Errors are connection failures (the next call tries to
    /// reconnect) or the database being closed ([`Listener::is_closed_error`]).
    pub async fn next(&mut self) -> Result<Notification, StoreError> {
        let fail = StoreError::query("notification receive", Backend::Postgres);
        match self.inner.try_recv().await.map_err(fail)? {
            Some(notification) => Ok(Notification::Payload(notification.payload().to_owned())),
            None => Ok(Notification::Reconnected),
        }
    }

    /// Whether `error` (from [`Listener::next`]) means the database was closed: stop listening.
    pub fn is_closed_error(error: &StoreError) -> bool {
        matches!(
            error,
            StoreError::Query {
                source: sqlx::Error::PoolClosed,
                ..
            }
        )
    }

    /// Reconnects if needed and listens on the channel again (after [`Listener::next`] failed);
    /// notifications sent while the connection was down are lost.
    pub async fn relisten(&mut self) -> Result<(), StoreError> {
        let fail = StoreError::query("listen", Backend::Postgres);
        self.inner.unlisten(&self.channel).await.map_err(fail)?;
        self.inner.listen(&self.channel).await.map_err(fail)
    }

    /// The channel listened on.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Database {
    /// Sends `payload` on notification channel `channel` (PostgreSQL: `pg_notify`, delivered to
    /// every listener after the sending statement commits; SQLite: nothing happens). Payloads
    /// must be shorter than [`MAX_NOTIFY_PAYLOAD`] bytes.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let Inner::Postgres(pool) = &self.inner else {
            return Ok(());
        };
        if payload.len() > MAX_NOTIFY_PAYLOAD {
            return Err(StoreError::Invalid {
                what: format!(
                    "notification payload of {} bytes on {channel} (PostgreSQL allows {MAX_NOTIFY_PAYLOAD})",
                    payload.len()
                ),
            });
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(pool)
            .await
            .map_err(StoreError::query("notify", Backend::Postgres))?;
        Ok(())
    }

    /// Starts listening on notification channel `channel` on a dedicated connection taken from
    /// the pool (PostgreSQL); `None` on SQLite, which has no notifications.
    pub async fn listen(&self, channel: &str) -> Result<Option<Listener>, StoreError> {
        let Inner::Postgres(pool) = &self.inner else {
            return Ok(None);
        };
        let fail = StoreError::query("listen", Backend::Postgres);
        let mut inner = PgListener::connect_with(pool).await.map_err(fail)?;
        inner.listen(channel).await.map_err(fail)?;
        Ok(Some(Listener {
            inner,
            channel: channel.to_owned(),
        }))
    }
}
