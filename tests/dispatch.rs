//! The inbound dispatcher (`switchboard::dispatch`) and the store it runs on
//! (`switchboard::store::{InstallationStore, IngestStore, SecretCipher}`), SPEC §3 steps 1–8.
//! Every test runs against a fresh SQLite file database and a fresh PostgreSQL database
//! (see `support/db.rs`). Time comes from a manual clock: nothing sleeps to make time pass.

#[path = "support/db.rs"]
mod db;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use switchboard::dispatch::{
    Builtin, Command, DispatchError, Dispatcher, DropReason, EventMeta, Outcome, Step, StepHook,
    resolve_installation,
};
use switchboard::domain::Clock;
use switchboard::domain::notice::{Notice, NoticeKind, NoticeTexts};
use switchboard::runtime::types::{Chat, ChatKind, InboundMessage, Participant};
use switchboard::store::{
    AccessPolicy, AppendOutcome, AppendRequest, BindingError, DedupClaim, IngestStore,
    Installation, InstallationStore, NewInstallation, OutboxContent, PairingAsk, PairingError,
    RetainedTable, SecretCipher, SecretError, StoreError, TurnKind,
};
use tokio::sync::Notify;

const T0: i64 = 1_700_000_000_000;
const EVENT: &str = "im.message.receive_v1";
const KEY: [u8; 32] = [42; 32];

/// A clock that moves only when told to.
#[derive(Debug)]
struct TestClock(AtomicI64);

impl TestClock {
    fn new(now_ms: i64) -> Arc<TestClock> {
        Arc::new(TestClock(AtomicI64::new(now_ms)))
    }
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One backend with an installation and a dispatcher over it.
struct Fixture {
    t: db::TestDb,
    clock: Arc<TestClock>,
    store: InstallationStore,
    ingest: IngestStore,
    dispatcher: Dispatcher,
    inst: Installation,
}

fn new_installation(routing_key: &str, policy: AccessPolicy) -> NewInstallation {
    NewInstallation {
        channel: "lark".into(),
        routing_key: routing_key.into(),
        name: "Test bot".into(),
        // The bot's own ids are channel config (contract 0.2), not installation columns.
        config: BTreeMap::from([
            ("region".to_owned(), "feishu".to_owned()),
            ("bot_open_id".to_owned(), "ou_bot".to_owned()),
            ("bot_union_id".to_owned(), "on_bot".to_owned()),
        ]),
        secrets: BTreeMap::from([
            ("app_secret".to_owned(), "plain-app-secret-123".to_owned()),
            ("encrypt_key".to_owned(), "plain-encrypt-key-456".to_owned()),
        ]),
        access_policy: policy,
        agent: "echo".into(),
        debounce_ms: 3_000,
    }
}

impl Fixture {
    async fn new(t: db::TestDb, policy: AccessPolicy) -> Fixture {
        let clock = TestClock::new(T0);
        let store = t.db.installations(SecretCipher::from_key_bytes(&KEY));
        let inst = store
            .create(&new_installation("cli_app", policy), T0)
            .await
            .unwrap();
        let ingest = t.db.ingest();
        let dispatcher = Dispatcher::new(store.clone(), clock.clone());
        Fixture {
            t,
            clock,
            store,
            ingest,
            dispatcher,
            inst,
        }
    }

    fn name(&self) -> &str {
        &self.t.name
    }

    async fn dispatch(&self, message: &InboundMessage, command: Option<&Command>) -> Outcome {
        self.dispatcher
            .dispatch(&self.inst, message, command, EVENT)
            .await
            .unwrap_or_else(|e| panic!("{}: dispatch failed: {e}", self.name()))
    }

    /// Whether the dispatch of `message` was answered "retry later" because another delivery's
    /// dedup claim is still in flight (it must never be acknowledged as a duplicate then).
    async fn in_flight(&self, message: &InboundMessage) -> bool {
        match self
            .dispatcher
            .dispatch(&self.inst, message, None, EVENT)
            .await
        {
            Err(DispatchError::InFlight { message_id }) => {
                assert_eq!(message_id, message.message_id, "{}", self.name());
                true
            }
            Err(e) => panic!("{}: dispatch failed: {e}", self.name()),
            Ok(outcome) => {
                eprintln!("{}: not in flight: {outcome:?}", self.name());
                false
            }
        }
    }

    async fn audit_reasons(&self) -> Vec<String> {
        let mut rows = self.ingest.list_audit(None, 100).await.unwrap();
        rows.reverse();
        rows.into_iter().map(|r| r.drop_reason).collect()
    }

    async fn only_session(&self) -> switchboard::store::Session {
        let sessions = self.ingest.list_sessions(&self.inst.id).await.unwrap();
        assert_eq!(sessions.len(), 1, "{}: sessions {sessions:?}", self.name());
        sessions.into_iter().next().unwrap()
    }

    async fn all_messages(&self) -> Vec<switchboard::store::Message> {
        self.ingest
            .list_session_histories(&self.inst.id)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|h| h.messages)
            .collect()
    }
}

async fn fixtures(policy: AccessPolicy) -> Vec<Fixture> {
    let mut out = Vec::new();
    for t in db::test_databases().await {
        out.push(Fixture::new(t, policy).await);
    }
    out
}

