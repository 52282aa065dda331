//! Opening the durable store: one handle per shard, and the rebuild of the
//! per-shard parts (expiry index, counters) when the shard count changed.

use std::path::Path;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

use super::codec::{self, ShardMeta};
use super::{map_err, DurableStore, Engine};
use crate::proto::Token;
use crate::store::{Store, StoreError};

/// The journal's size limit; past it fjall flushes memtables so journal files can go.
const JOURNAL_BYTES: u64 = 64 << 20;
/// Writes per batch while rebuilding.
const REBUILD_CHUNK: usize = 4096;

/// Opens (or creates) the store in `dir` for `shards` shards holding at most
/// `cap` messages per device; element `i` is shard `i`'s handle.
///
/// Queues are keyed by token alone, so a store written with another shard
/// count opens too: the expiry index and counters are then rebuilt from the
/// messages (one pass over them) and every shard continues above the highest
/// id any shard had stored.
pub fn open_durable(dir: &Path, shards: usize, cap: usize) -> Result<Vec<Box<dyn Store>>, StoreError> {
    Ok(open_shards(dir, shards, cap)?.into_iter().map(|s| Box::new(s) as Box<dyn Store>).collect())
}

/// `open_durable` with the concrete type.
fn open_shards(dir: &Path, shards: usize, cap: usize) -> Result<Vec<DurableStore>, StoreError> {
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
    // Small memtables for the small keyspaces, so they flush, and free journal files, often.
    let eng = Engine {
        msgs: ks("msgs", 32 << 20)?,
        expiry: ks("expiry", 8 << 20)?,
        meta: ks("meta", 4 << 20)?,
        db: db.clone(),
        path: dir.into(),
        gate: Default::default(),
    };

    let layout = match eng.meta.get(codec::LAYOUT_KEY).map_err(|e| err("reading the layout", e))? {
        Some(v) => Some(codec::decode_layout(&v).ok_or_else(|| eng.corrupt("layout", codec::LAYOUT_KEY))?),
        None => None,
    };
    let counters = if layout == Some(u32::from(n)) { read_counters(&eng, n)? } else { rebuild(&eng, n)? };
    Ok(counters
        .into_iter()
        .enumerate()
        .map(|(i, c)| DurableStore {
            eng: eng.clone(),
            shard: i as u16,
            shards: n,
            cap: cap.max(1),
            counters: c,
            committed: c,
            cache: Default::default(),
            cache_limit: super::EMPTY_CACHED,
            staged: Default::default(),
            staged_ops: 0,
            lost: None,
            receipts: Default::default(),
            last_write: 0,
            swept_below: 0,
        })
        .collect())
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

/// Re-derives the per-shard data for `n` shards from the messages. Safe to
/// interrupt: the layout record is written last, so a crash means doing it again.
fn rebuild(eng: &Engine, n: u16) -> Result<Vec<ShardMeta>, StoreError> {
    let err = |what: &str, e: fjall::Error| eng.err(what, e);
    let mut max_id = 0;
    let mut old_keys = Vec::new();
    for kv in eng.meta.prefix(&codec::shard_key(0)[..1]) {
        let (k, v) = kv.into_inner().map_err(|e| err("reading shard counters", e))?;
        max_id = max_id.max(ShardMeta::decode(&v).ok_or_else(|| eng.corrupt("shard counters", &k))?.max_id);
        old_keys.push(k);
    }
    eng.expiry.clear().map_err(|e| err("clearing the expiry index", e))?;

    let mut lens = vec![0u64; usize::from(n)];
    let mut b = eng.db.batch();
    for kv in eng.msgs.iter() {
        let (k, v) = kv.into_inner().map_err(|e| err("reading messages", e))?;
        let (token, id): (Token, u64) =
            codec::parse_msg_key(&k).ok_or_else(|| eng.corrupt("message key", &k))?;
        let (expiry, _, _) = codec::split_msg(&v).ok_or_else(|| eng.corrupt("message", &k))?;
        let shard = token.shard(usize::from(n));
        b.insert(&eng.expiry, codec::exp_key(shard as u16, expiry, &token, id), []);
        lens[shard] += 1;
        max_id = max_id.max(id);
        if b.len() >= REBUILD_CHUNK {
            std::mem::replace(&mut b, eng.db.batch()).commit().map_err(|e| err("rebuilding", e))?;
        }
    }
    for k in old_keys {
        b.remove(&eng.meta, k);
    }
    let counters: Vec<ShardMeta> = lens.into_iter().map(|len| ShardMeta { max_id, len }).collect();
    for (i, c) in counters.iter().enumerate() {
        b.insert(&eng.meta, codec::shard_key(i as u16), c.encode());
    }
    b.insert(&eng.meta, codec::LAYOUT_KEY, codec::encode_layout(u32::from(n)));
    b.commit().map_err(|e| err("rebuilding", e))?;
    eng.db.persist(PersistMode::SyncAll).map_err(|e| err("syncing the rebuild", e))?;
    Ok(counters)
}
