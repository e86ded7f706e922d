//! [`V5`]: MQTT 5 for the generic core: rumqttc's `v5` types, context in user properties, topic
//! aliases and request/response (the reason-code names are in `reasons`).

use std::collections::VecDeque;

use opentelemetry::Context;
use opentelemetry::propagation::Extractor;
use rumqttc::v5::Request;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, SubscribeProperties};
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions};

use super::reasons::{ack_failure, error_type, pubcomp_failure, pubrec_as_puback, suback_failure};
use crate::core::{
    Address, Attempt, Carrier, Delivery, EventView, OpenPublish, Outbound, Protocol,
    PublishRequest, PublishView, Reception, Refusal, RequestKind, Signal, Telemetry,
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

    fn manual_acks(options: &MqttOptions) -> bool {
        options.manual_acks()
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
            // `from_utf8` checks ASCII a word at a time; the lossy repair runs only on bad input.
            topic: match std::str::from_utf8(&publish.topic) {
                Ok(topic) => topic.into(),
                Err(_) => String::from_utf8_lossy(&publish.topic),
            },
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
