//! Plugin egress and the WASI a plugin gets, with the real testing components through wasmtime:
//! the address rule (a name or literal IP that is loopback is refused without an operator
//! override; an override reaches a loopback server), credentials on redirects (dropped across
//! origins, kept on the same origin), and no environment, no wall clock without the `clock`
//! grant, a filesystem with no directories, no sockets.

#[path = "support/runtime.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{TestRuntime, test_plugin};
use switchboard::capabilities::BaseUrlOverride;
use switchboard::domain::InstallationContext;
use switchboard::runtime::decoder::Decoded;
use switchboard::runtime::types::PluginError;
use switchboard::runtime::{LoadError, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every test finishes well within this, or fails.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test took too long")
}

fn installation() -> Arc<InstallationContext> {
    Arc::new(InstallationContext::new("inst-egress"))
}

/// What the testing plugin's `decode` answered: `Ok(body)` of a message, or `Err(reason)` of
/// the retryable error it reports a failed `http.send` with (the host's error, `{:?}`).
async fn decode(runtime: &Runtime, payload: &str) -> Result<String, String> {
    let plugin = runtime.plugin("testing").unwrap();
    match plugin.decode(&installation(), payload.as_bytes()).await {
        Ok(Ok(Decoded::Message(m))) => Ok(m.body),
        Ok(Err(PluginError::Retryable(why))) => Err(why),
        other => panic!("{payload}: unexpected answer {other:?}"),
    }
}

fn override_to(from: &str, to: &str) -> BaseUrlOverride {
    BaseUrlOverride::new(from, to).unwrap()
}

