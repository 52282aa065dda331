//! `pushgate device`: connect as a device, print the token and every
//! notification (ACKing each), and stay connected across GOAWAYs.
//!
//! Exit codes: 0 after `--count` notifications, 1 when `--timeout` passes
//! without one or another connection took over the token (GOAWAY replaced),
//! 2 when the first connection fails or the gateway refuses the credentials.
//! GOAWAY `replaced` or `unregistered` ends it with 1: reconnecting would undo them.
//! Reconnecting follows protocol.md section 11.4.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{ClientError, DeviceClient, DeviceEvent, DeviceSecret};
use crate::proto::{ErrorCode, GoAwayReason, Kind, PRIORITY_HIGH, PRIORITY_NORMAL};

/// Arguments of `pushgate device`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Gateway device port.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: String,
    /// App id to register under.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// Hex secret file, created (mode 0600) if missing; keeping it keeps the token.
    #[arg(long, default_value = "pushgate-device.secret")]
    pub secret_file: PathBuf,
    /// Device secret as hex (16 to 64 bytes) instead of --secret-file.
    #[arg(long, value_name = "HEX", conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// Heartbeat interval to ask for, seconds; 0 lets the gateway choose.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub keepalive: u16,
    /// Exit after this many notifications.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit 1 if no notification arrives within S seconds (of the start or the previous one).
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Register, then unregister (as an uninstalled app would) and exit 0 once the gateway confirms.
    #[arg(long, conflicts_with_all = ["count", "timeout"])]
    pub unregister: bool,
    /// Subscribe to this topic of the app on every connection (repeat for several).
    #[arg(long = "subscribe", value_name = "TOPIC")]
    pub topics: Vec<String>,
}

/// Reconnect delay cap for the first failed attempt, doubling per attempt up to `BACKOFF_MAX`.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How many recent msg_ids are remembered to drop redeliveries.
const SEEN_KEEP: usize = 1024;

pub fn run(args: &DeviceArgs) -> ExitCode {
    match Device::new(args).and_then(|mut d| d.run()) {
        Ok(code) | Err(code) => code,
    }
}

/// Why the current connection ended and what to do next.
enum Next {
    Reconnect { at_least: Duration },
    Exit(ExitCode),
}

struct Device<'a> {
    args: &'a DeviceArgs,
    secret: DeviceSecret,
    idle: Option<Duration>,
    /// The start, or the last notification: `--timeout` counts from here.
    last: Instant,
    received: u64,
    /// Failed connection attempts in a row.
    attempt: u32,
    seen: Seen,
}

/// The last [`SEEN_KEEP`] msg_ids: a notification sent again after a
/// reconnect (at-least-once delivery) is ACKed but not printed twice.
#[derive(Default)]
struct Seen {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl Seen {
    /// Records `id`; false if it was already seen.
    fn insert(&mut self, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_KEEP {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

/// Error codes after which reconnecting can help (protocol.md section 6.2);
/// the others mean the credentials or this client are wrong.
fn retryable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::INTERNAL | ErrorCode::HANDSHAKE_TIMEOUT) || !code.is_known()
}

impl<'a> Device<'a> {
    fn new(args: &'a DeviceArgs) -> Result<Device<'a>, ExitCode> {
        let secret = match &args.secret {
            Some(hex) => DeviceSecret::from_hex(hex)
                .ok_or_else(|| fail("--secret must be 32 to 128 hex digits (16 to 64 bytes)")),
            None => DeviceSecret::load_or_create(&args.secret_file)
                .map_err(|e| fail(&format!("secret file {}: {e}", args.secret_file.display()))),
        }?;
        let idle = match args.timeout {
            None => None,
            Some(s) => Some(
                Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| fail("--timeout must be a positive number of seconds"))?,
            ),
        };
        Ok(Device {
            args,
            secret,
            idle,
            last: Instant::now(),
            received: 0,
            attempt: 0,
            seen: Seen::default(),
        })
    }

