//! The `pushgate device` and `pushgate push` subcommands (`serve` lives in main.rs).

pub mod device;
pub mod push;
