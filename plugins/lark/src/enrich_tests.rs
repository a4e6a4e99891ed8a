//! The enricher over a scripted host: one test per behaviour of the reference's enricher
//! inventory (reference §4.1, inbound_enricher tests 102–137) plus the budget and failure
//! modes of this port.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::decode::Sender;
use crate::enrich_render::{FailureCategory, go_quote};

const CHAT: &str = "oc_group";
const TRIGGER_ID: &str = "om_trigger";
const TRIGGER_MS: i64 = 3000;
const CHARLIE: &str = "ou_charlie";

/// A scripted host: answers requests by URL fragment (first match, once), records them with
/// the timeout asked; token calls without a script get a fresh token. Every request takes
/// `latency_ms` of the call's remaining time.
struct Fake {
    script: Vec<(String, Result<HttpAnswer, TransportFailure>)>,
    requests: Vec<(HttpRequestSpec, u32)>,
    kv: HashMap<String, (Vec<u8>, u64)>,
    remaining_ms: u64,
    latency_ms: u64,
    tokens: usize,
    warnings: Vec<String>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            script: Vec::new(),
            requests: Vec::new(),
            kv: HashMap::new(),
            remaining_ms: 2500,
            latency_ms: 10,
            tokens: 0,
            warnings: Vec::new(),
        }
    }

    fn on(mut self, fragment: &str, status: u16, body: Value) -> Fake {
        self.script.push((
            fragment.into(),
            Ok(HttpAnswer {
                status,
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            }),
        ));
        self
    }

    fn fail(mut self, fragment: &str, message: &str, retryable: bool) -> Fake {
        self.script.push((
            fragment.into(),
            Err(TransportFailure {
                message: message.into(),
                retryable,
            }),
        ));
        self
    }

    /// A GET of `id` answered with `items`.
    fn message(self, id: &str, items: Vec<Value>) -> Fake {
        self.on(&format!("/messages/{id}?"), 200, items_answer(items))
    }

    /// The list call answered with `items`.
    fn list(self, items: Vec<Value>) -> Fake {
        self.on("/messages?container_id_type", 200, items_answer(items))
    }

    /// The batch user lookup answered with `names`.
    fn users(self, names: &[(&str, &str)]) -> Fake {
        let items: Vec<Value> = names
            .iter()
            .map(|(id, name)| json!({"open_id": id, "name": name}))
            .collect();
        self.on(
            "/contact/v3/users/batch",
            200,
            json!({"code": 0, "msg": "success", "data": {"items": items}}),
        )
    }

    /// The URLs of the requests other than token calls, without the base.
    fn api_urls(&self) -> Vec<String> {
        self.requests
            .iter()
            .map(|(request, _)| {
                request
                    .url
                    .trim_start_matches("https://open.feishu.cn")
                    .to_string()
            })
            .filter(|url| !url.contains("tenant_access_token"))
            .collect()
    }

    fn count(&self, fragment: &str) -> usize {
        self.api_urls()
            .iter()
            .filter(|url| url.contains(fragment))
            .count()
    }

    fn token_calls(&self) -> usize {
        self.requests
            .iter()
            .filter(|(request, _)| request.url.contains("tenant_access_token"))
            .count()
    }
}

impl EnrichHost for Fake {
    fn send(
        &mut self,
        request: &HttpRequestSpec,
        timeout_ms: u32,
    ) -> Result<HttpAnswer, TransportFailure> {
        self.requests.push((request.clone(), timeout_ms));
        self.remaining_ms = self.remaining_ms.saturating_sub(self.latency_ms);
        if let Some(at) = self
            .script
            .iter()
            .position(|(fragment, _)| request.url.contains(fragment.as_str()))
        {
            return self.script.remove(at).1;
        }
        if request.url.contains("tenant_access_token") {
            self.tokens += 1;
            let body = json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-{}", self.tokens), "expire": 7200});
            return Ok(HttpAnswer {
                status: 200,
                headers: Vec::new(),
                body: body.to_string().into_bytes(),
            });
        }
        panic!("unscripted request {}", request.url);
    }
    fn remaining_ms(&mut self) -> u64 {
        self.remaining_ms
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).map(|(value, _)| value.clone())
    }
    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64) {
        self.kv.insert(key.into(), (value.to_vec(), ttl_ms));
    }
    fn kv_delete(&mut self, key: &str) {
        self.kv.remove(key);
    }
    fn warn(&mut self, message: &str, _fields: &[(&str, &str)]) {
        self.warnings.push(message.into());
    }
}

fn items_answer(items: Vec<Value>) -> Value {
    json!({"code": 0, "msg": "success", "data": {"items": items, "has_more": false}})
}

fn lark_error(code: i64, msg: &str) -> Value {
    json!({"code": code, "msg": msg})
}

/// A REST message item from a user.
fn item(id: &str, msg_type: &str, content: Value, sender: &str, create_ms: i64) -> Value {
    json!({
        "message_id": id,
        "msg_type": msg_type,
        "create_time": create_ms.to_string(),
        "deleted": false,
        "chat_id": CHAT,
        "sender": {"id": sender, "id_type": "open_id", "sender_type": "user"},
        "body": {"content": content.to_string()},
    })
}

fn text(id: &str, words: &str, sender: &str, create_ms: i64) -> Value {
    item(id, "text", json!({"text": words}), sender, create_ms)
}

fn from_app(mut value: Value) -> Value {
    value["sender"] = json!({"id": "cli_bot", "id_type": "app_id", "sender_type": "app"});
    value
}

fn in_thread(mut value: Value, thread: &str) -> Value {
    value["thread_id"] = json!(thread);
    value
}

fn child_of(mut value: Value, forward: &str) -> Value {
    value["upper_message_id"] = json!(forward);
    value
}

