//! `switchboard installations …`, `switchboard bindings …` and `switchboard pairing …`:
//! operator commands working directly on the configured database (no running server needed;
//! a running one delivers the notices they queue from its outbox).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;

use crate::agents::configured_agent_names;
use crate::app::load_secret_key;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::onboarding::{self, AddOptions, InstallationUpdate};
use crate::store::{AccessPolicy, Database, Installation, NewInstallation};

/// Installation subcommands.
#[derive(Debug, Subcommand)]
pub enum InstallationsCommand {
    /// Register a channel installation. The values are checked against the channel plugin's
    /// installation schema (`switchboard plugins inspect NAME` prints it), and the plugin's
    /// `on-install` checks the credentials and learns the bot's identity.
    Add {
        /// Channel type (a loaded plugin's channel; `switchboard plugins list`).
        #[arg(long)]
        channel: String,
        /// Routing key, for channels whose payloads carry one; by default the value of the
        /// config key the plugin's schema names.
        #[arg(long)]
        routing_key: Option<String>,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Secret as KEY=VALUE (repeatable; stored encrypted, never printed).
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// Config value as KEY=VALUE (repeatable), e.g. base_url=https://… or locale=en.
        // Not `--config`: that name belongs to the global `--config FILE`, and clap panics
        // when two arguments share one.
        #[arg(long = "config-value", value_name = "KEY=VALUE")]
        config_values: Vec<String>,
        /// Do not call the plugin's `on-install` (offline setups).
        #[arg(long)]
        skip_on_install: bool,
        /// Identity policy: `open` (anyone) or `bound` (senders must bind their account).
        #[arg(long, default_value = "open", value_parser = ["open", "bound"])]
        policy: String,
        /// The bound agent.
        #[arg(long, default_value = "echo")]
        agent: String,
        /// Debounce window in milliseconds (1 to 3600000, one hour).
        #[arg(
            long,
            default_value_t = 3000,
            value_parser = clap::value_parser!(i64).range(1..=crate::hygiene::MAX_DEBOUNCE_MS)
        )]
        debounce_ms: i64,
    },
    /// List installations (secrets are never printed).
    List,
    /// Show one installation: config, secret names (never values), policy, status, agent,
    /// debounce.
    Show {
        /// Installation id.
        id: String,
    },
    /// Change an installation's settings, checked against the channel plugin's schema and the
    /// configured agents like `add`.
    Update {
        /// Installation id.
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// Config value to set as KEY=VALUE (repeatable).
        #[arg(long = "config-value", value_name = "KEY=VALUE")]
        config_values: Vec<String>,
        /// Config key to remove (repeatable).
        #[arg(long = "unset-config", value_name = "KEY")]
        unset_config: Vec<String>,
        /// Identity policy: `open` or `bound`.
        #[arg(long, value_parser = ["open", "bound"])]
        policy: Option<String>,
        /// The bound agent (one of the configured agents).
        #[arg(long)]
        agent: Option<String>,
        /// Debounce window in milliseconds (1 to 3600000).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=crate::hygiene::MAX_DEBOUNCE_MS))]
        debounce_ms: Option<i64>,
    },
    /// Replace secrets (only names the channel's schema declares); the next inbound request
    /// uses the new values, no restart needed.
    RotateSecret {
        /// Installation id.
        id: String,
        /// Secret as KEY=VALUE (repeatable; stored encrypted, never printed).
        #[arg(long = "secret", value_name = "KEY=VALUE", required = true)]
        secrets: Vec<String>,
    },
    /// Revoke an installation: its events are dropped from now on.
    Revoke {
        /// Installation id.
        id: String,
    },
    /// Put a revoked installation back in service (its sessions and bindings are kept).
    Restore {
        /// Installation id.
        id: String,
        /// Do not call the plugin's `on-install` (offline setups).
        #[arg(long)]
        skip_on_install: bool,
    },
}

