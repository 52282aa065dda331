//! Blocking device and provider clients over std::net, for the CLI, the
//! integration tests and the load test.
//!
//! Both clients own one `TcpStream` and a read buffer (module `conn`); every read
//! takes an optional timeout, and nothing the gateway sends can make them
//! panic: bytes that do not decode become [`ClientError::Protocol`].
//!
//! ```no_run
//! use pushgate::client::{DeviceClient, DeviceEvent, ProviderClient, PushRequest};
//! # fn main() -> Result<(), pushgate::client::ClientError> {
//! let mut dev = DeviceClient::connect("127.0.0.1:7700", "demo", &[7u8; 32], 0)?;
//! let mut app = ProviderClient::connect("127.0.0.1:7701", "demo", "app secret")?;
//! let res = app.push(&PushRequest::new(dev.token(), "hello"))?;
//! if let Some(DeviceEvent::Notify { msg_id, .. }) = dev.next_event(None)? {
//!     dev.ack(msg_id)?;
//! }
//! # let _ = res; Ok(()) }
//! ```

mod conn;
pub mod device;
#[cfg(test)]
mod fake;
pub mod provider;
pub mod request;

use std::fmt;
use std::io;

use crate::proto::{ErrorCode, GoAwayReason};

pub use conn::CONNECT_TIMEOUT;
pub use device::{DeviceClient, DeviceEvent, DeviceSecret};
pub use provider::{ProviderClient, MAX_BUFFERED_RECEIPTS};
pub use request::{expiry_in, new_note, PushRequest, PushResult, Receipt, Reply, TopicStats, DEFAULT_TTL_S};

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed (connect refused, resolve failure, write timeout...).
    Io(io::Error),
    /// The gateway sent bytes that are not a valid frame, or a frame not legal here.
    Protocol(String),
    /// The gateway sent ERROR and is closing the connection.
    ServerError { code: ErrorCode, text: String },
    /// The gateway sent GOAWAY; reconnect after `reconnect_ms` unless the reason says not to.
    GoAway { reason: GoAwayReason, reconnect_ms: u32 },
    /// The gateway closed the connection.
    Closed,
    /// The expected answer did not arrive in time.
    Timeout,
    /// The caller asked for something the wire format cannot carry (an over-long field).
    Invalid(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Protocol(s) => write!(f, "protocol error: {s}"),
            ClientError::ServerError { code, text } => write!(f, "gateway error {code}: {text}"),
            ClientError::GoAway { reason, reconnect_ms } => {
                write!(f, "gateway sent goaway ({reason}), reconnect in {reconnect_ms} ms")
            }
            ClientError::Closed => f.write_str("connection closed by the gateway"),
            ClientError::Timeout => f.write_str("timed out waiting for the gateway"),
            ClientError::Invalid(s) => write!(f, "invalid request: {s}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}
