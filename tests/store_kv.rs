//! The plugin kv store (`switchboard::store::KvStore`) on both backends: every test runs against
//! a fresh SQLite file database and a fresh PostgreSQL database (see `support/db.rs`).

#[path = "support/db.rs"]
mod db;

use std::sync::Arc;

use switchboard::domain::{KvQuota, KvScope};
use switchboard::store::{Backend, Database, KvSetError, KvUsage, StoreError, redact_url};
use tokio::sync::Barrier;

/// A quota that does not get in the way.
const ROOMY: KvQuota = KvQuota {
    max_keys: 1_000,
    max_bytes: 1 << 20,
    max_value_bytes: 1 << 16,
};

const NOW: i64 = 1_700_000_000_000;

fn scope(plugin: &str, installation: &str) -> KvScope {
    KvScope::new(plugin, installation)
}

#[tokio::test]
async fn round_trip_get_set_delete() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        assert_eq!(
            kv.get(&s, "token", NOW).await.unwrap(),
            None,
            "{}: empty store",
            t.name
        );

        kv.set(&s, "token", b"abc", None, NOW, ROOMY).await.unwrap();
        assert_eq!(
            kv.get(&s, "token", NOW).await.unwrap().as_deref(),
            Some(&b"abc"[..]),
            "{}",
            t.name
        );

        kv.set(&s, "token", b"second value", None, NOW + 1, ROOMY)
            .await
            .unwrap();
        assert_eq!(
            kv.get(&s, "token", NOW + 1).await.unwrap().as_deref(),
            Some(&b"second value"[..]),
            "{}: overwrite",
            t.name
        );

        // Empty and non-UTF-8 values survive unchanged.
        kv.set(&s, "empty", b"", None, NOW, ROOMY).await.unwrap();
        assert_eq!(
            kv.get(&s, "empty", NOW).await.unwrap(),
            Some(vec![]),
            "{}: empty value",
            t.name
        );
        let binary: Vec<u8> = (0..=255u8).collect();
        kv.set(&s, "binary", &binary, None, NOW, ROOMY)
            .await
            .unwrap();
        assert_eq!(
            kv.get(&s, "binary", NOW).await.unwrap(),
            Some(binary.clone()),
            "{}",
            t.name
        );

        assert!(
            kv.delete(&s, "token").await.unwrap(),
            "{}: delete existing",
            t.name
        );
        assert_eq!(
            kv.get(&s, "token", NOW).await.unwrap(),
            None,
            "{}: deleted",
            t.name
        );
        assert!(
            !kv.delete(&s, "token").await.unwrap(),
            "{}: delete absent",
            t.name
        );
        assert_eq!(
            kv.usage(&s, NOW).await.unwrap(),
            KvUsage {
                keys: 2,
                bytes: 256
            },
            "{}: usage after delete",
            t.name
        );
    }
}

