//! The `Store` interface: per-device queues of notifications waiting for an ACK.
//!
//! Each shard owns one `Store` handle and only ever touches the tokens it owns,
//! so a store needs no locking of its own on the delivery path. Message ids
//! grow with acceptance order within a shard, so id order is delivery order.

pub mod cluster;
pub mod durable;
pub mod memory;

use crate::proto::{Note, Token};

/// One notification waiting for its device; its expiry is never 0.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMsg {
    pub msg_id: u64,
    pub note: Note,
}

/// What [`Store::commit`] made of the writes so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ticket {
    /// Already durable (or a store that keeps nothing on disk).
    Durable,
    /// Durable once the store's completion hook reports this number or a higher one.
    Pending(u64),
}

/// How a store reports durability: `(upto, ok)`, every write numbered up to
/// `upto` is on disk (`ok`), or the sync that should have put it there failed.
/// Called from the store's sync thread; it must not block.
pub type DurableHook = Box<dyn Fn(u64, bool) + Send + Sync>;

/// How a store reports that a backlog asked for by [`Store::load`] is
/// readable now. Called from the store's engine thread; it must not block.
pub type LoadHook = Box<dyn Fn(Token) + Send + Sync>;

/// What [`Store::load`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Loaded {
    /// `pending` and `take_missed` already see everything stored for the token.
    Ready,
    /// The backlog is being fetched (cluster mode: from the engine); the load
    /// hook names the token when `pending` sees it.
    Pending,
}

/// A device's durable unregistration, kept until it registers again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Tombstone {
    pub token: Token,
    pub app_id: String,
    /// Unix milliseconds of the UNREGISTER.
    pub at_ms: u64,
}

/// A device's acknowledgement of a notification pushed with a receipt request,
/// waiting for a provider session of its app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Receipt {
    pub token: Token,
    pub msg_id: u64,
    pub acked_at_ms: u64,
}

/// A device's place in one topic (protocol.md §10.4): the topic's name
/// within the device's app and the id of the last topic message the device
/// is done with (ACKed, or skipped by the catch-up cap); later ones are owed.
/// For a subscription it is written at SUBSCRIBE; for the broadcast topic
/// (`~all`) at the device's first broadcast.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SubRecord {
    pub topic: Box<[u8]>,
    pub pos: u64,
}

/// One message of a topic's log, as stored once for all its subscribers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TopicEntry {
    pub app_id: String,
    pub topic: Box<[u8]>,
    pub msg: StoredMsg,
}

