//! The Telegram long-poll crash test of issue 17: a crash between fetch and store loses nothing
//! (the same updates come again and are deduplicated), and nothing is answered twice.
//!
//! `switchboard serve` runs as a child process (the real binary, configured by a TOML file)
//! against a fake Bot API in this process (`tests/fake-telegram`); a Telegram installation with
//! `connection = "poll"` is added over the admin API (its `on-install` learns the bot from the
//! fake's `getMe`) and bound to the `echo` agent with a short debounce. The load: [`TOTAL`]
//! private messages and group mentions over [`CHATS`] chats, queued into the fake's `getUpdates`
//! queue in bursts of [`BURST`] every [`BURST_EVERY`] (a burst is queued at once, so a held poll
//! answers it as one batch). The fake answers sends and edits slowly ([`SEND_DELAY`]) so that
//! deliveries are in flight when a kill lands. The children are SIGKILLed at several points and
//! restarted on the same database right after:
//!
//! - **between fetch and store**: as soon as the fake has answered a `getUpdates` with updates
//!   and the first of them is durable, while the host's cursor still points before the batch —
//!   the lease owner dies, the batch is handed out again and every stored update must be
//!   dropped as a duplicate (a kill that finds the cursor already past the batch is repeated, at
//!   most [`FETCH_RETRIES`] times, and the test requires at least one such replay);
//! - while a reply is being delivered (a send or edit held by the fake), while a run is pending
//!   or running, and once more after the whole load was queued.
//!
//! Once the system is quiet the database and the fake are checked:
//!
//! - every update's message stored exactly once (by the plugin's message id
//!   `{chat_id}:{message_id}`, in the history or queued behind a run): missing = 0, duplicates = 0;
//! - runs lost = 0: every session idle, no armed window or queued turn, no user message after a
//!   session's last reply, and every echo reply exactly the user messages since the previous one;
//! - every reply delivered (its outbox row `delivered`, nothing failed) and posted in its chat;
//! - no reply posted twice, except inside the documented crash window (below);
//! - the fake's final offset is past every update and nothing is left unconfirmed.
//!
//! The crash window (plugin `outbound.rs`, host `delivery/stream.rs`): Telegram has no
//! idempotency key. A `deliver` records the message ids it posted in the plugin's `kv` under the
//! row's idempotency key right after Telegram answers, and a retry skips what is recorded; a
//! streamed reply is finished by `stream-end` (an edit of the placeholder message) on the
//! handle the delivering host keeps in memory. So a reply can show up in a second message only
//! when a process died after Telegram accepted a send (or the final edit) and before the `kv`
//! record (or the outbox row's `delivered`) was written: the retry after the restart, holding
//! no record and no stream handle, posts it again. The test therefore allows a second copy of a
//! reply only when a SIGKILL lies between the arrivals of the two copies at the fake, and counts
//! such copies; a placeholder left behind by a stream the crash cut (`…` or a partial text,
//! never finished by its host) is allowed only if it was sent before a kill. Messages and runs
//! get no such allowance.
//!
//! SQLite runs one child (one process owns the file); PostgreSQL runs two replicas on one
//! database — only the installation's lease holder polls — and kills the poller, the other one,
//! then both. Each variant is bounded by [`VARIANT_LIMIT`]; children are SIGKILLed on every exit
//! path (a drop guard), and their logs stay in a kept directory when the test fails.

#[path = "support/db.rs"]
mod db;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_telegram::{BOT_ID, BOT_USERNAME, Chat, FakeTelegram, SentMessage, User};
use rand::Rng;
use serde_json::{Value, json};

