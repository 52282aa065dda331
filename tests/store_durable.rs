//! The durable store keeps the in-memory store's semantics across restarts,
//! crashes and shard-count changes, and reports damage instead of panicking.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use pushgate::proto::{Note, Token};
use pushgate::store::durable::open_durable;
use pushgate::store::memory::MemoryStore;
use pushgate::store::{Receipt, Store, StoreError, StoredMsg, Tombstone};

const CRASH_ENV: &str = "PUSHGATE_STORE_CRASH_CHILD";

fn msg(id: u64, expiry: u32, collapse: &[u8]) -> StoredMsg {
    let note = Note {
        kind: 1,
        priority: 10,
        flags: 0,
        expiry,
        collapse: Bytes::copy_from_slice(collapse),
        payload: Bytes::from(format!("payload of {id}")),
    };
    StoredMsg { msg_id: id, note }
}

fn token(i: u64) -> Token {
    let mut t = [0u8; 24];
    t[..8].copy_from_slice(&i.to_be_bytes());
    t[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    Token(t)
}

fn open1(dir: &Path, cap: usize) -> Box<dyn Store> {
    open_durable(dir, 1, cap).unwrap().pop().unwrap()
}

fn pending_all(s: &mut dyn Store, t: &Token, now: u64) -> Vec<StoredMsg> {
    let mut out = Vec::new();
    s.pending(t, 0, now, usize::MAX, &mut out).unwrap();
    out
}

fn ids(s: &mut dyn Store, t: &Token, now: u64) -> Vec<u64> {
    pending_all(s, t, now).iter().map(|m| m.msg_id).collect()
}

#[test]
fn reopen_keeps_order_collapse_cap_missed_and_max_id() {
    let dir = tempfile::tempdir().unwrap();
    let t = token(1);
    let mut s = open1(dir.path(), 3);
    for id in 1..=3 {
        s.append(&t, msg(id, 100, b"")).unwrap();
    }
    assert!(s.ack(&t, 2).unwrap());
    s.append(&t, msg(4, 100, b"c")).unwrap();
    s.append(&t, msg(5, 100, b"c")).unwrap();
    s.append(&t, msg(6, 60, b"")).unwrap();
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path(), 3);
    assert_eq!(ids(&mut *s, &t, 50), vec![3, 5, 6]);
    assert_eq!(pending_all(&mut *s, &t, 50)[1], msg(5, 100, b"c"));
    assert_eq!(s.max_msg_id(), 6);
    assert_eq!(s.len(), 3);
    assert!(!s.ack(&t, 2).unwrap(), "an acked message stays acked");
    // Collapse still finds the message written before the restart.
    s.append(&t, msg(7, 100, b"c")).unwrap();
    assert_eq!(ids(&mut *s, &t, 50), vec![3, 6, 7]);
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path(), 3);
    assert_eq!(s.take_missed(&t).unwrap(), 1, "the missed count is durable");
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path(), 3);
    assert_eq!(s.take_missed(&t).unwrap(), 0, "taking the missed count is durable");
    assert_eq!(s.sweep_expired(61).unwrap(), 1);
    assert_eq!(ids(&mut *s, &t, 0), vec![3, 7]);
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path(), 3);
    assert_eq!(ids(&mut *s, &t, 0), vec![3, 7]);
    assert_eq!(s.len(), 2);
    assert_eq!(s.max_msg_id(), 7);
    let mut after = Vec::new();
    s.pending(&t, 3, 0, 10, &mut after).unwrap();
    assert_eq!(after, vec![msg(7, 100, b"c")]);
}

