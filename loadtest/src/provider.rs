//! Simulated app backends: each provider is one connection with a writer
//! thread that pipelines pushes up to the window and a reader thread that
//! matches results. Blocking sockets: there are only a handful of providers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use pushgate::proto::frame::{split_frame, Frame, Notification, Push, PROVIDER_MAX_BODY, VERSION};
use pushgate::proto::session::auth_proof;
use pushgate::proto::{Status, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::Fingerprint;
use crate::util::{mix64, now_ns, write_payload, Rng, PAYLOAD_HEADER};
use crate::wire::{mqtt, nats, peer_topic, Target};

#[derive(Clone, Debug)]
pub struct ProvConfig {
    pub target: Target,
    pub addr: SocketAddr,
    pub src: SocketAddr,
    pub app: String,
    pub secret: Vec<u8>,
    /// Pushes per second for this provider; 0 = as fast as the server accepts.
    pub rate: f64,
    pub payload_size: usize,
    /// Seconds of validity; 0 = now or never.
    pub expiry_s: u32,
    /// Most pushes in flight (pushgate also caps it at AUTH_OK's max_in_flight).
    pub window: u32,
    /// Round robin over the devices instead of picking at random.
    pub round_robin: bool,
    /// Stop after this many pushes (None = until stopped).
    pub limit: Option<u64>,
    pub id: u32,
    pub devices: usize,
}

/// Counters every provider adds to; read by the parent once a second.
#[derive(Default)]
pub struct ProvStats {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub by_status: [AtomicU64; 10],
    pub errors: AtomicU64,
    /// Results (or acks) never seen when the provider gave up waiting.
    pub unanswered: AtomicU64,
}

/// Which devices may be pushed to: (index, token). Grows as devices register.
pub type Targets = Arc<RwLock<Vec<(u32, Token)>>>;

/// Pushes in flight, with a timed wait so a stalled server cannot hang the harness.
struct Credits {
    n: Mutex<u32>,
    cv: Condvar,
}

impl Credits {
    fn new() -> Credits {
        Credits { n: Mutex::new(0), cv: Condvar::new() }
    }
    fn acquire(&self, max: u32, timeout: Duration) -> bool {
        let g = self.n.lock().expect("credits");
        let (mut g, r) = self.cv.wait_timeout_while(g, timeout, |n| *n >= max).expect("credits");
        if r.timed_out() && *g >= max {
            return false;
        }
        *g += 1;
        true
    }
    fn available(&self, max: u32) -> bool {
        *self.n.lock().expect("credits") < max
    }
    fn release(&self) {
        let mut g = self.n.lock().expect("credits");
        *g = g.saturating_sub(1);
        self.cv.notify_all();
    }
    fn wait_zero(&self, timeout: Duration) -> u32 {
        let g = self.n.lock().expect("credits");
        *self.cv.wait_timeout_while(g, timeout, |n| *n > 0).expect("credits").0
    }
}

fn connect(src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&src.into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s.into())
}

/// Runs one provider until `stop`, its limit or `deadline_ns`; returns what it
/// knows was accepted, per device index.
pub fn run(
    cfg: ProvConfig,
    targets: Targets,
    stats: Arc<ProvStats>,
    stop: Arc<AtomicBool>,
    deadline_ns: u64,
) -> std::io::Result<Vec<Fingerprint>> {
    let sock = connect(cfg.src, cfg.addr)?;
    match cfg.target {
        Target::Pushgate => run_pushgate(cfg, sock, targets, stats, stop, deadline_ns),
        Target::Mosquitto => run_mqtt(cfg, sock, targets, stats, stop, deadline_ns),
        Target::Nats => run_nats(cfg, sock, targets, stats, stop, deadline_ns),
    }
}

/// Picks the next device and fills the payload; shared by all targets.
struct Picker {
    rng: Rng,
    next: usize,
    seq: u64,
    payload: Vec<u8>,
}

