//! The `switchboard` command line: argument parsing, logging setup and the subcommands.
//!
//! This module is the binary's edge (errors are `anyhow` here); it wires the runtime, services
//! and store together and prints results. It must not hold business logic of its own.

mod admin;
mod bench;
mod demo;
mod plugins;
mod replay;
mod scaffold;
mod serve;
mod sessions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runtime::Runtime;

/// switchboard: a WebAssembly-pluggable host connecting chat channels to AI agents.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Configuration file (TOML). Default: `switchboard.toml` in the working directory, if it
    /// exists. Environment variables `SWITCHBOARD_<SECTION>__<KEY>` override it.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Also load every `*.wasm` plugin in this directory (manifest embedded or `<stem>.toml`
    /// beside it).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_PLUGINS_DIR",
        value_name = "DIR"
    )]
    plugins_dir: Option<PathBuf>,

    /// Where precompiled plugin artifacts are cached.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_CACHE_DIR",
        value_name = "DIR",
        default_value = ".switchboard/cache"
    )]
    cache_dir: PathBuf,

    /// Compile plugins at every start instead of using the artifact cache.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Log format.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,switchboard=debug`). By default
    /// `serve` logs at info; commands that print a transcript or table log warnings only.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG",
        default_value = DEFAULT_LOG
    )]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Readable lines on stderr.
    Human,
    /// One JSON object per line on stderr.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new plugin project, or list and inspect the loaded plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Run the main job on the embedded defaults: a fresh SQLite host with a bundled channel
    /// plugin receives a scripted conversation from a local fake of the channel over loopback.
    Demo(demo::DemoArgs),
    /// Replay recorded event payloads, WebSocket frames and webhook requests through a plugin
    /// and print the decoded messages as channel-neutral JSON lines; `--outbound` shows the HTTP
    /// requests a delivery would make, without sending them (the integrator's offline harness).
    Replay(replay::ReplayArgs),
    /// Benchmarks (issue 3): inbound events through the wasm plugin and natively, in the SDK
    /// peers' JSON line format.
    Bench(bench::BenchArgs),
    /// Serve webhooks and the admin API (config: --config, env SWITCHBOARD_<SECTION>__<KEY>).
    Serve(serve::ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Print a fresh secrets key (32 bytes, hex) for `secrets.key`.
    Keygen,
    /// Add, show, update, rotate secrets of, revoke and restore channel installations.
    #[command(subcommand)]
    Installations(admin::InstallationsCommand),
    /// Manage user bindings and binding tokens.
    #[command(subcommand)]
    Bindings(admin::BindingsCommand),
    /// Approve or deny the pairing codes senders get under the `bound` policy.
    #[command(subcommand)]
    Pairing(admin::PairingCommand),
    /// The secrets-at-rest key: its id, and re-sealing every installation under a new key.
    #[command(subcommand)]
    Secrets(admin::SecretsCommand),
    /// Inspect and operate session runs: list, show, interrupt, promote, dequeue, edit, delete.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
}

impl GlobalArgs {
    /// The configuration: file and environment, then these flags.
    fn config(&self) -> anyhow::Result<crate::config::Config> {
        let mut config = crate::config::Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.plugins_dir {
            config.plugins.dir = Some(dir.clone());
        }
        config.plugins.cache_dir = (!self.no_cache).then(|| self.cache_dir.clone());
        Ok(config)
    }

    /// The plugin runtime as the configuration describes it (bundled plugins, `[plugins] dir` or
    /// `--plugins-dir`, the artifact cache, `[plugins] base_urls`): what `serve` loads.
    fn runtime(&self) -> anyhow::Result<Runtime> {
        crate::app::build_runtime(&self.config()?, None)
    }
}

/// Default `--log` filter.
const DEFAULT_LOG: &str = "warn,switchboard=info";

/// Set once `--log-format json` is installed: then every line this process writes to stderr is a
/// JSON object, its own notices and errors included (see [`notice`]).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stderr carries JSON lines only.
fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line for the operator on stderr: as it is for a person, or as a log event (JSON) when the
/// logs are JSON, so a log shipper never meets a line it cannot parse.
fn notice(level: tracing::Level, text: &str) {
    if !json_logs() {
        let prefix = match level {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            _ => "",
        };
        eprintln!("{prefix}{text}");
    } else if level == tracing::Level::ERROR {
        tracing::error!("{text}");
    } else if level == tracing::Level::WARN {
        tracing::warn!("{text}");
    } else {
        tracing::info!("{text}");
    }
}

