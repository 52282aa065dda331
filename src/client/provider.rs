//! The provider side: challenge-response login, then PUSH and MULTI_PUSH,
//! either one at a time or pipelined up to the gateway's in-flight limit.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::conn::{after, Conn, CONNECT_TIMEOUT};
use super::device::{refusal, unexpected};
use super::ClientError;
use crate::proto::frame::{
    multi_entries, MultiPush, Push, MAX_COLLAPSE, MAX_MULTICAST, PROVIDER_MAX_BODY, VERSION,
};
use crate::proto::session::auth_proof;
use crate::proto::{Frame, Kind, Status, Token, PRIORITY_HIGH, TOKEN_LEN};

/// Lifetime [`PushRequest::new`] gives a notification: a day, long enough to
/// reach a phone that was off overnight, short enough that stale alerts die.
pub const DEFAULT_TTL_S: u32 = 86_400;

/// How long [`ProviderClient::push`], `multicast` and `ping` wait for their answer by default.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One notification to push. Fields are public; the `with_*` methods are shorthands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushRequest {
    pub token: Token,
    pub kind: Kind,
    /// [`PRIORITY_HIGH`] (10) or `PRIORITY_NORMAL` (5).
    pub priority: u8,
    /// Reserved; 0 in protocol version 1.
    pub flags: u8,
    /// Unix seconds after which the notification is dropped; 0 = deliver now or never.
    pub expiry: u32,
    /// Up to 64 bytes; a stored notification with the same collapse id is replaced.
    pub collapse: Vec<u8>,
    pub payload: Vec<u8>,
}

impl PushRequest {
    /// An alert at high priority that expires [`DEFAULT_TTL_S`] from now, no collapse id.
    pub fn new(token: Token, payload: impl Into<Vec<u8>>) -> PushRequest {
        PushRequest {
            token,
            kind: Kind::ALERT,
            priority: PRIORITY_HIGH,
            flags: 0,
            expiry: expiry_in(DEFAULT_TTL_S),
            collapse: Vec::new(),
            payload: payload.into(),
        }
    }

    pub fn with_kind(mut self, kind: Kind) -> PushRequest {
        self.kind = kind;
        self
    }

    pub fn with_priority(mut self, priority: u8) -> PushRequest {
        self.priority = priority;
        self
    }

    /// Expires `ttl_s` seconds from now; 0 means now or never.
    pub fn with_ttl(mut self, ttl_s: u32) -> PushRequest {
        self.expiry = expiry_in(ttl_s);
        self
    }

    pub fn with_collapse(mut self, collapse: impl Into<Vec<u8>>) -> PushRequest {
        self.collapse = collapse.into();
        self
    }

    /// Refuses what the gateway would treat as a malformed frame, which would
    /// close the connection and lose every pipelined request with it. Values it
    /// answers with a status (payload size, kind, priority) are left to it.
    fn check(&self) -> Result<(), ClientError> {
        if self.collapse.len() > MAX_COLLAPSE {
            return Err(ClientError::Invalid(format!(
                "collapse id longer than {MAX_COLLAPSE} bytes"
            )));
        }
        Ok(())
    }
}

/// The expiry field for a notification that lives `ttl_s` seconds from now (0 stays 0).
pub fn expiry_in(ttl_s: u32) -> u32 {
    if ttl_s == 0 {
        return 0;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(now.saturating_add(ttl_s.into())).unwrap_or(u32::MAX)
}

/// The gateway's answer to one PUSH.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PushResult {
    pub req_id: u32,
    pub status: Status,
    /// The notification's id when delivered or queued, else 0.
    pub msg_id: u64,
    /// Status detail: retry-after ms for rate_limited/unavailable, unregister time for unregistered.
    pub info: u64,
}

impl PushResult {
    /// Delivered or queued: the gateway took responsibility for the notification.
    pub fn is_accepted(&self) -> bool {
        matches!(self.status, Status::DELIVERED | Status::QUEUED)
    }
}

/// An answer from the gateway to a pipelined request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    Result(PushResult),
    /// `(status, msg_id)` per token, in the order the MULTI_PUSH listed them.
    Multi {
        req_id: u32,
        entries: Vec<(Status, u64)>,
    },
}

impl Reply {
    pub fn req_id(&self) -> u32 {
        match self {
            Reply::Result(r) => r.req_id,
            Reply::Multi { req_id, .. } => *req_id,
        }
    }
}

enum Incoming {
    Reply(Reply),
    Pong,
}

