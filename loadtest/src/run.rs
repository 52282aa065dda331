//! The parent process: spawns device workers, runs providers, drives a
//! scenario through its phases and checks that every accepted message arrived.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use pushgate::proto::Token;

use crate::devices::DevConfig;
use crate::opts::{RunOpts, Scenario};
use crate::provider::{self, ProvConfig, ProvStats, Targets};
use crate::report::{self, Sample, Summary};
use crate::stats::{add_pairs, new_hist, DevCounters, Fingerprint};
use crate::util::{cpu_secs, now_ns, raise_nofile, rss_bytes};
use crate::wire::Target;
use crate::worker::{Report, WorkerSpec};

const SEC: u64 = 1_000_000_000;

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

/// Everything the parent knows while a run goes on.
pub(crate) struct State {
    pub(crate) n: u64,
    start_ns: u64,
    pub(crate) deadline_ns: u64,
    workers: Vec<Worker>,
    rx: Receiver<Report>,
    latest: HashMap<usize, DevCounters>,
    finals: HashMap<usize, (DevCounters, Vec<(u32, Fingerprint)>)>,
    total_hist: Histogram<u64>,
    sec_hist: Histogram<u64>,
    /// Per gateway: the devices providers may push to.
    targets: Vec<Targets>,
    /// Where each device's token sits in its gateway's target list.
    token_pos: HashMap<u32, usize>,
    pub(crate) prov_stats: Arc<ProvStats>,
    timeline: Vec<Sample>,
    /// When each phase began, seconds from the start, for the plot.
    phases: Vec<(f64, &'static str)>,
    last_sample_ns: u64,
    last_unique: u64,
    last_accepted: u64,
    pub(crate) phase: &'static str,
    /// Broadcast: each worker's latest (sequence, devices, latest arrival ns).
    pub(crate) per_msg: HashMap<usize, Vec<(u64, u64, u64)>>,
}

impl State {
    pub(crate) fn counters(&self) -> DevCounters {
        let mut c = DevCounters::default();
        for v in self.latest.values() {
            c.add(v);
        }
        c
    }

    pub(crate) fn send(&mut self, cmd: &str) {
        for w in &mut self.workers {
            let _ = writeln!(w.stdin, "{cmd}");
            let _ = w.stdin.flush();
        }
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Tick { w, c, hist, tokens, per_msg, .. } => {
                self.latest.insert(w, c);
                if !per_msg.is_empty() {
                    self.per_msg.insert(w, per_msg);
                }
                add_pairs(&mut self.sec_hist, &hist);
                if !tokens.is_empty() {
                    let gws = self.targets.len();
                    for (idx, hex) in tokens {
                        if let Some(t) = Token::from_hex(&hex) {
                            let mut list = self.targets[idx as usize % gws].write().expect("targets");
                            match self.token_pos.get(&idx) {
                                Some(&pos) => list[pos].1 = t,
                                None => {
                                    self.token_pos.insert(idx, list.len());
                                    list.push((idx, t));
                                }
                            }
                        }
                    }
                }
            }
            Report::Final { w, c, hist, fps, nofile } => {
                if nofile < 1024 {
                    eprintln!("worker {w}: open-files limit only {nofile}");
                }
                self.latest.insert(w, c);
                add_pairs(&mut self.total_hist, &hist);
                self.finals.insert(w, (c, fps));
            }
        }
    }

    /// Takes reports until `done` holds or `secs` pass; prints progress once a second.
    pub(crate) fn pump(&mut self, secs: f64, done: impl Fn(&State) -> bool) -> bool {
        if self.phases.last().map(|p| p.1) != Some(self.phase) {
            self.phases.push(((now_ns() - self.start_ns) as f64 / 1e9, self.phase));
        }
        let until = (now_ns() + (secs * 1e9) as u64).min(self.deadline_ns);
        loop {
            if done(self) {
                return true;
            }
            let now = now_ns();
            if now >= until {
                return false;
            }
            if let Ok(r) = self.rx.recv_timeout(Duration::from_millis(50)) {
                self.on_report(r);
                while let Ok(r) = self.rx.try_recv() {
                    self.on_report(r);
                }
            }
            if now_ns() - self.last_sample_ns >= SEC {
                self.sample();
            }
        }
    }

