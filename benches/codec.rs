//! Cost of the sans-IO core on the hot path: encoding and decoding each frame,
//! deriving, verifying and routing tokens, and the cross-thread hand-off that
//! carries provider pushes to the shard owning the device.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token as MioToken, Waker};
use pushgate::proto::frame::{put_multi_entry, DEVICE_MAX_BODY, PROVIDER_MAX_BODY};
use pushgate::proto::{
    split_frame, Frame, Hello, MultiPush, Notification, Push, Status, Token, TokenKey, TOKEN_LEN,
};

fn tok(i: u32) -> Token {
    TokenKey::new([3; 32]).derive("com.example.app", &i.to_be_bytes().repeat(4))
}

fn bench_frame(c: &mut Criterion, name: &str, frame: Frame<'_>, max_body: usize) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(frame.encoded_len() as u64));
    let mut out = Vec::with_capacity(frame.encoded_len());
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&frame).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    g.bench_function("decode", |b| {
        b.iter(|| {
            let (raw, used) = split_frame(black_box(&buf), max_body).unwrap().unwrap();
            (Frame::parse(raw).unwrap(), used)
        })
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let secret = [0x42u8; 32];
    let payload = vec![b'p'; 200];
    let toks: Vec<u8> = (0..1000).flat_map(|i| tok(i).0).collect();
    let mut entries = Vec::new();
    for i in 0..1000 {
        put_multi_entry(&mut entries, Status::DELIVERED, i);
    }
    let note = Notification {
        kind: 0,
        priority: 10,
        flags: 0,
        expiry: 1_900_000_000,
        collapse: b"inbox",
        payload: &payload,
    };
    let push = Push { req_id: 7, token: tok(1), note };
    let dev = DEVICE_MAX_BODY;
    let prov = PROVIDER_MAX_BODY;
    let hello = Hello { version: 1, keepalive_s: 240, app_id: "com.example.chat", secret: &secret };
    bench_frame(c, "HELLO", Frame::Hello(hello), dev);
    bench_frame(c, "WELCOME", Frame::Welcome { token: tok(2), heartbeat_s: 240, missed: 3 }, dev);
    bench_frame(c, "PING", Frame::Ping, dev);
    bench_frame(
        c,
        "NOTIFY_200B",
        Frame::Notify { msg_id: 99, kind: 0, priority: 10, payload: &payload },
        dev,
    );
    bench_frame(c, "ACK", Frame::Ack { msg_id: 99 }, dev);
    bench_frame(c, "PUSH_200B", Frame::Push(push), prov);
    bench_frame(
        c,
        "RESULT",
        Frame::Result { req_id: 7, status: Status::DELIVERED, msg_id: 99, info: 0 },
        prov,
    );
    let multi =
        MultiPush { req_id: 8, tokens: &toks, note: Notification { expiry: 0, collapse: b"", ..note } };
    bench_frame(c, "MULTI_PUSH_1000x200B", Frame::MultiPush(multi), prov);
    bench_frame(c, "MULTI_RESULT_1000", Frame::MultiResult { req_id: 8, entries: &entries }, prov);
}

fn tokens(c: &mut Criterion) {
    let key = TokenKey::new([5; 32]);
    let secret = [0x11u8; 32];
    let t = key.derive("com.example.chat", &secret);
    let mut g = c.benchmark_group("token");
    g.bench_function("derive", |b| b.iter(|| key.derive(black_box("com.example.chat"), black_box(&secret))));
    g.bench_function("verify", |b| b.iter(|| key.verify(black_box("com.example.chat"), black_box(&t))));
    let many: Vec<Token> = (0..1024).map(tok).collect();
    g.throughput(Throughput::Elements(many.len() as u64));
    g.bench_function("shard_of_1024_tokens_over_8", |b| {
        b.iter(|| black_box(&many).iter().map(|t| t.shard(black_box(8))).sum::<usize>())
    });
    g.finish();
}

/// One provider push as it travels to the owner shard: small and `Copy`.
#[derive(Clone, Copy)]
struct Handoff {
    _conn: u32,
    msg_id: u64,
    _token: [u8; TOKEN_LEN],
}

/// Sends `batches` batches of `batch` messages from this thread to a consumer
/// thread blocked in `mio::Poll`, waking it at most once per batch (and not at
/// all while it has a wake pending), and returns the time until the consumer
/// has received the last one.
fn handoff_run(tx: &Sender<Handoff>, rx: &Receiver<Handoff>, batch: usize, batches: u64) -> Duration {
    let total = batch as u64 * batches;
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(poll.registry(), MioToken(0)).unwrap();
    let pending = AtomicBool::new(false);
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut events = Events::with_capacity(8);
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < total {
                poll.poll(&mut events, None).unwrap();
                // Clear before draining so a send that races the drain wakes us again.
                pending.store(false, Ordering::SeqCst);
                while let Ok(m) = rx.try_recv() {
                    sum = sum.wrapping_add(m.msg_id);
                    got += 1;
                }
            }
            black_box(sum);
        });
        let start = Instant::now();
        let mut id = 0u64;
        for _ in 0..batches {
            for _ in 0..batch {
                id += 1;
                tx.send(Handoff { _conn: 1, msg_id: id, _token: [7; TOKEN_LEN] }).unwrap();
            }
            if !pending.swap(true, Ordering::SeqCst) {
                waker.wake().unwrap();
            }
        }
        consumer.join().unwrap();
        start.elapsed()
    })
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_handoff");
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        for (name, (tx, rx)) in [
            ("bounded_4096", crossbeam_channel::bounded::<Handoff>(4096)),
            ("unbounded", crossbeam_channel::unbounded::<Handoff>()),
        ] {
            g.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_custom(|iters| handoff_run(&tx, &rx, batch, iters))
            });
        }
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = frames, tokens, handoff }
criterion_main!(benches);
