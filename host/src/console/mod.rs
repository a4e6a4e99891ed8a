//! The operator console: server-rendered HTML pages at `/console/…` behind the admin token.
//!
//! An operator signs in with the admin token ([`auth`]: an HttpOnly, SameSite=Strict session
//! cookie, `Secure` under an https public URL, 12 h) and sees installations (added from the
//! plugin's installation schema, edited, their secrets rotated, revoked and restored), pending
//! pairings (approve or deny a code), plugins and their health, sessions with a live
//! transcript (the browser reads the existing `/api/sessions/{id}/events` stream, which accepts
//! the console cookie), runs and queues (interrupt, promote, delete), the drop audit and a
//! metrics overview. Every state-changing form is a POST carrying the session's CSRF token,
//! checked by [`require_session`] before any handler runs. `/` redirects here.
//!
//! Owns the pages, the sign-in and the forms. It must not hold business logic or SQL: every
//! read and change goes through the same store and service functions the admin API calls
//! (`api::admin::add_installation`, `update`, `rotate_secrets`, `revoke`, `restore`,
//! `approve_code`, `RunService::interrupt`, …). Pages are
//! `maud` templates (`pages.rs`, escaped at compile time); the little CSS and JS it needs are
//! embedded in the binary (`static/`), and nothing is loaded from elsewhere.

pub mod auth;
mod pages;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub use auth::{ConsoleAuth, ConsoleSession, SIGN_IN_FAILURES, SIGN_IN_WINDOW_MS};

use crate::api::{ApiError, AppState, admin};
use crate::store::{Installation, NewInstallation, RunState};

/// The largest console form accepted (bytes); the host's body limit applies first.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// The most sessions the session and run pages list (most recently changed first).
const MAX_LISTED_SESSIONS: usize = 200;
/// The most drop-audit rows the audit page shows.
const AUDIT_ROWS: u32 = 200;

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// The console's routes (`/`, `/console/…`); the caller adds the body-limit layer.
pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let signed = Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/installations") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/installations") }),
        )
        .route("/console/logout", post(logout))
        .route(
            "/console/installations",
            get(installations).post(create_installation),
        )
        .route("/console/installations/new", get(new_installation))
        .route(
            "/console/installations/{id}/revoke",
            post(revoke_installation),
        )
        .route(
            "/console/installations/{id}/restore",
            post(restore_installation),
        )
        .route(
            "/console/installations/{id}/edit",
            get(edit_installation).post(update_installation),
        )
        .route(
            "/console/installations/{id}/secrets",
            get(secrets_form).post(rotate_secrets),
        )
        .route("/console/pairings", get(pairings).post(decide_pairing))
        .route("/console/plugins", get(plugins))
        .route("/console/sessions", get(sessions))
        .route("/console/sessions/{id}", get(session))
        .route("/console/sessions/{id}/interrupt", post(interrupt))
        .route("/console/sessions/{id}/delete", post(delete_session))
        .route(
            "/console/sessions/{id}/queue/{qid}/promote",
            post(promote_queued),
        )
        .route(
            "/console/sessions/{id}/queue/{qid}/delete",
            post(delete_queued),
        )
        .route("/console/runs", get(runs))
        .route("/console/audit", get(audit))
        .route("/console/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .merge(signed)
        .layer(middleware::map_response(security_headers))
}

/// The session of a request's console cookie, if it is valid now.
pub(crate) fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<ConsoleSession> {
    let value = auth::cookie_value(headers)?;
    state.console.verify(value, state.clock.now_ms())
}

/// What a signed-in page knows: the session and its CSRF token (for its forms).
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    /// The CSRF token the page's forms carry.
    pub csrf: String,
}

/// The fields of a POSTed console form (its CSRF token already checked).
#[derive(Debug, Clone, Default)]
struct FormFields(Vec<(String, String)>);

impl FormFields {
    fn parse(bytes: &[u8]) -> FormFields {
        FormFields(url::form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The non-empty values of the fields named `<prefix><key>`, by key.
    fn prefixed(&self, prefix: &str) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(prefix)?, value)))
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect()
    }
}

