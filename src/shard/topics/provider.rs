//! The provider's topic requests: PUSH_TOPIC (to the topic's owner shard,
//! which logs it and fans it out to every shard), TOPIC_MANAGE (per token,
//! to the token's owner shard), TOPIC_STATS.

use log::warn;

use super::super::msg::{ResultMsg, ShardMsg};
use super::super::requests::{Answer, Outcome, ReplyTo, ReqRef};
use super::super::Shard;
use crate::metrics::Limit;
use crate::proto::topic::{classify, TopicName};
use crate::proto::{Frame, Note, Status, SubStatus, Token, TOKEN_LEN};
use crate::store::{StoredMsg, TopicEntry};
use crate::topics::{AppendError, TopicKey, TopicMsg};

impl Shard {
    /// PUSH_TOPIC from any front end: checked here, logged and fanned out by
    /// the topic's owner shard, answered (`queued` once logged durably).
    pub(in crate::shard) fn submit_topic(&mut self, app: u16, topic: &[u8], note: Note, reply: ReplyTo) {
        let req = self.requests.open_push(reply, 1);
        let refused = if classify(topic) == TopicName::Bad {
            Some(Outcome::status(Status::BAD_TOPIC))
        } else {
            self.refusal(&note).or_else(|| {
                let now_us = self.clock.now_ns() / 1000;
                let wait = self.shared.limits.take_push(app, now_us).err()?;
                self.metrics.on_limit(Limit::RateLimited);
                Some(Outcome { status: Status::RATE_LIMITED, msg_id: 0, info: wait })
            })
        };
        if let Some(outcome) = refused {
            self.on_result(ResultMsg { req, index: 0, outcome });
            return;
        }
        let key = TopicKey::new(app, topic);
        let owner = self.router.topic_owner(&key);
        self.router.send(owner, ShardMsg::TopicPush { req, key, note });
    }

    /// The topic's owner: give the message its id, log it (stored once), and
    /// hand it to every shard's subscribers.
    pub(in crate::shard) fn on_topic_push(&mut self, req: ReqRef, key: TopicKey, note: Note) {
        let logged = note.is_storable(self.clock.unix_s);
        if self.cluster.is_some() {
            if logged && !self.shared.topics.can_log(&key) {
                self.route_result(ResultMsg { req, index: 0, outcome: Outcome::status(Status::TOPIC_LIMIT) });
                return;
            }
            self.publish_topic(req, key, note, logged);
            return;
        }
        let log = &self.shared.topics;
        let id = log.next_id(self.clock.unix_ms);
        let msg = TopicMsg { id, note };
        let mut result =
            ResultMsg { req, index: 0, outcome: Outcome { status: Status::DELIVERED, msg_id: id, info: 0 } };
        if logged {
            let mut removed = Vec::new();
            if log.append(&key, msg.clone(), &mut removed) == Err(AppendError::TopicLimit) {
                result.outcome = Outcome::status(Status::TOPIC_LIMIT);
                self.route_result(result);
                return;
            }
            let shared = self.shared.clone();
            let app_id = shared.apps.id(key.app);
            let entry = TopicEntry {
                app_id: app_id.to_string(),
                topic: key.name.clone(),
                msg: StoredMsg { msg_id: id, note: msg.note.clone() },
            };
            if let Err(e) = self.store.topic_append(&entry) {
                warn!("shard {}: storing a topic message: {e}", self.index());
                log.remove(&key, id);
                result.outcome = Outcome::status(Status::STORE_FAILED);
                self.route_result(result);
                return;
            }
            for (k, old) in removed {
                if let Err(e) = self.store.topic_remove(shared.apps.id(k.app), &k.name, old) {
                    warn!("shard {}: deleting a topic message: {e}", self.index());
                }
            }
            result.outcome.status = Status::QUEUED;
            self.commit.after_write(result);
        } else {
            self.route_result(result);
        }
        self.shared.topics.open_stats(id);
        for to in 0..self.router.shards() {
            let m = ShardMsg::TopicNote { key: key.clone(), msg: msg.clone(), logged };
            self.router.send(to, m);
        }
    }

