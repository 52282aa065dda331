//! Group commit across the shards sharing one journal: a shard whose writes an
//! fsync already in flight will cover waits for it instead of queueing another.
//! An fsync costs a device flush (about 4 ms here) even when nothing is dirty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Every write numbered at or below this is durable.
    durable: u64,
    /// An fsync is running.
    running: bool,
}

/// Numbers committed writes and lets one shard at a time fsync for all of them.
#[derive(Default)]
pub struct SyncGate {
    written: AtomicU64,
    state: Mutex<State>,
    done: Condvar,
}

impl SyncGate {
    /// Called after a batch is committed to the journal; returns its number.
    pub fn wrote(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Makes write `upto` and all before it durable, running `fsync` only if no
    /// fsync that started after `upto` was written is done or in flight.
    pub fn sync<E>(&self, upto: u64, fsync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut st = self.lock();
        loop {
            if st.durable >= upto {
                return Ok(());
            }
            if !st.running {
                break;
            }
            // If the fsync we wait for fails, the next round runs one of our own, to get its error.
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Writes numbered up to here have reached the journal file before this fsync starts.
        let covers = self.written.load(Ordering::SeqCst);
        st.running = true;
        drop(st);
        let r = fsync();
        let mut st = self.lock();
        st.running = false;
        if r.is_ok() {
            st.durable = st.durable.max(covers);
        }
        self.done.notify_all();
        r
    }

    /// Every write numbered at or below this is durable.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn covered_writes_need_no_fsync_of_their_own() {
        let g = SyncGate::default();
        let mut calls = 0;
        assert_eq!(g.sync(0, || -> Result<(), ()> { panic!("nothing written") }), Ok(()));
        let a = g.wrote();
        let b = g.wrote();
        g.sync(a, || -> Result<(), ()> {
            calls += 1;
            Ok(())
        })
        .unwrap();
        // The fsync for `a` started after `b` was written, so it covered `b` too.
        g.sync(b, || -> Result<(), ()> { panic!("already durable") }).unwrap();
        let c = g.wrote();
        assert_eq!(g.sync(c, || Err("disk")), Err("disk"));
        g.sync(c, || -> Result<(), ()> {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 2);
    }

    #[test]
    fn concurrent_syncs_all_end_durable() {
        let g = Arc::new(SyncGate::default());
        let fsyncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, fsyncs) = (g.clone(), fsyncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let w = g.wrote();
                        g.sync(w, || -> Result<(), ()> {
                            fsyncs.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(g.lock().durable >= w);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(fsyncs.load(Ordering::SeqCst) <= 800);
    }
}
