//! The admin API (JSON, bearer token): installations and their lifecycle (update, secret
//! rotation, revoke, restore), pairing codes, user bindings and binding tokens, sessions with
//! their messages, and the inbound audit. Secrets are accepted on create and rotation and never
//! returned.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::hygiene::{self, MAX_ID_BYTES};
use crate::onboarding::{self, AddError, AddOptions, InstallationUpdate};
use crate::store::{
    AccessPolicy, BindingError, Installation, NewInstallation, Pairing, PairingError, StoreError,
    UserBinding,
};

/// The routes (nested under `/api`), each registered with its `#[utoipa::path]` operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_installations, create_installation))
        .routes(routes!(show_installation, update_installation))
        .routes(routes!(revoke_installation))
        .routes(routes!(restore_installation))
        .routes(routes!(rotate_installation_secrets))
        .routes(routes!(list_pairings))
        .routes(routes!(approve_pairing))
        .routes(routes!(deny_pairing))
        .routes(routes!(list_bindings, add_binding))
        .routes(routes!(remove_binding))
        .routes(routes!(mint_binding_token))
        .routes(routes!(redeem_binding_token))
        .routes(routes!(list_sessions))
        .routes(routes!(list_audit))
}

/// The `{id}` path parameter of the installation routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read as `Path<String>`; this names the parameter for the document
struct InstallationId {
    /// The installation's id.
    id: String,
}

/// An installation as the API shows it: secrets reduced to their names.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstallationView {
    /// The installation's id.
    id: String,
    /// The channel (the plugin's `channel`).
    channel: String,
    /// What routes the channel's webhooks and events to it.
    routing_key: String,
    /// Its name.
    name: String,
    /// Its configuration (the plugin's installation schema).
    config: BTreeMap<String, String>,
    /// The NAMES of its secrets (values are never returned).
    secrets: Vec<String>,
    /// `open` or `bound`.
    access_policy: String,
    /// `active` or `revoked`.
    status: String,
    /// The agent its sessions go to.
    agent: String,
    /// Debounce window of its sessions (ms).
    debounce_ms: i64,
    /// Creation time (epoch ms).
    created_at_ms: i64,
    /// Last change (epoch ms).
    updated_at_ms: i64,
}

/// An installation as the API shows it: secrets reduced to their names.
pub(crate) fn installation_json(i: &Installation) -> InstallationView {
    InstallationView {
        id: i.id.clone(),
        channel: i.channel.clone(),
        routing_key: i.routing_key.clone(),
        name: i.name.clone(),
        config: i.config.clone(),
        secrets: i.secrets.keys().cloned().collect(),
        access_policy: i.access_policy.as_str().to_owned(),
        status: i.status.as_str().to_owned(),
        agent: i.agent.clone(),
        debounce_ms: i.debounce_ms,
        created_at_ms: i.created_at_ms,
        updated_at_ms: i.updated_at_ms,
    }
}

/// Body of `POST /api/installations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInstallation {
    /// The channel (a loaded plugin's `channel`).
    channel: String,
    /// What routes the channel's webhooks and events to it (unique per channel).
    #[serde(default)]
    routing_key: String,
    /// A name for people.
    #[serde(default)]
    name: String,
    /// Configuration, checked against the plugin's installation schema.
    #[serde(default)]
    config: BTreeMap<String, String>,
    /// Secrets (sealed with the operator key; never returned).
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Skip the plugin's `on-install` call.
    #[serde(default)]
    skip_on_install: bool,
    /// `open` (default) or `bound` (only bound users reach the agent).
    #[serde(default)]
    access_policy: Option<String>,
    /// The agent its sessions go to (default: the default agent).
    agent: Option<String>,
    /// Debounce window of its sessions (ms, 1 – 3600000).
    debounce_ms: Option<i64>,
}

