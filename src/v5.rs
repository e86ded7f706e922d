//! Traced MQTT 5 client: drop-in twins of `rumqttc::v5::{AsyncClient, EventLoop}`.
//!
//! Context travels in user properties named `traceparent`, `tracestate` (and `baggage`), as the
//! W3C "Trace Context: MQTT" draft specifies; the application's own user properties are kept, in
//! order. A publish acknowledged with a reason code of 0x80 or more (`NotAuthorized`,
//! `QuotaExceeded`, ...) ends its span as an error with `error.type` set to the reason's name;
//! `NoMatchingSubscribers` (0x10) is a success.
//!
//! The swap is one line:
//!
//! ```no_run
//! use rumqttc::v5::MqttOptions;
//! use rumqttc::v5::mqttbytes::QoS;
//! // was: use rumqttc::v5::AsyncClient;
//! use rumqttc_opentelemetry::v5::TracedClient as AsyncClient;
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

use std::borrow::Cow;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAckReason, PubCompReason, PubRecReason, Publish, PublishProperties,
    SubscribeProperties, UnsubscribeProperties,
};
use rumqttc::v5::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};

use crate::Error;
use crate::core::connection::{feature_error_type, io_error_type};
use crate::core::correlation::Failure;
use crate::core::{Delivery, Outcome, Signal};
use crate::propagation::UserPropertiesInjector;
use crate::semconv::{ConnectionAttributes, MessageFacts};

/// The `error.type` of an MQTT 5 PUBACK or PUBREC reason (the two share their codes, MQTT 5
/// sections 3.4.2.1 and 3.5.2.1), `None` for the two success codes.
macro_rules! ack_failure {
    ($name:ident, $reason:ident) => {
        fn $name(reason: $reason) -> Option<Failure> {
            let name = match reason {
                $reason::Success | $reason::NoMatchingSubscribers => return None,
                $reason::UnspecifiedError => "unspecified_error",
                $reason::ImplementationSpecificError => "implementation_specific_error",
                $reason::NotAuthorized => "not_authorized",
                $reason::TopicNameInvalid => "topic_name_invalid",
                $reason::PacketIdentifierInUse => "packet_identifier_in_use",
                $reason::QuotaExceeded => "quota_exceeded",
                $reason::PayloadFormatInvalid => "payload_format_invalid",
            };
            Some(Failure::Reason(name))
        }
    };
}

ack_failure!(puback_failure, PubAckReason);
ack_failure!(pubrec_failure, PubRecReason);

/// The `error.type` of an MQTT 5 PUBCOMP reason.
fn pubcomp_failure(reason: PubCompReason) -> Option<Failure> {
    match reason {
        PubCompReason::Success => None,
        PubCompReason::PacketIdentifierNotFound => {
            Some(Failure::Reason("packet_identifier_not_found"))
        }
    }
}

crate::core::traced_pair!(
    "rumqttc::v5",
    AsyncClient,
    EventLoop,
    MqttOptions,
    rumqttc::v5::Request,
    ConnectionAttributes::from_v5_options
);

impl TracedClient {
    /// Starts the span, injects the context into the user properties, and returns what to send.
    fn prepare(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &Bytes,
        properties: Option<PublishProperties>,
    ) -> (crate::core::OpenPublish, Option<PublishProperties>) {
        let (open, cx) = self
            .core
            .start_publish(topic, qos.into(), retain, payload.len());
        let had_properties = properties.is_some();
        let mut properties = properties.unwrap_or_default();
        self.core.inject(
            &open,
            &cx,
            &mut UserPropertiesInjector::new(&mut properties.user_properties),
        );
        let unchanged = !had_properties && properties == PublishProperties::default();
        (open, (!unchanged).then_some(properties))
    }

