//! Session event fan-out (issue 5: "1,000 subscribers on one session do not slow ingestion"),
//! measured side by side in one run on SQLite:
//!
//! - **ingest rate**: the ingest-like path — store a user message (`IngestStore::append`, the
//!   dispatcher's transaction, which also arms the debounce window) and publish its `message`
//!   event on the session's hub — with 0 and with 1,000 subscribers on that session;
//! - **fan-out latency**: publish → received by each subscriber, p50/p99/max over every
//!   (event, subscriber) pair, both while ingesting at full rate and paced (one event at a time,
//!   the next once all 1,000 subscribers have it).
//!
//! Subscribers are the SSE endpoint's core ([`Subscription`]: snapshot, de-duplication, lag
//! resync) plus the SSE frame encoding (`sse_event`), each on its own tokio task; only the
//! socket write is left out. The runtime has 2 worker threads.
//!
//! Run: `cargo bench -p switchboard --bench fanout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use switchboard::api::events::{Subscription, sse_event};
use switchboard::runs::{EventHub, SessionEvent};
use switchboard::store::{
    AppendOutcome, AppendRequest, ChatKind, Database, NewInstallation, SecretCipher, SessionKey,
    TurnKind,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const SUBSCRIBERS: usize = 1_000;
const PACED_EVENTS: usize = 200;
const NOW: i64 = 1_700_000_000_000;

struct Bench {
    _dir: tempfile::TempDir,
    db: Database,
    installation: String,
    session: String,
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
        let session = db
            .ingest()
            .ensure_session(
                &installation,
                &SessionKey::new("oc_bench", ChatKind::Direct, None),
                "bench",
                NOW,
            )
            .await
            .unwrap()
            .id;
        Bench {
            _dir: dir,
            db,
            installation,
            session,
            hub: EventHub::default(),
            base: Instant::now(),
        }
    }

    /// One ingest: store a user message, then publish its event. The event's body is the
    /// publish stamp (ns since `base`) so subscribers can measure the fan-out latency.
    async fn ingest_one(&self, i: u64) {
        let request = AppendRequest {
            session_id: self.session.clone(),
            installation_id: self.installation.clone(),
            body: format!("message {i}"),
            command_body: String::new(),
            channel_message_id: String::new(),
            thread_id: None,
            sender_id: "ou_bench".into(),
            turn: TurnKind::Plain,
            debounce_ms: 60_000,
        };
        let Ok(AppendOutcome::Appended(appended)) =
            self.db.ingest().append(&request, None, NOW).await
        else {
            panic!("append failed")
        };
        self.hub.publish(
            &self.session,
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

/// What one subscriber measured.
#[derive(Default)]
struct Seen {
    latencies_ns: Vec<u64>,
    resyncs: u64,
}

/// `n` subscribers from the current end of the history; each adds a permit to `received` per
/// live message. They end when the hub's streams are closed.
async fn subscribe(bench: &Bench, n: usize, received: Arc<Semaphore>) -> Vec<JoinHandle<Seen>> {
    let store = bench.db.runs();
    let after = store
        .messages_after(&bench.session, 0)
        .await
        .unwrap()
        .last()
        .map_or(0, |m| m.id);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut subscription = Subscription::open(&bench.hub, &store, &bench.session, after)
            .await
            .unwrap()
            .unwrap();
        let base = bench.base;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while let Some(event) = subscription.next().await {
                let _ = std::hint::black_box(sse_event(&event));
                if let SessionEvent::Message { body, .. } = &event
                    && let Ok(stamp) = body.parse::<u64>()
                {
                    let now = base.elapsed().as_nanos() as u64;
                    seen.latencies_ns.push(now.saturating_sub(stamp));
                    received.add_permits(1);
                }
            }
            seen.resyncs = subscription.resyncs();
            seen
        }));
    }
    tasks
}

/// `n` bare hub receivers (no snapshot, de-duplication or SSE encoding): the hub's own cost.
fn subscribe_raw(bench: &Bench, n: usize) -> Vec<JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let (_, mut receiver) = bench.hub.subscribe(&bench.session);
            let base = bench.base;
            tokio::spawn(async move {
                let mut seen = Seen::default();
                loop {
                    match receiver.recv().await {
                        Ok(SessionEvent::Message { body, .. }) => {
                            if let Ok(stamp) = body.parse::<u64>() {
                                let now = base.elapsed().as_nanos() as u64;
                                seen.latencies_ns.push(now.saturating_sub(stamp));
                            }
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
async fn finish(hub: &EventHub, tasks: Vec<JoinHandle<Seen>>) -> (Vec<u64>, u64) {
    hub.close_streams();
    let mut all = Vec::new();
    let mut resyncs = 0;
    for task in tasks {
        let seen = task.await.unwrap();
        all.extend(seen.latencies_ns);
        resyncs += seen.resyncs;
    }
    (all, resyncs)
}

fn report(label: &str, mut latencies: Vec<u64>, resyncs: u64) {
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |ns| *ns as f64 / 1000.0)
    };
    println!(
        "fanout latency {label}: samples={} p50={:.1}us p99={:.1}us max={:.1}us lag_resyncs={resyncs}",
        latencies.len(),
        pick(0.50),
        pick(0.99),
        latencies.last().map_or(f64::NAN, |ns| *ns as f64 / 1000.0),
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("ingest_with_subscribers");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for (subscribers, raw) in [(0, false), (SUBSCRIBERS, true), (SUBSCRIBERS, false)] {
        let bench = rt.block_on(Bench::new());
        let received = Arc::new(Semaphore::new(0));
        let tasks = if raw {
            let _guard = rt.enter();
            subscribe_raw(&bench, subscribers)
        } else {
            rt.block_on(subscribe(&bench, subscribers, received))
        };
        let kind = if raw {
            "hub_receivers"
        } else {
            "sse_subscribers"
        };
        let mut i = 0u64;
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{subscribers}_{kind}")),
            &subscribers,
            |b, _| {
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
            },
        );
        let (latencies, resyncs) = rt.block_on(finish(&bench.hub, tasks));
        if subscribers > 0 {
            report(
                &format!("while ingesting at full rate ({subscribers} {kind})"),
                latencies,
                resyncs,
            );
        }
    }
    group.finish();
}

/// One event at a time; the next once every subscriber has the previous one.
fn paced_latency() {
    let rt = runtime();
    rt.block_on(async {
        let bench = Bench::new().await;
        let received = Arc::new(Semaphore::new(0));
        let tasks = subscribe(&bench, SUBSCRIBERS, received.clone()).await;
        let started = Instant::now();
        for i in 0..PACED_EVENTS as u64 {
            bench.ingest_one(i).await;
            received
                .acquire_many(SUBSCRIBERS as u32)
                .await
                .unwrap()
                .forget();
        }
        let elapsed = started.elapsed();
        let (latencies, resyncs) = finish(&bench.hub, tasks).await;
        report(
            &format!("paced ({SUBSCRIBERS} subscribers, {PACED_EVENTS} events, {elapsed:.2?})"),
            latencies,
            resyncs,
        );
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    ingest(&mut c);
    paced_latency();
    c.final_summary();
}
