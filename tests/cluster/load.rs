//! Devices and providers for the cluster end-to-end tests, each on its own
//! thread: devices that ACK what they get and reconnect when their node goes,
//! providers that pipeline pushes (at most one unanswered per device, so a
//! device's pushes from one provider are accepted in the order sent) and
//! reconnect when theirs goes; and the check of what arrived against what
//! each RESULT promised.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pushgate::client::{ClientError, ProviderClient, PushRequest, Reply};
use pushgate::proto::frame::{split_frame, Hello, PROVIDER_MAX_BODY};
use pushgate::proto::{Frame, GoAwayReason, Status, Token};

use crate::common::{Got, Raw};
use crate::harness::{APP, APP_SECRET};

/// Heartbeat interval the devices ask for: longer than any test, so idle
/// devices are never timed out.
const KEEPALIVE_S: u16 = 600;

/// How a device or provider reaches the cluster.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// HAProxy's front port (it adds the PROXY v2 header).
    Balancer(SocketAddr),
    /// One gateway's port, with a PROXY v1 header of our own (the ports expect one).
    Direct(SocketAddr),
}

impl Via {
    fn connect(self) -> std::io::Result<Raw> {
        let addr = match self {
            Via::Balancer(a) | Via::Direct(a) => a,
        };
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        let mut raw = Raw::from_stream(s);
        if let Via::Direct(a) = self {
            raw.send_bytes(format!("PROXY TCP4 127.0.0.1 127.0.0.1 40000 {}\r\n", a.port()).as_bytes());
        }
        Ok(raw)
    }
}

