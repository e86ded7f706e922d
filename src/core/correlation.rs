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
//! stay queued: publish events, and acknowledgements it read in the same batch as the end of the
//! stream. Those stale events are applied at once ([`Correlation::apply_stale`]) and skipped when
//! they are later handed out, so that when the next CONNACK says the session is gone, the first
//! `unsent` queued entries are exactly the requests rumqttc dropped with `pending`, and a publish
//! the broker did acknowledge is not counted as lost. Nothing is matched by guesswork: each step follows rumqttc's own order.
//!
//! When the session is gone, the traced event loop can put those requests back into `pending`
//! (publishes with their pkid cleared) instead of letting rumqttc drop them;
//! [`Correlation::requeue`] then moves their entries back to the front of `queued`, in the order
//! of the new `pending`.
//!
//! An entry whose span has already ended (its acknowledgement is overdue, see
//! [`Correlation::expire`]) stays in the table as a ghost until rumqttc is done with its packet,
//! so that a late replay or acknowledgement still lands on the right place and never shifts the
//! order of the others.
//!
//! The table is bounded by rumqttc's structure: at most the in-flight limit waits for
//! acknowledgements, and `queued` holds at most the channel capacity plus `pending`.

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

/// One place in the table: the entry, or `None` once its span ended early (a ghost), with the
/// moment it was handed over or last written.
#[derive(Debug)]
struct Slot<T> {
    /// Hand-over order, to end entries oldest first.
    seq: u64,
    since: Instant,
    value: Option<T>,
}

impl<T> Slot<T> {
    fn ghost() -> Self {
        Self {
            seq: 0,
            since: Instant::now(),
            value: None,
        }
    }
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

impl<T> Step<T> {
    fn done(slot: Slot<T>, result: Result<(), Failure>) -> Self {
        match slot.value {
            Some(value) => Self::Done(value, result),
            None => Self::Pending,
        }
    }
}

/// A rumqttc event that concerns the publish spans, in version-independent form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `Outgoing::Publish(pkid)`.
    Written(u16),
    /// `Outgoing::AwaitAck(pkid)`.
    Parked(u16),
    /// An incoming PUBACK; the failure when its reason code is an error.
    PubAck(u16, Option<Failure>),
    /// An incoming PUBREC.
    PubRec(u16, Option<Failure>),
    /// An incoming PUBCOMP.
    PubComp(u16, Option<Failure>),
}

/// Where a request put back into `pending` after a session loss came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resent {
    /// A publish that was written with this pkid and not acknowledged.
    Inflight(u16),
    /// The publish rumqttc had parked on a packet-id collision.
    Collision,
    /// A publish that was never written (pkid 0 in `pending`).
    Unsent,
}

#[derive(Debug)]
pub(crate) struct Correlation<T> {
    queued: VecDeque<Slot<T>>,
    collision: Option<(u16, Slot<T>)>,
    awaiting_ack: HashMap<u16, Slot<T>>,
    awaiting_comp: HashMap<u16, Slot<T>>,
    /// Stale events already applied when the connection broke, to skip when handed out.
    precorrelated: usize,
    last_sweep: Option<Instant>,
    handed_over: u64,
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
            handed_over: 0,
        }
    }
}

fn take_values<T>(slots: impl IntoIterator<Item = Slot<T>>) -> Vec<T> {
    let mut slots: Vec<Slot<T>> = slots.into_iter().collect();
    slots.sort_by_key(|slot| slot.seq);
    slots.into_iter().filter_map(|slot| slot.value).collect()
}

impl<T> Correlation<T> {
    /// Records a publish handed to rumqttc's request channel.
    pub(crate) fn enqueue(&mut self, value: T) {
        self.handed_over += 1;
        self.queued.push_back(Slot {
            seq: self.handed_over,
            since: Instant::now(),
            value: Some(value),
        });
    }

    /// Takes back the publish just enqueued, when handing it over failed.
    pub(crate) fn unenqueue(&mut self) -> Option<T> {
        self.queued.pop_back().and_then(|slot| slot.value)
    }

    fn slots(&self) -> impl Iterator<Item = &Slot<T>> {
        self.queued
            .iter()
            .chain(self.collision.iter().map(|(_, slot)| slot))
            .chain(self.awaiting_ack.values())
            .chain(self.awaiting_comp.values())
    }

