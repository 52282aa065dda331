//! Rate limits that protect a node: new connections per second per source
//! address, and pushes per second per app. Each is one GCRA cell (a
//! theoretical arrival time in µs) per source or app, shared by every shard,
//! so the rate and burst an operator sets are the node's, whatever the shard
//! count. Pure arithmetic on a µs clock the caller passes in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A rate of `per_s` a second with bursts of up to `burst` at once, as the
/// generic cell rate algorithm sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// µs between two admissions at the sustained rate.
    interval_us: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1)` intervals.
    tolerance_us: u64,
}

impl Gcra {
    /// None when `per_s` is 0 (the limit is off). A burst of at least one.
    pub fn new(per_s: u64, burst: u64) -> Option<Gcra> {
        if per_s == 0 {
            return None;
        }
        let interval_us = (1_000_000 / per_s).max(1);
        Some(Gcra { interval_us, tolerance_us: interval_us * (burst.max(1) - 1) })
    }

    /// Given the cell's arrival time `tat`, admits one at `now_us` (the new
    /// arrival time) or says in how many ms one will be admitted.
    pub fn check(&self, tat: u64, now_us: u64) -> Result<u64, u64> {
        let tat = tat.max(now_us);
        let allowed_at = tat - self.tolerance_us.min(tat);
        if allowed_at > now_us {
            return Err((allowed_at - now_us).div_ceil(1000).max(1));
        }
        Ok(tat + self.interval_us)
    }
}

/// One GCRA cell that several threads take from, lock-free.
#[derive(Default, Debug)]
pub struct Cell(AtomicU64);

impl Cell {
    pub fn take(&self, g: &Gcra, now_us: u64) -> Result<(), u64> {
        let mut tat = self.0.load(Ordering::Relaxed);
        loop {
            let next = g.check(tat, now_us)?;
            match self.0.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// Most source addresses tracked; past it, cells back at rest are forgotten.
const MAX_SOURCES: usize = 65_536;

/// Connection-rate cells per source address, for the whole node.
pub struct SourceLimiter {
    rate: Option<Gcra>,
    cells: Mutex<HashMap<IpAddr, u64>>,
}

impl SourceLimiter {
    /// `rate` None disables the limit.
    pub fn new(rate: Option<Gcra>) -> SourceLimiter {
        SourceLimiter { rate, cells: Mutex::new(HashMap::new()) }
    }

    /// Admits one connection from `ip`, or returns the retry delay in ms.
    pub fn admit(&self, ip: IpAddr, now_us: u64) -> Result<(), u64> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if cells.len() >= MAX_SOURCES && !cells.contains_key(&ip) {
            cells.retain(|_, &mut tat| tat > now_us);
            if cells.len() >= MAX_SOURCES {
                // Under a flood from more sources than we track, fall back to no per-source memory
                // rather than unbounded growth; max_connections still bounds the node.
                return Ok(());
            }
        }
        let tat = cells.entry(ip).or_insert(0);
        *tat = rate.check(*tat, now_us)?;
        Ok(())
    }

    pub fn tracked(&self) -> usize {
        self.cells.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The node's limits, shared by its shards.
pub struct NodeLimits {
    pub sources: SourceLimiter,
    push_rate: Option<Gcra>,
    /// One cell per app, by app index.
    apps: Vec<Cell>,
}

impl NodeLimits {
    pub fn new(l: &crate::config::LimitsConfig, apps: usize) -> NodeLimits {
        let push_rate = Gcra::new(l.pushes_per_app_per_s, l.pushes_per_app_burst);
        NodeLimits {
            sources: SourceLimiter::new(Gcra::new(
                l.connections_per_source_per_s,
                l.connections_per_source_burst,
            )),
            push_rate,
            apps: (0..if push_rate.is_some() { apps } else { 0 }).map(|_| Cell::default()).collect(),
        }
    }

    /// Charges one push to `app`, or says in how many ms to retry.
    pub fn take_push(&self, app: u16, now_us: u64) -> Result<(), u64> {
        match (self.push_rate, self.apps.get(usize::from(app))) {
            (Some(rate), Some(cell)) => cell.take(&rate, now_us),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_when_to_retry() {
        let g = Gcra::new(10, 3).unwrap();
        let cell = Cell::default();
        let t0 = 5_000_000;
        for _ in 0..3 {
            assert!(cell.take(&g, t0).is_ok());
        }
        assert_eq!(cell.take(&g, t0), Err(100), "one every 100 ms at 10/s");
        assert!(cell.take(&g, t0 + 100_000).is_ok());
        assert_eq!(cell.take(&g, t0 + 150_000), Err(50));
        assert!(Gcra::new(0, 5).is_none(), "0 turns the limit off");
    }

    #[test]
    fn threads_sharing_a_cell_get_exactly_the_burst() {
        let g = Gcra::new(1, 20).unwrap();
        let cell = std::sync::Arc::new(Cell::default());
        let admitted: usize = (0..4)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || (0..50).filter(|_| cell.take(&g, 1_000_000).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 20);
    }

    #[test]
    fn sources_are_limited_separately_and_the_map_is_bounded() {
        let l = SourceLimiter::new(Gcra::new(1, 1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.admit(a, 0).is_ok());
        assert!(l.admit(a, 0).is_err());
        assert!(l.admit(b, 0).is_ok());
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let _ = l.admit(IpAddr::from(i.to_be_bytes()), 5_000_000);
        }
        assert!(l.tracked() <= MAX_SOURCES);
        assert!(SourceLimiter::new(None).admit(a, 0).is_ok());
    }
}
