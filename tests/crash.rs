//! Durability under SIGKILL: every notification whose RESULT said delivered
//! or queued arrives after a restart unless the device ACKed it before the
//! kill, and nothing refused ever arrives.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{push_frame, spawn_serve, Got, Raw, Served};
use pushgate::proto::frame::{split_frame, PROVIDER_MAX_BODY};
use pushgate::proto::{Frame, Status, Token};

fn serve(data: &std::path::Path, ack_grace_ms: u64) -> Served {
    // A cap far above what the test pushes per device: the cap's own drops are tested elsewhere.
    let cfg = data.with_extension("toml");
    let toml = format!("[limits]\ndevice_queue_cap = 100000\n[store]\nack_grace_ms = {ack_grace_ms}\n");
    std::fs::write(&cfg, toml).unwrap();
    let args: [&std::ffi::OsStr; 8] = [
        "--store".as_ref(),
        "durable".as_ref(),
        "--shards".as_ref(),
        "2".as_ref(),
        "--config".as_ref(),
        cfg.as_ref(),
        "--data-dir".as_ref(),
        data.as_ref(),
    ];
    spawn_serve(&args, "warn")
}

fn device_secret(i: usize) -> Vec<u8> {
    format!("crash-test-device-{i:04}-........").into_bytes()
}

/// A device thread: reads NOTIFYs, records payloads, ACKs those with an even index.
fn run_device(
    mut d: Raw,
    seen: Arc<Mutex<Vec<u32>>>,
    acked: Arc<Mutex<HashSet<u32>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match d.recv(Duration::from_millis(100)) {
                Got::Frame(b) => {
                    let Ok(Some((raw, _))) = split_frame(&b, PROVIDER_MAX_BODY) else { continue };
                    if let Ok(Frame::Notify { msg_id, payload, .. }) = Frame::parse(raw) {
                        let n: u32 = std::str::from_utf8(payload).unwrap().parse().unwrap();
                        seen.lock().unwrap().push(n);
                        if n.is_multiple_of(2) {
                            d.send(&Frame::Ack { msg_id });
                            acked.lock().unwrap().insert(n);
                        }
                    }
                }
                Got::Closed => return,
                Got::Timeout => {}
            }
        }
    })
}

#[test]
fn sigkill_mid_stream_loses_nothing_accepted() {
    crash_and_restart(0);
}

/// The same with notifications to online devices held back from the disk for
/// their ACK: those acked in time never reach the disk, the others must.
#[test]
fn sigkill_mid_stream_loses_nothing_accepted_with_an_ack_grace() {
    crash_and_restart(50);
}

fn crash_and_restart(ack_grace_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut srv = serve(&data, ack_grace_ms);
    const ONLINE: usize = 8;
    const OFFLINE: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tokens: Vec<Token> = Vec::new();
    let mut devices = Vec::new();
    for i in 0..ONLINE + OFFLINE {
        let mut d = Raw::connect(srv.device);
        let (t, _, _) = d.hello("demo", &device_secret(i), 0);
        tokens.push(t);
        if i < ONLINE {
            let seen = Arc::new(Mutex::new(Vec::new()));
            devices.push(run_device(d, seen, acked.clone(), stop.clone()));
        }
    }
    std::thread::sleep(Duration::from_millis(200));

    // The provider pipelines pushes until the gateway dies under it.
    let results: Arc<Mutex<HashMap<u32, Status>>> = Arc::default();
    let mut p = Raw::connect(srv.provider);
    p.login("demo", &srv.secret);
    let mut reader = Raw::from_stream(p.stream.try_clone().unwrap());
    let res = results.clone();
    let collector = std::thread::spawn(move || loop {
        match reader.recv(Duration::from_secs(10)) {
            Got::Frame(b) => {
                let Ok(Some((raw, _))) = split_frame(&b, PROVIDER_MAX_BODY) else { continue };
                if let Ok(Frame::Result { req_id, status, .. }) = Frame::parse(raw) {
                    res.lock().unwrap().insert(req_id, status);
                }
            }
            _ => return,
        }
    });
    let tokens_w = tokens.clone();
    let writer = std::thread::spawn(move || {
        for n in 0..1_000_000u32 {
            let token = tokens_w[n as usize % tokens_w.len()];
            // Every fifth push is now-or-never: refused for offline devices, never stored.
            let expiry = if n % 5 == 0 { 0 } else { u32::MAX };
            let payload = n.to_string();
            let mut buf = Vec::new();
            Frame::Push(push_frame(n, token, expiry, payload.as_bytes())).encode(&mut buf);
            if std::io::Write::write_all(&mut p.stream, &buf).is_err() {
                return n;
            }
        }
        1_000_000
    });
    let t0 = Instant::now();
    while results.lock().unwrap().len() < 3000 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGKILL) };
    let _ = srv.child.wait();
    let sent = writer.join().unwrap();
    collector.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for d in devices {
        d.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert!(results.len() >= 3000, "only {} results before the kill", results.len());
    assert!((sent as usize) > results.len(), "the kill came mid-stream");

    // Restart and drain every device.
    let srv = serve(&data, ack_grace_ms);
    let mut after: HashMap<Token, Vec<u32>> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        let mut d = Raw::connect(srv.device);
        assert_eq!(d.hello("demo", &device_secret(i), 0).0, *t, "tokens survive the restart");
        while let Got::Frame(b) = d.recv(Duration::from_millis(700)) {
            let (raw, _) = split_frame(&b, PROVIDER_MAX_BODY).unwrap().unwrap();
            if let Frame::Notify { msg_id, payload, .. } = Frame::parse(raw).unwrap() {
                after.entry(*t).or_default().push(std::str::from_utf8(payload).unwrap().parse().unwrap());
                d.send(&Frame::Ack { msg_id });
            }
        }
    }
    let arrived: HashSet<u32> = after.values().flatten().copied().collect();
    let mut lost = Vec::new();
    for (&n, &status) in &results {
        let stored = n % 5 != 0;
        match status {
            Status::DELIVERED | Status::QUEUED if stored => {
                if !acked.contains(&n) && !arrived.contains(&n) {
                    lost.push(n);
                }
            }
            Status::DELIVERED => {} // now-or-never to an online device: at most once
            other => assert!(!arrived.contains(&n), "push {n} was refused ({other}) yet arrived"),
        }
    }
    assert!(
        lost.is_empty(),
        "{} accepted notifications lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    for (t, list) in &after {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "order kept for {t}");
    }
    let accepted_unacked =
        results.iter().filter(|(n, s)| **n % 5 != 0 && s.0 <= 1 && !acked.contains(n)).count();
    println!(
        "{} results before the kill, {sent} pushes written, {accepted_unacked} accepted and unacked, {} arrived after restart",
        results.len(),
        arrived.len()
    );
    drop(srv);
}
