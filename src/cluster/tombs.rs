//! Tombstones cluster-wide: one key per unregistered token in the KV bucket
//! `<prefix>_TOMB` (its stream made by hand, like the route bucket), the value
//! `<at_ms> <app_id>`. A watch hands every node the others' changes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
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
            ctx.js.get_or_create_stream(cfg).await.map_err(|e| {
                log::warn!("engine: tombstone bucket {name}: {e}");
                EngineError::Unavailable
            })?;
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
            kv.put(t.token.to_hex(), encode_value(&t.app_id, t.at_ms).into()).await.map_err(unavailable)?;
            Ok(())
        })
    }

    /// The device registered again: its tombstone goes.
    pub fn lift_tombstone(&self, token: Token, done: Done<()>) {
        self.submit(Op::Tombstone, done, move |ctx| async move {
            let kv = bucket(&ctx).await?;
            kv.delete(token.to_hex()).await.map_err(unavailable)
        })
    }

    /// Every tombstone, read from the bucket's leader, under `timeout`.
    pub fn list_tombstones(&self, timeout: Duration, done: Done<Vec<Tombstone>>) {
        self.submit_within(Op::Tombstone, timeout, done, move |ctx| async move {
            let kv = bucket(&ctx).await?;
            let keys: Vec<String> =
                kv.keys().await.map_err(unavailable)?.filter_map(|k| async { k.ok() }).collect().await;
            let entries = futures_util::stream::iter(keys)
                .map(|k| async move { (kv.entry(k.as_str()).await, k) })
                .buffer_unordered(64);
            let mut out = Vec::new();
            futures_util::pin_mut!(entries);
            while let Some((e, key)) = entries.next().await {
                match e.map_err(unavailable)? {
                    Some(e) if e.operation == Operation::Put => match decode(&key, &e.value) {
                        Some(t) => out.push(t),
                        None => log::warn!("engine: tombstone {key}: malformed, ignored"),
                    },
                    _ => {}
                }
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
