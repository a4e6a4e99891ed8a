//! Builds the bundled plugins (and the test plugins) for wasm32-wasip2 with a nested cargo, into
//! a target directory of their own so it never contends with this build's lock, and copies the
//! components into OUT_DIR where `runtime::bundled` embeds them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, produced file) pairs.
const PLUGINS: &[(&str, &str)] = &[
    ("switchboard-lark", "switchboard_lark.wasm"),
    ("switchboard-testing", "switchboard_testing.wasm"),
    (
        "switchboard-testing-future",
        "switchboard_testing_future.wasm",
    ),
    (
        "switchboard-testing-escape",
        "switchboard_testing_escape.wasm",
    ),
    ("switchboard-testing-poll", "switchboard_testing_poll.wasm"),
    ("switchboard-slack", "switchboard_slack.wasm"),
    ("switchboard-telegram", "switchboard_telegram.wasm"),
];

/// Variables of the outer build that must not leak into the nested wasm build.
const SCRUB: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_LLVM_COV",
    "LLVM_PROFILE_FILE",
    "CARGO_INCREMENTAL",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out: share one wasm build dir
    // per target directory.
    let target_root = out_dir.ancestors().nth(4).unwrap_or(&out_dir).to_path_buf();
    let wasm_target = target_root.join("wasm-plugins");

    for dir in ["wit", "plugins"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    // Development escape hatch while the plugins do not build (a contract change in progress):
    // the host compiles against empty placeholders, and loading a bundled plugin fails.
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_SKIP_PLUGIN_BUILD");
    if std::env::var_os("SWITCHBOARD_SKIP_PLUGIN_BUILD").is_some() {
        for (_, file) in PLUGINS {
            let path = out_dir.join(file);
            if !path.exists() {
                std::fs::write(&path, b"").expect("write a placeholder plugin");
            }
        }
        println!(
            "cargo:rustc-env=SWITCHBOARD_TEST_PLUGIN_DIR={}",
            out_dir.display()
        );
        return;
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&wasm_target);
    for (package, _) in PLUGINS {
        command.args(["-p", package]);
    }
    for var in SCRUB {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    if !status.success() {
        panic!(
            "building the bundled plugins for wasm32-wasip2 failed (see the errors above).\n\
             If the target is missing, install it with `rustup target add wasm32-wasip2`.\n\
             Reproduce with: cargo build --profile plugin --target wasm32-wasip2 -p switchboard-lark"
        );
    }
    let built = wasm_target.join("wasm32-wasip2").join("plugin");
    for (_, file) in PLUGINS {
        copy(&built.join(file), &out_dir.join(file));
    }
    println!(
        "cargo:rustc-env=SWITCHBOARD_TEST_PLUGIN_DIR={}",
        out_dir.display()
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}
