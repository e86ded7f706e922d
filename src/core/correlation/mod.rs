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
/// moment it was last written (the acknowledgement bound counts from there).
#[derive(Debug)]
struct Slot<T> {
    /// Hand-over order, to end entries oldest first.
    seq: u64,
    written: Option<Instant>,
    value: Option<T>,
}

impl<T> Slot<T> {
    fn ghost() -> Self {
        Self {
            seq: 0,
            written: None,
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
    /// The final acknowledgement for this pkid came after its entry had ended early (a ghost:
    /// `ack_timeout`); nothing to finish, but worth a log line.
    Late(u16),
}

impl<T> Step<T> {
    fn done(slot: Slot<T>, result: Result<(), Failure>) -> Self {
        match slot.value {
            Some(value) => Self::Done(value, result),
            None => Self::Pending,
        }
    }

    /// The final acknowledgement for `pkid` freed `slot`.
    fn acknowledged(pkid: u16, slot: Slot<T>, result: Result<(), Failure>) -> Self {
        match slot.value {
            Some(value) => Self::Done(value, result),
            None => Self::Late(pkid),
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
            written: None,
            value: Some(value),
        });
    }

    /// Takes back the publish just enqueued, when handing it over failed.
    pub(crate) fn unenqueue(&mut self) -> Option<T> {
        self.queued.pop_back().and_then(|slot| slot.value)
    }

    #[cfg(test)]
    fn slots(&self) -> impl Iterator<Item = &Slot<T>> {
        self.queued
            .iter()
            .chain(self.collision.iter().map(|(_, slot)| slot))
            .chain(self.awaiting_ack.values())
            .chain(self.awaiting_comp.values())
    }

    /// Open entries (spans not ended yet).
    #[cfg(test)]
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
        // A pkid still waiting for its acknowledgement is written again only as a replay: rumqttc
        // frees a parked publish after handing out the PUBACK that frees its pkid, so a replay
        // after a reconnect is told apart from the release of a publish parked on that pkid.
        if pkid != 0 && self.awaiting_ack.contains_key(&pkid) {
            return Step::Replayed(pkid);
        }
        if let Some((parked, _)) = &self.collision
            && *parked == pkid
            && let Some((_, slot)) = self.collision.take()
        {
            return self.insert_awaiting(pkid, slot);
        }
        match self.queued.pop_front() {
            None => Step::Pending,
            Some(slot) if pkid == 0 => Step::done(slot, Ok(())),
            Some(slot) => self.insert_awaiting(pkid, slot),
        }
    }

    fn insert_awaiting(&mut self, pkid: u16, mut slot: Slot<T>) -> Step<T> {
        // The acknowledgement bound counts from the write.
        slot.written = Some(Instant::now());
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
            Some(slot) => Step::acknowledged(pkid, slot, failure.map_or(Ok(()), Err)),
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
            Some(slot) => Step::acknowledged(pkid, slot, failure.map_or(Ok(()), Err)),
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
    /// PUBREC, whose payload rumqttc no longer holds) is returned as lost. `resent` is called on
    /// each entry that was written before: it goes out again, a re-delivery.
    pub(crate) fn requeue(&mut self, plan: &[Resent], mut resent: impl FnMut(&mut T)) -> Vec<T> {
        let mut front: Vec<Slot<T>> = Vec::with_capacity(plan.len());
        for item in plan {
            let slot = match item {
                Resent::Inflight(pkid) => self.awaiting_ack.remove(pkid).map(|mut slot| {
                    if let Some(value) = slot.value.as_mut() {
                        resent(value);
                    }
                    slot
                }),
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
    /// in their places (the tracker calls this at most once a second).
    pub(crate) fn expire(&mut self, now: Instant, bound: Duration) -> Vec<T> {
        let mut expired: Vec<(u64, T)> = Vec::new();
        for slot in self
            .awaiting_ack
            .values_mut()
            .chain(self.awaiting_comp.values_mut())
        {
            if slot
                .written
                .is_some_and(|written| now.saturating_duration_since(written) >= bound)
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
mod tests;
