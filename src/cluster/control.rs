//! Session hand-over between nodes: when a claim replaces another node's,
//! the new holder tells the old one (`<prefix>.node.<old>.replaced`), which
//! closes its session for the token with GOAWAY `replaced` if that session's
//! claim is older than the new one.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use log::warn;

use super::engine::{Done, EngineHandle};
use super::metrics::Op;
use super::EngineError;
use crate::proto::Token;

const VERSION: u8 = 1;
const LEN: usize = 1 + 24 + 8;

/// The subject node `node` takes replacement notices on.
pub fn replaced_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.node.{node}.replaced")
}

/// Takes `(token, revision)`: a claim at `revision` by another node replaced
/// this node's. Runs on the engine thread; it must not block.
pub type ReplacedHandler = Arc<dyn Fn(Token, u64) + Send + Sync>;

fn encode(token: &Token, revision: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(LEN);
    b.put_u8(VERSION);
    b.put_slice(&token.0);
    b.put_u64(revision);
    b.freeze()
}

/// `(token, revision)` from a notice, or None for anything else.
pub fn decode(b: &[u8]) -> Option<(Token, u64)> {
    if b.len() != LEN || b[0] != VERSION {
        return None;
    }
    let mut t = [0u8; 24];
    t.copy_from_slice(&b[1..25]);
    let mut r = [0u8; 8];
    r.copy_from_slice(&b[25..]);
    Some((Token(t), u64::from_be_bytes(r)))
}

impl EngineHandle {
    /// Tells node `node` that this node's claim at `revision` replaced its
    /// claim of `token`. `done` gets Ok once `node` took the notice, or
    /// `NoResponders` if `node` is gone (then it has no session to close).
    pub fn tell_replaced(&self, node: &str, token: Token, revision: u64, done: Done<()>) {
        let node = node.to_string();
        self.submit(Op::Replaced, done, move |ctx| async move {
            let subject = replaced_subject(&ctx.cfg.stream_prefix, &node);
            ctx.client.request(subject, encode(&token, revision)).await?;
            Ok(())
        })
    }

    /// Takes replacement notices for this node's tokens. Call once.
    pub fn serve_replaced(&self, handler: ReplacedHandler) {
        self.spawn(move |ctx| async move {
            let subject = replaced_subject(&ctx.cfg.stream_prefix, &ctx.cfg.node_id);
            let mut sub = match ctx.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("engine: cannot serve {subject}: {e}");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                let started = std::time::Instant::now();
                let Some((token, revision)) = decode(&msg.payload) else {
                    warn!("engine: a replacement notice does not decode");
                    ctx.metrics.on_done(Op::Replaced, started.elapsed(), Some(EngineError::BadReply));
                    continue;
                };
                handler(token, revision);
                if let Some(reply) = msg.reply {
                    let _ = ctx.client.publish(reply, Bytes::new()).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_round_trips_and_nothing_else_decodes() {
        let t = Token([9; 24]);
        let b = encode(&t, u64::MAX - 1);
        assert_eq!(decode(&b), Some((t, u64::MAX - 1)));
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n]), None);
        }
        let mut v = b.to_vec();
        v[0] = 2;
        assert_eq!(decode(&v), None);
        v[0] = 1;
        v.push(0);
        assert_eq!(decode(&v), None);
    }
}
