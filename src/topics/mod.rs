//! The node's topics: each topic's log of recent messages, stored once for
//! all its subscribers and shared by the shards (the topic's owner shard
//! appends, every shard reads for catch-up), and per-message delivery counts.
//!
//! Bounds: `topic_log_cap` messages per topic, `topic_log_bytes` of payload
//! and collapse ids over all topics (the oldest message of any topic goes
//! first), `topics_per_app` topics with a log per app. Expired messages are
//! never read and are swept.

pub mod metrics;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::LimitsConfig;
use crate::proto::topic::TOPIC_ID_BIT;
use crate::proto::Note;

pub use stats::TopicStats;

/// A topic: its app (this node's app index) and its name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TopicKey {
    pub app: u16,
    pub name: Box<[u8]>,
}

impl TopicKey {
    pub fn new(app: u16, name: &[u8]) -> TopicKey {
        TopicKey { app, name: name.into() }
    }

    pub fn is_broadcast(&self) -> bool {
        &*self.name == crate::proto::topic::BROADCAST.as_bytes()
    }
}

/// One topic message; in a log its expiry is never 0.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TopicMsg {
    pub id: u64,
    pub note: Note,
}

impl TopicMsg {
    fn bytes(&self) -> usize {
        self.note.payload.len() + self.note.collapse.len()
    }
}

/// Why a message was not added to its log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AppendError {
    /// A new topic, and its app has `topics_per_app` topics with a log.
    TopicLimit,
}

/// What a device reconnecting at `pos` is owed in one topic.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Backlog {
    /// Unexpired messages after the position.
    pub count: usize,
    /// Where the position moves if the catch-up cap skips the older ones
    /// (the id before the newest `cap`), else the position itself.
    pub skip_to: u64,
}

#[derive(Default)]
struct Inner {
    logs: HashMap<TopicKey, VecDeque<TopicMsg>>,
    topics_of_app: HashMap<u16, usize>,
    bytes: usize,
    /// Every logged message by id: the byte bound drops the lowest first.
    by_id: BTreeMap<u64, TopicKey>,
    by_expiry: BTreeSet<(u32, u64)>,
}

/// The topic logs of one node.
pub struct TopicLog {
    inner: RwLock<Inner>,
    cap: usize,
    max_bytes: usize,
    topics_per_app: usize,
    last_id: AtomicU64,
    stats: TopicStats,
    metrics: Arc<metrics::TopicMetrics>,
}

