//! The traced clients and the roles on a second broker implementation, rumqttd 0.20 (the broker
//! of the rumqtt project, next to rumqttc), next to mosquitto: the same scenarios, written once,
//! run on both brokers for MQTT 3.1.1 and MQTT 5. What rumqttd does not support is not run on
//! it, and the README's broker table says so; where rumqttd behaves differently, the scenario
//! pins rumqttd's behaviour, so the table stays true.
//!
//! Scenarios (each checks DESIGN.md "Spans" and "Propagation"):
//! - QoS 0, 1 and 2: each publish span ends successfully (QoS 1 at PUBACK, QoS 2 at PUBCOMP),
//!   and the subscriber's process span is a child of it, in the same trace (MQTT 5: user
//!   properties; MQTT 3.1.1: the envelope);
//! - MQTT 5: the application's user properties arrive unaltered and in order, next to the
//!   propagation fields (MQTT 5 section 3.3.2.3.7, [MQTT-3.3.2-17]);
//! - MQTT 5: the Receive Maximum the broker announces in CONNACK (section 3.2.2.3.3);
//! - a retained message reaches a late subscriber (section 3.3.1.3);
//! - a shared subscription splits messages between two subscribers (MQTT 5 section 4.8.2), with
//!   `messaging.consumer.group.name` on the process spans;
//! - a persistent session keeps QoS 1 messages for an offline subscriber (section 4.1).

mod common;
#[path = "common/rumqttd.rs"]
mod rumqttd_broker;

use std::sync::{Arc, Mutex};

use common::telemetry::{Telemetry, assert_success, assert_unique_attribute_keys};
use common::traced::{DEADLINE, wait_until};
use common::unique_client_id;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use rumqttd_broker::{AnyBroker, BrokerKind};
use tokio::time::timeout;

#[test]
#[ignore = "the rumqttd child process of tests/common/rumqttd.rs"]
fn rumqttd_broker_process() {
    rumqttd_broker::serve_from_env();
}

/// What a collecting handler reports: topic, payload, retained.
type Seen = (String, Vec<u8>, bool);

