//! MQTT 3.1.1 traced clients against a real mosquitto: the three propagation modes
//! (`V4Propagation::None`, `Envelope`, `JsonFields`), payload bytes, and wire compatibility with
//! clients that are not instrumented (plain rumqttc, mosquitto_sub).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Broker;
use common::telemetry::{Telemetry, assert_success, destination, traceparent_of};
use common::unique_client_id;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use rumqttc_opentelemetry::v4::{TracedClient, TracedEventLoop};
use rumqttc_opentelemetry::{Delivery, Instrumentation, V4Propagation};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

fn options(broker: &Broker, prefix: &str) -> MqttOptions {
    MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port())
}

/// Polls until `f` returns `Some`, bounded by [`DEADLINE`].
async fn poll_until<T>(
    eventloop: &mut TracedEventLoop,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    timeout(DEADLINE, async {
        loop {
            let event = eventloop.poll().await.expect("connection");
            if let Some(found) = f(&event) {
                return found;
            }
        }
    })
    .await
    .expect("event within the deadline")
}

/// Polls until `n` incoming PUBLISHes, bounded by [`DEADLINE`].
async fn next_messages(eventloop: &mut TracedEventLoop, n: usize) -> Vec<(Publish, Delivery)> {
    let mut messages = Vec::with_capacity(n);
    timeout(DEADLINE, async {
        while messages.len() < n {
            let (event, delivery) = eventloop.poll_traced().await.expect("connection");
            if let Event::Incoming(Packet::Publish(publish)) = event {
                messages.push((publish, delivery.expect("a delivery for every PUBLISH")));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} messages within the deadline", messages.len()));
    messages
}

/// A traced client subscribed to `filter` (SUBACK received).
async fn subscriber(
    broker: &Broker,
    instrumentation: Instrumentation,
    filter: &str,
) -> (TracedClient, TracedEventLoop) {
    let (client, mut eventloop) =
        TracedClient::with_instrumentation(options(broker, "sub"), 10, instrumentation);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut eventloop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    (client, eventloop)
}

/// Publishes every payload on `{prefix}/{index}` at QoS 1 through a traced client and waits for
/// all the PUBACKs.
async fn publish_all(
    broker: &Broker,
    instrumentation: Instrumentation,
    prefix: &str,
    payloads: &[Vec<u8>],
) {
    let (publisher, mut eventloop) =
        TracedClient::with_instrumentation(options(broker, "pub"), 100, instrumentation);
    for (i, payload) in payloads.iter().enumerate() {
        publisher
            .publish(
                format!("{prefix}/{i}"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
    }
    let mut acks = 0;
    poll_until(&mut eventloop, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acks += 1;
        }
        (acks == payloads.len()).then_some(())
    })
    .await;
    assert_eq!(eventloop.open_publish_spans(), 0);
}

/// Binary payloads, several starting with 0x00 like the envelope magic.
fn binary_payloads() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![0x00],
        vec![0x00, 0x00, 0x00],
        vec![0x00, 0x01, 0xff, 0xfe],
        // The envelope magic alone, and a whole empty-header version-1 envelope as the payload.
        b"\x00MTC".to_vec(),
        b"\x00MTC\x01\x00\x00inner".to_vec(),
        (0..=255).collect(),
        b"21.5".to_vec(),
    ]
}

/// Payloads a receiver cannot mistake for an envelope (no magic prefix), or that start with
/// the magic but are malformed, which the receiver must deliver unchanged.
fn plain_payloads() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![0x00],
        vec![0x00, 0x01, 0xff, 0xfe],
        // Malformed envelopes: truncated prefix, unsupported version, header past the end.
        b"\x00MTC".to_vec(),
        b"\x00MTC\x02\x00\x00x".to_vec(),
        b"\x00MTC\x01\xff\xffx".to_vec(),
        (0..=255).collect(),
        b"21.5".to_vec(),
    ]
}

fn producers_by_topic(telemetry: &Telemetry) -> HashMap<String, SpanData> {
    telemetry
        .spans_of(SpanKind::Producer)
        .into_iter()
        .map(|span| (destination(&span).expect("destination"), span))
        .collect()
}

