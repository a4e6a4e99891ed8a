//! The long-connection connector (SPEC §3): one installation's WebSocket to the channel, driven
//! by the plugin's `transport` exports.
//!
//! Per connection: endpoint discovery through the plugin's connect plan (host `http`; a fresh
//! single-use URL every time) → dial (tokio-tungstenite, handshake deadline; a refused upgrade is
//! classified by the plugin) → one writer task that owns the socket's sending half (every write
//! has a deadline) → an application ping right away and then at the server's interval (pongs may
//! change it) → the read loop: any inbound message is proof of life (nothing for
//! 3 ping intervals drops the socket and re-dials, counted with reason `idle`), frames go through [`FrameIntake`] (plugin
//! classification + host reassembly), every complete event is routed and decoded in arrival
//! order ([`Ingest::prepare`]) and then stored ([`Ingest::finish`]) — events of different chats
//! concurrently (up to `max_events_in_flight`, then the connection stops reading), events of one
//! chat strictly in arrival order, so a chat's messages are stored in the order the channel sent
//! them. The ACK (`build-ack`, code 200) is queued only after the outcome is durable — also for
//! payloads the plugin could not decode or ignored, so they are not redelivered forever. An
//! infrastructure failure ([`IngestError`]) is answered with a NACK (500) and the connection is
//! closed (events still being stored are finished and answered first), so the channel
//! redelivers on a fresh one.
//!
//! [`Connector::run`] reconnects with jittered backoff (2 s → 60 s, reset after a connection that
//! lived ≥ 60 s, [`backoff`]) until its stop token fires (shutdown or a lost lease); an event
//! being processed when it fires is finished and ACKed first.
//!
//! Owns sockets, timers and the connection's reassembly buffers. Must not decide ownership (that
//! is the supervisor's lease), hold SQL, or parse frames itself (the plugin does).

pub mod backoff;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::backoff::{Backoff, BackoffPolicy};
use crate::capabilities::policy::Egress;
use crate::domain::InstallationContext;
use crate::ingest::pipeline::{FrameIntake, FrameOutcome};
use crate::ingest::reassembly::Limits;
use crate::ingest::service::{Ingest, IngestError, PayloadOutcome, Prepared, Verified};
use crate::runtime::transport::{AckStatus, ConnectError, ConnectPlan};
use crate::runtime::types::ActionAnswer;
use crate::runtime::{CallError, Plugin};
use crate::store::Installation;

/// Tunables of a connector.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    /// Reconnect backoff.
    pub backoff: BackoffPolicy,
    /// Ping interval when the server does not say (120 s, a common SDK default).
    pub default_ping_interval: Duration,
    /// Drop the socket when nothing arrived for this long; `None` = 3 ping intervals (no pong
    /// or frame for three pings in a row: the connection is dead even if TCP says otherwise).
    pub read_timeout: Option<Duration>,
    /// Deadline of every socket write.
    pub write_timeout: Duration,
    /// Deadline of the TCP + TLS + WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Fragment reassembly limits (per connection).
    pub reassembly: Limits,
    /// Events of one connection stored at once (different chats; one chat's events are always
    /// stored in arrival order). When reached, the connection stops reading until one finishes.
    pub max_events_in_flight: usize,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            backoff: BackoffPolicy::default(),
            default_ping_interval: Duration::from_secs(120),
            read_timeout: None,
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(15),
            reassembly: Limits::default(),
            max_events_in_flight: 16,
        }
    }
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Discovery or the upgrade failed in a way that may pass (server busy, 5xx, network).
    #[error("could not connect, will retry: {0}")]
    Retryable(String),
    /// The channel refused for a reason that needs the operator (bad credentials, app banned,
    /// connection limit): retried only at the longest backoff.
    #[error(
        "the channel refused the connection; fix the installation's credentials or app settings: {0}"
    )]
    Terminal(String),
    /// A plugin call failed (trap, timeout, limit).
    #[error("plugin call failed: {0}")]
    Plugin(#[from] CallError),
    /// The WebSocket handshake did not finish in time.
    #[error("the WebSocket handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The server closed the connection abnormally or the stream ended.
    #[error("the server closed the connection: {0}")]
    Closed(String),
    /// Reading from the socket failed.
    #[error("reading from the socket failed: {0}")]
    Read(String),
    /// Nothing arrived within the read deadline.
    #[error("nothing received for {0:?}: the connection is presumed dead")]
    Idle(Duration),
    /// Writing to the socket failed or timed out.
    #[error("writing to the socket failed: {0}")]
    Write(String),
    /// An event could not be made durable: a NACK was sent and the connection is closed so the
    /// channel redelivers the event on a fresh one.
    #[error("an event could not be stored (NACK sent; reconnecting for redelivery): {0}")]
    Ingest(#[source] IngestError),
}

impl ConnectionError {
    /// Whether retrying soon is pointless until the operator acts.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ConnectionError::Terminal(_))
    }

    /// The `reason` label of the reconnect that follows this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectionError::Retryable(_) => "retryable",
            ConnectionError::Terminal(_) => "terminal",
            ConnectionError::Plugin(_) => "plugin",
            ConnectionError::HandshakeTimeout(_) => "handshake_timeout",
            ConnectionError::Closed(_) => "closed",
            ConnectionError::Read(_) => "read",
            ConnectionError::Idle(_) => "idle",
            ConnectionError::Write(_) => "write",
            ConnectionError::Ingest(_) => "ingest",
        }
    }
}

