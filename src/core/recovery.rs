//! What the traced event loop does around a reconnect that rumqttc does not (see
//! [`crate::reconnect`] for the user's view): it holds the requests that were never written and
//! feeds them back within the in-flight window, puts back what rumqttc drops when the broker
//! has lost the session, and ends the spans of what is lost for good.

use std::collections::VecDeque;

use bytes::Bytes;

use super::correlation::{Failure, Resent, Signal};
use super::logs;
use super::protocol::{Protocol, RequestKind};
use super::publish::OpenPublish;
use super::telemetry::Telemetry;
use super::tracking::{PublishTable, after_step};

/// What rumqttc's `pending` queue held when a connection attempt began.
pub(crate) struct Attempt<P: Protocol> {
    /// Publishes in it that were never written (rumqttc drops them with `pending` when the
    /// CONNACK has no session).
    unsent: usize,
    /// A copy of it, to put back what rumqttc drops (only when resending is on).
    snapshot: Option<VecDeque<P::Request>>,
}

/// The reconnect state of one traced event loop.
pub(crate) struct Recovery<P: Protocol> {
    /// Requests taken out of rumqttc's `pending` after a connection error, fed back within the
    /// in-flight window.
    held: VecDeque<P::Request>,
    /// The payload of the publish last fed back, to recognise it in `pending`.
    fed: Option<Bytes>,
    /// The broker's Receive Maximum from the last CONNACK (MQTT 5).
    receive_maximum: Option<u16>,
    /// Put requests back after a session loss (on by default).
    pub(crate) resend: bool,
}

impl<P: Protocol> Default for Recovery<P> {
    fn default() -> Self {
        Self {
            held: VecDeque::new(),
            fed: None,
            receive_maximum: None,
            resend: true,
        }
    }
}

/// Whether `request` is a publish that takes a packet id when rumqttc sends it.
fn takes_pkid<P: Protocol>(request: &P::Request) -> bool {
    P::publish_of(request).is_some_and(|publish| P::view(publish).pkid == 0)
}

/// A publish to be sent again on a new session: a fresh packet id, and the DUP flag when it was
/// written before, since the broker may have it already ([MQTT-3.3.1-1]: the DUP flag MUST be
/// set to 1 when the client attempts to re-deliver a PUBLISH).
fn fresh<P: Protocol>(mut publish: P::Publish, written_before: bool) -> P::Request {
    P::set_packet(&mut publish, 0, written_before);
    P::publish_request(publish)
}

/// A written publish that rumqttc replays with its packet id after a reconnect: with the DUP
/// flag, which rumqttc 0.25 does not set ([MQTT-3.3.1-1]).
fn redelivery<P: Protocol>(request: P::Request) -> P::Request {
    match P::into_publish(request) {
        Ok(mut publish) => {
            let pkid = P::view(&publish).pkid;
            P::set_packet(&mut publish, pkid, true);
            P::publish_request(publish)
        }
        Err(other) => other,
    }
}

impl<P: Protocol> Recovery<P> {
    /// Before a poll: on a connected event loop, feeds held requests back; before a connection
    /// attempt, notes what `pending` holds.
    pub(crate) fn before_poll(
        &mut self,
        inner: &mut P::EventLoop,
        connecting: bool,
    ) -> Option<Attempt<P>> {
        if !connecting {
            self.feed(inner);
            return None;
        }
        let pending = P::pending(inner);
        let unsent = pending
            .iter()
            .filter(|request| takes_pkid::<P>(request))
            .count();
        let snapshot = self.resend.then(|| pending.clone());
        Some(Attempt { unsent, snapshot })
    }

    /// The poll failed.
    pub(crate) fn after_error(&mut self, inner: &mut P::EventLoop, attempt: Option<Attempt<P>>) {
        if let Some(Attempt {
            snapshot: Some(snapshot),
            ..
        }) = attempt
            && P::pending(inner).is_empty()
        {
            // A refused CONNACK without session: rumqttc cleared `pending`, but no session
            // started; keep everything for the next attempt.
            *P::pending(inner) = snapshot;
        }
        self.hold_unsent(inner);
    }

    /// A CONNACK was handed out after the connection attempt `attempt`.
    pub(crate) fn after_connack(
        &mut self,
        inner: &mut P::EventLoop,
        telemetry: &Telemetry,
        publishes: &mut PublishTable,
        session_present: bool,
        receive_maximum: Option<u16>,
        attempt: Attempt<P>,
    ) {
        self.receive_maximum = receive_maximum;
        if !session_present {
            self.session_lost(inner, telemetry, publishes, attempt);
        }
    }

    /// How many publishes rumqttc keeps in flight: the smaller of the client's limit and the
    /// broker's Receive Maximum (MQTT 5 section 3.2.2.3.3), as rumqttc computes it.
    fn window(&self, inner: &P::EventLoop) -> u16 {
        let limit = P::inflight_limit(inner);
        self.receive_maximum
            .map_or(limit, |broker| broker.min(limit))
    }