    async fn traced_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<PublishProperties>,
        confirm: bool,
    ) -> Result<Option<Outcome>, ClientError> {
        if !rumqttc::v5::mqttbytes::valid_topic(&topic) {
            // rumqttc refuses it before it reaches the queue; there is nothing to trace.
            return self
                .send(topic, qos, retain, payload, properties)
                .await
                .map(|()| None);
        }
        let (mut open, properties) = self.prepare(&topic, qos, retain, &payload, properties);
        let outcome = confirm.then(|| open.watch());
        self.core
            .send_publish(open, self.send(topic, qos, retain, payload, properties))
            .await
            .map(|()| outcome)
    }

    async fn send(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<PublishProperties>,
    ) -> Result<(), ClientError> {
        match properties {
            Some(properties) => {
                self.inner
                    .publish_with_properties(topic, qos, retain, payload, properties)
                    .await
            }
            None => self.inner.publish(topic, qos, retain, payload).await,
        }
    }

    fn traced_try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<PublishProperties>,
    ) -> Result<(), ClientError> {
        if !rumqttc::v5::mqttbytes::valid_topic(&topic) {
            return self.try_send(topic, qos, retain, payload, properties);
        }
        let (open, properties) = self.prepare(&topic, qos, retain, &payload, properties);
        let busy = |(topic, qos, retain, payload, properties): (String, QoS, bool, Bytes, _)| {
            let mut publish = Publish::new(topic, qos, payload, properties);
            publish.retain = retain;
            ClientError::TryRequest(Request::Publish(publish))
        };
        self.core.try_send_publish(
            open,
            (topic, qos, retain, payload, properties),
            |(topic, qos, retain, payload, properties)| {
                self.try_send(topic, qos, retain, payload, properties)
            },
            busy,
        )
    }

    fn try_send(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<PublishProperties>,
    ) -> Result<(), ClientError> {
        match properties {
            Some(properties) => self
                .inner
                .try_publish_with_properties(topic, qos, retain, payload, properties),
            None => self.inner.try_publish(topic, qos, retain, payload),
        }
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
        self.traced_publish(topic.into(), qos, retain, payload.into(), None, false)
            .await
            .map(drop)
    }

    /// Publishes like [`TracedClient::publish`], then waits until the publish has ended, as its
    /// span does: written (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2). The event loop must be
    /// polled meanwhile (by another task).
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
        let outcome = self
            .traced_publish(topic.into(), qos, retain, payload.into(), properties, true)
            .await;
        crate::core::confirmed(outcome).await
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
        self.traced_publish(
            topic.into(),
            qos,
            retain,
            payload.into(),
            Some(properties),
            false,
        )
        .await
        .map(drop)
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
        self.traced_try_publish(topic.into(), qos, retain, payload.into(), None)
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
        self.traced_try_publish(topic.into(), qos, retain, payload.into(), Some(properties))
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
        self.traced_publish(topic.into(), qos, retain, payload, None, false)
            .await
            .map(drop)
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
        self.traced_publish(topic.into(), qos, retain, payload, Some(properties), false)
            .await
            .map(drop)
    }

    /// `AsyncClient::subscribe_with_properties`; the filter names receive spans.
    pub async fn subscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        qos: QoS,
        properties: SubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.core.subscribed(&topic);
        self.inner
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
        self.core.subscribed(&topic);
        self.inner
            .try_subscribe_with_properties(topic, qos, properties)
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
        let filters = self.remember(topics);
        self.inner
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
        let filters = self.remember(topics);
        self.inner
            .try_subscribe_many_with_properties(filters, properties)
    }

    /// `AsyncClient::unsubscribe_with_properties`.
    pub async fn unsubscribe_with_properties<S: Into<String>>(
        &self,
        topic: S,
        properties: UnsubscribeProperties,
    ) -> Result<(), ClientError> {
        let topic = topic.into();
        self.core.unsubscribed(&topic);
        self.inner
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
        self.core.unsubscribed(&topic);
        self.inner
            .try_unsubscribe_with_properties(topic, properties)
    }
}

crate::core::client_passthrough!(TracedClient, QoS, Publish, Filter, ClientError);

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

    fn receive(&self, publish: &Publish) -> Delivery {
        let topic: Cow<'_, str> = String::from_utf8_lossy(&publish.topic);
        let facts = MessageFacts::new(&topic, publish.qos.into())
            .with_retained(publish.retain)
            .with_duplicate(publish.dup)
            .with_packet_id(Some(publish.pkid))
            .with_sizes(Some(publish.payload.len()), None);
        let extractor = publish.properties.as_ref().map(|properties| {
            crate::propagation::UserPropertiesExtractor::new(&properties.user_properties)
        });
        self.core.receive(
            facts,
            None,
            extractor
                .as_ref()
                .map(|e| e as &dyn opentelemetry::propagation::Extractor),
            None,
        )
    }
}

crate::core::eventloop_passthrough!(TracedEventLoop, EventLoop);

