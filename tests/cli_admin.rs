//! The operator CLI through the real binary, against real SQLite files: every documented flag of
//! `installations`, `bindings`, `keygen` and `plugins`, the configuration file given with
//! `--config` or `SWITCHBOARD_CONFIG`, `--help` of every subcommand, `serve`'s start-up checks of
//! the operator tokens — and the errors an operator sees.
//!
//! Every run of the binary is bounded in time (killed and failed past [`DEADLINE`]) and must not
//! panic: its stderr never contains "panicked".

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use switchboard::store::{
    Database, Installation, OutboxContent, OutboxTarget, PairingAsk, PairingRequest, SecretCipher,
};

#[path = "support/db.rs"]
mod db;

/// The longest one run of the binary may take (a cold plugin compile included).
const DEADLINE: Duration = Duration::from_secs(120);

/// A command line for the binary in `dir`: no inherited `SWITCHBOARD_*` variables, the database
/// and the secrets key file in `dir`, the tests' shared plugin cache; then `env` (`None` removes
/// a variable).
fn command(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .env(
            "SWITCHBOARD_DATABASE__URL",
            format!("sqlite://{}", dir.join("cli.db").display()),
        )
        .env("SWITCHBOARD_SECRETS__KEY_FILE", dir.join("keys/secret.key"))
        .env("SWITCHBOARD_CACHE_DIR", shared_cache_dir());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
}

fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// Runs the binary to completion within [`DEADLINE`]; fails the test if it panicked.
fn run_env(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut child = command(dir, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = wait_within(&mut child, DEADLINE).unwrap_or_else(|| {
        panic!(
            "`switchboard {}` ran longer than {DEADLINE:?}",
            args.join(" ")
        )
    });
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !err.contains("panicked"),
        "`switchboard {}` panicked:\n{err}",
        args.join(" ")
    );
    output
}

fn run(dir: &Path, args: &[&str]) -> Output {
    run_env(dir, args, &[])
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The child's exit status, or `None` (after killing it) when it outlives `deadline`.
fn wait_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the binary") {
            return Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stdout of a successful run.
fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed ({}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Stderr of a failed run, checking its exit code (1: the command failed; 2: usage error).
fn failure(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// An installation read back from a SQLite file with the library, secrets decrypted.
fn stored_installation(database: &Path, key_file: &Path, id: &str) -> Installation {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = Database::connect(&format!("sqlite://{}", database.display()))
            .await
            .unwrap();
        let key = std::fs::read_to_string(key_file).unwrap();
        let store = db.installations(SecretCipher::from_key_str(key.trim()).unwrap());
        let installation = store
            .get(id)
            .await
            .unwrap()
            .expect("the installation is stored");
        db.close().await;
        installation
    })
}

fn secrets(installation: &Installation) -> BTreeMap<&str, &str> {
    installation
        .secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect()
}

fn config_values(installation: &Installation) -> BTreeMap<&str, &str> {
    installation
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn operator_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(stdout(&run(d, &["migrate"])).contains("sqlite"));

    let added = run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_testapp",
            "--name",
            "Ops bot",
            "--secret",
            "app_secret=s3cr3t-value",
            "--policy",
            "bound",
            // Lark's on-install would call the Open Platform.
            "--skip-on-install",
        ],
    );
    let id = stdout(&added).trim().to_string();
    assert_eq!(id.len(), 36, "a UUID is printed: {id:?}");
    // Skipping on-install leaves the bot's identity unknown: the operator is told what is unset.
    let warning = String::from_utf8_lossy(&added.stderr);
    assert!(
        warning.contains("on-install was skipped")
            && warning.contains("bot_open_id")
            && warning.contains("installations update"),
        "{warning}"
    );
    assert!(
        d.join("keys/secret.key").exists(),
        "the secrets key file is created on first use"
    );

    let list = stdout(&run(d, &["installations", "list"]));
    assert!(
        list.contains(&id)
            && list.contains("cli_testapp")
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

    stdout(&run(
        d,
        &["bindings", "add", &id, "ou_alice", "alice@example"],
    ));
    assert!(stdout(&run(d, &["bindings", "list", &id])).contains("ou_alice\talice@example"));
    let token = run(d, &["bindings", "token", &id, "ou_bob"]);
    let printed = stdout(&token);
    assert_eq!(printed.trim().len(), 43, "a raw token, no link: {printed}");
    assert!(
        !printed.contains("/bind"),
        "nothing serves /bind: {printed}"
    );
    assert!(
        String::from_utf8_lossy(&token.stderr)
            .contains("http://127.0.0.1:8080/api/binding-tokens/redeem"),
        "says how to redeem it"
    );

    assert!(stdout(&run(d, &["installations", "revoke", &id])).contains("revoked"));
    assert!(stdout(&run(d, &["installations", "list"])).contains("revoked"));

    let missing = run(d, &["installations", "revoke", "no-such-id"]);
    assert!(
        failure(&missing, 1).contains("installations list"),
        "the error says what to do"
    );
    let bad = run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_x",
            "--secret",
            "novalue",
            "--skip-on-install",
        ],
    );
    assert!(failure(&bad, 1).contains("KEY=VALUE"));

    let key = stdout(&run(d, &["keygen"]));
    assert_eq!(key.trim().len(), 64, "32 bytes in hex");
}

/// A directory holding the `testing` plugin (for `--plugins-dir`).
fn testing_plugins_dir(d: &Path) -> String {
    let dir = d.join("plugins.d");
    if !dir.exists() {
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(
            Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR)
                .join("switchboard_testing.wasm"),
            dir.join("switchboard_testing.wasm"),
        )
        .unwrap();
    }
    dir.to_str().unwrap().to_owned()
}

