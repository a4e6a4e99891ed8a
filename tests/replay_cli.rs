//! `switchboard replay` end to end: the built binary over the Lark fixtures and the testing
//! plugin's raw payloads, its channel-neutral JSON lines, `--outbound`, its exit codes and its
//! help.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// Every key of an output line.
const KEYS: [&str; 16] = [
    "file",
    "kind",
    "reason",
    "event_id",
    "message_id",
    "chat_id",
    "chat_type",
    "thread_id",
    "sender_id",
    "sender_name",
    "body",
    "command_body",
    "command",
    "action",
    "addressed_to_bot",
    "attachments",
];

/// The fixtures' installation values (tests/fixtures/lark/README.md), as config and secrets.
const CONSTANTS: [&str; 8] = [
    "--config-value",
    "app_id=cli_a5f3c2e1d4b6a789",
    "--config-value",
    "bot_open_id=ou_7b2e9c41f0a35d68e1c4b97a2d0f3e51",
    "--secret",
    "encrypt_key=fixture-encrypt-key-7Hq2",
    "--secret",
    "verification_token=vT9kQ2mXw7LpR4sZ",
];

/// The workspace root: the documented invocation runs from there.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const FIXTURES: &str = "tests/fixtures/lark";

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
    assert_eq!(files[0], "tests/fixtures/lark/event_bot_added_to_chat.json");

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
    assert_eq!(p2p["sender_id"], "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4");
    assert_eq!(p2p["command"], Value::Null);
    assert_eq!(p2p["action"], Value::Null);
    // A direct chat is always addressed to the bot.
    assert_eq!(p2p["addressed_to_bot"], true);
    assert_eq!(p2p["thread_id"], Value::Null);
    assert_eq!(p2p["attachments"], json!([]));
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
    assert_eq!(thread["chat_type"], "group");

    let image = only(&map, "event_receive_image.json");
    assert_eq!(image["kind"], "message");
    let attachments = image["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{image}");
    assert_eq!(attachments[0]["kind"], "image");
    assert!(
        attachments[0]["ref"].as_str().unwrap().starts_with("img_"),
        "{image}"
    );
    let file = only(&map, "event_receive_file.json");
    assert_eq!(file["attachments"][0]["name"], "Q3-capacity-plan.pdf");

    let added = only(&map, "event_bot_added_to_chat.json");
    assert_eq!(added["kind"], "ignored");
    assert!(
        added["reason"]
            .as_str()
            .unwrap()
            .contains("im.chat.member.bot.added_v1")
    );
    assert_eq!(added["message_id"], Value::Null);

    let card = only(&map, "event_card_action_trigger.json");
    assert_eq!(card["kind"], "action", "{card}");
    assert_eq!(card["action"]["name"], "approve", "{card}");
    assert_eq!(card["sender_id"], "ou_3f9a1c7e5b2d48f6a0c9e7b1d3f5a2c4");
    assert_eq!(
        only(&map, "ws_frame_card_action_callback_and_ack.json")["kind"],
        "action"
    );

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
    let post = only(&map, "event_receive_post_all_tags.json");
    assert_eq!(fragmented["body"], post["body"]);
    assert_eq!(fragmented["attachments"], post["attachments"]);
    let kinds: Vec<&str> = post["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image", "video"], "{post}");

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
        assert_eq!(answer, json!({ "challenge": challenge }), "{name}");
    }

    // Files that are no wrapper are raw payloads: the plugin's decoder decides (REST answers
    // and endpoint responses are no events to it). Replay itself judges no channel keys.
    for name in [
        "rest_bot_info.json",
        "rest_error_rate_limited.json",
        "ws_endpoint_response_ok.json",
        "ws_handshake_error_exceed_conn_limit.json",
    ] {
        let line = only(&map, name);
        assert_eq!(line["kind"], "ignored", "{name}");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("neither a v2 nor a v1 event"),
            "{line}"
        );
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &lines {
        *kinds.entry(line["kind"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            // The card callback, as a webhook-style event and inside its frame.
            ("action", 2),
            ("challenge", 2),
            ("control", 2),
            ("ignored", 24),
            ("message", 27),
            ("rejected", 1),
        ]),
        "every fixture is processed; none is an error"
    );
}

