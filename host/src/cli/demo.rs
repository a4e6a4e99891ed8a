//! `switchboard demo`: the main job on the embedded defaults. Starts the host on a fresh SQLite
//! file with the bundled Lark plugin, registers two installations, sends a scripted conversation
//! as encrypted, signed Lark webhook deliveries over loopback, waits for the debounce windows to
//! flush, and prints what happened and a summary line. A last step compacts one conversation's
//! context on request and prints the compaction events (SPEC §7).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::demo_lark::DemoLark;
use super::lark_wire::{Event, Mention, seal};
use crate::api::OUTCOME_HEADER;
use crate::app::App;
use crate::capabilities::{Clock, SystemClock};
use crate::config::Config;
use crate::store::{AccessPolicy, NewInstallation, SecretCipher};

const OPEN_APP: &str = "cli_demo_open_0001";
const BOUND_APP: &str = "cli_demo_bound_002";
const ENCRYPT_KEY: &str = "demo-encrypt-key";
const TOKEN: &str = "demo-verification-token";
const BOT: &str = "ou_demo_helper_bot";
const ALICE: &str = "ou_demo_alice";
const BOB: &str = "ou_demo_bob";
const DEBOUNCE_MS: i64 = 400;

struct Step {
    label: &'static str,
    bound_installation: bool,
    event: Event<'static>,
}

fn text(
    message_id: &'static str,
    chat_id: &'static str,
    sender: &'static str,
    text: &str,
) -> Event<'static> {
    Event {
        app_id: OPEN_APP,
        token: TOKEN,
        message_id,
        chat_id,
        group: false,
        sender_open_id: sender,
        message_type: "text",
        content: json!({ "text": text }),
        mentions: Vec::new(),
        parent_id: None,
        create_time_ms: SystemClock.now_ms(),
    }
}

fn script() -> Vec<Step> {
    let step = |label, event| Step {
        label,
        bound_installation: false,
        event,
    };
    let mut group = text(
        "om_demo_group_1",
        "oc_demo_team",
        ALICE,
        "@_user_1 what is the status of the deploy?",
    );
    group.group = true;
    group.mentions = vec![Mention {
        key: "@_user_1",
        name: "Helper Bot",
        open_id: BOT,
    }];
    let mut not_addressed = text("om_demo_group_2", "oc_demo_team", BOB, "lunch anyone?");
    not_addressed.group = true;
    let mut post = text("om_demo_post", "oc_demo_p2p_alice", ALICE, "");
    post.message_type = "post";
    post.content = json!({"title": "Release notes", "content": [
        [{"tag": "text", "text": "Shipped "}, {"tag": "a", "text": "v2.3", "href": "https://example.com/v2.3"}],
        [{"tag": "text", "text": "Please review the rollout plan."}]]});
    let mut quote = text(
        "om_demo_quote",
        "oc_demo_p2p_alice",
        ALICE,
        "Following up on this one",
    );
    quote.parent_id = Some("om_demo_p2p_1");
    let mut forward = text("om_demo_forward", "oc_demo_p2p_alice", ALICE, "");
    forward.message_type = "merge_forward";
    forward.content = json!({"content": "Merged and Forwarded Message"});
    let mut unbound = text("om_demo_unbound", "oc_demo_p2p_bob", BOB, "hello ops bot");
    unbound.app_id = BOUND_APP;
    let mut bound = text(
        "om_demo_bound",
        "oc_demo_p2p_alice2",
        ALICE,
        "hello ops bot, it's Alice",
    );
    bound.app_id = BOUND_APP;
    vec![
        step(
            "p2p text",
            text(
                "om_demo_p2p_1",
                "oc_demo_p2p_alice",
                ALICE,
                "Can you summarise yesterday's design review?",
            ),
        ),
        step("group @mention", group),
        step("group chatter, bot not mentioned", not_addressed),
        step("rich post", post),
        step("quote reply", quote),
        step("merge_forward", forward),
        step(
            "redelivery of the first message",
            text(
                "om_demo_p2p_1",
                "oc_demo_p2p_alice",
                ALICE,
                "Can you summarise yesterday's design review?",
            ),
        ),
        Step {
            label: "unbound sender (bound policy)",
            bound_installation: true,
            event: unbound,
        },
        Step {
            label: "bound sender (bound policy)",
            bound_installation: true,
            event: bound,
        },
        step(
            "/new",
            text("om_demo_new", "oc_demo_p2p_carol", "ou_demo_carol", "/new"),
        ),
        step(
            "first message of the fresh context",
            text(
                "om_demo_after_new",
                "oc_demo_p2p_carol",
                "ou_demo_carol",
                "Let's start over: draft a launch email.",
            ),
        ),
        step(
            "/issue with a description",
            text(
                "om_demo_issue",
                "oc_demo_p2p_carol",
                "ou_demo_carol",
                "/issue Login times out after 5 minutes\nSeen on Safari and Firefox.",
            ),
        ),
        step(
            "/issue without a title",
            text(
                "om_demo_issue_usage",
                "oc_demo_p2p_carol",
                "ou_demo_carol",
                "/issue",
            ),
        ),
        step(
            "burst 1/3",
            text("om_demo_burst_1", "oc_demo_p2p_dave", "ou_demo_dave", "one"),
        ),
        step(
            "burst 2/3",
            text("om_demo_burst_2", "oc_demo_p2p_dave", "ou_demo_dave", "two"),
        ),
        step(
            "burst 3/3",
            text(
                "om_demo_burst_3",
                "oc_demo_p2p_dave",
                "ou_demo_dave",
                "three",
            ),
        ),
    ]
}

