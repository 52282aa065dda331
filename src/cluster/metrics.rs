//! Counters of the engine path (requests, errors, latency) in plain atomics,
//! for the lead to export next to the shard metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::EngineError;

/// What kind of engine operation a counter is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Claim = 0,
    Release = 1,
    Lookup = 2,
    /// A batch forwarded to another node.
    Forward = 3,
    /// A batch another node forwarded here, answered.
    Serve = 4,
    /// A replacement notice sent to the node whose claim this node replaced.
    Replaced = 5,
    /// A notification stored in the offline queue stream.
    QueuePublish = 6,
    /// A token's backlog read from the queue stream's leader.
    QueueFetch = 7,
    /// One stored notification deleted (acknowledged, collapsed, capped, expired).
    QueueDelete = 8,
    /// A token's whole queue purged (UNREGISTER).
    QueuePurge = 9,
    /// A tombstone written, deleted or listed.
    Tombstone = 10,
    /// Receipts handed to a node with a subscribed provider session of their app.
    Receipts = 11,
    /// A topic message stored in the topic stream (majority acknowledged).
    TopicPublish = 12,
    /// An expiry-0 topic message sent to every node (core NATS, not stored).
    TopicAnnounce = 13,
    /// Per-message delivery counts sent to the other nodes.
    TopicCounts = 14,
    /// The topic feed caught up with the stream as it was at start.
    TopicFeed = 15,
    /// A device's subscriptions read from their bucket.
    SubsGet = 16,
    /// A device's subscriptions changed by revision (read-modify-write).
    SubsUpdate = 17,
    /// A subscription change announced to every node.
    SubChange = 18,
}

pub const OPS: [Op; 19] = [
    Op::Claim,
    Op::Release,
    Op::Lookup,
    Op::Forward,
    Op::Serve,
    Op::Replaced,
    Op::QueuePublish,
    Op::QueueFetch,
    Op::QueueDelete,
    Op::QueuePurge,
    Op::Tombstone,
    Op::Receipts,
    Op::TopicPublish,
    Op::TopicAnnounce,
    Op::TopicCounts,
    Op::TopicFeed,
    Op::SubsGet,
    Op::SubsUpdate,
    Op::SubChange,
];

impl Op {
    pub fn name(self) -> &'static str {
        [
            "claim",
            "release",
            "lookup",
            "forward",
            "serve",
            "replaced",
            "queue_publish",
            "queue_fetch",
            "queue_delete",
            "queue_purge",
            "tombstone",
            "receipts",
            "topic_publish",
            "topic_announce",
            "topic_counts",
            "topic_feed",
            "subs_get",
            "subs_update",
            "sub_change",
        ][self as usize]
    }
}

/// Upper bounds (µs) of the latency buckets; the last bucket is everything above.
pub const LATENCY_BOUNDS_US: [u64; 7] = [250, 1_000, 4_000, 16_000, 64_000, 256_000, 1_024_000];

#[derive(Default)]
pub struct OpCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub latency_us_sum: AtomicU64,
    /// Completions (ok or failed) per latency bucket.
    pub latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

/// The engine's counters, shared by the engine thread and its callers.
#[derive(Default)]
pub struct EngineMetrics {
    pub ops: [OpCounters; OPS.len()],
    /// Failures by cause, over all operations.
    pub busy: AtomicU64,
    pub timeouts: AtomicU64,
    pub no_responders: AtomicU64,
    pub unavailable: AtomicU64,
    pub bad_reply: AtomicU64,
    pub stopped: AtomicU64,
    /// Pushes carried in forwarded batches, and answered for other nodes.
    pub pushes_forwarded: AtomicU64,
    pub pushes_served: AtomicU64,
    /// Fail-overs: pushes stored on this node because the node holding their
    /// device was gone, and pushes routed again because it no longer held it.
    pub failover_stored: AtomicU64,
    pub failover_rerouted: AtomicU64,
    /// Notifications stored in the offline queue stream, and read back by loads.
    pub queue_published: AtomicU64,
    pub queue_fetched: AtomicU64,
}

