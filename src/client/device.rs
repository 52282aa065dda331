//! The device side: HELLO/WELCOME, then notifications (direct and topic) in,
//! ACKs, PINGs and topic subscriptions out, with an optional automatic
//! heartbeat; and the device secret that makes a device keep its token across runs.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use super::conn::{after, Conn, CONNECT_TIMEOUT};
use super::ClientError;
use crate::proto::frame::{Hello, DEVICE_MAX_BODY, MAX_SECRET, MIN_SECRET, VERSION};
use crate::proto::topic::MAX_TOPIC;
use crate::proto::{ErrorCode, Frame, GoAwayReason, Kind, SubStatus, Token};

/// Something the gateway told a registered device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DeviceEvent {
    /// A notification; answer it with [`DeviceClient::ack`] or it is redelivered.
    Notify { msg_id: u64, kind: Kind, priority: u8, payload: Vec<u8> },
    /// A message pushed to `topic` (a subscribed one, or `~all`); ACK it like
    /// a notification. Its `msg_id` has bit 62 set, so it never equals a
    /// direct notification's.
    TopicNotify { msg_id: u64, kind: Kind, priority: u8, topic: String, payload: Vec<u8> },
    /// The answer to [`DeviceClient::subscribe`] or [`DeviceClient::unsubscribe`].
    SubscribeResult { req_id: u16, status: SubStatus },
    /// The answer to a [`DeviceClient::ping`] (automatic heartbeats' PONGs are not reported).
    Pong,
    /// The gateway is closing this connection; see the reason for whether to reconnect.
    GoAway { reason: GoAwayReason, reconnect_ms: u32 },
    /// The gateway rejected something this device sent and is closing the connection.
    Error { code: ErrorCode, text: String },
    /// The connection is gone; every later call reports this again.
    Closed,
}

impl DeviceEvent {
    /// The id to ACK: a direct or a topic notification's msg_id.
    pub fn msg_id(&self) -> Option<u64> {
        match self {
            DeviceEvent::Notify { msg_id, .. } | DeviceEvent::TopicNotify { msg_id, .. } => Some(*msg_id),
            _ => None,
        }
    }
}

/// One PING on the wire, oldest first: PONGs come back in order, so the front
/// one tells whether a PONG answers the caller or the automatic heartbeat.
struct SentPing {
    at: Instant,
    auto: bool,
}

/// A registered device connection.
pub struct DeviceClient {
    conn: Conn,
    token: Token,
    heartbeat_s: u16,
    missed: u32,
    auto_heartbeat: bool,
    last_ping: Instant,
    pings: VecDeque<SentPing>,
    /// Events read while waiting for a SUBSCRIBE_RESULT; `next_event` hands them out first.
    pending: VecDeque<DeviceEvent>,
}

