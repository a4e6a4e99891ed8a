//! Group commit of the dispatcher's claim-and-append on SQLite.
//!
//! sqlx runs each SQLite connection on a thread of its own, and every statement is a request
//! and a response between that thread and the caller's task, so a transaction costs about two
//! thread switches per statement, plus the hand-over of the single writer connection between
//! the tasks that queue for it. Under load that serial chain, not the CPU, limits ingestion.
//! Here one task per database owns the claim-and-appends: it takes every append that is
//! waiting and runs them in one transaction (one `BEGIN`, one `COMMIT`, one writer hand-over
//! for the lot), then answers each caller. Nobody waits for a batch to fill: an append that
//! arrives while the writer is idle is committed at once, alone; the ones that arrive while a
//! transaction is running make up the next one.
//!
//! Correctness under failure:
//! - A caller is answered only after the transaction holding its append has committed, so an
//!   acknowledged message is durable.
//! - When a batch fails (a statement error, or a session of the batch that no longer exists,
//!   which needs the append's own transaction to undo its claim), nothing of it was committed,
//!   and each of its appends is run again in a transaction of its own, with its own result.
//! - Should the task end without answering (its runtime shut down), the caller runs the
//!   append itself. The batch either committed or not: if it did, the claim made in it turns
//!   the second attempt into a duplicate (nothing is stored twice); if not, the second attempt
//!   stores the message.
//!
//! Only [`IngestStore::claim_and_append`](super::IngestStore::claim_and_append) goes through
//! here; PostgreSQL (many connections, no connection threads) runs each append in its own
//! transaction.

use std::sync::Mutex;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::ingest::{AppendOutcome, AppendRequest, ClaimedAppend, commit_claimed_batch};

/// Most appends in one transaction. It bounds how long one transaction holds the writer, not
/// the batch's usual size (whatever arrived while the previous one ran). It must not be small:
/// the batching task is one waiter among many for the writer (debounce flushes and runs queue
/// there too, a thousand at once when many windows close together), so when the writer is
/// contended ingestion gets one transaction per turn, and a small cap would throttle it — the
/// latency that follows lets more windows close, which queues more runs (a cap of 64 did
/// that in the ingest bench: one run fell to 170 msg/s for 25 s).
const MAX_BATCH: usize = 2048;

/// What a claim-and-append returns.
type AppendResult = Result<Option<AppendOutcome>, StoreError>;

/// One waiting append.
struct Job {
    request: AppendRequest,
    token: String,
    now_ms: i64,
    reply: oneshot::Sender<AppendResult>,
}

/// The group-commit front of one SQLite database: hands appends to its batching task, which is
/// started on first use (on the caller's Tokio runtime) and again should it have ended.
pub(super) struct AppendBatcher {
    writer: SqlitePool,
    /// The task's queue; `None` before first use.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

impl AppendBatcher {
    /// A batcher over `writer` (the database's single write connection). Starts nothing yet.
    pub(super) fn new(writer: SqlitePool) -> AppendBatcher {
        AppendBatcher {
            writer,
            queue: Mutex::new(None),
        }
    }

    /// Claims and appends `request` with `token` in the next batch and returns its result once
    /// that batch has committed. `None`: not done here (no Tokio runtime to run the task on, or
    /// the task ended without an answer); the caller runs the append itself (see the module
    /// docs for why that is safe).
    pub(super) async fn submit(
        &self,
        request: &AppendRequest,
        token: &str,
        now_ms: i64,
    ) -> Option<AppendResult> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request: request.clone(),
            token: token.to_owned(),
            now_ms,
            reply,
        };
        {
            // Never held across an await.
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = queue.as_ref().filter(|sender| !sender.is_closed());
            let sender = match live {
                Some(sender) => sender.clone(),
                None => {
                    let runtime = tokio::runtime::Handle::try_current().ok()?;
                    let (sender, jobs) = mpsc::unbounded_channel();
                    // The task holds the pool, not this batcher: it ends once the database
                    // (and with it this sender) is dropped.
                    runtime.spawn(run(self.writer.clone(), jobs));
                    *queue = Some(sender.clone());
                    sender
                }
            };
            sender.send(job).ok()?;
        }
        answer.await.ok()
    }
}

/// The batching task: takes what is waiting (at least one append), commits it, answers, again.
async fn run(writer: SqlitePool, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::new();
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&writer, &mut batch).await;
    }
}