/// What the writer task sends.
enum Outgoing {
    /// A frame of the plugin's protocol, as a text message when `text` (an answer to a text
    /// frame) and otherwise as a binary one.
    Frame { bytes: Vec<u8>, text: bool },
    /// A WebSocket protocol ping (for a plan without an application ping frame).
    Ping,
}

/// What one inbound frame asks of the read loop.
enum FrameStep {
    /// Keep reading.
    Continue,
    /// Keep reading at this new ping interval.
    PingInterval(Duration),
    /// The channel asked for a fresh connection (a control frame of kind `reconnect`).
    Reconnect,
}

/// The control-frame kind by which a plugin asks for a fresh connection now.
const RECONNECT: &str = "reconnect";

/// One installation's long connection with reconnects.
pub struct Connector {
    plugin: Arc<Plugin>,
    installation: Installation,
    ingest: Arc<Ingest>,
    settings: ConnectorSettings,
}

impl Connector {
    /// A connector for `installation` through `plugin`, ingesting through `ingest`.
    pub fn new(
        plugin: Arc<Plugin>,
        installation: Installation,
        ingest: Arc<Ingest>,
        settings: ConnectorSettings,
    ) -> Connector {
        Connector {
            plugin,
            installation,
            ingest,
            settings,
        }
    }

