//! Keeps protocol.md honest: every hex example must decode with the real codec
//! and re-encode to the same bytes, every frame type and wire code must be
//! documented, and the worked token and auth-proof examples must compute.

use std::collections::HashMap;

use pushgate::proto::codes::{ErrorCode, GoAwayReason, Kind, Status, SubStatus};
use pushgate::proto::frame::{
    ftype, put_header, split_frame, Frame, FrameError, RawFrame, DEVICE_MAX_BODY, MAX_COLLAPSE,
    MAX_MULTICAST, MAX_PAYLOAD, PROVIDER_MAX_BODY,
};
use pushgate::proto::session::{
    auth_proof, on_device_frame, on_provider_frame, Apps, DeviceState, ProtoError, ProviderState,
};
use pushgate::proto::TokenKey;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md");
    std::fs::read_to_string(path).expect("protocol.md at the repository root")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Port {
    Device,
    Provider,
}

impl Port {
    fn max_body(self) -> usize {
        match self {
            Port::Device => DEVICE_MAX_BODY,
            Port::Provider => PROVIDER_MAX_BODY,
        }
    }
}

/// A fenced block: its info string (after the backticks), first line number and lines.
struct Block {
    info: String,
    line: usize,
    lines: Vec<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, l) in doc.lines().enumerate() {
        let t = l.trim();
        match cur.take() {
            None if t.starts_with("```") => {
                cur = Some(Block { info: t[3..].trim().to_string(), line: i + 1, lines: Vec::new() })
            }
            None => {}
            Some(b) if t == "```" => out.push(b),
            Some(mut b) => {
                b.lines.push(l.to_string());
                cur = Some(b);
            }
        }
    }
    assert!(cur.is_none(), "protocol.md ends inside a code block");
    out
}

/// The bytes of a `hex` block: whitespace-separated pairs, `#` to end of line is a comment.
fn hex_bytes(b: &Block) -> Vec<u8> {
    let mut out = Vec::new();
    for l in &b.lines {
        let code = l.split('#').next().unwrap_or("");
        for tok in code.split_whitespace() {
            assert_eq!(tok.len(), 2, "line {}: `{tok}` is not one hex byte", b.line);
            out.push(
                u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("line {}: bad hex `{tok}`", b.line)),
            );
        }
    }
    out
}

/// Every `hex device` / `hex provider` example, with its port.
fn hex_examples(doc: &str) -> Vec<(Port, Block)> {
    let mut out = Vec::new();
    for b in blocks(doc) {
        let port = match b.info.as_str() {
            "hex device" => Port::Device,
            "hex provider" => Port::Provider,
            other => {
                assert!(!other.starts_with("hex"), "line {}: hex block needs a port: `{other}`", b.line);
                continue;
            }
        };
        out.push((port, b));
    }
    out
}

/// `name = value` lines of the `text <tag>` block.
fn kv_block(doc: &str, tag: &str) -> HashMap<String, String> {
    let info = format!("text {tag}");
    let b = blocks(doc).into_iter().find(|b| b.info == info).unwrap_or_else(|| panic!("no ```{info} block"));
    b.lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hex_field<const N: usize>(kv: &HashMap<String, String>, name: &str) -> [u8; N] {
    let v = kv.get(name).unwrap_or_else(|| panic!("example lacks `{name}`"));
    let mut a = [0u8; N];
    hex::decode_to_slice(v, &mut a).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    a
}

/// Decodes every example frame; checks exact consumption and byte-exact re-encoding.
/// Returns (port, type, encoded bytes) of each frame.
fn decoded_examples(doc: &str) -> Vec<(Port, u8, Vec<u8>)> {
    let mut out = Vec::new();
    for (port, b) in hex_examples(doc) {
        let bytes = hex_bytes(&b);
        assert!(!bytes.is_empty(), "line {}: empty hex example", b.line);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (raw, used) = match split_frame(rest, port.max_body()) {
                Ok(Some(f)) => f,
                Ok(None) => panic!("line {}: incomplete frame {:02x?}", b.line, rest),
                Err(e) => panic!("line {}: framing error {e:?}", b.line),
            };
            let frame = Frame::parse(raw).unwrap_or_else(|e| panic!("line {}: parse error {e:?}", b.line));
            let mut again = Vec::new();
            frame.encode(&mut again);
            assert_eq!(again, &rest[..used], "line {}: {frame:?} re-encodes differently", b.line);
            assert_eq!(frame.encoded_len(), used, "line {}", b.line);
            let shared = matches!(raw.ftype, ftype::PING | ftype::PONG | ftype::GOAWAY | ftype::ERROR);
            let on_port = match port {
                Port::Device => pushgate::proto::session::is_device_port_type(raw.ftype),
                Port::Provider => shared || pushgate::proto::session::is_provider_port_type(raw.ftype),
            };
            assert!(on_port, "line {}: type 0x{:02x} is not a {port:?}-port frame", b.line, raw.ftype);
            out.push((port, raw.ftype, rest[..used].to_vec()));
            rest = &rest[used..];
        }
    }
    out
}

