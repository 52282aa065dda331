//! The durable store on our workload, fjall (what `DurableStore` uses) against
//! redb doing the same key writes, so the engine choice rests on numbers.
//!
//! `cargo bench --bench store -- --warm-up-time 1 --measurement-time 3` runs the
//! criterion groups; `STORE_BENCH_RESTART=1000000 cargo bench --bench store`
//! runs the one-off restart measurement instead (fill, close, time the reopen);
//! `STORE_BENCH_CONCURRENT=2` appends from 2 shards at once (`STORE_BENCH_N`
//! messages each, default 100,000), the way `durable_acceptance` does.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use pushgate::proto::{Note, Token};
use pushgate::store::durable::open_durable;
use pushgate::store::{Store, StoredMsg};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

const TOKENS: u64 = 10_000;
const SCAN_TOKENS: u64 = 1_000;
const SCAN_BASE: u64 = 1 << 40;
const BATCH: u64 = 64;
const CAP: usize = 100;
const FAR: u32 = u32::MAX;

fn token(i: u64) -> Token {
    let mut t = [0u8; 24];
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    t[..8].copy_from_slice(&h.to_be_bytes());
    // Real tokens are HMAC output: every byte is uniform, which hash maps keyed by token rely on.
    t[8..16].copy_from_slice(&(h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9).to_le_bytes());
    Token(t)
}

fn msg(id: u64, expiry: u32) -> StoredMsg {
    let note = Note {
        kind: 1,
        priority: 10,
        flags: 0,
        expiry,
        collapse: Bytes::new(),
        payload: Bytes::from(vec![b'x'; 200]),
    };
    StoredMsg { msg_id: id, note }
}

/// The token of the `id`th append: consecutive ids spread over every token.
/// Ids past `SCAN_BASE` belong to the 1,000 devices `scan_queue` reads.
fn owner(id: u64) -> Token {
    if id > SCAN_BASE {
        return token(TOKENS + id % SCAN_TOKENS);
    }
    token(id.wrapping_mul(7919) % TOKENS)
}

/// redb given exactly the writes `DurableStore` gives fjall: the message and
/// the shard counters per append, one transaction per sync. The expiry index
/// is in memory for both (it tells the sweep which keys to delete).
struct Redb {
    db: Database,
    durability: std::cell::Cell<Durability>,
}

const MSGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("msgs");
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

fn msg_key(t: &Token, id: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..24].copy_from_slice(&t.0);
    k[24..].copy_from_slice(&id.to_be_bytes());
    k
}

impl Redb {
    fn open(dir: &Path) -> Redb {
        Redb { db: Database::create(dir.join("redb")).unwrap(), durability: Durability::Immediate.into() }
    }

    /// Appends ids `from..to`, one durable transaction per `batch`.
    fn append(&self, from: u64, to: u64, batch: u64) {
        let value = vec![b'x'; 210];
        let mut id = from;
        while id < to {
            let mut txn = self.db.begin_write().unwrap();
            txn.set_durability(self.durability.get()).unwrap();
            {
                let (mut m, mut meta) = (txn.open_table(MSGS).unwrap(), txn.open_table(META).unwrap());
                for id in id..(id + batch).min(to) {
                    m.insert(&msg_key(&owner(id), id)[..], &value[..]).unwrap();
                    meta.insert(&b"S\0\0"[..], &id.to_be_bytes()[..]).unwrap();
                }
            }
            txn.commit().unwrap();
            id += batch;
        }
    }

