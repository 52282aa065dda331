//! Results waiting for durability (group commit, off the loop): the store
//! writes of the iterations since the last commit are committed as one batch,
//! handed to the store's sync thread, and the RESULTs that depend on them
//! leave only when the batch's completion (`ShardMsg::Durable`) says it is on
//! disk. Meanwhile the loop goes on reading, delivering and accepting, and
//! stages what comes; the next batch is committed when this one is durable,
//! so a shard has at most one batch syncing and a busy shard's batches grow
//! with the disk's latency. Notifications under `store.ack_grace_ms` wait
//! here for their device's ACK instead.

use std::collections::VecDeque;

use log::warn;

use super::msg::ResultMsg;
use super::timer::Entry;
use crate::metrics::ShardWriter;
use crate::proto::{GoAwayReason, Status, SubStatus};
use crate::store::{Store, Ticket};

/// A push answered `delivered` whose message the store holds back from the disk.
struct AwaitingAck {
    msg_id: u64,
    /// Monotonic ms past which the message is written anyway.
    due_ms: u64,
    /// Taken when the ACK releases it early.
    result: Option<ResultMsg>,
}

/// What waits for one committed batch.
#[derive(Default)]
struct Waiting {
    results: Vec<ResultMsg>,
    goaways: Vec<(Entry, GoAwayReason)>,
    subscribed: Vec<(Entry, u16, SubStatus)>,
}

impl Waiting {
    /// The writes these answers wait for were lost: each says so.
    fn fail(&mut self) {
        fail(self.results.iter_mut());
        for (_, _, status) in &mut self.subscribed {
            *status = SubStatus::STORE_FAILED;
        }
    }
}

struct Batch {
    ticket: u64,
    committed_us: u64,
    waiting: Waiting,
}

/// What may leave now.
#[derive(Default)]
pub struct Released {
    pub results: Vec<ResultMsg>,
    /// Connections to tell GOAWAY (an UNREGISTER made durable).
    pub goaways: Vec<(Entry, GoAwayReason)>,
    /// SUBSCRIBE_RESULTs: device, req_id, status.
    pub subscribed: Vec<(Entry, u16, SubStatus)>,
}

impl Released {
    fn add(&mut self, w: Waiting) {
        self.results.extend(w.results);
        self.goaways.extend(w.goaways);
        self.subscribed.extend(w.subscribed);
    }
}

#[derive(Default)]
pub struct Commit {
    /// The store was written since the last commit.
    dirty: bool,
    /// What the writes since the last commit will release.
    next: Waiting,
    /// In `msg_id` order.
    awaiting_ack: VecDeque<AwaitingAck>,
    /// Committed, oldest first, waiting for their completion.
    in_flight: VecDeque<Batch>,
}

impl Commit {
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// `r` leaves once the writes made so far are durable.
    pub fn after_write(&mut self, r: ResultMsg) {
        self.dirty = true;
        self.next.results.push(r);
    }

    /// `e` is told GOAWAY `reason` once the writes made so far are durable.
    pub fn goaway_after_write(&mut self, e: Entry, reason: GoAwayReason) {
        self.dirty = true;
        self.next.goaways.push((e, reason));
    }

    /// Device `e`'s SUBSCRIBE `req_id` is answered `status` once the writes
    /// made so far are durable (every answer waits, so they keep their order).
    pub fn answer_after_write(&mut self, e: Entry, req_id: u16, status: SubStatus) {
        self.dirty = true;
        self.next.subscribed.push((e, req_id, status));
    }

    /// `r` waits for the device's ACK of `msg_id` until `due_ms`, then for the disk.
    pub fn await_ack(&mut self, msg_id: u64, due_ms: u64, r: ResultMsg) {
        debug_assert!(self.awaiting_ack.back().is_none_or(|a| a.msg_id < msg_id));
        self.awaiting_ack.push_back(AwaitingAck { msg_id, due_ms, result: Some(r) });
    }