fn forward_sentinel(id: &str, sender: &str) -> Value {
    let mut value = item(id, "merge_forward", json!(null), sender, 9000);
    value["body"]["content"] = json!("Merged and Forwarded Message");
    value
}

fn credentials() -> Credentials {
    Credentials {
        base_url: String::new(),
        app_id: "cli_1".into(),
        app_secret: "s3cret".into(),
    }
}

fn budget() -> Budget {
    Budget {
        deadline_ms: 2000,
        max_requests: 8,
        max_context_messages: 20,
    }
}

/// A message from Charlie: a p2p text by default.
fn trigger(body: &str) -> InboundMessage {
    InboundMessage {
        app_id: String::new(),
        event_id: "ev_1".into(),
        message_id: TRIGGER_ID.into(),
        chat_id: CHAT.into(),
        chat_type: ChatType::Direct,
        sender: Sender {
            open_id: CHARLIE.into(),
            union_id: None,
            user_id: None,
            kind: "user".into(),
        },
        message_type: "text".into(),
        body: body.into(),
        command_body: body.into(),
        addressed_to_bot: false,
        parent_id: None,
        root_id: None,
        thread_id: None,
        create_time_ms: TRIGGER_MS,
        mentions: Vec::new(),
        attachments: Vec::new(),
    }
}

/// A group message that @-mentions the bot.
fn addressed(body: &str) -> InboundMessage {
    InboundMessage {
        chat_type: ChatType::Group,
        addressed_to_bot: true,
        ..trigger(body)
    }
}

fn run(fake: &mut Fake, message: &InboundMessage) -> Enriched {
    enrich(
        fake,
        &credentials(),
        &Settings::default(),
        message,
        budget(),
    )
}

fn run_with(
    fake: &mut Fake,
    message: &InboundMessage,
    settings: Settings,
    budget: Budget,
) -> Enriched {
    enrich(fake, &credentials(), &settings, message, budget)
}

fn no_recent() -> Settings {
    Settings {
        recent_context_size: 0,
    }
}

// ---- recent context (inventory 102–122) ----

#[test]
fn recent_context_for_a_group_mention_is_oldest_first_and_excludes_the_trigger() {
    let mut fake = Fake::new()
        .list(vec![
            text(TRIGGER_ID, "@bot what now", CHARLIE, 3000),
            from_app(text("om_3", "deploy done", "", 2500)),
            text("om_2", "looks good", "ou_bob", 2000),
            text("om_1", "shipping v2", "ou_alice", 1000),
        ])
        .users(&[]);
    let out = run(&mut fake, &addressed("what now"));
    assert_eq!(
        out.body,
        "<recent_context count=\"3\">\n[User 1]: shipping v2\n[User 2]: looks good\n[Bot]: deploy done\n</recent_context>\n\nwhat now"
    );
    let list = &fake.api_urls()[0];
    assert_eq!(
        list,
        "/open-apis/im/v1/messages?container_id_type=chat&container_id=oc_group&end_time=3&sort_type=ByCreateTimeDesc&page_size=10&user_id_type=open_id"
    );
    assert!(!list.contains("thread"));
    assert!(out.notes.is_empty(), "{:?}", out.notes);
}

#[test]
fn a_topic_fetch_is_thread_scoped_and_keeps_only_that_topic() {
    let mut fake = Fake::new()
        .list(vec![
            in_thread(text("om_2", "same topic", "ou_alice", 2000), "omt_a"),
            in_thread(text("om_x", "sibling topic", "ou_bob", 2500), "omt_b"),
        ])
        .users(&[]);
    let message = InboundMessage {
        thread_id: Some("omt_a".into()),
        ..addressed("and?")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "<recent_context count=\"1\">\n[User 1]: same topic\n</recent_context>\n\nand?"
    );
    assert_eq!(fake.count("/messages?"), 1);
    let list = &fake.api_urls()[0];
    assert!(
        list.contains("container_id_type=thread&container_id=omt_a"),
        "{list}"
    );
    assert!(!list.contains("end_time"), "{list}");
}

#[test]
fn a_topic_window_fails_closed_on_missing_or_other_thread_ids() {
    let mut fake = Fake::new()
        .list(vec![
            text("om_none", "no thread id", "ou_alice", 1000),
            in_thread(text("om_other", "other", "ou_alice", 1500), "omt_b"),
            in_thread(text("om_ok", "kept", "ou_alice", 2000), "omt_a"),
        ])
        .users(&[]);
    let message = InboundMessage {
        thread_id: Some("omt_a".into()),
        ..addressed("q")
    };
    let out = run(&mut fake, &message);
    assert!(
        out.body
            .starts_with("<recent_context count=\"1\">\n[User 1]: kept\n"),
        "{}",
        out.body
    );
    assert!(!out.body.contains("no thread id") && !out.body.contains("other"));
}

#[test]
fn a_topic_window_drops_messages_after_the_trigger() {
    let mut fake = Fake::new()
        .list(vec![
            in_thread(text("om_late", "after", "ou_alice", 3001), "omt_a"),
            in_thread(text("om_same", "same ms", "ou_alice", 3000), "omt_a"),
            in_thread(text("om_early", "before", "ou_alice", 2000), "omt_a"),
        ])
        .users(&[]);
    let message = InboundMessage {
        thread_id: Some("omt_a".into()),
        ..addressed("q")
    };
    let out = run(&mut fake, &message);
    assert!(
        out.body.starts_with(
            "<recent_context count=\"2\">\n[User 1]: before\n[User 1]: same ms\n</recent_context>"
        ),
        "{}",
        out.body
    );
}

