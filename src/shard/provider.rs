//! Provider sessions: login, validating pushes, routing each token to its
//! owner shard, and gathering statuses back into RESULT and MULTI_RESULT.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use log::warn;

use super::conn::{Conn, Multi, F_PAUSED, F_READY};
use super::io::Flow;
use super::msg::{ConnRef, PushMsg, ResultMsg, ShardMsg, NO_SLOT};
use super::Shard;
use crate::metrics::{Limit, Role};
use crate::proto::frame::{ftype, put_multi_entry, KNOWN_FLAGS, MAX_PAYLOAD, MULTI_RESULT_ENTRY, NONCE_LEN};
use crate::proto::{
    on_provider_frame, Frame, GoAwayReason, Kind, Notification, ProviderEvent, ProviderState, RawFrame,
    Status, Token, PRIORITY_HIGH, PRIORITY_NORMAL,
};

/// The fields every token of one request shares.
struct Common {
    kind: u8,
    priority: u8,
    flags: u8,
    expiry: u32,
    collapse: Bytes,
    payload: Bytes,
}

impl Common {
    /// Copies the payload and collapse id out of the read buffer once per request.
    fn new(n: &Notification<'_>) -> Common {
        Common {
            kind: n.kind,
            priority: n.priority,
            flags: n.flags,
            expiry: n.expiry,
            collapse: Bytes::copy_from_slice(n.collapse),
            payload: Bytes::copy_from_slice(n.payload),
        }
    }
}