#[test]
fn pending_skips_expired_and_honours_max() {
    let dir = tempfile::tempdir().unwrap();
    let (t, other) = (token(1), token(2));
    let mut s = open1(dir.path(), 100);
    for id in 1..=6 {
        s.append(&t, msg(id, if id % 2 == 0 { 10 } else { 100 }, b"")).unwrap();
    }
    s.append(&other, msg(7, 100, b"")).unwrap();
    let mut out = Vec::new();
    s.pending(&t, 1, 50, 2, &mut out).unwrap();
    assert_eq!(out.iter().map(|m| m.msg_id).collect::<Vec<_>>(), vec![3, 5]);
    assert_eq!(ids(&mut *s, &t, 0), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(ids(&mut *s, &other, 0), vec![7]);
}

/// A small deterministic generator, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn behaves_like_the_memory_store_across_restarts() {
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut mem = MemoryStore::new(4);
        let mut dur = open1(dir.path(), 4);
        let tokens: Vec<Token> = (0..5).map(token).collect();
        let mut next_id = 1;
        for step in 0..600 {
            let t = tokens[rng.next(5) as usize];
            let ctx = format!("seed {seed} step {step}");
            match rng.next(11) {
                9 => {
                    mem.unregister(&t, "app", step).unwrap();
                    dur.unregister(&t, "app", step).unwrap();
                    let (mut a, mut b) = (mem.tombstones().unwrap(), dur.tombstones().unwrap());
                    a.sort_by_key(|x| x.token);
                    b.sort_by_key(|x| x.token);
                    assert_eq!(a, b, "{ctx}");
                }
                0..=3 => {
                    let collapse: &[u8] = [&b""[..], b"a", b"b"][rng.next(3) as usize];
                    let m = msg(next_id, 10 + rng.next(90) as u32, collapse);
                    next_id += 1;
                    mem.append(&t, m.clone()).unwrap();
                    dur.append(&t, m).unwrap();
                }
                4 => {
                    let id = rng.next(next_id + 1);
                    assert_eq!(mem.ack(&t, id).unwrap(), dur.ack(&t, id).unwrap(), "{ctx}");
                }
                5 => assert_eq!(mem.take_missed(&t).unwrap(), dur.take_missed(&t).unwrap(), "{ctx}"),
                6 => {
                    let now = rng.next(40);
                    assert_eq!(mem.sweep_expired(now).unwrap(), dur.sweep_expired(now).unwrap(), "{ctx}");
                }
                7 => {
                    dur.sync().unwrap();
                    drop(dur);
                    dur = open1(dir.path(), 4);
                }
                _ => {
                    let (after, now, max) = (rng.next(next_id), rng.next(100), 1 + rng.next(5) as usize);
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    mem.pending(&t, after, now, max, &mut a).unwrap();
                    dur.pending(&t, after, now, max, &mut b).unwrap();
                    assert_eq!(a, b, "{ctx}");
                }
            }
            assert_eq!(mem.len(), dur.len(), "{ctx}");
            assert_eq!(mem.max_msg_id(), dur.max_msg_id(), "{ctx}");
        }
    }
}

#[test]
fn a_new_shard_count_finds_every_queue() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<Token> = (0..40).map(token).collect();
    let mut shards = open_durable(dir.path(), 2, 100).unwrap();
    let mut next = [0u64, 1_000_000];
    for (i, t) in tokens.iter().enumerate() {
        let s = t.shard(2);
        for _ in 0..3 {
            next[s] += 1;
            shards[s].append(t, msg(next[s], 10 + i as u32, b"")).unwrap();
        }
    }
    shards.iter_mut().for_each(|s| s.sync().unwrap());
    drop(shards);

    let mut shards = open_durable(dir.path(), 3, 100).unwrap();
    assert_eq!(shards.iter().map(|s| s.len()).sum::<usize>(), 120);
    assert!(shards.iter().all(|s| s.max_msg_id() == next[1]), "ids keep growing on every shard");
    for t in &tokens {
        assert_eq!(ids(&mut *shards[t.shard(3)], t, 0).len(), 3, "{t:?}");
    }
    // The expiry index was rebuilt for the new owners: each shard sweeps its own tokens.
    let swept: usize = shards.iter_mut().map(|s| s.sweep_expired(30).unwrap()).sum();
    assert_eq!(swept, 20 * 3);
    assert_eq!(shards.iter().map(|s| s.len()).sum::<usize>(), 60);
    shards.iter_mut().for_each(|s| s.sync().unwrap());
    drop(shards);

    let shards = open_durable(dir.path(), 1, 100).unwrap();
    assert_eq!(shards[0].len(), 60);
}

/// Two tokens owned by each of two shards.
fn crash_tokens() -> [[Token; 2]; 2] {
    let mut by_shard = [Vec::new(), Vec::new()];
    for k in 0.. {
        let t = token(k);
        if by_shard[t.shard(2)].len() < 2 {
            by_shard[t.shard(2)].push(t);
        }
        if by_shard.iter().all(|v| v.len() == 2) {
            break;
        }
    }
    by_shard.map(|v| [v[0], v[1]])
}

