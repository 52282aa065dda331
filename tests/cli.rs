//! The `pushgate` binary end to end: serve with embedded defaults, a device
//! and a push from the CLI, SIGTERM drains, a restart keeps tokens and the
//! demo secret, and config errors name the file and key.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{spawn_serve, Served};

const BIN: &str = env!("CARGO_BIN_EXE_pushgate");

/// Lines of a child's stdout, read on a thread so a test can wait with a timeout.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn serve(data_dir: &std::path::Path) -> Served {
    let args: [&std::ffi::OsStr; 4] =
        ["--shards".as_ref(), "2".as_ref(), "--data-dir".as_ref(), data_dir.as_ref()];
    spawn_serve(&args, "warn")
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn device(srv: &Served, secret_file: &std::path::Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["device", "--json", "--addr", &srv.device.to_string()])
        .arg("--secret-file")
        .arg(secret_file)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    (child, rx)
}

fn next_json(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    json(&rx.recv_timeout(Duration::from_secs(10)).expect("a line within 10 s"))
}

#[test]
fn serve_device_push_drain_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret_file = dir.path().join("device.secret");
    let srv = serve(&data);

    let (mut dev, rx) = device(&srv, &secret_file, &["--count", "1"]);
    let reg = next_json(&rx);
    assert_eq!(reg["event"], "registered");
    let token = reg["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 48);

    let out = Command::new(BIN)
        .args([
            "push",
            "--json",
            "--addr",
            &srv.provider.to_string(),
            "--secret",
            &srv.secret,
            "--token",
            &token,
        ])
        .arg("hello from the CLI")
        .output()
        .unwrap();
    assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
    let res = json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    assert_eq!(res["status"], "delivered");
    let note = next_json(&rx);
    assert_eq!(note["event"], "notification");
    assert_eq!(note["payload"], "hello from the CLI");
    assert_eq!(note["msg_id"], res["msg_id"]);
    assert!(dev.wait().unwrap().success(), "device exits 0 after --count 1");

    // A wrong app secret is refused with exit code 2.
    let bad = Command::new(BIN)
        .args([
            "push",
            "--addr",
            &srv.provider.to_string(),
            "--secret",
            "wrong-secret-0000000",
            "--token",
            &token,
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // SIGTERM: connected devices get GOAWAY shutdown and the server exits cleanly.
    let (mut watcher, wrx) = device(&srv, &secret_file, &[]);
    assert_eq!(next_json(&wrx)["event"], "registered");
    let mut srv = srv;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let goaway = next_json(&wrx);
    assert_eq!(goaway["event"], "goaway");
    assert_eq!(goaway["reason"], "shutdown");
    let status = wait_timeout(&mut srv.child, Duration::from_secs(15)).expect("server exits after SIGTERM");
    assert!(status.success());
    let _ = watcher.kill();
    let _ = watcher.wait();
    let old_secret = srv.secret.clone();
    drop(srv);

    // Restart on the same data directory: same demo secret, same token.
    let srv = serve(&data);
    assert_eq!(srv.secret, old_secret);
    let (mut dev, rx) = device(&srv, &secret_file, &["--count", "1", "--timeout", "1"]);
    assert_eq!(next_json(&rx)["token"], token.as_str());
    let _ = dev.kill();
    let _ = dev.wait();
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[limits]\ndevice_queue_cap = 0\n").unwrap();
    let out = Command::new(BIN).arg("serve").arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gw.toml") && err.contains("limits.device_queue_cap"), "{err}");
    std::fs::write(&cfg, "[server]\ndevice_listen = \"not an address\"\n").unwrap();
    let out = Command::new(BIN).arg("serve").arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("gw.toml") && err.contains("device_listen"), "{err}");
}

fn wait_timeout(child: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_corrupt_store_stops_serve_with_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(serve(&data)); // creates the store, then is killed
    let store = data.join("store");
    let mut files = Vec::new();
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "the store wrote files");
    for f in &files {
        std::fs::write(f, vec![0xA5; 256]).unwrap();
    }
    let out = Command::new(BIN)
        .args(["serve", "--device-listen", "127.0.0.1:0", "--provider-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve must refuse a corrupt store");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&store.display().to_string()), "the error names the store: {err}");
    for f in &files {
        assert_eq!(std::fs::read(f).unwrap(), vec![0xA5; 256], "{} was rewritten, not kept", f.display());
    }
}

#[test]
fn a_second_gateway_on_a_taken_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--device-listen", &addr, "--provider-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--store", "memory", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "must not share a port with another listener");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.to_lowercase().contains("in use"), "{err}");
    // And not with another pushgate either (which listens with SO_REUSEPORT).
    let first = serve(&dir.path().join("a"));
    let out = Command::new(BIN)
        .args(["serve", "--device-listen", &first.device.to_string(), "--provider-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--store", "memory", "--data-dir"])
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second pushgate must not split the first one's port");
}

#[test]
fn a_device_subscribes_and_gets_a_topic_push_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(&dir.path().join("data"));
    let secret_file = dir.path().join("device.secret");
    let (mut dev, rx) = device(&srv, &secret_file, &["--subscribe", "news", "--count", "2"]);
    assert_eq!(next_json(&rx)["event"], "registered");
    let sub = next_json(&rx);
    assert_eq!((sub["event"].as_str(), sub["topic"].as_str()), (Some("subscribed"), Some("news")));
    let push = |topic: &str, text: &str| {
        let out = Command::new(BIN)
            .args(["push", "--json", "--addr", &srv.provider.to_string(), "--secret", &srv.secret])
            .args(["--topic", topic, text])
            .output()
            .unwrap();
        assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
        json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap())
    };
    let res = push("news", "extra, extra");
    assert_eq!((res["topic"].as_str(), res["status"].as_str()), (Some("news"), Some("queued")));
    let note = next_json(&rx);
    assert_eq!((note["topic"].as_str(), note["payload"].as_str()), (Some("news"), Some("extra, extra")));
    assert_eq!(note["msg_id"], res["msg_id"]);
    push("sports", "not for this device");
    push("~all", "for everyone");
    let note = next_json(&rx);
    assert_eq!((note["topic"].as_str(), note["payload"].as_str()), (Some("~all"), Some("for everyone")));
    assert!(dev.wait().unwrap().success(), "device exits 0 after --count 2");
}
