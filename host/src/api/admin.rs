//! The admin API (JSON, bearer token): installations and their lifecycle (update, secret
//! rotation, revoke, restore), pairing codes, user bindings and binding tokens, sessions with
//! their messages, and the inbound audit. Secrets are accepted on create and rotation and never
//! returned.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::hygiene::{self, MAX_ID_BYTES};
use crate::onboarding::{self, AddError, AddOptions, InstallationUpdate};
use crate::store::{
    AccessPolicy, BindingError, Installation, NewInstallation, Pairing, PairingError, StoreError,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/installations",
            get(list_installations).post(create_installation),
        )
        .route(
            "/installations/{id}",
            get(show_installation).patch(update_installation),
        )
        .route("/installations/{id}/revoke", post(revoke_installation))
        .route("/installations/{id}/restore", post(restore_installation))
        .route(
            "/installations/{id}/rotate-secret",
            post(rotate_installation_secrets),
        )
        .route("/pairings", get(list_pairings))
        .route("/pairings/{code}/approve", post(approve_pairing))
        .route("/pairings/{code}/deny", post(deny_pairing))
        .route(
            "/installations/{id}/bindings",
            get(list_bindings).post(add_binding),
        )
        .route(
            "/installations/{id}/bindings/{user_id}",
            delete(remove_binding),
        )
        .route(
            "/installations/{id}/binding-tokens",
            post(mint_binding_token),
        )
        .route("/binding-tokens/redeem", post(redeem_binding_token))
        .route("/sessions", get(list_sessions))
        .route("/audit", get(list_audit))
}

/// An installation as the API shows it: secrets reduced to their names.
pub(crate) fn installation_json(i: &Installation) -> Value {
    json!({
        "id": i.id,
        "channel": i.channel,
        "routing_key": i.routing_key,
        "name": i.name,
        "config": i.config,
        "secrets": i.secrets.keys().collect::<Vec<_>>(),
        "access_policy": i.access_policy.as_str(),
        "status": i.status.as_str(),
        "agent": i.agent,
        "debounce_ms": i.debounce_ms,
        "created_at_ms": i.created_at_ms,
        "updated_at_ms": i.updated_at_ms,
    })
}

/// Body of `POST /api/installations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInstallation {
    channel: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Skip the plugin's `on-install` call.
    #[serde(default)]
    skip_on_install: bool,
    #[serde(default)]
    access_policy: Option<String>,
    agent: Option<String>,
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

async fn list_installations(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = s.installations.list().await.map_err(ApiError::internal)?;
    Ok(Json(Value::Array(
        all.iter().map(installation_json).collect(),
    )))
}

async fn create_installation(
    State(s): State<AppState>,
    Json(body): Json<CreateInstallation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateInstallation {
    #[serde(default)]
    name: Option<String>,
    /// Config values to set.
    #[serde(default)]
    config: BTreeMap<String, String>,
    /// Config keys to remove.
    #[serde(default)]
    unset_config: Vec<String>,
    #[serde(default)]
    access_policy: Option<String>,
    #[serde(default)]
    agent: Option<String>,
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

async fn update_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateInstallation>,
) -> Result<Json<Value>, ApiError> {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSecrets {
    secrets: BTreeMap<String, String>,
}

async fn rotate_installation_secrets(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<RotateSecrets>,
) -> Result<Json<Value>, ApiError> {
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreInstallation {
    #[serde(default)]
    skip_on_install: bool,
}

async fn restore_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<RestoreInstallation>>,
) -> Result<Json<Value>, ApiError> {
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
fn pairing_json(p: &Pairing) -> Value {
    json!({
        "id": p.id,
        "installation_id": p.installation_id,
        "sender_id": p.sender_id,
        "sender_alt_ids": p.sender_alt_ids,
        "sender_name": p.sender_name,
        "status": p.status,
        "created_at_ms": p.created_at_ms,
        "expires_at_ms": p.expires_at_ms,
        "decided_at_ms": p.decided_at_ms,
    })
}

#[derive(Debug, Deserialize)]
struct PairingsQuery {
    installation: Option<String>,
}

async fn list_pairings(
    State(s): State<AppState>,
    Query(q): Query<PairingsQuery>,
) -> Result<Json<Value>, ApiError> {
    let pending = pending_pairings(&s, q.installation.as_deref()).await?;
    Ok(Json(Value::Array(
        pending.iter().map(pairing_json).collect(),
    )))
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovePairing {
    /// The host-side user the sender is bound to (default: their channel user id).
    #[serde(default)]
    user_ref: Option<String>,
}

async fn approve_pairing(
    State(s): State<AppState>,
    Path(code): Path<String>,
    body: Option<Json<ApprovePairing>>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let approved = approve_code(&s, &code, body.user_ref.as_deref()).await?;
    Ok(Json(json!({
        "pairing": pairing_json(&approved.pairing),
        "binding": serde_json::to_value(&approved.binding).map_err(ApiError::internal)?,
    })))
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

async fn deny_pairing(
    State(s): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
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

async fn show_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(installation_json(&find(&s, &id).await?)))
}

async fn revoke_installation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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

async fn list_bindings(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    find(&s, &id).await?;
    let bindings = s
        .records
        .list_bindings(&id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(bindings).map_err(ApiError::internal)?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBinding {
    /// The channel user id (the participant id the plugin reports).
    user_id: String,
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

async fn add_binding(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<AddBinding>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(binding).map_err(ApiError::internal)?),
    ))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintToken {
    user_id: String,
}

async fn mint_binding_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MintToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_ids(&[("user_id", Some(&body.user_id))])?;
    find(&s, &id).await?;
    let token = s
        .records
        .mint_binding_token(&id, &body.user_id, s.clock.now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "redeem": "POST /api/binding-tokens/redeem {\"token\", \"user_ref\"}",
            "expires_in_minutes": 15
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemToken {
    token: String,
    user_ref: String,
    #[serde(default)]
    alt_ids: Vec<(String, String)>,
}

async fn redeem_binding_token(
    State(s): State<AppState>,
    Json(body): Json<RedeemToken>,
) -> Result<Json<Value>, ApiError> {
    check_ids(&[("user_ref", Some(&body.user_ref))])?;
    check_ids(&alt_id_fields(&body.alt_ids))?;
    let binding = s
        .records
        .redeem_binding_token(&body.token, &body.user_ref, &body.alt_ids, s.clock.now_ms())
        .await
        .map_err(binding_error)?;
    Ok(Json(
        serde_json::to_value(binding).map_err(ApiError::internal)?,
    ))
}

#[derive(Debug, Deserialize)]
struct SessionsQuery {
    installation: String,
}

async fn list_sessions(
    State(s): State<AppState>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let histories = s
        .records
        .list_session_histories(&q.installation)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(histories).map_err(ApiError::internal)?,
    ))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    installation: Option<String>,
    limit: Option<u32>,
}

async fn list_audit(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = s
        .records
        .list_audit(q.installation.as_deref(), q.limit.unwrap_or(100).min(1000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(rows).map_err(ApiError::internal)?,
    ))
}
