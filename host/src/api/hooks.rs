//! `/hooks/{channel}/{installation}[/{path}]` (GET or POST) and `POST /hooks/{channel}`:
//! webhook delivery. The method, the path after the prefix and the query go to the plugin as they
//! came (GET serves verification handshakes).
//!
//! The perimeter rule: a request is verified with the secrets of exactly one installation, and
//! its events are ingested into that installation or not at all.
//!
//! - On an installation's URL that installation verifies the request.
//! - On the channel's shared URL the host first reads the routing key from the raw body (the
//!   plugin's `routing-key`), then verifies with the secrets of the installation it names. A
//!   body whose key cannot be read before verification (an encrypted body, a URL-verification
//!   challenge) is refused with 400 and the URL to use instead.
//! - Any event of a verified request that names another installation rejects the whole request
//!   (401, an audit row, nothing stored).
//!
//! Answers: bad signature, token or decryption, or a signed timestamp outside the replay window
//! → 401; authenticated but malformed → 400; infrastructure failure → 500 so the channel
//! redelivers; oversized body → 413 (the body limit layer). The channel's expected answer is sent
//! only once every event is durable.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument;

use super::{ApiError, AppState};
use crate::dispatch::{DispatchError, DropReason, Outcome};
use crate::domain::InstallationContext;
use crate::ingest::pipeline::{self, WebhookOutcome};
use crate::ingest::service::{IngestError, PayloadOutcome, Prepared, Verified};
use crate::runtime::{Plugin, transport};
use crate::store::Installation;

/// Response header listing the outcome of each event of a delivery, comma-separated.
pub const OUTCOME_HEADER: &str = "x-switchboard-outcome";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hooks/{channel}", post(channel_hook))
        .route(
            "/hooks/{channel}/{installation}",
            get(installation_hook).post(installation_hook),
        )
        .route(
            "/hooks/{channel}/{installation}/{*rest}",
            get(installation_subpath_hook).post(installation_subpath_hook),
        )
}

/// What the plugin sees of the request line.
struct RequestLine {
    method: Method,
    /// After the hook's prefix: empty or starting with `/`.
    path: String,
    query: String,
}

