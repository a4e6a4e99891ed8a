//! The crash test of issue 14: nothing accepted is lost, nothing is answered twice.
//!
//! `switchboard serve` runs as a child process (the real binary, configured by a TOML file)
//! against a fake Lark REST API in this process; a client delivers a bounded load of encrypted,
//! signed webhook messages over ~20 chats to the `echo` agent, a few at a time. A message counts
//! as accepted only once a server answered 200; anything else (another status, a connection
//! error, a 503 "retry later") is redelivered later with a fresh signature, as Lark does. The
//! load is paced (bursts of [`BURST`] messages every [`BURST_EVERY`]) so that it spans ~10 s.
//! While it runs, the children are killed with SIGKILL at several points — while webhooks are
//! being answered, while a run is claimed or executing, while a reply is being delivered (the
//! fake answers sends slowly), and once more after the last message was accepted (windows, runs
//! and deliveries still in flight) — and restarted on the same database right after. Kills start
//! once every chat has its session: a crash between the dedup claim and the append of a chat's
//! *first* message leaves the claim in flight for a minute (redeliveries get 503 until then, by
//! design), longer than this test may take. Once every message is accepted and the system is
//! quiet, the database and the fake are checked:
//!
//! - accepted messages missing from the stored history = 0, duplicate user messages = 0;
//! - runs lost = 0: every session idle (none in `error`), no armed window or queued turn left,
//!   no user message after a session's last reply, and every echo reply exactly the user
//!   messages since the previous reply (so no reply covers nothing: no turn answered twice);
//! - replies stored but never delivered = 0 (every assistant reply has a `delivered` outbox row);
//! - replies delivered twice = 0 (messages the fake actually posted per reply; retried sends
//!   with the same `uuid` are counted as sent, not posted).
//!
//! SQLite runs one child (one process owns the file); PostgreSQL runs two replicas on one
//! database, spreads the load over both and kills one, the other, then both. Each variant is
//! bounded by [`VARIANT_LIMIT`]; children are SIGKILLed on every exit path (a drop guard), and
//! their logs stay in a kept directory when the test fails.

#[path = "support/db.rs"]
mod db;
#[path = "support/lark.rs"]
mod lark;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_lark::{Failure, FakeLark, FakeOptions, Route};
use rand::Rng;
use serde_json::{Value, json};

