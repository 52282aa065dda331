//! Frame codec: header framing and the byte layout of every frame on both ports.
//!
//! A frame is `type:u8 | length:varint | body[length]`. The length is 1 to 3
//! bytes, 7 bits per byte, least significant group first, high bit set on every
//! byte but the last (the MQTT "remaining length" scheme), and must use the
//! fewest bytes. All integers in bodies are big-endian. Decoding never
//! allocates; an incomplete frame is `Ok(None)`, not an error.

use bytes::BufMut;

use super::codes::{ErrorCode, GoAwayReason, Status, SubStatus};
use super::token::{Token, TOKEN_LEN};
use super::topic::{MAX_MANAGE, MAX_TOPIC};

/// The only protocol version this gateway speaks.
pub const VERSION: u8 = 1;
/// Largest notification payload (the APNs limit).
pub const MAX_PAYLOAD: usize = 4096;
/// Longest app id, in bytes.
pub const MAX_APP_ID: usize = 64;
/// Shortest device secret, in bytes (128 bits).
pub const MIN_SECRET: usize = 16;
/// Longest device secret, in bytes.
pub const MAX_SECRET: usize = 64;
/// Longest collapse id, in bytes.
pub const MAX_COLLAPSE: usize = 64;
/// Most tokens in one MULTI_PUSH.
pub const MAX_MULTICAST: usize = 1000;
/// Longest text in an ERROR frame, in bytes.
pub const MAX_ERROR_TEXT: usize = 200;
/// Largest frame body accepted or sent on the device port.
pub const DEVICE_MAX_BODY: usize = 8192;
/// Largest frame body accepted or sent on the provider port.
pub const PROVIDER_MAX_BODY: usize = 32768;
/// Largest header: type byte plus a 3-byte length.
pub const MAX_HEADER: usize = 4;
/// Size of the challenge nonce and of the AUTH proof.
pub const NONCE_LEN: usize = 32;
/// Bytes per entry in a MULTI_RESULT: status u8, msg_id u64.
pub const MULTI_RESULT_ENTRY: usize = 9;

/// Frame type bytes.
pub mod ftype {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const PONG: u8 = 0x04;
    pub const NOTIFY: u8 = 0x05;
    pub const ACK: u8 = 0x06;
    pub const GOAWAY: u8 = 0x07;
    pub const ERROR: u8 = 0x08;
    pub const UNREGISTER: u8 = 0x09;
    pub const SUBSCRIBE: u8 = 0x0A;
    pub const UNSUBSCRIBE: u8 = 0x0B;
    pub const SUBSCRIBE_RESULT: u8 = 0x0C;
    pub const TOPIC_NOTIFY: u8 = 0x0D;
    pub const AUTH_HELLO: u8 = 0x21;
    pub const CHALLENGE: u8 = 0x22;
    pub const AUTH: u8 = 0x23;
    pub const AUTH_OK: u8 = 0x24;
    pub const PUSH: u8 = 0x25;
    pub const RESULT: u8 = 0x26;
    pub const MULTI_PUSH: u8 = 0x27;
    pub const MULTI_RESULT: u8 = 0x28;
    pub const FEEDBACK: u8 = 0x29;
    pub const FEEDBACK_RESULT: u8 = 0x2A;
    pub const RECEIPT: u8 = 0x2B;
    pub const SUBSCRIBE_RECEIPTS: u8 = 0x2C;
    pub const PUSH_TOPIC: u8 = 0x2D;
    pub const TOPIC_MANAGE: u8 = 0x2E;
    pub const TOPIC_MANAGE_RESULT: u8 = 0x2F;
    pub const TOPIC_STATS: u8 = 0x30;
    pub const TOPIC_STATS_RESULT: u8 = 0x31;
}

/// PUSH / MULTI_PUSH flags bit: send a RECEIPT when the device acknowledges.
pub const FLAG_RECEIPT: u8 = 0x01;
/// Every flags bit defined by version 1; others must be 0.
pub const KNOWN_FLAGS: u8 = FLAG_RECEIPT;
/// Bytes per FEEDBACK_RESULT entry: token, unregistered-at unix ms.
pub const FEEDBACK_ENTRY: usize = TOKEN_LEN + 8;
/// Most entries in one FEEDBACK_RESULT.
pub const MAX_FEEDBACK: usize = 800;

