//! What a shard keeps for topics: each connected device's positions and
//! topic messages in flight, the index of local subscribers per topic, and
//! delivery counts not yet added to the node's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::topics::TopicKey;

/// The slot of an expiry-0 topic message in flight: no subscription's position waits for it.
pub const NO_SLOT: u32 = 0;

/// One topic of one connected device.
pub struct Sub {
    /// Shared by every device of the shard in the topic (`ShardTopics::intern`).
    pub name: Arc<[u8]>,
    /// Tells this subscription from a later one to the same topic.
    pub slot: u32,
    /// The last topic message the device is done with.
    pub pos: u64,
    /// The position the store has; behind `pos` until the next flush.
    pub stored: u64,
    /// The last topic message written to this connection.
    pub sent: u64,
    /// The log holds messages after `sent` that are still to be written
    /// (catch-up, or a fan-out that found the window or the outbox full).
    pub behind: bool,
}

/// A connected device's topics; allocated only for a device that has any.
#[derive(Default)]
pub struct DeviceTopics {
    pub subs: Vec<Sub>,
    /// Topic messages written and not ACKed: `(msg_id, slot)`.
    pub inflight: Vec<(u64, u32)>,
    next_slot: u32,
    /// In the shard's list of devices whose positions are ahead of the store.
    pub queued: bool,
}

impl DeviceTopics {
    pub fn add(&mut self, name: Arc<[u8]>, pos: u64, behind: bool) -> &mut Sub {
        self.next_slot += 1;
        if self.subs.capacity() == 0 {
            // Most devices are in one topic (or only the broadcast): no spare room.
            self.subs.reserve_exact(1);
        }
        self.subs.push(Sub { name, slot: self.next_slot, pos, stored: pos, sent: pos, behind });
        let last = self.subs.len() - 1;
        &mut self.subs[last]
    }

    pub fn find(&mut self, name: &[u8]) -> Option<&mut Sub> {
        self.subs.iter_mut().find(|s| &*s.name == name)
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| &*s.name != name);
        self.subs.shrink_to_fit();
        before != self.subs.len()
    }

    /// Subscriptions counted against `topics_per_device` (the broadcast topic is not one).
    pub fn subscribed(&self) -> usize {
        crate::proto::topic::subscribed(self.subs.iter().map(|s| &*s.name))
    }

    /// Forgets an ACKed topic message; the subscription's new position if it moved.
    pub fn on_acked(&mut self, msg_id: u64) -> Option<(usize, u64)> {
        let i = self.inflight.iter().position(|&(id, _)| id == msg_id)?;
        let (_, slot) = self.inflight.swap_remove(i);
        if self.inflight.is_empty() {
            self.inflight = Vec::new(); // an idle device keeps no spare room
        }
        let si = self.subs.iter().position(|s| s.slot == slot)?;
        let oldest = self.inflight.iter().filter(|&&(_, s)| s == slot).map(|&(id, _)| id).min();
        let s = &mut self.subs[si];
        // Done with everything before the oldest still in flight, or with all that was written.
        let pos = oldest.map_or(s.sent, |o| o - 1);
        (pos > s.pos).then(|| {
            s.pos = pos;
            (si, pos)
        })
    }
}

/// A shard's topic state.
#[derive(Default)]
pub struct ShardTopics {
    /// Connected subscribers of this shard per topic (the broadcast topic is
    /// not indexed: every device of the app is in it).
    pub index: HashMap<TopicKey, HashSet<u32>>,
    /// `(sent, acked)` per topic message since the last flush to the node's counts.
    pub deltas: HashMap<u64, (u64, u64)>,
    /// Cluster: the same counts, not yet sent to the other nodes.
    pub remote_deltas: HashMap<u64, (u64, u64)>,
    /// One copy of each topic name the shard's devices are in.
    names: HashSet<Arc<[u8]>>,
    /// Devices whose positions moved since the last flush (`DeviceTopics::queued`).
    pub dirty: Vec<u32>,
}

impl ShardTopics {
    pub fn join(&mut self, key: TopicKey, idx: u32) {
        if !key.is_broadcast() {
            self.index.entry(key).or_default().insert(idx);
        }
    }

    pub fn leave(&mut self, key: &TopicKey, idx: u32) {
        if let Some(set) = self.index.get_mut(key) {
            set.remove(&idx);
            if set.is_empty() {
                self.index.remove(key);
            }
        }
    }

    /// The shard's copy of `name`, shared by its devices' subscriptions.
    pub fn intern(&mut self, name: &[u8]) -> Arc<[u8]> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<[u8]> = name.into();
        self.names.insert(n.clone());
        n
    }

    /// Forgets the names no device holds any more (every 10 s).
    pub fn shrink(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.names.shrink_to_fit();
        self.deltas.shrink_to_fit();
        self.index.shrink_to_fit();
    }

    pub fn count_sent(&mut self, id: u64) {
        self.deltas.entry(id).or_default().0 += 1;
    }

    pub fn count_acked(&mut self, id: u64) {
        self.deltas.entry(id).or_default().1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_stops_below_the_oldest_unacked() {
        let mut t = DeviceTopics::default();
        let slot = t.add(b"news"[..].into(), 10, false).slot;
        t.subs[0].sent = 30;
        t.inflight = vec![(20, slot), (25, slot), (30, slot)];
        assert_eq!(t.on_acked(25), Some((0, 19)), "past what came before 20, which is still owed");
        assert_eq!(t.on_acked(20), Some((0, 29)), "done up to the one before 30");
        assert_eq!(t.on_acked(30), Some((0, 30)));
        assert_eq!(t.on_acked(30), None, "not in flight any more");
        t.inflight.push((40, slot + 7));
        assert_eq!(t.on_acked(40), None, "an unsubscribed topic's message moves nothing");
    }
}
