//! The `pushgate device`, `push` and `token` subcommands (`serve` lives in main.rs).

pub mod device;
pub mod push;
pub mod token;
