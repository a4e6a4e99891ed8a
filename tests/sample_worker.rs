//! The sample worker (`examples/worker.py`, issue 20) against a real `serve`.
//!
//! A `serve` child with a `worker` agent and a Telegram installation long-polling the fake
//! Telegram; the sample worker runs as the agent author would run it (python3, standard library
//! only). It must:
//! - claim a run, stream its reply as parts and complete it: the reply reaches the chat;
//! - answer an action turn (a button press) naming the button and its value;
//! - do a compaction job an operator asks for (`POST /api/sessions/{id}/compact`) and complete
//!   it with a summary the session then holds;
//! - print one JSON line per claim with its outcome, and exit after `--max-runs`.

#[path = "support/serve.rs"]
mod serve;

use std::process::Stdio;
use std::time::Duration;

use fake_telegram::{Chat, FakeTelegram, User};
use serde_json::{Value, json};

/// The worker process, killed if the test ends early.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ADMIN: &str = "sample-worker-admin-token-0123456789abcdef";
const WORKER_TOKEN: &str = "sample-worker-agent-token-0123456789abcdef";
const BOT_TOKEN: &str = "7000000001:AAE-sample_token";
const DEADLINE: Duration = Duration::from_secs(120);

fn config(port: u16, fake: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"

[database]
url = "sqlite://switchboard.db?mode=rwc"

[plugins.base_urls]
"https://api.telegram.org" = "{fake}"

[delivery]
poll_interval_ms = 100
first_backoff_ms = 200

[runs]
window_sweep_ms = 200

[connections]
poll_interval_ms = 200

[agents.coder]
kind = "worker"
token = "{WORKER_TOKEN}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_worker_streams_replies_answers_actions_and_compacts() {
    let fake = FakeTelegram::start(BOT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let origin = fake.base_url().to_string();
    let serve = serve::ServeChild::start(dir.path(), |port| config(port, &origin))
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{}/api/installations", serve.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(
            json!({
                "channel": "telegram", "name": "sample worker", "agent": "coder",
                "debounce_ms": 100, "config": {"connection": "poll"},
                "secrets": {"bot_token": BOT_TOKEN},
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    let worker_script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/worker.py");
    let mut worker = std::process::Command::new("python3")
        .arg(&worker_script)
        .args([
            "--base-url",
            &serve.base,
            "--agent",
            "coder",
            "--wait-ms",
            "2000",
        ])
        .args(["--max-runs", "3", "--part-delay", "0.01"])
        .env("SWITCHBOARD_WORKER_TOKEN", WORKER_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the sample worker");
    let pipe = std::io::BufReader::new(worker.stdout.take().unwrap());
    let mut worker = KillOnDrop(worker);
    // The worker's JSON lines, read on a thread (std pipes block).
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(pipe).map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next_outcome = async || -> Value {
        let line = tokio::time::timeout(DEADLINE, lines_rx.recv())
            .await
            .expect("the worker reports within the deadline")
            .expect("the worker is still running");
        serde_json::from_str(&line).unwrap()
    };

    // 1. A message: the reply is streamed (parts) and completed into the chat.
    let user = User::new(42, "Ada");
    let chat = Chat::private(&user);
    fake.message(&chat, &user, "hello worker").push();
    let run = next_outcome().await;
    assert_eq!(
        (run["kind"].as_str(), run["outcome"].as_str()),
        (Some("run"), Some("completed"))
    );
    let reply = serve::eventually("the reply in the chat", DEADLINE, async || {
        fake.sent_to(chat.id)
            .into_iter()
            .find(|m| m.text.contains("You said: hello worker"))
    })
    .await;

    // 2. A button press on the bot's reply: an action turn naming the button.
    fake.push_callback_query(&chat, &user, reply.message_id, "deploy:prod");
    let action = next_outcome().await;
    assert_eq!(action["outcome"], "completed", "{action}");
    serve::eventually("the action turn's reply", DEADLINE, async || {
        fake.sent_to(chat.id)
            .into_iter()
            .find(|m| m.text.contains("pressed") && m.text.contains("deploy"))
    })
    .await;

    // 3. An operator asks for a compaction: the worker gets a compaction job and completes it.
    let session_id = run["session"].as_str().unwrap().to_string();
    let compact = http
        .post(format!("{}/api/sessions/{session_id}/compact", serve.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(
        compact.status().is_success(),
        "{}",
        compact.text().await.unwrap()
    );
    let job = next_outcome().await;
    assert_eq!(
        (job["kind"].as_str(), job["outcome"].as_str()),
        (Some("compact"), Some("compacted"))
    );
    // The summary is the session's hidden boundary message now (read from the database).
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("switchboard.db").display()
    ))
    .await
    .unwrap();
    let summary: String = serve::eventually("the compaction summary in the session", DEADLINE, async || {
        sqlx::query_scalar(
            "SELECT body FROM messages WHERE session_id = ? AND kind = 'summary' ORDER BY id DESC LIMIT 1",
        )
        .bind(&session_id)
        .fetch_optional(&db)
        .await
        .unwrap()
    })
    .await;
    assert!(
        summary.contains("Summary of the conversation so far") && summary.contains("hello worker"),
        "{summary}"
    );

    // --max-runs 3: the worker exits by itself, successfully.
    let status =
        serve::eventually("the worker to exit", DEADLINE, async || worker.try_status()).await;
    assert!(
        status.success(),
        "worker exited with {status}\nserve log:\n{}",
        serve.log_tail(40)
    );
}
