//! The HTTP surface (axum): channel webhooks, the admin API, session event streams (SSE),
//! the worker API, their OpenAPI document, health and metrics.
//!
//! Owns routing, authentication of the admin API, request limits and the mapping of outcomes and
//! errors to HTTP statuses. It must not hold SQL or plugin logic: handlers call `ingest`,
//! `dispatch` and `store`.

pub(crate) mod admin;
mod errors;
pub mod events;
mod hooks;
mod limits;
pub mod openapi;
mod outbox;
mod plugins;
mod runs;
pub mod server;
pub mod worker;

pub use hooks::OUTCOME_HEADER;
pub use limits::HttpLimits;
pub use worker::WorkerApi;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{TokenDigest, bearer};
use crate::domain::Clock;
use crate::ingest::service::Ingest;
use crate::runs::{Compactor, RunService};
use crate::runtime::Runtime;
use crate::store::{Database, IngestStore, InstallationStore};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Loaded plugins.
    pub runtime: Arc<Runtime>,
    /// The inbound service.
    pub ingest: Arc<Ingest>,
    /// The database.
    pub db: Database,
    /// Installations (secrets sealed with the operator key).
    pub installations: InstallationStore,
    /// Sessions, bindings, audit.
    pub records: IngestStore,
    /// Run lifecycle and the session event hub (SSE streams).
    pub runs: RunService,
    /// The worker API (`/api/agents/{agent}/…`; `None` = answered with 503).
    pub workers: Option<WorkerApi>,
    /// Context compaction (manual requests: `POST /api/sessions/{id}/compact`).
    pub compactor: Compactor,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// SHA-256 of the admin API's bearer token (`None` = admin API disabled).
    pub admin_token: Option<TokenDigest>,
    /// SHA-256 of the bearer token `GET /metrics` requires (`None` = `/metrics` is open).
    pub metrics_token: Option<TokenDigest>,
    /// Public URL (installation webhook URLs told to plugins).
    pub public_url: Arc<str>,
    /// The configured agent names: what an installation may be bound to.
    pub agent_names: Arc<[String]>,
    /// The delivery outbox, woken when the API queues a notice (an approved pairing).
    pub outbox: crate::delivery::Outbox,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Coalescing window of session event streams (`[server] event_coalesce_ms`).
    pub event_coalescing: std::time::Duration,
    /// Plugin reloads (`POST /api/plugins/reload`, SIGHUP).
    pub reloader: Arc<crate::runtime::reload::Reloader>,
    /// The operator console's sign-in (session cookies signed under the admin token).
    pub console: Arc<crate::console::ConsoleAuth>,
}

/// An error answered as JSON `{"error": …}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a status and a message for the client.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The message the client sees.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// 404.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
    /// 500, logged; the client sees a generic message.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!("request failed: {error}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the host log",
        )
    }
}

