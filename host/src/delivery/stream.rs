//! Streamed replies: while a run produces its reply piece by piece, a plugin with the
//! `streaming` feature shows it growing in the chat (`stream-begin`, then `stream-update` at most
//! once per the manifest's `stream_interval_ms`), and the outbox finishes it with `stream-end`
//! when the run's reply row is delivered. A plugin without the feature gets one `deliver`.
//!
//! Owns the in-memory state of each streaming run (the plugin's handle, the text so far, when it
//! last updated). Must not decide what is said, nor store anything: the outbox row stays the
//! durable record of the reply, so a crash mid-stream loses only the partial updates; the reply
//! is then delivered whole (after `stream-end` on the handle if this host still knows it, else
//! with `deliver`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{Delivery, session_target};
use crate::runtime::types;
use crate::store::{IngestStore, Installation, InstallationStore};

/// Runs whose stream could not start are not retried; streams idle this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl RunStream {
    /// A stream of `run_id` whose plugin handle is known, showing `text`, and nothing in flight
    /// (the state an unfinished `stream-end` is put back in for the next attempt).
    pub(super) fn started(run_id: &str, handle: String, text: String) -> RunStream {
        RunStream {
            run_id: run_id.to_string(),
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

/// The streams of a host, by session id (one run streams per session at a time).
pub(super) type Streams = Arc<Mutex<HashMap<String, RunStream>>>;

#[derive(Default)]
pub(super) struct RunStream {
    pub(super) run_id: String,
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
    /// Session id → its current run's stream (shared with `delivery`, which ends them).
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
        let mut superseded = None;
        let start = {
            let mut streams = self.streams.lock().expect("streams");
            streams.retain(|_, s| s.touched.is_some_and(|t| now - t < FORGET_AFTER));
            let stream = streams.entry(session_id.to_string()).or_default();
            if stream.run_id != run_id {
                let previous = std::mem::replace(
                    stream,
                    RunStream {
                        run_id: run_id.to_string(),
                        ..RunStream::default()
                    },
                );
                // A run that stopped without this host ending its stream (its end went
                // unnoticed): end it now, so no card or message is left "streaming".
                if previous.handle.is_some() {
                    superseded = Some(previous);
                }
            }
            stream.text.push_str(delta);
            stream.touched = Some(now);
            if stream.busy || stream.failed {
                None
            } else {
                stream.busy = true;
                Some(stream.handle.is_none())
            }
        };
        if let Some(previous) = superseded {
            self.end_superseded(session_id, previous);
        }
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
    /// shutdown): its stream, if this host has one, is ended with the text so far and the
    /// host's `stream_interrupted` words (never blocks the caller).
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
            }
            .instrument(span),
        );
    }

    /// Ends the stream of a run that a newer run of the session replaced.
    fn end_superseded(&self, session_id: &str, previous: RunStream) {
        let this = self.clone();
        let session_id = session_id.to_string();
        let span =
            tracing::info_span!("stream_stop", session = %session_id, run = %previous.run_id);
        tokio::spawn(
            async move {
                let Some((installation, target, _)) = this.context(&session_id).await else {
                    return;
                };
                let (Some(handle), run_id) = (previous.handle, previous.run_id) else {
                    return;
                };
                let ended = this
                    .delivery
                    .end_stream_now(
                        &installation,
                        &target,
                        &run_id,
                        handle,
                        previous.text,
                        super::StreamStop::Interrupted,
                    )
                    .await;
                if let Err(e) = ended {
                    tracing::warn!("a replaced run's stream could not be ended: {e}");
                }
            }
            .instrument(span),
        );
    }

    /// The installation, target and update interval of the session's stream; `None` when its
    /// replies are not streamed (the plugin does not declare `streaming`, or the installation's
    /// `reply_mode` is `final`).
    async fn context(
        &self,
        session_id: &str,
    ) -> Option<(Installation, types::SessionTarget, Duration)> {
        let session = self.sessions.get_session(session_id).await.ok()??;
        let installation = self
            .installations
            .get(&session.installation_id)
            .await
            .ok()??;
        if !streams_replies(&installation) {
            return None;
        }
        let plugin = self.delivery.plugin_of(&installation)?;
        let features = plugin.manifest().features;
        if !features.streaming {
            return None;
        }
        Some((
            installation,
            session_target(&session),
            features.stream_interval,
        ))
    }

    async fn begin(&self, session_id: &str, run_id: &str) {
        let Some((installation, target, _)) = self.context(session_id).await else {
            self.finish_call(session_id, run_id, None, true);
            return;
        };
        let plugin = self.delivery.plugin_of(&installation);
        let cx = Arc::new(installation.context());
        // The reply's own outbox key: a redelivery of the reply after a crash is then the
        // same message to the channel.
        let key = crate::store::reply_key(run_id);
        let handle = match plugin {
            Some(plugin) => match plugin.stream_begin(&cx, &target, &key).await {
                Ok(Ok(handle)) => Some(handle),
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
        self.finish_call(session_id, run_id, handle, failed);
        if !failed {
            self.update(session_id, run_id).await;
        }
    }

    /// Sends the newest text if the interval allows, waiting out the rest of the interval
    /// once so the last part before a pause is shown too.
    async fn update(&self, session_id: &str, run_id: &str) {
        let Some((installation, target, interval)) = self.context(session_id).await else {
            self.finish_call(session_id, run_id, None, true);
            return;
        };
        let Some(plugin) = self.delivery.plugin_of(&installation) else {
            return;
        };
        let cx = Arc::new(installation.context());
        loop {
            let (handle, text, wait) = {
                let mut streams = self.streams.lock().expect("streams");
                let Some(stream) = streams.get_mut(session_id).filter(|s| s.run_id == run_id)
                else {
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
            let Some(stream) = streams.get_mut(session_id).filter(|s| s.run_id == run_id) else {
                return;
            };
            stream.sent_len = sent_len;
            stream.last_update = Some(Instant::now());
        }
    }

    fn finish_call(&self, session_id: &str, run_id: &str, handle: Option<String>, failed: bool) {
        let mut streams = self.streams.lock().expect("streams");
        if let Some(stream) = streams.get_mut(session_id).filter(|s| s.run_id == run_id) {
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
