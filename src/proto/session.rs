//! Session rules for both ports: which frame is legal in which state, and the
//! provider's challenge-response login. Pure functions of (state, frame); the
//! shard loop performs what they return.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codes::ErrorCode;
use super::frame::{
    ftype, split_frame, Frame, FrameError, Hello, MultiPush, Push, PushTopic, RawFrame, DEVICE_MAX_BODY,
    MAX_SECRET, MIN_SECRET, NONCE_LEN, PROVIDER_MAX_BODY, VERSION,
};
use super::token::Token;

/// A protocol violation: the connection gets an ERROR frame with [`ProtoError::code`] and is closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtoError {
    Frame(FrameError),
    UnsupportedVersion(u8),
    /// A defined frame that this side may not send, or not in this state.
    Unexpected(u8),
    BadCredential,
    UnknownApp,
    AuthFailed,
    HandshakeTimeout,
    /// The gateway failed (e.g. its store); not the peer's fault.
    Internal,
}

impl From<FrameError> for ProtoError {
    fn from(e: FrameError) -> Self {
        ProtoError::Frame(e)
    }
}

impl ProtoError {
    /// The one place protocol errors become wire codes.
    pub fn code(self) -> ErrorCode {
        match self {
            ProtoError::Frame(e) => e.code(),
            ProtoError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            ProtoError::Unexpected(_) => ErrorCode::UNEXPECTED_FRAME,
            ProtoError::BadCredential => ErrorCode::BAD_CREDENTIAL,
            ProtoError::UnknownApp => ErrorCode::UNKNOWN_APP,
            ProtoError::AuthFailed => ErrorCode::AUTH_FAILED,
            ProtoError::HandshakeTimeout => ErrorCode::HANDSHAKE_TIMEOUT,
            ProtoError::Internal => ErrorCode::INTERNAL,
        }
    }

    /// Human-readable detail for the ERROR frame's text.
    pub fn detail(self) -> String {
        match self {
            ProtoError::Frame(FrameError::UnknownType(t)) => format!("unknown frame type 0x{t:02x}"),
            ProtoError::Frame(FrameError::TooLarge) => "frame body exceeds this port's maximum".into(),
            ProtoError::Frame(FrameError::Malformed) => "frame does not match its field table".into(),
            ProtoError::UnsupportedVersion(v) => {
                format!("protocol version {v} not supported; this gateway speaks {VERSION}")
            }
            ProtoError::Unexpected(t) => format!("frame type 0x{t:02x} not allowed in this state"),
            ProtoError::BadCredential => format!("device secret must be {MIN_SECRET} to {MAX_SECRET} bytes"),
            ProtoError::UnknownApp => "app id not configured".into(),
            ProtoError::AuthFailed => "authentication failed".into(),
            ProtoError::HandshakeTimeout => "handshake not completed in time".into(),
            ProtoError::Internal => "internal gateway error; reconnect with backoff".into(),
        }
    }
}

/// Where a device session stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceState {
    /// Connected; only HELLO is legal.
    AwaitHello,
    /// WELCOME sent; PING and ACK are legal.
    Ready,
    /// The session ended (closing, replaced, unregistered); no frame is legal.
    Closed,
}

/// What a device frame asks the gateway to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceEvent<'a> {
    Hello(Hello<'a>),
    Ping,
    Ack(u64),
    Unregister,
    /// SUBSCRIBE (`on`) or UNSUBSCRIBE; the name's bytes are not checked yet.
    Subscribe {
        req_id: u16,
        on: bool,
        topic: &'a [u8],
    },
}

/// Applies the device session rules to one frame from a device.
pub fn on_device_frame(state: DeviceState, raw: RawFrame<'_>) -> Result<DeviceEvent<'_>, ProtoError> {
    if !is_device_port_type(raw.ftype) {
        return Err(ProtoError::Frame(FrameError::UnknownType(raw.ftype)));
    }
    let frame = Frame::parse(raw)?;
    match (state, frame) {
        (DeviceState::AwaitHello, Frame::Hello(h)) => {
            if h.version != VERSION {
                return Err(ProtoError::UnsupportedVersion(h.version));
            }
            if h.secret.len() < MIN_SECRET || h.secret.len() > MAX_SECRET {
                return Err(ProtoError::BadCredential);
            }
            Ok(DeviceEvent::Hello(h))
        }
        (DeviceState::Ready, Frame::Ping) => Ok(DeviceEvent::Ping),
        (DeviceState::Ready, Frame::Ack { msg_id }) => Ok(DeviceEvent::Ack(msg_id)),
        (DeviceState::Ready, Frame::Unregister) => Ok(DeviceEvent::Unregister),
        (DeviceState::Ready, Frame::Subscribe { req_id, on, topic }) => {
            Ok(DeviceEvent::Subscribe { req_id, on, topic })
        }
        (_, f) => Err(ProtoError::Unexpected(f.ftype())),
    }
}

/// Splits the next frame off a connection's input on the device port
/// (`device`) or the provider port. A frame type the port does not define is
/// refused as soon as its first byte is in, before its length or body.
pub fn split_on_port(buf: &[u8], device: bool) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    let (defined, max): (fn(u8) -> bool, usize) = if device {
        (is_device_port_type, DEVICE_MAX_BODY)
    } else {
        (is_provider_port_type, PROVIDER_MAX_BODY)
    };
    match buf.first() {
        Some(&t) if !defined(t) => Err(FrameError::UnknownType(t)),
        _ => split_frame(buf, max),
    }
}

/// Frame types defined on the device port.
pub fn is_device_port_type(t: u8) -> bool {
    (ftype::HELLO..=ftype::TOPIC_NOTIFY).contains(&t)
}