/// Lets only signed-in operators through: no valid cookie → the login page (303). A POST must
/// carry the session's CSRF token in its form (else 403, nothing done); its fields are handed
/// to the handler as [`FormFields`].
async fn require_session(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.console.enabled() {
        return disabled();
    }
    let Some(session) = signed_in(&state, request.headers()) else {
        return Redirect::to("/console/login").into_response();
    };
    let signed = Signed {
        csrf: state.console.csrf_token(&session),
    };
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(signed);
    parts.extensions.insert(session.clone());
    if parts.method != Method::POST {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is larger than the console accepts.",
        )
        .into_response();
    };
    let form = FormFields::parse(&bytes);
    let presented = form.get(auth::CSRF_FIELD).unwrap_or("");
    if !state.console.csrf_matches(&session, presented) {
        tracing::warn!(path = %parts.uri.path(), "console form refused: missing or wrong CSRF token");
        return PageError::new(
            StatusCode::FORBIDDEN,
            "This form was not sent by this console page (missing or wrong CSRF token). Reload the page and try again.",
        )
        .into_response();
    }
    parts.extensions.insert(form);
    next.run(Request::from_parts(parts, Body::empty())).await
}

/// Pages never cached, never framed, and scripts, styles and forms from this host only.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn disabled() -> Response {
    PageError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "The console is disabled: set server.admin_token (SWITCHBOARD_SERVER__ADMIN_TOKEN) and restart.",
    )
    .into_response()
}

/// An HTML error page. Internal failures are logged and shown as a generic message.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> PageError {
        PageError::from(ApiError::internal(error))
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError::new(e.status(), e.message())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        (
            self.status,
            html(pages::error_page(self.status, &self.message)),
        )
            .into_response()
    }
}

type PageResult = Result<Response, PageError>;

fn html(markup: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn see_other(to: &str) -> PageResult {
    Ok(Redirect::to(to).into_response())
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Sign-in.

async fn login_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !s.console.enabled() {
        return disabled();
    }
    if signed_in(&s, &headers).is_some() {
        return Redirect::to("/console/installations").into_response();
    }
    html(pages::login(None))
}

async fn login(
    State(s): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    if !s.console.enabled() {
        return disabled();
    }
    // Behind a reverse proxy every client shares the proxy's address: the throttle then
    // guards the token for all of them together, which is the safe side.
    let address = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |peer| peer.0.0.ip());
    let now_ms = s.clock.now_ms();
    if let Err(retry_after_s) = s.console.sign_in_allowed(address, now_ms) {
        tracing::warn!(%address, "console sign-in throttled: too many wrong tokens");
        let message =
            format!("Too many wrong tokens from your address. Try again in {retry_after_s} s.");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_s.to_string())],
            html(pages::login(Some(&message))),
        )
            .into_response();
    }
    let form = FormFields::parse(&body);
    let token = form.get("token").unwrap_or("");
    if !s.console.token_matches(token) {
        s.console.sign_in_failed(address, now_ms);
        tracing::warn!(%address, "console sign-in refused: wrong admin token");
        return (
            StatusCode::UNAUTHORIZED,
            html(pages::login(Some(
                "That is not the admin token. Paste the value of server.admin_token.",
            ))),
        )
            .into_response();
    }
    s.console.sign_in_succeeded(address);
    let (session, value) = s.console.issue(now_ms);
    tracing::info!(console_session = %&session.id[..8], "console sign-in");
    (
        [(header::SET_COOKIE, s.console.set_cookie(&value))],
        Redirect::to("/console/installations"),
    )
        .into_response()
}

