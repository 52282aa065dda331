//! The HTTP push API over real sockets on 127.0.0.1 against a fake `Backend`: auth, every status
//! mapping, multi push, feedback, SSE receipts, bounds and timeouts, HTTP/1.1, h2 (prior knowledge and
//! TLS ALPN), and the contract in docs/openapi.yaml (every documented path and status answers as written).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use pushgate::config::HttpConfig;
use pushgate::http::auth;
use pushgate::http::{Backend, Done, FeedbackPage, HttpServer, Note, Outcome};
use pushgate::proto::{Apps, Status, SubStatus, Token, TOKEN_LEN};
use pushgate::store::Receipt;

const SECRET: &[u8] = b"0123456789abcdef";
const OTHER_SECRET: &[u8] = b"fedcba9876543210";

/// Token whose first byte tells the fake which status to answer.
const DROP: u8 = 0xEE;
const SLOW: u8 = 0xEF;
/// `since_ms` values the fake's feedback never answers, or answers after 3 s.
const FEEDBACK_DROP: u64 = 999;
const FEEDBACK_SLOW: u64 = 998;

fn token(status: u8, n: u8) -> Token {
    let mut t = [n; TOKEN_LEN];
    t[0] = status;
    Token(t)
}

/// Answers each token by its first byte: that status, msg_id `2^60 + n` for delivered/queued,
/// info 1500 (retry ms) or the unregister time. `DROP` never answers; `SLOW` answers after 3 s.
#[derive(Default)]
struct Fake {
    pushes: Mutex<Vec<(u16, Vec<Token>, Note)>>,
    feedbacks: Mutex<Vec<(u16, u64, Token)>>,
    sinks: Mutex<Vec<(u16, crossbeam_channel::Sender<Receipt>)>>,
}

impl Backend for Fake {
    fn push(&self, app: u16, tokens: Vec<Token>, note: Note, done: Done<Vec<Outcome>>) {
        self.pushes.lock().unwrap().push((app, tokens.clone(), note));
        let first = tokens[0].0[0];
        if first == DROP {
            return;
        }
        std::thread::spawn(move || {
            if first == SLOW {
                std::thread::sleep(Duration::from_secs(3));
            }
            let out = tokens
                .iter()
                .map(|t| {
                    let status = Status(t.0[0]);
                    let msg_id = match status {
                        Status::DELIVERED | Status::QUEUED => (1 << 60) + u64::from(t.0[1]),
                        _ => 0,
                    };
                    let info = match status {
                        Status::UNREGISTERED => 1_798_761_612_345,
                        Status::RATE_LIMITED | Status::UNAVAILABLE => 1500,
                        _ => 0,
                    };
                    Outcome { status, msg_id, info }
                })
                .collect();
            done(out);
        });
    }

    fn feedback(&self, app: u16, since_ms: u64, after: Token, done: Done<FeedbackPage>) {
        self.feedbacks.lock().unwrap().push((app, since_ms, after));
        if since_ms == FEEDBACK_DROP {
            return;
        }
        let entries = vec![(since_ms + 1, token(1, 1)), (since_ms + 2, token(1, 2))];
        std::thread::spawn(move || {
            if since_ms == FEEDBACK_SLOW {
                std::thread::sleep(Duration::from_secs(3));
            }
            done(FeedbackPage { entries, more: true })
        });
    }

    fn subscribe_receipts(&self, app: u16, sink: crossbeam_channel::Sender<Receipt>) {
        self.sinks.lock().unwrap().push((app, sink));
    }

    /// Topic `s<N>` answers status N (queued and delivered with msg_id 2^62 + 1).
    fn push_topic(&self, _app: u16, topic: &[u8], _note: Note, done: Done<Outcome>) {
        let status = std::str::from_utf8(topic).ok().and_then(|t| t.strip_prefix('s')?.parse().ok());
        let status = Status(status.unwrap_or(255));
        let msg_id = if matches!(status, Status::DELIVERED | Status::QUEUED) { (1 << 62) + 1 } else { 0 };
        let info = if matches!(status, Status::RATE_LIMITED | Status::UNAVAILABLE) { 1500 } else { 0 };
        done(Outcome { status, msg_id, info })
    }

    /// Each token answers the SubStatus of its first byte.
    fn manage_topic(&self, _app: u16, _add: bool, _t: &[u8], tokens: Vec<Token>, done: Done<Vec<SubStatus>>) {
        done(tokens.iter().map(|t| SubStatus(t.0[0])).collect())
    }

