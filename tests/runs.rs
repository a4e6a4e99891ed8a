//! The run lifecycle (SPEC §5; reference `chat-runs.md` A.3–A.9, tests after A.16) on SQLite
//! and PostgreSQL: acquisition, fenced ownership (heartbeat, context, reply, release), the queue
//! while a run is active (channel and API), promotion at the end of a run through the durable
//! debounce, interrupt, promote, dequeue, edit, delete, stale recovery (at boot, driven and
//! timed loops), events, four workers racing on PostgreSQL, and the admin HTTP routes.
//!
//! Time is injected (`ManualClock`); nothing sleeps to make time pass.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;
#[path = "support/time.rs"]
mod time;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::runs::{EventHub, RunService, RunSettings, SessionEvent};
use switchboard::store::{
    AppendOutcome, AppendRequest, AppendedMessage, ChatKind, Database, NewInstallation,
    ReleaseOutcome, RunClaim, RunEnd, RunError, RunFinish, RunState, SecretCipher, SessionKey,
    Submitted, TurnKind,
};
use time::ManualClock;

const NOW: i64 = 1_700_000_000_000;
const DEBOUNCE: i64 = 3_000;
const MINUTE: i64 = 60_000;

/// An installation with `agent`; returns its id.
async fn installation(db: &Database, agent: &str) -> String {
    installation_with(db, agent, DEBOUNCE).await
}

async fn installation_with(db: &Database, agent: &str, debounce_ms: i64) -> String {
    let cipher = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
    db.installations(cipher)
        .create(
            &NewInstallation {
                channel: "lark".into(),
                routing_key: format!("cli_{}", uuid_like()),
                agent: agent.into(),
                debounce_ms,
                ..Default::default()
            },
            NOW,
        )
        .await
        .expect("create installation")
        .id
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn session(db: &Database, installation_id: &str, chat: &str) -> String {
    db.ingest()
        .ensure_session(
            installation_id,
            &SessionKey::new(chat, ChatKind::Direct, None),
            chat,
            NOW,
        )
        .await
        .expect("ensure session")
        .id
}

/// A channel message through the real ingest append (as the dispatcher sends it).
async fn channel_message(db: &Database, session_id: &str, body: &str, now: i64) -> AppendedMessage {
    let session = db.ingest().get_session(session_id).await.unwrap().unwrap();
    let request = AppendRequest {
        session_id: session_id.to_owned(),
        installation_id: session.installation_id,
        body: body.to_owned(),
        command_body: String::new(),
        channel_message_id: format!("om_{body}"),
        thread_id: None,
        sender_id: "ou_sender".to_owned(),
        turn: TurnKind::Plain,
        attachments: Vec::new(),
        debounce_ms: DEBOUNCE,
    };
    match db.ingest().append(&request, None, now).await.unwrap() {
        AppendOutcome::Appended(appended) => appended,
        other => panic!("unexpected append outcome {other:?}"),
    }
}

/// A pending session with one user message `body` (API submission to an idle session).
async fn pending_session(db: &Database, installation_id: &str, chat: &str, now: i64) -> String {
    let id = session(db, installation_id, chat).await;
    match db.runs().enqueue_api(&id, chat, 20, now).await.unwrap() {
        Submitted::Appended(_) => {}
        other => panic!("an idle session stores the message directly, got {other:?}"),
    }
    id
}

/// A running session (acquired by `worker`) and its claim.
async fn running_session(db: &Database, agent: &str, worker: &str) -> RunClaim {
    let inst = installation(db, agent).await;
    let id = pending_session(db, &inst, &format!("chat-{}", uuid_like()), NOW).await;
    let claim = db
        .runs()
        .acquire(agent, worker, NOW + 1)
        .await
        .unwrap()
        .expect("a pending session is acquired");
    assert_eq!(claim.session_id, id);
    claim
}

async fn state(db: &Database, session_id: &str) -> switchboard::store::RunStatus {
    db.runs()
        .get_run_state(session_id)
        .await
        .unwrap()
        .expect("session exists")
}

async fn bodies(db: &Database, session_id: &str) -> Vec<String> {
    db.ingest()
        .list_messages(session_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

// ------------------------------------------------------------------------- acquisition

#[tokio::test]
async fn acquisition_takes_the_oldest_pending_run_of_the_agent() {
    for t in db::test_databases().await {
        let db = &t.db;
        let echo = installation(db, "echo").await;
        let other = installation(db, "other").await;
        let newer = pending_session(db, &echo, "newer", NOW + 20).await;
        let older = pending_session(db, &echo, "older", NOW + 10).await;
        let foreign = pending_session(db, &other, "foreign", NOW).await;
        let idle = session(db, &echo, "idle").await;

        let first = db.runs().acquire("echo", "w1", NOW + 30).await.unwrap();
        let first = first.expect("something pending");
        assert_eq!(first.session_id, older, "{}: oldest pending first", t.name);
        assert_eq!(first.worker_id, "w1");
        assert_eq!(first.installation_id, echo);
        assert_eq!(first.agent, "echo");
        assert_eq!(first.context_revision, 1);
        let last_id = db.ingest().list_messages(&older).await.unwrap()[0].id;
        assert_eq!(first.context_upto, last_id, "{}", t.name);
        let second = db
            .runs()
            .acquire("echo", "w2", NOW + 31)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.session_id, newer, "{}", t.name);
        assert_ne!(
            first.run_id, second.run_id,
            "a fresh run id per acquisition"
        );
        assert!(
            db.runs()
                .acquire("echo", "w3", NOW + 32)
                .await
                .unwrap()
                .is_none(),
            "{}: only other agents' sessions are left",
            t.name
        );
        let status = state(db, &older).await;
        assert_eq!(status.state, RunState::Running);
        assert_eq!(status.worker_id.as_deref(), Some("w1"));
        assert_eq!(status.run_id.as_deref(), Some(first.run_id.as_str()));
        assert_eq!(status.heartbeat_at_ms, Some(NOW + 30));
        assert_eq!(state(db, &idle).await.state, RunState::Idle);
        assert_eq!(state(db, &foreign).await.state, RunState::Pending);
        let foreign_claim = db.runs().acquire("other", "w4", NOW + 33).await.unwrap();
        assert_eq!(foreign_claim.unwrap().session_id, foreign, "{}", t.name);

        // A revoked installation's pending sessions are not run.
        let revoked = installation(db, "echo").await;
        let left = pending_session(db, &revoked, "revoked", NOW).await;
        let cipher = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
        db.installations(cipher)
            .revoke(&revoked, NOW)
            .await
            .unwrap();
        assert!(
            db.runs()
                .acquire("echo", "w5", NOW + 40)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(state(db, &left).await.state, RunState::Pending);
    }
}

// ------------------------------------------------------------------------- ownership

#[tokio::test]
async fn heartbeats_require_ownership() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let runs = db.runs();
        assert!(
            !runs
                .heartbeat(&claim.session_id, "someone-else", NOW + 5)
                .await
                .unwrap(),
            "{}: a foreign run id updates nothing",
            t.name
        );
        assert_eq!(
            state(db, &claim.session_id).await.heartbeat_at_ms,
            Some(NOW + 1)
        );
        assert!(
            runs.heartbeat(&claim.session_id, &claim.run_id, NOW + 6)
                .await
                .unwrap(),
            "{}: the owner's heartbeat counts",
            t.name
        );
        assert_eq!(
            state(db, &claim.session_id).await.heartbeat_at_ms,
            Some(NOW + 6)
        );
        runs.release(
            &claim.session_id,
            &claim.run_id,
            &RunEnd::Completed,
            NOW + 7,
        )
        .await
        .unwrap();
        assert!(
            !runs
                .heartbeat(&claim.session_id, &claim.run_id, NOW + 8)
                .await
                .unwrap(),
            "{}: after the release the run is gone",
            t.name
        );
    }
}

#[tokio::test]
async fn run_context_and_replies_are_fenced_and_bounded() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let runs = db.runs();
        let sid = &claim.session_id;
        // A message arriving during the run is queued and not in the run's context.
        let queued = channel_message(db, sid, "later", NOW + 2).await;
        assert!(queued.queued.is_some());
        let context = runs.run_context(sid, &claim.run_id).await.unwrap().unwrap();
        assert_eq!(context.len(), 1, "{}", t.name);
        assert_eq!(context[0].role, "user");
        assert!(runs.run_context(sid, "not-mine").await.unwrap().is_none());

        assert!(
            runs.append_reply(sid, "not-mine", "nope", NOW + 3)
                .await
                .unwrap()
                .is_none(),
            "{}: a non-owner's reply is not stored",
            t.name
        );
        let reply = runs
            .append_reply(sid, &claim.run_id, "the answer", NOW + 4)
            .await
            .unwrap()
            .expect("the owner's reply is stored");
        assert_eq!(reply.role, "assistant");
        assert_eq!(reply.context_revision, claim.context_revision);
        assert_eq!(bodies(db, sid).await.last().unwrap(), "the answer");
        assert!(!bodies(db, sid).await.contains(&"nope".to_string()));
    }
}

