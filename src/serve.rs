//! `pushgate serve`: load the config, prepare the data directory, start the
//! shards, and drain on SIGINT or SIGTERM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

use crate::admin::{self, DrainFn, ReadyFn};
use crate::config::{AppConfig, Config, StoreKind};
use crate::gateway::Gateway;
use crate::proto::TokenKey;
use crate::store::durable::open_durable;
use crate::store::memory::MemoryStore;
use crate::store::Store;

/// Arguments of `pushgate serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file; without it, embedded defaults are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides `server.data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `server.device_listen`.
    #[arg(long)]
    pub device_listen: Option<std::net::SocketAddr>,
    /// Overrides `server.provider_listen`.
    #[arg(long)]
    pub provider_listen: Option<std::net::SocketAddr>,
    /// Overrides `server.shards`.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Overrides `store.kind`: durable or memory.
    #[arg(long)]
    pub store: Option<StoreKind>,
    /// Overrides `admin.listen`.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Overrides `http.listen` (the HTTP/2 JSON push API).
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
}

pub fn run(args: &ServeArgs) -> ExitCode {
    init_logging();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("pushgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs at info unless RUST_LOG says otherwise.
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env).format_timestamp_millis().try_init();
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    // Before anything listens or prints its address: a SIGTERM that follows the banner at once must
    // find the handler, not end the process unsaid (no drain, no GOAWAY).
    let signals = Signals::watch();
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.server.data_dir = d.clone();
    }
    if let Some(a) = args.device_listen {
        cfg.server.device_listen = a;
    }
    if let Some(a) = args.provider_listen {
        cfg.server.provider_listen = a;
    }
    if let Some(s) = args.shards {
        cfg.server.shards = s;
    }
    if let Some(k) = args.store {
        cfg.store.kind = k;
    }
    if let Some(a) = args.admin_listen {
        cfg.admin.listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http.listen = a;
    }
    let dir = cfg.server.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("{}: cannot create data directory: {e}", dir.display()))?;
    let key_path = cfg.server.token_key_file.clone().unwrap_or_else(|| dir.join("token.key"));
    cfg.check_cluster_shared(&key_path, key_path.exists()).map_err(|e| e.to_string())?;
    let key = load_or_create_key(&key_path)?;
    if cfg.apps.is_empty() {
        let secret = load_or_create_demo_secret(&dir.join("demo.secret"))?;
        println!("pushgate: no apps configured; serving demo app `demo` with secret {secret}");
        cfg.apps.push(AppConfig { id: "demo".into(), secret });
    }
    let shards = cfg.shard_count();
    // Cluster mode: the engine first (its id slot decides this node's message
    // ids), and the store is the engine's offline queue instead of the local one.
    let engine = match &cfg.cluster {
        Some(c) => Some(start_engine(c, &signals.stop)?),
        None => None,
    };
    let stores = match &engine {
        Some((e, _)) => {
            let cap = cfg.limits.device_queue_cap;
            (0..shards)
                .map(|i| {
                    Box::new(crate::store::cluster::ClusterStore::new(e.handle().clone(), i, shards, cap))
                        as Box<dyn Store>
                })
                .collect()
        }
        None => open_stores(&cfg, shards)?,
    };
    let link = engine
        .as_ref()
        .map(|(e, slot)| crate::shard::cluster::ClusterLink { engine: e.handle().clone(), slot: *slot });
    let gw = Gateway::start_in(cfg.clone(), key, stores, link).map_err(|e| format!("cannot start: {e}"))?;
    if let Some((e, _)) = &engine {
        let m = e.metrics().clone();
        gw.shared.metrics.set_extra(Box::new(move |out| m.render_into(out)));
    }
    println!("pushgate: devices on {}, providers on {}", gw.device_addr, gw.provider_addr);
    if let Some(demo) = cfg.apps.iter().find(|a| a.id == "demo") {
        println!("try:  pushgate device --addr {}   (prints a token)", connectable(gw.device_addr));
        println!(
            "then: PUSHGATE_APP_SECRET={} pushgate push --addr {} --token <token> 'hello'",
            demo.secret,
            connectable(gw.provider_addr)
        );
    }
    let backend: Arc<dyn crate::http::Backend> = Arc::new(gw.ingress());
    let http = crate::http::start_configured(
        &cfg,
        gw.shared.apps.clone(),
        backend,
        &gw.shared.tls,
        &gw.shared.metrics,
    )
    .map_err(|e| format!("HTTP listener on {}: {e}", cfg.http.listen))?;
    if let Some(h) = &http {
        let scheme = if cfg.tls.http { "https" } else { "http" };
        println!("pushgate: HTTP API on {scheme}://{}/v1/push", connectable(h.local_addr()));
        if cfg.apps.iter().any(|a| a.id == "demo") {
            println!(
                "or:   curl {scheme}://{}/v1/push -H \"authorization: Bearer $(pushgate token --app demo)\" \
                 -d '{{\"token\":\"<token>\",\"payload\":\"hello\"}}'",
                connectable(h.local_addr())
            );
        }
    }
    // SIGINT, SIGTERM and POST /drain all end up here.
    let stop = signals.stop.clone();
    let admin = if cfg.admin.enabled {
        let ready: ReadyFn = {
            let (shared, stop) = (gw.shared.clone(), stop.clone());
            let engine = engine.as_ref().map(|(e, _)| e.handle().clone());
            Arc::new(move || {
                !stop.load(Ordering::Relaxed)
                    && !shared.draining.load(Ordering::Acquire)
                    && engine.as_ref().is_none_or(|e| e.connected())
            })
        };
        let drain: DrainFn = {
            let stop = stop.clone();
            Arc::new(move || stop.store(true, Ordering::Relaxed))
        };
        let a = admin::start(cfg.admin.listen, gw.shared.metrics.clone(), ready, drain)
            .map_err(|e| format!("admin listener on {}: {e}", cfg.admin.listen))?;
        println!("pushgate: admin on http://{}/metrics", a.local_addr());
        Some(a)
    } else {
        None
    };
    let _ = std::io::stdout().flush();
    wait_for_signal(&gw, &signals);
    drain(gw, http, Duration::from_millis(cfg.drain.timeout_ms + 2000));
    if let Some(a) = admin {
        a.stop();
    }
    drop(engine); // after the shards: their last releases and commits go out first
    Ok(())
}

