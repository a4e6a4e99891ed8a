//! Test support: runtimes over the real test plugins, and a tiny local HTTP server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::capabilities::{BaseUrlOverride, OperatorPolicy, ServiceLimits, Services};
use switchboard::domain::KvBackend;
use switchboard::runtime::bundled::TEST_PLUGIN_DIR;
use switchboard::runtime::{PoolSettings, Runtime, RuntimeSettings};
use switchboard::store::KvStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Path of a test plugin component built by host/build.rs.
pub fn test_plugin(file: &str) -> PathBuf {
    Path::new(TEST_PLUGIN_DIR).join(file)
}

/// A precompiled-artifact cache shared by the test processes (compile once per build).
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// Builder for a runtime with the testing plugin loaded.
#[derive(Default)]
pub struct TestRuntime {
    pub kv: Option<KvStore>,
    pub overrides: Vec<BaseUrlOverride>,
    pub pool: PoolSettings,
    pub load_bundled: bool,
}

impl TestRuntime {
    pub fn build(self) -> Runtime {
        let services = Services::new(
            self.kv.map(|kv| Arc::new(kv) as Arc<dyn KvBackend>),
            OperatorPolicy {
                base_url_overrides: self.overrides,
            },
            ServiceLimits::default(),
        );
        let settings = RuntimeSettings {
            cache_dir: Some(shared_cache_dir()),
            pool: self.pool,
            ..Default::default()
        };
        let runtime = Runtime::new(settings, services).expect("runtime starts");
        runtime
            .load_file(&test_plugin("switchboard_testing.wasm"))
            .expect("testing plugin loads");
        if self.load_bundled {
            runtime.load_bundled().expect("bundled plugins load");
        }
        runtime
    }
}

/// A local HTTP/1.1 server answering every request with `status` and `body` after `delay`,
/// counting the connections it accepted and keeping the last request head.
pub struct LocalServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub last_request: Arc<std::sync::Mutex<String>>,
}

impl LocalServer {
    pub async fn start(
        status: &'static str,
        extra_headers: &'static str,
        body: &'static str,
        delay: Duration,
    ) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let last_request = Arc::new(std::sync::Mutex::new(String::new()));
        let (count, last) = (connections.clone(), last_request.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let last = last.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    *last.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        LocalServer {
            port,
            connections,
            last_request,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
