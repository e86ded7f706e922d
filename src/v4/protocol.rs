//! [`V4`]: MQTT 3.1.1 for the generic core: rumqttc's types, context in the payload (envelope or
//! JSON fields, opt-in) since MQTT 3.1.1 has no properties, and the names of its return codes.

use std::collections::VecDeque;

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry::propagation::Extractor;
use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions,
    Packet, Publish, QoS, Request, StateError, SubscribeFilter, SubscribeReasonCode,
};

use crate::core::{
    Attempt, Carrier, Delivery, EventView, OpenPublish, Protocol, PublishRequest, PublishView,
    RequestKind, Signal, Telemetry, feature_error_type, io_error_type,
};
use crate::instrumentation::V4Propagation;
use crate::propagation::json_fields::{JsonFields, JsonFieldsInjector};
use crate::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE, UserPropertiesInjector, envelope};
use crate::semconv::ConnectionAttributes;

/// MQTT 3.1.1, as rumqttc implements it (protocol level 4).
#[derive(Debug)]
pub(crate) struct V4;

impl Protocol for V4 {
    type Options = MqttOptions;
    type AsyncClient = AsyncClient;
    type EventLoop = EventLoop;
    type Event = Event;
    type Request = Request;
    type Publish = Publish;
    type QoS = QoS;
    type Filter = SubscribeFilter;
    type Properties = ();
    type ConnectionError = ConnectionError;
    type ClientError = ClientError;

    const SUBSCRIPTION_IDS: bool = false;

    fn new_client(options: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
        AsyncClient::new(options, cap)
    }

    fn connection(options: &MqttOptions) -> ConnectionAttributes {
        ConnectionAttributes::from_v4_options(options)
    }

    fn enable_manual_acks(options: &mut MqttOptions) {
        options.set_manual_acks(true);
    }

    fn manual_acks(options: &MqttOptions) -> bool {
        options.manual_acks()
    }

    /// When MQTT 3.1.1 propagation applies to the topic, the context goes into the payload;
    /// otherwise the payload stays byte for byte what the application passed.
    fn carry(
        telemetry: &Telemetry,
        open: &mut OpenPublish,
        parent: &Context,
        request: &mut PublishRequest<Self>,
    ) {
        let settings = &telemetry.settings;
        // A retained publish with an empty payload clears the retained message (MQTT 3.1.1
        // section 3.3.1.3): wrapping it would store the envelope instead.
        if !settings.v4_propagates(&request.topic) || (request.retain && request.payload.is_empty())
        {
            return;
        }
        let carried = match settings.v4_propagation {
            V4Propagation::None => return,
            V4Propagation::Envelope => {
                let mut headers = Vec::with_capacity(3);
                telemetry.inject(open, parent, &mut UserPropertiesInjector::new(&mut headers));
                envelope::encode(&headers, &request.payload).map_err(crate::error::Error::from)
            }
            V4Propagation::JsonFields => {
                let mut injector = JsonFieldsInjector::new();
                telemetry.inject(open, parent, &mut injector);
                injector
                    .apply(&request.payload)
                    .map_err(crate::error::Error::from)
            }
        };
        match carried {
            Ok(bytes) => request.payload = Bytes::from(bytes),
            Err(problem) => telemetry.note_propagation_problem(open, &problem),
        }
    }

    async fn send(client: &AsyncClient, request: PublishRequest<Self>) -> Result<(), ClientError> {
        client
            .publish_bytes(request.topic, request.qos, request.retain, request.payload)
            .await
    }

    fn try_send(client: &AsyncClient, request: PublishRequest<Self>) -> Result<(), ClientError> {
        client.try_publish(
            request.topic,
            request.qos,
            request.retain,
            Vec::from(request.payload),
        )
    }

    fn refused(request: PublishRequest<Self>, attempt: Attempt) -> ClientError {
        let mut publish = Publish::from_bytes(request.topic, request.qos, request.payload);
        publish.retain = request.retain;
        let request = Request::Publish(publish);
        match attempt {
            Attempt::Send => ClientError::Request(request),
            Attempt::TrySend => ClientError::TryRequest(request),
        }
    }

    fn filter_path(filter: &SubscribeFilter) -> &str {
        &filter.path
    }

    async fn ack(client: &AsyncClient, publish: &Publish) -> Result<(), ClientError> {
        client.ack(publish).await
    }

    fn try_ack(client: &AsyncClient, publish: &Publish) -> Result<(), ClientError> {
        client.try_ack(publish)
    }

    /// MQTT 3.1.1 has no subscription identifiers: `id` is ignored.
    async fn subscribe(
        client: &AsyncClient,
        filters: Vec<(String, QoS)>,
        _id: Option<usize>,
    ) -> Result<(), ClientError> {
        let filters = filters
            .into_iter()
            .map(|(filter, qos)| SubscribeFilter::new(filter, qos));
        client.subscribe_many(filters).await
    }

    async fn disconnect(client: &AsyncClient) -> Result<(), ClientError> {
        client.disconnect().await
    }

    async fn poll(inner: &mut EventLoop) -> Result<Event, ConnectionError> {
        inner.poll().await
    }

    fn pending(inner: &mut EventLoop) -> &mut VecDeque<Request> {
        &mut inner.pending
    }

    fn collision(inner: &mut EventLoop) -> &mut Option<Publish> {
        &mut inner.state.collision
    }

    fn inflight(inner: &EventLoop) -> u16 {
        inner.state.inflight()
    }

