//! One event loop per core. Each shard owns a mio `Poll`, a slab of
//! connections, a timing wheel, its slice of the token space and its store
//! handle. Other shards reach it only through its channel plus `Waker`.
//!
//! The loop, per iteration: poll; handle socket events; drain the inbox;
//! fire timers; make the store durable (group commit) and release the
//! results that waited for it; send batched messages to other shards (one
//! channel send and at most one wake per destination); flush dirty sockets.

pub mod conn;
mod device;
mod io;
pub mod limits;
pub mod msg;
pub mod pool;
mod provider;
mod registry;
pub mod timer;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token as MioToken, Waker};
use slab::Slab;

use crate::config::Config;
use crate::metrics::{Close, Limit, Metrics, Role, ShardWriter};
use crate::proto::{Apps, Frame, GoAwayReason, Token, TokenHasher, TokenKey};
use crate::store::{Store, StoredMsg};
use conn::{Conn, F_CLOSING, F_DIRTY};
use msg::{ResultMsg, ShardMsg};
use pool::Pool;
use timer::{Entry, Wheel, TICK_MS};

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

/// State every shard reads: config, apps, the token key, and how to reach the others.
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
    /// TLS per listener, loaded once at start.
    pub tls: crate::tls::TlsPorts,
}

/// Everything needed to start one shard's thread.
pub struct ShardParts {
    pub poll: Poll,
    pub rx: Receiver<Vec<ShardMsg>>,
    pub device_listener: std::net::TcpListener,
    pub provider_listener: std::net::TcpListener,
    pub store: Box<dyn Store>,
}

/// Creates the poll, channel and waker of one shard; the handle goes into `Shared`.
pub fn prepare(
    device_listener: std::net::TcpListener,
    provider_listener: std::net::TcpListener,
    store: Box<dyn Store>,
) -> std::io::Result<(ShardParts, ShardHandle)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = ShardHandle { tx, waker, wake_pending: AtomicBool::new(false) };
    Ok((ShardParts { poll, rx, device_listener, provider_listener, store }, handle))
}

/// A push answered `delivered` whose message the store holds back (see `Shard::awaiting_ack`).
struct AwaitingAck {
    msg_id: u64,
    /// `mono_ms` past which the message is written to disk anyway.
    due_ms: u64,
    /// Taken when the ACK sends it early.
    result: Option<ResultMsg>,
}

pub struct Shard {
    index: usize,
    shared: Arc<Shared>,
    metrics: ShardWriter,
    /// Monotonic time of this loop iteration, stamped on pushes for the latency histogram.
    now: Instant,
    poll: Poll,
    rx: Receiver<Vec<ShardMsg>>,
    device_listener: Option<TcpListener>,
    provider_listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// Ready device connections by token.
    tokens: HashMap<Token, u32, BuildHasherDefault<TokenHasher>>,
    /// Unregistered tokens of this shard: app index and unix ms of the UNREGISTER.
    tombstones: HashMap<Token, (u16, u64), BuildHasherDefault<TokenHasher>>,
    /// As the hub of apps with `app % shards == index`: their logged-in provider connections.
    receipt_sinks: HashMap<u16, Vec<msg::ConnRef>>,
    receipt_rr: usize,
    /// Connections to tell GOAWAY once the store sync of this iteration is done.
    after_sync: Vec<(Entry, GoAwayReason)>,
    wheel: Wheel,
    fired: Vec<Entry>,
    /// Devices with normal-priority notifications held, due in tick order.
    held: VecDeque<(Entry, u64)>,
    dirty: Vec<u32>,
    resume: Vec<u32>,
    local: VecDeque<ShardMsg>,
    outbound: Vec<Vec<ShardMsg>>,
    /// Results of stored notifications, released after the next store sync.
    unsynced: Vec<ResultMsg>,
    /// Pushes written to a connected device whose message the store holds
    /// back, in msg_id order: each RESULT leaves at the device's ACK or, at
    /// `due`, after the sync that writes the message.
    awaiting_ack: VecDeque<AwaitingAck>,
    store: Box<dyn Store>,
    store_dirty: bool,
    pool: Pool,
    scratch: Box<[u8]>,
    msgs: Vec<StoredMsg>,
    next_conn_id: u32,
    next_msg_id: u64,
    start: Instant,
    now_tick: u64,
    /// Milliseconds since `start` at this loop iteration: the clock of the
    /// limit buckets and of `awaiting_ack`.
    mono_ms: u64,
    unix_s: u64,
    unix_ms: u64,
    accept_paused_until: Option<u64>,
    sources: limits::SourceLimiter,
    /// Per-app push buckets, indexed by app; empty when the limit is off.
    app_buckets: Vec<limits::Bucket>,
    push_rate: Option<limits::Rate>,
    drain_deadline: Option<u64>,
    drain_seq: u32,
    drain_total: u32,
}