fn preview(text: &str) -> String {
    let line = text.replace('\n', " ⏎ ");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(59).collect::<String>())
    } else {
        line
    }
}

/// Runs the demo. `cache_dir` is the precompiled-artifact cache.
pub async fn run(cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-demo-{}-{}",
        std::process::id(),
        SystemClock.now_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, cache_dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.join("demo.db").display());
    config.secrets.key = Some(SecretCipher::generate_key_hex());
    config.plugins.cache_dir = cache_dir;
    // Replies go to a local stand-in for the Lark REST API instead of open.feishu.cn.
    let lark = DemoLark::start().await?;
    config
        .plugins
        .base_urls
        .insert("https://open.feishu.cn".into(), lark.origin.clone());
    let app = App::from_config(&config).await?;
    let state = app.state.clone();
    let now = SystemClock.now_ms();
    let secrets = BTreeMap::from([
        ("encrypt_key".to_string(), ENCRYPT_KEY.to_string()),
        ("verification_token".to_string(), TOKEN.to_string()),
        ("app_secret".to_string(), "demo-app-secret".to_string()),
    ]);
    let new = |app_id: &str, name: &str, policy| NewInstallation {
        channel: "lark".into(),
        routing_key: app_id.into(),
        name: name.into(),
        config: BTreeMap::from([("app_id".to_string(), app_id.to_string())]),
        secrets: secrets.clone(),
        bot_open_id: Some(BOT.into()),
        access_policy: policy,
        debounce_ms: DEBOUNCE_MS,
        ..NewInstallation::default()
    };
    let open = state
        .installations
        .create(&new(OPEN_APP, "Helper Bot", AccessPolicy::Open), now)
        .await?;
    let bound = state
        .installations
        .create(&new(BOUND_APP, "Ops Bot", AccessPolicy::Bound), now)
        .await?;
    state
        .records
        .bind_user(&bound.id, ALICE, "alice@example.com", None, now)
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    println!("switchboard demo: fresh SQLite database, bundled Lark plugin, host on {base}");
    println!(
        "  installation {} \"Helper Bot\" (open policy), {} \"Ops Bot\" (bound policy, Alice bound)",
        open.routing_key, bound.routing_key
    );
    println!(
        "  {} ms debounce windows; every event is an encrypted, signed webhook delivery\n",
        DEBOUNCE_MS
    );

    let client = reqwest::Client::new();
    let steps = script();
    for (i, step) in steps.iter().enumerate() {
        let installation = if step.bound_installation {
            &bound
        } else {
            &open
        };
        let (headers, body) = seal(
            ENCRYPT_KEY,
            &step.event.to_json(),
            [i as u8; 16],
            &SystemClock.now_ms().to_string(),
            &format!("n{i}"),
        );
        let mut request = client
            .post(format!("{base}/hooks/lark/{}", installation.id))
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request
            .send()
            .await
            .context("delivering a webhook to the demo host")?;
        let status = response.status();
        let outcome = response
            .headers()
            .get(OUTCOME_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        anyhow::ensure!(
            status.is_success(),
            "delivery {} answered {status}",
            step.label
        );
        println!("  {:>2}. {:<36} → {}", i + 1, step.label, outcome);
    }

    // Let the debounce windows close and flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut open_windows = 0;
        for installation in [&open, &bound] {
            open_windows += state
                .records
                .list_sessions(&installation.id)
                .await?
                .iter()
                .filter(|s| s.flush_due_at_ms.is_some())
                .count();
        }
        if open_windows == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Let the echo agent's runs finish and their replies go out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut busy = 0;
        for installation in [&open, &bound] {
            busy += state
                .records
                .list_sessions(&installation.id)
                .await?
                .iter()
                .filter(|s| s.run_state == "pending" || s.run_state == "running")
                .count();
        }
        if busy == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deliveries run in their own tasks; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("\nsessions:");
    let (mut stored, mut runs) = (0, 0);
    for installation in [&open, &bound] {
        for history in state
            .records
            .list_session_histories(&installation.id)
            .await?
        {
            let s = &history.session;
            println!(
                "  {} {} ({}, context revision {}, run {})",
                installation.name, s.chat_key, s.chat_type, s.context_revision, s.run_state
            );
            for m in &history.messages {
                stored += 1;
                if m.role == "assistant" {
                    runs += 1;
                }
                println!(
                    "      #{:<3} {:<9} {:<8} r{} {}",
                    m.id,
                    m.role,
                    m.kind,
                    m.context_revision,
                    preview(&m.body)
                );
            }
        }
    }
    let audit = state.records.list_audit(None, 1000).await?;
    println!("\ndropped (audit rows, never any content):");
    for row in &audit {
        println!(
            "  {:<24} message {}",
            row.drop_reason,
            row.message_id.as_deref().unwrap_or("-")
        );
    }
    compaction_step(&state, &open.id).await?;
    let _ = stop.send(());
    server.await.context("demo server task")??;
    let sent = lark.sent();
    println!(
        "\nsent by the bot to (fake) Lark ({} typing reactions):",
        lark.reactions()
    );
    for message in &sent {
        println!(
            "  {:<5} {:<26} {:<11} {}",
            message.how,
            message.to,
            message.msg_type,
            preview(&message.text)
        );
    }
    // Replies are the echo agent's answers; the rest of what the bot sent are notices.
    let replies = sent.iter().filter(|m| m.text.starts_with("echo: ")).count();
    println!(
        "\ndemo: {} events, {stored} messages stored, {runs} runs, {replies} replies delivered, {} dropped",
        steps.len(),
        audit.len()
    );
    Ok(())
}

