//! The durable store's sync thread: shards commit their batches to the
//! journal on their own threads (fast: memtable and journal buffer) and hand
//! the fsync here, so the event loop never waits for the disk. One fsync
//! covers every batch committed before it started, for all shards; each
//! shard that asked hears back through its hook.
//!
//! fjall holds its journal lock during `persist(SyncAll)`, which would stall
//! every shard's next commit for the whole fsync. So the journal is flushed
//! to the kernel under the lock (`PersistMode::Buffer`), and the fsync runs
//! on our own descriptor of the active journal file, outside it. A journal
//! that fjall rotates away was fsynced by fjall before the switch.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fjall::{Database, PersistMode};

use super::sync::SyncGate;
use crate::store::{DurableHook, StoreError};

/// The handles every shard's store shares; dropping the last joins the thread.
pub struct Syncer {
    tx: Option<Sender<(u16, u64)>>,
    hooks: Arc<Mutex<Vec<Option<DurableHook>>>>,
    thread: Option<JoinHandle<()>>,
}

/// What an fsync needs: the database (to flush the journal buffer) and the
/// active journal file.
pub struct Journal {
    db: Database,
    dir: PathBuf,
    /// The active journal's number and our descriptor of it.
    open: Mutex<Option<(u64, File)>>,
}

impl Journal {
    pub fn new(db: Database, dir: &Path) -> Journal {
        Journal { db, dir: dir.into(), open: Mutex::new(None) }
    }

    /// Makes every journal write so far durable, holding fjall's lock only
    /// for the buffer flush.
    pub fn fsync(&self) -> Result<(), StoreError> {
        let err =
            |what: &str, e: std::io::Error| StoreError::Io(format!("{what} in {}: {e}", self.dir.display()));
        self.db
            .persist(PersistMode::Buffer)
            .map_err(|e| super::map_err(&self.dir, "flushing the journal", e))?;
        let newest = newest_journal(&self.dir).map_err(|e| err("listing journals", e))?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().map(|(n, _)| *n) != Some(newest) {
            let path = self.dir.join(format!("{newest}.jnl"));
            *open = Some((newest, File::open(&path).map_err(|e| err("opening the journal", e))?));
        }
        let file = &open.as_ref().ok_or_else(|| StoreError::Io("no journal open".into()))?.1;
        file.sync_data().map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                StoreError::Full
            } else {
                err("syncing the journal", e)
            }
        })
    }
}

/// The highest-numbered `N.jnl` in `dir`: the one fjall appends to.
fn newest_journal(dir: &Path) -> std::io::Result<u64> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let n = name.to_str().and_then(|s| s.strip_suffix(".jnl")).and_then(|s| s.parse::<u64>().ok());
        newest = newest.max(n);
    }
    newest.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no journal file"))
}

impl Syncer {
    pub fn start(journal: Arc<Journal>, gate: Arc<SyncGate>, shards: usize) -> std::io::Result<Syncer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let hooks: Arc<Mutex<Vec<Option<DurableHook>>>> =
            Arc::new(Mutex::new((0..shards).map(|_| None).collect()));
        let h = hooks.clone();
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || run(&rx, &journal, &gate, &h))?;
        Ok(Syncer { tx: Some(tx), hooks, thread: Some(thread) })
    }

    pub fn set_hook(&self, shard: u16, hook: DurableHook) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = hooks.get_mut(usize::from(shard)) {
            *slot = Some(hook);
        }
    }

    /// Asks for write `upto` of `shard` to be made durable.
    pub fn request(&self, shard: u16, upto: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((shard, upto));
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The shortest time between two fsyncs. Each costs the kernel's writeback
/// CPU whatever it covers, and with every shard iteration asking, a fast disk
/// would see thousands a second. Waiting at most this long lets one fsync
/// cover more batches; it delays RESULTs, not NOTIFYs (those leave before the
/// commit).
const MIN_FSYNC_INTERVAL: Duration = Duration::from_millis(1);

fn run(
    rx: &Receiver<(u16, u64)>,
    journal: &Journal,
    gate: &SyncGate,
    hooks: &Mutex<Vec<Option<DurableHook>>>,
) {
    let mut want: HashMap<u16, u64> = HashMap::new();
    let mut last = Instant::now() - MIN_FSYNC_INTERVAL;
    while let Ok((shard, upto)) = rx.recv() {
        want.insert(shard, upto);
        // Everyone who asks until the interval is up shares this fsync. Sleep
        // rather than wait on the channel: a sender then wakes nobody.
        if let Some(left) = (last + MIN_FSYNC_INTERVAL).checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        while let Ok((shard, upto)) = rx.try_recv() {
            let w = want.entry(shard).or_default();
            *w = (*w).max(upto);
        }
        last = Instant::now();
        let target = want.values().copied().max().unwrap_or(0);
        let synced = gate.sync(target, || journal.fsync());
        if let Err(e) = &synced {
            log::warn!("store sync failed: {e}");
        }
        let durable = gate.durable();
        let hooks = hooks.lock().unwrap_or_else(|e| e.into_inner());
        for (shard, upto) in want.drain() {
            if let Some(Some(hook)) = hooks.get(usize::from(shard)) {
                match synced {
                    Ok(()) => hook(durable.max(upto), true),
                    Err(_) => hook(upto, false),
                }
            }
        }
    }
}
