//! Topics on a shard: device subscriptions, the fan-out of topic messages to
//! this shard's connected subscribers, catch-up from the node's topic log.

use super::requests::ReplyTo;
use super::Shard;
use crate::proto::{Note, Status, SubStatus};

impl Shard {
    pub(super) fn on_subscribe(&mut self, idx: u32, req_id: u16, _on: bool, _topic: &[u8]) {
        let frame = crate::proto::Frame::SubscribeResult { req_id, status: SubStatus::UNAVAILABLE };
        self.send_frame(idx, &frame);
    }

    pub(super) fn submit_topic(&mut self, _app: u16, _topic: &[u8], _note: Note, reply: ReplyTo) {
        let outcome = super::requests::Outcome::status(Status::UNAVAILABLE);
        self.answer(reply, super::requests::Answer::Push(vec![outcome]));
    }

    pub(super) fn submit_manage(&mut self, _app: u16, _add: bool, _topic: &[u8], tokens: &[u8], reply: ReplyTo) {
        let n = tokens.len() / crate::proto::TOKEN_LEN;
        let outcome = super::requests::Outcome::status(Status(SubStatus::UNAVAILABLE.0));
        self.answer(reply, super::requests::Answer::Push(vec![outcome; n]));
    }

    pub(super) fn on_topic_stats(&mut self, idx: u32, req_id: u32, _msg_id: u64) {
        let frame = crate::proto::Frame::TopicStatsResult { req_id, known: false, sent: 0, acked: 0 };
        self.send_frame(idx, &frame);
    }
}