/// Runs mosquitto_sub for `count` messages on `filter`, printing each payload as hex (`-F %x`),
/// so the exact bytes on the wire can be compared.
fn hex_sub(broker: &Broker, filter: &str, count: usize) -> common::MosquittoSub {
    broker.mosquitto_sub(&[
        "-V",
        "mqttv311",
        "-q",
        "1",
        "-t",
        filter,
        "-C",
        &count.to_string(),
        "-W",
        "20",
        "-F",
        "%x",
    ])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// DESIGN.md "Propagation" (MQTT 3.1.1 `Envelope` mode: "Receivers always recognise an envelope
/// and strip it, so the application sees the original payload"; envelope format version 1).
/// A publisher with `V4Propagation::Envelope`, a subscriber with the default instrumentation:
/// every payload (binary, empty, starting with 0x00, even one that is itself an envelope)
/// arrives byte-identical, and each receive span continues the publish span's trace as its
/// child (W3C Trace Context section 3.2 parent-id).
#[tokio::test(flavor = "multi_thread")]
async fn envelope_continues_the_trace_with_payload_bytes_unchanged() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, telemetry.instrumentation(), "env/#").await;
    let payloads = binary_payloads();
    let envelope = telemetry
        .builder()
        .v4_propagation(V4Propagation::Envelope)
        .build();
    publish_all(&broker, envelope, "env", &payloads).await;
    let messages = next_messages(&mut sub_loop, payloads.len()).await;

    let producers = producers_by_topic(&telemetry);
    for (publish, delivery) in &messages {
        let index: usize = publish.topic["env/".len()..].parse().unwrap();
        assert_eq!(
            publish.payload.to_vec(),
            payloads[index],
            "{}",
            publish.topic
        );
        let producer = &producers[&publish.topic];
        let creation = delivery
            .creation_context()
            .expect("context from the envelope");
        assert_eq!(
            creation.span().span_context().span_id(),
            producer.span_context.span_id()
        );
    }
    let receives = telemetry.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), payloads.len());
    for receive in &receives {
        let producer = &producers[&destination(receive).unwrap()];
        assert_eq!(
            receive.span_context.trace_id(),
            producer.span_context.trace_id()
        );
        assert_eq!(receive.parent_span_id, producer.span_context.span_id());
    }
}

/// DESIGN.md "Propagation", envelope format version 1: `0x00 'M' 'T' 'C'`, version `0x01`, u16
/// big-endian header length, header = (u16 BE key length, key, u16 BE value length, value)
/// pairs, then the original payload. Read by an independent client (mosquitto_sub, `-F %x`):
/// the header holds exactly the publish span's `traceparent` (W3C Trace Context section 3.2).
#[tokio::test(flavor = "multi_thread")]
async fn envelope_on_the_wire_follows_the_documented_format() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let sub = hex_sub(&broker, "wire/#", 1);
    let payload = vec![0x00, 0x01, b'h', b'i', 0xff];
    let envelope = telemetry
        .builder()
        .v4_propagation(V4Propagation::Envelope)
        .build();
    publish_all(&broker, envelope, "wire", std::slice::from_ref(&payload)).await;
    let lines = sub.wait();
    assert_eq!(lines.len(), 1, "{lines:?}");

    let producer = &producers_by_topic(&telemetry)["wire/0"];
    let traceparent = traceparent_of(producer);
    let mut expected = vec![0x00, b'M', b'T', b'C', 0x01];
    let header_len = 2 + "traceparent".len() + 2 + traceparent.len();
    expected.extend_from_slice(&(header_len as u16).to_be_bytes());
    expected.extend_from_slice(&("traceparent".len() as u16).to_be_bytes());
    expected.extend_from_slice(b"traceparent");
    expected.extend_from_slice(&(traceparent.len() as u16).to_be_bytes());
    expected.extend_from_slice(traceparent.as_bytes());
    expected.extend_from_slice(&payload);
    assert_eq!(lines[0], hex(&expected));
}

