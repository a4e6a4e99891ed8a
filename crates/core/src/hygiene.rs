//! Input hygiene: what the host accepts so that everything it accepts can be stored (issue 14).
//!
//! PostgreSQL refuses U+0000 (NUL) in text, so an id or a text holding one would fail its insert
//! on every attempt and the channel would redeliver the event forever. The rules, shared by the
//! inbound path (`ingest`), the admin API and the installation store:
//!
//! - **ids** (message, chat, sender, thread ids, routing keys, names) are checked: one that holds
//!   a NUL or is longer than its bound is refused with a 4xx (inbound events: `400`, or an ACK on
//!   a long connection, and an `unstorable_value` audit row). An id cannot be repaired without
//!   changing what it points at.
//! - **text** (message bodies, command text, mention names) is sanitised: NUL characters are
//!   removed and the rest is stored; text longer than [`MAX_TEXT_BYTES`] is refused like an id.
//!
//! Every other `char` of a Rust `String` is storable on both backends (SQLite takes NUL too, but
//! the rules are the same on both so a host can move between them).
//!
//! Owns the bounds and the checks (`ingest::pipeline::sanitize_message` applies them to a decoded
//! message); must not touch storage, HTTP or plugins, nor import another module of this crate
//! (the store uses it).

/// Longest id of an inbound message (message, chat, sender, thread ids), in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest routing key, installation name, channel, agent name or config key, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest installation config or secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest message body or command text, in bytes (after enrichment, too).
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Longest debounce window of an installation, in milliseconds (one hour).
pub const MAX_DEBOUNCE_MS: i64 = 3_600_000;

/// Why a value cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    /// The value holds a NUL character.
    #[error("{field} contains a NUL character (U+0000), which cannot be stored; remove it")]
    Nul {
        /// Which value, e.g. `message_id` or `config.base_url`.
        field: String,
    },
    /// The value is longer than its bound.
    #[error("{field} is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// Which value.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// Checks that `value` holds no NUL and is at most `max` bytes long; `field` names it in the
/// error.
pub fn check(field: &str, value: &str, max: usize) -> Result<(), Unstorable> {
    if value.len() > max {
        return Err(Unstorable::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max,
        });
    }
    if value.contains('\0') {
        return Err(Unstorable::Nul {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Checks an optional value like [`check`]; `None` passes.
pub fn check_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), Unstorable> {
    value.map_or(Ok(()), |value| check(field, value, max))
}

/// Removes every NUL character from `text`; returns how many there were.
pub fn strip_nul(text: &mut String) -> usize {
    let count = text.bytes().filter(|&b| b == 0).count();
    if count > 0 {
        text.retain(|c| c != '\0');
    }
    count
}

/// `value` made safe to store in an audit row or print in a log: NUL shown as U+FFFD, clipped
/// to [`MAX_ID_BYTES`] (on a character boundary).
pub fn printable(value: &str) -> String {
    let mut end = value.len().min(MAX_ID_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].replace('\0', "\u{FFFD}")
}

/// Checks a debounce window: 1 ms to [`MAX_DEBOUNCE_MS`].
pub fn check_debounce_ms(debounce_ms: i64) -> Result<(), String> {
    if (1..=MAX_DEBOUNCE_MS).contains(&debounce_ms) {
        Ok(())
    } else {
        Err(format!(
            "debounce_ms {debounce_ms}: the debounce window must be between 1 and \
             {MAX_DEBOUNCE_MS} ms (one hour)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_sanitising() {
        assert_eq!(check("routing_key", "cli_x", MAX_NAME_BYTES), Ok(()));
        let err = check("routing_key", "a\0b", MAX_NAME_BYTES).unwrap_err();
        assert!(
            err.to_string().contains("routing_key contains a NUL"),
            "{err}"
        );
        let err = check("name", &"x".repeat(257), MAX_NAME_BYTES).unwrap_err();
        assert_eq!(
            err.to_string(),
            "name is 257 bytes long; at most 256 bytes are accepted"
        );
        let mut text = "a\0b\0".to_string();
        assert_eq!(strip_nul(&mut text), 2);
        assert_eq!(text, "ab");
        assert_eq!(printable("om\0x"), "om\u{FFFD}x");
        let long = "é".repeat(MAX_ID_BYTES);
        assert!(printable(&long).len() <= MAX_ID_BYTES);
        assert!(check_debounce_ms(0).is_err());
        assert!(check_debounce_ms(i64::MAX).is_err());
        assert!(check_debounce_ms(MAX_DEBOUNCE_MS).is_ok());
    }
}
