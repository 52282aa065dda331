//! The broadcast scenario: every device in one topic, one publisher sending
//! topic pushes one at a time; devices report per push when the last of them
//! had it. Then every device goes offline, more pushes are stored, and all
//! reconnect at once (catch-up). Server memory per subscription and stored
//! bytes per push (data directory growth: while connected, with what the
//! devices' ACKs write; while offline, the messages alone) show whether a
//! push is kept once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pushgate::client::{expiry_in, new_note, ProviderClient};
use pushgate::proto::Status;

use crate::devices::BROADCAST_DEV;
use crate::opts::RunOpts;
use crate::report::Summary;
use crate::run::{rss_total, State};
use crate::stats::Fingerprint;
use crate::util::{now_ns, write_payload, PAYLOAD_HEADER};
use crate::wire::{mqtt, Target};

pub(crate) fn run(
    o: &RunOpts,
    st: &mut State,
    sum: &mut Summary,
    acc: &mut [Fingerprint],
    pids: &[u32],
) -> Result<(), String> {
    let n = st.n;
    let limit = (60.0 + n as f64 / 200.0).min(600.0);

    st.phase = "subscribe";
    let rss0 = rss_total(pids);
    let t0 = now_ns();
    st.send("subscribe");
    if st.pump(limit, |s| s.counters().subscribed >= s.n) {
        sum.subscribe_secs = Some((now_ns() - t0) as f64 / 1e9);
    } else {
        let c = st.counters();
        eprintln!("broadcast: only {} of {n} devices subscribed ({} refused)", c.subscribed, c.sub_failed);
    }
    st.pump(1.0, |_| false);
    sum.server_rss_subscribed = rss_total(pids);
    if let (Some(a), Some(b)) = (rss0, sum.server_rss_subscribed) {
        sum.server_rss_bytes_per_subscription = Some((b as f64 - a as f64) / n as f64);
    }

    let mut publisher = Publisher::connect(o).map_err(|e| format!("broadcast publisher: {e}"))?;
    let usage0 = o.data_dir.as_deref().map(dir_usage);

    st.phase = "push";
    let mut seq = 0u64;
    let mut live = 0u64;
    for _ in 0..o.messages {
        let before = st.counters().unique;
        if publish_one(o, st, &mut publisher, seq, acc)? {
            live += 1;
            st.pump(30.0, |s| s.counters().unique >= before + s.n);
        }
        seq += 1;
        st.pump(o.gap_ms as f64 / 1000.0, |_| false);
    }
    if let (Some(a), Some(dir)) = (usage0, o.data_dir.as_deref()) {
        let b = dir_usage(dir);
        let m = o.messages.max(1) as f64;
        sum.stored_bytes_per_message = Some((b.0 as f64 - a.0 as f64) / m);
        sum.stored_apparent_bytes_per_message = Some((b.1 as f64 - a.1 as f64) / m);
    }
    // Per push: the latest arrival over all devices, after the push was sent.
    let mut to_last = Vec::new();
    for s in 0..o.messages as u64 {
        let (count, late) = st
            .per_msg
            .values()
            .flat_map(|v| v.iter().filter(|e| e.0 == s))
            .fold((0, 0), |(c, l), e| (c + e.1, l.max(e.2)));
        if count >= n {
            to_last.push(late as f64 / 1e6);
        }
    }
    sum.bcast_messages = live;
    sum.bcast_incomplete = live.saturating_sub(to_last.len() as u64);
    to_last.sort_by(f64::total_cmp);
    if !to_last.is_empty() {
        let q = |p: f64| to_last[((to_last.len() - 1) as f64 * p).round() as usize];
        sum.bcast_to_last_p50_ms = Some(q(0.5));
        sum.bcast_to_last_p99_ms = Some(q(0.99));
        sum.bcast_to_last_max_ms = to_last.last().copied();
        sum.bcast_fanout_per_sec = Some(n as f64 / (q(0.5) / 1000.0).max(1e-9));
    }

    if o.catchup == 0 {
        return Ok(());
    }
    st.phase = "park";
    st.send("park");
    st.pump(30.0, |s| s.counters().connected == 0);
    st.pump(1.0, |_| false);
    st.phase = "push offline";
    let usage1 = o.data_dir.as_deref().map(dir_usage);
    let mut stored = 0u64;
    for _ in 0..o.catchup {
        if publish_one(o, st, &mut publisher, seq, acc)? {
            stored += 1;
        }
        seq += 1;
    }
    sum.catchup_messages = stored;
    if let (Some(a), Some(dir)) = (usage1, o.data_dir.as_deref()) {
        // Nobody is connected, so nothing but the messages themselves is written.
        let b = dir_usage(dir);
        let k = o.catchup.max(1) as f64;
        sum.stored_offline_bytes_per_message = Some((b.0 as f64 - a.0 as f64) / k);
    }
    st.phase = "catch-up";
    let before = st.counters().unique;
    let t1 = now_ns();
    st.send("unpark");
    let want = before + n * stored;
    let all = |s: &State| s.counters().unique >= want && s.counters().registered >= s.n;
    // Bounded, and given up once every device is back and nothing new arrived for 10 s.
    let (mut done, mut last, mut still) = (false, before, 0);
    while !done && now_ns() - t1 < ((limit + 60.0) * 1e9) as u64 && still < 10 {
        done = st.pump(1.0, all);
        let c = st.counters();
        still = if c.unique == last && c.registered >= n { still + 1 } else { 0 };
        last = c.unique;
    }
    let c = st.counters();
    let secs = (c.last_delivery_ns.max(t1) - t1) as f64 / 1e9;
    if done {
        sum.catchup_secs = Some(secs);
        sum.catchup_per_sec = Some((n * stored) as f64 / secs.max(1e-9));
    } else {
        eprintln!("broadcast: catch-up incomplete: {} of {} deliveries", c.unique - before, n * stored);
    }
    sum.catchup_registered_secs = Some((c.last_registered_ns.max(t1) - t1) as f64 / 1e9);
    Ok(())
}

