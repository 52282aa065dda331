//! HTTP/1.1 connections, served by hyper: keep-alive, one request at a time, the watchdog timing
//! every request head.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::activity::{Activity, InFlight};
use super::routes;
use super::server::{Shared, Watch, SHUTDOWN_GRACE};
use crate::config::HttpConfig;

/// hyper's HTTP/1.1 connection settings from the config.
pub fn builder(cfg: &HttpConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        // Heads are timed by the connection watchdog: hyper's own timer would also close an idle
        // keep-alive connection after it.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    b
}

/// A response body that counts its request as answered once hyper is done with it.
struct Counted {
    inner: routes::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one HTTP/1.1 connection until it closes, idles out, or the listener shuts down.
pub async fn serve<I>(shared: &Arc<Shared>, io: I, act: &Arc<Activity>, mut stopped: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = shared.ctx.clone();
    let metrics = shared.metrics.clone();
    let counter = act.clone();
    let auth = Arc::new(super::auth::Cache::default());
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        counter.on_request();
        metrics.on_start();
        // Made here, so a handler dropped mid-way still uncounts itself.
        let in_flight = InFlight(counter.clone(), metrics.clone());
        let ctx = ctx.clone();
        let auth = auth.clone();
        let metrics = metrics.clone();
        let (route, began) = (routes::route_of(req.uri().path()), Instant::now());
        async move {
            let r = routes::handle(&ctx, &auth, req).await;
            metrics.on_answer(route, r.status().as_u16(), began.elapsed());
            Ok::<_, Infallible>(r.map(|inner| Counted { inner, _in_flight: in_flight }))
        }
    });
    let conn = shared.http1.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(shared.watch_every());
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!("HTTP connection: {e}");
                }
                return;
            }
            _ = stopped.changed() => break,
            _ = tick.tick() => match shared.watch(act) {
                Watch::Fine => {}
                Watch::HeadOverdue => return,
                Watch::Idle => break,
            },
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
}
