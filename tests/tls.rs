//! TLS on the device and provider listeners, over loopback with a
//! self-signed certificate made here: the whole push path through rustls,
//! hand-off between shards, PROXY before TLS, and peers that do not speak TLS.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pushgate::config::{Config, TlsConfig};
use pushgate::gateway::Gateway;
use pushgate::proto::frame::{split_frame, PROVIDER_MAX_BODY};
use pushgate::proto::session::auth_proof;
use pushgate::proto::{ErrorCode, Frame, GoAwayReason, Status, Token};
use pushgate::tls::TlsPorts;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Counts live heap bytes, for the idle-connection cost measurement.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A self-signed certificate for `localhost` in a temporary directory, and a
/// client config that trusts it.
struct Pki {
    dir: tempfile::TempDir,
    client: Arc<ClientConfig>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let client = self_signed(dir.path());
        Pki { dir, client }
    }

    fn tls_config(&self, device: bool, provider: bool) -> TlsConfig {
        TlsConfig {
            cert: Some(self.dir.path().join("cert.pem")),
            key: Some(self.dir.path().join("key.pem")),
            device,
            provider,
            http: false,
        }
    }

    fn gateway(&self, shards: usize, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let mut cfg = test_config(shards);
        cfg.tls = self.tls_config(true, true);
        tweak(&mut cfg);
        start_gateway(cfg)
    }

    fn connect(&self, addr: SocketAddr) -> Tls {
        self.over(TcpStream::connect(addr).unwrap())
    }

    /// Starts TLS on a socket that may already carry other bytes (a PROXY header).
    fn over(&self, sock: TcpStream) -> Tls {
        sock.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.client.clone(), name).unwrap();
        Tls { s: StreamOwned::new(conn, sock), buf: Vec::new() }
    }
}

/// Writes a new self-signed "localhost" certificate and key to `dir`
/// (cert.pem, key.pem); returns a client config that trusts only it.
fn self_signed(dir: &Path) -> Arc<ClientConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ck.cert.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(client)
}