    /// Connects and reconnects with backoff until `stop` fires; returns once the last connection
    /// is closed (an event in progress is finished and acknowledged first).
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff);
        let mut attempt: u64 = 0;
        while !stop.is_cancelled() {
            attempt += 1;
            let span = tracing::info_span!(
                "connection",
                installation = %self.installation.id,
                channel = %self.installation.channel,
                attempt,
                connection = tracing::field::Empty,
            );
            let started = Instant::now();
            let result = self.connect_once(&stop).instrument(span.clone()).await;
            let _entered = span.enter();
            if stop.is_cancelled() {
                match result {
                    Ok(()) => tracing::info!("connection closed (stopping)"),
                    Err(e) => tracing::info!("connection ended while stopping: {e}"),
                }
                break;
            }
            backoff.connection_ended(started.elapsed());
            if let Err(e) = &result
                && e.is_terminal()
            {
                backoff.saturate();
            }
            let delay = backoff.next_delay();
            let reason = result
                .as_ref()
                .err()
                .map_or("closed_normally", ConnectionError::reason);
            self.ingest
                .metrics()
                .reconnect(&self.installation.channel, reason);
            match result {
                Ok(()) => tracing::info!(
                    lived_ms = started.elapsed().as_millis() as u64,
                    retry_in_ms = delay.as_millis() as u64,
                    "the server closed the connection normally; reconnecting"
                ),
                Err(e) if e.is_terminal() => {
                    tracing::error!(retry_in_ms = delay.as_millis() as u64, "{e}")
                }
                Err(e) => tracing::warn!(
                    lived_ms = started.elapsed().as_millis() as u64,
                    retry_in_ms = delay.as_millis() as u64,
                    "connection lost: {e}"
                ),
            }
            drop(_entered);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection: discover, dial, serve until it ends. `Ok` = closed normally (by the
    /// server with 1000/1001, or by `stop`).
    pub async fn connect_once(&self, stop: &CancellationToken) -> Result<(), ConnectionError> {
        let cx = Arc::new(self.installation.context());
        // Discovery and the handshake are abandoned at once when `stop` fires.
        let opened = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            opened = self.open(&cx) => opened?,
        };
        let (mut plan, mut socket) = opened;
        tracing::info!("connected");
        // A reconnect request opens the next connection before the old one closes.
        while let Some((next_plan, next_socket)) =
            self.serve(cx.clone(), plan, socket, stop).await?
        {
            (plan, socket) = (next_plan, next_socket);
            tracing::Span::current().record("connection", plan.connection_id.as_str());
            tracing::info!("reconnected at the channel's request");
            self.ingest
                .metrics()
                .reconnect(&self.installation.channel, "requested");
        }
        Ok(())
    }

    /// Discovery and dial.
    async fn open(
        &self,
        cx: &Arc<InstallationContext>,
    ) -> Result<(ConnectPlan, Socket), ConnectionError> {
        let plan = match self.plugin.connect_plan(cx).await? {
            Ok(plan) => plan,
            Err(ConnectError::Retryable(reason)) => {
                return Err(ConnectionError::Retryable(format!(
                    "endpoint discovery: {reason}"
                )));
            }
            Err(ConnectError::Terminal(reason)) => {
                return Err(ConnectionError::Terminal(format!(
                    "endpoint discovery: {reason}"
                )));
            }
        };
        tracing::Span::current().record("connection", plan.connection_id.as_str());
        let socket = self.dial(cx, &plan).await?;
        Ok((plan, socket))
    }

    /// The URL to dial: the plan's, checked against the plugin's `capabilities.websocket` and
    /// rewritten by operator overrides. A refusal is terminal: retrying cannot change it.
    fn dial_url(&self, planned: &str) -> Result<url::Url, ConnectionError> {
        let url = url::Url::parse(planned).map_err(|e| {
            ConnectionError::Terminal(format!("the connect plan's URL does not parse: {e}"))
        })?;
        let Some(policy) = &self.plugin.grants().websocket else {
            return Err(ConnectionError::Terminal(format!(
                "plugin {} requests no capabilities.websocket in its manifest, so the host \
                 dials no long connection for it",
                self.plugin.name()
            )));
        };
        match policy.check(&url) {
            Egress::Allow(url) => Ok(url),
            Egress::Deny(why) => Err(ConnectionError::Terminal(format!(
                "refusing to dial the connect plan's URL: {why}"
            ))),
        }
    }

    /// Opens the WebSocket; a refused upgrade is classified by the plugin. The URL carries
    /// credentials and is never logged.
    async fn dial(
        &self,
        cx: &Arc<InstallationContext>,
        plan: &ConnectPlan,
    ) -> Result<Socket, ConnectionError> {
        let url = self.dial_url(&plan.url)?;
        // An override's target is dialled as the operator wrote it (local fakes are loopback);
        // any other URL only at the public addresses its name resolves to.
        let trusted = self
            .plugin
            .grants()
            .websocket
            .as_ref()
            .is_some_and(|policy| policy.is_override_target(&url));
        let dial = async {
            if trusted {
                tokio_tungstenite::connect_async(url.as_str()).await
            } else {
                dial_public(&url).await
            }
        };
        let error = match tokio::time::timeout(self.settings.handshake_timeout, dial).await {
            Err(_) => {
                return Err(ConnectionError::HandshakeTimeout(
                    self.settings.handshake_timeout,
                ));
            }
            Ok(Ok((socket, _response))) => return Ok(socket),
            Ok(Err(error)) => error,
        };
        use tokio_tungstenite::tungstenite::Error as WsError;
        let WsError::Http(response) = error else {
            return Err(ConnectionError::Retryable(format!(
                "WebSocket dial: {}",
                redact(&error.to_string(), &plan.url)
            )));
        };
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Err(
            match self
                .plugin
                .classify_handshake_failure(cx, status, &headers)
                .await?
            {
                ConnectError::Retryable(reason) => ConnectionError::Retryable(format!(
                    "WebSocket upgrade refused (HTTP {status}): {reason}"
                )),
                ConnectError::Terminal(reason) => ConnectionError::Terminal(format!(
                    "WebSocket upgrade refused (HTTP {status}): {reason}"
                )),
            },
        )
    }

    /// Serves one open socket until it ends. When the channel asks for a fresh connection
    /// (control kind `reconnect`), the next one is opened first, the events in flight on this one
    /// are finished and answered, this one is closed, and the next one is returned.
    async fn serve(
        &self,
        cx: Arc<InstallationContext>,
        plan: ConnectPlan,
        socket: Socket,
        stop: &CancellationToken,
    ) -> Result<Option<(ConnectPlan, Socket)>, ConnectionError> {
        let (sink, mut stream) = socket.split();
        let (out, outgoing) = mpsc::channel::<Outgoing>(64);
        let writer_failed = CancellationToken::new();
        let writer = tokio::spawn(
            write_loop(
                sink,
                outgoing,
                self.settings.write_timeout,
                writer_failed.clone(),
            )
            .in_current_span(),
        );
        let mut ping_interval = plan
            .hints
            .ping_interval_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(self.settings.default_ping_interval);
        let (interval_tx, interval_rx) = watch::channel(ping_interval);
        let pinger = tokio::spawn(
            ping_loop(plan.ping_frame.clone(), out.clone(), interval_rx).in_current_span(),
        );
        let _open = self.ingest.metrics().connection_opened();
        let connection_key = format!("{}#{}", self.installation.id, plan.connection_id);
        let mut intake = FrameIntake::with_limits(connection_key, self.settings.reassembly);
        let mut events = InFlight::new(self.settings.max_events_in_flight);

        let result = loop {
            let idle = self.settings.read_timeout.unwrap_or(ping_interval * 3);
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(None),
                _ = writer_failed.cancelled() => {
                    break Err(ConnectionError::Write("the writer stopped".into()));
                }
                Some(finished) = events.next_finished() => match finished {
                    Ok(()) => continue,
                    Err(failed) => break Err(failed),
                },
                next = tokio::time::timeout(idle, stream.next()), if events.has_room() => next,
            };
            let message = match next {
                Err(_) => break Err(ConnectionError::Idle(idle)),
                Ok(None) => break Err(ConnectionError::Closed("the stream ended".into())),
                Ok(Some(Err(e))) => break Err(ConnectionError::Read(e.to_string())),
                Ok(Some(Ok(message))) => message,
            };
            let (bytes, text) = match &message {
                Message::Binary(bytes) => (bytes.as_ref(), false),
                // Text protocols (JSON envelopes) are classified like binary ones, and answered
                // in text.
                Message::Text(text) => (text.as_bytes(), true),
                _ => (&[][..], false),
            };
            match message {
                Message::Binary(_) | Message::Text(_) => {
                    let frame = Inbound { bytes, text };
                    let step = self
                        .on_frame(
                            &cx,
                            &mut intake,
                            frame,
                            &out,
                            &mut ping_interval,
                            &mut events,
                        )
                        .await?;
                    match step {
                        FrameStep::Continue => {}
                        FrameStep::PingInterval(interval) => {
                            let _ = interval_tx.send(interval);
                        }
                        FrameStep::Reconnect => {
                            tracing::info!("the channel asked for a fresh connection; opening it");
                            let next = tokio::select! {
                                _ = stop.cancelled() => break Ok(None),
                                opened = self.open(&cx) => opened,
                            };
                            break next.map(Some);
                        }
                    }
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (f.code, f.reason.to_string()))
                        .unwrap_or((CloseCode::Status, String::new()));
                    break match code {
                        CloseCode::Normal | CloseCode::Away => Ok(None),
                        other => Err(ConnectionError::Closed(format!(
                            "close code {} {reason:?}",
                            u16::from(other)
                        ))),
                    };
                }
                // Protocol pings are answered by the library; pongs need nothing.
                _ => {}
            }
        };
        // Events being stored are finished and answered (ACK or NACK) before the socket closes.
        if tokio::time::timeout(self.settings.write_timeout, events.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                "events still being stored at close were abandoned; the channel redelivers them"
            );
        }
        // Close: no more pings; the writer drains what is queued (the last ACKs or a NACK),
        // sends a close frame and ends.
        pinger.abort();
        drop(out);
        if tokio::time::timeout(self.settings.write_timeout, writer)
            .await
            .is_err()
        {
            tracing::warn!("the writer did not finish closing the socket in time");
        }
        result
    }

    /// Handles one data message (binary or text); says whether the ping interval changed or
    /// the channel asked for a fresh connection.
    async fn on_frame(
        &self,
        cx: &Arc<InstallationContext>,
        intake: &mut FrameIntake,
        frame: Inbound<'_>,
        out: &mpsc::Sender<Outgoing>,
        ping_interval: &mut Duration,
        events: &mut InFlight,
    ) -> Result<FrameStep, ConnectionError> {
        let Inbound { bytes, text } = frame;
        let arrived = Instant::now();
        let outcome = match intake.push(&self.plugin, cx, bytes, arrived).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!("classify-frame failed; frame dropped without ACK: {e}");
                return Ok(FrameStep::Continue);
            }
        };
        match outcome {
            FrameOutcome::Control { kind, reply, hints } => {
                if let Some(reply) = reply {
                    send(out, reply, text).await?;
                }
                let interval = hints
                    .and_then(|h| h.ping_interval_ms)
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .filter(|interval| interval != ping_interval);
                if let Some(interval) = interval {
                    tracing::debug!(
                        ping_interval_ms = interval.as_millis() as u64,
                        "ping interval changed"
                    );
                    *ping_interval = interval;
                }
                tracing::trace!(%kind, "control frame");
                Ok(if kind == RECONNECT {
                    FrameStep::Reconnect
                } else {
                    interval.map_or(FrameStep::Continue, FrameStep::PingInterval)
                })
            }
            FrameOutcome::Ignored(reason) => {
                tracing::debug!("frame ignored: {reason}");
                Ok(FrameStep::Continue)
            }
            FrameOutcome::Partial {
                message_id,
                received,
                total,
            } => {
                tracing::trace!(%message_id, received, total, "fragment buffered");
                Ok(FrameStep::Continue)
            }
            FrameOutcome::Invalid(reason) => {
                tracing::warn!("frame dropped without ACK: {reason}");
                Ok(FrameStep::Continue)
            }
            FrameOutcome::Complete {
                kind,
                payload,
                ack_frame,
                fragments,
                trace_id,
                event,
            } => {
                // Routing and decoding run here, in arrival order; storing runs concurrently
                // for different chats and in order within one chat. The connection was opened
                // with this installation's credentials: its events go to it or nowhere.
                let verified = Verified {
                    installation: &self.installation,
                    cx,
                };
                let prepared = self
                    .ingest
                    .prepare(&self.plugin, &payload, arrived, verified, event)
                    .await;
                let answer = Answer {
                    plugin: self.plugin.clone(),
                    ingest: self.ingest.clone(),
                    cx: cx.clone(),
                    out: out.clone(),
                    channel: self.installation.channel.clone(),
                    ack_frame,
                    text,
                    arrived,
                    kind: kind.to_string(),
                    fragments,
                    trace_id: trace_id.unwrap_or_default(),
                    payload,
                };
                match prepared {
                    Ok(Prepared::Done(outcome)) => answer.answer(Ok(outcome)).await?,
                    Err(e) => answer.answer(Err(e)).await?,
                    Ok(Prepared::Message(message)) => {
                        let chat = message.chat_id().to_string();
                        events.spawn(chat, async move {
                            let outcome = answer.ingest.finish(&answer.plugin, *message).await;
                            answer.answer(outcome).await
                        });
                    }
                }
                Ok(FrameStep::Continue)
            }
        }
    }
}

