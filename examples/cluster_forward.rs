//! Forwarding throughput between two nodes: node A forwards batches of 64
//! pushes to node B over a 3-server NATS cluster on loopback (A and B on
//! different servers, so every request crosses a server hop); B answers each
//! push at once. Prints pushes/s and request latency percentiles.
//!
//! `cargo run --release --example cluster_forward -- [seconds] [batch] [in_flight]`
//! (needs nats-server; defaults 5 s, 64 pushes per request, 64 requests in flight).

#[allow(dead_code)]
#[path = "../tests/cluster/nats.rs"]
mod nats;

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushgate::cluster::forward::PushHandler;
use pushgate::cluster::wire::Forwarded;
use pushgate::cluster::Engine;
use pushgate::config::ClusterConfig;
use pushgate::proto::{Note, Status, Token};
use pushgate::shard::msg::PushMsg;
use pushgate::shard::requests::{Outcome, ReqRef};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let (secs, batch, window) = (arg(1, 5), arg(2, 64) as u16, arg(3, 64) as usize);
    let cluster = nats::NatsCluster::start();
    let urls = cluster.urls();
    let cfg = |node: &str, first: usize| ClusterConfig {
        nats: vec![urls[first].clone(), urls[(first + 1) % 3].clone()],
        node_id: node.into(),
        ..ClusterConfig::default()
    };
    let a = Engine::start(&cfg("a", 0)).expect("engine a");
    let b = Engine::start(&cfg("b", 1)).expect("engine b");
    let handler: PushHandler = Arc::new(|p, reply| {
        reply.send(Outcome { status: Status::DELIVERED, msg_id: u64::from(p.msg.index), info: 0 })
    });
    b.serve_pushes(handler);

    let pushes: Vec<Forwarded> = (0..batch)
        .map(|i| Forwarded {
            app: "bench".into(),
            msg: PushMsg {
                req: ReqRef { shard: 0, slot: u32::from(i), gen: 1 },
                index: 0,
                token: Token([i as u8; 24]),
                note: Note {
                    kind: 0,
                    priority: 10,
                    flags: 0,
                    expiry: 0,
                    collapse: Bytes::new(),
                    payload: Bytes::from(vec![b'x'; 128]),
                },
                app: 0,
                via: pushgate::shard::msg::Via::Forwarded,
                read_at_ns: 0,
            },
        })
        .collect();
    let (tx, rx) = mpsc::channel::<Result<Duration, String>>();
    let send = |tx: &mpsc::Sender<Result<Duration, String>>| {
        let tx = tx.clone();
        let t0 = Instant::now();
        a.forward(
            "b",
            pushes.clone(),
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| t0.elapsed()).map_err(|f| f.error.to_string()));
            }),
        );
    };
    // Until B's subscription is visible from A's server.
    let t0 = Instant::now();
    loop {
        send(&tx);
        match rx.recv().expect("completion") {
            Ok(_) => break,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                eprintln!("warming up: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("B does not answer: {e}"),
        }
    }
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut inflight = 0;
    while Instant::now() < end || inflight > 0 {
        while inflight < window && Instant::now() < end {
            send(&tx);
            inflight += 1;
        }
        match rx.recv_timeout(Duration::from_secs(10)).expect("a completion within 10 s") {
            Ok(d) => lat.push(d),
            Err(_) => errors += 1,
        }
        inflight -= 1;
    }
    let took = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let reqs = lat.len() as f64;
    println!(
        "forward {batch} pushes/request, {window} in flight, {secs} s: {:.0} pushes/s, {:.0} requests/s, \
         latency p50 {:?} p99 {:?}, errors {errors}",
        reqs * f64::from(batch) / took,
        reqs / took,
        pct(0.50),
        pct(0.99)
    );
}