impl CreateInstallation {
    pub(crate) fn into_new(self) -> Result<NewInstallation, ApiError> {
        let defaults = NewInstallation::default();
        let access_policy = access_policy(self.access_policy.as_deref())?;
        Ok(NewInstallation {
            channel: self.channel,
            routing_key: self.routing_key,
            name: self.name,
            config: self.config,
            secrets: self.secrets,
            access_policy,
            agent: self.agent.unwrap_or(defaults.agent),
            debounce_ms: self.debounce_ms.unwrap_or(defaults.debounce_ms),
        })
    }
}

/// List the installations.
#[utoipa::path(
    get,
    path = "/installations",
    tag = "installations",
    responses((status = 200, description = "Every installation, secrets reduced to their names.", body = Vec<InstallationView>)),
)]
async fn list_installations(
    State(s): State<AppState>,
) -> Result<Json<Vec<InstallationView>>, ApiError> {
    let all = s.installations.list().await.map_err(ApiError::internal)?;
    Ok(Json(all.iter().map(installation_json).collect()))
}

/// Add an installation.
#[utoipa::path(
    post,
    path = "/installations",
    tag = "installations",
    request_body = CreateInstallation,
    responses(
        (status = 201, description = "Created (the plugin's `on-install` ran unless skipped).", body = InstallationView),
        (status = 400, description = "A value out of bounds or unstorable.", body = ErrorBody),
        (status = 409, description = "Another installation holds the routing key.", body = ErrorBody),
        (status = 422, description = "No such plugin, values that break its schema, an unknown agent, the plugin refusing.", body = ErrorBody),
    ),
)]
async fn create_installation(
    State(s): State<AppState>,
    Json(body): Json<CreateInstallation>,
) -> Result<(StatusCode, Json<InstallationView>), ApiError> {
    let skip_on_install = body.skip_on_install;
    let new = body.into_new()?;
    let created = add_installation(&s, new, skip_on_install).await?;
    Ok((StatusCode::CREATED, Json(installation_json(&created))))
}

/// The access policy named `open` (also the default) or `bound`; 422 for anything else.
pub(crate) fn access_policy(name: Option<&str>) -> Result<AccessPolicy, ApiError> {
    match name {
        None | Some("open") => Ok(AccessPolicy::Open),
        Some("bound") => Ok(AccessPolicy::Bound),
        Some(other) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("access_policy {other:?}: use \"open\" or \"bound\""),
        )),
    }
}

/// Adds an installation (`POST /api/installations` and the console's form).
pub(crate) async fn add_installation(
    s: &AppState,
    new: NewInstallation,
    skip_on_install: bool,
) -> Result<Installation, ApiError> {
    let options = AddOptions {
        skip_on_install,
        public_url: s.public_url.to_string(),
        agents: Some(s.agent_names.to_vec()),
    };
    // No plugin or values that break its schema → 422; the plugin refusing → 422; a value
    // out of bounds or unstorable (NUL, too long, debounce outside 1 ms–1 h) → 400; a second
    // installation for the routing key → 409.
    onboarding::add(
        &s.runtime,
        &s.installations,
        new,
        &options,
        s.clock.now_ms(),
    )
    .await
    .map_err(add_error)
}

/// The status of a lifecycle error: no such installation → 404; a value out of bounds or
/// unstorable (NUL, too long, debounce outside 1 ms–1 h) → 400; a routing key another
/// installation holds → 409; the store failing → 500 (logged, not shown); anything else (no
/// plugin, the schema, an unknown agent or secret name, the plugin refusing) → 422.
fn add_error(e: AddError) -> ApiError {
    match e {
        AddError::NotFound { .. } => ApiError::not_found(e.to_string()),
        AddError::Store(StoreError::Invalid { .. }) => {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        }
        AddError::Store(StoreError::Conflict { .. }) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        AddError::Store(e) => ApiError::internal(e),
        e => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Body of `PATCH /api/installations/{id}`: the fields of `installations update`; absent ones
/// stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateInstallation {
    /// A new name.
    #[serde(default)]
    name: Option<String>,
    /// Config values to set.
    #[serde(default)]
    config: BTreeMap<String, String>,
    /// Config keys to remove.
    #[serde(default)]
    unset_config: Vec<String>,
    /// `open` or `bound`.
    #[serde(default)]
    access_policy: Option<String>,
    /// Another configured agent.
    #[serde(default)]
    agent: Option<String>,
    /// Debounce window (ms, 1 – 3600000).
    #[serde(default)]
    debounce_ms: Option<i64>,
}

fn parse_policy(policy: Option<&str>) -> Result<Option<AccessPolicy>, ApiError> {
    match policy {
        None => Ok(None),
        Some("open") => Ok(Some(AccessPolicy::Open)),
        Some("bound") => Ok(Some(AccessPolicy::Bound)),
        Some(other) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("access_policy {other:?}: use \"open\" or \"bound\""),
        )),
    }
}

