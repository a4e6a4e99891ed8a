//! The secrets key at start-up (issue 19): a key is generated only for a fresh SQLite database.
//!
//! - A database whose installations hold sealed secrets and no key in sight (the key file
//!   missing, e.g. `serve` started from another directory) refuses to start, naming where the key
//!   is looked for and how to provide it, and creates no key file — on SQLite and PostgreSQL.
//! - PostgreSQL without a key (or an existing key file) refuses to start, even when empty.
//! - A fresh SQLite database still gets a key file (mode 600) that later starts read back.
//!
//! Through `load_secret_key` (what `App::build` and the operator commands call) on both
//! backends, and through the real binary's `serve`.

#[path = "support/db.rs"]
mod db;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchboard::app::{SecretKeyError, load_secret_key};
use switchboard::config::Config;
use switchboard::store::{Database, NewInstallation, SecretCipher};

/// The longest one run of the binary may take (it fails before any plugin is compiled).
const DEADLINE: Duration = Duration::from_secs(60);

/// A config on `url` with no `[secrets] key` and the key file at `key_file`.
fn config(url: &str, key_file: &Path) -> Config {
    let mut config = Config::default();
    config.database.url = url.to_string();
    config.secrets.key = None;
    config.secrets.key_file = key_file.to_path_buf();
    config
}

/// Stores an installation whose secrets are sealed with `key`; returns its id.
async fn install_with_secrets(db: &Database, key: &str, routing_key: &str) -> String {
    let store = db.installations(SecretCipher::from_key_str(key).unwrap());
    let new = NewInstallation {
        channel: "testing".into(),
        routing_key: routing_key.into(),
        name: "sealed".into(),
        secrets: BTreeMap::from([("token".to_string(), "s3cret".to_string())]),
        ..Default::default()
    };
    store.create(&new, 1_000).await.unwrap().id
}

fn secret_of(installation: &switchboard::store::Installation) -> &str {
    installation.secrets["token"].expose()
}

#[tokio::test]
async fn sealed_secrets_without_a_key_refuse_to_start_and_no_key_is_generated() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let key = SecretCipher::generate_key_hex();
        let id = install_with_secrets(&test_db.db, &key, "sealed-1").await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("elsewhere/secret.key");

        let err = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
            .await
            .expect_err("a missing key is an error when secrets are sealed");
        let text = err.to_string();
        assert!(
            matches!(
                err.downcast_ref::<SecretKeyError>(),
                Some(SecretKeyError::MissingForSealedSecrets {
                    installations: 1,
                    ..
                })
            ),
            "{name}: {err:?}"
        );
        for needle in [
            "refusing to generate a new key",
            "1 installation(s)",
            "`[secrets] key`",
            "SWITCHBOARD_SECRETS__KEY",
            "`[secrets] key_file`",
            "SWITCHBOARD_SECRETS__KEY_FILE",
            &key_file.display().to_string(),
        ] {
            assert!(
                text.contains(needle),
                "{name}: {needle:?} missing in: {text}"
            );
        }
        assert!(!key_file.exists(), "{name}: no key file may be created");
        assert!(
            !key_file.parent().unwrap().exists(),
            "{name}: not even its directory"
        );

        // Revoked installations' secrets count too: the key may be needed to restore them.
        let store = test_db
            .db
            .installations(SecretCipher::from_key_str(&key).unwrap());
        assert!(store.revoke(&id, 2_000).await.unwrap());
        let err = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
            .await
            .expect_err("revoked installations' secrets are sealed too");
        assert!(err.to_string().contains("refusing"), "{name}: {err}");

        // The key given as `[secrets] key` or in the named file opens them.
        let mut with_key = config(&test_db.url, &key_file);
        with_key.secrets.key = Some(key.clone());
        let cipher = load_secret_key(&with_key, &test_db.db).await.unwrap();
        let opened = test_db.db.installations(cipher).get(&id).await.unwrap();
        assert_eq!(secret_of(&opened.unwrap()), "s3cret", "{name}");
        std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let cipher = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
            .await
            .unwrap();
        let opened = test_db.db.installations(cipher).get(&id).await.unwrap();
        assert_eq!(secret_of(&opened.unwrap()), "s3cret", "{name}");
    }
}

