//! The NATS client text protocol, the subset a subscriber and a publisher
//! need: INFO, CONNECT, SUB, PUB, MSG, PING, PONG, +OK, -ERR.

use super::{peer_topic, DevCtx, DevEvent, Target, WireState};

pub fn hello(ctx: &DevCtx<'_>, out: &mut Vec<u8>) {
    connect(&format!("d{}", ctx.idx), out);
    out.extend_from_slice(format!("SUB {} 1\r\nPING\r\n", peer_topic(Target::Nats, ctx.idx)).as_bytes());
}

pub fn connect(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}}\r\n")
            .as_bytes(),
    );
}

pub fn publish(subject: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// What one protocol line meant, for publishers and subscribers alike.
pub enum Op<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Other,
}

/// Splits one operation off the front: the op and the bytes it used.
pub fn split(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, String> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > 64 * 1024 {
            return Err("NATS line too long".into());
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let used = eol + 2;
    if line.starts_with(b"MSG ") {
        let text = std::str::from_utf8(line).map_err(|_| "bad MSG line")?;
        let n: usize = text.split_whitespace().last().and_then(|s| s.parse().ok()).ok_or("bad MSG size")?;
        if buf.len() < used + n + 2 {
            return Ok(None);
        }
        return Ok(Some((Op::Msg(&buf[used..used + n]), used + n + 2)));
    }
    if line.starts_with(b"-ERR") {
        return Err(String::from_utf8_lossy(line).into_owned());
    }
    let op = match line {
        b"PING" => Op::Ping,
        b"PONG" => Op::Pong,
        _ => Op::Other, // INFO, +OK
    };
    Ok(Some((op, used)))
}

pub fn on_bytes(
    st: &mut WireState,
    buf: &[u8],
    out: &mut Vec<u8>,
    f: &mut dyn FnMut(DevEvent<'_>),
) -> Result<usize, String> {
    let mut used = 0;
    while let Some((op, n)) = split(&buf[used..])? {
        used += n;
        match op {
            Op::Msg(payload) => f(DevEvent::Notify { msg_id: None, payload }),
            Op::Ping => out.extend_from_slice(b"PONG\r\n"),
            Op::Pong if !st.registered => {
                // The PONG answering our first PING proves CONNECT and SUB were processed.
                st.registered = true;
                f(DevEvent::Registered { heartbeat_s: 0, token: None, missed: 0 });
            }
            Op::Pong => f(DevEvent::Pong),
            Op::Other => {}
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pong_registers_msgs_arrive_and_pings_are_answered() {
        let buf = b"INFO {}\r\nPONG\r\nMSG d.3 1 5\r\nhello\r\nPING\r\nMSG d.3 1 5\r\nhel";
        let mut st = WireState::default();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let used = on_bytes(&mut st, buf, &mut out, &mut |e| {
            seen.push(match e {
                DevEvent::Registered { .. } => "registered".to_string(),
                DevEvent::Notify { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
                _ => "other".to_string(),
            })
        })
        .unwrap();
        assert_eq!(seen, ["registered", "hello"]);
        assert_eq!(out, b"PONG\r\n");
        assert_eq!(&buf[used..], b"MSG d.3 1 5\r\nhel");
        assert!(on_bytes(&mut st, b"-ERR 'Slow Consumer'\r\n", &mut out, &mut |_| {}).is_err());
    }
}
