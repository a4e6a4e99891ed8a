//! The host is channel-neutral: no channel's name in `host/src/**`, `crates/core/src/**` (the
//! domain and the store) or in new migrations.
//!
//! The words below (case-insensitive, also inside identifiers such as `bot_open_id` or
//! `larksuite`, and in file names) must not appear in those trees, except in
//! the files listed in [`ALLOWED`], each with the reason it may. Channel words belong in
//! `plugins/`; the host uses neutral names (channel, routing key, participant, alt id, …).
//!
//! The scanner checks itself: the matcher must find a planted word, every allowed path must
//! exist (a renamed allowed file must not silently widen the rule), and the walk must reach the
//! host's own sources.

use std::path::{Path, PathBuf};

/// Channel words the host must not know (matched lowercase, as substrings).
const WORDS: &[&str] = &[
    "lark", "feishu", "open_id", "union_id", "app_id", "slack", "telegram", "xoxb", "xapp",
];

/// Directories scanned, relative to the repository root.
const SCANNED: &[&str] = &["host/src", "crates/core/src", "migrations"];

/// Paths (relative to the repository root, `/`-separated) that may name a channel. An entry
/// ending in `/` allows everything under that directory.
const ALLOWED: &[(&str, &str)] = &[
    (
        "host/src/runtime/bundled.rs",
        "the list of plugins bundled into the binary names them",
    ),
    (
        "host/src/cli/demo.rs",
        "the demo drives the bundled Lark plugin with a scripted conversation",
    ),
    (
        "host/src/cli/demo/",
        "the Slack and Telegram demos drive their bundled plugins against their fakes",
    ),
    (
        "host/src/cli/bench.rs",
        "the benchmarks measure the bundled plugins against the channels' official SDK peers",
    ),
    (
        "host/src/cli/bench/",
        "the benchmark harness's parts (same reason as bench.rs)",
    ),
    (
        "host/src/cli/lark_wire.rs",
        "builds the Lark events the demo sends through the bundled plugin",
    ),
    (
        "migrations/postgres/0001_plugin_kv.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0002_ingest.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0003_runs.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0004_agent_presence.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0005_compaction.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0006_outbox.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0007_retention.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/postgres/0008_channel_neutral.sql",
        "names the old channel columns to move them to neutral ones",
    ),
    (
        "migrations/sqlite/0001_plugin_kv.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0002_ingest.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0003_runs.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0004_agent_presence.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0005_compaction.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0006_outbox.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0007_retention.sql",
        "shipped migration, predates the rule, never edited",
    ),
    (
        "migrations/sqlite/0008_channel_neutral.sql",
        "names the old channel columns to move them to neutral ones",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The channel words in `text`, lowercase, in [`WORDS`] order.
fn channel_words(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    WORDS
        .iter()
        .copied()
        .filter(|w| lower.contains(w))
        .collect()
}

fn allowed(rel: &str) -> bool {
    ALLOWED.iter().any(|(entry, _)| {
        if entry.ends_with('/') {
            rel.starts_with(entry)
        } else {
            rel == *entry
        }
    })
}

/// Every file under `dir`, as `/`-separated paths relative to the repository root, sorted.
fn files_under(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under the root");
                let rel: Vec<_> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(rel.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// Every offence under the scanned directories, as `path:line: text` (line 0: the file name).
fn offences(root: &Path) -> (usize, Vec<String>) {
    let mut scanned = 0;
    let mut found = Vec::new();
    for dir in SCANNED {
        for rel in files_under(root, dir) {
            if allowed(&rel) {
                continue;
            }
            scanned += 1;
            let name_words = channel_words(&rel);
            if !name_words.is_empty() {
                found.push(format!("{rel}:0: file name has {name_words:?}"));
            }
            let bytes = std::fs::read(root.join(&rel)).expect("readable file");
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                if !channel_words(line).is_empty() {
                    found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    (scanned, found)
}

#[test]
fn the_host_names_no_channel() {
    let root = root();
    let (scanned, found) = offences(&root);
    assert!(
        scanned > 20,
        "the scan reached only {scanned} files under {SCANNED:?}; is the root {} right?",
        root.display()
    );
    assert!(
        found.is_empty(),
        "channel words {WORDS:?} outside the allowed files:\n{}\n\nchannel words belong in \
         plugins/; use neutral names in the host (channel, routing key, participant, alt id, …). \
         Only the files listed in tests/channel_neutral.rs ALLOWED may name a channel.",
        found.join("\n")
    );
}

#[test]
fn the_matcher_finds_planted_words() {
    assert_eq!(channel_words("let bot_open_id = x;"), ["open_id"]);
    assert_eq!(channel_words("https://open.LarkSuite.com"), ["lark"]);
    assert_eq!(channel_words("/// FEISHU"), ["feishu"]);
    assert_eq!(channel_words("UNION_ID app_id"), ["union_id", "app_id"]);
    assert!(channel_words("a channel's routing key, alt ids").is_empty());
}

#[test]
fn the_scan_reports_a_planted_word() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("host/src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(dir.path().join("crates/core/src")).unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/sqlite")).unwrap();
    std::fs::write(src.join("clean.rs"), "fn routing_key() {}\n").unwrap();
    std::fs::write(src.join("dirty.rs"), "// ok\n/// The Lark app\n").unwrap();
    std::fs::write(src.join("lark.rs"), "\n").unwrap();
    std::fs::write(
        dir.path().join("migrations/sqlite/0009_new.sql"),
        "ALTER TABLE x ADD open_id TEXT;\n",
    )
    .unwrap();
    // An allowed path is skipped even here.
    std::fs::create_dir_all(src.join("cli")).unwrap();
    std::fs::write(src.join("cli/demo.rs"), "// lark\n").unwrap();
    let (scanned, found) = offences(dir.path());
    assert_eq!(scanned, 4);
    assert_eq!(
        found,
        [
            "host/src/dirty.rs:2: /// The Lark app",
            "host/src/lark.rs:0: file name has [\"lark\"]",
            "migrations/sqlite/0009_new.sql:1: ALTER TABLE x ADD open_id TEXT;",
        ]
    );
}

#[test]
fn every_allowed_path_exists() {
    let root = root();
    let missing: Vec<_> = ALLOWED
        .iter()
        .filter(|(entry, _)| {
            let path = root.join(entry.trim_end_matches('/'));
            if entry.ends_with('/') {
                !path.is_dir()
            } else {
                !path.is_file()
            }
        })
        .map(|(entry, why)| format!("{entry} ({why})"))
        .collect();
    assert!(
        missing.is_empty(),
        "allowed paths that no longer exist (renamed? update ALLOWED rather than widen it):\n{}",
        missing.join("\n")
    );
    for (entry, why) in ALLOWED {
        assert!(
            SCANNED.iter().any(|d| entry.starts_with(&format!("{d}/"))),
            "{entry} is outside the scanned directories"
        );
        assert!(!why.trim().is_empty(), "{entry} has no reason");
    }
}
