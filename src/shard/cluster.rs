//! The shard's side of cluster mode: route claims for the devices it holds
//! (claimed on HELLO, released on close, given up when another node's claim
//! replaces them), route lookups for pushes whose device is not here, the
//! per-node batches of pushes it forwards, and pushes other nodes forwarded
//! here. The engine never runs shard code: its completions come back as
//! `ShardMsg`s through the shard's channel.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use log::{debug, warn};

use super::conn::{Conn, Flags};
use super::msg::{ConnRef, PushMsg, ResultMsg, ShardMsg, Via};
use super::requests::{Answer, Outcome, ReplyTo};
use super::{Shard, Shared};
use crate::cluster::engine::EngineHandle;
use crate::cluster::forward::ForwardFailed;
use crate::cluster::receipts::ReceiptHandler;
use crate::cluster::routes::{Claimed, Route};
use crate::cluster::wire::Forwarded;
use crate::cluster::EngineError;
use crate::proto::{DeviceState, GoAwayReason, Note, Status, Token, TokenHasher};
use crate::store::Receipt;

/// Low bits of every message id that name the node which made it, so ids
/// made by different nodes for one device never collide.
pub const SLOT_BITS: u32 = 6;
/// Nodes a cluster can have (one id slot each).
pub const MAX_SLOTS: u8 = 1 << SLOT_BITS;
/// Between nodes only (never sent to a client): the device of a forwarded
/// push is not on the node it was sent to; the sender routes it again.
pub const NOT_HERE: Status = Status(0xfe);
/// Routes a shard remembers; past it the cache starts over.
const ROUTE_CACHE_MAX: usize = 65_536;
/// Route claims a shard has in flight at once; more HELLOs wait their turn
/// here (not in the engine, where waiting counts against the deadline), so a
/// reconnect storm cannot push every claim past its deadline at once.
const CLAIMS_IN_FLIGHT: usize = 64;

/// How a node's shards reach the cluster: the engine, and the node's id slot.
#[derive(Clone)]
pub struct ClusterLink {
    pub engine: EngineHandle,
    /// `0..MAX_SLOTS`, claimed in the route bucket at start.
    pub slot: u8,
}

impl ClusterLink {
    /// The next message id after `last` that carries this node's slot.
    pub fn next_id(&self, last: u64) -> u64 {
        next_id(self.slot, last)
    }
}

/// The next message id after `last` whose low bits are `slot`.
fn next_id(slot: u8, last: u64) -> u64 {
    ((last >> SLOT_BITS) + 1) << SLOT_BITS | u64::from(slot)
}

/// This shard's claim of a token for one of its connections.
#[derive(Clone, Copy, Debug)]
struct Claim {
    conn_id: u32,
    /// The revision once the claim is in the table; None while in flight.
    revision: Option<u64>,
    /// The newest revision another node told us replaced our claim while it
    /// was in flight (the notice can overtake our own claim's answer).
    superseded: u64,
}

type TokenMap<V> = HashMap<Token, V, BuildHasherDefault<TokenHasher>>;

/// A shard's cluster state.
pub(super) struct ClusterState {
    pub(super) link: ClusterLink,
    claims: TokenMap<Claim>,
    /// Pushes waiting for their token's route lookup, in arrival order (a
    /// token's pushes keep their order behind the lookup).
    lookups: TokenMap<Vec<PushMsg>>,
    /// Pushes to forward at the end of the iteration, per node.
    outbound: HashMap<String, Vec<Forwarded>>,
    /// Claims submitted to the engine and not answered yet.
    claims_in_flight: usize,
    /// Devices waiting to submit their claim, in HELLO order.
    claim_queue: std::collections::VecDeque<(Token, ConnRef)>,
    /// Which node held a token's device when last looked up. A stale entry
    /// costs one `NOT_HERE` round trip, after which the push is looked up afresh.
    cache: TokenMap<Arc<str>>,
    /// Where receipts other nodes send here go: their app's hub shard.
    receipts_in: ReceiptHandler,
}

impl ClusterState {
    pub(super) fn new(link: ClusterLink, shared: &Arc<Shared>) -> ClusterState {
        let s = shared.clone();
        let receipts_in: ReceiptHandler = Arc::new(move |app_id, list| {
            let Some(app) = s.apps.index_of(app_id) else { return };
            let hub = super::router::hub_of(app, s.handles.len());
            let batch =
                list.into_iter().map(|receipt| ShardMsg::Receipt { app, receipt, remote: true }).collect();
            s.handles[hub].send(batch);
        });
        ClusterState {
            receipts_in,
            link,
            claims: TokenMap::default(),
            lookups: TokenMap::default(),
            outbound: HashMap::new(),
            cache: TokenMap::default(),
            claims_in_flight: 0,
            claim_queue: std::collections::VecDeque::new(),
        }
    }
}

