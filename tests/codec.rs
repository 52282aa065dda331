//! The wire contract of the sans-IO core, byte by byte: every frame round-trips,
//! every malformed input is refused with the documented error, and the session
//! rules admit exactly the frames each state allows.

use pushgate::proto::frame::{
    ftype, put_header, DEVICE_MAX_BODY, MAX_COLLAPSE, MAX_ERROR_TEXT, MAX_MULTICAST, MAX_PAYLOAD, NONCE_LEN,
    PROVIDER_MAX_BODY,
};
use pushgate::proto::session::auth_proof;
use pushgate::proto::{
    on_device_frame, on_provider_frame, split_frame, Apps, DeviceEvent, DeviceState, ErrorCode, Frame,
    FrameError, GoAwayReason, Hello, MultiPush, Notification, ProtoError, ProviderEvent, ProviderState, Push,
    RawFrame, Status, Token, TOKEN_LEN,
};

fn encode(f: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out);
    out
}

/// Encodes `f`, splits it off a stream with `max_body`, parses it, and checks
/// it comes back unchanged having used exactly its encoded length.
fn round_trip(f: Frame<'_>, max_body: usize) -> Vec<u8> {
    let buf = encode(&f);
    assert_eq!(buf.len(), f.encoded_len(), "encoded_len disagrees with encode for {f:?}");
    let (raw, used) = split_frame(&buf, max_body).unwrap().expect("a whole frame");
    assert_eq!(used, buf.len());
    assert_eq!(raw.ftype, f.ftype());
    assert_eq!(Frame::parse(raw), Ok(f));
    buf
}

/// `type | varint(len) | body`, with a correct shortest header.
fn framed(t: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, t, body.len());
    out.extend_from_slice(body);
    out
}

fn parse(t: u8, body: &[u8]) -> Result<Frame<'_>, FrameError> {
    Frame::parse(RawFrame { ftype: t, body })
}

fn tok(seed: u8) -> Token {
    let mut t = [0u8; TOKEN_LEN];
    for (i, b) in t.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    Token(t)
}

fn tokens(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| tok(i as u8).0).collect()
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn push<'a>(collapse: &'a [u8], payload: &'a [u8]) -> Push<'a> {
    let note = Notification { kind: 1, priority: 10, flags: 0x80, expiry: 1_900_000_000, collapse, payload };
    Push { req_id: 0xdead_beef, token: tok(9), note }
}

fn multi<'a>(tokens: &'a [u8], collapse: &'a [u8], payload: &'a [u8]) -> MultiPush<'a> {
    let note = Notification { kind: 2, priority: 5, flags: 0, expiry: 0, collapse, payload };
    MultiPush { req_id: 77, tokens, note }
}

fn hello(secret: &[u8]) -> Frame<'_> {
    Frame::Hello(Hello { version: 1, keepalive_s: 240, app_id: "com.example.chat", secret })
}

// ---------------------------------------------------------------- round trips

#[test]
fn every_device_port_frame_round_trips() {
    let secret16 = bytes(16);
    let secret64 = bytes(64);
    let payload = bytes(MAX_PAYLOAD);
    let frames = [
        hello(&secret16),
        hello(&secret64),
        Frame::Hello(Hello { version: 1, keepalive_s: 0, app_id: "a", secret: &secret16 }),
        Frame::Welcome { token: tok(1), heartbeat_s: 300, missed: 12 },
        Frame::Ping,
        Frame::Pong,
        Frame::Notify { msg_id: u64::MAX, kind: 0, priority: 10, payload: &[] },
        Frame::Notify { msg_id: 1, kind: 2, priority: 5, payload: &payload },
        Frame::Ack { msg_id: 0x0102_0304_0506_0708 },
        Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 5000 },
        Frame::Error { code: ErrorCode::BAD_CREDENTIAL, text: "" },
        Frame::Error { code: ErrorCode::INTERNAL, text: "caf\u{e9} \u{1f600}" },
    ];
    for f in frames {
        round_trip(f, DEVICE_MAX_BODY);
    }
}

