//! Gateway configuration: embedded defaults, overridden by a TOML file.
//!
//! Every key has a default, so an empty file (or none) is a valid config.
//! Errors name the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proto::frame::is_valid_app_id;

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub heartbeat: HeartbeatConfig,
    pub limits: LimitsConfig,
    pub drain: DrainConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    /// Cluster mode (NATS JetStream); off unless the table is present.
    pub cluster: Option<ClusterConfig>,
    pub apps: Vec<AppConfig>,
}

/// `[cluster]`: this node's place among N gateways sharing one NATS JetStream cluster.
/// Every node needs the same token key and the same apps (see docs/cluster.md).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The engine's servers, `nats://host:port`, in order of preference (the nearest
    /// first); the client fails over between them.
    pub nats: Vec<String>,
    /// Unique among the nodes and stable across restarts: 1 to 32 of A-Z a-z 0-9 _ -.
    pub node_id: String,
    /// Deadline of every engine operation (a route claim, a forwarded batch), ms;
    /// past it the operation fails and its pushes get `unavailable`.
    pub request_timeout_ms: u64,
    /// JetStream replicas of the route bucket (and later the offline queue): 1 to 5.
    pub replicas: usize,
    /// First token of every NATS subject this cluster uses: `<prefix>.node.<node_id>.push`.
    pub stream_prefix: String,
    /// The JetStream KV bucket of the route table (stream `KV_<bucket>`).
    pub routes_bucket: String,
    /// Engine commands waiting for the engine thread; past it operations fail at once.
    pub queue: usize,
    /// Most pushes one forwarded NATS request carries.
    pub max_batch: usize,
    /// How long `serve` waits at start for NATS to take this node's id slot, s.
    pub start_timeout_s: u64,
    /// JetStream's own bound on one token's offline queue (stream `<prefix>_Q`):
    /// past it the oldest go uncounted. A safety net at least
    /// `limits.device_queue_cap`: the store's cap (with missed counts) applies
    /// when a node loads the queue. Fixed when the stream is first made.
    pub queue_max_per_token: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            node_id: String::new(),
            request_timeout_ms: 2000,
            replicas: 3,
            stream_prefix: "pushgate".into(),
            routes_bucket: "pushgate_routes".into(),
            queue: 8192,
            max_batch: 256,
            start_timeout_s: 30,
            queue_max_per_token: 1000,
        }
    }
}

/// A NATS subject token, KV bucket name or node id: 1 to `max` of A-Z a-z 0-9 _ -.
pub fn is_valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ClusterConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, why: &str| Err((format!("cluster.{k}"), why.to_string()));
        if self.nats.is_empty() {
            return err("nats", "names at least one server, e.g. [\"nats://127.0.0.1:4222\"]");
        }
        for (i, url) in self.nats.iter().enumerate() {
            if !valid_nats_url(url) {
                return Err((format!("cluster.nats[{i}]"), format!("{url:?} is not nats://host:port")));
            }
        }
        if self.node_id.is_empty() {
            return err("node_id", "is required: a unique, stable name for this node");
        }
        if !is_valid_name(&self.node_id, 32) {
            return err("node_id", "1 to 32 of A-Z a-z 0-9 _ -");
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 60_000 {
            return err("request_timeout_ms", "must be 1 to 60000");
        }
        if !(1..=5).contains(&self.replicas) {
            return err("replicas", "must be 1 to 5");
        }
        if !is_valid_name(&self.stream_prefix, 32) {
            return err("stream_prefix", "1 to 32 of A-Z a-z 0-9 _ -");
        }
        if !is_valid_name(&self.routes_bucket, 64) {
            return err("routes_bucket", "1 to 64 of A-Z a-z 0-9 _ -");
        }
        if self.queue == 0 {
            return err("queue", "must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > 1024 {
            return err("max_batch", "must be 1 to 1024");
        }
        if self.queue_max_per_token == 0 || self.queue_max_per_token > 1_000_000 {
            return err("queue_max_per_token", "must be 1 to 1000000");
        }
        Ok(())
    }
}

/// `nats://host:port` (or `tls://`), the port a number.
fn valid_nats_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")) else { return false };
    let Some((host, port)) = rest.rsplit_once(':') else { return false };
    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// TLS on the device and provider listeners (rustls). Off unless a listener asks for it.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Serve TLS on the device listener.
    pub device: bool,
    /// Serve TLS on the provider listener.
    pub provider: bool,
    /// Serve TLS (ALPN h2, http/1.1) on the HTTP API listener.
    pub http: bool,
}