/// Sends each message to its shard, one batch per shard.
fn send_per_shard(shared: &Shared, msgs: impl IntoIterator<Item = (usize, ShardMsg)>) {
    let mut per: Vec<Vec<ShardMsg>> = (0..shared.handles.len()).map(|_| Vec::new()).collect();
    for (to, m) in msgs {
        if let Some(v) = per.get_mut(to) {
            v.push(m);
        }
    }
    for (i, batch) in per.into_iter().enumerate() {
        if !batch.is_empty() {
            shared.handles[i].send(batch);
        }
    }
}

/// Sends each result to the shard of its request.
fn send_results(shared: &Shared, results: impl IntoIterator<Item = ResultMsg>) {
    send_per_shard(shared, results.into_iter().map(|r| (usize::from(r.req.shard), ShardMsg::Result(r))));
}

impl Shard {
    /// The next message id this shard hands out. On a cluster node it also
    /// follows the clock (`unix_ms << 16`, as ids start on one node), so ids
    /// that different nodes make for one device grow in acceptance order
    /// (to within a millisecond and the nodes' clock skew).
    pub(super) fn fresh_msg_id(&mut self) -> u64 {
        self.next_msg_id = match &self.cluster {
            Some(c) => {
                let clock = c.link.next_id((self.clock.unix_ms << 16).saturating_sub(1 << SLOT_BITS));
                c.link.next_id(self.next_msg_id).max(clock)
            }
            None => self.next_msg_id + 1,
        };
        self.next_msg_id
    }

    /// Claims `token` for connection `idx` (cluster mode; WELCOME waits for it).
    /// Returns false on a single node.
    pub(super) fn start_claim(&mut self, idx: u32, token: Token) -> bool {
        let Some(c) = &mut self.cluster else { return false };
        let Some(conn) = self.conns.get(idx as usize) else { return false };
        let conn = ConnRef { shard: self.router.index() as u16, idx, id: conn.id() };
        c.claims.insert(token, Claim { conn_id: conn.id, revision: None, superseded: 0 });
        if c.claims_in_flight >= CLAIMS_IN_FLIGHT {
            c.claim_queue.push_back((token, conn));
            return true;
        }
        self.submit_claim(token, conn);
        true
    }

    fn submit_claim(&mut self, token: Token, conn: ConnRef) {
        let Some(c) = &mut self.cluster else { return };
        c.claims_in_flight += 1;
        let shared = self.shared.clone();
        let me = self.router.index();
        c.link.engine.claim(
            token,
            Box::new(move |result| shared.handles[me].send(vec![ShardMsg::Claimed { token, conn, result }])),
        );
    }

    /// A claim came back: submit the waiting ones whose device is still here.
    fn next_claims(&mut self) {
        loop {
            let Some(c) = &mut self.cluster else { return };
            if c.claims_in_flight >= CLAIMS_IN_FLIGHT {
                return;
            }
            let Some((token, conn)) = c.claim_queue.pop_front() else { return };
            let waiting =
                c.claims.get(&token).is_some_and(|cl| cl.conn_id == conn.id && cl.revision.is_none())
                    && self.devices.get(&token) == Some(&conn.idx)
                    && self.conns.get(conn.idx as usize).is_some_and(|x| x.id() == conn.id);
            if waiting {
                self.submit_claim(token, conn);
            }
        }
    }

    /// The engine's answer to a claim.
    pub(super) fn on_claimed(&mut self, token: Token, conn: ConnRef, result: Result<Claimed, EngineError>) {
        if let Some(c) = &mut self.cluster {
            assert!(c.claims_in_flight > 0, "a claim answered that was never submitted");
            c.claims_in_flight -= 1;
        }
        self.settle_claim(token, conn, result);
        self.next_claims();
    }