/// Frame types defined on the provider port.
pub fn is_provider_port_type(t: u8) -> bool {
    matches!(t, ftype::PING | ftype::PONG | ftype::GOAWAY | ftype::ERROR)
        || (ftype::AUTH_HELLO..=ftype::TOPIC_STATS_RESULT).contains(&t)
}

/// The configured apps, addressed by a small index so a connection stores 2 bytes, not a name.
#[derive(Clone, Debug, Default)]
pub struct Apps {
    ids: Vec<String>,
    secrets: Vec<Vec<u8>>,
}

impl Apps {
    pub fn new() -> Apps {
        Apps::default()
    }

    /// Adds an app; returns its index.
    pub fn add(&mut self, id: &str, secret: &[u8]) -> u16 {
        self.ids.push(id.to_string());
        self.secrets.push(secret.to_vec());
        (self.ids.len() - 1) as u16
    }

    pub fn index_of(&self, id: &str) -> Option<u16> {
        self.ids.iter().position(|a| a == id).map(|i| i as u16)
    }

    pub fn id(&self, index: u16) -> &str {
        self.ids.get(index as usize).map(String::as_str).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The app's secret (the HTTP API checks JWTs with it); empty for an unknown index.
    pub fn secret(&self, index: u16) -> &[u8] {
        self.secrets.get(index as usize).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The proof a provider sends in AUTH:
/// `HMAC-SHA256(key = app secret, "pushgate/auth/v1" || len(app) || app || nonce)`.
pub fn auth_proof(secret: &[u8], app_id: &str, nonce: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    out.copy_from_slice(&auth_mac(secret, app_id, nonce).finalize().into_bytes());
    out
}

fn auth_mac(secret: &[u8], app_id: &str, nonce: &[u8; NONCE_LEN]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"pushgate/auth/v1");
    m.update(&[app_id.len() as u8]);
    m.update(app_id.as_bytes());
    m.update(nonce);
    m
}

/// Where a provider session stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProviderState {
    /// Connected; only AUTH_HELLO is legal.
    AwaitHello,
    /// CHALLENGE sent; only AUTH is legal.
    AwaitAuth { app: u16, nonce: [u8; NONCE_LEN] },
    /// AUTH_OK sent; PING, PUSH and MULTI_PUSH are legal.
    Ready { app: u16 },
    /// The session ended (closing); no frame is legal.
    Closed,
}

/// What a provider frame asks the gateway to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProviderEvent<'a> {
    /// Send CHALLENGE with this nonce.
    Challenge([u8; NONCE_LEN]),
    /// Authenticated as app `app`: send AUTH_OK.
    Authenticated {
        app: u16,
    },
    Ping,
    Push(Push<'a>),
    MultiPush(MultiPush<'a>),
    Feedback {
        req_id: u32,
        since_ms: u64,
        after: Token,
    },
    SubscribeReceipts,
    PushTopic(PushTopic<'a>),
    TopicManage {
        req_id: u32,
        add: bool,
        topic: &'a [u8],
        tokens: &'a [u8],
    },
    TopicStats {
        req_id: u32,
        msg_id: u64,
    },
}

/// Applies the provider session rules to one frame, advancing `state`.
/// `fresh_nonce` is the random challenge to use if this frame starts a login.
pub fn on_provider_frame<'a>(
    state: &mut ProviderState,
    raw: RawFrame<'a>,
    apps: &Apps,
    fresh_nonce: [u8; NONCE_LEN],
) -> Result<ProviderEvent<'a>, ProtoError> {
    if !is_provider_port_type(raw.ftype) {
        return Err(ProtoError::Frame(FrameError::UnknownType(raw.ftype)));
    }
    let frame = Frame::parse(raw)?;
    match (*state, frame) {
        (ProviderState::AwaitHello, Frame::AuthHello { version, app_id }) => {
            if version != VERSION {
                return Err(ProtoError::UnsupportedVersion(version));
            }
            let app = apps.index_of(app_id).ok_or(ProtoError::UnknownApp)?;
            *state = ProviderState::AwaitAuth { app, nonce: fresh_nonce };
            Ok(ProviderEvent::Challenge(fresh_nonce))
        }
        (ProviderState::AwaitAuth { app, nonce }, Frame::Auth { proof }) => {
            let ok = auth_mac(apps.secret(app), apps.id(app), &nonce).verify_slice(&proof).is_ok();
            if !ok {
                return Err(ProtoError::AuthFailed);
            }
            *state = ProviderState::Ready { app };
            Ok(ProviderEvent::Authenticated { app })
        }
        (ProviderState::Ready { .. }, Frame::Ping) => Ok(ProviderEvent::Ping),
        (ProviderState::Ready { .. }, Frame::Push(p)) => Ok(ProviderEvent::Push(p)),
        (ProviderState::Ready { .. }, Frame::MultiPush(p)) => Ok(ProviderEvent::MultiPush(p)),
        (ProviderState::Ready { .. }, Frame::Feedback { req_id, since_ms, after }) => {
            Ok(ProviderEvent::Feedback { req_id, since_ms, after })
        }
        (ProviderState::Ready { .. }, Frame::SubscribeReceipts) => Ok(ProviderEvent::SubscribeReceipts),
        (ProviderState::Ready { .. }, Frame::PushTopic(p)) => Ok(ProviderEvent::PushTopic(p)),
        (ProviderState::Ready { .. }, Frame::TopicManage { req_id, add, topic, tokens }) => {
            Ok(ProviderEvent::TopicManage { req_id, add, topic, tokens })
        }
        (ProviderState::Ready { .. }, Frame::TopicStats { req_id, msg_id }) => {
            Ok(ProviderEvent::TopicStats { req_id, msg_id })
        }
        (_, f) => Err(ProtoError::Unexpected(f.ftype())),
    }
}
