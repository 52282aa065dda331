//! Byte layout of the durable store's keys and values. Integers are big-endian
//! so that key order is (token, id) order, which is delivery order.

use bytes::Bytes;

use crate::proto::token::TOKEN_LEN;
use crate::proto::Note;
use crate::proto::Token;
use crate::store::StoredMsg;

/// `msgs` key: token || msg_id.
pub const MSG_KEY_LEN: usize = TOKEN_LEN + 8;
/// Fixed part of a `msgs` value: version, kind, priority, flags, expiry, collapse length.
const MSG_HEAD_LEN: usize = 1 + 3 + 4 + 2;
const MSG_VERSION: u8 = 1;

/// `meta` key of the shard layout record (value: version u8, shards u32).
pub const LAYOUT_KEY: &[u8] = b"L";
const SHARD_TAG: u8 = b'S';
const MISSED_TAG: u8 = b'M';

pub fn msg_key(token: &Token, id: u64) -> [u8; MSG_KEY_LEN] {
    let mut k = [0u8; MSG_KEY_LEN];
    k[..TOKEN_LEN].copy_from_slice(&token.0);
    k[TOKEN_LEN..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Splits a `msgs` key; `None` if it has the wrong length.
pub fn parse_msg_key(k: &[u8]) -> Option<(Token, u64)> {
    if k.len() != MSG_KEY_LEN {
        return None;
    }
    let mut t = [0u8; TOKEN_LEN];
    t.copy_from_slice(&k[..TOKEN_LEN]);
    Some((Token(t), be_u64(&k[TOKEN_LEN..])))
}

pub fn shard_key(shard: u16) -> [u8; 3] {
    let s = shard.to_be_bytes();
    [SHARD_TAG, s[0], s[1]]
}

pub fn missed_key(token: &Token) -> [u8; 1 + TOKEN_LEN] {
    let mut k = [0u8; 1 + TOKEN_LEN];
    k[0] = MISSED_TAG;
    k[1..].copy_from_slice(&token.0);
    k
}

/// Per-shard counters, rewritten in every batch that changes them.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ShardMeta {
    pub max_id: u64,
    pub len: u64,
}

impl ShardMeta {
    pub fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.max_id.to_be_bytes());
        v[8..].copy_from_slice(&self.len.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<ShardMeta> {
        (v.len() == 16).then(|| ShardMeta { max_id: be_u64(&v[..8]), len: be_u64(&v[8..]) })
    }
}

pub fn encode_layout(shards: u32) -> [u8; 5] {
    let s = shards.to_be_bytes();
    [1, s[0], s[1], s[2], s[3]]
}

pub fn decode_layout(v: &[u8]) -> Option<u32> {
    (v.len() == 5 && v[0] == 1).then(|| u32::from_be_bytes([v[1], v[2], v[3], v[4]]))
}

pub fn decode_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

pub fn encode_msg(m: &StoredMsg) -> Vec<u8> {
    let clen = m.note.collapse.len().min(usize::from(u16::MAX));
    let mut v = Vec::with_capacity(MSG_HEAD_LEN + clen + m.note.payload.len());
    v.extend_from_slice(&[MSG_VERSION, m.note.kind, m.note.priority, m.note.flags]);
    v.extend_from_slice(&m.note.expiry.to_be_bytes());
    v.extend_from_slice(&(clen as u16).to_be_bytes());
    v.extend_from_slice(&m.note.collapse[..clen]);
    v.extend_from_slice(&m.note.payload);
    v
}

/// Decodes a `msgs` value; `None` if it is malformed.
pub fn decode_msg(id: u64, v: &[u8]) -> Option<StoredMsg> {
    let (expiry, collapse, payload) = split_msg(v)?;
    let note = Note {
        kind: v[1],
        priority: v[2],
        flags: v[3],
        expiry,
        collapse: Bytes::copy_from_slice(collapse),
        payload: Bytes::copy_from_slice(payload),
    };
    Some(StoredMsg { msg_id: id, note })
}

/// The expiry and collapse id of a `msgs` value, without copying the payload.
pub fn split_msg(v: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    if v.len() < MSG_HEAD_LEN || v[0] != MSG_VERSION {
        return None;
    }
    let expiry = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
    let clen = usize::from(u16::from_be_bytes([v[8], v[9]]));
    let rest = &v[MSG_HEAD_LEN..];
    if rest.len() < clen {
        return None;
    }
    Some((expiry, &rest[..clen], &rest[clen..]))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_round_trip_and_truncation() {
        let note = Note {
            kind: 1,
            priority: 5,
            flags: 2,
            expiry: 99,
            collapse: Bytes::from_static(b"c1"),
            payload: Bytes::from_static(b"hello"),
        };
        let m = StoredMsg { msg_id: 7, note };
        let v = encode_msg(&m);
        assert_eq!(decode_msg(7, &v), Some(m));
        assert_eq!(decode_msg(7, &v[..9]), None);
        assert_eq!(decode_msg(7, &v[..11]), None);
    }

    #[test]
    fn keys_sort_by_token_then_id() {
        let t = Token([3; TOKEN_LEN]);
        assert!(msg_key(&t, 255) < msg_key(&t, 256));
        assert_eq!(parse_msg_key(&msg_key(&t, 9)), Some((t, 9)));
        assert!(msg_key(&t, 9) < msg_key(&Token([4; TOKEN_LEN]), 1));
    }
}
