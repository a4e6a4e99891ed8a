//! `switchboard demo --channel slack`: the bundled Slack plugin over Socket Mode against a local
//! fake Slack (`fake-slack`: Web API subset, Socket Mode server). The installation is added as an
//! operator adds it (`on-install` learns the bot's user id and team from `auth.test`); the host
//! opens the Socket Mode connection, and the fake pushes a scripted conversation: a DM, a channel
//! mention that starts a thread, a reply in that thread without a mention, chatter that is not
//! for the bot, a redelivered envelope, a `disconnect` that makes the host reconnect, a slash
//! command and a button press. Each envelope is ACKed only once its event is stored; the echo
//! agent's replies land in the right threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_slack::FakeSlack;

use super::common::{DemoHost, config, preview, until};

const BOT_TOKEN: &str = "xoxb-demo-bot-token";
const APP_TOKEN: &str = "xapp-demo-app-token";
const SIGNING_SECRET: &str = "demo-signing-secret";
const DM: &str = "D0DEMOALICE";
const TEAM_CHANNEL: &str = "C0DEMOTEAM";
const ALICE: &str = "U0DEMOALICE";
const BOB: &str = "U0DEMOBOB";
const DEBOUNCE_MS: i64 = 300;

/// Runs the Slack demo in `dir`.
pub async fn run(dir: &Path, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let slack = FakeSlack::start(BOT_TOKEN, APP_TOKEN, SIGNING_SECRET).await;
    slack.add_user(ALICE, "Alice");
    slack.add_user(BOB, "Bob");
    slack.set_disconnect_grace(Duration::from_millis(500));
    let config = config(
        dir,
        cache_dir,
        &[
            ("https://slack.com", slack.base_url()),
            ("https://files.slack.com", slack.base_url()),
            ("wss://wss-primary.slack.com", slack.ws_origin()),
        ],
    );
    let mut host = DemoHost::start(&config).await?;
    let installation = host
        .install(
            "slack",
            "Helper Bot",
            &[("connection", "socket")],
            &[("bot_token", BOT_TOKEN), ("app_token", APP_TOKEN)],
            DEBOUNCE_MS,
        )
        .await?;
    println!(
        "switchboard demo (Slack): fresh SQLite database, bundled Slack plugin, echo agent, host on {}",
        host.base
    );
    println!(
        "  fake Slack (Web API, Socket Mode) on {}; installation {} learned bot {} in team {} from auth.test",
        slack.base_url(),
        installation.id,
        installation
            .config
            .get("bot_user_id")
            .map_or("?", String::as_str),
        installation
            .config
            .get("team_id")
            .map_or("?", String::as_str),
    );
    until("the Socket Mode connection", || {
        slack.live_connections() == 1
    })
    .await?;
    println!("  the host opened the Socket Mode connection (apps.connections.open → wss)\n");

    let mut step = 0;
    let mut show = |label: &str, outcome: String| {
        step += 1;
        println!("  {step:>2}. {label:<44} → {outcome}");
    };

    let ts = slack.push_message(
        DM,
        "im",
        ALICE,
        "Can you summarise the incident review?",
        None,
    );
    let report = host.report_for(&format!("{DM}:{ts}")).await?;
    show("DM", report.outcome.to_string());

    let mention = slack.push_mention(TEAM_CHANNEL, BOB, "what is the deploy status?", None);
    let report = host
        .report_for(&format!("{TEAM_CHANNEL}:{mention}"))
        .await?;
    show(
        "channel @mention (starts a thread)",
        report.outcome.to_string(),
    );
    host.settle(&installation).await?;

    let reply = slack.push_message(
        TEAM_CHANNEL,
        "channel",
        BOB,
        "and the <https://example.com/runbook|runbook>?",
        Some(&mention),
    );
    let report = host.report_for(&format!("{TEAM_CHANNEL}:{reply}")).await?;
    show(
        "reply in the bot's thread, no mention",
        report.outcome.to_string(),
    );

    let chatter = slack.push_message(TEAM_CHANNEL, "channel", ALICE, "lunch anyone?", None);
    let report = host
        .report_for(&format!("{TEAM_CHANNEL}:{chatter}"))
        .await?;
    show(
        "channel chatter, bot not addressed",
        report.outcome.to_string(),
    );

    let again = slack.message_event(DM, "im", ALICE, "a message sent twice", None);
    slack.push_event(&again);
    let id = format!("{DM}:{}", again["ts"].as_str().unwrap_or_default());
    let first = host.report_for(&id).await?;
    slack.push_event(&again);
    let second = host.report_for(&id).await?;
    show(
        "the same event delivered twice",
        format!("{} then {}", first.outcome, second.outcome),
    );

    let before = slack.connections().len();
    slack.disconnect();
    until("the reconnect after `disconnect`", || {
        slack.connections().len() > before && slack.live_connections() >= 1
    })
    .await?;
    let after = slack.push_message(DM, "im", ALICE, "are you still there?", None);
    let report = host.report_for(&format!("{DM}:{after}")).await?;
    show(
        "`disconnect` → new connection, then a DM",
        report.outcome.to_string(),
    );

    let command = slack.push_slash_command(DM, ALICE, "/new", "");
    until("the slash command's ACK", || {
        slack.acks().iter().any(|a| a.envelope_id == command)
    })
    .await?;
    show("slash command /new", "ACKed once stored".into());
    host.settle(&installation).await?;

    let bot_message = slack
        .posted()
        .into_iter()
        .find(|p| p.channel == DM)
        .map(|p| p.ts);
    if let Some(ts) = bot_message {
        let action = slack.push_block_action(DM, ALICE, &ts, "approve", "yes");
        until("the button press's ACK", || {
            slack.acks().iter().any(|a| a.envelope_id == action)
        })
        .await?;
        show(
            "button press on the bot's reply",
            "ACKed once stored".into(),
        );
    }
    host.settle(&installation).await?;

    let (stored, runs, dropped) = host.print_sessions(&installation).await?;
    host.stop().await?;
    let posted = slack.posted();
    println!(
        "\nposted by the bot to the fake Slack ({} chat.update, {} reactions):",
        slack.updates().len(),
        slack.reactions().len()
    );
    for message in &posted {
        println!(
            "  {:<11} thread {:<20} {}",
            message.channel,
            message.thread_ts.as_deref().unwrap_or("-"),
            preview(&message.text)
        );
    }
    println!(
        "\nSocket Mode: {} connections, {} ACKs, {} envelopes never ACKed",
        slack.connections().len(),
        slack.acks().len(),
        slack.unacked()
    );
    println!(
        "\ndemo: {step} steps, {stored} messages stored, {runs} replies stored, {} posted, {dropped} dropped",
        posted.len()
    );
    Ok(())
}
