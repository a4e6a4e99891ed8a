//! Request hygiene, as tower layers in front of every handler (issue 14):
//!
//! - a NUL character in a path or query (`%00`) → `400`: no id the host stores holds one, and
//!   PostgreSQL cannot even compare it;
//! - the whole request body must arrive within `[server] body_read_timeout_ms` (`408`) and fit
//!   the route's limit (`413`: `max_body_bytes`, the worker API's own when larger); handlers
//!   then read it from memory. Admin requests are authenticated before their body is read;
//! - JSON bodies of the admin API holding a NUL (`\u0000`) in any string → `400` naming the
//!   field ([`reject_nul_json`]); the worker API's JSON bodies have NUL characters removed
//!   instead ([`strip_nul_json`]): an agent's reply is kept, not refused.
//!
//! The rules on what is storable are `crate::hygiene`'s; this module applies them to HTTP.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::ApiError;
use crate::config::ServerConfig;

/// The HTTP limits of `[server]`: request bodies, timeouts and the connection cap.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body (`413` beyond).
    pub max_body_bytes: usize,
    /// Time a request's whole body may take to arrive (`408` beyond).
    pub body_read_timeout: Duration,
    /// Time a request's headers may take, from when the connection opens or finished its
    /// previous response (also the keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// Outside a handler, a connection without a byte moving this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The limits `[server]` sets.
    pub fn from_config(server: &ServerConfig) -> HttpLimits {
        HttpLimits {
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            max_connections: server.max_connections,
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::from_config(&ServerConfig::default())
    }
}

/// How a route group's request bodies are read.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyRead {
    /// Largest body (`413` beyond).
    pub max_bytes: usize,
    /// Time the whole body may take to arrive (`408` beyond).
    pub timeout: Duration,
    /// Answer errors with a `hint` too, as the worker API does.
    pub hints: bool,
}

impl BodyRead {
    /// An error answer after which the connection closes (the rest of the body is not read).
    fn refuse(&self, status: StatusCode, error: String, hint: &str) -> Response {
        let mut body = serde_json::json!({ "error": error });
        if self.hints {
            body["hint"] = Value::from(hint);
        }
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// Refuses `%00` in the path or query (every route).
pub(super) async fn refuse_nul_path(request: Request, next: Next) -> Response {
    if encodes_nul(request.uri()) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "the path or query contains a NUL character (%00); no id holds one",
        )
        .into_response();
    }
    next.run(request).await
}

/// Reads the whole body within the deadline and the size limit and hands it on from memory
/// (a route layer, so each route group keeps its own limit).
pub(super) async fn read_body(
    State(limits): State<BodyRead>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => {
            return limits.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than this route accepts ({} bytes; [server] \
                     max_body_bytes)",
                    limits.max_bytes
                ),
                &format!("request bodies are limited to {} bytes", limits.max_bytes),
            );
        }
        Ok(Err(e)) => {
            tracing::debug!("reading a request body failed: {e}");
            return limits.refuse(
                StatusCode::BAD_REQUEST,
                "the request body could not be read".into(),
                "send the whole body, as its Content-Length or chunked encoding says",
            );
        }
        Err(_) => {
            tracing::debug!(
                timeout_ms = limits.timeout.as_millis() as u64,
                "request body too slow"
            );
            return limits.refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms ([server] body_read_timeout_ms)",
                    limits.timeout.as_millis()
                ),
                "send the body at once, right after the headers",
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Admin API: a JSON body with a NUL in any string (or key) → `400` naming where.
pub(super) async fn reject_nul_json(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match buffered(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if let Some(value) = json_with_nul(&bytes)
        && let Some(at) = nul_at(&value, String::new())
    {
        let at = if at.is_empty() { "the body".into() } else { at };
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{at} contains a NUL character (\\u0000), which cannot be stored; remove it"),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Worker API: NUL characters are removed from every string of a JSON body.
pub(super) async fn strip_nul_json(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let mut bytes = match buffered(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if let Some(mut value) = json_with_nul(&bytes) {
        let stripped = strip(&mut value);
        if stripped > 0 {
            tracing::info!(
                path = parts.uri.path(),
                stripped,
                "removed NUL characters from a worker request"
            );
            bytes = Bytes::from(value.to_string());
            parts.headers.remove(header::CONTENT_LENGTH);
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The body [`read_body`] already holds in memory.
async fn buffered(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        tracing::debug!("reading a request body failed: {e}");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )
        .into_response()
    })
}

/// `%00` anywhere in the path or query.
fn encodes_nul(uri: &axum::http::Uri) -> bool {
    uri.path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes().windows(3).any(|w| w == b"%00"))
}

/// The body parsed as JSON when it may hold a NUL: valid JSON can only spell one `\u0000`.
fn json_with_nul(bytes: &[u8]) -> Option<Value> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !bytes.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// Where the first NUL is, as a dotted path (`config.base_url`, `items.2`).
fn nul_at(value: &Value, at: String) -> Option<String> {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, join(&i.to_string()))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(join(&crate::hygiene::printable(key)))
            } else {
                nul_at(item, join(key))
            }
        }),
        _ => None,
    }
}

/// Removes NUL characters from every string (and key) of `value`; returns how many.
fn strip(value: &mut Value) -> usize {
    match value {
        Value::String(text) => crate::hygiene::strip_nul(text),
        Value::Array(items) => items.iter_mut().map(strip).sum(),
        Value::Object(map) => {
            let mut count = 0;
            let entries = std::mem::take(map);
            for (mut key, mut item) in entries {
                count += crate::hygiene::strip_nul(&mut key) + strip(&mut item);
                map.insert(key, item);
            }
            count
        }
        _ => 0,
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_strips_nul() {
        let value: Value =
            serde_json::from_str(r#"{"a":{"b":["x","y\u0000"]},"c":"\\u0000 is text"}"#).unwrap();
        assert_eq!(nul_at(&value, String::new()).as_deref(), Some("a.b.1"));
        assert!(json_with_nul(br#"{"c":"\\u0000 only looks like one"}"#).is_some());
        let clean: Value = serde_json::from_str(r#"{"c":"\\u0000"}"#).unwrap();
        assert_eq!(nul_at(&clean, String::new()), None);
        let mut value = value;
        assert_eq!(strip(&mut value), 1);
        assert_eq!(value["a"]["b"][1], "y");
        assert!(encodes_nul(&"/api/installations/%00".parse().unwrap()));
        assert!(encodes_nul(&"/api/sessions?after=%00".parse().unwrap()));
        assert!(!encodes_nul(
            &"/api/installations/abc%2000".parse().unwrap()
        ));
    }
}
