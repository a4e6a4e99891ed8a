//! The debouncer (`switchboard::batch::Debouncer`) and the durable flush claim
//! (`Database::claim_flush`), on both backends (see `support/db.rs`). Time is manual
//! (`support/time.rs`): nothing sleeps; tests advance the clock and the timer wheel fires.
//!
//! Messages are appended with the real ingest append (`IngestStore::append`), which arms the
//! durable window in the same transaction; the test then hands the resulting ticket to the
//! debouncer, as the dispatcher does.

#[path = "support/db.rs"]
mod db;
#[path = "support/time.rs"]
mod time;

use std::sync::{Arc, Mutex};

use switchboard::batch::{Debouncer, FlushHandler};
use switchboard::store::{
    AppendOutcome, AppendRequest, ChatKind, Database, FlushBatch, FlushTicket, SessionKey, TurnKind,
};
use time::{ManualClock, ManualTimers};

const NOW: i64 = 1_700_000_000_000;
const WINDOW: i64 = 3_000;
const INSTALLATION: &str = "inst-1";

/// Records every batch the debouncer hands over.
#[derive(Clone, Default)]
struct Recorder {
    batches: Arc<Mutex<Vec<FlushBatch>>>,
}

impl Recorder {
    fn handler(&self) -> Arc<dyn FlushHandler> {
        let batches = Arc::clone(&self.batches);
        Arc::new(move |batch: FlushBatch| {
            let batches = Arc::clone(&batches);
            async move {
                batches.lock().unwrap().push(batch);
                Ok(())
            }
        })
    }

    fn take(&self) -> Vec<FlushBatch> {
        std::mem::take(&mut *self.batches.lock().unwrap())
    }

    fn count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
}

/// A debouncer on manual time starting at `now_ms`.
struct Harness {
    clock: Arc<ManualClock>,
    timers: ManualTimers,
    recorder: Recorder,
    debouncer: Debouncer,
}

impl Harness {
    fn new(db: &Database, now_ms: i64) -> Harness {
        let clock = ManualClock::new(now_ms);
        let timers = ManualTimers::new(Arc::clone(&clock));
        let recorder = Recorder::default();
        let debouncer = Debouncer::new(
            db.clone(),
            clock.clone(),
            Arc::new(timers.clone()),
            recorder.handler(),
        );
        Harness {
            clock,
            timers,
            recorder,
            debouncer,
        }
    }

    fn now(&self) -> i64 {
        use switchboard::domain::Clock;
        self.clock.now_ms()
    }

    /// Advances manual time by `ms` and waits for the flushes that fired.
    async fn advance(&self, ms: i64) {
        self.timers.advance(ms);
        self.debouncer.wait_idle().await;
    }
}

