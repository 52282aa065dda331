//! Durable `Store` on fjall (an LSM tree with a write-ahead journal): one
//! database per data directory, shared by every shard's handle, keyed by token
//! so a different shard count after a restart finds every queue where it was.
//!
//! Keyspaces: `msgs` (token || id -> message), `meta` (layout, per-shard
//! counters, missed counts, tombstones, receipts) and `topics` (topic
//! positions and topic logs, `topics.rs`). Mutations are staged in
//! memory (`stage.rs`) and committed by `sync` as one atomic batch that also
//! rewrites the shard's counters. The sweep's index by expiry lives in memory
//! (`expiry.rs`), rebuilt from the messages at open, so an append writes one
//! key. A token's queue summary (ids, expiries, collapse ids) is cached after
//! first use, so append, ack and collapse need no read from disk.

mod codec;
mod expiry;
mod feedback;
mod open;
mod stage;
mod sync;
mod syncer;
mod topics;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace};

use super::{DurableHook, Receipt, Store, StoreError, StoredMsg, SubRecord, Ticket, Tombstone, TopicEntry};
use crate::proto::Token;
use codec::ShardMeta;
use expiry::ExpiryIndex;
use stage::{StagedMap, STAGE_LIMIT};
use sync::SyncGate;

pub use open::open_durable;

/// Tokens one sweep call looks at; the rest wait for the next call, so a
/// sweep never stalls the shard's loop for long.
const SWEEP_TOKENS: usize = 1024;
/// Empty queues the cache may hold beyond twice the non-empty ones.
const EMPTY_CACHED: usize = 65_536;

/// What append and ack need to know about one waiting message.
struct Entry {
    id: u64,
    expiry: u32,
    collapse: Bytes,
}

#[derive(Default)]
struct Queue {
    msgs: VecDeque<Entry>,
    missed: u32,
    /// Ids up to this were written to a connection of the device (`mark_sent`).
    sent: u64,
}

/// The engine handles every shard shares.
#[derive(Clone)]
struct Engine {
    db: Database,
    msgs: Keyspace,
    meta: Keyspace,
    topics: Keyspace,
    path: PathBuf,
    gate: Arc<SyncGate>,
    journal: Arc<syncer::Journal>,
    syncer: Arc<syncer::Syncer>,
}

/// One shard's handle on the durable store.
pub struct DurableStore {
    eng: Engine,
    shard: u16,
    /// How many shards share the store, to pick this shard's tombstones.
    shards: u16,
    cap: usize,
    /// Counted with what is staged.
    counters: ShardMeta,
    /// As last committed.
    committed: ShardMeta,
    cache: HashMap<Token, Queue>,
    /// Past this many cached queues, the empty ones are dropped.
    cache_limit: usize,
    /// Writes since the last commit, by token; `sync` commits them.
    staged: StagedMap,
    /// Topic log writes since the last commit; `sync` commits them with `staged`.
    topic_log: topics::LogStage,
    /// Writes in `staged` and `topic_log` (at most: some may have been dropped since).
    staged_ops: usize,
    /// Why staged writes were dropped since the last `sync`, which then fails.
    lost: Option<StoreError>,
    /// Where each app's receipts are, for the apps this shard is the hub of.
    receipts: feedback::ReceiptIndex,
    /// The number `SyncGate` gave this shard's latest committed batch.
    last_write: u64,
    /// Which tokens have messages expiring when: what the sweep visits.
    expiry: ExpiryIndex,
    /// Held messages up to this id may be committed (`Store::release`).
    released: u64,
    /// A completion hook is set: `commit` leaves the fsync to the sync thread.
    hooked: bool,
}

impl DurableStore {
    /// Commits what is staged to the journal (readable, not yet synced).
    fn commit_journal(&mut self) -> Result<(), StoreError> {
        let flushed = self.commit_staged(true);
        if let Some(e) = self.lost.take() {
            return Err(e);
        }
        flushed
    }