/// A direct text message from `ou_alice` (alt id `union_id` = `on_alice`).
fn msg(message_id: &str, chat_id: &str, body: &str) -> InboundMessage {
    InboundMessage {
        event_id: format!("ev-{message_id}"),
        message_id: message_id.into(),
        chat: Chat {
            id: chat_id.into(),
            kind: ChatKind::Direct,
            title: None,
        },
        sender: Participant {
            id: "ou_alice".into(),
            display_name: Some("Alice".into()),
            is_bot: false,
            alt_ids: vec![("union_id".into(), "on_alice".into())],
        },
        message_type: "text".into(),
        body: body.into(),
        command_body: body.into(),
        addressed_to_bot: false,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: T0,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

/// A group message, addressed to the bot or not.
fn group_msg(message_id: &str, chat_id: &str, body: &str, addressed: bool) -> InboundMessage {
    kind_msg(ChatKind::Group, message_id, chat_id, body, addressed)
}

/// A message in a chat of `kind`, addressed to the bot or not.
fn kind_msg(
    kind: ChatKind,
    message_id: &str,
    chat_id: &str,
    body: &str,
    addressed: bool,
) -> InboundMessage {
    let mut m = msg(message_id, chat_id, body);
    m.chat.kind = kind;
    m.addressed_to_bot = addressed;
    m
}

/// The command a plugin parse `{name, args}` of `text` gives (`/name args…`).
fn parsed(text: &str) -> Command {
    let text = text.trim().trim_start_matches('/');
    let (name, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    Command::parsed(name, args)
}

fn session_id(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ingested { session_id, .. }
        | Outcome::FreshPending { session_id }
        | Outcome::Builtin { session_id, .. } => session_id.clone(),
        other => panic!("no session in {other:?}"),
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A step hook from a closure that returns the future to await at a step (`None`: go on).
fn hook(f: impl Fn(Step) -> Option<BoxFuture> + Send + Sync + 'static) -> StepHook {
    Arc::new(move |step| f(step).unwrap_or_else(|| Box::pin(async {})))
}

fn boxed(f: impl Future<Output = ()> + Send + 'static) -> BoxFuture {
    Box::pin(f)
}

// ----------------------------------------------------------------------------- raw SQL helpers

async fn raw_i64(t: &db::TestDb, sql: &str) -> i64 {
    if t.name == "sqlite" {
        let mut c = SqliteConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = PgConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

async fn raw_texts(t: &db::TestDb, sql: &str) -> Vec<String> {
    if t.name == "sqlite" {
        let mut c = SqliteConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    } else {
        let mut c = PgConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    }
}

async fn raw_bytes(t: &db::TestDb, sql: &str) -> Vec<u8> {
    if t.name == "sqlite" {
        let mut c = SqliteConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = PgConnection::connect(&t.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

async fn raw_exec(url: &str, is_sqlite: bool, sql: &str) {
    if is_sqlite {
        let mut c = SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

/// Dispatches `m` through a dispatcher that renames `messages` away right before the append (once),
/// and checks the append failed as an infrastructure error. [`restore_the_messages_table`] undoes it.
async fn append_with_the_messages_table_gone(f: &Fixture, m: &InboundMessage) {
    let is_sqlite = f.name() == "sqlite";
    let url = f.t.url.clone();
    let armed = Arc::new(AtomicBool::new(true));
    let armed_in = armed.clone();
    let broken = f.dispatcher.clone().with_step_hook(hook(move |step| {
        if step != Step::BeforeAppend || !armed_in.swap(false, Ordering::SeqCst) {
            return None;
        }
        let url = url.clone();
        Some(boxed(async move {
            raw_exec(
                &url,
                is_sqlite,
                "ALTER TABLE messages RENAME TO messages_away",
            )
            .await;
        }))
    }));
    let err = broken.dispatch(&f.inst, m, None, EVENT).await.unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Store(StoreError::Query {
                op: "message append",
                ..
            })
        ),
        "{}: {err:?}",
        f.name()
    );
    assert!(!armed.load(Ordering::SeqCst), "{}: the hook ran", f.name());
}

async fn restore_the_messages_table(f: &Fixture) {
    raw_exec(
        &f.t.url,
        f.name() == "sqlite",
        "ALTER TABLE messages_away RENAME TO messages",
    )
    .await;
}

async fn dedup_rows(t: &db::TestDb) -> i64 {
    raw_i64(t, "SELECT COUNT(*) FROM inbound_dedup").await
}

// ----------------------------------------------------------------------------- step 1

#[tokio::test]
async fn unknown_installation_drops_invalid_event_without_claim() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = msg("om_1", "oc_1", "hello");
        let meta = EventMeta::of_event(&m, EVENT);
        for key in [Some("cli_unknown"), None, Some("")] {
            let got = resolve_installation(&f.store, "lark", key, &meta, T0)
                .await
                .unwrap();
            assert_eq!(
                got.unwrap_err(),
                Outcome::Dropped(DropReason::InvalidEvent),
                "{}: {key:?}",
                f.name()
            );
        }
        // The right key on another channel is unknown too.
        let other_channel = resolve_installation(&f.store, "slack", Some("cli_app"), &meta, T0)
            .await
            .unwrap();
        assert!(other_channel.is_err(), "{}", f.name());

        let rows = f.ingest.list_audit(None, 10).await.unwrap();
        assert_eq!(rows.len(), 4, "{}", f.name());
        for row in &rows {
            assert_eq!(row.drop_reason, "invalid_event", "{}", f.name());
            assert_eq!(row.installation_id, None, "{}", f.name());
            assert_eq!(row.message_id.as_deref(), Some("om_1"), "{}", f.name());
            assert_eq!(row.event_id.as_deref(), Some("ev-om_1"), "{}", f.name());
            assert_eq!(row.chat_id.as_deref(), Some("oc_1"), "{}", f.name());
            assert_eq!(row.event_type, EVENT, "{}", f.name());
        }
        assert_eq!(dedup_rows(&f.t).await, 0, "{}: no dedup claim", f.name());

        // The known key resolves, without an audit row.
        let found = resolve_installation(&f.store, "lark", Some("cli_app"), &meta, T0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, f.inst.id, "{}", f.name());
        assert_eq!(f.ingest.list_audit(None, 10).await.unwrap().len(), 4);
        // The dispatcher's convenience forms agree.
        assert!(
            f.dispatcher
                .installation("lark", Some("cli_unknown"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            f.dispatcher
                .reject_installation("lark", Some("cli_unknown"), &meta)
                .await
                .unwrap(),
            Outcome::Dropped(DropReason::InvalidEvent)
        );
        assert_eq!(f.ingest.list_audit(None, 10).await.unwrap().len(), 5);
    }
}

#[tokio::test]
async fn revoked_installation_drops() {
    for f in fixtures(AccessPolicy::Open).await {
        assert!(f.store.revoke(&f.inst.id, T0 + 1).await.unwrap());
        let m = msg("om_1", "oc_1", "hello");
        let meta = EventMeta::of_event(&m, EVENT);
        let got = f
            .dispatcher
            .resolve_installation("lark", Some("cli_app"), &meta)
            .await
            .unwrap();
        assert_eq!(
            got.unwrap_err(),
            Outcome::Dropped(DropReason::RevokedInstallation),
            "{}",
            f.name()
        );
        let rows = f.ingest.list_audit(Some(&f.inst.id), 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", f.name());
        assert_eq!(rows[0].drop_reason, "revoked_installation");
        assert_eq!(rows[0].installation_id.as_deref(), Some(f.inst.id.as_str()));
        assert_eq!(dedup_rows(&f.t).await, 0, "{}: no dedup claim", f.name());
        assert!(
            f.dispatcher
                .installation("lark", Some("cli_app"))
                .await
                .unwrap()
                .is_none(),
            "{}: revoked is not served",
            f.name()
        );
        assert!(!f.store.get(&f.inst.id).await.unwrap().unwrap().is_active());
        assert!(!f.store.revoke("no-such-id", T0).await.unwrap());
    }
}

// ----------------------------------------------------------------------------- step 2

#[tokio::test]
async fn duplicate_delivery_drops_and_stores_once() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = msg("om_1", "oc_1", "hello");
        let first = f.dispatch(&m, None).await;
        assert!(
            matches!(first, Outcome::Ingested { .. }),
            "{}: {first:?}",
            f.name()
        );
        // Right away, and long after (it was marked processed, not left in flight).
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
        f.clock.advance(10 * 60_000);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
        assert_eq!(
            f.audit_reasons().await,
            ["duplicate", "duplicate"],
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn concurrent_deliveries_of_one_message_store_it_once() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = msg("om_race", "oc_1", "hello");
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let dispatcher = f.dispatcher.clone();
            let inst = f.inst.clone();
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                dispatcher.dispatch(&inst, &m, None, EVENT).await
            }));
        }
        // One stores it; the others are duplicates once it is done, or "retry later" while it
        // is still in flight, never an ACKed duplicate of a message that is not stored yet.
        let (mut ingested, mut duplicates, mut retry) = (0, 0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(Outcome::Ingested { .. }) => ingested += 1,
                Ok(Outcome::Dropped(DropReason::Duplicate)) => duplicates += 1,
                Err(DispatchError::InFlight { .. }) => retry += 1,
                other => panic!("{}: {other:?}", f.name()),
            }
        }
        assert_eq!((ingested, duplicates + retry), (1, 5), "{}", f.name());
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
    }
}

#[tokio::test]
async fn claim_in_flight_is_reclaimable_only_after_60_s() {
    for f in fixtures(AccessPolicy::Open).await {
        // Store level: the boundary.
        let first = f.ingest.claim_dedup(&f.inst.id, "om_x", T0).await.unwrap();
        assert!(first.is_some(), "{}", f.name());
        for now in [T0, T0 + 1, T0 + 59_999, T0 + 60_000] {
            assert_eq!(
                f.ingest.claim_dedup(&f.inst.id, "om_x", now).await.unwrap(),
                None,
                "{}: at +{}",
                f.name(),
                now - T0
            );
        }
        let second = f
            .ingest
            .claim_dedup(&f.inst.id, "om_x", T0 + 60_001)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(Some(&second), first.as_ref(), "{}: a new token", f.name());
        // The old claim is fenced out; the new one works.
        let first = first.unwrap();
        assert!(!f.ingest.mark_dedup(&first, T0 + 60_002).await.unwrap());
        assert!(!f.ingest.release_dedup(&first).await.unwrap());
        assert!(f.ingest.mark_dedup(&second, T0 + 60_002).await.unwrap());
        // Processed: never re-claimable, not even much later; release is a no-op now.
        assert_eq!(
            f.ingest
                .claim_dedup(&f.inst.id, "om_x", T0 + 3_600_000)
                .await
                .unwrap(),
            None
        );
        assert!(!f.ingest.release_dedup(&second).await.unwrap());
        assert!(!f.ingest.mark_dedup(&second, T0 + 60_003).await.unwrap());

        // Dispatcher level: a claim in flight (a crashed replica) blocks redeliveries for 60 s.
        let m = msg("om_y", "oc_1", "hello");
        f.ingest
            .claim_dedup(&f.inst.id, "om_y", f.clock.now())
            .await
            .unwrap()
            .unwrap();
        f.clock.advance(59_999);
        assert!(f.in_flight(&m).await, "{}: younger than 60 s", f.name());
        f.clock.advance(2);
        assert!(
            matches!(f.dispatch(&m, None).await, Outcome::Ingested { .. }),
            "{}: older than 60 s",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
    }
}

#[tokio::test]
async fn crash_between_claim_and_append_is_recovered_by_redelivery_after_60_s() {
    for f in fixtures(AccessPolicy::Open).await {
        // A dispatcher that "crashes" right after its claim: the pipeline never continues.
        let stuck = f.dispatcher.clone().with_step_hook(hook(|step| {
            (step == Step::Claimed).then(|| boxed(std::future::pending::<()>()))
        }));
        let m = msg("om_crash", "oc_1", "hello");
        let inst = f.inst.clone();
        let m2 = m.clone();
        let crashed = tokio::spawn(async move { stuck.dispatch(&inst, &m2, None, EVENT).await });
        // Wait (without advancing time) until the claim exists.
        for _ in 0..500 {
            if dedup_rows(&f.t).await == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            dedup_rows(&f.t).await,
            1,
            "{}: the claim was made",
            f.name()
        );
        crashed.abort();

        // Issue 14: the redelivery is answered "retry later", never ACKed as a duplicate of a
        // message that was never stored.
        assert!(f.in_flight(&m).await, "{}: still in flight", f.name());
        f.clock.advance(60_001);
        let outcome = f.dispatch(&m, None).await;
        assert!(
            matches!(outcome, Outcome::Ingested { .. }),
            "{}: {outcome:?}",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
    }
}

#[tokio::test]
async fn claim_lost_inside_the_append_transaction_stores_nothing() {
    for f in fixtures(AccessPolicy::Open).await {
        // Store level: an append with a stale claim writes nothing.
        let session = f
            .ingest
            .ensure_session(
                &f.inst.id,
                &switchboard::store::SessionKey::new(
                    "oc_s",
                    switchboard::store::ChatKind::Direct,
                    None,
                ),
                "t",
                T0,
            )
            .await
            .unwrap();
        let stale = f
            .ingest
            .claim_dedup(&f.inst.id, "om_s", T0)
            .await
            .unwrap()
            .unwrap();
        let thief = f
            .ingest
            .claim_dedup(&f.inst.id, "om_s", T0 + 60_001)
            .await
            .unwrap()
            .unwrap();
        let request = AppendRequest {
            session_id: session.id.clone(),
            installation_id: f.inst.id.clone(),
            body: "hello".into(),
            command_body: "hello".into(),
            channel_message_id: "om_s".into(),
            thread_id: None,
            sender_id: "ou_alice".into(),
            turn: TurnKind::Plain,
            attachments: Vec::new(),
            debounce_ms: 3_000,
        };
        assert_eq!(
            f.ingest
                .append(&request, Some(&stale), T0 + 60_002)
                .await
                .unwrap(),
            AppendOutcome::ClaimLost,
            "{}",
            f.name()
        );
        assert!(
            f.ingest
                .list_messages(&session.id)
                .await
                .unwrap()
                .is_empty()
        );
        let after = f.ingest.get_session(&session.id).await.unwrap().unwrap();
        assert_eq!(after, session, "{}: the session is untouched", f.name());
        assert!(matches!(
            f.ingest
                .append(&request, Some(&thief), T0 + 60_003)
                .await
                .unwrap(),
            AppendOutcome::Appended(_)
        ));

        // Dispatcher level: another replica steals the claim between claim and append.
        let store = f.ingest.clone();
        let clock = f.clock.clone();
        let inst_id = f.inst.id.clone();
        let stolen: Arc<std::sync::Mutex<Option<DedupClaim>>> = Arc::default();
        let stolen_in = stolen.clone();
        let stealing = f.dispatcher.clone().with_step_hook(hook(move |step| {
            if step != Step::BeforeAppend {
                return None;
            }
            let (store, clock, inst_id, stolen) = (
                store.clone(),
                clock.clone(),
                inst_id.clone(),
                stolen_in.clone(),
            );
            Some(boxed(async move {
                clock.advance(60_001);
                let claim = store
                    .claim_dedup(&inst_id, "om_t", clock.now())
                    .await
                    .unwrap()
                    .expect("re-claim after 60 s");
                *stolen.lock().unwrap() = Some(claim);
            }))
        }));
        let m = msg("om_t", "oc_t", "hello");
        // The thief's claim is still in flight: "retry later", not a duplicate (issue 14).
        let outcome = stealing.dispatch(&f.inst, &m, None, EVENT).await;
        assert!(
            matches!(outcome, Err(DispatchError::InFlight { .. })),
            "{}: {outcome:?}",
            f.name()
        );
        assert!(f.audit_reasons().await.is_empty(), "{}", f.name());
        let sessions = f.ingest.list_session_histories(&f.inst.id).await.unwrap();
        let t_session = sessions
            .iter()
            .find(|h| h.session.chat_id == "oc_t")
            .unwrap();
        assert!(
            t_session.messages.is_empty(),
            "{}: nothing appended",
            f.name()
        );
        // The thief's claim was neither marked nor released by the loser.
        let thief = stolen.lock().unwrap().clone().unwrap();
        assert!(
            f.ingest.mark_dedup(&thief, f.clock.now()).await.unwrap(),
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn empty_message_id_skips_dedup() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = msg("", "oc_1", "no id");
        assert!(matches!(
            f.dispatch(&m, None).await,
            Outcome::Ingested { .. }
        ));
        assert!(matches!(
            f.dispatch(&m, None).await,
            Outcome::Ingested { .. }
        ));
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());
        assert_eq!(dedup_rows(&f.t).await, 0, "{}", f.name());
        let session = f.only_session().await;
        assert_eq!(
            session.reply_to_message_id,
            None,
            "{}: no reply target",
            f.name()
        );
    }
}

#[tokio::test]
async fn infrastructure_failure_releases_the_claim_and_the_redelivery_is_processed() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = msg("om_fail", "oc_1", "hello");
        append_with_the_messages_table_gone(&f, &m).await;
        assert_eq!(
            dedup_rows(&f.t).await,
            0,
            "{}: the claim was released",
            f.name()
        );
        assert!(
            f.audit_reasons().await.is_empty(),
            "{}: not a drop",
            f.name()
        );

        restore_the_messages_table(&f).await;
        // Redelivered at once (no 60 s wait): processed.
        let outcome = f.dispatch(&m, None).await;
        assert!(
            matches!(outcome, Outcome::Ingested { .. }),
            "{}: {outcome:?}",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
    }
}

#[tokio::test]
async fn a_dropped_caller_does_not_stop_the_pipeline() {
    for f in fixtures(AccessPolicy::Open).await {
        let reached = Arc::new(Notify::new());
        let gate = Arc::new(Notify::new());
        let (reached_in, gate_in) = (reached.clone(), gate.clone());
        let gated = f.dispatcher.clone().with_step_hook(hook(move |step| {
            if step != Step::BeforeAppend {
                return None;
            }
            let (reached, gate) = (reached_in.clone(), gate_in.clone());
            Some(boxed(async move {
                reached.notify_one();
                gate.notified().await;
            }))
        }));
        let m = msg("om_cancel", "oc_1", "hello");
        let (inst, m2) = (f.inst.clone(), m.clone());
        let caller = tokio::spawn(async move { gated.dispatch(&inst, &m2, None, EVENT).await });
        reached.notified().await;
        caller.abort(); // the request is cancelled while the pipeline is mid-way
        assert!(caller.await.unwrap_err().is_cancelled());
        gate.notify_one();
        // The pipeline finishes on its own task: the message becomes durable and marked.
        let mut stored = 0;
        for _ in 0..2_000 {
            stored = f.all_messages().await.len();
            if stored == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(stored, 1, "{}", f.name());
        f.clock.advance(60_001);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate),
            "{}: marked processed in the append",
            f.name()
        );
    }
}

// ----------------------------------------------------------------------------- step 3

#[tokio::test]
async fn group_message_not_addressed_to_the_bot_is_dropped_and_marked() {
    for f in fixtures(AccessPolicy::Open).await {
        let m = group_msg("om_g", "oc_g", "chatter", false);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::NotAddressedInGroup),
            "{}",
            f.name()
        );
        assert!(f.ingest.list_sessions(&f.inst.id).await.unwrap().is_empty());
        // Marked: a redelivery long after is a duplicate, not reprocessed.
        f.clock.advance(120_000);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
        assert_eq!(
            f.audit_reasons().await,
            ["not_addressed_in_group", "duplicate"],
            "{}",
            f.name()
        );
        // Addressed: ingested.
        let addressed = group_msg("om_g2", "oc_g", "@bot hi", true);
        assert!(matches!(
            f.dispatch(&addressed, None).await,
            Outcome::Ingested { .. }
        ));
        let session = f.only_session().await;
        assert_eq!(session.chat_type, "group", "{}", f.name());
        // Direct chats never need addressing.
        assert!(matches!(
            f.dispatch(&msg("om_d", "oc_d", "hi"), None).await,
            Outcome::Ingested { .. }
        ));
        // Broadcast channels (new in contract 0.2) are filtered like groups, and their
        // sessions are of kind `channel`.
        let channel = kind_msg(ChatKind::Channel, "om_c", "oc_c", "news", false);
        assert_eq!(
            f.dispatch(&channel, None).await,
            Outcome::Dropped(DropReason::NotAddressedInGroup),
            "{}",
            f.name()
        );
        let channel = kind_msg(ChatKind::Channel, "om_c2", "oc_c", "@bot hi", true);
        let sid = session_id(&f.dispatch(&channel, None).await);
        let s = f.ingest.get_session(&sid).await.unwrap().unwrap();
        assert_eq!(
            (s.chat_type.as_str(), s.title.as_str()),
            ("channel", "lark channel chat oc_c"),
            "{}",
            f.name()
        );
        let mut in_thread = kind_msg(ChatKind::Channel, "om_c3", "oc_c", "@bot more", true);
        in_thread.thread_id = Some("ts_1".into());
        let tid = session_id(&f.dispatch(&in_thread, None).await);
        assert_ne!(tid, sid, "{}: channel threads split sessions", f.name());
        let t = f.ingest.get_session(&tid).await.unwrap().unwrap();
        assert_eq!(
            (t.chat_key.as_str(), t.title.as_str()),
            ("oc_c:ts_1", "lark thread ts_1 in channel oc_c"),
            "{}",
            f.name()
        );
    }
}

// ----------------------------------------------------------------------------- step 4

/// The pairing code of a `needs_binding` outcome (panics on anything else).
fn pairing_code(f: &Fixture, outcome: Outcome) -> (String, bool) {
    match outcome {
        Outcome::NeedsBinding {
            pairing: PairingAsk::Code { code, created, .. },
            ..
        } => (code, created),
        other => panic!("{}: expected a pairing code, got {other:?}", f.name()),
    }
}

/// A direct message from `sender` (no alt ids).
fn msg_from(sender: &str, message_id: &str) -> InboundMessage {
    let mut m = msg(message_id, &format!("oc_{sender}"), "hello");
    m.sender.id = sender.into();
    m.sender.alt_ids = Vec::new();
    m
}

#[tokio::test]
async fn bound_policy_unbound_sender_gets_a_pairing_code_then_is_approved() {
    for f in fixtures(AccessPolicy::Bound).await {
        let m = msg("om_1", "oc_1", "hello");
        let outcome = f.dispatch(&m, None).await;
        assert!(
            matches!(&outcome, Outcome::NeedsBinding { user_id, .. } if user_id == "ou_alice"),
            "{}: {outcome:?}",
            f.name()
        );
        let (code, created) = pairing_code(&f, outcome);
        assert!(created, "{}", f.name());
        assert_eq!(code.len(), 8, "{}: {code}", f.name());
        assert!(
            code.bytes()
                .all(|b| b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789".contains(&b)),
            "{}: unambiguous alphabet: {code}",
            f.name()
        );
        assert!(f.ingest.list_sessions(&f.inst.id).await.unwrap().is_empty());
        assert_eq!(f.audit_reasons().await, ["unbound_user"], "{}", f.name());
        // Marked: the redelivery asks for nothing again.
        f.clock.advance(61_000);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
        // The same sender within the hour gets the same code, not a new one.
        let (again, created) =
            pairing_code(&f, f.dispatch(&msg("om_2", "oc_1", "again"), None).await);
        assert_eq!(
            (again.as_str(), created),
            (code.as_str(), false),
            "{}",
            f.name()
        );

        let pairings = f.t.db.pairings();
        let pending = pairings
            .list_pending(Some(&f.inst.id), f.clock.now())
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "{}", f.name());
        assert_eq!(
            (
                pending[0].sender_id.as_str(),
                pending[0].sender_name.as_deref()
            ),
            ("ou_alice", Some("Alice")),
            "{}",
            f.name()
        );
        let listed = serde_json::to_string(&pending).unwrap();
        assert!(
            !listed.contains(&code),
            "{}: the list never shows the code",
            f.name()
        );

        // Approval with the code as a person might type it.
        let typed = format!(" {}-{} ", code[..4].to_lowercase(), &code[4..]);
        let approved = switchboard::pairing::approve(&pairings, &typed, None, f.clock.now())
            .await
            .unwrap_or_else(|e| panic!("{}: approve: {e}", f.name()));
        assert_eq!(approved.binding.channel_user_id, "ou_alice");
        assert_eq!(
            approved.binding.user_ref,
            "ou_alice",
            "{}: default user ref",
            f.name()
        );
        assert_eq!(
            approved.binding.alt_ids,
            [("union_id".to_owned(), "on_alice".to_owned())],
            "{}: the sender's alt ids are bound too",
            f.name()
        );
        // The granted notice waits in the outbox, addressed to the sender in their chat.
        let rows = f.t.db.outbox().list(None, None, 10).await.unwrap();
        let row = rows
            .iter()
            .find(|r| r.id == approved.outbox_id)
            .expect("outbox row");
        assert_eq!(row.target.chat_id, "oc_1", "{}", f.name());
        let notice: Notice = match &row.content {
            OutboxContent::Notice { notice } => serde_json::from_value(notice.clone()).unwrap(),
            other => panic!("{}: {other:?}", f.name()),
        };
        assert_eq!(notice.kind, NoticeKind::Info, "{}", f.name());
        assert_eq!(notice.recipient.as_deref(), Some("ou_alice"));
        assert!(
            NoticeTexts::default()
                .render(&notice, "en")
                .contains("You now have access"),
            "{}",
            f.name()
        );

        let outcome = f.dispatch(&msg("om_3", "oc_1", "now bound"), None).await;
        assert!(
            matches!(outcome, Outcome::Ingested { .. }),
            "{}: {outcome:?}",
            f.name()
        );
        // A decided code cannot be used again.
        let again = switchboard::pairing::approve(&pairings, &code, None, f.clock.now()).await;
        assert!(
            matches!(&again, Err(PairingError::Decided { status, .. }) if status == "approved"),
            "{}: {again:?}",
            f.name()
        );
        assert!(
            pairings
                .list_pending(None, f.clock.now())
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn pairing_codes_are_capped_per_installation_expire_and_can_be_denied() {
    for f in fixtures(AccessPolicy::Bound).await {
        let pairings = f.t.db.pairings();
        let mut codes = Vec::new();
        for (n, sender) in ["ou_a", "ou_b", "ou_c"].iter().enumerate() {
            let (code, created) = pairing_code(
                &f,
                f.dispatch(&msg_from(sender, &format!("om_{n}")), None)
                    .await,
            );
            assert!(created, "{}", f.name());
            codes.push(code);
        }
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), 3, "{}: {codes:?}", f.name());
        // The fourth sender is told to try later, and nothing is created for them.
        let fourth = f.dispatch(&msg_from("ou_d", "om_d1"), None).await;
        assert_eq!(
            fourth,
            Outcome::NeedsBinding {
                user_id: "ou_d".into(),
                pairing: PairingAsk::Full
            },
            "{}",
            f.name()
        );
        let pending = pairings
            .list_pending(Some(&f.inst.id), f.clock.now())
            .await
            .unwrap();
        assert_eq!(pending.len(), 3, "{}", f.name());
        assert!(
            pending.iter().all(|p| p.sender_id != "ou_d"),
            "{}",
            f.name()
        );
        // A sender who has a code still gets theirs while the cap is reached.
        let (own, created) = pairing_code(&f, f.dispatch(&msg_from("ou_b", "om_b2"), None).await);
        assert_eq!(
            (own.as_str(), created),
            (codes[1].as_str(), false),
            "{}",
            f.name()
        );

        // Denying frees a place: the fourth sender gets a code now.
        let denied = pairings.deny(&codes[0], f.clock.now()).await.unwrap();
        assert_eq!(
            (denied.sender_id.as_str(), denied.status.as_str()),
            ("ou_a", "denied")
        );
        let (fourth_code, _) = pairing_code(&f, f.dispatch(&msg_from("ou_d", "om_d2"), None).await);
        let refused =
            switchboard::pairing::approve(&pairings, &codes[0], None, f.clock.now()).await;
        assert!(
            matches!(&refused, Err(PairingError::Decided { status, .. }) if status == "denied"),
            "{}: {refused:?}",
            f.name()
        );
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_a", &[])
                .await
                .unwrap()
                .is_none(),
            "{}: a denied sender is not bound",
            f.name()
        );

        // A wrong code is a clear error and changes nothing.
        let wrong = switchboard::pairing::approve(&pairings, "ZZZZ2222", None, f.clock.now()).await;
        let Err(e @ PairingError::Unknown { .. }) = wrong else {
            panic!("{}: {wrong:?}", f.name());
        };
        assert!(e.to_string().contains("pairing list"), "{}: {e}", f.name());

        // After an hour every code has expired: approval says so, and the cap is free again.
        f.clock.advance(60 * 60_000);
        let expired =
            switchboard::pairing::approve(&pairings, &fourth_code, None, f.clock.now()).await;
        let Err(e @ PairingError::Expired { .. }) = expired else {
            panic!("{}: {expired:?}", f.name());
        };
        assert!(e.to_string().contains("write again"), "{}: {e}", f.name());
        assert!(
            pairings
                .list_pending(None, f.clock.now())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_d", &[])
                .await
                .unwrap()
                .is_none(),
            "{}",
            f.name()
        );
        let (fresh, created) = pairing_code(&f, f.dispatch(&msg_from("ou_b", "om_b3"), None).await);
        assert!(
            created && fresh != codes[1],
            "{}: a new code after expiry",
            f.name()
        );

        // Retention: codes expired before the cutoff go, whatever became of them (the denied
        // and the expired ones); the fresh code stays.
        let pruned =
            f.t.db
                .retention()
                // The four expired exactly now; a cutoff a millisecond later passes them.
                .prune_batch(RetainedTable::Pairings, f.clock.now() + 1, 100)
                .await
                .unwrap();
        assert_eq!(pruned, 4, "{}: a, b, c and d's codes", f.name());
        assert_eq!(
            pairings
                .list_pending(None, f.clock.now())
                .await
                .unwrap()
                .len(),
            1,
            "{}",
            f.name()
        );
        assert!(
            pairings.find(&fresh).await.unwrap().is_some(),
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn bound_policy_with_a_binding_is_ingested_and_without_sender_is_dropped() {
    for f in fixtures(AccessPolicy::Bound).await {
        f.ingest
            .bind_user(&f.inst.id, "ou_alice", "user-1", &[], T0)
            .await
            .unwrap();
        let outcome = f.dispatch(&msg("om_1", "oc_1", "hi"), None).await;
        assert!(
            matches!(outcome, Outcome::Ingested { .. }),
            "{}: {outcome:?}",
            f.name()
        );

        // Another sender in the same chat is not bound.
        let mut bob = msg("om_2", "oc_1", "hi");
        bob.sender.id = "ou_bob".into();
        assert!(matches!(
            f.dispatch(&bob, None).await,
            Outcome::NeedsBinding { ref user_id, .. } if user_id == "ou_bob"
        ));

        // No sender id: nobody to send a link to.
        let mut nobody = msg("om_3", "oc_1", "hi");
        nobody.sender.id = String::new();
        assert_eq!(
            f.dispatch(&nobody, None).await,
            Outcome::Dropped(DropReason::UnboundUser),
            "{}",
            f.name()
        );
        assert_eq!(f.audit_reasons().await, ["unbound_user", "unbound_user"]);

        // Switching the installation to `open` lets anyone in.
        f.store
            .set_access_policy(&f.inst.id, AccessPolicy::Open, T0)
            .await
            .unwrap();
        let open = f.store.get(&f.inst.id).await.unwrap().unwrap();
        let mut carol = msg("om_4", "oc_1", "hi");
        carol.sender.id = "ou_carol".into();
        let outcome = f
            .dispatcher
            .dispatch(&open, &carol, None, EVENT)
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Ingested { .. }), "{}", f.name());
    }
}

#[tokio::test]
async fn bound_policy_admits_a_sender_bound_only_by_an_alt_id() {
    for f in fixtures(AccessPolicy::Bound).await {
        // Bound under another id of the same person (say, their id in another app), with the
        // tenant-wide id as an alt id; the sender `ou_alice` carries that alt id.
        f.ingest
            .bind_user(
                &f.inst.id,
                "ou_alice_elsewhere",
                "user-1",
                &[("union_id".to_owned(), "on_alice".to_owned())],
                T0,
            )
            .await
            .unwrap();
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_alice", &[])
                .await
                .unwrap()
                .is_none(),
            "{}: not bound by its own id",
            f.name()
        );
        // The first message (a new session) and the next (the existing session's short path).
        for id in ["om_1", "om_2"] {
            let outcome = f.dispatch(&msg(id, "oc_1", "hi"), None).await;
            assert!(
                matches!(outcome, Outcome::Ingested { flush: Some(_), .. }),
                "{}: {id}: {outcome:?}",
                f.name()
            );
        }
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());

        // The same id under another scheme, or another id under the scheme, does not match.
        for (n, alt) in [("user_id", "on_alice"), ("union_id", "on_mallory")]
            .into_iter()
            .enumerate()
        {
            let mut m = msg(&format!("om_x{n}"), "oc_1", "hi");
            m.sender.id = "ou_mallory".into();
            m.sender.alt_ids = vec![(alt.0.into(), alt.1.into())];
            let outcome = f.dispatch(&m, None).await;
            assert!(
                matches!(outcome, Outcome::NeedsBinding { ref user_id, .. } if user_id == "ou_mallory"),
                "{}: {alt:?}: {outcome:?}",
                f.name()
            );
        }
        // Without a sender id there is nobody to link, even with a matching alt id.
        let mut anonymous = msg("om_3", "oc_1", "hi");
        anonymous.sender.id = String::new();
        assert_eq!(
            f.dispatch(&anonymous, None).await,
            Outcome::Dropped(DropReason::UnboundUser),
            "{}",
            f.name()
        );
        assert_eq!(
            f.audit_reasons().await,
            ["unbound_user", "unbound_user", "unbound_user"],
            "{}",
            f.name()
        );
    }
}

// ----------------------------------------------------------------------------- steps 5–8

#[tokio::test]
async fn plain_message_is_stored_and_arms_the_durable_debounce() {
    for f in fixtures(AccessPolicy::Open).await {
        assert!(
            f.store
                .set_debounce_ms(&f.inst.id, 5_000, T0)
                .await
                .unwrap()
        );
        let inst = f.store.get(&f.inst.id).await.unwrap().unwrap();
        let mut m = msg("om_1", "oc_1", "enriched body");
        m.command_body = "own text".into();
        let outcome = f.dispatcher.dispatch(&inst, &m, None, EVENT).await.unwrap();
        let Outcome::Ingested {
            session_id,
            message_id,
            flush: Some(ticket),
        } = outcome
        else {
            panic!("{}: {outcome:?}", f.name());
        };
        assert_eq!(ticket.session_id, session_id);
        assert_eq!(ticket.generation, 1, "{}", f.name());
        assert_eq!(ticket.due_at_ms, T0 + 5_000, "{}", f.name());

        let session = f.only_session().await;
        assert_eq!(session.id, session_id);
        assert_eq!(session.chat_key, "oc_1");
        assert_eq!(session.chat_type, "direct");
        assert_eq!(session.title, "lark direct chat oc_1", "{}", f.name());
        assert_eq!(session.flush_due_at_ms, Some(T0 + 5_000));
        assert_eq!(session.flush_generation, 1);
        assert_eq!(session.reply_to_message_id.as_deref(), Some("om_1"));
        assert_eq!(session.reply_thread_id, None);
        assert_eq!(session.context_revision, 1);

        let messages = f.ingest.list_messages(&session_id).await.unwrap();
        assert_eq!(messages.len(), 1);
        let stored = &messages[0];
        assert_eq!(stored.id, message_id);
        assert_eq!(stored.role, "user");
        assert_eq!(stored.kind, "message");
        assert_eq!(stored.body, "enriched body");
        assert_eq!(stored.command_body.as_deref(), Some("own text"));
        assert_eq!(stored.channel_message_id.as_deref(), Some("om_1"));
        assert_eq!(stored.sender_id.as_deref(), Some("ou_alice"));
        assert_eq!(stored.context_revision, 1);
        assert_eq!(stored.created_at_ms, T0);

        // The next message re-arms: later due time, next generation, new reply target.
        f.clock.advance(1_000);
        let Outcome::Ingested {
            flush: Some(second),
            ..
        } = f
            .dispatcher
            .dispatch(&inst, &msg("om_2", "oc_1", "more"), None, EVENT)
            .await
            .unwrap()
        else {
            panic!("{}", f.name());
        };
        assert_eq!((second.generation, second.due_at_ms), (2, T0 + 6_000));
        let session = f.only_session().await;
        assert_eq!(session.reply_to_message_id.as_deref(), Some("om_2"));
        assert_eq!(session.flush_generation, 2);
        assert_eq!(session.updated_at_ms, T0 + 1_000);
    }
}

#[tokio::test]
async fn concurrent_first_messages_create_exactly_one_session() {
    for f in fixtures(AccessPolicy::Open).await {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let dispatcher = f.dispatcher.clone();
            let inst = f.inst.clone();
            let m = msg(&format!("om_{i}"), "oc_busy", &format!("message {i}"));
            tasks.push(tokio::spawn(async move {
                dispatcher.dispatch(&inst, &m, None, EVENT).await.unwrap()
            }));
        }
        let mut sessions = Vec::new();
        let mut generations = Vec::new();
        for task in tasks {
            let outcome = task.await.unwrap();
            let Outcome::Ingested {
                session_id,
                flush: Some(ticket),
                ..
            } = outcome
            else {
                panic!("{}: {outcome:?}", f.name());
            };
            sessions.push(session_id);
            generations.push(ticket.generation);
        }
        sessions.dedup();
        assert_eq!(sessions.len(), 1, "{}: {sessions:?}", f.name());
        generations.sort();
        assert_eq!(generations, (1..=8).collect::<Vec<i64>>(), "{}", f.name());
        let session = f.only_session().await;
        assert_eq!(session.flush_generation, 8);
        assert_eq!(f.ingest.list_messages(&session.id).await.unwrap().len(), 8);
    }
}