impl Shard {
    pub fn new(index: usize, shared: Arc<Shared>, parts: ShardParts) -> std::io::Result<Shard> {
        let mut device_listener = TcpListener::from_std(parts.device_listener);
        let mut provider_listener = TcpListener::from_std(parts.provider_listener);
        parts.poll.registry().register(&mut device_listener, DEVICE_LISTENER, Interest::READABLE)?;
        parts.poll.registry().register(&mut provider_listener, PROVIDER_LISTENER, Interest::READABLE)?;
        let n = shared.handles.len();
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let next_msg_id = parts.store.max_msg_id().max(unix_ms << 16);
        let l = &shared.cfg.limits;
        let source_rate = (l.connections_per_source_per_s > 0).then(|| {
            limits::Rate::per_shard(l.connections_per_source_per_s, l.connections_per_source_burst, n)
        });
        let push_rate = (l.pushes_per_app_per_s > 0)
            .then(|| limits::Rate::per_shard(l.pushes_per_app_per_s, l.pushes_per_app_burst, n));
        let app_buckets = match push_rate {
            Some(r) => vec![limits::Bucket::full(r, 0); shared.apps.len()],
            None => Vec::new(),
        };
        Ok(Shard {
            index,
            metrics: shared.metrics.writer(index),
            now: Instant::now(),
            shared,
            poll: parts.poll,
            rx: parts.rx,
            device_listener: Some(device_listener),
            provider_listener: Some(provider_listener),
            conns: Slab::new(),
            tokens: HashMap::default(),
            tombstones: HashMap::default(),
            receipt_sinks: HashMap::new(),
            receipt_rr: 0,
            after_sync: Vec::new(),
            wheel: Wheel::new(),
            fired: Vec::new(),
            held: VecDeque::new(),
            dirty: Vec::new(),
            resume: Vec::new(),
            local: VecDeque::new(),
            outbound: (0..n).map(|_| Vec::new()).collect(),
            unsynced: Vec::new(),
            awaiting_ack: VecDeque::new(),
            store: parts.store,
            store_dirty: false,
            // At most 256 spare buffer pairs of up to 16 KiB each: a burst's
            // buffers go back to the allocator instead of staying pinned.
            pool: Pool::new(256, 16 * 1024),
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            msgs: Vec::new(),
            next_conn_id: 1,
            next_msg_id,
            start: Instant::now(),
            now_tick: 0,
            mono_ms: 0,
            unix_s: 0,
            unix_ms: 0,
            accept_paused_until: None,
            sources: limits::SourceLimiter::new(source_rate),
            app_buckets,
            push_rate,
            drain_deadline: None,
            drain_seq: 0,
            drain_total: 0,
        })
    }

    fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    fn tick_clock(&mut self) {
        self.now = Instant::now();
        self.mono_ms = self.now.duration_since(self.start).as_millis() as u64;
        self.now_tick = self.mono_ms / TICK_MS;
        self.unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.unix_s = self.unix_ms / 1000;
    }

