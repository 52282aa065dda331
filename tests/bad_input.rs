//! Hostile and broken input: each gets its defined ERROR and closes only that
//! connection; slots are not leaked and everyone else carries on.

mod common;

use std::time::Duration;

use common::*;
use pushgate::proto::{ErrorCode, Frame, GoAwayReason, Status};

fn expect_error(r: &mut Raw, code: ErrorCode) {
    r.expect(|f| match f {
        Frame::Error { code: c, .. } => assert_eq!(c, code),
        other => panic!("expected ERROR {code}, got {other:?}"),
    });
    assert!(r.closed_within(Duration::from_secs(3)), "closed after ERROR {code}");
}

#[test]
fn each_bad_input_gets_its_error_and_others_carry_on() {
    let gw = start_gateway(test_config(2));
    let mut bystander = Raw::connect(gw.device_addr);
    let (token, _, _) = bystander.hello(APP, &secret("bystander"), 0);
    let mut prov = Raw::connect(gw.provider_addr);
    prov.login(APP, APP_SECRET);
    let baseline = gw.connections();

    let cases: Vec<(&str, bool, Vec<u8>, ErrorCode)> = vec![
        ("unknown type", true, vec![0x7f, 0x00], ErrorCode::UNKNOWN_FRAME_TYPE),
        ("overlong varint", true, vec![0x01, 0x80, 0x00], ErrorCode::MALFORMED_FRAME),
        ("four-byte length", true, vec![0x01, 0xff, 0xff, 0xff, 0x01], ErrorCode::MALFORMED_FRAME),
        ("length over device max", true, vec![0x01, 0x81, 0x80, 0x01], ErrorCode::FRAME_TOO_LARGE),
        ("ping before hello", true, vec![0x03, 0x00], ErrorCode::UNEXPECTED_FRAME),
        ("server frame from device", true, vec![0x04, 0x00], ErrorCode::UNEXPECTED_FRAME),
        ("provider frame on device port", true, vec![0x21, 0x00], ErrorCode::UNKNOWN_FRAME_TYPE),
        ("hello version 9", true, vec![0x01, 0x01, 0x09], ErrorCode::UNSUPPORTED_VERSION),
        ("hello truncated body", true, vec![0x01, 0x03, 0x01, 0x00, 0x00], ErrorCode::MALFORMED_FRAME),
        ("hello bad app id", true, hello_bytes("bad app", &[1; 16]), ErrorCode::MALFORMED_FRAME),
        ("hello short secret", true, hello_bytes(APP, &[1; 15]), ErrorCode::BAD_CREDENTIAL),
        ("hello unknown app", true, hello_bytes("nobody", &[1; 16]), ErrorCode::UNKNOWN_APP),
        ("push before auth", false, push_bytes(), ErrorCode::UNEXPECTED_FRAME),
        ("length over provider max", false, vec![0x25, 0x81, 0x80, 0x04], ErrorCode::FRAME_TOO_LARGE),
        ("auth hello version 2", false, vec![0x21, 0x01, 0x02], ErrorCode::UNSUPPORTED_VERSION),
    ];
    for (name, device, bytes, code) in cases {
        let addr = if device { gw.device_addr } else { gw.provider_addr };
        let mut r = Raw::connect(addr);
        r.send_bytes(&bytes);
        println!("case: {name}");
        expect_error(&mut r, code);
    }
    // A bad frame after a good handshake closes just that device.
    let mut d = Raw::connect(gw.device_addr);
    d.hello(APP, &secret("bad-later"), 0);
    d.send_bytes(&[0x06, 0x03, 1, 2, 3]); // ACK with a 3-byte body
    expect_error(&mut d, ErrorCode::MALFORMED_FRAME);
    let mut d = Raw::connect(gw.device_addr);
    d.hello(APP, &secret("hello-twice"), 0);
    d.send_bytes(&hello_bytes(APP, &secret("hello-twice")));
    expect_error(&mut d, ErrorCode::UNEXPECTED_FRAME);
    // Garbage after the error is ignored, not answered.
    let mut g = Raw::connect(gw.device_addr);
    let mut junk = vec![0x7f, 0x00];
    junk.extend(std::iter::repeat_n(0xee, 10_000));
    g.send_bytes(&junk);
    expect_error(&mut g, ErrorCode::UNKNOWN_FRAME_TYPE);

    assert!(
        wait_until(Duration::from_secs(5), || gw.connections() == baseline),
        "every slot was freed: {} open, {} expected",
        gw.connections(),
        baseline
    );
    // The bystanders never noticed.
    bystander.send(&Frame::Ping);
    bystander.expect(|f| assert_eq!(f, Frame::Pong));
    assert_eq!(prov.push(push_frame(1, token, 0, b"still here")).0, Status::DELIVERED);
    bystander.expect(|f| assert!(matches!(f, Frame::Notify { .. })));
}