#[test]
fn nothing_is_assumed_without_the_installation_constants() {
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "tests/fixtures/lark/event_receive_text_group_mentions.json",
        "tests/fixtures/lark/webhook_event_encrypted_signed.json",
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
    let builtin = write("g_status.json", &original.replace(text, "/STATUS now"));
    let garbage = write("e_garbage.json", "this is not JSON");
    let broken = write(
        "f_broken.json",
        r#"{"schema":"2.0","header":{},"event":"x"}"#,
    );

    let output = switchboard(&[
        "replay", "--plugin", "lark", &issue, &bare_new, &new_text, &usage, &garbage, &broken,
        &builtin,
    ]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 7, "{lines:?}");
    // Commands as the host reads them: `{name, args}`, whatever the channel.
    assert_eq!(
        lines[0]["command"],
        json!({"name": "issue", "args": "Login page crashes\nSteps: open /login"})
    );
    assert_eq!(lines[1]["command"], json!({"name": "new", "args": ""}));
    assert_eq!(
        lines[2]["command"],
        json!({"name": "new", "args": "start over"})
    );
    assert_eq!(lines[3]["command"], json!({"name": "issue", "args": ""}));
    // Not JSON is still a raw payload: the plugin's decoder refuses it, not replay.
    assert_eq!(lines[4]["kind"], "error");
    assert!(
        lines[4]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid input"),
        "{}",
        lines[4]
    );
    assert_eq!(lines[4]["file"], garbage.as_str());
    // Shaped like an event but refused by the plugin: an error line, not a crash.
    assert_eq!(lines[5]["kind"], "error", "{}", lines[5]);
    assert!(
        lines[5]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid input")
    );
    // A built-in: the host's name, its arguments dropped.
    assert_eq!(lines[6]["command"], json!({"name": "status", "args": ""}));
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
        "tests/fixtures/lark/event_receive_text_p2p.json",
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
        "--config-value <KEY=VALUE>",
        "--secret <KEY=VALUE>",
        "--outbound <FILE>",
        "global configuration-file flag",
        "event payload",
        "frame fixture",
        "webhook request",
        "raw_body",
        "OUTPUT",
        "attachments",
        "kind              message | action | ignored | error",
        "OUTBOUND",
        "\"target\"",
        "\"notice\"",
        "agent_offline",
        "[redacted]",
        "switchboard replay --plugin PLUGIN",
        "tests/fixtures/CHANNEL",
        "README",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    // Nothing of one channel's vocabulary is left in the flags or the shape rules.
    for gone in [
        "--app-id",
        "--bot-open-id",
        "--bot-union-id",
        "--encrypt-key",
        "--verification-token",
        "sender_open_id",
        "`schema`",
        "message_type",
        "lark",
        "feishu",
        "open_id",
        "app_id",
    ] {
        assert!(!help.contains(gone), "--help still has {gone:?}:\n{help}");
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
        json!({ "fragments": [{ "hex": first }] }).to_string(),
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
    let plugins = testing_plugins(dir.path());
    let mut inputs = Vec::new();
    for (name, payload) in [("bad", "bad-reading:echo:hi"), ("good", "echo:hi")] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            json!({ "frame": { "hex": hex::encode(payload) } }).to_string(),
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

/// A plugins directory holding the `testing` plugin.
fn testing_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        Path::new(switchboard::runtime::bundled::TEST_PLUGIN_DIR).join("switchboard_testing.wasm"),
        plugins.join("switchboard_testing.wasm"),
    )
    .unwrap();
    plugins
}

