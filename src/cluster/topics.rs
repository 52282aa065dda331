//! Topic messages across nodes. One stream `<prefix>_T` stores every logged
//! topic message once, on subject `<prefix>.t.<app id hex>.<topic hex>`
//! (the newest `topic_log_cap` per topic); its stream sequence is the
//! message's id. Every node replays the stream at start and then follows it
//! (the topic feed), so each node's topic log holds the same messages in the
//! same order. Expiry-0 messages are never stored: they go to every node
//! over core NATS on `<prefix>.tn.<app hex>.<topic hex>`. Delivery counts
//! travel as deltas on `<prefix>.tc`, core NATS, at most once (approximate).
//!
//! A message body is the note, compact: kind, priority, flags (one byte
//! each), expiry (u32, big-endian), the collapse id's length (one byte) and
//! bytes, then the payload. An announced one starts with its id (u64).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use log::{info, warn};
use tokio::sync::oneshot;

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::queue::{ensure_stream, retry, MAX_AGE};
use super::EngineError;
use crate::proto::frame::{is_valid_app_id, MAX_COLLAPSE};
use crate::proto::topic::MAX_TOPIC;
use crate::proto::Note;

/// One topic message as the feed hands it over.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TopicEvent {
    pub app_id: String,
    pub topic: Box<[u8]>,
    /// The stream sequence for a logged message; the publisher's id for an announced one.
    pub id: u64,
    pub note: Note,
    /// Stored in the topic stream (else announced, expiry 0).
    pub logged: bool,
}

/// What the feed calls for every message, on the engine thread: it must not block.
pub type TopicHandler = Arc<dyn Fn(TopicEvent) + Send + Sync>;

/// One message's delivery count deltas on a node: `(id, sent, acked)`.
pub type Count = (u64, u64, u64);

/// What a count handler gets: the sending node's id and its deltas.
pub type CountsHandler = Arc<dyn Fn(String, Vec<Count>) + Send + Sync>;

/// Most `(id, sent, acked)` deltas in one count message; more go in several.
pub const MAX_COUNTS: usize = 1024;
const NOTE_HEAD: usize = 1 + 1 + 1 + 4 + 1;
/// The topic feed's longest pull (its heartbeat is half of it).
const FEED_PULL: Duration = Duration::from_secs(5);

/// The topic stream's name.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}_T")
}

fn hex_subject(prefix: &str, kind: &str, app_id: &str, topic: &[u8]) -> String {
    format!("{prefix}.{kind}.{}.{}", hex::encode(app_id), hex::encode(topic))
}

/// The subject a logged message of `topic` (of app `app_id`) is stored on.
pub fn subject(prefix: &str, app_id: &str, topic: &[u8]) -> String {
    hex_subject(prefix, "t", app_id, topic)
}

/// The subject an expiry-0 message of `topic` goes out on.
pub fn announce_subject(prefix: &str, app_id: &str, topic: &[u8]) -> String {
    hex_subject(prefix, "tn", app_id, topic)
}

/// The subject of delivery counts.
pub fn counts_subject(prefix: &str) -> String {
    format!("{prefix}.tc")
}

/// App id and topic of a `<prefix>.<kind>.<app hex>.<topic hex>` subject.
pub fn parse_subject(prefix: &str, kind: &str, subject: &str) -> Option<(String, Box<[u8]>)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?.strip_prefix(kind)?.strip_prefix('.')?;
    let (app, topic) = rest.split_once('.')?;
    let app = String::from_utf8(hex::decode(app).ok()?).ok()?;
    let topic = hex::decode(topic).ok()?;
    let ok = is_valid_app_id(&app) && !topic.is_empty() && topic.len() <= MAX_TOPIC;
    ok.then(|| (app, topic.into()))
}

fn stream_config(prefix: &str, log_cap: usize, log_bytes: usize, replicas: usize) -> stream::Config {
    stream::Config {
        name: stream_name(prefix),
        subjects: vec![format!("{prefix}.t.>")],
        max_messages_per_subject: i64::try_from(log_cap.max(1)).unwrap_or(i64::MAX),
        max_messages: -1,
        max_bytes: i64::try_from(log_bytes).unwrap_or(i64::MAX),
        max_age: MAX_AGE,
        // A note's body plus the subject and the `Nats-Msg-Id` header.
        max_message_size: 8 * 1024,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // Longer than any operation's deadline: a retried publish is stored once.
        duplicate_window: Duration::from_secs(120),
        allow_direct: false,
        ..Default::default()
    }
}