    fn topic_stats(&self, msg_id: u64) -> Option<(u64, u64)> {
        (msg_id == 5).then_some((3, 2))
    }
}

fn test_cfg() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        header_read_timeout_ms: 400,
        request_timeout_ms: 1000,
        idle_timeout_ms: 3000,
        sse_keepalive_s: 1,
        max_body_bytes: 8192,
        ..HttpConfig::default()
    }
}

fn apps() -> Apps {
    let mut a = Apps::new();
    a.add("demo", SECRET);
    a.add("other", OTHER_SECRET);
    a
}

fn start(cfg: HttpConfig) -> (HttpServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let s = pushgate::http::start(&cfg, apps(), fake.clone(), None).unwrap();
    (s, fake)
}

/// Shuts the server down off the test's runtime, so the client side keeps answering (h2 GOAWAY, PING).
async fn stop(s: HttpServer) {
    tokio::task::spawn_blocking(move || s.shutdown()).await.unwrap();
}

fn jwt() -> String {
    auth::sign("demo", SECRET, auth::now_s())
}

/// One HTTP client connection (HTTP/1.1 or h2 with prior knowledge) over any stream.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    async fn over<S>(io: S, h2: bool) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(c);
            Client::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            Client::H1(s)
        }
    }

    async fn connect(addr: SocketAddr, h2: bool) -> Client {
        Client::over(tokio::net::TcpStream::connect(addr).await.unwrap(), h2).await
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Client::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Client::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }

    /// Sends and reads the whole answer as JSON.
    async fn call(&mut self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Value) {
        let r = self.send(req).await;
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
        (parts.status, parts.headers, v)
    }
}

fn req(method: Method, path: &str, bearer: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(format!("http://localhost{path}"));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.header("content-type", "application/json").body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn push_req(body: &Value) -> Request<Full<Bytes>> {
    req(Method::POST, "/v1/push", Some(&jwt()), &body.to_string())
}

#[tokio::test]
async fn single_push_over_http1_and_h2_prior_knowledge() {
    let (s, fake) = start(test_cfg());
    for h2 in [false, true] {
        let mut c = Client::connect(s.local_addr(), h2).await;
        let t = token(0, 7);
        let body = json!({ "token": t.to_hex(), "payload": "hello", "kind": "badge", "priority": "normal",
                           "expiry_s": 60, "collapse": "score", "receipt": true });
        let (code, _, v) = c.call(push_req(&body)).await;
        assert_eq!(code, StatusCode::OK, "h2={h2} {v}");
        assert_eq!(
            v,
            json!({ "token": t.to_hex(), "status": "delivered", "msg_id": ((1u64 << 60) + 7).to_string() })
        );
        // A second request on the same connection (keep-alive / another stream).
        let (code, _, _) = c.call(push_req(&json!({ "token": token(1, 1).to_hex() }))).await;
        assert_eq!(code, StatusCode::OK);
        let pushes = fake.pushes.lock().unwrap();
        let (app, tokens, note) = &pushes[pushes.len() - 2];
        assert_eq!((*app, tokens.as_slice()), (0, &[t][..]));
        let now = auth::now_s() as u32;
        assert!(note.expiry >= now + 58 && note.expiry <= now + 61, "{note:?}");
        let want = Note {
            kind: 1,
            priority: 5,
            flags: 1,
            expiry: note.expiry,
            collapse: "score".into(),
            payload: "hello".into(),
        };
        assert_eq!(note, &want);
    }
    stop(s).await;
}

#[tokio::test]
async fn every_status_maps_to_its_http_code() {
    let (s, _) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), true).await;
    let cases = [
        (Status::DELIVERED, 200, None),
        (Status::QUEUED, 200, None),
        (Status::BAD_TOKEN, 400, None),
        (Status::PAYLOAD_TOO_LARGE, 413, None),
        (Status::NOT_DELIVERED, 200, None),
        (Status::BAD_REQUEST, 400, None),
        (Status::RATE_LIMITED, 429, Some("2")),
        (Status::UNAVAILABLE, 503, Some("2")),
        (Status::UNREGISTERED, 410, None),
        (Status::STORE_FAILED, 503, Some("1")),
        (Status(42), 500, None),
    ];
    for (status, http, retry) in cases {
        let t = token(status.0, 3);
        let (code, h, v) = c.call(push_req(&json!({ "token": t.to_hex() }))).await;
        assert_eq!(code.as_u16(), http, "{status:?}: {v}");
        assert_eq!(h.get("retry-after").map(|v| v.to_str().unwrap()), retry, "{status:?}");
        assert_eq!(v["status"], json!(status.name()));
        assert_eq!(v["msg_id"].is_string(), http == 200 && status != Status::NOT_DELIVERED, "{v}");
        if http != 200 {
            assert_eq!(v["error"], json!(if status.is_known() { status.name() } else { "internal" }), "{v}");
            assert!(v["message"].is_string());
        }
        if status == Status::UNREGISTERED {
            assert_eq!(v["unregistered_at_ms"], json!(1_798_761_612_345u64));
        }
    }
    // A token that is not 48 hex digits never reaches the backend.
    let (code, _, v) = c.call(push_req(&json!({ "token": "nope" }))).await;
    assert_eq!((code.as_u16(), &v["status"], &v["error"]), (400, &json!("bad_token"), &json!("bad_token")));
    stop(s).await;
}

