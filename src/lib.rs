//! pushgate: a self-hosted push-notification gateway.
pub mod cli;
pub mod client;
pub mod proto;
pub mod serve;
pub mod store;