/// DESIGN.md "Propagation": with the default `V4Propagation::None` "payload bytes never change,
/// so a swapped-in client stays wire-compatible with consumers that are not instrumented".
/// mosquitto_sub (`-F %x`) sees exactly the published bytes, and a traced subscriber receives
/// them unchanged (malformed envelope look-alikes included) and starts a new trace for each
/// (nothing carried the context).
#[tokio::test(flavor = "multi_thread")]
async fn default_none_keeps_payload_bytes_on_the_wire() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let payloads = plain_payloads();
    let sub = hex_sub(&broker, "plain/#", payloads.len());
    let (_sub, mut sub_loop) = subscriber(&broker, telemetry.instrumentation(), "plain/#").await;
    publish_all(&broker, telemetry.instrumentation(), "plain", &payloads).await;

    let lines = sub.wait();
    let expected: Vec<String> = payloads.iter().map(|p| hex(p)).collect();
    assert_eq!(lines, expected);

    let messages = next_messages(&mut sub_loop, payloads.len()).await;
    for (publish, delivery) in &messages {
        let index: usize = publish.topic["plain/".len()..].parse().unwrap();
        assert_eq!(
            publish.payload.to_vec(),
            payloads[index],
            "{}",
            publish.topic
        );
        assert!(delivery.creation_context().is_none(), "{}", publish.topic);
    }
    let producers = producers_by_topic(&telemetry);
    let receives = telemetry.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), payloads.len());
    for receive in &receives {
        let producer = &producers[&destination(receive).unwrap()];
        assert_eq!(receive.parent_span_id, SpanId::INVALID, "a new trace");
        assert_ne!(
            receive.span_context.trace_id(),
            producer.span_context.trace_id()
        );
        assert!(receive.links.links.is_empty());
    }
}

/// DESIGN.md "Propagation" (`None` default; receivers recognise envelopes and deliver anything
/// else unchanged) and "Public surface" (drop-in twin): messages from a plain rumqttc 0.25.1
/// MQTT 3.1.1 publisher reach a traced subscriber byte for byte, each in a new trace.
#[tokio::test(flavor = "multi_thread")]
async fn plain_rumqttc_publisher_reaches_traced_subscriber_unchanged() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, telemetry.instrumentation(), "raw/#").await;
    let payloads = plain_payloads();

    let (plain, mut plain_loop) = AsyncClient::new(options(&broker, "plain"), 100);
    for (i, payload) in payloads.iter().enumerate() {
        plain
            .publish(format!("raw/{i}"), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acks = 0;
    timeout(DEADLINE, async {
        while acks < payloads.len() {
            if let Event::Incoming(Packet::PubAck(_)) = plain_loop.poll().await.unwrap() {
                acks += 1;
            }
        }
    })
    .await
    .expect("PUBACKs");

    let messages = next_messages(&mut sub_loop, payloads.len()).await;
    for (publish, delivery) in &messages {
        let index: usize = publish.topic["raw/".len()..].parse().unwrap();
        assert_eq!(
            publish.payload.to_vec(),
            payloads[index],
            "{}",
            publish.topic
        );
        assert!(delivery.creation_context().is_none());
    }
    let receives = telemetry.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), payloads.len());
    for receive in &receives {
        assert_eq!(receive.parent_span_id, SpanId::INVALID);
        assert_eq!(receive.name, "receive raw/#");
        assert_success(receive);
    }
    assert!(telemetry.spans_of(SpanKind::Producer).is_empty());
}

