//! Properties of the sans-IO core over generated input: the decoder never
//! panics or over-reads, valid frames survive encode/decode, incomplete input
//! is never an error, the session machines cannot be talked into Ready without
//! credentials, and tokens verify exactly when untouched.

use proptest::prelude::*;
use pushgate::proto::frame::{ftype, put_header, DEVICE_MAX_BODY, NONCE_LEN, PROVIDER_MAX_BODY};
use pushgate::proto::{
    on_device_frame, on_provider_frame, split_frame, Apps, DeviceEvent, DeviceState, ErrorCode, Frame,
    FrameError, GoAwayReason, Hello, MultiPush, Note, Notification, ProtoError, ProviderEvent, ProviderState,
    Push, RawFrame, Status, Token, TokenKey, TOKEN_LEN,
};

/// An owned frame, so strategies can generate what `Frame` only borrows.
#[derive(Clone, Debug)]
enum Owned {
    Hello { keepalive_s: u16, app_id: String, secret: Vec<u8> },
    Welcome { token: [u8; TOKEN_LEN], heartbeat_s: u16, missed: u32 },
    Ping,
    Pong,
    Notify { msg_id: u64, kind: u8, priority: u8, payload: Vec<u8> },
    Ack { msg_id: u64 },
    GoAway { reason: u8, reconnect_ms: u32 },
    Error { code: u8, text: String },
    AuthHello { app_id: String },
    Challenge { nonce: [u8; NONCE_LEN] },
    Auth { proof: [u8; NONCE_LEN] },
    AuthOk { max_in_flight: u32 },
    Push { head: PushHead, token: [u8; TOKEN_LEN] },
    Result { req_id: u32, status: u8, msg_id: u64, info: u64 },
    MultiPush { head: PushHead, tokens: Vec<u8> },
    MultiResult { req_id: u32, entries: Vec<u8> },
}

/// A PUSH's request id and notification, owned: the notification is the
/// gateway's own `Note`, encoded through `Note::as_wire`.
#[derive(Clone, Debug)]
struct PushHead {
    req_id: u32,
    note: Note,
}

impl PushHead {
    fn note(&self) -> Notification<'_> {
        self.note.as_wire()
    }
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Hello { keepalive_s, app_id, secret } => {
                Frame::Hello(Hello { version: 1, keepalive_s: *keepalive_s, app_id, secret })
            }
            Owned::Welcome { token, heartbeat_s, missed } => {
                Frame::Welcome { token: Token(*token), heartbeat_s: *heartbeat_s, missed: *missed }
            }
            Owned::Ping => Frame::Ping,
            Owned::Pong => Frame::Pong,
            Owned::Notify { msg_id, kind, priority, payload } => {
                Frame::Notify { msg_id: *msg_id, kind: *kind, priority: *priority, payload }
            }
            Owned::Ack { msg_id } => Frame::Ack { msg_id: *msg_id },
            Owned::GoAway { reason, reconnect_ms } => {
                Frame::GoAway { reason: GoAwayReason(*reason), reconnect_ms: *reconnect_ms }
            }
            Owned::Error { code, text } => Frame::Error { code: ErrorCode(*code), text },
            Owned::AuthHello { app_id } => Frame::AuthHello { version: 1, app_id },
            Owned::Challenge { nonce } => Frame::Challenge { nonce: *nonce },
            Owned::Auth { proof } => Frame::Auth { proof: *proof },
            Owned::AuthOk { max_in_flight } => Frame::AuthOk { max_in_flight: *max_in_flight },
            Owned::Push { head: h, token } => {
                Frame::Push(Push { req_id: h.req_id, token: Token(*token), note: h.note() })
            }
            Owned::Result { req_id, status, msg_id, info } => {
                Frame::Result { req_id: *req_id, status: Status(*status), msg_id: *msg_id, info: *info }
            }
            Owned::MultiPush { head: h, tokens } => {
                Frame::MultiPush(MultiPush { req_id: h.req_id, tokens, note: h.note() })
            }
            Owned::MultiResult { req_id, entries } => Frame::MultiResult { req_id: *req_id, entries },
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.frame().encode(&mut out);
        out
    }

    /// The largest body the frame's port accepts.
    fn port_max(&self) -> usize {
        if self.frame().ftype() <= ftype::ERROR {
            DEVICE_MAX_BODY
        } else {
            PROVIDER_MAX_BODY
        }
    }
}

