//! Device sessions on their owner shard: HELLO and hand-off, WELCOME,
//! delivery from the store in id order within the in-flight window, ACKs,
//! and the owner's half of a push.

use std::sync::atomic::Ordering;

use log::{debug, warn};
use mio::{Interest, Token as MioToken};

use super::conn::{Conn, Device, F_CLOSING, F_HELD, F_READY};
use super::io::Flow;
use super::msg::{Adopt, PushMsg, ResultMsg, ShardMsg};
use super::timer::Entry;
use super::{Sent, Shard};
use crate::metrics::{Limit, Role};
use crate::proto::frame::FLAG_RECEIPT;
use crate::proto::{
    on_device_frame, DeviceEvent, DeviceState, Frame, GoAwayReason, ProtoError, RawFrame, Status, Token,
    PRIORITY_HIGH,
};
use crate::store::{StoreError, StoredMsg};

/// Bit set in `Device::flags` when the last delivery stopped at the window or
/// the outbox limit, so an ACK or a drained socket should look for more.
const F_BACKLOG: u8 = 32;

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
        let state = if d.flags & F_READY != 0 { DeviceState::Ready } else { DeviceState::AwaitHello };
        if state == DeviceState::Ready {
            d.since = self.now_tick as u32;
        }
        match on_device_frame(state, raw) {
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
                let owner = token.shard(self.shared.handles.len());
                if owner == self.index {
                    self.register_device(idx, token, app, h.keepalive_s);
                    return Flow::Continue;
                }
                let Some((stream, tls)) = self.take_stream(idx) else {
                    return Flow::Stop;
                };
                debug!("shard {}: device handed to shard {owner}", self.index);
                let adopt =
                    Adopt { stream, tls, token, app, keepalive_s: h.keepalive_s, leftover: rest.to_vec() };
                self.route(owner, ShardMsg::Adopt(adopt));
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
        }
    }

    /// Detaches a handshaking device's socket (and TLS session) from this shard's poll and slab.
    fn take_stream(
        &mut self,
        idx: u32,
    ) -> Option<(mio::net::TcpStream, Option<Box<rustls::ServerConnection>>)> {
        if !matches!(self.conns.get(idx as usize), Some(Conn::Device(_))) {
            return None;
        }
        let Conn::Device(mut d) = self.conns.remove(idx as usize) else {
            return None;
        };
        let _ = self.poll.registry().deregister(&mut d.stream);
        if let Some(b) = d.bufs.take() {
            self.pool.put(b);
        }
        Some((d.stream, d.tls))
    }

    /// A device whose HELLO another shard read, arriving at its owner.
    pub(super) fn on_adopt(&mut self, a: Adopt) {
        let mut stream = a.stream;
        if self.drain_deadline.is_some() {
            let mut buf = Vec::new();
            Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 0 }.encode(&mut buf);
            if let Some(mut tls) = a.tls {
                crate::tls::write_pass(&mut tls, &mut stream, &buf);
            } else {
                let _ = std::io::Write::write(&mut stream, &buf);
            }
            self.shared.conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let id = self.next_id();
        let entry = self.conns.vacant_entry();
        let idx = entry.key() as u32;
        let since = self.now_tick as u32;
        let conn = entry.insert(Conn::Device(Device {
            stream,
            bufs: None,
            tls: a.tls,
            token: a.token,
            cursor: 0,
            id,
            since,
            heartbeat_s: 0,
            unacked: None,
            app: a.app,
            flags: 0,
        }));
        let (stream, _) = conn.io();
        if let Err(e) = self.poll.registry().register(
            stream,
            MioToken(idx as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("shard {}: register adopted device: {e}", self.index);
            self.close(idx);
            return;
        }
        self.wheel.arm(self.now_tick + 1, Entry { idx, id });
        self.register_device(idx, a.token, a.app, a.keepalive_s);
        if !a.leftover.is_empty() {
            let mut scratch = std::mem::take(&mut self.scratch);
            let n = a.leftover.len().min(scratch.len());
            scratch[..n].copy_from_slice(&a.leftover[..n]);
            self.scratch = scratch;
            self.on_readable_with(idx, n);
        }
    }

    /// Binds a device to its token, replacing any older connection, then sends
    /// WELCOME and whatever is stored for it.
    fn register_device(&mut self, idx: u32, token: Token, app: u16, keepalive_s: u16) {
        let max_devices = self.shared.cfg.limits.max_devices;
        if max_devices > 0 && !self.tokens.contains_key(&token) {
            let m = &self.shared.metrics;
            let devices: i64 = (0..m.shards()).map(|i| m.shard(i).devices()).sum();
            if devices >= max_devices as i64 {
                self.metrics.on_limit(Limit::ServerFull);
                let retry = self.shared.cfg.limits.server_full_retry_ms;
                self.goaway(idx, GoAwayReason::SERVER_FULL, retry);
                return;
            }
        }
        self.lift_tombstone(&token);
        let hb = &self.shared.cfg.heartbeat;
        let heartbeat_s = if keepalive_s == 0 { hb.default_s } else { keepalive_s.clamp(hb.min_s, hb.max_s) };
        if let Some(old) = self.tokens.insert(token, idx) {
            if old != idx {
                // The old connection is no longer bound; it only gets told why.
                if let Some(Conn::Device(d)) = self.conns.get_mut(old as usize) {
                    d.flags &= !F_READY;
                    self.metrics.on_unready(Role::Device);
                }
                self.goaway(old, GoAwayReason::REPLACED, 0);
            }
        }
        let missed = self.store.take_missed(&token).unwrap_or_else(|e| {
            warn!("shard {}: reading missed count: {e}", self.index);
            0
        });
        let now = self.now_tick as u32;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        d.token = token;
        d.app = app;
        d.heartbeat_s = heartbeat_s;
        d.flags |= F_READY | F_BACKLOG;
        d.since = now;
        self.metrics.on_ready(Role::Device);
        self.metrics.on_handshake(Role::Device, Ok(()));
        if self.send_frame(idx, &Frame::Welcome { token, heartbeat_s, missed }) {
            let _ = self.deliver(idx);
        }
    }

    /// Writes stored notifications newer than the connection's cursor, up to
    /// the in-flight window and the outbox limit. What does not fit stays in
    /// the store and goes out as ACKs arrive and the socket drains.
    pub(super) fn deliver(&mut self, idx: u32) -> Delivery {
        let window = self.shared.cfg.limits.device_max_in_flight;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return Delivery::Done;
        };
        d.flags &= !F_HELD;
        if d.flags & F_READY == 0 || d.flags & F_CLOSING != 0 {
            return Delivery::Done;
        }
        let room = (window as usize).saturating_sub(d.inflight());
        if room == 0 {
            d.flags |= F_BACKLOG;
            self.metrics.on_limit(Limit::DeviceWindowFull);
            return Delivery::WindowFull;
        }
        let mut msgs = std::mem::take(&mut self.msgs);
        msgs.clear();
        if let Err(e) = self.store.pending(&d.token, d.cursor, self.unix_s, room, &mut msgs) {
            warn!("shard {}: reading stored notifications: {e}", self.index);
        }
        let mut outcome = if msgs.len() == room { Delivery::WindowFull } else { Delivery::Done };
        let mut sent = 0;
        for m in &msgs {
            let frame =
                Frame::Notify { msg_id: m.msg_id, kind: m.kind, priority: m.priority, payload: &m.payload };
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
                d.on_sent(m.msg_id, m.flags & FLAG_RECEIPT != 0);
            }
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            if outcome == Delivery::Done {
                d.flags &= !F_BACKLOG;
            } else {
                d.flags |= F_BACKLOG;
            }
        }
        self.metrics.on_notify(sent);
        msgs.clear();
        self.msgs = msgs;
        outcome
    }

    /// After a flush emptied a device's outbox: send what the outbox limit held back.
    /// Returns true if it wrote more, so the caller flushes again.
    pub(super) fn on_drained(&mut self, idx: u32) -> bool {
        match self.conns.get(idx as usize) {
            Some(Conn::Device(d)) if d.flags & F_BACKLOG != 0 => {
                let _ = self.deliver(idx);
                self.conns.get(idx as usize).is_some_and(|c| c.flags() & super::conn::F_DIRTY != 0)
            }
            _ => false,
        }
    }

    /// Holds normal-priority notifications briefly so several share one write.
    fn hold(&mut self, idx: u32) {
        let delay = self.shared.cfg.limits.normal_priority_delay_ms.div_ceil(super::TICK_MS);
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if d.flags & super::conn::F_DIRTY != 0 {
            // Already writing to this device in this iteration: the radio is up anyway.
            let _ = self.deliver(idx);
            return;
        }
        if d.flags & F_HELD == 0 {
            d.flags |= F_HELD;
            let e = Entry { idx, id: d.id };
            self.held.push_back((e, self.now_tick + delay));
        }
    }

    fn on_ack(&mut self, idx: u32, msg_id: u64) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let Some(receipt) = d.on_acked(msg_id) else {
            return; // not in flight here: a duplicate, or never sent on this connection
        };
        let backlog = d.flags & F_BACKLOG != 0;
        let (token, app) = (d.token, d.app);
        if receipt {
            self.emit_receipt(app, token, msg_id);
        }
        match self.store.ack(&token, msg_id) {
            Ok(true) => {
                self.store_dirty = true;
                // Acked before its grace ran out: the message need not reach the disk.
                if let Ok(i) = self.awaiting_ack.binary_search_by_key(&msg_id, |a| a.msg_id) {
                    if let Some(r) = self.awaiting_ack[i].result.take() {
                        self.route_result(r);
                    }
                }
            }
            Ok(false) => {}
            Err(e) => warn!("shard {}: ack: {e}", self.index),
        }
        self.metrics.on_ack();
        if backlog {
            let _ = self.deliver(idx);
        }
    }

    /// The owner shard's half of a push: id, store, deliver or hold, result.
    pub(super) fn on_push(&mut self, m: PushMsg) {
        self.next_msg_id += 1;
        let msg_id = self.next_msg_id;
        let conn = self.tokens.get(&m.token).copied();
        let storable = m.expiry != 0 && u64::from(m.expiry) >= self.unix_now();
        let mut result = ResultMsg {
            to: m.reply,
            req_id: m.req_id,
            slot: m.slot,
            index: m.index,
            status: Status::QUEUED,
            msg_id,
            info: 0,
        };
        if let Some(at_ms) = self.unregistered_at(&m.token) {
            result.status = Status::UNREGISTERED;
            result.msg_id = 0;
            result.info = at_ms;
            self.route_result(result);
            return;
        }
        if storable {
            let stored = StoredMsg {
                msg_id,
                kind: m.kind,
                priority: m.priority,
                flags: m.flags,
                expiry: m.expiry,
                collapse: m.collapse,
                payload: m.payload,
            };
            if let Err(e) = self.store.append(&m.token, stored) {
                if e != StoreError::Full {
                    warn!("shard {}: store append: {e}", self.index);
                }
                result.status = Status::STORE_FAILED;
                result.msg_id = 0;
                self.route_result(result);
                return;
            }
            self.store_dirty = true;
            if let Some(idx) = conn {
                if m.priority == PRIORITY_HIGH {
                    if self.deliver(idx) == Delivery::OutboxFull && self.outbox_stuck(idx) {
                        // A device that reads nothing gets a bounded outbox; past it,
                        // it is disconnected and its notifications stay stored.
                        self.goaway(idx, GoAwayReason::SLOW_CONSUMER, 0);
                    }
                } else {
                    self.hold(idx);
                }
                let mut written = false;
                if let Some(Conn::Device(d)) = self.conns.get(idx as usize) {
                    if d.cursor >= msg_id {
                        result.status = Status::DELIVERED;
                        written = true;
                        self.metrics.observe_delivery(self.now.saturating_duration_since(m.read_at));
                    } else if d.flags & F_HELD != 0 {
                        result.status = Status::DELIVERED;
                    }
                }
                let grace = self.shared.cfg.store.ack_grace_ms;
                if written && grace > 0 && self.store.hold(&m.token, msg_id) {
                    let due_ms = self.mono_ms + grace;
                    self.awaiting_ack.push_back(super::AwaitingAck { msg_id, due_ms, result: Some(result) });
                    return;
                }
            }
            self.unsynced.push(result);
            return;
        }
        // Now or never: written only if the device is here with room in its window.
        result.status = Status::NOT_DELIVERED;
        result.msg_id = 0;
        if let Some(idx) = conn {
            // Older stored notifications go first, to keep the order; only look
            // in the store if some may be waiting.
            let waiting = matches!(self.conns.get(idx as usize),
                Some(Conn::Device(d)) if d.flags & (F_BACKLOG | F_HELD) != 0);
            if waiting {
                let _ = self.deliver(idx);
            }
            let window = self.shared.cfg.limits.device_max_in_flight;
            if let Some(Conn::Device(d)) = self.conns.get(idx as usize) {
                if d.inflight() < window as usize && d.flags & F_READY != 0 {
                    let frame =
                        Frame::Notify { msg_id, kind: m.kind, priority: m.priority, payload: &m.payload };
                    if self.try_send_frame(idx, &frame) == Sent::Yes {
                        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                            d.on_sent(msg_id, m.flags & FLAG_RECEIPT != 0);
                        }
                        self.metrics.on_notify(1);
                        self.metrics.observe_delivery(self.now.saturating_duration_since(m.read_at));
                        result.status = Status::DELIVERED;
                        result.msg_id = msg_id;
                    }
                }
            }
        }
        self.route_result(result);
    }
}

impl Shard {
    /// Whether the outbox is full and the socket took nothing of it since the
    /// last flush: the device is not reading, as opposed to catching up.
    fn outbox_stuck(&mut self, idx: u32) -> bool {
        self.flush(idx);
        let max = self.shared.cfg.limits.max_outbox_bytes;
        match self.conns.get_mut(idx as usize) {
            Some(c) => {
                let (_, bufs) = c.io();
                bufs.as_ref().is_some_and(|b| b.pending_write() * 2 > max)
            }
            None => false,
        }
    }
}
