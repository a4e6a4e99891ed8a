//! Fragment reassembly for multi-frame channel messages (a long connection that splits one
//! transport message into numbered fragments; SPEC §3).
//!
//! Owns: the per-connection buffers of partially received transport messages, keyed by
//! (connection id, transport message id); their sliding time-to-live; the guard rails (fragment
//! count cap, per-connection byte and message caps); and the answer to "is this message complete,
//! and which fragment completed it?" — the host ACKs exactly once, for the completing frame.
//!
//! Must not touch: payload contents (no UTF-8 or JSON decoding — fragments are raw byte slices
//! that may split a UTF-8 sequence; decoding is the plugin's job), sockets, ACK encoding, or the
//! clock: time is passed in as an [`Instant`] so callers and tests control it. Uses `std` only.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Default sliding time-to-live of an incomplete message (the official SDKs use 5 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Default maximum number of fragments of one message.
pub const DEFAULT_MAX_FRAGMENTS: u32 = 64;
/// Default maximum number of buffered payload bytes per connection.
pub const DEFAULT_MAX_BYTES_PER_CONNECTION: usize = 8 * 1024 * 1024;
/// Default maximum number of incomplete messages per connection.
pub const DEFAULT_MAX_MESSAGES_PER_CONNECTION: usize = 256;

/// Tunables of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An incomplete message is dropped when no fragment arrived for this long (sliding).
    pub ttl: Duration,
    /// Largest accepted fragment count (`total`).
    pub max_fragments: u32,
    /// Largest number of payload bytes buffered for one connection.
    pub max_bytes_per_connection: usize,
    /// Largest number of incomplete messages buffered for one connection.
    pub max_messages_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_fragments: DEFAULT_MAX_FRAGMENTS,
            max_bytes_per_connection: DEFAULT_MAX_BYTES_PER_CONNECTION,
            max_messages_per_connection: DEFAULT_MAX_MESSAGES_PER_CONNECTION,
        }
    }
}

/// One received fragment, as reported by the plugin's frame classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The connection (socket) the fragment arrived on; buffers never mix connections.
    pub connection_id: &'a str,
    /// Transport message id shared by the fragments (not the chat message id).
    pub message_id: &'a str,
    /// 0-based fragment index.
    pub seq: u32,
    /// Number of fragments of the message.
    pub total: u32,
    /// This fragment's bytes.
    pub bytes: &'a [u8],
}

/// A completed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The fragments' bytes concatenated in `seq` order.
    pub payload: Vec<u8>,
    /// `seq` of the fragment that completed the message — the one passed to the
    /// [`Reassembler::push`] call that returned this value, whose frame the host ACKs.
    pub completed_by_seq: u32,
    /// Number of fragments the message had.
    pub total: u32,
}

/// Result of admitting one fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// More fragments are needed; send no ACK.
    Pending {
        /// Distinct fragments received so far.
        received: u32,
        /// Fragments expected.
        total: u32,
    },
    /// The message is complete; decode the payload and ACK the completing frame once.
    Complete(Completed),
}

/// Why a fragment was rejected (nothing of it is buffered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReassemblyError {
    /// A multi-fragment message without a transport message id cannot be keyed.
    EmptyMessageId,
    /// `total` is 0.
    ZeroTotal,
    /// `seq` is not below `total`.
    SeqOutOfRange {
        /// The fragment's index.
        seq: u32,
        /// The fragment's total.
        total: u32,
    },
    /// `total` exceeds the fragment cap.
    TooManyFragments {
        /// The fragment's total.
        total: u32,
        /// The configured cap.
        max: u32,
    },
    /// A fragment claims a different `total` than earlier fragments of the same message.
    TotalMismatch {
        /// The total of the buffered message.
        expected: u32,
        /// The total this fragment claims.
        got: u32,
    },
    /// The connection's byte cap would be exceeded; the message's partial data was dropped.
    BufferFull {
        /// Bytes the connection would hold with this fragment.
        would_hold: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The connection already buffers the maximum number of incomplete messages.
    TooManyPendingMessages {
        /// The configured cap.
        limit: usize,
    },
}

