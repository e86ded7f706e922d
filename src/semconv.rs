//! OpenTelemetry semantic-convention names for MQTT, and builders that turn the facts of one
//! publish, receive or process operation into attributes.
//!
//! The names follow the OpenTelemetry messaging semantic conventions v1.42 to v1.44 (the
//! `opentelemetry-semantic-conventions` crate 0.33 with `semconv_experimental`; a unit test checks
//! that every constant here equals the upstream one). MQTT is not one of the systems that semconv
//! lists, so `messaging.system` carries the custom value [`MESSAGING_SYSTEM_VALUE`] (`mqtt`), and the
//! MQTT-specific facts live under `messaging.mqtt.*`, following the pattern semconv uses for other
//! systems (`messaging.kafka.*`, `messaging.rabbitmq.*`).
//!
//! # Names that older instrumentations use
//!
//! The original design note of this crate, and several MQTT instrumentations in other languages,
//! still emit attribute names that semconv has deprecated or removed. This crate emits only the
//! current names:
//!
//! | old name | current name here |
//! |---|---|
//! | `messaging.operation` | [`MESSAGING_OPERATION_TYPE`] (`messaging.operation.type`), plus [`MESSAGING_OPERATION_NAME`] |
//! | `net.peer.name` | [`SERVER_ADDRESS`] (`server.address`) |
//! | `net.peer.port` | [`SERVER_PORT`] (`server.port`) |
//! | `messaging.mqtt.client_id` | [`MESSAGING_CLIENT_ID`] (`messaging.client.id`) |
//! | `net.transport` | dropped: MQTT runs over TCP (or WebSocket over TCP), so it carried no information |
//! | `messaging.destination` (old `.kind` and `.name` forms) | [`MESSAGING_DESTINATION_NAME`] |
//!
//! # What never becomes an attribute
//!
//! Payload bytes, user names, passwords, and the user-info part of a broker URL. [`ServerAddress`]
//! strips the scheme, the user-info and the path from a WebSocket broker URL before it is recorded.
//!
//! # Example
//!
//! ```
//! use rumqttc_opentelemetry::semconv::{
//!     ConnectionAttributes, MessageFacts, MqttQoS, Operation, ProtocolVersion, MESSAGING_MQTT_QOS,
//! };
//!
//! let connection = ConnectionAttributes::new("sensor-1", "broker.local", 1883, ProtocolVersion::V5);
//! let facts = MessageFacts::new("home/kitchen/temperature", MqttQoS::AtLeastOnce)
//!     .with_template(Some("home/+/temperature"))
//!     .with_packet_id(Some(7));
//! let attributes = connection.span_attributes(Operation::Publish, &facts);
//! assert!(attributes
//!     .iter()
//!     .any(|kv| kv.key.as_str() == MESSAGING_MQTT_QOS && kv.value == 1_i64.into()));
//! ```

use std::sync::Arc;

use opentelemetry::trace::SpanKind;
use opentelemetry::{KeyValue, StringValue, Value};

