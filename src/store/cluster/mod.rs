//! Cluster-mode `Store`: the offline queue lives in JetStream (see
//! [`crate::cluster::queue`]), replicated; this handle caches the queues of the
//! tokens whose device is connected to its shard, with [`MemoryStore`]'s rules
//! (cap, collapse, missed, expiry), and writes every change through.
//!
//! ```text
//!  append ──▶ cache (if loaded) + queue_publish ──ack(seq)──▶ inbox ──▶ next store call
//!  load   ──▶ queue_fetch ──backlog──▶ inbox, load hook ──▶ merged on the next store call
//!  ack / cap / collapse / expiry ──▶ queue_delete(seq), or when the publish's ack comes
//! ```
//!
//! Engine callbacks never block: they put what they learnt in a small
//! mutex-guarded inbox, drained at the start of the shard's next store call.
//! Receipts stay node-local, in memory (a receipt is lost if its node goes).
//!
//! Subscriptions live in a KV bucket (see [`crate::cluster::subs`]): `load`
//! reads the token's list too (the load hook fires once both reads are in);
//! writes change the cached list at once and are staged as [`SubOp`]s, one
//! `subs_update` per token per commit, inside the commit's ticket. The KV
//! value is the truth: each update's answer replaces the cached list, with
//! this handle's unanswered changes applied on top.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use super::memory::MemoryStore;
use super::{
    DurableHook, LoadHook, Loaded, Receipt, Store, StoreError, StoredMsg, SubRecord, Ticket, Tombstone,
};
use crate::cluster::engine::EngineHandle;
use crate::cluster::queue::{Fetched, Publish};
use crate::cluster::subs::SubOp;
use crate::cluster::EngineError;
use crate::proto::Token;
use subs_state::SubState;

mod durability;
mod subs_state;

pub(crate) use durability::Durability;

/// What engine callbacks hand the shard.
#[derive(Default)]
struct Inbox {
    durability: Durability,
    durable_hook: Option<DurableHook>,
    load_hook: Option<Arc<LoadHook>>,
    /// Sequences of acknowledged publishes, by publish number, since the last drain.
    seqs: HashMap<u64, u64>,
    /// Publishes whose message left the cache before their ack: deleted on it.
    delete_on_ack: HashSet<u64>,
    /// Publishes that failed, since the last drain.
    failed_pubs: HashSet<u64>,
    /// Finished fetches: token, load generation, result.
    fetched: Vec<(Token, u64, Result<Fetched, EngineError>)>,
    /// Finished subscription reads: token, load generation, result.
    subs_read: Vec<(Token, u64, Result<Vec<SubRecord>, EngineError>)>,
    /// Answered subscription writes: token, write number, result.
    subs_written: Vec<(Token, u64, Result<Vec<SubRecord>, EngineError>)>,
    /// Loads whose first backlog read or subscription read is still out,
    /// by generation: the load hook fires once both are in.
    load_parts: HashMap<Token, LoadParts>,
}

#[derive(Clone, Copy, Debug)]
struct LoadParts {
    gen: u64,
    fetch: bool,
    subs: bool,
}

impl Inbox {
    /// One read of `token`'s load `gen` is in; whether the load hook fires
    /// now (always for reads that are not a load's first pair).
    fn part_done(&mut self, token: Token, gen: u64, subs: bool) -> bool {
        let Some(p) = self.load_parts.get_mut(&token).filter(|p| p.gen == gen) else { return true };
        if subs {
            p.subs = false;
        } else if !p.fetch {
            // A later backlog read while the subscriptions are still out.
            return false;
        } else {
            p.fetch = false;
        }
        if p.fetch || p.subs {
            return false;
        }
        self.load_parts.remove(&token);
        true
    }
}

struct Shared {
    inbox: Mutex<Inbox>,
    settled: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // A panic elsewhere while holding it leaves plain data behind: keep going.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cached message's place in JetStream.
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Its publish number while the ack is outstanding (absent when fetched).
    publ: Option<u64>,
    seq: Option<u64>,
}

/// A token whose device is connected to this shard.
#[derive(Debug)]
struct LoadState {
    /// Tells this load's fetches from those of an earlier load of the token.
    gen: u64,
    /// Publishes of this handle numbered from here on are in the cache
    /// already: a fetch skips them.
    from_pub: u64,
    /// The highest sequence read so far: the next fetch starts after it.
    fetched_upto: u64,
    fetching: bool,
    /// Another fetch is due when this one ends (`load` called meanwhile).
    again: bool,
    /// The subscription read of this load is out.
    subs_loading: bool,
}

