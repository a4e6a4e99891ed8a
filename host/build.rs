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

    if !ensure_wasm_target() {
        // `cargo::error` has been printed; cargo fails the build after this script returns.
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

/// The target the plugins are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain building this crate has the standard library of [`WASM_TARGET`],
/// adding it through rustup when it is missing: rustup installs the targets listed in
/// `rust-toolchain.toml` only together with a toolchain, never into one already installed, so a
/// machine that had the pinned toolchain before would otherwise fail with "can't find crate for
/// `core`" deep inside the nested build. Returns false after printing one `cargo::error` with
/// the one thing to do when the target cannot be added.
fn ensure_wasm_target() -> bool {
    // RUSTC is the compiler cargo uses for this build (a rustup proxy or a toolchain's own
    // binary); with a proxy, RUSTUP_TOOLCHAIN (set by rustup's cargo proxy) picks the same
    // toolchain again.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let install = match &toolchain {
        Some(name) => format!("rustup target add {WASM_TARGET} --toolchain {name}"),
        None => format!("rustup target add {WASM_TARGET}"),
    };
    let sysroot = match Command::new(&rustc).args(["--print", "sysroot"]).output() {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        // Without a sysroot there is nothing to check: let the nested build speak for itself.
        _ => return true,
    };
    let target_lib = sysroot.join("lib").join("rustlib").join(WASM_TARGET);
    if target_lib.is_dir() {
        return true;
    }

    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", WASM_TARGET]);
    if let Some(name) = &toolchain {
        rustup.args(["--toolchain", name]);
    }
    let outcome = match rustup.status() {
        Ok(status) if status.success() && target_lib.is_dir() => Ok(()),
        Ok(status) if status.success() => Err(format!(
            "rustup reported success but {} is still missing",
            target_lib.display()
        )),
        Ok(status) => Err(format!("`{install}` failed ({status})")),
        Err(e) => Err(format!("rustup could not be run ({e})")),
    };
    match outcome {
        Ok(()) => {
            println!(
                "cargo:warning=the {WASM_TARGET} target was missing from the Rust toolchain \
                 ({}); added it with `{install}`",
                sysroot.display()
            );
            true
        }
        Err(why) => {
            println!(
                "cargo::error=the bundled plugins need the {WASM_TARGET} standard library, which \
                 is not installed in {} and could not be added: {why}. Install it with \
                 `{install}` (or your Rust distribution's {WASM_TARGET} standard library) and \
                 build again.",
                sysroot.display()
            );
            false
        }
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
}
