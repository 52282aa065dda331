//! Topics and broadcast end to end over loopback: subscriptions both ways,
//! fan-out to exactly the subscribed devices, catch-up with cap, collapse
//! and expiry, restarts with the durable store, caps, bad input, counts and
//! receipts (protocol.md §10.4).

mod common;

use std::time::Duration;

use common::*;
use pushgate::config::Config;
use pushgate::gateway::Gateway;
use pushgate::proto::frame::FLAG_RECEIPT;
use pushgate::proto::topic::is_topic_id;
use pushgate::proto::{ErrorCode, Frame, Notification, PushTopic, Status, SubStatus, Token};

const QUIET: Duration = Duration::from_millis(300);

fn far() -> u32 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600) as u32
}

fn provider(gw: &Gateway, app: &str, secret: &str) -> Raw {
    let mut p = Raw::connect(gw.provider_addr);
    p.login(app, secret);
    p
}

fn push_topic(p: &mut Raw, req_id: u32, topic: &str, note: Notification<'_>) -> (Status, u64) {
    p.send(&Frame::PushTopic(PushTopic { req_id, topic: topic.as_bytes(), note }));
    loop {
        let r = p.expect(|f| match f {
            Frame::Result { req_id: r, status, msg_id, .. } if r == req_id => Some((status, msg_id)),
            Frame::Receipt { .. } => None,
            other => panic!("expected RESULT {req_id}, got {other:?}"),
        });
        if let Some(r) = r {
            return r;
        }
    }
}

fn manage(p: &mut Raw, req_id: u32, add: bool, topic: &str, tokens: &[Token]) -> Vec<SubStatus> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.0).collect();
    p.send(&Frame::TopicManage { req_id, add, topic: topic.as_bytes(), tokens: &bytes });
    p.expect(|f| match f {
        Frame::TopicManageResult { req_id: r, statuses } if r == req_id => {
            statuses.iter().map(|&s| SubStatus(s)).collect()
        }
        other => panic!("expected TOPIC_MANAGE_RESULT {req_id}, got {other:?}"),
    })
}

fn subscribe(d: &mut Raw, req_id: u16, on: bool, topic: &str) -> SubStatus {
    d.send(&Frame::Subscribe { req_id, on, topic: topic.as_bytes() });
    d.expect(|f| match f {
        Frame::SubscribeResult { req_id: r, status } if r == req_id => status,
        other => panic!("expected SUBSCRIBE_RESULT {req_id}, got {other:?}"),
    })
}

/// The next TOPIC_NOTIFY: (msg_id, topic, payload).
fn topic_notify(d: &mut Raw) -> (u64, String, Vec<u8>) {
    d.expect(|f| match f {
        Frame::TopicNotify { msg_id, topic, payload, .. } => {
            (msg_id, String::from_utf8(topic.to_vec()).unwrap(), payload.to_vec())
        }
        other => panic!("expected TOPIC_NOTIFY, got {other:?}"),
    })
}

/// Reads TOPIC_NOTIFYs until `QUIET` passes, ACKing each: their payloads.
fn drain_acking(d: &mut Raw) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Got::Frame(b) = d.recv(QUIET) {
        let (raw, _) = pushgate::proto::split_frame(&b, 65536).unwrap().unwrap();
        match Frame::parse(raw).unwrap() {
            Frame::TopicNotify { msg_id, payload, .. } => {
                got.push(payload.to_vec());
                d.send(&Frame::Ack { msg_id });
            }
            other => panic!("expected TOPIC_NOTIFY, got {other:?}"),
        }
    }
    got
}

