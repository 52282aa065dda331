//! Device-side wire protocols of the three targets, behind one small interface:
//! `hello` writes the opening bytes, `on_bytes` consumes whole frames and
//! reports what happened (writing any reply, such as an ACK, itself), and
//! `heartbeat` writes a keepalive. No sockets here.

pub mod mqtt;
pub mod nats;
pub mod pushgate;

use ::pushgate::proto::Token;
use serde::{Deserialize, Serialize};

/// Which server the harness is measuring.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Pushgate,
    Mosquitto,
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Pushgate => "pushgate",
            Target::Mosquitto => "mosquitto",
            Target::Nats => "nats",
        }
    }
}

/// Who a device is, for its opening bytes.
pub struct DevCtx<'a> {
    pub idx: u32,
    pub app: &'a str,
    pub secret: &'a [u8],
    pub keepalive_s: u16,
    /// Broadcast scenario: the device subscribes to a shared topic when told
    /// (not to its own in the opening bytes), and its subscription outlives
    /// the connection (MQTT: a persistent session).
    pub topic_mode: bool,
}

/// Per-connection protocol state the parsers need.
#[derive(Default, Clone, Copy)]
pub struct WireState {
    pub registered: bool,
    /// As [`DevCtx::topic_mode`]: MQTT registers on CONNACK and reports SUBACK as `Subscribed`.
    pub topic_mode: bool,
}

/// What one frame from the server meant.
pub enum DevEvent<'a> {
    /// The device is registered and can receive: WELCOME, SUBACK, or the first NATS PONG.
    Registered {
        heartbeat_s: u16,
        token: Option<Token>,
        missed: u32,
    },
    /// A notification; `msg_id` is the server's id where the protocol has one.
    Notify {
        msg_id: Option<u64>,
        payload: &'a [u8],
    },
    Pong,
    GoAway {
        reason: u8,
        reconnect_ms: u32,
    },
    /// The answer to a topic subscription: SUBSCRIBE_RESULT or SUBACK (topic mode).
    Subscribed {
        ok: bool,
    },
}

/// Consumes whole frames from `buf`, returning the bytes used; an `Err` means close the connection.
pub fn on_bytes(
    t: Target,
    st: &mut WireState,
    buf: &[u8],
    out: &mut Vec<u8>,
    f: &mut dyn FnMut(DevEvent<'_>),
) -> Result<usize, String> {
    match t {
        Target::Pushgate => pushgate::on_bytes(st, buf, out, f),
        Target::Mosquitto => mqtt::on_bytes(st, buf, out, f),
        Target::Nats => nats::on_bytes(st, buf, out, f),
    }
}

/// The bytes a freshly connected device sends first.
pub fn hello(t: Target, ctx: &DevCtx<'_>, out: &mut Vec<u8>) {
    match t {
        Target::Pushgate => pushgate::hello(ctx, out),
        Target::Mosquitto if ctx.topic_mode => {
            // Stable client id and no clean session: the broker keeps the
            // subscription and queues QoS 1 messages while the device is away.
            mqtt::connect_session(&format!("d{}", ctx.idx), ctx.keepalive_s, false, out);
        }
        Target::Mosquitto => {
            // MQTT lets a client send further packets right after CONNECT.
            mqtt::connect(&format!("d{}", ctx.idx), ctx.keepalive_s, out);
            mqtt::subscribe(1, &peer_topic(t, ctx.idx), out);
        }
        Target::Nats => nats::hello(ctx, out),
    }
}

/// The bytes that subscribe a registered device to the shared `topic` (broadcast scenario).
pub fn subscribe(t: Target, topic: &str, out: &mut Vec<u8>) {
    match t {
        Target::Pushgate => pushgate::subscribe(topic, out),
        Target::Mosquitto => mqtt::subscribe(1, topic, out),
        // run::main refuses the broadcast scenario for core NATS (no acks, no offline queue).
        Target::Nats => {}
    }
}

pub fn heartbeat(t: Target, out: &mut Vec<u8>) {
    match t {
        Target::Pushgate => out.extend_from_slice(&[::pushgate::proto::frame::ftype::PING, 0]),
        Target::Mosquitto => out.extend_from_slice(&[0xc0, 0]),
        Target::Nats => out.extend_from_slice(b"PING\r\n"),
    }
}

/// The topic / subject a peer device subscribes to.
pub fn peer_topic(t: Target, idx: u32) -> String {
    match t {
        Target::Nats => format!("d.{idx}"),
        _ => format!("d/{idx}"),
    }
}