    /// Runs until drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        self.tick_clock();
        self.load_tombstones();
        loop {
            let timeout = if self.local.is_empty() && self.resume.is_empty() {
                let mut next = (self.now_tick + 1) * TICK_MS;
                if let Some(a) = self.awaiting_ack.front() {
                    next = next.min(a.due_ms);
                }
                Duration::from_millis(next.saturating_sub(self.start.elapsed().as_millis() as u64).max(1))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    warn!("shard {}: poll failed: {e}", self.index);
                }
            }
            self.tick_clock();
            for ev in events.iter() {
                match ev.token() {
                    DEVICE_LISTENER => self.accept(true),
                    PROVIDER_LISTENER => self.accept(false),
                    WAKER => {}
                    MioToken(i) => {
                        let idx = i as u32;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(idx);
                        }
                        if ev.is_writable() {
                            self.flush(idx);
                        }
                    }
                }
            }
            self.drain_inbox();
            self.run_local();
            self.run_resumes();
            self.run_timers();
            // What needs no sync leaves first: pushes for other shards, and
            // notifications, whose ACKs can then come back during the fsync.
            self.send_outbound();
            self.flush_dirty();
            self.commit();
            self.send_outbound();
            self.flush_dirty();
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || self.now_tick >= deadline {
                    debug!("shard {} drained with {} connections left", self.index, self.conns.len());
                    self.store.release(u64::MAX);
                    let _ = self.store.sync();
                    return;
                }
            }
        }
    }

    fn drain_inbox(&mut self) {
        self.shared.handles[self.index].wake_pending.store(false, Ordering::Release);
        while let Ok(batch) = self.rx.try_recv() {
            for m in batch {
                self.on_msg(m);
            }
            self.run_local();
        }
    }

    fn run_local(&mut self) {
        while let Some(m) = self.local.pop_front() {
            self.on_msg(m);
        }
    }

    fn on_msg(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Push(p) => self.on_push(p),
            ShardMsg::Result(r) => self.on_result(r),
            ShardMsg::Adopt(a) => self.on_adopt(a),
            ShardMsg::Drain => self.start_drain(),
            ShardMsg::Receipt { app, receipt } => self.on_receipt(app, receipt),
            ShardMsg::DeliverReceipts { to, app, receipts } => self.on_deliver_receipts(to, app, receipts),
            ShardMsg::ProviderUp { app, conn } => self.on_provider_up(app, conn),
            ShardMsg::ProviderDown { app, conn } => self.on_provider_down(app, conn),
            ShardMsg::FeedbackQuery { reply, slot, app, since_ms, after } => {
                self.on_feedback_query(reply, slot, app, (since_ms, after))
            }
            ShardMsg::FeedbackPart { to, slot, entries } => self.on_feedback_part(to, slot, entries),
        }
    }

    /// Sends `m` to shard `to`: queued locally for ourselves, batched for the others.
    fn route(&mut self, to: usize, m: ShardMsg) {
        if to == self.index {
            self.local.push_back(m);
        } else {
            self.outbound[to].push(m);
        }
    }

    fn route_result(&mut self, r: ResultMsg) {
        if r.to.shard as usize == self.index {
            self.on_result(r);
        } else {
            self.outbound[r.to.shard as usize].push(ShardMsg::Result(r));
        }
    }

    /// Group commit: one store sync covers every append and ack of this
    /// iteration; only then do their RESULTs leave.
    fn commit(&mut self) {
        // Held messages whose grace ran out are written by this sync.
        let mut released = None;
        while self.awaiting_ack.front().is_some_and(|a| a.due_ms <= self.mono_ms) {
            let Some(a) = self.awaiting_ack.pop_front() else { break };
            released = Some(a.msg_id);
            self.metrics.on_held(a.result.is_none());
            if let Some(r) = a.result {
                self.unsynced.push(r);
                self.store_dirty = true;
            }
        }
        if let Some(id) = released {
            self.store.release(id);
        }
        if self.store_dirty {
            self.store_dirty = false;
            let started = Instant::now();
            let synced = self.store.sync();
            self.metrics.on_store_sync(started.elapsed(), synced.is_ok());
            self.metrics.set_stored(self.store.len() as u64);
            if let Err(e) = synced {
                warn!("shard {}: store sync failed: {e}", self.index);
                // Held messages were dropped with the rest of what was staged.
                let held = self.awaiting_ack.iter_mut().filter_map(|a| a.result.as_mut());
                for r in self.unsynced.iter_mut().chain(held) {
                    r.status = crate::proto::Status::STORE_FAILED;
                    r.msg_id = 0;
                }
            }
        }
        let results = std::mem::take(&mut self.unsynced);
        for r in results {
            self.route_result(r);
        }
        for (e, reason) in std::mem::take(&mut self.after_sync) {
            if self.conns.get(e.idx as usize).is_some_and(|c| c.id() == e.id) {
                self.goaway(e.idx, reason, 0);
            }
        }
        self.run_local();
    }

    fn send_outbound(&mut self) {
        for to in 0..self.outbound.len() {
            if !self.outbound[to].is_empty() {
                let batch = std::mem::take(&mut self.outbound[to]);
                self.metrics.on_channel_send(batch.len());
                self.shared.handles[to].send(batch);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            self.flush(idx);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn run_timers(&mut self) {
        if let Some(at) = self.accept_paused_until {
            if self.now_tick >= at {
                self.accept_paused_until = None;
                self.accept(true);
                self.accept(false);
            }
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now_tick, &mut fired);
        for e in fired.drain(..) {
            self.on_timer(e);
        }
        self.fired = fired;
        while let Some(&(e, due)) = self.held.front() {
            if due > self.now_tick {
                break;
            }
            self.held.pop_front();
            if self.conns.get(e.idx as usize).is_some_and(|c| c.id() == e.id) {
                let _ = self.deliver(e.idx);
            }
        }
        if self.now_tick.is_multiple_of(100) {
            self.shrink_maps();
        }
        if self.now_tick.is_multiple_of(10) {
            self.pump_receipts();
            match self.store.sweep_expired(self.unix_s) {
                Ok(0) => {}
                Ok(n) => {
                    debug!("shard {}: {n} expired notifications swept", self.index);
                    self.store_dirty = true;
                }
                Err(e) => warn!("shard {}: expiry sweep failed: {e}", self.index),
            }
        }
    }

    /// A connection's timer fired: close it if its deadline passed, else re-arm.
    fn on_timer(&mut self, e: Entry) {
        let Some(conn) = self.conns.get(e.idx as usize) else {
            return;
        };
        if conn.id() != e.id {
            return;
        }
        let handshake = self.cfg().limits.handshake_timeout_ms.div_ceil(TICK_MS);
        let (since, flags) = match conn {
            Conn::Device(d) => (d.since, d.flags),
            Conn::Provider(p) => (p.since, p.flags),
        };
        let ready = flags & conn::F_READY != 0;
        let limit = if flags & F_CLOSING != 0 {
            LINGER_TICKS
        } else if !ready {
            handshake
        } else {
            match conn {
                Conn::Device(d) => u64::from(d.heartbeat_s) * 1000 * 3 / 2 / TICK_MS,
                Conn::Provider(_) => self.cfg().limits.provider_idle_s * 1000 / TICK_MS,
            }
        };
        let deadline = u64::from(since) + limit.max(1);
        if self.now_tick < deadline {
            self.wheel.arm(deadline, e);
            return;
        }
        if flags & F_CLOSING != 0 {
            self.close(e.idx);
        } else if !ready {
            self.fail(e.idx, crate::proto::ProtoError::HandshakeTimeout);
        } else {
            self.goaway(e.idx, GoAwayReason::IDLE_TIMEOUT, 0);
        }
    }

    fn start_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        let timeout = self.cfg().drain.timeout_ms.div_ceil(TICK_MS);
        self.drain_deadline = Some(self.now_tick + timeout);
        for mut l in [self.device_listener.take(), self.provider_listener.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let ids: Vec<u32> = self.conns.iter().map(|(i, _)| i as u32).collect();
        self.drain_total = ids.iter().filter(|&&i| self.conns[i as usize].is_device()).count() as u32;
        for idx in ids {
            match &mut self.conns[idx as usize] {
                Conn::Device(_) => {
                    let spread = u64::from(self.cfg().drain.spread_ms);
                    let hint = spread * u64::from(self.drain_seq) / u64::from(self.drain_total.max(1));
                    self.drain_seq += 1;
                    self.goaway(idx, GoAwayReason::SHUTDOWN, hint as u32);
                }
                Conn::Provider(p) => {
                    p.flags |= conn::F_PAUSED;
                    if p.inflight == 0 {
                        self.goaway(idx, GoAwayReason::SHUTDOWN, 0);
                    }
                }
            }
        }
    }

    /// Writes `frame` to connection `idx` (flushed at the end of the iteration).
    /// A frame that would take the unsent output past `max_outbox_bytes` is not
    /// written: the peer is not reading, so it gets GOAWAY slow_consumer as its
    /// last frame and is closed, and false comes back.
    fn send_frame(&mut self, idx: u32, frame: &Frame<'_>) -> bool {
        match self.try_send_frame(idx, frame) {
            Sent::Yes => true,
            Sent::Gone => false,
            Sent::OutboxFull => {
                debug!("shard {}: connection {idx} is not reading; closing as a slow consumer", self.index);
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
        if conn.flags() & F_CLOSING != 0 {
            return Sent::Gone;
        }
        let (_, bufs) = conn.io();
        let pending = bufs.as_ref().map_or(0, |b| b.pending_write());
        if !closing_frame && pending + frame.encoded_len() > max {
            return Sent::OutboxFull;
        }
        let b = bufs.get_or_insert_with(|| self.pool.get());
        frame.encode(&mut b.wbuf);
        let flags = conn.flags_mut();
        if *flags & F_DIRTY == 0 {
            *flags |= F_DIRTY;
            self.dirty.push(idx);
        }
        Sent::Yes
    }

    /// Sends GOAWAY and starts closing.
    fn goaway(&mut self, idx: u32, reason: GoAwayReason, reconnect_ms: u32) {
        if self.send_frame(idx, &Frame::GoAway { reason, reconnect_ms }) {
            self.count_close(idx, Close::GoAway(reason));
            self.begin_close(idx);
        }
    }

    fn role_of(&self, idx: u32) -> Option<Role> {
        self.conns.get(idx as usize).map(|c| if c.is_device() { Role::Device } else { Role::Provider })
    }

    /// Counts why a connection ends, once: when it starts closing, or when it just goes.
    fn count_close(&mut self, idx: u32, why: Close) {
        let Some(conn) = self.conns.get(idx as usize) else { return };
        if conn.flags() & F_CLOSING != 0 {
            return;
        }
        let role = if conn.is_device() { Role::Device } else { Role::Provider };
        self.metrics.on_close(role, why);
    }

    /// Sends ERROR for a protocol violation and starts closing.
    fn fail(&mut self, idx: u32, e: crate::proto::ProtoError) {
        debug!("shard {}: connection {idx}: {}", self.index, e.detail());
        let text = e.detail();
        if let Some(role) = self.role_of(idx) {
            if self.conns[idx as usize].flags() & conn::F_READY == 0 {
                self.metrics.on_handshake(role, Err(e.code()));
            }
        }
        if self.send_frame(idx, &Frame::Error { code: e.code(), text: &text }) {
            self.count_close(idx, Close::Error(e.code()));
            self.begin_close(idx);
        }
    }

    /// Stops taking frames from `idx`; its last frames are flushed, the write
    /// side shut, and the socket closed at EOF or after a short linger, so the
    /// peer reads the reason instead of a reset.
    fn begin_close(&mut self, idx: u32) {
        let now = self.now_tick;
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if conn.flags() & F_CLOSING != 0 {
            return;
        }
        *conn.flags_mut() |= F_CLOSING;
        *conn.since_mut() = now as u32;
        let id = conn.id();
        self.unbind(idx);
        self.wheel.arm(now + LINGER_TICKS, Entry { idx, id });
    }

    /// Removes a device from the token map and the counters when it stops being reachable.
    fn unbind(&mut self, idx: u32) {
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let was_ready = conn.flags() & conn::F_READY != 0;
        *conn.flags_mut() &= !conn::F_READY;
        match conn {
            Conn::Device(d) if was_ready => {
                let token = d.token;
                if self.tokens.get(&token) == Some(&idx) {
                    self.tokens.remove(&token);
                }
                self.metrics.on_unready(Role::Device);
            }
            Conn::Provider(p) if was_ready => {
                let down = match p.state {
                    crate::proto::ProviderState::Ready { app } => Some((app, p.id)),
                    _ => None,
                };
                let down = down.filter(|_| self.is_receipt_sink(idx));
                self.metrics.on_unready(Role::Provider);
                if let Some((app, id)) = down {
                    let conn = msg::ConnRef { shard: self.index as u16, idx, id };
                    let hub = self.hub_of(app);
                    self.route(hub, ShardMsg::ProviderDown { app, conn });
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
        let (stream, bufs) = conn.io();
        let _ = self.poll.registry().deregister(stream);
        if let Some(b) = bufs.take() {
            self.pool.put(b);
        }
        self.shared.conns.fetch_sub(1, Ordering::AcqRel);
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_conn_id;
        self.next_conn_id = self.next_conn_id.wrapping_add(1).max(1);
        id
    }

    fn unix_now(&self) -> u64 {
        self.unix_s
    }

    /// Gives back map capacity left over from a peak (a storm, a drain), every 10 s.
    fn shrink_maps(&mut self) {
        if self.index == 0 {
            // glibc keeps freed heap (after a drain of stored notifications,
            // a storm's buffers) unless asked to return it.
            // SAFETY: malloc_trim only releases free memory; it takes no pointers.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            unsafe {
                libc::malloc_trim(0);
            }
        }
        if self.tokens.capacity() > 2 * self.tokens.len() + 1024 {
            self.tokens.shrink_to(self.tokens.len() * 5 / 4);
        }
        if self.held.capacity() > 2 * self.held.len() + 1024 {
            self.held.shrink_to_fit();
        }
    }
}
