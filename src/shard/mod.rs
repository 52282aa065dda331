//! One event loop per core. Each shard owns a mio `Poll`, a slab of
//! connections, a timing wheel, its slice of the token space and its store
//! handle. Other shards (and front ends) reach it only through its channel
//! plus `Waker`.
//!
//! The loop, per iteration (`turn`): handle socket events; drain the inbox;
//! fire timers; send what needs no durability (pushes for other shards,
//! notifications, so ACKs can come back early); commit this iteration's
//! store writes and hand their fsync to the store's sync thread; send
//! batched messages (one channel send and at most one wake per destination);
//! flush dirty sockets. RESULTs that wait for the disk leave when the
//! store's completion message arrives, in a later iteration.
//!
//! State that belongs together has its own type: `Clock`, `Router` (owners
//! and destinations), `Requests` (answers and reply targets), `Commit`
//! (results waiting for durability), `ReceiptHub`, `Tombstones`, `Drain`.

mod clock;
pub mod cluster;
pub mod commit;
pub mod conn;
mod device;
pub mod ingress;
mod io;
pub mod limits;
pub mod msg;
pub mod pool;
mod provider;
mod receipts;
pub mod requests;
pub mod router;
#[cfg(test)]
mod sim;
pub mod timer;
mod tombstones;
mod topics;
pub use topics::start_feed as topics_feed;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token as MioToken, Waker};
use slab::Slab;

use crate::config::Config;
use crate::metrics::{Close, Limit, Metrics, Role, ShardWriter};
use crate::proto::{Apps, Frame, GoAwayReason, Token, TokenHasher, TokenKey};
use crate::store::{Store, StoredMsg};
pub use clock::Clock;
use commit::{Commit, Released};
use conn::{Conn, Flags};
use msg::{ResultMsg, ShardMsg};
use pool::Pool;
use receipts::ReceiptHub;
use requests::Requests;
use router::Router;
use timer::{Entry, Wheel, TICK_MS};
use tombstones::Tombstones;

const DEVICE_LISTENER: MioToken = MioToken(usize::MAX - 1);
const PROVIDER_LISTENER: MioToken = MioToken(usize::MAX - 2);
const WAKER: MioToken = MioToken(usize::MAX - 3);
/// How long a closing connection may linger to deliver its last frame, in ticks.
const LINGER_TICKS: u64 = 20;
/// Bytes read from sockets per call; also the largest unparsed remainder a connection keeps.
const SCRATCH: usize = 64 * 1024;

/// What became of a frame handed to a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sent {
    Yes,
    /// The connection is closing or gone.
    Gone,
    /// Unsent output is at `max_outbox_bytes`.
    OutboxFull,
}

/// How another thread reaches a shard.
pub struct ShardHandle {
    tx: Sender<Vec<ShardMsg>>,
    waker: Waker,
    /// Set by a sender that woke the shard; cleared by the shard before it drains,
    /// so a burst of sends costs one wake.
    wake_pending: AtomicBool,
}

impl ShardHandle {
    pub fn send(&self, batch: Vec<ShardMsg>) {
        if self.tx.send(batch).is_err() {
            return; // the shard has exited (drained); nothing is waiting for this
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                warn!("waking shard failed: {e}");
            }
        }
    }
}

/// State every shard reads: config, apps, the token key, the node's limits,
/// and how to reach the others.
pub struct Shared {
    pub cfg: Config,
    pub apps: Apps,
    pub key: TokenKey,
    pub handles: Vec<ShardHandle>,
    pub metrics: Arc<Metrics>,
    /// Open connections across shards, against `max_conns`.
    pub conns: AtomicUsize,
    pub max_conns: usize,
    pub draining: AtomicBool,
    /// Draining shards with no connection left. Such a shard still owns its tokens, so it stays up,
    /// answering the pushes other shards' providers route to it, until every shard is counted here.
    pub drained: AtomicUsize,
    /// Front ends off the shards (the HTTP API) that may still hand them requests during a drain:
    /// the shards stay up while any holds them ([`crate::gateway::DrainHold`]).
    pub holds: AtomicUsize,
    /// TLS per listener, loaded once at start.
    pub tls: crate::tls::TlsPorts,
    /// Rate limits for the whole node.
    pub limits: limits::NodeLimits,
    /// The node's monotonic epoch: µs stamps compare across shards.
    pub epoch: Instant,
    /// Cluster mode: the engine and this node's id slot.
    pub cluster: Option<cluster::ClusterLink>,
    /// The node's topic logs and delivery counts.
    pub topics: crate::topics::TopicLog,
}

