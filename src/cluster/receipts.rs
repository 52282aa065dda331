//! Receipts across nodes: a node with a provider session subscribed to an
//! app's receipts listens on `<prefix>.rcpt.<app id in hex>` (one queue
//! group for all nodes, so each receipt goes to one of them). A node whose
//! device ACKed a receipt-flagged notification and has no subscriber of the
//! app itself sends the receipt there; with no node listening it keeps the
//! receipt and tries again later.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use log::warn;

use super::engine::{Done, EngineHandle};
use super::metrics::Op;
use super::EngineError;
use crate::proto::Token;
use crate::store::Receipt;

/// Most receipts one request carries (the shards send at most a pump batch).
pub const MAX_RECEIPTS: usize = 1024;
const ITEM: usize = 24 + 8 + 8;
const QUEUE_GROUP: &str = "pushgate-receipts";

/// Takes receipts of `app` (by id) that another node sent here. Runs on the
/// engine thread: it must not block.
pub type ReceiptHandler = Arc<dyn Fn(&str, Vec<Receipt>) + Send + Sync>;

/// The subject receipts of `app` travel on: the app id in hex (an app id may
/// hold `.` and other bytes a subject token may not).
pub fn subject(prefix: &str, app: &str) -> String {
    let mut s = format!("{prefix}.rcpt.");
    for b in app.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn encode(receipts: &[Receipt]) -> Bytes {
    let mut b = BytesMut::with_capacity(receipts.len() * ITEM);
    for r in receipts {
        b.put_slice(&r.token.0);
        b.put_u64(r.msg_id);
        b.put_u64(r.acked_at_ms);
    }
    b.freeze()
}

/// The receipts in `b`, or None if it is not a whole number of them (or too many).
pub fn decode(b: &[u8]) -> Option<Vec<Receipt>> {
    if !b.len().is_multiple_of(ITEM) || b.len() / ITEM > MAX_RECEIPTS {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / ITEM);
    for item in b.chunks_exact(ITEM) {
        let mut t = [0u8; 24];
        t.copy_from_slice(&item[..24]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&item[24..32]);
        let msg_id = u64::from_be_bytes(n);
        n.copy_from_slice(&item[32..]);
        out.push(Receipt { token: Token(t), msg_id, acked_at_ms: u64::from_be_bytes(n) });
    }
    Some(out)
}

impl EngineHandle {
    /// Hands `receipts` of `app` (none: only asks whether any node listens)
    /// to a node with a subscriber: Ok once that node took them,
    /// `NoResponders` when no node listens (keep them and try later).
    pub fn send_receipts(&self, app: &str, receipts: Vec<Receipt>, done: Done<()>) {
        if receipts.len() > MAX_RECEIPTS {
            return done(Err(EngineError::Busy));
        }
        let app = app.to_string();
        self.submit(Op::Receipts, done, move |ctx| async move {
            let subject = subject(&ctx.cfg.stream_prefix, &app);
            ctx.client.request(subject, encode(&receipts)).await?;
            Ok(())
        })
    }

    /// Starts (`on`) or stops taking `app`'s receipts on this node: the hub
    /// shard calls it when the app's first local subscriber comes and when
    /// its last goes.
    pub fn receipt_interest(&self, app: &str, on: bool, handler: ReceiptHandler) {
        let app = app.to_string();
        self.spawn(move |ctx| async move {
            let stop_rx = {
                let Ok(mut subs) = ctx.receipt_subs.lock() else { return };
                if !on {
                    if let Some(stop) = subs.remove(&app) {
                        let _ = stop.send(());
                    }
                    return;
                }
                if subs.contains_key(&app) {
                    return;
                }
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                subs.insert(app.clone(), stop_tx);
                stop_rx
            };
            let mut stop_rx = stop_rx;
            let subject = subject(&ctx.cfg.stream_prefix, &app);
            let mut sub = match ctx.client.queue_subscribe(subject.clone(), QUEUE_GROUP.into()).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("engine: cannot take receipts on {subject}: {e}");
                    if let Ok(mut subs) = ctx.receipt_subs.lock() {
                        subs.remove(&app);
                    }
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        match decode(&msg.payload) {
                            Some(list) => {
                                if !list.is_empty() {
                                    handler(&app, list);
                                }
                                if let Some(reply) = msg.reply {
                                    let _ = ctx.client.publish(reply, Bytes::new()).await;
                                }
                            }
                            // No answer: the sender times out and keeps its receipts.
                            None => warn!("engine: receipts for {app:?} that do not decode"),
                        }
                    }
                }
            }
            let _ = sub.unsubscribe().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_bad_lengths_do_not_decode() {
        let rs: Vec<Receipt> = (0..3u8)
            .map(|i| Receipt { token: Token([i; 24]), msg_id: u64::MAX - u64::from(i), acked_at_ms: 7 })
            .collect();
        let b = encode(&rs);
        assert_eq!(decode(&b), Some(rs));
        assert_eq!(decode(&[]), Some(Vec::new()));
        for n in [1, ITEM - 1, ITEM + 1] {
            assert_eq!(decode(&b[..n]), None);
        }
        assert_eq!(decode(&vec![0u8; ITEM * (MAX_RECEIPTS + 1)]), None);
    }

    #[test]
    fn the_subject_is_one_hex_token_whatever_the_app_id() {
        assert_eq!(subject("pg", "app.one"), "pg.rcpt.6170702e6f6e65");
    }
}