/// Change an installation; absent fields stay as they are.
#[utoipa::path(
    patch,
    path = "/installations/{id}",
    tag = "installations",
    params(InstallationId),
    request_body = UpdateInstallation,
    responses(
        (status = 200, description = "The installation as changed.", body = InstallationView),
        (status = 400, description = "A value out of bounds or unstorable.", body = ErrorBody),
        (status = 404, description = "No such installation.", body = ErrorBody),
        (status = 422, description = "Values that break the plugin's schema, an unknown agent or secret name, the plugin refusing.", body = ErrorBody),
    ),
)]
async fn update_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateInstallation>,
) -> Result<Json<InstallationView>, ApiError> {
    if let Some(debounce_ms) = body.debounce_ms {
        hygiene::check_debounce_ms(debounce_ms)
            .map_err(|what| ApiError::new(StatusCode::BAD_REQUEST, what))?;
    }
    let change = InstallationUpdate {
        name: body.name,
        set_config: body.config,
        unset_config: body.unset_config,
        access_policy: parse_policy(body.access_policy.as_deref())?,
        agent: body.agent,
        debounce_ms: body.debounce_ms,
    };
    Ok(Json(installation_json(&update(&s, &id, &change).await?)))
}

/// Changes an installation (`PATCH /api/installations/{id}` and the console's edit form).
pub(crate) async fn update(
    s: &AppState,
    id: &str,
    change: &InstallationUpdate,
) -> Result<Installation, ApiError> {
    onboarding::update(
        &s.runtime,
        &s.installations,
        id,
        change,
        Some(&s.agent_names),
        s.clock.now_ms(),
    )
    .await
    .map_err(add_error)
}

/// Body of `POST /api/installations/{id}/rotate-secret`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateSecrets {
    /// The secrets to replace, by name (values are never returned).
    secrets: BTreeMap<String, String>,
}

/// Replace some of an installation's secrets.
#[utoipa::path(
    post,
    path = "/installations/{id}/rotate-secret",
    tag = "installations",
    params(InstallationId),
    request_body = RotateSecrets,
    responses(
        (status = 200, description = "The installation (secret names only).", body = InstallationView),
        (status = 400, description = "A value out of bounds or unstorable.", body = ErrorBody),
        (status = 404, description = "No such installation.", body = ErrorBody),
        (status = 422, description = "Values that break the plugin's schema, an unknown agent or secret name, the plugin refusing.", body = ErrorBody),
    ),
)]
async fn rotate_installation_secrets(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<RotateSecrets>,
) -> Result<Json<InstallationView>, ApiError> {
    Ok(Json(installation_json(
        &rotate_secrets(&s, &id, &body.secrets).await?,
    )))
}

/// Replaces some of an installation's secrets (`POST /api/installations/{id}/rotate-secret`
/// and the console's form).
pub(crate) async fn rotate_secrets(
    s: &AppState,
    id: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<Installation, ApiError> {
    onboarding::rotate_secrets(&s.runtime, &s.installations, id, secrets, s.clock.now_ms())
        .await
        .map_err(add_error)
}

/// Body of `POST /api/installations/{id}/restore` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RestoreInstallation {
    /// Skip the plugin's `on-install` call.
    #[serde(default)]
    skip_on_install: bool,
}

