//! Lark / Feishu channel plugin for switchboard.
//!
//! The logic modules are plain Rust with no host calls, so they compile and test natively and
//! the host can call them directly (e.g. to benchmark the decoder outside wasm):
//!
//! - [`frame`]: the `pbbp2.Frame` protobuf codec of the long connection.
//! - [`transport`]: frame classification, ACK and ping frames, endpoint discovery, handshake
//!   failure classification.
//! - [`webhook`]: webhook signature, decryption, token and URL-verification handling;
//!   [`crypto`]: its SHA-256 and AES (the host's `crypto` import in wasm, RustCrypto natively).
//! - [`decode`]: `im.message.receive_v1` → inbound message; [`card_action`]:
//!   `card.action.trigger` → inbound action and its toast answer.
//! - [`content`]: readable text and attachments for every message type; [`mentions`]: mention
//!   resolution.
//! - [`commands`]: `/<name> [args]`.
//! - [`rest`]: REST answers (tenant token, bot info, messages, resources, errors) and the
//!   outbound requests (send, threaded reply, reactions, bot info, resource downloads).
//! - [`enrich`]: the enricher (quoted parents, forwarded transcripts, recent group context,
//!   speaker names) over a small host trait, within the host's budget; [`enrich_render`]: its
//!   blocks, speaker labels and failure classification.
//! - [`outbound`]: delivery (token cache, thread fallback, error classification), notices
//!   (rendered from the host's text), the typing reaction, attachment downloads and the bot
//!   info of `on-install`, over a small host trait.
//! - [`cardkit`]: streamed replies in CardKit cards (create, send, update, close, follow-up
//!   cards past the size limit, pacing, the plain fallback), over the same host trait.
//! - [`render`]: message content (text, markdown card, notice/error/binding cards, button
//!   labels, size limits);
//!   [`markdown`]: the text-or-card detector.
//!
//! The hot paths (webhook verification, decoding, frame classification and ACKs) read each
//! payload once, into typed structs that borrow from the input (`json` holds the lenient JSON
//! readers they share); `serde_json::Value` is only built for the open card and system-message
//! schemas.
//!
//! In a wasm build, `component` implements the `switchboard:channel` exports on top of them.

pub mod card_action;
pub mod cardkit;
pub mod commands;
pub mod content;
pub mod crypto;
pub mod decode;
pub mod enrich;
pub mod enrich_render;
pub mod frame;
pub mod markdown;
pub mod mentions;
pub mod outbound;
pub mod render;
pub mod rest;
pub mod transport;
pub mod webhook;

mod json;

#[cfg(target_family = "wasm")]
mod component;

#[cfg(any(test, all(target_family = "wasm", not(target_feature = "atomics"))))]
mod alloc;

/// The guest allocator (see `alloc`): size-class free lists over wasi-libc's dlmalloc.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses = alloc::SizeClasses::new();

switchboard_plugin_sdk::manifest!("../manifest.toml");