/// `installations add` with every documented flag stores each value where it belongs; without
/// the optional ones it stores the documented defaults.
#[test]
fn installations_add_stores_every_documented_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let output = run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_everyflag",
            "--name",
            "Every flag",
            "--config-value",
            "bot_open_id=ou_bot_open",
            "--config-value",
            "bot_union_id=on_bot_union",
            "--secret",
            "app_secret=app-secret-1",
            "--secret",
            "encrypt_key=encrypt-key-1",
            "--secret",
            "verification_token=verification-token-1",
            "--config-value",
            "base_url=https://open.larksuite.com",
            "--config-value",
            "locale=en",
            "--policy",
            "bound",
            "--agent",
            "echo",
            "--debounce-ms",
            "1500",
            "--skip-on-install",
        ],
    );
    let id = stdout(&output).trim().to_string();
    assert_eq!(id.len(), 36, "a UUID is printed: {id:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("/hooks/lark/{id}")), "{stderr}");

    let stored = stored_installation(&d.join("cli.db"), &d.join("keys/secret.key"), &id);
    // The routing key is the value of the config key the plugin's schema names (`app_id`).
    assert_eq!(
        (
            stored.channel.as_str(),
            stored.routing_key.as_str(),
            stored.name.as_str()
        ),
        ("lark", "cli_everyflag", "Every flag")
    );
    // The bot's ids are ordinary config values now, and on-install added nothing.
    assert_eq!(
        config_values(&stored),
        BTreeMap::from([
            ("app_id", "cli_everyflag"),
            ("base_url", "https://open.larksuite.com"),
            ("bot_open_id", "ou_bot_open"),
            ("bot_union_id", "on_bot_union"),
            ("locale", "en"),
        ])
    );
    assert_eq!(
        secrets(&stored),
        BTreeMap::from([
            ("app_secret", "app-secret-1"),
            ("encrypt_key", "encrypt-key-1"),
            ("verification_token", "verification-token-1"),
        ])
    );
    assert_eq!(stored.access_policy.as_str(), "bound");
    assert_eq!(stored.agent, "echo");
    assert_eq!(stored.debounce_ms, 1500);

    // An explicit --routing-key wins over the schema's key.
    let id = stdout(&run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--routing-key",
            "explicit-key",
            "--config-value",
            "app_id=cli_routed",
            "--secret",
            "app_secret=x",
            "--skip-on-install",
        ],
    ))
    .trim()
    .to_string();
    let stored = stored_installation(&d.join("cli.db"), &d.join("keys/secret.key"), &id);
    assert_eq!(stored.routing_key, "explicit-key");

    // Only the required flag, on a channel whose schema asks for nothing: the documented
    // defaults, and the plugin's on-install ran (the `testing` plugin stores the webhook URL it
    // was told: the public URL and the channel's hooks path).
    let plugins = testing_plugins_dir(d);
    let id = stdout(&run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "testing",
            "--plugins-dir",
            &plugins,
        ],
    ))
    .trim()
    .to_string();
    let stored = stored_installation(&d.join("cli.db"), &d.join("keys/secret.key"), &id);
    assert_eq!(stored.channel, "testing");
    assert_eq!(stored.name, "");
    assert_eq!(stored.access_policy.as_str(), "open");
    assert_eq!(stored.agent, "echo");
    assert_eq!(stored.debounce_ms, 3000);
    assert!(stored.secrets.is_empty());
    // on-install is told the installation's own URL, before the row exists.
    let own_url = format!("http://127.0.0.1:8080/hooks/testing/{id}");
    assert_eq!(
        config_values(&stored),
        BTreeMap::from([("webhook_url", own_url.as_str())]),
        "learned by on-install"
    );
    assert_eq!(
        stored.routing_key, stored.id,
        "no routing key in the schema: the installation's id"
    );
    // --skip-on-install: the plugin is not asked.
    let id = stdout(&run(
        d,
        &[
            "installations",
            "add",
            "--channel",
            "testing",
            "--plugins-dir",
            &plugins,
            "--skip-on-install",
        ],
    ))
    .trim()
    .to_string();
    let stored = stored_installation(&d.join("cli.db"), &d.join("keys/secret.key"), &id);
    assert!(stored.config.is_empty(), "{:?}", stored.config);

    let list = stdout(&run(d, &["installations", "list"]));
    assert!(list.starts_with("ID "), "a header line: {list}");
    assert_eq!(
        list.lines().count(),
        5,
        "header + four installations: {list}"
    );
    assert!(
        list.contains("cli_everyflag") && list.contains("explicit-key"),
        "{list}"
    );
    assert!(
        list.contains("Every flag") && !list.contains("app-secret-1"),
        "{list}"
    );
}