/// Restore a revoked installation.
#[utoipa::path(
    post,
    path = "/installations/{id}/restore",
    tag = "installations",
    params(InstallationId),
    request_body(content = Option<RestoreInstallation>, description = "Optional."),
    responses(
        (status = 200, description = "The installation, active again.", body = InstallationView),
        (status = 400, description = "A value out of bounds or unstorable.", body = ErrorBody),
        (status = 404, description = "No such installation.", body = ErrorBody),
        (status = 422, description = "Values that break the plugin's schema, an unknown agent or secret name, the plugin refusing.", body = ErrorBody),
    ),
)]
async fn restore_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<RestoreInstallation>>,
) -> Result<Json<InstallationView>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(installation_json(
        &restore(&s, &id, body.skip_on_install).await?,
    )))
}

/// Restores a revoked installation (`POST /api/installations/{id}/restore` and the console's
/// button).
pub(crate) async fn restore(
    s: &AppState,
    id: &str,
    skip_on_install: bool,
) -> Result<Installation, ApiError> {
    let options = AddOptions {
        skip_on_install,
        public_url: s.public_url.to_string(),
        agents: None,
    };
    onboarding::restore(&s.runtime, &s.installations, id, &options, s.clock.now_ms())
        .await
        .map_err(add_error)
}

/// A pairing as the API shows it (never its code).
#[derive(Debug, Serialize, ToSchema)]
struct PairingView {
    /// The pairing's id.
    id: String,
    /// The installation the sender wrote to.
    installation_id: String,
    /// The sender's channel user id.
    sender_id: String,
    /// Other ids of the sender, as `[scheme, id]` pairs.
    sender_alt_ids: Vec<(String, String)>,
    /// The sender's display name, if the channel gave one.
    sender_name: Option<String>,
    /// `pending`, `approved`, `denied`.
    status: String,
    /// When it was asked for (epoch ms).
    created_at_ms: i64,
    /// When the code expires (epoch ms).
    expires_at_ms: i64,
    /// When it was decided (epoch ms).
    decided_at_ms: Option<i64>,
}

/// A pairing as the API shows it (never its code).
fn pairing_json(p: &Pairing) -> PairingView {
    PairingView {
        id: p.id.clone(),
        installation_id: p.installation_id.clone(),
        sender_id: p.sender_id.clone(),
        sender_alt_ids: p.sender_alt_ids.clone(),
        sender_name: p.sender_name.clone(),
        status: p.status.clone(),
        created_at_ms: p.created_at_ms,
        expires_at_ms: p.expires_at_ms,
        decided_at_ms: p.decided_at_ms,
    }
}

/// An approved pairing and the binding it made.
#[derive(Debug, Serialize, ToSchema)]
struct ApprovedPairing {
    /// The pairing, now `approved`.
    pairing: PairingView,
    /// The binding it created or refreshed.
    binding: UserBinding,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PairingsQuery {
    /// Only this installation's.
    installation: Option<String>,
}

/// The `{code}` path parameter of the pairing routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read as `Path<String>`; this names the parameter for the document
struct PairingCode {
    /// The pairing code the sender was shown.
    code: String,
}

/// List the pending pairings.
#[utoipa::path(
    get,
    path = "/pairings",
    tag = "pairings",
    params(PairingsQuery),
    responses((status = 200, description = "Pending pairings, never their codes.", body = Vec<PairingView>)),
)]
async fn list_pairings(
    State(s): State<AppState>,
    Query(q): Query<PairingsQuery>,
) -> Result<Json<Vec<PairingView>>, ApiError> {
    let pending = pending_pairings(&s, q.installation.as_deref()).await?;
    Ok(Json(pending.iter().map(pairing_json).collect()))
}

/// The pending pairings (of one installation, if given): `GET /api/pairings` and the console.
pub(crate) async fn pending_pairings(
    s: &AppState,
    installation: Option<&str>,
) -> Result<Vec<Pairing>, ApiError> {
    s.db.pairings()
        .list_pending(installation, s.clock.now_ms())
        .await
        .map_err(ApiError::internal)
}

