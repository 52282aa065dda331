//! Opening the durable store: one handle per shard, each with its expiry
//! index rebuilt from the messages, and new counters when the shard count changed.

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

use super::codec::{self, ShardMeta};
use super::expiry::ExpiryIndex;
use super::{map_err, DurableStore, Engine};
use crate::proto::Token;
use crate::store::{Store, StoreError};

/// The journal's size limit; past it fjall flushes memtables so journal files can go.
const JOURNAL_BYTES: u64 = 64 << 20;

/// Opens (or creates) the store in `dir` for `shards` shards holding at most
/// `cap` messages per device; element `i` is shard `i`'s handle.
///
/// Queues are keyed by token alone, so a store written with another shard
/// count opens too: every shard then continues above the highest id any shard
/// had stored. Opening reads every message once, to rebuild the expiry index.
pub fn open_durable(dir: &Path, shards: usize, cap: usize) -> Result<Vec<Box<dyn Store>>, StoreError> {
    Ok(open_shards(dir, shards, cap)?.into_iter().map(|s| Box::new(s) as Box<dyn Store>).collect())
}

/// `open_durable` with the concrete type.
pub(super) fn open_shards(dir: &Path, shards: usize, cap: usize) -> Result<Vec<DurableStore>, StoreError> {
    let n = u16::try_from(shards)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| StoreError::Io(format!("{}: {shards} shards is not in 1..=65535", dir.display())))?;
    if dir.exists() && !dir.is_dir() {
        return Err(StoreError::Io(format!("{}: not a directory", dir.display())));
    }
    let err = |what: &str, e: fjall::Error| map_err(dir, what, e);
    // A restart replays the journal not yet flushed to tables: keep it at fjall's minimum.
    let db = Database::builder(dir)
        .max_journaling_size(JOURNAL_BYTES)
        .open()
        .map_err(|e| err("opening the store", e))?;
    let ks = |name: &str, memtable: u64| {
        db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable))
            .map_err(|e| err("opening a keyspace", e))
    };
    let gate = Arc::new(super::sync::SyncGate::default());
    let journal = Arc::new(super::syncer::Journal::new(db.clone(), dir));
    // A small memtable for `meta`, so it flushes, and frees journal files, often.
    let eng = Engine {
        msgs: ks("msgs", 32 << 20)?,
        meta: ks("meta", 4 << 20)?,
        // Positions are small and rewritten often; topic messages are stored once per topic.
        topics: ks("topics", 8 << 20)?,
        db: db.clone(),
        path: dir.into(),
        gate: gate.clone(),
        journal: journal.clone(),
        syncer: Arc::new(
            super::syncer::Syncer::start(journal, gate, usize::from(n))
                .map_err(|e| StoreError::Io(format!("{}: starting the sync thread: {e}", dir.display())))?,
        ),
    };
    // Stores written before the expiry index moved to memory had it on disk.
    if db.keyspace_exists("expiry") {
        let old = ks("expiry", 8 << 20)?;
        db.delete_keyspace(old).map_err(|e| err("deleting the old expiry index", e))?;
    }

    let layout = match eng.meta.get(codec::LAYOUT_KEY).map_err(|e| err("reading the layout", e))? {
        Some(v) => Some(codec::decode_layout(&v).ok_or_else(|| eng.corrupt("layout", codec::LAYOUT_KEY))?),
        None => None,
    };
    let scan = scan(&eng, n)?;
    let counters = if layout == Some(u32::from(n)) {
        let stored = read_counters(&eng, n)?;
        // The messages decide len; max_id also keeps ids of messages since acked.
        (0..usize::from(n))
            .map(|i| ShardMeta { max_id: stored[i].max_id.max(scan.max_id[i]), len: scan.len[i] })
            .collect()
    } else {
        relayout(&eng, n, &scan)?
    };
    Ok(counters
        .into_iter()
        .zip(scan.expiry)
        .enumerate()
        .map(|(i, (c, expiry))| DurableStore {
            eng: eng.clone(),
            shard: i as u16,
            shards: n,
            cap: cap.max(1),
            counters: c,
            committed: c,
            cache: Default::default(),
            cache_limit: super::EMPTY_CACHED,
            staged: Default::default(),
            topic_log: Default::default(),
            staged_ops: 0,
            lost: None,
            receipts: Default::default(),
            last_write: 0,
            expiry,
            released: 0,
            hooked: false,
        })
        .collect())
}

/// What one pass over the messages tells each shard.
struct Scan {
    len: Vec<u64>,
    max_id: Vec<u64>,
    expiry: Vec<ExpiryIndex>,
}

/// Reads every message once (keys and the expiry in each value) to build each
/// shard's expiry index and count its messages.
fn scan(eng: &Engine, n: u16) -> Result<Scan, StoreError> {
    let n = usize::from(n);
    let mut s = Scan {
        len: vec![0; n],
        max_id: vec![0; n],
        expiry: (0..n).map(|_| ExpiryIndex::default()).collect(),
    };
    for kv in eng.msgs.iter() {
        let (k, v) = kv.into_inner().map_err(|e| eng.err("reading messages", e))?;
        let (token, id): (Token, u64) =
            codec::parse_msg_key(&k).ok_or_else(|| eng.corrupt("message key", &k))?;
        let (expiry, _, _) = codec::split_msg(&v).ok_or_else(|| eng.corrupt("message", &k))?;
        let shard = token.shard(n);
        s.expiry[shard].add(&token, expiry);
        s.len[shard] += 1;
        s.max_id[shard] = s.max_id[shard].max(id);
    }
    Ok(s)
}

fn read_counters(eng: &Engine, n: u16) -> Result<Vec<ShardMeta>, StoreError> {
    (0..n)
        .map(|i| {
            let key = codec::shard_key(i);
            match eng.meta.get(key).map_err(|e| eng.err("reading shard counters", e))? {
                Some(v) => ShardMeta::decode(&v).ok_or_else(|| eng.corrupt("shard counters", &key)),
                None => Ok(ShardMeta::default()),
            }
        })
        .collect()
}

/// Replaces the counters of another shard count with ones for `n` shards:
/// every shard continues above the highest id any old shard had stored. The
/// layout record is written in the same batch, so a crash means doing it again.
fn relayout(eng: &Engine, n: u16, scan: &Scan) -> Result<Vec<ShardMeta>, StoreError> {
    let err = |what: &str, e: fjall::Error| eng.err(what, e);
    let mut max_id = scan.max_id.iter().copied().max().unwrap_or(0);
    let mut b = eng.db.batch();
    for kv in eng.meta.prefix(&codec::shard_key(0)[..1]) {
        let (k, v) = kv.into_inner().map_err(|e| err("reading shard counters", e))?;
        max_id = max_id.max(ShardMeta::decode(&v).ok_or_else(|| eng.corrupt("shard counters", &k))?.max_id);
        b.remove(&eng.meta, k);
    }
    let counters: Vec<ShardMeta> = scan.len.iter().map(|&len| ShardMeta { max_id, len }).collect();
    for (i, c) in counters.iter().enumerate() {
        b.insert(&eng.meta, codec::shard_key(i as u16), c.encode());
    }
    b.insert(&eng.meta, codec::LAYOUT_KEY, codec::encode_layout(u32::from(n)));
    b.commit().map_err(|e| err("writing the shard layout", e))?;
    eng.db.persist(PersistMode::SyncAll).map_err(|e| err("syncing the shard layout", e))?;
    Ok(counters)
}