impl DeviceClient {
    /// Connects and registers: sends HELLO and waits for WELCOME. An ERROR or
    /// GOAWAY instead becomes [`ClientError::ServerError`] or [`ClientError::GoAway`].
    /// `keepalive_s` 0 lets the gateway choose the heartbeat interval.
    pub fn connect<A: ToSocketAddrs>(
        addr: A,
        app_id: &str,
        secret: &[u8],
        keepalive_s: u16,
    ) -> Result<DeviceClient, ClientError> {
        // Only what the encoding cannot carry is refused here; the gateway judges
        // the rest, so tests can watch it reject a short secret.
        if app_id.len() > u8::MAX as usize || secret.len() > u8::MAX as usize {
            return Err(ClientError::Invalid("app id and secret must each fit in 255 bytes".into()));
        }
        let mut conn = Conn::connect(addr, DEVICE_MAX_BODY)?;
        conn.send(&Frame::Hello(Hello { version: VERSION, keepalive_s, app_id, secret }))?;
        let welcome = conn.recv(after(CONNECT_TIMEOUT), |f| match f {
            Frame::Welcome { token, heartbeat_s, missed } => Ok((token, heartbeat_s, missed)),
            other => Err(refusal(other)),
        })?;
        let (token, heartbeat_s, missed) = welcome.ok_or(ClientError::Timeout)?;
        Ok(DeviceClient {
            conn,
            token,
            heartbeat_s,
            missed,
            auto_heartbeat: false,
            last_ping: Instant::now(),
            pings: VecDeque::new(),
            pending: VecDeque::new(),
        })
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// The interval the gateway expects PINGs at, in seconds.
    pub fn heartbeat_s(&self) -> u16 {
        self.heartbeat_s
    }

    /// How many stored notifications the gateway dropped while this device was
    /// away, plus the topic messages its catch-up cap skipped.
    pub fn missed(&self) -> u32 {
        self.missed
    }

    /// When on, [`next_event`](Self::next_event) sends a PING whenever half the
    /// heartbeat interval passed since the last one, swallows its PONG, and
    /// fails with [`ClientError::Timeout`] if the PONG is 10 s (at most one
    /// interval) late: a dead path that TCP alone would not notice for minutes.
    pub fn set_auto_heartbeat(&mut self, on: bool) {
        self.auto_heartbeat = on;
    }

    /// Waits up to `timeout` (forever if `None`) for the next event; `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<DeviceEvent>, ClientError> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(Some(ev));
        }
        let until = timeout.and_then(after);
        loop {
            let tick = self.heartbeat_due();
            let deadline = match (until, tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.conn.recv(deadline, device_event) {
                Ok(Some(DeviceEvent::Pong)) => {
                    if self.pings.pop_front().is_some_and(|p| p.auto) {
                        continue;
                    }
                    return Ok(Some(DeviceEvent::Pong));
                }
                Ok(Some(ev)) => return Ok(Some(ev)),
                Ok(None) => {
                    // Ticked first, so a caller polling with a zero timeout still heartbeats.
                    self.on_heartbeat_tick()?;
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Ok(None);
                    }
                }
                Err(ClientError::Closed) => return Ok(Some(DeviceEvent::Closed)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Acknowledges notification `msg_id` so the gateway drops its stored copy.
    pub fn ack(&mut self, msg_id: u64) -> Result<(), ClientError> {
        self.conn.send(&Frame::Ack { msg_id })
    }

    /// Asks to join `topic` (protocol.md 10.4); the answer comes as
    /// [`DeviceEvent::SubscribeResult`] with this `req_id`, or use
    /// [`wait_subscribe_result`](Self::wait_subscribe_result). A name of the
    /// wrong length is refused here (the gateway would close the connection);
    /// other bad names are answered `bad_topic`.
    pub fn subscribe(&mut self, req_id: u16, topic: &str) -> Result<(), ClientError> {
        self.send_subscribe(req_id, true, topic)
    }

    /// Asks to leave `topic`; answered like [`subscribe`](Self::subscribe).
    pub fn unsubscribe(&mut self, req_id: u16, topic: &str) -> Result<(), ClientError> {
        self.send_subscribe(req_id, false, topic)
    }

    fn send_subscribe(&mut self, req_id: u16, on: bool, topic: &str) -> Result<(), ClientError> {
        check_topic(topic)?;
        self.conn.send(&Frame::Subscribe { req_id, on, topic: topic.as_bytes() })
    }

    /// Waits up to `timeout` for the SUBSCRIBE_RESULT of `req_id`. Other events
    /// read meanwhile (notifications, other results) are kept for
    /// [`next_event`](Self::next_event); a GOAWAY or ERROR is kept too and
    /// fails the wait.
    pub fn wait_subscribe_result(
        &mut self,
        req_id: u16,
        timeout: Duration,
    ) -> Result<SubStatus, ClientError> {
        if let Some(i) = self.pending.iter().position(|e| is_result_for(e, req_id)) {
            if let Some(DeviceEvent::SubscribeResult { status, .. }) = self.pending.remove(i) {
                return Ok(status);
            }
        }
        let until = after(timeout);
        // Kept aside while reading, so next_event reads the socket; events
        // read now go after the ones kept before.
        let kept = std::mem::take(&mut self.pending);
        let mut later = VecDeque::new();
        let got = self.wait_result_reading(req_id, until, &mut later);
        self.pending = kept;
        self.pending.append(&mut later);
        got
    }

    fn wait_result_reading(
        &mut self,
        req_id: u16,
        until: Option<Instant>,
        later: &mut VecDeque<DeviceEvent>,
    ) -> Result<SubStatus, ClientError> {
        loop {
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(ClientError::Timeout);
            }
            let ev = self.next_event(left)?;
            match ev {
                None => return Err(ClientError::Timeout),
                Some(DeviceEvent::SubscribeResult { req_id: r, status }) if r == req_id => return Ok(status),
                Some(DeviceEvent::Closed) => {
                    later.push_back(DeviceEvent::Closed);
                    return Err(ClientError::Closed);
                }
                Some(DeviceEvent::GoAway { reason, reconnect_ms }) => {
                    later.push_back(DeviceEvent::GoAway { reason, reconnect_ms });
                    return Err(ClientError::GoAway { reason, reconnect_ms });
                }
                Some(DeviceEvent::Error { code, text }) => {
                    later.push_back(DeviceEvent::Error { code, text: text.clone() });
                    return Err(ClientError::ServerError { code, text });
                }
                Some(other) => later.push_back(other),
            }
        }
    }

    /// Unregisters this device (the app was uninstalled or the user opted out)
    /// and waits for the gateway's GOAWAY `unregistered`, which says the
    /// tombstone is durable. Notifications arriving meanwhile are dropped: the
    /// gateway deletes them too. Registering again (a new `connect` with the
    /// same secret) lifts the tombstone and gives the same token.
    pub fn unregister(&mut self) -> Result<(), ClientError> {
        self.conn.send(&Frame::Unregister)?;
        let deadline = after(CONNECT_TIMEOUT);
        loop {
            match self.conn.recv(deadline, device_event)? {
                Some(DeviceEvent::GoAway { reason: GoAwayReason::UNREGISTERED, .. }) => return Ok(()),
                Some(DeviceEvent::GoAway { reason, reconnect_ms }) => {
                    return Err(ClientError::GoAway { reason, reconnect_ms })
                }
                Some(DeviceEvent::Error { code, text }) => {
                    return Err(ClientError::ServerError { code, text })
                }
                Some(_) => {}
                None => return Err(ClientError::Timeout),
            }
        }
    }

    /// Sends a PING; its PONG arrives as [`DeviceEvent::Pong`].
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.send_ping(false)
    }

    /// Writes bytes as they are, for tests that need to send what the client would not.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.conn.send_raw(bytes)
    }