    fn settle_claim(&mut self, token: Token, conn: ConnRef, result: Result<Claimed, EngineError>) {
        let Some(c) = &mut self.cluster else { return };
        let current = self.devices.get(&token) == Some(&conn.idx)
            && self.conns.get(conn.idx as usize).is_some_and(|x| x.id() == conn.id);
        let ours = c.claims.get(&token).is_some_and(|cl| cl.conn_id == conn.id);
        match result {
            Ok(Claimed::Won { revision, previous }) => {
                let node = c.link.engine.node_id().to_string();
                if let Some(prev) = previous.filter(|p| *p != node) {
                    debug!("shard {}: token claimed from node {prev}", self.router.index());
                    c.link.engine.tell_replaced(&prev, token, revision, Box::new(|_| {}));
                }
                let superseded = c.claims.get(&token).map_or(0, |cl| cl.superseded);
                if current && ours && superseded > revision {
                    // Another node's newer claim was announced before our answer came.
                    c.claims.remove(&token);
                    self.unbind_replaced(conn.idx);
                } else if current && ours {
                    c.claims
                        .insert(token, Claim { conn_id: conn.id, revision: Some(revision), superseded: 0 });
                    self.claim_settled(conn.idx);
                } else if ours || !c.claims.contains_key(&token) {
                    // The connection left while its claim was in flight.
                    c.claims.remove(&token);
                    c.link.engine.release(token, revision, Box::new(|_| {}));
                }
                // Otherwise a newer local connection's claim replaces this one.
            }
            Ok(Claimed::Lost { holder }) => {
                if !(current && ours) {
                    return;
                }
                if holder.as_ref().is_none_or(|h| h.node == c.link.engine.node_id()) {
                    // Raced a claim of this node's own (an earlier connection), or a release (the
                    // node the device left let the route go between our read and our write): no
                    // other node holds it, so claim again. Only another node's claim replaces.
                    self.start_claim(conn.idx, token);
                    return;
                }
                c.claims.remove(&token);
                self.unbind_replaced(conn.idx);
            }
            Err(e) => {
                if !(current && ours) {
                    return;
                }
                warn!(
                    "shard {}: route claim failed ({e}); the device is sent elsewhere",
                    self.router.index()
                );
                c.claims.remove(&token);
                // The engine is unreachable: another node may serve it. The
                // hint is the first step of the reconnect backoff.
                self.goaway(conn.idx, GoAwayReason::SHUTDOWN, 1000);
            }
        }
    }

    /// Another node's claim replaced ours: close the session it belonged to.
    pub(super) fn on_replaced(&mut self, token: Token, revision: u64) {
        let Some(c) = &mut self.cluster else { return };
        let Some(claim) = c.claims.get_mut(&token) else { return };
        let Some(ours) = claim.revision else {
            // Our claim's answer is still on its way: it decides when it comes.
            claim.superseded = claim.superseded.max(revision);
            return;
        };
        if ours >= revision {
            return;
        }
        let claim = *claim;
        c.claims.remove(&token);
        if let Some(&idx) = self.devices.get(&token) {
            if self.conns.get(idx as usize).is_some_and(|x| x.id() == claim.conn_id) {
                self.unbind_replaced(idx);
            }
        }
    }