/// A note's body (see the module doc).
pub fn encode_note(note: &Note, out: &mut BytesMut) {
    out.reserve(NOTE_HEAD + note.collapse.len() + note.payload.len());
    out.put_u8(note.kind);
    out.put_u8(note.priority);
    out.put_u8(note.flags);
    out.put_u32(note.expiry);
    out.put_u8(note.collapse.len().min(255) as u8);
    out.put_slice(&note.collapse[..note.collapse.len().min(255)]);
    out.put_slice(&note.payload);
}

/// The note in a body; `None` if it does not decode or is not a valid note.
pub fn decode_note(b: &Bytes) -> Option<Note> {
    if b.len() < NOTE_HEAD {
        return None;
    }
    let clen = usize::from(b[7]);
    if clen > MAX_COLLAPSE || b.len() < NOTE_HEAD + clen {
        return None;
    }
    let note = Note {
        kind: b[0],
        priority: b[1],
        flags: b[2],
        expiry: u32::from_be_bytes([b[3], b[4], b[5], b[6]]),
        collapse: b.slice(NOTE_HEAD..NOTE_HEAD + clen),
        payload: b.slice(NOTE_HEAD + clen..),
    };
    note.check().is_ok().then_some(note)
}

/// An announced message's body: its id, then the note.
pub fn encode_announce(id: u64, note: &Note) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + NOTE_HEAD + note.collapse.len() + note.payload.len());
    b.put_u64(id);
    encode_note(note, &mut b);
    b.freeze()
}

pub fn decode_announce(b: &Bytes) -> Option<(u64, Note)> {
    if b.len() < 8 {
        return None;
    }
    let id = u64::from_be_bytes(b[..8].try_into().ok()?);
    Some((id, decode_note(&b.slice(8..))?))
}

/// A count message: the node id's length (one byte) and bytes, then
/// `(id, sent, acked)` as three big-endian u64 each.
pub fn encode_counts(node: &str, counts: &[Count]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + node.len() + counts.len() * 24);
    b.put_u8(node.len() as u8);
    b.put_slice(node.as_bytes());
    for &(id, sent, acked) in counts {
        b.put_u64(id);
        b.put_u64(sent);
        b.put_u64(acked);
    }
    b.freeze()
}

pub fn decode_counts(b: &[u8]) -> Option<(String, Vec<Count>)> {
    let (&n, rest) = b.split_first()?;
    let n = usize::from(n);
    if rest.len() < n || !(rest.len() - n).is_multiple_of(24) || (rest.len() - n) / 24 > MAX_COUNTS {
        return None;
    }
    let node = std::str::from_utf8(&rest[..n]).ok()?.to_string();
    let u = |c: &[u8]| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]));
    let counts = rest[n..].chunks_exact(24).map(|c| (u(&c[..8]), u(&c[8..16]), u(&c[16..]))).collect();
    Some((node, counts))
}

/// A `Nats-Msg-Id` no other publish (of any node or run) uses.
fn publish_id(node: &str) -> String {
    static NONCE: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nonce = NONCE.get_or_init(|| {
        let mut b = [0u8; 8];
        if getrandom::getrandom(&mut b).is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b = (t.as_nanos() as u64).to_be_bytes();
        }
        hex::encode(b)
    });
    format!("t.{node}.{nonce}.{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn valid_target(app_id: &str, topic: &[u8]) -> bool {
    is_valid_app_id(app_id) && !topic.is_empty() && topic.len() <= MAX_TOPIC
}

impl EngineHandle {
    /// Stores `note` (its expiry is not 0) in `topic`'s log and completes
    /// with its stream sequence once a majority of the stream's servers has
    /// it. A publish retried within the deadline is stored once.
    pub fn topic_publish(&self, app_id: &str, topic: &[u8], note: &Note, done: Done<u64>) {
        if note.expiry == 0 || !valid_target(app_id, topic) || note.check().is_err() {
            // Refused before anything was sent: an expiry-0 message is announced, not stored.
            return done(Err(EngineError::Busy));
        }
        let mut body = BytesMut::new();
        encode_note(note, &mut body);
        let body = body.freeze();
        let (app, topic) = (app_id.to_string(), topic.to_vec());
        let msg_id = publish_id(self.node_id());
        self.submit(Op::TopicPublish, done, move |ctx| async move {
            let subject = subject(&ctx.cfg.stream_prefix, &app, &topic);
            let ack = retry("topic publish", || {
                let p = PublishMessage::build().payload(body.clone()).message_id(&msg_id);
                let (js, subject) = (ctx.js.clone(), subject.clone());
                async move {
                    let ack = js.send_publish(subject, p).await.map_err(|e| e.to_string())?;
                    ack.await.map_err(|e| e.to_string())
                }
            })
            .await;
            Ok(ack.sequence)
        })
    }

