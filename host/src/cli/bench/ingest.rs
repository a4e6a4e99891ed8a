//! `switchboard bench ingest`: the ingest benchmark of issue 4, from webhook in to durable to
//! the response, over loopback.
//!
//! The host is started in this process on a fresh database. That is a temp SQLite file, or a new
//! `sbbench_<random>` PostgreSQL database, which is dropped afterwards. The host listens on
//! 127.0.0.1:0 with `--installations` Lark installations. Its Tokio runtime is separate from the
//! client's: the client is a current-thread executor on the bench thread. Deliveries are
//! generated before the clock starts. They are p2p text events spread pseudo-randomly over
//! `--sessions` chats (distinct chat ids, each chat on one installation), with unique message
//! ids. The bench then runs:
//!
//! 1. warm-up: one message per session, which creates every session (not timed);
//! 2. `sustained`: `--concurrency` keep-alive clients posting back to back for `--duration-s`,
//!    with latency measured from request start to the full response;
//! 3. `rate`: an open loop at `--rate` msg/s. Sends are on a fixed timeline, and latency is
//!    measured from the scheduled send time, so queueing shows up in the figures.
//!
//! Before each timed phase the bench waits for the debounce windows armed so far to flush
//! ([`SETTLE`]). Windows (3 s) still flush during a phase, as they would in production, whenever
//! a chat stays silent that long; a tracing layer on the host's threads counts the flushes. After
//! each phase the stored messages are counted and compared with the accepted deliveries (HTTP
//! 200): every acknowledged message must be durable. One JSON line per phase goes to stdout, and
//! a table and a CPU breakdown (per thread group, context switches) to stderr.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use clap::{Args, ValueEnum};
use rand::Rng as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sqlx::Connection as _;
use switchboard_lark::webhook as lark_webhook;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

use super::{Json, aes_encrypt, build_profile};
use crate::app::App;
use crate::cli::{DEFAULT_LOG, GlobalArgs, LogFormat};
use crate::store::{DEFAULT_DEBOUNCE_MS, NewInstallation, SecretCipher};

/// The host's log filter during the bench unless `--log` is given. The bench installations have
/// no Lark credentials, so every agent reply the debounced runs produce fails to deliver (and
/// typing indicators fail): those expected warnings would flood stderr and cost CPU.
const QUIET_LOG: &str = "warn,switchboard::runs=error,switchboard::delivery=error,plugin=error";
/// Most requests in flight in the open-loop phase. A late request waits for a slot, and that
/// wait counts in its latency.
const MAX_IN_FLIGHT: usize = 1024;
/// Error descriptions kept per phase.
const ERROR_SAMPLES: usize = 5;
/// Pause before each timed phase: the debounce window plus a margin.
const SETTLE: Duration = Duration::from_millis(DEFAULT_DEBOUNCE_MS as u64 + 1_000);
/// Default size of the sustained phase's pool, per second of `--duration-s`.
const POOL_PER_SECOND: usize = 20_000;

/// `switchboard bench ingest`
#[derive(Debug, Args)]
pub(super) struct IngestArgs {
    /// `sqlite` (a fresh file in a temp dir, deleted afterwards), `sqlite://PATH` (a new file,
    /// kept) or `postgres://…` (a fresh `sbbench_<random>` database is created on that server
    /// and dropped afterwards).
    #[arg(long, value_name = "URL", default_value = "sqlite")]
    database: String,
    /// Lark installations (distinct app ids).
    #[arg(long, default_value_t = 20)]
    installations: usize,
    /// Chats (sessions), spread over the installations.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Client connections in the sustained phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Length of each timed phase, in seconds.
    #[arg(long = "duration-s", value_name = "SECONDS", default_value_t = 10.0)]
    duration_s: f64,
    /// Target rate of the open-loop phase, in messages per second.
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 1000.0)]
    rate: f64,
    /// Plain events to `/hooks/lark`, or encrypted and signed ones to
    /// `/hooks/lark/{installation}`.
    #[arg(long, value_enum, default_value_t = WebhookMode::Encrypted)]
    webhook: WebhookMode,
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sustained,rate"
    )]
    phases: Vec<Phase>,
    /// Deliveries generated for the sustained phase; it ends early if they run out (default:
    /// 20,000 per second of --duration-s).
    #[arg(long, value_name = "N")]
    max_messages: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WebhookMode {
    Plain,
    Encrypted,
}

impl WebhookMode {
    fn name(self) -> &'static str {
        match self {
            WebhookMode::Plain => "plain",
            WebhookMode::Encrypted => "encrypted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Closed loop, as fast as the host answers.
    Sustained,
    /// Open loop at `--rate`.
    Rate,
}

// ------------------------------------------------------------------ entry point

/// Runs the ingest benchmark on the calling (non-runtime) thread.
pub(super) fn ingest_command(global: &GlobalArgs, args: IngestArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; measure with `cargo build --release`");
    }
    let counter = Arc::new(FlushCounter::default());
    let dispatch = host_dispatch(global, counter.clone())?;
    // The bench thread logs through the same quiet subscriber (App::build runs on it).
    let _quiet = tracing::dispatcher::set_default(&dispatch);
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(HOST_THREAD)
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            THREAD_DISPATCH.with(|slot| *slot.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| THREAD_DISPATCH.with(|slot| drop(slot.borrow_mut().take())))
        .build()
        .context("starting the host runtime")?;
    let target = server.block_on(BenchDatabase::create(&args.database))?;
    let result = run(global, &args, &server, &target, &counter);
    let cleanup = server.block_on(target.remove());
    match (result, cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => {
            eprintln!("error: cleaning up the bench database: {cleanup:#}");
            Err(e)
        }
    }
}

