//! A shard driven without sockets or real time, in the spirit of
//! quinn-proto's `Pair`: connections are in-memory pipes, the clock moves
//! only when a test says, and the store's syncs complete only when a test
//! says. Whole sessions (HELLO, AUTH, PUSH, ACK, drain) run through the same
//! code as on a socket, one loop iteration (`step`) at a time.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::conn::{Conn, Core, Device, MemPipe, Provider, Transport};
use super::msg::ShardMsg;
use super::{Clock, Shard, Shared};
use crate::config::{AppConfig, Config};
use crate::proto::frame::split_frame;
use crate::proto::session::auth_proof;
use crate::proto::{
    Apps, Frame, GoAwayReason, Hello, Note, ProviderState, Push, Status, Token, TokenKey, PRIORITY_HIGH,
    PRIORITY_NORMAL,
};
use crate::store::memory::MemoryStore;
use crate::store::{Receipt, Store, StoreError, StoredMsg, Ticket, Tombstone};

const APP: &str = "app.sim";
const SECRET: &str = "sim-secret-0123456789";
/// Unix ms the simulation starts at.
const T0_UNIX_MS: u64 = 1_800_000_000_000;

/// A memory store whose commits stay pending until the test completes them,
/// like a disk that takes as long as the test wants to fsync.
struct SlowDisk {
    inner: MemoryStore,
    /// Tickets handed out, shared with the test.
    tickets: Arc<Mutex<u64>>,
}

impl Store for SlowDisk {
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<u32, StoreError> {
        self.inner.append(token, msg)
    }
    fn pending(
        &mut self,
        t: &Token,
        after: u64,
        now: u64,
        max: usize,
        out: &mut Vec<StoredMsg>,
    ) -> Result<(), StoreError> {
        self.inner.pending(t, after, now, max, out)
    }
    fn ack(&mut self, token: &Token, msg_id: u64) -> Result<bool, StoreError> {
        self.inner.ack(token, msg_id)
    }
    fn mark_sent(&mut self, token: &Token, msg_id: u64) {
        self.inner.mark_sent(token, msg_id)
    }
    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError> {
        self.inner.take_missed(token)
    }
    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError> {
        self.inner.sweep_expired(now_unix)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn commit(&mut self) -> Result<Ticket, StoreError> {
        let mut t = self.tickets.lock().unwrap();
        *t += 1;
        Ok(Ticket::Pending(*t))
    }
    fn max_msg_id(&self) -> u64 {
        self.inner.max_msg_id()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn unregister(&mut self, token: &Token, app_id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.inner.unregister(token, app_id, at_ms)
    }
    fn reregister(&mut self, token: &Token) -> Result<(), StoreError> {
        self.inner.reregister(token)
    }
    fn tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError> {
        self.inner.tombstones()
    }
    fn save_receipt(&mut self, app_id: &str, r: Receipt, cap: usize) -> Result<(), StoreError> {
        self.inner.save_receipt(app_id, r, cap)
    }
    fn take_receipts(&mut self, app_id: &str, max: usize, out: &mut Vec<Receipt>) -> Result<(), StoreError> {
        self.inner.take_receipts(app_id, max, out)
    }
}

/// What a peer read, decoded into what the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Welcome { token: Token, missed: u32 },
    Notify { msg_id: u64 },
    Result { req_id: u32, status: Status, msg_id: u64 },
    GoAway { reason: GoAwayReason, reconnect_ms: u32 },
    Other(u8),
}

/// The client end of an in-memory connection.
struct Peer {
    pipe: Arc<MemPipe>,
    buf: Vec<u8>,
}

impl Peer {
    fn send(&self, f: &Frame<'_>) {
        let mut st = self.pipe.state();
        f.encode(&mut st.to_shard);
    }

    fn close(&self) {
        self.pipe.state().peer_closed = true;
    }

    /// Everything the shard wrote since the last call.
    fn take(&mut self) -> Vec<Got> {
        self.buf.append(&mut self.pipe.state().from_shard);
        let mut out = Vec::new();
        while let Ok(Some((raw, n))) = split_frame(&self.buf, 1 << 16) {
            let got = match Frame::parse(raw) {
                Ok(Frame::Welcome { token, missed, .. }) => Got::Welcome { token, missed },
                Ok(Frame::Notify { msg_id, .. }) => Got::Notify { msg_id },
                Ok(Frame::Result { req_id, status, msg_id, .. }) => Got::Result { req_id, status, msg_id },
                Ok(Frame::GoAway { reason, reconnect_ms }) => Got::GoAway { reason, reconnect_ms },
                _ => Got::Other(raw.ftype),
            };
            out.push(got);
            self.buf.drain(..n);
        }
        out
    }

