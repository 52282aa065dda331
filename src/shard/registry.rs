//! What a shard knows beyond live connections: tombstones of unregistered
//! devices (and the FEEDBACK query over them), and delivery receipts, which
//! meet their app's provider sessions at the app's hub shard.

use log::warn;

use super::conn::{Conn, FeedbackAgg, F_READY};
use super::msg::{ConnRef, ShardMsg};
use super::{Sent, Shard};
use crate::proto::frame::{FEEDBACK_ENTRY, MAX_FEEDBACK};
use crate::proto::{Frame, Token};
use crate::store::Receipt;

/// Provider flags bit: the session sent SUBSCRIBE_RECEIPTS.
const F_RECEIPTS: u8 = 128;

/// Receipts handed from the store to provider sessions per hub tick.
const RECEIPT_BATCH: usize = 500;

impl Shard {
    /// Reads this shard's tombstones from the store into memory, so a push to
    /// an unregistered token is answered without a store read.
    pub(super) fn load_tombstones(&mut self) {
        let n = self.shared.handles.len();
        match self.store.tombstones() {
            Ok(list) => {
                for t in list {
                    let Some(app) = self.shared.apps.index_of(&t.app_id) else {
                        continue;
                    };
                    if t.token.shard(n) == self.index {
                        self.tombstones.insert(t.token, (app, t.at_ms));
                    }
                }
            }
            Err(e) => warn!("shard {}: reading tombstones: {e}", self.index),
        }
    }

    /// The shard where `app`'s receipts meet its provider sessions.
    pub(super) fn hub_of(&self, app: u16) -> usize {
        app as usize % self.shared.handles.len()
    }