    fn sample(&mut self) {
        let now = now_ns();
        let dt = (now - self.last_sample_ns) as f64 / 1e9;
        self.last_sample_ns = now;
        let c = self.counters();
        let accepted = self.prov_stats.accepted.load(Relaxed);
        let h = &self.sec_hist;
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        let s = Sample {
            t: (now - self.start_ns) as f64 / 1e9,
            registered: c.registered,
            delivered_per_s: (c.unique - self.last_unique.min(c.unique)) as f64 / dt,
            accepted_per_s: (accepted - self.last_accepted.min(accepted)) as f64 / dt,
            p50_us: q(0.5),
            p99_us: q(0.99),
        };
        self.last_unique = c.unique;
        self.last_accepted = accepted;
        self.sec_hist.reset();
        eprintln!(
            "[{:6.1}s {:<10}] conn {:>6} reg {:>6} fail {:>4} | accepted/s {:>8.0} delivered/s {:>8.0} | p50 {:>7}us p99 {:>8}us | dup {} redeliv {}",
            s.t,
            self.phase,
            c.connected,
            c.registered,
            c.connect_failed + c.handshake_timeouts,
            s.accepted_per_s,
            s.delivered_per_s,
            s.p50_us,
            s.p99_us,
            c.duplicated,
            c.redelivered
        );
        self.timeline.push(s);
    }

    /// Writes every device's token to `path` (whole or not at all: written aside, then renamed),
    /// once the workers have reported them all (at most 5 s after registration).
    fn write_tokens(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let n = self.n as usize;
        self.pump(5.0, |s| s.token_pos.len() >= n);
        let mut text = String::new();
        for list in &self.targets {
            for (_, t) in list.read().expect("targets").iter() {
                text.push_str(&t.to_hex());
                text.push('\n');
            }
        }
        let aside = path.with_extension("partial");
        std::fs::write(&aside, text)?;
        std::fs::rename(&aside, path)
    }

    /// Waits until every device is registered; returns the seconds it took from `since`.
    fn wait_registered(&mut self, since: u64, what: &'static str) -> Option<f64> {
        self.phase = what;
        let n = self.n;
        let limit = (60.0 + self.n as f64 / 200.0).min(600.0);
        if self.pump(limit, |s| s.counters().registered >= n) {
            let c = self.counters();
            let from = if c.first_attempt_ns > 0 { c.first_attempt_ns.max(since) } else { since };
            Some((c.last_registered_ns.max(from) - from) as f64 / 1e9)
        } else {
            None
        }
    }
}

fn spawn_workers(o: &RunOpts, seed: u64) -> std::io::Result<(Vec<Worker>, Receiver<Report>)> {
    let nofile = raise_nofile();
    // Leave room for the worker's own files (poll, pipes, libraries).
    let cap = (nofile.saturating_sub(200)).max(100) as u32;
    let mut count = o.workers.max(o.devices.div_ceil(cap) as usize).max(1);
    if o.workers == 0 && o.devices >= 1000 {
        count = count.max(2);
    }
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel();
    let per = o.devices.div_ceil(count as u32);
    let mut workers = Vec::new();
    let mut first = 0;
    for w in 0..count {
        let n = per.min(o.devices - first);
        if n == 0 {
            break;
        }
        let spec = WorkerSpec {
            dev: DevConfig {
                target: o.target,
                addrs: o.device_addrs(),
                app: o.app.clone(),
                seed,
                worker: w,
                keepalive_s: o.keepalive,
                max_pending: o.max_pending,
                handshake_timeout_ms: o.handshake_timeout_ms,
                backoff_min_ms: o.backoff_min_ms,
                backoff_max_ms: o.backoff_max_ms,
                churn_per_s: o.churn,
                start_parked: false,
                topic: (o.scenario == Scenario::Broadcast).then(|| o.topic.clone()),
            },
            first,
            count: n,
            threads: o.threads,
            max_secs: o.max_secs + 60,
        };
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(&spec).map_err(std::io::Error::other)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Report>(&line) {
                    Ok(r) => {
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("worker {w}: bad report: {e}"),
                }
            }
        });
        workers.push(Worker { child, stdin });
        first += n;
    }
    Ok((workers, rx))
}

