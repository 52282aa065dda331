//! MQTT 3.1.1, the subset a push device and a publisher need: CONNECT,
//! CONNACK, SUBSCRIBE, SUBACK, PUBLISH (QoS 0/1), PUBACK, PINGREQ, PINGRESP.

use super::{DevEvent, WireState};

fn put_len(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT with a clean session.
pub fn connect(client_id: &str, keepalive_s: u16, out: &mut Vec<u8>) {
    connect_session(client_id, keepalive_s, true, out)
}

/// CONNECT; without `clean` the broker resumes the client's session (its
/// subscriptions, and the QoS 1 messages queued while it was away).
pub fn connect_session(client_id: &str, keepalive_s: u16, clean: bool, out: &mut Vec<u8>) {
    out.push(0x10);
    put_len(out, 10 + 2 + client_id.len());
    put_str(out, b"MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(if clean { 0x02 } else { 0x00 });
    out.extend_from_slice(&keepalive_s.to_be_bytes());
    put_str(out, client_id.as_bytes());
}

/// SUBSCRIBE to one topic at QoS 1.
pub fn subscribe(pid: u16, topic: &str, out: &mut Vec<u8>) {
    out.push(0x82);
    put_len(out, 2 + 2 + topic.len() + 1);
    out.extend_from_slice(&pid.to_be_bytes());
    put_str(out, topic.as_bytes());
    out.push(1);
}

/// PUBLISH at QoS 1 with packet id `pid`.
pub fn publish_qos1(pid: u16, topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x32);
    put_len(out, 2 + topic.len() + 2 + payload.len());
    put_str(out, topic.as_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One packet: first byte, body, bytes used.
pub type Packet<'a> = (u8, &'a [u8], usize);

/// Splits one packet off the front of `buf`.
pub fn split(buf: &[u8]) -> Result<Option<Packet<'_>>, String> {
    let Some(&h) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err("bad remaining length".into());
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((h, &buf[i..i + len], i + len)))
}

pub fn on_bytes(
    st: &mut WireState,
    buf: &[u8],
    out: &mut Vec<u8>,
    f: &mut dyn FnMut(DevEvent<'_>),
) -> Result<usize, String> {
    let mut used = 0;
    while let Some((h, body, n)) = split(&buf[used..])? {
        used += n;
        match h >> 4 {
            2 => {
                if body.len() < 2 || body[1] != 0 {
                    return Err(format!("CONNACK refused: {:?}", body.get(1)));
                }
                if st.topic_mode {
                    st.registered = true;
                    f(DevEvent::Registered { heartbeat_s: 0, token: None, missed: 0 });
                }
            }
            9 => {
                let ok = body.get(2).is_none_or(|rc| *rc & 0x80 == 0);
                if st.topic_mode {
                    f(DevEvent::Subscribed { ok });
                    continue;
                }
                if !ok {
                    return Err("SUBACK refused".into());
                }
                st.registered = true;
                f(DevEvent::Registered { heartbeat_s: 0, token: None, missed: 0 });
            }
            3 => {
                let qos = (h >> 1) & 3;
                if body.len() < 2 {
                    return Err("short PUBLISH".into());
                }
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut p = 2 + tl;
                if qos > 0 {
                    let pid = body.get(p..p + 2).ok_or("short PUBLISH")?;
                    out.extend_from_slice(&[0x40, 2, pid[0], pid[1]]);
                    p += 2;
                }
                f(DevEvent::Notify { msg_id: None, payload: body.get(p..).ok_or("short PUBLISH")? });
            }
            13 => f(DevEvent::Pong),
            t => return Err(format!("unexpected MQTT packet type {t}")),
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_registers_on_suback_and_pubacks_qos1_publish() {
        let mut out = Vec::new();
        publish_qos1(0x1234, "d/7", b"hi", &mut out);
        let mut buf = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 1];
        buf.extend_from_slice(&out);
        buf.push(0xd0); // a PINGRESP cut after its first byte stays in the buffer
        let mut st = WireState::default();
        let mut reply = Vec::new();
        let mut seen = Vec::new();
        let used = on_bytes(&mut st, &buf, &mut reply, &mut |e| {
            seen.push(match e {
                DevEvent::Registered { .. } => "registered".to_string(),
                DevEvent::Notify { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
                _ => "other".to_string(),
            })
        })
        .unwrap();
        assert_eq!(used, buf.len() - 1);
        assert!(st.registered);
        assert_eq!(seen, ["registered", "hi"]);
        assert_eq!(reply, [0x40, 2, 0x12, 0x34]);
    }

    #[test]
    fn refused_connack_and_long_lengths() {
        let mut st = WireState::default();
        assert!(on_bytes(&mut st, &[0x20, 2, 0, 5], &mut Vec::new(), &mut |_| {}).is_err());
        let mut big = Vec::new();
        publish_qos1(1, "t", &[0u8; 300], &mut big);
        assert_eq!(split(&big).unwrap().unwrap().2, big.len());
        assert!(split(&big[..100]).unwrap().is_none());
    }
}
