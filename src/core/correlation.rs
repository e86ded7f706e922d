//! Which open publish a rumqttc event refers to.
//!
//! rumqttc 0.25.1 tells the application about its own publishes only by packet id:
//! `Outgoing::Publish(pkid)` when a PUBLISH is written (pkid 0 for QoS 0),
//! `Outgoing::AwaitAck(pkid)` when a new publish collides with a pkid still in use, and the
//! incoming PUBACK / PUBREC / PUBCOMP. `AsyncClient::publish` only enqueues a request on one
//! channel, and the event loop takes requests in channel order, after replaying whatever
//! `pending` holds. So the table keeps:
//!
//! - `queued`: publishes handed to rumqttc and not yet written, in channel order. The client
//!   pushes under the same lock that sends the request, so this order is the channel's.
//! - `collision`: the publish rumqttc parked after `AwaitAck(pkid)`; its `Publish(pkid)` comes
//!   when that pkid's acknowledgement frees it.
//! - `awaiting_ack`: written QoS 1 / QoS 2 publishes by pkid, waiting for PUBACK or PUBREC.
//! - `awaiting_comp`: QoS 2 publishes after PUBREC, waiting for PUBCOMP. rumqttc frees the pkid at
//!   PUBREC, so a new publish may take the same pkid while the old one still waits here.
//!
//! A `Publish(pkid)` for a pkid that already waits in `awaiting_ack` is the replay of an
//! unacknowledged publish after a reconnect with a session: the same publish, written again.
//!
//! On a connection error rumqttc moves unacknowledged publishes (pkid kept) and every request
//! still in the channel (pkid 0) into `pending`, and events it had queued but not yet handed out
//! stay queued. [`Correlation::on_connection_lost`] correlates those stale events at once (and
//! skips them when they are later handed out), so that when the next CONNACK says the session is
//! gone, the first `unsent` queued entries are exactly the requests rumqttc dropped with
//! `pending`. Nothing is matched by guesswork: each step follows rumqttc's own order.
//!
//! The table is bounded by rumqttc's structure (in-flight limit, channel capacity, `pending`);
//! [`Correlation::expire`] also ends entries whose acknowledgement never came.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Why a publish ended without a successful acknowledgement. The strings are the `error.type`
/// values recorded on spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The broker answered with an MQTT 5 reason code >= 0x80; the name of the reason.
    Reason(&'static str),
    /// The connection came back without a session; rumqttc dropped the publish.
    SessionLost,
    /// No acknowledgement within the configured bound.
    AckTimeout,
    /// The event loop was dropped with the publish still open.
    EventLoopDropped,
    /// The request could not be handed to rumqttc (its event loop is gone).
    RequestFailed,
    /// The table saw a pkid reused while an entry still waited on it: rumqttc and the table
    /// disagree (for example, a publish sent through `inner()` bypassed the table).
    Desynchronized,
}

impl Failure {
    /// The `error.type` value.
    pub(crate) fn error_type(self) -> &'static str {
        match self {
            Self::Reason(name) => name,
            Self::SessionLost => "session_lost",
            Self::AckTimeout => "ack_timeout",
            Self::EventLoopDropped => "event_loop_dropped",
            Self::RequestFailed => "request_failed",
            Self::Desynchronized => "correlation_lost",
        }
    }
}

/// An entry with the moment it was handed over.
#[derive(Debug)]
pub(crate) struct Timed<T> {
    pub(crate) since: Instant,
    pub(crate) value: T,
}

/// What happened to an entry.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Nothing to finish.
    Pending,
    /// The entry is done: successfully, or with a failure.
    Done(T, Result<(), Failure>),
    /// The publish waiting on this pkid was written again (replay after a reconnect).
    Replayed(u16),
}

/// A stale rumqttc event left queued by a connection error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaleEvent {
    /// `Outgoing::Publish(pkid)`.
    Publish(u16),
    /// `Outgoing::AwaitAck(pkid)`.
    AwaitAck(u16),
}

#[derive(Debug)]
pub(crate) struct Correlation<T> {
    queued: VecDeque<Timed<T>>,
    collision: Option<(u16, Timed<T>)>,
    awaiting_ack: HashMap<u16, Timed<T>>,
    awaiting_comp: HashMap<u16, Timed<T>>,
    /// Stale publish events already correlated by `on_connection_lost`, to skip when handed out.
    precorrelated: usize,
    last_sweep: Option<Instant>,
}