const ADMIN: &str = "tg-crash-test-admin-token-0123456789abcdef";
const TOKEN: &str = "7000000001:AAE-crash_token";
/// Chats the load is spread over (one session each): the first [`PRIVATE_CHATS`] private, the
/// others groups where the bot is mentioned.
const CHATS: usize = 10;
const PRIVATE_CHATS: usize = 6;
/// Messages per variant.
const TOTAL: usize = 300;
/// Updates queued at once…
const BURST: usize = 15;
/// …this often (the load spans ~10 s).
const BURST_EVERY: Duration = Duration::from_millis(500);
/// How long the fake holds every send and edit before carrying it out.
const SEND_DELAY: Duration = Duration::from_millis(60);
/// Extra kills when a fetch kill found the cursor already past its batch.
const FETCH_RETRIES: usize = 3;
/// The whole of one variant: start, load, kills, quiet, checks.
const VARIANT_LIMIT: Duration = Duration::from_secs(100);
/// How long the system may take to become quiet after the load.
const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// How long one child may take to listen (a cold plugin compile included).
const START_LIMIT: Duration = Duration::from_secs(60);
/// The plugin's placeholder text of a streamed reply before its first update.
const PLACEHOLDER: &str = "…";

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
async fn sqlite_poller_survives_sigkill_between_fetch_and_store() {
    let test_db = db::sqlite_file_db().await;
    let plan = vec![
        Kill::at(0.10, Moment::Fetched, Target::Poller),
        Kill::at(0.30, Moment::Delivery, Target::Poller),
        Kill::at(0.45, Moment::Fetched, Target::Poller),
        Kill::at(0.60, Moment::Run, Target::Poller),
        Kill::at(0.75, Moment::Fetched, Target::Poller),
        Kill::after_load(Target::Poller),
    ];
    crash_test("sqlite", &test_db.url, 1, plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_survive_sigkill_between_fetch_and_store() {
    let test_db = db::postgres_db().await;
    let plan = vec![
        Kill::at(0.10, Moment::Fetched, Target::Poller),
        Kill::at(0.30, Moment::Delivery, Target::Other),
        Kill::at(0.45, Moment::Fetched, Target::Both),
        Kill::at(0.60, Moment::Run, Target::Other),
        Kill::at(0.75, Moment::Fetched, Target::Poller),
        Kill::after_load(Target::Both),
    ];
    crash_test("postgres", &test_db.url, 2, plan).await;
}

/// One kill point: when (a share of the load queued, or all of it), at which moment, whom.
#[derive(Debug, Clone, Copy)]
struct Kill {
    /// Queued share that triggers it; `None`: once the whole load is queued.
    at: Option<f64>,
    moment: Moment,
    target: Target,
}

impl Kill {
    fn at(share: f64, moment: Moment, target: Target) -> Kill {
        Kill {
            at: Some(share),
            moment,
            target,
        }
    }

    /// Once the whole load is queued, while the last replies are being delivered.
    fn after_load(target: Target) -> Kill {
        Kill {
            at: None,
            moment: Moment::Delivery,
            target,
        }
    }
}

/// What a kill waits for once its share is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// A `getUpdates` answer carrying updates was sent, and the first of them is durable (or
    /// the host's cursor passed the batch, or 2 s went by).
    Fetched,
    /// A send or edit is being held by the fake (a reply being delivered).
    Delivery,
    /// A session is `pending` or `running` (a run claimed or executing).
    Run,
}

/// Which replicas a kill takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The installation's lease holder (the one polling); the first replica when none holds it.
    Poller,
    /// The replica that is not polling (with one replica: that one).
    Other,
    /// Every replica.
    Both,
}

