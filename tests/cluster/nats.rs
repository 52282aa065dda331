//! A 3-server NATS JetStream cluster on loopback for the cluster tests, made
//! from deploy/nats/n1..n3.conf with free ports and a temporary store dir.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{Read, Write};

/// The default ports in deploy/nats/*.conf: client, monitoring, route, per server.
const DEPLOY_PORTS: [[u16; 3]; 3] = [[4222, 8222, 6222], [4223, 8223, 6223], [4224, 8224, 6224]];
const DEPLOY_STORE: &str = "/tmp/pushgate-nats";

/// The nats-server binary: `$NATS_SERVER`, else on PATH, else Debian's /usr/sbin.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("nats-server");
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        return debian;
    }
    panic!(
        "the cluster tests need nats-server 2.9 or later: `apt-get install nats-server` \
         (CI's .ci/run installs it), or set NATS_SERVER to its path"
    );
}

struct Server {
    name: String,
    conf: PathBuf,
    log: PathBuf,
    client_port: u16,
    http_port: u16,
    child: Option<Child>,
}

/// Three nats-server processes routed into one JetStream cluster; killed on drop.
pub struct NatsCluster {
    bin: PathBuf,
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

/// `n` distinct free ports: every listener stays open until all are chosen,
/// so the kernel cannot hand the same port out twice.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    held.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

impl NatsCluster {
    /// Starts the three servers and waits until JetStream has a meta leader;
    /// a start that fails (a port taken by another process meanwhile) is
    /// tried again on new ports, twice.
    pub fn start() -> NatsCluster {
        for _ in 0..2 {
            let mut c = NatsCluster::start_once();
            if c.try_wait_ready(Duration::from_secs(30)).is_ok() {
                return c;
            }
            eprintln!("NATS cluster did not come up; trying new ports:\n{}", c.logs());
            for i in 0..3 {
                c.kill(i);
            }
        }
        let c = NatsCluster::start_once();
        c.wait_ready(Duration::from_secs(30));
        c
    }

    fn start_once() -> NatsCluster {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<[u16; 3]> = free_ports(9).chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let src = deploy_dir().join(format!("nats/n{}.conf", i + 1));
            let mut text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            for (from, to) in DEPLOY_PORTS.iter().zip(&ports) {
                for k in 0..3 {
                    text = text.replace(&format!("127.0.0.1:{}", from[k]), &format!("127.0.0.1:{}", to[k]));
                }
            }
            let store = dir.path().join("store");
            text = text.replace(DEPLOY_STORE, &store.display().to_string());
            assert!(!text.contains(DEPLOY_STORE), "every store_dir is rewritten");
            let conf = dir.path().join(format!("n{}.conf", i + 1));
            std::fs::write(&conf, text).expect("write config");
            let log = dir.path().join(format!("n{}.log", i + 1));
            servers.push(Server {
                name: format!("n{}", i + 1),
                conf,
                log,
                client_port: ports[i][0],
                http_port: ports[i][1],
                child: None,
            });
        }
        let mut c = NatsCluster { bin, servers, _dir: dir };
        for i in 0..3 {
            c.spawn(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&s.log).expect("log file");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&s.conf).stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        // Dies with the test process even if it is killed before Drop runs.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        s.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display())));
    }

    /// `nats://127.0.0.1:<port>` of every server, running or not.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.client_port)).collect()
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again with its config and store, and waits for a meta leader.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(Duration::from_secs(30));
    }

    /// Until every running server answers /jsz naming the same meta leader,
    /// itself one of the running servers, and sees the cluster's 3 peers.
    pub fn wait_ready(&self, timeout: Duration) {
        if let Err(last) = self.try_wait_ready(timeout) {
            panic!("NATS cluster not ready after {timeout:?}: {last}\n{}", self.logs());
        }
    }

    fn try_wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < timeout {
            match self.meta_leader() {
                Ok(_) => return Ok(()),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// The meta leader every running server agrees on.
    pub fn meta_leader(&self) -> Result<String, String> {
        let mut leader: Option<String> = None;
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            let body = http_get(s.http_port, "/jsz")?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("/jsz: {e}"))?;
            let l = v["meta_cluster"]["leader"].as_str().unwrap_or("").to_string();
            if l.is_empty() {
                return Err(format!("port {}: no meta leader yet", s.http_port));
            }
            if leader.as_ref().is_some_and(|x| *x != l) {
                return Err("servers disagree on the meta leader".into());
            }
            leader = Some(l);
        }
        let leader = leader.ok_or("no server running")?;
        if !self.servers.iter().any(|s| s.child.is_some() && s.name == leader) {
            return Err(format!("meta leader {leader} is not running"));
        }
        Ok(leader)
    }

    /// Every server's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", s.log.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A GET on the monitoring port, the body as text.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("port {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("port {port}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(format!("port {port}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}
