//! The JSON shapes of the HTTP API: the push request body, the per-token results, feedback pages,
//! receipts and the `{ "error", "message" }` body; and the status → HTTP code mapping.

use base64::engine::general_purpose::STANDARD;
use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::backend::{FeedbackPage, Note, Outcome};
use crate::proto::frame::{FLAG_RECEIPT, MAX_COLLAPSE, MAX_MULTICAST};
use crate::proto::{Kind, Status, Token, PRIORITY_HIGH, PRIORITY_NORMAL};
use crate::store::Receipt;

/// Lifetime of a notification whose request has no `expiry_s`, seconds: 24 hours
/// (as `pushgate push`; APNs and FCM keep one up to four weeks, but a day suits a self-hosted queue).
pub const DEFAULT_EXPIRY_S: u64 = crate::client::DEFAULT_TTL_S as u64;
/// The longest `expiry_s` accepted: 28 days, as FCM's maximum time to live.
pub const MAX_EXPIRY_S: u64 = 28 * 86_400;

/// The body of `POST /v1/push`.
/// Strings borrow from the body where they need no unescaping (the usual case: no copy).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PushBody<'a> {
    #[serde(borrow)]
    token: Option<Text<'a>>,
    #[serde(borrow)]
    tokens: Option<Vec<Text<'a>>>,
    #[serde(borrow)]
    kind: Option<Text<'a>>,
    priority: Option<Priority>,
    expiry_s: Option<u64>,
    #[serde(borrow)]
    collapse: Option<Text<'a>>,
    receipt: Option<bool>,
    #[serde(borrow)]
    payload: Option<Text<'a>>,
    #[serde(borrow)]
    payload_b64: Option<Text<'a>>,
}

/// A JSON string, borrowed from the body when it has no escapes (serde's own `Cow` always copies).
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Priority {
    Name(String),
    Number(u64),
}

/// A parsed push request: the note, and per requested token its parsed value (`None`: not 48 hex digits).
#[derive(Debug)]
pub struct PushRequest<'a> {
    /// Whether the body said `token` (one answer, status mapped to the HTTP code) rather than `tokens`.
    pub single: bool,
    /// The tokens as sent, for the answer.
    pub token_text: Vec<Cow<'a, str>>,
    pub tokens: Vec<Option<Token>>,
    pub note: Note,
}

/// A request the gateway refuses before the backend sees it: HTTP code, error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(http: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { http, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `{ "error": code, "message": … }`.
    pub fn body(&self) -> Value {
        json!({ "error": self.code, "message": self.message })
    }
}

/// Parses the body of `POST /v1/push`; `now_s` turns `expiry_s` into the absolute expiry. A payload
/// without escapes is a slice of `body`, not a copy.
pub fn parse_push(body: &Bytes, now_s: u64) -> Result<PushRequest<'_>, ApiError> {
    let mut b: PushBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not a push: {e}")))?;
    let (single, token_text) = match (b.token.take(), b.tokens.take()) {
        (Some(t), None) => (true, vec![t.0]),
        (None, Some(ts)) if ts.is_empty() => return Err(ApiError::bad_request("`tokens` is empty")),
        (None, Some(ts)) if ts.len() > MAX_MULTICAST => {
            return Err(ApiError::bad_request(format!("`tokens` has more than {MAX_MULTICAST} entries")))
        }
        (None, Some(ts)) => (false, ts.into_iter().map(|t| t.0).collect()),
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give `token` or `tokens`, not both")),
        (None, None) => return Err(ApiError::bad_request("give `token` (one) or `tokens` (up to 1000)")),
    };
    let note = note_of(b, body, now_s)?;
    let tokens = token_text.iter().map(|t| Token::from_hex(t)).collect();
    Ok(PushRequest { single, token_text, tokens, note })
}