/// Whether a full TLS handshake with `addr` succeeds for a client trusting what
/// `client` trusts (no session resumption, which would skip the certificate).
fn handshake_ok(client: &Arc<ClientConfig>, addr: SocketAddr) -> bool {
    let mut fresh = (**client).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(Arc::new(fresh), name).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

/// A frame connection through rustls.
struct Tls {
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Tls {
    fn send(&mut self, f: &Frame<'_>) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.s.write_all(&out).expect("send over TLS");
        self.s.flush().unwrap();
    }

    fn recv(&mut self, timeout: Duration) -> Got {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some((_, n))) = split_frame(&self.buf, PROVIDER_MAX_BODY) {
                return Got::Frame(self.buf.drain(..n).collect());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.s.sock.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 16384];
            match self.s.read(&mut tmp) {
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

    /// Whether the server ends the session with close_notify (not a bare TCP close)
    /// within a few seconds, after any frames.
    fn ends_with_close_notify(&mut self) -> bool {
        self.s.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut tmp = [0u8; 4096];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    fn expect<T>(&mut self, check: impl FnOnce(Frame<'_>) -> T) -> T {
        match self.recv(Duration::from_secs(5)) {
            Got::Frame(b) => {
                let (raw, _) = split_frame(&b, PROVIDER_MAX_BODY).unwrap().unwrap();
                check(Frame::parse(raw).expect("server sent a valid frame"))
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn hello(&mut self, label: &str) -> (Token, u32) {
        let secret = secret(label);
        self.send(&Frame::Hello(pushgate::proto::Hello {
            version: 1,
            keepalive_s: 0,
            app_id: APP,
            secret: &secret,
        }));
        self.expect(|f| match f {
            Frame::Welcome { token, missed, .. } => (token, missed),
            other => panic!("expected WELCOME, got {other:?}"),
        })
    }

    fn login(&mut self) {
        self.send(&Frame::AuthHello { version: 1, app_id: APP });
        let nonce = self.expect(|f| match f {
            Frame::Challenge { nonce } => nonce,
            other => panic!("expected CHALLENGE, got {other:?}"),
        });
        self.send(&Frame::Auth { proof: auth_proof(APP_SECRET.as_bytes(), APP, &nonce) });
        self.expect(|f| assert!(matches!(f, Frame::AuthOk { .. }), "expected AUTH_OK, got {f:?}"));
    }

    fn push(&mut self, req_id: u32, token: Token, payload: &[u8]) -> (Status, u64) {
        self.send(&Frame::Push(push_frame(req_id, token, 0, payload)));
        self.expect(|f| match f {
            Frame::Result { req_id: r, status, msg_id, .. } if r == req_id => (status, msg_id),
            other => panic!("expected RESULT {req_id}, got {other:?}"),
        })
    }
}

/// Reads until the server closes; false if it is still open after `timeout`.
fn closed_within(sock: &mut TcpStream, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let mut tmp = [0u8; 4096];
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true, // reset
        }
    }
    false
}

#[test]
fn push_notify_ack_over_tls_on_both_ports_across_shards() {
    let pki = Pki::new();
    let gw = pki.gateway(4, |_| {});
    let mut prov = pki.connect(gw.provider_addr);
    prov.login();
    // Eight devices on four shards: most HELLOs land on a shard that does not own
    // the token, so the TLS session moves with the socket.
    let mut devices: Vec<(Tls, Token)> = (0..8)
        .map(|i| {
            let mut d = pki.connect(gw.device_addr);
            let (token, missed) = d.hello(&format!("tls-{i}"));
            assert_eq!(missed, 0);
            (d, token)
        })
        .collect();
    for (i, (dev, token)) in devices.iter_mut().enumerate() {
        let payload = format!("hello {i}");
        let (status, msg_id) = prov.push(i as u32 + 1, *token, payload.as_bytes());
        assert_eq!(status, Status::DELIVERED, "device {i}");
        let got = dev.expect(|f| match f {
            Frame::Notify { msg_id, payload, .. } => (msg_id, payload.to_vec()),
            other => panic!("expected NOTIFY, got {other:?}"),
        });
        assert_eq!(got, (msg_id, payload.into_bytes()));
        dev.send(&Frame::Ack { msg_id });
        dev.send(&Frame::Ping);
        dev.expect(|f| assert_eq!(f, Frame::Pong));
    }
    // Acknowledged means gone: the same device reconnects to nothing waiting.
    drop(devices);
    let mut again = pki.connect(gw.device_addr);
    assert_eq!(again.hello("tls-3").1, 0);
    assert_eq!(again.recv(Duration::from_millis(300)), Got::Timeout);
}

#[test]
fn a_large_payload_crosses_many_records_both_ways() {
    let pki = Pki::new();
    let gw = pki.gateway(1, |_| {});
    let mut prov = pki.connect(gw.provider_addr);
    prov.login();
    let mut dev = pki.connect(gw.device_addr);
    let (token, _) = dev.hello("big");
    let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    for round in 0..50 {
        assert_eq!(prov.push(round + 1, token, &payload).0, Status::DELIVERED);
        let (msg_id, got) = dev.expect(|f| match f {
            Frame::Notify { msg_id, payload, .. } => (msg_id, payload.to_vec()),
            other => panic!("expected NOTIFY, got {other:?}"),
        });
        assert_eq!(got, payload);
        dev.send(&Frame::Ack { msg_id });
    }
}

#[test]
fn errors_and_goaway_arrive_inside_tls_before_the_close() {
    let pki = Pki::new();
    let gw = pki.gateway(2, |_| {});
    let baseline = gw.connections();
    // A bad frame after the handshake: ERROR, close_notify, EOF.
    let mut bad = pki.connect(gw.device_addr);
    bad.hello("bad-frame");
    bad.s.write_all(&[0x7f, 0x00]).unwrap();
    bad.expect(|f| match f {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::UNKNOWN_FRAME_TYPE),
        other => panic!("expected ERROR, got {other:?}"),
    });
    assert!(bad.ends_with_close_notify(), "the session is closed, not cut");
    // Drain: every TLS device gets GOAWAY shutdown, then the session ends.
    let mut devices: Vec<Tls> = (0..4)
        .map(|i| {
            let mut d = pki.connect(gw.device_addr);
            d.hello(&format!("drain-{i}"));
            d
        })
        .collect();
    let mut prov = pki.connect(gw.provider_addr);
    prov.login();
    assert!(wait_until(Duration::from_secs(3), || gw.connections() == baseline + 5));
    gw.drain();
    for d in &mut devices {
        d.expect(|f| match f {
            Frame::GoAway { reason, .. } => assert_eq!(reason, GoAwayReason::SHUTDOWN),
            other => panic!("expected GOAWAY, got {other:?}"),
        });
        assert!(d.ends_with_close_notify());
    }
    prov.expect(|f| assert!(matches!(f, Frame::GoAway { .. }), "expected GOAWAY, got {f:?}"));
    drop((devices, prov));
    gw.join();
}

#[test]
fn plaintext_and_garbage_on_a_tls_port_are_closed_and_free_their_slot() {
    let pki = Pki::new();
    let gw = pki.gateway(2, |_| {});
    let mut bystander = pki.connect(gw.device_addr);
    bystander.hello("bystander");
    let baseline = gw.connections();

    // A plaintext device speaks its HELLO to a TLS port.
    let mut plain = Raw::connect(gw.device_addr);
    let secret = secret("plain");
    plain.send(&Frame::Hello(pushgate::proto::Hello {
        version: 1,
        keepalive_s: 0,
        app_id: APP,
        secret: &secret,
    }));
    assert!(closed_within(&mut plain.stream, Duration::from_secs(3)), "plaintext HELLO closed");
    // A plaintext provider, likewise.
    let mut plain = Raw::connect(gw.provider_addr);
    plain.send(&Frame::AuthHello { version: 1, app_id: APP });
    assert!(closed_within(&mut plain.stream, Duration::from_secs(3)), "plaintext AUTH_HELLO closed");
    // A handshake record whose ClientHello is garbage.
    let mut junk = TcpStream::connect(gw.device_addr).unwrap();
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
    hello.extend((0..0x3c).map(|i: u8| i.wrapping_mul(37)));
    junk.write_all(&hello).unwrap();
    assert!(closed_within(&mut junk, Duration::from_secs(3)), "garbage ClientHello closed");
    // A record length past what TLS allows.
    let mut huge = TcpStream::connect(gw.provider_addr).unwrap();
    huge.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff, 0x01]).unwrap();
    assert!(closed_within(&mut huge, Duration::from_secs(3)), "oversized record closed");

    assert!(
        wait_until(Duration::from_secs(5), || gw.connections() == baseline),
        "every slot was freed: {} open, {baseline} expected",
        gw.connections()
    );
    bystander.send(&Frame::Ping);
    bystander.expect(|f| assert_eq!(f, Frame::Pong));
}

#[test]
fn a_handshake_that_never_completes_hits_the_handshake_deadline() {
    let pki = Pki::new();
    let gw = pki.gateway(1, |c| c.limits.handshake_timeout_ms = 300);
    let baseline = gw.connections();
    let mut silent = TcpStream::connect(gw.device_addr).unwrap();
    // Half a ClientHello, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed by the deadline, not at once");
    assert!(wait_until(Duration::from_secs(3), || gw.connections() == baseline));
}

#[test]
fn proxy_header_comes_before_tls() {
    let pki = Pki::new();
    let gw = pki.gateway(2, |c| {
        c.server.device_proxy_protocol = true;
        c.server.provider_proxy_protocol = true;
    });
    // The header in two pieces, then the handshake.
    let mut sock = TcpStream::connect(gw.device_addr).unwrap();
    sock.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    sock.write_all(b"127.0.0.1 4000 7700\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut dev = pki.over(sock);
    let (token, _) = dev.hello("behind-lb");
    // The header and the ClientHello in one write: the bytes after the header go to rustls.
    let sock = TcpStream::connect(gw.provider_addr).unwrap();
    let mut prov = pki.over(sock);
    let mut first = b"PROXY TCP4 192.0.2.8 127.0.0.1 4001 7701\r\n".to_vec();
    prov.s.conn.write_tls(&mut first).unwrap();
    prov.s.sock.write_all(&first).unwrap();
    prov.login();
    assert_eq!(prov.push(1, token, b"via lb").0, Status::DELIVERED);
    dev.expect(|f| assert!(matches!(f, Frame::Notify { .. }), "expected NOTIFY, got {f:?}"));
    // A TLS client where a PROXY header is expected is refused and closed.
    let baseline = gw.connections();
    let mut bare = TcpStream::connect(gw.device_addr).unwrap();
    let mut hello = Vec::new();
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(pki.client.clone(), name).unwrap().write_tls(&mut hello).unwrap();
    bare.write_all(&hello).unwrap();
    assert!(closed_within(&mut bare, Duration::from_secs(3)));
    assert!(wait_until(Duration::from_secs(3), || gw.connections() == baseline));
}

#[test]
fn plain_ports_stay_plain_when_tls_is_on_for_the_other() {
    let pki = Pki::new();
    let mut cfg = test_config(1);
    cfg.tls = pki.tls_config(false, true);
    let gw = start_gateway(cfg);
    let mut dev = Raw::connect(gw.device_addr);
    let (token, _, _) = dev.hello(APP, &secret("mixed"), 0);
    let mut prov = pki.connect(gw.provider_addr);
    prov.login();
    assert_eq!(prov.push(1, token, b"mixed").0, Status::DELIVERED);
}

#[test]
fn load_errors_name_the_key_and_the_file() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("nope.pem");
    let err = |c: TlsConfig| TlsPorts::load(&c).err().expect("load fails").0;
    assert!(TlsPorts::load(&TlsConfig::default()).unwrap().device.is_none(), "off by default");
    let e = err(TlsConfig { cert: Some(missing.clone()), ..pki.tls_config(true, false) });
    assert!(e.contains("tls.cert") && e.contains("nope.pem"), "{e}");
    let e = err(TlsConfig { key: Some(missing), ..pki.tls_config(true, false) });
    assert!(e.contains("tls.key") && e.contains("nope.pem"), "{e}");
    let e = err(TlsConfig { cert: None, ..pki.tls_config(false, true) });
    assert!(e.contains("tls.cert"), "{e}");
    // A key that is not the certificate's.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong = pki.dir.path().join("wrong.pem");
    std::fs::write(&wrong, other.serialize_pem()).unwrap();
    let e = err(TlsConfig { key: Some(wrong), ..pki.tls_config(true, true) });
    assert!(e.contains("wrong.pem"), "{e}");
    // A certificate file with no certificate in it.
    let e = err(TlsConfig { cert: Some(pki.dir.path().join("key.pem")), ..pki.tls_config(true, true) });
    assert!(e.contains("tls.cert") && e.contains("key.pem"), "{e}");
    // And the gateway refuses to start, saying why.
    let mut cfg = test_config(1);
    cfg.tls =
        TlsConfig { cert: Some(Path::new("/nonexistent/cert.pem").into()), ..pki.tls_config(true, true) };
    let stores =
        vec![Box::new(pushgate::store::memory::MemoryStore::new(10)) as Box<dyn pushgate::store::Store>];
    let e = Gateway::start(cfg, test_key(), stores).err().expect("start fails").to_string();
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
}

/// Opens `n` idle registered devices and returns the live-heap growth per
/// device, with the client side's own TLS state already dropped.
fn idle_cost(gw: &Gateway, pki: Option<&Pki>, n: usize, label: &str) -> (f64, Vec<TcpStream>) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{label}-{i}");
        match pki {
            Some(pki) => {
                let mut d = pki.connect(gw.device_addr);
                d.hello(&name);
                socks.push(d.s.sock); // the client's rustls state is dropped here
            }
            None => {
                let mut d = Raw::connect(gw.device_addr);
                d.hello(APP, &secret(&name), 0);
                socks.push(d.stream);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // let the shards settle their buffers
    let grown = LIVE.load(Ordering::Relaxed) - before - (socks.capacity() * 4) as isize;
    (grown as f64 / n as f64, socks)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The memory an idle TLS device costs the gateway, against a plain one.
/// `cargo test --release -p pushgate --test tls -- --ignored --nocapture idle_device_memory`
#[test]
#[ignore]
fn idle_device_memory() {
    const N: usize = 2000;
    let pki = Pki::new();
    let gw = pki.gateway(2, |c| {
        c.tls.device = true;
        c.limits.connections_per_source_per_s = 0;
    });
    let plain_gw = start_gateway({
        let mut c = test_config(2);
        c.limits.connections_per_source_per_s = 0;
        c
    });
    // Warm up: pools, tables and the session cache reach their steady size.
    let warm = idle_cost(&gw, Some(&pki), 300, "warm-tls");
    let warm_plain = idle_cost(&plain_gw, None, 300, "warm-plain");
    let rss0 = rss_kib();
    let (plain, plain_socks) = idle_cost(&plain_gw, None, N, "plain");
    let rss1 = rss_kib();
    let (tls, tls_socks) = idle_cost(&gw, Some(&pki), N, "tls");
    let rss2 = rss_kib();
    println!("rustls::ServerConnection itself: {} B", std::mem::size_of::<rustls::ServerConnection>());
    println!("idle device, gateway heap: plain {plain:.0} B, TLS {tls:.0} B, TLS adds {:.0} B", tls - plain);
    println!(
        "RSS growth per device (client side included): plain {:.0} B, TLS {:.0} B",
        (rss1 - rss0) as f64 * 1024.0 / N as f64,
        (rss2 - rss1) as f64 * 1024.0 / N as f64
    );
    assert!(tls > plain, "a TLS session costs something");
    drop((warm, warm_plain, plain_socks, tls_socks));
}

/// A renewed certificate takes effect on reload, for new handshakes only; a
/// broken one is refused and the current certificate stays.
#[test]
fn a_reload_serves_the_renewed_certificate_to_new_connections() {
    let pki = Pki::new();
    let gw = pki.gateway(2, |_| {});
    let mut old = pki.connect(gw.device_addr);
    old.hello("before-renewal");
    let renewed = self_signed(pki.dir.path());
    assert!(!handshake_ok(&renewed, gw.device_addr), "the files changed, the gateway did not yet");
    assert!(gw.shared.tls.reload().unwrap());
    assert!(handshake_ok(&renewed, gw.provider_addr));
    assert!(handshake_ok(&renewed, gw.device_addr));
    assert!(!handshake_ok(&pki.client, gw.device_addr), "the old certificate is gone");
    // The connection made before the reload carries on.
    old.send(&Frame::Ping);
    old.expect(|f| assert_eq!(f, Frame::Pong));

    std::fs::write(pki.dir.path().join("cert.pem"), "not a certificate").unwrap();
    let e = gw.shared.tls.reload().expect_err("a broken certificate is refused").0;
    assert!(e.contains("cert.pem"), "{e}");
    assert!(handshake_ok(&renewed, gw.device_addr), "the renewed certificate stays");
}

/// `pushgate serve` reloads the certificate on SIGHUP.
#[test]
fn sighup_reloads_the_certificate() {
    let pki = Pki::new();
    let cfg = pki.dir.path().join("gw.toml");
    let (cert, key) = (pki.dir.path().join("cert.pem"), pki.dir.path().join("key.pem"));
    let toml = format!("[tls]\ncert = {:?}\nkey = {:?}\ndevice = true\n", cert, key);
    std::fs::write(&cfg, toml).unwrap();
    let data = pki.dir.path().join("data");
    let args: [&std::ffi::OsStr; 6] = [
        "--config".as_ref(),
        cfg.as_ref(),
        "--data-dir".as_ref(),
        data.as_ref(),
        "--store".as_ref(),
        "memory".as_ref(),
    ];
    let srv = spawn_serve(&args, "info");
    assert!(handshake_ok(&pki.client, srv.device));
    let renewed = self_signed(pki.dir.path());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || handshake_ok(&renewed, srv.device)),
        "renewed certificate not served: {}",
        srv.log.lock().unwrap()
    );
    assert!(!handshake_ok(&pki.client, srv.device));
    assert!(srv.log.lock().unwrap().contains("TLS certificate reloaded"));
}