    /// `MqttOptions::set_inflight`; MQTT 3.1.1 has no Receive Maximum.
    fn inflight_limit(inner: &EventLoop) -> u16 {
        inner.mqtt_options.inflight()
    }

    fn queued_events(inner: &EventLoop) -> &VecDeque<Event> {
        &inner.state.events
    }

    fn error_type(error: &ConnectionError) -> &'static str {
        error_type(error)
    }

    fn requests_done(error: &ConnectionError) -> bool {
        matches!(error, ConnectionError::RequestsDone)
    }

    /// MQTT 3.1.1 acknowledgements carry no reason code.
    fn event(event: &Event) -> EventView<'_> {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => EventView::ConnAck {
                session_present: connack.session_present,
                receive_maximum: None,
                subscription_ids: false,
            },
            Event::Incoming(Packet::SubAck(suback)) => EventView::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        SubscribeReasonCode::Success(_) => None,
                        SubscribeReasonCode::Failure => Some("failure"),
                    })
                    .collect(),
            ),
            Event::Incoming(Packet::Publish(_)) => EventView::Publish,
            Event::Incoming(Packet::PingResp) => EventView::PingResp,
            Event::Incoming(Packet::PubAck(ack)) => EventView::Ack(Signal::PubAck(ack.pkid, None)),
            Event::Incoming(Packet::PubRec(rec)) => EventView::Ack(Signal::PubRec(rec.pkid, None)),
            Event::Incoming(Packet::PubComp(comp)) => {
                EventView::Ack(Signal::PubComp(comp.pkid, None))
            }
            Event::Outgoing(outgoing) => EventView::Outgoing(outgoing),
            Event::Incoming(_) => EventView::Other,
        }
    }

    fn incoming_publish(event: &mut Event) -> Option<&mut Publish> {
        match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish),
            _ => None,
        }
    }

    fn into_incoming_publish(event: Event) -> Option<Publish> {
        match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish),
            _ => None,
        }
    }

    /// Records the receive span, stripping an envelope from the payload first (whatever the
    /// local propagation setting); JSON fields are read only when this client uses them.
    fn receive(telemetry: &Telemetry, publish: &mut Publish) -> Delivery {
        let wire_size = publish.payload.len();
        match envelope::decode(&publish.payload) {
            Ok(Some(envelope)) => {
                let delivery = {
                    let view = Self::view(publish);
                    let facts = view
                        .facts()
                        .with_sizes(Some(envelope.payload().len()), None);
                    let carrier = Carrier {
                        extractor: Some(&envelope),
                        envelope_size: Some(wire_size),
                        problem: None,
                    };
                    telemetry.receive(facts, carrier)
                };
                publish.payload = envelope.into_payload();
                delivery
            }
            Ok(None) => {
                let fields = (telemetry.settings.v4_propagation == V4Propagation::JsonFields)
                    .then(|| {
                        JsonFields::parse(&publish.payload, &[TRACEPARENT, TRACESTATE, BAGGAGE])
                            .ok()
                    })
                    .flatten();
                let carrier = Carrier {
                    extractor: fields.as_ref().map(|fields| fields as &dyn Extractor),
                    envelope_size: None,
                    problem: None,
                };
                telemetry.receive(Self::view(publish).facts(), carrier)
            }
            Err(problem) => {
                let carrier = Carrier {
                    extractor: None,
                    envelope_size: None,
                    problem: Some(&problem),
                };
                telemetry.receive(Self::view(publish).facts(), carrier)
            }
        }
    }

    fn request_kind(request: &Request) -> RequestKind {
        match request {
            Request::Publish(_) => RequestKind::Publish,
            Request::PubRel(_) => RequestKind::Release,
            Request::PubAck(_)
            | Request::PubRec(_)
            | Request::PubComp(_)
            | Request::PingReq(_)
            | Request::PingResp(_)
            | Request::SubAck(_)
            | Request::UnsubAck(_) => RequestKind::SessionBound,
            Request::Subscribe(_) | Request::Unsubscribe(_) | Request::Disconnect(_) => {
                RequestKind::Other
            }
        }
    }

    fn publish_of(request: &Request) -> Option<&Publish> {
        match request {
            Request::Publish(publish) => Some(publish),
            _ => None,
        }
    }

    fn into_publish(request: Request) -> Result<Publish, Request> {
        match request {
            Request::Publish(publish) => Ok(publish),
            other => Err(other),
        }
    }

    fn publish_request(publish: Publish) -> Request {
        Request::Publish(publish)
    }

    fn view(publish: &Publish) -> PublishView<'_> {
        PublishView {
            topic: std::borrow::Cow::Borrowed(&publish.topic),
            qos: publish.qos.into(),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            payload: &publish.payload,
            correlation_data: None,
        }
    }

    fn set_packet(publish: &mut Publish, pkid: u16, dup: bool) {
        publish.pkid = pkid;
        publish.dup = dup;
    }

    fn subscription_ids(_publish: &Publish) -> &[usize] {
        &[]
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
            // rumqttc reports a connection reset while it reads a packet as a read error.
            StateError::Deserialization(rumqttc::mqttbytes::Error::Io(io)) => io_error_type(io),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reset that rumqttc meets while reading a packet is a reset, not a malformed packet.
    #[test]
    fn a_reset_while_reading_is_a_connection_reset() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let error = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::Io(reset),
        ));
        assert_eq!(V4::error_type(&error), "connection_reset");
        let malformed = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::MalformedPacket,
        ));
        assert_eq!(V4::error_type(&malformed), "malformed_packet");
    }
}
