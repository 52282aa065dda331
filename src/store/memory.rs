//! In-memory `Store`: bounded per-device queues in a hash map, with an expiry
//! index so a sweep touches only what expired. Lost on restart.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::{Receipt, Store, StoreError, StoredMsg, SubRecord, Tombstone};
use crate::proto::Token;

#[derive(Default)]
struct Queue {
    msgs: VecDeque<StoredMsg>,
    missed: u32,
    /// Ids up to this were written to a connection of the device (`mark_sent`).
    sent: u64,
}

/// A per-shard in-memory store holding at most `cap` messages per device.
pub struct MemoryStore {
    cap: usize,
    queues: HashMap<Token, Queue>,
    by_expiry: BTreeSet<(u32, Token, u64)>,
    len: usize,
    max_id: u64,
    tombstones: HashMap<Token, (String, u64)>,
    receipts: HashMap<String, VecDeque<Receipt>>,
    /// Each device's topic positions (its subscriptions and broadcast position).
    subs: HashMap<Token, Vec<SubRecord>>,
}

impl MemoryStore {
    pub fn new(cap: usize) -> MemoryStore {
        MemoryStore {
            cap: cap.max(1),
            queues: HashMap::new(),
            by_expiry: BTreeSet::new(),
            len: 0,
            max_id: 0,
            tombstones: HashMap::new(),
            receipts: HashMap::new(),
            subs: HashMap::new(),
        }
    }

    fn remove_at(&mut self, token: &Token, idx: usize) -> Option<StoredMsg> {
        let q = self.queues.get_mut(token)?;
        let m = q.msgs.remove(idx)?;
        self.by_expiry.remove(&(m.note.expiry, *token, m.msg_id));
        self.len -= 1;
        Some(m)
    }

    fn drop_if_empty(&mut self, token: &Token) {
        if self.queues.get(token).is_some_and(|q| q.msgs.is_empty() && q.missed == 0) {
            self.queues.remove(token);
        }
    }
}

impl MemoryStore {
    /// [`Store::append`], also handing back what the collapse and the cap removed
    /// (a store that keeps a copy elsewhere deletes those there too).
    pub(crate) fn append_removing(
        &mut self,
        token: &Token,
        msg: StoredMsg,
        removed: &mut Vec<StoredMsg>,
    ) -> u32 {
        self.max_id = self.max_id.max(msg.msg_id);
        if !msg.note.collapse.is_empty() {
            let pos = self
                .queues
                .get(token)
                .and_then(|q| q.msgs.iter().position(|m| m.note.collapse == msg.note.collapse));
            if let Some(gone) = pos.and_then(|i| self.remove_at(token, i)) {
                removed.push(gone);
            }
        }
        self.by_expiry.insert((msg.note.expiry, *token, msg.msg_id));
        let q = self.queues.entry(*token).or_default();
        q.msgs.push_back(msg);
        self.len += 1;
        let mut capped = 0;
        while self.queues.get(token).is_some_and(|q| q.msgs.len() > self.cap) {
            let Some(gone) = self.remove_at(token, 0) else { break };
            capped += 1;
            if let Some(q) = self.queues.get_mut(token) {
                if gone.msg_id > q.sent {
                    q.missed = q.missed.saturating_add(1);
                }
            }
            removed.push(gone);
        }
        capped
    }

    /// Merges `msgs` (a backlog read from elsewhere) into `token`'s queue as if
    /// everything had been appended in id order: the newer of one collapse id
    /// stays, the cap drops the oldest (counted as missed unless sent). A
    /// message whose id is queued already is ignored. What the merge removed,
    /// queued before or not, goes to `removed`; returns how many the cap dropped.
    pub(crate) fn merge(&mut self, token: &Token, msgs: Vec<StoredMsg>, removed: &mut Vec<StoredMsg>) -> u32 {
        let mut all: Vec<StoredMsg> = match self.queues.get_mut(token) {
            Some(q) => q.msgs.drain(..).collect(),
            None => Vec::new(),
        };
        for m in &all {
            self.by_expiry.remove(&(m.note.expiry, *token, m.msg_id));
            self.len -= 1;
        }
        all.extend(msgs);
        // Stable: of two with one id, the one queued before comes first and stays.
        all.sort_by_key(|m| m.msg_id);
        all.dedup_by_key(|m| m.msg_id);
        let mut capped = 0;
        for m in all {
            capped += self.append_removing(token, m, removed);
        }
        self.drop_if_empty(token);
        capped
    }

    /// Forgets `token`'s queue and missed count, returning its messages
    /// (no tombstone: the caller keeps those elsewhere).
    pub(crate) fn remove_queue(&mut self, token: &Token) -> Vec<StoredMsg> {
        let Some(q) = self.queues.remove(token) else { return Vec::new() };
        for m in &q.msgs {
            self.by_expiry.remove(&(m.note.expiry, *token, m.msg_id));
            self.len -= 1;
        }
        q.msgs.into()
    }

