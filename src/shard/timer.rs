//! A hashed timing wheel: O(1) to arm, O(expired) to fire, one entry per connection.
//!
//! Connections never cancel or move their entry. When an entry fires the shard
//! recomputes that connection's deadline from its last activity and re-arms it
//! if the deadline moved, so a heartbeat costs a field write, not a wheel operation.

/// Wheel resolution in milliseconds.
pub const TICK_MS: u64 = 100;
const SLOTS: usize = 1024;

/// An armed entry: the slab index and the connection id it was armed for, so
/// an entry outliving its connection (or a reused slot) is recognised and skipped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Entry {
    pub idx: u32,
    pub id: u32,
}

pub struct Wheel {
    /// Each entry with the tick it was armed for.
    slots: Vec<Vec<(Entry, u64)>>,
    /// The tick whose slot fires next.
    next: u64,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new()
    }
}

impl Wheel {
    pub fn new() -> Wheel {
        Wheel { slots: (0..SLOTS).map(|_| Vec::new()).collect(), next: 0 }
    }

    /// Arms `e` to fire at tick `at`; a tick already past fires on the next advance,
    /// and one beyond the wheel's horizon fires early (the caller re-arms it).
    /// Returns the tick it will fire at, which the entry carries when it fires.
    pub fn arm(&mut self, at: u64, e: Entry) -> u64 {
        let at = at.clamp(self.next, self.next + SLOTS as u64 - 1);
        self.slots[(at % SLOTS as u64) as usize].push((e, at));
        at
    }

    /// Moves every entry due at or before tick `now` into `out`, with its tick.
    pub fn advance(&mut self, now: u64, out: &mut Vec<(Entry, u64)>) {
        while self.next <= now {
            let slot = &mut self.slots[(self.next % SLOTS as u64) as usize];
            out.append(slot);
            self.next += 1;
        }
    }

    /// Entries currently armed (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_clamps_to_horizon() {
        let mut w = Wheel::new();
        w.arm(5, Entry { idx: 1, id: 1 });
        w.arm(2, Entry { idx: 2, id: 2 });
        assert_eq!(w.arm(100_000, Entry { idx: 3, id: 3 }), SLOTS as u64 - 1, "clamped to the horizon");
        let mut out = Vec::new();
        w.advance(1, &mut out);
        assert!(out.is_empty());
        w.advance(2, &mut out);
        assert_eq!(out, vec![(Entry { idx: 2, id: 2 }, 2)]);
        out.clear();
        w.advance(5, &mut out);
        assert_eq!(out, vec![(Entry { idx: 1, id: 1 }, 5)]);
        out.clear();
        w.advance(SLOTS as u64, &mut out);
        assert_eq!(out, vec![(Entry { idx: 3, id: 3 }, SLOTS as u64 - 1)]);
        w.arm(0, Entry { idx: 4, id: 4 });
        out.clear();
        w.advance(SLOTS as u64 + 1, &mut out);
        assert_eq!(out.len(), 1, "a past deadline fires on the next advance");
        assert!(w.is_empty());
    }
}
