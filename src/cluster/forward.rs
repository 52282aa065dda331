//! Forwarding between nodes: a batch of pushes for devices held by node B
//! travels from node A as one NATS core request on B's subject
//! `<prefix>.node.<B>.push`, and B answers with one batch of results. A
//! failed forward hands the pushes back with the reason, so the caller can
//! re-route or store them; each push is answered exactly once either way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use log::warn;
use tokio::sync::{oneshot, Semaphore};

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::wire::{self, Forwarded};
use super::EngineError;
use crate::proto::Status;
use crate::shard::msg::ResultMsg;
use crate::shard::requests::Outcome;

/// Batches a node answers at once; past it a batch is answered `unavailable` at once.
const MAX_SERVED_BATCHES: usize = 1024;

/// The subject node `node` serves forwarded pushes on.
pub fn push_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.node.{node}.push")
}

/// A forward that did not get a valid answer: the pushes, back to the caller.
#[derive(Debug)]
pub struct ForwardFailed {
    pub error: EngineError,
    pub pushes: Vec<Forwarded>,
}

/// Where a forward's answer goes: one result per push, in the batch's order, or the pushes back.
pub type ForwardDone = Box<dyn FnOnce(Result<Vec<ResultMsg>, ForwardFailed>) + Send>;

/// Takes each push another node forwarded here, with the [`Reply`] for its
/// outcome. Runs on the engine thread: it must not block (hand the push to
/// `Ingress` and answer from its callback).
pub type PushHandler = Arc<dyn Fn(Forwarded, Reply) + Send + Sync>;

impl EngineHandle {
    /// Sends `pushes` (1 to `cluster.max_batch`) to node `node` as one request.
    pub fn forward(&self, node: &str, pushes: Vec<Forwarded>, done: ForwardDone) {
        self.forward_within(node, pushes, self.timeout(), done)
    }