fn encode(f: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// A provider connection straight to one gateway, logged in.
pub fn direct_provider(addr: SocketAddr) -> Raw {
    let mut p = Via::Direct(addr).connect().expect("connect to the gateway");
    p.login(APP, APP_SECRET);
    p
}

/// What one device saw, over all its connections.
#[derive(Default, Debug)]
pub struct DevLog {
    /// Every NOTIFY and TOPIC_NOTIFY as (msg_id, payload), repeats included, in arrival order.
    pub notes: Vec<(u64, Vec<u8>)>,
    pub welcomes: u32,
    /// The sum of every WELCOME's `missed`.
    pub missed: u32,
    /// Between a WELCOME and the end of that connection.
    pub online: bool,
    pub goaways: Vec<GoAwayReason>,
    /// Connection attempts that did not end in WELCOME.
    pub failed_connects: u32,
}

/// A device on its own thread.
pub struct Device {
    pub token: Token,
    pub secret: Vec<u8>,
    pub log: Arc<Mutex<DevLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    /// Connects through `via` and keeps ACKing. With `reconnect`, a closed
    /// connection (not one `replaced`) is opened again after 50 ms; without,
    /// the device has one session only.
    pub fn start(via: Via, secret: Vec<u8>, token: Token, reconnect: bool) -> Device {
        let log = Arc::new(Mutex::new(DevLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let kept = secret.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let again = session(via, &secret, &l, &s);
                if !again || !reconnect {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Device { token, secret: kept, log, stop, thread: Some(thread) }
    }

    pub fn online(&self) -> bool {
        self.log.lock().unwrap().online
    }

    /// Ends the device's thread (and its connection).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The distinct msg_ids per payload, and every arrival in order.
    pub fn notes(&self) -> Vec<(u64, Vec<u8>)> {
        self.log.lock().unwrap().notes.clone()
    }
}

impl Drop for Device {
    /// The thread sees the flag within 100 ms and closes the connection; not
    /// joined, so dropping many devices does not take 100 ms each.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Stops many devices at once (flags first, then the joins).
pub fn stop_all(devices: &mut [Device]) {
    for d in devices.iter() {
        d.stop.store(true, Ordering::Relaxed);
    }
    for d in devices.iter_mut() {
        d.stop();
    }
}

/// One connection of a device. Returns whether to connect again.
fn session(via: Via, secret: &[u8], log: &Mutex<DevLog>, stop: &AtomicBool) -> bool {
    let Ok(mut raw) = via.connect() else {
        log.lock().unwrap().failed_connects += 1;
        return true;
    };
    raw.send_bytes(&encode(&Frame::Hello(Hello {
        version: 1,
        keepalive_s: KEEPALIVE_S,
        app_id: APP,
        secret,
    })));
    let t0 = Instant::now();
    let mut welcomed = false;
    let end = |l: &mut DevLog, welcomed: bool| {
        l.online = false;
        if !welcomed {
            l.failed_connects += 1;
        }
    };
    loop {
        match raw.recv(Duration::from_millis(100)) {
            Got::Frame(b) => {
                let Ok(Some((f, _))) = split_frame(&b, PROVIDER_MAX_BODY) else { continue };
                let mut l = log.lock().unwrap();
                match Frame::parse(f) {
                    Ok(Frame::Welcome { missed, .. }) => {
                        welcomed = true;
                        l.welcomes += 1;
                        l.missed += missed;
                        l.online = true;
                    }
                    Ok(Frame::Notify { msg_id, payload, .. })
                    | Ok(Frame::TopicNotify { msg_id, payload, .. }) => {
                        l.notes.push((msg_id, payload.to_vec()));
                        drop(l);
                        raw.send_bytes(&encode(&Frame::Ack { msg_id }));
                    }
                    Ok(Frame::GoAway { reason, .. }) => {
                        l.goaways.push(reason);
                        end(&mut l, welcomed);
                        return reason != GoAwayReason::REPLACED;
                    }
                    Ok(Frame::Error { .. }) | Err(_) => {
                        end(&mut l, welcomed);
                        return true;
                    }
                    Ok(_) => {}
                }
            }
            Got::Closed => {
                end(&mut log.lock().unwrap(), welcomed);
                return true;
            }
            Got::Timeout => {
                if stop.load(Ordering::Relaxed) || (!welcomed && t0.elapsed() > Duration::from_secs(10)) {
                    end(&mut log.lock().unwrap(), welcomed);
                    return !stop.load(Ordering::Relaxed);
                }
            }
        }
    }
}

/// What the providers do.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Pushes per device per provider, then stop; None: until told to stop.
    pub rounds: Option<u32>,
    /// Pushes per second per provider (with a burst of `window`).
    pub rate: u32,
    /// Unanswered pushes per provider connection.
    pub window: usize,
    /// Expiry of every push, seconds from now (nonzero: they are stored).
    pub ttl_s: u32,
    /// A push unanswered this long counts as a hang; its connection is dropped.
    pub hang: Duration,
}

/// The RESULT of one push.
#[derive(Clone, Copy, Debug)]
pub struct Answered {
    pub status: Status,
    pub msg_id: u64,
    /// From sending the PUSH to reading its RESULT.
    pub after: Duration,
}

/// One push a provider sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub provider: usize,
    pub device: usize,
    /// The provider's count of pushes to this device before this one.
    pub seq: u32,
    pub payload: Vec<u8>,
    pub at: Instant,
    /// None: the connection ended first (outcome unknown, protocol.md 9.1).
    pub answer: Option<Answered>,
}

/// Everything one provider did.
#[derive(Default, Debug)]
pub struct ProviderRun {
    pub sent: Vec<Sent>,
    /// Logins (1 if the connection never broke).
    pub logins: u32,
    pub errors: Vec<String>,
    /// Pushes unanswered for longer than `Plan::hang`.
    pub hangs: Vec<String>,
}

/// Starts provider `id` pushing to `tokens` (device i has tokens[i]).
pub fn start_provider(
    id: usize,
    via: SocketAddr,
    tokens: Arc<Vec<Token>>,
    plan: Plan,
    stop: Arc<AtomicBool>,
) -> JoinHandle<ProviderRun> {
    std::thread::spawn(move || run_provider(id, via, &tokens, plan, &stop))
}

fn run_provider(id: usize, via: SocketAddr, tokens: &[Token], plan: Plan, stop: &AtomicBool) -> ProviderRun {
    let n = tokens.len();
    let mut out = ProviderRun::default();
    let mut seq = vec![0u32; n];
    let mut busy = vec![false; n];
    let mut in_flight: HashMap<u32, usize> = HashMap::new();
    let mut cursor = (id * 7919) % n.max(1);
    let mut conn: Option<ProviderClient> = None;
    let total = plan.rounds.map(|r| r as usize * n);
    let t0 = Instant::now();
    let lose = |conn: &mut Option<ProviderClient>,
                in_flight: &mut HashMap<u32, usize>,
                busy: &mut [bool],
                sent: &[Sent]| {
        *conn = None;
        for (_, i) in in_flight.drain() {
            busy[sent[i].device] = false;
        }
    };
    loop {
        let done = stop.load(Ordering::Relaxed) || total.is_some_and(|t| out.sent.len() >= t);
        if done && in_flight.is_empty() {
            break;
        }
        let Some(c) = conn.as_mut() else {
            if done {
                break;
            }
            match ProviderClient::connect(via, APP, APP_SECRET) {
                Ok(c) => {
                    out.logins += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    out.errors.push(format!("{:?}: connect: {e}", t0.elapsed()));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        };
        let allowed = (plan.rate as f64 * t0.elapsed().as_secs_f64()) as usize + plan.window;
        let mut broke = false;
        while !done && in_flight.len() < plan.window && out.sent.len() < allowed {
            let free = (0..n)
                .map(|k| (cursor + k) % n)
                .find(|&d| !busy[d] && plan.rounds.is_none_or(|r| seq[d] < r));
            let Some(d) = free else { break };
            cursor = (d + 1) % n;
            let payload = format!("p{id}-d{d}-s{}", seq[d]).into_bytes();
            let req = PushRequest::new(tokens[d], payload.clone()).with_ttl(plan.ttl_s);
            match c.send_push(&req) {
                Ok(req_id) => {
                    in_flight.insert(req_id, out.sent.len());
                    out.sent.push(Sent {
                        provider: id,
                        device: d,
                        seq: seq[d],
                        payload,
                        at: Instant::now(),
                        answer: None,
                    });
                    busy[d] = true;
                    seq[d] += 1;
                }
                Err(e) => {
                    out.errors.push(format!("{:?}: send: {e}", t0.elapsed()));
                    broke = true;
                    break;
                }
            }
        }
        if broke {
            lose(&mut conn, &mut in_flight, &mut busy, &out.sent);
            continue;
        }
        match c.recv_result(Some(Duration::from_millis(20))) {
            Ok(Some(Reply::Result(r))) => {
                if let Some(i) = in_flight.remove(&r.req_id) {
                    let s = &mut out.sent[i];
                    s.answer = Some(Answered { status: r.status, msg_id: r.msg_id, after: s.at.elapsed() });
                    busy[s.device] = false;
                }
            }
            Ok(Some(other)) => out.errors.push(format!("unexpected reply {other:?}")),
            Ok(None) => {
                let oldest = in_flight.values().map(|&i| out.sent[i].at).min();
                if let Some(at) = oldest.filter(|at| at.elapsed() > plan.hang) {
                    out.hangs.push(format!(
                        "{:?}: a push unanswered for {:?} ({} in flight)",
                        at.duration_since(t0),
                        at.elapsed(),
                        in_flight.len()
                    ));
                    lose(&mut conn, &mut in_flight, &mut busy, &out.sent);
                }
            }
            Err(e) => {
                if !matches!(e, ClientError::Closed | ClientError::GoAway { .. }) {
                    out.errors.push(format!("{:?}: recv: {e}", t0.elapsed()));
                }
                lose(&mut conn, &mut in_flight, &mut busy, &out.sent);
            }
        }
    }
    out
}

/// What arrived compared with what the RESULTs said.
#[derive(Default, Debug)]
pub struct Verdict {
    pub statuses: BTreeMap<String, usize>,
    pub accepted: usize,
    pub unknown: usize,
    pub unknown_arrived: usize,
    /// `delivered`/`queued` whose notification never arrived.
    pub missing: Vec<String>,
    /// Those of `missing` that were `delivered`.
    pub missing_delivered: Vec<String>,
    /// Refused (any other status) but arrived anyway.
    pub refused_arrived: Vec<String>,
    /// Arrived without its RESULT's msg_id (under another one only).
    pub wrong_ids: Vec<String>,
    /// Arrived under its RESULT's msg_id and under another one too, or (when
    /// `queued`) under another one so far: the fail-over duplicate
    /// protocol.md 10.3 item 3 allows (a forward whose answer was lost: the
    /// silent node's delivery, plus the copy the accepting node stored).
    pub two_ids: Vec<String>,
    /// A msg_id that arrived more than once.
    pub repeats: usize,
    /// Payloads nobody sent.
    pub strangers: Vec<String>,
    /// Per device: a later arrival with a lower msg_id, or a provider's
    /// pushes to it out of their order.
    pub disorder: Vec<String>,
    pub max_latency: Duration,
}

impl Verdict {
    /// Everything wrong, one line each (empty when all is well), without the ordering.
    pub fn losses_and_ghosts(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |what: &str, list: &[String]| {
            if !list.is_empty() {
                v.push(format!("{} {what}, e.g. {:?}", list.len(), &list[..list.len().min(5)]));
            }
        };
        add("accepted (delivered/queued) but never arrived", &self.missing);
        add("refused but arrived", &self.refused_arrived);
        add("arrived under the wrong msg_id", &self.wrong_ids);
        add("arrivals nobody sent", &self.strangers);
        v
    }
}

/// Whether every accepted push has arrived at its device.
pub fn all_accepted_arrived(sent: &[Sent], devices: &[Device]) -> bool {
    let have: Vec<HashSet<Vec<u8>>> = devices
        .iter()
        .map(|d| d.log.lock().unwrap().notes.iter().map(|(_, p)| p.clone()).collect())
        .collect();
    sent.iter()
        .filter(|s| s.answer.is_some_and(|a| matches!(a.status, Status::DELIVERED | Status::QUEUED)))
        .all(|s| have[s.device].contains(&s.payload))
}

/// Waits up to `timeout` for every accepted push to arrive.
pub fn wait_arrivals(sent: &[Sent], devices: &[Device], timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if all_accepted_arrived(sent, devices) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    all_accepted_arrived(sent, devices)
}

/// Compares the providers' records with the devices' logs, for the devices `keep` names.
pub fn verify(sent: &[Sent], devices: &[Device], keep: impl Fn(usize) -> bool) -> Verdict {
    let mut v = Verdict::default();
    let by_payload: HashMap<&[u8], &Sent> = sent.iter().map(|s| (s.payload.as_slice(), s)).collect();
    // Per device: payload -> distinct msg_ids it arrived under.
    let mut arrived: Vec<HashMap<Vec<u8>, Vec<u64>>> = Vec::new();
    for (d, dev) in devices.iter().enumerate() {
        let notes = if keep(d) { dev.notes() } else { Vec::new() };
        let mut m: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
        let mut seen_ids = HashSet::new();
        let mut last_id = 0u64;
        let mut last_seq: HashMap<usize, u32> = HashMap::new();
        for (id, p) in &notes {
            if !seen_ids.insert(*id) {
                v.repeats += 1;
                continue;
            }
            if *id <= last_id {
                v.disorder.push(format!("device {d}: msg_id {id} after {last_id}"));
            }
            last_id = last_id.max(*id);
            match by_payload.get(p.as_slice()) {
                Some(s) if s.device == d => {
                    if let Some(prev) = last_seq.insert(s.provider, s.seq) {
                        if prev >= s.seq {
                            v.disorder
                                .push(format!("device {d}: {} after seq {prev}", String::from_utf8_lossy(p)));
                        }
                    }
                }
                _ => v.strangers.push(format!("device {d}: {}", String::from_utf8_lossy(p))),
            }
            let ids = m.entry(p.clone()).or_default();
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        arrived.push(m);
    }
    for s in sent.iter().filter(|s| keep(s.device)) {
        let got = arrived[s.device].get(&s.payload);
        let name = String::from_utf8_lossy(&s.payload).into_owned();
        let Some(a) = s.answer else {
            v.unknown += 1;
            v.unknown_arrived += usize::from(got.is_some());
            continue;
        };
        *v.statuses.entry(a.status.to_string()).or_default() += 1;
        v.max_latency = v.max_latency.max(a.after);
        let accepted = matches!(a.status, Status::DELIVERED | Status::QUEUED);
        match (accepted, got) {
            (true, None) => {
                let line = format!("{name} ({}, msg_id {})", a.status, a.msg_id);
                if a.status == Status::DELIVERED {
                    v.missing_delivered.push(line.clone());
                }
                v.missing.push(line);
            }
            (true, Some(ids)) => {
                v.accepted += 1;
                if !ids.contains(&a.msg_id) && a.status != Status::QUEUED {
                    v.wrong_ids.push(format!("{name}: RESULT msg_id {}, arrived as {ids:?}", a.msg_id));
                } else if ids.len() > 1 || !ids.contains(&a.msg_id) {
                    // `queued` under another id: the silent node delivered it, and the
                    // copy stored by the accepting node comes on the next connection.
                    v.two_ids.push(format!("{name}: RESULT msg_id {}, arrived as {ids:?}", a.msg_id));
                }
            }
            // protocol.md 10.0 item 7: `store_failed` for a connected device
            // may follow a NOTIFY already written (not stored: now or never).
            (false, Some(_)) if a.status == Status::STORE_FAILED => {}
            (false, Some(ids)) => {
                v.refused_arrived.push(format!("{name} ({}, arrived as {ids:?})", a.status))
            }
            (false, None) => {}
        }
    }
    v
}