fn silent(d: &mut Raw) {
    match d.recv(QUIET) {
        Got::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

fn device(gw: &Gateway, app: &str, label: &str) -> (Raw, Token, u32) {
    let mut d = Raw::connect(gw.device_addr);
    let (token, _, missed) = d.hello(app, &secret(label), 0);
    (d, token, missed)
}

#[test]
fn a_topic_push_reaches_exactly_the_subscribed_devices_of_its_app_once() {
    let gw = start_gateway(test_config(2));
    let (mut news, _, _) = device(&gw, APP, "news");
    let (mut sports, _, _) = device(&gw, APP, "sports");
    let (mut none, _, _) = device(&gw, APP, "none");
    let (mut other_app, _, _) = device(&gw, OTHER_APP, "other-news");
    let (mut both, _, _) = device(&gw, APP, "both");
    assert_eq!(subscribe(&mut news, 1, true, "news"), SubStatus::OK);
    assert_eq!(subscribe(&mut news, 2, true, "news"), SubStatus::OK, "idempotent");
    assert_eq!(subscribe(&mut sports, 1, true, "sports"), SubStatus::OK);
    assert_eq!(subscribe(&mut other_app, 1, true, "news"), SubStatus::OK);
    assert_eq!(subscribe(&mut both, 1, true, "news"), SubStatus::OK);
    assert_eq!(subscribe(&mut both, 2, true, "sports"), SubStatus::OK);

    let mut p = provider(&gw, APP, APP_SECRET);
    let (status, id) = push_topic(&mut p, 7, "news", note(far(), b"headline"));
    assert_eq!(status, Status::QUEUED);
    assert!(is_topic_id(id), "topic ids carry bit 62: {id:#x}");
    for d in [&mut news, &mut both] {
        let (msg_id, topic, payload) = topic_notify(d);
        assert_eq!((msg_id, topic.as_str(), payload.as_slice()), (id, "news", &b"headline"[..]));
        d.send(&Frame::Ack { msg_id });
    }
    for d in [&mut sports, &mut none, &mut other_app, &mut news, &mut both] {
        silent(d);
    }
    // Direct pushes keep their own ids next to topic messages.
    let (mut solo, solo_token, _) = device(&gw, APP, "solo");
    let (status, direct, _) = p.push(push_frame(8, solo_token, far(), b"direct"));
    assert_eq!(status, Status::DELIVERED);
    assert!(!is_topic_id(direct));
    solo.expect(|f| assert!(matches!(f, Frame::Notify { msg_id, .. } if msg_id == direct), "{f:?}"));
    assert_eq!(subscribe(&mut sports, 3, false, "sports"), SubStatus::OK);
    assert_eq!(subscribe(&mut sports, 4, false, "sports"), SubStatus::OK, "idempotent");
    let (status, _) = push_topic(&mut p, 9, "sports", note(far(), b"goal"));
    assert_eq!(status, Status::QUEUED);
    assert_eq!(topic_notify(&mut both).2, b"goal");
    silent(&mut sports);
}

#[test]
fn an_offline_subscriber_catches_up_in_order_with_collapse_expiry_and_the_cap() {
    let mut cfg = test_config(2);
    cfg.limits.topic_catchup_cap = 3;
    let gw = start_gateway(cfg);
    let (mut d, _, _) = device(&gw, APP, "fan");
    assert_eq!(subscribe(&mut d, 1, true, "scores"), SubStatus::OK);
    drop(d);
    let mut p = provider(&gw, APP, APP_SECRET);
    let soon = far() - 3600 + 1;
    let push = |p: &mut Raw, req, payload: &'static [u8], expiry, collapse: &'static [u8]| {
        let mut n = note(expiry, payload);
        n.collapse = collapse;
        assert_eq!(push_topic(p, req, "scores", n).0, Status::QUEUED);
    };
    push(&mut p, 1, b"m1", far(), b"");
    push(&mut p, 2, b"m2", far(), b"");
    push(&mut p, 3, b"score 1-0", far(), b"score");
    push(&mut p, 4, b"expires", soon, b"");
    push(&mut p, 5, b"score 2-0", far(), b"score");
    push(&mut p, 6, b"m6", far(), b"");
    push(&mut p, 7, b"m7", far(), b"");
    std::thread::sleep(Duration::from_millis(2100));
    // Left after collapse and expiry: m1 m2 "score 2-0" m6 m7; the cap of 3 skips m1, m2.
    let (mut d, _, missed) = device(&gw, APP, "fan");
    assert_eq!(missed, 2, "the catch-up cap skipped two");
    let got = drain_acking(&mut d);
    assert_eq!(got, [&b"score 2-0"[..], b"m6", b"m7"]);
    drop(d);
    // Done with all of them: nothing again on the next connection.
    std::thread::sleep(Duration::from_millis(100));
    let (mut d, _, missed) = device(&gw, APP, "fan");
    assert_eq!(missed, 0);
    silent(&mut d);
}

#[test]
fn the_window_is_shared_and_a_full_one_catches_up_from_the_log() {
    let mut cfg = test_config(1);
    cfg.limits.device_max_in_flight = 4;
    let gw = start_gateway(cfg);
    let (mut d, _, _) = device(&gw, APP, "slow");
    assert_eq!(subscribe(&mut d, 1, true, "t"), SubStatus::OK);
    let mut p = provider(&gw, APP, APP_SECRET);
    for i in 0..10u32 {
        let payload = format!("n{i}");
        assert_eq!(push_topic(&mut p, i, "t", note(far(), payload.as_bytes())).0, Status::QUEUED);
    }
    let mut first = Vec::new();
    while let Got::Frame(_) = d.recv(QUIET) {
        first.push(());
    }
    assert_eq!(first.len(), 4, "the window holds four");
    drop(d);
    let (mut d, _, _) = device(&gw, APP, "slow");
    let got = drain_acking(&mut d);
    let want: Vec<Vec<u8>> = (0..10).map(|i| format!("n{i}").into_bytes()).collect();
    assert_eq!(got, want, "unacked ones again, then the rest, in order, through a window of 4");
}

#[test]
fn providers_manage_subscriptions_in_batch_for_offline_devices() {
    let gw = start_gateway(test_config(2));
    let (d, token, _) = device(&gw, APP, "managed");
    drop(d);
    let (o, other_token, _) = device(&gw, OTHER_APP, "elsewhere");
    drop(o);
    let mut p = provider(&gw, APP, APP_SECRET);
    let mut forged = token;
    forged.0[3] ^= 1;
    let st = manage(&mut p, 1, true, "promo", &[token, forged, other_token]);
    assert_eq!(st, [SubStatus::OK, SubStatus::BAD_TOKEN, SubStatus::BAD_TOKEN]);
    assert_eq!(manage(&mut p, 2, true, "~all", &[token]), [SubStatus::BAD_TOPIC]);
    assert_eq!(manage(&mut p, 3, true, "bad name", &[token]), [SubStatus::BAD_TOPIC]);
    assert_eq!(push_topic(&mut p, 4, "promo", note(far(), b"sale")).0, Status::QUEUED);
    let (mut d, _, _) = device(&gw, APP, "managed");
    assert_eq!(drain_acking(&mut d), [b"sale".to_vec()]);
    // Removed while connected: the next message does not come.
    assert_eq!(manage(&mut p, 5, false, "promo", &[token]), [SubStatus::OK]);
    assert_eq!(push_topic(&mut p, 6, "promo", note(far(), b"sale 2")).0, Status::QUEUED);
    silent(&mut d);
    // Added while connected: the next one comes at once.
    assert_eq!(manage(&mut p, 7, true, "promo", &[token]), [SubStatus::OK]);
    assert_eq!(push_topic(&mut p, 8, "promo", note(far(), b"sale 3")).0, Status::QUEUED);
    assert_eq!(topic_notify(&mut d).2, b"sale 3", "a new subscription gets only later messages");
}

#[test]
fn a_broadcast_reaches_every_device_of_the_app_and_later_first_comers() {
    let gw = start_gateway(test_config(2));
    let mut devs: Vec<Raw> = (0..5).map(|i| device(&gw, APP, &format!("b{i}")).0).collect();
    let (mut other, _, _) = device(&gw, OTHER_APP, "b-other");
    let mut p = provider(&gw, APP, APP_SECRET);
    let (status, id) = push_topic(&mut p, 1, "~all", note(far(), b"v2 is out"));
    assert_eq!(status, Status::QUEUED);
    for d in &mut devs {
        let (msg_id, topic, payload) = topic_notify(d);
        assert_eq!((msg_id, topic.as_str(), payload.as_slice()), (id, "~all", &b"v2 is out"[..]));
        d.send(&Frame::Ack { msg_id });
    }
    silent(&mut other);
    let (mut late, _, _) = device(&gw, APP, "first-time");
    assert_eq!(
        drain_acking(&mut late),
        [b"v2 is out".to_vec()],
        "unexpired broadcasts reach a first connection"
    );
    drop(late);
    let (mut late, _, _) = device(&gw, APP, "first-time");
    silent(&mut late);
    // Expiry 0: only devices connected now, answered `delivered`.
    let (status, _) = push_topic(&mut p, 2, "~all", note(0, b"now"));
    assert_eq!(status, Status::DELIVERED);
    assert_eq!(topic_notify(&mut late).2, b"now");
    assert_eq!(subscribe(&mut late, 9, true, "~all"), SubStatus::BAD_TOPIC, "~all is not subscribed to");
}

#[test]
fn bad_names_caps_and_unregister() {
    let mut cfg = test_config(1);
    cfg.limits.topics_per_device = 2;
    cfg.limits.topics_per_app = 2;
    let gw = start_gateway(cfg);
    let (mut d, _, _) = device(&gw, APP, "caps");
    assert_eq!(subscribe(&mut d, 1, true, "a b"), SubStatus::BAD_TOPIC);
    assert_eq!(subscribe(&mut d, 2, true, "~mine"), SubStatus::BAD_TOPIC);
    assert_eq!(subscribe(&mut d, 3, true, "t1"), SubStatus::OK);
    assert_eq!(subscribe(&mut d, 4, true, "t2"), SubStatus::OK);
    assert_eq!(subscribe(&mut d, 5, true, "t3"), SubStatus::TOPIC_LIMIT);
    let mut p = provider(&gw, APP, APP_SECRET);
    assert_eq!(push_topic(&mut p, 1, "bad/name", note(far(), b"x")).0, Status::BAD_TOPIC);
    assert_eq!(push_topic(&mut p, 2, "~nope", note(far(), b"x")).0, Status::BAD_TOPIC);
    assert_eq!(push_topic(&mut p, 3, "t1", note(far(), b"x")).0, Status::QUEUED);
    assert_eq!(push_topic(&mut p, 4, "t2", note(far(), b"x")).0, Status::QUEUED);
    assert_eq!(
        push_topic(&mut p, 5, "t3", note(far(), b"x")).0,
        Status::TOPIC_LIMIT,
        "two topics with a log"
    );
    let mut big = note(far(), &[0; 4097]);
    big.kind = 0;
    assert_eq!(push_topic(&mut p, 6, "t1", big).0, Status::PAYLOAD_TOO_LARGE);
    drain_acking(&mut d);
    // UNREGISTER drops the subscriptions; registering again starts with none.
    d.send(&Frame::Unregister);
    assert!(d.closed_within(Duration::from_secs(3)));
    let (mut d, _, _) = device(&gw, APP, "caps");
    assert_eq!(push_topic(&mut p, 7, "t1", note(far(), b"after")).0, Status::QUEUED);
    silent(&mut d);
    // An empty topic name is a malformed frame.
    d.send_bytes(&[0x0a, 0x03, 0x00, 0x01, 0x00]);
    d.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::MALFORMED_FRAME, .. }), "{f:?}"));
}

