//! `switchboard replay` end to end: the built binary over the Lark fixtures, its JSON lines, its
//! exit codes and its help.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Every key of an output line, in order.
const KEYS: [&str; 17] = [
    "file",
    "kind",
    "reason",
    "event_id",
    "message_id",
    "chat_id",
    "chat_type",
    "sender_open_id",
    "message_type",
    "body",
    "command_body",
    "command",
    "addressed_to_bot",
    "parent_id",
    "root_id",
    "thread_id",
    "create_time_ms",
];

/// The fixtures' installation constants (shared/fixtures/lark/README.md).
const CONSTANTS: [&str; 8] = [
    "--app-id",
    "cli_a5f3c2e1d4b6a789",
    "--bot-open-id",
    "ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51",
    "--encrypt-key",
    "fixture-encrypt-key-7Hq2",
    "--verification-token",
    "vT9kQ2mXw7LpR4sZ",
];

/// The workspace root: the documented invocation runs from there.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const FIXTURES: &str = "../shared/fixtures/lark";

/// Runs `switchboard <args>` from the workspace root with a cache in the test tmpdir.
fn switchboard(args: &[&str]) -> Output {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-cli-cache");
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .current_dir(workspace())
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .env_remove("SWITCHBOARD_PLUGINS_DIR")
        .env_remove("SWITCHBOARD_LOG")
        .output()
        .expect("the switchboard binary runs")
}

/// Parses stdout as JSON lines, checking every line carries exactly the documented keys.
fn lines(output: &Output) -> Vec<Value> {
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout");
    stdout
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let keys: Vec<&str> = value
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {line}"))
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected = KEYS.to_vec();
            expected.sort_unstable();
            let mut found = keys.clone();
            found.sort_unstable();
            assert_eq!(found, expected, "keys of {line}");
            value
        })
        .collect()
}

/// Lines by the file name they came from.
fn by_file(lines: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in lines {
        let file = line["file"].as_str().unwrap();
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        map.entry(name.into_owned()).or_default().push(line.clone());
    }
    map
}

