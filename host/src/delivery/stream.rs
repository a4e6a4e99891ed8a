//! Streamed replies: while a run produces its reply piece by piece, a plugin with the
//! `streaming` feature shows it growing in the chat (`stream-begin`, then `stream-update` at most
//! once per the manifest's `stream_interval_ms`), and the outbox finishes it with `stream-end`
//! when the run's reply row is delivered. A plugin without the feature gets one `deliver`.
//!
//! Owns the state of each streaming run: in memory, the text so far and when it last updated;
//! durably (the host's kv scope `switchboard:stream`, per installation, keyed by the reply's
//! outbox key), the plugin's handle, so whichever replica delivers the run's reply row — this
//! one, another, or this one after a restart — ends the same stream with `stream-end` instead of
//! posting the reply a second time. Streams are kept per run: a session's next run may stream
//! while the previous run's reply still waits in the outbox. Must not decide what is said: the
//! outbox row stays the durable record of the reply; a crash mid-stream loses only the partial
//! updates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{Delivery, session_target};
use crate::domain::{KvQuota, KvScope};
use crate::runtime::{Plugin, types};
use crate::store::{IngestStore, Installation, InstallationStore};

/// Runs whose stream could not start are not retried; streams idle this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl RunStream {
    /// A stream whose plugin handle is known, showing `text`, and nothing in flight
    /// (the state an unfinished `stream-end` is put back in for the next attempt).
    pub(super) fn started(handle: String, text: String) -> RunStream {
        RunStream {
            handle: Some(handle),
            sent_len: text.len(),
            text,
            touched: Some(Instant::now()),
            ..RunStream::default()
        }
    }

    /// The text streamed so far.
    pub(super) fn text(&self) -> &str {
        &self.text
    }
}

/// The streams of a host, by run id.
pub(super) type Streams = Arc<Mutex<HashMap<String, RunStream>>>;

/// The host's kv scope holding each streaming run's plugin handle (per installation).
const HANDLE_SCOPE: &str = "switchboard:stream";
/// A stored handle outlives any reply row that could still end it.
const HANDLE_TTL_MS: i64 = 24 * 60 * 60 * 1000;

fn handle_scope(installation: &Installation) -> KvScope {
    KvScope::new(HANDLE_SCOPE, installation.id.clone())
}

/// What is stored while `stream-begin` is in flight: a replica delivering the reply then waits
/// for the handle instead of posting the reply beside a stream that is just starting.
const BEGINNING: &str = "";

/// What a replica delivering a reply whole stores when the run has no stream: a streamer that
/// has not started the run's stream yet then never starts it.
const DELIVERED_WHOLE: &str = "\u{0}delivered-whole";

/// The host's own kv scope is not a plugin's: generous limits, only values are bounded.
const HANDLE_QUOTA: KvQuota = KvQuota {
    max_keys: 1_000_000,
    max_bytes: 1 << 30,
    max_value_bytes: 64 * 1024,
};

/// Stores run `run_id`'s stream handle so any replica can end the stream. A failure is
/// logged: the reply is then posted whole if another replica delivers it.
pub(super) async fn remember_handle(
    plugin: &Plugin,
    installation: &Installation,
    run_id: &str,
    handle: &str,
) {
    let Some(kv) = plugin.services().kv.as_ref() else {
        return;
    };
    let now = plugin.services().clock.now_ms();
    if let Err(e) = kv
        .set(
            &handle_scope(installation),
            &crate::store::reply_key(run_id),
            handle.as_bytes(),
            Some(now.saturating_add(HANDLE_TTL_MS)),
            now,
            HANDLE_QUOTA,
        )
        .await
    {
        tracing::warn!(run = run_id, "the stream handle could not be stored: {e}");
    }
}

/// How long a `stream-begin` may be in flight: the plugin's outbound budget and a margin. The
/// [`BEGINNING`] marker lasts that long, so a replica killed mid-call leaves nothing that makes
/// others wait longer.
fn begin_window(plugin: &Plugin) -> Duration {
    plugin.manifest().budgets.outbound + Duration::from_secs(2)
}

