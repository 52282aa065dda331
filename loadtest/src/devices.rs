//! One device-simulator thread: a mio loop over thousands of simulated phones
//! that connect (from many loopback source addresses), register, heartbeat at
//! the negotiated interval, acknowledge every notification, and drop and
//! reconnect with jittered backoff when told to or at random.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stats::{new_hist, record, DevCounters, Fingerprint};
use crate::util::{device_secret, interrupted, mix64, now_ns, read_payload, source_addr, would_block, Rng};
use crate::wire::{self, DevCtx, DevEvent, Target, WireState};

const WAKER: Token = Token(usize::MAX);
/// The device field of a broadcast payload: every device, not one.
pub const BROADCAST_DEV: u32 = u32::MAX;
const MS: u64 = 1_000_000;

/// How the devices of one worker behave; sent from the parent as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevConfig {
    pub target: Target,
    pub addrs: Vec<SocketAddr>,
    pub app: String,
    pub seed: u64,
    pub worker: usize,
    /// Heartbeat interval asked for in HELLO / CONNECT, seconds.
    pub keepalive_s: u16,
    /// Connections in progress (not yet registered) at once, per thread.
    pub max_pending: usize,
    pub handshake_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Fraction of devices that drop and reconnect per second, at random.
    pub churn_per_s: f64,
    /// Devices wait for `Cmd::Unpark` before connecting.
    pub start_parked: bool,
    /// Broadcast scenario: the shared topic devices subscribe to on `Cmd::Subscribe`.
    #[serde(default)]
    pub topic: Option<String>,
}

/// Orders from the worker's main thread.
#[derive(Clone, Copy, Debug)]
pub enum Cmd {
    /// Drop every connection and reconnect at once.
    Storm,
    /// Drop every connection and stay offline.
    Park,
    /// Connect every parked device.
    Unpark,
    /// Start dropping devices at random (`churn_per_s`), once all have registered.
    Churn,
    /// Subscribe every registered device to the configured topic, once.
    Subscribe,
    Stop,
}

/// What a thread publishes for the worker to report, refreshed every 100 ms.
#[derive(Default)]
pub struct Shared {
    pub counters: DevCounters,
    pub interval: Option<Histogram<u64>>,
    pub tokens: Vec<(u32, String)>,
    /// Broadcast: per message sequence, (devices that got it, latest arrival after the send, ns).
    pub per_msg: HashMap<u64, (u64, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// No socket; waits for its timer to join the connect queue.
    Idle,
    Queued,
    Connecting,
    Handshake,
    Ready,
    /// Offline until told otherwise.
    Parked,
}

struct Dev {
    idx: u32,
    st: St,
    sock: Option<TcpStream>,
    ws: WireState,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    writable_interest: bool,
    hb_ns: u64,
    epoch: u32,
    failures: u32,
    timer_gen: u32,
    seen: HashMap<u64, u32>,
    fp: Fingerprint,
    storm_pending: bool,
    /// The token last reported to the parent; a different one is reported again.
    token: Option<String>,
    /// Subscribed to the broadcast topic (it outlives connections).
    subscribed: bool,
}

/// Why a connection ended, for the counters and the reconnect policy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    ConnectFailed,
    Timeout,
    Eof,
    Proto,
    GoAway(u8, u32),
    Purpose,
}

pub struct DeviceThread {
    cfg: DevConfig,
    poll: Poll,
    devs: Vec<Dev>,
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    queue: VecDeque<usize>,
    pending: usize,
    c: DevCounters,
    interval: Histogram<u64>,
    tokens: Vec<(u32, String)>,
    rng: Rng,
    churn_acc: f64,
    churn_on: bool,
    parked_all: bool,
    scratch: Vec<u8>,
    per_msg: HashMap<u64, (u64, u64)>,
}