const ADMIN: &str = "crash-test-admin-token-0123456789abcdef";
/// Chats the load is spread over (one session each).
const CHATS: usize = 20;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 6;
/// The whole of one variant: start, load, kills, quiet, checks.
const VARIANT_LIMIT: Duration = Duration::from_secs(100);
/// How long the system may take to become quiet after the load.
const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// How long one child may take to listen (a cold plugin compile included).
const START_LIMIT: Duration = Duration::from_secs(60);
/// Messages released to the clients at once…
const BURST: usize = 10;
/// …this often (about 28 messages a second).
const BURST_EVERY: Duration = Duration::from_millis(350);
/// A client's answer deadline for one delivery.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `$sql` with `$installation` bound as `$1` on either backend, rows as `$t`.
macro_rules! rows {
    ($db:expr, $t:ty, $sql:expr, $installation:expr) => {
        match $db {
            Db::Sqlite(pool) => sqlx::query_as::<_, $t>($sql)
                .bind($installation)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", $sql)),
            Db::Postgres(pool) => sqlx::query_as::<_, $t>($sql)
                .bind($installation)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", $sql)),
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_single_process_survives_sigkill() {
    let test_db = db::sqlite_file_db().await;
    let plan = vec![
        Kill::during(0.20, Moment::Burst, &[0]),
        Kill::during(0.45, Moment::Run, &[0]),
        Kill::during(0.70, Moment::Delivery, &[0]),
        Kill::after_load(&[0]),
    ];
    crash_test("sqlite", &test_db.url, 1, 300, plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_survive_sigkill() {
    let test_db = db::postgres_db().await;
    let plan = vec![
        Kill::during(0.20, Moment::Burst, &[0]),
        Kill::during(0.40, Moment::Run, &[1]),
        Kill::during(0.60, Moment::Delivery, &[0, 1]),
        Kill::during(0.80, Moment::Run, &[0]),
        Kill::after_load(&[1]),
    ];
    crash_test("postgres", &test_db.url, 2, 300, plan).await;
}

/// One kill point: when (a share of the messages accepted, or after the last one), at which
/// moment, and which replicas.
#[derive(Debug, Clone)]
struct Kill {
    /// Accepted share that triggers it; `None`: once every message is accepted.
    at: Option<f64>,
    moment: Moment,
    replicas: Vec<usize>,
}

/// What the kill waits for once its share is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// A random moment shortly after the next burst of messages was released (deliveries in
    /// flight, windows armed).
    Burst,
    /// The first moment a session is `pending` or `running` (a run claimed or executing).
    Run,
    /// The first moment an outbox row is leased (a reply being delivered).
    Delivery,
}

impl Kill {
    fn during(share: f64, moment: Moment, replicas: &[usize]) -> Kill {
        Kill {
            at: Some(share),
            moment,
            replicas: replicas.to_vec(),
        }
    }

    fn after_load(replicas: &[usize]) -> Kill {
        Kill {
            at: None,
            moment: Moment::Burst,
            replicas: replicas.to_vec(),
        }
    }
}

/// Runs one variant within [`VARIANT_LIMIT`]; children die with it whatever happens.
async fn crash_test(
    name: &str,
    database_url: &str,
    replicas: usize,
    total: usize,
    plan: Vec<Kill>,
) {
    let work = tempfile::Builder::new()
        .prefix(&format!("crash-{name}-"))
        .tempdir()
        .expect("a temporary directory");
    let dir = work.path().to_path_buf();
    let started = Instant::now();
    let result = tokio::time::timeout(
        VARIANT_LIMIT,
        run_variant(name, database_url, &dir, replicas, total, plan),
    )
    .await;
    let failure = match result {
        Ok(Ok(summary)) => {
            eprintln!(
                "[crash {name}] PASS in {:.1} s: {summary}",
                started.elapsed().as_secs_f64()
            );
            None
        }
        Ok(Err(report)) => Some(report),
        Err(_) => Some(format!(
            "did not finish within {VARIANT_LIMIT:?} (see the progress lines above)"
        )),
    };
    if let Some(report) = failure {
        let logs = log_digest(&dir);
        let kept = work.keep();
        panic!(
            "[crash {name}] FAILED after {:.1} s: {report}\n--- child logs (kept in {}) ---\n{logs}",
            started.elapsed().as_secs_f64(),
            kept.display()
        );
    }
}

async fn run_variant(
    name: &str,
    database_url: &str,
    dir: &Path,
    replica_count: usize,
    total: usize,
    plan: Vec<Kill>,
) -> Result<String, String> {
    let tag = format!("[crash {name}]");
    let fake = FakeLark::start_with(FakeOptions::default()).await;
    // Slow sends and replies a little: deliveries stay in flight long enough for a kill to land
    // during one (the retried send then carries the same `uuid`).
    fake.set_failure(Route::Send, Failure::Slow(Duration::from_millis(80)));
    fake.set_failure(Route::Reply, Failure::Slow(Duration::from_millis(80)));
    // The installation's on-install asks the fake who the bot is.
    fake.set_bot(lark::BOT_OPEN_ID, "crash test bot");
    let key = switchboard::store::SecretCipher::generate_key_hex();
    let mut replicas: Vec<Replica> = (0..replica_count)
        .map(|i| Replica {
            name: if replica_count == 1 {
                "solo".into()
            } else {
                ["a", "b"][i].into()
            },
            tag: tag.clone(),
            dir: dir.to_path_buf(),
            database_url: database_url.to_string(),
            key: key.clone(),
            fake_origin: fake.origin().to_string(),
            generation: 0,
            process: None,
            base: None,
        })
        .collect();
    for replica in &mut replicas {
        replica.start().await?;
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let installation = install(&http, replicas[0].base.as_deref().unwrap()).await?;
    eprintln!("{tag} installation {installation}; {total} messages over {CHATS} chats");

    let db = Db::connect(database_url).await;
    let load = Arc::new(Load::new(&installation, total));
    load.set_live(&replicas);
    let mut clients = tokio::task::JoinSet::new();
    clients.spawn(release(load.clone()));
    for _ in 0..CONCURRENCY {
        clients.spawn(client(load.clone(), http.clone()));
    }

    // Kills start once every chat has its session (see the module documentation).
    let load_started = Instant::now();
    while !load.chats_started() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut kills = 0;
    for kill in &plan {
        match kill.at {
            Some(share) => {
                let threshold = ((total as f64) * share).ceil() as usize;
                while load.accepted() < threshold {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            None => {
                while load.accepted() < total {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                eprintln!(
                    "{tag} every message accepted after {:.1} s ({} attempts)",
                    load_started.elapsed().as_secs_f64(),
                    load.attempts.load(Ordering::Relaxed)
                );
            }
        }
        // Kill while the host is busy: a little after a burst was released (its deliveries,
        // windows, runs and replies in flight), while a run or a delivery is in progress, or
        // after the last message was accepted (its window armed, the last runs and deliveries
        // in flight).
        let pause = rand::thread_rng().gen_range(100..400u64);
        let moment = match kill.moment {
            Moment::Burst => {
                if kill.at.is_some() {
                    let released = load.released.load(Ordering::SeqCst);
                    while load.released.load(Ordering::SeqCst) == released && released < total {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                // While webhooks are being answered (after the load: while its last windows,
                // runs and deliveries are).
                let delay = if kill.at.is_some() {
                    let looking = Instant::now();
                    while load.in_flight.load(Ordering::SeqCst) == 0
                        && looking.elapsed() < Duration::from_secs(1)
                    {
                        tokio::task::yield_now().await;
                    }
                    rand::thread_rng().gen_range(0..10u64)
                } else {
                    rand::thread_rng().gen_range(0..60u64)
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if kill.at.is_some() {
                    format!(
                        "{delay} ms after a burst, {} webhooks in flight",
                        load.in_flight.load(Ordering::SeqCst)
                    )
                } else {
                    format!("{delay} ms after the last message was accepted")
                }
            }
            Moment::Run | Moment::Delivery => {
                let (what, sql) = if kill.moment == Moment::Run {
                    (
                        "sessions pending/running",
                        "SELECT COUNT(*) FROM sessions WHERE installation_id = $1
                         AND run_state IN ('pending', 'running')",
                    )
                } else {
                    (
                        "replies being delivered",
                        "SELECT COUNT(*) FROM outbox WHERE installation_id = $1
                         AND state = 'pending' AND lease_owner IS NOT NULL",
                    )
                };
                let looking = Instant::now();
                let mut seen = 0;
                while looking.elapsed() < Duration::from_secs(3) {
                    seen = rows!(&db, (i64,), sql, &installation)[0].0;
                    if seen > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                format!("{seen} {what}")
            }
        };
        for &i in &kill.replicas {
            replicas[i].kill();
            kills += 1;
        }
        load.set_live(&replicas);
        eprintln!(
            "{tag} SIGKILL {} at {}/{total} accepted ({:.1} s into the load; {moment}); restarting in {pause} ms",
            kill.replicas
                .iter()
                .map(|&i| replicas[i].name.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            load.accepted(),
            load_started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(pause)).await;
        for &i in &kill.replicas {
            replicas[i].start().await?;
        }
        load.set_live(&replicas);
    }
    while load.accepted() < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while clients.join_next().await.is_some() {}
    let failures = load.failures.lock().unwrap().clone();
    let outcomes = load.outcomes();
    eprintln!(
        "{tag} load done: {total} accepted in {} attempts ({:.1} s); refused/failed attempts {failures:?}; first 200 outcomes {outcomes:?}",
        load.attempts.load(Ordering::Relaxed),
        load_started.elapsed().as_secs_f64()
    );

    // Quiet: no window armed, no run pending or running, no queued turn, no outbox row due,
    // no session waiting for its reply.
    let quiet_started = Instant::now();
    let mut facts = Facts::read(&db, &installation).await;
    while !facts.quiet() && quiet_started.elapsed() < QUIET_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        facts = Facts::read(&db, &installation).await;
    }
    eprintln!(
        "{tag} quiet: {} after {:.1} s ({})",
        facts.quiet(),
        quiet_started.elapsed().as_secs_f64(),
        facts.activity()
    );
    // Deliveries marked delivered were posted before; a last look at the fake.
    let check = Check::new(&facts, &load, &fake);
    let summary = format!(
        "kills {kills}, restarts {}, {}; in the logs: {}",
        replicas.iter().map(|r| r.generation - 1).sum::<u32>(),
        check.summary(),
        log_stats(dir)
    );
    eprintln!("{tag} {summary}");
    for replica in &mut replicas {
        replica.kill();
    }
    db.close().await;
    match check.problems() {
        problems if problems.is_empty() => Ok(summary),
        problems => Err(format!("{}\n{summary}", problems.join("\n"))),
    }
}

// ---------------------------------------------------------------------------------------------
// The child processes.

/// A running `switchboard serve`; SIGKILLed and reaped when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// One replica: restarted under the same name on the same database and secrets key.
struct Replica {
    name: String,
    tag: String,
    dir: PathBuf,
    database_url: String,
    key: String,
    fake_origin: String,
    /// Starts so far.
    generation: u32,
    process: Option<Process>,
    /// `http://127.0.0.1:<port>` while it runs.
    base: Option<String>,
}

impl Replica {
    fn config(&self, port: u16) -> String {
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"

[database]
url = "{url}"

[secrets]
key = "{key}"

[plugins.base_urls]
"https://open.feishu.cn" = "{fake}"

[delivery]
lease_ms = 1500
poll_interval_ms = 100
first_backoff_ms = 200
max_backoff_ms = 2000

[runs]
window_sweep_ms = 200
stale_after_ms = 3000

[connections]
enabled = false

[retention]
enabled = false
"#,
            url = self.database_url,
            key = self.key,
            fake = self.fake_origin,
        )
    }

    /// Starts the child on a fresh port and waits until it listens (its own log says so: a
    /// `/healthz` answer could come from another process that took the port meanwhile). A port
    /// taken between choosing and binding it is retried with another one.
    async fn start(&mut self) -> Result<(), String> {
        self.generation += 1;
        let stem = format!("{}-{}", self.name, self.generation);
        for attempt in 1..=3 {
            let port = free_port();
            let config = self.dir.join(format!("{stem}.toml"));
            std::fs::write(&config, self.config(port)).unwrap();
            let log_path = self.dir.join(format!("{stem}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("SWITCHBOARD_") {
                    command.env_remove(name);
                }
            }
            command
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .current_dir(&self.dir)
                .env("SWITCHBOARD_CACHE_DIR", shared_cache_dir())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let mut process = Process {
                child: command.spawn().expect("the switchboard binary starts"),
            };
            let base = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            loop {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                if text.contains(&format!("switchboard listening on {base}")) {
                    eprintln!(
                        "{} started {stem} (pid {}) on {base} in {} ms",
                        self.tag,
                        process.child.id(),
                        started.elapsed().as_millis()
                    );
                    self.process = Some(process);
                    self.base = Some(base);
                    return Ok(());
                }
                if let Ok(Some(status)) = process.child.try_wait() {
                    if text.contains("cannot listen") && attempt < 3 {
                        eprintln!("{} {stem}: port {port} was taken; another one", self.tag);
                        break;
                    }
                    return Err(format!(
                        "{stem} exited at start ({status}):\n{}",
                        tail(&log_path, 40)
                    ));
                }
                if started.elapsed() > START_LIMIT {
                    return Err(format!(
                        "{stem} did not listen within {START_LIMIT:?}:\n{}",
                        tail(&log_path, 40)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        unreachable!("the last attempt returns")
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self) {
        self.base = None;
        drop(self.process.take());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every child log's warnings and errors (at most 40 lines each), for a failure report.
fn log_digest(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let notable: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .collect();
        out.push_str(&format!(
            "== {} ({} lines, {} warnings/errors)\n",
            log.file_name().unwrap().to_string_lossy(),
            text.lines().count(),
            notable.len()
        ));
        for line in &notable[notable.len().saturating_sub(40)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// How often the children logged what a crash leaves behind and its recovery.
fn log_stats(dir: &Path) -> String {
    const EVENTS: [(&str, &str); 6] = [
        ("stale runs recovered", "stale run"),
        (
            "windows re-armed at boot",
            "re-armed durable debounce windows",
        ),
        ("503 for a claim in flight", "asking the channel to retry"),
        ("replies discarded (run lost)", "reply discarded"),
        ("delivery retries", "delivery failed; retrying"),
        ("errors", "ERROR"),
    ];
    let mut counts = [0usize; EVENTS.len()];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            for (n, (_, needle)) in EVENTS.iter().enumerate() {
                if line.contains(needle) {
                    counts[n] += 1;
                }
            }
        }
    }
    EVENTS
        .iter()
        .zip(counts)
        .map(|((what, _), n)| format!("{what} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the installation, bound to `echo` with a short debounce window; its on-install
/// learns the bot's open_id from the fake.
async fn install(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let response = http
        .post(format!("{base}/api/installations"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(
            json!({
                "channel": "lark",
                "routing_key": lark::APP_ID,
                "name": "crash test",
                "agent": "echo",
                "debounce_ms": 100,
                // Replies whole: the durability asserted here is the outbox's (a streamed
                // card's handle does not survive a SIGKILL).
                "config": {"app_id": lark::APP_ID, "reply_mode": "final"},
                "secrets": {
                    "encrypt_key": lark::ENCRYPT_KEY,
                    "verification_token": lark::VERIFICATION_TOKEN,
                    "app_secret": "crash-app-secret",
                },
            })
            .to_string(),
        )
        .send()
        .await
        .map_err(|e| format!("creating the installation: {e}"))?;
    let status = response.status();
    let body: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    if status.as_u16() != 201 {
        return Err(format!("creating the installation: {status} {body}"));
    }
    if body["config"]["bot_open_id"] != lark::BOT_OPEN_ID {
        return Err(format!(
            "creating the installation: on-install did not learn the bot's open_id: {body}"
        ));
    }
    Ok(body["id"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------------
// The load: a bounded set of messages, each redelivered until a server answers 200.

fn message_id(i: usize) -> String {
    format!("om_crash_{i:04}")
}

/// The chat of message `i`: the first [`CHATS`] messages open one chat each, the others land
/// in a pseudo-random chat (so some chats get bursts: several turns in one window, turns
/// queued behind a running run).
fn chat_of(i: usize) -> usize {
    if i < CHATS {
        i
    } else {
        ((i as u64).wrapping_mul(2_654_435_761) >> 7) as usize % CHATS
    }
}

fn chat_id(i: usize) -> String {
    format!("oc_crash_chat_{:02}", chat_of(i))
}

/// The event of message `i` (plaintext; encrypted and signed anew at every attempt).
fn event(i: usize) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&lark::text_event(
        &message_id(i),
        &format!("crash message {i}"),
    ))
    .unwrap();
    event["header"]["app_id"] = json!(lark::APP_ID);
    event["event"]["message"]["chat_id"] = json!(chat_id(i));
    serde_json::to_vec(&event).unwrap()
}

struct Load {
    hook_path: String,
    total: usize,
    events: Vec<Vec<u8>>,
    /// Messages released, not accepted and not being delivered, in delivery order.
    queue: Mutex<VecDeque<usize>>,
    /// Messages released to the clients so far (the load is paced: see [`release`]).
    released: AtomicUsize,
    /// The outcome header of the first 200 per message.
    accepted: Mutex<Vec<Option<String>>>,
    accepted_count: AtomicUsize,
    attempts: AtomicUsize,
    /// Deliveries waiting for their answer now.
    in_flight: AtomicUsize,
    /// Attempts that were not a 200, by status or error kind.
    failures: Mutex<BTreeMap<String, usize>>,
    /// Base URLs of the replicas up now.
    live: Mutex<Vec<String>>,
    next: AtomicUsize,
}

impl Load {
    fn new(installation: &str, total: usize) -> Load {
        Load {
            hook_path: format!("/hooks/lark/{installation}"),
            total,
            events: (0..total).map(event).collect(),
            queue: Mutex::default(),
            released: AtomicUsize::new(0),
            accepted: Mutex::new(vec![None; total]),
            accepted_count: AtomicUsize::new(0),
            attempts: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            failures: Mutex::default(),
            live: Mutex::default(),
            next: AtomicUsize::new(0),
        }
    }

    fn set_live(&self, replicas: &[Replica]) {
        *self.live.lock().unwrap() = replicas.iter().filter_map(|r| r.base.clone()).collect();
    }

    fn accepted(&self) -> usize {
        self.accepted_count.load(Ordering::SeqCst)
    }

    fn chats_started(&self) -> bool {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().take(CHATS).all(Option::is_some)
    }

    fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for outcome in self.accepted.lock().unwrap().iter().flatten() {
            *counts.entry(outcome.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn failed(&self, what: String, i: usize) {
        *self.failures.lock().unwrap().entry(what).or_insert(0) += 1;
        self.queue.lock().unwrap().push_back(i);
    }
}

/// Releases the messages to the clients in groups of [`BURST`] every [`BURST_EVERY`], so the
/// load spans several seconds and the kills land in every phase (ingest, windows, runs,
/// deliveries) rather than after a short rush.
async fn release(load: Arc<Load>) {
    let mut next = 0;
    while next < load.total {
        let end = (next + BURST).min(load.total);
        load.queue.lock().unwrap().extend(next..end);
        load.released.store(end, Ordering::SeqCst);
        next = end;
        tokio::time::sleep(BURST_EVERY).await;
    }
}

/// One client loop: takes the next message, delivers it to a live replica (round robin), and
/// puts it back for a later redelivery unless the answer was 200.
async fn client(load: Arc<Load>, http: reqwest::Client) {
    loop {
        let next = load.queue.lock().unwrap().pop_front();
        let Some(i) = next else {
            if load.accepted() >= load.total && load.released.load(Ordering::SeqCst) >= load.total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let base = {
            let live = load.live.lock().unwrap();
            (!live.is_empty())
                .then(|| live[load.next.fetch_add(1, Ordering::Relaxed) % live.len()].clone())
        };
        let Some(base) = base else {
            load.queue.lock().unwrap().push_back(i);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let iv: [u8; 16] = rand::random();
        let (headers, body) = lark::encrypted_delivery(&load.events[i], iv);
        let mut request = http.post(format!("{base}{}", load.hook_path)).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        load.attempts.fetch_add(1, Ordering::Relaxed);
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = request.send().await;
        load.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok(response) if response.status().as_u16() == 200 => {
                let outcome = response
                    .headers()
                    .get(switchboard::api::OUTCOME_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                let _ = response.bytes().await;
                let mut accepted = load.accepted.lock().unwrap();
                if accepted[i].is_none() {
                    accepted[i] = Some(outcome);
                    load.accepted_count.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(response) => {
                let status = response.status().as_u16().to_string();
                let _ = response.bytes().await;
                load.failed(status, i);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "io"
                };
                load.failed(kind.to_string(), i);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the database holds.

enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn connect(url: &str) -> Db {
        if url.starts_with("sqlite:") {
            Db::Sqlite(sqlx::SqlitePool::connect(url).await.expect("SQLite opens"))
        } else {
            Db::Postgres(
                sqlx::PgPool::connect(url)
                    .await
                    .expect("PostgreSQL connects"),
            )
        }
    }

    async fn close(self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

struct StoredMessage {
    session_id: String,
    role: String,
    kind: String,
    body: String,
    channel_message_id: Option<String>,
}

struct Session {
    id: String,
    run_state: String,
    flush_due_at_ms: Option<i64>,
    last_error: Option<String>,
}

struct OutboxRow {
    session_id: String,
    kind: String,
    state: String,
    text: Option<String>,
    idempotency_key: String,
    attempts: i64,
    last_error: Option<String>,
}

/// One read of everything the checks need.
struct Facts {
    messages: Vec<StoredMessage>,
    sessions: Vec<Session>,
    /// Channel message ids of turns still queued behind a run.
    queued: Vec<Option<String>>,
    outbox: Vec<OutboxRow>,
}

impl Facts {
    async fn read(db: &Db, installation: &str) -> Facts {
        let messages = rows!(
            db,
            (String, String, String, String, Option<String>),
            "SELECT m.session_id, m.role, m.kind, m.body, m.channel_message_id
             FROM messages m JOIN sessions s ON s.id = m.session_id
             WHERE s.installation_id = $1 ORDER BY m.id",
            installation
        )
        .into_iter()
        .map(
            |(session_id, role, kind, body, channel_message_id)| StoredMessage {
                session_id,
                role,
                kind,
                body,
                channel_message_id,
            },
        )
        .collect();
        let sessions = rows!(
            db,
            (String, String, Option<i64>, Option<String>),
            "SELECT id, run_state, flush_due_at_ms, last_error FROM sessions
             WHERE installation_id = $1 ORDER BY id",
            installation
        )
        .into_iter()
        .map(|(id, run_state, flush_due_at_ms, last_error)| Session {
            id,
            run_state,
            flush_due_at_ms,
            last_error,
        })
        .collect();
        let queued = rows!(
            db,
            (Option<String>,),
            "SELECT q.channel_message_id FROM queued_messages q
             JOIN sessions s ON s.id = q.session_id WHERE s.installation_id = $1",
            installation
        )
        .into_iter()
        .map(|(id,)| id)
        .collect();
        let outbox = rows!(
            db,
            (String, String, String, String, String, i64, Option<String>),
            "SELECT session_id, kind, state, content, idempotency_key, attempts, last_error
             FROM outbox WHERE installation_id = $1 ORDER BY id",
            installation
        )
        .into_iter()
        .map(
            |(session_id, kind, state, content, idempotency_key, attempts, last_error)| {
                let content: Value = serde_json::from_str(&content).unwrap_or(Value::Null);
                OutboxRow {
                    session_id,
                    kind,
                    state,
                    text: content["text"].as_str().map(str::to_string),
                    idempotency_key,
                    attempts,
                    last_error,
                }
            },
        )
        .collect();
        Facts {
            messages,
            sessions,
            queued,
            outbox,
        }
    }

    fn busy_sessions(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.run_state == "pending" || s.run_state == "running")
            .count()
    }

    fn armed_windows(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.flush_due_at_ms.is_some())
            .count()
    }

    fn outbox_pending(&self) -> usize {
        self.outbox.iter().filter(|r| r.state == "pending").count()
    }

    /// Nothing left to happen (or something went wrong for good: an error, a failed row).
    fn quiet(&self) -> bool {
        self.busy_sessions() == 0
            && self.armed_windows() == 0
            && self.queued.is_empty()
            && self.outbox_pending() == 0
            && self.answers().unanswered == 0
    }

    fn activity(&self) -> String {
        format!(
            "pending/running sessions {}, armed windows {}, queued turns {}, outbox pending {}, unanswered user messages {}",
            self.busy_sessions(),
            self.armed_windows(),
            self.queued.len(),
            self.outbox_pending(),
            self.answers().unanswered
        )
    }

    /// Walks every session's history: each echo reply must be exactly the user messages since
    /// the previous reply.
    fn answers(&self) -> Answers {
        let mut since_reply: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut answers = Answers::default();
        for m in &self.messages {
            if m.kind != "message" {
                continue;
            }
            let pending = since_reply.entry(m.session_id.as_str()).or_default();
            match m.role.as_str() {
                "user" => pending.push(&m.body),
                "assistant" => {
                    answers.replies += 1;
                    if pending.is_empty() {
                        answers.empty += 1;
                        answers.examples.push(format!(
                            "session {}: a reply answering nothing: {:?}",
                            m.session_id, m.body
                        ));
                    }
                    let expected = format!("echo: {}", pending.join("\n"));
                    if m.body != expected {
                        answers.mismatched += 1;
                        answers.examples.push(format!(
                            "session {}: reply {:?}, expected {expected:?}",
                            m.session_id, m.body
                        ));
                    }
                    pending.clear();
                }
                _ => {}
            }
        }
        answers.unanswered = since_reply.values().map(Vec::len).sum();
        answers
    }
}

#[derive(Default)]
struct Answers {
    /// Assistant replies stored.
    replies: usize,
    /// Replies that answer no user message (a turn answered a second time).
    empty: usize,
    /// Replies that are not exactly the user messages since the previous reply.
    mismatched: usize,
    /// User messages after their session's last reply.
    unanswered: usize,
    examples: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// The checks.

struct Check {
    accepted: usize,
    stored_user: usize,
    missing: Vec<String>,
    duplicated: Vec<String>,
    unexpected: Vec<String>,
    sessions: usize,
    busy: usize,
    errored: Vec<String>,
    armed: usize,
    queued: usize,
    answers: Answers,
    reply_rows: usize,
    outbox_by_state: BTreeMap<String, usize>,
    outbox_other_kinds: BTreeMap<String, usize>,
    outbox_attempts_max: i64,
    failed_rows: Vec<String>,
    never_delivered: Vec<String>,
    delivered_twice: Vec<String>,
    reply_rows_without_message: usize,
    duplicate_assistant: usize,
    posted: usize,
    sent: usize,
    posted_without_key: usize,
    posted_unknown_key: usize,
}

impl Check {
    fn new(facts: &Facts, load: &Load, fake: &FakeLark) -> Check {
        let accepted: Vec<String> = load
            .accepted
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .map(|(i, _)| message_id(i))
            .collect();
        // User turns by channel message id, in the history or still queued.
        let mut stored: HashMap<String, usize> = HashMap::new();
        for m in facts.messages.iter().filter(|m| m.role == "user") {
            if let Some(id) = &m.channel_message_id {
                *stored.entry(id.clone()).or_insert(0) += 1;
            }
        }
        for id in facts.queued.iter().flatten() {
            *stored.entry(id.clone()).or_insert(0) += 1;
        }
        let missing: Vec<String> = accepted
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .cloned()
            .collect();
        let mut duplicated: Vec<String> = stored
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id}×{n}"))
            .collect();
        duplicated.sort();
        let accepted_set: HashSet<&String> = accepted.iter().collect();
        let mut unexpected: Vec<String> = stored
            .keys()
            .filter(|id| !accepted_set.contains(id))
            .cloned()
            .collect();
        unexpected.sort();

        let errored: Vec<String> = facts
            .sessions
            .iter()
            .filter(|s| s.run_state == "error")
            .map(|s| format!("{}: {:?}", s.id, s.last_error))
            .collect();

        // Replies ↔ outbox rows ↔ what the fake posted.
        let mut outbox_by_state = BTreeMap::new();
        let mut outbox_other_kinds = BTreeMap::new();
        let mut rows_by_reply: HashMap<(&str, &str), Vec<&OutboxRow>> = HashMap::new();
        let mut reply_rows = 0;
        for row in &facts.outbox {
            if row.kind == "reply" {
                reply_rows += 1;
                *outbox_by_state.entry(row.state.clone()).or_insert(0) += 1;
                if let Some(text) = &row.text {
                    rows_by_reply
                        .entry((row.session_id.as_str(), text.as_str()))
                        .or_default()
                        .push(row);
                }
            } else {
                *outbox_other_kinds
                    .entry(format!("{}:{}", row.kind, row.state))
                    .or_insert(0) += 1;
            }
        }
        let failed_rows: Vec<String> = facts
            .outbox
            .iter()
            .filter(|r| r.state == "failed")
            .map(|r| format!("{} {}: {:?}", r.kind, r.idempotency_key, r.last_error))
            .collect();
        let posted_requests = fake.posted_messages();
        let mut posted_by_key: HashMap<String, usize> = HashMap::new();
        let mut posted_without_key = 0;
        for request in &posted_requests {
            match request.body["uuid"].as_str() {
                Some(uuid) => {
                    // `{idempotency key}-{n}`: the n-th message of a (split) delivery.
                    let key = uuid.rsplit_once('-').map_or(uuid, |(key, _)| key);
                    *posted_by_key.entry(key.to_string()).or_insert(0) += 1;
                }
                None => posted_without_key += 1,
            }
        }
        let known_keys: HashSet<&str> = facts
            .outbox
            .iter()
            .map(|r| r.idempotency_key.as_str())
            .collect();
        let posted_unknown_key = posted_by_key
            .iter()
            .filter(|(key, _)| !known_keys.contains(key.as_str()))
            .map(|(_, n)| n)
            .sum();

        let mut replies_seen: HashMap<(&str, &str), usize> = HashMap::new();
        let mut never_delivered = Vec::new();
        let mut delivered_twice = Vec::new();
        for m in facts
            .messages
            .iter()
            .filter(|m| m.role == "assistant" && m.kind == "message")
        {
            let key = (m.session_id.as_str(), m.body.as_str());
            *replies_seen.entry(key).or_insert(0) += 1;
            if replies_seen[&key] > 1 {
                continue; // counted below as a duplicate assistant message
            }
            let rows = rows_by_reply.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let delivered = rows.iter().filter(|r| r.state == "delivered").count();
            let posted: usize = rows
                .iter()
                .map(|r| posted_by_key.get(&r.idempotency_key).copied().unwrap_or(0))
                .sum();
            if delivered == 0 || posted == 0 {
                never_delivered.push(format!(
                    "session {}: {:?} (outbox rows {:?}, posted {posted})",
                    m.session_id,
                    m.body,
                    rows.iter()
                        .map(|r| format!("{} after {} attempts", r.state, r.attempts))
                        .collect::<Vec<_>>()
                ));
            }
            if posted > 1 || delivered > 1 {
                delivered_twice.push(format!(
                    "session {}: {:?} posted {posted} times, {delivered} delivered rows",
                    m.session_id, m.body
                ));
            }
        }
        let duplicate_assistant = replies_seen.values().filter(|n| **n > 1).count();
        let reply_rows_without_message = rows_by_reply
            .keys()
            .filter(|key| !replies_seen.contains_key(*key))
            .count();

        Check {
            accepted: accepted.len(),
            stored_user: stored.values().sum(),
            missing,
            duplicated,
            unexpected,
            sessions: facts.sessions.len(),
            busy: facts.busy_sessions(),
            errored,
            armed: facts.armed_windows(),
            queued: facts.queued.len(),
            answers: facts.answers(),
            reply_rows,
            outbox_by_state,
            outbox_other_kinds,
            outbox_attempts_max: facts.outbox.iter().map(|r| r.attempts).max().unwrap_or(0),
            failed_rows,
            never_delivered,
            delivered_twice,
            reply_rows_without_message,
            duplicate_assistant,
            posted: posted_requests.len(),
            sent: fake.sent_messages().len(),
            posted_without_key,
            posted_unknown_key,
        }
    }

    fn runs_lost(&self) -> usize {
        self.busy + self.errored.len() + self.armed + self.queued + self.answers.unanswered
    }

    fn summary(&self) -> String {
        format!(
            "accepted {}, user messages stored {}, missing {}, duplicate user messages {}, \
             sessions {}, runs lost {} (pending/running {}, error {}, armed windows {}, queued \
             {}, unanswered {}), replies stored {}, reply rows {} {:?} (max attempts {}), other \
             outbox rows {:?}, replies stored but never delivered {}, replies delivered twice \
             {}, empty replies {}, mismatched replies {}, sent {} vs posted {}",
            self.accepted,
            self.stored_user,
            self.missing.len(),
            self.duplicated.len(),
            self.sessions,
            self.runs_lost(),
            self.busy,
            self.errored.len(),
            self.armed,
            self.queued,
            self.answers.unanswered,
            self.answers.replies,
            self.reply_rows,
            self.outbox_by_state,
            self.outbox_attempts_max,
            self.outbox_other_kinds,
            self.never_delivered.len(),
            self.delivered_twice.len() + self.duplicate_assistant,
            self.answers.empty,
            self.answers.mismatched,
            self.sent,
            self.posted,
        )
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                problems.push(what);
            }
        };
        let few = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        check(
            self.missing.is_empty(),
            format!(
                "accepted messages missing: {} ({})",
                self.missing.len(),
                few(&self.missing)
            ),
        );
        check(
            self.duplicated.is_empty(),
            format!(
                "duplicate user messages: {} ({})",
                self.duplicated.len(),
                few(&self.duplicated)
            ),
        );
        check(
            self.unexpected.is_empty(),
            format!("stored messages never sent: {}", few(&self.unexpected)),
        );
        check(
            self.runs_lost() == 0,
            format!(
                "runs lost: {} (pending/running {}, error {} [{}], armed windows {}, queued turns \
                 {}, unanswered user messages {})",
                self.runs_lost(),
                self.busy,
                self.errored.len(),
                few(&self.errored),
                self.armed,
                self.queued,
                self.answers.unanswered
            ),
        );
        check(
            self.answers.empty == 0 && self.answers.mismatched == 0,
            format!(
                "replies not answering exactly the turns since the previous reply: {} empty, {} \
                 mismatched ({})",
                self.answers.empty,
                self.answers.mismatched,
                few(&self.answers.examples)
            ),
        );
        check(
            self.never_delivered.is_empty(),
            format!(
                "replies stored but never delivered: {} ({})",
                self.never_delivered.len(),
                few(&self.never_delivered)
            ),
        );
        check(
            self.delivered_twice.is_empty() && self.duplicate_assistant == 0,
            format!(
                "replies delivered twice: {} ({}); assistant replies stored twice: {}",
                self.delivered_twice.len(),
                few(&self.delivered_twice),
                self.duplicate_assistant
            ),
        );
        check(
            self.reply_rows_without_message == 0,
            format!(
                "reply outbox rows without a stored reply: {}",
                self.reply_rows_without_message
            ),
        );
        check(
            self.failed_rows.is_empty(),
            format!("outbox rows given up: {}", few(&self.failed_rows)),
        );
        check(
            self.posted == self.answers.replies
                && self.posted_without_key == 0
                && self.posted_unknown_key == 0,
            format!(
                "posted messages {} ≠ stored replies {} (posted without a uuid {}, with an \
                 unknown key {})",
                self.posted, self.answers.replies, self.posted_without_key, self.posted_unknown_key
            ),
        );
        problems
    }
}
