//! Runtime overheads, measured side by side in one run (issue: foundation):
//! - a small decode through the wasm plugin vs the same decoder called natively, and a no-op
//!   echo call through the plugin (pure call overhead), once with a `block_on` per call and once
//!   with the calls back to back in one task (how the host calls plugins);
//! - instantiation from the plugin's `InstancePre` (pooling allocator);
//! - loading the Lark component precompiled (verified + memory-mapped) vs compiling it.
//!
//! Run: `cargo bench -p switchboard --bench runtime`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::capabilities::{OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::InstallationContext;
use switchboard::runtime::bundled::{BUNDLED, TEST_PLUGIN_DIR};
use switchboard::runtime::{Runtime, RuntimeSettings, decoder, sha256_hex};
use wasmtime::component::Component;

const TEXT_P2P: &[u8] = include_bytes!("../../tests/fixtures/lark/event_receive_text_p2p.json");

fn native_echo(payload: &[u8]) -> decoder::Decoded {
    use switchboard::runtime::types::{Chat, ChatKind, InboundMessage, Participant};
    let text = String::from_utf8(payload.to_vec()).unwrap();
    let (_, body) = text.split_once(':').unwrap();
    let body = body.to_string();
    decoder::Decoded::Message(InboundMessage {
        event_id: String::new(),
        message_id: String::new(),
        chat: Chat {
            id: "test-chat".into(),
            kind: ChatKind::Direct,
            title: None,
        },
        sender: Participant {
            id: "test-user".into(),
            display_name: None,
            is_bot: false,
            alt_ids: Vec::new(),
        },
        message_type: "text".into(),
        command_body: body.clone(),
        body,
        addressed_to_bot: true,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: 0,
        mentions: Vec::new(),
        attachments: Vec::new(),
    })
}

fn runtime(cache: &std::path::Path) -> Runtime {
    let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
    let settings = RuntimeSettings {
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    };
    let runtime = Runtime::new(settings, services).expect("runtime");
    runtime.load_bundled().expect("bundled plugins");
    runtime
        .load_file(&std::path::Path::new(TEST_PLUGIN_DIR).join("switchboard_testing.wasm"))
        .expect("testing plugin");
    runtime
}

fn bench(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(cache.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lark = runtime.plugin("lark").unwrap();
    let testing = runtime.plugin("testing").unwrap();
    let cx = Arc::new(
        InstallationContext::new("bench")
            .with_config("app_id", "cli_a5f3c2e1d4b6a789")
            .with_config("bot_open_id", "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51"),
    );
    let native_cx =
        switchboard_lark::decode::DecodeContext::new("ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51", "");

    // Sanity: both paths decode the same message.
    let wasm_body = match rt.block_on(lark.decode(&cx, TEXT_P2P)).unwrap().unwrap() {
        decoder::Decoded::Message(m) => m.body,
        other => panic!("{other:?}"),
    };
    let native = switchboard_lark::decode::decode_event(TEXT_P2P, &native_cx).unwrap();
    assert!(format!("{native:?}").contains(&wasm_body[..wasm_body.len().min(20)]));

    let mut group = c.benchmark_group("call");
    group.bench_function("native_decode_text_p2p", |b| {
        b.iter(|| {
            switchboard_lark::decode::decode_event(std::hint::black_box(TEXT_P2P), &native_cx)
                .unwrap()
        })
    });
    group.bench_function("wasm_decode_text_p2p", |b| {
        b.iter(|| rt.block_on(lark.decode(&cx, TEXT_P2P)).unwrap().unwrap())
    });
    // The testing plugin's echo, natively: the same parsing and the same result record.
    group.bench_function("native_echo", |b| {
        b.iter(|| native_echo(std::hint::black_box(b"echo:x")))
    });
    group.bench_function("wasm_echo", |b| {
        b.iter(|| {
            rt.block_on(testing.decode(&cx, b"echo:x"))
                .unwrap()
                .unwrap()
        })
    });
    // The same calls back to back inside one task, as the host makes them: without the
    // executor entry and exit that `block_on` adds to every iteration above.
    group.bench_function("wasm_echo_in_task", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(testing.decode(&cx, b"echo:x").await.unwrap().unwrap());
                }
                started.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("instantiate");
    group.bench_function("lark_from_instance_pre", |b| {
        b.iter(|| {
            rt.block_on(lark.prewarm(&cx)).unwrap();
            lark.recycle_all();
        })
    });
    group.bench_function("testing_from_instance_pre", |b| {
        b.iter(|| {
            rt.block_on(testing.prewarm(&cx)).unwrap();
            testing.recycle_all();
        })
    });
    group.finish();

    let wasm = BUNDLED
        .iter()
        .find(|p| p.file == "switchboard_lark.wasm")
        .unwrap()
        .wasm;
    let sha = sha256_hex(wasm);
    let (artifact, _) = runtime
        .cache()
        .artifact_paths(runtime.engine(), &sha)
        .unwrap();
    eprintln!(
        "lark component {} KiB, precompiled artifact {} KiB",
        wasm.len() / 1024,
        std::fs::metadata(&artifact)
            .map(|m| m.len() / 1024)
            .unwrap_or(0)
    );
    let mut group = c.benchmark_group("load_lark");
    group.bench_function("precompiled_verified_mmap", |b| {
        b.iter(|| {
            runtime
                .cache()
                .load_cached(runtime.engine(), &sha)
                .expect("cached artifact")
        })
    });
    group.bench_function("precompiled_mmap_unverified", |b| {
        // SAFETY: the artifact was written by this engine in this run.
        b.iter(|| unsafe { Component::deserialize_file(runtime.engine(), &artifact).unwrap() })
    });
    group.sample_size(10);
    group.bench_function("compile_cranelift", |b| {
        b.iter(|| Component::new(runtime.engine(), wasm).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