// ------------------------------------------------------------------------- release

#[tokio::test]
async fn release_outcomes_and_last_error() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        for (end, expected) in [
            (RunEnd::Completed, RunState::Idle),
            (RunEnd::Interrupted, RunState::Idle),
            (RunEnd::Shutdown, RunState::Pending),
            (RunEnd::Failed("model exploded".into()), RunState::Error),
        ] {
            let claim = running_session(db, "echo", "w1").await;
            let outcome = runs
                .release(&claim.session_id, &claim.run_id, &end, NOW + 9)
                .await
                .unwrap();
            let ReleaseOutcome::Released(released) = outcome else {
                panic!("{}: the owner releases", t.name);
            };
            assert_eq!(released.state, expected, "{}: {end:?}", t.name);
            assert!(released.promoted.is_empty() && released.flush.is_none());
            let status = state(db, &claim.session_id).await;
            assert_eq!(status.state, expected, "{}: {end:?}", t.name);
            assert_eq!(status.worker_id, None, "{}: ownership cleared", t.name);
            assert_eq!(status.run_id, None);
            assert_eq!(status.heartbeat_at_ms, None);
            if let RunEnd::Failed(error) = &end {
                assert_eq!(status.last_error.as_deref(), Some(error.as_str()));
                // The next message makes it pending and clears the error.
                runs.enqueue_api(&claim.session_id, "again", 20, NOW + 10)
                    .await
                    .unwrap();
                let status = state(db, &claim.session_id).await;
                assert_eq!(status.state, RunState::Pending, "{}", t.name);
                assert_eq!(status.last_error, None, "{}: cleared on pending", t.name);
            } else {
                assert_eq!(status.last_error, None);
            }
            if expected == RunState::Pending {
                // A shut-down run keeps its place: another worker retries it.
                let retry = runs.acquire("echo", "w2", NOW + 11).await.unwrap().unwrap();
                assert_eq!(retry.session_id, claim.session_id);
                runs.release(
                    &retry.session_id,
                    &retry.run_id,
                    &RunEnd::Completed,
                    NOW + 12,
                )
                .await
                .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_worker_that_lost_its_run_changes_nothing() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        // Recovered as stale, then taken by another worker.
        assert_eq!(
            runs.recover_stale(NOW + MINUTE, NOW + MINUTE)
                .await
                .unwrap(),
            vec![(sid.clone(), claim.run_id.clone())]
        );
        for end in [RunEnd::Completed, RunEnd::Failed("late".into())] {
            assert_eq!(
                runs.release(sid, &claim.run_id, &end, NOW + MINUTE)
                    .await
                    .unwrap(),
                ReleaseOutcome::NotOwner,
                "{}",
                t.name
            );
        }
        assert_eq!(state(db, sid).await.state, RunState::Pending, "{}", t.name);
        let second = runs
            .acquire("echo", "w2", NOW + MINUTE + 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&second.session_id, sid);
        assert!(
            runs.append_reply(sid, &claim.run_id, "stale", NOW + MINUTE + 2)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !runs
                .heartbeat(sid, &claim.run_id, NOW + MINUTE + 2)
                .await
                .unwrap()
        );
        assert_eq!(
            runs.release(
                sid,
                &claim.run_id,
                &RunEnd::Failed("late".into()),
                NOW + MINUTE + 3
            )
            .await
            .unwrap(),
            ReleaseOutcome::NotOwner
        );
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Running, "{}", t.name);
        assert_eq!(status.run_id.as_deref(), Some(second.run_id.as_str()));
        assert_eq!(status.last_error, None);
        assert_eq!(bodies(db, sid).await.len(), 1, "{}: nothing stored", t.name);
    }
}

