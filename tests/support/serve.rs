//! A real `switchboard serve` child process for end-to-end tests: started on a free port with
//! a config file, its log kept in a file, SIGKILLed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child may take to listen (it compiles or loads the cached plugins first).
pub const START_LIMIT: Duration = Duration::from_secs(90);

/// A running `serve` child.
pub struct ServeChild {
    child: Child,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl ServeChild {
    /// Starts `serve` in `dir` with the config `config(port)` renders for a free port, and
    /// waits until it listens. A port taken between choosing and binding it is retried.
    pub async fn start(dir: &Path, config: impl Fn(u16) -> String) -> Result<ServeChild, String> {
        for attempt in 1..=3 {
            let port = free_port();
            let config_path = dir.join(format!("serve-{port}.toml"));
            std::fs::write(&config_path, config(port)).unwrap();
            let log = dir.join(format!("serve-{port}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("SWITCHBOARD_") {
                    command.env_remove(name);
                }
            }
            command
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .current_dir(dir)
                .env("SWITCHBOARD_CACHE_DIR", shared_cache_dir())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file);
            let base = format!("http://127.0.0.1:{port}");
            let mut child = command.spawn().expect("the switchboard binary starts");
            let started = Instant::now();
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains(&format!("switchboard listening on {base}")) {
                    return Ok(ServeChild { child, base, log });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    if text.contains("cannot listen") && attempt < 3 {
                        break;
                    }
                    return Err(format!("serve exited at start ({status}):\n{text}"));
                }
                if started.elapsed() > START_LIMIT {
                    let _ = child.kill();
                    return Err(format!(
                        "serve did not listen within {START_LIMIT:?}:\n{text}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err("no free port could be bound in three attempts".into())
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 50 ms until it finds something; the wait is bounded by `limit` (a
/// test deadline, not a speed claim) and panics naming `what` past it.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let poll = async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(limit, poll).await {
        Ok(found) => found,
        Err(_) => panic!("timed out waiting for {what} ({limit:?})"),
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The plugin artifact cache shared by the suite's children (compiling the bundled plugins
/// once, not per test).
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}