    fn deadline(&self) -> Option<Instant> {
        self.idle.and_then(|d| self.last.checked_add(d))
    }

    fn run(&mut self) -> Result<ExitCode, ExitCode> {
        let mut first = true;
        loop {
            let next = match DeviceClient::connect(
                self.args.addr.as_str(),
                &self.args.app,
                self.secret.as_bytes(),
                self.args.keepalive,
            ) {
                Ok(dev) => self.serve(dev)?,
                Err(ClientError::GoAway { reason, reconnect_ms }) => self.on_goaway(reason, reconnect_ms)?,
                Err(ClientError::ServerError { code, text }) if !retryable(code) => {
                    return Err(fail(&format!("gateway refused registration: {code}: {text}")));
                }
                Err(e) if first => {
                    return Err(fail(&format!("cannot register with {}: {e}", self.args.addr)));
                }
                Err(e) => {
                    eprintln!("pushgate device: reconnect failed: {e}");
                    Next::Reconnect { at_least: Duration::ZERO }
                }
            };
            first = false;
            match next {
                Next::Exit(code) => return Ok(code),
                Next::Reconnect { at_least } => self.pause(at_least)?,
            }
        }
    }

    /// Runs one registered connection until it ends.
    fn serve(&mut self, mut dev: DeviceClient) -> Result<Next, ExitCode> {
        let since = Instant::now();
        self.print_registered(&dev)?;
        if self.args.unregister {
            dev.unregister().map_err(|e| fail(&format!("unregister failed: {e}")))?;
            line(&if self.args.json {
                json!({"event": "unregistered"}).to_string()
            } else {
                "unregistered".into()
            })?;
            return Ok(Next::Exit(ExitCode::SUCCESS));
        }
        for (i, topic) in self.args.topics.iter().enumerate() {
            let req_id = i as u16 + 1;
            dev.subscribe(req_id, topic).map_err(|e| fail(&format!("subscribe to {topic}: {e}")))?;
            let status = dev
                .wait_subscribe_result(req_id, Duration::from_secs(10))
                .map_err(|e| fail(&format!("subscribe to {topic}: {e}")))?;
            if status != crate::proto::SubStatus::OK {
                return Err(fail(&format!("subscribe to {topic}: {status}")));
            }
            line(&if self.args.json {
                json!({"event": "subscribed", "topic": topic}).to_string()
            } else {
                format!("subscribed to {topic}")
            })?;
        }
        if self.args.count.is_some_and(|n| self.received >= n) {
            return Ok(Next::Exit(ExitCode::SUCCESS));
        }
        dev.set_auto_heartbeat(true);
        let next = loop {
            let wait = self.deadline().map(|d| d.saturating_duration_since(Instant::now()));
            match dev.next_event(wait) {
                Ok(None) => return Err(self.timed_out()),
                Ok(Some(ev @ (DeviceEvent::Notify { .. } | DeviceEvent::TopicNotify { .. }))) => {
                    let (msg_id, kind, priority, topic, payload) = match ev {
                        DeviceEvent::Notify { msg_id, kind, priority, payload } => {
                            (msg_id, kind, priority, None, payload)
                        }
                        DeviceEvent::TopicNotify { msg_id, kind, priority, topic, payload } => {
                            (msg_id, kind, priority, Some(topic), payload)
                        }
                        _ => unreachable!("only the two notification events match this arm"),
                    };
                    if self.seen.insert(msg_id) {
                        self.print_notification(msg_id, kind, priority, topic.as_deref(), &payload)?;
                        self.received += 1;
                        self.last = Instant::now();
                    }
                    // A duplicate is ACKed too, or the gateway would send it forever.
                    if let Err(e) = dev.ack(msg_id) {
                        eprintln!("pushgate device: ack {msg_id} failed ({e}); it will be redelivered");
                        break Next::Reconnect { at_least: Duration::ZERO };
                    }
                    if self.args.count.is_some_and(|n| self.received >= n) {
                        return Ok(Next::Exit(ExitCode::SUCCESS));
                    }
                }
                Ok(Some(DeviceEvent::Pong | DeviceEvent::SubscribeResult { .. })) => {}
                Ok(Some(DeviceEvent::GoAway { reason, reconnect_ms })) => {
                    break self.on_goaway(reason, reconnect_ms)?
                }
                Ok(Some(DeviceEvent::Error { code, text })) if !retryable(code) => {
                    return Err(fail(&format!("gateway closed the connection: {code}: {text}")));
                }
                Ok(Some(DeviceEvent::Error { code, text })) => {
                    eprintln!("pushgate device: gateway error {code}: {text}; reconnecting");
                    break Next::Reconnect { at_least: Duration::ZERO };
                }
                Ok(Some(DeviceEvent::Closed)) => {
                    eprintln!("pushgate device: connection closed; reconnecting");
                    break Next::Reconnect { at_least: Duration::ZERO };
                }
                Err(e) => {
                    eprintln!("pushgate device: {e}; reconnecting");
                    break Next::Reconnect { at_least: Duration::ZERO };
                }
            }
        };
        if since.elapsed() >= Duration::from_secs(dev.heartbeat_s().into()) {
            self.attempt = 0;
        }
        Ok(next)
    }

