//! [`TopicAliases`]: the MQTT 5 Topic Alias mappings of one connection (section 3.3.2.3.4), sent
//! and received, so that the span, template and metrics of a PUBLISH whose topic name is empty
//! name the topic its alias stands for.
//!
//! A PUBLISH with a topic name and a Topic Alias sets the alias; one with an empty topic name
//! and the alias means that topic. "Topic Alias mappings exist only within a Network
//! Connection", and "a receiver MUST NOT carry forward any Topic Alias mappings from one
//! Network Connection to another" [MQTT-3.3.2-7]:
//!
//! - Incoming: the map starts empty when the CONNACK of a new connection is handed out (rumqttc
//!   queues it behind the events of the old connection, which still resolve with the old map).
//!   Aliases are bounded by the client's own Topic Alias Maximum (CONNECT); an alias of 0 or
//!   above it is a broker's protocol error [MQTT-3.1.2-26] and is not stored.
//! - Outgoing: the topics are the application's, kept for the life of the client; what ends
//!   with a network connection is that the broker knows them. Each alias remembers the
//!   connection it was last sent with its topic on (by the order publishes start); when a
//!   connection is lost, the count moves on, and the next publish that uses the alias alone is
//!   sent with its topic again (topic and alias: the mapping is set on the new connection).
//!   Publishes already queued for the next connection (rumqttc's `pending`, its collision slot)
//!   get their topic back when the connection is lost ([`TopicAliases::rebase`]).
//!
//! Nothing here is locked until a PUBLISH with a Topic Alias is seen.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// Why a publish is refused before it reaches rumqttc's queue, as a topic name with a wildcard
/// is: each would be a protocol error that makes the broker close the connection, and rumqttc
/// would replay a QoS 1 or 2 publish on every reconnect, closing it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// "It is a Protocol Error if the Topic Name is zero length and there is no Topic Alias"
    /// (section 3.3.2.1).
    EmptyTopic,
    /// "A sender MUST NOT send a PUBLISH packet containing a Topic Alias which has the value 0"
    /// [MQTT-3.3.2-8].
    AliasZero,
    /// Above the broker's Topic Alias Maximum from its CONNACK [MQTT-3.3.2-9] (0 when it sent
    /// none: then no alias may be sent [MQTT-3.2.2-18]).
    AliasAboveMaximum { alias: u16, maximum: u16 },
    /// An empty topic name with an alias no publish of this client ever set: the broker has no
    /// mapping for it (section 3.3.2.3.4, a protocol error).
    UnknownAlias(u16),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyTopic => f.write_str("empty topic name without a topic alias"),
            Self::AliasZero => f.write_str("topic alias 0 is not allowed [MQTT-3.3.2-8]"),
            Self::AliasAboveMaximum { alias, maximum } => write!(
                f,
                "topic alias {alias} is above the broker's maximum of {maximum} [MQTT-3.3.2-9]"
            ),
            Self::UnknownAlias(alias) => write!(
                f,
                "empty topic name with topic alias {alias}, which no publish of this client set"
            ),
        }
    }
}

/// Why the alias of an incoming PUBLISH named no topic, or was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// An empty topic name with an alias the broker did not set on this connection.
    Unknown,
    /// Alias 0 [MQTT-3.3.2-8].
    Zero,
    /// Above the Topic Alias Maximum the client sent in its CONNECT [MQTT-3.1.2-26] (0 when it
    /// sent none [MQTT-3.1.2-27]).
    AboveMaximum,
}

impl Unresolved {
    /// The `reason` of the `mqtt.topic_alias.rejected` event.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Zero => "zero",
            Self::AboveMaximum => "above_maximum",
        }
    }
}

/// An outgoing alias: its topic, and the network connection it was last sent with it on.
#[derive(Debug)]
struct Sent {
    topic: Arc<str>,
    connection: u64,
}

/// The outgoing side.
#[derive(Debug, Default)]
struct Outgoing {
    aliases: HashMap<u16, Sent>,
    /// The current network connection, counted by the losses so far.
    connection: u64,
    /// The broker's Topic Alias Maximum from the last CONNACK; `None` before the first.
    maximum: Option<u16>,
}

/// The Topic Alias mappings of one connection, both ways.
#[derive(Debug, Default)]
pub(crate) struct TopicAliases {
    /// Whether any PUBLISH with a Topic Alias was seen: until then nothing below is locked.
    used: AtomicBool,
    outgoing: Mutex<Outgoing>,
    incoming: Mutex<HashMap<u16, Bytes>>,
    /// The Topic Alias Maximum of the client's CONNECT: incoming aliases it accepts.
    incoming_maximum: u16,
}

