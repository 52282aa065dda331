//! Connection state kept per socket, sized so an idle device costs a few dozen bytes.

use mio::net::TcpStream;
use rustls::ServerConnection;
use slab::Slab;

use super::pool::Bufs;
use crate::proto::{ProviderState, Token};

/// Needs a flush at the end of this loop iteration.
pub const F_DIRTY: u8 = 1;
/// Has normal-priority notifications held for coalescing.
pub const F_HELD: u8 = 2;
/// Error or GOAWAY sent; reading and discarding until EOF or the linger deadline.
pub const F_CLOSING: u8 = 4;
/// HELLO accepted and WELCOME sent.
pub const F_READY: u8 = 8;
/// Stopped reading because too many requests are in flight (providers only).
pub const F_PAUSED: u8 = 16;
/// The listener expects a PROXY protocol header before the first frame.
pub const F_PROXY: u8 = 64;

/// Marks an unacked id whose provider wants a receipt. Message ids stay below
/// 2^63 (they start from the clock in ms shifted by 16 bits).
const RECEIPT_BIT: u64 = 1 << 63;

/// A device connection. No buffers while idle: `bufs` is `None`.
pub struct Device {
    pub stream: TcpStream,
    pub bufs: Option<Box<Bufs>>,
    /// The TLS session on a TLS listener; boxed so a plain device pays 8 bytes.
    pub tls: Option<Box<ServerConnection>>,
    pub token: Token,
    /// Highest message id written to this connection.
    pub cursor: u64,
    pub id: u32,
    /// Tick of the last frame received (or of accept, or of the start of closing).
    pub since: u32,
    pub heartbeat_s: u16,
    /// Ids of NOTIFY frames written and not yet acknowledged, oldest first;
    /// allocated only while something is in flight.
    pub unacked: Option<Box<Vec<u64>>>,
    pub app: u16,
    pub flags: u8,
}

/// One FEEDBACK waiting for every shard's tombstones.
pub struct FeedbackAgg {
    pub req_id: u32,
    pub remaining: u16,
    pub entries: Vec<(u64, Token)>,
}

/// One MULTI_PUSH waiting for the statuses of its tokens.
pub struct Multi {
    pub req_id: u32,
    pub remaining: u16,
    /// `(status u8, msg_id u64)` per token, in request order.
    pub entries: Vec<u8>,
}

/// A provider connection.
pub struct Provider {
    pub stream: TcpStream,
    pub bufs: Option<Box<Bufs>>,
    pub tls: Option<Box<ServerConnection>>,
    pub state: ProviderState,
    pub id: u32,
    pub since: u32,
    /// Tokens sent to owner shards whose status has not come back.
    pub inflight: u32,
    pub flags: u8,
    pub multis: Slab<Multi>,
    pub feedback: Slab<FeedbackAgg>,
}

/// A connection's IO parts, borrowed together.
pub struct Io<'a> {
    pub stream: &'a mut TcpStream,
    pub bufs: &'a mut Option<Box<Bufs>>,
    pub tls: &'a mut Option<Box<ServerConnection>>,
}

pub enum Conn {
    Device(Device),
    Provider(Box<Provider>),
}

impl Conn {
    pub fn id(&self) -> u32 {
        match self {
            Conn::Device(d) => d.id,
            Conn::Provider(p) => p.id,
        }
    }

    pub fn flags(&self) -> u8 {
        match self {
            Conn::Device(d) => d.flags,
            Conn::Provider(p) => p.flags,
        }
    }

    pub fn flags_mut(&mut self) -> &mut u8 {
        match self {
            Conn::Device(d) => &mut d.flags,
            Conn::Provider(p) => &mut p.flags,
        }
    }

    pub fn since_mut(&mut self) -> &mut u32 {
        match self {
            Conn::Device(d) => &mut d.since,
            Conn::Provider(p) => &mut p.since,
        }
    }

    /// The socket and the buffers, for the shared read and write paths.
    pub fn io(&mut self) -> (&mut TcpStream, &mut Option<Box<Bufs>>) {
        match self {
            Conn::Device(d) => (&mut d.stream, &mut d.bufs),
            Conn::Provider(p) => (&mut p.stream, &mut p.bufs),
        }
    }

    /// The socket, the buffers and the TLS session, for the read and write paths.
    pub fn io_tls(&mut self) -> Io<'_> {
        match self {
            Conn::Device(d) => Io { stream: &mut d.stream, bufs: &mut d.bufs, tls: &mut d.tls },
            Conn::Provider(p) => Io { stream: &mut p.stream, bufs: &mut p.bufs, tls: &mut p.tls },
        }
    }

    pub fn is_device(&self) -> bool {
        matches!(self, Conn::Device(_))
    }
}

impl Device {
    /// NOTIFY frames written and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.unacked.as_ref().map_or(0, |u| u.len())
    }

    /// Records a NOTIFY written; `receipt` if its provider asked for a receipt.
    pub fn on_sent(&mut self, msg_id: u64, receipt: bool) {
        self.cursor = msg_id;
        let entry = if receipt { msg_id | RECEIPT_BIT } else { msg_id };
        self.unacked.get_or_insert_with(Default::default).push(entry);
    }

    /// Forgets an acknowledged id: `None` if it was not in flight here, else
    /// whether a receipt was asked for.
    pub fn on_acked(&mut self, msg_id: u64) -> Option<bool> {
        let u = self.unacked.as_mut()?;
        let pos = u.iter().position(|&e| e & !RECEIPT_BIT == msg_id)?;
        let entry = u.remove(pos);
        if u.is_empty() {
            self.unacked = None;
        }
        Some(entry & RECEIPT_BIT != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Device` as it was before TLS, to hold its growth to one pointer.
    #[allow(dead_code, clippy::box_collection)]
    struct PlainDevice {
        stream: TcpStream,
        bufs: Option<Box<Bufs>>,
        token: Token,
        cursor: u64,
        id: u32,
        since: u32,
        heartbeat_s: u16,
        unacked: Option<Box<Vec<u64>>>,
        app: u16,
        flags: u8,
    }

    #[test]
    fn tls_adds_at_most_one_pointer_to_a_device() {
        let (with, without) = (std::mem::size_of::<Device>(), std::mem::size_of::<PlainDevice>());
        assert!(with <= without + 8, "Device is {with} bytes, {without} without TLS");
    }
}
