//! `switchboard plugins list|inspect|lock|reload` (`plugins new` is in `scaffold.rs`).

use clap::Subcommand;

use crate::runtime::{Plugin, Runtime};

/// Plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Write a new plugin project (Rust or Python) that builds, passes its own tests and
    /// replays its fixtures: a manifest with an installation schema, fixtures, a decode test and
    /// a README with the next steps.
    New(super::scaffold::NewArgs),
    /// One line per plugin: name, version, channel, contract, capabilities, state, source.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A plugin's manifest, grants, budgets, exports and imports.
    Inspect {
        /// Plugin name (see `switchboard plugins list`).
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pin the sha256 of every plugin in the plugins directory in the lock file
    /// (`[plugins] lock_file`, default `plugins.lock`); with `[plugins] strict = true` the host
    /// then refuses any plugin file that is not pinned or has changed. Review plugins first.
    Lock,
    /// Ask the running `serve` to swap in changed plugin files (same as sending it SIGHUP).
    /// A new version that fails `[plugins] probation_failures` calls within `probation_s` is
    /// rolled back.
    Reload {
        /// The running host (default: `http://` + `[server] listen`).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

fn summary(plugin: &Plugin) -> serde_json::Value {
    let m = plugin.manifest();
    let stats = plugin.stats();
    serde_json::json!({
        "name": m.name,
        "version": m.version.to_string(),
        "channel": m.channel,
        "contract": m.contract.to_string(),
        "capabilities": plugin.grants().names(),
        "state": stats.state.to_string(),
        "source": plugin.source().to_string(),
    })
}

fn details(plugin: &Plugin) -> serde_json::Value {
    let m = plugin.manifest();
    let g = plugin.grants();
    let b = &m.budgets;
    let stats = plugin.stats();
    serde_json::json!({
        "name": m.name,
        "version": m.version.to_string(),
        "channel": m.channel,
        "contract": m.contract.to_string(),
        "description": m.description,
        "source": plugin.source().to_string(),
        "sha256": plugin.sha256(),
        "loaded_from_cache": plugin.load_path() == crate::runtime::LoadPath::Cached,
        "capabilities": {
            "log": g.log,
            "clock": g.clock,
            "http": g.http.as_ref().map(|_| m.capabilities.http.as_ref().map(|a| a.entries().map(|o| o.to_string()).collect::<Vec<_>>())),
            "kv": g.kv.map(|q| serde_json::json!({"max_keys": q.max_keys, "max_bytes": q.max_bytes, "max_value_bytes": q.max_value_bytes})),
        },
        "budgets_ms": {
            "transport": b.transport.as_millis() as u64,
            "decoder": b.decoder.as_millis() as u64,
            "enricher": b.enricher.as_millis() as u64,
            "commands": b.commands.as_millis() as u64,
            "outbound": b.outbound.as_millis() as u64,
        },
        "memory_mib": b.memory_bytes >> 20,
        "transports": {
            "webhook": m.transports.webhook,
            "websocket": m.transports.websocket,
            "long_poll": m.transports.long_poll,
        },
        "features": {
            "typing": m.features.typing,
            "streaming": m.features.streaming,
            "actions": m.features.actions,
            "attachments": m.features.attachments,
            "stream_interval_ms": m.features.stream_interval.as_millis() as u64,
        },
        "installation": {
            "routing_key": m.installation.routing_key,
            "config": schema_keys(&m.installation.config),
            "secrets": schema_keys(&m.installation.secrets),
        },
        "exports": plugin.exports(),
        "imports": plugin.imports(),
        "state": stats.state.to_string(),
        "calls": stats.calls,
        "failures": stats.failures,
    })
}

/// Runs a plugins subcommand.
/// `plugins lock`: pins the directory plugins `runtime` loaded.
pub fn lock(runtime: &Runtime, config: &crate::config::Config) -> anyhow::Result<()> {
    let mut lock = crate::runtime::lock::PluginLock::default();
    for plugin in runtime.plugins() {
        if let crate::runtime::Source::File(path) = plugin.source() {
            lock.pin(plugin.name(), plugin.sha256(), path);
        }
    }
    anyhow::ensure!(
        !lock.plugins.is_empty(),
        "no plugin was loaded from a plugins directory: set [plugins] dir or pass --plugins-dir \
         (bundled plugins are part of the binary and need no pin)"
    );
    lock.write(&config.plugins.lock_file)?;
    for (name, entry) in &lock.plugins {
        println!("{name}\t{}\t{}", entry.sha256, entry.file);
    }
    eprintln!(
        "pinned {} plugin(s) in {}",
        lock.plugins.len(),
        config.plugins.lock_file.display()
    );
    Ok(())
}

/// `plugins reload`: asks the running host to reload its plugins directory.
pub async fn reload(config: &crate::config::Config, url: Option<String>) -> anyhow::Result<()> {
    let base = url.unwrap_or_else(|| format!("http://{}", config.server.listen));
    let token = config.server.admin_token.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "no admin token: set [server] admin_token or SWITCHBOARD_SERVER__ADMIN_TOKEN to the \
             running host's"
        )
    })?;
    let url = format!("{}/api/plugins/reload", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach the host at {base}: {e} (is serve running? --url)")
        })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "the host answered {status}: {body}");
    let report: serde_json::Value = serde_json::from_str(&body)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let refused = report["refused"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        refused == 0,
        "{refused} plugin file(s) were refused; the previous versions keep running"
    );
    Ok(())
}

