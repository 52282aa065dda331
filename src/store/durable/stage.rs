//! The writes of one event-loop iteration, held in memory until `sync` commits
//! them as one fjall batch: per-append commits cost a journal lock, a seqno and
//! a rewrite of the shard counters each, which capped acceptance near 20 k/s.

use std::collections::HashMap;

use fjall::OwnedWriteBatch;

use super::codec::{self, ShardMeta};
use super::topics::LogWrite;
use super::DurableStore;
use crate::proto::Token;
use crate::store::{StoreError, StoredMsg};

/// Staged writes past which an append commits them without waiting for `sync`,
/// so a caller that never syncs still has bounded memory.
pub const STAGE_LIMIT: usize = 65_536;

/// What one token's operations since the last commit changed. Each key gets at
/// most one write here: a batch gives all its writes one seqno, so an insert and
/// a remove of the same key in one batch would have no defined order.
#[derive(Default)]
pub struct Staged {
    /// Appended messages not committed yet, in id order.
    pub added: Vec<StoredMsg>,
    /// Committed messages to delete, by id.
    pub removed: Vec<u64>,
    /// The missed count to write; `Some(0)` deletes it.
    pub missed: Option<u32>,
    /// A tombstone to write (`Some(value)`) or lift (`None`).
    pub tomb: Option<Option<Vec<u8>>>,
    /// Ids in `added` that `sync` leaves staged until `release` reaches them.
    pub held: Vec<u64>,
    /// Topic positions to write (`Some(pos)`) or delete (`None`), one per topic.
    pub subs: Vec<(Box<[u8]>, Option<u64>)>,
}

impl Staged {
    fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }
}

impl DurableStore {
    pub(super) fn stage_of(&mut self, token: &Token) -> &mut Staged {
        self.staged.entry(*token).or_default()
    }

    /// Deletes a waiting message: forgets it if it was staged, else stages its deletion.
    pub(super) fn stage_remove(&mut self, token: &Token, id: u64) {
        let s = self.staged.entry(*token).or_default();
        match s.added.iter().position(|m| m.msg_id == id) {
            Some(i) => {
                s.added.remove(i);
            }
            None => {
                s.removed.push(id);
                self.staged_ops += 1;
            }
        }
        self.counters.len = self.counters.len.saturating_sub(1);
    }

    /// Commits everything staged, and the shard counters, as one batch: visible
    /// to readers and in the kernel's hands, not yet synced to the disk.
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        self.commit_staged(false)
    }

    /// Commits what is staged except held messages `release` has not reached
    /// (`sync` uses this): they stay staged, visible to `pending`, and leave
    /// no write behind if an ack deletes them first.
    pub(super) fn commit_staged(&mut self, keep_held: bool) -> Result<(), StoreError> {
        if self.staged.is_empty() && self.topic_log.is_empty() && self.counters == self.committed {
            return Ok(());
        }
        let released = if keep_held { self.released } else { u64::MAX };
        let eng = &self.eng;
        let mut b: OwnedWriteBatch = eng.db.batch();
        let mut kept = 0u64;
        for (token, s) in self.staged.iter_mut() {
            let held = std::mem::take(&mut s.held);
            for m in std::mem::take(&mut s.added) {
                if m.msg_id > released && held.contains(&m.msg_id) {
                    s.held.push(m.msg_id);
                    s.added.push(m);
                } else {
                    b.insert(&eng.msgs, codec::msg_key(token, m.msg_id), codec::encode_msg(&m));
                }
            }
            kept += s.added.len() as u64;
            for id in s.removed.drain(..) {
                b.remove(&eng.msgs, codec::msg_key(token, id));
            }
            match s.missed.take() {
                Some(0) => b.remove(&eng.meta, codec::missed_key(token)),
                Some(n) => b.insert(&eng.meta, codec::missed_key(token), n.to_be_bytes()),
                None => {}
            }
            match s.tomb.take() {
                Some(Some(v)) => b.insert(&eng.meta, super::feedback::tomb_key(token), v),
                Some(None) => b.remove(&eng.meta, super::feedback::tomb_key(token)),
                None => {}
            }
            for (topic, pos) in s.subs.drain(..) {
                match pos {
                    Some(pos) => {
                        b.insert(&eng.topics, super::topics::sub_key(token, &topic), pos.to_be_bytes())
                    }
                    None => b.remove(&eng.topics, super::topics::sub_key(token, &topic)),
                }
            }
        }
        for (key, w) in std::mem::take(&mut self.topic_log) {
            match w {
                LogWrite::Put { value, .. } => b.insert(&eng.topics, key, value),
                LogWrite::Delete => b.remove(&eng.topics, key),
            }
        }
        self.staged.retain(|_, s| !s.added.is_empty());
        self.staged_ops = kept as usize;
        // The counters on disk must match the messages on disk: held ones are not there yet.
        let meta = ShardMeta { len: self.counters.len.saturating_sub(kept), ..self.counters };
        if b.is_empty() && meta == self.committed {
            return Ok(());
        }
        b.insert(&eng.meta, codec::shard_key(self.shard), meta.encode());
        match b.commit() {
            Ok(()) => {
                self.last_write = eng.gate.wrote();
                self.committed = meta;
                Ok(())
            }
            Err(e) => {
                // The staged writes are gone, held messages too: forget every
                // cached queue that counted them, and the messages they added
                // (ids stay used).
                self.staged.clear();
                self.staged_ops = 0;
                self.cache.clear();
                self.counters.len = self.committed.len;
                let e = eng.err("committing", e);
                // Whoever called, the next `sync` must not report these writes durable.
                self.lost = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Adds `token`'s staged messages to the `out[start..]` that `pending` read
    /// from disk, keeping id order and at most `max`.
    pub(super) fn merge_staged(
        &self,
        token: &Token,
        after: u64,
        now_unix: u64,
        max: usize,
        out: &mut Vec<StoredMsg>,
        start: usize,
    ) {
        let Some(s) = self.staged.get(token) else { return };
        let before = out.len();
        out.extend(
            s.added
                .iter()
                .filter(|m| m.msg_id > after && u64::from(m.note.expiry) >= now_unix)
                .take(max)
                .cloned(),
        );
        if out.len() > before {
            out[start..].sort_by_key(|m| m.msg_id);
            out.truncate(start + max);
        }
    }

    /// Whether the cache shows that every message of `token` past `after` is
    /// staged, so `pending` need not read the disk (an LSM range read costs
    /// more than the rest of a delivery).
    pub(super) fn only_staged_after(&self, token: &Token, after: u64) -> bool {
        let Some(q) = self.cache.get(token) else { return false };
        // Staged messages are a subset of the queue.
        let waiting = q.msgs.iter().filter(|e| e.id > after).count();
        let staged =
            self.staged.get(token).map_or(0, |s| s.added.iter().filter(|m| m.msg_id > after).count());
        waiting == staged
    }

    /// Whether a message `pending` found on disk has a staged deletion.
    pub(super) fn staged_removed(&self, token: &Token, id: u64) -> bool {
        self.staged.get(token).is_some_and(|s| s.is_removed(id))
    }
}

/// Commits what is staged when a handle goes away without a final `sync`, as
/// the per-append commits did; a kill before it loses only unsynced writes.
impl Drop for DurableStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::warn!("durable store shard {}: writes staged at close: {e}", self.shard);
        }
    }
}

pub type StagedMap = HashMap<Token, Staged>;