/// One inbound data message: its bytes, and whether it came as text.
struct Inbound<'a> {
    bytes: &'a [u8],
    text: bool,
}

/// Everything needed to answer one event once its outcome is known (owned, so the answer can be
/// given from the task that stored the event).
struct Answer {
    plugin: Arc<Plugin>,
    ingest: Arc<Ingest>,
    cx: Arc<InstallationContext>,
    out: mpsc::Sender<Outgoing>,
    channel: String,
    ack_frame: Vec<u8>,
    /// The frame came as text: its ACK goes out as text.
    text: bool,
    arrived: Instant,
    kind: String,
    fragments: u32,
    trace_id: String,
    /// The event payload: an action's answer is built from it (`answer-action`).
    payload: Vec<u8>,
}

impl Answer {
    /// ACK for a durable (or deliberately dropped) outcome; NACK and an error that closes the
    /// connection for an infrastructure failure.
    async fn answer(
        &self,
        outcome: Result<PayloadOutcome, IngestError>,
    ) -> Result<(), ConnectionError> {
        let processing_ms = self.arrived.elapsed().as_millis().min(u32::MAX as u128) as u32;
        match outcome {
            Ok(outcome) => {
                // Counted before it is queued, so whoever sees the ACK sees the count.
                self.ingest
                    .metrics()
                    .acknowledged(&self.channel, true, self.arrived.elapsed());
                let response = match outcome.action_answer() {
                    Some(answer) => self.action_response(answer).await,
                    None => None,
                };
                self.send(AckStatus::Ok, processing_ms, response.as_deref())
                    .await?;
                tracing::info!(
                    kind = %self.kind,
                    trace_id = %self.trace_id,
                    fragments = self.fragments,
                    processing_ms,
                    outcome = %outcome.label(),
                    "event acknowledged"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    trace_id = %self.trace_id,
                    processing_ms,
                    "event not stored, sending NACK: {e}"
                );
                self.ingest
                    .metrics()
                    .acknowledged(&self.channel, false, self.arrived.elapsed());
                if let Err(write) = self.send(AckStatus::Failed, processing_ms, None).await {
                    tracing::warn!("the NACK could not be queued: {write}");
                }
                Err(ConnectionError::Ingest(e))
            }
        }
    }

