//! The body of `GET /v1/receipts`: a Server-Sent Events stream of one app's receipts, with comment
//! keep-alives, that ends when the gateway shuts down or the backend drops the sink.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, TryRecvError};
use hyper::body::{Body, Frame};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use super::json::receipt_json;
use crate::store::Receipt;

/// How often the stream looks for receipts (the sink is a crossbeam channel, not async).
const POLL: Duration = Duration::from_millis(20);
/// Receipts put in one chunk at most.
const BATCH: usize = 256;

pub struct SseBody {
    rx: Receiver<Receipt>,
    tick: Interval,
    keepalive: Duration,
    last_write: Instant,
    greeted: bool,
    shutdown: watch::Receiver<bool>,
}

impl SseBody {
    /// Must be made inside the runtime (it owns a timer).
    pub fn new(rx: Receiver<Receipt>, keepalive: Duration, shutdown: watch::Receiver<bool>) -> SseBody {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        SseBody { rx, tick, keepalive, last_write: Instant::now(), greeted: false, shutdown }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if !this.greeted {
            // Sent at once so the client sees the stream is open (and proxies flush the headers).
            this.greeted = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b": receipts of this app follow\n\n",
            )))));
        }
        loop {
            if *this.shutdown.borrow() {
                return Poll::Ready(None);
            }
            let mut out = String::new();
            let mut closed = false;
            for _ in 0..BATCH {
                match this.rx.try_recv() {
                    Ok(r) => {
                        let _ = write!(out, "event: receipt\ndata: {}\n\n", receipt_json(&r));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !out.is_empty() {
                this.last_write = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            if closed {
                return Poll::Ready(None);
            }
            if this.last_write.elapsed() >= this.keepalive {
                this.last_write = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n")))));
            }
            ready!(this.tick.poll_tick(cx));
        }
    }
}