async fn raw_exec(t: &db::TestDb, sql: &str) {
    use sqlx::Connection;
    if t.name == "sqlite" {
        let mut c = sqlx::sqlite::SqliteConnection::connect(&t.url)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::postgres::PgConnection::connect(&t.url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

async fn session(db: &Database, chat_id: &str) -> String {
    db.ingest()
        .ensure_session(
            INSTALLATION,
            &SessionKey::new(chat_id, ChatKind::Direct, None),
            chat_id,
            NOW,
        )
        .await
        .expect("ensure session")
        .id
}

/// Appends a plain user message the way the dispatcher does and returns the armed window.
///
/// This harness runs no agent: a run a flush made pending is taken as answered first (a message
/// that arrives while a run is pending is queued, not batched; `tests/runs.rs` covers that).
async fn append(db: &Database, session_id: &str, body: &str, now_ms: i64) -> FlushTicket {
    db.runs()
        .settle_pending(session_id, now_ms)
        .await
        .expect("settle the pending run");
    let request = AppendRequest {
        session_id: session_id.to_owned(),
        installation_id: INSTALLATION.to_owned(),
        body: body.to_owned(),
        command_body: String::new(),
        channel_message_id: format!("om_{body}"),
        thread_id: None,
        sender_id: "ou_sender".to_owned(),
        turn: TurnKind::Plain,
        attachments: Vec::new(),
        debounce_ms: WINDOW,
    };
    match db.ingest().append(&request, None, now_ms).await {
        Ok(AppendOutcome::Appended(appended)) => {
            let (generation, due_at_ms) = appended.flush.expect("a plain turn arms the window");
            FlushTicket {
                session_id: session_id.to_owned(),
                generation,
                due_at_ms,
            }
        }
        other => panic!("append failed: {other:?}"),
    }
}

fn bodies(batch: &FlushBatch) -> Vec<&str> {
    batch.messages.iter().map(|m| m.body.as_str()).collect()
}

#[tokio::test]
async fn burst_coalesces_into_one_flush() {
    for t in db::test_databases().await {
        let h = Harness::new(&t.db, NOW);
        let s = session(&t.db, "oc_burst").await;
        for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
            let ticket = append(&t.db, &s, body, h.now()).await;
            h.debouncer.arm(ticket).await;
            if i < 2 {
                h.advance(1_000).await;
            }
        }
        assert_eq!(h.debouncer.armed(), 1, "{}: one window per session", t.name);
        assert_eq!(
            h.timers.pending(),
            1,
            "{}: superseded timers cancelled",
            t.name
        );

        // The first message's window (NOW + 3000) has passed, but the latest one wins.
        h.advance(WINDOW - 1).await;
        assert_eq!(h.recorder.count(), 0, "{}: still inside the window", t.name);
        h.advance(1).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}: exactly one flush", t.name);
        let batch = &batches[0];
        assert_eq!(bodies(batch), ["one", "two", "three"], "{}", t.name);
        assert_eq!(batch.session_id, s, "{}", t.name);
        assert_eq!(batch.installation_id, INSTALLATION, "{}", t.name);
        assert_eq!(batch.chat_id, "oc_burst", "{}", t.name);
        assert_eq!(batch.chat_type, "direct", "{}", t.name);
        assert_eq!(batch.generation, 3, "{}", t.name);
        assert_eq!(
            batch.reply_to_message_id.as_deref(),
            Some("om_three"),
            "{}",
            t.name
        );
        assert_eq!(batch.messages[0].sender_id.as_deref(), Some("ou_sender"));
        assert_eq!(
            batch.messages[2].channel_message_id.as_deref(),
            Some("om_three")
        );
        assert_eq!(batch.messages[2].created_at_ms, NOW + 2_000, "{}", t.name);

        let stored = t.db.ingest().get_session(&s).await.unwrap().unwrap();
        assert_eq!(stored.flush_due_at_ms, None, "{}: window closed", t.name);
        assert_eq!(stored.run_state, "pending", "{}: run pending", t.name);
        assert_eq!(
            stored.flushed_message_id, batch.messages[2].id,
            "{}: high-water mark advanced",
            t.name
        );
        assert_eq!(h.debouncer.armed(), 0, "{}", t.name);

        h.advance(60_000).await;
        assert_eq!(h.recorder.count(), 0, "{}: nothing flushes twice", t.name);

        // The next message starts a new batch with only itself.
        let ticket = append(&t.db, &s, "four", h.now()).await;
        h.debouncer.arm(ticket).await;
        h.advance(WINDOW).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["four"], "{}", t.name);
    }
}

#[tokio::test]
async fn sessions_are_independent() {
    for t in db::test_databases().await {
        let h = Harness::new(&t.db, NOW);
        let a = session(&t.db, "oc_a").await;
        let b = session(&t.db, "oc_b").await;
        let ticket = append(&t.db, &a, "a1", h.now()).await;
        h.debouncer.arm(ticket).await;
        h.advance(1_000).await;
        let ticket = append(&t.db, &b, "b1", h.now()).await;
        h.debouncer.arm(ticket).await;
        assert_eq!(h.debouncer.armed(), 2, "{}", t.name);

        // B's message does not push A's window back.
        h.advance(WINDOW - 1_000).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(batches[0].session_id, a, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["a1"], "{}", t.name);

        // A new message in A does not touch B's window either.
        let ticket = append(&t.db, &a, "a2", h.now()).await;
        h.debouncer.arm(ticket).await;
        h.advance(1_000).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(batches[0].session_id, b, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["b1"], "{}", t.name);

        h.advance(WINDOW).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["a2"], "{}", t.name);
    }
}

