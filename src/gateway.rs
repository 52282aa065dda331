//! Assembles a running gateway: listeners, shards and their threads. Used by
//! `pushgate serve` and, in-process, by the integration tests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::info;

use crate::cluster::engine::EngineHandle;
use crate::cluster::tombs::TombEvent;
use crate::config::Config;
use crate::net;
use crate::proto::Status;
use crate::proto::{Apps, TokenKey};
use crate::shard::cluster::ClusterLink;
use crate::shard::msg::Submit;
use crate::shard::requests::Outcome;
use crate::shard::{self, msg::ShardMsg, Shard, Shared};
use crate::store::Store;

/// A running gateway.
pub struct Gateway {
    pub device_addr: SocketAddr,
    pub provider_addr: SocketAddr,
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds the listeners and starts one thread per shard. `stores` holds
    /// one store handle per shard; its length sets the shard count.
    pub fn start(cfg: Config, key: TokenKey, stores: Vec<Box<dyn Store>>) -> io::Result<Gateway> {
        Gateway::start_in(cfg, key, stores, None)
    }

    /// Like `start`; with `cluster`, the node also serves the pushes and
    /// replacement notices other nodes send it.
    pub fn start_in(
        cfg: Config,
        key: TokenKey,
        stores: Vec<Box<dyn Store>>,
        cluster: Option<ClusterLink>,
    ) -> io::Result<Gateway> {
        let n = stores.len();
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "at least one shard is needed"));
        }
        let nofile = net::raise_nofile_limit();
        let capacity = net::capacity_for(nofile, n);
        let max_conns = match cfg.limits.max_connections {
            0 => capacity,
            m if m > capacity => {
                log::warn!(
                    "limits.max_connections = {m} exceeds what {nofile} open files allow; using {capacity}"
                );
                capacity
            }
            m => m,
        };
        let tls = crate::tls::TlsPorts::load(&cfg.tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        info!("open-files limit {nofile}: room for {max_conns} connections on {n} shards");
        let device = net::bind_reuseport(cfg.server.device_listen, n)?;
        let provider = net::bind_reuseport(cfg.server.provider_listen, n)?;
        let device_addr = device[0].local_addr()?;
        let provider_addr = provider[0].local_addr()?;
        let mut apps = Apps::new();
        for a in &cfg.apps {
            apps.add(&a.id, a.secret.as_bytes());
        }
        let mut stores = stores;
        let metrics = crate::metrics::Metrics::new(n);
        let topics = crate::topics::TopicLog::new(&cfg.limits, metrics.topics());
        load_topics(&mut *stores[0], &apps, &topics)?;
        let mut parts = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for ((d, p), store) in device.into_iter().zip(provider).zip(stores) {
            let (part, handle) = shard::prepare(Some(d), Some(p), store)?;
            parts.push(part);
            handles.push(handle);
        }
        let (cfg_limits, apps_len) = (cfg.limits.clone(), apps.len());
        let shared = Arc::new(Shared {
            cfg,
            apps,
            key,
            metrics,
            handles,
            conns: AtomicUsize::new(0),
            max_conns,
            draining: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            holds: AtomicUsize::new(0),
            tls,
            limits: shard::limits::NodeLimits::new(&cfg_limits, apps_len),
            epoch: std::time::Instant::now(),
            cluster,
            topics,
        });
        if let Some(link) = &shared.cluster {
            let wait =
                std::time::Duration::from_secs(shared.cfg.cluster.as_ref().map_or(30, |c| c.start_timeout_s));
            shard::topics_feed(&shared, &link.engine, wait)?;
        }
        let mut threads = Vec::with_capacity(n);
        for (i, part) in parts.into_iter().enumerate() {
            let shard = Shard::new(i, shared.clone(), part)?;
            let t = std::thread::Builder::new().name(format!("shard-{i}")).spawn(move || shard.run())?;
            threads.push(t);
        }
        if let Some(link) = &shared.cluster {
            serve_cluster(&shared, &link.engine);
        }
        info!("devices on {device_addr}, providers on {provider_addr}");
        Ok(Gateway { device_addr, provider_addr, shared, threads })
    }

    /// A handle for front ends off the shards (the HTTP API).
    pub fn ingress(&self) -> crate::shard::ingress::Ingress {
        crate::shard::ingress::Ingress::new(self.shared.clone())
    }

    /// Keeps the shards up through a drain until the hold is dropped (at most the drain timeout):
    /// a front end off the shards takes one before the drain and drops it once its open requests
    /// are answered, so none of them meets a shard that has left.
    pub fn hold_drain(&self) -> DrainHold {
        self.shared.holds.fetch_add(1, Ordering::AcqRel);
        DrainHold(self.shared.clone())
    }

    /// Starts draining: no new connections, GOAWAY to everyone, pushes refused with `unavailable`.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for h in &self.shared.handles {
            h.send(vec![ShardMsg::Drain]);
        }
    }

    /// Whether every shard thread has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for the shards to finish draining.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Devices currently registered, per shard.
    pub fn devices_per_shard(&self) -> Vec<usize> {
        let m = &self.shared.metrics;
        (0..m.shards()).map(|i| m.shard(i).devices().max(0) as usize).collect()
    }

    pub fn connections(&self) -> usize {
        self.shared.conns.load(Ordering::Relaxed)
    }
}

