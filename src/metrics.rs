//! The gateway's Prometheus metrics: one cache-line-padded block of atomics
//! per shard, written only through that shard's [`ShardWriter`], rendered on
//! demand in the text exposition format 0.0.4 by the admin listener.

use std::cell::Cell;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::{ErrorCode, GoAwayReason, Status};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which port a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Device = 0,
    Provider = 1,
}

impl Role {
    const ALL: [Role; 2] = [Role::Device, Role::Provider];

    fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Provider => "provider",
        }
    }
}

/// Why a connection ended: the last frame the gateway sent, or what the peer did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Close {
    /// The peer closed its side.
    Eof,
    /// A read or write failed (reset, broken pipe).
    IoError,
    /// The gateway sent GOAWAY with this reason.
    GoAway(GoAwayReason),
    /// The gateway sent ERROR with this code.
    Error(ErrorCode),
}

/// A limit that refused or cut off something.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Limit {
    /// `max_connections` reached: GOAWAY server_full.
    ServerFull,
    /// `max_outbox_bytes` reached: GOAWAY slow_consumer.
    SlowConsumer,
    /// `provider_max_in_flight` reached: the provider's socket is no longer read.
    ProviderPaused,
    /// `device_max_in_flight` reached: notifications wait for ACKs.
    DeviceWindowFull,
    /// `device_queue_cap` reached: the oldest stored notification was dropped.
    QueueOverflow,
    /// The app is over its push rate: status rate_limited.
    RateLimited,
    /// Too many handshakes per second.
    HandshakeRate,
    /// accept() failed for want of file descriptors; accepting paused.
    AcceptPaused,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::ServerFull,
        Limit::SlowConsumer,
        Limit::ProviderPaused,
        Limit::DeviceWindowFull,
        Limit::QueueOverflow,
        Limit::RateLimited,
        Limit::HandshakeRate,
        Limit::AcceptPaused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Limit::ServerFull => "server_full",
            Limit::SlowConsumer => "slow_consumer",
            Limit::ProviderPaused => "provider_paused",
            Limit::DeviceWindowFull => "device_window_full",
            Limit::QueueOverflow => "queue_overflow",
            Limit::RateLimited => "push_rate_per_app",
            Limit::HandshakeRate => "connection_rate_per_source",
            Limit::AcceptPaused => "accept_paused",
        }
    }
}

/// Wire codes below this get a slot each; one more slot counts the rest as
/// "unknown". Codes are rendered when `is_known()`, so a code added to
/// `proto::codes` shows up without a change here.
const CODES: u8 = 16;
const CODE_SLOTS: usize = CODES as usize + 1;
const LIMIT_SLOTS: usize = Limit::ALL.len();

fn slot(code: u8, known: bool) -> usize {
    if known && code < CODES {
        usize::from(code)
    } else {
        usize::from(CODES)
    }
}

/// Per-code counters, rendered as one series per defined code plus "unknown".
type CodeCounts = [AtomicU64; CODE_SLOTS];

/// Upper bounds of the histogram buckets, 1-2-5 steps from 1 µs to 10 s, in
/// nanoseconds; `LE` spells the same bounds in seconds for the `le` label.
const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];
const LE: [&str; 22] = [
    "1e-06", "2e-06", "5e-06", "1e-05", "2e-05", "5e-05", "0.0001", "0.0002", "0.0005", "0.001", "0.002",
    "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10",
];

/// A fixed-bucket histogram of durations.
struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Only the block's writer calls this (see [`add`]).
    #[inline]
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        add(&self.buckets[i], 1);
        add(&self.sum_ns, ns);
    }

    /// [`Histogram::observe`] for a histogram with several writers (locked adds).
    #[inline]
    fn observe_shared(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// An HTTP API route, as the metrics name it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HttpRoute {
    Push = 0,
    Feedback = 1,
    Receipts = 2,
    /// The topic endpoints (push, subscribers, counts).
    Topics = 3,
    /// Any other path (404) or method (405).
    Other = 4,
}

impl HttpRoute {
    pub const ALL: [HttpRoute; 5] =
        [HttpRoute::Push, HttpRoute::Feedback, HttpRoute::Receipts, HttpRoute::Topics, HttpRoute::Other];