    /// The channel's bytes for the host's answer to a pressed control (`answer-action`); none
    /// when the plugin has no such answer or fails (the ACK then carries its default).
    async fn action_response(&self, answer: &ActionAnswer) -> Option<Vec<u8>> {
        match self
            .plugin
            .answer_action(&self.cx, &self.payload, answer)
            .await
        {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("answer-action failed; the ACK carries the default answer: {e}");
                None
            }
        }
    }

    /// Builds the ACK (or NACK) through the plugin and queues it. A plugin failure is logged
    /// (no ACK: the channel redelivers, dedup absorbs it); a dead writer is an error.
    async fn send(
        &self,
        status: AckStatus,
        processing_ms: u32,
        response: Option<&[u8]>,
    ) -> Result<(), ConnectionError> {
        match self
            .plugin
            .build_ack(&self.cx, &self.ack_frame, status, processing_ms, response)
            .await
        {
            Ok(Ok(bytes)) => send(&self.out, bytes, self.text).await,
            // A channel without negative acknowledgements redelivers what is not ACKed.
            Ok(Err(e)) if status == AckStatus::Failed => {
                tracing::debug!("no NACK for this channel ({e:?}); it redelivers the event");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!("build-ack refused; no ACK sent: {e:?}");
                Ok(())
            }
            Err(e) => {
                tracing::error!("build-ack failed; no ACK sent: {e}");
                Ok(())
            }
        }
    }
}

