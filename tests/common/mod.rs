//! Helpers shared by the end-to-end tests: an in-process gateway on
//! 127.0.0.1 port 0, and a raw frame connection for speaking bytes directly.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pushgate::config::{AppConfig, Config};
use pushgate::gateway::Gateway;
use pushgate::proto::frame::{split_frame, PROVIDER_MAX_BODY};
use pushgate::proto::session::auth_proof;
use pushgate::proto::{Frame, Notification, Push, Status, Token, TokenKey, PRIORITY_HIGH};
use pushgate::store::memory::MemoryStore;
use pushgate::store::Store;

pub const APP: &str = "app.one";
pub const APP_SECRET: &str = "secret-one-0123456789";
pub const OTHER_APP: &str = "app.two";
pub const OTHER_SECRET: &str = "secret-two-0123456789";

/// A config on loopback port 0 with two apps and short timers for tests.
pub fn test_config(shards: usize) -> Config {
    let mut cfg = Config::default();
    cfg.server.device_listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.provider_listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shards = shards;
    cfg.heartbeat.min_s = 1;
    cfg.limits.handshake_timeout_ms = 2000;
    cfg.limits.normal_priority_delay_ms = 100;
    cfg.drain.timeout_ms = 3000;
    cfg.drain.spread_ms = 1000;
    cfg.apps = vec![
        AppConfig { id: APP.into(), secret: APP_SECRET.into() },
        AppConfig { id: OTHER_APP.into(), secret: OTHER_SECRET.into() },
    ];
    cfg
}

pub fn test_key() -> TokenKey {
    TokenKey::new([42; 32])
}

/// Starts an in-process gateway with in-memory stores.
pub fn start_gateway(cfg: Config) -> Gateway {
    let n = cfg.shard_count();
    let stores: Vec<Box<dyn Store>> =
        (0..n).map(|_| Box::new(MemoryStore::new(cfg.limits.device_queue_cap)) as Box<dyn Store>).collect();
    Gateway::start(cfg, test_key(), stores).expect("gateway starts")
}

/// A device secret derived from a label, so tests can reconnect as the same device.
pub fn secret(label: &str) -> Vec<u8> {
    let mut s = format!("device-secret-{label}").into_bytes();
    s.resize(32, b'.');
    s.truncate(64);
    s
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A high-priority alert PUSH with no collapse id and no flags; change the
/// notification's other fields with [`with_note`].
pub fn push_frame(req_id: u32, token: Token, expiry: u32, payload: &[u8]) -> Push<'_> {
    Push { req_id, token, note: note(expiry, payload) }
}

/// A high-priority alert with no collapse id and no flags, for a PUSH or MULTI_PUSH.
pub fn note(expiry: u32, payload: &[u8]) -> Notification<'_> {
    Notification { kind: 0, priority: PRIORITY_HIGH, flags: 0, expiry, collapse: b"", payload }
}

