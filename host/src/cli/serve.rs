//! `switchboard serve` and `switchboard migrate`.

use clap::Args;

use crate::app::App;
use crate::config::Config;
use crate::store::Database;

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

/// Runs the host until Ctrl-C / SIGTERM, then shuts down gracefully.
pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let app = App::from_config(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (change server.listen or pass --listen)",
                config.server.listen
            )
        })?;
    let address = listener.local_addr()?;
    let database = crate::store::redact_url(&config.database.url);
    let plugins = app.state.runtime.plugins().len();
    if super::json_logs() {
        tracing::info!(%address, %database, plugins, "switchboard listening");
    } else {
        eprintln!(
            "switchboard listening on http://{address} (database {database}, {plugins} plugin(s)); Ctrl-C stops it"
        );
    }
    #[cfg(unix)]
    reload_on_sighup(app.state.reloader.clone());
    app.serve(listener, shutdown_signal()).await
}

/// SIGHUP reloads the plugins directory (the same as `switchboard plugins reload`).
#[cfg(unix)]
fn reload_on_sighup(reloader: std::sync::Arc<crate::runtime::reload::Reloader>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("SIGHUP cannot be watched; reload plugins through the admin API");
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading plugins");
            reloader.reload().await;
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// Applies migrations.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = Database::connect(&config.database.url).await?;
    db.migrate().await?;
    println!(
        "migrated {} ({})",
        crate::store::redact_url(&config.database.url),
        db.backend()
    );
    db.close().await;
    Ok(())
}