/// What an outgoing publish's alias means for its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// The publish names its topic itself (and sets the alias).
    Named,
    /// The publish uses the alias alone, which stands for this topic on this connection.
    Aliased(Arc<str>),
    /// The alias stands for this topic, which the current connection has not been told: the
    /// publish must carry it again.
    Renamed(Arc<str>),
}

/// Where a publish goes, as far as its Topic Alias says, before its span starts.
#[derive(Debug, Default)]
pub(crate) struct Address {
    /// The topic the alias stands for, when the topic name is empty.
    pub(crate) aliased: Option<Arc<str>>,
    /// The alias this publish sets with its topic name ([`Outbound::Named`] or
    /// [`Outbound::Renamed`]): [`TopicAliases::not_sent`] is told if it does not go out.
    pub(crate) sets: Option<u16>,
}

impl TopicAliases {
    /// Mappings for a client whose CONNECT announces `incoming_maximum` (0: the broker sends
    /// no aliases).
    pub(crate) fn new(incoming_maximum: u16) -> Self {
        Self {
            incoming_maximum,
            ..Self::default()
        }
    }

    fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn incoming(&self) -> MutexGuard<'_, HashMap<u16, Bytes>> {
        self.incoming.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A publish to `topic` with Topic Alias `alias` starts: checks the alias and records or
    /// resolves it. Aliases are taken in the order publishes start; publishes that race each
    /// other on one alias race on the wire as well.
    pub(crate) fn send(&self, topic: &str, alias: u16) -> Result<Outbound, Refusal> {
        if alias == 0 {
            return Err(Refusal::AliasZero);
        }
        self.used.store(true, Ordering::Relaxed);
        let mut outgoing = self.outgoing();
        if let Some(maximum) = outgoing.maximum
            && alias > maximum
        {
            return Err(Refusal::AliasAboveMaximum { alias, maximum });
        }
        let connection = outgoing.connection;
        if !topic.is_empty() {
            match outgoing.aliases.get_mut(&alias) {
                Some(sent) if &*sent.topic == topic => sent.connection = connection,
                _ => {
                    let topic = Arc::from(topic);
                    outgoing.aliases.insert(alias, Sent { topic, connection });
                }
            }
            return Ok(Outbound::Named);
        }
        let sent = outgoing
            .aliases
            .get_mut(&alias)
            .ok_or(Refusal::UnknownAlias(alias))?;
        let topic = Arc::clone(&sent.topic);
        if sent.connection == connection {
            Ok(Outbound::Aliased(topic))
        } else {
            sent.connection = connection;
            Ok(Outbound::Renamed(topic))
        }
    }

    /// The publish at `address` was not handed to rumqttc after all (rumqttc's queue was
    /// busy, or its event loop is gone): if it was to set its alias, the current connection
    /// does not know the alias, and the next publish that uses it alone carries its topic.
    pub(crate) fn not_sent(&self, address: &Address) {
        if let Some(alias) = address.sets {
            let mut outgoing = self.outgoing();
            let connection = outgoing.connection;
            if let Some(sent) = outgoing.aliases.get_mut(&alias)
                && sent.connection == connection
            {
                sent.connection = connection.wrapping_sub(1);
            }
        }
    }

    /// A CONNACK was read, with the broker's Topic Alias Maximum (0 when it sent none).
    pub(crate) fn connected(&self, maximum: u16) {
        self.outgoing().maximum = Some(maximum);
    }

