//! The topic endpoints (protocol.md §10.4 over JSON): `POST /v1/topics/{topic}/push`,
//! `POST /v1/topics/{topic}/subscribers` (add or remove up to 1000 tokens) and
//! `GET /v1/topic-messages/{msg_id}` (delivery counts). Topic names in paths are percent-decoded.

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::json::{self, ApiError};
use super::routes::{error, read_body_or_answer, respond, respond_bytes, Body, Ctx};
use crate::proto::topic::MAX_MANAGE;
use crate::proto::{SubStatus, Token};

/// A topic endpoint and what its path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicRoute {
    Push(Box<[u8]>),
    Subscribers(Box<[u8]>),
    Stats(u64),
}

impl TopicRoute {
    pub fn method(&self) -> (Method, &'static str) {
        match self {
            TopicRoute::Push(_) | TopicRoute::Subscribers(_) => (Method::POST, "POST"),
            TopicRoute::Stats(_) => (Method::GET, "GET"),
        }
    }
}

/// The topic endpoint `path` names: `None` if it is not one of them, an error if it is malformed.
pub fn route(path: &str) -> Option<Result<TopicRoute, ApiError>> {
    if let Some(id) = path.strip_prefix("/v1/topic-messages/") {
        return Some(
            id.parse::<u64>()
                .map(TopicRoute::Stats)
                .map_err(|_| ApiError::bad_request("a topic message id is a decimal u64")),
        );
    }
    let rest = path.strip_prefix("/v1/topics/")?;
    let (name, what) = rest.rsplit_once('/')?;
    let make = match what {
        "push" => TopicRoute::Push,
        "subscribers" => TopicRoute::Subscribers,
        _ => return None,
    };
    Some(percent_decode(name).map(|n| make(n.into_boxed_slice())))
}

/// `%XX` escapes decoded; any other byte kept (the name rule is the router's).
fn percent_decode(s: &str) -> Result<Vec<u8>, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let v = v.ok_or_else(|| ApiError::bad_request("a bad %-escape in the topic name"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Answers a topic request whose head [`route`] and auth accepted.
pub async fn answer<B>(ctx: &Ctx, app: u16, route: TopicRoute, body: B, deadline: Instant) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match route {
        TopicRoute::Stats(id) => {
            let (known, (sent, acked)) = match ctx.backend.topic_stats(id) {
                Some(c) => (true, c),
                None => (false, (0, 0)),
            };
            let v = json!({ "msg_id": id.to_string(), "known": known, "sent": sent, "acked": acked });
            respond(StatusCode::OK, &v)
        }
        TopicRoute::Push(topic) => {
            let body = match read_body_or_answer(ctx, body, deadline).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let note = match json::parse_topic_push(&body, super::auth::now_s()) {
                Ok(n) => n,
                Err(e) => return error(&e),
            };
            let (tx, rx) = oneshot::channel();
            ctx.backend.push_topic(
                app,
                &topic,
                note,
                Box::new(move |o| {
                    let _ = tx.send(o);
                }),
            );
            let o = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => {
                    return error(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no answer"))
                }
                Err(_) => return super::routes::no_answer_in_time(),
            };
            let (http, retry) = json::http_status(&o);
            let name = String::from_utf8_lossy(&topic);
            let mut r = respond_bytes(http, json::topic_json(&name, &o, http));
            if let Some(s) = retry {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
        TopicRoute::Subscribers(topic) => {
            let body = match read_body_or_answer(ctx, body, deadline).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (add, texts) = match parse_manage(&body) {
                Ok(m) => m,
                Err(e) => return error(&e),
            };
            manage(ctx, app, add, &topic, texts, deadline).await
        }
    }
}

/// The body of `POST /v1/topics/{topic}/subscribers`: exactly one of `add` and `remove`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManageBody {
    add: Option<Vec<String>>,
    remove: Option<Vec<String>>,
}

fn parse_manage(body: &Bytes) -> Result<(bool, Vec<String>), ApiError> {
    let b: ManageBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("body is not {{\"add\": [...]}} or {{\"remove\": [...]}}: {e}"))
    })?;
    let (add, tokens) = match (b.add, b.remove) {
        (Some(t), None) => (true, t),
        (None, Some(t)) => (false, t),
        _ => return Err(ApiError::bad_request("give `add` or `remove` (a list of tokens), not both")),
    };
    if tokens.is_empty() || tokens.len() > MAX_MANAGE {
        return Err(ApiError::bad_request(format!("1 to {MAX_MANAGE} tokens")));
    }
    Ok((add, tokens))
}

