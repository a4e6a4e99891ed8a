//! The enricher (the `enricher` export, reference §F): what a message's body becomes once the
//! context the user attached or addressed is fetched — the quoted parent, the transcript of a
//! merged-and-forwarded bundle, the recent messages of a group chat the bot was asked in, and
//! the speakers' names.
//!
//! Every fetch is best-effort: a failure (rate limit, token rejected twice, permission, recall,
//! 5xx, timeout, the deadline, a malformed answer) becomes the documented placeholder in the
//! body and a note; the message itself is never dropped. The REST calls go through the
//! [`EnrichHost`] trait (host `http`, kv for the tenant-token cache shared with delivery, the
//! call's remaining deadline), so the whole flow runs natively in tests. Rendering is
//! `enrich_render`'s; answers are parsed by `rest`.
//!
//! Budget (the WIT `budget`): no request starts with less than [`MIN_REQUEST_MS`] of the
//! deadline left, each asks the host for the time left minus [`RESERVE_MS`], and at most
//! `max-requests` requests (token calls included) are made; the recent window asks for at most
//! `max-context-messages` messages.
//!
//! Order of the calls: the forward's GET, the quoted parent's GET, the recent window (one
//! retry for timeouts and temporary failures), then one batch name lookup (group chats only).
//! The reference fetches the recent window first; here what the user attached explicitly comes
//! first, so a slow chat history cannot starve it of the deadline.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::commands::{Command, NEW_COMMAND, parse_command};
use crate::content::{self, Attachment};
use crate::decode::{ChatType, InboundMessage};
use crate::enrich_render::{
    self, FORWARD_CHILDREN_CAP, FailureCategory, FetchError, classify, forward_children,
    quoted_parent,
};
use crate::outbound::{Credentials, HttpAnswer, TOKEN_KEY_PREFIX, TransportFailure};
use crate::rest::{self, ApiErrorKind, RestMessage, TenantToken, api_base};
use crate::transport::HttpRequestSpec;

/// Recent messages fetched for an addressed group message when the installation does not say
/// otherwise (`RecentContextSize`, reference §1.1).
pub const DEFAULT_RECENT_CONTEXT_SIZE: u32 = 10;
/// Lark's page-size cap of the message list.
pub const MAX_PAGE_SIZE: u32 = 50;
/// Most ids one batch user lookup carries.
pub const MAX_BATCH_USERS: usize = 50;
/// No request starts with less than this many milliseconds of the deadline left.
pub const MIN_REQUEST_MS: u64 = 100;
/// Milliseconds of the deadline kept back from every request for rendering and returning.
pub const RESERVE_MS: u64 = 50;

/// Limits the host passes in (the WIT `budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Milliseconds the enrichment may take.
    pub deadline_ms: u64,
    /// Most HTTP requests (token calls included).
    pub max_requests: u32,
    /// Most context messages to fetch (caps the recent window's page size).
    pub max_context_messages: u32,
}

/// Installation settings of the enricher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Recent messages to fetch for an addressed group message (config `recent_context_size`;
    /// 0 turns the recent window off).
    pub recent_context_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            recent_context_size: DEFAULT_RECENT_CONTEXT_SIZE,
        }
    }
}

/// Most attachments one enrichment reports from the quoted parent and a forwarded bundle
/// (a forward of a hundred images would otherwise queue a hundred downloads per message).
pub const MAX_CONTEXT_ATTACHMENTS: usize = 20;

/// The enriched body and notes about what could not be fetched (the WIT `enrichment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enriched {
    /// What the agent reads.
    pub body: String,
    /// One line per fetch that failed or was skipped, for the host's logs.
    pub notes: Vec<String>,
    /// Images, files, audio and video of the quoted parent and of the forwarded messages, each
    /// `key` a [`context_ref`] (the resource API downloads by message id *and* key, and the
    /// host only knows the enriched message's id).
    pub attachments: Vec<Attachment>,
}

/// The `ref` of an attachment found in message `message_id` of the fetched context:
/// `<message id>/<key>` (neither Lark message ids nor resource keys contain a `/`).
pub fn context_ref(message_id: &str, key: &str) -> String {
    format!("{message_id}/{key}")
}

/// The message id and resource key an attachment `reference` of message `message_id` is
/// downloaded by: the ones a [`context_ref`] carries, else `message_id` and the reference
/// itself (the message's own attachments).
pub fn resource_of<'a>(message_id: &'a str, reference: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('/') {
        Some((container, key)) if !container.is_empty() && !key.is_empty() => (container, key),
        _ => (message_id, reference),
    }
}

