//! The `openai` agent: a streaming client of any OpenAI-compatible chat-completions endpoint.
//!
//! One run is one `POST {base_url}/v1/chat/completions` with `stream: true` and
//! `stream_options.include_usage`, the system prompt first and then the context messages with
//! their roles. A message's attachments are named in text lines after its body; with `vision =
//! true` its stored images also go as `image_url` parts (base64 `data:` URLs). The Server-Sent Events answer is parsed incrementally by hand (chunks split
//! mid-line, CR/LF/CRLF line ends, comments, multi-line `data:`), each `choices[0].delta.content`
//! is forwarded as a part, and `usage` is read from the final chunk. An endpoint that ignores
//! `stream` and answers one JSON completion is accepted too.
//!
//! Errors: non-2xx → [`AgentError::Http`] with the API's `error.message`; the whole exchange
//! is bounded by `timeout_ms` → [`AgentError::Timeout`]; cancellation drops the connection at
//! once → [`AgentError::Cancelled`].

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::OpenAiSettings;
use super::{AgentError, AgentReply, ContextMessage, RunInput, Usage, send_part};

/// Longest accepted SSE line (a single event's JSON), to bound memory on a hostile stream.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest error body read for the error message.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Longest body excerpt quoted in an error.
const EXCERPT_CHARS: usize = 300;

/// An HTTP client suited to the agent: no redirects (a redirected POST would silently turn into
/// a GET), a connect timeout; share one per process.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client with rustls builds")
}

/// The built-in OpenAI-compatible agent.
#[derive(Debug, Clone)]
pub struct OpenAiAgent {
    name: String,
    settings: OpenAiSettings,
    http: reqwest::Client,
}

impl OpenAiAgent {
    /// An agent called `name` (for logs) with validated `settings`, sending through `http`.
    pub fn new(name: &str, settings: OpenAiSettings, http: reqwest::Client) -> OpenAiAgent {
        OpenAiAgent {
            name: name.to_string(),
            settings,
            http,
        }
    }

    /// The agent's settings.
    pub fn settings(&self) -> &OpenAiSettings {
        &self.settings
    }

    /// The JSON request body for `input`.
    pub fn request_body(&self, input: &RunInput) -> Value {
        let mut messages = Vec::with_capacity(input.messages.len() + 1);
        if let Some(prompt) = &input.system_prompt {
            messages.push(json!({"role": "system", "content": prompt}));
        }
        for m in &input.messages {
            messages.push(json!({"role": m.role.as_str(), "content": self.content(m)}));
        }
        let mut body = json!({
            "model": self.settings.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(max) = self.settings.max_tokens {
            body["max_tokens"] = json!(max);
        }
        body
    }

    /// A message's `content`: its body plus a line naming each attachment (a plain string);
    /// with `vision` and stored images, an array of a `text` part and one `image_url` part
    /// per image (a base64 `data:` URL).
    fn content(&self, message: &ContextMessage) -> Value {
        let lines = message.attachment_lines();
        let text = if lines.is_empty() {
            message.body.clone()
        } else {
            format!("{}\n{}", message.body, lines.join("\n"))
        };
        if !self.settings.vision || message.images.is_empty() {
            return json!(text);
        }
        let mut parts = vec![json!({"type": "text", "text": text})];
        for image in &message.images {
            let data = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
            parts.push(json!({
                "type": "image_url",
                "image_url": {"url": format!("data:{};base64,{data}", image.mime)},
            }));
        }
        Value::Array(parts)
    }

    /// Runs one completion; see [`super::BuiltinAgent::run`].
    pub async fn run(
        &self,
        input: &RunInput,
        parts: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let span = tracing::info_span!(
            "agent.openai",
            agent = %self.name,
            model = %self.settings.model,
            session_id = %input.session_id,
            run_id = %input.run_id,
        );
        let timeout_ms = self.settings.timeout_ms;
        let exchange = self.exchange(input, &parts, &cancel);
        let outcome = async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(AgentError::Cancelled),
                r = tokio::time::timeout(Duration::from_millis(timeout_ms), exchange) => {
                    r.unwrap_or(Err(AgentError::Timeout { timeout_ms }))
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| match &outcome {
            Ok(reply) => tracing::debug!(
                chars = reply.text.len(),
                total_tokens = reply.usage.map(|u| u.total_tokens),
                "completion finished"
            ),
            Err(e) => tracing::debug!(error = %e, "completion failed"),
        });
        outcome
    }

    /// Request + response, without the deadline and cancellation (the caller adds both).
    async fn exchange(
        &self,
        input: &RunInput,
        parts: &mpsc::Sender<String>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let body = serde_json::to_vec(&self.request_body(input))
            .map_err(|e| AgentError::Config(format!("request body: {e}")))?;
        let mut request = self
            .http
            .post(self.settings.completions_url())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = read_capped(&mut response, MAX_ERROR_BODY_BYTES).await?;
            return Err(AgentError::Http {
                status: status.as_u16(),
                message: error_message(status, &body),
            });
        }
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if is_json {
            return self.whole_json(&mut response, parts, cancel).await;
        }

        let mut parser = SseParser::default();
        let mut stream = StreamState::default();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            for data in parser.feed(&chunk)? {
                if let Some(delta) = stream.event(&data)? {
                    send_part(parts, cancel, delta).await?;
                }
                if stream.done {
                    return Ok(stream.reply());
                }
            }
        }
        for data in parser.finish()? {
            if let Some(delta) = stream.event(&data)? {
                send_part(parts, cancel, delta).await?;
            }
        }
        if stream.done || stream.finished {
            Ok(stream.reply())
        } else {
            Err(AgentError::Protocol(
                "the stream ended before `data: [DONE]` or a finish_reason (the reply may be \
                 cut short)"
                    .into(),
            ))
        }
    }