    /// The device ACKed `msg_id`: its held result, if any, may leave now.
    pub fn acked(&mut self, msg_id: u64) -> Option<ResultMsg> {
        let i = self.awaiting_ack.binary_search_by_key(&msg_id, |a| a.msg_id).ok()?;
        self.awaiting_ack[i].result.take()
    }

    /// When the earliest held message's grace ends.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.awaiting_ack.front().map(|a| a.due_ms)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The end of an iteration: held messages whose grace ran out join the
    /// next batch; unless a batch is syncing, the writes since the last commit
    /// are committed as one batch and handed to the sync thread. Returns what
    /// may leave at once (a store with nothing to sync, or a failure).
    pub fn run(
        &mut self,
        store: &mut dyn Store,
        now_ms: u64,
        now_us: u64,
        metrics: &ShardWriter,
    ) -> Released {
        let mut released_id = None;
        while self.awaiting_ack.front().is_some_and(|a| a.due_ms <= now_ms) {
            let Some(a) = self.awaiting_ack.pop_front() else { break };
            released_id = Some(a.msg_id);
            metrics.on_held(a.result.is_none());
            if let Some(r) = a.result {
                self.after_write(r);
            }
        }
        if let Some(id) = released_id {
            store.release(id);
        }
        let mut out = Released::default();
        if !self.dirty {
            debug_assert!(self.next.results.is_empty() && self.next.goaways.is_empty());
            debug_assert!(self.next.subscribed.is_empty());
            return out;
        }
        if !self.in_flight.is_empty() {
            // A batch is syncing: what was written since goes with the next
            // one, committed when this one is durable.
            return out;
        }
        self.dirty = false;
        let waiting = std::mem::take(&mut self.next);
        match store.commit() {
            Ok(Ticket::Durable) => out.add(waiting),
            Ok(Ticket::Pending(ticket)) => {
                self.in_flight.push_back(Batch { ticket, committed_us: now_us, waiting });
            }
            Err(e) => {
                warn!("store commit failed: {e}");
                metrics.on_store_sync(std::time::Duration::ZERO, false);
                // Held messages were dropped with the rest of what was staged.
                let held = self.awaiting_ack.iter_mut().filter_map(|a| a.result.as_mut());
                fail(held);
                let mut w = waiting;
                w.fail();
                out.add(w);
            }
        }
        out
    }

    /// The store's completion: every write numbered up to `upto` is durable,
    /// or the sync that covered them failed, which fails exactly their results.
    pub fn on_durable(&mut self, upto: u64, ok: bool, now_us: u64, metrics: &ShardWriter) -> Released {
        let mut out = Released::default();
        while self.in_flight.front().is_some_and(|b| b.ticket <= upto) {
            let Some(mut b) = self.in_flight.pop_front() else { break };
            metrics
                .on_store_sync(std::time::Duration::from_micros(now_us.saturating_sub(b.committed_us)), ok);
            if !ok {
                b.waiting.fail();
            }
            out.add(b.waiting);
        }
        out
    }

    /// At exit: everything held is written, and waited for.
    pub fn finish(&mut self, store: &mut dyn Store, now_us: u64, metrics: &ShardWriter) -> Released {
        store.release(u64::MAX);
        for a in std::mem::take(&mut self.awaiting_ack) {
            if let Some(r) = a.result {
                self.after_write(r);
            }
        }
        // One blocking sync commits what is staged and covers the batch in flight.
        let ok = store.sync().map_err(|e| warn!("store sync at exit failed: {e}")).is_ok();
        let mut out = self.on_durable(u64::MAX, ok, now_us, metrics);
        let mut rest = std::mem::take(&mut self.next);
        if !ok {
            rest.fail();
        }
        out.add(rest);
        self.dirty = false;
        out
    }
}

fn fail<'a>(results: impl Iterator<Item = &'a mut ResultMsg>) {
    for r in results {
        r.outcome.status = Status::STORE_FAILED;
        r.outcome.msg_id = 0;
    }
}