    /// The network connection was lost: the broker forgets every alias. `queued` are the
    /// publishes with a Topic Alias that rumqttc will write on the next connection, in the
    /// order it will write them, as (alias, topic name); an empty topic name gets its topic
    /// back, so that the publish sets the alias again instead of using one the new connection
    /// does not know.
    ///
    /// The topic is the one set by the last publish before it in `queued`, or else, when no
    /// publish in `queued` sets the alias, the client's mapping. When only a later one sets it
    /// (the application gave the alias a new topic while the older publish waited), the topic
    /// meant is no longer known, and the publish is left as it is.
    pub(crate) fn rebase<'a>(&self, queued: impl IntoIterator<Item = (u16, &'a mut Bytes)>) {
        if !self.used.load(Ordering::Relaxed) {
            return;
        }
        let mut outgoing = self.outgoing();
        outgoing.connection += 1;
        let queued: Vec<(u16, &mut Bytes)> = queued.into_iter().collect();
        let set_in_queue: Vec<u16> = queued
            .iter()
            .filter(|(_, topic)| !topic.is_empty())
            .map(|(alias, _)| *alias)
            .collect();
        let mut set_before: HashMap<u16, Bytes> = HashMap::new();
        for (alias, topic) in queued {
            if !topic.is_empty() {
                set_before.insert(alias, topic.clone());
                continue;
            }
            let known = match set_before.get(&alias) {
                Some(before) => Some(before.clone()),
                None if !set_in_queue.contains(&alias) => outgoing
                    .aliases
                    .get(&alias)
                    .map(|sent| Bytes::copy_from_slice(sent.topic.as_bytes())),
                None => None,
            };
            if let Some(known) = known {
                *topic = known;
            }
        }
    }

    /// The CONNACK of a new connection is handed out: the broker's aliases of the old one end.
    pub(crate) fn new_incoming_connection(&self) {
        if self.used.load(Ordering::Relaxed) {
            self.incoming().clear();
        }
    }

    /// An incoming PUBLISH with topic name `topic` and Topic Alias `alias`: an empty `topic`
    /// gets the topic the alias stands for; a topic name sets the alias.
    pub(crate) fn receive(&self, topic: &mut Bytes, alias: u16) -> Result<(), Unresolved> {
        self.used.store(true, Ordering::Relaxed);
        if alias == 0 {
            return Err(Unresolved::Zero);
        }
        if alias > self.incoming_maximum {
            return Err(Unresolved::AboveMaximum);
        }
        let mut incoming = self.incoming();
        if topic.is_empty() {
            let known = incoming.get(&alias).ok_or(Unresolved::Unknown)?;
            *topic = known.clone();
        } else if incoming.get(&alias) != Some(topic) {
            // A copy: the topic is a slice of rumqttc's read buffer, which it would keep alive.
            incoming.insert(alias, Bytes::copy_from_slice(topic));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(topic: &str) -> Bytes {
        Bytes::copy_from_slice(topic.as_bytes())
    }

    /// Section 3.3.2.3.4: a topic name with an alias sets it, an empty topic name uses it, a
    /// new topic name for the alias changes it.
    #[test]
    fn an_outgoing_alias_is_set_used_and_changed() {
        let aliases = TopicAliases::new(0);
        aliases.connected(10);
        assert_eq!(aliases.send("a/b", 1), Ok(Outbound::Named));
        assert_eq!(aliases.send("", 1), Ok(Outbound::Aliased(Arc::from("a/b"))));
        assert_eq!(aliases.send("c/d", 1), Ok(Outbound::Named));
        assert_eq!(aliases.send("", 1), Ok(Outbound::Aliased(Arc::from("c/d"))));
    }

    #[test]
    fn outgoing_aliases_the_broker_cannot_take_are_refused() {
        let aliases = TopicAliases::new(0);
        // [MQTT-3.3.2-8]
        assert_eq!(aliases.send("a", 0), Err(Refusal::AliasZero));
        // Before the first CONNACK the broker's maximum is not known; rumqttc checks it when
        // it writes.
        assert_eq!(aliases.send("a", 500), Ok(Outbound::Named));
        aliases.connected(10);
        // [MQTT-3.3.2-9]
        assert_eq!(
            aliases.send("a", 11),
            Err(Refusal::AliasAboveMaximum {
                alias: 11,
                maximum: 10
            })
        );
        assert_eq!(aliases.send("", 7), Err(Refusal::UnknownAlias(7)));
        // No Topic Alias Maximum in the CONNACK: no alias at all [MQTT-3.2.2-18].
        aliases.connected(0);
        assert_eq!(
            aliases.send("a", 1),
            Err(Refusal::AliasAboveMaximum {
                alias: 1,
                maximum: 0
            })
        );
    }

    /// [MQTT-3.3.2-7]: after a lost connection the broker knows no alias; the first publish
    /// that uses one alone carries its topic again, the next ones the alias alone.
    #[test]
    fn after_a_lost_connection_an_alias_is_sent_with_its_topic_once() {
        let aliases = TopicAliases::new(0);
        aliases.connected(10);
        assert_eq!(aliases.send("a/b", 1), Ok(Outbound::Named));
        aliases.rebase([]);
        aliases.connected(10);
        assert_eq!(aliases.send("", 1), Ok(Outbound::Renamed(Arc::from("a/b"))));
        assert_eq!(aliases.send("", 1), Ok(Outbound::Aliased(Arc::from("a/b"))));
        // A publish that was to carry the topic again but was not sent: the next one does.
        aliases.rebase([]);
        assert_eq!(aliases.send("", 1), Ok(Outbound::Renamed(Arc::from("a/b"))));
        let not_sent = Address {
            aliased: None,
            sets: Some(1),
        };
        aliases.not_sent(&not_sent);
        assert_eq!(aliases.send("", 1), Ok(Outbound::Renamed(Arc::from("a/b"))));
        // The same for a publish that set the alias with its topic name.
        assert_eq!(aliases.send("a/c", 1), Ok(Outbound::Named));
        aliases.not_sent(&not_sent);
        assert_eq!(aliases.send("", 1), Ok(Outbound::Renamed(Arc::from("a/c"))));
        // A topic name after the loss sets it as well.
        aliases.rebase([]);
        assert_eq!(aliases.send("a/b", 1), Ok(Outbound::Named));
        assert_eq!(aliases.send("", 1), Ok(Outbound::Aliased(Arc::from("a/b"))));
    }

    #[test]
    fn queued_publishes_get_their_topic_back_when_the_connection_is_lost() {
        let aliases = TopicAliases::new(0);
        assert_eq!(aliases.send("old", 1), Ok(Outbound::Named));
        assert_eq!(aliases.send("x", 2), Ok(Outbound::Named));
        // Queued: [1 alone, 2 alone, "new" for 1, 1 alone, 3 alone (never set)].
        let mut queue = [bytes(""), bytes(""), bytes("new"), bytes(""), bytes("")];
        let [a, b, c, d, e] = &mut queue;
        aliases.rebase([(1, a), (2, b), (1, c), (1, d), (3, e)]);
        // The first publish on alias 1 meant "old", but a later one in the queue set "new":
        // the topic it meant is not known, it stays as it was.
        assert_eq!(
            queue,
            [bytes(""), bytes("x"), bytes("new"), bytes("new"), bytes("")]
        );
    }

    #[test]
    fn nothing_is_locked_or_kept_before_an_alias_is_used() {
        let aliases = TopicAliases::new(5);
        aliases.new_incoming_connection();
        let mut topic = bytes("");
        aliases.rebase([(1, &mut topic)]);
        assert!(topic.is_empty());
        assert!(!aliases.used.load(Ordering::Relaxed));
        assert_eq!(aliases.outgoing().connection, 0);
    }

    /// Section 3.3.2.3.4 seen from the client: the broker sets an alias with a topic name and
    /// then uses it alone; [MQTT-3.3.2-7] the mapping ends with the network connection.
    #[test]
    fn an_incoming_alias_resolves_until_the_next_connection() {
        let aliases = TopicAliases::new(10);
        let mut first = bytes("sensors/1");
        assert_eq!(aliases.receive(&mut first, 3), Ok(()));
        let mut next = bytes("");
        assert_eq!(aliases.receive(&mut next, 3), Ok(()));
        assert_eq!(next, bytes("sensors/1"));
        let mut changed = bytes("sensors/2");
        assert_eq!(aliases.receive(&mut changed, 3), Ok(()));
        let mut next = bytes("");
        assert_eq!(aliases.receive(&mut next, 3), Ok(()));
        assert_eq!(next, bytes("sensors/2"));
        aliases.new_incoming_connection();
        let mut after = bytes("");
        assert_eq!(aliases.receive(&mut after, 3), Err(Unresolved::Unknown));
        assert!(after.is_empty());
    }

    #[test]
    fn incoming_aliases_out_of_range_are_never_stored() {
        let aliases = TopicAliases::new(10);
        for (alias, problem) in [
            (0, Unresolved::Zero),
            (11, Unresolved::AboveMaximum),
            (u16::MAX, Unresolved::AboveMaximum),
        ] {
            let mut set = bytes("t");
            assert_eq!(aliases.receive(&mut set, alias), Err(problem));
            let mut used = bytes("");
            assert_eq!(aliases.receive(&mut used, alias), Err(problem));
            assert!(used.is_empty());
        }
        assert!(aliases.incoming().is_empty());
        // A client that announced no maximum accepts no alias [MQTT-3.1.2-27].
        let none = TopicAliases::new(0);
        assert_eq!(
            none.receive(&mut bytes("t"), 1),
            Err(Unresolved::AboveMaximum)
        );
    }
}
