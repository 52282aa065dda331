//! `pushgate serve`: load the config, start the shards, wait for a signal, drain.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `pushgate serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file; without it, embedded defaults are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn run(_args: &ServeArgs) -> ExitCode {
    ExitCode::FAILURE
}
