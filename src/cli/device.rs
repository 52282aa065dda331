//! `pushgate device`: connect as a device, print the token and every notification.

/// Arguments of `pushgate device`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {}

pub fn run(_args: &DeviceArgs) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