fn check_args(args: &IngestArgs) -> anyhow::Result<()> {
    if args.installations == 0 || args.sessions == 0 || args.concurrency == 0 {
        bail!("--installations, --sessions and --concurrency must be at least 1");
    }
    if args.sessions < args.installations {
        bail!("--sessions must be at least --installations (each installation has a chat)");
    }
    if !(args.duration_s > 0.0 && args.duration_s.is_finite()) {
        bail!("--duration-s must be positive");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be positive");
    }
    if args.phases.is_empty() {
        bail!("--phases: name at least one of sustained, rate");
    }
    Ok(())
}

thread_local! {
    /// The host runtime's threads log through the bench's subscriber while they live.
    static THREAD_DISPATCH: RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { RefCell::new(None) };
}

/// The host's subscriber: `--log` (or [`QUIET_LOG`] when it is the default) to stderr, plus
/// the flush counter.
fn host_dispatch(
    global: &GlobalArgs,
    counter: Arc<FlushCounter>,
) -> anyhow::Result<tracing::Dispatch> {
    let text = if global.log == DEFAULT_LOG {
        QUIET_LOG
    } else {
        global.log.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(text)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {text:?}: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match global.log_format {
        LogFormat::Human => fmt.compact().with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    // Events only: a `switchboard::batch` span kept by this dispatcher (the debounce sweep's,
    // parent of every flush it starts) can be closed on an sqlx worker thread, whose dispatcher
    // is the CLI's global one, which never saw it and panics.
    let flushes = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_event()
            && *meta.level() <= tracing::Level::DEBUG
            && meta.target().starts_with("switchboard::batch")
    });
    let subscriber = tracing_subscriber::registry()
        .with(fmt)
        .with(FlushLayer(counter).with_filter(flushes));
    Ok(tracing::Dispatch::new(subscriber))
}

// ------------------------------------------------------------------ flush counting

/// Counts the debouncer's flushes from its log events (`switchboard::batch`).
#[derive(Debug, Default)]
struct FlushCounter {
    /// Windows claimed with messages and handed to the plugin successfully.
    flushes: AtomicU64,
    /// Messages in those windows.
    messages: AtomicU64,
    /// Windows whose flush handler failed.
    failed: AtomicU64,
}

