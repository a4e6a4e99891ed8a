//! `POST /hooks/{channel}` and `POST /hooks/{channel}/{installation}`: webhook delivery.
//!
//! The plugin verifies the request (signature, decryption, token); each event then goes through
//! the inbound service, and the channel's expected answer is sent only once every event is
//! durable. Bad signature → 401 and nothing stored; infrastructure failure → 500 so the channel
//! redelivers; oversized body → 413 (the body limit layer).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{ApiError, AppState};
use crate::ingest::pipeline::{self, WebhookOutcome};
use crate::ingest::service::ReadEvent;
use crate::runtime::{InstallationContext, transport};

/// Response header listing the outcome of each event of a delivery, comma-separated.
pub const OUTCOME_HEADER: &str = "x-switchboard-outcome";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hooks/{channel}", post(channel_hook))
        .route("/hooks/{channel}/{installation}", post(installation_hook))
}

async fn channel_hook(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    deliver(&state, &channel, None, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn installation_hook(
    State(state): State<AppState>,
    Path((channel, installation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    deliver(&state, &channel, Some(&installation), headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn deliver(
    state: &AppState,
    channel: &str,
    installation_id: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let plugin = state
        .runtime
        .plugin_for_channel(channel)
        .ok_or_else(|| ApiError::not_found(format!("no plugin serves channel `{channel}`")))?;
    // Verification secrets come from the installation named in the path (encrypted channels need
    // it: the routing key is inside the ciphertext).
    let (installation, cx) = match installation_id {
        Some(id) => {
            let installation = state
                .installations
                .get(id)
                .await
                .map_err(ApiError::internal)?
                .filter(|i| i.channel == channel)
                .ok_or_else(|| ApiError::not_found(format!("no {channel} installation `{id}`")))?;
            let cx = Arc::new(installation.context());
            (Some(installation), cx)
        }
        None => (None, Arc::new(InstallationContext::default())),
    };
    let request = transport::WebhookRequest {
        method: "POST".into(),
        path: String::new(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let outcome = pipeline::verify_webhook(&plugin, &cx, &request)
        .await
        .map_err(ApiError::internal)?;
    match outcome {
        WebhookOutcome::Challenge(answer) => Ok(plugin_response(answer)),
        WebhookOutcome::Rejected(rejected) => {
            tracing::warn!(
                channel,
                installation = installation_id.unwrap_or("-"),
                "webhook rejected: {}: {}",
                rejected.kind,
                rejected.reason
            );
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("{}: {}", rejected.kind, rejected.reason),
            ))
        }
        WebhookOutcome::Events {
            payloads,
            readings,
            response,
        } => {
            let mut labels = Vec::with_capacity(payloads.len());
            let mut readings = readings.into_iter();
            for payload in &payloads {
                // The installation the request was verified for is reused when the event is
                // its own (no second lookup), with the plugin's reading of the event if it
                // made one; anything else is routed by its key.
                let known = installation.as_ref().map(|i| (i, &cx));
                let read = readings
                    .next()
                    .zip(installation.as_ref())
                    .map(|(event, i)| ReadEvent {
                        installation_id: i.id.clone(),
                        event,
                    });
                let outcome = state
                    .ingest
                    .payload_of(&plugin, payload, arrived, known, read)
                    .await
                    .map_err(ApiError::internal)?;
                labels.push(outcome.label());
            }
            let mut answer = plugin_response(response);
            // What became of each event, for operators and integration tests (no content).
            if let Ok(value) = HeaderValue::from_str(&labels.join(",")) {
                answer.headers_mut().insert(OUTCOME_HEADER, value);
            }
            Ok(answer)
        }
    }
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