    fn shut(&self) -> bool {
        self.pipe.state().shard_closed
    }
}

struct Sim {
    shard: Shard,
    tickets: Arc<Mutex<u64>>,
    peers: Vec<(u32, Arc<MemPipe>)>,
}

impl Sim {
    fn new(cfg: Config, slow_disk: bool) -> Sim {
        let mut apps = Apps::new();
        apps.add(APP, SECRET.as_bytes());
        let tickets = Arc::new(Mutex::new(0));
        let inner = MemoryStore::new(cfg.limits.device_queue_cap);
        let store: Box<dyn Store> =
            if slow_disk { Box::new(SlowDisk { inner, tickets: tickets.clone() }) } else { Box::new(inner) };
        let (parts, handle) = super::prepare(None, None, store).unwrap();
        let cfg_limits = cfg.limits.clone();
        let shared = Arc::new(Shared {
            limits: super::limits::NodeLimits::new(&cfg.limits, apps.len()),
            cfg: Config { apps: vec![AppConfig { id: APP.into(), secret: SECRET.into() }], ..cfg },
            apps,
            key: TokenKey::new([7; 32]),
            handles: vec![handle],
            metrics: crate::metrics::Metrics::new(1),
            conns: AtomicUsize::new(0),
            max_conns: 1000,
            draining: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            holds: AtomicUsize::new(0),
            tls: Default::default(),
            epoch: std::time::Instant::now(),
            cluster: None,
            topics: crate::topics::TopicLog::new(&cfg_limits, Default::default()),
        });
        let shard = Shard::with_clock(0, shared, parts, Clock::manual(0, T0_UNIX_MS)).unwrap();
        Sim { shard, tickets, peers: Vec::new() }
    }

    fn connect(&mut self, device: bool) -> Peer {
        let pipe = Arc::new(MemPipe::default());
        let core =
            Core::new(Transport::Mem(pipe.clone()), None, self.shard.next_id(), self.shard.clock.tick as u32);
        let conn = if device {
            Conn::Device(Device::new(core))
        } else {
            Conn::Provider(Box::new(Provider { core, state: ProviderState::AwaitHello }))
        };
        self.shard.shared.conns.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let idx = self.shard.attach(conn).unwrap();
        self.peers.push((idx, pipe.clone()));
        Peer { pipe, buf: Vec::new() }
    }

    /// One loop iteration: read what peers sent, then the rest of `turn`.
    fn step(&mut self) -> bool {
        for (idx, pipe) in self.peers.clone() {
            let (input, closed) = {
                let st = pipe.state();
                (!st.to_shard.is_empty(), st.peer_closed)
            };
            if closed {
                self.shard.on_peer_closed(idx);
            }
            if input || closed {
                self.shard.on_readable(idx);
            }
        }
        self.shard.turn()
    }

    /// Moves the clock `ms` forward in ticks, stepping at each.
    fn advance(&mut self, ms: u64) {
        let end = self.shard.clock.mono_ms + ms;
        while self.shard.clock.mono_ms < end {
            let next = (self.shard.clock.mono_ms + super::TICK_MS).min(end);
            let unix = T0_UNIX_MS + next;
            self.shard.clock.set(next, unix);
            self.step();
        }
    }

    /// The slow disk finishes every sync asked for so far (or fails it).
    fn complete(&mut self, ok: bool) {
        let upto = *self.tickets.lock().unwrap();
        self.shard.on_msg(ShardMsg::Durable { upto, ok });
        self.step();
    }