    /// An endpoint that ignored `stream: true` and answered one JSON completion.
    async fn whole_json(
        &self,
        response: &mut reqwest::Response,
        parts: &mpsc::Sender<String>,
        cancel: &CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        let body = read_capped(response, MAX_LINE_BYTES).await?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            AgentError::Protocol(format!(
                "the completion is not JSON ({e}): {}",
                excerpt(&String::from_utf8_lossy(&body))
            ))
        })?;
        let text = first_choice(&value)
            .and_then(|c| c["message"]["content"].as_str())
            .ok_or_else(|| {
                AgentError::Protocol("the completion has no choices[0].message.content".into())
            })?
            .to_string();
        if !text.is_empty() {
            send_part(parts, cancel, text.clone()).await?;
        }
        Ok(AgentReply {
            text,
            usage: parse_usage(&value["usage"]),
        })
    }
}

/// What the stream has said so far.
#[derive(Default)]
struct StreamState {
    text: String,
    usage: Option<Usage>,
    /// `data: [DONE]` seen.
    done: bool,
    /// A choice carried a `finish_reason`.
    finished: bool,
}

impl StreamState {
    /// Handles one event's data; returns the text delta to forward, if any.
    fn event(&mut self, data: &str) -> Result<Option<String>, AgentError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            AgentError::Protocol(format!(
                "a stream event is not JSON ({e}): {}",
                excerpt(data)
            ))
        })?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error["message"]
                .as_str()
                .or_else(|| error.as_str())
                .map_or_else(|| excerpt(&error.to_string()), str::to_string);
            return Err(AgentError::Protocol(format!(
                "the endpoint reported an error in the stream: {message}"
            )));
        }
        if let Some(usage) = parse_usage(&value["usage"]) {
            self.usage = Some(usage);
        }
        let Some(choice) = first_choice(&value) else {
            return Ok(None);
        };
        if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
            self.finished = true;
        }
        match choice["delta"]["content"].as_str() {
            Some(delta) if !delta.is_empty() => {
                self.text.push_str(delta);
                Ok(Some(delta.to_string()))
            }
            _ => Ok(None),
        }
    }

    fn reply(self) -> AgentReply {
        AgentReply {
            text: self.text,
            usage: self.usage,
        }
    }
}

