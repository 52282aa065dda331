//! The multi-process cluster of the end-to-end tests: 3 nats-server processes
//! (tests/cluster/nats.rs), 3 `pushgate serve` processes in cluster mode and
//! HAProxy in front (PROXY v2, GET /readyz checks), all made from the files in
//! deploy/ with their ports, directories and key path rewritten, on 127.0.0.1.
//! Everything is killed on drop; the clusters of one test binary run one at a
//! time (each is 7 processes on a shared 2-core machine).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pushgate::proto::{Token, TokenKey};

use crate::nats::NatsCluster;

/// The app of deploy/gateway/*.toml, with its shared secret.
pub const APP: &str = "demo";
pub const APP_SECRET: &str = "change-me-shared-app-secret";

/// The ports and paths deploy/ uses, rewritten for every test.
const DEPLOY_DIR: &str = "/tmp/pushgate-cluster";
const DEPLOY_NATS: [&str; 3] = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"];
const DEPLOY_FRONT: [u16; 2] = [7700, 7701];
/// Device, provider and admin port of g1..g3.
const DEPLOY_GW: [[u16; 3]; 3] = [[7710, 7711, 7712], [7720, 7721, 7722], [7730, 7731, 7732]];
/// Each node's HTTP API port in deploy/gateway.
const DEPLOY_HTTP: [u16; 3] = [7713, 7723, 7733];

/// Clusters of one test binary run one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

fn deploy(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Whether nats-server and haproxy are installed. In CI (`CI` set) they must
/// be: .ci/run installs both. Elsewhere a test without them is skipped with a message.
pub fn tools_available() -> bool {
    let haproxy = Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success());
    let nats = std::env::var_os("NATS_SERVER").is_some()
        || Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success())
        || Path::new("/usr/sbin/nats-server").exists();
    if haproxy && nats {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install nats-server and haproxy (.ci/run does)");
    eprintln!("SKIPPED: the cluster end-to-end tests need nats-server and haproxy (apt-get install nats-server haproxy)");
    false
}

/// The soft open-files limit of this process.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// How many devices a test may hold: each costs this process one socket (and
/// a thread), HAProxy two and a gateway one, all under the same limit, with
/// room left for providers, NATS and the stores. Well under the limit.
pub fn device_budget(wanted: usize) -> usize {
    let budget = (nofile_limit() / 10) as usize;
    assert!(budget >= 20, "open-files limit {} is too low for the cluster tests", nofile_limit());
    wanted.min(budget)
}