/// The stored handle of run `run_id`'s stream, if one was begun (by any replica). While its
/// `stream-begin` is still in flight elsewhere, waits for it until `deadline`. When there is
/// no stream, marks the reply [`DELIVERED_WHOLE`] in the same locked write that found none, so
/// a `stream-begin` that has not claimed its start yet (another replica's streamer, late behind
/// its pacing) never posts the reply a second time.
pub(super) async fn recall_handle(
    plugin: &Plugin,
    installation: &Installation,
    run_id: &str,
    deadline: tokio::time::Instant,
) -> Option<String> {
    let kv = plugin.services().kv.as_ref()?;
    let key = crate::store::reply_key(run_id);
    let whole_ttl_ms = i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
    loop {
        let now = plugin.services().clock.now_ms();
        let keep_any = |_: &[u8]| true;
        let stored = match kv
            .set_unless(
                &handle_scope(installation),
                &key,
                DELIVERED_WHOLE.as_bytes(),
                Some(now.saturating_add(whole_ttl_ms)),
                now,
                HANDLE_QUOTA,
                &keep_any,
            )
            .await
        {
            Ok(kept) => kept.and_then(|bytes| String::from_utf8(bytes).ok()),
            Err(e) => {
                tracing::warn!(run = run_id, "the stream handle could not be read: {e}");
                None
            }
        };
        match stored {
            Some(whole) if whole == DELIVERED_WHOLE => return None,
            Some(handle) if handle != BEGINNING => return Some(handle),
            Some(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            _ => return None,
        }
    }
}

/// Claims the start of run `run_id`'s stream: stores [`BEGINNING`] unless a replica already
/// delivered the reply whole ([`DELIVERED_WHOLE`]). Returns whether the stream may begin; a kv
/// failure allows it (the reply is then posted whole if another replica delivers it).
pub(super) async fn claim_begin(
    plugin: &Plugin,
    installation: &Installation,
    run_id: &str,
) -> bool {
    let Some(kv) = plugin.services().kv.as_ref() else {
        return true;
    };
    let now = plugin.services().clock.now_ms();
    let ttl_ms = i64::try_from(begin_window(plugin).as_millis()).unwrap_or(i64::MAX);
    let keep_whole = |value: &[u8]| value == DELIVERED_WHOLE.as_bytes();
    match kv
        .set_unless(
            &handle_scope(installation),
            &crate::store::reply_key(run_id),
            BEGINNING.as_bytes(),
            Some(now.saturating_add(ttl_ms)),
            now,
            HANDLE_QUOTA,
            &keep_whole,
        )
        .await
    {
        Ok(kept) => kept.is_none(),
        Err(e) => {
            tracing::warn!(run = run_id, "the stream start could not be recorded: {e}");
            true
        }
    }
}

/// Forgets run `run_id`'s stored handle once its stream is ended.
pub(super) async fn forget_handle(plugin: &Plugin, installation: &Installation, run_id: &str) {
    let Some(kv) = plugin.services().kv.as_ref() else {
        return;
    };
    let key = crate::store::reply_key(run_id);
    if let Err(e) = kv.delete(&handle_scope(installation), &key).await {
        tracing::debug!(run = run_id, "the stream handle could not be deleted: {e}");
    }
}

#[derive(Default)]
pub(super) struct RunStream {
    /// The plugin's handle once `stream-begin` answered; `None` while it is being called or if
    /// it failed (then the reply is delivered whole).
    pub(super) handle: Option<String>,
    failed: bool,
    text: String,
    /// Text length last sent to the plugin.
    sent_len: usize,
    last_update: Option<Instant>,
    /// A call (begin or update) is in flight; new parts only accumulate meanwhile.
    pub(super) busy: bool,
    touched: Option<Instant>,
}

/// Streams replies through the channel plugins. Cheap to clone.
#[derive(Clone)]
pub struct Streamer {
    delivery: Delivery,
    installations: InstallationStore,
    sessions: IngestStore,
    /// Run id → its stream (shared with `delivery`, which ends them).
    streams: Streams,
}

impl Streamer {
    /// A streamer delivering through `delivery`, reading sessions and installations from the
    /// stores.
    pub fn new(
        delivery: Delivery,
        installations: InstallationStore,
        sessions: IngestStore,
    ) -> Streamer {
        Streamer {
            streams: delivery.streams.clone(),
            delivery,
            installations,
            sessions,
        }
    }

    /// A piece of run `run_id`'s reply: appended to the run's text, and shown if the plugin
    /// streams and its interval has passed (never blocks the caller).
    pub fn part(&self, session_id: &str, run_id: &str, delta: &str) {
        let now = Instant::now();
        let start = {
            let mut streams = self.streams.lock().expect("streams");
            streams.retain(|_, s| s.touched.is_some_and(|t| now - t < FORGET_AFTER));
            // Per run: the session's previous run keeps its stream until its reply row (or its
            // failure or interruption) ends it.
            let stream = streams.entry(run_id.to_string()).or_default();
            stream.text.push_str(delta);
            stream.touched = Some(now);
            if stream.busy || stream.failed {
                None
            } else {
                stream.busy = true;
                Some(stream.handle.is_none())
            }
        };
        let Some(start) = start else {
            return;
        };
        let this = self.clone();
        let (session_id, run_id) = (session_id.to_string(), run_id.to_string());
        let span = tracing::info_span!("stream", session = %session_id, run = %run_id);
        tokio::spawn(
            async move {
                if start {
                    this.begin(&session_id, &run_id).await;
                } else {
                    this.update(&session_id, &run_id).await;
                }
            }
            .instrument(span),
        );
    }

    /// Run `run_id` of `session_id` stopped without a reply (interrupted, or handed back at
    /// shutdown): its stream, if this host has
    /// one, is ended with the text so far and the host's `stream_interrupted` words, and the
    /// session's typing indicator is cleared (never blocks the caller).
    pub fn stopped(&self, session_id: &str, run_id: &str) {
        let this = self.clone();
        let (session_id, run_id) = (session_id.to_string(), run_id.to_string());
        let span = tracing::info_span!("stream_stop", session = %session_id, run = %run_id);
        tokio::spawn(
            async move {
                if let Some((installation, target, _)) = this.context(&session_id).await {
                    this.delivery
                        .end_interrupted(&installation, &target, &run_id)
                        .await;
                }
                if let Some((installation, target)) = this.session(&session_id).await {
                    this.delivery.typing_off(&installation, &target).await;
                }
            }
            .instrument(span),
        );
    }

    /// Run `run_id` of `session_id` was recovered as stale (its worker vanished): its stream,
    /// begun by whichever replica, is ended with the text so far and the host's
    /// `stream_interrupted` words, and the session's typing indicator is cleared (never blocks
    /// the caller). The retry is a new run with a stream of its own: without this, the vanished
    /// run's message would be left "generating" for good.
    pub fn recovered(&self, session_id: &str, run_id: &str) {
        self.stopped(session_id, run_id);
    }

    /// The session's installation and reply target.
    async fn session(&self, session_id: &str) -> Option<(Installation, types::SessionTarget)> {
        let session = self.sessions.get_session(session_id).await.ok()??;
        let installation = self
            .installations
            .get(&session.installation_id)
            .await
            .ok()??;
        Some((installation, session_target(&session)))
    }

    /// The installation, target and update interval of the session's stream; `None` when its
    /// replies are not streamed (the plugin does not declare `streaming`, or the installation's
    /// `reply_mode` is `final`).
    async fn context(
        &self,
        session_id: &str,
    ) -> Option<(Installation, types::SessionTarget, Duration)> {
        let (installation, target) = self.session(session_id).await?;
        if !streams_replies(&installation) {
            return None;
        }
        let plugin = self.delivery.plugin_of(&installation)?;
        let features = plugin.manifest().features;
        if !features.streaming {
            return None;
        }
        Some((installation, target, features.stream_interval))
    }

    async fn begin(&self, session_id: &str, run_id: &str) {
        let Some((installation, target, _)) = self.context(session_id).await else {
            self.finish_call(run_id, None, true);
            return;
        };
        let plugin = self.delivery.plugin_of(&installation);
        let cx = Arc::new(installation.context());
        // The reply's own outbox key: a redelivery of the reply after a crash is then the
        // same message to the channel.
        let key = crate::store::reply_key(run_id);
        if let Some(plugin) = &plugin {
            // Starting a stream sends a message: it takes a token of the plugin's pacing
            // buckets like any send (updates are throttled by `stream_interval_ms` instead).
            // Paced first, claimed after: the claim's short life covers the call only.
            self.delivery
                .pace(plugin, &installation, &target.chat_id)
                .await;
            if !claim_begin(plugin, &installation, run_id).await {
                tracing::info!("the reply was delivered whole meanwhile; no stream is started");
                self.finish_call(run_id, None, true);
                return;
            }
        }
        let handle = match &plugin {
            Some(plugin) => match plugin.stream_begin(&cx, &target, &key).await {
                Ok(Ok(handle)) => {
                    remember_handle(plugin, &installation, run_id, &handle).await;
                    Some(handle)
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        code = e.code,
                        "the channel refused to start a streamed reply; it is delivered whole: {}",
                        e.message
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!("stream-begin failed; the reply is delivered whole: {e}");
                    None
                }
            },
            None => None,
        };
        let failed = handle.is_none();
        if failed && let Some(plugin) = &plugin {
            // No stream: whoever delivers the reply posts it whole, without waiting.
            forget_handle(plugin, &installation, run_id).await;
        }
        self.finish_call(run_id, handle, failed);
        if !failed {
            self.update(session_id, run_id).await;
        }
    }

    /// Sends the newest text if the interval allows, waiting out the rest of the interval
    /// once so the last part before a pause is shown too.
    async fn update(&self, session_id: &str, run_id: &str) {
        let Some((installation, target, interval)) = self.context(session_id).await else {
            self.finish_call(run_id, None, true);
            return;
        };
        let Some(plugin) = self.delivery.plugin_of(&installation) else {
            return;
        };
        let cx = Arc::new(installation.context());
        loop {
            let (handle, text, wait) = {
                let mut streams = self.streams.lock().expect("streams");
                let Some(stream) = streams.get_mut(run_id) else {
                    return;
                };
                let Some(handle) = stream.handle.clone() else {
                    stream.busy = false;
                    return;
                };
                if stream.sent_len == stream.text.len() {
                    stream.busy = false;
                    return;
                }
                let wait = stream
                    .last_update
                    .map(|t| interval.saturating_sub(t.elapsed()))
                    .unwrap_or_default();
                (handle, stream.text.clone(), wait)
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                continue;
            }
            let sent_len = text.len();
            match plugin.stream_update(&cx, &target, &handle, &text).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(
                        code = e.code,
                        "a streamed update was refused: {}",
                        e.message
                    )
                }
                Err(e) => tracing::warn!("stream-update failed: {e}"),
            }
            let mut streams = self.streams.lock().expect("streams");
            let Some(stream) = streams.get_mut(run_id) else {
                return;
            };
            stream.sent_len = sent_len;
            stream.last_update = Some(Instant::now());
        }
    }

    fn finish_call(&self, run_id: &str, handle: Option<String>, failed: bool) {
        let mut streams = self.streams.lock().expect("streams");
        if let Some(stream) = streams.get_mut(run_id) {
            stream.handle = handle;
            stream.failed = failed;
            stream.busy = !failed;
        }
    }
}

/// Whether `installation` wants replies streamed: its `reply_mode` config (a host key) is
/// `stream` or unset; `final` sends each reply whole when its run ends.
pub fn streams_replies(installation: &Installation) -> bool {
    installation
        .config
        .get(crate::domain::schema::REPLY_MODE)
        .is_none_or(|mode| mode != "final")
}