impl fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReassemblyError::EmptyMessageId => {
                f.write_str("fragment of a multi-frame message has no transport message id")
            }
            ReassemblyError::ZeroTotal => f.write_str("fragment claims a total of 0 fragments"),
            ReassemblyError::SeqOutOfRange { seq, total } => {
                write!(
                    f,
                    "fragment index {seq} is out of range for a {total}-fragment message"
                )
            }
            ReassemblyError::TooManyFragments { total, max } => {
                write!(
                    f,
                    "message claims {total} fragments; at most {max} are accepted"
                )
            }
            ReassemblyError::TotalMismatch { expected, got } => write!(
                f,
                "fragment claims {got} fragments but earlier fragments of the message claimed {expected}"
            ),
            ReassemblyError::BufferFull { would_hold, limit } => write!(
                f,
                "connection would buffer {would_hold} bytes of incomplete messages (limit {limit}); the message was dropped"
            ),
            ReassemblyError::TooManyPendingMessages { limit } => {
                write!(f, "connection already buffers {limit} incomplete messages")
            }
        }
    }
}

impl std::error::Error for ReassemblyError {}

/// One incomplete message.
#[derive(Debug)]
struct PartialMessage {
    slots: Vec<Option<Vec<u8>>>,
    received: u32,
    bytes: usize,
    last_seen: Instant,
}

/// The incomplete messages of one connection.
#[derive(Debug, Default)]
struct ConnectionBuffers {
    messages: HashMap<String, PartialMessage>,
    bytes: usize,
}

/// Reassembles fragments into complete messages. Not thread-safe by itself: keep one per
/// connection task, or wrap it in a mutex.
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: Limits,
    connections: HashMap<String, ConnectionBuffers>,
}

impl Reassembler {
    /// A reassembler with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits one fragment received at `now`.
    ///
    /// Expired messages of every connection are dropped first (lazy GC). A single-fragment
    /// message (`total == 1`, `seq == 0`) completes at once without being buffered (its message
    /// id may be empty). A duplicate `seq` overwrites the earlier bytes without counting twice.
    /// Every admitted fragment extends its message's TTL. On completion the message's buffer is
    /// released, so a later fragment with the same id starts a fresh message.
    pub fn push(&mut self, fragment: Fragment<'_>, now: Instant) -> Result<Push, ReassemblyError> {
        self.purge_expired(now);
        let Fragment {
            connection_id,
            message_id,
            seq,
            total,
            bytes,
        } = fragment;
        if total == 0 {
            return Err(ReassemblyError::ZeroTotal);
        }
        if seq >= total {
            return Err(ReassemblyError::SeqOutOfRange { seq, total });
        }
        if total > self.limits.max_fragments {
            return Err(ReassemblyError::TooManyFragments {
                total,
                max: self.limits.max_fragments,
            });
        }
        if total == 1 {
            return Ok(Push::Complete(Completed {
                payload: bytes.to_vec(),
                completed_by_seq: 0,
                total: 1,
            }));
        }
        if message_id.is_empty() {
            return Err(ReassemblyError::EmptyMessageId);
        }

        let limits = self.limits;
        let connection = self
            .connections
            .entry(connection_id.to_string())
            .or_default();
        if !connection.messages.contains_key(message_id)
            && connection.messages.len() >= limits.max_messages_per_connection
        {
            let limit = limits.max_messages_per_connection;
            self.forget_if_empty(connection_id);
            return Err(ReassemblyError::TooManyPendingMessages { limit });
        }
        let message = connection
            .messages
            .entry(message_id.to_string())
            .or_insert_with(|| PartialMessage {
                slots: vec![None; total as usize],
                received: 0,
                bytes: 0,
                last_seen: now,
            });
        let expected = message.slots.len() as u32;
        if expected != total {
            return Err(ReassemblyError::TotalMismatch {
                expected,
                got: total,
            });
        }

        let slot = &mut message.slots[seq as usize];
        let replaced = slot.as_ref().map_or(0, Vec::len);
        let would_hold = connection.bytes - replaced + bytes.len();
        if would_hold > limits.max_bytes_per_connection {
            let dropped = connection
                .messages
                .remove(message_id)
                .map_or(0, |message| message.bytes);
            connection.bytes -= dropped;
            self.forget_if_empty(connection_id);
            return Err(ReassemblyError::BufferFull {
                would_hold,
                limit: limits.max_bytes_per_connection,
            });
        }
        if slot.is_none() {
            message.received += 1;
        }
        *slot = Some(bytes.to_vec());
        message.bytes = message.bytes - replaced + bytes.len();
        message.last_seen = now;
        connection.bytes = would_hold;

        if message.received < total {
            return Ok(Push::Pending {
                received: message.received,
                total,
            });
        }
        let message = connection
            .messages
            .remove(message_id)
            .expect("the message being completed is buffered");
        connection.bytes -= message.bytes;
        let mut payload = Vec::with_capacity(message.bytes);
        for piece in message.slots.into_iter().flatten() {
            payload.extend_from_slice(&piece);
        }
        self.forget_if_empty(connection_id);
        Ok(Push::Complete(Completed {
            payload,
            completed_by_seq: seq,
            total,
        }))
    }