async fn logout(
    State(s): State<AppState>,
    axum::Extension(session): axum::Extension<ConsoleSession>,
) -> Response {
    s.console.revoke(&session, s.clock.now_ms());
    (
        [(header::SET_COOKIE, s.console.clear_cookie())],
        Redirect::to("/console/login"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Installations.

#[derive(Debug, Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn installations(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let all = s.installations.list().await.map_err(PageError::internal)?;
    Ok(html(pages::installations(
        &signed,
        &all,
        notice.done.as_deref(),
    )))
}

#[derive(Debug, Deserialize)]
struct NewQuery {
    channel: Option<String>,
}

async fn new_installation(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(q): Query<NewQuery>,
) -> PageResult {
    let plugins = s.runtime.plugins();
    let chosen = q
        .channel
        .as_deref()
        .map(|channel| {
            s.runtime.plugin_for_channel(channel).ok_or_else(|| {
                PageError::new(
                    StatusCode::NOT_FOUND,
                    format!("No loaded plugin serves the channel `{channel}`."),
                )
            })
        })
        .transpose()?;
    Ok(html(pages::new_installation(
        &signed,
        &plugins,
        chosen.as_deref(),
        &FormFields::default(),
        None,
    )))
}

async fn create_installation(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let channel = form.get("channel").unwrap_or("").to_string();
    let Some(plugin) = s.runtime.plugin_for_channel(&channel) else {
        return Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("No loaded plugin serves the channel `{channel}`."),
        ));
    };
    let refuse = |e: ApiError| -> PageResult {
        Ok((
            e.status(),
            html(pages::new_installation(
                &signed,
                &s.runtime.plugins(),
                Some(&*plugin),
                &form,
                Some(e.message()),
            )),
        )
            .into_response())
    };
    let debounce_ms = match form.get("debounce_ms").filter(|v| !v.trim().is_empty()) {
        None => NewInstallation::default().debounce_ms,
        Some(v) => match v.trim().parse() {
            Ok(ms) => ms,
            Err(_) => {
                return refuse(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "debounce_ms must be a whole number of milliseconds",
                ));
            }
        },
    };
    let access_policy = match admin::access_policy(form.get("access_policy")) {
        Ok(policy) => policy,
        Err(e) => return refuse(e),
    };
    let new = NewInstallation {
        channel: channel.clone(),
        routing_key: form.get("routing_key").unwrap_or("").trim().to_string(),
        name: form.get("name").unwrap_or("").trim().to_string(),
        config: form.prefixed("config."),
        secrets: form.prefixed("secret."),
        access_policy,
        agent: form
            .get("agent")
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| NewInstallation::default().agent),
        debounce_ms,
    };
    let skip_on_install = form.get("skip_on_install") == Some("on");
    match admin::add_installation(&s, new, skip_on_install).await {
        Ok(created) => {
            tracing::info!(installation = %created.id, channel = %created.channel, "installation added from the console");
            see_other("/console/installations?done=added")
        }
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => refuse(e),
    }
}

async fn revoke_installation(State(s): State<AppState>, Path(id): Path<String>) -> PageResult {
    admin::revoke(&s, &id).await?;
    tracing::info!(installation = %id, "installation revoked from the console");
    see_other("/console/installations?done=revoked")
}

/// Restore runs the plugin's `on-install` again unless the form's box is ticked.
async fn restore_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let skip_on_install = form.get("skip_on_install") == Some("on");
    admin::restore(&s, &id, skip_on_install).await?;
    tracing::info!(installation = %id, "installation restored from the console");
    see_other("/console/installations?done=restored")
}

/// The installation and the plugin serving its channel (404 page for either missing).
async fn installation_and_plugin(
    s: &AppState,
    id: &str,
) -> Result<(Installation, std::sync::Arc<crate::runtime::Plugin>), PageError> {
    let installation = admin::find(s, id).await?;
    let plugin = s
        .runtime
        .plugin_for_channel(&installation.channel)
        .ok_or_else(|| {
            PageError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "No loaded plugin serves the channel `{}` of this installation.",
                    installation.channel
                ),
            )
        })?;
    Ok((installation, plugin))
}

async fn edit_installation(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Path(id): Path<String>,
) -> PageResult {
    let (installation, plugin) = installation_and_plugin(&s, &id).await?;
    Ok(html(pages::edit_installation(
        &signed,
        &installation,
        &plugin,
        None,
        None,
    )))
}

async fn update_installation(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Path(id): Path<String>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let (installation, plugin) = installation_and_plugin(&s, &id).await?;
    let refuse = |e: ApiError| -> PageResult {
        Ok((
            e.status(),
            html(pages::edit_installation(
                &signed,
                &installation,
                &plugin,
                Some(&form),
                Some(e.message()),
            )),
        )
            .into_response())
    };
    let debounce_ms = match form.get("debounce_ms").map(str::trim) {
        None | Some("") => None,
        Some(v) => match v.parse() {
            Ok(ms) => Some(ms),
            Err(_) => {
                return refuse(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "debounce_ms must be a whole number of milliseconds",
                ));
            }
        },
    };
    if let Some(ms) = debounce_ms
        && let Err(what) = crate::hygiene::check_debounce_ms(ms)
    {
        return refuse(ApiError::new(StatusCode::BAD_REQUEST, what));
    }
    let access_policy = match admin::access_policy(form.get("access_policy")) {
        Ok(policy) => policy,
        Err(e) => return refuse(e),
    };
    // A config field left empty removes a value that was set; the others are set as shown.
    let schema = &plugin.manifest().installation;
    let mut set_config = BTreeMap::new();
    let mut unset_config = Vec::new();
    for key in schema.config.keys() {
        let value = form.get(&format!("config.{key}")).unwrap_or("").trim();
        match (value.is_empty(), installation.config.get(key)) {
            (true, Some(_)) => unset_config.push(key.clone()),
            (true, None) => {}
            (false, Some(old)) if old == value => {}
            (false, _) => {
                set_config.insert(key.clone(), value.to_string());
            }
        }
    }
    let change = crate::onboarding::InstallationUpdate {
        name: form.get("name").map(|n| n.trim().to_string()),
        set_config,
        unset_config,
        access_policy: Some(access_policy),
        agent: form
            .get("agent")
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string),
        debounce_ms,
    };
    match admin::update(&s, &id, &change).await {
        Ok(_) => {
            tracing::info!(installation = %id, "installation updated from the console");
            see_other("/console/installations?done=updated")
        }
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => refuse(e),
    }
}