    /// Sends an expiry-0 topic message to every node's feed (this one's
    /// included) with the caller's `id`; not stored, at most once.
    pub fn topic_announce(&self, app_id: &str, topic: &[u8], id: u64, note: &Note, done: Done<()>) {
        if !valid_target(app_id, topic) || note.check().is_err() {
            return done(Err(EngineError::Busy));
        }
        let body = encode_announce(id, note);
        let (app, topic) = (app_id.to_string(), topic.to_vec());
        self.submit(Op::TopicAnnounce, done, move |ctx| async move {
            let subject = announce_subject(&ctx.cfg.stream_prefix, &app, &topic);
            ctx.client.publish(subject, body).await.map_err(|_| EngineError::Unavailable)
        })
    }

    /// Starts this node's topic feed (once per node, at start): makes the
    /// topic stream if needed (`log_cap` messages per topic, `log_bytes` in
    /// all: fixed when the stream is first made), then hands `handler`
    /// every stored message from the stream's start, in stream order, then
    /// every new one, and every announced one, until the engine stops. It
    /// follows the stream across reconnects and server restarts, each
    /// message once. `caught_up` completes with the stream's last sequence
    /// as it was when the feed started, once the replay reached it (at once
    /// for an empty stream). It has no deadline of its own (a day): the
    /// caller decides how long a replay may take.
    pub fn topic_feed(&self, log_cap: usize, log_bytes: usize, handler: TopicHandler, caught_up: Done<u64>) {
        let (tx, rx) = oneshot::channel();
        let on_announce = handler.clone();
        self.spawn(move |ctx| async move { announcements(ctx, on_announce).await });
        self.spawn(move |ctx| async move { feed(ctx, log_cap, log_bytes, handler, tx).await });
        let wait = Duration::from_secs(86_400);
        self.submit_within(Op::TopicFeed, wait, caught_up, move |_| async move {
            rx.await.map_err(|_| EngineError::Stopped)
        });
    }

    /// Sends this node's delivery count deltas `(id, sent, acked)` to the
    /// other nodes, in messages of at most [`MAX_COUNTS`]; at most once.
    pub fn topic_counts_publish(&self, counts: Vec<Count>, done: Done<()>) {
        self.submit(Op::TopicCounts, done, move |ctx| async move {
            let subject = counts_subject(&ctx.cfg.stream_prefix);
            for part in counts.chunks(MAX_COUNTS) {
                let body = encode_counts(&ctx.cfg.node_id, part);
                ctx.client.publish(subject.clone(), body).await.map_err(|_| EngineError::Unavailable)?;
            }
            Ok(())
        })
    }

    /// Calls `handler` with every other node's count deltas from now on.
    pub fn serve_topic_counts(&self, handler: CountsHandler) {
        self.spawn(move |ctx| async move {
            let subject = counts_subject(&ctx.cfg.stream_prefix);
            follow_core(&ctx, &subject, |m| match decode_counts(&m.payload) {
                Some((node, _)) if node == ctx.cfg.node_id => {}
                Some((node, counts)) => handler(node, counts),
                None => warn!("engine: topic counts that do not decode"),
            })
            .await
        })
    }
}