/// Pairing subcommands: approving the codes senders get under the `bound` policy.
#[derive(Debug, Subcommand)]
pub enum PairingCommand {
    /// List pending pairing requests (codes are not shown: the sender gives you theirs).
    List {
        /// Only this installation's.
        #[arg(long)]
        installation: Option<String>,
    },
    /// Approve a code: the sender is bound and told that they have access.
    Approve {
        /// The code the sender gave you.
        code: String,
        /// The host-side user the sender is bound to (default: their channel user id).
        #[arg(long)]
        user_ref: Option<String>,
    },
    /// Deny a code: the sender gets no access.
    Deny {
        /// The code the sender gave you.
        code: String,
    },
}

/// Secrets-key subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print the id of the configured secrets key (the first 8 hex digits of its SHA-256;
    /// sealed secrets carry it).
    KeyId,
    /// Re-seal every installation's secrets under a new key, in one transaction; then start
    /// every host with the new key (`[secrets] key` / `key_file`): the old one opens nothing.
    Rotate {
        /// File holding the new key (32 bytes, hex or base64; `switchboard keygen` makes one).
        #[arg(long, value_name = "FILE")]
        new_key_file: std::path::PathBuf,
    },
}

/// Binding subcommands.
#[derive(Debug, Subcommand)]
pub enum BindingsCommand {
    /// Bind a channel user to a host user.
    Add {
        /// Installation id.
        installation: String,
        /// Channel user id (the participant id the channel plugin reports).
        user_id: String,
        /// Host-side user reference.
        user_ref: String,
    },
    /// List the bindings of an installation.
    List {
        /// Installation id.
        installation: String,
    },
    /// Mint a one-time binding token (15 minutes) for a channel user, redeemed through the admin
    /// API (`POST /api/binding-tokens/redeem`).
    Token {
        /// Installation id.
        installation: String,
        /// Channel user id.
        user_id: String,
    },
}

/// After `--skip-on-install`: the plugin neither checked the credentials nor filled in what it
/// learns itself (typically the bot's own id, without which a channel may not recognise
/// mentions of the bot). Names the schema's config keys still unset, with their descriptions.
fn warn_about_unlearned(runtime: &crate::runtime::Runtime, installation: &Installation) {
    let Some(plugin) = runtime.plugin_for_channel(&installation.channel) else {
        return;
    };
    let unset: Vec<String> = plugin
        .manifest()
        .installation
        .config
        .iter()
        .filter(|(key, _)| !installation.config.contains_key(*key))
        .map(|(key, spec)| format!("  {key}: {}", spec.description))
        .collect();
    if unset.is_empty() {
        return;
    }
    eprintln!(
        "warning: on-install was skipped, so the credentials were not checked and nothing the \
         plugin learns by itself was stored. These settings are unset:\n{}\nSet what applies \
         with `switchboard installations update {} --config-value KEY=VALUE`.",
        unset.join("\n"),
        installation.id
    );
}

fn pairs(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .with_context(|| format!("{flag} {item:?}: write it as KEY=VALUE"))
        })
        .collect()
}

async fn open(config: &Config) -> anyhow::Result<Database> {
    let db = Database::connect(&config.database.url).await?;
    db.migrate().await?;
    Ok(db)
}