/// `installations add` checks the values against the plugin's installation schema before it
/// stores anything, and says what the channel takes.
#[test]
fn installations_add_refuses_values_outside_the_plugin_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lark = |extra: &[&str]| -> Output {
        let args: Vec<&str> = ["installations", "add", "--channel", "lark"]
            .iter()
            .chain(extra)
            .chain(&["--skip-on-install"])
            .copied()
            .collect();
        run(d, &args)
    };
    let missing = failure(&lark(&["--secret", "app_secret=x"]), 1);
    assert!(
        missing.contains("config `app_id` is required") && missing.contains("lark takes:"),
        "{missing}"
    );
    let no_secret = failure(&lark(&["--config-value", "app_id=cli_ok"]), 1);
    assert!(
        no_secret.contains("secret `app_secret` is required"),
        "{no_secret}"
    );
    let pattern = failure(
        &lark(&[
            "--config-value",
            "app_id=not-an-app",
            "--secret",
            "app_secret=x",
        ]),
        1,
    );
    assert!(
        pattern.contains("config `app_id` is \"not-an-app\", which does not match"),
        "{pattern}"
    );
    let unknown = failure(
        &lark(&[
            "--config-value",
            "app_id=cli_ok",
            "--config-value",
            "colour=blue",
            "--secret",
            "app_secret=x",
            "--secret",
            "pin=1234",
        ]),
        1,
    );
    assert!(
        unknown.contains("config `colour` is not a key of this channel")
            && unknown.contains("secret `pin` is not a key of this channel")
            && unknown.contains("app_id"),
        "{unknown}"
    );
    // A secret's value is never repeated in the message.
    let encrypt = failure(
        &lark(&[
            "--config-value",
            "app_id=cli_ok",
            "--secret",
            "app_secret=hunter2-secret-value",
            "--config-value",
            "bot_open_id=bad",
        ]),
        1,
    );
    assert!(
        !encrypt.contains("hunter2-secret-value"),
        "a secret is echoed: {encrypt}"
    );
    let channel = failure(&run(d, &["installations", "add", "--channel", "nope"]), 1);
    assert!(
        channel.contains("no loaded plugin serves channel `nope`")
            && channel.contains("plugins list"),
        "{channel}"
    );
    // Nothing was stored.
    let list = stdout(&run(d, &["installations", "list"]));
    assert_eq!(list.lines().count(), 1, "only the header: {list}");
}