/// An unknown, expired or decided code → 404 / 410 / 409 with what to do; a sender bound to
/// another user → 409.
fn pairing_error(e: PairingError) -> ApiError {
    match e {
        PairingError::Unknown { .. } => ApiError::not_found(e.to_string()),
        PairingError::Expired { .. } => ApiError::new(StatusCode::GONE, e.to_string()),
        PairingError::Decided { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        PairingError::Binding(BindingError::Store(e)) | PairingError::Store(e) => {
            ApiError::internal(e)
        }
        PairingError::Binding(e) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Body of `POST /api/pairings/{code}/approve` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApprovePairing {
    /// The host-side user the sender is bound to (default: their channel user id).
    #[serde(default)]
    user_ref: Option<String>,
}

/// Approve a pairing code: bind its sender and tell them.
#[utoipa::path(
    post,
    path = "/pairings/{code}/approve",
    tag = "pairings",
    params(PairingCode),
    request_body(content = Option<ApprovePairing>, description = "Optional."),
    responses(
        (status = 200, description = "Approved; the sender is told.", body = ApprovedPairing),
        (status = 400, description = "A `user_ref` too long or unstorable.", body = ErrorBody),
        (status = 404, description = "No such code.", body = ErrorBody),
        (status = 409, description = "Already decided, or the sender is bound to another user.", body = ErrorBody),
        (status = 410, description = "The code expired.", body = ErrorBody),
    ),
)]
async fn approve_pairing(
    State(s): State<AppState>,
    Path(code): Path<String>,
    body: Option<Json<ApprovePairing>>,
) -> Result<Json<ApprovedPairing>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let approved = approve_code(&s, &code, body.user_ref.as_deref()).await?;
    Ok(Json(ApprovedPairing {
        pairing: pairing_json(&approved.pairing),
        binding: approved.binding,
    }))
}

/// Approves a pairing code, binding its sender and queueing the granted notice (`POST
/// /api/pairings/{code}/approve` and the console's form).
pub(crate) async fn approve_code(
    s: &AppState,
    code: &str,
    user_ref: Option<&str>,
) -> Result<crate::store::Approved, ApiError> {
    check_ids(&[("user_ref", user_ref)])?;
    let approved = crate::pairing::approve(&s.db.pairings(), code, user_ref, s.clock.now_ms())
        .await
        .map_err(pairing_error)?;
    s.outbox.wake();
    Ok(approved)
}

/// Deny a pairing code.
#[utoipa::path(
    post,
    path = "/pairings/{code}/deny",
    tag = "pairings",
    params(PairingCode),
    responses(
        (status = 200, description = "Denied.", body = PairingView),
        (status = 404, description = "No such code.", body = ErrorBody),
        (status = 409, description = "Already decided, or the sender is bound to another user.", body = ErrorBody),
        (status = 410, description = "The code expired.", body = ErrorBody),
    ),
)]
async fn deny_pairing(
    State(s): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<PairingView>, ApiError> {
    Ok(Json(pairing_json(&deny_code(&s, &code).await?)))
}

/// Denies a pairing code (`POST /api/pairings/{code}/deny` and the console's form).
pub(crate) async fn deny_code(s: &AppState, code: &str) -> Result<Pairing, ApiError> {
    s.db.pairings()
        .deny(code, s.clock.now_ms())
        .await
        .map_err(pairing_error)
}

pub(crate) async fn find(s: &AppState, id: &str) -> Result<Installation, ApiError> {
    s.installations
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no installation `{id}`")))
}

/// Show an installation.
#[utoipa::path(
    get,
    path = "/installations/{id}",
    tag = "installations",
    params(InstallationId),
    responses(
        (status = 200, description = "The installation (secret names only).", body = InstallationView),
        (status = 404, description = "No such installation.", body = ErrorBody),
    ),
)]
async fn show_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InstallationView>, ApiError> {
    Ok(Json(installation_json(&find(&s, &id).await?)))
}