/// The scenarios shared by both MQTT versions; `kit` is the version's module, `BROKER` the
/// broker kind.
macro_rules! shared_scenarios {
    () => {
        use super::*;
        use kit::{Message, QoS, TracedPublisher, TracedSubscriber};

        fn options(broker: &AnyBroker, id: &str) -> kit::MqttOptions {
            kit::options(id, broker.port(kit::VERSION))
        }

        fn collector(
            tx: Arc<Mutex<Vec<Seen>>>,
        ) -> impl Fn(Message) -> std::future::Ready<kit::HandlerResult> + Send + Sync + 'static {
            move |message| {
                tx.lock().unwrap().push((
                    message.topic().to_string(),
                    message.payload().to_vec(),
                    message.retained(),
                ));
                std::future::ready(Ok(()))
            }
        }

        async fn subscriber(
            broker: &AnyBroker,
            telemetry: &Telemetry,
            options: kit::MqttOptions,
            filter: &str,
        ) -> (TracedSubscriber, Arc<Mutex<Vec<Seen>>>) {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let _ = broker;
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options,
                10,
                kit::instrumentation(telemetry),
            )
            .route(filter, QoS::AtLeastOnce, collector(Arc::clone(&seen)))
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            (subscriber, seen)
        }

        async fn publisher(broker: &AnyBroker, telemetry: &Telemetry) -> TracedPublisher {
            let publisher = TracedPublisher::with_instrumentation(
                options(broker, &unique_client_id("pub")),
                100,
                kit::instrumentation(telemetry),
            );
            assert!(publisher.wait_connected().await, "publisher connects");
            publisher
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn every_qos_ends_its_span_and_continues_the_trace() {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let (subscriber, seen) = subscriber(
                &broker,
                &telemetry,
                options(&broker, &unique_client_id("sub")),
                "q/#",
            )
            .await;
            let publisher = publisher(&broker, &telemetry).await;
            for (qos, topic) in [
                (QoS::AtMostOnce, "q/0"),
                (QoS::AtLeastOnce, "q/1"),
                (QoS::ExactlyOnce, "q/2"),
            ] {
                publisher
                    .publish_confirmed(topic, qos, false, "21.5")
                    .await
                    .expect("the publish ends successfully");
                let produced = telemetry.wait_spans(SpanKind::Producer, topic, 1).await;
                let processed = telemetry.wait_spans(SpanKind::Consumer, topic, 1).await;
                assert_success(&produced[0]);
                assert_success(&processed[0]);
                assert_eq!(
                    processed[0].span_context.trace_id(),
                    produced[0].span_context.trace_id(),
                    "{topic}: one trace"
                );
                assert_eq!(
                    processed[0].parent_span_id,
                    produced[0].span_context.span_id()
                );
            }
            wait_until("three messages", || seen.lock().unwrap().len() == 3).await;
            assert!(
                seen.lock()
                    .unwrap()
                    .iter()
                    .all(|(_, payload, _)| payload == b"21.5")
            );
            assert_unique_attribute_keys(&telemetry.spans());
            publisher.shutdown().await;
            subscriber.shutdown().await;
        }

        /// MQTT section 4.1: a session with Clean Session 0 (3.1.1) / Clean Start 0 and a
        /// Session Expiry Interval (5) keeps its subscription and QoS 1 messages while the client
        /// is away. Five QoS 1 messages are published while the subscriber is offline; after it
        /// comes back, a marker is published: returns the topics it got up to the marker. Each
        /// of them continues its publisher's trace.
        async fn offline_subscriber_scenario() -> Vec<String> {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let id = unique_client_id("offline");
            let persistent = || {
                let mut options = options(&broker, &id);
                kit::persistent(&mut options);
                options
            };
            let (first, _) = subscriber(&broker, &telemetry, persistent(), "away/#").await;
            first.shutdown().await;
            let publisher = publisher(&broker, &telemetry).await;
            for i in 0..5 {
                publisher
                    .publish_confirmed(format!("away/{i}"), QoS::AtLeastOnce, false, "x")
                    .await
                    .expect("acknowledged");
            }
            let (second, seen) = subscriber(&broker, &telemetry, persistent(), "away/#").await;
            publisher
                .publish_confirmed("away/marker", QoS::AtLeastOnce, false, "after")
                .await
                .expect("acknowledged");
            wait_until("the marker", || {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|(topic, _, _)| topic == "away/marker")
            })
            .await;
            let topics: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _, _)| t.clone())
                .collect();
            for topic in &topics {
                let processed = telemetry.wait_spans(SpanKind::Consumer, topic, 1).await;
                let produced = telemetry.spans_on(SpanKind::Producer, topic);
                assert_eq!(
                    processed[0].span_context.trace_id(),
                    produced[0].span_context.trace_id()
                );
            }
            publisher.shutdown().await;
            second.shutdown().await;
            topics
        }

        fn queued_topics() -> Vec<String> {
            (0..5)
                .map(|i| format!("away/{i}"))
                .chain(["away/marker".to_owned()])
                .collect()
        }

        /// MQTT section 3.3.1.3: a retained message is sent to a subscriber that subscribes
        /// later, with RETAIN = 1, and continues the publisher's trace.
        async fn retained_message_scenario() -> (Vec<Seen>, Vec<SpanData>, Vec<SpanData>) {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let publisher = publisher(&broker, &telemetry).await;
            publisher
                .publish_confirmed("kept/state", QoS::AtLeastOnce, true, "on")
                .await
                .expect("acknowledged");
            let (late, seen) = subscriber(
                &broker,
                &telemetry,
                options(&broker, &unique_client_id("late")),
                "kept/#",
            )
            .await;
            // Time for a retained message to arrive; with none, the wait ends at the deadline
            // of a second message published after the subscription.
            publisher
                .publish_confirmed("kept/marker", QoS::AtLeastOnce, false, "after")
                .await
                .expect("acknowledged");
            wait_until("the marker", || {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|(topic, _, _)| topic == "kept/marker")
            })
            .await;
            let seen = seen.lock().unwrap().clone();
            let produced = telemetry.spans_on(SpanKind::Producer, "kept/state");
            let processed = telemetry.spans_on(SpanKind::Consumer, "kept/state");
            publisher.shutdown().await;
            late.shutdown().await;
            (seen, produced, processed)
        }

        /// A shared subscription `$share/g/{filter}` on two subscribers (MQTT 5 section 4.8.2;
        /// brokers offer it to MQTT 3.1.1 clients too): each of 20 messages is processed by one
        /// of them; returns how many each processed.
        async fn shared_subscription_scenario() -> (usize, usize) {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let (a, seen_a) = subscriber(
                &broker,
                &telemetry,
                options(&broker, &unique_client_id("share-a")),
                "$share/g/jobs/#",
            )
            .await;
            let (b, seen_b) = subscriber(
                &broker,
                &telemetry,
                options(&broker, &unique_client_id("share-b")),
                "$share/g/jobs/#",
            )
            .await;
            let publisher = publisher(&broker, &telemetry).await;
            for i in 0..20 {
                publisher
                    .publish_confirmed(format!("jobs/{i}"), QoS::AtLeastOnce, false, "job")
                    .await
                    .expect("acknowledged");
            }
            let counts = || (seen_a.lock().unwrap().len(), seen_b.lock().unwrap().len());
            wait_until("20 messages processed", || {
                let (x, y) = counts();
                x + y >= 20
            })
            .await;
            for span in telemetry.spans_of(SpanKind::Consumer) {
                assert_eq!(
                    common::telemetry::string_attribute(&span, "messaging.consumer.group.name")
                        .as_deref(),
                    Some("g")
                );
                assert_eq!(span.name, "process jobs/#");
            }
            publisher.shutdown().await;
            a.shutdown().await;
            b.shutdown().await;
            let (x, y) = counts();
            assert_eq!(x + y, 20, "each message processed once");
            (x, y)
        }

        /// Two routes of one subscriber whose filters overlap (`ov/+/t` and `ov/#`), one message
        /// matching both, then a marker matching `ov/#` only: returns (route, topic) of every
        /// handler run up to the marker, sorted. The roles run each route once per message it
        /// matches; how many copies arrive is the broker's choice for MQTT 3.1.1 (one on
        /// mosquitto) and follows the subscription identifiers for MQTT 5 (section 3.3.4).
        async fn overlapping_routes_scenario() -> Vec<(String, String)> {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let runs = Arc::new(Mutex::new(Vec::new()));
            let handler = |runs: Arc<Mutex<Vec<(String, String)>>>| {
                move |message: Message| {
                    runs.lock()
                        .unwrap()
                        .push((message.route().to_owned(), message.topic().to_string()));
                    std::future::ready(Ok(()))
                }
            };
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options(&broker, &unique_client_id("overlap")),
                10,
                kit::instrumentation(&telemetry),
            )
            .route("ov/+/t", QoS::AtLeastOnce, handler(Arc::clone(&runs)))
            .and_then(|b| b.route("ov/#", QoS::AtLeastOnce, handler(Arc::clone(&runs))))
            .expect("valid filters")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            let publisher = publisher(&broker, &telemetry).await;
            for topic in ["ov/a/t", "ov/end"] {
                publisher
                    .publish_confirmed(topic, QoS::AtLeastOnce, false, "x")
                    .await
                    .expect("acknowledged");
            }
            wait_until("the marker", || {
                runs.lock()
                    .unwrap()
                    .iter()
                    .any(|(_, topic)| topic == "ov/end")
            })
            .await;
            publisher.shutdown().await;
            subscriber.shutdown().await;
            let mut runs = runs.lock().unwrap().clone();
            runs.sort();
            runs
        }

        /// Each route runs once per copy the broker sends: `OVERLAP_COPIES` copies of a message
        /// that matches both subscriptions.
        #[tokio::test(flavor = "multi_thread")]
        async fn overlapping_routes_run_once_per_copy_of_a_message() {
            let mut expected = vec![("ov/#".to_owned(), "ov/end".to_owned())];
            for _ in 0..OVERLAP_COPIES {
                expected.push(("ov/#".to_owned(), "ov/a/t".to_owned()));
                expected.push(("ov/+/t".to_owned(), "ov/a/t".to_owned()));
            }
            expected.sort();
            assert_eq!(overlapping_routes_scenario().await, expected);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_retained_message_reaches_a_late_subscriber() {
            let (seen, produced, processed) = retained_message_scenario().await;
            assert!(
                seen.contains(&("kept/state".into(), b"on".to_vec(), true)),
                "{seen:?}"
            );
            assert_eq!(
                processed[0].span_context.trace_id(),
                produced[0].span_context.trace_id()
            );
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_shared_subscription_splits_the_stream() {
            let (a, b) = shared_subscription_scenario().await;
            assert!(a > 0 && b > 0, "{a} and {b}");
        }

        /// Where `KEEPS_SESSION` is false (rumqttd 0.20 with MQTT 5: README, "Brokers"), the
        /// session is not kept: only the marker published after the new subscription arrives.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_persistent_session_keeps_messages_for_an_offline_subscriber() {
            let expected = if KEEPS_SESSION {
                queued_topics()
            } else {
                vec!["away/marker".to_owned()]
            };
            assert_eq!(offline_subscriber_scenario().await, expected);
        }
    };
}