    fn ack(&self, from: u64, to: u64) {
        let txn = self.db.begin_write().unwrap();
        {
            let (mut m, mut meta) = (txn.open_table(MSGS).unwrap(), txn.open_table(META).unwrap());
            for id in from..to {
                m.remove(&msg_key(&owner(id), id)[..]).unwrap();
                meta.insert(&b"S\0\0"[..], &id.to_be_bytes()[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn scan(&self, t: &Token) -> usize {
        let txn = self.db.begin_read().unwrap();
        let m = txn.open_table(MSGS).unwrap();
        let range = m.range(&msg_key(t, 0)[..]..=&msg_key(t, u64::MAX)[..]).unwrap();
        range.map(|kv| kv.unwrap().1.value().len()).filter(|&n| n > 0).count()
    }

    /// Deletes ids `from..to`, the messages an in-memory expiry index names.
    fn sweep(&self, from: u64, to: u64) -> usize {
        let txn = self.db.begin_write().unwrap();
        let mut n = 0;
        {
            let mut m = txn.open_table(MSGS).unwrap();
            for id in from..to {
                n += usize::from(m.remove(&msg_key(&owner(id), id)[..]).unwrap().is_some());
            }
        }
        txn.commit().unwrap();
        n
    }
}

fn fjall_append(s: &mut dyn Store, from: u64, to: u64, batch: u64, expiry: u32) {
    let mut id = from;
    while id < to {
        for id in id..(id + batch).min(to) {
            s.append(&owner(id), msg(id, expiry)).unwrap();
        }
        s.sync().unwrap();
        id += batch;
    }
}

fn open_fjall(dir: &Path) -> Box<dyn Store> {
    open_durable(&dir.join("fjall"), 1, CAP).unwrap().pop().unwrap()
}

fn append_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_sync");
    g.sample_size(10);
    for batch in [BATCH, 256, 1024] {
        g.throughput(Throughput::Elements(batch));
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_fjall(dir.path());
        let mut id = 0;
        g.bench_function(BenchmarkId::new("fjall", batch), |b| {
            b.iter(|| {
                fjall_append(&mut *s, id + 1, id + 1 + batch, batch, FAR);
                id += batch;
            })
        });
        let r = Redb::open(dir.path());
        let mut id = 0;
        g.bench_function(BenchmarkId::new("redb", batch), |b| {
            b.iter(|| {
                r.append(id + 1, id + 1 + batch, batch);
                id += batch;
            })
        });
    }
}

/// What an append costs apart from the fsync: batches of `BATCH` never synced
/// (redb: committed with `Durability::None`).
fn append_nosync(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_nosync");
    g.sample_size(10).throughput(Throughput::Elements(BATCH));
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_fjall(dir.path());
    let mut id = 0;
    g.bench_function("fjall", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                id += 1;
                s.append(&owner(id), msg(id, FAR)).unwrap();
            }
        })
    });
    let r = Redb::open(dir.path());
    r.durability.set(Durability::None);
    let mut id = 0;
    g.bench_function("redb", |b| {
        b.iter(|| {
            r.append(id + 1, id + 1 + BATCH, BATCH);
            id += BATCH;
        })
    });
}

/// Acks `BATCH` messages then syncs; the messages are appended outside the timing.
fn ack_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack_sync");
    g.sample_size(20).throughput(Throughput::Elements(BATCH));
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_durable(&dir.path().join("fjall"), 1, 1_000_000).unwrap().pop().unwrap();
    let mut next = 1;
    g.bench_function("fjall", |b| {
        b.iter_custom(|iters| {
            let from = next;
            next += iters * BATCH;
            fjall_append(&mut *s, from, next, 1024, FAR);
            let start = Instant::now();
            for id in from..next {
                s.ack(&owner(id), id).unwrap();
                if (id - from + 1) % BATCH == 0 {
                    s.sync().unwrap();
                }
            }
            start.elapsed()
        })
    });
    let r = Redb::open(dir.path());
    let mut next = 1;
    g.bench_function("redb", |b| {
        b.iter_custom(|iters| {
            let from = next;
            next += iters * BATCH;
            r.append(from, next, 1024);
            let start = Instant::now();
            for i in 0..iters {
                r.ack(from + i * BATCH, from + (i + 1) * BATCH);
            }
            start.elapsed()
        })
    });
}

/// Reads one device's full queue (100 messages) among 100,000 stored.
fn scan_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_queue_100");
    g.sample_size(20).throughput(Throughput::Elements(CAP as u64));
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (SCAN_BASE + 1, SCAN_BASE + 1 + SCAN_TOKENS * CAP as u64);
    let mut s = open_fjall(dir.path());
    fjall_append(&mut *s, from, to, 1024, FAR);
    let r = Redb::open(dir.path());
    r.append(from, to, 1024);
    let mut out = Vec::with_capacity(CAP);
    let mut i = 0;
    g.bench_function("fjall", |b| {
        b.iter(|| {
            out.clear();
            i += 1;
            s.pending(&owner(SCAN_BASE + i), 0, 0, CAP, &mut out).unwrap();
            assert_eq!(out.len(), CAP);
        })
    });
    g.bench_function("redb", |b| {
        b.iter(|| {
            i += 1;
            assert_eq!(r.scan(&owner(SCAN_BASE + i)), CAP);
        })
    });
}