/// Why bytes could not be decoded. Maps to a wire [`ErrorCode`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameError {
    /// The length exceeds the port's maximum body.
    TooLarge,
    /// Bad length encoding or a body that does not match its field table.
    Malformed,
    /// A type byte this protocol does not define.
    UnknownType(u8),
}

impl FrameError {
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::TooLarge => ErrorCode::FRAME_TOO_LARGE,
            FrameError::Malformed => ErrorCode::MALFORMED_FRAME,
            FrameError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME_TYPE,
        }
    }
}

/// A framed but not yet interpreted frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawFrame<'a> {
    pub ftype: u8,
    pub body: &'a [u8],
}

/// Splits one frame off the front of `buf`.
///
/// Returns the frame and the bytes it used, `Ok(None)` when more bytes are
/// needed, or an error as soon as the header is known to be bad (a length
/// over `max_body` is refused before its body arrives).
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    let Some(&ftype) = buf.first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            if i > 1 && b == 0 {
                return Err(FrameError::Malformed); // not the shortest encoding
            }
            i += 1;
            break;
        }
        if i == MAX_HEADER - 1 {
            return Err(FrameError::Malformed); // a fourth length byte
        }
        i += 1;
    }
    if len > max_body {
        return Err(FrameError::TooLarge);
    }
    let end = i + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((RawFrame { ftype, body: &buf[i..end] }, end)))
}

/// Writes a frame header for a body of `len` bytes.
pub fn put_header<B: BufMut>(out: &mut B, ftype: u8, len: usize) {
    debug_assert!(len < 1 << 21);
    out.put_u8(ftype);
    let mut v = len;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Bytes a header takes for a body of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=127 => 2,
        128..=16383 => 3,
        _ => 4,
    }
}

/// Device HELLO: the first frame a device sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hello<'a> {
    pub version: u8,
    /// Heartbeat interval the device asks for, seconds; 0 lets the gateway choose.
    pub keepalive_s: u16,
    pub app_id: &'a str,
    pub secret: &'a [u8],
}

/// The notification a PUSH or MULTI_PUSH carries: everything but the request
/// id and the token(s), laid out the same in both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Notification<'a> {
    pub kind: u8,
    pub priority: u8,
    pub flags: u8,
    /// Unix seconds after which the notification is worthless; 0 = now or never.
    pub expiry: u32,
    pub collapse: &'a [u8],
    pub payload: &'a [u8],
}

/// A provider's request to push one notification.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Push<'a> {
    pub req_id: u32,
    pub token: Token,
    pub note: Notification<'a>,
}

/// A provider's request to push one notification to many tokens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MultiPush<'a> {
    pub req_id: u32,
    /// `count * 24` bytes of tokens.
    pub tokens: &'a [u8],
    pub note: Notification<'a>,
}

impl<'a> MultiPush<'a> {
    pub fn token_count(&self) -> usize {
        self.tokens.len() / TOKEN_LEN
    }

    pub fn tokens(&self) -> impl Iterator<Item = Token> + 'a {
        self.tokens.chunks_exact(TOKEN_LEN).map(|c| {
            let mut t = [0u8; TOKEN_LEN];
            t.copy_from_slice(c);
            Token(t)
        })
    }
}

