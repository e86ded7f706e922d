//! Settle spans against a real mosquitto, for MQTT 3.1.1 and MQTT 5: the CLIENT `ack {destination}`
//! span of a manual acknowledgement (`ack(&publish)` with `set_manual_acks(true)`, and
//! `TracedSubscriber` with `AckPolicy::AfterSuccess`), how it relates to its message, and the
//! `messaging.client.operation.duration` measurement of operation `ack`.
//!
//! The rules cited (OpenTelemetry semantic conventions v1.44, messaging spans):
//! - "Operation types": `settle`, "one or more messages are settled"; "Span kind": settle is
//!   CLIENT; "Span name": `{messaging.operation.name} {destination}`, the destination template
//!   when available (the subscription filter), else the destination name (the topic).
//! - "Consumer spans": "'Settle' spans SHOULD be created for every manually or automatically
//!   triggered settlement operation" and "For each message it accounts for, the 'Settle' span MAY
//!   link to the creation context of the message". The crate's choice (`src/core/settle.rs`):
//!   parent = the context current where `ack` is called, links to the message's receive span and
//!   creation context; the subscriber's worker acknowledges in the message's receive context.
//! - Messaging metrics: `messaging.client.operation.duration`, with `messaging.operation.name`
//!   and `.type` among its attributes.
//!
//! Every exported span of each test is checked for repeated attribute keys (OpenTelemetry common
//! attribute rules: keys are unique).

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::telemetry::{
    Telemetry, assert_unique_attribute_keys, destination, error_type, packet_id, string_attribute,
};
use common::traced::{AbortOnDrop, DEADLINE, wait_until};
use common::{Broker, unique_client_id};
use metric_reader::{MetricReader, Point};
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::SpanData;
use rumqttc_opentelemetry::{Delivery, Instrumentation, InstrumentationBuilder};

const OPERATION_DURATION: &str = "messaging.client.operation.duration";

/// The settle spans among `spans`, in the order they ended.
fn settle_spans(telemetry: &Telemetry) -> Vec<SpanData> {
    telemetry
        .spans()
        .into_iter()
        .filter(|span| {
            string_attribute(span, "messaging.operation.type").as_deref() == Some("settle")
        })
        .collect()
}

/// A span as a link names it.
fn ids(context: &SpanContext) -> (TraceId, SpanId) {
    (context.trace_id(), context.span_id())
}

/// The spans a span links to, in order.
fn links(span: &SpanData) -> Vec<(TraceId, SpanId)> {
    span.links
        .iter()
        .map(|link| ids(&link.span_context))
        .collect()
}

/// A message's creation context (the producer's span).
fn creation(delivery: &Delivery) -> (TraceId, SpanId) {
    ids(delivery
        .creation_context()
        .expect("the message carried its context")
        .span()
        .span_context())
}

/// Asserts what every settle span of a message on `topic` through filter `filter` at QoS `qos`
/// with packet id `pkid` has (semconv "Span kind", "Span name", "Operation types").
#[track_caller]
fn assert_settle(span: &SpanData, filter: &str, topic: &str, qos: i64, pkid: u16) {
    assert_eq!(span.name, format!("ack {filter}"));
    assert_eq!(span.span_kind, SpanKind::Client);
    let text = |key| string_attribute(span, key);
    assert_eq!(text("messaging.operation.type").as_deref(), Some("settle"));
    assert_eq!(text("messaging.operation.name").as_deref(), Some("ack"));
    assert_eq!(text("messaging.system").as_deref(), Some("mqtt"));
    assert_eq!(
        text("messaging.destination.template").as_deref(),
        Some(filter)
    );
    assert_eq!(destination(span).as_deref(), Some(topic));
    assert_eq!(packet_id(span), Some(i64::from(pkid)));
    assert_eq!(
        common::telemetry::int_attribute(span, "messaging.mqtt.qos"),
        Some(qos)
    );
    assert_eq!(error_type(span), None);
}

