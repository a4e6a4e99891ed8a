//! The operator CLI against a real SQLite file: migrate, installations add/list/revoke,
//! bindings add/list/token, keygen — and the errors an operator sees.

use std::path::Path;
use std::process::{Command, Output};

fn switchboard(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(dir)
        .env(
            "SWITCHBOARD_DATABASE__URL",
            format!("sqlite://{}", dir.join("cli.db").display()),
        )
        .env("SWITCHBOARD_SECRETS__KEY_FILE", dir.join("keys/secret.key"))
        .env(
            "SWITCHBOARD_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"),
        )
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn operator_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(stdout(&switchboard(d, &["migrate"])).contains("sqlite"));

    let id = stdout(&switchboard(
        d,
        &[
            "installations",
            "add",
            "--app-id",
            "cli_test_app",
            "--name",
            "Ops bot",
            "--secret",
            "app_secret=s3cr3t-value",
            "--policy",
            "bound",
        ],
    ))
    .trim()
    .to_string();
    assert_eq!(id.len(), 36, "a UUID is printed: {id:?}");
    assert!(
        d.join("keys/secret.key").exists(),
        "the secrets key file is created on first use"
    );

    let list = stdout(&switchboard(d, &["installations", "list"]));
    assert!(
        list.contains(&id)
            && list.contains("cli_test_app")
            && list.contains("bound")
            && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains("s3cr3t-value"), "secrets are never printed");
    let raw = std::fs::read(d.join("cli.db")).unwrap();
    assert!(
        !raw.windows(12).any(|w| w == b"s3cr3t-value"),
        "secrets are encrypted at rest"
    );

    stdout(&switchboard(
        d,
        &["bindings", "add", &id, "ou_alice", "alice@example"],
    ));
    assert!(
        stdout(&switchboard(d, &["bindings", "list", &id])).contains("ou_alice\talice@example")
    );
    let link = stdout(&switchboard(d, &["bindings", "token", &id, "ou_bob"]));
    assert!(
        link.trim().starts_with("http://127.0.0.1:8080/bind?token="),
        "{link}"
    );

    assert!(stdout(&switchboard(d, &["installations", "revoke", &id])).contains("revoked"));
    assert!(stdout(&switchboard(d, &["installations", "list"])).contains("revoked"));

    let missing = switchboard(d, &["installations", "revoke", "no-such-id"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("installations list"),
        "the error says what to do"
    );
    let bad = switchboard(
        d,
        &[
            "installations",
            "add",
            "--app-id",
            "x",
            "--secret",
            "novalue",
        ],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));

    let key = stdout(&switchboard(d, &["keygen"]));
    assert_eq!(key.trim().len(), 64, "32 bytes in hex");
}
