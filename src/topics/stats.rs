//! Per topic message delivery counts (TOPIC_STATS): NOTIFYs written and
//! ACKs taken, summed over the shards, for the most recent messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Topic messages whose counts are remembered; older ones are forgotten.
pub const STATS_KEPT: usize = 65_536;

#[derive(Default)]
struct Inner {
    counts: HashMap<u64, (u64, u64)>,
    order: VecDeque<u64>,
}

/// Counts of the node's recent topic messages.
#[derive(Default)]
pub struct TopicStats(Mutex<Inner>);

impl TopicStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting a new topic message, forgetting the oldest past [`STATS_KEPT`].
    pub fn open(&self, id: u64) {
        let mut g = self.lock();
        if g.counts.insert(id, (0, 0)).is_none() {
            g.order.push_back(id);
        }
        while g.order.len() > STATS_KEPT {
            if let Some(old) = g.order.pop_front() {
                g.counts.remove(&old);
            }
        }
    }

    /// Adds a shard's counts, `(id, sent, acked)`; ids no longer remembered are ignored.
    pub fn add(&self, deltas: &HashMap<u64, (u64, u64)>) {
        if deltas.is_empty() {
            return;
        }
        let mut g = self.lock();
        for (id, (sent, acked)) in deltas {
            if let Some(c) = g.counts.get_mut(id) {
                c.0 += sent;
                c.1 += acked;
            }
        }
    }

    /// `(sent, acked)` of a remembered message.
    pub fn get(&self, id: u64) -> Option<(u64, u64)> {
        self.lock().counts.get(&id).copied()
    }
}