/// Everything needed to start one shard's thread.
pub struct ShardParts {
    pub poll: Poll,
    pub rx: Receiver<Vec<ShardMsg>>,
    pub device_listener: Option<std::net::TcpListener>,
    pub provider_listener: Option<std::net::TcpListener>,
    pub store: Box<dyn Store>,
}

/// Creates the poll, channel and waker of one shard; the handle goes into `Shared`.
pub fn prepare(
    device_listener: Option<std::net::TcpListener>,
    provider_listener: Option<std::net::TcpListener>,
    store: Box<dyn Store>,
) -> std::io::Result<(ShardParts, ShardHandle)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = ShardHandle { tx, waker, wake_pending: AtomicBool::new(false) };
    Ok((ShardParts { poll, rx, device_listener, provider_listener, store }, handle))
}

/// The listeners, while the shard accepts.
struct Listeners {
    device: Option<TcpListener>,
    provider: Option<TcpListener>,
    /// Tick until which accepting is paused (out of descriptors).
    paused_until: Option<u64>,
}

/// A drain in progress: GOAWAY shutdown to everyone, reconnect hints spread out.
#[derive(Default)]
struct Drain {
    /// Tick at which the shard exits whatever is left.
    deadline: Option<u64>,
    /// Devices told so far, and in all: device `seq` of `total` gets `seq/total` of the spread.
    seq: u32,
    total: u32,
    /// This shard has no connection left and is counted in `Shared::drained`.
    idle: bool,
}

/// Timers: the wheel of connection deadlines, and devices coalescing normal priority.
struct Timers {
    wheel: Wheel,
    fired: Vec<(Entry, u64)>,
    /// Devices with normal-priority notifications waiting, due in tick order.
    coalescing: VecDeque<(Entry, u64)>,
}

/// Buffers the IO paths share.
struct Scratch {
    /// Connections to flush at the end of the iteration.
    dirty: Vec<u32>,
    /// Providers unpaused, to read again.
    resume: Vec<u32>,
    pool: Pool,
    read: Box<[u8]>,
    msgs: Vec<StoredMsg>,
}

pub struct Shard {
    shared: Arc<Shared>,
    metrics: ShardWriter,
    clock: Clock,
    poll: Poll,
    rx: Receiver<Vec<ShardMsg>>,
    listeners: Listeners,
    conns: Slab<Conn>,
    /// Ready device connections by token.
    devices: HashMap<Token, u32, BuildHasherDefault<TokenHasher>>,
    router: Router,
    requests: Requests,
    commit: Commit,
    receipts: ReceiptHub,
    tombstones: Tombstones,
    timers: Timers,
    scratch: Scratch,
    store: Box<dyn Store>,
    next_conn_id: u32,
    next_msg_id: u64,
    drain: Drain,
    /// Cluster mode: claims, lookups, forwards.
    cluster: Option<Box<cluster::ClusterState>>,
    topics: topics::state::ShardTopics,
}

impl Shard {
    pub fn new(index: usize, shared: Arc<Shared>, parts: ShardParts) -> std::io::Result<Shard> {
        let clock = Clock::new(shared.epoch);
        Shard::with_clock(index, shared, parts, clock)
    }