/// Revoke an installation (its webhooks are refused until restored).
#[utoipa::path(
    post,
    path = "/installations/{id}/revoke",
    tag = "installations",
    params(InstallationId),
    responses(
        (status = 200, description = "The installation, revoked.", body = InstallationView),
        (status = 404, description = "No such installation.", body = ErrorBody),
    ),
)]
async fn revoke_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InstallationView>, ApiError> {
    Ok(Json(installation_json(&revoke(&s, &id).await?)))
}

/// Revokes an installation (`POST /api/installations/{id}/revoke` and the console's button);
/// 404 for an unknown id.
pub(crate) async fn revoke(s: &AppState, id: &str) -> Result<Installation, ApiError> {
    find(s, id).await?;
    onboarding::revoke(&s.runtime, &s.installations, id, s.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    find(s, id).await
}

/// List an installation's user bindings.
#[utoipa::path(
    get,
    path = "/installations/{id}/bindings",
    tag = "bindings",
    params(InstallationId),
    responses(
        (status = 200, description = "Its bindings.", body = Vec<UserBinding>),
        (status = 404, description = "No such installation.", body = ErrorBody),
    ),
)]
async fn list_bindings(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<UserBinding>>, ApiError> {
    find(&s, &id).await?;
    let bindings = s
        .records
        .list_bindings(&id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(bindings))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddBinding {
    /// The channel user id (the participant id the plugin reports).
    user_id: String,
    /// The host-side user.
    user_ref: String,
    /// Other ids of the same user, as `[scheme, id]` pairs.
    #[serde(default)]
    alt_ids: Vec<(String, String)>,
}

/// The `(field, value)` list of alt ids, for [`check_ids`].
fn alt_id_fields(alt_ids: &[(String, String)]) -> Vec<(&'static str, Option<&str>)> {
    alt_ids
        .iter()
        .flat_map(|(scheme, id)| {
            [
                ("alt_ids", Some(scheme.as_str())),
                ("alt_ids", Some(id.as_str())),
            ]
        })
        .collect()
}

/// Binding ids are ids: bounded like a message's ([`MAX_ID_BYTES`]); 400 beyond.
fn check_ids(ids: &[(&str, Option<&str>)]) -> Result<(), ApiError> {
    for (field, value) in ids {
        hygiene::check_opt(field, *value, MAX_ID_BYTES)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    Ok(())
}

fn binding_error(e: BindingError) -> ApiError {
    match e {
        BindingError::Store(e) => ApiError::internal(e),
        other => ApiError::new(StatusCode::CONFLICT, other.to_string()),
    }
}

/// Bind a channel user to a host user.
#[utoipa::path(
    post,
    path = "/installations/{id}/bindings",
    tag = "bindings",
    params(InstallationId),
    request_body = AddBinding,
    responses(
        (status = 201, description = "Bound.", body = UserBinding),
        (status = 400, description = "An id too long or unstorable.", body = ErrorBody),
        (status = 404, description = "No such installation.", body = ErrorBody),
        (status = 409, description = "The user or an alt id is bound to another user.", body = ErrorBody),
    ),
)]
async fn add_binding(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<AddBinding>,
) -> Result<(StatusCode, Json<UserBinding>), ApiError> {
    check_ids(&[
        ("user_id", Some(&body.user_id)),
        ("user_ref", Some(&body.user_ref)),
    ])?;
    check_ids(&alt_id_fields(&body.alt_ids))?;
    find(&s, &id).await?;
    let binding = s
        .records
        .bind_user(
            &id,
            &body.user_id,
            &body.user_ref,
            &body.alt_ids,
            s.clock.now_ms(),
        )
        .await
        .map_err(binding_error)?;
    Ok((StatusCode::CREATED, Json(binding)))
}

/// Remove a user binding.
#[utoipa::path(
    delete,
    path = "/installations/{id}/bindings/{user_id}",
    tag = "bindings",
    params(
        ("id" = String, Path, description = "The installation's id."),
        ("user_id" = String, Path, description = "The bound channel user id."),
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such binding.", body = ErrorBody),
    ),
)]
async fn remove_binding(
    State(s): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let removed = s
        .records
        .unbind_user(&id, &user_id)
        .await
        .map_err(ApiError::internal)?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no binding of `{user_id}` in `{id}`"
        )))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MintToken {
    /// The channel user id the token binds.
    user_id: String,
}