#[tokio::test]
async fn postgres_never_generates_a_key() {
    let test_db = db::postgres_db().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("secret.key");

    // Empty database, no key: refused all the same.
    let err = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
        .await
        .expect_err("PostgreSQL needs an explicit key");
    assert!(
        matches!(
            err.downcast_ref::<SecretKeyError>(),
            Some(SecretKeyError::PostgresNeedsKey { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    for needle in [
        "on PostgreSQL the key must be given explicitly",
        "SWITCHBOARD_SECRETS__KEY",
        "SWITCHBOARD_SECRETS__KEY_FILE",
        "switchboard keygen",
        &key_file.display().to_string(),
    ] {
        assert!(text.contains(needle), "{needle:?} missing in: {text}");
    }
    assert!(!key_file.exists(), "no key file may be created");

    // An existing key file, or the key itself, is explicit enough.
    let key = SecretCipher::generate_key_hex();
    std::fs::write(&key_file, &key).unwrap();
    let from_file = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
        .await
        .unwrap();
    let sealed = from_file.encrypt("i-1", &BTreeMap::from([("a".into(), "b".into())]));
    let mut with_key = config(&test_db.url, &dir.path().join("absent.key"));
    with_key.secrets.key = Some(key);
    let from_key = load_secret_key(&with_key, &test_db.db).await.unwrap();
    assert_eq!(from_key.decrypt("i-1", &sealed).unwrap()["a"], "b");
}

#[tokio::test]
async fn a_fresh_sqlite_database_gets_a_key_file_that_later_starts_read() {
    let test_db = db::sqlite_file_db().await;
    // Installations without secrets seal nothing: a key may still be generated.
    let store = test_db
        .db
        .installations(SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap());
    let plain = NewInstallation {
        channel: "testing".into(),
        routing_key: "no-secrets".into(),
        ..Default::default()
    };
    store.create(&plain, 1_000).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join(".switchboard/secret.key");
    let first = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
        .await
        .expect("a fresh SQLite database gets a key");
    let text = std::fs::read_to_string(&key_file).expect("the key file is written");
    assert_eq!(text.trim().len(), 64, "64 hex digits: {text:?}");
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner reads the key");
    }

    // Sealed with the generated key, the secrets are read back by the next start.
    let id = install_with_secrets(&test_db.db, text.trim(), "sealed-2").await;
    let again = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
        .await
        .expect("the key file is read back");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), text);
    let opened = test_db.db.installations(again).get(&id).await.unwrap();
    assert_eq!(secret_of(&opened.unwrap()), "s3cret");
    let sealed = first.encrypt(&id, &BTreeMap::from([("k".into(), "v".into())]));
    let reread = load_secret_key(&config(&test_db.url, &key_file), &test_db.db)
        .await
        .unwrap();
    assert_eq!(reread.decrypt(&id, &sealed).unwrap()["k"], "v");
}

/// Runs `switchboard serve` in `cwd` against `url`, with no `SWITCHBOARD_*` variable but the
/// database URL; fails the test past [`DEADLINE`] or if it panicked.
fn serve(cwd: &Path, url: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .env("SWITCHBOARD_DATABASE__URL", url)
        .env("SWITCHBOARD_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "serve in {} did not stop within {DEADLINE:?}: it started?\n{}",
                cwd.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "serve panicked:\n{stderr}");
    output
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

#[tokio::test]
async fn serve_from_another_directory_refuses_to_start_on_sealed_secrets() {
    // The operator's directory: the database and the key file serve generated there.
    let home = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", home.path().join("switchboard.db").display());
    let database = Database::connect(&url).await.unwrap();
    database.migrate().await.unwrap();
    let home_key = home.path().join(".switchboard/secret.key");
    let key = load_secret_key(&config(&url, &home_key), &database)
        .await
        .expect("first start generates the key");
    let store = database.installations(key);
    let new = NewInstallation {
        channel: "testing".into(),
        routing_key: "serve-1".into(),
        secrets: BTreeMap::from([("token".to_string(), "s3cret".to_string())]),
        ..Default::default()
    };
    store.create(&new, 1_000).await.unwrap();
    database.close().await;

    // `serve` started from another directory (default key_file: .switchboard/secret.key).
    let other = tempfile::tempdir().unwrap();
    let output = serve(other.path(), &url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve must not start:\n{stderr}");
    let resolved = other.path().join(".switchboard/secret.key");
    for needle in [
        "refusing to generate a new key",
        "SWITCHBOARD_SECRETS__KEY_FILE",
        ".switchboard/secret.key",
        &resolved.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
    assert!(
        !resolved.exists(),
        "no key generated in the other directory"
    );
    assert!(
        !stderr.contains("switchboard listening"),
        "it never listened:\n{stderr}"
    );
}

#[tokio::test]
async fn serve_on_postgres_without_a_key_refuses_to_start() {
    let test_db = db::postgres_db().await;
    let cwd = tempfile::tempdir().unwrap();
    let output = serve(cwd.path(), &test_db.url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve must not start:\n{stderr}");
    assert!(
        stderr.contains("on PostgreSQL the key must be given explicitly"),
        "{stderr}"
    );
    assert!(
        !cwd.path().join(".switchboard/secret.key").exists(),
        "no key generated"
    );
}

/// Runs the binary with `args` in `cwd` against `url` with secrets key `key` (nothing else from
/// the environment); fails the test past [`DEADLINE`] or if it panicked.
fn switchboard(cwd: &Path, url: &str, key: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .current_dir(cwd)
        .env("SWITCHBOARD_DATABASE__URL", url)
        .env("SWITCHBOARD_SECRETS__KEY", key)
        .env("SWITCHBOARD_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "`switchboard {}` ran longer than {DEADLINE:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    output
}

/// Issue 19, part 4: sealed secrets carry their key's id; `reseal_all` moves every installation
/// (revoked ones too) to a new key in one transaction — all or nothing — on both backends.
#[tokio::test]
async fn resealing_moves_every_installation_to_the_new_key_or_none() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let db = &test_db.db;
        let (old, new) = (
            SecretCipher::generate_key_hex(),
            SecretCipher::generate_key_hex(),
        );
        let (old_cipher, new_cipher) = (
            SecretCipher::from_key_str(&old).unwrap(),
            SecretCipher::from_key_str(&new).unwrap(),
        );
        let a = install_with_secrets(db, &old, "reseal-a").await;
        let b = install_with_secrets(db, &old, "reseal-b").await;
        let store_old = db.installations(old_cipher.clone());
        assert!(store_old.revoke(&b, 1_500).await.unwrap());
        let plain = store_old
            .create(
                &NewInstallation {
                    channel: "testing".into(),
                    routing_key: "reseal-plain".into(),
                    ..Default::default()
                },
                1_000,
            )
            .await
            .unwrap();

        let moved = store_old.reseal_all(&new_cipher, 2_000).await.unwrap();
        assert_eq!(moved, 2, "{name}: the two sealed rows, the revoked one too");
        let store_new = db.installations(new_cipher.clone());
        for id in [&a, &b] {
            let read = store_new.get(id).await.unwrap().unwrap();
            assert_eq!(secret_of(&read), "s3cret", "{name}");
            let err = store_old.get(id).await.unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "sealed with key {}, but the configured key is {}",
                    new_cipher.key_id(),
                    old_cipher.key_id()
                )),
                "{name}: the error names both keys: {err}"
            );
        }
        assert!(
            store_new
                .get(&plain.id)
                .await
                .unwrap()
                .unwrap()
                .secrets
                .is_empty()
        );

        // A row the key cannot open stops the whole rotation: nothing moves.
        let third = SecretCipher::generate_key_hex();
        let stray = install_with_secrets(db, &third, "reseal-stray").await;
        let fourth = SecretCipher::from_key_str(&SecretCipher::generate_key_hex()).unwrap();
        let err = store_new.reseal_all(&fourth, 3_000).await.unwrap_err();
        assert!(
            err.to_string().contains(&stray),
            "{name}: names the row: {err}"
        );
        for id in [&a, &b] {
            assert_eq!(
                secret_of(&store_new.get(id).await.unwrap().unwrap()),
                "s3cret",
                "{name}: still under the key before the failed rotation"
            );
        }
    }
}

/// `switchboard secrets key-id` and `secrets rotate --new-key-file`, through the binary, on both
/// backends: the host then needs the new key, and the old one is refused naming both ids.
#[tokio::test]
async fn the_cli_rotates_the_secrets_key() {
    for test_db in db::test_databases().await {
        let name = &test_db.name;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = SecretCipher::generate_key_hex();
        let new = SecretCipher::generate_key_hex();
        let id = install_with_secrets(&test_db.db, &old, "cli-rotate").await;
        let (url, old_id, new_id) = (
            test_db.url.as_str(),
            SecretCipher::from_key_str(&old).unwrap().key_id(),
            SecretCipher::from_key_str(&new).unwrap().key_id(),
        );
        let printed = switchboard(d, url, &old, &["secrets", "key-id"]);
        assert!(printed.status.success(), "{name}: {printed:?}");
        assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), old_id);

        std::fs::write(d.join("new.key"), format!("{new}\n")).unwrap();
        std::fs::write(d.join("same.key"), &old).unwrap();
        let same = switchboard(
            d,
            url,
            &old,
            &["secrets", "rotate", "--new-key-file", "same.key"],
        );
        assert_eq!(same.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&same.stderr).contains("switchboard keygen"));
        let missing = switchboard(
            d,
            url,
            &old,
            &["secrets", "rotate", "--new-key-file", "nope"],
        );
        assert_eq!(missing.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));

        let rotated = switchboard(
            d,
            url,
            &old,
            &["secrets", "rotate", "--new-key-file", "new.key"],
        );
        let out = String::from_utf8_lossy(&rotated.stdout);
        assert!(rotated.status.success(), "{name}: {rotated:?}");
        assert!(
            out.contains("1 installation(s)") && out.contains(&format!("{old_id} -> {new_id}")),
            "{name}: {out}"
        );
        assert!(String::from_utf8_lossy(&rotated.stderr).contains("restart every host"));

        let with_new = switchboard(d, url, &new, &["installations", "show", &id]);
        assert!(with_new.status.success(), "{name}: {with_new:?}");
        assert!(String::from_utf8_lossy(&with_new.stdout).contains("secrets:     token"));
        let with_old = switchboard(d, url, &old, &["installations", "show", &id]);
        assert_eq!(with_old.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&with_old.stderr);
        assert!(
            err.contains(&new_id) && err.contains(&old_id),
            "{name}: names both keys: {err}"
        );
    }
}