/// A server started by `--spawn`, stopped when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(cmd: &str, addr: SocketAddr) -> std::io::Result<Spawned> {
    // A server already there (a stale run, or someone's demo on 0.0.0.0 with
    // SO_REUSEPORT) would take our devices and hand out tokens of another key.
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        return Err(std::io::Error::other(format!(
            "something already listens on {addr}: stop it or use other ports"
        )));
    }
    // The server's stdout goes to our stderr: our stdout is the --json object alone.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .spawn()?;
    let mut s = Spawned(child);
    for _ in 0..300 {
        if let Ok(Some(status)) = s.0.try_wait() {
            return Err(std::io::Error::other(format!("server exited at start: {status}")));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(std::io::Error::other(format!("server did not listen on {addr} within 30 s")))
}

/// CPU seconds used so far by the server processes and by the harness (itself and its workers).
fn cpu_now(servers: &[u32], st: &State) -> (Option<f64>, Option<f64>) {
    let server = if servers.is_empty() { None } else { servers.iter().map(|p| cpu_secs(*p)).sum() };
    let mut harness = cpu_secs(std::process::id());
    for w in &st.workers {
        harness = harness.zip(cpu_secs(w.child.id())).map(|(a, b)| a + b);
    }
    (server, harness)
}

fn pct(a: Option<f64>, b: Option<f64>, secs: f64) -> Option<f64> {
    Some((b? - a?) / secs.max(1e-9) * 100.0)
}

pub(crate) fn rss_total(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_bytes(*p)).sum()
}

