//! The fuzz targets' bodies, kept in a library so `cargo test` can replay the seed corpora
//! through the same checks on the stable toolchain, without libFuzzer.
//!
//! Each function takes the fuzzer's bytes and panics only when pushgate breaks one of its
//! own promises: a decoded frame that does not re-encode to its bytes, a session that
//! leaves the state machine of protocol.md §5, a PROXY header that is not self-delimiting.

use std::net::SocketAddr;
use std::sync::OnceLock;

use pushgate::proto::frame::{
    is_valid_app_id, split_frame, Frame, DEVICE_MAX_BODY, MAX_COLLAPSE, MAX_MULTICAST, MAX_SECRET,
    MIN_SECRET, NONCE_LEN, PROVIDER_MAX_BODY, VERSION,
};
use pushgate::proto::proxy::{self, ProxyHeader, V1_MAX_LINE, V2_MAX_LEN};
use pushgate::proto::session::{
    auth_proof, on_device_frame, on_provider_frame, Apps, DeviceEvent, DeviceState, ProviderEvent,
    ProviderState,
};

/// The app the provider seeds log in to (protocol.md §8's worked example).
pub const APP_ID: &str = "com.example.chat";
pub const APP_SECRET: &[u8] = b"s3cr3t-provider-key";

pub fn device_decoder(data: &[u8]) {
    decoder(data, DEVICE_MAX_BODY);
}

pub fn provider_decoder(data: &[u8]) {
    decoder(data, PROVIDER_MAX_BODY);
}

/// Splits frames off `data` until it runs out or the framing is bad, decoding each one.
/// A body that does not decode does not stop the walk: the framing around it is still
/// valid, and the frames after it are more coverage per input.
fn decoder(data: &[u8], max_body: usize) {
    let mut buf = data;
    let mut out = Vec::new();
    loop {
        let (raw, n) = match split_frame(buf, max_body) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                let _ = e.code();
                return;
            }
        };
        assert!(n >= 2 && n <= buf.len(), "consumed {n} of {}", buf.len());
        assert!(raw.body.len() <= max_body);
        assert_eq!(split_frame(&buf[..n - 1], max_body), Ok(None), "a frame cut short must be incomplete");
        match Frame::parse(raw) {
            Ok(frame) => round_trip(frame, &buf[..n], max_body, &mut out),
            Err(e) => {
                let _ = e.code();
            }
        }
        buf = &buf[n..];
    }
}

/// A decoded frame encodes to exactly the bytes it came from, and decodes back to itself.
fn round_trip(frame: Frame<'_>, wire: &[u8], max_body: usize, out: &mut Vec<u8>) {
    out.clear();
    frame.encode(out);
    assert_eq!(out.len(), frame.encoded_len(), "encoded_len disagrees with encode: {frame:?}");
    // Another version's HELLO keeps only its version byte, so it re-encodes shorter.
    let other_version = match frame {
        Frame::Hello(h) => h.version != VERSION,
        Frame::AuthHello { version, .. } => version != VERSION,
        _ => false,
    };
    if !other_version {
        assert_eq!(&out[..], wire, "re-encoding differs: {frame:?}");
    }
    match split_frame(out, max_body) {
        Ok(Some((raw, n))) => {
            assert_eq!(n, out.len());
            assert_eq!(Frame::parse(raw), Ok(frame));
        }
        other => panic!("re-encoded {frame:?} does not split: {other:?}"),
    }
}

/// Feeds frames through the device rules, as the shard does: the first error closes.
pub fn device_session(data: &[u8]) {
    let mut state = DeviceState::AwaitHello;
    let mut buf = data;
    while let Ok(Some((raw, n))) = split_frame(buf, DEVICE_MAX_BODY) {
        buf = &buf[n..];
        match on_device_frame(state, raw) {
            Ok(DeviceEvent::Hello(h)) => {
                assert_eq!(state, DeviceState::AwaitHello, "a second HELLO was accepted");
                assert_eq!(h.version, VERSION);
                assert!((MIN_SECRET..=MAX_SECRET).contains(&h.secret.len()), "secret of {}", h.secret.len());
                assert!(is_valid_app_id(h.app_id), "app id {:?}", h.app_id);
                state = DeviceState::Ready;
            }
            Ok(ev) => assert_eq!(state, DeviceState::Ready, "{ev:?} accepted before HELLO"),
            Err(e) => {
                let _ = (e.code(), e.detail());
                return;
            }
        }
    }
}

fn apps() -> &'static Apps {
    static APPS: OnceLock<Apps> = OnceLock::new();
    APPS.get_or_init(|| {
        let mut apps = Apps::new();
        apps.add("demo", b"demo-secret-0123456789");
        apps.add(APP_ID, APP_SECRET);
        apps
    })
}

