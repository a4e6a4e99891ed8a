//! How many long connections one host holds, and what each costs: the real `App` (supervisor,
//! leases, connector, wasm Lark plugin) on a SQLite file, with installations added in steps
//! (0 → 100 → 250 → 500 → 1,000 by default). After each step the bench waits until the fake Lark
//! holds every WebSocket, then reports the host's resident memory (VmRSS), the increase per added
//! connection, how long the step took to connect, the host's CPU while idle for a few seconds
//! (pings, lease renewals, supervisor polls), and the ACK latency of one event pushed through the
//! most recently opened connection.
//!
//! The fake Lark runs in a child process (this binary re-executed with `--fake-lark-child`,
//! driven over its stdin/stdout), so the memory and CPU figures are the host's alone.
//!
//! Run: `cargo bench -p switchboard --bench connections` (`-- --steps 100,500,2000` to change the
//! steps).

#[path = "../../tests/support/lark.rs"]
mod lark;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fake_lark::{FakeLark, FakeOptions};
use serde_json::Value;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{Database, NewInstallation, SecretCipher};

/// The child: serves a fake Lark and answers one command per stdin line.
/// `live` → open WebSockets; `push <app_id> <message_id>` → queues one text event, answers its
/// transport id; `ack <transport_id>` → the ACK latency in µs, or `-` while none arrived.
fn fake_child() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The fake's tasks run on the runtime's worker; its methods are synchronous.
    let fake = runtime.block_on(FakeLark::start_with(FakeOptions {
        ack_timeout: Duration::from_secs(30),
        ..FakeOptions::default()
    }));
    let template: Value = serde_json::from_slice(&lark::text_event("om_x", "hello"))?;
    println!("{} {}", fake.origin(), fake.ws_origin());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["live"] => fake.live_connections().to_string(),
            ["push", app_id, message_id] => {
                let mut event = template.clone();
                event["header"]["app_id"] = Value::from(*app_id);
                event["header"]["event_id"] = Value::from(format!("ev_{message_id}"));
                event["event"]["message"]["message_id"] = Value::from(*message_id);
                fake.push_event(app_id, &event)
            }
            ["ack", transport_id] => fake
                .acks()
                .iter()
                .find(|a| a.message_id == *transport_id && a.code == 200)
                .and_then(|a| a.latency)
                .map_or("-".into(), |l| l.as_micros().to_string()),
            _ => format!("unknown command {line:?}"),
        };
        println!("{answer}");
    }
    Ok(())
}

/// The parent's handle on the child.
struct Fake {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    origin: String,
    ws_origin: String,
}

impl Fake {
    fn spawn() -> anyhow::Result<Fake> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--fake-lark-child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().expect("piped");
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        output.read_line(&mut line)?;
        let (origin, ws_origin) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("the fake Lark child said {line:?}"))?;
        Ok(Fake {
            origin: origin.to_string(),
            ws_origin: ws_origin.to_string(),
            child,
            input,
            output,
        })
    }

    fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        writeln!(self.input, "{command}")?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of /proc/self/status in kB (e.g. `VmRSS`).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--fake-lark-child") {
        return fake_child();
    }
    let steps: Vec<usize> = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 250, 500, 1_000]);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut fake = Fake::spawn()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let key = SecretCipher::generate_key_hex();
        let url = format!("sqlite://{}", dir.path().join("connections.db").display());
        let db = Database::connect(&url).await?;
        db.migrate().await?;
        let installations = db.installations(SecretCipher::from_key_str(&key)?);

        let mut config = Config::default();
        config.database.url = url.clone();
        config.secrets.key = Some(key.clone());
        config.plugins.cache_dir = Some(std::env::temp_dir().join("switchboard-bench-cache"));
        config
            .plugins
            .base_urls
            .insert("https://open.feishu.cn".into(), fake.origin.clone());
        config.plugins.base_urls.insert(
            "wss://msg-frontier.feishu.cn".into(),
            fake.ws_origin.clone(),
        );
        config.connections.poll_interval_ms = 500;
        let app = App::from_config(&config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let host = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;

        println!(
            "{:>11} {:>9} {:>12} {:>12} {:>11} {:>13}",
            "connections", "RSS MiB", "KiB per conn", "connect s", "idle CPU %", "ACK latency"
        );
        let mut previous = (0usize, status_kb("VmRSS"));
        println!(
            "{:>11} {:>9.1} {:>12} {:>12} {:>11} {:>13}",
            0,
            previous.1 as f64 / 1024.0,
            "-",
            "-",
            "-",
            "-"
        );
        let mut created = 0usize;
        for &target in &steps {
            let started = Instant::now();
            while created < target {
                created += 1;
                installations
                    .create(
                        &NewInstallation {
                            channel: "lark".into(),
                            routing_key: format!("cli_conn_{created:05}"),
                            name: format!("conn {created}"),
                            config: BTreeMap::from([
                                ("connection".into(), "websocket".into()),
                                ("app_id".into(), format!("cli_conn_{created:05}")),
                                ("bot_open_id".into(), lark::BOT_OPEN_ID.into()),
                            ]),
                            secrets: BTreeMap::from([("app_secret".into(), "s3cret".into())]),
                            debounce_ms: 3_600_000,
                            ..Default::default()
                        },
                        1_731_300_000_000,
                    )
                    .await?;
            }
            loop {
                let live: usize = fake.ask("live")?.parse()?;
                if live >= target {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(300),
                    "only {live} of {target} connections after 300 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let connect = started.elapsed();
            // Idle: pings, lease renewals and supervisor polls only.
            let (cpu_before, idle_started) = (cpu_time(), Instant::now());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let idle_cpu = (cpu_time() - cpu_before).as_secs_f64()
                / idle_started.elapsed().as_secs_f64()
                * 100.0;
            let rss = status_kb("VmRSS");
            let per_connection =
                (rss as f64 - previous.1 as f64) / (target - previous.0).max(1) as f64;
            let transport = fake.ask(&format!(
                "push cli_conn_{created:05} om_conn_probe_{created}"
            ))?;
            let ack = loop {
                let answer = fake.ask(&format!("ack {transport}"))?;
                if let Ok(us) = answer.parse::<u64>() {
                    break Duration::from_micros(us);
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(400),
                    "the probe event on connection {created} was not acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            println!(
                "{:>11} {:>9.1} {:>12.1} {:>12.1} {:>11.1} {:>11.1}ms",
                target,
                rss as f64 / 1024.0,
                per_connection,
                connect.as_secs_f64(),
                idle_cpu,
                ack.as_secs_f64() * 1e3
            );
            previous = (target, rss);
        }
        let _ = stop.send(());
        host.await??;
        db.close().await;
        anyhow::Ok(())
    })
}