/// Starts `count` providers over the gateways; returns their join handles.
fn start_providers(
    o: &RunOpts,
    st: &State,
    count: usize,
    limit_total: Option<u64>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<std::io::Result<Vec<Fingerprint>>>>, String> {
    let paddrs = o.provider_addrs();
    let secret = o.secret_bytes()?;
    let mut hs = Vec::new();
    for i in 0..count {
        let gw = i % paddrs.len();
        let cfg = ProvConfig {
            target: o.target,
            addr: paddrs[gw],
            src: SocketAddr::from(([127, 9, (i / 250) as u8, (i % 250) as u8 + 1], 0)),
            app: o.app.clone(),
            secret: secret.clone(),
            rate: o.rate / count as f64,
            payload_size: o.payload,
            expiry_s: o.expiry_s(),
            window: o.window,
            round_robin: o.round_robin || limit_total.is_some(),
            limit: limit_total.map(|l| l / count as u64 + u64::from((i as u64) < l % count as u64)),
            id: i as u32,
            devices: o.devices as usize,
        };
        let (targets, stats, stop) = (st.targets[gw].clone(), st.prov_stats.clone(), stop.clone());
        let deadline = st.deadline_ns;
        hs.push(std::thread::spawn(move || provider::run(cfg, targets, stats, stop, deadline)));
    }
    Ok(hs)
}

fn join_providers(hs: Vec<JoinHandle<std::io::Result<Vec<Fingerprint>>>>, acc: &mut [Fingerprint]) -> u64 {
    let mut errors = 0;
    for h in hs {
        match h.join() {
            Ok(Ok(fps)) => {
                for (a, f) in acc.iter_mut().zip(fps) {
                    a.count += f.count;
                    a.sum = a.sum.wrapping_add(f.sum);
                }
            }
            Ok(Err(e)) => {
                eprintln!("provider failed: {e}");
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    errors
}

pub fn main(o: Box<RunOpts>) -> Result<i32, String> {
    let o = *o;
    if o.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    if o.target != Target::Pushgate && matches!(o.scenario, Scenario::Offline | Scenario::Durable) {
        return Err("offline and durable need stored notifications: pushgate only".into());
    }
    if o.target == Target::Nats && o.scenario == Scenario::Broadcast {
        return Err("broadcast needs acknowledged, queued topic messages: pushgate or mosquitto".into());
    }
    let _server = match &o.spawn {
        Some(cmd) => Some(spawn_server(cmd, o.device_addrs()[0]).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut pids = o.server_pid.clone();
    if let Some(s) = &_server {
        pids.push(s.0.id());
    }
    let rss_before = rss_total(&pids);
    let start = now_ns();
    let seed = crate::util::mix64(o.seed ^ start);
    let (workers, rx) = spawn_workers(&o, seed).map_err(|e| e.to_string())?;
    let gws = o.provider_addrs().len();
    let mut st = State {
        n: o.devices as u64,
        start_ns: start,
        deadline_ns: start + o.max_secs * SEC,
        workers,
        rx,
        latest: HashMap::new(),
        finals: HashMap::new(),
        total_hist: new_hist(),
        sec_hist: new_hist(),
        targets: (0..gws).map(|_| Arc::new(RwLock::new(Vec::new()))).collect(),
        token_pos: HashMap::new(),
        prov_stats: Arc::new(ProvStats::default()),
        timeline: Vec::new(),
        phases: Vec::new(),
        last_sample_ns: start,
        last_unique: 0,
        last_accepted: 0,
        phase: "connect",
        per_msg: HashMap::new(),
    };
    if o.target != Target::Pushgate {
        // Peers address devices by index, not by token.
        for i in 0..o.devices {
            st.targets[i as usize % gws].write().expect("targets").push((i, Token([0; 24])));
        }
    }
    let mut sum = Summary::new(&o, pids.len());
    sum.server_rss_before = rss_before;
    sum.connect_secs = st.wait_registered(start, "connect");
    if sum.connect_secs.is_none() {
        eprintln!("not every device registered in time: {} of {}", st.counters().registered, o.devices);
    }
    if let Some(path) = &o.tokens_out {
        st.write_tokens(path).map_err(|e| format!("--tokens-out {}: {e}", path.display()))?;
    }
    let mut acc = vec![Fingerprint::default(); o.devices as usize];
    let stop = Arc::new(AtomicBool::new(false));
    let providers = o.provider_count();
    match o.scenario {
        Scenario::Idle => {
            st.phase = "hold";
            st.pump(o.hold as f64, |_| false);
            sum.server_rss_after = rss_total(&pids);
        }
        Scenario::Throughput | Scenario::Durable => {
            sum.server_rss_after = rss_total(&pids);
            st.phase = "push";
            let t0 = now_ns();
            let u0 = st.counters().unique;
            let hs = start_providers(&o, &st, providers.max(gws), None, &stop)?;
            if o.churn > 0.0 {
                st.send("churn");
            }
            let cpu0 = cpu_now(&pids, &st);
            st.pump(o.duration as f64, |_| false);
            stop.store(true, Relaxed);
            let t1 = now_ns();
            let cpu1 = cpu_now(&pids, &st);
            let secs = (t1 - t0) as f64 / 1e9;
            sum.server_cpu_pct = pct(cpu0.0, cpu1.0, secs);
            sum.harness_cpu_pct = pct(cpu0.1, cpu1.1, secs);
            st.phase = "drain";
            sum.provider_errors += join_providers(hs, &mut acc);
            let accepted = st.prov_stats.accepted.load(Relaxed);
            st.pump(o.drain_secs as f64, |s| s.counters().unique >= accepted);
            let delivered = st.counters().unique - u0;
            let span = (st.counters().last_delivery_ns.max(t1) - t0) as f64 / 1e9;
            sum.push_secs = Some((t1 - t0) as f64 / 1e9);
            sum.delivered_per_sec = Some(delivered as f64 / span);
            sum.accepted_per_sec = Some(accepted as f64 / ((t1 - t0) as f64 / 1e9));
        }
        Scenario::Storm => {
            st.phase = "hold";
            st.pump(o.hold as f64, |_| false);
            sum.server_rss_after = rss_total(&pids);
            let hs = if providers > 0 {
                start_providers(&o, &st, providers.max(gws), None, &stop)?
            } else {
                vec![]
            };
            st.pump(1.0, |_| false);
            let t0 = now_ns();
            st.send("storm");
            st.phase = "storm";
            let n = st.n;
            let ok = st.pump((60.0 + n as f64 / 200.0).min(600.0), |s| s.counters().storm_registered >= n);
            if ok {
                sum.storm_recovery_ms = Some((st.counters().storm_last_ns.saturating_sub(t0)) as f64 / 1e6);
            } else {
                eprintln!("storm: only {} of {} devices registered again", st.counters().storm_registered, n);
            }
            st.phase = "after";
            st.pump(o.hold as f64, |_| false);
            stop.store(true, Relaxed);
            sum.provider_errors += join_providers(hs, &mut acc);
            let accepted = st.prov_stats.accepted.load(Relaxed);
            st.pump(o.drain_secs as f64, |s| s.counters().unique >= accepted);
        }
        Scenario::Broadcast => {
            sum.server_rss_after = rss_total(&pids);
            crate::broadcast::run(&o, &mut st, &mut sum, &mut acc, &pids)?;
        }
        Scenario::Offline => {
            sum.server_rss_after = rss_total(&pids);
            st.send("park");
            st.phase = "park";
            st.pump(30.0, |s| s.counters().connected == 0);
            st.pump(1.0, |_| false);
            st.phase = "push";
            let total = o.devices as u64 * o.per_device as u64;
            let hs = start_providers(&o, &st, providers.max(gws), Some(total), &stop)?;
            let t0 = now_ns();
            st.pump(o.max_secs as f64, |_| hs.iter().all(|h| h.is_finished()));
            sum.push_secs = Some((now_ns() - t0) as f64 / 1e9);
            sum.provider_errors += join_providers(hs, &mut acc);
            let accepted = st.prov_stats.accepted.load(Relaxed);
            sum.accepted_per_sec = Some(accepted as f64 / sum.push_secs.unwrap_or(1.0).max(1e-9));
            let u0 = st.counters().unique;
            st.phase = "drain";
            let t1 = now_ns();
            st.send("unpark");
            let limit = (60.0 + total as f64 / 1000.0).min(600.0);
            let drained =
                st.pump(limit, |s| s.counters().unique - u0 >= accepted && s.counters().registered >= s.n);
            let secs = (st.counters().last_delivery_ns.max(t1) - t1) as f64 / 1e9;
            sum.drain_secs = Some(secs);
            sum.drain_per_sec = Some((st.counters().unique - u0) as f64 / secs.max(1e-9));
            sum.delivered_per_sec = sum.drain_per_sec;
            if !drained {
                eprintln!("offline: drain incomplete after {limit:.0} s");
            }
        }
    }
    sum.server_rss_end = rss_total(&pids);
    st.phase = "final";
    st.send("final");
    let nw = st.workers.len();
    st.pump(60.0, |s| s.finals.len() >= nw);
    for w in &mut st.workers {
        let _ = w.child.wait();
    }
    if st.finals.len() < nw {
        eprintln!("only {} of {nw} workers sent their final report", st.finals.len());
        sum.worker_failures = (nw - st.finals.len()) as u64;
    }
    // Compare what providers were told was accepted with what devices got.
    let mut recv = vec![Fingerprint::default(); o.devices as usize];
    for (_, fps) in st.finals.values() {
        for (idx, f) in fps {
            if let Some(r) = recv.get_mut(*idx as usize) {
                *r = *f;
            }
        }
    }
    for (a, r) in acc.iter().zip(&recv) {
        if a != r {
            sum.mismatched_devices += 1;
            sum.lost += a.count.saturating_sub(r.count);
            sum.unexpected += r.count.saturating_sub(a.count);
            if a.count == r.count {
                // Same number, different ids: as many lost as surplus; count one of each at least.
                sum.lost += 1;
                sum.unexpected += 1;
            }
        }
    }
    sum.finish(&st.counters(), &st.prov_stats, &st.total_hist, st.n);
    report::print_table(&sum);
    if o.json {
        println!("{}", report::json(&sum));
    }
    if let Some(path) = &o.svg {
        let title = format!("{} {} — {} devices", sum.target, sum.scenario, o.devices);
        std::fs::write(path, report::svg(&title, &st.timeline, &st.phases))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    let failed = (sum.lost > 0 && !sum.loss_allowed) || sum.duplicated > 0 || sum.worker_failures > 0;
    Ok(if failed { 1 } else { 0 })
}
