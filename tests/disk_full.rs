//! A full disk: pushes are refused with `store_failed` (never a crash, never a
//! silent drop), and every notification accepted before is still delivered.
//!
//! Runs the real binary on a small tmpfs, so it needs root (as CI has); it
//! says SKIPPED where mounting is not allowed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{push_frame, spawn_serve, Got, Raw, Served};
use pushgate::proto::frame::{split_frame, PROVIDER_MAX_BODY};
use pushgate::proto::{Frame, Status, Token};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn serve(data: &Path, cfg: &Path) -> Served {
    let args: [&std::ffi::OsStr; 8] = [
        "--store".as_ref(),
        "durable".as_ref(),
        "--shards".as_ref(),
        "1".as_ref(),
        "--config".as_ref(),
        cfg.as_ref(),
        "--data-dir".as_ref(),
        data.as_ref(),
    ];
    spawn_serve(&args, "error")
}

fn push(p: &mut Raw, req_id: u32, token: Token, payload: &[u8]) -> Status {
    p.push(push_frame(req_id, token, u32::MAX, payload)).0
}

#[test]
fn a_full_disk_refuses_pushes_with_store_failed_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _m = Mount(mnt.clone());
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[limits]\ndevice_queue_cap = 1000000\n").unwrap();
    let data = mnt.join("data");
    let srv = serve(&data, &cfg);
    let secret = b"disk-full-device-secret-0123456789".to_vec();
    let token = Raw::connect(srv.device).hello("demo", &secret, 0).0;
    let mut p = Raw::connect(srv.provider);
    p.login("demo", &srv.secret);
    let payload = vec![b'f'; 4000];
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..20_000u32 {
        match push(&mut p, i, token, &payload) {
            Status::QUEUED => accepted.push(i),
            Status::STORE_FAILED => {
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("push {i}: unexpected status {other}"),
        }
    }
    assert!(refused >= 20, "the disk never filled: {} accepted", accepted.len());
    assert!(!accepted.is_empty());
    // Still alive and answering after the disk filled.
    p.send(&Frame::Ping);
    p.expect(|f| assert_eq!(f, Frame::Pong));
    drop(p);
    drop(srv);

    // Restart (the disk is still full: reading needs no space) and drain the device.
    let srv = serve(&data, &cfg);
    let mut d = Raw::connect(srv.device);
    assert_eq!(d.hello("demo", &secret, 0).0, token);
    let mut got = 0;
    while let Got::Frame(b) = d.recv(Duration::from_secs(3)) {
        let (raw, _) = split_frame(&b, PROVIDER_MAX_BODY).unwrap().unwrap();
        if let Frame::Notify { msg_id, .. } = Frame::parse(raw).unwrap() {
            got += 1;
            d.send(&Frame::Ack { msg_id });
        }
    }
    assert_eq!(got, accepted.len(), "every accepted notification survives a full disk");
}
