//! The cluster end to end, as an operator runs it (docs/cluster.md): 3
//! nats-server processes with JetStream, 3 `pushgate serve` processes with
//! `[cluster]` (from deploy/gateway/*.toml) and HAProxy with PROXY v2 and
//! /readyz checks in front (from deploy/haproxy.cfg), all on loopback. Devices
//! and providers go through HAProxy unless a test must pick the node.
//!
//! Needs nats-server (2.9 or later) and haproxy; skipped with a message
//! outside CI when either is missing (.ci/run installs both).

mod common;
#[path = "cluster/failover.rs"]
mod failover;
#[allow(dead_code)]
#[path = "cluster/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "cluster/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;

use std::time::Duration;

use common::{push_frame, secret, wait_until, with_note};
use harness::{metric_sum, Cluster};
use load::{Device, Plan, Via};
use pushgate::proto::{Frame, GoAwayReason, Status, Token};

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn in_an_hour() -> u32 {
    (unix_now() + 3600) as u32
}

/// protocol.md 10.3 item 3: a fail-over may show a device one notification
/// under two msg_ids (a forward whose answer was lost, then stored): at most
/// 1 in 20 of the pushes accepted while a server is killed under load.
fn few_two_ids(v: &load::Verdict) -> bool {
    if !v.two_ids.is_empty() {
        eprintln!(
            "{} arrived under two msg_ids (allowed in a fail-over), e.g. {:?}",
            v.two_ids.len(),
            &v.two_ids[..1]
        );
    }
    v.two_ids.len() * 20 <= v.accepted.max(1)
}

#[test]
fn any_provider_reaches_any_device_through_haproxy() {
    if !harness::tools_available() {
        return;
    }
    let mut c = Cluster::start("");
    let n = harness::device_budget(120);
    let devs = failover::devices(&c, "any", n, false);
    let per_node = c.devices_per_node();
    assert_eq!(per_node.iter().sum::<usize>(), n, "every device counted once: {per_node:?}");
    assert!(
        per_node.iter().all(|&k| k >= n / 6),
        "HAProxy spreads the devices over every node: {per_node:?}"
    );
    let providers = 6;
    let rounds = 3;
    let plan =
        Plan { rounds: Some(rounds), rate: 400, window: 32, ttl_s: 3600, hang: Duration::from_secs(10) };
    let mut provider_nodes = Vec::new();
    let (sent, runs) = failover::run_load(&mut c, &devs, providers, plan, |c| {
        // The providers are spread too (round robin): seen while they push.
        wait_until(Duration::from_secs(5), || {
            let m: Vec<usize> = c
                .gateways
                .iter()
                .map(|g| metric_sum(&g.metrics(), "pushgate_providers_connected") as usize)
                .collect();
            let done = m.iter().sum::<usize>() == providers;
            if done {
                provider_nodes = m;
            }
            done
        });
    });
    assert_eq!(provider_nodes, vec![2, 2, 2], "6 providers, 2 on each node");
    assert_eq!(sent.len(), n * providers * rounds as usize);
    assert!(load::wait_arrivals(&sent, &devs, Duration::from_secs(15)), "not everything arrived in 15 s");
    std::thread::sleep(Duration::from_millis(300)); // nothing more may come
    let v = load::verify(&sent, &devs, |_| true);
    let logins: Vec<u32> = runs.iter().map(|r| r.logins).collect();
    let sum = format!(
        "statuses {:?}, {} accepted and arrived, {} unanswered, {} repeats, slowest RESULT {:?}, logins {logins:?}",
        v.statuses, v.accepted, v.unknown, v.repeats, v.max_latency
    );
    assert_eq!(v.statuses.get("delivered"), Some(&sent.len()), "every RESULT `delivered`: {sum}");
    assert!(v.losses_and_ghosts().is_empty(), "{:?}\n{sum}", v.losses_and_ghosts());
    assert_eq!(v.repeats, 0, "every NOTIFY exactly once: {sum}");
    assert!(v.disorder.is_empty(), "in order per device: {:?}", &v.disorder[..v.disorder.len().min(5)]);
    for (i, d) in devs.iter().enumerate() {
        assert_eq!(d.notes().len(), providers * rounds as usize, "device {i}");
    }
    // Pushes really crossed nodes both ways on every node.
    for g in &c.gateways {
        let m = g.metrics();
        let fwd = metric_sum(&m, "pushgate_engine_pushes_total{dir=\"forwarded\"}");
        let served = metric_sum(&m, "pushgate_engine_pushes_total{dir=\"served\"}");
        assert!(fwd > 0.0 && served > 0.0, "{}: forwarded {fwd}, served {served}", g.name);
    }
    eprintln!(
        "any-to-any: {n} devices {per_node:?}, {} pushes; {sum}; {:?}",
        sent.len(),
        c.started.elapsed()
    );
}