fn init_logging(global: &GlobalArgs, command: &Command) -> anyhow::Result<()> {
    // Info logs would interleave with what these commands print; keep them to warnings unless
    // the operator asked for a filter.
    let quiet = !matches!(command, Command::Serve(_)) && global.log == DEFAULT_LOG;
    let wanted = if quiet { "warn" } else { global.log.as_str() };
    let filter = tracing_subscriber::EnvFilter::try_new(wanted)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {wanted:?}: {e}"))?;
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match global.log_format {
        LogFormat::Human => builder.compact().try_init(),
        LogFormat::Json => builder.json().try_init().inspect(|()| {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
        }),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // Writes files only: no configuration or runtime is needed.
        Command::Plugins(plugins::PluginsCommand::New(args)) => scaffold::run(args),
        Command::Plugins(plugins::PluginsCommand::Lock) => {
            plugins::lock(&cli.global.runtime()?, &cli.global.config()?)
        }
        Command::Plugins(plugins::PluginsCommand::Reload { url }) => {
            plugins::reload(&cli.global.config()?, url).await
        }
        Command::Plugins(command) => plugins::run(&cli.global.runtime()?, command).await,
        Command::Demo(args) => {
            // The demo runs on its own fresh database and fakes; of the configuration it takes
            // the artifact cache, but a configuration that cannot be read stops it like any
            // other command.
            let config = cli.global.config()?;
            demo::run(config.plugins.cache_dir, args.channel).await
        }
        Command::Replay(args) => replay::run(&cli.global, args).await,
        Command::Bench(args) => bench::run(&cli.global, args).await,
        Command::Serve(args) => serve::run(cli.global.config()?, args).await,
        Command::Migrate => serve::migrate(cli.global.config()?).await,
        Command::Keygen => {
            // Needs nothing from the configuration, but refuses one that cannot be read, as
            // every command does.
            cli.global.config()?;
            println!("{}", crate::store::SecretCipher::generate_key_hex());
            Ok(())
        }
        Command::Installations(command) => {
            admin::installations(cli.global.config()?, command).await
        }
        Command::Bindings(command) => admin::bindings(cli.global.config()?, command).await,
        Command::Pairing(command) => admin::pairing(cli.global.config()?, command).await,
        Command::Secrets(command) => admin::secrets(cli.global.config()?, command).await,
        Command::Sessions(command) => sessions::sessions(cli.global.config()?, command).await,
    }
}

/// Entry point of the binary.
/// Commands that only print what they read: a closed stdout (`… | head`) ends them quietly, as
/// it ends other command-line tools, instead of a panic inside `println!`. Commands that serve
/// or talk to peers keep Rust's default (SIGPIPE ignored, errors returned).
fn end_quietly_on_a_closed_pipe(command: &Command) {
    if matches!(
        command,
        Command::Plugins(_)
            | Command::Installations(_)
            | Command::Bindings(_)
            | Command::Pairing(_)
            | Command::Sessions(_)
    ) {
        // SAFETY: restores the default disposition of one signal before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    end_quietly_on_a_closed_pipe(&cli.command);
    if let Err(e) = init_logging(&cli.global, &cli.command) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            notice(
                tracing::Level::ERROR,
                &format!("cannot start the async runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            notice(tracing::Level::ERROR, &format!("{e:#}"));
            // Unusable arguments exit like clap's own usage errors.
            if e.is::<replay::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--config-value` once shared clap's id `config` with the global `--config FILE`, and
    /// parsing the two together panicked.
    #[test]
    fn installations_add_takes_config_values_beside_a_config_file() {
        let cli = Cli::try_parse_from([
            "switchboard",
            "installations",
            "add",
            "--config",
            "a.toml",
            "--channel",
            "chat",
            "--routing-key",
            "cli_x",
            "--config-value",
            "connection=websocket",
            "--config-value",
            "base_url=https://api.example.com",
        ])
        .expect("parses");
        assert_eq!(cli.global.config.as_deref(), Some(Path::new("a.toml")));
        match cli.command {
            Command::Installations(admin::InstallationsCommand::Add { config_values, .. }) => {
                assert_eq!(
                    config_values,
                    ["connection=websocket", "base_url=https://api.example.com"]
                );
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