/// The `messaging.client.operation.duration` points of operation `ack`.
fn ack_points(metrics: &MetricReader) -> Vec<Point> {
    metrics
        .points(OPERATION_DURATION)
        .into_iter()
        .filter(|point| point.attribute("messaging.operation.name") == Some(&Value::from("ack")))
        .collect()
}

/// Waits (bounded) until `n` settle spans have ended.
async fn wait_settle_spans(telemetry: &Telemetry, n: usize) -> Vec<SpanData> {
    wait_until(&format!("{n} settle spans"), || {
        settle_spans(telemetry).len() >= n
    })
    .await;
    settle_spans(telemetry)
}

/// The scenarios, written once; each version's module provides the types and a few helpers
/// (`options`, `propagating`, `incoming`, `pkid`, `QOS0`, `QOS1`, `pub_args`).
macro_rules! settle_scenarios {
    () => {
        use super::*;

        fn options(broker: &Broker, prefix: &str) -> MqttOptions {
            MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port())
        }

        fn incoming(event: Event) -> Option<Publish> {
            match event {
                Event::Incoming(Packet::Publish(publish)) => Some(publish),
                _ => None,
            }
        }

        fn is_suback(event: &Event) -> bool {
            matches!(event, Event::Incoming(Packet::SubAck(_)))
        }

        fn is_connack(event: &Event) -> bool {
            matches!(event, Event::Incoming(Packet::ConnAck(..)))
        }

        fn is_disconnect(event: &Event) -> bool {
            matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect))
        }

        fn pkid(publish: &Publish) -> u16 {
            publish.pkid
        }

        /// A broker, and an instrumentation that records spans and metrics in memory and
        /// carries the context (for MQTT 3.1.1, in the envelope).
        fn recorded() -> (Broker, Telemetry, MetricReader, Instrumentation) {
            let telemetry = Telemetry::new();
            let metrics = MetricReader::new();
            let instrumentation = propagating(telemetry.builder())
                .meter_provider(&metrics.provider)
                .build();
            (Broker::start(), telemetry, metrics, instrumentation)
        }

        fn manual(mut options: MqttOptions) -> MqttOptions {
            options.set_manual_acks(true);
            options
        }

        /// Polls until an incoming PUBLISH, bounded by `DEADLINE`; returns it and its delivery.
        async fn next_publish(eventloop: &mut TracedEventLoop) -> (Publish, Delivery) {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    let (event, delivery) = eventloop.poll_traced().await.expect("connected");
                    if let Some(publish) = incoming(event) {
                        return (publish, delivery.expect("a delivery per PUBLISH"));
                    }
                }
            })
            .await
            .expect("a message within the deadline")
        }

        /// Polls until the SUBACK (the CONNACK and what else comes on the way).
        async fn until_suback(eventloop: &mut TracedEventLoop) {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    let event = eventloop.poll().await.expect("connected");
                    if is_suback(&event) {
                        return;
                    }
                }
            })
            .await
            .expect("a SUBACK within the deadline")
        }

        /// A traced client subscribed to `filter` at `qos`.
        async fn subscribed(
            options: MqttOptions,
            instrumentation: Instrumentation,
            filter: &str,
            qos: QoS,
        ) -> (TracedClient, TracedEventLoop) {
            let (client, mut eventloop) =
                TracedClient::with_instrumentation(options, 10, instrumentation);
            client
                .subscribe(filter, qos)
                .await
                .expect("subscribe queued");
            until_suback(&mut eventloop).await;
            (client, eventloop)
        }

        /// A traced publisher whose event loop runs in a task.
        fn publisher(
            broker: &Broker,
            instrumentation: Instrumentation,
        ) -> (TracedClient, AbortOnDrop<()>) {
            let (client, mut eventloop) = TracedClient::with_instrumentation(
                options(broker, "settle-pub"),
                10,
                instrumentation,
            );
            let task = tokio::spawn(async move {
                loop {
                    if eventloop.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
            (client, AbortOnDrop(task))
        }

        /// `mosquitto_pub` of `message` to `topic` at QoS `qos` (no trace context).
        fn mosquitto_pub(broker: &Broker, topic: &str, qos: &str, message: &str) {
            let mut args = pub_args();
            args.extend(["-q", qos, "-t", topic, "-m", message]);
            let output = tokio::task::block_in_place(|| broker.mosquitto_pub(&args));
            assert!(
                output.status.success(),
                "mosquitto_pub {args:?}: {output:?}"
            );
        }

        /// A manual `ack` of each of N QoS 1 messages records one settle span `ack jobs/+` per
        /// message, linked to the message's receive span and to its creation context (semconv
        /// "Consumer spans": a settle span MAY link to the creation context), a child of the
        /// context current where `ack` is called (an application span for the first, none for
        /// the others); and one `messaging.client.operation.duration` measurement of operation
        /// `ack`, type `settle`, per message.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn manual_acks_settle_each_message_linked_to_its_receive() {
            const N: usize = 5;
            let (broker, telemetry, metrics, instrumentation) = recorded();
            let (client, mut eventloop) = subscribed(
                manual(options(&broker, "settle-sub")),
                instrumentation.clone(),
                "jobs/+",
                QOS1,
            )
            .await;
            let (publisher, _driver) = publisher(&broker, instrumentation);
            for i in 0..N {
                publisher
                    .publish(format!("jobs/{i}"), QOS1, false, format!("job {i}"))
                    .await
                    .expect("publish queued");
            }
            let mut received = Vec::new();
            for _ in 0..N {
                received.push(next_publish(&mut eventloop).await);
            }
            let tracer = telemetry.provider.tracer("app");
            let handling = Context::current_with_span(tracer.start("handle job"));
            client
                .ack(&received[0].0)
                .with_context(handling.clone())
                .await
                .expect("ack queued");
            for (publish, _) in &received[1..] {
                client.ack(publish).await.expect("ack queued");
            }
            handling.span().end();

            let settled = settle_spans(&telemetry);
            assert_eq!(settled.len(), N, "{settled:#?}");
            let receives: Vec<SpanData> = telemetry
                .spans_of(SpanKind::Client)
                .into_iter()
                .filter(|span| span.name == "receive jobs/+")
                .collect();
            assert_eq!(receives.len(), N, "{receives:#?}");
            for (i, ((publish, delivery), span)) in received.iter().zip(&settled).enumerate() {
                assert_settle(span, "jobs/+", &publish_topic(publish), 1, pkid(publish));
                let receive = delivery.receive_span_context();
                assert!(
                    receives
                        .iter()
                        .any(|r| r.span_context.span_id() == receive.span_id()),
                    "the link names an exported receive span"
                );
                assert_eq!(links(span), [ids(receive), creation(delivery)]);
                let parent = if i == 0 {
                    handling.span().span_context().span_id()
                } else {
                    SpanId::INVALID
                };
                assert_eq!(span.parent_span_id, parent, "the ambient context");
            }
            let points = ack_points(&metrics);
            assert_eq!(
                points.iter().map(|p| p.count).sum::<u64>(),
                N as u64,
                "{points:#?}"
            );
            for point in &points {
                let text = |key| point.attribute(key).map(|v| v.as_str().into_owned());
                assert_eq!(text("messaging.operation.type").as_deref(), Some("settle"));
                assert_eq!(
                    text("messaging.destination.template").as_deref(),
                    Some("jobs/+")
                );
                assert_eq!(text("messaging.system").as_deref(), Some("mqtt"));
                assert_eq!(text("server.address").as_deref(), Some(broker.host()));
                assert_eq!(point.attribute("messaging.mqtt.qos"), Some(&Value::I64(1)));
                assert_eq!(point.attribute("error.type"), None);
            }
            assert_unique_attribute_keys(&telemetry.spans());
        }

        /// No settle span for a QoS 0 message (it has no acknowledgement, so there is no
        /// settlement operation, semconv "Operation types"), nor when rumqttc acknowledges by
        /// itself (manual acknowledgements off: semconv's SHOULD for automatically triggered
        /// settlements is not followed, by choice, see `src/core/settle.rs`); no `ack`
        /// measurement either.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn no_settle_span_for_qos_0_or_automatic_acks() {
            let (broker, telemetry, metrics, instrumentation) = recorded();
            let (manual_client, mut manual_loop) = subscribed(
                manual(options(&broker, "settle-q0")),
                instrumentation.clone(),
                "q0/#",
                QOS0,
            )
            .await;
            let (automatic, mut automatic_loop) = subscribed(
                options(&broker, "settle-auto"),
                instrumentation,
                "auto/#",
                QOS1,
            )
            .await;
            mosquitto_pub(&broker, "q0/a", "0", "fire and forget");
            mosquitto_pub(&broker, "auto/a", "1", "acknowledged by rumqttc");
            let (q0, _) = next_publish(&mut manual_loop).await;
            let (q1, _) = next_publish(&mut automatic_loop).await;
            assert!(pkid(&q1) > 0, "a QoS 1 message");
            manual_client.ack(&q0).await.expect("nothing to send");
            automatic.ack(&q1).await.expect("ack queued");
            assert_eq!(
                telemetry.spans_of(SpanKind::Client).len(),
                2,
                "two receive spans"
            );
            assert!(
                settle_spans(&telemetry).is_empty(),
                "{:#?}",
                settle_spans(&telemetry)
            );
            assert!(ack_points(&metrics).is_empty());
            assert_unique_attribute_keys(&telemetry.spans());
        }

        /// A packet id names a message only on its connection (MQTT 3.1.1 section 2.3.1, MQTT 5
        /// section 2.2.1: it is free again once acknowledged, and a new session starts anew).
        /// Message A (packet id 1) is left unacknowledged; the broker restarts without the
        /// session; message B gets packet id 1 on the new connection. The ack of A (the
        /// application's old `Publish`) records its settle span without a link: semconv links
        /// a settle span to the message it accounts for, and B is not that message. The ack of B
        /// links to B's receive span.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_ack_after_a_reconnect_does_not_link_to_another_message() {
            let mut broker = Broker::start();
            let telemetry = Telemetry::new();
            let (client, mut eventloop) = subscribed(
                manual(options(&broker, "settle-reconnect")),
                telemetry.instrumentation(),
                "orders/#",
                QOS1,
            )
            .await;
            mosquitto_pub(&broker, "orders/a", "1", "A");
            let (a, _) = next_publish(&mut eventloop).await;
            tokio::task::block_in_place(|| broker.restart());
            // Through the connection errors to the new connection, without session.
            tokio::time::timeout(DEADLINE, async {
                loop {
                    match eventloop.poll().await {
                        Ok(event) if is_connack(&event) => return,
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
            .await
            .expect("reconnected within the deadline");
            client
                .subscribe("orders/#", QOS1)
                .await
                .expect("subscribe queued");
            until_suback(&mut eventloop).await;
            mosquitto_pub(&broker, "orders/b", "1", "B");
            let (b, b_delivery) = next_publish(&mut eventloop).await;
            assert_eq!(
                pkid(&a),
                pkid(&b),
                "the scenario needs the packet id reused"
            );

            client.ack(&a).await.expect("ack queued");
            client.ack(&b).await.expect("ack queued");
            let settled = settle_spans(&telemetry);
            assert_eq!(settled.len(), 2, "{settled:#?}");
            assert_settle(&settled[0], "orders/#", "orders/a", 1, pkid(&a));
            assert!(links(&settled[0]).is_empty(), "{:#?}", settled[0].links);
            assert_settle(&settled[1], "orders/#", "orders/b", 1, pkid(&b));
            assert_eq!(links(&settled[1]), [ids(b_delivery.receive_span_context())]);
            assert_unique_attribute_keys(&telemetry.spans());
        }

        /// `TracedSubscriber` with `AckPolicy::AfterSuccess` settles the messages whose handler
        /// succeeded, each with a settle span `ack tasks/#`: a child of the message's receive
        /// span (the worker acknowledges in the message's receive context, the ambient context
        /// of its process spans too), linked to the producer's span (semconv: MAY link to the
        /// creation context). The failed message is not acknowledged and has none.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn after_success_settles_successful_messages_only() {
            let (broker, telemetry, metrics, instrumentation) = recorded();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options(&broker, "settle-worker"),
                10,
                instrumentation.clone(),
            )
            .ack_policy(AckPolicy::AfterSuccess)
            .route("tasks/#", QOS1, |message: Message| async move {
                if message.payload().as_ref() == b"bad" {
                    return Err(std::io::Error::other("a bad task").into());
                }
                Ok(())
            })
            .expect("a valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            let (publisher, _driver) = publisher(&broker, instrumentation);
            for payload in ["ok-1", "bad", "ok-2"] {
                publisher
                    .publish("tasks/a", QOS1, false, payload)
                    .await
                    .expect("publish queued");
            }
            // Acknowledgements go in arrival order: once ok-2 is settled, bad was decided.
            let settled = wait_settle_spans(&telemetry, 2).await;
            subscriber.shutdown().await;
            assert_eq!(
                settle_spans(&telemetry).len(),
                2,
                "{:#?}",
                settle_spans(&telemetry)
            );
            let spans = telemetry.spans();
            let receive_of = |pkid: i64| {
                spans
                    .iter()
                    .find(|s| s.name == "receive tasks/#" && packet_id(s) == Some(pkid))
                    .expect("the message's receive span")
            };
            let failed = spans
                .iter()
                .find(|s| s.name == "process tasks/#" && error_type(s).is_some())
                .expect("the failed run");
            for span in &settled {
                let pkid = packet_id(span).expect("a packet id");
                assert_settle(span, "tasks/#", "tasks/a", 1, pkid as u16);
                assert_ne!(Some(pkid), packet_id(failed), "not the failed message");
                let receive = receive_of(pkid);
                assert_eq!(span.parent_span_id, receive.span_context.span_id());
                assert_eq!(
                    span.span_context.trace_id(),
                    receive.span_context.trace_id()
                );
                // The producer's span: the receive span's parent (`ParentMode::CreationContext`);
                // the publisher may not have had its PUBACK yet, so its span is not looked up.
                assert_ne!(receive.parent_span_id, SpanId::INVALID);
                assert_eq!(
                    links(span),
                    [(receive.span_context.trace_id(), receive.parent_span_id)]
                );
            }
            assert_eq!(ack_points(&metrics).iter().map(|p| p.count).sum::<u64>(), 2);
            assert_unique_attribute_keys(&spans);
        }

        /// The default `AckPolicy::AfterHandler` acknowledges every message without a settle
        /// span: semconv's SHOULD for automatically triggered settlements is not followed, by
        /// choice (see `AckPolicy`: a span per message that says nothing the process span does
        /// not); `shutdown` sends every acknowledgement before it returns.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn after_handler_records_no_settle_span() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options(&broker, "settle-default"),
                10,
                telemetry.instrumentation(),
            )
            .route("tasks/#", QOS1, |_message: Message| async move { Ok(()) })
            .expect("a valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            for payload in ["1", "2", "3"] {
                mosquitto_pub(&broker, "tasks/a", "1", payload);
            }
            telemetry.wait_spans(SpanKind::Consumer, "tasks/a", 3).await;
            subscriber.shutdown().await;
            assert!(
                settle_spans(&telemetry).is_empty(),
                "{:#?}",
                settle_spans(&telemetry)
            );
            assert_unique_attribute_keys(&telemetry.spans());
        }

        /// The blocking twin: `TracedSyncClient::ack` records the same CLIENT settle span
        /// (semconv "Span kind", "Span name"), linked to the receive span of the message its
        /// `TracedConnection` handed out on another thread.
        #[test]
        fn the_blocking_twin_settles_with_a_span() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (client, mut connection) = TracedSyncClient::with_instrumentation(
                manual(options(&broker, "settle-sync")),
                10,
                telemetry.instrumentation(),
            );
            let (tx, rx) = mpsc::channel();
            let receiver = thread::spawn(move || {
                // rumqttc's event loop keeps a sender of its own request channel: the
                // connection ends with the DISCONNECT the test sends, not with the client.
                while let Ok(polled) = connection.recv_traced() {
                    let Ok((event, delivery)) = polled else {
                        continue;
                    };
                    if is_disconnect(&event) {
                        return;
                    }
                    let suback = is_suback(&event);
                    let message = incoming(event).zip(delivery);
                    if (suback || message.is_some()) && tx.send(message).is_err() {
                        return;
                    }
                }
            });
            client.subscribe("sync/#", QOS1).expect("subscribe queued");
            assert!(
                rx.recv_timeout(DEADLINE).expect("a SUBACK").is_none(),
                "the SUBACK first"
            );
            let output = broker.mosquitto_pub(
                &[&pub_args()[..], &["-q", "1", "-t", "sync/a", "-m", "x"]].concat(),
            );
            assert!(output.status.success(), "{output:?}");
            let (publish, delivery) = rx
                .recv_timeout(DEADLINE)
                .expect("a message")
                .expect("a PUBLISH");
            client.ack(&publish).expect("ack queued");
            client.disconnect().expect("disconnect queued");
            receiver.join().expect("the receiving thread");
            let settled = settle_spans(&telemetry);
            assert_eq!(settled.len(), 1, "{settled:#?}");
            assert_settle(&settled[0], "sync/#", "sync/a", 1, pkid(&publish));
            assert_eq!(links(&settled[0]), [ids(delivery.receive_span_context())]);
            assert_unique_attribute_keys(&telemetry.spans());
        }
    };
}