/// Raw payloads of another channel (the testing plugin reads plain text, not JSON) go to its
/// decoder byte for byte: messages with commands and attachments, actions, ignored payloads;
/// a webhook wrapper with method, path and query is verified by the plugin; kv lives in memory
/// for the run.
#[test]
fn raw_payloads_of_another_channel_decode_to_neutral_lines() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = testing_plugins(dir.path());
    let mut inputs = Vec::new();
    for (name, payload) in [
        ("a_message.txt", "echo:/deploy prod now".to_string()),
        ("b_attachment.txt", "attach:image:img_42".to_string()),
        ("c_action.txt", "action:approve=yes".to_string()),
        ("d_ignored.txt", "ignore:not for the host".to_string()),
        ("e_kv.txt", "kv-set:k=v".to_string()),
        ("f_config.txt", "ctx:token".to_string()),
        (
            "g_webhook.json",
            json!({"request": {"method": "PUT", "path": "/hooks/t", "query": "a=1",
                "headers": {"x-sig": "1"}, "raw_body": "group:hi @bot"}})
            .to_string(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, payload).unwrap();
        inputs.push(path.to_str().unwrap().to_string());
    }
    let mut args = vec![
        "--plugins-dir",
        plugins.to_str().unwrap(),
        "replay",
        "--plugin",
        "testing",
        "--config-value",
        "token=from-config",
        "--secret",
        "token=s3cret",
    ];
    args.extend(inputs.iter().map(String::as_str));
    let output = switchboard(&args);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let map = by_file(&lines(&output));

    let message = only(&map, "a_message.txt");
    assert_eq!(message["kind"], "message", "{message}");
    assert_eq!(message["body"], "/deploy prod now");
    assert_eq!(
        message["command"],
        json!({"name": "deploy", "args": "prod now"})
    );
    assert_eq!(message["chat_id"], "test-chat");
    assert_eq!(message["chat_type"], "direct");
    assert_eq!(message["sender_id"], "test-user");
    assert_eq!(message["action"], Value::Null);

    let attachment = only(&map, "b_attachment.txt");
    assert_eq!(attachment["kind"], "message");
    assert_eq!(attachment["message_id"], "att-img_42");
    assert_eq!(
        attachment["attachments"],
        json!([{"kind": "image", "name": "img_42.bin", "mime": "application/octet-stream",
            "size": 6, "ref": "img_42"}])
    );
    assert_eq!(attachment["command"], Value::Null);

    let action = only(&map, "c_action.txt");
    assert_eq!(action["kind"], "action", "{action}");
    assert_eq!(action["message_id"], "action-approve-yes");
    assert_eq!(action["action"], json!({"name": "approve", "value": "yes"}));
    assert_eq!(action["body"], "[action approve] yes");
    assert_eq!(action["command"], Value::Null);
    assert_eq!(action["command_body"], Value::Null);
    assert_eq!(action["addressed_to_bot"], true);
    assert_eq!(action["chat_id"], "test-chat");

    let ignored = only(&map, "d_ignored.txt");
    assert_eq!(
        (ignored["kind"].as_str(), ignored["reason"].as_str()),
        (Some("ignored"), Some("not for the host"))
    );
    assert_eq!(only(&map, "e_kv.txt")["body"], "ok", "kv works in memory");
    // The installation is exactly the pairs given: id `replay`, the config value, the secret.
    assert_eq!(
        only(&map, "f_config.txt")["body"],
        "replay|from-config|true"
    );

    let webhook = only(&map, "g_webhook.json");
    assert_eq!(webhook["kind"], "message", "{webhook}");
    assert_eq!(webhook["chat_type"], "group");
    assert_eq!(webhook["body"], "hi @bot");
    assert_eq!(webhook["addressed_to_bot"], true);
}

