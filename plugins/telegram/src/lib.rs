//! Telegram channel plugin for switchboard (Bot API, contract 0.2).
//!
//! Updates arrive by webhook on the installation's own URL (`X-Telegram-Bot-Api-Secret-Token`
//! checked against `webhook_secret`) or by long polling (`getUpdates`; the host stores the
//! offset only once the updates are durable). Installation: config `bot_username`, `bot_id`
//! (`on-install` fills both from `getMe`) and the host's `connection` (`webhook` | `poll`);
//! secrets `bot_token` and `webhook_secret`.
//!
//! The logic modules are plain Rust over the SDK's types and test natively:
//!
//! - [`decode`]: `Update` → message, action or ignored (addressing rules, topics, media bodies);
//! - [`commands`]: `/name args`;
//! - [`transport`]: webhook verification, `getUpdates` requests and answers;
//! - [`render`]: Markdown → Telegram HTML in messages of at most 4,096 UTF-16 units;
//! - [`outbound`]: sends, streaming edits, typing and the lifecycle over a small host trait;
//! - [`api`]: Bot API requests, answers and error classification.
//!
//! In a wasm build `component` implements the `switchboard:channel` exports on top of them.

pub mod api;
pub mod commands;
pub mod decode;
pub mod outbound;
pub mod render;
pub mod transport;

#[cfg(target_family = "wasm")]
mod component;

switchboard_plugin_sdk::manifest!("../manifest.toml");
