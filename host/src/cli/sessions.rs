//! `switchboard sessions …`: operator commands on session runs (SPEC §5), working directly on
//! the configured database like `installations` (no running server needed).
//!
//! The changes are durable at once. A running host learns about them through the database: a
//! worker that lost its run sees its next heartbeat fail. Debounce windows armed here (an
//! interrupt that promotes queued messages) are picked up by a host's debouncer at its next
//! boot; against a live host prefer the admin API (`/api/sessions/{id}/…`), which also arms the
//! host's timers and publishes stream events.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use crate::agents::AgentRegistry;
use crate::config::Config;
use crate::domain::SystemClock;
use crate::runs::compaction::{CompactError, ManualOutcome};
use crate::runs::{Compactor, EventHub, RunService, RunSettings};
use crate::store::{Database, RunError, RunStatus};

/// Session subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions with their run state.
    List {
        /// Only the sessions of this installation.
        #[arg(long)]
        installation: Option<String>,
    },
    /// Show a session: run state, messages and queue.
    Show {
        /// Session id.
        id: String,
    },
    /// Interrupt the session's running run (queued messages are then promoted).
    Interrupt {
        /// Session id.
        id: String,
    },
    /// Promote a queued message into the history now (interrupts a running run).
    Promote {
        /// Session id.
        id: String,
        /// Queued message id (see `sessions show`).
        queued: i64,
    },
    /// Delete a queued message.
    Dequeue {
        /// Session id.
        id: String,
        /// Queued message id (see `sessions show`).
        queued: i64,
    },
    /// Edit a user message: later messages are deleted, the queue cleared, a new run pending.
    Edit {
        /// Session id.
        id: String,
        /// Message id (see `sessions show`).
        message: i64,
        /// The new text.
        text: String,
    },
    /// Compact the session's context now (from idle, pending or error): built-in agents
    /// summarise at once; a worker agent's session gets a compaction job for its workers.
    Compact {
        /// Session id.
        id: String,
    },
    /// Delete a session with its messages and queue.
    Delete {
        /// Session id.
        id: String,
    },
}

async fn open(config: &Config) -> anyhow::Result<Database> {
    let db = Database::connect(&config.database.url).await?;
    db.migrate().await?;
    Ok(db)
}

/// Adds a hint to "not found" errors.
fn explain(e: RunError) -> anyhow::Error {
    match e {
        RunError::NotFound { .. } => {
            anyhow::anyhow!("{e} (see `switchboard sessions list` / `sessions show <id>`)")
        }
        other => other.into(),
    }
}

fn print_status(status: &RunStatus) {
    println!("session      {}", status.session_id);
    println!("installation {}", status.installation_id);
    println!("state        {}", status.state);
    if let Some(error) = &status.last_error {
        println!("last error   {error}");
    }
    if let (Some(worker), Some(run)) = (&status.worker_id, &status.run_id) {
        println!("run          {run} (worker {worker})");
    }
    println!("revision     {}", status.context_revision);
}

/// Runs a sessions subcommand.
pub async fn sessions(config: Config, command: SessionsCommand) -> anyhow::Result<()> {
    let db = open(&config).await?;
    let runs = RunService::new(
        &db,
        Arc::new(SystemClock),
        EventHub::default(),
        RunSettings::default(),
    );
    let agents = Arc::new(
        AgentRegistry::from_config(&config.agents).context("invalid [agents] configuration")?,
    );
    let compactor = Compactor::new(runs.clone(), agents);
    let result = run(&db, &runs, &compactor, command).await;
    db.close().await;
    result
}

async fn run(
    db: &Database,
    runs: &RunService,
    compactor: &Compactor,
    command: SessionsCommand,
) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List { installation } => {
            println!(
                "{:<36} {:<36} {:<8} {:>5} LAST ERROR",
                "ID", "INSTALLATION", "STATE", "QUEUE"
            );
            for status in runs.store().list_statuses(installation.as_deref()).await? {
                let queued = runs.queue(&status.session_id).await?.len();
                println!(
                    "{:<36} {:<36} {:<8} {:>5} {}",
                    status.session_id,
                    status.installation_id,
                    status.state,
                    queued,
                    status.last_error.as_deref().unwrap_or("")
                );
            }
        }
        SessionsCommand::Show { id } => {
            let status = runs
                .status(&id)
                .await?
                .with_context(|| format!("no session `{id}` (see `switchboard sessions list`)"))?;
            print_status(&status);
            println!("\nmessages:");
            for m in db.ingest().list_messages(&id).await? {
                println!(
                    "  #{:<6} r{} {:<9} {:<7} {}",
                    m.id, m.context_revision, m.role, m.kind, m.body
                );
            }
            println!("\nqueue:");
            for q in runs.queue(&id).await? {
                println!("  #{:<6} {:<7} {}", q.id, q.source, q.body);
            }
        }
        SessionsCommand::Interrupt { id } => {
            let transition = runs.interrupt(&id).await.map_err(explain)?;
            match transition.interrupted_run {
                Some(run) => println!(
                    "interrupted run {run}; state {}; {} queued message(s) promoted",
                    transition.state,
                    transition.promoted.len()
                ),
                None => println!("nothing was running; state {}", transition.state),
            }
        }
        SessionsCommand::Promote { id, queued } => {
            let (message, transition) = runs.promote_queued(&id, queued).await.map_err(explain)?;
            println!(
                "promoted queued #{queued} as message #{}; state {}",
                message.id, transition.state
            );
            if let Some(run) = transition.interrupted_run {
                println!("interrupted run {run}");
            }
        }
        SessionsCommand::Dequeue { id, queued } => {
            anyhow::ensure!(
                runs.delete_queued(&id, queued).await.map_err(explain)?,
                "session `{id}` has no queued message #{queued} (see `switchboard sessions show {id}`)"
            );
            println!("deleted queued #{queued}");
        }
        SessionsCommand::Edit { id, message, text } => {
            let edited = runs
                .edit_message(&id, message, &text)
                .await
                .map_err(explain)?;
            println!(
                "edited #{message}; {} later message(s) and {} queued message(s) deleted; run pending",
                edited.truncated, edited.dequeued
            );
        }
        SessionsCommand::Compact { id } => match compactor.compact_now(&id).await {
            Ok(ManualOutcome::Compacted(done)) => println!(
                "compacted: summary #{} (notice #{}); about {} tokens before, {} after",
                done.boundary_message_id,
                done.notice_message_id,
                done.tokens_before,
                done.tokens_after
            ),
            Ok(ManualOutcome::Requested) => println!(
                "compaction requested: the session is pending and its agent's next worker claim \
                 is the compaction job"
            ),
            Err(CompactError::NotFound(_)) => {
                anyhow::bail!("no session `{id}` (see `switchboard sessions list`)")
            }
            Err(e) => return Err(e.into()),
        },
        SessionsCommand::Delete { id } => {
            anyhow::ensure!(
                runs.delete_session(&id).await?,
                "no session `{id}` (see `switchboard sessions list`)"
            );
            println!("deleted session {id}");
        }
    }
    Ok(())
}
