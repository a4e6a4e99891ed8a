//! `switchboard installations …` and `switchboard bindings …`: operator commands working
//! directly on the configured database (no running server needed).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;

use crate::app::load_secret_key;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::onboarding::{self, AddOptions};
use crate::store::{AccessPolicy, Database, NewInstallation};

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
    /// Revoke an installation: its events are dropped from now on.
    Revoke {
        /// Installation id.
        id: String,
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
    /// Mint a one-time binding link (15 minutes) for a channel user.
    Token {
        /// Installation id.
        installation: String,
        /// Channel user id.
        user_id: String,
    },
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
            };
            let created = onboarding::add(&runtime, &store, new, &options, now).await?;
            println!("{}", created.id);
            eprintln!(
                "created {} installation {} (routing key {}); webhook URL path: /hooks/{}/{}",
                created.channel, created.id, created.routing_key, created.channel, created.id
            );
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
            println!(
                "{}",
                crate::api::binding_url(&config.server.public_url, &token)
            );
            eprintln!("single use; expires in 15 minutes");
        }
    }
    db.close().await;
    Ok(())
}
