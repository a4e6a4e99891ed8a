//! The admin API's plugin endpoints: what is loaded (with digests and health) and reloads of
//! the plugins directory. Owns the HTTP mapping only; the reload itself is
//! [`crate::runtime::reload`].

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::runtime::{HealthState, Source};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/plugins", get(list_plugins))
        .route("/plugins/reload", post(reload_plugins))
}

/// `GET /api/plugins`: every loaded plugin with its source, digest and health.
async fn list_plugins(State(state): State<AppState>) -> Json<Value> {
    let plugins: Vec<Value> = state
        .runtime
        .plugins()
        .iter()
        .map(|p| {
            let stats = p.stats();
            json!({
                "name": p.name(),
                "version": p.manifest().version.to_string(),
                "channel": p.manifest().channel,
                "source": match p.source() {
                    Source::Bundled => "bundled".to_string(),
                    Source::File(path) => path.display().to_string(),
                },
                "sha256": p.sha256(),
                "calls": stats.calls,
                "failures": stats.failures,
                "degraded": stats.state == HealthState::Degraded,
                "idle_instances": p.idle_instances(),
            })
        })
        .collect();
    Json(json!({ "plugins": plugins }))
}

/// `POST /api/plugins/reload`: swaps in changed plugin files (see the reload module); the
/// answer says what was swapped, added, left unchanged and refused.
async fn reload_plugins(State(state): State<AppState>) -> Json<Value> {
    let report = state.reloader.reload().await;
    Json(json!(report))
}
