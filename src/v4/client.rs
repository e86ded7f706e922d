//! [`TracedClient`]: `rumqttc::AsyncClient` with a PRODUCER span per publish; the context rides
//! in the payload only when MQTT 3.1.1 propagation is on.

use bytes::Bytes;
use rumqttc::{AsyncClient, ClientError, MqttOptions, Publish, QoS, SubscribeFilter};

use super::event_loop::TracedEventLoop;
use super::protocol::V4;
use crate::core::{Client, PublishRequest, SettleParent};
use crate::error::Error;
use crate::instrumentation::Instrumentation;

/// A traced `rumqttc::AsyncClient`: every method of it, with the same signature and error type,
/// plus a PRODUCER span per publish. With [`V4Propagation::Envelope`] or
/// [`V4Propagation::JsonFields`] the span's context travels in the payload; by default the
/// payload is sent byte for byte as given.
///
/// Clones share one connection, one correlation table and one [`Instrumentation`].
///
/// ```no_run
/// use rumqttc::{MqttOptions, QoS};
/// use rumqttc_opentelemetry::v4::TracedClient;
/// use rumqttc_opentelemetry::{Instrumentation, V4Propagation};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let instrumentation = Instrumentation::builder()
///     .v4_propagation(V4Propagation::Envelope)
///     .build();
/// let options = MqttOptions::new("sensor-1", "localhost", 1883);
/// let (client, mut eventloop) = TracedClient::with_instrumentation(options, 10, instrumentation);
/// tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
/// client.publish("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5").await?;
/// # Ok(())
/// # }
/// ```
///
/// [`V4Propagation::Envelope`]: crate::V4Propagation::Envelope
/// [`V4Propagation::JsonFields`]: crate::V4Propagation::JsonFields
#[derive(Clone)]
pub struct TracedClient {
    inner: Client<V4>,
}

impl std::fmt::Debug for TracedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TracedClient {
    /// Like `rumqttc::AsyncClient::new`, with the default [`Instrumentation`] (global providers,
    /// built-in W3C propagator).
    pub fn new(options: MqttOptions, cap: usize) -> (TracedClient, TracedEventLoop) {
        Self::with_instrumentation(options, cap, Instrumentation::default())
    }

