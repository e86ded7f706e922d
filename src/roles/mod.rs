//! The high-level roles, [`crate::v4::TracedPublisher`] / [`crate::v4::TracedSubscriber`] and
//! their MQTT 5 twins, written once over the private [`Protocol`] trait that the two protocol
//! versions implement.
//!
//! - `driver`: the task that polls a traced event loop (reconnecting with a pause), shared by the
//!   roles of one connection, and the dispatcher that hands incoming messages to the worker.
//! - `worker`: the routes, and the task that runs handlers one message at a time inside
//!   `process` spans, then acknowledges.
//! - `publisher`, `subscriber`: the version-independent halves of the roles.
//! - `facade`: the macro that gives each version its public types with concrete signatures.
//! - `v4`, `v5`: the [`Protocol`] implementations, the `Message` types and the facades.

mod driver;
mod facade;
mod publisher;
mod subscriber;
pub(crate) mod v4;
pub(crate) mod v5;
mod worker;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::Error;
use crate::core::{Core, Delivery};
use crate::instrumentation::Instrumentation;
use crate::semconv::MqttQoS;

/// When a [`TracedSubscriber`](crate::v5::TracedSubscriber) acknowledges a QoS 1 or QoS 2
/// message (PUBACK / PUBREC).
///
/// The subscriber always turns rumqttc's manual acknowledgements on
/// (`MqttOptions::set_manual_acks(true)`) and acknowledges each message itself, from the worker
/// that runs the handlers, in the order the messages arrived (MQTT 3.1.1 and 5, section 4.6).
/// Acknowledging only after the handler also gives flow control: the broker sends no more
/// unacknowledged messages than its in-flight window, however slow the handlers are.
///
/// A message is acknowledged on the connection it arrived on only: after a reconnect, the broker
/// either sends it again (persistent session) or has forgotten it, and a packet id of the old
/// connection may already name another message on the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AckPolicy {
    /// The default: acknowledge once every handler of the message has finished, whatever its
    /// outcome (success, error or panic). A failed message is recorded on its `process` span and
    /// not redelivered.
    #[default]
    AfterHandler,
    /// At-least-once processing: acknowledge only when every handler of the message returned
    /// `Ok`. A message whose handler failed or panicked stays unacknowledged; the broker delivers
    /// it again (with the DUP flag) when the session resumes on a new connection, which needs a
    /// persistent session (`clean_session(false)` for MQTT 3.1.1; `clean_start(false)` and a
    /// session expiry interval for MQTT 5). Later messages are still acknowledged, so one
    /// unacknowledged message takes one place of the broker's in-flight window until then.
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

/// What the roles need to know about one incoming PUBLISH, in version-independent form.
#[derive(Debug, Clone)]
pub(crate) struct PublishView<'a> {
    pub(crate) topic: Cow<'a, str>,
    pub(crate) qos: MqttQoS,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    pub(crate) pkid: u16,
    pub(crate) body_size: usize,
}

/// A polled event, as far as the roles care.
pub(crate) enum Polled<P: Protocol> {
    /// A CONNACK; `subscription_ids` says whether the broker supports subscription identifiers.
    ConnAck {
        session_present: bool,
        subscription_ids: bool,
    },
    /// A SUBACK: per filter of the SUBSCRIBE, `None` when granted, else the refusal reason.
    SubAck(Vec<Option<&'static str>>),
    /// An incoming PUBLISH and what the traced event loop recorded for it.
    Publish(P::Publish, Option<Delivery>),
    /// The event loop wrote a DISCONNECT: the connection ends for good.
    Disconnect,
    /// Anything else.
    Other,
}

/// The types and calls of one MQTT version that the roles use. Implemented by [`v4::V4`] and
/// [`v5::V5`] only.
pub(crate) trait Protocol: Sized + Send + Sync + 'static {
    type Options: Send;
    type Client: Clone + Send + Sync + fmt::Debug + 'static;
    type EventLoop: Send + 'static;
    type QoS: Copy + Send + Sync + fmt::Debug + 'static;
    type Publish: Clone + Send + Sync + fmt::Debug + 'static;
    type Event: Send;
    type PollError: Send;
    type ClientError: Send;

    /// Whether the version has subscription identifiers (MQTT 5).
    const SUBSCRIPTION_IDS: bool;

    /// `TracedClient::with_instrumentation`.
    fn pair(
        options: Self::Options,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (Self::Client, Self::EventLoop);

    /// `MqttOptions::set_manual_acks(true)`.
    fn enable_manual_acks(options: &mut Self::Options);

    /// The shared core of a traced client.
    fn core(client: &Self::Client) -> &Arc<Core>;

    /// `TracedEventLoop::poll_traced`.
    fn poll(
        eventloop: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<(Self::Event, Option<Delivery>), Self::PollError>> + Send;

    /// What the roles make of a polled event.
    fn classify(event: Self::Event, delivery: Option<Delivery>) -> Polled<Self>;

    /// The facts of an incoming PUBLISH.
    fn view(publish: &Self::Publish) -> PublishView<'_>;

    /// The subscription identifiers an incoming PUBLISH carries (none for MQTT 3.1.1).
    fn subscription_ids(publish: &Self::Publish) -> &[usize];

    /// Acknowledges an incoming PUBLISH; `false` when the event loop is gone.
    fn ack(client: &Self::Client, publish: &Self::Publish) -> impl Future<Output = bool> + Send;

    /// Sends one SUBSCRIBE with `filters`, tagged with subscription identifier `id`; `false` when
    /// the event loop is gone.
    fn subscribe(
        client: &Self::Client,
        filters: Vec<(String, Self::QoS)>,
        id: Option<usize>,
    ) -> impl Future<Output = bool> + Send;

    /// `TracedClient::publish` (without waiting for the acknowledgement).
    fn publish(
        client: &Self::Client,
        topic: String,
        qos: Self::QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), Self::ClientError>> + Send;

    /// `TracedClient::publish_confirmed`.
    fn publish_confirmed(
        client: &Self::Client,
        topic: String,
        qos: Self::QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// `TracedClient::disconnect`; `false` when the event loop is gone.
    fn disconnect(client: &Self::Client) -> impl Future<Output = bool> + Send;
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