/// One session whose end (or survival) is watched.
fn session_on(via: Via, s: &[u8], t: Token) -> Device {
    Device::start(via, s.to_vec(), t, false)
}

fn ended_replaced(d: &Device) -> bool {
    let l = d.log.lock().unwrap();
    !l.online && l.goaways == [GoAwayReason::REPLACED]
}

#[test]
fn the_same_token_on_two_nodes_keeps_exactly_one_session() {
    if !harness::tools_available() {
        return;
    }
    let c = Cluster::start("");
    let which_node = |c: &Cluster| -> Option<usize> {
        let m = c.devices_per_node();
        (m.iter().sum::<usize>() == 1).then(|| m.iter().position(|&k| k == 1)).flatten()
    };
    // 1. Through HAProxy: the second connection lands on another node
    //    (leastconn), and replaces the first there.
    let s = secret("twice");
    let token = c.token(&s);
    let first = session_on(Via::Balancer(c.devices_addr()), &s, token);
    assert!(wait_until(Duration::from_secs(10), || first.online()), "first session online");
    let mut a = None;
    assert!(wait_until(Duration::from_secs(5), || {
        a = which_node(&c);
        a.is_some()
    }));
    let a = a.unwrap();
    let mut second = session_on(Via::Balancer(c.devices_addr()), &s, token);
    assert!(wait_until(Duration::from_secs(10), || second.online() || ended_replaced(&second)));
    assert!(wait_until(Duration::from_secs(5), || which_node(&c).is_some()));
    if which_node(&c) == Some(a) {
        // HAProxy put both on one node: take the second one straight to another.
        eprintln!("HAProxy sent both connections to g{}; connecting the second directly", a + 1);
        drop(second);
        second = session_on(Via::Direct(c.gateways[(a + 1) % 3].device), &s, token);
    }
    assert!(
        wait_until(Duration::from_secs(10), || ended_replaced(&first)),
        "first: {:?}",
        first.log.lock().unwrap()
    );
    assert!(second.online(), "the second session survives: {:?}", second.log.lock().unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || which_node(&c).is_some_and(|b| b != a)),
        "{:?}",
        c.devices_per_node()
    );
    // Pushes from every node reach the survivor, and only it.
    for (k, g) in c.gateways.iter().enumerate() {
        let mut p = load::direct_provider(g.provider);
        let (st, id, _) =
            p.push(push_frame(k as u32 + 1, token, in_an_hour(), format!("via-g{}", k + 1).as_bytes()));
        assert_eq!(st, Status::DELIVERED, "push through g{}", k + 1);
        assert_ne!(id, 0);
    }
    assert!(wait_until(Duration::from_secs(5), || second.notes().len() == 3));
    let got: Vec<Vec<u8>> = second.notes().into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b"via-g1".to_vec(), b"via-g2".to_vec(), b"via-g3".to_vec()]);
    assert!(first.notes().is_empty(), "nothing for the replaced session");
    drop((first, second));

    // 2. At once: two sessions of each token HELLO on g1 and g2 in the same
    //    instant; exactly one of each pair survives, and it gets the pushes.
    assert!(wait_until(Duration::from_secs(5), || c.devices_per_node().iter().sum::<usize>() == 0));
    let k = 10;
    let secrets: Vec<Vec<u8>> = (0..k).map(|i| secret(&format!("race-{i}"))).collect();
    let pairs: Vec<(Device, Device, Token)> = secrets
        .iter()
        .map(|s| {
            let t = c.token(s);
            let one = session_on(Via::Direct(c.gateways[0].device), s, t);
            let two = session_on(Via::Direct(c.gateways[1].device), s, t);
            (one, two, t)
        })
        .collect();
    let settled = |p: &(Device, Device, Token)| {
        (p.0.online() && ended_replaced(&p.1)) || (p.1.online() && ended_replaced(&p.0))
    };
    let ok = wait_until(Duration::from_secs(10), || pairs.iter().all(settled));
    let states: Vec<String> = pairs
        .iter()
        .map(|(x, y, _)| format!("g1 {:?} / g2 {:?}", x.log.lock().unwrap(), y.log.lock().unwrap()))
        .collect();
    assert!(ok, "each pair: exactly one online, the other GOAWAY replaced:\n{}", states.join("\n"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(pairs.iter().all(settled), "and it stays so:\n{}", states.join("\n"));
    assert_eq!(c.devices_per_node().iter().sum::<usize>(), k, "{:?}", c.devices_per_node());
    let mut p3 = load::direct_provider(c.gateways[2].provider);
    for (i, (x, y, t)) in pairs.iter().enumerate() {
        let (st, id, _) = p3.push(push_frame(i as u32 + 1, *t, in_an_hour(), b"after the race"));
        assert_eq!(st, Status::DELIVERED, "pair {i}");
        let (alive, gone) = if x.online() { (x, y) } else { (y, x) };
        assert!(
            wait_until(Duration::from_secs(5), || alive.notes() == vec![(id, b"after the race".to_vec())])
        );
        assert!(gone.notes().is_empty(), "pair {i}: nothing for the replaced session");
    }
    eprintln!("same token twice: {:?}", c.started.elapsed());
}

/// A gateway node dies under load: its devices come back on the other
/// nodes through HAProxy; every push is answered in time with a defined
/// status; nothing accepted for a device that stayed on its node is lost, and
/// nothing refused reaches it.
#[test]
fn kill_9_of_a_gateway_under_load_moves_its_devices_and_answers_in_time() {
    if !harness::tools_available() {
        return;
    }
    let mut c = Cluster::start("");
    let run = failover::gateway_kill(&mut c, harness::device_budget(90), 0);
    run.assert_answered_in_time();
    assert!(run.moved > 0 && run.stayed.accepted > 0, "{}", run.summary);
    let wrong = run.stayed.losses_and_ghosts();
    assert!(wrong.is_empty(), "devices that stayed on their node: {wrong:?}\n{}", run.summary);
    assert!(
        run.all.wrong_ids.is_empty() && run.all.strangers.is_empty() && few_two_ids(&run.all),
        "{:?}",
        run.all.losses_and_ghosts()
    );
    eprintln!("kill -9 of a gateway: {:?}", c.started.elapsed());
}

/// The full check for a gateway's death: every notification whose
/// RESULT said `delivered` or `queued` arrives, also for the devices that
/// moved, and nothing refused arrives. Today a push for a moving device is
/// stored in the local store of whichever node took it (see the report in
/// the failure message). May also hit the first bug of
/// `kill_9_of_a_nats_server_keeps_every_promise`.
#[test]

fn kill_9_of_a_gateway_under_load_loses_nothing_accepted() {
    if !harness::tools_available() {
        return;
    }
    let mut c = Cluster::start("");
    let victim = 0;
    let mut run = failover::gateway_kill(&mut c, harness::device_budget(90), victim);
    run.assert_answered_in_time();
    let wrong = run.all.losses_and_ghosts();
    if !run.arrived || !wrong.is_empty() {
        let diag = failover::where_are_the_missing(&mut c, &mut run, Some(victim));
        panic!("{wrong:?}\n{diag}\n{}", run.summary);
    }
}

/// One NATS server dies under load and comes back: pushes meanwhile get a
/// defined status within the engine's deadline (no hang), every `delivered`
/// one arrives (for the devices that kept their connection), and the
/// cluster serves again afterwards. What `queued` and refusals promise during
/// this fail-over is checked by the ignored test below (two bugs).
#[test]
fn kill_9_of_a_nats_server_under_load_then_its_restart() {
    if !harness::tools_available() {
        return;
    }
    let mut c = Cluster::start("");
    let mut run = failover::nats_kill(&mut c, harness::device_budget(60));
    run.assert_answered_in_time();
    assert!(run.stayed.accepted > 0, "{}", run.summary);
    if !run.stayed.missing_delivered.is_empty() {
        let diag = failover::where_are_the_missing(&mut c, &mut run, None);
        panic!("`delivered` but never arrived: {:?}\n{diag}\n{}", run.stayed.missing_delivered, run.summary);
    }
    assert!(
        run.all.wrong_ids.is_empty() && run.all.strangers.is_empty() && few_two_ids(&run.all),
        "{:?}",
        run.all.losses_and_ghosts()
    );
    eprintln!("kill -9 of a NATS server: {:?}", c.started.elapsed());
}

/// The full check for a NATS server's death: every `delivered` or
/// `queued` push arrives and nothing refused arrives (protocol.md 10.0 item
/// 7). Fails today, on two bugs of src/shard/cluster.rs `forwarded()`:
/// a forward whose reply is lost when n1 dies ends in the engine's `timeout`
/// (outcome unknown) and is answered `unavailable`, although the device's
/// node delivered it; and a forward that meets `no_responders` while the
/// device's node is reconnecting to NATS is stored on the sending node and
/// answered `queued`, but never reaches the device, which stays connected
/// to its node. Intermittent: the first seen in 7 of 10 runs, the second in 2 of 9.
#[test]

fn kill_9_of_a_nats_server_keeps_every_promise() {
    if !harness::tools_available() {
        return;
    }
    let mut c = Cluster::start("");
    let mut run = failover::nats_kill(&mut c, harness::device_budget(60));
    let refused = run.all.statuses.get("unavailable").copied().unwrap_or(0);
    let wrong = run.all.losses_and_ghosts();
    if !wrong.is_empty() {
        let diag = failover::where_are_the_missing(&mut c, &mut run, None);
        panic!("{wrong:?} ({refused} answered `unavailable`)\n{diag}\n{}", run.summary);
    }
}

#[test]

fn offline_on_one_node_backlog_arrives_through_another() {
    if !harness::tools_available() {
        return;
    }
    let cap = 8;
    let c = Cluster::start(&format!("[limits]\ndevice_queue_cap = {cap}\n"));
    assert_eq!(c.queue_cap, cap);
    let (a, b, cn) = (&c.gateways[0], &c.gateways[1], &c.gateways[2]);
    let mut pa = load::direct_provider(a.provider);
    let mut pb = load::direct_provider(b.provider);
    // Two devices are online on A once, then go offline.
    let (sd, se) = (secret("offline-d"), secret("offline-e"));
    let (td, te) = (c.token(&sd), c.token(&se));
    for (s, t) in [(&sd, td), (&se, te)] {
        let mut d = session_on(Via::Direct(a.device), s, t);
        assert!(wait_until(Duration::from_secs(10), || d.online()));
        assert_eq!(pb.push(push_frame(1, t, in_an_hour(), b"hello")).0, Status::DELIVERED, "forwarded to A");
        assert!(wait_until(Duration::from_secs(5), || d.notes().len() == 1));
        d.stop();
    }
    assert!(wait_until(Duration::from_secs(5), || a.devices_connected() == 0), "both offline");
    // While they are away, pushes through A and through B, each answered before the next.
    let mut req = 10;
    let mut push = |p: &mut common::Raw, t: Token, expiry: u32, collapse: &'static [u8], body: &str| {
        req += 1;
        let (st, id, _) =
            p.push(with_note(push_frame(req, t, expiry, body.as_bytes()), |n| n.collapse = collapse));
        assert_eq!(st, Status::QUEUED, "{body}: the device is offline");
        id
    };
    let short = (unix_now() + 2) as u32;
    push(&mut pa, td, short, b"", "short-lived");
    let mut want = Vec::new();
    want.push(("m0", push(&mut pa, td, in_an_hour(), b"", "m0")));
    push(&mut pa, td, in_an_hour(), b"score", "score-old");
    want.push(("m1", push(&mut pb, td, in_an_hour(), b"", "m1")));
    want.push(("m2", push(&mut pa, td, in_an_hour(), b"", "m2")));
    want.push(("score-new", push(&mut pb, td, in_an_hour(), b"score", "score-new")));
    want.push(("m3", push(&mut pb, td, in_an_hour(), b"", "m3")));
    // E: cap + 3 through A and B in turn; the 3 oldest are dropped and counted.
    let mut want_e = Vec::new();
    for i in 0..cap + 3 {
        let body = format!("e{i}");
        let id = if i % 2 == 0 {
            push(&mut pa, te, in_an_hour(), b"", &body)
        } else {
            push(&mut pb, te, in_an_hour(), b"", &body)
        };
        if i >= 3 {
            want_e.push((body, id));
        }
    }
    while unix_now() <= u64::from(short) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back, through C.
    let d = session_on(Via::Direct(cn.device), &sd, td);
    let e = session_on(Via::Direct(cn.device), &se, te);
    assert!(wait_until(Duration::from_secs(10), || d.online() && e.online()));
    let want: Vec<(u64, Vec<u8>)> = want.into_iter().map(|(b, id)| (id, b.as_bytes().to_vec())).collect();
    let want_e: Vec<(u64, Vec<u8>)> = want_e.into_iter().map(|(b, id)| (id, b.into_bytes())).collect();
    wait_until(Duration::from_secs(5), || d.notes().len() >= want.len() && e.notes().len() >= want_e.len());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.notes(),
        want,
        "the backlog from A and B, in order: the newer collapse id only, nothing expired"
    );
    assert_eq!(d.log.lock().unwrap().missed, 0);
    assert_eq!(e.notes(), want_e, "the newest {cap}");
    assert_eq!(e.log.lock().unwrap().missed, 3, "the 3 the cap dropped unsent are counted");
    // protocol.md 10: msg_id grows with acceptance order for one device,
    // whichever node accepted the push.
    for (name, ids) in [("d", &want), ("e", &want_e)] {
        let ids: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "device {name}: ids in acceptance order {ids:?}");
    }
    eprintln!("offline on A, back through C: {:?}", c.started.elapsed());
}