/// `messaging.system`: the messaging system; always [`MESSAGING_SYSTEM_VALUE`] here.
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system` for MQTT: `mqtt` (semconv lists no value for MQTT).
pub const MESSAGING_SYSTEM_VALUE: &str = "mqtt";
/// `messaging.operation.name`: `publish`, `receive` or `process` (see [`Operation::name`]).
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.operation.type`: `send`, `receive` or `process` (see [`Operation::operation_type`]).
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.destination.name`: the topic name the message was published to.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.destination.template`: the low-cardinality form of the destination: the
/// subscription filter that matched, or a publisher template the user configured.
pub const MESSAGING_DESTINATION_TEMPLATE: &str = "messaging.destination.template";
/// `messaging.client.id`: the MQTT client identifier of the connection.
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
/// `messaging.consumer.group.name`: the `{group}` of a shared subscription
/// `$share/{group}/{filter}`.
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.message.body.size` (opt-in): payload size in bytes, as the application sees it.
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
/// `messaging.message.envelope.size` (opt-in): payload size in bytes on the wire, including an
/// MQTT 3.1.1 propagation envelope when there is one.
pub const MESSAGING_MESSAGE_ENVELOPE_SIZE: &str = "messaging.message.envelope.size";
/// `server.address`: the broker host name or IP address (never with user-info).
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`: the broker port.
pub const SERVER_PORT: &str = "server.port";
/// `network.protocol.name`: always [`NETWORK_PROTOCOL_NAME_VALUE`].
pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
/// The value of `network.protocol.name`: `mqtt`.
pub const NETWORK_PROTOCOL_NAME_VALUE: &str = "mqtt";
/// `network.protocol.version`: `3.1.1` or `5` (see [`ProtocolVersion`]).
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
/// `error.type`: why an operation failed; the same value on the span and on the metric.
pub const ERROR_TYPE: &str = "error.type";
/// `messaging.mqtt.qos` (MQTT-specific): the QoS of the PUBLISH packet, 0, 1 or 2.
pub const MESSAGING_MQTT_QOS: &str = "messaging.mqtt.qos";
/// `messaging.mqtt.retained` (MQTT-specific): the RETAIN flag of the PUBLISH packet.
pub const MESSAGING_MQTT_RETAINED: &str = "messaging.mqtt.retained";
/// `messaging.mqtt.duplicate` (MQTT-specific): the DUP flag of the PUBLISH packet.
pub const MESSAGING_MQTT_DUPLICATE: &str = "messaging.mqtt.duplicate";
/// `messaging.mqtt.packet_id` (MQTT-specific): the packet identifier of a QoS 1 or 2 PUBLISH.
pub const MESSAGING_MQTT_PACKET_ID: &str = "messaging.mqtt.packet_id";

/// Metric names and the histogram bucket boundaries that semconv recommends for them.
pub mod metric {
    /// `messaging.client.operation.duration` (histogram, `s`): a publish until it is acknowledged.
    pub const MESSAGING_CLIENT_OPERATION_DURATION: &str = "messaging.client.operation.duration";
    /// `messaging.client.sent.messages` (counter, `{message}`): messages written to the network.
    pub const MESSAGING_CLIENT_SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// `messaging.client.consumed.messages` (counter, `{message}`): messages delivered.
    pub const MESSAGING_CLIENT_CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
    /// `messaging.process.duration` (histogram, `s`): time a handler spent on one message.
    pub const MESSAGING_PROCESS_DURATION: &str = "messaging.process.duration";
    /// The explicit bucket boundaries (seconds) semconv gives for the messaging duration
    /// histograms.
    pub const DURATION_BUCKETS: [f64; 14] = [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
}

/// MQTT quality of service, independent of the protocol version.
///
/// Converts from and into both `rumqttc::QoS` (MQTT 3.1.1) and
/// `rumqttc::v5::mqttbytes::QoS` (MQTT 5).
///
/// ```
/// use rumqttc_opentelemetry::semconv::MqttQoS;
///
/// let qos: MqttQoS = rumqttc::QoS::ExactlyOnce.into();
/// assert_eq!(qos.as_u8(), 2);
/// let v5: rumqttc::v5::mqttbytes::QoS = qos.into();
/// assert_eq!(v5, rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MqttQoS {
    /// QoS 0: fire and forget.
    AtMostOnce = 0,
    /// QoS 1: acknowledged by PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: acknowledged by PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl MqttQoS {
    /// The numeric QoS level, 0, 1 or 2.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The QoS for a numeric level, `None` for anything but 0, 1 and 2.
    pub const fn from_u8(level: u8) -> Option<Self> {
        match level {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

macro_rules! qos_conversions {
    ($other:ty) => {
        impl From<$other> for MqttQoS {
            fn from(qos: $other) -> Self {
                match qos {
                    <$other>::AtMostOnce => Self::AtMostOnce,
                    <$other>::AtLeastOnce => Self::AtLeastOnce,
                    <$other>::ExactlyOnce => Self::ExactlyOnce,
                }
            }
        }

        impl From<MqttQoS> for $other {
            fn from(qos: MqttQoS) -> Self {
                match qos {
                    MqttQoS::AtMostOnce => <$other>::AtMostOnce,
                    MqttQoS::AtLeastOnce => <$other>::AtLeastOnce,
                    MqttQoS::ExactlyOnce => <$other>::ExactlyOnce,
                }
            }
        }
    };
}

qos_conversions!(rumqttc::QoS);
qos_conversions!(rumqttc::v5::mqttbytes::QoS);

/// The MQTT protocol version of a connection, as `network.protocol.version` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4, `rumqttc::AsyncClient`, this crate's [`crate::v4`]),
    /// recorded as `3.1.1`.
    V4,
    /// MQTT 5 (`rumqttc::v5::AsyncClient`), recorded as `5`.
    V5,
}

impl ProtocolVersion {
    /// The value of `network.protocol.version`: `"3.1.1"` or `"5"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "3.1.1",
            Self::V5 => "5",
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three messaging operations this crate records, with their semconv names, types and span
/// kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A PUBLISH sent by the application: span kind PRODUCER, type `send`, name `publish`.
    Publish,
    /// A PUBLISH handed to the application by the event loop: span kind CLIENT, type `receive`,
    /// name `receive`.
    Receive,
    /// A handler run on one message: span kind CONSUMER, type `process`, name `process`.
    Process,
}

impl Operation {
    /// `messaging.operation.name`, also the first word of the span name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Receive => "receive",
            Self::Process => "process",
        }
    }

