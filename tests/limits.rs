//! Limits that protect a node, each with its status and its counter, and
//! PROXY protocol headers from a load balancer.

mod common;

use pushgate::metrics::Limit;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pushgate::gateway::Gateway;
use pushgate::proto::{ErrorCode, Frame, GoAwayReason, Status, Token};

fn hits(gw: &Gateway, limit: Limit) -> u64 {
    let m = &gw.shared.metrics;
    (0..m.shards()).map(|i| m.shard(i).limit_hits(limit)).sum()
}

fn push(p: &mut Raw, req_id: u32, token: Token) -> (Status, u64) {
    let (status, _, info) = p.push(push_frame(req_id, token, 0, b"r"));
    (status, info)
}

#[test]
fn connections_per_source_are_rate_limited_with_a_retry_hint() {
    let mut cfg = test_config(1);
    cfg.limits.connections_per_source_per_s = 2;
    cfg.limits.connections_per_source_burst = 3;
    let gw = start_gateway(cfg);
    let mut ok = Vec::new();
    for i in 0..3 {
        let mut d = connect_from("127.0.0.1", gw.device_addr);
        d.hello(APP, &secret(&format!("rate{i}")), 0);
        ok.push(d);
    }
    let mut over = connect_from("127.0.0.1", gw.device_addr);
    let hint = over.expect(|f| match f {
        Frame::GoAway { reason: GoAwayReason::RATE_LIMITED, reconnect_ms } => reconnect_ms,
        other => panic!("{other:?}"),
    });
    assert!(hint > 0 && hint <= 500, "about one token's wait at 2/s: {hint}");
    assert!(wait_until(Duration::from_secs(2), || hits(&gw, Limit::HandshakeRate) == 1));
    // Another source address has its own budget.
    let mut other = connect_from("127.0.0.2", gw.device_addr);
    other.hello(APP, &secret("rate-other"), 0);
    // And the first one recovers at the configured rate.
    std::thread::sleep(Duration::from_millis(600));
    let mut again = connect_from("127.0.0.1", gw.device_addr);
    again.hello(APP, &secret("rate-again"), 0);
}