#[test]
fn counts_and_receipts_for_a_topic_message() {
    let gw = start_gateway(test_config(2));
    let mut devs: Vec<(Raw, Token)> = (0..3)
        .map(|i| {
            let (mut d, t, _) = device(&gw, APP, &format!("r{i}"));
            assert_eq!(subscribe(&mut d, 1, true, "live"), SubStatus::OK);
            (d, t)
        })
        .collect();
    let mut p = provider(&gw, APP, APP_SECRET);
    p.send(&Frame::SubscribeReceipts);
    let mut n = note(far(), b"tracked");
    n.flags = FLAG_RECEIPT;
    let (_, id) = push_topic(&mut p, 1, "live", n);
    for (d, _) in devs.iter_mut().take(2) {
        let (msg_id, _, _) = topic_notify(d);
        d.send(&Frame::Ack { msg_id });
    }
    let mut receipts = Vec::new();
    for _ in 0..2 {
        p.expect(|f| match f {
            Frame::Receipt { token, msg_id, .. } => receipts.push((token, msg_id)),
            other => panic!("expected RECEIPT, got {other:?}"),
        });
    }
    receipts.sort();
    let mut want: Vec<(Token, u64)> = devs.iter().take(2).map(|(_, t)| (*t, id)).collect();
    want.sort();
    assert_eq!(receipts, want, "one receipt per device ACK");
    assert!(wait_until(Duration::from_secs(2), || {
        p.send(&Frame::TopicStats { req_id: 2, msg_id: id });
        p.expect(|f| f == Frame::TopicStatsResult { req_id: 2, known: true, sent: 3, acked: 2 })
    }));
    p.send(&Frame::TopicStats { req_id: 3, msg_id: 12345 });
    p.expect(|f| assert_eq!(f, Frame::TopicStatsResult { req_id: 3, known: false, sent: 0, acked: 0 }));
}

