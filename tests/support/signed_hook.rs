//! The signed-JSON webhook wire shared by the Python and JavaScript example channels and the
//! plugins `switchboard plugins new` writes: the HMAC signature they check on the way in, the
//! clock they stamp, and a loopback receiver of the signed callbacks they send on the way out.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp.body` under `secret`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Seconds since the Unix epoch (the signatures' timestamp).
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One callback the receiver got.
#[derive(Debug)]
pub struct Callback {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A loopback receiver of callbacks on any path; every POST is answered 200 with `answer`.
/// Returns its base URL and the callbacks in arrival order.
pub async fn start_receiver(answer: Value) -> (String, mpsc::UnboundedReceiver<Callback>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/{*path}",
            axum::routing::post(
                move |State(tx): State<mpsc::UnboundedSender<Callback>>,
                      uri: Uri,
                      headers: HeaderMap,
                      body: axum::body::Bytes| {
                    let answer = answer.clone();
                    async move {
                        let _ = tx.send(Callback {
                            path: uri.path().to_string(),
                            headers,
                            body: body.to_vec(),
                        });
                        axum::Json(answer)
                    }
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, rx)
}
