//! The attribute builders: the facts of a connection ([`ConnectionAttributes`], with its
//! [`ServerAddress`]) and of one message ([`MessageFacts`]) turned into span and metric
//! attributes.

use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};

use super::conversation::conversation_id;
use super::{
    MESSAGING_CLIENT_ID, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_TEMPLATE, MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_MESSAGE_CONVERSATION_ID,
    MESSAGING_MESSAGE_ENVELOPE_SIZE, MESSAGING_MQTT_DUPLICATE, MESSAGING_MQTT_PACKET_ID,
    MESSAGING_MQTT_QOS, MESSAGING_MQTT_RETAINED, MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE, MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE, MqttQoS,
    NETWORK_PROTOCOL_NAME, NETWORK_PROTOCOL_NAME_VALUE, NETWORK_PROTOCOL_VERSION, Operation,
    ProtocolVersion, SERVER_ADDRESS, SERVER_PORT,
};

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
        let mut attributes = self.sampling_attributes(operation, facts, None);
        self.push_recording_attributes(&mut attributes, facts, true);
        attributes
    }

    /// The attributes semconv marks as relevant to sampling, which a span gets at creation:
    /// `messaging.system`, `messaging.operation.name` and `.type`, `messaging.destination.name`,
    /// `messaging.destination.template` and `messaging.consumer.group.name` when known,
    /// `server.address` and `server.port`. `template` is the template as a shared string, to
    /// clone instead of copying `facts.template`.
    pub(crate) fn sampling_attributes(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
        template: Option<&Arc<str>>,
    ) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(15);
        attributes.push(KeyValue::new(MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE));
        attributes.push(KeyValue::new(MESSAGING_OPERATION_NAME, operation.name()));
        attributes.push(KeyValue::new(
            MESSAGING_OPERATION_TYPE,
            operation.operation_type(),
        ));
        attributes.push(KeyValue::new(
            MESSAGING_DESTINATION_NAME,
            facts.topic.to_owned(),
        ));
        match (template, facts.template) {
            (Some(shared), _) => attributes.push(KeyValue::new(
                MESSAGING_DESTINATION_TEMPLATE,
                Value::String(StringValue::from(Arc::clone(shared))),
            )),
            (None, Some(template)) => attributes.push(KeyValue::new(
                MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            )),
            (None, None) => {}
        }
        if let Some(group) = facts.consumer_group {
            attributes.push(KeyValue::new(
                MESSAGING_CONSUMER_GROUP_NAME,
                group.to_owned(),
            ));
        }
        attributes.push(KeyValue::new(
            SERVER_ADDRESS,
            Value::String(StringValue::from(Arc::clone(&self.server.host))),
        ));
        attributes.push(KeyValue::new(SERVER_PORT, i64::from(self.server.port)));
        attributes
    }

    /// The span attributes that matter only to a span that records: the client id, the network
    /// protocol, the MQTT flags, the conversation id (semconv does not list it among the
    /// attributes a sampler sees) and the opt-in sizes. `messaging.mqtt.duplicate` only with
    /// `with_duplicate`: a publish span records it once, when it ends, because a retransmission
    /// sets it after the span started (and OTLP wants each key once per span).
    pub(crate) fn push_recording_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        facts: &MessageFacts<'_>,
        with_duplicate: bool,
    ) {
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
        attributes.push(KeyValue::new(
            MESSAGING_MQTT_QOS,
            i64::from(facts.qos.as_u8()),
        ));
        attributes.push(KeyValue::new(MESSAGING_MQTT_RETAINED, facts.retained));
        if with_duplicate {
            attributes.push(KeyValue::new(MESSAGING_MQTT_DUPLICATE, facts.duplicate));
        }
        if let Some(packet_id) = facts.packet_id {
            attributes.push(KeyValue::new(
                MESSAGING_MQTT_PACKET_ID,
                i64::from(packet_id),
            ));
        }
        if let Some(data) = facts.conversation_id.filter(|data| !data.is_empty()) {
            attributes.push(KeyValue::new(
                MESSAGING_MESSAGE_CONVERSATION_ID,
                conversation_id(data).into_owned(),
            ));
        }
        if let Some(size) = facts.body_size {
            attributes.push(KeyValue::new(MESSAGING_MESSAGE_BODY_SIZE, size as i64));
        }
        if let Some(size) = facts.envelope_size {
            attributes.push(KeyValue::new(MESSAGING_MESSAGE_ENVELOPE_SIZE, size as i64));
        }
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
    /// The MQTT 5 Correlation Data (section 3.3.2.3.6), as bytes; span attributes carry it as
    /// `messaging.message.conversation_id`, encoded by [`conversation_id`]. Empty data records
    /// nothing.
    pub conversation_id: Option<&'a [u8]>,
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
            conversation_id: None,
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

    /// Sets the conversation id: MQTT 5 Correlation Data, or any identifier of the
    /// conversation as bytes (a `&str` through `as_bytes()`; UTF-8 is recorded as it is, see
    /// [`conversation_id`]).
    pub fn with_conversation_id(mut self, correlation_data: Option<&'a [u8]>) -> Self {
        self.conversation_id = correlation_data;
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

    /// Correlation Data is bytes (MQTT 5 section 3.3.2.3.6); the attribute is a string of at
    /// most 128 bytes.
    #[test]
    fn the_conversation_id_is_a_recording_attribute_never_a_metric_one() {
        let facts = MessageFacts::new("replies/1", MqttQoS::AtLeastOnce)
            .with_conversation_id(Some(&[0x01, 0x02]));
        let span = connection().span_attributes(Operation::Receive, &facts);
        assert_eq!(
            find(&span, MESSAGING_MESSAGE_CONVERSATION_ID),
            Some(&"0102".into())
        );
        let sampling = connection().sampling_attributes(Operation::Receive, &facts, None);
        assert_eq!(find(&sampling, MESSAGING_MESSAGE_CONVERSATION_ID), None);
        let metric = connection().metric_attributes(Operation::Receive, &facts, true);
        assert_eq!(find(&metric, MESSAGING_MESSAGE_CONVERSATION_ID), None);
        let empty = facts.with_conversation_id(Some(&[]));
        let span = connection().span_attributes(Operation::Receive, &empty);
        assert_eq!(find(&span, MESSAGING_MESSAGE_CONVERSATION_ID), None);
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