    /// [`Store::sweep_expired`], also handing back which messages it removed.
    pub(crate) fn sweep_expired_into(&mut self, now_unix: u64, removed: &mut Vec<(Token, u64)>) -> usize {
        if self.queues.capacity() > 2 * self.queues.len() + 1024 {
            self.queues.shrink_to(self.queues.len() * 5 / 4);
        }
        let mut n = 0;
        while let Some(&(exp, token, id)) = self.by_expiry.first() {
            if u64::from(exp) >= now_unix {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(q) = self.queues.get_mut(&token) {
                if let Some(i) = q.msgs.iter().position(|m| m.msg_id == id) {
                    q.msgs.remove(i);
                    self.len -= 1;
                    n += 1;
                    removed.push((token, id));
                }
            }
            self.drop_if_empty(&token);
        }
        n
    }

    /// Raises the highest id [`Store::max_msg_id`] reports.
    pub(crate) fn raise_max_id(&mut self, id: u64) {
        self.max_id = self.max_id.max(id);
    }
}

impl Store for MemoryStore {
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<u32, StoreError> {
        let mut removed = Vec::new();
        Ok(self.append_removing(token, msg, &mut removed))
    }

    fn mark_sent(&mut self, token: &Token, msg_id: u64) {
        if let Some(q) = self.queues.get_mut(token) {
            q.sent = q.sent.max(msg_id);
        }
    }

    fn pending(
        &mut self,
        token: &Token,
        after: u64,
        now_unix: u64,
        max: usize,
        out: &mut Vec<StoredMsg>,
    ) -> Result<(), StoreError> {
        if let Some(q) = self.queues.get(token) {
            let live = q.msgs.iter().filter(|m| m.msg_id > after && u64::from(m.note.expiry) >= now_unix);
            out.extend(live.take(max).cloned());
        }
        Ok(())
    }

