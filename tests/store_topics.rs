//! The durable store keeps topic positions and topic logs across syncs and
//! restarts, with the memory store's semantics.

use std::path::Path;

use bytes::Bytes;
use pushgate::proto::{Note, Token};
use pushgate::store::durable::open_durable;
use pushgate::store::memory::MemoryStore;
use pushgate::store::{Store, StoredMsg, SubRecord, TopicEntry};

fn msg(id: u64) -> StoredMsg {
    let note = Note {
        kind: 1,
        priority: 10,
        flags: 0,
        expiry: 4_000_000_000,
        collapse: Bytes::new(),
        payload: Bytes::from(format!("topic payload {id}")),
    };
    StoredMsg { msg_id: id, note }
}

fn entry(app: &str, topic: &[u8], id: u64) -> TopicEntry {
    TopicEntry { app_id: app.into(), topic: topic.into(), msg: msg(id) }
}

fn open1(dir: &Path) -> Box<dyn Store> {
    open_durable(dir, 1, 100).unwrap().pop().unwrap()
}

/// `token`'s positions, sorted by topic.
fn subs(s: &mut dyn Store, token: &Token) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    s.subscriptions(token, &mut out).unwrap();
    let mut v: Vec<_> = out.into_iter().map(|SubRecord { topic, pos }| (topic.into_vec(), pos)).collect();
    v.sort();
    v
}

fn log(s: &mut dyn Store) -> Vec<(String, Vec<u8>, u64)> {
    let mut out = Vec::new();
    s.topic_messages(&mut out).unwrap();
    out.into_iter().map(|e| (e.app_id, e.topic.into_vec(), e.msg.msg_id)).collect()
}

fn t(b: u8) -> Token {
    Token([b; 24])
}

fn pairs(v: &[(&[u8], u64)]) -> Vec<(Vec<u8>, u64)> {
    v.iter().map(|(t, p)| (t.to_vec(), *p)).collect()
}

#[test]
fn positions_put_overwrite_remove_before_and_after_sync_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (t(1), t(2));
    let mut s = open1(dir.path());
    let mut mem = MemoryStore::new(100);
    for st in [&mut *s, &mut mem as &mut dyn Store] {
        st.put_subscription(&a, b"news", 3).unwrap();
        st.put_subscription(&a, b"sport", 1).unwrap();
        st.put_subscription(&a, b"news", 7).unwrap();
        st.put_subscription(&a, b"~all", 2).unwrap();
        st.put_subscription(&b, b"news", 9).unwrap();
        st.remove_subscription(&a, b"sport").unwrap();
        st.remove_subscription(&a, b"never").unwrap();
    }
    let want = pairs(&[(b"news", 7), (b"~all", 2)]);
    assert_eq!(subs(&mut mem, &a), want, "the memory store agrees");
    assert_eq!(subs(&mut *s, &a), want, "staged");
    s.sync().unwrap();
    assert_eq!(subs(&mut *s, &a), want, "committed");
    assert_eq!(subs(&mut *s, &b), pairs(&[(b"news", 9)]));

    // Staged writes over committed ones: the staged insert wins, the staged delete hides.
    s.put_subscription(&a, b"news", 8).unwrap();
    s.remove_subscription(&a, b"~all").unwrap();
    s.put_subscription(&a, b"sport", 4).unwrap();
    let want = pairs(&[(b"news", 8), (b"sport", 4)]);
    assert_eq!(subs(&mut *s, &a), want);
    s.sync().unwrap();
    assert_eq!(subs(&mut *s, &a), want);
    drop(s);

    let mut s = open1(dir.path());
    assert_eq!(subs(&mut *s, &a), want, "after a restart");
    assert_eq!(subs(&mut *s, &b), pairs(&[(b"news", 9)]));
    // Removed and put back in one batch: one write, the last one.
    s.remove_subscription(&a, b"news").unwrap();
    s.put_subscription(&a, b"news", 10).unwrap();
    s.put_subscription(&a, b"sport", 5).unwrap();
    s.remove_subscription(&a, b"sport").unwrap();
    s.sync().unwrap();
    drop(s);
    let mut s = open1(dir.path());
    assert_eq!(subs(&mut *s, &a), pairs(&[(b"news", 10)]));
}

