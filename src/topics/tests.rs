use bytes::Bytes;

use super::*;

fn limits(cap: usize, bytes: usize, per_app: usize) -> LimitsConfig {
    LimitsConfig {
        topic_log_cap: cap,
        topic_log_bytes: bytes,
        topics_per_app: per_app,
        ..LimitsConfig::default()
    }
}

fn msg(id: u64, expiry: u32, collapse: &'static [u8]) -> TopicMsg {
    let note = Note {
        expiry,
        priority: 10,
        collapse: Bytes::from_static(collapse),
        payload: Bytes::from(format!("m{id}")),
        ..Note::default()
    };
    TopicMsg { id, note }
}

fn ids(log: &TopicLog, k: &TopicKey, after: u64) -> Vec<u64> {
    let mut out = Vec::new();
    log.read_after(k, after, 0, usize::MAX, &mut out);
    out.iter().map(|m| m.id).collect()
}

#[test]
fn a_log_keeps_the_newest_cap_collapses_and_expires() {
    let log = TopicLog::new(&limits(3, 1 << 20, 10), Default::default());
    let k = TopicKey::new(0, b"news");
    let mut removed = Vec::new();
    for id in 1..=4 {
        log.append(&k, msg(id, 100, b""), &mut removed).expect("room");
    }
    assert_eq!(ids(&log, &k, 0), [2, 3, 4], "the cap dropped the oldest");
    assert_eq!(removed, [(k.clone(), 1)]);
    log.append(&k, msg(5, 100, b"score"), &mut removed).expect("room");
    log.append(&k, msg(6, 50, b"score"), &mut removed).expect("room");
    assert_eq!(ids(&log, &k, 0), [3, 4, 6], "6 replaced 5; the cap then dropped 2");
    assert_eq!(ids(&log, &k, 3), [4, 6]);
    let b = log.backlog(&k, 0, 0, 2);
    assert_eq!(b, Backlog { count: 3, skip_to: 3 }, "a cap of 2 skips 3");
    assert_eq!(log.backlog(&k, 4, 0, 2), Backlog { count: 1, skip_to: 4 });
    let mut out = Vec::new();
    assert!(log.read_after(&k, 0, 60, 10, &mut out));
    assert_eq!(out.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 4], "6 expired at 50");
    removed.clear();
    log.sweep(60, |_| true, &mut removed);
    assert_eq!(removed, [(k.clone(), 6)]);
    log.sweep(101, |k| k.app == 0, &mut removed);
    assert!(!log.has_log(&k));
    assert_eq!(log.size(), (0, 0));
}

#[test]
fn apps_are_apart_and_bounded() {
    let log = TopicLog::new(&limits(10, 1 << 20, 2), Default::default());
    let mut removed = Vec::new();
    log.append(&TopicKey::new(0, b"a"), msg(1, 9, b""), &mut removed).expect("first");
    log.append(&TopicKey::new(0, b"b"), msg(2, 9, b""), &mut removed).expect("second");
    let third = log.append(&TopicKey::new(0, b"c"), msg(3, 9, b""), &mut removed);
    assert_eq!(third, Err(AppendError::TopicLimit));
    log.append(&TopicKey::new(1, b"a"), msg(4, 9, b""), &mut removed).expect("another app");
    assert_eq!(ids(&log, &TopicKey::new(0, b"a"), 0), [1]);
    assert_eq!(ids(&log, &TopicKey::new(1, b"a"), 0), [4], "same name, other app: another topic");
}

#[test]
fn the_byte_bound_drops_the_oldest_of_any_topic() {
    // Each payload is "m<id>": 2 bytes for one-digit ids.
    let log = TopicLog::new(&limits(10, 5, 10), Default::default());
    let (a, b) = (TopicKey::new(0, b"a"), TopicKey::new(0, b"b"));
    let mut removed = Vec::new();
    log.append(&a, msg(1, 9, b""), &mut removed).expect("room");
    log.append(&b, msg(2, 9, b""), &mut removed).expect("room");
    log.append(&b, msg(3, 9, b""), &mut removed).expect("room");
    assert_eq!(removed, [(a.clone(), 1)]);
    assert!(!log.has_log(&a));
    assert_eq!(log.size(), (2, 4));
}

#[test]
fn ids_have_the_topic_bit_and_grow() {
    let log = TopicLog::new(&LimitsConfig::default(), Default::default());
    let a = log.next_id(1000);
    let b = log.next_id(1000);
    let c = log.next_id(999);
    assert!(crate::proto::topic::is_topic_id(a) && a < b && b < c);
    assert_eq!(a & !TOPIC_ID_BIT, (1000 << 16) + 1);
}