    fn ack(&mut self, token: &Token, msg_id: u64) -> Result<bool, StoreError> {
        let pos = self.queues.get(token).and_then(|q| q.msgs.iter().position(|m| m.msg_id == msg_id));
        let found = pos.and_then(|i| self.remove_at(token, i)).is_some();
        self.drop_if_empty(token);
        Ok(found)
    }

    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError> {
        let n = self.queues.get_mut(token).map(|q| std::mem::take(&mut q.missed)).unwrap_or(0);
        self.drop_if_empty(token);
        Ok(n)
    }

    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError> {
        // Called about once a second: also the moment to give back the capacity
        // a drained peak left in the queue map (in `sweep_expired_into`).
        let mut removed = Vec::new();
        Ok(self.sweep_expired_into(now_unix, &mut removed))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn max_msg_id(&self) -> u64 {
        self.max_id
    }

    fn len(&self) -> usize {
        self.len
    }

    fn unregister(&mut self, token: &Token, app_id: &str, at_ms: u64) -> Result<(), StoreError> {
        if let Some(q) = self.queues.remove(token) {
            for m in q.msgs {
                self.by_expiry.remove(&(m.note.expiry, *token, m.msg_id));
                self.len -= 1;
            }
        }
        self.tombstones.insert(*token, (app_id.to_string(), at_ms));
        self.subs.remove(token);
        Ok(())
    }

    fn subscriptions(&mut self, token: &Token, out: &mut Vec<SubRecord>) -> Result<(), StoreError> {
        out.extend(self.subs.get(token).into_iter().flatten().cloned());
        Ok(())
    }

    fn put_subscription(&mut self, token: &Token, topic: &[u8], pos: u64) -> Result<(), StoreError> {
        let subs = self.subs.entry(*token).or_default();
        match subs.iter_mut().find(|s| &*s.topic == topic) {
            Some(s) => s.pos = pos,
            None => subs.push(SubRecord { topic: topic.into(), pos }),
        }
        Ok(())
    }

    fn remove_subscription(&mut self, token: &Token, topic: &[u8]) -> Result<(), StoreError> {
        if let Some(subs) = self.subs.get_mut(token) {
            subs.retain(|s| &*s.topic != topic);
            if subs.is_empty() {
                self.subs.remove(token);
            }
        }
        Ok(())
    }

    fn reregister(&mut self, token: &Token) -> Result<(), StoreError> {
        self.tombstones.remove(token);
        Ok(())
    }

    fn tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError> {
        Ok(self
            .tombstones
            .iter()
            .map(|(t, (a, at))| Tombstone { token: *t, app_id: a.clone(), at_ms: *at })
            .collect())
    }

    fn save_receipt(&mut self, app_id: &str, r: Receipt, cap: usize) -> Result<(), StoreError> {
        let q = self.receipts.entry(app_id.to_string()).or_default();
        q.push_back(r);
        while q.len() > cap.max(1) {
            q.pop_front();
        }
        Ok(())
    }

    fn take_receipts(&mut self, app_id: &str, max: usize, out: &mut Vec<Receipt>) -> Result<(), StoreError> {
        if let Some(q) = self.receipts.get_mut(app_id) {
            let n = max.min(q.len());
            out.extend(q.drain(..n));
            if q.is_empty() {
                self.receipts.remove(app_id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_msg as msg;

    fn ids(s: &mut MemoryStore, t: &Token, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        s.pending(t, 0, now, 1000, &mut out).unwrap();
        out.iter().map(|m| m.msg_id).collect()
    }

    #[test]
    fn order_ack_collapse_cap_expiry() {
        let t = Token([1; 24]);
        let mut s = MemoryStore::new(3);
        for id in 1..=3 {
            s.append(&t, msg(id, 100, b"")).unwrap();
        }
        assert_eq!(ids(&mut s, &t, 50), vec![1, 2, 3]);
        assert!(s.ack(&t, 2).unwrap());
        assert!(!s.ack(&t, 2).unwrap());
        s.append(&t, msg(4, 100, b"c")).unwrap();
        s.append(&t, msg(5, 100, b"c")).unwrap();
        assert_eq!(ids(&mut s, &t, 50), vec![1, 3, 5]);
        s.append(&t, msg(6, 60, b"")).unwrap();
        assert_eq!(ids(&mut s, &t, 50), vec![3, 5, 6]);
        assert_eq!(s.take_missed(&t).unwrap(), 1);
        assert_eq!(s.take_missed(&t).unwrap(), 0);
        assert_eq!(ids(&mut s, &t, 61), vec![3, 5]);
        assert_eq!(s.sweep_expired(61).unwrap(), 1);
        assert_eq!(s.len(), 2);
        assert_eq!(s.max_msg_id(), 6);
        let mut after = Vec::new();
        s.pending(&t, 3, 0, 10, &mut after).unwrap();
        assert_eq!(after.len(), 1);
    }

    #[test]
    fn merge_is_append_in_id_order() {
        let t = Token([3; 24]);
        let mut s = MemoryStore::new(3);
        let mut removed = Vec::new();
        s.append_removing(&t, msg(10, 100, b"c"), &mut removed);
        s.append_removing(&t, msg(12, 100, b""), &mut removed);
        s.mark_sent(&t, 3);
        assert!(removed.is_empty());
        // A backlog from elsewhere: older ids, one of them a collapse of 10's id, one a duplicate.
        let capped = s.merge(
            &t,
            vec![msg(4, 100, b""), msg(6, 100, b"c"), msg(11, 100, b""), msg(12, 100, b"x")],
            &mut removed,
        );
        assert_eq!(ids(&mut s, &t, 0), vec![10, 11, 12]);
        let mut gone: Vec<u64> = removed.iter().map(|m| m.msg_id).collect();
        gone.sort();
        assert_eq!(gone, vec![4, 6], "6 collapsed into 10, 4 capped");
        assert_eq!(capped, 1);
        assert_eq!(s.take_missed(&t).unwrap(), 1, "4 was never sent (only ids up to 3 were)");
        let mut out = Vec::new();
        s.pending(&t, 11, 0, 10, &mut out).unwrap();
        assert_eq!(out[0].note.collapse, bytes::Bytes::new(), "the queued 12 stays, not the duplicate");
        assert_eq!(s.len(), 3);
        assert_eq!(s.max_msg_id(), 12);
        let mut swept = Vec::new();
        s.append_removing(&t, msg(13, 5, b""), &mut removed);
        assert_eq!(s.sweep_expired_into(6, &mut swept), 1);
        assert_eq!(swept, vec![(t, 13)]);
        assert_eq!(s.remove_queue(&t).len(), 2);
        assert_eq!(s.len(), 0);
        assert!(s.tombstones().unwrap().is_empty(), "remove_queue leaves no tombstone");
    }

    #[test]
    fn unregister_clears_the_queue_and_receipts_are_capped() {
        let t = Token([2; 24]);
        let mut s = MemoryStore::new(10);
        s.append(&t, msg(1, 100, b"")).unwrap();
        s.unregister(&t, "app", 77).unwrap();
        assert_eq!(ids(&mut s, &t, 0), Vec::<u64>::new());
        assert_eq!(s.len(), 0);
        assert_eq!(s.tombstones().unwrap(), vec![Tombstone { token: t, app_id: "app".into(), at_ms: 77 }]);
        s.reregister(&t).unwrap();
        assert!(s.tombstones().unwrap().is_empty());
        for id in 0..5 {
            s.save_receipt("app", Receipt { token: t, msg_id: id, acked_at_ms: id }, 3).unwrap();
        }
        let mut out = Vec::new();
        s.take_receipts("app", 2, &mut out).unwrap();
        s.take_receipts("app", 9, &mut out).unwrap();
        assert_eq!(out.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}