    fn queue(&mut self, token: &Token) -> Result<Queue, StoreError> {
        if let Some(q) = self.cache.remove(token) {
            return Ok(q);
        }
        let mut q = Queue::default();
        for kv in self.eng.msgs.prefix(token.0) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading a queue", e))?;
            let (_, id) = codec::parse_msg_key(&k).ok_or_else(|| self.eng.corrupt("message key", &k))?;
            let (expiry, collapse, _) =
                codec::split_msg(&v).ok_or_else(|| self.eng.corrupt("message", &k))?;
            if !self.staged_removed(token, id) {
                q.msgs.push_back(Entry { id, expiry, collapse: Bytes::copy_from_slice(collapse) });
            }
        }
        let key = codec::missed_key(token);
        if let Some(v) = self.eng.meta.get(key).map_err(|e| self.eng.err("reading a missed count", e))? {
            q.missed = codec::decode_u32(&v).ok_or_else(|| self.eng.corrupt("missed count", &key))?;
        }
        // A queue that emptied this iteration left the cache but may still have staged writes.
        if let Some(s) = self.staged.get(token) {
            q.missed = s.missed.unwrap_or(q.missed);
            let staged = s.added.iter().map(|m| Entry {
                id: m.msg_id,
                expiry: m.note.expiry,
                collapse: m.note.collapse.clone(),
            });
            q.msgs.extend(staged);
        }
        Ok(q)
    }

    /// Deletes `e`, just taken out of `token`'s queue `q`, and its expiry
    /// index entry unless another message of `q` expires in the same second.
    fn delete(&mut self, token: &Token, q: &Queue, e: &Entry) {
        self.stage_remove(token, e.id);
        if !q.msgs.iter().any(|o| o.expiry == e.expiry) {
            self.expiry.remove(token, e.expiry);
        }
    }

    /// Puts a queue back in the cache. Empty ones stay too, up to a limit: a
    /// device that acks each notification as it comes would otherwise have its
    /// queue re-read on every append, and that read walks every deletion of the
    /// token's messages not yet compacted away.
    fn keep(&mut self, token: &Token, q: Queue) {
        self.cache.insert(*token, q);
        if self.cache.len() > self.cache_limit {
            self.cache.retain(|_, q| !q.msgs.is_empty() || q.missed != 0);
            self.cache_limit = 2 * self.cache.len() + EMPTY_CACHED;
        }
    }
}

impl Store for DurableStore {
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<u32, StoreError> {
        if self.staged_ops >= STAGE_LIMIT {
            self.flush()?;
        }
        let mut q = self.queue(token)?;
        if !msg.note.collapse.is_empty() {
            if let Some(e) =
                q.msgs.iter().position(|e| e.collapse == msg.note.collapse).and_then(|i| q.msgs.remove(i))
            {
                self.delete(token, &q, &e);
            }
        }
        let missed_before = q.missed;
        let mut capped = 0;
        while q.msgs.len() >= self.cap {
            let Some(e) = q.msgs.pop_front() else { break };
            capped += 1;
            self.delete(token, &q, &e);
            if e.id > q.sent {
                q.missed = q.missed.saturating_add(1);
            }
        }
        q.msgs.push_back(Entry {
            id: msg.msg_id,
            expiry: msg.note.expiry,
            collapse: msg.note.collapse.clone(),
        });
        self.counters.len += 1;
        self.counters.max_id = self.counters.max_id.max(msg.msg_id);
        self.expiry.add(token, msg.note.expiry);
        self.staged_ops += 1;
        let s = self.stage_of(token);
        if q.missed != missed_before {
            s.missed = Some(q.missed);
        }
        s.added.push(msg);
        self.keep(token, q);
        Ok(capped)
    }

