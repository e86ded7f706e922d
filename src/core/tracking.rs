//! [`PublishTracker`]: the open publish spans of one connection, handed to rumqttc in the order
//! of its request channel and ended by the events its event loop hands out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::Span;

use super::correlation::{Correlation, Failure, Signal, Step};
use super::publish::OpenPublish;
use super::telemetry::Telemetry;
use crate::semconv::MESSAGING_MQTT_PACKET_ID;

/// How often overdue acknowledgements are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The open publish spans of one connection.
#[derive(Debug)]
pub(crate) struct PublishTracker {
    table: Mutex<Correlation<OpenPublish>>,
    /// Held while a publish is enqueued and sent, so the table's order is the channel's.
    send_lock: tokio::sync::Mutex<()>,
    /// When the tracker was made, and when (in ms since) the next overdue-ack sweep is due.
    created: Instant,
    next_sweep: AtomicU64,
}

impl Default for PublishTracker {
    fn default() -> Self {
        Self {
            table: Mutex::new(Correlation::default()),
            send_lock: tokio::sync::Mutex::new(()),
            created: Instant::now(),
            next_sweep: AtomicU64::new(0),
        }
    }
}

impl PublishTracker {
    /// The table, locked. A panic while it was held leaves it as it was between two complete
    /// steps, so a poisoned lock is still usable.
    pub(super) fn table(&self) -> MutexGuard<'_, Correlation<OpenPublish>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a publish to rumqttc: `send` sends the request; the open span is queued in the
    /// table under the same lock, so the table's order is the channel's.
    pub(crate) async fn send<E, F>(
        &self,
        telemetry: &Telemetry,
        open: OpenPublish,
        send: F,
    ) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let _order = self.send_lock.lock().await;
        self.table().enqueue(open);
        match send.await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.take_back(telemetry);
                Err(error)
            }
        }
    }

    /// Like [`PublishTracker::send`] without waiting: when another task is sending, `send` is
    /// not called and `busy` turns the request into the error to return.
    pub(crate) fn try_send<R, E>(
        &self,
        telemetry: &Telemetry,
        open: OpenPublish,
        request: R,
        send: impl FnOnce(R) -> Result<(), E>,
        busy: impl FnOnce(R) -> E,
    ) -> Result<(), E> {
        let Ok(_order) = self.send_lock.try_lock() else {
            telemetry.finish(open, Err(Failure::RequestFailed));
            return Err(busy(request));
        };
        self.table().enqueue(open);
        send(request).inspect_err(|_| self.take_back(telemetry))
    }

    /// Ends the publish just enqueued: rumqttc did not take it.
    fn take_back(&self, telemetry: &Telemetry) {
        let taken = self.table().unenqueue();
        if let Some(open) = taken {
            telemetry.finish(open, Err(Failure::RequestFailed));
        }
    }

    /// Applies one rumqttc event handed out by the event loop to the publish spans.
    pub(crate) fn on_signal(&self, telemetry: &Telemetry, signal: Signal) {
        let finished = {
            let mut table = self.table();
            if table.skip_stale() {
                None
            } else {
                let step = table.apply(signal);
                after_step(telemetry, &mut table, signal, step)
            }
        };
        if let Some((open, result)) = finished {
            telemetry.finish(open, result);
        }
    }

    /// Ends the publish spans whose acknowledgement is overdue. Looks at most once per
    /// [`SWEEP_INTERVAL`]: between two looks this costs a clock read and an atomic load.
    pub(crate) fn sweep(&self, telemetry: &Telemetry) {
        self.sweep_at(telemetry, Instant::now());
    }

    fn sweep_at(&self, telemetry: &Telemetry, now: Instant) {
        let elapsed = now.saturating_duration_since(self.created).as_millis() as u64;
        if elapsed < self.next_sweep.load(Ordering::Relaxed) {
            return;
        }
        self.next_sweep.store(
            elapsed + SWEEP_INTERVAL.as_millis() as u64,
            Ordering::Relaxed,
        );
        let expired = self.table().expire(now, telemetry.settings.ack_timeout);
        for open in expired {
            telemetry.finish(open, Err(Failure::AckTimeout));
        }
    }

    /// Ends every open publish span with `failure` (the event loop is going away).
    pub(crate) fn close(&self, telemetry: &Telemetry, failure: Failure) {
        let open = self.table().drain();
        for open in open {
            telemetry.finish(open, Err(failure));
        }
    }

    /// Open publish spans (queued, in flight, or parked).
    pub(crate) fn open(&self) -> usize {
        self.table().len()
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
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentation::Instrumentation;
    use crate::semconv::{ConnectionAttributes, MqttQoS, ProtocolVersion};

    /// Overdue acknowledgements are looked for at most once per second: between two looks a
    /// poll costs a clock read and an atomic load, not the table's lock.
    #[test]
    fn overdue_publishes_are_swept_at_most_once_a_second() {
        let instrumentation = Instrumentation::builder()
            .ack_timeout(Duration::ZERO)
            .build();
        let connection = ConnectionAttributes::new("c", "broker.test", 1883, ProtocolVersion::V5);
        let telemetry = Telemetry::new(&instrumentation, connection);
        let tracker = PublishTracker::default();
        let start = tracker.created;
        let written = |pkid| {
            let (open, _) = telemetry.start_publish("t", MqttQoS::AtLeastOnce, false, 1);
            tracker.table().enqueue(open);
            tracker.on_signal(&telemetry, Signal::Written(pkid));
        };
        written(1);
        tracker.sweep_at(&telemetry, start);
        assert_eq!(tracker.open(), 0, "the first sweep is due at once");
        written(2);
        tracker.sweep_at(&telemetry, start + Duration::from_millis(500));
        assert_eq!(
            tracker.open(),
            1,
            "within a second of the last sweep nothing is looked at"
        );
        tracker.sweep_at(&telemetry, start + Duration::from_millis(1001));
        assert_eq!(tracker.open(), 0);
    }
}
