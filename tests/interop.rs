//! Interoperability of the MQTT 5 traced clients with independent peers: `mosquitto_pub` and
//! `mosquitto_sub` (mosquitto 2.0), which know nothing of this crate, through a real mosquitto.
//!
//! DESIGN.md "Real parts, not mocks": "Independent peers for interop: `mosquitto_pub -V mqttv5
//! -D publish user-property traceparent ...` and `mosquitto_sub -V mqttv5 -F '%j'`".

mod common;

use std::time::Duration;

use common::telemetry::{Telemetry, traceparent_of};
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::Delivery;
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use tokio::task::block_in_place;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

fn options(broker: &Broker, prefix: &str) -> MqttOptions {
    MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port())
}

/// A traced MQTT 5 subscriber on `filter` (SUBACK received).
async fn subscriber(
    broker: &Broker,
    telemetry: &Telemetry,
    filter: &str,
) -> (TracedClient, TracedEventLoop) {
    let (client, mut eventloop) =
        TracedClient::with_instrumentation(options(broker, "sub"), 10, telemetry.instrumentation());
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("SUBACK");
    (client, eventloop)
}

/// Polls until an incoming PUBLISH, bounded by [`DEADLINE`].
async fn next_message(eventloop: &mut TracedEventLoop) -> (Publish, Delivery) {
    timeout(DEADLINE, async {
        loop {
            let (event, delivery) = eventloop.poll_traced().await.expect("connection");
            if let Event::Incoming(Packet::Publish(publish)) = event {
                return (publish, delivery.expect("a delivery"));
            }
        }
    })
    .await
    .expect("a message within the deadline")
}

/// Runs `mosquitto_pub -V mqttv5 -q 1 -t TOPIC -m MESSAGE` with one `-D publish user-property
/// NAME VALUE` per property.
fn mosquitto_pub(broker: &Broker, topic: &str, message: &str, properties: &[(&str, &str)]) {
    let mut args = vec!["-V", "mqttv5", "-q", "1", "-t", topic, "-m", message];
    for (name, value) in properties {
        args.extend(["-D", "publish", "user-property", name, value]);
    }
    let output = block_in_place(|| broker.mosquitto_pub(&args));
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn only_receive(telemetry: &Telemetry) -> SpanData {
    let spans = telemetry.spans_of(SpanKind::Client);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    spans.into_iter().next().unwrap()
}

/// W3C Trace Context section 3.2 (`traceparent`: version 00, trace-id, parent-id, flags) carried
/// as an MQTT 5 user property (W3C "Trace Context: MQTT" draft; MQTT 5 section 3.3.2.3.7), set
/// by mosquitto_pub: the traced subscriber's receive span joins that trace, as a child of the
/// given parent-id (DESIGN.md "Spans", default `ParentMode::CreationContext`). A `tracestate`
/// next to it (W3C Trace Context section 3.3) reaches the creation context.
#[tokio::test(flavor = "multi_thread")]
async fn traceparent_from_mosquitto_pub_is_continued() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, &telemetry, "interop/#").await;
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    mosquitto_pub(
        &broker,
        "interop/in",
        "hello",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=value"),
        ],
    );
    let (publish, delivery) = next_message(&mut sub_loop).await;
    assert_eq!(&publish.payload[..], b"hello");

    let receive = only_receive(&telemetry);
    assert_eq!(
        receive.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap()
    );
    assert_eq!(receive.parent_span_id, SpanId::from_hex(SPAN_ID).unwrap());
    assert!(receive.parent_span_is_remote);
    assert!(receive.span_context.is_sampled());
    let creation = delivery.creation_context().expect("creation context");
    let creation = creation.span().span_context().clone();
    assert_eq!(creation.span_id(), SpanId::from_hex(SPAN_ID).unwrap());
    assert!(creation.is_remote());
    assert_eq!(creation.trace_state().header(), "vendor=value");
}

/// The other direction: a traced MQTT 5 publish read by mosquitto_sub (`-F %j`) carries a
/// `traceparent` user property that is valid by W3C Trace Context section 3.2 (version 00,
/// 55 characters, lowercase hex, non-zero ids) and names the exported publish span (trace-id
/// and parent-id = its span id); the application's own user property is still there (DESIGN.md
/// "Propagation").
#[tokio::test(flavor = "multi_thread")]
async fn traced_publish_carries_traceparent_to_mosquitto_sub() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let sub = broker.mosquitto_sub(&[
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "interop/out",
        "-C",
        "1",
        "-W",
        "20",
        "-F",
        "%j",
    ]);
    let (publisher, mut pub_loop) = TracedClient::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    let properties = PublishProperties {
        user_properties: vec![("unit".to_owned(), "C".to_owned())],
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties("interop/out", QoS::AtLeastOnce, false, "21.5", properties)
        .await
        .unwrap();
    timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("PUBACK");
    let lines = block_in_place(|| sub.wait());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let message: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(message["topic"], "interop/out");
    assert_eq!(message["payload"], "21.5");
    let user_properties = &message["properties"]["user-properties"];
    assert_eq!(user_properties["unit"], "C", "{message}");
    let traceparent = user_properties["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in {message}"));

    assert_eq!(traceparent.len(), 55, "{traceparent}");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    for part in &parts {
        assert!(
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "lowercase hex: {traceparent}"
        );
    }
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));

    let producers = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(producers.len(), 1);
    let producer = &producers[0];
    assert_eq!(parts[1], producer.span_context.trace_id().to_string());
    assert_eq!(parts[2], producer.span_context.span_id().to_string());
    assert_eq!(traceparent, traceparent_of(producer));
}

