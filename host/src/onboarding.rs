//! An installation's lifecycle, the one path the CLI and the admin API share.
//!
//! Adding: the values are checked against the channel plugin's installation schema (required
//! config values may be left to `on-install`) and the bound agent against the configured ones,
//! the installation's id is chosen, the plugin's `on-install` registers the installation's own
//! URL with the channel and learns what the channel says about the bot (stored into the
//! config), the schema is checked in full, the routing key comes from the schema's routing-key
//! config when none is given, and only then is the row written. A routing key a revoked
//! installation holds is refused with the advice to restore that one (its sessions and
//! bindings stay with it).
//!
//! After that: [`update`] (settings, checked the same way), [`rotate_secrets`] (only names the
//! schema declares as secrets; re-sealed; read by the next inbound request, since nothing
//! caches installations), [`revoke`] and [`restore`].
//!
//! Owns that order; must not know any channel's keys (they come from the manifest) or hold SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::InstallationContext;
use crate::domain::schema::Violation;
use crate::runtime::{Plugin, Runtime, types};
use crate::store::{
    AccessPolicy, Installation, InstallationStore, NewInstallation, StoreError, new_installation_id,
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
    /// The agent is not configured.
    #[error(
        "no agent `{agent}` is configured; the configured agents are: {}. Add `[agents.{agent}]` \
         to the configuration file, or choose one of those",
        known.join(", ")
    )]
    UnknownAgent {
        /// The agent asked for.
        agent: String,
        /// The configured agents.
        known: Vec<String>,
    },
    /// No installation has the id.
    #[error("no installation `{id}` (see `switchboard installations list`)")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A secret name the channel's schema does not declare.
    #[error(
        "`{key}` is not a secret of channel `{channel}`; its secrets are: {}",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotASecret {
        /// The channel.
        channel: String,
        /// The name given.
        key: String,
        /// The secret names the schema declares.
        known: Vec<String>,
    },
    /// Nothing to change was given.
    #[error("nothing to change: {hint}")]
    NothingToDo {
        /// What could be given.
        hint: &'static str,
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
    /// The configured agents (`crate::agents::configured_agent_names`); an installation may
    /// only be bound to one of them. `None` skips the check (the demo, which configures its own).
    pub agents: Option<Vec<String>>,
}

/// Refuses `agent` unless it is one of `agents` (when given).
fn check_agent(agents: Option<&[String]>, agent: &str) -> Result<(), AddError> {
    match agents {
        Some(known) if !known.iter().any(|k| k == agent) => Err(AddError::UnknownAgent {
            agent: agent.to_string(),
            known: known.to_vec(),
        }),
        _ => Ok(()),
    }
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
    check_agent(options.agents.as_deref(), &new.agent)?;
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
        let learned = on_install(&plugin, &new.channel, cx, &options.public_url).await?;
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
    // A revoked installation keeps its routing key (and with it its sessions and bindings):
    // the operator brings that one back instead of adding a second one beside it.
    if !new.routing_key.is_empty()
        && let Some(existing) = installations
            .get_by_routing_key(&new.channel, &new.routing_key)
            .await?
    {
        let what = if existing.is_active() {
            format!(
                "installation {} of channel {} already has routing key {}; change it with \
                 `switchboard installations update {}`",
                existing.id, existing.channel, existing.routing_key, existing.id
            )
        } else {
            format!(
                "installation {} of channel {} with routing key {} was revoked; bring it back \
                 with `switchboard installations restore {}` (then `installations update` / \
                 `rotate-secret` it) instead of adding it again",
                existing.id, existing.channel, existing.routing_key, existing.id
            )
        };
        return Err(AddError::Store(StoreError::Conflict { what }));
    }
    Ok(installations.create_with_id(&id, &new, now_ms).await?)
}

