//! kill -9 of a `pushgate serve` process in the middle of a topic fan-out
//! to many subscribers: after a restart every subscriber still gets every
//! accepted topic message (protocol.md §10.4: accepted means in the log).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use pushgate::proto::{Frame, PushTopic, Status, SubStatus};

const DEVICES: usize = 400;
/// Fewer than `limits.topic_catchup_cap` (100), so the catch-up skips none.
const MESSAGES: usize = 90;
/// RESULTs read before the kill: the rest of the pushes are still being logged and fanned out.
const ANSWERED: usize = 20;

fn serve(dir: &std::path::Path) -> Served {
    let args: [&std::ffi::OsStr; 4] =
        ["--shards".as_ref(), "2".as_ref(), "--data-dir".as_ref(), dir.as_ref()];
    spawn_serve(&args, "warn")
}

fn far() -> u32 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600) as u32
}

/// Reads every frame that comes within `quiet`, ACKing topic messages: their payloads.
fn read_all(d: &mut Raw, quiet: Duration, seen: &mut HashSet<Vec<u8>>) {
    while let Got::Frame(b) = d.recv(quiet) {
        let (raw, _) = pushgate::proto::split_frame(&b, 65536).unwrap().unwrap();
        if let Frame::TopicNotify { msg_id, payload, .. } = Frame::parse(raw).unwrap() {
            seen.insert(payload.to_vec());
            d.send(&Frame::Ack { msg_id });
        }
    }
}

#[test]
fn kill_9_during_a_fan_out_loses_nothing_for_any_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path());
    let mut devs: Vec<Raw> = Vec::new();
    for i in 0..DEVICES {
        let mut d = Raw::connect(srv.device);
        d.hello("demo", &secret(&format!("crash-{i}")), 0);
        d.send(&Frame::Subscribe { req_id: 1, on: true, topic: b"live" });
        devs.push(d);
    }
    for d in &mut devs {
        d.expect(|f| assert_eq!(f, Frame::SubscribeResult { req_id: 1, status: SubStatus::OK }));
    }
    let mut p = Raw::connect(srv.provider);
    p.login("demo", &srv.secret);
    for i in 0..MESSAGES {
        let payload = format!("m{i}");
        let note = note(far(), payload.as_bytes());
        p.send(&Frame::PushTopic(PushTopic { req_id: i as u32, topic: b"live", note }));
    }
    let mut accepted = HashSet::new();
    for _ in 0..ANSWERED {
        p.expect(|f| match f {
            Frame::Result { req_id, status: Status::QUEUED, .. } => {
                accepted.insert(format!("m{req_id}").into_bytes())
            }
            other => panic!("expected a queued RESULT, got {other:?}"),
        });
    }
    // Read a little of the fan-out on a few devices, then kill the gateway mid-way:
    // pushes not answered yet may or may not have been accepted; the answered ones must all arrive.
    let mut seen: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
    for (i, d) in devs.iter_mut().enumerate().take(5) {
        read_all(d, Duration::from_millis(50), seen.entry(i).or_default());
    }
    let mut srv = srv;
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    drop(devs);
    drop(p);

    let srv = serve(dir.path());
    let start = Instant::now();
    let mut devs: Vec<Raw> = (0..DEVICES)
        .map(|i| {
            let mut d = Raw::connect(srv.device);
            d.hello("demo", &secret(&format!("crash-{i}")), 0);
            d
        })
        .collect();
    let deadline = start + Duration::from_secs(30);
    let mut missing: Vec<usize> = (0..DEVICES).collect();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|&i| {
            let got = seen.entry(i).or_default();
            read_all(&mut devs[i], Duration::from_millis(5), got);
            !accepted.is_subset(got)
        });
    }
    if let Some(&i) = missing.first() {
        let got = &seen[&i];
        let lost: Vec<_> = accepted.difference(got).collect();
        panic!("{} devices miss messages after the restart; device {i} misses {lost:?}", missing.len());
    }
    eprintln!("{DEVICES} subscribers caught up on {MESSAGES} messages in {:?}", start.elapsed());
}
