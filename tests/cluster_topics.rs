//! The cluster engine's topic side against a real 3-server JetStream cluster
//! on loopback: the topic stream every node replays and follows (also
//! across a NATS server's kill -9), expiry-0 announcements, delivery counts,
//! subscriptions in KV under concurrent writers, their change notices, and
//! the cluster store's subscription methods across nodes.
//! Needs nats-server 2.9 or later (`apt-get install nats-server`).

#[allow(dead_code)]
#[path = "cluster/nats.rs"]
mod nats;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pushgate::cluster::engine::Done;
use pushgate::cluster::subs::SubOp;
use pushgate::cluster::topics::{Count, TopicEvent};
use pushgate::cluster::{Engine, EngineError};
use pushgate::config::ClusterConfig;
use pushgate::proto::{Note, Token};
use pushgate::store::cluster::ClusterStore;
use pushgate::store::{Loaded, Store, SubRecord, Ticket};

use nats::NatsCluster;

const LOG_CAP: usize = 1000;
const LOG_BYTES: usize = 64 << 20;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn wait<T: Send + 'static>(op: impl FnOnce(Done<T>)) -> Result<T, EngineError> {
    let (tx, rx) = mpsc::channel();
    op(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(70)).expect("every engine operation completes")
}

/// Until `cond` holds, at most `secs`.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An engine that reached the cluster and can use the subscription bucket.
fn ready_engine(node: &str, urls: Vec<String>) -> Engine {
    let _ = env_logger::builder().is_test(true).try_init();
    let cfg = ClusterConfig {
        nats: urls,
        node_id: node.into(),
        request_timeout_ms: 2000,
        ..ClusterConfig::default()
    };
    let e = Engine::start(&cfg).expect("engine starts");
    let t0 = Instant::now();
    loop {
        match wait(|d| e.subs_get(Token([0; 24]), d)) {
            Ok(_) => return e,
            Err(err) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("{node}: waiting for the subscription bucket: {err}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => panic!("{node}: subscription bucket not usable after 30 s: {err}"),
        }
    }
}

fn note(expiry: u64, payload: String) -> Note {
    Note {
        kind: 0,
        priority: 10,
        flags: 1,
        expiry: expiry as u32,
        collapse: Bytes::from_static(b"c1"),
        payload: Bytes::from(payload),
    }
}

/// A node's topic feed: every event in arrival order, and its caught-up report.
struct Feed {
    events: Arc<Mutex<Vec<TopicEvent>>>,
    caught_up: Receiver<Result<u64, EngineError>>,
}

impl Feed {
    fn start(e: &Engine) -> Feed {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let (tx, caught_up) = mpsc::channel();
        e.topic_feed(
            LOG_CAP,
            LOG_BYTES,
            Arc::new(move |ev| sink.lock().unwrap().push(ev)),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        Feed { events, caught_up }
    }

    fn caught_up(&self) -> u64 {
        self.caught_up.recv_timeout(Duration::from_secs(70)).expect("caught_up completes").expect("caught up")
    }

    fn logged(&self) -> Vec<TopicEvent> {
        self.events.lock().unwrap().iter().filter(|e| e.logged).cloned().collect()
    }

    fn announced(&self) -> Vec<TopicEvent> {
        self.events.lock().unwrap().iter().filter(|e| !e.logged).cloned().collect()
    }
}

fn publish(e: &Engine, app: &str, topic: &[u8], n: &Note) -> u64 {
    wait(|d| e.topic_publish(app, topic, n, d)).expect("topic publish")
}

#[test]
fn every_feed_sees_every_topic_message_in_order() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let ea = ready_engine("a", vec![urls[0].clone(), urls[1].clone()]);
    let eb = ready_engine("b", vec![urls[1].clone(), urls[2].clone()]);
    let far = now() + 3600;

    let fa = Feed::start(&ea);
    assert_eq!(fa.caught_up(), 0, "an empty stream: caught up at once");
    let mut want = Vec::new();
    for i in 0..3 {
        for (app, topic, e) in
            [("app.one", &b"news"[..], &ea), ("app.one", b"sport", &eb), ("app.two", b"news", &ea)]
        {
            let n = note(far, format!("{app}/{}/{i}", String::from_utf8_lossy(topic)));
            let seq = publish(e, app, topic, &n);
            want.push(TopicEvent { app_id: app.into(), topic: topic.into(), id: seq, note: n, logged: true });
        }
    }
    let seqs: Vec<u64> = want.iter().map(|w| w.id).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences grow: {seqs:?}");
    let expired = Note { expiry: 0, ..note(0, "x".into()) };
    assert_eq!(wait(|d| ea.topic_publish("app.one", b"news", &expired, d)), Err(EngineError::Busy));

    // A feed started later replays all of them before it says caught up.
    let fb = Feed::start(&eb);
    assert_eq!(fb.caught_up(), *seqs.last().unwrap());
    assert_eq!(fb.logged(), want, "the replay: every message, in order, with its fields");
    eventually(10, "the live feed gets all nine", || fa.logged().len() >= want.len());
    assert_eq!(fa.logged(), want, "the live feed: the same, in the same order");

    // Live messages reach both; announcements too, with the caller's id, not stored.
    let n = note(far, "live".into());
    let seq = publish(&eb, "app.two", b"news", &n);
    let zero = Note { expiry: 0, ..note(0, "now or never".into()) };
    let mut announced = Vec::new();
    eventually(10, "an announcement reaches both feeds", || {
        wait(|d| eb.topic_announce("app.one", b"sport", 77, &zero, d)).expect("announce");
        std::thread::sleep(Duration::from_millis(100));
        announced = fb.announced();
        !fa.announced().is_empty() && !announced.is_empty()
    });
    let ev = &announced[0];
    assert_eq!((ev.app_id.as_str(), &*ev.topic, ev.id, &ev.note), ("app.one", &b"sport"[..], 77, &zero));
    for f in [&fa, &fb] {
        eventually(10, "the live message", || f.logged().len() == want.len() + 1);
        let last = f.logged().pop().unwrap();
        assert_eq!((last.id, last.note, &*last.topic), (seq, n.clone(), &b"news"[..]));
    }
    // A third feed replays the logged ones only.
    let ec = ready_engine("c", vec![urls[2].clone()]);
    let fc = Feed::start(&ec);
    assert_eq!(fc.caught_up(), seq);
    assert_eq!(fc.logged(), fa.logged());

    // Delivery counts reach the other nodes, not the sender.
    type Got = Arc<Mutex<Vec<(String, Vec<Count>)>>>;
    let got: Got = Arc::default();
    for (e, name) in [(&ea, "a"), (&eb, "b")] {
        let sink = got.clone();
        let me = name.to_string();
        e.serve_topic_counts(Arc::new(move |from, c| {
            sink.lock().unwrap().push((format!("{me}<-{from}"), c))
        }));
    }
    eventually(10, "counts from b reach a", || {
        wait(|d| eb.topic_counts_publish(vec![(seq, 3, 2)], d)).expect("counts");
        std::thread::sleep(Duration::from_millis(100));
        got.lock().unwrap().iter().any(|(k, _)| k == "a<-b")
    });
    let got = got.lock().unwrap();
    assert!(got.iter().all(|(k, c)| k == "a<-b" && c == &vec![(seq, 3, 2)]), "{got:?}");
}

#[test]
fn a_feed_survives_kill_9_of_each_nats_server() {
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    // The feed's node prefers server 0, the publisher servers 1 and 2.
    let ea = ready_engine("a", urls.clone());
    let eb = ready_engine("b", vec![urls[1].clone(), urls[2].clone()]);
    let far = now() + 3600;
    let fa = Feed::start(&ea);
    fa.caught_up();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let publisher = {
        let (stop, sent, acked) = (stop.clone(), sent.clone(), acked.clone());
        let eb = eb.handle().clone();
        std::thread::spawn(move || {
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                let n = note(far, format!("m{i}"));
                match wait(|d| eb.topic_publish("app.one", format!("t{}", i % 5).as_bytes(), &n, d)) {
                    Ok(seq) => acked.lock().unwrap().push(seq),
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failed
        })
    };
    // Each server in turn: one of them holds the feed's consumer (R1, in memory), one leads the stream.
    for victim in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        nats.kill(victim);
        std::thread::sleep(Duration::from_secs(3));
        nats.restart(victim);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let failed = publisher.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("published {} ({failed} failed) while each server went and came back", acked.len());
    assert!(acked.len() > 100, "the publisher kept going: {}", acked.len());

    let last = *acked.iter().max().unwrap();
    eventually(90, "the feed catches up past the restarts", || {
        fa.logged().last().is_some_and(|e| e.id >= last)
    });
    let got: Vec<u64> = fa.logged().iter().map(|e| e.id).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "nothing twice, in order");
    let have: HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = acked.iter().filter(|s| !have.contains(s)).copied().collect();
    assert!(missing.is_empty(), "acknowledged but never fed: {missing:?}");
    // What the stream holds (timed-out publishes may have landed too) is what was fed.
    let ec = ready_engine("c", vec![urls[2].clone()]);
    let fc = Feed::start(&ec);
    fc.caught_up();
    let replay: Vec<u64> = fc.logged().iter().map(|e| e.id).filter(|s| *s <= last).collect();
    let live: Vec<u64> = got.into_iter().filter(|s| *s <= last).collect();
    assert_eq!(live, replay, "the live feed skipped nothing the stream holds");
}

fn rec(topic: &str, pos: u64) -> SubRecord {
    SubRecord { topic: topic.as_bytes().into(), pos }
}

fn sorted(mut l: Vec<SubRecord>) -> Vec<SubRecord> {
    l.sort_by(|a, b| a.topic.cmp(&b.topic));
    l
}

#[test]
fn concurrent_subscription_writers_lose_nothing() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let ea = ready_engine("a", vec![urls[0].clone()]);
    let eb = ready_engine("b", vec![urls[1].clone()]);
    let t = Token([0x51; 24]);

    // 50 single-topic updates from each node, all in flight at once.
    let (tx, rx) = mpsc::channel();
    for i in 0..50u64 {
        for (e, side) in [(&ea, "a"), (&eb, "b")] {
            let tx = tx.clone();
            let ops = vec![SubOp::Put { topic: format!("{side}{i}").into_bytes().into(), pos: i }];
            e.subs_update(t, ops, Box::new(move |r| tx.send(r).unwrap()));
        }
    }
    for _ in 0..100 {
        let r = rx.recv_timeout(Duration::from_secs(30)).expect("each update completes");
        r.expect("no update gives up");
    }
    let mut want: Vec<SubRecord> =
        (0..50).flat_map(|i| [rec(&format!("a{i}"), i), rec(&format!("b{i}"), i)]).collect();
    want = sorted(want);
    assert_eq!(sorted(wait(|d| eb.subs_get(t, d)).unwrap()), want, "all 100 topics");
    assert_eq!(sorted(wait(|d| ea.subs_get(t, d)).unwrap()), want);

    // Advance only raises a present topic; Remove and Clear delete.
    let adv = |topic: &str, pos| SubOp::Advance { topic: topic.as_bytes().into(), pos };
    let l = wait(|d| ea.subs_update(t, vec![adv("a3", 100), adv("zz", 9)], d)).unwrap();
    assert!(l.contains(&rec("a3", 100)) && !l.iter().any(|r| &*r.topic == b"zz"));
    let l = wait(|d| eb.subs_update(t, vec![adv("a3", 50)], d)).unwrap();
    assert!(l.contains(&rec("a3", 100)), "an older position never lowers it");
    let l = wait(|d| eb.subs_update(t, vec![SubOp::Remove { topic: (*b"b7").into() }], d)).unwrap();
    assert_eq!(l.len(), 99);
    assert_eq!(sorted(wait(|d| ea.subs_get(t, d)).unwrap()), sorted(l));
    assert_eq!(wait(|d| ea.subs_update(t, vec![SubOp::Clear], d)).unwrap(), vec![]);
    assert_eq!(wait(|d| eb.subs_get(t, d)).unwrap(), vec![]);
    let l = wait(|d| eb.subs_update(t, vec![SubOp::Put { topic: (*b"new").into(), pos: 4 }], d)).unwrap();
    assert_eq!(l, vec![rec("new", 4)], "a cleared device subscribes again");
    // A device with nothing stored reads as no subscriptions.
    assert_eq!(wait(|d| ea.subs_get(Token([0x52; 24]), d)).unwrap(), vec![]);
}