    /// `messaging.operation.type`.
    pub const fn operation_type(self) -> &'static str {
        match self {
            Self::Publish => "send",
            Self::Receive => "receive",
            Self::Process => "process",
        }
    }

    /// The span kind semconv assigns to the operation.
    pub fn span_kind(self) -> SpanKind {
        match self {
            Self::Publish => SpanKind::Producer,
            Self::Receive => SpanKind::Client,
            Self::Process => SpanKind::Consumer,
        }
    }

    /// The span name, `{operation name} {destination}`, where the destination is the template
    /// when one is known and the topic otherwise.
    pub fn span_name(self, destination: &str) -> String {
        let name = self.name();
        let mut span_name = String::with_capacity(name.len() + 1 + destination.len());
        span_name.push_str(name);
        span_name.push(' ');
        span_name.push_str(destination);
        span_name
    }
}

/// The broker host and port as `server.address` and `server.port` record them.
///
/// rumqttc keeps a WebSocket broker as a URL in its host field (`ws://user:pass@host:port/mqtt`);
/// [`ServerAddress::new`] reduces such a URL to its host (and its port, when the URL carries one), so
/// that neither credentials nor paths reach telemetry.
///
/// ```
/// use rumqttc_opentelemetry::semconv::ServerAddress;
///
/// let address = ServerAddress::new("wss://user:secret@broker.example:8884/mqtt", 1883);
/// assert_eq!(address.host(), "broker.example");
/// assert_eq!(address.port(), 8884);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    host: Arc<str>,
    port: u16,
}

impl ServerAddress {
    /// A server address from rumqttc's `(host, port)` pair (see `MqttOptions::broker_address`).
    pub fn new(host: &str, port: u16) -> Self {
        let (host, url_port) = strip_url(host);
        Self {
            host: Arc::from(host),
            port: url_port.unwrap_or(port),
        }
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Reduces `scheme://user-info@host:port/path` to `host` and the port, if any. A plain host name
/// (`broker.local`, `10.0.0.1`, `::1`) comes back unchanged.
fn strip_url(host: &str) -> (&str, Option<u16>) {
    let Some((_, rest)) = host.split_once("://") else {
        return (host, None);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, after)| after);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        let (address, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (address, port);
    }
    match host_port.rsplit_once(':') {
        Some((name, port)) => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (host_port, None),
        },
        None => (host_port, None),
    }
}