/// An authenticated provider connection for one app. The gateway closes a
/// provider that sends nothing for 300 s: call [`ping`](Self::ping) when idle.
pub struct ProviderClient {
    conn: Conn,
    max_in_flight: u32,
    in_flight: u32,
    next_req: u32,
    /// Replies read while waiting for a different one; `recv_result` hands them out first.
    stash: VecDeque<Reply>,
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
        conn.send(&Frame::AuthHello {
            version: VERSION,
            app_id,
        })?;
        let nonce = conn
            .recv(after(CONNECT_TIMEOUT), |f| match f {
                Frame::Challenge { nonce } => Ok(nonce),
                other => Err(refusal(other)),
            })?
            .ok_or(ClientError::Timeout)?;
        conn.send(&Frame::Auth {
            proof: auth_proof(secret, app_id, &nonce),
        })?;
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
            next_req: 1,
            stash: VecDeque::new(),
            pings_sent: 0,
            pongs_seen: 0,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// Requests the gateway allows unanswered at once on this connection.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// Requests sent and not yet answered.
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
            Reply::Multi { .. } => Err(ClientError::Protocol(format!("MULTI_RESULT answered PUSH {id}"))),
        }
    }

    /// Sends a PUSH without waiting and returns its req_id. When `max_in_flight`
    /// requests are already unanswered it first reads a reply (kept for
    /// [`recv_result`](Self::recv_result)), so the gateway's limit is never exceeded.
    pub fn send_push(&mut self, req: &PushRequest) -> Result<u32, ClientError> {
        req.check()?;
        self.wait_for_slot()?;
        let req_id = self.take_req_id();
        self.conn.send(&Frame::Push(Push {
            req_id,
            token: req.token,
            kind: req.kind.0,
            priority: req.priority,
            flags: req.flags,
            expiry: req.expiry,
            collapse: &req.collapse,
            payload: &req.payload,
        }))?;
        self.in_flight += 1;
        Ok(req_id)
    }

    /// Sends one MULTI_PUSH of `req` (its `token` ignored) to 1..=1000 `tokens` without waiting.
    pub fn send_multi_push(&mut self, tokens: &[Token], req: &PushRequest) -> Result<u32, ClientError> {
        req.check()?;
        if tokens.is_empty() || tokens.len() > MAX_MULTICAST {
            return Err(ClientError::Invalid(format!(
                "{} tokens in one MULTI_PUSH",
                tokens.len()
            )));
        }
        self.wait_for_slot()?;
        let flat: Vec<u8> = tokens.iter().flat_map(|t| t.0).collect();
        let req_id = self.take_req_id();
        self.conn.send(&Frame::MultiPush(MultiPush {
            req_id,
            tokens: &flat,
            kind: req.kind.0,
            priority: req.priority,
            flags: req.flags,
            expiry: req.expiry,
            collapse: &req.collapse,
            payload: &req.payload,
        }))?;
        self.in_flight += 1;
        Ok(req_id)
    }

    /// The next RESULT or MULTI_RESULT, in the order the gateway sent them
    /// (not necessarily request order); `Ok(None)` if `timeout` passes first.
    pub fn recv_result(&mut self, timeout: Option<Duration>) -> Result<Option<Reply>, ClientError> {
        if let Some(r) = self.stash.pop_front() {
            return Ok(Some(r));
        }
        let deadline = timeout.and_then(after);
        loop {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => return Ok(Some(r)),
                Some(Incoming::Pong) => {}
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
        let fixed = 4 + 2 + 1 + 1 + 1 + 4 + 1 + req.collapse.len() + req.payload.len();
        let per_frame = (PROVIDER_MAX_BODY.saturating_sub(fixed) / TOKEN_LEN).min(MAX_MULTICAST);
        if per_frame == 0 {
            return Err(ClientError::Invalid(
                "payload too large for a MULTI_PUSH frame".into(),
            ));
        }
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(per_frame) {
            let id = self.send_multi_push(chunk, req)?;
            let entries = match self.wait_reply(id)? {
                Reply::Multi { entries, .. } => entries,
                Reply::Result(_) => {
                    return Err(ClientError::Protocol(format!("RESULT answered MULTI_PUSH {id}")))
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
                Some(Incoming::Pong) => {}
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

    fn wait_for_slot(&mut self) -> Result<(), ClientError> {
        let deadline = after(self.reply_timeout);
        while self.in_flight >= self.max_in_flight.max(1) {
            match self.read_incoming(deadline)? {
                Some(Incoming::Reply(r)) => self.stash.push_back(r),
                Some(Incoming::Pong) => {}
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
                Some(Incoming::Pong) => {}
                None => return Err(ClientError::Timeout),
            }
        }
    }

    fn read_incoming(&mut self, deadline: Option<Instant>) -> Result<Option<Incoming>, ClientError> {
        let got = self.conn.recv(deadline, |f| match f {
            Frame::Result {
                req_id,
                status,
                msg_id,
                info,
            } => Ok(Incoming::Reply(Reply::Result(PushResult {
                req_id,
                status,
                msg_id,
                info,
            }))),
            Frame::MultiResult { req_id, entries } => Ok(Incoming::Reply(Reply::Multi {
                req_id,
                entries: multi_entries(entries).collect(),
            })),
            Frame::Pong => Ok(Incoming::Pong),
            f @ (Frame::Error { .. } | Frame::GoAway { .. }) => Err(refusal(f)),
            other => Err(unexpected(&other)),
        })?;
        match &got {
            Some(Incoming::Reply(_)) => self.in_flight = self.in_flight.saturating_sub(1),
            Some(Incoming::Pong) => self.pongs_seen += 1,
            None => {}
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{serve, Peer};
    use crate::proto::frame::{ftype, put_multi_entry};
    use crate::proto::{ErrorCode, GoAwayReason, PRIORITY_NORMAL};

    const NONCE: [u8; 32] = [5; 32];

    fn tok(i: usize) -> Token {
        let mut t = [0u8; TOKEN_LEN];
        t[..8].copy_from_slice(&(i as u64).to_be_bytes());
        Token(t)
    }

    /// Runs the login as the gateway, checking the proof against `secret`.
    fn login(p: &mut Peer, secret: &[u8], max_in_flight: u32) {
        p.expect(|f| {
            assert_eq!(
                f,
                Frame::AuthHello {
                    version: 1,
                    app_id: "demo"
                }
            )
        });
        p.send(&Frame::Challenge { nonce: NONCE });
        let ok = p.expect(|f| {
            f == Frame::Auth {
                proof: auth_proof(secret, "demo", &NONCE),
            }
        });
        if ok {
            p.send(&Frame::AuthOk { max_in_flight });
        } else {
            p.send(&Frame::Error {
                code: ErrorCode::AUTH_FAILED,
                text: "authentication failed",
            });
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
        p.send(&Frame::Result {
            req_id,
            status: Status::DELIVERED,
            msg_id,
            info: 0,
        });
    }

    #[test]
    fn authenticates_and_pushes_one() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"s3cret", 8);
            let req_id = p.expect(|f| {
                let Frame::Push(push) = f else { panic!("{f:?}") };
                assert_eq!(push.token, tok(1));
                assert_eq!(
                    (push.kind, push.priority, push.flags),
                    (Kind::BACKGROUND.0, PRIORITY_NORMAL, 0)
                );
                assert_eq!((push.collapse, push.payload), (&b"score"[..], &b"3-1"[..]));
                let in_a_day = expiry_in(DEFAULT_TTL_S);
                assert!(
                    push.expiry > in_a_day - 60 && push.expiry <= in_a_day,
                    "{}",
                    push.expiry
                );
                push.req_id
            });
            p.send(&Frame::Result {
                req_id,
                status: Status::QUEUED,
                msg_id: 42,
                info: 0,
            });
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
        let ids: Vec<u32> = (0..3)
            .map(|i| c.send_push(&PushRequest::new(tok(i), "x")).unwrap())
            .collect();
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
                    let status = if id.is_multiple_of(2) {
                        Status::QUEUED
                    } else {
                        Status::BAD_TOKEN
                    };
                    put_multi_entry(&mut entries, status, id * 10);
                }
                p.send(&Frame::MultiResult {
                    req_id,
                    entries: &entries,
                });
            }
            assert_eq!(sizes, [1000, 1000, 500]);
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        let out = c.multicast(&tokens, &PushRequest::new(tok(0), "all")).unwrap();
        assert_eq!(out.len(), 2500);
        for (i, (t, status, msg_id)) in out.into_iter().enumerate() {
            assert_eq!(t, tok(i));
            assert_eq!(
                status,
                if i.is_multiple_of(2) {
                    Status::QUEUED
                } else {
                    Status::BAD_TOKEN
                }
            );
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
            p.send(&Frame::MultiResult {
                req_id,
                entries: &entries,
            });
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
                matches!(
                    e,
                    ClientError::GoAway {
                        reason: GoAwayReason::SHUTDOWN,
                        reconnect_ms: 9
                    }
                )
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
    fn a_silent_gateway_times_out() {
        let (addr, h) = serve(|mut p| {
            login(&mut p, b"k", 8);
            read_push(&mut p);
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut c = ProviderClient::connect(addr, "demo", "k").unwrap();
        c.set_reply_timeout(Duration::from_millis(100));
        assert!(matches!(
            c.push(&PushRequest::new(tok(0), "x")),
            Err(ClientError::Timeout)
        ));
        h.join().unwrap();
    }
}