#[tokio::test]
async fn group_topic_threads_split_sessions_and_direct_chats_do_not() {
    for f in fixtures(AccessPolicy::Open).await {
        let mut in_topic = group_msg("om_1", "oc_g", "in topic", true);
        in_topic.thread_id = Some("omt_1".into());
        let topic = session_id(&f.dispatch(&in_topic, None).await);
        let plain_group = session_id(
            &f.dispatch(&group_msg("om_2", "oc_g", "x", true), None)
                .await,
        );
        let mut other_topic = group_msg("om_3", "oc_g", "other", true);
        other_topic.thread_id = Some("omt_2".into());
        let other = session_id(&f.dispatch(&other_topic, None).await);
        let mut direct_thread = msg("om_4", "oc_d", "direct in thread");
        direct_thread.thread_id = Some("omt_9".into());
        let direct = session_id(&f.dispatch(&direct_thread, None).await);
        let direct_plain = session_id(&f.dispatch(&msg("om_5", "oc_d", "x"), None).await);

        assert_eq!(direct, direct_plain, "{}: direct never splits", f.name());
        let ids = [&topic, &plain_group, &other, &direct];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b, "{}", f.name());
            }
        }
        let s = f.ingest.get_session(&topic).await.unwrap().unwrap();
        assert_eq!(s.chat_key, "oc_g:omt_1", "{}", f.name());
        assert_eq!(s.chat_id, "oc_g");
        assert_eq!(s.thread_id.as_deref(), Some("omt_1"));
        assert_eq!(s.reply_thread_id.as_deref(), Some("omt_1"));
        assert_eq!(s.title, "lark thread omt_1 in group oc_g");
        let g = f.ingest.get_session(&plain_group).await.unwrap().unwrap();
        assert_eq!(
            (g.chat_key.as_str(), g.thread_id.as_deref()),
            ("oc_g", None)
        );
        assert_eq!(g.title, "lark group chat oc_g");
        let d = f.ingest.get_session(&direct).await.unwrap().unwrap();
        assert_eq!(
            (d.chat_key.as_str(), d.thread_id.as_deref()),
            ("oc_d", None)
        );
        // The reply target follows the latest message, thread included.
        assert_eq!(d.reply_to_message_id.as_deref(), Some("om_5"));
        assert_eq!(d.reply_thread_id, None);
        assert_eq!(f.ingest.list_sessions(&f.inst.id).await.unwrap().len(), 4);
    }
}

