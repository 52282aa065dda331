//! A worker process: runs device threads, reports JSON lines on stdout every
//! 200 ms, takes commands (storm, park, unpark, final) as lines on stdin.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::devices::{Cmd, DevConfig, DeviceThread, Shared};
use crate::stats::{new_hist, to_pairs, DevCounters, Fingerprint};
use crate::util::{now_ns, raise_nofile};

/// What the parent tells a worker on its command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub dev: DevConfig,
    pub first: u32,
    pub count: u32,
    pub threads: usize,
    /// The worker exits by itself after this long, whatever happens.
    pub max_secs: u64,
}

/// One line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Report {
    Tick {
        w: usize,
        at_ns: u64,
        c: DevCounters,
        hist: Vec<(u64, u64)>,
        tokens: Vec<(u32, String)>,
        /// Broadcast: (sequence, devices that got it, latest arrival after the send in ns), cumulative.
        #[serde(default)]
        per_msg: Vec<(u64, u64, u64)>,
    },
    Final {
        w: usize,
        c: DevCounters,
        hist: Vec<(u64, u64)>,
        fps: Vec<(u32, Fingerprint)>,
        nofile: u64,
    },
}

pub fn run(spec: WorkerSpec) -> std::io::Result<()> {
    let nofile = raise_nofile();
    if spec.count as u64 + 64 > nofile {
        eprintln!("worker {}: {} devices exceed the open-files limit {nofile}", spec.dev.worker, spec.count);
    }
    let total = Arc::new(Mutex::new(new_hist()));
    let mut handles = Vec::new();
    let per = spec.count.div_ceil(spec.threads.max(1) as u32);
    let mut first = spec.first;
    let end = spec.first + spec.count;
    while first < end {
        let n = per.min(end - first);
        let (thread, waker) = DeviceThread::new(spec.dev.clone(), first, n)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (sh, tot) = (shared.clone(), total.clone());
        let h = std::thread::Builder::new()
            .name(format!("dev-{first}"))
            .spawn(move || thread.run(rx, sh, tot))?;
        handles.push((h, tx, waker, shared));
        first += n;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = cmd_tx.send(None);
    });
    let deadline = now_ns() + spec.max_secs * 1_000_000_000;
    let w = spec.dev.worker;
    let mut out = std::io::stdout().lock();
    let mut next_tick = now_ns();
    loop {
        let mut finish = now_ns() > deadline;
        // Wait for a command until the next tick is due, so a storm starts when the parent says so.
        let wait = Duration::from_nanos(next_tick.saturating_sub(now_ns()));
        let first = cmd_rx.recv_timeout(wait).ok();
        for cmd in first.into_iter().chain(std::iter::from_fn(|| cmd_rx.try_recv().ok())) {
            let cmd = match cmd.as_deref().map(str::trim) {
                Some("storm") => Cmd::Storm,
                Some("park") => Cmd::Park,
                Some("unpark") => Cmd::Unpark,
                Some("churn") => Cmd::Churn,
                Some("subscribe") => Cmd::Subscribe,
                Some("final") | None => {
                    finish = true;
                    break;
                }
                Some(other) => {
                    eprintln!("worker {w}: unknown command {other:?}");
                    continue;
                }
            };
            for (_, tx, waker, _) in &handles {
                let _ = tx.send(cmd);
                let _ = waker.wake();
            }
        }
        if finish {
            break;
        }
        if now_ns() < next_tick {
            continue;
        }
        next_tick = now_ns() + 200_000_000;
        let mut c = DevCounters::default();
        let mut hist = new_hist();
        let mut tokens = Vec::new();
        let mut per_msg: HashMap<u64, (u64, u64)> = HashMap::new();
        for (_, _, _, shared) in &handles {
            let mut s = shared.lock().expect("shared stats");
            c.add(&s.counters);
            if let Some(h) = s.interval.take() {
                hist.add(&h).expect("same bounds");
            }
            tokens.append(&mut s.tokens);
            for (&seq, &(n, late)) in &s.per_msg {
                let m = per_msg.entry(seq).or_default();
                m.0 += n;
                m.1 = m.1.max(late);
            }
        }
        let per_msg = per_msg.into_iter().map(|(s, (n, l))| (s, n, l)).collect();
        let tick = Report::Tick { w, at_ns: now_ns(), c, hist: to_pairs(&hist), tokens, per_msg };
        let line = serde_json::to_string(&tick)?;
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let mut fps = Vec::new();
    let mut c = DevCounters::default();
    for (h, tx, waker, shared) in handles {
        let _ = tx.send(Cmd::Stop);
        let _ = waker.wake();
        fps.extend(h.join().unwrap_or_default());
        c.add(&shared.lock().expect("shared stats").counters);
    }
    let hist = to_pairs(&total.lock().expect("total hist"));
    writeln!(out, "{}", serde_json::to_string(&Report::Final { w, c, hist, fps, nofile })?)?;
    out.flush()
}
