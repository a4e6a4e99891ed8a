//! Plugins compiled by `host/build.rs` for wasm32-wasip2 and embedded in the binary, so a fresh
//! checkout runs with the Lark plugin and no extra step.

/// One embedded plugin.
#[derive(Debug, Clone, Copy)]
pub struct BundledPlugin {
    /// File name it was built as.
    pub file: &'static str,
    /// The component bytes.
    pub wasm: &'static [u8],
}

/// The plugins this binary carries.
pub const BUNDLED: &[BundledPlugin] = &[
    BundledPlugin {
        file: "switchboard_lark.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_lark.wasm")),
    },
    BundledPlugin {
        file: "switchboard_slack.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_slack.wasm")),
    },
    BundledPlugin {
        file: "switchboard_telegram.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_telegram.wasm")),
    },
];

/// Directory holding the test plugins built alongside (used by the test suite and benchmarks).
pub const TEST_PLUGIN_DIR: &str = env!("SWITCHBOARD_TEST_PLUGIN_DIR");