/// `plugins list|inspect`.
pub async fn run(runtime: &Runtime, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::List { json } => {
            let plugins = runtime.plugins();
            if json {
                let rows: Vec<_> = plugins.iter().map(|p| summary(p)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<9} {:<10} {:<9} {:<22} {:<9} SOURCE",
                "NAME", "VERSION", "CHANNEL", "CONTRACT", "CAPABILITIES", "STATE"
            );
            for p in &plugins {
                let m = p.manifest();
                println!(
                    "{:<16} {:<9} {:<10} {:<9} {:<22} {:<9} {}",
                    m.name,
                    m.version,
                    m.channel,
                    m.contract,
                    p.grants().names().join(","),
                    p.stats().state,
                    p.source()
                );
            }
            Ok(())
        }
        PluginsCommand::New(_) | PluginsCommand::Lock | PluginsCommand::Reload { .. } => {
            anyhow::bail!("`plugins new`, `plugins lock` and `plugins reload` are run by cli::run")
        }
        PluginsCommand::Inspect { name, json } => {
            let Some(plugin) = runtime.plugin(&name) else {
                let known: Vec<_> = runtime
                    .plugins()
                    .iter()
                    .map(|p| p.name().to_string())
                    .collect();
                anyhow::bail!(
                    "no plugin named `{name}` is loaded (loaded: {}); use --plugins-dir to load more",
                    known.join(", ")
                );
            };
            let d = details(&plugin);
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_details(&d);
            }
            Ok(())
        }
    }
}

fn schema_keys(
    keys: &std::collections::BTreeMap<String, crate::domain::schema::SchemaKey>,
) -> serde_json::Value {
    keys.iter()
        .map(|(key, spec)| {
            (
                key.clone(),
                serde_json::json!({
                    "description": spec.description,
                    "required": spec.required,
                    "pattern": spec.pattern.as_ref().map(|p| p.as_str().to_string()),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn print_details(d: &serde_json::Value) {
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    println!("{} {} — {}", s("name"), s("version"), s("description"));
    println!("  channel:      {}", s("channel"));
    println!("  contract:     switchboard:channel@{}", s("contract"));
    println!("  source:       {}", s("source"));
    println!("  sha256:       {}", s("sha256"));
    println!("  from cache:   {}", d["loaded_from_cache"]);
    println!(
        "  state:        {} ({} calls, {} failures)",
        s("state"),
        d["calls"],
        d["failures"]
    );
    println!("  capabilities: {}", d["capabilities"]);
    println!(
        "  budgets (ms): {}   memory cap: {} MiB",
        d["budgets_ms"], d["memory_mib"]
    );
    println!("  transports:   {}", d["transports"]);
    println!("  features:     {}", d["features"]);
    println!(
        "  installation (switchboard installations add --channel {} …):",
        s("channel")
    );
    for (section, flag) in [("config", "config-value"), ("secrets", "secret")] {
        for (key, spec) in d["installation"][section].as_object().into_iter().flatten() {
            println!(
                "    --{flag} {key}=…{}  {}{}",
                if spec["required"].as_bool().unwrap_or(false) {
                    " (required)"
                } else {
                    ""
                },
                spec["description"].as_str().unwrap_or_default(),
                spec["pattern"]
                    .as_str()
                    .map(|p| format!(" [matches {p}]"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(key) = d["installation"]["routing_key"].as_str() {
        println!("    routing key: the value of config `{key}`");
    }
    println!("  exports:");
    for e in d["exports"].as_array().into_iter().flatten() {
        println!("    {}", e.as_str().unwrap_or_default());
    }
    println!("  imports:");
    for i in d["imports"].as_array().into_iter().flatten() {
        println!("    {}", i.as_str().unwrap_or_default());
    }
}