impl Shard {
    pub(super) fn on_provider_frame(&mut self, idx: u32, raw: RawFrame<'_>) -> Flow {
        let nonce = if raw.ftype == ftype::AUTH_HELLO { fresh_nonce() } else { [0u8; NONCE_LEN] };
        let now = self.now_tick as u32;
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return Flow::Stop;
        };
        let was_ready = matches!(p.state, ProviderState::Ready { .. });
        if was_ready {
            p.since = now;
        }
        let event = match on_provider_frame(&mut p.state, raw, &self.shared.apps, nonce) {
            Ok(ev) => ev,
            Err(e) => {
                self.fail(idx, e);
                return Flow::Stop;
            }
        };
        match event {
            ProviderEvent::Challenge(nonce) => {
                self.send_frame(idx, &Frame::Challenge { nonce });
            }
            ProviderEvent::Authenticated { app } => {
                p.flags |= F_READY;
                p.since = now;
                self.metrics.on_ready(Role::Provider);
                self.metrics.on_handshake(Role::Provider, Ok(()));
                let max_in_flight = self.shared.cfg.limits.provider_max_in_flight;
                self.send_frame(idx, &Frame::AuthOk { max_in_flight });
                let _ = app;
            }
            ProviderEvent::Feedback { req_id, since_ms, after } => {
                self.start_feedback(idx, req_id, since_ms, after)
            }
            ProviderEvent::SubscribeReceipts => self.subscribe_receipts(idx),
            ProviderEvent::Ping => {
                self.send_frame(idx, &Frame::Pong);
            }
            ProviderEvent::Push(push) => {
                let common = Common::new(&push.note);
                self.on_push_request(idx, push.req_id, &[push.token], &common, false);
            }
            ProviderEvent::MultiPush(push) => {
                let common = Common::new(&push.note);
                let tokens: Vec<Token> = push.tokens().collect();
                self.on_push_request(idx, push.req_id, &tokens, &common, true);
            }
        }
        let max = self.shared.cfg.limits.provider_max_in_flight;
        match self.conns.get_mut(idx as usize) {
            Some(Conn::Provider(p)) if p.inflight >= max => {
                p.flags |= F_PAUSED;
                self.metrics.on_limit(Limit::ProviderPaused);
                Flow::Stop
            }
            Some(_) => Flow::Continue,
            None => Flow::Stop,
        }
    }

    /// Checks a request, answers what can be answered here, and routes the rest.
    fn on_push_request(&mut self, idx: u32, req_id: u32, tokens: &[Token], c: &Common, multi: bool) {
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let ProviderState::Ready { app } = p.state else {
            return;
        };
        let reply = ConnRef { shard: self.index as u16, idx, id: p.id };
        let early = if c.payload.len() > MAX_PAYLOAD {
            Some(Status::PAYLOAD_TOO_LARGE)
        } else if !Kind(c.kind).is_known()
            || (c.priority != PRIORITY_HIGH && c.priority != PRIORITY_NORMAL)
            || c.flags & !KNOWN_FLAGS != 0
        {
            Some(Status::BAD_REQUEST)
        } else if self.shared.draining.load(Ordering::Relaxed) {
            Some(Status::UNAVAILABLE)
        } else {
            None
        };
        let retry = u64::from(self.shared.cfg.drain.spread_ms);
        let slot = if multi {
            let entries = vec![0u8; tokens.len() * MULTI_RESULT_ENTRY];
            p.multis.insert(Multi { req_id, remaining: tokens.len() as u16, entries }) as u32
        } else {
            NO_SLOT
        };
        // A handle on the shared state, so the app id is borrowed, not copied, per request.
        let shared = self.shared.clone();
        let app_id = shared.apps.id(app);
        let n = shared.handles.len();
        for (i, token) in tokens.iter().enumerate() {
            let mut info = 0;
            let status = early
                .or_else(|| (!shared.key.verify(app_id, token)).then_some(Status::BAD_TOKEN))
                .or_else(|| {
                    let wait = self.take_push_token(app).err()?;
                    info = wait;
                    self.metrics.on_limit(Limit::RateLimited);
                    Some(Status::RATE_LIMITED)
                });
            if let Some(status) = status {
                if status == Status::UNAVAILABLE {
                    info = retry;
                }
                let r = ResultMsg { to: reply, req_id, slot, index: i as u16, status, msg_id: 0, info };
                if let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) {
                    p.inflight += 1; // balanced by on_result
                }
                self.on_result(r);
                continue;
            }
            if let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) {
                p.inflight += 1;
            }
            let m = PushMsg {
                read_at: self.now,
                reply,
                req_id,
                slot,
                index: i as u16,
                token: *token,
                kind: c.kind,
                priority: c.priority,
                flags: c.flags,
                expiry: c.expiry,
                collapse: c.collapse.clone(),
                payload: c.payload.clone(),
            };
            self.route(token.shard(n), ShardMsg::Push(m));
        }
    }

    /// Charges one push to `app`'s rate bucket, or says in how many ms to retry.
    fn take_push_token(&mut self, app: u16) -> Result<(), u64> {
        let Some(rate) = self.push_rate else { return Ok(()) };
        let now = self.mono_ms;
        match self.app_buckets.get_mut(app as usize) {
            Some(b) => b.take(rate, now),
            None => Ok(()),
        }
    }

    /// A status for one token of one of this shard's providers' requests.
    pub(super) fn on_result(&mut self, r: ResultMsg) {
        self.metrics.on_push(r.status);
        let Some(Conn::Provider(p)) = self.conns.get_mut(r.to.idx as usize) else {
            return;
        };
        if p.id != r.to.id {
            return;
        }
        p.inflight = p.inflight.saturating_sub(1);
        let mut frame_entries = None;
        if r.slot == NO_SLOT {
            let frame = Frame::Result { req_id: r.req_id, status: r.status, msg_id: r.msg_id, info: r.info };
            self.send_frame(r.to.idx, &frame);
        } else if let Some(m) = p.multis.get_mut(r.slot as usize) {
            let at = r.index as usize * MULTI_RESULT_ENTRY;
            if let Some(e) = m.entries.get_mut(at..at + MULTI_RESULT_ENTRY) {
                let mut one = Vec::with_capacity(MULTI_RESULT_ENTRY);
                put_multi_entry(&mut one, r.status, r.msg_id);
                e.copy_from_slice(&one);
            }
            m.remaining = m.remaining.saturating_sub(1);
            if m.remaining == 0 {
                let m = p.multis.remove(r.slot as usize);
                frame_entries = Some(m);
            }
        } else {
            warn!("shard {}: result for an unknown multicast slot", self.index);
        }
        if let Some(m) = frame_entries {
            self.send_frame(r.to.idx, &Frame::MultiResult { req_id: m.req_id, entries: &m.entries });
        }
        self.maybe_resume(r.to.idx);
    }

    /// After an answer went out: resume a provider paused at its in-flight
    /// limit, or finish a drain once nothing is outstanding.
    pub(super) fn maybe_resume(&mut self, idx: u32) {
        let max = self.shared.cfg.limits.provider_max_in_flight;
        let draining = self.drain_deadline.is_some();
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        if draining {
            if p.inflight == 0 {
                self.goaway(idx, GoAwayReason::SHUTDOWN, 0);
            }
        } else if p.flags & F_PAUSED != 0 && p.inflight < max {
            p.flags &= !F_PAUSED;
            self.resume.push(idx);
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
