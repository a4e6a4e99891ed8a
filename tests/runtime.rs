//! The plugin runtime, exercised with real components through wasmtime: deadlines, memory caps,
//! panics, capability enforcement, kv scoping, contract versions, health and the artifact cache.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{LocalServer, TestRuntime, test_plugin};
use switchboard::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::InstallationContext;
use switchboard::runtime::decoder::Decoded;
use switchboard::runtime::types::PluginError;
use switchboard::runtime::{
    Blame, Cause, EngineSettings, HealthState, LoadError, LoadPath, PoolSettings, Runtime,
    RuntimeSettings,
};

fn installation(id: &str) -> Arc<InstallationContext> {
    Arc::new(InstallationContext::new(id))
}

async fn decode_body(runtime: &Runtime, cx: &Arc<InstallationContext>, payload: &str) -> String {
    let plugin = runtime.plugin("testing").unwrap();
    match plugin.decode(cx, payload.as_bytes()).await {
        Ok(Ok(Decoded::Message(m))) => m.body,
        other => panic!("{payload}: expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn well_behaved_plugin_round_trips_and_reuses_its_instance() {
    let runtime = TestRuntime::default().build();
    let cx = installation("inst-a");
    assert_eq!(decode_body(&runtime, &cx, "echo:hello").await, "hello");
    assert_eq!(decode_body(&runtime, &cx, "echo:again").await, "again");
    let stats = runtime.plugin("testing").unwrap().stats();
    assert_eq!(stats.calls, 2);
    assert_eq!(
        stats.instantiations, 1,
        "the warm instance is reused across calls"
    );
    assert_eq!(stats.state, HealthState::Healthy);
}

#[tokio::test]
async fn runaway_loop_is_cut_at_its_deadline_and_the_next_call_works() {
    let runtime = TestRuntime::default().build();
    let cx = installation("inst-a");
    let plugin = runtime.plugin("testing").unwrap();
    let started = Instant::now();
    let error = plugin
        .decode(&cx, b"loop")
        .await
        .expect_err("a runaway loop cannot succeed");
    eprintln!("loop cut after {:?} (budget 500 ms)", started.elapsed());
    assert!(
        matches!(&error.cause, Cause::Timeout { phase, .. } if phase == "guest code"),
        "{error}"
    );
    assert_eq!(error.blame, Blame::Guest);
    assert_eq!(error.export, "decoder.decode");
    assert!(error.to_string().contains("plugin `testing`"), "{error}");
    assert_eq!(decode_body(&runtime, &cx, "echo:alive").await, "alive");
    assert_eq!(
        plugin.stats().instantiations,
        2,
        "the trapped instance was discarded"
    );
}

#[tokio::test]
async fn memory_bomb_is_stopped_at_the_cap() {
    let runtime = TestRuntime::default().build();
    let cx = installation("inst-a");
    let plugin = runtime.plugin("testing").unwrap();
    let error = plugin
        .decode(&cx, b"alloc:64")
        .await
        .expect_err("64 MiB is over the 16 MiB cap");
    match &error.cause {
        Cause::MemoryLimit {
            cap_bytes,
            requested_bytes,
        } => {
            assert_eq!(*cap_bytes, 16 << 20);
            assert!(*requested_bytes > 16 << 20);
        }
        other => panic!("expected a memory limit, got {other:?} ({error})"),
    }
    assert_eq!(error.blame, Blame::Guest);
    assert_eq!(
        decode_body(&runtime, &cx, "alloc:4").await,
        "allocated 4 MiB"
    );
}

#[tokio::test]
async fn panic_is_contained_with_the_guest_message_and_the_next_call_works() {
    let runtime = TestRuntime::default().build();
    let cx = installation("inst-a");
    let plugin = runtime.plugin("testing").unwrap();
    let error = plugin
        .decode(&cx, b"panic:the frame was odd")
        .await
        .expect_err("a panic fails the call");
    assert_eq!(error.cause, Cause::Panic);
    let message = error.guest_message.clone().unwrap_or_default();
    assert!(
        message.contains("the frame was odd"),
        "guest message: {message:?}"
    );
    assert!(error.to_string().contains("the frame was odd"), "{error}");
    assert_eq!(
        decode_body(&runtime, &cx, "echo:still here").await,
        "still here"
    );
}

#[tokio::test]
async fn forbidden_host_is_refused_without_any_network_attempt() {
    let runtime = TestRuntime::default().build();
    let server = LocalServer::start("200 OK", "", "secret", Duration::ZERO).await;
    let plugin = runtime.plugin("testing").unwrap();
    let payload = format!("http:http://127.0.0.1:{}/steal", server.port);
    let answer = plugin
        .decode(&installation("inst-a"), payload.as_bytes())
        .await
        .expect("the call itself succeeds");
    match answer {
        Err(PluginError::Retryable(why)) => {
            assert!(why.contains("NotAllowed"), "{why}");
            assert!(
                why.contains(&format!("127.0.0.1:{}", server.port)),
                "the refusal names the origin: {why}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.connections(), 0, "no connection may be attempted");
}

#[tokio::test]
async fn allowed_host_reaches_the_local_server_through_the_operator_override() {
    let server = LocalServer::start("200 OK", "", "hello from the fake", Duration::ZERO).await;
    let runtime = TestRuntime {
        overrides: vec![
            BaseUrlOverride::new(
                "http://allowed.test",
                &format!("http://127.0.0.1:{}", server.port),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
    .build();
    let body = decode_body(
        &runtime,
        &installation("inst-a"),
        "http:http://allowed.test/path?q=1",
    )
    .await;
    assert_eq!(body, "200 hello from the fake");
    assert_eq!(server.connections(), 1);
    let request = server.last_request.lock().unwrap().clone();
    assert!(request.starts_with("GET /path?q=1 HTTP/1.1"), "{request}");
    assert!(
        request.to_ascii_lowercase().contains("x-test: 1"),
        "{request}"
    );
}

#[tokio::test]
async fn redirects_leaving_the_allow_list_are_refused() {
    let evil = LocalServer::start("200 OK", "", "evil", Duration::ZERO).await;
    let location: &'static str =
        Box::leak(format!("location: http://127.0.0.1:{}/x\r\n", evil.port).into_boxed_str());
    let redirector = LocalServer::start("302 Found", location, "", Duration::ZERO).await;
    let runtime = TestRuntime {
        overrides: vec![
            BaseUrlOverride::new(
                "http://allowed.test",
                &format!("http://127.0.0.1:{}", redirector.port),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
    .build();
    let answer = runtime
        .plugin("testing")
        .unwrap()
        .decode(&installation("a"), b"http:http://allowed.test/")
        .await
        .unwrap();
    assert!(
        matches!(&answer, Err(PluginError::Retryable(why)) if why.contains("NotAllowed")),
        "{answer:?}"
    );
    assert_eq!(redirector.connections(), 1);
    assert_eq!(
        evil.connections(),
        0,
        "the redirect target must not be contacted"
    );
}

#[tokio::test]
async fn slow_host_import_is_bounded_by_the_call_deadline() {
    let server = LocalServer::start("200 OK", "", "late", Duration::from_secs(5)).await;
    let runtime = TestRuntime {
        overrides: vec![
            BaseUrlOverride::new(
                "http://allowed.test",
                &format!("http://127.0.0.1:{}", server.port),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
    .build();
    let started = Instant::now();
    let answer = runtime
        .plugin("testing")
        .unwrap()
        .decode(&installation("a"), b"http:http://allowed.test/slow")
        .await;
    eprintln!(
        "slow import returned after {:?} (budget 500 ms, server delay 5 s)",
        started.elapsed()
    );
    // The import's timeout is clamped to the remaining budget, so the guest sees `timeout`
    // rather than the call being torn down.
    assert!(
        matches!(&answer, Ok(Err(PluginError::Retryable(why))) if why.contains("Timeout")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn kv_values_of_one_installation_are_invisible_to_another() {
    for test_db in db::test_databases().await {
        let runtime = TestRuntime {
            kv: Some(test_db.db.kv()),
            ..Default::default()
        }
        .build();
        let (a, b) = (installation("inst-a"), installation("inst-b"));
        assert_eq!(
            decode_body(&runtime, &a, "kv-set:token=alpha").await,
            "ok",
            "{}",
            test_db.name
        );
        assert_eq!(
            decode_body(&runtime, &b, "kv-get:token").await,
            "<none>",
            "{}",
            test_db.name
        );
        assert_eq!(decode_body(&runtime, &b, "kv-set:token=beta").await, "ok");
        assert_eq!(
            decode_body(&runtime, &a, "kv-get:token").await,
            "alpha",
            "{}",
            test_db.name
        );
        assert_eq!(
            decode_body(&runtime, &b, "kv-get:token").await,
            "beta",
            "{}",
            test_db.name
        );
        assert_eq!(decode_body(&runtime, &a, "kv-del:token").await, "true");
        assert_eq!(decode_body(&runtime, &a, "kv-get:token").await, "<none>");
        assert_eq!(
            decode_body(&runtime, &b, "kv-get:token").await,
            "beta",
            "{}",
            test_db.name
        );
        // Quota from the manifest: 16 keys.
        for i in 0..16 {
            assert_eq!(
                decode_body(&runtime, &a, &format!("kv-set:k{i}=v")).await,
                "ok"
            );
        }
        let over = decode_body(&runtime, &a, "kv-set:k16=v").await;
        assert!(over.contains("QuotaExceeded"), "{}: {over}", test_db.name);
    }
}

#[tokio::test]
async fn kv_without_a_database_reports_unavailable() {
    let runtime = TestRuntime::default().build();
    let body = decode_body(&runtime, &installation("a"), "kv-get:x").await;
    assert!(body.contains("Unavailable"), "{body}");
}

#[tokio::test]
async fn installation_context_is_per_call_and_secrets_stay_out_of_debug_output() {
    let runtime = TestRuntime::default().build();
    let cx = Arc::new(
        InstallationContext::new("inst-7")
            .with_config("app_id", "cli_x")
            .with_secret("app_id", "hunter2"),
    );
    assert_eq!(
        decode_body(&runtime, &cx, "ctx:app_id").await,
        "inst-7|cli_x|true"
    );
    assert_eq!(
        decode_body(&runtime, &installation("other"), "ctx:app_id").await,
        "other||false"
    );
    assert!(!format!("{cx:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_plugin_of_contract_0_1_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("old.wasm");
    std::fs::copy(test_plugin("switchboard_testing_future.wasm"), &wasm).unwrap();
    // A 0.1 manifest: no `transports`, `[features]` or `[installation]`, contract 0.1.0.
    std::fs::write(
        dir.path().join("old.toml"),
        "name = \"old\"\nversion = \"0.1.0\"\nchannel = \"old\"\ncontract = \"0.1.0\"\n",
    )
    .unwrap();
    let runtime = TestRuntime::default().build();
    let error = runtime
        .load_file(&wasm)
        .expect_err("contract 0.1.0 must be refused");
    assert!(
        matches!(error, LoadError::UnsupportedContract { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("switchboard:channel@0.1.0") && text.contains("switchboard:channel@0.2.0"),
        "{text}"
    );
}

#[tokio::test]
async fn plugin_built_for_another_contract_major_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("future.wasm");
    std::fs::copy(test_plugin("switchboard_testing_future.wasm"), &wasm).unwrap();
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/testing-future/manifest.toml"
    ))
    .unwrap();
    std::fs::write(dir.path().join("future.toml"), &manifest).unwrap();
    let runtime = TestRuntime::default().build();
    let error = runtime
        .load_file(&wasm)
        .expect_err("contract 1.0.0 must be refused");
    assert!(
        matches!(error, LoadError::UnsupportedContract { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("switchboard:channel@1.0.0") && text.contains("0.2.0"),
        "{text}"
    );
    // The component itself (not just the manifest) is checked: a manifest claiming this host's
    // contract does not make it loadable.
    std::fs::write(
        dir.path().join("future.toml"),
        manifest.replace(
            "contract = \"1.0.0\"",
            "contract = \"0.2.0\"\ntransports = [\"webhook\"]",
        ),
    )
    .unwrap();
    let error = runtime
        .load_file(&wasm)
        .expect_err("the component implements 1.0.0");
    assert!(error.to_string().contains("1.0.0"), "{error}");
    assert!(runtime.plugin("testing-future").is_none());
}

#[tokio::test]
async fn a_wasm_file_without_a_manifest_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("bare.wasm");
    std::fs::copy(test_plugin("switchboard_testing_future.wasm"), &wasm).unwrap();
    let error = TestRuntime::default()
        .build()
        .load_file(&wasm)
        .expect_err("no manifest");
    let text = error.to_string();
    assert!(
        text.contains("manifest!") && text.contains("bare.toml"),
        "{text}"
    );
}

#[tokio::test]
async fn degraded_plugin_is_reported_and_other_plugins_keep_serving() {
    let runtime = TestRuntime {
        pool: PoolSettings {
            degraded_after_failures: 3,
            ..Default::default()
        },
        load_bundled: true,
        ..Default::default()
    }
    .build();
    let cx = installation("a");
    let testing = runtime.plugin("testing").unwrap();
    for _ in 0..3 {
        testing
            .decode(&cx, b"panic:again")
            .await
            .expect_err("panics");
    }
    let stats = testing.stats();
    assert_eq!(stats.state, HealthState::Degraded);
    assert_eq!(stats.consecutive_failures, 3);
    assert!(stats.last_failure.unwrap().contains("again"));
    // Another plugin is unaffected.
    let lark = runtime.plugin("lark").expect("bundled lark plugin");
    assert!(
        lark.parse_command(&cx, "/new")
            .await
            .expect("lark keeps serving")
            .is_some()
    );
    assert_eq!(lark.stats().state, HealthState::Healthy);
    // And the degraded plugin recovers on success.
    assert_eq!(decode_body(&runtime, &cx, "echo:ok").await, "ok");
    assert_eq!(testing.stats().state, HealthState::Healthy);
}

#[tokio::test]
async fn precompiled_artifacts_are_reused_and_a_tampered_one_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let new_runtime = || {
        let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
        Runtime::new(
            RuntimeSettings {
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            },
            services,
        )
        .unwrap()
    };
    let path = test_plugin("switchboard_testing.wasm");
    let first = new_runtime().load_file(&path).unwrap();
    assert_eq!(first.load_path(), LoadPath::Compiled);
    let runtime = new_runtime();
    let second = runtime.load_file(&path).unwrap();
    assert_eq!(second.load_path(), LoadPath::Cached);
    let (artifact, _) = runtime
        .cache()
        .artifact_paths(runtime.engine(), second.sha256())
        .unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, bytes).unwrap();
    let third_runtime = new_runtime();
    let third = third_runtime.load_file(&path).unwrap();
    assert_eq!(
        third.load_path(),
        LoadPath::Compiled,
        "a tampered artifact must not be deserialized"
    );
    assert_eq!(
        decode_body(&third_runtime, &installation("a"), "echo:fine").await,
        "fine"
    );
}

#[tokio::test]
async fn concurrent_calls_of_two_installations_never_share_an_instance() {
    let runtime = Arc::new(TestRuntime::default().build());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let runtime = runtime.clone();
        tasks.push(tokio::spawn(async move {
            let cx = installation(if i % 2 == 0 { "even" } else { "odd" });
            for n in 0..20 {
                let body = decode_body(&runtime, &cx, &format!("ctx:{n}")).await;
                assert!(body.starts_with(&format!("{}|", cx.id)), "{body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = runtime.plugin("testing").unwrap().stats();
    assert_eq!(stats.calls, 160);
    assert_eq!(stats.failures, 0);
}

#[tokio::test]
async fn idle_instances_of_many_installations_never_exhaust_the_instance_pool() {
    // An instance pool of 8 slots and 40 installations (think long connections): without a
    // plugin-wide idle cap, parked instances would hold every slot and the ninth installation's
    // call could not instantiate.
    let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
    let runtime = Runtime::new(
        RuntimeSettings {
            engine: EngineSettings {
                max_instances: 8,
                ..Default::default()
            },
            pool: PoolSettings {
                max_idle_total: 4,
                ..Default::default()
            },
            cache_dir: Some(support::shared_cache_dir()),
        },
        services,
    )
    .unwrap();
    runtime
        .load_file(&test_plugin("switchboard_testing.wasm"))
        .unwrap();
    let testing = runtime.plugin("testing").unwrap();
    for round in 0..2 {
        for i in 0..40 {
            let cx = installation(&format!("inst-{i}"));
            assert_eq!(
                decode_body(&runtime, &cx, "echo:ok").await,
                "ok",
                "round {round}, installation {i}"
            );
            assert!(
                testing.idle_instances() <= 4,
                "{}",
                testing.idle_instances()
            );
        }
    }
    assert_eq!(testing.idle_instances(), 4);
    assert_eq!(testing.stats().failures, 0);
}