impl DeviceThread {
    /// Devices `first..first + count` (global indices) on a new poll; returns the thread state and its waker.
    pub fn new(cfg: DevConfig, first: u32, count: u32) -> std::io::Result<(DeviceThread, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let devs = (first..first + count)
            .map(|idx| Dev {
                idx,
                st: St::Idle,
                sock: None,
                ws: WireState::default(),
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                writable_interest: false,
                hb_ns: cfg.keepalive_s.max(1) as u64 * 1000 * MS,
                epoch: 0,
                failures: 0,
                timer_gen: 0,
                seen: HashMap::new(),
                fp: Fingerprint::default(),
                storm_pending: false,
                token: None,
                subscribed: false,
            })
            .collect();
        let rng = Rng::new(cfg.seed ^ mix64(first as u64 + 1));
        let mut t = DeviceThread {
            parked_all: cfg.start_parked,
            cfg,
            poll,
            devs,
            timers: BinaryHeap::new(),
            queue: VecDeque::new(),
            pending: 0,
            c: DevCounters::default(),
            interval: new_hist(),
            tokens: Vec::new(),
            rng,
            churn_acc: 0.0,
            churn_on: false,
            scratch: vec![0u8; 64 * 1024],
            per_msg: HashMap::new(),
        };
        for i in 0..t.devs.len() {
            if t.parked_all {
                t.devs[i].st = St::Parked;
            } else {
                t.enqueue(i);
            }
        }
        Ok((t, waker))
    }

    /// Runs until `Cmd::Stop`; returns each device's fingerprint of unique messages, by global index.
    pub fn run(
        mut self,
        cmds: Receiver<Cmd>,
        shared: Arc<Mutex<Shared>>,
        total: Arc<Mutex<Histogram<u64>>>,
    ) -> Vec<(u32, Fingerprint)> {
        let mut events = Events::with_capacity(1024);
        let mut last_publish = now_ns();
        let mut last_churn = now_ns();
        loop {
            let now = now_ns();
            let next = self.timers.peek().map(|Reverse((t, _, _))| *t).unwrap_or(now + 100 * MS);
            let wait = next.saturating_sub(now).min(100 * MS);
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_nanos(wait))) {
                if !interrupted(&e) {
                    eprintln!("poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                self.on_event(ev.token().0);
            }
            let mut stop = false;
            while let Ok(cmd) = cmds.try_recv() {
                match cmd {
                    Cmd::Stop => stop = true,
                    c => self.on_cmd(c),
                }
            }
            if stop {
                break;
            }
            let now = now_ns();
            self.on_timers(now);
            self.start_queued();
            if now - last_churn >= 100 * MS {
                self.on_churn((now - last_churn) as f64 / 1e9);
                last_churn = now;
            }
            if now - last_publish >= 100 * MS {
                last_publish = now;
                self.publish(&shared, &total);
            }
        }
        self.publish(&shared, &total);
        self.devs.iter().map(|d| (d.idx, d.fp)).collect()
    }

    fn publish(&mut self, shared: &Mutex<Shared>, total: &Mutex<Histogram<u64>>) {
        let mut s = shared.lock().expect("shared stats");
        s.counters = self.c;
        match &mut s.interval {
            Some(h) => h.add(&self.interval).expect("same bounds"),
            None => s.interval = Some(self.interval.clone()),
        }
        s.tokens.append(&mut self.tokens);
        if !self.per_msg.is_empty() {
            s.per_msg.clone_from(&self.per_msg);
        }
        drop(s);
        total.lock().expect("total hist").add(&self.interval).expect("same bounds");
        self.interval.reset();
    }

    fn set_timer(&mut self, i: usize, at: u64) {
        let d = &mut self.devs[i];
        d.timer_gen = d.timer_gen.wrapping_add(1);
        self.timers.push(Reverse((at, i, d.timer_gen)));
    }

    fn enqueue(&mut self, i: usize) {
        self.devs[i].st = St::Queued;
        self.queue.push_back(i);
    }