/// Cheap deterministic filler: generating 24,000 token bytes one by one
/// through proptest would dominate the suite's run time.
fn filler(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn app_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..=256),
        1 => (0..=4096usize, any::<u64>()).prop_map(|(n, s)| filler(s, n)),
    ]
}

fn push_head() -> impl Strategy<Value = PushHead> {
    (any::<(u32, u8, u8, u8, u32)>(), prop::collection::vec(any::<u8>(), 0..=64), payload()).prop_map(
        |((req_id, kind, priority, flags, expiry), collapse, payload)| PushHead {
            req_id,
            note: Note { kind, priority, flags, expiry, collapse: collapse.into(), payload: payload.into() },
        },
    )
}

fn device_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (any::<u16>(), app_id(), prop::collection::vec(any::<u8>(), 0..=80))
            .prop_map(|(keepalive_s, app_id, secret)| Owned::Hello { keepalive_s, app_id, secret }),
        any::<([u8; TOKEN_LEN], u16, u32)>().prop_map(|(token, heartbeat_s, missed)| Owned::Welcome {
            token,
            heartbeat_s,
            missed
        }),
        Just(Owned::Ping),
        Just(Owned::Pong),
        (any::<(u64, u8, u8)>(), payload()).prop_map(|((msg_id, kind, priority), payload)| Owned::Notify {
            msg_id,
            kind,
            priority,
            payload
        }),
        any::<u64>().prop_map(|msg_id| Owned::Ack { msg_id }),
        any::<(u8, u32)>().prop_map(|(reason, reconnect_ms)| Owned::GoAway { reason, reconnect_ms }),
        // At most 50 chars of at most 4 bytes: within the 200-byte text limit.
        (any::<u8>(), ".{0,50}").prop_map(|(code, text)| Owned::Error { code, text }),
    ]
}

fn provider_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        app_id().prop_map(|app_id| Owned::AuthHello { app_id }),
        any::<[u8; NONCE_LEN]>().prop_map(|nonce| Owned::Challenge { nonce }),
        any::<[u8; NONCE_LEN]>().prop_map(|proof| Owned::Auth { proof }),
        any::<u32>().prop_map(|max_in_flight| Owned::AuthOk { max_in_flight }),
        (push_head(), any::<[u8; TOKEN_LEN]>()).prop_map(|(head, token)| Owned::Push { head, token }),
        any::<(u32, u8, u64, u64)>().prop_map(|(req_id, status, msg_id, info)| Owned::Result {
            req_id,
            status,
            msg_id,
            info
        }),
        (push_head(), 1..=1000usize, any::<u64>())
            .prop_map(|(head, n, seed)| Owned::MultiPush { head, tokens: filler(seed, n * TOKEN_LEN) }),
        (any::<u32>(), 0..=1000usize, any::<u64>())
            .prop_map(|(req_id, n, seed)| Owned::MultiResult { req_id, entries: filler(seed, n * 9) }),
    ]
}

fn any_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![device_frame(), provider_frame()]
}

/// `type | varint(len) | body` with a correct header around arbitrary bytes.
fn framed(t: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, t, body.len());
    out.extend_from_slice(body);
    out
}

/// A type byte that is usually one the protocol defines.
fn type_byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => prop::sample::select((0x01..=0x08).chain(0x21..=0x28).collect::<Vec<u8>>()), 1 => any::<u8>()]
}

