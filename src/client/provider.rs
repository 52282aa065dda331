//! The provider side: challenge-response login, then PUSH, MULTI_PUSH,
//! FEEDBACK and the topic requests (PUSH_TOPIC, TOPIC_MANAGE, TOPIC_STATS),
//! either one at a time or pipelined up to the gateway's in-flight limit, with
//! receipts collected on the side.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::conn::{after, Conn, CONNECT_TIMEOUT};
use super::device::{check_topic, refusal, unexpected};
use super::request::{check_note, PushRequest, PushResult, Receipt, Reply, TopicStats};
use super::ClientError;
use crate::proto::frame::{
    feedback_entries, multi_entries, MultiPush, Push, PushTopic, MAX_MULTICAST, PROVIDER_MAX_BODY, VERSION,
};
use crate::proto::session::auth_proof;
use crate::proto::topic::MAX_MANAGE;
use crate::proto::{Frame, Note, Status, SubStatus, Token, TOKEN_LEN};

/// How long [`ProviderClient::push`], `multicast` and `ping` wait for their answer by default.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Receipts kept for [`ProviderClient::take_receipts`]; past this the oldest
/// are dropped, so a client that never asks for them does not grow forever.
pub const MAX_BUFFERED_RECEIPTS: usize = 100_000;

/// What one read produced: a reply for the caller, or something already
/// filed (a PONG counted, a receipt buffered).
enum Incoming {
    Reply(Reply),
    Filed,
}

/// An authenticated provider connection for one app. The gateway closes a
/// provider that sends nothing for 300 s: call [`ping`](Self::ping) when idle.
pub struct ProviderClient {
    conn: Conn,
    max_in_flight: u32,
    /// Unanswered requests as the gateway counts them: a MULTI_PUSH or
    /// TOPIC_MANAGE counts one per token (protocol.md 9.1).
    in_flight: u32,
    /// The count of each unanswered request that counts more than one.
    weights: HashMap<u32, u32>,
    next_req: u32,
    /// Replies read while waiting for a different one; `recv_result` hands them out first.
    stash: VecDeque<Reply>,
    receipts: VecDeque<Receipt>,
    pings_sent: u64,
    pongs_seen: u64,
    reply_timeout: Duration,
}

impl ProviderClient {
    /// Connects and authenticates with the app secret as configured on the gateway (its UTF-8 bytes).
    pub fn connect<A: ToSocketAddrs>(
        addr: A,
        app_id: &str,
        secret: &str,
    ) -> Result<ProviderClient, ClientError> {
        ProviderClient::connect_with_key(addr, app_id, secret.as_bytes())
    }