/// Parses the body of `POST /v1/topics/{topic}/push`: a push body without `token` or `tokens`.
pub fn parse_topic_push(body: &Bytes, now_s: u64) -> Result<Note, ApiError> {
    let b: PushBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not a push: {e}")))?;
    if b.token.is_some() || b.tokens.is_some() {
        return Err(ApiError::bad_request("a topic push names no `token` or `tokens`"));
    }
    note_of(b, body, now_s)
}

/// The notification fields of a push body (tokens already taken out).
fn note_of<'a>(b: PushBody<'a>, body: &'a Bytes, now_s: u64) -> Result<Note, ApiError> {
    let kind = match b.kind.as_ref().map(|k| &*k.0) {
        None | Some("alert") => Kind::ALERT,
        Some("badge") => Kind::BADGE,
        Some("background") => Kind::BACKGROUND,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unknown kind {other:?}: alert, badge or background")))
        }
    };
    let priority = match b.priority {
        None => PRIORITY_HIGH,
        Some(Priority::Name(n)) if n == "high" => PRIORITY_HIGH,
        Some(Priority::Name(n)) if n == "normal" => PRIORITY_NORMAL,
        Some(Priority::Number(n)) if n == u64::from(PRIORITY_HIGH) || n == u64::from(PRIORITY_NORMAL) => {
            n as u8
        }
        Some(p) => {
            return Err(ApiError::bad_request(format!("priority {p:?}: \"high\" (10) or \"normal\" (5)")))
        }
    };
    let expiry_s = b.expiry_s.unwrap_or(DEFAULT_EXPIRY_S);
    if expiry_s > MAX_EXPIRY_S {
        return Err(ApiError::bad_request(format!("expiry_s over {MAX_EXPIRY_S} (28 days)")));
    }
    let expiry = match expiry_s {
        0 => 0,
        s => u32::try_from(now_s.saturating_add(s)).unwrap_or(u32::MAX),
    };
    let text = |t: Text<'_>| match t.0 {
        Cow::Borrowed(t) => body.slice_ref(t.as_bytes()),
        Cow::Owned(t) => Bytes::from(t),
    };
    let collapse = b.collapse.map(text).unwrap_or_default();
    if collapse.len() > MAX_COLLAPSE {
        return Err(ApiError::bad_request(format!("collapse longer than {MAX_COLLAPSE} bytes")));
    }
    let payload = match (b.payload, b.payload_b64) {
        (Some(p), None) => text(p),
        (None, Some(p)) => Bytes::from(
            STANDARD
                .decode(p.0.as_bytes())
                .map_err(|_| ApiError::bad_request("payload_b64 is not base64"))?,
        ),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give `payload` or `payload_b64`, not both")),
    };
    let flags = if b.receipt.unwrap_or(false) { FLAG_RECEIPT } else { 0 };
    Ok(Note { kind: kind.0, priority, flags, expiry, collapse, payload })
}

/// One token's answer: `token`, `status`, and `msg_id` (a string: ids exceed 2^53) when delivered or
/// queued, `unregistered_at_ms` when unregistered, `retry_after_ms` when rate limited or unavailable;
/// with `error` and `message` when `error` is given. Written straight into `out` (no `Value` per
/// answer), keys in the order `serde_json` writes a map's: sorted.
fn write_result(out: &mut Vec<u8>, token: &str, o: &Outcome, error: Option<(&str, &str)>) {
    use std::io::Write as _;
    out.push(b'{');
    if let Some((code, message)) = error {
        out.extend_from_slice(b"\"error\":");
        put_str(out, code);
        out.extend_from_slice(b",\"message\":");
        put_str(out, message);
        out.push(b',');
    }
    match o.status {
        Status::DELIVERED | Status::QUEUED => {
            let _ = write!(out, "\"msg_id\":\"{}\",", o.msg_id);
        }
        Status::RATE_LIMITED | Status::UNAVAILABLE | Status::STORE_FAILED if o.info > 0 => {
            let _ = write!(out, "\"retry_after_ms\":{},", o.info);
        }
        _ => {}
    }
    out.extend_from_slice(b"\"status\":");
    put_str(out, o.status.name());
    out.extend_from_slice(b",\"token\":");
    put_str(out, token);
    if o.status == Status::UNREGISTERED {
        let _ = write!(out, ",\"unregistered_at_ms\":{}", o.info);
    }
    out.push(b'}');
}

