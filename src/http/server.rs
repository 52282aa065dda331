//! The HTTP API listener: a small tokio runtime in its own threads, hyper's HTTP/1.1 + HTTP/2 auto
//! connection (h2 by prior knowledge in cleartext, by ALPN over TLS), connection bounds, and a
//! per-connection watchdog (request heads in time, idle close) and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::backend::Backend;
use super::batch::Crossing;
use super::routes::{self, Ctx};
use crate::config::HttpConfig;
use crate::metrics::{HttpMetrics, Metrics};
use crate::proto::Apps;

/// How long shutdown waits for open requests and connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running HTTP API listener.
pub struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts [`HttpServer::shutdown`] without waiting for it (e.g. before draining the router, so
    /// open requests still get their answers); `shutdown` or drop then waits.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops accepting, lets open requests finish (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`),
    /// ends receipt streams, and returns when every connection is closed (at most ~5 s).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Shared {
    ctx: Arc<Ctx>,
    metrics: Arc<HttpMetrics>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: AtomicUsize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// Binds `cfg.listen` and serves the HTTP API on its own runtime: one thread when `cfg.threads` is 1,
/// else an accepting thread and `cfg.threads` workers.
/// `tls` (from `[tls]` with `tls.http = true`) gets the ALPN ids h2 and http/1.1 if it has none.
/// Its metrics go nowhere: [`start_with_metrics`] says where.
pub fn start(
    cfg: &HttpConfig,
    apps: Apps,
    backend: Arc<dyn Backend>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<HttpServer> {
    start_with_metrics(cfg, apps, backend, tls, Arc::default())
}

/// [`start`], counting requests, connections and latency in `metrics` (the admin port's `/metrics`).
pub fn start_with_metrics(
    cfg: &HttpConfig,
    apps: Apps,
    backend: Arc<dyn Backend>,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<HttpMetrics>,
) -> io::Result<HttpServer> {
    // One thread: everything on the thread below; more: that thread accepts, the workers serve.
    let mut rt = match cfg.threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = rt.thread_name("http").enable_io().enable_time().build()?;
    let std_listener = std::net::TcpListener::bind(cfg.listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = {
        let _guard = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    let (stop, stopped) = watch::channel(false);
    let crossing = Crossing::new(backend.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by the connection watchdog: hyper's own timer would also close an idle
        // keep-alive connection after it.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let shared = Arc::new(Shared {
        ctx: Arc::new(Ctx {
            cfg: cfg.clone(),
            apps,
            backend,
            crossing: crossing.clone(),
            shutdown: stopped.clone(),
        }),
        metrics,
        builder,
        tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(with_alpn(t))),
        conns: AtomicUsize::new(0),
        header_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
    });
    let max_conns = cfg.max_connections;
    let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
        rt.spawn(crossing.pump());
        rt.block_on(accept_loop(listener, shared, max_conns, stopped));
        rt.shutdown_timeout(Duration::from_millis(500));
    })?;
    info!("HTTP API on {addr}");
    Ok(HttpServer { addr, stop, thread: Some(thread) })
}

/// [`start_with_metrics`] as `pushgate serve` calls it: `None` when `http.enabled` is false; TLS when
/// `tls.http`; counting in `metrics`' HTTP block.
pub fn start_configured(
    cfg: &crate::config::Config,
    apps: Apps,
    backend: Arc<dyn Backend>,
    tls: &crate::tls::TlsPorts,
    metrics: &Metrics,
) -> io::Result<Option<HttpServer>> {
    if !cfg.http.enabled {
        return Ok(None);
    }
    start_with_metrics(&cfg.http, apps, backend, tls.http.clone(), metrics.http()).map(Some)
}

