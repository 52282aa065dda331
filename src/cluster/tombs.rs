//! Tombstones cluster-wide: one key per unregistered token in the KV bucket
//! `<prefix>_TOMB` (its stream made by hand, like the route bucket), the value
//! `<at_ms> <app_id>`. A watch hands every node the others' changes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::queue;
use super::EngineError;
use crate::proto::frame::is_valid_app_id;
use crate::proto::Token;
use crate::store::Tombstone;

/// The tombstone bucket's name.
pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}_TOMB")
}

/// A tombstone's KV value.
pub fn encode_value(app_id: &str, at_ms: u64) -> String {
    format!("{at_ms} {app_id}")
}

/// A tombstone from its key and value; `None` for anything malformed.
pub fn decode(key: &str, value: &[u8]) -> Option<Tombstone> {
    let token = Token::from_hex(key)?;
    let (at, app) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    let at_ms = at.parse().ok()?;
    is_valid_app_id(app).then(|| Tombstone { token, app_id: app.to_string(), at_ms })
}

/// A change another node (or this one) made to the tombstones.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TombEvent {
    /// `token` unregistered.
    Put(Tombstone),
    /// `token` registered again.
    Lifted(Token),
}

/// What a watch calls, on the engine thread, for every change; it must not block.
pub type TombWatcher = Arc<dyn Fn(TombEvent) + Send + Sync>;

async fn bucket(ctx: &Arc<Ctx>) -> Result<&kv::Store, EngineError> {
    ctx.tombs
        .get_or_try_init(|| async {
            let name = bucket_name(&ctx.cfg.stream_prefix);
            let cfg = super::routes::bucket_stream(&name, ctx.cfg.replicas);
            queue::ensure_stream(ctx, cfg).await;
            ctx.js.get_key_value(name.as_str()).await.map_err(|e| {
                log::warn!("engine: tombstone bucket {name}: {e}");
                EngineError::Unavailable
            })
        })
        .await
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    log::debug!("engine: tombstone: {e}");
    EngineError::Unavailable
}

impl EngineHandle {
    /// UNREGISTER: purges `t.token`'s queue, then writes its tombstone.
    pub fn unregister_token(&self, t: Tombstone, done: Done<()>) {
        self.submit(Op::Tombstone, done, move |ctx| async move {
            queue::purge(&ctx, &t.token).await?;
            let kv = bucket(&ctx).await?;
            // Retried until the deadline: a bucket just made may not be known to
            // every server yet ("no stream found"); a second put of one value is harmless.
            let (key, value) = (t.token.to_hex(), bytes::Bytes::from(encode_value(&t.app_id, t.at_ms)));
            queue::retry("tombstone put", || kv.put(key.as_str(), value.clone())).await;
            Ok(())
        })
    }

    /// The device registered again: its tombstone goes.
    pub fn lift_tombstone(&self, token: Token, done: Done<()>) {
        self.submit(Op::Tombstone, done, move |ctx| async move {
            let kv = bucket(&ctx).await?;
            let key = token.to_hex();
            queue::retry("tombstone delete", || kv.delete(key.as_str())).await;
            Ok(())
        })
    }

    /// Every tombstone, read from the bucket stream's leader under `timeout`
    /// (a consumer, as `kv.keys()` makes, may sit on a replica that lags).
    pub fn list_tombstones(&self, timeout: Duration, done: Done<Vec<Tombstone>>) {
        self.submit_within(Op::Tombstone, timeout, done, move |ctx| async move {
            let kv = bucket(&ctx).await?;
            let info = kv.stream.get_info().await.map_err(unavailable)?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            if info.state.messages == 0 || last < first {
                return Ok(Vec::new());
            }
            // The bucket keeps one message per key, so a walk reads each once;
            // eight walks over parts of the sequence range run at once.
            let prefix = format!("$KV.{}.", kv.name);
            let span = (last - first).div_ceil(WALKS) + 1;
            let walks = (0..WALKS)
                .map(|i| first + i * span)
                .filter(|lo| *lo <= last)
                .map(|lo| walk(&kv.stream, &prefix, lo, (lo + span - 1).min(last)));
            let mut out = Vec::new();
            for part in futures_util::future::join_all(walks).await {
                out.extend(part?);
            }
            Ok(out)
        })
    }

    /// Calls `on` for every tombstone written or lifted from now on (first
    /// for each one there is now), on the engine thread, until the engine
    /// stops; the watch is re-made after an error.
    pub fn watch_tombstones(&self, on: TombWatcher) {
        self.spawn(move |ctx| async move {
            loop {
                if let Err(e) = watch(&ctx, &on).await {
                    log::warn!("engine: tombstone watch: {e}; again in 1 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

const WALKS: u64 = 8;

/// The tombstones stored at sequences `lo..=hi`, one leader read each.
async fn walk(
    stream: &async_nats::jetstream::stream::Stream,
    prefix: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<Tombstone>, EngineError> {
    let filter = format!("{prefix}>");
    let mut out = Vec::new();
    let mut seq = lo;
    while seq <= hi {
        let m = match stream.raw_message_builder().sequence(seq).next_by_subject(filter.as_str()).send().await
        {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(unavailable(e)),
        };
        if m.sequence < seq {
            return Err(EngineError::BadReply);
        }
        if m.sequence > hi {
            break;
        }
        seq = m.sequence + 1;
        // A delete or purge marker carries the operation header; a put none.
        if m.headers.get(KV_OPERATION).is_some() {
            continue;
        }
        let key = m.subject.as_str().strip_prefix(prefix).unwrap_or("");
        match decode(key, &m.payload) {
            Some(t) => out.push(t),
            None => log::warn!("engine: tombstone {key}: malformed, ignored"),
        }
    }
    Ok(out)
}

const KV_OPERATION: &str = "KV-Operation";

async fn watch(ctx: &Arc<Ctx>, on: &TombWatcher) -> Result<(), EngineError> {
    let kv = bucket(ctx).await?;
    let mut w = kv.watch_all().await.map_err(unavailable)?;
    while let Some(e) = w.next().await {
        let e = e.map_err(unavailable)?;
        let ev = match e.operation {
            Operation::Put => decode(&e.key, &e.value).map(TombEvent::Put),
            Operation::Delete | Operation::Purge => Token::from_hex(&e.key).map(TombEvent::Lifted),
        };
        match ev {
            Some(ev) => on(ev),
            None => log::warn!("engine: tombstone {}: malformed, ignored", e.key),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_are_refused() {
        let t = Token([9; 24]);
        let v = encode_value("app.one", 1234);
        assert_eq!(
            decode(&t.to_hex(), v.as_bytes()),
            Some(Tombstone { token: t, app_id: "app.one".into(), at_ms: 1234 })
        );
        assert_eq!(decode("zz", v.as_bytes()), None);
        for bad in [&b"1234"[..], b"x app", b"1 ", b"1 a b", b"\xff\xfe", b""] {
            assert_eq!(decode(&t.to_hex(), bad), None, "{bad:?}");
        }
        assert_eq!(bucket_name("pg"), "pg_TOMB");
    }
}