/// `s` as a JSON string (quoted, escaped).
fn put_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serialises.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The HTTP code a single-token push answers with, and the `Retry-After` seconds if any.
pub fn http_status(o: &Outcome) -> (StatusCode, Option<u64>) {
    let retry = || Some(o.info.div_ceil(1000).max(1));
    match o.status {
        Status::DELIVERED | Status::QUEUED | Status::NOT_DELIVERED => (StatusCode::OK, None),
        Status::BAD_TOKEN | Status::BAD_REQUEST => (StatusCode::BAD_REQUEST, None),
        Status::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, None),
        Status::UNREGISTERED => (StatusCode::GONE, None),
        Status::RATE_LIMITED => (StatusCode::TOO_MANY_REQUESTS, retry()),
        Status::UNAVAILABLE | Status::STORE_FAILED => (StatusCode::SERVICE_UNAVAILABLE, retry()),
        Status::BAD_TOPIC => (StatusCode::BAD_REQUEST, None),
        Status::TOPIC_LIMIT => (StatusCode::FORBIDDEN, None),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    }
}

/// The answer to a single-token push: the result, plus `error` and `message` when it is not a 2xx;
/// JSON text ending in a newline.
pub fn single_json(token: &str, o: &Outcome, http: StatusCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    if http.is_success() {
        write_result(&mut out, token, o, None);
    } else {
        let code = if o.status.is_known() { o.status.name() } else { "internal" };
        write_result(&mut out, token, o, Some((code, &status_message(o))));
    }
    out.push(b'\n');
    out
}

fn status_message(o: &Outcome) -> String {
    match o.status {
        Status::BAD_TOKEN => "not a device token of this app".into(),
        Status::BAD_REQUEST => "a field is out of range".into(),
        Status::PAYLOAD_TOO_LARGE => "payload over 4096 bytes".into(),
        Status::UNREGISTERED => format!("the device unregistered at {} (unix ms); stop sending", o.info),
        Status::RATE_LIMITED => format!("the app is over its push rate; retry after {} ms", o.info),
        Status::UNAVAILABLE => format!("the gateway is draining or overloaded; retry after {} ms", o.info),
        Status::STORE_FAILED => "the store could not accept the notification; retry later".into(),
        Status::BAD_TOPIC => "not a topic name (1..64 of A-Z a-z 0-9 - _ . ~ %; ~ names reserved)".into(),
        Status::TOPIC_LIMIT => "the app has limits.topics_per_app topics with a log already".into(),
        s => format!("unknown status {}", s.0),
    }
}

