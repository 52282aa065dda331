//! Device sessions on their owner shard: HELLO and hand-off, WELCOME,
//! delivery from the store in id order within the in-flight window, ACKs,
//! and the owner's half of a push.

use std::sync::atomic::Ordering;

use log::{debug, warn};

use super::conn::{Conn, Core, Device, Flags, Transport};
use super::io::Flow;
use super::msg::{Adopt, PushMsg, ResultMsg, ShardMsg};
use super::requests::Outcome;
use super::timer::Entry;
use super::{Sent, Shard};
use crate::metrics::{Limit, Role};
use crate::proto::{
    on_device_frame, DeviceEvent, DeviceState, Frame, GoAwayReason, ProtoError, RawFrame, Status, Token,
    PRIORITY_HIGH,
};
use crate::store::{Loaded, StoreError, StoredMsg};

/// Why `deliver` stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Delivery {
    /// Everything pending was written.
    Done,
    /// The in-flight window is full; ACKs will make room.
    WindowFull,
    /// The outbox limit is reached; a drained socket will make room.
    OutboxFull,
}

impl Shard {
    /// One frame from a device. `rest` is what follows it, needed if the
    /// connection moves to the shard that owns its token.
    pub(super) fn on_device_frame(&mut self, idx: u32, raw: RawFrame<'_>, rest: &[u8]) -> Flow {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return Flow::Stop;
        };
        if d.state == DeviceState::Ready {
            d.core.since = self.clock.tick as u32;
        }
        match on_device_frame(d.state, raw) {
            Err(e) => {
                self.fail(idx, e);
                Flow::Stop
            }
            Ok(DeviceEvent::Hello(h)) => {
                let Some(app) = self.shared.apps.index_of(h.app_id) else {
                    self.fail(idx, ProtoError::UnknownApp);
                    return Flow::Stop;
                };
                let token = self.shared.key.derive(h.app_id, h.secret);
                let owner = self.router.owner(&token);
                if owner == self.index() {
                    self.register_device(idx, token, app, h.keepalive_s);
                    return Flow::Continue;
                }
                let Some((transport, tls)) = self.take_transport(idx) else {
                    return Flow::Stop;
                };
                debug!("shard {}: device handed to shard {owner}", self.index());
                let adopt =
                    Adopt { transport, tls, token, app, keepalive_s: h.keepalive_s, leftover: rest.to_vec() };
                self.router.send(owner, ShardMsg::Adopt(Box::new(adopt)));
                Flow::HandedOff
            }
            Ok(DeviceEvent::Ping) => {
                self.send_frame(idx, &Frame::Pong);
                Flow::Continue
            }
            Ok(DeviceEvent::Ack(msg_id)) => {
                self.on_ack(idx, msg_id);
                Flow::Continue
            }
            Ok(DeviceEvent::Unregister) => {
                self.on_unregister(idx);
                Flow::Stop
            }
            Ok(DeviceEvent::Subscribe { req_id, on, topic }) => {
                self.on_subscribe(idx, req_id, on, topic);
                Flow::Continue
            }
        }
    }

    /// Detaches a handshaking device's transport (and TLS session) from this shard's poll and slab.
    fn take_transport(&mut self, idx: u32) -> Option<(Transport, Option<Box<rustls::ServerConnection>>)> {
        if !matches!(self.conns.get(idx as usize), Some(Conn::Device(_))) {
            return None;
        }
        let Conn::Device(mut d) = self.conns.remove(idx as usize) else {
            return None;
        };
        d.core.transport.deregister(self.poll.registry());
        if let Some(b) = d.core.bufs.take() {
            self.scratch.pool.put(b);
        }
        Some((d.core.transport, d.core.tls))
    }

    /// A device whose HELLO another shard read, arriving at its owner.
    pub(super) fn on_adopt(&mut self, a: Adopt) {
        let mut transport = a.transport;
        if self.drain.deadline.is_some() {
            let mut buf = Vec::new();
            Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 0 }.encode(&mut buf);
            if let Some(mut tls) = a.tls {
                crate::tls::write_pass(&mut tls, &mut transport, &buf);
            } else {
                let _ = std::io::Write::write(&mut transport, &buf);
            }
            self.shared.conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let core = Core::new(transport, a.tls, self.next_id(), self.clock.tick as u32);
        let Some(idx) = self.attach(Conn::Device(Device::new(core))) else { return };
        self.register_device(idx, a.token, a.app, a.keepalive_s);
        if !a.leftover.is_empty() {
            let mut scratch = std::mem::take(&mut self.scratch.read);
            let n = a.leftover.len().min(scratch.len());
            scratch[..n].copy_from_slice(&a.leftover[..n]);
            self.scratch.read = scratch;
            self.on_readable_with(idx, n);
        }
    }

    /// Binds a device to its token, replacing any older connection, then sends
    /// WELCOME and whatever is stored for it.
    fn register_device(&mut self, idx: u32, token: Token, app: u16, keepalive_s: u16) {
        let max_devices = self.shared.cfg.limits.max_devices;
        if max_devices > 0 && !self.devices.contains_key(&token) {
            let m = &self.shared.metrics;
            let devices: i64 = (0..m.shards()).map(|i| m.shard(i).devices()).sum();
            if devices >= max_devices as i64 {
                self.metrics.on_limit(Limit::ServerFull);
                let retry = self.shared.cfg.limits.server_full_retry_ms;
                self.goaway(idx, GoAwayReason::SERVER_FULL, retry);
                return;
            }
        }
        if self.tombstones.lift(&token, &mut *self.store) {
            self.commit.mark_dirty();
        }
        let hb = &self.shared.cfg.heartbeat;
        let heartbeat_s = if keepalive_s == 0 { hb.default_s } else { keepalive_s.clamp(hb.min_s, hb.max_s) };
        if let Some(old) = self.devices.insert(token, idx) {
            if old != idx {
                // The old connection is no longer bound; it only gets told why.
                if let Some(Conn::Device(d)) = self.conns.get_mut(old as usize) {
                    d.state = DeviceState::Closed;
                    self.metrics.on_unready(Role::Device);
                }
                self.forget_topics(old);
                self.goaway(old, GoAwayReason::REPLACED, 0);
            }
        }
        let now = self.clock.tick as u32;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        d.token = token;
        d.app = app;
        d.heartbeat_s = heartbeat_s;
        d.state = DeviceState::Ready;
        d.core.flags |= Flags::BACKLOG;
        d.core.since = now;
        self.metrics.on_ready(Role::Device);
        self.metrics.on_handshake(Role::Device, Ok(()));
        self.rearm_if_sooner(idx);
        // WELCOME waits for what the store must fetch and for the cluster's route claim.
        let mut wait = Flags::empty();
        if self.store.load(&token) == Loaded::Pending {
            wait |= Flags::LOADING;
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            d.core.flags |= wait;
        }
        if self.start_claim(idx, token) {
            if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                d.core.flags |= Flags::CLAIMING;
            }
        }
        self.maybe_welcome(idx);
    }

    /// Sends WELCOME (with the missed count) and the backlog, once the
    /// device's store load and route claim are done.
    pub(super) fn maybe_welcome(&mut self, idx: u32) {
        let Some(Conn::Device(d)) = self.conns.get(idx as usize) else {
            return;
        };
        if d.state != DeviceState::Ready || d.core.flags.intersects(Flags::LOADING | Flags::CLAIMING) {
            return;
        }
        let (token, heartbeat_s) = (d.token, d.heartbeat_s);
        let missed = self.store.take_missed(&token).unwrap_or_else(|e| {
            warn!("shard {}: reading missed count: {e}", self.index());
            0
        });
        let missed = missed.saturating_add(self.load_topics(idx));
        if self.send_frame(idx, &Frame::Welcome { token, heartbeat_s, missed }) {
            let _ = self.deliver(idx);
        }
    }

    /// Writes stored notifications newer than the connection's cursor, up to
    /// the in-flight window and the outbox limit. What does not fit stays in
    /// the store and goes out as ACKs arrive and the socket drains.
    pub(super) fn deliver(&mut self, idx: u32) -> Delivery {
        let window = self.shared.cfg.limits.device_max_in_flight as usize;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return Delivery::Done;
        };
        d.core.flags.remove(Flags::COALESCING);
        if d.state != DeviceState::Ready || d.core.flags.intersects(Flags::NO_NOTIFY) {
            return Delivery::Done;
        }
        assert!(d.inflight() <= window, "a device's window overflowed");
        let room = window - d.inflight();
        if room == 0 {
            d.core.flags |= Flags::BACKLOG;
            self.metrics.on_limit(Limit::DeviceWindowFull);
            return Delivery::WindowFull;
        }
        let (token, rescan) = (d.token, d.core.flags.contains(Flags::RESCAN));
        // A rescan reads from the start and skips what is in flight here.
        let (after, max) = if rescan { (0, room + d.inflight()) } else { (d.cursor, room) };
        let mut msgs = std::mem::take(&mut self.scratch.msgs);
        msgs.clear();
        if let Err(e) = self.store.pending(&token, after, self.clock.unix_s, max, &mut msgs) {
            warn!("shard {}: reading stored notifications: {e}", self.index());
        }
        if rescan {
            if let Some(Conn::Device(d)) = self.conns.get(idx as usize) {
                msgs.retain(|m| !d.is_in_flight(m.msg_id));
            }
            msgs.truncate(room);
        }
        let mut outcome = if msgs.len() == room { Delivery::WindowFull } else { Delivery::Done };
        let mut sent = 0;
        for m in &msgs {
            let n = &m.note;
            let frame =
                Frame::Notify { msg_id: m.msg_id, kind: n.kind, priority: n.priority, payload: &n.payload };
            match self.try_send_frame(idx, &frame) {
                Sent::Yes => {}
                Sent::Gone => break,
                Sent::OutboxFull => {
                    outcome = Delivery::OutboxFull;
                    break;
                }
            }
            sent += 1;
            if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                d.on_sent(m.msg_id, n.wants_receipt());
            }
        }
        if let Some(last) = msgs[..sent].last() {
            self.store.mark_sent(&token, last.msg_id);
        }
        self.metrics.on_notify(sent as u64);
        msgs.clear();
        self.scratch.msgs = msgs;
        if outcome == Delivery::Done {
            outcome = self.deliver_topics(idx);
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            d.core.flags.set(Flags::BACKLOG, outcome != Delivery::Done);
        }
        outcome
    }

    /// After a flush emptied a device's outbox: send what the outbox limit held back.
    /// Returns true if it wrote more, so the caller flushes again.
    pub(super) fn on_drained(&mut self, idx: u32) -> bool {
        match self.conns.get(idx as usize) {
            Some(Conn::Device(d)) if d.core.flags.contains(Flags::BACKLOG) => {
                let _ = self.deliver(idx);
                self.conns.get(idx as usize).is_some_and(|c| c.flags().contains(Flags::DIRTY))
            }
            _ => false,
        }
    }

    /// Lets normal-priority notifications wait briefly so several share one write.
    fn coalesce(&mut self, idx: u32) {
        let delay = self.shared.cfg.limits.normal_priority_delay_ms.div_ceil(super::TICK_MS);
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if d.core.flags.contains(Flags::DIRTY) {
            // Already writing to this device in this iteration: the radio is up anyway.
            let _ = self.deliver(idx);
            return;
        }
        if !d.core.flags.contains(Flags::COALESCING) {
            d.core.flags |= Flags::COALESCING;
            let e = Entry { idx, id: d.core.id };
            self.timers.coalescing.push_back((e, self.clock.tick + delay));
        }
    }

    fn on_ack(&mut self, idx: u32, msg_id: u64) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let Some(receipt) = d.on_acked(msg_id) else {
            return; // not in flight here: a duplicate, or never sent on this connection
        };
        let backlog = d.core.flags.contains(Flags::BACKLOG);
        let (token, app) = (d.token, d.app);
        if receipt {
            self.emit_receipt(app, token, msg_id);
        }
        if crate::proto::topic::is_topic_id(msg_id) {
            self.on_topic_acked(idx, msg_id);
            self.metrics.on_ack();
            if backlog {
                let _ = self.deliver(idx);
            }
            return;
        }
        match self.store.ack(&token, msg_id) {
            Ok(true) => {
                self.commit.mark_dirty();
                // Acked before its grace ran out: the message need not reach the disk.
                if let Some(r) = self.commit.acked(msg_id) {
                    self.route_result(r);
                }
            }
            Ok(false) => {}
            Err(e) => warn!("shard {}: ack: {e}", self.index()),
        }
        self.metrics.on_ack();
        if backlog {
            let _ = self.deliver(idx);
        }
    }

    fn observe_delivery(&self, read_at_ns: u64) {
        let took = self.clock.now_ns().saturating_sub(read_at_ns);
        self.metrics.observe_delivery(std::time::Duration::from_nanos(took));
    }

    /// The owner shard's half of a push: id, store, deliver or coalesce, result.
    pub(super) fn on_push(&mut self, m: PushMsg) {
        let Some(m) = self.route_push(m) else {
            return; // waits for its route; forwarded or handled here then
        };
        let msg_id = self.fresh_msg_id();
        let conn = self.devices.get(&m.token).copied();
        let mut result = ResultMsg { req: m.req, index: m.index, outcome: Outcome::status(Status::QUEUED) };
        if let Some(at_ms) = self.tombstones.unregistered_at(&m.token) {
            result.outcome = Outcome { status: Status::UNREGISTERED, msg_id: 0, info: at_ms };
            self.route_result(result);
            return;
        }
        if m.note.is_storable(self.clock.unix_s) {
            let priority = m.note.priority;
            match self.store.append(&m.token, StoredMsg { msg_id, note: m.note }) {
                Ok(capped) => {
                    for _ in 0..capped {
                        self.metrics.on_limit(Limit::QueueOverflow);
                    }
                }
                Err(e) => {
                    if e != StoreError::Full {
                        warn!("shard {}: store append: {e}", self.index());
                    }
                    result.outcome = Outcome::status(Status::STORE_FAILED);
                    self.route_result(result);
                    return;
                }
            }
            result.outcome.msg_id = msg_id;
            if let Some(idx) = conn {
                if priority == PRIORITY_HIGH {
                    if self.deliver(idx) == Delivery::OutboxFull && self.outbox_stuck(idx) {
                        // A device that reads nothing gets a bounded outbox; past it,
                        // it is disconnected and its notifications stay stored.
                        self.metrics.on_limit(Limit::SlowConsumer);
                        self.goaway(idx, GoAwayReason::SLOW_CONSUMER, 0);
                    }
                } else {
                    self.coalesce(idx);
                }
                let mut written = false;
                let window = self.shared.cfg.limits.device_max_in_flight as usize;
                if let Some(Conn::Device(d)) = self.conns.get(idx as usize) {
                    if d.cursor >= msg_id {
                        result.outcome.status = Status::DELIVERED;
                        written = true;
                        self.observe_delivery(m.read_at_ns);
                    } else if d.core.flags.contains(Flags::COALESCING)
                        && !d.core.flags.intersects(Flags::NO_NOTIFY)
                        && d.inflight() < window
                    {
                        // Written when the coalescing delay ends (it is stored meanwhile).
                        result.outcome.status = Status::DELIVERED;
                    }
                }
                let grace = self.shared.cfg.store.ack_grace_ms;
                if written && grace > 0 && self.store.hold(&m.token, msg_id) {
                    self.commit.await_ack(msg_id, self.clock.mono_ms + grace, result);
                    return;
                }
            }
            self.commit.after_write(result);
            return;
        }
        // Now or never: written only if the device is here with room in its window.
        result.outcome.status = Status::NOT_DELIVERED;
        if let Some(idx) = conn {
            // Older stored notifications go first, to keep the order; only look
            // in the store if some may be waiting.
            let waiting = matches!(self.conns.get(idx as usize),
                Some(Conn::Device(d)) if d.core.flags.intersects(Flags::BACKLOG | Flags::COALESCING));
            if waiting {
                let _ = self.deliver(idx);
            }
            let window = self.shared.cfg.limits.device_max_in_flight as usize;
            let room = matches!(self.conns.get(idx as usize),
                Some(Conn::Device(d)) if d.inflight() < window && d.state == DeviceState::Ready
                    && !d.core.flags.intersects(Flags::NO_NOTIFY));
            if room {
                let n = &m.note;
                let frame = Frame::Notify { msg_id, kind: n.kind, priority: n.priority, payload: &n.payload };
                if self.try_send_frame(idx, &frame) == Sent::Yes {
                    if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                        d.on_sent(msg_id, n.wants_receipt());
                    }
                    self.metrics.on_notify(1);
                    self.observe_delivery(m.read_at_ns);
                    result.outcome = Outcome { status: Status::DELIVERED, msg_id, info: 0 };
                }
            }
        }
        self.route_result(result);
    }

    /// Whether the outbox is full and the socket took nothing of it since the
    /// last flush: the device is not reading, as opposed to catching up.
    fn outbox_stuck(&mut self, idx: u32) -> bool {
        self.flush(idx);
        let max = self.shared.cfg.limits.max_outbox_bytes;
        self.conns.get(idx as usize).is_some_and(|c| c.core().pending_write() * 2 > max)
    }
}