#[test]
fn every_provider_port_frame_round_trips() {
    let app64 = "x".repeat(64);
    let collapse = bytes(MAX_COLLAPSE);
    let payload = bytes(MAX_PAYLOAD);
    let small = bytes(200);
    let toks1 = tokens(1);
    let toks1000 = tokens(MAX_MULTICAST);
    let mut entries = Vec::new();
    for i in 0..MAX_MULTICAST as u64 {
        pushgate::proto::frame::put_multi_entry(&mut entries, Status((i % 10) as u8), i << 20);
    }
    let frames = [
        Frame::AuthHello { version: 1, app_id: "com.example-app_1" },
        Frame::AuthHello { version: 1, app_id: &app64 },
        Frame::Challenge { nonce: [0xa5; NONCE_LEN] },
        Frame::Auth { proof: [0x5a; NONCE_LEN] },
        Frame::AuthOk { max_in_flight: 1024 },
        Frame::Push(push(&[], &[])),
        Frame::Push(push(&collapse, &small)),
        Frame::Push(push(&collapse, &payload)),
        Frame::Result { req_id: 3, status: Status::RATE_LIMITED, msg_id: 99, info: 250 },
        Frame::MultiPush(multi(&toks1, &[], &small)),
        Frame::MultiPush(multi(&toks1000, &collapse, &payload)),
        Frame::MultiResult { req_id: 8, entries: &[] },
        Frame::MultiResult { req_id: 8, entries: &entries },
        Frame::Ping,
        Frame::Pong,
        Frame::Error { code: ErrorCode::AUTH_FAILED, text: "authentication failed" },
    ];
    for f in frames {
        round_trip(f, PROVIDER_MAX_BODY);
    }
}

#[test]
fn largest_multi_push_uses_a_three_byte_length_and_fits_the_provider_port() {
    let toks = tokens(MAX_MULTICAST);
    let collapse = bytes(MAX_COLLAPSE);
    let payload = bytes(MAX_PAYLOAD);
    let f = Frame::MultiPush(multi(&toks, &collapse, &payload));
    let buf = round_trip(f, PROVIDER_MAX_BODY);
    assert_eq!(buf.len(), 4 + f.body_len());
    let Ok(Frame::MultiPush(m)) = Frame::parse(split_frame(&buf, PROVIDER_MAX_BODY).unwrap().unwrap().0)
    else {
        panic!("not a MULTI_PUSH");
    };
    assert_eq!(m.token_count(), MAX_MULTICAST);
    assert!(m.tokens().eq((0..MAX_MULTICAST).map(|i| tok(i as u8))));
    // The same frame is too large for the device port, and is refused on its header alone.
    assert_eq!(split_frame(&buf[..4], DEVICE_MAX_BODY), Err(FrameError::TooLarge));
}

#[test]
fn length_varint_grows_at_128_and_16384() {
    // NOTIFY body = 10 + payload.
    let p127 = bytes(117);
    let p128 = bytes(118);
    let b127 =
        round_trip(Frame::Notify { msg_id: 5, kind: 0, priority: 10, payload: &p127 }, DEVICE_MAX_BODY);
    let b128 =
        round_trip(Frame::Notify { msg_id: 5, kind: 0, priority: 10, payload: &p128 }, DEVICE_MAX_BODY);
    assert_eq!(&b127[..2], &[ftype::NOTIFY, 0x7f]);
    assert_eq!(b127.len(), 2 + 127);
    assert_eq!(&b128[..3], &[ftype::NOTIFY, 0x80, 0x01]);
    assert_eq!(b128.len(), 3 + 128);

    // MULTI_PUSH body = 14 + 24 * count + collapse + payload: 600 tokens is 14414.
    let toks = tokens(600);
    let p16383 = bytes(16383 - 14414);
    let p16384 = bytes(16384 - 14414);
    let b16383 = round_trip(Frame::MultiPush(multi(&toks, &[], &p16383)), PROVIDER_MAX_BODY);
    let b16384 = round_trip(Frame::MultiPush(multi(&toks, &[], &p16384)), PROVIDER_MAX_BODY);
    assert_eq!(&b16383[..3], &[ftype::MULTI_PUSH, 0xff, 0x7f]);
    assert_eq!(&b16384[..4], &[ftype::MULTI_PUSH, 0x80, 0x80, 0x01]);
}

