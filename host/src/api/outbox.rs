//! The delivery outbox in the admin API: what waits to reach a chat and what was given up.
//!
//! `GET /api/outbox?state=pending|delivered|failed&session=…&limit=…` lists rows, newest first;
//! `POST /api/outbox/{id}/retry` puts a failed row back in the queue with a fresh attempt budget
//! (after the operator fixed what made it fail: credentials, a revoked permission). It reads and
//! changes rows through the store only; delivering is the delivery worker's job.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/outbox", get(list_outbox))
        .route("/outbox/{id}/retry", post(retry_outbox))
}

#[derive(Debug, Deserialize)]
struct OutboxQuery {
    state: Option<String>,
    session: Option<String>,
    limit: Option<i64>,
}

async fn list_outbox(
    State(s): State<AppState>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(state) = q.state.as_deref()
        && !["pending", "delivered", "failed"].contains(&state)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown state {state:?}: use pending, delivered or failed"),
        ));
    }
    let rows =
        s.db.outbox()
            .list(
                q.state.as_deref(),
                q.session.as_deref(),
                q.limit.unwrap_or(100).clamp(1, 1000),
            )
            .await
            .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(rows).map_err(ApiError::internal)?,
    ))
}

async fn retry_outbox(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let retried =
        s.db.outbox()
            .retry_failed(id, s.clock.now_ms())
            .await
            .map_err(ApiError::internal)?;
    if !retried {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("outbox row {id} is not failed (or does not exist): nothing to retry"),
        ));
    }
    Ok(Json(json!({ "id": id, "state": "pending" })))
}