async fn manage(
    ctx: &Ctx,
    app: u16,
    add: bool,
    topic: &[u8],
    texts: Vec<String>,
    deadline: Instant,
) -> Response<Body> {
    let parsed: Vec<Option<Token>> = texts.iter().map(|t| Token::from_hex(t)).collect();
    let valid: Vec<Token> = parsed.iter().flatten().copied().collect();
    let mut answered = Vec::new().into_iter();
    if !valid.is_empty() {
        let n = valid.len();
        let (tx, rx) = oneshot::channel();
        ctx.backend.manage_topic(
            app,
            add,
            topic,
            valid,
            Box::new(move |v| {
                let _ = tx.send(v);
            }),
        );
        answered = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(v)) if v.len() == n => v.into_iter(),
            Ok(_) => {
                return error(&ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "no answer for every token",
                ))
            }
            Err(_) => return super::routes::no_answer_in_time(),
        };
    }
    let statuses: Vec<SubStatus> =
        parsed
            .iter()
            .map(|t| {
                if t.is_some() {
                    answered.next().unwrap_or(SubStatus::BAD_TOKEN)
                } else {
                    SubStatus::BAD_TOKEN
                }
            })
            .collect();
    if statuses.first() == Some(&SubStatus::BAD_TOPIC) {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "bad_topic", "not a topic name one may subscribe to");
        return error(&e);
    }
    let results: Vec<serde_json::Value> = texts
        .iter()
        .zip(&statuses)
        .map(|(t, s)| json!({ "token": t, "status": if s.is_known() { s.name() } else { "unknown" } }))
        .collect();
    respond(StatusCode::OK, &json!({ "results": results }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_topics_percent_decoded() {
        assert_eq!(route("/v1/topics/news/push"), Some(Ok(TopicRoute::Push(b"news"[..].into()))));
        assert_eq!(route("/v1/topics/%7Eall/push"), Some(Ok(TopicRoute::Push(b"~all"[..].into()))));
        assert_eq!(
            route("/v1/topics/a%25b/subscribers"),
            Some(Ok(TopicRoute::Subscribers(b"a%b"[..].into())))
        );
        assert_eq!(route("/v1/topic-messages/42"), Some(Ok(TopicRoute::Stats(42))));
        assert!(matches!(route("/v1/topic-messages/x"), Some(Err(_))));
        assert!(matches!(route("/v1/topics/a%zz/push"), Some(Err(_))));
        assert_eq!(route("/v1/topics/news/other"), None);
        assert_eq!(route("/v1/push"), None);
    }

    #[test]
    fn a_manage_body_is_add_or_remove() {
        let (add, t) = parse_manage(&Bytes::from_static(br#"{"add":["a","b"]}"#)).unwrap();
        assert!(add && t.len() == 2);
        assert!(!parse_manage(&Bytes::from_static(br#"{"remove":["a"]}"#)).unwrap().0);
        assert!(parse_manage(&Bytes::from_static(br#"{"add":["a"],"remove":["b"]}"#)).is_err());
        assert!(parse_manage(&Bytes::from_static(br#"{"add":[]}"#)).is_err());
        assert!(parse_manage(&Bytes::from_static(br#"{"tokens":["a"]}"#)).is_err());
    }
}