/// Issue 19 from the command line, on SQLite and PostgreSQL: `installations show`, `update`
/// (schema, agents), `rotate-secret` (declared names only, re-sealed, the old value gone),
/// `revoke` → `add` of the same app id refused with the advice to `restore` → `restore`; and
/// `pairing list|approve|deny` on codes senders got.
#[test]
fn installation_lifecycle_and_pairing_from_the_command_line() {
    // One runtime for the library's side of the test (the test databases' pools live on it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let databases = runtime.block_on(db::test_databases());
    for test_db in &databases {
        let name = &test_db.name;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = SecretCipher::generate_key_hex();
        let env: &[(&str, Option<&str>)] = &[
            ("SWITCHBOARD_DATABASE__URL", Some(test_db.url.as_str())),
            ("SWITCHBOARD_SECRETS__KEY", Some(key.as_str())),
            ("SWITCHBOARD_AGENTS__NIGHT__KIND", Some("echo")),
        ];
        let sb = |args: &[&str]| run_env(d, args, env);
        let add = |extra: &[&str]| -> Output {
            let args: Vec<&str> = [
                "installations",
                "add",
                "--channel",
                "lark",
                "--config-value",
                "app_id=cli_lifecycle",
                "--secret",
                "app_secret=first-app-secret",
                "--secret",
                "encrypt_key=first-encrypt-key",
                "--skip-on-install",
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect();
            sb(&args)
        };
        let unknown_agent = failure(&add(&["--agent", "nosuchagent"]), 1);
        assert!(
            unknown_agent.contains("no agent `nosuchagent`")
                && unknown_agent.contains("echo, night"),
            "{name}: {unknown_agent}"
        );
        let id = stdout(&add(&["--agent", "night"])).trim().to_string();

        let show = stdout(&sb(&["installations", "show", &id]));
        for line in [
            "app_id = cli_lifecycle",
            "secrets:     app_secret, encrypt_key",
            "agent:       night",
            "policy:      open",
            "status:      active",
            "debounce ms: 3000",
        ] {
            assert!(show.contains(line), "{name}: {line:?} in:\n{show}");
        }
        assert!(
            !show.contains("first-app-secret"),
            "{name}: no secret value"
        );
        assert!(
            failure(&sb(&["installations", "show", "no-such-id"]), 1)
                .contains("installations list")
        );

        let update = |extra: &[&str]| -> Output {
            let args: Vec<&str> = ["installations", "update", id.as_str()]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            sb(&args)
        };
        let refused = failure(&update(&["--agent", "nosuchagent"]), 1);
        assert!(refused.contains("echo, night"), "{name}: {refused}");
        let refused = failure(&update(&["--config-value", "colour=blue"]), 1);
        assert!(
            refused.contains("`colour` is not a key"),
            "{name}: {refused}"
        );
        let refused = failure(&update(&["--unset-config", "app_id"]), 1);
        assert!(
            refused.contains("`app_id` is required"),
            "{name}: {refused}"
        );
        let refused = failure(&update(&[]), 1);
        assert!(refused.contains("nothing to change"), "{name}: {refused}");
        let updated = stdout(&update(&[
            "--name",
            "Renamed",
            "--policy",
            "bound",
            "--agent",
            "echo",
            "--debounce-ms",
            "1500",
            "--config-value",
            "locale=zh-CN",
        ]));
        for line in [
            "name:        Renamed",
            "policy:      bound",
            "agent:       echo",
            "debounce ms: 1500",
            "locale = zh-CN",
            "app_id = cli_lifecycle",
        ] {
            assert!(updated.contains(line), "{name}: {line:?} in:\n{updated}");
        }

        let refused = failure(
            &sb(&["installations", "rotate-secret", &id, "--secret", "pin=1"]),
            1,
        );
        assert!(
            refused.contains("`pin` is not a secret of channel `lark`")
                && refused.contains("verification_token"),
            "{name}: {refused}"
        );
        let rotated = stdout(&sb(&[
            "installations",
            "rotate-secret",
            &id,
            "--secret",
            "encrypt_key=second-encrypt-key",
        ]));
        assert!(rotated.contains("encrypt_key"), "{name}: {rotated}");
        let stored = runtime.block_on(async {
            let db = Database::connect(&test_db.url).await.unwrap();
            let store = db.installations(SecretCipher::from_key_str(&key).unwrap());
            let stored = store.get(&id).await.unwrap().unwrap();
            db.close().await;
            stored
        });
        assert_eq!(
            secrets(&stored),
            BTreeMap::from([
                ("app_secret", "first-app-secret"),
                ("encrypt_key", "second-encrypt-key")
            ]),
            "{name}"
        );

        stdout(&sb(&["installations", "revoke", &id]));
        let again = failure(&add(&[]), 1);
        assert!(
            again.contains(&format!("installations restore {id}")),
            "{name}: {again}"
        );
        let restored = stdout(&sb(&["installations", "restore", &id, "--skip-on-install"]));
        assert!(restored.contains("active"), "{name}: {restored}");
        assert!(stdout(&sb(&["installations", "show", &id])).contains("status:      active"));

        // Pairing: two senders asked for access (as the dispatcher records them).
        let code_of = |sender: &str| -> String {
            runtime.block_on(async {
                let db = Database::connect(&test_db.url).await.unwrap();
                let target = OutboxTarget {
                    chat_id: format!("oc_{sender}"),
                    chat_type: "direct".into(),
                    thread_id: None,
                    reply_to: None,
                    in_thread: false,
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let asked = db
                    .pairings()
                    .request(
                        &PairingRequest {
                            installation_id: &id,
                            sender_id: sender,
                            sender_alt_ids: &[],
                            sender_name: Some("Sender Name"),
                            target: &target,
                        },
                        now,
                    )
                    .await
                    .unwrap();
                db.close().await;
                match asked {
                    PairingAsk::Code { code, .. } => code,
                    PairingAsk::Full => panic!("{name}: full"),
                }
            })
        };
        let (alice, bob) = (code_of("ou_alice"), code_of("ou_bob"));
        let list = stdout(&sb(&["pairing", "list"]));
        assert!(
            list.contains("ou_alice") && list.contains("ou_bob") && list.contains("Sender Name"),
            "{name}: {list}"
        );
        assert!(
            !list.contains(&alice) && !list.contains(&bob),
            "{name}: no codes: {list}"
        );
        let other = stdout(&sb(&["pairing", "list", "--installation", "other"]));
        assert_eq!(other.lines().count(), 1, "{name}: only the header: {other}");

        let wrong = failure(&sb(&["pairing", "approve", "ZZZZ2222"]), 1);
        assert!(
            wrong.contains("no pairing has the code") && wrong.contains("pairing list"),
            "{name}: {wrong}"
        );
        let approved = stdout(&sb(&[
            "pairing",
            "approve",
            &alice,
            "--user-ref",
            "alice@corp",
        ]));
        assert!(approved.contains("ou_alice"), "{name}: {approved}");
        let bindings = stdout(&sb(&["bindings", "list", &id]));
        assert!(
            bindings.contains("ou_alice\talice@corp"),
            "{name}: {bindings}"
        );
        let twice = failure(&sb(&["pairing", "approve", &alice]), 1);
        assert!(twice.contains("approved already"), "{name}: {twice}");
        let denied = stdout(&sb(&["pairing", "deny", &bob]));
        assert!(denied.contains("ou_bob"), "{name}: {denied}");
        assert!(!stdout(&sb(&["bindings", "list", &id])).contains("ou_bob"));
        assert_eq!(
            stdout(&sb(&["pairing", "list"])).lines().count(),
            1,
            "{name}"
        );

        // The granted notice waits in the outbox for the serving host, in alice's chat.
        let rows = runtime.block_on(async {
            let db = Database::connect(&test_db.url).await.unwrap();
            let rows = db.outbox().list(None, None, 10).await.unwrap();
            db.close().await;
            rows
        });
        let granted: Vec<_> = rows
            .iter()
            .filter(|r| {
                matches!(&r.content, OutboxContent::Notice { notice }
                    if notice["text_key"] == "pairing_approved"
                        && notice["recipient"] == "ou_alice")
            })
            .collect();
        assert_eq!(granted.len(), 1, "{name}: {rows:?}");
        assert_eq!(granted[0].target.chat_id, "oc_ou_alice", "{name}");
    }
    runtime.block_on(async move { drop(databases) });
}

/// The crash: `--config-value` beside a configuration file, given as `--config FILE`
/// (before or after the subcommand) or as `SWITCHBOARD_CONFIG`. The file is really read: the
/// installations land in the database it names, and binding links use its public URL.
#[test]
fn installations_add_reads_the_config_file_from_the_flag_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("operator.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\npublic_url = \"https://switchboard.example\"\n\
             [database]\nurl = \"sqlite://{}\"\n\
             [secrets]\nkey_file = \"{}\"\n",
            d.join("from-file.db").display(),
            d.join("from-file.key").display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // Only the file names the database and the key: the environment does not.
    let no_env: &[(&str, Option<&str>)] = &[
        ("SWITCHBOARD_DATABASE__URL", None),
        ("SWITCHBOARD_SECRETS__KEY_FILE", None),
    ];
    let with_env_file: Vec<(&str, Option<&str>)> = no_env
        .iter()
        .copied()
        .chain([("SWITCHBOARD_CONFIG", Some(file))])
        .collect();

    let add = |args: &[&str], env: &[(&str, Option<&str>)]| -> String {
        stdout(&run_env(d, args, env)).trim().to_string()
    };
    let after = add(
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_flagafter",
            "--secret",
            "app_secret=after",
            "--config-value",
            "locale=en",
            "--skip-on-install",
            "--config",
            file,
        ],
        no_env,
    );
    let before = add(
        &[
            "--config",
            file,
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_flagbefore",
            "--config-value",
            "base_url=https://open.larksuite.com",
            "--secret",
            "app_secret=from-file-secret",
            "--skip-on-install",
        ],
        no_env,
    );
    let from_env = add(
        &[
            "installations",
            "add",
            "--channel",
            "lark",
            "--config-value",
            "app_id=cli_env",
            "--secret",
            "app_secret=env",
            "--config-value",
            "locale=zh",
            "--skip-on-install",
        ],
        &with_env_file,
    );

    let database = d.join("from-file.db");
    let key = d.join("from-file.key");
    assert!(
        database.exists() && key.exists(),
        "the file's paths are used"
    );
    assert!(
        !d.join("cli.db").exists(),
        "nothing went to the default database"
    );
    for (id, expected) in [
        (
            &after,
            BTreeMap::from([("app_id", "cli_flagafter"), ("locale", "en")]),
        ),
        (
            &before,
            BTreeMap::from([
                ("app_id", "cli_flagbefore"),
                ("base_url", "https://open.larksuite.com"),
            ]),
        ),
        (
            &from_env,
            BTreeMap::from([("app_id", "cli_env"), ("locale", "zh")]),
        ),
    ] {
        let stored = stored_installation(&database, &key, id);
        assert_eq!(config_values(&stored), expected, "{}", stored.routing_key);
    }
    let stored = stored_installation(&database, &key, &before);
    assert_eq!(
        secrets(&stored),
        BTreeMap::from([("app_secret", "from-file-secret")])
    );

    for env in [no_env, &with_env_file] {
        let args: &[&str] = if env.len() == no_env.len() {
            &["installations", "list", "--config", file]
        } else {
            &["installations", "list"]
        };
        let list = stdout(&run_env(d, args, env));
        for app in ["cli_flagafter", "cli_flagbefore", "cli_env"] {
            assert!(list.contains(app), "{app} in:\n{list}");
        }
    }
    let token = run_env(
        d,
        &["bindings", "token", &from_env, "ou_carol"],
        &with_env_file,
    );
    stdout(&token);
    let hint = String::from_utf8_lossy(&token.stderr);
    assert!(
        hint.contains("https://switchboard.example/api/binding-tokens/redeem"),
        "the file's public_url: {hint}"
    );

    // A missing file is an error, by flag or by environment, not a fallback to defaults.
    let missing = d.join("missing.toml");
    let missing = missing.to_str().unwrap();
    let by_flag = run(d, &["--config", missing, "installations", "list"]);
    assert!(failure(&by_flag, 1).contains("does not exist"));
    let by_env = run_env(
        d,
        &["installations", "list"],
        &[("SWITCHBOARD_CONFIG", Some(missing))],
    );
    assert!(failure(&by_env, 1).contains("does not exist"));
    // A misspelt key is named.
    std::fs::write(d.join("typo.toml"), "[database]\nurll = \"x\"\n").unwrap();
    let typo = run(d, &["--config", "typo.toml", "installations", "list"]);
    let stderr = failure(&typo, 1);
    assert!(
        stderr.contains("invalid configuration") && stderr.contains("urll"),
        "{stderr}"
    );
}

/// Wrong input: usage errors exit 2 with clap's message, refused operations exit 1 and say what
/// to do; nothing panics.
#[test]
fn wrong_input_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = [
        "installations",
        "add",
        "--channel",
        "lark",
        "--config-value",
        "app_id=cli_x",
        "--secret",
        "app_secret=x",
        "--skip-on-install",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        add.iter().chain(extra).copied().collect()
    };

    let policy = run(d, &with(&["--policy", "nobody"]));
    let stderr = failure(&policy, 2);
    assert!(
        stderr.contains("nobody") && stderr.contains("open") && stderr.contains("bound"),
        "{stderr}"
    );
    let debounce = run(d, &with(&["--debounce-ms", "soon"]));
    assert!(failure(&debounce, 2).contains("--debounce-ms"));
    let no_channel = run(d, &["installations", "add", "--name", "x"]);
    assert!(failure(&no_channel, 2).contains("--channel"));
    let config_value = run(d, &with(&["--config-value", "novalue"]));
    assert!(
        failure(&config_value, 1).contains("--config-value \"novalue\": write it as KEY=VALUE")
    );
    let no_id = run(d, &["installations", "revoke"]);
    assert!(failure(&no_id, 2).contains("<ID>"));
    let unknown = run(d, &["installations", "frobnicate"]);
    assert!(failure(&unknown, 2).contains("frobnicate"));
    for args in [
        &["bindings", "add", "no-such", "ou_a", "a@example"][..],
        &["bindings", "list", "no-such"],
        &["bindings", "token", "no-such", "ou_a"],
    ] {
        let stderr = failure(&run(d, args), 1);
        assert!(
            stderr.contains("no installation `no-such`") && stderr.contains("installations list"),
            "{args:?}: {stderr}"
        );
    }
    let log = run(d, &["--log", "bad[filter", "keygen"]);
    assert!(failure(&log, 2).contains("invalid --log filter"));
    let format = run(d, &["--log-format", "xml", "keygen"]);
    assert!(failure(&format, 2).contains("xml"));
}