#[test]
fn unregister_drops_committed_and_staged_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (t(1), t(2));
    let mut s = open1(dir.path());
    s.put_subscription(&a, b"news", 3).unwrap();
    s.put_subscription(&a, b"sport", 1).unwrap();
    s.put_subscription(&b, b"news", 5).unwrap();
    s.sync().unwrap();
    s.put_subscription(&a, b"news", 4).unwrap();
    s.put_subscription(&a, b"music", 2).unwrap();
    s.unregister(&a, "app", 1).unwrap();
    assert_eq!(subs(&mut *s, &a), vec![], "staged");
    s.sync().unwrap();
    assert_eq!(subs(&mut *s, &a), vec![], "committed");
    drop(s);
    let mut s = open1(dir.path());
    assert_eq!(subs(&mut *s, &a), vec![], "after a restart");
    assert_eq!(subs(&mut *s, &b), pairs(&[(b"news", 5)]), "another device keeps its own");
    // A device that registers again subscribes from scratch.
    s.reregister(&a).unwrap();
    s.put_subscription(&a, b"sport", 6).unwrap();
    s.sync().unwrap();
    drop(s);
    let mut s = open1(dir.path());
    assert_eq!(subs(&mut *s, &a), pairs(&[(b"sport", 6)]));
}

#[test]
fn topic_logs_survive_a_restart_in_id_order_and_apps_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open1(dir.path());
    // Ids above 255 check that the order is numeric, not by the id's first byte.
    for id in [300, 2, 256, 40] {
        s.topic_append(&entry("app1", b"news", id)).unwrap();
    }
    s.topic_append(&entry("app2", b"news", 7)).unwrap();
    s.topic_append(&entry("app1", b"sport", 5)).unwrap();
    s.topic_append(&entry("app1", b"newsx", 1)).unwrap();
    s.sync().unwrap();
    s.topic_remove("app1", b"news", 40).unwrap();
    s.topic_remove("app2", b"news", 2).unwrap(); // app2 has no id 2
    s.topic_append(&entry("app1", b"news", 301)).unwrap();
    let want = vec![
        ("app1".to_string(), b"news".to_vec(), 2),
        ("app1".to_string(), b"news".to_vec(), 256),
        ("app1".to_string(), b"news".to_vec(), 300),
        ("app1".to_string(), b"news".to_vec(), 301),
        ("app1".to_string(), b"newsx".to_vec(), 1),
        ("app1".to_string(), b"sport".to_vec(), 5),
        ("app2".to_string(), b"news".to_vec(), 7),
    ];
    assert_eq!(log(&mut *s), want, "committed merged with staged");
    s.sync().unwrap();
    drop(s);

    let mut s = open1(dir.path());
    assert_eq!(log(&mut *s), want, "after a restart");
    let mut out = Vec::new();
    s.topic_messages(&mut out).unwrap();
    assert_eq!(out[0], entry("app1", b"news", 2), "the message comes back whole");
    assert_eq!(s.len(), 0, "topic messages are not device queues");
}

#[test]
fn a_staged_remove_of_a_staged_append_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open1(dir.path());
    s.topic_append(&entry("app", b"news", 1)).unwrap();
    s.topic_append(&entry("app", b"news", 2)).unwrap();
    s.topic_remove("app", b"news", 1).unwrap();
    assert_eq!(log(&mut *s), vec![("app".to_string(), b"news".to_vec(), 2)]);
    s.sync().unwrap();
    drop(s);
    let mut s = open1(dir.path());
    assert_eq!(log(&mut *s), vec![("app".to_string(), b"news".to_vec(), 2)]);
    // And a committed one stays removed even if it is appended and removed again.
    s.topic_remove("app", b"news", 2).unwrap();
    s.topic_append(&entry("app", b"news", 2)).unwrap();
    s.topic_remove("app", b"news", 2).unwrap();
    s.sync().unwrap();
    drop(s);
    assert_eq!(log(&mut *open1(dir.path())), vec![]);
}

#[test]
fn every_shard_handle_shares_one_topic_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut shards = open_durable(dir.path(), 2, 100).unwrap();
    shards[0].topic_append(&entry("app", b"news", 1)).unwrap();
    shards[1].topic_append(&entry("app", b"news", 2)).unwrap();
    assert_eq!(shards[0].commit().unwrap(), pushgate::store::Ticket::Durable);
    shards[1].sync().unwrap();
    // What one handle committed, the other reads and may delete.
    assert_eq!(log(&mut *shards[1]).len(), 2);
    shards[1].topic_remove("app", b"news", 1).unwrap();
    shards[1].sync().unwrap();
    assert_eq!(log(&mut *shards[0]), vec![("app".to_string(), b"news".to_vec(), 2)]);
    drop(shards);
    let mut s = open1(dir.path());
    assert_eq!(log(&mut *s), vec![("app".to_string(), b"news".to_vec(), 2)]);
}
