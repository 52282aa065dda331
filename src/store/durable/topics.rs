//! Topic positions and topic logs in the `topics` keyspace. Positions are
//! keyed by token, so a shard only touches its own; the log is keyed by app
//! and topic, written by whichever handle a push to the topic reached.
//! Both are staged with the shard's other writes and committed in its batch.

use std::collections::BTreeMap;

use super::codec;
use super::stage::STAGE_LIMIT;
use super::DurableStore;
use crate::proto::token::TOKEN_LEN;
use crate::proto::Token;
use crate::store::{StoreError, SubRecord, TopicEntry};

/// Key prefix of a position: `s` || token || topic -> pos (u64 BE).
const SUB_TAG: u8 = b's';
/// Key prefix of a topic message: `l` || app length (u8) || app || topic
/// length (u8) || topic || msg_id (u64 BE) -> the message as in `msgs`.
/// The lengths keep one app's topic from running into another's, and the
/// big-endian id keeps each topic's messages in id order.
const LOG_TAG: u8 = b'l';

/// A staged write of one topic log key.
pub enum LogWrite {
    /// The encoded message; `over_delete` if it replaced a staged delete,
    /// which a remove must then put back.
    Put {
        value: Vec<u8>,
        over_delete: bool,
    },
    Delete,
}

/// Topic log writes since the last commit, by key.
pub type LogStage = BTreeMap<Vec<u8>, LogWrite>;

fn sub_prefix(token: &Token) -> [u8; 1 + TOKEN_LEN] {
    let mut k = [0u8; 1 + TOKEN_LEN];
    k[0] = SUB_TAG;
    k[1..].copy_from_slice(&token.0);
    k
}

pub(super) fn sub_key(token: &Token, topic: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + TOKEN_LEN + topic.len());
    k.extend_from_slice(&sub_prefix(token));
    k.extend_from_slice(topic);
    k
}

fn log_key(app: &str, topic: &[u8], id: u64) -> Result<Vec<u8>, StoreError> {
    let len = |what: &str, n: usize| {
        u8::try_from(n)
            .map_err(|_| StoreError::Io(format!("a topic log key cannot hold a {what} of {n} bytes")))
    };
    let mut k = Vec::with_capacity(3 + app.len() + topic.len() + 8);
    k.push(LOG_TAG);
    k.push(len("app id", app.len())?);
    k.extend_from_slice(app.as_bytes());
    k.push(len("topic", topic.len())?);
    k.extend_from_slice(topic);
    k.extend_from_slice(&id.to_be_bytes());
    Ok(k)
}

/// Splits a topic log key; `None` if it is malformed.
fn parse_log_key(k: &[u8]) -> Option<(&str, &[u8], u64)> {
    let (&tag, rest) = k.split_first()?;
    let (&alen, rest) = rest.split_first()?;
    let (app, rest) = rest.split_at_checked(usize::from(alen))?;
    let (&tlen, rest) = rest.split_first()?;
    let (topic, id) = rest.split_at_checked(usize::from(tlen))?;
    let id: [u8; 8] = id.try_into().ok()?;
    (tag == LOG_TAG).then_some(())?;
    Some((std::str::from_utf8(app).ok()?, topic, u64::from_be_bytes(id)))
}

impl DurableStore {
    /// Stages `token`'s position in `topic` (`None` deletes it), replacing
    /// one staged for the same key.
    pub(super) fn stage_sub(
        &mut self,
        token: &Token,
        topic: &[u8],
        pos: Option<u64>,
    ) -> Result<(), StoreError> {
        if self.staged_ops >= STAGE_LIMIT {
            self.flush()?;
        }
        let s = self.staged.entry(*token).or_default();
        match s.subs.iter_mut().find(|(t, _)| **t == *topic) {
            Some(w) => w.1 = pos,
            None => {
                s.subs.push((topic.into(), pos));
                self.staged_ops += 1;
            }
        }
        Ok(())
    }