    fn with_clock(
        index: usize,
        shared: Arc<Shared>,
        parts: ShardParts,
        clock: Clock,
    ) -> std::io::Result<Shard> {
        let register = |l: Option<std::net::TcpListener>, token| -> std::io::Result<Option<TcpListener>> {
            let Some(l) = l else { return Ok(None) };
            let mut l = TcpListener::from_std(l);
            parts.poll.registry().register(&mut l, token, Interest::READABLE)?;
            Ok(Some(l))
        };
        let listeners = Listeners {
            device: register(parts.device_listener, DEVICE_LISTENER)?,
            provider: register(parts.provider_listener, PROVIDER_LISTENER)?,
            paused_until: None,
        };
        let n = shared.handles.len();
        let mut store = parts.store;
        let next_msg_id = store.max_msg_id().max(clock.unix_ms << 16);
        // The store's sync thread reports durability back through this shard's channel.
        let hook_shared = shared.clone();
        store.set_durable_hook(Box::new(move |upto, ok| {
            hook_shared.handles[index].send(vec![ShardMsg::Durable { upto, ok }]);
        }));
        let load_shared = shared.clone();
        store.set_load_hook(Box::new(move |token| {
            load_shared.handles[index].send(vec![ShardMsg::Loaded { token }]);
        }));
        let cluster = shared.cluster.clone().map(|l| Box::new(cluster::ClusterState::new(l, &shared)));
        let mut tombstones = Tombstones::default();
        let router = Router::new(index, n);
        tombstones.load(&mut *store, &shared.apps, &router);
        Ok(Shard {
            metrics: shared.metrics.writer(index),
            clock,
            shared,
            poll: parts.poll,
            rx: parts.rx,
            listeners,
            conns: Slab::new(),
            devices: HashMap::default(),
            router,
            requests: Requests::new(index as u16),
            commit: Commit::default(),
            receipts: ReceiptHub::default(),
            tombstones,
            timers: Timers { wheel: Wheel::new(), fired: Vec::new(), coalescing: VecDeque::new() },
            scratch: Scratch {
                dirty: Vec::new(),
                resume: Vec::new(),
                // At most 256 spare buffer pairs of up to 16 KiB each: a burst's
                // buffers go back to the allocator instead of staying pinned.
                pool: Pool::new(256, 16 * 1024),
                read: vec![0u8; SCRATCH].into_boxed_slice(),
                msgs: Vec::new(),
            },
            store,
            next_conn_id: 1,
            next_msg_id,
            drain: Drain::default(),
            cluster,
            topics: Default::default(),
        })
    }

    fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    fn index(&self) -> usize {
        self.router.index()
    }