fn durable_gateway(dir: &std::path::Path, cfg: Config) -> Gateway {
    let stores = pushgate::store::durable::open_durable(dir, cfg.shard_count(), 100).unwrap();
    Gateway::start(cfg, test_key(), stores).unwrap()
}

/// Device `label` subscribes to "kept", gets and ACKs "seen", goes away, and
/// "while away" is pushed (queued). Returns the provider.
fn seen_then_away(gw: &Gateway, label: &str) -> Raw {
    let (mut d, _, _) = device(gw, APP, label);
    assert_eq!(subscribe(&mut d, 1, true, "kept"), SubStatus::OK);
    let mut p = provider(gw, APP, APP_SECRET);
    assert_eq!(push_topic(&mut p, 1, "kept", note(far(), b"seen")).0, Status::QUEUED);
    assert_eq!(drain_acking(&mut d), [b"seen".to_vec()]);
    drop(d);
    assert_eq!(push_topic(&mut p, 2, "kept", note(far(), b"while away")).0, Status::QUEUED);
    p
}

#[test]
fn subscriptions_positions_and_the_log_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = durable_gateway(dir.path(), test_config(2));
    drop(seen_then_away(&gw, "keeper"));
    gw.drain();
    gw.join();

    let gw = durable_gateway(dir.path(), test_config(3));
    let (mut d, _, _) = device(&gw, APP, "keeper");
    assert_eq!(drain_acking(&mut d), [b"while away".to_vec()], "from the log, after the position");
    let mut p = provider(&gw, APP, APP_SECRET);
    assert_eq!(push_topic(&mut p, 3, "kept", note(far(), b"after restart")).0, Status::QUEUED);
    assert_eq!(topic_notify(&mut d).2, b"after restart", "the subscription survived");
}

#[test]
fn an_offline_subscriber_catches_up_with_the_durable_store_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = durable_gateway(dir.path(), test_config(2));
    let _p = seen_then_away(&gw, "durable-away");
    let (mut d, _, _) = device(&gw, APP, "durable-away");
    assert_eq!(drain_acking(&mut d), [b"while away".to_vec()]);
}