/// `p` with its notification changed by `f`: `with_note(push_frame(..), |n| n.flags = 1)`.
pub fn with_note<'a>(mut p: Push<'a>, f: impl FnOnce(&mut Notification<'a>)) -> Push<'a> {
    f(&mut p.note);
    p
}

/// A connection from a chosen loopback source address (127.0.0.0/8 has many).
pub fn connect_from(src: &str, to: SocketAddr) -> Raw {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    s.connect(&to.into()).unwrap();
    Raw::from_stream(TcpStream::from(s))
}

/// A connection that sends and receives whole frames as owned values.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A decoded frame with owned fields, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Frame(Vec<u8>),
    Closed,
    Timeout,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Wraps an existing stream, e.g. a `try_clone` for a reader thread.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, f: &Frame<'_>) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.stream.write_all(&out).expect("send");
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b);
    }

    /// The next whole frame's bytes (header included), or Closed / Timeout.
    pub fn recv(&mut self, timeout: Duration) -> Got {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some((_, n))) = split_frame(&self.buf, PROVIDER_MAX_BODY) {
                let bytes: Vec<u8> = self.buf.drain(..n).collect();
                return Got::Frame(bytes);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    /// Receives a frame and hands it to `check` decoded; panics on close or timeout.
    pub fn expect<T>(&mut self, check: impl FnOnce(Frame<'_>) -> T) -> T {
        match self.recv(Duration::from_secs(5)) {
            Got::Frame(b) => {
                let (raw, _) = split_frame(&b, PROVIDER_MAX_BODY).unwrap().unwrap();
                check(Frame::parse(raw).expect("server sent a valid frame"))
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Whether the server closes the connection within `timeout` (after any frames).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            match self.recv(end.saturating_duration_since(Instant::now())) {
                Got::Closed => return true,
                Got::Timeout => return false,
                Got::Frame(_) => {}
            }
        }
    }

    /// Sends `push` and waits for its RESULT, skipping RECEIPTs: (status, msg_id, info).
    pub fn push(&mut self, push: Push<'_>) -> (Status, u64, u64) {
        let req_id = push.req_id;
        self.send(&Frame::Push(push));
        loop {
            let r = self.expect(|f| match f {
                Frame::Result { req_id: r, status, msg_id, info } if r == req_id => {
                    Some((status, msg_id, info))
                }
                Frame::Receipt { .. } => None,
                other => panic!("expected RESULT {req_id}, got {other:?}"),
            });
            if let Some(r) = r {
                return r;
            }
        }
    }

    /// Device handshake; returns (token, heartbeat_s, missed).
    pub fn hello(&mut self, app: &str, secret: &[u8], keepalive_s: u16) -> (Token, u16, u32) {
        self.send(&Frame::Hello(pushgate::proto::Hello { version: 1, keepalive_s, app_id: app, secret }));
        self.expect(|f| match f {
            Frame::Welcome { token, heartbeat_s, missed } => (token, heartbeat_s, missed),
            other => panic!("expected WELCOME, got {other:?}"),
        })
    }

    /// Provider login; returns max_in_flight.
    pub fn login(&mut self, app: &str, secret: &str) -> u32 {
        self.send(&Frame::AuthHello { version: 1, app_id: app });
        let nonce = self.expect(|f| match f {
            Frame::Challenge { nonce } => nonce,
            other => panic!("expected CHALLENGE, got {other:?}"),
        });
        self.send(&Frame::Auth { proof: auth_proof(secret.as_bytes(), app, &nonce) });
        self.expect(|f| match f {
            Frame::AuthOk { max_in_flight } => max_in_flight,
            other => panic!("expected AUTH_OK, got {other:?}"),
        })
    }
}

/// A `pushgate serve` child process on loopback port 0, killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub device: SocketAddr,
    pub provider: SocketAddr,
    pub admin: SocketAddr,
    /// The demo app's secret, when serve printed one (no apps configured).
    pub secret: String,
    /// Everything the process wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The HTTP API, when it is on (`http://<this>/v1/push`).
    pub http: Option<SocketAddr>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `pushgate serve` with every listener on 127.0.0.1 port 0, plus `args`,
/// and reads the addresses (and the demo secret) it prints. `rust_log` sets its log filter.
pub fn spawn_serve<S: AsRef<std::ffi::OsStr>>(args: &[S], rust_log: &str) -> Served {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["serve", "--device-listen", "127.0.0.1:0", "--provider-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pushgate serve starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err = child.stderr.take().expect("piped stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut device, mut provider, mut admin, mut secret) = (None, None, None, String::new());
    let mut http = None;
    while admin.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve stopped before printing its addresses: {}", log.lock().unwrap());
        };
        if let Some(rest) = line.strip_prefix("pushgate: devices on ") {
            let (d, p) = rest.split_once(", providers on ").expect("both addresses");
            device = Some(d.parse().expect("device address"));
            provider = Some(p.parse().expect("provider address"));
        }
        if let Some(i) = line.find("with secret ") {
            secret = line[i + "with secret ".len()..].trim().to_string();
        }
        if let Some(a) = line.strip_prefix("pushgate: HTTP API on http://") {
            http = Some(a.trim_end_matches("/v1/push").parse().expect("HTTP API address"));
        }
        if let Some(a) = line.strip_prefix("pushgate: admin on http://") {
            admin = Some(a.trim_end_matches("/metrics").parse().expect("admin address"));
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Served {
        child,
        device: device.expect("device address printed"),
        provider: provider.expect("provider address printed"),
        admin: admin.expect("admin address printed"),
        secret,
        log,
        http,
    }
}