/// Commits `batch` (emptying it) and answers every job in it.
async fn commit(writer: &SqlitePool, batch: &mut Vec<Job>) {
    let appends: Vec<ClaimedAppend<'_>> = batch.iter().map(claimed).collect();
    let result = commit_claimed_batch(writer, &appends).await;
    drop(appends);
    match result {
        Ok(Some(outcomes)) => {
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                // A caller that is gone no longer needs the answer.
                let _ = job.reply.send(Ok(Some(outcome)));
            }
        }
        Ok(None) if batch.len() == 1 => answer_alone(batch, Ok(None)),
        Err(error) if batch.len() == 1 => answer_alone(batch, Err(error)),
        other => {
            // Nothing of the batch was committed: each append in a transaction of its own.
            if let Err(error) = &other {
                tracing::debug!(
                    appends = batch.len(),
                    "group commit failed, appending one by one: {error}"
                );
            }
            for job in batch.drain(..) {
                let result = commit_claimed_batch(writer, &[claimed(&job)])
                    .await
                    .map(|outcomes| outcomes.and_then(|mut outcomes| outcomes.pop()));
                let _ = job.reply.send(result);
            }
        }
    }
}

/// Answers the single job of `batch` with `result`.
fn answer_alone(batch: &mut Vec<Job>, result: AppendResult) {
    if let Some(job) = batch.pop() {
        let _ = job.reply.send(result);
    }
}

/// The batch entry of `job`.
fn claimed(job: &Job) -> ClaimedAppend<'_> {
    ClaimedAppend {
        request: &job.request,
        token: &job.token,
        now_ms: job.now_ms,
    }
}

#[cfg(test)]
mod tests {
    //! The batch itself, driven directly (SQLite only: PostgreSQL never batches). The
    //! dispatcher-level guarantees (duplicates, races, failures) are covered on both backends by
    //! `tests/dispatch.rs`, which go through the batching task on SQLite.

    use super::*;
    use crate::store::{
        ChatKind, Database, Inner, NewInstallation, SecretCipher, SessionKey, TurnKind,
    };

