//! The topic families on /metrics: log size, fan-out writes and ACKs.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Node-wide topic counters, written by the shards and the topic log.
#[derive(Default)]
pub struct TopicMetrics {
    pub log_messages: AtomicU64,
    pub log_bytes: AtomicU64,
    pub notifies: AtomicU64,
    pub acks: AtomicU64,
}

impl TopicMetrics {
    pub fn render_into(&self, out: &mut String) {
        let families: [(&str, &str, &str, &AtomicU64); 4] = [
            (
                "pushgate_topic_log_messages",
                "gauge",
                "Topic messages in the node's topic logs.",
                &self.log_messages,
            ),
            (
                "pushgate_topic_log_bytes",
                "gauge",
                "Payload and collapse bytes in the node's topic logs.",
                &self.log_bytes,
            ),
            (
                "pushgate_topic_notifies_total",
                "counter",
                "TOPIC_NOTIFY frames written to devices.",
                &self.notifies,
            ),
            ("pushgate_topic_acks_total", "counter", "Topic messages ACKed by devices.", &self.acks),
        ];
        for (name, kind, help, v) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
        }
    }
}
