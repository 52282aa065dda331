//! Gateway nodes in cluster mode, in this process, on a real 3-server NATS
//! JetStream cluster: route claims on HELLO, pushes forwarded to the node
//! that holds the device, a device replaced across nodes, a node gone.
//! Needs nats-server 2.9 or later (`apt-get install nats-server`).

mod common;
#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "cluster/node.rs"]
mod node;

use std::time::{Duration, Instant};

use common::{push_frame, secret, with_note, Raw, APP};
use pushgate::proto::{Frame, GoAwayReason, Status, Token};

use nats::NatsCluster;
use node::Node;

const T: Duration = Duration::from_secs(10);

/// An expiry (unix seconds) an hour from now: the push is stored if it must be.
fn in_an_hour() -> u32 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    (now.as_secs() + 3600) as u32
}

/// Reads NOTIFYs until `n` arrived, ACKing each; returns their payloads and ids.
fn notifies(d: &mut Raw, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let (id, payload) = d.expect(|f| match f {
            Frame::Notify { msg_id, payload, .. } => (msg_id, payload.to_vec()),
            other => panic!("expected NOTIFY, got {other:?}"),
        });
        d.send(&Frame::Ack { msg_id: id });
        got.push((id, payload));
    }
    got
}

#[test]
fn any_provider_reaches_any_device_on_any_node() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let nodes: Vec<Node> = (0..3).map(|i| Node::start(&format!("n{i}"), cluster.urls())).collect();
    let slots: std::collections::HashSet<u8> = nodes.iter().map(|n| n.slot).collect();
    assert_eq!(slots.len(), 3, "every node has its own id slot");
    let mut devices: Vec<(Raw, Token)> = (0..3).map(|i| nodes[i].device(&format!("d{i}"))).collect();
    let mut providers: Vec<Raw> = nodes.iter().map(|n| n.provider()).collect();
    let mut req = 0;
    // Every provider pushes to every device, 5 each: 45 pushes, all `delivered`.
    for round in 0..5 {
        for (p, provider) in providers.iter_mut().enumerate() {
            for (d, (_, token)) in devices.iter().enumerate() {
                req += 1;
                let body = format!("r{round}-p{p}-d{d}");
                let (status, msg_id, _) =
                    provider.push(push_frame(req, *token, in_an_hour(), body.as_bytes()));
                assert_eq!(status, Status::DELIVERED, "{body}: provider on n{p}, device on n{d}");
                assert_ne!(msg_id, 0);
            }
        }
    }
    for (d, (dev, _)) in devices.iter_mut().enumerate() {
        let got = notifies(dev, 15);
        let want: Vec<String> = (0..5).flat_map(|r| (0..3).map(move |p| format!("r{r}-p{p}-d{d}"))).collect();
        let bodies: Vec<String> = got.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(bodies, want, "device on n{d}: each once, in the order accepted");
        let ids: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
        assert!(
            matches!(dev.recv(Duration::from_millis(200)), common::Got::Timeout),
            "nothing more for n{d}'s device"
        );
    }
    let forwarded: u64 = nodes
        .iter()
        .map(|n| {
            n.engine
                .as_ref()
                .map_or(0, |e| e.metrics().pushes_served.load(std::sync::atomic::Ordering::Relaxed))
        })
        .sum();
    assert_eq!(forwarded, 30, "the 30 pushes whose device was on another node were forwarded");
}

#[test]
fn a_device_connecting_on_another_node_replaces_the_first_session() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("ra", cluster.urls());
    let b = Node::start("rb", cluster.urls());
    let (mut first, token) = a.device("same");
    let (mut second, token2) = b.device("same");
    assert_eq!(token, token2);
    let reason = first.expect(|f| match f {
        Frame::GoAway { reason, .. } => reason,
        other => panic!("expected GOAWAY, got {other:?}"),
    });
    assert_eq!(reason, GoAwayReason::REPLACED);
    assert!(first.closed_within(T));
    // Pushes through either node now reach the second session only.
    let mut pa = a.provider();
    let mut pb = b.provider();
    assert_eq!(pa.push(push_frame(1, token, in_an_hour(), b"via-a")).0, Status::DELIVERED);
    assert_eq!(pb.push(push_frame(2, token, in_an_hour(), b"via-b")).0, Status::DELIVERED);
    let got = notifies(&mut second, 2);
    assert_eq!(got.iter().map(|(_, b)| b.as_slice()).collect::<Vec<_>>(), vec![&b"via-a"[..], b"via-b"]);
}

#[test]
fn a_push_for_a_device_on_a_gone_node_is_stored_not_lost() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("ga", cluster.urls());
    let mut b = Node::start("gb", cluster.urls());
    let (mut dev, token) = b.device("moving");
    let mut p = a.provider();
    assert_eq!(p.push(push_frame(1, token, in_an_hour(), b"before")).0, Status::DELIVERED);
    assert_eq!(notifies(&mut dev, 1)[0].1, b"before");
    // B goes away without releasing the claim (its drain closes the device,
    // whose release may or may not land: either way A must not lose the push).
    b.stop();
    let (status, msg_id, _) = p.push(push_frame(2, token, in_an_hour(), b"after"));
    assert!(
        status == Status::QUEUED || status == Status::UNAVAILABLE,
        "a push for a device on a gone node is stored here or refused, never lost silently: {status:?}"
    );
    if status == Status::QUEUED {
        assert_ne!(msg_id, 0);
        let (mut again, _) = a.device("moving");
        let got = notifies(&mut again, 1);
        assert_eq!(got[0], (msg_id, b"after".to_vec()), "the stored push arrives on the next connection");
    }
}