#[test]
fn kill_9_of_a_gateway_during_a_broadcast_loses_nothing_for_any_device() {
    if !harness::tools_available() {
        return;
    }
    const MESSAGES: u32 = 40;
    let mut c = Cluster::start("");
    let n = harness::device_budget(90);
    let devs = failover::devices(&c, "bcast", n, true);
    let victim = 2;
    let mut p = load::direct_provider(c.gateways[0].provider);
    for i in 0..MESSAGES {
        let body = format!("b{i}");
        let note = common::note(in_an_hour(), body.as_bytes());
        p.send(&Frame::PushTopic(pushgate::proto::PushTopic { req_id: i, topic: b"~all", note }));
    }
    let mut accepted = std::collections::HashSet::new();
    for k in 0..MESSAGES {
        if k == MESSAGES / 4 {
            c.kill_gateway(victim); // mid fan-out: its devices come back through HAProxy
        }
        p.expect(|f| match f {
            Frame::Result { req_id, status: Status::QUEUED, .. } => accepted.insert(format!("b{req_id}")),
            other => panic!("expected a queued RESULT, got {other:?}"),
        });
    }
    let all_arrived = || {
        devs.iter().all(|d| {
            let got: std::collections::HashSet<String> =
                d.notes().into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect();
            accepted.is_subset(&got)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), all_arrived),
        "after 30 s, {} of {n} devices lack accepted broadcasts\n{}",
        devs.iter()
            .filter(|d| {
                let got: std::collections::HashSet<String> =
                    d.notes().into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect();
                !accepted.is_subset(&got)
            })
            .count(),
        c.logs()
    );
    let moved = c.devices_per_node();
    assert_eq!(moved[victim], 0);
    eprintln!(
        "broadcast fail-over: {n} devices, {} accepted, every one arrived; now {moved:?}",
        accepted.len()
    );
}
