//! `switchboard demo --channel telegram`: the bundled Telegram plugin long-polling a local fake
//! Bot API (`fake-telegram`). The installation is added as an operator adds it (`on-install`
//! learns the bot's id and username from `getMe`); the host polls `getUpdates` under the
//! installation's lease, and the fake queues a scripted conversation: a private message, a group
//! mention, group chatter, a reply to the bot, a command for another bot, a forum topic, a button
//! press and `/new`. The offset advances only once the updates are stored; the echo agent's
//! replies are sent as HTML, in the right topic and as replies.

use std::path::{Path, PathBuf};

use fake_telegram::{BOT_USERNAME, Chat, FakeTelegram, User};
use serde_json::Value;

use super::common::{DemoHost, config, preview, until};

const TOKEN: &str = "123456:demo-bot-token";
const DEBOUNCE_MS: i64 = 300;

/// The message key the plugin gives an update's message (`{chat}:{message_id}`).
fn key(update: &Value) -> String {
    let message = &update["message"];
    format!(
        "{}:{}",
        message["chat"]["id"].as_i64().unwrap_or_default(),
        message["message_id"].as_i64().unwrap_or_default()
    )
}

/// Runs the Telegram demo in `dir`.
pub async fn run(dir: &Path, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let telegram = FakeTelegram::start(TOKEN).await;
    let config = config(
        dir,
        cache_dir,
        &[("https://api.telegram.org", telegram.base_url())],
    );
    let mut host = DemoHost::start(&config).await?;
    let installation = host
        .install(
            "telegram",
            "Helper Bot",
            &[("connection", "poll")],
            &[("bot_token", TOKEN)],
            DEBOUNCE_MS,
        )
        .await?;
    println!(
        "switchboard demo (Telegram): fresh SQLite database, bundled Telegram plugin, echo agent, host on {}",
        host.base
    );
    println!(
        "  fake Bot API on {}; installation {} learned @{} from getMe; long polling getUpdates",
        telegram.base_url(),
        installation.id,
        installation
            .config
            .get("bot_username")
            .map_or("?", String::as_str),
    );
    until("the first getUpdates", || {
        telegram.requests("getUpdates") > 0
    })
    .await?;
    println!();

    let alice = User::new(1001, "Alice");
    let bob = User::new(1002, "Bob");
    let private = Chat::private(&alice);
    let team = Chat::group(-2001, "Team");
    let forum = Chat::forum(-1003001, "Support");
    let mut step = 0;
    let mut show = |label: &str, outcome: String| {
        step += 1;
        println!("  {step:>2}. {label:<44} → {outcome}");
    };

    {
        let mut send = async |update: Value| -> anyhow::Result<String> {
            telegram.push_update(update.clone());
            Ok(host.report_for(&key(&update)).await?.outcome.to_string())
        };
        let outcome = send(
            telegram
                .message(&private, &alice, "Can you summarise *yesterday's* review?")
                .build(),
        )
        .await?;
        show("private message", outcome);
        let outcome = send(
            telegram
                .message(
                    &team,
                    &bob,
                    &format!("@{BOT_USERNAME} what is the deploy status?"),
                )
                .build(),
        )
        .await?;
        show("group @mention", outcome);
        let outcome = send(telegram.message(&team, &alice, "lunch anyone?").build()).await?;
        show("group chatter, bot not addressed", outcome);
        let outcome = send(
            telegram
                .message(&team, &bob, "/status@some_other_bot")
                .build(),
        )
        .await?;
        show("/status@some_other_bot (another bot's)", outcome);
        let outcome = send(
            telegram
                .message(
                    &forum,
                    &alice,
                    &format!("@{BOT_USERNAME} is the <b> tag escaped?"),
                )
                .in_topic(77)
                .build(),
        )
        .await?;
        show("forum topic 77 @mention", outcome);
    }
    host.settle(&installation).await?;

    if let Some(reply) = telegram.sent_to(team.id).into_iter().next() {
        let update = telegram
            .message(&team, &alice, "thanks, and the rollback plan?")
            .reply_to(reply.message_id)
            .build();
        telegram.push_update(update.clone());
        let outcome = host.report_for(&key(&update)).await?.outcome.to_string();
        show("reply to the bot's message", outcome);
    }
    if let Some(reply) = telegram.sent_to(private.id).into_iter().next() {
        let (_, query) =
            telegram.push_callback_query(&private, &alice, reply.message_id, "approve");
        until("the callback query's answer", || {
            telegram.answered_callbacks().contains(&query)
        })
        .await?;
        show("button press (callback_query)", "answered".into());
    }
    let update = telegram.message(&private, &alice, "/new").build();
    telegram.push_update(update.clone());
    let outcome = host.report_for(&key(&update)).await?.outcome.to_string();
    show("/new", outcome);
    host.settle(&installation).await?;

    let (stored, runs, dropped) = host.print_sessions(&installation).await?;
    host.stop().await?;
    let sent = telegram.sent();
    println!(
        "\nsent by the bot to the fake Bot API ({} chat actions):",
        telegram.chat_actions().len()
    );
    for message in &sent {
        println!(
            "  chat {:<9} topic {:<4} reply to {:<4} {}",
            message.chat_id,
            message.thread_id.map_or("-".into(), |t| t.to_string()),
            message.reply_to.map_or("-".into(), |m| m.to_string()),
            preview(&message.text)
        );
    }
    println!(
        "\nlong polling: {} getUpdates, offset now {:?}, {} updates left unconfirmed",
        telegram.requests("getUpdates"),
        telegram.last_offset(),
        telegram.pending_updates()
    );
    println!(
        "\ndemo: {step} steps, {stored} messages stored, {runs} replies stored, {} sent, {dropped} dropped",
        sent.len()
    );
    Ok(())
}
