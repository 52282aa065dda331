//! One framed TCP connection shared by both clients: a read buffer that frames
//! are split from, deadlines instead of socket-wide timeouts, and the mapping
//! of socket and codec failures onto [`ClientError`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::ClientError;
use crate::proto::frame::{split_frame, Frame, MAX_HEADER};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// Consumed bytes tolerated at the front of the buffer before it is compacted.
const COMPACT_AT: usize = 64 * 1024;
/// A body length the varint header cannot express is refused before encoding.
const MAX_ENCODABLE_BODY: usize = (1 << 21) - 1;

/// How long connecting, and each handshake step, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The instant `t` from now; `None` (no deadline) when that is past what
/// `Instant` can hold, so a caller's `Duration::MAX` means "forever", not a panic.
pub(crate) fn after(t: Duration) -> Option<Instant> {
    Instant::now().checked_add(t)
}

pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` before this offset are already consumed; compacting
    /// lazily keeps a burst of small frames from costing one memmove each.
    start: usize,
    max_body: usize,
    eof: bool,
    read_timeout: Option<Duration>,
}

impl Conn {
    /// Connects to the first address of `addr` that answers within [`CONNECT_TIMEOUT`].
    pub fn connect<A: ToSocketAddrs>(addr: A, max_body: usize) -> Result<Conn, ClientError> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing");
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(stream) => return Conn::from_stream(stream, max_body),
                Err(e) => last = e,
            }
        }
        Err(ClientError::Io(last))
    }

    pub fn from_stream(stream: TcpStream, max_body: usize) -> Result<Conn, ClientError> {
        // Frames are small and request/response shaped; Nagle would add a round trip of delay.
        stream.set_nodelay(true)?;
        // A gateway that stops reading must not hang a client forever in write().
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { stream, buf: Vec::new(), start: 0, max_body, eof: false, read_timeout: None })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        if frame.body_len() > MAX_ENCODABLE_BODY {
            return Err(ClientError::Invalid(format!(
                "frame body of {} bytes cannot be encoded",
                frame.body_len()
            )));
        }
        let mut out = Vec::with_capacity(frame.encoded_len());
        frame.encode(&mut out);
        self.send_raw(&out)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(io_error)
    }

    /// Waits until `deadline` (forever if `None`) for one frame and hands it to
    /// `on_frame`. `Ok(None)` means the deadline passed; a partial frame stays buffered.
    pub fn recv<T>(
        &mut self,
        deadline: Option<Instant>,
        on_frame: impl FnOnce(Frame<'_>) -> Result<T, ClientError>,
    ) -> Result<Option<T>, ClientError> {
        loop {
            let pending = &self.buf[self.start..];
            match split_frame(pending, self.max_body) {
                Ok(Some((raw, used))) => {
                    let parsed = Frame::parse(raw).map_err(|e| {
                        ClientError::Protocol(format!("bad frame type 0x{:02x}: {e:?}", raw.ftype))
                    });
                    // A frame that does not parse is consumed all the same, so
                    // the stream stays aligned if the caller keeps reading.
                    let out = parsed.and_then(on_frame);
                    self.consume(used);
                    return out.map(Some);
                }
                Ok(None) => {}
                Err(e) => {
                    let ftype = pending.first().copied().unwrap_or(0);
                    return Err(ClientError::Protocol(format!(
                        "bad header for frame type 0x{ftype:02x}: {e:?}"
                    )));
                }
            }
            if self.eof {
                return Err(if self.start == self.buf.len() {
                    ClientError::Closed
                } else {
                    ClientError::Protocol("connection closed in the middle of a frame".into())
                });
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= COMPACT_AT {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads once. `Ok(false)` means the deadline passed with nothing read; a
    /// deadline already past still takes what the kernel holds, without waiting,
    /// so polling with a zero timeout makes progress.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, ClientError> {
        let timeout = match deadline {
            None => None,
            Some(d) => d.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()),
        };
        let poll = deadline.is_some() && timeout.is_none();
        if poll {
            self.stream.set_nonblocking(true)?;
        } else if timeout != self.read_timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK.max(MAX_HEADER), 0);
        let res = self.stream.read(&mut self.buf[old..]);
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        if poll {
            self.stream.set_nonblocking(false)?;
        }
        match res {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// A reset or broken pipe is the peer going away, which callers handle as `Closed`.
fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ClientError::Closed
        }
        _ => ClientError::Io(e),
    }
}
