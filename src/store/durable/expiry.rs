//! The expiry sweep's index, kept in memory: for each expiry second, the
//! tokens of this shard with a message expiring then. An append thus writes
//! only its message to disk; the index is rebuilt from the messages when the
//! store opens (`open.rs`). Deleting a token's last message of an expiry
//! second deletes its entry, so the index never outgrows the stored messages.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::proto::Token;
use crate::proto::TokenHasher;

type TokenSet = HashSet<Token, BuildHasherDefault<TokenHasher>>;

#[derive(Default)]
pub struct ExpiryIndex {
    /// Expiry (unix seconds) → tokens with a message expiring then.
    by_second: BTreeMap<u32, TokenSet>,
}

impl ExpiryIndex {
    /// Notes that `token` has a message expiring at `expiry`.
    pub fn add(&mut self, token: &Token, expiry: u32) {
        self.by_second.entry(expiry).or_default().insert(*token);
    }

    /// Forgets that `token` has a message expiring at `expiry` (its last one then was deleted).
    pub fn remove(&mut self, token: &Token, expiry: u32) {
        if let Some(set) = self.by_second.get_mut(&expiry) {
            set.remove(token);
            if set.is_empty() {
                self.by_second.remove(&expiry);
            }
        }
    }

    /// (token, second) pairs held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_second.values().map(|s| s.len()).sum()
    }

    /// Moves to `out` up to `max` tokens that have a message expiring before
    /// `now` (every message noted for those seconds has expired), oldest first.
    pub fn take_due(&mut self, now: u64, max: usize, out: &mut Vec<Token>) {
        while out.len() < max {
            let Some(mut first) = self.by_second.first_entry() else { return };
            if u64::from(*first.key()) >= now {
                return;
            }
            let set = first.get_mut();
            let room = max - out.len();
            if set.len() <= room {
                out.extend(set.drain());
                first.remove();
            } else {
                let some: Vec<Token> = set.iter().take(room).copied().collect();
                for t in &some {
                    set.remove(t);
                }
                out.extend(some);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(b: u8) -> Token {
        Token([b; 24])
    }

    #[test]
    fn takes_only_expired_seconds_in_order_and_at_most_max() {
        let mut ix = ExpiryIndex::default();
        ix.add(&t(1), 10);
        ix.add(&t(1), 10);
        ix.add(&t(2), 10);
        ix.add(&t(3), 20);
        ix.add(&t(4), 30);
        let mut out = Vec::new();
        ix.take_due(10, 100, &mut out);
        assert!(out.is_empty(), "expiry 10 is still valid at 10");
        ix.take_due(21, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0] == t(1) || out[0] == t(2));
        ix.take_due(21, 100, &mut out);
        out.sort_by_key(|t| t.0[0]);
        assert_eq!(out, vec![t(1), t(2), t(3)]);
        ix.add(&t(5), 40);
        ix.remove(&t(5), 40);
        ix.remove(&t(9), 40);
        assert_eq!(ix.len(), 1);
        ix.take_due(u64::MAX, 100, &mut out);
        assert_eq!(out.len(), 4, "t(4) once, at 30; t(5) no more");
        assert_eq!(ix.len(), 0);
    }
}