#[test]
fn keygen_prints_a_fresh_usable_key_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = stdout(&run(d, &["keygen"])).trim().to_string();
    let second = stdout(&run(
        d,
        &["--log-format", "json", "--log", "debug", "keygen"],
    ))
    .trim()
    .to_string();
    for key in [&first, &second] {
        assert_eq!(key.len(), 64, "32 bytes in hex: {key:?}");
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key:?}");
        SecretCipher::from_key_str(key).expect("usable as secrets.key");
    }
    assert_ne!(first, second, "a fresh key each time");
    assert!(!d.join("cli.db").exists(), "keygen opens no database");
}

/// `plugins list|inspect`, as a table and as JSON, with the bundled plugin, a plugins directory
/// (flag and environment), a cache directory of its own and `--no-cache`.
#[test]
fn plugins_list_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let list = stdout(&run(d, &["plugins", "list"]));
    assert!(list.starts_with("NAME"), "{list}");
    let lark = list
        .lines()
        .find(|l| l.starts_with("lark "))
        .unwrap_or_else(|| panic!("no lark line in:\n{list}"));
    assert!(
        lark.contains("bundled") && lark.contains("healthy"),
        "{lark}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(d, &["plugins", "list", "--json"]))).unwrap();
    let plugins = json.as_array().expect("a JSON array");
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["lark", "slack", "telegram"], "{json}");
    assert_eq!(plugins[0]["channel"], "lark");
    assert!(
        plugins[0]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&"http".into()),
        "{json}"
    );

    let text = stdout(&run(d, &["plugins", "inspect", "lark"]));
    assert!(text.starts_with("lark 0.2.0"), "{text}");
    for part in [
        "channel:",
        "contract:     switchboard:channel@0.2.0",
        "sha256:",
        "switchboard:channel/decoder@0.2.0",
        "switchboard:channel/lifecycle@0.2.0",
        "switchboard:channel/crypto@0.2.0",
    ] {
        assert!(text.contains(part), "{part} in:\n{text}");
    }

    // A cache directory of its own: compiled on the first run, loaded from it on the second;
    // --no-cache compiles every time.
    let cache = d.join("own-cache");
    let cache = cache.to_str().unwrap();
    let inspect = |extra: &[&str]| -> serde_json::Value {
        let args: Vec<&str> = extra
            .iter()
            .copied()
            .chain(["plugins", "inspect", "lark", "--json"])
            .collect();
        serde_json::from_str(&stdout(&run(d, &args))).unwrap()
    };
    let first = inspect(&["--cache-dir", cache]);
    assert_eq!(first["name"], "lark");
    assert_eq!(first["loaded_from_cache"], false, "{first}");
    assert_eq!(inspect(&["--cache-dir", cache])["loaded_from_cache"], true);
    assert_eq!(inspect(&["--no-cache"])["loaded_from_cache"], false);
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64);

    // A plugins directory, by flag and by environment.
    let plugins_dir = d.join("plugins.d");
    std::fs::create_dir(&plugins_dir).unwrap();
    std::fs::copy(
        Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR).join("switchboard_testing.wasm"),
        plugins_dir.join("switchboard_testing.wasm"),
    )
    .unwrap();
    let plugins_dir = plugins_dir.to_str().unwrap();
    let list = stdout(&run(d, &["plugins", "list", "--plugins-dir", plugins_dir]));
    assert!(
        list.lines().any(|l| l.starts_with("testing ")) && list.contains("lark"),
        "{list}"
    );
    let testing = stdout(&run_env(
        d,
        &["plugins", "inspect", "testing"],
        &[("SWITCHBOARD_PLUGINS_DIR", Some(plugins_dir))],
    ));
    assert!(testing.starts_with("testing 0.2.0"), "{testing}");

    let missing_dir = run(d, &["plugins", "list", "--plugins-dir", "no-such-dir"]);
    assert!(failure(&missing_dir, 1).contains("--plugins-dir"));
    let unknown = run(d, &["plugins", "inspect", "nope"]);
    let stderr = failure(&unknown, 1);
    assert!(
        stderr.contains("no plugin named `nope`") && stderr.contains("loaded: lark"),
        "{stderr}"
    );
}