    fn on_timers(&mut self, now: u64) {
        while let Some(&Reverse((at, i, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.devs[i].timer_gen != gen {
                continue;
            }
            match self.devs[i].st {
                St::Idle => self.enqueue(i),
                St::Connecting | St::Handshake => {
                    self.c.handshake_timeouts += 1;
                    self.close(i, Why::Timeout);
                }
                St::Ready => {
                    let d = &mut self.devs[i];
                    wire::heartbeat(self.cfg.target, &mut d.wbuf);
                    let hb = d.hb_ns;
                    self.flush(i);
                    if self.devs[i].st == St::Ready {
                        self.set_timer(i, now + hb);
                    }
                }
                St::Queued | St::Parked => {}
            }
        }
    }

    fn start_queued(&mut self) {
        while self.pending < self.cfg.max_pending {
            let Some(i) = self.queue.pop_front() else { break };
            if self.devs[i].st != St::Queued {
                continue;
            }
            self.connect(i);
        }
    }

    fn connect(&mut self, i: usize) {
        self.c.connect_attempts += 1;
        if self.c.first_attempt_ns == 0 {
            self.c.first_attempt_ns = now_ns();
        }
        let idx = self.devs[i].idx;
        let addr = self.cfg.addrs[idx as usize % self.cfg.addrs.len()];
        match open_socket(source_addr(self.cfg.worker, idx as usize), addr) {
            Ok(mut s) => {
                if let Err(e) =
                    self.poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                {
                    eprintln!("register: {e}");
                    self.c.connect_failed += 1;
                    self.backoff(i);
                    return;
                }
                let d = &mut self.devs[i];
                d.sock = Some(s);
                d.st = St::Connecting;
                d.writable_interest = true;
                d.ws = WireState { topic_mode: self.cfg.topic.is_some(), ..WireState::default() };
                d.rbuf.clear();
                d.wbuf.clear();
                self.pending += 1;
                self.c.connected += 1;
                let deadline = now_ns() + self.cfg.handshake_timeout_ms * MS;
                self.set_timer(i, deadline);
            }
            Err(_) => {
                self.c.connect_failed += 1;
                self.backoff(i);
            }
        }
    }

    /// Schedules a reconnect after an exponential, jittered delay.
    fn backoff(&mut self, i: usize) {
        let d = &mut self.devs[i];
        d.failures = d.failures.saturating_add(1);
        let base = (self.cfg.backoff_min_ms << d.failures.min(16)).min(self.cfg.backoff_max_ms).max(1);
        let delay = base / 2 + self.rng.below(base);
        self.devs[i].st = St::Idle;
        self.set_timer(i, now_ns() + delay * MS);
    }

    fn on_event(&mut self, i: usize) {
        if i >= self.devs.len() || self.devs[i].sock.is_none() {
            return;
        }
        if self.devs[i].st == St::Connecting {
            let s = self.devs[i].sock.as_ref().expect("socket");
            match s.take_error() {
                Ok(None) => {}
                _ => return self.close(i, Why::ConnectFailed),
            }
            match s.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(_) => return self.close(i, Why::ConnectFailed),
            }
            let d = &mut self.devs[i];
            d.st = St::Handshake;
            let secret = device_secret(self.cfg.seed, d.idx);
            let ctx = DevCtx {
                idx: d.idx,
                app: &self.cfg.app,
                secret: &secret,
                keepalive_s: self.cfg.keepalive_s,
                topic_mode: self.cfg.topic.is_some(),
            };
            wire::hello(self.cfg.target, &ctx, &mut d.wbuf);
        }
        if let Some(why) = self.read(i) {
            return self.close(i, why);
        }
        self.flush(i);
    }

    /// Reads what is there and handles every whole frame; `Some` means close.
    fn read(&mut self, i: usize) -> Option<Why> {
        let mut eof = false;
        loop {
            let d = &mut self.devs[i];
            let s = d.sock.as_mut()?;
            match s.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => d.rbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if would_block(&e) => break,
                Err(e) if interrupted(&e) => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let target = self.cfg.target;
        let now = now_ns();
        let mut rbuf = std::mem::take(&mut self.devs[i].rbuf);
        let mut wbuf = std::mem::take(&mut self.devs[i].wbuf);
        let mut ws = self.devs[i].ws;
        let mut events: Vec<Ev> = Vec::new();
        let res = wire::on_bytes(target, &mut ws, &rbuf, &mut wbuf, &mut |ev| events.push(Ev::from(ev)));
        let d = &mut self.devs[i];
        d.ws = ws;
        d.wbuf = wbuf;
        let mut close = None;
        match res {
            Ok(n) => {
                rbuf.drain(..n);
            }
            Err(e) => {
                if self.c.proto_errors < 5 {
                    eprintln!("device {}: {e}", d.idx);
                }
                self.c.proto_errors += 1;
                close = Some(Why::Proto);
            }
        }
        self.devs[i].rbuf = rbuf;
        for ev in events {
            if let Some(w) = self.on_dev_event(i, ev, now) {
                close = close.or(Some(w));
            }
        }
        if close.is_none() && eof {
            close = Some(if self.devs[i].st == St::Ready { Why::Eof } else { Why::ConnectFailed });
        }
        close
    }

    fn on_dev_event(&mut self, i: usize, ev: Ev, now: u64) -> Option<Why> {
        match ev {
            Ev::Registered { heartbeat_s, token, missed } => {
                let d = &mut self.devs[i];
                if d.st != St::Handshake {
                    return Some(Why::Proto);
                }
                d.st = St::Ready;
                d.failures = 0;
                d.epoch += 1;
                if heartbeat_s > 0 {
                    d.hb_ns = heartbeat_s as u64 * 1000 * MS;
                }
                if let Some(t) = token {
                    if d.token.as_ref() != Some(&t) {
                        if d.token.is_some() {
                            // Another gateway key: pushes to the old token now fail with bad_token.
                            self.c.token_changed += 1;
                        }
                        d.token = Some(t.clone());
                        self.tokens.push((d.idx, t));
                    }
                }
                if d.storm_pending {
                    d.storm_pending = false;
                    self.c.storm_registered += 1;
                    self.c.storm_last_ns = now;
                }
                let hb = d.hb_ns;
                self.pending -= 1;
                self.c.registered += 1;
                self.c.registrations += 1;
                self.c.missed += missed as u64;
                self.c.last_registered_ns = now;
                // Stagger the first heartbeat so a burst of connects does not become a burst of PINGs.
                let first = hb / 2 + self.rng.below(hb / 2);
                self.set_timer(i, now + first);
                None
            }
            Ev::Notify { msg_id, payload } => {
                self.c.received += 1;
                let d = &mut self.devs[i];
                let Some((ts, dev, seq)) = payload else {
                    self.c.foreign += 1;
                    return None;
                };
                if dev != d.idx && dev != BROADCAST_DEV {
                    self.c.misrouted += 1;
                }
                let key = msg_id.unwrap_or(seq);
                let epoch = d.epoch;
                match d.seen.entry(key) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(epoch);
                        d.fp.add(key);
                        self.c.unique += 1;
                        self.c.last_delivery_ns = now;
                        record(&mut self.interval, now.saturating_sub(ts) / 1000);
                        if dev == BROADCAST_DEV {
                            let m = self.per_msg.entry(seq).or_default();
                            m.0 += 1;
                            m.1 = m.1.max(now.saturating_sub(ts));
                        }
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        if *o.get() == epoch {
                            self.c.duplicated += 1;
                        } else {
                            self.c.redelivered += 1;
                            o.insert(epoch);
                        }
                    }
                }
                None
            }
            Ev::Pong => None,
            Ev::Subscribed { ok } => {
                let d = &mut self.devs[i];
                if !ok {
                    self.c.sub_failed += 1;
                } else if !d.subscribed {
                    d.subscribed = true;
                    self.c.subscribed += 1;
                }
                None
            }
            Ev::GoAway { reason, reconnect_ms } => {
                self.c.goaway[(reason as usize).min(5)] += 1;
                Some(Why::GoAway(reason, reconnect_ms))
            }
        }
    }