#[tokio::test]
async fn multi_push_answers_200_with_one_result_per_token_in_order() {
    let (s, fake) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), false).await;
    let ts = [token(0, 1), token(8, 2), token(6, 3), token(1, 4)];
    let mut hex: Vec<String> = ts.iter().map(Token::to_hex).collect();
    hex.insert(2, "zz".into());
    let (code, _, v) = c.call(push_req(&json!({ "tokens": hex, "payload_b64": "AAEC" }))).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    let statuses: Vec<&str> = r.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["delivered", "unregistered", "bad_token", "rate_limited", "queued"]);
    assert_eq!(r[2]["token"], json!("zz"));
    assert_eq!(r[3]["retry_after_ms"], json!(1500));
    assert_eq!(r[4]["msg_id"], json!(((1u64 << 60) + 4).to_string()));
    let (_, got, note) = fake.pushes.lock().unwrap()[0].clone();
    assert_eq!(got, ts.to_vec(), "only well-formed tokens reach the backend");
    assert_eq!(note.payload, Bytes::from_static(&[0, 1, 2]));
    // Even a one-element `tokens` is a multi push: 200 whatever the status.
    let (code, _, v) = c.call(push_req(&json!({ "tokens": [token(8, 1).to_hex()] }))).await;
    assert_eq!((code, &v["results"][0]["status"]), (StatusCode::OK, &json!("unregistered")));
    stop(s).await;
}

#[tokio::test]
async fn auth_rejects_bad_signature_old_or_future_iat_wrong_and_unknown_app() {
    let (s, fake) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), true).await;
    let now = auth::now_s();
    let body = json!({ "token": token(0, 1).to_hex() }).to_string();
    let cases = [
        (None, "auth_failed"),
        (Some(auth::sign("demo", b"not the secret!!", now)), "auth_failed"),
        (Some(auth::sign("demo", OTHER_SECRET, now)), "auth_failed"),
        (Some(auth::sign("demo", SECRET, now - 3601)), "auth_failed"),
        (Some(auth::sign("demo", SECRET, now + 120)), "auth_failed"),
        (Some(auth::sign("nope", SECRET, now)), "unknown_app"),
        (Some("a.b.c".to_string()), "auth_failed"),
    ];
    for (t, want) in cases {
        let (code, h, v) = c.call(req(Method::POST, "/v1/push", t.as_deref(), &body)).await;
        assert_eq!((code, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some(want)), "{t:?}: {v}");
        assert!(v["message"].is_string());
        assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    }
    assert!(fake.pushes.lock().unwrap().is_empty());
    // The other app's own token works, and the push is made as that app.
    let t = auth::sign("other", OTHER_SECRET, now);
    let (code, _, _) = c.call(req(Method::POST, "/v1/push", Some(&t), &body)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(fake.pushes.lock().unwrap()[0].0, 1);
    stop(s).await;
}

