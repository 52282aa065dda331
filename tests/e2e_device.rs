//! Device-side behaviour over loopback: tokens, offline queue, expiry,
//! collapse, ordering, replacement, heartbeats and idle timeout, shards.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use pushgate::proto::{Frame, GoAwayReason, Status, Token, PRIORITY_HIGH, PRIORITY_NORMAL};

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32
}

fn push(
    prov: &mut Raw,
    req_id: u32,
    token: Token,
    expiry: u32,
    collapse: &[u8],
    payload: &[u8],
) -> (Status, u64) {
    push_prio(prov, req_id, token, PRIORITY_HIGH, expiry, collapse, payload)
}

fn push_prio(
    prov: &mut Raw,
    req_id: u32,
    token: Token,
    priority: u8,
    expiry: u32,
    collapse: &[u8],
    payload: &[u8],
) -> (Status, u64) {
    let (status, msg_id, _) = prov.push(with_note(push_frame(req_id, token, expiry, payload), |n| {
        n.priority = priority;
        n.collapse = collapse;
    }));
    (status, msg_id)
}

fn notify(dev: &mut Raw) -> (u64, Vec<u8>) {
    dev.expect(|f| match f {
        Frame::Notify { msg_id, payload, .. } => (msg_id, payload.to_vec()),
        other => panic!("expected NOTIFY, got {other:?}"),
    })
}

fn provider(gw: &pushgate::gateway::Gateway) -> Raw {
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    p
}

#[test]
fn reconnect_keeps_the_token_and_other_secrets_get_other_tokens() {
    let gw = start_gateway(test_config(2));
    let (t1, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("a"), 0);
    let (t2, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("a"), 0);
    let (t3, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("b"), 0);
    let (t4, _, _) = Raw::connect(gw.device_addr).hello(OTHER_APP, &secret("a"), 0);
    assert_eq!(t1, t2);
    assert_ne!(t1, t3);
    assert_ne!(t1, t4, "the same secret in another app is another token");
}

#[test]
fn gateway_restart_keeps_the_token() {
    let gw = start_gateway(test_config(2));
    let (t1, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("r"), 0);
    gw.drain();
    gw.join();
    let gw = start_gateway(test_config(3));
    let (t2, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("r"), 0);
    assert_eq!(t1, t2, "same key, same token, whatever the shard count");
}

#[test]
fn offline_queue_is_delivered_in_order_on_connect_with_expiry_and_collapse() {
    let gw = start_gateway(test_config(2));
    let (token, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("offline"), 0);
    assert!(wait_until(Duration::from_secs(2), || gw.devices_per_shard().iter().sum::<usize>() == 0));
    let mut p = provider(&gw);
    let later = unix_now() + 3600;
    assert_eq!(push(&mut p, 1, token, later, b"", b"one").0, Status::QUEUED);
    assert_eq!(push(&mut p, 2, token, later, b"score", b"score 1-0").0, Status::QUEUED);
    assert_eq!(push(&mut p, 3, token, 0, b"", b"now or never").0, Status::NOT_DELIVERED);
    assert_eq!(push(&mut p, 4, token, unix_now() - 10, b"", b"already expired").0, Status::NOT_DELIVERED);
    assert_eq!(push(&mut p, 5, token, unix_now() + 1, b"", b"short-lived").0, Status::QUEUED);
    assert_eq!(push(&mut p, 6, token, later, b"score", b"score 2-0").0, Status::QUEUED);
    assert_eq!(push(&mut p, 7, token, later, b"", b"two").0, Status::QUEUED);
    std::thread::sleep(Duration::from_millis(2100)); // let "short-lived" expire
    let mut dev = Raw::connect(gw.device_addr);
    dev.hello(APP, &secret("offline"), 0);
    let got: Vec<Vec<u8>> = (0..3).map(|_| notify(&mut dev).1).collect();
    assert_eq!(got, vec![b"one".to_vec(), b"score 2-0".to_vec(), b"two".to_vec()]);
    assert_eq!(dev.recv(Duration::from_millis(300)), Got::Timeout, "nothing else arrives");
}

