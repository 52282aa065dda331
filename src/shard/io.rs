//! Socket IO for a shard: accepting, reading into the shared scratch buffer,
//! splitting frames, and flushing output, through TLS on a TLS listener.
//! Protocol decisions live in `device.rs` and `provider.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Token as MioToken;

use super::conn::{Conn, Core, Device, Flags, Provider, Transport};
use super::Shard;
use crate::metrics::{Close, Limit, Role};
use crate::proto::{split_on_port, Frame, GoAwayReason, ProtoError, ProviderState};
use crate::tls::{self, End};

/// What one read from a connection brought.
struct Step {
    eof: Option<Close>,
    /// Nothing more to read until the next readiness event.
    drained: bool,
}

/// What a frame handler tells the read loop.
pub(super) enum Flow {
    /// Keep reading frames.
    Continue,
    /// Stop: the connection is closing, paused, or gone; keep the unread bytes.
    Stop,
    /// The connection moved to another shard, which was handed the rest of the bytes.
    HandedOff,
}

impl Shard {
    pub(super) fn accept(&mut self, device: bool) {
        loop {
            let listener =
                if device { self.listeners.device.as_ref() } else { self.listeners.provider.as_ref() };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.on_accepted(stream, peer, device),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // Out of descriptors (or another accept fault): stop accepting for
                    // one tick instead of spinning on a listener that stays readable.
                    self.metrics.on_limit(Limit::AcceptPaused);
                    if crate::net::is_fd_exhaustion(&e) {
                        warn!(
                            "shard {}: accept: {e}; pausing accepts for {} ms",
                            self.index(),
                            super::TICK_MS
                        );
                    } else {
                        warn!("shard {}: accept: {e}", self.index());
                    }
                    self.listeners.paused_until = Some(self.clock.tick + 1);
                    return;
                }
            }
        }
    }

    fn on_accepted(&mut self, mut stream: TcpStream, peer: SocketAddr, device: bool) {
        let max = self.shared.max_conns;
        let tls_config = self.shared.tls.for_port(device).cloned();
        let plain = tls_config.is_none();
        let refuse = |stream: &mut TcpStream, reason: GoAwayReason, retry: u64| {
            if !plain {
                return; // a TLS client cannot read a frame before its handshake; it sees the close
            }
            let mut buf = Vec::with_capacity(8);
            Frame::GoAway { reason, reconnect_ms: retry.min(u32::MAX as u64) as u32 }.encode(&mut buf);
            let _ = stream.write(&buf);
        };
        if self.shared.conns.fetch_add(1, Ordering::AcqRel) >= max {
            self.shared.conns.fetch_sub(1, Ordering::AcqRel);
            self.metrics.on_limit(Limit::ServerFull);
            refuse(&mut stream, GoAwayReason::SERVER_FULL, self.cfg().limits.server_full_retry_ms.into());
            info!("shard {}: refused a connection: at the limit of {max}", self.index());
            return;
        }
        let proxied = if device {
            self.cfg().server.device_proxy_protocol
        } else {
            self.cfg().server.provider_proxy_protocol
        };
        if !proxied {
            if let Err(retry) = self.shared.limits.sources.admit(peer.ip(), self.clock.now_us()) {
                self.shared.conns.fetch_sub(1, Ordering::AcqRel);
                self.metrics.on_limit(Limit::HandshakeRate);
                refuse(&mut stream, GoAwayReason::RATE_LIMITED, retry);
                debug!("shard {}: {} over its connection rate", self.index(), peer.ip());
                return;
            }
        }
        let tls = match tls_config.map(rustls::ServerConnection::new).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => {
                warn!("shard {}: TLS session: {e}", self.index());
                self.shared.conns.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut core = Core::new(Transport::Tcp(stream), tls, self.next_id(), self.clock.tick as u32);
        if proxied {
            core.flags |= Flags::PROXY;
        }
        let conn = if device {
            Conn::Device(Device::new(core))
        } else {
            Conn::Provider(Box::new(Provider { core, state: ProviderState::AwaitHello }))
        };
        self.attach(conn);
    }

    /// Puts a new connection in the slab, registers it and arms its handshake deadline.
    pub(super) fn attach(&mut self, conn: Conn) -> Option<u32> {
        let entry = self.conns.vacant_entry();
        let idx = entry.key() as u32;
        let conn = entry.insert(conn);
        if let Err(e) = conn.core_mut().transport.register(self.poll.registry(), MioToken(idx as usize)) {
            warn!("shard {}: register: {e}", self.index());
            self.close_because(idx, Close::IoError);
            return None;
        }
        let handshake = self.cfg().limits.handshake_timeout_ms.div_ceil(super::TICK_MS);
        self.arm_timer(idx, self.clock.tick + handshake);
        Some(idx)
    }

    /// The poller saw the peer's FIN (or an error): from now on the read loop
    /// reads to EOF instead of stopping at a short read, so a close that came
    /// with the last frames is noticed at once.
    pub(super) fn on_peer_closed(&mut self, idx: u32) {
        if let Some(c) = self.conns.get_mut(idx as usize) {
            c.core_mut().flags |= Flags::PEER_CLOSED;
        }
    }

    /// Reads everything the socket has, handling whole frames as they complete.
    pub(super) fn on_readable(&mut self, idx: u32) {
        self.on_readable_with(idx, 0);
    }

    /// Like `on_readable`, with `prefilled` bytes for this connection already at
    /// the start of the scratch buffer (a hand-off's leftover).
    pub(super) fn on_readable_with(&mut self, idx: u32, prefilled: usize) {
        let mut scratch = std::mem::take(&mut self.scratch.read);
        self.read_loop(idx, &mut scratch, prefilled);
        self.scratch.read = scratch;
    }

    fn read_loop(&mut self, idx: u32, scratch: &mut [u8], prefilled: usize) {
        let mut filled = prefilled;
        match self.conns.get_mut(idx as usize) {
            None => return,
            Some(c) if c.flags().contains(Flags::PAUSED) => return,
            Some(_) if prefilled > 0 => {}
            Some(c) => {
                if let Some(b) = &mut c.core_mut().bufs {
                    filled = b.rbuf.len().min(scratch.len());
                    scratch[..filled].copy_from_slice(&b.rbuf[..filled]);
                    b.rbuf.clear();
                }
            }
        }
        loop {
            let Some(Step { eof, drained }) = self.read_step(idx, scratch, &mut filled) else {
                return;
            };
            let used = match self.handle_bytes(idx, &scratch[..filled]) {
                (_, Flow::HandedOff) => return,
                (used, Flow::Stop) => {
                    self.keep_remainder(idx, &scratch[used..filled]);
                    if let Some(why) = eof {
                        self.close_because(idx, why);
                    }
                    return;
                }
                (used, Flow::Continue) => used,
            };
            if let Some(why) = eof {
                self.close_because(idx, why);
                return;
            }
            scratch.copy_within(used..filled, 0);
            filled -= used;
            if drained {
                self.keep_remainder(idx, &scratch[..filled]);
                return;
            }
        }
    }

    /// Reads once into `scratch[*filled..]`: from the socket, or through TLS on
    /// a TLS connection. None when the connection is gone or was closed here.
    fn read_step(&mut self, idx: u32, scratch: &mut [u8], filled: &mut usize) -> Option<Step> {
        let conn = self.conns.get_mut(idx as usize)?;
        let role = if conn.is_device() { Role::Device } else { Role::Provider };
        let core = conn.core_mut();
        let proxy_first = core.flags.contains(Flags::PROXY);
        let peer_closed = core.flags.contains(Flags::PEER_CLOSED);
        let mut step = Step { eof: None, drained: false };
        match &mut core.tls {
            Some(tls) if !proxy_first => {
                let pass = tls::read_pass(tls, &mut core.transport, &mut scratch[*filled..]);
                *filled += pass.plain;
                if pass.raw > 0 {
                    self.metrics.on_read(role, pass.raw);
                }
                step.drained = pass.drained;
                let output = tls.wants_write();
                match pass.end {
                    None => {}
                    Some(End::Eof) => step.eof = Some(Close::Eof),
                    Some(End::Io(e)) => {
                        debug!("shard {}: connection {idx}: TLS read: {e}", self.index());
                        step.eof = Some(Close::IoError);
                    }
                    Some(End::Tls(e)) => {
                        debug!("shard {}: connection {idx}: TLS: {e}", self.router.index());
                        tls::flush_alert(tls, &mut core.transport);
                        self.close_because(idx, Close::IoError);
                        return None;
                    }
                }
                if output {
                    // Handshake flights (and key updates) leave with this iteration's flush.
                    self.mark_dirty(idx);
                }
            }
            tls => {
                let has_tls = tls.is_some();
                while *filled < scratch.len() {
                    match core.transport.read(&mut scratch[*filled..]) {
                        Ok(0) => step.eof = Some(Close::Eof),
                        Ok(n) => {
                            // A short read emptied the socket's receive queue; data that
                            // arrives later raises a new edge, so no read to EAGAIN is
                            // needed (it would cost a system call per event). Unless
                            // the peer's FIN came with the data: then only a read
                            // that returns 0 shows it, and no later edge will.
                            step.drained = !peer_closed && n < scratch.len() - *filled;
                            *filled += n;
                            self.metrics.on_read(role, n);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => step.drained = true,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => step.eof = Some(Close::IoError),
                    }
                    break;
                }
                if proxy_first && has_tls {
                    return self.proxy_before_tls(idx, scratch, filled, step);
                }
            }
        }
        Some(step)
    }

    /// The PROXY header comes before TLS on the wire: once the raw bytes in
    /// `scratch` hold all of it, the bytes after it go to rustls and reading
    /// goes on through TLS. Until then the raw bytes take the plain path, whose
    /// frame handling keeps them (incomplete) or closes (refused).
    fn proxy_before_tls(
        &mut self,
        idx: u32,
        scratch: &mut [u8],
        filled: &mut usize,
        step: Step,
    ) -> Option<Step> {
        let Some(n) = self.on_proxy_header(idx, &scratch[..*filled]) else {
            return Some(step);
        };
        let core = self.conns.get_mut(idx as usize)?.core_mut();
        let tls = core.tls.as_mut()?;
        let fed = tls::feed(tls, &scratch[n..*filled]);
        *filled = 0;
        match fed {
            Ok(()) => self.read_step(idx, scratch, filled),
            Err(e) => {
                debug!("shard {}: connection {idx}: TLS after the PROXY header: {e:?}", self.router.index());
                tls::flush_alert(tls, &mut core.transport);
                self.close_because(idx, Close::IoError);
                None
            }
        }
    }

    /// Queues connection `idx` for this iteration's flush.
    fn mark_dirty(&mut self, idx: u32) {
        if let Some(conn) = self.conns.get_mut(idx as usize) {
            let core = conn.core_mut();
            if !core.flags.contains(Flags::DIRTY) {
                core.flags |= Flags::DIRTY;
                self.scratch.dirty.push(idx);
            }
        }
    }

    /// Saves an incomplete frame (or frames left unhandled while paused) on the connection.
    fn keep_remainder(&mut self, idx: u32, rest: &[u8]) {
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let core = conn.core_mut();
        if rest.is_empty() || core.flags.contains(Flags::CLOSING) {
            if core.bufs.as_ref().is_some_and(|b| b.is_idle()) {
                if let Some(b) = core.bufs.take() {
                    self.scratch.pool.put(b);
                }
            }
            return;
        }
        let b = core.bufs.get_or_insert_with(|| self.scratch.pool.get());
        b.rbuf.extend_from_slice(rest);
    }

    /// Handles every whole frame in `buf`; returns the bytes used and why it stopped.
    fn handle_bytes(&mut self, idx: u32, buf: &[u8]) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let Some(conn) = self.conns.get(idx as usize) else {
                return (buf.len(), Flow::Stop);
            };
            let flags = conn.flags();
            if flags.contains(Flags::CLOSING) {
                return (buf.len(), Flow::Stop); // discard until EOF
            }
            if flags.contains(Flags::PAUSED) {
                return (used, Flow::Stop);
            }
            if flags.contains(Flags::PROXY) {
                match self.on_proxy_header(idx, &buf[used..]) {
                    Some(n) => {
                        used += n;
                        continue;
                    }
                    None => return (used, Flow::Stop),
                }
            }
            let device = conn.is_device();
            let (raw, n) = match split_on_port(&buf[used..], device) {
                Ok(Some(x)) => x,
                Ok(None) => return (used, Flow::Continue),
                Err(e) => {
                    self.fail(idx, ProtoError::Frame(e));
                    return (buf.len(), Flow::Stop);
                }
            };
            used += n;
            let flow = if device {
                self.on_device_frame(idx, raw, &buf[used..])
            } else {
                self.on_provider_frame(idx, raw)
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => return (used, Flow::Stop),
                Flow::HandedOff => return (buf.len(), Flow::HandedOff),
            }
        }
    }

    /// Reads the PROXY protocol header a load balancer puts before the first
    /// frame: Some(bytes used) once it is complete and admitted; None to stop
    /// (incomplete, with the bytes kept, or refused and closing).
    fn on_proxy_header(&mut self, idx: u32, buf: &[u8]) -> Option<usize> {
        match crate::proto::proxy::parse(buf) {
            Ok(None) => None,
            Ok(Some((header, n))) => {
                let core = self.conns.get_mut(idx as usize)?.core_mut();
                core.flags.remove(Flags::PROXY);
                let source = header.source.or_else(|| core.transport.peer_addr());
                if let Some(src) = source {
                    debug!("shard {}: connection {idx} from {src} (PROXY header)", self.index());
                    if let Err(retry) = self.shared.limits.sources.admit(src.ip(), self.clock.now_us()) {
                        self.metrics.on_limit(Limit::HandshakeRate);
                        self.goaway(idx, GoAwayReason::RATE_LIMITED, retry.min(u32::MAX as u64) as u32);
                        return None;
                    }
                }
                Some(n)
            }
            Err(e) => {
                let text = format!("expected a PROXY protocol header: {}", e.detail());
                let code = crate::proto::ErrorCode::MALFORMED_FRAME;
                if let Some(role) = self.role_of(idx) {
                    self.metrics.on_handshake(role, Err(code));
                }
                self.send_last(idx, &Frame::Error { code, text: &text }, Close::Error(code));
                None
            }
        }
    }

    /// Provider connections that stopped reading at their in-flight limit and may go on.
    pub(super) fn run_resumes(&mut self) {
        let resume = std::mem::take(&mut self.scratch.resume);
        for idx in resume {
            let Some(c) = self.conns.get_mut(idx as usize) else {
                continue;
            };
            if c.flags().intersects(Flags::PAUSED | Flags::CLOSING) {
                continue;
            }
            // Unpaused: handle what was buffered, then read what the socket holds,
            // since its readiness edge may have passed while paused.
            self.on_readable(idx);
        }
    }

    /// Writes pending output; shuts the write side once a closing connection is
    /// flushed; refills a device's outbox from the store while the socket takes it.
    pub(super) fn flush(&mut self, idx: u32) {
        for _ in 0..16 {
            if !self.flush_once(idx) || !self.on_drained(idx) {
                return;
            }
        }
    }

    /// One write pass; true if the outbox emptied.
    fn flush_once(&mut self, idx: u32) -> bool {
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return false;
        };
        let role = if conn.is_device() { Role::Device } else { Role::Provider };
        let core = conn.core_mut();
        core.flags.remove(Flags::DIRTY);
        let closing = core.flags.contains(Flags::CLOSING);
        let (written, failed) = match &mut core.tls {
            Some(tls) => {
                let plain = core.bufs.as_ref().map_or(&[][..], |b| &b.wbuf[b.wpos..]);
                let mut pass = tls::write_pass(tls, &mut core.transport, plain);
                if let Some(b) = core.bufs.as_mut() {
                    b.wpos += pass.taken;
                }
                let flushed = core.bufs.as_ref().is_none_or(|b| b.pending_write() == 0) && !tls.wants_write();
                if closing && flushed && !pass.failed {
                    // Said once (rustls ignores repeats); the FIN follows once it is out.
                    tls.send_close_notify();
                    let close = tls::write_pass(tls, &mut core.transport, &[]);
                    pass.raw += close.raw;
                    pass.failed = close.failed;
                }
                (pass.raw, pass.failed)
            }
            None => write_plain(&mut core.transport, core.bufs.as_deref_mut()),
        };
        if written > 0 {
            self.metrics.on_write(role, written);
        }
        if failed {
            self.close_because(idx, Close::IoError);
            return false;
        }
        if core.pending_write() > 0 || core.tls.as_ref().is_some_and(|t| t.wants_write()) {
            return false;
        }
        if let Some(b) = core.bufs.as_mut() {
            b.wbuf.clear();
            b.wpos = 0;
        }
        if closing {
            core.transport.shutdown_write();
        }
        if core.bufs.as_ref().is_some_and(|b| b.is_idle()) {
            if let Some(b) = core.bufs.take() {
                self.scratch.pool.put(b);
            }
        }
        !closing
    }
}

/// Writes `bufs.wbuf` until it is out or the transport would block;
/// returns the bytes written and whether the transport failed.
fn write_plain(transport: &mut Transport, bufs: Option<&mut super::pool::Bufs>) -> (usize, bool) {
    let Some(b) = bufs else { return (0, false) };
    let mut written = 0;
    while b.wpos < b.wbuf.len() {
        match transport.write(&b.wbuf[b.wpos..]) {
            Ok(0) => return (written, true),
            Ok(n) => {
                b.wpos += n;
                written += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (written, true),
        }
    }
    (written, false)
}