/// The attachments of the fetched context, with [`context_ref`]s: the quoted parent's (and,
/// for a quoted forward, its children's), then the forwarded children's; recalled messages
/// skipped, repeated references once, at most [`MAX_CONTEXT_ATTACHMENTS`].
fn context_attachments<'m>(messages: impl Iterator<Item = &'m RestMessage>) -> Vec<Attachment> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for message in messages.filter(|message| !message.deleted) {
        for attachment in content::attachments(&message.msg_type, &message.content) {
            let key = context_ref(&message.message_id, &attachment.key);
            if found.len() < MAX_CONTEXT_ATTACHMENTS && seen.insert(key.clone()) {
                found.push(Attachment { key, ..attachment });
            }
        }
    }
    found
}

/// The host calls the enricher needs. `component` implements it on the host imports; kv
/// failures are the implementation's to log and swallow (a cache miss only costs a token call).
pub trait EnrichHost {
    /// Sends one request through host `http`, asking for at most `timeout_ms`.
    fn send(
        &mut self,
        request: &HttpRequestSpec,
        timeout_ms: u32,
    ) -> Result<HttpAnswer, TransportFailure>;
    /// Milliseconds left before the call's own deadline (a monotonic clock).
    fn remaining_ms(&mut self) -> u64;
    /// Reads a live kv value.
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Writes a kv value that expires after `ttl_ms`.
    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: u64);
    /// Deletes a kv value.
    fn kv_delete(&mut self, key: &str);
    /// Logs a warning (never with secrets or tokens in it).
    fn warn(&mut self, message: &str, fields: &[(&str, &str)]);
}

