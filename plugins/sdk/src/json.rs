//! JSON payloads into your own serde types, with errors the host understands.
//!
//! A payload that is not what the channel sends is the sender's problem, not a failure of the
//! plugin: [`parse`] answers [`PluginError::InvalidInput`] naming what was being read and what
//! is wrong (serde's message names the missing or mistyped field and where it is), which the host
//! turns into a 400 for a webhook and an audit row for a frame.
//!
//! ```
//! #[derive(serde::Deserialize, Debug)]
//! struct Message { chat_id: String, text: String }
//! let message: Message =
//!     switchboard_plugin_sdk::json::parse(br#"{"chat_id":"c1","text":"hi"}"#, "the message").unwrap();
//! assert_eq!(message.chat_id, "c1");
//! let error = switchboard_plugin_sdk::json::parse::<Message>(br#"{"text":"hi"}"#, "the message")
//!     .unwrap_err();
//! assert!(format!("{error:?}").contains("chat_id"));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::PluginError;

/// Parses `payload` as JSON into `T`; [`PluginError::InvalidInput`] saying which `what` (e.g.
/// "the message") could not be read, and why, otherwise.
pub fn parse<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, PluginError> {
    serde_json::from_slice(payload).map_err(|e| {
        PluginError::InvalidInput(format!("{what} is not valid JSON of its kind: {e}"))
    })
}

/// Serialises `value` as compact JSON bytes (a request body, a webhook answer).
///
/// Serialising plain data (structs of strings, numbers, maps with string keys) cannot fail; a
/// type whose `Serialize` can fail gets `{}` rather than a panic inside the host call.
#[must_use]
pub fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Event {
        id: String,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn a_valid_payload_parses() {
        let event: Event = parse(br#"{"id":"e1","count":2}"#, "the event").unwrap();
        assert_eq!((event.id.as_str(), event.count), ("e1", 2));
    }

    #[test]
    fn not_json_and_wrong_types_are_invalid_input_naming_the_problem() {
        match parse::<Event>(b"not json", "the event") {
            Err(PluginError::InvalidInput(why)) => assert!(why.starts_with("the event"), "{why}"),
            other => panic!("{other:?}"),
        }
        match parse::<Event>(br#"{"id":"e1","count":"two"}"#, "the event") {
            Err(PluginError::InvalidInput(why)) => assert!(why.contains("invalid type"), "{why}"),
            other => panic!("{other:?}"),
        }
        match parse::<Event>(br#"{"count":1}"#, "the event") {
            Err(PluginError::InvalidInput(why)) => assert!(why.contains("`id`"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn to_vec_is_compact_json() {
        assert_eq!(to_vec(&serde_json::json!({"a": 1})), br#"{"a":1}"#);
    }
}