impl Picker {
    fn new(cfg: &ProvConfig) -> Picker {
        Picker {
            rng: Rng::new(mix64(cfg.id as u64 + 77)),
            next: cfg.id as usize,
            seq: (cfg.id as u64) << 40,
            payload: vec![0u8; cfg.payload_size.max(PAYLOAD_HEADER)],
        }
    }
    fn pick(&mut self, cfg: &ProvConfig, targets: &Targets) -> Option<(u32, Token)> {
        let t = targets.read().expect("targets");
        if t.is_empty() {
            return None;
        }
        let i = if cfg.round_robin {
            self.next = self.next.wrapping_add(1);
            self.next % t.len()
        } else {
            self.rng.below(t.len() as u64) as usize
        };
        Some(t[i])
    }
    fn fill(&mut self, dev: u32) -> u64 {
        self.seq += 1;
        write_payload(&mut self.payload, now_ns(), dev, self.seq);
        self.seq
    }
}

/// Paces sends at a fixed rate; `None` rate means never wait.
struct Pacer {
    interval_ns: Option<u64>,
    next: u64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer { interval_ns: (rate > 0.0).then(|| (1e9 / rate) as u64), next: now_ns() }
    }
    /// How long to wait before the next send is due.
    fn due_in(&mut self) -> Option<Duration> {
        let iv = self.interval_ns?;
        let now = now_ns();
        if self.next > now {
            return Some(Duration::from_nanos(self.next - now));
        }
        // Do not bank more than a second of missed sends.
        self.next = self.next.max(now.saturating_sub(1_000_000_000)) + iv;
        None
    }
}