/// Enriches `message` (reference §F):
///
/// 1. `/new <text>` in the user's own text: the core is `<text>` (bare `/new`: empty).
/// 2. Nothing to do — no parent, not a forward, and no recent window wanted (the window needs a
///    group chat, an @-mention of the bot and a size above 0) — or no credentials: the core is
///    returned without a request.
/// 3. Otherwise the fetches, one name lookup (group chats), and the body
///    `<recent_context>` / its unavailable line, `<quoted_message>`, then the core (the
///    forwarded transcript for a forward, else the body, prefixed `[Name]: ` when the sender's
///    name resolved), separated by blank lines.
pub fn enrich<H: EnrichHost>(
    host: &mut H,
    credentials: &Credentials,
    settings: &Settings,
    message: &InboundMessage,
    budget: Budget,
) -> Enriched {
    let mut notes = Vec::new();
    let command_source = if message.command_body.is_empty() {
        &message.body
    } else {
        &message.command_body
    };
    let body = match parse_command(command_source) {
        Some(Command { name, args }) if name == NEW_COMMAND => args,
        _ => message.body.clone(),
    };

    let parent_id = message.parent_id.as_deref().filter(|id| !id.is_empty());
    let is_forward = message.message_type == enrich_render::MERGE_FORWARD;
    let group = message.chat_type == ChatType::Group;
    let window = settings
        .recent_context_size
        .min(budget.max_context_messages)
        .min(MAX_PAGE_SIZE);
    let want_recent = window > 0 && group && message.addressed_to_bot;
    if parent_id.is_none() && !is_forward && !want_recent {
        return Enriched {
            body,
            notes,
            attachments: Vec::new(),
        };
    }
    if credentials.app_id.is_empty() || credentials.app_secret.is_empty() {
        notes.push("enrichment skipped: the installation has no app_id/app_secret".into());
        return Enriched {
            body,
            notes,
            attachments: Vec::new(),
        };
    }

    let mut client = Client::new(host, credentials, budget);

    // Phase 1: what will be rendered.
    let forward = is_forward.then(|| client.get_message(&message.message_id));
    let quoted = parent_id.map(|id| (id, client.get_message(id)));
    let recent = want_recent.then(|| fetch_recent(&mut client, message, window));

    // Phase 2: one name lookup for every speaker about to be rendered, group chats only.
    let mut names = HashMap::new();
    if group {
        let mut ids = SenderIds::default();
        if let Some(Ok(kept)) = &recent {
            ids.extend(kept.iter());
        }
        if let Some((id, Ok(items))) = &quoted
            && !items.is_empty()
        {
            let parent = quoted_parent(items, id);
            ids.extend(std::iter::once(parent));
            if parent.msg_type == enrich_render::MERGE_FORWARD {
                ids.extend(capped_children(items, &parent.message_id));
            }
        }
        if let Some(Ok(items)) = &forward {
            ids.extend(capped_children(items, &message.message_id));
        }
        ids.push(&message.sender.open_id);
        if !ids.ids.is_empty() {
            match client.batch_user_names(&ids.ids) {
                Ok(resolved) => names = resolved,
                Err(err) => {
                    let category = classify(&err).category;
                    client.warn_failure("speaker names", category, &err, message);
                    notes.push(format!(
                        "speaker names unavailable ({}): {err}",
                        category.as_str()
                    ));
                }
            }
        }
    }

    // Phase 3: broadest block first.
    let mut blocks: Vec<String> = Vec::new();
    if let Some(recent) = &recent {
        match recent {
            Ok(kept) => blocks.extend(enrich_render::recent_block(kept, &names)),
            Err(err) => {
                let category = classify(err).category;
                notes.push(format!(
                    "recent context unavailable ({}): {err}",
                    category.as_str()
                ));
                blocks.push(category.unavailable_line().to_string());
            }
        }
    }
    if let Some((id, fetched)) = &quoted {
        if let Err(err) = fetched {
            let category = classify(err).category;
            client.warn_failure("quoted message", category, err, message);
            notes.push(format!(
                "quoted message {id} unavailable ({}): {err}",
                category.as_str()
            ));
        }
        blocks.push(enrich_render::quoted_block(
            id,
            fetched.as_ref().map(Vec::as_slice),
            &names,
        ));
    }
    let core = match &forward {
        Some(Ok(items)) => enrich_render::forwarded_block(items, &message.message_id, &names),
        Some(Err(err)) => {
            let category = classify(err).category;
            client.warn_failure("forwarded messages", category, err, message);
            notes.push(format!(
                "forwarded messages unavailable ({}): {err}",
                category.as_str()
            ));
            enrich_render::FORWARD_ERROR_BLOCK.to_string()
        }
        None => match names.get(&message.sender.open_id) {
            Some(name) if !name.is_empty() && !message.sender.open_id.is_empty() => {
                format!("[{name}]: {body}")
            }
            _ => body,
        },
    };
    if !core.is_empty() {
        blocks.push(core);
    }
    // What the quoted parent and the forwarded messages carry is downloaded like the message's
    // own attachments (the recent window's are not: nobody pointed at them).
    let mut sources: Vec<&RestMessage> = Vec::new();
    if let Some((id, Ok(items))) = &quoted
        && !items.is_empty()
    {
        let parent = quoted_parent(items, id);
        sources.push(parent);
        if parent.msg_type == enrich_render::MERGE_FORWARD {
            sources.extend(capped_children(items, &parent.message_id));
        }
    }
    if let Some(Ok(items)) = &forward {
        sources.extend(capped_children(items, &message.message_id));
    }
    Enriched {
        body: blocks.join("\n\n"),
        notes,
        attachments: context_attachments(sources.into_iter()),
    }
}

/// The direct children of a forward that its transcript shows (the cap applied after sorting).
fn capped_children<'m>(
    items: &'m [RestMessage],
    forward_id: &str,
) -> impl Iterator<Item = &'m RestMessage> {
    let mut children = forward_children(items, forward_id);
    children.sort_by_key(|child| child.create_time_ms);
    children.truncate(FORWARD_CHILDREN_CAP);
    children.into_iter()
}

/// Distinct non-app sender `open_id`s in order of first appearance.
#[derive(Default)]
struct SenderIds {
    ids: Vec<String>,
    seen: HashSet<String>,
}

impl SenderIds {
    fn extend<'m>(&mut self, messages: impl Iterator<Item = &'m RestMessage>) {
        for message in messages {
            if message.sender_type != "app" {
                self.push(&message.sender_id);
            }
        }
    }

    fn push(&mut self, id: &str) {
        if !id.is_empty() && self.seen.insert(id.to_string()) {
            self.ids.push(id.to_string());
        }
    }
}

