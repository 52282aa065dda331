//! Token buckets for the limits that protect a node: connections per second
//! per source address, and pushes per second per app. Pure arithmetic on a
//! millisecond clock the caller passes in.
//!
//! Each shard keeps its own buckets with `1/shards` of the configured rate:
//! SO_REUSEPORT spreads one source's connections, and an app's providers,
//! over the shards, so the node-wide rate holds without a shared lock.

use std::collections::HashMap;
use std::net::IpAddr;

/// A token bucket refilled continuously at `rate` per second up to `burst`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// The rate and burst a bucket follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_s` split over `shards`; a burst of at least one.
    pub fn per_shard(per_s: u64, burst: u64, shards: usize) -> Rate {
        let n = shards.max(1) as f64;
        Rate { per_s: per_s as f64 / n, burst: (burst as f64 / n).max(1.0) }
    }
}

impl Bucket {
    pub fn full(rate: Rate, now_ms: u64) -> Bucket {
        Bucket { tokens: rate.burst, last_ms: now_ms }
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_s).min(rate.burst);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate.per_s <= 0.0 {
            return Err(u64::MAX);
        }
        Err((((1.0 - self.tokens) / rate.per_s) * 1000.0).ceil() as u64)
    }

    /// Whether the bucket would be full by now (nothing to remember about its owner).
    fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * rate.per_s >= rate.burst
    }
}

/// Most source addresses tracked per shard; past it, full buckets are forgotten.
const MAX_SOURCES: usize = 65_536;

/// Connection-rate buckets per source address.
pub struct SourceLimiter {
    rate: Option<Rate>,
    buckets: HashMap<IpAddr, Bucket>,
}

impl SourceLimiter {
    /// `rate` None disables the limit.
    pub fn new(rate: Option<Rate>) -> SourceLimiter {
        SourceLimiter { rate, buckets: HashMap::new() }
    }

    /// Admits one connection from `ip`, or returns the retry delay in ms.
    pub fn admit(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let Some(rate) = self.rate else { return Ok(()) };
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.buckets.retain(|_, b| !b.is_full(rate, now_ms));
            if self.buckets.len() >= MAX_SOURCES {
                // Under a flood from more sources than we track, fall back to no per-source memory
                // rather than unbounded growth; max_connections still bounds the node.
                return Ok(());
            }
        }
        self.buckets.entry(ip).or_insert_with(|| Bucket::full(rate, now_ms)).take(rate, now_ms)
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate_and_says_when() {
        let rate = Rate { per_s: 10.0, burst: 3.0 };
        let mut b = Bucket::full(rate, 0);
        assert!(b.take(rate, 0).is_ok());
        assert!(b.take(rate, 0).is_ok());
        assert!(b.take(rate, 0).is_ok());
        assert_eq!(b.take(rate, 0), Err(100));
        assert!(b.take(rate, 100).is_ok());
        assert_eq!(b.take(rate, 150), Err(50));
    }

    #[test]
    fn sources_are_limited_separately_and_the_map_is_bounded() {
        let mut l = SourceLimiter::new(Some(Rate { per_s: 1.0, burst: 1.0 }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.admit(a, 0).is_ok());
        assert!(l.admit(a, 0).is_err());
        assert!(l.admit(b, 0).is_ok());
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let _ = l.admit(IpAddr::from(i.to_be_bytes()), 5_000);
        }
        assert!(l.tracked() <= MAX_SOURCES);
        assert!(SourceLimiter::new(None).admit(a, 0).is_ok());
    }
}
