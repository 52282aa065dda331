//! Topics in cluster mode: PUSH_TOPIC publishes to the engine's topic
//! stream (accepted once a majority committed it), every node follows the
//! stream into its own topic log and fans each message out to its shards
//! (the feed), provider-managed subscriptions of devices not connected here
//! are changed in the engine and announced to the node that has the device.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::super::msg::{ResultMsg, ShardMsg};
use super::super::requests::{Outcome, ReqRef};
use super::super::{Shard, Shared};
use crate::cluster::engine::EngineHandle;
use crate::cluster::subs::SubOp;
use crate::cluster::topics::TopicEvent;
use crate::cluster::EngineError;
use crate::proto::topic::TOPIC_ID_BIT;
use crate::proto::{Note, Status, SubStatus, Token};
use crate::topics::{TopicKey, TopicMsg};

/// Retry hint of a topic request the engine could not take.
pub const ENGINE_RETRY_MS: u64 = 1000;

/// Starts following the topic stream into `shared.topics`, feeding every
/// shard, and waits until what the stream held at start is replayed, so no
/// device is welcomed against a partial log. Also takes other nodes'
/// delivery counts and subscription notices.
pub fn start_feed(shared: &Arc<Shared>, engine: &EngineHandle, wait: Duration) -> std::io::Result<()> {
    let s = shared.clone();
    let handler = Arc::new(move |ev: TopicEvent| {
        let Some(app) = s.apps.index_of(&ev.app_id) else { return };
        let key = TopicKey { app, name: ev.topic };
        let msg = TopicMsg { id: TOPIC_ID_BIT | ev.id, note: ev.note };
        if ev.logged {
            // The stream keeps its own bounds; the removed ones need no store delete here.
            let mut removed = Vec::new();
            s.topics.append_unlimited(&key, msg.clone(), &mut removed);
        }
        s.topics.open_stats(msg.id);
        for h in &s.handles {
            h.send(vec![ShardMsg::TopicNote { key: key.clone(), msg: msg.clone(), logged: ev.logged }]);
        }
    });
    let s = shared.clone();
    engine.serve_topic_counts(Arc::new(move |_node, counts| {
        let map: HashMap<u64, (u64, u64)> =
            counts.into_iter().map(|(id, sent, acked)| (TOPIC_ID_BIT | id, (sent, acked))).collect();
        s.topics.add_remote_counts(&map);
    }));
    let s = shared.clone();
    engine.serve_sub_changes(Arc::new(move |token: Token, topic, add, pos| {
        let to = token.shard(s.handles.len());
        s.handles[to].send(vec![ShardMsg::SubChanged { token, topic, add, pos }]);
    }));
    let (tx, rx) = std::sync::mpsc::channel();
    let limits = &shared.cfg.limits;
    engine.topic_feed(
        limits.topic_log_cap,
        limits.topic_log_bytes,
        handler,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.recv_timeout(wait) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(std::io::Error::other(format!("replaying the topic stream: {e}"))),
        Err(_) => {
            Err(std::io::Error::other("replaying the topic stream took longer than cluster.start_timeout_s"))
        }
    }
}

