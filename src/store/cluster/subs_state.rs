//! A cluster store handle's subscription writes (sans-IO): staged changes
//! per token, the ones the engine has not answered, and the cached lists.

use std::collections::{HashMap, VecDeque};

use crate::cluster::subs::{self, SubOp};
use crate::proto::Token;
use crate::store::SubRecord;

/// This handle's subscription writes: staged ones, the ones the engine has
/// not answered, and the cached lists of loaded tokens. Sans-IO.
#[derive(Default, Debug)]
pub(super) struct SubState {
    /// Loaded tokens whose read completed: the stored list, this handle's
    /// unanswered and staged changes applied.
    pub(super) cache: HashMap<Token, Vec<SubRecord>>,
    /// Not yet handed to the engine; flushed by `commit`.
    pub(super) staged: HashMap<Token, Vec<SubOp>>,
    pub(super) staged_len: usize,
    /// Handed to the engine, unanswered: per token, by write number, in order.
    pub(super) inflight: HashMap<Token, VecDeque<(u64, Vec<SubOp>)>>,
}

/// Staged subscription changes of one token, and of all, past which they
/// are handed to the engine without waiting for the commit.
pub(super) const SUB_OPS_PER_TOKEN: usize = 64;
pub(super) const SUB_FLUSH_AT: usize = 512;

fn op_topic(op: &SubOp) -> Option<&[u8]> {
    match op {
        SubOp::Put { topic, .. }
        | SubOp::Insert { topic, .. }
        | SubOp::Advance { topic, .. }
        | SubOp::Remove { topic } => Some(topic),
        SubOp::Clear => None,
    }
}

impl SubState {
    /// `list` with this handle's unanswered and staged changes of `token` on top.
    pub(super) fn overlay(&self, token: &Token, mut list: Vec<SubRecord>) -> Vec<SubRecord> {
        for (_, ops) in self.inflight.get(token).into_iter().flatten() {
            subs::apply(&mut list, ops);
        }
        if let Some(ops) = self.staged.get(token) {
            subs::apply(&mut list, ops);
        }
        list
    }

    /// Stages `op` (and applies it to the cached list). A position update
    /// of a topic whose last staged change set its position is merged into it.
    pub(super) fn stage(&mut self, token: &Token, op: SubOp) {
        if let Some(list) = self.cache.get_mut(token) {
            subs::apply(list, std::slice::from_ref(&op));
        }
        let ops = self.staged.entry(*token).or_default();
        if let SubOp::Advance { topic, pos } = &op {
            let last = ops.iter_mut().rev().find(|o| op_topic(o).is_none_or(|t| t == &**topic));
            if let Some(SubOp::Put { pos: p, .. } | SubOp::Advance { pos: p, .. }) = last {
                *p = (*p).max(*pos);
                return;
            }
        }
        if op == SubOp::Clear {
            self.staged_len -= ops.len();
            ops.clear();
        }
        ops.push(op);
        self.staged_len += 1;
    }

    /// Whether the staged changes are past their bounds.
    pub(super) fn due(&self, token: &Token) -> bool {
        self.staged_len >= SUB_FLUSH_AT
            || self.staged.get(token).is_some_and(|o| o.len() >= SUB_OPS_PER_TOKEN)
    }

    /// Write `n` of `token` was answered; with its list, the cache (if any) is refreshed.
    pub(super) fn on_written(&mut self, token: &Token, n: u64, r: Option<Vec<SubRecord>>) {
        if let Some(q) = self.inflight.get_mut(token) {
            q.retain(|(m, _)| *m != n);
            if q.is_empty() {
                self.inflight.remove(token);
            }
        }
        if let Some(list) = r {
            if self.cache.contains_key(token) {
                let list = self.overlay(token, list);
                self.cache.insert(*token, list);
            }
        }
    }
}