/// The `pub const NAME: u8 = 0x..;` lines of `pub mod ftype` in frame.rs, so a
/// frame type added there without an example here fails this test.
fn defined_frame_types() -> Vec<(String, u8)> {
    let src = include_str!("../src/proto/frame.rs");
    let start = src.find("pub mod ftype {").expect("frame.rs defines `pub mod ftype`");
    let body = &src[start..];
    let body = &body[..body.find('}').expect("ftype module closes")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|l| {
            let (name, rest) = l.split_once(": u8 = 0x").expect("`NAME: u8 = 0x..;`");
            let v = u8::from_str_radix(rest.trim_end_matches(';'), 16).expect("hex frame type");
            (name.to_string(), v)
        })
        .collect()
}

#[test]
fn hex_examples_decode_and_reencode_exactly() {
    let frames = decoded_examples(&doc());
    assert!(frames.len() >= 30, "only {} example frames", frames.len());
}

#[test]
fn every_frame_type_has_a_heading_and_an_example() {
    let doc = doc();
    let types = defined_frame_types();
    // Guard the source scan itself, so it cannot silently find nothing.
    assert!(types.contains(&("HELLO".to_string(), ftype::HELLO)));
    assert!(types.contains(&("MULTI_RESULT".to_string(), ftype::MULTI_RESULT)));
    assert!(types.contains(&("TOPIC_STATS_RESULT".to_string(), ftype::TOPIC_STATS_RESULT)));
    assert_eq!(types.len(), 30);
    let examples = decoded_examples(&doc);
    for (name, v) in types {
        let heading = format!("#### 0x{v:02x} {name} ");
        assert!(doc.lines().any(|l| l.starts_with(&heading)), "no `{heading}(...)` heading");
        assert!(examples.iter().any(|(_, t, _)| *t == v), "no hex example of {name} (0x{v:02x})");
    }
}

#[test]
fn every_wire_code_is_in_a_table() {
    let doc = doc();
    let mut rows = Vec::new();
    for v in 0..=255u8 {
        let codes = [
            (Status(v).is_known(), Status(v).name()),
            (ErrorCode(v).is_known(), ErrorCode(v).name()),
            (GoAwayReason(v).is_known(), GoAwayReason(v).name()),
            (Kind(v).is_known(), Kind(v).name()),
            (SubStatus(v).is_known(), SubStatus(v).name()),
        ];
        rows.extend(codes.iter().filter(|(known, _)| *known).map(|(_, name)| format!("| {v} | `{name}` |")));
    }
    assert!(rows.len() >= 37, "code scan found only {} codes", rows.len());
    for row in rows {
        assert!(doc.contains(&row), "protocol.md has no table row starting `{row}`");
    }
}

#[test]
fn token_example_derives() {
    let doc = doc();
    let kv = kv_block(&doc, "token-example");
    let key: [u8; 32] = hex_field(&kv, "token_key");
    let secret = hex::decode(&kv["secret"]).expect("secret is hex");
    let token = TokenKey::new(key).derive(&kv["app_id"], &secret);
    assert_eq!(token.to_hex(), kv["token"]);
    assert_eq!(kv["token"].len(), 48);
    let welcome_has_it =
        decoded_examples(&doc).iter().any(|(_, t, bytes)| *t == ftype::WELCOME && bytes[2..26] == token.0);
    assert!(welcome_has_it, "the WELCOME examples should carry the example token");
}