#[test]
fn malformed_pairs_and_outbound_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p2p = "tests/fixtures/lark/event_receive_text_p2p.json";
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "--config-value",
        "app_id",
        p2p,
    ]);
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("--config-value \"app_id\": write it as KEY=VALUE"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
    for (name, content, expected) in [
        (
            "both.json",
            json!({"target": {"chat_id": "c", "chat_type": "direct"}, "reply": "a",
            "notice": {"kind": "info", "text": "b"}}),
            "exactly one of",
        ),
        (
            "kind.json",
            json!({"target": {"chat_id": "c", "chat_type": "direct"},
            "notice": {"kind": "nope"}}),
            "unknown variant",
        ),
        (
            "target.json",
            json!({"reply": "a"}),
            "missing field `target`",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content.to_string()).unwrap();
        let output = switchboard(&[
            "replay",
            "--plugin",
            "lark",
            "--outbound",
            path.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(expected),
            "{name}: {}",
            stderr(&output)
        );
    }
    // Neither inputs nor --outbound: clap's usage error.
    let output = switchboard(&["replay", "--plugin", "lark"]);
    assert_eq!(output.status.code(), Some(2));
}

/// `--outbound` renders a reply through the Lark plugin into the requests it would send: every
/// origin of its `capabilities.http` answered by a local capture server, so nothing reaches the
/// real API (the receipt and the token come from the capture server's answer).
#[test]
fn outbound_renders_a_reply_to_captured_requests_without_sending_them() {
    let dir = tempfile::tempdir().unwrap();
    let reply = dir.path().join("reply.json");
    std::fs::write(
        &reply,
        json!({
            "target": {"chat_id": "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081", "chat_type": "group",
                "reply_to": "om_5b3c000000000000000000000000a001"},
            "reply": "Here is the **summary** of the review",
        })
        .to_string(),
    )
    .unwrap();
    let secret = "app-secret-never-printed";
    let secret_pair = format!("app_secret={secret}");
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "--config-value",
        "app_id=cli_a5f3c2e1d4b6a789",
        "--secret",
        &secret_pair,
        "--outbound",
        reply.to_str().unwrap(),
    ]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "stderr: {err}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(!stdout.contains(secret), "a secret was printed: {stdout}");
    let requests: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for request in &requests {
        let mut keys: Vec<&str> = request
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["body", "headers", "method", "url"], "{request}");
        let url = request["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://open.feishu.cn/"),
            "the URL as the plugin wrote it: {url}"
        );
    }
    let send = requests
        .iter()
        .find(|r| {
            r["url"]
                .as_str()
                .unwrap()
                .contains("/open-apis/im/v1/messages")
        })
        .unwrap_or_else(|| panic!("no send request in {requests:?}"));
    assert_eq!(send["method"], "POST");
    assert_eq!(
        send["body"]["receive_id"],
        "oc_1a2b3c4d5e6f70819a2b3c4d5e6f7081"
    );
    let content = send["body"]["content"].as_str().unwrap();
    assert!(
        content.contains("Here is the **summary** of the review"),
        "{send}"
    );
    assert_eq!(
        send["headers"]["authorization"], "Bearer [redacted]",
        "{send}"
    );
    // The token the plugin fetched first: its secret is redacted too.
    let token = &requests[0];
    assert!(
        token["url"]
            .as_str()
            .unwrap()
            .contains("tenant_access_token"),
        "{requests:?}"
    );
    assert_eq!(token["body"]["app_secret"], "[redacted]");
    assert_eq!(requests.len(), 2, "{requests:?}");
    // Only the capture server answers `replay`: the real API was never reached.
    assert!(
        err.contains("outbound: delivered; receipt message id \"replay\""),
        "{err}"
    );

    // A notice without text gets the host's words in the installation's locale.
    let notice = dir.path().join("notice.json");
    std::fs::write(
        &notice,
        json!({"target": {"chat_id": "oc_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b", "chat_type": "direct"},
            "notice": {"kind": "agent_offline"}})
        .to_string(),
    )
    .unwrap();
    let output = switchboard(&[
        "replay",
        "--plugin",
        "lark",
        "--config-value",
        "app_id=cli_a5f3c2e1d4b6a789",
        "--config-value",
        "locale=zh-CN",
        "--secret",
        &secret_pair,
        "--outbound",
        notice.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let send: Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|r| {
            r["url"]
                .as_str()
                .unwrap()
                .contains("/open-apis/im/v1/messages")
        })
        .unwrap_or_else(|| panic!("no send request in {stdout}"));
    assert!(
        send["body"]["content"].as_str().unwrap().contains("不在线"),
        "{send}"
    );
}