    const NOW: i64 = 1_700_000_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Database,
        installation: String,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("batch.db").display());
            let db = Database::connect(&url).await.unwrap();
            db.migrate().await.unwrap();
            let installation = db
                .installations(SecretCipher::from_key_bytes(&[7; 32]))
                .create(
                    &NewInstallation {
                        channel: "chat".into(),
                        routing_key: "cli_batch".into(),
                        agent: "echo".into(),
                        debounce_ms: 3_000,
                        ..Default::default()
                    },
                    NOW,
                )
                .await
                .unwrap()
                .id;
            Fixture {
                _dir: dir,
                db,
                installation,
            }
        }

        async fn session(&self, chat: &str) -> String {
            self.db
                .ingest()
                .ensure_session(
                    &self.installation,
                    &SessionKey::new(chat, ChatKind::Direct, None),
                    chat,
                    NOW,
                )
                .await
                .unwrap()
                .id
        }

        fn writer(&self) -> SqlitePool {
            match &self.db.inner {
                Inner::Sqlite(pools) => pools.writer.clone(),
                Inner::Postgres(_) => unreachable!("a SQLite fixture"),
            }
        }

        async fn count(&self, sql: &str) -> i64 {
            sqlx::query_scalar(sql)
                .fetch_one(&self.writer())
                .await
                .unwrap()
        }
    }

    /// A plain turn `message_id` for `session`, with its answer channel.
    fn job(f: &Fixture, session: &str, message_id: &str) -> (Job, oneshot::Receiver<AppendResult>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request: AppendRequest {
                session_id: session.to_owned(),
                installation_id: f.installation.clone(),
                body: format!("body of {message_id}"),
                command_body: String::new(),
                channel_message_id: message_id.to_owned(),
                thread_id: None,
                sender_id: "ou_sender".into(),
                turn: TurnKind::Plain,
                attachments: Vec::new(),
                debounce_ms: 3_000,
            },
            token: uuid::Uuid::new_v4().to_string(),
            now_ms: NOW,
            reply,
        };
        (job, answer)
    }

    async fn answers(receivers: Vec<oneshot::Receiver<AppendResult>>) -> Vec<AppendResult> {
        let mut out = Vec::new();
        for receiver in receivers {
            out.push(receiver.await.expect("every job is answered"));
        }
        out
    }

    fn generation(result: &AppendResult) -> Option<i64> {
        match result {
            Ok(Some(AppendOutcome::Appended(appended))) => appended.flush.map(|(g, _)| g),
            _ => None,
        }
    }

    #[tokio::test]
    async fn one_transaction_stores_every_append_once_in_order() {
        let f = Fixture::new().await;
        let (a, b) = (f.session("oc_a").await, f.session("oc_b").await);
        let mut batch = Vec::new();
        let mut receivers = Vec::new();
        for (session, message) in [(&a, "om_1"), (&b, "om_2"), (&a, "om_3"), (&a, "om_1")] {
            let (job, answer) = job(&f, session, message);
            batch.push(job);
            receivers.push(answer);
        }
        commit(&f.writer(), &mut batch).await;
        assert!(batch.is_empty());
        let results = answers(receivers).await;
        // Session a's window is armed twice, in batch order; the second om_1 is a duplicate.
        assert_eq!(generation(&results[0]), Some(1));
        assert_eq!(generation(&results[1]), Some(1));
        assert_eq!(generation(&results[2]), Some(2));
        assert!(
            matches!(results[3], Ok(Some(AppendOutcome::ClaimLost))),
            "{:?}",
            results[3]
        );
        assert_eq!(f.count("SELECT COUNT(*) FROM messages").await, 3);
        assert_eq!(
            f.count("SELECT COUNT(*) FROM inbound_dedup WHERE processed_at_ms IS NOT NULL")
                .await,
            3
        );
        let session = f.db.ingest().get_session(&a).await.unwrap().unwrap();
        assert_eq!(session.reply_to_message_id.as_deref(), Some("om_3"));
        assert_eq!(session.flush_generation, 2);
    }

    #[tokio::test]
    async fn a_deleted_session_in_a_batch_is_retried_alone_and_the_others_are_stored() {
        let f = Fixture::new().await;
        let (a, gone, b) = (
            f.session("oc_a").await,
            f.session("oc_gone").await,
            f.session("oc_b").await,
        );
        assert!(f.db.runs().delete_session(&gone).await.unwrap());
        let mut batch = Vec::new();
        let mut receivers = Vec::new();
        for (session, message) in [(&a, "om_1"), (&gone, "om_2"), (&b, "om_3")] {
            let (job, answer) = job(&f, session, message);
            batch.push(job);
            receivers.push(answer);
        }
        commit(&f.writer(), &mut batch).await;
        let results = answers(receivers).await;
        assert_eq!(generation(&results[0]), Some(1));
        assert!(matches!(results[1], Ok(None)), "{:?}", results[1]);
        assert_eq!(generation(&results[2]), Some(1));
        // The deleted session's claim was rolled back; the others are stored once.
        assert_eq!(
            f.count("SELECT COUNT(*) FROM inbound_dedup WHERE message_id = 'om_2'")
                .await,
            0
        );
        assert_eq!(f.count("SELECT COUNT(*) FROM messages").await, 2);
        assert_eq!(f.count("SELECT COUNT(*) FROM inbound_dedup").await, 2);
    }

    #[tokio::test]
    async fn a_failing_statement_fails_only_its_own_append() {
        let f = Fixture::new().await;
        let a = f.session("oc_a").await;
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.body = 'body of om_bad'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .execute(&f.writer())
        .await
        .unwrap();
        let mut batch = Vec::new();
        let mut receivers = Vec::new();
        for message in ["om_1", "om_bad", "om_3"] {
            let (job, answer) = job(&f, &a, message);
            batch.push(job);
            receivers.push(answer);
        }
        commit(&f.writer(), &mut batch).await;
        let results = answers(receivers).await;
        assert_eq!(generation(&results[0]), Some(1));
        assert!(
            matches!(
                results[1],
                Err(StoreError::Query {
                    op: "message append",
                    ..
                })
            ),
            "{:?}",
            results[1]
        );
        assert_eq!(generation(&results[2]), Some(2));
        assert_eq!(f.count("SELECT COUNT(*) FROM messages").await, 2);
        assert_eq!(
            f.count("SELECT COUNT(*) FROM inbound_dedup WHERE message_id = 'om_bad'")
                .await,
            0,
            "the failed append left no claim: its redelivery is processed"
        );
    }

    #[tokio::test]
    async fn concurrent_claim_and_appends_through_the_task_store_each_message_once() {
        let f = Fixture::new().await;
        let sessions = [f.session("oc_a").await, f.session("oc_b").await];
        let mut tasks = Vec::new();
        for i in 0..40 {
            let ingest = f.db.ingest();
            let (job, _) = job(&f, &sessions[i % 2], &format!("om_{}", i % 20));
            tasks.push(tokio::spawn(async move {
                ingest.claim_and_append(&job.request, NOW).await
            }));
        }
        let mut appended = 0;
        let mut lost = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Some(AppendOutcome::Appended(_))) => appended += 1,
                Ok(Some(AppendOutcome::ClaimLost)) => lost += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((appended, lost), (20, 20));
        assert_eq!(f.count("SELECT COUNT(*) FROM messages").await, 20);
        assert_eq!(
            f.count("SELECT SUM(flush_generation) FROM sessions").await,
            20
        );
    }
}