#[tokio::test]
async fn superseded_timer_is_a_noop() {
    for t in db::test_databases().await {
        let h = Harness::new(&t.db, NOW);
        let s = session(&t.db, "oc_fence").await;
        let old = append(&t.db, &s, "first", h.now()).await;
        h.debouncer.arm(old.clone()).await;
        h.advance(2_000).await;
        let new = append(&t.db, &s, "second", h.now()).await;
        h.debouncer.arm(new.clone()).await;
        assert!(new.generation > old.generation, "{}", t.name);

        // A late, out-of-order arm of the old generation does not replace the live window.
        h.debouncer.arm(old.clone()).await;
        assert_eq!(h.debouncer.armed(), 1, "{}", t.name);
        assert_eq!(h.timers.pending(), 1, "{}", t.name);

        // The old window's end passes: nothing.
        h.advance(old.due_at_ms - h.now()).await;
        assert_eq!(h.recorder.count(), 0, "{}: old timer superseded", t.name);

        // The old generation firing anyway (a stale replica's timer, or one that fired while
        // being replaced) is fenced off by the claim.
        let stale = Harness::new(&t.db, new.due_at_ms + 1);
        stale.debouncer.arm(old.clone()).await;
        stale.debouncer.wait_idle().await;
        assert_eq!(
            stale.recorder.count(),
            0,
            "{}: stale generation fenced",
            t.name
        );
        assert_eq!(
            t.db.claim_flush(&s, old.generation, i64::MAX / 2)
                .await
                .unwrap(),
            None,
            "{}: claim with an old generation",
            t.name
        );
        let stored = t.db.ingest().get_session(&s).await.unwrap().unwrap();
        assert_eq!(
            stored.flush_due_at_ms,
            Some(new.due_at_ms),
            "{}: the fenced claims left the window open",
            t.name
        );

        // Only the latest generation flushes, with both messages.
        h.advance(new.due_at_ms - h.now()).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(batches[0].generation, new.generation, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["first", "second"], "{}", t.name);
    }
}

#[tokio::test]
async fn claim_flush_fences_and_batches_user_messages_only() {
    for t in db::test_databases().await {
        let db = &t.db;
        let s = session(db, "oc_claim").await;
        let first = append(db, &s, "hello", NOW).await;
        // A bare `/new` stores nothing and does not arm; the agent's reply and a system notice
        // in the window are stored but never batched (only user messages are).
        let fresh = AppendRequest {
            session_id: s.clone(),
            installation_id: INSTALLATION.to_owned(),
            body: String::new(),
            command_body: "/new".to_owned(),
            channel_message_id: "om_new".to_owned(),
            thread_id: None,
            sender_id: "ou_sender".to_owned(),
            turn: TurnKind::MarkFresh,
            attachments: Vec::new(),
            debounce_ms: WINDOW,
        };
        assert_eq!(
            db.ingest().append(&fresh, None, NOW + 10).await.unwrap(),
            AppendOutcome::FreshPending,
            "{}",
            t.name
        );
        for (role, kind) in [("assistant", "message"), ("system", "notice")] {
            raw_exec(
                &t,
                &format!(
                    "INSERT INTO messages (session_id, role, kind, body, context_revision,
                         created_at_ms)
                     VALUES ('{s}', '{role}', '{kind}', 'not batched', 1, {})",
                    NOW + 20
                ),
            )
            .await;
        }

        assert_eq!(
            db.pending_flushes().await.unwrap(),
            std::slice::from_ref(&first),
            "{}",
            t.name
        );
        assert!(
            db.overdue_flushes(first.due_at_ms - 1)
                .await
                .unwrap()
                .is_empty(),
            "{}: not overdue yet",
            t.name
        );
        assert_eq!(
            db.overdue_flushes(first.due_at_ms).await.unwrap(),
            std::slice::from_ref(&first),
            "{}",
            t.name
        );

        assert_eq!(
            db.claim_flush(&s, first.generation, first.due_at_ms - 1)
                .await
                .unwrap(),
            None,
            "{}: not due",
            t.name
        );
        assert_eq!(
            db.claim_flush(&s, first.generation + 1, first.due_at_ms)
                .await
                .unwrap(),
            None,
            "{}: unknown generation",
            t.name
        );
        assert_eq!(
            db.claim_flush("no-such-session", 1, i64::MAX / 2)
                .await
                .unwrap(),
            None,
            "{}: unknown session",
            t.name
        );
        let batch = db
            .claim_flush(&s, first.generation, first.due_at_ms)
            .await
            .unwrap()
            .expect("due window is claimed");
        assert_eq!(bodies(&batch), ["hello"], "{}: user messages only", t.name);
        assert_eq!(
            db.claim_flush(&s, first.generation, first.due_at_ms)
                .await
                .unwrap(),
            None,
            "{}: claimed once",
            t.name
        );
        assert!(db.pending_flushes().await.unwrap().is_empty(), "{}", t.name);

        // Early claims (FlushAll) ignore the due time but not the fence.
        let second = append(db, &s, "again", NOW + 100).await;
        assert_eq!(
            db.claim_flush_early(&s, first.generation, NOW + 100)
                .await
                .unwrap(),
            None,
            "{}",
            t.name
        );
        let batch = db
            .claim_flush_early(&s, second.generation, NOW + 100)
            .await
            .unwrap()
            .expect("early claim");
        assert_eq!(bodies(&batch), ["again"], "{}", t.name);
    }
}