fn only<'a>(map: &'a BTreeMap<String, Vec<Value>>, name: &str) -> &'a Value {
    let lines = map
        .get(name)
        .unwrap_or_else(|| panic!("no line for {name}"));
    assert_eq!(lines.len(), 1, "{name}: {lines:?}");
    &lines[0]
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn replays_every_lark_fixture_as_json_lines() {
    let mut args = vec!["replay", "--plugin", "lark"];
    args.extend(CONSTANTS);
    args.push(FIXTURES);
    let output = switchboard(&args);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = lines(&output);

    // Each fixture file is one inbound unit (the fragmented frame reassembles into one message).
    let mut names: Vec<String> = std::fs::read_dir(workspace().join(FIXTURES))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let map = by_file(&lines);
    assert_eq!(map.keys().cloned().collect::<Vec<_>>(), names);
    assert_eq!(lines.len(), names.len(), "one line per fixture");
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort_unstable();
    assert_eq!(files, sorted, "a directory is replayed in name order");
    assert_eq!(
        files[0],
        "../shared/fixtures/lark/event_bot_added_to_chat.json"
    );

    let p2p = only(&map, "event_receive_text_p2p.json");
    assert_eq!(p2p["kind"], "message");
    assert_eq!(
        p2p["body"],
        "Can you summarise yesterday's design review?\n会后请发我纪要"
    );
    assert_eq!(p2p["command_body"], p2p["body"]);
    assert_eq!(p2p["event_id"], "9d41f2c7000000000000000000001eef");
    assert_eq!(p2p["message_id"], "om_5b3c000000000000000000000000a001");
    assert_eq!(p2p["chat_id"], "oc_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b");
    assert_eq!(p2p["chat_type"], "direct");
    assert_eq!(p2p["sender_open_id"], "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4");
    assert_eq!(p2p["message_type"], "text");
    assert_eq!(p2p["command"], Value::Null);
    assert_eq!(p2p["addressed_to_bot"], false);
    assert_eq!(p2p["parent_id"], Value::Null);
    assert_eq!(p2p["create_time_ms"], 1_731_300_000_000i64);
    assert_eq!(p2p["reason"], Value::Null);

    let group = only(&map, "event_receive_text_group_mentions.json");
    assert_eq!(group["chat_type"], "group");
    assert_eq!(group["addressed_to_bot"], true);
    assert_eq!(
        group["body"],
        "please review @Bob Li's PR [PR #42](https://git.example.com/org/repo/pull/42) before 5pm"
    );

    let thread = only(&map, "event_receive_reply_in_thread.json");
    assert_eq!(thread["thread_id"], "omt_1a7c3e9b5d2f4");
    assert_eq!(thread["root_id"], thread["parent_id"]);

    let added = only(&map, "event_bot_added_to_chat.json");
    assert_eq!(added["kind"], "ignored");
    assert!(
        added["reason"]
            .as_str()
            .unwrap()
            .contains("im.chat.member.bot.added_v1")
    );
    assert_eq!(added["message_id"], Value::Null);

    // Frames: control, ignored, the single event and the reassembled fragmented one.
    let pong = only(&map, "ws_frame_pong_with_config.json");
    assert_eq!(pong["kind"], "control");
    let reason = pong["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("pong") && reason.contains("ping_interval_ms=90000"),
        "{reason}"
    );
    assert_eq!(only(&map, "ws_frame_ping.json")["reason"], "ping");
    assert_eq!(
        only(&map, "ws_frame_card_type_ignored.json")["kind"],
        "ignored"
    );
    let single = only(&map, "ws_frame_event_single_and_ack.json");
    assert_eq!(single["message_id"], group["message_id"]);
    assert_eq!(single["body"], group["body"]);
    let fragmented = only(&map, "ws_frame_event_fragmented.json");
    assert_eq!(fragmented["kind"], "message");
    assert_eq!(fragmented["message_type"], "post");
    assert_eq!(
        fragmented["body"],
        only(&map, "event_receive_post_all_tags.json")["body"]
    );

    // Webhooks.
    let signed = only(&map, "webhook_event_encrypted_signed.json");
    assert_eq!(signed["kind"], "message");
    assert_eq!(signed["message_id"], p2p["message_id"]);
    assert_eq!(signed["body"], p2p["body"]);
    let tampered = only(&map, "webhook_event_tampered_signature.json");
    assert_eq!(tampered["kind"], "rejected");
    assert!(
        tampered["reason"]
            .as_str()
            .unwrap()
            .starts_with("bad-signature"),
        "{tampered}"
    );
    for (name, challenge) in [
        (
            "webhook_url_verification_plain.json",
            "ajls384kdj1234-fixture",
        ),
        (
            "webhook_url_verification_encrypted.json",
            "c9b1f0e2-encrypted-fixture",
        ),
    ] {
        let line = only(&map, name);
        assert_eq!(line["kind"], "challenge", "{name}");
        let answer: Value = serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({ "challenge": challenge }),
            "{name}"
        );
    }

    // Files that are no inbound unit.
    for name in [
        "rest_bot_info.json",
        "rest_error_rate_limited.json",
        "ws_endpoint_response_ok.json",
        "ws_handshake_error_exceed_conn_limit.json",
    ] {
        let line = only(&map, name);
        assert_eq!(line["kind"], "error", "{name}");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .starts_with("not an event, frame or webhook request"),
            "{line}"
        );
    }
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "error").count(),
        12,
        "{kinds:?}"
    );
}

#[test]
fn nothing_is_assumed_without_the_installation_constants() {
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "../shared/fixtures/lark/event_receive_text_group_mentions.json",
        "../shared/fixtures/lark/webhook_event_encrypted_signed.json",
    ]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "message");
    assert_eq!(lines[0]["addressed_to_bot"], false, "no bot identity given");
    assert!(
        lines[0]["body"]
            .as_str()
            .unwrap()
            .starts_with("@Helper Bot please review")
    );
    // Without secrets nothing can authenticate the request: refused before decryption.
    assert_eq!(lines[1]["kind"], "rejected");
    assert!(
        lines[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("bad-token: the installation has neither"),
        "{}",
        lines[1]
    );
}

