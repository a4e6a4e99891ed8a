//! HTTP requests from Slack (channels-protocols §1.1–1.4, 1.7): Events API bodies (JSON),
//! interactivity (`payload=<JSON>` form) and slash commands (flat form), all signed the same way.
//!
//! Order: the signing secret must exist → both headers present → the timestamp is within five
//! minutes of the clock → `v0=` + hex HMAC-SHA256(signing secret, `v0:{ts}:{raw body}`) matches
//! in constant time → only then is the body read. Retries (`X-Slack-Retry-Num`) are ordinary
//! redeliveries: the host deduplicates them by message id. Every verified request is answered
//! 200 with an empty body once its events are durable (Slack's ACK; it waits 3 s).

use serde_json::{Map, Value, json};
use switchboard_plugin_sdk::bindings::exports::switchboard::channel::transport::{
    WebhookEvents, WebhookRejection, WebhookRequest, WebhookResponse, WebhookVerdict,
};

/// Header carrying `v0=<hex HMAC>`.
pub const HEADER_SIGNATURE: &str = "x-slack-signature";
/// Header carrying the request's Unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "x-slack-request-timestamp";
/// The oldest (or furthest ahead) a signed timestamp may be: five minutes, as Slack's SDKs.
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// HMAC-SHA256 of `parts` concatenated under `key`: the host's native `crypto` import in wasm,
/// RustCrypto natively (the same result byte for byte).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    #[cfg(target_family = "wasm")]
    {
        let parts: Vec<Vec<u8>> = parts.iter().map(|part| part.to_vec()).collect();
        switchboard_plugin_sdk::crypto::hmac_sha256(key, &parts)
    }
    #[cfg(not(target_family = "wasm"))]
    {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
}

/// `v0=` + lowercase hex of the signature of `body` sent at `timestamp` (what Slack sends).
pub fn signature(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(
        signing_secret.as_bytes(),
        &[b"v0:", timestamp.as_bytes(), b":", body],
    );
    let mut out = String::from("v0=");
    for byte in mac {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn header<'a>(request: &'a WebhookRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

fn ok_response(content_type: &str, body: Vec<u8>) -> WebhookResponse {
    WebhookResponse {
        status: 200,
        content_type: content_type.into(),
        body,
    }
}

/// Verifies and unwraps one request with the installation's signing secret at `now_ms`.
pub fn verify(
    request: &WebhookRequest,
    signing_secret: Option<&str>,
    now_ms: i64,
) -> Result<WebhookVerdict, WebhookRejection> {
    let secret = signing_secret.ok_or_else(|| {
        WebhookRejection::BadToken(
            "the installation has no signing_secret: webhook requests cannot be verified".into(),
        )
    })?;
    if request.method != "POST" {
        return Err(WebhookRejection::Malformed(format!(
            "Slack sends POST requests, not {}",
            request.method
        )));
    }
    let (Some(given), Some(timestamp)) = (
        header(request, HEADER_SIGNATURE),
        header(request, HEADER_TIMESTAMP),
    ) else {
        return Err(WebhookRejection::BadSignature(
            "X-Slack-Signature or X-Slack-Request-Timestamp is missing".into(),
        ));
    };
    let seconds: i64 = timestamp.parse().map_err(|_| {
        WebhookRejection::BadSignature("X-Slack-Request-Timestamp is not a number".into())
    })?;
    let signed_at_ms = seconds.saturating_mul(1000);
    if (now_ms - signed_at_ms).abs() > MAX_AGE_MS {
        return Err(WebhookRejection::BadSignature(
            "X-Slack-Request-Timestamp is more than five minutes away (a replay?)".into(),
        ));
    }
    let expected = signature(secret, timestamp, &request.body);
    let given = given.to_ascii_lowercase();
    if !switchboard_plugin_sdk::secret::eq(expected.as_bytes(), given.as_bytes()) {
        return Err(WebhookRejection::BadSignature(
            "X-Slack-Signature does not match the signing secret".into(),
        ));
    }
    let payload = read_body(&request.body)?;
    let events = |payloads| {
        Ok(WebhookVerdict::Events(WebhookEvents {
            payloads,
            readings: Vec::new(),
            signed_at_ms: Some(signed_at_ms),
            response: ok_response("text/plain", Vec::new()),
        }))
    };
    match payload.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = payload.get("challenge").and_then(Value::as_str);
            let challenge = challenge.ok_or_else(|| {
                WebhookRejection::Malformed("url_verification without a challenge".into())
            })?;
            Ok(WebhookVerdict::Challenge(ok_response(
                "text/plain",
                challenge.as_bytes().to_vec(),
            )))
        }
        // A slash command's TLS check carries nothing to ingest.
        _ if payload.get("ssl_check").is_some() => Ok(WebhookVerdict::Challenge(ok_response(
            "text/plain",
            Vec::new(),
        ))),
        // An Events API body is handed on byte for byte; a form body as the JSON it became.
        _ if request.body.trim_ascii_start().starts_with(b"{") => {
            events(vec![request.body.clone()])
        }
        _ => events(vec![payload.to_string().into_bytes()]),
    }
}

/// The body as one JSON object: the Events API body itself, an interactivity form's `payload`,
/// or a slash command's form fields plus `"type": "slash_commands"`.
pub fn read_body(body: &[u8]) -> Result<Value, WebhookRejection> {
    let malformed = |what: &str| WebhookRejection::Malformed(what.into());
    if body.trim_ascii_start().starts_with(b"{") {
        let value: Value =
            serde_json::from_slice(body).map_err(|_| malformed("the body is not valid JSON"))?;
        return value
            .is_object()
            .then_some(value)
            .ok_or_else(|| malformed("the body is not a JSON object"));
    }
    let mut fields = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        fields.insert(key.into_owned(), Value::String(value.into_owned()));
    }
    if let Some(Value::String(payload)) = fields.get("payload") {
        let value: Value = serde_json::from_str(payload)
            .map_err(|_| malformed("the interactivity payload is not JSON"))?;
        return value
            .is_object()
            .then_some(value)
            .ok_or_else(|| malformed("the interactivity payload is not an object"));
    }
    if fields.contains_key("ssl_check") {
        return Ok(json!({ "ssl_check": true }));
    }
    if !fields.contains_key("command") {
        return Err(malformed(
            "neither JSON, an interactivity payload nor a slash command",
        ));
    }
    fields.insert("type".into(), json!("slash_commands"));
    Ok(Value::Object(fields))
}

/// The workspace a payload belongs to: `team_id` of an Events API body or slash command,
/// `team.id` of an interactivity payload, also inside a Socket Mode envelope or a form body.
pub fn routing_key(payload: &[u8]) -> Option<String> {
    let value = read_body(payload).ok()?;
    let value = value
        .get("payload")
        .filter(|p| p.is_object())
        .unwrap_or(&value);
    value
        .get("team_id")
        .or_else(|| value.pointer("/team/id"))
        .and_then(Value::as_str)
        .map(str::to_string)
}