    fn device(&mut self, label: &str, keepalive_s: u16) -> (Peer, Token) {
        let mut d = self.connect(true);
        let secret = format!("device-secret-{label:.<20}");
        d.send(&Frame::Hello(Hello { version: 1, keepalive_s, app_id: APP, secret: secret.as_bytes() }));
        self.step();
        match d.take().first() {
            Some(Got::Welcome { token, .. }) => (d, *token),
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    fn provider(&mut self) -> Peer {
        let mut p = self.connect(false);
        p.send(&Frame::AuthHello { version: 1, app_id: APP });
        self.step();
        let mut nonce = [0u8; 32];
        let buf = p.pipe.state().from_shard.split_off(0);
        if let Ok(Some((raw, _))) = split_frame(&buf, 1 << 16) {
            if let Ok(Frame::Challenge { nonce: n }) = Frame::parse(raw) {
                nonce = n;
            }
        }
        p.send(&Frame::Auth { proof: auth_proof(SECRET.as_bytes(), APP, &nonce) });
        self.step();
        assert_eq!(p.take(), vec![Got::Other(crate::proto::frame::ftype::AUTH_OK)]);
        p
    }
}

fn cfg() -> Config {
    let mut c = Config::default();
    c.heartbeat.min_s = 1;
    c
}

fn push(p: &Peer, req_id: u32, token: Token, expiry: u32, priority: u8) {
    let note = Note { priority, expiry, payload: Bytes::from_static(b"sim"), ..Note::default() };
    p.send(&Frame::Push(Push { req_id, token, note: note.as_wire() }));
}

fn in_an_hour() -> u32 {
    (T0_UNIX_MS / 1000 + 3600) as u32
}

fn results(got: &[Got]) -> Vec<(u32, Status)> {
    got.iter()
        .filter_map(|g| match *g {
            Got::Result { req_id, status, .. } => Some((req_id, status)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stored_push_is_written_at_once_and_answered_when_its_batch_is_durable() {
    let mut sim = Sim::new(cfg(), true);
    let (mut d, token) = sim.device("a", 0);
    let mut p = sim.provider();
    push(&p, 1, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    let notify = d.take();
    assert!(matches!(notify[..], [Got::Notify { .. }]), "the NOTIFY does not wait for the disk: {notify:?}");
    assert!(p.take().is_empty(), "no RESULT before the batch is durable");
    // The loop goes on meanwhile: a second push is written to the device and
    // staged; it goes with the next batch, committed once this one is durable.
    push(&p, 2, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    assert!(matches!(d.take()[..], [Got::Notify { .. }]));
    assert!(p.take().is_empty());
    assert_eq!(sim.shard.commit.in_flight(), 1, "one batch syncs at a time");
    sim.complete(true);
    assert_eq!(results(&p.take()), [(1, Status::DELIVERED)]);
    assert_eq!(sim.shard.commit.in_flight(), 1, "the second batch went to the disk");
    sim.complete(true);
    assert_eq!(results(&p.take()), [(2, Status::DELIVERED)]);
    // A failed sync fails exactly the results that waited for it.
    push(&p, 3, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    sim.complete(false);
    push(&p, 4, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    sim.complete(true);
    assert_eq!(results(&p.take()), [(3, Status::STORE_FAILED), (4, Status::DELIVERED)]);
    // A push that needs no disk is answered in its own iteration.
    push(&p, 5, Token([9; 24]), in_an_hour(), PRIORITY_HIGH);
    sim.step();
    assert_eq!(results(&p.take()), [(5, Status::BAD_TOKEN)]);
}

#[test]
fn the_device_window_holds_the_rest_until_acks_make_room() {
    let mut c = cfg();
    c.limits.device_max_in_flight = 4;
    let mut sim = Sim::new(c, false);
    let (mut d, token) = sim.device("w", 0);
    let mut p = sim.provider();
    for i in 0..6 {
        push(&p, i, token, in_an_hour(), PRIORITY_HIGH);
    }
    sim.step();
    let ids: Vec<u64> = d
        .take()
        .iter()
        .filter_map(|g| if let Got::Notify { msg_id } = g { Some(*msg_id) } else { None })
        .collect();
    assert_eq!(ids.len(), 4, "the window is 4");
    let statuses: Vec<Status> = results(&p.take()).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == Status::DELIVERED).count(), 4);
    assert_eq!(statuses.iter().filter(|&&s| s == Status::QUEUED).count(), 2);
    d.send(&Frame::Ack { msg_id: ids[0] });
    d.send(&Frame::Ack { msg_id: ids[0] }); // a repeated ACK does not widen the window
    sim.step();
    assert_eq!(d.take().len(), 1, "one ACK, one more NOTIFY");
    d.send(&Frame::Ack { msg_id: ids[1] });
    sim.step();
    assert_eq!(d.take().len(), 1);
    d.send(&Frame::Ack { msg_id: ids[2] });
    sim.step();
    assert!(d.take().is_empty(), "nothing left to send");
}

#[test]
fn normal_priority_waits_for_the_coalescing_delay_and_heartbeats_keep_a_device() {
    let mut sim = Sim::new(cfg(), false);
    let (mut d, token) = sim.device("n", 2);
    let p = sim.provider();
    push(&p, 1, token, in_an_hour(), PRIORITY_NORMAL);
    sim.step();
    assert!(d.take().is_empty(), "held to coalesce");
    sim.advance(400);
    assert!(d.take().is_empty());
    sim.advance(200);
    assert!(matches!(d.take()[..], [Got::Notify { .. }]), "sent when the 500 ms delay ends");
    // Heartbeat 2 s: closed 1.5 x after the last frame (not at the 10 s
    // handshake deadline the connection was armed with), kept by a PING.
    sim.advance(2_200); // 2.8 s
    assert!(d.take().is_empty(), "3 s have not passed since the HELLO");
    d.send(&Frame::Ping); // read at 2.9 s
    sim.advance(2_900); // 5.7 s
    assert_eq!(d.take(), [Got::Other(crate::proto::frame::ftype::PONG)]);
    sim.advance(300); // 6.0 s
    assert_eq!(d.take(), [Got::GoAway { reason: GoAwayReason::IDLE_TIMEOUT, reconnect_ms: 0 }]);
}

#[test]
fn a_drain_spreads_reconnects_waits_for_answers_and_exits() {
    let mut c = cfg();
    c.drain.spread_ms = 1_000;
    c.drain.timeout_ms = 5_000;
    let mut sim = Sim::new(c, true);
    let mut devices: Vec<(Peer, Token)> = (0..4).map(|i| sim.device(&format!("d{i}"), 0)).collect();
    let mut p = sim.provider();
    push(&p, 1, devices[0].1, in_an_hour(), PRIORITY_HIGH);
    sim.step(); // its RESULT waits for the slow disk
    sim.shard.start_drain();
    sim.step();
    let mut hints = Vec::new();
    for (d, _) in &mut devices {
        for g in d.take() {
            if let Got::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms } = g {
                hints.push(reconnect_ms);
            }
        }
    }
    assert_eq!(hints, [0, 250, 500, 750], "reconnects spread over drain.spread_ms");
    assert!(p.take().is_empty(), "the provider keeps its connection while an answer is owed");
    sim.complete(true);
    assert_eq!(
        p.take(),
        [
            Got::Result { req_id: 1, status: Status::DELIVERED, msg_id: sim.shard.next_msg_id },
            Got::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 0 },
        ]
    );
    // The peers do not close their ends: the shard exits at the linger deadline.
    let mut exited = false;
    for _ in 0..40 {
        sim.shard.clock.set(sim.shard.clock.mono_ms + 100, T0_UNIX_MS + sim.shard.clock.mono_ms + 100);
        if sim.step() {
            exited = true;
            break;
        }
    }
    assert!(exited, "a drained shard exits");
    assert!(devices.iter().all(|(d, _)| d.shut()) && p.shut(), "every write side was shut");
}

#[test]
fn a_peer_close_with_its_last_frame_unbinds_the_device_at_once() {
    let mut sim = Sim::new(cfg(), false);
    let (mut d, token) = sim.device("c", 0);
    let mut p = sim.provider();
    push(&p, 1, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    let Some(Got::Notify { msg_id }) = d.take().first().cloned() else { panic!("no NOTIFY") };
    d.send(&Frame::Ack { msg_id });
    d.close();
    push(&p, 2, token, 0, PRIORITY_HIGH);
    sim.step();
    assert_eq!(results(&p.take()), [(1, Status::DELIVERED), (2, Status::NOT_DELIVERED)]);
    assert!(sim.shard.devices.is_empty());
    assert_eq!(sim.shard.store.len(), 0, "the ACK before the FIN was handled");
}

#[test]
fn a_silent_provider_is_closed_at_its_idle_limit_not_the_handshake_deadline() {
    let mut c = cfg();
    c.limits.provider_idle_s = 1;
    let mut sim = Sim::new(c, false);
    let mut p = sim.provider();
    sim.advance(900);
    assert!(p.take().is_empty());
    sim.advance(200);
    assert_eq!(p.take(), [Got::GoAway { reason: GoAwayReason::IDLE_TIMEOUT, reconnect_ms: 0 }]);
}

#[test]
fn a_provider_that_closed_while_its_answers_were_owed_is_freed_when_they_are_done() {
    let mut sim = Sim::new(cfg(), true);
    let (_d, token) = sim.device("owed", 0);
    let p = sim.provider();
    push(&p, 1, token, in_an_hour(), PRIORITY_HIGH);
    sim.step();
    sim.shard.start_drain(); // pauses the provider: it is not read any more
    p.close();
    sim.step();
    assert_eq!(sim.shard.conns.len(), 2, "the device lingers, the provider waits for its answer");
    sim.complete(true);
    // The GOAWAY after the last answer cannot be read by a closed peer: freed now,
    // not at the drain deadline.
    assert!(sim.shard.conns.iter().all(|(_, c)| c.is_device()), "the provider is gone");
}