#[tokio::test]
async fn body_too_large_is_413_with_a_json_error() {
    let (s, fake) = start(test_cfg());
    let big = json!({ "token": token(0, 1).to_hex(), "payload": "x".repeat(9000) });
    for h2 in [false, true] {
        let mut c = Client::connect(s.local_addr(), h2).await;
        let (code, _, v) = c.call(push_req(&big)).await;
        assert_eq!((code, &v["error"]), (StatusCode::PAYLOAD_TOO_LARGE, &json!("payload_too_large")), "{v}");
    }
    // Without a Content-Length (chunked), the limit holds while reading.
    let mut raw = TcpStream::connect(s.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let chunk = "x".repeat(4000);
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        jwt()
    );
    raw.write_all(head.as_bytes()).unwrap();
    for _ in 0..3 {
        let _ = raw.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"payload_too_large\""), "{text}");
    assert!(fake.pushes.lock().unwrap().is_empty());
    stop(s).await;
}

#[tokio::test]
async fn bad_json_unknown_paths_and_methods() {
    let (s, _) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), false).await;
    let (code, _, v) = c.call(req(Method::POST, "/v1/push", Some(&jwt()), "{\"token\":")).await;
    assert_eq!((code, &v["error"]), (StatusCode::BAD_REQUEST, &json!("bad_request")));
    let (code, _, v) = c.call(req(Method::GET, "/v2/nothing", None, "")).await;
    assert_eq!((code, &v["error"]), (StatusCode::NOT_FOUND, &json!("not_found")));
    let (code, h, v) = c.call(req(Method::GET, "/v1/push", Some(&jwt()), "")).await;
    assert_eq!((code, &v["error"]), (StatusCode::METHOD_NOT_ALLOWED, &json!("method_not_allowed")));
    assert_eq!(h.get("allow").unwrap(), "POST");
    stop(s).await;
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_or_at_all() {
    let (s, _) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), true).await;
    let t0 = Instant::now();
    let (code, h, v) = c.call(push_req(&json!({ "token": token(SLOW, 1).to_hex() }))).await;
    assert_eq!((code, &v["error"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable")), "{v}");
    assert_eq!(h.get("retry-after").unwrap(), "1");
    assert!(t0.elapsed() < Duration::from_millis(2500), "{:?}", t0.elapsed());
    let (code, _, v) = c.call(push_req(&json!({ "token": token(DROP, 1).to_hex() }))).await;
    assert_eq!((code, &v["error"]), (StatusCode::INTERNAL_SERVER_ERROR, &json!("internal")), "{v}");
    stop(s).await;
}

#[tokio::test]
async fn feedback_pages_with_a_cursor() {
    let (s, fake) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), true).await;
    let after = token(1, 9);
    let path = format!("/v1/feedback?since_ms=1000&after={}", after.to_hex());
    let (code, _, v) = c.call(req(Method::GET, &path, Some(&jwt()), "")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({
            "entries": [
                { "token": token(1, 1).to_hex(), "unregistered_at_ms": 1001 },
                { "token": token(1, 2).to_hex(), "unregistered_at_ms": 1002 },
            ],
            "more": true,
            "next_since_ms": 1002,
            "next_after": token(1, 2).to_hex(),
        })
    );
    assert_eq!(fake.feedbacks.lock().unwrap()[0], (0, 1000, after));
    let (code, _, _) = c.call(req(Method::GET, "/v1/feedback", Some(&jwt()), "")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(fake.feedbacks.lock().unwrap()[1], (0, 0, Token([0; TOKEN_LEN])));
    let (code, _, v) = c.call(req(Method::GET, "/v1/feedback?since_ms=x", Some(&jwt()), "")).await;
    assert_eq!((code, &v["error"]), (StatusCode::BAD_REQUEST, &json!("bad_request")));
    stop(s).await;
}

/// Reads the stream until `want` appears (or panics after 5 s).
async fn read_until(body: &mut Incoming, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(want) {
        let f = tokio::time::timeout_at(deadline, body.frame()).await;
        match f {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
            other => panic!("stream ended or timed out waiting for {want:?}: {other:?}; got {seen:?}"),
        }
    }
}

#[tokio::test]
async fn receipts_stream_as_server_sent_events_with_keepalives() {
    let (s, fake) = start(test_cfg());
    for h2 in [false, true] {
        let mut c = Client::connect(s.local_addr(), h2).await;
        let r = c
            .send(req(
                Method::GET,
                "/v1/receipts",
                Some(&auth::sign("other", OTHER_SECRET, auth::now_s())),
                "",
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers().get("content-type").unwrap(), "text/event-stream");
        let mut body = r.into_body();
        let mut seen = String::new();
        read_until(&mut body, &mut seen, "\n\n").await;
        let (app, sink) = fake.sinks.lock().unwrap().pop().unwrap();
        assert_eq!(app, 1);
        let t = token(0, 5);
        sink.send(Receipt { token: t, msg_id: u64::MAX, acked_at_ms: 1_798_761_601_234 }).unwrap();
        read_until(&mut body, &mut seen, "\n\n: ").await;
        let data = format!(
            "event: receipt\ndata: {}\n\n",
            json!({ "token": t.to_hex(), "msg_id": u64::MAX.to_string(), "acked_at_ms": 1_798_761_601_234u64 })
        );
        assert!(seen.contains(&data), "{seen:?}");
        read_until(&mut body, &mut seen, ": keep-alive\n\n").await;
        // The client goes away: the sink disconnects.
        drop(body);
        drop(c);
        let t0 = Instant::now();
        while sink.send(Receipt { token: t, msg_id: 1, acked_at_ms: 1 }).is_ok() {
            assert!(t0.elapsed() < Duration::from_secs(5), "sink still connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop(s).await;
}

#[test]
fn slow_or_silent_clients_are_closed_after_the_header_timeout() {
    let (s, _) = start(test_cfg());
    // A head that never completes; a connection that never says anything; an h2 preface and nothing more.
    let starts: [&[u8]; 3] =
        [b"POST /v1/push HTTP/1.1\r\nhost: x\r\n", b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];
    for start in starts {
        let mut raw = TcpStream::connect(s.local_addr()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        raw.write_all(start).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match raw.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // an HTTP/2 SETTINGS frame, a 408, a GOAWAY
            }
        }
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(300) && e < Duration::from_millis(2000),
            "{start:?}: closed after {e:?}"
        );
    }
    s.shutdown();
}

#[test]
fn connections_past_the_maximum_are_refused() {
    let (s, _) = start(HttpConfig { max_connections: 2, ..test_cfg() });
    let a = TcpStream::connect(s.local_addr()).unwrap();
    let b = TcpStream::connect(s.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(c.read(&mut buf), Ok(0)), "the third connection is closed at once");
    drop((a, b));
    s.shutdown();
}

#[tokio::test]
async fn tls_from_the_config_with_alpn_h2_and_http1() {
    // As `pushgate serve` would: [tls] cert/key files, tls.http = true, TlsPorts, start_configured.
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = pushgate::config::Config { http: test_cfg(), ..Default::default() };
    cfg.tls.cert = Some(dir.path().join("cert.pem"));
    cfg.tls.key = Some(dir.path().join("key.pem"));
    cfg.tls.http = true;
    let ports = pushgate::tls::TlsPorts::load(&cfg.tls).unwrap();
    assert!(ports.device.is_none() && ports.http.is_some());
    let fake: Arc<dyn Backend> = Arc::new(Fake::default());
    let s = pushgate::http::start_configured(
        &cfg,
        apps(),
        fake.clone(),
        &ports,
        &pushgate::metrics::Metrics::new(1),
    )
    .unwrap()
    .unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    for (alpn, h2) in [(&b"h2"[..], true), (&b"http/1.1"[..], false)] {
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let mut c = Client::over(tls, h2).await;
        let (code, _, v) = c.call(push_req(&json!({ "token": token(1, 1).to_hex() }))).await;
        assert_eq!((code, &v["status"]), (StatusCode::OK, &json!("queued")));
    }
    stop(s).await;
}

#[test]
fn disabled_in_the_config_means_no_listener() {
    let cfg =
        pushgate::config::Config { http: HttpConfig { enabled: false, ..test_cfg() }, ..Default::default() };
    let none = pushgate::http::start_configured(
        &cfg,
        apps(),
        Arc::new(Fake::default()),
        &Default::default(),
        &pushgate::metrics::Metrics::new(1),
    );
    assert!(none.unwrap().is_none());
}

#[tokio::test]
async fn shutdown_ends_receipt_streams_and_returns_promptly() {
    let (s, _) = start(test_cfg());
    let mut c = Client::connect(s.local_addr(), false).await;
    let r = c.send(req(Method::GET, "/v1/receipts", Some(&jwt()), "")).await;
    let mut body = r.into_body();
    let mut seen = String::new();
    read_until(&mut body, &mut seen, "\n\n").await;
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || s.shutdown()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

/// Sends `head` and `body` on a fresh HTTP/1.1 connection (and nothing more), returns the answer.
fn raw_http1(addr: SocketAddr, head: &str, body: &[u8]) -> (StatusCode, HeaderMap, Bytes) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = resp.parse(&got).unwrap() else { panic!("partial answer {got:?}") };
    let mut map = HeaderMap::new();
    for h in resp.headers.iter() {
        map.append(
            hyper::header::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    (StatusCode::from_u16(resp.code.unwrap()).unwrap(), map, Bytes::copy_from_slice(&got[n..]))
}

/// Drives the request that should answer `(path, method, code)` in its `variant`; returns the answer.
async fn drive(addr: SocketAddr, path: &str, code: u16, variant: usize) -> (StatusCode, HeaderMap, Bytes) {
    let push = |t: Token| json!({ "token": t.to_hex() });
    let feedback = |q: &str| req(Method::GET, &format!("/v1/feedback{q}"), Some(&jwt()), "");
    let r = match (path, code, variant) {
        ("/v1/push", 200, 0) => push_req(&push(token(0, 1))),
        ("/v1/push", 200, 1) => push_req(&json!({ "tokens": [token(1, 1).to_hex(), token(8, 1).to_hex()] })),
        ("/v1/push", 400, 0) => push_req(&push(token(2, 1))),
        ("/v1/push", 400, 1) => req(Method::POST, "/v1/push", Some(&jwt()), "{}"),
        ("/v1/push", 401, _) => req(Method::POST, "/v1/push", None, "{}"),
        ("/v1/push", 408, _) => {
            let head = format!(
                "POST /v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n",
                jwt()
            );
            return tokio::task::spawn_blocking(move || raw_http1(addr, &head, b"{\"token\":"))
                .await
                .unwrap();
        }
        ("/v1/push", 410, _) => push_req(&push(token(8, 1))),
        ("/v1/push", 413, 0) => push_req(&push(token(3, 1))),
        ("/v1/push", 413, 1) => {
            push_req(&json!({ "token": token(0, 1).to_hex(), "payload": "x".repeat(9000) }))
        }
        ("/v1/push", 429, _) => push_req(&push(token(6, 1))),
        ("/v1/push", 500, 0) => push_req(&push(token(DROP, 1))),
        ("/v1/push", 500, 1) => push_req(&push(token(77, 1))),
        ("/v1/push", 503, 0) => push_req(&push(token(7, 1))),
        ("/v1/push", 503, 1) => push_req(&push(token(9, 1))),
        ("/v1/push", 503, 2) => push_req(&push(token(SLOW, 1))),
        ("/v1/feedback", 200, _) => feedback("?since_ms=5"),
        ("/v1/feedback", 400, _) => feedback("?after=xyz"),
        ("/v1/feedback", 401, _) => req(Method::GET, "/v1/feedback", Some("x.y.z"), ""),
        ("/v1/feedback", 500, _) => feedback(&format!("?since_ms={FEEDBACK_DROP}")),
        ("/v1/feedback", 503, _) => feedback(&format!("?since_ms={FEEDBACK_SLOW}")),
        ("/v1/receipts", 200, _) => req(Method::GET, "/v1/receipts", Some(&jwt()), ""),
        ("/v1/topics/{topic}/push", _, _) => {
            let (topic, bearer, body) = match code {
                200 => ("s1", Some(jwt()), "{}".to_string()),
                400 => ("s10", Some(jwt()), "{}".to_string()),
                401 => ("s1", None, "{}".to_string()),
                403 => ("s11", Some(jwt()), "{}".to_string()),
                413 => ("s3", Some(jwt()), "{}".to_string()),
                429 => ("s6", Some(jwt()), "{}".to_string()),
                _ => ("s7", Some(jwt()), "{}".to_string()),
            };
            req(Method::POST, &format!("/v1/topics/{topic}/push"), bearer.as_deref(), &body)
        }
        ("/v1/topics/{topic}/subscribers", 200, _) => {
            let body = json!({ "add": [token(0, 1).to_hex(), token(3, 1).to_hex(), "zz"] }).to_string();
            req(Method::POST, "/v1/topics/news/subscribers", Some(&jwt()), &body)
        }
        ("/v1/topics/{topic}/subscribers", 400, _) => {
            req(Method::POST, "/v1/topics/news/subscribers", Some(&jwt()), "{}")
        }
        ("/v1/topics/{topic}/subscribers", 401, _) => {
            req(Method::POST, "/v1/topics/news/subscribers", None, "{}")
        }
        ("/v1/topic-messages/{msg_id}", 200, _) => req(Method::GET, "/v1/topic-messages/5", Some(&jwt()), ""),
        ("/v1/topic-messages/{msg_id}", 400, _) => req(Method::GET, "/v1/topic-messages/x", Some(&jwt()), ""),
        ("/v1/topic-messages/{msg_id}", 401, _) => req(Method::GET, "/v1/topic-messages/5", None, ""),
        ("/v1/receipts", 401, _) => {
            req(Method::GET, "/v1/receipts", Some(&auth::sign("demo", SECRET, 1)), "")
        }
        other => panic!("no driver for documented {other:?}"),
    };
    let mut c = Client::connect(addr, variant % 2 == 1).await;
    let (parts, mut body) = c.send(r).await.into_parts();
    let bytes = if path == "/v1/receipts" && code == 200 {
        let mut seen = String::new();
        read_until(&mut body, &mut seen, "\n\n").await;
        Bytes::from(seen)
    } else {
        body.collect().await.unwrap().to_bytes()
    };
    (parts.status, parts.headers, bytes)
}

/// How many variants each documented answer is driven in (an answer with two shapes gets both).
fn variants(path: &str, code: u16) -> usize {
    match (path, code) {
        ("/v1/push", 200 | 400 | 413 | 500) => 2,
        ("/v1/push", 503) => 3,
        _ => 1,
    }
}

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').unwrap();
            resolve(spec, spec.pointer(ptr).unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => v,
    }
}

/// Whether `v` fits `schema` (types, required fields, enums, items; not patterns).
fn fits(spec: &Value, schema: &Value, v: &Value) -> bool {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        if !all.iter().all(|s| fits(spec, s, v)) {
            return false;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array) {
            if !any.iter().any(|s| fits(spec, s, v)) {
                return false;
            }
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return false;
        }
    }
    let typed = match schema.get("type").and_then(Value::as_str) {
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v
            .as_array()
            .is_some_and(|a| schema.get("items").is_none_or(|items| a.iter().all(|x| fits(spec, items, x)))),
        Some("object") => v.is_object(),
        _ => true,
    };
    if !typed {
        return false;
    }
    if let Some(obj) = v.as_object() {
        let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
        if !required.iter().all(|k| obj.contains_key(k.as_str().unwrap())) {
            return false;
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, s) in props {
                if obj.get(k).is_some_and(|x| !fits(spec, s, x)) {
                    return false;
                }
            }
        }
    }
    true
}

#[tokio::test]
async fn every_documented_path_and_status_answers_as_written() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let spec: Value = serde_yaml::from_str(&text).unwrap();
    let (s, _) = start(test_cfg());
    let mut documented = HashSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (code, resp) in op["responses"].as_object().unwrap() {
                let code: u16 = code.parse().unwrap();
                documented.insert((path.clone(), code));
                let resp = resolve(&spec, resp);
                let (media, schema) = resp["content"].as_object().unwrap().iter().next().unwrap();
                for variant in 0..variants(path, code) {
                    let what = format!("{method} {path} {code} (variant {variant})");
                    let (got, headers, body) = drive(s.local_addr(), path, code, variant).await;
                    assert_eq!(got.as_u16(), code, "{what}: {body:?}");
                    let ct = headers.get("content-type").unwrap().to_str().unwrap();
                    assert!(ct.starts_with(media.as_str()), "{what}: content-type {ct}");
                    if let Some(hs) = resp.get("headers").and_then(Value::as_object) {
                        for (name, h) in hs {
                            if resolve(&spec, h)["required"] == json!(true) {
                                assert!(headers.contains_key(name.as_str()), "{what}: no {name} header");
                            }
                        }
                    }
                    if media == "application/json" {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        assert!(fits(&spec, &schema["schema"], &v), "{what}: {v} does not fit the schema");
                    } else {
                        assert!(std::str::from_utf8(&body).unwrap().starts_with(':'), "{what}: {body:?}");
                    }
                }
            }
        }
    }
    // Every status the gateway's push mapping can give is documented.
    for status in 0..=10u8 {
        let o = Outcome { status: Status(status), msg_id: 0, info: 0 };
        let code = pushgate::http::json::http_status(&o).0.as_u16();
        assert!(
            documented.contains(&("/v1/push".to_string(), code)),
            "status {status} → {code} undocumented"
        );
    }
    assert_eq!(documented.len(), 29, "{documented:?}");
    // The schema check can fail.
    let error = json!({ "$ref": "#/components/schemas/Error" });
    assert!(fits(&spec, &error, &json!({ "error": "x", "message": "y" })));
    assert!(!fits(&spec, &error, &json!({ "error": "x" })));
    let multi = json!({ "$ref": "#/components/schemas/MultiPushResult" });
    assert!(!fits(&spec, &multi, &json!({ "results": [{ "token": "t", "status": "lost" }] })));
    stop(s).await;
}