/// A local HTTP/1.1 server: `GET /hop?to=<location>` answers `302` to `<location>`; any other
/// request `200` with the request head it received as the body. Counts connections.
struct EchoServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = serve(listener);
        EchoServer { port, connections }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(listener: TcpListener) -> Arc<AtomicUsize> {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                let response = match target.strip_prefix("/hop?to=") {
                    Some(location) => format!(
                        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\
                         connection: close\r\n\r\n"
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                        head.len()
                    ),
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    connections
}

/// Port 80 on loopback (what `http://localhost` and `http://127.0.0.1` in the testing plugin's
/// allow-list mean), listened on when this process may, so a refusal can be shown to make no
/// connection; `None` when the port is taken or privileged.
async fn port_80_witness() -> Option<Arc<AtomicUsize>> {
    let listener = TcpListener::bind("127.0.0.1:80").await.ok()?;
    Some(serve(listener))
}

#[tokio::test]
async fn an_allow_listed_name_that_resolves_to_loopback_is_refused_without_an_override() {
    bounded(async {
        let witness = port_80_witness().await;
        // No override: `http://localhost` and `http://127.0.0.1` are in the plugin's allow-list,
        // so only the address rule stands between the plugin and the host's loopback.
        let runtime = TestRuntime::default().build();

        let why = decode(&runtime, "http:http://localhost/admin")
            .await
            .expect_err("localhost is loopback");
        assert!(why.contains("NotAllowed("), "{why}");
        assert!(
            why.contains("localhost resolves only to loopback, private or link-local addresses"),
            "the refusal names the host: {why}"
        );
        assert!(why.contains("base-URL override"), "{why}");

        // A literal IP never reaches a resolver: the policy refuses it by itself.
        let why = decode(&runtime, "http:http://127.0.0.1/admin")
            .await
            .expect_err("127.0.0.1 is loopback");
        assert!(why.contains("NotAllowed("), "{why}");
        assert!(why.contains("http://127.0.0.1 is a loopback"), "{why}");

        if let Some(witness) = witness {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(witness.load(Ordering::SeqCst), 0, "no connection was made");
        } else {
            eprintln!("port 80 unavailable: the no-connection check was skipped");
        }
    })
    .await;
}

#[tokio::test]
async fn an_operator_override_to_a_loopback_server_is_allowed() {
    bounded(async {
        let server = EchoServer::start().await;
        let runtime = TestRuntime {
            overrides: vec![
                // To a name that resolves to loopback: the operator wrote it, so it is dialled.
                override_to(
                    "http://allowed.test",
                    &format!("http://localhost:{}", server.port),
                ),
                // And the same allow-listed `http://localhost` that is refused without one.
                override_to("http://localhost", &server.origin()),
            ],
            ..Default::default()
        }
        .build();

        let body = decode(&runtime, "http:http://allowed.test/through-a-name")
            .await
            .expect("the override target is reachable");
        assert!(
            body.starts_with("200 GET /through-a-name HTTP/1.1"),
            "{body}"
        );
        let body = decode(&runtime, "http:http://localhost/through-a-literal")
            .await
            .expect("the override target is reachable");
        assert!(
            body.starts_with("200 GET /through-a-literal HTTP/1.1"),
            "{body}"
        );
        assert_eq!(server.connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn credentials_are_dropped_on_a_redirect_to_another_origin_and_kept_on_the_same_one() {
    bounded(async {
        let first = EchoServer::start().await;
        let second = EchoServer::start().await;
        let runtime = TestRuntime {
            overrides: vec![
                override_to("http://allowed.test", &first.origin()),
                // Makes the second server a place redirects may go (an override's target).
                override_to("http://second.test", &second.origin()),
            ],
            ..Default::default()
        }
        .build();

        // first → 302 → second (another port: another origin).
        let payload = format!(
            "http-auth:http://allowed.test/hop?to={}/echo",
            second.origin()
        );
        let body = decode(&runtime, &payload).await.expect("redirect followed");
        let received = body.to_ascii_lowercase();
        assert!(received.starts_with("200 get /echo http/1.1"), "{body}");
        assert!(
            received.contains("x-test: 1"),
            "other headers follow: {body}"
        );
        assert!(
            !received.contains("authorization") && !received.contains("plugin-token"),
            "Authorization must not reach another origin: {body}"
        );
        assert!(
            !received.contains("cookie") && !received.contains("plugin-cookie"),
            "Cookie must not reach another origin: {body}"
        );
        assert_eq!((first.connections(), second.connections()), (1, 1));

        // first → 302 → first (same scheme, host and port): the credentials stay.
        let body = decode(&runtime, "http-auth:http://allowed.test/hop?to=/echo")
            .await
            .expect("redirect followed");
        let received = body.to_ascii_lowercase();
        assert!(received.starts_with("200 get /echo http/1.1"), "{body}");
        assert!(
            received.contains("authorization: bearer plugin-token"),
            "{body}"
        );
        assert!(received.contains("cookie: session=plugin-cookie"), "{body}");
        assert_eq!(first.connections(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_plugin_gets_no_environment_and_no_wall_clock_without_the_grant() {
    bounded(async {
        let runtime = TestRuntime::default().build();
        // The host process has a PATH; the plugin sees no variable and no argument at all.
        assert!(std::env::var_os("PATH").is_some());
        assert_eq!(
            decode(&runtime, "env:PATH").await.unwrap(),
            "<none>|vars=0|args=0"
        );
        // The testing plugin's manifest does not grant `clock`: WASI's wall clock is stopped at
        // the Unix epoch, whatever the time is.
        assert_eq!(decode(&runtime, "wall-clock").await.unwrap(), "0");
    })
    .await;
}

#[tokio::test]
async fn a_plugin_reaching_for_sockets_is_refused_at_load_naming_the_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("escape.wasm");
    std::fs::copy(test_plugin("switchboard_testing_escape.wasm"), &wasm).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../plugins/testing-escape/manifest.toml"
        ),
        dir.path().join("escape.toml"),
    )
    .unwrap();
    let runtime = TestRuntime::default().build();
    let error = runtime
        .load_file(&wasm)
        .expect_err("files and sockets are not linked");
    assert!(matches!(error, LoadError::Mismatch { .. }), "{error:?}");
    let text = error.to_string();
    for interface in [
        "wasi:sockets/tcp@",
        "wasi:sockets/udp@",
        "wasi:sockets/ip-name-lookup@",
    ] {
        assert!(text.contains(interface), "{interface} is named: {text}");
    }
    // The filesystem is linked, with no preopened directory (nothing to reach), so it is not
    // a reason to refuse.
    assert!(!text.contains("wasi:filesystem"), "{text}");
    assert!(
        text.contains("testing-escape") || text.contains("escape.wasm"),
        "{text}"
    );
    assert!(runtime.plugin("testing-escape").is_none());
}
