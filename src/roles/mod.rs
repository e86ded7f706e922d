//! The high-level roles, [`crate::v4::TracedPublisher`] / [`crate::v4::TracedSubscriber`] and
//! their MQTT 5 twins, written once over [`crate::core::Protocol`]; `crate::v4` and `crate::v5`
//! wrap them in their public types.
//!
//! - `shared`: what the handles of one connection observe and control of its task.
//! - `driver`: the task that polls a traced event loop (reconnecting with a pause) and the
//!   dispatcher that hands incoming messages to the worker.
//! - `handler`: what a handler returns (`()` or a `HandlerResult`), and its error type.
//! - `worker`: the routes, and the task that runs the handlers of up to `concurrency` messages
//!   at a time inside `process` spans, then acknowledges.
//! - `schedule`: which waiting message may start next (per topic in arrival order, or any) and
//!   which acknowledgements may go out (arrival order).
//! - `publisher`, `subscriber`: the version-independent halves of the roles.

mod driver;
mod handler;
pub(crate) mod publisher;
mod schedule;
mod shared;
pub(crate) mod subscriber;
pub(crate) mod worker;

use std::time::Duration;

pub use handler::{HandlerError, HandlerOutput, HandlerResult};

/// When a [`TracedSubscriber`](crate::v5::TracedSubscriber) acknowledges a QoS 1 or QoS 2
/// message (PUBACK / PUBREC).
///
/// The subscriber always turns rumqttc's manual acknowledgements on
/// (`MqttOptions::set_manual_acks(true)`) and acknowledges each message itself, from the worker
/// that runs the handlers, in the order the messages arrived ([MQTT-4.6.0-2], [MQTT-4.6.0-3]),
/// even when concurrent handlers finish in another order: a finished message's
/// acknowledgement waits for every earlier one. Acknowledging only after the handler also gives
/// flow control: the broker sends no more unacknowledged messages than its in-flight window,
/// however slow the handlers are.
///
/// A message is acknowledged on the connection it arrived on only: after a reconnect, the broker
/// either sends it again (persistent session) or has forgotten it, and a packet id of the old
/// connection may already name another message on the new one.
///
/// # Settle spans
///
/// With [`AckPolicy::AfterSuccess`] an acknowledgement is a decision about the message, so each
/// one records a CLIENT span `ack {filter}` (`messaging.operation.type = settle`, operation
/// name `ack`; semconv v1.44: "'Settle' spans SHOULD be created for every manually or
/// automatically triggered settlement operation") and a `messaging.client.operation.duration`
/// measurement of operation `ack`. The worker acknowledges on behalf of the message, so the span
/// is a child of the message's `receive` span (the ambient context its `process` spans have
/// too) and links to the producer's span when the message carried its context. A message whose
/// handler failed is not acknowledged and records none. With the default
/// [`AckPolicy::AfterHandler`] every message is acknowledged whatever happens, which says
/// nothing its `process` span does not: no settle span is recorded, which saves a span and a
/// measurement per message (semconv's SHOULD is not followed there, by choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AckPolicy {
    /// The default: acknowledge once every handler of the message has finished, whatever its
    /// outcome (success, error or panic). A failed message is recorded on its `process` span and
    /// not redelivered. Records no settle span (see "Settle spans" above).
    #[default]
    AfterHandler,
    /// At-least-once processing: acknowledge only when every handler of the message returned
    /// `Ok`. A message whose handler failed or panicked stays unacknowledged; the broker delivers
    /// it again (with the DUP flag) when the session resumes on a new connection, which needs a
    /// persistent session (`clean_session(false)` for MQTT 3.1.1; `clean_start(false)` and a
    /// session expiry interval for MQTT 5). Later messages are still acknowledged, in arrival
    /// order, skipping the failed one as soon as it has failed, so one unacknowledged message
    /// takes one place of the broker's in-flight window until then; when failed messages fill
    /// the window, the broker sends no more QoS 1 or 2 messages until a reconnect. Each
    /// acknowledgement records a settle span `ack {filter}` (see "Settle spans" above).
    AfterSuccess,
}

/// How [`TracedPublisher::publish_with_retry`](crate::v5::TracedPublisher::publish_with_retry)
/// retries: how many attempts in all, and the exponential backoff between them.
///
/// The pause before retry `n` (`n` = 1 for the second attempt) is
/// `initial_backoff * multiplier^(n - 1)`, at most `max_backoff`. There is no jitter: add it in
/// the application if many publishers retry against one broker at once.
///
/// ```
/// use std::time::Duration;
/// use rumqttc_opentelemetry::v5::RetryPolicy;
///
/// let policy = RetryPolicy::new(4)
///     .initial_backoff(Duration::from_millis(100))
///     .multiplier(3)
///     .max_backoff(Duration::from_millis(500));
/// assert_eq!(policy.attempts(), 4);
/// assert_eq!(policy.backoff(1), Duration::from_millis(100));
/// assert_eq!(policy.backoff(2), Duration::from_millis(300));
/// assert_eq!(policy.backoff(3), Duration::from_millis(500)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    initial_backoff: Duration,
    multiplier: u32,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms doubling up to 10 s.
    fn default() -> Self {
        Self::new(5)
    }
}

impl RetryPolicy {
    /// At most `attempts` attempts in all (at least 1), pausing 100 ms before the first retry
    /// and doubling up to 10 s.
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            initial_backoff: Duration::from_millis(100),
            multiplier: 2,
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The pause before the first retry.
    #[must_use]
    pub fn initial_backoff(mut self, pause: Duration) -> Self {
        self.initial_backoff = pause;
        self
    }

    /// The factor each further pause grows by (at least 1).
    #[must_use]
    pub fn multiplier(mut self, factor: u32) -> Self {
        self.multiplier = factor.max(1);
        self
    }

    /// The longest pause.
    #[must_use]
    pub fn max_backoff(mut self, pause: Duration) -> Self {
        self.max_backoff = pause;
        self
    }

    /// The number of attempts in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The pause before retry `retry` (1 for the pause after the first failed attempt).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1);
        let factor = self.multiplier.checked_pow(exponent).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_saturates_at_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.attempts(), 5);
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(4), Duration::from_millis(800));
        assert_eq!(policy.backoff(1_000), Duration::from_secs(10));
        let steep = RetryPolicy::new(0).multiplier(u32::MAX);
        assert_eq!(steep.attempts(), 1, "at least one attempt");
        assert_eq!(steep.backoff(3), Duration::from_secs(10));
        assert_eq!(
            RetryPolicy::new(2).multiplier(0).backoff(5),
            Duration::from_millis(100)
        );
    }
}
