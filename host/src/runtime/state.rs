//! Per-store host state: the WASI context, the memory limiter, the guest's captured stderr and the
//! imports' view of the call in progress (`capabilities::CallState`: installation context,
//! deadline, activity). One `HostState` lives inside each wasmtime `Store`.
//!
//! Owns nothing durable: anything that must outlive a call lives in the host's services. The
//! per-call bookkeeping here is on the warm-call path, so resetting it costs a few plain stores
//! and atomic loads: no locks, no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::clock::WasiWallClock;
use crate::capabilities::{CallState, Grants, Services};
use crate::domain::InstallationContext;

/// Caps linear memory and table growth per store and remembers a refusal, so a trap that follows
/// can be reported as "memory limit" instead of a bare abort.
pub struct MemoryLimiter {
    cap_bytes: usize,
    /// Size that was refused, if any, since the current call started.
    pub(crate) refused: Option<usize>,
    /// Largest memory size granted.
    pub(crate) peak: usize,
}

/// Ceiling on table elements (function references) per table.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    fn new(cap_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            cap_bytes: usize::try_from(cap_bytes).unwrap_or(usize::MAX),
            refused: None,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes || maximum.is_some_and(|max| desired > max) {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The guest's stderr, captured per call (Rust guests print panic messages there) and read
/// only when a call fails.
///
/// Writes beyond [`STDERR_CAPTURE_BYTES`] per call are dropped rather than failing the guest's
/// write. A byte count kept beside the buffer lets the start of every call skip the lock when
/// nothing was written (the common case).
#[derive(Clone)]
pub(crate) struct StderrCapture {
    inner: Arc<CaptureInner>,
}

struct CaptureInner {
    /// Bytes in `buffer`; only changed with `buffer` locked.
    len: AtomicUsize,
    buffer: Mutex<Vec<u8>>,
}

impl StderrCapture {
    fn new() -> StderrCapture {
        StderrCapture {
            inner: Arc::new(CaptureInner {
                len: AtomicUsize::new(0),
                buffer: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Forgets what earlier calls wrote.
    fn clear(&self) {
        if self.inner.len.load(Ordering::Relaxed) != 0 {
            let mut buffer = self.inner.buffer.lock().expect("stderr lock");
            buffer.clear();
            self.inner.len.store(0, Ordering::Relaxed);
        }
    }

    /// Appends what fits under the cap.
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.inner.buffer.lock().expect("stderr lock");
        let room = STDERR_CAPTURE_BYTES.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.inner.len.store(buffer.len(), Ordering::Relaxed);
    }

    /// What was written since the last [`clear`](Self::clear) (trimmed, lossy UTF-8).
    fn text(&self) -> Option<String> {
        if self.inner.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let buffer = self.inner.buffer.lock().expect("stderr lock");
        let text = String::from_utf8_lossy(&buffer);
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what does not fit is dropped.
        Ok(STDERR_CAPTURE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The data of one plugin store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    stderr: StderrCapture,
    /// What the host imports see: plugin, grants, services and the call in progress.
    pub(crate) call: CallState,
}

/// Captured guest stderr per call (Rust prints panic messages there).
const STDERR_CAPTURE_BYTES: usize = 64 * 1024;

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Arc<Grants>,
        services: Arc<Services>,
        memory_cap: u64,
    ) -> HostState {
        let stderr = StderrCapture::new();
        // A WASI context that grants nothing: no preopened directories, no environment variables,
        // no arguments, empty stdin, stdout dropped, stderr captured; the wall clock is the
        // host's only with the `clock` grant. The filesystem is linked over this context, so with
        // no preopens no file is reachable; sockets are not even linked
        // (`capabilities::WASI_INTERFACES`) and socket use is refused here as well, in depth.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(WasiWallClock::new(grants.clock, &services.clock))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_cap),
            stderr,
            call: CallState::new(plugin, grants, services),
        }
    }

    /// Prepares the state for a call (or an instantiation) for `installation` until `deadline`.
    pub(crate) fn begin_call(
        &mut self,
        installation: &Arc<InstallationContext>,
        deadline: Instant,
    ) {
        self.call.begin(installation, deadline);
        self.limiter.refused = None;
        self.stderr.clear();
    }

    /// The imports' view of this store, for linking.
    pub(crate) fn imports(&mut self) -> &mut CallState {
        &mut self.call
    }

    /// What the guest wrote to stderr since the current call started (trimmed, lossy UTF-8).
    pub(crate) fn stderr_since_call(&self) -> Option<String> {
        self.stderr.text()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linked_filesystem_has_no_directories() {
        use crate::capabilities::{OperatorPolicy, ServiceLimits};
        use wasmtime_wasi::filesystem::WasiFilesystemView;
        use wasmtime_wasi::p2::bindings::filesystem::preopens::Host;

        let services = Arc::new(Services::new(
            None,
            OperatorPolicy::default(),
            ServiceLimits::default(),
        ));
        let mut state = HostState::new("fs".into(), Arc::default(), services, 1 << 20);
        // Preopens are the only way a guest gets a descriptor: none, so no file at all.
        let preopens = state.filesystem().get_directories().unwrap();
        assert!(
            preopens.is_empty(),
            "{} preopened directories",
            preopens.len()
        );
    }

    #[test]
    fn stderr_is_captured_per_call_and_capped() {
        let capture = StderrCapture::new();
        assert_eq!(capture.text(), None);
        capture.append(b"  thread 'main' panicked at boom\n");
        assert_eq!(
            capture.text().as_deref(),
            Some("thread 'main' panicked at boom")
        );
        // The next call starts empty.
        capture.clear();
        assert_eq!(capture.text(), None);
        // Output past the cap is dropped, not an error.
        capture.append(&vec![b'x'; STDERR_CAPTURE_BYTES + 100]);
        capture.append(b"more");
        assert_eq!(capture.text().map(|t| t.len()), Some(STDERR_CAPTURE_BYTES));
        // Whitespace only counts as nothing.
        capture.clear();
        capture.append(b" \n\t");
        assert_eq!(capture.text(), None);
    }
}