    /// Drops every message whose last fragment is at least one TTL older than `now`; returns
    /// how many were dropped.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let ttl = self.limits.ttl;
        let mut dropped = 0;
        self.connections.retain(|_, connection| {
            connection.messages.retain(|_, message| {
                let alive = now.saturating_duration_since(message.last_seen) < ttl;
                if !alive {
                    connection.bytes -= message.bytes;
                    dropped += 1;
                }
                alive
            });
            !connection.messages.is_empty()
        });
        dropped
    }

    /// Drops everything buffered for a connection (call it when the socket closes: fragments
    /// belong to the socket that received them). Returns how many messages were dropped.
    pub fn drop_connection(&mut self, connection_id: &str) -> usize {
        self.connections
            .remove(connection_id)
            .map_or(0, |connection| connection.messages.len())
    }

    /// Number of incomplete messages across all connections.
    pub fn pending_messages(&self) -> usize {
        self.connections
            .values()
            .map(|connection| connection.messages.len())
            .sum()
    }

    /// Payload bytes buffered for a connection.
    pub fn buffered_bytes(&self, connection_id: &str) -> usize {
        self.connections
            .get(connection_id)
            .map_or(0, |connection| connection.bytes)
    }

    fn forget_if_empty(&mut self, connection_id: &str) {
        if self
            .connections
            .get(connection_id)
            .is_some_and(|connection| connection.messages.is_empty())
        {
            self.connections.remove(connection_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: &str = "conn-1";

    fn fragment<'a>(message_id: &'a str, seq: u32, total: u32, bytes: &'a [u8]) -> Fragment<'a> {
        Fragment {
            connection_id: CONN,
            message_id,
            seq,
            total,
            bytes,
        }
    }

    fn complete(push: Result<Push, ReassemblyError>) -> Completed {
        match push {
            Ok(Push::Complete(completed)) => completed,
            other => panic!("expected a completed message, got {other:?}"),
        }
    }

    fn pending(push: Result<Push, ReassemblyError>) -> (u32, u32) {
        match push {
            Ok(Push::Pending { received, total }) => (received, total),
            other => panic!("expected a pending message, got {other:?}"),
        }
    }

    #[test]
    fn single_frame_passes_through_and_zero_total_is_rejected() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        let done = complete(reassembler.push(fragment("", 0, 1, b"{}"), now));
        assert_eq!(done.payload, b"{}");
        assert_eq!((done.completed_by_seq, done.total), (0, 1));
        assert_eq!(reassembler.pending_messages(), 0);
        assert_eq!(
            reassembler.push(fragment("m", 0, 0, b"x"), now),
            Err(ReassemblyError::ZeroTotal)
        );
    }

    #[test]
    fn reassembles_in_order_and_clears_state() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        assert_eq!(
            pending(reassembler.push(fragment("m", 0, 3, b"hello "), now)),
            (1, 3)
        );
        assert_eq!(
            pending(reassembler.push(fragment("m", 1, 3, b"brave "), now)),
            (2, 3)
        );
        assert_eq!(reassembler.buffered_bytes(CONN), 12);
        let done = complete(reassembler.push(fragment("m", 2, 3, b"world"), now));
        assert_eq!(done.payload, b"hello brave world");
        assert_eq!(done.completed_by_seq, 2);
        assert_eq!(reassembler.pending_messages(), 0);
        assert_eq!(reassembler.buffered_bytes(CONN), 0);
    }

    #[test]
    fn reassembles_out_of_order() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        pending(reassembler.push(fragment("m", 2, 3, b"C"), now));
        pending(reassembler.push(fragment("m", 0, 3, b"A"), now));
        let done = complete(reassembler.push(fragment("m", 1, 3, b"B"), now));
        assert_eq!(done.payload, b"ABC");
        assert_eq!(
            done.completed_by_seq, 1,
            "the completing fragment is reported"
        );
    }

    #[test]
    fn bytes_are_concatenated_without_utf8_interpretation() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        let text = "é".as_bytes(); // two bytes, split between fragments
        pending(reassembler.push(fragment("m", 0, 2, &text[..1]), now));
        let done = complete(reassembler.push(fragment("m", 1, 2, &text[1..]), now));
        assert_eq!(done.payload, text);
    }

    #[test]
    fn duplicate_seq_overwrites_without_double_counting() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        assert_eq!(
            pending(reassembler.push(fragment("m", 0, 2, b"old"), now)),
            (1, 2)
        );
        assert_eq!(
            pending(reassembler.push(fragment("m", 0, 2, b"new!"), now)),
            (1, 2),
            "a duplicate must not complete the message early"
        );
        assert_eq!(
            reassembler.buffered_bytes(CONN),
            4,
            "the old bytes were replaced"
        );
        let done = complete(reassembler.push(fragment("m", 1, 2, b"+tail"), now));
        assert_eq!(done.payload, b"new!+tail");
    }

    #[test]
    fn concurrent_messages_are_independent_and_completed_ids_start_fresh() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        pending(reassembler.push(fragment("a", 0, 2, b"a0"), now));
        pending(reassembler.push(fragment("b", 1, 2, b"b1"), now));
        assert_eq!(reassembler.pending_messages(), 2);
        assert_eq!(
            complete(reassembler.push(fragment("a", 1, 2, b"a1"), now)).payload,
            b"a0a1"
        );
        assert_eq!(
            complete(reassembler.push(fragment("b", 0, 2, b"b0"), now)).payload,
            b"b0b1"
        );
        // A completed id admitted again is a new message, not a continuation.
        assert_eq!(
            pending(reassembler.push(fragment("a", 1, 2, b"x"), now)),
            (1, 2)
        );
    }

    #[test]
    fn same_message_id_on_two_connections_does_not_mix() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        let on = |connection_id, seq, bytes| Fragment {
            connection_id,
            message_id: "m",
            seq,
            total: 2,
            bytes,
        };
        pending(reassembler.push(on("c1", 0, b"1a"), now));
        pending(reassembler.push(on("c2", 0, b"2a"), now));
        assert_eq!(
            complete(reassembler.push(on("c2", 1, b"2b"), now)).payload,
            b"2a2b"
        );
        assert_eq!(
            complete(reassembler.push(on("c1", 1, b"1b"), now)).payload,
            b"1a1b"
        );
    }

    #[test]
    fn ttl_expires_a_partial_message() {
        let mut reassembler = Reassembler::default();
        let t0 = Instant::now();
        pending(reassembler.push(fragment("m", 0, 2, b"stale"), t0));
        // A late fragment after the TTL starts a new message; it never completes with stale data.
        let late = t0 + DEFAULT_TTL + Duration::from_millis(1);
        assert_eq!(
            pending(reassembler.push(fragment("m", 1, 2, b"late"), late)),
            (1, 2)
        );
        assert_eq!(reassembler.buffered_bytes(CONN), 4);
    }

    #[test]
    fn ttl_boundary() {
        let mut reassembler = Reassembler::default();
        let t0 = Instant::now();
        pending(reassembler.push(fragment("m", 0, 2, b"x"), t0));
        assert_eq!(
            reassembler.purge_expired(t0 + DEFAULT_TTL - Duration::from_millis(1)),
            0
        );
        assert_eq!(reassembler.purge_expired(t0 + DEFAULT_TTL), 1);
        assert_eq!(reassembler.pending_messages(), 0);
        assert_eq!(reassembler.buffered_bytes(CONN), 0);
    }

    #[test]
    fn sliding_ttl_allows_steady_progress() {
        let mut reassembler = Reassembler::default();
        let t0 = Instant::now();
        let step = Duration::from_secs(4);
        pending(reassembler.push(fragment("m", 0, 3, b"a"), t0));
        pending(reassembler.push(fragment("m", 1, 3, b"b"), t0 + step));
        // 8 s after the first fragment, but only 4 s after the previous one.
        let done = complete(reassembler.push(fragment("m", 2, 3, b"c"), t0 + step * 2));
        assert_eq!(done.payload, b"abc");
    }

    #[test]
    fn lazy_gc_runs_on_admit() {
        let mut reassembler = Reassembler::default();
        let t0 = Instant::now();
        pending(reassembler.push(fragment("old", 0, 2, b"x"), t0));
        pending(reassembler.push(
            Fragment {
                connection_id: "other-connection",
                message_id: "old2",
                seq: 0,
                total: 2,
                bytes: b"y",
            },
            t0,
        ));
        pending(reassembler.push(fragment("new", 0, 2, b"z"), t0 + Duration::from_secs(6)));
        assert_eq!(
            reassembler.pending_messages(),
            1,
            "expired entries of every connection are reaped"
        );
        assert_eq!(reassembler.buffered_bytes("other-connection"), 0);
    }

    #[test]
    fn rejects_bad_inputs() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        assert_eq!(
            reassembler.push(fragment("", 0, 2, b"x"), now),
            Err(ReassemblyError::EmptyMessageId)
        );
        assert_eq!(
            reassembler.push(fragment("m", 2, 2, b"x"), now),
            Err(ReassemblyError::SeqOutOfRange { seq: 2, total: 2 })
        );
        assert_eq!(
            reassembler.push(fragment("m", 1, 1, b"x"), now),
            Err(ReassemblyError::SeqOutOfRange { seq: 1, total: 1 })
        );
        assert_eq!(
            reassembler.push(fragment("m", 0, 0, b"x"), now),
            Err(ReassemblyError::ZeroTotal)
        );
        assert_eq!(
            reassembler.pending_messages(),
            0,
            "rejected fragments buffer nothing"
        );
    }

    #[test]
    fn caps_the_fragment_count() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        assert_eq!(
            reassembler.push(fragment("m", 0, 65, b"x"), now),
            Err(ReassemblyError::TooManyFragments { total: 65, max: 64 })
        );
        assert_eq!(
            pending(reassembler.push(fragment("m", 63, 64, b"x"), now)),
            (1, 64)
        );
    }

    #[test]
    fn rejects_a_changed_total() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        pending(reassembler.push(fragment("m", 0, 3, b"a"), now));
        assert_eq!(
            reassembler.push(fragment("m", 1, 2, b"b"), now),
            Err(ReassemblyError::TotalMismatch {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            pending(reassembler.push(fragment("m", 1, 3, b"b"), now)),
            (2, 3)
        );
    }

    #[test]
    fn caps_buffered_bytes_per_connection_and_drops_the_offender() {
        let mut reassembler = Reassembler::new(Limits {
            max_bytes_per_connection: 10,
            ..Limits::default()
        });
        let now = Instant::now();
        pending(reassembler.push(fragment("a", 0, 2, b"123456"), now));
        pending(reassembler.push(fragment("b", 0, 2, b"12"), now));
        assert_eq!(
            reassembler.push(fragment("b", 1, 2, b"123"), now),
            Err(ReassemblyError::BufferFull {
                would_hold: 11,
                limit: 10
            })
        );
        // "b" was dropped, "a" is intact and can still complete.
        assert_eq!(reassembler.buffered_bytes(CONN), 6);
        assert_eq!(reassembler.pending_messages(), 1);
        assert_eq!(
            complete(reassembler.push(fragment("a", 1, 2, b"7890"), now)).payload,
            b"1234567890"
        );
        // Other connections have their own budget.
        let other = Fragment {
            connection_id: "conn-2",
            message_id: "c",
            seq: 0,
            total: 2,
            bytes: b"0123456789",
        };
        pending(reassembler.push(other, now));
    }

    #[test]
    fn caps_pending_messages_per_connection() {
        let mut reassembler = Reassembler::new(Limits {
            max_messages_per_connection: 2,
            ..Limits::default()
        });
        let now = Instant::now();
        pending(reassembler.push(fragment("a", 0, 2, b"x"), now));
        pending(reassembler.push(fragment("b", 0, 2, b"x"), now));
        assert_eq!(
            reassembler.push(fragment("c", 0, 2, b"x"), now),
            Err(ReassemblyError::TooManyPendingMessages { limit: 2 })
        );
        // Fragments of already-buffered messages are still accepted.
        complete(reassembler.push(fragment("a", 1, 2, b"y"), now));
        pending(reassembler.push(fragment("c", 0, 2, b"x"), now));
    }

    #[test]
    fn dropping_a_connection_discards_its_buffers() {
        let mut reassembler = Reassembler::default();
        let now = Instant::now();
        pending(reassembler.push(fragment("a", 0, 2, b"x"), now));
        pending(reassembler.push(fragment("b", 0, 3, b"y"), now));
        assert_eq!(reassembler.drop_connection(CONN), 2);
        assert_eq!(reassembler.drop_connection(CONN), 0);
        assert_eq!(reassembler.buffered_bytes(CONN), 0);
        // After a reconnect the channel resends from fragment 0; nothing stale remains.
        assert_eq!(
            pending(reassembler.push(fragment("a", 1, 2, b"z"), now)),
            (1, 2)
        );
    }

    #[test]
    fn errors_explain_themselves() {
        let message = ReassemblyError::SeqOutOfRange { seq: 4, total: 2 }.to_string();
        assert!(message.contains('4') && message.contains('2'), "{message}");
        assert!(
            ReassemblyError::EmptyMessageId
                .to_string()
                .contains("message id")
        );
    }
}
