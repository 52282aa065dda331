//! Topics: the name rule, the reserved broadcast topic, and how topic
//! message ids are told apart from direct ones (protocol.md §10.4).

/// Longest topic name, in bytes.
pub const MAX_TOPIC: usize = 64;
/// The app-wide broadcast topic: every device of the app is in it without subscribing.
pub const BROADCAST: &str = "~all";
/// Set in every topic message id and in no direct one (direct ids stay below 2^62).
pub const TOPIC_ID_BIT: u64 = 1 << 62;
/// Most tokens in one TOPIC_MANAGE.
pub const MAX_MANAGE: usize = 1000;

/// A topic name's bytes: ASCII letters, digits and `-_.~%` (the FCM rule).
pub fn is_topic_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'%')
}

/// Why a topic name is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TopicName {
    /// A name a device or provider may subscribe to and push to.
    Plain,
    /// [`BROADCAST`]: pushed to, never subscribed to.
    Broadcast,
    /// Empty, too long, a byte outside the rule, or another `~` name.
    Bad,
}

/// Classifies a topic name. Names starting with `~` are reserved; only
/// [`BROADCAST`] is defined.
pub fn classify(name: &[u8]) -> TopicName {
    if name == BROADCAST.as_bytes() {
        return TopicName::Broadcast;
    }
    if name.is_empty() || name.len() > MAX_TOPIC || name[0] == b'~' || !name.iter().all(|&c| is_topic_byte(c))
    {
        return TopicName::Bad;
    }
    TopicName::Plain
}

/// How many of `names` count against `limits.topics_per_device`: the broadcast topic does not.
pub fn subscribed<'a>(names: impl Iterator<Item = &'a [u8]>) -> usize {
    names.filter(|n| *n != BROADCAST.as_bytes()).count()
}

/// Whether `msg_id` names a topic message.
pub fn is_topic_id(msg_id: u64) -> bool {
    msg_id & TOPIC_ID_BIT != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert_eq!(classify(b"news"), TopicName::Plain);
        assert_eq!(classify(b"a-b_c.d~e%f9"), TopicName::Plain);
        assert_eq!(classify(&[b'x'; 64]), TopicName::Plain);
        assert_eq!(classify(&[b'x'; 65]), TopicName::Bad);
        assert_eq!(classify(b""), TopicName::Bad);
        assert_eq!(classify(b"a b"), TopicName::Bad);
        assert_eq!(classify(b"caf\xc3\xa9"), TopicName::Bad);
        assert_eq!(classify(b"~all"), TopicName::Broadcast);
        assert_eq!(classify(b"~other"), TopicName::Bad, "~ names are reserved");
        assert!(is_topic_id(TOPIC_ID_BIT | 5) && !is_topic_id(1 << 56));
    }
}