impl FlushCounter {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.flushes.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The layer feeding a [`FlushCounter`].
struct FlushLayer(Arc<FlushCounter>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FlushLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = FlushFields::default();
        event.record(&mut fields);
        if fields.message == "debounce window flushed" {
            self.0.flushes.fetch_add(1, Ordering::Relaxed);
            self.0
                .messages
                .fetch_add(fields.messages, Ordering::Relaxed);
        } else if fields.message.starts_with("flush handler failed") {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct FlushFields {
    message: String,
    messages: u64,
}

impl tracing::field::Visit for FlushFields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "messages" {
            self.messages = value;
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

// ------------------------------------------------------------------ the database

/// What to do with the bench database afterwards.
enum Cleanup {
    /// Delete the temp dir holding the SQLite file.
    TempDir(PathBuf),
    /// `DROP DATABASE name` through the server's admin URL.
    DropDatabase { admin_url: String, name: String },
    /// Leave it (a SQLite path the caller chose).
    Keep(PathBuf),
}

/// A fresh database for one run.
struct BenchDatabase {
    url: String,
    backend: &'static str,
    cleanup: Cleanup,
}

impl BenchDatabase {
    async fn create(given: &str) -> anyhow::Result<BenchDatabase> {
        let suffix = format!("{:012x}", rand::thread_rng().r#gen::<u64>() >> 16);
        if given == "sqlite" || given == "sqlite:" {
            let dir = std::env::temp_dir().join(format!("switchboard-bench-{suffix}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            return Ok(BenchDatabase {
                url: format!("sqlite://{}", dir.join("bench.db").display()),
                backend: "sqlite",
                cleanup: Cleanup::TempDir(dir),
            });
        }
        if given.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(given)
                .with_context(|| format!("--database {given}"))?;
            let path = options.get_filename().to_path_buf();
            if path.exists() || given.contains(":memory:") || given.contains("mode=memory") {
                bail!(
                    "--database {given}: the bench needs a new SQLite file (pass a path that does not exist, or `sqlite` for a temp file)"
                );
            }
            return Ok(BenchDatabase {
                url: given.to_owned(),
                backend: "sqlite",
                cleanup: Cleanup::Keep(path),
            });
        }
        if given.starts_with("postgres://") || given.starts_with("postgresql://") {
            let name = format!("sbbench_{suffix}");
            let mut admin = sqlx::PgConnection::connect(given).await.with_context(|| {
                format!(
                    "connecting to {} to create the bench database",
                    crate::store::redact_url(given)
                )
            })?;
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .with_context(|| format!("creating database {name}"))?;
            admin.close().await.ok();
            let mut url = url::Url::parse(given).with_context(|| format!("--database {given}"))?;
            url.set_path(&format!("/{name}"));
            return Ok(BenchDatabase {
                url: url.to_string(),
                backend: "postgres",
                cleanup: Cleanup::DropDatabase {
                    admin_url: given.to_owned(),
                    name,
                },
            });
        }
        bail!("--database {given}: expected `sqlite`, sqlite://PATH or postgres://…")
    }

    fn describe(&self) -> String {
        match &self.cleanup {
            Cleanup::TempDir(dir) => format!("sqlite {} (temp, deleted afterwards)", dir.display()),
            Cleanup::Keep(path) => format!("sqlite {} (kept)", path.display()),
            Cleanup::DropDatabase { name, .. } => format!(
                "postgres {} (database {name}, dropped afterwards)",
                crate::store::redact_url(&self.url)
            ),
        }
    }

    async fn remove(&self) -> anyhow::Result<()> {
        match &self.cleanup {
            Cleanup::TempDir(dir) => {
                std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
            }
            Cleanup::Keep(path) => {
                eprintln!("# the bench database is kept at {}", path.display());
                Ok(())
            }
            Cleanup::DropDatabase { admin_url, name } => {
                let mut admin = sqlx::PgConnection::connect(admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("dropping database {name}"))?;
                admin.close().await.ok();
                Ok(())
            }
        }
    }
}

/// A connection of the bench's own, for counting rows.
enum Counts {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Counts {
    async fn connect(url: &str) -> anyhow::Result<Counts> {
        Ok(if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
            Counts::Sqlite(
                sqlx::pool::PoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await?,
            )
        } else {
            Counts::Postgres(
                sqlx::pool::PoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await?,
            )
        })
    }

    /// Channel messages that are durable: user turns in the history plus turns waiting in a
    /// session's queue (a turn that arrives while the session's run is active is queued, and
    /// promoted into the history when the run ends). Counted by distinct channel message id in
    /// one statement, so a promotion in between cannot count a turn twice or not at all.
    /// Agent replies (assistant rows) are not channel deliveries and are not counted.
    async fn durable_messages(&self) -> anyhow::Result<u64> {
        self.scalar(
            "SELECT COUNT(*) FROM (
                 SELECT channel_message_id FROM messages
                 WHERE role = 'user' AND channel_message_id IS NOT NULL
                 UNION
                 SELECT channel_message_id FROM queued_messages
                 WHERE channel_message_id IS NOT NULL
             ) AS durable",
        )
        .await
    }

    /// `SELECT COUNT(*) FROM table`.
    async fn rows(&self, table: &str) -> anyhow::Result<u64> {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    async fn scalar(&self, sql: &str) -> anyhow::Result<u64> {
        let n: i64 = match self {
            Counts::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Counts::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(n.max(0) as u64)
    }

    async fn close(&self) {
        match self {
            Counts::Sqlite(pool) => pool.close().await,
            Counts::Postgres(pool) => pool.close().await,
        }
    }
}

// ------------------------------------------------------------------ deliveries

/// One installation as the client knows it.
struct BenchInstallation {
    app_id: String,
    encrypt_key: String,
    verification_token: String,
    url: reqwest::Url,
}

/// One prepared webhook request.
struct Delivery {
    url: usize,
    headers: HeaderMap,
    body: Bytes,
}

/// What the client posts to.
struct Deliveries {
    urls: Vec<reqwest::Url>,
    items: Vec<Delivery>,
}

/// SplitMix64: a cheap, well-mixed hash that spreads message indexes over sessions.
fn spread(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The p2p text event of message `index` in chat `session` of `installation`.
fn text_event(installation: &BenchInstallation, session: usize, index: u64, now_ms: i64) -> String {
    let app_id = &installation.app_id;
    let token = &installation.verification_token;
    let time = now_ms + index as i64;
    format!(
        concat!(
            r#"{{"schema":"2.0","header":{{"event_id":"ev_bench_{index:016x}","token":"{token}","#,
            r#""create_time":"{time}","event_type":"im.message.receive_v1","#,
            r#""tenant_key":"bench_tenant","app_id":"{app_id}"}},"event":{{"sender":{{"#,
            r#""sender_id":{{"union_id":"on_bench_{session:08}","user_id":"u{session:08}","#,
            r#""open_id":"ou_bench_{session:08}"}},"sender_type":"user","tenant_key":"bench_tenant"}},"#,
            r#""message":{{"message_id":"om_bench_{index:016x}","create_time":"{time}","#,
            r#""update_time":"{time}","chat_id":"oc_bench_{session:08}","chat_type":"p2p","#,
            r#""message_type":"text","content":"{{\"text\":\"bench message {index} in chat {session}\"}}"}}}}}}"#
        ),
        index = index,
        token = token,
        time = time,
        app_id = app_id,
        session = session,
    )
}

/// Builds the deliveries of messages `range`. Warm-up message `i` goes to session
/// `i % sessions`, later ones to a pseudo-random session. URL indexes are those of
/// [`delivery_urls`].
fn build_deliveries(
    installations: &[BenchInstallation],
    sessions: usize,
    mode: WebhookMode,
    range: std::ops::Range<u64>,
    warm_up: bool,
) -> anyhow::Result<Vec<Delivery>> {
    let now_ms = crate::domain::Clock::now_ms(&crate::domain::SystemClock);
    let json = HeaderValue::from_static("application/json; charset=utf-8");
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for index in range {
        let session = if warm_up {
            index as usize % sessions
        } else {
            (spread(index) % sessions as u64) as usize
        };
        let which = session % installations.len();
        let installation = &installations[which];
        let event = text_event(installation, session, index, now_ms);
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(reqwest::header::CONTENT_TYPE, json.clone());
        let (url, body) = match mode {
            WebhookMode::Plain => (installations.len(), event.into_bytes()),
            WebhookMode::Encrypted => {
                let key = &installation.encrypt_key;
                let envelope = format!(
                    r#"{{"encrypt":"{}"}}"#,
                    aes_encrypt(key, event.as_bytes(), index as usize)
                );
                let timestamp = (now_ms / 1000).to_string();
                let nonce = format!("{:016x}", spread(!index));
                let signature =
                    lark_webhook::signature_hex(&timestamp, &nonce, key, envelope.as_bytes());
                for (name, value) in [
                    ("x-lark-request-timestamp", timestamp),
                    ("x-lark-request-nonce", nonce),
                    ("x-lark-signature", signature),
                ] {
                    headers.insert(HeaderName::from_static(name), HeaderValue::try_from(value)?);
                }
                (which, envelope.into_bytes())
            }
        };
        out.push(Delivery {
            url,
            headers,
            body: Bytes::from(body),
        });
    }
    Ok(out)
}

/// Each installation's `/hooks/lark/{id}`, then the shared `/hooks/lark`.
fn delivery_urls(
    installations: &[BenchInstallation],
    base: &str,
) -> anyhow::Result<Vec<reqwest::Url>> {
    let mut urls: Vec<reqwest::Url> = installations.iter().map(|i| i.url.clone()).collect();
    urls.push(reqwest::Url::parse(&format!("{base}/hooks/lark"))?);
    Ok(urls)
}

// ------------------------------------------------------------------ the client

/// Outcome of one request: latency and error description.
type Sample = (Duration, Result<(), String>);

async fn post(client: &reqwest::Client, deliveries: &Deliveries, i: usize) -> Result<(), String> {
    let delivery = &deliveries.items[i];
    let response = client
        .post(deliveries.urls[delivery.url].clone())
        .headers(delivery.headers.clone())
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?;
    if status == reqwest::StatusCode::OK {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        Err(format!("HTTP {status}: {text}"))
    }
}

/// What a phase's client loop observed.
struct LoopResult {
    /// Latencies of accepted (200) requests, in µs, sorted.
    latencies_us: Vec<u64>,
    errors: u64,
    error_samples: Vec<String>,
    /// From the first (scheduled) send to the last response.
    elapsed: Duration,
    /// The pool ran out before the deadline.
    exhausted: bool,
}

impl LoopResult {
    fn new(samples: Vec<Sample>, elapsed: Duration, exhausted: bool) -> LoopResult {
        let mut latencies_us = Vec::with_capacity(samples.len());
        let mut errors = 0;
        let mut error_samples = Vec::new();
        for (latency, result) in samples {
            match result {
                Ok(()) => latencies_us.push(latency.as_micros() as u64),
                Err(e) => {
                    errors += 1;
                    if error_samples.len() < ERROR_SAMPLES {
                        error_samples.push(e);
                    }
                }
            }
        }
        latencies_us.sort_unstable();
        LoopResult {
            latencies_us,
            errors,
            error_samples,
            elapsed,
            exhausted,
        }
    }

    fn accepted(&self) -> u64 {
        self.latencies_us.len() as u64
    }
}

/// `concurrency` clients posting deliveries `range` back to back until `deadline` (or the end
/// of the range).
async fn closed_loop(
    client: &reqwest::Client,
    deliveries: &Arc<Deliveries>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    deadline: Option<Instant>,
) -> LoopResult {
    let next = Arc::new(AtomicUsize::new(range.start));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, deliveries, next, end) =
            (client.clone(), deliveries.clone(), next.clone(), range.end);
        set.spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            let mut exhausted = false;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    exhausted = deadline.is_some();
                    break;
                }
                let sent = Instant::now();
                let result = post(&client, &deliveries, i).await;
                samples.push((sent.elapsed(), result));
            }
            (samples, exhausted)
        });
    }
    let mut samples = Vec::new();
    let mut exhausted = false;
    while let Some(joined) = set.join_next().await {
        let (mut part, ran_out) = joined.expect("a client task panicked");
        samples.append(&mut part);
        exhausted |= ran_out;
    }
    LoopResult::new(samples, start.elapsed(), exhausted)
}