impl TopicLog {
    pub fn new(limits: &LimitsConfig, metrics: Arc<metrics::TopicMetrics>) -> TopicLog {
        TopicLog {
            metrics,
            inner: RwLock::default(),
            cap: limits.topic_log_cap.max(1),
            max_bytes: limits.topic_log_bytes,
            topics_per_app: limits.topics_per_app,
            last_id: AtomicU64::new(0),
            stats: TopicStats::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn gauge(&self, inner: &Inner) {
        self.metrics.log_messages.store(inner.by_id.len() as u64, Ordering::Relaxed);
        self.metrics.log_bytes.store(inner.bytes as u64, Ordering::Relaxed);
    }

    /// Starts counting a topic message's deliveries (TOPIC_STATS).
    pub fn open_stats(&self, id: u64) {
        self.stats.open(id);
    }

    /// Adds a shard's `(sent, acked)` counts per topic message.
    pub fn add_counts(&self, deltas: &HashMap<u64, (u64, u64)>) {
        self.stats.add(deltas);
        for (sent, acked) in deltas.values() {
            self.metrics.notifies.fetch_add(*sent, Ordering::Relaxed);
            self.metrics.acks.fetch_add(*acked, Ordering::Relaxed);
        }
    }

    /// Adds another node's counts (its own metrics count them there).
    pub fn add_remote_counts(&self, deltas: &HashMap<u64, (u64, u64)>) {
        self.stats.add(deltas);
    }

    /// `(sent, acked)` of a recent topic message.
    pub fn counts(&self, id: u64) -> Option<(u64, u64)> {
        self.stats.get(id)
    }

    /// A fresh topic message id: bit 62 set, above every id given out or
    /// loaded, and at least the clock in ms shifted by 16 (so ids keep growing
    /// across restarts, like direct ones).
    pub fn next_id(&self, unix_ms: u64) -> u64 {
        let floor = (unix_ms << 16) & !TOPIC_ID_BIT;
        let prev = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(last.max(floor) + 1))
            .unwrap_or_else(|v| v);
        let id = prev.max(floor) + 1;
        assert!(id < TOPIC_ID_BIT, "topic ids ran out of their 62 bits");
        id | TOPIC_ID_BIT
    }

    /// Adds `msg` at the tail of its topic's log (ids grow within a topic).
    /// What the collapse id, the per-topic cap and the byte bound removed, of
    /// any topic, is appended to `removed` so the store can delete it too.
    pub fn append(
        &self,
        key: &TopicKey,
        msg: TopicMsg,
        removed: &mut Vec<(TopicKey, u64)>,
    ) -> Result<(), AppendError> {
        self.append_with(key, msg, true, removed)
    }

    /// [`TopicLog::append`] without the topics-per-app bound: a message the
    /// cluster's stream already accepted (checked by the node that took it).
    pub fn append_unlimited(&self, key: &TopicKey, msg: TopicMsg, removed: &mut Vec<(TopicKey, u64)>) {
        let _ = self.append_with(key, msg, false, removed);
    }

    /// Whether a message for `key` would be within the topics-per-app bound.
    pub fn can_log(&self, key: &TopicKey) -> bool {
        let g = self.read();
        g.logs.contains_key(key) || g.topics_of_app.get(&key.app).copied().unwrap_or(0) < self.topics_per_app
    }

    fn append_with(
        &self,
        key: &TopicKey,
        msg: TopicMsg,
        limit: bool,
        removed: &mut Vec<(TopicKey, u64)>,
    ) -> Result<(), AppendError> {
        debug_assert!(msg.note.expiry != 0, "expiry-0 topic messages are not logged");
        self.last_id.fetch_max(msg.id & !TOPIC_ID_BIT, Ordering::AcqRel);
        let mut g = self.write();
        let inner = &mut *g;
        if !inner.logs.contains_key(key) {
            let n = inner.topics_of_app.entry(key.app).or_default();
            if limit && *n >= self.topics_per_app {
                return Err(AppendError::TopicLimit);
            }
            *n += 1;
            inner.logs.insert(key.clone(), VecDeque::new());
        }
        let Some(log) = inner.logs.get_mut(key) else { unreachable!("inserted above") };
        assert!(log.back().is_none_or(|m| m.id < msg.id), "topic ids grow within a topic");
        if !msg.note.collapse.is_empty() {
            if let Some(i) = log.iter().position(|m| m.note.collapse == msg.note.collapse) {
                if let Some(old) = log.remove(i) {
                    forget(inner, &old);
                    removed.push((key.clone(), old.id));
                }
            }
        }
        while let Some(log) = inner.logs.get_mut(key).filter(|l| l.len() >= self.cap) {
            let Some(old) = log.pop_front() else { break };
            forget(inner, &old);
            removed.push((key.clone(), old.id));
        }
        inner.bytes += msg.bytes();
        inner.by_id.insert(msg.id, key.clone());
        inner.by_expiry.insert((msg.note.expiry, msg.id));
        if let Some(log) = inner.logs.get_mut(key) {
            log.push_back(msg);
        }
        while inner.bytes > self.max_bytes {
            let Some((&id, k)) = inner.by_id.iter().next() else { break };
            let k = k.clone();
            take(inner, &k, id);
            removed.push((k, id));
        }
        self.gauge(inner);
        Ok(())
    }

    /// Takes message `id` out of its topic's log (its store write failed).
    pub fn remove(&self, key: &TopicKey, id: u64) {
        let mut g = self.write();
        take(&mut g, key, id);
        self.gauge(&g);
    }

    /// The newest id in the topic's log, or 0.
    pub fn newest(&self, key: &TopicKey) -> u64 {
        self.read().logs.get(key).and_then(|l| l.back()).map_or(0, |m| m.id)
    }

    /// Whether the topic has messages in its log.
    pub fn has_log(&self, key: &TopicKey) -> bool {
        self.read().logs.get(key).is_some_and(|l| !l.is_empty())
    }

    /// What a device at `pos` is owed, with at most `cap` sent.
    pub fn backlog(&self, key: &TopicKey, pos: u64, now_unix: u64, cap: usize) -> Backlog {
        let g = self.read();
        let Some(log) = g.logs.get(key) else { return Backlog { count: 0, skip_to: pos } };
        let owed: Vec<u64> = log.iter().filter(|m| m.id > pos && live(m, now_unix)).map(|m| m.id).collect();
        let skip_to = match owed.len().checked_sub(cap) {
            Some(skip) if skip > 0 => owed[skip - 1],
            _ => pos,
        };
        Backlog { count: owed.len(), skip_to }
    }

    /// Appends to `out`, oldest first, up to `max` unexpired messages after `after`.
    /// Returns whether that was all of them.
    pub fn read_after(
        &self,
        key: &TopicKey,
        after: u64,
        now_unix: u64,
        max: usize,
        out: &mut Vec<TopicMsg>,
    ) -> bool {
        let g = self.read();
        let Some(log) = g.logs.get(key) else { return true };
        let start = log.partition_point(|m| m.id <= after);
        let mut iter = log.range(start..).filter(|m| live(m, now_unix));
        for m in iter.by_ref().take(max) {
            out.push(m.clone());
        }
        iter.next().is_none()
    }

    /// Removes messages of the topics `mine` picks that expired before
    /// `now_unix`, appending them to `removed`.
    pub fn sweep(&self, now_unix: u64, mine: impl Fn(&TopicKey) -> bool, removed: &mut Vec<(TopicKey, u64)>) {
        let mut g = self.write();
        let inner = &mut *g;
        let expired: Vec<(u32, u64)> =
            inner.by_expiry.iter().take_while(|(expiry, _)| u64::from(*expiry) < now_unix).copied().collect();
        for (expiry, id) in expired {
            let Some(k) = inner.by_id.get(&id).cloned() else {
                inner.by_expiry.remove(&(expiry, id));
                continue;
            };
            if mine(&k) {
                take(inner, &k, id);
                removed.push((k, id));
            }
        }
        self.gauge(inner);
    }

    /// Messages and payload bytes held, over all topics.
    pub fn size(&self) -> (usize, usize) {
        let g = self.read();
        (g.by_id.len(), g.bytes)
    }
}

fn live(m: &TopicMsg, now_unix: u64) -> bool {
    u64::from(m.note.expiry) >= now_unix
}

/// Drops the indexes of a message already taken out of its log.
fn forget(inner: &mut Inner, m: &TopicMsg) {
    inner.bytes -= m.bytes();
    inner.by_id.remove(&m.id);
    inner.by_expiry.remove(&(m.note.expiry, m.id));
}

/// Takes message `id` out of topic `k`'s log, dropping the topic once empty.
fn take(inner: &mut Inner, k: &TopicKey, id: u64) {
    let Some(log) = inner.logs.get_mut(k) else {
        inner.by_id.remove(&id);
        return;
    };
    let Ok(i) = log.binary_search_by_key(&id, |m| m.id) else {
        inner.by_id.remove(&id);
        return;
    };
    let m = log.remove(i);
    let empty = log.is_empty();
    if let Some(m) = m {
        forget(inner, &m);
    }
    if empty {
        inner.logs.remove(k);
        if let Some(n) = inner.topics_of_app.get_mut(&k.app) {
            *n -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