    /// The topics of `token`'s positions on disk, with their positions.
    fn disk_subs(&self, token: &Token) -> Result<Vec<SubRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.eng.topics.prefix(sub_prefix(token)) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading subscriptions", e))?;
            let pos: [u8; 8] = (*v).try_into().map_err(|_| self.eng.corrupt("subscription", &k))?;
            out.push(SubRecord { topic: k[1 + TOKEN_LEN..].into(), pos: u64::from_be_bytes(pos) });
        }
        Ok(out)
    }

    pub(super) fn do_subscriptions(
        &mut self,
        token: &Token,
        out: &mut Vec<SubRecord>,
    ) -> Result<(), StoreError> {
        let disk = self.disk_subs(token)?;
        let staged = self.staged.get(token).map_or(&[][..], |s| &s.subs[..]);
        out.extend(disk.into_iter().filter(|d| !staged.iter().any(|(t, _)| *t == d.topic)));
        out.extend(
            staged.iter().filter_map(|(topic, pos)| Some(SubRecord { topic: topic.clone(), pos: (*pos)? })),
        );
        Ok(())
    }

    /// Stages the deletion of every position of `token`. Reads before it
    /// stages, so an error leaves nothing half done.
    pub(super) fn stage_unsubscribe_all(&mut self, token: &Token) -> Result<(), StoreError> {
        let disk = self.disk_subs(token)?;
        let s = self.staged.entry(*token).or_default();
        // A staged write of a key that is not on disk can simply go.
        s.subs.retain(|(t, _)| disk.iter().any(|d| d.topic == *t));
        for d in disk {
            match s.subs.iter_mut().find(|(t, _)| *t == d.topic) {
                Some(w) => w.1 = None,
                None => {
                    s.subs.push((d.topic, None));
                    self.staged_ops += 1;
                }
            }
        }
        Ok(())
    }

    pub(super) fn do_topic_append(&mut self, e: &TopicEntry) -> Result<(), StoreError> {
        let key = log_key(&e.app_id, &e.topic, e.msg.msg_id)?;
        if self.staged_ops >= STAGE_LIMIT {
            self.flush()?;
        }
        let value = codec::encode_msg(&e.msg);
        let over_delete = match self.topic_log.get(&key) {
            None => {
                self.staged_ops += 1;
                false
            }
            Some(LogWrite::Delete) => true,
            Some(LogWrite::Put { over_delete, .. }) => *over_delete,
        };
        self.topic_log.insert(key, LogWrite::Put { value, over_delete });
        Ok(())
    }

    pub(super) fn do_topic_remove(&mut self, app: &str, topic: &[u8], id: u64) -> Result<(), StoreError> {
        let key = log_key(app, topic, id)?;
        if self.staged_ops >= STAGE_LIMIT {
            self.flush()?;
        }
        match self.topic_log.get(&key) {
            None => {
                self.staged_ops += 1;
                self.topic_log.insert(key, LogWrite::Delete);
            }
            Some(LogWrite::Put { over_delete: false, .. }) => {
                self.topic_log.remove(&key);
            }
            Some(LogWrite::Put { over_delete: true, .. }) => {
                self.topic_log.insert(key, LogWrite::Delete);
            }
            Some(LogWrite::Delete) => {}
        }
        Ok(())
    }

    /// Every topic message on disk merged with this handle's staged writes, in key order.
    pub(super) fn do_topic_messages(&mut self, out: &mut Vec<TopicEntry>) -> Result<(), StoreError> {
        let decode = |k: &[u8], v: &[u8]| {
            let (app, topic, id) =
                parse_log_key(k).ok_or_else(|| self.eng.corrupt("topic message key", k))?;
            let msg = codec::decode_msg(id, v).ok_or_else(|| self.eng.corrupt("topic message", k))?;
            Ok::<_, StoreError>(TopicEntry { app_id: app.to_string(), topic: topic.into(), msg })
        };
        let mut staged = self.topic_log.iter().peekable();
        let put = |k: &[u8], w: &LogWrite, out: &mut Vec<TopicEntry>| match w {
            LogWrite::Put { value, .. } => decode(k, value).map(|e| out.push(e)),
            LogWrite::Delete => Ok(()),
        };
        for kv in self.eng.topics.prefix([LOG_TAG]) {
            let (k, v) = kv.into_inner().map_err(|e| self.eng.err("reading topic messages", e))?;
            while let Some((sk, w)) = staged.next_if(|(sk, _)| sk.as_slice() < &*k) {
                put(sk, w, out)?;
            }
            match staged.next_if(|(sk, _)| sk.as_slice() == &*k) {
                Some((sk, w)) => put(sk, w, out)?,
                None => out.push(decode(&k, &v)?),
            }
        }
        for (sk, w) in staged {
            put(sk, w, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_msg, Store, Ticket};

    fn entry(topic: &[u8], id: u64) -> TopicEntry {
        TopicEntry { app_id: "app".into(), topic: topic.into(), msg: test_msg(id, 4_000_000_000, b"") }
    }

    #[test]
    fn staged_topic_writes_are_bounded_and_committed_early() {
        let dir = tempfile::tempdir().unwrap();
        let mut shards = super::super::open::open_shards(dir.path(), 2, 10).unwrap();
        let n = STAGE_LIMIT as u64 + 10;
        for id in 1..=n {
            shards[0].topic_append(&entry(b"news", id)).unwrap();
            shards[0].put_subscription(&Token([(id % 200) as u8; TOKEN_LEN]), b"news", id).unwrap();
            assert!(shards[0].staged_ops <= STAGE_LIMIT);
        }
        // Shard 1 reads only the disk: most of them are there without a sync.
        let mut out = Vec::new();
        shards[1].topic_messages(&mut out).unwrap();
        assert!(out.len() as u64 >= n - STAGE_LIMIT as u64, "{} on disk", out.len());
        shards[0].sync().unwrap();
        out.clear();
        shards[1].topic_messages(&mut out).unwrap();
        assert_eq!(out.len() as u64, n);
    }

    #[test]
    fn a_commit_ticket_covers_topic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = super::super::open::open_shards(dir.path(), 1, 10).unwrap().pop().unwrap();
        s.set_durable_hook(Box::new(|_, _| {}));
        s.sync().unwrap();
        s.topic_append(&entry(b"news", 1)).unwrap();
        assert!(matches!(s.commit().unwrap(), Ticket::Pending(_)), "a topic message alone is a write");
        s.sync().unwrap();
        s.put_subscription(&Token([1; TOKEN_LEN]), b"news", 1).unwrap();
        assert!(matches!(s.commit().unwrap(), Ticket::Pending(_)), "a position alone is a write");
        s.sync().unwrap();
        // Appended and removed in one batch: nothing to write.
        s.topic_append(&entry(b"news", 2)).unwrap();
        s.topic_remove("app", b"news", 2).unwrap();
        assert!(s.topic_log.is_empty());
        assert_eq!(s.commit().unwrap(), Ticket::Durable);
    }

    #[test]
    fn log_keys_group_by_app_then_topic_then_id() {
        let k = log_key("app", b"news", 258).unwrap();
        assert_eq!(parse_log_key(&k), Some(("app", &b"news"[..], 258)));
        assert!(log_key("app", b"news", 255).unwrap() < k);
        // Without the lengths, "ap" + "pnews" would share a prefix with "app" + "news".
        assert_ne!(parse_log_key(&log_key("ap", b"pnews", 258).unwrap()), parse_log_key(&k));
        assert_eq!(parse_log_key(&k[..k.len() - 1]), None);
        assert_eq!(parse_log_key(&sub_key(&Token([1; TOKEN_LEN]), b"x")), None);
        assert!(log_key(&"a".repeat(256), b"t", 1).is_err());
    }
}
