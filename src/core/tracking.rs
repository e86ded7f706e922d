//! The open publish spans of one connection, in two halves: [`PublishTracker`], which the
//! client hands each publish to in the order of rumqttc's request channel, and
//! [`PublishTable`], which the event loop owns and ends them from by the events rumqttc hands
//! out. Between the two runs a channel, so neither side takes the other's lock per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::Span;
use tokio::sync::mpsc;

use super::correlation::{Correlation, Failure, Signal, Step};
use super::logs;
use super::publish::OpenPublish;
use super::telemetry::Telemetry;
use crate::semconv::MESSAGING_MQTT_PACKET_ID;

/// How often overdue acknowledgements are looked for, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Polls between two looks at the clock for the overdue-ack sweep (keep-alive traffic and
/// connection errors look too, so an idle connection is swept at least every keep-alive).
const POLLS_PER_CLOCK_READ: u32 = 16;

/// What the client hands over to the event loop's table.
#[derive(Debug)]
enum Handed {
    /// A publish sent to rumqttc's channel right after, in the same order.
    Publish(OpenPublish),
    /// rumqttc refused the publish handed over last: it never enters rumqttc's queue.
    Withdraw,
}

/// The client's half: hands publishes over in channel order.
#[derive(Debug)]
pub(crate) struct PublishTracker {
    /// Held while a publish is handed over and sent, so the table's order is the channel's.
    send_lock: tokio::sync::Mutex<()>,
    handed: mpsc::UnboundedSender<Handed>,
    /// Publish spans not ended yet.
    open: Arc<AtomicUsize>,
}

/// The event loop's half: the correlation table of the publishes handed over.
#[derive(Debug)]
pub(crate) struct PublishTable {
    handed: mpsc::UnboundedReceiver<Handed>,
    pub(super) table: Correlation<OpenPublish>,
    open: Arc<AtomicUsize>,
    polls: u32,
    next_sweep: Option<Instant>,
}

/// A new pair of halves.
pub(crate) fn publish_tracking() -> (PublishTracker, PublishTable) {
    let (handed, received) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    let tracker = PublishTracker {
        send_lock: tokio::sync::Mutex::new(()),
        handed,
        open: Arc::clone(&open),
    };
    let table = PublishTable {
        handed: received,
        table: Correlation::default(),
        open,
        polls: 0,
        next_sweep: None,
    };
    (tracker, table)
}

/// The send lock, held while one publish is handed over and sent.
pub(crate) struct SendOrder<'a> {
    tracker: &'a PublishTracker,
    _order: tokio::sync::MutexGuard<'a, ()>,
}

impl SendOrder<'_> {
    /// Hands `open` over; the request must be sent to rumqttc next, before the guard is
    /// dropped. When the event loop is gone, the span ends at once as `request_failed` (rumqttc's
    /// channel is closed too, so the send that follows fails).
    pub(crate) fn hand_over(&self, telemetry: &Telemetry, open: OpenPublish) {
        self.tracker.hand_over(telemetry, open);
    }

    /// rumqttc did not take the request just handed over: its span ends as `request_failed`
    /// (by the event loop, which owns it now).
    pub(crate) fn withdraw(&self) {
        // A closed channel has ended the span already.
        let _ = self.tracker.handed.send(Handed::Withdraw);
    }
}