#[tokio::test]
async fn bare_new_makes_the_next_message_start_revision_2() {
    for f in fixtures(AccessPolicy::Open).await {
        f.dispatch(&msg("om_1", "oc_1", "before"), None).await;
        let before = f.only_session().await;
        let outcome = f
            .dispatch(
                &msg("om_2", "oc_1", "/new"),
                Some(&Command::New(String::new())),
            )
            .await;
        assert_eq!(
            outcome,
            Outcome::FreshPending {
                session_id: before.id.clone()
            },
            "{}",
            f.name()
        );
        let pending = f.only_session().await;
        assert!(pending.fresh_pending, "{}", f.name());
        assert_eq!(pending.context_revision, 1);
        assert_eq!(
            pending.flush_generation, before.flush_generation,
            "no run armed"
        );
        assert_eq!(
            f.all_messages().await.len(),
            1,
            "{}: no message for /new",
            f.name()
        );
        // Marked in the transaction: a late redelivery is a duplicate.
        f.clock.advance(61_000);
        assert_eq!(
            f.dispatch(
                &msg("om_2", "oc_1", "/new"),
                Some(&Command::New(String::new()))
            )
            .await,
            Outcome::Dropped(DropReason::Duplicate)
        );

        assert!(matches!(
            f.dispatch(&msg("om_3", "oc_1", "after"), None).await,
            Outcome::Ingested { flush: Some(_), .. }
        ));
        f.dispatch(&msg("om_4", "oc_1", "after again"), None).await;
        let session = f.only_session().await;
        assert!(!session.fresh_pending);
        assert_eq!(session.context_revision, 2, "{}", f.name());
        let revisions: Vec<(String, i64)> = f
            .all_messages()
            .await
            .into_iter()
            .map(|m| (m.body, m.context_revision))
            .collect();
        assert_eq!(
            revisions,
            [
                ("before".to_owned(), 1),
                ("after".to_owned(), 2),
                ("after again".to_owned(), 2)
            ],
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn new_with_text_starts_a_fresh_context_with_that_text() {
    for f in fixtures(AccessPolicy::Open).await {
        f.dispatch(&msg("om_1", "oc_1", "old topic"), None).await;
        let command = Command::New("fresh question".into());
        let outcome = f
            .dispatch(&msg("om_2", "oc_1", "/new fresh question"), Some(&command))
            .await;
        let Outcome::Ingested {
            message_id,
            flush: Some(ticket),
            ..
        } = outcome
        else {
            panic!("{}: {outcome:?}", f.name());
        };
        assert_eq!(ticket.generation, 2, "{}: a run is scheduled", f.name());
        let messages = f.all_messages().await;
        let last = messages.last().unwrap();
        assert_eq!(last.id, message_id);
        assert_eq!(last.body, "fresh question", "{}", f.name());
        assert_eq!(last.command_body.as_deref(), Some("/new fresh question"));
        assert_eq!(last.kind, "message");
        assert_eq!(last.context_revision, 2);
        assert_eq!(messages[0].context_revision, 1);
        let session = f.only_session().await;
        assert_eq!(session.context_revision, 2);
        assert!(!session.fresh_pending);
        // A following message stays in revision 2.
        f.dispatch(&msg("om_3", "oc_1", "follow-up"), None).await;
        assert_eq!(f.all_messages().await.last().unwrap().context_revision, 2);
    }
}

/// The stored `meta` JSON of message `id` (NULL: `None`).
async fn message_meta(t: &db::TestDb, id: i64) -> Option<serde_json::Value> {
    let sql = format!("SELECT COALESCE(meta, '') FROM messages WHERE id = {id}");
    let text = raw_texts(t, &sql).await.pop().expect("the message exists");
    (!text.is_empty()).then(|| serde_json::from_str(&text).expect("meta is JSON"))
}

#[tokio::test]
async fn unknown_command_is_a_command_turn_for_the_agent_and_runs() {
    for f in fixtures(AccessPolicy::Open).await {
        // The host knows no `/issue` (contract 0.2): it is the agent's command, name and args
        // intact, and it runs like a message.
        let text = "/issue Login broken\nSteps:\n  1. open app";
        let command = parsed(text);
        assert_eq!(
            command,
            Command::Agent {
                name: "issue".into(),
                args: "Login broken\nSteps:\n  1. open app".into()
            }
        );
        let outcome = f.dispatch(&msg("om_1", "oc_1", text), Some(&command)).await;
        let Outcome::Ingested {
            session_id,
            message_id,
            flush: Some(ticket),
        } = outcome
        else {
            panic!("{}: {outcome:?}", f.name());
        };
        assert_eq!(
            (ticket.generation, ticket.due_at_ms),
            (1, T0 + 3_000),
            "{}: the window is armed",
            f.name()
        );
        let messages = f.ingest.list_messages(&session_id).await.unwrap();
        assert_eq!(messages.len(), 1, "{}", f.name());
        let stored = &messages[0];
        assert_eq!(stored.id, message_id);
        assert_eq!(stored.kind, "command", "{}", f.name());
        assert_eq!(stored.body, text);
        assert_eq!(stored.command_body.as_deref(), Some(text));
        assert_eq!(stored.sender_id.as_deref(), Some("ou_alice"));
        assert_eq!(
            message_meta(&f.t, message_id).await,
            Some(serde_json::json!({"command": {
                "name": "issue",
                "args": "Login broken\nSteps:\n  1. open app"
            }})),
            "{}",
            f.name()
        );
        assert!(
            f.ingest.list_commands(&f.inst.id).await.unwrap().is_empty(),
            "{}: no command records any more",
            f.name()
        );
        let session = f.only_session().await;
        assert_eq!(session.flush_due_at_ms, Some(T0 + 3_000), "{}", f.name());
        assert_eq!(session.flush_generation, 1);
        assert_eq!(session.reply_to_message_id.as_deref(), Some("om_1"));

        // A bare command and a differently cased name: still the agent's, name lowercased.
        for (id, text, name, args) in [
            ("om_2", "/issue", "issue", ""),
            ("om_3", "/Deploy  prod ", "deploy", "prod"),
        ] {
            let Outcome::Ingested {
                message_id,
                flush: Some(_),
                ..
            } = f
                .dispatch(&msg(id, "oc_1", text), Some(&parsed(text)))
                .await
            else {
                panic!("{}: {text}", f.name());
            };
            assert_eq!(
                message_meta(&f.t, message_id).await,
                Some(serde_json::json!({"command": {"name": name, "args": args}})),
                "{}: {text}",
                f.name()
            );
        }
        // A plain message has no meta.
        let Outcome::Ingested { message_id, .. } =
            f.dispatch(&msg("om_4", "oc_1", "plain"), None).await
        else {
            panic!("{}", f.name());
        };
        assert_eq!(message_meta(&f.t, message_id).await, None, "{}", f.name());
        assert_eq!(f.only_session().await.flush_generation, 4, "{}", f.name());
    }
}

#[tokio::test]
async fn action_is_an_action_turn_for_the_agent_and_runs() {
    for f in fixtures(AccessPolicy::Open).await {
        let action = Command::Action {
            name: "approve".into(),
            value: "yes".into(),
            on_message: Some("om_card".into()),
            update_token: None,
        };
        let outcome = f
            .dispatch(&msg("act_1", "oc_1", "[approve: yes]"), Some(&action))
            .await;
        let Outcome::Ingested {
            message_id,
            flush: Some(ticket),
            ..
        } = outcome
        else {
            panic!("{}: {outcome:?}", f.name());
        };
        assert_eq!(ticket.generation, 1, "{}: it runs", f.name());
        let stored = f.all_messages().await.pop().unwrap();
        assert_eq!(stored.id, message_id);
        assert_eq!(stored.kind, "action", "{}", f.name());
        assert_eq!(stored.body, "[approve: yes]");
        assert_eq!(
            message_meta(&f.t, message_id).await,
            Some(serde_json::json!({"action": {
                "name": "approve", "value": "yes", "message_id": "om_card"
            }})),
            "{}",
            f.name()
        );
        // Deduplicated like a message.
        f.clock.advance(61_000);
        assert_eq!(
            f.dispatch(&msg("act_1", "oc_1", "[approve: yes]"), Some(&action))
                .await,
            Outcome::Dropped(DropReason::Duplicate)
        );
        // Without the carrying message.
        let bare = Command::Action {
            name: "refresh".into(),
            value: String::new(),
            on_message: None,
            update_token: None,
        };
        let Outcome::Ingested { message_id, .. } = f
            .dispatch(&msg("act_2", "oc_1", "[refresh]"), Some(&bare))
            .await
        else {
            panic!("{}", f.name());
        };
        assert_eq!(
            message_meta(&f.t, message_id).await,
            Some(serde_json::json!({"action": {
                "name": "refresh", "value": "", "message_id": null
            }})),
            "{}",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());
    }
}

#[tokio::test]
async fn builtins_are_answered_by_the_host_without_a_turn_or_run() {
    for f in fixtures(AccessPolicy::Open).await {
        for (name, builtin) in [
            ("stop", Builtin::Stop),
            ("compact", Builtin::Compact),
            ("status", Builtin::Status),
            ("help", Builtin::Help),
        ] {
            assert_eq!(builtin.name(), name);
            // Names compare case-insensitively; arguments are ignored.
            for text in [format!("/{name}"), format!("/{}  now", name.to_uppercase())] {
                assert_eq!(parsed(&text), Command::Builtin(builtin), "{text}");
            }
        }
        assert_eq!(parsed("/new"), Command::New(String::new()));
        assert_eq!(parsed("/NEW  hi "), Command::New("hi".into()));

        // In a chat without a session (the claim-first path): the session is made, nothing is
        // appended, no window armed.
        let stop = Command::Builtin(Builtin::Stop);
        let outcome = f.dispatch(&msg("om_1", "oc_1", "/stop"), Some(&stop)).await;
        let Outcome::Builtin {
            session_id,
            command: Builtin::Stop,
        } = outcome.clone()
        else {
            panic!("{}: {outcome:?}", f.name());
        };
        assert_eq!(outcome.as_str(), "builtin");
        let session = f.only_session().await;
        assert_eq!(session.id, session_id, "{}", f.name());
        assert!(f.all_messages().await.is_empty(), "{}", f.name());
        assert_eq!(
            (session.flush_generation, session.flush_due_at_ms),
            (0, None),
            "{}",
            f.name()
        );

        // In a chat with a session: the same session, still nothing appended, the window and
        // the reply target untouched.
        f.dispatch(&msg("om_2", "oc_1", "hello"), None).await;
        let before = f.only_session().await;
        for (i, builtin) in [Builtin::Status, Builtin::Help, Builtin::Compact]
            .into_iter()
            .enumerate()
        {
            let m = msg(&format!("om_b{i}"), "oc_1", &format!("/{}", builtin.name()));
            assert_eq!(
                f.dispatch(&m, Some(&Command::Builtin(builtin))).await,
                Outcome::Builtin {
                    session_id: session_id.clone(),
                    command: builtin
                },
                "{}",
                f.name()
            );
        }
        let after = f.only_session().await;
        assert_eq!(
            (
                after.flush_generation,
                after.flush_due_at_ms,
                after.reply_to_message_id.as_deref()
            ),
            (
                before.flush_generation,
                before.flush_due_at_ms,
                Some("om_2")
            ),
            "{}",
            f.name()
        );
        let bodies: Vec<String> = f.all_messages().await.into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, ["hello"], "{}: no built-in is a turn", f.name());

        // The claim is marked: a redelivery, even much later, is a duplicate (not answered
        // twice).
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}", f.name());
        f.clock.advance(10 * 60_000);
        for (id, text, builtin) in [
            ("om_1", "/stop", Builtin::Stop),
            ("om_b1", "/help", Builtin::Help),
        ] {
            assert_eq!(
                f.dispatch(&msg(id, "oc_1", text), Some(&Command::Builtin(builtin)))
                    .await,
                Outcome::Dropped(DropReason::Duplicate),
                "{}: {text}",
                f.name()
            );
        }
        assert_eq!(
            f.audit_reasons().await,
            ["duplicate", "duplicate"],
            "{}",
            f.name()
        );

        // Built-ins pass the group filter like anything else: unaddressed, dropped.
        let group = group_msg("om_g", "oc_g", "/status", false);
        assert_eq!(
            f.dispatch(&group, Some(&Command::Builtin(Builtin::Status)))
                .await,
            Outcome::Dropped(DropReason::NotAddressedInGroup),
            "{}",
            f.name()
        );
        let addressed = group_msg("om_g2", "oc_g", "/status", true);
        assert!(matches!(
            f.dispatch(&addressed, Some(&Command::Builtin(Builtin::Status)))
                .await,
            Outcome::Builtin {
                command: Builtin::Status,
                ..
            }
        ));
    }
}

#[tokio::test]
async fn audit_rows_never_contain_message_content() {
    const BODY: &str = "TOPSECRET-body-7f3a";
    const OWN: &str = "TOPSECRET-own-91c2";
    for f in fixtures(AccessPolicy::Bound).await {
        let mut m = msg("om_1", "oc_1", BODY);
        m.command_body = OWN.into();
        // unbound_user, then duplicate.
        f.dispatch(&m, None).await;
        f.dispatch(&m, None).await;
        // not_addressed_in_group.
        let mut g = group_msg("om_2", "oc_g", BODY, false);
        g.command_body = OWN.into();
        f.dispatch(&g, None).await;
        // invalid_event and revoked_installation.
        let meta = EventMeta::of_event(&m, EVENT);
        resolve_installation(&f.store, "lark", Some("nope"), &meta, T0)
            .await
            .unwrap()
            .unwrap_err();
        f.store.revoke(&f.inst.id, T0).await.unwrap();
        resolve_installation(&f.store, "lark", Some("cli_app"), &meta, T0)
            .await
            .unwrap()
            .unwrap_err();
        // Without a sender: unbound_user drop.
        let mut anonymous = msg("om_3", "oc_1", BODY);
        anonymous.sender.id = String::new();
        f.dispatch(&anonymous, None).await;

        let mut reasons = f.audit_reasons().await;
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "duplicate",
                "invalid_event",
                "not_addressed_in_group",
                "revoked_installation",
                "unbound_user",
                "unbound_user"
            ],
            "{}",
            f.name()
        );
        let rows = raw_texts(
            &f.t,
            "SELECT COALESCE(installation_id, '') || '|' || channel || '|' \
             || COALESCE(chat_id, '') || '|' || event_type || '|' || COALESCE(event_id, '') \
             || '|' || COALESCE(message_id, '') || '|' || drop_reason FROM inbound_audit",
        )
        .await;
        assert_eq!(rows.len(), 6, "{}", f.name());
        for row in rows {
            assert!(
                !row.contains("TOPSECRET"),
                "{}: audit row leaks content: {row}",
                f.name()
            );
            assert!(row.contains("om_"), "{}: the row is real: {row}", f.name());
        }
    }
}

