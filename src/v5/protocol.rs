//! [`V5`]: MQTT 5 for the generic core: rumqttc's `v5` types, context in user properties, and the
//! names of MQTT 5 reason codes.

use std::collections::VecDeque;

use opentelemetry::Context;
use opentelemetry::propagation::Extractor;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, Packet, PubAckReason, PubCompReason, PubRecReason, Publish,
    PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::v5::{Request, StateError};

use crate::core::{
    Attempt, Carrier, Delivery, EventView, Failure, OpenPublish, Protocol, PublishRequest,
    PublishView, RequestKind, Signal, Telemetry, feature_error_type, io_error_type,
};
use crate::propagation::{UserPropertiesExtractor, UserPropertiesInjector};
use crate::semconv::ConnectionAttributes;

/// MQTT 5, as `rumqttc::v5` implements it.
#[derive(Debug)]
pub(crate) struct V5;

impl Protocol for V5 {
    type Options = MqttOptions;
    type AsyncClient = AsyncClient;
    type EventLoop = EventLoop;
    type Event = Event;
    type Request = Request;
    type Publish = Publish;
    type QoS = QoS;
    type Filter = Filter;
    type Properties = Option<PublishProperties>;
    type ConnectionError = ConnectionError;
    type ClientError = ClientError;

    const SUBSCRIPTION_IDS: bool = true;

    fn new_client(options: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
        AsyncClient::new(options, cap)
    }

    fn connection(options: &MqttOptions) -> ConnectionAttributes {
        ConnectionAttributes::from_v5_options(options)
    }

    fn enable_manual_acks(options: &mut MqttOptions) {
        options.set_manual_acks(true);
    }

    fn manual_acks(options: &MqttOptions) -> bool {
        options.manual_acks()
    }

