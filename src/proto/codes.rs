//! Wire codes: push statuses, error codes, GOAWAY reasons and notification kinds.
//!
//! Each is a `u8` newtype rather than a closed enum so a client built against
//! this version still decodes a code added later; `name()` gives the label
//! that protocol.md and the CLI use.

macro_rules! wire_code {
    ($(#[$doc:meta])* $ty:ident { $($(#[$cdoc:meta])* $name:ident = $val:expr, $label:expr;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $ty(pub u8);

        impl $ty {
            $($(#[$cdoc])* pub const $name: $ty = $ty($val);)*

            /// The snake_case label protocol.md uses, or "unknown".
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => $label,)*
                    _ => "unknown",
                }
            }

            /// Whether this code is defined by protocol version 1.
            #[allow(clippy::manual_range_patterns)]
            pub fn is_known(self) -> bool {
                matches!(self.0, $($val)|*)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.name())
            }
        }
    };
}

wire_code! {
    /// Outcome of one push, carried by RESULT and MULTI_RESULT.
    Status {
        /// The device is connected; the notification was handed to its connection.
        DELIVERED = 0, "delivered";
        /// The device is offline; the notification is stored until it connects.
        QUEUED = 1, "queued";
        /// Not a token of this app (malformed, forged, or another app's). Drop it.
        BAD_TOKEN = 2, "bad_token";
        /// Payload over 4096 bytes.
        PAYLOAD_TOO_LARGE = 3, "payload_too_large";
        /// Expiry 0 (now or never) and the device is offline: not stored, not delivered.
        NOT_DELIVERED = 4, "not_delivered";
        /// A field is out of range: unknown kind, priority other than 10 or 5, or nonzero flags.
        BAD_REQUEST = 5, "bad_request";
        /// The app is over its push rate; retry after `info` milliseconds.
        RATE_LIMITED = 6, "rate_limited";
        /// The gateway is draining or overloaded; retry after `info` ms, preferably elsewhere.
        UNAVAILABLE = 7, "unavailable";
        /// The device unregistered at unix time `info` (milliseconds). Stop sending.
        UNREGISTERED = 8, "unregistered";
        /// The store could not accept the notification (disk full, I/O error). Retry later.
        STORE_FAILED = 9, "store_failed";
        /// PUSH_TOPIC: the topic name breaks the rule (protocol.md §10.4), or is a reserved `~` name.
        BAD_TOPIC = 10, "bad_topic";
        /// PUSH_TOPIC: the app already has `limits.topics_per_app` topics with a log.
        TOPIC_LIMIT = 11, "topic_limit";
    }
}

wire_code! {
    /// Outcome of a subscription change for one token: SUBSCRIBE_RESULT, TOPIC_MANAGE_RESULT.
    SubStatus {
        /// Done (also when there was nothing to change).
        OK = 0, "ok";
        /// The topic name breaks the rule, or is reserved (`~all` cannot be subscribed to).
        BAD_TOPIC = 1, "bad_topic";
        /// The device is in `limits.topics_per_device` topics already.
        TOPIC_LIMIT = 2, "topic_limit";
        /// TOPIC_MANAGE: not a token of this app.
        BAD_TOKEN = 3, "bad_token";
        /// TOPIC_MANAGE: the device unregistered; nothing changed.
        UNREGISTERED = 4, "unregistered";
        /// The store could not record the change; retry later.
        STORE_FAILED = 5, "store_failed";
        /// The gateway is draining, or (cluster) the engine is unreachable; retry later.
        UNAVAILABLE = 6, "unavailable";
    }
}

wire_code! {
    /// Why the gateway is closing a connection because of something the peer did.
    ErrorCode {
        /// HELLO or AUTH_HELLO carried a protocol version this gateway does not speak.
        UNSUPPORTED_VERSION = 1, "unsupported_version";
        /// A frame body does not match its field table.
        MALFORMED_FRAME = 2, "malformed_frame";
        /// The header announced a body longer than this port's maximum.
        FRAME_TOO_LARGE = 3, "frame_too_large";
        /// The frame type is not defined on this port.
        UNKNOWN_FRAME_TYPE = 4, "unknown_frame_type";
        /// The frame type exists but is not legal in the session's current state.
        UNEXPECTED_FRAME = 5, "unexpected_frame";
        /// The first frame did not complete within the handshake deadline.
        HANDSHAKE_TIMEOUT = 6, "handshake_timeout";
        /// The provider's AUTH proof did not match the app's secret.
        AUTH_FAILED = 7, "auth_failed";
        /// The app id is not configured on this gateway.
        UNKNOWN_APP = 8, "unknown_app";
        /// The device secret is shorter than 16 or longer than 64 bytes.
        BAD_CREDENTIAL = 9, "bad_credential";
        /// The gateway hit an internal fault; reconnect with backoff.
        INTERNAL = 10, "internal";
    }
}

wire_code! {
    /// Why the gateway is closing a healthy connection, with a reconnect hint.
    GoAwayReason {
        /// The node is draining (shutdown, deploy). Reconnect after the hint, through the load balancer.
        SHUTDOWN = 1, "shutdown";
        /// Another connection presented the same token; this one is superseded. Do not reconnect automatically.
        REPLACED = 2, "replaced";
        /// Nothing arrived within the idle grace. Reconnect and heartbeat on time.
        IDLE_TIMEOUT = 3, "idle_timeout";
        /// The node holds its maximum number of connections. Reconnect after the hint.
        SERVER_FULL = 4, "server_full";
        /// The device did not read its notifications fast enough; they stay stored.
        SLOW_CONSUMER = 5, "slow_consumer";
        /// The device's UNREGISTER is durable. Do not reconnect until the app registers again.
        UNREGISTERED = 6, "unregistered";
        /// Too many new connections from this source address. Reconnect after the hint.
        RATE_LIMITED = 7, "rate_limited";
    }
}

wire_code! {
    /// What kind of notification a device receives, as the platforms distinguish them.
    Kind {
        /// Shown to the user (APNs alert, WNS toast, FCM notification).
        ALERT = 0, "alert";
        /// Updates a counter or tile (APNs badge, WNS tile).
        BADGE = 1, "badge";
        /// Wakes the app silently with data (APNs background, WNS raw, FCM data).
        BACKGROUND = 2, "background";
    }
}

/// PUSH priority: deliver at once.
pub const PRIORITY_HIGH: u8 = 10;
/// PUSH priority: may be held and coalesced to save the device's radio.
pub const PRIORITY_NORMAL: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_defined_code() {
        for v in 0..=11u8 {
            assert!(Status(v).is_known(), "status {v}");
            assert_ne!(Status(v).name(), "unknown");
        }
        assert!(!Status(200).is_known());
        assert_eq!(ErrorCode::AUTH_FAILED.name(), "auth_failed");
        assert_eq!(GoAwayReason(99).name(), "unknown");
        assert_eq!(Kind::BACKGROUND.to_string(), "background");
    }
}