    /// A device asked to be forgotten: tombstone it durably, drop what waits for
    /// it, and confirm with GOAWAY unregistered once the store has synced.
    pub(super) fn on_unregister(&mut self, idx: u32) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let (token, app, id) = (d.token, d.app, d.id);
        d.flags |= super::conn::F_PAUSED;
        let at_ms = self.unix_ms;
        let shared = self.shared.clone();
        let app_id = shared.apps.id(app);
        if let Err(e) = self.store.unregister(&token, app_id, at_ms) {
            warn!("shard {}: unregister: {e}", self.index);
            self.fail(idx, crate::proto::ProtoError::Internal);
            return;
        }
        self.store_dirty = true;
        self.tombstones.insert(token, (app, at_ms));
        self.unbind(idx);
        let reason = crate::proto::GoAwayReason::UNREGISTERED;
        self.after_sync.push((super::timer::Entry { idx, id }, reason));
    }

    /// A device registered again: lift its tombstone.
    pub(super) fn lift_tombstone(&mut self, token: &Token) {
        if self.tombstones.remove(token).is_some() {
            if let Err(e) = self.store.reregister(token) {
                warn!("shard {}: lifting a tombstone: {e}", self.index);
            }
            self.store_dirty = true;
        }
    }

    /// The unregistration time of `token`, if it is tombstoned.
    pub(super) fn unregistered_at(&self, token: &Token) -> Option<u64> {
        self.tombstones.get(token).map(|&(_, at)| at)
    }

    /// A provider asked for its app's unregistered tokens: ask every shard.
    pub(super) fn start_feedback(&mut self, idx: u32, req_id: u32, since_ms: u64, after: Token) {
        let n = self.shared.handles.len();
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let crate::proto::ProviderState::Ready { app } = p.state else {
            return;
        };
        let slot = p.feedback.insert(FeedbackAgg { req_id, remaining: n as u16, entries: Vec::new() }) as u32;
        p.inflight += n as u32;
        let reply = ConnRef { shard: self.index as u16, idx, id: p.id };
        for to in 0..n {
            self.route(to, ShardMsg::FeedbackQuery { reply, slot, app, since_ms, after });
        }
    }

    /// Tombstones of `app` after `cursor` in (time, token) order; an all-zero
    /// token in the cursor means "from this time on, inclusive".
    pub(super) fn on_feedback_query(&mut self, reply: ConnRef, slot: u32, app: u16, cursor: (u64, Token)) {
        let inclusive = cursor.1 == Token([0; crate::proto::TOKEN_LEN]);
        let mut entries: Vec<(u64, Token)> = self
            .tombstones
            .iter()
            .filter(|(_, &(a, _))| a == app)
            .map(|(t, &(_, at))| (at, *t))
            .filter(|e| if inclusive { e.0 >= cursor.0 } else { *e > cursor })
            .collect();
        entries.sort_unstable();
        entries.truncate(MAX_FEEDBACK + 1);
        self.route(reply.shard as usize, ShardMsg::FeedbackPart { to: reply, slot, entries });
    }

    pub(super) fn on_feedback_part(&mut self, to: ConnRef, slot: u32, mut entries: Vec<(u64, Token)>) {
        let Some(Conn::Provider(p)) = self.conns.get_mut(to.idx as usize) else {
            return;
        };
        if p.id != to.id {
            return;
        }
        p.inflight = p.inflight.saturating_sub(1);
        let Some(agg) = p.feedback.get_mut(slot as usize) else {
            return;
        };
        agg.entries.append(&mut entries);
        agg.remaining = agg.remaining.saturating_sub(1);
        if agg.remaining > 0 {
            return;
        }
        let mut agg = p.feedback.remove(slot as usize);
        agg.entries.sort_unstable();
        let more = agg.entries.len() > MAX_FEEDBACK;
        agg.entries.truncate(MAX_FEEDBACK);
        let mut body = Vec::with_capacity(agg.entries.len() * FEEDBACK_ENTRY);
        for (at, token) in &agg.entries {
            body.extend_from_slice(&token.0);
            body.extend_from_slice(&at.to_be_bytes());
        }
        self.send_frame(to.idx, &Frame::FeedbackResult { req_id: agg.req_id, more, entries: &body });
        self.maybe_resume(to.idx);
    }

    /// A device acknowledged a notification whose provider asked for a receipt.
    pub(super) fn emit_receipt(&mut self, app: u16, token: Token, msg_id: u64) {
        let receipt = Receipt { token, msg_id, acked_at_ms: self.unix_ms };
        let hub = self.hub_of(app);
        self.route(hub, ShardMsg::Receipt { app, receipt });
    }

    /// At the hub: hand the receipt to a provider session of the app, or keep it.
    pub(super) fn on_receipt(&mut self, app: u16, receipt: Receipt) {
        let sinks = self.receipt_sinks.get(&app).map_or(0, Vec::len);
        if sinks == 0 {
            let cap = self.shared.cfg.limits.receipts_per_app;
            let shared = self.shared.clone();
            let app_id = shared.apps.id(app);
            if let Err(e) = self.store.save_receipt(app_id, receipt, cap) {
                warn!("shard {}: keeping a receipt: {e}", self.index);
            }
            self.store_dirty = true;
            return;
        }
        self.receipt_rr = self.receipt_rr.wrapping_add(1);
        let to = self.receipt_sinks[&app][self.receipt_rr % sinks];
        self.route(to.shard as usize, ShardMsg::DeliverReceipts { to, app, receipts: vec![receipt] });
    }

    /// At a provider's shard: write receipts; what cannot be written goes back to the hub.
    pub(super) fn on_deliver_receipts(&mut self, to: ConnRef, app: u16, receipts: Vec<Receipt>) {
        let live = matches!(self.conns.get(to.idx as usize), Some(Conn::Provider(p)) if p.id == to.id && p.flags & F_READY != 0);
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

    fn bounce_receipt(&mut self, app: u16, receipt: Receipt) {
        let hub = self.hub_of(app);
        if hub == self.index && self.receipt_sinks.get(&app).is_none_or(Vec::is_empty) {
            self.on_receipt(app, receipt);
        } else {
            // Through the hub's store: the session that could not take it may be
            // the only one, and the hub learns of its departure by message.
            let cap = self.shared.cfg.limits.receipts_per_app;
            let shared = self.shared.clone();
            let app_id = shared.apps.id(app);
            if hub == self.index {
                if let Err(e) = self.store.save_receipt(app_id, receipt, cap) {
                    warn!("shard {}: keeping a receipt: {e}", self.index);
                }
                self.store_dirty = true;
            } else {
                self.route(hub, ShardMsg::Receipt { app, receipt });
            }
        }
    }

    /// The session asked for its app's receipts: register it at the app's hub.
    pub(super) fn subscribe_receipts(&mut self, idx: u32) {
        let Some(Conn::Provider(p)) = self.conns.get_mut(idx as usize) else { return };
        let crate::proto::ProviderState::Ready { app } = p.state else { return };
        if p.flags & F_RECEIPTS != 0 {
            return;
        }
        p.flags |= F_RECEIPTS;
        let conn = ConnRef { shard: self.index as u16, idx, id: p.id };
        let hub = self.hub_of(app);
        self.route(hub, ShardMsg::ProviderUp { app, conn });
    }

    /// Whether a provider connection subscribed to receipts, so its hub must hear of its end.
    pub(super) fn is_receipt_sink(&self, idx: u32) -> bool {
        matches!(self.conns.get(idx as usize), Some(Conn::Provider(p)) if p.flags & F_RECEIPTS != 0)
    }

    pub(super) fn on_provider_up(&mut self, app: u16, conn: ConnRef) {
        self.receipt_sinks.entry(app).or_default().push(conn);
        self.pump_app_receipts(app);
    }

    pub(super) fn on_provider_down(&mut self, app: u16, conn: ConnRef) {
        if let Some(v) = self.receipt_sinks.get_mut(&app) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.receipt_sinks.remove(&app);
            }
        }
    }

    /// Once a second at the hub: stored receipts go to connected sessions, in batches.
    pub(super) fn pump_receipts(&mut self) {
        let apps: Vec<u16> = self.receipt_sinks.keys().copied().collect();
        for app in apps {
            self.pump_app_receipts(app);
        }
    }

    fn pump_app_receipts(&mut self, app: u16) {
        let Some(sinks) = self.receipt_sinks.get(&app) else {
            return;
        };
        let Some(&to) = sinks.first() else { return };
        let shared = self.shared.clone();
        let app_id = shared.apps.id(app);
        let mut batch = Vec::new();
        if let Err(e) = self.store.take_receipts(app_id, RECEIPT_BATCH, &mut batch) {
            warn!("shard {}: reading receipts: {e}", self.index);
            return;
        }
        if !batch.is_empty() {
            self.store_dirty = true;
            self.route(to.shard as usize, ShardMsg::DeliverReceipts { to, app, receipts: batch });
        }
    }
}
