//! The binary encoding of a batch of pushes forwarded to another node and of
//! its batch of results (sans-IO). Versioned, every length checked against
//! the protocol's limits, no panic and no allocation past those limits on
//! bad input.
//!
//! ```text
//! batch   = version(1) kind(1) count(2) item*count        big-endian throughout
//! push    = req.shard(2) req.slot(4) req.gen(4) index(2) token(24)
//!           app_len(1) app kind(1) priority(1) flags(1) expiry(4)
//!           collapse_len(1) collapse payload_len(2) payload
//! result  = req.shard(2) req.slot(4) req.gen(4) index(2) status(1) msg_id(8) info(8)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::frame::{is_valid_app_id, MAX_APP_ID, MAX_COLLAPSE, MAX_PAYLOAD};
use crate::proto::{Note, Status, Token};
use crate::shard::msg::{PushMsg, ResultMsg, Via};
use crate::shard::requests::{Outcome, ReqRef};

pub const VERSION: u8 = 1;
const KIND_PUSHES: u8 = 1;
const KIND_RESULTS: u8 = 2;
/// Most items one batch may carry (`cluster.max_batch` is at most this).
pub const MAX_ITEMS: usize = 1024;
const HEAD: usize = 4;
const REQ: usize = 12;
const RESULT: usize = REQ + 1 + 8 + 8;

/// A push on its way to the node that holds its token's device: the app it
/// was accepted for (by id: app indexes are local to a node) and the push.
/// `msg.read_at_ns` is local to a node's clock and is not carried.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub app: String,
    pub msg: PushMsg,
}

/// Why bytes do not decode (or a batch cannot be encoded).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WireError {
    /// Shorter than its fields say.
    Truncated,
    /// A version this node does not speak.
    Version(u8),
    /// Not the kind of batch expected.
    Kind(u8),
    /// More items than [`MAX_ITEMS`], or none.
    Count(usize),
    /// A field over its limit (app id, collapse id, payload), or an app id that is not one.
    Field(&'static str),
    /// Bytes left after the last item.
    Trailing,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated batch"),
            WireError::Version(v) => write!(f, "batch version {v} not spoken here"),
            WireError::Kind(k) => write!(f, "unexpected batch kind {k}"),
            WireError::Count(n) => write!(f, "batch of {n} items"),
            WireError::Field(name) => write!(f, "bad field {name}"),
            WireError::Trailing => f.write_str("bytes after the batch"),
        }
    }
}

impl std::error::Error for WireError {}

fn put_req(b: &mut BytesMut, req: ReqRef, index: u16) {
    b.put_u16(req.shard);
    b.put_u32(req.slot);
    b.put_u32(req.gen);
    b.put_u16(index);
}

fn head(b: &mut BytesMut, kind: u8, count: usize) -> Result<(), WireError> {
    if count == 0 || count > MAX_ITEMS {
        return Err(WireError::Count(count));
    }
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u16(count as u16);
    Ok(())
}

/// Encodes a batch of 1 to [`MAX_ITEMS`] pushes within the protocol's limits.
pub fn encode_pushes(pushes: &[Forwarded]) -> Result<Bytes, WireError> {
    let size: usize = pushes
        .iter()
        .map(|p| {
            REQ + 24 + 1 + p.app.len() + 7 + 1 + p.msg.note.collapse.len() + 2 + p.msg.note.payload.len()
        })
        .sum();
    let mut b = BytesMut::with_capacity(HEAD + size);
    head(&mut b, KIND_PUSHES, pushes.len())?;
    for p in pushes {
        let n = &p.msg.note;
        if !is_valid_app_id(&p.app) {
            return Err(WireError::Field("app"));
        }
        if n.collapse.len() > MAX_COLLAPSE {
            return Err(WireError::Field("collapse"));
        }
        if n.payload.len() > MAX_PAYLOAD {
            return Err(WireError::Field("payload"));
        }
        put_req(&mut b, p.msg.req, p.msg.index);
        b.put_slice(&p.msg.token.0);
        b.put_u8(p.app.len() as u8);
        b.put_slice(p.app.as_bytes());
        b.put_u8(n.kind);
        b.put_u8(n.priority);
        b.put_u8(n.flags);
        b.put_u32(n.expiry);
        b.put_u8(n.collapse.len() as u8);
        b.put_slice(&n.collapse);
        b.put_u16(n.payload.len() as u16);
        b.put_slice(&n.payload);
    }
    Ok(b.freeze())
}

/// Encodes a batch of 1 to [`MAX_ITEMS`] results.
pub fn encode_results(results: &[ResultMsg]) -> Result<Bytes, WireError> {
    let mut b = BytesMut::with_capacity(HEAD + RESULT * results.len());
    head(&mut b, KIND_RESULTS, results.len())?;
    for r in results {
        put_req(&mut b, r.req, r.index);
        b.put_u8(r.outcome.status.0);
        b.put_u64(r.outcome.msg_id);
        b.put_u64(r.outcome.info);
    }
    Ok(b.freeze())
}

