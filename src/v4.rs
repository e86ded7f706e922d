//! Traced MQTT 3.1.1 client: drop-in twins of `rumqttc::{AsyncClient, EventLoop}`.
//!
//! MQTT 3.1.1 has no user properties. By default ([`V3Propagation::None`]) publishes keep their
//! payload byte for byte and each message starts a new trace at its receiver; with
//! [`V3Propagation::Envelope`] or [`V3Propagation::JsonFields`] the context rides in the
//! payload (see [`crate::propagation`]). Whatever the local setting, [`TracedEventLoop`]
//! recognises an envelope and strips it, so the application always sees the payload the
//! publisher passed.
//!
//! The swap is one line:
//!
//! ```no_run
//! use rumqttc::{MqttOptions, QoS};
//! // was: use rumqttc::AsyncClient;
//! use rumqttc_opentelemetry::v4::TracedClient as AsyncClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let options = MqttOptions::new("sensor-1", "localhost", 1883);
//! let (client, mut eventloop) = AsyncClient::new(options, 10);
//! client.publish("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5").await?;
//! loop {
//!     let event = eventloop.poll().await?;
//!     println!("{event:?}");
//! }
//! # }
//! ```

// The methods return rumqttc's own error type, unchanged, so that the swap is one line; its size
// is rumqttc's choice.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use opentelemetry::propagation::Extractor;
use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions,
    Packet, Publish, QoS, Request, StateError, SubscribeFilter,
};

use crate::Error;
use crate::core::connection::{feature_error_type, io_error_type};
use crate::core::{Delivery, OpenPublish, Outcome, Signal};
use crate::instrumentation::V3Propagation;
use crate::propagation::json_fields::{JsonFields, JsonFieldsInjector};
use crate::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE, UserPropertiesInjector, envelope};
use crate::semconv::{ConnectionAttributes, MessageFacts};

crate::core::traced_pair!(
    "rumqttc",
    AsyncClient,
    EventLoop,
    MqttOptions,
    rumqttc::Request,
    ConnectionAttributes::from_v4_options
);

impl TracedClient {
    /// Starts the span and, when MQTT 3.1.1 propagation applies to `topic`, carries the context
    /// in the payload.
    fn prepare(&self, topic: &str, qos: QoS, retain: bool, payload: Bytes) -> (OpenPublish, Bytes) {
        let (mut open, cx) = self
            .core
            .start_publish(topic, qos.into(), retain, payload.len());
        let settings = &self.core.settings;
        // A retained publish with an empty payload clears the retained message (MQTT 3.1.1
        // section 3.3.1.3): wrapping it would store the envelope instead.
        if !settings.v3_propagates(topic) || (retain && payload.is_empty()) {
            return (open, payload);
        }
        let carried = match settings.v3_propagation {
            V3Propagation::None => return (open, payload),
            V3Propagation::Envelope => {
                let mut headers = Vec::with_capacity(3);
                self.core
                    .inject(&open, &cx, &mut UserPropertiesInjector::new(&mut headers));
                envelope::encode(&headers, &payload).map_err(crate::Error::from)
            }
            V3Propagation::JsonFields => {
                let mut injector = JsonFieldsInjector::new();
                self.core.inject(&open, &cx, &mut injector);
                injector.apply(&payload).map_err(crate::Error::from)
            }
        };
        match carried {
            Ok(bytes) => (open, Bytes::from(bytes)),
            Err(problem) => {
                self.core.note_propagation_problem(&mut open, &problem);
                (open, payload)
            }
        }
    }

    async fn traced_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        confirm: bool,
    ) -> Result<Option<Outcome>, ClientError> {
        let (mut open, payload) = self.prepare(&topic, qos, retain, payload);
        let outcome = confirm.then(|| open.watch());
        self.core
            .send_publish(open, self.inner.publish_bytes(topic, qos, retain, payload))
            .await
            .map(|()| outcome)
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
        let topic = topic.into();
        if !rumqttc::valid_topic(&topic) {
            // rumqttc refuses it before it reaches the queue; there is nothing to trace.
            return self.inner.publish(topic, qos, retain, payload).await;
        }
        self.traced_publish(topic, qos, retain, Bytes::from(payload.into()), false)
            .await
            .map(drop)
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
        let topic = topic.into();
        if !rumqttc::valid_topic(&topic) {
            return Err(Error::RequestRejected(format!(
                "invalid topic name {topic:?}"
            )));
        }
        let outcome = self
            .traced_publish(topic, qos, retain, Bytes::from(payload.into()), true)
            .await;
        crate::core::confirmed(outcome).await
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
        let topic = topic.into();
        if !rumqttc::valid_topic(&topic) {
            return self.inner.try_publish(topic, qos, retain, payload);
        }
        let (open, payload) = self.prepare(&topic, qos, retain, Bytes::from(payload.into()));
        self.core.try_send_publish(
            open,
            (topic, payload),
            |(topic, payload)| {
                self.inner
                    .try_publish(topic, qos, retain, Vec::from(payload))
            },
            |(topic, payload)| {
                let mut publish = Publish::from_bytes(topic, qos, payload);
                publish.retain = retain;
                ClientError::TryRequest(Request::Publish(publish))
            },
        )
    }

    /// Traced `AsyncClient::publish_bytes`. Unlike rumqttc's, it refuses a topic name that
    /// MQTT forbids (empty, with a wildcard, [MQTT-3.3.2-2]) as `publish` does, with
    /// `ClientError::Request`, instead of sending it to the broker.
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
        let topic = topic.into();
        if !rumqttc::valid_topic(&topic) {
            let mut publish = Publish::from_bytes(topic, qos, payload);
            publish.retain = retain;
            return Err(ClientError::Request(Request::Publish(publish)));
        }
        self.traced_publish(topic, qos, retain, payload, false)
            .await
            .map(drop)
    }
}

