//! The README's operator walkthrough ("Running it: an operator's first hour", issue 19), run as
//! written: every command of its `sh` blocks, in order, through bash, against a fake Telegram.
//!
//! Each block runs in its own `bash -euo pipefail`, with `switchboard` on `PATH` (the binary
//! under test), `HOME` in a temporary directory, and the shell's variables and working
//! directory carried from block to block (so `ID=$(…)` and `cd` work as they would in one
//! terminal). What the test changes, and only that: a `switchboard.toml` in the walkthrough's
//! directory points the Telegram API at the fake and picks a free port, and `127.0.0.1:8080` in
//! the commands is that port. Between blocks the test plays the user: a stranger messages the
//! bot before the pairing block (whose `<code>` is the code the bot sent), and after it the
//! approved user gets an answer. `cargo install` is not run (a 15-minute release build; the
//! suite builds the same binary).

#[path = "support/serve.rs"]
mod serve;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_telegram::{Chat, FakeTelegram, User};

const SECTION: &str = "## Running it: an operator's first hour";
/// The token the walkthrough uses (Telegram's own documentation example).
const BOT_TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
const DEADLINE: Duration = Duration::from_secs(120);

/// The `sh` blocks of the walkthrough section, in order.
fn walkthrough_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find(SECTION)
        .expect("the README has the walkthrough section");
    let section = &readme[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Runs one block in bash with the carried state; returns its output.
fn run_block(block: &str, state: &Path, home: &Path, bin: &Path) -> String {
    let script = format!(
        "set -a\nsource {state}\n{block}\n{{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > {state}\n",
        state = state.display()
    );
    let mut command = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["-euo", "pipefail", "-c", &script])
        .env("HOME", home)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NO_COLOR", "1")
        .env("SWITCHBOARD_CACHE_DIR", serve::shared_cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("this README block did not finish within {DEADLINE:?}:\n{block}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "this README block failed ({}):\n{block}\n--- output ---\n{text}",
        output.status
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_walkthrough_runs_as_written() {
    let blocks = walkthrough_blocks();
    assert_eq!(
        blocks.len(),
        8,
        "the walkthrough's blocks changed; update this test's hooks: {blocks:#?}"
    );
    let fake = FakeTelegram::start(BOT_TOKEN).await;
    let sandbox = tempfile::tempdir().unwrap();
    let home = sandbox.path().join("home");
    let workdir = home.join("switchboard");
    let bin = sandbox.path().join("bin");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_switchboard"), bin.join("switchboard")).unwrap();
    let port = serve::free_port();
    std::fs::write(
        workdir.join("switchboard.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\n\
             [plugins.base_urls]\n\"https://api.telegram.org\" = \"{fake}\"\n\n\
             [connections]\npoll_interval_ms = 200\n",
            fake = fake.base_url(),
        ),
    )
    .unwrap();
    let state = sandbox.path().join("state.sh");
    std::fs::write(&state, "").unwrap();
    let _reaper = Reaper(state.clone());
    let localize = |block: &str| block.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let base = format!("http://127.0.0.1:{port}");
    let stranger = User::new(4242, "Grace");
    let chat = Chat::private(&stranger);

    for (index, block) in blocks.iter().enumerate() {
        if block.trim_start().starts_with("cargo install") {
            continue;
        }
        let mut block = localize(block);
        if block.contains("pairing approve") {
            // The user: a stranger writes to the bot and gets a pairing code.
            fake.message(&chat, &stranger, "hello, may I?").push();
            let code = serve::eventually("the pairing code in the chat", DEADLINE, async || {
                fake.sent_to(chat.id)
                    .into_iter()
                    .find_map(|m| pairing_code(&m.text))
            })
            .await;
            block = block.replace("<code>", &code);
        }
        let output = run_block(&block, &state, &home, &bin);
        eprintln!("README block {index} ok:\n{block}{output}");
        if block.contains("pairing approve") {
            // Approved: the user is told, and their next message is answered by the agent.
            let before = fake.sent_to(chat.id).len();
            serve::eventually("the access-granted notice", DEADLINE, async || {
                (fake.sent_to(chat.id).len() > before).then_some(())
            })
            .await;
            fake.message(&chat, &stranger, "now?").push();
            serve::eventually("the agent's answer", DEADLINE, async || {
                fake.sent_to(chat.id)
                    .into_iter()
                    .find(|m| m.text.contains("now?"))
            })
            .await;
        }
    }
    // `kill "$SERVE_PID"` drained and stopped the host.
    let log = std::fs::read_to_string(workdir.join("serve.log")).unwrap_or_default();
    serve::eventually("serve to stop", DEADLINE, async || {
        Command::new("curl")
            .args(["-fsS", &format!("{base}/healthz")])
            .output()
            .ok()
            .filter(|o| !o.status.success())
    })
    .await;
    assert!(!log.contains("panicked"), "{log}");
}

/// Kills the walkthrough's `serve` (its `SERVE_PID`) if the test ends before the README does.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let state = std::fs::read_to_string(&self.0).unwrap_or_default();
        if let Some(pid) = state.lines().find_map(|l| {
            l.strip_prefix("declare -x SERVE_PID=")
                .map(|v| v.trim_matches('"').to_string())
        }) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

/// The pairing code in a notice: a word of 8 characters of the codes' alphabet.
fn pairing_code(text: &str) -> Option<String> {
    const ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| word.len() == 8 && word.chars().all(|c| ALPHABET.contains(c)))
        .map(str::to_string)
}
