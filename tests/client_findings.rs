//! What an independent client, written from protocol.md alone, found wrong,
//! each as a check over real sockets: a FIN that comes with the last frame,
//! an undefined frame type, node-wide bursts, what `missed` counts, and the
//! delivery latency when provider and device share a shard.

mod common;

use std::collections::HashSet;
use std::net::Shutdown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use pushgate::config::Config;
use pushgate::gateway::Gateway;
use pushgate::metrics::Limit;
use pushgate::proto::{ErrorCode, Frame, GoAwayReason, Status};
use pushgate::store::durable::open_durable;

fn in_an_hour() -> u32 {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600) as u32
}

fn devices(gw: &Gateway) -> usize {
    gw.devices_per_shard().iter().sum()
}

fn providers(gw: &Gateway) -> i64 {
    let m = &gw.shared.metrics;
    (0..m.shards()).map(|i| m.shard(i).providers()).sum()
}

fn notify_id(d: &mut Raw) -> u64 {
    d.expect(|f| match f {
        Frame::Notify { msg_id, .. } => msg_id,
        other => panic!("expected NOTIFY, got {other:?}"),
    })
}

/// Sends `frame` and the FIN in one go, as a client that is done would.
fn send_and_close(d: Raw, frame: &Frame<'_>) {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    let mut s = d.stream;
    std::io::Write::write_all(&mut s, &bytes).unwrap();
    s.shutdown(Shutdown::Both).unwrap();
}

#[test]
fn a_close_right_after_the_last_frame_is_noticed_at_once() {
    let gw = start_gateway(test_config(2));
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    for round in 0..30u32 {
        let label = format!("fin{round}");
        let mut d = Raw::connect(gw.device_addr);
        // A long heartbeat: only noticing the FIN can free the connection in time.
        let (token, _, _) = d.hello(APP, &secret(&label), 600);
        assert_eq!(p.push(push_frame(round * 3, token, in_an_hour(), b"x")).0, Status::DELIVERED);
        let id = notify_id(&mut d);
        send_and_close(d, &Frame::Ack { msg_id: id });
        assert!(
            wait_until(Duration::from_secs(2), || devices(&gw) == 0),
            "round {round}: the closed device is still counted connected"
        );
        let (status, _, _) = p.push(push_frame(round * 3 + 1, token, 0, b"now or never"));
        assert_eq!(status, Status::NOT_DELIVERED, "round {round}: a closed connection got `delivered`");
        // The ACK that came with the FIN was handled: nothing waits for the device.
        let mut again = Raw::connect(gw.device_addr);
        again.hello(APP, &secret(&label), 600);
        assert!(matches!(again.recv(Duration::from_millis(200)), Got::Timeout), "round {round}: ACK lost");
    }
    // A provider that subscribes to receipts and closes at once is gone at once too.
    for _ in 0..10 {
        let mut q = Raw::connect(gw.provider_addr);
        q.login(APP, APP_SECRET);
        send_and_close(q, &Frame::SubscribeReceipts);
        assert!(
            wait_until(Duration::from_secs(2), || providers(&gw) == 1),
            "the closed provider is still counted"
        );
    }
}

fn expect_error(c: &mut Raw, code: ErrorCode, within: Duration) {
    match c.recv(within) {
        Got::Frame(b) => {
            let (raw, _) = pushgate::proto::split_frame(&b, 1 << 16).unwrap().unwrap();
            match Frame::parse(raw).unwrap() {
                Frame::Error { code: got, .. } => assert_eq!(got, code),
                other => panic!("expected ERROR {code:?}, got {other:?}"),
            }
        }
        other => panic!("expected ERROR {code:?} within {within:?}, got {other:?}"),
    }
}

#[test]
fn an_undefined_frame_type_is_refused_before_its_body() {
    let gw = start_gateway(test_config(1));
    // The handshake deadline here is 2 s: the answer must come long before it.
    let quick = Duration::from_millis(800);
    let mut d = Raw::connect(gw.device_addr);
    d.send_bytes(&[0x0e, 0x05]);
    expect_error(&mut d, ErrorCode::UNKNOWN_FRAME_TYPE, quick);
    let mut ready = Raw::connect(gw.device_addr);
    ready.hello(APP, &secret("undefined"), 0);
    ready.send_bytes(&[0x7f]);
    expect_error(&mut ready, ErrorCode::UNKNOWN_FRAME_TYPE, quick);
    let mut p = Raw::connect(gw.provider_addr);
    p.send_bytes(&[0x01, 0x40]); // HELLO is a device-port type
    expect_error(&mut p, ErrorCode::UNKNOWN_FRAME_TYPE, quick);
}

