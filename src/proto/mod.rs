//! The sans-IO protocol core: frame codec, wire codes, tokens and session
//! rules. No sockets, no clocks: callers pass bytes (and time) in and act on
//! what comes back, so everything here is testable in memory.

pub mod codes;
pub mod frame;
pub mod note;
pub mod proxy;
pub mod session;
pub mod token;
pub mod topic;

pub use codes::{ErrorCode, GoAwayReason, Kind, Status, SubStatus, PRIORITY_HIGH, PRIORITY_NORMAL};
pub use frame::{split_frame, Frame, FrameError, Hello, MultiPush, Notification, Push, PushTopic, RawFrame};
pub use note::Note;
pub use session::{
    on_device_frame, on_provider_frame, split_on_port, Apps, DeviceEvent, DeviceState, ProtoError,
    ProviderEvent, ProviderState,
};
pub use token::{Token, TokenHasher, TokenKey, TOKEN_LEN};
