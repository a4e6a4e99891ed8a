//! Packaging (issue 19): the files an operator deploys with are consistent with the host.
//!
//! - `deploy/switchboard.toml.example` is a configuration the real binary accepts: `migrate`
//!   runs with it (its database and key paths overridden into a temporary directory).
//! - `deploy/switchboard.service` passes `systemd-analyze verify` (with its binary paths pointed
//!   at the binary under test).
//! - The `Dockerfile` builds with the toolchain `rust-toolchain.toml` pins, installs the wasm
//!   target the bundled plugins need, and runs as an unprivileged user; the compose file runs it
//!   on PostgreSQL with an explicit secrets key.
//!
//! No Docker engine runs on the machines this suite runs on, so the image itself is not built
//! here; these checks catch the drift that would break it (a toolchain bump, a renamed flag).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_switchboard");
const DEADLINE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `command` to completion within [`DEADLINE`]; returns (success, stdout + stderr).
fn run(mut command: Command) -> (bool, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > DEADLINE {
            child.kill().ok();
            panic!("{command:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_example_configuration_is_accepted_by_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchboard.db");
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir.path())
        .args(["--config"])
        .arg(repo("deploy/switchboard.toml.example"))
        .arg("migrate")
        .env_remove("SWITCHBOARD_CONFIG")
        .env(
            "SWITCHBOARD_DATABASE__URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .env(
            "SWITCHBOARD_SECRETS__KEY_FILE",
            dir.path().join("secret.key"),
        )
        .env("SWITCHBOARD_AGENTS__CODER__TOKEN", "t".repeat(32));
    let (ok, output) = run(command);
    assert!(ok, "migrate refused the example configuration:\n{output}");
    assert!(
        db.exists(),
        "migrate did not create the database:\n{output}"
    );

    // The same file with a misspelt key is refused, naming it: the example is really read.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        read("deploy/switchboard.toml.example").replace("public_url", "public_ulr"),
    )
    .unwrap();
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir.path())
        .arg("--config")
        .arg(&broken)
        .arg("migrate")
        .env_remove("SWITCHBOARD_CONFIG")
        .env("SWITCHBOARD_AGENTS__CODER__TOKEN", "t".repeat(32));
    let (ok, output) = run(command);
    assert!(!ok, "a misspelt key was accepted:\n{output}");
    assert!(
        output.contains("public_ulr"),
        "the error does not name the key:\n{output}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = read("deploy/switchboard.service").replace("/usr/local/bin/switchboard", BINARY);
    assert!(
        unit.contains(&format!("ExecStart={BINARY} serve")),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("ExecStartPre={BINARY} migrate")),
        "{unit}"
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=switchboard",
    ] {
        assert!(unit.contains(hardening), "the unit lost {hardening}");
    }
    let path = dir.path().join("switchboard.service");
    std::fs::write(&path, unit).unwrap();
    let mut command = Command::new("systemd-analyze");
    command.arg("verify").arg(&path);
    let (ok, output) = run(command);
    // verify reports problems of the unit file itself on stderr; the only tolerated line is
    // about the documentation URL, which is not installed here.
    let problems: Vec<&str> = output
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains("Documentation"))
        .collect();
    assert!(
        ok && problems.is_empty(),
        "systemd-analyze verify:\n{output}"
    );
}

#[test]
fn the_dockerfile_matches_the_pinned_toolchain_and_drops_root() {
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|line| line.strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .expect("rust-toolchain.toml names a channel");
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(
        stages[0].starts_with(&format!("FROM rust:{channel}-")),
        "the build stage must use the pinned toolchain {channel}: {}",
        stages[0]
    );
    assert!(dockerfile.contains("rustup target add wasm32-wasip2"));
    assert!(dockerfile.contains("cargo build --release --locked -p switchboard"));
    let runtime = &dockerfile[dockerfile.rfind("FROM ").unwrap()..];
    let user = runtime
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the runtime stage sets a user");
    assert_ne!(user.trim(), "root");
    assert!(runtime.contains("CMD [\"serve\"]"));

    let compose = read("deploy/compose.yaml");
    assert!(compose.contains("image: postgres:"));
    assert!(compose.contains("SWITCHBOARD_DATABASE__URL: postgres://"));
    assert!(
        compose.contains("SWITCHBOARD_SECRETS__KEY="),
        "PostgreSQL needs an explicit secrets key; the compose file must say how to give it"
    );
    assert!(compose.contains("condition: service_healthy"));
}
