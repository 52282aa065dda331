//! Delivery receipts: a device's ACK of a notification pushed with the
//! receipt flag becomes a receipt, which goes to its app's hub shard; the hub
//! hands it to one of the app's subscribed sinks (provider sessions, a front
//! end's stream) round robin, or keeps it in the store (bounded per app)
//! until one subscribes.

use std::collections::{HashMap, HashSet};

use crossbeam_channel::TrySendError;
use log::warn;

use super::conn::{Conn, Flags};
use super::msg::{ConnRef, ReceiptSink, ShardMsg};
use super::{Sent, Shard};
use crate::proto::{Frame, ProviderState, Token};
use crate::store::Receipt;

/// Receipts handed from the store to a sink per hub tick.
const RECEIPT_BATCH: usize = 500;

/// At the hub shard of some apps: who takes their receipts.
#[derive(Default)]
pub struct ReceiptHub {
    sinks: HashMap<u16, Vec<ReceiptSink>>,
    rr: usize,
    /// Apps with receipts kept in the store (cluster mode: offered to other nodes).
    kept: HashSet<u16>,
}

impl ReceiptHub {
    /// Adds a sink; true if it is the app's first.
    pub fn add(&mut self, app: u16, sink: ReceiptSink) -> bool {
        let v = self.sinks.entry(app).or_default();
        v.push(sink);
        v.len() == 1
    }

    /// Removes a sink; true if the app had sinks and has none now.
    pub fn remove(&mut self, app: u16, sink: &ReceiptSink) -> bool {
        let Some(v) = self.sinks.get_mut(&app) else { return false };
        v.retain(|s| s != sink);
        if v.is_empty() {
            self.sinks.remove(&app);
            return true;
        }
        false
    }

    /// The next sink of `app`, round robin.
    fn next(&mut self, app: u16) -> Option<ReceiptSink> {
        let v = self.sinks.get(&app).filter(|v| !v.is_empty())?;
        self.rr = self.rr.wrapping_add(1);
        Some(v[self.rr % v.len()].clone())
    }

    fn has(&self, app: u16) -> bool {
        self.sinks.get(&app).is_some_and(|v| !v.is_empty())
    }

    fn apps(&self) -> Vec<u16> {
        self.sinks.keys().copied().collect()
    }
}

impl Shard {
    /// A device acknowledged a notification whose provider asked for a receipt.
    pub(super) fn emit_receipt(&mut self, app: u16, token: Token, msg_id: u64) {
        let receipt = Receipt { token, msg_id, acked_at_ms: self.clock.unix_ms };
        let hub = self.router.hub(app);
        self.router.send(hub, ShardMsg::Receipt { app, receipt, remote: false });
    }

    /// At the hub: hand the receipt to a sink of the app; else (cluster mode)
    /// to a node with one, or keep it.
    pub(super) fn on_receipt(&mut self, app: u16, receipt: Receipt, remote: bool) {
        loop {
            match self.receipts.next(app) {
                None if !remote && self.cluster.is_some() => {
                    return self.send_receipts_away(app, vec![receipt])
                }
                None => return self.keep_receipt(app, receipt),
                Some(ReceiptSink::Conn(to)) => {
                    let m = ShardMsg::DeliverReceipts { to, app, receipts: vec![receipt] };
                    return self.router.send(usize::from(to.shard), m);
                }
                Some(ReceiptSink::Channel(tx)) => match tx.try_send(receipt) {
                    Ok(()) => return,
                    Err(TrySendError::Full(_)) => return self.keep_receipt(app, receipt),
                    Err(TrySendError::Disconnected(_)) => {
                        if self.receipts.remove(app, &ReceiptSink::Channel(tx)) {
                            self.receipt_interest(app, false);
                        }
                    }
                },
            }
        }
    }

    /// Stores a receipt at the hub until a sink takes it.
    pub(super) fn keep_receipt(&mut self, app: u16, receipt: Receipt) {
        let cap = self.shared.cfg.limits.receipts_per_app;
        let shared = self.shared.clone();
        if let Err(e) = self.store.save_receipt(shared.apps.id(app), receipt, cap) {
            warn!("shard {}: keeping a receipt: {e}", self.index());
        }
        self.receipts.kept.insert(app);
        self.commit.mark_dirty();
    }