/// The HTTP/1.1 and HTTP/2 JSON push API (docs/http.md), and its bounds.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the HTTP API.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Threads of the HTTP runtime (one runtime per node, not per shard): 0 = one per core (at most
    /// 16), 1 = one thread does it all.
    pub threads: usize,
    /// Open HTTP connections; past it new ones are closed at once.
    pub max_connections: usize,
    /// Largest request body, bytes (a payload is at most 4096 bytes).
    pub max_body_bytes: usize,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2), bytes.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// From the request head to the answer; past it 408 (body still arriving) or 503.
    pub request_timeout_ms: u64,
    /// From accept (or the previous answer) to a complete request head; slower connections are closed.
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// Comment line sent on an idle receipts stream, seconds.
    pub sse_keepalive_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 7703)),
            threads: 0,
            max_connections: 1024,
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            max_concurrent_streams: 128,
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 120_000,
            sse_keepalive_s: 15,
        }
    }
}

impl HttpConfig {
    /// The HTTP runtime's threads: `threads`, or one per core (at most 16) for 0.
    pub fn runtime_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
            n => n,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, why: &str| Err((format!("http.{k}"), why.to_string()));
        if self.threads > 16 {
            return err("threads", "must be 0 (one per core) to 16");
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if !(8192..=16 << 20).contains(&self.max_body_bytes) {
            return err("max_body_bytes", "must be 8192 to 16777216");
        }
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return err("max_header_bytes", "must be 8192 to 1048576");
        }
        if self.max_concurrent_streams == 0 {
            return err("max_concurrent_streams", "must be at least 1");
        }
        if self.request_timeout_ms == 0 {
            return err("request_timeout_ms", "must be at least 1");
        }
        if self.header_read_timeout_ms == 0 {
            return err("header_read_timeout_ms", "must be at least 1");
        }
        if self.sse_keepalive_s == 0 {
            return err("sse_keepalive_s", "must be at least 1");
        }
        if self.idle_timeout_ms <= self.request_timeout_ms.max(self.sse_keepalive_s.saturating_mul(1000)) {
            return err("idle_timeout_ms", "must exceed http.request_timeout_ms and http.sse_keepalive_s");
        }
        Ok(())
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve /metrics, /healthz, /readyz and POST /drain.
    pub enabled: bool,
    /// Loopback by default: the admin port has no authentication.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 7702)) }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where devices connect.
    pub device_listen: SocketAddr,
    /// Where providers connect.
    pub provider_listen: SocketAddr,
    /// Event-loop threads; 0 = one per core.
    pub shards: usize,
    /// Token key, demo secret and durable store live here.
    pub data_dir: PathBuf,
    /// Expect a PROXY protocol v1/v2 header (from a load balancer) on device connections.
    pub device_proxy_protocol: bool,
    /// Expect a PROXY protocol v1/v2 header on provider connections.
    pub provider_proxy_protocol: bool,
    /// 32-byte token key as 64 hex digits in this file; default `<data_dir>/token.key`,
    /// created on first start. Every node behind one load balancer needs the same key.
    pub token_key_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Interval given to a device that asks for 0, seconds.
    pub default_s: u16,
    /// Shortest interval a device may negotiate.
    pub min_s: u16,
    /// Longest interval a device may negotiate.
    pub max_s: u16,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections (devices plus providers) across all shards; 0 = derive from the open-files limit.
    pub max_connections: usize,
    /// From accept to a complete HELLO (device) or AUTH (provider).
    pub handshake_timeout_ms: u64,
    /// Unanswered PUSH requests per provider connection before the gateway stops reading it.
    pub provider_max_in_flight: u32,
    /// Unacknowledged NOTIFY frames per device.
    pub device_max_in_flight: u16,
    /// Stored notifications per device; past it the oldest are dropped and counted.
    pub device_queue_cap: usize,
    /// Bytes waiting to be written to one connection before it is cut off as a slow consumer.
    pub max_outbox_bytes: usize,
    /// How long a normal-priority notification may be held to coalesce with others.
    pub normal_priority_delay_ms: u64,
    /// Silence after which a provider connection is closed, seconds.
    pub provider_idle_s: u64,
    /// Reconnect hint sent with GOAWAY server_full, milliseconds.
    pub server_full_retry_ms: u32,
    /// Delivery receipts kept per app while no provider session of it is connected.
    pub receipts_per_app: usize,
    /// Registered devices across shards; 0 = only `max_connections` applies.
    pub max_devices: usize,
    /// New connections per second from one source address (each allows one handshake); 0 = no limit.
    pub connections_per_source_per_s: u64,
    /// Burst allowed above that rate.
    pub connections_per_source_burst: u64,
    /// Pushes per second per app, over all its provider connections; 0 = no limit.
    pub pushes_per_app_per_s: u64,
    /// Burst allowed above that rate.
    pub pushes_per_app_burst: u64,
    /// Topics one device may subscribe to (the broadcast topic not counted).
    pub topics_per_device: usize,
    /// Topics with a log per app; a PUSH_TOPIC to a new topic past it gets `topic_limit`.
    pub topics_per_app: usize,
    /// Messages kept in one topic's log (the newest); older ones are dropped.
    pub topic_log_cap: usize,
    /// Payload and collapse bytes of every topic log on the node together; past it the oldest go.
    pub topic_log_bytes: usize,
    /// Topic messages one device is sent per topic when it reconnects; older ones are skipped (missed).
    pub topic_catchup_cap: usize,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Longest a drain waits for connections to close before exiting anyway, ms.
    pub timeout_ms: u64,
    /// GOAWAY reconnect hints are spread evenly over this window, ms.
    pub spread_ms: u32,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Crash-safe, in `<data_dir>/store` (or `store.path`).
    Durable,
    /// Lost on restart; for tests and throwaway setups.
    Memory,
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "durable" => Ok(StoreKind::Durable),
            "memory" => Ok(StoreKind::Memory),
            other => Err(format!("unknown store {other:?}: durable or memory")),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Directory of the durable store; default `<data_dir>/store`.
    pub path: Option<PathBuf>,
    /// How long a notification just written to a connected device may wait
    /// for the device's ACK before it is written to disk; acked in time, it
    /// never is. Its RESULT waits for the ACK or the disk. 0 = write at once.
    pub ack_grace_ms: u64,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    /// Shared with the app's providers; never sent on the wire.
    pub secret: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            device_listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            provider_listen: SocketAddr::from(([0, 0, 0, 0], 7701)),
            shards: 0,
            data_dir: PathBuf::from("pushgate-data"),
            token_key_file: None,
            device_proxy_protocol: false,
            provider_proxy_protocol: false,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { default_s: 60, min_s: 10, max_s: 1800 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            handshake_timeout_ms: 10_000,
            provider_max_in_flight: 1024,
            device_max_in_flight: 64,
            device_queue_cap: 100,
            max_outbox_bytes: 256 * 1024,
            normal_priority_delay_ms: 500,
            provider_idle_s: 300,
            server_full_retry_ms: 30_000,
            receipts_per_app: 10_000,
            max_devices: 0,
            connections_per_source_per_s: 200,
            connections_per_source_burst: 1000,
            pushes_per_app_per_s: 0,
            pushes_per_app_burst: 10_000,
            topics_per_device: 2000,
            topics_per_app: 10_000,
            topic_log_cap: 1000,
            topic_log_bytes: 256 << 20,
            topic_catchup_cap: 100,
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { timeout_ms: 30_000, spread_ms: 10_000 }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { kind: StoreKind::Durable, path: None, ack_grace_ms: 0 }
    }
}

