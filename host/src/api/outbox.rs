//! The delivery outbox in the admin API: what waits to reach a chat and what was given up.
//!
//! `GET /api/outbox?state=pending|delivered|failed&session=…&limit=…` lists rows, newest first;
//! `POST /api/outbox/{id}/retry` puts a failed row back in the queue with a fresh attempt budget
//! (after the operator fixed what made it fail: credentials, a revoked permission). It reads and
//! changes rows through the store only; delivering is the delivery worker's job.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::store::OutboxRow;

/// The routes (nested under `/api`), each registered with its `#[utoipa::path]` operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_outbox))
        .routes(routes!(retry_outbox))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OutboxQuery {
    /// `pending`, `delivered` or `failed`.
    state: Option<String>,
    /// Only this session's rows.
    session: Option<String>,
    /// At most this many rows (default 100, 1 – 1000).
    limit: Option<i64>,
}

/// A row put back in the queue.
#[derive(Debug, Serialize, ToSchema)]
struct Retried {
    /// The row.
    id: i64,
    /// `pending`.
    state: String,
}

/// List outbox rows, newest first.
#[utoipa::path(
    get,
    path = "/outbox",
    tag = "outbox",
    params(OutboxQuery),
    responses(
        (status = 200, description = "Rows, newest first.", body = Vec<OutboxRow>),
        (status = 400, description = "An unknown `state`.", body = ErrorBody),
    ),
)]
async fn list_outbox(
    State(s): State<AppState>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Vec<OutboxRow>>, ApiError> {
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
    Ok(Json(rows))
}

/// Put a failed row back in the queue with a fresh attempt budget.
#[utoipa::path(
    post,
    path = "/outbox/{id}/retry",
    tag = "outbox",
    params(("id" = i64, Path, description = "The outbox row's id.")),
    responses(
        (status = 200, description = "Queued again.", body = Retried),
        (status = 409, description = "The row is not failed (or does not exist).", body = ErrorBody),
    ),
)]
async fn retry_outbox(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Retried>, ApiError> {
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
    Ok(Json(Retried {
        id,
        state: "pending".into(),
    }))
}