// ----------------------------------------------------------------------------- bindings

#[tokio::test]
async fn binding_tokens_mint_redeem_expire_and_are_single_use() {
    for f in fixtures(AccessPolicy::Bound).await {
        let token = f
            .ingest
            .mint_binding_token(&f.inst.id, "ou_alice", T0)
            .await
            .unwrap();
        // Only the sha256 is stored.
        let hashes = raw_texts(&f.t, "SELECT token_hash FROM binding_tokens").await;
        assert_eq!(
            hashes,
            [hex::encode(Sha256::digest(token.as_bytes()))],
            "{}",
            f.name()
        );
        assert_eq!(
            raw_i64(
                &f.t,
                "SELECT expires_at_ms - created_at_ms FROM binding_tokens"
            )
            .await,
            15 * 60_000
        );

        // Unknown token.
        assert!(matches!(
            f.ingest
                .redeem_binding_token("bogus", "user-1", &[], T0)
                .await,
            Err(BindingError::InvalidToken)
        ));
        // Valid until just before expiry; single use.
        let alt = [("union_id".to_owned(), "on_alice".to_owned())];
        let binding = f
            .ingest
            .redeem_binding_token(&token, "user-1", &alt, T0 + 15 * 60_000 - 1)
            .await
            .unwrap();
        assert_eq!(binding.alt_ids, alt, "{}", f.name());
        assert!(matches!(
            f.ingest
                .redeem_binding_token(&token, "user-1", &[], T0 + 1)
                .await,
            Err(BindingError::InvalidToken)
        ));

        // Expired at exactly 15 minutes.
        let late = f
            .ingest
            .mint_binding_token(&f.inst.id, "ou_bob", T0)
            .await
            .unwrap();
        assert!(matches!(
            f.ingest
                .redeem_binding_token(&late, "user-2", &[], T0 + 15 * 60_000)
                .await,
            Err(BindingError::InvalidToken)
        ));
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_bob", &[])
                .await
                .unwrap()
                .is_none()
        );

        // A failed redeem (bound to someone else) leaves the token usable.
        let other = f
            .ingest
            .mint_binding_token(&f.inst.id, "ou_alice", T0)
            .await
            .unwrap();
        assert!(matches!(
            f.ingest.redeem_binding_token(&other, "user-9", &[], T0 + 1).await,
            Err(BindingError::BoundToOtherUser { ref channel_user_id }) if channel_user_id == "ou_alice"
        ));
        assert!(f.ingest.unbind_user(&f.inst.id, "ou_alice").await.unwrap());
        let rebound = f
            .ingest
            .redeem_binding_token(&other, "user-9", &[], T0 + 2)
            .await
            .unwrap();
        assert_eq!(rebound.user_ref, "user-9", "{}", f.name());
    }
}

