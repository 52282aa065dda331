//! The end of a run: a summary table on stderr, one JSON object on stdout,
//! and a hand-written SVG of throughput and latency over time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::opts::RunOpts;
use crate::provider::ProvStats;
use crate::stats::DevCounters;

/// One point of the timeline, taken once a second.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub registered: u64,
    pub delivered_per_s: f64,
    pub accepted_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub target: &'static str,
    pub devices: u64,
    pub providers: usize,
    pub servers: usize,
    pub payload_bytes: usize,
    pub expiry_s: u32,
    pub connect_secs: Option<f64>,
    pub connect_per_sec: Option<f64>,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub handshake_timeouts: u64,
    pub closed_by_server: u64,
    pub proto_errors: u64,
    pub goaway: [u64; 6],
    pub missed_in_welcome: u64,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    pub server_rss_bytes_per_device: Option<f64>,
    /// Server RSS at the end of the run, after any pushing.
    pub server_rss_end: Option<u64>,
    pub push_secs: Option<f64>,
    /// CPU use while pushing, in percent of one core (the machine's cores are shared by both).
    pub server_cpu_pct: Option<f64>,
    pub harness_cpu_pct: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    pub status_counts: [u64; 10],
    pub unanswered: u64,
    pub accepted_per_sec: Option<f64>,
    pub delivered: u64,
    pub delivered_per_sec: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub lost: u64,
    /// Losses the protocol allows: expiry-0 pushes are at most once (protocol.md 10),
    /// so a connection the harness dropped on purpose may take some with it.
    pub loss_allowed: bool,
    pub duplicated: u64,
    pub redelivered: u64,
    pub unexpected: u64,
    pub misrouted: u64,
    pub mismatched_devices: u64,
    pub token_changed: u64,
    pub storm_recovery_ms: Option<f64>,
    pub drain_secs: Option<f64>,
    pub drain_per_sec: Option<f64>,
    pub provider_errors: u64,
    pub worker_failures: u64,
    /// Broadcast: seconds until every device was subscribed, and server RSS per subscription.
    pub subscribe_secs: Option<f64>,
    pub server_rss_subscribed: Option<u64>,
    pub server_rss_bytes_per_subscription: Option<f64>,
    /// Broadcast: per topic push, push to the last device's arrival (ms), over the pushes.
    pub bcast_messages: u64,
    pub bcast_incomplete: u64,
    pub bcast_to_last_p50_ms: Option<f64>,
    pub bcast_to_last_p99_ms: Option<f64>,
    pub bcast_to_last_max_ms: Option<f64>,
    /// Devices reached per second within one push: devices / median time to the last.
    pub bcast_fanout_per_sec: Option<f64>,
    /// Data directory growth over the connected pushes, per push: disk blocks and file sizes.
    pub stored_bytes_per_message: Option<f64>,
    pub stored_apparent_bytes_per_message: Option<f64>,
    /// Data directory growth (disk blocks) per push while every device was offline.
    pub stored_offline_bytes_per_message: Option<f64>,
    /// Broadcast catch-up: all devices offline, K pushes, all reconnect at once.
    pub catchup_messages: u64,
    pub catchup_secs: Option<f64>,
    pub catchup_per_sec: Option<f64>,
    pub catchup_registered_secs: Option<f64>,
    /// 1-minute load average at the start and end: the machine is shared, so a busy one shows here.
    pub loadavg_start: Option<f64>,
    pub loadavg_end: Option<f64>,
}

impl Summary {
    pub fn new(o: &RunOpts, servers: usize) -> Summary {
        Summary {
            scenario: o.scenario.name(),
            target: o.target.name(),
            devices: o.devices as u64,
            providers: o.provider_count(),
            servers,
            payload_bytes: o.payload,
            expiry_s: o.expiry_s(),
            loadavg_start: loadavg(),
            ..Summary::default()
        }
    }