/// A minted binding token.
#[derive(Debug, Serialize, ToSchema)]
struct MintedToken {
    /// The one-time token (shown once).
    token: String,
    /// How to redeem it.
    redeem: String,
    /// How long it stays valid.
    expires_in_minutes: u32,
}

/// Mint a one-time binding token for a channel user.
#[utoipa::path(
    post,
    path = "/installations/{id}/binding-tokens",
    tag = "bindings",
    params(InstallationId),
    request_body = MintToken,
    responses(
        (status = 201, description = "The token (valid 15 minutes, once).", body = MintedToken),
        (status = 400, description = "A `user_id` too long or unstorable.", body = ErrorBody),
        (status = 404, description = "No such installation.", body = ErrorBody),
    ),
)]
async fn mint_binding_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MintToken>,
) -> Result<(StatusCode, Json<MintedToken>), ApiError> {
    check_ids(&[("user_id", Some(&body.user_id))])?;
    find(&s, &id).await?;
    let token = s
        .records
        .mint_binding_token(&id, &body.user_id, s.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(MintedToken {
            token,
            redeem: "POST /api/binding-tokens/redeem {\"token\", \"user_ref\"}".into(),
            expires_in_minutes: 15,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeemToken {
    /// The minted token.
    token: String,
    /// The host-side user to bind.
    user_ref: String,
    /// Other ids of the same user, as `[scheme, id]` pairs.
    #[serde(default)]
    alt_ids: Vec<(String, String)>,
}

/// Redeem a binding token: bind its channel user to a host user.
#[utoipa::path(
    post,
    path = "/binding-tokens/redeem",
    tag = "bindings",
    request_body = RedeemToken,
    responses(
        (status = 200, description = "Bound.", body = UserBinding),
        (status = 400, description = "An id too long or unstorable.", body = ErrorBody),
        (status = 409, description = "An unknown, used or expired token, or a conflicting binding.", body = ErrorBody),
    ),
)]
async fn redeem_binding_token(
    State(s): State<AppState>,
    Json(body): Json<RedeemToken>,
) -> Result<Json<UserBinding>, ApiError> {
    check_ids(&[("user_ref", Some(&body.user_ref))])?;
    check_ids(&alt_id_fields(&body.alt_ids))?;
    let binding = s
        .records
        .redeem_binding_token(&body.token, &body.user_ref, &body.alt_ids, s.clock.now_ms())
        .await
        .map_err(binding_error)?;
    Ok(Json(binding))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SessionsQuery {
    /// The installation whose sessions to list.
    installation: String,
}

/// List an installation's sessions with their messages.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    params(SessionsQuery),
    responses(
        (status = 200, description = "Its sessions, each with its messages oldest first.", body = Vec<crate::store::SessionHistory>),
        (status = 400, description = "No `installation` given.", body = ErrorBody),
    ),
)]
async fn list_sessions(
    State(s): State<AppState>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Vec<crate::store::SessionHistory>>, ApiError> {
    let histories = s
        .records
        .list_session_histories(&q.installation)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(histories))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this installation's.
    installation: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    limit: Option<u32>,
}

/// List the inbound audit: events dropped, and why.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit rows, newest first.", body = Vec<crate::store::AuditRow>)),
)]
async fn list_audit(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<crate::store::AuditRow>>, ApiError> {
    let rows = s
        .records
        .list_audit(q.installation.as_deref(), q.limit.unwrap_or(100).min(1000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows))
}
