//! Session event fan-out (issue 5: "1,000 subscribers on one session do not slow ingestion"),
//! measured on SQLite:
//!
//! - **ingest rate** (criterion): the ingest-like path — store a user message
//!   (`IngestStore::append`, the dispatcher's transaction, which also arms the debounce window)
//!   and publish its `message` event on the session's hub — with no listener, with 1,000 bare
//!   hub receivers (the hub's own cost) and with 1,000 SSE subscribers on that session;
//! - **paired ingest rate**: the same, but interleaved so that machine load cancels out: blocks
//!   of messages into the session with 1,000 listeners alternate with blocks into a second
//!   session of the same database that has none; between blocks the listeners catch up
//!   (untimed). The ratio of the two rates is the slow-down the listeners cause;
//! - **fan-out latency**: publish → received by each subscriber, p50/p99/max over the (event,
//!   subscriber) pairs of every 8th message, both while ingesting at full rate and paced (one
//!   event at a time, the next once all 1,000 subscribers have it, at once or after twice the
//!   coalescing window); with the mean events per wake-up.
//!
//! Subscribers are the SSE endpoint's core ([`Subscription::next_delivery`]: snapshot,
//! de-duplication, lag resync, and the body chunk of each delivery), each on its own tokio task;
//! only the socket write is left out. They run with the endpoint's coalescing window
//! ([`COALESCE_WINDOW`]: the hub's per-window batches, forwarded as they are by subscribers in
//! sync) and without (`_no_window`: the per-event receiver, a delivery is whatever was queued
//! when the subscriber woke). The runtime has 2 worker threads; the ingesting loop runs on the
//! thread that blocks on it. `shared_deliveries` is the share of deliveries that were a hub
//! batch as is.
//!
//! Run: `cargo bench -p switchboard --bench fanout` (`FANOUT_CASES=paired_sse` for the paired
//! measurement with the default window alone; see [`selected`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard::api::events::{COALESCE_WINDOW, Subscription};
use switchboard::runs::{EventHub, SessionEvent, SharedEvent};
use switchboard::store::{
    AppendOutcome, AppendRequest, ChatKind, Database, NewInstallation, SecretCipher, SessionKey,
    TurnKind,
};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

const SUBSCRIBERS: usize = 1_000;
const PACED_EVENTS: usize = 200;
/// Paired measurement: rounds (after one warm-up round) of this many messages per session.
const PAIRED_ROUNDS: usize = 30;
const PAIRED_BLOCK: u64 = 200;
const NOW: i64 = 1_700_000_000_000;

struct Bench {
    _dir: tempfile::TempDir,
    db: Database,
    installation: String,
    /// The session the listeners follow.
    session: String,
    /// A session of the same installation nobody follows (the paired baseline).
    quiet: String,
    hub: EventHub,
    /// Time zero of the bodies' publish stamps.
    base: Instant,
}

impl Bench {
    async fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let db = Database::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        let cipher = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
        let installation = db
            .installations(cipher)
            .create(
                &NewInstallation {
                    channel: "lark".into(),
                    routing_key: "cli_bench".into(),
                    agent: "bench".into(),
                    ..NewInstallation::default()
                },
                NOW,
            )
            .await
            .unwrap()
            .id;
        let mut sessions = Vec::new();
        for chat in ["oc_bench", "oc_quiet"] {
            let session = db
                .ingest()
                .ensure_session(
                    &installation,
                    &SessionKey::new(chat, ChatKind::Direct, None),
                    chat,
                    NOW,
                )
                .await
                .unwrap()
                .id;
            sessions.push(session);
        }
        let quiet = sessions.pop().unwrap();
        let session = sessions.pop().unwrap();
        Bench {
            _dir: dir,
            db,
            installation,
            session,
            quiet,
            hub: EventHub::default(),
            base: Instant::now(),
        }
    }

    /// One ingest into the followed session.
    async fn ingest_one(&self, i: u64) {
        self.ingest_into(&self.session, i).await
    }

    /// One ingest: store a user message in `session`, then publish its event. The event's body
    /// is the publish stamp (ns since `base`) so subscribers can measure the fan-out latency.
    async fn ingest_into(&self, session: &str, i: u64) {
        let request = AppendRequest {
            session_id: session.to_owned(),
            installation_id: self.installation.clone(),
            body: format!("message {i}"),
            command_body: String::new(),
            channel_message_id: String::new(),
            thread_id: None,
            sender_id: "ou_bench".into(),
            turn: TurnKind::Plain,
            attachments: Vec::new(),
            debounce_ms: 60_000,
        };
        let Ok(AppendOutcome::Appended(appended)) =
            self.db.ingest().append(&request, None, NOW).await
        else {
            panic!("append failed")
        };
        self.hub.publish(
            session,
            SessionEvent::Message {
                id: appended.message_id,
                role: "user".into(),
                kind: "message".into(),
                body: (self.base.elapsed().as_nanos() as u64).to_string(),
                created_at_ms: NOW,
            },
        );
    }
}

