//! The session event stream (SPEC §5; `chat-runs.md` A.11) over real HTTP: `serve`'s router on
//! 127.0.0.1:0, read as Server-Sent Events. A late subscriber gets the snapshot (status, buffered
//! parts, messages after the cursor, queue) and then live events in order; the cursor and
//! `Last-Event-ID` are respected; a subscriber that never reads does not hold up publishing and
//! resynchronises from the database; an in-sync subscriber gets a burst's events once, in order,
//! as the hub's shared batches; subscribers joining mid-burst get no duplicate and no gap (with
//! and without the coalescing window); without the window each event is handed out as it
//! comes; shutdown ends open streams; on PostgreSQL, durable events of one replica reach a
//! subscriber on another through LISTEN/NOTIFY and a database read, exactly once on both. Runs
//! on SQLite and PostgreSQL.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;
#[path = "support/time.rs"]
mod time;

use std::time::Duration;

use serde_json::Value;
use switchboard::api::events::{COALESCE_WINDOW, Delivery, MAX_BATCH_EVENTS, Subscription};
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::runs::{RunService, SessionEvent, SharedEvent};
use switchboard::store::{
    AppendOutcome, AppendRequest, ChatKind, Database, NewInstallation, RunEnd, SessionKey,
    Submitted, TurnKind,
};
use time::ManualClock;

const ADMIN: &str = "events-admin-token-0123456789abcdef";
const NOW: i64 = 1_700_000_000_000;
/// An agent no built-in executor serves: the test drives runs itself.
const AGENT: &str = "sse-test-agent";
/// How long a read may wait before the test fails as hung (not a performance assertion).
const HANG: Duration = Duration::from_secs(30);