#[test]
fn back_to_back_frames_split_one_at_a_time() {
    let payload = bytes(300);
    let frames = [
        Frame::Ping,
        Frame::Notify { msg_id: 1, kind: 0, priority: 10, payload: &payload },
        Frame::Ack { msg_id: 1 },
        Frame::Error { code: ErrorCode::MALFORMED_FRAME, text: "x" },
        Frame::Pong,
    ];
    let mut stream = Vec::new();
    for f in &frames {
        f.encode(&mut stream);
    }
    let mut at = 0;
    for f in frames {
        let (raw, used) = split_frame(&stream[at..], DEVICE_MAX_BODY).unwrap().unwrap();
        assert_eq!(Frame::parse(raw), Ok(f));
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(split_frame(&stream[at..], DEVICE_MAX_BODY), Ok(None));
}

#[test]
fn error_text_over_the_limit_is_cut_to_200_bytes() {
    let long = "e".repeat(MAX_ERROR_TEXT + 50);
    let f = Frame::Error { code: ErrorCode::INTERNAL, text: &long };
    let buf = encode(&f);
    assert_eq!(buf.len(), f.encoded_len());
    let (raw, used) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
    assert_eq!(used, buf.len());
    assert_eq!(
        Frame::parse(raw),
        Ok(Frame::Error { code: ErrorCode::INTERNAL, text: &long[..MAX_ERROR_TEXT] })
    );
}

#[test]
fn error_text_cut_inside_a_multibyte_char_still_frames_correctly() {
    // 199 ASCII bytes then a 2-byte char straddling the 200-byte limit: the cut lands at 199.
    let text = format!("{}\u{e9}tail", "a".repeat(MAX_ERROR_TEXT - 1));
    let f = Frame::Error { code: ErrorCode::INTERNAL, text: &text };
    let mut stream = encode(&f);
    Frame::Ping.encode(&mut stream);
    let (raw, used) = split_frame(&stream, DEVICE_MAX_BODY).unwrap().expect("a whole ERROR frame");
    assert_eq!(used, f.encoded_len());
    assert_eq!(
        Frame::parse(raw),
        Ok(Frame::Error { code: ErrorCode::INTERNAL, text: &text[..MAX_ERROR_TEXT - 1] })
    );
    let (next, _) = split_frame(&stream[used..], DEVICE_MAX_BODY).unwrap().expect("the PING after it");
    assert_eq!(Frame::parse(next), Ok(Frame::Ping));
}

// ---------------------------------------------------------------- framing errors

#[test]
fn incomplete_header_or_body_waits_for_more_bytes() {
    for buf in [&[][..], &[ftype::PING], &[ftype::NOTIFY, 0x80], &[ftype::NOTIFY, 0x80, 0x80]] {
        assert_eq!(split_frame(buf, DEVICE_MAX_BODY), Ok(None), "{buf:02x?}");
    }
    let payload = bytes(200);
    let buf = encode(&Frame::Notify { msg_id: 1, kind: 0, priority: 10, payload: &payload });
    for n in 0..buf.len() {
        assert_eq!(split_frame(&buf[..n], DEVICE_MAX_BODY), Ok(None), "prefix of {n} bytes");
    }
}

#[test]
fn non_shortest_length_is_malformed() {
    let cases: [&[u8]; 4] = [
        &[ftype::PING, 0x80, 0x00],
        &[ftype::PING, 0x80, 0x80, 0x00],
        &[ftype::ACK, 0x88, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
        &[ftype::NOTIFY, 0xff, 0x80, 0x00],
    ];
    for buf in cases {
        assert_eq!(split_frame(buf, PROVIDER_MAX_BODY), Err(FrameError::Malformed), "{buf:02x?}");
    }
}

#[test]
fn four_byte_length_is_malformed_without_waiting_for_the_fourth_byte() {
    assert_eq!(
        split_frame(&[ftype::PING, 0x81, 0x81, 0x81, 0x01], PROVIDER_MAX_BODY),
        Err(FrameError::Malformed)
    );
    assert_eq!(split_frame(&[ftype::PING, 0x81, 0x81, 0x81], PROVIDER_MAX_BODY), Err(FrameError::Malformed));
}

#[test]
fn length_over_the_port_maximum_is_refused_before_the_body_arrives() {
    for (max, name) in [(DEVICE_MAX_BODY, "device"), (PROVIDER_MAX_BODY, "provider")] {
        let mut at_max = Vec::new();
        put_header(&mut at_max, ftype::PUSH, max);
        assert_eq!(split_frame(&at_max, max), Ok(None), "{name}: a body of exactly the max is legal");
        let mut over = Vec::new();
        put_header(&mut over, ftype::PUSH, max + 1);
        assert_eq!(split_frame(&over, max), Err(FrameError::TooLarge), "{name}");
    }
    // The provider port's legal maximum is too large for the device port.
    let mut hdr = Vec::new();
    put_header(&mut hdr, ftype::NOTIFY, PROVIDER_MAX_BODY);
    assert_eq!(split_frame(&hdr, DEVICE_MAX_BODY), Err(FrameError::TooLarge));
}

#[test]
fn undefined_type_bytes_are_unknown_type() {
    for t in [0x00, 0x0e, 0x20, 0x32, 0x7f, 0xff] {
        let buf = framed(t, &[]);
        let (raw, used) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
        assert_eq!(used, 2);
        assert_eq!(Frame::parse(raw), Err(FrameError::UnknownType(t)));
    }
}

// ---------------------------------------------------------------- body errors

#[test]
fn fixed_size_bodies_refuse_trailing_and_missing_bytes() {
    let cases: [(u8, usize); 9] = [
        (ftype::PING, 0),
        (ftype::PONG, 0),
        (ftype::WELCOME, TOKEN_LEN + 6),
        (ftype::ACK, 8),
        (ftype::GOAWAY, 5),
        (ftype::CHALLENGE, NONCE_LEN),
        (ftype::AUTH, NONCE_LEN),
        (ftype::AUTH_OK, 4),
        (ftype::RESULT, 21),
    ];
    for (t, size) in cases {
        let body = bytes(size + 1);
        assert!(parse(t, &body[..size]).is_ok(), "type {t:#04x} with {size} bytes");
        assert_eq!(parse(t, &body[..size + 1]), Err(FrameError::Malformed), "type {t:#04x} trailing byte");
        if size > 0 {
            assert_eq!(
                parse(t, &body[..size - 1]),
                Err(FrameError::Malformed),
                "type {t:#04x} one byte short"
            );
        }
    }
    // ERROR's code byte is required.
    assert_eq!(parse(ftype::ERROR, &[]), Err(FrameError::Malformed));
}

#[test]
fn variable_bodies_refuse_short_fields_and_trailing_bytes() {
    let secret = bytes(16);
    let hello_buf = encode(&hello(&secret));
    let hello_body = &hello_buf[2..];
    // Cut anywhere inside the fixed fields or the length-prefixed ones.
    for n in 0..hello_body.len() {
        assert_eq!(parse(ftype::HELLO, &hello_body[..n]), Err(FrameError::Malformed), "HELLO cut at {n}");
    }
    let mut trailing = hello_body.to_vec();
    trailing.push(0);
    assert_eq!(parse(ftype::HELLO, &trailing), Err(FrameError::Malformed));

    let ah = encode(&Frame::AuthHello { version: 1, app_id: "app" });
    for n in 0..ah.len() - 2 {
        assert_eq!(
            parse(ftype::AUTH_HELLO, &ah[2..2 + n]),
            Err(FrameError::Malformed),
            "AUTH_HELLO cut at {n}"
        );
    }
    let mut ah_trailing = ah[2..].to_vec();
    ah_trailing.push(b'x');
    assert_eq!(parse(ftype::AUTH_HELLO, &ah_trailing), Err(FrameError::Malformed));

    // PUSH: everything up to and including the collapse id is required; the payload is the rest.
    let collapse = bytes(10);
    let p = encode(&Frame::Push(push(&collapse, &[])));
    let fixed = p.len() - 2;
    for n in 0..fixed {
        assert_eq!(parse(ftype::PUSH, &p[2..2 + n]), Err(FrameError::Malformed), "PUSH cut at {n}");
    }

    // MULTI_PUSH announcing 2 tokens but carrying 1 (and nothing after it).
    let toks = tokens(1);
    let mp = encode(&Frame::MultiPush(multi(&toks, &[], &[])));
    let mut body = mp[2..].to_vec();
    body[5] = 2;
    assert_eq!(parse(ftype::MULTI_PUSH, &body), Err(FrameError::Malformed));

    // MULTI_RESULT announcing 2 entries but carrying 1, or carrying a stray byte.
    let mut mr = vec![0, 0, 0, 1, 0, 2];
    mr.extend_from_slice(&[0; 9]);
    assert_eq!(parse(ftype::MULTI_RESULT, &mr), Err(FrameError::Malformed));
    mr[5] = 1;
    assert!(parse(ftype::MULTI_RESULT, &mr).is_ok());
    mr.push(0);
    assert_eq!(parse(ftype::MULTI_RESULT, &mr), Err(FrameError::Malformed));
}

#[test]
fn app_ids_must_be_1_to_64_of_the_allowed_bytes() {
    let secret = bytes(16);
    let hello_body = |app: &[u8]| {
        let mut b = vec![1, 0, 30, app.len() as u8];
        b.extend_from_slice(app);
        b.push(secret.len() as u8);
        b.extend_from_slice(&secret);
        b
    };
    let auth_hello_body = |app: &[u8]| {
        let mut b = vec![1, app.len() as u8];
        b.extend_from_slice(app);
        b
    };
    let ok64 = "A".repeat(64);
    let bad65 = "A".repeat(65);
    for good in ["a", "Com.Example_app-9", ok64.as_str()] {
        assert!(parse(ftype::HELLO, &hello_body(good.as_bytes())).is_ok(), "{good}");
        assert!(parse(ftype::AUTH_HELLO, &auth_hello_body(good.as_bytes())).is_ok(), "{good}");
    }
    let bad: [&[u8]; 7] =
        [b"", bad65.as_bytes(), b"app id", b"app/x", b"app:x", "app\u{e9}".as_bytes(), b"a\0"];
    for app in bad {
        assert_eq!(parse(ftype::HELLO, &hello_body(app)), Err(FrameError::Malformed), "HELLO {app:?}");
        assert_eq!(
            parse(ftype::AUTH_HELLO, &auth_hello_body(app)),
            Err(FrameError::Malformed),
            "AUTH_HELLO {app:?}"
        );
    }
}

#[test]
fn collapse_id_over_64_bytes_is_malformed_in_push_and_multi_push() {
    let c64 = bytes(MAX_COLLAPSE);
    let c65 = bytes(MAX_COLLAPSE + 1);
    let toks = tokens(3);
    let ok_push = encode(&Frame::Push(push(&c64, b"hi")));
    let bad_push = encode(&Frame::Push(push(&c65, b"hi")));
    assert!(parse(ftype::PUSH, &ok_push[2..]).is_ok());
    assert_eq!(parse(ftype::PUSH, &bad_push[2..]), Err(FrameError::Malformed));
    let ok_multi = encode(&Frame::MultiPush(multi(&toks, &c64, b"hi")));
    let bad_multi = encode(&Frame::MultiPush(multi(&toks, &c65, b"hi")));
    assert!(parse(ftype::MULTI_PUSH, &ok_multi[3..]).is_ok());
    assert_eq!(parse(ftype::MULTI_PUSH, &bad_multi[3..]), Err(FrameError::Malformed));
}

#[test]
fn notify_payload_over_4096_is_malformed() {
    let p = bytes(MAX_PAYLOAD + 1);
    let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 10];
    body.extend_from_slice(&p[..MAX_PAYLOAD]);
    assert!(parse(ftype::NOTIFY, &body).is_ok());
    body.push(p[MAX_PAYLOAD]);
    assert_eq!(parse(ftype::NOTIFY, &body), Err(FrameError::Malformed));
}

#[test]
fn multicast_count_must_be_1_to_1000() {
    let body_with = |count: u16, ntokens: usize| {
        let mut b = 42u32.to_be_bytes().to_vec();
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&tokens(ntokens));
        b.extend_from_slice(&[0, 10, 0, 0, 0, 0, 0, 0]); // kind, priority, flags, expiry, no collapse
        b.extend_from_slice(b"payload");
        b
    };
    assert_eq!(parse(ftype::MULTI_PUSH, &body_with(0, 0)), Err(FrameError::Malformed));
    assert!(parse(ftype::MULTI_PUSH, &body_with(1000, 1000)).is_ok());
    assert_eq!(parse(ftype::MULTI_PUSH, &body_with(1001, 1001)), Err(FrameError::Malformed));
}