#[test]
fn a_topic_fetch_failure_is_a_note_without_a_chat_wide_fallback() {
    let mut fake = Fake::new()
        .on("/messages?container_id_type", 400, lark_error(1234, "boom"))
        .users(&[]);
    let message = InboundMessage {
        thread_id: Some("th_a".into()),
        ..addressed("在干嘛")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "[Recent Lark context unavailable; continuing with the latest message.]\n\n在干嘛"
    );
    assert_eq!(fake.count("/messages?"), 1);
    assert!(fake.api_urls()[0].contains("container_id_type=thread&container_id=th_a"));
    assert!(out.notes[0].contains("unknown"), "{:?}", out.notes);
}

#[test]
fn the_bots_own_cards_are_left_out_of_the_window() {
    let mut fake = Fake::new()
        .list(vec![
            from_app(item(
                "om_card",
                "interactive",
                json!({"elements": []}),
                "",
                2000,
            )),
            from_app(text("om_bot_text", "plain bot text", "", 1500)),
            text("om_1", "hi", "ou_alice", 1000),
        ])
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert!(
        out.body.starts_with(
            "<recent_context count=\"2\">\n[User 1]: hi\n[Bot]: plain bot text\n</recent_context>"
        ),
        "{}",
        out.body
    );
}

#[test]
fn recalled_messages_in_the_window_render_as_deleted() {
    let mut recalled = text("om_1", "secret", "ou_alice", 1000);
    recalled["deleted"] = json!(true);
    let mut fake = Fake::new()
        .list(vec![
            recalled,
            forward_sentinel("om_fw", "ou_bob"),
            text("om_e", "", "ou_bob", 500),
        ])
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert!(
        out.body.contains("[User 2]: [deleted message]"),
        "{}",
        out.body
    );
    assert!(
        out.body.contains("[User 1]: [empty message]"),
        "{}",
        out.body
    );
    assert!(
        out.body
            .contains("[User 1]: [merge_forward, expand manually]"),
        "{}",
        out.body
    );
    assert!(!out.body.contains("secret"));
}

#[test]
fn names_resolve_in_one_batch_and_label_the_trigger() {
    let mut fake = Fake::new()
        .list(vec![
            text("om_2", "second", "ou_bob", 2000),
            text("om_1", "first", "ou_alice", 1000),
        ])
        .users(&[
            ("ou_alice", "Alice"),
            ("ou_bob", "Bob"),
            (CHARLIE, "Charlie"),
        ]);
    let out = run(&mut fake, &addressed("summarise"));
    assert_eq!(
        out.body,
        "<recent_context count=\"2\">\n[Alice]: first\n[Bob]: second\n</recent_context>\n\n[Charlie]: summarise"
    );
    assert_eq!(fake.count("/contact/v3/users/batch"), 1);
    let batch = fake
        .api_urls()
        .into_iter()
        .find(|u| u.contains("users/batch"))
        .unwrap();
    assert_eq!(
        batch,
        "/open-apis/contact/v3/users/batch?user_id_type=open_id&user_ids=ou_alice&user_ids=ou_bob&user_ids=ou_charlie"
    );
}

#[test]
fn unresolved_speakers_fall_back_to_user_n_and_the_trigger_stays_unlabelled() {
    let mut fake = Fake::new()
        .list(vec![
            text("om_3", "third", "ou_dave", 2500),
            text("om_2", "second", "ou_bob", 2000),
            text("om_1", "first", "ou_alice", 1000),
        ])
        .users(&[("ou_bob", "Bob")]);
    let out = run(&mut fake, &addressed("summarise"));
    assert_eq!(
        out.body,
        "<recent_context count=\"3\">\n[User 1]: first\n[Bob]: second\n[User 2]: third\n</recent_context>\n\nsummarise"
    );
}

#[test]
fn a_failed_name_lookup_keeps_positional_labels() {
    let mut fake = Fake::new()
        .list(vec![text("om_1", "first", "ou_alice", 1000)])
        .on(
            "/contact/v3/users/batch",
            400,
            lark_error(41050, "no user authority"),
        );
    let out = run(&mut fake, &addressed("q"));
    assert_eq!(
        out.body,
        "<recent_context count=\"1\">\n[User 1]: first\n</recent_context>\n\nq"
    );
    assert!(
        out.notes
            .iter()
            .any(|n| n.starts_with("speaker names unavailable")),
        "{:?}",
        out.notes
    );
}

#[test]
fn recent_then_quoted_then_prose_with_the_parent_left_out_of_the_window() {
    let mut fake = Fake::new()
        .message(
            "om_parent",
            vec![text("om_parent", "the plan", "ou_erin", 1500)],
        )
        .list(vec![
            text("om_parent", "the plan", "ou_erin", 1500),
            text("om_1", "context", "ou_alice", 1000),
        ])
        .users(&[("ou_erin", "Erin")]);
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        ..addressed("agree?")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "<recent_context count=\"1\">\n[User 1]: context\n</recent_context>\n\n<quoted_message message_id=\"om_parent\" sender=\"Erin\" type=\"text\">\nthe plan\n</quoted_message>\n\nagree?"
    );
    let batch = fake
        .api_urls()
        .into_iter()
        .find(|u| u.contains("users/batch"))
        .unwrap();
    assert!(batch.contains("user_ids=ou_erin"), "{batch}");
    assert!(batch.contains("user_ids=ou_alice"), "{batch}");
    assert_eq!(fake.count("users/batch"), 1);
}