/// Why a store operation failed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoreError {
    /// No space left; the push is refused with `store_failed`.
    Full,
    /// An I/O error, with what was being done.
    Io(String),
    /// The data on disk cannot be read; the gateway refuses to start.
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full => f.write_str("store is full"),
            StoreError::Io(e) => write!(f, "store I/O error: {e}"),
            StoreError::Corrupt(e) => write!(f, "store is corrupt: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A shard's view of the notification store.
pub trait Store: Send {
    /// Puts `msg` at the tail of `token`'s queue. A waiting message with the
    /// same non-empty collapse id is removed first; past the per-device cap the
    /// oldest are dropped (counted as missed unless written, see
    /// `mark_sent`), and how many the cap dropped comes back. Durable once
    /// `sync` returns.
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<u32, StoreError>;

    /// Appends to `out`, in order, up to `max` unexpired messages of `token`
    /// whose id is greater than `after`.
    fn pending(
        &mut self,
        token: &Token,
        after: u64,
        now_unix: u64,
        max: usize,
        out: &mut Vec<StoredMsg>,
    ) -> Result<(), StoreError>;

    /// Removes an acknowledged message; `Ok(false)` if it was not stored.
    fn ack(&mut self, token: &Token, msg_id: u64) -> Result<bool, StoreError>;

    /// Notes that `token`'s messages with ids up to `msg_id` were written to
    /// a connection of its device: the cap then drops them without counting
    /// them as missed. Kept in memory only.
    fn mark_sent(&mut self, token: &Token, msg_id: u64);

    /// Returns, and resets to zero, how many of `token`'s messages the cap
    /// dropped before they were ever written to the device (see `mark_sent`).
    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError>;

    /// Deletes messages whose expiry is before `now_unix`, returning how many:
    /// all of them, or a bounded share so one call never stalls the shard (the
    /// durable store visits at most 1024 devices); the next call continues.
    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError>;

    /// Makes all appends and acks so far durable (one flush for the whole
    /// batch), except messages held back by `hold` that `release` has not
    /// reached yet. Blocks for the disk: the shard uses `commit` instead, and
    /// this at exit.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// Like `sync`, without waiting: what was written so far becomes readable
    /// and is handed to the store's sync thread, whose hook (see
    /// `set_durable_hook`) reports the returned ticket durable. A store with
    /// no hook set, or nothing on disk, syncs here and says `Durable`.
    fn commit(&mut self) -> Result<Ticket, StoreError> {
        self.sync().map(|()| Ticket::Durable)
    }

    /// Where this handle's completions go; a store that syncs in `commit` ignores it.
    fn set_durable_hook(&mut self, _hook: DurableHook) {}

    /// Asks the store to leave the message `msg_id` of `token`, appended since
    /// the last `sync`, out of the next syncs until `release` reaches its id:
    /// it was just written to the device's connection, and the device's ACK
    /// will probably delete it before it would reach the disk. Returns whether
    /// the store does so (a store that writes nothing to disk does not).
    fn hold(&mut self, _token: &Token, _msg_id: u64) -> bool {
        false
    }

    /// Lets `sync` commit the held messages with ids up to `msg_id`.
    fn release(&mut self, _msg_id: u64) {}

    /// A device of `token` is now connected to this shard: make its stored
    /// notifications readable. A local store has them already.
    fn load(&mut self, _token: &Token) -> Loaded {
        Loaded::Ready
    }

    /// The device of `token` left this shard: what was cached for it may go
    /// (nothing is deleted from the store).
    fn unload(&mut self, _token: &Token) {}

    /// Where this handle reports finished loads; a store that is always ready ignores it.
    fn set_load_hook(&mut self, _hook: LoadHook) {}

    /// The highest message id this shard ever stored (or loaded), so ids keep
    /// growing after a restart and after a backlog written by another node.
    fn max_msg_id(&self) -> u64;

    /// Number of messages stored for this shard's tokens.
    fn len(&self) -> usize;

    /// Records that `token` unregistered, and deletes its waiting notifications,
    /// missed count and subscriptions. Durable once `sync` returns.
    fn unregister(&mut self, token: &Token, app_id: &str, at_ms: u64) -> Result<(), StoreError>;

    /// Lifts `token`'s tombstone (the device registered again).
    fn reregister(&mut self, token: &Token) -> Result<(), StoreError>;

    /// Every tombstone this handle holds, read once at start into memory.
    fn tombstones(&mut self) -> Result<Vec<Tombstone>, StoreError>;

    /// Keeps a receipt for `app_id` until a provider session takes it; at most
    /// `cap` per app, the oldest dropped past it. Durable once `sync` returns.
    fn save_receipt(&mut self, app_id: &str, r: Receipt, cap: usize) -> Result<(), StoreError>;

    /// Removes and appends to `out` up to `max` of `app_id`'s receipts, oldest first.
    fn take_receipts(&mut self, app_id: &str, max: usize, out: &mut Vec<Receipt>) -> Result<(), StoreError>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `token`'s subscriptions and broadcast position to `out`, in
    /// no particular order; readable once `load` is ready, staged writes included.
    fn subscriptions(&mut self, _token: &Token, _out: &mut Vec<SubRecord>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records `token`'s position in `topic` (inserting the subscription if
    /// new). Durable once `sync` returns; one write per key per commit.
    fn put_subscription(&mut self, _token: &Token, _topic: &[u8], _pos: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Deletes `token`'s subscription to `topic`, if any. Durable once `sync` returns.
    fn remove_subscription(&mut self, _token: &Token, _topic: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Stores one topic message (its expiry is never 0). Durable once `sync` returns.
    fn topic_append(&mut self, _entry: &TopicEntry) -> Result<(), StoreError> {
        Ok(())
    }

    /// Deletes a stored topic message (expired, collapsed or past the log's cap).
    fn topic_remove(&mut self, _app_id: &str, _topic: &[u8], _msg_id: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every stored topic message, read once at start to rebuild the node's
    /// topic logs; in id order within each topic.
    fn topic_messages(&mut self, _out: &mut Vec<TopicEntry>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A message for unit tests: payload `m<id>`.
#[cfg(test)]
pub(crate) fn test_msg(id: u64, expiry: u32, collapse: &'static [u8]) -> StoredMsg {
    let note = Note {
        kind: 0,
        priority: 10,
        flags: 0,
        expiry,
        collapse: bytes::Bytes::from_static(collapse),
        payload: bytes::Bytes::from(format!("m{id}")),
    };
    StoredMsg { msg_id: id, note }
}
