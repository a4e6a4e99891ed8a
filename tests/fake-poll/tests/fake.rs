//! The fake channel itself, and the testing-poll plugin's requests and answer parsing against it
//! (natively: the plugin's request builders are sent with reqwest here, not through the host).

use std::time::Duration;

use fake_poll::{ACTION_DEADLINE_MS, BOT_ID, BOT_NAME, FakePoll};
use serde_json::{Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::decoder::Decoded;
use switchboard_plugin_sdk::http::{Request, Response};
use switchboard_testing_poll as plugin;

const TOKEN: &str = "123:secret-token";

/// Every test finishes well within this, or fails.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(url: String) -> (u16, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(url: String, body: Value) -> (u16, Value) {
    let response = client().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends one of the plugin's requests the way the host would (its method, headers, body and
/// timeout), to the fake instead of `http://poll.test`.
async fn execute(fake: &FakePoll, request: &Request) -> Response {
    let url = request
        .url
        .replacen(plugin::DEFAULT_BASE_URL, fake.base_url(), 1);
    let mut builder = client().request(request.method.parse().unwrap(), url);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some(ms) = request.timeout_ms {
        builder = builder.timeout(Duration::from_millis(ms.into()));
    }
    let response = builder.body(request.body.clone()).send().await.unwrap();
    Response {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn a_poll_answers_at_once_when_updates_wait_and_holds_otherwise() {
    bounded(async {
        let fake = FakePoll::start(TOKEN).await;
        let base = format!("{}/bot{TOKEN}", fake.base_url());
        let first = fake.push_message("c1", "direct", "u1", "hello");
        assert_eq!(first, 1);
        let (status, body) = get(format!("{base}/updates?offset=0&timeout_s=5")).await;
        assert_eq!(status, 200);
        assert_eq!(body["next_offset"], 2);
        let update = &body["updates"][0];
        assert_eq!(update["update_id"], 1);
        assert_eq!(update["message"]["id"], "m1");
        assert_eq!(
            update["message"]["chat"],
            json!({"id": "c1", "kind": "direct"})
        );
        assert_eq!(update["message"]["from"]["id"], "u1");
        assert_eq!(update["message"]["text"], "hello");

        // Past the last update the poll is held, and a push wakes it.
        let url = format!("{base}/updates?offset=2&timeout_s=10");
        let held = tokio::spawn(async move { get(url).await });
        while fake.waiting_polls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let action = fake.push_action("c1", "direct", "u1", "m1", "approve", "{\"x\":1}");
        let (status, body) = held.await.unwrap();
        assert_eq!(status, 200);
        // Woken by the push: a poll that ran out its 10 s hold would have answered nothing.
        assert_eq!(body["updates"].as_array().unwrap().len(), 1);
        assert_eq!(body["updates"][0]["update_id"], action);
        assert_eq!(body["updates"][0]["action"]["id"], format!("a{action}"));
        assert_eq!(
            body["updates"][0]["action"]["deadline_ms"],
            ACTION_DEADLINE_MS
        );
        assert_eq!(body["next_offset"], action + 1);

        // Nothing new: the poll is held (seen waiting), then answered empty.
        let url = format!("{base}/updates?offset=3&timeout_s=1");
        let held = tokio::spawn(async move { get(url).await });
        while fake.waiting_polls() == 0 && !held.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let was_held = fake.waiting_polls() == 1;
        let (status, body) = held.await.unwrap();
        assert_eq!(status, 200);
        assert!(was_held, "an empty poll is held before it is answered");
        assert_eq!(body, json!({"updates": [], "next_offset": 3}));
        assert_eq!(fake.poll_requests(), 3);
        assert_eq!(fake.last_offset(), Some(3));
        assert_eq!(fake.waiting_polls(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_everywhere() {
    bounded(async {
        let fake = FakePoll::start(TOKEN).await;
        let base = format!("{}/botwrong", fake.base_url());
        assert_eq!(get(format!("{base}/updates?offset=0")).await.0, 401);
        assert_eq!(get(format!("{base}/me")).await.0, 401);
        let body = json!({"chat_id": "c", "text": "t", "idempotency_key": "k"});
        assert_eq!(post(format!("{base}/send"), body).await.0, 401);
        assert_eq!(fake.unauthorized_requests(), 3);
        assert_eq!(fake.poll_requests(), 0);
        assert!(fake.sent().is_empty());
        let (status, me) = get(format!("{}/bot{TOKEN}/me", fake.base_url())).await;
        assert_eq!((status, me), (200, json!({"id": BOT_ID, "name": BOT_NAME})));
    })
    .await;
}

#[tokio::test]
async fn sends_are_deduplicated_by_key_edits_recorded_and_failures_injected() {
    bounded(async {
        let fake = FakePoll::start(TOKEN).await;
        let base = format!("{}/bot{TOKEN}", fake.base_url());
        let send = |key: &str, text: &str| {
            post(
                format!("{base}/send"),
                json!({"chat_id": "c1", "text": text, "idempotency_key": key, "reply_to": "m1"}),
            )
        };
        let (status, first) = send("k1", "hello").await;
        assert_eq!(status, 200);
        let id = first["message_id"].as_str().unwrap().to_string();
        let (_, again) = send("k1", "hello (retried)").await;
        assert_eq!(
            again["message_id"],
            id.as_str(),
            "the same key answers the same message"
        );
        let (_, other) = send("k2", "second").await;
        assert_ne!(other["message_id"], id.as_str());
        let sent = fake.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (
                sent[0].chat_id.as_str(),
                sent[0].text.as_str(),
                sent[0].reply_to.as_deref()
            ),
            ("c1", "hello", Some("m1"))
        );
        assert_eq!(fake.send_requests(), 3);

        let edit = |text: &str, last: bool| {
            post(
                format!("{base}/edit"),
                json!({"message_id": id.clone(), "text": text, "final": last}),
            )
        };
        assert_eq!(edit("hel", false).await.0, 200);
        assert_eq!(edit("hello world", true).await.0, 200);
        let edits = fake.edits(&id);
        assert_eq!(edits.len(), 2);
        assert_eq!((edits[0].text.as_str(), edits[0].is_final), ("hel", false));
        assert_eq!(
            (edits[1].text.as_str(), edits[1].is_final),
            ("hello world", true)
        );
        assert!(edits[0].received_at <= edits[1].received_at);
        assert_eq!(fake.sent()[0].text, "hello world");
        assert_eq!(fake.sent()[0].sent_text, "hello");
        let unknown = post(
            format!("{base}/edit"),
            json!({"message_id": "nope", "text": "x"}),
        );
        assert_eq!(unknown.await.0, 404);

        fake.set_failures(2, 503);
        assert_eq!(send("k3", "down").await.0, 503);
        assert_eq!(edit("down", false).await.0, 503);
        assert_eq!(fake.pending_failures(), 0);
        assert_eq!(send("k3", "up").await.0, 200);
        assert_eq!(fake.sent().len(), 3, "a failed send records nothing");
        assert_eq!(fake.edits(&id).len(), 2, "a failed edit records nothing");
    })
    .await;
}

#[tokio::test]
async fn the_plugin_polls_decodes_sends_and_streams_against_the_fake() {
    bounded(async {
        let fake = FakePoll::start(TOKEN).await;
        let root = plugin::api_root(None, TOKEN);
        let message = fake.push_message("g1", "group", "u1", "@bot /deploy prod");
        let action = fake.push_action("g1", "group", "u1", "m1", "approve", "{\"x\":1}");

        let poll = plugin::poll_request(&root, None).unwrap();
        let batch = plugin::parse_poll(&execute(&fake, &poll).await).unwrap();
        assert_eq!(batch.payloads.len(), 2);
        assert_eq!(batch.next_cursor, Some((action + 1).to_string()));
        match plugin::decode(&batch.payloads[0]).unwrap() {
            Decoded::Message(m) => {
                assert_eq!(m.event_id, message.to_string());
                assert_eq!(m.message_id, "m1");
                assert!(m.addressed_to_bot);
                assert_eq!(m.sender.display_name.as_deref(), Some("u1"));
            }
            other => panic!("{other:?}"),
        }
        match plugin::decode(&batch.payloads[1]).unwrap() {
            Decoded::Action(a) => {
                assert_eq!(a.action_id, format!("a{action}"));
                assert_eq!((a.name.as_str(), a.value.as_str()), ("approve", "{\"x\":1}"));
                assert_eq!(a.answer_deadline_ms, Some(3000));
            }
            other => panic!("{other:?}"),
        }
        // The next round from the stored cursor is held and comes back empty.
        let next = plugin::poll_request(&root, batch.next_cursor.as_deref()).unwrap();
        let empty = plugin::parse_poll(&execute(&fake, &next).await).unwrap();
        assert!(empty.payloads.is_empty());
        assert_eq!(empty.next_cursor, batch.next_cursor);

        // A streamed reply: begin (placeholder), update, end.
        let begin = plugin::send_request(&root, "g1", plugin::STREAM_PLACEHOLDER, "key-1", Some("m1"));
        let handle = plugin::sent_message_id(&execute(&fake, &begin).await).unwrap();
        let retried = plugin::sent_message_id(&execute(&fake, &begin).await).unwrap();
        assert_eq!(retried, handle, "a retried begin finds the same message");
        let update = plugin::edit_request(&root, &handle, "Deploying", false);
        plugin::edit_outcome(&execute(&fake, &update).await).unwrap();
        let end = plugin::edit_request(&root, &handle, "Deployed.", true);
        plugin::edit_outcome(&execute(&fake, &end).await).unwrap();
        let sent = fake.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].sent_text, "…");
        assert_eq!(sent[0].text, "Deployed.");
        let edits = fake.edits(&handle);
        assert_eq!(
            edits.iter().map(|e| (e.text.as_str(), e.is_final)).collect::<Vec<_>>(),
            [("Deploying", false), ("Deployed.", true)]
        );

        // Failures are classified by status.
        fake.set_failures(1, 502);
        let failed = plugin::edit_outcome(&execute(&fake, &update).await).unwrap_err();
        assert!(failed.retryable && failed.code == Some(502), "{failed:?}");
        fake.set_failures(1, 400);
        let send = plugin::send_request(&root, "g1", "x", "key-2", None);
        assert!(!plugin::sent_message_id(&execute(&fake, &send).await).unwrap_err().retryable);

        // Lifecycle: `me` becomes the bot's config; a wrong token is unauthorized.
        let me = execute(&fake, &plugin::me_request(&root)).await;
        assert_eq!(
            plugin::parse_me(&me).unwrap(),
            [
                ("bot_id".to_string(), BOT_ID.to_string()),
                ("bot_name".to_string(), BOT_NAME.to_string())
            ]
        );
        let wrong = plugin::api_root(None, "wrong");
        let refused = execute(&fake, &plugin::poll_request(&wrong, None).unwrap()).await;
        assert!(matches!(
            plugin::parse_poll(&refused),
            Err(switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::ConnectError::Terminal(_))
        ));
    })
    .await;
}