#[test]
fn a_device_that_moved_is_found_again_past_the_route_cache() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("ma", cluster.urls());
    let b = Node::start("mb", cluster.urls());
    let c = Node::start("mc", cluster.urls());
    let mut p = a.provider();
    let (mut on_b, token) = b.device("mover");
    assert_eq!(p.push(push_frame(1, token, in_an_hour(), b"to-b")).0, Status::DELIVERED);
    assert_eq!(notifies(&mut on_b, 1)[0].1, b"to-b");
    // The device leaves B and comes back on C; A's cache still says B.
    drop(on_b);
    let t0 = Instant::now();
    while b.gw().devices_per_shard().iter().sum::<usize>() > 0 {
        assert!(t0.elapsed() < T, "B lets the device go");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut on_c, _) = c.device("mover");
    for i in 0..5u32 {
        let body = format!("to-c-{i}");
        let (status, _, _) = p.push(push_frame(2 + i, token, in_an_hour(), body.as_bytes()));
        assert_eq!(status, Status::DELIVERED, "{body}: found on C past A's stale cache");
    }
    let got = notifies(&mut on_c, 5);
    let bodies: Vec<String> = got.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    assert_eq!(bodies, (0..5).map(|i| format!("to-c-{i}")).collect::<Vec<_>>());
    let served_by_b = b
        .engine
        .as_ref()
        .expect("running")
        .metrics()
        .pushes_served
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(served_by_b >= 2, "B was asked (cached route) and answered not-here: {served_by_b}");
    let rerouted = a
        .engine
        .as_ref()
        .expect("running")
        .metrics()
        .failover_rerouted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(rerouted, 1, "one push came back from B and was routed again");
}

/// Waits for a RECEIPT on `p`, skipping nothing else.
fn receipt(p: &mut Raw) -> (Token, u64) {
    p.expect(|f| match f {
        Frame::Receipt { token, msg_id, .. } => (token, msg_id),
        other => panic!("expected RECEIPT, got {other:?}"),
    })
}

#[test]
fn a_receipt_reaches_a_subscriber_on_another_node_and_waits_for_one() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("xa", cluster.urls());
    let b = Node::start("xb", cluster.urls());
    // The subscriber is on A; the device (and its ACK) on B; the push via A.
    let mut sub = a.provider();
    sub.send(&Frame::SubscribeReceipts);
    let (mut dev, token) = b.device("receipts");
    let mut p = a.provider();
    // The subscription reaches NATS asynchronously: retry the first receipt's push.
    let t0 = Instant::now();
    let first = loop {
        let (status, msg_id, _) =
            p.push(with_note(push_frame(1, token, in_an_hour(), b"r"), |n| n.flags = 1));
        assert_eq!(status, Status::DELIVERED);
        let got = notifies(&mut dev, 1);
        assert_eq!(got[0].0, msg_id);
        match sub.recv(Duration::from_millis(1500)) {
            common::Got::Frame(b) => match Frame::parse(
                pushgate::proto::frame::split_frame(&b, pushgate::proto::frame::PROVIDER_MAX_BODY)
                    .expect("framing")
                    .expect("a whole frame")
                    .0,
            )
            .expect("a frame")
            {
                Frame::Receipt { token: t, msg_id: m, .. } => break (t, m, msg_id),
                other => panic!("expected RECEIPT, got {other:?}"),
            },
            _ if t0.elapsed() < T => continue, // kept on B; offered again within a second or so
            other => panic!("no receipt on A within {T:?}: {other:?}"),
        }
    };
    assert_eq!(first.0, token);
    // Within that wait B may have kept and re-offered the receipt: ids must be ours.
    assert!(first.1 <= first.2 && first.1 != 0);
    // No subscriber anywhere: B keeps the receipt, and hands it over once one subscribes on A.
    drop(sub);
    std::thread::sleep(Duration::from_millis(300));
    let (status, kept_id, _) = p.push(with_note(push_frame(9, token, in_an_hour(), b"k"), |n| n.flags = 1));
    assert_eq!(status, Status::DELIVERED);
    assert_eq!(notifies(&mut dev, 1)[0].0, kept_id);
    std::thread::sleep(Duration::from_millis(500));
    let mut sub2 = a.provider();
    sub2.send(&Frame::SubscribeReceipts);
    let t0 = Instant::now();
    loop {
        let (t, m) = receipt(&mut sub2);
        assert_eq!(t, token);
        if m == kept_id {
            break;
        }
        assert!(t0.elapsed() < T, "the kept receipt never came");
    }
}

