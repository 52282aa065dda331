//! Cluster mode: the engine bridge to NATS JetStream (one thread per node),
//! the route table (which node holds a token's device) and forwarding of
//! pushes between nodes. Shards never block on it: they hand it work over a
//! bounded channel and get every completion back exactly once, by callback.
//!
//! ```text
//!  shard ──Engine::claim / release / lookup / forward──▶ bounded queue ──▶ engine thread
//!                                                                         (tokio, async-nats)
//!  shard channel + Waker ◀── done(Result<_, EngineError>) ◀── deadline or NATS answer
//!  remote node ──<prefix>.node.<id>.push──▶ engine thread ──PushHandler──▶ Ingress (the lead's wiring)
//! ```
//!
//! # Layout
//! - [`engine`]: the thread, its runtime and NATS client, deadlines, exactly-once completions.
//! - [`metrics`]: plain atomic counters of engine operations.
//! - [`routes`]: the route table in a JetStream KV bucket, claims and releases by revision.
//! - [`wire`]: the binary encoding of forwarded push batches and their results (sans-IO).
//! - [`forward`]: request/reply of push batches between nodes, and the responder side.
//! - [`control`]: telling the node whose claim was replaced to close its session.
//! - [`receipts`]: receipts to a node where a provider session of their app subscribed.
//! - [`queue`]: the offline queue stream, one literal subject per token (the cluster `Store`'s backend).
//! - [`tombs`]: tombstones in a KV bucket, and a watch of other nodes' changes.
//! - [`topics`]: the topic stream every node replays and follows, expiry-0 topic messages, delivery counts.
//! - [`subs`]: each device's subscriptions in a KV bucket, updated by revision; change notices.

pub mod control;
pub mod engine;
pub mod forward;
pub mod metrics;
pub mod queue;
pub mod receipts;
pub mod routes;
pub mod subs;
pub mod tombs;
pub mod topics;
pub mod wire;

pub use engine::{Engine, EngineError};
