//! Provider-side behaviour over loopback: auth, cross-app isolation, request
//! validation, multicast, pipelining and back-pressure.

mod common;

use std::time::Duration;

use common::*;
use pushgate::proto::frame::multi_entries;
use pushgate::proto::session::auth_proof;
use pushgate::proto::{ErrorCode, Frame, MultiPush, Notification, Push, Status, Token};

fn push_frame(req_id: u32, token: Token, payload: &[u8]) -> Push<'_> {
    common::push_frame(req_id, token, 0, payload)
}

fn result(p: &mut Raw) -> (u32, Status, u64) {
    p.expect(|f| match f {
        Frame::Result { req_id, status, msg_id, .. } => (req_id, status, msg_id),
        other => panic!("expected RESULT, got {other:?}"),
    })
}

#[test]
fn wrong_secret_is_refused_and_the_secret_never_crosses_the_wire() {
    let gw = start_gateway(test_config(1));
    let mut p = Raw::connect(gw.provider_addr);
    p.send(&Frame::AuthHello { version: 1, app_id: APP });
    let nonce = p.expect(|f| match f {
        Frame::Challenge { nonce } => nonce,
        other => panic!("{other:?}"),
    });
    p.send(&Frame::Auth { proof: auth_proof(b"not-the-secret-at-all", APP, &nonce) });
    p.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::AUTH_FAILED, .. })));
    assert!(p.closed_within(Duration::from_secs(3)));

    // A proof for one challenge does not open another session (fresh nonce each time).
    let mut p1 = Raw::connect(gw.provider_addr);
    p1.send(&Frame::AuthHello { version: 1, app_id: APP });
    let n1 = p1.expect(|f| match f {
        Frame::Challenge { nonce } => nonce,
        other => panic!("{other:?}"),
    });
    let mut p2 = Raw::connect(gw.provider_addr);
    p2.send(&Frame::AuthHello { version: 1, app_id: APP });
    let n2 = p2.expect(|f| match f {
        Frame::Challenge { nonce } => nonce,
        other => panic!("{other:?}"),
    });
    assert_ne!(n1, n2);
    p2.send(&Frame::Auth { proof: auth_proof(APP_SECRET.as_bytes(), APP, &n1) });
    p2.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::AUTH_FAILED, .. })));

    let mut p3 = Raw::connect(gw.provider_addr);
    p3.send(&Frame::AuthHello { version: 1, app_id: "no.such.app" });
    p3.expect(|f| assert!(matches!(f, Frame::Error { code: ErrorCode::UNKNOWN_APP, .. })));
}