    /// Open entries (spans not ended yet).
    pub(crate) fn len(&self) -> usize {
        self.slots().filter(|slot| slot.value.is_some()).count()
    }

    /// Places held, ghosts included (what bounds the table's memory).
    #[cfg(test)]
    pub(crate) fn places(&self) -> usize {
        self.slots().count()
    }

    /// The open entry waiting for PUBACK / PUBREC on `pkid`.
    pub(crate) fn awaiting_ack_mut(&mut self, pkid: u16) -> Option<&mut T> {
        self.awaiting_ack
            .get_mut(&pkid)
            .and_then(|slot| slot.value.as_mut())
    }

    /// Whether the event being handed out was already applied when the connection broke (it
    /// then must not be applied again).
    pub(crate) fn skip_stale(&mut self) -> bool {
        let stale = self.precorrelated > 0;
        if stale {
            self.precorrelated -= 1;
        }
        stale
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, signal: Signal) -> Step<T> {
        match signal {
            Signal::Written(pkid) => self.correlate_publish(pkid),
            Signal::Parked(pkid) => self.correlate_await_ack(pkid),
            Signal::PubAck(pkid, failure) => self.on_puback(pkid, failure),
            Signal::PubRec(pkid, failure) => self.on_pubrec(pkid, failure),
            Signal::PubComp(pkid, failure) => self.on_pubcomp(pkid, failure),
        }
    }

    /// Applies an event rumqttc still holds in its queue when the connection broke, and
    /// remembers to skip it when it is handed out after the reconnect.
    pub(crate) fn apply_stale(&mut self, signal: Signal) -> Step<T> {
        self.precorrelated += 1;
        self.apply(signal)
    }

    /// How many of the events rumqttc still holds were already applied.
    pub(crate) fn stale_applied(&self) -> usize {
        self.precorrelated
    }

    fn correlate_publish(&mut self, pkid: u16) -> Step<T> {
        if let Some((parked, _)) = &self.collision
            && *parked == pkid
            && let Some((_, slot)) = self.collision.take()
        {
            return self.insert_awaiting(pkid, slot);
        }
        if pkid != 0 && self.awaiting_ack.contains_key(&pkid) {
            return Step::Replayed(pkid);
        }
        match self.queued.pop_front() {
            None => Step::Pending,
            Some(slot) if pkid == 0 => Step::done(slot, Ok(())),
            Some(slot) => self.insert_awaiting(pkid, slot),
        }
    }