mod v4 {
    use rumqttc::{Event, MqttOptions, Packet, Publish, QoS};
    use rumqttc_opentelemetry::V4Propagation;
    use rumqttc_opentelemetry::v4::{
        AckPolicy, Message, TracedClient, TracedEventLoop, TracedSubscriber, TracedSyncClient,
    };

    const QOS0: QoS = QoS::AtMostOnce;
    const QOS1: QoS = QoS::AtLeastOnce;

    /// MQTT 3.1.1 carries the context in the payload envelope.
    fn propagating(builder: super::InstrumentationBuilder) -> super::InstrumentationBuilder {
        builder.v4_propagation(V4Propagation::Envelope)
    }

    fn pub_args() -> Vec<&'static str> {
        vec!["-V", "mqttv311"]
    }

    fn publish_topic(publish: &Publish) -> String {
        publish.topic.clone()
    }

    settle_scenarios!();
}

mod v5 {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
    use rumqttc::v5::{Event, MqttOptions};
    use rumqttc_opentelemetry::v5::{
        AckPolicy, Message, TracedClient, TracedEventLoop, TracedSubscriber, TracedSyncClient,
    };

    const QOS0: QoS = QoS::AtMostOnce;
    const QOS1: QoS = QoS::AtLeastOnce;

    /// MQTT 5 carries the context in user properties (the default).
    fn propagating(builder: super::InstrumentationBuilder) -> super::InstrumentationBuilder {
        builder
    }

    fn pub_args() -> Vec<&'static str> {
        vec!["-V", "mqttv5"]
    }

    fn publish_topic(publish: &Publish) -> String {
        String::from_utf8_lossy(&publish.topic).into_owned()
    }

    settle_scenarios!();
}
