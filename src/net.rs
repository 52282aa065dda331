//! Sockets and process limits: per-shard SO_REUSEPORT listeners and the open-files limit.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `n` listeners on `addr` with SO_REUSEPORT so the kernel spreads
/// accepted connections over the shards. Port 0 picks one port for all.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let this process share a port another gateway (or
        // anything else) already listens on, silently splitting its traffic.
        // A plain bind fails with "address in use" if anyone holds the port.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    }
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        let l: TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Raises the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024),
    }
}

/// File descriptors kept back from connections: listeners, pollers, wakers, store files, logs.
pub const FD_RESERVE: u64 = 64;

/// Connections the gateway can hold under an open-files limit of `nofile`.
pub fn capacity_for(nofile: u64, shards: usize) -> usize {
    nofile.saturating_sub(FD_RESERVE + 8 * shards as u64) as usize
}

/// Whether an accept error means "out of descriptors" (retry later, don't spin).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