    /// At a provider's shard: write receipts; what cannot be written goes back to the hub.
    pub(super) fn on_deliver_receipts(&mut self, to: ConnRef, app: u16, receipts: Vec<Receipt>) {
        let live = matches!(self.conns.get(to.idx as usize),
            Some(Conn::Provider(p)) if p.core.id == to.id && matches!(p.state, ProviderState::Ready { .. }));
        let mut rest = receipts.into_iter();
        if live {
            for r in rest.by_ref() {
                let frame = Frame::Receipt { token: r.token, msg_id: r.msg_id, acked_at_ms: r.acked_at_ms };
                if self.try_send_frame(to.idx, &frame) != Sent::Yes {
                    self.bounce_receipt(app, r);
                    break;
                }
            }
        }
        for r in rest {
            self.bounce_receipt(app, r);
        }
    }

    /// A receipt a session could not take: into the hub's store, which hands
    /// it out again with the next pump (not at once: the session that could
    /// not take it may be the only one, and it would bounce straight back).
    fn bounce_receipt(&mut self, app: u16, receipt: Receipt) {
        let hub = self.router.hub(app);
        if hub == self.index() {
            self.keep_receipt(app, receipt);
        } else {
            self.router.send(hub, ShardMsg::KeepReceipt { app, receipt });
        }
    }

    /// The session asked for its app's receipts: register it at the app's hub.
    pub(super) fn subscribe_receipts(&mut self, idx: u32) {
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else { return };
        let ProviderState::Ready { app } = p.state else { return };
        if p.core.flags.contains(Flags::RECEIPTS) {
            return;
        }
        p.core.flags |= Flags::RECEIPTS;
        let sink = ReceiptSink::Conn(ConnRef { shard: self.router.index() as u16, idx, id: p.core.id });
        let hub = self.router.hub(app);
        self.router.send(hub, ShardMsg::SinkUp { app, sink });
    }

    pub(super) fn on_sink_up(&mut self, app: u16, sink: ReceiptSink) {
        if self.receipts.add(app, sink) {
            self.receipt_interest(app, true);
        }
        self.pump_app_receipts(app);
    }

    pub(super) fn on_sink_down(&mut self, app: u16, sink: ReceiptSink) {
        if self.receipts.remove(app, &sink) {
            self.receipt_interest(app, false);
        }
    }

    /// Once a second at the hub: stored receipts go to connected sinks, in
    /// batches; in cluster mode, receipts kept for apps with no sink here
    /// are offered to the other nodes.
    pub(super) fn pump_receipts(&mut self) {
        for app in self.receipts.apps() {
            self.pump_app_receipts(app);
        }
        if self.cluster.is_some() {
            let kept: Vec<u16> =
                self.receipts.kept.iter().copied().filter(|a| !self.receipts.has(*a)).collect();
            for app in kept {
                self.offer_kept_receipts(app);
            }
        }
    }

    /// Cluster: a node takes `app`'s receipts now; hand it a batch of the kept ones.
    pub(super) fn send_kept_receipts(&mut self, app: u16) {
        if self.receipts.has(app) {
            return self.pump_app_receipts(app);
        }
        if let Some(batch) = self.take_kept_receipts(app) {
            self.send_receipts_away(app, batch);
        }
    }

    /// Takes up to a batch of `app`'s kept receipts from the store; None if none are left.
    fn take_kept_receipts(&mut self, app: u16) -> Option<Vec<Receipt>> {
        let shared = self.shared.clone();
        let mut batch = Vec::new();
        if let Err(e) = self.store.take_receipts(shared.apps.id(app), RECEIPT_BATCH, &mut batch) {
            warn!("shard {}: reading receipts: {e}", self.index());
            return None;
        }
        if batch.is_empty() {
            self.receipts.kept.remove(&app);
            return None;
        }
        self.commit.mark_dirty();
        Some(batch)
    }

    fn pump_app_receipts(&mut self, app: u16) {
        if !self.receipts.has(app) {
            return;
        }
        let Some(batch) = self.take_kept_receipts(app) else { return };
        match self.receipts.next(app) {
            Some(ReceiptSink::Conn(to)) => self
                .router
                .send(usize::from(to.shard), ShardMsg::DeliverReceipts { to, app, receipts: batch }),
            _ => {
                for r in batch {
                    self.on_receipt(app, r, true);
                }
            }
        }
    }
}