async fn secrets_form(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Path(id): Path<String>,
) -> PageResult {
    let (installation, plugin) = installation_and_plugin(&s, &id).await?;
    Ok(html(pages::rotate_secrets(
        &signed,
        &installation,
        &plugin,
        None,
    )))
}

/// Rotates the secrets typed into the form; empty fields keep their value.
async fn rotate_secrets(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Path(id): Path<String>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let (installation, plugin) = installation_and_plugin(&s, &id).await?;
    let secrets = form.prefixed("secret.");
    let result = if secrets.is_empty() {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Type a new value for at least one secret; empty fields keep their value.",
        ))
    } else {
        admin::rotate_secrets(&s, &id, &secrets).await
    };
    match result {
        Ok(_) => {
            let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
            tracing::info!(installation = %id, secrets = ?names, "secrets rotated from the console");
            see_other("/console/installations?done=rotated")
        }
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => Ok((
            e.status(),
            html(pages::rotate_secrets(
                &signed,
                &installation,
                &plugin,
                Some(e.message()),
            )),
        )
            .into_response()),
    }
}

// ---------------------------------------------------------------------------------------------
// Pairings.

async fn pairings(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(q): Query<SessionsQuery>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let installation = q.installation.as_deref().filter(|i| !i.is_empty());
    let pending = admin::pending_pairings(&s, installation).await?;
    Ok(html(pages::pairings(
        &signed,
        &pending,
        installation,
        notice.done.as_deref(),
        None,
    )))
}

/// Approves or denies the code typed into the form (the list never shows codes: the operator
/// gets one from the sender).
async fn decide_pairing(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let code = form.get("code").unwrap_or("").trim().to_string();
    let user_ref = form
        .get("user_ref")
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let result = if code.is_empty() {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Type the 8-character code the sender was given.",
        ))
    } else if form.get("decision") == Some("deny") {
        admin::deny_code(&s, &code).await.map(|p| ("denied", p))
    } else {
        admin::approve_code(&s, &code, user_ref)
            .await
            .map(|a| ("approved", a.pairing))
    };
    match result {
        Ok((done, pairing)) => {
            tracing::info!(installation = %pairing.installation_id, pairing = %pairing.id, decision = done, "pairing decided from the console");
            see_other(&format!("/console/pairings?done={done}"))
        }
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let pending = admin::pending_pairings(&s, None).await?;
            Ok((
                e.status(),
                html(pages::pairings(
                    &signed,
                    &pending,
                    None,
                    None,
                    Some(e.message()),
                )),
            )
                .into_response())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plugins.

async fn plugins(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
) -> PageResult {
    Ok(html(pages::plugins(&signed, &s.runtime.plugins())))
}

// ---------------------------------------------------------------------------------------------
// Sessions, runs and queues.

#[derive(Debug, Deserialize)]
struct SessionsQuery {
    installation: Option<String>,
}

/// Every session's run status (of one installation, if asked), most recently changed first,
/// at most [`MAX_LISTED_SESSIONS`].
async fn statuses(
    s: &AppState,
    installation: Option<&str>,
) -> Result<Vec<crate::store::RunStatus>, PageError> {
    let mut all = s
        .runs
        .store()
        .list_statuses(installation)
        .await
        .map_err(PageError::internal)?;
    all.sort_by_key(|s| std::cmp::Reverse(s.updated_at_ms));
    all.truncate(MAX_LISTED_SESSIONS);
    Ok(all)
}

async fn sessions(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(q): Query<SessionsQuery>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let installation = q.installation.as_deref().filter(|i| !i.is_empty());
    let list = statuses(&s, installation).await?;
    Ok(html(pages::sessions(
        &signed,
        &list,
        installation,
        notice.done.as_deref(),
    )))
}

async fn session(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let Some(record) = s
        .records
        .get_session(&id)
        .await
        .map_err(PageError::internal)?
    else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("No session `{id}`."),
        ));
    };
    let status = s.runs.status(&id).await.map_err(PageError::internal)?;
    let messages = s
        .records
        .list_messages(&id)
        .await
        .map_err(PageError::internal)?;
    let queue = s.runs.queue(&id).await.map_err(PageError::internal)?;
    Ok(html(pages::session(
        &signed,
        &record,
        status.as_ref(),
        &messages,
        &queue,
        notice.done.as_deref(),
    )))
}