#[tokio::test]
async fn scopes_are_isolated() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let mine = scope("lark", "bot-1");
        let other_installation = scope("lark", "bot-2");
        let other_plugin = scope("slack", "bot-1");
        // A naive concatenation of plugin and installation would make these two collide.
        let shifted = scope("lar", "kbot-1");

        kv.set(&mine, "k", b"mine", None, NOW, ROOMY).await.unwrap();
        for other in [&other_installation, &other_plugin, &shifted] {
            assert_eq!(
                kv.get(other, "k", NOW).await.unwrap(),
                None,
                "{}: {other:?} sees k",
                t.name
            );
            assert_eq!(
                kv.usage(other, NOW).await.unwrap(),
                KvUsage::default(),
                "{}",
                t.name
            );
            assert!(
                !kv.delete(other, "k").await.unwrap(),
                "{}: {other:?} deleted k",
                t.name
            );
        }
        kv.set(&other_installation, "k", b"theirs", None, NOW, ROOMY)
            .await
            .unwrap();
        kv.set(&other_plugin, "k", b"plugin", None, NOW, ROOMY)
            .await
            .unwrap();

        assert_eq!(
            kv.get(&mine, "k", NOW).await.unwrap().as_deref(),
            Some(&b"mine"[..]),
            "{}",
            t.name
        );
        assert_eq!(
            kv.get(&other_installation, "k", NOW)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"theirs"[..]),
            "{}",
            t.name
        );
        assert_eq!(
            kv.get(&other_plugin, "k", NOW).await.unwrap().as_deref(),
            Some(&b"plugin"[..]),
            "{}",
            t.name
        );

        // Quota is per scope: a full scope does not block its neighbours.
        let one_key = KvQuota {
            max_keys: 1,
            ..ROOMY
        };
        assert!(matches!(
            kv.set(&mine, "k2", b"x", None, NOW, one_key).await,
            Err(KvSetError::QuotaExceeded { .. })
        ));
        kv.set(&shifted, "k2", b"x", None, NOW, one_key)
            .await
            .unwrap();

        assert!(kv.delete(&other_installation, "k").await.unwrap());
        assert_eq!(
            kv.get(&mine, "k", NOW).await.unwrap().as_deref(),
            Some(&b"mine"[..]),
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn ttl_expiry_follows_the_injected_clock() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        kv.set(&s, "token", b"t0k3n", Some(NOW + 1_000), NOW, ROOMY)
            .await
            .unwrap();
        kv.set(&s, "forever", b"f", None, NOW, ROOMY).await.unwrap();

        assert!(
            kv.get(&s, "token", NOW + 999).await.unwrap().is_some(),
            "{}: live before expiry",
            t.name
        );
        assert_eq!(
            kv.get(&s, "token", NOW + 1_000).await.unwrap(),
            None,
            "{}: expired at expiry",
            t.name
        );
        assert_eq!(
            kv.get(&s, "token", NOW + 5_000).await.unwrap(),
            None,
            "{}: expired after",
            t.name
        );
        assert!(
            kv.get(&s, "forever", i64::MAX).await.unwrap().is_some(),
            "{}: no ttl",
            t.name
        );
        assert_eq!(
            kv.usage(&s, NOW + 999).await.unwrap(),
            KvUsage { keys: 2, bytes: 6 },
            "{}",
            t.name
        );
        assert_eq!(
            kv.usage(&s, NOW + 1_000).await.unwrap(),
            KvUsage { keys: 1, bytes: 1 },
            "{}",
            t.name
        );

        // Overwriting replaces the expiry: without a TTL the key lives on.
        kv.set(&s, "token", b"renewed", None, NOW + 500, ROOMY)
            .await
            .unwrap();
        assert_eq!(
            kv.get(&s, "token", NOW + 10_000).await.unwrap().as_deref(),
            Some(&b"renewed"[..]),
            "{}: overwrite cleared the ttl",
            t.name
        );

        // An expiry at or before now is an immediate delete.
        kv.set(&s, "token", b"gone", Some(NOW), NOW, ROOMY)
            .await
            .unwrap();
        assert_eq!(
            kv.get(&s, "token", NOW - 1).await.unwrap(),
            None,
            "{}: already expired",
            t.name
        );
    }
}