/// A config problem, naming where it is.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        cfg.validate().map_err(|(key, why)| ConfigError(format!("{origin}: key `{key}`: {why}")))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let h = &self.heartbeat;
        if h.min_s == 0 || h.min_s > h.max_s {
            return Err(("heartbeat.min_s".into(), "must be at least 1 and at most heartbeat.max_s".into()));
        }
        if h.default_s < h.min_s || h.default_s > h.max_s {
            return Err(("heartbeat.default_s".into(), "must lie between heartbeat.min_s and max_s".into()));
        }
        let l = &self.limits;
        if l.provider_max_in_flight == 0 {
            return Err(("limits.provider_max_in_flight".into(), "must be at least 1".into()));
        }
        if l.device_max_in_flight == 0 {
            return Err(("limits.device_max_in_flight".into(), "must be at least 1".into()));
        }
        if l.topic_log_cap == 0 || l.topic_catchup_cap == 0 {
            return Err((
                "limits.topic_log_cap".into(),
                "topic_log_cap and topic_catchup_cap must be at least 1".into(),
            ));
        }
        if l.device_queue_cap == 0 {
            return Err(("limits.device_queue_cap".into(), "must be at least 1".into()));
        }
        if l.max_outbox_bytes < 16 * 1024 {
            return Err(("limits.max_outbox_bytes".into(), "must be at least 16384".into()));
        }
        if l.handshake_timeout_ms == 0 {
            return Err(("limits.handshake_timeout_ms".into(), "must be at least 1".into()));
        }
        if self.store.ack_grace_ms > 1000 {
            return Err(("store.ack_grace_ms".into(), "must be at most 1000".into()));
        }
        self.http.validate()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
            if (c.queue_max_per_token as usize) < l.device_queue_cap {
                return Err((
                    "cluster.queue_max_per_token".into(),
                    format!("must be at least limits.device_queue_cap ({})", l.device_queue_cap),
                ));
            }
        }
        for (i, app) in self.apps.iter().enumerate() {
            if !is_valid_app_id(&app.id) {
                return Err((format!("apps[{i}].id"), "1 to 64 of A-Z a-z 0-9 . _ -".into()));
            }
            if app.secret.len() < 16 {
                return Err((format!("apps[{i}].secret"), "must be at least 16 characters".into()));
            }
            if self.apps[..i].iter().any(|a| a.id == app.id) {
                return Err((format!("apps[{i}].id"), format!("duplicate app id {:?}", app.id)));
            }
        }
        Ok(())
    }

    /// Shards to run: the configured count, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.server.shards > 0 {
            return self.server.shards;
        }
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }

    /// In cluster mode every node must share the token key and the app
    /// secrets, so nothing of them may be made up at start: the key file must
    /// exist already (`key_exists`) and the apps must be configured.
    pub fn check_cluster_shared(&self, key_path: &Path, key_exists: bool) -> Result<(), ConfigError> {
        if self.cluster.is_none() {
            return Ok(());
        }
        if !key_exists {
            return Err(ConfigError(format!(
                "key `server.token_key_file`: cluster mode needs the token key every node shares, and {} \
                 does not exist (copy it from another node, or create it once with 64 hex digits)",
                key_path.display()
            )));
        }
        if self.apps.is_empty() {
            return Err(ConfigError(
                "key `apps`: cluster mode needs the apps (with their secrets) configured the same on every \
                 node; it does not make up a demo app"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.server.device_listen.port(), 7700);
        assert_eq!(c.heartbeat.default_s, 60);
        assert!(c.apps.is_empty());
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("[heartbeat]\nmin_s = 0\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("gw.toml") && e.contains("heartbeat.min_s"), "{e}");
        let e = Config::parse("[server]\nbogus = 1\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("gw.toml") && e.contains("bogus"), "{e}");
        let e =
            Config::parse("[[apps]]\nid = \"a b\"\nsecret = \"0123456789abcdef\"\n", "g.toml").unwrap_err().0;
        assert!(e.contains("apps[0].id"), "{e}");
        let e = Config::parse("[store]\nack_grace_ms = 5000\n", "g.toml").unwrap_err().0;
        assert!(e.contains("store.ack_grace_ms"), "{e}");
        assert_eq!(Config::parse("[store]\nack_grace_ms = 20\n", "g.toml").unwrap().store.ack_grace_ms, 20);
        assert_eq!(Config::default().store.ack_grace_ms, 0, "off by default, as protocol.md §10.0 says");
        let e = Config::parse("[server]\nshards = \"two\"\n", "g.toml").unwrap_err().0;
        assert!(e.contains("g.toml") && e.contains("shards"), "{e}");
    }

    #[test]
    fn http_table_has_defaults_and_checked_bounds() {
        let c = Config::parse("", "x.toml").unwrap();
        assert!(c.http.enabled && !c.tls.http);
        assert_eq!(c.http.listen.port(), 7703);
        assert_eq!(c.http.max_body_bytes, 65536);
        let c = Config::parse("[http]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n[tls]\nhttp = false\n", "x")
            .unwrap();
        assert_eq!(c.http.threads, 2);
        assert_eq!(Config::parse("", "x").unwrap().http.threads, 0, "one per core by default");
        for (toml, key) in [
            ("threads = 17", "http.threads"),
            ("max_body_bytes = 100", "http.max_body_bytes"),
            ("max_header_bytes = 100", "http.max_header_bytes"),
            ("max_connections = 0", "http.max_connections"),
            ("max_concurrent_streams = 0", "http.max_concurrent_streams"),
            ("request_timeout_ms = 0", "http.request_timeout_ms"),
            ("header_read_timeout_ms = 0", "http.header_read_timeout_ms"),
            ("idle_timeout_ms = 1000", "http.idle_timeout_ms"),
            ("bogus = 1", "bogus"),
        ] {
            let e = Config::parse(&format!("[http]\n{toml}\n"), "g.toml").unwrap_err().0;
            assert!(e.contains("g.toml") && e.contains(key), "{toml}: {e}");
        }
    }

    fn cluster_err(table: &str) -> String {
        Config::parse(&format!("[cluster]\n{table}"), "g1.toml").unwrap_err().0
    }

    #[test]
    fn cluster_is_off_unless_present_and_has_defaults() {
        assert!(Config::parse("", "g.toml").unwrap().cluster.is_none());
        let c = Config::parse("[cluster]\nnode_id = \"g1\"\n", "g.toml").unwrap().cluster.expect("on");
        assert_eq!(c.nats, ["nats://127.0.0.1:4222"]);
        assert_eq!((c.replicas, c.request_timeout_ms), (3, 2000));
        assert_eq!(c.stream_prefix, "pushgate");
        assert_eq!(c.routes_bucket, "pushgate_routes");
        assert_eq!(c.queue_max_per_token, 1000);
    }

    #[test]
    fn cluster_errors_name_the_key() {
        for (table, key) in [
            ("", "cluster.node_id"),
            ("node_id = \"a.b\"\n", "cluster.node_id"),
            ("node_id = \"a b\"\n", "cluster.node_id"),
            (&format!("node_id = \"{}\"\n", "n".repeat(33)), "cluster.node_id"),
            ("node_id = \"g1\"\nnats = []\n", "cluster.nats"),
            ("node_id = \"g1\"\nnats = [\"127.0.0.1:4222\"]\n", "cluster.nats[0]"),
            ("node_id = \"g1\"\nnats = [\"nats://a:1\", \"nats://h:x\"]\n", "cluster.nats[1]"),
            ("node_id = \"g1\"\nreplicas = 0\n", "cluster.replicas"),
            ("node_id = \"g1\"\nreplicas = 7\n", "cluster.replicas"),
            ("node_id = \"g1\"\nrequest_timeout_ms = 0\n", "cluster.request_timeout_ms"),
            ("node_id = \"g1\"\nstream_prefix = \"a.>\"\n", "cluster.stream_prefix"),
            ("node_id = \"g1\"\nroutes_bucket = \"\"\n", "cluster.routes_bucket"),
            ("node_id = \"g1\"\nqueue = 0\n", "cluster.queue"),
            ("node_id = \"g1\"\nmax_batch = 5000\n", "cluster.max_batch"),
            ("node_id = \"g1\"\nqueue_max_per_token = 0\n", "cluster.queue_max_per_token"),
            ("node_id = \"g1\"\nqueue_max_per_token = 99\n", "cluster.queue_max_per_token"),
        ] {
            let e = cluster_err(table);
            assert!(e.contains("g1.toml") && e.contains(&format!("`{key}`")), "{table:?}: {e}");
        }
        let e = cluster_err("node_id = \"g1\"\nbogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn cluster_refuses_made_up_key_or_secrets() {
        let app = "[[apps]]\nid = \"a\"\nsecret = \"0123456789abcdef\"\n";
        let on = Config::parse(&format!("[cluster]\nnode_id = \"g1\"\n{app}"), "g.toml").unwrap();
        let key = Path::new("/k/token.key");
        let e = on.check_cluster_shared(key, false).unwrap_err().0;
        assert!(e.contains("server.token_key_file") && e.contains("/k/token.key"), "{e}");
        assert!(on.check_cluster_shared(key, true).is_ok());
        let no_apps = Config::parse("[cluster]\nnode_id = \"g1\"\n", "g.toml").unwrap();
        let e = no_apps.check_cluster_shared(key, true).unwrap_err().0;
        assert!(e.contains("`apps`"), "{e}");
        let single = Config::parse("", "g.toml").unwrap();
        assert!(single.check_cluster_shared(key, false).is_ok(), "one node may still create its key");
    }
}
