//! Topics across gateway nodes in cluster mode (this process, a real
//! 3-server NATS cluster): a topic push on any node reaches the subscribers
//! on every node, broadcast included; a device that moves to another node
//! catches up from its position; providers manage subscriptions of devices
//! connected elsewhere (protocol.md §10.3, §10.4).

mod common;
#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "cluster/node.rs"]
mod node;

use std::time::Duration;

use common::{secret, Got, Raw, APP};
use pushgate::proto::topic::is_topic_id;
use pushgate::proto::{Frame, PushTopic, Status, SubStatus, Token};

use nats::NatsCluster;
use node::Node;

const QUIET: Duration = Duration::from_millis(400);

fn in_an_hour() -> u32 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    (now.as_secs() + 3600) as u32
}

fn cluster_of(n: usize) -> (NatsCluster, Vec<Node>) {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let nodes = (0..n).map(|i| Node::start(&format!("n{i}"), cluster.urls())).collect();
    (cluster, nodes)
}

fn push_topic(p: &mut Raw, req_id: u32, topic: &str, payload: &[u8], expiry: u32) -> (Status, u64) {
    let note = common::note(expiry, payload);
    p.send(&Frame::PushTopic(PushTopic { req_id, topic: topic.as_bytes(), note }));
    p.expect(|f| match f {
        Frame::Result { req_id: r, status, msg_id, .. } if r == req_id => (status, msg_id),
        other => panic!("expected RESULT {req_id}, got {other:?}"),
    })
}

fn subscribe(d: &mut Raw, req_id: u16, topic: &str) {
    d.send(&Frame::Subscribe { req_id, on: true, topic: topic.as_bytes() });
    d.expect(|f| assert_eq!(f, Frame::SubscribeResult { req_id, status: SubStatus::OK }));
}

/// TOPIC_NOTIFYs until `QUIET` passes, ACKing each: (id, payload).
fn drain(d: &mut Raw) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    while let Got::Frame(b) = d.recv(QUIET) {
        let (raw, _) = pushgate::proto::split_frame(&b, 65536).unwrap().unwrap();
        match Frame::parse(raw).unwrap() {
            Frame::TopicNotify { msg_id, payload, .. } => {
                got.push((msg_id, payload.to_vec()));
                d.send(&Frame::Ack { msg_id });
            }
            other => panic!("expected TOPIC_NOTIFY, got {other:?}"),
        }
    }
    got
}

fn payloads(v: &[(u64, Vec<u8>)]) -> Vec<&[u8]> {
    v.iter().map(|(_, p)| p.as_slice()).collect()
}

#[test]
fn a_topic_push_on_any_node_reaches_subscribers_on_every_node() {
    let (_nats, nodes) = cluster_of(3);
    let mut subs: Vec<(Raw, Token)> = (0..3).map(|i| nodes[i].device(&format!("s{i}"))).collect();
    for (d, _) in &mut subs {
        subscribe(d, 1, "news");
    }
    let (mut bystander, _) = nodes[1].device("bystander");
    for (p, node) in nodes.iter().enumerate() {
        let mut provider = node.provider();
        let body = format!("from n{p}");
        let (status, id) = push_topic(&mut provider, 1, "news", body.as_bytes(), in_an_hour());
        assert_eq!(status, Status::QUEUED);
        assert!(is_topic_id(id));
        for (d, _) in &mut subs {
            let got = drain(d);
            assert_eq!(got, [(id, body.clone().into_bytes())], "exactly once, with the RESULT's id");
        }
        assert_eq!(drain(&mut bystander), []);
    }
    // A broadcast from one node reaches every device of the app on every node.
    let mut provider = nodes[2].provider();
    let (status, _) = push_topic(&mut provider, 9, "~all", b"everyone", in_an_hour());
    assert_eq!(status, Status::QUEUED);
    for (d, _) in &mut subs {
        assert_eq!(payloads(&drain(d)), [b"everyone"]);
    }
    assert_eq!(payloads(&drain(&mut bystander)), [b"everyone"]);
    // Expiry 0: only connected devices, on every node.
    let (status, _) = push_topic(&mut provider, 10, "news", b"now", 0);
    assert_eq!(status, Status::DELIVERED);
    for (d, _) in &mut subs {
        assert_eq!(payloads(&drain(d)), [b"now"]);
    }
}