/// Runs only as the child of `synced_messages_survive_sigkill`: two shards on
/// two threads append to their tokens, syncing every 64, and report the last
/// id of each synced batch.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else { return };
    let shards = open_durable(Path::new(&dir), 2, 1_000_000).unwrap();
    let tokens = crash_tokens();
    std::thread::scope(|scope| {
        for (i, mut s) in shards.into_iter().enumerate() {
            let mine = tokens[i];
            scope.spawn(move || {
                let mut id = s.max_msg_id();
                loop {
                    for _ in 0..64 {
                        id += 1;
                        s.append(&mine[(id % 2) as usize], msg(id, u32::MAX, b"")).unwrap();
                    }
                    s.sync().unwrap();
                    println!("synced {i} {id}");
                }
            });
        }
    });
}

#[test]
fn synced_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut synced = [0u64; 2];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("synced ") else { continue };
        let (shard, id) = rest.split_once(' ').unwrap();
        synced[shard.parse::<usize>().unwrap()] = id.parse().unwrap();
        if synced.iter().all(|&n| n >= 10_000) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream: the child never stops appending.
    child.wait().unwrap();
    assert!(synced.iter().all(|&n| n >= 10_000), "the child stopped early");

    let mut shards = open_durable(dir.path(), 2, 1_000_000).unwrap();
    let tokens = crash_tokens();
    for (i, s) in shards.iter_mut().enumerate() {
        assert!(s.max_msg_id() >= synced[i]);
        assert!(s.len() as u64 >= synced[i]);
        for (k, t) in tokens[i].iter().enumerate() {
            let got = ids(&mut **s, t, 0);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "shard {i} token {k} out of order");
            let want: Vec<u64> = (1..=synced[i]).filter(|id| id % 2 == k as u64).collect();
            assert_eq!(&got[..want.len()], &want[..], "shard {i} token {k} lost synced messages");
        }
        // The restarted writer continues above everything recovered.
        let next = s.max_msg_id() + 1;
        s.append(&tokens[i][0], msg(next, u32::MAX, b"")).unwrap();
        assert_eq!(ids(&mut **s, &tokens[i][0], 0).last(), Some(&next));
    }
}

#[test]
fn staged_writes_are_visible_before_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (t, other) = (token(1), token(2));
    let mut s = open1(dir.path(), 4);
    s.append(&t, msg(1, 100, b"")).unwrap();
    s.append(&t, msg(2, 100, b"c")).unwrap();
    s.sync().unwrap();
    // Staged: a new message, a collapse of a committed one, an ack of a committed one.
    s.append(&t, msg(3, 100, b"")).unwrap();
    s.append(&t, msg(4, 100, b"c")).unwrap();
    assert!(s.ack(&t, 1).unwrap());
    s.append(&other, msg(5, 100, b"")).unwrap();
    assert_eq!(ids(&mut *s, &t, 0), vec![3, 4]);
    assert_eq!(pending_all(&mut *s, &t, 0)[1], msg(4, 100, b"c"));
    let mut one = Vec::new();
    s.pending(&t, 3, 0, 1, &mut one).unwrap();
    assert_eq!(one.iter().map(|m| m.msg_id).collect::<Vec<_>>(), vec![4]);
    assert_eq!((s.len(), s.max_msg_id()), (3, 5));
    // A staged message can be acked and collapsed before it is ever committed.
    assert!(s.ack(&t, 3).unwrap());
    assert!(!s.ack(&t, 3).unwrap());
    s.append(&t, msg(6, 100, b"c")).unwrap();
    assert_eq!(ids(&mut *s, &t, 0), vec![6]);
    // The queue emptied and left the cache; a reload must not see the staged deletions' victims.
    assert!(s.ack(&t, 6).unwrap());
    assert_eq!(ids(&mut *s, &t, 0), Vec::<u64>::new());
    s.append(&t, msg(7, 100, b"")).unwrap();
    assert_eq!(ids(&mut *s, &t, 0), vec![7]);
    assert_eq!(s.len(), 2);
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path(), 4);
    assert_eq!(ids(&mut *s, &t, 0), vec![7]);
    assert_eq!(ids(&mut *s, &other, 0), vec![5]);
    assert_eq!((s.len(), s.max_msg_id()), (2, 7));
}

const STAGED_ENV: &str = "PUSHGATE_STORE_STAGED_CHILD";
const STAGED_SYNCED: u64 = 2_000;