/// Input a decoder may meet: noise, well-framed noise, and valid frames.
fn chunk(valid: BoxedStrategy<Owned>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..48),
        3 => (type_byte(), prop::collection::vec(any::<u8>(), 0..160)).prop_map(|(t, b)| framed(t, &b)),
        3 => valid.prop_map(|f| f.encode()),
    ]
}

fn stream(valid: BoxedStrategy<Owned>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(chunk(valid), 0..8).prop_map(|cs| cs.concat())
}

/// A device HELLO body with every field free, including ones the rules refuse.
fn fuzzy_hello() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => Just(1u8), 1 => any::<u8>()],
        any::<u16>(),
        prop_oneof![app_id().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..70)],
        prop::collection::vec(any::<u8>(), 0..=80),
        prop::collection::vec(any::<u8>(), 0..3),
    )
        .prop_map(|(version, keepalive, app, secret, trailing)| {
            let mut b = vec![version];
            b.extend_from_slice(&keepalive.to_be_bytes());
            b.push(app.len() as u8);
            b.extend_from_slice(&app);
            b.push(secret.len() as u8);
            b.extend_from_slice(&secret);
            b.extend_from_slice(&trailing);
            framed(ftype::HELLO, &b)
        })
}

const APP: &str = "com.example.backend";

