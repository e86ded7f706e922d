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
    Address, Attempt, Carrier, Delivery, EventView, Failure, OpenPublish, Outbound, Protocol,
    PublishRequest, PublishView, Reception, Refusal, RequestKind, Signal, Telemetry,
    feature_error_type, io_error_type,
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

    fn incoming_alias_maximum(options: &MqttOptions) -> u16 {
        options.topic_alias_max().unwrap_or(0)
    }

    /// rumqttc's rule (no `+` or `#` in a topic name), in one pass over the bytes.
    fn valid_topic(topic: &str) -> bool {
        !topic.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Without a Topic Alias only an empty topic name is refused (a protocol error, section
    /// 3.3.2.1), and nothing is locked. With one, see `TopicAliases::send`.
    fn address(
        telemetry: &Telemetry,
        request: &mut PublishRequest<Self>,
    ) -> Result<Address, Refusal> {
        let Some(alias) = request
            .properties
            .as_ref()
            .and_then(|properties| properties.topic_alias)
        else {
            return match request.topic.is_empty() {
                true => Err(Refusal::EmptyTopic),
                false => Ok(Address::default()),
            };
        };
        let mut address = Address::default();
        match telemetry.aliases.send(&request.topic, alias)? {
            Outbound::Named => address.sets = Some(alias),
            Outbound::Aliased(topic) => address.aliased = Some(topic),
            Outbound::Renamed(topic) => {
                // Topic and alias: the mapping is set again on this connection.
                request.topic = topic.to_string();
                address.sets = Some(alias);
            }
        }
        Ok(address)
    }

    fn request_correlation_data(request: &PublishRequest<Self>) -> Option<&[u8]> {
        request.properties.as_ref()?.correlation_data.as_deref()
    }

    /// The context goes into the user properties, after the application's own (which are kept,
    /// in order). A publish without properties gets them only when there is something to carry.
    /// A request (a Response Topic and Correlation Data, section 4.10) is remembered, so that
    /// the receive spans of its replies link to its span.
    fn carry(
        telemetry: &Telemetry,
        open: &mut OpenPublish,
        parent: &Context,
        request: &mut PublishRequest<Self>,
    ) {
        if let Some(properties) = &request.properties
            && let (Some(response_topic), Some(correlation)) =
                (&properties.response_topic, &properties.correlation_data)
            && let Some(publish) = open.recording_context()
        {
            telemetry
                .conversations
                .request(response_topic, correlation, publish);
        }
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

    /// rumqttc replays what it queued with the topic name and alias it had: an alias alone
    /// would be unknown on the new connection [MQTT-3.3.2-7], a protocol error that closes it
    /// again, on every reconnect. The parked collision counts as the oldest.
    fn connection_lost(telemetry: &Telemetry, inner: &mut EventLoop) {
        let pending = inner
            .pending
            .iter_mut()
            .filter_map(|request| match request {
                Request::Publish(publish) => Some(publish),
                _ => None,
            });
        let queued = inner
            .state
            .collision
            .iter_mut()
            .chain(pending)
            .filter_map(|publish| {
                let alias = publish.properties.as_ref()?.topic_alias?;
                Some((alias, &mut publish.topic))
            });
        telemetry.aliases.rebase(queued);
    }

    fn topic_alias_maximum(event: &Event) -> Option<u16> {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => Some(
                connack
                    .properties
                    .as_ref()
                    .and_then(|properties| properties.topic_alias_max)
                    .unwrap_or(0),
            ),
            _ => None,
        }
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

    /// An empty topic name with a Topic Alias gets the topic the alias stands for, in the
    /// PUBLISH handed to the application as well (rumqttc 0.25.1 resolves it only in a copy).
    /// A reply to one of this client's requests links to the request's publish span.
    fn receive(telemetry: &Telemetry, publish: &mut Publish) -> Delivery {
        let mut reception = Reception::default();
        if let Some(alias) = publish
            .properties
            .as_ref()
            .and_then(|properties| properties.topic_alias)
            && let Err(unresolved) = telemetry.aliases.receive(&mut publish.topic, alias)
        {
            reception.alias = Some((alias, unresolved));
        }
        let view = Self::view(publish);
        if let Some(correlation) = view.correlation_data {
            reception.request = telemetry.conversations.reply(&view.topic, correlation);
        }
        let extractor = publish
            .properties
            .as_ref()
            .map(|properties| UserPropertiesExtractor::new(&properties.user_properties));
        let carrier = Carrier {
            extractor: extractor.as_ref().map(|e| e as &dyn Extractor),
            envelope_size: None,
            problem: None,
        };
        telemetry.receive_with(view.facts(), carrier, reception)
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
            correlation_data: publish
                .properties
                .as_ref()
                .and_then(|properties| properties.correlation_data.as_deref()),
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
    use bytes::Bytes;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

    use crate::core::{TopicAliases, recording};
    use crate::semconv::{MESSAGING_DESTINATION_NAME, MESSAGING_MESSAGE_CONVERSATION_ID, MqttQoS};

    struct Setup {
        telemetry: Telemetry,
        exporter: InMemorySpanExporter,
        _provider: SdkTracerProvider,
    }

    /// The telemetry of a client whose CONNECT announces a Topic Alias Maximum of 10.
    fn setup() -> Setup {
        let (instrumentation, exporter, provider) = recording();
        let mut options = MqttOptions::new("v5-unit", "127.0.0.1", 1883);
        options.set_topic_alias_max(Some(10));
        let mut telemetry = Telemetry::new(&instrumentation, V5::connection(&options));
        telemetry.aliases = TopicAliases::new(V5::incoming_alias_maximum(&options));
        Setup {
            telemetry,
            exporter,
            _provider: provider,
        }
    }

    fn incoming(topic: &str, properties: PublishProperties) -> Publish {
        Publish::new(topic, QoS::AtMostOnce, "x", Some(properties))
    }

    fn aliased(topic: &str, alias: u16) -> Publish {
        incoming(
            topic,
            PublishProperties {
                topic_alias: Some(alias),
                ..PublishProperties::default()
            },
        )
    }

    fn last_span(exporter: &InMemorySpanExporter) -> SpanData {
        let spans = exporter.get_finished_spans().unwrap_or_default();
        spans.last().cloned().expect("a span")
    }

    fn string(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    /// Section 3.3.2.3.4 on the receiving side: the broker sets alias 3 with a topic name and
    /// then sends the alias alone. The application, the span and its attributes see the topic.
    #[test]
    fn an_incoming_alias_names_the_topic_in_the_publish_and_the_span() {
        let Setup {
            telemetry,
            exporter,
            _provider,
        } = setup();
        let mut first = aliased("plant/line-1/speed", 3);
        V5::receive(&telemetry, &mut first);
        let mut next = aliased("", 3);
        V5::receive(&telemetry, &mut next);
        assert_eq!(next.topic, Bytes::from_static(b"plant/line-1/speed"));
        assert_eq!(
            next.properties.as_ref().and_then(|p| p.topic_alias),
            Some(3),
            "the alias stays"
        );
        let span = last_span(&exporter);
        assert_eq!(span.name, "receive plant/line-1/speed");
        assert_eq!(
            string(&span, MESSAGING_DESTINATION_NAME).as_deref(),
            Some("plant/line-1/speed")
        );
        assert!(span.events.is_empty());
    }

    fn rejected(span: &SpanData) -> Vec<(String, i64)> {
        span.events
            .iter()
            .filter(|event| event.name == "mqtt.topic_alias.rejected")
            .map(|event| {
                let reason = event
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "reason")
                    .map(|kv| kv.value.as_str().into_owned())
                    .unwrap_or_default();
                let alias = event
                    .attributes
                    .iter()
                    .find_map(|kv| match (kv.key.as_str(), &kv.value) {
                        ("mqtt.topic_alias", opentelemetry::Value::I64(n)) => Some(*n),
                        _ => None,
                    })
                    .unwrap_or_default();
                (reason, alias)
            })
            .collect()
    }

    /// [MQTT-3.3.2-7]: no mapping survives into a new network connection. An alias the broker
    /// did not set, 0 [MQTT-3.3.2-8], or above the client's maximum [MQTT-3.1.2-26] names no
    /// topic: the span has no destination and says why; nothing panics.
    #[test]
    fn an_incoming_alias_that_names_no_topic_is_recorded_as_such() {
        let Setup {
            telemetry,
            exporter,
            _provider,
        } = setup();
        let mut set = aliased("plant/line-1/speed", 3);
        V5::receive(&telemetry, &mut set);
        telemetry.aliases.new_incoming_connection();
        for (alias, reason) in [
            (3, "unknown"),
            (0, "zero"),
            (11, "above_maximum"),
            (u16::MAX, "above_maximum"),
        ] {
            let mut publish = aliased("", alias);
            V5::receive(&telemetry, &mut publish);
            assert!(publish.topic.is_empty());
            let span = last_span(&exporter);
            assert_eq!(span.name, "receive", "alias {alias}");
            assert_eq!(
                string(&span, MESSAGING_DESTINATION_NAME).as_deref(),
                Some("")
            );
            assert_eq!(rejected(&span), [(reason.to_owned(), i64::from(alias))]);
        }
        // A topic name with an alias out of range is delivered as it is; the alias is not kept.
        let mut named = aliased("a/b", 0);
        V5::receive(&telemetry, &mut named);
        assert_eq!(last_span(&exporter).name, "receive a/b");
        assert_eq!(rejected(&last_span(&exporter)), [("zero".to_owned(), 0)]);
    }

    /// A request (Response Topic and Correlation Data, section 4.10) carried by `V5::carry`:
    /// the receive span of each reply on the response topic with the same Correlation Data
    /// links to the request's publish span; the conversation id is on both.
    #[test]
    fn a_reply_links_to_its_request() {
        let Setup {
            telemetry,
            exporter,
            _provider,
        } = setup();
        let correlation = Bytes::from_static(&[0x01, 0xfe]);
        let mut request = PublishRequest::<V5>::new(
            "services/clock/get".to_owned(),
            QoS::AtLeastOnce,
            false,
            Bytes::from_static(b"now?"),
        );
        request.properties = Some(PublishProperties {
            response_topic: Some("replies/v5-unit".to_owned()),
            correlation_data: Some(correlation.clone()),
            ..PublishProperties::default()
        });
        let (mut open, parent) = telemetry.start_publish(
            &request.topic,
            V5::request_correlation_data(&request),
            MqttQoS::AtLeastOnce,
            false,
            4,
        );
        V5::carry(&telemetry, &mut open, &parent, &mut request);
        // Dropped, the open span ends and is exported.
        drop(open);
        let publish = last_span(&exporter);
        assert_eq!(
            string(&publish, MESSAGING_MESSAGE_CONVERSATION_ID).as_deref(),
            Some("01fe")
        );
        let reply = |topic: &str, correlation_data: Option<Bytes>| {
            let mut reply = incoming(
                topic,
                PublishProperties {
                    correlation_data,
                    ..PublishProperties::default()
                },
            );
            V5::receive(&telemetry, &mut reply);
            last_span(&exporter)
        };
        for _ in 0..2 {
            let receive = reply("replies/v5-unit", Some(correlation.clone()));
            assert_eq!(
                string(&receive, MESSAGING_MESSAGE_CONVERSATION_ID).as_deref(),
                Some("01fe")
            );
            let links: Vec<_> = receive
                .links
                .iter()
                .map(|link| link.span_context.span_id())
                .collect();
            assert_eq!(links, [publish.span_context.span_id()]);
        }
        // Another topic, other data, or no data: no link.
        for (topic, data) in [
            ("replies/other", Some(correlation.clone())),
            ("replies/v5-unit", Some(Bytes::from_static(b"x"))),
            ("replies/v5-unit", None),
        ] {
            assert!(reply(topic, data).links.is_empty(), "{topic}");
        }
    }

    /// After a lost connection rumqttc replays its `pending` queue and the parked collision
    /// with the topic names they had; an alias alone would be unknown on the new connection
    /// [MQTT-3.3.2-7], so those get their topic back.
    #[test]
    fn queued_publishes_with_an_alias_alone_get_their_topic_back() {
        let Setup { telemetry, .. } = setup();
        let publish_with = |topic: &str, alias: Option<u16>| {
            Publish::new(
                topic,
                QoS::AtLeastOnce,
                "x",
                Some(PublishProperties {
                    topic_alias: alias,
                    ..PublishProperties::default()
                }),
            )
        };
        let mut set = PublishRequest::<V5>::new("a/1".into(), QoS::AtLeastOnce, false, "x".into());
        set.properties = Some(PublishProperties {
            topic_alias: Some(1),
            ..PublishProperties::default()
        });
        assert!(V5::address(&telemetry, &mut set).is_ok());
        let mut inner = EventLoop::new(MqttOptions::new("v5-unit", "127.0.0.1", 1883), 10);
        inner.state.collision = Some(publish_with("", Some(1)));
        inner.pending.extend([
            Request::Publish(publish_with("", Some(1))),
            Request::PingReq,
            Request::Publish(publish_with("", None)),
            Request::Publish(publish_with("", Some(2))),
        ]);
        V5::connection_lost(&telemetry, &mut inner);
        let topics: Vec<_> = inner
            .pending
            .iter()
            .filter_map(|request| match request {
                Request::Publish(publish) => Some(publish.topic.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            topics,
            [
                Bytes::from_static(b"a/1"),
                Bytes::new(),
                // Alias 2 was never set: left for the broker to refuse.
                Bytes::new(),
            ]
        );
        assert_eq!(
            inner.state.collision.map(|publish| publish.topic),
            Some(Bytes::from_static(b"a/1"))
        );
    }

    /// The broker's Topic Alias Maximum is read from its CONNACK; absent is 0 (section
    /// 3.2.2.3.8).
    #[test]
    fn the_brokers_topic_alias_maximum_comes_from_the_connack() {
        use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties};
        let connack = |properties: Option<ConnAckProperties>| {
            Event::Incoming(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
                properties,
            }))
        };
        // rumqttc gives the properties no constructor and no `Default`.
        let with_maximum = ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: Some(10),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        assert_eq!(
            V5::topic_alias_maximum(&connack(Some(with_maximum))),
            Some(10)
        );
        assert_eq!(V5::topic_alias_maximum(&connack(None)), Some(0));
        assert_eq!(
            V5::topic_alias_maximum(&Event::Incoming(Packet::PingResp(
                rumqttc::v5::mqttbytes::v5::PingResp
            ))),
            None
        );
    }

    /// Refused before the queue: an empty topic name without an alias (section 3.3.2.1), alias
    /// 0 [MQTT-3.3.2-8], above the broker's maximum [MQTT-3.3.2-9], an alias never set.
    #[test]
    fn publishes_the_broker_would_take_for_protocol_errors_are_refused() {
        let Setup { telemetry, .. } = setup();
        telemetry.aliases.connected(10);
        let request = |topic: &str, alias: Option<u16>| {
            let mut request =
                PublishRequest::<V5>::new(topic.into(), QoS::AtMostOnce, false, "x".into());
            request.properties = alias.map(|alias| PublishProperties {
                topic_alias: Some(alias),
                ..PublishProperties::default()
            });
            V5::address(&telemetry, &mut request).map(|address| address.aliased)
        };
        assert_eq!(request("", None), Err(Refusal::EmptyTopic));
        assert_eq!(request("t", Some(0)), Err(Refusal::AliasZero));
        assert_eq!(
            request("t", Some(11)),
            Err(Refusal::AliasAboveMaximum {
                alias: 11,
                maximum: 10
            })
        );
        assert_eq!(request("", Some(4)), Err(Refusal::UnknownAlias(4)));
        assert_eq!(request("t", None), Ok(None));
        assert_eq!(request("t", Some(4)), Ok(None));
        assert_eq!(request("", Some(4)), Ok(Some("t".into())));
    }

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