/// The events of one connection being stored: at most `limit` at once, one chat's events
/// strictly one after another in arrival order (each waits for its predecessor in the chat).
struct InFlight {
    tasks: tokio::task::JoinSet<Result<(), ConnectionError>>,
    limit: usize,
    /// Per chat, the completion signal of its latest event.
    chains: std::collections::HashMap<String, watch::Receiver<bool>>,
}

impl InFlight {
    fn new(limit: usize) -> InFlight {
        InFlight {
            tasks: tokio::task::JoinSet::new(),
            limit: limit.max(1),
            chains: std::collections::HashMap::new(),
        }
    }

    /// Whether another event may start (otherwise the read loop stops reading: backpressure).
    fn has_room(&self) -> bool {
        self.tasks.len() < self.limit
    }

    /// Stores an event of `chat` after the chat's previous event finished.
    fn spawn(
        &mut self,
        chat: String,
        store: impl Future<Output = Result<(), ConnectionError>> + Send + 'static,
    ) {
        let (done, finished) = watch::channel(false);
        let previous = self.chains.insert(chat, finished);
        if self.chains.len() > 4 * self.limit {
            // Forget chats whose last event finished (a dropped sender counts as finished).
            self.chains
                .retain(|_, rx| !*rx.borrow() && rx.has_changed().is_ok());
        }
        self.tasks.spawn(
            async move {
                if let Some(mut previous) = previous {
                    // Err = the predecessor's task ended without signalling: it is over too.
                    let _ = previous.wait_for(|finished| *finished).await;
                }
                let result = store.await;
                let _ = done.send(true);
                result
            }
            .in_current_span(),
        );
    }

