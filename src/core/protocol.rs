//! [`Protocol`]: the one trait for what differs between MQTT 3.1.1 and MQTT 5, so that the
//! traced client, the traced event loop and the roles are written once.
//!
//! rumqttc has a complete set of types per protocol version (`rumqttc::{AsyncClient, EventLoop,
//! Event, Request, Publish, QoS, ...}` and their `rumqttc::v5` twins) that share no trait. The
//! core needs only a few facts from them: how to send a publish, what an event or a request is,
//! the state of rumqttc's `pending` queue, collision slot and in-flight window, and how a
//! connection error or an acknowledgement is named. [`Protocol`] names exactly those, and
//! `crate::v4::V4` and `crate::v5::V5` implement it, each in one file; the unit tests drive the
//! core with a scripted fake of their own.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use opentelemetry::Context;
use rumqttc::Outgoing;

use super::aliases::{Address, Refusal};
use super::consume::Delivery;
use super::correlation::Signal;
use super::publish::OpenPublish;
use super::telemetry::Telemetry;
use crate::semconv::{ConnectionAttributes, MessageFacts, MqttQoS};

/// A publish as the application handed it over, before it becomes a rumqttc request.
pub(crate) struct PublishRequest<P: Protocol> {
    pub(crate) topic: String,
    pub(crate) qos: P::QoS,
    pub(crate) retain: bool,
    pub(crate) payload: Bytes,
    /// The PUBLISH properties (MQTT 5); nothing for MQTT 3.1.1.
    pub(crate) properties: P::Properties,
}

impl<P: Protocol> PublishRequest<P> {
    /// A request without properties.
    pub(crate) fn new(topic: String, qos: P::QoS, retain: bool, payload: Bytes) -> Self {
        Self {
            topic,
            qos,
            retain,
            payload,
            properties: P::Properties::default(),
        }
    }
}

/// Which of rumqttc's two request errors a refused request becomes: `ClientError::Request` from
/// an `async` send, `ClientError::TryRequest` from a `try_` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Send,
    TrySend,
}

/// What an outgoing request in rumqttc's `pending` queue is, as far as a reconnect cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// A PUBLISH; its packet id is 0 until rumqttc writes it.
    Publish,
    /// A PUBREL of a QoS 2 publish past PUBREC.
    Release,
    /// An acknowledgement of an incoming message, or a ping: it belongs to one connection.
    SessionBound,
    /// SUBSCRIBE, UNSUBSCRIBE, DISCONNECT.
    Other,
}

/// An event of rumqttc's event loop, as far as the core and the roles care.
#[derive(Debug)]
pub(crate) enum EventView<'a> {
    /// An incoming CONNACK.
    ConnAck {
        session_present: bool,
        /// The broker's Receive Maximum (MQTT 5 section 3.2.2.3.3).
        receive_maximum: Option<u16>,
        /// Whether the broker supports subscription identifiers (MQTT 5 section 3.2.2.3.12).
        subscription_ids: bool,
    },
    /// An incoming SUBACK: per filter of the SUBSCRIBE, `None` when granted, else the reason.
    SubAck(Vec<Option<&'static str>>),
    /// An incoming PUBLISH.
    Publish,
    /// An incoming PINGRESP.
    PingResp,
    /// An incoming PUBACK, PUBREC or PUBCOMP of one of our publishes.
    Ack(Signal),
    /// Something the event loop wrote.
    Outgoing(&'a Outgoing),
    /// Anything else.
    Other,
}

impl EventView<'_> {
    /// What the event means for the open publish spans, if anything.
    pub(crate) fn signal(&self) -> Option<Signal> {
        match self {
            Self::Ack(signal) => Some(*signal),
            Self::Outgoing(Outgoing::Publish(pkid)) => Some(Signal::Written(*pkid)),
            Self::Outgoing(Outgoing::AwaitAck(pkid)) => Some(Signal::Parked(*pkid)),
            _ => None,
        }
    }
}

/// The facts of one PUBLISH, in version-independent form.
#[derive(Debug, Clone)]
pub(crate) struct PublishView<'a> {
    /// MQTT 5 topics are bytes in rumqttc; invalid UTF-8 is replaced.
    pub(crate) topic: std::borrow::Cow<'a, str>,
    pub(crate) qos: MqttQoS,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    pub(crate) pkid: u16,
    pub(crate) payload: &'a Bytes,
    /// The Correlation Data (MQTT 5 section 3.3.2.3.6).
    pub(crate) correlation_data: Option<&'a [u8]>,
}