#[test]
fn commands_and_unreadable_inputs_become_lines() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(
        workspace()
            .join(FIXTURES)
            .join("event_receive_text_p2p.json"),
    )
    .unwrap();
    let text = r"Can you summarise yesterday's design review?\\n会后请发我纪要";
    assert!(original.contains(text));
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    };
    let issue = write(
        "a_issue.json",
        &original.replace(text, r"/issue Login page crashes\\nSteps: open /login"),
    );
    let bare_new = write("b_new.json", &original.replace(text, "/new"));
    let new_text = write(
        "c_new_text.json",
        &original.replace(text, "/new start over"),
    );
    let usage = write("d_usage.json", &original.replace(text, "/issue"));
    let garbage = write("e_garbage.json", "this is not JSON");
    let broken = write(
        "f_broken.json",
        r#"{"schema":"2.0","header":{},"event":"x"}"#,
    );

    let output = switchboard(&[
        "replay", "--plugin", "lark", &issue, &bare_new, &new_text, &usage, &garbage, &broken,
    ]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(
        lines[0]["command"],
        serde_json::json!({"issue": {"title": "Login page crashes", "description": "Steps: open /login"}})
    );
    assert_eq!(lines[1]["command"], serde_json::json!({ "new": null }));
    assert_eq!(
        lines[2]["command"],
        serde_json::json!({ "new": "start over" })
    );
    assert_eq!(lines[3]["command"], "issue_usage");
    assert_eq!(lines[4]["kind"], "error");
    assert!(lines[4]["reason"].as_str().unwrap().contains("not JSON"));
    assert_eq!(lines[4]["file"], garbage.as_str());
    // Shaped like an event but refused by the plugin: an error line, not a crash.
    assert_eq!(lines[5]["kind"], "error", "{}", lines[5]);
    assert!(
        lines[5]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid input")
    );
}

#[test]
fn unknown_plugin_exits_2_and_names_the_loaded_plugins() {
    let output = switchboard(&["replay", "--plugin", "nope", FIXTURES]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr(&output);
    assert!(stderr.contains("unknown plugin `nope`"), "{stderr}");
    assert!(stderr.contains("loaded plugins: lark"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn missing_file_exits_2_and_names_it() {
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "../shared/fixtures/lark/event_receive_text_p2p.json",
        "no/such/file.json",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr(&output);
    assert!(
        stderr.contains("no such file or directory: no/such/file.json"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is replayed");
}

#[test]
fn help_documents_inputs_output_and_an_example() {
    let output = switchboard(&["replay", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--plugin",
        "--encrypt-key",
        "event payload",
        "frame fixture",
        "webhook request",
        "OUTPUT",
        "create_time_ms",
        "switchboard replay --plugin lark",
        "../shared/fixtures/lark",
        "README",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn a_fragment_that_never_completes_is_reported() {
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(
            workspace()
                .join(FIXTURES)
                .join("ws_frame_event_fragmented.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let first = fixture["fragments"][0]["hex"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("first_fragment_only.json");
    std::fs::write(
        &path,
        serde_json::json!({ "fragments": [{ "hex": first }] }).to_string(),
    )
    .unwrap();
    let output = switchboard(&["replay", "--plugin", "lark", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "error");
    assert_eq!(
        lines[0]["reason"],
        "incomplete message 5e7a9c1b-3d5f-4a7b-9c1d-3e5f7a9b1c2d: 1 of 2 fragments received"
    );
}

/// A plugin whose event-reading (made while classifying a frame) contradicts its own decode
/// call gets an `error` line naming the difference: the host uses readings in place of decode,
/// so the integrator must see it offline. A frame without a reading replays normally.
#[test]
fn an_event_reading_that_contradicts_decode_is_an_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR).join("switchboard_testing.wasm"),
        plugins.join("switchboard_testing.wasm"),
    )
    .unwrap();
    let mut inputs = Vec::new();
    for (name, payload) in [("bad", "bad-reading:echo:hi"), ("good", "echo:hi")] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            serde_json::json!({ "frame": { "hex": hex::encode(payload) } }).to_string(),
        )
        .unwrap();
        inputs.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec![
        "--plugins-dir",
        plugins.to_str().unwrap(),
        "replay",
        "--plugin",
        "testing",
    ];
    args.extend(inputs.iter().map(String::as_str));
    let output = switchboard(&args);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = by_file(&lines(&output));
    let bad = only(&lines, "bad.json");
    assert_eq!(bad["kind"], "error", "{bad}");
    let reason = bad["reason"].as_str().unwrap();
    assert!(
        reason.contains("event-reading differs from decode")
            && reason.contains("not what decode says"),
        "{reason}"
    );
    let good = only(&lines, "good.json");
    assert_eq!(
        (good["kind"].as_str(), good["body"].as_str()),
        (Some("message"), Some("hi")),
        "{good}"
    );
}