    fn pending(
        &mut self,
        token: &Token,
        after: u64,
        now_unix: u64,
        max: usize,
        out: &mut Vec<StoredMsg>,
    ) -> Result<(), StoreError> {
        if max == 0 || after == u64::MAX {
            return Ok(());
        }
        let start = out.len();
        if self.only_staged_after(token, after) {
            // A device that is online gets its notifications before they are committed.
            self.merge_staged(token, after, now_unix, max, out, start);
            return Ok(());
        }
        let range = codec::msg_key(token, after + 1)..=codec::msg_key(token, u64::MAX);
        let mut n = 0;
        for kv in self.eng.msgs.range(range) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading a queue", e))?;
            let msg = codec::parse_msg_key(&k)
                .and_then(|(_, id)| codec::decode_msg(id, &v))
                .ok_or_else(|| self.eng.corrupt("message", &k))?;
            if u64::from(msg.note.expiry) >= now_unix && !self.staged_removed(token, msg.msg_id) {
                out.push(msg);
                n += 1;
                if n == max {
                    break;
                }
            }
        }
        self.merge_staged(token, after, now_unix, max, out, start);
        Ok(())
    }

    fn ack(&mut self, token: &Token, msg_id: u64) -> Result<bool, StoreError> {
        let mut q = self.queue(token)?;
        let Some(i) = q.msgs.iter().position(|e| e.id == msg_id) else {
            self.keep(token, q);
            return Ok(false);
        };
        if let Some(e) = q.msgs.remove(i) {
            self.delete(token, &q, &e);
        }
        self.keep(token, q);
        Ok(true)
    }

    fn mark_sent(&mut self, token: &Token, msg_id: u64) {
        if let Some(q) = self.cache.get_mut(token) {
            q.sent = q.sent.max(msg_id);
        }
    }

    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError> {
        let cached = self.cache.contains_key(token);
        let mut q = self.queue(token)?;
        let n = std::mem::take(&mut q.missed);
        if n != 0 {
            self.stage_of(token).missed = Some(0);
        }
        // Every HELLO asks. A device with nothing waiting is not cached for
        // it: idle devices would pay a cache entry each (about 150 B).
        if cached || !q.msgs.is_empty() {
            self.keep(token, q);
        }
        Ok(n)
    }

    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError> {
        let mut due = Vec::new();
        self.expiry.take_due(now_unix, SWEEP_TOKENS, &mut due);
        let mut total = 0;
        for (i, token) in due.iter().enumerate() {
            let cached = self.cache.contains_key(token);
            let mut q = match self.queue(token) {
                Ok(q) => q,
                Err(e) => {
                    // Due at once: the next sweep tries these tokens again.
                    for t in &due[i..] {
                        self.expiry.add(t, 0);
                    }
                    return Err(e);
                }
            };
            let mut expired = Vec::new();
            q.msgs.retain(|e| {
                let keep = u64::from(e.expiry) >= now_unix;
                if !keep {
                    expired.push(e.id);
                }
                keep
            });
            total += expired.len();
            for id in expired {
                self.stage_remove(token, id);
            }
            // A queue read only for the sweep stays out of the cache.
            if cached {
                self.keep(token, q);
            }
        }
        if self.staged_ops >= STAGE_LIMIT {
            self.flush()?;
        }
        Ok(total)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.commit_journal()?;
        let eng = &self.eng;
        eng.gate.sync(self.last_write, || eng.journal.fsync())
    }

    fn commit(&mut self) -> Result<Ticket, StoreError> {
        if !self.hooked {
            return self.sync().map(|()| Ticket::Durable);
        }
        self.commit_journal()?;
        if self.last_write <= self.eng.gate.durable() {
            return Ok(Ticket::Durable);
        }
        self.eng.syncer.request(self.shard, self.last_write);
        Ok(Ticket::Pending(self.last_write))
    }

    fn set_durable_hook(&mut self, hook: DurableHook) {
        self.eng.syncer.set_hook(self.shard, hook);
        self.hooked = true;
    }

    fn hold(&mut self, token: &Token, msg_id: u64) -> bool {
        match self.staged.get_mut(token) {
            Some(s) if s.added.iter().any(|m| m.msg_id == msg_id) => {
                s.held.push(msg_id);
                true
            }
            _ => false,
        }
    }

    fn release(&mut self, msg_id: u64) {
        self.released = self.released.max(msg_id);
    }

    fn unregister(&mut self, token: &Token, app_id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.do_unregister(token, app_id, at_ms)
    }

    fn reregister(&mut self, token: &Token) -> Result<(), StoreError> {
        self.do_reregister(token)
    }

    fn tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError> {
        self.do_tombstones()
    }

    fn save_receipt(&mut self, app_id: &str, r: Receipt, cap: usize) -> Result<(), StoreError> {
        self.do_save_receipt(app_id, r, cap)
    }

    fn take_receipts(&mut self, app_id: &str, max: usize, out: &mut Vec<Receipt>) -> Result<(), StoreError> {
        self.do_take_receipts(app_id, max, out)
    }

    fn subscriptions(&mut self, token: &Token, out: &mut Vec<SubRecord>) -> Result<(), StoreError> {
        self.do_subscriptions(token, out)
    }

    fn put_subscription(&mut self, token: &Token, topic: &[u8], pos: u64) -> Result<(), StoreError> {
        self.stage_sub(token, topic, Some(pos))
    }

    fn remove_subscription(&mut self, token: &Token, topic: &[u8]) -> Result<(), StoreError> {
        self.stage_sub(token, topic, None)
    }

    fn topic_append(&mut self, entry: &TopicEntry) -> Result<(), StoreError> {
        self.do_topic_append(entry)
    }

    fn topic_remove(&mut self, app_id: &str, topic: &[u8], msg_id: u64) -> Result<(), StoreError> {
        self.do_topic_remove(app_id, topic, msg_id)
    }

    fn topic_messages(&mut self, out: &mut Vec<TopicEntry>) -> Result<(), StoreError> {
        self.do_topic_messages(out)
    }

    fn max_msg_id(&self) -> u64 {
        self.counters.max_id
    }

    fn len(&self) -> usize {
        self.counters.len as usize
    }
}

