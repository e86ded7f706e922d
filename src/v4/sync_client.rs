//! [`TracedSyncClient`]: rumqttc's blocking `Client` with a PRODUCER span per publish, the
//! blocking twin of [`TracedClient`].

use rumqttc::{AsyncClient, ClientError, MqttOptions, Publish, QoS, SubscribeFilter};

use super::client::TracedClient;
use super::connection::TracedConnection;
use crate::core::wait;
use crate::error::Error;
use crate::instrumentation::Instrumentation;

/// A traced `rumqttc::Client` (the blocking one): every method of it, with the same signature
/// and error type, plus a PRODUCER span per publish that ends at its acknowledgement. Its
/// [`TracedConnection`] must be iterated (or `recv`ed), usually on another thread, for requests
/// to move, as with rumqttc.
///
/// Each method is [`TracedClient`]'s, run to its end on the calling thread: the same spans,
/// context propagation (with [`V4Propagation::Envelope`] or [`V4Propagation::JsonFields`] the
/// span's context travels in the payload; by default the payload is sent byte for byte) and
/// correlation. Like rumqttc's, a call blocks while the request channel is full. It needs no
/// async runtime; see [`TracedConnection`] for the one limit of the blocking twins.
///
/// Clones share one connection, one correlation table and one [`Instrumentation`].
///
/// ```no_run
/// use std::thread;
/// use rumqttc::{MqttOptions, QoS};
/// // was: use rumqttc::Client;
/// use rumqttc_opentelemetry::v4::TracedSyncClient as Client;
///
/// let (client, mut connection) = Client::new(MqttOptions::new("agent-1", "localhost", 1883), 10);
/// thread::spawn(move || {
///     for i in 0..10 {
///         // Its span ends when the broker's PUBACK comes back through the connection.
///         client.publish("agent/1/reading", QoS::AtLeastOnce, false, vec![i]).unwrap();
///     }
/// });
/// for notification in connection.iter() {
///     println!("{notification:?}");
/// }
/// ```
///
/// [`V4Propagation::Envelope`]: crate::V4Propagation::Envelope
/// [`V4Propagation::JsonFields`]: crate::V4Propagation::JsonFields
#[derive(Clone)]
pub struct TracedSyncClient {
    inner: TracedClient,
}

impl std::fmt::Debug for TracedSyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TracedSyncClient {
    /// Like `rumqttc::Client::new`, with the default [`Instrumentation`] (global providers,
    /// built-in W3C propagator).
    ///
    /// # Panics
    ///
    /// When the operating system refuses what the connection's tokio runtime needs, as
    /// rumqttc's `Client::new` does.
    pub fn new(options: MqttOptions, cap: usize) -> (TracedSyncClient, TracedConnection) {
        Self::with_instrumentation(options, cap, Instrumentation::default())
    }

    /// Like [`TracedSyncClient::new`], with the given instrumentation.
    ///
    /// # Panics
    ///
    /// As [`TracedSyncClient::new`].
    pub fn with_instrumentation(
        options: MqttOptions,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (TracedSyncClient, TracedConnection) {
        let (inner, eventloop) = TracedClient::with_instrumentation(options, cap, instrumentation);
        (
            TracedSyncClient { inner },
            TracedConnection::from_generic(eventloop.into_generic()),
        )
    }

    /// The wrapped rumqttc client. Publishes sent through it directly are not traced, and they
    /// take a place in rumqttc's queue that the span correlation does not know about: use this
    /// client's own methods to publish.
    pub fn inner(&self) -> &AsyncClient {
        self.inner.inner()
    }

    /// Traced `Client::publish`.
    pub fn publish<S, V>(
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
        wait(self.inner.publish(topic, qos, retain, payload))
    }

    /// Publishes like [`TracedSyncClient::publish`], then blocks until the publish has ended,
    /// as its span does: written (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2). The connection must
    /// be iterated meanwhile, on another thread.
    ///
    /// Fails with [`Error::PublishFailed`] carrying the span's `error.type` (`session_lost`,
    /// `ack_timeout`, `event_loop_dropped`), or with [`Error::RequestRejected`] when rumqttc did
    /// not take the request (an invalid topic, a closed queue).
    pub fn publish_confirmed<S, V>(
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
        wait(self.inner.publish_confirmed(topic, qos, retain, payload))
    }

    /// Traced `Client::try_publish`. When another thread is blocked sending on a full queue,
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
        self.inner.try_publish(topic, qos, retain, payload)
    }

    /// `Client::ack`: the manual acknowledgement of an incoming PUBLISH, traced as
    /// [`TracedClient::ack`]: with `MqttOptions::set_manual_acks(true)`, a CLIENT
    /// `ack {destination}` settle span (a child of the context current on the calling thread,
    /// linked to the message's receive span and creation context) and a
    /// `messaging.client.operation.duration` measurement; it ends when rumqttc has taken the
    /// acknowledgement. Blocks while the request channel is full, as rumqttc's does.
    pub fn ack(&self, publish: &Publish) -> Result<(), ClientError> {
        wait(self.inner.ack(publish))
    }

    /// `Client::try_ack`, traced as [`TracedSyncClient::ack`]; a full request channel ends the
    /// span as `request_failed`.
    pub fn try_ack(&self, publish: &Publish) -> Result<(), ClientError> {
        self.inner.try_ack(publish)
    }

    /// `Client::subscribe`; the filter names the receive spans of matching messages.
    pub fn subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        wait(self.inner.subscribe(topic, qos))
    }

    /// `Client::try_subscribe`.
    pub fn try_subscribe<S: Into<String>>(&self, topic: S, qos: QoS) -> Result<(), ClientError> {
        self.inner.try_subscribe(topic, qos)
    }

    /// `Client::subscribe_many`.
    pub fn subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        wait(self.inner.subscribe_many(topics))
    }

    /// `Client::try_subscribe_many`.
    pub fn try_subscribe_many<T>(&self, topics: T) -> Result<(), ClientError>
    where
        T: IntoIterator<Item = SubscribeFilter>,
    {
        self.inner.try_subscribe_many(topics)
    }

    /// `Client::unsubscribe`.
    pub fn unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        wait(self.inner.unsubscribe(topic))
    }

    /// `Client::try_unsubscribe`.
    pub fn try_unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), ClientError> {
        self.inner.try_unsubscribe(topic)
    }

    /// `Client::disconnect`, unchanged.
    pub fn disconnect(&self) -> Result<(), ClientError> {
        wait(self.inner.disconnect())
    }

    /// `Client::try_disconnect`, unchanged.
    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        self.inner.try_disconnect()
    }
}
