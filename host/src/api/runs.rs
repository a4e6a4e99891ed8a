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

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::runs::compaction::{CompactError, ManualOutcome};
use crate::store::{Message, QueuedMessage, RunError, RunState, RunStatus, Submitted};

/// The routes (nested under `/api`), each registered with its `#[utoipa::path]` operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_session, delete_session))
        .routes(routes!(submit_message))
        .routes(routes!(edit_message))
        .routes(routes!(interrupt))
        .routes(routes!(compact_session))
        .routes(routes!(promote_queued))
        .routes(routes!(delete_queued))
}

/// The `{id}` path parameter of the session routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read as `Path<String>`; this names the parameter for the document
struct SessionId {
    /// The session's id.
    id: String,
}

/// Body of message submissions and edits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    /// The text (not blank).
    body: String,
}

/// A session's run state and its queue.
#[derive(Debug, Serialize, ToSchema)]
struct SessionView {
    /// The run state.
    session: RunStatus,
    /// The queued messages, in order.
    queue: Vec<QueuedMessage>,
}

/// What a submission did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum SubmitAnswer {
    /// Appended to the history (201): a run follows.
    Appended {
        /// `false`.
        queued: bool,
        /// The stored message.
        message: Message,
    },
    /// Queued behind the running run (202).
    Queued {
        /// `true`.
        queued: bool,
        /// The queued message.
        queued_message: QueuedMessage,
    },
}

/// What an interrupt did.
#[derive(Debug, Serialize, ToSchema)]
struct Interrupted {
    /// The run state now.
    state: RunState,
    /// The run that was interrupted, if one was running.
    interrupted_run: Option<String>,
    /// How many queued messages were promoted into the history.
    promoted: usize,
}

/// What a promotion did.
#[derive(Debug, Serialize, ToSchema)]
struct Promoted {
    /// The message, now in the history.
    message: Message,
    /// The run state now.
    state: RunState,
    /// The run that was interrupted for it, if one was running.
    interrupted_run: Option<String>,
}

/// What an edit did.
#[derive(Debug, Serialize, ToSchema)]
struct EditAnswer {
    /// The edited message.
    message: Message,
    /// Messages after it removed from the history.
    truncated: u64,
    /// Queued messages dropped.
    dequeued: u64,
    /// The run that was interrupted, if one was running.
    interrupted_run: Option<String>,
}

fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::NotFound { .. } => ApiError::not_found(e.to_string()),
        RunError::NotUser { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        RunError::QueueFull { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        RunError::Store(e) => ApiError::internal(e),
    }
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

/// Show a session's run state and queue.
#[utoipa::path(
    get,
    path = "/sessions/{id}",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "The run state and the queue.", body = SessionView),
        (status = 404, description = "No such session.", body = ErrorBody),
    ),
)]
async fn show_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let status = s
        .runs
        .status(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))?;
    let queue = s.runs.queue(&id).await.map_err(ApiError::internal)?;
    Ok(Json(SessionView {
        session: status,
        queue,
    }))
}

/// Submit a message to a session as its user.
#[utoipa::path(
    post,
    path = "/sessions/{id}/messages",
    tag = "sessions",
    params(SessionId),
    request_body = MessageBody,
    responses(
        (status = 201, description = "Appended (`queued: false`): a run follows.", body = SubmitAnswer),
        (status = 202, description = "Queued behind the running run (`queued: true`).", body = SubmitAnswer),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 422, description = "A blank body.", body = ErrorBody),
        (status = 429, description = "The session's queue is full.", body = ErrorBody),
    ),
)]
async fn submit_message(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MessageBody>,
) -> Result<(StatusCode, Json<SubmitAnswer>), ApiError> {
    let body = non_empty(body)?;
    match s.runs.submit(&id, &body).await.map_err(run_error)? {
        Submitted::Appended(message) => Ok((
            StatusCode::CREATED,
            Json(SubmitAnswer::Appended {
                queued: false,
                message,
            }),
        )),
        Submitted::Queued(queued) => Ok((
            StatusCode::ACCEPTED,
            Json(SubmitAnswer::Queued {
                queued: true,
                queued_message: queued,
            }),
        )),
    }
}

