//! The `http` capability: outbound requests through the shared reqwest clients.
//!
//! Every request and every redirect hop is checked by [`super::policy::HttpPolicy`] before any
//! connection is made, and then by the address rule: a destination inside an operator override's
//! target goes out as the operator wrote it; any other connects only to public addresses (a
//! literal IP is checked by the policy, a name by the resolver of [`super::dns`], and a name with
//! no public address is `not-allowed` naming it). Redirects are followed by hand: a hop to
//! another origin (scheme, host, port) no longer carries `Authorization`, `Cookie` or
//! `Proxy-Authorization`. Bodies are capped both ways; the timeout is the smaller of what the
//! plugin asked and what is left of the calling export's deadline.

use std::time::Duration;

use reqwest::header::{
    AUTHORIZATION, COOKIE, HeaderName, HeaderValue, LOCATION, PROXY_AUTHORIZATION,
};
use reqwest::{Method, StatusCode};
use url::Url;

use super::call::{Activity, CallState};
use super::dns;
use super::policy::Egress;
use crate::bindings::switchboard::channel::http::{Error, Host, Request, Response};

/// Headers a plugin may not set: they belong to the connection, not the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Headers that carry credentials: not forwarded when a redirect leaves the origin they were
/// set for (`Proxy-Authorization` is hop-by-hop and never sent, but is named here too).
const CREDENTIALS: [HeaderName; 3] = [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION];

impl Host for CallState {
    async fn send(&mut self, req: Request) -> Result<Response, Error> {
        let Some(policy) = self.grants.http.clone() else {
            return Err(Error::NotAllowed(
                "the http capability is not granted".into(),
            ));
        };
        let wanted = req.timeout_ms.map(|ms| Duration::from_millis(ms.into()));
        // Leave the guest a slice of its budget to handle the answer (including `timeout`).
        let remaining = Duration::from_millis(self.remaining_ms());
        let reserve = (remaining / 10).min(Duration::from_millis(50));
        let available = remaining - reserve;
        let timeout = wanted.map_or(available, |w| w.min(available));
        if timeout.is_zero() {
            return Err(Error::Timeout);
        }
        let url = req.url.clone();
        let services = self.services.clone();
        self.set_activity(Activity::HostImport("http.send"));
        let outcome = send_checked(&policy, &services, req, timeout).await;
        self.set_activity(Activity::Guest);
        match &outcome {
            Err(Error::NotAllowed(why)) => {
                tracing::warn!(plugin = %self.plugin, installation = %self.installation.id, "http request refused: {why}");
            }
            Err(error) => {
                let shown = Url::parse(&url).map(|u| redact(&u)).unwrap_or_default();
                let (kind, detail) = match error {
                    Error::NotAllowed(why) => ("not_allowed", why.clone()),
                    Error::Timeout => ("timeout", String::new()),
                    Error::TooLarge(cap) => ("too_large", format!("cap {cap} bytes")),
                    Error::InvalidRequest(why) => ("invalid_request", why.clone()),
                    Error::Transport(why) => ("transport", why.clone()),
                };
                tracing::debug!(plugin = %self.plugin, installation = %self.installation.id, url = %shown, error = kind, detail, "plugin http request failed");
            }
            Ok(_) => {}
        }
        outcome
    }
}

/// Sends a plugin's request under its egress `policy`, within `timeout`: the same checks,
/// redirect handling and caps as the `http` import. The host also uses it for requests a plugin
/// plans but does not send itself (long-poll rounds).
pub async fn send_checked(
    policy: &super::policy::HttpPolicy,
    services: &super::Services,
    req: Request,
    timeout: Duration,
) -> Result<Response, Error> {
    let url = Url::parse(&req.url)
        .map_err(|e| Error::InvalidRequest(format!("url {:?}: {e}", req.url)))?;
    let mut target = match policy.check(&url) {
        Egress::Allow(target) => target,
        Egress::Deny(why) => return Err(Error::NotAllowed(why)),
    };
    let limits = services.limits.clone();
    if req.body.len() as u64 > limits.http_max_request_bytes {
        return Err(Error::TooLarge(limits.http_max_request_bytes));
    }
    let mut method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Error::InvalidRequest(format!("method {:?}", req.method)))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &req.headers {
        if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidRequest(format!("header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| Error::InvalidRequest(format!("value of header {name}")))?;
        headers.append(name, value);
    }
    let mut body = req.body;
    let started = std::time::Instant::now();
    let mut hops = 0;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let client = if policy.is_override_target(&target) {
            &services.http_override
        } else {
            &services.http
        };
        let response = client
            .request(method.clone(), target.clone())
            .headers(headers.clone())
            .body(body.clone())
            .timeout(left)
            .send()
            .await
            .map_err(transport_error)?;
        if response.status().is_redirection()
            && let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
        {
            hops += 1;
            if hops > limits.http_max_redirects {
                return Err(Error::Transport(format!(
                    "more than {} redirects",
                    limits.http_max_redirects
                )));
            }
            let next = target.join(location).map_err(|e| {
                Error::Transport(format!("bad redirect location {location:?}: {e}"))
            })?;
            let next = match policy.check_redirect(&next) {
                Egress::Allow(next) => next,
                Egress::Deny(why) => return Err(Error::NotAllowed(why)),
            };
            // Credentials were set for this origin: they do not follow the plugin anywhere
            // else (also not back, once dropped).
            if next.origin() != target.origin() {
                for name in &CREDENTIALS {
                    headers.remove(name);
                }
            }
            // 303 (and 301/302 after a POST, as browsers do) continue as GET.
            let status = response.status();
            if status == StatusCode::SEE_OTHER
                || ((status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                    && method == Method::POST)
            {
                method = Method::GET;
                body = Vec::new();
            }
            target = next;
            continue;
        }
        return read_capped(response, limits.http_max_response_bytes).await;
    }
}

async fn read_capped(mut response: reqwest::Response, cap: u64) -> Result<Response, Error> {
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(Error::TooLarge(cap));
    }
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(Error::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn transport_error(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if let Some(refused) = dns::refused_in(&e) {
        Error::NotAllowed(refused.to_string())
    } else {
        // The URL may carry credentials (a WebSocket URL often does): report without it.
        Error::Transport(e.without_url().to_string())
    }
}

/// The URL without its query, for logs.
fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}