#[test]
fn forwarded_children_in_a_group_get_real_names() {
    let mut fake = Fake::new()
        .message(
            TRIGGER_ID,
            vec![
                forward_sentinel(TRIGGER_ID, CHARLIE),
                child_of(text("om_c1", "hello", "ou_alice", 100), TRIGGER_ID),
                child_of(text("om_c2", "hi back", "ou_bob", 200), TRIGGER_ID),
            ],
        )
        .users(&[("ou_alice", "Alice"), ("ou_bob", "Bob")]);
    let message = InboundMessage {
        message_type: "merge_forward".into(),
        body: "[Forwarded messages]".into(),
        command_body: String::new(),
        ..addressed("")
    };
    let out = run_with(&mut fake, &message, no_recent(), budget());
    assert_eq!(
        out.body,
        "<forwarded_messages count=\"2\">\n[Alice]: hello\n[Bob]: hi back\n</forwarded_messages>"
    );
    assert_eq!(fake.count("/messages?"), 0, "the recent window is off");
}

#[test]
fn an_unknown_list_error_is_the_generic_note_without_a_retry() {
    let mut fake = Fake::new()
        .on("/messages?container_id_type", 400, lark_error(9999, "boom"))
        .users(&[]);
    let out = run(&mut fake, &addressed("keep me"));
    assert_eq!(
        out.body,
        "[Recent Lark context unavailable; continuing with the latest message.]\n\nkeep me"
    );
    assert_eq!(fake.count("/messages?"), 1);
}

#[test]
fn a_transient_list_failure_is_retried_once() {
    for first in [
        Fake::new().fail(
            "/messages?container_id_type",
            "transport failure: connection reset",
            true,
        ),
        Fake::new().on("/messages?container_id_type", 503, json!("unavailable")),
        Fake::new().fail("/messages?container_id_type", "request timed out", true),
    ] {
        let mut fake = first
            .list(vec![text("om_1", "context", "ou_alice", 1000)])
            .users(&[]);
        let out = run(&mut fake, &addressed("q"));
        assert_eq!(
            out.body,
            "<recent_context count=\"1\">\n[User 1]: context\n</recent_context>\n\nq"
        );
        assert_eq!(fake.count("/messages?"), 2);
    }
}

#[test]
fn no_retry_once_the_deadline_is_spent() {
    // The first attempt eats the deadline: no second attempt, and no name lookup either.
    let mut fake = Fake::new().fail("/messages?container_id_type", "request timed out", true);
    fake.latency_ms = 1950;
    fake.kv.insert(
        "tenant_access_token:cli_1".into(),
        (b"t-cached".to_vec(), 1),
    );
    let out = run(&mut fake, &addressed("q"));
    assert_eq!(
        out.body,
        "[Recent Lark context temporarily unavailable; continuing with the latest message.]\n\nq"
    );
    assert_eq!(fake.count("/messages?"), 1);
    assert_eq!(fake.count("users/batch"), 0);
}

#[test]
fn a_rate_limited_list_is_not_retried() {
    for answer in [
        lark_error(230020, "This operation triggers the frequency limit"),
        lark_error(99991400, "request trigger frequency limit"),
    ] {
        let mut fake = Fake::new()
            .on("/messages?container_id_type", 200, answer)
            .users(&[]);
        let out = run(&mut fake, &addressed("q"));
        assert_eq!(
            out.body,
            "[Recent Lark context temporarily unavailable; continuing with the latest message.]\n\nq"
        );
        assert_eq!(fake.count("/messages?"), 1);
    }
    let mut fake = Fake::new()
        .on("/messages?container_id_type", 429, json!({}))
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert!(
        out.body
            .starts_with("[Recent Lark context temporarily unavailable")
    );
    assert_eq!(fake.count("/messages?"), 1);
}

#[test]
fn string_shaped_errors_are_classified_by_wording() {
    // Permission and deleted wording: one call each.
    for (msg, line) in [
        (
            "code=99991002 msg=no permission",
            FailureCategory::PermissionDenied,
        ),
        (
            "the message is recalled or not visible",
            FailureCategory::MessageDeleted,
        ),
    ] {
        let mut fake = Fake::new()
            .on("/messages?container_id_type", 400, lark_error(1, msg))
            .users(&[]);
        let out = run(&mut fake, &addressed("q"));
        assert_eq!(out.body, format!("{}\n\nq", line.unavailable_line()));
        assert_eq!(fake.count("/messages?"), 1, "{msg}");
    }
    // Token rejected twice: the refresh is the retry; then the note.
    let mut fake = Fake::new()
        .on(
            "/messages?container_id_type",
            200,
            lark_error(99991663, "token expired"),
        )
        .on(
            "/messages?container_id_type",
            200,
            lark_error(99991663, "token expired"),
        )
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert_eq!(
        out.body,
        "[Recent Lark context temporarily unavailable; continuing with the latest message.]\n\nq"
    );
    assert_eq!(fake.count("/messages?"), 2);
    assert_eq!(fake.token_calls(), 2, "the first token and one refresh");
}

#[test]
fn permission_denied_is_its_note_after_one_call() {
    for code in [99991002, 230027, 99991672] {
        let mut fake = Fake::new()
            .on(
                "/messages?container_id_type",
                400,
                lark_error(code, "denied"),
            )
            .users(&[]);
        let out = run(&mut fake, &addressed("q"));
        assert_eq!(
            out.body,
            "[Recent Lark context unavailable: the bot cannot read this chat history. Continuing with the latest message.]\n\nq"
        );
        assert_eq!(fake.count("/messages?"), 1, "{code}");
    }
    let mut fake = Fake::new()
        .on("/messages?container_id_type", 403, json!("forbidden"))
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert!(out.body.contains("the bot cannot read this chat history"));
}

#[test]
fn deleted_or_invisible_history_is_its_note_after_one_call() {
    for code in [230110, 230011, 230050] {
        let mut fake = Fake::new()
            .on("/messages?container_id_type", 400, lark_error(code, "gone"))
            .users(&[]);
        let out = run(&mut fake, &addressed("q"));
        assert_eq!(
            out.body,
            "[Recent Lark context unavailable: the referenced chat history is deleted or no longer visible. Continuing with the latest message.]\n\nq"
        );
        assert_eq!(fake.count("/messages?"), 1, "{code}");
    }
}

