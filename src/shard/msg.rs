//! What shards send each other over their crossbeam channels.

use bytes::Bytes;

use crate::proto::{Status, Token};
use crate::store::Receipt;

/// Addresses one connection on one shard; `id` tells a reused slab slot from the original.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConnRef {
    pub shard: u16,
    pub idx: u32,
    pub id: u32,
}

/// `PushMsg::slot` for a single PUSH (not part of a MULTI_PUSH).
pub const NO_SLOT: u32 = u32::MAX;

/// One notification for one token, on its way to the shard that owns the token.
#[derive(Debug)]
pub struct PushMsg {
    /// When the PUSH was read, for the delivery latency histogram.
    pub read_at: std::time::Instant,
    pub reply: ConnRef,
    pub req_id: u32,
    /// MULTI_PUSH aggregation slot on the provider's connection, or [`NO_SLOT`].
    pub slot: u32,
    /// Position of this token in the MULTI_PUSH.
    pub index: u16,
    pub token: Token,
    pub kind: u8,
    pub priority: u8,
    pub flags: u8,
    pub expiry: u32,
    pub collapse: Bytes,
    pub payload: Bytes,
}

/// The outcome of a `PushMsg`, on its way back to the provider's shard.
#[derive(Clone, Copy, Debug)]
pub struct ResultMsg {
    pub to: ConnRef,
    pub req_id: u32,
    pub slot: u32,
    pub index: u16,
    pub status: Status,
    pub msg_id: u64,
    pub info: u64,
}

/// A device connection whose HELLO was read by a shard that does not own its token.
#[derive(Debug)]
pub struct Adopt {
    pub stream: mio::net::TcpStream,
    /// The TLS session, if the device came in on a TLS listener.
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub token: Token,
    pub app: u16,
    pub keepalive_s: u16,
    /// Bytes the device sent after its HELLO.
    pub leftover: Vec<u8>,
}

#[derive(Debug)]
pub enum ShardMsg {
    Push(PushMsg),
    Result(ResultMsg),
    Adopt(Adopt),
    /// A receipt on its way to its app's hub shard (`app % shards`).
    Receipt {
        app: u16,
        receipt: Receipt,
    },
    /// Receipts from the hub for one provider connection.
    DeliverReceipts {
        to: ConnRef,
        app: u16,
        receipts: Vec<Receipt>,
    },
    /// To the app's hub: a provider session of `app` logged in, or went away.
    ProviderUp {
        app: u16,
        conn: ConnRef,
    },
    ProviderDown {
        app: u16,
        conn: ConnRef,
    },
    /// To every shard: the tombstones of `app` after the cursor `(since_ms, after)`.
    FeedbackQuery {
        reply: ConnRef,
        slot: u32,
        app: u16,
        since_ms: u64,
        after: Token,
    },
    /// One shard's answer, oldest first, at most one frame's worth plus one.
    FeedbackPart {
        to: ConnRef,
        slot: u32,
        entries: Vec<(u64, Token)>,
    },
    /// Stop accepting, send GOAWAY to everyone, exit when empty or at the deadline.
    Drain,
}