/// The recent window (reference §F7–§F8): one list call (a second one only when the first
/// failed with a retryable category other than a token problem, whose retry is the token
/// refresh itself), then the trigger and the quoted parent dropped, the bot's own cards
/// dropped, inside a topic only that topic's messages up to the trigger kept (fail-closed: a
/// missing `thread_id` is a mismatch), oldest first. A topic never falls back to a chat-wide
/// fetch.
fn fetch_recent<H: EnrichHost>(
    client: &mut Client<'_, H>,
    message: &InboundMessage,
    window: u32,
) -> Result<Vec<RestMessage>, FetchError> {
    if message.chat_id.trim().is_empty() {
        return Err(FetchError::MissingChatId);
    }
    let thread = message.thread_id.as_deref().filter(|id| !id.is_empty());
    let mut attempt = 1;
    let items = loop {
        match client.list_messages(message, thread, window) {
            Ok(items) => break items,
            Err(err) => {
                let classified = classify(&err);
                if attempt >= 2
                    || !classified.retryable
                    || classified.category == FailureCategory::TokenExpired
                {
                    client.warn_failure("recent context", classified.category, &err, message);
                    return Err(err);
                }
                client.warn_failure(
                    "recent context (retrying)",
                    classified.category,
                    &err,
                    message,
                );
                attempt += 1;
            }
        }
    };
    let parent = message.parent_id.as_deref().unwrap_or("");
    let trigger_ms = message.create_time_ms;
    let mut kept: Vec<RestMessage> = items
        .into_iter()
        .filter(|item| item.message_id != message.message_id)
        .filter(|item| parent.is_empty() || item.message_id != parent)
        .filter(|item| !(item.sender_type == "app" && item.msg_type == "interactive"))
        .filter(|item| match thread {
            Some(thread) => {
                item.thread_id.as_deref() == Some(thread)
                    && (trigger_ms <= 0 || item.create_time_ms <= trigger_ms)
            }
            None => true,
        })
        .collect();
    kept.sort_by_key(|item| item.create_time_ms);
    Ok(kept)
}

/// REST calls within the budget, with the tenant token cached in kv under the same key as
/// delivery's (`tenant_access_token:<app_id>`).
struct Client<'a, H: EnrichHost> {
    host: &'a mut H,
    credentials: &'a Credentials,
    /// The host's remaining time when enrichment started.
    started_remaining_ms: u64,
    /// The deadline, in milliseconds from the start.
    limit_ms: u64,
    requests_left: u32,
}

impl<'a, H: EnrichHost> Client<'a, H> {
    fn new(host: &'a mut H, credentials: &'a Credentials, budget: Budget) -> Self {
        let started_remaining_ms = host.remaining_ms();
        Client {
            host,
            credentials,
            started_remaining_ms,
            limit_ms: budget.deadline_ms.min(started_remaining_ms),
            requests_left: budget.max_requests,
        }
    }

    /// Milliseconds of the deadline left.
    fn left_ms(&mut self) -> u64 {
        let elapsed = self
            .started_remaining_ms
            .saturating_sub(self.host.remaining_ms());
        self.limit_ms.saturating_sub(elapsed)
    }

    /// Sends one request if the budget allows it.
    fn send(&mut self, request: &HttpRequestSpec) -> Result<HttpAnswer, FetchError> {
        if self.requests_left == 0 {
            return Err(FetchError::RequestLimit);
        }
        let left = self.left_ms();
        if left < MIN_REQUEST_MS {
            return Err(FetchError::Deadline);
        }
        self.requests_left -= 1;
        let timeout_ms = u32::try_from(left - RESERVE_MS).unwrap_or(u32::MAX);
        self.host
            .send(request, timeout_ms)
            .map_err(FetchError::Transport)
    }

    /// `GET …/im/v1/messages/{id}?user_id_type=open_id` → `data.items`.
    fn get_message(&mut self, message_id: &str) -> Result<Vec<RestMessage>, FetchError> {
        let url = format!(
            "{}/open-apis/im/v1/messages/{}?user_id_type=open_id",
            api_base(&self.credentials.base_url),
            encode(message_id)
        );
        self.items(url)
    }

    /// `GET …/im/v1/messages?container_id_type=chat|thread&…` → `data.items`.
    fn list_messages(
        &mut self,
        message: &InboundMessage,
        thread: Option<&str>,
        page_size: u32,
    ) -> Result<Vec<RestMessage>, FetchError> {
        let mut url = format!(
            "{}/open-apis/im/v1/messages?",
            api_base(&self.credentials.base_url)
        );
        match thread {
            Some(thread) => {
                url.push_str(&format!(
                    "container_id_type=thread&container_id={}",
                    encode(thread)
                ));
            }
            None => {
                url.push_str(&format!(
                    "container_id_type=chat&container_id={}",
                    encode(&message.chat_id)
                ));
                let end_time_s = message.create_time_ms / 1000;
                if end_time_s > 0 {
                    url.push_str(&format!("&end_time={end_time_s}"));
                }
            }
        }
        url.push_str(&format!(
            "&sort_type=ByCreateTimeDesc&page_size={}&user_id_type=open_id",
            page_size.clamp(1, MAX_PAGE_SIZE)
        ));
        self.items(url)
    }