#[test]
fn a_missing_chat_id_is_the_binding_note_without_a_call() {
    let mut fake = Fake::new().users(&[]);
    let message = InboundMessage {
        chat_id: String::new(),
        ..addressed("q")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "[Recent Lark context unavailable: chat binding is missing. Continuing with the latest message.]\n\nq"
    );
    assert_eq!(fake.count("/messages?"), 0);
}

#[test]
fn a_window_with_only_the_trigger_adds_nothing() {
    let mut fake = Fake::new()
        .list(vec![text(TRIGGER_ID, "q", CHARLIE, 3000)])
        .users(&[]);
    let out = run(&mut fake, &addressed("q"));
    assert_eq!(out.body, "q");
    assert!(out.notes.is_empty());
}

#[test]
fn no_window_for_direct_chats_unaddressed_groups_or_size_zero() {
    let unaddressed = InboundMessage {
        addressed_to_bot: false,
        ..addressed("q")
    };
    for (message, settings, max_context) in [
        (trigger("q"), Settings::default(), 20),
        (unaddressed, Settings::default(), 20),
        (addressed("q"), no_recent(), 20),
        (addressed("q"), Settings::default(), 0),
    ] {
        let mut fake = Fake::new();
        let out = run_with(
            &mut fake,
            &message,
            settings,
            Budget {
                max_context_messages: max_context,
                ..budget()
            },
        );
        assert_eq!(out.body, "q");
        assert!(fake.requests.is_empty(), "{:?}", fake.api_urls());
    }
}

#[test]
fn the_window_is_capped_by_max_context_messages() {
    let mut fake = Fake::new().list(vec![]).users(&[]);
    run_with(
        &mut fake,
        &addressed("q"),
        Settings {
            recent_context_size: 30,
        },
        Budget {
            max_context_messages: 4,
            ..budget()
        },
    );
    assert!(
        fake.api_urls()[0].contains("&page_size=4&"),
        "{:?}",
        fake.api_urls()
    );
}

// ---- quoted parents and forwards (inventory 123–137) ----

#[test]
fn a_quoted_reply_becomes_a_quoted_block_before_the_prose() {
    let mut fake = Fake::new().message(
        "om_parent",
        vec![text("om_parent", "original \"text\"", "ou_alice", 1000)],
    );
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        ..trigger("what about this?")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "<quoted_message message_id=\"om_parent\" sender=\"User 1\" type=\"text\">\noriginal \"text\"\n</quoted_message>\n\nwhat about this?"
    );
    assert_eq!(
        fake.api_urls(),
        ["/open-apis/im/v1/messages/om_parent?user_id_type=open_id"]
    );
    // The GET carries the bearer token; the token was fetched once and cached.
    let (get, timeout) = &fake.requests[1];
    assert_eq!(get.method, "GET");
    assert_eq!(
        get.headers,
        [("Authorization".to_string(), "Bearer t-1".to_string())]
    );
    assert!(*timeout <= 2000 && *timeout > 1000, "{timeout}");
    assert_eq!(fake.kv["tenant_access_token:cli_1"].0, b"t-1");
}

/// The reference fixture (lark-protocol §5.4): container first, then every descendant.
#[test]
fn the_reference_forward_fixture_renders_direct_children_only() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/lark/rest_get_message_merge_forward.json");
    let Ok(raw) = std::fs::read(&path) else {
        eprintln!("fixture {} not present; skipped", path.display());
        return;
    };
    let fixture: Value = serde_json::from_slice(&raw).unwrap();
    let forward_id = "om_5b3c000000000000000000000000f001";
    let mut fake = Fake::new().on(
        &format!("/messages/{forward_id}?"),
        200,
        fixture["response"]["body"].clone(),
    );
    let message = InboundMessage {
        message_id: forward_id.into(),
        message_type: "merge_forward".into(),
        body: "[Forwarded messages]".into(),
        command_body: String::new(),
        ..trigger("")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "<forwarded_messages count=\"3\">\n[User 1]: @Alice Wang the canary is failing on eu-west\n[User 2]: [Image]\n[User 1]: [nested merge_forward, expand manually]\n</forwarded_messages>"
    );
    assert!(
        !out.body.contains("Expired TLS cert"),
        "grandchildren are not inlined"
    );
    assert_eq!(fake.api_urls().len(), 1, "one GET, never recursed");
}

fn forward_message() -> InboundMessage {
    InboundMessage {
        message_type: "merge_forward".into(),
        body: "[Forwarded messages]".into(),
        command_body: String::new(),
        ..trigger("")
    }
}

#[test]
fn a_forward_becomes_its_transcript_without_the_sentinel() {
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![
            forward_sentinel(TRIGGER_ID, CHARLIE),
            text("om_c1", "one", "ou_alice", 100),
            text("om_c2", "two", "ou_bob", 200),
            item(
                "om_c3",
                "image",
                json!({"image_key": "img_1"}),
                "ou_alice",
                300,
            ),
            text("om_c4", "four", "ou_bob", 400),
        ],
    );
    let out = run(&mut fake, &forward_message());
    assert_eq!(
        out.body,
        "<forwarded_messages count=\"4\">\n[User 1]: one\n[User 2]: two\n[User 1]: [Image]\n[User 2]: four\n</forwarded_messages>"
    );
    assert!(!out.body.contains("Merged and Forwarded"));
}

