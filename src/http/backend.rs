//! The seam between the HTTP front end and the gateway core: the [`Backend`] trait every front end
//! pushes through, and its implementation on the router's [`Ingress`].

pub use crate::proto::Note;
use crate::shard::ingress::Ingress;
pub use crate::shard::requests::{FeedbackPage, Outcome};

pub type Done<T> = Box<dyn FnOnce(T) + Send + 'static>;

/// One push of a [`Backend::push_batch`]: what [`Backend::push`] takes.
pub struct PushJob {
    pub app: u16,
    pub tokens: Vec<crate::proto::Token>,
    pub note: Note,
    pub done: Done<Vec<Outcome>>,
}

pub trait Backend: Send + Sync + 'static {
    /// Pushes `note` to each token (1..=1000) of app index `app`; `done` is called once, from another
    /// thread, with one outcome per token in request order. Validation (payload size, kind, priority,
    /// flags), token checks, rate limits, draining (UNAVAILABLE, info = retry ms) happen behind this call.
    fn push(&self, app: u16, tokens: Vec<crate::proto::Token>, note: Note, done: Done<Vec<Outcome>>);
    /// Several pushes at once, each as [`Backend::push`]; the router takes them in one channel send
    /// per shard. By default, one `push` each.
    fn push_batch(&self, jobs: Vec<PushJob>) {
        for j in jobs {
            self.push(j.app, j.tokens, j.note, j.done);
        }
    }
    /// The app's unregistered tokens after the cursor (since_ms, after), as the FEEDBACK frame.
    fn feedback(&self, app: u16, since_ms: u64, after: crate::proto::Token, done: Done<FeedbackPage>);
    /// Receipts of `app` go to `sink` until it is dropped/disconnected; the same hand-out rule as
    /// SUBSCRIBE_RECEIPTS (protocol.md §10.1). A full sink means the receipt goes back to be kept.
    fn subscribe_receipts(&self, app: u16, sink: crossbeam_channel::Sender<crate::store::Receipt>);
    /// PUSH_TOPIC (protocol.md §10.4): `done` gets its one outcome. By default: `unavailable`.
    fn push_topic(&self, _app: u16, _topic: &[u8], _note: Note, done: Done<Outcome>) {
        done(Outcome { status: crate::proto::Status::UNAVAILABLE, msg_id: 0, info: 1000 })
    }
    /// TOPIC_MANAGE: adds (`add`) or removes 1..=1000 tokens; one status per token. By default: `unavailable`.
    fn manage_topic(
        &self,
        _app: u16,
        _add: bool,
        _topic: &[u8],
        tokens: Vec<crate::proto::Token>,
        done: Done<Vec<crate::proto::SubStatus>>,
    ) {
        done(vec![crate::proto::SubStatus::UNAVAILABLE; tokens.len()])
    }
    /// TOPIC_STATS: `(sent, acked)` of a recent topic message of this node. By default: unknown.
    fn topic_stats(&self, _msg_id: u64) -> Option<(u64, u64)> {
        None
    }
}

/// The router: each call goes to a shard over its channel, like a provider session's request.
impl Backend for Ingress {
    fn push(&self, app: u16, tokens: Vec<crate::proto::Token>, note: Note, done: Done<Vec<Outcome>>) {
        Ingress::push(self, app, tokens, note, done)
    }

    fn push_batch(&self, jobs: Vec<PushJob>) {
        Ingress::push_batch(self, jobs.into_iter().map(|j| (j.app, j.tokens, j.note, j.done)))
    }

    fn feedback(&self, app: u16, since_ms: u64, after: crate::proto::Token, done: Done<FeedbackPage>) {
        Ingress::feedback(self, app, since_ms, after, done)
    }

    fn subscribe_receipts(&self, app: u16, sink: crossbeam_channel::Sender<crate::store::Receipt>) {
        Ingress::subscribe_receipts(self, app, sink)
    }

    fn push_topic(&self, app: u16, topic: &[u8], note: Note, done: Done<Outcome>) {
        Ingress::push_topic(self, app, topic, note, done)
    }

    fn manage_topic(
        &self,
        app: u16,
        add: bool,
        topic: &[u8],
        tokens: Vec<crate::proto::Token>,
        done: Done<Vec<crate::proto::SubStatus>>,
    ) {
        Ingress::manage_topic(self, app, add, topic, tokens, done)
    }

    fn topic_stats(&self, msg_id: u64) -> Option<(u64, u64)> {
        Ingress::topic_stats(self, msg_id)
    }
}