/// Runs only as the child of `a_crash_before_sync_keeps_what_the_last_sync_covered`:
/// syncs 2,000 messages, then stages appends and acks it never syncs.
#[test]
fn staged_crash_child() {
    let Some(dir) = std::env::var_os(STAGED_ENV) else { return };
    let mut s = open1(Path::new(&dir), 1_000_000);
    for id in 1..=STAGED_SYNCED {
        s.append(&token(id % 10), msg(id, u32::MAX, b"")).unwrap();
    }
    s.sync().unwrap();
    println!("synced");
    for id in STAGED_SYNCED + 1..=STAGED_SYNCED + 500 {
        s.append(&token(id % 10), msg(id, u32::MAX, b"")).unwrap();
        assert!(s.ack(&token((id - STAGED_SYNCED) % 10), id - STAGED_SYNCED).unwrap());
    }
    println!("staged");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_crash_before_sync_keeps_what_the_last_sync_covered() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "staged_crash_child", "--nocapture", "--test-threads=1"])
        .env(STAGED_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // libtest prints "test staged_crash_child ... " with no newline before the child's first line.
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .take_while(|l| !l.ends_with("staged"))
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lines.iter().any(|l| l.ends_with("synced")), "the child never synced: {lines:?}");

    let mut s = open1(dir.path(), 1_000_000);
    let mut found = Vec::new();
    for k in 0..10 {
        found.extend(ids(&mut *s, &token(k), 0));
    }
    found.sort_unstable();
    // The unsynced acks may or may not have landed; every synced message they did not touch must have.
    for id in 501..=STAGED_SYNCED {
        assert!(found.binary_search(&id).is_ok(), "synced message {id} lost");
    }
    assert_eq!(s.len(), found.len(), "the counters match the messages");
    assert!(s.max_msg_id() >= STAGED_SYNCED);
}

fn assert_names(e: StoreError, path: &Path) {
    let text = match &e {
        StoreError::Corrupt(t) | StoreError::Io(t) => t,
        StoreError::Full => panic!("unexpected {e:?}"),
    };
    assert!(text.contains(&path.display().to_string()), "{e:?} does not name {}", path.display());
}

#[test]
fn a_data_dir_that_is_a_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = open_durable(&file, 1, 100).err().unwrap();
    assert!(matches!(e, StoreError::Io(_)), "{e:?}");
    assert_names(e, &file);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_malformed_record_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let t = token(9);
    let mut s = open1(dir.path(), 100);
    s.append(&t, msg(1, 100, b"")).unwrap();
    s.sync().unwrap();
    drop(s);
    {
        // Damage the record behind the store's back, the way a bad disk would.
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let msgs = db.keyspace("msgs", fjall::KeyspaceCreateOptions::default).unwrap();
        let mut key = t.0.to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        msgs.insert(key, b"\x01\x02".to_vec()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    // Opening reads every message (to rebuild the expiry index), so it finds the damage.
    let e = open_durable(dir.path(), 1, 100).err().expect("a malformed message must stop the open");
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert_names(e, dir.path());
}

#[test]
fn garbage_files_are_an_error_naming_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open1(dir.path(), 100);
    for id in 1..=100 {
        s.append(&token(id), msg(id, 100, b"")).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    let mut damaged = Vec::new();
    for entry in walk(dir.path()) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5; len.max(64)]).unwrap();
        damaged.push(entry);
    }
    assert!(!damaged.is_empty());
    let e = open_durable(dir.path(), 1, 100).err().expect("opening garbage must fail");
    assert_names(e, dir.path());
    for f in &damaged {
        assert!(std::fs::read(f).unwrap().iter().all(|&b| b == 0xA5), "{} was rewritten", f.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else if p.file_name().is_some_and(|n| n != "lock") {
            files.push(p);
        }
    }
    files
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_durable(dir.path(), 1, 100).unwrap();
    let e = open_durable(dir.path(), 1, 100).err().expect("two writers on one directory");
    assert!(matches!(e, StoreError::Io(_)), "{e:?}");
    assert_names(e, dir.path());
    drop(first);
    assert!(open_durable(dir.path(), 1, 100).is_ok());
}