#[test]
fn auth_example_proves() {
    let doc = doc();
    let kv = kv_block(&doc, "auth-example");
    let nonce: [u8; 32] = hex_field(&kv, "nonce");
    let proof: [u8; 32] = hex_field(&kv, "proof");
    assert_eq!(auth_proof(kv["app_secret"].as_bytes(), &kv["app_id"], &nonce), proof);

    let examples = decoded_examples(&doc);
    assert!(examples.iter().any(|(_, t, b)| *t == ftype::CHALLENGE && b[2..] == nonce));
    assert!(examples.iter().any(|(_, t, b)| *t == ftype::AUTH && b[2..] == proof));

    // The gateway accepts that proof and refuses any other.
    let mut apps = Apps::new();
    apps.add(&kv["app_id"], kv["app_secret"].as_bytes());
    let mut state = ProviderState::AwaitAuth { app: 0, nonce };
    assert!(
        on_provider_frame(&mut state, RawFrame { ftype: ftype::AUTH, body: &proof }, &apps, nonce).is_ok()
    );
    assert_eq!(state, ProviderState::Ready { app: 0 });
    let mut bad = proof;
    bad[0] ^= 1;
    let mut state = ProviderState::AwaitAuth { app: 0, nonce };
    let err = on_provider_frame(&mut state, RawFrame { ftype: ftype::AUTH, body: &bad }, &apps, nonce);
    assert_eq!(err.map(|_| ()), Err(ProtoError::AuthFailed));
}

#[test]
fn length_examples_match_the_codec() {
    let kv = kv_block(&doc(), "length-examples");
    assert!(kv.len() >= 5);
    for (len, want) in kv {
        let len: usize = len.parse().expect("decimal length");
        let want = hex::decode(want.replace(' ', "")).expect("hex length bytes");
        let mut frame = Vec::new();
        put_header(&mut frame, ftype::PING, len);
        assert_eq!(frame[1..], want[..], "length {len}");
        frame.resize(frame.len() + len, 0);
        let (raw, used) = split_frame(&frame, PROVIDER_MAX_BODY).expect("valid").expect("complete");
        assert_eq!((raw.body.len(), used), (len, frame.len()));
    }
}

#[test]
fn stated_limits_match_the_constants() {
    let doc = doc();
    for s in [
        format!("| device | {DEVICE_MAX_BODY} bytes | `DEVICE_MAX_BODY` |"),
        format!("| provider | {PROVIDER_MAX_BODY} bytes | `PROVIDER_MAX_BODY` |"),
        format!("token count, 1..{MAX_MULTICAST} "),
        format!("collapse id length, 0..{MAX_COLLAPSE} "),
        format!("0..{MAX_PAYLOAD} bytes, the provider's payload unchanged"),
        "at most **13 bytes**".to_string(),
    ] {
        assert!(doc.contains(&s), "protocol.md should say `{s}`");
    }
    let mut ping = Vec::new();
    Frame::Ping.encode(&mut ping);
    assert_eq!(ping, [0x03, 0x00]);
    let payload = [0u8; MAX_PAYLOAD];
    let notify = Frame::Notify { msg_id: u64::MAX, kind: 0, priority: 10, payload: &payload };
    assert_eq!(notify.encoded_len() - MAX_PAYLOAD, 13);
}

#[test]
fn framing_errors_are_as_documented() {
    let err = |b: &[u8], max| split_frame(b, max).map(|o| o.map(|(_, n)| n));
    assert_eq!(err(&[0x03, 0x80, 0x00], DEVICE_MAX_BODY), Err(FrameError::Malformed));
    assert_eq!(err(&[0x03, 0x80, 0x80, 0x80, 0x01], PROVIDER_MAX_BODY), Err(FrameError::Malformed));
    // Refused from the header alone, before any body byte arrives.
    assert_eq!(err(&[0x05, 0x81, 0x40], DEVICE_MAX_BODY), Err(FrameError::TooLarge));
    assert_eq!(err(&[0x25, 0x81, 0x80, 0x02], PROVIDER_MAX_BODY), Err(FrameError::TooLarge));
    assert_eq!(err(&[0x03, 0x01], DEVICE_MAX_BODY), Ok(None));
}

