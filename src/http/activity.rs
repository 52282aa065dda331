//! What a connection's watchdog looks at ([`Activity`]: bytes moving, requests begun and answered,
//! a request head arriving) and the socket wrapper that feeds it ([`Tracked`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::HttpMetrics;

/// What a connection's watchdog looks at: when bytes last moved, requests begun and still answering,
/// and since when an HTTP/1.1 request head has been arriving (`NONE`: none is).
pub struct Activity {
    pub start: Instant,
    last_io_ms: AtomicU64,
    requests: AtomicU64,
    pub in_flight: AtomicU64,
    head_since_ms: AtomicU64,
    h2: AtomicBool,
}

const NONE: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NONE),
            h2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        // Bytes between HTTP/1.1 requests are the next head: time it.
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.h2.load(Ordering::Relaxed) {
            let _ = self.head_since_ms.compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// An HTTP/2 connection: its bytes between requests are not a head being read.
    pub fn on_http2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub fn on_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NONE, Ordering::Relaxed);
    }

    fn on_end(&self, metrics: &HttpMetrics) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics.on_end();
    }

    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_io_ms.load(Ordering::Relaxed)))
    }

    /// Whether a request head is overdue: the first one since accept, or an HTTP/1.1 one being read.
    pub fn head_overdue(&self, limit: Duration) -> bool {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return self.start.elapsed() >= limit;
        }
        let since = self.head_since_ms.load(Ordering::Relaxed);
        since != NONE && self.now_ms().saturating_sub(since) >= limit.as_millis() as u64
    }
}

/// One request being answered; dropped (answered, or its stream reset) it no longer counts.
/// Owning, for hyper's `'static` service futures.
pub struct InFlight(pub Arc<Activity>, pub Arc<HttpMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.on_end(&self.1);
    }
}

/// [`InFlight`] for a request served inside its connection's own task (HTTP/2).
pub struct InFlightRef<'a>(pub &'a Activity, pub &'a HttpMetrics);

impl Drop for InFlightRef<'_> {
    fn drop(&mut self) {
        self.0.on_end(self.1);
    }
}

/// A socket that records when bytes move, for the idle check.
pub struct Tracked {
    pub inner: TcpStream,
    pub act: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.on_write();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