/// Issue 19: every command reads the one configuration the same way — `--config`,
/// `SWITCHBOARD_CONFIG` or `switchboard.toml` in the working directory, then
/// `SWITCHBOARD_<SECTION>__<KEY>` — and honours it: `[plugins] dir` is what `plugins list`,
/// `plugins inspect` and `replay` load; an explicit file that does not exist, an unknown key in
/// the file or in the environment stop every command with what is wrong.
#[test]
fn every_command_reads_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plugins = testing_plugins_dir(d);
    let file = d.join("custom.toml");
    std::fs::write(&file, format!("[plugins]\ndir = {plugins:?}\n")).unwrap();
    let file = file.to_str().unwrap();

    let list = stdout(&run(d, &["plugins", "list", "--config", file]));
    assert!(
        list.lines().any(|l| l.starts_with("testing ")) && list.contains("lark"),
        "the file's plugins dir: {list}"
    );
    let list = stdout(&run_env(
        d,
        &["plugins", "list"],
        &[("SWITCHBOARD_CONFIG", Some(file))],
    ));
    assert!(list.lines().any(|l| l.starts_with("testing ")), "{list}");
    let inspect = stdout(&run(
        d,
        &["--config", file, "plugins", "inspect", "testing"],
    ));
    assert!(inspect.starts_with("testing 0.2.0"), "{inspect}");
    let plain = stdout(&run(d, &["plugins", "list"]));
    assert!(
        !plain.lines().any(|l| l.starts_with("testing ")),
        "no file, no plugins dir: {plain}"
    );
    // The environment's sectioned variable names the directory too.
    let list = stdout(&run_env(
        d,
        &["plugins", "list"],
        &[("SWITCHBOARD_PLUGINS__DIR", Some(plugins.as_str()))],
    ));
    assert!(list.lines().any(|l| l.starts_with("testing ")), "{list}");
    // So does switchboard.toml in the working directory.
    let cwd = d.join("project");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::write(
        cwd.join("switchboard.toml"),
        format!("[plugins]\ndir = {plugins:?}\n"),
    )
    .unwrap();
    let list = stdout(&run(&cwd, &["plugins", "list"]));
    assert!(list.lines().any(|l| l.starts_with("testing ")), "{list}");
    let input = cwd.join("echo.json");
    std::fs::write(
        &input,
        format!(
            "{{\"frame\": {{\"hex\": \"{}\"}}}}",
            hex::encode("echo:from the configured dir")
        ),
    )
    .unwrap();
    let replayed = stdout(&run(
        &cwd,
        &["replay", "--plugin", "testing", input.to_str().unwrap()],
    ));
    assert!(
        replayed.contains("from the configured dir"),
        "replay loads the configured plugins: {replayed}"
    );

    // An explicit file that does not exist stops every command.
    let missing = d.join("nonexistent.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        &["demo"][..],
        &["keygen"],
        &["plugins", "list"],
        &["plugins", "inspect", "lark"],
        &["installations", "list"],
        &["pairing", "list"],
        &["migrate"],
    ] {
        let with: Vec<&str> = args.iter().copied().chain(["--config", missing]).collect();
        let stderr = failure(&run(d, &with), 1);
        assert!(
            stderr.contains("nonexistent.toml") && stderr.contains("does not exist"),
            "{args:?}: {stderr}"
        );
    }
    let stderr = failure(
        &run_env(d, &["demo"], &[("SWITCHBOARD_CONFIG", Some(missing))]),
        1,
    );
    assert!(stderr.contains("does not exist"), "{stderr}");

    // Unknown keys are refused, in the file and in the environment.
    let typo = d.join("typo.toml");
    std::fs::write(&typo, "[plugins]\ndirectory = \"plugins.d\"\n").unwrap();
    let typo = typo.to_str().unwrap();
    for args in [&["plugins", "list"][..], &["keygen"], &["demo"]] {
        let with: Vec<&str> = args.iter().copied().chain(["--config", typo]).collect();
        let stderr = failure(&run(d, &with), 1);
        assert!(stderr.contains("directory"), "{args:?}: {stderr}");
    }
    for (name, args) in [
        ("SWITCHBOARD_SERVER__NO_SUCH_KEY", &["keygen"][..]),
        ("SWITCHBOARD_NOSECTION__KEY", &["plugins", "list"]),
    ] {
        let stderr = failure(&run_env(d, args, &[(name, Some("1"))]), 1);
        assert!(
            stderr.contains("invalid configuration")
                && stderr
                    .to_lowercase()
                    .contains(&name.split("__").last().unwrap().to_lowercase()),
            "{name}: {stderr}"
        );
    }
}