/// One host ("replica") serving on 127.0.0.1:0.
struct Replica {
    base: String,
    runs: RunService,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(database_url: &str, key: &str) -> Replica {
        let mut config = Config::default();
        config.database.url = database_url.to_owned();
        config.secrets.key = Some(key.to_owned());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        let app = App::build(&config, ManualClock::new(NOW))
            .await
            .expect("app builds");
        let runs = app.state.runs.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Replica {
            base,
            runs,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    /// Opens `GET /api/sessions/{id}/events` (with `query`, e.g. `?after=3`).
    async fn events(&self, session_id: &str, query: &str) -> reqwest::Response {
        self.client
            .get(format!(
                "{}/api/sessions/{session_id}/events{query}",
                self.base
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request sent")
    }

    async fn subscribe(&self, session_id: &str, query: &str) -> SseReader {
        let response = self.events(session_id, query).await;
        assert_eq!(response.status(), 200, "event stream opens");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader::new(response)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(HANG, self.task)
            .await
            .expect("serve returns after shutdown although event streams are open")
            .unwrap()
            .expect("serve ends cleanly");
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Sse {
    fn message_body(&self) -> &str {
        assert_eq!(self.event, "message", "expected a message event: {self:?}");
        self.data["body"].as_str().unwrap()
    }
    fn status(&self) -> &str {
        assert_eq!(self.event, "status", "expected a status event: {self:?}");
        self.data["state"].as_str().unwrap()
    }
    fn part(&self) -> &str {
        assert_eq!(self.event, "message_part", "expected a part: {self:?}");
        self.data["text"].as_str().unwrap()
    }
    fn queue(&self) -> Vec<String> {
        assert_eq!(
            self.event, "queue_update",
            "expected a queue update: {self:?}"
        );
        self.data["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["body"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Reads an SSE response body chunk by chunk and parses events (comments skipped).
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(HANG, self.response.chunk())
                .await
                .expect("the event stream went quiet: hung")
                .expect("reading the event stream")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn expect(&mut self) -> Sse {
        self.next().await.expect("the event stream ended early")
    }
}

fn parse_block(block: &str) -> Option<Sse> {
    let (mut event, mut id, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim_start().to_owned());
        } else if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim_start().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let event = event?; // keep-alive comments carry no event
    let data: Value = serde_json::from_str(&data).expect("event data is JSON");
    assert_eq!(
        data["event"],
        event.as_str(),
        "data tag matches the SSE name"
    );
    Some(Sse { event, id, data })
}

/// An installation served by [`AGENT`] and one of its sessions.
async fn session(db: &Database, chat: &str) -> (String, String) {
    let installation = db
        .installations(switchboard::store::SecretCipher::from_key_str(&KEY).unwrap())
        .create(
            &NewInstallation {
                channel: "lark".into(),
                routing_key: format!("cli_{chat}"),
                agent: AGENT.into(),
                ..NewInstallation::default()
            },
            NOW,
        )
        .await
        .expect("installation created");
    let session = db
        .ingest()
        .ensure_session(
            &installation.id,
            &SessionKey::new(chat, ChatKind::Direct, None),
            chat,
            NOW,
        )
        .await
        .expect("session created");
    (installation.id, session.id)
}

static KEY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(switchboard::store::SecretCipher::generate_key_hex);

/// Stores a user message the way the dispatcher does (no event published); returns its id.
async fn append(db: &Database, installation: &str, session: &str, body: &str) -> i64 {
    let request = AppendRequest {
        session_id: session.to_owned(),
        installation_id: installation.to_owned(),
        body: body.to_owned(),
        command_body: String::new(),
        channel_message_id: String::new(),
        thread_id: None,
        sender_id: "ou_sender".to_owned(),
        turn: TurnKind::Plain,
        attachments: Vec::new(),
        debounce_ms: 60_000,
    };
    match db.ingest().append(&request, None, NOW).await {
        Ok(AppendOutcome::Appended(appended)) => appended.message_id,
        other => panic!("append failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_the_snapshot_then_live_events_in_order() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (_, s) = session(&t.db, "oc_late").await;
        let runs = &replica.runs;

        // Before anyone subscribes: a stored message, a running run with streamed parts, and a
        // message queued behind the run.
        let Submitted::Appended(hello) = runs.submit(&s, "hello").await.unwrap() else {
            panic!("an idle session stores the submission")
        };
        let claim = runs.acquire(AGENT, "worker-1").await.unwrap().expect("run");
        assert!(runs.publish_part(&s, &claim.run_id, "Hel"));
        assert!(runs.publish_part(&s, &claim.run_id, "lo"));
        assert!(matches!(
            runs.submit(&s, "later").await.unwrap(),
            Submitted::Queued(_)
        ));

        let mut sse = replica.subscribe(&s, "").await;
        // Snapshot, in A.11's order.
        assert_eq!(sse.expect().await.status(), "running", "{}", t.name);
        assert_eq!(sse.expect().await.part(), "Hel");
        assert_eq!(sse.expect().await.part(), "lo");
        let first = sse.expect().await;
        assert_eq!(first.message_body(), "hello");
        assert_eq!(first.id.as_deref(), Some(hello.id.to_string().as_str()));
        assert_eq!(first.data["role"], "user");
        assert_eq!(sse.expect().await.queue(), ["later"]);

        // Live, in publishing order.
        assert!(runs.publish_part(&s, &claim.run_id, "!"));
        let reply = runs
            .append_reply(&s, &claim.run_id, "Hello!")
            .await
            .unwrap()
            .expect("owner stores its reply");
        runs.release(&s, &claim.run_id, RunEnd::Completed)
            .await
            .unwrap();
        assert_eq!(sse.expect().await.part(), "!", "{}", t.name);
        let live = sse.expect().await;
        assert_eq!(live.message_body(), "Hello!");
        assert_eq!(live.id.as_deref(), Some(reply.id.to_string().as_str()));
        assert_eq!(live.data["role"], "assistant");
        // The release promotes the queue: the message, the now empty queue, the new status.
        assert_eq!(sse.expect().await.message_body(), "later");
        assert!(sse.expect().await.queue().is_empty());
        assert_eq!(sse.expect().await.status(), "idle", "{}", t.name);

        // A run that fails: status error with the reason, then an error event.
        runs.submit(&s, "again").await.unwrap();
        assert_eq!(sse.expect().await.message_body(), "again");
        assert_eq!(sse.expect().await.status(), "pending");
        let claim = runs.acquire(AGENT, "worker-1").await.unwrap().expect("run");
        assert_eq!(sse.expect().await.status(), "running");
        runs.release(&s, &claim.run_id, RunEnd::Failed("model down".into()))
            .await
            .unwrap();
        let failed = sse.expect().await;
        assert_eq!(failed.status(), "error");
        assert_eq!(failed.data["last_error"], "model down");
        let error = sse.expect().await;
        assert_eq!(error.event, "error");
        assert_eq!(error.data["message"], "model down");

        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_cursor_and_last_event_id_are_respected() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (installation, s) = session(&t.db, "oc_cursor").await;
        let m1 = append(&t.db, &installation, &s, "one").await;
        let m2 = append(&t.db, &installation, &s, "two").await;
        let m3 = append(&t.db, &installation, &s, "three").await;

        let mut sse = replica.subscribe(&s, &format!("?after={m1}")).await;
        assert_eq!(sse.expect().await.status(), "idle", "{}", t.name);
        assert_eq!(sse.expect().await.message_body(), "two");
        assert_eq!(sse.expect().await.message_body(), "three");
        // No queue_update for an empty queue: the next event is live.
        let Submitted::Appended(m4) = replica.runs.submit(&s, "four").await.unwrap() else {
            panic!("idle session stores the submission")
        };
        let live = sse.expect().await;
        assert_eq!(live.message_body(), "four", "{}", t.name);
        assert_eq!(live.id, Some(m4.id.to_string()));
        assert_eq!(sse.expect().await.status(), "pending");

        // A reconnecting client resumes from its Last-Event-ID (when `after` is absent).
        let response = replica
            .client
            .get(format!("{}/api/sessions/{s}/events", replica.base))
            .bearer_auth(ADMIN)
            .header("last-event-id", m2.to_string())
            .send()
            .await
            .unwrap();
        let mut resumed = SseReader::new(response);
        assert_eq!(resumed.expect().await.status(), "pending");
        let bodies = [resumed.expect().await, resumed.expect().await];
        assert_eq!(bodies[0].id, Some(m3.to_string()));
        assert_eq!(bodies[0].message_body(), "three");
        assert_eq!(bodies[1].message_body(), "four");

        // Unknown session: 404 JSON; no or a wrong token: 401.
        let missing = replica.events("no-such-session", "").await;
        assert_eq!(missing.status(), 404);
        let body: Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("no-such-session"));
        let anonymous = replica
            .client
            .get(format!("{}/api/sessions/{s}/events", replica.base))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);

        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_block_publishing_and_resyncs() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (installation, s) = session(&t.db, "oc_slow").await;
        let hub = replica.runs.hub().clone();
        let store = t.db.runs();

        // In-process subscriber (deterministic lag: the hub holds 256 events per session) and an
        // HTTP subscriber; neither reads while 600 messages are stored and published.
        let mut slow = Subscription::open(&hub, &store, &s, 0)
            .await
            .unwrap()
            .expect("session exists");
        let mut http = replica.subscribe(&s, "").await;
        let mut ids = Vec::new();
        let body = "x".repeat(16 * 1024); // 600 × 16 KiB: more than the socket buffers hold
        for i in 0..600 {
            let id = append(&t.db, &installation, &s, &format!("{i}:{body}")).await;
            let message = store.messages_after(&s, id - 1).await.unwrap().remove(0);
            hub.publish(&s, SessionEvent::message(&message));
            ids.push(id);
        }
        // Publishing finished with both subscribers unread. Now they read.
        assert!(matches!(
            slow.next().await.as_deref(),
            Some(SessionEvent::Status { .. })
        ));
        let mut seen = Vec::new();
        while seen.last() != ids.last() {
            match &*slow.next().await.expect("stream continues") {
                SessionEvent::Message { id, .. } => seen.push(*id),
                SessionEvent::Status { .. } | SessionEvent::QueueUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ids, "{}: every message once, in order", t.name);
        assert!(
            slow.resyncs() >= 1,
            "{}: the slow subscriber lagged",
            t.name
        );
        assert_eq!(slow.cursor(), *ids.last().unwrap());

        assert_eq!(http.expect().await.status(), "idle");
        let mut seen = Vec::new();
        while seen.last() != ids.last() {
            let event = http.expect().await;
            if event.event == "message" {
                seen.push(event.id.unwrap().parse::<i64>().unwrap());
            }
        }
        assert_eq!(
            seen, ids,
            "{}: the HTTP subscriber gets the latest messages",
            t.name
        );

        replica.shutdown().await;
    }
}

/// The message ids among `events`, in order.
fn message_ids(events: &[SharedEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|event| match **event {
            SessionEvent::Message { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// Checks that a delivery's chunk is its events' frames back to back, parseable as SSE.
fn assert_chunk_matches(delivery: &Delivery) {
    let frames: Vec<&[u8]> = delivery
        .events()
        .iter()
        .map(|e| &e.sse_frame()[..])
        .collect();
    assert_eq!(&delivery.chunk()[..], frames.concat().as_slice());
    let text = std::str::from_utf8(delivery.chunk()).unwrap();
    let parsed: Vec<Sse> = text
        .split_inclusive("\n\n")
        .filter_map(parse_block)
        .collect();
    assert_eq!(parsed.len(), delivery.events().len());
}

/// Stores `count` user messages and publishes each right after storing it, as the dispatcher
/// does; returns their ids. After the `signal_after`-th, tells `signal`.
async fn store_and_publish(
    db: &Database,
    hub: &switchboard::runs::EventHub,
    installation: &str,
    session: &str,
    count: usize,
    mut signal: Vec<(usize, tokio::sync::oneshot::Sender<()>)>,
) -> Vec<i64> {
    let store = db.runs();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = append(db, installation, session, &format!("m{i}")).await;
        let message = store
            .messages_after(session, id - 1)
            .await
            .unwrap()
            .remove(0);
        hub.publish(session, SessionEvent::message(&message));
        ids.push(id);
        while signal.first().is_some_and(|(after, _)| *after == i + 1) {
            let _ = signal.remove(0).1.send(());
        }
    }
    ids
}

/// Reads `subscription` until it has handed out the message `last`: the message ids in order
/// (snapshot and live), and whether every live delivery after the snapshot's was shared.
async fn read_until(subscription: &mut Subscription, last: i64) -> (Vec<i64>, Vec<Delivery>) {
    let mut seen = Vec::new();
    let mut deliveries = Vec::new();
    while seen.last() != Some(&last) {
        let delivery = tokio::time::timeout(HANG, subscription.next_delivery())
            .await
            .expect("the next events arrive")
            .expect("the stream continues");
        assert_chunk_matches(&delivery);
        seen.extend(message_ids(delivery.events()));
        deliveries.push(delivery);
    }
    (seen, deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_sync_subscriber_gets_each_burst_event_once_in_order_as_shared_batches() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (installation, s) = session(&t.db, "oc_batch").await;
        let hub = replica.runs.hub().clone();
        let store = t.db.runs();
        let history = append(&t.db, &installation, &s, "before").await;
        // One from the end of the history (empty snapshot), one with the whole history (its
        // snapshot messages are all older than anything live).
        let mut from_end = Subscription::open(&hub, &store, &s, history)
            .await
            .unwrap()
            .expect("session exists");
        let mut whole = Subscription::open(&hub, &store, &s, 0)
            .await
            .unwrap()
            .expect("session exists");
        let snapshot = whole.next_delivery().await.unwrap();
        assert!(matches!(*snapshot.events()[0], SessionEvent::Status { .. }));
        assert_eq!(message_ids(snapshot.events()), [history]);
        assert!(
            !snapshot.is_shared(),
            "the snapshot is this subscriber's own"
        );
        assert_eq!(
            from_end.next_delivery().await.unwrap().events().len(),
            1,
            "status only"
        );

        let ids = store_and_publish(&t.db, &hub, &installation, &s, 150, Vec::new()).await;
        let last = *ids.last().unwrap();
        for subscription in [&mut from_end, &mut whole] {
            let (seen, deliveries) = read_until(subscription, last).await;
            assert_eq!(seen, ids, "{}: every message once, in order", t.name);
            assert!(
                deliveries.iter().all(Delivery::is_shared),
                "{}: in sync, the hub's batches go out as they are",
                t.name
            );
            assert_eq!(subscription.cursor(), last);
        }

        // A live event after that still arrives (the coalescing window only delays it).
        let id = append(&t.db, &installation, &s, "late").await;
        let message = store.messages_after(&s, id - 1).await.unwrap().remove(0);
        hub.publish(&s, SessionEvent::message(&message));
        let late = tokio::time::timeout(HANG, from_end.next_delivery())
            .await
            .expect("the live event arrives")
            .unwrap();
        assert_eq!(message_ids(late.events()), [id]);

        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_mid_burst_get_no_duplicate_and_no_gap() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (installation, s) = session(&t.db, "oc_mid_burst").await;
        let hub = replica.runs.hub().clone();
        let store = t.db.runs();
        // Subscribers join while the burst is being stored and published, after 20, 60 and
        // 110 messages, with the window (from the whole history or from their join point)
        // and without it.
        let joins = [
            (20, COALESCE_WINDOW),
            (60, Duration::ZERO),
            (110, COALESCE_WINDOW),
        ];
        let (signals, waits): (Vec<_>, Vec<_>) = joins
            .iter()
            .map(|(after, _)| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                ((*after, tx), rx)
            })
            .unzip();
        let publisher = tokio::spawn({
            let (db, hub, installation, s) =
                (t.db.clone(), hub.clone(), installation.clone(), s.clone());
            async move { store_and_publish(&db, &hub, &installation, &s, 200, signals).await }
        });
        let mut subscriptions = Vec::new();
        for ((_, window), wait) in joins.iter().zip(waits) {
            wait.await.unwrap();
            subscriptions.push(
                Subscription::open_with_window(&hub, &store, &s, 0, *window)
                    .await
                    .unwrap()
                    .expect("session exists"),
            );
        }
        let ids = publisher.await.unwrap();
        for (mut subscription, (joined, window)) in subscriptions.into_iter().zip(joins) {
            let (seen, _) = read_until(&mut subscription, *ids.last().unwrap()).await;
            assert_eq!(
                seen, ids,
                "{}: joined after {joined} (window {window:?}): snapshot then live, each once",
                t.name
            );
        }

        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_coalescing_each_event_is_handed_out_as_it_comes() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (installation, s) = session(&t.db, "oc_no_window").await;
        let hub = replica.runs.hub().clone();
        let store = t.db.runs();
        let first = append(&t.db, &installation, &s, "first").await;
        let mut subscription = Subscription::open_with_window(&hub, &store, &s, 0, Duration::ZERO)
            .await
            .unwrap()
            .expect("session exists");
        // The snapshot, then each live event on its own delivery, in order; a duplicate of a
        // snapshot message (same id and content) is dropped, an edit goes through.
        let snapshot = subscription.next_delivery().await.unwrap();
        assert_eq!(message_ids(snapshot.events()), [first]);
        let stored = store.messages_after(&s, first - 1).await.unwrap().remove(0);
        hub.publish(&s, SessionEvent::message(&stored)); // already in the snapshot
        let mut edited = SessionEvent::message(&stored);
        if let SessionEvent::Message { body, .. } = &mut edited {
            *body = "first, edited".into();
        }
        hub.publish(&s, edited.clone());
        let next = subscription.next_delivery().await.unwrap();
        assert_eq!(
            next.events(),
            [edited],
            "{}: the duplicate is dropped",
            t.name
        );
        assert_chunk_matches(&next);
        for i in 0..MAX_BATCH_EVENTS + 10 {
            hub.publish(
                &s,
                SessionEvent::Error {
                    message: format!("e{i}"),
                },
            );
        }
        // Everything queued comes at once, at most MAX_BATCH_EVENTS per delivery.
        let full = subscription.next_delivery().await.unwrap();
        assert_eq!(full.events().len(), MAX_BATCH_EVENTS, "{}", t.name);
        let rest = subscription.next_delivery().await.unwrap();
        let messages: Vec<String> = full
            .events()
            .iter()
            .chain(rest.events())
            .map(|e| match &**e {
                SessionEvent::Error { message } => message.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let expected: Vec<String> = (0..MAX_BATCH_EVENTS + 10)
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(messages, expected);
        assert!(!full.is_shared());

        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams() {
    for t in db::test_databases().await {
        let replica = Replica::start(&t.url, &KEY).await;
        let (_, s) = session(&t.db, "oc_shutdown").await;
        let mut sse = replica.subscribe(&s, "").await;
        assert_eq!(sse.expect().await.status(), "idle", "{}", t.name);
        replica.shutdown().await; // would hang on the open stream otherwise
        let last = sse.expect().await;
        assert_eq!(last.event, "error", "{}", t.name);
        assert_eq!(
            last.data["message"],
            switchboard::runs::events::SHUTDOWN_MESSAGE
        );
        assert!(sse.next().await.is_none(), "{}: the stream ended", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_reach_a_subscriber_on_another_replica() {
    let t = db::postgres_db().await;
    let a = Replica::start(&t.url, &KEY).await;
    let b = Replica::start(&t.url, &KEY).await;
    let (_, s) = session(&t.db, "oc_replicas").await;

    let mut on_b = b.subscribe(&s, "").await;
    let mut on_a = a.subscribe(&s, "").await;
    assert_eq!(on_b.expect().await.status(), "idle");
    assert_eq!(on_a.expect().await.status(), "idle");

    // A message and a status change on replica A.
    let Submitted::Appended(hello) = a.runs.submit(&s, "from A").await.unwrap() else {
        panic!("idle session stores the submission")
    };
    let relayed = on_b.expect().await;
    assert_eq!(relayed.message_body(), "from A");
    assert_eq!(relayed.id, Some(hello.id.to_string()));
    assert_eq!(on_b.expect().await.status(), "pending");

    // A run on A: parts stay on A; B gets the stored reply and the statuses. (B reads the
    // state when a notice arrives, so the test waits for each step before the next.)
    let claim = a
        .runs
        .acquire(AGENT, "worker-a")
        .await
        .unwrap()
        .expect("run");
    assert_eq!(on_b.expect().await.status(), "running");
    assert!(a.runs.publish_part(&s, &claim.run_id, "partial"));
    a.runs.submit(&s, "queued on A").await.unwrap();
    assert_eq!(on_b.expect().await.queue(), ["queued on A"], "no part on B");
    a.runs
        .append_reply(&s, &claim.run_id, "reply from A")
        .await
        .unwrap()
        .expect("owner");
    assert_eq!(on_b.expect().await.message_body(), "reply from A");
    a.runs
        .release(&s, &claim.run_id, RunEnd::Failed("boom".into()))
        .await
        .unwrap();
    assert_eq!(on_b.expect().await.message_body(), "queued on A");
    assert!(on_b.expect().await.queue().is_empty());
    let failed = on_b.expect().await;
    assert_eq!(failed.status(), "error");
    assert_eq!(failed.data["last_error"], "boom");
    let error = on_b.expect().await;
    assert_eq!(error.event, "error");
    assert_eq!(error.data["message"], "boom");

    // The originating replica saw every event exactly once, with the part.
    let mut names = Vec::new();
    for _ in 0..10 {
        let event = on_a.expect().await;
        names.push(match event.event.as_str() {
            "message" => format!("message:{}", event.message_body()),
            "status" => format!("status:{}", event.status()),
            "message_part" => format!("part:{}", event.part()),
            "queue_update" => format!("queue:{}", event.queue().len()),
            other => other.to_owned(),
        });
    }
    assert_eq!(
        names,
        [
            "message:from A",
            "status:pending",
            "status:running",
            "part:partial",
            "queue:1",
            "message:reply from A",
            "message:queued on A",
            "queue:0",
            "status:error",
            "error",
        ]
    );

    // Changes on B reach A too; a deletion ends in an error event on both.
    b.runs.submit(&s, "from B").await.unwrap();
    assert_eq!(on_a.expect().await.message_body(), "from B");
    assert_eq!(on_a.expect().await.status(), "pending");
    assert_eq!(on_b.expect().await.message_body(), "from B");
    assert_eq!(on_b.expect().await.status(), "pending");
    assert!(b.runs.delete_session(&s).await.unwrap());
    let gone = on_a.expect().await;
    assert_eq!(gone.event, "error");
    assert_eq!(gone.data["message"], "the session was deleted");
    assert_eq!(on_b.expect().await.event, "error");

    a.shutdown().await;
    b.shutdown().await;
}