/// Sends deliveries `range` on a fixed timeline at `rate` per second; latency counts from each
/// request's scheduled time.
async fn open_loop(
    client: &reqwest::Client,
    deliveries: &Arc<Deliveries>,
    range: std::ops::Range<usize>,
    rate: f64,
) -> LoopResult {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut set = tokio::task::JoinSet::new();
    let mut samples = Vec::with_capacity(range.len());
    let start = Instant::now() + Duration::from_millis(5);
    let mut last = start;
    let mut collect = |(sample, done): (Sample, Instant)| {
        last = last.max(done);
        samples.push(sample);
    };
    for (k, i) in range.enumerate() {
        let scheduled = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (client, deliveries) = (client.clone(), deliveries.clone());
        set.spawn(async move {
            let result = post(&client, &deliveries, i).await;
            drop(slot);
            let done = Instant::now();
            ((done - scheduled, result), done)
        });
        // Collect finished requests as we go, so the set stays small.
        while let Some(joined) = set.try_join_next() {
            collect(joined.expect("a request task panicked"));
        }
    }
    while let Some(joined) = set.join_next().await {
        collect(joined.expect("a request task panicked"));
    }
    LoopResult::new(samples, last.saturating_duration_since(start), false)
}

// ------------------------------------------------------------------ CPU accounting