/// AUTH_HELLO for the configured app (so the fuzzer does reach AwaitAuth) or another.
fn fuzzy_auth_hello() -> impl Strategy<Value = Vec<u8>> {
    (prop_oneof![3 => Just(1u8), 1 => any::<u8>()], prop_oneof![3 => Just(APP.to_string()), 1 => app_id()])
        .prop_map(|(version, app)| {
            let mut b = vec![version, app.len() as u8];
            b.extend_from_slice(app.as_bytes());
            framed(ftype::AUTH_HELLO, &b)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics_or_over_reads(buf in stream(any_frame().boxed())) {
        for max in [DEVICE_MAX_BODY, PROVIDER_MAX_BODY] {
            let mut at = 0;
            while let Ok(Some((raw, used))) = split_frame(&buf[at..], max) {
                prop_assert!(used <= buf.len() - at);
                prop_assert!(used > raw.body.len(), "the header takes at least two bytes");
                prop_assert!(raw.body.len() <= max);
                let _ = Frame::parse(raw);
                at += used;
            }
        }
    }

    #[test]
    fn raw_noise_never_panics_the_decoder(buf in prop::collection::vec(any::<u8>(), 0..600)) {
        for max in [DEVICE_MAX_BODY, PROVIDER_MAX_BODY] {
            if let Ok(Some((raw, used))) = split_frame(&buf, max) {
                prop_assert!(used <= buf.len());
                let _ = Frame::parse(raw);
            }
        }
    }

    #[test]
    fn token_verifies_and_any_flipped_bit_breaks_it(
        key in any::<[u8; 32]>(),
        app in app_id(),
        secret in prop::collection::vec(any::<u8>(), 16..=64),
        bit in 0..TOKEN_LEN * 8,
    ) {
        let k = TokenKey::new(key);
        let t = k.derive(&app, &secret);
        prop_assert!(k.verify(&app, &t));
        prop_assert_eq!(t, k.derive(&app, &secret));
        let mut forged = t;
        forged.0[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!k.verify(&app, &forged), "bit {} flipped still verifies", bit);
    }
}

/// protocol.md section 5: the types defined on each port, checked before the body is read.
fn on_device_port(t: u8) -> bool {
    (0x01..=0x0d).contains(&t)
}

fn on_provider_port(t: u8) -> bool {
    matches!(t, 0x03 | 0x04 | 0x07 | 0x08) || (0x21..=0x31).contains(&t)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn types_of_another_port_are_unknown_whatever_the_body(
        t in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        authed in any::<bool>(),
    ) {
        let raw = RawFrame { ftype: t, body: &body };
        let unknown = ProtoError::Frame(FrameError::UnknownType(t));
        let dev_state = if authed { DeviceState::Ready } else { DeviceState::AwaitHello };
        let dev = on_device_frame(dev_state, raw);
        prop_assert_eq!(dev == Err(unknown), !on_device_port(t), "device port, type {:#04x}: {:?}", t, dev);

        let apps = Apps::new();
        let mut st = if authed { ProviderState::Ready { app: 0 } } else { ProviderState::AwaitHello };
        let prov = on_provider_frame(&mut st, raw, &apps, [0; NONCE_LEN]);
        prop_assert_eq!(prov == Err(unknown), !on_provider_port(t), "provider port, type {:#04x}: {:?}", t, prov);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn valid_frames_decode_to_themselves(f in any_frame()) {
        let frame = f.frame();
        let buf = f.encode();
        prop_assert_eq!(buf.len(), frame.encoded_len());
        let (raw, used) = split_frame(&buf, f.port_max()).unwrap().expect("a whole frame");
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(Frame::parse(raw), Ok(frame));
    }

    #[test]
    fn every_prefix_of_a_valid_frame_is_incomplete(f in any_frame()) {
        let buf = f.encode();
        for n in 0..buf.len() {
            prop_assert_eq!(split_frame(&buf[..n], f.port_max()), Ok(None), "prefix {} of {}", n, buf.len());
        }
    }

    #[test]
    fn device_session_needs_a_valid_hello(
        buf in prop::collection::vec(
            prop_oneof![2 => fuzzy_hello(), 3 => stream(device_frame().boxed())], 1..6
        ).prop_map(|cs| cs.concat()),
    ) {
        let mut state = DeviceState::AwaitHello;
        let mut at = 0;
        while let Ok(Some((raw, used))) = split_frame(&buf[at..], DEVICE_MAX_BODY) {
            at += used;
            let Ok(ev) = on_device_frame(state, raw) else { break };
            match ev {
                DeviceEvent::Hello(h) => {
                    prop_assert_eq!(state, DeviceState::AwaitHello);
                    prop_assert_eq!(raw.ftype, ftype::HELLO);
                    prop_assert_eq!(h.version, 1);
                    prop_assert!((16..=64).contains(&h.secret.len()));
                    prop_assert!(pushgate::proto::frame::is_valid_app_id(h.app_id));
                    state = DeviceState::Ready;
                }
                DeviceEvent::Ping | DeviceEvent::Ack(_) | DeviceEvent::Unregister => {
                    prop_assert_eq!(state, DeviceState::Ready)
                }
                DeviceEvent::Subscribe { topic, .. } => {
                    prop_assert_eq!(state, DeviceState::Ready);
                    prop_assert!((1..=64).contains(&topic.len()));
                }
            }
        }
    }

    #[test]
    fn provider_session_needs_the_secret(
        buf in prop::collection::vec(
            prop_oneof![2 => fuzzy_auth_hello(), 3 => stream(provider_frame().boxed())], 1..6
        ).prop_map(|cs| cs.concat()),
        nonce in any::<[u8; NONCE_LEN]>(),
    ) {
        // A secret from the OS, not from the generator: no input can know it.
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).unwrap();
        let mut apps = Apps::new();
        let app = apps.add(APP, &secret);

        let mut state = ProviderState::AwaitHello;
        let mut at = 0;
        while let Ok(Some((raw, used))) = split_frame(&buf[at..], PROVIDER_MAX_BODY) {
            at += used;
            let before = state;
            let Ok(ev) = on_provider_frame(&mut state, raw, &apps, nonce) else {
                prop_assert_eq!(state, before, "a refused frame leaves the state alone");
                break;
            };
            match ev {
                ProviderEvent::Challenge(n) => {
                    prop_assert_eq!(before, ProviderState::AwaitHello);
                    prop_assert_eq!(n, nonce);
                    prop_assert_eq!(state, ProviderState::AwaitAuth { app, nonce });
                }
                other => prop_assert!(false, "{:?} from {:?} without the secret", other, before),
            }
        }
    }
}