/// Latency is sampled on every this-many-th message (by id), by every this-many-th subscriber:
/// measuring then costs the subscribers little next to what is measured.
const LATENCY_SAMPLE: i64 = 8;

/// Counts the messages the listeners received; the ingesting loop waits for a count. (One
/// atomic add per delivery: cheaper for the listeners than a semaphore's lock.)
struct Received {
    count: AtomicU64,
    /// What the waiter waits for (`u64::MAX`: nobody waits).
    target: AtomicU64,
    reached: Notify,
    /// Waited for so far (the waiter's side).
    expected: AtomicU64,
}

impl Received {
    fn new() -> Arc<Received> {
        Arc::new(Received {
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
            expected: AtomicU64::new(0),
        })
    }

    fn add(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.count.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        if now >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    /// Waits until `more` messages beyond those waited for before have been received.
    async fn wait_for(&self, more: u64) {
        let expected = self.expected.fetch_add(more, Ordering::AcqRel) + more;
        self.target.store(expected, Ordering::Release);
        while self.count.load(Ordering::Acquire) < expected {
            self.reached.notified().await;
        }
        self.target.store(u64::MAX, Ordering::Release);
    }
}

impl Seen {
    /// Records the events of a delivery: the latency of the sampled messages among them if this
    /// subscriber samples (`now` is read once per delivery); returns how many are messages. Looks at each event
    /// only when it has to: the bench's live events are consecutive messages (ids in order,
    /// blocks of a multiple of [`LATENCY_SAMPLE`] messages), so in a delivery that holds
    /// nothing else the sampled ones are every [`LATENCY_SAMPLE`]-th — the harness then costs
    /// a subscriber per sample rather than per event, like the endpoint it stands for, which
    /// does not look at the events of a batch it forwards.
    fn record_all(&mut self, events: &[SharedEvent], base: Instant, sample: bool) -> usize {
        let mut now = None;
        let ids = match (events.first().map(|e| &**e), events.last().map(|e| &**e)) {
            (
                Some(SessionEvent::Message { id: first, .. }),
                Some(SessionEvent::Message { id: last, .. }),
            ) if last - first + 1 == events.len() as i64 => Some(*first),
            _ => None,
        };
        let Some(first) = ids else {
            let mut live = 0;
            for event in events {
                let message = if sample {
                    self.record(event, base, &mut now)
                } else {
                    matches!(**event, SessionEvent::Message { .. })
                };
                live += usize::from(message);
            }
            return live;
        };
        if !sample {
            return events.len();
        }
        // Consecutive ids from `first`: the first sampled one is at this offset.
        let offset = (LATENCY_SAMPLE - first.rem_euclid(LATENCY_SAMPLE)) % LATENCY_SAMPLE;
        for event in events
            .iter()
            .skip(offset as usize)
            .step_by(LATENCY_SAMPLE as usize)
        {
            self.record(event, base, &mut now);
        }
        events.len()
    }

