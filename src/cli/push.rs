//! `pushgate push`: authenticate as a provider, push one notification to one
//! token (PUSH), several (MULTI_PUSH) or a topic (PUSH_TOPIC), print the
//! result per token (or for the topic).
//!
//! Exit codes: 0 when every token's status is delivered or queued (and, with
//! `--receipt`, every receipt came), 1 when any is not, 2 when the push could
//! not be made (bad arguments, connection, auth).

use std::collections::HashSet;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{ProviderClient, PushRequest, DEFAULT_TTL_S};
use crate::proto::{Kind, Status, Token, PRIORITY_HIGH, PRIORITY_NORMAL};

/// Environment variable read when `--secret` is not given (keeps it out of `ps`).
pub const SECRET_ENV: &str = "PUSHGATE_APP_SECRET";

/// Arguments of `pushgate push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// Device token, 48 hex digits; repeat to push to several devices at once.
    #[arg(long = "token", value_name = "HEX", required_unless_present = "topic", conflicts_with = "topic")]
    pub tokens: Vec<String>,
    /// Push to this topic of the app instead (`~all`: every device of the app).
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
    /// Gateway provider port.
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub addr: String,
    /// App id to authenticate as.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// App secret [default: $PUSHGATE_APP_SECRET].
    #[arg(long)]
    pub secret: Option<String>,
    #[arg(long, value_enum, default_value_t = KindArg::Alert)]
    pub kind: KindArg,
    #[arg(long, value_enum, default_value_t = PriorityArg::High)]
    pub priority: PriorityArg,
    /// Seconds from now until the notification expires; 0 = deliver now or never.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_S)]
    pub expiry_s: u32,
    /// Collapse id: a stored notification with the same id is replaced by this one.
    #[arg(long, value_name = "ID")]
    pub collapse: Option<String>,
    /// One JSON object per token instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask for delivery receipts and wait for one per accepted token. The
    /// gateway hands a receipt to one session of the app, so another connected
    /// provider of the same app may get it instead.
    #[arg(long, conflicts_with = "topic")]
    pub receipt: bool,
    /// How long --receipt waits, seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0, requires = "receipt")]
    pub receipt_wait: f64,
    /// Notification payload; several words are joined with spaces.
    #[arg(value_name = "PAYLOAD")]
    pub payload: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    Alert,
    Badge,
    Background,
}