/// MQTT 5 scenarios.
macro_rules! v5_scenarios {
    () => {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};

        /// MQTT 5 section 3.3.2.3.7 ([MQTT-3.3.2-17]): the server MUST maintain the order of
        /// user properties when forwarding. The application's properties arrive unaltered, in
        /// order, around the propagation fields the publisher appended.
        #[tokio::test(flavor = "multi_thread")]
        async fn user_properties_are_forwarded_unaltered() {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let received = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&received);
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options(&broker, &unique_client_id("props-sub")),
                10,
                kit::instrumentation(&telemetry),
            )
            .route("props/#", QoS::AtLeastOnce, move |message: Message| {
                sink.lock()
                    .unwrap()
                    .push(message.user_properties().to_vec());
                std::future::ready(Ok(()))
            })
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            let publisher = publisher(&broker, &telemetry).await;
            let properties = PublishProperties {
                user_properties: vec![
                    ("site".into(), "north".into()),
                    ("unit".into(), "celsius".into()),
                    ("site".into(), "south".into()),
                ],
                ..PublishProperties::default()
            };
            publisher
                .client()
                .publish_with_properties("props/a", QoS::AtLeastOnce, false, "21.5", properties)
                .await
                .expect("queued");
            wait_until("the message", || !received.lock().unwrap().is_empty()).await;
            let got = received.lock().unwrap()[0].clone();
            let application: Vec<(String, String)> = got
                .iter()
                .filter(|(k, _)| k != "traceparent" && k != "tracestate")
                .cloned()
                .collect();
            assert_eq!(
                application,
                [
                    ("site".to_owned(), "north".to_owned()),
                    ("unit".to_owned(), "celsius".to_owned()),
                    ("site".to_owned(), "south".to_owned()),
                ]
            );
            assert!(got.iter().any(|(k, _)| k == "traceparent"), "{got:?}");
            let processed = telemetry.wait_spans(SpanKind::Consumer, "props/a", 1).await;
            let produced = telemetry.wait_spans(SpanKind::Producer, "props/a", 1).await;
            assert_eq!(
                processed[0].parent_span_id,
                produced[0].span_context.span_id()
            );
            publisher.shutdown().await;
            subscriber.shutdown().await;
        }

        /// MQTT 5 section 3.2.2.3.3: the Receive Maximum in CONNACK (absent means 65,535), as
        /// the traced event loop hands the CONNACK out, is the broker's `RECEIVE_MAXIMUM`.
        #[tokio::test(flavor = "multi_thread")]
        async fn the_broker_announces_its_receive_maximum() {
            assert_eq!(announced_receive_maximum().await, RECEIVE_MAXIMUM);
        }

        async fn announced_receive_maximum() -> Option<u16> {
            let broker = AnyBroker::start(BROKER);
            let telemetry = Telemetry::new();
            let (_client, mut eventloop) =
                rumqttc_opentelemetry::v5::TracedClient::with_instrumentation(
                    options(&broker, &unique_client_id("recv-max")),
                    10,
                    kit::instrumentation(&telemetry),
                );
            timeout(DEADLINE, async {
                loop {
                    if let Event::Incoming(Packet::ConnAck(ack)) =
                        eventloop.poll().await.expect("connects")
                    {
                        return ack.properties.and_then(|p| p.receive_max);
                    }
                }
            })
            .await
            .expect("CONNACK")
        }
    };
}