#[tokio::test]
async fn overwrite_counts_the_new_size_not_the_sum() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        let quota = KvQuota {
            max_keys: 2,
            max_bytes: 100,
            max_value_bytes: 100,
        };

        kv.set(&s, "a", &[1; 60], None, NOW, quota).await.unwrap();
        // 60 + 60 would exceed 100; replacing counts 60 only.
        kv.set(&s, "a", &[2; 60], None, NOW, quota).await.unwrap();
        kv.set(&s, "a", &[3; 100], None, NOW, quota).await.unwrap();
        assert_eq!(
            kv.usage(&s, NOW).await.unwrap(),
            KvUsage {
                keys: 1,
                bytes: 100
            },
            "{}",
            t.name
        );

        // Overwriting the same key many times never uses up the key quota either.
        for i in 0..5u8 {
            kv.set(
                &s,
                "b",
                &[i],
                None,
                NOW,
                KvQuota {
                    max_bytes: 101,
                    ..quota
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(
            kv.usage(&s, NOW).await.unwrap(),
            KvUsage {
                keys: 2,
                bytes: 101
            },
            "{}",
            t.name
        );

        // Growing a key past the byte quota is refused and leaves the old value.
        let err = kv
            .set(
                &s,
                "b",
                &[9; 2],
                None,
                NOW,
                KvQuota {
                    max_bytes: 101,
                    ..quota
                },
            )
            .await;
        assert!(
            matches!(&err, Err(KvSetError::QuotaExceeded { what }) if what.starts_with("bytes")),
            "{}: {err:?}",
            t.name
        );
        assert_eq!(
            kv.get(&s, "b", NOW).await.unwrap(),
            Some(vec![4]),
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn key_quota_refuses_new_keys_only() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        let quota = KvQuota {
            max_keys: 3,
            ..ROOMY
        };
        for key in ["k1", "k2", "k3"] {
            kv.set(&s, key, b"v", None, NOW, quota).await.unwrap();
        }
        let err = kv.set(&s, "k4", b"v", None, NOW, quota).await;
        match &err {
            Err(KvSetError::QuotaExceeded { what }) => {
                assert!(what.starts_with("keys"), "{}: {what}", t.name);
                assert!(
                    err.as_ref().unwrap_err().to_string().contains("max_keys 3"),
                    "{}: {err:?}",
                    t.name
                );
            }
            other => panic!("{}: expected a key quota refusal, got {other:?}", t.name),
        }
        assert_eq!(
            kv.get(&s, "k4", NOW).await.unwrap(),
            None,
            "{}: refused key was written",
            t.name
        );
        // Existing keys can still be overwritten at the limit.
        kv.set(&s, "k1", b"new", None, NOW, quota).await.unwrap();

        // Expired keys do not count: once k3 expires there is room again.
        kv.set(&s, "k3", b"v", Some(NOW + 10), NOW, quota)
            .await
            .unwrap();
        assert!(matches!(
            kv.set(&s, "k4", b"v", None, NOW, quota).await,
            Err(KvSetError::QuotaExceeded { .. })
        ));
        kv.set(&s, "k4", b"v", None, NOW + 10, quota).await.unwrap();
        assert_eq!(kv.usage(&s, NOW + 10).await.unwrap().keys, 3, "{}", t.name);

        // Deleting frees a key.
        assert!(kv.delete(&s, "k1").await.unwrap());
        kv.set(&s, "k5", b"v", None, NOW + 10, quota).await.unwrap();
    }
}

#[tokio::test]
async fn byte_quota_refuses_values_that_do_not_fit() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        let quota = KvQuota {
            max_keys: 100,
            max_bytes: 10,
            max_value_bytes: 10,
        };
        kv.set(&s, "a", b"123456", None, NOW, quota).await.unwrap();
        kv.set(&s, "b", b"1234", None, NOW, quota).await.unwrap(); // exactly at the limit
        let err = kv.set(&s, "c", b"1", None, NOW, quota).await;
        match &err {
            Err(KvSetError::QuotaExceeded { what }) => {
                assert!(what.starts_with("bytes"), "{}: {what}", t.name)
            }
            other => panic!("{}: expected a byte quota refusal, got {other:?}", t.name),
        }
        assert_eq!(kv.get(&s, "c", NOW).await.unwrap(), None, "{}", t.name);
        assert_eq!(
            kv.usage(&s, NOW).await.unwrap(),
            KvUsage { keys: 2, bytes: 10 },
            "{}",
            t.name
        );

        // Shrinking an existing value makes room.
        kv.set(&s, "a", b"12345", None, NOW, quota).await.unwrap();
        kv.set(&s, "c", b"1", None, NOW, quota).await.unwrap();
        assert_eq!(
            kv.usage(&s, NOW).await.unwrap(),
            KvUsage { keys: 3, bytes: 10 },
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn oversized_values_are_refused() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        let quota = KvQuota {
            max_keys: 10,
            max_bytes: 1_000,
            max_value_bytes: 8,
        };
        kv.set(&s, "k", &[0; 8], None, NOW, quota).await.unwrap();
        let err = kv.set(&s, "k", &[1; 9], None, NOW, quota).await;
        assert!(
            matches!(err, Err(KvSetError::ValueTooLarge { len: 9, max: 8 })),
            "{}: {err:?}",
            t.name
        );
        assert_eq!(
            kv.get(&s, "k", NOW).await.unwrap(),
            Some(vec![0; 8]),
            "{}: old value kept",
            t.name
        );
    }
}

#[tokio::test]
async fn purge_expired_deletes_only_expired_rows_in_every_scope() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let a = scope("lark", "bot-1");
        let b = scope("slack", "team-9");
        kv.set(&a, "short", b"s", Some(NOW + 10), NOW, ROOMY)
            .await
            .unwrap();
        kv.set(&a, "long", b"l", Some(NOW + 1_000), NOW, ROOMY)
            .await
            .unwrap();
        kv.set(&a, "forever", b"f", None, NOW, ROOMY).await.unwrap();
        kv.set(&b, "short", b"s", Some(NOW + 20), NOW, ROOMY)
            .await
            .unwrap();

        assert_eq!(
            kv.purge_expired(NOW + 9).await.unwrap(),
            0,
            "{}: nothing expired yet",
            t.name
        );
        assert_eq!(
            kv.purge_expired(NOW + 20).await.unwrap(),
            2,
            "{}: both short keys",
            t.name
        );
        assert_eq!(
            kv.purge_expired(NOW + 20).await.unwrap(),
            0,
            "{}: purge is idempotent",
            t.name
        );
        // Gone for good: even a reader with an earlier clock no longer sees them.
        assert_eq!(kv.get(&a, "short", NOW).await.unwrap(), None, "{}", t.name);
        assert_eq!(kv.get(&b, "short", NOW).await.unwrap(), None, "{}", t.name);
        assert!(
            kv.get(&a, "long", NOW + 20).await.unwrap().is_some(),
            "{}",
            t.name
        );
        assert!(
            !kv.delete(&a, "short").await.unwrap(),
            "{}: row was purged",
            t.name
        );

        assert_eq!(
            kv.purge_expired(i64::MAX).await.unwrap(),
            1,
            "{}: the long key",
            t.name
        );
        assert_eq!(
            kv.usage(&a, NOW).await.unwrap(),
            KvUsage { keys: 1, bytes: 1 },
            "{}",
            t.name
        );
    }
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    for t in db::test_databases().await {
        let kv = t.db.kv();
        let s = scope("lark", "bot-1");
        kv.set(&s, "k", b"kept", None, NOW, ROOMY).await.unwrap();
        // Already migrated by the helper: again, and once more from a second connection.
        t.db.migrate()
            .await
            .unwrap_or_else(|e| panic!("{}: second migrate: {e}", t.name));
        let again = Database::connect(&t.url).await.unwrap();
        again
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("{}: third migrate: {e}", t.name));
        assert_eq!(
            again.kv().get(&s, "k", NOW).await.unwrap().as_deref(),
            Some(&b"kept"[..]),
            "{}",
            t.name
        );
        again.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sets_never_exceed_the_quota() {
    const WRITERS: usize = 24;
    for t in db::test_databases().await {
        for round in 0..3 {
            let s = scope("lark", &format!("race-{round}"));
            let quota = KvQuota {
                max_keys: 5,
                max_bytes: 1_000,
                max_value_bytes: 100,
            };
            let barrier = Arc::new(Barrier::new(WRITERS));
            let tasks: Vec<_> = (0..WRITERS)
                .map(|i| {
                    let kv = t.db.kv();
                    let s = s.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        kv.set(&s, &format!("key-{i}"), b"v", None, NOW, quota)
                            .await
                    })
                })
                .collect();
            let mut stored = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(()) => stored += 1,
                    Err(KvSetError::QuotaExceeded { .. }) => {}
                    Err(e) => panic!("{}: unexpected error: {e}", t.name),
                }
            }
            assert_eq!(
                stored, 5,
                "{} round {round}: exactly max_keys writers succeed",
                t.name
            );
            assert_eq!(
                t.db.kv().usage(&s, NOW).await.unwrap().keys,
                5,
                "{} round {round}",
                t.name
            );
        }

        // The byte quota under the same race: 10 writers of 30 bytes into 100 bytes.
        let s = scope("lark", "race-bytes");
        let quota = KvQuota {
            max_keys: 100,
            max_bytes: 100,
            max_value_bytes: 100,
        };
        let barrier = Arc::new(Barrier::new(10));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let kv = t.db.kv();
                let s = s.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    kv.set(&s, &format!("key-{i}"), &[0; 30], None, NOW, quota)
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut stored = 0;
        for task in tasks {
            stored += usize::from(task.await.unwrap());
        }
        assert_eq!(stored, 3, "{}: 3 × 30 bytes fit in 100", t.name);
        assert_eq!(
            t.db.kv().usage(&s, NOW).await.unwrap(),
            KvUsage { keys: 3, bytes: 90 },
            "{}",
            t.name
        );
    }
}