    pub fn name(self) -> &'static str {
        match self {
            HttpRoute::Push => "push",
            HttpRoute::Feedback => "feedback",
            HttpRoute::Receipts => "receipts",
            HttpRoute::Topics => "topics",
            HttpRoute::Other => "other",
        }
    }
}

/// The status classes counted: 1xx to 5xx.
const HTTP_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The HTTP API's counters: written by its runtime's threads (so with locked adds, one or two per
/// request), read by the admin listener.
#[derive(Default)]
pub struct HttpMetrics {
    requests: [[AtomicU64; HTTP_CLASSES.len()]; HttpRoute::ALL.len()],
    in_flight: AtomicI64,
    connections: AtomicI64,
    duration: [Histogram; HttpRoute::ALL.len()],
}

impl HttpMetrics {
    /// A request has begun (its head is read).
    #[inline]
    pub fn on_start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request begun with [`HttpMetrics::on_start`] is answered with `status` (a receipts stream:
    /// when its head is sent) after `took`.
    #[inline]
    pub fn on_answer(&self, route: HttpRoute, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[route as usize][class].fetch_add(1, Relaxed);
        self.duration[route as usize].observe_shared(took);
    }

    /// A request begun with [`HttpMetrics::on_start`] is done (answered, or its stream reset).
    #[inline]
    pub fn on_end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// An HTTP connection was accepted (`1`) or closed (`-1`).
    #[inline]
    pub fn on_connection(&self, delta: i64) {
        self.connections.fetch_add(delta, Relaxed);
    }

    /// Requests answered on `route` with a status of class `class` (1 to 5).
    pub fn requests(&self, route: HttpRoute, class: usize) -> u64 {
        self.requests[route as usize][class.clamp(1, 5) - 1].load(Relaxed)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    fn render(&self, r: &mut Render<'_>) {
        let name = "pushgate_http_requests_total";
        r.head(name, "counter", "HTTP API requests answered, by route and status class.");
        for route in HttpRoute::ALL {
            for (i, class) in HTTP_CLASSES.into_iter().enumerate() {
                let v = self.requests[route as usize][i].load(Relaxed);
                r.line(name, &[("route", route.name()), ("class", class)], v);
            }
        }
        let name = "pushgate_http_requests_in_flight";
        r.head(name, "gauge", "HTTP API requests begun and not yet answered.");
        r.line(name, &[], self.in_flight.load(Relaxed));
        let name = "pushgate_http_connections";
        r.head(name, "gauge", "Open HTTP API connections.");
        r.line(name, &[], self.connections.load(Relaxed));
        let name = "pushgate_http_request_duration_seconds";
        r.head(
            name,
            "histogram",
            "From an HTTP API request's head to its answer (a receipts stream: to its response head).",
        );
        for route in HttpRoute::ALL {
            r.histogram(name, &[("route", route.name())], &self.duration[route as usize]);
        }
    }
}

/// Adds to a counter of a block whose one [`ShardWriter`] is the caller: with
/// no other writer, a relaxed load and store cannot lose an update, and cost
/// about 1 ns where a locked `fetch_add` costs about 14 ns.
#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
fn add_i64(c: &AtomicI64, n: i64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One shard's counters. Aligned to 128 bytes (two cache lines, as crossbeam's
/// `CachePadded` does on x86_64, for the adjacent-line prefetcher) so shards
/// never write to a line another shard writes.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardMetrics {
    /// Whether a `ShardWriter` for this block exists.
    claimed: AtomicBool,
    devices: AtomicI64,
    providers: AtomicI64,
    stored: AtomicI64,
    handshakes_ok: [AtomicU64; 2],
    handshake_errors: [CodeCounts; 2],
    closed_eof: [AtomicU64; 2],
    closed_io_error: [AtomicU64; 2],
    closed_goaway: [CodeCounts; 2],
    closed_error: [CodeCounts; 2],
    pushes: CodeCounts,
    notifies: AtomicU64,
    acks: AtomicU64,
    bytes_in: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    channel_batches: AtomicU64,
    channel_msgs: AtomicU64,
    limits: [AtomicU64; LIMIT_SLOTS],
    store_sync_failures: AtomicU64,
    /// Notifications held back for their ACK: [acked in time, written at grace end].
    held: [AtomicU64; 2],
    store_sync: Histogram,
    delivery: Histogram,
}

/// The one handle that writes a shard's block: taken once per shard by
/// [`Metrics::writer`], moved into the shard's thread. Not `Clone` and not
/// `Sync`, so a block always has a single writer:
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<pushgate::metrics::ShardWriter>();
/// ```
pub struct ShardWriter {
    metrics: Arc<Metrics>,
    index: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        self.block().claimed.store(false, Ordering::Release);
    }
}

impl ShardWriter {
    #[inline]
    fn block(&self) -> &ShardMetrics {
        &self.metrics.shards[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// A connection completed its handshake (HELLO / AUTH): it is now counted as connected.
    #[inline]
    pub fn on_ready(&self, role: Role) {
        add_i64(self.block().gauge(role), 1);
    }

    /// A ready connection stopped being reachable (closing, replaced, gone).
    #[inline]
    pub fn on_unready(&self, role: Role) {
        add_i64(self.block().gauge(role), -1);
    }

    /// The outcome of a handshake: `Ok` or the ERROR code it was refused with.
    #[inline]
    pub fn on_handshake(&self, role: Role, result: Result<(), ErrorCode>) {
        let (b, r) = (self.block(), role as usize);
        let c = match result {
            Ok(()) => &b.handshakes_ok[r],
            Err(e) => &b.handshake_errors[r][slot(e.0, e.is_known())],
        };
        add(c, 1);
    }

    /// A connection ended; call once per connection.
    #[inline]
    pub fn on_close(&self, role: Role, why: Close) {
        let (b, r) = (self.block(), role as usize);
        let c = match why {
            Close::Eof => &b.closed_eof[r],
            Close::IoError => &b.closed_io_error[r],
            Close::GoAway(g) => &b.closed_goaway[r][slot(g.0, g.is_known())],
            Close::Error(e) => &b.closed_error[r][slot(e.0, e.is_known())],
        };
        add(c, 1);
    }

    /// A push to one token was answered (a MULTI_PUSH counts once per token).
    #[inline]
    pub fn on_push(&self, status: Status) {
        add(&self.block().pushes[slot(status.0, status.is_known())], 1);
    }

    /// NOTIFY frames written to devices.
    #[inline]
    pub fn on_notify(&self, frames: u64) {
        add(&self.block().notifies, frames);
    }

    #[inline]
    pub fn on_ack(&self) {
        add(&self.block().acks, 1);
    }

    /// A notification held back for its ACK was acked in time (never
    /// written to disk), or not (written when its grace ran out).
    #[inline]
    pub fn on_held(&self, acked: bool) {
        add(&self.block().held[usize::from(!acked)], 1);
    }

    /// Notifications in this shard's store now.
    #[inline]
    pub fn set_stored(&self, n: u64) {
        self.block().stored.store(i64::try_from(n).unwrap_or(i64::MAX), Relaxed);
    }

    /// One store sync (group commit), how long it took and whether it failed.
    #[inline]
    pub fn on_store_sync(&self, took: Duration, ok: bool) {
        self.block().store_sync.observe(took);
        if !ok {
            add(&self.block().store_sync_failures, 1);
        }
    }

    #[inline]
    pub fn on_read(&self, role: Role, bytes: usize) {
        add(&self.block().bytes_in[role as usize], bytes as u64);
    }

    #[inline]
    pub fn on_write(&self, role: Role, bytes: usize) {
        add(&self.block().bytes_out[role as usize], bytes as u64);
    }

    /// One batch of `msgs` messages sent to another shard's channel.
    #[inline]
    pub fn on_channel_send(&self, msgs: usize) {
        add(&self.block().channel_batches, 1);
        add(&self.block().channel_msgs, msgs as u64);
    }

    #[inline]
    pub fn on_limit(&self, limit: Limit) {
        add(&self.block().limits[limit as usize], 1);
    }

    /// From a PUSH read on the provider's shard to its NOTIFY written on the device's shard.
    #[inline]
    pub fn observe_delivery(&self, latency: Duration) {
        self.block().delivery.observe(latency);
    }
}

impl ShardMetrics {
    fn gauge(&self, role: Role) -> &AtomicI64 {
        match role {
            Role::Device => &self.devices,
            Role::Provider => &self.providers,
        }
    }

    pub fn devices(&self) -> i64 {
        self.devices.load(Relaxed)
    }

    pub fn providers(&self) -> i64 {
        self.providers.load(Relaxed)
    }

    pub fn pushes(&self, status: Status) -> u64 {
        self.pushes[slot(status.0, status.is_known())].load(Relaxed)
    }

    pub fn notifies(&self) -> u64 {
        self.notifies.load(Relaxed)
    }

    pub fn acks(&self) -> u64 {
        self.acks.load(Relaxed)
    }

    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limits[limit as usize].load(Relaxed)
    }

    pub fn deliveries_observed(&self) -> u64 {
        self.delivery.count()
    }
}

/// Every shard's metrics, shared by the shards and the admin listener.
pub struct Metrics {
    shards: Box<[ShardMetrics]>,
    http: Arc<HttpMetrics>,
    start_unix_s: u64,
    /// Families rendered after the gateway's own (the cluster engine's).
    extra: std::sync::OnceLock<ExtraRender>,
    topics: Arc<crate::topics::metrics::TopicMetrics>,
}

/// Renders more metric families into the exposition text.
pub type ExtraRender =
    Box<dyn Fn(&mut String) + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>;

impl Metrics {
    pub fn new(shards: usize) -> Arc<Metrics> {
        let start_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Arc::new(Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            http: Arc::new(HttpMetrics::default()),
            start_unix_s,
            extra: std::sync::OnceLock::new(),
            topics: Arc::default(),
        })
    }

    /// Adds families to every rendering, once (later calls are ignored).
    pub fn set_extra(&self, render: ExtraRender) {
        let _ = self.extra.set(render);
    }

    /// The topic counters, for the topic log and the shards.
    pub fn topics(&self) -> Arc<crate::topics::metrics::TopicMetrics> {
        self.topics.clone()
    }

    /// The HTTP API's counters, for its listener.
    pub fn http(&self) -> Arc<HttpMetrics> {
        self.http.clone()
    }

    /// The writer of shard `i`'s block, for that shard's thread. Panics if
    /// `i` is out of range or the block already has a writer.
    pub fn writer(self: &Arc<Self>, i: usize) -> ShardWriter {
        let free = self.shards[i].claimed.compare_exchange(false, true, Ordering::Acquire, Relaxed);
        assert!(free.is_ok(), "shard {i}'s metrics already have a writer");
        ShardWriter { metrics: self.clone(), index: i, _not_sync: PhantomData }
    }

    /// Shard `i`'s block, to read; panics if `i` is not a shard index.
    pub fn shard(&self, i: usize) -> &ShardMetrics {
        &self.shards[i]
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The text exposition format 0.0.4, every series present from the start
    /// (at zero) so `rate()` sees the first event.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4 * 1024 + self.shards.len() * 12 * 1024);
        self.render_into(&mut out);
        out
    }

    pub fn render_into(&self, out: &mut String) {
        self.render_own(out);
        self.topics.render_into(out);
        if let Some(extra) = self.extra.get() {
            extra(out);
        }
    }

    fn render_own(&self, out: &mut String) {
        let mut r = Render { out };
        r.head("pushgate_build_info", "gauge", "Always 1; the version label says which build runs.");
        r.line("pushgate_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        r.head("pushgate_start_time_seconds", "gauge", "Unix time the gateway started.");
        r.line("pushgate_start_time_seconds", &[], self.start_unix_s);

        self.gauge(&mut r, "pushgate_devices_connected", "Devices with a completed HELLO.", |s| &s.devices);
        self.gauge(&mut r, "pushgate_providers_connected", "Providers logged in.", |s| &s.providers);
        self.gauge(&mut r, "pushgate_stored_notifications", "Notifications in the store.", |s| &s.stored);

        r.head("pushgate_handshakes_total", "counter", "Handshakes by result: ok or the ERROR code sent.");
        self.each(&mut r, |r, sh, s| {
            for role in Role::ALL {
                let (name, i) = ("pushgate_handshakes_total", role as usize);
                let labels = |result| [("shard", sh), ("role", role.name()), ("result", result)];
                r.line(name, &labels("ok"), s.handshakes_ok[i].load(Relaxed));
                let error = |c| ErrorCode(c).is_known().then(|| ErrorCode(c).name());
                codes(&s.handshake_errors[i], error, "unknown_error", |l, v| r.line(name, &labels(l), v));
            }
        });
        r.head(
            "pushgate_connections_closed_total",
            "counter",
            "Connections ended, by the GOAWAY reason or ERROR code sent, or eof / io_error.",
        );
        self.each(&mut r, |r, sh, s| {
            for role in Role::ALL {
                let (name, i) = ("pushgate_connections_closed_total", role as usize);
                let labels = |reason| [("shard", sh), ("role", role.name()), ("reason", reason)];
                r.line(name, &labels("eof"), s.closed_eof[i].load(Relaxed));
                r.line(name, &labels("io_error"), s.closed_io_error[i].load(Relaxed));
                let goaway = |c| GoAwayReason(c).is_known().then(|| GoAwayReason(c).name());
                codes(&s.closed_goaway[i], goaway, "unknown_goaway", |l, v| r.line(name, &labels(l), v));
                let error = |c| ErrorCode(c).is_known().then(|| ErrorCode(c).name());
                codes(&s.closed_error[i], error, "unknown_error", |l, v| r.line(name, &labels(l), v));
            }
        });
        r.head("pushgate_pushes_total", "counter", "Pushes answered, one per token, by status.");
        self.each(&mut r, |r, sh, s| {
            let status = |c| Status(c).is_known().then(|| Status(c).name());
            let name = "pushgate_pushes_total";
            codes(&s.pushes, status, "unknown", |l, v| r.line(name, &[("shard", sh), ("status", l)], v));
        });
        self.counter(&mut r, "pushgate_notifications_delivered_total", "NOTIFY frames written.", |s| {
            s.notifies.load(Relaxed)
        });
        self.counter(&mut r, "pushgate_acks_total", "ACKs received from devices.", |s| s.acks.load(Relaxed));
        self.counter(&mut r, "pushgate_store_sync_failures_total", "Store syncs that failed.", |s| {
            s.store_sync_failures.load(Relaxed)
        });
        let name = "pushgate_store_held_total";
        r.head(name, "counter", "Notifications held back from the disk for their ACK, by outcome.");
        self.each(&mut r, |r, sh, s| {
            for (i, outcome) in ["acked", "written"].into_iter().enumerate() {
                r.line(name, &[("shard", sh), ("outcome", outcome)], s.held[i].load(Relaxed));
            }
        });
        for (name, help, bytes) in [
            ("pushgate_received_bytes_total", "Bytes read from sockets.", 0),
            ("pushgate_sent_bytes_total", "Bytes written to sockets.", 1),
        ] {
            r.head(name, "counter", help);
            self.each(&mut r, |r, sh, s| {
                let per_role = if bytes == 0 { &s.bytes_in } else { &s.bytes_out };
                for role in Role::ALL {
                    r.line(
                        name,
                        &[("shard", sh), ("role", role.name())],
                        per_role[role as usize].load(Relaxed),
                    );
                }
            });
        }
        self.counter(
            &mut r,
            "pushgate_shard_messages_sent_total",
            "Messages sent from this shard to other shards.",
            |s| s.channel_msgs.load(Relaxed),
        );
        self.counter(
            &mut r,
            "pushgate_shard_batches_sent_total",
            "Channel sends (batches of messages) from this shard to other shards.",
            |s| s.channel_batches.load(Relaxed),
        );
        r.head("pushgate_limit_hits_total", "counter", "Times a limit refused or cut off something.");
        self.each(&mut r, |r, sh, s| {
            for limit in Limit::ALL {
                let labels = [("shard", sh), ("limit", limit.name())];
                r.line("pushgate_limit_hits_total", &labels, s.limits[limit as usize].load(Relaxed));
            }
        });
        self.histogram(
            &mut r,
            "pushgate_store_sync_duration_seconds",
            "Time one store sync (group commit) took.",
            |s| &s.store_sync,
        );
        self.histogram(
            &mut r,
            "pushgate_delivery_latency_seconds",
            "From a PUSH read on the provider's shard to its NOTIFY written to the device.",
            |s| &s.delivery,
        );
        self.http.render(&mut r);
    }

    /// Calls `f` with each shard's label value and block.
    fn each(&self, r: &mut Render<'_>, mut f: impl FnMut(&mut Render<'_>, &str, &ShardMetrics)) {
        let mut label = String::new();
        for (i, s) in self.shards.iter().enumerate() {
            label.clear();
            let _ = write!(label, "{i}");
            f(r, &label, s);
        }
    }

    fn gauge(&self, r: &mut Render<'_>, name: &str, help: &str, f: impl Fn(&ShardMetrics) -> &AtomicI64) {
        r.head(name, "gauge", help);
        self.each(r, |r, sh, s| r.line(name, &[("shard", sh)], f(s).load(Relaxed)));
    }

    fn counter(&self, r: &mut Render<'_>, name: &str, help: &str, f: impl Fn(&ShardMetrics) -> u64) {
        r.head(name, "counter", help);
        self.each(r, |r, sh, s| r.line(name, &[("shard", sh)], f(s)));
    }

    fn histogram(&self, r: &mut Render<'_>, name: &str, help: &str, f: impl Fn(&ShardMetrics) -> &Histogram) {
        r.head(name, "histogram", help);
        self.each(r, |r, sh, s| r.histogram(name, &[("shard", sh)], f(s)));
    }
}

/// Calls `f` with the label and count of every defined code (`name` gives the
/// label of a defined one), then of `unknown`.
fn codes(
    counts: &CodeCounts,
    name: impl Fn(u8) -> Option<&'static str>,
    unknown: &'static str,
    mut f: impl FnMut(&'static str, u64),
) {
    for code in 0..CODES {
        if let Some(label) = name(code) {
            f(label, counts[usize::from(code)].load(Relaxed));
        }
    }
    f(unknown, counts[usize::from(CODES)].load(Relaxed));
}

/// Writes exposition lines. Label values here are fixed names and numbers,
/// none needing escapes.
struct Render<'a> {
    out: &'a mut String,
}

impl Render<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.out, "{k}=\"{v}\"");
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The `_bucket`, `_sum` and `_count` lines of `h` with `labels` (the head written already).
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        // Sum the counts read here, so +Inf and _count agree even while observations land.
        let mut cumulative = 0;
        for (i, b) in h.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            if let Some(last) = with_le.last_mut() {
                last.1 = LE.get(i).copied().unwrap_or("+Inf");
            }
            self.line(&bucket, &with_le, cumulative);
        }
        self.line(&sum, labels, h.sum_ns.load(Relaxed) as f64 / 1e9);
        self.line(&count, labels, cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series whose line starts with `series` (name and labels, exact).
    fn value(text: &str, series: &str) -> f64 {
        let mut found = text.lines().filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
        let v = found.next().unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
        assert!(found.next().is_none(), "series {series} appears twice");
        v.parse().unwrap()
    }

    #[test]
    fn every_defined_code_is_rendered_under_its_own_name() {
        // A code at or past CODES would be counted as "unknown": raise CODES.
        for v in CODES..=u8::MAX {
            assert!(!Status(v).is_known() && !ErrorCode(v).is_known() && !GoAwayReason(v).is_known(), "{v}");
        }
        let m = Metrics::new(1);
        let s = m.writer(0);
        let statuses: Vec<Status> = (0..CODES).map(Status).filter(|c| c.is_known()).collect();
        let errors: Vec<ErrorCode> = (0..CODES).map(ErrorCode).filter(|c| c.is_known()).collect();
        let goaways: Vec<GoAwayReason> = (0..CODES).map(GoAwayReason).filter(|c| c.is_known()).collect();
        // Each code is bumped a different number of times, so one counted under another's name shows.
        for (i, &st) in statuses.iter().enumerate() {
            (0..=i).for_each(|_| s.on_push(st));
        }
        for (i, &e) in errors.iter().enumerate() {
            (0..=i).for_each(|_| s.on_close(Role::Provider, Close::Error(e)));
            (0..=i).for_each(|_| s.on_handshake(Role::Device, Err(e)));
        }
        for (i, &g) in goaways.iter().enumerate() {
            (0..=i + errors.len()).for_each(|_| s.on_close(Role::Provider, Close::GoAway(g)));
        }
        s.on_push(Status(200));
        s.on_close(Role::Provider, Close::GoAway(GoAwayReason(200)));
        let t = m.render();
        for (i, st) in statuses.iter().enumerate() {
            let series = format!("pushgate_pushes_total{{shard=\"0\",status=\"{}\"}}", st.name());
            assert_eq!(value(&t, &series), (i + 1) as f64, "{series}");
        }
        assert_eq!(value(&t, "pushgate_pushes_total{shard=\"0\",status=\"unknown\"}"), 1.0);
        let closed = |reason: &str| {
            let labels = format!("shard=\"0\",role=\"provider\",reason=\"{reason}\"");
            value(&t, &format!("pushgate_connections_closed_total{{{labels}}}"))
        };
        for (i, e) in errors.iter().enumerate() {
            assert_eq!(closed(e.name()), (i + 1) as f64, "{}", e.name());
            let labels = format!("shard=\"0\",role=\"device\",result=\"{}\"", e.name());
            assert_eq!(
                value(&t, &format!("pushgate_handshakes_total{{{labels}}}")),
                (i + 1) as f64,
                "{labels}"
            );
        }
        for (i, g) in goaways.iter().enumerate() {
            assert_eq!(closed(g.name()), (i + 1 + errors.len()) as f64, "{}", g.name());
        }
        assert_eq!(closed("unknown_goaway"), 1.0);
        assert_eq!(closed("unknown_error"), 0.0);
        assert_eq!(closed("eof"), 0.0);
    }

    #[test]
    fn le_labels_spell_the_bounds() {
        for (le, ns) in LE.iter().zip(BOUNDS_NS) {
            let s: f64 = le.parse().unwrap();
            assert!((s * 1e9 - ns as f64).abs() < 1e-3, "{le} vs {ns}");
        }
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let m = Metrics::new(2);
        let s = m.writer(1);
        s.observe_delivery(Duration::from_micros(1)); // exactly on the first bound: le="1e-06"
        s.observe_delivery(Duration::from_nanos(1_001)); // just past it: le="2e-06"
        s.observe_delivery(Duration::from_millis(3)); // le="0.005"
        s.observe_delivery(Duration::from_secs(60)); // only +Inf
        let text = m.render();
        let b = |le: &str| {
            value(&text, &format!("pushgate_delivery_latency_seconds_bucket{{shard=\"1\",le=\"{le}\"}}"))
        };
        assert_eq!(b("1e-06"), 1.0);
        assert_eq!(b("2e-06"), 2.0);
        assert_eq!(b("0.002"), 2.0);
        assert_eq!(b("0.005"), 3.0);
        assert_eq!(b("10"), 3.0);
        assert_eq!(b("+Inf"), 4.0);
        assert_eq!(value(&text, "pushgate_delivery_latency_seconds_count{shard=\"1\"}"), 4.0);
        let sum = value(&text, "pushgate_delivery_latency_seconds_sum{shard=\"1\"}");
        assert!((sum - 60.003002001).abs() < 1e-9, "sum {sum}");
        assert_eq!(value(&text, "pushgate_delivery_latency_seconds_count{shard=\"0\"}"), 0.0);
        assert_eq!(m.shard(1).deliveries_observed(), 4);
    }

    #[test]
    fn series_move_per_shard_and_label() {
        let m = Metrics::new(2);
        let s0 = m.writer(0);
        s0.on_ready(Role::Device);
        s0.on_ready(Role::Device);
        s0.on_unready(Role::Device);
        s0.on_ready(Role::Provider);
        s0.on_handshake(Role::Device, Ok(()));
        s0.on_handshake(Role::Provider, Err(ErrorCode::AUTH_FAILED));
        s0.on_close(Role::Device, Close::GoAway(GoAwayReason::SLOW_CONSUMER));
        s0.on_close(Role::Device, Close::Eof);
        s0.on_push(Status::QUEUED);
        s0.on_push(Status::QUEUED);
        s0.on_push(Status::STORE_FAILED);
        s0.on_notify(3);
        s0.on_ack();
        s0.set_stored(41);
        s0.on_store_sync(Duration::from_micros(150), false);
        s0.on_held(true);
        s0.on_held(false);
        s0.on_held(false);
        s0.on_read(Role::Provider, 100);
        s0.on_write(Role::Device, 7);
        s0.on_channel_send(5);
        s0.on_limit(Limit::SlowConsumer);
        let t = m.render();
        let v = |series: &str| value(&t, series);
        assert_eq!(v("pushgate_devices_connected{shard=\"0\"}"), 1.0);
        assert_eq!(v("pushgate_devices_connected{shard=\"1\"}"), 0.0);
        assert_eq!(v("pushgate_providers_connected{shard=\"0\"}"), 1.0);
        assert_eq!(v("pushgate_handshakes_total{shard=\"0\",role=\"device\",result=\"ok\"}"), 1.0);
        assert_eq!(v("pushgate_handshakes_total{shard=\"0\",role=\"provider\",result=\"auth_failed\"}"), 1.0);
        assert_eq!(v("pushgate_handshakes_total{shard=\"0\",role=\"provider\",result=\"ok\"}"), 0.0);
        assert_eq!(
            v("pushgate_connections_closed_total{shard=\"0\",role=\"device\",reason=\"slow_consumer\"}"),
            1.0
        );
        assert_eq!(v("pushgate_connections_closed_total{shard=\"0\",role=\"device\",reason=\"eof\"}"), 1.0);
        assert_eq!(v("pushgate_connections_closed_total{shard=\"0\",role=\"provider\",reason=\"eof\"}"), 0.0);
        assert_eq!(v("pushgate_pushes_total{shard=\"0\",status=\"queued\"}"), 2.0);
        assert_eq!(v("pushgate_pushes_total{shard=\"0\",status=\"store_failed\"}"), 1.0);
        assert_eq!(v("pushgate_pushes_total{shard=\"0\",status=\"delivered\"}"), 0.0);
        assert_eq!(v("pushgate_notifications_delivered_total{shard=\"0\"}"), 3.0);
        assert_eq!(v("pushgate_acks_total{shard=\"0\"}"), 1.0);
        assert_eq!(v("pushgate_stored_notifications{shard=\"0\"}"), 41.0);
        assert_eq!(v("pushgate_store_sync_failures_total{shard=\"0\"}"), 1.0);
        assert_eq!(v("pushgate_store_held_total{shard=\"0\",outcome=\"acked\"}"), 1.0);
        assert_eq!(v("pushgate_store_held_total{shard=\"0\",outcome=\"written\"}"), 2.0);
        assert_eq!(v("pushgate_store_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0001\"}"), 0.0);
        assert_eq!(v("pushgate_store_sync_duration_seconds_bucket{shard=\"0\",le=\"0.0002\"}"), 1.0);
        assert_eq!(v("pushgate_received_bytes_total{shard=\"0\",role=\"provider\"}"), 100.0);
        assert_eq!(v("pushgate_sent_bytes_total{shard=\"0\",role=\"device\"}"), 7.0);
        assert_eq!(v("pushgate_shard_messages_sent_total{shard=\"0\"}"), 5.0);
        assert_eq!(v("pushgate_shard_batches_sent_total{shard=\"0\"}"), 1.0);
        assert_eq!(v("pushgate_limit_hits_total{shard=\"0\",limit=\"slow_consumer\"}"), 1.0);
        assert_eq!(v("pushgate_limit_hits_total{shard=\"1\",limit=\"slow_consumer\"}"), 0.0);
        assert_eq!(v("pushgate_build_info{version=\"0.1.0\"}"), 1.0);
        assert_eq!(m.shard(0).pushes(Status::QUEUED), 2);
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let t = Metrics::new(3).render();
        let mut typed: Vec<(String, String)> = Vec::new();
        let mut helped = Vec::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(!typed.iter().any(|(n, _)| n == name), "{name} typed twice");
                assert_eq!(helped.last().map(String::as_str), Some(name), "HELP must precede TYPE");
                typed.push((name.to_string(), kind.to_string()));
            } else {
                let series = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = typed.last().expect("a sample before any TYPE");
                let ok = series == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|s| series == format!("{family}{s}")));
                assert!(ok, "sample {series} under family {family}");
                let (_, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
            }
            if let Some((name, kind)) = typed.last() {
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name}");
                }
            }
        }
        assert!(typed.len() >= 18, "{} families", typed.len());
        assert!(t.ends_with('\n'));
    }

    #[test]
    fn shard_blocks_do_not_share_cache_lines() {
        let m = Metrics::new(3);
        assert_eq!(std::mem::align_of::<ShardMetrics>(), 128);
        assert_eq!(m.shard(0) as *const ShardMetrics as usize % 128, 0);
    }

    #[test]
    fn a_block_has_one_writer_at_a_time() {
        let m = Metrics::new(2);
        let w = m.writer(0);
        let second = std::panic::catch_unwind(|| m.writer(0));
        assert!(second.is_err(), "a second writer for shard 0 was handed out");
        let other = m.writer(1);
        // The writer moves to its shard's thread; what it wrote is seen after.
        std::thread::spawn(move || (0..1000).for_each(|_| w.on_ack())).join().unwrap();
        assert_eq!(m.shard(0).acks(), 1000);
        let again = m.writer(0);
        again.on_ack();
        assert_eq!(m.shard(0).acks(), 1001);
        drop(other);
    }
}