/// A shard's store in cluster mode; see the module doc.
pub struct ClusterStore {
    engine: EngineHandle,
    shard: usize,
    shards: usize,
    cache: MemoryStore,
    /// `Nats-Msg-Id` prefix of this handle: `<node>.<shard>.<random>.`.
    origin: String,
    meta: HashMap<(Token, u64), Meta>,
    /// Cached messages whose publish is unacknowledged, by publish number.
    by_pub: HashMap<u64, (Token, u64)>,
    loads: HashMap<Token, LoadState>,
    /// Appended, not yet handed to the engine: one batch per commit (or per
    /// `FLUSH_AT`). A message acked or removed meanwhile is never written.
    staged: Vec<(u64, Token, StoredMsg)>,
    /// Loads to read once more when due (see `recheck_after`), in due order.
    rechecks: VecDeque<(Instant, Token, u64)>,
    /// Subscription writes and cached lists.
    subs: SubState,
    /// Numbers publishes, unregisters, reregisters and subscription updates (the durable writes).
    next_pub: u64,
    next_gen: u64,
    shared: Arc<Shared>,
}

/// Staged publishes past which an append hands them to the engine without
/// waiting for the commit (one engine operation per batch).
const FLUSH_AT: usize = 512;

/// An offline append on another node may race a load here: it looked up the
/// route before this node's claim, and its publish lands after our read. The
/// lookup, a forward to the node that held the device before (which may
/// fail at its deadline) and the publish each end by their deadline, so one
/// more read of the token three deadlines (plus a second) after the load
/// sees such a message.
fn recheck_after(timeout: Duration) -> Duration {
    timeout * 3 + Duration::from_secs(1)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ClusterStore {
    /// The store of shard `shard` of `shards`, holding at most `cap` notifications
    /// per device (`limits.device_queue_cap`; `cluster.queue_max_per_token`
    /// bounds the stream itself).
    pub fn new(engine: EngineHandle, shard: usize, shards: usize, cap: usize) -> ClusterStore {
        let mut nonce = [0u8; 8];
        // Only uniqueness across restarts is needed (a fresh `Nats-Msg-Id` space):
        // fall back to the clock if the OS has no randomness to give.
        if getrandom::getrandom(&mut nonce).is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            nonce = (t.as_nanos() as u64).to_be_bytes();
        }
        let origin = format!("{}.{shard}.{}.", engine.node_id(), hex::encode(nonce));
        ClusterStore {
            engine,
            shard,
            shards: shards.max(1),
            cache: MemoryStore::new(cap),
            origin,
            meta: HashMap::new(),
            by_pub: HashMap::new(),
            loads: HashMap::new(),
            staged: Vec::new(),
            rechecks: VecDeque::new(),
            subs: SubState::default(),
            next_pub: 1,
            next_gen: 1,
            shared: Arc::new(Shared { inbox: Mutex::new(Inbox::default()), settled: Condvar::new() }),
        }
    }

    /// Whether `token` is loaded here and its backlog has been merged.
    pub fn is_loaded(&mut self, token: &Token) -> bool {
        self.drain();
        self.loads.get(token).is_some_and(|l| !l.fetching && !l.subs_loading)
    }

    /// Takes a number for a durable write; `on_done(n, ok)` completes it.
    fn number(&mut self) -> u64 {
        let n = self.next_pub;
        self.next_pub += 1;
        n
    }

    /// Completion of durable write `n` (on the engine thread, or here when the
    /// engine refused it at once).
    fn completion(&self, n: u64) -> impl Fn(bool) + Send + 'static {
        let shared = self.shared.clone();
        move |ok| {
            let mut inbox = shared.lock();
            let mut reports = Vec::new();
            inbox.durability.complete(n, ok, &mut reports);
            // Under the lock: reports reach the shard in ticket order.
            if let Some(hook) = &inbox.durable_hook {
                for (t, ok) in reports {
                    hook(t, ok);
                }
            }
            drop(inbox);
            shared.settled.notify_all();
        }
    }

    /// Hands the staged messages to the engine as one batch.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let nums: Vec<u64> = staged.iter().map(|s| s.0).collect();
        let items = staged
            .into_iter()
            .map(|(n, token, msg)| Publish { token, msg, origin: format!("{}{n}", self.origin) })
            .collect();
        let shared = self.shared.clone();
        let engine = self.engine.clone();
        self.engine.queue_publish(
            items,
            Box::new(move |r| {
                let results = match r {
                    Ok(v) if v.len() == nums.len() => v,
                    Ok(_) => vec![Err(EngineError::BadReply); nums.len()],
                    Err(e) => vec![Err(e); nums.len()],
                };
                let mut deletes = Vec::new();
                {
                    let mut inbox = shared.lock();
                    let mut reports = Vec::new();
                    for (&n, r) in nums.iter().zip(&results) {
                        let gone = inbox.delete_on_ack.remove(&n);
                        match r {
                            Ok(seq) if gone => deletes.push(*seq),
                            Ok(seq) => {
                                inbox.seqs.insert(n, *seq);
                            }
                            Err(_) => {
                                inbox.failed_pubs.insert(n);
                            }
                        }
                        inbox.durability.complete(n, r.is_ok(), &mut reports);
                    }
                    if let Some(hook) = &inbox.durable_hook {
                        for (t, ok) in reports {
                            hook(t, ok);
                        }
                    }
                }
                shared.settled.notify_all();
                for seq in deletes {
                    engine.queue_delete(seq, Box::new(|_| {}));
                }
            }),
        );
    }

    fn delete(&self, seq: u64) {
        self.engine.queue_delete(
            seq,
            Box::new(move |r| {
                if let Err(e) = r {
                    // It stays in the stream: the next load deletes it (acked
                    // messages are gone from the cache, so it comes back at most once).
                    warn!("cluster store: delete of seq {seq} failed: {e}");
                }
            }),
        );
    }

    /// A message left the cache (acked, capped, collapsed, expired): it goes
    /// from JetStream too, now or when its publish is acknowledged.
    fn forget(&mut self, token: &Token, msg_id: u64, delete: bool) {
        let Some(meta) = self.meta.remove(&(*token, msg_id)) else { return };
        if let Some(n) = meta.publ {
            self.by_pub.remove(&n);
        }
        if !delete {
            return;
        }
        match (meta.seq, meta.publ) {
            (Some(seq), _) => self.delete(seq),
            (None, Some(n)) => {
                if let Some(i) = self.staged.iter().position(|s| s.0 == n) {
                    // Never written: nothing to delete, and nothing left to wait for.
                    self.staged.remove(i);
                    (self.completion(n))(true);
                    return;
                }
                let seq = {
                    let mut inbox = self.shared.lock();
                    let seq = inbox.seqs.remove(&n);
                    if seq.is_none() && !inbox.failed_pubs.contains(&n) {
                        inbox.delete_on_ack.insert(n);
                    }
                    seq
                };
                if let Some(seq) = seq {
                    self.delete(seq);
                }
            }
            (None, None) => {}
        }
    }

    /// Applies what engine callbacks left since the last call.
    fn drain(&mut self) {
        let (seqs, failed, fetched, subs_read, subs_written) = {
            let mut inbox = self.shared.lock();
            let i = &mut *inbox;
            if i.seqs.is_empty()
                && i.fetched.is_empty()
                && i.failed_pubs.is_empty()
                && i.subs_read.is_empty()
                && i.subs_written.is_empty()
            {
                return;
            }
            (
                std::mem::take(&mut i.seqs),
                std::mem::take(&mut i.failed_pubs),
                std::mem::take(&mut i.fetched),
                std::mem::take(&mut i.subs_read),
                std::mem::take(&mut i.subs_written),
            )
        };
        for (token, n, r) in subs_written {
            let list = match r {
                Ok(list) => Some(list),
                Err(e) => {
                    warn!("cluster store: subscriptions of {} not written: {e}", token.to_hex());
                    // What is cached may now be wrong: read it again.
                    if let Some(gen) = self.loads.get(&token).map(|l| l.gen) {
                        self.start_subs_read(token, gen, false);
                    }
                    None
                }
            };
            self.subs.on_written(&token, n, list);
        }
        for (token, gen, r) in subs_read {
            self.on_subs_read(token, gen, r);
        }
        for n in failed {
            // Not in JetStream: the cached copy is all there is (its push failed).
            if let Some(key) = self.by_pub.remove(&n) {
                if let Some(m) = self.meta.get_mut(&key) {
                    m.publ = None;
                }
            }
        }
        for (n, seq) in seqs {
            // Publishes for tokens not cached here (offline, unloaded) are nobody's concern.
            if let Some(key) = self.by_pub.remove(&n) {
                if let Some(m) = self.meta.get_mut(&key) {
                    m.seq = Some(seq);
                    m.publ = None;
                }
            }
        }
        for (token, gen, r) in fetched {
            self.on_fetched(token, gen, r);
        }
    }

    fn start_fetch(&mut self, token: Token, gen: u64, after_seq: u64) {
        let shared = self.shared.clone();
        self.engine.queue_fetch(
            token,
            after_seq,
            Box::new(move |r| {
                let hook = {
                    let mut inbox = shared.lock();
                    inbox.fetched.push((token, gen, r));
                    let fire = inbox.part_done(token, gen, false);
                    inbox.load_hook.clone().filter(|_| fire)
                };
                if let Some(hook) = hook {
                    hook(token);
                }
            }),
        );
    }

    fn on_fetched(&mut self, token: Token, gen: u64, r: Result<Fetched, EngineError>) {
        let Some(ls) = self.loads.get_mut(&token) else { return };
        if ls.gen != gen {
            return;
        }
        ls.fetching = false;
        let f = match r {
            Ok(f) => f,
            Err(e) => {
                // The device gets what is cached; a later `load` fetches again.
                warn!("cluster store: backlog of {} not read: {e}", token.to_hex());
                return;
            }
        };
        ls.fetched_upto = ls.fetched_upto.max(f.last_seq);
        let from_pub = ls.from_pub;
        let again = std::mem::take(&mut ls.again);
        let now = unix_now();
        let mut fresh = Vec::new();
        for fm in f.msgs {
            let mine = fm
                .origin
                .strip_prefix(self.origin.as_str())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= from_pub);
            if mine || self.meta.contains_key(&(token, fm.msg.msg_id)) {
                continue;
            }
            if u64::from(fm.msg.note.expiry) < now {
                self.delete(fm.seq);
                continue;
            }
            self.meta.insert((token, fm.msg.msg_id), Meta { publ: None, seq: Some(fm.seq) });
            fresh.push(fm.msg);
        }
        let mut removed = Vec::new();
        self.cache.merge(&token, fresh, &mut removed);
        for m in removed {
            self.forget(&token, m.msg_id, true);
        }
        if again {
            self.fetch_more(token);
        }
    }

    /// Reads `token`'s subscriptions for its load `gen`; `first`: the load's
    /// own read, which the load hook waits for.
    fn start_subs_read(&mut self, token: Token, gen: u64, first: bool) {
        let shared = self.shared.clone();
        self.engine.subs_get(
            token,
            Box::new(move |r| {
                let hook = {
                    let mut inbox = shared.lock();
                    inbox.subs_read.push((token, gen, r));
                    let fire = first && inbox.part_done(token, gen, true);
                    inbox.load_hook.clone().filter(|_| fire)
                };
                if let Some(hook) = hook {
                    hook(token);
                }
            }),
        );
    }

    fn on_subs_read(&mut self, token: Token, gen: u64, r: Result<Vec<SubRecord>, EngineError>) {
        let Some(ls) = self.loads.get_mut(&token).filter(|l| l.gen == gen) else { return };
        ls.subs_loading = false;
        match r {
            Ok(list) => {
                let list = self.subs.overlay(&token, list);
                self.subs.cache.insert(token, list);
            }
            Err(e) => {
                // Not cached: `subscriptions` reads the bucket itself.
                warn!("cluster store: subscriptions of {} not read: {e}", token.to_hex());
                self.subs.cache.remove(&token);
            }
        }
    }

    /// Hands each token's staged subscription changes to the engine, one
    /// numbered update per token. Subscribing and unsubscribing are part of
    /// the batch's ticket; an update that only moves positions is not: it
    /// must not hold back (or fail) the pushes committed with it, and one
    /// that is lost only makes the device get those topic messages again.
    fn flush_subs(&mut self) {
        if self.subs.staged.is_empty() {
            return;
        }
        self.subs.staged_len = 0;
        for (token, ops) in std::mem::take(&mut self.subs.staged) {
            let n = self.number();
            self.subs.inflight.entry(token).or_default().push_back((n, ops.clone()));
            let shared = self.shared.clone();
            let complete = self.completion(n);
            let positions_only = ops.iter().all(|o| matches!(o, SubOp::Advance { .. }));
            if positions_only {
                complete(true);
            }
            self.engine.subs_update(
                token,
                ops,
                Box::new(move |r| {
                    let ok = r.is_ok();
                    shared.lock().subs_written.push((token, n, r));
                    if !positions_only {
                        complete(ok);
                    }
                }),
            );
        }
    }

    fn stage_sub(&mut self, token: &Token, op: SubOp) {
        self.subs.stage(token, op);
        if self.subs.due(token) {
            self.flush_subs();
        }
    }

    fn fetch_more(&mut self, token: Token) {
        let Some(ls) = self.loads.get_mut(&token) else { return };
        if ls.fetching {
            ls.again = true;
            return;
        }
        ls.fetching = true;
        let (gen, after) = (ls.gen, ls.fetched_upto);
        self.start_fetch(token, gen, after);
    }

    /// Blocks until every numbered write so far completed, or the engine's
    /// deadline (plus a second) passed.
    fn wait_settled(&self) -> Result<(), StoreError> {
        let last = self.next_pub - 1;
        let deadline = Instant::now() + self.engine.timeout() + Duration::from_secs(1);
        let mut inbox = self.shared.lock();
        loop {
            if let Some(ok) = inbox.durability.settled(last) {
                return if ok { Ok(()) } else { Err(StoreError::Io("a JetStream write failed".into())) };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Io("JetStream writes not acknowledged in time".into()));
            }
            inbox = self
                .shared
                .settled
                .wait_timeout(inbox, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Runs an engine operation and waits for it (start-up reads only).
    fn blocking<T: Send + 'static>(
        &self,
        wait: Duration,
        op: impl FnOnce(crate::cluster::engine::Done<T>),
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        op(Box::new(move |r| {
            let _ = tx.try_send(r);
        }));
        match rx.recv_timeout(wait + Duration::from_secs(1)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Io(format!("engine: {e}"))),
            Err(_) => Err(StoreError::Io("engine: no answer".into())),
        }
    }
}

