//! Two gateway processes behind a real HAProxy in TCP mode with
//! `send-proxy-v2` (to the second one with a CRC32C TLV, which it checks):
//! devices and pushes go through it, and the gateways see the original client
//! addresses, not HAProxy's.
//!
//! Needs `haproxy` on PATH (.ci/run installs it); skipped with a message
//! outside CI when it is missing.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect_from, push_frame, spawn_serve, Got, Raw, Served};
use pushgate::proto::frame::{split_frame, PROVIDER_MAX_BODY};
use pushgate::proto::{Frame, Status, Token};

const SECRET: &str = "haproxy-test-app-secret";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy_available() -> bool {
    Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success())
}

/// A gateway with PROXY protocol on both ports, sharing the token key file with its peers.
fn node(dir: &std::path::Path, name: &str) -> Served {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    let key = dir.join("shared.key");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndevice_proxy_protocol = true\nprovider_proxy_protocol = true\ntoken_key_file = {:?}\n\
             [store]\nkind = \"memory\"\n[[apps]]\nid = \"demo\"\nsecret = \"{SECRET}\"\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let args: [&std::ffi::OsStr; 6] = [
        "--shards".as_ref(),
        "2".as_ref(),
        "--config".as_ref(),
        cfg.as_ref(),
        "--data-dir".as_ref(),
        data.as_ref(),
    ];
    spawn_serve(&args, "warn,pushgate::shard=debug")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn devices_connected(admin: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter(|l| l.starts_with("pushgate_devices_connected"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn secret(i: usize) -> Vec<u8> {
    format!("haproxy-device-{i:02}-secret-bytes").into_bytes()
}

#[test]
fn devices_and_pushes_through_haproxy_with_proxy_protocol_v2() {
    if !haproxy_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must install haproxy (.ci/run does)");
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
    let (fd, fp) = (free_port(), free_port());
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 2000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend devices\n  bind 127.0.0.1:{fd}\n  default_backend gw_devices\n\
             backend gw_devices\n  balance roundrobin\n  server a {} send-proxy-v2\n  server b {} send-proxy-v2 proxy-v2-options crc32c\n\
             frontend providers\n  bind 127.0.0.1:{fp}\n  default_backend gw_providers\n\
             backend gw_providers\n  balance roundrobin\n  server a {} send-proxy-v2\n  server b {} send-proxy-v2 proxy-v2-options crc32c\n",
            a.device, b.device, a.provider, b.provider
        ),
    )
    .unwrap();
    let _haproxy =
        Proc(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg).stdout(Stdio::null()).spawn().unwrap());
    let front_d: SocketAddr = format!("127.0.0.1:{fd}").parse().unwrap();
    let front_p: SocketAddr = format!("127.0.0.1:{fp}").parse().unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(front_d).is_err() || TcpStream::connect(front_p).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Four devices from four source addresses; round robin puts two on each node.
    let mut devices: Vec<(Raw, Token)> = (0..4)
        .map(|i| {
            let mut d = connect_from(&format!("127.0.0.{}", 10 + i), front_d);
            let (t, _, _) = d.hello("demo", &secret(i), 0);
            (d, t)
        })
        .collect();
    assert!(common::wait_until(Duration::from_secs(3), || devices_connected(a.admin) == 2.0
        && devices_connected(b.admin) == 2.0));
    // Both nodes derive the same token from the same credential (shared key).
    let token_on = |n: &Served| {
        let mut direct = Raw::connect(n.device);
        direct.send_bytes(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 1\r\n");
        direct.hello("demo", &secret(99), 0).0
    };
    assert_eq!(token_on(&a), token_on(&b));

    // Two providers through the balancer: one lands on each node. Every device
    // is reached by the provider on its own node.
    let mut providers: Vec<Raw> = (0..2)
        .map(|_| {
            let mut p = Raw::connect(front_p);
            p.login("demo", SECRET);
            p
        })
        .collect();
    let mut req = 0;
    for (d, token) in devices.iter_mut() {
        let mut delivered = 0;
        for p in providers.iter_mut() {
            req += 1;
            let (st, _, _) = p.push(push_frame(req, *token, 0, b"via haproxy"));
            if st == Status::DELIVERED {
                delivered += 1;
            } else {
                assert_eq!(st, Status::NOT_DELIVERED, "the other node does not hold this device");
            }
        }
        assert_eq!(delivered, 1, "exactly the device's own node delivers");
        match d.recv(Duration::from_secs(5)) {
            Got::Frame(b) => {
                let (raw, _) = split_frame(&b, PROVIDER_MAX_BODY).unwrap().unwrap();
                assert!(matches!(Frame::parse(raw).unwrap(), Frame::Notify { payload: b"via haproxy", .. }));
            }
            other => panic!("{other:?}"),
        }
    }
    // The gateways saw the devices' own addresses, carried by PROXY v2, not HAProxy's.
    std::thread::sleep(Duration::from_millis(200));
    let logs = format!("{}{}", a.log.lock().unwrap(), b.log.lock().unwrap());
    for i in 0..4 {
        let src = format!("from 127.0.0.{}:", 10 + i);
        assert!(logs.contains(&src), "no connection logged {src}\n{logs}");
    }
}