#[test]
fn error_text_must_be_utf8_and_at_most_200_bytes() {
    assert_eq!(parse(ftype::ERROR, &[5, b'o', 0xff, b'k']), Err(FrameError::Malformed));
    assert_eq!(parse(ftype::ERROR, &[5, 0xc3]), Err(FrameError::Malformed)); // a cut 2-byte char
    let mut body = vec![5];
    body.extend_from_slice(&[b'x'; MAX_ERROR_TEXT]);
    assert_eq!(
        parse(ftype::ERROR, &body),
        Ok(Frame::Error { code: ErrorCode::UNEXPECTED_FRAME, text: &"x".repeat(MAX_ERROR_TEXT) })
    );
    body.push(b'x');
    assert_eq!(parse(ftype::ERROR, &body), Err(FrameError::Malformed));
}

// ---------------------------------------------------------------- device session

fn device(state: DeviceState, f: &Frame<'_>) -> Result<(), ProtoError> {
    let buf = encode(f);
    let (raw, _) = split_frame(&buf, DEVICE_MAX_BODY)?.expect("whole frame");
    on_device_frame(state, raw).map(|_| ())
}

#[test]
fn device_handshake_accepts_a_valid_hello_only() {
    for n in [16, 64] {
        let secret = bytes(n);
        let buf = encode(&hello(&secret));
        let (raw, _) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
        let Ok(DeviceEvent::Hello(h)) = on_device_frame(DeviceState::AwaitHello, raw) else {
            panic!("secret of {n} bytes refused");
        };
        assert_eq!((h.version, h.keepalive_s, h.app_id, h.secret), (1, 240, "com.example.chat", &secret[..]));
    }
    let before_hello = [
        Frame::Ping,
        Frame::Pong,
        Frame::Ack { msg_id: 1 },
        Frame::Welcome { token: tok(1), heartbeat_s: 1, missed: 0 },
        Frame::Notify { msg_id: 1, kind: 0, priority: 10, payload: b"x" },
        Frame::GoAway { reason: GoAwayReason::SHUTDOWN, reconnect_ms: 0 },
        Frame::Error { code: ErrorCode::INTERNAL, text: "" },
    ];
    for f in before_hello {
        assert_eq!(device(DeviceState::AwaitHello, &f), Err(ProtoError::Unexpected(f.ftype())), "{f:?}");
    }
}