    fn on_goaway(&mut self, reason: GoAwayReason, reconnect_ms: u32) -> Result<Next, ExitCode> {
        // protocol.md 6.3: reconnecting after these would fight another copy
        // of the app, or undo the user's opt-out.
        let final_reason = match reason {
            GoAwayReason::REPLACED => Some("replaced by another connection with this token"),
            GoAwayReason::UNREGISTERED => Some("this device is unregistered"),
            _ => None,
        };
        if self.args.json {
            line(
                &json!({"event": "goaway", "reason": reason.name(), "reconnect_ms": reconnect_ms})
                    .to_string(),
            )?;
        } else if let Some(why) = final_reason {
            line(&format!("goaway: {why}; exiting"))?;
        } else {
            line(&format!("goaway: {reason}, reconnecting after at least {reconnect_ms} ms"))?;
        }
        if final_reason.is_some() {
            return Ok(Next::Exit(ExitCode::FAILURE));
        }
        Ok(Next::Reconnect { at_least: Duration::from_millis(reconnect_ms.into()) })
    }

    /// Sleeps a "full jitter" backoff, `random(0, min(300 s, 1 s × 2^attempt))`,
    /// but at least `at_least`: a fleet told to leave at once must not return at once.
    fn pause(&mut self, at_least: Duration) -> Result<(), ExitCode> {
        let cap = BACKOFF_BASE.saturating_mul(1 << self.attempt.min(16)).min(BACKOFF_MAX);
        let mut r = [0u8; 2];
        let frac = match getrandom::getrandom(&mut r) {
            Ok(()) => u16::from_be_bytes(r) as f64 / u16::MAX as f64,
            Err(_) => 0.5,
        };
        let delay = cap.mul_f64(frac).max(at_least);
        self.attempt = self.attempt.saturating_add(1);
        match self.deadline() {
            Some(d) if Instant::now().checked_add(delay).is_none_or(|t| t >= d) => {
                thread::sleep(d.saturating_duration_since(Instant::now()));
                Err(self.timed_out())
            }
            _ => {
                thread::sleep(delay);
                Ok(())
            }
        }
    }

    fn timed_out(&self) -> ExitCode {
        let secs = self.idle.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        eprintln!("pushgate device: no notification within {secs} s");
        ExitCode::FAILURE
    }

    fn print_registered(&self, dev: &DeviceClient) -> Result<(), ExitCode> {
        if self.args.json {
            line(
                &json!({
                    "event": "registered",
                    "token": dev.token().to_hex(),
                    "heartbeat_s": dev.heartbeat_s(),
                    "missed": dev.missed(),
                })
                .to_string(),
            )
        } else {
            line(&format!(
                "token: {}\nheartbeat: {}s, missed: {}",
                dev.token(),
                dev.heartbeat_s(),
                dev.missed()
            ))
        }
    }

