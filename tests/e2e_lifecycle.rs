//! Unregister and feedback, delivery receipts across provider reconnects.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use pushgate::proto::frame::{feedback_entries, FLAG_RECEIPT};
use pushgate::proto::{Frame, GoAwayReason, Status, Token};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn push(p: &mut Raw, req_id: u32, token: Token, flags: u8, expiry: u32) -> (Status, u64, u64) {
    p.push(with_note(push_frame(req_id, token, expiry, b"x"), |n| n.flags = flags))
}

fn provider(gw: &pushgate::gateway::Gateway, app: &str, secret: &str) -> Raw {
    let mut p = Raw::connect(gw.provider_addr);
    p.login(app, secret);
    p
}

fn subscriber(gw: &pushgate::gateway::Gateway, app: &str, secret: &str) -> Raw {
    let mut p = provider(gw, app, secret);
    p.send(&Frame::SubscribeReceipts);
    p
}

fn feedback(p: &mut Raw, req_id: u32, since_ms: u64) -> (bool, Vec<(Token, u64)>) {
    feedback_after(p, req_id, since_ms, Token([0; 24]))
}

fn feedback_after(p: &mut Raw, req_id: u32, since_ms: u64, after: Token) -> (bool, Vec<(Token, u64)>) {
    p.send(&Frame::Feedback { req_id, since_ms, after });
    p.expect(|f| match f {
        Frame::FeedbackResult { req_id: r, more, entries } if r == req_id => {
            (more, feedback_entries(entries).collect())
        }
        other => panic!("{other:?}"),
    })
}

#[test]
fn unregister_tombstones_the_token_until_it_registers_again() {
    let gw = start_gateway(test_config(2));
    let mut p = provider(&gw, APP, APP_SECRET);
    let start = unix_ms();
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("leaver"), 0);
    // Something waits for it when it leaves: it must not survive the unregister.
    let mut other = Raw::connect(gw.device_addr);
    let (other_token, _, _) = other.hello(OTHER_APP, &secret("stays"), 0);
    dev.send(&Frame::Unregister);
    dev.expect(|f| assert_eq!(f, Frame::GoAway { reason: GoAwayReason::UNREGISTERED, reconnect_ms: 0 }));
    assert!(dev.closed_within(Duration::from_secs(3)));

    let (status, msg_id, at) = push(&mut p, 1, token, 0, u32::MAX);
    assert_eq!((status, msg_id), (Status::UNREGISTERED, 0));
    assert!(at >= start && at <= unix_ms(), "info is the unregister time: {at}");

    let (more, list) = feedback(&mut p, 2, start);
    assert!(!more);
    assert_eq!(list, vec![(token, at)]);
    assert!(feedback(&mut p, 3, at + 1).1.is_empty(), "since is inclusive of later times only");
    // Another app's provider does not see this app's tombstones.
    let mut p2 = provider(&gw, OTHER_APP, OTHER_SECRET);
    assert!(feedback(&mut p2, 4, 0).1.is_empty());
    assert_eq!(push(&mut p2, 5, other_token, 0, 0).0, Status::DELIVERED);

    // Registering again lifts the tombstone.
    let mut back = Raw::connect(gw.device_addr);
    assert_eq!(back.hello(APP, &secret("leaver"), 0).0, token);
    assert_eq!(push(&mut p, 6, token, 0, 0).0, Status::DELIVERED);
    assert!(feedback(&mut p, 7, start).1.is_empty());
}

#[test]
fn feedback_pages_through_many_tombstones_across_shards() {
    let gw = start_gateway(test_config(3));
    let mut p = provider(&gw, APP, APP_SECRET);
    let mut expected = Vec::new();
    for i in 0..850 {
        let mut d = Raw::connect(gw.device_addr);
        let (t, _, _) = d.hello(APP, &secret(&format!("many{i}")), 0);
        d.send(&Frame::Unregister);
        d.expect(|f| assert!(matches!(f, Frame::GoAway { reason: GoAwayReason::UNREGISTERED, .. })));
        expected.push(t);
    }
    let (more, first) = feedback(&mut p, 1, 0);
    assert!(more);
    assert_eq!(first.len(), 800);
    assert!(first.windows(2).all(|w| w[0].1 <= w[1].1), "oldest first");
    let (last_token, last_at) = *first.last().unwrap();
    let (more, second) = feedback_after(&mut p, 2, last_at, last_token);
    assert!(!more);
    assert_eq!(second.len(), 50, "the next page starts strictly after the cursor: no repeats");
    let mut all: Vec<Token> = first.iter().chain(second.iter()).map(|e| e.0).collect();
    all.sort();
    expected.sort();
    assert_eq!(all, expected);
}

