//! The fail-over scenarios of the cluster end-to-end tests: devices and
//! providers through HAProxy under steady load while a gateway node or a NATS
//! server is killed with SIGKILL; what each RESULT promised, checked against
//! what arrived.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate::proto::{Status, Token};

use crate::common::{secret, wait_until};
use crate::harness::Cluster;
use crate::load::{self, Device, Plan, ProviderRun, Sent, Verdict, Via};

/// `n` devices through HAProxy, each with its own secret, all online.
pub fn devices(c: &Cluster, label: &str, n: usize, reconnect: bool) -> Vec<Device> {
    let devs: Vec<Device> = (0..n)
        .map(|i| {
            let s = secret(&format!("{label}-{i}"));
            let t = c.token(&s);
            Device::start(Via::Balancer(c.devices_addr()), s, t, reconnect)
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || devs.iter().all(|d| d.online())),
        "{} of {n} devices online after 20 s\n{}",
        devs.iter().filter(|d| d.online()).count(),
        c.logs()
    );
    devs
}

/// Runs `providers` providers through HAProxy with `plan`, calling `during`
/// meanwhile; they stop when `during` returns (or, with rounds, when those
/// are done). Returns every push and every provider's record.
pub fn run_load(
    c: &mut Cluster,
    devs: &[Device],
    providers: usize,
    plan: Plan,
    during: impl FnOnce(&mut Cluster),
) -> (Vec<Sent>, Vec<ProviderRun>) {
    let tokens: Arc<Vec<Token>> = Arc::new(devs.iter().map(|d| d.token).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..providers)
        .map(|i| load::start_provider(i, c.providers_addr(), tokens.clone(), plan, stop.clone()))
        .collect();
    during(c);
    if plan.rounds.is_none() {
        stop.store(true, Ordering::Relaxed);
    }
    let runs: Vec<ProviderRun> = handles.into_iter().map(|h| h.join().expect("provider thread")).collect();
    let sent = runs.iter().flat_map(|r| r.sent.iter().cloned()).collect();
    (sent, runs)
}

/// A fail-over run, finished: every push, what arrived, and the verdicts.
pub struct Run {
    pub sent: Vec<Sent>,
    pub runs: Vec<ProviderRun>,
    pub devs: Vec<Device>,
    pub plan: Plan,
    /// Over every device.
    pub all: Verdict,
    /// Over the devices that kept their first connection (never moved node).
    pub stayed: Verdict,
    pub moved: usize,
    /// Whether every accepted push arrived within the wait after the load.
    pub arrived: bool,
    pub summary: String,
}