#[test]
fn a_backlog_stored_through_one_node_arrives_on_another() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("oa", cluster.urls());
    let b = Node::start("ob", cluster.urls());
    let c = Node::start("oc", cluster.urls());
    // The device registers once on A (to learn its token), then goes offline.
    let (dev, token) = a.device("offline");
    drop(dev);
    let t0 = Instant::now();
    while a.gw().devices_per_shard().iter().sum::<usize>() > 0 {
        assert!(t0.elapsed() < T, "A lets the device go");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut pa = a.provider();
    let mut pb = b.provider();
    let mut ids = Vec::new();
    for i in 0..6u32 {
        let p = if i % 2 == 0 { &mut pa } else { &mut pb };
        let body = format!("m{i}");
        let (status, msg_id, _) = p.push(push_frame(i + 1, token, in_an_hour(), body.as_bytes()));
        assert_eq!(status, Status::QUEUED, "{body}: stored for the offline device");
        ids.push(msg_id);
    }
    // It comes back on C: every stored notification, once each.
    let (mut on_c, _) = c.device("offline");
    let got = notifies(&mut on_c, 6);
    let mut bodies: Vec<String> = got.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    bodies.sort();
    assert_eq!(bodies, (0..6).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let mut got_ids: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    got_ids.sort_unstable();
    ids.sort_unstable();
    assert_eq!(got_ids, ids, "each with the msg_id its RESULT carried");
    assert!(matches!(on_c.recv(Duration::from_millis(300)), common::Got::Timeout));
    // ACKed there, nothing comes again on the next connection (through B).
    drop(on_c);
    let t0 = Instant::now();
    while c.gw().devices_per_shard().iter().sum::<usize>() > 0 {
        assert!(t0.elapsed() < T, "C lets the device go");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The ACKs' deletes go to the engine after the ACK (not with the answer
    // of anything): wait until C's engine did all six before moving the device.
    let deletes =
        || c.engine.as_ref().expect("running").metrics().ok(pushgate::cluster::metrics::Op::QueueDelete);
    let t0 = Instant::now();
    while deletes() < 6 {
        assert!(t0.elapsed() < T, "C's engine deleted {} of 6 ACKed notifications", deletes());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut on_b, _) = b.device("offline");
    assert!(
        matches!(on_b.recv(Duration::from_millis(500)), common::Got::Timeout),
        "the ACKs reached the engine"
    );
}

#[test]
fn an_unregistration_on_one_node_is_seen_by_pushes_and_feedback_on_others() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("ua", cluster.urls());
    let b = Node::start("ub", cluster.urls());
    let (mut dev, token) = a.device("leaving");
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    dev.send(&Frame::Unregister);
    let reason = dev.expect(|f| match f {
        Frame::GoAway { reason, .. } => reason,
        other => panic!("expected GOAWAY, got {other:?}"),
    });
    assert_eq!(reason, GoAwayReason::UNREGISTERED);
    let mut pb = b.provider();
    let t0 = Instant::now();
    let at = loop {
        let (status, _, info) = pb.push(push_frame(1, token, in_an_hour(), b"gone?"));
        if status == Status::UNREGISTERED {
            break info;
        }
        assert!(t0.elapsed() < T, "B never saw the unregistration: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(at >= since);
    pb.send(&Frame::Feedback { req_id: 7, since_ms: since, after: Token([0; 24]) });
    let entries = pb.expect(|f| match f {
        Frame::FeedbackResult { req_id: 7, entries, .. } => entries.to_vec(),
        other => panic!("expected FEEDBACK_RESULT, got {other:?}"),
    });
    assert_eq!(entries.len(), 32, "one entry (token 24 + time 8): {entries:?}");
    assert_eq!(&entries[..24], &token.0);
}

#[test]
fn a_burst_of_hellos_past_the_claims_in_flight_all_get_welcome_and_pushes() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let a = Node::start("ba", cluster.urls());
    let b = Node::start("bb", cluster.urls());
    // 400 HELLOs at once on A's 2 shards: more than 64 claims in flight per shard.
    let n = 400;
    let mut devs: Vec<Raw> = (0..n).map(|_| Raw::connect(a.gw().device_addr)).collect();
    for (i, d) in devs.iter_mut().enumerate() {
        let s = secret(&format!("burst-{i}"));
        d.send(&Frame::Hello(pushgate::proto::Hello {
            version: 1,
            keepalive_s: 30,
            app_id: APP,
            secret: &s,
        }));
    }
    let tokens: Vec<Token> = devs
        .iter_mut()
        .map(|d| {
            d.expect(|f| match f {
                Frame::Welcome { token, .. } => token,
                other => panic!("expected WELCOME, got {other:?}"),
            })
        })
        .collect();
    // Every one was claimed: pushes through B reach each of them.
    let mut p = b.provider();
    for (i, t) in tokens.iter().enumerate() {
        let (status, _, _) = p.push(push_frame(i as u32 + 1, *t, in_an_hour(), b"hi"));
        assert_eq!(status, Status::DELIVERED, "device {i} claimed and found from B");
    }
    for d in &mut devs {
        assert_eq!(notifies(d, 1)[0].1, b"hi");
    }
}
