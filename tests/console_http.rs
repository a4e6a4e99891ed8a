//! Issue 19, over real HTTP on SQLite and PostgreSQL: the operator console's perimeter.
//!
//! - `/` and every console page without a session redirect to the login page; the API answers
//!   401 without a bearer token or console cookie.
//! - A wrong admin token is refused (401, a form error, no cookie); the right one sets an
//!   HttpOnly, SameSite=Strict cookie (`Secure` under an https public URL).
//! - A state-changing form without the session's CSRF token (none, wrong, another session's) is
//!   403 and changes nothing; a form without a cookie goes to the login page and changes
//!   nothing; a tampered cookie is no session.
//! - The console cookie authorizes `GET /api/sessions/{id}/events` only: not other API routes,
//!   and a request with a wrong bearer token stays 401 whatever cookie it shows.
//! - An installation form that breaks the plugin's schema is shown again with the error,
//!   without the secrets typed into it, and nothing is stored; a valid one is stored.
//! - Log-out clears the cookie and the old cookie no longer opens anything.
//! - Without an admin token the console is disabled (503).
//! - The installation lifecycle from the console: an edit from the schema (a bad value shown
//!   again, nothing changed), a secret rotation that the next webhook feels, revoke and restore;
//!   pairing codes approved and denied (a wrong one shown as a form error), never listed.
//! - Runs and queues from the console: a queued message promoted and another deleted (a second
//!   delete is 404), the session interrupted and deleted, a message's markup shown escaped.
//!
//! Every request is bounded in time by the client's timeout.

#[path = "support/db.rs"]
mod db;
#[path = "support/runtime.rs"]
mod support;

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use switchboard::app::App;
use switchboard::config::Config;

const ADMIN: &str = "console-admin-token-0123456789abcdef";
const BOT_TOKEN: &str = "123456:console-bot-token";
const AGENT: &str = "team";
const WORKER_TOKEN: &str = "console-worker-token-0123456789";
const HOOK_SECRET: &str = "console_hook_secret";

