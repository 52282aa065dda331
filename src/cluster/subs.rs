//! Device subscriptions cluster-wide: one key per token (hex) in the KV
//! bucket `<prefix>_subs`, its value the device's whole list of
//! [`SubRecord`]s. Changes are read-modify-write by the key's revision,
//! retried on conflict, so writers on several nodes never lose each other's
//! changes; on one node the changes of a token are applied in rounds, one at
//! a time, each round taking every change that queued meanwhile. A core NATS
//! notice on `<prefix>.sc` tells every node of a change at once.
//!
//! Value encoding (version 1): one byte `1`, then per record the topic's
//! length (1 to [`MAX_TOPIC`], one byte), the topic, and the position as an
//! unsigned LEB128 varint (1 to 10 bytes). An empty list is no value (the
//! key is deleted). At most [`MAX_SUBS`] records: under 310 KB, within the
//! bucket's [`MAX_VALUE`].

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::queue;
use super::EngineError;
use crate::proto::topic::MAX_TOPIC;
use crate::proto::Token;
use crate::store::SubRecord;

/// Most records one device's value holds: `limits.topics_per_device` (2,000
/// by default) plus the broadcast position, with room to spare. The shard
/// enforces the real cap; an update past this one is refused.
pub const MAX_SUBS: usize = 4096;
/// The bucket's largest value: [`MAX_SUBS`] records of the longest topic and position.
pub const MAX_VALUE: usize = 1 + MAX_SUBS * (1 + MAX_TOPIC + 10);
const VERSION: u8 = 1;
/// Conflicting writes (another node's) an update retries before it gives up.
const MAX_CONFLICTS: u32 = 32;

/// The subscription bucket's name.
pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}_subs")
}

/// The subject of subscription change notices.
pub fn change_subject(prefix: &str) -> String {
    format!("{prefix}.sc")
}

/// One change to a device's list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SubOp {
    /// Inserts the topic, or sets its position if present.
    Put { topic: Box<[u8]>, pos: u64 },
    /// Inserts the topic if absent; a present one keeps its position (a
    /// provider's add of a device that subscribed meanwhile elsewhere).
    Insert { topic: Box<[u8]>, pos: u64 },
    /// Sets the position only if the topic is present and `pos` is larger.
    Advance { topic: Box<[u8]>, pos: u64 },
    /// Deletes the topic, if present.
    Remove { topic: Box<[u8]> },
    /// Deletes every topic (UNREGISTER).
    Clear,
}

/// Applies `ops` in order. Applying the same ops twice in a row gives what
/// applying them once does, so a write retried after a lost answer is safe.
pub fn apply(list: &mut Vec<SubRecord>, ops: &[SubOp]) {
    for op in ops {
        match op {
            SubOp::Put { topic, pos } => match list.iter_mut().find(|r| r.topic == *topic) {
                Some(r) => r.pos = *pos,
                None => list.push(SubRecord { topic: topic.clone(), pos: *pos }),
            },
            SubOp::Insert { topic, pos } => {
                if !list.iter().any(|r| r.topic == *topic) {
                    list.push(SubRecord { topic: topic.clone(), pos: *pos });
                }
            }
            SubOp::Advance { topic, pos } => {
                if let Some(r) = list.iter_mut().find(|r| r.topic == *topic) {
                    r.pos = r.pos.max(*pos);
                }
            }
            SubOp::Remove { topic } => list.retain(|r| r.topic != *topic),
            SubOp::Clear => list.clear(),
        }
    }
}

/// Why a list cannot be stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EncodeError {
    /// More than [`MAX_SUBS`] records.
    TooMany,
    /// A topic that is empty or longer than [`MAX_TOPIC`].
    BadTopic,
}

/// A list's value (see the module doc).
pub fn encode(list: &[SubRecord]) -> Result<Bytes, EncodeError> {
    if list.len() > MAX_SUBS {
        return Err(EncodeError::TooMany);
    }
    let mut b = BytesMut::with_capacity(1 + list.iter().map(|r| r.topic.len() + 4).sum::<usize>());
    b.put_u8(VERSION);
    for r in list {
        if r.topic.is_empty() || r.topic.len() > MAX_TOPIC {
            return Err(EncodeError::BadTopic);
        }
        b.put_u8(r.topic.len() as u8);
        b.put_slice(&r.topic);
        let mut v = r.pos;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                b.put_u8(byte);
                break;
            }
            b.put_u8(byte | 0x80);
        }
    }
    Ok(b.freeze())
}

