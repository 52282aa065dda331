//! The HTTP API listener: a small tokio runtime in its own threads, connection bounds, TLS, and the
//! choice of protocol per connection (HTTP/2 by ALPN over TLS or by its preface in cleartext, served
//! by [`super::http2`]; else HTTP/1.1 by hyper, [`super::http1`]), each with a watchdog (request
//! heads in time, idle close) and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::activity::{Activity, Tracked};
use super::backend::Backend;
use super::batch::Crossing;
use super::detect::{self, Proto, Rewind};
use super::routes::Ctx;
use super::{http1, http2};
use crate::config::HttpConfig;
use crate::metrics::{HttpMetrics, Metrics};
use crate::proto::Apps;

/// How long shutdown waits for open requests and connections before cutting them.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// What every connection of the listener shares.
pub(super) struct Shared {
    pub ctx: Arc<Ctx>,
    pub metrics: Arc<HttpMetrics>,
    pub http1: hyper::server::conn::http1::Builder,
    pub http2: h2::server::Builder,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: AtomicUsize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a connection's watchdog found on one of its ticks.
pub(super) enum Watch {
    Fine,
    /// No first request head in time, or a later HTTP/1.1 head that started and did not finish: close.
    HeadOverdue,
    /// Nothing in flight and no bytes for the idle timeout: close gracefully.
    Idle,
}

impl Shared {
    /// How often a connection's watchdog looks.
    pub fn watch_every(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 4).max(Duration::from_millis(10))
    }

    pub fn watch(&self, act: &Activity) -> Watch {
        if act.head_overdue(self.header_timeout) {
            debug!("HTTP connection: no complete request head within the header read timeout");
            Watch::HeadOverdue
        } else if act.in_flight.load(Ordering::Relaxed) == 0 && act.idle_for() >= self.idle_timeout {
            debug!("HTTP connection: idle");
            Watch::Idle
        } else {
            Watch::Fine
        }
    }

    /// What is left of the time for the first request head (TLS and protocol detection count).
    fn head_time_left(&self, act: &Activity) -> Duration {
        self.header_timeout.saturating_sub(act.start.elapsed())
    }
}

/// Binds `cfg.listen` and serves the HTTP API on its own runtime: one thread when `cfg.threads` is 1
/// (or 0 on one core), else an accepting thread and that many workers (0: one per core, at most 16).
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
    let mut rt = match cfg.runtime_threads() {
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
    let shared = Arc::new(Shared {
        ctx: Arc::new(Ctx {
            cfg: cfg.clone(),
            apps,
            backend,
            crossing: crossing.clone(),
            shutdown: stopped.clone(),
        }),
        metrics,
        http1: http1::builder(cfg),
        http2: http2::builder(cfg),
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

async fn serve(shared: &Arc<Shared>, sock: TcpStream, stopped: watch::Receiver<bool>) {
    let act = Arc::new(Activity::new());
    let io = Tracked { inner: sock, act: act.clone() };
    match &shared.tls {
        None => speak(shared, io, None, &act, stopped).await,
        Some(acceptor) => match tokio::time::timeout(shared.header_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => {
                let alpn = detect::from_alpn(tls.get_ref().1.alpn_protocol());
                speak(shared, tls, alpn, &act, stopped).await
            }
            Ok(Err(e)) => debug!("HTTP TLS handshake: {e}"),
            Err(_) => debug!("HTTP TLS handshake: timed out"),
        },
    }
}

/// Serves `io` in the protocol ALPN chose, else in the one its first bytes show.
async fn speak<I>(
    shared: &Arc<Shared>,
    io: I,
    alpn: Option<Proto>,
    act: &Arc<Activity>,
    stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (proto, io) = match alpn {
        Some(p) => (p, Rewind::new(io)),
        None => match tokio::time::timeout(shared.head_time_left(act), detect::sniff(io)).await {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(e)) => return debug!("HTTP connection: {e}"),
            Err(_) => return debug!("HTTP connection: no request head within the header read timeout"),
        },
    };
    match proto {
        Proto::Http1 => http1::serve(shared, io, act, stopped).await,
        Proto::Http2 => {
            act.on_http2();
            let handshake = shared.http2.handshake::<_, Bytes>(io);
            match tokio::time::timeout(shared.head_time_left(act), handshake).await {
                Ok(Ok(conn)) => http2::serve(shared, conn, act, stopped).await,
                Ok(Err(e)) => debug!("HTTP/2 handshake: {e}"),
                Err(_) => debug!("HTTP/2 handshake: timed out"),
            }
        }
    }
}