#[tokio::test]
async fn user_bindings_add_get_list_remove() {
    for f in fixtures(AccessPolicy::Bound).await {
        let alt = |scheme: &str, id: &str| vec![(scheme.to_owned(), id.to_owned())];
        let a = f
            .ingest
            .bind_user(&f.inst.id, "ou_b", "user-b", &alt("union_id", "on_b"), T0)
            .await
            .unwrap();
        assert_eq!(a.bound_at_ms, T0);
        assert_eq!(a.alt_ids, alt("union_id", "on_b"), "{}", f.name());
        // Refreshing the same user without alt ids never erases the known ones.
        let again = f
            .ingest
            .bind_user(&f.inst.id, "ou_b", "user-b", &[], T0 + 5)
            .await
            .unwrap();
        assert_eq!(again.alt_ids, alt("union_id", "on_b"), "{}", f.name());
        assert_eq!(again.bound_at_ms, T0 + 5);
        // Found by its id, or by an alt id (scheme and id must both match); empty alt ids are
        // not stored.
        for (id, alts) in [
            ("ou_b", Vec::new()),
            ("ou_b_elsewhere", alt("union_id", "on_b")),
            ("", alt("union_id", "on_b")),
        ] {
            let found = f.ingest.get_binding(&f.inst.id, id, &alts).await.unwrap();
            assert_eq!(
                found.map(|b| b.user_ref).as_deref(),
                Some("user-b"),
                "{}: {id:?} {alts:?}",
                f.name()
            );
        }
        for (id, alts) in [
            ("ou_other", Vec::new()),
            ("ou_other", alt("user_id", "on_b")),
            ("ou_other", alt("union_id", "on_")),
            ("ou_other", alt("union_id", "")),
        ] {
            assert!(
                f.ingest
                    .get_binding(&f.inst.id, id, &alts)
                    .await
                    .unwrap()
                    .is_none(),
                "{}: {id:?} {alts:?}",
                f.name()
            );
        }
        assert!(
            f.ingest
                .get_binding("other-inst", "ou_x", &alt("union_id", "on_b"))
                .await
                .unwrap()
                .is_none(),
            "{}: alt ids are per installation",
            f.name()
        );
        // A new non-empty list replaces the old one; empty ids are dropped.
        let replaced = f
            .ingest
            .bind_user(
                &f.inst.id,
                "ou_b",
                "user-b",
                &[
                    ("union_id".to_owned(), "on_b2".to_owned()),
                    ("email".to_owned(), String::new()),
                ],
                T0 + 6,
            )
            .await
            .unwrap();
        assert_eq!(replaced.alt_ids, alt("union_id", "on_b2"), "{}", f.name());
        assert!(matches!(
            f.ingest
                .bind_user(&f.inst.id, "ou_b", "user-x", &[], T0)
                .await,
            Err(BindingError::BoundToOtherUser { .. })
        ));
        f.ingest
            .bind_user(&f.inst.id, "ou_a", "user-a", &[], T0)
            .await
            .unwrap();
        let list = f.ingest.list_bindings(&f.inst.id).await.unwrap();
        let users: Vec<&str> = list.iter().map(|b| b.channel_user_id.as_str()).collect();
        assert_eq!(users, ["ou_a", "ou_b"], "{}", f.name());
        assert_eq!(
            f.ingest
                .get_binding(&f.inst.id, "ou_b", &[])
                .await
                .unwrap()
                .unwrap()
                .user_ref,
            "user-b"
        );
        assert!(f.ingest.unbind_user(&f.inst.id, "ou_b").await.unwrap());
        assert!(!f.ingest.unbind_user(&f.inst.id, "ou_b").await.unwrap());
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_b", &[])
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            f.ingest
                .get_binding(&f.inst.id, "ou_x", &alt("union_id", "on_b2"))
                .await
                .unwrap()
                .is_none(),
            "{}: unbinding removes the alt ids too",
            f.name()
        );
        assert!(
            f.ingest
                .list_bindings("other-inst")
                .await
                .unwrap()
                .is_empty()
        );
    }
}