    /// The socket, e.g. to shut it down or read its addresses.
    pub fn stream(&self) -> &TcpStream {
        self.conn.stream()
    }

    /// A second handle to the socket, for a test that must write while another thread reads.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.conn.stream().try_clone()
    }

    fn send_ping(&mut self, auto: bool) -> Result<(), ClientError> {
        self.conn.send(&Frame::Ping)?;
        let now = Instant::now();
        self.last_ping = now;
        self.pings.push_back(SentPing { at: now, auto });
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        (self.auto_heartbeat && self.heartbeat_s > 0).then(|| Duration::from_secs(self.heartbeat_s.into()))
    }

    /// When the heartbeat next needs attention: a PING to send or a PONG overdue.
    fn heartbeat_due(&self) -> Option<Instant> {
        let every = self.interval()?;
        let next_ping = self.last_ping + every / 2;
        match self.pings.iter().find(|p| p.auto) {
            Some(p) => Some(next_ping.min(p.at + pong_grace(every))),
            None => Some(next_ping),
        }
    }

    fn on_heartbeat_tick(&mut self) -> Result<(), ClientError> {
        let Some(every) = self.interval() else {
            return Ok(());
        };
        let now = Instant::now();
        if self.pings.iter().any(|p| p.auto && now >= p.at + pong_grace(every)) {
            return Err(ClientError::Timeout);
        }
        if now >= self.last_ping + every / 2 {
            self.send_ping(true)?;
        }
        Ok(())
    }
}

/// How long an automatic PING may go unanswered before the path counts as
/// dead: protocol.md asks for "a few seconds", and never more than an interval.
fn pong_grace(every: Duration) -> Duration {
    every.min(Duration::from_secs(10))
}

fn is_result_for(e: &DeviceEvent, req_id: u16) -> bool {
    matches!(e, DeviceEvent::SubscribeResult { req_id: r, .. } if *r == req_id)
}

