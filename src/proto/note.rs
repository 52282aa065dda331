//! The one owned notification: what a PUSH, a MULTI_PUSH, an HTTP request or
//! a remote node hands the router, what the owner shard stores and delivers,
//! and what the client builds. Its pure validation lives here, once.

use bytes::Bytes;

use super::codes::{Kind, Status, PRIORITY_HIGH, PRIORITY_NORMAL};
use super::frame::{Notification, KNOWN_FLAGS, MAX_COLLAPSE, MAX_PAYLOAD};

/// A notification without its token(s): kind, priority, flags, expiry,
/// collapse id and payload, the payload and collapse id shared (`Bytes`) by
/// every token of a multi push.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Note {
    pub kind: u8,
    /// [`PRIORITY_HIGH`] (10) or [`PRIORITY_NORMAL`] (5).
    pub priority: u8,
    /// Bit 0 ([`super::frame::FLAG_RECEIPT`]) asks for a receipt; other bits are undefined.
    pub flags: u8,
    /// Unix seconds after which the notification is worthless; 0 = now or never.
    pub expiry: u32,
    /// Empty when there is no collapse id; at most [`MAX_COLLAPSE`] bytes.
    pub collapse: Bytes,
    pub payload: Bytes,
}

impl Note {
    /// Copies a decoded notification out of the read buffer.
    pub fn from_wire(n: &Notification<'_>) -> Note {
        Note {
            kind: n.kind,
            priority: n.priority,
            flags: n.flags,
            expiry: n.expiry,
            collapse: Bytes::copy_from_slice(n.collapse),
            payload: Bytes::copy_from_slice(n.payload),
        }
    }

    /// The notification as PUSH and MULTI_PUSH carry it.
    pub fn as_wire(&self) -> Notification<'_> {
        Notification {
            kind: self.kind,
            priority: self.priority,
            flags: self.flags,
            expiry: self.expiry,
            collapse: &self.collapse,
            payload: &self.payload,
        }
    }

    /// The status a push of this notification gets before any token is
    /// looked at: `payload_too_large`, or `bad_request` for an undefined kind,
    /// a priority other than 10 or 5, undefined flag bits or a collapse id
    /// over 64 bytes (the codec refuses that one already on the binary port).
    pub fn check(&self) -> Result<(), Status> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(Status::PAYLOAD_TOO_LARGE);
        }
        let priority_ok = self.priority == PRIORITY_HIGH || self.priority == PRIORITY_NORMAL;
        if !Kind(self.kind).is_known()
            || !priority_ok
            || self.flags & !KNOWN_FLAGS != 0
            || self.collapse.len() > MAX_COLLAPSE
        {
            return Err(Status::BAD_REQUEST);
        }
        Ok(())
    }

    /// Whether the provider asked for a receipt when the device ACKs it.
    pub fn wants_receipt(&self) -> bool {
        self.flags & super::frame::FLAG_RECEIPT != 0
    }

    /// Whether it may be stored at `now_unix`: a nonzero expiry not yet past.
    pub fn is_storable(&self, now_unix: u64) -> bool {
        self.expiry != 0 && u64::from(self.expiry) >= now_unix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> Note {
        Note { kind: 0, priority: PRIORITY_HIGH, payload: Bytes::from_static(b"hi"), ..Note::default() }
    }

    #[test]
    fn check_names_the_first_fault() {
        assert_eq!(note().check(), Ok(()));
        let big = Note { payload: Bytes::from(vec![0; MAX_PAYLOAD + 1]), kind: 9, ..note() };
        assert_eq!(big.check(), Err(Status::PAYLOAD_TOO_LARGE), "size is checked first");
        assert_eq!(Note { kind: 3, ..note() }.check(), Err(Status::BAD_REQUEST));
        assert_eq!(Note { priority: 7, ..note() }.check(), Err(Status::BAD_REQUEST));
        assert_eq!(Note { flags: 2, ..note() }.check(), Err(Status::BAD_REQUEST));
        assert_eq!(Note { flags: 1, ..note() }.check(), Ok(()), "the receipt bit is defined");
        let long = Note { collapse: Bytes::from(vec![b'c'; MAX_COLLAPSE + 1]), ..note() };
        assert_eq!(long.check(), Err(Status::BAD_REQUEST));
    }

    #[test]
    fn wire_round_trip_keeps_every_field() {
        let n = Note {
            kind: 2,
            priority: PRIORITY_NORMAL,
            flags: 1,
            expiry: 77,
            collapse: Bytes::from_static(b"score"),
            payload: Bytes::from_static(b"1-0"),
        };
        assert_eq!(Note::from_wire(&n.as_wire()), n);
        assert!(n.is_storable(77) && !n.is_storable(78));
        assert!(!Note { expiry: 0, ..n }.is_storable(0));
    }
}