/// A port for a listener: below the kernel's ephemeral range (so no outgoing
/// connection holds it), not handed out before by this process, and free now.
/// A process that still fails to bind it is started again on new ports.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_lo.max(12_000));
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Start somewhere different in every run, so two test processes rarely meet.
        let seed = std::process::id() as u64 * 7919
            + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
                as u64;
        let _ = NEXT.compare_exchange(
            0,
            lo + (seed % u64::from(hi - lo)) as u16,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..(hi - lo) {
        let p = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = lo + (p.wrapping_sub(lo) % (hi - lo));
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// A child process killed with its parent thread's death too (PR_SET_PDEATHSIG).
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("log")).stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("--- {}\n", path.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// A GET to 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2))
        .map_err(|e| format!("port {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("port {port}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no HTTP status")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok((code, dechunk(body)?));
    }
    Ok((code, body.to_string()))
}

/// A chunked body (HAProxy's stats page is chunked even to HTTP/1.0).
fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// Sum of a metric's samples (every label set) in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One `pushgate serve` process, from deploy/gateway/g<n>.toml.
pub struct Gateway {
    pub name: String,
    pub device: SocketAddr,
    pub provider: SocketAddr,
    pub admin: SocketAddr,
    pub conf: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushgate"));
        // The shard's cluster side at debug: why a forward failed and what was done with it.
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.conf)
            .env("RUST_LOG", "info,pushgate::shard::cluster=debug");
        self.child = Some(spawn_logged(cmd, &self.log));
    }

    /// Until GET /readyz answers 200; Err with the log if the process exits first.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("{} exited ({st})\n{}", self.name, tail(&self.log, 30)));
                }
            }
            if http_get(self.admin.port(), "/readyz").is_ok_and(|(c, _)| c == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{} not ready after {timeout:?}\n{}", self.name, tail(&self.log, 30)))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its /metrics body.
    pub fn metrics(&self) -> String {
        http_get(self.admin.port(), "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// `pushgate_devices_connected`, summed over shards.
    pub fn devices_connected(&self) -> usize {
        metric_sum(&self.metrics(), "pushgate_devices_connected") as usize
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy from deploy/haproxy.cfg, plus a stats page to watch its health checks.
pub struct HaProxy {
    pub devices: SocketAddr,
    pub providers: SocketAddr,
    stats: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl HaProxy {
    /// `(backend, server) -> status` ("UP", "DOWN", ...) from the stats CSV.
    pub fn servers(&self) -> Result<Vec<(String, String, String)>, String> {
        let (code, body) = http_get(self.stats, "/stats;csv")?;
        if code != 200 {
            return Err(format!("stats answered {code}"));
        }
        let mut lines = body.lines();
        let head: Vec<&str> =
            lines.next().ok_or("empty stats")?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| head.iter().position(|h| *h == name).ok_or(format!("no {name} column"));
        let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px].starts_with("gw_") && f[sv] != "BACKEND")
            .map(|f| (f[px].to_string(), f[sv].to_string(), f[st].to_string()))
            .collect())
    }

    /// Until every gateway server of both backends has `status` (or none is
    /// listed in `which`): e.g. g1 "DOWN" after a kill.
    pub fn wait_status(&self, which: &[&str], status: &str, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            match self.servers() {
                Ok(s) => {
                    let chosen: Vec<_> = s.iter().filter(|(_, sv, _)| which.contains(&sv.as_str())).collect();
                    if chosen.len() == 2 * which.len()
                        && chosen.iter().all(|(_, _, st)| st.starts_with(status))
                    {
                        return Ok(());
                    }
                    last = format!("{s:?}");
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("haproxy: {which:?} not {status} after {timeout:?}: {last}\n{}", tail(&self.log, 20)))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The whole cluster. Fields drop in order: HAProxy, gateways, NATS, then the
/// directory and the lock.
pub struct Cluster {
    pub haproxy: HaProxy,
    pub gateways: Vec<Gateway>,
    pub nats: NatsCluster,
    pub key: TokenKey,
    /// `cluster.request_timeout_ms` of the gateways' config.
    pub request_timeout: Duration,
    /// `limits.device_queue_cap` of the gateways' config.
    pub queue_cap: usize,
    /// When this cluster's turn came (clusters wait for each other).
    pub started: Instant,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts NATS, the three gateways (`extra` is TOML appended to each
    /// gateway's config, e.g. a `[limits]` table) and HAProxy, and waits until
    /// HAProxy sees every gateway UP.
    pub fn start(extra: &str) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsCluster::start();
        let key = TokenKey::generate().expect("a token key");
        let key_file = dir.path().join("token.key");
        std::fs::write(&key_file, hex::encode(key.bytes())).expect("write the key");
        let mut gateways = Vec::new();
        for i in 0..3 {
            gateways.push(start_gateway(dir.path(), i, &nats, extra));
        }
        let cfg = pushgate::config::Config::load(&gateways[0].conf).expect("the test config is valid");
        let c = cfg.cluster.as_ref().expect("the deploy configs have [cluster]");
        let request_timeout = Duration::from_millis(c.request_timeout_ms);
        let haproxy = start_haproxy(dir.path(), &gateways);
        eprintln!("cluster up in {:?}", t0.elapsed());
        Cluster {
            haproxy,
            gateways,
            nats,
            key,
            request_timeout,
            queue_cap: cfg.limits.device_queue_cap,
            started: t0,
            _dir: dir,
            _serial: serial,
        }
    }

    pub fn devices_addr(&self) -> SocketAddr {
        self.haproxy.devices
    }

    pub fn providers_addr(&self) -> SocketAddr {
        self.haproxy.providers
    }

    /// The token a device with `secret` gets from every node (they share the key).
    pub fn token(&self, secret: &[u8]) -> Token {
        self.key.derive(APP, secret)
    }

    /// kill -9 of gateway `i`.
    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].kill();
    }

    /// Starts gateway `i` again on its ports, with its data directory.
    pub fn restart_gateway(&mut self, i: usize) {
        let g = &mut self.gateways[i];
        g.kill();
        g.spawn();
        if let Err(e) = g.wait_ready(Duration::from_secs(40)) {
            panic!("restart of {}: {e}", g.name);
        }
    }

    /// Devices connected to each gateway (0 for one that is down).
    pub fn devices_per_node(&self) -> Vec<usize> {
        self.gateways.iter().map(|g| if g.is_running() { g.devices_connected() } else { 0 }).collect()
    }

    /// Per gateway, how many log lines contain `pat`.
    pub fn count_in_logs(&self, pat: &str) -> Vec<(String, usize)> {
        self.gateways
            .iter()
            .map(|g| {
                let text = std::fs::read_to_string(&g.log).unwrap_or_default();
                (g.name.clone(), text.lines().filter(|l| l.contains(pat)).count())
            })
            .collect()
    }

    /// The tails of every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for g in &self.gateways {
            out.push_str(&tail(&g.log, 25));
        }
        out.push_str(&tail(&self.haproxy.log, 15));
        out.push_str(&self.nats.logs());
        out
    }
}

/// deploy/gateway/g<i+1>.toml with its ports, data dir, key file and NATS
/// URLs rewritten, plus an HTTP API port of its own and `extra`; started and
/// ready. A port someone else took meanwhile means new ports and another try.
fn start_gateway(dir: &Path, i: usize, nats: &NatsCluster, extra: &str) -> Gateway {
    let name = format!("g{}", i + 1);
    let src = deploy(&format!("gateway/{name}.toml"));
    let mut last = String::new();
    for attempt in 0..3 {
        let (d, p, a, h) = (free_port(), free_port(), free_port(), free_port());
        let mut text = src.clone();
        let from_ports = DEPLOY_GW[i].iter().chain([&DEPLOY_HTTP[i]]);
        for (from, to) in from_ports.zip([d, p, a, h]) {
            text = text.replace(&format!("127.0.0.1:{from}\""), &format!("127.0.0.1:{to}\""));
        }
        let list: Vec<String> = DEPLOY_NATS.iter().map(|u| format!("\"{u}\"")).collect();
        let ours: Vec<String> = (0..3).map(|k| format!("\"{}\"", nats.url(k))).collect();
        assert!(text.contains(&list.join(", ")), "deploy's cluster.nats changed");
        text = text.replace(&list.join(", "), &ours.join(", "));
        text = text.replace(DEPLOY_DIR, &dir.display().to_string());
        // No deploy port is left (a free port may well start with 77 or 422).
        let deploy_ports = DEPLOY_GW.iter().flatten().chain(&DEPLOY_HTTP).copied().chain([4222, 4223, 4224]);
        let left = deploy_ports.filter(|p| text.contains(&format!(":{p}\""))).collect::<Vec<_>>();
        assert!(!text.contains(DEPLOY_DIR) && left.is_empty(), "deploy ports {left:?} left in {text}");
        assert!(text.contains(&format!("secret = \"{APP_SECRET}\"")), "deploy's app secret changed");
        text.push('\n');
        text.push_str(extra);
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(&conf, &text).expect("write gateway config");
        let log = dir.join(format!("{name}.{attempt}.log"));
        let mut g = Gateway {
            name: name.clone(),
            device: SocketAddr::from(([127, 0, 0, 1], d)),
            provider: SocketAddr::from(([127, 0, 0, 1], p)),
            admin: SocketAddr::from(([127, 0, 0, 1], a)),
            conf,
            log,
            child: None,
        };
        g.spawn();
        match g.wait_ready(Duration::from_secs(40)) {
            Ok(()) => return g,
            Err(e) if e.contains("in use") => last = e,
            Err(e) => panic!("gateway {name} did not start: {e}\n{}", nats.logs()),
        }
    }
    panic!("gateway {name}: no free ports after 3 tries: {last}");
}

/// deploy/haproxy.cfg with the gateways' ports, free front ports, a maxconn
/// this machine's open-files limit allows, and a stats page; started, and
/// waited for until every gateway is UP in both backends.
fn start_haproxy(dir: &Path, gws: &[Gateway]) -> HaProxy {
    let src = deploy("haproxy.cfg");
    // deploy's `maxconn 9000` fits a 20,000 open-files limit; size it to the
    // limit found here (too high, HAProxy refuses: "Cannot raise FD limit").
    let maxconn = (nofile_limit() / 2).saturating_sub(200).clamp(100, 50_000);
    let mut last = String::new();
    for attempt in 0..3 {
        let (fd, fp, stats) = (free_port(), free_port(), free_port());
        let mut text = src.replace("maxconn 9000", &format!("maxconn {maxconn}"));
        for (from, to) in DEPLOY_FRONT.iter().zip([fd, fp]) {
            text = text.replace(&format!("bind 127.0.0.1:{from}\n"), &format!("bind 127.0.0.1:{to}\n"));
        }
        for (ports, g) in DEPLOY_GW.iter().zip(gws) {
            let to = [g.device.port(), g.provider.port()];
            for (from, to) in ports.iter().zip(to) {
                text = text.replace(&format!("127.0.0.1:{from} "), &format!("127.0.0.1:{to} "));
            }
            text = text.replace(&format!("port {}\n", ports[2]), &format!("port {}\n", g.admin.port()));
        }
        assert!(
            !text.contains(":77") && !text.contains("port 77"),
            "every deploy port is rewritten:\n{text}"
        );
        text.push_str(&format!(
            "\nfrontend stats\n  mode http\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n"
        ));
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, &text).expect("write haproxy.cfg");
        let log = dir.join(format!("haproxy.{attempt}.log"));
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&conf);
        let mut h = HaProxy {
            devices: SocketAddr::from(([127, 0, 0, 1], fd)),
            providers: SocketAddr::from(([127, 0, 0, 1], fp)),
            stats,
            log,
            child: Some(spawn_logged(cmd, &dir.join(format!("haproxy.{attempt}.log")))),
        };
        let t0 = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = h.child.as_mut().map(|c| c.try_wait()) {
                h.child = None;
                last = format!("haproxy exited ({st})\n{}", tail(&h.log, 20));
                break;
            }
            match h.wait_status(&["g1", "g2", "g3"], "UP", Duration::from_millis(200)) {
                Ok(()) => return h,
                Err(e) if t0.elapsed() > Duration::from_secs(20) => panic!("{e}"),
                Err(_) => {}
            }
        }
        if !last.contains("cannot bind") && !last.contains("in use") {
            panic!("{last}");
        }
    }
    panic!("haproxy: no free ports after 3 tries: {last}");
}