mod mosquitto_v4 {
    use super::common::kit::v4 as kit;
    const BROKER: BrokerKind = BrokerKind::Mosquitto;
    const KEEPS_SESSION: bool = true;
    /// mosquitto sends an MQTT 3.1.1 client one copy per message, however many of its
    /// subscriptions match.
    const OVERLAP_COPIES: usize = 1;
    shared_scenarios!();
}

mod mosquitto_v5 {
    use super::common::kit::v5 as kit;
    const BROKER: BrokerKind = BrokerKind::Mosquitto;
    const KEEPS_SESSION: bool = true;
    /// mosquitto's default `max_inflight_messages` is 20.
    const RECEIVE_MAXIMUM: Option<u16> = Some(20);
    const OVERLAP_COPIES: usize = 1;
    shared_scenarios!();
    v5_scenarios!();
}

mod rumqttd_v4 {
    use super::common::kit::v4 as kit;
    const BROKER: BrokerKind = BrokerKind::Rumqttd;
    const KEEPS_SESSION: bool = true;
    /// rumqttd 0.20 sends an MQTT 3.1.1 client one copy per matching subscription, so each
    /// route runs twice (the limitation in the `v4::TracedSubscriber` docs).
    const OVERLAP_COPIES: usize = 2;
    shared_scenarios!();
}

mod rumqttd_v5 {
    use super::common::kit::v5 as kit;
    const BROKER: BrokerKind = BrokerKind::Rumqttd;
    /// rumqttd 0.20 does not keep an MQTT 5 session (Clean Start 0, Session Expiry Interval
    /// 3600 s) across a reconnect.
    const KEEPS_SESSION: bool = false;
    /// rumqttd 0.20 sends no Receive Maximum (so 65,535 applies); rumqttc then keeps its own
    /// outgoing in-flight limit.
    const RECEIVE_MAXIMUM: Option<u16> = None;
    /// MQTT 5: one copy per subscription too, told apart by subscription identifier.
    const OVERLAP_COPIES: usize = 1;
    shared_scenarios!();
    v5_scenarios!();
}
