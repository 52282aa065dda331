//! How push requests cross between the HTTP runtime and the shards: in batches, both ways.
//!
//! A handler does not hand its push to the backend itself: it queues it here and the pump task,
//! which runs after the handlers that became ready in the same turn of the runtime, hands the
//! whole queue over in one [`Backend::push_batch`] (one channel send and at most one wake per
//! shard). Answers come back the same way: the backend's callback (on a shard's thread) queues the
//! outcomes here, and only the first answer of a batch wakes the runtime; the pump then completes
//! each handler's oneshot on the runtime's own thread, where a wake costs no system call. So under
//! load a thousand requests in flight cost a few wakes per batch, not two per request, and a
//! connection's responses leave in one write.
//!
//! Bounded: each queue holds at most one entry per request in flight (`max_connections` ×
//! `max_concurrent_streams`); a handler that timed out leaves a dropped receiver, whose answer the
//! pump discards.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{oneshot, Notify};

use super::backend::{Backend, Outcome, PushJob};
use crate::proto::{Note, Token};

type Reply = oneshot::Sender<Vec<Outcome>>;
/// A queued push: app, tokens, note, and where its outcomes go.
type Queued = (u16, Vec<Token>, Note, Reply);

/// The queues between the handlers, the pump task and the backend.
pub struct Crossing {
    backend: Arc<dyn Backend>,
    submits: Mutex<Vec<Queued>>,
    submitted: Notify,
    answers: Mutex<Vec<(Reply, Vec<Outcome>)>>,
    answered: Notify,
}

impl Crossing {
    pub fn new(backend: Arc<dyn Backend>) -> Arc<Crossing> {
        Arc::new(Crossing {
            backend,
            submits: Mutex::new(Vec::new()),
            submitted: Notify::new(),
            answers: Mutex::new(Vec::new()),
            answered: Notify::new(),
        })
    }

    /// Queues a push of `note` to `tokens` of app `app`; the receiver gets one outcome per token
    /// (or is dropped unanswered if the backend drops the request).
    pub fn push(&self, app: u16, tokens: Vec<Token>, note: Note) -> oneshot::Receiver<Vec<Outcome>> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut q = self.submits.lock().unwrap_or_else(PoisonError::into_inner);
            q.push((app, tokens, note, tx));
            q.len() == 1
        };
        if first {
            self.submitted.notify_one();
        }
        rx
    }

    fn answer(&self, tx: Reply, outcomes: Vec<Outcome>) {
        let first = {
            let mut q = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            q.push((tx, outcomes));
            q.len() == 1
        };
        if first {
            self.answered.notify_one();
        }
    }

    /// Hands the queued pushes to the backend in one batch.
    fn flush_submits(self: &Arc<Self>) {
        let batch = std::mem::take(&mut *self.submits.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        let jobs = batch
            .into_iter()
            .map(|(app, tokens, note, tx)| {
                let me = self.clone();
                PushJob { app, tokens, note, done: Box::new(move |v| me.answer(tx, v)) }
            })
            .collect();
        self.backend.push_batch(jobs);
    }

    /// Completes the handlers whose answers came.
    fn deliver(&self) {
        let batch = std::mem::take(&mut *self.answers.lock().unwrap_or_else(PoisonError::into_inner));
        for (tx, v) in batch {
            let _ = tx.send(v);
        }
    }

    /// The pump: runs on the HTTP runtime for as long as it does (shutdown drops it after the
    /// connections have drained, so requests accepted before shutdown still get their answers).
    pub async fn pump(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.submitted.notified() => self.flush_submits(),
                _ = self.answered.notified() => self.deliver(),
            }
        }
    }
}