impl<T> Default for Correlation<T> {
    fn default() -> Self {
        Self {
            queued: VecDeque::new(),
            collision: None,
            awaiting_ack: HashMap::new(),
            awaiting_comp: HashMap::new(),
            precorrelated: 0,
            last_sweep: None,
        }
    }
}

impl<T> Correlation<T> {
    /// Records a publish handed to rumqttc's request channel.
    pub(crate) fn enqueue(&mut self, value: T) {
        self.queued.push_back(Timed {
            since: Instant::now(),
            value,
        });
    }

    /// Takes back the publish just enqueued, when handing it over failed.
    pub(crate) fn unenqueue(&mut self) -> Option<T> {
        self.queued.pop_back().map(|timed| timed.value)
    }

    /// Every open entry.
    pub(crate) fn len(&self) -> usize {
        self.queued.len()
            + usize::from(self.collision.is_some())
            + self.awaiting_ack.len()
            + self.awaiting_comp.len()
    }

    /// Publishes written and waiting for an acknowledgement.
    #[cfg(test)]
    pub(crate) fn awaiting(&self) -> usize {
        self.awaiting_ack.len() + self.awaiting_comp.len() + usize::from(self.collision.is_some())
    }

    /// The entry waiting for PUBACK / PUBREC on `pkid`.
    pub(crate) fn awaiting_ack_mut(&mut self, pkid: u16) -> Option<&mut T> {
        self.awaiting_ack
            .get_mut(&pkid)
            .map(|timed| &mut timed.value)
    }

    /// `Outgoing::Publish(pkid)` was handed out.
    pub(crate) fn on_publish(&mut self, pkid: u16) -> Step<T> {
        if self.precorrelated > 0 {
            self.precorrelated -= 1;
            return Step::Pending;
        }
        self.correlate_publish(pkid)
    }

    /// `Outgoing::AwaitAck(pkid)` was handed out.
    pub(crate) fn on_await_ack(&mut self, pkid: u16) -> Step<T> {
        if self.precorrelated > 0 {
            self.precorrelated -= 1;
            return Step::Pending;
        }
        self.correlate_await_ack(pkid)
    }

    fn correlate_publish(&mut self, pkid: u16) -> Step<T> {
        if let Some((parked, _)) = &self.collision
            && *parked == pkid
            && let Some((_, timed)) = self.collision.take()
        {
            return self.insert_awaiting(pkid, timed);
        }
        if pkid != 0 && self.awaiting_ack.contains_key(&pkid) {
            return Step::Replayed(pkid);
        }
        match self.queued.pop_front() {
            None => Step::Pending,
            Some(timed) if pkid == 0 => Step::Done(timed.value, Ok(())),
            Some(timed) => self.insert_awaiting(pkid, timed),
        }
    }