/// A topic name the frame can carry: 1..64 bytes. Its characters are the gateway's to judge.
pub(crate) fn check_topic(topic: &str) -> Result<(), ClientError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(ClientError::Invalid(format!("topic name of {} bytes (1 to {MAX_TOPIC})", topic.len())));
    }
    Ok(())
}

fn device_event(f: Frame<'_>) -> Result<DeviceEvent, ClientError> {
    Ok(match f {
        Frame::Notify { msg_id, kind, priority, payload } => {
            DeviceEvent::Notify { msg_id, kind: Kind(kind), priority, payload: payload.to_vec() }
        }
        Frame::TopicNotify { msg_id, kind, priority, topic, payload } => {
            let topic = std::str::from_utf8(topic)
                .map_err(|_| ClientError::Protocol("TOPIC_NOTIFY topic is not UTF-8".into()))?;
            DeviceEvent::TopicNotify {
                msg_id,
                kind: Kind(kind),
                priority,
                topic: topic.to_string(),
                payload: payload.to_vec(),
            }
        }
        Frame::SubscribeResult { req_id, status } => DeviceEvent::SubscribeResult { req_id, status },
        Frame::Pong => DeviceEvent::Pong,
        Frame::GoAway { reason, reconnect_ms } => DeviceEvent::GoAway { reason, reconnect_ms },
        Frame::Error { code, text } => DeviceEvent::Error { code, text: text.to_string() },
        other => return Err(unexpected(&other)),
    })
}

/// What a handshake answer other than the expected one means to the caller.
pub(crate) fn refusal(f: Frame<'_>) -> ClientError {
    match f {
        Frame::Error { code, text } => ClientError::ServerError { code, text: text.to_string() },
        Frame::GoAway { reason, reconnect_ms } => ClientError::GoAway { reason, reconnect_ms },
        other => unexpected(&other),
    }
}

pub(crate) fn unexpected(f: &Frame<'_>) -> ClientError {
    ClientError::Protocol(format!("unexpected frame type 0x{:02x} from the gateway", f.ftype()))
}

/// A device's secret: the token is derived from it, so keeping it keeps the token.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSecret(Vec<u8>);

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(..)")
    }
}

impl DeviceSecret {
    /// Bytes in a generated secret.
    pub const GENERATED_LEN: usize = 32;

    /// A fresh 256-bit secret from the OS's random source.
    pub fn generate() -> io::Result<DeviceSecret> {
        let mut b = [0u8; Self::GENERATED_LEN];
        getrandom::getrandom(&mut b).map_err(io::Error::other)?;
        Ok(DeviceSecret(b.to_vec()))
    }

    /// A secret of 16 to 64 bytes, the lengths the gateway accepts.
    pub fn from_bytes(b: &[u8]) -> Option<DeviceSecret> {
        (MIN_SECRET..=MAX_SECRET).contains(&b.len()).then(|| DeviceSecret(b.to_vec()))
    }

    /// Parses hex digits (surrounding whitespace ignored) into a secret of 16 to 64 bytes.
    pub fn from_hex(s: &str) -> Option<DeviceSecret> {
        DeviceSecret::from_bytes(&hex::decode(s.trim()).ok()?)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads the hex secret in `path`, or generates one and writes it there
    /// (mode 0600: whoever reads it can receive this device's notifications).
    pub fn load_or_create(path: &Path) -> io::Result<DeviceSecret> {
        match fs::read_to_string(path) {
            Ok(s) => return DeviceSecret::from_hex(&s).ok_or_else(|| bad_file(path)),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let secret = DeviceSecret::generate()?;
        // Written whole under a temporary name, then linked into place: a
        // concurrent reader never sees a half-written file, and link() fails
        // rather than replace a secret another process created meanwhile.
        // Named after part of the new secret, so concurrent creators never share it.
        let tmp = path.with_extension(format!("tmp-{}", &secret.to_hex()[..16]));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = opts.open(&tmp).and_then(|mut f| {
            writeln!(f, "{}", secret.to_hex())?;
            f.sync_all()
        });
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(secret),
            // Another process created it first; its secret wins so both agree.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                DeviceSecret::from_hex(&fs::read_to_string(path)?).ok_or_else(|| bad_file(path))
            }
            Err(e) => Err(e),
        }
    }
}