/// The list in a value; `None` if it is not one [`encode`] makes.
pub fn decode(mut b: &[u8]) -> Option<Vec<SubRecord>> {
    if b.split_first()?.0 != &VERSION {
        return None;
    }
    b = &b[1..];
    let mut out = Vec::new();
    while let Some((&len, rest)) = b.split_first() {
        let len = usize::from(len);
        if len == 0 || len > MAX_TOPIC || rest.len() < len || out.len() == MAX_SUBS {
            return None;
        }
        let (topic, mut rest) = rest.split_at(len);
        let mut pos = 0u64;
        let mut shift = 0;
        loop {
            let (&byte, r) = rest.split_first()?;
            rest = r;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may carry only the top bit of a u64.
            if shift == 63 && bits > 1 {
                return None;
            }
            pos |= bits << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        out.push(SubRecord { topic: topic.into(), pos });
        b = rest;
    }
    Some(out)
}

/// A subscription change notice: token, topic, subscribed or not, position.
pub fn encode_change(token: &Token, topic: &[u8], add: bool, pos: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(24 + 1 + 8 + topic.len());
    b.put_slice(&token.0);
    b.put_u8(u8::from(add));
    b.put_u64(pos);
    b.put_slice(topic);
    b.freeze()
}

pub fn decode_change(b: &[u8]) -> Option<(Token, Box<[u8]>, bool, u64)> {
    if b.len() < 24 + 1 + 8 + 1 || b.len() > 24 + 1 + 8 + MAX_TOPIC {
        return None;
    }
    let mut t = [0u8; 24];
    t.copy_from_slice(&b[..24]);
    let add = match b[24] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[25..33]);
    Some((Token(t), b[33..].into(), add, u64::from_be_bytes(n)))
}

/// What a change notice handler gets: token, topic, subscribed or not,
/// position. Runs on the engine thread: it must not block.
pub type SubChangeHandler = Arc<dyn Fn(Token, Box<[u8]>, bool, u64) + Send + Sync>;

/// One caller's changes waiting for its token's next round, and where the
/// list that round made goes.
pub(crate) type Waiter = (Vec<SubOp>, oneshot::Sender<Result<Vec<SubRecord>, EngineError>>);

fn bucket_stream(name: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    let mut cfg = super::routes::bucket_stream(name, replicas);
    // The key (`$KV.<bucket>.<48 hex>`) and headers fit in the slack.
    cfg.max_message_size = (MAX_VALUE + 1024) as i32;
    cfg
}

async fn bucket(ctx: &Arc<Ctx>) -> Result<&kv::Store, EngineError> {
    ctx.subs
        .get_or_try_init(|| async {
            let name = bucket_name(&ctx.cfg.stream_prefix);
            queue::ensure_stream(ctx, bucket_stream(&name, ctx.cfg.replicas)).await;
            ctx.js.get_key_value(name.as_str()).await.map_err(|e| {
                log::warn!("engine: subscription bucket {name}: {e}");
                EngineError::Unavailable
            })
        })
        .await
}

impl EngineHandle {
    /// `token`'s subscriptions as stored (read from the bucket stream's leader).
    pub fn subs_get(&self, token: Token, done: Done<Vec<SubRecord>>) {
        self.submit(Op::SubsGet, done, move |ctx| async move { in_round(&ctx, token, Vec::new()).await })
    }

    /// Applies `ops` to `token`'s stored list by revision (retried when
    /// another writer came first) and completes with the resulting list.
    /// Past the deadline (`Timeout`) the ops may still be applied.
    pub fn subs_update(&self, token: Token, ops: Vec<SubOp>, done: Done<Vec<SubRecord>>) {
        self.submit(Op::SubsUpdate, done, move |ctx| async move { in_round(&ctx, token, ops).await })
    }

    /// Tells every node (this one included) that `token` subscribed to
    /// `topic` at `pos` (`add`) or unsubscribed. At most once: a node that is
    /// disconnected then misses it.
    pub fn announce_sub_change(&self, token: Token, topic: &[u8], add: bool, pos: u64, done: Done<()>) {
        if topic.is_empty() || topic.len() > MAX_TOPIC {
            return done(Err(EngineError::Busy));
        }
        let body = encode_change(&token, topic, add, pos);
        self.submit(Op::SubChange, done, move |ctx| async move {
            let subject = change_subject(&ctx.cfg.stream_prefix);
            ctx.client.publish(subject, body).await.map_err(|_| EngineError::Unavailable)
        })
    }