impl Shard {
    /// The topic's owner shard on this node hands a PUSH_TOPIC to the engine.
    pub(super) fn publish_topic(&mut self, req: ReqRef, key: TopicKey, note: Note, logged: bool) {
        let Some(c) = &self.cluster else { return };
        let engine = c.link.engine.clone();
        let handles = self.shared.clone();
        let app_id = self.shared.apps.id(key.app).to_string();
        if logged {
            engine.topic_publish(
                &app_id,
                &key.name,
                &note,
                Box::new(move |r: Result<u64, EngineError>| {
                    let outcome = match r {
                        Ok(seq) => Outcome { status: Status::QUEUED, msg_id: TOPIC_ID_BIT | seq, info: 0 },
                        Err(_) => Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: ENGINE_RETRY_MS },
                    };
                    handles.handles[usize::from(req.shard)].send(vec![ShardMsg::Result(ResultMsg {
                        req,
                        index: 0,
                        outcome,
                    })]);
                }),
            );
        } else {
            let id = TOPIC_ID_BIT | self.fresh_msg_id();
            engine.topic_announce(
                &app_id,
                &key.name,
                id & !TOPIC_ID_BIT,
                &note,
                Box::new(move |r: Result<(), EngineError>| {
                    let outcome = match r {
                        Ok(()) => Outcome { status: Status::DELIVERED, msg_id: id, info: 0 },
                        Err(_) => Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: ENGINE_RETRY_MS },
                    };
                    handles.handles[usize::from(req.shard)].send(vec![ShardMsg::Result(ResultMsg {
                        req,
                        index: 0,
                        outcome,
                    })]);
                }),
            );
        }
    }

    /// TOPIC_MANAGE for a device not connected to this node's shard: changed
    /// in the engine, then announced to the node that may have it.
    pub(super) fn manage_remote(&mut self, req: ReqRef, index: u16, token: Token, key: TopicKey, add: bool) {
        let Some(c) = &self.cluster else { return };
        let engine = c.link.engine.clone();
        let pos = self.shared.topics.newest(&key);
        let cap = self.shared.cfg.limits.topics_per_device;
        let name = key.name.clone();
        // Insert: a device already in the topic keeps its position (and what it is owed).
        let op = if add {
            SubOp::Insert { topic: name.clone(), pos }
        } else {
            SubOp::Remove { topic: name.clone() }
        };
        let shared = self.shared.clone();
        let e2 = engine.clone();
        engine.subs_update(
            token,
            vec![op],
            Box::new(move |r| {
                let status = match r {
                    // Past the cap only if this add inserted it (an existing one adds nothing).
                    Ok(list)
                        if add && crate::proto::topic::subscribed(list.iter().map(|s| &*s.topic)) > cap =>
                    {
                        e2.subs_update(token, vec![SubOp::Remove { topic: name.clone() }], Box::new(|_| {}));
                        SubStatus::TOPIC_LIMIT
                    }
                    Ok(_) => {
                        e2.announce_sub_change(token, &name, add, pos, Box::new(|_| {}));
                        SubStatus::OK
                    }
                    Err(_) => SubStatus::UNAVAILABLE,
                };
                let outcome = Outcome::status(Status(status.0));
                shared.handles[usize::from(req.shard)].send(vec![ShardMsg::Result(ResultMsg {
                    req,
                    index,
                    outcome,
                })]);
            }),
        );
    }

    /// Another node (or this one) changed a device's subscription in the
    /// engine: if the device is connected here, its loaded state follows.
    pub(in crate::shard) fn on_sub_changed(&mut self, token: Token, topic: Box<[u8]>, add: bool, pos: u64) {
        let Some(idx) = self.devices.get(&token).copied() else { return };
        let Some(super::super::conn::Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return };
        let app = d.app;
        let topics = d.topics_or_default();
        let key = TopicKey { app, name: topic };
        if add {
            if topics.find(&key.name).is_none() {
                let behind = self.shared.topics.newest(&key) > pos;
                topics.add(self.topics.intern(&key.name), pos, behind);
                self.topics.join(key, idx);
                if behind {
                    let _ = self.deliver(idx);
                }
            }
        } else if topics.remove(&key.name) {
            self.topics.leave(&key, idx);
        }
    }

    /// Sends this shard's delivery counts to the other nodes (about every 100 ms).
    pub(in crate::shard) fn publish_topic_counts(&mut self) {
        let Some(c) = &self.cluster else { return };
        if self.topics.remote_deltas.is_empty() {
            return;
        }
        let counts: Vec<(u64, u64, u64)> = self
            .topics
            .remote_deltas
            .drain()
            .map(|(id, (sent, acked))| (id & !TOPIC_ID_BIT, sent, acked))
            .collect();
        c.link.engine.topic_counts_publish(
            counts,
            Box::new(|r| {
                if let Err(e) = r {
                    warn!("cluster: sending topic delivery counts: {e}");
                }
            }),
        );
    }
}
