//! A shard's clocks, read once per loop iteration: monotonic milliseconds
//! (limits, grace deadlines), the timer wheel's tick, and unix time (expiry,
//! unregistration times). Tests set the time instead of reading it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::timer::TICK_MS;

pub struct Clock {
    /// The node's epoch, shared by every shard, so µs stamps compare across shards.
    epoch: Instant,
    /// Milliseconds since `epoch` at this iteration.
    pub mono_ms: u64,
    /// `mono_ms / TICK_MS`.
    pub tick: u64,
    pub unix_ms: u64,
    pub unix_s: u64,
    /// Set by tests: time moves only when they say.
    manual: bool,
}

impl Clock {
    pub fn new(epoch: Instant) -> Clock {
        let mut c = Clock { epoch, mono_ms: 0, tick: 0, unix_ms: 0, unix_s: 0, manual: false };
        c.update();
        c
    }

    /// A clock that stands still until `set` moves it.
    pub fn manual(mono_ms: u64, unix_ms: u64) -> Clock {
        let mut c = Clock { epoch: Instant::now(), mono_ms: 0, tick: 0, unix_ms: 0, unix_s: 0, manual: true };
        c.set(mono_ms, unix_ms);
        c
    }

    /// Reads the clocks for a new loop iteration.
    pub fn update(&mut self) {
        if self.manual {
            return;
        }
        self.mono_ms = self.epoch.elapsed().as_millis() as u64;
        self.tick = self.mono_ms / TICK_MS;
        self.unix_ms = unix_ms_now();
        self.unix_s = self.unix_ms / 1000;
    }

    pub fn set(&mut self, mono_ms: u64, unix_ms: u64) {
        self.mono_ms = mono_ms;
        self.tick = mono_ms / TICK_MS;
        self.unix_ms = unix_ms;
        self.unix_s = unix_ms / 1000;
    }

    /// Microseconds since the node's epoch, read now (not at the iteration's start).
    pub fn now_us(&self) -> u64 {
        self.now_ns() / 1000
    }

    /// Nanoseconds since the node's epoch, read now: the two ends of a
    /// delivery latency are often in one iteration.
    pub fn now_ns(&self) -> u64 {
        if self.manual {
            return self.mono_ms * 1_000_000;
        }
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Milliseconds from now until monotonic time `at_ms`, at least 1.
    pub fn ms_until(&self, at_ms: u64) -> u64 {
        let now = if self.manual { self.mono_ms } else { self.epoch.elapsed().as_millis() as u64 };
        at_ms.saturating_sub(now).max(1)
    }
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