#[test]
fn unacked_notifications_come_back_after_reconnect_and_acked_ones_do_not() {
    let gw = start_gateway(test_config(2));
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("redeliver"), 0);
    let mut p = provider(&gw);
    let later = unix_now() + 3600;
    let (s1, id1) = push(&mut p, 1, token, later, b"", b"first");
    let (s2, id2) = push(&mut p, 2, token, later, b"", b"second");
    assert_eq!((s1, s2), (Status::DELIVERED, Status::DELIVERED));
    assert!(id2 > id1, "ids grow in acceptance order");
    assert_eq!(notify(&mut dev), (id1, b"first".to_vec()));
    assert_eq!(notify(&mut dev), (id2, b"second".to_vec()));
    dev.send(&Frame::Ack { msg_id: id1 });
    dev.send(&Frame::Ping);
    dev.expect(|f| assert_eq!(f, Frame::Pong));
    drop(dev);
    let mut dev = Raw::connect(gw.device_addr);
    dev.hello(APP, &secret("redeliver"), 0);
    assert_eq!(notify(&mut dev), (id2, b"second".to_vec()), "unacked comes again, same id");
    assert_eq!(dev.recv(Duration::from_millis(300)), Got::Timeout);
}

#[test]
fn queue_cap_drops_the_oldest_and_welcome_reports_missed() {
    let mut cfg = test_config(1);
    cfg.limits.device_queue_cap = 3;
    let gw = start_gateway(cfg);
    let (token, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("cap"), 0);
    assert!(wait_until(Duration::from_secs(2), || gw.devices_per_shard().iter().sum::<usize>() == 0));
    let mut p = provider(&gw);
    for i in 0..5u32 {
        assert_eq!(
            push(&mut p, i, token, unix_now() + 600, b"", format!("m{i}").as_bytes()).0,
            Status::QUEUED
        );
    }
    let mut dev = Raw::connect(gw.device_addr);
    let (_, _, missed) = dev.hello(APP, &secret("cap"), 0);
    assert_eq!(missed, 2);
    let got: Vec<Vec<u8>> = (0..3).map(|_| notify(&mut dev).1).collect();
    assert_eq!(got, vec![b"m2".to_vec(), b"m3".to_vec(), b"m4".to_vec()]);
}

#[test]
fn order_holds_across_priorities_and_normal_priority_is_coalesced() {
    let gw = start_gateway(test_config(2));
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("order"), 0);
    let mut p = provider(&gw);
    let later = unix_now() + 600;
    for i in 0..20u32 {
        let prio = if i % 3 == 0 { PRIORITY_HIGH } else { PRIORITY_NORMAL };
        let (st, _) = push_prio(&mut p, i, token, prio, later, b"", format!("{i}").as_bytes());
        assert_eq!(st, Status::DELIVERED);
    }
    let mut last = 0;
    for i in 0..20u32 {
        let (id, payload) = notify(&mut dev);
        assert_eq!(payload, format!("{i}").into_bytes());
        assert!(id > last);
        last = id;
        dev.send(&Frame::Ack { msg_id: id });
    }
    // A lone normal-priority notification is held up to the coalescing delay (100 ms in tests).
    let (st, _) = push_prio(&mut p, 99, token, PRIORITY_NORMAL, later, b"", b"held");
    assert_eq!(st, Status::DELIVERED);
    assert_eq!(notify(&mut dev).1, b"held".to_vec());
}

#[test]
fn in_flight_window_holds_back_until_acks() {
    let mut cfg = test_config(1);
    cfg.limits.device_max_in_flight = 4;
    let gw = start_gateway(cfg);
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("window"), 0);
    let mut p = provider(&gw);
    let statuses: Vec<Status> =
        (0..6u32).map(|i| push(&mut p, i, token, unix_now() + 600, b"", b"x").0).collect();
    assert_eq!(&statuses[..4], &[Status::DELIVERED; 4]);
    assert_eq!(&statuses[4..], &[Status::QUEUED; 2], "beyond the window: stored, sent after acks");
    assert_eq!(push(&mut p, 9, token, 0, b"", b"now").0, Status::NOT_DELIVERED, "window full: never");
    let ids: Vec<u64> = (0..4).map(|_| notify(&mut dev).0).collect();
    assert_eq!(dev.recv(Duration::from_millis(200)), Got::Timeout);
    dev.send(&Frame::Ack { msg_id: ids[0] });
    dev.send(&Frame::Ack { msg_id: ids[1] });
    notify(&mut dev);
    notify(&mut dev);
}