#[test]
fn device_hello_with_another_version_is_unsupported_version() {
    // A v2 HELLO may lay out its body differently; only the version byte is read.
    let buf = framed(ftype::HELLO, &[2, 0xde, 0xad]);
    let (raw, _) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
    let err = on_device_frame(DeviceState::AwaitHello, raw).unwrap_err();
    assert_eq!(err, ProtoError::UnsupportedVersion(2));
    assert_eq!(err.code(), ErrorCode(1));
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn device_secret_outside_16_to_64_bytes_is_bad_credential() {
    for n in [0, 15, 65, 255] {
        let secret = bytes(n);
        let err = device(DeviceState::AwaitHello, &hello(&secret)).unwrap_err();
        assert_eq!(err, ProtoError::BadCredential, "secret of {n} bytes");
        assert_eq!(err.code(), ErrorCode(9));
    }
}

#[test]
fn ready_device_may_ping_and_ack_but_not_hello_again() {
    assert!(matches!(device(DeviceState::Ready, &Frame::Ping), Ok(())));
    let buf = encode(&Frame::Ack { msg_id: 42 });
    let (raw, _) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
    assert_eq!(on_device_frame(DeviceState::Ready, raw), Ok(DeviceEvent::Ack(42)));
    let secret = bytes(16);
    assert_eq!(device(DeviceState::Ready, &hello(&secret)), Err(ProtoError::Unexpected(ftype::HELLO)));
    let notify = Frame::Notify { msg_id: 1, kind: 0, priority: 10, payload: b"" };
    assert_eq!(device(DeviceState::Ready, &notify), Err(ProtoError::Unexpected(ftype::NOTIFY)));
}

#[test]
fn provider_frames_on_the_device_port_are_unknown_type() {
    // Provider-port types are not defined on the device port: UNKNOWN_FRAME_TYPE,
    // in either state, when the body is well formed.
    let toks = tokens(2);
    let frames = [
        Frame::Push(push(b"c", b"{}")),
        Frame::MultiPush(multi(&toks, &[], b"{}")),
        Frame::AuthHello { version: 1, app_id: "app" },
        Frame::Auth { proof: [0; NONCE_LEN] },
    ];
    for state in [DeviceState::AwaitHello, DeviceState::Ready] {
        for f in &frames {
            let err = device(state, f).unwrap_err();
            assert_eq!(err, ProtoError::Frame(FrameError::UnknownType(f.ftype())), "{state:?} {f:?}");
            assert_eq!(err.code(), ErrorCode(4));
        }
    }
    // The port check comes before the body is parsed: a malformed PUSH body on
    // the device port is still an unknown type there.
    let buf = framed(ftype::PUSH, &[1, 2, 3]);
    let (raw, _) = split_frame(&buf, DEVICE_MAX_BODY).unwrap().unwrap();
    assert_eq!(
        on_device_frame(DeviceState::Ready, raw),
        Err(ProtoError::Frame(FrameError::UnknownType(ftype::PUSH)))
    );
}

// ---------------------------------------------------------------- provider session

const APP: &str = "com.example.backend";
const SECRET: &[u8] = b"provider secret of the example backend";

fn apps() -> Apps {
    let mut a = Apps::new();
    a.add("other.app", b"another secret");
    a.add(APP, SECRET);
    a
}

fn provider<'a>(
    state: &mut ProviderState,
    buf: &'a [u8],
    apps: &Apps,
    nonce: [u8; NONCE_LEN],
) -> Result<ProviderEvent<'a>, ProtoError> {
    let (raw, used) = split_frame(buf, PROVIDER_MAX_BODY)?.expect("whole frame");
    assert_eq!(used, buf.len());
    on_provider_frame(state, raw, apps, nonce)
}