/// The facts of one connection that every span and metric of it carries, prepared once so that
/// each message only clones reference-counted strings.
#[derive(Debug, Clone)]
pub struct ConnectionAttributes {
    client_id: StringValue,
    server: ServerAddress,
    protocol: ProtocolVersion,
}

impl ConnectionAttributes {
    /// Attributes for a connection of `client_id` to `host:port` speaking `protocol`.
    pub fn new(
        client_id: impl Into<Arc<str>>,
        host: &str,
        port: u16,
        protocol: ProtocolVersion,
    ) -> Self {
        Self {
            client_id: StringValue::from(client_id.into()),
            server: ServerAddress::new(host, port),
            protocol,
        }
    }

    /// The connection attributes of an MQTT 3.1.1 client configured by `options`.
    pub fn from_v4_options(options: &rumqttc::MqttOptions) -> Self {
        let (host, port) = options.broker_address();
        Self::new(options.client_id(), &host, port, ProtocolVersion::V4)
    }

    /// The connection attributes of an MQTT 5 client configured by `options`.
    pub fn from_v5_options(options: &rumqttc::v5::MqttOptions) -> Self {
        let (host, port) = options.broker_address();
        Self::new(options.client_id(), &host, port, ProtocolVersion::V5)
    }

    /// The client identifier.
    pub fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    /// The broker address.
    pub fn server(&self) -> &ServerAddress {
        &self.server
    }

    /// The protocol version.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// Every attribute semconv asks for on the span of `operation` on the message `facts`:
    /// the connection's facts, the operation, the destination and the MQTT-specific flags.
    ///
    /// `messaging.mqtt.packet_id` appears only when the facts carry one (QoS 1 and 2), the
    /// destination template and consumer group only when known, the opt-in sizes only when the
    /// facts carry them.
    pub fn span_attributes(&self, operation: Operation, facts: &MessageFacts<'_>) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(15);
        self.push_common(&mut attributes, operation, facts);
        attributes.push(KeyValue::new(
            MESSAGING_DESTINATION_NAME,
            facts.topic.to_owned(),
        ));
        attributes.push(KeyValue::new(
            MESSAGING_CLIENT_ID,
            Value::String(self.client_id.clone()),
        ));
        attributes.push(KeyValue::new(
            NETWORK_PROTOCOL_NAME,
            NETWORK_PROTOCOL_NAME_VALUE,
        ));
        attributes.push(KeyValue::new(
            NETWORK_PROTOCOL_VERSION,
            self.protocol.as_str(),
        ));
        attributes.push(KeyValue::new(MESSAGING_MQTT_RETAINED, facts.retained));
        attributes.push(KeyValue::new(MESSAGING_MQTT_DUPLICATE, facts.duplicate));
        if let Some(packet_id) = facts.packet_id {
            attributes.push(KeyValue::new(
                MESSAGING_MQTT_PACKET_ID,
                i64::from(packet_id),
            ));
        }
        if let Some(size) = facts.body_size {
            attributes.push(KeyValue::new(MESSAGING_MESSAGE_BODY_SIZE, size as i64));
        }
        if let Some(size) = facts.envelope_size {
            attributes.push(KeyValue::new(MESSAGING_MESSAGE_ENVELOPE_SIZE, size as i64));
        }
        attributes
    }