/// Every frame of protocol version 1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Welcome {
        token: Token,
        heartbeat_s: u16,
        missed: u32,
    },
    Ping,
    Pong,
    Notify {
        msg_id: u64,
        kind: u8,
        priority: u8,
        payload: &'a [u8],
    },
    Ack {
        msg_id: u64,
    },
    GoAway {
        reason: GoAwayReason,
        reconnect_ms: u32,
    },
    Error {
        code: ErrorCode,
        text: &'a str,
    },
    AuthHello {
        version: u8,
        app_id: &'a str,
    },
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    Auth {
        proof: [u8; NONCE_LEN],
    },
    AuthOk {
        max_in_flight: u32,
    },
    Push(Push<'a>),
    Result {
        req_id: u32,
        status: Status,
        msg_id: u64,
        info: u64,
    },
    MultiPush(MultiPush<'a>),
    /// `entries` holds `count` entries of [`MULTI_RESULT_ENTRY`] bytes.
    MultiResult {
        req_id: u32,
        entries: &'a [u8],
    },
    /// The device's app was uninstalled or the user opted out.
    Unregister,
    /// Tokens of the provider's app unregistered after the cursor: at or after
    /// `since_ms` (unix ms) when `after` is all zeros, else strictly after
    /// `(since_ms, after)` in (time, token) order, so pages never repeat.
    Feedback {
        req_id: u32,
        since_ms: u64,
        after: Token,
    },
    /// `entries` holds `count` entries of [`FEEDBACK_ENTRY`] bytes, oldest first;
    /// `more` says a further FEEDBACK (from the last entry's time) has more.
    FeedbackResult {
        req_id: u32,
        more: bool,
        entries: &'a [u8],
    },
    /// The device acknowledged a notification pushed with [`FLAG_RECEIPT`].
    Receipt {
        token: Token,
        msg_id: u64,
        acked_at_ms: u64,
    },
    /// This session wants the app's RECEIPTs.
    SubscribeReceipts,
    /// A device joins (`on`, SUBSCRIBE) or leaves (UNSUBSCRIBE) a topic of its app.
    Subscribe {
        req_id: u16,
        on: bool,
        topic: &'a [u8],
    },
    SubscribeResult {
        req_id: u16,
        status: SubStatus,
    },
    /// A topic message for a device: NOTIFY plus the topic's name.
    TopicNotify {
        msg_id: u64,
        kind: u8,
        priority: u8,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PushTopic(PushTopic<'a>),
    /// A provider adds (`add`) or removes tokens of its app to or from a topic.
    TopicManage {
        req_id: u32,
        add: bool,
        topic: &'a [u8],
        /// `count * 24` bytes of tokens.
        tokens: &'a [u8],
    },
    /// One [`SubStatus`] byte per token of the TOPIC_MANAGE, in its order.
    TopicManageResult {
        req_id: u32,
        statuses: &'a [u8],
    },
    /// How many devices a topic message reached.
    TopicStats {
        req_id: u32,
        msg_id: u64,
    },
    TopicStatsResult {
        req_id: u32,
        known: bool,
        sent: u64,
        acked: u64,
    },
}

/// A provider's request to push one notification to a topic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PushTopic<'a> {
    pub req_id: u32,
    pub topic: &'a [u8],
    pub note: Notification<'a>,
}

/// A cursor over a frame body; every read fails with `Malformed` past the end.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Malformed);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A `u8` length followed by that many bytes.
    fn short_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn app_id(&mut self) -> Result<&'a str, FrameError> {
        let b = self.short_bytes()?;
        if b.is_empty() || b.len() > MAX_APP_ID || !b.iter().all(|c| is_app_id_byte(*c)) {
            return Err(FrameError::Malformed);
        }
        std::str::from_utf8(b).map_err(|_| FrameError::Malformed)
    }
    /// A `u8` length (1..64) and a topic name; its bytes are checked by the session.
    fn topic(&mut self) -> Result<&'a [u8], FrameError> {
        let b = self.short_bytes()?;
        if b.is_empty() || b.len() > MAX_TOPIC {
            return Err(FrameError::Malformed);
        }
        Ok(b)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed)
        }
    }
}

/// App ids are ASCII letters, digits, '.', '_' and '-'.
pub fn is_app_id_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

/// Whether `s` is a valid app id.
pub fn is_valid_app_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_APP_ID && s.bytes().all(is_app_id_byte)
}

