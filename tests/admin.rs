//! The admin listener over loopback: metrics move, readiness flips, drain is
//! called, bad requests are bounded, and promtool accepts the exposition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate::admin::{self, AdminHandle, REQUEST_TIMEOUT};
use pushgate::metrics::{Close, Limit, Metrics, Role};
use pushgate::proto::{ErrorCode, GoAwayReason, Status};

struct Admin {
    handle: AdminHandle,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    drains: Arc<AtomicUsize>,
}

fn start(shards: usize) -> Admin {
    let metrics = Metrics::new(shards);
    let draining = Arc::new(AtomicBool::new(false));
    let drains = Arc::new(AtomicUsize::new(0));
    let ready = {
        let draining = draining.clone();
        Arc::new(move || !draining.load(Ordering::Acquire))
    };
    let drain = {
        let (draining, drains) = (draining.clone(), drains.clone());
        Arc::new(move || {
            drains.fetch_add(1, Ordering::AcqRel);
            draining.store(true, Ordering::Release);
        })
    };
    let handle = admin::start("127.0.0.1:0".parse().unwrap(), metrics.clone(), ready, drain).unwrap();
    Admin { handle, metrics, draining, drains }
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `raw` as is and reads until the server closes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Response {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head:?}"));
    let resp = Response { status, head: head.to_string(), body: body.to_string() };
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, resp.body.len(), "content-length");
    resp
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    exchange(addr, format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
}

/// The value of the one sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    let mut found = text.lines().filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
    let v = found.next().unwrap_or_else(|| panic!("no {series}"));
    assert!(found.next().is_none(), "{series} twice");
    v.parse().unwrap()
}

#[test]
fn metrics_series_move_between_scrapes() {
    let a = start(2);
    let addr = a.handle.local_addr();
    let first = request(addr, "GET", "/metrics");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let delivered = "pushgate_pushes_total{shard=\"1\",status=\"delivered\"}";
    let devices = "pushgate_devices_connected{shard=\"1\"}";
    let latency = "pushgate_delivery_latency_seconds_count{shard=\"1\"}";
    assert_eq!(sample(&first.body, delivered), 0.0);
    assert_eq!(sample(&first.body, devices), 0.0);

    let s = a.metrics.writer(1);
    for _ in 0..3 {
        s.on_push(Status::DELIVERED);
    }
    s.on_ready(Role::Device);
    s.observe_delivery(Duration::from_micros(300));
    let second = request(addr, "GET", "/metrics?name[]=x").body;
    assert_eq!(sample(&second, delivered), 3.0);
    assert_eq!(sample(&second, devices), 1.0);
    assert_eq!(sample(&second, latency), 1.0);
    assert_eq!(sample(&second, "pushgate_pushes_total{shard=\"0\",status=\"delivered\"}"), 0.0);
    a.handle.stop();
}

#[test]
fn readyz_turns_503_while_draining_and_healthz_stays_ok() {
    let a = start(1);
    let addr = a.handle.local_addr();
    assert_eq!(request(addr, "GET", "/readyz").status, 200);
    assert_eq!(request(addr, "GET", "/healthz").status, 200);
    a.draining.store(true, Ordering::Release);
    assert_eq!(request(addr, "GET", "/readyz").status, 503);
    let health = request(addr, "GET", "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
}

#[test]
fn post_drain_calls_the_callback_and_other_methods_do_not() {
    let a = start(1);
    let addr = a.handle.local_addr();
    let get = request(addr, "GET", "/drain");
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    assert_eq!(a.drains.load(Ordering::Acquire), 0);
    let post = exchange(addr, b"POST /drain HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(post.status, 202);
    assert_eq!(a.drains.load(Ordering::Acquire), 1);
    assert_eq!(request(addr, "GET", "/readyz").status, 503);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let a = start(1);
    let addr = a.handle.local_addr();
    assert_eq!(request(addr, "GET", "/").status, 404);
    assert_eq!(request(addr, "GET", "/metricsx").status, 404);
    assert_eq!(request(addr, "POST", "/admin/drain").status, 404);
    let post = request(addr, "POST", "/metrics");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    assert_eq!(exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").status, 400);
    assert_eq!(a.drains.load(Ordering::Acquire), 0);
}

#[test]
fn oversized_requests_are_refused_unread() {
    let a = start(1);
    let addr = a.handle.local_addr();
    let big_body = exchange(addr, b"POST /drain HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    assert_eq!(big_body.status, 413);
    let chunked = exchange(addr, b"POST /drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(chunked.status, 413);
    assert_eq!(a.drains.load(Ordering::Acquire), 0, "a refused request must not drain");

    // A header line that never ends: refused once the head passes the limit.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Filler: ").unwrap();
    let filler = [b'a'; 512];
    let mut sent = 0;
    while sent <= admin::MAX_HEAD && s.write_all(&filler).is_ok() {
        sent += filler.len();
    }
    assert_eq!(read_response(&mut s).status, 431);

    let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
    let too_many = exchange(addr, format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(too_many.status, 431);
}

#[test]
fn a_stalled_client_times_out_and_does_not_block_others() {
    let a = start(1);
    let addr = a.handle.local_addr();
    let started = Instant::now();
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(REQUEST_TIMEOUT * 5)).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    // The other worker serves meanwhile.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(request(addr, "GET", "/healthz").status, 200);
    assert!(started.elapsed() < REQUEST_TIMEOUT, "served while the stalled client still held a worker");
    let resp = read_response(&mut stalled);
    assert_eq!(resp.status, 408);
    let took = started.elapsed();
    assert!(took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT * 3, "timed out after {took:?}");
}

#[test]
fn stop_closes_the_port() {
    let a = start(1);
    let addr = a.handle.local_addr();
    assert_eq!(request(addr, "GET", "/healthz").status, 200);
    let started = Instant::now();
    a.handle.stop();
    assert!(started.elapsed() < REQUEST_TIMEOUT, "stop took {:?}", started.elapsed());
    let err = TcpStream::connect(addr).expect_err("the admin port still accepts after stop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn promtool_accepts_the_exposition() {
    let a = start(3);
    let s = a.metrics.writer(2);
    s.on_handshake(Role::Provider, Err(ErrorCode::AUTH_FAILED));
    s.on_close(Role::Device, Close::GoAway(GoAwayReason::SLOW_CONSUMER));
    s.on_limit(Limit::ServerFull);
    s.on_store_sync(Duration::from_micros(40), true);
    s.observe_delivery(Duration::from_millis(2));
    s.set_stored(12);
    let body = request(a.handle.local_addr(), "GET", "/metrics").body;

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED promtool check: promtool is not on PATH (Debian package `prometheus`)");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}",
        out.status
    );
}