    /// The broker answered without a session and rumqttc cleared `pending`, which the
    /// attempt's snapshot holds when resending is on: put its requests back (publishes with
    /// fresh packet ids), with the publish rumqttc parked on a collision, which it would
    /// otherwise wait for forever.
    fn session_lost(
        &mut self,
        inner: &mut P::EventLoop,
        telemetry: &Telemetry,
        publishes: &mut PublishTable,
        attempt: Attempt<P>,
    ) {
        let mut collision = P::collision(inner).take();
        let Some(snapshot) = attempt.snapshot else {
            publishes.on_session_lost(telemetry, attempt.unsent, None);
            return;
        };
        let mut plan = Vec::with_capacity(snapshot.len() + 1);
        let mut requests = VecDeque::with_capacity(snapshot.len() + 1);
        for request in snapshot {
            match P::request_kind(&request) {
                RequestKind::Publish => {
                    let Ok(publish) = P::into_publish(request) else {
                        continue;
                    };
                    let pkid = P::view(&publish).pkid;
                    // The parked publish was taken from the channel before the requests still
                    // in it.
                    if pkid == 0
                        && let Some(parked) = collision.take()
                    {
                        requests.push_back(fresh::<P>(parked, false));
                        plan.push(Resent::Collision);
                    }
                    plan.push(match pkid {
                        0 => Resent::Unsent,
                        pkid => Resent::Inflight(pkid),
                    });
                    requests.push_back(fresh::<P>(publish, pkid != 0));
                }
                // Acknowledgements, releases and pings of the session that is gone.
                RequestKind::Release | RequestKind::SessionBound => {}
                RequestKind::Other => requests.push_back(request),
            }
        }
        if let Some(parked) = collision {
            requests.push_back(fresh::<P>(parked, false));
            plan.push(Resent::Collision);
        }
        // They go before what is already held: they were handed over earlier.
        requests.extend(self.held.drain(..));
        self.held = requests;
        publishes.on_session_lost(telemetry, attempt.unsent, Some(&plan));
    }

    /// After a connection error rumqttc holds, in `pending`, the requests that were still in
    /// its channel. It would send them all at once after the reconnect, ignoring its in-flight
    /// limit, so that new packet ids collide with ones still in use, and it keeps only the last
    /// of several colliding publishes: the others are lost. They are taken out here, in order,
    /// and fed back one by one by [`Self::feed`].
    fn hold_unsent(&mut self, inner: &mut P::EventLoop) {
        let mut pending = std::mem::take(P::pending(inner));
        // The publish fed back before this poll, if rumqttc did not get to it, is older than
        // everything held.
        let fed = self.fed.take();
        let mut older = Vec::new();
        if let (Some(fed), Some(front)) = (&fed, pending.front())
            && takes_pkid::<P>(front)
            && let Some(publish) = P::publish_of(front)
            && P::view(publish).payload.as_ptr() == fed.as_ptr()
            && P::view(publish).payload.len() == fed.len()
        {
            older.extend(pending.pop_front());
        }
        let mut unsent = Vec::new();
        for request in pending {
            match P::request_kind(&request) {
                // Replays of written publishes and releases keep their packet ids: rumqttc's
                // own replay handles them.
                RequestKind::Publish if !takes_pkid::<P>(&request) => {
                    P::pending(inner).push_back(redelivery::<P>(request));
                }
                RequestKind::Release => P::pending(inner).push_back(request),
                _ => unsent.push(request),
            }
        }
        let held = std::mem::take(&mut self.held);
        self.held = older.into_iter().chain(held).chain(unsent).collect();
    }

    /// Feeds held requests back to rumqttc: at most one publish that needs a packet id at a
    /// time, and only while the in-flight window has room (counting the replays rumqttc is about
    /// to write) and no publish is parked on a collision, so that rumqttc never collides twice.
    fn feed(&mut self, inner: &mut P::EventLoop) {
        if self.held.is_empty() {
            return;
        }
        let window = usize::from(self.window(inner));
        // Replays still in `pending` take their places in the window once rumqttc writes them.
        let replays = P::pending(inner)
            .iter()
            .filter(|request| P::publish_of(request).is_some_and(|p| P::view(p).pkid != 0))
            .count();
        while let Some(front) = self.held.front() {
            if takes_pkid::<P>(front)
                && (P::pending(inner).iter().any(takes_pkid::<P>)
                    || P::collision(inner).is_some()
                    || usize::from(P::inflight(inner)) + replays >= window)
            {
                break;
            }
            let Some(request) = self.held.pop_front() else {
                break;
            };
            if let Some(publish) = P::publish_of(&request) {
                self.fed = Some(P::view(publish).payload.clone());
            }
            P::pending(inner).push_back(request);
        }
    }
}

impl PublishTable {
    /// The connection broke; `queued` are the events rumqttc still holds, to hand out after the
    /// reconnect. Those not applied yet are applied now (a publish written, an acknowledgement
    /// read just before the end of the stream), so that a CONNACK without session finds the
    /// table as rumqttc's state really is.
    pub(crate) fn on_connection_lost(
        &mut self,
        telemetry: &Telemetry,
        queued: impl IntoIterator<Item = Signal>,
    ) {
        self.take_handed(telemetry);
        let mut finished = Vec::new();
        let already = self.table.stale_applied();
        for signal in queued.into_iter().skip(already) {
            let step = self.table.apply_stale(signal);
            finished.extend(after_step(telemetry, &mut self.table, signal, step));
        }
        for (open, result) in finished {
            self.finish(telemetry, open, result);
        }
    }

    /// A CONNACK said the session is gone, and rumqttc dropped its `pending` queue, which held
    /// `unsent` publishes never written. With `requeue`, the traced event loop has put the
    /// requests back in that order: their spans stay open. Everything else that waited ends
    /// with `session_lost`.
    pub(crate) fn on_session_lost(
        &mut self,
        telemetry: &Telemetry,
        unsent: usize,
        requeue: Option<&[Resent]>,
    ) {
        self.take_handed(telemetry);
        let lost = match requeue {
            Some(plan) => self.table.requeue(plan, OpenPublish::retransmitted),
            None => self.table.on_session_lost(unsent),
        };
        if let Some(plan) = requeue {
            logs::resent(telemetry, plan.len());
            telemetry
                .settings
                .metrics
                .connection
                .record_resent(plan.len() as u64, &telemetry.connection_metric_attributes);
        }
        for open in lost {
            self.finish(telemetry, open, Err(Failure::SessionLost));
        }
    }
}
