//! The pushgate device port, spoken with the gateway's own codec.

use ::pushgate::proto::frame::{split_frame, Frame, Hello, DEVICE_MAX_BODY, VERSION};
use ::pushgate::proto::topic::{classify, TopicName};
use ::pushgate::proto::SubStatus;

use super::{DevCtx, DevEvent, WireState};

pub fn hello(ctx: &DevCtx<'_>, out: &mut Vec<u8>) {
    Frame::Hello(Hello {
        version: VERSION,
        keepalive_s: ctx.keepalive_s,
        app_id: ctx.app,
        secret: ctx.secret,
    })
    .encode(out);
}

/// SUBSCRIBE to `topic`; nothing for `~all`, which every device is in already.
pub fn subscribe(topic: &str, out: &mut Vec<u8>) {
    if classify(topic.as_bytes()) != TopicName::Broadcast {
        Frame::Subscribe { req_id: 1, on: true, topic: topic.as_bytes() }.encode(out);
    }
}

pub fn on_bytes(
    st: &mut WireState,
    buf: &[u8],
    out: &mut Vec<u8>,
    f: &mut dyn FnMut(DevEvent<'_>),
) -> Result<usize, String> {
    let mut used = 0;
    loop {
        let (raw, n) = match split_frame(&buf[used..], DEVICE_MAX_BODY) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(used),
            Err(e) => return Err(format!("frame: {e:?}")),
        };
        used += n;
        match Frame::parse(raw).map_err(|e| format!("parse: {e:?}"))? {
            Frame::Welcome { token, heartbeat_s, missed } => {
                st.registered = true;
                f(DevEvent::Registered { heartbeat_s, token: Some(token), missed });
            }
            Frame::Notify { msg_id, payload, .. } | Frame::TopicNotify { msg_id, payload, .. } => {
                Frame::Ack { msg_id }.encode(out);
                f(DevEvent::Notify { msg_id: Some(msg_id), payload });
            }
            Frame::SubscribeResult { status, .. } => f(DevEvent::Subscribed { ok: status == SubStatus::OK }),
            Frame::Pong => f(DevEvent::Pong),
            Frame::GoAway { reason, reconnect_ms } => f(DevEvent::GoAway { reason: reason.0, reconnect_ms }),
            Frame::Error { code, text } => return Err(format!("ERROR {}: {text}", code.name())),
            other => return Err(format!("unexpected frame 0x{:02x}", other.ftype())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::pushgate::proto::Token;

    #[test]
    fn welcome_registers_and_every_notify_is_acked() {
        let mut buf = Vec::new();
        Frame::Welcome { token: Token([9; 24]), heartbeat_s: 45, missed: 2 }.encode(&mut buf);
        Frame::Notify { msg_id: 77, kind: 0, priority: 10, payload: b"x" }.encode(&mut buf);
        let mut st = WireState::default();
        let mut out = Vec::new();
        let mut hb = 0;
        let mut ids = Vec::new();
        let used = on_bytes(&mut st, &buf, &mut out, &mut |e| match e {
            DevEvent::Registered { heartbeat_s, missed, token } => {
                hb = heartbeat_s;
                assert_eq!((missed, token), (2, Some(Token([9; 24]))));
            }
            DevEvent::Notify { msg_id, .. } => ids.push(msg_id),
            _ => {}
        })
        .unwrap();
        assert_eq!((used, hb, ids), (buf.len(), 45, vec![Some(77)]));
        let mut ack = Vec::new();
        Frame::Ack { msg_id: 77 }.encode(&mut ack);
        assert_eq!(out, ack);
    }

    #[test]
    fn topic_notify_is_acked_and_subscribe_results_reported() {
        let mut buf = Vec::new();
        Frame::TopicNotify { msg_id: 1 << 62, kind: 0, priority: 10, topic: b"b", payload: b"x" }
            .encode(&mut buf);
        Frame::SubscribeResult { req_id: 1, status: SubStatus::TOPIC_LIMIT }.encode(&mut buf);
        let (mut out, mut seen) = (Vec::new(), Vec::new());
        on_bytes(&mut WireState::default(), &buf, &mut out, &mut |e| match e {
            DevEvent::Notify { msg_id, .. } => seen.push(format!("notify {msg_id:?}")),
            DevEvent::Subscribed { ok } => seen.push(format!("subscribed {ok}")),
            _ => {}
        })
        .unwrap();
        assert_eq!(seen, [format!("notify {:?}", Some(1u64 << 62)), "subscribed false".to_string()]);
        let mut ack = Vec::new();
        Frame::Ack { msg_id: 1 << 62 }.encode(&mut ack);
        assert_eq!(out, ack);
        let mut sub = Vec::new();
        subscribe("~all", &mut sub);
        assert!(sub.is_empty(), "every device is in ~all already");
        subscribe("b", &mut sub);
        assert_eq!(sub, [0x0a, 4, 0, 1, 1, b'b']);
    }

    #[test]
    fn error_frame_closes() {
        let mut buf = Vec::new();
        Frame::Error { code: ::pushgate::proto::ErrorCode::UNKNOWN_APP, text: "no" }.encode(&mut buf);
        assert!(on_bytes(&mut WireState::default(), &buf, &mut Vec::new(), &mut |_| {}).is_err());
    }
}