// ------------------------------------------------------------------------- the queue

#[tokio::test]
async fn channel_messages_while_running_are_queued() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        let before = db.ingest().get_session(sid).await.unwrap().unwrap();
        let appended = channel_message(db, sid, "busy?", NOW + 2).await;
        let queued = appended.queued.expect("queued while running");
        assert_eq!(queued.interrupted_run, None);
        assert_eq!(
            appended.flush, None,
            "{}: no debounce while running",
            t.name
        );
        assert_eq!(appended.message_id, 0);
        assert_eq!(
            bodies(db, sid).await,
            vec![before.chat_key.clone()],
            "{}: history unchanged",
            t.name
        );
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Running, "{}", t.name);
        assert_eq!(status.worker_id.as_deref(), Some("w1"));
        assert_eq!(status.run_id.as_deref(), Some(claim.run_id.as_str()));
        let after = db.ingest().get_session(sid).await.unwrap().unwrap();
        assert_eq!(after.flush_due_at_ms, None);
        assert_eq!(after.flush_generation, before.flush_generation);
        let queue = db.runs().list_queue(sid).await.unwrap();
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].id, queued.queued_id);
        assert_eq!(queue[0].source, "channel");
        assert_eq!(queue[0].body, "busy?");
        assert_eq!(queue[0].channel_message_id.as_deref(), Some("om_busy?"));
    }
}

/// Issue 14: a message that arrives while a run is pending (flushed, not yet acquired) waits
/// for the next run: the pending run answers the turns it was made for, once, and the late
/// message gets a run of its own — never a second run for an already answered turn.
#[tokio::test]
async fn a_channel_message_while_pending_waits_for_the_next_run() {
    for t in db::test_databases().await {
        let db = &t.db;
        let inst = installation(db, "echo").await;
        let sid = pending_session(db, &inst, "chat-pending", NOW).await;
        let late = channel_message(db, &sid, "late", NOW + 1).await;
        assert!(late.queued.is_some(), "{}: queued while pending", t.name);
        assert_eq!(late.flush, None, "{}: no window of its own yet", t.name);
        assert_eq!(state(db, &sid).await.state, RunState::Pending, "{}", t.name);

        // The run answers the first turn only.
        let claim = db
            .runs()
            .acquire("echo", "w1", NOW + 2)
            .await
            .unwrap()
            .unwrap();
        let context = db
            .runs()
            .run_context(&sid, &claim.run_id)
            .await
            .unwrap()
            .unwrap();
        let seen: Vec<&str> = context.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(seen, ["chat-pending"], "{}", t.name);
        let finished = db
            .runs()
            .finish_run(
                &sid,
                &claim.run_id,
                &RunFinish::Completed {
                    reply: Some("echo: chat-pending".into()),
                    context_tokens: None,
                },
                NOW + 3,
            )
            .await
            .unwrap()
            .unwrap();
        // The late message is promoted with its own window: the next run answers it.
        let promoted: Vec<&str> = finished
            .released
            .promoted
            .iter()
            .map(|m| m.body.as_str())
            .collect();
        assert_eq!(promoted, ["late"], "{}", t.name);
        let window = finished.released.flush.expect("a window for the late turn");
        let batch = db
            .claim_flush_early(&sid, window.generation, NOW + 4)
            .await
            .unwrap()
            .expect("claimed");
        let batched: Vec<&str> = batch.messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(batched, ["late"], "{}: only the unanswered turn", t.name);
        assert_eq!(state(db, &sid).await.state, RunState::Pending, "{}", t.name);
    }
}