impl<'a> Frame<'a> {
    /// Interprets a raw frame's body by its type. Field limits (payload,
    /// collapse id, multicast count) are checked here; the state rules are the
    /// session modules' job.
    pub fn parse(raw: RawFrame<'a>) -> Result<Frame<'a>, FrameError> {
        let mut r = Reader { b: raw.body };
        let f = match raw.ftype {
            ftype::HELLO => {
                let version = r.u8()?;
                if version != VERSION {
                    // Later versions may lay the rest out differently.
                    return Ok(Frame::Hello(Hello { version, keepalive_s: 0, app_id: "", secret: &[] }));
                }
                let keepalive_s = r.u16()?;
                let app_id = r.app_id()?;
                let secret = r.short_bytes()?;
                Frame::Hello(Hello { version, keepalive_s, app_id, secret })
            }
            ftype::WELCOME => {
                Frame::Welcome { token: Token(r.array()?), heartbeat_s: r.u16()?, missed: r.u32()? }
            }
            ftype::PING => Frame::Ping,
            ftype::PONG => Frame::Pong,
            ftype::NOTIFY => {
                let msg_id = r.u64()?;
                let kind = r.u8()?;
                let priority = r.u8()?;
                let payload = r.rest();
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::Malformed);
                }
                Frame::Notify { msg_id, kind, priority, payload }
            }
            ftype::ACK => Frame::Ack { msg_id: r.u64()? },
            ftype::GOAWAY => Frame::GoAway { reason: GoAwayReason(r.u8()?), reconnect_ms: r.u32()? },
            ftype::ERROR => {
                let code = ErrorCode(r.u8()?);
                let text = r.rest();
                if text.len() > MAX_ERROR_TEXT {
                    return Err(FrameError::Malformed);
                }
                Frame::Error { code, text: std::str::from_utf8(text).map_err(|_| FrameError::Malformed)? }
            }
            ftype::AUTH_HELLO => {
                let version = r.u8()?;
                if version != VERSION {
                    return Ok(Frame::AuthHello { version, app_id: "" });
                }
                Frame::AuthHello { version, app_id: r.app_id()? }
            }
            ftype::CHALLENGE => Frame::Challenge { nonce: r.array()? },
            ftype::AUTH => Frame::Auth { proof: r.array()? },
            ftype::AUTH_OK => Frame::AuthOk { max_in_flight: r.u32()? },
            ftype::PUSH => {
                let req_id = r.u32()?;
                let token = Token(r.array()?);
                Frame::Push(Push { req_id, token, note: notification(&mut r)? })
            }
            ftype::RESULT => {
                Frame::Result { req_id: r.u32()?, status: Status(r.u8()?), msg_id: r.u64()?, info: r.u64()? }
            }
            ftype::MULTI_PUSH => {
                let req_id = r.u32()?;
                let count = r.u16()? as usize;
                if count == 0 || count > MAX_MULTICAST {
                    return Err(FrameError::Malformed);
                }
                let tokens = r.take(count * TOKEN_LEN)?;
                Frame::MultiPush(MultiPush { req_id, tokens, note: notification(&mut r)? })
            }
            ftype::MULTI_RESULT => {
                let req_id = r.u32()?;
                let count = r.u16()? as usize;
                let entries = r.take(count * MULTI_RESULT_ENTRY)?;
                Frame::MultiResult { req_id, entries }
            }
            ftype::UNREGISTER => Frame::Unregister,
            ftype::FEEDBACK => {
                Frame::Feedback { req_id: r.u32()?, since_ms: r.u64()?, after: Token(r.array()?) }
            }
            ftype::SUBSCRIBE_RECEIPTS => Frame::SubscribeReceipts,
            ftype::FEEDBACK_RESULT => {
                let req_id = r.u32()?;
                let more = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed),
                };
                let count = r.u16()? as usize;
                if count > MAX_FEEDBACK {
                    return Err(FrameError::Malformed);
                }
                let entries = r.take(count * FEEDBACK_ENTRY)?;
                Frame::FeedbackResult { req_id, more, entries }
            }
            ftype::RECEIPT => {
                Frame::Receipt { token: Token(r.array()?), msg_id: r.u64()?, acked_at_ms: r.u64()? }
            }
            ftype::SUBSCRIBE | ftype::UNSUBSCRIBE => {
                Frame::Subscribe { req_id: r.u16()?, on: raw.ftype == ftype::SUBSCRIBE, topic: r.topic()? }
            }
            ftype::SUBSCRIBE_RESULT => {
                Frame::SubscribeResult { req_id: r.u16()?, status: SubStatus(r.u8()?) }
            }
            ftype::TOPIC_NOTIFY => {
                let msg_id = r.u64()?;
                let kind = r.u8()?;
                let priority = r.u8()?;
                let topic = r.topic()?;
                let payload = r.rest();
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::Malformed);
                }
                Frame::TopicNotify { msg_id, kind, priority, topic, payload }
            }
            ftype::PUSH_TOPIC => {
                let req_id = r.u32()?;
                let topic = r.topic()?;
                Frame::PushTopic(PushTopic { req_id, topic, note: notification(&mut r)? })
            }
            ftype::TOPIC_MANAGE => {
                let req_id = r.u32()?;
                let add = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed),
                };
                let topic = r.topic()?;
                let count = r.u16()? as usize;
                if count == 0 || count > MAX_MANAGE {
                    return Err(FrameError::Malformed);
                }
                Frame::TopicManage { req_id, add, topic, tokens: r.take(count * TOKEN_LEN)? }
            }
            ftype::TOPIC_MANAGE_RESULT => {
                let req_id = r.u32()?;
                let count = r.u16()? as usize;
                Frame::TopicManageResult { req_id, statuses: r.take(count)? }
            }
            ftype::TOPIC_STATS => Frame::TopicStats { req_id: r.u32()?, msg_id: r.u64()? },
            ftype::TOPIC_STATS_RESULT => {
                let req_id = r.u32()?;
                let known = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed),
                };
                Frame::TopicStatsResult { req_id, known, sent: r.u64()?, acked: r.u64()? }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        r.end()?;
        Ok(f)
    }

    pub fn ftype(&self) -> u8 {
        match self {
            Frame::Hello(_) => ftype::HELLO,
            Frame::Welcome { .. } => ftype::WELCOME,
            Frame::Ping => ftype::PING,
            Frame::Pong => ftype::PONG,
            Frame::Notify { .. } => ftype::NOTIFY,
            Frame::Ack { .. } => ftype::ACK,
            Frame::GoAway { .. } => ftype::GOAWAY,
            Frame::Error { .. } => ftype::ERROR,
            Frame::AuthHello { .. } => ftype::AUTH_HELLO,
            Frame::Challenge { .. } => ftype::CHALLENGE,
            Frame::Auth { .. } => ftype::AUTH,
            Frame::AuthOk { .. } => ftype::AUTH_OK,
            Frame::Push(_) => ftype::PUSH,
            Frame::Result { .. } => ftype::RESULT,
            Frame::MultiPush(_) => ftype::MULTI_PUSH,
            Frame::MultiResult { .. } => ftype::MULTI_RESULT,
            Frame::Unregister => ftype::UNREGISTER,
            Frame::Feedback { .. } => ftype::FEEDBACK,
            Frame::FeedbackResult { .. } => ftype::FEEDBACK_RESULT,
            Frame::Receipt { .. } => ftype::RECEIPT,
            Frame::SubscribeReceipts => ftype::SUBSCRIBE_RECEIPTS,
            Frame::Subscribe { on: true, .. } => ftype::SUBSCRIBE,
            Frame::Subscribe { on: false, .. } => ftype::UNSUBSCRIBE,
            Frame::SubscribeResult { .. } => ftype::SUBSCRIBE_RESULT,
            Frame::TopicNotify { .. } => ftype::TOPIC_NOTIFY,
            Frame::PushTopic(_) => ftype::PUSH_TOPIC,
            Frame::TopicManage { .. } => ftype::TOPIC_MANAGE,
            Frame::TopicManageResult { .. } => ftype::TOPIC_MANAGE_RESULT,
            Frame::TopicStats { .. } => ftype::TOPIC_STATS,
            Frame::TopicStatsResult { .. } => ftype::TOPIC_STATS_RESULT,
        }
    }

    /// Body length in bytes when encoded.
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Hello(h) => 1 + 2 + 1 + h.app_id.len() + 1 + h.secret.len(),
            Frame::Welcome { .. } => TOKEN_LEN + 2 + 4,
            Frame::Ping | Frame::Pong => 0,
            Frame::Notify { payload, .. } => 8 + 1 + 1 + payload.len(),
            Frame::Ack { .. } => 8,
            Frame::GoAway { .. } => 1 + 4,
            Frame::Error { text, .. } => 1 + truncate_text(text).len(),
            Frame::AuthHello { app_id, .. } => 1 + 1 + app_id.len(),
            Frame::Challenge { .. } | Frame::Auth { .. } => NONCE_LEN,
            Frame::AuthOk { .. } => 4,
            Frame::Push(p) => 4 + TOKEN_LEN + p.note.body_len(),
            Frame::Result { .. } => 4 + 1 + 8 + 8,
            Frame::MultiPush(p) => 4 + 2 + p.tokens.len() + p.note.body_len(),
            Frame::MultiResult { entries, .. } => 4 + 2 + entries.len(),
            Frame::Unregister => 0,
            Frame::Feedback { .. } => 4 + 8 + TOKEN_LEN,
            Frame::FeedbackResult { entries, .. } => 4 + 1 + 2 + entries.len(),
            Frame::Receipt { .. } => TOKEN_LEN + 8 + 8,
            Frame::SubscribeReceipts => 0,
            Frame::Subscribe { topic, .. } => 2 + 1 + topic.len(),
            Frame::SubscribeResult { .. } => 3,
            Frame::TopicNotify { topic, payload, .. } => 8 + 1 + 1 + 1 + topic.len() + payload.len(),
            Frame::PushTopic(p) => 4 + 1 + p.topic.len() + p.note.body_len(),
            Frame::TopicManage { topic, tokens, .. } => 4 + 1 + 1 + topic.len() + 2 + tokens.len(),
            Frame::TopicManageResult { statuses, .. } => 4 + 2 + statuses.len(),
            Frame::TopicStats { .. } => 12,
            Frame::TopicStatsResult { .. } => 21,
        }
    }

    /// Encoded length, header included.
    pub fn encoded_len(&self) -> usize {
        let b = self.body_len();
        header_len(b) + b
    }

    /// Appends the encoded frame to `out`. The caller keeps fields within
    /// their limits; an ERROR text is cut at [`MAX_ERROR_TEXT`] on a char boundary.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        put_header(out, self.ftype(), self.body_len());
        match *self {
            Frame::Hello(h) => {
                out.put_u8(h.version);
                out.put_u16(h.keepalive_s);
                put_short(out, h.app_id.as_bytes());
                put_short(out, h.secret);
            }
            Frame::Welcome { token, heartbeat_s, missed } => {
                out.put_slice(&token.0);
                out.put_u16(heartbeat_s);
                out.put_u32(missed);
            }
            Frame::Ping | Frame::Pong => {}
            Frame::Notify { msg_id, kind, priority, payload } => {
                out.put_u64(msg_id);
                out.put_u8(kind);
                out.put_u8(priority);
                out.put_slice(payload);
            }
            Frame::Ack { msg_id } => out.put_u64(msg_id),
            Frame::GoAway { reason, reconnect_ms } => {
                out.put_u8(reason.0);
                out.put_u32(reconnect_ms);
            }
            Frame::Error { code, text } => {
                out.put_u8(code.0);
                out.put_slice(truncate_text(text).as_bytes());
            }
            Frame::AuthHello { version, app_id } => {
                out.put_u8(version);
                put_short(out, app_id.as_bytes());
            }
            Frame::Challenge { nonce } => out.put_slice(&nonce),
            Frame::Auth { proof } => out.put_slice(&proof),
            Frame::AuthOk { max_in_flight } => out.put_u32(max_in_flight),
            Frame::Push(p) => {
                out.put_u32(p.req_id);
                out.put_slice(&p.token.0);
                p.note.encode(out);
            }
            Frame::Result { req_id, status, msg_id, info } => {
                out.put_u32(req_id);
                out.put_u8(status.0);
                out.put_u64(msg_id);
                out.put_u64(info);
            }
            Frame::MultiPush(p) => {
                out.put_u32(p.req_id);
                out.put_u16(p.token_count() as u16);
                out.put_slice(p.tokens);
                p.note.encode(out);
            }
            Frame::MultiResult { req_id, entries } => {
                out.put_u32(req_id);
                out.put_u16((entries.len() / MULTI_RESULT_ENTRY) as u16);
                out.put_slice(entries);
            }
            Frame::Unregister => {}
            Frame::Feedback { req_id, since_ms, after } => {
                out.put_u32(req_id);
                out.put_u64(since_ms);
                out.put_slice(&after.0);
            }
            Frame::SubscribeReceipts => {}
            Frame::FeedbackResult { req_id, more, entries } => {
                out.put_u32(req_id);
                out.put_u8(more as u8);
                out.put_u16((entries.len() / FEEDBACK_ENTRY) as u16);
                out.put_slice(entries);
            }
            Frame::Receipt { token, msg_id, acked_at_ms } => {
                out.put_slice(&token.0);
                out.put_u64(msg_id);
                out.put_u64(acked_at_ms);
            }
            Frame::Subscribe { req_id, topic, .. } => {
                out.put_u16(req_id);
                put_short(out, topic);
            }
            Frame::SubscribeResult { req_id, status } => {
                out.put_u16(req_id);
                out.put_u8(status.0);
            }
            Frame::TopicNotify { msg_id, kind, priority, topic, payload } => {
                out.put_u64(msg_id);
                out.put_u8(kind);
                out.put_u8(priority);
                put_short(out, topic);
                out.put_slice(payload);
            }
            Frame::PushTopic(p) => {
                out.put_u32(p.req_id);
                put_short(out, p.topic);
                p.note.encode(out);
            }
            Frame::TopicManage { req_id, add, topic, tokens } => {
                out.put_u32(req_id);
                out.put_u8(add as u8);
                put_short(out, topic);
                out.put_u16((tokens.len() / TOKEN_LEN) as u16);
                out.put_slice(tokens);
            }
            Frame::TopicManageResult { req_id, statuses } => {
                out.put_u32(req_id);
                out.put_u16(statuses.len() as u16);
                out.put_slice(statuses);
            }
            Frame::TopicStats { req_id, msg_id } => {
                out.put_u32(req_id);
                out.put_u64(msg_id);
            }
            Frame::TopicStatsResult { req_id, known, sent, acked } => {
                out.put_u32(req_id);
                out.put_u8(known as u8);
                out.put_u64(sent);
                out.put_u64(acked);
            }
        }
    }
}

