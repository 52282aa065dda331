//! Cluster mode against real nats-server processes (a 3-server JetStream
//! cluster from deploy/nats on loopback): the engine's deadlines, the route
//! table's compare-and-swap claims, and forwarding between two nodes.
//! Needs nats-server 2.9 or later (`apt-get install nats-server`).

#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use pushgate::cluster::engine::Done;
use pushgate::cluster::metrics::Op;
use pushgate::cluster::routes::{Claimed, Released, Route};
use pushgate::cluster::{Engine, EngineError};
use pushgate::config::{ClusterConfig, Config};
use pushgate::proto::Token;

use nats::NatsCluster;

fn engine_cfg(node: &str, urls: Vec<String>) -> ClusterConfig {
    ClusterConfig { nats: urls, node_id: node.into(), request_timeout_ms: 2000, ..ClusterConfig::default() }
}

/// Runs an engine operation and waits for its completion (bounded).
fn wait<T: Send + 'static>(op: impl FnOnce(Done<T>)) -> Result<T, EngineError> {
    let (tx, rx) = mpsc::channel();
    op(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(15)).expect("every engine operation completes")
}

/// An engine that has reached the cluster and made the route bucket.
fn ready_engine(node: &str, urls: Vec<String>) -> Engine {
    let e = Engine::start(&engine_cfg(node, urls)).expect("engine starts");
    let t0 = Instant::now();
    loop {
        match wait(|d| e.lookup(Token([0; 24]), d)) {
            Ok(_) => return e,
            Err(err) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("{node}: waiting for the route bucket: {err}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => panic!("{node}: route bucket not usable after 30 s: {err}"),
        }
    }
}

fn token(i: u32) -> Token {
    let mut t = [7u8; 24];
    t[..4].copy_from_slice(&i.to_be_bytes());
    Token(t)
}

#[test]
fn deploy_gateway_configs_parse_with_distinct_nodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway");
    let mut ids = Vec::new();
    for i in 1..=3 {
        let cfg = Config::load(&dir.join(format!("g{i}.toml"))).expect("deploy config is valid");
        let c = cfg.cluster.expect("a [cluster] table");
        assert_eq!(c.nats.len(), 3);
        assert!(!cfg.apps.is_empty(), "cluster mode needs configured apps");
        ids.push(c.node_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "node ids are unique");
}

#[test]
fn an_unreachable_engine_fails_at_its_deadline_not_later() {
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = engine_cfg("lonely", vec![format!("nats://127.0.0.1:{port}")]);
    cfg.request_timeout_ms = 300;
    let e = Engine::start(&cfg).expect("starts without a server");
    assert!(!e.connected());
    let t0 = Instant::now();
    let r = wait(|d| e.claim(token(1), d));
    let took = t0.elapsed();
    assert!(matches!(r, Err(EngineError::Timeout | EngineError::Unavailable)), "{r:?}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(e.metrics().failed(Op::Claim), 1);
    // Dropping the engine completes what is still queued, with Stopped.
    let (tx, rx) = mpsc::channel();
    for i in 0..10 {
        let tx = tx.clone();
        e.lookup(token(i), Box::new(move |r| tx.send(r.err()).unwrap()));
    }
    let t0 = Instant::now();
    drop(e);
    assert!(t0.elapsed() < Duration::from_millis(250), "stopping does not wait for deadlines");
    drop(tx);
    let errs: Vec<_> = rx.iter().collect();
    assert_eq!(errs.len(), 10, "every operation completed exactly once");
    assert!(errs.iter().all(|e| *e == Some(EngineError::Stopped)), "{errs:?}");
}

#[test]
fn a_full_engine_queue_fails_at_once_with_busy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = engine_cfg("small", vec![format!("nats://127.0.0.1:{port}")]);
    cfg.queue = 4;
    let e = Engine::start(&cfg).expect("starts");
    let (tx, rx) = mpsc::channel();
    // The engine thread spawns queued jobs quickly; submit faster than it can take
    // them from the same thread by holding many at once.
    for i in 0..10_000 {
        let tx = tx.clone();
        e.lookup(token(i), Box::new(move |r| tx.send(r.err()).unwrap()));
    }
    let busy = rx.try_iter().filter(|e| *e == Some(EngineError::Busy)).count();
    assert!(busy > 0, "a bounded queue refused some at once");
    assert!(e.metrics().busy.load(std::sync::atomic::Ordering::Relaxed) as usize >= busy);
}

#[test]
fn route_claims_race_release_and_lookup_on_a_real_cluster() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    // Each node talks to a different server first.
    let a = ready_engine("a", vec![urls[0].clone(), urls[1].clone()]);
    let b = ready_engine("b", vec![urls[1].clone(), urls[2].clone()]);
    let c = ready_engine("c", vec![urls[2].clone(), urls[0].clone()]);

    // Claim race: for each token, two nodes claim at once; exactly one wins.
    for i in 0..20 {
        let t = token(100 + i);
        let (tx, rx) = mpsc::channel();
        for (name, e) in [("a", &a), ("b", &b)] {
            let tx = tx.clone();
            e.claim(t, Box::new(move |r| tx.send((name, r)).unwrap()));
        }
        let mut results: Vec<_> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        results.sort_by_key(|(n, _)| *n);
        let won: Vec<_> =
            results.iter().filter(|(_, r)| matches!(r, Ok(Claimed::Won { .. }))).map(|(n, _)| *n).collect();
        // Both may also win one after the other (the second saw the first's claim):
        // then the later winner names the earlier one as previous.
        let lost: Vec<_> = results.iter().filter(|(_, r)| matches!(r, Ok(Claimed::Lost { .. }))).collect();
        assert_eq!(won.len() + lost.len(), 2, "{results:?}");
        let holder = wait(|d| c.lookup(t, d)).unwrap().expect("someone holds it");
        if won.len() == 1 {
            let Ok(Claimed::Lost { holder: seen }) = &lost[0].1 else { unreachable!() };
            assert_eq!(seen.as_ref(), Some(&holder), "the loser is told the winner");
            assert_eq!(holder.node, won[0]);
        } else {
            let prevs: Vec<_> = results
                .iter()
                .filter_map(|(_, r)| match r {
                    Ok(Claimed::Won { previous, revision }) => Some((previous.clone(), *revision)),
                    _ => None,
                })
                .collect();
            let later = prevs.iter().max_by_key(|p| p.1).unwrap();
            assert!(later.0.is_some(), "the later of two sequential claims replaced the earlier: {prevs:?}");
            assert_eq!(holder.revision, later.1);
        }
    }

    // A claim race among three nodes at once, on fresh tokens: never two winners from one read.
    let mut single_winner_races = 0;
    for i in 0..20 {
        let t = token(200 + i);
        let (tx, rx) = mpsc::channel();
        for e in [&a, &b, &c] {
            let tx = tx.clone();
            e.claim(t, Box::new(move |r| tx.send(r).unwrap()));
        }
        let rs: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()).collect();
        let fresh_wins = rs.iter().filter(|r| matches!(r, Claimed::Won { previous: None, .. })).count();
        assert_eq!(fresh_wins, 1, "exactly one claim creates the route: {rs:?}");
        if rs.iter().filter(|r| matches!(r, Claimed::Won { .. })).count() == 1 {
            single_winner_races += 1;
        }
    }
    eprintln!("three-way races with a single winner: {single_winner_races}/20");

    // A stale release does nothing; the holder's release does.
    let t = token(1);
    let Ok(Claimed::Won { revision: ra, previous: None }) = wait(|d| a.claim(t, d)) else {
        panic!("a claims")
    };
    let Ok(Claimed::Won { revision: rb, previous }) = wait(|d| b.claim(t, d)) else { panic!("b replaces a") };
    assert_eq!(previous.as_deref(), Some("a"), "b learns whose session to replace");
    assert!(rb > ra);
    assert_eq!(wait(|d| a.release(t, ra, d)), Ok(Released::NotHolder), "a's late close is a no-op");
    let newest = Route { node: "b".into(), revision: rb };
    assert_eq!(wait(|d| c.lookup(t, d)), Ok(Some(newest.clone())), "lookup sees the newest claim");
    assert_eq!(wait(|d| a.lookup(t, d)), Ok(Some(newest)), "from every server");
    assert_eq!(wait(|d| b.release(t, rb, d)), Ok(Released::Released));
    assert_eq!(wait(|d| c.lookup(t, d)), Ok(None));
    assert_eq!(wait(|d| b.release(t, rb, d)), Ok(Released::NotHolder), "a second release is a no-op");
    let Ok(Claimed::Won { previous: None, .. }) = wait(|d| a.claim(t, d)) else {
        panic!("claim after release")
    };
    assert_eq!(wait(|d| c.lookup(t, d)).unwrap().map(|r| r.node).as_deref(), Some("a"));
    assert!(a.metrics().ok(Op::Claim) >= 40);
}