#[tokio::test]
async fn the_end_of_a_run_promotes_the_queue_and_arms_the_debounce() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        let runs = db.runs();
        channel_message(db, sid, "one", NOW + 2).await;
        runs.enqueue_api(sid, "two", 20, NOW + 3).await.unwrap();
        channel_message(db, sid, "three", NOW + 4).await;
        runs.append_reply(sid, &claim.run_id, "reply", NOW + 5)
            .await
            .unwrap()
            .unwrap();
        let generation = db
            .ingest()
            .get_session(sid)
            .await
            .unwrap()
            .unwrap()
            .flush_generation;

        let ReleaseOutcome::Released(released) = runs
            .release(sid, &claim.run_id, &RunEnd::Completed, NOW + 10)
            .await
            .unwrap()
        else {
            panic!("owner");
        };
        assert_eq!(released.state, RunState::Idle);
        let promoted: Vec<&str> = released.promoted.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(promoted, ["one", "two", "three"], "{}: in order", t.name);
        let ticket = released.flush.expect("debounce armed");
        assert_eq!(ticket.session_id, *sid);
        assert_eq!(ticket.due_at_ms, NOW + 10 + DEBOUNCE, "{}", t.name);
        assert_eq!(ticket.generation, generation + 1);
        assert!(runs.list_queue(sid).await.unwrap().is_empty());
        let session = db.ingest().get_session(sid).await.unwrap().unwrap();
        assert_eq!(session.flush_due_at_ms, Some(ticket.due_at_ms));
        assert_eq!(
            session.reply_to_message_id.as_deref(),
            Some("om_three"),
            "{}: reply anchor",
            t.name
        );
        assert_eq!(
            bodies(db, sid).await[1..],
            ["reply", "one", "two", "three"],
            "{}",
            t.name
        );

        // The debounce claim makes the session pending; the next run sees the backlog.
        assert!(
            db.claim_flush(sid, ticket.generation, NOW + 9)
                .await
                .unwrap()
                .is_none()
        );
        let batch = db
            .claim_flush(sid, ticket.generation, ticket.due_at_ms)
            .await
            .unwrap()
            .expect("due window");
        assert_eq!(batch.messages.len(), 3, "{}", t.name);
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Pending);
        assert_eq!(status.pending_since_ms, Some(ticket.due_at_ms));
        let next = runs
            .acquire("echo", "w2", ticket.due_at_ms + 1)
            .await
            .unwrap()
            .unwrap();
        let context = runs.run_context(sid, &next.run_id).await.unwrap().unwrap();
        let seen: Vec<&str> = context.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(
            seen[seen.len() - 3..],
            ["one", "two", "three"],
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn a_flush_claim_never_overwrites_running() {
    for t in db::test_databases().await {
        let db = &t.db;
        let inst = installation(db, "echo").await;
        let sid = session(db, &inst, "window-then-run").await;
        // A window armed while not running, then the session runs before the window ends.
        let appended = channel_message(db, &sid, "hello", NOW).await;
        let (generation, due) = appended.flush.unwrap();
        db.runs()
            .enqueue_api(&sid, "api", 20, NOW + 1)
            .await
            .unwrap();
        let claim = db
            .runs()
            .acquire("echo", "w1", NOW + 2)
            .await
            .unwrap()
            .unwrap();
        let batch = db
            .claim_flush(&sid, generation, due)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.messages.len(), 2, "{}", t.name);
        let status = state(db, &sid).await;
        assert_eq!(status.state, RunState::Running, "{}", t.name);
        assert_eq!(status.run_id.as_deref(), Some(claim.run_id.as_str()));
    }
}

#[tokio::test]
async fn api_submissions_beyond_the_cap_are_refused() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        for i in 0..20 {
            match db
                .runs()
                .enqueue_api(sid, &format!("q{i}"), 20, NOW + 2)
                .await
                .unwrap()
            {
                Submitted::Queued(q) => assert_eq!(q.source, "api"),
                other => panic!("{other:?}"),
            }
        }
        let refused = db
            .runs()
            .enqueue_api(sid, "one too many", 20, NOW + 3)
            .await;
        assert!(
            matches!(refused, Err(RunError::QueueFull { cap: 20, .. })),
            "{}: {refused:?}",
            t.name
        );
        assert_eq!(db.runs().list_queue(sid).await.unwrap().len(), 20);
        assert_eq!(state(db, sid).await.state, RunState::Running, "{}", t.name);

        // A pending session queues API messages too; an idle one stores them directly.
        let inst = installation(db, "echo").await;
        let pending = pending_session(db, &inst, "p", NOW).await;
        assert!(matches!(
            db.runs()
                .enqueue_api(&pending, "wait", 20, NOW + 1)
                .await
                .unwrap(),
            Submitted::Queued(_)
        ));
        assert!(matches!(
            db.runs().enqueue_api("no-such-session", "x", 20, NOW).await,
            Err(RunError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn a_channel_message_at_the_cap_is_kept_and_interrupts_the_run() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        for i in 0..20 {
            let appended = channel_message(db, sid, &format!("m{i}"), NOW + 2 + i).await;
            assert!(appended.queued.unwrap().interrupted_run.is_none());
        }
        assert_eq!(state(db, sid).await.state, RunState::Running);
        let appended = channel_message(db, sid, "m20", NOW + 30).await;
        let queued = appended.queued.expect("still queued first");
        assert_eq!(
            queued.interrupted_run.as_deref(),
            Some(claim.run_id.as_str()),
            "{}: the run is interrupted",
            t.name
        );
        let (generation, due) = appended.flush.expect("the backlog's window is armed");
        assert_eq!(due, NOW + 30 + DEBOUNCE);
        let history = bodies(db, sid).await;
        assert_eq!(history.len(), 22, "{}: nothing dropped", t.name);
        assert_eq!(history.last().unwrap(), "m20");
        assert_eq!(history[1], "m0");
        let messages = db.ingest().list_messages(sid).await.unwrap();
        assert_eq!(appended.message_id, messages.last().unwrap().id);
        assert!(db.runs().list_queue(sid).await.unwrap().is_empty());
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Idle, "{}", t.name);
        assert_eq!(status.run_id, None);
        assert!(
            !db.runs()
                .heartbeat(sid, &claim.run_id, NOW + 31)
                .await
                .unwrap()
        );
        // The window's claim makes the backlog run next.
        db.claim_flush(sid, generation, due).await.unwrap().unwrap();
        assert_eq!(state(db, sid).await.state, RunState::Pending, "{}", t.name);
    }
}

// ------------------------------------------------------------------------- operations