    /// [`forward`](Self::forward) with its own deadline.
    pub fn forward_within(&self, node: &str, pushes: Vec<Forwarded>, timeout: Duration, done: ForwardDone) {
        let body = match wire::encode_pushes(&pushes) {
            Ok(b) => b,
            Err(e) => {
                warn!("engine: cannot forward a batch to {node}: {e}");
                return done(Err(ForwardFailed { error: EngineError::Unavailable, pushes }));
            }
        };
        let expect: Vec<_> = pushes.iter().map(|p| (p.msg.req, p.msg.index)).collect();
        let n = pushes.len() as u64;
        let metrics = self.metrics().clone();
        let done: Done<Vec<ResultMsg>> = Box::new(move |r| match r {
            Ok(results) => {
                metrics.pushes_forwarded.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                done(Ok(results))
            }
            Err(error) => done(Err(ForwardFailed { error, pushes })),
        });
        let node = node.to_string();
        self.submit_within(Op::Forward, timeout, done, move |ctx| async move {
            let subject = push_subject(&ctx.cfg.stream_prefix, &node);
            // No responders while the node is reconnecting to NATS looks like a
            // node that is gone: ask again (nothing was delivered) for up to
            // half the deadline before giving up.
            let started = std::time::Instant::now();
            let mut backoff = Duration::from_millis(20);
            let reply = loop {
                let req = async_nats::Request::new().payload(body.clone()).timeout(Some(timeout));
                match ctx.client.send_request(subject.clone(), req).await {
                    Ok(r) => break r,
                    Err(e)
                        if e.kind() == async_nats::RequestErrorKind::NoResponders
                            && started.elapsed() + backoff < timeout / 2 =>
                    {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let results = wire::decode_results(reply.payload).map_err(|e| {
                warn!("engine: node {node} answered a bad batch: {e}");
                EngineError::BadReply
            })?;
            let matches = results.len() == expect.len()
                && results.iter().zip(&expect).all(|(r, &(req, index))| r.req == req && r.index == index);
            if !matches {
                warn!("engine: node {node} answered results that do not match the batch");
                return Err(EngineError::BadReply);
            }
            Ok(results)
        })
    }

    /// Serves pushes forwarded to this node: each goes to `handler`, and the
    /// batch is answered once every push has its outcome. A batch not
    /// complete by `cluster.request_timeout_ms` is not answered (its sender
    /// has given up and reports a timeout). Call once.
    pub fn serve_pushes(&self, handler: PushHandler) {
        self.spawn(move |ctx| async move {
            let subject = push_subject(&ctx.cfg.stream_prefix, &ctx.cfg.node_id);
            let mut sub = match ctx.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("engine: cannot serve {subject}: {e}");
                    return;
                }
            };
            let slots = Arc::new(Semaphore::new(MAX_SERVED_BATCHES));
            while let Some(msg) = sub.next().await {
                let Some(reply_to) = msg.reply.clone() else { continue };
                let permit = slots.clone().try_acquire_owned().ok();
                tokio::spawn(serve_batch(ctx.clone(), handler.clone(), msg.payload, reply_to, permit));
            }
        })
    }
}

async fn serve_batch(
    ctx: Arc<Ctx>,
    handler: PushHandler,
    payload: bytes::Bytes,
    reply_to: async_nats::Subject,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let started = std::time::Instant::now();
    let pushes = match wire::decode_pushes(payload) {
        Ok(p) => p,
        Err(e) => {
            warn!("engine: a forwarded batch does not decode: {e}");
            // An empty answer: the sender sees a bad reply at once, not a timeout.
            let _ = ctx.client.publish(reply_to, bytes::Bytes::new()).await;
            ctx.metrics.on_done(Op::Serve, started.elapsed(), Some(EngineError::BadReply));
            return;
        }
    };
    let n = pushes.len();
    let results = if permit.is_none() {
        // Too many batches in flight here: refuse this one whole, before any push is taken.
        let busy = Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: 1000 };
        pushes.iter().map(|p| ResultMsg { req: p.msg.req, index: p.msg.index, outcome: busy }).collect()
    } else {
        let (tx, rx) = oneshot::channel();
        let gather = Arc::new(Gather {
            state: Mutex::new(GatherState {
                results: pushes
                    .iter()
                    .map(|p| ResultMsg {
                        req: p.msg.req,
                        index: p.msg.index,
                        outcome: Outcome::status(Status::UNAVAILABLE),
                    })
                    .collect(),
                remaining: n,
                tx: Some(tx),
            }),
        });
        for (pos, p) in pushes.into_iter().enumerate() {
            handler(p, Reply { gather: gather.clone(), pos, answered: false });
        }
        drop(gather);
        match tokio::time::timeout(ctx.cfg.request_timeout(), rx).await {
            Ok(Ok(results)) => results,
            _ => {
                ctx.metrics.on_done(Op::Serve, started.elapsed(), Some(EngineError::Timeout));
                return;
            }
        }
    };
    let body = match wire::encode_results(&results) {
        Ok(b) => b,
        Err(_) => return,
    };
    let r = ctx.client.publish(reply_to, body).await.err().map(|_| EngineError::Unavailable);
    ctx.metrics.pushes_served.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    ctx.metrics.on_done(Op::Serve, started.elapsed(), r);
}

struct GatherState {
    results: Vec<ResultMsg>,
    remaining: usize,
    tx: Option<oneshot::Sender<Vec<ResultMsg>>>,
}

/// One served batch's outcomes, filled in by its [`Reply`]s from any thread.
struct Gather {
    state: Mutex<GatherState>,
}

/// The outcome of one forwarded push, owed to the node that sent it. Dropped
/// unanswered, it answers `unavailable`.
pub struct Reply {
    gather: Arc<Gather>,
    pos: usize,
    answered: bool,
}

impl Reply {
    pub fn send(mut self, outcome: Outcome) {
        self.set(outcome);
    }

    fn set(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.answered, true) {
            return;
        }
        let Ok(mut s) = self.gather.state.lock() else { return };
        if let Some(r) = s.results.get_mut(self.pos) {
            r.outcome = outcome;
        }
        s.remaining = s.remaining.saturating_sub(1);
        if s.remaining == 0 {
            if let Some(tx) = s.tx.take() {
                let _ = tx.send(std::mem::take(&mut s.results));
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.set(Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: 0 });
    }
}