    /// The attributes of a metric point for `operation` on the message `facts`: low-cardinality
    /// facts only. The topic (`messaging.destination.name`) is added only when `include_topic` is
    /// set, because per-device topics would give every device its own time series; the client id
    /// is left to the connection-health metrics, where it is opt-in.
    pub fn metric_attributes(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
        include_topic: bool,
    ) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(9);
        self.push_common(&mut attributes, operation, facts);
        if include_topic {
            attributes.push(KeyValue::new(
                MESSAGING_DESTINATION_NAME,
                facts.topic.to_owned(),
            ));
        }
        attributes
    }

    fn push_common(
        &self,
        attributes: &mut Vec<KeyValue>,
        operation: Operation,
        facts: &MessageFacts<'_>,
    ) {
        attributes.push(KeyValue::new(MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE));
        attributes.push(KeyValue::new(MESSAGING_OPERATION_NAME, operation.name()));
        attributes.push(KeyValue::new(
            MESSAGING_OPERATION_TYPE,
            operation.operation_type(),
        ));
        if let Some(template) = facts.template {
            attributes.push(KeyValue::new(
                MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            ));
        }
        if let Some(group) = facts.consumer_group {
            attributes.push(KeyValue::new(
                MESSAGING_CONSUMER_GROUP_NAME,
                group.to_owned(),
            ));
        }
        attributes.push(KeyValue::new(
            MESSAGING_MQTT_QOS,
            i64::from(facts.qos.as_u8()),
        ));
        attributes.push(KeyValue::new(
            SERVER_ADDRESS,
            Value::String(StringValue::from(Arc::clone(&self.server.host))),
        ));
        attributes.push(KeyValue::new(SERVER_PORT, i64::from(self.server.port)));
    }
}

/// The facts of one message that its attributes are made from. Borrowed, so building them costs
/// nothing; only the attribute values that must outlive the message are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageFacts<'a> {
    /// The topic name (`messaging.destination.name`).
    pub topic: &'a str,
    /// The destination template, when one is known (`messaging.destination.template`).
    pub template: Option<&'a str>,
    /// The shared-subscription group, when the message came through `$share/{group}/...`.
    pub consumer_group: Option<&'a str>,
    /// The QoS of the PUBLISH.
    pub qos: MqttQoS,
    /// The RETAIN flag.
    pub retained: bool,
    /// The DUP flag.
    pub duplicate: bool,
    /// The packet identifier (QoS 1 and 2 only; `None` or 0 for QoS 0).
    pub packet_id: Option<u16>,
    /// The payload size the application sees (opt-in `messaging.message.body.size`).
    pub body_size: Option<usize>,
    /// The payload size on the wire (opt-in `messaging.message.envelope.size`).
    pub envelope_size: Option<usize>,
}

impl<'a> MessageFacts<'a> {
    /// Facts for a message on `topic` at `qos`, with every flag clear and nothing optional known.
    pub fn new(topic: &'a str, qos: MqttQoS) -> Self {
        Self {
            topic,
            template: None,
            consumer_group: None,
            qos,
            retained: false,
            duplicate: false,
            packet_id: None,
            body_size: None,
            envelope_size: None,
        }
    }

    /// Sets the destination template.
    pub fn with_template(mut self, template: Option<&'a str>) -> Self {
        self.template = template;
        self
    }

    /// Sets the shared-subscription group.
    pub fn with_consumer_group(mut self, group: Option<&'a str>) -> Self {
        self.consumer_group = group;
        self
    }

    /// Sets the RETAIN flag.
    pub fn with_retained(mut self, retained: bool) -> Self {
        self.retained = retained;
        self
    }

    /// Sets the DUP flag.
    pub fn with_duplicate(mut self, duplicate: bool) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// Sets the packet identifier; a pkid of 0 (what rumqttc reports for QoS 0) counts as none.
    pub fn with_packet_id(mut self, packet_id: Option<u16>) -> Self {
        self.packet_id = packet_id.filter(|&pkid| pkid != 0);
        self
    }

    /// Sets the opt-in body and envelope sizes.
    pub fn with_sizes(mut self, body_size: Option<usize>, envelope_size: Option<usize>) -> Self {
        self.body_size = body_size;
        self.envelope_size = envelope_size;
        self
    }