impl Store for ClusterStore {
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<u32, StoreError> {
        self.drain();
        let n = self.number();
        let mut capped = 0;
        if self.loads.contains_key(token) {
            let mut removed = Vec::new();
            self.meta.insert((*token, msg.msg_id), Meta { publ: Some(n), seq: None });
            self.by_pub.insert(n, (*token, msg.msg_id));
            capped = self.cache.append_removing(token, msg.clone(), &mut removed);
            for m in removed {
                self.forget(token, m.msg_id, true);
            }
        } else {
            // Offline here: the cap and collapse apply when a node loads it.
            self.cache.raise_max_id(msg.msg_id);
        }
        self.staged.push((n, *token, msg));
        if self.staged.len() >= FLUSH_AT {
            self.flush();
        }
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
        self.drain();
        self.cache.pending(token, after, now_unix, max, out)
    }

    fn ack(&mut self, token: &Token, msg_id: u64) -> Result<bool, StoreError> {
        self.drain();
        let found = self.cache.ack(token, msg_id)?;
        if found {
            self.forget(token, msg_id, true);
        }
        Ok(found)
    }

    fn mark_sent(&mut self, token: &Token, msg_id: u64) {
        self.cache.mark_sent(token, msg_id);
    }

    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError> {
        self.drain();
        self.cache.take_missed(token)
    }

    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError> {
        self.drain();
        // Called about once a second: also when due loads are read once more.
        let now = Instant::now();
        while self.rechecks.front().is_some_and(|r| r.0 <= now) {
            let Some((_, token, gen)) = self.rechecks.pop_front() else { break };
            if self.loads.get(&token).is_some_and(|l| l.gen == gen) {
                self.fetch_more(token);
            }
        }
        let mut removed = Vec::new();
        let n = self.cache.sweep_expired_into(now_unix, &mut removed);
        for (token, id) in removed {
            self.forget(&token, id, true);
        }
        Ok(n)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.drain();
        self.flush();
        self.flush_subs();
        self.wait_settled()
    }