/// The publish-span signal of an event, if it has one.
fn signal_of(event: &Event) -> Option<Signal> {
    match event {
        Event::Outgoing(outgoing) => Signal::from_outgoing(outgoing),
        Event::Incoming(Packet::PubAck(ack)) => {
            Some(Signal::PubAck(ack.pkid, puback_failure(ack.reason)))
        }
        Event::Incoming(Packet::PubRec(rec)) => {
            Some(Signal::PubRec(rec.pkid, pubrec_failure(rec.reason)))
        }
        Event::Incoming(Packet::PubComp(comp)) => {
            Some(Signal::PubComp(comp.pkid, pubcomp_failure(comp.reason)))
        }
        _ => None,
    }
}

crate::core::traced_poll!(
    TracedEventLoop,
    Event,
    rumqttc::v5::mqttbytes::v5::Packet,
    Packet::PingResp(_),
    rumqttc::v5::Request,
    Publish,
    ConnectionError
);

/// The `error.type` of an MQTT 5 CONNACK reason code.
fn connack_error_type(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "connection_refused",
        ConnectReturnCode::RefusedProtocolVersion => "unsupported_protocol_version",
        ConnectReturnCode::BadClientId => "client_identifier_not_valid",
        ConnectReturnCode::ServiceUnavailable => "server_unavailable",
        ConnectReturnCode::UnspecifiedError => "unspecified_error",
        ConnectReturnCode::MalformedPacket => "malformed_packet",
        ConnectReturnCode::ProtocolError => "protocol_error",
        ConnectReturnCode::ImplementationSpecificError => "implementation_specific_error",
        ConnectReturnCode::UnsupportedProtocolVersion => "unsupported_protocol_version",
        ConnectReturnCode::ClientIdentifierNotValid => "client_identifier_not_valid",
        ConnectReturnCode::BadUserNamePassword => "bad_user_name_or_password",
        ConnectReturnCode::NotAuthorized => "not_authorized",
        ConnectReturnCode::ServerUnavailable => "server_unavailable",
        ConnectReturnCode::ServerBusy => "server_busy",
        ConnectReturnCode::Banned => "banned",
        ConnectReturnCode::BadAuthenticationMethod => "bad_authentication_method",
        ConnectReturnCode::TopicNameInvalid => "topic_name_invalid",
        ConnectReturnCode::PacketTooLarge => "packet_too_large",
        ConnectReturnCode::QuotaExceeded => "quota_exceeded",
        ConnectReturnCode::PayloadFormatInvalid => "payload_format_invalid",
        ConnectReturnCode::RetainNotSupported => "retain_not_supported",
        ConnectReturnCode::QoSNotSupported => "qos_not_supported",
        ConnectReturnCode::UseAnotherServer => "use_another_server",
        ConnectReturnCode::ServerMoved => "server_moved",
        ConnectReturnCode::ConnectionRateExceeded => "connection_rate_exceeded",
    }
}

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
            StateError::ServerDisconnect { .. } => "server_disconnect",
            StateError::ConnFail { reason } => connack_error_type(*reason),
            StateError::OutgoingPacketTooLarge { .. }
            | StateError::IncomingPacketTooLarge { .. } => "packet_too_large",
            _ => "protocol_error",
        },
        ConnectionError::Timeout(_) => "timeout",
        ConnectionError::Io(io) => io_error_type(io),
        ConnectionError::ConnectionRefused(code) => connack_error_type(*code),
        ConnectionError::NotConnAck(_) => "protocol_error",
        ConnectionError::RequestsDone => "requests_done",
        other => feature_error_type(&other.to_string()),
    }
}

pub use crate::roles::v5::{
    AckPolicy, Message, RetryPolicy, SubscriberBuilder, TracedPublisher, TracedSubscriber,
};

impl TracedEventLoop {
    /// How many publishes rumqttc keeps in flight: the smaller of the client's upper limit and the
    /// broker's Receive Maximum (MQTT 5 section 3.2.2.3.3), as rumqttc computes it.
    fn inflight_window(&self) -> u16 {
        let limit = self
            .inner
            .options
            .get_outgoing_inflight_upper_limit()
            .unwrap_or(u16::MAX);
        self.receive_maximum
            .map_or(limit, |broker| broker.min(limit))
    }
}

/// The broker's Receive Maximum in a CONNACK (MQTT 5 section 3.2.2.3.3).
fn receive_maximum(connack: &rumqttc::v5::mqttbytes::v5::ConnAck) -> Option<u16> {
    connack
        .properties
        .as_ref()
        .and_then(|properties| properties.receive_max)
}
