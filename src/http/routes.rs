//! Request handling: routing, auth, and the endpoints (`POST /v1/push`, `GET /v1/feedback`,
//! `GET /v1/receipts`, and the topic ones in `topics`), each turning a backend answer into JSON.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::auth;
use super::backend::{Backend, Outcome};
use super::batch::Crossing;
use super::json::{self, ApiError};
use super::sse::SseBody;
use super::topics::{self, TopicRoute};
use crate::config::HttpConfig;
use crate::metrics::HttpRoute;
use crate::proto::{Apps, Status, Token, TOKEN_LEN};

/// A response body: a JSON answer in one piece, or the receipts stream.
pub enum Body {
    /// `None` once sent (or when empty).
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

impl Body {
    fn full(b: Vec<u8>) -> Body {
        Body::Full(Some(Bytes::from(b)).filter(|b| !b.is_empty()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Sse(s) => Pin::new(&mut **s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Sse(_) => SizeHint::default(),
        }
    }
}

/// What every request handler shares.
pub struct Ctx {
    pub cfg: HttpConfig,
    pub apps: Apps,
    pub backend: Arc<dyn Backend>,
    /// Pushes go through it, batched both ways.
    pub crossing: Arc<Crossing>,
    pub shutdown: watch::Receiver<bool>,
}

/// Receipts buffered between the backend and one SSE stream; past it the backend keeps them.
const RECEIPT_SINK: usize = 1024;

/// The route `path` counts under in the metrics.
pub fn route_of(path: &str) -> HttpRoute {
    match path {
        "/v1/push" => HttpRoute::Push,
        "/v1/feedback" => HttpRoute::Feedback,
        "/v1/receipts" => HttpRoute::Receipts,
        p if topics::route(p).is_some() => HttpRoute::Topics,
        _ => HttpRoute::Other,
    }
}

/// What a request asks for, as far as its head tells: answered already (a bad path, method, token,
/// length or query), or the work left, which [`answer`] does with the body.
pub enum Start {
    /// Boxed: the rare case, and the future that holds a `Start` stays small.
    Answer(Box<Response<Body>>),
    Push {
        app: u16,
        deadline: Instant,
    },
    Feedback {
        app: u16,
        since_ms: u64,
        after: Token,
        deadline: Instant,
    },
    Receipts {
        app: u16,
    },
    Topic {
        app: u16,
        route: TopicRoute,
        deadline: Instant,
    },
}

/// Answers `req`; `auth` is its connection's cache of the last verified token.
pub async fn handle<B>(ctx: &Ctx, auth: &auth::Cache, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (head, body) = req.into_parts();
    let start = begin(ctx, auth, &head);
    drop(head);
    answer(ctx, start, body).await
}

/// Routes, authenticates and checks a request's head: everything before its body. Synchronous, so
/// an HTTP/2 connection does it as it accepts the stream and keeps only what [`answer`] needs.
pub fn begin(ctx: &Ctx, auth: &auth::Cache, head: &hyper::http::request::Parts) -> Start {
    let path = head.uri.path();
    let topic = match topics::route(path) {
        Some(Err(e)) => return Start::Answer(Box::new(error(&e))),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let (allowed, name) = match (path, &topic) {
        (_, Some(r)) => r.method(),
        ("/v1/push", _) => (Method::POST, "POST"),
        ("/v1/feedback" | "/v1/receipts", _) => (Method::GET, "GET"),
        _ => {
            let e = ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no endpoint {path}"));
            return Start::Answer(Box::new(error(&e)));
        }
    };
    if head.method != allowed {
        let e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {name}"),
        );
        let mut r = error(&e);
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(name));
        return Start::Answer(Box::new(r));
    }
    let app =
        match auth.verify(head.headers.get(AUTHORIZATION).map(|v| v.as_bytes()), &ctx.apps, auth::now_s()) {
            Ok(app) => app,
            Err(e) => {
                let mut r = error(&ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.message()));
                r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
                return Start::Answer(Box::new(r));
            }
        };
    let deadline = Instant::now() + Duration::from_millis(ctx.cfg.request_timeout_ms);
    if let Some(route) = topic {
        let max = ctx.cfg.max_body_bytes as u64;
        let announced = head.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max) {
            return Start::Answer(Box::new(body_too_large(max)));
        }
        return Start::Topic { app, route, deadline };
    }
    match path {
        "/v1/push" => {
            let max = ctx.cfg.max_body_bytes as u64;
            let announced =
                head.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if announced.is_some_and(|n| n > max) {
                return Start::Answer(Box::new(body_too_large(max)));
            }
            Start::Push { app, deadline }
        }
        "/v1/feedback" => match feedback_query(head.uri.query().unwrap_or("")) {
            Ok((since_ms, after)) => Start::Feedback { app, since_ms, after, deadline },
            Err(e) => Start::Answer(Box::new(error(&e))),
        },
        _ => Start::Receipts { app },
    }
}

/// Does what [`begin`] left, reading `body` if it needs to.
pub async fn answer<B>(ctx: &Ctx, start: Start, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match start {
        Start::Answer(r) => *r,
        Start::Push { app, deadline } => push(ctx, app, body, deadline).await,
        Start::Feedback { app, since_ms, after, deadline } => {
            feedback(ctx, app, since_ms, after, deadline).await
        }
        Start::Receipts { app } => receipts(ctx, app),
        Start::Topic { app, route, deadline } => topics::answer(ctx, app, route, body, deadline).await,
    }
}