/// Deletes 10,000 expired messages from among 10,000 live ones; the clock
/// advances one second per sweep, as the shard's once-a-second sweep sees it.
fn sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("sweep_10k");
    g.sample_size(10).throughput(Throughput::Elements(10_000));
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_durable(&dir.path().join("fjall"), 1, 1_000_000).unwrap().pop().unwrap();
    let r = Redb::open(dir.path());
    let (mut next, mut clock) = (10_001, 10);
    fjall_append(&mut *s, 1, next, 1024, FAR);
    r.append(1, next, 1024);
    g.bench_function("fjall", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                fjall_append(&mut *s, next, next + 10_000, 1024, clock);
                next += 10_000;
                clock += 1;
                let start = Instant::now();
                // A sweep call visits a bounded number of tokens; the shard calls it again.
                let mut swept = 0;
                while swept < 10_000 {
                    let n = s.sweep_expired(clock.into()).unwrap();
                    assert!(n > 0, "{swept} of 10,000 swept");
                    swept += n;
                }
                assert_eq!(swept, 10_000);
                s.sync().unwrap();
                took += start.elapsed();
            }
            took
        })
    });
    g.bench_function("redb", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                r.append(next, next + 10_000, 1024);
                next += 10_000;
                let start = Instant::now();
                assert_eq!(r.sweep(next - 10_000, next), 10_000);
                took += start.elapsed();
            }
            took
        })
    });
}

