//! The fake behaves as the Bot API does where the plugin and the host depend on it.

use std::time::Duration;

use fake_telegram::{BOT_ID, BOT_USERNAME, Chat, FakeTelegram, User};
use serde_json::{Value, json};

const TOKEN: &str = "123:abc";

async fn call(fake: &FakeTelegram, token: &str, method: &str, params: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/bot{token}/{method}", fake.base_url()))
        .json(&params)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let fake = FakeTelegram::start(TOKEN).await;
    let (status, body) = call(&fake, "123:wrong", "getMe", json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );
    assert_eq!(fake.unauthorized_requests(), 1);
    let (_, me) = call(&fake, TOKEN, "getMe", json!({})).await;
    assert_eq!(
        (
            me["result"]["id"].as_i64(),
            me["result"]["username"].as_str()
        ),
        (Some(BOT_ID), Some(BOT_USERNAME))
    );
}

#[tokio::test]
async fn get_updates_confirms_by_offset_and_holds_until_a_push() {
    let fake = FakeTelegram::start(TOKEN).await;
    let ann = User::new(11, "Ann");
    let first = fake
        .message(
            &Chat::private(&ann),
            &ann,
            "/start@switchboard_test_bot hi @someone",
        )
        .push();
    let (_, got) = call(&fake, TOKEN, "getUpdates", json!({"timeout": 0})).await;
    let update = &got["result"][0];
    assert_eq!(update["update_id"], first);
    assert_eq!(
        update["message"]["entities"],
        json!([{"type": "bot_command", "offset": 0, "length": 27}, {"type": "mention", "offset": 31, "length": 8}])
    );
    // Not confirmed yet: the same update again.
    let (_, again) = call(&fake, TOKEN, "getUpdates", json!({"timeout": 0})).await;
    assert_eq!(again["result"][0]["update_id"], first);
    // Confirmed by the offset: a held poll answers what is pushed while it waits.
    let held = tokio::spawn({
        let url = format!("{}/bot{TOKEN}/getUpdates", fake.base_url());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"offset": first + 1, "timeout": 20}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.waiting_polls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the poll is held");
    assert_eq!(fake.pending_updates(), 0);
    let second = fake.message(&Chat::private(&ann), &ann, "second").push();
    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["result"][0]["update_id"], second);
    assert_eq!(fake.last_offset(), Some(first + 1));
}

#[tokio::test]
async fn a_webhook_makes_get_updates_conflict() {
    let fake = FakeTelegram::start(TOKEN).await;
    let (status, _) = call(
        &fake,
        TOKEN,
        "setWebhook",
        json!({"url": "http://127.0.0.1:9/h", "secret_token": "bad token!"}),
    )
    .await;
    assert_eq!(status, 400, "the secret's characters are checked");
    call(&fake, TOKEN, "setWebhook", json!({"url": "http://127.0.0.1:9/h", "secret_token": "ok_1", "allowed_updates": ["message"]})).await;
    assert_eq!(
        fake.webhook().unwrap().secret_token.as_deref(),
        Some("ok_1")
    );
    let (status, body) = call(&fake, TOKEN, "getUpdates", json!({})).await;
    assert_eq!(status, 409);
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("webhook is active")
    );
    call(&fake, TOKEN, "deleteWebhook", json!({})).await;
    assert_eq!(call(&fake, TOKEN, "getUpdates", json!({})).await.0, 200);
}

#[tokio::test]
async fn sends_are_checked_recorded_and_fail_on_demand() {
    let fake = FakeTelegram::start(TOKEN).await;
    let send = |text: &str| json!({"chat_id": "-100", "text": text, "parse_mode": "HTML", "message_thread_id": 7, "reply_parameters": {"message_id": 3}});
    let (status, body) = call(&fake, TOKEN, "sendMessage", send("<b>x</i>")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        call(&fake, TOKEN, "sendMessage", send(&"a".repeat(4097)))
            .await
            .0,
        400
    );
    assert_eq!(
        call(&fake, TOKEN, "sendMessage", send(&"&amp;".repeat(4096)))
            .await
            .0,
        200,
        "entities count once"
    );
    let (_, sent) = call(
        &fake,
        TOKEN,
        "sendMessage",
        send("<pre><code class=\"language-rs\">a &lt; b</code></pre>"),
    )
    .await;
    let id = sent["result"]["message_id"].as_i64().unwrap();
    let m = fake.sent_to(-100).pop().unwrap();
    assert_eq!(
        (m.thread_id, m.reply_to, m.parse_mode.as_deref()),
        (Some(7), Some(3), Some("HTML"))
    );
    let edit = json!({"chat_id": -100, "message_id": id, "text": "new", "parse_mode": "HTML"});
    assert_eq!(
        call(&fake, TOKEN, "editMessageText", edit.clone()).await.0,
        200
    );
    let (status, body) = call(&fake, TOKEN, "editMessageText", edit).await;
    assert!(
        status == 400
            && body["description"]
                .as_str()
                .unwrap()
                .contains("not modified")
    );
    assert_eq!(
        fake.sent_to(-100).pop().unwrap().edits,
        vec!["new".to_string()]
    );

    fake.fail_next("sendMessage", 1, 429, Some(2));
    let (status, body) = call(&fake, TOKEN, "sendMessage", send("x")).await;
    assert_eq!(
        (status, body["parameters"]["retry_after"].as_i64()),
        (429, Some(2))
    );
    assert_eq!(call(&fake, TOKEN, "sendMessage", send("x")).await.0, 200);
    fake.block_bot(-100);
    let (status, body) = call(&fake, TOKEN, "sendMessage", send("x")).await;
    assert_eq!(status, 403);
    assert!(body["description"].as_str().unwrap().contains("blocked"));
}

#[tokio::test]
async fn callback_queries_are_answered_once_and_files_served() {
    let fake = FakeTelegram::start(TOKEN).await;
    let ann = User::new(11, "Ann");
    let (_, query) = fake.push_callback_query(&Chat::private(&ann), &ann, 5, "approve:1");
    let answer = json!({"callback_query_id": query});
    assert_eq!(
        call(&fake, TOKEN, "answerCallbackQuery", answer.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        call(&fake, TOKEN, "answerCallbackQuery", answer).await.0,
        400,
        "answered already"
    );
    assert_eq!(fake.answered_callbacks(), vec![query]);

    fake.add_file("f1", "photos/file_1.jpg", b"JPEG");
    let (_, file) = call(&fake, TOKEN, "getFile", json!({"file_id": "f1"})).await;
    let path = file["result"]["file_path"].as_str().unwrap();
    let bytes = reqwest::get(format!("{}/file/bot{TOKEN}/{path}", fake.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"JPEG");
}