    fn insert_awaiting(&mut self, pkid: u16, mut slot: Slot<T>) -> Step<T> {
        // The acknowledgement bound counts from the write.
        slot.since = Instant::now();
        match self.awaiting_ack.insert(pkid, slot) {
            Some(previous) => Step::done(previous, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    fn correlate_await_ack(&mut self, pkid: u16) -> Step<T> {
        let Some(slot) = self.queued.pop_front() else {
            return Step::Pending;
        };
        match self.collision.replace((pkid, slot)) {
            Some((_, previous)) => Step::done(previous, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    /// A PUBACK for `pkid` arrived; `failure` when its reason code is an error.
    fn on_puback(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        match self.awaiting_ack.remove(&pkid) {
            Some(slot) => Step::done(slot, failure.map_or(Ok(()), Err)),
            None => Step::Pending,
        }
    }

    /// A PUBREC for `pkid` arrived. Without failure the publish now waits for PUBCOMP.
    fn on_pubrec(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        let Some(slot) = self.awaiting_ack.remove(&pkid) else {
            return Step::Pending;
        };
        if let Some(failure) = failure {
            return Step::done(slot, Err(failure));
        }
        match self.awaiting_comp.insert(pkid, slot) {
            Some(previous) => Step::done(previous, Err(Failure::Desynchronized)),
            None => Step::Pending,
        }
    }

    /// A PUBCOMP for `pkid` arrived.
    fn on_pubcomp(&mut self, pkid: u16, failure: Option<Failure>) -> Step<T> {
        match self.awaiting_comp.remove(&pkid) {
            Some(slot) => Step::done(slot, failure.map_or(Ok(()), Err)),
            None => Step::Pending,
        }
    }

    /// The broker answered CONNACK without a session, and rumqttc dropped its `pending` queue,
    /// which held `unsent` publishes that were never written. Everything waiting for an
    /// acknowledgement, the parked collision, and those `unsent` publishes are lost.
    pub(crate) fn on_session_lost(&mut self, unsent: usize) -> Vec<T> {
        let unsent = unsent.min(self.queued.len());
        let dropped: Vec<Slot<T>> = self.queued.drain(..unsent).collect();
        let mut lost = self.take_waiting();
        lost.extend(take_values(dropped));
        lost
    }

    /// Everything waiting for an acknowledgement or parked, oldest first.
    fn take_waiting(&mut self) -> Vec<T> {
        let collision = self.collision.take().map(|(_, slot)| slot);
        take_values(
            collision
                .into_iter()
                .chain(self.awaiting_ack.drain().map(|(_, slot)| slot))
                .chain(self.awaiting_comp.drain().map(|(_, slot)| slot)),
        )
    }

    /// The session is gone and the requests of `plan` were put back into `pending`, in that
    /// order, to be sent again: their entries go back to the front of `queued` in the same
    /// order. What still waited for an acknowledgement and is not resent (QoS 2 publishes past
    /// PUBREC, whose payload rumqttc no longer holds) is returned as lost.
    pub(crate) fn requeue(&mut self, plan: &[Resent]) -> Vec<T> {
        let mut front: Vec<Slot<T>> = Vec::with_capacity(plan.len());
        for item in plan {
            let slot = match item {
                Resent::Inflight(pkid) => self.awaiting_ack.remove(pkid),
                Resent::Collision => self.collision.take().map(|(_, slot)| slot),
                Resent::Unsent => self.queued.pop_front(),
            };
            front.push(slot.unwrap_or_else(Slot::ghost));
        }
        let lost = self.take_waiting();
        for slot in front.into_iter().rev() {
            self.queued.push_front(slot);
        }
        lost
    }

    /// Ends entries that have waited for an acknowledgement longer than `bound`, leaving ghosts
    /// in their places. Looks at most once per second, so calling it often costs a clock read.
    pub(crate) fn expire(&mut self, now: Instant, bound: Duration) -> Vec<T> {
        if self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let mut expired: Vec<(u64, T)> = Vec::new();
        for slot in self
            .awaiting_ack
            .values_mut()
            .chain(self.awaiting_comp.values_mut())
        {
            if now.saturating_duration_since(slot.since) >= bound
                && let Some(value) = slot.value.take()
            {
                expired.push((slot.seq, value));
            }
        }
        expired.sort_by_key(|(seq, _)| *seq);
        expired.into_iter().map(|(_, value)| value).collect()
    }

    /// Takes every open entry, oldest first (the event loop is going away).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.on_session_lost(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> Correlation<T> {
        fn apply_ack(
            &mut self,
            ack: fn(u16, Option<Failure>) -> Signal,
            pkid: u16,
            failure: Option<Failure>,
        ) -> Step<T> {
            self.apply(ack(pkid, failure))
        }

        /// What the traced event loop does with the events rumqttc still holds.
        fn lost(&mut self, stale: &[Signal]) -> Vec<(T, Result<(), Failure>)> {
            let mut done = Vec::new();
            for signal in stale.iter().skip(self.stale_applied()) {
                if let Step::Done(value, result) = self.apply_stale(*signal) {
                    done.push((value, result));
                }
            }
            done
        }

        fn handed_out(&mut self, signal: Signal) -> Step<T> {
            if self.skip_stale() {
                Step::Pending
            } else {
                self.apply(signal)
            }
        }
    }

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
        assert_eq!(done(table.apply(Signal::Written(0))), ("a", Ok(())));
        assert_eq!(done(table.apply(Signal::Written(0))), ("b", Ok(())));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn qos1_ends_at_its_puback_even_out_of_order() {
        let mut table = Correlation::default();
        for name in ["a", "b", "c"] {
            table.enqueue(name);
        }
        for pkid in 1..=3 {
            pending(table.apply(Signal::Written(pkid)));
        }
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 2, None)),
            ("b", Ok(()))
        );
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 3, None)),
            ("c", Ok(()))
        );
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 1, Some(Failure::Reason("not_authorized")))),
            ("a", Err(Failure::Reason("not_authorized")))
        );
        pending(table.apply_ack(Signal::PubAck, 1, None));
    }

    #[test]
    fn qos2_waits_for_pubcomp_while_its_pkid_is_reused() {
        let mut table = Correlation::default();
        table.enqueue("old");
        table.enqueue("new");
        pending(table.apply(Signal::Written(1)));
        pending(table.apply_ack(Signal::PubRec, 1, None));
        // rumqttc freed pkid 1 at PUBREC: the next publish may take it.
        pending(table.apply(Signal::Written(1)));
        assert_eq!(
            done(table.apply_ack(Signal::PubComp, 1, None)),
            ("old", Ok(()))
        );
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 1, None)),
            ("new", Ok(()))
        );
    }

    #[test]
    fn a_collision_is_parked_until_its_pkid_is_free() {
        let mut table = Correlation::default();
        for name in ["first", "second", "parked"] {
            table.enqueue(name);
        }
        pending(table.apply(Signal::Written(1)));
        pending(table.apply(Signal::Written(2)));
        // pkid 1 is still in flight: the third publish collides on it.
        pending(table.apply(Signal::Parked(1)));
        assert_eq!(table.places(), 3);
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 1, None)),
            ("first", Ok(()))
        );
        // rumqttc writes the parked publish with pkid 1.
        pending(table.apply(Signal::Written(1)));
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 2, None)),
            ("second", Ok(()))
        );
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 1, None)),
            ("parked", Ok(()))
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_replay_keeps_waiting_for_the_same_ack() {
        let mut table = Correlation::default();
        table.enqueue("a");
        pending(table.apply(Signal::Written(5)));
        assert!(table.lost(&[]).is_empty());
        assert!(matches!(table.apply(Signal::Written(5)), Step::Replayed(5)));
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 5, None)),
            ("a", Ok(()))
        );
    }

    #[test]
    fn session_loss_ends_exactly_what_rumqttc_dropped() {
        let mut table = Correlation::default();
        for name in ["acked-later", "unsent-1", "unsent-2", "after-reconnect"] {
            table.enqueue(name);
        }
        pending(table.apply(Signal::Written(1)));
        // Connection lost with "unsent-1" and "unsent-2" still in the channel; rumqttc moves them
        // to `pending`. "after-reconnect" is sent after the CONNACK, so it is not in `pending`.
        assert!(table.lost(&[]).is_empty());
        let lost = table.on_session_lost(2);
        assert_eq!(lost, ["acked-later", "unsent-1", "unsent-2"]);
        pending(table.apply(Signal::Written(1)));
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 1, None)),
            ("after-reconnect", Ok(()))
        );
    }

    #[test]
    fn stale_events_are_correlated_once() {
        let mut table = Correlation::default();
        for name in ["written", "qos0", "queued"] {
            table.enqueue(name);
        }
        // Both events were queued inside rumqttc when the write failed.
        let finished = table.lost(&[Signal::Written(7), Signal::Written(0)]);
        assert_eq!(finished, [("qos0", Ok(()))]);
        // A second failure before they were handed out must not correlate them again.
        assert!(
            table
                .lost(&[Signal::Written(7), Signal::Written(0)])
                .is_empty()
        );
        // Handed out later: skipped.
        pending(table.handed_out(Signal::Written(7)));
        pending(table.handed_out(Signal::Written(0)));
        assert_eq!(table.on_session_lost(1), ["written", "queued"]);
    }

    #[test]
    fn an_ack_read_before_the_connection_broke_still_counts() {
        let mut table = Correlation::default();
        table.enqueue("acked");
        table.enqueue("unacked");
        pending(table.handed_out(Signal::Written(1)));
        pending(table.handed_out(Signal::Written(2)));
        // rumqttc read PUBACK 1 and then the end of the stream: the event is still queued.
        assert_eq!(table.lost(&[Signal::PubAck(1, None)]), [("acked", Ok(()))]);
        // The session is gone: only the unacknowledged publish is lost.
        assert_eq!(table.on_session_lost(0), ["unacked"]);
        // The stale PUBACK handed out later is skipped.
        pending(table.handed_out(Signal::PubAck(1, None)));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn expiry_ends_only_old_unacknowledged_entries() {
        let mut table = Correlation::default();
        table.enqueue("old");
        pending(table.apply(Signal::Written(1)));
        let later = Instant::now() + Duration::from_secs(120);
        table.enqueue("young");
        pending(table.apply(Signal::Written(2)));
        assert!(
            table
                .expire(Instant::now(), Duration::from_secs(60))
                .is_empty()
        );
        // Within a second of the last sweep nothing is looked at.
        assert!(table.expire(Instant::now(), Duration::ZERO).is_empty());
        assert_eq!(
            table.expire(later, Duration::from_secs(60)),
            ["old", "young"]
        );
        assert_eq!(table.len(), 0);
        // Ghosts keep their places until rumqttc is done with the packets.
        assert_eq!(table.places(), 2);
        pending(table.apply_ack(Signal::PubAck, 1, None));
        assert_eq!(table.places(), 1);
    }

    #[test]
    fn a_replay_after_expiry_does_not_shift_the_queue() {
        let mut table = Correlation::default();
        table.enqueue("expired");
        pending(table.apply(Signal::Written(3)));
        let later = Instant::now() + Duration::from_secs(120);
        assert_eq!(table.expire(later, Duration::from_secs(60)), ["expired"]);
        table.enqueue("next");
        // rumqttc replays pkid 3 after a reconnect: the ghost takes it, "next" stays queued.
        assert!(matches!(table.apply(Signal::Written(3)), Step::Replayed(3)));
        pending(table.apply_ack(Signal::PubAck, 3, None));
        assert_eq!(done(table.apply(Signal::Written(0))), ("next", Ok(())));
    }

    #[test]
    fn requeue_restores_the_order_of_the_new_pending() {
        let mut table = Correlation::default();
        for name in ["a", "b", "parked", "c", "later"] {
            table.enqueue(name);
        }
        pending(table.apply(Signal::Written(1))); // a
        pending(table.apply(Signal::Written(2))); // b
        pending(table.apply(Signal::Parked(1))); // parked on pkid 1
        assert!(table.lost(&[]).is_empty());
        // rumqttc's pending was [a(1), b(2), c(0)]; "later" is still in the channel. The
        // traced event loop puts back [a, b, parked, c], pkids cleared.
        let lost = table.requeue(&[
            Resent::Inflight(1),
            Resent::Inflight(2),
            Resent::Collision,
            Resent::Unsent,
        ]);
        assert!(lost.is_empty());
        for (pkid, name) in [(1, "a"), (2, "b"), (3, "parked"), (4, "c"), (5, "later")] {
            pending(table.apply(Signal::Written(pkid)));
            assert_eq!(
                done(table.apply_ack(Signal::PubAck, pkid, None)),
                (name, Ok(()))
            );
        }
    }

    #[test]
    fn requeue_loses_qos2_publishes_past_pubrec() {
        let mut table = Correlation::default();
        table.enqueue("released");
        table.enqueue("written");
        pending(table.apply(Signal::Written(1)));
        pending(table.apply_ack(Signal::PubRec, 1, None));
        pending(table.apply(Signal::Written(2)));
        let lost = table.requeue(&[Resent::Inflight(2)]);
        assert_eq!(lost, ["released"]);
        pending(table.apply(Signal::Written(7)));
        assert_eq!(
            done(table.apply_ack(Signal::PubAck, 7, None)),
            ("written", Ok(()))
        );
    }

    #[test]
    fn requeue_keeps_a_place_for_a_publish_it_has_no_entry_for() {
        let mut table: Correlation<&str> = Correlation::default();
        table.enqueue("mine");
        // pkid 9 was never seen (its entry expired and was acknowledged meanwhile, say).
        let lost = table.requeue(&[Resent::Inflight(9), Resent::Unsent]);
        assert!(lost.is_empty());
        pending(table.apply(Signal::Written(0))); // the ghost
        assert_eq!(done(table.apply(Signal::Written(0))), ("mine", Ok(())));
    }

    #[test]
    fn drain_takes_everything() {
        let mut table = Correlation::default();
        for name in ["a", "b", "c"] {
            table.enqueue(name);
        }
        pending(table.apply(Signal::Written(1)));
        pending(table.apply(Signal::Parked(1)));
        assert_eq!(table.drain(), ["a", "b", "c"]);
        assert_eq!(table.len(), 0);
    }
}