#[tokio::test]
async fn interrupt_stops_a_running_run_and_leaves_pending_alone() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        let transition = runs.interrupt(sid, NOW + 5).await.unwrap();
        assert_eq!(transition.state, RunState::Idle, "{}", t.name);
        assert_eq!(
            transition.interrupted_run.as_deref(),
            Some(claim.run_id.as_str())
        );
        assert!(
            transition.flush.is_none(),
            "empty queue: nothing to promote"
        );
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Idle);
        assert_eq!(status.worker_id, None, "{}: worker cleared", t.name);
        assert!(!runs.heartbeat(sid, &claim.run_id, NOW + 6).await.unwrap());
        assert_eq!(
            runs.release(sid, &claim.run_id, &RunEnd::Completed, NOW + 7)
                .await
                .unwrap(),
            ReleaseOutcome::NotOwner
        );

        let inst = installation(db, "echo-waiting").await;
        let pending = pending_session(db, &inst, "pending", NOW).await;
        let transition = runs.interrupt(&pending, NOW + 5).await.unwrap();
        assert_eq!(
            transition.state,
            RunState::Pending,
            "{}: pending wins",
            t.name
        );
        assert_eq!(state(db, &pending).await.state, RunState::Pending);
        let idle = session(db, &inst, "idle").await;
        assert_eq!(
            runs.interrupt(&idle, NOW).await.unwrap().state,
            RunState::Idle
        );

        // With a queue, the interrupted run's backlog is promoted and its window armed.
        let claim = running_session(db, "echo", "w1").await;
        channel_message(db, &claim.session_id, "queued", NOW + 2).await;
        let transition = runs.interrupt(&claim.session_id, NOW + 8).await.unwrap();
        assert_eq!(transition.promoted.len(), 1, "{}", t.name);
        assert_eq!(transition.flush.unwrap().due_at_ms, NOW + 8 + DEBOUNCE);
        assert!(matches!(
            runs.interrupt("missing", NOW).await,
            Err(RunError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn promote_interrupts_and_dequeue_removes() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        let first = channel_message(db, sid, "first", NOW + 2)
            .await
            .queued
            .unwrap();
        let second = channel_message(db, sid, "second", NOW + 3)
            .await
            .queued
            .unwrap();
        let third = channel_message(db, sid, "third", NOW + 4)
            .await
            .queued
            .unwrap();

        let (message, transition) = runs
            .promote_queued(sid, second.queued_id, NOW + 5)
            .await
            .unwrap();
        assert_eq!(message.body, "second");
        assert_eq!(message.role, "user");
        assert_eq!(transition.state, RunState::Pending, "{}", t.name);
        assert_eq!(
            transition.interrupted_run.as_deref(),
            Some(claim.run_id.as_str())
        );
        assert_eq!(bodies(db, sid).await.last().unwrap(), "second");
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Pending);
        assert_eq!(status.worker_id, None);
        assert!(
            !runs.heartbeat(sid, &claim.run_id, NOW + 6).await.unwrap(),
            "{}",
            t.name
        );
        let queue: Vec<i64> = runs
            .list_queue(sid)
            .await
            .unwrap()
            .iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(queue, [first.queued_id, third.queued_id]);

        assert!(runs.delete_queued(sid, first.queued_id).await.unwrap());
        assert!(
            !runs.delete_queued(sid, first.queued_id).await.unwrap(),
            "{}",
            t.name
        );
        let queue: Vec<i64> = runs
            .list_queue(sid)
            .await
            .unwrap()
            .iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(queue, [third.queued_id]);
        assert!(matches!(
            runs.promote_queued(sid, first.queued_id, NOW).await,
            Err(RunError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn edit_truncates_clears_the_queue_and_sets_pending() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        let reply = runs
            .append_reply(sid, &claim.run_id, "a1", NOW + 2)
            .await
            .unwrap()
            .unwrap();
        channel_message(db, sid, "queued", NOW + 3).await;
        runs.release(sid, &claim.run_id, &RunEnd::Failed("boom".into()), NOW + 4)
            .await
            .unwrap();
        // The queued message was promoted; queue another one behind a new run.
        let history = db.ingest().list_messages(sid).await.unwrap();
        assert_eq!(history.len(), 3);
        let first = history[0].clone();

        assert!(matches!(
            runs.edit_message(sid, reply.id, "x", NOW + 5).await,
            Err(RunError::NotUser { .. })
        ));
        assert!(matches!(
            runs.edit_message(sid, 999_999, "x", NOW + 5).await,
            Err(RunError::NotFound { .. })
        ));
        assert_eq!(
            db.ingest().list_messages(sid).await.unwrap(),
            history,
            "{}: refused edits change nothing",
            t.name
        );

        runs.enqueue_api(sid, "again", 20, NOW + 6).await.unwrap();
        let second = runs.acquire("echo", "w2", NOW + 7).await.unwrap().unwrap();
        channel_message(db, sid, "behind", NOW + 8).await;
        let edited = runs
            .edit_message(sid, first.id, "rewritten", NOW + 9)
            .await
            .unwrap();
        assert_eq!(edited.message.id, first.id, "{}: same id", t.name);
        assert_eq!(edited.message.body, "rewritten");
        assert_eq!(edited.truncated, 3);
        assert_eq!(edited.dequeued, 1);
        assert_eq!(
            edited.interrupted_run.as_deref(),
            Some(second.run_id.as_str())
        );
        assert_eq!(bodies(db, sid).await, ["rewritten"], "{}", t.name);
        assert!(runs.list_queue(sid).await.unwrap().is_empty());
        let status = state(db, sid).await;
        assert_eq!(status.state, RunState::Pending, "{}", t.name);
        assert_eq!(status.worker_id, None);
        assert_eq!(status.last_error, None);
        assert!(!runs.heartbeat(sid, &second.run_id, NOW + 10).await.unwrap());
    }
}

#[tokio::test]
async fn deleting_a_session_removes_its_messages_and_queue() {
    for t in db::test_databases().await {
        let db = &t.db;
        let runs = db.runs();
        let claim = running_session(db, "echo", "w1").await;
        let sid = &claim.session_id;
        channel_message(db, sid, "queued", NOW + 2).await;
        let keep = running_session(db, "echo", "w2").await;
        channel_message(db, &keep.session_id, "kept", NOW + 2).await;

        assert!(runs.delete_session(sid).await.unwrap(), "{}", t.name);
        assert!(db.ingest().get_session(sid).await.unwrap().is_none());
        assert!(db.ingest().list_messages(sid).await.unwrap().is_empty());
        assert!(runs.list_queue(sid).await.unwrap().is_empty());
        assert!(!runs.heartbeat(sid, &claim.run_id, NOW + 3).await.unwrap());
        assert!(!runs.delete_session(sid).await.unwrap(), "{}", t.name);
        assert_eq!(runs.list_queue(&keep.session_id).await.unwrap().len(), 1);
        assert_eq!(bodies(db, &keep.session_id).await.len(), 1);
    }
}

// ------------------------------------------------------------------------- recovery

fn service(db: &Database, clock: &Arc<ManualClock>, stale_after: Duration) -> RunService {
    RunService::new(
        db,
        clock.clone(),
        EventHub::default(),
        RunSettings::with_stale_after(stale_after),
    )
}

#[tokio::test]
async fn stale_runs_are_recovered_at_boot_and_by_the_loop_but_waiting_sessions_never() {
    for t in db::test_databases().await {
        let db = &t.db;
        let clock = ManualClock::new(NOW);
        let runs = service(db, &clock, Duration::from_secs(300));
        let inst = installation(db, "echo").await;
        // Left running by a dead host (heartbeat at NOW + 1).
        let dead = running_session(db, "echo", "dead-host").await;
        // Waiting sessions: idle, error, pending.
        let idle = session(db, &inst, "idle").await;
        let failed = running_session(db, "echo", "w").await;
        db.runs()
            .release(
                &failed.session_id,
                &failed.run_id,
                &RunEnd::Failed("x".into()),
                NOW + 2,
            )
            .await
            .unwrap();
        let waiting = [idle.clone(), failed.session_id.clone()];
        let before: Vec<_> = {
            let mut v = Vec::new();
            for s in &waiting {
                v.push(state(db, s).await);
            }
            v
        };

        clock.set(NOW + 4 * MINUTE);
        assert!(
            runs.recover_at_boot().await.unwrap().is_empty(),
            "{}: not stale yet",
            t.name
        );
        clock.set(NOW + 6 * MINUTE);
        assert_eq!(
            runs.recover_at_boot().await.unwrap(),
            vec![dead.session_id.clone()],
            "{}",
            t.name
        );
        let status = state(db, &dead.session_id).await;
        assert_eq!(status.state, RunState::Pending);
        assert_eq!(status.worker_id, None, "{}: ownership cleared", t.name);
        assert_eq!(status.run_id, None);

        // The periodic loop (driven): a second run that goes stale after boot.
        let (ticks, rx) = tokio::sync::mpsc::channel(1);
        let handle = runs.spawn_recovery_loop_driven(rx);
        let second = runs.acquire("echo", "w2").await.unwrap().unwrap();
        assert_eq!(second.session_id, dead.session_id);
        let pass = |ticks: tokio::sync::mpsc::Sender<_>| async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            ticks.send(reply).await.unwrap();
            answer.await.unwrap()
        };
        clock.set(NOW + 10 * MINUTE);
        assert!(
            runs.heartbeat(&second.session_id, &second.run_id)
                .await
                .unwrap()
        );
        clock.set(NOW + 14 * MINUTE);
        assert!(
            pass(ticks.clone()).await.is_empty(),
            "{}: heartbeat kept it alive",
            t.name
        );
        clock.set(NOW + 15 * MINUTE + 1);
        assert_eq!(
            pass(ticks.clone()).await,
            vec![second.session_id.clone()],
            "{}",
            t.name
        );
        assert_eq!(state(db, &second.session_id).await.state, RunState::Pending);
        clock.set(NOW + 60 * MINUTE);
        assert!(pass(ticks.clone()).await.is_empty());
        drop(ticks);
        handle.await.unwrap();

        for (s, was) in waiting.iter().zip(before) {
            assert_eq!(
                state(db, s).await,
                was,
                "{}: waiting sessions are never touched",
                t.name
            );
        }
    }
}

#[tokio::test]
async fn the_timed_recovery_loop_recovers_and_stops_on_shutdown() {
    for t in db::test_databases().await {
        let db = &t.db;
        let clock = ManualClock::new(NOW);
        let mut settings = RunSettings::with_stale_after(Duration::from_secs(300));
        settings.recovery_interval = Duration::from_millis(5);
        let runs = RunService::new(db, clock.clone(), EventHub::default(), settings);
        let claim = running_session(db, "echo", "w1").await;
        let (_, mut events) = runs.hub().subscribe(&claim.session_id);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = runs.spawn_recovery_loop(async {
            let _ = stopped.await;
        });
        clock.set(NOW + 10 * MINUTE);
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the loop publishes the recovery")
            .unwrap();
        assert_eq!(
            event,
            SessionEvent::Status {
                state: RunState::Pending,
                last_error: None
            },
            "{}",
            t.name
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
    }
}

// ------------------------------------------------------------------------- events

#[tokio::test]
async fn the_service_publishes_every_transition() {
    for t in db::test_databases().await {
        let db = &t.db;
        let clock = ManualClock::new(NOW);
        let runs = service(db, &clock, Duration::from_secs(300));
        let inst = installation(db, "echo").await;
        let sid = session(db, &inst, "events").await;
        let (_, mut events) = runs.hub().subscribe(&sid);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .unwrap()
                .unwrap()
        };
        let status = |state| SessionEvent::Status {
            state,
            last_error: None,
        };

        runs.submit(&sid, "hi").await.unwrap();
        assert!(matches!(next().await, SessionEvent::Message { ref body, .. } if body == "hi"));
        assert_eq!(next().await, status(RunState::Pending), "{}", t.name);
        let claim = runs.acquire("echo", "w1").await.unwrap().unwrap();
        assert_eq!(next().await, status(RunState::Running));
        assert!(runs.publish_part(&sid, &claim.run_id, "Hel"));
        assert!(!runs.publish_part(&sid, "other-run", "x"));
        assert_eq!(
            next().await,
            SessionEvent::MessagePart {
                run_id: claim.run_id.clone(),
                text: "Hel".into()
            }
        );
        assert_eq!(runs.hub().buffered_parts(&sid).len(), 1);
        runs.submit(&sid, "queued").await.unwrap();
        assert!(
            matches!(next().await, SessionEvent::QueueUpdate { ref queue } if queue.len() == 1)
        );
        runs.append_reply(&sid, &claim.run_id, "Hello")
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(next().await, SessionEvent::Message { ref role, .. } if role == "assistant")
        );
        assert!(
            runs.hub().buffered_parts(&sid).is_empty(),
            "{}: parts cleared by the reply",
            t.name
        );
        runs.release(&sid, &claim.run_id, RunEnd::Failed("model down".into()))
            .await
            .unwrap();
        assert!(matches!(next().await, SessionEvent::Message { ref body, .. } if body == "queued"));
        assert!(
            matches!(next().await, SessionEvent::QueueUpdate { ref queue } if queue.is_empty())
        );
        assert_eq!(
            next().await,
            SessionEvent::Status {
                state: RunState::Error,
                last_error: Some("model down".into())
            },
            "{}",
            t.name
        );
        assert_eq!(
            next().await,
            SessionEvent::Error {
                message: "model down".into()
            }
        );
        assert!(
            !runs.publish_part(&sid, &claim.run_id, "late"),
            "buffering ended"
        );
    }
}

// ------------------------------------------------------------------------- racing workers

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_racing_on_postgres_never_claim_a_run_twice() {
    let t = db::postgres_db().await;
    let inst = installation(&t.db, "echo").await;
    const SESSIONS: usize = 200;
    for i in 0..SESSIONS {
        pending_session(&t.db, &inst, &format!("race-{i}"), NOW + i as i64).await;
    }
    let mut workers = Vec::new();
    for w in 0..4 {
        // Each worker on its own pool (separate connections).
        let db = Database::connect(&t.url).await.unwrap();
        workers.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(claim) = db
                .runs()
                .acquire("echo", &format!("w{w}"), NOW + 1_000)
                .await
                .unwrap()
            {
                claimed.push(claim.session_id);
            }
            db.close().await;
            claimed
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    for worker in workers {
        let claimed = worker.await.unwrap();
        per_worker.push(claimed.len());
        for session in claimed {
            *counts.entry(session).or_default() += 1;
        }
    }
    assert_eq!(
        counts.len(),
        SESSIONS,
        "every run claimed (per worker: {per_worker:?})"
    );
    assert!(
        counts.values().all(|&n| n == 1),
        "a run claimed twice: {counts:?}"
    );
    assert_eq!(per_worker.iter().sum::<usize>(), SESSIONS);
    let statuses = t.db.runs().list_statuses(Some(&inst)).await.unwrap();
    assert!(statuses.iter().all(|s| s.state == RunState::Running));
}

// ------------------------------------------------------------------------- HTTP

const ADMIN: &str = "runs-admin-token-0123456789abcdef";

#[tokio::test]
async fn admin_routes_operate_sessions_over_http() {
    for t in db::test_databases().await {
        let mut config = switchboard::config::Config::default();
        config.database.url = t.url.clone();
        config.secrets.key = Some(SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        let app = switchboard::app::App::from_config(&config)
            .await
            .expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let call =
            async |method: reqwest::Method, path: &str, body: Option<Value>| -> (u16, Value) {
                let mut request = client
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(ADMIN);
                if let Some(body) = body {
                    request = request
                        .header("content-type", "application/json")
                        .body(body.to_string());
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            };
        use reqwest::Method;

        let db = &t.db;
        // A long window: the debouncer armed by the interrupt must not fire during the test.
        let inst = installation_with(db, "echo-http", 3_600_000).await;
        let sid = session(db, &inst, "http").await;

        let unauthorized = client
            .get(format!("{base}/sessions/{sid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status().as_u16(), 401, "{}", t.name);
        let (code, body) = call(Method::GET, &format!("/sessions/{sid}"), None).await;
        assert_eq!(code, 200, "{}: {body}", t.name);
        assert_eq!(body["session"]["state"], "idle");
        assert_eq!(call(Method::GET, "/sessions/nope", None).await.0, 404);

        let (code, body) = call(
            Method::POST,
            &format!("/sessions/{sid}/messages"),
            Some(json!({"body": "hello"})),
        )
        .await;
        assert_eq!(code, 201, "{}: {body}", t.name);
        assert_eq!(body["queued"], false);
        let first_id = body["message"]["id"].as_i64().unwrap();
        let claim = db
            .runs()
            .acquire("echo-http", "w1", NOW)
            .await
            .unwrap()
            .unwrap();
        for i in 0..20 {
            let (code, body) = call(
                Method::POST,
                &format!("/sessions/{sid}/messages"),
                Some(json!({"body": format!("q{i}")})),
            )
            .await;
            assert_eq!(code, 202, "{}: {body}", t.name);
            assert_eq!(body["queued"], true);
        }
        let (code, body) = call(
            Method::POST,
            &format!("/sessions/{sid}/messages"),
            Some(json!({"body": "too many"})),
        )
        .await;
        assert_eq!(code, 429, "{}: {body}", t.name);
        assert!(
            body["error"].as_str().unwrap().contains("20 queued"),
            "{body}"
        );

        let (_, shown) = call(Method::GET, &format!("/sessions/{sid}"), None).await;
        assert_eq!(shown["session"]["state"], "running");
        let queue = shown["queue"].as_array().unwrap();
        assert_eq!(queue.len(), 20);
        let q0 = queue[0]["id"].as_i64().unwrap();
        let q1 = queue[1]["id"].as_i64().unwrap();

        assert_eq!(
            call(Method::DELETE, &format!("/sessions/{sid}/queue/{q0}"), None)
                .await
                .0,
            204
        );
        assert_eq!(
            call(Method::DELETE, &format!("/sessions/{sid}/queue/{q0}"), None)
                .await
                .0,
            404
        );
        let (code, body) = call(
            Method::POST,
            &format!("/sessions/{sid}/queue/{q1}/promote"),
            None,
        )
        .await;
        assert_eq!(code, 200, "{}: {body}", t.name);
        assert_eq!(body["state"], "pending");
        assert_eq!(body["interrupted_run"], claim.run_id.as_str());
        assert!(
            !db.runs()
                .heartbeat(&sid, &claim.run_id, NOW + 1)
                .await
                .unwrap()
        );

        let second = db
            .runs()
            .acquire("echo-http", "w2", NOW + 2)
            .await
            .unwrap()
            .unwrap();
        let (code, body) = call(Method::POST, &format!("/sessions/{sid}/interrupt"), None).await;
        assert_eq!(code, 200, "{}: {body}", t.name);
        assert_eq!(body["state"], "idle");
        assert_eq!(body["interrupted_run"], second.run_id.as_str());
        assert_eq!(body["promoted"], 18);

        let reply = {
            db.runs()
                .enqueue_api(&sid, "one more", 20, NOW + 3)
                .await
                .unwrap();
            let third = db.runs().acquire("echo-http", "w3", NOW + 4).await;
            let third = third.unwrap().unwrap();
            db.runs()
                .append_reply(&sid, &third.run_id, "assistant says", NOW + 5)
                .await
                .unwrap()
                .unwrap()
        };
        let (code, body) = call(
            Method::PUT,
            &format!("/sessions/{sid}/messages/{}", reply.id),
            Some(json!({"body": "x"})),
        )
        .await;
        assert_eq!(code, 400, "{}: {body}", t.name);
        let (code, body) = call(
            Method::PUT,
            &format!("/sessions/{sid}/messages/{first_id}"),
            Some(json!({"body": "hello again"})),
        )
        .await;
        assert_eq!(code, 200, "{}: {body}", t.name);
        assert_eq!(body["message"]["body"], "hello again");
        assert_eq!(bodies(db, &sid).await, ["hello again"]);
        assert_eq!(
            call(
                Method::PUT,
                &format!("/sessions/{sid}/messages/999999"),
                Some(json!({"body": "x"}))
            )
            .await
            .0,
            404
        );

        assert_eq!(
            call(Method::DELETE, &format!("/sessions/{sid}"), None)
                .await
                .0,
            204
        );
        assert_eq!(
            call(Method::GET, &format!("/sessions/{sid}"), None).await.0,
            404
        );
        assert_eq!(
            call(Method::DELETE, &format!("/sessions/{sid}"), None)
                .await
                .0,
            404
        );

        stop.send(()).unwrap();
        server.await.unwrap().expect("clean shutdown");
    }
}

// ------------------------------------------------------------------------- CLI

/// `switchboard sessions …` against the test database.
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["sessions"])
        .args(args)
        .env("SWITCHBOARD_DATABASE__URL", url)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_sessions_cli_operates_runs() {
    for t in db::test_databases().await {
        let db = &t.db;
        let claim = running_session(db, "echo", "w1").await;
        let sid = claim.session_id.clone();
        let queued = channel_message(db, &sid, "waiting", NOW + 2)
            .await
            .queued
            .unwrap()
            .queued_id;
        let first = db.ingest().list_messages(&sid).await.unwrap()[0].id;

        let (ok, out, err) = cli(&t.url, &["list"]);
        assert!(ok, "{}: {err}", t.name);
        assert!(out.contains(&sid) && out.contains("running"), "{out}");
        let (ok, out, _) = cli(&t.url, &["show", &sid]);
        assert!(
            ok && out.contains("waiting") && out.contains("running"),
            "{}: {out}",
            t.name
        );

        let (ok, out, err) = cli(&t.url, &["interrupt", &sid]);
        assert!(ok, "{}: {err}", t.name);
        assert!(out.contains(&claim.run_id), "{out}");
        assert_eq!(state(db, &sid).await.state, RunState::Idle);
        assert!(
            db.runs().list_queue(&sid).await.unwrap().is_empty(),
            "promoted"
        );
        let (ok, _, err) = cli(&t.url, &["dequeue", &sid, &queued.to_string()]);
        assert!(
            !ok && err.contains("no queued message"),
            "{}: {err}",
            t.name
        );

        let (ok, _, err) = cli(&t.url, &["edit", &sid, &first.to_string(), "edited"]);
        assert!(ok, "{}: {err}", t.name);
        assert_eq!(bodies(db, &sid).await, ["edited"]);
        assert_eq!(state(db, &sid).await.state, RunState::Pending);

        let (ok, _, err) = cli(&t.url, &["delete", &sid]);
        assert!(ok, "{}: {err}", t.name);
        assert!(db.ingest().get_session(&sid).await.unwrap().is_none());
        let (ok, _, err) = cli(&t.url, &["show", &sid]);
        assert!(!ok && err.contains("no session"), "{}: {err}", t.name);
    }
}
