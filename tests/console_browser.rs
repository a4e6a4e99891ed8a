//! Issue 19: the operator console in a real browser.
//!
//! Starts `switchboard serve` as a child process (the real binary, a SQLite database in a temp
//! directory, an admin token, a worker agent, a random port) and runs
//! `tests/console/test_console.py` against it: Debian's Chromium driven by Playwright for
//! Python (`apt-get install chromium`, `pip install playwright==1.65.2`; `.ci/run` installs
//! both, nothing is downloaded at test time). The script signs in (a wrong token refused),
//! adds an installation through the schema form, watches a conversation arrive live on the
//! session page, deletes a queued message and interrupts a run a worker holds, switches the
//! installation to the bound policy with its edit form and approves a pairing code. Screenshots of each step are left in
//! `target/console-screenshots/`. The test fails with the script's output and the host's log
//! when the script fails or runs longer than [`SCRIPT_LIMIT`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "console-browser-admin-token-0123456789";
const AGENT: &str = "team";
const WORKER_TOKEN: &str = "console-browser-worker-token-0123456789";
/// How long the host may take to listen.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long the whole browser script may take.
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);

/// A child process, SIGKILLed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `target/` (the parent of Cargo's per-target temp directory).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside target/")
        .to_path_buf()
}

/// Starts `switchboard serve` in `dir`; its base URL and the log path.
fn start_host(dir: &Path) -> (Process, String, PathBuf) {
    for attempt in 1..=3 {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let config = dir.join(format!("switchboard-{attempt}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:{port}"
public_url = "{base}"
admin_token = "{ADMIN}"

[database]
url = "sqlite://{db}"

[secrets]
key_file = "{key}"

# Replies go to a closed local port: nothing leaves the machine.
[plugins.base_urls]
"https://api.telegram.org" = "http://127.0.0.1:1"

[agents.{AGENT}]
kind = "worker"
token = "{WORKER_TOKEN}"
offline_after_ms = 60000

[connections]
enabled = false

[retention]
enabled = false
"#,
                db = dir.join("switchboard.db").display(),
                key = dir.join("secrets.key").display(),
            ),
        )
        .unwrap();
        let log_path = dir.join(format!("serve-{attempt}.log"));
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
            .current_dir(dir)
            .env(
                "SWITCHBOARD_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut process = Process(command.spawn().expect("the switchboard binary starts"));
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains(&format!("switchboard listening on {base}")) {
                return (process, base, log_path);
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                if text.contains("cannot listen") && attempt < 3 {
                    break; // the port was taken meanwhile: another one
                }
                panic!("serve exited at start ({status}):\n{}", tail(&log_path, 40));
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "serve did not listen within {START_LIMIT:?}:\n{}",
                tail(&log_path, 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    unreachable!("the last attempt returns or panics")
}

#[test]
fn the_console_in_a_real_browser() {
    let chromium =
        std::env::var("SWITCHBOARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the console browser test needs Debian's Chromium \
         (`apt-get install -y chromium`; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_host, base, log) = start_host(dir.path());
    let screenshots = target_dir().join("console-screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/console/test_console.py");
    let output_path = dir.path().join("script.out");
    let output = std::fs::File::create(&output_path).unwrap();
    let mut child = Process(
        Command::new("python3")
            .arg(&script)
            .env("SWITCHBOARD_BASE", &base)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
            .env("SWITCHBOARD_WORKER_AGENT", AGENT)
            .env("SWITCHBOARD_WORKER_TOKEN", WORKER_TOKEN)
            .env("SWITCHBOARD_SCREENSHOTS", &screenshots)
            .env("SWITCHBOARD_CHROMIUM", &chromium)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .expect("python3 starts (the console browser test needs Python 3 with playwright)"),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&output_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            assert!(
                printed.contains("console browser test: all steps passed"),
                "the script exited 0 without finishing:\n{printed}"
            );
            eprintln!("{printed}screenshots in {}", screenshots.display());
        }
        Some(status) => panic!(
            "the browser script failed ({status}):\n{printed}\n--- host log ---\n{}",
            tail(&log, 60)
        ),
        None => panic!(
            "the browser script ran longer than {SCRIPT_LIMIT:?}:\n{printed}\n--- host log ---\n{}",
            tail(&log, 60)
        ),
    }
}
