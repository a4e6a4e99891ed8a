//! The admin API's plugin endpoints: what is loaded (with digests and health) and reloads of
//! the plugins directory. Owns the HTTP mapping only; the reload itself is
//! [`crate::runtime::reload`].

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::runtime::reload::ReloadReport;
use crate::runtime::{HealthState, Source};

/// The routes (nested under `/api`), each registered with its `#[utoipa::path]` operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins))
        .routes(routes!(reload_plugins))
}

/// The loaded plugins.
#[derive(Debug, Serialize, ToSchema)]
struct PluginList {
    /// Every loaded plugin.
    plugins: Vec<PluginView>,
}

/// A loaded plugin with its source, digest and health.
#[derive(Debug, Serialize, ToSchema)]
struct PluginView {
    /// The plugin's name.
    name: String,
    /// Its version (semver).
    version: String,
    /// The channel it serves.
    channel: String,
    /// `bundled`, or the file it was loaded from.
    source: String,
    /// The SHA-256 of its component.
    sha256: String,
    /// Calls into it since it was loaded.
    calls: u64,
    /// Calls that failed.
    failures: u64,
    /// Whether it is degraded (recent calls kept failing).
    degraded: bool,
    /// Instances ready in its pool.
    idle_instances: usize,
}

/// List the loaded plugins with their digests and health.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    responses((status = 200, description = "The loaded plugins.", body = PluginList)),
)]
async fn list_plugins(State(state): State<AppState>) -> Json<PluginList> {
    let plugins = state
        .runtime
        .plugins()
        .iter()
        .map(|p| {
            let stats = p.stats();
            PluginView {
                name: p.name().to_owned(),
                version: p.manifest().version.to_string(),
                channel: p.manifest().channel.clone(),
                source: match p.source() {
                    Source::Bundled => "bundled".to_string(),
                    Source::File(path) => path.display().to_string(),
                },
                sha256: p.sha256().to_owned(),
                calls: stats.calls,
                failures: stats.failures,
                degraded: stats.state == HealthState::Degraded,
                idle_instances: p.idle_instances(),
            }
        })
        .collect();
    Json(PluginList { plugins })
}

/// Reload the plugins directory.
///
/// Swaps in changed plugin files (see the reload module); the answer says what was swapped,
/// added, left unchanged and refused.
#[utoipa::path(
    post,
    path = "/plugins/reload",
    tag = "plugins",
    responses((status = 200, description = "What the reload did.", body = ReloadReport)),
)]
async fn reload_plugins(State(state): State<AppState>) -> Json<ReloadReport> {
    Json(state.reloader.reload().await)
}