    /// Takes a bound device out of the token map and tells it `replaced`.
    fn unbind_replaced(&mut self, idx: u32) {
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            if d.state == DeviceState::Ready {
                d.state = DeviceState::Closed;
                let token = d.token;
                self.forget_topics(idx);
                if self.devices.get(&token) == Some(&idx) {
                    self.devices.remove(&token);
                    self.store.unload(&token);
                }
                self.metrics.on_unready(crate::metrics::Role::Device);
            }
        }
        self.goaway(idx, GoAwayReason::REPLACED, 0);
    }

    /// A bound device's connection is going (close, replaced here, unregistered):
    /// its claim is released by revision, so a newer claim elsewhere stays.
    pub(super) fn on_device_unbound(&mut self, token: Token, conn_id: u32) {
        self.store.unload(&token);
        let Some(c) = &mut self.cluster else { return };
        if c.claims.get(&token).is_none_or(|cl| cl.conn_id != conn_id) {
            return;
        }
        if let Some(Claim { revision: Some(r), .. }) = c.claims.remove(&token) {
            c.link.engine.release(token, r, Box::new(|_| {}));
        }
    }

    fn claim_settled(&mut self, idx: u32) {
        if let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) {
            d.core.flags.remove(Flags::CLAIMING);
        }
        self.maybe_welcome(idx);
    }

    /// The store loaded `token`'s backlog.
    pub(super) fn on_loaded(&mut self, token: Token) {
        // Ids made here must follow what other nodes stored for this device.
        let stored = self.store.max_msg_id();
        if stored > self.next_msg_id {
            self.next_msg_id = stored;
        }
        let Some(&idx) = self.devices.get(&token) else { return };
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else { return };
        if d.core.flags.contains(Flags::LOADING) {
            d.core.flags.remove(Flags::LOADING);
            self.maybe_welcome(idx);
        } else {
            // A later fetch (another node's append that raced the claim) may
            // have found more, with ids below what was written already.
            d.core.flags |= Flags::RESCAN;
            let _ = self.deliver(idx);
        }
    }

    /// Decides where a push goes on a cluster node: here (returned, to be
    /// handled now), or to the device's node (forwarded at the end of the
    /// iteration, after a lookup if the route is not cached). A token's
    /// pushes queue behind its lookup, so they keep their order.
    pub(super) fn route_push(&mut self, m: PushMsg) -> Option<PushMsg> {
        let Some(c) = &mut self.cluster else { return Some(m) };
        let token = m.token;
        match m.via {
            Via::Here => {
                c.cache.remove(&token);
                return Some(m);
            }
            Via::Forwarded if self.devices.contains_key(&token) => return Some(m),
            Via::Forwarded => {
                // Not here (any more): the sender looks again.
                let r = ResultMsg { req: m.req, index: m.index, outcome: Outcome::status(NOT_HERE) };
                self.route_result(r);
                return None;
            }
            Via::Route | Via::Fresh => {}
        }
        if let Some(waiting) = c.lookups.get_mut(&token) {
            waiting.push(m);
            return None;
        }
        if self.devices.contains_key(&token) {
            return Some(m);
        }
        if m.via == Via::Route {
            if let Some(node) = c.cache.get(&token) {
                let node = node.to_string();
                let app = self.shared.apps.id(m.app).to_string();
                c.outbound.entry(node).or_default().push(Forwarded { app, msg: m });
                return None;
            }
        }
        c.lookups.insert(token, vec![m]);
        let shared = self.shared.clone();
        let me = self.router.index();
        c.link.engine.lookup(
            token,
            Box::new(move |route| shared.handles[me].send(vec![ShardMsg::Routed { token, route }])),
        );
        None
    }

    /// A lookup finished: forward its pushes, or handle them here.
    pub(super) fn on_routed(&mut self, token: Token, route: Result<Option<Route>, EngineError>) {
        let Some(c) = &mut self.cluster else { return };
        let Some(pushes) = c.lookups.remove(&token) else { return };
        let node = c.link.engine.node_id().to_string();
        match route {
            Ok(Some(Route { node: holder, .. })) if holder != node && !self.devices.contains_key(&token) => {
                if c.cache.len() >= ROUTE_CACHE_MAX {
                    c.cache.clear();
                }
                c.cache.insert(token, holder.as_str().into());
                let out = c.outbound.entry(holder).or_default();
                for m in pushes {
                    out.push(Forwarded { app: self.shared.apps.id(m.app).to_string(), msg: m });
                }
            }
            Ok(_) => {
                // Nobody holds it (or this node does, from before a restart, or
                // the device connected here meanwhile): deliver or store here.
                for mut m in pushes {
                    m.via = Via::Here;
                    self.on_push(m);
                }
            }
            Err(e) => {
                debug!("shard {}: route lookup failed: {e}", self.router.index());
                for m in pushes {
                    let r = ResultMsg { req: m.req, index: m.index, outcome: unavailable() };
                    self.route_result(r);
                }
            }
        }
    }

    /// Hands the iteration's forwards to the engine, one request per node
    /// and `cluster.max_batch` pushes.
    pub(super) fn flush_forwards(&mut self) {
        let Some(c) = &mut self.cluster else { return };
        if c.outbound.is_empty() {
            return;
        }
        let max = self.shared.cfg.cluster.as_ref().map_or(256, |k| k.max_batch).max(1);
        for (node, mut pushes) in c.outbound.drain() {
            while !pushes.is_empty() {
                let rest = if pushes.len() > max { pushes.split_off(max) } else { Vec::new() };
                let batch = std::mem::replace(&mut pushes, rest);
                // Kept to route again what the node answers NOT_HERE (a note's
                // payload is shared, not copied).
                let kept: Vec<PushMsg> = batch.iter().map(|f| f.msg.clone()).collect();
                let shared = self.shared.clone();
                c.link.engine.forward(&node, batch, Box::new(move |r| forwarded(&shared, kept, r)));
            }
        }
    }

    /// A push another node forwarded here.
    pub(super) fn on_forwarded(
        &mut self,
        app: u16,
        token: Token,
        note: Note,
        done: Box<dyn FnOnce(Outcome) + Send>,
    ) {
        if let Some(refused) = self.refusal(&note) {
            return done(refused);
        }
        if !self.shared.key.verify(self.shared.apps.id(app), &token) {
            return done(Outcome::status(Status::BAD_TOKEN));
        }
        let reply = ReplyTo::Callback(Box::new(move |a| {
            if let Answer::Push(v) = a {
                if let Some(o) = v.first() {
                    done(*o);
                }
            }
        }));
        let req = self.requests.open_push(reply, 1);
        let m =
            PushMsg { req, index: 0, token, app, via: Via::Forwarded, note, read_at_ns: self.clock.now_ns() };
        let owner = self.router.owner(&token);
        self.router.send(owner, ShardMsg::Push(m));
    }
}