#[test]
fn the_attachments_of_a_forward_and_a_quoted_parent_name_their_own_messages() {
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![
            forward_sentinel(TRIGGER_ID, CHARLIE),
            item(
                "om_c1",
                "image",
                json!({"image_key": "img_1"}),
                "ou_alice",
                100,
            ),
            item(
                "om_c2",
                "file",
                json!({"file_key": "file_2", "file_name": "a.pdf"}),
                "ou_bob",
                200,
            ),
            text("om_c3", "words only", "ou_bob", 300),
        ],
    );
    let out = run(&mut fake, &forward_message());
    let found: Vec<(&str, &str, Option<&str>)> = out
        .attachments
        .iter()
        .map(|a| (a.kind, a.key.as_str(), a.name.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            ("image", "om_c1/img_1", None),
            ("file", "om_c2/file_2", Some("a.pdf")),
        ]
    );

    let mut fake = Fake::new().message(
        "om_parent",
        vec![item(
            "om_parent",
            "image",
            json!({"image_key": "img_p"}),
            "ou_alice",
            1000,
        )],
    );
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        ..trigger("what is in this picture?")
    };
    let out = run(&mut fake, &message);
    assert_eq!(out.attachments.len(), 1);
    assert_eq!(out.attachments[0].key, "om_parent/img_p");
    // The download goes to the containing message, whatever id the host passes.
    assert_eq!(
        resource_of(TRIGGER_ID, &out.attachments[0].key),
        ("om_parent", "img_p")
    );
    assert_eq!(resource_of(TRIGGER_ID, "img_own"), (TRIGGER_ID, "img_own"));
}

#[test]
fn recalled_and_failed_context_adds_no_attachments_and_many_are_capped() {
    let mut recalled = item(
        "om_parent",
        "image",
        json!({"image_key": "img_p"}),
        "ou_alice",
        1,
    );
    recalled["deleted"] = json!(true);
    let mut fake = Fake::new().message("om_parent", vec![recalled]);
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        ..trigger("and this?")
    };
    assert!(run(&mut fake, &message).attachments.is_empty());

    let mut fake = Fake::new().on("/messages/om_parent?", 500, lark_error(1, "boom"));
    assert!(run(&mut fake, &message).attachments.is_empty());

    let mut items = vec![forward_sentinel(TRIGGER_ID, CHARLIE)];
    for n in 0..(MAX_CONTEXT_ATTACHMENTS + 5) {
        items.push(item(
            &format!("om_c{n}"),
            "image",
            json!({"image_key": format!("img_{n}")}),
            "ou_alice",
            n as i64 + 1,
        ));
    }
    let mut fake = Fake::new().message(TRIGGER_ID, items);
    let out = run(&mut fake, &forward_message());
    assert_eq!(out.attachments.len(), MAX_CONTEXT_ATTACHMENTS);
}

#[test]
fn forwarded_children_are_ordered_by_creation_time() {
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![
            forward_sentinel(TRIGGER_ID, CHARLIE),
            text("om_c3", "third", "ou_alice", 300),
            text("om_c1", "first", "ou_alice", 100),
            text("om_c2", "second", "ou_alice", 200),
        ],
    );
    let out = run(&mut fake, &forward_message());
    let first = out.body.find("first").unwrap();
    let second = out.body.find("second").unwrap();
    let third = out.body.find("third").unwrap();
    assert!(first < second && second < third, "{}", out.body);
}

#[test]
fn a_forward_over_the_cap_is_truncated_with_the_true_count() {
    let mut items = vec![forward_sentinel(TRIGGER_ID, CHARLIE)];
    for n in (0..105).rev() {
        items.push(child_of(
            text(&format!("om_c{n}"), &format!("msg {n}"), "ou_alice", n),
            TRIGGER_ID,
        ));
    }
    let mut fake = Fake::new().message(TRIGGER_ID, items);
    let out = run(&mut fake, &forward_message());
    assert!(
        out.body
            .starts_with("<forwarded_messages count=\"105\">\n[User 1]: msg 0\n"),
        "{}",
        &out.body[..80]
    );
    assert!(
        out.body
            .contains("[User 1]: msg 99\n... (5 more truncated)\n</forwarded_messages>")
    );
    assert!(!out.body.contains("msg 100"));
    assert_eq!(out.body.matches("[User 1]:").count(), 100);
}

#[test]
fn a_quoted_forward_nests_its_transcript() {
    let mut fake = Fake::new().message(
        "om_parent",
        vec![
            forward_sentinel("om_parent", "ou_alice"),
            child_of(text("om_c1", "inside", "ou_bob", 100), "om_parent"),
        ],
    );
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        ..trigger("thoughts?")
    };
    let out = run(&mut fake, &message);
    assert_eq!(
        out.body,
        "<quoted_message message_id=\"om_parent\" sender=\"User 1\" type=\"merge_forward\">\n<forwarded_messages count=\"1\">\n[User 1]: inside\n</forwarded_messages>\n</quoted_message>\n\nthoughts?"
    );
}

#[test]
fn a_nested_forward_child_is_a_placeholder_and_not_fetched() {
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![
            forward_sentinel(TRIGGER_ID, CHARLIE),
            child_of(text("om_c1", "before", "ou_alice", 100), TRIGGER_ID),
            child_of(forward_sentinel("om_inner", "ou_alice"), TRIGGER_ID),
            child_of(text("om_g1", "grandchild", "ou_bob", 150), "om_inner"),
        ],
    );
    let out = run(&mut fake, &forward_message());
    assert!(
        out.body
            .contains("[User 1]: [nested merge_forward, expand manually]"),
        "{}",
        out.body
    );
    assert!(
        out.body.starts_with("<forwarded_messages count=\"2\">"),
        "{}",
        out.body
    );
    assert!(!out.body.contains("grandchild"));
    assert_eq!(fake.api_urls().len(), 1);
}