/// Interrupt the session's run (queued messages are promoted).
#[utoipa::path(
    post,
    path = "/sessions/{id}/interrupt",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "Interrupted (or nothing was running).", body = Interrupted),
        (status = 404, description = "No such session.", body = ErrorBody),
    ),
)]
async fn interrupt(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Interrupted>, ApiError> {
    let transition = s.runs.interrupt(&id).await.map_err(run_error)?;
    Ok(Json(Interrupted {
        state: transition.state,
        interrupted_run: transition.interrupted_run,
        promoted: transition.promoted.len(),
    }))
}

/// Compact the session's context now.
#[utoipa::path(
    post,
    path = "/sessions/{id}/compact",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 200, description = "A built-in agent summarised (`outcome: compacted`).", body = ManualOutcome),
        (status = 202, description = "A worker agent's session (`outcome: requested`): the next claim is the compaction job.", body = ManualOutcome),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 409, description = "A run is running, there is nothing to compact, or the agent is unknown.", body = ErrorBody),
        (status = 502, description = "The agent failed to summarise.", body = ErrorBody),
    ),
)]
async fn compact_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ManualOutcome>), ApiError> {
    match s.compactor.compact_now(&id).await {
        Ok(outcome @ ManualOutcome::Compacted(_)) => Ok((StatusCode::OK, Json(outcome))),
        Ok(outcome @ ManualOutcome::Requested) => Ok((StatusCode::ACCEPTED, Json(outcome))),
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

/// Promote a queued message into the history now (interrupting the run).
#[utoipa::path(
    post,
    path = "/sessions/{id}/queue/{qid}/promote",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id."),
        ("qid" = i64, Path, description = "The queued message's id."),
    ),
    responses(
        (status = 200, description = "Promoted.", body = Promoted),
        (status = 404, description = "No such session or queued message.", body = ErrorBody),
    ),
)]
async fn promote_queued(
    State(s): State<AppState>,
    Path((id, qid)): Path<(String, i64)>,
) -> Result<Json<Promoted>, ApiError> {
    let (message, transition) = s.runs.promote_queued(&id, qid).await.map_err(run_error)?;
    Ok(Json(Promoted {
        message,
        state: transition.state,
        interrupted_run: transition.interrupted_run,
    }))
}

/// Delete a queued message.
#[utoipa::path(
    delete,
    path = "/sessions/{id}/queue/{qid}",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id."),
        ("qid" = i64, Path, description = "The queued message's id."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such session or queued message.", body = ErrorBody),
    ),
)]
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

/// Edit a user message: the history after it is cut and the run starts over.
#[utoipa::path(
    put,
    path = "/sessions/{id}/messages/{mid}",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id."),
        ("mid" = i64, Path, description = "The message's id (a user message)."),
    ),
    request_body = MessageBody,
    responses(
        (status = 200, description = "Edited.", body = EditAnswer),
        (status = 400, description = "Not a user message.", body = ErrorBody),
        (status = 404, description = "No such session or message.", body = ErrorBody),
        (status = 422, description = "A blank body.", body = ErrorBody),
    ),
)]
async fn edit_message(
    State(s): State<AppState>,
    Path((id, mid)): Path<(String, i64)>,
    Json(body): Json<MessageBody>,
) -> Result<Json<EditAnswer>, ApiError> {
    let body = non_empty(body)?;
    let edited = s
        .runs
        .edit_message(&id, mid, &body)
        .await
        .map_err(run_error)?;
    Ok(Json(EditAnswer {
        message: edited.message,
        truncated: edited.truncated,
        dequeued: edited.dequeued,
        interrupted_run: edited.interrupted_run,
    }))
}

/// Delete a session with its history.
#[utoipa::path(
    delete,
    path = "/sessions/{id}",
    tag = "sessions",
    params(SessionId),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such session.", body = ErrorBody),
    ),
)]
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
