//! Slack channel plugin for switchboard (contract 0.2, built from the plugin guide and SDK alone).
//!
//! - [`webhook`]: Events API, interactivity and slash-command requests — the v0 signature
//!   (HMAC-SHA256 over `v0:{timestamp}:{body}`), the 5-minute replay window, `url_verification`,
//!   form bodies turned into JSON payloads, the routing key (`team_id`).
//! - [`socket`]: Socket Mode — `apps.connections.open`, envelope classification (`hello`,
//!   `disconnect`, `events_api`, `interactive`, `slash_commands`) and the `envelope_id` ACK.
//! - [`decode`]: payloads → neutral records (messages, actions, slash commands, ignored events).
//! - [`mrkdwn`]: markdown → Slack mrkdwn, Block Kit sections and chunking at Slack's limits.
//! - [`api`]: the Web API client (error classification, `Retry-After`), attachments and
//!   `on-install`; [`outbound`]: delivery, notices, typing and streaming; [`enrich`]: names and
//!   thread context.
//! - [`commands`]: `/<name> [args]`.
//!
//! Every module works over the SDK's plain types and the small [`Host`] trait, so the logic is
//! unit tested natively; `component` (wasm only) implements the exports on the host imports.

pub mod api;
pub mod commands;
pub mod decode;
pub mod enrich;
pub mod mrkdwn;
pub mod outbound;
pub mod socket;
pub mod webhook;

#[cfg(target_family = "wasm")]
mod component;

switchboard_plugin_sdk::manifest!("../manifest.toml");

use switchboard_plugin_sdk::http::{Error as HttpError, Request, Response};

/// The Web API root; operators (and tests) redirect the origin with a base-URL override.
pub const API_ROOT: &str = "https://slack.com/api";

/// What the plugin needs from the host: requests, kv, the clock, the installation, logs.
/// `component` implements it on the imports; tests implement it with scripted answers.
pub trait Host {
    /// Sends one request through the host's `http` allow-list.
    fn send(&mut self, request: &Request) -> Result<Response, HttpError>;
    /// A live kv value (a failure is a miss: everything kept in kv is a cache or a hint).
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Writes a kv value with a time-to-live (failures are logged and ignored).
    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&mut self) -> i64;
    /// Milliseconds left of this call.
    fn remaining_ms(&mut self) -> u64;
    /// A config value of the installation (`None` when unset or empty).
    fn config(&mut self, key: &str) -> Option<String>;
    /// A secret of the installation (`None` when unset or empty).
    fn secret(&mut self, key: &str) -> Option<String>;
    /// A warning for the operator's log (never with a secret in it).
    fn warn(&mut self, message: &str);
}

/// kv keys: one place, so the prefixes never collide.
pub mod keys {
    /// A thread the bot is part of (mentioned or replied in): `thread:{channel}:{thread_ts}`.
    pub fn thread(channel: &str, thread_ts: &str) -> String {
        format!("thread:{channel}:{thread_ts}")
    }
    /// A user's display name from `users.info`: `name:{user}`.
    pub fn name(user: &str) -> String {
        format!("name:{user}")
    }
    /// The `ts` a delivery with this idempotency key posted: `sent:{key}`.
    pub fn sent(idempotency_key: &str) -> String {
        format!("sent:{idempotency_key}")
    }
}

/// How long a thread the bot joined counts as "the bot is part of it" (30 days).
pub const THREAD_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// How long a resolved name is cached (1 day).
pub const NAME_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long an idempotency key's `ts` is kept (7 days: longer than the outbox retries a row).
pub const SENT_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A Slack `ts` (`"1355517523.000005"`, seconds with a microsecond fraction) in milliseconds.
/// `ts` values are ids: they are only read here, never rebuilt from the number.
pub fn ts_ms(ts: &str) -> Option<i64> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let secs: i64 = secs.parse().ok()?;
    let millis: i64 = format!("{:0<3}", frac.get(..3).unwrap_or(frac))
        .parse()
        .unwrap_or(0);
    Some(secs * 1000 + millis)
}
