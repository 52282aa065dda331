//! Push and feedback requests in flight, whoever sent them: per-token
//! statuses gathered into one answer, and where that answer goes (a reply
//! target). A provider session is one sender; a front end's callback (HTTP,
//! a remote node) is another, and the delivery code never knows which.

use std::collections::HashMap;

use slab::Slab;

use crate::proto::frame::MAX_FEEDBACK;
use crate::proto::{Status, Token};

/// Addresses a request on the shard that answers it; `gen` tells a reused
/// slot from the request that had it before.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReqRef {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

/// One token's answer: what a RESULT carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Outcome {
    pub status: Status,
    /// The notification's id when delivered or queued, else 0.
    pub msg_id: u64,
    /// Retry-after ms for rate_limited and unavailable, unix ms for unregistered, else 0.
    pub info: u64,
}

impl Outcome {
    pub fn status(status: Status) -> Outcome {
        Outcome { status, msg_id: 0, info: 0 }
    }

    /// A TOPIC_MANAGE outcome's status, which carries a `SubStatus` code (a
    /// failed commit writes `Status::STORE_FAILED` into every waiting outcome).
    pub fn sub_status(&self) -> crate::proto::SubStatus {
        match self.status {
            Status::STORE_FAILED => crate::proto::SubStatus::STORE_FAILED,
            s => crate::proto::SubStatus(s.0),
        }
    }
}

/// A page of unregistered tokens, `(at_ms, token)` oldest first.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FeedbackPage {
    pub entries: Vec<(u64, Token)>,
    pub more: bool,
}

/// A finished request's answer.
#[derive(Debug)]
pub enum Answer {
    /// One outcome per token, in request order.
    Push(Vec<Outcome>),
    Feedback(FeedbackPage),
}

/// Which frame answers a provider's request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Form {
    /// RESULT: PUSH, PUSH_TOPIC (and FEEDBACK_RESULT for a feedback query).
    Result,
    /// MULTI_RESULT: MULTI_PUSH.
    Multi,
    /// TOPIC_MANAGE_RESULT: each outcome's status carries a `SubStatus` code.
    Manage,
}

/// Where a request's answer goes.
pub enum ReplyTo {
    /// A provider connection of this shard, answered with the frame `form` names.
    Conn { idx: u32, id: u32, req_id: u32, form: Form },
    /// A front end's callback, run on this shard's thread.
    Callback(Box<dyn FnOnce(Answer) + Send>),
}

impl ReplyTo {
    fn conn(&self) -> Option<(u32, u32)> {
        match *self {
            ReplyTo::Conn { idx, id, .. } => Some((idx, id)),
            ReplyTo::Callback(_) => None,
        }
    }
}

enum Body {
    /// `None` until the token's outcome arrives.
    Push(Vec<Option<Outcome>>),
    Feedback(Vec<(u64, Token)>),
}

struct Pending {
    gen: u32,
    reply: ReplyTo,
    /// Outcomes or feedback parts still to come.
    remaining: u32,
    /// What the request counts against its connection's in-flight window.
    cost: u32,
    body: Body,
}

/// The requests this shard answers.
pub struct Requests {
    shard: u16,
    slots: Slab<Pending>,
    next_gen: u32,
    /// Unanswered cost per provider connection `(idx, id)`: tokens of pushes,
    /// one per feedback query. Absent when zero.
    inflight: HashMap<(u32, u32), u32>,
}

impl Requests {
    pub fn new(shard: u16) -> Requests {
        Requests { shard, slots: Slab::new(), next_gen: 0, inflight: HashMap::new() }
    }

    /// Opens a push of `tokens` tokens (at least one).
    pub fn open_push(&mut self, reply: ReplyTo, tokens: usize) -> ReqRef {
        assert!(tokens > 0 && tokens <= u16::MAX as usize, "a push names 1..=65535 tokens");
        let body = Body::Push(vec![None; tokens]);
        self.open(reply, tokens as u32, tokens as u32, body)
    }

    /// Opens a feedback query answered by `parts` shards.
    pub fn open_feedback(&mut self, reply: ReplyTo, parts: usize) -> ReqRef {
        self.open(reply, parts as u32, 1, Body::Feedback(Vec::new()))
    }

    fn open(&mut self, reply: ReplyTo, remaining: u32, cost: u32, body: Body) -> ReqRef {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        if let Some(c) = reply.conn() {
            *self.inflight.entry(c).or_default() += cost;
        }
        let slot = self.slots.insert(Pending { gen, reply, remaining, cost, body }) as u32;
        ReqRef { shard: self.shard, slot, gen }
    }

    fn get(&mut self, req: ReqRef) -> Option<&mut Pending> {
        debug_assert_eq!(req.shard, self.shard, "a result went to the wrong shard");
        self.slots.get_mut(req.slot as usize).filter(|p| p.gen == req.gen)
    }