    fn items(&mut self, url: String) -> Result<Vec<RestMessage>, FetchError> {
        let answer = self.authorized(|token| get_request(&url, token))?;
        rest::parse_message_items(answer.status, &answer.headers, &answer.body)
            .map_err(FetchError::Api)
    }

    /// `GET …/contact/v3/users/batch?user_id_type=open_id&user_ids=…` (at most
    /// [`MAX_BATCH_USERS`] ids) → `open_id → name` (entries without a name are dropped).
    fn batch_user_names(&mut self, ids: &[String]) -> Result<HashMap<String, String>, FetchError> {
        let mut url = format!(
            "{}/open-apis/contact/v3/users/batch?user_id_type=open_id",
            api_base(&self.credentials.base_url)
        );
        for id in ids.iter().take(MAX_BATCH_USERS) {
            url.push_str("&user_ids=");
            url.push_str(&encode(id));
        }
        let answer = self.authorized(|token| get_request(&url, token))?;
        let value = rest::check_response(answer.status, &answer.headers, &answer.body)
            .map_err(FetchError::Api)?;
        let items = value
            .pointer("/data/items")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                FetchError::Api(rest::ApiError {
                    http_status: answer.status,
                    code: 0,
                    msg: "response has no `data.items`".into(),
                    retry_after_s: None,
                })
            })?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let open_id = item.get("open_id").and_then(Value::as_str)?;
                let name = item.get("name").and_then(Value::as_str)?;
                (!open_id.is_empty() && !name.is_empty())
                    .then(|| (open_id.to_string(), name.to_string()))
            })
            .collect())
    }

    /// Runs an authorized call. A rejected token (99991663/99991664/99991671) is dropped from
    /// kv, a new one fetched and the call made once more; the answer is checked by the caller.
    fn authorized(
        &mut self,
        build: impl Fn(&str) -> HttpRequestSpec,
    ) -> Result<HttpAnswer, FetchError> {
        let token = self.token()?;
        let answer = self.send(&build(&token))?;
        if token_rejected(&answer) {
            self.host.warn(
                "lark tenant token rejected during enrichment; fetching a new one",
                &[("app_id", &self.credentials.app_id)],
            );
            self.host.kv_delete(&self.token_key());
            let token = self.fetch_token()?;
            return self.send(&build(&token));
        }
        Ok(answer)
    }

    fn token(&mut self) -> Result<String, FetchError> {
        if let Some(token) = self
            .host
            .kv_get(&self.token_key())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|token| !token.is_empty())
        {
            return Ok(token);
        }
        self.fetch_token()
    }

    fn fetch_token(&mut self) -> Result<String, FetchError> {
        let request = rest::tenant_token_request(
            &self.credentials.base_url,
            &self.credentials.app_id,
            &self.credentials.app_secret,
        );
        let answer = self.send(&request)?;
        let token: TenantToken =
            rest::parse_tenant_token(answer.status, &answer.headers, &answer.body).map_err(
                |mut err| {
                    err.msg = format!("tenant token: {}", err.msg);
                    FetchError::Api(err)
                },
            )?;
        self.host.kv_set(
            &self.token_key(),
            token.token.as_bytes(),
            token.cache_ttl_ms(),
        );
        Ok(token.token)
    }

    fn token_key(&self) -> String {
        format!("{TOKEN_KEY_PREFIX}{}", self.credentials.app_id)
    }

    fn warn_failure(
        &mut self,
        what: &str,
        category: FailureCategory,
        err: &FetchError,
        message: &InboundMessage,
    ) {
        let error = err.to_string();
        self.host.warn(
            &format!("lark enricher: {what} fetch failed"),
            &[
                ("category", category.as_str()),
                ("message_id", &message.message_id),
                ("chat_id", &message.chat_id),
                ("error", &error),
            ],
        );
    }
}

/// Whether an answer says the tenant token is invalid.
fn token_rejected(answer: &HttpAnswer) -> bool {
    matches!(
        rest::check_response(answer.status, &answer.headers, &answer.body),
        Err(err) if err.kind() == ApiErrorKind::TokenInvalid
    )
}

fn get_request(url: &str, token: &str) -> HttpRequestSpec {
    HttpRequestSpec {
        method: "GET",
        url: url.to_string(),
        headers: vec![("Authorization".into(), format!("Bearer {token}"))],
        body: Vec::new(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "enrich_tests.rs"]
mod tests;