    /// Writes what is buffered and keeps the WRITABLE interest in step with it.
    fn flush(&mut self, i: usize) {
        let d = &mut self.devs[i];
        let Some(s) = d.sock.as_mut() else { return };
        let mut failed = false;
        while !d.wbuf.is_empty() && d.st != St::Connecting {
            match s.write(&d.wbuf) {
                Ok(n) => {
                    d.wbuf.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) if interrupted(&e) => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            let why = if d.st == St::Ready { Why::Eof } else { Why::ConnectFailed };
            return self.close(i, why);
        }
        let want = !d.wbuf.is_empty() || d.st == St::Connecting;
        if want != d.writable_interest {
            d.writable_interest = want;
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(s, Token(i), interest);
        }
    }

    fn close(&mut self, i: usize, why: Why) {
        let d = &mut self.devs[i];
        let Some(mut s) = d.sock.take() else { return };
        let _ = self.poll.registry().deregister(&mut s);
        drop(s);
        self.c.connected -= 1;
        let was = d.st;
        if was == St::Ready {
            self.c.registered -= 1;
        } else {
            self.pending -= 1;
        }
        d.wbuf = Vec::new();
        d.rbuf = Vec::new();
        match why {
            Why::ConnectFailed => self.c.connect_failed += 1,
            Why::Eof if was == St::Ready => self.c.closed_by_server += 1,
            Why::Eof => self.c.connect_failed += 1,
            Why::Proto => {}
            Why::Timeout | Why::GoAway(..) | Why::Purpose => {}
        }
        if self.parked_all {
            self.devs[i].st = St::Parked;
            return;
        }
        match why {
            Why::Purpose => {
                self.devs[i].st = St::Idle;
                let delay = self.cfg.backoff_min_ms / 2 + self.rng.below(self.cfg.backoff_min_ms.max(1));
                self.set_timer(i, now_ns() + delay * MS);
            }
            Why::GoAway(2, _) => self.devs[i].st = St::Parked, // replaced: do not fight the newer connection
            Why::GoAway(_, ms) if ms > 0 => {
                self.devs[i].st = St::Idle;
                let delay = ms as u64 + self.rng.below(ms as u64 / 2 + 1);
                self.set_timer(i, now_ns() + delay * MS);
            }
            _ => self.backoff(i),
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Storm => {
                self.parked_all = false;
                for i in 0..self.devs.len() {
                    self.devs[i].storm_pending = true;
                    if self.devs[i].sock.is_some() {
                        self.c.dropped_on_purpose += 1;
                        self.close(i, Why::Purpose);
                    }
                    // Reconnect at once: everyone joins the connect queue now.
                    if matches!(self.devs[i].st, St::Idle | St::Parked) {
                        self.devs[i].failures = 0;
                        self.enqueue(i);
                    }
                }
            }
            Cmd::Park => {
                self.parked_all = true;
                for i in 0..self.devs.len() {
                    if self.devs[i].sock.is_some() {
                        self.c.dropped_on_purpose += 1;
                        self.close(i, Why::Purpose);
                    }
                    self.devs[i].st = St::Parked;
                }
                self.queue.clear();
            }
            Cmd::Unpark => {
                self.parked_all = false;
                for i in 0..self.devs.len() {
                    if matches!(self.devs[i].st, St::Parked | St::Idle) {
                        self.devs[i].failures = 0;
                        self.enqueue(i);
                    }
                }
            }
            Cmd::Churn => self.churn_on = true,
            Cmd::Subscribe => {
                let Some(topic) = self.cfg.topic.clone() else { return };
                for i in 0..self.devs.len() {
                    if self.devs[i].st != St::Ready || self.devs[i].subscribed {
                        continue;
                    }
                    let d = &mut self.devs[i];
                    let before = d.wbuf.len();
                    wire::subscribe(self.cfg.target, &topic, &mut d.wbuf);
                    if d.wbuf.len() == before {
                        // Nothing to ask (pushgate's `~all`): the device is in the topic already.
                        d.subscribed = true;
                        self.c.subscribed += 1;
                    }
                    self.flush(i);
                }
            }
            Cmd::Stop => {}
        }
    }

    /// Drops random registered devices at the configured rate; they reconnect after a short backoff.
    fn on_churn(&mut self, elapsed_s: f64) {
        if !self.churn_on || self.cfg.churn_per_s <= 0.0 || self.parked_all {
            return;
        }
        self.churn_acc += self.cfg.churn_per_s * self.devs.len() as f64 * elapsed_s;
        while self.churn_acc >= 1.0 {
            self.churn_acc -= 1.0;
            let i = self.rng.below(self.devs.len() as u64) as usize;
            if self.devs[i].st == St::Ready {
                self.c.dropped_on_purpose += 1;
                self.close(i, Why::Purpose);
            }
        }
    }
}

/// A device event with its payload already decoded, so it outlives the read buffer.
enum Ev {
    Registered { heartbeat_s: u16, token: Option<String>, missed: u32 },
    Notify { msg_id: Option<u64>, payload: Option<(u64, u32, u64)> },
    Pong,
    GoAway { reason: u8, reconnect_ms: u32 },
    Subscribed { ok: bool },
}

impl From<DevEvent<'_>> for Ev {
    fn from(e: DevEvent<'_>) -> Ev {
        match e {
            DevEvent::Registered { heartbeat_s, token, missed } => {
                Ev::Registered { heartbeat_s, token: token.map(|t| t.to_hex()), missed }
            }
            DevEvent::Notify { msg_id, payload } => Ev::Notify { msg_id, payload: read_payload(payload) },
            DevEvent::Pong => Ev::Pong,
            DevEvent::GoAway { reason, reconnect_ms } => Ev::GoAway { reason, reconnect_ms },
            DevEvent::Subscribed { ok } => Ev::Subscribed { ok },
        }
    }
}

/// A non-blocking TCP socket bound to `src` and connecting to `dst`.
fn open_socket(src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    bind_no_port(&s);
    s.bind(&src.into())?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// IP_BIND_ADDRESS_NO_PORT: pick the source port at connect time, so ports are
/// unique per 4-tuple rather than per source address.
fn bind_no_port(s: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a valid int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