    /// Records token `index`'s outcome; the answer once every token has one.
    pub fn settle(&mut self, req: ReqRef, index: u16, outcome: Outcome) -> Option<(ReplyTo, Answer)> {
        let p = self.get(req)?;
        let Body::Push(outcomes) = &mut p.body else { return None };
        let slot = outcomes.get_mut(index as usize)?;
        if slot.is_some() {
            // Never from this node's shards; a remote node's duplicate is dropped.
            debug_assert!(false, "token {index} of a request answered twice");
            return None;
        }
        *slot = Some(outcome);
        p.remaining -= 1;
        (p.remaining == 0).then(|| self.finish(req))
    }

    /// Adds one shard's tombstones to a feedback query; the page once all have answered.
    pub fn add_part(&mut self, req: ReqRef, mut entries: Vec<(u64, Token)>) -> Option<(ReplyTo, Answer)> {
        let p = self.get(req)?;
        let Body::Feedback(all) = &mut p.body else { return None };
        all.append(&mut entries);
        p.remaining -= 1;
        (p.remaining == 0).then(|| self.finish(req))
    }

    fn finish(&mut self, req: ReqRef) -> (ReplyTo, Answer) {
        let p = self.slots.remove(req.slot as usize);
        if let Some(c) = p.reply.conn() {
            let left = self.inflight.get_mut(&c).map(|n| {
                *n -= p.cost;
                *n
            });
            if left == Some(0) {
                self.inflight.remove(&c);
            }
        }
        let answer = match p.body {
            Body::Push(v) => Answer::Push(v.into_iter().map(|o| o.expect("every token answered")).collect()),
            Body::Feedback(mut entries) => {
                entries.sort_unstable();
                let more = entries.len() > MAX_FEEDBACK;
                entries.truncate(MAX_FEEDBACK);
                Answer::Feedback(FeedbackPage { entries, more })
            }
        };
        (p.reply, answer)
    }

    /// What connection `(idx, id)` has unanswered, against its in-flight window.
    pub fn inflight(&self, idx: u32, id: u32) -> u32 {
        self.inflight.get(&(idx, id)).copied().unwrap_or(0)
    }

    /// Whether every request was answered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(req_id: u32) -> ReplyTo {
        ReplyTo::Conn { idx: 3, id: 9, req_id, form: Form::Multi }
    }

    #[test]
    fn a_multi_push_answers_once_in_request_order() {
        let mut r = Requests::new(0);
        let req = r.open_push(conn(1), 3);
        assert_eq!(r.inflight(3, 9), 3);
        let ok = |id| Outcome { status: Status::QUEUED, msg_id: id, info: 0 };
        assert!(r.settle(req, 2, ok(30)).is_none());
        assert!(r.settle(req, 0, ok(10)).is_none());
        let (reply, answer) = r.settle(req, 1, Outcome::status(Status::BAD_TOKEN)).expect("complete");
        assert!(matches!(reply, ReplyTo::Conn { req_id: 1, .. }));
        let Answer::Push(v) = answer else { panic!("a push answer") };
        assert_eq!(v.iter().map(|o| o.msg_id).collect::<Vec<_>>(), [10, 0, 30]);
        assert_eq!(r.inflight(3, 9), 0);
        assert!(r.is_empty());
        assert!(r.settle(req, 0, ok(1)).is_none(), "a late result for a finished request is dropped");
    }

    #[test]
    fn a_reused_slot_does_not_take_an_old_result() {
        let mut r = Requests::new(0);
        let old = r.open_push(conn(1), 1);
        assert!(r.settle(old, 0, Outcome::status(Status::QUEUED)).is_some());
        let new = r.open_push(conn(2), 1);
        assert_eq!(new.slot, old.slot);
        assert!(r.settle(old, 0, Outcome::status(Status::QUEUED)).is_none());
        assert!(r.settle(new, 0, Outcome::status(Status::QUEUED)).is_some());
    }

    #[test]
    fn feedback_merges_parts_sorted_and_pages() {
        let mut r = Requests::new(1);
        let req = r.open_feedback(ReplyTo::Callback(Box::new(|_| {})), 2);
        assert_eq!(r.inflight(3, 9), 0, "callbacks have no connection window");
        let t = |b| Token([b; 24]);
        let many: Vec<(u64, Token)> = (0..MAX_FEEDBACK as u64 + 1).map(|i| (100 + i, t(1))).collect();
        assert!(r.add_part(req, many).is_none());
        let (_, answer) = r.add_part(req, vec![(5, t(2))]).expect("both parts in");
        let Answer::Feedback(page) = answer else { panic!("a feedback answer") };
        assert!(page.more);
        assert_eq!(page.entries.len(), MAX_FEEDBACK);
        assert_eq!(page.entries[0], (5, t(2)), "oldest first across shards");
    }
}
