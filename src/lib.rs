//! pushgate: a self-hosted push-notification gateway.
pub mod proto;
pub mod store;