fn with_alpn(cfg: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if !cfg.alpn_protocols.is_empty() {
        return cfg;
    }
    let mut c = (*cfg).clone();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_conns: usize,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    if shared.conns.load(Ordering::Relaxed) >= max_conns {
                        debug!("HTTP: refusing {peer}: {max_conns} connections open");
                        drop(sock);
                        continue;
                    }
                    shared.conns.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.on_connection(1);
                    let _ = sock.set_nodelay(true);
                    let s = shared.clone();
                    let st = stopped.clone();
                    tokio::spawn(async move {
                        serve(&s, sock, st).await;
                        s.conns.fetch_sub(1, Ordering::Relaxed);
                        s.metrics.on_connection(-1);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: wait rather than spin.
                    warn!("HTTP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(1);
    while shared.conns.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a connection's watchdog looks at: when bytes last moved, requests begun and still answering,
/// and since when an HTTP/1.1 request head has been arriving (`NONE`: none is).
struct Activity {
    start: Instant,
    last_io_ms: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    head_since_ms: AtomicU64,
    h2: AtomicBool,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
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

    fn on_request(&self, h2: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NONE, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_io_ms.load(Ordering::Relaxed)))
    }

    /// Whether a request head is overdue: the first one since accept, or an HTTP/1.1 one being read.
    fn head_overdue(&self, limit: Duration) -> bool {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return self.start.elapsed() >= limit;
        }
        let since = self.head_since_ms.load(Ordering::Relaxed);
        since != NONE && self.now_ms().saturating_sub(since) >= limit.as_millis() as u64
    }
}

/// One request being answered; dropped (answered, or its stream reset) it no longer counts.
struct InFlight(Arc<Activity>, Arc<HttpMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.on_end();
    }
}

/// A response body that counts its request as answered once hyper is done with it.
struct Counted {
    inner: routes::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve(shared: &Arc<Shared>, sock: TcpStream, stopped: watch::Receiver<bool>) {
    let act = Arc::new(Activity::new());
    let io = Tracked { inner: sock, act: act.clone() };
    match &shared.tls {
        None => drive(shared, TokioIo::new(io), act, stopped).await,
        Some(acceptor) => match tokio::time::timeout(shared.header_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => drive(shared, TokioIo::new(tls), act, stopped).await,
            Ok(Err(e)) => debug!("HTTP TLS handshake: {e}"),
            Err(_) => debug!("HTTP TLS handshake: timed out"),
        },
    }
}

async fn drive<I>(
    shared: &Arc<Shared>,
    io: TokioIo<I>,
    act: Arc<Activity>,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = shared.ctx.clone();
    let metrics = shared.metrics.clone();
    let counter = act.clone();
    let auth = Arc::new(super::auth::Cache::default());
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        counter.on_request(req.version() == hyper::Version::HTTP_2);
        metrics.on_start();
        // Made here, so a handler dropped mid-way (an HTTP/2 stream reset) still uncounts itself.
        let in_flight = InFlight(counter.clone(), metrics.clone());
        let ctx = ctx.clone();
        let auth = auth.clone();
        let metrics = metrics.clone();
        let (route, began) = (routes::route_of(req.uri().path()), Instant::now());
        async move {
            let r = routes::handle(ctx, &auth, req).await;
            metrics.on_answer(route, r.status().as_u16(), began.elapsed());
            Ok::<_, Infallible>(r.map(|inner| Counted { inner, _in_flight: in_flight }))
        }
    });
    let conn = shared.builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let check = (shared.header_timeout.min(shared.idle_timeout) / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(check);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!("HTTP connection: {e}");
                }
                return;
            }
            _ = stopped.changed() => break,
            _ = tick.tick() => {
                // A slow (or silent) client: no first request head in time, or a later HTTP/1.1 head
                // that started arriving and did not finish in time.
                if act.head_overdue(shared.header_timeout) {
                    debug!("HTTP connection: no complete request head within the header read timeout");
                    return;
                }
                if act.in_flight.load(Ordering::Relaxed) == 0 && act.idle_for() >= shared.idle_timeout {
                    debug!("HTTP connection: idle");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
}

/// A socket that records when bytes move, for the idle check.
struct Tracked {
    inner: TcpStream,
    act: Arc<Activity>,
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