impl Engine {
    /// Maps an engine error met while doing `what`; ENOSPC becomes `Full`.
    fn err(&self, what: &str, e: fjall::Error) -> StoreError {
        map_err(&self.path, what, e)
    }

    fn corrupt(&self, what: &str, key: &[u8]) -> StoreError {
        StoreError::Corrupt(format!("{}: malformed {what} at key {}", self.path.display(), hex::encode(key)))
    }
}

fn map_err(path: &Path, what: &str, e: fjall::Error) -> StoreError {
    let io = match &e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    };
    if let Some(io) = io {
        if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) {
            return StoreError::Full;
        }
        return StoreError::Io(format!("{what} in {}: {io}", path.display()));
    }
    match e {
        fjall::Error::Poisoned | fjall::Error::Locked | fjall::Error::KeyspaceDeleted => {
            StoreError::Io(format!("{what} in {}: {e:?}", path.display()))
        }
        _ => StoreError::Corrupt(format!("{what} in {}: {e:?}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_msg as msg;

    /// The expiry index must not grow with messages that were acked,
    /// collapsed, capped or unregistered: only with what is stored.
    #[test]
    fn the_expiry_index_holds_only_stored_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open::open_shards(dir.path(), 1, 2).unwrap().pop().unwrap();
        let (a, b) = (Token([1; 24]), Token([2; 24]));
        // Acked, one second each.
        for id in 1..=10 {
            s.append(&a, msg(id, 1000 + id as u32, b"")).unwrap();
            assert!(s.ack(&a, id).unwrap());
        }
        assert_eq!(s.expiry.len(), 0);
        // Collapsed, then pushed out by the cap of 2.
        s.append(&b, msg(11, 2000, b"c")).unwrap();
        s.append(&b, msg(12, 2001, b"c")).unwrap();
        s.append(&b, msg(13, 2002, b"")).unwrap();
        s.append(&b, msg(14, 2002, b"")).unwrap();
        assert_eq!(s.expiry.len(), 1, "only 2002 is left: ids 13 and 14 share it");
        assert!(s.ack(&b, 13).unwrap());
        assert_eq!(s.expiry.len(), 1, "14 still expires at 2002");
        s.unregister(&b, "app", 1).unwrap();
        assert_eq!(s.expiry.len(), 0);
        s.sync().unwrap();
    }
}