crate::core::client_passthrough!(TracedClient, QoS, Publish, SubscribeFilter, ClientError);

impl TracedEventLoop {
    fn observe(&self, event: &mut Event) -> Option<Delivery> {
        if let Event::Incoming(Packet::Publish(publish)) = event {
            return Some(self.receive(publish));
        }
        if let Some(signal) = signal_of(event) {
            self.core.on_signal(signal);
        }
        None
    }

    /// Records the receive span, stripping an envelope from the payload first.
    fn receive(&self, publish: &mut Publish) -> Delivery {
        let wire_size = publish.payload.len();
        let facts = |body: usize| {
            MessageFacts::new(&publish.topic, publish.qos.into())
                .with_retained(publish.retain)
                .with_duplicate(publish.dup)
                .with_packet_id(Some(publish.pkid))
                .with_sizes(Some(body), None)
        };
        match envelope::decode(&publish.payload) {
            Ok(Some(envelope)) => {
                let delivery = self.core.receive(
                    facts(envelope.payload().len()),
                    Some(wire_size),
                    Some(&envelope),
                    None,
                );
                publish.payload = envelope.into_payload();
                delivery
            }
            Ok(None) => {
                let fields = (self.core.settings.v3_propagation == V3Propagation::JsonFields)
                    .then(|| {
                        JsonFields::parse(&publish.payload, &[TRACEPARENT, TRACESTATE, BAGGAGE])
                            .ok()
                    })
                    .flatten();
                self.core.receive(
                    facts(wire_size),
                    None,
                    fields.as_ref().map(|fields| fields as &dyn Extractor),
                    None,
                )
            }
            Err(problem) => self
                .core
                .receive(facts(wire_size), None, None, Some(&problem)),
        }
    }
}

crate::core::eventloop_passthrough!(TracedEventLoop, EventLoop);

/// The publish-span signal of an event, if it has one (MQTT 3.1.1 acknowledgements carry no
/// reason code).
fn signal_of(event: &Event) -> Option<Signal> {
    match event {
        Event::Outgoing(outgoing) => Signal::from_outgoing(outgoing),
        Event::Incoming(Packet::PubAck(ack)) => Some(Signal::PubAck(ack.pkid, None)),
        Event::Incoming(Packet::PubRec(rec)) => Some(Signal::PubRec(rec.pkid, None)),
        Event::Incoming(Packet::PubComp(comp)) => Some(Signal::PubComp(comp.pkid, None)),
        _ => None,
    }
}

crate::core::traced_poll!(
    TracedEventLoop,
    Event,
    rumqttc::Packet,
    Packet::PingResp,
    rumqttc::Request,
    Publish,
    ConnectionError
);

/// The `error.type` of a connection error (recorded on connection attempts and lifetimes).
// The catch-all covers variants that exist only with rumqttc's TLS, WebSocket or proxy features.
#[allow(unreachable_patterns)]
fn error_type(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::MqttState(state) => match state {
            StateError::Io(io) => io_error_type(io),
            StateError::AwaitPingResp => "keepalive_timeout",
            StateError::ConnectionAborted => "connection_closed",
            StateError::CollisionTimeout => "collision_timeout",
            StateError::Deserialization(_) => "malformed_packet",
            StateError::Unsolicited(_)
            | StateError::WrongPacket
            | StateError::InvalidState
            | StateError::EmptySubscription => "protocol_error",
        },
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
        ConnectionError::Io(io) => io_error_type(io),
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::Success => "connection_refused",
            ConnectReturnCode::RefusedProtocolVersion => "unsupported_protocol_version",
            ConnectReturnCode::BadClientId => "client_identifier_not_valid",
            ConnectReturnCode::ServiceUnavailable => "server_unavailable",
            ConnectReturnCode::BadUserNamePassword => "bad_user_name_or_password",
            ConnectReturnCode::NotAuthorized => "not_authorized",
        },
        ConnectionError::NotConnAck(_) => "protocol_error",
        ConnectionError::RequestsDone => "requests_done",
        other => feature_error_type(&other.to_string()),
    }
}

pub use crate::roles::v4::{
    AckPolicy, Message, RetryPolicy, SubscriberBuilder, TracedPublisher, TracedSubscriber,
};

impl TracedEventLoop {
    /// How many publishes rumqttc keeps in flight (`MqttOptions::set_inflight`).
    fn inflight_window(&self) -> u16 {
        self.inner.mqtt_options.inflight()
    }
}

/// MQTT 3.1.1 has no Receive Maximum.
fn receive_maximum(_connack: &rumqttc::ConnAck) -> Option<u16> {
    None
}