/// `choices[i]` with `index == 0`, else the first choice.
fn first_choice(value: &Value) -> Option<&Value> {
    let choices = value["choices"].as_array()?;
    choices
        .iter()
        .find(|c| c["index"].as_u64() == Some(0))
        .or_else(|| choices.first())
}

fn parse_usage(value: &Value) -> Option<Usage> {
    if !value.is_object() {
        return None;
    }
    let prompt_tokens = value["prompt_tokens"].as_u64().unwrap_or(0);
    let completion_tokens = value["completion_tokens"].as_u64().unwrap_or(0);
    let total_tokens = value["total_tokens"]
        .as_u64()
        .unwrap_or(prompt_tokens + completion_tokens);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens,
    })
}

/// The API's error message from an error body: `error.message`, `error` (string), `message`,
/// `detail`; else an excerpt of the body; else the status' reason.
fn error_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let found = value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .or_else(|| value["message"].as_str())
            .or_else(|| value["detail"].as_str());
        if let Some(message) = found.filter(|m| !m.trim().is_empty()) {
            return message.trim().to_string();
        }
    }
    let text = excerpt(&String::from_utf8_lossy(body));
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no body").to_string()
    } else {
        text
    }
}

/// Reads at most `cap` bytes of the body (the rest is not read).
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, AgentError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == cap {
            break;
        }
    }
    Ok(body)
}

/// The first [`EXCERPT_CHARS`] characters, whitespace collapsed.
fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}…", &collapsed[..i]),
        None => collapsed,
    }
}

fn transport(e: reqwest::Error) -> AgentError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    AgentError::Transport(message)
}

/// An incremental Server-Sent Events parser that yields each event's `data` (the `data:` lines
/// joined by `\n`). Other fields and comments are ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    /// The previous byte was a CR: a following LF belongs to the same line end.
    after_cr: bool,
}

impl SseParser {
    /// Feeds one chunk (any split); returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<String>, AgentError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_bytes(&rest[..i])?;
            self.end_line(&mut events)?;
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
        }
        self.push_bytes(rest)?;
        Ok(events)
    }

    /// The end of the stream: a last line without a line end, and an event without its blank
    /// line, still count.
    pub fn finish(&mut self) -> Result<Vec<String>, AgentError> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events)?;
        }
        self.end_line(&mut events)?;
        Ok(events)
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(AgentError::Protocol(format!(
                "a stream line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, events: &mut Vec<String>) -> Result<(), AgentError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                self.has_data = false;
                events.push(std::mem::take(&mut self.data));
            }
            return Ok(());
        }
        let line = std::str::from_utf8(&line)
            .map_err(|_| AgentError::Protocol("a stream line is not UTF-8".into()))?;
        if line.starts_with(':') {
            return Ok(()); // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).unwrap());
        }
        events.extend(parser.finish().unwrap());
        events
    }

    #[test]
    fn sse_lines_split_anywhere() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: [DONE]\n\n";
        let whole = feed_all(&[stream]);
        assert_eq!(whole, vec!["{\"a\":1}", "line1\nline2", "[DONE]"]);
        // Every split point, including between CR and LF, gives the same events.
        for i in 0..stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(feed_all(&[a, b]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes), whole);
    }

    #[test]
    fn sse_cr_only_and_unterminated_tail() {
        assert_eq!(feed_all(&[b"data: a\r\rdata: b"]), vec!["a", "b"]);
        assert_eq!(feed_all(&[b"data\n\n"]), vec![""]);
    }

    #[test]
    fn sse_line_cap() {
        let mut parser = SseParser::default();
        let big = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(matches!(parser.feed(&big), Err(AgentError::Protocol(_))));
    }

    #[test]
    fn error_messages() {
        let s = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(
            error_message(
                s,
                br#"{"error":{"message":"Incorrect API key","type":"x"}}"#
            ),
            "Incorrect API key"
        );
        assert_eq!(error_message(s, br#"{"error":"nope"}"#), "nope");
        assert_eq!(
            error_message(s, b"<html> bad\n gateway </html>"),
            "<html> bad gateway </html>"
        );
        assert_eq!(error_message(s, b""), "Unauthorized");
    }
}
