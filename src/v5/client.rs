//! [`TracedClient`]: `rumqttc::v5::AsyncClient` with a PRODUCER span per publish and the context
//! in its user properties.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Publish, PublishProperties, SubscribeProperties, UnsubscribeProperties,
};
use rumqttc::v5::{AsyncClient, ClientError, MqttOptions};

use super::event_loop::TracedEventLoop;
use super::protocol::V5;
use crate::core::{Client, PublishRequest, SettleParent};
use crate::error::Error;
use crate::instrumentation::Instrumentation;

/// A traced `rumqttc::v5::AsyncClient`: every method of it, with the same signature and error
/// type, plus a PRODUCER span per publish whose context travels in the message's user
/// properties (`traceparent`, `tracestate`, `baggage`).
///
/// Clones share one connection, one correlation table and one [`Instrumentation`], and its
/// Topic Alias mappings and the requests waiting for replies (see
/// [Topic aliases](crate::v5#topic-aliases) and [Request/response](crate::v5#requestresponse)):
/// a publish that would be a protocol error with its alias is refused as a topic name with a
/// wildcard is.
///
/// ```no_run
/// use rumqttc::v5::MqttOptions;
/// use rumqttc::v5::mqttbytes::QoS;
/// use rumqttc_opentelemetry::v5::TracedClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, mut eventloop) = TracedClient::new(MqttOptions::new("sensor-1", "localhost", 1883), 10);
/// tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
/// // Waits until the broker has acknowledged it; fails with the reason code's name otherwise.
/// client
///     .publish_confirmed("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5", None)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TracedClient {
    inner: Client<V5>,
}

impl std::fmt::Debug for TracedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TracedClient {
    /// Like `rumqttc::v5::AsyncClient::new`, with the default [`Instrumentation`] (global
    /// providers, built-in W3C propagator).
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

    /// The wrapped rumqttc client. Publishes sent through it directly are not traced, and they
    /// take a place in rumqttc's queue that the span correlation does not know about: use this
    /// client's own methods to publish.
    pub fn inner(&self) -> &AsyncClient {
        self.inner.inner()
    }

    pub(crate) fn from_generic(inner: Client<V5>) -> Self {
        Self { inner }
    }

    pub(crate) fn generic(&self) -> &Client<V5> {
        &self.inner
    }

    /// Traced `AsyncClient::publish`.
    pub async fn publish<S, P>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: P,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        P: Into<Bytes>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        self.inner.publish(request).await
    }

    /// Publishes like [`TracedClient::publish_with_properties`] (or `publish`, with `None`),
    /// then waits until the publish has ended, as its span does: written (QoS 0), PUBACK (QoS
    /// 1), PUBCOMP (QoS 2). The event loop must be polled meanwhile (by another task).
    ///
    /// Fails with [`Error::PublishFailed`] carrying the span's `error.type` (an MQTT 5 reason
    /// such as `not_authorized`, or `session_lost`, `ack_timeout`, `event_loop_dropped`), or with
    /// [`Error::RequestRejected`] when rumqttc did not take the request.
    pub async fn publish_confirmed<S, P>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: P,
        properties: Option<PublishProperties>,
    ) -> Result<(), Error>
    where
        S: Into<String>,
        P: Into<Bytes>,
    {
        let mut request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        request.properties = properties;
        self.inner.publish_confirmed(request).await
    }

    /// Traced `AsyncClient::publish_with_properties`; the properties' user properties are kept,
    /// in order, and the propagation fields are appended (replacing any of the same name).
    pub async fn publish_with_properties<S, P>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: P,
        properties: PublishProperties,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        P: Into<Bytes>,
    {
        let mut request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        request.properties = Some(properties);
        self.inner.publish(request).await
    }

    /// Traced `AsyncClient::try_publish`. When another task is blocked sending on a full queue,
    /// this returns `ClientError::TryRequest` at once, as rumqttc does on a full queue.
    pub fn try_publish<S, P>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: P,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        P: Into<Bytes>,
    {
        let request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        self.inner.try_publish(request)
    }

    /// Traced `AsyncClient::try_publish_with_properties`.
    pub fn try_publish_with_properties<S, P>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: P,
        properties: PublishProperties,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
        P: Into<Bytes>,
    {
        let mut request = PublishRequest::new(topic.into(), qos, retain, payload.into());
        request.properties = Some(properties);
        self.inner.try_publish(request)
    }

    /// Traced `AsyncClient::publish_bytes`.
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

    /// Traced `AsyncClient::publish_bytes_with_properties`.
    pub async fn publish_bytes_with_properties<S>(
        &self,
        topic: S,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<(), ClientError>
    where
        S: Into<String>,
    {
        let mut request = PublishRequest::new(topic.into(), qos, retain, payload);
        request.properties = Some(properties);
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
    /// use rumqttc::v5::{Event, MqttOptions};
    /// use rumqttc::v5::mqttbytes::v5::Packet;
    /// use rumqttc::v5::mqttbytes::QoS;
    /// use rumqttc_opentelemetry::v5::TracedClient;
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

    /// `AsyncClient::subscribe_with_properties`.
    pub async fn subscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        qos: QoS,
        properties: SubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.subscribing(&topic);
        self.inner()
            .subscribe_with_properties(topic, qos, properties)
            .await
    }

    /// `AsyncClient::try_subscribe_with_properties`.
    pub fn try_subscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        qos: QoS,
        properties: SubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.subscribing(&topic);
        self.inner()
            .try_subscribe_with_properties(topic, qos, properties)
    }

    /// `AsyncClient::subscribe_many`.
    pub async fn subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = Filter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner().subscribe_many(filters).await
    }

    /// `AsyncClient::try_subscribe_many`.
    pub fn try_subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = Filter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner().try_subscribe_many(filters)
    }

    /// `AsyncClient::subscribe_many_with_properties`.
    pub async fn subscribe_many_with_properties<T>(
        &self,
        topics: T,
        properties: SubscribeProperties,
    ) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = Filter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner()
            .subscribe_many_with_properties(filters, properties)
            .await
    }

    /// `AsyncClient::try_subscribe_many_with_properties`.
    pub fn try_subscribe_many_with_properties<T>(
        &self,
        topics: T,
        properties: SubscribeProperties,
    ) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = Filter>,
    {
        let filters = self.inner.subscribing_many(topics);
        self.inner()
            .try_subscribe_many_with_properties(filters, properties)
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

    /// `AsyncClient::unsubscribe_with_properties`.
    pub async fn unsubscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        properties: UnsubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.unsubscribing(&topic);
        self.inner()
            .unsubscribe_with_properties(topic, properties)
            .await
    }

    /// `AsyncClient::try_unsubscribe_with_properties`.
    pub fn try_unsubscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        properties: UnsubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.inner.unsubscribing(&topic);
        self.inner()
            .try_unsubscribe_with_properties(topic, properties)
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
