//! MQTT 5 traced clients against a real mosquitto: spans, propagation, correlation.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::telemetry::{
    Telemetry, assert_error, assert_success, attribute, packet_id, traceparent_of,
};
use common::{Broker, unique_client_id};
use opentelemetry::Context;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span as _, SpanId, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, Publish, PublishProperties};
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use rumqttc_opentelemetry::{Delivery, Instrumentation, ParentMode};
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

/// DESIGN.md "Spans" and "Propagation": a publish and its receive share one trace; with the
/// default `ParentMode::CreationContext` the receive span's parent is the publish span (W3C
/// Trace Context section 3.2, `traceparent` parent-id; W3C "Trace Context: MQTT" draft: the
/// context rides in MQTT 5 user properties, MQTT 5 section 3.3.2.3.7).
#[tokio::test(flavor = "multi_thread")]
async fn publish_and_receive_share_one_trace() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();

    let (subscriber, mut sub_loop) = TracedClient::with_instrumentation(
        options(&broker, "sub"),
        10,
        telemetry.instrumentation(),
    );
    subscriber
        .subscribe("home/+/temperature", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut sub_loop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;

    let (publisher, mut pub_loop) = TracedClient::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    publisher
        .publish("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    poll_until(&mut pub_loop, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    let publish = poll_until(&mut sub_loop, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&publish.payload[..], b"21.5");

    let producer = telemetry.spans_of(SpanKind::Producer);
    let consumer = telemetry.spans_of(SpanKind::Client);
    assert_eq!(producer.len(), 1, "{producer:#?}");
    assert_eq!(consumer.len(), 1, "{consumer:#?}");
    assert_eq!(producer[0].name, "publish home/kitchen/temperature");
    assert_eq!(consumer[0].name, "receive home/+/temperature");
    assert_eq!(producer[0].status, Status::Unset);
    assert_eq!(
        consumer[0].span_context.trace_id(),
        producer[0].span_context.trace_id()
    );
    assert_eq!(
        consumer[0].parent_span_id,
        producer[0].span_context.span_id()
    );
    assert_eq!(
        attribute(&producer[0], "messaging.mqtt.packet_id"),
        Some(&1_i64.into())
    );
    assert_eq!(pub_loop.open_publish_spans(), 0);
}

/// Polls until an incoming PUBLISH, bounded by [`DEADLINE`]; returns it with its delivery.
async fn next_message(eventloop: &mut TracedEventLoop) -> (Publish, Delivery) {
    timeout(DEADLINE, async {
        loop {
            let (event, delivery) = eventloop.poll_traced().await.expect("connection");
            if let Event::Incoming(Packet::Publish(publish)) = event {
                return (
                    publish,
                    delivery.expect("a delivery for every incoming PUBLISH"),
                );
            }
        }
    })
    .await
    .expect("a message within the deadline")
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

/// A connected traced client (CONNACK received).
async fn publisher(
    broker: &Broker,
    instrumentation: Instrumentation,
) -> (TracedClient, TracedEventLoop) {
    let (client, mut eventloop) =
        TracedClient::with_instrumentation(options(broker, "pub"), 10, instrumentation);
    poll_until(&mut eventloop, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, eventloop)
}

fn is_puback(event: &Event) -> Option<PubAckReason> {
    match event {
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    }
}

fn only(spans: Vec<SpanData>) -> SpanData {
    assert_eq!(spans.len(), 1, "{spans:#?}");
    spans.into_iter().next().unwrap()
}

/// DESIGN.md "Spans" (consumer parent mode `Link`, "semconv's strict form: child of the ambient
/// context, link to the creation context"); OpenTelemetry messaging semconv, "Context
/// propagation" / span links. Without an ambient span the receive span is a root of a new trace
/// and carries one link: the publish span.
#[tokio::test(flavor = "multi_thread")]
async fn link_mode_receive_span_is_a_root_linked_to_the_publish() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let link_mode = telemetry.builder().parent_mode(ParentMode::Link).build();
    let (_sub, mut sub_loop) = subscriber(&broker, link_mode, "link/#").await;
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("link/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    poll_until(&mut pub_loop, is_puback).await;
    let (_, delivery) = next_message(&mut sub_loop).await;

    let producer = only(telemetry.spans_of(SpanKind::Producer));
    let receive = only(telemetry.spans_of(SpanKind::Client));
    assert_eq!(receive.name, "receive link/#");
    assert_eq!(receive.parent_span_id, SpanId::INVALID, "a root span");
    assert_ne!(
        receive.span_context.trace_id(),
        producer.span_context.trace_id(),
        "a new trace"
    );
    let links = &receive.links.links;
    assert_eq!(links.len(), 1, "{links:#?}");
    assert_eq!(
        links[0].span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(
        links[0].span_context.span_id(),
        producer.span_context.span_id()
    );
    let creation = delivery.creation_context().expect("the creation context");
    assert_eq!(
        creation.span().span_context().span_id(),
        producer.span_context.span_id()
    );
    assert_eq!(
        delivery.receive_span_context().span_id(),
        receive.span_context.span_id()
    );
}

/// DESIGN.md "Spans" (`ParentMode::Link`: "child of the ambient context, link to the creation
/// context"). Polled inside an ambient span, the receive span is that span's child and links
/// to the publish span.
#[tokio::test(flavor = "multi_thread")]
async fn link_mode_receive_span_is_a_child_of_the_ambient_span() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let link_mode = telemetry.builder().parent_mode(ParentMode::Link).build();
    let (_sub, mut sub_loop) = subscriber(&broker, link_mode, "ambient/#").await;
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("ambient/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    poll_until(&mut pub_loop, is_puback).await;

    let ambient = telemetry.provider.tracer("test").start("ambient");
    let ambient_context = ambient.span_context().clone();
    let cx = Context::current_with_span(ambient);
    next_message(&mut sub_loop).with_context(cx).await;

    let producer = only(telemetry.spans_of(SpanKind::Producer));
    let receive = only(telemetry.spans_of(SpanKind::Client));
    assert_eq!(receive.parent_span_id, ambient_context.span_id());
    assert_eq!(receive.span_context.trace_id(), ambient_context.trace_id());
    let links = &receive.links.links;
    assert_eq!(links.len(), 1, "{links:#?}");
    assert_eq!(
        links[0].span_context.span_id(),
        producer.span_context.span_id()
    );
    assert_eq!(
        links[0].span_context.trace_id(),
        producer.span_context.trace_id()
    );
}

/// DESIGN.md "Spans" (default `ParentMode::CreationContext`: "the producer's span is the
/// parent ...; an ambient span, if any, becomes a link").
#[tokio::test(flavor = "multi_thread")]
async fn creation_context_mode_links_the_ambient_span() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, telemetry.instrumentation(), "cc/#").await;
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("cc/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    poll_until(&mut pub_loop, is_puback).await;

    let ambient = telemetry.provider.tracer("test").start("ambient");
    let ambient_context = ambient.span_context().clone();
    next_message(&mut sub_loop)
        .with_context(Context::current_with_span(ambient))
        .await;

    let producer = only(telemetry.spans_of(SpanKind::Producer));
    let receive = only(telemetry.spans_of(SpanKind::Client));
    assert_eq!(receive.parent_span_id, producer.span_context.span_id());
    assert!(receive.parent_span_is_remote);
    assert_eq!(
        receive.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    let links = &receive.links.links;
    assert_eq!(links.len(), 1, "{links:#?}");
    assert_eq!(links[0].span_context.span_id(), ambient_context.span_id());
}

/// DESIGN.md "Propagation" ("Existing user properties of the message are kept, in order");
/// MQTT 5 section 3.3.2.3.7 (user properties are an ordered list; a name may repeat and the
/// receiver must get them in order); W3C "Trace Context: MQTT" draft (`traceparent` user
/// property). The subscriber receives the publisher's properties unchanged, followed by one
/// `traceparent` equal to the publish span's context.
#[tokio::test(flavor = "multi_thread")]
async fn user_properties_arrive_in_order_with_traceparent_appended() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_sub, mut sub_loop) = subscriber(&broker, telemetry.instrumentation(), "props/#").await;
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    let user_properties = vec![
        ("unit".to_owned(), "celsius".to_owned()),
        ("z".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
        ("z".to_owned(), "3".to_owned()),
    ];
    let properties = PublishProperties {
        user_properties: user_properties.clone(),
        content_type: Some("text/plain".to_owned()),
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties("props/a", QoS::AtLeastOnce, false, "21.5", properties)
        .await
        .unwrap();
    poll_until(&mut pub_loop, is_puback).await;
    let (publish, _) = next_message(&mut sub_loop).await;

    let producer = only(telemetry.spans_of(SpanKind::Producer));
    let received = publish.properties.expect("properties");
    let mut expected = user_properties;
    expected.push(("traceparent".to_owned(), traceparent_of(&producer)));
    assert_eq!(received.user_properties, expected);
    assert_eq!(received.content_type.as_deref(), Some("text/plain"));
    assert_eq!(&publish.payload[..], b"21.5");
}

/// DESIGN.md "Spans": "QoS 0 ends when the event loop writes the PUBLISH" (MQTT 5 section
/// 4.3.1: QoS 0 has no acknowledgement).
#[tokio::test(flavor = "multi_thread")]
async fn qos0_span_ends_when_the_publish_is_written() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("qos0/a", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    assert!(
        telemetry.spans_of(SpanKind::Producer).is_empty(),
        "queued, not written"
    );
    assert_eq!(pub_loop.open_publish_spans(), 1);
    poll_until(&mut pub_loop, |e| {
        matches!(e, Event::Outgoing(Outgoing::Publish(0))).then_some(())
    })
    .await;
    let span = only(telemetry.spans_of(SpanKind::Producer));
    assert_success(&span);
    assert_eq!(packet_id(&span), None, "QoS 0 has no packet id");
    assert_eq!(pub_loop.open_publish_spans(), 0);
}

/// DESIGN.md "Spans": "QoS 1 ends at PUBACK" (MQTT 5 section 4.3.2: the sender owns the message
/// until it receives PUBACK). Nothing is exported when the PUBLISH is written; the span is
/// exported by the poll that returns the PUBACK.
#[tokio::test(flavor = "multi_thread")]
async fn qos1_span_ends_at_puback_not_when_written() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("qos1/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let pkid = poll_until(&mut pub_loop, |e| match e {
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
        _ => None,
    })
    .await;
    assert!(
        telemetry.spans_of(SpanKind::Producer).is_empty(),
        "written, not acknowledged"
    );
    assert_eq!(pub_loop.open_publish_spans(), 1);
    let acked = poll_until(&mut pub_loop, |e| match e {
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.pkid),
        _ => {
            assert!(
                telemetry.spans_of(SpanKind::Producer).is_empty(),
                "ended before PUBACK at {e:?}"
            );
            None
        }
    })
    .await;
    assert_eq!(acked, pkid);
    let span = only(telemetry.spans_of(SpanKind::Producer));
    assert_success(&span);
    assert_eq!(packet_id(&span), Some(i64::from(pkid)));
    assert_eq!(attribute(&span, "messaging.mqtt.qos"), Some(&1_i64.into()));
    assert_eq!(pub_loop.open_publish_spans(), 0);
}