#[tokio::test]
async fn flush_all_drains_every_window_once_and_later_arms_flush_inline() {
    for t in db::test_databases().await {
        let h = Harness::new(&t.db, NOW);
        let armed = session(&t.db, "oc_armed").await;
        let db_only = session(&t.db, "oc_db_only").await;
        let done = session(&t.db, "oc_done").await;

        let ticket = append(&t.db, &done, "done", h.now()).await;
        h.debouncer.arm(ticket).await;
        h.advance(WINDOW).await;
        assert_eq!(h.recorder.take().len(), 1, "{}", t.name);

        let ticket = append(&t.db, &armed, "armed-1", h.now()).await;
        h.debouncer.arm(ticket).await;
        let ticket = append(&t.db, &armed, "armed-2", h.now()).await;
        h.debouncer.arm(ticket).await;
        // Stored but never armed here (e.g. appended by another replica).
        append(&t.db, &db_only, "db-only", h.now()).await;

        let flushed = h.debouncer.flush_all().await;
        assert_eq!(
            flushed,
            std::slice::from_ref(&armed),
            "{}: FlushAll reports what it flushed",
            t.name
        );
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}: this replica's window, once", t.name);
        assert_eq!(batches[0].session_id, armed, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["armed-1", "armed-2"], "{}", t.name);
        assert_eq!(h.debouncer.armed(), 0, "{}", t.name);
        assert_eq!(h.timers.pending(), 0, "{}: timers cancelled", t.name);
        // A window this replica never armed is left to the replicas that keep running: the
        // next sweep of another one flushes it when it comes due.
        let open = t.db.pending_flushes().await.unwrap();
        assert_eq!(open.len(), 1, "{}: {open:?}", t.name);
        assert_eq!(open[0].session_id, db_only, "{}", t.name);
        let survivor = Harness::new(&t.db, open[0].due_at_ms);
        assert_eq!(survivor.debouncer.sweep(0).await.unwrap(), 1, "{}", t.name);
        survivor.debouncer.wait_idle().await;
        let batches = survivor.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["db-only"], "{}", t.name);
        assert!(
            t.db.pending_flushes().await.unwrap().is_empty(),
            "{}",
            t.name
        );

        // Time passing after shutdown fires nothing, and a second FlushAll finds nothing.
        h.advance(10 * WINDOW).await;
        h.debouncer.flush_all().await;
        assert_eq!(h.recorder.count(), 0, "{}", t.name);

        // A late arm flushes inline: done when arm returns, without waiting for the window.
        let ticket = append(&t.db, &armed, "late", h.now()).await;
        h.debouncer.arm(ticket).await;
        let batches = h.recorder.take();
        assert_eq!(batches.len(), 1, "{}: inline flush", t.name);
        assert_eq!(bodies(&batches[0]), ["late"], "{}", t.name);
        assert_eq!(h.timers.pending(), 0, "{}", t.name);
    }
}