/// Calls `on` for every core message on `subject` until the engine stops;
/// the client re-subscribes after a reconnect, a failed subscribe is retried.
async fn follow_core(ctx: &Arc<Ctx>, subject: &str, on: impl Fn(async_nats::Message)) {
    loop {
        match ctx.client.subscribe(subject.to_string()).await {
            Ok(mut sub) => {
                while let Some(m) = sub.next().await {
                    on(m);
                }
            }
            Err(e) => warn!("engine: cannot subscribe to {subject}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn announcements(ctx: Arc<Ctx>, handler: TopicHandler) {
    let prefix = ctx.cfg.stream_prefix.clone();
    let subject = format!("{prefix}.tn.>");
    follow_core(&ctx, &subject, |m| {
        let target = parse_subject(&prefix, "tn", m.subject.as_str());
        match (target, decode_announce(&m.payload)) {
            (Some((app_id, topic)), Some((id, note))) => {
                handler(TopicEvent { app_id, topic, id, note, logged: false })
            }
            _ => warn!("engine: an announced topic message on {} that does not decode", m.subject),
        }
    })
    .await
}

/// Where the feed is: the last stream sequence handed over, and the
/// replay's goal while `caught_up` has not fired.
struct Cursor {
    last: u64,
    target: u64,
    caught_up: Option<oneshot::Sender<u64>>,
}

impl Cursor {
    fn reached(&mut self, done: bool) {
        if done || self.last >= self.target {
            if let Some(tx) = self.caught_up.take() {
                let _ = tx.send(self.target);
            }
        }
    }
}

async fn feed(
    ctx: Arc<Ctx>,
    log_cap: usize,
    log_bytes: usize,
    handler: TopicHandler,
    tx: oneshot::Sender<u64>,
) {
    let c = &ctx.cfg;
    let cfg = stream_config(&c.stream_prefix, log_cap, log_bytes, c.replicas);
    let stream = ctx.topics.get_or_init(|| ensure_stream(&ctx, cfg)).await;
    let info = retry("topic stream info", || stream.get_info()).await;
    if info.config.max_messages_per_subject != i64::try_from(log_cap).unwrap_or(i64::MAX) {
        warn!(
            "engine: topic stream keeps {} messages per topic, not limits.topic_log_cap {log_cap} (fixed when made)",
            info.config.max_messages_per_subject
        );
    }
    let target = if info.state.messages == 0 { 0 } else { info.state.last_sequence };
    // An empty stream is followed from its next sequence (what it held is gone).
    let last = if target == 0 { info.state.last_sequence } else { 0 };
    let mut cur = Cursor { last, target, caught_up: Some(tx) };
    cur.reached(target == 0);
    let mut serial = 0u64;
    loop {
        serial += 1;
        let e = follow(&ctx, stream, serial, &handler, &mut cur).await;
        // Not skipped: the next consumer starts right after the last message handed over.
        warn!("engine: topic feed: {e}; following again from sequence {}", cur.last + 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the stream with one ordered consumer from `cur.last + 1` until it
/// fails (the consumer itself is re-made by the client after a gap in its
/// sequence or missed heartbeats, from its last stream sequence).
async fn follow(
    ctx: &Arc<Ctx>,
    stream: &stream::Stream,
    serial: u64,
    handler: &TopicHandler,
    cur: &mut Cursor,
) -> String {
    let prefix = &ctx.cfg.stream_prefix;
    let config = pull::OrderedConfig {
        name: Some(format!("{prefix}_tfeed_{}_{serial}_{}", ctx.cfg.node_id, &publish_id("")[3..19])),
        filter_subject: format!("{prefix}.t.>"),
        deliver_policy: match cur.last {
            0 => DeliverPolicy::All,
            last => DeliverPolicy::ByStartSequence { start_sequence: last + 1 },
        },
        // Pulls of 5 s with heartbeats every 2.5 s: a consumer lost with its
        // server is re-made within seconds (the default 30 s pulls take half a minute).
        max_expires: FEED_PULL,
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config).await {
        Ok(c) => c,
        Err(e) => return format!("cannot make its consumer: {e}"),
    };
    // Nothing left to replay (what was there expired meanwhile).
    cur.reached(consumer.cached_info().num_pending == 0);
    // The client re-makes the consumer under another name after a gap or missed heartbeats.
    let mut consumer_name = consumer.cached_info().name.clone();
    let mut msgs = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return format!("cannot read: {e}"),
    };
    if serial > 1 {
        info!("engine: topic feed follows the stream again from sequence {}", cur.last + 1);
    }
    while let Some(m) = msgs.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => return format!("read failed: {e}"),
        };
        let (seq, pending) = match m.info() {
            Ok(i) => {
                if i.consumer != consumer_name {
                    info!(
                        "engine: topic feed: consumer {} re-made as {} at sequence {}",
                        consumer_name, i.consumer, i.stream_sequence
                    );
                    consumer_name = i.consumer.to_string();
                }
                (i.stream_sequence, i.pending)
            }
            Err(e) => return format!("a message without its sequence: {e}"),
        };
        if seq <= cur.last {
            continue;
        }
        if cur.caught_up.is_none() && seq > cur.last + 1 {
            // Live, sequences skip only for messages the stream's limits
            // (per-topic cap, bytes, age) dropped before this node read them.
            warn!(
                "engine: topic feed: sequences {} to {} were gone before this node read them",
                cur.last + 1,
                seq - 1
            );
        }
        let target = parse_subject(prefix, "t", m.subject.as_str());
        match (target, decode_note(&m.payload)) {
            (Some((app_id, topic)), Some(note)) if note.expiry != 0 => {
                handler(TopicEvent { app_id, topic, id: seq, note, logged: true })
            }
            _ => warn!("engine: topic message {seq} on {} does not decode; skipped", m.subject),
        }
        cur.last = seq;
        cur.reached(pending == 0);
    }
    "the consumer ended".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> Note {
        Note {
            kind: 0,
            priority: 10,
            flags: 1,
            expiry: 1_900_000_000,
            collapse: Bytes::from_static(b"score"),
            payload: Bytes::from_static(b"2-1"),
        }
    }

    #[test]
    fn notes_round_trip_and_bad_bodies_do_not_decode() {
        let mut b = BytesMut::new();
        encode_note(&note(), &mut b);
        let b = b.freeze();
        assert_eq!(b.len(), NOTE_HEAD + 5 + 3);
        assert_eq!(decode_note(&b), Some(note()));
        let plain = Note { collapse: Bytes::new(), payload: Bytes::new(), ..note() };
        let mut p = BytesMut::new();
        encode_note(&plain, &mut p);
        assert_eq!(decode_note(&p.freeze()), Some(plain));
        for n in 0..NOTE_HEAD + 5 {
            assert_eq!(decode_note(&b.slice(..n)), None, "cut at {n}");
        }
        let mut bad = b.to_vec();
        bad[1] = 7;
        assert_eq!(decode_note(&Bytes::from(bad)), None, "not a priority");
        let mut long = b.to_vec();
        long[7] = 65;
        long.extend([0u8; 70]);
        assert_eq!(decode_note(&Bytes::from(long)), None, "collapse id too long");
        let a = encode_announce(u64::MAX - 3, &note());
        assert_eq!(decode_announce(&a), Some((u64::MAX - 3, note())));
        assert_eq!(decode_announce(&a.slice(..7)), None);
    }

    #[test]
    fn subjects_carry_app_and_topic_in_hex() {
        let s = subject("pg", "app.one", b"news~1");
        assert_eq!(s, "pg.t.6170702e6f6e65.6e6577737e31");
        assert_eq!(parse_subject("pg", "t", &s), Some(("app.one".to_string(), (*b"news~1").into())));
        assert_eq!(parse_subject("pg", "tn", &s), None, "another kind");
        let a = announce_subject("pg", "app.one", b"x");
        assert_eq!(parse_subject("pg", "tn", &a), Some(("app.one".to_string(), (*b"x").into())));
        assert_eq!(parse_subject("pgx", "t", &s), None);
        for bad in ["pg.t.zz.6e", "pg.t.61", "pg.t.61.", "pg.t..6e", "pg.t.61.6e.6e"] {
            assert_eq!(parse_subject("pg", "t", bad), None, "{bad}");
        }
        let c = stream_config("pg", 1000, 1 << 20, 3);
        assert_eq!(c.subjects, vec!["pg.t.>".to_string()], "announced subjects are not stored");
        assert_eq!((c.max_messages_per_subject, c.max_bytes, c.num_replicas), (1000, 1 << 20, 3));
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        assert_eq!(stream_name("pg"), "pg_T");
    }

    #[test]
    fn counts_round_trip() {
        let counts = vec![(1, 2, 3), (u64::MAX, 0, 7)];
        let b = encode_counts("n1", &counts);
        assert_eq!(decode_counts(&b), Some(("n1".to_string(), counts)));
        assert_eq!(decode_counts(&b[..b.len() - 1]), None);
        assert_eq!(decode_counts(&[]), None);
        assert_eq!(decode_counts(&encode_counts("n1", &[])), Some(("n1".to_string(), vec![])));
        let many = vec![(1, 1, 1); MAX_COUNTS + 1];
        assert_eq!(decode_counts(&encode_counts("n", &many)), None);
    }
}
