//! Connection state kept per socket, sized so an idle device costs a few
//! dozen bytes: one core (transport, buffers, TLS, id, flags) shared by the
//! device and provider sessions, each with its own protocol state.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use bitflags::bitflags;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token as MioToken};
use rustls::ServerConnection;

use super::pool::Bufs;
use super::topics::state::DeviceTopics;
use crate::proto::{DeviceState, ProviderState, Token};

bitflags! {
    /// Per-connection flags, for devices and providers alike.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
    pub struct Flags: u16 {
        /// Queued for the flush at the end of this loop iteration.
        const DIRTY = 1;
        /// A device with normal-priority notifications waiting to be coalesced.
        const COALESCING = 2;
        /// ERROR or GOAWAY sent; reading and discarding until EOF or the linger deadline.
        const CLOSING = 4;
        /// A device whose last delivery stopped at the window or the outbox
        /// limit: an ACK or a drained socket should look for more.
        const BACKLOG = 8;
        /// Not reading: a provider at its in-flight limit, or a device whose UNREGISTER is syncing.
        const PAUSED = 16;
        /// The peer's FIN was seen by the poller; read to EOF, not just to a short read.
        const PEER_CLOSED = 32;
        /// The listener expects a PROXY protocol header before the first frame.
        const PROXY = 64;
        /// A provider session that sent SUBSCRIBE_RECEIPTS.
        const RECEIPTS = 128;
        /// A device whose backlog the store is still loading: WELCOME waits for it.
        const LOADING = 256;
        /// Cluster: a device whose route claim is in flight: WELCOME waits for it.
        const CLAIMING = 512;
        /// A device whose store found notifications after WELCOME (another
        /// node's append that raced its claim): their ids may be below the
        /// cursor, so delivery looks from the start, past what is in flight.
        const RESCAN = 1024;
    }
}

impl Flags {
    /// A device that must not be written notifications: closing, gone, or not welcomed yet.
    pub const NO_NOTIFY: Flags =
        Flags::CLOSING.union(Flags::PEER_CLOSED).union(Flags::LOADING).union(Flags::CLAIMING);
}

/// What carries a connection's bytes: a socket, or an in-memory pipe (the
/// shard's tests drive whole sessions through it, with no sockets).
pub enum Transport {
    Tcp(TcpStream),
    Mem(Arc<MemPipe>),
}

/// Both ends of an in-memory connection.
#[derive(Default)]
pub struct MemPipe(Mutex<MemState>);

#[derive(Default)]
pub struct MemState {
    /// Bytes the peer wrote, not yet read by the shard.
    pub to_shard: Vec<u8>,
    /// Bytes the shard wrote.
    pub from_shard: Vec<u8>,
    /// The peer closed its side: reads give EOF once `to_shard` is empty.
    pub peer_closed: bool,
    /// The shard shut its write side down.
    pub shard_closed: bool,
}