#[test]
fn version_byte_first_and_state_errors_as_documented() {
    let code = |r: Result<(), ProtoError>| r.err().map(|e| e.code());
    let dev = |s, t, b: &[u8]| code(on_device_frame(s, RawFrame { ftype: t, body: b }).map(|_| ()));
    // A later version's HELLO may look like anything after its version byte.
    assert_eq!(dev(DeviceState::AwaitHello, ftype::HELLO, &[2, 0xff]), Some(ErrorCode::UNSUPPORTED_VERSION));
    assert_eq!(
        dev(DeviceState::AwaitHello, ftype::HELLO, &[1, 0, 0, 1, b'a', 15]),
        Some(ErrorCode::MALFORMED_FRAME)
    );
    let mut short = vec![1, 0, 0, 1, b'a', 15];
    short.extend_from_slice(&[0; 15]);
    assert_eq!(dev(DeviceState::AwaitHello, ftype::HELLO, &short), Some(ErrorCode::BAD_CREDENTIAL));
    assert_eq!(dev(DeviceState::AwaitHello, ftype::PING, &[]), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(dev(DeviceState::Ready, ftype::PING, &[]), None);
    assert_eq!(dev(DeviceState::Ready, ftype::ACK, &[0; 8]), None);
    assert_eq!(dev(DeviceState::Ready, ftype::PONG, &[]), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(dev(DeviceState::Ready, ftype::AUTH_OK, &[0; 4]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    assert_eq!(dev(DeviceState::Ready, 0x0e, &[]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    // Topic frames: legal in Ready only; a topic length outside 1..64 is malformed.
    let sub = [0, 1, 4, b'n', b'e', b'w', b's'];
    assert_eq!(dev(DeviceState::Ready, ftype::SUBSCRIBE, &sub), None);
    assert_eq!(dev(DeviceState::Ready, ftype::UNSUBSCRIBE, &sub), None);
    assert_eq!(dev(DeviceState::AwaitHello, ftype::SUBSCRIBE, &sub), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(dev(DeviceState::Ready, ftype::SUBSCRIBE, &[0, 1, 0]), Some(ErrorCode::MALFORMED_FRAME));
    let mut long = vec![0, 1, 65];
    long.extend_from_slice(&[b'x'; 65]);
    assert_eq!(dev(DeviceState::Ready, ftype::SUBSCRIBE, &long), Some(ErrorCode::MALFORMED_FRAME));
    let notify = [0, 0, 0, 0, 0, 0, 0, 1, 0, 10, 1, b'x'];
    assert_eq!(dev(DeviceState::Ready, ftype::TOPIC_NOTIFY, &notify), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(dev(DeviceState::Ready, ftype::PUSH_TOPIC, &[]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));

    let mut apps = Apps::new();
    apps.add("a", b"k");
    let prov = |s: &mut ProviderState, t, b: &[u8]| {
        code(on_provider_frame(s, RawFrame { ftype: t, body: b }, &apps, [7; 32]).map(|_| ()))
    };
    let mut s = ProviderState::AwaitHello;
    assert_eq!(prov(&mut s, ftype::AUTH_HELLO, &[9, 0xff]), Some(ErrorCode::UNSUPPORTED_VERSION));
    assert_eq!(prov(&mut s, ftype::AUTH_HELLO, &[1, 1, b'b']), Some(ErrorCode::UNKNOWN_APP));
    assert_eq!(prov(&mut s, ftype::PING, &[]), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(prov(&mut s, ftype::AUTH_HELLO, &[1, 1, b'a']), None);
    assert_eq!(s, ProviderState::AwaitAuth { app: 0, nonce: [7; 32] });
    let mut ready = ProviderState::Ready { app: 0 };
    assert_eq!(prov(&mut ready, ftype::PING, &[]), None);
    assert_eq!(prov(&mut ready, ftype::HELLO, &[2]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    assert_eq!(prov(&mut ready, ftype::RESULT, &[0; 21]), Some(ErrorCode::UNEXPECTED_FRAME));
    assert_eq!(prov(&mut ready, 0x09, &[]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    assert_eq!(prov(&mut ready, ftype::SUBSCRIBE, &[]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    assert_eq!(prov(&mut ready, 0x32, &[]), Some(ErrorCode::UNKNOWN_FRAME_TYPE));
    assert_eq!(prov(&mut ready, ftype::TOPIC_STATS, &[0; 12]), None);
    assert_eq!(prov(&mut ready, ftype::TOPIC_STATS_RESULT, &[0; 21]), Some(ErrorCode::UNEXPECTED_FRAME));
    // TOPIC_MANAGE: op other than 0/1, or a count of 0, is malformed.
    let mut manage = vec![0, 0, 0, 9, 1, 1, b'n', 0, 1];
    manage.extend_from_slice(&[0; 24]);
    assert_eq!(prov(&mut ready, ftype::TOPIC_MANAGE, &manage), None);
    manage[4] = 2;
    assert_eq!(prov(&mut ready, ftype::TOPIC_MANAGE, &manage), Some(ErrorCode::MALFORMED_FRAME));
    assert_eq!(
        prov(&mut ready, ftype::TOPIC_MANAGE, &[0, 0, 0, 9, 1, 1, b'n', 0, 0]),
        Some(ErrorCode::MALFORMED_FRAME)
    );
}
