//! Unregistered devices on their owner shard: the tombstones pushes are
//! answered `unregistered` from (in memory, loaded from the store at start),
//! UNREGISTER itself, and the FEEDBACK query over every shard's tombstones.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use log::warn;

use super::conn::{Conn, Flags};
use super::msg::ShardMsg;
use super::requests::{ReplyTo, ReqRef};
use super::router::Router;
use super::timer::Entry;
use super::Shard;
use crate::proto::frame::MAX_FEEDBACK;
use crate::proto::{Apps, GoAwayReason, Token, TokenHasher};
use crate::store::Store;

/// This shard's unregistered tokens: app index and unix ms of the UNREGISTER.
#[derive(Default)]
pub struct Tombstones(HashMap<Token, (u16, u64), BuildHasherDefault<TokenHasher>>);

impl Tombstones {
    /// Reads the tombstones of the tokens `router` says this shard owns.
    pub fn load(&mut self, store: &mut dyn Store, apps: &Apps, router: &Router) {
        match store.tombstones() {
            Ok(list) => {
                for t in list {
                    let Some(app) = apps.index_of(&t.app_id) else { continue };
                    if router.owns(&t.token) {
                        self.0.insert(t.token, (app, t.at_ms));
                    }
                }
            }
            Err(e) => warn!("shard {}: reading tombstones: {e}", router.index()),
        }
    }

    /// Another node recorded (`Some`) or lifted (`None`) `token`'s tombstone;
    /// the store has it already, only this copy changes.
    pub fn seen(&mut self, token: Token, app: u16, at_ms: Option<u64>) {
        match at_ms {
            Some(at) => {
                self.0.insert(token, (app, at));
            }
            None => {
                self.0.remove(&token);
            }
        }
    }

    /// The unregistration time of `token`, if it is tombstoned.
    pub fn unregistered_at(&self, token: &Token) -> Option<u64> {
        self.0.get(token).map(|&(_, at)| at)
    }

    /// A device registered again: lifts its tombstone; true if there was one.
    pub fn lift(&mut self, token: &Token, store: &mut dyn Store) -> bool {
        if self.0.remove(token).is_none() {
            return false;
        }
        if let Err(e) = store.reregister(token) {
            warn!("lifting a tombstone: {e}");
        }
        true
    }

    /// `app`'s tombstones after `cursor` in (time, token) order; an all-zero
    /// token in the cursor means "from this time on, inclusive". At most one
    /// page and one more, so the merge can tell whether more follow.
    pub fn page(&self, app: u16, cursor: (u64, Token)) -> Vec<(u64, Token)> {
        let inclusive = cursor.1 == Token([0; crate::proto::TOKEN_LEN]);
        let mut entries: Vec<(u64, Token)> = self
            .0
            .iter()
            .filter(|(_, &(a, _))| a == app)
            .map(|(t, &(_, at))| (at, *t))
            .filter(|e| if inclusive { e.0 >= cursor.0 } else { *e > cursor })
            .collect();
        entries.sort_unstable();
        entries.truncate(MAX_FEEDBACK + 1);
        entries
    }
}

impl Shard {
    /// A device asked to be forgotten: tombstone it durably, drop what waits for
    /// it, and confirm with GOAWAY unregistered once the store has synced.
    pub(super) fn on_unregister(&mut self, idx: u32) {
        let Some(Conn::Device(d)) = self.conns.get_mut(idx as usize) else {
            return;
        };
        let (token, app, id) = (d.token, d.app, d.core.id);
        d.core.flags |= Flags::PAUSED;
        let shared = self.shared.clone();
        if let Err(e) = self.store.unregister(&token, shared.apps.id(app), self.clock.unix_ms) {
            warn!("shard {}: unregister: {e}", self.index());
            self.fail(idx, crate::proto::ProtoError::Internal);
            return;
        }
        self.tombstones.0.insert(token, (app, self.clock.unix_ms));
        self.unbind(idx);
        self.commit.goaway_after_write(Entry { idx, id }, GoAwayReason::UNREGISTERED);
    }

    /// A FEEDBACK (from any front end): ask every shard for its part.
    pub(super) fn start_feedback(&mut self, app: u16, since_ms: u64, after: Token, reply: ReplyTo) {
        let n = self.router.shards();
        let req = self.requests.open_feedback(reply, n);
        for to in 0..n {
            self.router.send(to, ShardMsg::FeedbackQuery { req, app, since_ms, after });
        }
    }

    pub(super) fn on_feedback_query(&mut self, req: ReqRef, app: u16, cursor: (u64, Token)) {
        let entries = self.tombstones.page(app, cursor);
        self.router.send(usize::from(req.shard), ShardMsg::FeedbackPart { req, entries });
    }

    pub(super) fn on_feedback_part(&mut self, req: ReqRef, entries: Vec<(u64, Token)>) {
        if let Some((reply, answer)) = self.requests.add_part(req, entries) {
            self.answer(reply, answer);
        }
    }
}