    /// The destination a span name uses: the template when known, the topic otherwise.
    pub fn destination(&self) -> &'a str {
        self.template.unwrap_or(self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_semantic_conventions::{attribute as upstream, metric as upstream_metric};

    fn find<'v>(attributes: &'v [KeyValue], key: &str) -> Option<&'v Value> {
        let mut found = attributes.iter().filter(|kv| kv.key.as_str() == key);
        let first = found.next().map(|kv| &kv.value);
        assert!(found.next().is_none(), "attribute {key} appears twice");
        first
    }

    fn as_map(attributes: &[KeyValue]) -> Vec<(String, Value)> {
        let mut pairs: Vec<_> = attributes
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), kv.value.clone()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    #[test]
    fn constants_equal_upstream_semconv() {
        assert_eq!(MESSAGING_SYSTEM, upstream::MESSAGING_SYSTEM);
        assert_eq!(MESSAGING_OPERATION_NAME, upstream::MESSAGING_OPERATION_NAME);
        assert_eq!(MESSAGING_OPERATION_TYPE, upstream::MESSAGING_OPERATION_TYPE);
        assert_eq!(
            MESSAGING_DESTINATION_NAME,
            upstream::MESSAGING_DESTINATION_NAME
        );
        assert_eq!(
            MESSAGING_DESTINATION_TEMPLATE,
            upstream::MESSAGING_DESTINATION_TEMPLATE
        );
        assert_eq!(MESSAGING_CLIENT_ID, upstream::MESSAGING_CLIENT_ID);
        assert_eq!(
            MESSAGING_CONSUMER_GROUP_NAME,
            upstream::MESSAGING_CONSUMER_GROUP_NAME
        );
        assert_eq!(
            MESSAGING_MESSAGE_BODY_SIZE,
            upstream::MESSAGING_MESSAGE_BODY_SIZE
        );
        assert_eq!(
            MESSAGING_MESSAGE_ENVELOPE_SIZE,
            upstream::MESSAGING_MESSAGE_ENVELOPE_SIZE
        );
        assert_eq!(SERVER_ADDRESS, upstream::SERVER_ADDRESS);
        assert_eq!(SERVER_PORT, upstream::SERVER_PORT);
        assert_eq!(NETWORK_PROTOCOL_NAME, upstream::NETWORK_PROTOCOL_NAME);
        assert_eq!(NETWORK_PROTOCOL_VERSION, upstream::NETWORK_PROTOCOL_VERSION);
        assert_eq!(ERROR_TYPE, upstream::ERROR_TYPE);
        assert_eq!(
            metric::MESSAGING_CLIENT_OPERATION_DURATION,
            upstream_metric::MESSAGING_CLIENT_OPERATION_DURATION
        );
        assert_eq!(
            metric::MESSAGING_CLIENT_SENT_MESSAGES,
            upstream_metric::MESSAGING_CLIENT_SENT_MESSAGES
        );
        assert_eq!(
            metric::MESSAGING_CLIENT_CONSUMED_MESSAGES,
            upstream_metric::MESSAGING_CLIENT_CONSUMED_MESSAGES
        );
        assert_eq!(
            metric::MESSAGING_PROCESS_DURATION,
            upstream_metric::MESSAGING_PROCESS_DURATION
        );
    }

    #[test]
    fn qos_round_trips_through_both_rumqttc_types() {
        for qos in [
            MqttQoS::AtMostOnce,
            MqttQoS::AtLeastOnce,
            MqttQoS::ExactlyOnce,
        ] {
            let v4: rumqttc::QoS = qos.into();
            let v5: rumqttc::v5::mqttbytes::QoS = qos.into();
            assert_eq!(MqttQoS::from(v4), qos);
            assert_eq!(MqttQoS::from(v5), qos);
            assert_eq!(v4 as u8, qos.as_u8());
            assert_eq!(v5 as u8, qos.as_u8());
            assert_eq!(MqttQoS::from_u8(qos.as_u8()), Some(qos));
        }
        assert_eq!(MqttQoS::from_u8(3), None);
    }

    #[test]
    fn protocol_versions_are_recorded_as_semconv_expects() {
        assert_eq!(ProtocolVersion::V4.as_str(), "3.1.1");
        assert_eq!(ProtocolVersion::V5.to_string(), "5");
    }

    #[test]
    fn operations_have_semconv_names_types_and_kinds() {
        assert_eq!(
            (
                Operation::Publish.name(),
                Operation::Publish.operation_type(),
                Operation::Publish.span_kind()
            ),
            ("publish", "send", SpanKind::Producer)
        );
        assert_eq!(
            (
                Operation::Receive.name(),
                Operation::Receive.operation_type(),
                Operation::Receive.span_kind()
            ),
            ("receive", "receive", SpanKind::Client)
        );
        assert_eq!(
            (
                Operation::Process.name(),
                Operation::Process.operation_type(),
                Operation::Process.span_kind()
            ),
            ("process", "process", SpanKind::Consumer)
        );
        assert_eq!(
            Operation::Process.span_name("home/+/temperature"),
            "process home/+/temperature"
        );
    }

    fn connection() -> ConnectionAttributes {
        ConnectionAttributes::new("sensor-1", "broker.local", 1883, ProtocolVersion::V5)
    }

    #[test]
    fn publish_span_attributes_are_exact() {
        let facts = MessageFacts::new("home/kitchen/temperature", MqttQoS::AtLeastOnce)
            .with_template(Some("home/+/temperature"))
            .with_retained(true)
            .with_packet_id(Some(42));
        let attributes = connection().span_attributes(Operation::Publish, &facts);
        let expected: Vec<(String, Value)> = vec![
            ("messaging.client.id".into(), "sensor-1".into()),
            (
                "messaging.destination.name".into(),
                "home/kitchen/temperature".into(),
            ),
            (
                "messaging.destination.template".into(),
                "home/+/temperature".into(),
            ),
            ("messaging.mqtt.duplicate".into(), false.into()),
            ("messaging.mqtt.packet_id".into(), 42_i64.into()),
            ("messaging.mqtt.qos".into(), 1_i64.into()),
            ("messaging.mqtt.retained".into(), true.into()),
            ("messaging.operation.name".into(), "publish".into()),
            ("messaging.operation.type".into(), "send".into()),
            ("messaging.system".into(), "mqtt".into()),
            ("network.protocol.name".into(), "mqtt".into()),
            ("network.protocol.version".into(), "5".into()),
            ("server.address".into(), "broker.local".into()),
            ("server.port".into(), 1883_i64.into()),
        ];
        assert_eq!(as_map(&attributes), expected);
    }

    #[test]
    fn receive_span_attributes_are_exact() {
        let connection = ConnectionAttributes::new("gw", "10.0.0.5", 8883, ProtocolVersion::V4);
        let facts = MessageFacts::new("home/hall/door", MqttQoS::AtMostOnce)
            .with_duplicate(true)
            .with_packet_id(Some(0))
            .with_sizes(Some(12), Some(60));
        let attributes = connection.span_attributes(Operation::Receive, &facts);
        let expected: Vec<(String, Value)> = vec![
            ("messaging.client.id".into(), "gw".into()),
            ("messaging.destination.name".into(), "home/hall/door".into()),
            ("messaging.message.body.size".into(), 12_i64.into()),
            ("messaging.message.envelope.size".into(), 60_i64.into()),
            ("messaging.mqtt.duplicate".into(), true.into()),
            ("messaging.mqtt.qos".into(), 0_i64.into()),
            ("messaging.mqtt.retained".into(), false.into()),
            ("messaging.operation.name".into(), "receive".into()),
            ("messaging.operation.type".into(), "receive".into()),
            ("messaging.system".into(), "mqtt".into()),
            ("network.protocol.name".into(), "mqtt".into()),
            ("network.protocol.version".into(), "3.1.1".into()),
            ("server.address".into(), "10.0.0.5".into()),
            ("server.port".into(), 8883_i64.into()),
        ];
        assert_eq!(as_map(&attributes), expected);
    }

    #[test]
    fn process_span_attributes_carry_the_shared_subscription_group() {
        let facts = MessageFacts::new("home/hall/door", MqttQoS::ExactlyOnce)
            .with_template(Some("home/#"))
            .with_consumer_group(Some("collectors"))
            .with_packet_id(Some(9));
        let attributes = connection().span_attributes(Operation::Process, &facts);
        assert_eq!(
            find(&attributes, MESSAGING_OPERATION_NAME),
            Some(&"process".into())
        );
        assert_eq!(
            find(&attributes, MESSAGING_OPERATION_TYPE),
            Some(&"process".into())
        );
        assert_eq!(
            find(&attributes, MESSAGING_CONSUMER_GROUP_NAME),
            Some(&"collectors".into())
        );
        assert_eq!(
            find(&attributes, MESSAGING_DESTINATION_TEMPLATE),
            Some(&"home/#".into())
        );
        assert_eq!(find(&attributes, MESSAGING_MQTT_QOS), Some(&2_i64.into()));
        assert_eq!(attributes.len(), 15);
    }

    #[test]
    fn metric_attributes_leave_out_high_cardinality_facts() {
        let facts = MessageFacts::new("home/dev-123/temperature", MqttQoS::AtLeastOnce)
            .with_template(Some("home/+/temperature"))
            .with_packet_id(Some(3));
        let attributes = connection().metric_attributes(Operation::Publish, &facts, false);
        let expected: Vec<(String, Value)> = vec![
            (
                "messaging.destination.template".into(),
                "home/+/temperature".into(),
            ),
            ("messaging.mqtt.qos".into(), 1_i64.into()),
            ("messaging.operation.name".into(), "publish".into()),
            ("messaging.operation.type".into(), "send".into()),
            ("messaging.system".into(), "mqtt".into()),
            ("server.address".into(), "broker.local".into()),
            ("server.port".into(), 1883_i64.into()),
        ];
        assert_eq!(as_map(&attributes), expected);

        let with_topic = connection().metric_attributes(Operation::Publish, &facts, true);
        assert_eq!(
            find(&with_topic, MESSAGING_DESTINATION_NAME),
            Some(&"home/dev-123/temperature".into())
        );
    }

    #[test]
    fn destination_prefers_the_template() {
        let facts = MessageFacts::new("a/b", MqttQoS::AtMostOnce);
        assert_eq!(facts.destination(), "a/b");
        assert_eq!(facts.with_template(Some("a/+")).destination(), "a/+");
    }

    #[test]
    fn server_address_never_keeps_url_credentials_or_paths() {
        let cases = [
            ("broker.local", 1883, "broker.local", 1883),
            ("127.0.0.1", 1884, "127.0.0.1", 1884),
            ("::1", 1883, "::1", 1883),
            ("ws://broker:8080/mqtt", 1883, "broker", 8080),
            (
                "wss://user:pw@broker.example/mqtt",
                443,
                "broker.example",
                443,
            ),
            ("ws://user:p@ss@[::1]:9001/mqtt?x=1", 1, "::1", 9001),
            ("ws://host:notaport/x", 80, "host:notaport", 80),
        ];
        for (host, port, want_host, want_port) in cases {
            let address = ServerAddress::new(host, port);
            assert_eq!(
                (address.host(), address.port()),
                (want_host, want_port),
                "{host}"
            );
        }
    }

    #[test]
    fn options_give_connection_attributes() {
        let options = rumqttc::MqttOptions::new("dev-7", "broker.local", 1884);
        let connection = ConnectionAttributes::from_v4_options(&options);
        assert_eq!(connection.client_id(), "dev-7");
        assert_eq!(connection.server().port(), 1884);
        assert_eq!(connection.protocol(), ProtocolVersion::V4);
        let options = rumqttc::v5::MqttOptions::new("dev-8", "broker.local", 1885);
        let connection = ConnectionAttributes::from_v5_options(&options);
        assert_eq!(connection.client_id(), "dev-8");
        assert_eq!(connection.protocol(), ProtocolVersion::V5);
    }
}
