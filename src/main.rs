//! The `pushgate` binary: `serve` (the default), `device`, `push` and `token`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pushgate", version, about = "Self-hosted push-notification gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default when no subcommand is given).
    Serve(pushgate::serve::ServeArgs),
    /// Connect as a device; print the token and every notification received.
    Device(pushgate::cli::device::DeviceArgs),
    /// Push one notification to a device token and print the result.
    Push(pushgate::cli::push::PushArgs),
    /// Print a bearer token (JWT, valid for an hour) for the HTTP API.
    Token(pushgate::cli::token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        None => pushgate::serve::run(&pushgate::serve::ServeArgs::default()),
        Some(Cmd::Serve(a)) => pushgate::serve::run(&a),
        Some(Cmd::Device(a)) => pushgate::cli::device::run(&a),
        Some(Cmd::Push(a)) => pushgate::cli::push::run(&a),
        Some(Cmd::Token(a)) => pushgate::cli::token::run(&a),
    }
}