struct Server {
    base: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(database_url: &str, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default();
        config.database.url = database_url.to_string();
        config.secrets.key = Some(switchboard::store::SecretCipher::generate_key_hex());
        config.plugins.cache_dir = Some(support::shared_cache_dir());
        config.server.admin_token = Some(ADMIN.into());
        config.connections.enabled = false;
        // Nothing leaves the machine: the channel's API is a closed local port.
        config.plugins.base_urls.insert(
            "https://api.telegram.org".into(),
            "http://127.0.0.1:1".into(),
        );
        config.agents.insert(
            AGENT.into(),
            serde_json::from_value::<switchboard::agents::AgentConfig>(
                json!({"kind": "worker", "token": WORKER_TOKEN, "offline_after_ms": 60000}),
            )
            .unwrap(),
        );
        adjust(&mut config);
        let app = App::from_config(&config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .redirect(Policy::none())
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .unwrap();
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/api{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Signs in; the `Cookie` header value of the new session.
    async fn sign_in(&self) -> String {
        let response = self
            .post_form("/console/login", None, &[("token", ADMIN)])
            .await;
        assert_eq!(response.status().as_u16(), 303);
        let set = set_cookie(&response).expect("sign-in sets the cookie");
        set.split(';').next().unwrap().to_string()
    }

    /// A page's CSRF token (every signed-in page carries it in the log-out form).
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/console/installations", Some(cookie)).await;
        assert_eq!(page.status().as_u16(), 200);
        let html = page.text().await.unwrap();
        let marker = "name=\"csrf\" value=\"";
        let start = html.find(marker).expect("a CSRF field") + marker.len();
        html[start..start + 64].to_string()
    }

    async fn installation_status(&self, id: &str) -> String {
        let (status, body) = self
            .admin(reqwest::Method::GET, &format!("/installations/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["status"].as_str().unwrap().to_string()
    }
}

fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `text` with its last (hex) character changed.
fn flip_last(text: &str) -> String {
    let (head, last) = text.split_at(text.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_perimeter() {
    for t in db::test_databases().await {
        tokio::time::timeout(Duration::from_secs(120), perimeter(&t.url))
            .await
            .unwrap_or_else(|_| panic!("{}: the perimeter checks took too long", t.name));
    }
}

async fn perimeter(database_url: &str) {
    let server = Server::start(database_url, |_| {}).await;

    // Without a session: `/` and every page lead to the login page; the API is 401.
    let root = server.get("/", None).await;
    assert_eq!(root.status().as_u16(), 303);
    assert_eq!(location(&root), "/console/");
    for page in [
        "/console/",
        "/console/installations",
        "/console/sessions",
        "/console/runs",
        "/console/metrics",
    ] {
        let response = server.get(page, None).await;
        assert_eq!(response.status().as_u16(), 303, "{page}");
        assert_eq!(location(&response), "/console/login", "{page}");
    }
    let events = server.get("/api/sessions/none/events", None).await;
    assert_eq!(events.status().as_u16(), 401);
    let login = server.get("/console/login", None).await;
    assert_eq!(login.status().as_u16(), 200);
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        login
            .text()
            .await
            .unwrap()
            .contains("<label for=\"token\">")
    );

    // A wrong token: refused with a form error and no cookie.
    for wrong in ["", "console-admin-token-0123456789abcdeF", "x"] {
        let response = server
            .post_form("/console/login", None, &[("token", wrong)])
            .await;
        assert_eq!(response.status().as_u16(), 401, "{wrong:?}");
        assert_eq!(set_cookie(&response), None, "{wrong:?}");
        let html = response.text().await.unwrap();
        assert!(html.contains("That is not the admin token"), "{html}");
    }

    // The right token: a strict, HttpOnly cookie (no `Secure` over http).
    let response = server
        .post_form("/console/login", None, &[("token", ADMIN)])
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/installations");
    let set = set_cookie(&response).unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = server.csrf(&cookie).await;

    // A valid installation through the schema form.
    let added = server
        .post_form(
            "/console/installations",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("channel", "telegram"),
                ("name", "console test"),
                ("config.bot_username", "console_bot"),
                ("config.bot_id", "4242"),
                ("secret.bot_token", BOT_TOKEN),
                ("skip_on_install", "on"),
            ],
        )
        .await;
    assert_eq!(
        added.status().as_u16(),
        303,
        "{}",
        added.text().await.unwrap()
    );
    let (_, list) = server
        .admin(reqwest::Method::GET, "/installations", None)
        .await;
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["config"]["bot_username"], "console_bot");
    assert_eq!(list[0]["secrets"], json!(["bot_token"]));

    // A form that breaks the schema: shown again with the error, secrets not echoed, nothing
    // stored.
    let refused = server
        .post_form(
            "/console/installations",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("channel", "telegram"),
                ("name", "bad one"),
                ("config.bot_username", "not a username!"),
                ("config.bot_id", "4343"),
                ("secret.bot_token", "999:typed-secret-value"),
                ("skip_on_install", "on"),
            ],
        )
        .await;
    assert_eq!(refused.status().as_u16(), 422);
    let html = refused.text().await.unwrap();
    assert!(html.contains("bot_username"), "{html}");
    assert!(html.contains("role=\"alert\""), "{html}");
    assert!(
        html.contains("value=\"bad one\""),
        "the typed name is kept: {html}"
    );
    assert!(
        !html.contains("typed-secret-value"),
        "a secret is never echoed: {html}"
    );
    let (_, list) = server
        .admin(reqwest::Method::GET, "/installations", None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Forged POSTs: no CSRF token, a wrong one, another session's. 403, nothing revoked.
    let revoke = format!("/console/installations/{id}/revoke");
    let other_cookie = server.sign_in().await;
    let other_csrf = server.csrf(&other_cookie).await;
    assert_ne!(other_csrf, csrf);
    let wrong = flip_last(&csrf);
    for fields in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", wrong.as_str())],
        vec![("csrf", other_csrf.as_str())],
    ] {
        let response = server.post_form(&revoke, Some(&cookie), &fields).await;
        assert_eq!(response.status().as_u16(), 403, "{fields:?}");
        let html = response.text().await.unwrap();
        assert!(html.contains("CSRF"), "{html}");
        assert_eq!(
            server.installation_status(&id).await,
            "active",
            "{fields:?}"
        );
    }
    // No cookie (a token alone is nothing): to the login page, nothing revoked.
    let response = server.post_form(&revoke, None, &[("csrf", &csrf)]).await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/login");
    // A tampered cookie is no session.
    let tampered = flip_last(&cookie);
    let response = server
        .post_form(&revoke, Some(&tampered), &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/login");
    assert_eq!(server.installation_status(&id).await, "active");
    // The real thing.
    let response = server
        .post_form(&revoke, Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/installations?done=revoked");
    assert_eq!(server.installation_status(&id).await, "revoked");

    // The cookie opens the event stream (an unknown session: 404, past authentication) and
    // nothing else of the API; a wrong bearer token is 401 whatever the cookie.
    let response = server.get("/api/sessions/none/events", Some(&cookie)).await;
    assert_eq!(response.status().as_u16(), 404);
    let response = server
        .client
        .get(format!("{}/api/sessions/none/events", server.base))
        .header(COOKIE, &cookie)
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = server.get("/api/installations", Some(&cookie)).await;
    assert_eq!(response.status().as_u16(), 401);
    let response = server
        .client
        .post(format!("{}/api/sessions/none/interrupt", server.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Log-out: the cookie is cleared and the old one opens nothing any more.
    let response = server
        .post_form("/console/logout", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert!(set_cookie(&response).unwrap().contains("Max-Age=0"));
    let response = server.get("/console/installations", Some(&cookie)).await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/login");
    let response = server.get("/api/sessions/none/events", Some(&cookie)).await;
    assert_eq!(response.status().as_u16(), 401);
    // The other session is still signed in.
    let response = server.get("/console/plugins", Some(&other_cookie)).await;
    assert_eq!(response.status().as_u16(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("data-plugin=\"telegram\""), "{html}");

    server.stop().await;
}

/// Guessing the admin token through the console is throttled per client address: after
/// `SIGN_IN_FAILURES` wrong tokens the address gets 429 with `Retry-After` — even for the right
/// token, so a guesser learns nothing more — while another address still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_tokens_are_throttled_per_address() {
    let t = db::sqlite_file_db().await;
    let server = Server::start(&t.url, |_| {}).await;
    for attempt in 1..=switchboard::console::SIGN_IN_FAILURES {
        let response = server
            .post_form("/console/login", None, &[("token", "a-guess")])
            .await;
        assert_eq!(response.status().as_u16(), 401, "wrong token {attempt}");
    }
    for token in ["another-guess", ADMIN] {
        let response = server
            .post_form("/console/login", None, &[("token", token)])
            .await;
        assert_eq!(
            response.status().as_u16(),
            429,
            "throttled, whatever the token"
        );
        assert_eq!(set_cookie(&response), None, "no session while throttled");
        let retry_after: u64 = response.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        let html = response.text().await.unwrap();
        assert!(html.contains("Too many wrong tokens"), "{html}");
    }
    // Another address (the loopback network is all local) is not held back, and the right
    // token signs it in.
    let other = reqwest::Client::builder()
        .local_address(Some(std::net::IpAddr::from([127, 0, 0, 2])))
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let response = other
        .post(format!("{}/console/login", server.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("token", ADMIN)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303, "another address signs in");
    assert!(set_cookie(&response).is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_cookies_are_secure_and_a_console_without_token_is_disabled() {
    let t = db::sqlite_file_db().await;
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = Server::start(&t.url, |c| {
            c.server.public_url = "https://switchboard.example".into();
        })
        .await;
        let response = server
            .post_form("/console/login", None, &[("token", ADMIN)])
            .await;
        assert_eq!(response.status().as_u16(), 303);
        let set = set_cookie(&response).unwrap();
        assert!(set.ends_with("; Secure"), "{set}");
        server.stop().await;

        let server = Server::start(&t.url, |c| c.server.admin_token = None).await;
        let response = server.get("/console/login", None).await;
        assert_eq!(response.status().as_u16(), 503);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("server.admin_token")
        );
        let response = server
            .post_form("/console/login", None, &[("token", "")])
            .await;
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(set_cookie(&response), None);
        server.stop().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_queues_from_the_console() {
    for t in db::test_databases().await {
        tokio::time::timeout(Duration::from_secs(120), queues(&t.url))
            .await
            .unwrap_or_else(|_| panic!("{}: the queue checks took too long", t.name));
    }
}

async fn queues(database_url: &str) {
    let server = Server::start(database_url, |_| {}).await;
    let cookie = server.sign_in().await;
    let csrf = server.csrf(&cookie).await;
    let added = server
        .post_form(
            "/console/installations",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("channel", "telegram"),
                ("agent", AGENT),
                ("debounce_ms", "50"),
                ("config.bot_username", "console_bot"),
                ("config.bot_id", "4242"),
                ("secret.bot_token", BOT_TOKEN),
                ("secret.webhook_secret", HOOK_SECRET),
                ("skip_on_install", "on"),
            ],
        )
        .await;
    assert_eq!(added.status().as_u16(), 303);
    let (_, list) = server
        .admin(reqwest::Method::GET, "/installations", None)
        .await;
    let installation = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["agent"], AGENT);

    // The worker has polled (the agent is online); a channel message whose text is markup.
    let polled = server
        .client
        .post(format!(
            "{}/api/agents/{AGENT}/runs/claim?wait_ms=0",
            server.base
        ))
        .bearer_auth(WORKER_TOKEN)
        .send()
        .await
        .unwrap();
    let status = polled.status().as_u16();
    assert_eq!(status, 204, "{}", polled.text().await.unwrap());
    let update = json!({
        "update_id": 1,
        "message": {
            "message_id": 1,
            "from": {"id": 7, "is_bot": false, "first_name": "Eve"},
            "chat": {"id": 7, "type": "private", "first_name": "Eve"},
            "date": 1_700_000_000,
            "text": "<script>alert('x')</script> hello",
        },
    });
    let hook = server
        .client
        .post(format!("{}/hooks/telegram/{installation}", server.base))
        .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
        .header(CONTENT_TYPE, "application/json")
        .body(update.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status().as_u16(), 200);
    let (_, sessions) = server
        .admin(
            reqwest::Method::GET,
            &format!("/sessions?installation={installation}"),
            None,
        )
        .await;
    let session = sessions[0]["session"]["id"].as_str().unwrap().to_string();
    // Nobody claims the run: the session stays pending once its window closed.
    let mut state = String::new();
    for _ in 0..200 {
        let (_, shown) = server
            .admin(reqwest::Method::GET, &format!("/sessions/{session}"), None)
            .await;
        state = shown["session"]["state"].as_str().unwrap().to_string();
        if state == "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(state, "pending");
    let mut queued = Vec::new();
    for body in ["first queued", "second queued"] {
        let (status, answer) = server
            .admin(
                reqwest::Method::POST,
                &format!("/sessions/{session}/messages"),
                Some(json!({ "body": body })),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        queued.push(answer["queued_message"]["id"].as_i64().unwrap());
    }

    // The runs page lists the session with its queue and controls.
    let page = server.get("/console/runs", Some(&cookie)).await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("data-session=\"{session}\"")),
        "{html}"
    );
    assert!(
        html.contains("first queued") && html.contains("second queued"),
        "{html}"
    );
    assert!(
        html.contains(">Promote<") && html.contains(">Interrupt<"),
        "{html}"
    );

    // Promote the first, delete the second (a second delete is 404), back to the runs page.
    let promote = format!("/console/sessions/{session}/queue/{}/promote", queued[0]);
    let response = server
        .post_form(
            &promote,
            Some(&cookie),
            &[("csrf", &csrf), ("back", "runs")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/runs?done=promoted");
    let delete = format!("/console/sessions/{session}/queue/{}/delete", queued[1]);
    let response = server
        .post_form(&delete, Some(&cookie), &[("csrf", &csrf), ("back", "runs")])
        .await;
    assert_eq!(response.status().as_u16(), 303);
    let response = server
        .post_form(&delete, Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.unwrap().contains("is gone"));
    let (_, shown) = server
        .admin(reqwest::Method::GET, &format!("/sessions/{session}"), None)
        .await;
    assert_eq!(shown["queue"], json!([]), "{shown}");

    // The session page: the markup shown as text, the promoted message in the transcript.
    let page = server
        .get(&format!("/console/sessions/{session}"), Some(&cookie))
        .await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;alert"), "{html}");
    assert!(html.contains("first queued"), "{html}");
    assert!(!html.contains("second queued"), "{html}");

    // Interrupt (from the session page), then delete the session.
    let response = server
        .post_form(
            &format!("/console/sessions/{session}/interrupt"),
            Some(&cookie),
            &[("csrf", &csrf), ("back", "session")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(
        location(&response),
        format!("/console/sessions/{session}?done=interrupted")
    );
    let response = server
        .post_form(
            &format!("/console/sessions/{session}/delete"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/sessions?done=deleted");
    let (status, _) = server
        .admin(reqwest::Method::GET, &format!("/sessions/{session}"), None)
        .await;
    assert_eq!(status, 404);
    let page = server
        .get(&format!("/console/sessions/{session}"), Some(&cookie))
        .await;
    assert_eq!(page.status().as_u16(), 404);

    server.stop().await;
}

impl Server {
    /// A private-chat message from `sender` to the installation's webhook; the status.
    async fn telegram_message(
        &self,
        installation: &str,
        secret: &str,
        update_id: i64,
        sender: i64,
    ) -> u16 {
        let update = json!({
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "from": {"id": sender, "is_bot": false, "first_name": "Sender"},
                "chat": {"id": sender, "type": "private", "first_name": "Sender"},
                "date": 1_700_000_000,
                "text": "let me in",
            },
        });
        self.client
            .post(format!("{}/hooks/telegram/{installation}", self.base))
            .header("X-Telegram-Bot-Api-Secret-Token", secret)
            .header(CONTENT_TYPE, "application/json")
            .body(update.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The pairing code the host queued for `sender` (the outbox notice's detail), waiting for
    /// it: ingest notices are enqueued after the webhook is answered.
    async fn pairing_code(&self, sender: &str) -> String {
        for _ in 0..200 {
            let (status, rows) = self.admin(reqwest::Method::GET, "/outbox", None).await;
            assert_eq!(status, 200, "{rows}");
            let found = rows.as_array().unwrap().iter().find_map(|row| {
                let notice = &row["content"]["notice"];
                (notice["kind"] == "binding_required" && notice["recipient"] == sender)
                    .then(|| notice["detail"].as_str().map(str::to_string))
                    .flatten()
            });
            if let Some(code) = found {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no pairing code was queued for {sender}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installation_lifecycle_and_pairings_from_the_console() {
    for t in db::test_databases().await {
        tokio::time::timeout(Duration::from_secs(120), lifecycle(&t.url))
            .await
            .unwrap_or_else(|_| panic!("{}: the lifecycle checks took too long", t.name));
    }
}

async fn lifecycle(database_url: &str) {
    let server = Server::start(database_url, |_| {}).await;
    let cookie = server.sign_in().await;
    let csrf = server.csrf(&cookie).await;
    let added = server
        .post_form(
            "/console/installations",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("channel", "telegram"),
                ("name", "lifecycle"),
                ("agent", AGENT),
                ("config.bot_username", "console_bot"),
                ("config.bot_id", "4242"),
                ("secret.bot_token", BOT_TOKEN),
                ("secret.webhook_secret", HOOK_SECRET),
                ("skip_on_install", "on"),
            ],
        )
        .await;
    assert_eq!(added.status().as_u16(), 303);
    let (_, list) = server
        .admin(reqwest::Method::GET, "/installations", None)
        .await;
    let id = list[0]["id"].as_str().unwrap().to_string();

    // The edit form shows the stored values.
    let page = server
        .get(&format!("/console/installations/{id}/edit"), Some(&cookie))
        .await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("value=\"console_bot\""), "{html}");
    assert!(html.contains("value=\"lifecycle\""), "{html}");
    // A value the schema refuses: shown again with the error, nothing changed.
    let edit = format!("/console/installations/{id}/edit");
    let refused = server
        .post_form(
            &edit,
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("name", "renamed"),
                ("agent", AGENT),
                ("access_policy", "bound"),
                ("debounce_ms", "200"),
                ("config.bot_username", "no spaces allowed"),
                ("config.bot_id", "4242"),
            ],
        )
        .await;
    assert_eq!(refused.status().as_u16(), 422);
    let html = refused.text().await.unwrap();
    assert!(html.contains("role=\"alert\""), "{html}");
    assert!(html.contains("value=\"no spaces allowed\""), "{html}");
    let (_, shown) = server
        .admin(reqwest::Method::GET, &format!("/installations/{id}"), None)
        .await;
    assert_eq!(shown["name"], "lifecycle", "{shown}");
    // A valid edit.
    let response = server
        .post_form(
            &edit,
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("name", "renamed"),
                ("agent", AGENT),
                ("access_policy", "bound"),
                ("debounce_ms", "200"),
                ("config.bot_username", "renamed_bot"),
                ("config.bot_id", "4242"),
            ],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/installations?done=updated");
    let (_, shown) = server
        .admin(reqwest::Method::GET, &format!("/installations/{id}"), None)
        .await;
    assert_eq!(shown["name"], "renamed", "{shown}");
    assert_eq!(shown["access_policy"], "bound", "{shown}");
    assert_eq!(shown["debounce_ms"], 200, "{shown}");
    assert_eq!(shown["config"]["bot_username"], "renamed_bot", "{shown}");

    // Rotation: nothing typed is refused; a new webhook secret takes effect at once.
    let secrets = format!("/console/installations/{id}/secrets");
    let page = server.get(&secrets, Some(&cookie)).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("type=\"password\""), "{html}");
    assert!(
        !html.contains(HOOK_SECRET) && !html.contains(BOT_TOKEN),
        "{html}"
    );
    let response = server
        .post_form(
            &secrets,
            Some(&cookie),
            &[("csrf", &csrf), ("secret.webhook_secret", "")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 422);
    let response = server
        .post_form(
            &secrets,
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("secret.webhook_secret", "rotated_hook_secret"),
            ],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/installations?done=rotated");
    assert_eq!(server.telegram_message(&id, HOOK_SECRET, 1, 100).await, 401);

    // Pairing: the unbound sender's code is never listed; a wrong code is a form error; the
    // right one (typed in lower case) binds the sender.
    assert_eq!(
        server
            .telegram_message(&id, "rotated_hook_secret", 2, 100)
            .await,
        200
    );
    let code = server.pairing_code("100").await;
    let page = server.get("/console/pairings", Some(&cookie)).await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<code>100</code>"), "{html}");
    assert!(!html.contains(&code), "codes are never listed: {html}");
    let response = server
        .post_form(
            "/console/pairings",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("code", "ZZZZZZZZ"),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.unwrap().contains("role=\"alert\""));
    let response = server
        .post_form(
            "/console/pairings",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("code", &code.to_lowercase()),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/pairings?done=approved");
    let (_, bindings) = server
        .admin(
            reqwest::Method::GET,
            &format!("/installations/{id}/bindings"),
            None,
        )
        .await;
    assert!(bindings.to_string().contains("\"100\""), "{bindings}");
    // Another sender's code, denied; then nothing is pending.
    assert_eq!(
        server
            .telegram_message(&id, "rotated_hook_secret", 3, 200)
            .await,
        200
    );
    let code = server.pairing_code("200").await;
    let response = server
        .post_form(
            "/console/pairings",
            Some(&cookie),
            &[("csrf", &csrf), ("code", &code), ("decision", "deny")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/pairings?done=denied");
    let (_, pending) = server.admin(reqwest::Method::GET, "/pairings", None).await;
    assert_eq!(pending, json!([]), "{pending}");

    // Revoke, then restore (on-install skipped).
    let response = server
        .post_form(
            &format!("/console/installations/{id}/revoke"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(server.installation_status(&id).await, "revoked");
    let page = server.get("/console/installations", Some(&cookie)).await;
    assert!(page.text().await.unwrap().contains(">Restore<"));
    let response = server
        .post_form(
            &format!("/console/installations/{id}/restore"),
            Some(&cookie),
            &[("csrf", &csrf), ("skip_on_install", "on")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(location(&response), "/console/installations?done=restored");
    assert_eq!(server.installation_status(&id).await, "active");

    server.stop().await;
}
