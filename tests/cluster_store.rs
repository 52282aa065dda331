//! The cluster-mode store against a real 3-server JetStream cluster on
//! loopback: what one node appends for an offline device, another node loads;
//! collapse, cap, expiry and acks reach JetStream; unregistrations are seen by
//! other nodes; durability reports failures when NATS is gone.
//! Needs nats-server 2.9 or later (`apt-get install nats-server`).

#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pushgate::cluster::engine::Done;
use pushgate::cluster::tombs::TombEvent;
use pushgate::cluster::{Engine, EngineError};
use pushgate::config::ClusterConfig;
use pushgate::proto::{Note, Token};
use pushgate::store::cluster::ClusterStore;
use pushgate::store::{Loaded, Store, StoredMsg, Ticket, Tombstone};

use nats::NatsCluster;

const CAP: usize = 5;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn wait<T: Send + 'static>(op: impl FnOnce(Done<T>)) -> Result<T, EngineError> {
    let (tx, rx) = mpsc::channel();
    op(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(15)).expect("every engine operation completes")
}

/// An engine that reached the cluster and can read the queue stream.
fn ready_engine(node: &str, urls: Vec<String>, timeout_ms: u64) -> Engine {
    let _ = env_logger::builder().is_test(true).try_init();
    let cfg = ClusterConfig {
        nats: urls,
        node_id: node.into(),
        request_timeout_ms: timeout_ms,
        ..ClusterConfig::default()
    };
    let e = Engine::start(&cfg).expect("engine starts");
    let t0 = Instant::now();
    loop {
        match wait(|d| e.queue_fetch(Token([0; 24]), 0, d)) {
            Ok(_) => return e,
            Err(err) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("{node}: waiting for the queue stream: {err}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => panic!("{node}: queue stream not usable after 30 s: {err}"),
        }
    }
}

/// A store handle with its hooks wired to channels, as a shard would.
struct Node {
    store: ClusterStore,
    durable: Receiver<(u64, bool)>,
    loaded: Receiver<Token>,
}

fn node(e: &Engine, shard: usize, cap: usize) -> Node {
    let mut store = ClusterStore::new(e.handle().clone(), shard, 1, cap);
    let (dtx, durable) = mpsc::channel();
    let dtx = Mutex::new(dtx);
    store.set_durable_hook(Box::new(move |upto, ok| {
        let _ = dtx.lock().unwrap().send((upto, ok));
    }));
    let (ltx, loaded) = mpsc::channel();
    let ltx = Mutex::new(ltx);
    store.set_load_hook(Box::new(move |t| {
        let _ = ltx.lock().unwrap().send(t);
    }));
    Node { store, durable, loaded }
}

impl Node {
    /// Commits and waits for the durability report covering it.
    fn commit(&mut self) -> bool {
        match self.store.commit().expect("commit") {
            Ticket::Durable => true,
            Ticket::Pending(n) => loop {
                let (upto, ok) =
                    self.durable.recv_timeout(Duration::from_secs(15)).expect("a durability report");
                if upto >= n {
                    return ok;
                }
            },
        }
    }

    /// Loads `t` and returns what is pending for it.
    fn load(&mut self, t: &Token) -> Vec<StoredMsg> {
        if self.store.load(t) == Loaded::Pending {
            let got = self.loaded.recv_timeout(Duration::from_secs(15)).expect("the load hook fires");
            assert_eq!(got, *t);
        }
        self.pending(t)
    }

    fn pending(&mut self, t: &Token) -> Vec<StoredMsg> {
        let mut out = Vec::new();
        self.store.pending(t, 0, now(), 10_000, &mut out).unwrap();
        out
    }
}

fn ids(msgs: &[StoredMsg]) -> Vec<u64> {
    msgs.iter().map(|m| m.msg_id).collect()
}

fn token(i: u32) -> Token {
    let mut t = [9u8; 24];
    t[..4].copy_from_slice(&i.to_be_bytes());
    Token(t)
}

fn msg(id: u64, expiry: u64, collapse: &'static [u8]) -> StoredMsg {
    let note = Note {
        kind: 0,
        priority: 10,
        flags: 0,
        expiry: expiry as u32,
        collapse: Bytes::from_static(collapse),
        payload: Bytes::from(format!("payload-{id}")),
    };
    StoredMsg { msg_id: id, note }
}

/// Until `check` holds for a fresh handle's load of `t` (deletes are asynchronous).
fn eventually_loads(e: &Engine, t: &Token, want: &[u64], want_missed: u32) {
    let t0 = Instant::now();
    loop {
        let mut n = node(e, 7, CAP);
        let got = ids(&n.load(t));
        let missed = n.store.take_missed(t).unwrap();
        if got == want && missed == want_missed {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a fresh load sees {got:?} missed {missed}, want {want:?} {want_missed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_offline_queue_is_shared_by_the_nodes() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let ea = ready_engine("a", vec![urls[0].clone(), urls[1].clone()], 2000);
    let eb = ready_engine("b", vec![urls[1].clone(), urls[2].clone()], 2000);
    let far = now() + 3600;

    // Offline append on a, load on b: every message, in order, with its ids and fields.
    let mut a = node(&ea, 0, 100);
    let mut b = node(&eb, 0, 100);
    let t = token(1);
    for id in 1..=50 {
        let collapse: &'static [u8] = if id == 7 { b"\x00\xffc" } else { b"" };
        assert_eq!(a.store.append(&t, msg(id, far, collapse)).unwrap(), 0, "no cap applies offline");
    }
    assert!(a.commit(), "the appends are acknowledged by JetStream");
    assert_eq!(a.store.len(), 0, "nothing is cached for an offline token");
    let got = b.load(&t);
    assert_eq!(ids(&got), (1..=50).collect::<Vec<_>>());
    assert_eq!(got[6], msg(7, far, b"\x00\xffc"), "every field survives");
    assert_eq!(b.store.max_msg_id(), 50, "ids keep growing past a loaded backlog");
    assert!(b.commit(), "a load alone leaves nothing to wait for");

    // Collapse, cap + missed and expiry apply on load, and their deletes reach JetStream.
    let t2 = token(2);
    let mut a = node(&ea, 0, CAP);
    for (id, exp, c) in [
        (1, far, &b""[..]),
        (2, far, b""),
        (3, far, b"c"),
        (4, now() - 10, b""),
        (5, far, b""),
        (6, far, b"c"),
        (7, far, b""),
        (8, far, b""),
    ] {
        a.store.append(&t2, msg(id, exp, c)).unwrap();
    }
    assert!(a.commit());
    let mut b = node(&eb, 0, CAP);
    assert_eq!(ids(&b.load(&t2)), vec![2, 5, 6, 7, 8], "4 expired, 3 collapsed into 6, 1 past the cap");
    assert_eq!(b.store.take_missed(&t2).unwrap(), 1);
    eventually_loads(&ea, &t2, &[2, 5, 6, 7, 8], 0);

    // An ack deletes: a second load does not see it, also when the ack comes
    // before the publish was acknowledged.
    assert!(b.store.ack(&t2, 5).unwrap());
    assert!(!b.store.ack(&t2, 5).unwrap(), "acked twice");
    b.store.append(&t2, msg(9, far, b"")).unwrap();
    assert!(b.store.ack(&t2, 9).unwrap(), "acked before its publish completed");
    b.store.append(&t2, msg(10, far, b"c")).unwrap();
    assert!(b.commit());
    assert_eq!(ids(&b.pending(&t2)), vec![2, 7, 8, 10], "10 collapsed 6");
    eventually_loads(&ea, &t2, &[2, 7, 8, 10], 0);
    // Acked while its publish is in flight: deleted when the publish's ack comes.
    b.store.append(&t2, msg(11, far, b"")).unwrap();
    let Ticket::Pending(n) = b.store.commit().unwrap() else { panic!("a publish to wait for") };
    assert!(b.store.ack(&t2, 11).unwrap());
    let (upto, ok) = b.durable.recv_timeout(Duration::from_secs(15)).unwrap();
    assert!(upto >= n && ok);
    eventually_loads(&ea, &t2, &[2, 7, 8, 10], 0);

    // Pushes appended during a load merge with the backlog: no duplicates, id order.
    let t3 = token(3);
    let mut a = node(&ea, 0, 1000);
    for id in 1..=200 {
        a.store.append(&t3, msg(id, far, b"")).unwrap();
    }
    assert!(a.commit());
    let mut b = node(&eb, 1, 1000);
    assert_eq!(b.store.load(&t3), Loaded::Pending);
    for id in 1000..1005 {
        b.store.append(&t3, msg(id, far, b"")).unwrap();
    }
    a.store.append(&t3, msg(500, far, b"")).unwrap();
    assert!(a.commit());
    assert_eq!(b.loaded.recv_timeout(Duration::from_secs(15)), Ok(t3));
    let got = ids(&b.pending(&t3));
    let mut want: Vec<u64> = (1..=200).chain(1000..1005).collect();
    if got.contains(&500) {
        want.insert(200, 500);
    }
    assert_eq!(got, want, "the backlog and the pushes made during the load, once each");
    // Loading a loaded token again reads what other nodes appended since.
    let got = ids(&b.load(&t3));
    assert!(got.contains(&500) && got.len() == 206, "{} messages", got.len());
    assert!(b.commit());
    b.store.unload(&t3);
    assert_eq!(b.store.len(), 0, "unload drops the cache");
    let mut c = node(&ea, 3, 1000);
    assert_eq!(c.load(&t3).len(), 206, "unload deletes nothing");

    // Unregister purges and leaves a tombstone other nodes see, in their list and their watch.
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    eb.watch_tombstones(Arc::new(move |ev| seen.lock().unwrap().push(ev)));
    a.store.unregister(&t3, "app.one", 1234).unwrap();
    let ok = a.commit();
    let mut m = String::new();
    ea.metrics().render_into(&mut m);
    assert!(
        ok,
        "the purge and the tombstone are acknowledged:\n{}",
        m.lines().filter(|l| l.contains("_total")).collect::<Vec<_>>().join("\n")
    );
    let mut d = node(&eb, 0, 1000);
    assert!(d.load(&t3).is_empty(), "the queue is purged");
    let tomb = Tombstone { token: t3, app_id: "app.one".into(), at_ms: 1234 };
    assert!(d.store.tombstones().unwrap().contains(&tomb));
    let watched = |ev: &TombEvent| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if events.lock().unwrap().contains(ev) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(watched(&TombEvent::Put(tomb.clone())), "{:?}", events.lock().unwrap());
    a.store.reregister(&t3).unwrap();
    assert!(a.commit());
    assert!(!d.store.tombstones().unwrap().contains(&tomb));
    assert!(watched(&TombEvent::Lifted(t3)), "{:?}", events.lock().unwrap());
    // Tombstones are split among shards like tokens.
    let mut mine = ClusterStore::new(eb.handle().clone(), t2.shard(2), 2, CAP);
    let mut other_shard = ClusterStore::new(eb.handle().clone(), 1 - t2.shard(2), 2, CAP);
    a.store.unregister(&t2, "app.one", 99).unwrap();
    assert!(a.commit());
    assert!(mine.tombstones().unwrap().iter().any(|x| x.token == t2));
    assert!(!other_shard.tombstones().unwrap().iter().any(|x| x.token == t2));
    drop(nats);
}

#[test]
fn durability_reports_failure_when_nats_is_gone_and_rates() {
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    // A long deadline for the rates: a debug build on 2 shared cores is slow.
    let ea = ready_engine("a", urls.clone(), 10_000);
    let eb = ready_engine("b", vec![urls[2].clone(), urls[1].clone()], 10_000);
    let far = now() + 3600;

    // Rates through the store (loopback, 2 cores shared with the servers: ceilings, not promises).
    let mut a = node(&ea, 0, 100);
    let n_tokens = 2000u32;
    let t0 = Instant::now();
    for i in 0..n_tokens {
        for k in 0..5 {
            a.store.append(&token(10_000 + i), msg(u64::from(i) * 10 + k + 1, far, b"")).unwrap();
        }
    }
    let ok = a.commit();
    let took = t0.elapsed();
    let mut m = String::new();
    ea.metrics().render_into(&mut m);
    assert!(
        ok,
        "{}",
        m.lines()
            .filter(|l| l.contains("errors_total") || l.contains("queue_publish"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "offline appends (R3, Nats-Msg-Id): {} in {took:?} = {:.0}/s",
        n_tokens * 5,
        f64::from(n_tokens * 5) / took.as_secs_f64()
    );
    let mut b = node(&eb, 0, 100);
    let t0 = Instant::now();
    for i in 0..n_tokens {
        assert_eq!(b.store.load(&token(10_000 + i)), Loaded::Pending);
    }
    for _ in 0..n_tokens {
        b.loaded.recv_timeout(Duration::from_secs(30)).expect("every load completes");
    }
    let took = t0.elapsed();
    let mut total = 0;
    for i in 0..n_tokens {
        total += b.pending(&token(10_000 + i)).len();
    }
    assert_eq!(total, n_tokens as usize * 5);
    eprintln!(
        "loads of 5-message backlogs, all in flight: {n_tokens} in {took:?} = {:.0} loads/s, {:.0} msgs/s",
        f64::from(n_tokens) / took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let big = token(1);
    for id in 1..=100 {
        a.store.append(&big, msg(id, far, b"")).unwrap();
    }
    assert!(a.commit());
    let t0 = Instant::now();
    let got = b.load(&big);
    eprintln!("one load of a 100-message backlog: {:?}", t0.elapsed());
    assert_eq!(got.len(), 100);
    let t0 = Instant::now();
    for id in 1..=100 {
        assert!(b.store.ack(&big, id).unwrap());
    }
    b.commit();
    eventually_loads(&ea, &big, &[], 0);
    eprintln!("100 acks deleted and seen gone from another node in {:?}", t0.elapsed());

    // NATS gone: the batch fails within the engine's deadline, and no call blocks.
    drop((a, b, ea, eb));
    let ea = ready_engine("a", urls.clone(), 1000);
    let eb = ready_engine("b", vec![urls[2].clone(), urls[1].clone()], 1000);
    let mut a = node(&ea, 0, 100);
    let mut b = node(&eb, 0, 100);

    // An offline append that lands after a load's read is picked up by the
    // load's recheck, three deadlines (plus a second) later, on a sweep.
    let late = token(5);
    assert!(b.load(&late).is_empty());
    a.store.append(&late, msg(77, far, b"")).unwrap();
    assert!(a.commit());
    b.store.sweep_expired(now()).unwrap();
    assert!(b.loaded.try_recv().is_err(), "not due yet");
    std::thread::sleep(Duration::from_millis(4100));
    b.store.sweep_expired(now()).unwrap();
    assert_eq!(b.loaded.recv_timeout(Duration::from_secs(5)), Ok(late));
    assert_eq!(ids(&b.pending(&late)), vec![77]);

    for i in 0..3 {
        nats.kill(i);
    }
    let t0 = Instant::now();
    for id in 1..=10 {
        a.store.append(&token(2), msg(id, far, b"")).unwrap();
    }
    a.store.unregister(&token(3), "app.one", 5).unwrap();
    assert!(t0.elapsed() < Duration::from_millis(200), "appends do not wait for NATS");
    assert!(!a.commit(), "unacknowledged writes fail their batch");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "failed within the deadline (1 s) plus slack: {took:?}");
    assert_eq!(b.store.load(&token(4)), Loaded::Pending);
    assert_eq!(b.loaded.recv_timeout(Duration::from_secs(5)), Ok(token(4)), "a failed load still ends");
    assert!(b.pending(&token(4)).is_empty());
    assert!(b.store.tombstones().is_err(), "the start-up read fails rather than hangs");
}
