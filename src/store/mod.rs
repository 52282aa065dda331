//! The `Store` interface: per-device queues of notifications waiting for an ACK.
//!
//! Each shard owns one `Store` handle and only ever touches the tokens it owns,
//! so a store needs no locking of its own on the delivery path. Message ids
//! grow with acceptance order within a shard, so id order is delivery order.

pub mod durable;
pub mod memory;

use bytes::Bytes;

use crate::proto::Token;

/// One notification waiting for its device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMsg {
    pub msg_id: u64,
    pub kind: u8,
    pub priority: u8,
    pub flags: u8,
    /// Unix seconds after which it is dropped; never 0 for a stored message.
    pub expiry: u32,
    /// Empty when the push had no collapse id.
    pub collapse: Bytes,
    pub payload: Bytes,
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
    /// oldest are dropped and counted as missed. Durable once `sync` returns.
    fn append(&mut self, token: &Token, msg: StoredMsg) -> Result<(), StoreError>;

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

    /// Returns, and resets to zero, how many of `token`'s messages the cap dropped.
    fn take_missed(&mut self, token: &Token) -> Result<u32, StoreError>;

    /// Deletes messages whose expiry is before `now_unix`, returning how many:
    /// all of them, or a bounded share so one call never stalls the shard (the
    /// durable store visits at most 1024 devices); the next call continues.
    fn sweep_expired(&mut self, now_unix: u64) -> Result<usize, StoreError>;

    /// Makes all appends and acks so far durable (one flush for the whole
    /// batch), except messages held back by `hold` that `release` has not
    /// reached yet.
    fn sync(&mut self) -> Result<(), StoreError>;

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

    /// The highest message id this shard ever stored, so ids keep growing after a restart.
    fn max_msg_id(&self) -> u64;

    /// Number of messages stored for this shard's tokens.
    fn len(&self) -> usize;

    /// Records that `token` unregistered, and deletes its waiting notifications
    /// and missed count. Durable once `sync` returns.
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
}

/// A message for unit tests: payload `m<id>`.
#[cfg(test)]
pub(crate) fn test_msg(id: u64, expiry: u32, collapse: &'static [u8]) -> StoredMsg {
    StoredMsg {
        msg_id: id,
        kind: 0,
        priority: 10,
        flags: 0,
        expiry,
        collapse: Bytes::from_static(collapse),
        payload: Bytes::from(format!("m{id}")),
    }
}