async fn channel_hook(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let line = RequestLine {
        method: Method::POST,
        path: String::new(),
        query: uri.query().unwrap_or_default().to_string(),
    };
    deliver(&state, &channel, None, line, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn installation_hook(
    State(state): State<AppState>,
    Path((channel, installation)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let line = RequestLine {
        method,
        path: String::new(),
        query: uri.query().unwrap_or_default().to_string(),
    };
    deliver(&state, &channel, Some(&installation), line, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn installation_subpath_hook(
    State(state): State<AppState>,
    Path((channel, installation, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let line = RequestLine {
        method,
        path: format!("/{rest}"),
        query: uri.query().unwrap_or_default().to_string(),
    };
    deliver(&state, &channel, Some(&installation), line, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn deliver(
    state: &AppState,
    channel: &str,
    installation_id: Option<&str>,
    line: RequestLine,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let plugin = state
        .runtime
        .plugin_for_channel(channel)
        .filter(|p| p.manifest().transports.webhook)
        .ok_or_else(|| {
            ApiError::not_found(format!("no plugin serves webhooks of channel `{channel}`"))
        })?;
    let installation = match installation_id {
        Some(id) => state
            .installations
            .get(id)
            .await
            .map_err(ApiError::internal)?
            .filter(|i| i.channel == channel)
            .ok_or_else(|| {
                // `channel` names a loaded plugin here: a bounded label.
                state
                    .ingest
                    .metrics()
                    .webhook_rejected(channel, "unknown_installation");
                ApiError::not_found(format!("no {channel} installation `{id}`"))
            })?,
        None => route_shared_url(state, &plugin, channel, &body).await?,
    };
    let span = tracing::info_span!(
        "webhook",
        plugin = plugin.name(),
        installation = %installation.id
    );
    verify_and_ingest(state, &plugin, &installation, line, headers, body, arrived)
        .instrument(span)
        .await
}

/// Verifies the request with `installation`'s secrets and ingests its events into it.
async fn verify_and_ingest(
    state: &AppState,
    plugin: &Plugin,
    installation: &Installation,
    line: RequestLine,
    headers: HeaderMap,
    body: Bytes,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let channel = installation.channel.as_str();
    let cx = Arc::new(installation.context());
    let verified = Verified {
        installation,
        cx: &cx,
    };
    let request = transport::WebhookRequest {
        method: line.method.as_str().to_string(),
        path: line.path,
        query: line.query,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let refused = |reason: &'static str, status: StatusCode, message: String| {
        state
            .ingest
            .metrics()
            .ingested(channel, &format!("rejected:{reason}"));
        state.ingest.metrics().webhook_rejected(channel, reason);
        tracing::warn!("webhook refused: {message}");
        Err(ApiError::new(status, message))
    };
    let (payloads, readings, signed_at_ms, response) =
        match pipeline::verify_webhook(plugin, &cx, &request)
            .await
            .map_err(ApiError::internal)?
        {
            WebhookOutcome::Challenge(answer) => return Ok(plugin_response(answer)),
            WebhookOutcome::Rejected(rejected) => {
                let status = if rejected.kind == "malformed" {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNAUTHORIZED
                };
                return refused(
                    rejected.kind,
                    status,
                    format!("{}: {}", rejected.kind, rejected.reason),
                );
            }
            WebhookOutcome::Events {
                payloads,
                readings,
                signed_at_ms,
                response,
            } => (payloads, readings, signed_at_ms, response),
        };
    if let Some(signed_at_ms) = signed_at_ms {
        let skew_ms = state.clock.now_ms().saturating_sub(signed_at_ms);
        let window = state.ingest.webhook_max_skew();
        let window_s = window.as_secs();
        if u128::from(skew_ms.unsigned_abs()) > window.as_millis() {
            let skew_s = skew_ms / 1000;
            return refused(
                "stale",
                StatusCode::UNAUTHORIZED,
                format!(
                    "the request was signed {} s {} this host's clock, outside the replay \
                     window of {window_s} s ([ingest] webhook_max_skew_s); if the clock is \
                     right, this is a replayed request",
                    skew_s.unsigned_abs(),
                    if skew_ms >= 0 { "behind" } else { "ahead of" },
                ),
            );
        }
    }

    // Route and decode every event before storing any: one that names another installation,
    // or that cannot be read, refuses the whole request.
    let mut readings = readings.into_iter();
    let mut prepared = Vec::with_capacity(payloads.len());
    for payload in &payloads {
        let step = state
            .ingest
            .prepare(plugin, payload, arrived, verified, readings.next())
            .await
            .map_err(ApiError::internal)?;
        match &step {
            Prepared::Done(PayloadOutcome::Dispatched(Outcome::Dropped(
                DropReason::RoutedElsewhere,
            ))) => {
                return refused(
                    "routed_elsewhere",
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "an event of this request names another installation than `{}`, whose \
                         secrets verified it; nothing was stored. Each installation has its own \
                         URL: {}",
                        installation.id,
                        installation_url(state, channel, "<installation id>"),
                    ),
                );
            }
            Prepared::Done(PayloadOutcome::Invalid(reason)) => {
                return refused(
                    "malformed",
                    StatusCode::BAD_REQUEST,
                    format!("the request is authenticated but an event is malformed: {reason}"),
                );
            }
            _ => {}
        }
        prepared.push(step);
    }
    let mut labels = Vec::with_capacity(prepared.len());
    let mut response = response;
    for (step, payload) in prepared.into_iter().zip(&payloads) {
        let outcome = match step {
            Prepared::Done(outcome) => outcome,
            Prepared::Message(message) => state
                .ingest
                .finish(plugin, *message)
                .await
                .map_err(ingest_error)?,
        };
        // A pressed control is answered with the host's words (a toast, an updated card), in
        // the channel's form; without one the plugin's default answer goes out.
        if let Some(action) = outcome.action_answer() {
            match plugin.answer_action(&cx, payload, action).await {
                Ok(Some(body)) => response.body = body,
                Ok(None) => {}
                Err(e) => tracing::warn!("answer-action failed; sending the default answer: {e}"),
            }
        }
        labels.push(outcome.label());
    }
    let mut answer = plugin_response(response);
    // What became of each event, for operators and integration tests (no content).
    if let Ok(value) = HeaderValue::from_str(&labels.join(",")) {
        answer.headers_mut().insert(OUTCOME_HEADER, value);
    }
    Ok(answer)
}

/// The installation whose secrets must verify a request to the channel's shared URL: the one
/// its raw body's routing key names.
async fn route_shared_url(
    state: &AppState,
    plugin: &Plugin,
    channel: &str,
    body: &[u8],
) -> Result<Installation, ApiError> {
    let anonymous = Arc::new(InstallationContext::default());
    let routing_key = plugin
        .routing_key(&anonymous, body)
        .await
        .map_err(ApiError::internal)?
        .filter(|key| !key.is_empty());
    let Some(routing_key) = routing_key else {
        state
            .ingest
            .metrics()
            .ingested(channel, "rejected:unroutable");
        state
            .ingest
            .metrics()
            .webhook_rejected(channel, "unroutable");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "this request names no installation that could verify it (an encrypted body or a \
                 URL-verification challenge is only readable with the installation's secrets); \
                 configure the installation's own URL instead: {} (`switchboard installations \
                 list` shows the ids)",
                installation_url(state, channel, "<installation id>")
            ),
        ));
    };
    let installation = state
        .installations
        .get_by_routing_key(channel, &routing_key)
        .await
        .map_err(ApiError::internal)?;
    installation.ok_or_else(|| {
        state.ingest.metrics().ingested(channel, "rejected:unknown");
        state
            .ingest
            .metrics()
            .webhook_rejected(channel, "unknown_installation");
        tracing::warn!(
            channel,
            "webhook refused: no installation for its routing key"
        );
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("no {channel} installation can authenticate this request"),
        )
    })
}

/// The answer for an event that could not be processed: the channel must redeliver it.
fn ingest_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Dispatch(DispatchError::InFlight { .. }) => {
            tracing::info!("webhook answered 503: {error}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        other => ApiError::internal(other),
    }
}

fn installation_url(state: &AppState, channel: &str, installation: &str) -> String {
    format!(
        "{}/hooks/{channel}/{installation}",
        state.public_url.trim_end_matches('/')
    )
}

fn plugin_response(answer: transport::WebhookResponse) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response()
}