/// Where a session form goes back to: the runs page when it came from there, else the session.
fn back(form: &FormFields, session: &str, done: &str) -> PageResult {
    if form.get("back") == Some("runs") {
        see_other(&format!("/console/runs?done={done}"))
    } else {
        see_other(&format!(
            "/console/sessions/{}?done={done}",
            pages::path_segment(session)
        ))
    }
}

fn run_error(e: crate::store::RunError) -> PageError {
    use crate::store::RunError;
    match e {
        RunError::NotFound { .. } => PageError::new(StatusCode::NOT_FOUND, e.to_string()),
        RunError::NotUser { .. } | RunError::QueueFull { .. } => {
            PageError::new(StatusCode::CONFLICT, e.to_string())
        }
        RunError::Store(e) => PageError::internal(e),
    }
}

async fn interrupt(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    let transition = s.runs.interrupt(&id).await.map_err(run_error)?;
    tracing::info!(session = %id, interrupted_run = ?transition.interrupted_run, "session interrupted from the console");
    back(&form, &id, "interrupted")
}

async fn promote_queued(
    State(s): State<AppState>,
    Path((id, qid)): Path<(String, i64)>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    s.runs.promote_queued(&id, qid).await.map_err(run_error)?;
    tracing::info!(session = %id, queued = qid, "queued message promoted from the console");
    back(&form, &id, "promoted")
}

async fn delete_queued(
    State(s): State<AppState>,
    Path((id, qid)): Path<(String, i64)>,
    axum::Extension(form): axum::Extension<FormFields>,
) -> PageResult {
    if !s.runs.delete_queued(&id, qid).await.map_err(run_error)? {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("Queued message {qid} of session {id} is gone (answered or deleted)."),
        ));
    }
    tracing::info!(session = %id, queued = qid, "queued message deleted from the console");
    back(&form, &id, "dequeued")
}

async fn delete_session(State(s): State<AppState>, Path(id): Path<String>) -> PageResult {
    if !s
        .runs
        .delete_session(&id)
        .await
        .map_err(PageError::internal)?
    {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("No session `{id}`."),
        ));
    }
    tracing::info!(session = %id, "session deleted from the console");
    see_other("/console/sessions?done=deleted")
}

async fn runs(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let mut rows = Vec::new();
    for status in statuses(&s, None).await? {
        let queue = s
            .runs
            .queue(&status.session_id)
            .await
            .map_err(PageError::internal)?;
        if status.state != RunState::Idle || !queue.is_empty() {
            rows.push((status, queue));
        }
    }
    Ok(html(pages::runs(&signed, &rows, notice.done.as_deref())))
}

// ---------------------------------------------------------------------------------------------
// Audit and metrics.

#[derive(Debug, Deserialize)]
struct AuditQuery {
    installation: Option<String>,
}

async fn audit(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let installation = q.installation.as_deref().filter(|i| !i.is_empty());
    let rows = s
        .records
        .list_audit(installation, AUDIT_ROWS)
        .await
        .map_err(PageError::internal)?;
    Ok(html(pages::audit(&signed, &rows, installation)))
}

async fn metrics(
    State(s): State<AppState>,
    axum::Extension(signed): axum::Extension<Signed>,
) -> PageResult {
    let text = s.metrics.render_as(crate::metrics::Format::Prometheus);
    Ok(html(pages::metrics(&signed, &pages::key_samples(&text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded_and_grouped() {
        let form = FormFields::parse(
            b"csrf=abc&config.bot_name=my+bot&config.empty=&secret.token=a%26b%3Dc&name=x&name=y",
        );
        assert_eq!(form.get("csrf"), Some("abc"));
        assert_eq!(form.get("name"), Some("x"));
        assert_eq!(form.get("missing"), None);
        assert_eq!(
            form.prefixed("config."),
            BTreeMap::from([("bot_name".to_string(), "my bot".to_string())])
        );
        assert_eq!(
            form.prefixed("secret."),
            BTreeMap::from([("token".to_string(), "a&b=c".to_string())])
        );
    }
}
