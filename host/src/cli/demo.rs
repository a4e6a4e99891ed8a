//! `switchboard demo`: the main job on the embedded defaults, with no network beyond loopback.
//!
//! Starts a local fake Lark (`fake-lark`: endpoint discovery, a pbbp2 WebSocket server and the
//! REST API) and the host on a fresh SQLite file with the bundled Lark plugin and the echo agent,
//! and registers two long-connection installations. The host's supervisor discovers the endpoint
//! and dials one WebSocket per installation; the fake pushes a scripted conversation as event
//! frames; each event is decoded, enriched (quoted parent, forwarded transcript, group context
//! and speaker names from the fake's REST API), stored and only then ACKed. Debounce windows
//! flush, the echo agent answers, and replies, notices and typing reactions reach the fake through
//! the plugin's outbound calls; an image message is downloaded into the blob store after it is
//! stored, and the echo agent's reply names it (kind, sniffed type, size). Prints a transcript
//! and a summary line; a last step compacts one
//! conversation's context on request and prints the compaction events (SPEC §7).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fake_lark::{Card, FakeLark, FakeOptions, RestRequest};
use serde_json::{Value, json};

#[path = "demo/common.rs"]
mod common;
#[path = "lark_wire.rs"]
mod lark_wire;
#[path = "demo/slack.rs"]
mod slack;
#[path = "demo/telegram.rs"]
mod telegram;
use crate::app::App;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::ingest::service::Dispatched;
use crate::store::{AccessPolicy, NewInstallation, SecretCipher};
use lark_wire::{Event, Mention};

const OPEN_APP: &str = "cli_demo_open_0001";
const BOUND_APP: &str = "cli_demo_bound_002";
const TOKEN: &str = "demo-verification-token";
const BOT: &str = "ou_demo_helper_bot";
const ALICE: &str = "ou_demo_alice";
const BOB: &str = "ou_demo_bob";
const DEBOUNCE_MS: i64 = 400;
/// How long the fake waits for an ACK before it redelivers (the platform: 3 s).
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

struct Step {
    label: &'static str,
    /// The fake "loses" this event's first ACK, so the platform redelivers it.
    lose_ack: bool,
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

/// The image the fake Lark serves for the demo's image step.
const DEMO_IMAGE_KEY: &str = "img_demo_diagram";

/// A 1×1 PNG: what the demo's image message carries (its type is sniffed from these bytes).
const DEMO_PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\x0f\0\x01\x01\x01\0\x18\xdd\x8d\xb0\0\0\0\0IEND\xaeB`\x82";

fn image(
    message_id: &'static str,
    chat_id: &'static str,
    sender: &'static str,
    key: &str,
) -> Event<'static> {
    Event {
        message_type: "image",
        content: json!({ "image_key": key }),
        ..text(message_id, chat_id, sender, "")
    }
}

fn script() -> Vec<Step> {
    let step = |label, event| Step {
        label,
        lose_ack: false,
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
        Step {
            label: "rich post (its ACK is lost)",
            lose_ack: true,
            event: post,
        },
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
            lose_ack: false,
            event: unbound,
        },
        Step {
            label: "bound sender (bound policy)",
            lose_ack: false,
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
            "/issue: a command for the agent",
            text(
                "om_demo_issue",
                "oc_demo_p2p_carol",
                "ou_demo_carol",
                "/issue Login times out after 5 minutes\nSeen on Safari and Firefox.",
            ),
        ),
        step(
            "/status: answered by the host",
            text(
                "om_demo_status",
                "oc_demo_p2p_carol",
                "ou_demo_carol",
                "/status",
            ),
        ),
        step(
            "image (downloaded to the blob store)",
            image(
                "om_demo_image",
                "oc_demo_p2p_erin",
                "ou_demo_erin",
                DEMO_IMAGE_KEY,
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

/// `switchboard demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The bundled channel to demonstrate, each against its local fake.
    #[arg(long, value_enum, default_value_t)]
    pub channel: DemoChannel,
}

/// The bundled channel a demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DemoChannel {
    /// Lark over its long connection, two installations, enrichment and compaction.
    #[default]
    Lark,
    /// Slack over Socket Mode.
    Slack,
    /// Telegram over long polling.
    Telegram,
}