// ----------------------------------------------------------------------------- installations

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_a_wrong_key_fails_clearly() {
    for f in fixtures(AccessPolicy::Open).await {
        let raw = raw_bytes(
            &f.t,
            &format!(
                "SELECT secrets FROM installations WHERE id = '{}'",
                f.inst.id
            ),
        )
        .await;
        assert!(raw.len() > 24 + 16, "{}", f.name());
        for plain in [
            "plain-app-secret-123",
            "plain-encrypt-key-456",
            "app_secret",
        ] {
            assert!(
                !raw.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{}: {plain} is visible at rest",
                f.name()
            );
        }
        let read = f.store.get(&f.inst.id).await.unwrap().unwrap();
        assert_eq!(read.secrets["app_secret"].expose(), "plain-app-secret-123");
        assert_eq!(
            read.secrets["encrypt_key"].expose(),
            "plain-encrypt-key-456"
        );
        assert!(
            !format!("{read:?}").contains("plain-app-secret"),
            "Debug hides secrets"
        );

        // The plugin's context is the config and secrets as stored: the host adds nothing (no
        // `app_id` from the routing key; the bot ids are ordinary config keys).
        let cx = read.context();
        assert_eq!(cx.id, f.inst.id);
        assert_eq!(cx.config, read.config, "{}", f.name());
        assert_eq!(
            cx.config.keys().map(String::as_str).collect::<Vec<_>>(),
            ["bot_open_id", "bot_union_id", "region"],
            "{}",
            f.name()
        );
        assert_eq!(cx.config["bot_open_id"], "ou_bot");
        assert_eq!(cx.config["bot_union_id"], "on_bot");
        assert_eq!(cx.config["region"], "feishu");
        assert_eq!(cx.secrets["app_secret"].expose(), "plain-app-secret-123");

        // Rotating the secrets re-seals them.
        let rotated = BTreeMap::from([("app_secret".to_owned(), "rotated-999".to_owned())]);
        assert!(f.store.set_secrets(&f.inst.id, &rotated, T0).await.unwrap());
        let read = f.store.get(&f.inst.id).await.unwrap().unwrap();
        assert_eq!(read.secrets.len(), 1);
        assert_eq!(read.secrets["app_secret"].expose(), "rotated-999");

        // The wrong key: a clear error, no panic, from every read path.
        let wrong = f.t.db.installations(SecretCipher::from_key_bytes(&[7; 32]));
        let err = wrong.get(&f.inst.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Secret(SecretError::OtherKey { .. })),
            "{}: {err:?}",
            f.name()
        );
        let configured = SecretCipher::from_key_bytes(&[7; 32]).key_id();
        let sealed_with = SecretCipher::from_key_bytes(&KEY).key_id();
        assert!(
            err.to_string().contains(&format!(
                "sealed with key {sealed_with}, but the configured key is {configured}"
            )),
            "{err}"
        );
        assert!(wrong.list().await.is_err());
        assert!(wrong.get_by_routing_key("lark", "cli_app").await.is_err());
        let meta = EventMeta::default();
        assert!(matches!(
            resolve_installation(&wrong, "lark", Some("cli_app"), &meta, T0).await,
            Err(DispatchError::Store(StoreError::Secret(_)))
        ));
    }
}

#[tokio::test]
async fn installations_create_list_update_and_refuse_bad_input() {
    for f in fixtures(AccessPolicy::Open).await {
        assert_eq!(f.inst.channel, "lark");
        assert_eq!(f.inst.routing_key, "cli_app");
        assert_eq!(f.inst.debounce_ms, 3_000);
        assert!(f.inst.is_active());
        assert_eq!(f.inst.created_at_ms, T0);

        let dup = f
            .store
            .create(&new_installation("cli_app", AccessPolicy::Open), T0)
            .await
            .unwrap_err();
        assert!(
            matches!(dup, StoreError::Conflict { .. }),
            "{}: {dup:?}",
            f.name()
        );
        let mut zero = new_installation("cli_zero", AccessPolicy::Open);
        zero.debounce_ms = 0;
        assert!(matches!(
            f.store.create(&zero, T0).await,
            Err(StoreError::Invalid { .. })
        ));
        let mut bare = new_installation("cli_bare", AccessPolicy::Bound);
        bare.secrets.clear();
        bare.config.remove("bot_union_id");
        let second = f.store.create(&bare, T0 + 1).await.unwrap();
        assert!(second.secrets.is_empty());
        assert!(!second.context().config.contains_key("bot_union_id"));
        assert_eq!(second.config["bot_open_id"], "ou_bot");
        assert_ne!(second.id, f.inst.id);

        let ids: Vec<String> = f
            .store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, [f.inst.id.clone(), second.id.clone()], "{}", f.name());

        assert!(
            f.store
                .set_agent(&second.id, "openai", T0 + 2)
                .await
                .unwrap()
        );
        assert!(
            f.store
                .set_access_policy(&second.id, AccessPolicy::Open, T0 + 2)
                .await
                .unwrap()
        );
        assert!(
            f.store
                .set_debounce_ms(&second.id, 750, T0 + 2)
                .await
                .unwrap()
        );
        assert!(matches!(
            f.store.set_debounce_ms(&second.id, -1, T0).await,
            Err(StoreError::Invalid { .. })
        ));
        assert!(!f.store.set_agent("missing", "x", T0).await.unwrap());
        let updated = f
            .store
            .get_by_routing_key("lark", "cli_bare")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.agent, "openai");
        assert_eq!(updated.access_policy, AccessPolicy::Open);
        assert_eq!(updated.debounce_ms, 750);
        assert_eq!(updated.updated_at_ms, T0 + 2);
        assert!(f.store.get("missing").await.unwrap().is_none());

        // An empty routing key is allowed (a channel whose payloads carry none): the
        // installation's own id is stored as its key, so two of them never collide. An empty
        // channel is still refused.
        let mut keyless = new_installation("", AccessPolicy::Open);
        keyless.channel = "testing".into();
        let k1 = f.store.create(&keyless, T0 + 1).await.unwrap();
        let k2 = f.store.create(&keyless, T0 + 1).await.unwrap();
        assert_eq!(k1.routing_key, k1.id, "{}", f.name());
        assert_eq!(k2.routing_key, k2.id, "{}", f.name());
        assert_eq!(
            f.store
                .get_by_routing_key("testing", &k1.id)
                .await
                .unwrap()
                .map(|i| i.id),
            Some(k1.id.clone())
        );
        let mut no_channel = new_installation("cli_nochannel", AccessPolicy::Open);
        no_channel.channel = String::new();
        assert!(matches!(
            f.store.create(&no_channel, T0).await,
            Err(StoreError::Invalid { .. })
        ));
    }
}

#[tokio::test]
async fn session_histories_list_sessions_with_their_messages() {
    for f in fixtures(AccessPolicy::Open).await {
        f.dispatch(&msg("om_1", "oc_a", "a1"), None).await;
        f.clock.advance(1);
        f.dispatch(&msg("om_2", "oc_b", "b1"), None).await;
        f.dispatch(&msg("om_3", "oc_a", "a2"), None).await;
        let histories = f.ingest.list_session_histories(&f.inst.id).await.unwrap();
        let view: Vec<(String, Vec<String>)> = histories
            .into_iter()
            .map(|h| {
                (
                    h.session.chat_id,
                    h.messages.into_iter().map(|m| m.body).collect(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("oc_a".to_owned(), vec!["a1".to_owned(), "a2".to_owned()]),
                ("oc_b".to_owned(), vec!["b1".to_owned()])
            ],
            "{}",
            f.name()
        );
        assert!(
            f.ingest
                .list_session_histories("other")
                .await
                .unwrap()
                .is_empty()
        );
    }
}

// ----------------------------------------------------------------------------- claim in append
//
// A message to an existing session that passes the group filter and the identity policy is
// claimed inside its append transaction (`IngestStore::claim_and_append`). The tests above
// mostly send a chat's first message (the claim-first path); these send to a session that
// exists, so they cover the same guarantees on the short path.

/// A fixture whose chat `oc_1` already has a session (one message, `om_0`); returns its id.
async fn with_session(f: &Fixture) -> String {
    session_id(&f.dispatch(&msg("om_0", "oc_1", "first"), None).await)
}

async fn claims_in_flight(t: &db::TestDb) -> i64 {
    raw_i64(
        t,
        "SELECT COUNT(*) FROM inbound_dedup WHERE processed_at_ms IS NULL",
    )
    .await
}

#[tokio::test]
async fn existing_session_concurrent_deliveries_store_once_with_no_claim_left_in_flight() {
    for f in fixtures(AccessPolicy::Open).await {
        let session = with_session(&f).await;
        let m = msg("om_race", "oc_1", "hello");
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let dispatcher = f.dispatcher.clone();
            let inst = f.inst.clone();
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                dispatcher.dispatch(&inst, &m, None, EVENT).await.unwrap()
            }));
        }
        let mut ingested = 0;
        let mut duplicates = 0;
        for task in tasks {
            match task.await.unwrap() {
                Outcome::Ingested { session_id, .. } => {
                    assert_eq!(session_id, session, "{}", f.name());
                    ingested += 1;
                }
                Outcome::Dropped(DropReason::Duplicate) => duplicates += 1,
                other => panic!("{}: {other:?}", f.name()),
            }
        }
        assert_eq!((ingested, duplicates), (1, 5), "{}", f.name());
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());
        assert_eq!(f.audit_reasons().await.len(), 5, "{}", f.name());
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}", f.name());
        // Processed for good: a redelivery much later is still a duplicate.
        f.clock.advance(10 * 60_000);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate),
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn existing_session_claim_in_flight_is_taken_over_only_after_60_s() {
    for f in fixtures(AccessPolicy::Open).await {
        with_session(&f).await;
        let m = msg("om_y", "oc_1", "hello");
        let old = f
            .ingest
            .claim_dedup(&f.inst.id, "om_y", f.clock.now())
            .await
            .unwrap()
            .unwrap();
        f.clock.advance(60_000);
        assert!(f.in_flight(&m).await, "{}: not older than 60 s", f.name());
        f.clock.advance(1);
        assert!(
            matches!(f.dispatch(&m, None).await, Outcome::Ingested { .. }),
            "{}: older than 60 s",
            f.name()
        );
        // The old claimant is fenced out: its Mark and Release are no-ops.
        assert!(!f.ingest.mark_dedup(&old, f.clock.now()).await.unwrap());
        assert!(!f.ingest.release_dedup(&old).await.unwrap());
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}", f.name());
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
    }
}