#[test]
fn bursts_are_the_nodes_whatever_the_shard_count() {
    let mut cfg = test_config(2);
    cfg.limits.pushes_per_app_per_s = 1;
    cfg.limits.pushes_per_app_burst = 20;
    cfg.limits.connections_per_source_per_s = 1;
    cfg.limits.connections_per_source_burst = 20;
    let gw = start_gateway(cfg);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..26 {
        let mut c = connect_from("127.0.0.9", gw.device_addr);
        c.send(&Frame::Hello(pushgate::proto::Hello {
            version: 1,
            keepalive_s: 0,
            app_id: APP,
            secret: &secret(&format!("burst{i}")),
        }));
        let welcomed = c.expect(|f| match f {
            Frame::Welcome { token, .. } => Some(token),
            Frame::GoAway { reason: GoAwayReason::RATE_LIMITED, .. } => None,
            other => panic!("{other:?}"),
        });
        match welcomed {
            Some(token) => admitted.push((token, c)),
            None => refused += 1,
        }
    }
    assert_eq!((admitted.len(), refused), (20, 6), "connections_per_source_burst = 20 admits 20");
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    let token = admitted[0].0;
    let statuses: Vec<Status> = (0..30).map(|i| p.push(push_frame(i, token, 0, b"b")).0).collect();
    let limited = statuses.iter().filter(|&&s| s == Status::RATE_LIMITED).count();
    assert_eq!(limited, 10, "pushes_per_app_burst = 20 lets 20 of 30 through: {statuses:?}");
}

fn durable_gateway(cfg: Config, dir: &std::path::Path) -> Gateway {
    let stores = open_durable(dir, cfg.shard_count(), cfg.limits.device_queue_cap).unwrap();
    Gateway::start(cfg, test_key(), stores).unwrap()
}

#[test]
fn missed_counts_only_what_the_device_never_got() {
    for durable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config(1);
        let (cap, window) = (cfg.limits.device_queue_cap, cfg.limits.device_max_in_flight as usize);
        let gw = if durable { durable_gateway(cfg, dir.path()) } else { start_gateway(cfg) };
        let mut d = Raw::connect(gw.device_addr);
        let (token, _, _) = d.hello(APP, &secret("missed"), 0);
        let mut p = Raw::connect(gw.provider_addr);
        p.login(APP, APP_SECRET);
        let sent = 500u32;
        for i in 0..sent {
            let status = p.push(push_frame(i, token, in_an_hour(), b"m")).0;
            assert!(matches!(status, Status::DELIVERED | Status::QUEUED), "{status:?}");
        }
        let mut arrived = HashSet::new();
        for _ in 0..window {
            arrived.insert(notify_id(&mut d));
        }
        drop(d);
        assert!(wait_until(Duration::from_secs(2), || devices(&gw) == 0));
        let mut d = Raw::connect(gw.device_addr);
        let (_, _, missed) = d.hello(APP, &secret("missed"), 0);
        while let Got::Frame(b) = d.recv(Duration::from_millis(300)) {
            let (raw, _) = pushgate::proto::split_frame(&b, 1 << 16).unwrap().unwrap();
            if let Frame::Notify { msg_id, .. } = Frame::parse(raw).unwrap() {
                arrived.insert(msg_id);
                d.send(&Frame::Ack { msg_id });
            }
        }
        let total = arrived.len() + missed as usize;
        assert!(
            total <= sent as usize,
            "durable={durable}: {} arrived + {missed} missed > {sent}",
            arrived.len()
        );
        // Exactly: the window's worth, then the cap's, and the rest was dropped unseen.
        assert_eq!(arrived.len(), window + cap, "durable={durable}");
        assert_eq!(missed as usize, sent as usize - window - cap, "durable={durable}");
        let m = &gw.shared.metrics;
        let overflow: u64 = (0..m.shards()).map(|i| m.shard(i).limit_hits(Limit::QueueOverflow)).sum();
        assert_eq!(
            overflow as usize,
            sent as usize - cap,
            "durable={durable}: every message the cap removed"
        );
    }
}

#[test]
fn delivery_latency_is_measured_when_provider_and_device_share_a_shard() {
    let gw = start_gateway(test_config(1));
    let mut d = Raw::connect(gw.device_addr);
    let (token, _, _) = d.hello(APP, &secret("latency"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    for i in 0..50 {
        assert_eq!(p.push(push_frame(i, token, 0, b"l")).0, Status::DELIVERED);
        let id = notify_id(&mut d);
        d.send(&Frame::Ack { msg_id: id });
    }
    let text = gw.shared.metrics.render();
    let line = |name: &str| -> f64 {
        let l = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(line("pushgate_delivery_latency_seconds_count{shard=\"0\"}"), 50.0);
    assert!(line("pushgate_delivery_latency_seconds_sum{shard=\"0\"}") > 0.0, "latency recorded as 0");
}