#[test]
fn keepalive_outlives_the_header_timeout_but_not_the_idle_timeout_nor_a_slow_second_head() {
    let (s, _) = start(HttpConfig { idle_timeout_ms: 1500, ..test_cfg() });
    let read_answer = |raw: &mut TcpStream| {
        let mut buf = [0u8; 4096];
        let n = raw.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 404"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    };
    let wait_close = |raw: &mut TcpStream| {
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        while matches!(raw.read(&mut buf), Ok(n) if n > 0) {}
        t0.elapsed()
    };
    let mut raw = TcpStream::connect(s.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    raw.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    read_answer(&mut raw);
    std::thread::sleep(Duration::from_millis(800)); // twice the header timeout: still open
    raw.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    read_answer(&mut raw);
    let idle = wait_close(&mut raw);
    assert!(
        idle >= Duration::from_millis(1300) && idle < Duration::from_millis(2500),
        "idle close after {idle:?}"
    );
    // A second head that starts and never ends is cut after the header timeout.
    let mut raw = TcpStream::connect(s.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    raw.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    read_answer(&mut raw);
    raw.write_all(b"GET /nothing HTTP/1.1\r\n").unwrap();
    let slow = wait_close(&mut raw);
    assert!(
        slow >= Duration::from_millis(300) && slow < Duration::from_millis(1500),
        "slow head cut after {slow:?}"
    );
    s.shutdown();
}

/// Answers every push `delivered` at once: the HTTP front end alone under load.
struct Instant0;

impl Backend for Instant0 {
    fn push(&self, _: u16, tokens: Vec<Token>, _: Note, done: Done<Vec<Outcome>>) {
        done(tokens.iter().map(|_| Outcome { status: Status::DELIVERED, msg_id: 1, info: 0 }).collect());
    }
    fn feedback(&self, _: u16, _: u64, _: Token, done: Done<FeedbackPage>) {
        done(FeedbackPage { entries: vec![], more: false });
    }
    fn subscribe_receipts(&self, _: u16, _: crossbeam_channel::Sender<Receipt>) {}
}

/// `cargo test --release --test http_api -- --ignored serve_for_h2load` then, in another terminal,
/// `PUSHGATE_APP_SECRET=0123456789abcdef loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push
/// --token <48 hex>`: the HTTP layer's own cost, with a backend that answers at once. Serves for
/// $HTTP_FAKE_SECS seconds (default 30), on $HTTP_FAKE_THREADS worker threads (default 1).
#[test]
#[ignore]
fn serve_for_h2load() {
    let secs = std::env::var("HTTP_FAKE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let threads = std::env::var("HTTP_FAKE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cfg = HttpConfig { listen: "127.0.0.1:17703".parse().unwrap(), threads, ..HttpConfig::default() };
    let s = pushgate::http::start(&cfg, apps(), Arc::new(Instant0), None).unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    s.shutdown();
}

#[tokio::test]
async fn an_h2_stream_reset_mid_request_does_not_keep_the_connection_from_idling_out() {
    let (s, _) = start(HttpConfig { idle_timeout_ms: 1500, ..test_cfg() });
    let tcp = tokio::net::TcpStream::connect(s.local_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(conn);
    sender.ready().await.unwrap();
    // A push the backend answers only after 3 s; the client gives up (RST_STREAM) after 200 ms.
    let slow = sender.send_request(push_req(&json!({ "token": token(SLOW, 1).to_hex() })));
    assert!(tokio::time::timeout(Duration::from_millis(200), slow).await.is_err());
    // Idle from here: closed after ~1.5 s (not held open by the abandoned request).
    let closed = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(closed.is_ok(), "the connection was not closed for idleness");
    stop(s).await;
}