#[test]
fn subscription_notices_reach_every_node() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let ea = ready_engine("a", vec![urls[0].clone()]);
    let eb = ready_engine("b", vec![urls[1].clone()]);
    type Seen = Arc<Mutex<Vec<(Token, Box<[u8]>, bool, u64)>>>;
    let seen: [Seen; 2] = [Arc::default(), Arc::default()];
    for (e, s) in [(&ea, &seen[0]), (&eb, &seen[1])] {
        let s = s.clone();
        e.serve_sub_changes(Arc::new(move |t, topic, add, pos| s.lock().unwrap().push((t, topic, add, pos))));
    }
    let probe = Token([1; 24]);
    eventually(10, "a probe reaches both", || {
        wait(|d| ea.announce_sub_change(probe, b"p", true, 0, d)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        seen.iter().all(|s| !s.lock().unwrap().is_empty())
    });
    let t = Token([2; 24]);
    wait(|d| ea.announce_sub_change(t, b"news", true, 41, d)).unwrap();
    wait(|d| eb.announce_sub_change(t, b"news", false, 0, d)).unwrap();
    for s in &seen {
        eventually(10, "both notices", || s.lock().unwrap().iter().filter(|n| n.0 == t).count() == 2);
        let mine: Vec<_> = s.lock().unwrap().iter().filter(|n| n.0 == t).cloned().collect();
        assert!(mine.contains(&(t, (*b"news").into(), true, 41)), "{mine:?}");
        assert!(mine.contains(&(t, (*b"news").into(), false, 0)), "{mine:?}");
    }
    assert_eq!(wait(|d| ea.announce_sub_change(t, b"", true, 0, d)), Err(EngineError::Busy));
}