impl KindArg {
    fn kind(self) -> Kind {
        match self {
            KindArg::Alert => Kind::ALERT,
            KindArg::Badge => Kind::BADGE,
            KindArg::Background => Kind::BACKGROUND,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorityArg {
    High,
    Normal,
}

pub fn run(args: &PushArgs) -> ExitCode {
    match push(args) {
        Ok(code) | Err(code) => code,
    }
}

fn push(args: &PushArgs) -> Result<ExitCode, ExitCode> {
    let tokens = args
        .tokens
        .iter()
        .map(|t| Token::from_hex(t).ok_or_else(|| fail(&format!("not a device token (48 hex digits): {t}"))))
        .collect::<Result<Vec<Token>, ExitCode>>()?;
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => std::env::var(SECRET_ENV).map_err(|_| fail(&format!("give --secret or set {SECRET_ENV}")))?,
    };
    let first = tokens.first().copied().unwrap_or(Token([0; crate::proto::TOKEN_LEN]));
    let mut req = PushRequest::new(first, args.payload.join(" "))
        .with_kind(args.kind.kind())
        .with_priority(match args.priority {
            PriorityArg::High => PRIORITY_HIGH,
            PriorityArg::Normal => PRIORITY_NORMAL,
        })
        .with_ttl(args.expiry_s);
    if let Some(c) = &args.collapse {
        req = req.with_collapse(c.as_bytes());
    }
    let receipt_wait = match args.receipt {
        false => None,
        true => Some(
            Duration::try_from_secs_f64(args.receipt_wait)
                .map_err(|_| fail("--receipt-wait takes a number of seconds"))?,
        ),
    };
    if receipt_wait.is_some() {
        req = req.with_receipt();
    }

    let mut client = ProviderClient::connect(args.addr.as_str(), &args.app, &secret)
        .map_err(|e| fail(&format!("cannot authenticate as {} at {}: {e}", args.app, args.addr)))?;
    if receipt_wait.is_some() {
        client.subscribe_receipts().map_err(|e| fail(&format!("cannot subscribe to receipts: {e}")))?;
    }
    let mut all_accepted = true;
    // (token, msg_id) of every accepted notification, for matching receipts.
    let mut accepted = HashSet::new();
    let multi = tokens.len() > 1;
    if let Some(topic) = &args.topic {
        let r = client.push_topic(topic, &req.note).map_err(|e| fail(&format!("push failed: {e}")))?;
        all_accepted = r.is_accepted();
        let text = if args.json {
            json!({"topic": topic, "status": status_name(r.status), "msg_id": r.msg_id}).to_string()
        } else {
            format!("topic {topic}: {}", describe(r.status, r.msg_id, r.info))
        };
        emit(&text)?;
        return Ok(if all_accepted { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if let [token] = tokens[..] {
        let r = client.push(&req).map_err(|e| fail(&format!("push failed: {e}")))?;
        all_accepted = r.is_accepted();
        if r.is_accepted() {
            accepted.insert((token, r.msg_id));
        }
        print(args.json, &token, r.status, r.msg_id, Some(r.info), false)?;
    } else {
        let results = client.multicast(&tokens, &req).map_err(|e| fail(&format!("push failed: {e}")))?;
        for (token, status, msg_id) in results {
            let ok = matches!(status, Status::DELIVERED | Status::QUEUED);
            all_accepted &= ok;
            if ok {
                accepted.insert((token, msg_id));
            }
            print(args.json, &token, status, msg_id, None, true)?;
        }
    }
    let all_receipts = match receipt_wait {
        Some(wait) => await_receipts(&mut client, accepted, wait, args.json, multi)?,
        None => true,
    };
    Ok(if all_accepted && all_receipts { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints receipts for `pending` as they come; false if some had not come within `wait`.
/// Receipts for other pushes (left over from earlier sessions of the app) are ignored.
fn await_receipts(
    client: &mut ProviderClient,
    mut pending: HashSet<(Token, u64)>,
    wait: Duration,
    json: bool,
    multi: bool,
) -> Result<bool, ExitCode> {
    let end = Instant::now().checked_add(wait);
    while !pending.is_empty() {
        let left = end.map(|e| e.saturating_duration_since(Instant::now()));
        let got = client.recv_receipt(left).map_err(|e| fail(&format!("waiting for receipts: {e}")))?;
        let Some(r) = got else { break };
        if !pending.remove(&(r.token, r.msg_id)) {
            continue;
        }
        let text = if json {
            json!({"event": "receipt", "token": r.token.to_hex(), "msg_id": r.msg_id, "acked_at_ms": r.acked_at_ms})
                .to_string()
        } else if multi {
            format!("{}: receipt for msg {} (acked at unix ms {})", r.token, r.msg_id, r.acked_at_ms)
        } else {
            format!("receipt for msg {} (acked at unix ms {})", r.msg_id, r.acked_at_ms)
        };
        emit(&text)?;
    }
    for (token, msg_id) in &pending {
        eprintln!("pushgate push: no receipt for msg {msg_id} to {token} within {} s", wait.as_secs_f64());
    }
    Ok(pending.is_empty())
}

/// One result line; `info` is only known for a single PUSH (MULTI_RESULT has no such field).
fn print(
    json: bool,
    token: &Token,
    status: Status,
    msg_id: u64,
    info: Option<u64>,
    multi: bool,
) -> Result<(), ExitCode> {
    let text = if json {
        let mut v = json!({"token": token.to_hex(), "status": status_name(status), "msg_id": msg_id});
        if let Some(i) = info.filter(|i| *i != 0) {
            v["info"] = json!(i);
        }
        v.to_string()
    } else {
        let detail = describe(status, msg_id, info.unwrap_or(0));
        if multi {
            format!("{token}: {detail}")
        } else {
            detail
        }
    };
    emit(&text)
}

/// Writes one line and flushes it, so a reader on a pipe sees it at once.
fn emit(text: &str) -> Result<(), ExitCode> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).map_err(|_| ExitCode::FAILURE)
}

fn status_name(s: Status) -> String {
    if s.is_known() {
        s.name().to_string()
    } else {
        format!("status{}", s.0)
    }
}

/// The status with what its number means to a person.
fn describe(s: Status, msg_id: u64, info: u64) -> String {
    match s {
        Status::DELIVERED | Status::QUEUED => format!("{s} (msg {msg_id})"),
        Status::RATE_LIMITED | Status::UNAVAILABLE if info != 0 => format!("{s} (retry after {info} ms)"),
        Status::UNREGISTERED if info != 0 => format!("{s} (at unix ms {info})"),
        _ => status_name(s),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("pushgate push: {msg}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: PushArgs,
    }

    #[test]
    fn tokens_repeat_and_payload_words_follow_the_flags() {
        let t = "ab".repeat(24);
        let a = Cli::try_parse_from(["push", "--token", &t, "--token", &t, "hello", "--json", "world"])
            .unwrap()
            .a;
        assert_eq!(a.tokens.len(), 2);
        assert_eq!(a.payload.join(" "), "hello world");
        assert!(a.json);
        assert_eq!((a.kind, a.priority, a.expiry_s), (KindArg::Alert, PriorityArg::High, DEFAULT_TTL_S));
        assert!(Cli::try_parse_from(["push", "x"]).is_err(), "--token is required");
        let a = Cli::try_parse_from(["push", "--topic", "news", "hi"]).unwrap().a;
        assert_eq!((a.topic.as_deref(), a.tokens.len()), (Some("news"), 0));
        assert!(
            Cli::try_parse_from(["push", "--topic", "n", "--token", &t, "x"]).is_err(),
            "one or the other"
        );
    }

    #[test]
    fn receipt_is_a_flag_so_the_payload_may_follow_it() {
        let t = "ab".repeat(24);
        let a = Cli::try_parse_from(["push", "--token", &t, "--receipt", "hello"]).unwrap().a;
        assert!(a.receipt);
        assert_eq!((a.payload.join(" "), a.receipt_wait), ("hello".to_string(), 10.0));
        assert!(Cli::try_parse_from(["push", "--token", &t, "--receipt-wait", "3", "x"]).is_err());
    }

    #[test]
    fn descriptions_carry_the_number_that_matters() {
        assert_eq!(describe(Status::QUEUED, 7, 0), "queued (msg 7)");
        assert_eq!(describe(Status::RATE_LIMITED, 0, 250), "rate_limited (retry after 250 ms)");
        assert_eq!(describe(Status::BAD_TOKEN, 0, 0), "bad_token");
        assert_eq!(describe(Status(77), 0, 0), "status77");
    }
}