fn bad_file(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: expected 32 to 128 hex digits (a 16 to 64 byte secret)", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{serve, Peer};
    use crate::proto::frame::ftype;

    const T: Token = Token([0xab; 24]);

    /// Reads HELLO and answers WELCOME with `heartbeat_s`.
    fn welcome(p: &mut Peer, heartbeat_s: u16) {
        p.expect(|f| assert!(matches!(f, Frame::Hello(_)), "{f:?}"));
        p.send(&Frame::Welcome { token: T, heartbeat_s, missed: 3 });
    }

    #[test]
    fn registers_receives_acks_and_sees_goaway_then_closed() {
        let (addr, h) = serve(|mut p| {
            p.expect(|f| {
                let Frame::Hello(h) = f else { panic!("{f:?}") };
                assert_eq!((h.version, h.keepalive_s, h.app_id, h.secret), (1, 30, "demo", &[9u8; 20][..]));
            });
            p.send(&Frame::Welcome { token: T, heartbeat_s: 60, missed: 3 });
            p.send(&Frame::Notify { msg_id: 7, kind: Kind::BADGE.0, priority: 5, payload: b"hi" });
            p.expect(|f| assert_eq!(f, Frame::Ack { msg_id: 7 }));
            p.expect(|f| assert_eq!(f, Frame::Ping));
            p.send(&Frame::Pong);
            p.send(&Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 500 });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[9; 20], 30).unwrap();
        assert_eq!((d.token(), d.heartbeat_s(), d.missed()), (T, 60, 3));
        let ev = d.next_event(Some(Duration::from_secs(5))).unwrap();
        let want = DeviceEvent::Notify { msg_id: 7, kind: Kind::BADGE, priority: 5, payload: b"hi".to_vec() };
        assert_eq!(ev, Some(want));
        d.ack(7).unwrap();
        d.ping().unwrap();
        assert_eq!(d.next_event(None).unwrap(), Some(DeviceEvent::Pong));
        let goaway = DeviceEvent::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 500 };
        assert_eq!(d.next_event(None).unwrap(), Some(goaway));
        h.join().unwrap();
        assert_eq!(d.next_event(None).unwrap(), Some(DeviceEvent::Closed));
        assert_eq!(d.next_event(None).unwrap(), Some(DeviceEvent::Closed));
    }

    #[test]
    fn handshake_refusals_become_errors() {
        let (addr, h) = serve(|mut p| {
            p.frame();
            p.send(&Frame::Error { code: ErrorCode::BAD_CREDENTIAL, text: "too short" });
        });
        match DeviceClient::connect(addr, "demo", &[1; 4], 0) {
            Err(ClientError::ServerError { code, text }) => {
                assert_eq!((code, text.as_str()), (ErrorCode::BAD_CREDENTIAL, "too short"))
            }
            other => panic!("{:?}", other.err()),
        }
        h.join().unwrap();

        let (addr, h) = serve(|mut p| {
            p.frame();
            p.send(&Frame::GoAway { reason: GoAwayReason::SERVER_FULL, reconnect_ms: 2000 });
        });
        let err = DeviceClient::connect(addr, "demo", &[1; 16], 0).err();
        assert!(matches!(
            err,
            Some(ClientError::GoAway { reason: GoAwayReason::SERVER_FULL, reconnect_ms: 2000 })
        ));
        h.join().unwrap();

        let (addr, h) = serve(|mut p| {
            p.frame();
        });
        let err = DeviceClient::connect(addr, "demo", &[1; 16], 0).err();
        assert!(matches!(err, Some(ClientError::Closed)), "{err:?}");
        h.join().unwrap();
    }

    /// Each garbage stream is sent after a good WELCOME and must surface as a Protocol error.
    #[test]
    fn garbage_from_the_gateway_is_a_protocol_error() {
        const CHALLENGE: [u8; 34] = {
            let mut c = [0u8; 34];
            c[0] = ftype::CHALLENGE;
            c[1] = 32;
            c
        };
        let cases: [&[u8]; 6] = [
            &[ftype::NOTIFY, 0x80, 0x80, 0x80, 0x01],    // four length bytes
            &[ftype::NOTIFY, 0xff, 0xff, 0x7f],          // over the device port's maximum
            &[0x99, 0x00],                               // unknown type
            &[ftype::NOTIFY, 0x03, 1, 2, 3],             // body shorter than its fields
            &CHALLENGE,                                  // a provider-port frame
            &[ftype::NOTIFY, 0x0a, 0, 0, 0, 0, 0, 0, 0], // closed mid-frame
        ];
        for bytes in cases {
            let (addr, h) = serve(move |mut p| {
                welcome(&mut p, 60);
                p.raw(bytes);
            });
            let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
            let got = d.next_event(Some(Duration::from_secs(5)));
            assert!(matches!(got, Err(ClientError::Protocol(_))), "{bytes:02x?}: {got:?}");
            h.join().unwrap();
        }
    }

    #[test]
    fn timeout_keeps_a_partial_frame() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (addr, h) = serve(move |mut p| {
            welcome(&mut p, 60);
            let mut f = Vec::new();
            Frame::Notify { msg_id: 1, kind: 0, priority: 10, payload: b"split" }.encode(&mut f);
            p.raw(&f[..6]);
            rx.recv().unwrap();
            p.raw(&f[6..]);
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        assert_eq!(d.next_event(Some(Duration::from_millis(50))).unwrap(), None);
        tx.send(()).unwrap();
        let ev = d.next_event(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!(ev, Some(DeviceEvent::Notify { msg_id: 1, ref payload, .. }) if payload == b"split")
        );
        h.join().unwrap();
    }

    #[test]
    fn auto_heartbeat_pings_swallows_pong_and_detects_a_dead_path() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 1);
            p.expect(|f| assert_eq!(f, Frame::Ping));
            p.send(&Frame::Pong);
            p.send(&Frame::Notify { msg_id: 2, kind: 0, priority: 10, payload: b"" });
            // The next PING goes unanswered, as on a path that silently died.
            p.expect(|f| assert_eq!(f, Frame::Ping));
            std::thread::sleep(Duration::from_secs(3));
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        d.set_auto_heartbeat(true);
        let ev = d.next_event(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(ev, Some(DeviceEvent::Notify { msg_id: 2, .. })), "{ev:?}");
        assert!(matches!(d.next_event(Some(Duration::from_secs(5))), Err(ClientError::Timeout)));
        h.join().unwrap();
    }

    #[test]
    fn auto_heartbeat_also_runs_when_polled_with_a_zero_timeout() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 1);
            p.expect(|f| assert_eq!(f, Frame::Ping));
            p.send(&Frame::Pong);
            p.send(&Frame::Notify { msg_id: 3, kind: 0, priority: 10, payload: b"" });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        d.set_auto_heartbeat(true);
        let end = Instant::now() + Duration::from_secs(5);
        let got = loop {
            match d.next_event(Some(Duration::ZERO)).unwrap() {
                Some(ev) => break Some(ev),
                None if Instant::now() > end => break None,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(matches!(got, Some(DeviceEvent::Notify { msg_id: 3, .. })), "{got:?}");
        h.join().unwrap();
    }

    #[test]
    fn unregister_waits_for_the_durable_goaway() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 60);
            p.send(&Frame::Notify { msg_id: 4, kind: 0, priority: 10, payload: b"late" });
            p.expect(|f| assert_eq!(f, Frame::Unregister));
            p.send(&Frame::GoAway { reason: GoAwayReason::UNREGISTERED, reconnect_ms: 0 });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        d.unregister().unwrap();
        h.join().unwrap();

        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 60);
            p.frame();
            p.send(&Frame::Error { code: ErrorCode::INTERNAL, text: "store down" });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        assert!(matches!(d.unregister(), Err(ClientError::ServerError { code: ErrorCode::INTERNAL, .. })));
        h.join().unwrap();
    }

    #[test]
    fn subscribes_and_tells_topic_messages_from_direct_ones() {
        let topic_id = crate::proto::topic::TOPIC_ID_BIT | 9;
        let (addr, h) = serve(move |mut p| {
            welcome(&mut p, 60);
            p.expect(|f| assert_eq!(f, Frame::Subscribe { req_id: 5, on: true, topic: b"news" }));
            // A topic message and a direct one overtake the answer; both must reach next_event.
            p.send(&Frame::TopicNotify {
                msg_id: topic_id,
                kind: 0,
                priority: 5,
                topic: b"news",
                payload: b"t",
            });
            p.send(&Frame::Notify { msg_id: 3, kind: 0, priority: 10, payload: b"d" });
            p.send(&Frame::SubscribeResult { req_id: 5, status: SubStatus::OK });
            p.expect(|f| assert_eq!(f, Frame::Subscribe { req_id: 6, on: false, topic: b"~all" }));
            p.send(&Frame::SubscribeResult { req_id: 6, status: SubStatus::BAD_TOPIC });
            p.expect(|f| assert_eq!(f, Frame::Ack { msg_id: topic_id }));
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        d.subscribe(5, "news").unwrap();
        assert_eq!(d.wait_subscribe_result(5, Duration::from_secs(5)).unwrap(), SubStatus::OK);
        d.unsubscribe(6, "~all").unwrap();
        assert_eq!(d.wait_subscribe_result(6, Duration::from_secs(5)).unwrap(), SubStatus::BAD_TOPIC);
        let first = d.next_event(Some(Duration::from_secs(5))).unwrap();
        let want = DeviceEvent::TopicNotify {
            msg_id: topic_id,
            kind: Kind::ALERT,
            priority: 5,
            topic: "news".into(),
            payload: b"t".to_vec(),
        };
        assert_eq!(first, Some(want));
        let second = d.next_event(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(second, Some(DeviceEvent::Notify { msg_id: 3, .. })), "{second:?}");
        d.ack(first.and_then(|e| e.msg_id()).unwrap()).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn topic_names_the_frame_cannot_carry_are_refused_locally() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 60);
            assert!(p.silent_for(Duration::from_millis(100)));
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        assert!(matches!(d.subscribe(1, ""), Err(ClientError::Invalid(_))));
        assert!(matches!(d.unsubscribe(1, &"x".repeat(65)), Err(ClientError::Invalid(_))));
        h.join().unwrap();
    }

    #[test]
    fn a_goaway_while_waiting_for_a_subscribe_result_fails_the_wait_and_stays_visible() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 60);
            p.frame();
            p.send(&Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 7 });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        d.subscribe(1, "news").unwrap();
        let err = d.wait_subscribe_result(1, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ClientError::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 7 }));
        let ev = d.next_event(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(ev, Some(DeviceEvent::GoAway { reconnect_ms: 7, .. })), "{ev:?}");
        h.join().unwrap();
    }

    #[test]
    fn a_topic_notify_with_a_non_utf8_topic_is_a_protocol_error() {
        let (addr, h) = serve(|mut p| {
            welcome(&mut p, 60);
            p.send(&Frame::TopicNotify {
                msg_id: 1 << 62,
                kind: 0,
                priority: 10,
                topic: &[0xff],
                payload: b"",
            });
        });
        let mut d = DeviceClient::connect(addr, "demo", &[1; 16], 0).unwrap();
        let got = d.next_event(Some(Duration::from_secs(5)));
        assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
        h.join().unwrap();
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.secret");
        let a = DeviceSecret::load_or_create(&path).unwrap();
        assert_eq!(a.as_bytes().len(), DeviceSecret::GENERATED_LEN);
        assert_eq!(DeviceSecret::load_or_create(&path).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let racing = dir.path().join("raced.secret");
        let got: Vec<DeviceSecret> = (0..8)
            .map(|_| {
                let p = racing.clone();
                std::thread::spawn(move || DeviceSecret::load_or_create(&p).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(got.iter().all(|s| *s == got[0]), "every racer ends with the same secret");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary files left");
        fs::write(&path, "abcd\n").unwrap();
        assert!(DeviceSecret::load_or_create(&path).is_err());
        assert!(DeviceSecret::from_hex(&"00".repeat(15)).is_none());
        assert!(DeviceSecret::from_hex(&"00".repeat(65)).is_none());
        assert!(DeviceSecret::from_hex(" 0011223344556677889900aabbccddeeff\n").is_some());
    }
}
