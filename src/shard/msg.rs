//! What shards send each other over their crossbeam channels. Everything but
//! the explicitly local messages (a socket hand-over, a front end's request
//! with its callback, drain) is plain data that could cross a node boundary.

use crossbeam_channel::Sender;

use super::requests::{Answer, Outcome, ReqRef};
use crate::proto::{Note, Token};
use crate::store::Receipt;

/// Addresses one connection on one shard; `id` tells a reused slab slot from the original.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnRef {
    pub shard: u16,
    pub idx: u32,
    pub id: u32,
}

/// One notification for one token, on its way to the shard that owns the token.
#[derive(Clone, Debug)]
pub struct PushMsg {
    /// The request it belongs to, on the shard that answers it.
    pub req: ReqRef,
    /// Position of the token in the request.
    pub index: u16,
    pub token: Token,
    /// The app index it was accepted for, on this node.
    pub app: u16,
    /// How a cluster node routes it (a single node handles every push itself).
    pub via: Via,
    pub note: Note,
    /// When the request was read, in ns of the node's clock (`Clock::now_ns`),
    /// for the delivery latency histogram.
    pub read_at_ns: u64,
}

/// Where a push goes in cluster mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// Accepted here: to the device's node (the route cache, else a lookup).
    Route,
    /// Back from a node that no longer has the device: look up again, past the cache.
    Fresh,
    /// Deliver or store on this node: nobody else holds the device, or its node is gone.
    Here,
    /// Forwarded by another node for a device it believes is here: deliver
    /// it, or answer `NOT_HERE` so that node routes it again.
    Forwarded,
}

/// The outcome of a `PushMsg`, on its way back to the request's shard.
#[derive(Clone, Copy, Debug)]
pub struct ResultMsg {
    pub req: ReqRef,
    pub index: u16,
    pub outcome: Outcome,
}

/// Where a receipt goes: a provider session, or a front end's stream.
#[derive(Clone, Debug)]
pub enum ReceiptSink {
    Conn(ConnRef),
    /// Bounded; a receipt that does not fit is kept for the next subscriber.
    Channel(Sender<Receipt>),
}

impl PartialEq for ReceiptSink {
    fn eq(&self, other: &ReceiptSink) -> bool {
        match (self, other) {
            (ReceiptSink::Conn(a), ReceiptSink::Conn(b)) => a == b,
            (ReceiptSink::Channel(a), ReceiptSink::Channel(b)) => a.same_channel(b),
            _ => false,
        }
    }
}

/// A device connection whose HELLO was read by a shard that does not own its token.
pub struct Adopt {
    pub transport: super::conn::Transport,
    /// The TLS session, if the device came in on a TLS listener.
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub token: Token,
    pub app: u16,
    pub keepalive_s: u16,
    /// Bytes the device sent after its HELLO.
    pub leftover: Vec<u8>,
}

/// A push or feedback query from a front end off the shards (HTTP today, a
/// remote node later): it enters the router like a provider's request, and
/// its answer goes to `done` on the shard that took it.
pub enum Submit {
    Push {
        app: u16,
        tokens: Vec<Token>,
        note: Note,
        done: Box<dyn FnOnce(Answer) + Send>,
    },
    /// A push another node accepted for a device it believes is here: not
    /// charged to the rate limit again, and never forwarded on.
    Forwarded {
        app: u16,
        token: Token,
        note: Note,
        done: Box<dyn FnOnce(Outcome) + Send>,
    },
    Feedback {
        app: u16,
        since_ms: u64,
        after: Token,
        done: Box<dyn FnOnce(Answer) + Send>,
    },
    /// PUSH_TOPIC: one outcome.
    PushTopic {
        app: u16,
        topic: Box<[u8]>,
        note: Note,
        done: Box<dyn FnOnce(Answer) + Send>,
    },
    /// TOPIC_MANAGE: one outcome per token, its status a `SubStatus` code.
    TopicManage {
        app: u16,
        add: bool,
        topic: Box<[u8]>,
        tokens: Vec<Token>,
        done: Box<dyn FnOnce(Answer) + Send>,
    },
}

pub enum ShardMsg {
    Push(PushMsg),
    Result(ResultMsg),
    /// A receipt on its way to its app's hub shard; `remote` if another
    /// node sent it here (it is kept here, not sent on, if no sink takes it).
    Receipt {
        app: u16,
        receipt: Receipt,
        remote: bool,
    },
    /// Cluster: another node takes `app`'s receipts now; send it what is kept here.
    ReceiptsWanted {
        app: u16,
    },
    /// A receipt a session could not take, back to the hub's store (handed out again by its pump).
    KeepReceipt {
        app: u16,
        receipt: Receipt,
    },
    /// Receipts from the hub for one provider connection.
    DeliverReceipts {
        to: ConnRef,
        app: u16,
        receipts: Vec<Receipt>,
    },
    /// To the app's hub: a receipt sink of `app` came, or went away.
    SinkUp {
        app: u16,
        sink: ReceiptSink,
    },
    SinkDown {
        app: u16,
        sink: ReceiptSink,
    },
    /// To every shard: the tombstones of `app` after the cursor `(since_ms, after)`.
    FeedbackQuery {
        req: ReqRef,
        app: u16,
        since_ms: u64,
        after: Token,
    },
    /// One shard's answer, oldest first, at most one frame's worth plus one.
    FeedbackPart {
        req: ReqRef,
        entries: Vec<(u64, Token)>,
    },
    /// The store made every write numbered up to `upto` durable (or failed to).
    Durable {
        upto: u64,
        ok: bool,
    },
    /// Cluster: the engine's answer to this shard's claim of `token` for connection `conn`.
    Claimed {
        token: Token,
        conn: ConnRef,
        result: Result<crate::cluster::routes::Claimed, crate::cluster::EngineError>,
    },
    /// Cluster: another node's claim at `revision` replaced this node's claim of `token`.
    Replaced {
        token: Token,
        revision: u64,
    },
    /// Cluster: who holds `token`, for the pushes waiting on its lookup.
    Routed {
        token: Token,
        route: Result<Option<crate::cluster::routes::Route>, crate::cluster::EngineError>,
    },
    /// Cluster: an unregistration recorded on some node (`at_ms`), or lifted
    /// (None), for the token's owner shard's tombstones.
    TombstoneSeen {
        token: Token,
        app: u16,
        at_ms: Option<u64>,
    },
    /// The store can read `token`'s backlog now (see `Store::load`).
    Loaded {
        token: Token,
    },
    /// To a topic's owner shard: a PUSH_TOPIC to log and fan out.
    TopicPush {
        req: ReqRef,
        key: crate::topics::TopicKey,
        note: Note,
    },
    /// To every shard: a topic message for its connected subscribers;
    /// `logged` if it is in the topic's log (catch-up reads it there).
    TopicNote {
        key: crate::topics::TopicKey,
        msg: crate::topics::TopicMsg,
        logged: bool,
    },
    /// To a token's owner shard: one token of a TOPIC_MANAGE.
    TopicManage {
        req: ReqRef,
        index: u16,
        token: Token,
        key: crate::topics::TopicKey,
        add: bool,
    },
    /// Cluster: a provider changed `token`'s subscription to `topic` in the
    /// engine (at position `pos`), for its owner shard if the device is here.
    SubChanged {
        token: Token,
        topic: Box<[u8]>,
        add: bool,
        pos: u64,
    },
    /// Local: a device socket handed to its owner shard.
    Adopt(Box<Adopt>),
    /// Local: a front end's request.
    Submit(Submit),
    /// Local: stop accepting, send GOAWAY to everyone, exit when empty or at the deadline.
    Drain,
}