/// DESIGN.md "Spans": "QoS 2 at PUBCOMP" (MQTT 5 section 4.3.3: PUBREC, PUBREL, PUBCOMP; the
/// flow completes with PUBCOMP). Nothing is exported at the PUBLISH, the PUBREC or the PUBREL;
/// the span is exported by the poll that returns the PUBCOMP.
#[tokio::test(flavor = "multi_thread")]
async fn qos2_span_ends_at_pubcomp_not_at_pubrec() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish("qos2/a", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let pkid = poll_until(&mut pub_loop, |e| {
        let producers = telemetry.spans_of(SpanKind::Producer).len();
        seen.push(format!("{e:?}"));
        match e {
            Event::Incoming(Packet::PubComp(comp)) => Some(comp.pkid),
            _ => {
                assert_eq!(producers, 0, "ended before PUBCOMP, events {seen:?}");
                None
            }
        }
    })
    .await;
    assert!(seen.iter().any(|e| e.contains("PubRec")), "{seen:?}");
    assert!(seen.iter().any(|e| e.contains("PubRel")), "{seen:?}");
    let span = only(telemetry.spans_of(SpanKind::Producer));
    assert_success(&span);
    assert_eq!(packet_id(&span), Some(i64::from(pkid)));
    assert_eq!(pub_loop.open_publish_spans(), 0);
}

