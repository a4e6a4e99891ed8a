//! Deterministic per-call cost of a warm plugin call, for instruction counting under
//! `valgrind --tool=callgrind` (wall-clock benches are noisy on a shared machine).
//!
//! `callcost <mode> <calls> [cache-dir]` runs `calls` warm calls after one untimed warm-up call.
//! Run it twice with different `calls` under callgrind and divide the difference of the total
//! instruction counts by the difference of the call counts: setup cancels out.
//!
//! Modes:
//! - `wasm-echo`: the testing plugin's echo decode, one `block_on` per call (as
//!   `benches/runtime.rs` does);
//! - `wasm-echo-task`: the same calls back to back inside one async task (how the host calls
//!   plugins);
//! - `native-echo`: the same parse + result record natively;
//! - `wasm-decode` / `native-decode`: the Lark decode of the p2p text fixture.
//!
//! The cache dir (default `/tmp/switchboard-callcost-cache`) keeps the precompiled artifacts, so
//! a run under valgrind does not compile the plugins: run once natively first.

use std::sync::Arc;

use switchboard::capabilities::{OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::InstallationContext;
use switchboard::runtime::bundled::TEST_PLUGIN_DIR;
use switchboard::runtime::{Runtime, RuntimeSettings, decoder};

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: callcost wasm-echo|wasm-echo-task|native-echo|wasm-decode|native-decode <calls> [cache-dir]";
    let mode = args.get(1).expect(usage).as_str();
    let calls: usize = args.get(2).expect(usage).parse().expect(usage);
    let cache = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "/tmp/switchboard-callcost-cache".into());
    let native_cx =
        switchboard_lark::decode::DecodeContext::new("ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51", "");
    match mode {
        "native-echo" => {
            for _ in 0..calls {
                std::hint::black_box(native_echo(std::hint::black_box(b"echo:x")));
            }
            return;
        }
        "native-decode" => {
            for _ in 0..calls {
                std::hint::black_box(
                    switchboard_lark::decode::decode_event(
                        std::hint::black_box(TEXT_P2P),
                        &native_cx,
                    )
                    .unwrap(),
                );
            }
            return;
        }
        _ => {}
    }
    let services = Services::new(None, OperatorPolicy::default(), ServiceLimits::default());
    let settings = RuntimeSettings {
        cache_dir: Some(cache.into()),
        ..Default::default()
    };
    let runtime = Runtime::new(settings, services).expect("runtime");
    runtime.load_bundled().expect("bundled plugins");
    runtime
        .load_file(&std::path::Path::new(TEST_PLUGIN_DIR).join("switchboard_testing.wasm"))
        .expect("testing plugin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cx = Arc::new(
        InstallationContext::new("bench")
            .with_config("app_id", "cli_a5f3c2e1d4b6a789")
            .with_config("bot_open_id", "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51"),
    );
    let lark = runtime.plugin("lark").unwrap();
    let testing = runtime.plugin("testing").unwrap();
    // Warm-up: instantiate and park one instance.
    rt.block_on(testing.decode(&cx, b"echo:x"))
        .unwrap()
        .unwrap();
    rt.block_on(lark.decode(&cx, TEXT_P2P)).unwrap().unwrap();
    match mode {
        "wasm-echo" => {
            for _ in 0..calls {
                std::hint::black_box(
                    rt.block_on(testing.decode(&cx, b"echo:x"))
                        .unwrap()
                        .unwrap(),
                );
            }
        }
        "wasm-echo-task" => rt.block_on(async {
            for _ in 0..calls {
                std::hint::black_box(testing.decode(&cx, b"echo:x").await.unwrap().unwrap());
            }
        }),
        "wasm-decode" => {
            for _ in 0..calls {
                std::hint::black_box(rt.block_on(lark.decode(&cx, TEXT_P2P)).unwrap().unwrap());
            }
        }
        other => panic!("unknown mode {other}; {usage}"),
    }
}