/// The body of every admin API error (and of the errors the framework answers on its own).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Builds the router. Every request body must arrive within `limits.body_read_timeout` (408)
/// and fit `limits.max_body_bytes` (413); a `%00` in a path or query is refused (400), and so
/// is a NUL in an admin API JSON body, while the worker API's have theirs removed
/// (`limits.rs`).
///
/// The worker and admin routes are registered with their OpenAPI operations
/// (`utoipa_axum::OpenApiRouter`); the document this composition yields is the one served at
/// [`openapi::DOCUMENT_PATH`].
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let body = limits::BodyRead {
        max_bytes: limits.max_body_bytes,
        timeout: limits.body_read_timeout,
        hints: false,
    };
    let worker_body = limits::BodyRead {
        max_bytes: limits.max_body_bytes.max(worker::WORKER_MAX_BODY_BYTES),
        hints: true,
        ..body
    };
    // Route layers run outermost last: admin requests are authenticated, then their body is
    // read, then checked for NUL.
    let mut admin = admin::routes()
        .merge(outbox::routes())
        .merge(runs::routes())
        .merge(plugins::routes());
    openapi::secure(
        admin.get_openapi_mut(),
        openapi::ADMIN_TOKEN,
        "ErrorBody",
        openapi::ADMIN_ERRORS,
    );
    let admin = admin
        .route_layer(middleware::from_fn(limits::reject_nul_json))
        .route_layer(middleware::from_fn_with_state(body, limits::read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // The event stream also takes the console's session cookie: a browser's EventSource
    // cannot send a bearer header. A request that does send one is judged by it alone.
    let mut events = events::routes();
    openapi::secure(
        events.get_openapi_mut(),
        openapi::ADMIN_TOKEN,
        "ErrorBody",
        openapi::ADMIN_ERRORS,
    );
    let events = events
        .route_layer(middleware::from_fn_with_state(body, limits::read_body))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_or_console,
        ));
    let console = crate::console::routes(state.clone())
        .route_layer(middleware::from_fn_with_state(body, limits::read_body));
    let hooks =
        hooks::routes().route_layer(middleware::from_fn_with_state(body, limits::read_body));
    let mut worker = worker::routes();
    openapi::secure(
        worker.get_openapi_mut(),
        openapi::AGENT_TOKEN,
        "WorkerErrorBody",
        openapi::WORKER_ERRORS,
    );
    let worker = worker
        .route_layer(middleware::from_fn(limits::strip_nul_json))
        .route_layer(middleware::from_fn_with_state(
            worker_body,
            limits::read_body,
        ));
    // Undocumented routes (health, metrics, webhooks, the console) enter as plain routers.
    let plain = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(hooks)
        .merge(console);
    let (router, document) = OpenApiRouter::from(plain)
        .merge(worker)
        .routes(routes!(openapi::document))
        .nest("/api", admin.merge(events))
        .split_for_parts();
    let document = openapi::complete(document);
    let document = serde_json::to_vec(&document)
        .expect("an OpenAPI document serializes (its maps have string keys)");
    router
        .layer(Extension(openapi::ServedDocument(document.into())))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(limits::refuse_nul_path))
        .layer(middleware::map_response(errors::json_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts only (outcomes, plugin health, connections): no ids, no content, so open unless the
/// operator set `[server] metrics_token`.
async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        match bearer(&headers) {
            Some(token) if expected.matches(token) => {}
            Some(_) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "wrong metrics token")
                    .into_response();
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing `Authorization: Bearer <metrics token>` (server.metrics_token is set)",
                )
                .into_response();
            }
        }
    }
    // Prometheus asks for OpenMetrics first; other scrapers and people get the classic format.
    let format = crate::metrics::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        state.metrics.render_as(format),
    )
        .into_response()
}

/// How long `/readyz` waits for the database's answer.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: 200 while the database answers a trivial query within [`READY_TIMEOUT`], else
/// 503 with the reason (the URL and credentials are never shown). `/healthz` stays liveness
/// only: a host whose database is away is alive, but should get no traffic.
async fn readyz(State(state): State<AppState>) -> Response {
    let reason = match tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => return (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(backend = %state.db.backend(), "not ready: the database failed: {e}");
            format!("the {} database does not answer", state.db.backend())
        }
        Err(_) => {
            tracing::warn!(backend = %state.db.backend(), "not ready: the database did not answer in time");
            format!(
                "the {} database did not answer within {} s",
                state.db.backend(),
                READY_TIMEOUT.as_secs()
            )
        }
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}"),
    )
    .into_response()
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.admin_token else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin API is disabled: set server.admin_token (SWITCHBOARD_SERVER__ADMIN_TOKEN)",
        )
        .into_response();
    };
    match bearer(request.headers()) {
        Some(token) if expected.matches(token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>`",
        )
        .into_response(),
    }
}

/// [`require_admin`], except that a request without an `Authorization` header may show a valid
/// console session cookie instead (GET routes only: the session event stream).
async fn require_admin_or_console(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !request.headers().contains_key(header::AUTHORIZATION)
        && request.method() == axum::http::Method::GET
        && crate::console::signed_in(&state, request.headers()).is_some()
    {
        return next.run(request).await;
    }
    require_admin(State(state), request, next).await
}