    /// Calls `handler` for every change notice of any node, from now on,
    /// until the engine stops (the subscription outlives reconnects).
    pub fn serve_sub_changes(&self, handler: SubChangeHandler) {
        self.spawn(move |ctx| async move {
            let subject = change_subject(&ctx.cfg.stream_prefix);
            loop {
                match ctx.client.subscribe(subject.clone()).await {
                    Ok(mut sub) => {
                        while let Some(m) = sub.next().await {
                            match decode_change(&m.payload) {
                                Some((t, topic, add, pos)) => handler(t, topic, add, pos),
                                None => log::warn!("engine: a subscription notice that does not decode"),
                            }
                        }
                    }
                    Err(e) => log::warn!("engine: cannot take subscription notices: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

/// Queues `ops` for `token`'s next round (starting the rounds if none run)
/// and waits for the list that round leaves.
async fn in_round(ctx: &Arc<Ctx>, token: Token, ops: Vec<SubOp>) -> Result<Vec<SubRecord>, EngineError> {
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut rounds = ctx.subs_rounds.lock().unwrap_or_else(|p| p.into_inner());
        match rounds.entry(token) {
            Entry::Occupied(mut e) => {
                e.get_mut().push((ops, tx));
                false
            }
            Entry::Vacant(e) => {
                e.insert(vec![(ops, tx)]);
                true
            }
        }
    };
    if start {
        // Not part of this caller's future: a caller past its deadline must
        // not cancel the round of the others.
        tokio::spawn(rounds(ctx.clone(), token));
    }
    rx.await.unwrap_or(Err(EngineError::Stopped))
}

/// Runs `token`'s rounds until none is waiting; the entry in `subs_rounds`
/// is there exactly while this runs.
async fn rounds(ctx: Arc<Ctx>, token: Token) {
    loop {
        let batch = {
            let mut rounds = ctx.subs_rounds.lock().unwrap_or_else(|p| p.into_inner());
            let batch = rounds.get_mut(&token).map(std::mem::take).unwrap_or_default();
            if batch.is_empty() {
                rounds.remove(&token);
                return;
            }
            batch
        };
        let ops: Vec<SubOp> = batch.iter().flat_map(|w| w.0.iter().cloned()).collect();
        let r = tokio::time::timeout(ctx.cfg.request_timeout(), update(&ctx, &token, &ops))
            .await
            .unwrap_or(Err(EngineError::Timeout));
        for (_, tx) in batch {
            let _ = tx.send(r.clone());
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    log::debug!("engine: subscriptions: {e}");
    EngineError::Unavailable
}

/// A short pause after a conflict, random so that racing nodes fall apart.
async fn jitter(conflicts: u32) {
    let mut r = [0u8; 1];
    let _ = getrandom::getrandom(&mut r);
    let ms = 1 + u64::from(r[0]) % (4 * u64::from(conflicts.min(8)) + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// One read-modify-write of `token`'s value; with no ops (or ops that
/// change nothing) only the read. Transient errors are retried until the
/// round's deadline, conflicts at most [`MAX_CONFLICTS`] times.
async fn update(ctx: &Arc<Ctx>, token: &Token, ops: &[SubOp]) -> Result<Vec<SubRecord>, EngineError> {
    let kv = bucket(ctx).await?;
    let key = token.to_hex();
    let mut conflicts = 0;
    let mut pause = Duration::from_millis(20);
    loop {
        let entry = match kv.entry(key.as_str()).await {
            Ok(e) => e,
            Err(e) => {
                log::debug!("engine: subscriptions of {key}: {e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        // `stale`: a value to replace even if the ops change nothing.
        let (current, revision, stale) = match entry {
            None => (Vec::new(), 0, false),
            Some(e) if e.operation == Operation::Put => match decode(&e.value) {
                Some(list) => (list, e.revision, false),
                // Unreadable: only a change that starts from nothing may replace it.
                None if matches!(ops.first(), Some(SubOp::Clear)) => (Vec::new(), e.revision, true),
                None => {
                    log::warn!("engine: subscriptions of {key}: a value that does not decode");
                    return Err(EngineError::BadReply);
                }
            },
            Some(e) => (Vec::new(), e.revision, false),
        };
        let mut next = current.clone();
        apply(&mut next, ops);
        if next == current && !stale {
            return Ok(next);
        }
        let r = if next.is_empty() {
            kv.delete_expect_revision(key.as_str(), Some(revision)).await
        } else {
            let value = encode(&next).map_err(|e| {
                log::warn!("engine: subscriptions of {key}: {e:?}; update refused");
                EngineError::Unavailable
            })?;
            kv.update(key.as_str(), value, revision).await.map(|_| ())
        };
        match r {
            Ok(()) => return Ok(next),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    log::warn!("engine: subscriptions of {key}: {conflicts} conflicting writes; giving up");
                    return Err(EngineError::Unavailable);
                }
                jitter(conflicts).await;
            }
            Err(e) => {
                // The write may have landed: the ops are idempotent, the next read tells.
                let _ = unavailable(&e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: &str, pos: u64) -> SubRecord {
        SubRecord { topic: t.as_bytes().into(), pos }
    }

    fn put(t: &str, pos: u64) -> SubOp {
        SubOp::Put { topic: t.as_bytes().into(), pos }
    }

    fn adv(t: &str, pos: u64) -> SubOp {
        SubOp::Advance { topic: t.as_bytes().into(), pos }
    }

    #[test]
    fn lists_round_trip_through_their_value() {
        let list = vec![rec("news", 0), rec("~all", 127), rec("a", 128), rec(&"x".repeat(64), u64::MAX)];
        let v = encode(&list).unwrap();
        assert_eq!(decode(&v), Some(list));
        assert_eq!(encode(&[]).unwrap().as_ref(), &[VERSION], "an empty list is the version alone");
        assert_eq!(decode(&[VERSION]), Some(Vec::new()));
        // 2 + 1 + 1 (pos 0) bytes for "ab" at 0: compact.
        assert_eq!(encode(&[rec("ab", 0)]).unwrap().len(), 1 + 1 + 2 + 1);
        let full: Vec<SubRecord> = (0..MAX_SUBS).map(|i| rec(&format!("{i:0>64}"), u64::MAX)).collect();
        let v = encode(&full).unwrap();
        assert!(v.len() <= MAX_VALUE, "{} bytes", v.len());
        assert_eq!(decode(&v).map(|l| l.len()), Some(MAX_SUBS));
        let more: Vec<SubRecord> = (0..=MAX_SUBS).map(|i| rec(&format!("t{i}"), 1)).collect();
        assert_eq!(encode(&more), Err(EncodeError::TooMany));
        assert_eq!(encode(&[rec("", 1)]), Err(EncodeError::BadTopic));
        assert_eq!(encode(&[rec(&"x".repeat(65), 1)]), Err(EncodeError::BadTopic));
    }

    #[test]
    fn bad_values_do_not_decode() {
        let good = encode(&[rec("news", 300)]).unwrap();
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[2]), None, "unknown version");
        for n in 2..good.len() {
            assert_eq!(decode(&good[..n]), None, "cut at {n}");
        }
        assert_eq!(decode(&[VERSION, 0]), None, "empty topic");
        assert_eq!(decode(&[VERSION, 65]), None, "topic too long");
        let mut long = vec![VERSION, 1, b'a'];
        long.extend([0xff; 9]);
        long.push(0x02);
        assert_eq!(decode(&long), None, "a position past u64");
        let mut max = vec![VERSION, 1, b'a'];
        max.extend([0xff; 9]);
        max.push(0x01);
        assert_eq!(decode(&max), Some(vec![rec("a", u64::MAX)]));
    }

    #[test]
    fn ops_apply_in_order_and_twice_is_once() {
        let mut l = vec![rec("a", 5)];
        let ops =
            vec![put("b", 1), adv("a", 3), adv("b", 9), adv("c", 4), SubOp::Remove { topic: (*b"x").into() }];
        apply(&mut l, &ops);
        assert_eq!(l, vec![rec("a", 5), rec("b", 9)], "advance never lowers, never inserts");
        let once = l.clone();
        apply(&mut l, &ops);
        assert_eq!(l, once);
        apply(&mut l, &[put("a", 2)]);
        assert_eq!(l[0], rec("a", 2), "put sets");
        apply(&mut l, &[SubOp::Remove { topic: (*b"a").into() }]);
        assert_eq!(l, vec![rec("b", 9)]);
        apply(&mut l, &[SubOp::Clear, put("z", 1)]);
        assert_eq!(l, vec![rec("z", 1)]);
        let ins = |t: &str, pos| SubOp::Insert { topic: t.as_bytes().into(), pos };
        apply(&mut l, &[ins("z", 9), ins("y", 2)]);
        assert_eq!(l, vec![rec("z", 1), rec("y", 2)], "insert keeps a present position");
    }

    #[test]
    fn change_notices_round_trip() {
        let t = Token([7; 24]);
        let b = encode_change(&t, b"news", true, u64::MAX);
        assert_eq!(decode_change(&b), Some((t, (*b"news").into(), true, u64::MAX)));
        assert_eq!(decode_change(&b[..33]), None, "no topic");
        let mut bad = b.to_vec();
        bad[24] = 2;
        assert_eq!(decode_change(&bad), None);
        assert_eq!(decode_change(&encode_change(&t, &[b'x'; 65], false, 1)), None);
        assert_eq!((bucket_name("pg"), change_subject("pg")), ("pg_subs".to_string(), "pg.sc".to_string()));
    }
}
