//! One gateway node in this process, in cluster mode on a real NATS
//! cluster: its engine, id slot, cluster stores and gateway.

use std::time::{Duration, Instant};

use pushgate::cluster::Engine;
use pushgate::config::ClusterConfig;
use pushgate::gateway::Gateway;
use pushgate::proto::Token;
use pushgate::shard::cluster::{ClusterLink, MAX_SLOTS};
use pushgate::store::cluster::ClusterStore;
use pushgate::store::Store;

use super::common::{secret, test_config, test_key, Raw, APP, APP_SECRET};

const T: Duration = Duration::from_secs(10);

/// One gateway node: its engine (dropped after the gateway) and the gateway.
pub struct Node {
    pub slot: u8,
    pub gw: Option<Gateway>,
    pub engine: Option<Engine>,
}

impl Node {
    pub fn start(id: &str, urls: Vec<String>) -> Node {
        let c = ClusterConfig { nats: urls, node_id: id.into(), ..ClusterConfig::default() };
        let engine = Engine::start(&c).expect("engine starts");
        let t0 = Instant::now();
        let slot = loop {
            let (tx, rx) = std::sync::mpsc::channel();
            engine.claim_slot(
                MAX_SLOTS,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            // JetStream may not serve the route bucket yet although the meta leader is up (a CI
            // run under load once found no slot within 30 s), so the claim is retried for a minute.
            match rx.recv_timeout(Duration::from_secs(15)).expect("the slot claim completes") {
                Ok(s) => {
                    if t0.elapsed() > Duration::from_secs(5) {
                        eprintln!("{id}: slot {s} after {:?}", t0.elapsed());
                    }
                    break s;
                }
                Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                    eprintln!("{id}: no slot yet: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{id}: no id slot after 60 s: {e}"),
            }
        };
        let mut cfg = test_config(2);
        cfg.cluster = Some(c);
        let cap = cfg.limits.device_queue_cap;
        let stores: Vec<Box<dyn Store>> = (0..2)
            .map(|i| Box::new(ClusterStore::new(engine.handle().clone(), i, 2, cap)) as Box<dyn Store>)
            .collect();
        let link = ClusterLink { engine: engine.handle().clone(), slot };
        let gw = Gateway::start_in(cfg, test_key(), stores, Some(link)).expect("gateway starts");
        Node { gw: Some(gw), engine: Some(engine), slot }
    }

    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("running")
    }

    pub fn device(&self, label: &str) -> (Raw, Token) {
        let mut d = Raw::connect(self.gw().device_addr);
        let (token, _, _) = d.hello(APP, &secret(label), 30);
        (d, token)
    }

    pub fn provider(&self) -> Raw {
        let mut p = Raw::connect(self.gw().provider_addr);
        p.login(APP, APP_SECRET);
        p
    }

    /// Stops the node the way a crash looks to the others: its engine
    /// leaves NATS (no more answers) while its route claims stay in the table.
    pub fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.drain();
            let t0 = Instant::now();
            while !gw.is_finished() && t0.elapsed() < T {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.engine.take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