#[tokio::test]
async fn existing_session_claim_taken_before_the_append_is_retried_later() {
    for f in fixtures(AccessPolicy::Open).await {
        let session = with_session(&f).await;
        let store = f.ingest.clone();
        let clock = f.clock.clone();
        let inst_id = f.inst.id.clone();
        let other: Arc<std::sync::Mutex<Option<DedupClaim>>> = Arc::default();
        let other_in = other.clone();
        let claimed_first = Arc::new(AtomicBool::new(false));
        let claimed_in = claimed_first.clone();
        let racing = f.dispatcher.clone().with_step_hook(hook(move |step| {
            if step == Step::Claimed {
                claimed_in.store(true, Ordering::SeqCst);
            }
            if step != Step::BeforeAppend {
                return None;
            }
            let (store, clock, inst_id, other) = (
                store.clone(),
                clock.clone(),
                inst_id.clone(),
                other_in.clone(),
            );
            Some(boxed(async move {
                // Another replica claims the same message first.
                let claim = store
                    .claim_dedup(&inst_id, "om_t", clock.now())
                    .await
                    .unwrap()
                    .expect("the first claim");
                *other.lock().unwrap() = Some(claim);
            }))
        }));
        let outcome = racing
            .dispatch(&f.inst, &msg("om_t", "oc_1", "hello"), None, EVENT)
            .await;
        // The other claim is still in flight: "retry later" (issue 14), nothing audited.
        assert!(
            matches!(outcome, Err(DispatchError::InFlight { .. })),
            "{}: {outcome:?}",
            f.name()
        );
        assert!(
            !claimed_first.load(Ordering::SeqCst),
            "{}: no claim before the append transaction",
            f.name()
        );
        assert!(f.audit_reasons().await.is_empty(), "{}", f.name());
        assert_eq!(
            f.ingest.list_messages(&session).await.unwrap().len(),
            1,
            "{}: nothing appended",
            f.name()
        );
        // The other claim was neither marked nor released by the loser.
        let other = other.lock().unwrap().clone().unwrap();
        assert!(
            f.ingest.mark_dedup(&other, f.clock.now()).await.unwrap(),
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn existing_session_infrastructure_failure_leaves_no_claim_and_the_redelivery_is_processed() {
    for f in fixtures(AccessPolicy::Open).await {
        with_session(&f).await;
        let m = msg("om_fail", "oc_1", "hello");
        append_with_the_messages_table_gone(&f, &m).await;
        assert_eq!(
            raw_i64(
                &f.t,
                "SELECT COUNT(*) FROM inbound_dedup WHERE message_id = 'om_fail'"
            )
            .await,
            0,
            "{}: the claim rolled back with the append",
            f.name()
        );
        let session = f.only_session().await;
        assert_eq!(
            (
                session.flush_generation,
                session.reply_to_message_id.as_deref()
            ),
            (1, Some("om_0")),
            "{}: the session update rolled back too",
            f.name()
        );
        assert!(f.audit_reasons().await.is_empty(), "{}", f.name());

        restore_the_messages_table(&f).await;
        let outcome = f.dispatch(&m, None).await;
        assert!(
            matches!(outcome, Outcome::Ingested { .. }),
            "{}: {outcome:?}",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 2, "{}", f.name());
    }
}

#[tokio::test]
async fn session_deleted_before_the_append_falls_back_to_a_new_session() {
    for f in fixtures(AccessPolicy::Open).await {
        let old = with_session(&f).await;
        let runs = f.t.db.runs();
        let old_in = old.clone();
        let armed = Arc::new(AtomicBool::new(true));
        let deleting = f.dispatcher.clone().with_step_hook(hook(move |step| {
            if step != Step::BeforeAppend || !armed.swap(false, Ordering::SeqCst) {
                return None;
            }
            let (runs, old) = (runs.clone(), old_in.clone());
            Some(boxed(async move {
                assert!(runs.delete_session(&old).await.unwrap());
            }))
        }));
        let m = msg("om_1", "oc_1", "after the delete");
        let outcome = deleting.dispatch(&f.inst, &m, None, EVENT).await.unwrap();
        let new = session_id(&outcome);
        assert_ne!(new, old, "{}", f.name());
        assert!(f.ingest.get_session(&old).await.unwrap().is_none());
        let messages = f.ingest.list_messages(&new).await.unwrap();
        assert_eq!(messages.len(), 1, "{}", f.name());
        assert_eq!(messages[0].body, "after the delete");
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}: marked", f.name());
        f.clock.advance(61_000);
        assert_eq!(
            f.dispatch(&m, None).await,
            Outcome::Dropped(DropReason::Duplicate)
        );
    }
}

#[tokio::test]
async fn store_level_appends_to_a_deleted_session() {
    for f in fixtures(AccessPolicy::Open).await {
        let session = with_session(&f).await;
        assert!(f.t.db.runs().delete_session(&session).await.unwrap());
        for turn in [TurnKind::Plain, TurnKind::MarkFresh] {
            let request = AppendRequest {
                session_id: session.clone(),
                installation_id: f.inst.id.clone(),
                body: "late".into(),
                command_body: "late".into(),
                channel_message_id: "om_late".into(),
                thread_id: None,
                sender_id: "ou_alice".into(),
                turn,
                attachments: Vec::new(),
                debounce_ms: 3_000,
            };
            // The claim-first append: a conflict (the dispatcher releases its claim).
            let err = f.ingest.append(&request, None, T0).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Conflict { .. }),
                "{}: {err:?}",
                f.name()
            );
            // Claim and append: nothing written, no claim made.
            assert_eq!(
                f.ingest.claim_and_append(&request, T0).await.unwrap(),
                None,
                "{}",
                f.name()
            );
            assert_eq!(
                raw_i64(
                    &f.t,
                    "SELECT COUNT(*) FROM inbound_dedup WHERE message_id = 'om_late'"
                )
                .await,
                0,
                "{}",
                f.name()
            );
        }
        assert!(f.all_messages().await.is_empty(), "{}", f.name());
        // Without a channel message id there is nothing to claim.
        let request = AppendRequest {
            session_id: session.clone(),
            installation_id: f.inst.id.clone(),
            body: "x".into(),
            command_body: String::new(),
            channel_message_id: String::new(),
            thread_id: None,
            sender_id: String::new(),
            turn: TurnKind::Plain,
            attachments: Vec::new(),
            debounce_ms: 3_000,
        };
        assert!(matches!(
            f.ingest.claim_and_append(&request, T0).await,
            Err(StoreError::Invalid { .. })
        ));
    }
}

#[tokio::test]
async fn a_run_starting_before_the_append_gets_the_message_queued() {
    for f in fixtures(AccessPolicy::Open).await {
        let session = with_session(&f).await;
        let url = f.t.url.clone();
        let is_sqlite = f.name() == "sqlite";
        let sql = format!(
            "UPDATE sessions SET run_state = 'running', run_id = 'run-1' WHERE id = '{session}'"
        );
        let armed = Arc::new(AtomicBool::new(true));
        let starting = f.dispatcher.clone().with_step_hook(hook(move |step| {
            if step != Step::BeforeAppend || !armed.swap(false, Ordering::SeqCst) {
                return None;
            }
            let (url, sql) = (url.clone(), sql.clone());
            // The run starts between the session read and the append transaction.
            Some(boxed(async move { raw_exec(&url, is_sqlite, &sql).await }))
        }));
        let before = f.only_session().await;
        let outcome = starting
            .dispatch(&f.inst, &msg("om_1", "oc_1", "during the run"), None, EVENT)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Ingested {
                session_id: session.clone(),
                message_id: 0,
                flush: None
            },
            "{}: queued, no window",
            f.name()
        );
        let queue = f.t.db.runs().list_queue(&session).await.unwrap();
        assert_eq!(queue.len(), 1, "{}", f.name());
        assert_eq!(
            f.all_messages().await.len(),
            1,
            "{}: not in history",
            f.name()
        );
        let during = f.only_session().await;
        assert_eq!(
            (during.flush_generation, during.flush_due_at_ms),
            (before.flush_generation, before.flush_due_at_ms),
            "{}: the window is untouched",
            f.name()
        );
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}: marked", f.name());

        // An agent command runs (contract 0.2), so it is queued like a message while the run is
        // active; a built-in is answered without a turn; a bare `/new` flags the session.
        assert_eq!(
            f.dispatch(
                &msg("om_2", "oc_1", "/issue Broken"),
                Some(&parsed("/issue Broken"))
            )
            .await,
            Outcome::Ingested {
                session_id: session.clone(),
                message_id: 0,
                flush: None
            },
            "{}: queued",
            f.name()
        );
        assert_eq!(f.t.db.runs().list_queue(&session).await.unwrap().len(), 2);
        assert_eq!(
            f.dispatch(
                &msg("om_s", "oc_1", "/stop"),
                Some(&Command::Builtin(Builtin::Stop))
            )
            .await,
            Outcome::Builtin {
                session_id: session.clone(),
                command: Builtin::Stop
            }
        );
        assert_eq!(
            f.dispatch(
                &msg("om_3", "oc_1", "/new"),
                Some(&Command::New(String::new()))
            )
            .await,
            Outcome::FreshPending {
                session_id: session.clone()
            }
        );
        let after = f.only_session().await;
        assert!(after.fresh_pending, "{}", f.name());
        assert_eq!(after.run_state, "running");
        assert_eq!(
            after.reply_to_message_id.as_deref(),
            Some("om_0"),
            "{}: queued turns do not move the reply target",
            f.name()
        );
        assert_eq!(f.all_messages().await.len(), 1, "{}", f.name());
        assert_eq!(f.t.db.runs().list_queue(&session).await.unwrap().len(), 2);

        // Interrupted, the queue is promoted: the command is still a command turn, name and
        // args intact, not a plain message.
        f.t.db
            .runs()
            .interrupt(&session, 1_800_000_000_000)
            .await
            .unwrap();
        let promoted = f.all_messages().await;
        let command = promoted
            .iter()
            .find(|m| m.body == "/issue Broken")
            .unwrap_or_else(|| panic!("{}: promoted: {promoted:?}", f.name()));
        assert_eq!(command.kind, "command", "{}", f.name());
        assert_eq!(
            command.meta,
            Some(serde_json::json!({"command": {"name": "issue", "args": "Broken"}})),
            "{}",
            f.name()
        );
    }
}

#[tokio::test]
async fn a_message_after_its_session_was_deleted_starts_a_new_session() {
    for f in fixtures(AccessPolicy::Open).await {
        let old = with_session(&f).await;
        // The dispatcher knows the session (it may keep its id); then it is deleted.
        f.dispatch(&msg("om_1", "oc_1", "second"), None).await;
        assert!(f.t.db.runs().delete_session(&old).await.unwrap());
        let outcome = f
            .dispatch(&msg("om_2", "oc_1", "after the delete"), None)
            .await;
        let new = session_id(&outcome);
        assert_ne!(new, old, "{}", f.name());
        let session = f.only_session().await;
        assert_eq!(session.id, new, "{}", f.name());
        let bodies: Vec<String> = f
            .ingest
            .list_messages(&new)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, ["after the delete"], "{}", f.name());
        assert_eq!(claims_in_flight(&f.t).await, 0, "{}", f.name());
        // And the next one goes to the new session directly.
        let next = f.dispatch(&msg("om_3", "oc_1", "next"), None).await;
        assert_eq!(session_id(&next), new, "{}", f.name());
        assert_eq!(f.ingest.list_messages(&new).await.unwrap().len(), 2);
    }
}