    fn print_notification(
        &self,
        msg_id: u64,
        kind: Kind,
        priority: u8,
        topic: Option<&str>,
        payload: &[u8],
    ) -> Result<(), ExitCode> {
        let text = String::from_utf8_lossy(payload);
        if !self.args.json {
            let via = topic.map(|t| format!(" topic {t}")).unwrap_or_default();
            return line(&format!(
                "[msg {msg_id}{via}] {} {}: {text}",
                kind_name(kind),
                priority_name(priority)
            ));
        }
        let mut v = json!({
            "event": "notification",
            "msg_id": msg_id,
            "kind": kind_name(kind),
            "priority": priority,
            "payload": text,
        });
        if let Some(t) = topic {
            v["topic"] = json!(t);
        }
        // The lossy text cannot carry binary payloads; hex keeps them exact.
        if std::str::from_utf8(payload).is_err() {
            v["payload_hex"] = json!(hex::encode(payload));
        }
        line(&v.to_string())
    }
}

/// The kind's label, or its number when this version does not know it.
fn kind_name(kind: Kind) -> String {
    if kind.is_known() {
        kind.name().to_string()
    } else {
        format!("kind{}", kind.0)
    }
}

fn priority_name(p: u8) -> String {
    match p {
        PRIORITY_HIGH => "high".into(),
        PRIORITY_NORMAL => "normal".into(),
        other => format!("priority{other}"),
    }
}

/// Writes one line and flushes: readers (tests) consume stdout through a pipe.
/// A closed stdout ends the program; nobody is listening any more.
fn line(s: &str) -> Result<(), ExitCode> {
    let mut out = io::stdout().lock();
    writeln!(out, "{s}").and_then(|()| out.flush()).map_err(|_| ExitCode::FAILURE)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("pushgate device: {msg}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: DeviceArgs,
    }

    #[test]
    fn secret_and_secret_file_exclude_each_other_but_the_default_file_does_not() {
        let hex = "00".repeat(16);
        assert!(Cli::try_parse_from(["device", "--secret", &hex]).is_ok());
        assert!(Cli::try_parse_from(["device", "--secret", &hex, "--secret-file", "f"]).is_err());
    }

    #[test]
    fn bad_secret_or_timeout_is_a_usage_error() {
        let args = |extra: &[&str]| {
            let mut v = vec!["device"];
            v.extend_from_slice(extra);
            Cli::try_parse_from(v).unwrap().a
        };
        let hex = "00".repeat(16);
        assert!(Device::new(&args(&["--secret", "00"])).is_err());
        assert!(Device::new(&args(&["--secret", &hex, "--timeout", "0"])).is_err());
        assert!(Device::new(&args(&["--secret", &hex, "--timeout=-1"])).is_err());
        assert!(Device::new(&args(&["--secret", &hex, "--timeout", "0.5"])).is_ok());
    }

    #[test]
    fn redeliveries_are_recognised_within_the_window() {
        let mut s = Seen::default();
        assert!(s.insert(5) && s.insert(3));
        assert!(!s.insert(5));
        for id in 100..100 + SEEN_KEEP as u64 {
            s.insert(id);
        }
        assert!(s.insert(5), "forgotten after {SEEN_KEEP} newer ids");
        assert_eq!(s.ids.len(), s.order.len());
    }

    #[test]
    fn names_fall_back_to_numbers() {
        assert_eq!((kind_name(Kind::BADGE), kind_name(Kind(9))), ("badge".into(), "kind9".into()));
        assert_eq!(
            (priority_name(10), priority_name(5), priority_name(1)),
            ("high".into(), "normal".into(), "priority1".into())
        );
    }
}
