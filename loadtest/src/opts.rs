//! The command line.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

use crate::wire::Target;

#[derive(Parser, Debug)]
#[command(name = "pushgate-loadtest", about = "Load tests for pushgate, Mosquitto and NATS over loopback")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one scenario against one target.
    Run(Box<RunOpts>),
    /// An HTTP/2 server on `h2` that does no work, answering every request with a fixed body: the
    /// ceiling of any server on `h2` under the same load (loadtest/http-vs-binary.sh).
    H2Floor {
        #[arg(long, default_value = "127.0.0.1:17799")]
        listen: SocketAddr,
        /// Runtime threads (one is its best on 2 cores; the gateway has one per core by default).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Hold the answers for a tick of this many ms (as for a group commit); 0 = answer at once.
        #[arg(long, default_value_t = 0)]
        answer_every_ms: u64,
    },
    /// Internal: a device worker process, started by `run`.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Scenario {
    /// Connect N devices and hold them: connect rate, failures, server memory per device.
    Idle,
    /// N devices, P providers pushing: delivered/s and end-to-end latency.
    Throughput,
    /// All devices drop and reconnect at once: time until all are registered again.
    Storm,
    /// Push to offline devices, then connect them: drain rate.
    Offline,
    /// Throughput with stored notifications (expiry > 0).
    Durable,
    /// Every device in one topic; topic pushes: time to the last device, fan-out and catch-up rates.
    Broadcast,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Throughput => "throughput",
            Scenario::Storm => "storm",
            Scenario::Offline => "offline",
            Scenario::Durable => "durable",
            Scenario::Broadcast => "broadcast",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "pushgate")]
    pub target: Target,
    /// Device-port addresses, comma separated; devices spread round robin.
    /// Default: 127.0.0.1:7700 (pushgate), :1883 (mosquitto), :4222 (nats).
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<SocketAddr>,
    /// Provider-port addresses, one per gateway in the same order as --addr.
    /// Default: 127.0.0.1:7701 for pushgate, the device address for the peers.
    #[arg(long, value_delimiter = ',')]
    pub provider_addr: Vec<SocketAddr>,
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Worker processes; 0 = enough to stay under the open-files limit, at least 2.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Device threads per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Provider connections (at least one per gateway). Default: 0 for idle and storm, 2 otherwise.
    #[arg(long)]
    pub providers: Option<usize>,
    /// Total pushes per second over all providers; 0 = as fast as the server accepts.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of pushing (throughput, durable, storm with providers).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds to hold the devices connected (idle; storm before and after).
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Payload bytes (at least 24: send time, device, sequence).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Notification validity in seconds; 0 = now or never. Default: 0, or 3600 for durable and offline.
    #[arg(long)]
    pub expiry: Option<u32>,
    /// Most pushes in flight per provider (pushgate also caps it at AUTH_OK's max_in_flight).
    #[arg(long, default_value_t = 1000)]
    pub window: u32,
    /// Push to devices in turn instead of at random.
    #[arg(long)]
    pub round_robin: bool,
    /// Notifications per device in the offline scenario.
    #[arg(long, default_value_t = 5)]
    pub per_device: u32,
    /// Broadcast: the topic every device subscribes to (`~all`: pushgate's broadcast, no SUBSCRIBE).
    #[arg(long, default_value = "bcast")]
    pub topic: String,
    /// Broadcast: topic pushes while every device is connected, one at a time.
    #[arg(long, default_value_t = 50)]
    pub messages: u32,
    /// Broadcast: topic pushes while every device is offline, then all reconnect at once.
    #[arg(long, default_value_t = 50)]
    pub catchup: u32,
    /// Broadcast: pause after a push has reached every device, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub gap_ms: u64,
    /// Once every device is registered, write their tokens here, one 48-hex-digit line each (pushgate
    /// only): a push client outside the harness (h2load, curl) can then push to devices it holds.
    #[arg(long)]
    pub tokens_out: Option<std::path::PathBuf>,
    /// The server's data directory: its growth over the pushes gives stored bytes per message.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// The app's provider secret as text.
    #[arg(long, default_value = "")]
    pub secret: String,
    /// The app's provider secret as hex (wins over --secret).
    #[arg(long)]
    pub secret_hex: Option<String>,
    /// Heartbeat interval the devices ask for, seconds.
    #[arg(long, default_value_t = 30)]
    pub keepalive: u16,
    /// Fraction of devices that drop and reconnect per second, at random.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Connections in progress at once per device thread.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    #[arg(long, default_value_t = 200)]
    pub backoff_min_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub backoff_max_ms: u64,
    /// Seconds to wait for in-flight notifications to arrive after pushing stops.
    #[arg(long, default_value_t = 15)]
    pub drain_secs: u64,
    /// Pids of the server processes to measure (VmRSS), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Start the server with this shell command, measure it, and stop it at the end.
    #[arg(long)]
    pub spawn: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object on stdout (progress and the table go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of throughput and latency over time.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 900)]
    pub max_secs: u64,
}

impl RunOpts {
    pub fn device_addrs(&self) -> Vec<SocketAddr> {
        if !self.addr.is_empty() {
            return self.addr.clone();
        }
        let port = match self.target {
            Target::Pushgate => 7700,
            Target::Mosquitto => 1883,
            Target::Nats => 4222,
        };
        vec![SocketAddr::from(([127, 0, 0, 1], port))]
    }

    pub fn provider_addrs(&self) -> Vec<SocketAddr> {
        if !self.provider_addr.is_empty() {
            return self.provider_addr.clone();
        }
        match self.target {
            Target::Pushgate => {
                self.device_addrs().iter().map(|a| SocketAddr::new(a.ip(), a.port() + 1)).collect()
            }
            _ => self.device_addrs(),
        }
    }

    pub fn provider_count(&self) -> usize {
        let default = match self.scenario {
            Scenario::Idle | Scenario::Storm => 0,
            _ => 2,
        };
        self.providers.unwrap_or(default)
    }

    pub fn expiry_s(&self) -> u32 {
        let default = match self.scenario {
            Scenario::Durable | Scenario::Offline | Scenario::Broadcast => 3600,
            _ => 0,
        };
        self.expiry.unwrap_or(default)
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, String> {
        match &self.secret_hex {
            Some(h) => {
                let h = h.trim();
                if h.len() % 2 != 0 {
                    return Err("--secret-hex: odd length".into());
                }
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| format!("--secret-hex: {e}")))
                    .collect()
            }
            None => Ok(self.secret.as_bytes().to_vec()),
        }
    }
}