/// Runs an installations subcommand.
pub async fn installations(config: Config, command: InstallationsCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    let store = db.installations(load_secret_key(&config, &db).await?);
    let now = SystemClock.now_ms();
    match command {
        InstallationsCommand::Add {
            channel,
            routing_key,
            name,
            secrets,
            config_values,
            skip_on_install,
            policy,
            agent,
            debounce_ms,
        } => {
            let runtime = crate::app::build_runtime(&config, None)?;
            let new = NewInstallation {
                channel,
                routing_key: routing_key.unwrap_or_default(),
                name,
                config: pairs(&config_values, "--config-value")?,
                secrets: pairs(&secrets, "--secret")?,
                access_policy: if policy == "bound" {
                    AccessPolicy::Bound
                } else {
                    AccessPolicy::Open
                },
                agent,
                debounce_ms,
            };
            let options = AddOptions {
                skip_on_install,
                public_url: config.server.public_url.clone(),
                agents: Some(configured_agent_names(&config.agents)),
            };
            let created = onboarding::add(&runtime, &store, new, &options, now).await?;
            println!("{}", created.id);
            eprintln!(
                "created {} installation {} (routing key {}); webhook URL path: /hooks/{}/{}",
                created.channel, created.id, created.routing_key, created.channel, created.id
            );
            if skip_on_install {
                warn_about_unlearned(&runtime, &created);
            }
        }
        InstallationsCommand::List => {
            println!(
                "{:<36} {:<8} {:<24} {:<8} {:<7} {:<8} NAME",
                "ID", "CHANNEL", "ROUTING KEY", "STATUS", "POLICY", "AGENT"
            );
            for i in store.list().await? {
                println!(
                    "{:<36} {:<8} {:<24} {:<8} {:<7} {:<8} {}",
                    i.id,
                    i.channel,
                    i.routing_key,
                    i.status.as_str(),
                    i.access_policy.as_str(),
                    i.agent,
                    i.name
                );
            }
        }
        InstallationsCommand::Show { id } => {
            let Some(i) = store.get(&id).await? else {
                anyhow::bail!("no installation `{id}` (see `switchboard installations list`)");
            };
            print_installation(&i);
        }
        InstallationsCommand::Update {
            id,
            name,
            config_values,
            unset_config,
            policy,
            agent,
            debounce_ms,
        } => {
            let runtime = crate::app::build_runtime(&config, None)?;
            let change = InstallationUpdate {
                name,
                set_config: pairs(&config_values, "--config-value")?,
                unset_config,
                access_policy: policy.map(|p| {
                    if p == "bound" {
                        AccessPolicy::Bound
                    } else {
                        AccessPolicy::Open
                    }
                }),
                agent,
                debounce_ms,
            };
            let agents = configured_agent_names(&config.agents);
            let updated =
                onboarding::update(&runtime, &store, &id, &change, Some(&agents), now).await?;
            print_installation(&updated);
        }
        InstallationsCommand::RotateSecret { id, secrets } => {
            let runtime = crate::app::build_runtime(&config, None)?;
            let secrets = pairs(&secrets, "--secret")?;
            onboarding::rotate_secrets(&runtime, &store, &id, &secrets, now).await?;
            println!(
                "rotated {} of {id}; the next inbound request uses the new value",
                secrets.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        InstallationsCommand::Restore {
            id,
            skip_on_install,
        } => {
            let runtime = crate::app::build_runtime(&config, None)?;
            let options = AddOptions {
                skip_on_install,
                public_url: config.server.public_url.clone(),
                agents: None,
            };
            let restored = onboarding::restore(&runtime, &store, &id, &options, now).await?;
            println!("restored {} ({})", restored.id, restored.status.as_str());
        }
        InstallationsCommand::Revoke { id } => {
            let runtime = crate::app::build_runtime(&config, None)?;
            anyhow::ensure!(
                onboarding::revoke(&runtime, &store, &id, now).await?,
                "no installation `{id}` (see `switchboard installations list`)"
            );
            println!("revoked {id}");
        }
    }
    db.close().await;
    Ok(())
}

/// Prints one installation for `installations show` / `update`: secret names only.
fn print_installation(i: &Installation) {
    println!("id:          {}", i.id);
    println!("channel:     {}", i.channel);
    println!("routing key: {}", i.routing_key);
    println!("name:        {}", i.name);
    println!("status:      {}", i.status.as_str());
    println!("policy:      {}", i.access_policy.as_str());
    println!("agent:       {}", i.agent);
    println!("debounce ms: {}", i.debounce_ms);
    println!("config:");
    for (key, value) in &i.config {
        println!("  {key} = {value}");
    }
    println!(
        "secrets:     {}",
        if i.secrets.is_empty() {
            "(none)".to_string()
        } else {
            i.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    );
}

/// Runs a pairing subcommand.
pub async fn pairing(config: Config, command: PairingCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    let pairings = db.pairings();
    let now = SystemClock.now_ms();
    match command {
        PairingCommand::List { installation } => {
            println!(
                "{:<36} {:<36} {:<24} {:<14} NAME",
                "ID", "INSTALLATION", "SENDER", "EXPIRES IN"
            );
            for p in pairings.list_pending(installation.as_deref(), now).await? {
                println!(
                    "{:<36} {:<36} {:<24} {:<14} {}",
                    p.id,
                    p.installation_id,
                    p.sender_id,
                    format!("{} min", (p.expires_at_ms - now + 59_999) / 60_000),
                    p.sender_name.as_deref().unwrap_or("")
                );
            }
        }
        PairingCommand::Approve { code, user_ref } => {
            let approved =
                crate::pairing::approve(&pairings, &code, user_ref.as_deref(), now).await?;
            println!(
                "approved: {} is bound to {} in installation {}; they are told so",
                approved.binding.channel_user_id,
                approved.binding.user_ref,
                approved.pairing.installation_id
            );
        }
        PairingCommand::Deny { code } => {
            let denied = pairings.deny(&code, now).await?;
            println!(
                "denied: {} gets no access to installation {}",
                denied.sender_id, denied.installation_id
            );
        }
    }
    db.close().await;
    Ok(())
}

/// Runs a secrets subcommand.
pub async fn secrets(config: Config, command: SecretsCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    let current = load_secret_key(&config, &db).await?;
    match command {
        SecretsCommand::KeyId => println!("{}", current.key_id()),
        SecretsCommand::Rotate { new_key_file } => {
            let text = std::fs::read_to_string(&new_key_file)
                .with_context(|| format!("reading the new key file {}", new_key_file.display()))?;
            let new = crate::store::SecretCipher::from_key_str(text.trim())
                .with_context(|| format!("the new key file {}", new_key_file.display()))?;
            anyhow::ensure!(
                new.key_id() != current.key_id(),
                "the new key is the configured key (id {}); make a new one with `switchboard keygen`",
                current.key_id()
            );
            let count = db
                .installations(current.clone())
                .reseal_all(&new, SystemClock.now_ms())
                .await?;
            println!(
                "re-sealed the secrets of {count} installation(s): key {} -> {}",
                current.key_id(),
                new.key_id()
            );
            eprintln!(
                "now configure the new key ([secrets] key, SWITCHBOARD_SECRETS__KEY or the key file \
                 {}) and restart every host: the old key opens nothing any more",
                config.secrets.key_file.display()
            );
        }
    }
    db.close().await;
    Ok(())
}

/// Runs a bindings subcommand.
pub async fn bindings(config: Config, command: BindingsCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    let records = db.ingest();
    let installations = db.installations(load_secret_key(&config, &db).await?);
    let now = SystemClock.now_ms();
    let installation = match &command {
        BindingsCommand::Add { installation, .. }
        | BindingsCommand::List { installation }
        | BindingsCommand::Token { installation, .. } => installation.clone(),
    };
    anyhow::ensure!(
        installations.get(&installation).await?.is_some(),
        "no installation `{installation}` (see `switchboard installations list`)"
    );
    match command {
        BindingsCommand::Add {
            user_id, user_ref, ..
        } => {
            records
                .bind_user(&installation, &user_id, &user_ref, &[], now)
                .await?;
            println!("bound {user_id} to {user_ref}");
        }
        BindingsCommand::List { .. } => {
            for b in records.list_bindings(&installation).await? {
                println!("{}\t{}", b.channel_user_id, b.user_ref);
            }
        }
        BindingsCommand::Token { user_id, .. } => {
            let token = records
                .mint_binding_token(&installation, &user_id, now)
                .await?;
            println!("{token}");
            eprintln!(
                "single use; expires in 15 minutes; redeem it with POST {}/api/binding-tokens/redeem \
                 {{\"token\": …, \"user_ref\": …}} (senders who write to the bot get a pairing \
                 code instead: `switchboard pairing approve CODE`)",
                config.server.public_url.trim_end_matches('/')
            );
        }
    }
    db.close().await;
    Ok(())
}
