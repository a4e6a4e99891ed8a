//! The session run operations of the admin API (SPEC §5; bearer token like the rest of
//! `/api`): submit a message, interrupt, promote or delete a queued message, edit a user
//! message, delete a session, and show a session's run state with its queue.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /api/sessions/{id}` | 200 `{session: <run status>, queue: [...]}` |
//! | `POST /api/sessions/{id}/messages` `{"body"}` | 201 `{queued: false, message}` or 202 `{queued: true, queued_message}`; 429 when the queue is full |
//! | `POST /api/sessions/{id}/interrupt` | 200 `{state, interrupted_run, promoted}` |
//! | `POST /api/sessions/{id}/queue/{qid}/promote` | 200 `{message, state, interrupted_run}` |
//! | `DELETE /api/sessions/{id}/queue/{qid}` | 204 |
//! | `PUT /api/sessions/{id}/messages/{mid}` `{"body"}` | 200 `{message, truncated, dequeued, interrupted_run}`; 400 for a non-user message |
//! | `DELETE /api/sessions/{id}` | 204 |
//! | `POST /api/sessions/{id}/compact` | 200 `{outcome: "compacted", boundary_message_id, notice_message_id, tokens_before, tokens_after}` (built-in agents) or 202 `{outcome: "requested"}` (worker agents: the next claim is the compaction job); 409 while running or with nothing to compact; 502 when the agent failed |
//!
//! Unknown sessions, messages and queued messages answer 404. Errors are `{"error": …}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::runs::compaction::{CompactError, ManualOutcome};
use crate::store::{RunError, Submitted};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sessions/{id}", get(show_session).delete(delete_session))
        .route("/sessions/{id}/messages", post(submit_message))
        .route("/sessions/{id}/messages/{mid}", put(edit_message))
        .route("/sessions/{id}/interrupt", post(interrupt))
        .route("/sessions/{id}/compact", post(compact))
        .route("/sessions/{id}/queue/{qid}/promote", post(promote_queued))
        .route("/sessions/{id}/queue/{qid}", delete(delete_queued))
}

/// Body of message submissions and edits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    body: String,
}

fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::NotFound { .. } => ApiError::not_found(e.to_string()),
        RunError::NotUser { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        RunError::QueueFull { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        RunError::Store(e) => ApiError::internal(e),
    }
}

fn to_json(value: impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

fn non_empty(body: MessageBody) -> Result<String, ApiError> {
    if body.body.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body must not be empty",
        ));
    }
    Ok(body.body)
}

async fn show_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let status = s
        .runs
        .status(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))?;
    let queue = s.runs.queue(&id).await.map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "session": to_json(status)?, "queue": to_json(queue)? }),
    ))
}

async fn submit_message(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MessageBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = non_empty(body)?;
    match s.runs.submit(&id, &body).await.map_err(run_error)? {
        Submitted::Appended(message) => Ok((
            StatusCode::CREATED,
            Json(json!({ "queued": false, "message": to_json(message)? })),
        )),
        Submitted::Queued(queued) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "queued": true, "queued_message": to_json(queued)? })),
        )),
    }
}

async fn interrupt(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let transition = s.runs.interrupt(&id).await.map_err(run_error)?;
    Ok(Json(json!({
        "state": transition.state,
        "interrupted_run": transition.interrupted_run,
        "promoted": transition.promoted.len(),
    })))
}

async fn compact(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match s.compactor.compact_now(&id).await {
        Ok(outcome @ ManualOutcome::Compacted(_)) => Ok((StatusCode::OK, Json(to_json(outcome)?))),
        Ok(outcome @ ManualOutcome::Requested) => {
            Ok((StatusCode::ACCEPTED, Json(to_json(outcome)?)))
        }
        Err(e @ CompactError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ (CompactError::Busy(_) | CompactError::NothingToCompact(_))) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ CompactError::UnknownAgent { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ CompactError::Failed(_)) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
        }
        Err(CompactError::Store(e)) => Err(ApiError::internal(e)),
    }
}

async fn promote_queued(
    State(s): State<AppState>,
    Path((id, qid)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let (message, transition) = s.runs.promote_queued(&id, qid).await.map_err(run_error)?;
    Ok(Json(json!({
        "message": to_json(message)?,
        "state": transition.state,
        "interrupted_run": transition.interrupted_run,
    })))
}

async fn delete_queued(
    State(s): State<AppState>,
    Path((id, qid)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    if s.runs.delete_queued(&id, qid).await.map_err(run_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "queued message {qid} of session {id} not found"
        )))
    }
}

async fn edit_message(
    State(s): State<AppState>,
    Path((id, mid)): Path<(String, i64)>,
    Json(body): Json<MessageBody>,
) -> Result<Json<Value>, ApiError> {
    let body = non_empty(body)?;
    let edited = s
        .runs
        .edit_message(&id, mid, &body)
        .await
        .map_err(run_error)?;
    Ok(Json(json!({
        "message": to_json(edited.message)?,
        "truncated": edited.truncated,
        "dequeued": edited.dequeued,
        "interrupted_run": edited.interrupted_run,
    })))
}

async fn delete_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.runs
        .delete_session(&id)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("session {id} not found")))
    }
}
