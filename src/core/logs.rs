//! The problems the crate meets, as `tracing` events for the application's logs, next to the
//! span events that record them: `debug` for what hostile or broken input from the network
//! causes (rejected trace context, malformed envelopes, unknown topic aliases, late
//! acknowledgements), `warn` for a publish that was lost or failed and for a handler that
//! panicked, `info` for a resend after the broker lost the session. Nothing is logged on the
//! happy path. Each kind is rate-limited, so a flood of bad messages cannot flood the logs: at
//! most [`BURST`] events per kind every [`WINDOW`], and the first event after a quiet spell says
//! how many were left out (`suppressed`). The crate installs no subscriber.

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::telemetry::Telemetry;

/// Events per kind and window.
pub(crate) const BURST: u32 = 10;
/// The window of the rate limit.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The `tracing` target of every event of this crate.
pub(crate) const TARGET: &str = "rumqttc_opentelemetry";

/// A rate limit for one kind of event, shared by every connection of the process.
pub(crate) struct RateLimit {
    /// When the current window started, in ms since `epoch`; `u64::MAX` before the first event.
    window: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub(crate) const fn new() -> Self {
        Self {
            window: AtomicU64::new(u64::MAX),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more event may go out now; `Some(n)` with the number left out since the last
    /// one that went out.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(millis_since_start())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let window = WINDOW.as_millis() as u64;
        let start = self.window.load(Ordering::Relaxed);
        if start == u64::MAX || now.saturating_sub(start) >= window {
            // A new window: whoever swaps it in resets the count.
            if self
                .window
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.count.store(0, Ordering::Relaxed);
            }
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn millis_since_start() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

static REJECTED_CONTEXT: RateLimit = RateLimit::new();
static CARRIER: RateLimit = RateLimit::new();
static NOT_CARRIED: RateLimit = RateLimit::new();
static LATE_ACK: RateLimit = RateLimit::new();
static PUBLISH_FAILED: RateLimit = RateLimit::new();
static RESENT: RateLimit = RateLimit::new();
static PANICKED: RateLimit = RateLimit::new();
static ALIAS: RateLimit = RateLimit::new();

// Each function asks its kind's limit first and leaves the level check to the `tracing` macro:
// a few atomic operations, on paths that are already off the happy one.

/// A message's trace context was rejected (a malformed `traceparent`): a new trace starts.
pub(crate) fn rejected_context(telemetry: &Telemetry, topic: &str, reason: &dyn Display) {
    let Some(suppressed) = REJECTED_CONTEXT.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::debug!(target: TARGET, client_id, topic, %reason, suppressed,
        "rejected the trace context of a received message; it starts a new trace");
}

/// A received message's carrier (an MQTT 3.1.1 envelope) is malformed: it is delivered as is.
pub(crate) fn carrier_problem(telemetry: &Telemetry, topic: &str, reason: &dyn Display) {
    let Some(suppressed) = CARRIER.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::debug!(target: TARGET, client_id, topic, %reason, suppressed,
        "the trace context of a received message could not be read; its payload is delivered unchanged");
}

/// A received MQTT 5 PUBLISH's Topic Alias named no topic (`reason`: unknown, zero, above the
/// client's maximum): it is delivered with the topic it came with, which is empty.
pub(crate) fn unresolved_alias(telemetry: &Telemetry, alias: u16, reason: &str) {
    let Some(suppressed) = ALIAS.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::debug!(target: TARGET, client_id, topic_alias = alias, reason, suppressed,
        "a received message's topic alias names no topic");
}

/// A publish's context could not be carried (its payload could not take an envelope or JSON
/// members): it is sent without.
pub(crate) fn not_carried(telemetry: &Telemetry, reason: &dyn Display) {
    let Some(suppressed) = NOT_CARRIED.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::debug!(target: TARGET, client_id, %reason, suppressed,
        "a publish is sent without its trace context");
}

/// An acknowledgement arrived for a publish whose span had already ended (overdue).
pub(crate) fn late_ack(telemetry: &Telemetry, packet_id: u16) {
    let Some(suppressed) = LATE_ACK.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::debug!(target: TARGET, client_id, packet_id, suppressed,
        "an acknowledgement came after its publish had ended as ack_timeout");
}

/// A publish ended without success: `error_type` is what its span records. `warn`, except for
/// `event_loop_dropped` (the application dropped its event loop: `debug`).
pub(crate) fn publish_failed(telemetry: &Telemetry, error_type: &str, packet_id: Option<u16>) {
    let Some(suppressed) = PUBLISH_FAILED.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    if error_type == "event_loop_dropped" {
        tracing::debug!(target: TARGET, client_id, error.r#type = error_type, packet_id,
            suppressed, "a publish ended with its event loop");
    } else {
        tracing::warn!(target: TARGET, client_id, error.r#type = error_type, packet_id,
            suppressed, "a publish failed");
    }
}

/// The broker lost the session and `count` requests are sent again.
pub(crate) fn resent(telemetry: &Telemetry, count: usize) {
    if count == 0 {
        return;
    }
    let Some(suppressed) = RESENT.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::info!(target: TARGET, client_id, count, suppressed,
        "the broker lost the session; unacknowledged and queued requests are sent again");
}

/// A subscriber's handler panicked; the next message is processed.
pub(crate) fn handler_panicked(telemetry: &Telemetry, route: &str, message: &str) {
    let Some(suppressed) = PANICKED.admit() else {
        return;
    };
    let client_id = telemetry.connection.client_id();
    tracing::warn!(target: TARGET, client_id, route, panic = message, suppressed,
        "a message handler panicked");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count_of_what_was_left_out() {
        let limit = RateLimit::new();
        let admitted = (0..BURST + 5)
            .filter(|_| limit.admit_at(100).is_some())
            .count();
        assert_eq!(admitted as u32, BURST);
        let window = WINDOW.as_millis() as u64;
        assert_eq!(limit.admit_at(100 + window), Some(5), "5 left out");
        assert_eq!(limit.admit_at(100 + window), Some(0));
    }
}
