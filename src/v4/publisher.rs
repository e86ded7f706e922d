//! [`TracedPublisher`]: a MQTT 3.1.1 publisher that owns its connection and drives it in a task.

use bytes::Bytes;
use rumqttc::{ClientError, MqttOptions, QoS};

use super::RetryPolicy;
use super::client::TracedClient;
use super::event_loop::TracedEventLoop;
use super::protocol::V4;
use crate::core::PublishRequest;
use crate::error::Error;
use crate::instrumentation::Instrumentation;
use crate::roles::publisher::PublisherCore;

#[doc = include_str!("../roles/docs/publisher.md")]
/// # Example
///
/// A sensor: publishes its readings at QoS 1, then shuts down; every reading is acknowledged by
/// the broker before the program exits. Its last will says `offline` if the connection is lost.
///
/// ```no_run
/// use rumqttc::{LastWill, MqttOptions, QoS};
/// use rumqttc_opentelemetry::v4::TracedPublisher;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut options = MqttOptions::new("sensor-1", "localhost", 1883);
/// options.set_last_will(LastWill::new("home/sensor-1/status", "offline", QoS::AtLeastOnce, true));
/// let publisher = TracedPublisher::new(options, 10);
///
/// publisher
///     .publish_confirmed("home/sensor-1/status", QoS::AtLeastOnce, true, "online")
///     .await?;
/// for reading in ["21.5", "21.6", "21.4"] {
///     publisher
///         .publish("home/kitchen/temperature", QoS::AtLeastOnce, false, reading)
///         .await?;
/// }
/// publisher.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TracedPublisher {
    client: TracedClient,
    inner: PublisherCore<V4>,
}

impl std::fmt::Debug for TracedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TracedPublisher {
    /// Connects with the default [`Instrumentation`]; `cap` is the capacity of
    /// rumqttc's request queue, as in `AsyncClient::new`.
    pub fn new(options: MqttOptions, cap: usize) -> Self {
        Self::with_instrumentation(options, cap, Instrumentation::default())
    }

    /// Connects with the given instrumentation.
    pub fn with_instrumentation(
        options: MqttOptions,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> Self {
        let (client, eventloop) = TracedClient::with_instrumentation(options, cap, instrumentation);
        Self::from_parts(client, eventloop)
    }

    /// Takes over a traced client and its event loop, and polls the event loop in the
    /// connection task.
    pub fn from_parts(client: TracedClient, eventloop: TracedEventLoop) -> Self {
        Self {
            inner: PublisherCore::start(client.generic().clone(), eventloop.into_generic()),
            client,
        }
    }

    pub(crate) fn from_core(inner: PublisherCore<V4>) -> Self {
        Self {
            client: TracedClient::from_generic(inner.client.clone()),
            inner,
        }
    }

    /// The traced client of the connection, for everything else rumqttc offers.
    pub fn client(&self) -> &TracedClient {
        &self.client
    }

    /// Publishes without waiting for the acknowledgement (traced like
    /// [`TracedClient::publish_bytes`]).
    pub async fn publish<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        V: Into<Bytes>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        self.inner.client.publish(request).await
    }

    /// Publishes and waits until the publish has ended, as its span does (see
    /// [`TracedClient::publish_confirmed`]).
    pub async fn publish_confirmed<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), Error>
    where
        S: Into<String>,
        V: Into<Bytes>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        self.inner.client.publish_confirmed(request).await
    }

    /// Removes the retained message of `topic` from the broker (a retained publish with
    /// an empty payload, MQTT section 3.3.1.3), and waits until it is confirmed.
    ///
    /// # Errors
    ///
    /// As [`publish_confirmed`](Self::publish_confirmed). (An empty retained payload is
    /// never wrapped in an MQTT 3.1.1 envelope, which would store the envelope instead.)
    pub async fn clear_retained<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), Error> {
        self.inner.clear_retained(topic.into(), qos).await
    }

    /// Publishes every `(topic, payload)` at `qos`, all at once and in the given order,
    /// and waits for each outcome; the results are in the same order.
    ///
    /// Records an INTERNAL `publish_batch` span (with `messaging.batch.message_count`)
    /// whose children are the N publish spans; when some publishes fail it ends as an
    /// error with the first failure's `error.type`. The publishes are queued in
    /// rumqttc's request queue, and the number in flight is rumqttc's in-flight limit.
    pub async fn publish_batch<I, S, V>(
        &self,
        qos: QoS,
        retain: bool,
        messages: I,
    ) -> Vec<Result<(), Error>>
    where
        I: IntoIterator<Item = (S, V)>,
        S: Into<String>,
        V: Into<Bytes>,
    {
        let messages = messages
            .into_iter()
            .map(|(topic, payload)| (topic.into(), payload.into()))
            .collect();
        self.inner.publish_batch(qos, retain, messages).await
    }

    /// Publishes and waits for the outcome, retrying with exponential backoff until
    /// one attempt succeeds or `policy`'s attempts are spent. Returns the number of
    /// attempts made.
    ///
    /// Records an INTERNAL `publish_with_retry {topic}` span: each attempt is a normal
    /// publish span (its child) and an `mqtt.publish.attempt` event on it, with the
    /// attempt's number (`mqtt.publish.attempt`, from 1), its `error.type` when it failed,
    /// and the pause before the next attempt (`mqtt.publish.backoff`, seconds). Every
    /// failure is retried ([`Error::PublishFailed`]: a reason code of the broker, a lost
    /// session, a missing acknowledgement) except [`Error::RequestRejected`] (rumqttc
    /// refused the request: an invalid topic, or the connection task is gone), which
    /// ends the retries at once.
    ///
    /// # Errors
    ///
    /// [`Error::RetriesExhausted`] with the number of attempts and the last attempt's
    /// error, after the retry span has ended as an error with its `error.type` and the
    /// status message `gave up after N attempt(s): ...`; [`Error::RequestRejected`] when
    /// rumqttc refused the first attempt.
    pub async fn publish_with_retry<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
        policy: &RetryPolicy,
    ) -> Result<u32, Error>
    where
        S: Into<String>,
        V: Into<Bytes>,
    {
        self.inner
            .publish_with_retry(topic.into(), qos, retain, payload.into(), policy)
            .await
    }

    /// Waits until every publish made on this connection so far (through any handle,
    /// including the [`client`](Self::client) and a subscriber's handlers) has ended:
    /// written (QoS 0), acknowledged (QoS 1, 2), or failed. A written publish fails
    /// when its acknowledgement has not come within the instrumentation's
    /// `ack_timeout`; one still queued waits for the connection.
    ///
    /// Returns at once when the connection task does not run.
    pub async fn flush(&self) {
        self.inner.flush().await
    }

    /// Flushes, sends DISCONNECT (so the broker discards the last will) and waits for
    /// the connection task to end. This ends the connection for every handle that
    /// shares it. When the connection is down, the task ends at the next failed
    /// attempt instead of reconnecting.
    pub async fn shutdown(self) {
        self.inner.shutdown().await
    }

    /// Whether the connection is established (a CONNACK and no error since).
    pub fn is_connected(&self) -> bool {
        self.inner.shared().is_connected()
    }

    /// Waits until the connection is established; `false` when the connection task
    /// does not run (it has ended, or belongs to a subscriber not started yet).
    pub async fn wait_connected(&self) -> bool {
        self.inner.wait_connected().await
    }

    /// Publish spans not ended yet on this connection (what [`flush`](Self::flush)
    /// waits for).
    pub fn open_publishes(&self) -> usize {
        self.inner.open_publishes()
    }
}
