//! Who owns what, and how messages get there: the one owner rule for tokens
//! (and the hub rule for apps), and the per-destination batches a shard
//! sends at the end of its iteration (one channel send and at most one wake
//! per destination). Messages for this shard stay in a local queue.

use std::collections::VecDeque;

use super::msg::ShardMsg;
use super::ShardHandle;
use crate::metrics::ShardWriter;
use crate::proto::Token;

/// The hub rule: the shard of `shards` where `app`'s receipts meet its subscribers.
pub fn hub_of(app: u16, shards: usize) -> usize {
    usize::from(app) % shards.max(1)
}

pub struct Router {
    index: usize,
    outbound: Vec<Vec<ShardMsg>>,
    local: VecDeque<ShardMsg>,
}

impl Router {
    pub fn new(index: usize, shards: usize) -> Router {
        Router { index, outbound: (0..shards).map(|_| Vec::new()).collect(), local: VecDeque::new() }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn shards(&self) -> usize {
        self.outbound.len()
    }

    /// The shard that owns `token`: its queue, its connection, its tombstone.
    /// (`Token::shard` is the rule; the store applies it to its keys too.)
    pub fn owner(&self, token: &Token) -> usize {
        token.shard(self.shards())
    }

    /// The shard that gives a topic's messages their ids and logs them, so
    /// each topic's messages reach every shard in id order.
    pub fn topic_owner(&self, key: &crate::topics::TopicKey) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.shards().max(1) as u64) as usize
    }

    pub fn owns(&self, token: &Token) -> bool {
        self.owner(token) == self.index
    }

    /// The shard where `app`'s receipts meet its subscribers.
    pub fn hub(&self, app: u16) -> usize {
        hub_of(app, self.shards())
    }

    /// Sends `m` to shard `to`: queued locally for this shard, batched for the others.
    pub fn send(&mut self, to: usize, m: ShardMsg) {
        if to == self.index {
            self.local.push_back(m);
        } else {
            self.outbound[to].push(m);
        }
    }

    pub fn pop_local(&mut self) -> Option<ShardMsg> {
        self.local.pop_front()
    }

    pub fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// Hands each destination its batch.
    pub fn flush(&mut self, handles: &[ShardHandle], metrics: &ShardWriter) {
        for (to, out) in self.outbound.iter_mut().enumerate() {
            if !out.is_empty() {
                let batch = std::mem::take(out);
                metrics.on_channel_send(batch.len());
                handles[to].send(batch);
            }
        }
    }
}