    /// Like [`TracedClient::new`], with the given instrumentation.
    pub fn with_instrumentation(
        options: MqttOptions,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (TracedClient, TracedEventLoop) {
        let (inner, eventloop) = Client::new(options, cap, &instrumentation);
        (
            TracedClient { inner },
            TracedEventLoop::from_inner(eventloop),
        )
    }

    pub(crate) fn from_generic(inner: Client<V4>) -> Self {
        Self { inner }
    }

    pub(crate) fn generic(&self) -> &Client<V4> {
        &self.inner
    }

    /// The wrapped rumqttc client. Publishes sent through it directly are not traced, and they
    /// take a place in rumqttc's queue that the span correlation does not know about: use this
    /// client's own methods to publish.
    pub fn inner(&self) -> &AsyncClient {
        self.inner.inner()
    }

    /// Traced `AsyncClient::publish`.
    pub async fn publish<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        V: Into<Vec<u8>>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, Bytes::from(payload.into()));
        self.inner.publish(request).await
    }

    /// Publishes like [`TracedClient::publish`], then waits until the publish has ended, as its
    /// span does: written (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2). The event loop must be
    /// polled meanwhile (by another task).
    ///
    /// Fails with [`Error::PublishFailed`] carrying the span's `error.type` (`session_lost`,
    /// `ack_timeout`, `event_loop_dropped`), or with [`Error::RequestRejected`] when rumqttc did
    /// not take the request (an invalid topic, a closed queue).
    pub async fn publish_confirmed<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), Error>
    where
        S: Into<String>,
        V: Into<Vec<u8>>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, Bytes::from(payload.into()));
        self.inner.publish_confirmed(request).await
    }

    /// Traced `AsyncClient::try_publish`. When another task is blocked sending on a full queue,
    /// this returns `ClientError::TryRequest` at once, as rumqttc does on a full queue.
    pub fn try_publish<S, V>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: V,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        V: Into<Vec<u8>>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, Bytes::from(payload.into()));
        self.inner.try_publish(request)
    }

    /// Traced `AsyncClient::publish_bytes`. Unlike rumqttc's, it refuses a topic name that MQTT
    /// forbids (with a wildcard, [MQTT-3.3.2-2], or U+0000, [MQTT-4.7.3-2]) as `publish` does,
    /// with `ClientError::Request`, instead of sending it to the broker.
    pub async fn publish_bytes<S>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, payload);
        self.inner.publish(request).await
    }

    /// `AsyncClient::ack`: the manual acknowledgement of an incoming PUBLISH (PUBACK for QoS 1,
    /// PUBREC for QoS 2), traced.
    ///
    /// With `MqttOptions::set_manual_acks(true)` it records a CLIENT span `ack {destination}`
    /// (`messaging.operation.type = settle`, `messaging.operation.name = ack`, the message's
    /// topic, template, QoS and `messaging.mqtt.packet_id`) and a
    /// `messaging.client.operation.duration` measurement of operation `ack`. Following semconv
    /// v1.44 ("Consumer spans": a settle span MAY link to the creation context of the message),
    /// the span is a child of the context current where `ack` is called and links to the
    /// message's `receive` span and, when the message carried one, to its creation context
    /// (the producer's span). It ends when rumqttc has taken the acknowledgement into its
    /// request queue (rumqttc reports no exact moment of the write); when rumqttc refuses it
    /// (its event loop is gone) it ends as an error with `error.type = request_failed`.
    ///
    /// The message is recognised by its packet id on the current connection: `publish` must be
    /// the `Publish` the event loop handed out (or a clone). An acknowledgement of a message of
    /// an earlier connection (whose packet id may name another message now) records its span
    /// without links. A QoS 0 message has no acknowledgement and records nothing; with manual
    /// acknowledgements off (rumqttc acknowledges by itself) nothing is recorded either.
    ///
    /// ```no_run
    /// use rumqttc::{Event, MqttOptions};
    /// use rumqttc::Packet;
    /// use rumqttc::QoS;
    /// use rumqttc_opentelemetry::v4::TracedClient;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut options = MqttOptions::new("worker-1", "localhost", 1883);
    /// options.set_manual_acks(true);
    /// let (client, mut eventloop) = TracedClient::new(options, 10);
    /// client.subscribe("jobs/#", QoS::AtLeastOnce).await?;
    /// loop {
    ///     if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await? {
    ///         // ... handle the job, then settle it: `ack jobs/#`, linked to `receive jobs/#`.
    ///         client.ack(&publish).await?;
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn ack(&self, publish: &Publish) -> Result<(), ClientError> {
        self.inner.ack(publish, SettleParent::Ambient).await
    }

    /// `AsyncClient::try_ack`, traced as [`TracedClient::ack`]; a full request queue ends the
    /// span as `request_failed` too.
    pub fn try_ack(&self, publish: &Publish) -> Result<(), ClientError> {
        self.inner.try_ack(publish)
    }

    /// `AsyncClient::subscribe`; the filter names the receive spans of matching messages.
    pub async fn subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.subscribing(&topic);
        self.inner().subscribe(topic, qos).await
    }

    /// `AsyncClient::try_subscribe`.
    pub fn try_subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.subscribing(&topic);
        self.inner().try_subscribe(topic, qos)
    }

    /// `AsyncClient::subscribe_many`.
    pub async fn subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner().subscribe_many(filters).await
    }

    /// `AsyncClient::try_subscribe_many`.
    pub fn try_subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner().try_subscribe_many(filters)
    }

    /// `AsyncClient::unsubscribe`.
    pub async fn unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.unsubscribing(&topic);
        self.inner().unsubscribe(topic).await
    }

    /// `AsyncClient::try_unsubscribe`.
    pub fn try_unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.unsubscribing(&topic);
        self.inner().try_unsubscribe(topic)
    }

    /// `AsyncClient::disconnect`, unchanged.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.inner().disconnect().await
    }

    /// `AsyncClient::try_disconnect`, unchanged.
    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        self.inner().try_disconnect()
    }
}
