//! Which numbered engine writes are acknowledged, and which committed
//! tickets a cluster store may report durable. Sans-IO.

use std::collections::{BTreeSet, VecDeque};

/// Which numbered writes are acknowledged, and which committed tickets may be
/// reported: the contiguous prefix of completions, each ticket failed if any
/// write numbered after the previous ticket and up to it failed. Sans-IO.
#[derive(Default, Debug)]
pub(crate) struct Durability {
    /// Every write numbered up to this completed.
    prefix: u64,
    /// Completed above `prefix`.
    done: BTreeSet<u64>,
    /// Failed and not yet reported.
    failed: BTreeSet<u64>,
    /// Committed, not yet reported, in order.
    tickets: VecDeque<u64>,
    /// The last ticket committed.
    committed: u64,
}

impl Durability {
    /// Write `n` completed; returns the reports `(ticket, ok)` now due.
    pub(crate) fn complete(&mut self, n: u64, ok: bool, out: &mut Vec<(u64, bool)>) {
        if !ok {
            self.failed.insert(n);
        }
        if n == self.prefix + 1 {
            self.prefix = n;
            while self.done.remove(&(self.prefix + 1)) {
                self.prefix += 1;
            }
        } else if n > self.prefix {
            self.done.insert(n);
        }
        self.report(out);
    }

    /// Commits the writes up to `last`: `None` if there is nothing new (the
    /// caller may say `Durable`), else the ticket to wait for.
    pub(crate) fn commit(&mut self, last: u64, out: &mut Vec<(u64, bool)>) -> Option<u64> {
        if last <= self.committed {
            return None;
        }
        self.committed = last;
        self.tickets.push_back(last);
        self.report(out);
        Some(last)
    }

    fn report(&mut self, out: &mut Vec<(u64, bool)>) {
        while let Some(&t) = self.tickets.front() {
            if t > self.prefix {
                break;
            }
            self.tickets.pop_front();
            let ok = self.failed.range(..=t).next().is_none();
            self.failed = self.failed.split_off(&(t + 1));
            out.push((t, ok));
        }
    }

    /// Whether every write up to `last` completed; with the failures among
    /// them (forgotten when nothing committed waits to report them).
    pub(crate) fn settled(&mut self, last: u64) -> Option<bool> {
        if self.prefix < last {
            return None;
        }
        let ok = self.failed.range(..=last).next().is_none();
        if self.tickets.is_empty() {
            self.failed = self.failed.split_off(&(last + 1));
        }
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(d: &mut Durability, steps: &[(u64, bool)]) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        for &(n, ok) in steps {
            d.complete(n, ok, &mut out);
        }
        out
    }

    #[test]
    fn out_of_order_acks_report_the_contiguous_prefix() {
        let mut d = Durability::default();
        let mut out = Vec::new();
        assert_eq!(d.commit(3, &mut out), Some(3));
        assert!(out.is_empty());
        assert_eq!(reports(&mut d, &[(3, true), (1, true)]), vec![], "2 is still out");
        assert_eq!(reports(&mut d, &[(2, true)]), vec![(3, true)]);
        assert_eq!(d.commit(3, &mut out), None, "nothing new: durable at once");
    }

    #[test]
    fn a_failure_fails_exactly_its_batch() {
        let mut d = Durability::default();
        let mut out = Vec::new();
        d.commit(2, &mut out);
        // Write 4 (of the next batch) fails before batch 1..2 completes.
        assert_eq!(reports(&mut d, &[(4, false), (2, true), (3, true)]), vec![]);
        assert_eq!(reports(&mut d, &[(1, true)]), vec![(2, true)], "1..2 is unaffected by 4");
        // Batch 3..5 committed after its writes completed: reported at the commit, failed.
        let _ = reports(&mut d, &[(5, true)]);
        assert_eq!(d.commit(5, &mut out), Some(5));
        assert_eq!(out, vec![(5, false)]);
        out.clear();
        d.commit(6, &mut out);
        assert_eq!(reports(&mut d, &[(6, true)]), vec![(6, true)], "the failure is not carried on");
    }

    #[test]
    fn settled_sees_failures_once_nothing_else_reports_them() {
        let mut d = Durability::default();
        let _ = reports(&mut d, &[(1, true), (2, false)]);
        assert_eq!(d.settled(3), None);
        assert_eq!(d.settled(2), Some(false));
        assert_eq!(d.settled(2), Some(true), "a blocking sync reports a failure once");
    }
}