/// A store handle with its hooks wired to channels, as a shard would.
struct Node {
    store: ClusterStore,
    durable: Receiver<(u64, bool)>,
    loaded: Receiver<Token>,
}

fn node(e: &Engine) -> Node {
    let mut store = ClusterStore::new(e.handle().clone(), 0, 1, 100);
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
    fn commit(&mut self) -> bool {
        match self.store.commit().expect("commit") {
            Ticket::Durable => true,
            Ticket::Pending(n) => loop {
                let (upto, ok) = self.durable.recv_timeout(Duration::from_secs(15)).expect("a report");
                if upto >= n {
                    return ok;
                }
            },
        }
    }

    fn load(&mut self, t: &Token) {
        if self.store.load(t) == Loaded::Pending {
            assert_eq!(self.loaded.recv_timeout(Duration::from_secs(15)).expect("the load hook fires"), *t);
        }
        assert!(self.store.is_loaded(t), "the hook fires once the backlog and the subscriptions are in");
    }

    fn subs(&mut self, t: &Token) -> Vec<SubRecord> {
        let mut out = Vec::new();
        self.store.subscriptions(t, &mut out).expect("subscriptions");
        sorted(out)
    }
}

#[test]
fn the_cluster_store_keeps_subscriptions_across_nodes() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let ea = ready_engine("a", vec![urls[0].clone()]);
    let eb = ready_engine("b", vec![urls[1].clone()]);
    let t = Token([0x61; 24]);

    // Node a, device connected: writes show at once, and are stored by the commit.
    let mut a = node(&ea);
    a.load(&t);
    assert_eq!(a.subs(&t), vec![]);
    a.store.put_subscription(&t, b"news", 5).unwrap();
    a.store.put_subscription(&t, b"sport", 7).unwrap();
    a.store.put_subscription(&t, b"gone", 1).unwrap();
    a.store.remove_subscription(&t, b"gone").unwrap();
    assert_eq!(a.subs(&t), vec![rec("news", 5), rec("sport", 7)], "staged writes are readable");
    assert!(a.commit(), "the subscription writes are acknowledged");
    // A position moves forward only.
    a.store.put_subscription(&t, b"news", 9).unwrap();
    assert!(a.commit());
    a.store.put_subscription(&t, b"news", 3).unwrap();
    assert_eq!(a.subs(&t), vec![rec("news", 9), rec("sport", 7)], "an older position is ignored");
    assert!(a.commit());

    // Node b loads the device: it sees them when the load completes. A write
    // that only moves positions is not part of the commit's ticket (it must
    // not hold back pushes), so it may land a moment after the commit.
    eventually(10, "the position write reaches the bucket", || {
        let mut probe = node(&eb);
        probe.load(&t);
        probe.subs(&t) == vec![rec("news", 9), rec("sport", 7)]
    });
    let mut b = node(&eb);
    b.load(&t);
    assert_eq!(b.subs(&t), vec![rec("news", 9), rec("sport", 7)]);
    // A device not loaded here is read from the bucket (provider-managed changes).
    let mut c = node(&eb);
    assert_eq!(c.subs(&t), vec![rec("news", 9), rec("sport", 7)]);
    c.store.put_subscription(&t, b"weather", 2).unwrap();
    c.store.put_subscription(&t, b"news", 100).unwrap();
    let want = vec![rec("news", 9), rec("sport", 7), rec("weather", 2)];
    assert_eq!(c.subs(&t), want, "staged included; a subscription there keeps its position");
    assert!(c.commit());
    // Two nodes' changes of one device both stay (the KV value is the truth).
    b.store.remove_subscription(&t, b"sport").unwrap();
    assert!(b.commit());
    assert_eq!(b.subs(&t), vec![rec("news", 9), rec("weather", 2)], "refreshed from the stored value");
    let mut d = node(&ea);
    d.load(&t);
    assert_eq!(d.subs(&t), vec![rec("news", 9), rec("weather", 2)]);

    // Unregister clears them everywhere.
    b.store.unregister(&t, "app", 1).unwrap();
    assert_eq!(b.subs(&t), vec![]);
    assert!(b.commit());
    let mut e = node(&ea);
    e.load(&t);
    assert_eq!(e.subs(&t), vec![]);
    assert_eq!(wait(|dn| ea.subs_get(t, dn)).unwrap(), vec![]);
}