/// CPU time consumers, by thread or process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CpuGroup {
    /// The host's Tokio runtime (HTTP, wasm plugin calls, dispatcher, debouncer).
    Host,
    /// SQLite connection threads (statement execution, WAL writes).
    Sqlite,
    /// PostgreSQL server processes on this machine.
    Postgres,
    /// The load generator (the bench thread).
    Client,
    /// Everything else in this process.
    Other,
}

impl CpuGroup {
    const ALL: [CpuGroup; 5] = [
        CpuGroup::Host,
        CpuGroup::Sqlite,
        CpuGroup::Postgres,
        CpuGroup::Client,
        CpuGroup::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            CpuGroup::Host => "host",
            CpuGroup::Sqlite => "sqlite",
            CpuGroup::Postgres => "postgres",
            CpuGroup::Client => "client",
            CpuGroup::Other => "other",
        }
    }

    /// The group of a thread of this process, by name (`comm`, at most 15 bytes).
    fn of_thread(comm: &str) -> CpuGroup {
        if comm.starts_with(HOST_THREAD) {
            CpuGroup::Host
        } else if comm.starts_with("sqlx-sqlite") {
            CpuGroup::Sqlite
        } else if comm == super::BENCH_THREAD {
            CpuGroup::Client
        } else {
            CpuGroup::Other
        }
    }
}

/// Name of the host runtime's threads.
const HOST_THREAD: &str = "bench-host";

/// Cumulative CPU time (clock ticks) per group and per SQLite connection thread, and the
/// machine's busy and total ticks.
#[derive(Debug, Clone)]
struct CpuSnapshot {
    at: Instant,
    ticks: [u64; 5],
    sqlite_threads: std::collections::HashMap<String, u64>,
    /// Context switches (voluntary and not) of this process's threads.
    switches: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// `(comm, utime + stime)` of a `/proc/…/stat` line.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let mut fields = stat[close + 1..].split_whitespace();
    // After the comm: state(3) … utime(14) stime(15), numbered from 1 with pid and comm.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Voluntary plus involuntary context switches in a `/proc/…/status` text.
fn context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(
                key,
                "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches"
            )
            .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

fn cpu_snapshot(postgres: bool) -> CpuSnapshot {
    let mut snapshot = CpuSnapshot {
        at: Instant::now(),
        ticks: [0; 5],
        sqlite_threads: Default::default(),
        switches: 0,
        machine_busy: 0,
        machine_total: 0,
    };
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((comm, ticks)) = parse_stat(&stat) {
                let group = CpuGroup::of_thread(comm);
                snapshot.ticks[group as usize] += ticks;
                if group == CpuGroup::Sqlite {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    snapshot.sqlite_threads.insert(tid, ticks);
                }
            }
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                snapshot.switches += context_switches(&status);
            }
        }
    }
    if postgres && let Ok(processes) = std::fs::read_dir("/proc") {
        for process in processes.flatten() {
            let Ok(stat) = std::fs::read_to_string(process.path().join("stat")) else {
                continue;
            };
            if let Some(("postgres", ticks)) = parse_stat(&stat) {
                snapshot.ticks[CpuGroup::Postgres as usize] += ticks;
            }
        }
    }
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    {
        // cpu user nice system idle iowait irq softirq steal …
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        snapshot.machine_total = values.iter().take(8).sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        snapshot.machine_busy = snapshot.machine_total.saturating_sub(idle);
    }
    snapshot
}

/// CPU spent between two snapshots.
#[derive(Debug, Clone, Default)]
struct CpuUse {
    /// Seconds per group.
    seconds: [f64; 5],
    /// Share of the machine's CPU time that was busy (any process), 0–100.
    machine_busy_pct: f64,
    /// Share of the machine's CPU time used by other processes (not this one, not PostgreSQL),
    /// 0–100: a run where it is high was disturbed.
    foreign_pct: f64,
    /// Context switches of this process's threads.
    switches: u64,
    /// CPU time of the busiest SQLite connection thread (the single writer, under write load)
    /// as a share of the wall time, 0–100.
    busiest_sqlite_pct: f64,
}

impl CpuUse {
    fn between(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut seconds = [0.0; 5];
        for (i, s) in seconds.iter_mut().enumerate() {
            *s = after.ticks[i].saturating_sub(before.ticks[i]) as f64 / hz;
        }
        let total = after.machine_total.saturating_sub(before.machine_total) as f64;
        let busy = after.machine_busy.saturating_sub(before.machine_busy) as f64;
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        let busiest = after
            .sqlite_threads
            .iter()
            .map(|(tid, ticks)| {
                ticks.saturating_sub(before.sqlite_threads.get(tid).copied().unwrap_or(0))
            })
            .max()
            .unwrap_or(0) as f64;
        let own: u64 = (0..5)
            .map(|i| after.ticks[i].saturating_sub(before.ticks[i]))
            .sum();
        CpuUse {
            seconds,
            switches: after.switches.saturating_sub(before.switches),
            machine_busy_pct: if total > 0.0 {
                100.0 * busy / total
            } else {
                0.0
            },
            foreign_pct: if total > 0.0 {
                (100.0 * (busy - own as f64) / total).max(0.0)
            } else {
                0.0
            },
            busiest_sqlite_pct: if wall > 0.0 {
                100.0 * busiest / hz / wall
            } else {
                0.0
            },
        }
    }

    /// CPU µs per message of `group`.
    fn per_message_us(&self, group: CpuGroup, messages: u64) -> f64 {
        self.seconds[group as usize] * 1e6 / messages.max(1) as f64
    }