/// Runs one variant within [`VARIANT_LIMIT`]; children die with it whatever happens.
async fn crash_test(name: &str, database_url: &str, replicas: usize, plan: Vec<Kill>) {
    let work = tempfile::Builder::new()
        .prefix(&format!("tg-crash-{name}-"))
        .tempdir()
        .expect("a temporary directory");
    let dir = work.path().to_path_buf();
    let started = Instant::now();
    let result = tokio::time::timeout(
        VARIANT_LIMIT,
        run_variant(name, database_url, &dir, replicas, plan),
    )
    .await;
    let failure = match result {
        Ok(Ok(summary)) => {
            eprintln!(
                "[tg-crash {name}] PASS in {:.1} s: {summary}",
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
            "[tg-crash {name}] FAILED after {:.1} s: {report}\n--- child logs (kept in {}) ---\n{logs}",
            started.elapsed().as_secs_f64(),
            kept.display()
        );
    }
}

/// What one fetch kill found once the poller was dead.
struct FetchKill {
    batch: Vec<i64>,
    /// The batch's messages already durable at the kill: they must come again and be dropped
    /// as duplicates.
    durable: Vec<String>,
    stored: usize,
    cursor: Option<i64>,
}

impl FetchKill {
    /// The host's cursor had not passed the batch: Telegram hands it out again.
    fn replays(&self) -> bool {
        match (self.batch.first(), self.cursor) {
            (Some(first), Some(cursor)) => cursor <= *first,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

async fn run_variant(
    name: &str,
    database_url: &str,
    dir: &Path,
    replica_count: usize,
    plan: Vec<Kill>,
) -> Result<String, String> {
    let tag = format!("[tg-crash {name}]");
    let fake = Arc::new(FakeTelegram::start(TOKEN).await);
    fake.set_send_delay(SEND_DELAY);
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
            fake_origin: fake.base_url().to_string(),
            generation: 0,
            process: None,
        })
        .collect();
    for replica in &mut replicas {
        replica.start().await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let installation = install(&http, &replicas[0].base()).await?;
    eprintln!("{tag} installation {installation}; {TOTAL} messages over {CHATS} chats");

    let db = Db::connect(database_url).await;
    let load = Arc::new(Load::default());
    let pusher = tokio::spawn(push_load(fake.clone(), load.clone()));

    // Kills start once every chat has its session: a chat's first message takes its dedup
    // claim before the append, and a crash between the two leaves the claim in flight for a
    // minute (the round is retried until then, by design), longer than this test may take.
    let load_started = Instant::now();
    let looking = Instant::now();
    loop {
        let sessions = rows!(
            &db,
            (i64,),
            "SELECT COUNT(*) FROM sessions WHERE installation_id = $1",
            &installation
        )[0]
        .0;
        if sessions as usize >= CHATS {
            break;
        }
        if looking.elapsed() > QUIET_LIMIT {
            return Err(format!(
                "only {sessions} of {CHATS} chats have a session after {QUIET_LIMIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut kill_times: Vec<Instant> = Vec::new();
    let mut fetch_kills: Vec<FetchKill> = Vec::new();
    for kill in &plan {
        let threshold = kill
            .at
            .map_or(TOTAL, |share| ((TOTAL as f64) * share).ceil() as usize);
        while load.pushed() < threshold {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let attempts = if kill.moment == Moment::Fetched {
            1 + FETCH_RETRIES
        } else {
            1
        };
        for attempt in 0..attempts {
            let (moment, fetched) = match kill.moment {
                Moment::Fetched => {
                    let (moment, batch) = fetched_moment(&fake, &db, &load, &installation).await;
                    (moment, Some(batch))
                }
                Moment::Delivery => {
                    let looking = Instant::now();
                    while fake.sends_in_flight() == 0 && looking.elapsed() < Duration::from_secs(3)
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    (
                        format!("{} sends/edits in flight", fake.sends_in_flight()),
                        None,
                    )
                }
                Moment::Run => {
                    let looking = Instant::now();
                    let mut seen = 0;
                    while looking.elapsed() < Duration::from_secs(3) {
                        seen = rows!(
                            &db,
                            (i64,),
                            "SELECT COUNT(*) FROM sessions WHERE installation_id = $1
                             AND run_state IN ('pending', 'running')",
                            &installation
                        )[0]
                        .0;
                        if seen > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (format!("{seen} sessions pending/running"), None)
                }
            };
            let poller = poll_owner(&db, &installation, &replicas).await;
            let targets: Vec<usize> = match kill.target {
                Target::Poller => vec![poller.unwrap_or(0)],
                Target::Other => vec![match poller {
                    Some(p) if replicas.len() > 1 => 1 - p,
                    _ => replicas.len() - 1,
                }],
                Target::Both => (0..replicas.len()).collect(),
            };
            kill_times.push(Instant::now());
            for &i in &targets {
                replicas[i].kill();
            }
            // The poller is dead now: what it left behind is what a restart finds.
            let mut found = String::new();
            let mut replays = true;
            if let Some(batch) = fetched
                && !batch.is_empty()
            {
                let stored = stored_keys(&db, &installation).await;
                let keys = load.keys_of(&batch);
                let cursor = read_cursor(&db, &installation).await;
                let durable: Vec<String> =
                    keys.into_iter().filter(|k| stored.contains(k)).collect();
                let fetch = FetchKill {
                    stored: durable.len(),
                    durable,
                    batch,
                    cursor,
                };
                replays = fetch.replays();
                found = format!(
                    "; at the kill {}/{} of the batch stored, cursor {:?}: {}",
                    fetch.stored,
                    fetch.batch.len(),
                    fetch.cursor,
                    if replays {
                        "the batch will be handed out again"
                    } else {
                        "the cursor had passed the batch"
                    }
                );
                fetch_kills.push(fetch);
            }
            let pause = rand::thread_rng().gen_range(100..400u64);
            eprintln!(
                "{tag} SIGKILL {} ({}) at {}/{TOTAL} queued, {:.1} s into the load, {moment}{found}; restarting in {pause} ms",
                targets
                    .iter()
                    .map(|&i| replicas[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                if poller.is_some_and(|p| targets.contains(&p)) {
                    "the poller"
                } else {
                    "not the poller"
                },
                load.pushed(),
                load_started.elapsed().as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(pause)).await;
            for &i in &targets {
                replicas[i].start().await?;
            }
            if replays || attempt + 1 == attempts {
                break;
            }
            eprintln!("{tag} the cursor had passed the batch: another fetch kill");
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), pusher).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the load task failed: {e}")),
        Err(_) => return Err("the load was not queued within 30 s".into()),
    }
    eprintln!(
        "{tag} load queued in {:.1} s; {} kills",
        load_started.elapsed().as_secs_f64(),
        kill_times.len()
    );

    // Quiet: nothing left to fetch, no window armed, no run pending or running, no queued
    // turn, no outbox row due, no user message waiting for its reply.
    let last_update = load.last_update_id();
    let quiet_started = Instant::now();
    let mut facts = Facts::read(&db, &installation).await;
    let settled = |facts: &Facts| {
        facts.quiet()
            && fake.pending_updates() == 0
            && fake.last_offset() > Some(last_update)
            && facts.user_keys().len() >= TOTAL
    };
    while !settled(&facts) && quiet_started.elapsed() < QUIET_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        facts = Facts::read(&db, &installation).await;
    }
    eprintln!(
        "{tag} quiet: {} after {:.1} s ({}; updates unconfirmed {}, offset {:?} for last update {last_update})",
        settled(&facts),
        quiet_started.elapsed().as_secs_f64(),
        facts.activity(),
        fake.pending_updates(),
        fake.last_offset()
    );
    let dropped: HashSet<String> = rows!(
        &db,
        (Option<String>,),
        "SELECT message_id FROM inbound_audit WHERE installation_id = $1
         AND drop_reason = 'duplicate'",
        &installation
    )
    .into_iter()
    .filter_map(|(id,)| id)
    .collect();
    let check = Check::new(&facts, &load, &fake, &kill_times, &fetch_kills, &dropped);
    let summary = format!(
        "messages {TOTAL}, kills {}, {}; in the logs: {}",
        kill_times.len(),
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

/// Waits (≤ 5 s) for the next `getUpdates` answer carrying updates, then (≤ 2 s) until the
/// first of them is durable or the host's cursor passed them. Answers what it saw and the batch.
async fn fetched_moment(
    fake: &FakeTelegram,
    db: &Db,
    load: &Load,
    installation: &str,
) -> (String, Vec<i64>) {
    let seen = fake.served().len();
    let looking = Instant::now();
    let served = loop {
        if let Some(served) = fake.served().get(seen) {
            break served.clone();
        }
        if looking.elapsed() > Duration::from_secs(5) {
            return (
                "no getUpdates answer with updates within 5 s".into(),
                Vec::new(),
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let keys = load.keys_of(&served.update_ids);
    let last = served.update_ids.last().copied().unwrap_or_default();
    let looking = Instant::now();
    let mut stored = 0;
    while looking.elapsed() < Duration::from_secs(2) {
        let durable = stored_keys(db, installation).await;
        stored = keys.iter().filter(|k| durable.contains(*k)).count();
        let passed = read_cursor(db, installation)
            .await
            .is_some_and(|c| c > last);
        if stored > 0 || passed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let moment = format!(
        "getUpdates answered {} updates ({}–{}) {} ms before, {stored} seen durable",
        served.update_ids.len(),
        served.update_ids.first().copied().unwrap_or_default(),
        last,
        served.at.elapsed().as_millis()
    );
    (moment, served.update_ids)
}

/// The replica holding the installation's lease (the poller): its node id is the lease
/// token's prefix, and the replica's log names its node.
async fn poll_owner(db: &Db, installation: &str, replicas: &[Replica]) -> Option<usize> {
    let token = rows!(
        db,
        (Option<String>,),
        "SELECT lease_token FROM installations WHERE id = $1",
        installation
    )
    .into_iter()
    .next()
    .and_then(|(token,)| token)?;
    let node = token
        .rsplit_once("-g")
        .map_or(token.as_str(), |(node, _)| node);
    replicas.iter().position(|r| {
        r.process.is_some()
            && std::fs::read_to_string(r.log_path())
                .unwrap_or_default()
                .contains(node)
    })
}

/// The plugin message ids of every stored user turn (history and queued).
async fn stored_keys(db: &Db, installation: &str) -> HashSet<String> {
    rows!(
        db,
        (Option<String>,),
        "SELECT m.channel_message_id FROM messages m JOIN sessions s ON s.id = m.session_id
         WHERE s.installation_id = $1 AND m.role = 'user'
         UNION ALL
         SELECT q.channel_message_id FROM queued_messages q
         JOIN sessions s ON s.id = q.session_id WHERE s.installation_id = $1",
        installation
    )
    .into_iter()
    .filter_map(|(id,)| id)
    .collect()
}

/// The host's durable long-poll cursor (the next `offset`), kept in a host-reserved kv scope.
async fn read_cursor(db: &Db, installation: &str) -> Option<i64> {
    rows!(
        db,
        (Vec<u8>,),
        "SELECT value FROM plugin_kv WHERE plugin = 'switchboard:long-poll'
         AND installation = $1 AND key = 'cursor'",
        installation
    )
    .into_iter()
    .next()
    .and_then(|(value,)| String::from_utf8(value).ok()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The child processes.

/// A running `switchboard serve`; SIGKILLed and reaped when dropped.
struct Process {
    child: Child,
    base: String,
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
"https://api.telegram.org" = "{fake}"

[delivery]
lease_ms = 1500
poll_interval_ms = 100
first_backoff_ms = 200
max_backoff_ms = 2000

[runs]
window_sweep_ms = 200
stale_after_ms = 3000

# A killed poller's lease runs out within 2 s; the next owner polls from the durable cursor.
[connections]
enabled = true
poll_interval_ms = 200
lease_ttl_ms = 2000
lease_renew_interval_ms = 500
lease_safety_margin_ms = 400
backoff_initial_ms = 200
backoff_max_ms = 1000

[retention]
enabled = false
"#,
            url = self.database_url,
            key = self.key,
            fake = self.fake_origin,
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.log", self.name, self.generation))
    }

    fn base(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.base.clone())
            .unwrap_or_default()
    }

    /// Starts the child on a fresh port and waits until it listens (its own log says so). A
    /// port taken between choosing and binding it is retried with another one.
    async fn start(&mut self) -> Result<(), String> {
        self.generation += 1;
        let stem = format!("{}-{}", self.name, self.generation);
        for attempt in 1..=3 {
            let port = free_port();
            let config = self.dir.join(format!("{stem}.toml"));
            std::fs::write(&config, self.config(port)).unwrap();
            let log_path = self.log_path();
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
            let base = format!("http://127.0.0.1:{port}");
            let mut process = Process {
                child: command.spawn().expect("the switchboard binary starts"),
                base: base.clone(),
            };
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

/// The child logs, sorted by name.
fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

/// Every child log's warnings and errors (at most 40 lines each), for a failure report.
fn log_digest(dir: &Path) -> String {
    let mut out = String::new();
    for log in logs(dir) {
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
        ("leases acquired", "lease acquired"),
        ("stale runs recovered", "stale run"),
        ("claims in flight met", "asking the channel to retry"),
        ("rounds not stored", "could not be stored"),
        ("delivery retries", "delivery failed; retrying"),
        ("errors", "ERROR"),
    ];
    let mut counts = [0usize; EVENTS.len()];
    for log in logs(dir) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
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

/// Adds the polling installation, bound to `echo` with a short debounce window; its
/// on-install learns the bot from the fake's getMe.
async fn install(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let response = http
        .post(format!("{base}/api/installations"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(
            json!({
                "channel": "telegram",
                "name": "crash test",
                "agent": "echo",
                "debounce_ms": 100,
                "config": {"connection": "poll"},
                "secrets": {"bot_token": TOKEN},
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
    if body["config"]["bot_id"].as_str() != Some(BOT_ID.to_string().as_str())
        || body["config"]["bot_username"] != BOT_USERNAME
    {
        return Err(format!(
            "creating the installation: on-install did not learn the bot: {body}"
        ));
    }
    Ok(body["id"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------------
// The load: updates queued at the fake in bursts.

/// The chat of message `i`: the first [`CHATS`] messages open one chat each, the others land
/// in a pseudo-random chat (so some chats get several turns in one window, or turns queued
/// behind a running run).
fn chat_of(i: usize) -> usize {
    if i < CHATS {
        i
    } else {
        ((i as u64).wrapping_mul(2_654_435_761) >> 7) as usize % CHATS
    }
}

/// Chat `n` and the user who writes in it: a private chat, or a group that mentions the bot.
fn member(n: usize) -> (Chat, User) {
    if n < PRIVATE_CHATS {
        let user = User::new(8100 + n as i64, &format!("Private {n}"));
        (Chat::private(&user), user)
    } else {
        let user = User::new(8200 + n as i64, &format!("Member {n}"));
        (Chat::group(-9100 - n as i64, &format!("Group {n}")), user)
    }
}

/// The text of message `i`; its token `m{i:04}` marks it in replies.
fn text_of(i: usize) -> String {
    if chat_of(i) < PRIVATE_CHATS {
        format!("tg crash m{i:04}")
    } else {
        format!("@{BOT_USERNAME} tg crash m{i:04}")
    }
}

/// The tokens `m` + four digits of a text (message numbers).
fn tokens(text: &str) -> BTreeSet<usize> {
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    for at in 0..bytes.len() {
        let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        if bytes[at] == b'm'
            && before_ok
            && at + 5 <= bytes.len()
            && bytes[at + 1..at + 5].iter().all(u8::is_ascii_digit)
            && bytes.get(at + 5).is_none_or(|b| !b.is_ascii_digit())
            && let Ok(n) = text[at + 1..at + 5].parse()
        {
            found.insert(n);
        }
    }
    found
}

/// A queued update.
#[derive(Debug, Clone)]
struct Pushed {
    update_id: i64,
    /// The plugin's message id, `{chat_id}:{message_id}`.
    key: String,
}

#[derive(Default)]
struct Load {
    pushed: Mutex<Vec<Pushed>>,
    count: AtomicUsize,
}

impl Load {
    fn pushed(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last_update_id(&self) -> i64 {
        self.pushed
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.update_id)
            .max()
            .unwrap_or_default()
    }

    /// The message ids of `update_ids`.
    fn keys_of(&self, update_ids: &[i64]) -> Vec<String> {
        let pushed = self.pushed.lock().unwrap();
        let by_id: HashMap<i64, &str> = pushed
            .iter()
            .map(|p| (p.update_id, p.key.as_str()))
            .collect();
        update_ids
            .iter()
            .filter_map(|id| by_id.get(id).map(|k| k.to_string()))
            .collect()
    }
}

/// Queues the load: the first message of every chat, then bursts of [`BURST`] every
/// [`BURST_EVERY`], each burst at once (a held poll answers it in one batch).
async fn push_load(fake: Arc<FakeTelegram>, load: Arc<Load>) {
    let mut next = 0;
    while next < TOTAL {
        let end = if next == 0 {
            CHATS
        } else {
            (next + BURST).min(TOTAL)
        };
        let mut updates = Vec::new();
        let mut pushed = Vec::new();
        for i in next..end {
            let (chat, user) = member(chat_of(i));
            let update = fake.message(&chat, &user, &text_of(i)).build();
            pushed.push(Pushed {
                update_id: update["update_id"].as_i64().unwrap(),
                key: format!("{}:{}", chat.id, update["message"]["message_id"]),
            });
            updates.push(update);
        }
        load.pushed.lock().unwrap().extend(pushed);
        fake.push_built(updates);
        load.count.store(end, Ordering::SeqCst);
        next = end;
        tokio::time::sleep(BURST_EVERY).await;
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
    chat_id: String,
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
            (String, String, String, Option<i64>, Option<String>),
            "SELECT id, chat_id, run_state, flush_due_at_ms, last_error FROM sessions
             WHERE installation_id = $1 ORDER BY id",
            installation
        )
        .into_iter()
        .map(
            |(id, chat_id, run_state, flush_due_at_ms, last_error)| Session {
                id,
                chat_id,
                run_state,
                flush_due_at_ms,
                last_error,
            },
        )
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

    /// Stored user turns by plugin message id (history and queue), with their counts.
    fn user_keys(&self) -> HashMap<String, usize> {
        let mut stored: HashMap<String, usize> = HashMap::new();
        let history = self
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .filter_map(|m| m.channel_message_id.clone());
        for id in history.chain(self.queued.iter().flatten().cloned()) {
            *stored.entry(id).or_insert(0) += 1;
        }
        stored
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

    /// Nothing left to happen in the database (or something went wrong for good).
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
    missing: Vec<String>,
    duplicated: Vec<String>,
    unexpected: Vec<String>,
    stored_user: usize,
    sessions: usize,
    busy: usize,
    errored: Vec<String>,
    armed: usize,
    queued: usize,
    answers: Answers,
    outbox_by_state: BTreeMap<String, usize>,
    outbox_other_kinds: BTreeMap<String, usize>,
    outbox_attempts_max: i64,
    failed_rows: Vec<String>,
    never_delivered: Vec<String>,
    /// Second (third, …) copies of a reply with a kill between the copies' arrivals.
    window_copies: Vec<String>,
    /// Second copies with no kill in between: a reply posted twice.
    posted_twice: Vec<String>,
    /// Copies of a reply in another chat than its session's.
    wrong_chat: Vec<String>,
    /// Messages that are no reply (a placeholder or partial text a crash left behind).
    orphans: Vec<String>,
    /// Such messages sent after the last kill: no crash explains them.
    orphans_unexplained: Vec<String>,
    sent: usize,
    unconfirmed: usize,
    last_offset: Option<i64>,
    last_update: i64,
    fetch_kills: usize,
    /// Messages durable when a fetch kill landed (their batch to come again).
    durable_at_kill: usize,
    /// Those not dropped as duplicates when they came again.
    not_dropped: Vec<String>,
    /// Messages dropped as duplicates (audited).
    dropped: usize,
    replayed_kills: usize,
    partial_kills: usize,
    served_again: usize,
}

impl Check {
    fn new(
        facts: &Facts,
        load: &Load,
        fake: &FakeTelegram,
        kills: &[Instant],
        fetch_kills: &[FetchKill],
        dropped: &HashSet<String>,
    ) -> Check {
        let pushed: Vec<String> = load
            .pushed
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.key.clone())
            .collect();
        let stored = facts.user_keys();
        let missing: Vec<String> = pushed
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
        let pushed_set: HashSet<&String> = pushed.iter().collect();
        let mut unexpected: Vec<String> = stored
            .keys()
            .filter(|id| !pushed_set.contains(id))
            .cloned()
            .collect();
        unexpected.sort();
        let errored: Vec<String> = facts
            .sessions
            .iter()
            .filter(|s| s.run_state == "error")
            .map(|s| format!("{}: {:?}", s.id, s.last_error))
            .collect();

        // Outbox rows of the replies.
        let mut outbox_by_state = BTreeMap::new();
        let mut outbox_other_kinds = BTreeMap::new();
        let mut delivered_rows: HashMap<(&str, &str), usize> = HashMap::new();
        for row in &facts.outbox {
            if row.kind == "reply" {
                *outbox_by_state.entry(row.state.clone()).or_insert(0) += 1;
                if let (Some(text), "delivered") = (&row.text, row.state.as_str()) {
                    *delivered_rows
                        .entry((row.session_id.as_str(), text.as_str()))
                        .or_insert(0) += 1;
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

        // Replies ↔ the messages the fake holds, by the message numbers they echo.
        let chat_of_session: HashMap<&str, &str> = facts
            .sessions
            .iter()
            .map(|s| (s.id.as_str(), s.chat_id.as_str()))
            .collect();
        let replies: Vec<&StoredMessage> = facts
            .messages
            .iter()
            .filter(|m| m.role == "assistant" && m.kind == "message")
            .collect();
        let reply_of_tokens: HashMap<BTreeSet<usize>, usize> = replies
            .iter()
            .enumerate()
            .map(|(n, m)| (tokens(&m.body), n))
            .collect();
        let sent = fake.sent();
        let mut copies: Vec<Vec<&SentMessage>> = vec![Vec::new(); replies.len()];
        let mut orphans = Vec::new();
        let mut orphans_unexplained = Vec::new();
        let last_kill = kills.iter().max().copied();
        for message in &sent {
            let found = tokens(&message.text);
            match reply_of_tokens.get(&found) {
                Some(&n) if !found.is_empty() => copies[n].push(message),
                _ => {
                    let what = format!(
                        "chat {} message {}: {:?}",
                        message.chat_id, message.message_id, message.text
                    );
                    let is_part = message.text == PLACEHOLDER
                        || reply_of_tokens
                            .keys()
                            .any(|t| !found.is_empty() && found.is_subset(t));
                    if !is_part || last_kill.is_none_or(|k| message.received_at > k) {
                        orphans_unexplained.push(what.clone());
                    }
                    orphans.push(what);
                }
            }
        }
        let mut never_delivered = Vec::new();
        let mut window_copies = Vec::new();
        let mut posted_twice = Vec::new();
        let mut wrong_chat = Vec::new();
        for (n, reply) in replies.iter().enumerate() {
            let rows = delivered_rows
                .get(&(reply.session_id.as_str(), reply.body.as_str()))
                .copied()
                .unwrap_or(0);
            let mut posted = copies[n].clone();
            posted.sort_by_key(|m| m.received_at);
            if rows == 0 || posted.is_empty() {
                never_delivered.push(format!(
                    "session {}: {:?} ({rows} delivered rows, posted {} times)",
                    reply.session_id,
                    reply.body,
                    posted.len()
                ));
            }
            let chat = chat_of_session
                .get(reply.session_id.as_str())
                .copied()
                .unwrap_or_default();
            for copy in &posted {
                if copy.chat_id.to_string() != chat {
                    wrong_chat.push(format!(
                        "{:?} posted in chat {}, its session's chat is {chat}",
                        reply.body, copy.chat_id
                    ));
                }
            }
            for pair in posted.windows(2) {
                let (first, again) = (pair[0].received_at, pair[1].received_at);
                let what = format!(
                    "chat {chat}: {:?} as messages {} and {}",
                    reply.body, pair[0].message_id, pair[1].message_id
                );
                if kills.iter().any(|k| first < *k && *k < again) {
                    window_copies.push(what);
                } else {
                    posted_twice.push(what);
                }
            }
        }

        // How often a batch came again: update ids answered by more than one getUpdates.
        let mut served: HashMap<i64, usize> = HashMap::new();
        for answer in fake.served() {
            for id in answer.update_ids {
                *served.entry(id).or_insert(0) += 1;
            }
        }
        Check {
            missing,
            duplicated,
            unexpected,
            stored_user: stored.values().sum(),
            sessions: facts.sessions.len(),
            busy: facts.busy_sessions(),
            errored,
            armed: facts.armed_windows(),
            queued: facts.queued.len(),
            answers: facts.answers(),
            outbox_by_state,
            outbox_other_kinds,
            outbox_attempts_max: facts.outbox.iter().map(|r| r.attempts).max().unwrap_or(0),
            failed_rows,
            never_delivered,
            window_copies,
            posted_twice,
            wrong_chat,
            orphans,
            orphans_unexplained,
            sent: sent.len(),
            unconfirmed: fake.pending_updates(),
            last_offset: fake.last_offset(),
            last_update: load.last_update_id(),
            fetch_kills: fetch_kills.len(),
            durable_at_kill: fetch_kills
                .iter()
                .filter(|f| f.replays())
                .map(|f| f.durable.len())
                .sum(),
            not_dropped: fetch_kills
                .iter()
                .filter(|f| f.replays())
                .flat_map(|f| f.durable.iter())
                .filter(|k| !dropped.contains(*k))
                .cloned()
                .collect(),
            dropped: dropped.len(),
            replayed_kills: fetch_kills.iter().filter(|f| f.replays()).count(),
            partial_kills: fetch_kills
                .iter()
                .filter(|f| f.replays() && f.stored > 0)
                .count(),
            served_again: served.values().filter(|n| **n > 1).count(),
        }
    }

    fn runs_lost(&self) -> usize {
        self.busy + self.errored.len() + self.armed + self.queued + self.answers.unanswered
    }

    fn summary(&self) -> String {
        format!(
            "fetch kills {} ({} before the cursor passed the batch, {} of them with part of \
             the batch stored: {} messages, every one dropped as a duplicate when it came \
             again: {}), updates served again {}, duplicates dropped {}, user messages stored {}, \
             duplicates {} (user messages {}, replies posted twice {}), lost {} (missing {}, \
             runs lost {}, replies never delivered {}), sessions {}, replies {}, reply rows \
             {:?} (max attempts {}), other outbox rows {:?}, messages sent {}, second copies \
             in the crash window {}, placeholders left by a crash {}, offset {:?} past update \
             {}, unconfirmed {}",
            self.fetch_kills,
            self.replayed_kills,
            self.partial_kills,
            self.durable_at_kill,
            self.not_dropped.is_empty(),
            self.served_again,
            self.dropped,
            self.stored_user,
            self.duplicated.len() + self.posted_twice.len(),
            self.duplicated.len(),
            self.posted_twice.len(),
            self.missing.len() + self.runs_lost() + self.never_delivered.len(),
            self.missing.len(),
            self.runs_lost(),
            self.never_delivered.len(),
            self.sessions,
            self.answers.replies,
            self.outbox_by_state,
            self.outbox_attempts_max,
            self.outbox_other_kinds,
            self.sent,
            self.window_copies.len(),
            self.orphans.len(),
            self.last_offset,
            self.last_update,
            self.unconfirmed,
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
                "updates whose message was never stored: {} ({})",
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
            format!("stored messages never queued: {}", few(&self.unexpected)),
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
            self.failed_rows.is_empty() && self.outbox_by_state.keys().all(|s| s == "delivered"),
            format!(
                "reply rows not delivered: {:?} (given up: {})",
                self.outbox_by_state,
                few(&self.failed_rows)
            ),
        );
        check(
            self.posted_twice.is_empty(),
            format!(
                "replies posted twice with no crash between the copies: {} ({})",
                self.posted_twice.len(),
                few(&self.posted_twice)
            ),
        );
        check(
            self.wrong_chat.is_empty(),
            format!("replies in the wrong chat: {}", few(&self.wrong_chat)),
        );
        check(
            self.orphans_unexplained.is_empty(),
            format!(
                "messages that are no reply, not left by a crash: {}",
                few(&self.orphans_unexplained)
            ),
        );
        check(
            self.unconfirmed == 0 && self.last_offset > Some(self.last_update),
            format!(
                "the offset did not pass every update: offset {:?}, last update {}, {} unconfirmed",
                self.last_offset, self.last_update, self.unconfirmed
            ),
        );
        check(
            self.not_dropped.is_empty(),
            format!(
                "messages durable when their batch was cut, not dropped as duplicates when it \
                 came again: {}",
                few(&self.not_dropped)
            ),
        );
        check(
            self.replayed_kills > 0 && self.served_again > 0,
            format!(
                "no kill landed between fetch and store ({} fetch kills, {} updates served again): \
                 the scenario under test did not happen",
                self.fetch_kills, self.served_again
            ),
        );
        problems
    }
}
