//! The two orders of a subscriber with concurrent handlers: which waiting message may start next
//! ([`RunQueue`]: per topic in arrival order, or any), and which acknowledgements may go out
//! ([`AckQueue`]: in the order the PUBLISH packets arrived, [MQTT-4.6.0-2] and [MQTT-4.6.0-3]).
//!
//! Both are plain data structures, driven by the worker (`super::worker`) and tested here
//! without a broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

/// Which messages may run at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Order {
    /// Messages of one topic run one at a time, in arrival order; different topics run at the
    /// same time (MQTT 3.1.1 and 5, section 4.6: the order a client sees is per topic).
    #[default]
    PerTopic,
    /// Any waiting message may start, oldest first.
    Unordered,
}

/// What a started message holds until its run ends: the topic it keeps busy, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane(Option<u64>);

/// The key of a topic in a [`RunQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicKey(u64);

/// The messages of one topic (or of topics whose keys collide) waiting in arrival order.
struct TopicLane<T> {
    /// A message of this lane is running.
    busy: bool,
    /// The waiting messages, each with its arrival number.
    waiting: VecDeque<(u64, T)>,
}

/// Messages waiting for a run, in the order they may start.
///
/// In [`Order::PerTopic`] the topics are keyed by a hash: two topics with the same key only run
/// one after the other, which costs concurrency, never order.
pub(crate) struct RunQueue<T> {
    order: Order,
    hasher: RandomState,
    /// Arrival number of the next message.
    arrivals: u64,
    /// [`Order::PerTopic`]: the lanes with a waiting or running message, by key.
    lanes: HashMap<u64, TopicLane<T>>,
    /// [`Order::PerTopic`]: the lanes that may start their first message (not busy, not
    /// empty), by the arrival number of that message.
    ready: BTreeMap<u64, u64>,
    /// [`Order::Unordered`]: every waiting message, oldest first.
    fifo: VecDeque<T>,
    len: usize,
}

impl<T> RunQueue<T> {
    pub(crate) fn new(order: Order) -> Self {
        Self {
            order,
            hasher: RandomState::new(),
            arrivals: 0,
            lanes: HashMap::new(),
            ready: BTreeMap::new(),
            fifo: VecDeque::new(),
            len: 0,
        }
    }

    /// Waiting messages.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of `topic` (nothing to compute when the order is not per topic).
    pub(crate) fn key(&self, topic: &str) -> TopicKey {
        match self.order {
            Order::PerTopic => TopicKey(self.hasher.hash_one(topic)),
            Order::Unordered => TopicKey(0),
        }
    }

    /// Adds a message that arrived on the topic of `key`.
    pub(crate) fn push(&mut self, TopicKey(key): TopicKey, item: T) {
        self.len += 1;
        if self.order == Order::Unordered {
            self.fifo.push_back(item);
            return;
        }
        let arrival = self.arrivals;
        self.arrivals += 1;
        let lane = self.lanes.entry(key).or_insert_with(|| TopicLane {
            busy: false,
            waiting: VecDeque::new(),
        });
        if !lane.busy && lane.waiting.is_empty() {
            self.ready.insert(arrival, key);
        }
        lane.waiting.push_back((arrival, item));
    }

    /// The oldest message that may start now, and the lane it keeps busy until
    /// [`finish`](Self::finish).
    pub(crate) fn pop(&mut self) -> Option<(Lane, T)> {
        if self.order == Order::Unordered {
            let item = self.fifo.pop_front()?;
            self.len -= 1;
            return Some((Lane(None), item));
        }
        let (_, key) = self.ready.pop_first()?;
        let lane = self.lanes.get_mut(&key)?;
        let (_, item) = lane.waiting.pop_front()?;
        lane.busy = true;
        self.len -= 1;
        Some((Lane(Some(key)), item))
    }

    /// The run that [`pop`](Self::pop) handed out with `lane` has ended: the lane's next message
    /// may start.
    pub(crate) fn finish(&mut self, lane: Lane) {
        let Lane(Some(key)) = lane else { return };
        let Some(topic) = self.lanes.get_mut(&key) else {
            return;
        };
        topic.busy = false;
        match topic.waiting.front() {
            Some(&(arrival, _)) => {
                self.ready.insert(arrival, key);
            }
            None => {
                self.lanes.remove(&key);
            }
        }
    }
}

/// The place of one QoS 1 or 2 message among the acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// One message's acknowledgement: pending, or decided.
enum Slot<A> {
    /// Its handlers have not finished yet.
    Open { epoch: u64 },
    /// To be acknowledged (if still on the connection `epoch`).
    Ack { epoch: u64, ack: A },
    /// Not to be acknowledged (a failed message under `AckPolicy::AfterSuccess`).
    Skip,
}

/// The acknowledgements of the QoS 1 and 2 messages, in arrival order: an acknowledgement goes
/// out only once every message that arrived before it on the same connection has been decided
/// (acknowledged or skipped).
///
/// A message of an earlier connection (`epoch`) is never acknowledged (its packet id may name
/// another message on the new connection), so it holds back nothing once a new connection is up.
pub(crate) struct AckQueue<A> {
    /// The ticket number of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot<A>>,
}

impl<A> AckQueue<A> {
    pub(crate) fn new() -> Self {
        Self {
            first: 0,
            slots: VecDeque::new(),
        }
    }

    /// Messages whose acknowledgement has not gone out (open, or held behind an open one).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Takes the next place, for a message that arrived on connection `epoch`.
    pub(crate) fn open(&mut self, epoch: u64) -> Ticket {
        let ticket = Ticket(self.first + self.slots.len() as u64);
        self.slots.push_back(Slot::Open { epoch });
        ticket
    }