/// Sends push `seq` to the topic and waits for its answer; if accepted,
/// every device is owed it. Returns whether it was accepted.
fn publish_one(
    o: &RunOpts,
    st: &mut State,
    p: &mut Publisher,
    seq: u64,
    acc: &mut [Fingerprint],
) -> Result<bool, String> {
    let mut payload = vec![0u8; o.payload.max(PAYLOAD_HEADER)];
    write_payload(&mut payload, now_ns(), BROADCAST_DEV, seq);
    let stats = st.prov_stats.clone();
    stats.sent.fetch_add(1, Relaxed);
    let key = match p.publish(o, seq, &payload) {
        Ok(Ok(key)) => key,
        Ok(Err(status)) => {
            stats.by_status[(status.0 as usize).min(9)].fetch_add(1, Relaxed);
            eprintln!("broadcast: push {seq} refused: {status}");
            return Ok(false);
        }
        Err(e) => {
            stats.errors.fetch_add(1, Relaxed);
            return Err(format!("broadcast push {seq}: {e}"));
        }
    };
    stats.accepted.fetch_add(1, Relaxed);
    stats.by_status[Status::QUEUED.0 as usize].fetch_add(1, Relaxed);
    for a in acc.iter_mut() {
        a.add(key);
    }
    Ok(true)
}

/// One publisher connection: pushgate's provider client, or an MQTT client publishing at QoS 1.
enum Publisher {
    Pushgate(Box<ProviderClient>),
    Mqtt { s: TcpStream, buf: Vec<u8>, pid: u16 },
}

impl Publisher {
    fn connect(o: &RunOpts) -> std::io::Result<Publisher> {
        let addr = o.provider_addrs()[0];
        match o.target {
            Target::Pushgate => {
                let secret = o.secret_bytes().map_err(std::io::Error::other)?;
                let c =
                    ProviderClient::connect_with_key(addr, &o.app, &secret).map_err(std::io::Error::other)?;
                Ok(Publisher::Pushgate(Box::new(c)))
            }
            _ => {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut out = Vec::new();
                mqtt::connect(&format!("bcast-pub-{}", std::process::id()), 0, &mut out);
                s.write_all(&out)?;
                let mut p = Publisher::Mqtt { s, buf: Vec::new(), pid: 0 };
                p.mqtt_wait(2, None)?;
                Ok(p)
            }
        }
    }

    /// Publishes and waits for the answer: the key devices dedupe by (pushgate:
    /// the topic message id; MQTT: the sequence), or the refusing status.
    fn publish(&mut self, o: &RunOpts, seq: u64, payload: &[u8]) -> std::io::Result<Result<u64, Status>> {
        match self {
            Publisher::Pushgate(c) => {
                let mut note = new_note(payload.to_vec());
                note.expiry = expiry_in(o.expiry_s());
                let r = c.push_topic(&o.topic, &note).map_err(std::io::Error::other)?;
                Ok(if r.is_accepted() { Ok(r.msg_id) } else { Err(r.status) })
            }
            Publisher::Mqtt { s, pid, .. } => {
                *pid = pid.wrapping_add(1).max(1);
                let id = *pid;
                let mut out = Vec::new();
                mqtt::publish_qos1(id, &o.topic, payload, &mut out);
                s.write_all(&out)?;
                self.mqtt_wait(4, Some(id))?;
                Ok(Ok(seq))
            }
        }
    }

    /// Reads MQTT packets until one of type `want` (with packet id `pid`, if given).
    fn mqtt_wait(&mut self, want: u8, pid: Option<u16>) -> std::io::Result<()> {
        let Publisher::Mqtt { s, buf, .. } = self else { return Ok(()) };
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((h, body, used)) = mqtt::split(buf).map_err(std::io::Error::other)? {
                let hit = h >> 4 == want && pid.is_none_or(|p| body.get(..2) == Some(&p.to_be_bytes()[..]));
                buf.drain(..used);
                if hit {
                    return Ok(());
                }
            }
            let k = s.read(&mut chunk)?;
            if k == 0 {
                return Err(std::io::Error::other("broker closed the publisher connection"));
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }
}

/// Bytes under `dir`: allocated on disk (du) and the files' sizes.
fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else { return total };
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else { continue };
        if m.is_dir() {
            let (a, b) = dir_usage(&e.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + m.blocks() * 512, total.1 + m.len());
        }
    }
    total
}
