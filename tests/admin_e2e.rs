//! The admin listener on a live gateway: metrics move with traffic, failed
//! logins and cross-app pushes are counted, and readiness drops during a drain.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pushgate::admin::{self, DrainFn, ReadyFn};
use pushgate::proto::session::auth_proof;
use pushgate::proto::{ErrorCode, Frame, Status};

fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The value of the first series line starting with `prefix` and containing every `needles`, summed over shards.
fn value(text: &str, prefix: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_move_and_readiness_follows_the_drain() {
    let gw = start_gateway(test_config(2));
    let shared = gw.shared.clone();
    let ready: ReadyFn = {
        let s = shared.clone();
        Arc::new(move || !s.draining.load(Ordering::Acquire))
    };
    let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain: DrainFn = {
        let d = drained.clone();
        Arc::new(move || d.store(true, Ordering::Relaxed))
    };
    let adm = admin::start("127.0.0.1:0".parse().unwrap(), shared.metrics.clone(), ready, drain).unwrap();
    let a = adm.local_addr();
    assert_eq!(http(a, "GET", "/healthz").0, 200);
    assert_eq!(http(a, "GET", "/readyz").0, 200);
    let (_, before) = http(a, "GET", "/metrics");
    assert_eq!(value(&before, "pushgate_devices_connected", &[]), 0.0);

    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("m"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    for i in 0..3 {
        assert_eq!(p.push(push_frame(i, token, 0, b"metrics")).0, Status::DELIVERED);
    }
    // A cross-app push and a failed login.
    let mut other = Raw::connect(gw.provider_addr);
    other.login(OTHER_APP, OTHER_SECRET);
    assert_eq!(other.push(push_frame(1, token, 0, b"x")).0, Status::BAD_TOKEN);
    let mut bad = Raw::connect(gw.provider_addr);
    bad.send(&Frame::AuthHello { version: 1, app_id: APP });
    let nonce = bad.expect(|f| match f {
        Frame::Challenge { nonce } => nonce,
        other => panic!("{other:?}"),
    });
    bad.send(&Frame::Auth { proof: auth_proof(b"guessing-the-secret", APP, &nonce) });
    bad.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::AUTH_FAILED, .. })));

    assert!(wait_until(Duration::from_secs(3), || {
        let (_, t) = http(a, "GET", "/metrics");
        value(&t, "pushgate_pushes_total", &["status=\"delivered\""]) == 3.0
            && value(&t, "pushgate_pushes_total", &["status=\"bad_token\""]) == 1.0
            && value(&t, "pushgate_handshakes_total", &["role=\"provider\"", "auth_failed"]) == 1.0
            && value(&t, "pushgate_devices_connected", &[]) == 1.0
            && value(&t, "pushgate_notifications_delivered_total", &[]) == 3.0
            && value(&t, "pushgate_delivery_latency_seconds_count", &[]) == 3.0
    }));

    assert_eq!(http(a, "POST", "/drain").0, 202);
    assert!(drained.load(Ordering::Relaxed), "POST /drain reaches the gateway's drain hook");
    gw.drain();
    assert_eq!(http(a, "GET", "/readyz").0, 503, "not ready while draining");
    assert_eq!(http(a, "GET", "/healthz").0, 200, "still alive while draining");
    drop((dev, p, other, bad));
    gw.join();
    adm.stop();
}
