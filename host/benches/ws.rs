//! Long-connection throughput: events per second through one WebSocket into durable storage
//! (SQLite file; PostgreSQL too when `SWITCHBOARD_BENCH_PG_URL` names a database to use), with
//! ACK latency p50/p99 measured by `fake-lark` (frames queued → ACK received), at increasing
//! offered rates. The host is the real `App` (supervisor, connector, wasm Lark plugin, dispatcher);
//! the debounce window is longer than the run, so no agent run competes with ingest.
//!
//! Run: `cargo bench -p switchboard --bench ws` (`-- --events N` to change the count per rate).

#[path = "../../tests/support/lark.rs"]
mod lark;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fake_lark::{FakeLark, FakeOptions};
use serde_json::Value;
use switchboard::app::App;
use switchboard::config::Config;
use switchboard::store::{Database, NewInstallation, SecretCipher};

struct Row {
    backend: String,
    offered: String,
    events: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn run_one(
    key: &str,
    backend: &str,
    url: &str,
    rate: Option<u32>,
    events: usize,
    round: usize,
) -> anyhow::Result<Row> {
    let fake = FakeLark::start_with(FakeOptions {
        ack_timeout: Duration::from_secs(30),
        ..FakeOptions::default()
    })
    .await;
    let db = Database::connect(url).await?;
    db.migrate().await?;
    let app_id = format!("cli_bench_{round}_{}", std::process::id());
    db.installations(SecretCipher::from_key_str(key)?)
        .create(
            &NewInstallation {
                channel: "lark".into(),
                routing_key: app_id.clone(),
                name: "bench".into(),
                config: BTreeMap::from([
                    ("connection".into(), "websocket".into()),
                    ("app_id".into(), app_id.clone()),
                    ("bot_open_id".into(), lark::BOT_OPEN_ID.into()),
                ]),
                secrets: BTreeMap::from([("app_secret".into(), "s3cret".into())]),
                debounce_ms: 3_600_000,
                ..Default::default()
            },
            1_731_300_000_000,
        )
        .await?;
    db.close().await;

    let mut config = Config::default();
    config.database.url = url.to_string();
    config.secrets.key = Some(key.to_string());
    config.plugins.cache_dir = Some(std::env::temp_dir().join("switchboard-bench-cache"));
    config
        .plugins
        .base_urls
        .insert("https://open.feishu.cn".into(), fake.origin().to_string());
    config.plugins.base_urls.insert(
        "wss://msg-frontier.feishu.cn".into(),
        fake.ws_origin().to_string(),
    );
    config.connections.poll_interval_ms = 50;
    let app = App::from_config(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    while fake.live_connections() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Warm the plugin instances and connection pools.
    let template: Value = serde_json::from_slice(&lark::text_event("om_warm", "warm up"))?;
    let mut warm = template.clone();
    warm["header"]["app_id"] = Value::from(app_id.clone());
    fake.push_event(&app_id, &warm);
    while fake.acks().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let mut pacer = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r as f64)));
    for i in 0..events {
        if let Some(pacer) = &mut pacer {
            pacer.tick().await;
        }
        let mut event = template.clone();
        let id = format!("om_bench_{round}_{i}");
        event["header"]["event_id"] = Value::from(format!("ev_{id}"));
        event["header"]["app_id"] = Value::from(app_id.clone());
        event["event"]["message"]["message_id"] = Value::from(id);
        // Spread over chats so sessions differ, like real traffic.
        event["event"]["message"]["chat_id"] = Value::from(format!("oc_bench_{}", i % 16));
        fake.push_event(&app_id, &event);
    }
    while fake.acks().iter().filter(|a| a.code == 200).count() < events + 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "not every event was acknowledged"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = fake
        .acks()
        .iter()
        .skip(1)
        .filter_map(|a| a.latency)
        .collect();
    latencies.sort();
    let _ = stop.send(());
    host.await??;
    Ok(Row {
        backend: backend.to_string(),
        offered: rate.map_or("max".into(), |r| format!("{r}/s")),
        events,
        seconds,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().unwrap(),
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(400usize);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let key = SecretCipher::generate_key_hex();
        let mut backends = vec![];
        let mut round = 0;
        let sqlite_rates = if std::env::var("SWITCHBOARD_BENCH_SKIP_SQLITE").is_ok() {
            vec![]
        } else {
            vec![Some(100), Some(250), Some(500), None]
        };
        for rate in sqlite_rates {
            round += 1;
            let url = format!(
                "sqlite://{}",
                dir.path().join(format!("bench{round}.db")).display()
            );
            backends.push(run_one(&key, "sqlite", &url, rate, events, round).await?);
        }
        if let Ok(pg) = std::env::var("SWITCHBOARD_BENCH_PG_URL") {
            for rate in [Some(100), Some(250), Some(500), None] {
                round += 1;
                backends.push(run_one(&key, "postgres", &pg, rate, events, round).await?);
            }
        }
        println!(
            "{:<9} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9}",
            "backend", "offered", "events", "events/s", "ack p50", "ack p99", "ack max"
        );
        for row in backends {
            println!(
                "{:<9} {:>8} {:>7} {:>10.0} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                row.backend,
                row.offered,
                row.events,
                row.events as f64 / row.seconds,
                row.p50.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.max.as_secs_f64() * 1e3,
            );
        }
        anyhow::Ok(())
    })
}