impl Run {
    fn finish(sent: Vec<Sent>, runs: Vec<ProviderRun>, devs: Vec<Device>, plan: Plan, note: &str) -> Run {
        let arrived = load::wait_arrivals(&sent, &devs, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let all = load::verify(&sent, &devs, |_| true);
        let once: Vec<bool> = devs.iter().map(|d| d.log.lock().unwrap().welcomes == 1).collect();
        let stayed = load::verify(&sent, &devs, |d| once[d]);
        let moved = once.iter().filter(|o| !**o).count();
        let logins: Vec<u32> = runs.iter().map(|r| r.logins).collect();
        let v = &all;
        let summary = format!(
            "{note}; statuses {:?}; {} accepted and arrived; {} unanswered (connection lost; {} of them \
             arrived); {} repeated NOTIFYs; {} arrivals with a lower msg_id than an earlier one; slowest \
             RESULT {:?}; provider logins {logins:?}; {moved} of {} devices reconnected",
            v.statuses,
            v.accepted,
            v.unknown,
            v.unknown_arrived,
            v.repeats,
            v.disorder.len(),
            v.max_latency,
            devs.len()
        );
        eprintln!("{summary}");
        Run { sent, runs, devs, plan, all, stayed, moved, arrived, summary }
    }

    /// Nothing hung, every status is one a fail-over may give, and pushes
    /// were accepted again at the end.
    pub fn assert_answered_in_time(&self) {
        let hangs: Vec<&String> = self.runs.iter().flat_map(|r| &r.hangs).collect();
        assert!(
            hangs.is_empty(),
            "every push answered within {:?}: {hangs:?}\n{}",
            self.plan.hang,
            self.summary
        );
        assert!(self.all.max_latency <= self.plan.hang, "{}", self.summary);
        let undefined: Vec<&String> = self
            .all
            .statuses
            .keys()
            // `store_failed`: the engine could not store it (its stream leader was moving).
            .filter(|s| !["delivered", "queued", "unavailable", "store_failed"].contains(&s.as_str()))
            .collect();
        assert!(
            undefined.is_empty(),
            "only accepted, `unavailable` or `store_failed` during a fail-over: {}",
            self.summary
        );
        // After the fail-over the cluster serves again: the last second's pushes are accepted.
        let end = self.sent.iter().map(|s| s.at).max().expect("pushes were sent");
        let last: Vec<&Sent> =
            self.sent.iter().filter(|s| end.duration_since(s.at) < Duration::from_secs(1)).collect();
        let ok = last
            .iter()
            .filter(|s| s.answer.is_some_and(|a| matches!(a.status, Status::DELIVERED | Status::QUEUED)))
            .count();
        assert!(
            ok * 10 >= last.len() * 9,
            "{ok} of the last second's {} pushes accepted: {}",
            last.len(),
            self.summary
        );
    }
}

/// The load of the fail-over tests: steady, stored pushes (an hour's expiry).
pub fn plan(c: &Cluster) -> Plan {
    Plan {
        rounds: None,
        rate: 100,
        window: 16,
        ttl_s: 3600,
        // A route lookup and a forward each end by the engine's deadline.
        hang: c.request_timeout * 3 + Duration::from_secs(2),
    }
}

/// `n` devices and 6 providers through HAProxy; 2 s into the load gateway
/// `victim` is killed (SIGKILL); the load goes on until its devices are back
/// on the other nodes, and 3 s more.
pub fn gateway_kill(c: &mut Cluster, n: usize, victim: usize) -> Run {
    let devs = devices(c, "kill-gw", n, true);
    let per_node = c.devices_per_node();
    assert!(per_node.iter().all(|&k| k > 0), "devices on every node: {per_node:?}");
    let plan = plan(c);
    let mut back_in = None;
    let (sent, runs) = run_load(c, &devs, 6, plan, |c| {
        std::thread::sleep(Duration::from_secs(2));
        c.kill_gateway(victim);
        let tk = Instant::now();
        // Its devices reconnect through HAProxy to the other two.
        if wait_until(Duration::from_secs(20), || c.devices_per_node().iter().sum::<usize>() == n) {
            back_in = Some(tk.elapsed());
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let now = c.devices_per_node();
    let Some(back_in) = back_in else {
        panic!(
            "the devices did not all reconnect within 20 s: {now:?} (before the kill {per_node:?})\n{}",
            c.logs()
        )
    };
    assert_eq!(now[victim], 0);
    let note = format!(
        "kill -9 of {}: devices {per_node:?} before, {now:?} after, all back in {back_in:?}",
        c.gateways[victim].name
    );
    Run::finish(sent, runs, devs, plan, &note)
}

/// `n` devices and 6 providers through HAProxy; 2 s into the load NATS
/// server n1 (every gateway's first, so all lose their connection at once)
/// is killed (SIGKILL), restarted 5 s later, and the load goes on 4 s more.
pub fn nats_kill(c: &mut Cluster, n: usize) -> Run {
    let devs = devices(c, "kill-nats", n, true);
    let plan = plan(c);
    let leader = c.nats.meta_leader().unwrap_or_default();
    let (sent, runs) = run_load(c, &devs, 6, plan, |c| {
        std::thread::sleep(Duration::from_secs(2));
        c.nats.kill(0);
        std::thread::sleep(Duration::from_secs(5));
        c.nats.restart(0);
        std::thread::sleep(Duration::from_secs(4));
    });
    let note = format!("kill -9 of n1 (the meta leader was {leader}), restart 5 s later");
    Run::finish(sent, runs, devs, plan, &note)
}

/// After a failed check: connects each device that misses accepted
/// notifications straight to each node in turn (a killed one restarted
/// first) and counts what each node's local store still held for it.
pub fn where_are_the_missing(c: &mut Cluster, run: &mut Run, killed: Option<usize>) -> String {
    load::stop_all(&mut run.devs);
    if let Some(k) = killed {
        c.restart_gateway(k);
    }
    let devs = &run.devs;
    let have: Vec<HashSet<Vec<u8>>> =
        devs.iter().map(|d| d.notes().into_iter().map(|(_, p)| p).collect()).collect();
    let mut missing: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for s in &run.sent {
        if s.answer.is_some_and(|a| matches!(a.status, Status::DELIVERED | Status::QUEUED))
            && !have[s.device].contains(&s.payload)
        {
            missing.entry(s.device).or_default().push(s.payload.clone());
        }
    }
    let total: usize = missing.values().map(|v| v.len()).sum();
    let mut found_where = Vec::new();
    let mut found_all = HashSet::new();
    for (k, g) in c.gateways.iter().enumerate() {
        let (ids, mut probes): (Vec<usize>, Vec<Device>) = missing
            .keys()
            .map(|&d| (d, Device::start(Via::Direct(g.device), devs[d].secret.clone(), devs[d].token, false)))
            .unzip();
        std::thread::sleep(Duration::from_millis(1500));
        load::stop_all(&mut probes);
        let mut found = 0;
        for (d, p) in ids.into_iter().zip(probes) {
            for (_, payload) in p.notes() {
                if missing[&d].contains(&payload) && found_all.insert(payload) {
                    found += 1;
                }
            }
        }
        let restarted = if Some(k) == killed { " (restarted)" } else { "" };
        found_where.push(format!("{}{restarted}: {found}", g.name));
    }
    format!(
        "{total} accepted notifications never reached their device ({} devices); connected straight \
         to each node afterwards, the devices found them in that node's local store: {} (nowhere: {}); \
         gateway log lines \"storing .. pushes here\" (a forward met no_responders): {:?}, \
         forwards answered `unavailable` by cause (outcome unknown): {:?}",
        missing.len(),
        found_where.join(", "),
        total - found_all.len(),
        c.count_in_logs("pushes here"),
        ["timeout", "unavailable", "bad_reply", "stopped"]
            .map(|cause| (cause, c.count_in_logs(&format!("failed ({cause}): answered unavailable")))),
    )
}