/// Compacts the first answered conversation of `installation` on request (the echo agent's
/// deterministic summary) and prints the events its stream saw.
async fn compaction_step(state: &crate::api::AppState, installation: &str) -> anyhow::Result<()> {
    use crate::runs::SessionEvent;
    let histories = state.records.list_session_histories(installation).await?;
    let Some(history) = histories
        .iter()
        .find(|h| h.messages.iter().any(|m| m.role == "assistant"))
    else {
        return Ok(());
    };
    let session = &history.session.id;
    let (_, mut events) = state.runs.hub().subscribe(session);
    let outcome = state.compactor.compact_now(session).await;
    println!(
        "
compaction of {} on request:",
        history.session.chat_key
    );
    while let Ok(event) = events.try_recv() {
        match &event {
            SessionEvent::CompactionStart { context_tokens, .. } => {
                println!("  compaction_start   about {context_tokens} tokens")
            }
            SessionEvent::Message { id, kind, body, .. } => {
                println!("  message #{id:<3}      {kind}: {}", preview(body))
            }
            SessionEvent::CompactionDone {
                boundary_message_id,
                tokens_before,
                tokens_after,
                ..
            } => println!(
                "  compaction_done    hidden summary #{boundary_message_id}, about \
                 {tokens_before} → {tokens_after} tokens"
            ),
            SessionEvent::CompactionFailed { error, .. } => {
                println!("  compaction_failed  {error}")
            }
            _ => {}
        }
    }
    if let Err(e) = outcome {
        println!("  not compacted: {e}");
    }
    Ok(())
}
