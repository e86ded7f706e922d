//! OpenTelemetry semantic-convention names for MQTT, and builders that turn the facts of one
//! publish, receive, process or settle (acknowledge) operation into attributes.
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

use opentelemetry::trace::SpanKind;

/// `messaging.system`: the messaging system; always [`MESSAGING_SYSTEM_VALUE`] here.
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system` for MQTT: `mqtt` (semconv lists no value for MQTT).
pub const MESSAGING_SYSTEM_VALUE: &str = "mqtt";
/// `messaging.operation.name`: `publish`, `receive`, `process` or `ack` (see [`Operation::name`]).
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.operation.type`: `send`, `receive`, `process` or `settle` (see
/// [`Operation::operation_type`]).
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
/// `messaging.message.conversation_id`: "the conversation ID identifying the conversation to
/// which the message belongs, represented as a string. Sometimes called Correlation ID". For
/// MQTT 5 it is the PUBLISH's Correlation Data (section 3.3.2.3.6) as [`conversation_id`]
/// encodes it; a span attribute only (it is unbounded, so never a metric attribute).
pub const MESSAGING_MESSAGE_CONVERSATION_ID: &str = "messaging.message.conversation_id";
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
    /// `messaging.client.operation.duration` (histogram, `s`): a publish until it is acknowledged,
    /// a manual acknowledgement (settle) until rumqttc took it.
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

/// The four messaging operations this crate records, with their semconv names, types and span
/// kinds (semconv v1.44, "Operation types" and "Span kind").
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
    /// A manual acknowledgement (PUBACK for QoS 1, PUBREC for QoS 2) of a received message:
    /// span kind CLIENT, type `settle`, name `ack`.
    Settle,
}

impl Operation {
    /// `messaging.operation.name`, also the first word of the span name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Receive => "receive",
            Self::Process => "process",
            Self::Settle => "ack",
        }
    }

    /// `messaging.operation.type`.
    pub const fn operation_type(self) -> &'static str {
        match self {
            Self::Publish => "send",
            Self::Receive => "receive",
            Self::Process => "process",
            Self::Settle => "settle",
        }
    }

    /// The span kind semconv assigns to the operation.
    pub fn span_kind(self) -> SpanKind {
        match self {
            Self::Publish => SpanKind::Producer,
            Self::Receive => SpanKind::Client,
            Self::Process => SpanKind::Consumer,
            Self::Settle => SpanKind::Client,
        }
    }

    /// The span name, `{operation name} {destination}`, where the destination is the template
    /// when one is known and the topic otherwise; only the operation name when the destination
    /// is empty (semconv: the span name is `{messaging.operation.name}` when no destination is
    /// available, as for an MQTT 5 PUBLISH whose Topic Alias could not be resolved).
    pub fn span_name(self, destination: &str) -> String {
        let name = self.name();
        if destination.is_empty() {
            return name.to_owned();
        }
        let mut span_name = String::with_capacity(name.len() + 1 + destination.len());
        span_name.push_str(name);
        span_name.push(' ');
        span_name.push_str(destination);
        span_name
    }
}

mod attributes;
mod conversation;

pub use attributes::{ConnectionAttributes, MessageFacts, ServerAddress};
pub use conversation::{CONVERSATION_ID_MAX_LEN, conversation_id};

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_semantic_conventions::{attribute as upstream, metric as upstream_metric};

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
        assert_eq!(
            MESSAGING_MESSAGE_CONVERSATION_ID,
            upstream::MESSAGING_MESSAGE_CONVERSATION_ID
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
            (
                Operation::Settle.name(),
                Operation::Settle.operation_type(),
                Operation::Settle.span_kind()
            ),
            ("ack", "settle", SpanKind::Client)
        );
        assert_eq!(
            Operation::Process.span_name("home/+/temperature"),
            "process home/+/temperature"
        );
        // No destination known: the operation name alone, no trailing space.
        assert_eq!(Operation::Publish.span_name(""), "publish");
        assert_eq!(Operation::Settle.span_name("home/#"), "ack home/#");
    }
}
