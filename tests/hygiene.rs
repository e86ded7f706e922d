//! Telemetry hygiene and reconnect behaviour (DESIGN.md "Spans": "never payload bytes, never
//! credentials"; crate docs of `reconnect`).

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::time::{Duration, Instant};

use common::telemetry::Telemetry;
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::Value;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::metrics::CONNECTION_ATTEMPTS;
use rumqttc_opentelemetry::reconnect::ReconnectBackoff;
use rumqttc_opentelemetry::v5::TracedClient;

const DEADLINE: Duration = Duration::from_secs(15);
const USER: &str = "fleet-user-7f3a";
const PASSWORD: &str = "s3cr3t-pa55-9c1e";
const PAYLOAD: &str = "payload-marker-5b2d-21.5C";

fn leaks(value: &Value) -> Option<&'static str> {
    let text = value.to_string();
    [USER, PASSWORD, PAYLOAD]
        .into_iter()
        .find(|secret| text.contains(secret))
}

/// A session with a user name and password publishes and receives; no exported span attribute,
/// event attribute, link attribute, span name or metric attribute contains the payload, the user
/// name or the password.
#[tokio::test(flavor = "multi_thread")]
async fn no_payload_and_no_credentials_reach_telemetry() {
    let broker = Broker::builder()
        .allow_anonymous(false)
        .password(USER, PASSWORD)
        .start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let instrumentation = telemetry
        .builder()
        .meter_provider(&reader.provider)
        .record_sizes(true)
        .metric_topics(true)
        .metric_client_id(true)
        .build();
    let mut options = MqttOptions::new(unique_client_id("hygiene"), broker.host(), broker.port());
    options.set_credentials(USER, PASSWORD);
    let (client, mut eventloop) = TracedClient::with_instrumentation(options, 10, instrumentation);
    client
        .subscribe("hygiene/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish("hygiene/t", QoS::AtLeastOnce, true, PAYLOAD)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        let (mut acked, mut received) = (false, false);
        while !(acked && received) {
            match eventloop.poll().await.expect("connected with credentials") {
                Event::Incoming(Packet::PubAck(_)) => acked = true,
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], PAYLOAD.as_bytes());
                    received = true;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("publish and delivery within the deadline");

    let spans = telemetry.spans();
    assert!(spans.len() >= 2, "{spans:#?}");
    for span in &spans {
        assert!(!span.name.contains(PAYLOAD), "span name {}", span.name);
        let attributes = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|event| event.attributes.iter()))
            .chain(span.links.iter().flat_map(|link| link.attributes.iter()));
        for kv in attributes {
            assert_eq!(
                leaks(&kv.value),
                None,
                "span {} attribute {}",
                span.name,
                kv.key
            );
        }
    }
    for name in [
        "messaging.client.operation.duration",
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "mqtt.client.message.body.size",
        CONNECTION_ATTEMPTS,
    ] {
        let points = reader.points(name);
        assert!(!points.is_empty(), "{name} recorded");
        for point in points {
            for kv in &point.attributes {
                assert_eq!(leaks(&kv.value), None, "metric {name} attribute {}", kv.key);
            }
        }
    }
}

/// A broker unreachable at start: with a backoff, attempts are counted and spaced out instead of
/// retried in a busy loop. The delays are the backoff's own sleeps (jitter off), so the elapsed
/// time has a lower bound that does not depend on the machine's speed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_retried_with_backoff() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let (_client, mut eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("backoff"), "127.0.0.1", port),
        10,
        telemetry.builder().meter_provider(&reader.provider).build(),
    );
    eventloop.set_reconnect_backoff(Some(
        ReconnectBackoff::new(Duration::from_millis(40), Duration::from_millis(160))
            .with_jitter(0.0),
    ));
    let start = Instant::now();
    for _ in 0..5 {
        assert!(eventloop.poll().await.is_err());
    }
    // No wait before the first attempt, then 40 + 80 + 160 + 160 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(440),
        "{:?}",
        start.elapsed()
    );
    let points = reader.points(CONNECTION_ATTEMPTS);
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].value, 5.0);
    assert_eq!(
        points[0].attribute("error.type"),
        Some(&"connection_refused".into())
    );
}