/// DESIGN.md "Spans" ("MQTT 5 ack reason codes >= 0x80 make the span an error (`error.type` =
/// the reason's name)"; "Real parts": an `acl_file` denying a topic makes mosquitto answer with
/// `NotAuthorized`); MQTT 5 sections 3.4.2.1 (PUBACK reason 0x87) and 3.5.2.1 (PUBREC 0x87).
#[tokio::test(flavor = "multi_thread")]
async fn denied_publish_ends_as_not_authorized() {
    let broker = Broker::builder().acl(&["denied/#"]).start();
    let telemetry = Telemetry::new();
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;

    publisher
        .publish("denied/qos1", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let reason = poll_until(&mut pub_loop, is_puback).await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    let span = only(telemetry.spans_of(SpanKind::Producer));
    assert_eq!(span.name, "publish denied/qos1");
    assert_error(&span, "not_authorized");
    assert_eq!(span.status, Status::error("not_authorized"));

    publisher
        .publish("denied/qos2", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    let reason = poll_until(&mut pub_loop, |e| match e {
        Event::Incoming(Packet::PubRec(rec)) => Some(rec.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubRecReason::NotAuthorized);
    let spans = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(
        spans.len(),
        2,
        "the PUBREC error ends the QoS 2 span: {spans:#?}"
    );
    assert_eq!(spans[1].name, "publish denied/qos2");
    assert_error(&spans[1], "not_authorized");
    assert_eq!(pub_loop.open_publish_spans(), 0);
}

/// DESIGN.md "Spans" ("0x10 'No matching subscribers' is a success: mosquitto sends it for a
/// publish nobody receives"); MQTT 5 section 3.4.2.1 (reason codes below 0x80 are successes).
#[tokio::test(flavor = "multi_thread")]
async fn publish_without_subscribers_is_a_success() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (publisher, mut pub_loop) = publisher(&broker, telemetry.instrumentation()).await;
    publisher
        .publish(
            "nobody/listens",
            QoS::AtLeastOnce,
            false,
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    let reason = poll_until(&mut pub_loop, is_puback).await;
    assert_eq!(reason, PubAckReason::NoMatchingSubscribers);
    let span = only(telemetry.spans_of(SpanKind::Producer));
    assert_success(&span);
    assert_eq!(pub_loop.open_publish_spans(), 0);
}