impl Shard {
    /// At an app's hub: this node starts or stops taking the app's receipts
    /// from other nodes (its first local subscriber came, or its last went).
    pub(super) fn receipt_interest(&mut self, app: u16, on: bool) {
        let Some(c) = &self.cluster else { return };
        c.link.engine.receipt_interest(self.shared.apps.id(app), on, c.receipts_in.clone());
    }

    /// At an app's hub with no subscriber here: the receipts go to a node
    /// with one; if none listens (or the engine fails) they are kept here.
    pub(super) fn send_receipts_away(&mut self, app: u16, receipts: Vec<Receipt>) {
        let Some(c) = &self.cluster else {
            for r in receipts {
                self.keep_receipt(app, r);
            }
            return;
        };
        let (shared, me) = (self.shared.clone(), self.router.index());
        let back = receipts.clone();
        c.link.engine.send_receipts(
            self.shared.apps.id(app),
            receipts,
            Box::new(move |r| {
                if r.is_err() {
                    let keep =
                        back.into_iter().map(|receipt| ShardMsg::KeepReceipt { app, receipt }).collect();
                    shared.handles[me].send(keep);
                }
            }),
        );
    }

    /// Asks whether any node takes `app`'s receipts; if one does, the kept ones follow.
    pub(super) fn offer_kept_receipts(&mut self, app: u16) {
        let Some(c) = &self.cluster else { return };
        let (shared, me) = (self.shared.clone(), self.router.index());
        c.link.engine.send_receipts(
            self.shared.apps.id(app),
            Vec::new(),
            Box::new(move |r| {
                if r.is_ok() {
                    shared.handles[me].send(vec![ShardMsg::ReceiptsWanted { app }]);
                }
            }),
        );
    }
}

/// What became of a forward, on the engine thread: results to their
/// request's shards; pushes the node no longer holds the device for back to
/// their owner shard to be looked up again (once, then stored there); the
/// pushes of a failed forward back to their owner shard to be stored there.
fn forwarded(shared: &Arc<Shared>, kept: Vec<PushMsg>, r: Result<Vec<ResultMsg>, ForwardFailed>) {
    use std::sync::atomic::Ordering::Relaxed;
    let metrics = shared.cluster.as_ref().map(|c| c.engine.metrics().clone()).unwrap_or_default();
    let n = shared.handles.len();
    let mut back: Vec<(usize, ShardMsg)> = Vec::new();
    let mut again = |mut m: PushMsg, via: Via| {
        m.via = via;
        back.push((m.token.shard(n), ShardMsg::Push(m)));
    };
    match r {
        Ok(results) => {
            let mut done = Vec::with_capacity(results.len());
            for (r, m) in results.into_iter().zip(kept) {
                if r.outcome.status == NOT_HERE {
                    metrics.failover_rerouted.fetch_add(1, Relaxed);
                    let via = if m.via == Via::Fresh { Via::Here } else { Via::Fresh };
                    again(m, via);
                } else {
                    done.push(r);
                }
            }
            send_results(shared, done);
        }
        Err(ForwardFailed { error, pushes }) => {
            // The node is gone (nothing was taken), or went silent past the
            // deadline (it may have delivered some): either way the pushes
            // are stored here, so none is lost and none is refused that may
            // still arrive. A silent node's delivery plus this copy can show
            // the device one notification twice, under two ids (protocol.md 10.3).
            debug!("forward failed ({error}): storing {} pushes here", pushes.len());
            metrics.failover_stored.fetch_add(pushes.len() as u64, Relaxed);
            for p in pushes {
                again(p.msg, Via::Here);
            }
        }
    }
    send_per_shard(shared, back);
}

/// `unavailable`, with the first step of the reconnect backoff as the hint.
fn unavailable() -> Outcome {
    Outcome { status: Status::UNAVAILABLE, msg_id: 0, info: 1000 }
}

#[cfg(test)]
mod tests {
    use super::next_id;

    #[test]
    fn ids_of_two_nodes_never_collide_and_keep_growing() {
        let (mut a, mut b) = (1_000u64 << 16, 1_000u64 << 16);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (na, nb) = (next_id(3, a), next_id(4, b));
            assert!(na > a && nb > b);
            assert_eq!(na & 63, 3);
            assert_eq!(nb & 63, 4);
            assert!(seen.insert(na) && seen.insert(nb), "a collision");
            (a, b) = (na, nb);
        }
    }
}