/// See [`Gateway::hold_drain`].
pub struct DrainHold(Arc<Shared>);

impl Drop for DrainHold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers other nodes: a forwarded push goes to its token's shard as a
/// `Submit::Forwarded`; a replacement notice to the token's shard.
fn serve_cluster(shared: &Arc<Shared>, engine: &EngineHandle) {
    let s = shared.clone();
    engine.serve_pushes(Arc::new(move |f, reply| {
        let Some(app) = s.apps.index_of(&f.app) else {
            // Every node must have the same apps (docs/cluster.md).
            log::warn!("cluster: a push forwarded for app {:?}, which is not configured here", f.app);
            return reply.send(Outcome::status(Status::BAD_TOKEN));
        };
        let token = f.msg.token;
        let done = Box::new(move |o| reply.send(o));
        let to = token.shard(s.handles.len());
        s.handles[to].send(vec![ShardMsg::Submit(Submit::Forwarded { app, token, note: f.msg.note, done })]);
    }));
    let s = shared.clone();
    engine.watch_tombstones(Arc::new(move |ev| {
        let (token, app, at_ms) = match ev {
            TombEvent::Put(t) => {
                let Some(app) = s.apps.index_of(&t.app_id) else { return };
                (t.token, app, Some(t.at_ms))
            }
            TombEvent::Lifted(token) => (token, 0, None),
        };
        s.handles[token.shard(s.handles.len())].send(vec![ShardMsg::TombstoneSeen { token, app, at_ms }]);
    }));
    let s = shared.clone();
    engine.serve_replaced(Arc::new(move |token, revision| {
        s.handles[token.shard(s.handles.len())].send(vec![ShardMsg::Replaced { token, revision }]);
    }));
}

/// Rebuilds the node's topic logs from the store (shared by every shard's
/// handle), deleting what the logs' bounds no longer keep.
fn load_topics(store: &mut dyn Store, apps: &Apps, topics: &crate::topics::TopicLog) -> io::Result<()> {
    let mut entries = Vec::new();
    store.topic_messages(&mut entries).map_err(|e| io::Error::other(e.to_string()))?;
    let mut removed = Vec::new();
    for e in entries {
        let Some(app) = apps.index_of(&e.app_id) else {
            continue; // an app no longer configured: kept, unread
        };
        let key = crate::topics::TopicKey { app, name: e.topic };
        let msg = crate::topics::TopicMsg { id: e.msg.msg_id, note: e.msg.note };
        if topics.append(&key, msg, &mut removed).is_err() {
            removed.push((key, e.msg.msg_id));
        }
    }
    if !removed.is_empty() {
        for (k, id) in removed {
            store.topic_remove(apps.id(k.app), &k.name, id).map_err(|e| io::Error::other(e.to_string()))?;
        }
        store.sync().map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}