#[test]
fn a_device_that_moves_to_another_node_catches_up_from_its_position() {
    let (_nats, nodes) = cluster_of(3);
    let (mut d, _) = nodes[0].device("mover");
    subscribe(&mut d, 1, "scores");
    let mut p = nodes[1].provider();
    assert_eq!(push_topic(&mut p, 1, "scores", b"1-0", in_an_hour()).0, Status::QUEUED);
    assert_eq!(payloads(&drain(&mut d)), [b"1-0"]);
    drop(d);
    // Let the ACK's position reach the engine, then push while the device is away.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(push_topic(&mut p, 2, "scores", b"2-0", in_an_hour()).0, Status::QUEUED);
    assert_eq!(push_topic(&mut p, 3, "scores", b"2-1", in_an_hour()).0, Status::QUEUED);
    let (mut d, _) = nodes[2].device("mover");
    assert_eq!(payloads(&drain(&mut d)), [&b"2-0"[..], b"2-1"], "from its position, on another node");
    // The subscription moved with it: a new message reaches it live on n2.
    assert_eq!(push_topic(&mut p, 4, "scores", b"3-1", in_an_hour()).0, Status::QUEUED);
    assert_eq!(payloads(&drain(&mut d)), [b"3-1"]);
}

#[test]
fn a_provider_on_one_node_manages_devices_connected_to_others_or_offline() {
    let (_nats, nodes) = cluster_of(3);
    let (mut online, online_token) = nodes[0].device("online");
    let (offline, offline_token) = nodes[1].device("offline");
    drop(offline);
    let mut p = nodes[2].provider();
    let tokens: Vec<u8> = [online_token, offline_token].iter().flat_map(|t| t.0).collect();
    p.send(&Frame::TopicManage { req_id: 1, add: true, topic: b"promo", tokens: &tokens });
    p.expect(|f| match f {
        Frame::TopicManageResult { req_id: 1, statuses } => assert_eq!(statuses, [0, 0]),
        other => panic!("{other:?}"),
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(push_topic(&mut p, 2, "promo", b"sale", in_an_hour()).0, Status::QUEUED);
    assert_eq!(payloads(&drain(&mut online)), [b"sale"], "the device's node heard of the change");
    let (mut offline, _) = nodes[0].device("offline");
    assert_eq!(payloads(&drain(&mut offline)), [b"sale"], "caught up on its first connection after");
    // Removed from another node: nothing more.
    p.send(&Frame::TopicManage { req_id: 3, add: false, topic: b"promo", tokens: &online_token.0 });
    p.expect(|f| assert!(matches!(f, Frame::TopicManageResult { req_id: 3, statuses: [0] }), "{f:?}"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(push_topic(&mut p, 4, "promo", b"sale 2", in_an_hour()).0, Status::QUEUED);
    assert_eq!(drain(&mut online), []);
    assert_eq!(payloads(&drain(&mut offline)), [b"sale 2"]);
}

#[test]
fn a_node_started_later_replays_the_topic_log() {
    let cluster = NatsCluster::start();
    cluster.wait_ready(Duration::from_secs(30));
    let first = Node::start("n0", cluster.urls());
    let mut p = first.provider();
    for i in 0..5u32 {
        let body = format!("m{i}");
        assert_eq!(push_topic(&mut p, i, "~all", body.as_bytes(), in_an_hour()).0, Status::QUEUED);
    }
    let later = Node::start("n1", cluster.urls());
    let mut d = Raw::connect(later.gw().device_addr);
    d.hello(APP, &secret("newcomer"), 30);
    let got = drain(&mut d);
    assert_eq!(
        payloads(&got),
        [&b"m0"[..], b"m1", b"m2", b"m3", b"m4"],
        "the unexpired broadcasts, in order"
    );
}
