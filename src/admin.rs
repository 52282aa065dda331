//! The admin HTTP listener: `/metrics` for Prometheus, `/healthz`, `/readyz`
//! and `POST /drain`, on its own (loopback by default) port.
//!
//! Deliberately small and bounded: two worker threads take turns accepting,
//! each serves one request per connection (`Connection: close`), a request
//! must arrive whole within [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD`] +
//! [`MAX_BODY`] bytes. `httparse` parses the head.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::metrics::{Metrics, CONTENT_TYPE};

/// Threads serving requests; a stalled client holds one for at most `REQUEST_TIMEOUT`.
pub const WORKERS: usize = 2;
/// Time for a whole request to arrive, and for each write of the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body; no endpoint reads one.
pub const MAX_BODY: usize = 1024;
const MAX_HEADERS: usize = 32;

/// Whether the gateway takes traffic: `/readyz` answers 200 while true, 503 while false.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;
/// Starts a drain; may be called more than once.
pub type DrainFn = Arc<dyn Fn() + Send + Sync>;

struct Ctx {
    metrics: Arc<Metrics>,
    ready: ReadyFn,
    drain: DrainFn,
    stop: AtomicBool,
}

/// A running admin listener; stopped by [`AdminHandle::stop`] or on drop.
pub struct AdminHandle {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds `addr` and starts serving. Port 0 picks a free port; see [`AdminHandle::local_addr`].
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: ReadyFn,
    drain: DrainFn,
) -> io::Result<AdminHandle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let ctx = Arc::new(Ctx { metrics, ready, drain, stop: AtomicBool::new(false) });
    let mut threads = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let listener = listener.try_clone()?;
        let ctx = ctx.clone();
        let t =
            std::thread::Builder::new().name(format!("admin-{i}")).spawn(move || serve(&listener, &ctx))?;
        threads.push(t);
    }
    log::info!("admin listener on http://{addr}/ (metrics, healthz, readyz, drain)");
    Ok(AdminHandle { addr, ctx, threads })
}

impl AdminHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the workers; a request being served finishes first.
    pub fn stop(self) {}
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::Release);
        // Each worker is blocked in accept(): one connection wakes one worker.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        for _ in &self.threads {
            let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), REQUEST_TIMEOUT);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, ctx: &Ctx) {
    while !ctx.stop.load(Ordering::Acquire) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                warn!("admin: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = handle(stream, ctx) {
            debug!("admin: connection ended: {e}");
        }
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// The method a 405 names in its `Allow` header.
    allow: Option<&'static str>,
}

fn text(status: u16, body: &str) -> Reply {
    Reply { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), allow: None }
}

fn handle(mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD + MAX_BODY];
    let mut len = 0;
    let reply = loop {
        let now = Instant::now();
        if now >= deadline {
            break text(408, "request timeout\n");
        }
        stream.set_read_timeout(Some(deadline - now))?;
        let limit = if len < MAX_HEAD { MAX_HEAD } else { buf.len() };
        let n = match stream.read(&mut buf[len..limit]) {
            Ok(0) => return Ok(()), // closed before a whole request arrived
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break text(408, "request timeout\n");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        match parse(&buf[..len]) {
            Parsed::Partial if len >= MAX_HEAD => break text(431, "request head too large\n"),
            Parsed::Partial | Parsed::NeedBody => {}
            Parsed::Bad => break text(400, "bad request\n"),
            Parsed::HeadTooLarge => break text(431, "request head too large\n"),
            Parsed::TooLarge => break text(413, "request body too large\n"),
            Parsed::Complete { method, path } => break route(ctx, method, path),
        }
    };
    respond(&mut stream, reply)
}

enum Parsed<'a> {
    Partial,
    NeedBody,
    Bad,
    HeadTooLarge,
    TooLarge,
    Complete { method: &'a str, path: &'a str },
}

fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::HeadTooLarge,
        Err(_) => return Parsed::Bad,
    };
    let mut body_len = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // No endpoint takes a body; a chunked one could be any length.
            return Parsed::TooLarge;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                Some(n) => body_len = n,
                None => return Parsed::Bad,
            }
        }
    }
    if body_len > MAX_BODY {
        return Parsed::TooLarge;
    }
    // Read the body even though it is ignored: closing with unread input resets the connection.
    if buf.len() < head_len + body_len {
        return Parsed::NeedBody;
    }
    match (req.method, req.path) {
        (Some(method), Some(path)) => Parsed::Complete { method, path },
        _ => Parsed::Bad,
    }
}

fn route(ctx: &Ctx, method: &str, path: &str) -> Reply {
    let path = path.split('?').next().unwrap_or(path);
    let (allowed, reply): (&str, fn(&Ctx) -> Reply) = match path {
        "/metrics" => ("GET", |ctx| Reply {
            status: 200,
            content_type: CONTENT_TYPE,
            body: ctx.metrics.render().into_bytes(),
            allow: None,
        }),
        "/healthz" => ("GET", |_| text(200, "ok\n")),
        "/readyz" => {
            ("GET", |ctx| if (ctx.ready)() { text(200, "ready\n") } else { text(503, "not ready\n") })
        }
        "/drain" => ("POST", |ctx| {
            log::info!("admin: drain requested");
            (ctx.drain)();
            text(202, "draining\n")
        }),
        _ => return text(404, "not found\n"),
    };
    if method == allowed {
        reply(ctx)
    } else {
        Reply { allow: Some(allowed), ..text(405, "method not allowed\n") }
    }
}

fn respond(stream: &mut TcpStream, reply: Reply) -> io::Result<()> {
    let Reply { status, content_type, body, allow } = reply;
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let allow = allow.map(|m| format!("Allow: {m}\r\n")).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}