/// Issue 14: windows belong to the cluster. A replica that armed a window and died (no
/// shutdown, its timer gone with it) leaves it to the others: the survivor's sweep arms it and
/// flushes it when due, without a restart of the dead one.
#[tokio::test]
async fn a_dead_replicas_window_is_flushed_by_the_survivors_sweep() {
    for t in db::test_databases().await {
        let s = session(&t.db, "oc_orphan").await;
        let survivor = Harness::new(&t.db, NOW);
        let ticket = {
            let dead = Harness::new(&t.db, NOW);
            let ticket = append(&t.db, &s, "orphan", dead.now()).await;
            dead.debouncer.arm(ticket.clone()).await;
            assert_eq!(dead.debouncer.armed(), 1, "{}", t.name);
            ticket
        };
        // Not due within the horizon yet: nothing armed.
        assert_eq!(
            survivor.debouncer.sweep(WINDOW / 2).await.unwrap(),
            0,
            "{}",
            t.name
        );
        assert_eq!(survivor.debouncer.armed(), 0, "{}", t.name);
        // Due within the horizon: armed here, flushed at its end.
        assert_eq!(
            survivor.debouncer.sweep(WINDOW).await.unwrap(),
            1,
            "{}",
            t.name
        );
        assert_eq!(survivor.debouncer.armed(), 1, "{}", t.name);
        survivor
            .advance(ticket.due_at_ms - survivor.now() - 1)
            .await;
        assert_eq!(
            survivor.recorder.count(),
            0,
            "{}: not before its end",
            t.name
        );
        survivor.advance(1).await;
        let batches = survivor.recorder.take();
        assert_eq!(batches.len(), 1, "{}", t.name);
        assert_eq!(bodies(&batches[0]), ["orphan"], "{}", t.name);
        // A second sweep finds nothing: the window is closed.
        assert_eq!(
            survivor.debouncer.sweep(WINDOW).await.unwrap(),
            0,
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn overdue_window_flushes_on_boot_after_a_crash() {
    for t in db::test_databases().await {
        let s = session(&t.db, "oc_crash").await;
        {
            let h = Harness::new(&t.db, NOW);
            let ticket = append(&t.db, &s, "before crash", h.now()).await;
            h.debouncer.arm(ticket).await;
            h.advance(1_000).await;
            // Crash inside the window: the debouncer and its timers are gone.
        }

        // The host comes back after the window ended.
        let h = Harness::new(&t.db, NOW + 10_000);
        assert_eq!(h.debouncer.recover().await.unwrap(), 1, "{}", t.name);
        h.debouncer.wait_idle().await;
        let batches = h.recorder.take();
        assert_eq!(
            batches.len(),
            1,
            "{}: overdue window flushed on boot",
            t.name
        );
        assert_eq!(bodies(&batches[0]), ["before crash"], "{}", t.name);
        assert_eq!(h.timers.pending(), 0, "{}", t.name);

        // Recovering again finds nothing.
        assert_eq!(h.debouncer.recover().await.unwrap(), 0, "{}", t.name);
        h.advance(WINDOW).await;
        assert_eq!(h.recorder.count(), 0, "{}", t.name);
    }
}

#[tokio::test]
async fn window_not_yet_due_at_boot_fires_when_time_reaches_it() {
    for t in db::test_databases().await {
        let s = session(&t.db, "oc_restart").await;
        let ticket = {
            let h = Harness::new(&t.db, NOW);
            let ticket = append(&t.db, &s, "mid-window", h.now()).await;
            h.debouncer.arm(ticket.clone()).await;
            ticket
        };

        // Back up 1 s into the 3 s window.
        let h = Harness::new(&t.db, NOW + 1_000);
        assert_eq!(h.debouncer.recover().await.unwrap(), 1, "{}", t.name);
        h.debouncer.wait_idle().await;
        assert_eq!(h.recorder.count(), 0, "{}: not due yet", t.name);
        assert_eq!(h.debouncer.armed(), 1, "{}", t.name);

        // A recovery racing a live window (same generation) neither duplicates nor delays it.
        h.debouncer.arm(ticket.clone()).await;
        assert_eq!(h.timers.pending(), 1, "{}", t.name);

        h.advance(ticket.due_at_ms - h.now() - 1).await;
        assert_eq!(h.recorder.count(), 0, "{}", t.name);
        h.advance(1).await;
        let batches = h.recorder.take();
        assert_eq!(
            batches.len(),
            1,
            "{}: flushed at the stored due time",
            t.name
        );
        assert_eq!(bodies(&batches[0]), ["mid-window"], "{}", t.name);
    }
}

#[tokio::test]
async fn failing_handler_is_logged_and_later_windows_still_flush() {
    for t in db::test_databases().await {
        let clock = ManualClock::new(NOW);
        let timers = ManualTimers::new(Arc::clone(&clock));
        let calls = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&calls);
        let handler: Arc<dyn FlushHandler> = Arc::new(move |batch: FlushBatch| {
            let seen = Arc::clone(&seen);
            async move {
                let body = batch.messages[0].body.clone();
                seen.lock().unwrap().push(body.clone());
                if body == "boom" {
                    anyhow::bail!("plugin outbound flush trapped");
                }
                Ok(())
            }
        });
        let debouncer = Debouncer::new(
            t.db.clone(),
            clock.clone(),
            Arc::new(timers.clone()),
            handler,
        );
        let s = session(&t.db, "oc_fail").await;

        let ticket = append(&t.db, &s, "boom", NOW).await;
        debouncer.arm(ticket).await;
        timers.advance(WINDOW);
        debouncer.wait_idle().await;
        let stored = t.db.ingest().get_session(&s).await.unwrap().unwrap();
        assert_eq!(stored.run_state, "pending", "{}: the claim stands", t.name);
        assert_eq!(stored.flush_due_at_ms, None, "{}", t.name);

        let ticket = append(&t.db, &s, "fine", NOW + WINDOW).await;
        debouncer.arm(ticket).await;
        timers.advance(WINDOW);
        debouncer.wait_idle().await;
        assert_eq!(*calls.lock().unwrap(), ["boom", "fine"], "{}", t.name);
    }
}