/// The writer loop common to all targets: `push` encodes one message into
/// `buf`, `flush` sends `buf`.
#[allow(clippy::too_many_arguments)]
fn write_loop(
    cfg: &ProvConfig,
    targets: &Targets,
    stats: &ProvStats,
    stop: &AtomicBool,
    deadline_ns: u64,
    credits: Option<(&Credits, u32)>,
    w: &mut TcpStream,
    mut push: impl FnMut(&mut Vec<u8>, u32, Token, &mut Picker) -> bool,
) -> std::io::Result<()> {
    let mut picker = Picker::new(cfg);
    let mut pacer = Pacer::new(cfg.rate);
    let mut buf = Vec::with_capacity(128 * 1024);
    let mut sent = 0u64;
    while !stop.load(Relaxed) && now_ns() < deadline_ns && cfg.limit.is_none_or(|l| sent < l) {
        if let Some(d) = pacer.due_in() {
            if !buf.is_empty() {
                w.write_all(&buf)?;
                buf.clear();
            }
            std::thread::sleep(d.min(Duration::from_millis(50)));
            continue;
        }
        if let Some((credits, window)) = credits {
            if !credits.available(window) && !buf.is_empty() {
                w.write_all(&buf)?;
                buf.clear();
            }
            if !credits.acquire(window, Duration::from_millis(200)) {
                continue;
            }
        }
        let Some((dev, token)) = picker.pick(cfg, targets) else {
            if let Some((credits, _)) = credits {
                credits.release();
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let flush_now = push(&mut buf, dev, token, &mut picker);
        sent += 1;
        stats.sent.fetch_add(1, Relaxed);
        if flush_now || buf.len() >= 64 * 1024 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        w.write_all(&buf)?;
    }
    w.flush()
}

fn expiry(cfg: &ProvConfig) -> u32 {
    if cfg.expiry_s == 0 {
        return 0;
    }
    let unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    unix as u32 + cfg.expiry_s
}

/// Reads one pushgate frame (blocking), returning its type and an owned body.
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<(u8, Vec<u8>)> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some((raw, n)) =
            split_frame(buf, PROVIDER_MAX_BODY).map_err(|e| std::io::Error::other(format!("{e:?}")))?
        {
            let out = (raw.ftype, raw.body.to_vec());
            buf.drain(..n);
            return Ok(out);
        }
        let n = r.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_owned(ftype: u8, body: &[u8]) -> std::io::Result<Frame<'_>> {
    Frame::parse(pushgate::proto::RawFrame { ftype, body })
        .map_err(|e| std::io::Error::other(format!("{e:?}")))
}

fn run_pushgate(
    cfg: ProvConfig,
    mut sock: TcpStream,
    targets: Targets,
    stats: Arc<ProvStats>,
    stop: Arc<AtomicBool>,
    deadline_ns: u64,
) -> std::io::Result<Vec<Fingerprint>> {
    let mut out = Vec::new();
    Frame::AuthHello { version: VERSION, app_id: &cfg.app }.encode(&mut out);
    sock.write_all(&out)?;
    let mut rbuf = Vec::new();
    let (t, body) = read_frame(&mut sock, &mut rbuf)?;
    let nonce = match parse_owned(t, &body)? {
        Frame::Challenge { nonce } => nonce,
        f => return Err(std::io::Error::other(format!("expected CHALLENGE, got {f:?}"))),
    };
    out.clear();
    Frame::Auth { proof: auth_proof(&cfg.secret, &cfg.app, &nonce) }.encode(&mut out);
    sock.write_all(&out)?;
    let (t, body) = read_frame(&mut sock, &mut rbuf)?;
    let max_in_flight = match parse_owned(t, &body)? {
        Frame::AuthOk { max_in_flight } => max_in_flight,
        f => return Err(std::io::Error::other(format!("expected AUTH_OK, got {f:?}"))),
    };
    let window = max_in_flight.clamp(1, cfg.window.max(1));
    let credits = Arc::new(Credits::new());
    let done = Arc::new(AtomicBool::new(false));
    let mut rsock = sock.try_clone()?;
    rsock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let reader = {
        let (credits, stats, done, n) = (credits.clone(), stats.clone(), done.clone(), cfg.devices);
        std::thread::spawn(move || -> Vec<Fingerprint> {
            let mut fps = vec![Fingerprint::default(); n];
            let mut buf = rbuf;
            loop {
                let (t, body) = match read_frame(&mut rsock, &mut buf) {
                    Ok(f) => f,
                    Err(e) => match after_read_error(&e, &done) {
                        AfterRead::Retry => continue,
                        AfterRead::Stop => break,
                        AfterRead::Failed => {
                            eprintln!("provider {}: read: {e}", cfg.id);
                            stats.errors.fetch_add(1, Relaxed);
                            break;
                        }
                    },
                };
                match parse_owned(t, &body) {
                    Ok(Frame::Result { req_id, status, msg_id, .. }) => {
                        stats.by_status[(status.0 as usize).min(9)].fetch_add(1, Relaxed);
                        if status == Status::DELIVERED || status == Status::QUEUED {
                            stats.accepted.fetch_add(1, Relaxed);
                            if let Some(fp) = fps.get_mut(req_id as usize) {
                                fp.add(msg_id);
                            }
                        }
                        credits.release();
                    }
                    Ok(Frame::Pong) => {}
                    Ok(f) => {
                        eprintln!("provider {}: unexpected {f:?}", cfg.id);
                        stats.errors.fetch_add(1, Relaxed);
                        if matches!(f, Frame::GoAway { .. } | Frame::Error { .. }) {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("provider {}: {e}", cfg.id);
                        stats.errors.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
            fps
        })
    };
    let exp = expiry(&cfg);
    let r = write_loop(
        &cfg,
        &targets,
        &stats,
        &stop,
        deadline_ns,
        Some((&credits, window)),
        &mut sock,
        |buf, dev, token, p| {
            p.fill(dev);
            // req_id is the device index, so a RESULT names its device without a lookup table.
            let note = Notification {
                kind: 0,
                priority: 10,
                flags: 0,
                expiry: exp,
                collapse: &[],
                payload: &p.payload,
            };
            Frame::Push(Push { req_id: dev, token, note }).encode(buf);
            false
        },
    );
    settle(&cfg, &stats, &credits, r);
    done.store(true, Relaxed);
    Ok(reader.join().unwrap_or_default())
}

fn run_mqtt(
    cfg: ProvConfig,
    mut sock: TcpStream,
    targets: Targets,
    stats: Arc<ProvStats>,
    stop: Arc<AtomicBool>,
    deadline_ns: u64,
) -> std::io::Result<Vec<Fingerprint>> {
    let mut out = Vec::new();
    mqtt::connect(&format!("p{}-{}", cfg.id, std::process::id()), 0, &mut out);
    sock.write_all(&out)?;
    let mut rbuf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some((h, body, _)) = mqtt::split(&rbuf).map_err(std::io::Error::other)? {
            if h >> 4 != 2 || body.get(1) != Some(&0) {
                return Err(std::io::Error::other("CONNACK refused"));
            }
            break;
        }
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        rbuf.extend_from_slice(&tmp[..n]);
    }
    rbuf.clear();
    // Packet id -> (device, sequence), written before the PUBLISH, read on its PUBACK.
    let slots: Arc<Vec<(AtomicU32, AtomicU64)>> =
        Arc::new((0..65536).map(|_| (AtomicU32::new(0), AtomicU64::new(0))).collect());
    let credits = Arc::new(Credits::new());
    let done = Arc::new(AtomicBool::new(false));
    let mut rsock = sock.try_clone()?;
    rsock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let reader = {
        let (credits, stats, done, slots, n) =
            (credits.clone(), stats.clone(), done.clone(), slots.clone(), cfg.devices);
        std::thread::spawn(move || -> Vec<Fingerprint> {
            let mut fps = vec![Fingerprint::default(); n];
            let mut buf = Vec::new();
            let mut tmp = vec![0u8; 64 * 1024];
            loop {
                let mut used = 0;
                while let Ok(Some((h, body, k))) = mqtt::split(&buf[used..]) {
                    used += k;
                    if h >> 4 == 4 && body.len() >= 2 {
                        let pid = u16::from_be_bytes([body[0], body[1]]) as usize;
                        let (dev, seq) = (slots[pid].0.load(Relaxed), slots[pid].1.load(Relaxed));
                        stats.accepted.fetch_add(1, Relaxed);
                        stats.by_status[0].fetch_add(1, Relaxed);
                        if let Some(fp) = fps.get_mut(dev as usize) {
                            fp.add(seq);
                        }
                        credits.release();
                    }
                }
                buf.drain(..used);
                match rsock.read(&mut tmp) {
                    Ok(0) => break,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                    Err(e) => match after_read_error(&e, &done) {
                        AfterRead::Retry => continue,
                        AfterRead::Stop => break,
                        AfterRead::Failed => {
                            eprintln!("provider {}: read: {e}", cfg.id);
                            stats.errors.fetch_add(1, Relaxed);
                            break;
                        }
                    },
                }
            }
            fps
        })
    };
    let mut pid: u16 = 0;
    let window = cfg.window.clamp(1, 30000);
    let r = write_loop(
        &cfg,
        &targets,
        &stats,
        &stop,
        deadline_ns,
        Some((&credits, window)),
        &mut sock,
        |buf, dev, _t, p| {
            pid = pid.checked_add(1).unwrap_or(1);
            let seq = p.fill(dev);
            slots[pid as usize].0.store(dev, Relaxed);
            slots[pid as usize].1.store(seq, Relaxed);
            mqtt::publish_qos1(pid, &peer_topic(Target::Mosquitto, dev), &p.payload, buf);
            false
        },
    );
    settle(&cfg, &stats, &credits, r);
    done.store(true, Relaxed);
    let _ = sock.write_all(&[0xe0, 0]); // DISCONNECT
    Ok(reader.join().unwrap_or_default())
}

/// Batches of (device, sequence) sent but not yet covered by a PONG, oldest first.
type Batches = std::collections::VecDeque<Vec<(u32, u64)>>;

/// Core NATS has no per-message acknowledgement: a PING after every batch,
/// answered by PONG once the server has processed everything before it, is
/// the flow control, and "accepted" means "processed by the server".
fn run_nats(
    cfg: ProvConfig,
    mut sock: TcpStream,
    targets: Targets,
    stats: Arc<ProvStats>,
    stop: Arc<AtomicBool>,
    deadline_ns: u64,
) -> std::io::Result<Vec<Fingerprint>> {
    const BATCH: u64 = 256;
    let mut out = Vec::new();
    nats::connect(&format!("p{}", cfg.id), &mut out);
    sock.write_all(&out)?;
    let credits = Arc::new(Credits::new());
    let done = Arc::new(AtomicBool::new(false));
    let pong_due = Arc::new(AtomicBool::new(false));
    let rsock = sock.try_clone()?;
    rsock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let batches: Arc<Mutex<Batches>> = Arc::default();
    let reader = {
        let (credits, stats, done, pong_due, batches, n) =
            (credits.clone(), stats.clone(), done.clone(), pong_due.clone(), batches.clone(), cfg.devices);
        std::thread::spawn(move || -> Vec<Fingerprint> {
            let mut fps = vec![Fingerprint::default(); n];
            let mut r = BufReader::new(rsock);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => match after_read_error(&e, &done) {
                        AfterRead::Retry => continue,
                        AfterRead::Stop => break,
                        AfterRead::Failed => {
                            eprintln!("provider {}: read: {e}", cfg.id);
                            break;
                        }
                    },
                }
                match line.trim_end() {
                    "PONG" => {
                        let Some(batch) = batches.lock().expect("batches").pop_front() else {
                            continue;
                        };
                        for (dev, seq) in batch {
                            stats.accepted.fetch_add(1, Relaxed);
                            stats.by_status[0].fetch_add(1, Relaxed);
                            if let Some(fp) = fps.get_mut(dev as usize) {
                                fp.add(seq);
                            }
                        }
                        credits.release();
                    }
                    "PING" => pong_due.store(true, Relaxed),
                    l if l.starts_with("-ERR") => {
                        eprintln!("provider {}: {l}", cfg.id);
                        stats.errors.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
            fps
        })
    };
    let mut cur: Vec<(u32, u64)> = Vec::new();
    let mut in_batch = 0u64;
    // Each credit is one outstanding PING; the window counts messages.
    let window = (cfg.window as u64 / BATCH).max(2) as u32;
    let mut held = false;
    let r = write_loop(&cfg, &targets, &stats, &stop, deadline_ns, None, &mut sock, |buf, dev, _t, p| {
        if !held {
            // A credit covers a whole batch; every PING before this one is already flushed.
            while !credits.acquire(window, Duration::from_millis(200)) {
                if stop.load(Relaxed) || now_ns() > deadline_ns {
                    break;
                }
            }
            held = true;
        }
        if pong_due.swap(false, Relaxed) {
            buf.extend_from_slice(b"PONG\r\n");
        }
        let seq = p.fill(dev);
        nats::publish(&peer_topic(Target::Nats, dev), &p.payload, buf);
        cur.push((dev, seq));
        in_batch += 1;
        if in_batch == BATCH {
            buf.extend_from_slice(b"PING\r\n");
            batches.lock().expect("batches").push_back(std::mem::take(&mut cur));
            in_batch = 0;
            held = false;
            return true;
        }
        false
    });
    report_write(&cfg, &stats, r);
    if !cur.is_empty() {
        batches.lock().expect("batches").push_back(std::mem::take(&mut cur));
        let _ = sock.write_all(b"PING\r\n");
    }
    credits.wait_zero(Duration::from_secs(10));
    let left: usize = batches.lock().expect("batches").iter().map(Vec::len).sum();
    stats.unanswered.fetch_add(left as u64, Relaxed);
    done.store(true, Relaxed);
    Ok(reader.join().unwrap_or_default())
}

/// Counts the write loop's error, if it ended on one.
fn report_write(cfg: &ProvConfig, stats: &ProvStats, r: std::io::Result<()>) {
    if let Err(e) = r {
        eprintln!("provider {}: write: {e}", cfg.id);
        stats.errors.fetch_add(1, Relaxed);
    }
}

/// After the write loop: counts its error, waits (at most 10 s) for the
/// answers still owed and counts those that never came.
fn settle(cfg: &ProvConfig, stats: &ProvStats, credits: &Credits, r: std::io::Result<()>) {
    report_write(cfg, stats, r);
    let left = credits.wait_zero(Duration::from_secs(10));
    stats.unanswered.fetch_add(left as u64, Relaxed);
}

/// What a provider's reader thread does after a failed read.
enum AfterRead {
    /// A read timeout while pushes may still be answered: read again.
    Retry,
    /// A read timeout after the writer finished: the reader is done.
    Stop,
    /// A real error: report it and stop.
    Failed,
}

fn after_read_error(e: &std::io::Error, done: &AtomicBool) -> AfterRead {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut if done.load(Relaxed) => {
            AfterRead::Stop
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => AfterRead::Retry,
        _ => AfterRead::Failed,
    }
}
