//! Socket IO for a shard: accepting, reading into the shared scratch buffer,
//! splitting frames, and flushing output, through TLS on a TLS listener.
//! Protocol decisions live in `device.rs` and `provider.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token as MioToken};
use slab::Slab;

use super::conn::{Conn, Device, Io, Provider, F_CLOSING, F_DIRTY, F_PAUSED, F_PROXY};
use super::timer::Entry;
use super::Shard;
use crate::metrics::{Close, Limit, Role};
use crate::proto::frame::{split_frame, DEVICE_MAX_BODY, PROVIDER_MAX_BODY};
use crate::proto::{Frame, GoAwayReason, ProtoError, ProviderState, Token};
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
                if device { self.device_listener.as_ref() } else { self.provider_listener.as_ref() };
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
                        warn!("shard {}: accept: {e}; pausing accepts for {} ms", self.index, super::TICK_MS);
                    } else {
                        warn!("shard {}: accept: {e}", self.index);
                    }
                    self.accept_paused_until = Some(self.now_tick + 1);
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
            info!("shard {}: refused a connection: at the limit of {max}", self.index);
            return;
        }
        let proxied = if device {
            self.cfg().server.device_proxy_protocol
        } else {
            self.cfg().server.provider_proxy_protocol
        };
        if !proxied {
            let now = self.mono_ms;
            if let Err(retry) = self.sources.admit(peer.ip(), now) {
                self.shared.conns.fetch_sub(1, Ordering::AcqRel);
                self.metrics.on_limit(Limit::HandshakeRate);
                refuse(&mut stream, GoAwayReason::RATE_LIMITED, retry);
                debug!("shard {}: {} over its connection rate", self.index, peer.ip());
                return;
            }
        }
        let tls = match tls_config.map(rustls::ServerConnection::new).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => {
                warn!("shard {}: TLS session: {e}", self.index);
                self.shared.conns.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = self.next_id();
        let since = self.now_tick as u32;
        let entry = self.conns.vacant_entry();
        let idx = entry.key() as u32;
        let conn = if device {
            Conn::Device(Device {
                stream,
                bufs: None,
                tls,
                token: Token([0; 24]),
                cursor: 0,
                id,
                since,
                heartbeat_s: 0,
                unacked: None,
                app: 0,
                flags: if proxied { F_PROXY } else { 0 },
            })
        } else {
            Conn::Provider(Box::new(Provider {
                stream,
                bufs: None,
                tls,
                state: ProviderState::AwaitHello,
                id,
                since,
                inflight: 0,
                flags: if proxied { F_PROXY } else { 0 },
                multis: Slab::new(),
                feedback: Slab::new(),
            }))
        };
        let conn = entry.insert(conn);
        let (stream, _) = conn.io();
        if let Err(e) = self.poll.registry().register(
            stream,
            MioToken(idx as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("shard {}: register: {e}", self.index);
            self.close_because(idx, Close::IoError);
            return;
        }
        let handshake = self.cfg().limits.handshake_timeout_ms.div_ceil(super::TICK_MS);
        self.wheel.arm(self.now_tick + handshake, Entry { idx, id });
    }

    /// Reads everything the socket has, handling whole frames as they complete.
    pub(super) fn on_readable(&mut self, idx: u32) {
        self.on_readable_with(idx, 0);
    }

    /// Like `on_readable`, with `prefilled` bytes for this connection already at
    /// the start of the scratch buffer (a hand-off's leftover).
    pub(super) fn on_readable_with(&mut self, idx: u32, prefilled: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.read_loop(idx, &mut scratch, prefilled);
        self.scratch = scratch;
    }

    fn read_loop(&mut self, idx: u32, scratch: &mut [u8], prefilled: usize) {
        let mut filled = prefilled;
        match self.conns.get_mut(idx as usize) {
            None => return,
            Some(c) if c.flags() & F_PAUSED != 0 => return,
            Some(_) if prefilled > 0 => {}
            Some(c) => {
                let (_, bufs) = c.io();
                if let Some(b) = bufs {
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
        let proxy_first = conn.flags() & F_PROXY != 0;
        let Io { stream, tls, .. } = conn.io_tls();
        let mut step = Step { eof: None, drained: false };
        match tls {
            Some(tls) if !proxy_first => {
                let pass = tls::read_pass(tls, stream, &mut scratch[*filled..]);
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
                        debug!("shard {}: connection {idx}: TLS read: {e}", self.index);
                        step.eof = Some(Close::IoError);
                    }
                    Some(End::Tls(e)) => {
                        debug!("shard {}: connection {idx}: TLS: {e}", self.index);
                        tls::flush_alert(tls, stream);
                        self.close_because(idx, Close::IoError);
                        return None;
                    }
                }
                if output {
                    // Handshake flights (and key updates) leave with this iteration's flush.
                    self.mark_dirty(idx);
                }
            }
            _ => {
                while *filled < scratch.len() {
                    match stream.read(&mut scratch[*filled..]) {
                        Ok(0) => step.eof = Some(Close::Eof),
                        Ok(n) => {
                            // A short read emptied the socket's receive queue; data that
                            // arrives later raises a new edge, so no read to EAGAIN is
                            // needed (it would cost a system call per event).
                            step.drained = n < scratch.len() - *filled;
                            *filled += n;
                            self.metrics.on_read(role, n);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => step.drained = true,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => step.eof = Some(Close::IoError),
                    }
                    break;
                }
                if proxy_first && tls.is_some() {
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
        let conn = self.conns.get_mut(idx as usize)?;
        let Io { stream, tls: Some(tls), .. } = conn.io_tls() else {
            return None;
        };
        let fed = tls::feed(tls, &scratch[n..*filled]);
        *filled = 0;
        match fed {
            Ok(()) => self.read_step(idx, scratch, filled),
            Err(e) => {
                debug!("shard {}: connection {idx}: TLS after the PROXY header: {e:?}", self.index);
                tls::flush_alert(tls, stream);
                self.close_because(idx, Close::IoError);
                None
            }
        }
    }

    /// Queues connection `idx` for this iteration's flush.
    fn mark_dirty(&mut self, idx: u32) {
        if let Some(conn) = self.conns.get_mut(idx as usize) {
            let flags = conn.flags_mut();
            if *flags & F_DIRTY == 0 {
                *flags |= F_DIRTY;
                self.dirty.push(idx);
            }
        }
    }

    /// Saves an incomplete frame (or frames left unhandled while paused) on the connection.
    fn keep_remainder(&mut self, idx: u32, rest: &[u8]) {
        let Some(conn) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let closing = conn.flags() & F_CLOSING != 0;
        let (_, bufs) = conn.io();
        if rest.is_empty() || closing {
            if bufs.as_ref().is_some_and(|b| b.is_idle()) {
                if let Some(b) = bufs.take() {
                    self.pool.put(b);
                }
            }
            return;
        }
        let b = bufs.get_or_insert_with(|| self.pool.get());
        b.rbuf.extend_from_slice(rest);
    }

    /// Handles every whole frame in `buf`; returns the bytes used and why it stopped.
    fn handle_bytes(&mut self, idx: u32, buf: &[u8]) -> (usize, Flow) {
        let mut used = 0;
        loop {
            let Some(conn) = self.conns.get(idx as usize) else {
                return (buf.len(), Flow::Stop);
            };
            if conn.flags() & F_CLOSING != 0 {
                return (buf.len(), Flow::Stop); // discard until EOF
            }
            if conn.flags() & F_PAUSED != 0 {
                return (used, Flow::Stop);
            }
            if conn.flags() & F_PROXY != 0 {
                match self.on_proxy_header(idx, &buf[used..]) {
                    Some(n) => {
                        used += n;
                        continue;
                    }
                    None => return (used, Flow::Stop),
                }
            }
            let device = conn.is_device();
            let max = if device { DEVICE_MAX_BODY } else { PROVIDER_MAX_BODY };
            let (raw, n) = match split_frame(&buf[used..], max) {
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
                let conn = self.conns.get_mut(idx as usize)?;
                *conn.flags_mut() &= !F_PROXY;
                let source = header.source.or_else(|| conn.io().0.peer_addr().ok());
                if let Some(src) = source {
                    debug!("shard {}: connection {idx} from {src} (PROXY header)", self.index);
                    let now = self.mono_ms;
                    if let Err(retry) = self.sources.admit(src.ip(), now) {
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
                if self.send_frame(idx, &Frame::Error { code, text: &text }) {
                    self.count_close(idx, Close::Error(code));
                    self.begin_close(idx);
                }
                None
            }
        }
    }

    /// Provider connections that stopped reading at their in-flight limit and may go on.
    pub(super) fn run_resumes(&mut self) {
        let resume = std::mem::take(&mut self.resume);
        for idx in resume {
            let Some(c) = self.conns.get_mut(idx as usize) else {
                continue;
            };
            if c.flags() & F_PAUSED != 0 || c.flags() & F_CLOSING != 0 {
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
        *conn.flags_mut() &= !F_DIRTY;
        let closing = conn.flags() & F_CLOSING != 0;
        let role = if conn.is_device() { Role::Device } else { Role::Provider };
        let Io { stream, bufs, tls } = conn.io_tls();
        let (written, failed) = match tls {
            Some(tls) => {
                let plain = bufs.as_ref().map_or(&[][..], |b| &b.wbuf[b.wpos..]);
                let mut pass = tls::write_pass(tls, stream, plain);
                if let Some(b) = bufs.as_mut() {
                    b.wpos += pass.taken;
                }
                let flushed = bufs.as_ref().is_none_or(|b| b.pending_write() == 0) && !tls.wants_write();
                if closing && flushed && !pass.failed {
                    // Said once (rustls ignores repeats); the FIN follows once it is out.
                    tls.send_close_notify();
                    let close = tls::write_pass(tls, stream, &[]);
                    pass.raw += close.raw;
                    pass.failed = close.failed;
                }
                (pass.raw, pass.failed)
            }
            None => write_plain(stream, bufs.as_deref_mut()),
        };
        if written > 0 {
            self.metrics.on_write(role, written);
        }
        if failed {
            self.close_because(idx, Close::IoError);
            return false;
        }
        if bufs.as_ref().is_some_and(|b| b.pending_write() > 0)
            || tls.as_ref().is_some_and(|t| t.wants_write())
        {
            return false;
        }
        if let Some(b) = bufs.as_mut() {
            b.wbuf.clear();
            b.wpos = 0;
        }
        if closing {
            let _ = stream.shutdown(Shutdown::Write);
        }
        if bufs.as_ref().is_some_and(|b| b.is_idle()) {
            if let Some(b) = bufs.take() {
                self.pool.put(b);
            }
        }
        !closing
    }
}

/// Writes `bufs.wbuf` to the socket until it is out or the socket would block;
/// returns the bytes written and whether the socket failed.
fn write_plain(stream: &mut TcpStream, bufs: Option<&mut super::pool::Bufs>) -> (usize, bool) {
    let Some(b) = bufs else { return (0, false) };
    let mut written = 0;
    while b.wpos < b.wbuf.len() {
        match stream.write(&b.wbuf[b.wpos..]) {
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
