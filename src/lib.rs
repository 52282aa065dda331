//! pushgate: a self-hosted push-notification gateway.
//!
//! Devices keep one long-lived TCP connection, register with a per-install
//! secret and get a stable device token; providers (app backends) log in per
//! app with a challenge-response and push to tokens; the gateway delivers to
//! the connected device, or stores the notification until it connects.
//! The wire format is specified in `protocol.md`.
//!
//! Topics: a device subscribes (or a provider subscribes it) to a topic of
//! its app; a PUSH_TOPIC is logged once by the topic's owner shard and fanned
//! out to every shard's connected subscribers, and a reconnecting device
//! catches up from the log from its own position. Cluster mode runs several
//! nodes as one service over NATS JetStream (`cluster`).
//!
//! ```text
//!  provider ──PUSH──▶ shard A (provider's connection)          HTTP, a remote node: Ingress
//!                        │ Shard::submit: Note::check, token MAC,  ◀── (a request and a callback)
//!                        │ rate limit; Requests keeps the answer's reply target
//!                        ▼ Router: crossbeam channel + Waker (one wake per batch)
//!                     shard B = Router::owner(token)  ──store.append──▶ Store
//!                        │ connected? NOTIFY in id order, window of unacked ids
//!                        ▼
//!                      device ──ACK──▶ shard B ──store.ack──▶ Store
//!  shard B: Commit ──batch──▶ store sync thread ──fsync──▶ ShardMsg::Durable
//!  shard B ──RESULT (once its batch is durable)──▶ shard A: Requests ──▶ reply target
//! ```
//!
//! # Layout
//! - [`proto`]: sans-IO core: frame codec, wire codes, tokens, session rules.
//! - [`shard`]: one mio event loop per core: connections, timers, the router, requests and
//!   their reply targets, group commit, delivery, limits; `shard::ingress` for front ends.
//! - [`store`]: the `Store` trait and its implementations.
//! - [`cluster`]: cluster mode on NATS JetStream: the engine thread, the route table,
//!   forwarding of push batches between nodes, the offline queue, receipts, tombstones.
//! - [`topics`]: the node's topic logs (one copy per topic message) and delivery counts.
//! - [`gateway`]: assembles listeners and shards into a running [`gateway::Gateway`].
//! - [`config`]: TOML configuration with embedded defaults.
//! - [`net`]: SO_REUSEPORT listeners and the open-files limit.
//! - [`client`]: blocking device and provider clients (CLI, tests, load test).
//! - [`metrics`]: lock-free per-shard counters and histograms, Prometheus text.
//! - [`http`]: the HTTP/1.1 + HTTP/2 JSON push API (its own listener and tokio runtime, JWT auth).
//! - [`admin`]: the admin HTTP listener: /metrics, /healthz, /readyz, POST /drain.
//! - [`tls`]: optional TLS (rustls) per listener: loading and the read/write pipe.
//! - [`cli`]: the `device` and `push` subcommands; [`serve`] is `pushgate serve`.

pub mod admin;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod serve;
pub mod shard;
pub mod store;
pub mod tls;
pub mod topics;
