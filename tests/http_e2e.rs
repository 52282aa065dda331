//! The HTTP API on the real router, with a device: push (HTTP/1.1), the device gets it and ACKs,
//! the receipt comes on the SSE stream; after the device unregisters, a push is 410 and feedback
//! lists the token; draining answers 503 with Retry-After.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;
use pushgate::client::{DeviceClient, DeviceEvent};
use pushgate::config::HttpConfig;
use pushgate::http::auth;

/// One request on a fresh HTTP/1.1 connection: status, headers (lowercase names) and JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Vec<(String, String)>, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let jwt = auth::sign(APP, APP_SECRET.as_bytes(), auth::now_s());
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {jwt}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = resp.parse(&got).unwrap() else { panic!("partial answer") };
    let hs = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    (resp.code.unwrap(), hs, serde_json::from_slice(&got[n..]).unwrap())
}

fn start_http(gw: &pushgate::gateway::Gateway) -> pushgate::http::HttpServer {
    let cfg = HttpConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HttpConfig::default() };
    pushgate::http::start(&cfg, gw.shared.apps.clone(), Arc::new(gw.ingress()), None).unwrap()
}

#[test]
fn push_deliver_ack_receipt_unregister_feedback_over_http() {
    let gw = start_gateway(test_config(2));
    let http = start_http(&gw);
    let addr = http.local_addr();
    // The receipts stream, opened first so the receipt comes to it.
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let jwt = auth::sign(APP, APP_SECRET.as_bytes(), auth::now_s());
    write!(sse, "GET /v1/receipts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {jwt}\r\n\r\n").unwrap();
    let mut seen = String::new();
    let mut read_until = |want: &str| {
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = sse.read(&mut buf).expect("the SSE stream stays open");
            assert!(n > 0, "SSE stream closed: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.clone()
    };
    read_until("receipts of this app follow");

    let mut dev = DeviceClient::connect(gw.device_addr, APP, &secret("http-e2e"), 60).unwrap();
    let token = dev.token().to_hex();
    let (code, _, v) = call(
        addr,
        "POST",
        "/v1/push",
        &json!({ "token": token, "payload": "hi", "receipt": true }).to_string(),
    );
    assert_eq!((code, &v["status"]), (200, &json!("delivered")), "{v}");
    let msg_id: u64 = v["msg_id"].as_str().unwrap().parse().unwrap();
    match dev.next_event(Some(Duration::from_secs(5))).unwrap() {
        Some(DeviceEvent::Notify { msg_id: m, payload, .. }) => {
            assert_eq!((m, payload.as_slice()), (msg_id, &b"hi"[..]));
        }
        other => panic!("{other:?}"),
    }
    dev.ack(msg_id).unwrap();
    let text = read_until("event: receipt\ndata: ");
    assert!(text.contains(&format!("\"msg_id\":\"{msg_id}\"")), "{text}");

    // A multi push with a forged token in it.
    let forged = "00".repeat(24);
    let (code, _, v) =
        call(addr, "POST", "/v1/push", &json!({ "tokens": [token, forged], "expiry_s": 0 }).to_string());
    assert_eq!(code, 200);
    assert_eq!(v["results"][1]["status"], json!("bad_token"), "{v}");

    dev.unregister().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        call(addr, "POST", "/v1/push", &json!({ "token": token }).to_string()).0 == 410
    }));
    let (code, _, v) = call(addr, "POST", "/v1/push", &json!({ "token": token }).to_string());
    assert_eq!((code, &v["error"]), (410, &json!("unregistered")));
    assert!(v["unregistered_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let (code, _, v) = call(addr, "GET", "/v1/feedback?since_ms=0", "");
    assert_eq!(code, 200);
    assert_eq!(v["entries"][0]["token"], json!(token), "{v}");

    // As `pushgate serve` stops: HTTP first, then the shards.
    http.begin_shutdown();
    gw.drain();
    http.shutdown();
}

#[test]
fn draining_answers_503_with_retry_after() {
    let gw = start_gateway(test_config(1));
    let http = start_http(&gw);
    let dev = DeviceClient::connect(gw.device_addr, APP, &secret("http-drain"), 60).unwrap();
    gw.shared.draining.store(true, std::sync::atomic::Ordering::Release);
    let (code, hs, v) =
        call(http.local_addr(), "POST", "/v1/push", &json!({ "token": dev.token().to_hex() }).to_string());
    assert_eq!((code, &v["status"]), (503, &json!("unavailable")), "{v}");
    assert!(hs.iter().any(|(k, v)| k == "retry-after" && v.parse::<u64>().unwrap() >= 1), "{hs:?}");
    http.shutdown();
}

/// The admin port's /metrics counts the HTTP API's requests by route and status class, their
/// latency, what is in flight and the open connections: over real sockets, on the real router.
#[test]
fn http_requests_show_in_the_admin_metrics() {
    let gw = start_gateway(test_config(2));
    let cfg = HttpConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HttpConfig::default() };
    let http = pushgate::http::start_with_metrics(
        &cfg,
        gw.shared.apps.clone(),
        Arc::new(gw.ingress()),
        None,
        gw.shared.metrics.http(),
    )
    .unwrap();
    let admin = pushgate::admin::start(
        "127.0.0.1:0".parse().unwrap(),
        gw.shared.metrics.clone(),
        Arc::new(|| true),
        Arc::new(|| {}),
    )
    .unwrap();
    let scrape = || {
        let mut s = TcpStream::connect(admin.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    };
    let sample = |text: &str, series: &str| -> f64 {
        let mut found = text.lines().filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
        let v = found.next().unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(found.next().is_none(), "{series} twice");
        v.parse().unwrap()
    };
    let ok = "pushgate_http_requests_total{route=\"push\",class=\"2xx\"}";
    let bad = "pushgate_http_requests_total{route=\"push\",class=\"4xx\"}";
    let missing = "pushgate_http_requests_total{route=\"other\",class=\"4xx\"}";
    let count = "pushgate_http_request_duration_seconds_count{route=\"push\"}";
    let inf = "pushgate_http_request_duration_seconds_bucket{route=\"push\",le=\"+Inf\"}";
    let before = scrape();
    for series in [ok, bad, missing, count, "pushgate_http_requests_in_flight"] {
        assert_eq!(sample(&before, series), 0.0, "{series}");
    }

    let dev = DeviceClient::connect(gw.device_addr, APP, &secret("http-metrics"), 60).unwrap();
    let token = dev.token().to_hex();
    for _ in 0..3 {
        let (code, _, v) =
            call(http.local_addr(), "POST", "/v1/push", &json!({ "token": token }).to_string());
        assert_eq!(code, 200, "{v}");
    }
    let (code, _, _) = call(http.local_addr(), "POST", "/v1/push", "{}");
    assert_eq!(code, 400);
    let (code, _, _) = call(http.local_addr(), "GET", "/nowhere", "");
    assert_eq!(code, 404);
    // One connection held open: the gauge counts it.
    let held = TcpStream::connect(http.local_addr()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let t = scrape();
        if sample(&t, "pushgate_http_connections") == 1.0 || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(sample(&after, "pushgate_http_connections"), 1.0);
    assert_eq!(sample(&after, ok), 3.0);
    assert_eq!(sample(&after, bad), 1.0);
    assert_eq!(sample(&after, missing), 1.0);
    assert_eq!(sample(&after, count), 4.0);
    assert_eq!(sample(&after, inf), 4.0);
    assert!(sample(&after, "pushgate_http_request_duration_seconds_sum{route=\"push\"}") > 0.0);
    assert_eq!(sample(&after, "pushgate_http_requests_in_flight"), 0.0);
    drop(held);
    drop(dev);
}

#[test]
fn topics_over_http_subscribe_push_count_and_broadcast() {
    let gw = start_gateway(test_config(2));
    let http = start_http(&gw);
    let addr = http.local_addr();
    let mut fan = Raw::connect(gw.device_addr);
    let (token, _, _) = fan.hello(APP, &secret("http-fan"), 0);
    let mut other = Raw::connect(gw.device_addr);
    other.hello(APP, &secret("http-other"), 0);
    // Subscribed by the provider, over HTTP.
    let body = json!({ "add": [token.to_hex(), "zz"] }).to_string();
    let (code, _, v) = call(addr, "POST", "/v1/topics/scores/subscribers", &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "ok");
    assert_eq!(v["results"][1]["status"], "bad_token");
    let (code, _, v) = call(addr, "POST", "/v1/topics/scores/push", r#"{"payload":"2-1","collapse":"s"}"#);
    assert_eq!(
        (code, v["status"].as_str(), v["topic"].as_str()),
        (200, Some("queued"), Some("scores")),
        "{v}"
    );
    let id: u64 = v["msg_id"].as_str().unwrap().parse().unwrap();
    let got = fan.expect(|f| match f {
        pushgate::proto::Frame::TopicNotify { msg_id, topic, payload, .. } => {
            (msg_id, topic.to_vec(), payload.to_vec())
        }
        other => panic!("expected TOPIC_NOTIFY, got {other:?}"),
    });
    assert_eq!(got, (id, b"scores".to_vec(), b"2-1".to_vec()));
    fan.send(&pushgate::proto::Frame::Ack { msg_id: id });
    assert!(matches!(other.recv(Duration::from_millis(300)), Got::Timeout), "not subscribed");
    // Counts, once the ACK is in.
    assert!(wait_until(Duration::from_secs(2), || {
        let (code, _, v) = call(addr, "GET", &format!("/v1/topic-messages/{id}"), "");
        code == 200 && v == json!({ "msg_id": id.to_string(), "known": true, "sent": 1, "acked": 1 })
    }));
    // A broadcast, with the name percent-encoded; bad names are 400.
    let (code, _, v) = call(addr, "POST", "/v1/topics/%7Eall/push", r#"{"payload":"all"}"#);
    assert_eq!((code, v["status"].as_str()), (200, Some("queued")), "{v}");
    for d in [&mut fan, &mut other] {
        d.expect(|f| {
            assert!(matches!(f, pushgate::proto::Frame::TopicNotify { topic: b"~all", .. }), "{f:?}")
        });
    }
    let (code, _, v) = call(addr, "POST", "/v1/topics/bad%20name/push", r#"{"payload":"x"}"#);
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_topic")), "{v}");
    let (code, _, v) = call(addr, "POST", "/v1/topics/~all/subscribers", &body);
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_topic")), "{v}");
    let (code, _, v) =
        call(addr, "POST", "/v1/topics/x/push", &format!(r#"{{"token":"{}"}}"#, token.to_hex()));
    assert_eq!((code, v["error"].as_str()), (400, Some("bad_request")), "{v}");
}

/// A drain while HTTP pushes are in flight, with no device or provider connected (so no shard
/// has a connection of its own): every request gets its real answer (200, or 503 once refused),
/// none meets a shard that has left (the router's "no answer", 500), and the drain ends at once.
#[test]
fn a_drain_answers_every_http_push_in_flight() {
    let gw = start_gateway(test_config(2));
    let http = start_http(&gw);
    let addr = http.local_addr();
    let tokens: Vec<String> = (0..8)
        .map(|i| {
            DeviceClient::connect(gw.device_addr, APP, &secret(&format!("hd{i}")), 60)
                .unwrap()
                .token()
                .to_hex()
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || gw.connections() == 0), "the devices are gone");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let jwt = auth::sign(APP, APP_SECRET.as_bytes(), auth::now_s());
    // 64 pushers, each one request at a time: dozens in flight at any moment.
    let pushers: Vec<_> = (0..64)
        .map(|i| tokens[i % tokens.len()].clone())
        .map(|token| {
            let (stop, jwt) = (stop.clone(), jwt.clone());
            std::thread::spawn(move || {
                let body = json!({ "token": token, "payload": "d" }).to_string();
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Keep-alive off: each request on its own connection, refused once the API is down.
                    let Ok(mut s) = TcpStream::connect(addr) else { break };
                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                    let req = format!(
                        "POST /v1/push HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {jwt}\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    match String::from_utf8_lossy(&got).split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()) {
                        Some(code) => codes.push(code),
                        None => break, // closed unanswered: the API shut down before reading it
                    }
                }
                codes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let began = std::time::Instant::now();
    assert!(pushgate::serve::drain(gw, Some(http), Duration::from_secs(20)), "the shards finished");
    assert!(began.elapsed() < Duration::from_secs(10), "drained in {:?}", began.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes: Vec<u16> = pushers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    assert!(codes.iter().filter(|&&c| c == 200).count() > 50, "pushes were flowing: {}", codes.len());
    assert!(codes.iter().all(|&c| c == 200 || c == 503), "only real answers: {:?}", {
        let mut odd: Vec<u16> = codes.iter().copied().filter(|&c| c != 200 && c != 503).collect();
        odd.dedup();
        odd
    });
}