/// Runs the demo of `channel`. `cache_dir` is the precompiled-artifact cache.
pub async fn run(cache_dir: Option<PathBuf>, channel: DemoChannel) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-demo-{}-{}",
        std::process::id(),
        SystemClock.now_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = match channel {
        DemoChannel::Lark => run_in(&dir, cache_dir).await,
        DemoChannel::Slack => slack::run(&dir, cache_dir).await,
        DemoChannel::Telegram => telegram::run(&dir, cache_dir).await,
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Gives the fake Lark what enrichment reads — the quoted parent, the forwarded transcript, an
/// earlier group message for context, and the users' names — and the image the image step
/// downloads.
fn seed(lark: &FakeLark) {
    let now = SystemClock.now_ms();
    let item = |id: &str, chat: &str, sender: &str, at: i64, text: &str| {
        json!({
            "message_id": id, "msg_type": "text", "create_time": at.to_string(),
            "deleted": false, "chat_id": chat,
            "sender": {"id": sender, "id_type": "open_id", "sender_type": "user"},
            "body": {"content": json!({"text": text}).to_string()},
        })
    };
    lark.add_message(
        "om_demo_p2p_1",
        vec![item(
            "om_demo_p2p_1",
            "oc_demo_p2p_alice",
            ALICE,
            now - 1_000,
            "Can you summarise yesterday's design review?",
        )],
    );
    lark.add_message(
        "om_demo_team_earlier",
        vec![item(
            "om_demo_team_earlier",
            "oc_demo_team",
            BOB,
            now - 60_000,
            "deploy 2.3 started on eu-west",
        )],
    );
    let mut fwd_1 = item(
        "om_demo_fwd_1",
        "oc_demo_source",
        "ou_demo_dave",
        now - 600_000,
        "the canary is failing on eu-west",
    );
    fwd_1["upper_message_id"] = json!("om_demo_forward");
    let mut fwd_2 = item(
        "om_demo_fwd_2",
        "oc_demo_source",
        "ou_demo_carol",
        now - 540_000,
        "rolling back now",
    );
    fwd_2["upper_message_id"] = json!("om_demo_forward");
    lark.add_message(
        "om_demo_forward",
        vec![
            json!({
                "message_id": "om_demo_forward", "msg_type": "merge_forward",
                "create_time": now.to_string(), "deleted": false, "chat_id": "oc_demo_p2p_alice",
                "sender": {"id": ALICE, "id_type": "open_id", "sender_type": "user"},
                "body": {"content": "Merged and Forwarded Message"},
            }),
            fwd_1,
            fwd_2,
        ],
    );
    lark.add_resource(DEMO_IMAGE_KEY, DEMO_PNG.to_vec());
    for (open_id, name) in [
        (ALICE, "Alice"),
        (BOB, "Bob"),
        ("ou_demo_carol", "Carol"),
        ("ou_demo_dave", "Dave"),
    ] {
        lark.add_user(open_id, name);
    }
}

/// The next ingest report for channel message `message_id`.
async fn report_for(
    watch: &mut tokio::sync::broadcast::Receiver<Arc<Dispatched>>,
    message_id: &str,
    within: Duration,
) -> anyhow::Result<Arc<Dispatched>> {
    let found = tokio::time::timeout(within, async {
        loop {
            match watch.recv().await {
                Ok(report) if report.message.message_id == message_id => return Ok(report),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match found {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => anyhow::bail!("the host's ingest reports ended: {e}"),
        Err(_) => anyhow::bail!(
            "the host did not process {message_id} within {} s",
            within.as_secs()
        ),
    }
}

/// Waits for the fake to receive a 200 ACK of its delivery `transport_id`; returns its latency
/// (from queueing the frames to the ACK).
async fn acked(lark: &FakeLark, transport_id: &str) -> anyhow::Result<Option<Duration>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ack) = lark
            .acks()
            .into_iter()
            .find(|a| a.message_id == transport_id && a.code == 200)
        {
            return Ok(ack.latency);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the fake Lark got no ACK for event frame {transport_id} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_in(dir: &std::path::Path, cache_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let lark = FakeLark::try_start(FakeOptions {
        ack_timeout: ACK_TIMEOUT,
        ..FakeOptions::default()
    })
    .await
    .context("starting the fake Lark on loopback")?;
    seed(&lark);
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.join("demo.db").display());
    config.secrets.key = Some(SecretCipher::generate_key_hex());
    config.plugins.cache_dir = cache_dir;
    // Endpoint discovery and the REST API go to the fake instead of open.feishu.cn.
    config
        .plugins
        .base_urls
        .insert("https://open.feishu.cn".into(), lark.origin().to_string());
    config.plugins.base_urls.insert(
        "wss://msg-frontier.feishu.cn".into(),
        lark.ws_origin().to_string(),
    );
    config.blobs.dir = dir.join("blobs");
    config.connections.poll_interval_ms = 200;
    config.connections.backoff_initial_ms = 200;
    config.connections.backoff_max_ms = 1_000;
    let app = App::from_config(&config).await?;
    let state = app.state.clone();
    let mut watch = state.ingest.watch();
    let now = SystemClock.now_ms();
    let new = |app_id: &str, name: &str, policy| NewInstallation {
        channel: "lark".into(),
        routing_key: app_id.into(),
        name: name.into(),
        config: BTreeMap::from([
            ("app_id".to_string(), app_id.to_string()),
            ("bot_open_id".to_string(), BOT.to_string()),
            ("connection".to_string(), "websocket".to_string()),
        ]),
        secrets: BTreeMap::from([("app_secret".to_string(), "demo-app-secret".to_string())]),
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
        .bind_user(&bound.id, ALICE, "alice@example.com", &[], now)
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    println!(
        "switchboard demo: fresh SQLite database, bundled Lark plugin, echo agent, host on {base}"
    );
    println!(
        "  fake Lark (endpoint discovery, pbbp2 WebSocket, REST) on {}",
        lark.origin()
    );
    println!(
        "  installation {} \"Helper Bot\" (open policy), {} \"Ops Bot\" (bound policy, Alice bound)",
        open.routing_key, bound.routing_key
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while lark.live_connections() < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the host did not open both long connections within 15 s \
             (fake Lark: {} discoveries, {} connections)",
            lark.discoveries(),
            lark.connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  both installations discovered the endpoint and hold a WebSocket; {DEBOUNCE_MS} ms \
         debounce windows; the fake redelivers events not ACKed within {} s\n",
        ACK_TIMEOUT.as_secs()
    );

    let steps = script();
    for (i, step) in steps.iter().enumerate() {
        let app_id = step.event.app_id;
        if step.lose_ack {
            lark.lose_acks(1);
        }
        let transport_id = lark.push_payload(app_id, step.event.to_json());
        let within = Duration::from_secs(10);
        let report = report_for(&mut watch, step.event.message_id, within).await?;
        let latency = if step.lose_ack {
            let again = report_for(&mut watch, step.event.message_id, within).await?;
            let latency = acked(&lark, &transport_id).await?;
            println!("  {:>2}. {:<36} → {}", i + 1, step.label, report.outcome);
            println!(
                "      ACK lost; redelivered after {} s → {} (stored once)",
                ACK_TIMEOUT.as_secs(),
                again.outcome
            );
            latency
        } else {
            let latency = acked(&lark, &transport_id).await?;
            println!("  {:>2}. {:<36} → {}", i + 1, step.label, report.outcome);
            latency
        };
        let body = match report.message.body.trim() {
            "" => "(no body: the command is the whole message)".to_string(),
            body => preview(body),
        };
        println!(
            "      frame {transport_id} ACKed{}; decoded and enriched: {body}",
            latency
                .map(|l| format!(" after {} ms", l.as_millis()))
                .unwrap_or_default(),
        );
    }

    // Let the debounce windows close and flush.
    let deadline = Instant::now() + Duration::from_secs(10);
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
        if open_windows == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Let the echo agent's runs finish and their replies go out.
    let deadline = Instant::now() + Duration::from_secs(10);
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
        if busy == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deliveries run in their own tasks; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    approval_step(&state, &lark, &open.id).await?;

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
    let requests = lark.requests();
    let typing = requests
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("/reactions"))
        .count();
    let cards = lark.cards();
    let sent: Vec<Sent> = lark
        .sent_messages()
        .iter()
        .map(|request| Sent::of(request, &cards))
        .collect();
    let streamed: Vec<&Card> = cards.iter().filter(|c| c.message_id.is_some()).collect();
    println!(
        "\nreplies streamed into cards: {} cards, {} updates, all closed: {}",
        streamed.len(),
        streamed.iter().map(|c| c.updates.len()).sum::<usize>(),
        streamed.iter().all(|c| !c.streaming)
    );
    println!("\nsent by the bot to the fake Lark ({typing} typing reactions):");
    for message in &sent {
        println!(
            "  {:<5} {:<26} {:<11} {}",
            message.how,
            message.to,
            message.msg_type,
            preview(&message.text)
        );
    }
    let acks = lark.acks();
    println!(
        "\nlong connections: {} WebSockets, {} event deliveries, {} ACKs (all 200: {})",
        lark.connections(),
        lark.deliveries(),
        acks.len(),
        acks.iter().all(|a| a.code == 200)
    );
    // Replies are the echo agent's answers; the rest of what the bot sent are notices.
    let replies = sent.iter().filter(|m| m.text.starts_with("echo: ")).count();
    println!(
        "\ndemo: {} events, {stored} messages stored, {runs} runs, {replies} replies delivered, {} dropped",
        steps.len(),
        audit.len()
    );
    Ok(())
}

/// An approval on Alice's chat, as a worker would ask for it (`POST …/approvals`): the card
/// with two buttons reaches the fake, Bob's press is refused and Alice's approves, each answered
/// in the ACK with the host's toast (and, once decided, the card without its buttons).
async fn approval_step(
    state: &crate::api::AppState,
    lark: &FakeLark,
    installation: &str,
) -> anyhow::Result<()> {
    let approvals = state
        .workers
        .as_ref()
        .and_then(|workers| workers.approvals())
        .context("the host serves no approvals")?;
    let session = state
        .records
        .list_sessions(installation)
        .await?
        .into_iter()
        .find(|s| s.chat_id == "oc_demo_p2p_alice")
        .context("Alice's session is missing")?;
    let request = crate::approvals::ApprovalRequest {
        prompt: "Deploy v2.3 to production?".into(),
        approvers: vec![ALICE.into()],
        timeout: None,
    };
    let approval = approvals
        .request(&session.id, "demo-run", "echo", &request)
        .await?;
    println!(
        "
approval {} asked on Alice's chat: {:?}",
        approval.id, request.prompt
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lark
        .sent_messages()
        .iter()
        .any(|m| m.body.to_string().contains(&approval.id))
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the approval card did not reach the fake Lark within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("      the card with Approve / Reject buttons reached the fake Lark");
    for (who, name, event_id) in [
        ("Bob presses Approve", BOB, "ev_demo_press_bob"),
        ("Alice presses Approve", ALICE, "ev_demo_press_alice"),
    ] {
        let press = json!({
            "schema": "2.0",
            "header": {"event_id": event_id, "event_type": "card.action.trigger",
                       "create_time": SystemClock.now_ms().to_string(), "app_id": OPEN_APP,
                       "token": TOKEN},
            "event": {"operator": {"open_id": name}, "token": format!("c-{event_id}"),
                      "action": {"tag": "button",
                                 "value": {"action": crate::approvals::APPROVE,
                                           "host_value": approval.id}},
                      "context": {"open_message_id": "om_demo_approval",
                                  "open_chat_id": "oc_demo_p2p_alice"}},
        });
        let transport_id = lark.push_payload(OPEN_APP, press.to_string().into_bytes());
        acked(lark, &transport_id).await?;
        let answer = lark
            .acks()
            .into_iter()
            .find(|a| a.message_id == transport_id)
            .and_then(|a| a.data)
            .and_then(|data| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(data).ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or_default();
        let card = if answer.get("card").is_some() {
            format!(
                "; the card now reads {:?}",
                readable(&answer["card"]["data"])
            )
        } else {
            String::new()
        };
        println!(
            "      {who:<22} → toast {:?} ({}){card}",
            answer["toast"]["content"].as_str().unwrap_or(""),
            answer["toast"]["type"].as_str().unwrap_or("")
        );
    }
    let decided = approvals.current(&approval.id).await?;
    println!(
        "      the waiting worker reads: {}",
        decided.map_or("-", |a| a.state.as_str())
    );
    Ok(())
}

/// One message the bot sent, readable.
struct Sent {
    /// `send` (chat level or DM) or `reply` (to a message, maybe in its thread).
    how: &'static str,
    /// The chat or user id, or the message replied to.
    to: String,
    /// `text` or `interactive` (card).
    msg_type: String,
    /// The text, or a card's texts joined.
    text: String,
}

impl Sent {
    /// `cards`: the fake's CardKit cards, which a card reference in a send names.
    fn of(request: &RestRequest, cards: &[Card]) -> Sent {
        let path = request.uri.split('?').next().unwrap_or_default();
        let (how, to) = match path.strip_suffix("/reply") {
            Some(prefix) => ("reply", prefix.rsplit('/').next().unwrap_or_default()),
            None => (
                "send",
                request.body["receive_id"].as_str().unwrap_or_default(),
            ),
        };
        let content: Value = request.body["content"]
            .as_str()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or(Value::Null);
        let msg_type = request.body["msg_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // A streamed reply is sent as a reference to a CardKit card; its text is the card's.
        if let Some(card_id) = content["data"]["card_id"].as_str()
            && let Some(card) = cards.iter().find(|c| c.card_id == card_id)
        {
            return Sent {
                how,
                to: to.to_string(),
                msg_type: "card".into(),
                text: card.content.clone(),
            };
        }
        Sent {
            how,
            to: to.to_string(),
            msg_type,
            text: readable(&content),
        }
    }
}

/// The text of a `text` content or the markdown/plain texts of a card, joined.
fn readable(content: &Value) -> String {
    if let Some(text) = content["text"].as_str() {
        return text.to_string();
    }
    let mut texts = Vec::new();
    collect_texts(content, &mut texts);
    texts.join(" / ")
}

fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("content", Value::String(s)) => out.push(s.clone()),
                    _ => collect_texts(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_texts(v, out)),
        _ => {}
    }
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