/// The answer to a topic push: `msg_id` (when accepted), `status`, `topic`, plus `error` and
/// `message` when it is not a 2xx; JSON text ending in a newline.
pub fn topic_json(topic: &str, o: &Outcome, http: StatusCode) -> Vec<u8> {
    let mut v = json!({ "topic": topic, "status": o.status.name() });
    if matches!(o.status, Status::DELIVERED | Status::QUEUED) {
        v["msg_id"] = json!(o.msg_id.to_string());
    }
    if matches!(o.status, Status::RATE_LIMITED | Status::UNAVAILABLE | Status::STORE_FAILED) && o.info > 0 {
        v["retry_after_ms"] = json!(o.info);
    }
    if !http.is_success() {
        v["error"] = json!(if o.status.is_known() { o.status.name() } else { "internal" });
        v["message"] = json!(status_message(o));
    }
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// `{ "results": [...] }` for a multi-token push; JSON text ending in a newline.
pub fn multi_json(tokens: &[impl AsRef<str>], outcomes: &[Outcome]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + tokens.len() * 110);
    out.extend_from_slice(b"{\"results\":[");
    for (i, (t, o)) in tokens.iter().zip(outcomes).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_result(&mut out, t.as_ref(), o, None);
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// A feedback page, with the cursor of the next page (the last entry, or the request's if none).
pub fn feedback_json(page: &FeedbackPage, since_ms: u64, after: &Token) -> Value {
    let entries: Vec<Value> =
        page.entries.iter().map(|(at, t)| json!({ "token": t.to_hex(), "unregistered_at_ms": at })).collect();
    let (next_since, next_after) = page.entries.last().map(|(at, t)| (*at, *t)).unwrap_or((since_ms, *after));
    json!({
        "entries": entries,
        "more": page.more,
        "next_since_ms": next_since,
        "next_after": next_after.to_hex(),
    })
}

/// One receipt as the `data` of an SSE `receipt` event.
pub fn receipt_json(r: &Receipt) -> Value {
    json!({ "token": r.token.to_hex(), "msg_id": r.msg_id.to_string(), "acked_at_ms": r.acked_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "000d96d7dccbac4ae2e1cfd3e3a243fb4f80167395a9c985";

    /// [`parse_push`] of a copy of `body` (kept for the test's life: the result borrows it).
    fn parse(body: &[u8], now_s: u64) -> Result<PushRequest<'static>, ApiError> {
        parse_push(Box::leak(Box::new(Bytes::copy_from_slice(body))), now_s)
    }

    #[test]
    fn a_full_push_body_parses() {
        let body = format!(
            r#"{{"tokens":["{T}","zz"],"kind":"badge","priority":5,"expiry_s":60,"collapse":"c","receipt":true,"payload_b64":"aGk="}}"#
        );
        let r = parse(body.as_bytes(), 1000).unwrap();
        assert!(!r.single);
        assert_eq!(r.tokens.len(), 2);
        assert!(r.tokens[0].is_some() && r.tokens[1].is_none());
        assert_eq!(
            r.note,
            Note {
                kind: 1,
                priority: 5,
                flags: FLAG_RECEIPT,
                expiry: 1060,
                collapse: Bytes::from("c"),
                payload: Bytes::from("hi")
            }
        );
        let r = parse(format!(r#"{{"token":"{T}","payload":"x","expiry_s":0}}"#).as_bytes(), 5).unwrap();
        assert!(r.single);
        assert_eq!((r.note.kind, r.note.priority, r.note.flags, r.note.expiry), (0, 10, 0, 0));
        let r = parse(format!(r#"{{"token":"{T}"}}"#).as_bytes(), 5).unwrap();
        assert_eq!(r.note.expiry as u64, 5 + DEFAULT_EXPIRY_S);
    }

    #[test]
    fn escaped_strings_are_unescaped_and_plain_ones_borrowed() {
        let r = parse(format!(r#"{{"token":"{T}","payload":"a\nb","collapse":"c\u0041"}}"#).as_bytes(), 0)
            .unwrap();
        assert_eq!((&r.note.payload[..], &r.note.collapse[..]), (&b"a\nb"[..], &b"cA"[..]));
        assert!(matches!(r.token_text[0], Cow::Borrowed(_)));
        let r = parse(br#"{"tokens":["x\u0041"]}"#, 0).unwrap();
        assert_eq!(r.token_text[0], "xA");
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        let many = format!(r#"{{"tokens":[{}]}}"#, vec![format!("\"{T}\""); 1001].join(","));
        for body in [
            "",
            "[]",
            "{}",
            r#"{"tokens":[]}"#,
            &many,
            r#"{"token":"a","tokens":["b"]}"#,
            r#"{"token":"a","kind":"loud"}"#,
            r#"{"token":"a","priority":7}"#,
            r#"{"token":"a","priority":"urgent"}"#,
            r#"{"token":"a","expiry_s":-1}"#,
            r#"{"token":"a","expiry_s":99999999999}"#,
            r#"{"token":"a","payload":"x","payload_b64":"eA=="}"#,
            r#"{"token":"a","payload_b64":"!!"}"#,
            r#"{"token":"a","bogus":1}"#,
        ] {
            let e = parse(body.as_bytes(), 0).unwrap_err();
            assert_eq!((e.http, e.code), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_or_is_a_bad_request(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Err(e) = parse(&body, u64::MAX) {
                proptest::prop_assert_eq!(e.http, StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn any_json_push_parses_or_is_a_bad_request(
            token in "[0-9a-f]{0,50}", kind in "[a-z]{0,10}", prio in 0u64..20, expiry in proptest::num::u64::ANY,
            payload in ".{0,40}",
        ) {
            let body = json!({ "token": token, "kind": kind, "priority": prio, "expiry_s": expiry, "payload": payload });
            if let Err(e) = parse(body.to_string().as_bytes(), u64::MAX - 1) {
                proptest::prop_assert_eq!(e.http, StatusCode::BAD_REQUEST);
            }
        }
    }

    #[test]
    fn statuses_map_to_http_codes() {
        let o = |s, info| Outcome { status: s, msg_id: 0, info };
        assert_eq!(http_status(&o(Status::DELIVERED, 0)), (StatusCode::OK, None));
        assert_eq!(http_status(&o(Status::RATE_LIMITED, 1001)), (StatusCode::TOO_MANY_REQUESTS, Some(2)));
        assert_eq!(http_status(&o(Status::UNAVAILABLE, 0)), (StatusCode::SERVICE_UNAVAILABLE, Some(1)));
        assert_eq!(http_status(&o(Status(99), 0)).0, StatusCode::INTERNAL_SERVER_ERROR);
        let v =
            single_json(T, &Outcome { status: Status::QUEUED, msg_id: u64::MAX, info: 0 }, StatusCode::OK);
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["msg_id"], json!(u64::MAX.to_string()));
    }

    /// The answers as the `Value`s they used to be built from, byte for byte.
    #[test]
    fn answers_are_the_json_they_were() {
        let old_result = |token: &str, o: &Outcome| {
            let mut v = json!({ "token": token, "status": o.status.name() });
            match o.status {
                Status::DELIVERED | Status::QUEUED => v["msg_id"] = json!(o.msg_id.to_string()),
                Status::UNREGISTERED => v["unregistered_at_ms"] = json!(o.info),
                Status::RATE_LIMITED | Status::UNAVAILABLE | Status::STORE_FAILED if o.info > 0 => {
                    v["retry_after_ms"] = json!(o.info)
                }
                _ => {}
            }
            v
        };
        let odd = "a\"b\\c\u{1}\u{e9}";
        let mut all = Vec::new();
        for code in 0..=20u8 {
            for info in [0, 1500] {
                let o = Outcome { status: Status(code), msg_id: 1 << 60, info };
                for token in [T, odd] {
                    let (http, _) = http_status(&o);
                    let mut want = old_result(token, &o);
                    if !http.is_success() {
                        want["error"] = json!(if o.status.is_known() { o.status.name() } else { "internal" });
                        want["message"] = json!(status_message(&o));
                    }
                    let got = single_json(token, &o, http);
                    assert_eq!(String::from_utf8(got).unwrap(), format!("{want}\n"));
                    all.push((token.to_string(), o, old_result(token, &o)));
                }
            }
        }
        let tokens: Vec<String> = all.iter().map(|a| a.0.clone()).collect();
        let outcomes: Vec<Outcome> = all.iter().map(|a| a.1).collect();
        let want = json!({ "results": all.iter().map(|a| a.2.clone()).collect::<Vec<_>>() });
        assert_eq!(String::from_utf8(multi_json(&tokens, &outcomes)).unwrap(), format!("{want}\n"));
    }
}