/// `set_unless` orders racing writers on one key: of many writers that each write only when
/// the key is absent, exactly one writes and every other one is shown that value; a writer
/// whose `keep` rejects the current value overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_unless_lets_exactly_one_of_racing_writers_win() {
    const WRITERS: usize = 16;
    let quota = KvQuota {
        max_keys: 10,
        max_bytes: 1_000,
        max_value_bytes: 100,
    };
    for t in db::test_databases().await {
        let s = scope("switchboard:stream", "race-unless");
        let barrier = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let kv = t.db.kv();
                let s = s.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let value = format!("writer-{i}");
                    let kept = kv
                        .set_unless(&s, "reply-1", value.as_bytes(), None, NOW, quota, |_| true)
                        .await
                        .unwrap();
                    (value, kept)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut shown = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (value, None) => winners.push(value),
                (_, Some(kept)) => shown.push(String::from_utf8(kept).unwrap()),
            }
        }
        assert_eq!(winners.len(), 1, "{}: one writer wins: {winners:?}", t.name);
        assert!(
            shown.iter().all(|v| *v == winners[0]),
            "{}: every other writer sees the winner's value",
            t.name
        );
        let stored = t.db.kv().get(&s, "reply-1", NOW).await.unwrap();
        assert_eq!(stored.as_deref(), Some(winners[0].as_bytes()), "{}", t.name);

        // `keep` decides: a value it rejects is overwritten, one it accepts is kept.
        let kept =
            t.db.kv()
                .set_unless(&s, "reply-1", b"next", None, NOW, quota, |v| v == b"other")
                .await
                .unwrap();
        assert_eq!(kept, None, "{}: a rejected value is overwritten", t.name);
        let kept =
            t.db.kv()
                .set_unless(&s, "reply-1", b"again", None, NOW, quota, |v| v == b"next")
                .await
                .unwrap();
        assert_eq!(kept.as_deref(), Some(&b"next"[..]), "{}", t.name);
        // An expired value counts as absent.
        t.db.kv()
            .set(&s, "short", b"old", Some(NOW + 10), NOW, quota)
            .await
            .unwrap();
        let kept =
            t.db.kv()
                .set_unless(&s, "short", b"new", None, NOW + 10, quota, |_| true)
                .await
                .unwrap();
        assert_eq!(kept, None, "{}: an expired value does not block", t.name);
    }
}

