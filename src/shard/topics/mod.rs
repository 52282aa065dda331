//! Topics on a shard: device subscriptions and positions, the fan-out of
//! topic messages to this shard's connected subscribers, catch-up from the
//! node's topic log (`crate::topics`), and the provider requests.

mod cluster;
mod provider;
pub mod state;

pub use cluster::start_feed;

use log::warn;

use super::conn::{Conn, Flags};
use super::device::Delivery;
use super::timer::Entry;
use super::{Sent, Shard};
use crate::proto::topic::{classify, TopicName, BROADCAST};
use crate::proto::{DeviceState, Frame, SubStatus};
use crate::store::SubRecord;
use crate::topics::{TopicKey, TopicMsg};
use state::DeviceTopics;

impl Shard {
    /// Before WELCOME: reads the device's subscriptions and broadcast
    /// position, and moves each position past what the catch-up cap skips.
    /// Returns how many topic messages were skipped (added to `missed`).
    pub(super) fn load_topics(&mut self, idx: u32) -> u32 {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return 0 };
        let (token, app) = (d.token, d.app);
        // A change made while the device was being welcomed (a provider's
        // TOPIC_MANAGE) is already here; the store's records join it.
        let mut topics = d.take_topics().unwrap_or_default();
        let mut records = Vec::new();
        if let Err(e) = self.store.subscriptions(&token, &mut records) {
            warn!("shard {}: reading subscriptions: {e}", self.index());
        }
        let broadcast = TopicKey::new(app, BROADCAST.as_bytes());
        if self.shared.topics.has_log(&broadcast) && !records.iter().any(|r| *r.topic == *broadcast.name) {
            // No broadcast yet: every unexpired one in the log is owed.
            records.push(SubRecord { topic: broadcast.name.clone(), pos: 0 });
        }
        let cap = self.shared.cfg.limits.topic_catchup_cap;
        let now = self.clock.unix_s;
        let mut missed = 0u32;
        for r in records {
            if topics.find(&r.topic).is_some() {
                continue;
            }
            let key = TopicKey { app, name: r.topic };
            let backlog = self.shared.topics.backlog(&key, r.pos, now, cap);
            let mut pos = r.pos;
            if backlog.skip_to > pos {
                missed = missed.saturating_add((backlog.count - cap) as u32);
                pos = backlog.skip_to;
                self.put_position(&token, &key.name, pos);
            }
            topics.add(self.topics.intern(&key.name), pos, backlog.count > 0);
            self.topics.join(key, idx);
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            if !topics.subs.is_empty() || !topics.inflight.is_empty() {
                d.put_topics(topics);
            }
        }
        missed
    }

    fn put_position(&mut self, token: &crate::proto::Token, topic: &[u8], pos: u64) {
        match self.store.put_subscription(token, topic, pos) {
            Ok(()) => self.commit.mark_dirty(),
            Err(e) => warn!("shard {}: writing a topic position: {e}", self.index()),
        }
    }

    /// Writes logged topic messages the device is behind on, within its
    /// window and outbox, oldest first per topic.
    pub(super) fn deliver_topics(&mut self, idx: u32) -> Delivery {
        let window = self.shared.cfg.limits.device_max_in_flight as usize;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return Delivery::Done };
        let Some(mut topics) = d.take_topics() else { return Delivery::Done };
        let app = d.app;
        let mut outcome = Delivery::Done;
        let mut msgs: Vec<TopicMsg> = Vec::new();
        for si in 0..topics.subs.len() {
            if !topics.subs[si].behind {
                continue;
            }
            let room = match self.conns.get(idx as usize) {
                Some(Conn::Device(d)) => window - d.inflight(),
                _ => 0,
            };
            if room == 0 {
                outcome = Delivery::WindowFull;
                break;
            }
            let key = TopicKey::new(app, &topics.subs[si].name);
            msgs.clear();
            let all =
                self.shared.topics.read_after(&key, topics.subs[si].sent, self.clock.unix_s, room, &mut msgs);
            let mut wrote = 0;
            for m in &msgs {
                match self.write_topic_notify(idx, &mut topics, si, m, true) {
                    Sent::Yes => wrote += 1,
                    Sent::Gone => break,
                    Sent::OutboxFull => {
                        outcome = Delivery::OutboxFull;
                        break;
                    }
                }
            }
            if wrote < msgs.len() {
                break;
            }
            if all {
                topics.subs[si].behind = false;
            } else {
                outcome = Delivery::WindowFull;
                break;
            }
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            d.put_topics(topics);
        }
        outcome
    }

    /// Writes one TOPIC_NOTIFY for subscription `si` and records it in flight.
    /// An expiry-0 message (not `logged`) moves no position: it is never sent again.
    fn write_topic_notify(
        &mut self,
        idx: u32,
        topics: &mut DeviceTopics,
        si: usize,
        m: &TopicMsg,
        logged: bool,
    ) -> Sent {
        let sub = &mut topics.subs[si];
        let n = &m.note;
        let frame = Frame::TopicNotify {
            msg_id: m.id,
            kind: n.kind,
            priority: n.priority,
            topic: &sub.name,
            payload: &n.payload,
        };
        let sent = self.try_send_frame(idx, &frame);
        if sent == Sent::Yes {
            if logged {
                sub.sent = m.id;
                topics.inflight.push((m.id, sub.slot));
            } else {
                topics.inflight.push((m.id, state::NO_SLOT));
            }
            if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                d.on_sent_topic(m.id, n.wants_receipt());
            }
            self.topics.count_sent(m.id);
            self.metrics.on_notify(1);
        }
        sent
    }

    /// A topic message for this shard's subscribers of `key` (every device
    /// of the app for the broadcast topic): written at once where the window
    /// and outbox allow; a logged one is otherwise read from the log later.
    pub(super) fn on_topic_note(&mut self, key: TopicKey, msg: TopicMsg, logged: bool) {
        let targets: Vec<u32> = if key.is_broadcast() {
            self.devices.values().copied().collect()
        } else {
            self.topics.index.get(&key).map(|s| s.iter().copied().collect()).unwrap_or_default()
        };
        let window = self.shared.cfg.limits.device_max_in_flight as usize;
        for idx in targets {
            let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { continue };
            if d.app != key.app || d.state != DeviceState::Ready || d.core.flags.intersects(Flags::NO_NOTIFY)
            {
                // Not welcomed yet: its catch-up, read at WELCOME, sees the log.
                continue;
            }
            let room = d.inflight() < window;
            let topics = d.topics_or_default();
            let si = match topics.subs.iter().position(|s| *s.name == *key.name) {
                Some(si) => si,
                None if !key.is_broadcast() => continue, // a stale index entry: not subscribed any more
                None => {
                    // This device's first broadcast: it is owed the whole log.
                    topics.add(self.topics.intern(&key.name), 0, logged);
                    if logged {
                        d.core.flags |= Flags::BACKLOG;
                        let _ = self.deliver(idx);
                        continue;
                    }
                    topics.subs.len() - 1
                }
            };
            let sub = &mut topics.subs[si];
            if msg.id <= sub.sent {
                continue; // already read from the log
            }
            if sub.behind || !room {
                if logged {
                    sub.behind = true;
                    d.core.flags |= Flags::BACKLOG;
                }
                continue;
            }
            let Some(mut topics) = d.take_topics() else { continue };
            let sent = self.write_topic_notify(idx, &mut topics, si, &msg, logged);
            if sent == Sent::OutboxFull && logged {
                topics.subs[si].behind = true;
                if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                    d.core.flags |= Flags::BACKLOG;
                }
            }
            if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
                d.put_topics(topics);
            }
        }
        self.flush_topic_counts();
    }

    /// The device ACKed topic message `msg_id` (it was in flight here).
    pub(super) fn on_topic_acked(&mut self, idx: u32, msg_id: u64) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return };
        let Some(topics) = d.topics_mut() else { return };
        // The position is written by the next flush (about a second) or when
        // the device goes, not per ACK: a broadcast costs one write per device
        // per second, not one per message.
        if topics.on_acked(msg_id).is_some() && !topics.queued {
            topics.queued = true;
            self.topics.dirty.push(idx);
        }
        self.topics.count_acked(msg_id);
    }

    /// Writes the positions that moved since the last flush (every second).
    pub(super) fn flush_positions(&mut self) {
        for idx in std::mem::take(&mut self.topics.dirty) {
            self.store_positions(idx);
        }
    }

    /// Writes device `idx`'s positions that are ahead of the store.
    fn store_positions(&mut self, idx: u32) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return };
        let token = d.token;
        let Some(mut topics) = d.take_topics() else { return };
        topics.queued = false;
        for s in topics.subs.iter_mut().filter(|s| s.pos > s.stored) {
            s.stored = s.pos;
            match self.store.put_subscription(&token, &s.name, s.pos) {
                Ok(()) => self.commit.mark_dirty(),
                Err(e) => warn!("shard {}: writing a topic position: {e}", self.index()),
            }
        }
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            d.put_topics(topics);
        }
    }

    /// Adds this shard's delivery counts to the node's.
    pub(super) fn flush_topic_counts(&mut self) {
        if !self.topics.deltas.is_empty() {
            self.shared.topics.add_counts(&self.topics.deltas);
            if self.cluster.is_some() {
                for (id, (sent, acked)) in self.topics.deltas.drain() {
                    let d = self.topics.remote_deltas.entry(id).or_default();
                    d.0 += sent;
                    d.1 += acked;
                }
            }
            self.topics.deltas.clear();
        }
    }

    /// A device connection stops being bound: it leaves the subscriber index.
    pub(super) fn forget_topics(&mut self, idx: u32) {
        self.store_positions(idx);
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return };
        let app = d.app;
        let Some(topics) = d.take_topics() else { return };
        for s in &topics.subs {
            self.topics.leave(&TopicKey::new(app, &s.name), idx);
        }
    }

    /// SUBSCRIBE or UNSUBSCRIBE from a device; answered once the change is durable.
    pub(super) fn on_subscribe(&mut self, idx: u32, req_id: u16, on: bool, topic: &[u8]) {
        let status = self.change_subscription(idx, on, topic);
        let Some(conn) = self.conns.get(idx as usize) else { return };
        self.commit.answer_after_write(Entry { idx, id: conn.id() }, req_id, status);
    }

    pub(super) fn change_subscription(&mut self, idx: u32, on: bool, topic: &[u8]) -> SubStatus {
        if classify(topic) != TopicName::Plain {
            return SubStatus::BAD_TOPIC;
        }
        if self.shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return SubStatus::UNAVAILABLE;
        }
        let cap = self.shared.cfg.limits.topics_per_device;
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return SubStatus::UNAVAILABLE };
        let (token, app) = (d.token, d.app);
        let topics = d.topics_or_default();
        let key = TopicKey::new(app, topic);
        if on {
            if topics.find(topic).is_some() {
                return SubStatus::OK;
            }
            if topics.subscribed() >= cap {
                return SubStatus::TOPIC_LIMIT;
            }
            let pos = self.shared.topics.newest(&key);
            if let Err(e) = self.store.put_subscription(&token, topic, pos) {
                warn!("shard {}: subscribe: {e}", self.index());
                return SubStatus::STORE_FAILED;
            }
            topics.add(self.topics.intern(topic), pos, false);
            self.topics.join(key, idx);
        } else {
            if !topics.remove(topic) {
                return SubStatus::OK;
            }
            if let Err(e) = self.store.remove_subscription(&token, topic) {
                warn!("shard {}: unsubscribe: {e}", self.index());
                return SubStatus::STORE_FAILED;
            }
            self.topics.leave(&key, idx);
        }
        self.commit.mark_dirty();
        SubStatus::OK
    }
}