#[test]
fn a_forward_without_children_says_so() {
    let mut fake = Fake::new().message(TRIGGER_ID, vec![forward_sentinel(TRIGGER_ID, CHARLIE)]);
    let out = run(&mut fake, &forward_message());
    assert_eq!(
        out.body,
        "<forwarded_messages count=\"0\">\n[no forwarded content available]\n</forwarded_messages>"
    );
}

const QUOTED_ERROR: &str =
    "<quoted_message message_id=\"om_parent\" type=\"error\">[unable to fetch]</quoted_message>";

fn quoting(body: &str) -> InboundMessage {
    InboundMessage {
        parent_id: Some("om_parent".into()),
        ..trigger(body)
    }
}

#[test]
fn a_failed_quoted_fetch_degrades_to_the_error_block() {
    let cases: Vec<Fake> = vec![
        Fake::new().on("/messages/om_parent?", 400, lark_error(230110, "deleted")),
        Fake::new().on("/messages/om_parent?", 500, json!("oops")),
        Fake::new().on(
            "/messages/om_parent?",
            200,
            json!({"code": 0, "msg": "ok", "data": {}}),
        ),
        Fake::new().on("/messages/om_parent?", 200, json!("not an envelope")),
        Fake::new().on("/messages/om_parent?", 429, lark_error(99991400, "limit")),
        Fake::new().fail("/messages/om_parent?", "request timed out", true),
        Fake::new().message("om_parent", vec![]),
    ];
    for mut fake in cases {
        let out = run(&mut fake, &quoting("still here"));
        assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nstill here"));
        assert_eq!(fake.count("/messages/om_parent"), 1, "no retry for quotes");
    }
}

#[test]
fn a_recalled_parent_degrades_to_the_error_block() {
    let mut parent = text("om_parent", "gone", "ou_alice", 1000);
    parent["deleted"] = json!(true);
    let mut fake = Fake::new().message("om_parent", vec![parent]);
    let out = run(&mut fake, &quoting("hm"));
    assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nhm"));
}

#[test]
fn a_failed_forward_fetch_degrades_to_the_error_block() {
    let mut fake = Fake::new().on(
        &format!("/messages/{TRIGGER_ID}?"),
        400,
        lark_error(230002, "bot not in chat"),
    );
    let out = run(&mut fake, &forward_message());
    assert_eq!(
        out.body,
        "<forwarded_messages type=\"error\">[unable to fetch]</forwarded_messages>"
    );
    assert!(
        out.notes[0].contains("permission_denied"),
        "{:?}",
        out.notes
    );
}

#[test]
fn a_plain_message_is_unchanged_without_a_call() {
    let mut fake = Fake::new();
    let out = run(&mut fake, &trigger("just text"));
    assert_eq!(out.body, "just text");
    assert!(out.notes.is_empty());
    assert!(fake.requests.is_empty());
}

#[test]
fn without_credentials_nothing_is_fetched_and_nothing_is_stamped() {
    let mut fake = Fake::new();
    let out = enrich(
        &mut fake,
        &Credentials {
            base_url: String::new(),
            app_id: String::new(),
            app_secret: String::new(),
        },
        &Settings::default(),
        &quoting("hi"),
        budget(),
    );
    assert_eq!(out.body, "hi");
    assert!(fake.requests.is_empty());
}

#[test]
fn new_strips_the_directive_from_the_body() {
    let mut fake = Fake::new();
    let out = run(&mut fake, &trigger("/new rebuild the plan"));
    assert_eq!(out.body, "rebuild the plan");
    assert!(fake.requests.is_empty());
    let out = run(&mut fake, &trigger("/new"));
    assert_eq!(out.body, "");
}

#[test]
fn new_keeps_the_quoted_context() {
    let mut fake = Fake::new().message(
        "om_parent",
        vec![text("om_parent", "old plan", "ou_alice", 1000)],
    );
    let out = run(&mut fake, &quoting("/new rebuild it"));
    assert_eq!(
        out.body,
        "<quoted_message message_id=\"om_parent\" sender=\"User 1\" type=\"text\">\nold plan\n</quoted_message>\n\nrebuild it"
    );
}

#[test]
fn the_enriched_body_no_longer_parses_as_a_command_but_the_command_body_does() {
    let mut fake = Fake::new().message(
        "om_parent",
        vec![text("om_parent", "bug report", "ou_alice", 1000)],
    );
    let message = quoting("/deploy the login fix");
    let out = run(&mut fake, &message);
    assert!(parse_command(&out.body).is_none(), "{}", out.body);
    assert!(matches!(
        parse_command(&message.command_body),
        Some(Command { name, .. }) if name == "deploy"
    ));
}

#[test]
fn mentions_in_children_resolve_through_their_own_mentions() {
    let mut child = child_of(
        text("om_c1", "@_user_1 and @_user_2 look", "ou_alice", 100),
        TRIGGER_ID,
    );
    child["mentions"] = json!([
        {"key": "@_user_1", "id": "ou_bob", "id_type": "open_id", "name": "Bob"},
        {"key": "@_user_2", "id": "ou_bot", "id_type": "open_id", "name": "Helper Bot"},
    ]);
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![forward_sentinel(TRIGGER_ID, CHARLIE), child],
    );
    let out = run(&mut fake, &forward_message());
    assert!(
        out.body.contains("[User 1]: @Bob and @Helper Bot look"),
        "{}",
        out.body
    );
}

// ---- budget, token and failure modes of this port ----