/// The whole body within the deadline and `http.max_body_bytes`, or the answer saying why not.
pub(super) async fn read_body_or_answer<B>(
    ctx: &Ctx,
    body: B,
    deadline: Instant,
) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = ctx.cfg.max_body_bytes;
    match tokio::time::timeout_at(deadline, read_body(body, max)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(ReadError::TooLarge)) => Err(body_too_large(max as u64)),
        Ok(Err(ReadError::Body(e))) => {
            Err(error(&ApiError::bad_request(format!("cannot read the body: {e}"))))
        }
        Err(_) => Err(error(&ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        ))),
    }
}

fn body_too_large(max: u64) -> Response<Body> {
    error(&ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body over {max} bytes"),
    ))
}

async fn push<B>(ctx: &Ctx, app: u16, body: B, deadline: Instant) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = ctx.cfg.max_body_bytes;
    // One timer for the whole request, body and answer.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let body = tokio::select! {
        biased;
        r = read_body(body, max) => match r {
            Ok(b) => b,
            Err(ReadError::TooLarge) => return body_too_large(max as u64),
            Err(ReadError::Body(e)) => return error(&ApiError::bad_request(format!("cannot read the body: {e}"))),
        },
        _ = &mut timer => {
            return error(&ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            ))
        }
    };
    let p = match json::parse_push(&body, auth::now_s()) {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    let valid: Vec<Token> = p.tokens.iter().flatten().copied().collect();
    let mut answered = Vec::new().into_iter();
    if !valid.is_empty() {
        let n = valid.len();
        let rx = ctx.crossing.push(app, valid, p.note);
        answered = tokio::select! {
            biased;
            r = rx => match r {
                Ok(v) if v.len() == n => v.into_iter(),
                _ => return internal("the router gave no answer for every token"),
            },
            _ = &mut timer => return no_answer_in_time(),
        };
    }
    let bad = Outcome { status: Status::BAD_TOKEN, msg_id: 0, info: 0 };
    let outcomes: Vec<Outcome> =
        p.tokens.iter().map(|t| if t.is_some() { answered.next().unwrap_or(bad) } else { bad }).collect();
    match (p.single, outcomes.first(), p.token_text.first()) {
        (true, Some(o), Some(t)) => {
            let (http, retry) = json::http_status(o);
            let mut r = respond_bytes(http, json::single_json(t, o, http));
            if let Some(s) = retry {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
        _ => respond_bytes(StatusCode::OK, json::multi_json(&p.token_text, &outcomes)),
    }
}

/// Why a request body was not read whole.
enum ReadError {
    TooLarge,
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// The whole body, refused past `max` bytes; a body in one chunk (the usual case) is not copied.
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(data) = frame.map_err(|e| ReadError::Body(e.into()))?.into_data() else {
            continue; // trailers: nothing a push reads
        };
        len = len.saturating_add(data.len());
        if len > max {
            return Err(ReadError::TooLarge);
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            f => {
                more.extend_from_slice(f.as_deref().unwrap_or_default());
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(more)))
}

async fn feedback(ctx: &Ctx, app: u16, since_ms: u64, after: Token, deadline: Instant) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    ctx.backend.feedback(
        app,
        since_ms,
        after,
        Box::new(move |page| {
            let _ = tx.send(page);
        }),
    );
    match tokio::time::timeout_at(deadline, rx).await {
        Err(_) => no_answer_in_time(),
        Ok(Err(_)) => internal("the router dropped the feedback request"),
        Ok(Ok(page)) => respond(StatusCode::OK, &json::feedback_json(&page, since_ms, &after)),
    }
}

/// `since_ms` (unix ms, default 0) and `after` (48 hex digits, default none) of a feedback request.
fn feedback_query(q: &str) -> Result<(u64, Token), ApiError> {
    let mut since_ms = 0;
    let mut after = Token([0; TOKEN_LEN]);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since_ms" => {
                since_ms = v.parse().map_err(|_| ApiError::bad_request("since_ms: unix milliseconds"))?;
            }
            "after" if v.is_empty() => {}
            "after" => {
                after = Token::from_hex(v).ok_or_else(|| ApiError::bad_request("after: 48 hex digits"))?;
            }
            _ => {}
        }
    }
    Ok((since_ms, after))
}

fn receipts(ctx: &Ctx, app: u16) -> Response<Body> {
    let (tx, rx) = crossbeam_channel::bounded(RECEIPT_SINK);
    ctx.backend.subscribe_receipts(app, tx);
    let body = SseBody::new(rx, Duration::from_secs(ctx.cfg.sse_keepalive_s), ctx.shutdown.clone());
    let mut r = Response::new(Body::Sse(Box::new(body)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub(super) fn no_answer_in_time() -> Response<Body> {
    let mut r = error(&ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no answer within the request timeout; the outcome is unknown",
    ));
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1u64));
    r
}

fn internal(why: &str) -> Response<Body> {
    error(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", why))
}

pub fn error(e: &ApiError) -> Response<Body> {
    respond(e.http, &e.body())
}

pub(super) fn respond(status: StatusCode, v: &Value) -> Response<Body> {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    respond_bytes(status, body)
}

/// A JSON answer whose text (ending in a newline) is `body`.
pub(super) fn respond_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_query_parses_its_cursor() {
        let t = "000d96d7dccbac4ae2e1cfd3e3a243fb4f80167395a9c985";
        assert_eq!(feedback_query("").unwrap(), (0, Token([0; TOKEN_LEN])));
        let (s, a) = feedback_query(&format!("since_ms=17&after={t}&x=1")).unwrap();
        assert_eq!((s, a.to_hex()), (17, t.to_string()));
        assert!(feedback_query("since_ms=-1").is_err());
        assert!(feedback_query("after=abc").is_err());
    }
}