/// Reads fields off a shared buffer; payloads are slices of it, not copies.
struct Cursor {
    buf: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(WireError::Truncated)?;
        let s = self.buf.slice(self.at..end);
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let end = self.at.checked_add(N).filter(|&e| e <= self.buf.len()).ok_or(WireError::Truncated)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.at..end]);
        self.at = end;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn req(&mut self) -> Result<(ReqRef, u16), WireError> {
        let req = ReqRef { shard: self.u16()?, slot: self.u32()?, gen: self.u32()? };
        Ok((req, self.u16()?))
    }

    /// Version, kind and count; the count bounded before anything is allocated.
    fn head(&mut self, kind: u8) -> Result<usize, WireError> {
        let v = self.u8()?;
        if v != VERSION {
            return Err(WireError::Version(v));
        }
        let k = self.u8()?;
        if k != kind {
            return Err(WireError::Kind(k));
        }
        let n = self.u16()? as usize;
        if n == 0 || n > MAX_ITEMS {
            return Err(WireError::Count(n));
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

fn limited(c: &mut Cursor, len: usize, max: usize, name: &'static str) -> Result<Bytes, WireError> {
    if len > max {
        return Err(WireError::Field(name));
    }
    c.take(len)
}

/// Decodes a batch of pushes.
pub fn decode_pushes(buf: Bytes) -> Result<Vec<Forwarded>, WireError> {
    let mut c = Cursor { buf, at: 0 };
    let n = c.head(KIND_PUSHES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (req, index) = c.req()?;
        let token = Token(c.array()?);
        let len = c.u8()? as usize;
        let app = limited(&mut c, len, MAX_APP_ID, "app")?;
        let app =
            std::str::from_utf8(&app).ok().filter(|a| is_valid_app_id(a)).ok_or(WireError::Field("app"))?;
        let (kind, priority, flags, expiry) = (c.u8()?, c.u8()?, c.u8()?, c.u32()?);
        let len = c.u8()? as usize;
        let collapse = limited(&mut c, len, MAX_COLLAPSE, "collapse")?;
        let len = c.u16()? as usize;
        let payload = limited(&mut c, len, MAX_PAYLOAD, "payload")?;
        let note = Note { kind, priority, flags, expiry, collapse, payload };
        out.push(Forwarded {
            app: app.to_string(),
            msg: PushMsg { req, index, token, app: 0, via: Via::Forwarded, note, read_at_ns: 0 },
        });
    }
    c.end()?;
    Ok(out)
}

/// Decodes a batch of results.
pub fn decode_results(buf: Bytes) -> Result<Vec<ResultMsg>, WireError> {
    let mut c = Cursor { buf, at: 0 };
    let n = c.head(KIND_RESULTS)?;
    if c.buf.len().saturating_sub(c.at) < n * RESULT {
        return Err(WireError::Truncated);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (req, index) = c.req()?;
        let outcome = Outcome { status: Status(c.u8()?), msg_id: c.u64()?, info: c.u64()? };
        out.push(ResultMsg { req, index, outcome });
    }
    c.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn push(i: u16, payload: &[u8]) -> Forwarded {
        let note = Note {
            kind: 1,
            priority: 5,
            flags: 1,
            expiry: 1_900_000_000,
            collapse: Bytes::from_static(b"score"),
            payload: Bytes::copy_from_slice(payload),
        };
        let req = ReqRef { shard: 3, slot: 70_000 + u32::from(i), gen: 9 };
        Forwarded {
            app: "app.one".into(),
            msg: PushMsg {
                req,
                index: i,
                token: Token([i as u8; 24]),
                app: 0,
                via: Via::Forwarded,
                note,
                read_at_ns: 5,
            },
        }
    }

    fn same(a: &Forwarded, b: &Forwarded) -> bool {
        a.app == b.app
            && a.msg.req == b.msg.req
            && a.msg.index == b.msg.index
            && a.msg.token == b.msg.token
            && a.msg.note == b.msg.note
    }

    #[test]
    fn a_push_batch_round_trips_without_the_local_clock() {
        let batch = vec![push(0, b"hello"), push(1, &[0xff; MAX_PAYLOAD]), push(2, b"")];
        let bytes = encode_pushes(&batch).unwrap();
        let back = decode_pushes(bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert!(batch.iter().zip(&back).all(|(a, b)| same(a, b)));
        assert!(back.iter().all(|p| p.msg.read_at_ns == 0), "node-local time does not travel");
    }

    #[test]
    fn a_result_batch_round_trips() {
        let r = |i: u16, s| ResultMsg {
            req: ReqRef { shard: 1, slot: 2, gen: u32::MAX },
            index: i,
            outcome: Outcome { status: s, msg_id: u64::MAX - u64::from(i), info: 77 },
        };
        let batch = vec![r(0, Status::DELIVERED), r(1, Status::UNAVAILABLE), r(2, Status(200))];
        let back = decode_results(encode_results(&batch).unwrap()).unwrap();
        assert_eq!(format!("{batch:?}"), format!("{back:?}"));
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        assert_eq!(encode_pushes(&[]), Err(WireError::Count(0)));
        assert_eq!(encode_pushes(&vec![push(0, b"x"); MAX_ITEMS + 1]), Err(WireError::Count(MAX_ITEMS + 1)));
        assert!(encode_pushes(&vec![push(0, b"x"); MAX_ITEMS]).is_ok());
        assert_eq!(encode_pushes(&[push(0, &[0; MAX_PAYLOAD + 1])]), Err(WireError::Field("payload")));
        let mut p = push(0, b"x");
        p.app = "no spaces".into();
        assert_eq!(encode_pushes(&[p]), Err(WireError::Field("app")));
        let good = encode_pushes(&[push(0, b"x")]).unwrap();
        let mut v = good.to_vec();
        v[0] = 2;
        assert_eq!(decode_pushes(Bytes::from(v)).unwrap_err(), WireError::Version(2));
        assert_eq!(decode_results(good.clone()).unwrap_err(), WireError::Kind(KIND_PUSHES));
        let mut v = good.to_vec();
        v.push(0);
        assert_eq!(decode_pushes(Bytes::from(v)).unwrap_err(), WireError::Trailing);
        // A payload length past the limit is refused before it is read.
        let mut v = good.to_vec();
        let at = v.len() - 3;
        v[at..at + 2].copy_from_slice(&(MAX_PAYLOAD as u16 + 1).to_be_bytes());
        assert_eq!(decode_pushes(Bytes::from(v)).unwrap_err(), WireError::Field("payload"));
        // A huge count on a short buffer allocates nothing big and fails.
        assert_eq!(
            decode_results(Bytes::from_static(&[1, 2, 0x04, 0x00])).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            decode_results(Bytes::from_static(&[1, 2, 0xff, 0xff])).unwrap_err(),
            WireError::Count(65535)
        );
    }

    #[test]
    fn every_truncation_of_a_good_batch_is_an_error() {
        let good = encode_pushes(&[push(0, b"abc"), push(1, b"defg")]).unwrap();
        for n in 0..good.len() {
            assert!(decode_pushes(good.slice(..n)).is_err(), "prefix of {n} bytes");
        }
        let res = encode_results(&[ResultMsg {
            req: ReqRef { shard: 0, slot: 0, gen: 0 },
            index: 0,
            outcome: Outcome::status(Status::QUEUED),
        }])
        .unwrap();
        for n in 0..res.len() {
            assert!(decode_results(res.slice(..n)).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn the_fuzz_seeds_are_valid_batches() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/cluster_wire");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("seed dir") {
            let b = Bytes::from(std::fs::read(e.expect("entry").path()).expect("seed"));
            assert!(decode_pushes(b.clone()).is_ok() || decode_results(b).is_ok(), "a seed decodes");
            n += 1;
        }
        assert!(n >= 3);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let b = Bytes::from(bytes);
            let _ = decode_pushes(b.clone());
            let _ = decode_results(b);
        }

        #[test]
        fn mutated_batches_never_panic_and_decoded_ones_stay_in_limits(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut v = encode_pushes(&[push(0, &payload), push(1, b"z")]).unwrap().to_vec();
            for (at, x) in flips {
                let i = at % v.len();
                v[i] ^= x;
            }
            let v = Bytes::from(v);
            if let Ok(ps) = decode_pushes(v.clone()) {
                prop_assert_eq!(encode_pushes(&ps).unwrap(), v, "the encoding is canonical");
                for p in ps {
                    prop_assert!(p.msg.note.payload.len() <= MAX_PAYLOAD);
                    prop_assert!(p.msg.note.collapse.len() <= MAX_COLLAPSE);
                    prop_assert!(is_valid_app_id(&p.app));
                }
            }
        }

        #[test]
        fn any_valid_batch_round_trips(
            items in proptest::collection::vec(
                (any::<u16>(), any::<u32>(), any::<[u8; 24]>(), any::<u8>(), any::<u32>(),
                 proptest::collection::vec(any::<u8>(), 0..=MAX_COLLAPSE),
                 proptest::collection::vec(any::<u8>(), 0..300)),
                1..20),
        ) {
            let batch: Vec<Forwarded> = items.into_iter().map(|(index, slot, t, kind, expiry, c, p)| Forwarded {
                app: "a-b_c.9".into(),
                msg: PushMsg {
                    req: ReqRef { shard: index, slot, gen: slot ^ 1 },
                    index,
                    token: Token(t),
                    note: Note { kind, priority: 10, flags: 0, expiry, collapse: Bytes::from(c), payload: Bytes::from(p) },
                    app: 0,
                    via: Via::Forwarded,
                    read_at_ns: 0,
                },
            }).collect();
            let back = decode_pushes(encode_pushes(&batch).unwrap()).unwrap();
            prop_assert_eq!(back.len(), batch.len());
            prop_assert!(batch.iter().zip(&back).all(|(a, b)| same(a, b)));
        }
    }
}