/// DESIGN.md "Propagation" ("Extraction validates traceparent strictly by W3C Trace Context
/// rules (version 00: exactly 55 chars lowercase hex; all-zero ids invalid; version ff
/// invalid)"); W3C Trace Context sections 3.2.2.1-3.2.2.4. Each malformed `traceparent` from
/// mosquitto_pub starts a new trace (a root receive span, no creation context, a
/// `mqtt.propagation.rejected` event), and the message is still delivered with its payload.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_traceparent_starts_a_new_trace_and_delivers() {
    let broker = Broker::start();
    let upper = format!(
        "00-{}-{}-01",
        TRACE_ID.to_uppercase(),
        SPAN_ID.to_uppercase()
    );
    let zero_trace = format!("00-{}-{SPAN_ID}-01", "0".repeat(32));
    let zero_span = format!("00-{TRACE_ID}-{}-01", "0".repeat(16));
    let version_ff = format!("ff-{TRACE_ID}-{SPAN_ID}-01");
    let short = format!("00-{}-{SPAN_ID}-01", &TRACE_ID[1..]);
    let trailing = format!("00-{TRACE_ID}-{SPAN_ID}-01-extra");
    let cases = [
        ("uppercase", upper),
        ("zero-trace-id", zero_trace),
        ("zero-span-id", zero_span),
        ("version-ff", version_ff),
        ("short", short),
        ("trailing-data", trailing),
    ];
    for (name, traceparent) in &cases {
        let telemetry = Telemetry::new();
        let (_sub, mut sub_loop) = subscriber(&broker, &telemetry, "bad/#").await;
        let topic = format!("bad/{name}");
        mosquitto_pub(&broker, &topic, name, &[("traceparent", traceparent)]);
        let (publish, delivery) = next_message(&mut sub_loop).await;
        assert_eq!(&publish.payload[..], name.as_bytes(), "{name}");
        assert!(delivery.creation_context().is_none(), "{name}");

        let receive = only_receive(&telemetry);
        assert_eq!(
            receive.parent_span_id,
            SpanId::INVALID,
            "{name}: a root span"
        );
        assert_ne!(
            receive.span_context.trace_id(),
            TraceId::from_hex(TRACE_ID).unwrap(),
            "{name}: a new trace"
        );
        assert!(
            receive
                .events
                .events
                .iter()
                .any(|event| event.name == "mqtt.propagation.rejected"),
            "{name}: {:#?}",
            receive.events
        );
    }
}

/// DESIGN.md "Propagation" ("Two `traceparent` properties: treat as invalid and start a new
/// trace"); W3C Trace Context section 3.2 (a carrier holds one `traceparent`); MQTT 5 section
/// 3.3.2.3.7 lets a user property name repeat, and mosquitto_pub sends both. Neither trace is
/// continued, the message is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn two_traceparents_start_a_new_trace() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, &telemetry, "twice/#").await;
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let first = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let second = format!("00-{other_trace}-b7ad6b7169203331-01");
    mosquitto_pub(
        &broker,
        "twice/a",
        "payload",
        &[("traceparent", &first), ("traceparent", &second)],
    );
    let (publish, delivery) = next_message(&mut sub_loop).await;
    assert_eq!(&publish.payload[..], b"payload");
    let received: Vec<&str> = publish
        .properties
        .as_ref()
        .expect("properties")
        .user_properties
        .iter()
        .filter(|(name, _)| name == "traceparent")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(
        received,
        [first.as_str(), second.as_str()],
        "both reached the subscriber"
    );
    assert!(delivery.creation_context().is_none());

    let receive = only_receive(&telemetry);
    assert_eq!(receive.parent_span_id, SpanId::INVALID);
    let trace_id = receive.span_context.trace_id();
    assert_ne!(trace_id, TraceId::from_hex(TRACE_ID).unwrap());
    assert_ne!(trace_id, TraceId::from_hex(other_trace).unwrap());
}
