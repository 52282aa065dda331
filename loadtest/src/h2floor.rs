//! `h2-floor`: an HTTP/2 server on the `h2` crate (the gateway's HTTP/2 layer, with its settings)
//! that does no work: it reads each request's body and answers a fixed JSON body of the size of a
//! push answer. What it serves under h2load is the most any server built on `h2` serves on the
//! same machine, so it bounds what the gateway's HTTP/2 API can reach (BENCHMARKS.md).
//!
//! With `--answer-every-ms N` the answers wait for a tick every N ms and leave together, as the
//! gateway's wait for its group commit: the requests in flight are then open streams on the server,
//! as they are on the gateway, instead of answered before the next read.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderValue, Request, Response};

/// As the gateway: flow-control windows, send buffer, streams per connection (its defaults).
const WINDOW: u32 = 1024 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_STREAMS: u32 = 128;
/// A push answer's size and shape (`POST /v1/push`, one token, `queued`).
const ANSWER: &[u8] =
    b"{\"token\":\"305d4e3f125f7e9673acad0602931254919f435178e12b9b\",\"status\":\"queued\",\"msg_id\":12345}\n";

/// Serves until killed on `threads` threads; `every_ms` > 0 holds the answers for a tick of that
/// period.
pub fn main(listen: SocketAddr, threads: usize, every_ms: u64) -> Result<(), String> {
    let mut b = match threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = b.enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
        eprintln!("h2-floor: listening on {}", l.local_addr().map_err(|e| e.to_string())?);
        loop {
            let (s, _) = l.accept().await.map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, every_ms));
        }
    })
}

/// One connection: every stream it has read is accepted, then every stream runs, so a turn's
/// answers leave in one write (as the gateway's connection task does).
async fn serve(s: tokio::net::TcpStream, every_ms: u64) {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS);
    let Ok(mut conn) = b.handshake::<_, Bytes>(s).await else { return };
    let held = Mutex::new(Vec::new());
    let mut tick = (every_ms > 0).then(|| tokio::time::interval(Duration::from_millis(every_ms)));
    let mut streams = FuturesUnordered::new();
    poll_fn(|cx| loop {
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(read(req, respond, tick.is_some().then_some(&held)))
                }
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        let mut ran = false;
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
            ran = true;
        }
        if let Some(t) = &mut tick {
            if t.poll_tick(cx).is_ready() {
                held.lock().unwrap_or_else(|e| e.into_inner()).drain(..).for_each(send);
                ran = true;
            }
        }
        if !ran {
            return Poll::Pending;
        }
    })
    .await;
}

/// Reads the request's body, then answers, or holds the answer for the next tick.
async fn read(
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    held: Option<&Mutex<Vec<h2::server::SendResponse<Bytes>>>>,
) {
    let mut body = req.into_body();
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
    }
    match held {
        Some(h) => h.lock().unwrap_or_else(|e| e.into_inner()).push(respond),
        None => send(respond),
    }
}

fn send(mut respond: h2::server::SendResponse<Bytes>) {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from(ANSWER.len()));
    h.insert("date", pushgate::http::date());
    if let Ok(mut s) = respond.send_response(r, false) {
        let _ = s.send_data(Bytes::from_static(ANSWER), true);
    }
}
