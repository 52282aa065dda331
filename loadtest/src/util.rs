//! Small shared helpers: a process-wide monotonic clock, the fd limit, source
//! addresses on loopback, a cheap PRNG and the payload every target carries.

use std::net::{Ipv4Addr, SocketAddr};

/// CLOCK_MONOTONIC in nanoseconds. System-wide on Linux, so a timestamp taken
/// in the provider process can be compared with one taken in a worker.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft open-files limit to the hard one and returns it.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// The source address for connection `i` of worker `w`: spread over 250
/// addresses per worker so no address runs out of its ~28k ephemeral ports.
pub fn source_addr(w: usize, i: usize) -> SocketAddr {
    let host = (i % 250) as u8 + 1;
    SocketAddr::from((Ipv4Addr::new(127, 10 + (w / 256) as u8, (w % 256) as u8, host), 0))
}

/// splitmix64: the PRNG step and the fingerprint mixer both sides agree on.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A tiny deterministic PRNG (splitmix64 stream).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The secret of device `idx` in a run: stable, so a reconnecting device keeps its token.
pub fn device_secret(seed: u64, idx: u32) -> [u8; 16] {
    let a = mix64(seed ^ (idx as u64).wrapping_mul(0x1000_0001));
    let b = mix64(a ^ 0x5eed);
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&a.to_le_bytes());
    s[8..].copy_from_slice(&b.to_le_bytes());
    s
}

/// Payload layout: magic "PGLT", send time (monotonic ns), target device, sequence.
pub const PAYLOAD_HEADER: usize = 4 + 8 + 4 + 8;
const MAGIC: &[u8; 4] = b"PGLT";

/// Fills `buf` (at least [`PAYLOAD_HEADER`] bytes) with a payload for device `dev`.
pub fn write_payload(buf: &mut [u8], sent_ns: u64, dev: u32, seq: u64) {
    buf[..4].copy_from_slice(MAGIC);
    buf[4..12].copy_from_slice(&sent_ns.to_be_bytes());
    buf[12..16].copy_from_slice(&dev.to_be_bytes());
    buf[16..24].copy_from_slice(&seq.to_be_bytes());
}

/// The (send time, device, sequence) a payload carries, if it is ours.
pub fn read_payload(p: &[u8]) -> Option<(u64, u32, u64)> {
    if p.len() < PAYLOAD_HEADER || &p[..4] != MAGIC {
        return None;
    }
    let ts = u64::from_be_bytes(p[4..12].try_into().ok()?);
    let dev = u32::from_be_bytes(p[12..16].try_into().ok()?);
    let seq = u64::from_be_bytes(p[16..24].try_into().ok()?);
    Some((ts, dev, seq))
}

/// Whether an I/O error only means "try again later".
pub fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

pub fn interrupted(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Interrupted
}

/// Resident set size of process `pid` in bytes, from /proc/<pid>/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds (user + system) process `pid` has used, from /proc/<pid>/stat.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_rejects_foreign_bytes() {
        let mut b = [0u8; 40];
        write_payload(&mut b, 123, 7, 99);
        assert_eq!(read_payload(&b), Some((123, 7, 99)));
        assert_eq!(read_payload(&b[..10]), None);
        assert_eq!(read_payload(&[0u8; 40]), None);
    }

    #[test]
    fn secrets_are_stable_and_distinct() {
        assert_eq!(device_secret(1, 5), device_secret(1, 5));
        assert_ne!(device_secret(1, 5), device_secret(1, 6));
        assert_ne!(device_secret(2, 5), device_secret(1, 5));
    }
}