impl PublishView<'_> {
    /// The facts the span attributes of this PUBLISH are made from.
    pub(crate) fn facts(&self) -> MessageFacts<'_> {
        MessageFacts::new(&self.topic, self.qos)
            .with_retained(self.retain)
            .with_duplicate(self.dup)
            .with_packet_id(Some(self.pkid))
            .with_sizes(Some(self.payload.len()), None)
            .with_conversation_id(self.correlation_data)
    }
}

/// rumqttc's types of one MQTT version and the facts the core reads from them. Implemented by
/// `crate::v4::V4` and `crate::v5::V5` (and a scripted fake in the unit tests).
pub(crate) trait Protocol: Sized + Send + Sync + 'static {
    /// `MqttOptions`.
    type Options: Send + 'static;
    /// `AsyncClient`.
    type AsyncClient: Clone + Send + Sync + fmt::Debug + 'static;
    /// `EventLoop`.
    type EventLoop: Send + 'static;
    /// `Event`.
    type Event: Send + 'static;
    /// `Request`.
    type Request: Clone + Send + 'static;
    /// `Publish`.
    type Publish: Clone + Send + Sync + fmt::Debug + 'static;
    /// `QoS`.
    type QoS: Copy + Send + Sync + fmt::Debug + Into<MqttQoS> + 'static;
    /// A filter of `subscribe_many` (`SubscribeFilter`, `Filter`).
    type Filter: Send + 'static;
    /// What a publish carries besides topic, QoS, retain flag and payload.
    type Properties: Default + Send + 'static;
    /// `ConnectionError`.
    type ConnectionError: Send + 'static;
    /// `ClientError`.
    type ClientError: fmt::Display + Send + 'static;

    /// Whether the version has subscription identifiers (MQTT 5).
    const SUBSCRIPTION_IDS: bool;

    // --- Connecting

    /// `AsyncClient::new`.
    fn new_client(options: Self::Options, cap: usize) -> (Self::AsyncClient, Self::EventLoop);

    /// The facts of the connection that every span and metric carries.
    fn connection(options: &Self::Options) -> ConnectionAttributes;

    /// `MqttOptions::set_manual_acks(true)`.
    fn enable_manual_acks(options: &mut Self::Options);

    /// The Topic Alias Maximum the client's CONNECT announces (MQTT 5 section 3.1.2.11.5): the
    /// highest alias the broker may send it. 0 for MQTT 3.1.1.
    fn incoming_alias_maximum(_options: &Self::Options) -> u16 {
        0
    }
    /// `MqttOptions::manual_acks()`: whether the application acknowledges incoming QoS 1 and 2
    /// messages itself.
    fn manual_acks(options: &Self::Options) -> bool;

    // --- Publishing

    /// What a publish's Topic Alias (MQTT 5 section 3.3.2.3.4) means before its span starts:
    /// the topic the alias stands for when the topic name is empty; `Err` when the broker would
    /// take the publish for a protocol error (it is then refused, as an invalid topic name is).
    /// An alias the current network connection has not been told gets its topic name back.
    /// Nothing for MQTT 3.1.1.
    fn address(
        _telemetry: &Telemetry,
        _request: &mut PublishRequest<Self>,
    ) -> Result<Address, Refusal> {
        Ok(Address::default())
    }

    /// The Correlation Data of a publish request (MQTT 5 section 3.3.2.3.6).
    fn request_correlation_data(_request: &PublishRequest<Self>) -> Option<&[u8]> {
        None
    }

    /// Carries the context of the open publish span (with the baggage of `parent`) in the
    /// request: user properties (MQTT 5), or the payload when MQTT 3.1.1 propagation applies.
    fn carry(
        telemetry: &Telemetry,
        open: &mut OpenPublish,
        parent: &Context,
        request: &mut PublishRequest<Self>,
    );

    /// Hands a publish to rumqttc, waiting for room in its request channel.
    fn send(
        client: &Self::AsyncClient,
        request: PublishRequest<Self>,
    ) -> impl Future<Output = Result<(), Self::ClientError>> + Send;

    /// Hands a publish to rumqttc if its request channel has room.
    fn try_send(
        client: &Self::AsyncClient,
        request: PublishRequest<Self>,
    ) -> Result<(), Self::ClientError>;

    /// The error rumqttc returns for a publish it did not take.
    fn refused(request: PublishRequest<Self>, attempt: Attempt) -> Self::ClientError;

    // --- Other requests

    /// The filter a `subscribe_many` item subscribes.
    fn filter_path(filter: &Self::Filter) -> &str;

    /// `AsyncClient::ack`.
    fn ack(
        client: &Self::AsyncClient,
        publish: &Self::Publish,
    ) -> impl Future<Output = Result<(), Self::ClientError>> + Send;

    /// `AsyncClient::try_ack`.
    fn try_ack(
        client: &Self::AsyncClient,
        publish: &Self::Publish,
    ) -> Result<(), Self::ClientError>;

    /// One SUBSCRIBE with `filters`, tagged with subscription identifier `id` (MQTT 5).
    fn subscribe(
        client: &Self::AsyncClient,
        filters: Vec<(String, Self::QoS)>,
        id: Option<usize>,
    ) -> impl Future<Output = Result<(), Self::ClientError>> + Send;

    /// `AsyncClient::disconnect`.
    fn disconnect(
        client: &Self::AsyncClient,
    ) -> impl Future<Output = Result<(), Self::ClientError>> + Send;

    // --- The event loop

    /// `EventLoop::poll`.
    fn poll(
        inner: &mut Self::EventLoop,
    ) -> impl Future<Output = Result<Self::Event, Self::ConnectionError>> + Send;

    /// rumqttc's `pending` queue: what it sends first on the next connection.
    fn pending(inner: &mut Self::EventLoop) -> &mut VecDeque<Self::Request>;

    /// The publish rumqttc parked on a packet-id collision (`state.collision`).
    fn collision(inner: &mut Self::EventLoop) -> &mut Option<Self::Publish>;

    /// Publishes written and not yet acknowledged (`state.inflight()`).
    fn inflight(inner: &Self::EventLoop) -> u16;

    /// The client's own limit on publishes in flight (the broker's Receive Maximum may lower
    /// it).
    fn inflight_limit(inner: &Self::EventLoop) -> u16;

    /// Events rumqttc has queued and not yet handed out (`state.events`).
    fn queued_events(inner: &Self::EventLoop) -> &VecDeque<Self::Event>;

    /// The `error.type` of a connection error.
    fn error_type(error: &Self::ConnectionError) -> &'static str;

    /// The connection was lost, and rumqttc has put in `pending` what it writes first on the
    /// next one: makes those publishes valid there (MQTT 5: an alias the next connection does
    /// not know gets its topic name back, see `TopicAliases::rebase`).
    fn connection_lost(_telemetry: &Telemetry, _inner: &mut Self::EventLoop) {}

    /// The broker's Topic Alias Maximum in a CONNACK event (MQTT 5 section 3.2.2.3.8, 0 when
    /// absent); `None` for other events and for MQTT 3.1.1.
    fn topic_alias_maximum(_event: &Self::Event) -> Option<u16> {
        None
    }

    /// Whether the error is rumqttc's `ConnectionError::RequestsDone`, the request channel
    /// closed (the blocking `Connection` then returns `RecvError`, as rumqttc's does).
    fn requests_done(error: &Self::ConnectionError) -> bool;

    // --- Events

    /// What an event is.
    fn event(event: &Self::Event) -> EventView<'_>;

    /// The PUBLISH of an incoming-publish event.
    fn incoming_publish(event: &mut Self::Event) -> Option<&mut Self::Publish>;

    /// The PUBLISH of an incoming-publish event, by value.
    fn into_incoming_publish(event: Self::Event) -> Option<Self::Publish>;

    /// Records the receive span of an incoming PUBLISH from the context it carries (for MQTT
    /// 3.1.1, an envelope is stripped from the payload first).
    fn receive(telemetry: &Telemetry, publish: &mut Self::Publish) -> Delivery;

    // --- Requests and publishes

    /// What a request is.
    fn request_kind(request: &Self::Request) -> RequestKind;

    /// The publish of a publish request.
    fn publish_of(request: &Self::Request) -> Option<&Self::Publish>;

    /// The publish of a publish request, by value; other requests come back unchanged.
    fn into_publish(request: Self::Request) -> Result<Self::Publish, Self::Request>;

    /// A publish request.
    fn publish_request(publish: Self::Publish) -> Self::Request;

    /// The facts of a PUBLISH.
    fn view(publish: &Self::Publish) -> PublishView<'_>;

    /// Sets the packet id and the DUP flag of a PUBLISH.
    fn set_packet(publish: &mut Self::Publish, pkid: u16, dup: bool);

    /// The subscription identifiers an incoming PUBLISH carries (none for MQTT 3.1.1).
    fn subscription_ids(publish: &Self::Publish) -> &[usize];
}