    /// The next event to finish: `Ok` once it was answered, `Err` when it could not be stored
    /// (NACK sent). `None` while none is running.
    async fn next_finished(&mut self) -> Option<Result<(), ConnectionError>> {
        Some(match self.tasks.join_next().await? {
            Ok(result) => result,
            Err(panicked) => Err(ConnectionError::Write(format!(
                "an event's task failed: {panicked}"
            ))),
        })
    }

    /// Waits for every event still being stored (their ACKs and NACKs are queued by then).
    async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sink = futures_util::stream::SplitSink<Socket, Message>;

/// Dials `url` under the address rule (as plugin HTTP is): TCP only to the public addresses its
/// host resolves to (a literal IP was checked by the policy), then TLS and the WebSocket
/// handshake over that stream. A name with no public address fails as an I/O error naming it.
async fn dial_public(
    url: &url::Url,
) -> Result<
    (
        Socket,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = match url.host() {
        Some(url::Host::Domain(name)) => crate::capabilities::dns::resolve_public(name, port)
            .await
            .map_err(|e| WsError::Io(std::io::Error::other(e)))?,
        Some(url::Host::Ipv4(ip)) => vec![std::net::SocketAddr::new(ip.into(), port)],
        Some(url::Host::Ipv6(ip)) => vec![std::net::SocketAddr::new(ip.into(), port)],
        None => {
            return Err(WsError::Url(
                tokio_tungstenite::tungstenite::error::UrlError::NoHostName,
            ));
        }
    };
    let mut last = std::io::Error::other("the host name has no address");
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return tokio_tungstenite::client_async_tls(url.as_str(), stream).await,
            Err(error) => last = error,
        }
    }
    Err(WsError::Io(last))
}

/// Queues one frame for the writer (as text when `text`).
async fn send(
    out: &mpsc::Sender<Outgoing>,
    bytes: Vec<u8>,
    text: bool,
) -> Result<(), ConnectionError> {
    out.send(Outgoing::Frame { bytes, text })
        .await
        .map_err(|_| ConnectionError::Write("the writer stopped".into()))
}

/// The one writer of a socket: every write has a deadline; a failure cancels `failed` (the read
/// loop then ends the connection). When every sender is gone it sends a close frame.
async fn write_loop(
    mut sink: Sink,
    mut outgoing: mpsc::Receiver<Outgoing>,
    write_timeout: Duration,
    failed: CancellationToken,
) {
    while let Some(outgoing) = outgoing.recv().await {
        let message = match outgoing {
            Outgoing::Ping => Message::Ping(Default::default()),
            Outgoing::Frame { bytes, text: true } => match String::from_utf8(bytes) {
                Ok(text) => Message::Text(text.into()),
                Err(not_text) => {
                    tracing::warn!("a frame for a text protocol is not UTF-8; sent as binary");
                    Message::Binary(not_text.into_bytes().into())
                }
            },
            Outgoing::Frame { bytes, text: false } => Message::Binary(bytes.into()),
        };
        match tokio::time::timeout(write_timeout, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("socket write failed: {e}");
                failed.cancel();
                return;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = write_timeout.as_millis() as u64,
                    "socket write timed out"
                );
                failed.cancel();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(None))).await;
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}

/// Sends the application ping right away and then every interval (the watch carries changes);
/// a plan with an empty ping frame gets WebSocket protocol pings instead.
async fn ping_loop(
    ping: Vec<u8>,
    out: mpsc::Sender<Outgoing>,
    mut interval: watch::Receiver<Duration>,
) {
    loop {
        let frame = if ping.is_empty() {
            Outgoing::Ping
        } else {
            Outgoing::Frame {
                bytes: ping.clone(),
                text: false,
            }
        };
        if out.send(frame).await.is_err() {
            return;
        }
        let sent = tokio::time::Instant::now();
        loop {
            let every = *interval.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(sent + every) => break,
                changed = interval.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// `text` with the credential-carrying `url` (and its query) replaced.
fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<websocket url>");
    if let Some((_, query)) = url.split_once('?') {
        text = text.replace(query, "<redacted>");
    }
    text
}

#[cfg(test)]
mod address_rule_tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_url_whose_name_is_loopback_only_is_not_dialled() {
        let url = url::Url::parse("ws://localhost:9/ws").unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), dial_public(&url))
            .await
            .expect("resolution is quick")
            .expect_err("localhost is loopback");
        let text = error.to_string();
        assert!(text.contains("localhost resolves only to"), "{text}");
    }
}
