//! pushgate: a self-hosted push-notification gateway.
pub mod cli;
pub mod client;
pub mod config;
pub mod net;
pub mod proto;
pub mod shard;
pub mod serve;
pub mod server;
pub mod store;
