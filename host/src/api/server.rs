//! The listener: accepts TCP connections up to a cap and serves each with hyper's HTTP/1.1
//! server under timeouts, so slow or stalled clients cannot hold sockets and memory (issue 14).
//!
//! - **Connection cap** ([`HttpLimits::max_connections`]): a connection is accepted only with a
//!   free slot; beyond the cap new connections wait in the kernel's accept queue and are served
//!   as soon as others close.
//! - **Header read timeout** ([`HttpLimits::header_read_timeout`], hyper's
//!   `header_read_timeout`): a request's headers must arrive within it, counted from when the
//!   connection opens or finished its previous response, so it is also the keep-alive idle
//!   timeout between requests.
//! - **Idle timeout** ([`HttpLimits::idle_timeout`]): outside a request handler, a connection on
//!   which no byte moves either way for this long is closed (a client that stopped reading a
//!   response or an event stream, a stalled peer). Time inside a handler (a worker's long poll)
//!   does not count.
//! - **Body read timeout**: enforced per request by the router's layer (`limits.rs`).
//!
//! Nothing is kept per connection beyond its task: the slot, the activity record and hyper's
//! buffers go when it closes. Graceful shutdown stops accepting, asks every connection to
//! finish its request in flight, and waits for them.
//!
//! Owns sockets and connection lifetimes only; routing and handlers are the router's.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::HttpLimits;

/// Largest request head (request line and headers) hyper reads; larger ones get 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then stops
/// accepting, lets every connection finish its request in flight and returns once all are
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    warn_if_fds_are_short(limits.max_connections);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let stop = CancellationToken::new();
    // Every connection task holds a sender; `recv` returns `None` once all of them are gone.
    let (open_tx, mut all_closed) = mpsc::channel::<Infallible>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut saturated = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                saturated = false;
                slot
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached ([server] max_connections): new connections wait \
                         until others close"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            peer,
            http: http.clone(),
            router: router.clone(),
            idle_timeout: limits.idle_timeout,
            stop: stop.clone(),
        };
        let open = open_tx.clone();
        tokio::spawn(async move {
            connection.run(stream).await;
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    stop.cancel();
    drop(open_tx);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Warns when the process may open fewer files than `max_connections` needs (each connection
/// is a descriptor; the database, plugins and logs need some too): accepting would then fail
/// with "too many open files" before the cap is reached.
fn warn_if_fds_are_short(max_connections: usize) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            // `rlim_t` is `u64` on Linux but not on every Unix.
            #[allow(clippy::unnecessary_cast)]
            let open_files = limit.rlim_cur as u64;
            if open_files < max_connections as u64 + 128 {
                tracing::warn!(
                    open_files,
                    max_connections,
                    "the open-file limit is below [server] max_connections + 128: raise it \
                     (ulimit -n, LimitNOFILE=) or lower max_connections"
                );
            }
        }
    }
}

/// Connection errors of one client are not the listener's; anything else (too many open
/// files) is logged and retried after a pause, as axum does.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What one connection task needs.
struct Connection {
    http: Arc<hyper::server::conn::http1::Builder>,
    /// The client's address, handed to handlers as axum's `ConnectInfo` (the console's
    /// sign-in throttle counts failures per address).
    peer: std::net::SocketAddr,
    router: Router,
    idle_timeout: Duration,
    stop: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let router = self.router;
        let handlers = activity.clone();
        let peer = axum::extract::ConnectInfo(self.peer);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_handler = InHandler::enter(&handlers);
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(peer);
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await;
                drop(in_handler);
                response
            }
        });
        let conn = self.http.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection closed: {e}");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.expired(self.idle_timeout) => {
                    tracing::debug!(
                        idle_ms = self.idle_timeout.as_millis() as u64,
                        "closing an idle connection ([server] idle_timeout_ms)"
                    );
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are inside a handler.
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last progress.
    last_ms: AtomicU64,
    in_handler: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_handler: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once the connection has been idle for `timeout` outside any handler. One timer,
    /// re-armed only when it fires early.
    async fn expired(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.last() + timeout).await;
            if self.in_handler.load(Ordering::Relaxed) > 0 {
                self.touch();
                continue;
            }
            if self.last() + timeout <= Instant::now() {
                return;
            }
        }
    }
}

/// Marks a request inside its handler; leaving counts as activity.
struct InHandler(Arc<Activity>);

impl InHandler {
    fn enter(activity: &Arc<Activity>) -> InHandler {
        activity.in_handler.fetch_add(1, Ordering::Relaxed);
        InHandler(activity.clone())
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_handler.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records progress in its [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