/// DESIGN.md "Propagation" (`JsonFields`: "W3C's recommendation for JSON object payloads"; W3C
/// "Trace Context: MQTT" draft, MQTT 3.1.1 section: `traceparent` as a top-level member of a
/// JSON object payload). The publisher adds `traceparent` to a JSON object, keeping its other
/// members; a subscriber with `JsonFields` continues the trace. Payloads that are not JSON
/// objects are sent unchanged, and their receive spans start new traces.
#[tokio::test(flavor = "multi_thread")]
async fn json_fields_continue_the_trace_for_json_objects_only() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let json_fields = || {
        telemetry
            .builder()
            .v4_propagation(V4Propagation::JsonFields)
            .build()
    };
    let (_sub, mut sub_loop) = subscriber(&broker, json_fields(), "json/#").await;
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"temp":21.5,"unit":"C"}"#.to_vec(),
        b"21.5".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{not json".to_vec(),
        vec![0x00, 0x7b],
    ];
    publish_all(&broker, json_fields(), "json", &payloads).await;
    let messages = next_messages(&mut sub_loop, payloads.len()).await;
    let producers = producers_by_topic(&telemetry);

    for (publish, delivery) in &messages {
        let index: usize = publish.topic["json/".len()..].parse().unwrap();
        let producer = &producers[&publish.topic];
        if index == 0 {
            let value: serde_json::Value =
                serde_json::from_slice(&publish.payload).expect("still JSON");
            assert_eq!(value["traceparent"], traceparent_of(producer));
            assert_eq!(value["temp"], 21.5);
            assert_eq!(value["unit"], "C");
            assert_eq!(value.as_object().unwrap().len(), 3, "{value}");
            assert!(delivery.creation_context().is_some());
        } else {
            assert_eq!(
                publish.payload.to_vec(),
                payloads[index],
                "{}",
                publish.topic
            );
            assert!(delivery.creation_context().is_none(), "{}", publish.topic);
        }
    }
    let receives = telemetry.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), payloads.len());
    for receive in &receives {
        let topic = destination(receive).unwrap();
        let producer = &producers[&topic];
        if topic == "json/0" {
            assert_eq!(receive.parent_span_id, producer.span_context.span_id());
            assert_eq!(
                receive.span_context.trace_id(),
                producer.span_context.trace_id()
            );
        } else {
            assert_eq!(receive.parent_span_id, SpanId::INVALID, "{topic}");
            assert_ne!(
                receive.span_context.trace_id(),
                producer.span_context.trace_id()
            );
        }
    }
}

/// DESIGN.md "Propagation" ("Receivers always recognise an envelope and strip it"; `None` is a
/// receiver's default too): a subscriber with `V4Propagation::JsonFields` still strips an
/// envelope and continues its trace, and a subscriber with the default `None` does not read
/// `traceparent` members from JSON payloads (the payload reaches it unchanged, in a new trace).
#[tokio::test(flavor = "multi_thread")]
async fn receivers_strip_envelopes_whatever_their_mode() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_json_sub, mut json_loop) = subscriber(
        &broker,
        telemetry
            .builder()
            .v4_propagation(V4Propagation::JsonFields)
            .build(),
        "mixed/envelope",
    )
    .await;
    let (_none_sub, mut none_loop) =
        subscriber(&broker, telemetry.instrumentation(), "mixed/json").await;

    let envelope = telemetry
        .builder()
        .v4_propagation(V4Propagation::Envelope)
        .build();
    let (publisher, mut pub_loop) =
        TracedClient::with_instrumentation(options(&broker, "pub"), 10, envelope);
    publisher
        .publish(
            "mixed/envelope",
            QoS::AtLeastOnce,
            false,
            &br#"{"a":1}"#[..],
        )
        .await
        .unwrap();
    let json = telemetry
        .builder()
        .v4_propagation(V4Propagation::JsonFields)
        .build();
    let (json_publisher, mut json_pub_loop) =
        TracedClient::with_instrumentation(options(&broker, "pub"), 10, json);
    json_publisher
        .publish("mixed/json", QoS::AtLeastOnce, false, &br#"{"a":1}"#[..])
        .await
        .unwrap();
    poll_until(&mut pub_loop, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    poll_until(&mut json_pub_loop, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;

    let (enveloped, delivery) = next_messages(&mut json_loop, 1).await.remove(0);
    assert_eq!(&enveloped.payload[..], br#"{"a":1}"#);
    assert!(delivery.creation_context().is_some());
    let (json_message, delivery) = next_messages(&mut none_loop, 1).await.remove(0);
    let value: serde_json::Value = serde_json::from_slice(&json_message.payload).unwrap();
    assert!(value.get("traceparent").is_some(), "{value}");
    assert!(
        delivery.creation_context().is_none(),
        "None does not read JSON members"
    );

    let producers = producers_by_topic(&telemetry);
    let receives: HashMap<String, SpanData> = telemetry
        .spans_of(SpanKind::Client)
        .into_iter()
        .map(|span| (destination(&span).unwrap(), span))
        .collect();
    assert_eq!(
        receives["mixed/envelope"].parent_span_id,
        producers["mixed/envelope"].span_context.span_id()
    );
    assert_eq!(receives["mixed/json"].parent_span_id, SpanId::INVALID);
}