/// Calls the plugin's `on-install` for `cx` at the installation's own URL; the pairs it learned.
async fn on_install(
    plugin: &Plugin,
    channel: &str,
    cx: Arc<InstallationContext>,
    public_url: &str,
) -> Result<Vec<(String, String)>, AddError> {
    let webhook_url = format!(
        "{}/hooks/{channel}/{}",
        public_url.trim_end_matches('/'),
        cx.id
    );
    let refused = |reason: String| AddError::Refused {
        channel: channel.to_string(),
        reason,
    };
    match plugin.on_install(&cx, &webhook_url).await {
        Ok(Ok(pairs)) => Ok(pairs),
        Ok(Err(types::PluginError::Unauthorized(reason))) => Err(refused(format!(
            "{reason} (check the secrets: `switchboard installations rotate-secret`)"
        ))),
        Ok(Err(types::PluginError::Fatal(reason) | types::PluginError::InvalidInput(reason))) => {
            Err(refused(reason))
        }
        Ok(Err(types::PluginError::Retryable(reason))) => Err(refused(format!(
            "{reason} (a temporary failure: try again, or with --skip-on-install)"
        ))),
        Err(call) => Err(refused(call.to_string())),
    }
}

/// What [`update`] changes; `None` / empty leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct InstallationUpdate {
    /// New display name.
    pub name: Option<String>,
    /// Config values to set (checked against the schema: unknown keys refused).
    pub set_config: BTreeMap<String, String>,
    /// Config keys to remove (a required one is refused).
    pub unset_config: Vec<String>,
    /// New identity policy.
    pub access_policy: Option<AccessPolicy>,
    /// New agent (must be configured).
    pub agent: Option<String>,
    /// New debounce window (ms).
    pub debounce_ms: Option<i64>,
}

impl InstallationUpdate {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.set_config.is_empty()
            && self.unset_config.is_empty()
            && self.access_policy.is_none()
            && self.agent.is_none()
            && self.debounce_ms.is_none()
    }
}

/// The plugin of `installation`'s channel.
fn plugin_of(runtime: &Runtime, installation: &Installation) -> Result<Arc<Plugin>, AddError> {
    runtime
        .plugin_for_channel(&installation.channel)
        .ok_or_else(|| AddError::NoPlugin {
            channel: installation.channel.clone(),
        })
}

async fn existing(installations: &InstallationStore, id: &str) -> Result<Installation, AddError> {
    installations
        .get(id)
        .await?
        .ok_or_else(|| AddError::NotFound { id: id.to_string() })
}

/// Changes installation `id`'s settings after checking the result against its channel's
/// schema (keys the operator sets must be known, required keys must stay, patterns hold; keys
/// `on-install` added earlier stay accepted) and the agent against `agents`. The routing key
/// follows the schema's routing-key config value when it was derived from it. Returns the
/// installation as stored.
pub async fn update(
    runtime: &Runtime,
    installations: &InstallationStore,
    id: &str,
    change: &InstallationUpdate,
    agents: Option<&[String]>,
    now_ms: i64,
) -> Result<Installation, AddError> {
    if change.is_empty() {
        return Err(AddError::NothingToDo {
            hint: "give a name, config values to set or unset, a policy, an agent or a debounce",
        });
    }
    let current = existing(installations, id).await?;
    let plugin = plugin_of(runtime, &current)?;
    let schema = &plugin.manifest().installation;
    let mut settings = current.settings();
    for key in &change.unset_config {
        settings.config.remove(key);
    }
    for (key, value) in &change.set_config {
        settings.config.insert(key.clone(), value.clone());
    }
    let secrets: BTreeMap<String, String> = current
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    let violations: Vec<Violation> = schema
        .check(&settings.config, &secrets)
        .into_iter()
        .filter(|v| match v {
            // Stored keys beyond the schema came from `on-install`; only new ones are judged.
            Violation::Unknown {
                section: "config",
                key,
                ..
            } => change.set_config.contains_key(key),
            _ => true,
        })
        .collect();
    if !violations.is_empty() {
        return Err(AddError::Schema {
            channel: current.channel.clone(),
            violations,
            schema: schema.describe(),
        });
    }
    if let Some(agent) = &change.agent {
        check_agent(agents, agent)?;
        settings.agent = agent.clone();
    }
    if let Some(name) = &change.name {
        settings.name = name.clone();
    }
    if let Some(policy) = change.access_policy {
        settings.access_policy = policy;
    }
    if let Some(debounce_ms) = change.debounce_ms {
        settings.debounce_ms = debounce_ms;
    }
    if schema.routing_key_of(&current.config) == Some(current.routing_key.as_str())
        && let Some(key) = schema.routing_key_of(&settings.config)
    {
        settings.routing_key = key.to_string();
    }
    if !installations.update_settings(id, &settings, now_ms).await? {
        return Err(AddError::NotFound { id: id.to_string() });
    }
    existing(installations, id).await
}