impl MemPipe {
    pub fn state(&self) -> MutexGuard<'_, MemState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport {
    pub fn register(&mut self, registry: &Registry, token: MioToken) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => registry.register(s, token, Interest::READABLE | Interest::WRITABLE),
            Transport::Mem(_) => Ok(()),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        if let Transport::Tcp(s) = self {
            let _ = registry.deregister(s);
        }
    }

    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Transport::Mem(p) => p.state().shard_closed = true,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.peer_addr().ok(),
            Transport::Mem(_) => None,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Mem(p) => {
                let mut st = p.state();
                if st.to_shard.is_empty() {
                    return if st.peer_closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
                }
                let n = buf.len().min(st.to_shard.len());
                buf[..n].copy_from_slice(&st.to_shard[..n]);
                st.to_shard.drain(..n);
                Ok(n)
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Mem(p) => {
                let mut st = p.state();
                if st.shard_closed {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                st.from_shard.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What every connection has: its transport, buffers (none while idle), TLS
/// session (boxed, so a plain connection pays 8 bytes), identity and flags.
pub struct Core {
    pub transport: Transport,
    pub bufs: Option<Box<Bufs>>,
    pub tls: Option<Box<ServerConnection>>,
    /// Tells a reused slab slot from the connection that had it before.
    pub id: u32,
    /// Tick of the last frame received (or of accept, or of the start of closing).
    pub since: u32,
    /// The tick its live timer entry fires at; an entry for another tick was superseded.
    pub armed: u32,
    pub flags: Flags,
}

impl Core {
    pub fn new(transport: Transport, tls: Option<Box<ServerConnection>>, id: u32, since: u32) -> Core {
        Core { transport, bufs: None, tls, id, since, armed: 0, flags: Flags::empty() }
    }

    pub fn pending_write(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.pending_write())
    }
}

/// Marks an unacked id whose provider wants a receipt. Message ids stay below
/// 2^63 (they start from the clock in ms shifted by 16 bits).
const RECEIPT_BIT: u64 = 1 << 63;

/// A device connection.
pub struct Device {
    pub core: Core,
    pub state: DeviceState,
    pub token: Token,
    /// Highest message id written to this connection.
    pub cursor: u64,
    pub heartbeat_s: u16,
    pub app: u16,
    /// What is in flight and the device's topics; allocated only while there is any.
    live: Option<Box<Live>>,
}

/// The part of a device's state an idle device without topics does not have.
#[derive(Default)]
struct Live {
    /// Ids of NOTIFY and TOPIC_NOTIFY frames written and not yet acknowledged, oldest first.
    unacked: Vec<u64>,
    /// Subscriptions, broadcast position and topic messages in flight.
    topics: Option<DeviceTopics>,
}

/// A provider connection. Its requests are the shard's `Requests`' business.
pub struct Provider {
    pub core: Core,
    pub state: ProviderState,
}

pub enum Conn {
    Device(Device),
    Provider(Box<Provider>),
}

impl Conn {
    pub fn core(&self) -> &Core {
        match self {
            Conn::Device(d) => &d.core,
            Conn::Provider(p) => &p.core,
        }
    }

    pub fn core_mut(&mut self) -> &mut Core {
        match self {
            Conn::Device(d) => &mut d.core,
            Conn::Provider(p) => &mut p.core,
        }
    }

    pub fn id(&self) -> u32 {
        self.core().id
    }

    pub fn flags(&self) -> Flags {
        self.core().flags
    }

    pub fn is_device(&self) -> bool {
        matches!(self, Conn::Device(_))
    }

    /// HELLO accepted and WELCOME sent, or AUTH accepted; not closing.
    pub fn is_ready(&self) -> bool {
        match self {
            Conn::Device(d) => d.state == DeviceState::Ready,
            Conn::Provider(p) => matches!(p.state, ProviderState::Ready { .. }),
        }
    }
}

impl Device {
    pub fn new(core: Core) -> Device {
        Device {
            core,
            state: DeviceState::AwaitHello,
            token: Token([0; crate::proto::TOKEN_LEN]),
            cursor: 0,
            heartbeat_s: 0,
            app: 0,
            live: None,
        }
    }

    /// NOTIFY frames written and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.unacked.len())
    }

    /// Frees the live state once nothing is in it.
    fn settle(&mut self) {
        if self.live.as_ref().is_some_and(|l| l.unacked.is_empty() && l.topics.is_none()) {
            self.live = None;
        }
    }

    /// Takes the device's topic state out (to work on it beside the shard); put it back with `put_topics`.
    pub fn take_topics(&mut self) -> Option<DeviceTopics> {
        let t = self.live.as_mut()?.topics.take();
        self.settle();
        t
    }

    pub fn put_topics(&mut self, t: DeviceTopics) {
        self.live.get_or_insert_with(Default::default).topics = Some(t);
    }

    pub fn topics_mut(&mut self) -> Option<&mut DeviceTopics> {
        self.live.as_mut()?.topics.as_mut()
    }

    pub fn topics_or_default(&mut self) -> &mut DeviceTopics {
        self.live.get_or_insert_with(Default::default).topics.get_or_insert_with(Default::default)
    }

    /// Records a NOTIFY written; `receipt` if its provider asked for a receipt.
    pub fn on_sent(&mut self, msg_id: u64, receipt: bool) {
        debug_assert!(
            msg_id > self.cursor || self.core.flags.contains(Flags::RESCAN),
            "notifications go out in id order"
        );
        self.cursor = self.cursor.max(msg_id);
        let entry = if receipt { msg_id | RECEIPT_BIT } else { msg_id };
        self.live.get_or_insert_with(Default::default).unacked.push(entry);
    }

    /// Records a TOPIC_NOTIFY written: it takes a window slot like a NOTIFY,
    /// but topic ids (bit 62) leave the cursor of direct ids alone.
    pub fn on_sent_topic(&mut self, msg_id: u64, receipt: bool) {
        debug_assert!(crate::proto::topic::is_topic_id(msg_id));
        let entry = if receipt { msg_id | RECEIPT_BIT } else { msg_id };
        self.live.get_or_insert_with(Default::default).unacked.push(entry);
    }

    /// Whether `msg_id` was written here and is not acknowledged yet.
    pub fn is_in_flight(&self, msg_id: u64) -> bool {
        self.live.as_ref().is_some_and(|l| l.unacked.iter().any(|&e| e & !RECEIPT_BIT == msg_id))
    }

    /// Forgets an acknowledged id: `None` if it was not in flight here, else
    /// whether a receipt was asked for.
    pub fn on_acked(&mut self, msg_id: u64) -> Option<bool> {
        let u = &mut self.live.as_mut()?.unacked;
        let pos = u.iter().position(|&e| e & !RECEIPT_BIT == msg_id)?;
        let entry = u.remove(pos);
        self.settle();
        Some(entry & RECEIPT_BIT != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_device_stays_small() {
        // transport 16, bufs 8, tls 8, token 24, cursor 8, live 8, and the small fields.
        let size = std::mem::size_of::<Device>();
        assert!(size <= 96, "Device is {size} bytes");
        assert!(std::mem::size_of::<Conn>() <= 96);
    }

    #[test]
    fn the_window_tracks_ids_exactly() {
        let mut d = Device::new(Core::new(Transport::Mem(Default::default()), None, 1, 0));
        d.on_sent(5, false);
        d.on_sent(6, true);
        assert_eq!(d.inflight(), 2);
        assert_eq!(d.on_acked(7), None, "never sent");
        assert_eq!(d.on_acked(6), Some(true));
        assert_eq!(d.on_acked(6), None, "a repeated ACK does not widen the window");
        assert_eq!(d.on_acked(5), Some(false));
        assert!(d.live.is_none(), "nothing in flight, nothing allocated");
    }
}