#[tokio::test]
async fn in_memory_sqlite_is_one_database_for_all_handles() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    db.migrate().await.unwrap();
    let s = scope("lark", "bot-1");
    db.kv().set(&s, "k", b"v", None, NOW, ROOMY).await.unwrap();
    let clone = db.clone();
    assert_eq!(
        clone.kv().get(&s, "k", NOW).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        clone.kv().usage(&s, NOW).await.unwrap(),
        KvUsage { keys: 1, bytes: 1 }
    );
    db.close().await;
}

#[tokio::test]
async fn sqlite_file_is_created_with_its_directory_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/switchboard.db");
    let db = Database::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db.kv()
        .set(&scope("p", "i"), "k", b"v", None, NOW, ROOMY)
        .await
        .unwrap();
    assert!(path.exists(), "database file created");
    assert!(
        path.with_file_name("switchboard.db-wal").exists(),
        "a -wal file exists while the database is open (journal_mode=WAL)"
    );
    db.close().await;

    // Reopening the file finds the data.
    let db = Database::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    assert!(
        db.kv()
            .get(&scope("p", "i"), "k", NOW)
            .await
            .unwrap()
            .is_some()
    );
    db.close().await;
}

#[tokio::test]
async fn backends_are_reported() {
    let backends: Vec<_> = db::test_databases()
        .await
        .iter()
        .map(|t| (t.name.clone(), t.db.backend()))
        .collect();
    assert_eq!(
        backends,
        vec![
            ("sqlite".to_owned(), Backend::Sqlite),
            ("postgres".to_owned(), Backend::Postgres)
        ]
    );
    assert_eq!(Backend::Sqlite.to_string(), "sqlite");
    assert_eq!(Backend::Postgres.to_string(), "postgres");
}

#[tokio::test]
async fn errors_name_the_operation_and_backend() {
    for t in db::test_databases().await {
        t.db.close().await;
        let err = t.db.kv().get(&scope("p", "i"), "k", NOW).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("kv get on {} failed: ", t.name)),
            "{message}"
        );
        let err =
            t.db.kv()
                .set(&scope("p", "i"), "k", b"v", None, NOW, ROOMY)
                .await
                .unwrap_err();
        assert!(
            matches!(
                &err,
                KvSetError::Store(StoreError::Query { op: "kv set", .. })
            ),
            "{}: {err:?}",
            t.name
        );
        assert!(
            err.to_string()
                .starts_with(&format!("kv set on {} failed: ", t.name)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn connect_errors_never_show_the_password() {
    // Port 1 on localhost refuses connections quickly.
    let err = Database::connect("postgres://switchboard:hunter2@127.0.0.1:1/sb")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(
        message.contains("postgres://switchboard:***@127.0.0.1:1/sb"),
        "{message}"
    );
    assert!(
        !message.contains("pool timed out"),
        "the real cause is reported: {message}"
    );

    let err = Database::connect("mysql://root:hunter2@db/sb")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    assert_eq!(
        redact_url("postgres://u:p@h/d?password=x"),
        "postgres://u:***@h/d?password=***"
    );
}
