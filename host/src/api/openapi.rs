//! The OpenAPI 3.1 document of the worker and admin APIs, served at `GET /api/openapi.json`.
//!
//! Owns the document's frame ([`ApiDoc`]: info, security schemes, tags, the error schemas) and
//! what the router composition adds to every operation of a route group ([`secure`]: the
//! group's security requirement and the errors its layers and shared checks can answer). The
//! paths and the request/response schemas come from the handlers' `#[utoipa::path]`
//! attributes and the types they take and return; they are registered through utoipa-axum's
//! `routes!` in the same call that registers the route (`super::router`), so a route of these
//! APIs cannot exist undocumented, and a handler's answer type is its schema.
//!
//! The document is served without authentication: it describes the API and holds no secrets
//! (no tokens, installations or configuration). Webhook ingress, the console, `/healthz`,
//! `/readyz` and `/metrics` are not part of it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use super::ErrorBody;
use super::worker::WorkerErrorBody;

/// The security scheme of the worker API: `Authorization: Bearer <[agents.<agent>] token>`.
pub const AGENT_TOKEN: &str = "agent_token";
/// The security scheme of the admin API: `Authorization: Bearer <[server] admin_token>`.
pub const ADMIN_TOKEN: &str = "admin_token";
/// Where the document is served (no authentication).
pub const DOCUMENT_PATH: &str = "/api/openapi.json";

/// The document's frame; [`super::router`] merges the routes' operations into it.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "switchboard",
        description = "The worker API (external processes run the runs of `worker` agents) and the admin API (installations, pairings, bindings, sessions, the outbox, plugins) of a switchboard host. See docs/api.md."
    ),
    modifiers(&Frame),
    components(schemas(ErrorBody, WorkerErrorBody)),
    tags(
        (name = "worker", description = "The worker API: claim a run, heartbeat, stream parts, complete or fail; compaction, approvals, attachments. Bearer `agent_token`."),
        (name = "installations", description = "Installations and their lifecycle. Bearer `admin_token`."),
        (name = "pairings", description = "Pairing codes of unbound senders. Bearer `admin_token`."),
        (name = "bindings", description = "User bindings and binding tokens. Bearer `admin_token`."),
        (name = "sessions", description = "Sessions, their messages, runs, queue and event stream. Bearer `admin_token`."),
        (name = "outbox", description = "The delivery outbox. Bearer `admin_token`."),
        (name = "plugins", description = "Loaded plugins and reloads. Bearer `admin_token`."),
        (name = "audit", description = "The inbound audit. Bearer `admin_token`."),
        (name = "meta", description = "This document."),
    )
)]
pub struct ApiDoc;

/// The version (the crate's) and the two bearer schemes.
struct Frame;

impl utoipa::Modify for Frame {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            AGENT_TOKEN,
            bearer("The token of the agent named in the path: `[agents.<agent>] token`."),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer("The admin token: `[server] admin_token` (SWITCHBOARD_SERVER__ADMIN_TOKEN)."),
        );
    }
}

/// An error answer every route of a group can give, whatever its handler.
pub(super) struct SharedError {
    /// The status.
    pub status: u16,
    /// When.
    pub description: &'static str,
}

/// The errors every worker API route can answer (authentication, the agent, the body limits).
pub(super) const WORKER_ERRORS: &[SharedError] = &[
    SharedError {
        status: 400,
        description: "A malformed path, query or JSON body.",
    },
    SharedError {
        status: 401,
        description: "A missing or wrong agent token.",
    },
    SharedError {
        status: 404,
        description: "No such agent (or, where a handler says so, no such run or object of this agent).",
    },
    SharedError {
        status: 408,
        description: "The request body did not arrive in time.",
    },
    SharedError {
        status: 409,
        description: "The agent is not kind = \"worker\" (the host runs it itself).",
    },
    SharedError {
        status: 410,
        description: "The agent is archived.",
    },
    SharedError {
        status: 413,
        description: "The request body is larger than the worker API accepts (4 MiB).",
    },
    SharedError {
        status: 500,
        description: "An internal error (details in the host log only).",
    },
    SharedError {
        status: 503,
        description: "This host does not serve the worker API (or, where a handler says so, that feature).",
    },
];

/// The errors every admin API route can answer (authentication, the body limits).
pub(super) const ADMIN_ERRORS: &[SharedError] = &[
    SharedError {
        status: 400,
        description: "A malformed path, query or JSON body (a NUL in it included).",
    },
    SharedError {
        status: 401,
        description: "A missing or wrong admin token.",
    },
    SharedError {
        status: 408,
        description: "The request body did not arrive in time.",
    },
    SharedError {
        status: 413,
        description: "The request body is larger than `[server] max_body_bytes`.",
    },
    SharedError {
        status: 500,
        description: "An internal error (details in the host log only).",
    },
    SharedError {
        status: 503,
        description: "The admin API is disabled (no `[server] admin_token`).",
    },
];

/// Marks every operation of a route group as requiring `scheme`, and adds the `errors` its
/// layers and shared checks answer (with `error_schema`) where the handler lists no answer of
/// that status itself. Called where the group gets its authentication layer, so the document
/// says what the router does.
pub(super) fn secure(doc: &mut OpenApi, scheme: &str, error_schema: &str, errors: &[SharedError]) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
            for error in errors {
                operation
                    .responses
                    .responses
                    .entry(error.status.to_string())
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(error.description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name(error_schema)))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
    }
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the worker and admin APIs (no authentication: it holds no secrets).", content_type = "application/json")),
)]
pub(super) async fn document(
    axum::Extension(document): axum::Extension<ServedDocument>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document.0,
    )
        .into_response()
}

/// The document as served: rendered once when the router is built.
#[derive(Clone)]
pub(super) struct ServedDocument(pub bytes::Bytes);

/// The complete document: the frame with the routes' operations merged in.
pub(super) fn complete(routes: OpenApi) -> OpenApi {
    use utoipa::OpenApi as _;
    ApiDoc::openapi().merge_from(routes)
}