/// The rest of a PUSH or MULTI_PUSH body after the token(s).
fn notification<'a>(r: &mut Reader<'a>) -> Result<Notification<'a>, FrameError> {
    let kind = r.u8()?;
    let priority = r.u8()?;
    let flags = r.u8()?;
    let expiry = r.u32()?;
    let collapse = r.short_bytes()?;
    if collapse.len() > MAX_COLLAPSE {
        return Err(FrameError::Malformed);
    }
    Ok(Notification { kind, priority, flags, expiry, collapse, payload: r.rest() })
}

impl Notification<'_> {
    /// Bytes it takes in a body: kind, priority, flags, expiry, collapse (length-prefixed), payload.
    fn body_len(&self) -> usize {
        1 + 1 + 1 + 4 + 1 + self.collapse.len() + self.payload.len()
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.kind);
        out.put_u8(self.priority);
        out.put_u8(self.flags);
        out.put_u32(self.expiry);
        put_short(out, self.collapse);
        out.put_slice(self.payload);
    }
}

fn put_short<B: BufMut>(out: &mut B, b: &[u8]) {
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

fn truncate_text(s: &str) -> &str {
    if s.len() <= MAX_ERROR_TEXT {
        return s;
    }
    let mut end = MAX_ERROR_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends one MULTI_RESULT entry to `out`.
pub fn put_multi_entry(out: &mut Vec<u8>, status: Status, msg_id: u64) {
    out.push(status.0);
    out.extend_from_slice(&msg_id.to_be_bytes());
}

/// Iterates over the `(status, msg_id)` entries of a MULTI_RESULT.
pub fn multi_entries(entries: &[u8]) -> impl Iterator<Item = (Status, u64)> + '_ {
    entries.chunks_exact(MULTI_RESULT_ENTRY).map(|e| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&e[1..9]);
        (Status(e[0]), u64::from_be_bytes(id))
    })
}

/// Iterates over the `(token, unregistered_at_ms)` entries of a FEEDBACK_RESULT.
pub fn feedback_entries(entries: &[u8]) -> impl Iterator<Item = (Token, u64)> + '_ {
    entries.chunks_exact(FEEDBACK_ENTRY).map(|e| {
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&e[..TOKEN_LEN]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&e[TOKEN_LEN..]);
        (Token(t), u64::from_be_bytes(at))
    })
}
