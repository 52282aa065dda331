//! Provider sessions, and the one entry point every front end's push goes
//! through (`submit`): validation, token check and rate limit here, then a
//! `PushMsg` per token to its owner shard; answers come back as results and
//! go to the request's reply target.

use std::sync::atomic::Ordering;

use log::warn;

use super::conn::{Conn, Flags};
use super::io::Flow;
use super::msg::{PushMsg, ResultMsg, ShardMsg, Submit};
use super::requests::{Answer, Form, Outcome, ReplyTo};
use super::Shard;
use crate::metrics::{Limit, Role};
use crate::proto::frame::{ftype, put_multi_entry, MAX_MULTICAST, MULTI_RESULT_ENTRY, NONCE_LEN};
use crate::proto::{
    on_provider_frame, Frame, GoAwayReason, Note, ProviderEvent, ProviderState, RawFrame, Status, Token,
};

impl Shard {
    pub(super) fn on_provider_frame(&mut self, idx: u32, raw: RawFrame<'_>) -> Flow {
        let nonce = if raw.ftype == ftype::AUTH_HELLO { fresh_nonce() } else { [0u8; NONCE_LEN] };
        let now = self.clock.tick as u32;
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return Flow::Stop;
        };
        if matches!(p.state, ProviderState::Ready { .. }) {
            p.core.since = now;
        }
        let id = p.core.id;
        let event = match on_provider_frame(&mut p.state, raw, &self.shared.apps, nonce) {
            Ok(ev) => ev,
            Err(e) => {
                self.fail(idx, e);
                return Flow::Stop;
            }
        };
        let app = match p.state {
            ProviderState::Ready { app } => app,
            _ => 0,
        };
        match event {
            ProviderEvent::Challenge(nonce) => {
                self.send_frame(idx, &Frame::Challenge { nonce });
            }
            ProviderEvent::Authenticated { .. } => {
                p.core.since = now;
                self.rearm_if_sooner(idx);
                self.metrics.on_ready(Role::Provider);
                self.metrics.on_handshake(Role::Provider, Ok(()));
                let max_in_flight = self.shared.cfg.limits.provider_max_in_flight;
                self.send_frame(idx, &Frame::AuthOk { max_in_flight });
            }
            ProviderEvent::Feedback { req_id, since_ms, after } => {
                let reply = ReplyTo::Conn { idx, id, req_id, form: Form::Result };
                self.start_feedback(app, since_ms, after, reply);
            }
            ProviderEvent::SubscribeReceipts => self.subscribe_receipts(idx),
            ProviderEvent::Ping => {
                self.send_frame(idx, &Frame::Pong);
            }
            ProviderEvent::Push(push) => {
                let reply = ReplyTo::Conn { idx, id, req_id: push.req_id, form: Form::Result };
                self.submit(app, &[push.token], Note::from_wire(&push.note), reply);
            }
            ProviderEvent::MultiPush(push) => {
                let tokens: Vec<Token> = push.tokens().collect();
                let reply = ReplyTo::Conn { idx, id, req_id: push.req_id, form: Form::Multi };
                self.submit(app, &tokens, Note::from_wire(&push.note), reply);
            }
            ProviderEvent::PushTopic(p) => {
                let reply = ReplyTo::Conn { idx, id, req_id: p.req_id, form: Form::Result };
                self.submit_topic(app, p.topic, Note::from_wire(&p.note), reply);
            }
            ProviderEvent::TopicManage { req_id, add, topic, tokens } => {
                let reply = ReplyTo::Conn { idx, id, req_id, form: Form::Manage };
                self.submit_manage(app, add, topic, tokens, reply);
            }
            ProviderEvent::TopicStats { req_id, msg_id } => self.on_topic_stats(idx, req_id, msg_id),
        }
        let max = self.shared.cfg.limits.provider_max_in_flight;
        let inflight = self.requests.inflight(idx, id);
        match self.conns.get_mut(idx as usize) {
            Some(Conn::Provider(p)) if inflight >= max => {
                p.core.flags |= Flags::PAUSED;
                self.metrics.on_limit(Limit::ProviderPaused);
                Flow::Stop
            }
            Some(_) => Flow::Continue,
            None => Flow::Stop,
        }
    }

    /// A front end's request, handed to this shard.
    pub(super) fn on_submit(&mut self, s: Submit) {
        match s {
            Submit::Push { app, tokens, note, done } => {
                self.submit(app, &tokens, note, ReplyTo::Callback(done))
            }
            Submit::Forwarded { app, token, note, done } => self.on_forwarded(app, token, note, done),
            Submit::Feedback { app, since_ms, after, done } => {
                self.start_feedback(app, since_ms, after, ReplyTo::Callback(done))
            }
            Submit::PushTopic { app, topic, note, done } => {
                self.submit_topic(app, &topic, note, ReplyTo::Callback(done))
            }
            Submit::TopicManage { app, add, topic, tokens, done } => {
                let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.0).collect();
                self.submit_manage(app, add, &topic, &bytes, ReplyTo::Callback(done))
            }
        }
    }

    /// The one way into the router for a push of `note` to `tokens` of app
    /// index `app`, whoever asks: what can be answered here is (a bad
    /// notification, a token of another app, the rate limit, a drain), the
    /// rest goes to each token's owner shard; `reply` gets one answer with an
    /// outcome per token, in order.
    pub fn submit(&mut self, app: u16, tokens: &[Token], note: Note, reply: ReplyTo) {
        if tokens.is_empty() || tokens.len() > MAX_MULTICAST {
            // The codec never lets such a request through; a front end must not either.
            let outcomes = vec![Outcome::status(Status::BAD_REQUEST); tokens.len()];
            self.answer(reply, Answer::Push(outcomes));
            return;
        }
        let req = self.requests.open_push(reply, tokens.len());
        let early = self.refusal(&note);
        // One clock read per request: the start of its delivery latency.
        let read_at_ns = self.clock.now_ns();
        let shared = self.shared.clone();
        let app_id = shared.apps.id(app);
        for (i, token) in tokens.iter().enumerate() {
            let index = i as u16;
            let outcome = early
                .or_else(|| (!shared.key.verify(app_id, token)).then_some(Outcome::status(Status::BAD_TOKEN)))
                .or_else(|| {
                    let wait = shared.limits.take_push(app, read_at_ns / 1000).err()?;
                    self.metrics.on_limit(Limit::RateLimited);
                    Some(Outcome { status: Status::RATE_LIMITED, msg_id: 0, info: wait })
                });
            match outcome {
                Some(outcome) => self.on_result(ResultMsg { req, index, outcome }),
                None => {
                    let m = PushMsg {
                        req,
                        index,
                        token: *token,
                        app,
                        via: super::msg::Via::Route,
                        note: note.clone(),
                        read_at_ns,
                    };
                    self.router.send(self.router.owner(token), ShardMsg::Push(m));
                }
            }
        }
    }

    /// What a push is answered at once, before any token is looked at: a bad
    /// notification, or a node that is draining.
    pub(super) fn refusal(&self, note: &Note) -> Option<Outcome> {
        match note.check() {
            Err(status) => Some(Outcome::status(status)),
            Ok(()) if self.shared.draining.load(Ordering::Relaxed) => {
                let retry = u64::from(self.shared.cfg.drain.spread_ms);
                Some(Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: retry })
            }
            Ok(()) => None,
        }
    }

    /// One token's outcome, back at the request's shard.
    pub(super) fn on_result(&mut self, r: ResultMsg) {
        self.metrics.on_push(r.outcome.status);
        if let Some((reply, answer)) = self.requests.settle(r.req, r.index, r.outcome) {
            self.answer(reply, answer);
        }
    }

    /// Sends a finished request's answer where it was asked for.
    pub(super) fn answer(&mut self, reply: ReplyTo, answer: Answer) {
        let (idx, id, req_id, form) = match reply {
            ReplyTo::Callback(done) => return done(answer),
            ReplyTo::Conn { idx, id, req_id, form } => (idx, id, req_id, form),
        };
        if self.conns.get(idx as usize).is_none_or(|c| c.id() != id) {
            return; // the connection is gone; its answers with it
        }
        match answer {
            Answer::Push(outcomes) if form == Form::Manage => {
                let statuses: Vec<u8> = outcomes.iter().map(|o| o.sub_status().0).collect();
                self.send_frame(idx, &Frame::TopicManageResult { req_id, statuses: &statuses });
            }
            Answer::Push(outcomes) if form == Form::Result => {
                let Some(o) = outcomes.first() else { return };
                let frame = Frame::Result { req_id, status: o.status, msg_id: o.msg_id, info: o.info };
                self.send_frame(idx, &frame);
            }
            Answer::Push(outcomes) => {
                let mut entries = Vec::with_capacity(outcomes.len() * MULTI_RESULT_ENTRY);
                for o in &outcomes {
                    put_multi_entry(&mut entries, o.status, o.msg_id);
                }
                self.send_frame(idx, &Frame::MultiResult { req_id, entries: &entries });
            }
            Answer::Feedback(page) => {
                let mut body = Vec::with_capacity(page.entries.len() * crate::proto::frame::FEEDBACK_ENTRY);
                for (at, token) in &page.entries {
                    body.extend_from_slice(&token.0);
                    body.extend_from_slice(&at.to_be_bytes());
                }
                self.send_frame(idx, &Frame::FeedbackResult { req_id, more: page.more, entries: &body });
            }
        }
        self.maybe_resume(idx);
    }

    /// After an answer went out: resume a provider paused at its in-flight
    /// limit, or finish a drain once nothing is outstanding.
    pub(super) fn maybe_resume(&mut self, idx: u32) {
        let max = self.shared.cfg.limits.provider_max_in_flight;
        let draining = self.drain.deadline.is_some();
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let inflight = self.requests.inflight(idx, p.core.id);
        if draining {
            if inflight == 0 {
                self.goaway(idx, GoAwayReason::SHUTDOWN, 0);
            }
        } else if p.core.flags.contains(Flags::PAUSED) && inflight < max {
            p.core.flags.remove(Flags::PAUSED);
            self.scratch.resume.push(idx);
        }
    }
}

fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if let Err(e) = getrandom::getrandom(&mut n) {
        // Not expected on Linux. A fixed nonce still needs the secret to answer;
        // what is lost is protection against replaying a captured proof.
        warn!("no randomness for an auth challenge: {e}");
        n = [0xff; NONCE_LEN];
    }
    n
}