#[test]
fn second_connection_with_the_same_credential_replaces_the_first() {
    let gw = start_gateway(test_config(2));
    let mut old = Raw::connect(gw.device_addr);
    let (token, _, _) = old.hello(APP, &secret("dup"), 0);
    let mut new = Raw::connect(gw.device_addr);
    assert_eq!(new.hello(APP, &secret("dup"), 0).0, token);
    old.expect(|f| assert_eq!(f, Frame::GoAway { reason: GoAwayReason::REPLACED, reconnect_ms: 0 }));
    assert!(old.closed_within(Duration::from_secs(3)));
    let mut p = provider(&gw);
    assert_eq!(push(&mut p, 1, token, 0, b"", b"to the new one").0, Status::DELIVERED);
    assert_eq!(notify(&mut new).1, b"to the new one".to_vec());
    assert!(wait_until(Duration::from_secs(3), || gw.devices_per_shard().iter().sum::<usize>() == 1));
}

#[test]
fn heartbeat_is_negotiated_and_silence_ends_in_idle_timeout() {
    let mut cfg = test_config(1);
    cfg.heartbeat.max_s = 600;
    let gw = start_gateway(cfg);
    assert_eq!(Raw::connect(gw.device_addr).hello(APP, &secret("h1"), 0).1, 60, "0 gets the default");
    assert_eq!(Raw::connect(gw.device_addr).hello(APP, &secret("h2"), 5000).1, 600, "clamped to max");
    let mut alive = Raw::connect(gw.device_addr);
    assert_eq!(alive.hello(APP, &secret("alive"), 1).1, 1);
    let mut silent = Raw::connect(gw.device_addr);
    silent.hello(APP, &secret("silent"), 1);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        alive.send(&Frame::Ping);
        alive.expect(|f| assert_eq!(f, Frame::Pong));
    }
    silent.expect(|f| assert_eq!(f, Frame::GoAway { reason: GoAwayReason::IDLE_TIMEOUT, reconnect_ms: 0 }));
    assert!(silent.closed_within(Duration::from_secs(3)));
    alive.send(&Frame::Ping);
    alive.expect(|f| assert_eq!(f, Frame::Pong));
}

#[test]
fn devices_land_on_every_shard_and_pushes_reach_each() {
    let shards = 3;
    let gw = start_gateway(test_config(shards));
    let mut p = provider(&gw);
    let mut devs = Vec::new();
    for i in 0..30 {
        let mut d = Raw::connect(gw.device_addr);
        let (t, _, _) = d.hello(APP, &secret(&format!("spread{i}")), 0);
        devs.push((d, t));
    }
    let per_shard = gw.devices_per_shard();
    assert_eq!(per_shard.iter().sum::<usize>(), 30);
    assert!(per_shard.iter().all(|&n| n > 0), "every shard owns devices: {per_shard:?}");
    for (i, (d, t)) in devs.iter_mut().enumerate() {
        assert!(gw.devices_per_shard()[t.shard(shards)] > 0);
        let (st, id) = push(&mut p, i as u32, *t, 0, b"", format!("to {i}").as_bytes());
        assert_eq!(st, Status::DELIVERED);
        assert_eq!(notify(d), (id, format!("to {i}").into_bytes()));
    }
}

#[test]
fn drain_sends_goaway_with_spread_reconnect_hints_and_refuses_new_connections() {
    let gw = start_gateway(test_config(2));
    let mut devs: Vec<Raw> = (0..10)
        .map(|i| {
            let mut d = Raw::connect(gw.device_addr);
            d.hello(APP, &secret(&format!("drain{i}")), 0);
            d
        })
        .collect();
    let mut p = provider(&gw);
    gw.drain();
    let mut hints = Vec::new();
    for d in &mut devs {
        d.expect(|f| match f {
            Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms } => hints.push(reconnect_ms),
            other => panic!("{other:?}"),
        });
    }
    assert!(hints.iter().all(|&h| h <= 1000));
    assert!(hints.iter().any(|&h| h != hints[0]), "hints are spread: {hints:?}");
    p.expect(|f| assert!(matches!(f, Frame::GoAway { reason: GoAwayReason::SHUTDOWN, .. })));
    drop(devs);
    drop(p);
    let addr = gw.device_addr;
    gw.join();
    assert!(std::net::TcpStream::connect(addr).is_err(), "a drained gateway accepts nothing");
}
