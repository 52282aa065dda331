//! `pushgate push`: authenticate as a provider, push one notification, print the result.

/// Arguments of `pushgate push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {}

pub fn run(_args: &PushArgs) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
