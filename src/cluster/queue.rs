//! The offline queue in JetStream: one stream `<prefix>_Q`, one literal
//! subject `<prefix>.q.<token hex>` per token (a wildcard lookup scans the
//! whole stream on nats-server 2.9), one message per stored notification, its
//! fields in headers and its payload as the body. Reads go to the stream
//! leader (a direct get may be served by a follower that lags).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DeleteMessageErrorKind, RawMessageErrorKind};
use bytes::Bytes;

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::EngineError;
use crate::proto::{Note, Token};
use crate::store::StoredMsg;

/// The longest expiry a notification may have, from the HTTP API's limit (28
/// days) plus a day of clock skew: the stream's `max_age`.
pub const MAX_AGE: Duration = Duration::from_secs(29 * 86_400);

/// The queue stream's name.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}_Q")
}

/// The one subject of `token`'s queue.
pub fn subject(prefix: &str, token: &Token) -> String {
    format!("{prefix}.q.{}", token.to_hex())
}

fn stream_config(prefix: &str, max_per_token: u32, replicas: usize) -> stream::Config {
    stream::Config {
        name: stream_name(prefix),
        subjects: vec![format!("{prefix}.q.*")],
        max_messages_per_subject: i64::from(max_per_token),
        max_messages: -1,
        max_bytes: -1,
        max_age: MAX_AGE,
        // A body is at most MAX_PAYLOAD; headers add well under a KiB.
        max_message_size: 8 * 1024,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // Longer than any operation's deadline (at most 60 s): a retried publish is stored once.
        duplicate_window: Duration::from_secs(120),
        allow_direct: false,
        deny_delete: false,
        deny_purge: false,
        ..Default::default()
    }
}

/// The queue stream, created on first use (an existing one is used as it is).
async fn queue(ctx: &Arc<Ctx>) -> Result<&stream::Stream, EngineError> {
    ctx.queue
        .get_or_try_init(|| async {
            let c = &ctx.cfg;
            let cfg = stream_config(&c.stream_prefix, c.queue_max_per_token, c.replicas);
            Ok(ensure_stream(ctx, cfg).await)
        })
        .await
}

/// Gets or creates a stream, each attempt bounded by a quarter of the
/// deadline: on 2.9 a create racing another node's create of the same stream
/// may go unanswered, and the next attempt finds the stream made.
pub(crate) async fn ensure_stream(ctx: &Arc<Ctx>, cfg: stream::Config) -> stream::Stream {
    let attempt = (ctx.cfg.request_timeout() / 4).max(Duration::from_millis(100));
    retry("stream create", || async {
        match tokio::time::timeout(attempt, ctx.js.get_or_create_stream(cfg.clone())).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("{}: {e}", cfg.name)),
            Err(_) => Err(format!("{}: no answer in {attempt:?}", cfg.name)),
        }
    })
    .await
}

/// Header names of a stored notification's fields.
pub const H_ID: &str = "Pg-Id";
pub const H_KIND: &str = "Pg-Kind";
pub const H_PRIO: &str = "Pg-Prio";
pub const H_FLAGS: &str = "Pg-Flags";
pub const H_EXP: &str = "Pg-Exp";
/// The collapse id in hex (header values are text); absent when empty.
pub const H_COLLAPSE: &str = "Pg-Collapse";
/// JetStream's de-duplication id: who published, which publish.
pub const H_MSG_ID: &str = "Nats-Msg-Id";

/// Why a stored message does not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// A required header is absent.
    Missing(&'static str),
    /// A header does not parse.
    Bad(&'static str),
    /// The fields parse but make no valid notification.
    Invalid,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Missing(h) => write!(f, "header {h} missing"),
            DecodeError::Bad(h) => write!(f, "header {h} malformed"),
            DecodeError::Invalid => f.write_str("not a valid notification"),
        }
    }
}

/// The headers that carry `m`'s fields (the payload is the body).
pub fn encode_headers(m: &StoredMsg) -> Vec<(&'static str, String)> {
    let n = &m.note;
    let mut h = vec![
        (H_ID, m.msg_id.to_string()),
        (H_KIND, n.kind.to_string()),
        (H_PRIO, n.priority.to_string()),
        (H_FLAGS, n.flags.to_string()),
        (H_EXP, n.expiry.to_string()),
    ];
    if !n.collapse.is_empty() {
        h.push((H_COLLAPSE, hex::encode(&n.collapse)));
    }
    h
}

fn field<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<T, DecodeError> {
    let v = get(name).ok_or(DecodeError::Missing(name))?;
    v.parse().map_err(|_| DecodeError::Bad(name))
}

/// A stored message from its headers (`get` looks one up by name) and body.
pub fn decode(get: &dyn Fn(&str) -> Option<String>, payload: Bytes) -> Result<StoredMsg, DecodeError> {
    let collapse = match get(H_COLLAPSE) {
        None => Bytes::new(),
        Some(h) => Bytes::from(hex::decode(h).map_err(|_| DecodeError::Bad(H_COLLAPSE))?),
    };
    let note = Note {
        kind: field(get, H_KIND)?,
        priority: field(get, H_PRIO)?,
        flags: field(get, H_FLAGS)?,
        expiry: field(get, H_EXP)?,
        collapse,
        payload,
    };
    let msg_id: u64 = field(get, H_ID)?;
    if msg_id == 0 || note.expiry == 0 || note.check().is_err() {
        return Err(DecodeError::Invalid);
    }
    Ok(StoredMsg { msg_id, note })
}