#[test]
fn a_provider_cannot_push_to_another_apps_tokens() {
    let gw = start_gateway(test_config(2));
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(OTHER_APP, &secret("victim"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    p.send(&Frame::Push(push_frame(1, token, b"spoof")));
    assert_eq!(result(&mut p), (1, Status::BAD_TOKEN, 0));
    let mut forged = token;
    forged.0[20] ^= 0x55;
    let mut owner = Raw::connect(gw.provider_addr);
    owner.login(OTHER_APP, OTHER_SECRET);
    owner.send(&Frame::Push(push_frame(2, forged, b"forged")));
    assert_eq!(result(&mut owner), (2, Status::BAD_TOKEN, 0));
    assert_eq!(dev.recv(Duration::from_millis(300)), Got::Timeout, "nothing reached the device");
    owner.send(&Frame::Push(push_frame(3, token, b"legit")));
    assert_eq!(result(&mut owner).1, Status::DELIVERED);
}

#[test]
fn invalid_fields_get_their_statuses() {
    let gw = start_gateway(test_config(1));
    let (token, _, _) = Raw::connect(gw.device_addr).hello(APP, &secret("v"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    let big = vec![b'x'; 4097];
    p.send(&Frame::Push(push_frame(1, token, &big)));
    assert_eq!(result(&mut p).1, Status::PAYLOAD_TOO_LARGE);
    p.send(&Frame::Push(with_note(push_frame(2, token, b"k"), |n| n.kind = 9)));
    assert_eq!(result(&mut p).1, Status::BAD_REQUEST);
    p.send(&Frame::Push(with_note(push_frame(3, token, b"p"), |n| n.priority = 7)));
    assert_eq!(result(&mut p).1, Status::BAD_REQUEST);
    p.send(&Frame::Push(with_note(push_frame(4, token, b"f"), |n| n.flags = 0x80)));
    assert_eq!(result(&mut p).1, Status::BAD_REQUEST);
    let ok = vec![b'y'; 4096];
    p.send(&Frame::Push(push_frame(5, token, &ok)));
    assert_eq!(result(&mut p).1, Status::NOT_DELIVERED, "4096 bytes is allowed (device gone)");
}

#[test]
fn multicast_reports_a_status_per_token_in_request_order() {
    let gw = start_gateway(test_config(2));
    let mut online = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..5 {
        let mut d = Raw::connect(gw.device_addr);
        let (t, _, _) = d.hello(APP, &secret(&format!("mc{i}")), 0);
        tokens.push(t);
        online.push(d);
    }
    let (foreign, _, _) = Raw::connect(gw.device_addr).hello(OTHER_APP, &secret("mcx"), 0);
    let mut garbage = Token([0xab; 24]);
    garbage.0[0] = 1;
    let mut list = tokens.clone();
    list.insert(2, foreign);
    list.push(garbage);
    let raw_tokens: Vec<u8> = list.iter().flat_map(|t| t.0).collect();
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    p.send(&Frame::MultiPush(MultiPush { req_id: 77, tokens: &raw_tokens, note: note(0, b"to many") }));
    let entries: Vec<(Status, u64)> = p.expect(|f| match f {
        Frame::MultiResult { req_id: 77, entries } => multi_entries(entries).collect(),
        other => panic!("{other:?}"),
    });
    let statuses: Vec<Status> = entries.iter().map(|e| e.0).collect();
    use Status as S;
    assert_eq!(
        statuses,
        vec![
            S::DELIVERED,
            S::DELIVERED,
            S::BAD_TOKEN,
            S::DELIVERED,
            S::DELIVERED,
            S::DELIVERED,
            S::BAD_TOKEN
        ]
    );
    let mut ids = entries.iter().map(|e| e.1).filter(|&id| id != 0);
    for d in &mut online {
        let id = d.expect(|f| match f {
            Frame::Notify { msg_id, payload, .. } => {
                assert_eq!(payload, b"to many");
                msg_id
            }
            other => panic!("{other:?}"),
        });
        assert_eq!(Some(id), ids.next());
    }
}

#[test]
fn a_thousand_token_multicast_and_many_pipelined_pushes_all_get_answers() {
    let gw = start_gateway(test_config(2));
    let mut d = Raw::connect(gw.device_addr);
    let (t, _, _) = d.hello(APP, &secret("pipe"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    let raw_tokens: Vec<u8> = std::iter::repeat_n(t, 1000).flat_map(|t| t.0).collect();
    let note = Notification { kind: 2, ..note(0, b"") };
    p.send(&Frame::MultiPush(MultiPush { req_id: 1, tokens: &raw_tokens, note }));
    let n = p.expect(|f| match f {
        Frame::MultiResult { req_id: 1, entries } => multi_entries(entries).count(),
        other => panic!("{other:?}"),
    });
    assert_eq!(n, 1000);
    // 5000 pushes written back to back, far past max_in_flight: the gateway
    // stops reading, then resumes as results drain, and answers every one.
    let mut batch = Vec::new();
    for i in 0..5000u32 {
        Frame::Push(push_frame(10 + i, Token([i as u8; 24]), b"x")).encode(&mut batch);
    }
    let mut writer = p.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &batch).unwrap());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5000 {
        let (req, status, _) = result(&mut p);
        assert_eq!(status, Status::BAD_TOKEN);
        assert!(seen.insert(req));
    }
    w.join().unwrap();
    assert_eq!(seen.len(), 5000);
}

#[test]
fn pushes_past_the_in_flight_limit_wait_for_tcp_not_for_memory() {
    let mut cfg = test_config(2);
    cfg.limits.provider_max_in_flight = 8;
    let gw = start_gateway(cfg);
    let mut devs = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..4 {
        let mut d = Raw::connect(gw.device_addr);
        tokens.push(d.hello(APP, &secret(&format!("bp{i}")), 0).0);
        devs.push(d);
    }
    let mut p = Raw::connect(gw.provider_addr);
    assert_eq!(p.login(APP, APP_SECRET), 8);
    let mut batch = Vec::new();
    for i in 0..400u32 {
        Frame::Push(with_note(push_frame(i, tokens[i as usize % 4], b"bp"), |n| n.expiry = u32::MAX))
            .encode(&mut batch);
    }
    p.send_bytes(&batch);
    let mut got = 0;
    for _ in 0..400 {
        let (_, status, _) = result(&mut p);
        assert!(status == Status::DELIVERED || status == Status::QUEUED, "{status}");
        got += 1;
    }
    assert_eq!(got, 400);
}

/// A drain answers every push it had read before its GOAWAY, also pushes routed to a shard that
/// has no connection left: that shard stays up, answering, until the provider's shard is done
/// (before, it left at once and the provider waited for the whole drain timeout).
#[test]
fn a_drain_answers_pushes_routed_to_a_shard_with_no_connections_then_goaway_at_once() {
    let mut cfg = test_config(2);
    cfg.drain.timeout_ms = 20_000;
    let gw = start_gateway(cfg);
    // Tokens of both shards (the owner is a function of the token), their devices gone: the
    // provider is then the only connection, so one shard has none when the drain begins.
    let tokens: Vec<Token> =
        (0..16).map(|i| Raw::connect(gw.device_addr).hello(APP, &secret(&format!("dr{i}")), 0).0).collect();
    assert!(wait_until(Duration::from_secs(5), || gw.connections() == 0), "the devices are gone");
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    let mut batch = Vec::new();
    for i in 0..3000u32 {
        Frame::Push(with_note(push_frame(i, tokens[i as usize % 16], b"dr"), |n| n.expiry = u32::MAX))
            .encode(&mut batch);
    }
    let mut writer = p.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &batch); // the drain stops reading
    });
    // Results are flowing: pushes are in flight on both shards now.
    let mut answered = std::collections::HashSet::new();
    let (req, _, _) = result(&mut p);
    answered.insert(req);
    let began = std::time::Instant::now();
    gw.drain();
    // Each frame within 5 s (`expect`): the answers, then GOAWAY, with no wait for the deadline.
    let goaway = loop {
        let next = p.expect(|f| match f {
            Frame::Result { req_id, status, .. } => {
                let fine = [Status::QUEUED, Status::DELIVERED, Status::UNAVAILABLE];
                assert!(fine.contains(&status), "{req_id}: {status}");
                assert!(answered.insert(req_id), "one answer per request: {req_id}");
                None
            }
            Frame::GoAway { reason, .. } => Some(reason),
            other => panic!("{other:?}"),
        });
        if let Some(reason) = next {
            break reason;
        }
    };
    assert_eq!(goaway, pushgate::proto::GoAwayReason::SHUTDOWN);
    assert!(began.elapsed() < Duration::from_secs(10), "GOAWAY {:?} into a 20 s drain", began.elapsed());
    assert!(answered.len() > 1, "the drain came with pushes in flight");
    drop(p);
    let _ = w.join();
    gw.join();
    assert!(began.elapsed() < Duration::from_secs(15), "drained in {:?}", began.elapsed());
}