#[test]
fn a_truncated_frame_then_silence_hits_the_handshake_deadline() {
    let mut cfg = test_config(1);
    cfg.limits.handshake_timeout_ms = 500;
    let gw = start_gateway(cfg);
    let mut d = Raw::connect(gw.device_addr);
    d.send_bytes(&hello_bytes(APP, &[7; 32])[..10]);
    expect_error(&mut d, ErrorCode::HANDSHAKE_TIMEOUT);
    let mut silent = Raw::connect(gw.provider_addr);
    expect_error(&mut silent, ErrorCode::HANDSHAKE_TIMEOUT);
    let mut half = Raw::connect(gw.provider_addr);
    half.send(&Frame::AuthHello { version: 1, app_id: APP });
    half.expect(|f| assert!(matches!(f, Frame::Challenge { .. })));
    expect_error(&mut half, ErrorCode::HANDSHAKE_TIMEOUT);
    assert!(wait_until(Duration::from_secs(3), || gw.connections() == 0));
}

#[test]
fn a_full_gateway_refuses_with_server_full_and_a_retry_hint() {
    let mut cfg = test_config(1);
    cfg.limits.max_connections = 3;
    cfg.limits.server_full_retry_ms = 1234;
    let gw = start_gateway(cfg);
    let mut held: Vec<Raw> = (0..3)
        .map(|i| {
            let mut d = Raw::connect(gw.device_addr);
            d.hello(APP, &secret(&format!("full{i}")), 0);
            d
        })
        .collect();
    let mut extra = Raw::connect(gw.device_addr);
    extra.expect(|f| assert_eq!(f, Frame::GoAway { reason: GoAwayReason::SERVER_FULL, reconnect_ms: 1234 }));
    assert!(extra.closed_within(Duration::from_secs(2)));
    drop(held.pop());
    assert!(wait_until(Duration::from_secs(3), || gw.connections() == 2));
    let mut again = Raw::connect(gw.device_addr);
    again.hello(APP, &secret("full-again"), 0);
}

#[test]
fn a_device_that_stops_reading_is_cut_off_and_keeps_its_notifications() {
    let mut cfg = test_config(1);
    cfg.limits.max_outbox_bytes = 16 * 1024;
    cfg.limits.device_max_in_flight = 20_000;
    cfg.limits.device_queue_cap = 20_000;
    let gw = start_gateway(cfg);
    let mut d = Raw::connect(gw.device_addr);
    let (token, _, _) = d.hello(APP, &secret("slow"), 0);
    let mut p = Raw::connect(gw.provider_addr);
    p.login(APP, APP_SECRET);
    let payload = vec![b'z'; 4000];
    // Push until the kernel's socket buffers and then the gateway's bounded
    // outbox are full; the device reads nothing meanwhile.
    let mut accepted = 0;
    let mut req = 0u32;
    while gw.devices_per_shard()[0] == 1 && req < 20_000 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            req += 1;
            Frame::Push(push_frame(req, token, u32::MAX, &payload)).encode(&mut batch);
        }
        p.send_bytes(&batch);
        for _ in 0..100 {
            let st = p.expect(|f| match f {
                Frame::Result { status, .. } => status,
                other => panic!("{other:?}"),
            });
            assert!(st == Status::DELIVERED || st == Status::QUEUED, "{st}");
            accepted += 1;
        }
    }
    assert!(req < 20_000, "the gateway never cut the silent device off");
    // Reading now, the device finds the notifications the socket held, then the reason.
    let mut before_goaway = 0;
    loop {
        match d.recv(Duration::from_secs(5)) {
            Got::Frame(b) if b[0] == pushgate::proto::frame::ftype::NOTIFY => before_goaway += 1,
            Got::Frame(b) => {
                assert_eq!(b, vec![0x07, 0x05, 0x05, 0, 0, 0, 0], "GOAWAY slow_consumer");
                break;
            }
            other => panic!("expected frames then GOAWAY, got {other:?}"),
        }
    }
    assert!(before_goaway > 0 && before_goaway < accepted);
    // Nothing was lost: every accepted notification comes on reconnect (unacked ones again).
    let mut back = Raw::connect(gw.device_addr);
    back.hello(APP, &secret("slow"), 0);
    let mut n = 0;
    while let Got::Frame(b) = back.recv(Duration::from_millis(1000)) {
        let id = u64::from_be_bytes(b[3..11].try_into().unwrap());
        back.send(&Frame::Ack { msg_id: id });
        n += 1;
    }
    assert_eq!(n, accepted, "everything accepted is delivered on reconnect");
}

fn hello_bytes(app: &str, secret: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    Frame::Hello(pushgate::proto::Hello { version: 1, keepalive_s: 0, app_id: app, secret }).encode(&mut v);
    v
}

fn push_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    Frame::Push(push_frame(1, pushgate::proto::Token([0; 24]), 0, b"")).encode(&mut v);
    v
}
