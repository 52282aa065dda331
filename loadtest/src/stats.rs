//! Counters and histograms shared between device threads, workers and the
//! parent, and the per-device fingerprints used to prove nothing was lost.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds up to a minute.
pub const MAX_LATENCY_US: u64 = 60_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// A histogram as sparse (value, count) pairs: what workers send to the parent.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        let _ = h.record_n(v.clamp(1, MAX_LATENCY_US), c);
    }
}

/// Cumulative device-side counters; workers sum their threads', the parent sums workers'.
#[derive(Clone, Copy, Default, Debug, Serialize, Deserialize)]
pub struct DevCounters {
    /// Sockets open right now (connecting or connected).
    pub connected: u64,
    /// Devices registered right now.
    pub registered: u64,
    pub connect_attempts: u64,
    /// socket/bind/connect failed, or the connection was refused or reset before registering.
    pub connect_failed: u64,
    pub handshake_timeouts: u64,
    /// Registered connections the server closed without a GOAWAY.
    pub closed_by_server: u64,
    /// Protocol errors and ERROR frames.
    pub proto_errors: u64,
    /// GOAWAY frames by reason (index = reason, 0 = unknown).
    pub goaway: [u64; 6],
    pub registrations: u64,
    /// Sum of WELCOME `missed` counts.
    pub missed: u64,
    /// Drops the harness made on purpose (churn, storm, park).
    pub dropped_on_purpose: u64,
    pub received: u64,
    pub unique: u64,
    /// The same message id twice on one connection.
    pub duplicated: u64,
    /// The same message id again after a reconnect: legitimate at-least-once redelivery.
    pub redelivered: u64,
    /// A payload addressed to another device.
    pub misrouted: u64,
    /// A payload without our header.
    pub foreign: u64,
    /// WELCOMEs that gave a device a different token than before.
    pub token_changed: u64,
    /// Devices subscribed to the broadcast topic, and refused subscriptions.
    #[serde(default)]
    pub subscribed: u64,
    #[serde(default)]
    pub sub_failed: u64,
    /// Devices registered again since the last storm, and when the last one did (monotonic ns).
    pub storm_registered: u64,
    pub storm_last_ns: u64,
    /// First connect attempt, last registration and last new delivery (monotonic ns; 0 = none yet).
    pub first_attempt_ns: u64,
    pub last_registered_ns: u64,
    pub last_delivery_ns: u64,
}

impl DevCounters {
    pub fn add(&mut self, o: &DevCounters) {
        self.connected += o.connected;
        self.registered += o.registered;
        self.connect_attempts += o.connect_attempts;
        self.connect_failed += o.connect_failed;
        self.handshake_timeouts += o.handshake_timeouts;
        self.closed_by_server += o.closed_by_server;
        self.proto_errors += o.proto_errors;
        for (a, b) in self.goaway.iter_mut().zip(o.goaway.iter()) {
            *a += b;
        }
        self.registrations += o.registrations;
        self.missed += o.missed;
        self.dropped_on_purpose += o.dropped_on_purpose;
        self.received += o.received;
        self.unique += o.unique;
        self.duplicated += o.duplicated;
        self.redelivered += o.redelivered;
        self.misrouted += o.misrouted;
        self.foreign += o.foreign;
        self.token_changed += o.token_changed;
        self.subscribed += o.subscribed;
        self.sub_failed += o.sub_failed;
        self.storm_registered += o.storm_registered;
        self.storm_last_ns = self.storm_last_ns.max(o.storm_last_ns);
        self.first_attempt_ns = match (self.first_attempt_ns, o.first_attempt_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_registered_ns = self.last_registered_ns.max(o.last_registered_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
    }
}

/// What a set of messages to one device adds up to: equal fingerprints on
/// the sending and receiving side mean the same set of ids arrived.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Fingerprint {
    pub count: u64,
    pub sum: u64,
}

impl Fingerprint {
    pub fn add(&mut self, key: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(crate::util::mix64(key));
    }
}