    /// Like [`connect`](Self::connect) with the secret as raw bytes.
    pub fn connect_with_key<A: ToSocketAddrs>(
        addr: A,
        app_id: &str,
        secret: &[u8],
    ) -> Result<ProviderClient, ClientError> {
        if app_id.len() > u8::MAX as usize {
            return Err(ClientError::Invalid("app id longer than 255 bytes".into()));
        }
        let mut conn = Conn::connect(addr, PROVIDER_MAX_BODY)?;
        conn.send(&Frame::AuthHello { version: VERSION, app_id })?;
        let nonce = conn
            .recv(after(CONNECT_TIMEOUT), |f| match f {
                Frame::Challenge { nonce } => Ok(nonce),
                other => Err(refusal(other)),
            })?
            .ok_or(ClientError::Timeout)?;
        conn.send(&Frame::Auth { proof: auth_proof(secret, app_id, &nonce) })?;
        let max_in_flight = conn
            .recv(after(CONNECT_TIMEOUT), |f| match f {
                Frame::AuthOk { max_in_flight } => Ok(max_in_flight),
                other => Err(refusal(other)),
            })?
            .ok_or(ClientError::Timeout)?;
        Ok(ProviderClient {
            conn,
            max_in_flight,
            in_flight: 0,
            weights: HashMap::new(),
            next_req: 1,
            stash: VecDeque::new(),
            receipts: VecDeque::new(),
            pings_sent: 0,
            pongs_seen: 0,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// Requests the gateway allows unanswered at once on this connection.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// Requests sent and not yet answered, counted as the gateway counts them
    /// (a MULTI_PUSH or TOPIC_MANAGE one per token).
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// How long `push`, `multicast`, `ping` and a full `send_push` wait (default 30 s).
    pub fn set_reply_timeout(&mut self, t: Duration) {
        self.reply_timeout = t;
    }

    /// Pushes one notification and waits for its RESULT.
    pub fn push(&mut self, req: &PushRequest) -> Result<PushResult, ClientError> {
        let id = self.send_push(req)?;
        match self.wait_reply(id)? {
            Reply::Result(r) => Ok(r),
            _ => Err(ClientError::Protocol(format!("PUSH {id} answered by another request's kind of reply"))),
        }
    }

    /// Sends a PUSH without waiting and returns its req_id. When `max_in_flight`
    /// requests are already unanswered it first reads a reply (kept for
    /// [`recv_result`](Self::recv_result)), so the gateway's limit is never exceeded.
    pub fn send_push(&mut self, req: &PushRequest) -> Result<u32, ClientError> {
        req.check()?;
        self.send_request(1, |req_id| Frame::Push(Push { req_id, token: req.token, note: req.note() }))
    }

    /// Sends one MULTI_PUSH of `req` (its `token` ignored) to 1..=1000 `tokens` without waiting.
    pub fn send_multi_push(&mut self, tokens: &[Token], req: &PushRequest) -> Result<u32, ClientError> {
        req.check()?;
        if tokens.is_empty() || tokens.len() > MAX_MULTICAST {
            return Err(ClientError::Invalid(format!("{} tokens in one MULTI_PUSH", tokens.len())));
        }
        let flat: Vec<u8> = tokens.iter().flat_map(|t| t.0).collect();
        let n = tokens.len() as u32;
        self.send_request(n, |req_id| Frame::MultiPush(MultiPush { req_id, tokens: &flat, note: req.note() }))
    }

    /// Asks which of this app's tokens unregistered after the cursor without
    /// waiting: at or after `since_ms` (unix ms) when `after` is `None`, else
    /// strictly after `(since_ms, after)`. The answer is a [`Reply::Feedback`].
    pub fn send_feedback(&mut self, since_ms: u64, after: Option<Token>) -> Result<u32, ClientError> {
        let after = after.unwrap_or(Token([0; TOKEN_LEN]));
        self.send_request(1, |req_id| Frame::Feedback { req_id, since_ms, after })
    }

    /// Pushes `note` to every device in `topic` (`~all`: every device of the
    /// app) and waits for its RESULT: `queued` once the message is in the
    /// topic's log, with the topic message id (protocol.md 10.4).
    pub fn push_topic(&mut self, topic: &str, note: &Note) -> Result<PushResult, ClientError> {
        let id = self.send_push_topic(topic, note)?;
        match self.wait_reply(id)? {
            Reply::Result(r) => Ok(r),
            _ => Err(ClientError::Protocol(format!("PUSH_TOPIC {id} answered by another kind of reply"))),
        }
    }

    /// Sends a PUSH_TOPIC without waiting and returns its req_id; the answer is a [`Reply::Result`].
    pub fn send_push_topic(&mut self, topic: &str, note: &Note) -> Result<u32, ClientError> {
        check_topic(topic)?;
        check_note(note)?;
        let topic = topic.as_bytes();
        self.send_request(1, |req_id| Frame::PushTopic(PushTopic { req_id, topic, note: note.as_wire() }))
    }

    /// Adds (`add`) or removes the `tokens` to or from `topic`, in TOPIC_MANAGE
    /// frames of up to 1000 tokens, waiting for each answer; one status per
    /// token, in order.
    pub fn manage_topic(
        &mut self,
        add: bool,
        topic: &str,
        tokens: &[Token],
    ) -> Result<Vec<SubStatus>, ClientError> {
        check_topic(topic)?;
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_MANAGE) {
            let id = self.send_manage_topic(add, topic, chunk)?;
            let statuses = match self.wait_reply(id)? {
                Reply::TopicManage { statuses, .. } => statuses,
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "TOPIC_MANAGE {id} answered by another kind of reply"
                    )))
                }
            };
            if statuses.len() != chunk.len() {
                return Err(ClientError::Protocol(format!(
                    "TOPIC_MANAGE_RESULT {id} has {} statuses for {} tokens",
                    statuses.len(),
                    chunk.len()
                )));
            }
            out.extend(statuses);
        }
        Ok(out)
    }

    /// Sends one TOPIC_MANAGE of 1..=1000 `tokens` without waiting; the answer is a [`Reply::TopicManage`].
    pub fn send_manage_topic(
        &mut self,
        add: bool,
        topic: &str,
        tokens: &[Token],
    ) -> Result<u32, ClientError> {
        check_topic(topic)?;
        if tokens.is_empty() || tokens.len() > MAX_MANAGE {
            return Err(ClientError::Invalid(format!("{} tokens in one TOPIC_MANAGE", tokens.len())));
        }
        let flat: Vec<u8> = tokens.iter().flat_map(|t| t.0).collect();
        let topic = topic.as_bytes();
        self.send_request(tokens.len() as u32, |req_id| Frame::TopicManage {
            req_id,
            add,
            topic,
            tokens: &flat,
        })
    }

    /// How many devices topic message `msg_id` reached, as this node counts.
    pub fn topic_stats(&mut self, msg_id: u64) -> Result<TopicStats, ClientError> {
        let id = self.send_topic_stats(msg_id)?;
        match self.wait_reply(id)? {
            Reply::TopicStats(t) => Ok(t),
            _ => Err(ClientError::Protocol(format!("TOPIC_STATS {id} answered by another kind of reply"))),
        }
    }

    /// Sends a TOPIC_STATS without waiting; the answer is a [`Reply::TopicStats`].
    pub fn send_topic_stats(&mut self, msg_id: u64) -> Result<u32, ClientError> {
        self.send_request(1, |req_id| Frame::TopicStats { req_id, msg_id })
    }

    /// Sends the request `build` makes with a fresh req_id once the in-flight
    /// window has room for `weight` more, and counts it in flight.
    fn send_request<'a>(
        &mut self,
        weight: u32,
        build: impl FnOnce(u32) -> Frame<'a>,
    ) -> Result<u32, ClientError> {
        self.wait_for_slot(weight)?;
        let req_id = self.take_req_id();
        self.conn.send(&build(req_id))?;
        self.in_flight += weight;
        if weight != 1 {
            self.weights.insert(req_id, weight);
        }
        Ok(req_id)
    }

    /// Asks for this app's delivery receipts on this connection (SUBSCRIBE_RECEIPTS).
    pub fn subscribe_receipts(&mut self) -> Result<(), ClientError> {
        self.conn.send(&Frame::SubscribeReceipts)
    }

    /// Every token of this app unregistered at or after `since_ms`, with its
    /// unregister time (unix ms), oldest first, following the gateway's pages.
    pub fn feedback(&mut self, since_ms: u64) -> Result<Vec<(Token, u64)>, ClientError> {
        let mut out = Vec::new();
        let mut cursor = (since_ms, None);
        loop {
            let id = self.send_feedback(cursor.0, cursor.1)?;
            let (more, entries) = match self.wait_reply(id)? {
                Reply::Feedback { more, entries, .. } => (more, entries),
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "FEEDBACK {id} answered by another kind of reply"
                    )))
                }
            };
            // The next page starts strictly after the last entry, in (time, token) order.
            let last = entries.last().copied();
            out.extend(entries);
            match last {
                Some((t, at)) if more => cursor = (at, Some(t)),
                _ => return Ok(out),
            }
        }
    }

    /// Receipts that arrived so far, oldest first, and forgets them.
    pub fn take_receipts(&mut self) -> Vec<Receipt> {
        self.receipts.drain(..).collect()
    }

    /// The next receipt, waiting up to `timeout` (forever if `None`); replies
    /// read meanwhile are kept for [`recv_result`](Self::recv_result).
    pub fn recv_receipt(&mut self, timeout: Option<Duration>) -> Result<Option<Receipt>, ClientError> {
        let deadline = timeout.and_then(after);
        loop {
            if let Some(r) = self.receipts.pop_front() {
                return Ok(Some(r));
            }
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => self.stash.push_back(r),
                Some(Incoming::Filed) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next RESULT, MULTI_RESULT or FEEDBACK_RESULT, in the order the gateway
    /// sent them (not necessarily request order); `Ok(None)` if `timeout` passes first.
    pub fn recv_result(&mut self, timeout: Option<Duration>) -> Result<Option<Reply>, ClientError> {
        if let Some(r) = self.stash.pop_front() {
            return Ok(Some(r));
        }
        let deadline = timeout.and_then(after);
        loop {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => return Ok(Some(r)),
                Some(Incoming::Filed) => {}
                None => return Ok(None),
            }
        }
    }

    /// Pushes `req` (its `token` ignored) to every token, splitting into as many
    /// MULTI_PUSH frames as the limits require; one `(token, status, msg_id)` per token.
    pub fn multicast(
        &mut self,
        tokens: &[Token],
        req: &PushRequest,
    ) -> Result<Vec<(Token, Status, u64)>, ClientError> {
        req.check()?;
        // Fixed MULTI_PUSH fields: req_id, count, kind, priority, flags, expiry, collapse length.
        let fixed = 4 + 2 + 1 + 1 + 1 + 4 + 1 + req.note.collapse.len() + req.note.payload.len();
        let per_frame = (PROVIDER_MAX_BODY.saturating_sub(fixed) / TOKEN_LEN).min(MAX_MULTICAST);
        if per_frame == 0 {
            return Err(ClientError::Invalid("payload too large for a MULTI_PUSH frame".into()));
        }
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(per_frame) {
            let id = self.send_multi_push(chunk, req)?;
            let entries = match self.wait_reply(id)? {
                Reply::Multi { entries, .. } => entries,
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "MULTI_PUSH {id} answered by another kind of reply"
                    )))
                }
            };
            if entries.len() != chunk.len() {
                return Err(ClientError::Protocol(format!(
                    "MULTI_RESULT {id} has {} entries for {} tokens",
                    entries.len(),
                    chunk.len()
                )));
            }
            out.extend(chunk.iter().zip(entries).map(|(t, (s, m))| (*t, s, m)));
        }
        Ok(out)
    }

    /// Sends PING and waits for its PONG; returns the round-trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.conn.send(&Frame::Ping)?;
        self.pings_sent += 1;
        let deadline = start.checked_add(self.reply_timeout);
        while self.pongs_seen < self.pings_sent {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => self.stash.push_back(r),
                Some(Incoming::Filed) => {}
                None => return Err(ClientError::Timeout),
            }
        }
        Ok(start.elapsed())
    }

    /// Writes bytes as they are, for tests that need to send what the client would not.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.conn.send_raw(bytes)
    }

    pub fn stream(&self) -> &TcpStream {
        self.conn.stream()
    }

    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.conn.stream().try_clone()
    }

    fn take_req_id(&mut self) -> u32 {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        id
    }

    /// Waits until `weight` more fit in the window; one request larger than the
    /// whole window goes alone once nothing else is in flight.
    fn wait_for_slot(&mut self, weight: u32) -> Result<(), ClientError> {
        let deadline = after(self.reply_timeout);
        while self.in_flight > 0 && self.in_flight.saturating_add(weight) > self.max_in_flight.max(1) {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => self.stash.push_back(r),
                Some(Incoming::Filed) => {}
                None => return Err(ClientError::Timeout),
            }
        }
        Ok(())
    }

    /// Waits for the reply to `req_id`, keeping any other reply for `recv_result`.
    fn wait_reply(&mut self, req_id: u32) -> Result<Reply, ClientError> {
        if let Some(i) = self.stash.iter().position(|r| r.req_id() == req_id) {
            if let Some(r) = self.stash.remove(i) {
                return Ok(r);
            }
        }
        let deadline = after(self.reply_timeout);
        loop {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) if r.req_id() == req_id => return Ok(r),
                Some(Incoming::Reply(r)) => self.stash.push_back(r),
                Some(Incoming::Filed) => {}
                None => return Err(ClientError::Timeout),
            }
        }
    }

    /// Reads one frame and files it: a reply is returned, a receipt buffered, a PONG counted.
    fn read_incoming(&mut self, deadline: Option<Instant>) -> Result<Option<Incoming>, ClientError> {
        enum Got {
            Reply(Reply),
            Receipt(Receipt),
            Pong,
        }
        let got = self.conn.recv(deadline, |f| match f {
            Frame::Result { req_id, status, msg_id, info } => {
                Ok(Got::Reply(Reply::Result(PushResult { req_id, status, msg_id, info })))
            }
            Frame::MultiResult { req_id, entries } => {
                Ok(Got::Reply(Reply::Multi { req_id, entries: multi_entries(entries).collect() }))
            }
            Frame::FeedbackResult { req_id, more, entries } => {
                Ok(Got::Reply(Reply::Feedback { req_id, more, entries: feedback_entries(entries).collect() }))
            }
            Frame::TopicManageResult { req_id, statuses } => Ok(Got::Reply(Reply::TopicManage {
                req_id,
                statuses: statuses.iter().map(|&b| SubStatus(b)).collect(),
            })),
            Frame::TopicStatsResult { req_id, known, sent, acked } => {
                Ok(Got::Reply(Reply::TopicStats(TopicStats { req_id, known, sent, acked })))
            }
            Frame::Receipt { token, msg_id, acked_at_ms } => {
                Ok(Got::Receipt(Receipt { token, msg_id, acked_at_ms }))
            }
            Frame::Pong => Ok(Got::Pong),
            f @ (Frame::Error { .. } | Frame::GoAway { .. }) => Err(refusal(f)),
            other => Err(unexpected(&other)),
        })?;
        Ok(got.map(|g| match g {
            Got::Reply(r) => {
                let weight = self.weights.remove(&r.req_id()).unwrap_or(1);
                self.in_flight = self.in_flight.saturating_sub(weight);
                Incoming::Reply(r)
            }
            Got::Receipt(r) => {
                if self.receipts.len() >= MAX_BUFFERED_RECEIPTS {
                    self.receipts.pop_front();
                }
                self.receipts.push_back(r);
                Incoming::Filed
            }
            Got::Pong => {
                self.pongs_seen += 1;
                Incoming::Filed
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{serve, Peer};
    use crate::client::request::{expiry_in, DEFAULT_TTL_S};
    use crate::proto::frame::{ftype, put_multi_entry, FLAG_RECEIPT};
    use crate::proto::{ErrorCode, GoAwayReason, Kind, PRIORITY_NORMAL};

    const NONCE: [u8; 32] = [5; 32];

    fn tok(i: usize) -> Token {
        let mut t = [0u8; TOKEN_LEN];
        t[..8].copy_from_slice(&(i as u64).to_be_bytes());
        Token(t)
    }

    /// Runs the login as the gateway, checking the proof against `secret`.
    fn login(p: &mut Peer, secret: &[u8], max_in_flight: u32) {
        p.expect(|f| assert_eq!(f, Frame::AuthHello { version: 1, app_id: "demo" }));
        p.send(&Frame::Challenge { nonce: NONCE });
        let ok = p.expect(|f| f == Frame::Auth { proof: auth_proof(secret, "demo", &NONCE) });
        if ok {
            p.send(&Frame::AuthOk { max_in_flight });
        } else {
            p.send(&Frame::Error { code: ErrorCode::AUTH_FAILED, text: "authentication failed" });
        }
    }

    /// Reads one PUSH and returns its req_id.
    fn read_push(p: &mut Peer) -> u32 {
        p.expect(|f| match f {
            Frame::Push(push) => push.req_id,
            other => panic!("{other:?}"),
        })
    }

    fn result(p: &mut Peer, req_id: u32, msg_id: u64) {
        p.send(&Frame::Result { req_id, status: Status::DELIVERED, msg_id, info: 0 });
    }

    #[test]
    fn authenticates_and_pushes_one() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"s3cret", 8);
            let req_id = p.expect(|f| {
                let Frame::Push(push) = f else { panic!("{f:?}") };
                assert_eq!(push.token, tok(1));
                let n = push.note;
                assert_eq!((n.kind, n.priority, n.flags), (Kind::BACKGROUND.0, PRIORITY_NORMAL, 0));
                assert_eq!((n.collapse, n.payload), (&b"score"[..], &b"3-1"[..]));
                let in_a_day = expiry_in(DEFAULT_TTL_S);
                assert!(n.expiry > in_a_day - 60 && n.expiry <= in_a_day, "{}", n.expiry);
                push.req_id
            });
            p.send(&Frame::Result { req_id, status: Status::QUEUED, msg_id: 42, info: 0 });
            p.expect(|f| assert_eq!(f, Frame::Ping));
            p.send(&Frame::Pong);
        });
        let mut c = ProviderClient::connect(addr, "demo", "s3cret").unwrap();
        assert_eq!(c.max_in_flight(), 8);
        let req = PushRequest::new(tok(1), "3-1")
            .with_kind(Kind::BACKGROUND)
            .with_priority(PRIORITY_NORMAL)
            .with_collapse("score");
        let r = c.push(&req).unwrap();
        assert_eq!((r.status, r.msg_id, r.is_accepted()), (Status::QUEUED, 42, true));
        assert_eq!(c.in_flight(), 0);
        c.ping().unwrap();
        h.join().unwrap();
    }

    #[test]
    fn wrong_secret_is_a_server_error() {
        let (addr, h) = serve(|mut p| login(&mut p, b"right", 8));
        match ProviderClient::connect(addr, "demo", "wrong") {
            Err(ClientError::ServerError { code, .. }) => assert_eq!(code, ErrorCode::AUTH_FAILED),
            other => panic!("{:?}", other.err()),
        }
        h.join().unwrap();
    }

    #[test]
    fn pipelined_replies_arrive_out_of_order_within_the_in_flight_limit() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 2);
            let a = read_push(&mut p);
            let b = read_push(&mut p);
            // The client must not send a third request before a reply frees a slot.
            assert!(p.silent_for(Duration::from_millis(200)));
            result(&mut p, b, 200);
            let c = read_push(&mut p);
            result(&mut p, c, 300);
            result(&mut p, a, 100);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let ids: Vec<u32> = (0..3).map(|i| c.send_push(&PushRequest::new(tok(i), "x")).unwrap()).collect();
        let mut got = Vec::new();
        while let Some(r) = c.recv_result(Some(Duration::from_secs(5))).unwrap() {
            let Reply::Result(r) = r else { panic!("{r:?}") };
            got.push((r.req_id, r.msg_id));
            if got.len() == 3 {
                break;
            }
        }
        assert_eq!(got, [(ids[1], 200), (ids[2], 300), (ids[0], 100)]);
        h.join().unwrap();
    }

    #[test]
    fn push_waits_for_its_own_reply_and_keeps_the_others() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            let a = read_push(&mut p);
            let b = read_push(&mut p);
            result(&mut p, a, 1);
            result(&mut p, b, 2);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let first = c.send_push(&PushRequest::new(tok(0), "a")).unwrap();
        assert_eq!(c.push(&PushRequest::new(tok(1), "b")).unwrap().msg_id, 2);
        let kept = c.recv_result(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(kept, Some(Reply::Result(r)) if r.req_id == first && r.msg_id == 1));
        h.join().unwrap();
    }

    #[test]
    fn multicast_splits_at_the_frame_limit_and_pairs_tokens_with_entries() {
        let tokens: Vec<Token> = (0..2500).map(tok).collect();
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            let mut sizes = Vec::new();
            while sizes.iter().sum::<usize>() < 2500 {
                let (req_id, ids) = p.expect(|f| {
                    let Frame::MultiPush(m) = f else { panic!("{f:?}") };
                    (
                        m.req_id,
                        m.tokens()
                            .map(|t| u64::from_be_bytes(t.0[..8].try_into().unwrap()))
                            .collect::<Vec<_>>(),
                    )
                });
                sizes.push(ids.len());
                let mut entries = Vec::new();
                for id in ids {
                    let status = if id.is_multiple_of(2) { Status::QUEUED } else { Status::BAD_TOKEN };
                    put_multi_entry(&mut entries, status, id * 10);
                }
                p.send(&Frame::MultiResult { req_id, entries: &entries });
            }
            assert_eq!(sizes, [1000, 1000, 500]);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let out = c.multicast(&tokens, &PushRequest::new(tok(0), "all")).unwrap();
        assert_eq!(out.len(), 2500);
        for (i, (t, status, msg_id)) in out.into_iter().enumerate() {
            assert_eq!(t, tok(i));
            assert_eq!(status, if i.is_multiple_of(2) { Status::QUEUED } else { Status::BAD_TOKEN });
            assert_eq!(msg_id, i as u64 * 10);
        }
        h.join().unwrap();
    }

    #[test]
    fn multicast_entry_count_mismatch_is_a_protocol_error() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            let req_id = p.expect(|f| match f {
                Frame::MultiPush(m) => m.req_id,
                other => panic!("{other:?}"),
            });
            let mut entries = Vec::new();
            put_multi_entry(&mut entries, Status::QUEUED, 1);
            p.send(&Frame::MultiResult { req_id, entries: &entries });
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let got = c.multicast(&[tok(1), tok(2)], &PushRequest::new(tok(0), "x"));
        assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
        h.join().unwrap();
    }

    type Check = fn(&ClientError) -> bool;

    #[test]
    fn garbage_error_and_goaway_after_login_fail_the_push() {
        let short_result: &[u8] = &[ftype::RESULT, 3, 0, 0, 1];
        let cases: [(&[u8], Check); 3] = [
            (short_result, |e| matches!(e, ClientError::Protocol(_))),
            (
                &[ftype::ERROR, 2, 10, b'x'],
                |e| matches!(e, ClientError::ServerError { code: ErrorCode::INTERNAL, text } if text == "x"),
            ),
            (&[ftype::GOAWAY, 5, 1, 0, 0, 0, 9], |e| {
                matches!(e, ClientError::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 9 })
            }),
        ];
        for (bytes, want) in cases {
            let (addr, h) = serve(move |mut p| {
                login(&mut p, b"k", 8);
                read_push(&mut p);
                p.raw(bytes);
            });
            let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
            let err = c.push(&PushRequest::new(tok(0), "x")).unwrap_err();
            assert!(want(&err), "{bytes:02x?}: {err:?}");
            h.join().unwrap();
        }
    }

    #[test]
    fn requests_the_gateway_would_reject_as_malformed_are_refused_locally() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            assert!(p.silent_for(Duration::from_millis(100)));
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let long = PushRequest::new(tok(0), "x").with_collapse(vec![b'c'; 65]);
        assert!(matches!(c.push(&long), Err(ClientError::Invalid(_))));
        let many: Vec<Token> = (0..1001).map(tok).collect();
        assert!(matches!(
            c.send_multi_push(&many, &PushRequest::new(tok(0), "x")),
            Err(ClientError::Invalid(_))
        ));
        assert!(matches!(
            c.send_multi_push(&[], &PushRequest::new(tok(0), "x")),
            Err(ClientError::Invalid(_))
        ));
        assert_eq!(c.multicast(&[], &PushRequest::new(tok(0), "x")).unwrap(), []);
        h.join().unwrap();
    }

    #[test]
    fn receipts_are_kept_aside_from_replies() {
        let receipt = |msg_id| Frame::Receipt { token: tok(1), msg_id, acked_at_ms: 1000 + msg_id };
        let (addr, h) = serve(move |mut p| {
            login(&mut p, b"k", 8);
            // A receipt left over from an earlier session arrives unasked.
            p.send(&receipt(1));
            let req_id = p.expect(|f| match f {
                Frame::Push(push) if push.note.flags == FLAG_RECEIPT => push.req_id,
                other => panic!("{other:?}"),
            });
            p.send(&receipt(2));
            result(&mut p, req_id, 3);
            p.expect(|f| assert_eq!(f, Frame::Ping));
            p.send(&Frame::Pong);
            p.send(&receipt(3));
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let r = c.push(&PushRequest::new(tok(1), "x").with_receipt()).unwrap();
        assert_eq!(r.msg_id, 3);
        let ids: Vec<u64> = c.take_receipts().iter().map(|r| r.msg_id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(c.recv_result(Some(Duration::ZERO)).unwrap(), None, "receipts are not replies");
        c.ping().unwrap();
        let third = c.recv_receipt(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(third, Some(Receipt { token: tok(1), msg_id: 3, acked_at_ms: 1003 }));
        h.join().unwrap();
    }

    #[test]
    fn feedback_follows_pages_with_a_strict_cursor() {
        fn page(entries: &[(usize, u64)]) -> Vec<u8> {
            entries.iter().flat_map(|&(t, at)| tok(t).0.into_iter().chain(at.to_be_bytes())).collect()
        }
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            let answer = |p: &mut Peer, since: (u64, Token), more: bool, entries: &[(usize, u64)]| {
                let req_id = p.expect(|f| match f {
                    Frame::Feedback { req_id, since_ms, after } if (since_ms, after) == since => req_id,
                    other => panic!("{other:?}"),
                });
                p.send(&Frame::FeedbackResult { req_id, more, entries: &page(entries) });
            };
            let zero = Token([0; TOKEN_LEN]);
            answer(&mut p, (50, zero), true, &[(1, 100), (2, 200)]);
            answer(&mut p, (200, tok(2)), false, &[(3, 300)]);
            // Many tokens in one millisecond: the token in the cursor moves the page on.
            answer(&mut p, (0, zero), true, &[(4, 400)]);
            answer(&mut p, (400, tok(4)), false, &[(5, 400)]);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        assert_eq!(c.feedback(50).unwrap(), [(tok(1), 100), (tok(2), 200), (tok(3), 300)]);
        assert_eq!(c.feedback(0).unwrap(), [(tok(4), 400), (tok(5), 400)]);
        assert_eq!(c.in_flight(), 0);
        h.join().unwrap();
    }

    #[test]
    fn push_topic_carries_the_notification_fields_and_gets_a_result() {
        let topic_id = crate::proto::topic::TOPIC_ID_BIT | 77;
        let (addr, h) = serve(move |mut p| {
            login(&mut p, b"k", 8);
            let req_id = p.expect(|f| {
                let Frame::PushTopic(pt) = f else { panic!("{f:?}") };
                assert_eq!(pt.topic, b"~all");
                let n = pt.note;
                assert_eq!(
                    (n.kind, n.priority, n.flags, n.expiry),
                    (Kind::BADGE.0, PRIORITY_NORMAL, FLAG_RECEIPT, 0)
                );
                assert_eq!((n.collapse, n.payload), (&b"score"[..], &b"2-1"[..]));
                pt.req_id
            });
            p.send(&Frame::Result { req_id, status: Status::QUEUED, msg_id: topic_id, info: 0 });
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let mut note = crate::client::new_note("2-1");
        note.kind = Kind::BADGE.0;
        note.priority = PRIORITY_NORMAL;
        note.flags = FLAG_RECEIPT;
        note.expiry = 0;
        note.collapse = bytes::Bytes::from_static(b"score");
        let r = c.push_topic("~all", &note).unwrap();
        assert_eq!((r.status, r.msg_id, c.in_flight()), (Status::QUEUED, topic_id, 0));
        assert!(crate::proto::topic::is_topic_id(r.msg_id));
        h.join().unwrap();
    }

    #[test]
    fn manage_topic_splits_at_1000_tokens_and_pairs_tokens_with_statuses() {
        let tokens: Vec<Token> = (0..2500).map(tok).collect();
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 4096);
            let mut sizes = Vec::new();
            while sizes.iter().sum::<usize>() < 2500 {
                let (req_id, ids) = p.expect(|f| {
                    let Frame::TopicManage { req_id, add, topic, tokens } = f else { panic!("{f:?}") };
                    assert!(add);
                    assert_eq!(topic, b"news");
                    let ids: Vec<u8> = tokens.chunks(TOKEN_LEN).map(|t| t[7] % 3).collect();
                    (req_id, ids)
                });
                sizes.push(ids.len());
                p.send(&Frame::TopicManageResult { req_id, statuses: &ids });
            }
            assert_eq!(sizes, [1000, 1000, 500]);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let out = c.manage_topic(true, "news", &tokens).unwrap();
        assert_eq!(out.len(), 2500);
        for (i, st) in out.into_iter().enumerate() {
            assert_eq!(st, SubStatus((i % 256 % 3) as u8), "token {i}");
        }
        assert_eq!(c.manage_topic(false, "news", &[]).unwrap(), []);
        assert!(matches!(c.send_manage_topic(true, "news", &[]), Err(ClientError::Invalid(_))));
        assert!(matches!(c.manage_topic(true, "", &tokens[..1]), Err(ClientError::Invalid(_))));
        h.join().unwrap();
    }

    #[test]
    fn a_topic_manage_counts_one_per_token_against_the_window() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 1000);
            let first = p.expect(|f| match f {
                Frame::TopicManage { req_id, tokens, .. } if tokens.len() == 600 * TOKEN_LEN => req_id,
                other => panic!("{other:?}"),
            });
            let push = read_push(&mut p);
            // 601 in flight: a second TOPIC_MANAGE of 500 does not fit until the first is answered.
            assert!(p.silent_for(Duration::from_millis(200)));
            p.send(&Frame::TopicManageResult { req_id: first, statuses: &[0; 600] });
            p.expect(|f| assert!(matches!(f, Frame::TopicManage { .. }), "{f:?}"));
            result(&mut p, push, 1);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let many: Vec<Token> = (0..600).map(tok).collect();
        c.send_manage_topic(false, "news", &many).unwrap();
        c.send_push(&PushRequest::new(tok(0), "x")).unwrap();
        assert_eq!(c.in_flight(), 601);
        c.send_manage_topic(false, "news", &many[..500]).unwrap();
        assert_eq!(c.in_flight(), 501);
        let got = c.recv_result(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!(got, Some(Reply::TopicManage { ref statuses, .. }) if statuses.len() == 600),
            "{got:?}"
        );
        h.join().unwrap();
    }

    #[test]
    fn topic_stats_and_a_short_manage_result() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            let req_id = p.expect(|f| match f {
                Frame::TopicStats { req_id, msg_id: 0x4000_0000_0000_0001 } => req_id,
                other => panic!("{other:?}"),
            });
            p.send(&Frame::TopicStatsResult { req_id, known: true, sent: 3, acked: 2 });
            let req_id = p.expect(|f| match f {
                Frame::TopicManage { req_id, .. } => req_id,
                other => panic!("{other:?}"),
            });
            p.send(&Frame::TopicManageResult { req_id, statuses: &[0] });
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let t = c.topic_stats(0x4000_0000_0000_0001).unwrap();
        assert_eq!((t.known, t.sent, t.acked), (true, 3, 2));
        let got = c.manage_topic(true, "news", &[tok(1), tok(2)]);
        assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
        h.join().unwrap();
    }

    #[test]
    fn a_silent_gateway_times_out() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            read_push(&mut p);
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        c.set_reply_timeout(Duration::from_millis(100));
        assert!(matches!(c.push(&PushRequest::new(tok(0), "x")), Err(ClientError::Timeout)));
        h.join().unwrap();
    }
}