/// Replaces the named secrets of installation `id` (others stay): only names its channel's
/// schema declares as secrets, values checked like `add`'s. The set is sealed again (a fresh
/// nonce); the old values are gone from the row. Every inbound request reads the installation
/// from the store, so the next one is verified with the new values, without a restart.
pub async fn rotate_secrets(
    runtime: &Runtime,
    installations: &InstallationStore,
    id: &str,
    new_secrets: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<Installation, AddError> {
    if new_secrets.is_empty() {
        return Err(AddError::NothingToDo {
            hint: "give at least one secret as KEY=VALUE",
        });
    }
    let current = existing(installations, id).await?;
    let plugin = plugin_of(runtime, &current)?;
    let schema = &plugin.manifest().installation;
    let mut secrets: BTreeMap<String, String> = current
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    for (key, value) in new_secrets {
        secrets.insert(key.clone(), value.clone());
    }
    let violations = schema.check(&current.config, &secrets);
    if let Some(Violation::Unknown { key, known, .. }) = violations.iter().find(|v| {
        matches!(v, Violation::Unknown { section: "secret", key, .. } if new_secrets.contains_key(key))
    }) {
        return Err(AddError::NotASecret {
            channel: current.channel.clone(),
            key: key.clone(),
            known: known.clone(),
        });
    }
    let bad: Vec<Violation> = violations
        .into_iter()
        .filter(|v| {
            matches!(v, Violation::BadValue { section: "secret", key, .. } | Violation::Missing { section: "secret", key, .. } if new_secrets.contains_key(key))
        })
        .collect();
    if !bad.is_empty() {
        return Err(AddError::Schema {
            channel: current.channel.clone(),
            violations: bad,
            schema: schema.describe(),
        });
    }
    if !installations.set_secrets(id, &secrets, now_ms).await? {
        return Err(AddError::NotFound { id: id.to_string() });
    }
    existing(installations, id).await
}

/// Puts revoked installation `id` back in service: unless `skip_on_install`, the plugin's
/// `on-install` registers its URL with the channel again (what `on-uninstall` undid at
/// revocation; pairs it learns are added to the config, never over the stored ones), then its
/// events are accepted again. An active installation is returned as it is.
pub async fn restore(
    runtime: &Runtime,
    installations: &InstallationStore,
    id: &str,
    options: &AddOptions,
    now_ms: i64,
) -> Result<Installation, AddError> {
    let current = existing(installations, id).await?;
    if current.is_active() {
        return Ok(current);
    }
    let plugin = plugin_of(runtime, &current)?;
    if !options.skip_on_install {
        let learned = on_install(
            &plugin,
            &current.channel,
            Arc::new(current.context()),
            &options.public_url,
        )
        .await?;
        let mut config = current.config.clone();
        let before = config.len();
        for (key, value) in learned {
            config.entry(key).or_insert(value);
        }
        if config.len() != before {
            installations.set_config(id, &config, now_ms).await?;
        }
    }
    installations.restore(id, now_ms).await?;
    tracing::info!(installation = %id, "installation restored");
    existing(installations, id).await
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
