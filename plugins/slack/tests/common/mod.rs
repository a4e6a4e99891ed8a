//! A scripted [`Host`] for the plugin's native tests: config, secrets, kv and a clock in memory;
//! requests answered from a queue of canned responses per Web API method (or URL), recorded.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use serde_json::Value;
use switchboard_plugin_sdk::http::{Error as HttpError, Request, Response};
use switchboard_slack::Host;

pub const BOT: &str = "U0BOT00001";
pub const BOT_TOKEN: &str = "xoxb-test-token";

/// A fixture file's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Default)]
pub struct MockHost {
    pub config: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
    pub kv: HashMap<String, Vec<u8>>,
    pub now_ms: i64,
    pub remaining_ms: u64,
    /// Canned answers by method (`chat.postMessage`) or full URL; a missing one is `{"ok":true}`.
    pub answers: HashMap<String, VecDeque<Result<Response, HttpError>>>,
    pub requests: Vec<Request>,
    pub warnings: Vec<String>,
}

impl MockHost {
    /// An installation of bot [`BOT`] with token [`BOT_TOKEN`], at 2024-06-10.
    pub fn new() -> MockHost {
        let mut host = MockHost {
            now_ms: 1_718_000_000_000,
            remaining_ms: 10_000,
            ..MockHost::default()
        };
        host.config.insert("bot_user_id".into(), BOT.into());
        host.secrets.insert("bot_token".into(), BOT_TOKEN.into());
        host
    }

    /// Queues a JSON answer with `status` for `key` (a method or a URL).
    pub fn answer(&mut self, key: &str, status: u16, body: Value) -> &mut Self {
        self.answer_with(key, status, &[], body.to_string().into_bytes())
    }

    pub fn answer_with(
        &mut self,
        key: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> &mut Self {
        let response = Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        };
        self.answers
            .entry(key.into())
            .or_default()
            .push_back(Ok(response));
        self
    }

    pub fn fail(&mut self, key: &str, error: HttpError) -> &mut Self {
        self.answers
            .entry(key.into())
            .or_default()
            .push_back(Err(error));
        self
    }

    /// The Web API method names of the requests made, in order.
    pub fn methods(&self) -> Vec<String> {
        self.requests.iter().map(|r| method_of(&r.url)).collect()
    }

    /// The JSON body of the `n`-th request.
    pub fn body(&self, n: usize) -> Value {
        serde_json::from_slice(&self.requests[n].body).unwrap_or(Value::Null)
    }
}

fn method_of(url: &str) -> String {
    let path = url.strip_prefix("https://slack.com/api/").unwrap_or(url);
    path.split('?').next().unwrap_or(path).to_string()
}

impl Host for MockHost {
    fn send(&mut self, request: &Request) -> Result<Response, HttpError> {
        self.requests.push(request.clone());
        let method = method_of(&request.url);
        for key in [request.url.as_str(), method.as_str()] {
            if let Some(answer) = self.answers.get_mut(key).and_then(VecDeque::pop_front) {
                return answer;
            }
        }
        let ts = format!("1718000100.{:06}", self.requests.len());
        Ok(Response {
            status: 200,
            headers: Vec::new(),
            body: serde_json::json!({ "ok": true, "ts": ts })
                .to_string()
                .into_bytes(),
        })
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn kv_set(&mut self, key: &str, value: &[u8], _ttl_ms: u64) {
        self.kv.insert(key.into(), value.to_vec());
    }
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
    fn remaining_ms(&mut self) -> u64 {
        self.remaining_ms
    }
    fn config(&mut self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }
    fn secret(&mut self, key: &str) -> Option<String> {
        self.secrets.get(key).cloned()
    }
    fn warn(&mut self, message: &str) {
        self.warnings.push(message.into());
    }
}