    /// rumqttc's rule (no `+` or `#` in a topic name), in one pass over the bytes.
    fn valid_topic(topic: &str) -> bool {
        !topic.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// The context goes into the user properties, after the application's own (which are kept,
    /// in order). A publish without properties gets them only when there is something to carry.
    fn carry(
        telemetry: &Telemetry,
        open: &mut OpenPublish,
        parent: &Context,
        request: &mut PublishRequest<Self>,
    ) {
        if request.properties.is_none() && !telemetry.injects(open, parent) {
            return;
        }
        let had_properties = request.properties.is_some();
        let mut properties = request.properties.take().unwrap_or_default();
        telemetry.inject(
            open,
            parent,
            &mut UserPropertiesInjector::new(&mut properties.user_properties),
        );
        // The injector writes user properties only.
        let unchanged = !had_properties && properties.user_properties.is_empty();
        request.properties = (!unchanged).then_some(properties);
    }

    async fn send(client: &AsyncClient, request: PublishRequest<Self>) -> Result<(), ClientError> {
        let PublishRequest {
            topic,
            qos,
            retain,
            payload,
            properties,
        } = request;
        match properties {
            Some(properties) => {
                client
                    .publish_with_properties(topic, qos, retain, payload, properties)
                    .await
            }
            None => client.publish(topic, qos, retain, payload).await,
        }
    }

    fn try_send(client: &AsyncClient, request: PublishRequest<Self>) -> Result<(), ClientError> {
        let PublishRequest {
            topic,
            qos,
            retain,
            payload,
            properties,
        } = request;
        match properties {
            Some(properties) => {
                client.try_publish_with_properties(topic, qos, retain, payload, properties)
            }
            None => client.try_publish(topic, qos, retain, payload),
        }
    }

    fn refused(request: PublishRequest<Self>, attempt: Attempt) -> ClientError {
        let mut publish = Publish::new(
            request.topic,
            request.qos,
            request.payload,
            request.properties,
        );
        publish.retain = request.retain;
        let request = Request::Publish(publish);
        match attempt {
            Attempt::Send => ClientError::Request(request),
            Attempt::TrySend => ClientError::TryRequest(request),
        }
    }

    fn filter_path(filter: &Filter) -> &str {
        &filter.path
    }

    async fn ack(client: &AsyncClient, publish: &Publish) -> Result<(), ClientError> {
        client.ack(publish).await
    }

    fn try_ack(client: &AsyncClient, publish: &Publish) -> Result<(), ClientError> {
        client.try_ack(publish)
    }

    async fn subscribe(
        client: &AsyncClient,
        filters: Vec<(String, QoS)>,
        id: Option<usize>,
    ) -> Result<(), ClientError> {
        let filters = filters
            .into_iter()
            .map(|(filter, qos)| Filter::new(filter, qos));
        match id {
            Some(id) => {
                let properties = SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                };
                client
                    .subscribe_many_with_properties(filters, properties)
                    .await
            }
            None => client.subscribe_many(filters).await,
        }
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

    fn inflight_limit(inner: &EventLoop) -> u16 {
        inner
            .options
            .get_outgoing_inflight_upper_limit()
            .unwrap_or(u16::MAX)
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

    fn event(event: &Event) -> EventView<'_> {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => {
                let properties = connack.properties.as_ref();
                EventView::ConnAck {
                    session_present: connack.session_present,
                    receive_maximum: properties.and_then(|properties| properties.receive_max),
                    // Absent means available (MQTT 5 section 3.2.2.3.12).
                    subscription_ids: properties
                        .and_then(|properties| properties.subscription_identifiers_available)
                        != Some(0),
                }
            }
            Event::Incoming(Packet::SubAck(suback)) => {
                EventView::SubAck(suback.return_codes.iter().map(suback_failure).collect())
            }
            Event::Incoming(Packet::Publish(_)) => EventView::Publish,
            Event::Incoming(Packet::PingResp(_)) => EventView::PingResp,
            Event::Incoming(Packet::PubAck(ack)) => {
                EventView::Ack(Signal::PubAck(ack.pkid, ack_failure(ack.reason)))
            }
            Event::Incoming(Packet::PubRec(rec)) => EventView::Ack(Signal::PubRec(
                rec.pkid,
                ack_failure(pubrec_as_puback(rec.reason)),
            )),
            Event::Incoming(Packet::PubComp(comp)) => {
                EventView::Ack(Signal::PubComp(comp.pkid, pubcomp_failure(comp.reason)))
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

    fn receive(telemetry: &Telemetry, publish: &mut Publish) -> Delivery {
        let extractor = publish
            .properties
            .as_ref()
            .map(|properties| UserPropertiesExtractor::new(&properties.user_properties));
        let carrier = Carrier {
            extractor: extractor.as_ref().map(|e| e as &dyn Extractor),
            envelope_size: None,
            problem: None,
        };
        telemetry.receive(Self::view(publish).facts(), carrier)
    }

    fn request_kind(request: &Request) -> RequestKind {
        match request {
            Request::Publish(_) => RequestKind::Publish,
            Request::PubRel(_) => RequestKind::Release,
            Request::PubAck(_)
            | Request::PubRec(_)
            | Request::PubComp(_)
            | Request::PingReq
            | Request::PingResp
            | Request::SubAck(_)
            | Request::UnsubAck(_) => RequestKind::SessionBound,
            Request::Subscribe(_) | Request::Unsubscribe(_) | Request::Disconnect => {
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
            topic: String::from_utf8_lossy(&publish.topic),
            qos: publish.qos.into(),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            payload: &publish.payload,
        }
    }

    fn set_packet(publish: &mut Publish, pkid: u16, dup: bool) {
        publish.pkid = pkid;
        publish.dup = dup;
    }

    fn subscription_ids(publish: &Publish) -> &[usize] {
        publish
            .properties
            .as_ref()
            .map_or(&[], |properties| &properties.subscription_identifiers)
    }
}

/// PUBREC reasons are PUBACK's (MQTT 5 sections 3.4.2.1 and 3.5.2.1 list the same codes).
fn pubrec_as_puback(reason: PubRecReason) -> PubAckReason {
    match reason {
        PubRecReason::Success => PubAckReason::Success,
        PubRecReason::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
        PubRecReason::UnspecifiedError => PubAckReason::UnspecifiedError,
        PubRecReason::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
        PubRecReason::NotAuthorized => PubAckReason::NotAuthorized,
        PubRecReason::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        PubRecReason::PacketIdentifierInUse => PubAckReason::PacketIdentifierInUse,
        PubRecReason::QuotaExceeded => PubAckReason::QuotaExceeded,
        PubRecReason::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    }
}

/// The `error.type` of a PUBACK (or PUBREC) reason, `None` for the two success codes (0x10
/// "no matching subscribers" is one).
fn ack_failure(reason: PubAckReason) -> Option<Failure> {
    let name = match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return None,
        PubAckReason::UnspecifiedError => "unspecified_error",
        PubAckReason::ImplementationSpecificError => "implementation_specific_error",
        PubAckReason::NotAuthorized => "not_authorized",
        PubAckReason::TopicNameInvalid => "topic_name_invalid",
        PubAckReason::PacketIdentifierInUse => "packet_identifier_in_use",
        PubAckReason::QuotaExceeded => "quota_exceeded",
        PubAckReason::PayloadFormatInvalid => "payload_format_invalid",
    };
    Some(Failure::Reason(name))
}

/// The `error.type` of a PUBCOMP reason.
fn pubcomp_failure(reason: PubCompReason) -> Option<Failure> {
    match reason {
        PubCompReason::Success => None,
        PubCompReason::PacketIdentifierNotFound => {
            Some(Failure::Reason("packet_identifier_not_found"))
        }
    }
}

/// The `error.type`-style name of a refused MQTT 5 subscription, `None` when granted.
fn suback_failure(code: &SubscribeReasonCode) -> Option<&'static str> {
    Some(match code {
        SubscribeReasonCode::Success(_) => return None,
        SubscribeReasonCode::Failure => "failure",
        SubscribeReasonCode::Unspecified => "unspecified_error",
        SubscribeReasonCode::ImplementationSpecific => "implementation_specific_error",
        SubscribeReasonCode::NotAuthorized => "not_authorized",
        SubscribeReasonCode::TopicFilterInvalid => "topic_filter_invalid",
        SubscribeReasonCode::PkidInUse => "packet_identifier_in_use",
        SubscribeReasonCode::QuotaExceeded => "quota_exceeded",
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            "shared_subscriptions_not_supported"
        }
        SubscribeReasonCode::SubscriptionIdNotSupported => "subscription_identifiers_not_supported",
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            "wildcard_subscriptions_not_supported"
        }
    })
}

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
            // rumqttc reports a connection reset while it reads a packet as a read error.
            StateError::Deserialization(rumqttc::v5::mqttbytes::Error::Io(io)) => io_error_type(io),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reset that rumqttc meets while reading a packet is a reset, not a malformed packet.
    #[test]
    fn a_reset_while_reading_is_a_connection_reset() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let error = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::Io(reset),
        ));
        assert_eq!(V5::error_type(&error), "connection_reset");
        let malformed = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::MalformedPacket,
        ));
        assert_eq!(V5::error_type(&malformed), "malformed_packet");
    }
}