/// Fills each engine with `n` messages (100 per device), closes it and times the reopen.
fn restart(n: u64) {
    let dir =
        tempfile::tempdir_in(std::env::var("STORE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let engine = std::env::var("STORE_BENCH_ENGINE").unwrap_or_default();
    if engine != "redb" {
        restart_fjall(dir.path(), n);
    }
    if engine != "fjall" {
        restart_redb(dir.path(), n);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn rate(n: u64, d: Duration) -> String {
    format!("{} ({:.0}/s)", secs(d), n as f64 / d.as_secs_f64())
}

fn du(p: &Path) -> String {
    let out = std::process::Command::new("du").arg("-sh").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn restart_fjall(dir: &Path, n: u64) {
    let start = Instant::now();
    let mut s = open_fjall(dir);
    fjall_append(&mut *s, 1, n + 1, 1024, FAR);
    println!("fjall: filled {n} in {}", rate(n, start.elapsed()));
    let start = Instant::now();
    drop(s);
    println!("fjall: closed in {}", secs(start.elapsed()));
    let start = Instant::now();
    let mut s = open_fjall(dir);
    let opened = start.elapsed();
    let mut out = Vec::new();
    s.pending(&owner(n), 0, 0, CAP, &mut out).unwrap();
    assert_eq!((s.len() as u64, s.max_msg_id(), out.len()), (n, n, CAP));
    println!(
        "fjall: reopened in {}, first queue read {} later",
        secs(opened),
        secs(start.elapsed() - opened)
    );
    drop(s);
    let start = Instant::now();
    let shards = open_durable(&dir.join("fjall"), 2, CAP).unwrap();
    assert_eq!(shards.iter().map(|s| s.len() as u64).sum::<u64>(), n);
    println!("fjall: reopened as 2 shards (rebuild) in {}", secs(start.elapsed()));
    drop(shards);
    println!("fjall: {}", du(&dir.join("fjall")));
}

fn restart_redb(dir: &Path, n: u64) {
    let start = Instant::now();
    let r = Redb::open(dir);
    r.append(1, n + 1, 1024);
    drop(r);
    println!("redb: filled {n} in {}", rate(n, start.elapsed()));
    let start = Instant::now();
    let r = Redb::open(dir);
    let opened = start.elapsed();
    assert_eq!(r.scan(&owner(n)), CAP);
    println!("redb: reopened in {}, first queue read {} later", secs(opened), secs(start.elapsed() - opened));
    println!("redb: {}", du(&dir.join("redb")));
}

/// Tokens the acceptance groups spread appends over, with a cap they never reach.
const ACCEPT_TOKENS: u64 = 100_000;

/// What a shard's event loop does with a burst of pushes: `n` appends of
/// 200-byte payloads over many tokens, then one `sync` before the RESULTs go
/// out. `durable_acceptance/2_shards` runs two such loops on two threads.
fn acceptance(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_acceptance");
    g.sample_size(10);
    for n in [256u64, 1024, 4096] {
        g.throughput(Throughput::Elements(n));
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_durable(dir.path(), 1, 1_000_000).unwrap().pop().unwrap();
        let mut id = 0;
        g.bench_function(BenchmarkId::new("1_shard", n), |b| {
            b.iter(|| {
                accept(&mut *s, &mut id, n, 0);
            })
        });
        drop(s);
        g.throughput(Throughput::Elements(2 * n));
        let dir = tempfile::tempdir().unwrap();
        let mut shards = open_durable(dir.path(), 2, 1_000_000).unwrap();
        let mut ids = [0u64; 2];
        g.bench_function(BenchmarkId::new("2_shards", n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for (i, (s, id)) in shards.iter_mut().zip(ids.iter_mut()).enumerate() {
                        scope.spawn(move || {
                            for _ in 0..iters {
                                accept(&mut **s, id, n, i as u64);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
}

/// One loop iteration of shard `shard`: `n` appends, then the sync.
fn accept(s: &mut dyn Store, id: &mut u64, n: u64, shard: u64) {
    for _ in 0..n {
        *id += 1;
        let t = token(shard * ACCEPT_TOKENS + id.wrapping_mul(7919) % ACCEPT_TOKENS);
        s.append(&t, msg(*id, FAR)).unwrap();
    }
    s.sync().unwrap();
}

/// One benchmark group: fills its store, then measures.
type Group = fn(&mut Criterion);

/// Appends `n` messages from each of `threads` shards at once (batches of `batch`,
/// each followed by its shard's sync): what the shared journal costs when shards
/// sync concurrently. Also prints the process's CPU time per append (fjall's
/// flush and compaction threads included), which a loaded machine disturbs less
/// than the rate.
fn concurrent(threads: usize, n: u64, batch: u64) {
    let dir = tempfile::tempdir().unwrap();
    let shards = open_durable(dir.path(), threads, 1_000_000).unwrap();
    let (start, cpu) = (Instant::now(), cpu_time());
    std::thread::scope(|scope| {
        for (i, mut s) in shards.into_iter().enumerate() {
            scope.spawn(move || {
                let mut id = 0;
                for _ in 0..n / batch {
                    accept(&mut *s, &mut id, batch, i as u64);
                }
            });
        }
    });
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu);
    let total = (n / batch * batch) * threads as u64;
    println!(
        "fjall: {threads} shards x {n} in batches of {batch}: {}, {:.1} us CPU per append",
        rate(total, wall),
        cpu.as_secs_f64() * 1e6 / total as f64
    );
}

/// User plus system time of the whole process so far.
fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    if let Ok(t) = std::env::var("STORE_BENCH_CONCURRENT") {
        let threads = t.parse().expect("STORE_BENCH_CONCURRENT is a shard count");
        let n =
            std::env::var("STORE_BENCH_N").map_or(100_000, |n| n.parse().expect("STORE_BENCH_N is a count"));
        for batch in [256, 1024, 4096] {
            concurrent(threads, n, batch);
        }
        return;
    }
    if let Ok(n) = std::env::var("STORE_BENCH_RESTART") {
        restart(n.parse().expect("STORE_BENCH_RESTART is a message count"));
        return;
    }
    // Each group fills its own store first, so skip the groups a name filter leaves out.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    let wanted =
        |group: &str| filter.as_deref().is_none_or(|f| group.contains(f.split('/').next().unwrap_or(f)));
    let mut c = Criterion::default().configure_from_args();
    let groups: [(&str, Group); 6] = [
        ("durable_acceptance", acceptance),
        ("append_sync", append_sync),
        ("append_nosync", append_nosync),
        ("ack_sync", ack_sync),
        ("scan_queue_100", scan_queue),
        ("sweep_10k", sweep),
    ];
    for (name, run) in groups {
        if wanted(name) {
            run(&mut c);
        }
    }
    c.final_summary();
}