/// `--help` of the binary and of every subcommand answers with its usage, and the documented
/// flags are in it.
#[test]
fn every_subcommand_documents_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let subcommands: &[&[&str]] = &[
        &[],
        &["plugins"],
        &["plugins", "list"],
        &["plugins", "inspect"],
        &["demo"],
        &["replay"],
        &["bench"],
        &["bench", "decode"],
        &["bench", "ingest"],
        &["serve"],
        &["migrate"],
        &["keygen"],
        &["installations"],
        &["installations", "add"],
        &["installations", "list"],
        &["installations", "revoke"],
        &["installations", "show"],
        &["installations", "update"],
        &["installations", "rotate-secret"],
        &["installations", "restore"],
        &["pairing"],
        &["pairing", "list"],
        &["pairing", "approve"],
        &["pairing", "deny"],
        &["secrets"],
        &["secrets", "key-id"],
        &["secrets", "rotate"],
        &["bindings"],
        &["bindings", "add"],
        &["bindings", "list"],
        &["bindings", "token"],
        &["sessions"],
        &["sessions", "list"],
        &["sessions", "show"],
        &["sessions", "interrupt"],
        &["sessions", "promote"],
        &["sessions", "dequeue"],
        &["sessions", "edit"],
        &["sessions", "compact"],
        &["sessions", "delete"],
    ];
    for path in subcommands {
        let args: Vec<&str> = path.iter().copied().chain(["--help"]).collect();
        let help = stdout(&run(d, &args));
        let usage = ["Usage: switchboard"]
            .into_iter()
            .chain(path.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(help.contains(&usage), "`{usage}` in:\n{help}");
        // Every command takes the global options.
        assert!(help.contains("--config <FILE>"), "{path:?} --help:\n{help}");
    }
    assert!(!d.join("cli.db").exists(), "--help opens no database");

    let top = stdout(&run(d, &["--help"]));
    for command in [
        "plugins",
        "demo",
        "replay",
        "bench",
        "serve",
        "migrate",
        "keygen",
        "installations",
        "bindings",
        "pairing",
        "secrets",
        "sessions",
    ] {
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} in:\n{top}"
        );
    }
    for flag in [
        "--config <FILE>",
        "--plugins-dir <DIR>",
        "--cache-dir <DIR>",
        "--no-cache",
        "--log-format <LOG_FORMAT>",
        "--log <LOG>",
        "SWITCHBOARD_CONFIG",
    ] {
        assert!(top.contains(flag), "{flag} in:\n{top}");
    }
    let add = stdout(&run(d, &["installations", "add", "-h"]));
    for flag in [
        "--channel <CHANNEL>",
        "--routing-key <ROUTING_KEY>",
        "--name <NAME>",
        "--secret <KEY=VALUE>",
        "--config-value <KEY=VALUE>",
        "--skip-on-install",
        "--policy <POLICY>",
        "--agent <AGENT>",
        "--debounce-ms <DEBOUNCE_MS>",
        "locale=en",
    ] {
        assert!(add.contains(flag), "{flag} in:\n{add}");
    }
    // The channel-specific flags of contract 0.1 are gone (the plugin's schema has the keys).
    for gone in ["--app-id", "--bot-open-id", "--bot-union-id"] {
        assert!(!add.contains(gone), "{gone} in:\n{add}");
    }
    let bind = stdout(&run(d, &["bindings", "add", "--help"]));
    assert!(
        bind.contains("<INSTALLATION> <USER_ID> <USER_REF>"),
        "{bind}"
    );
    let token = stdout(&run(d, &["bindings", "token", "--help"]));
    assert!(token.contains("<INSTALLATION> <USER_ID>"), "{token}");
    let version = stdout(&run(d, &["--version"]));
    assert_eq!(
        version.trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `serve` checks the operator tokens before it opens anything: an admin token shorter than 32
/// characters or an empty metrics token stop it with what to do.
#[test]
fn serve_refuses_a_short_admin_token_and_an_empty_metrics_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let short = run_env(
        d,
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SWITCHBOARD_SERVER__ADMIN_TOKEN", Some("change-me!"))],
    );
    let stderr = failure(&short, 1);
    assert!(
        stderr.contains("server.admin_token")
            && stderr.contains("10 characters")
            && stderr.contains("at least 32")
            && stderr.contains("openssl rand -hex 32"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("change-me!"),
        "the token is not echoed: {stderr}"
    );
    assert!(!d.join("cli.db").exists(), "refused before the database");

    let empty = run_env(
        d,
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SWITCHBOARD_SERVER__ADMIN_TOKEN", Some(ADMIN)),
            ("SWITCHBOARD_SERVER__METRICS_TOKEN", Some("")),
        ],
    );
    assert!(failure(&empty, 1).contains("server.metrics_token"));
}