#[test]
fn tombstones_are_durable_and_belong_to_the_owning_shard() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<Token> = (0..6).map(token).collect();
    let mut shards = open_durable(dir.path(), 2, 2).unwrap();
    for (i, t) in tokens.iter().enumerate() {
        let s = &mut shards[t.shard(2)];
        for id in 0..3 {
            s.append(t, msg(10 * i as u64 + id + 1, 100, b"")).unwrap();
        }
        s.unregister(t, &format!("app{i}"), 1000 + i as u64).unwrap();
        assert!(ids(&mut **s, t, 0).is_empty());
        s.sync().unwrap();
    }
    assert_eq!(shards.iter().map(|s| s.len()).sum::<usize>(), 0);
    drop(shards);

    let mut shards = open_durable(dir.path(), 3, 2).unwrap();
    let mut all = Vec::new();
    for (i, s) in shards.iter_mut().enumerate() {
        let mine = s.tombstones().unwrap();
        assert!(mine.iter().all(|x| x.token.shard(3) == i), "shard {i} got another shard's tombstone");
        all.extend(mine);
    }
    all.sort_by_key(|x| x.at_ms);
    let want: Vec<Tombstone> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| Tombstone { token: *t, app_id: format!("app{i}"), at_ms: 1000 + i as u64 })
        .collect();
    assert_eq!(all, want);
    // The cap's missed count went with the queue.
    assert_eq!(shards[tokens[0].shard(3)].take_missed(&tokens[0]).unwrap(), 0);
    shards[tokens[0].shard(3)].reregister(&tokens[0]).unwrap();
    shards.iter_mut().for_each(|s| s.sync().unwrap());
    drop(shards);

    let mut shards = open_durable(dir.path(), 3, 2).unwrap();
    let left: usize = shards.iter_mut().map(|s| s.tombstones().unwrap().len()).sum();
    assert_eq!(left, 5, "reregister is durable");
}

#[test]
fn receipts_are_capped_taken_in_order_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let r = |id: u64| Receipt { token: token(id), msg_id: id, acked_at_ms: 100 + id };
    let mut s = open1(dir.path(), 100);
    for id in 0..5 {
        s.save_receipt("app", r(id), 3).unwrap();
    }
    s.save_receipt("other", r(9), 3).unwrap();
    let mut out = Vec::new();
    s.take_receipts("app", 1, &mut out).unwrap();
    assert_eq!(out, vec![r(2)]);
    s.sync().unwrap();
    drop(s);

    // After a restart, and from any shard: receipts are keyed by app.
    let mut shards = open_durable(dir.path(), 2, 100).unwrap();
    let mut out = Vec::new();
    shards[1].save_receipt("app", r(5), 3).unwrap();
    shards[1].take_receipts("app", 10, &mut out).unwrap();
    assert_eq!(out, vec![r(3), r(4), r(5)]);
    shards[1].take_receipts("app", 10, &mut out).unwrap();
    assert_eq!(out.len(), 3, "taken receipts are gone");
    shards[1].save_receipt("app", r(6), 3).unwrap();
    shards.iter_mut().for_each(|s| s.sync().unwrap());
    drop(shards);

    let mut s = open1(dir.path(), 100);
    let mut out = Vec::new();
    s.take_receipts("app", 10, &mut out).unwrap();
    s.take_receipts("other", 10, &mut out).unwrap();
    assert_eq!(out, vec![r(6), r(9)]);
}

#[test]
fn a_sweep_visits_a_bounded_number_of_devices_and_the_next_call_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open1(dir.path(), 100);
    for i in 0..3000 {
        s.append(&token(i), msg(i + 1, 10, b"")).unwrap();
    }
    s.append(&token(0), msg(5000, 100, b"")).unwrap();
    s.sync().unwrap();
    drop(s);
    // Reopened, so the index comes from the scan of the messages.
    let mut s = open1(dir.path(), 100);
    assert_eq!(s.sweep_expired(10).unwrap(), 0, "expiry 10 is still valid at 10");
    let first = s.sweep_expired(11).unwrap();
    assert!(first > 0 && first < 3000, "one call swept {first}");
    let mut total = first;
    loop {
        let n = s.sweep_expired(11).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 3000);
    assert_eq!(s.len(), 1);
    s.sync().unwrap();
    drop(s);
    let mut s = open1(dir.path(), 100);
    assert_eq!(s.len(), 1);
    assert_eq!(ids(&mut *s, &token(0), 0), vec![5000]);
}

#[test]
fn the_expiry_index_an_older_version_kept_on_disk_is_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let old = db.keyspace("expiry", fjall::KeyspaceCreateOptions::default).unwrap();
        old.insert(b"\x00\x00stale", b"").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let mut s = open1(dir.path(), 100);
    s.append(&token(1), msg(1, 100, b"")).unwrap();
    s.sync().unwrap();
    drop(s);
    let db = fjall::Database::builder(dir.path()).open().unwrap();
    assert!(!db.keyspace_exists("expiry"));
}