/// `replay --plugin slack|telegram` over each plugin's own fixtures (raw Events API bodies and
/// Socket Mode envelopes; raw Telegram `Update`s), as the issues' replay lines promise.
#[test]
fn replays_the_slack_and_telegram_fixtures() {
    let slack = switchboard(&[
        "replay",
        "--plugin",
        "slack",
        "--config-value",
        "bot_user_id=U0BOT00001",
        "--config-value",
        "team_id=T0001",
        "plugins/slack/tests/fixtures",
    ]);
    assert!(slack.status.success(), "{}", stderr(&slack));
    let slack = by_file(&lines(&slack));
    let kind = |map: &BTreeMap<String, Vec<Value>>, name: &str| {
        only(map, name)["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (file, expected) in [
        ("im_message.json", "message"),
        ("app_mention.json", "message"),
        ("thread_reply.json", "message"),
        ("socket_events_api.json", "message"),
        ("socket_slash_commands.json", "message"),
        ("block_actions.json", "action"),
        ("socket_interactive.json", "action"),
        ("bot_message.json", "ignored"),
        ("own_message.json", "ignored"),
        ("message_changed.json", "ignored"),
        ("message_deleted.json", "ignored"),
        ("channel_join.json", "ignored"),
        ("socket_hello.json", "ignored"),
    ] {
        assert_eq!(kind(&slack, file), expected, "slack {file}");
    }
    let mention = only(&slack, "app_mention.json");
    assert_eq!(mention["command"]["name"], "summarize", "{mention}");
    assert_eq!(
        mention["thread_id"], "1718000002.000300",
        "a top-level mention starts a thread keyed by its ts: {mention}"
    );
    let dm = only(&slack, "im_message.json");
    assert_eq!(dm["chat_type"], "direct", "{dm}");
    assert!(
        dm["body"].as_str().unwrap().contains("[the docs](https://"),
        "<url|label> became markdown: {dm}"
    );

    let telegram = switchboard(&[
        "replay",
        "--plugin",
        "telegram",
        "--config-value",
        "bot_username=switchboard_test_bot",
        "--config-value",
        "bot_id=7000000001",
        "plugins/telegram/tests/fixtures",
    ]);
    assert!(telegram.status.success(), "{}", stderr(&telegram));
    let telegram = by_file(&lines(&telegram));
    for (file, expected) in [
        ("private_text.json", "message"),
        ("group_mention.json", "message"),
        ("forum_topic.json", "message"),
        ("photo_caption.json", "message"),
        ("sticker.json", "message"),
        ("callback_query.json", "action"),
        ("edited_message.json", "ignored"),
        ("my_chat_member.json", "ignored"),
        ("service_new_members.json", "ignored"),
    ] {
        assert_eq!(kind(&telegram, file), expected, "telegram {file}");
    }
    let ours = only(&telegram, "group_command_ours.json");
    assert_eq!(
        ours["command"]["name"], "new",
        "/new@ourbot is ours: {ours}"
    );
    let other = only(&telegram, "group_command_other.json");
    assert!(
        other["command"].is_null(),
        "/new@other_bot is not ours: {other}"
    );
    let topic = only(&telegram, "forum_topic.json");
    assert_eq!(
        topic["thread_id"], "40",
        "a forum topic is a thread: {topic}"
    );
}