#[test]
fn the_request_budget_stops_further_calls_and_degrades() {
    // Two requests: the token and the forward GET; the quote and the window get nothing.
    let mut fake = Fake::new().message(
        TRIGGER_ID,
        vec![
            forward_sentinel(TRIGGER_ID, CHARLIE),
            text("om_c1", "one", "ou_alice", 1),
        ],
    );
    let message = InboundMessage {
        parent_id: Some("om_parent".into()),
        chat_type: ChatType::Group,
        addressed_to_bot: true,
        ..forward_message()
    };
    let out = run_with(
        &mut fake,
        &message,
        Settings::default(),
        Budget {
            max_requests: 2,
            ..budget()
        },
    );
    assert_eq!(fake.requests.len(), 2);
    assert_eq!(
        out.body,
        format!(
            "[Recent Lark context temporarily unavailable; continuing with the latest message.]\n\n{QUOTED_ERROR}\n\n<forwarded_messages count=\"1\">\n[User 1]: one\n</forwarded_messages>"
        )
    );
    assert!(
        out.notes.iter().any(|n| n.contains("request budget")),
        "{:?}",
        out.notes
    );
}

#[test]
fn no_request_starts_near_the_deadline_and_timeouts_leave_a_reserve() {
    let mut fake = Fake::new();
    let out = run_with(
        &mut fake,
        &quoting("q"),
        Settings::default(),
        Budget {
            deadline_ms: MIN_REQUEST_MS - 1,
            ..budget()
        },
    );
    assert!(fake.requests.is_empty());
    assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nq"));

    // The deadline is the smaller of the budget and the call's own remaining time.
    let mut fake = Fake::new().message("om_parent", vec![text("om_parent", "p", "ou_a", 1)]);
    fake.remaining_ms = 700;
    fake.latency_ms = 100;
    run(&mut fake, &quoting("q"));
    let timeouts: Vec<u32> = fake.requests.iter().map(|(_, t)| *t).collect();
    assert_eq!(timeouts, [650, 550]);
}

#[test]
fn a_cached_token_is_reused_and_a_rejected_one_refreshed_once() {
    let mut fake = Fake::new()
        .on(
            "/messages/om_parent?",
            200,
            lark_error(99991663, "invalid token"),
        )
        .message("om_parent", vec![text("om_parent", "p", "ou_a", 1)]);
    fake.kv
        .insert("tenant_access_token:cli_1".into(), (b"t-stale".to_vec(), 1));
    let out = run(&mut fake, &quoting("q"));
    assert!(
        out.body
            .starts_with("<quoted_message message_id=\"om_parent\" sender=\"User 1\""),
        "{}",
        out.body
    );
    let auth: Vec<String> = fake
        .requests
        .iter()
        .map(|(r, _)| r.headers.first().map(|h| h.1.clone()).unwrap_or_default())
        .collect();
    assert_eq!(auth[0], "Bearer t-stale");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(auth[2], "Bearer t-1");
    assert_eq!(fake.kv["tenant_access_token:cli_1"].0, b"t-1");
}

#[test]
fn a_failed_token_call_degrades_every_block() {
    let mut fake = Fake::new()
        .on(
            "tenant_access_token",
            200,
            json!({"code": 10014, "msg": "app secret invalid"}),
        )
        .on(
            "tenant_access_token",
            200,
            json!({"code": 10014, "msg": "app secret invalid"}),
        );
    let out = run(&mut fake, &quoting("q"));
    assert_eq!(out.body, format!("{QUOTED_ERROR}\n\nq"));
    assert!(out.notes[0].contains("tenant token"), "{:?}", out.notes);
}

#[test]
fn failure_classification_table() {
    use crate::rest::ApiError;
    let api = |status: u16, code: i64, msg: &str| {
        classify(&FetchError::Api(ApiError {
            http_status: status,
            code,
            msg: msg.into(),
            retry_after_s: None,
        }))
    };
    use FailureCategory::*;
    let cases = [
        (api(200, 99991002, ""), PermissionDenied, false),
        (api(200, 230001, ""), PermissionDenied, false),
        (api(200, 230110, ""), MessageDeleted, false),
        (api(200, 230011, ""), MessageDeleted, false),
        (api(200, 230050, ""), MessageDeleted, false),
        (api(200, 99991663, ""), TokenExpired, true),
        (api(200, 99991664, ""), TokenExpired, true),
        (api(200, 230020, ""), RateLimited, false),
        (api(429, 0, "http 429"), RateLimited, false),
        (api(403, 0, "http 403"), PermissionDenied, false),
        (api(502, 0, "http 502"), Temporary, true),
        (api(400, 1, "code=230020 msg=x"), RateLimited, false),
        (api(400, 1, "context deadline exceeded"), Timeout, true),
        (api(400, 1, "connection refused"), Temporary, true),
        (api(400, 1, "missing chat_id"), ChannelUnbound, false),
        (api(200, 0, "response has no `data.items`"), Unknown, false),
        (classify(&FetchError::Deadline), Timeout, true),
        (classify(&FetchError::RequestLimit), Temporary, false),
        (classify(&FetchError::MissingChatId), ChannelUnbound, false),
        (
            classify(&FetchError::Transport(TransportFailure {
                message: "https://x is outside the plugin's http allow-list".into(),
                retryable: false,
            })),
            Unknown,
            false,
        ),
    ];
    for (n, (got, category, retryable)) in cases.into_iter().enumerate() {
        assert_eq!(
            (got.category, got.retryable),
            (category, retryable),
            "case {n}"
        );
    }
}

#[test]
fn attributes_are_quoted_like_go() {
    assert_eq!(go_quote("om_1"), "\"om_1\"");
    assert_eq!(
        go_quote("a \"b\" \\ c\nd\te"),
        "\"a \\\"b\\\" \\\\ c\\nd\\te\""
    );
    assert_eq!(go_quote("王小明 🚀"), "\"王小明 🚀\"");
    assert_eq!(go_quote("\u{1}"), "\"\\x01\"");
}