impl PublishTracker {
    /// Takes the send lock: the publish handed over under it is the next request in rumqttc's
    /// channel.
    pub(crate) async fn order(&self) -> SendOrder<'_> {
        SendOrder {
            tracker: self,
            _order: self.send_lock.lock().await,
        }
    }

    /// Takes the send lock if no other task holds it.
    pub(crate) fn try_order(&self) -> Option<SendOrder<'_>> {
        let order = self.send_lock.try_lock().ok()?;
        Some(SendOrder {
            tracker: self,
            _order: order,
        })
    }

    fn hand_over(&self, telemetry: &Telemetry, open: OpenPublish) {
        self.open.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Handed::Publish(open))) =
            self.handed.send(Handed::Publish(open))
        {
            self.ended(telemetry, open, Failure::RequestFailed);
        }
    }

    /// Ends a publish that was never handed over (another task held the send lock).
    pub(crate) fn refused(&self, telemetry: &Telemetry, open: OpenPublish) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.ended(telemetry, open, Failure::RequestFailed);
    }

    fn ended(&self, telemetry: &Telemetry, open: OpenPublish, failure: Failure) {
        telemetry.finish(open, Err(failure));
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Publish spans not ended yet (queued, in flight, or parked).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl PublishTable {
    /// Takes into the table what the client handed over since the last look.
    pub(super) fn take_handed(&mut self, telemetry: &Telemetry) {
        while let Ok(handed) = self.handed.try_recv() {
            match handed {
                Handed::Publish(open) => self.table.enqueue(open),
                Handed::Withdraw => {
                    if let Some(open) = self.table.unenqueue() {
                        self.finish(telemetry, open, Err(Failure::RequestFailed));
                    }
                }
            }
        }
    }

    /// Ends a publish span and counts it as no longer open.
    pub(super) fn finish(
        &self,
        telemetry: &Telemetry,
        open: OpenPublish,
        result: Result<(), Failure>,
    ) {
        telemetry.finish(open, result);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Applies one rumqttc event handed out by the event loop to the publish spans.
    pub(crate) fn on_signal(&mut self, telemetry: &Telemetry, signal: Signal) {
        self.take_handed(telemetry);
        if self.table.skip_stale() {
            return;
        }
        let step = self.table.apply(signal);
        if let Some((open, result)) = after_step(telemetry, &mut self.table, signal, step) {
            self.finish(telemetry, open, result);
        }
    }

    /// Called after every poll: every [`POLLS_PER_CLOCK_READ`] polls, or at once with `now`
    /// (keep-alive traffic, a connection error), ends the publish spans whose acknowledgement
    /// is overdue, looking at most once per [`SWEEP_INTERVAL`].
    pub(crate) fn after_poll(&mut self, telemetry: &Telemetry, now: bool) {
        self.polls = self.polls.wrapping_add(1);
        if now || self.polls.is_multiple_of(POLLS_PER_CLOCK_READ) {
            self.sweep_at(telemetry, Instant::now());
        }
    }

    fn sweep_at(&mut self, telemetry: &Telemetry, now: Instant) {
        if self.next_sweep.is_some_and(|next| now < next) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        self.take_handed(telemetry);
        for open in self.table.expire(now, telemetry.settings.ack_timeout) {
            self.finish(telemetry, open, Err(Failure::AckTimeout));
        }
    }

    /// Ends every open publish span with `failure` (the event loop is going away).
    pub(crate) fn close(&mut self, telemetry: &Telemetry, failure: Failure) {
        // No more hand-overs: a publish sent from now on fails, and ends its own span.
        self.handed.close();
        self.take_handed(telemetry);
        for open in self.table.drain() {
            self.finish(telemetry, open, Err(failure));
        }
    }
}

/// What one applied event means for the spans: the packet id of a written publish, the
/// retransmission of a replayed one, or a span to end.
pub(super) fn after_step(
    telemetry: &Telemetry,
    table: &mut Correlation<OpenPublish>,
    signal: Signal,
    step: Step<OpenPublish>,
) -> Option<(OpenPublish, Result<(), Failure>)> {
    match step {
        Step::Pending => {
            if let Signal::Written(pkid) = signal
                && pkid != 0
                && let Some(open) = table.awaiting_ack_mut(pkid)
                && open.pkid.is_none()
            {
                open.pkid = Some(pkid);
                if let Some(span) = &mut open.span {
                    span.set_attribute(KeyValue::new(MESSAGING_MQTT_PACKET_ID, i64::from(pkid)));
                }
                telemetry.count_written(open);
            }
        }
        Step::Done(open, result) => return Some((open, result)),
        Step::Replayed(pkid) => {
            if let Some(open) = table.awaiting_ack_mut(pkid) {
                open.retransmitted();
            }
        }
        Step::Late(pkid) => logs::late_ack(telemetry, pkid),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Instrumentation;
    use crate::semconv::{ConnectionAttributes, MqttQoS, ProtocolVersion};

    /// Overdue acknowledgements are looked for at most once per second, and between two looks
    /// at the clock pass [`POLLS_PER_CLOCK_READ`] polls.
    #[tokio::test]
    async fn overdue_publishes_are_swept_at_most_once_a_second() {
        let instrumentation = Instrumentation::builder()
            .ack_timeout(Duration::ZERO)
            .build();
        let connection = ConnectionAttributes::new("c", "broker.test", 1883, ProtocolVersion::V5);
        let telemetry = Telemetry::new(&instrumentation, connection);
        let (tracker, mut table) = publish_tracking();
        let start = Instant::now();
        let written = |table: &mut PublishTable, pkid| {
            let (open, _) = telemetry.start_publish("t", None, MqttQoS::AtLeastOnce, false, 1);
            tracker.hand_over(&telemetry, open);
            table.on_signal(&telemetry, Signal::Written(pkid));
        };
        written(&mut table, 1);
        table.sweep_at(&telemetry, start + Duration::from_millis(1));
        assert_eq!(tracker.open(), 0, "the first sweep is due at once");
        written(&mut table, 2);
        table.sweep_at(&telemetry, start + Duration::from_millis(500));
        assert_eq!(
            tracker.open(),
            1,
            "within a second of the last sweep nothing is looked at"
        );
        table.sweep_at(&telemetry, start + Duration::from_millis(1002));
        assert_eq!(tracker.open(), 0);
        // The clock is read only every POLLS_PER_CLOCK_READ polls (or when asked to).
        written(&mut table, 3);
        table.next_sweep = None;
        for _ in 1..POLLS_PER_CLOCK_READ - table.polls % POLLS_PER_CLOCK_READ {
            table.after_poll(&telemetry, false);
        }
        assert_eq!(tracker.open(), 1);
        table.after_poll(&telemetry, false);
        assert_eq!(tracker.open(), 0);
    }
}