    /// Runs until drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.router.has_local() || !self.scratch.resume.is_empty() {
                Duration::ZERO
            } else {
                let mut next = (self.clock.tick + 1) * TICK_MS;
                if let Some(due) = self.commit.next_due_ms() {
                    next = next.min(due);
                }
                Duration::from_millis(self.clock.ms_until(next))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    warn!("shard {}: poll failed: {e}", self.index());
                }
            }
            self.clock.update();
            for ev in events.iter() {
                match ev.token() {
                    DEVICE_LISTENER => self.accept(true),
                    PROVIDER_LISTENER => self.accept(false),
                    WAKER => {}
                    MioToken(i) => {
                        let idx = i as u32;
                        if ev.is_read_closed() || ev.is_error() {
                            self.on_peer_closed(idx);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(idx);
                        }
                        if ev.is_writable() {
                            self.flush(idx);
                        }
                    }
                }
            }
            if self.turn() {
                return;
            }
        }
    }

    /// Everything an iteration does after the socket events; true once the
    /// shard has drained and should exit.
    fn turn(&mut self) -> bool {
        self.drain_inbox();
        self.run_local();
        self.run_resumes();
        self.run_timers();
        // What needs no sync leaves first: pushes for other shards, and
        // notifications, whose ACKs can then come back during the fsync.
        self.flush_forwards();
        self.router.flush(&self.shared.handles, &self.metrics);
        self.flush_dirty();
        let released =
            self.commit.run(&mut *self.store, self.clock.mono_ms, self.clock.now_us(), &self.metrics);
        self.release(released);
        self.metrics.set_stored(self.store.len() as u64);
        self.flush_topic_counts();
        self.run_local();
        self.flush_forwards();
        self.router.flush(&self.shared.handles, &self.metrics);
        self.flush_dirty();
        if let Some(deadline) = self.drain.deadline {
            if self.conns.is_empty() && !self.drain.idle {
                // No new connections come during a drain: once empty, this shard stays empty.
                self.drain.idle = true;
                self.shared.drained.fetch_add(1, Ordering::AcqRel);
            }
            let all_idle = self.shared.drained.load(Ordering::Acquire) == self.shared.handles.len()
                && self.shared.holds.load(Ordering::Acquire) == 0;
            if all_idle || self.clock.tick >= deadline {
                debug!("shard {} drained with {} connections left", self.index(), self.conns.len());
                let released = self.commit.finish(&mut *self.store, self.clock.now_us(), &self.metrics);
                self.release(released);
                self.router.flush(&self.shared.handles, &self.metrics);
                return true;
            }
        }
        false
    }

    fn drain_inbox(&mut self) {
        self.shared.handles[self.index()].wake_pending.store(false, Ordering::Release);
        while let Ok(batch) = self.rx.try_recv() {
            for m in batch {
                self.on_msg(m);
            }
            self.run_local();
        }
    }

    fn run_local(&mut self) {
        while let Some(m) = self.router.pop_local() {
            self.on_msg(m);
        }
    }

    fn on_msg(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Push(p) => self.on_push(p),
            ShardMsg::Result(r) => self.on_result(r),
            ShardMsg::Adopt(a) => self.on_adopt(*a),
            ShardMsg::Drain => self.start_drain(),
            ShardMsg::Receipt { app, receipt, remote } => self.on_receipt(app, receipt, remote),
            ShardMsg::ReceiptsWanted { app } => self.send_kept_receipts(app),
            ShardMsg::KeepReceipt { app, receipt } => self.keep_receipt(app, receipt),
            ShardMsg::DeliverReceipts { to, app, receipts } => self.on_deliver_receipts(to, app, receipts),
            ShardMsg::SinkUp { app, sink } => self.on_sink_up(app, sink),
            ShardMsg::SinkDown { app, sink } => self.on_sink_down(app, sink),
            ShardMsg::FeedbackQuery { req, app, since_ms, after } => {
                self.on_feedback_query(req, app, (since_ms, after))
            }
            ShardMsg::FeedbackPart { req, entries } => self.on_feedback_part(req, entries),
            ShardMsg::Durable { upto, ok } => {
                let released = self.commit.on_durable(upto, ok, self.clock.now_us(), &self.metrics);
                self.release(released);
            }
            ShardMsg::Submit(s) => self.on_submit(s),
            ShardMsg::Claimed { token, conn, result } => self.on_claimed(token, conn, result),
            ShardMsg::Replaced { token, revision } => self.on_replaced(token, revision),
            ShardMsg::Routed { token, route } => self.on_routed(token, route),
            ShardMsg::Loaded { token } => self.on_loaded(token),
            ShardMsg::TombstoneSeen { token, app, at_ms } => self.tombstones.seen(token, app, at_ms),
            ShardMsg::TopicPush { req, key, note } => self.on_topic_push(req, key, note),
            ShardMsg::TopicNote { key, msg, logged } => self.on_topic_note(key, msg, logged),
            ShardMsg::TopicManage { req, index, token, key, add } => {
                self.on_topic_manage(req, index, token, key, add)
            }
            ShardMsg::SubChanged { token, topic, add, pos } => self.on_sub_changed(token, topic, add, pos),
        }
    }

    /// Sends results (to their request's shard) and GOAWAYs that waited for the store.
    fn release(&mut self, r: Released) {
        for m in r.results {
            self.route_result(m);
        }
        for (e, reason) in r.goaways {
            if self.conns.get(e.idx as usize).is_some_and(|c| c.id() == e.id) {
                self.goaway(e.idx, reason, 0);
            }
        }
        for (e, req_id, status) in r.subscribed {
            if self.conns.get(e.idx as usize).is_some_and(|c| c.id() == e.id) {
                self.send_frame(e.idx, &Frame::SubscribeResult { req_id, status });
            }
        }
    }

    fn route_result(&mut self, r: ResultMsg) {
        if usize::from(r.req.shard) == self.index() {
            self.on_result(r);
        } else {
            self.router.send(usize::from(r.req.shard), ShardMsg::Result(r));
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.scratch.dirty);
        for &idx in &dirty {
            self.flush(idx);
        }
        dirty.clear();
        if self.scratch.dirty.is_empty() {
            self.scratch.dirty = dirty;
        }
    }

    fn run_timers(&mut self) {
        if self.listeners.paused_until.is_some_and(|at| self.clock.tick >= at) {
            self.listeners.paused_until = None;
            self.accept(true);
            self.accept(false);
        }
        let mut fired = std::mem::take(&mut self.timers.fired);
        self.timers.wheel.advance(self.clock.tick, &mut fired);
        for (e, at) in fired.drain(..) {
            self.on_timer(e, at);
        }
        self.timers.fired = fired;
        while let Some(&(e, due)) = self.timers.coalescing.front() {
            if due > self.clock.tick {
                break;
            }
            self.timers.coalescing.pop_front();
            if self.conns.get(e.idx as usize).is_some_and(|c| c.id() == e.id) {
                let _ = self.deliver(e.idx);
            }
        }
        if self.clock.tick.is_multiple_of(100) {
            self.flush_positions();
            self.shrink_maps();
        }
        if self.clock.tick.is_multiple_of(10) {
            self.pump_receipts();
            self.sweep_topics();
            self.publish_topic_counts();
            match self.store.sweep_expired(self.clock.unix_s) {
                Ok(0) => {}
                Ok(n) => {
                    debug!("shard {}: {n} expired notifications swept", self.index());
                    self.commit.mark_dirty();
                }
                Err(e) => warn!("shard {}: expiry sweep failed: {e}", self.index()),
            }
        }
    }

    /// Arms connection `idx`'s one timer entry for tick `at` (an entry armed
    /// before for another tick is then ignored when it fires).
    fn arm_timer(&mut self, idx: u32, at: u64) {
        let Some(conn) = self.conns.get_mut(idx as usize) else { return };
        let core = conn.core_mut();
        core.armed = self.timers.wheel.arm(at, Entry { idx, id: core.id }) as u32;
    }

    /// The tick at which a connection's current state ends it: the linger of
    /// a closing one, the handshake deadline, or the idle rule of a ready
    /// device (1.5 x heartbeat) or provider (`provider_idle_s`), all counted
    /// from `since`.
    fn deadline(&self, conn: &Conn) -> u64 {
        let limit = if conn.flags().contains(Flags::CLOSING) {
            LINGER_TICKS
        } else if !conn.is_ready() {
            self.cfg().limits.handshake_timeout_ms.div_ceil(TICK_MS)
        } else {
            match conn {
                Conn::Device(d) => u64::from(d.heartbeat_s) * 1000 * 3 / 2 / TICK_MS,
                Conn::Provider(_) => self.cfg().limits.provider_idle_s * 1000 / TICK_MS,
            }
        };
        u64::from(conn.core().since) + limit.max(1)
    }

    /// After a state change: arms the connection's timer at its new deadline
    /// if that comes before the one it is armed for (a later one is found
    /// when the armed entry fires).
    fn rearm_if_sooner(&mut self, idx: u32) {
        let Some(conn) = self.conns.get(idx as usize) else { return };
        let deadline = self.deadline(conn);
        if deadline < u64::from(conn.core().armed) {
            self.arm_timer(idx, deadline);
        }
    }

    /// A connection's timer fired: close it if its deadline passed, else re-arm.
    fn on_timer(&mut self, e: Entry, at: u64) {
        let Some(conn) = self.conns.get(e.idx as usize) else {
            return;
        };
        if conn.id() != e.id || u64::from(conn.core().armed) != at {
            return;
        }
        let (flags, ready) = (conn.flags(), conn.is_ready());
        let deadline = self.deadline(conn);
        if self.clock.tick < deadline {
            self.arm_timer(e.idx, deadline);
            return;
        }
        if flags.contains(Flags::CLOSING) {
            self.close(e.idx);
        } else if !ready {
            self.fail(e.idx, crate::proto::ProtoError::HandshakeTimeout);
        } else {
            self.goaway(e.idx, GoAwayReason::IDLE_TIMEOUT, 0);
        }
    }

    fn start_drain(&mut self) {
        if self.drain.deadline.is_some() {
            return;
        }
        let timeout = self.cfg().drain.timeout_ms.div_ceil(TICK_MS);
        self.drain.deadline = Some(self.clock.tick + timeout);
        for mut l in [self.listeners.device.take(), self.listeners.provider.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let ids: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        self.drain.total = ids.iter().filter(|&&i| self.conns[i as usize].is_device()).count() as u32;
        let spread = u64::from(self.cfg().drain.spread_ms);
        for idx in ids {
            match &mut self.conns[idx as usize] {
                Conn::Device(_) => {
                    let hint = spread * u64::from(self.drain.seq) / u64::from(self.drain.total.max(1));
                    self.drain.seq += 1;
                    self.goaway(idx, GoAwayReason::SHUTDOWN, hint as u32);
                }
                Conn::Provider(p) => {
                    p.core.flags |= Flags::PAUSED;
                    let id = p.core.id;
                    if self.requests.inflight(idx, id) == 0 {
                        self.goaway(idx, GoAwayReason::SHUTDOWN, 0);
                    }
                }
            }
        }
    }

    /// Writes `frame` to connection `idx` (flushed at the end of the iteration).
    /// A frame that would take the unsent output past `max_outbox_bytes`, even
    /// after a write of what the socket takes now, is not written: the peer is
    /// not reading, so it gets GOAWAY slow_consumer as its last frame and is
    /// closed, and false comes back.
    fn send_frame(&mut self, idx: u32, frame: &Frame<'_>) -> bool {
        let mut sent = self.try_send_frame(idx, frame);
        if sent == Sent::OutboxFull {
            // Reading slowly is not a fault: write what the socket takes now, then look again.
            self.flush(idx);
            sent = self.try_send_frame(idx, frame);
        }
        match sent {
            Sent::Yes => true,
            Sent::Gone => false,
            Sent::OutboxFull => {
                debug!("shard {}: connection {idx} is not reading; closing as a slow consumer", self.index());
                self.metrics.on_limit(Limit::SlowConsumer);
                self.goaway(idx, GoAwayReason::SLOW_CONSUMER, 0);
                false
            }
        }
    }

    /// Like `send_frame`, but a full outbox only refuses the frame.
    fn try_send_frame(&mut self, idx: u32, frame: &Frame<'_>) -> Sent {
        let max = self.shared.cfg.limits.max_outbox_bytes;
        let closing_frame = matches!(frame, Frame::GoAway { .. } | Frame::Error { .. });
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return Sent::Gone;
        };
        let core = conn.core_mut();
        if core.flags.intersects(Flags::CLOSING | Flags::PEER_CLOSED) {
            return Sent::Gone;
        }
        if !closing_frame && core.pending_write() + frame.encoded_len() > max {
            return Sent::OutboxFull;
        }
        let b = core.bufs.get_or_insert_with(|| self.scratch.pool.get());
        frame.encode(&mut b.wbuf);
        if !core.flags.contains(Flags::DIRTY) {
            core.flags |= Flags::DIRTY;
            self.scratch.dirty.push(idx);
        }
        Sent::Yes
    }

    /// Sends GOAWAY and starts closing.
    fn goaway(&mut self, idx: u32, reason: GoAwayReason, reconnect_ms: u32) {
        self.send_last(idx, &Frame::GoAway { reason, reconnect_ms }, Close::GoAway(reason));
    }

    /// Sends a connection's last frame (GOAWAY or ERROR) and starts closing,
    /// counting `why`. A peer that already closed its side cannot read it:
    /// that connection is freed now instead of waiting for a read that
    /// would find the EOF (a paused provider does not read).
    fn send_last(&mut self, idx: u32, frame: &Frame<'_>, why: Close) {
        if self.send_frame(idx, frame) {
            self.count_close(idx, why);
            self.begin_close(idx);
        } else if self.conns.get(idx as usize).is_some_and(|c| c.flags().contains(Flags::PEER_CLOSED)) {
            self.close_because(idx, Close::Eof);
        }
    }

    fn role_of(&self, idx: u32) -> Option<Role> {
        self.conns.get(idx as usize).map(|c| if c.is_device() { Role::Device } else { Role::Provider })
    }

    /// Counts why a connection ends, once: when it starts closing, or when it just goes.
    fn count_close(&mut self, idx: u32, why: Close) {
        let Some(conn) = self.conns.get(idx as usize) else { return };
        if conn.flags().contains(Flags::CLOSING) {
            return;
        }
        let role = if conn.is_device() { Role::Device } else { Role::Provider };
        self.metrics.on_close(role, why);
    }

    /// Sends ERROR for a protocol violation and starts closing.
    fn fail(&mut self, idx: u32, e: crate::proto::ProtoError) {
        debug!("shard {}: connection {idx}: {}", self.index(), e.detail());
        let text = e.detail();
        if let Some(conn) = self.conns.get(idx as usize) {
            if !conn.is_ready() && !conn.flags().contains(Flags::CLOSING) {
                let role = if conn.is_device() { Role::Device } else { Role::Provider };
                self.metrics.on_handshake(role, Err(e.code()));
            }
        }
        self.send_last(idx, &Frame::Error { code: e.code(), text: &text }, Close::Error(e.code()));
    }

    /// Stops taking frames from `idx`; its last frames are flushed, the write
    /// side shut, and the socket closed at EOF or after a short linger, so the
    /// peer reads the reason instead of a reset.
    fn begin_close(&mut self, idx: u32) {
        let now = self.clock.tick;
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let core = conn.core_mut();
        if core.flags.contains(Flags::CLOSING) {
            return;
        }
        core.flags |= Flags::CLOSING;
        core.since = now as u32;
        self.unbind(idx);
        self.arm_timer(idx, now + LINGER_TICKS);
    }

    /// Takes a connection out of service when it stops being reachable: a
    /// device leaves the token map and the gauge, a provider's receipt hub hears of it.
    fn unbind(&mut self, idx: u32) {
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        match conn {
            Conn::Device(d) if d.state == crate::proto::DeviceState::Ready => {
                d.state = crate::proto::DeviceState::Closed;
                let (token, id) = (d.token, d.core.id);
                self.metrics.on_unready(Role::Device);
                // Its positions go to the store while the store still holds the token.
                self.forget_topics(idx);
                if self.devices.get(&token) == Some(&idx) {
                    self.devices.remove(&token);
                    self.on_device_unbound(token, id);
                }
            }
            Conn::Provider(p) => {
                let crate::proto::ProviderState::Ready { app } = p.state else { return };
                p.state = crate::proto::ProviderState::Closed;
                self.metrics.on_unready(Role::Provider);
                if p.core.flags.contains(Flags::RECEIPTS) {
                    let sink = msg::ReceiptSink::Conn(msg::ConnRef {
                        shard: self.router.index() as u16,
                        idx,
                        id: p.core.id,
                    });
                    let hub = self.router.hub(app);
                    self.router.send(hub, ShardMsg::SinkDown { app, sink });
                }
            }
            _ => {}
        }
    }

    /// Frees the connection now, counting `why` unless it was already closing.
    fn close_because(&mut self, idx: u32, why: Close) {
        self.count_close(idx, why);
        self.close(idx);
    }

    /// Frees the connection now.
    fn close(&mut self, idx: u32) {
        if !self.conns.contains(idx as usize) {
            return;
        }
        self.unbind(idx);
        let mut conn = self.conns.remove(idx as usize);
        let core = conn.core_mut();
        core.transport.deregister(self.poll.registry());
        if let Some(b) = core.bufs.take() {
            self.scratch.pool.put(b);
        }
        self.shared.conns.fetch_sub(1, Ordering::AcqRel);
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_conn_id;
        self.next_conn_id = self.next_conn_id.wrapping_add(1).max(1);
        id
    }

    /// Gives back map capacity left over from a peak (a storm, a drain), every 10 s.
    fn shrink_maps(&mut self) {
        if self.index() == 0 {
            // glibc keeps freed heap (after a drain of stored notifications,
            // a storm's buffers) unless asked to return it.
            // SAFETY: malloc_trim only releases free memory; it takes no pointers.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            unsafe {
                libc::malloc_trim(0);
            }
        }
        self.topics.shrink();
        if self.devices.capacity() > 2 * self.devices.len() + 1024 {
            self.devices.shrink_to(self.devices.len() * 5 / 4);
        }
        if self.timers.coalescing.capacity() > 2 * self.timers.coalescing.len() + 1024 {
            self.timers.coalescing.shrink_to_fit();
        }
    }
}