const ADMIN: &str = "cli-admin-token-0123456789abcdef0123";
const METRICS: &str = "cli-metrics-token";

/// A `serve` process; killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over plain HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The real binary serving with tokens from the environment: the admin API and `/metrics` each
/// take their own token only; SIGTERM stops it cleanly.
#[test]
fn serve_guards_the_admin_api_and_metrics_with_tokens_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = command(
        d,
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SWITCHBOARD_SERVER__ADMIN_TOKEN", Some(ADMIN)),
            ("SWITCHBOARD_SERVER__METRICS_TOKEN", Some(METRICS)),
            ("SWITCHBOARD_CONNECTIONS__ENABLED", Some("false")),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("serve starts");
    let stderr = child.stderr.take().unwrap();
    let served = Served(child);
    // Read stderr on a thread until the listening line; keep the rest for the end.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = Instant::now();
    let addr = loop {
        let line = rx
            .recv_timeout(DEADLINE.saturating_sub(started.elapsed()))
            .expect("serve says where it listens within the deadline");
        assert!(!line.contains("panicked"), "{line}");
        if let Some(rest) = line.strip_prefix("switchboard listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };

    assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    let (status, body) = http_get(&addr, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(http_get(&addr, "/metrics", Some(ADMIN)).0, 401);
    let (status, body) = http_get(&addr, "/metrics", Some(METRICS));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("switchboard_plugin_degraded"), "{body}");
    let (status, body) = http_get(&addr, "/api/installations", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_get(&addr, "/api/installations", Some(METRICS));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("wrong admin token"), "{body}");
    let (status, body) = http_get(&addr, "/api/installations", Some(ADMIN));
    assert_eq!((status, body.as_str()), (200, "[]"));

    // SIGTERM: a graceful stop with exit status 0.
    let mut child = served;
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_within(&mut child.0, Duration::from_secs(60)).expect("serve stops");
    let log = reader.join().unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// `plugins inspect lark | head -1`: the reader closes the pipe early; the command ends
/// quietly (no panic text, no error line) instead of panicking inside `println!`.
#[test]
fn printing_commands_end_quietly_when_the_reader_goes_away() {
    let d = tempfile::tempdir().unwrap();
    let mut child = command(d.path(), &["plugins", "inspect", "lark"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the binary");
    let stderr = drain(child.stderr.take().unwrap());
    // Read one line, then close the pipe, like `head -1`.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let status = wait_within(&mut child, Duration::from_secs(60)).expect("it ends");
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert!(first.starts_with("lark "), "{first}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    // Either it printed everything before the pipe closed, or SIGPIPE ended it.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {stderr}"
    );
}