    pub fn finish(&mut self, c: &DevCounters, p: &ProvStats, h: &Histogram<u64>, n: u64) {
        self.connect_per_sec = self.connect_secs.map(|s| n as f64 / s.max(1e-9));
        self.connect_attempts = c.connect_attempts;
        self.connect_failures = c.connect_failed;
        self.handshake_timeouts = c.handshake_timeouts;
        self.closed_by_server = c.closed_by_server;
        self.proto_errors = c.proto_errors;
        self.goaway = c.goaway;
        self.missed_in_welcome = c.missed;
        if let (Some(a), Some(b)) = (self.server_rss_after, self.server_rss_before) {
            self.server_rss_bytes_per_device = Some((a as f64 - b as f64) / n as f64);
        }
        self.sent = p.sent.load(Relaxed);
        self.accepted = p.accepted.load(Relaxed);
        for (d, s) in self.status_counts.iter_mut().zip(p.by_status.iter()) {
            *d = s.load(Relaxed);
        }
        self.unanswered = p.unanswered.load(Relaxed);
        self.provider_errors += p.errors.load(Relaxed);
        self.delivered = c.unique;
        if !h.is_empty() {
            self.p50_us = h.value_at_quantile(0.5);
            self.p99_us = h.value_at_quantile(0.99);
            self.p999_us = h.value_at_quantile(0.999);
            self.max_us = h.max();
        }
        self.duplicated = c.duplicated;
        self.redelivered = c.redelivered;
        self.misrouted = c.misrouted;
        self.token_changed = c.token_changed;
        self.loadavg_end = loadavg();
        self.loss_allowed = self.expiry_s == 0 && c.dropped_on_purpose > 0 && self.target == "pushgate";
    }
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.1}{unit}")).unwrap_or_else(|| "-".into())
}

pub fn print_table(s: &Summary) {
    let mb =
        |b: Option<u64>| b.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into());
    let statuses = s
        .status_counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| format!("{}={c}", pushgate::proto::Status(i as u8).name()))
        .collect::<Vec<_>>()
        .join(" ");
    let goaway = s
        .goaway
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| format!("{i}:{c}"))
        .collect::<Vec<_>>();
    let rows: Vec<(&str, String)> = vec![
        ("scenario / target", format!("{} / {}", s.scenario, s.target)),
        ("devices / providers", format!("{} / {}", s.devices, s.providers)),
        ("connect time", opt(s.connect_secs, " s")),
        ("connect rate", opt(s.connect_per_sec, " /s")),
        (
            "connect attempts / failures / timeouts",
            format!("{} / {} / {}", s.connect_attempts, s.connect_failures, s.handshake_timeouts),
        ),
        (
            "closed by server / proto errors / goaway",
            format!("{} / {} / {:?}", s.closed_by_server, s.proto_errors, goaway),
        ),
        (
            "server RSS before / connected / end",
            format!("{} / {} / {}", mb(s.server_rss_before), mb(s.server_rss_after), mb(s.server_rss_end)),
        ),
        ("server RSS per device", opt(s.server_rss_bytes_per_device, " B")),
        (
            "CPU while pushing: server / harness",
            format!("{} / {}", opt(s.server_cpu_pct, " %"), opt(s.harness_cpu_pct, " %")),
        ),
        ("pushes sent / accepted", format!("{} / {}", s.sent, s.accepted)),
        ("results", statuses),
        ("accepted rate", opt(s.accepted_per_sec, " /s")),
        ("delivered (unique)", s.delivered.to_string()),
        ("delivered rate", opt(s.delivered_per_sec, " /s")),
        (
            "latency p50 / p99 / p99.9 / max",
            format!("{} / {} / {} / {} us", s.p50_us, s.p99_us, s.p999_us, s.max_us),
        ),
        ("lost / duplicated / redelivered", format!("{} / {} / {}", s.lost, s.duplicated, s.redelivered)),
        (
            "unexpected / misrouted / unanswered",
            format!("{} / {} / {}", s.unexpected, s.misrouted, s.unanswered),
        ),
        ("storm recovery", opt(s.storm_recovery_ms, " ms")),
        ("offline drain", format!("{} in {}", opt(s.drain_per_sec, " /s"), opt(s.drain_secs, " s"))),
        ("missed (WELCOME) / token changed", format!("{} / {}", s.missed_in_welcome, s.token_changed)),
        (
            "broadcast: subscribe time / RSS per subscription",
            format!("{} / {}", opt(s.subscribe_secs, " s"), opt(s.server_rss_bytes_per_subscription, " B")),
        ),
        (
            "broadcast: push to last device p50 / p99 / max",
            format!(
                "{} / {} / {} ({} pushes, {} incomplete)",
                opt(s.bcast_to_last_p50_ms, " ms"),
                opt(s.bcast_to_last_p99_ms, " ms"),
                opt(s.bcast_to_last_max_ms, " ms"),
                s.bcast_messages,
                s.bcast_incomplete
            ),
        ),
        ("broadcast: fan-out rate", opt(s.bcast_fanout_per_sec, " devices/s")),
        (
            "broadcast: stored per push connected / offline",
            format!(
                "{} / {} (disk blocks)",
                opt(s.stored_bytes_per_message, " B"),
                opt(s.stored_offline_bytes_per_message, " B")
            ),
        ),
        (
            "broadcast: catch-up all / rate / re-registered",
            format!(
                "{} msgs in {} / {} / {}",
                s.catchup_messages,
                opt(s.catchup_secs, " s"),
                opt(s.catchup_per_sec, " /s"),
                opt(s.catchup_registered_secs, " s")
            ),
        ),
        ("load average start / end", format!("{} / {}", opt(s.loadavg_start, ""), opt(s.loadavg_end, ""))),
        ("provider errors / worker failures", format!("{} / {}", s.provider_errors, s.worker_failures)),
    ];
    eprintln!();
    for (k, v) in rows {
        if k.starts_with("broadcast") && s.scenario != "broadcast" {
            continue;
        }
        eprintln!("  {k:<42} {v}");
    }
    eprintln!();
}