/// How a node stops: the HTTP API and the shards drain together (GOAWAY to every connection, new
/// requests refused), and the shards stay up until the HTTP API's open requests are answered; then
/// waits up to `timeout` for the shards. True if they all finished.
pub fn drain(gw: Gateway, http: Option<crate::http::HttpServer>, timeout: Duration) -> bool {
    info!("draining: GOAWAY to every connection");
    let deadline = std::time::Instant::now() + timeout;
    let hold = http.as_ref().map(|_| gw.hold_drain());
    if let Some(h) = &http {
        h.begin_shutdown(); // no new HTTP connections; open requests still get their answers
    }
    gw.drain();
    if let Some(h) = http {
        h.shutdown(); // at most ~5 s: its open requests answered, its connections closed
    }
    drop(hold);
    while !gw.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if gw.is_finished() {
        gw.join();
        info!("drained; bye");
        true
    } else {
        warn!("drain deadline passed; exiting with connections open");
        false
    }
}

/// Starts the engine and claims this node's id slot, waiting for NATS up
/// to `cluster.start_timeout_s` (the servers may still be starting).
/// A signal meanwhile (`stop`) ends the wait.
fn start_engine(
    c: &crate::config::ClusterConfig,
    stop: &AtomicBool,
) -> Result<(crate::cluster::Engine, u8), String> {
    let engine = crate::cluster::Engine::start(c)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(c.start_timeout_s);
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        engine.claim_slot(
            crate::shard::cluster::MAX_SLOTS,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.recv() {
            Ok(Ok(slot)) => {
                info!("cluster: node {} has id slot {slot}", c.node_id);
                return Ok((engine, slot));
            }
            Ok(Err(_)) if stop.load(Ordering::Relaxed) => {
                return Err("cluster: stopped by a signal while waiting for NATS".into())
            }
            Ok(Err(e)) if std::time::Instant::now() < deadline => {
                warn!("cluster: no id slot yet ({e}); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(Err(e)) => return Err(format!("cluster: cannot claim an id slot in the route bucket: {e}")),
            Err(_) => return Err("cluster: the engine stopped at start".into()),
        }
    }
}

/// A wildcard listen address shown as the loopback address a local client can dial.
fn connectable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}

fn open_stores(cfg: &Config, shards: usize) -> Result<Vec<Box<dyn Store>>, String> {
    let cap = cfg.limits.device_queue_cap;
    match cfg.store.kind {
        StoreKind::Memory => {
            Ok((0..shards).map(|_| Box::new(MemoryStore::new(cap)) as Box<dyn Store>).collect())
        }
        StoreKind::Durable => {
            let path = cfg.store.path.clone().unwrap_or_else(|| cfg.server.data_dir.join("store"));
            let started = std::time::Instant::now();
            // A store that cannot be read stops the gateway; it is never wiped.
            let stores =
                open_durable(&path, shards, cap).map_err(|e| format!("cannot open the store: {e}"))?;
            let held: usize = stores.iter().map(|s| s.len()).sum();
            info!("store {} opened in {:?}: {held} notifications waiting", path.display(), started.elapsed());
            Ok(stores)
        }
    }
}

/// Waits for SIGINT or SIGTERM (or `stop`); SIGHUP meanwhile reloads the TLS certificate.
/// SIGINT and SIGTERM (or `POST /drain`) set `stop`; SIGHUP sets `hup`.
struct Signals {
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn watch() -> Signals {
        let s = Signals { stop: Arc::new(AtomicBool::new(false)), hup: Arc::new(AtomicBool::new(false)) };
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Err(e) = signal_hook::flag::register(sig, s.stop.clone()) {
                warn!("cannot watch signal {sig}: {e}");
            }
        }
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, s.hup.clone()) {
            warn!("cannot watch SIGHUP: {e}");
        }
        s
    }
}

