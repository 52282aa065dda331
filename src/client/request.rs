//! What a provider sends and gets back: the push request with its defaults,
//! and the gateway's results, feedback, receipts and topic answers as owned values.

use std::time::{SystemTime, UNIX_EPOCH};

use super::ClientError;
use crate::proto::frame::{FLAG_RECEIPT, MAX_COLLAPSE};
use bytes::Bytes;

use crate::proto::{Kind, Note, Notification, Status, SubStatus, Token, PRIORITY_HIGH};

/// Lifetime [`PushRequest::new`] gives a notification: a day, long enough to
/// reach a phone that was off overnight, short enough that stale alerts die.
pub const DEFAULT_TTL_S: u32 = 86_400;

/// One notification to push to one token (several for `push_many`); the
/// `with_*` methods set the notification's fields.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushRequest {
    pub token: Token,
    pub note: Note,
}

impl PushRequest {
    /// An alert at high priority that expires [`DEFAULT_TTL_S`] from now, no collapse id.
    pub fn new(token: Token, payload: impl Into<Vec<u8>>) -> PushRequest {
        PushRequest { token, note: new_note(payload) }
    }

    pub fn with_kind(mut self, kind: Kind) -> PushRequest {
        self.note.kind = kind.0;
        self
    }

    /// [`PRIORITY_HIGH`] (10) or `PRIORITY_NORMAL` (5).
    pub fn with_priority(mut self, priority: u8) -> PushRequest {
        self.note.priority = priority;
        self
    }

    /// Expires `ttl_s` seconds from now; 0 means now or never.
    pub fn with_ttl(mut self, ttl_s: u32) -> PushRequest {
        self.note.expiry = expiry_in(ttl_s);
        self
    }

    /// Up to 64 bytes; a stored notification with the same collapse id is replaced.
    pub fn with_collapse(mut self, collapse: impl Into<Vec<u8>>) -> PushRequest {
        self.note.collapse = Bytes::from(collapse.into());
        self
    }

    /// Asks the gateway for a [`Receipt`] when the device ACKs this notification.
    pub fn with_receipt(mut self) -> PushRequest {
        self.note.flags |= FLAG_RECEIPT;
        self
    }

    /// The notification as the wire carries it, in a PUSH or a MULTI_PUSH.
    pub(crate) fn note(&self) -> Notification<'_> {
        self.note.as_wire()
    }

    /// Refuses what the gateway would treat as a malformed frame, which would
    /// close the connection and lose every pipelined request with it. Values it
    /// answers with a status (payload size, kind, priority) are left to it.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        check_note(&self.note)
    }
}

/// The notification [`PushRequest::new`] makes, without a token: an alert at
/// high priority that expires [`DEFAULT_TTL_S`] from now, no collapse id. For
/// [`push_topic`](super::ProviderClient::push_topic); set its public fields to change it.
pub fn new_note(payload: impl Into<Vec<u8>>) -> Note {
    Note {
        kind: Kind::ALERT.0,
        priority: PRIORITY_HIGH,
        flags: 0,
        expiry: expiry_in(DEFAULT_TTL_S),
        collapse: Bytes::new(),
        payload: Bytes::from(payload.into()),
    }
}

/// What [`PushRequest::check`] refuses, for any notification.
pub(crate) fn check_note(note: &Note) -> Result<(), ClientError> {
    if note.collapse.len() > MAX_COLLAPSE {
        return Err(ClientError::Invalid(format!("collapse id longer than {MAX_COLLAPSE} bytes")));
    }
    Ok(())
}

/// The expiry field for a notification that lives `ttl_s` seconds from now (0 stays 0).
pub fn expiry_in(ttl_s: u32) -> u32 {
    if ttl_s == 0 {
        return 0;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    u32::try_from(now.saturating_add(ttl_s.into())).unwrap_or(u32::MAX)
}

/// The gateway's answer to one PUSH.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PushResult {
    pub req_id: u32,
    pub status: Status,
    /// The notification's id when delivered or queued, else 0.
    pub msg_id: u64,
    /// Status detail: retry-after ms for rate_limited/unavailable, unregister time for unregistered.
    pub info: u64,
}

impl PushResult {
    /// Delivered or queued: the gateway took responsibility for the notification.
    pub fn is_accepted(&self) -> bool {
        matches!(self.status, Status::DELIVERED | Status::QUEUED)
    }
}

/// An answer from the gateway to a pipelined request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    Result(PushResult),
    /// `(status, msg_id)` per token, in the order the MULTI_PUSH listed them.
    Multi {
        req_id: u32,
        entries: Vec<(Status, u64)>,
    },
    /// `(token, unregistered_at_ms)`, oldest first; `more` asks for another FEEDBACK.
    Feedback {
        req_id: u32,
        more: bool,
        entries: Vec<(Token, u64)>,
    },
    /// One subscription status per token, in the order the TOPIC_MANAGE listed them.
    TopicManage {
        req_id: u32,
        statuses: Vec<SubStatus>,
    },
    TopicStats(TopicStats),
}

impl Reply {
    pub fn req_id(&self) -> u32 {
        match self {
            Reply::Result(r) => r.req_id,
            Reply::TopicStats(t) => t.req_id,
            Reply::Multi { req_id, .. }
            | Reply::Feedback { req_id, .. }
            | Reply::TopicManage { req_id, .. } => *req_id,
        }
    }
}

/// How many devices one topic message reached, as the answering node counts (protocol.md 10.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TopicStats {
    pub req_id: u32,
    /// False once the node no longer remembers the message; the counts are 0 then.
    pub known: bool,
    /// TOPIC_NOTIFY frames written to devices (one sent again counts again).
    pub sent: u64,
    /// ACKs that took effect.
    pub acked: u64,
}

/// Proof that a device ACKed a notification pushed with [`PushRequest::with_receipt`].
/// Not an answer to a request: it may arrive at any time, on any session of the app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Receipt {
    pub token: Token,
    pub msg_id: u64,
    /// When the gateway received the ACK, unix milliseconds.
    pub acked_at_ms: u64,
}
