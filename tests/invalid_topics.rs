//! A topic name with a wildcard character or U+0000 never reaches the wire and records no span,
//! whichever publish method is used ([MQTT-3.3.2-2]: the Topic Name in a PUBLISH MUST NOT contain
//! wildcard characters; [MQTT-4.7.3-2]: topic names MUST NOT include U+0000). rumqttc refuses
//! wildcards in every publish method but MQTT 3.1.1's `publish_bytes`, and sends U+0000 from all
//! of them; the traced client refuses both everywhere, with the same `ClientError::Request`.
//!
//! No broker is needed: a refused request never leaves the client.

mod common;

use common::telemetry::Telemetry;
use rumqttc_opentelemetry::Error;
use rumqttc_opentelemetry::{v4, v5};

const INVALID: [&str; 5] = [
    "home/+/temperature",
    "home/#",
    "#",
    "home/\0/temperature",
    "a-topic-longer-than-eight-bytes\0",
];

#[tokio::test]
async fn mqtt_3_1_1_refuses_invalid_topic_names_in_every_publish_method() {
    use rumqttc::{ClientError, MqttOptions, QoS};
    let telemetry = Telemetry::new();
    let options = MqttOptions::new("invalid-v4", "127.0.0.1", 9);
    let (client, eventloop) =
        v4::TracedClient::with_instrumentation(options, 10, telemetry.instrumentation());
    for topic in INVALID {
        let qos = QoS::AtLeastOnce;
        assert!(matches!(
            client.publish(topic, qos, false, "x").await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client.publish_bytes(topic, qos, false, "x".into()).await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client.try_publish(topic, qos, false, "x"),
            Err(ClientError::TryRequest(_))
        ));
        assert!(matches!(
            client.publish_confirmed(topic, qos, false, "x").await,
            Err(Error::RequestRejected(_))
        ));
    }
    assert_eq!(eventloop.open_publish_spans(), 0);
    assert!(telemetry.spans().is_empty(), "no span for a refused topic");
}

#[tokio::test]
async fn mqtt_5_refuses_invalid_topic_names_in_every_publish_method() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{ClientError, MqttOptions};
    let telemetry = Telemetry::new();
    let options = MqttOptions::new("invalid-v5", "127.0.0.1", 9);
    let (client, eventloop) =
        v5::TracedClient::with_instrumentation(options, 10, telemetry.instrumentation());
    let properties = PublishProperties::default;
    for topic in INVALID {
        let qos = QoS::AtLeastOnce;
        assert!(matches!(
            client.publish(topic, qos, false, "x").await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client
                .publish_with_properties(topic, qos, false, "x", properties())
                .await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client.publish_bytes(topic, qos, false, "x".into()).await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client
                .publish_bytes_with_properties(topic, qos, false, "x".into(), properties())
                .await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client.try_publish(topic, qos, false, "x"),
            Err(ClientError::TryRequest(_))
        ));
        assert!(matches!(
            client.try_publish_with_properties(topic, qos, false, "x", properties()),
            Err(ClientError::TryRequest(_))
        ));
        assert!(matches!(
            client.publish_confirmed(topic, qos, false, "x", None).await,
            Err(Error::RequestRejected(_))
        ));
    }
    assert_eq!(eventloop.open_publish_spans(), 0);
    assert!(telemetry.spans().is_empty(), "no span for a refused topic");
}