    /// Records a received event (its latency, for a sampled message; `now` is read once per
    /// batch); returns whether it is a message.
    fn record(&mut self, event: &SessionEvent, base: Instant, now: &mut Option<u64>) -> bool {
        let SessionEvent::Message { id, body, .. } = event else {
            return false;
        };
        if id % LATENCY_SAMPLE == 0
            && let Ok(stamp) = body.parse::<u64>()
        {
            let now = *now.get_or_insert_with(|| base.elapsed().as_nanos() as u64);
            self.latencies_ns.push(now.saturating_sub(stamp));
        }
        true
    }
}

/// What one subscriber measured.
#[derive(Default)]
struct Seen {
    latencies_ns: Vec<u64>,
    resyncs: u64,
    /// Wake-ups that handed out events (SSE: body chunks written).
    batches: u64,
    /// Of those, the hub's batches forwarded as they are (no per-event work).
    shared: u64,
    events: u64,
}

/// `n` subscribers from the current end of the history, coalescing over `window`; each counts
/// its live messages in `received`; every [`LATENCY_SAMPLE`]-th samples latencies. They end when the hub's streams are closed.
async fn subscribe(
    bench: &Bench,
    n: usize,
    window: Duration,
    received: Arc<Received>,
) -> Vec<JoinHandle<Seen>> {
    let store = bench.db.runs();
    let after = store
        .messages_after(&bench.session, 0)
        .await
        .unwrap()
        .last()
        .map_or(0, |m| m.id);
    let mut tasks = Vec::with_capacity(n);
    for index in 0..n {
        let mut subscription =
            Subscription::open_with_window(&bench.hub, &store, &bench.session, after, window)
                .await
                .unwrap()
                .unwrap();
        let base = bench.base;
        let received = received.clone();
        let sample = index % LATENCY_SAMPLE as usize == 0;
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while let Some(delivery) = subscription.next_delivery().await {
                // What the endpoint hands to hyper as the body chunk.
                let _ = std::hint::black_box(delivery.chunk());
                let live = seen.record_all(delivery.events(), base, sample);
                seen.batches += 1;
                seen.shared += u64::from(delivery.is_shared());
                seen.events += delivery.events().len() as u64;
                received.add(live);
            }
            seen.resyncs = subscription.resyncs();
            seen
        }));
    }
    tasks
}

/// `n` bare hub receivers (no snapshot, de-duplication or SSE encoding): the hub's own cost.
/// Each counts its messages in `received`.
fn subscribe_raw(bench: &Bench, n: usize, received: Arc<Received>) -> Vec<JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let (_, mut receiver) = bench.hub.subscribe(&bench.session);
            let base = bench.base;
            let received = received.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                loop {
                    let event = receiver.recv_shared().await;
                    seen.batches += 1;
                    seen.events += 1;
                    match event.as_deref() {
                        Ok(message @ SessionEvent::Message { .. }) => {
                            seen.record(message, base, &mut None);
                            received.add(1);
                        }
                        Ok(SessionEvent::Error { .. }) => break, // close_streams
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            seen.resyncs += 1
                        }
                        Err(_) => break,
                    }
                }
                seen
            })
        })
        .collect()
}

/// Closes the streams and collects what the subscribers measured.
async fn finish(hub: &EventHub, tasks: Vec<JoinHandle<Seen>>) -> Seen {
    hub.close_streams();
    let mut all = Seen::default();
    for task in tasks {
        let seen = task.await.unwrap();
        all.latencies_ns.extend(seen.latencies_ns);
        all.resyncs += seen.resyncs;
        all.batches += seen.batches;
        all.shared += seen.shared;
        all.events += seen.events;
    }
    all
}

fn report(label: &str, seen: Seen) {
    let Seen {
        latencies_ns: mut latencies,
        resyncs,
        batches,
        shared,
        events,
    } = seen;
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |ns| *ns as f64 / 1000.0)
    };
    println!(
        "fanout latency {label}: samples={} p50={:.1}us p99={:.1}us max={:.1}us lag_resyncs={resyncs} events_per_wake={:.2} shared_deliveries={:.0}%",
        latencies.len(),
        pick(0.50),
        pick(0.99),
        latencies.last().map_or(f64::NAN, |ns| *ns as f64 / 1000.0),
        events as f64 / batches.max(1) as f64,
        100.0 * shared as f64 / batches.max(1) as f64,
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Who listens while the bench ingests.
#[derive(Clone, Copy)]
enum Listeners {
    None,
    /// Bare hub receivers.
    Hub,
    /// SSE subscribers with this coalescing window.
    Sse(Duration),
}

impl Listeners {
    fn label(self) -> String {
        match self {
            Listeners::None => "0_sse_subscribers".into(),
            Listeners::Hub => format!("{SUBSCRIBERS}_hub_receivers"),
            Listeners::Sse(window) if window.is_zero() => {
                format!("{SUBSCRIBERS}_sse_subscribers_no_window")
            }
            Listeners::Sse(window) => format!("{SUBSCRIBERS}_sse_subscribers_{window:?}_window"),
        }
    }

    /// Starts them on `rt`; each counts its live messages in `received`.
    fn start(
        self,
        rt: &tokio::runtime::Runtime,
        bench: &Bench,
        received: Arc<Received>,
    ) -> Vec<JoinHandle<Seen>> {
        match self {
            Listeners::None => Vec::new(),
            Listeners::Hub => {
                let _guard = rt.enter();
                subscribe_raw(bench, SUBSCRIBERS, received)
            }
            Listeners::Sse(window) => rt.block_on(subscribe(bench, SUBSCRIBERS, window, received)),
        }
    }
}

const ALL: [Listeners; 4] = [
    Listeners::None,
    Listeners::Hub,
    Listeners::Sse(Duration::ZERO),
    Listeners::Sse(COALESCE_WINDOW),
];

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("ingest_with_subscribers");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for listeners in ALL {
        let bench = rt.block_on(Bench::new());
        let tasks = listeners.start(&rt, &bench, Received::new());
        let label = listeners.label();
        let mut i = 0u64;
        group.bench_function(BenchmarkId::from_parameter(&label), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        bench.ingest_one(i).await;
                        i += 1;
                    }
                    start.elapsed()
                })
            })
        });
        let seen = rt.block_on(finish(&bench.hub, tasks));
        if !matches!(listeners, Listeners::None) {
            report(&format!("while ingesting at full rate ({label})"), seen);
        }
    }
    group.finish();
}

