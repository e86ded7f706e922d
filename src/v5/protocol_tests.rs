//! Unit tests of [`V5`](super::protocol::V5): incoming and outgoing topic aliases, reply links,
//! the broker's Topic Alias Maximum, refused publishes and connection error types.

use bytes::Bytes;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish, PublishProperties};
use rumqttc::v5::{ConnectionError, Event, EventLoop, MqttOptions, Request, StateError};

use super::protocol::V5;
use crate::core::{Protocol, PublishRequest, Refusal, Telemetry, TopicAliases, recording};
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

/// MQTT 5 section 1.5.4: a topic name must be UTF-8; a broker may still forward bad bytes, and
/// the view then repairs them rather than refusing the message. A valid name is borrowed.
#[test]
fn the_view_borrows_a_valid_topic_and_repairs_an_invalid_one() {
    let valid = Publish::new("sensors/é/data", QoS::AtMostOnce, "x", None);
    let view = V5::view(&valid);
    assert!(matches!(
        view.topic,
        std::borrow::Cow::Borrowed("sensors/é/data")
    ));

    let mut invalid = Publish::new("", QoS::AtMostOnce, "x", None);
    invalid.topic = Bytes::from_static(b"sensors/\xff/data");
    let view = V5::view(&invalid);
    assert_eq!(view.topic, "sensors/\u{fffd}/data");
}
