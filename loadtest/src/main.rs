//! pushgate-loadtest: drives pushgate (or Mosquitto, or NATS) with simulated
//! devices and providers and reports connect rate, memory per device,
//! throughput, end-to-end latency and whether every accepted message arrived.
//!
//! ```text
//!   parent (run)  --spawns-->  worker processes (device threads, mio)
//!      |  providers (threads)       |  JSON lines on stdout every 200 ms
//!      v                            v
//!   gateway provider port      gateway device port
//! ```
//!
//! # Layout
//! - `opts`: the command line.
//! - `run`: the parent: spawns workers, runs providers, drives a scenario.
//! - `broadcast`: the broadcast scenario's phases and its topic publishers.
//! - `h2floor`: `h2-floor`, an HTTP/2 server on `h2` doing no work, for the HTTP/2 API's ceiling.
//! - `report`: summary table, JSON object, SVG plot.
//! - `worker`, `devices`: a worker process and its mio device threads.
//! - `provider`: pipelined pushers for each target.
//! - `wire`: device-side codecs for pushgate, MQTT 3.1.1 and NATS.
//! - `stats`, `util`: counters, histograms, fingerprints, clock, addresses.

mod broadcast;
mod devices;
mod h2floor;
mod opts;
mod provider;
mod report;
mod run;
mod stats;
mod util;
mod wire;
mod worker;

use clap::Parser;

fn main() {
    let cli = opts::Cli::parse();
    let code = match cli.cmd {
        opts::Command::Run(o) => match run::main(o) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        opts::Command::H2Floor { listen, threads, answer_every_ms } => {
            match h2floor::main(listen, threads, answer_every_ms) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("h2-floor: {e}");
                    2
                }
            }
        }
        opts::Command::Worker { spec } => {
            let spec: worker::WorkerSpec = match serde_json::from_str(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("worker: bad spec: {e}");
                    std::process::exit(2);
                }
            };
            match worker::run(spec) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("worker: {e}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
