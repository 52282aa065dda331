//! Tombstones of unregistered devices and delivery receipts waiting for a
//! provider, in the `meta` keyspace. Both are keyed by token or app, not by
//! shard, so they stay findable when the shard count changes.

use std::collections::HashMap;

use super::DurableStore;
use crate::proto::token::TOKEN_LEN;
use crate::proto::Token;
use crate::store::{Receipt, StoreError, Tombstone};

/// `meta` key prefix of a tombstone: `U` || token -> at_ms (u64 BE) || app id.
const TOMB_TAG: u8 = b'U';
/// `meta` key prefix of a receipt: `R` || app length (u16 BE) || app || seq (u64 BE)
/// -> token || msg_id (u64 BE) || acked_at_ms (u64 BE).
const RECEIPT_TAG: u8 = b'R';
const RECEIPT_LEN: usize = TOKEN_LEN + 16;

/// Where one app's stored receipts are: seq `head..tail`, all present. Only
/// the app's hub shard writes them, so a handle may keep this in memory.
#[derive(Clone, Copy, Default)]
pub struct ReceiptRange {
    head: u64,
    tail: u64,
}

pub type ReceiptIndex = HashMap<String, ReceiptRange>;

pub(super) fn tomb_key(token: &Token) -> [u8; 1 + TOKEN_LEN] {
    let mut k = [0u8; 1 + TOKEN_LEN];
    k[0] = TOMB_TAG;
    k[1..].copy_from_slice(&token.0);
    k
}

fn receipt_prefix(app: &str) -> Vec<u8> {
    let len = u16::try_from(app.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + app.len() + 8);
    k.push(RECEIPT_TAG);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&app.as_bytes()[..usize::from(len)]);
    k
}

fn receipt_key(app: &str, seq: u64) -> Vec<u8> {
    let mut k = receipt_prefix(app);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl DurableStore {
    pub(super) fn do_unregister(
        &mut self,
        token: &Token,
        app_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        // Before anything is staged, so the whole unregistration lands in one batch.
        if self.staged_ops >= super::stage::STAGE_LIMIT {
            self.flush()?;
        }
        let q = self.queue(token)?;
        self.stage_unsubscribe_all(token)?;
        for e in &q.msgs {
            self.stage_remove(token, e.id);
            self.expiry.remove(token, e.expiry);
        }
        let mut v = at_ms.to_be_bytes().to_vec();
        v.extend_from_slice(app_id.as_bytes());
        let s = self.stage_of(token);
        if q.missed != 0 {
            s.missed = Some(0);
        }
        s.tomb = Some(Some(v));
        // The queue stays out of the cache: it is empty now.
        Ok(())
    }

    pub(super) fn do_reregister(&mut self, token: &Token) -> Result<(), StoreError> {
        self.stage_of(token).tomb = Some(None);
        Ok(())
    }

    /// The tombstones of the tokens this shard owns.
    pub(super) fn do_tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError> {
        // They are read from disk, so staged ones must be there first.
        self.flush()?;
        let mut out = Vec::new();
        for kv in self.eng.meta.prefix([TOMB_TAG]) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading tombstones", e))?;
            let bad = || self.eng.corrupt("tombstone", &k);
            let token = Token(k.get(1..).and_then(|t| t.try_into().ok()).ok_or_else(bad)?);
            if v.len() < 8 {
                return Err(bad());
            }
            if token.shard(usize::from(self.shards)) != usize::from(self.shard) {
                continue;
            }
            let app_id = std::str::from_utf8(&v[8..]).map_err(|_| bad())?.to_string();
            out.push(Tombstone { token, app_id, at_ms: be_u64(&v) });
        }
        Ok(out)
    }

    /// Finds where `app`'s receipts are, reading the first and last key once.
    fn receipt_range(&mut self, app: &str) -> Result<ReceiptRange, StoreError> {
        if let Some(r) = self.receipts.get(app) {
            return Ok(*r);
        }
        let prefix = receipt_prefix(app);
        let seq_of = |kv: fjall::Guard| -> Result<u64, StoreError> {
            let k = kv.key().map_err(|e| self.eng.err("reading receipts", e))?;
            match k.len() == prefix.len() + 8 {
                true => Ok(be_u64(&k[prefix.len()..])),
                false => Err(self.eng.corrupt("receipt key", &k)),
            }
        };
        let mut keys = self.eng.meta.prefix(&prefix);
        let range = match (keys.next(), keys.next_back()) {
            (None, _) => ReceiptRange::default(),
            (Some(first), None) => {
                let s = seq_of(first)?;
                ReceiptRange { head: s, tail: s + 1 }
            }
            (Some(first), Some(last)) => ReceiptRange { head: seq_of(first)?, tail: seq_of(last)? + 1 },
        };
        self.receipts.insert(app.to_string(), range);
        Ok(range)
    }

    pub(super) fn do_save_receipt(&mut self, app: &str, r: Receipt, cap: usize) -> Result<(), StoreError> {
        let mut range = self.receipt_range(app)?;
        let mut b = self.eng.db.batch();
        let mut v = Vec::with_capacity(RECEIPT_LEN);
        v.extend_from_slice(&r.token.0);
        v.extend_from_slice(&r.msg_id.to_be_bytes());
        v.extend_from_slice(&r.acked_at_ms.to_be_bytes());
        b.insert(&self.eng.meta, receipt_key(app, range.tail), v);
        range.tail += 1;
        while range.tail - range.head > cap.max(1) as u64 {
            b.remove(&self.eng.meta, receipt_key(app, range.head));
            range.head += 1;
        }
        self.receipts.remove(app);
        b.commit().map_err(|e| self.eng.err("keeping a receipt", e))?;
        self.last_write = self.eng.gate.wrote();
        self.receipts.insert(app.to_string(), range);
        Ok(())
    }

    pub(super) fn do_take_receipts(
        &mut self,
        app: &str,
        max: usize,
        out: &mut Vec<Receipt>,
    ) -> Result<(), StoreError> {
        let mut range = self.receipt_range(app)?;
        if max == 0 || range.head == range.tail {
            return Ok(());
        }
        let (from, to) = (receipt_key(app, range.head), receipt_key(app, range.tail));
        let key_len = from.len();
        let mut b = self.eng.db.batch();
        let mut taken = Vec::new();
        for kv in self.eng.meta.range(from..to).take(max) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading receipts", e))?;
            if v.len() != RECEIPT_LEN || k.len() != key_len {
                return Err(self.eng.corrupt("receipt", &k));
            }
            let mut t = [0u8; TOKEN_LEN];
            t.copy_from_slice(&v[..TOKEN_LEN]);
            taken.push(Receipt {
                token: Token(t),
                msg_id: be_u64(&v[TOKEN_LEN..]),
                acked_at_ms: be_u64(&v[TOKEN_LEN + 8..]),
            });
            range.head = be_u64(&k[k.len() - 8..]) + 1;
            b.remove(&self.eng.meta, k);
        }
        if taken.is_empty() {
            range.head = range.tail;
        }
        self.receipts.remove(app);
        b.commit().map_err(|e| self.eng.err("taking receipts", e))?;
        self.last_write = self.eng.gate.wrote();
        self.receipts.insert(app.to_string(), range);
        out.extend(taken);
        Ok(())
    }
}
