//! How a front end that is not a shard connection (the HTTP API; a cluster
//! bridge) reaches the router: it hands a request with a callback to a shard
//! over that shard's channel, and the shard runs `submit` for it exactly as
//! for a provider session. The callback runs on the shard's thread and must
//! not block (send the answer on, e.g. through a oneshot channel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::msg::{ReceiptSink, ShardMsg, Submit};
use super::requests::{Answer, FeedbackPage, Outcome};
use super::router::hub_of;
use super::Shared;
use crate::proto::{Apps, Note, Status, Token};
use crate::store::Receipt;

/// A cloneable handle on the shards for front ends.
#[derive(Clone)]
pub struct Ingress {
    shared: Arc<Shared>,
    next: Arc<AtomicUsize>,
}

impl Ingress {
    pub fn new(shared: Arc<Shared>) -> Ingress {
        Ingress { shared, next: Arc::new(AtomicUsize::new(0)) }
    }

    pub fn apps(&self) -> &Apps {
        &self.shared.apps
    }

    /// Retry hint (ms) while the node drains.
    fn drain_retry_ms(&self) -> Option<u64> {
        self.shared.draining.load(Ordering::Acquire).then(|| u64::from(self.shared.cfg.drain.spread_ms))
    }

    /// Pushes `note` to each token of app index `app`; `done` gets one
    /// outcome per token, in order, from a shard's thread.
    pub fn push(&self, app: u16, tokens: Vec<Token>, note: Note, done: Box<dyn FnOnce(Vec<Outcome>) + Send>) {
        self.push_batch(std::iter::once((app, tokens, note, done)));
    }

    /// Several pushes as [`Ingress::push`], in one channel send (and at
    /// most one wake) per shard that gets any.
    pub fn push_batch<I>(&self, pushes: I)
    where
        I: IntoIterator<Item = (u16, Vec<Token>, Note, Box<dyn FnOnce(Vec<Outcome>) + Send>)>,
    {
        if let Some(retry) = self.drain_retry_ms() {
            for (_, tokens, _, done) in pushes {
                let o = Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: retry };
                done(vec![o; tokens.len()]);
            }
            return;
        }
        let n = self.shared.handles.len();
        let mut per_shard: Vec<Vec<ShardMsg>> = (0..n).map(|_| Vec::new()).collect();
        for (app, tokens, note, done) in pushes {
            // The first token's owner: a single push then needs no hop between shards.
            let to = tokens.first().map_or(0, |t| t.shard(n));
            let done: Box<dyn FnOnce(Answer) + Send> = Box::new(move |a| {
                if let Answer::Push(v) = a {
                    done(v)
                }
            });
            per_shard[to].push(ShardMsg::Submit(Submit::Push { app, tokens, note, done }));
        }
        for (to, batch) in per_shard.into_iter().enumerate() {
            if !batch.is_empty() {
                self.shared.handles[to].send(batch);
            }
        }
    }

    /// `app`'s unregistered tokens after `(since_ms, after)`, as FEEDBACK pages them.
    pub fn feedback(
        &self,
        app: u16,
        since_ms: u64,
        after: Token,
        done: Box<dyn FnOnce(FeedbackPage) + Send>,
    ) {
        let n = self.shared.handles.len();
        let to = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let done: Box<dyn FnOnce(Answer) + Send> = Box::new(move |a| {
            if let Answer::Feedback(p) = a {
                done(p)
            }
        });
        self.shared.handles[to].send(vec![ShardMsg::Submit(Submit::Feedback { app, since_ms, after, done })]);
    }

    /// PUSH_TOPIC of `note` to `topic` of app index `app`: `done` gets its outcome.
    pub fn push_topic(&self, app: u16, topic: &[u8], note: Note, done: Box<dyn FnOnce(Outcome) + Send>) {
        let done: Box<dyn FnOnce(Answer) + Send> = Box::new(move |a| {
            if let Answer::Push(v) = a {
                if let Some(o) = v.first() {
                    done(*o)
                }
            }
        });
        let to = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.handles.len();
        let topic = topic.into();
        self.shared.handles[to].send(vec![ShardMsg::Submit(Submit::PushTopic { app, topic, note, done })]);
    }

    /// TOPIC_MANAGE: adds (`add`) or removes `tokens` (1..=1000) to or from
    /// `topic`; `done` gets one status per token, in order.
    pub fn manage_topic(
        &self,
        app: u16,
        add: bool,
        topic: &[u8],
        tokens: Vec<Token>,
        done: Box<dyn FnOnce(Vec<crate::proto::SubStatus>) + Send>,
    ) {
        let done: Box<dyn FnOnce(Answer) + Send> = Box::new(move |a| {
            if let Answer::Push(v) = a {
                done(v.iter().map(Outcome::sub_status).collect())
            }
        });
        let to = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.handles.len();
        let topic = topic.into();
        let m = Submit::TopicManage { app, add, topic, tokens, done };
        self.shared.handles[to].send(vec![ShardMsg::Submit(m)]);
    }

    /// `(sent, acked)` of a recent topic message (TOPIC_STATS).
    pub fn topic_stats(&self, msg_id: u64) -> Option<(u64, u64)> {
        self.shared.topics.counts(msg_id)
    }

    /// Receipts of `app` go to `sink` (bounded) until its receiver is dropped,
    /// under the rule of SUBSCRIBE_RECEIPTS.
    pub fn subscribe_receipts(&self, app: u16, sink: Sender<Receipt>) {
        let hub = hub_of(app, self.shared.handles.len());
        self.shared.handles[hub].send(vec![ShardMsg::SinkUp { app, sink: ReceiptSink::Channel(sink) }]);
    }
}