fn wait_for_signal(gw: &Gateway, signals: &Signals) {
    while !signals.stop.load(Ordering::Relaxed) && !gw.is_finished() {
        if signals.hup.swap(false, Ordering::Relaxed) {
            match gw.shared.tls.reload() {
                Ok(true) => info!("SIGHUP: TLS certificate reloaded; new handshakes use it"),
                Ok(false) => info!("SIGHUP: no TLS listener, nothing to reload"),
                Err(e) => warn!("SIGHUP: TLS certificate not reloaded, the current one stays: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the 32-byte token key (64 hex digits), creating it with mode 0600 on first start.
pub fn load_or_create_key(path: &Path) -> Result<TokenKey, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut k)
                .map_err(|_| format!("{}: token key must be 64 hex digits", path.display()))?;
            Ok(TokenKey::new(k))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = TokenKey::generate().map_err(|e| format!("cannot generate a token key: {e}"))?;
            write_private(path, &hex::encode(key.bytes()))?;
            info!("created token key {}", path.display());
            Ok(key)
        }
        Err(e) => Err(format!("{}: cannot read token key: {e}", path.display())),
    }
}

fn load_or_create_demo_secret(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => Ok(s.trim().to_string()),
        Ok(_) => Err(format!("{}: demo secret is shorter than 16 characters", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 16];
            getrandom::getrandom(&mut b).map_err(|e| format!("cannot generate a secret: {e}"))?;
            let s = hex::encode(b);
            write_private(path, &s)?;
            Ok(s)
        }
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}