#[test]
fn receipts_reach_a_subscribed_provider_and_wait_while_none_is_connected() {
    let gw = start_gateway(test_config(2));
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("receipts"), 0);
    let mut p = subscriber(&gw, APP, APP_SECRET);
    // A session that did not subscribe gets no receipts, though it is of the same app.
    let mut bystander = provider(&gw, APP, APP_SECRET);
    let (st, id1, _) = push(&mut p, 1, token, FLAG_RECEIPT, u32::MAX);
    assert_eq!(st, Status::DELIVERED);
    let (_, id_plain, _) = push(&mut p, 2, token, 0, u32::MAX);
    let n1 = dev.expect(|f| match f {
        Frame::Notify { msg_id, .. } => msg_id,
        other => panic!("{other:?}"),
    });
    assert_eq!(n1, id1);
    dev.expect(|f| assert!(matches!(f, Frame::Notify { .. })));
    let before = unix_ms();
    dev.send(&Frame::Ack { msg_id: id1 });
    dev.send(&Frame::Ack { msg_id: id_plain });
    p.expect(|f| match f {
        Frame::Receipt { token: t, msg_id, acked_at_ms } => {
            assert_eq!((t, msg_id), (token, id1));
            assert!(acked_at_ms + 5 >= before);
        }
        other => panic!("{other:?}"),
    });
    assert_eq!(p.recv(Duration::from_millis(300)), Got::Timeout, "no receipt for the plain push");
    assert_eq!(bystander.recv(Duration::from_millis(100)), Got::Timeout, "only subscribers get receipts");

    // With no subscriber connected the receipt waits, then reaches the next one.
    let (_, id2, _) = push(&mut p, 3, token, FLAG_RECEIPT, u32::MAX);
    drop(p);
    let m = &gw.shared.metrics;
    assert!(wait_until(Duration::from_secs(2), || (0..m.shards())
        .map(|i| m.shard(i).providers())
        .sum::<i64>()
        == 1));
    dev.expect(|f| assert!(matches!(f, Frame::Notify { msg_id, .. } if msg_id == id2)));
    dev.send(&Frame::Ack { msg_id: id2 });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bystander.recv(Duration::from_millis(100)), Got::Timeout);
    let mut p2 = subscriber(&gw, APP, APP_SECRET);
    p2.expect(|f| assert!(matches!(f, Frame::Receipt { msg_id, .. } if msg_id == id2)));
    // A subscriber of another app never sees them.
    let mut other = subscriber(&gw, OTHER_APP, OTHER_SECRET);
    assert_eq!(other.recv(Duration::from_millis(300)), Got::Timeout);
}

#[test]
fn unknown_flags_are_refused() {
    let gw = start_gateway(test_config(1));
    let (token, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("flags"), 0);
    let mut p = provider(&gw, APP, APP_SECRET);
    assert_eq!(push(&mut p, 1, token, 0x02, 0).0, Status::BAD_REQUEST);
}

/// With `store.ack_grace_ms`, a notification written to a connected device
/// waits for the device's ACK before it is written to disk: its RESULT
/// leaves at the ACK (the message never reaches the disk) or, without one,
/// after the grace and the sync that stores it, and it is still sent again
/// after a reconnect.
#[test]
fn with_an_ack_grace_a_delivered_result_waits_for_the_ack_or_the_disk() {
    const GRACE_MS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(1);
    cfg.store.ack_grace_ms = GRACE_MS;
    let stores = pushgate::store::durable::open_durable(dir.path(), 1, 100).unwrap();
    let gw = pushgate::gateway::Gateway::start(cfg, test_key(), stores).unwrap();
    let mut p = provider(&gw, APP, APP_SECRET);
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("grace"), 0);

    // Acked: the RESULT comes at the ACK, long before the grace is over.
    p.send(&Frame::Push(push_frame(1, token, u32::MAX, b"one")));
    let first = dev.expect(|f| match f {
        Frame::Notify { msg_id, payload, .. } if payload == b"one" => msg_id,
        other => panic!("{other:?}"),
    });
    assert!(matches!(p.recv(Duration::from_millis(500)), Got::Timeout), "no RESULT before the ACK");
    let acked_at = std::time::Instant::now();
    dev.send(&Frame::Ack { msg_id: first });
    p.expect(|f| {
        assert_eq!(f, Frame::Result { req_id: 1, status: Status::DELIVERED, msg_id: first, info: 0 })
    });
    assert!(acked_at.elapsed() < Duration::from_millis(GRACE_MS - 1000), "released by the ACK");

    // Not acked: the RESULT comes once the grace is over and the message is on disk.
    let sent_at = std::time::Instant::now();
    p.send(&Frame::Push(push_frame(2, token, u32::MAX, b"two")));
    let second = dev.expect(|f| match f {
        Frame::Notify { msg_id, payload, .. } if payload == b"two" => msg_id,
        other => panic!("{other:?}"),
    });
    p.expect(|f| {
        assert_eq!(f, Frame::Result { req_id: 2, status: Status::DELIVERED, msg_id: second, info: 0 })
    });
    assert!(sent_at.elapsed() >= Duration::from_millis(GRACE_MS), "held for the grace");
    drop((dev, p));
    gw.drain();
    gw.join();

    // Both answered `delivered`; only the unacked one is stored, and it survives a restart.
    let mut stores = pushgate::store::durable::open_durable(dir.path(), 1, 100).unwrap();
    let mut left = Vec::new();
    stores[0].pending(&token, 0, 0, 10, &mut left).unwrap();
    assert_eq!(left.iter().map(|m| m.msg_id).collect::<Vec<_>>(), vec![second]);
}