#[test]
fn provider_logs_in_with_the_right_proof_and_may_then_push() {
    let apps = apps();
    let nonce = [0x3c; NONCE_LEN];
    let mut st = ProviderState::AwaitHello;
    let ah = encode(&Frame::AuthHello { version: 1, app_id: APP });
    assert_eq!(provider(&mut st, &ah, &apps, nonce), Ok(ProviderEvent::Challenge(nonce)));
    assert_eq!(st, ProviderState::AwaitAuth { app: 1, nonce });

    let auth = encode(&Frame::Auth { proof: auth_proof(SECRET, APP, &nonce) });
    // The nonce passed with later frames is only for new logins; the challenge in the state counts.
    assert_eq!(provider(&mut st, &auth, &apps, [0; NONCE_LEN]), Ok(ProviderEvent::Authenticated { app: 1 }));
    assert_eq!(st, ProviderState::Ready { app: 1 });

    let p = push(b"", b"{\"alert\":\"hi\"}");
    let buf = encode(&Frame::Push(p));
    assert_eq!(provider(&mut st, &buf, &apps, nonce), Ok(ProviderEvent::Push(p)));
    let toks = tokens(5);
    let m = multi(&toks, b"c", b"{}");
    let buf = encode(&Frame::MultiPush(m));
    assert_eq!(provider(&mut st, &buf, &apps, nonce), Ok(ProviderEvent::MultiPush(m)));
    assert_eq!(provider(&mut st, &encode(&Frame::Ping), &apps, nonce), Ok(ProviderEvent::Ping));
    // A second login on an authenticated connection is refused.
    assert_eq!(provider(&mut st, &ah, &apps, nonce), Err(ProtoError::Unexpected(ftype::AUTH_HELLO)));
    assert_eq!(st, ProviderState::Ready { app: 1 });
}

