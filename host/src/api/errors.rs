//! One error shape for every answer of the HTTP surface: `{"error": "…"}`.
//!
//! Handlers answer errors through [`super::ApiError`] already; this layer catches what the
//! framework answers on its own (the body limit's 413, an unknown route's 404, a wrong method's
//! 405, an extractor's 400) and rewrites those plain-text bodies into the same JSON shape, with a
//! message that says what to do. It must not touch successful answers, JSON errors or the
//! console's HTML pages.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// Largest framework error body kept as the message (an extractor's explanation).
const MAX_MESSAGE_BYTES: usize = 512;

/// Rewrites a non-JSON error answer into `{"error": …}`; anything else passes unchanged.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_json(&response)
        || is_html(&response)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this server accepts ([server] max_body_bytes)".into()
        }
        StatusCode::NOT_FOUND if text.is_empty() => "no such route".into(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not accept that method".into(),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
        _ => text,
    };
    let body = serde_json::to_string(&super::ErrorBody { error: message })
        .unwrap_or_else(|_| r#"{"error":"request failed"}"#.into());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

fn is_html(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