/// One message of a token's queue as read back.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FetchedMsg {
    /// Its stream sequence: what a delete names.
    pub seq: u64,
    /// Its `Nats-Msg-Id` (who published it), empty if absent.
    pub origin: String,
    pub msg: StoredMsg,
}

/// A token's queue as read from the stream leader, oldest first.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Fetched {
    pub msgs: Vec<FetchedMsg>,
    /// The highest sequence looked at (a later fetch may start after it).
    pub last_seq: u64,
    /// Messages that did not decode (skipped, left in the stream).
    pub bad: usize,
}

/// Retries `f` with a growing pause until it succeeds; the operation's
/// deadline ends it. Used only for idempotent steps (a publish with its
/// `Nats-Msg-Id`, a read, a delete).
pub(crate) async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(20);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => log::debug!("engine: {what}: {e}; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

impl EngineHandle {
    /// Stores each message at the tail of its token's queue, all in flight
    /// at once; the item's `origin` becomes its `Nats-Msg-Id`, unique per
    /// publish (a retry within the deadline is stored once). Completes with
    /// each message's stream sequence or why it failed, in item order; the
    /// batch as a whole fails only when the engine refuses it.
    pub fn queue_publish(&self, items: Vec<Publish>, done: Done<Vec<Result<u64, EngineError>>>) {
        // Each item ends well before the batch's deadline (a busy runtime
        // fires timers late), so the ones that made it are reported as such.
        let inner = Instant::now() + self.timeout() * 3 / 4;
        self.submit(Op::QueuePublish, done, move |ctx| async move {
            let r = tokio::time::timeout_at(inner.into(), queue(&ctx)).await;
            if !matches!(r, Ok(Ok(_))) {
                let e = r.unwrap_or(Err(EngineError::Timeout)).err().unwrap_or(EngineError::Timeout);
                return Ok(vec![Err(e); items.len()]);
            }
            let all = items.into_iter().map(|it| {
                let ctx = ctx.clone();
                async move {
                    tokio::time::timeout_at(inner.into(), publish_one(&ctx, it))
                        .await
                        .map_err(|_| EngineError::Timeout)
                }
            });
            let out: Vec<_> = futures_util::future::join_all(all).await;
            let stored = out.iter().filter(|r| r.is_ok()).count() as u64;
            ctx.metrics.queue_published.fetch_add(stored, Ordering::Relaxed);
            Ok(out)
        })
    }

    /// Reads `token`'s queue from the stream leader, every message with a
    /// sequence above `after_seq`, in order.
    pub fn queue_fetch(&self, token: Token, after_seq: u64, done: Done<Fetched>) {
        self.submit(Op::QueueFetch, done, move |ctx| async move {
            let q = queue(&ctx).await?;
            let f =
                fetch(q, &subject(&ctx.cfg.stream_prefix, &token), after_seq, ctx.cfg.queue_max_per_token)
                    .await?;
            ctx.metrics.queue_fetched.fetch_add(f.msgs.len() as u64, Ordering::Relaxed);
            Ok(f)
        })
    }

    /// Deletes the message at `seq`; `false` if it was gone already.
    pub fn queue_delete(&self, seq: u64, done: Done<bool>) {
        self.submit(Op::QueueDelete, done, move |ctx| async move {
            let q = queue(&ctx).await?;
            Ok(retry("queue delete", || async {
                match q.delete_message(seq).await {
                    Ok(found) => Ok(found),
                    // The server's "no message found": acked twice, or capped by the stream.
                    Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await)
        })
    }

    /// Deletes `token`'s whole queue; completes with how many went.
    pub fn queue_purge(&self, token: Token, done: Done<u64>) {
        self.submit(Op::QueuePurge, done, move |ctx| async move { purge(&ctx, &token).await })
    }
}

/// One message of a publish batch.
#[derive(Clone, Debug)]
pub struct Publish {
    pub token: Token,
    pub msg: StoredMsg,
    /// Its `Nats-Msg-Id`.
    pub origin: String,
}

async fn publish_one(ctx: &Arc<Ctx>, it: Publish) -> u64 {
    let subject = subject(&ctx.cfg.stream_prefix, &it.token);
    let headers = encode_headers(&it.msg);
    let ack = retry("queue publish", || {
        let mut p = PublishMessage::build().payload(it.msg.note.payload.clone()).message_id(&it.origin);
        for (k, v) in &headers {
            p = p.header(*k, v.as_str());
        }
        let js = ctx.js.clone();
        let subject = subject.clone();
        async move {
            let ack = js.send_publish(subject, p).await.map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        }
    })
    .await;
    ack.sequence
}

pub(crate) async fn purge(ctx: &Arc<Ctx>, token: &Token) -> Result<u64, EngineError> {
    let q = queue(ctx).await?;
    let subject = subject(&ctx.cfg.stream_prefix, token);
    let r = retry("queue purge", || std::future::IntoFuture::into_future(q.purge().filter(subject.clone())))
        .await;
    Ok(r.purged)
}

fn header_getter(h: &async_nats::HeaderMap) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| h.get(name).map(|v| v.as_str().to_string())
}

/// Repeated leader reads of the next message on the literal subject: one
/// round trip per message, and one more that finds none.
async fn fetch(
    q: &stream::Stream,
    subject: &str,
    after_seq: u64,
    max_per_token: u32,
) -> Result<Fetched, EngineError> {
    let mut out = Fetched { last_seq: after_seq, ..Fetched::default() };
    // The stream keeps at most `max_per_token` per subject; a few more may
    // arrive while we read. Past this many the rest waits for the next fetch.
    let limit = max_per_token as usize + 64;
    while out.msgs.len() + out.bad < limit {
        let from = out.last_seq.saturating_add(1);
        let got = retry("queue fetch", || async {
            match q.raw_message_builder().sequence(from).next_by_subject(subject).send().await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        let Some(m) = got else { break };
        if m.sequence < from {
            return Err(EngineError::BadReply);
        }
        out.last_seq = m.sequence;
        let get = header_getter(&m.headers);
        match decode(&get, m.payload.clone()) {
            Ok(msg) => {
                let origin = get(H_MSG_ID).unwrap_or_default();
                out.msgs.push(FetchedMsg { seq: m.sequence, origin, msg });
            }
            Err(e) => {
                log::warn!("engine: queue message {} on {subject}: {e}; skipped", m.sequence);
                out.bad += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(h: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = h.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        move |k| map.get(k).cloned()
    }

    fn msg() -> StoredMsg {
        let note = Note {
            kind: 0,
            priority: 5,
            flags: 1,
            expiry: 1_900_000_000,
            collapse: Bytes::from_static(b"\x00c\xff"),
            payload: Bytes::from_static(b"hello"),
        };
        StoredMsg { msg_id: u64::MAX - 1, note }
    }

    #[test]
    fn a_message_round_trips_through_its_headers() {
        let m = msg();
        let h = encode_headers(&m);
        assert_eq!(decode(&getter(&h), m.note.payload.clone()), Ok(m.clone()));
        let plain = StoredMsg { note: Note { collapse: Bytes::new(), ..m.note.clone() }, ..m };
        let h = encode_headers(&plain);
        assert!(h.iter().all(|(k, _)| *k != H_COLLAPSE), "no collapse header when empty");
        assert_eq!(decode(&getter(&h), plain.note.payload.clone()), Ok(plain));
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let m = msg();
        let good = encode_headers(&m);
        let with = |name: &'static str, v: Option<&str>| {
            let mut h: Vec<_> = good.iter().filter(|(k, _)| *k != name).cloned().collect();
            if let Some(v) = v {
                h.push((name, v.to_string()));
            }
            decode(&getter(&h), m.note.payload.clone())
        };
        assert_eq!(with(H_ID, None), Err(DecodeError::Missing(H_ID)));
        assert_eq!(with(H_ID, Some("-1")), Err(DecodeError::Bad(H_ID)));
        assert_eq!(with(H_ID, Some("0")), Err(DecodeError::Invalid));
        assert_eq!(with(H_KIND, Some("256")), Err(DecodeError::Bad(H_KIND)));
        assert_eq!(with(H_KIND, Some("200")), Err(DecodeError::Invalid), "an undefined kind");
        assert_eq!(with(H_PRIO, Some("7")), Err(DecodeError::Invalid));
        assert_eq!(with(H_FLAGS, Some("")), Err(DecodeError::Bad(H_FLAGS)));
        assert_eq!(with(H_EXP, Some("0")), Err(DecodeError::Invalid), "a stored message expires");
        assert_eq!(with(H_EXP, Some("99999999999")), Err(DecodeError::Bad(H_EXP)));
        assert_eq!(with(H_EXP, None), Err(DecodeError::Missing(H_EXP)));
        assert_eq!(with(H_COLLAPSE, Some("zz")), Err(DecodeError::Bad(H_COLLAPSE)));
        assert_eq!(with(H_COLLAPSE, Some(&"ab".repeat(65))), Err(DecodeError::Invalid));
        let big = Bytes::from(vec![0u8; crate::proto::frame::MAX_PAYLOAD + 1]);
        assert_eq!(decode(&getter(&good), big), Err(DecodeError::Invalid));
    }

    #[test]
    fn names_and_bounds() {
        let t = Token([0xab; 24]);
        assert_eq!(subject("pg", &t), format!("pg.q.{}", "ab".repeat(24)));
        assert_eq!(stream_name("pg"), "pg_Q");
        let c = stream_config("pg", 40, 3);
        assert_eq!((c.subjects[0].as_str(), c.max_messages_per_subject, c.num_replicas), ("pg.q.*", 40, 3));
        assert!(!c.allow_direct, "reads go to the leader");
    }
}