#[test]
fn provider_with_a_wrong_proof_is_auth_failed() {
    let apps = apps();
    let nonce = [7; NONCE_LEN];
    let other_nonce = [8; NONCE_LEN];
    let wrong = [
        auth_proof(b"not the secret", APP, &nonce),
        auth_proof(SECRET, APP, &other_nonce), // a proof replayed from another challenge
        auth_proof(SECRET, "other.app", &nonce),
        auth_proof(b"another secret", "other.app", &nonce),
        [0; NONCE_LEN],
    ];
    for proof in wrong {
        let mut st = ProviderState::AwaitHello;
        let ah = encode(&Frame::AuthHello { version: 1, app_id: APP });
        provider(&mut st, &ah, &apps, nonce).unwrap();
        let err = provider(&mut st, &encode(&Frame::Auth { proof }), &apps, nonce).unwrap_err();
        assert_eq!(err, ProtoError::AuthFailed);
        assert_eq!(err.code(), ErrorCode(7));
        assert!(!matches!(st, ProviderState::Ready { .. }));
    }
}

#[test]
fn provider_naming_an_unconfigured_app_is_unknown_app() {
    let mut st = ProviderState::AwaitHello;
    let ah = encode(&Frame::AuthHello { version: 1, app_id: "com.example.nope" });
    let err = provider(&mut st, &ah, &apps(), [1; NONCE_LEN]).unwrap_err();
    assert_eq!(err, ProtoError::UnknownApp);
    assert_eq!(err.code(), ErrorCode(8));
    assert_eq!(st, ProviderState::AwaitHello);
}

#[test]
fn provider_auth_hello_with_another_version_is_unsupported_version() {
    let mut st = ProviderState::AwaitHello;
    let buf = framed(ftype::AUTH_HELLO, &[9, 0xff]);
    assert_eq!(provider(&mut st, &buf, &apps(), [1; NONCE_LEN]), Err(ProtoError::UnsupportedVersion(9)));
}

#[test]
fn provider_may_not_push_or_skip_steps_before_auth() {
    let apps = apps();
    let nonce = [2; NONCE_LEN];
    let toks = tokens(1);
    let early = [
        Frame::Push(push(b"", b"x")),
        Frame::MultiPush(multi(&toks, b"", b"x")),
        Frame::Ping,
        Frame::Auth { proof: auth_proof(SECRET, APP, &nonce) },
    ];
    for f in &early {
        let mut st = ProviderState::AwaitHello;
        let err = provider(&mut st, &encode(f), &apps, nonce).unwrap_err();
        assert_eq!(err, ProtoError::Unexpected(f.ftype()), "{f:?} before AUTH_HELLO");
        assert_eq!(err.code(), ErrorCode(5));
        assert_eq!(st, ProviderState::AwaitHello);
    }
    for f in &early[..3] {
        let mut st = ProviderState::AwaitAuth { app: 1, nonce };
        let err = provider(&mut st, &encode(f), &apps, nonce).unwrap_err();
        assert_eq!(err, ProtoError::Unexpected(f.ftype()), "{f:?} before AUTH");
        assert_eq!(st, ProviderState::AwaitAuth { app: 1, nonce });
    }
}

#[test]
fn device_frames_on_the_provider_port_are_unknown_type() {
    // Symmetric with the device port: a type defined only on the other port
    // is not defined here, so it is UNKNOWN_FRAME_TYPE, checked before parsing.
    let secret = bytes(16);
    let mut st = ProviderState::Ready { app: 1 };
    let buf = encode(&hello(&secret));
    assert_eq!(
        provider(&mut st, &buf, &apps(), [0; NONCE_LEN]),
        Err(ProtoError::Frame(FrameError::UnknownType(ftype::HELLO)))
    );
    let buf = encode(&Frame::Ack { msg_id: 1 });
    assert_eq!(
        provider(&mut st, &buf, &apps(), [0; NONCE_LEN]),
        Err(ProtoError::Frame(FrameError::UnknownType(ftype::ACK)))
    );
}