    fn insert_awaiting(&mut self, pkid: u16, timed: Timed<T>) -> Step<T> {
        match self.awaiting_ack.insert(pkid, timed) {
            Some(previous) => Step::Done(previous.value, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    fn correlate_await_ack(&mut self, pkid: u16) -> Step<T> {
        let Some(timed) = self.queued.pop_front() else {
            return Step::Pending;
        };
        match self.collision.replace((pkid, timed)) {
            Some((_, previous)) => Step::Done(previous.value, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    /// A PUBACK for `pkid` arrived; `failure` when its reason code is an error.
    pub(crate) fn on_puback(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        match self.awaiting_ack.remove(&pkid) {
            Some(timed) => Step::Done(timed.value, failure.map_or(Ok(()), Err)),
            None => Step::Pending,
        }
    }

    /// A PUBREC for `pkid` arrived. Without failure the publish now waits for PUBCOMP.
    pub(crate) fn on_pubrec(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        let Some(timed) = self.awaiting_ack.remove(&pkid) else {
            return Step::Pending;
        };
        if let Some(failure) = failure {
            return Step::Done(timed.value, Err(failure));
        }
        match self.awaiting_comp.insert(pkid, timed) {
            Some(previous) => Step::Done(previous.value, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    /// A PUBCOMP for `pkid` arrived.
    pub(crate) fn on_pubcomp(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        match self.awaiting_comp.remove(&pkid) {
            Some(timed) => Step::Done(timed.value, failure.map_or(Ok(()), Err)),
            None => Step::Pending,
        }
    }

    /// The connection failed. `stale` are the publish events rumqttc still holds in its event
    /// queue, in order; those not yet correlated are correlated now. Returns what that finished
    /// (QoS 0 publishes written before the failure).
    pub(crate) fn on_connection_lost(
        &mut self,
        stale: impl IntoIterator<Item = StaleEvent>,
    ) -> Vec<(T, Result<(), Failure>)> {
        let mut done = Vec::new();
        for event in stale.into_iter().skip(self.precorrelated) {
            let step = match event {
                StaleEvent::Publish(pkid) => self.correlate_publish(pkid),
                StaleEvent::AwaitAck(pkid) => self.correlate_await_ack(pkid),
            };
            self.precorrelated += 1;
            if let Step::Done(value, result) = step {
                done.push((value, result));
            }
        }
        done
    }

    /// The broker answered CONNACK without a session, and rumqttc dropped its `pending` queue,
    /// which held `unsent` publishes that were never written. Everything waiting for an
    /// acknowledgement, the parked collision, and those `unsent` publishes are lost.
    pub(crate) fn on_session_lost(&mut self, unsent: usize) -> Vec<T> {
        let mut lost: Vec<Timed<T>> = Vec::new();
        lost.extend(self.collision.take().map(|(_, timed)| timed));
        lost.extend(self.awaiting_ack.drain().map(|(_, timed)| timed));
        lost.extend(self.awaiting_comp.drain().map(|(_, timed)| timed));
        let unsent = unsent.min(self.queued.len());
        lost.extend(self.queued.drain(..unsent));
        lost.sort_by_key(|timed| timed.since);
        lost.into_iter().map(|timed| timed.value).collect()
    }

    /// Ends entries that have waited for an acknowledgement longer than `bound`. Looks at most
    /// once per second, so calling it on every event costs one clock read.
    pub(crate) fn expire(&mut self, now: Instant, bound: Duration) -> Vec<T> {
        if self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let old = |timed: &Timed<T>| now.duration_since(timed.since) >= bound;
        let mut expired = Vec::new();
        for map in [&mut self.awaiting_ack, &mut self.awaiting_comp] {
            if map.values().any(old) {
                let pkids: Vec<u16> = map
                    .iter()
                    .filter(|(_, timed)| old(timed))
                    .map(|(&pkid, _)| pkid)
                    .collect();
                expired.extend(pkids.into_iter().filter_map(|pkid| map.remove(&pkid)));
            }
        }
        expired.sort_by_key(|timed| timed.since);
        expired.into_iter().map(|timed| timed.value).collect()
    }

    /// Takes every open entry, oldest first (the event loop is going away).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.on_session_lost(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<T: std::fmt::Debug>(step: Step<T>) -> (T, Result<(), Failure>) {
        match step {
            Step::Done(value, result) => (value, result),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn pending<T: std::fmt::Debug>(step: Step<T>) {
        assert!(
            matches!(step, Step::Pending),
            "expected Pending, got {step:?}"
        );
    }

    #[test]
    fn qos0_ends_when_written() {
        let mut table = Correlation::default();
        table.enqueue("a");
        table.enqueue("b");
        assert_eq!(done(table.on_publish(0)), ("a", Ok(())));
        assert_eq!(done(table.on_publish(0)), ("b", Ok(())));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn qos1_ends_at_its_puback_even_out_of_order() {
        let mut table = Correlation::default();
        for name in ["a", "b", "c"] {
            table.enqueue(name);
        }
        for pkid in 1..=3 {
            pending(table.on_publish(pkid));
        }
        assert_eq!(done(table.on_puback(2, None)), ("b", Ok(())));
        assert_eq!(done(table.on_puback(3, None)), ("c", Ok(())));
        assert_eq!(
            done(table.on_puback(1, Some(Failure::Reason("not_authorized")))),
            ("a", Err(Failure::Reason("not_authorized")))
        );
        pending(table.on_puback(1, None));
    }

    #[test]
    fn qos2_waits_for_pubcomp_while_its_pkid_is_reused() {
        let mut table = Correlation::default();
        table.enqueue("old");
        table.enqueue("new");
        pending(table.on_publish(1));
        pending(table.on_pubrec(1, None));
        // rumqttc freed pkid 1 at PUBREC: the next publish may take it.
        pending(table.on_publish(1));
        assert_eq!(done(table.on_pubcomp(1, None)), ("old", Ok(())));
        assert_eq!(done(table.on_puback(1, None)), ("new", Ok(())));
    }

    #[test]
    fn a_collision_is_parked_until_its_pkid_is_free() {
        let mut table = Correlation::default();
        for name in ["first", "second", "parked"] {
            table.enqueue(name);
        }
        pending(table.on_publish(1));
        pending(table.on_publish(2));
        // pkid 1 is still in flight: the third publish collides on it.
        pending(table.on_await_ack(1));
        assert_eq!(table.awaiting(), 3);
        assert_eq!(done(table.on_puback(1, None)), ("first", Ok(())));
        // rumqttc writes the parked publish with pkid 1.
        pending(table.on_publish(1));
        assert_eq!(done(table.on_puback(2, None)), ("second", Ok(())));
        assert_eq!(done(table.on_puback(1, None)), ("parked", Ok(())));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_replay_keeps_waiting_for_the_same_ack() {
        let mut table = Correlation::default();
        table.enqueue("a");
        pending(table.on_publish(5));
        assert!(table.on_connection_lost([]).is_empty());
        assert!(matches!(table.on_publish(5), Step::Replayed(5)));
        assert_eq!(done(table.on_puback(5, None)), ("a", Ok(())));
    }

    #[test]
    fn session_loss_ends_exactly_what_rumqttc_dropped() {
        let mut table = Correlation::default();
        for name in ["acked-later", "unsent-1", "unsent-2", "after-reconnect"] {
            table.enqueue(name);
        }
        pending(table.on_publish(1));
        // Connection lost with "unsent-1" and "unsent-2" still in the channel; rumqttc moves them
        // to `pending`. "after-reconnect" is sent after the CONNACK, so it is not in `pending`.
        assert!(table.on_connection_lost([]).is_empty());
        let lost = table.on_session_lost(2);
        assert_eq!(lost, ["acked-later", "unsent-1", "unsent-2"]);
        pending(table.on_publish(1));
        assert_eq!(done(table.on_puback(1, None)), ("after-reconnect", Ok(())));
    }

    #[test]
    fn stale_events_are_correlated_once() {
        let mut table = Correlation::default();
        for name in ["written", "qos0", "queued"] {
            table.enqueue(name);
        }
        // Both events were queued inside rumqttc when the write failed.
        let finished = table.on_connection_lost([StaleEvent::Publish(7), StaleEvent::Publish(0)]);
        assert_eq!(finished, [("qos0", Ok(()))]);
        // A second failure before they were handed out must not correlate them again.
        assert!(
            table
                .on_connection_lost([StaleEvent::Publish(7), StaleEvent::Publish(0)])
                .is_empty()
        );
        // Handed out later: skipped.
        pending(table.on_publish(7));
        pending(table.on_publish(0));
        assert_eq!(table.on_session_lost(1), ["written", "queued"]);
    }

    #[test]
    fn expiry_ends_only_old_unacknowledged_entries() {
        let mut table = Correlation::default();
        table.enqueue("old");
        pending(table.on_publish(1));
        let later = Instant::now() + Duration::from_secs(120);
        table.enqueue("young");
        pending(table.on_publish(2));
        assert!(
            table
                .expire(Instant::now(), Duration::from_secs(60))
                .is_empty()
        );
        // Within a second of the last sweep nothing is looked at.
        assert!(
            table
                .expire(Instant::now(), Duration::from_secs(0))
                .is_empty()
        );
        assert_eq!(table.expire(later, Duration::from_secs(60)).len(), 2);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn drain_takes_everything() {
        let mut table = Correlation::default();
        for name in ["a", "b", "c"] {
            table.enqueue(name);
        }
        pending(table.on_publish(1));
        pending(table.on_await_ack(1));
        assert_eq!(table.drain(), ["a", "b", "c"]);
        assert_eq!(table.len(), 0);
    }
}