#[test]
fn pushes_per_app_are_rate_limited_and_other_apps_are_not() {
    let mut cfg = test_config(1);
    cfg.limits.pushes_per_app_per_s = 5;
    cfg.limits.pushes_per_app_burst = 5;
    let gw = start_gateway(cfg);
    let (token, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("pr"), 0);
    let mut other_dev = Raw::connect(gw.device_addr);
    let (other_token, _, _) = other_dev.hello(OTHER_APP, &secret("pr2"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    for i in 0..5 {
        assert_ne!(push(&mut p, i, token).0, Status::RATE_LIMITED);
    }
    let (status, retry) = push(&mut p, 9, token);
    assert_eq!(status, Status::RATE_LIMITED);
    assert!(retry > 0 && retry <= 200, "{retry}");
    assert_eq!(hits(&gw, Limit::RateLimited), 1);
    let mut q = Raw::connect(gw.provider_addr);
    q.login(OTHER_APP, OTHER_SECRET);
    assert_eq!(push(&mut q, 1, other_token).0, Status::DELIVERED);
}

#[test]
fn max_devices_refuses_new_devices_but_not_a_reconnecting_one() {
    let mut cfg = test_config(2);
    cfg.limits.max_devices = 2;
    cfg.limits.server_full_retry_ms = 777;
    let gw = start_gateway(cfg);
    let mut a = Raw::connect(gw.device_addr);
    a.hello(APP, &secret("md-a"), 0);
    let mut b = Raw::connect(gw.device_addr);
    b.hello(APP, &secret("md-b"), 0);
    let mut c = Raw::connect(gw.device_addr);
    c.send(&Frame::Hello(pushgate::proto::Hello {
        version: 1,
        keepalive_s: 0,
        app_id: APP,
        secret: &secret("md-c"),
    }));
    c.expect(|f| assert_eq!(f, Frame::GoAway { reason: GoAwayReason::SERVER_FULL, reconnect_ms: 777 }));
    // The same device coming back replaces itself: not a new device.
    let mut a2 = Raw::connect(gw.device_addr);
    a2.hello(APP, &secret("md-a"), 0);
    assert!(hits(&gw, Limit::ServerFull) >= 1);
}

fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else { panic!("v4 only here") };
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v.extend_from_slice(&s.ip().octets());
    v.extend_from_slice(&d.ip().octets());
    v.extend_from_slice(&s.port().to_be_bytes());
    v.extend_from_slice(&d.port().to_be_bytes());
    v
}

#[test]
fn proxy_protocol_headers_are_required_and_their_source_is_what_limits_see() {
    let mut cfg = test_config(1);
    cfg.server.device_proxy_protocol = true;
    cfg.server.provider_proxy_protocol = true;
    cfg.limits.connections_per_source_per_s = 1;
    cfg.limits.connections_per_source_burst = 2;
    let gw = start_gateway(cfg);
    // v1 and v2 headers from the same original client: two connections pass, the third is limited.
    let mut d1 = Raw::connect(gw.device_addr);
    d1.send_bytes(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 7700\r\n");
    let (token, _, _) = d1.hello(APP, &secret("px1"), 0);
    let mut d2 = Raw::connect(gw.device_addr);
    d2.send_bytes(&proxy_v2("203.0.113.7:40001".parse().unwrap(), "10.0.0.1:7700".parse().unwrap()));
    d2.hello(APP, &secret("px2"), 0);
    let mut d3 = Raw::connect(gw.device_addr);
    d3.send_bytes(b"PROXY TCP4 203.0.113.7 10.0.0.1 40002 7700\r\n");
    d3.expect(|f| assert!(matches!(f, Frame::GoAway { reason: GoAwayReason::RATE_LIMITED, .. })));
    // A different original client through the same balancer is admitted.
    let mut p = Raw::connect(gw.provider_addr);
    p.send_bytes(b"PROXY TCP4 198.51.100.9 10.0.0.1 50000 7701\r\n");
    p.login(APP, APP_SECRET);
    assert_eq!(push(&mut p, 1, token).0, Status::DELIVERED);
    // Without a header, a proxied listener refuses clearly.
    let mut bare = Raw::connect(gw.device_addr);
    bare.hello_bytes_only(APP, &secret("bare"));
    bare.expect(|f| match f {
        Frame::Error { code, text } => {
            assert_eq!(code, ErrorCode::MALFORMED_FRAME);
            assert!(text.contains("PROXY"), "{text}");
        }
        other => panic!("{other:?}"),
    });
    let text = gw.shared.metrics.render();
    assert!(
        text.lines().any(|l| l.starts_with("pushgate_handshakes_total{")
            && l.contains("malformed_frame")
            && !l.ends_with(" 0")),
        "the refused PROXY-less handshake is counted"
    );
}

trait HelloBytes {
    fn hello_bytes_only(&mut self, app: &str, secret: &[u8]);
}

impl HelloBytes for Raw {
    fn hello_bytes_only(&mut self, app: &str, secret: &[u8]) {
        self.send(&Frame::Hello(pushgate::proto::Hello { version: 1, keepalive_s: 0, app_id: app, secret }));
    }
}

#[test]
fn in_flight_handshake_and_connection_limits_each_count_when_they_bite() {
    let mut cfg = test_config(1);
    cfg.limits.provider_max_in_flight = 4;
    cfg.limits.handshake_timeout_ms = 300;
    cfg.limits.max_connections = 4;
    let gw = start_gateway(cfg);
    let mut d = Raw::connect(gw.device_addr);
    let (token, _, _) = d.hello(APP, &secret("lim"), 0);
    // In-flight per provider connection: 40 pipelined pushes against a window of 4.
    let mut p = Raw::connect(gw.provider_addr);
    assert_eq!(p.login(APP, APP_SECRET), 4);
    let mut batch = Vec::new();
    for i in 0..40u32 {
        Frame::Push(push_frame(i, token, u32::MAX, b"w")).encode(&mut batch);
    }
    p.send_bytes(&batch);
    for _ in 0..40 {
        p.expect(|f| assert!(matches!(f, Frame::Result { .. })));
    }
    assert!(hits(&gw, Limit::ProviderPaused) >= 1, "the provider was paused at its window");
    // Handshake deadline: a connection that never says HELLO.
    let mut silent = Raw::connect(gw.device_addr);
    silent.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::HANDSHAKE_TIMEOUT, .. })));
    let text = gw.shared.metrics.render();
    assert!(
        text.lines().any(|l| l.starts_with("pushgate_handshakes_total{")
            && l.contains("handshake_timeout")
            && !l.ends_with(" 0")),
        "handshake timeouts are counted"
    );
    // Connections: 3 open (device, provider, and one more); the 5th is refused.
    let _third = Raw::connect(gw.device_addr);
    let _fourth = Raw::connect(gw.device_addr);
    let mut fifth = Raw::connect(gw.device_addr);
    fifth.expect(|f| assert!(matches!(f, Frame::GoAway { reason: GoAwayReason::SERVER_FULL, .. })));
    assert!(hits(&gw, Limit::ServerFull) >= 1);
}