// ---------------------------------------------------------------- wire codes

#[test]
fn every_protocol_error_maps_to_its_documented_wire_code() {
    let table = [
        (ProtoError::UnsupportedVersion(2), 1, "unsupported_version"),
        (ProtoError::Frame(FrameError::Malformed), 2, "malformed_frame"),
        (ProtoError::Frame(FrameError::TooLarge), 3, "frame_too_large"),
        (ProtoError::Frame(FrameError::UnknownType(0x99)), 4, "unknown_frame_type"),
        (ProtoError::Unexpected(ftype::PUSH), 5, "unexpected_frame"),
        (ProtoError::HandshakeTimeout, 6, "handshake_timeout"),
        (ProtoError::AuthFailed, 7, "auth_failed"),
        (ProtoError::UnknownApp, 8, "unknown_app"),
        (ProtoError::BadCredential, 9, "bad_credential"),
    ];
    for (err, code, name) in table {
        assert_eq!(err.code(), ErrorCode(code), "{err:?}");
        assert_eq!(err.code().name(), name);
        assert!(!err.detail().is_empty());
        // The ERROR frame a connection is closed with carries the code and detail intact.
        let detail = err.detail();
        let f = Frame::Error { code: err.code(), text: &detail };
        round_trip(f, DEVICE_MAX_BODY);
    }
    assert_eq!(FrameError::UnknownType(1).code(), ErrorCode::UNKNOWN_FRAME_TYPE);
}

#[test]
fn token_shard_is_stable_and_in_range() {
    let t = tok(3);
    for n in [1, 2, 3, 8, 64] {
        assert!(t.shard(n) < n);
        assert_eq!(t.shard(n), t.shard(n));
    }
    assert_eq!(t.shard(0), 0, "zero shards is treated as one");
    // Routing spreads tokens: 4000 distinct tokens over 4 shards leave none nearly empty.
    let key = pushgate::proto::TokenKey::new([4; 32]);
    let mut counts = [0usize; 4];
    for i in 0..4000u32 {
        counts[key.derive("app", &i.to_be_bytes()).shard(4)] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}

// ---------------------------------------------------------------- lifecycle frames

#[test]
fn lifecycle_frames_round_trip_and_refuse_bad_fields() {
    use pushgate::proto::frame::{feedback_entries, FEEDBACK_ENTRY, MAX_FEEDBACK};
    let token = Token([9; TOKEN_LEN]);
    let mut entries = Vec::new();
    for i in 0..MAX_FEEDBACK as u64 {
        entries.extend_from_slice(&token.0);
        entries.extend_from_slice(&i.to_be_bytes());
    }
    let frames = [
        Frame::Unregister,
        Frame::Feedback { req_id: 1, since_ms: u64::MAX, after: token },
        Frame::SubscribeReceipts,
        Frame::FeedbackResult { req_id: 2, more: true, entries: &entries },
        Frame::FeedbackResult { req_id: 3, more: false, entries: &[] },
        Frame::Receipt { token, msg_id: 7, acked_at_ms: 8 },
    ];
    for f in frames {
        let buf = encode(&f);
        let (raw, used) = split_frame(&buf, PROVIDER_MAX_BODY).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(Frame::parse(raw), Ok(f));
    }
    assert_eq!(feedback_entries(&entries).nth(5), Some((token, 5)));
    // `more` is a boolean byte; more than 800 entries is malformed.
    let mut body = vec![0, 0, 0, 1, 2, 0, 0];
    assert_eq!(
        Frame::parse(RawFrame { ftype: ftype::FEEDBACK_RESULT, body: &body }),
        Err(FrameError::Malformed)
    );
    body[4] = 0;
    body[5..7].copy_from_slice(&(MAX_FEEDBACK as u16 + 1).to_be_bytes());
    body.extend(std::iter::repeat_n(0, (MAX_FEEDBACK + 1) * FEEDBACK_ENTRY));
    assert_eq!(
        Frame::parse(RawFrame { ftype: ftype::FEEDBACK_RESULT, body: &body }),
        Err(FrameError::Malformed)
    );
    // UNREGISTER is legal only once registered.
    let (raw, _) = split_frame(&[ftype::UNREGISTER, 0], DEVICE_MAX_BODY).unwrap().unwrap();
    assert_eq!(on_device_frame(DeviceState::Ready, raw), Ok(pushgate::proto::DeviceEvent::Unregister));
    assert_eq!(on_device_frame(DeviceState::AwaitHello, raw), Err(ProtoError::Unexpected(ftype::UNREGISTER)));
}