impl EngineMetrics {
    pub fn on_done(&self, op: Op, took: Duration, err: Option<EngineError>) {
        let c = &self.ops[op as usize];
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        c.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        let b = LATENCY_BOUNDS_US.iter().position(|&hi| us <= hi).unwrap_or(LATENCY_BOUNDS_US.len());
        c.latency[b].fetch_add(1, Ordering::Relaxed);
        let Some(e) = err else {
            c.ok.fetch_add(1, Ordering::Relaxed);
            return;
        };
        c.failed.fetch_add(1, Ordering::Relaxed);
        let cause = match e {
            EngineError::Busy => &self.busy,
            EngineError::Timeout => &self.timeouts,
            EngineError::NoResponders => &self.no_responders,
            EngineError::Unavailable => &self.unavailable,
            EngineError::BadReply => &self.bad_reply,
            EngineError::Stopped => &self.stopped,
        };
        cause.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ok(&self, op: Op) -> u64 {
        self.ops[op as usize].ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self, op: Op) -> u64 {
        self.ops[op as usize].failed.load(Ordering::Relaxed)
    }

    /// Appends the counters in the Prometheus text format, `pushgate_engine_*`,
    /// for the admin listener's /metrics.
    pub fn render_into(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ =
            writeln!(out, "# HELP pushgate_engine_ops_total Engine operations completed, by op and result.");
        let _ = writeln!(out, "# TYPE pushgate_engine_ops_total counter");
        for op in OPS {
            let c = &self.ops[op as usize];
            for (result, v) in [("ok", &c.ok), ("failed", &c.failed)] {
                let _ = writeln!(
                    out,
                    "pushgate_engine_ops_total{{op=\"{}\",result=\"{result}\"}} {}",
                    op.name(),
                    get(v)
                );
            }
        }
        let _ = writeln!(out, "# HELP pushgate_engine_errors_total Failed engine operations, by cause.");
        let _ = writeln!(out, "# TYPE pushgate_engine_errors_total counter");
        for (cause, v) in [
            ("busy", &self.busy),
            ("timeout", &self.timeouts),
            ("no_responders", &self.no_responders),
            ("unavailable", &self.unavailable),
            ("bad_reply", &self.bad_reply),
            ("stopped", &self.stopped),
        ] {
            let _ = writeln!(out, "pushgate_engine_errors_total{{cause=\"{cause}\"}} {}", get(v));
        }
        let _ = writeln!(
            out,
            "# HELP pushgate_engine_pushes_total Pushes forwarded to other nodes and served for them."
        );
        let _ = writeln!(out, "# TYPE pushgate_engine_pushes_total counter");
        let _ = writeln!(
            out,
            "pushgate_engine_pushes_total{{dir=\"forwarded\"}} {}",
            get(&self.pushes_forwarded)
        );
        let _ = writeln!(out, "pushgate_engine_pushes_total{{dir=\"served\"}} {}", get(&self.pushes_served));
        let _ = writeln!(
            out,
            "# HELP pushgate_engine_failovers_total Forwarded pushes whose node was gone (stored here) \
             or no longer held the device (routed again)."
        );
        let _ = writeln!(out, "# TYPE pushgate_engine_failovers_total counter");
        let _ = writeln!(
            out,
            "pushgate_engine_failovers_total{{kind=\"stored\"}} {}",
            get(&self.failover_stored)
        );
        let _ = writeln!(
            out,
            "pushgate_engine_failovers_total{{kind=\"rerouted\"}} {}",
            get(&self.failover_rerouted)
        );
        let _ = writeln!(
            out,
            "# HELP pushgate_engine_queue_messages_total Notifications stored in the offline queue stream and read back."
        );
        let _ = writeln!(out, "# TYPE pushgate_engine_queue_messages_total counter");
        for (dir, v) in [("published", &self.queue_published), ("fetched", &self.queue_fetched)] {
            let _ = writeln!(out, "pushgate_engine_queue_messages_total{{dir=\"{dir}\"}} {}", get(v));
        }
        let _ =
            writeln!(out, "# HELP pushgate_engine_latency_seconds Engine operation latency, queue included.");
        let _ = writeln!(out, "# TYPE pushgate_engine_latency_seconds histogram");
        for op in OPS {
            let c = &self.ops[op as usize];
            let mut cum = 0;
            for (i, hi) in LATENCY_BOUNDS_US.iter().enumerate() {
                cum += get(&c.latency[i]);
                let le = *hi as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "pushgate_engine_latency_seconds_bucket{{op=\"{}\",le=\"{le}\"}} {cum}",
                    op.name()
                );
            }
            cum += get(&c.latency[LATENCY_BOUNDS_US.len()]);
            let name = op.name();
            let _ =
                writeln!(out, "pushgate_engine_latency_seconds_bucket{{op=\"{name}\",le=\"+Inf\"}} {cum}");
            let sum = get(&c.latency_us_sum) as f64 / 1e6;
            let _ = writeln!(out, "pushgate_engine_latency_seconds_sum{{op=\"{name}\"}} {sum}");
            let _ = writeln!(out, "pushgate_engine_latency_seconds_count{{op=\"{name}\"}} {cum}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_land_in_their_bucket_and_cause() {
        let m = EngineMetrics::default();
        m.on_done(Op::Forward, Duration::from_micros(100), None);
        m.on_done(Op::Forward, Duration::from_secs(3), Some(EngineError::Timeout));
        let f = &m.ops[Op::Forward as usize];
        assert_eq!((m.ok(Op::Forward), m.failed(Op::Forward)), (1, 1));
        assert_eq!(f.latency[0].load(Ordering::Relaxed), 1);
        assert_eq!(f.latency[LATENCY_BOUNDS_US.len()].load(Ordering::Relaxed), 1);
        assert_eq!(m.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(m.ok(Op::Claim), 0);
        let mut text = String::new();
        m.render_into(&mut text);
        assert!(text.contains("pushgate_engine_ops_total{op=\"forward\",result=\"failed\"} 1"), "{text}");
        assert!(text.contains("pushgate_engine_errors_total{cause=\"timeout\"} 1"), "{text}");
        assert!(
            text.contains("pushgate_engine_latency_seconds_bucket{op=\"forward\",le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(text.contains("pushgate_engine_latency_seconds_count{op=\"forward\"} 2"), "{text}");
    }
}