/// Blocks into the followed session alternate with blocks into the quiet one (the order
/// alternates too); the listeners catch up, untimed, after each followed block.
fn paired(listeners: Listeners) {
    let rt = runtime();
    let bench = rt.block_on(Bench::new());
    let received = Received::new();
    let tasks = listeners.start(&rt, &bench, received.clone());
    let (mut followed, mut quiet) = (Duration::ZERO, Duration::ZERO);
    rt.block_on(async {
        let mut i = 0u64;
        for round in 0..=PAIRED_ROUNDS {
            let mut timed = [Duration::ZERO; 2];
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let session = [&bench.session, &bench.quiet][which];
                let start = Instant::now();
                for _ in 0..PAIRED_BLOCK {
                    bench.ingest_into(session, i).await;
                    i += 1;
                }
                timed[which] = start.elapsed();
                if which == 0 && !tasks.is_empty() {
                    received.wait_for(PAIRED_BLOCK * SUBSCRIBERS as u64).await;
                }
            }
            if round > 0 {
                followed += timed[0];
                quiet += timed[1];
            }
        }
    });
    let messages = (PAIRED_ROUNDS as u64 * PAIRED_BLOCK) as f64;
    let (followed, quiet) = (
        messages / followed.as_secs_f64(),
        messages / quiet.as_secs_f64(),
    );
    println!(
        "paired ingest ({}): followed session {followed:.0} msg/s, quiet session {quiet:.0} msg/s, \
         ratio {:.0}%",
        listeners.label(),
        100.0 * followed / quiet,
    );
    let seen = rt.block_on(finish(&bench.hub, tasks));
    if !matches!(listeners, Listeners::None) {
        report(&format!("paired ({})", listeners.label()), seen);
    }
}

/// One event at a time; the next once every subscriber has the previous one, after `gap`.
fn paced_latency(window: Duration, gap: Duration) {
    let rt = runtime();
    rt.block_on(async {
        let bench = Bench::new().await;
        let received = Received::new();
        let tasks = subscribe(&bench, SUBSCRIBERS, window, received.clone()).await;
        let started = Instant::now();
        for i in 0..PACED_EVENTS as u64 {
            bench.ingest_one(i).await;
            received.wait_for(SUBSCRIBERS as u64).await;
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        let elapsed = started.elapsed();
        let seen = finish(&bench.hub, tasks).await;
        report(
            &format!(
                "paced ({SUBSCRIBERS} subscribers, window {window:?}, gap {gap:?}, {PACED_EVENTS} events, {elapsed:.2?})"
            ),
            seen,
        );
    });
}

/// Whether `FANOUT_CASES` (comma-separated `criterion`, `paired`, `paired_sse`, `paced`; all by
/// default) selects `case`. `paired_sse` is the paired measurement with the default window
/// only, for repeated rounds (and profiling).
fn selected(case: &str) -> bool {
    std::env::var("FANOUT_CASES").map_or(true, |cases| cases.split(',').any(|c| c.trim() == case))
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if selected("criterion") {
        ingest(&mut c);
    }
    if selected("paired") {
        for listeners in &ALL[1..] {
            paired(*listeners);
        }
    } else if selected("paired_sse") {
        paired(Listeners::Sse(COALESCE_WINDOW));
    }
    if selected("paced") {
        paced_latency(Duration::ZERO, Duration::ZERO);
        paced_latency(COALESCE_WINDOW, Duration::ZERO);
        // Events further apart than the window: each goes out at once.
        paced_latency(COALESCE_WINDOW, 2 * COALESCE_WINDOW);
    }
    c.final_summary();
}