    fn commit(&mut self) -> Result<Ticket, StoreError> {
        self.drain();
        self.flush();
        self.flush_subs();
        let last = self.next_pub - 1;
        let mut inbox = self.shared.lock();
        if inbox.durable_hook.is_none() {
            drop(inbox);
            return self.wait_settled().map(|()| Ticket::Durable);
        }
        let mut reports = Vec::new();
        let ticket = inbox.durability.commit(last, &mut reports);
        if let Some(hook) = &inbox.durable_hook {
            for (t, ok) in reports {
                hook(t, ok);
            }
        }
        Ok(ticket.map_or(Ticket::Durable, Ticket::Pending))
    }

    fn set_durable_hook(&mut self, hook: DurableHook) {
        self.shared.lock().durable_hook = Some(hook);
    }

    fn load(&mut self, token: &Token) -> Loaded {
        self.drain();
        if self.loads.contains_key(token) {
            // Loaded already: read what arrived since (another node's offline append).
            self.fetch_more(*token);
            return Loaded::Pending;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let ls = LoadState {
            gen,
            from_pub: self.next_pub,
            fetched_upto: 0,
            fetching: true,
            again: false,
            subs_loading: true,
        };
        self.loads.insert(*token, ls);
        self.shared.lock().load_parts.insert(*token, LoadParts { gen, fetch: true, subs: true });
        self.start_fetch(*token, gen, 0);
        self.start_subs_read(*token, gen, true);
        self.rechecks.push_back((Instant::now() + recheck_after(self.engine.timeout()), *token, gen));
        Loaded::Pending
    }

    fn unload(&mut self, token: &Token) {
        self.drain();
        self.loads.remove(token);
        // Staged and unanswered changes stay: they are written all the same.
        self.subs.cache.remove(token);
        for m in self.cache.remove_queue(token) {
            // Still waiting in JetStream for the next connection.
            self.forget(token, m.msg_id, false);
        }
    }

    fn set_load_hook(&mut self, hook: LoadHook) {
        self.shared.lock().load_hook = Some(Arc::new(hook));
    }

    fn max_msg_id(&self) -> u64 {
        self.cache.max_msg_id()
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn unregister(&mut self, token: &Token, app_id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.drain();
        if let Some(ls) = self.loads.get_mut(token) {
            // A backlog read before the purge must not come back: its fetch is ignored.
            ls.gen = self.next_gen;
            self.next_gen += 1;
            ls.fetching = false;
            ls.again = false;
            ls.subs_loading = false;
            self.subs.cache.insert(*token, Vec::new());
        }
        // Every subscription goes, in the same commit as the tombstone.
        self.stage_sub(token, SubOp::Clear);
        for m in self.cache.remove_queue(token) {
            // The purge covers what is stored; a publish still in flight is deleted on its ack.
            self.forget(token, m.msg_id, true);
        }
        // Staged for an offline token: never written (the purge would come first).
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.staged).into_iter().partition(|s| s.1 == *token);
        self.staged = kept;
        for (n, _, _) in gone {
            (self.completion(n))(true);
        }
        let n = self.number();
        let complete = self.completion(n);
        let t = Tombstone { token: *token, app_id: app_id.to_string(), at_ms };
        self.engine.unregister_token(t, Box::new(move |r| complete(r.is_ok())));
        Ok(())
    }

    fn reregister(&mut self, token: &Token) -> Result<(), StoreError> {
        let n = self.number();
        let complete = self.completion(n);
        self.engine.lift_tombstone(*token, Box::new(move |r| complete(r.is_ok())));
        Ok(())
    }

    fn tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError> {
        // One read of every key: longer than one operation, still bounded.
        let wait = self.engine.timeout() * 10;
        let engine = self.engine.clone();
        let all = self.blocking(wait, |done| engine.list_tombstones(wait, done))?;
        let (shard, shards) = (self.shard, self.shards);
        Ok(all.into_iter().filter(|t| t.token.shard(shards) == shard).collect())
    }

    fn save_receipt(&mut self, app_id: &str, r: Receipt, cap: usize) -> Result<(), StoreError> {
        self.cache.save_receipt(app_id, r, cap)
    }

    fn take_receipts(&mut self, app_id: &str, max: usize, out: &mut Vec<Receipt>) -> Result<(), StoreError> {
        self.cache.take_receipts(app_id, max, out)
    }

    fn subscriptions(&mut self, token: &Token, out: &mut Vec<SubRecord>) -> Result<(), StoreError> {
        self.drain();
        if let Some(list) = self.subs.cache.get(token) {
            out.extend(list.iter().cloned());
            return Ok(());
        }
        // Not loaded here (a provider's change for a device elsewhere), or its read failed.
        let engine = self.engine.clone();
        let token_ = *token;
        let stored = self.blocking(self.engine.timeout(), move |done| engine.subs_get(token_, done))?;
        out.extend(self.subs.overlay(token, stored));
        Ok(())
    }

    fn put_subscription(&mut self, token: &Token, topic: &[u8], pos: u64) -> Result<(), StoreError> {
        self.drain();
        // A topic cached as present only moves forward: a stale writer never
        // takes a device's position back. A device not loaded here gets a
        // subscription only if it has none to the topic (the shard read its
        // list just before; one made meanwhile elsewhere keeps its place).
        let topic: Box<[u8]> = topic.into();
        let op = match self.subs.cache.get(token) {
            Some(l) if l.iter().any(|r| r.topic == topic) => SubOp::Advance { topic, pos },
            None if !self.loads.contains_key(token) => SubOp::Insert { topic, pos },
            _ => SubOp::Put { topic, pos },
        };
        self.stage_sub(token, op);
        Ok(())
    }

    fn remove_subscription(&mut self, token: &Token, topic: &[u8]) -> Result<(), StoreError> {
        self.drain();
        self.stage_sub(token, SubOp::Remove { topic: topic.into() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::queue::FetchedMsg;
    use crate::cluster::Engine;
    use crate::config::ClusterConfig;
    use crate::store::test_msg as msg;

    /// An engine with no NATS server: every operation fails at its (short) deadline.
    fn offline_engine() -> Engine {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = ClusterConfig {
            nats: vec![format!("nats://127.0.0.1:{port}")],
            node_id: "n1".into(),
            request_timeout_ms: 200,
            ..ClusterConfig::default()
        };
        Engine::start(&cfg).expect("starts without a server")
    }

    /// A store (cap 10) on an engine that reaches no server, and what its durable hook reports.
    fn offline_store() -> (Engine, ClusterStore, std::sync::mpsc::Receiver<(u64, bool)>) {
        let e = offline_engine();
        let mut s = ClusterStore::new(e.handle().clone(), 0, 1, 10);
        let (tx, rx) = std::sync::mpsc::channel();
        s.set_durable_hook(Box::new(move |upto, ok| {
            let _ = tx.send((upto, ok));
        }));
        (e, s, rx)
    }

    fn fetched(s: &ClusterStore, msgs: Vec<(u64, bool, StoredMsg)>) -> Fetched {
        let last_seq = msgs.iter().map(|m| m.0).max().unwrap_or(0);
        let msgs = msgs
            .into_iter()
            .map(|(seq, mine, msg)| {
                // `mine`: published by this handle after the load began (publish number 1000).
                let origin = if mine { format!("{}1000", s.origin) } else { format!("other.0.ab.{seq}") };
                FetchedMsg { seq, origin, msg }
            })
            .collect();
        Fetched { msgs, last_seq, bad: 0 }
    }

    fn ids(s: &mut ClusterStore, t: &Token) -> Vec<u64> {
        let mut out = Vec::new();
        s.pending(t, 0, 0, 1000, &mut out).unwrap();
        out.iter().map(|m| m.msg_id).collect()
    }

    #[test]
    fn a_backlog_merges_with_pushes_appended_during_the_load() {
        let e = offline_engine();
        let mut s = ClusterStore::new(e.handle().clone(), 0, 1, 3);
        let t = Token([4; 24]);
        assert_eq!(s.load(&t), Loaded::Pending);
        assert!(!s.is_loaded(&t));
        let far = 4_000_000_000;
        s.append(&t, msg(20, far, b"c")).unwrap();
        s.append(&t, msg(21, far, b"")).unwrap();
        let gen = s.loads[&t].gen;
        s.next_pub = 1001;
        let f = fetched(
            &s,
            vec![
                (1, false, msg(5, far, b"")),
                (2, false, msg(7, far, b"c")),
                (3, false, msg(8, 1, b"")),
                (4, true, msg(21, far, b"")),
            ],
        );
        s.on_fetched(t, gen, Ok(f));
        assert!(s.loads[&t].subs_loading, "the subscriptions are not read yet");
        s.on_subs_read(t, gen, Ok(vec![rec("news", 3)]));
        assert!(s.is_loaded(&t));
        let mut subs = Vec::new();
        s.subscriptions(&t, &mut subs).unwrap();
        assert_eq!(subs, vec![rec("news", 3)]);
        // 8 expired, 7 collapsed into 20, 21 is the cached copy of our own publish.
        assert_eq!(ids(&mut s, &t), vec![5, 20, 21]);
        assert_eq!(s.take_missed(&t).unwrap(), 0);
        assert_eq!(s.loads[&t].fetched_upto, 4);
        // A later backlog past the cap: the oldest go, counted as missed.
        s.fetch_more(t);
        let f = fetched(&s, vec![(9, false, msg(30, far, b"")), (10, false, msg(31, far, b""))]);
        s.on_fetched(t, gen, Ok(f));
        assert_eq!(ids(&mut s, &t), vec![21, 30, 31]);
        assert_eq!(s.take_missed(&t).unwrap(), 2);
        assert_eq!(s.max_msg_id(), 31);
        assert!(s.meta.contains_key(&(t, 30)) && !s.meta.contains_key(&(t, 5)), "removed ones are forgotten");
        // A fetch of an earlier load of the token changes nothing.
        s.unload(&t);
        assert_eq!(s.len(), 0);
        assert!(s.meta.is_empty() && s.by_pub.is_empty());
        s.load(&t);
        let f = fetched(&s, vec![(11, false, msg(40, far, b""))]);
        s.on_fetched(t, gen, Ok(f));
        assert!(ids(&mut s, &t).is_empty());
        // Nor does a fetch that was in flight when the device unregistered.
        let gen = s.loads[&t].gen;
        s.unregister(&t, "app", 1).unwrap();
        let f = fetched(&s, vec![(12, false, msg(41, far, b""))]);
        s.on_fetched(t, gen, Ok(f));
        assert!(ids(&mut s, &t).is_empty());
        assert!(s.is_loaded(&t), "still connected, with nothing waiting");
    }

    #[test]
    fn an_unreachable_engine_fails_the_batch_and_sync() {
        let (_e, mut s, rx) = offline_store();
        let t = Token([5; 24]);
        s.append(&t, msg(1, 4_000_000_000, b"")).unwrap();
        s.append(&t, msg(2, 4_000_000_000, b"")).unwrap();
        assert_eq!(s.commit().unwrap(), Ticket::Pending(2));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok((2, false)));
        assert_eq!(s.commit().unwrap(), Ticket::Durable, "nothing new to wait for");
        s.append(&t, msg(3, 4_000_000_000, b"")).unwrap();
        assert!(s.sync().is_err());
    }

    fn rec(topic: &str, pos: u64) -> SubRecord {
        SubRecord { topic: topic.as_bytes().into(), pos }
    }

    #[test]
    fn subscription_changes_show_at_once_and_position_updates_merge() {
        let mut st = SubState::default();
        let t = Token([1; 24]);
        st.cache.insert(t, vec![rec("a", 5)]);
        st.stage(&t, SubOp::Advance { topic: (*b"a").into(), pos: 7 });
        st.stage(&t, SubOp::Advance { topic: (*b"a").into(), pos: 6 });
        st.stage(&t, SubOp::Put { topic: (*b"b").into(), pos: 1 });
        st.stage(&t, SubOp::Advance { topic: (*b"b").into(), pos: 3 });
        assert_eq!(st.cache[&t], vec![rec("a", 7), rec("b", 3)]);
        assert_eq!(
            st.staged[&t],
            vec![
                SubOp::Advance { topic: (*b"a").into(), pos: 7 },
                SubOp::Put { topic: (*b"b").into(), pos: 3 }
            ],
            "one change per topic for a run of position updates"
        );
        assert_eq!(st.staged_len, 2);
        // Answered with another node's change in it: the answer wins, our unanswered changes stay on top.
        let ops = st.staged.remove(&t).unwrap();
        st.staged_len = 0;
        st.inflight.entry(t).or_default().push_back((9, ops));
        st.stage(&t, SubOp::Remove { topic: (*b"a").into() });
        st.on_written(&t, 9, Some(vec![rec("a", 7), rec("b", 3), rec("other", 2)]));
        assert_eq!(st.cache[&t], vec![rec("b", 3), rec("other", 2)]);
        assert!(st.inflight.is_empty());
        st.stage(&t, SubOp::Clear);
        assert_eq!(
            (st.staged[&t].clone(), st.staged_len),
            (vec![SubOp::Clear], 1),
            "a clear replaces what was staged"
        );
        assert!(st.cache[&t].is_empty());
    }

    #[test]
    fn the_load_hook_waits_for_the_backlog_and_the_subscriptions() {
        let mut inbox = Inbox::default();
        let t = Token([2; 24]);
        inbox.load_parts.insert(t, LoadParts { gen: 4, fetch: true, subs: true });
        assert!(!inbox.part_done(t, 4, false), "the subscriptions are still out");
        assert!(!inbox.part_done(t, 4, false), "a second backlog read does not count for them");
        assert!(inbox.part_done(t, 4, true));
        assert!(inbox.part_done(t, 4, false), "later reads fire at once");
        inbox.load_parts.insert(t, LoadParts { gen: 5, fetch: true, subs: true });
        assert!(inbox.part_done(t, 4, true), "an earlier load's read is not this load's");
        assert!(!inbox.part_done(t, 5, true));
        assert!(inbox.part_done(t, 5, false));
    }

    #[test]
    fn a_failed_subscription_write_fails_its_batch() {
        let (_e, mut s, rx) = offline_store();
        let t = Token([6; 24]);
        s.put_subscription(&t, b"news", 1).unwrap();
        s.remove_subscription(&t, b"old").unwrap();
        assert_eq!(s.commit().unwrap(), Ticket::Pending(1), "one update for the token");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok((1, false)));
        // Past the per-token bound the changes go without waiting for the commit.
        for i in 0..subs_state::SUB_OPS_PER_TOKEN {
            s.put_subscription(&t, format!("t{i}").as_bytes(), 1).unwrap();
        }
        assert!(s.subs.staged.is_empty() && s.subs.inflight.contains_key(&t));
        assert!(s.sync().is_err());
    }
}
