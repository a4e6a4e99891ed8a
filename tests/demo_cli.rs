//! `switchboard demo` — the README's main command — runs the whole pipeline on a fresh SQLite
//! database against the fake Lark over a real WebSocket, and prints its transcript and summary
//! line.

use std::process::Command;

#[test]
fn demo_runs_the_scripted_conversation_and_prints_the_summary() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("demo")
        .env(
            "SWITCHBOARD_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"),
        )
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "p2p text                             → ingested",
        "group chatter, bot not mentioned     → dropped:not_addressed_in_group",
        "redelivery of the first message      → dropped:duplicate",
        "unbound sender (bound policy)        → needs_binding",
        "/new                                 → fresh_pending",
        "/issue: a command for the agent      → ingested",
        "/status: answered by the host        → builtin",
        "user      message  r1 three",
        // Over the long connection: every event ACKed only after it was durable; a lost ACK
        // makes the fake redeliver, and the redelivery is absorbed.
        "rich post (its ACK is lost)          → ingested",
        "ACK lost; redelivered after 1 s → dropped:duplicate (stored once)",
        // 17 scripted events (an image among them), the lost ACK's redelivery and the two
        // approval presses.
        "long connections: 2 WebSockets, 20 event deliveries, 19 ACKs (all 200: true)",
        // An approval card with its buttons; a non-approver's press refused, the approver's
        // press answered with the host's toast and the decided card.
        "send  oc_demo_p2p_alice          interactive Your approval is needed:",
        "Bob presses Approve    → toast \"You can't approve this\" (error)",
        "Alice presses Approve  → toast \"Approved\" (success)",
        "the waiting worker reads: approved",
        // The echo agent's replies, streamed into CardKit cards at the fake Lark and closed.
        "send  oc_demo_p2p_dave           card        echo: one ⏎ two ⏎ three",
        // An image downloaded into the blob store after it was stored; the echo names it with
        // the type sniffed from its bytes.
        "image (downloaded to the blob store) → ingested",
        "send  oc_demo_p2p_erin           card        echo: [Image] ⏎ [attachment: image, image/png, 67 bytes]",
        "send  oc_demo_team               card        echo: <recent_context count=\"1\"> ⏎ [Bob]: deploy",
        "replies streamed into cards: 7 cards,",
        "all closed: true",
        // Enrichment through the fake's REST API: quoted parent, forwarded transcript.
        "<quoted_message message_id=\"om_demo_p2p_1\"",
        "<forwarded_messages count=\"2\">",
        // Notices for the outcomes that ask for one.
        "user      command  r2 /issue Login times out after 5 minutes",
        "send  oc_demo_p2p_carol          text        Run: ",
        "send  ou_demo_bob                interactive",
        // One compaction with its events.
        "compaction_start   about",
        "compaction_done    hidden summary #",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo: "))
        .expect("summary line");
    assert_eq!(
        summary,
        "demo: 17 events, 19 messages stored, 7 runs, 7 replies delivered, 4 dropped"
    );
}

/// Runs `switchboard demo --channel <channel>` and returns its stdout (asserting success).
fn run_demo(channel: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["demo", "--channel", channel])
        .env(
            "SWITCHBOARD_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"),
        )
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn assert_lines(stdout: &str, expected: &[&str]) {
    for line in expected {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn the_slack_demo_runs_over_socket_mode() {
    let stdout = run_demo("slack");
    assert_lines(
        &stdout,
        &[
            "learned bot UFAKEBOT01 in team TFAKETEAM1 from auth.test",
            "DM                                           → ingested",
            "reply in the bot's thread, no mention        → ingested",
            "channel chatter, bot not addressed           → dropped:not_addressed_in_group",
            "the same event delivered twice               → ingested then dropped:duplicate",
            "`disconnect` → new connection, then a DM     → ingested",
            "button press on the bot's reply              → ACKed once stored",
            "user      action   r2 [action approve] yes",
            // The mention's reply and the thread reply's answer are in the mention's thread.
            "OK: your next message starts a fresh conversation.",
            "Socket Mode: 2 connections, 9 ACKs, 0 envelopes never ACKed",
        ],
    );
    let threaded = stdout
        .lines()
        .filter(|l| l.starts_with("  C0DEMOTEAM  thread 1"))
        .count();
    assert_eq!(threaded, 2, "both channel replies in the thread:\n{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("demo: ")).unwrap();
    assert_eq!(
        summary,
        "demo: 8 steps, 11 messages stored, 5 replies stored, 6 posted, 2 dropped"
    );
}

#[test]
fn the_telegram_demo_runs_over_long_polling() {
    let stdout = run_demo("telegram");
    assert_lines(
        &stdout,
        &[
            "learned @switchboard_test_bot from getMe",
            "private message                              → ingested",
            "group chatter, bot not addressed             → dropped:not_addressed_in_group",
            "/status@some_other_bot (another bot's)       → dropped:not_addressed_in_group",
            "reply to the bot's message                   → ingested",
            "button press (callback_query)                → answered",
            "/new                                         → fresh_pending",
            // Markdown became Telegram HTML, escaped; the topic reply stayed in its topic.
            "echo: Can you summarise <i>yesterday's</i> review?",
            "chat -1003001  topic 77   reply to 5    echo: @switchboard_test_bot is the &lt;b&gt; tag escaped?",
            "0 updates left unconfirmed",
        ],
    );
    let summary = stdout.lines().find(|l| l.starts_with("demo: ")).unwrap();
    assert_eq!(
        summary,
        "demo: 8 steps, 10 messages stored, 5 replies stored, 6 sent, 2 dropped"
    );
}
