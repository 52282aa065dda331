//! The route table: which node holds a token's device now, one key per
//! token in a JetStream KV bucket. Claims and releases are compare-and-swap
//! on the key's revision, so a stale node never overwrites a newer claim and
//! a late release after someone else claimed changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream;

use super::engine::{Ctx, Done, EngineHandle};
use super::metrics::Op;
use super::EngineError;
use crate::proto::Token;

/// A token's current holder.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Route {
    pub node: String,
    /// The claim's revision: what a release by the holder names.
    pub revision: u64,
}

/// What a claim made of the table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Claimed {
    /// This node holds the token now; `previous` held it before (this node
    /// itself for a reconnect here; another node must close its session).
    Won { revision: u64, previous: Option<String> },
    /// Another claim landed between our read and our write; `holder` is the
    /// table as read after (None if it was released meanwhile).
    Lost { holder: Option<Route> },
}

/// What a release did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Released {
    /// The claim was ours and is gone.
    Released,
    /// Someone claimed since (or it was released already): nothing changed.
    NotHolder,
}

impl EngineHandle {
    /// Claims `token` for this node (on HELLO).
    pub fn claim(&self, token: Token, done: Done<Claimed>) {
        self.submit(Op::Claim, done, move |ctx| async move { claim(&ctx, &token).await })
    }

    /// Releases this node's claim of `token` made at `revision` (on close).
    pub fn release(&self, token: Token, revision: u64, done: Done<Released>) {
        self.submit(Op::Release, done, move |ctx| async move { release(&ctx, &token, revision).await })
    }

    /// This node's id slot (`0..slots`): the one whose key `slot.<k>` names
    /// this node, or else the first free one, created by compare-and-swap.
    /// Message ids carry it, so ids made on different nodes never collide.
    pub fn claim_slot(&self, slots: u8, done: Done<u8>) {
        self.submit(Op::Claim, done, move |ctx| async move { claim_slot(&ctx, slots).await })
    }

    /// Who holds `token`, read from the bucket's stream leader.
    pub fn lookup(&self, token: Token, done: Done<Option<Route>>) {
        self.submit(Op::Lookup, done, move |ctx| async move {
            let kv = bucket(&ctx).await?;
            lookup(kv, &token.to_hex()).await
        })
    }
}

/// The KV settings of the route bucket's stream, made by hand: async-nats
/// 0.51's `create_key_value` fails against nats-server 2.9.
pub(crate) fn bucket_stream(name: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: 1024,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        // Reads decide races: they go to the stream leader, not a direct get from a follower.
        allow_direct: false,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The route bucket, its stream created on first use (then kept).
pub(crate) async fn bucket(ctx: &Arc<Ctx>) -> Result<&kv::Store, EngineError> {
    ctx.routes
        .get_or_try_init(|| async {
            let name = &ctx.cfg.routes_bucket;
            ctx.js.get_or_create_stream(bucket_stream(name, ctx.cfg.replicas)).await.map_err(|e| {
                log::warn!("engine: route bucket {name}: {e}");
                EngineError::Unavailable
            })?;
            ctx.js.get_key_value(name.as_str()).await.map_err(|e| {
                log::warn!("engine: route bucket {name}: {e}");
                EngineError::Unavailable
            })
        })
        .await
}

fn update_err(e: kv::UpdateError) -> EngineError {
    match e.kind() {
        UpdateErrorKind::TimedOut => EngineError::Timeout,
        _ => EngineError::Unavailable,
    }
}

async fn lookup(kv: &kv::Store, key: &str) -> Result<Option<Route>, EngineError> {
    let entry = kv.entry(key).await.map_err(|_| EngineError::Unavailable)?;
    Ok(entry
        .filter(|e| e.operation == Operation::Put)
        .map(|e| Route { node: String::from_utf8_lossy(&e.value).into_owned(), revision: e.revision }))
}

async fn claim(ctx: &Arc<Ctx>, token: &Token) -> Result<Claimed, EngineError> {
    let kv = bucket(ctx).await?;
    let key = token.to_hex();
    let current = kv.entry(&key).await.map_err(|_| EngineError::Unavailable)?;
    // Expected revision 0 means "no message on the subject yet".
    let (expected, previous) = match current {
        None => (0, None),
        Some(e) if e.operation == Operation::Put => {
            (e.revision, Some(String::from_utf8_lossy(&e.value).into_owned()))
        }
        Some(e) => (e.revision, None),
    };
    let me = bytes::Bytes::copy_from_slice(ctx.cfg.node_id.as_bytes());
    match kv.update(&key, me, expected).await {
        Ok(revision) => Ok(Claimed::Won { revision, previous }),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
            Ok(Claimed::Lost { holder: lookup(kv, &key).await? })
        }
        Err(e) => Err(update_err(e)),
    }
}

async fn claim_slot(ctx: &Arc<Ctx>, slots: u8) -> Result<u8, EngineError> {
    let kv = bucket(ctx).await?;
    let me = ctx.cfg.node_id.as_bytes();
    for k in 0..slots {
        let entry = kv.entry(format!("slot.{k}")).await.map_err(|_| EngineError::Unavailable)?;
        if entry.is_some_and(|e| e.operation == Operation::Put && e.value == me) {
            return Ok(k);
        }
    }
    for k in 0..slots {
        let value = bytes::Bytes::copy_from_slice(me);
        match kv.create(format!("slot.{k}"), value).await {
            Ok(_) => return Ok(k),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(e) => {
                log::warn!("engine: claiming id slot {k}: {e}");
                return Err(EngineError::Unavailable);
            }
        }
    }
    log::warn!("engine: all {slots} id slots of the route bucket are taken by other node ids");
    Err(EngineError::Unavailable)
}

async fn release(ctx: &Arc<Ctx>, token: &Token, revision: u64) -> Result<Released, EngineError> {
    let kv = bucket(ctx).await?;
    match kv.delete_expect_revision(token.to_hex(), Some(revision)).await {
        Ok(()) => Ok(Released::Released),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Released::NotHolder),
        Err(e) => Err(update_err(e)),
    }
}
