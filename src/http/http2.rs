//! HTTP/2 connections on the `h2` crate: one task per connection drives the connection and all its
//! streams (no task per request), so a request costs its stream's bookkeeping and its handler only.
//!
//! Bounds are h2's, set from the config: concurrent streams, header list size, flow-control windows,
//! send buffer, locally reset streams; the body limit and request timeout are the handler's.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, SendResponse};
use h2::{RecvStream, SendStream};
use hyper::body::{Body as _, Frame};
use hyper::header::{HeaderValue, CONTENT_LENGTH, DATE};
use hyper::{Request, Response};
use log::debug;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::activity::{Activity, InFlightRef};
use super::auth;
use super::routes::{self, Body};
use super::server::{Shared, Watch, SHUTDOWN_GRACE};
use crate::config::HttpConfig;
use crate::metrics::HttpRoute;

/// Flow-control windows offered to the client, per connection and per stream (as hyper's defaults).
const WINDOW: u32 = 1024 * 1024;
/// Bytes h2 buffers per stream for sending (as hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client may make us reset for its errors before h2 closes the connection.
const MAX_LOCAL_RESETS: usize = 1024;

/// The h2 server settings from the config.
pub fn builder(cfg: &HttpConfig) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves one HTTP/2 connection (past its handshake) until it closes, idles out, or the listener
/// shuts down; then GOAWAY and at most [`SHUTDOWN_GRACE`] for the open streams.
pub async fn serve<I>(
    shared: &Arc<Shared>,
    mut conn: Connection<I, Bytes>,
    act: &Activity,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let auth = auth::Cache::default();
    let mut streams = FuturesUnordered::new();
    let mut tick = tokio::time::interval(shared.watch_every());
    let mut closing: Option<Instant> = None;
    loop {
        let turn = poll_fn(|cx| loop {
            // Every stream that can go on goes first, so the answers ready in this turn are all
            // queued before the connection writes: they leave in one write, not one each.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(stream(shared, &auth, act, req, respond))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        });
        tokio::select! {
            r = turn => {
                // Closed: by the client, or after GOAWAY once every stream was answered.
                if let Err(e) = r {
                    debug!("HTTP/2 connection: {e}");
                }
                return;
            }
            _ = stopped.changed(), if closing.is_none() => {
                conn.graceful_shutdown();
                closing = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            _ = tick.tick() => match closing {
                Some(deadline) if Instant::now() >= deadline => return,
                Some(_) => {}
                None => match shared.watch(act) {
                    Watch::Fine => {}
                    Watch::HeadOverdue => return,
                    Watch::Idle => {
                        conn.graceful_shutdown();
                        closing = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                },
            },
        }
    }
}

/// One request: its head checked now, then (the future) its handler raced against the client
/// resetting the stream, then the answer. The head is not kept: the future stays small.
fn stream<'a>(
    shared: &'a Shared,
    auth: &auth::Cache,
    act: &'a Activity,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl Future<Output = ()> + 'a {
    act.on_request();
    shared.metrics.on_start();
    let in_flight = InFlightRef(act, &shared.metrics);
    let (route, began) = (routes::route_of(req.uri().path()), Instant::now());
    let (head, body) = req.into_parts();
    let start = routes::begin(&shared.ctx, auth, &head);
    drop(head);
    answer(shared, start, RecvBody(body), respond, route, began, in_flight)
}

async fn answer(
    shared: &Shared,
    start: routes::Start,
    body: RecvBody,
    mut respond: SendResponse<Bytes>,
    route: HttpRoute,
    began: Instant,
    _in_flight: InFlightRef<'_>,
) {
    let r = tokio::select! {
        biased;
        r = routes::answer(&shared.ctx, start, body) => r,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    shared.metrics.on_answer(route, r.status().as_u16(), began.elapsed());
    // Not async, so the answer's head is not kept in this future while a receipts stream runs.
    if let Some((s, sse)) = send(r, &mut respond) {
        pipe(sse, s).await;
    }
}

/// Sends the head of `r` and a whole body; a streamed body is handed back with its stream.
fn send(r: Response<Body>, respond: &mut SendResponse<Bytes>) -> Option<(SendStream<Bytes>, Body)> {
    let (mut head, body) = r.into_parts();
    head.headers.insert(DATE, date());
    match body {
        Body::Full(None) => {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            let _ = respond.send_response(Response::from_parts(head, ()), true);
            None
        }
        Body::Full(Some(b)) => {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(b.len() as u64));
            // Small and whole: h2 holds it until the window allows (at most the send buffer).
            if let Ok(mut s) = respond.send_response(Response::from_parts(head, ()), false) {
                let _ = s.send_data(b, true);
            }
            None
        }
        sse @ Body::Sse(_) => {
            respond.send_response(Response::from_parts(head, ()), false).ok().map(|s| (s, sse))
        }
    }
}

/// Sends a streamed body chunk by chunk, each once the window has room (so h2 buffers one chunk at
/// most), until it ends or the client resets the stream.
async fn pipe(mut body: Body, mut s: SendStream<Bytes>) {
    loop {
        s.reserve_capacity(1);
        match poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            _ => return,
        }
        let frame = tokio::select! {
            biased;
            f = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => f,
            _ = poll_fn(|cx| s.poll_reset(cx)) => return,
        };
        let Some(Ok(frame)) = frame else {
            let _ = s.send_data(Bytes::new(), true);
            return;
        };
        if let Ok(data) = frame.into_data() {
            if s.send_data(data, false).is_err() {
                return;
            }
        }
    }
}

/// A request body as hyper's `Body`, handing flow-control credit back as it is read.
struct RecvBody(RecvStream);

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match self.0.poll_data(cx) {
            Poll::Ready(Some(Ok(b))) => {
                let _ = self.0.flow_control().release_capacity(b.len());
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

thread_local! {
    /// The `date` header of this second, made once a second per thread.
    static DATE_NOW: std::cell::RefCell<(u64, HeaderValue)> =
        const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// An HTTP date for now (RFC 9110 §6.6.1), as hyper's HTTP/1.1 answers carry; made once a second
/// per thread, so an answer's `date` costs a clone.
pub fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_NOW.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            *d = (secs, HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("")));
        }
        d.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use crate::config::HttpConfig;
    use crate::http::{auth, Backend, Done, FeedbackPage, Note, Outcome};
    use crate::proto::{Apps, Status, Token};

    const SECRET: &[u8] = b"0123456789abcdef";

    /// Answers every push `delivered`, from another thread, as the router does.
    struct Delivers;

    impl Backend for Delivers {
        fn push(&self, _app: u16, tokens: Vec<Token>, _note: Note, done: Done<Vec<Outcome>>) {
            let out =
                tokens.iter().map(|_| Outcome { status: Status::DELIVERED, msg_id: 7, info: 0 }).collect();
            std::thread::spawn(move || done(out));
        }

        fn feedback(&self, _app: u16, _since_ms: u64, _after: Token, _done: Done<FeedbackPage>) {}

        fn subscribe_receipts(&self, _app: u16, _sink: crossbeam_channel::Sender<crate::store::Receipt>) {}
    }

    /// All streams of one connection share its task: more requests at once than the stream limit
    /// must each get their own answer (the client queues past the limit, the server's loop drains).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_requests_than_the_stream_limit_on_one_connection_all_get_their_answer() {
        let cfg = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_concurrent_streams: 8,
            ..HttpConfig::default()
        };
        let mut apps = Apps::new();
        apps.add("demo", SECRET);
        let server = crate::http::start(&cfg, apps, Arc::new(Delivers), None).unwrap();
        let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let bearer = format!("Bearer {}", auth::sign("demo", SECRET, auth::now_s()));
        // One request first: once it is answered the client has the server's SETTINGS
        // (8 streams); before that it may open more, and the server refuses those
        // (REFUSED_STREAM, RFC 9113 section 5.1.2: not processed, safe to retry).
        let first = hyper::Request::post("http://x/v1/push")
            .header("authorization", &bearer)
            .body(Full::new(Bytes::from(format!(r#"{{"token":"{}","payload":"hi"}}"#, "cd".repeat(24)))))
            .unwrap();
        assert_eq!(send.clone().send_request(first).await.unwrap().status(), 200);
        let mut answers = Vec::new();
        for i in 0..100u8 {
            let token = format!("{:02x}{}", i, "ab".repeat(23));
            let req = hyper::Request::post("http://x/v1/push")
                .header("authorization", &bearer)
                .body(Full::new(Bytes::from(format!(r#"{{"token":"{token}","payload":"hi"}}"#))))
                .unwrap();
            let mut send = send.clone();
            answers.push(tokio::spawn(async move {
                let r = send.send_request(req).await.unwrap();
                let (status, date) = (r.status(), r.headers().contains_key("date"));
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (token, status, date, String::from_utf8_lossy(&body).into_owned())
            }));
        }
        for a in answers {
            let (token, status, date, body) = a.await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(date, "answers carry a date header");
            assert!(body.contains(&token) && body.contains("delivered"), "{token}: {body}");
        }
        tokio::task::spawn_blocking(move || server.shutdown()).await.unwrap();
    }
}