pub fn json(s: &Summary) -> String {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        // The scalar the brief names, even when a phase did not run.
        m.entry("delivered_per_sec").and_modify(|x| {
            if x.is_null() {
                *x = 0.0.into()
            }
        });
    }
    v.to_string()
}

/// Three stacked panels: registered devices, throughput, latency; dashed lines mark phases.
pub fn svg(title: &str, tl: &[Sample], phases: &[(f64, &str)]) -> String {
    const W: f64 = 900.0;
    const PH: f64 = 200.0;
    const L: f64 = 80.0;
    const R: f64 = 20.0;
    let tmax = tl.last().map(|s| s.t).unwrap_or(1.0).max(1.0);
    let x_of = |t: f64| L + (W - L - R) * t / tmax;
    let mut out = String::new();
    let h = 50.0 + 3.0 * (PH + 50.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{L}" y="24" font-size="16">{}</text>"#, escape(title));
    type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&Sample) -> f64>);
    let panels: Vec<(&str, Vec<Series>)> = vec![
        ("registered devices", vec![("registered", "#555", Box::new(|s: &Sample| s.registered as f64))]),
        (
            "messages / s",
            vec![
                ("accepted", "#1f77b4", Box::new(|s: &Sample| s.accepted_per_s)),
                ("delivered", "#2ca02c", Box::new(|s: &Sample| s.delivered_per_s)),
            ],
        ),
        (
            "latency (ms)",
            vec![
                ("p50", "#ff7f0e", Box::new(|s: &Sample| s.p50_us as f64 / 1000.0)),
                ("p99", "#d62728", Box::new(|s: &Sample| s.p99_us as f64 / 1000.0)),
            ],
        ),
    ];
    for (pi, (name, series)) in panels.iter().enumerate() {
        let top = 50.0 + pi as f64 * (PH + 50.0);
        let bottom = top + PH;
        let ymax =
            tl.iter().flat_map(|s| series.iter().map(move |(_, _, f)| f(s))).fold(0.0f64, f64::max).max(1e-9)
                * 1.1;
        let _ = writeln!(
            out,
            r##"<rect x="{L}" y="{top}" width="{}" height="{PH}" fill="none" stroke="#999"/>"##,
            W - L - R
        );
        let _ = writeln!(out, r#"<text x="{L}" y="{}">{name}</text>"#, top - 6.0);
        for k in 0..=4 {
            let y = bottom - PH * k as f64 / 4.0;
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
                L - 6.0,
                y + 4.0,
                fmt_num(ymax * k as f64 / 4.0),
                W - R
            );
        }
        for k in 0..=5 {
            let x = L + (W - L - R) * k as f64 / 5.0;
            let t = tmax * k as f64 / 5.0;
            let label = if tmax >= 20.0 { format!("{t:.0}") } else { format!("{t:.1}") };
            let _ =
                writeln!(out, r#"<text x="{x}" y="{}" text-anchor="middle">{label}s</text>"#, bottom + 16.0);
        }
        for (t, name) in phases {
            let x = x_of(*t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#bbb" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#888" font-size="10">{name}</text>"##,
                x + 3.0,
                top + 12.0
            );
        }
        for (si, (label, color, f)) in series.iter().enumerate() {
            let pts: Vec<String> =
                tl.iter().map(|s| format!("{:.1},{:.1}", x_of(s.t), bottom - PH * f(s) / ymax)).collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
            let lx = W - R - 120.0 + si as f64 * 60.0;
            let _ = writeln!(out, r#"<text x="{lx}" y="{}" fill="{color}">{label}</text>"#, top - 6.0);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
