//! Adding an installation: the one path the CLI and the admin API share. The values are
//! checked against the channel plugin's installation schema (required config values may be left
//! to `on-install`), the installation's id is chosen, the plugin's `on-install` registers the
//! installation's own URL with the channel and learns what the channel says about the bot
//! (stored into the config), the schema is checked in full, the routing key comes from the
//! schema's routing-key config when none is given, and only then is the row written.
//!
//! Owns that order; must not know any channel's keys (they come from the manifest).

use std::sync::Arc;

use crate::domain::InstallationContext;
use crate::domain::schema::Violation;
use crate::runtime::{Runtime, types};
use crate::store::{
    Installation, InstallationStore, NewInstallation, StoreError, new_installation_id,
};

/// Why an installation was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// No loaded plugin serves the channel.
    #[error(
        "no loaded plugin serves channel `{channel}`; `switchboard plugins list` shows the channels"
    )]
    NoPlugin {
        /// The channel asked for.
        channel: String,
    },
    /// The values break the plugin's installation schema.
    #[error("the values do not fit channel `{channel}`:\n{}\n{channel} takes:\n{schema}",
        violations.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
    Schema {
        /// The channel.
        channel: String,
        /// What is wrong.
        violations: Vec<Violation>,
        /// The schema, described.
        schema: String,
    },
    /// The plugin's `on-install` refused the installation (bad credentials, say).
    #[error("the {channel} plugin refused the installation: {reason}")]
    Refused {
        /// The channel.
        channel: String,
        /// The plugin's reason.
        reason: String,
    },
    /// The store refused it (a duplicate routing key, an unstorable value) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options of [`add`].
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// Skip the plugin's `on-install` (offline setups, tests).
    pub skip_on_install: bool,
    /// The host's public URL, to tell the plugin its webhook URL.
    pub public_url: String,
}

/// Adds `new` after checking it against its channel's schema and asking the plugin.
pub async fn add(
    runtime: &Runtime,
    installations: &InstallationStore,
    mut new: NewInstallation,
    options: &AddOptions,
    now_ms: i64,
) -> Result<Installation, AddError> {
    let plugin = runtime
        .plugin_for_channel(&new.channel)
        .ok_or_else(|| AddError::NoPlugin {
            channel: new.channel.clone(),
        })?;
    let schema = &plugin.manifest().installation;
    let schema_error = |violations| AddError::Schema {
        channel: new.channel.clone(),
        violations,
        schema: schema.describe(),
    };
    // A required config value `on-install` learns from the channel (the bot's own id) may be
    // left out when `on-install` runs: the full check comes after its answer is merged.
    let violations: Vec<Violation> = schema
        .check(&new.config, &new.secrets)
        .into_iter()
        .filter(|v| {
            options.skip_on_install
                || !matches!(
                    v,
                    Violation::Missing {
                        section: "config",
                        ..
                    }
                )
        })
        .collect();
    if !violations.is_empty() {
        return Err(schema_error(violations));
    }
    // The id is chosen now so `on-install` can register the installation's own URL.
    let id = new_installation_id();
    if !options.skip_on_install {
        let cx = Arc::new(InstallationContext {
            id: id.clone(),
            config: new.config.clone(),
            secrets: new
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), crate::domain::Secret::new(v.clone())))
                .collect(),
        });
        let webhook_url = format!(
            "{}/hooks/{}/{id}",
            options.public_url.trim_end_matches('/'),
            new.channel
        );
        let refused = |reason: String| AddError::Refused {
            channel: new.channel.clone(),
            reason,
        };
        let learned = match plugin.on_install(&cx, &webhook_url).await {
            Ok(Ok(pairs)) => pairs,
            Ok(Err(types::PluginError::Unauthorized(reason))) => {
                return Err(refused(format!(
                    "{reason} (check the secrets, then add it again)"
                )));
            }
            Ok(Err(
                types::PluginError::Fatal(reason) | types::PluginError::InvalidInput(reason),
            )) => return Err(refused(reason)),
            Ok(Err(types::PluginError::Retryable(reason))) => {
                return Err(refused(format!(
                    "{reason} (a temporary failure: try again, or add it with --skip-on-install)"
                )));
            }
            Err(call) => return Err(refused(call.to_string())),
        };
        for (key, value) in learned {
            new.config.entry(key).or_insert(value);
        }
        // Keys `on-install` adds beyond the schema are the plugin's business; what it must do
        // is fill the required values the operator left out.
        let missing: Vec<Violation> = schema
            .check(&new.config, &new.secrets)
            .into_iter()
            .filter(|v| matches!(v, Violation::Missing { .. }))
            .collect();
        if !missing.is_empty() {
            return Err(schema_error(missing));
        }
    }
    if new.routing_key.is_empty()
        && let Some(key) = schema.routing_key_of(&new.config)
    {
        new.routing_key = key.to_string();
    }
    Ok(installations.create_with_id(&id, &new, now_ms).await?)
}

/// Revokes installation `id`: the plugin's `on-uninstall` undoes what `on-install` registered
/// (best effort: a failure is logged, the installation is revoked anyway), then its events are
/// dropped from now on. Returns whether it existed.
pub async fn revoke(
    runtime: &Runtime,
    installations: &InstallationStore,
    id: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let Some(installation) = installations.get(id).await? else {
        return Ok(false);
    };
    if installation.is_active()
        && let Some(plugin) = runtime.plugin_for_channel(&installation.channel)
    {
        let cx = Arc::new(installation.context());
        match plugin.on_uninstall(&cx).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(installation = %id, "the plugin's on-uninstall failed ({e:?}); revoking anyway")
            }
            Err(e) => {
                tracing::warn!(installation = %id, "the plugin's on-uninstall call failed ({e}); revoking anyway")
            }
        }
    }
    installations.revoke(id, now_ms).await
}