    fn describe(&self, messages: u64) -> String {
        let parts: Vec<String> = CpuGroup::ALL
            .iter()
            .filter(|g| self.seconds[**g as usize] > 0.0)
            .map(|g| format!("{} {:.0}", g.name(), self.per_message_us(*g, messages)))
            .collect();
        let writer = if self.busiest_sqlite_pct > 0.0 {
            format!(
                "; busiest SQLite connection thread {:.0}% of wall time",
                self.busiest_sqlite_pct
            )
        } else {
            String::new()
        };
        format!(
            "CPU µs/msg: {}; {:.0} context switches/msg; machine {:.0}% busy ({:.0}% by other processes){writer}",
            parts.join(", "),
            self.switches as f64 / messages.max(1) as f64,
            self.machine_busy_pct,
            self.foreign_pct
        )
    }
}

// ------------------------------------------------------------------ statistics and report

/// The `p`-th percentile (0–100] of sorted `values`, nearest-rank: the smallest value with at
/// least `p`% of the values at or below it. `None` when empty.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Milliseconds, from µs.
fn ms(us: Option<u64>) -> f64 {
    us.map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// One phase's figures.
struct PhaseReport {
    phase: &'static str,
    /// `c=32` or `r=1000`.
    load: String,
    result: LoopResult,
    /// Messages stored during the phase.
    stored: u64,
    /// Debounce flushes during the phase.
    flushes: u64,
    /// CPU used during the phase.
    cpu: CpuUse,
}

impl PhaseReport {
    fn msg_per_s(&self) -> f64 {
        self.result.accepted() as f64 / self.result.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, p: f64) -> f64 {
        ms(percentile(&self.result.latencies_us, p))
    }

    fn table_header() -> String {
        format!(
            "{:<8} {:<9} {:<9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7}",
            "backend",
            "webhook",
            "phase",
            "load",
            "msgs",
            "msg/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "stored",
            "flushes"
        )
    }

    fn table_row(&self, backend: &str, webhook: &str) -> String {
        format!(
            "{:<8} {:<9} {:<9} {:>7} {:>8} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>8} {:>7}",
            backend,
            webhook,
            self.phase,
            self.load,
            self.result.accepted(),
            self.msg_per_s(),
            self.quantile(50.0),
            self.quantile(90.0),
            self.quantile(99.0),
            self.quantile(100.0),
            self.result.errors,
            self.stored,
            self.flushes,
        )
    }

    fn json(&self, args: &IngestArgs, backend: &str) -> Json {
        let mut fields = vec![
            ("backend".into(), Json::str(backend)),
            ("webhook".into(), Json::str(args.webhook.name())),
            ("phase".into(), Json::str(self.phase)),
            ("msgs".into(), Json::uint(self.result.accepted())),
            ("msg_per_s".into(), Json::float(self.msg_per_s(), 1)),
            ("p50_ms".into(), Json::float(self.quantile(50.0), 3)),
            ("p90_ms".into(), Json::float(self.quantile(90.0), 3)),
            ("p99_ms".into(), Json::float(self.quantile(99.0), 3)),
            ("max_ms".into(), Json::float(self.quantile(100.0), 3)),
            ("errors".into(), Json::uint(self.result.errors)),
            ("stored".into(), Json::uint(self.stored)),
            ("flushes".into(), Json::uint(self.flushes)),
            (
                "seconds".into(),
                Json::float(self.result.elapsed.as_secs_f64(), 3),
            ),
        ];
        let accepted = self.result.accepted();
        for group in CpuGroup::ALL {
            if self.cpu.seconds[group as usize] > 0.0 && group != CpuGroup::Other {
                fields.push((
                    format!("cpu_us_per_msg_{}", group.name()),
                    Json::float(self.cpu.per_message_us(group, accepted), 1),
                ));
            }
        }
        fields.push((
            "switches_per_msg".into(),
            Json::float(self.cpu.switches as f64 / accepted.max(1) as f64, 1),
        ));
        fields.push((
            "machine_busy_pct".into(),
            Json::float(self.cpu.machine_busy_pct, 1),
        ));
        fields.push((
            "foreign_cpu_pct".into(),
            Json::float(self.cpu.foreign_pct, 1),
        ));
        if self.cpu.busiest_sqlite_pct > 0.0 {
            fields.push((
                "busiest_sqlite_thread_pct".into(),
                Json::float(self.cpu.busiest_sqlite_pct, 1),
            ));
        }
        match self.phase {
            "sustained" => fields.push(("concurrency".into(), Json::uint(args.concurrency as u64))),
            _ => fields.push(("target_rate".into(), Json::float(args.rate, 1))),
        }
        fields.extend([
            (
                "installations".into(),
                Json::uint(args.installations as u64),
            ),
            ("sessions".into(), Json::uint(args.sessions as u64)),
            ("build".into(), Json::str(build_profile())),
        ]);
        Json::Object(fields)
    }
}

// ------------------------------------------------------------------ the run

/// The host, started.
struct Host {
    base: String,
    installations: Vec<BenchInstallation>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counts: Counts,
}

async fn start_host(
    global: &GlobalArgs,
    args: &IngestArgs,
    database_url: &str,
) -> anyhow::Result<Host> {
    // The operator's configuration (plugins, limits), on the benchmark's own database and key.
    let mut config = global.config()?;
    config.database.url = database_url.to_owned();
    config.secrets.key = Some(SecretCipher::generate_key_hex());
    let app = App::from_config(&config)
        .await
        .context("building the host")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let now_ms = crate::domain::Clock::now_ms(&crate::domain::SystemClock);
    let mut installations = Vec::with_capacity(args.installations);
    for i in 0..args.installations {
        let app_id = format!("cli_bench{i:08x}");
        let encrypt_key = format!("bench-encrypt-key-{i:04}-0123456789");
        let verification_token = format!("bench-verification-token-{i:04}");
        let mut new = NewInstallation {
            channel: "lark".into(),
            routing_key: app_id.clone(),
            name: format!("bench bot {i}"),
            config: BTreeMap::from([
                ("app_id".to_string(), app_id.clone()),
                ("bot_open_id".to_string(), format!("ou_bench_bot_{i:04}")),
            ]),
            ..NewInstallation::default()
        };
        if args.webhook == WebhookMode::Encrypted {
            new.secrets
                .insert("encrypt_key".into(), encrypt_key.clone());
            new.secrets
                .insert("verification_token".into(), verification_token.clone());
        }
        let created = app
            .state
            .installations
            .create(&new, now_ms)
            .await
            .context("creating a bench installation")?;
        installations.push(BenchInstallation {
            app_id,
            encrypt_key,
            verification_token,
            url: reqwest::Url::parse(&format!("{base}/hooks/lark/{}", created.id))?,
        });
    }
    let counts = Counts::connect(database_url)
        .await
        .context("opening the bench's counting connection")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    Ok(Host {
        base,
        installations,
        stop,
        task,
        counts,
    })
}

fn run(
    global: &GlobalArgs,
    args: &IngestArgs,
    server: &tokio::runtime::Runtime,
    target: &BenchDatabase,
    counter: &FlushCounter,
) -> anyhow::Result<()> {
    let backend = target.backend;
    let postgres = backend == "postgres";
    let webhook = args.webhook.name();
    eprintln!(
        "# switchboard bench ingest: {} build, nproc={} loadavg={}",
        build_profile(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    );
    eprintln!(
        "# database {}; {} installations, {} sessions, webhook {webhook}, {} s per phase",
        target.describe(),
        args.installations,
        args.sessions,
        args.duration_s
    );
    let host = server.block_on(start_host(global, args, &target.url))?;

    // Deliveries: warm-up (one per session), then the phases' pools, all distinct messages.
    let generating = Instant::now();
    let duration = Duration::from_secs_f64(args.duration_s);
    let sustained_n = if args.phases.contains(&Phase::Sustained) {
        args.max_messages
            .unwrap_or((POOL_PER_SECOND as f64 * args.duration_s).ceil() as usize)
    } else {
        0
    };
    let rate_n = if args.phases.contains(&Phase::Rate) {
        (args.rate * args.duration_s).round().max(1.0) as usize
    } else {
        0
    };
    let warm_n = args.sessions;
    let mut items = build_deliveries(
        &host.installations,
        args.sessions,
        args.webhook,
        0..warm_n as u64,
        true,
    )?;
    items.extend(build_deliveries(
        &host.installations,
        args.sessions,
        args.webhook,
        warm_n as u64..(warm_n + sustained_n + rate_n) as u64,
        false,
    )?);
    let deliveries = Arc::new(Deliveries {
        urls: delivery_urls(&host.installations, &host.base)?,
        items,
    });
    eprintln!(
        "# generated {} deliveries in {:.1} s",
        deliveries.items.len(),
        generating.elapsed().as_secs_f64()
    );

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let stored_now = || server.block_on(host.counts.durable_messages());

    // Warm-up: creates every session, opens the connections, fills the plugin's instance pool.
    let warm = client_rt.block_on(closed_loop(
        &client,
        &deliveries,
        0..warm_n,
        args.concurrency,
        None,
    ));
    if warm.errors > 0 {
        bail!(
            "warm-up: {} of {warm_n} deliveries failed, e.g. {}",
            warm.errors,
            warm.error_samples.join("; ")
        );
    }
    let mut stored_before = stored_now()?;
    let mut accepted_total = warm.accepted();
    if stored_before != accepted_total {
        bail!("warm-up: {accepted_total} deliveries accepted but {stored_before} messages stored");
    }
    eprintln!(
        "# warm-up: {warm_n} messages (one per session) in {:.1} s",
        warm.elapsed.as_secs_f64()
    );
    eprintln!("{}", PhaseReport::table_header());

    let mut next = warm_n;
    let mut lost = 0u64;
    for phase in [Phase::Sustained, Phase::Rate] {
        if !args.phases.contains(&phase) {
            continue;
        }
        // Let the windows armed so far flush before the clock starts, so that a phase measures
        // its own steady state rather than the previous phase's burst of flushes.
        std::thread::sleep(SETTLE);
        let flushes_before = counter.snapshot().0;
        let cpu_before = cpu_snapshot(postgres);
        let (name, load, result) = match phase {
            Phase::Sustained => {
                let range = next..next + sustained_n;
                next += sustained_n;
                let deadline = Instant::now() + duration;
                let result = client_rt.block_on(closed_loop(
                    &client,
                    &deliveries,
                    range,
                    args.concurrency,
                    Some(deadline),
                ));
                ("sustained", format!("c={}", args.concurrency), result)
            }
            Phase::Rate => {
                let range = next..next + rate_n;
                next += rate_n;
                let result = client_rt.block_on(open_loop(&client, &deliveries, range, args.rate));
                ("rate", format!("r={}", args.rate), result)
            }
        };
        let cpu = CpuUse::between(&cpu_before, &cpu_snapshot(postgres));
        let stored_after = stored_now()?;
        let report = PhaseReport {
            cpu,
            phase: name,
            load,
            stored: stored_after - stored_before,
            flushes: counter.snapshot().0 - flushes_before,
            result,
        };
        stored_before = stored_after;
        accepted_total += report.result.accepted();
        eprintln!("{}", report.table_row(backend, webhook));
        println!("{}", serde_json::to_string(&report.json(args, backend))?);
        if report.result.exhausted {
            eprintln!(
                "#   note: the {} pre-generated deliveries ran out before {} s; raise --max-messages",
                sustained_n, args.duration_s
            );
        }
        eprintln!("#   {}", report.cpu.describe(report.result.accepted()));
        for sample in &report.result.error_samples {
            eprintln!("#   error: {sample}");
        }
        if report.stored != report.result.accepted() {
            lost += report.result.accepted().abs_diff(report.stored);
            eprintln!(
                "#   MISMATCH: {} deliveries accepted, {} messages stored",
                report.result.accepted(),
                report.stored
            );
        }
    }
    drop(client);
    drop(client_rt);

    // Graceful stop: inbound stops, every pending window flushes once, the pools close.
    let (flushes_run, _, _) = counter.snapshot();
    host.stop.send(()).ok();
    server
        .block_on(host.task)
        .context("the host task")?
        .context("the host")?;
    let (flushes, flushed_messages, failed) = counter.snapshot();
    let (stored, audit) = server.block_on(async {
        let stored = host.counts.durable_messages().await?;
        let audit = host.counts.rows("inbound_audit").await?;
        host.counts.close().await;
        anyhow::Ok((stored, audit))
    })?;
    eprintln!(
        "# durable: {accepted_total} deliveries accepted, {stored} messages stored, {audit} audit rows (drops)"
    );
    eprintln!(
        "# debounce: {flushes} windows flushed ({flushes_run} during the run, {} at shutdown) covering {flushed_messages} messages; {failed} flush handler failures",
        flushes - flushes_run
    );
    if stored != accepted_total || lost > 0 {
        bail!("{accepted_total} deliveries were accepted but {stored} messages are stored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 99.9), Some(100));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn proc_stat_lines_parse() {
        let line = "4242 (sqlx-sqlite-wor) S 1 2 3 0 -1 4194368 10 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("sqlx-sqlite-wor", 325)));
        // The comm may hold spaces and parentheses: it ends at the last `)`.
        let line = "7 (a (b) c) R 1 2 3 0 -1 0 0 0 0 0 3 4 0";
        assert_eq!(parse_stat(line), Some(("a (b) c", 7)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches(status), 127);
        assert_eq!(CpuGroup::of_thread("bench-host"), CpuGroup::Host);
        assert_eq!(CpuGroup::of_thread("sqlx-sqlite-wor"), CpuGroup::Sqlite);
        assert_eq!(CpuGroup::of_thread("bench"), CpuGroup::Client);
        assert_eq!(CpuGroup::of_thread("tokio-runtime-w"), CpuGroup::Other);
    }

    #[test]
    fn sessions_are_spread_evenly() {
        let sessions = 100u64;
        let mut hits = vec![0u32; sessions as usize];
        for i in 0..100_000 {
            hits[(spread(i) % sessions) as usize] += 1;
        }
        let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "{min}..{max}");
    }

    #[test]
    fn deliveries_verify_and_decode_with_the_plugin() {
        let installations: Vec<BenchInstallation> = (0..2)
            .map(|i| BenchInstallation {
                app_id: format!("cli_bench{i:08x}"),
                encrypt_key: format!("key-{i}"),
                verification_token: format!("token-{i}"),
                url: reqwest::Url::parse(&format!("http://127.0.0.1:1/hooks/lark/{i}")).unwrap(),
            })
            .collect();
        let items =
            build_deliveries(&installations, 4, WebhookMode::Encrypted, 10..14, false).unwrap();
        for delivery in &items {
            let installation = &installations[delivery.url];
            let headers: Vec<(String, String)> = delivery
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let request = lark_webhook::WebhookRequest {
                method: "POST",
                headers: &headers,
                body: &delivery.body,
            };
            let secrets = lark_webhook::WebhookSecrets {
                encrypt_key: Some(&installation.encrypt_key),
                verification_token: Some(&installation.verification_token),
            };
            let Ok(lark_webhook::WebhookVerdict::Events(events)) =
                lark_webhook::verify_webhook(&request, &secrets)
            else {
                panic!("rejected");
            };
            let ctx = switchboard_lark::decode::DecodeContext::new("", "");
            let switchboard_lark::decode::Decoded::Message(message) =
                switchboard_lark::decode::decode_event(&events.payloads[0], &ctx).unwrap()
            else {
                panic!("ignored");
            };
            assert_eq!(message.app_id, installation.app_id);
            assert!(
                message.body.starts_with("bench message 1"),
                "{}",
                message.body
            );
            assert!(message.message_id.starts_with("om_bench_"));
        }
        let plain = build_deliveries(&installations, 4, WebhookMode::Plain, 0..4, true).unwrap();
        assert!(plain.iter().all(|d| d.url == installations.len()));
        let ids: std::collections::HashSet<_> =
            items.iter().chain(&plain).map(|d| d.body.clone()).collect();
        assert_eq!(ids.len(), 8);
    }
}