/// The first [`NONCE_LEN`] bytes are the gateway's challenge nonce (so a seed can carry
/// a valid AUTH proof for it, protocol.md §8); the rest is the provider's byte stream.
pub fn provider_session(data: &[u8]) {
    let Some((nonce, mut buf)) = data.split_first_chunk::<NONCE_LEN>() else {
        return;
    };
    let apps = apps();
    let mut state = ProviderState::AwaitHello;
    while let Ok(Some((raw, n))) = split_frame(buf, PROVIDER_MAX_BODY) {
        buf = &buf[n..];
        let before = state;
        let ev = match on_provider_frame(&mut state, raw, apps, *nonce) {
            Ok(ev) => ev,
            Err(e) => {
                assert_eq!(state, before, "an error moved the state");
                let _ = (e.code(), e.detail());
                return;
            }
        };
        match (before, ev) {
            (ProviderState::AwaitHello, ProviderEvent::Challenge(n)) => {
                assert_eq!(n, *nonce);
                assert!(
                    matches!(state, ProviderState::AwaitAuth { app, nonce: s } if s == *nonce && usize::from(app) < apps.len())
                );
            }
            (ProviderState::AwaitAuth { app, nonce: s }, ProviderEvent::Authenticated { app: a }) => {
                assert_eq!(a, app);
                assert_eq!(state, ProviderState::Ready { app });
                let Ok(Frame::Auth { proof }) = Frame::parse(raw) else {
                    panic!("authenticated by a frame that is not AUTH: {raw:?}");
                };
                let secret = if apps.id(app) == APP_ID { APP_SECRET } else { b"demo-secret-0123456789" };
                assert_eq!(proof, auth_proof(secret, apps.id(app), &s), "a wrong proof was accepted");
            }
            (ProviderState::Ready { .. }, ev) => {
                assert_eq!(state, before, "{ev:?} moved a ready session");
                match ev {
                    ProviderEvent::Challenge(_) | ProviderEvent::Authenticated { .. } => {
                        panic!("{ev:?} on a ready session")
                    }
                    ProviderEvent::Push(p) => assert!(p.note.collapse.len() <= MAX_COLLAPSE),
                    ProviderEvent::MultiPush(p) => {
                        assert!(p.note.collapse.len() <= MAX_COLLAPSE);
                        assert!((1..=MAX_MULTICAST).contains(&p.token_count()));
                        assert_eq!(p.tokens().count(), p.token_count());
                    }
                    _ => {}
                }
            }
            (before, ev) => panic!("{ev:?} accepted in {before:?}"),
        }
    }
}

/// The PROXY parser: self-delimiting, never waits past its limits, addresses in pairs.
pub fn proxy_header(data: &[u8]) {
    let (h, n) = match proxy::parse(data) {
        Ok(Some(r)) => r,
        Ok(None) => {
            assert!(data.len() < V2_MAX_LEN.max(V1_MAX_LINE), "still waiting after {} bytes", data.len());
            return;
        }
        Err(e) => {
            let _ = e.detail();
            return;
        }
    };
    assert!(n >= 1 && n <= data.len(), "consumed {n} of {}", data.len());
    assert_eq!(proxy::parse(&data[..n]), Ok(Some((h, n))), "the header alone parses differently");
    assert_eq!(proxy::parse(&data[..n - 1]), Ok(None), "a header cut short must be incomplete");
    match (h.source, h.destination) {
        (None, None) => {}
        (Some(s), Some(d)) => {
            assert_eq!(s.is_ipv4(), d.is_ipv4(), "mixed families: {h:?}");
            if data[0] == b'P' {
                assert_eq!(reparse_v1(s, d), Some(h), "v1 line does not round-trip");
            }
        }
        _ => panic!("one address without the other: {h:?}"),
    }
}

fn reparse_v1(s: SocketAddr, d: SocketAddr) -> Option<ProxyHeader> {
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    let line = format!("PROXY {fam} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port());
    proxy::parse(line.as_bytes()).ok().flatten().map(|(h, _)| h)
}

/// `cluster::wire`: a batch of forwarded pushes or of results from arbitrary
/// bytes. Whatever decodes stays within the protocol's limits and encodes
/// back to exactly the same bytes (the encoding is canonical).
pub fn cluster_wire(data: &[u8]) {
    use pushgate::cluster::wire;
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(pushes) = wire::decode_pushes(bytes.clone()) {
        for p in &pushes {
            assert!(p.msg.note.payload.len() <= pushgate::proto::frame::MAX_PAYLOAD);
            assert!(p.msg.note.collapse.len() <= pushgate::proto::frame::MAX_COLLAPSE);
        }
        assert_eq!(wire::encode_pushes(&pushes).expect("a decoded batch encodes"), bytes);
    }
    if let Ok(results) = wire::decode_results(bytes.clone()) {
        assert_eq!(wire::encode_results(&results).expect("a decoded batch encodes"), bytes);
    }
}
