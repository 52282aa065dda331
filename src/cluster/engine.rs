//! The engine bridge: one thread per node owns the NATS client on a small
//! tokio current-thread runtime. Callers (shards) never block on it: each
//! operation is queued on a bounded channel with its deadline and completes
//! exactly once, through its callback, with its result or an [`EngineError`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use log::{info, warn};
use tokio::sync::mpsc;

use super::metrics::{EngineMetrics, Op};
use crate::config::ClusterConfig;
use crate::proto::Status;

/// Why an engine operation did not complete. Every one maps to the push
/// status `unavailable`; they differ in what the caller may assume.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EngineError {
    /// The engine's queue was full: nothing was sent.
    Busy,
    /// The deadline passed: the operation may or may not have taken effect.
    Timeout,
    /// Nobody serves the subject (a forward to a node that is gone): nothing was delivered.
    NoResponders,
    /// NATS refused or the connection failed before an answer: nothing is known to have happened.
    Unavailable,
    /// The peer answered bytes that do not decode or do not match the request.
    BadReply,
    /// The engine stopped before the operation completed.
    Stopped,
}

impl EngineError {
    /// The push status a push failed this way gets.
    pub fn status(self) -> Status {
        Status::UNAVAILABLE
    }

    /// Whether the operation surely had no effect on the peer: a push failed
    /// this way may be re-routed or stored without risk of a second delivery.
    pub fn surely_not_done(self) -> bool {
        matches!(self, EngineError::Busy | EngineError::NoResponders)
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineError::Busy => "busy",
            EngineError::Timeout => "timeout",
            EngineError::NoResponders => "no_responders",
            EngineError::Unavailable => "unavailable",
            EngineError::BadReply => "bad_reply",
            EngineError::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for EngineError {}

impl From<async_nats::RequestError> for EngineError {
    fn from(e: async_nats::RequestError) -> EngineError {
        use async_nats::RequestErrorKind as K;
        match e.kind() {
            K::NoResponders => EngineError::NoResponders,
            K::TimedOut => EngineError::Timeout,
            _ => EngineError::Unavailable,
        }
    }
}

/// An operation's completion. It runs once, on the engine thread, or on the
/// caller's thread before the call returns when the engine's queue is full
/// or the engine stopped. It must not block: send the result on (a shard's
/// channel and its `Waker`).
pub type Done<T> = Box<dyn FnOnce(Result<T, EngineError>) + Send>;

/// What the engine's tasks share: the client, JetStream, the node's config.
pub(crate) struct Ctx {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub cfg: ClusterConfig,
    pub metrics: Arc<EngineMetrics>,
    /// The route table's bucket, made on first use.
    pub routes: tokio::sync::OnceCell<jetstream::kv::Store>,
    /// Apps whose receipts this node takes, each with the stop of its subscription.
    pub receipt_subs: Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// The offline queue's stream, made on first use.
    pub queue: tokio::sync::OnceCell<jetstream::stream::Stream>,
    /// The tombstone bucket, made on first use.
    pub tombs: tokio::sync::OnceCell<jetstream::kv::Store>,
    /// The topic stream, made by the topic feed.
    pub topics: tokio::sync::OnceCell<jetstream::stream::Stream>,
    /// The subscription bucket, made on first use.
    pub subs: tokio::sync::OnceCell<jetstream::kv::Store>,
    /// Subscription updates waiting for their token's round (see `subs`).
    pub subs_rounds: Mutex<std::collections::HashMap<crate::proto::Token, Vec<super::subs::Waiter>>>,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Job {
    task: Box<dyn FnOnce(Arc<Ctx>) -> Task + Send>,
    /// Completes the job without running it (queue full, engine stopped).
    fail: Box<dyn FnOnce(EngineError) + Send>,
}

enum Cmd {
    Job(Job),
    Stop,
}

/// Holds a completion until it runs; dropped unrun (a task cancelled at
/// stop), it completes with `Stopped`.
struct Slot<T> {
    done: Mutex<Option<Done<T>>>,
    op: Op,
    started: Instant,
    metrics: Arc<EngineMetrics>,
}

impl<T> Slot<T> {
    fn complete(&self, r: Result<T, EngineError>) {
        let done = self.done.lock().map(|mut d| d.take()).unwrap_or(None);
        if let Some(done) = done {
            self.metrics.on_done(self.op, self.started.elapsed(), r.as_ref().err().copied());
            // A completion that panics must not take the engine (or a Drop at stop) with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(r))).is_err() {
                log::error!("engine: a completion callback panicked");
            }
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        self.complete(Err(EngineError::Stopped));
    }
}

/// A cloneable handle for submitting engine operations (one per shard, say).
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    metrics: Arc<EngineMetrics>,
    timeout: Duration,
    node_id: Arc<str>,
    connected: Arc<AtomicBool>,
}

impl EngineHandle {
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The default deadline of an operation (`cluster.request_timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the client is connected to a NATS server now (for /readyz).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Runs `f` on the engine thread under the default deadline.
    pub(crate) fn submit<T, F, Fut>(&self, op: Op, done: Done<T>, f: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Ctx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        self.submit_within(op, self.timeout, done, f)
    }

    /// Runs `f` on the engine thread; past `timeout` from now (time in the
    /// queue counts) `done` gets `Timeout` and `f` is dropped.
    pub(crate) fn submit_within<T, F, Fut>(&self, op: Op, timeout: Duration, done: Done<T>, f: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Ctx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let slot =
            Arc::new(Slot { done: Mutex::new(Some(done)), op, started, metrics: self.metrics.clone() });
        let run_slot = slot.clone();
        let job = Job {
            task: Box::new(move |ctx| {
                Box::pin(async move {
                    let r =
                        tokio::time::timeout_at(deadline, f(ctx)).await.unwrap_or(Err(EngineError::Timeout));
                    run_slot.complete(r);
                })
            }),
            fail: Box::new(move |e| slot.complete(Err(e))),
        };
        self.send(job);
    }

    /// Runs a long-lived task (a responder) with no deadline and no completion.
    pub(crate) fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Ctx>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.send(Job { task: Box::new(move |ctx| Box::pin(f(ctx))), fail: Box::new(|_| {}) });
    }

    fn send(&self, job: Job) {
        match self.tx.try_send(Cmd::Job(job)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Cmd::Job(j))) => (j.fail)(EngineError::Busy),
            Err(mpsc::error::TrySendError::Closed(Cmd::Job(j))) => (j.fail)(EngineError::Stopped),
            Err(_) => {}
        }
    }
}

/// The engine of one node: its thread, stopped and joined on drop (pending
/// operations then complete with `Stopped`).
pub struct Engine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread and its client. It does not wait for a NATS
    /// server: the client connects (and reconnects) in the background, and
    /// operations meanwhile fail at their deadline.
    pub fn start(cfg: &ClusterConfig) -> Result<Engine, String> {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let metrics = Arc::new(EngineMetrics::default());
        let connected = Arc::new(AtomicBool::new(false));
        let handle = EngineHandle {
            tx,
            metrics: metrics.clone(),
            timeout: cfg.request_timeout(),
            node_id: cfg.node_id.as_str().into(),
            connected: connected.clone(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name(format!("engine-{}", cfg.node_id))
            .spawn(move || run(cfg, rx, metrics, connected, ready_tx))
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine { handle, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the engine thread died at start".into()),
        }
    }

    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }
}

impl std::ops::Deref for Engine {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        &self.handle
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Not from inside a runtime: the engine is owned by plain threads.
        let _ = self.handle.tx.blocking_send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    cfg: ClusterConfig,
    mut rx: mpsc::Receiver<Cmd>,
    metrics: Arc<EngineMetrics>,
    connected: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the engine runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let on_event = connected.clone();
        let opts = async_nats::ConnectOptions::new()
            .name(format!("pushgate-{}", cfg.node_id))
            .retry_on_initial_connect()
            // `cluster.nats` lists servers in order of preference (the local one first).
            .retain_servers_order()
            .max_reconnects(None)
            .connection_timeout(cfg.request_timeout())
            .request_timeout(Some(cfg.request_timeout()))
            // Fail over quickly: the deadline of each operation bounds the wait anyway.
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 50).min(1000)))
            .event_callback(move |ev| {
                let c = on_event.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => {
                            c.store(true, Ordering::Relaxed);
                            info!("engine: connected to NATS");
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            c.store(false, Ordering::Relaxed);
                            warn!("engine: disconnected from NATS");
                        }
                        other => warn!("engine: NATS {other}"),
                    }
                }
            });
        let client = match opts.connect(cfg.nats.as_slice()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!("cluster.nats: {e}")));
                return;
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(cfg.request_timeout());
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            js,
            cfg,
            metrics,
            routes: Default::default(),
            receipt_subs: Default::default(),
            queue: Default::default(),
            tombs: Default::default(),
            topics: Default::default(),
            subs: Default::default(),
            subs_rounds: Default::default(),
        });
        let _ = ready.send(Ok(()));
        while let Some(Cmd::Job(job)) = rx.recv().await {
            tokio::spawn((job.task)(ctx.clone()));
        }
        if ctx.client.connection_state() == async_nats::connection::State::Connected {
            let _ = tokio::time::timeout(Duration::from_millis(500), client.flush()).await;
        }
    });
    // Dropping the runtime cancels what is in flight: each completion runs with `Stopped`.
    drop(rt);
}