    /// TOPIC_MANAGE: each token's change goes to its owner shard.
    pub(in crate::shard) fn submit_manage(
        &mut self,
        app: u16,
        add: bool,
        topic: &[u8],
        tokens: &[u8],
        reply: ReplyTo,
    ) {
        let n = tokens.len() / TOKEN_LEN;
        if n == 0 {
            self.answer(reply, Answer::Push(Vec::new()));
            return;
        }
        let req = self.requests.open_push(reply, n);
        let early = if classify(topic) != TopicName::Plain {
            Some(SubStatus::BAD_TOPIC)
        } else {
            self.shared.draining.load(std::sync::atomic::Ordering::Relaxed).then_some(SubStatus::UNAVAILABLE)
        };
        let shared = self.shared.clone();
        let app_id = shared.apps.id(app);
        for (i, t) in tokens.chunks_exact(TOKEN_LEN).enumerate() {
            let mut token = Token([0; TOKEN_LEN]);
            token.0.copy_from_slice(t);
            let index = i as u16;
            let status =
                early.or_else(|| (!shared.key.verify(app_id, &token)).then_some(SubStatus::BAD_TOKEN));
            match status {
                Some(s) => self.on_result(ResultMsg { req, index, outcome: Outcome::status(Status(s.0)) }),
                None => {
                    let key = TopicKey::new(app, topic);
                    self.router.send(
                        self.router.owner(&token),
                        ShardMsg::TopicManage { req, index, token, key, add },
                    );
                }
            }
        }
    }

    /// One token's subscription change, on its owner shard: in the store, and
    /// in the device's state if it is connected here.
    pub(in crate::shard) fn on_topic_manage(
        &mut self,
        req: ReqRef,
        index: u16,
        token: Token,
        key: TopicKey,
        add: bool,
    ) {
        if self.cluster.is_some() && !self.devices.contains_key(&token) {
            if self.tombstones.unregistered_at(&token).is_some() {
                let outcome = Outcome::status(Status(SubStatus::UNREGISTERED.0));
                self.route_result(ResultMsg { req, index, outcome });
            } else {
                self.manage_remote(req, index, token, key, add);
            }
            return;
        }
        let status = self.manage_one(&token, &key, add);
        let result = ResultMsg { req, index, outcome: Outcome::status(Status(status.0)) };
        if status == SubStatus::OK {
            self.commit.after_write(result);
        } else {
            self.route_result(result);
        }
    }

    fn manage_one(&mut self, token: &Token, key: &TopicKey, add: bool) -> SubStatus {
        if self.tombstones.unregistered_at(token).is_some() {
            return SubStatus::UNREGISTERED;
        }
        if let Some(idx) = self.devices.get(token).copied() {
            // Connected here, so welcomed: its loaded state and the store change together.
            return self.change_subscription(idx, add, &key.name);
        }
        let mut records = Vec::new();
        if let Err(e) = self.store.subscriptions(token, &mut records) {
            warn!("shard {}: reading subscriptions: {e}", self.index());
            return SubStatus::STORE_FAILED;
        }
        let known = records.iter().any(|r| r.topic == key.name);
        let r = if add {
            if known {
                return SubStatus::OK;
            }
            let cap = self.shared.cfg.limits.topics_per_device;
            if crate::proto::topic::subscribed(records.iter().map(|r| &*r.topic)) >= cap {
                return SubStatus::TOPIC_LIMIT;
            }
            self.store.put_subscription(token, &key.name, self.shared.topics.newest(key))
        } else {
            if !known {
                return SubStatus::OK;
            }
            self.store.remove_subscription(token, &key.name)
        };
        match r {
            Ok(()) => {
                self.commit.mark_dirty();
                SubStatus::OK
            }
            Err(e) => {
                warn!("shard {}: managing a subscription: {e}", self.index());
                SubStatus::STORE_FAILED
            }
        }
    }

    /// TOPIC_STATS: this node's counts for a recent topic message.
    pub(in crate::shard) fn on_topic_stats(&mut self, idx: u32, req_id: u32, msg_id: u64) {
        self.flush_topic_counts();
        let frame = match self.shared.topics.counts(msg_id) {
            Some((sent, acked)) => Frame::TopicStatsResult { req_id, known: true, sent, acked },
            None => Frame::TopicStatsResult { req_id, known: false, sent: 0, acked: 0 },
        };
        self.send_frame(idx, &frame);
    }

    /// Sweeps the expired messages of the topics this shard owns, from the
    /// node's log and the store (the owner's store handle, which staged them).
    pub(in crate::shard) fn sweep_topics(&mut self) {
        let mut removed = Vec::new();
        let (router, me) = (&self.router, self.router.index());
        self.shared.topics.sweep(self.clock.unix_s, |k| router.topic_owner(k) == me, &mut removed);
        let shared = self.shared.clone();
        for (k, id) in removed {
            match self.store.topic_remove(shared.apps.id(k.app), &k.name, id) {
                Ok(()) => self.commit.mark_dirty(),
                Err(e) => warn!("shard {}: deleting an expired topic message: {e}", self.index()),
            }
        }
    }
}