    /// Decides a place: `Some(ack)` to acknowledge, `None` to skip it. A place already given up
    /// (its connection is gone) is ignored.
    pub(crate) fn settle(&mut self, ticket: Ticket, ack: Option<A>) {
        let Some(index) = ticket
            .0
            .checked_sub(self.first)
            .and_then(|index| usize::try_from(index).ok())
        else {
            return;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Slot::Open { epoch } = *slot else { return };
        *slot = match ack {
            Some(ack) => Slot::Ack { epoch, ack },
            None => Slot::Skip,
        };
    }

    /// The next acknowledgement that may go out on connection `epoch`, in arrival order.
    /// Decided places at the front are used up; so are places of earlier connections, decided
    /// or not.
    pub(crate) fn pop_ready(&mut self, epoch: u64) -> Option<A> {
        loop {
            match self.slots.front()? {
                Slot::Open { epoch: arrived } if *arrived == epoch => return None,
                _ => {}
            }
            let slot = self.slots.pop_front()?;
            self.first += 1;
            if let Slot::Ack {
                epoch: arrived,
                ack,
            } = slot
                && arrived == epoch
            {
                return Some(ack);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(queue: &mut RunQueue<T>) -> Vec<(Lane, T)> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn per_topic_runs_one_message_of_a_topic_at_a_time_in_arrival_order() {
        let mut queue = RunQueue::new(Order::PerTopic);
        for (topic, item) in [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5), ("b", 6)] {
            queue.push(queue.key(topic), item);
        }
        assert_eq!(queue.len(), 6);
        // The first message of each topic, oldest first.
        let started = drain(&mut queue);
        assert_eq!(
            started.iter().map(|(_, item)| *item).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        assert_eq!(queue.len(), 3);
        let lanes: Vec<Lane> = started.iter().map(|(lane, _)| *lane).collect();
        // `b` ends first: its next message (6) may start, `a`'s (2) not yet.
        queue.finish(lanes[1]);
        assert_eq!(queue.pop().map(|(_, item)| item), Some(6));
        assert!(queue.pop().is_none());
        queue.finish(lanes[0]);
        let (a_lane, two) = queue.pop().expect("a's next");
        assert_eq!(two, 2);
        assert!(queue.pop().is_none(), "4 waits for 2");
        queue.finish(a_lane);
        assert_eq!(queue.pop().map(|(_, item)| item), Some(4));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_topic_that_becomes_free_takes_its_turn_by_arrival() {
        let mut queue = RunQueue::new(Order::PerTopic);
        queue.push(queue.key("a"), 1);
        let (a, _) = queue.pop().expect("a/1");
        queue.push(queue.key("a"), 2);
        queue.push(queue.key("b"), 3);
        queue.finish(a);
        // a's 2 arrived before b's 3.
        assert_eq!(
            drain(&mut queue)
                .into_iter()
                .map(|(_, item)| item)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        // A lane that is free and empty is forgotten; finishing it again changes nothing.
        queue.finish(a);
        assert!(queue.lanes.len() <= 2);
    }

    #[test]
    fn unordered_hands_out_every_message_oldest_first() {
        let mut queue = RunQueue::new(Order::Unordered);
        for (topic, item) in [("a", 1), ("a", 2), ("b", 3)] {
            queue.push(queue.key(topic), item);
        }
        let started = drain(&mut queue);
        assert_eq!(
            started.iter().map(|(_, item)| *item).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(started.iter().all(|(lane, _)| *lane == Lane(None)));
        queue.finish(Lane(None));
        assert!(queue.is_empty());
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_whatever_order_they_are_decided_in() {
        let mut acks = AckQueue::new();
        let tickets: Vec<Ticket> = (0..4).map(|_| acks.open(1)).collect();
        acks.settle(tickets[2], Some("third"));
        acks.settle(tickets[1], Some("second"));
        assert_eq!(acks.pop_ready(1), None, "the first is still open");
        acks.settle(tickets[0], Some("first"));
        assert_eq!(acks.pop_ready(1), Some("first"));
        assert_eq!(acks.pop_ready(1), Some("second"));
        assert_eq!(acks.pop_ready(1), Some("third"));
        assert_eq!(acks.pop_ready(1), None);
        assert_eq!(acks.len(), 1);
        // Settling twice, or a ticket already used up, changes nothing.
        acks.settle(tickets[0], Some("again"));
        acks.settle(tickets[3], Some("fourth"));
        acks.settle(tickets[3], None);
        assert_eq!(acks.pop_ready(1), Some("fourth"));
        assert_eq!(acks.len(), 0);
    }

    #[test]
    fn a_skipped_message_holds_back_nothing_once_decided() {
        let mut acks = AckQueue::new();
        let failed = acks.open(1);
        let next = acks.open(1);
        acks.settle(next, Some("next"));
        assert_eq!(
            acks.pop_ready(1),
            None,
            "held until the failed one is decided"
        );
        acks.settle(failed, None);
        assert_eq!(acks.pop_ready(1), Some("next"));
        assert_eq!(acks.len(), 0);
    }

    #[test]
    fn places_of_an_earlier_connection_are_given_up() {
        let mut acks = AckQueue::new();
        let old_open = acks.open(1);
        let old_done = acks.open(1);
        acks.settle(old_done, Some("old"));
        let new = acks.open(2);
        acks.settle(new, Some("new"));
        // On connection 2 the open place of connection 1 holds back nothing, and the decided
        // acknowledgement of connection 1 is never sent.
        assert_eq!(acks.pop_ready(2), Some("new"));
        assert_eq!(acks.len(), 0);
        acks.settle(old_open, Some("late"));
        assert_eq!(acks.pop_ready(2), None);
    }
}
