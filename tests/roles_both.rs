//! `TracedPublisher` and `TracedSubscriber` against a real mosquitto, the same tests for MQTT
//! 3.1.1 (`v4`) and MQTT 5 (`v5`): process spans, handler errors and panics, routing of
//! overlapping filters, at-least-once redelivery, flush, retained messages, last will, batch,
//! retry, and the gateway shape (both roles on one connection).
//!
//! The tests wait for conditions with a deadline, never for a fixed time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::telemetry::{Telemetry, assert_error, assert_success, attribute, destination};
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Bound on every wait.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `condition` holds, looking every 10 ms, at most [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// The next value of `rx`, within [`DEADLINE`].
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    match timeout(DEADLINE, rx.recv()).await {
        Ok(Some(value)) => value,
        Ok(None) => panic!("channel closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The ended spans of a kind whose `messaging.destination.name` is `topic`.
fn spans_on(telemetry: &Telemetry, kind: SpanKind, topic: &str) -> Vec<SpanData> {
    telemetry
        .spans_of(kind)
        .into_iter()
        .filter(|span| destination(span).as_deref() == Some(topic))
        .collect()
}

/// Waits until `n` spans of `kind` on `topic` have ended, and returns them.
async fn wait_spans(telemetry: &Telemetry, kind: SpanKind, topic: &str, n: usize) -> Vec<SpanData> {
    eventually(&format!("{n} {kind:?} span(s) on {topic}"), || {
        spans_on(telemetry, kind.clone(), topic).len() >= n
    })
    .await;
    spans_on(telemetry, kind, topic)
}

fn string(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(|value| value.as_str().into_owned())
}

/// The span id of the span current where it is called (inside a handler: the process span).
fn current_span_id() -> SpanId {
    Context::current().span().span_context().span_id()
}

mod v4_kit {
    pub use rumqttc::{MqttOptions, QoS};
    pub use rumqttc_opentelemetry::v4::{
        AckPolicy, HandlerResult, Message, RetryPolicy, TracedPublisher, TracedSubscriber,
    };
    use rumqttc_opentelemetry::{Instrumentation, V4Propagation};

    use super::common::telemetry::Telemetry;
    use super::common::{Broker, unique_client_id};

    pub fn options(broker: &Broker, prefix: &str) -> MqttOptions {
        with_id(broker, &unique_client_id(prefix))
    }

    pub fn with_id(broker: &Broker, id: &str) -> MqttOptions {
        MqttOptions::new(id, broker.host(), broker.port())
    }

    pub fn persistent(options: &mut MqttOptions) {
        options.set_clean_session(false);
    }

    pub fn will(options: &mut MqttOptions, topic: &str, payload: &'static str) {
        options.set_last_will(rumqttc::LastWill::new(
            topic,
            payload,
            QoS::AtLeastOnce,
            false,
        ));
    }

    /// MQTT 3.1.1 carries trace context only when asked to: in the envelope here.
    pub fn instrumentation(telemetry: &Telemetry) -> Instrumentation {
        telemetry
            .builder()
            .v4_propagation(V4Propagation::Envelope)
            .build()
    }
}

mod v5_kit {
    pub use rumqttc::v5::MqttOptions;
    pub use rumqttc::v5::mqttbytes::QoS;
    use rumqttc_opentelemetry::Instrumentation;
    pub use rumqttc_opentelemetry::v5::{
        AckPolicy, HandlerResult, Message, RetryPolicy, TracedPublisher, TracedSubscriber,
    };

    use super::common::telemetry::Telemetry;
    use super::common::{Broker, unique_client_id};

    pub fn options(broker: &Broker, prefix: &str) -> MqttOptions {
        with_id(broker, &unique_client_id(prefix))
    }

    pub fn with_id(broker: &Broker, id: &str) -> MqttOptions {
        MqttOptions::new(id, broker.host(), broker.port())
    }

    pub fn persistent(options: &mut MqttOptions) {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(3600));
    }

    pub fn will(options: &mut MqttOptions, topic: &str, payload: &'static str) {
        options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            topic,
            payload,
            QoS::AtLeastOnce,
            false,
            None,
        ));
    }

    pub fn instrumentation(telemetry: &Telemetry) -> Instrumentation {
        telemetry.instrumentation()
    }
}

/// The tests, written once; `kit` is the version's module above.
macro_rules! role_tests {
    () => {
        use super::*;
        use kit::{AckPolicy, Message, QoS, RetryPolicy, TracedPublisher, TracedSubscriber};

        /// A publisher with the test instrumentation, connected.
        async fn publisher(broker: &Broker, telemetry: &Telemetry) -> TracedPublisher {
            let publisher = TracedPublisher::with_instrumentation(
                kit::options(broker, "pub"),
                10,
                kit::instrumentation(telemetry),
            );
            assert!(publisher.wait_connected().await, "publisher connects");
            publisher
        }

        /// What a collecting handler reports: route, topic, payload, retained, duplicate.
        type Seen = (String, String, String, bool, bool);

        fn seen(message: &Message) -> Seen {
            (
                message.route().to_owned(),
                message.topic().to_string(),
                String::from_utf8_lossy(message.payload()).into_owned(),
                message.retained(),
                message.duplicate(),
            )
        }

        /// A handler that reports every message it gets.
        fn collector(
            tx: mpsc::UnboundedSender<Seen>,
        ) -> impl Fn(Message) -> std::future::Ready<kit::HandlerResult> + Send + Sync + 'static
        {
            move |message| {
                let _ = tx.send(seen(&message));
                std::future::ready(Ok(()))
            }
        }

        /// A subscriber with one collecting route on `filter`, subscribed.
        async fn collecting(
            broker: &Broker,
            telemetry: &Telemetry,
            filter: &str,
        ) -> (TracedSubscriber, mpsc::UnboundedReceiver<Seen>) {
            let (tx, rx) = mpsc::unbounded_channel();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                kit::options(broker, "sub"),
                10,
                kit::instrumentation(telemetry),
            )
            .route(filter, QoS::AtLeastOnce, collector(tx))
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");
            (subscriber, rx)
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn handler_runs_in_a_process_span_child_of_the_publish_span() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                kit::options(&broker, "sub"),
                10,
                kit::instrumentation(&telemetry),
            )
            .route("home/+/temperature", QoS::AtLeastOnce, move |message: Message| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((message.topic().to_string(), current_span_id()));
                    if message.payload().as_ref() == b"bad" {
                        return Err(std::io::Error::other("sensor value out of range").into());
                    }
                    Ok(())
                }
            })
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");

            let publisher = publisher(&broker, &telemetry).await;
            publisher
                .publish_confirmed("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5")
                .await
                .expect("publish");
            publisher
                .publish_confirmed("home/cellar/temperature", QoS::AtLeastOnce, false, "bad")
                .await
                .expect("publish");
            let (_, good_current) = next(&mut rx, "first message").await;
            let (_, bad_current) = next(&mut rx, "second message").await;

            for (topic, current, failed) in [
                ("home/kitchen/temperature", good_current, false),
                ("home/cellar/temperature", bad_current, true),
            ] {
                let produced = wait_spans(&telemetry, SpanKind::Producer, topic, 1).await;
                let processed = wait_spans(&telemetry, SpanKind::Consumer, topic, 1).await;
                let (producer, process) = (&produced[0], &processed[0]);
                assert_eq!(process.name, "process home/+/temperature");
                assert_eq!(
                    string(process, "messaging.operation.type").as_deref(),
                    Some("process")
                );
                assert_eq!(
                    string(process, "messaging.destination.template").as_deref(),
                    Some("home/+/temperature")
                );
                // CreationContext (the default): the producer's span is the parent.
                assert_eq!(process.parent_span_id, producer.span_context.span_id());
                assert_eq!(
                    process.span_context.trace_id(),
                    producer.span_context.trace_id()
                );
                // The handler ran with the process span current.
                assert_eq!(current, process.span_context.span_id());
                if failed {
                    assert_error(process, "std::io::error::Error");
                    assert!(
                        matches!(&process.status, Status::Error { description } if description.contains("out of range")),
                        "{:?}",
                        process.status
                    );
                } else {
                    assert_success(process);
                }
            }
            drop(subscriber);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_panicking_handler_is_recorded_and_the_next_message_processed() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                kit::options(&broker, "sub"),
                10,
                kit::instrumentation(&telemetry),
            )
            .route("jobs/+", QoS::AtLeastOnce, move |message: Message| {
                let tx = tx.clone();
                async move {
                    if message.payload().as_ref() == b"boom" {
                        panic!("handler exploded on boom");
                    }
                    let _ = tx.send(message.topic().to_string());
                    Ok(())
                }
            })
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");

            let publisher = publisher(&broker, &telemetry).await;
            publisher
                .publish_confirmed("jobs/1", QoS::AtLeastOnce, false, "boom")
                .await
                .expect("publish");
            publisher
                .publish_confirmed("jobs/2", QoS::AtLeastOnce, false, "fine")
                .await
                .expect("publish");
            assert_eq!(next(&mut rx, "the message after the panic").await, "jobs/2");

            let panicked = wait_spans(&telemetry, SpanKind::Consumer, "jobs/1", 1).await;
            assert_error(&panicked[0], "panic");
            assert!(
                matches!(&panicked[0].status, Status::Error { description } if description.contains("handler exploded on boom")),
                "{:?}",
                panicked[0].status
            );
            let fine = wait_spans(&telemetry, SpanKind::Consumer, "jobs/2", 1).await;
            assert_success(&fine[0]);
            assert!(subscriber.is_connected());
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn overlapping_routes_each_get_exactly_the_messages_they_match() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                kit::options(&broker, "sub"),
                10,
                kit::instrumentation(&telemetry),
            )
            .route("home/+/temperature", QoS::AtLeastOnce, collector(tx.clone()))
            .and_then(|b| b.route("home/#", QoS::AtLeastOnce, collector(tx.clone())))
            .and_then(|b| b.route("$share/g/home/#", QoS::AtLeastOnce, collector(tx)))
            .expect("valid filters")
            .start();
            subscriber.subscribed().await.expect("subscribed");

            let publisher = publisher(&broker, &telemetry).await;
            let topics = [
                "home/kitchen/temperature",
                "home/kitchen/humidity",
                "home",
                "office/temperature",
                "home/a/b/temperature",
                // Matches all three routes: once each route has seen it, each has seen
                // everything before it (one worker, arrival order).
                "home/end/temperature",
            ];
            for topic in topics {
                publisher
                    .publish_confirmed(topic, QoS::AtLeastOnce, false, topic)
                    .await
                    .expect("publish");
            }
            let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut ended = 0;
            while ended < 3 {
                let (route, topic, payload, ..) = next(&mut rx, "routed messages").await;
                assert_eq!(topic, payload);
                if topic == "home/end/temperature" {
                    ended += 1;
                }
                got.entry(route).or_default().push(topic);
            }
            let all_home = vec![
                "home/kitchen/temperature",
                "home/kitchen/humidity",
                "home",
                "home/a/b/temperature",
                "home/end/temperature",
            ];
            let expected: BTreeMap<String, Vec<String>> = [
                (
                    "home/+/temperature",
                    vec!["home/kitchen/temperature", "home/end/temperature"],
                ),
                ("home/#", all_home.clone()),
                ("$share/g/home/#", all_home),
            ]
            .into_iter()
            .map(|(route, topics)| {
                (
                    route.to_owned(),
                    topics.into_iter().map(str::to_owned).collect(),
                )
            })
            .collect();
            assert_eq!(got, expected);

            // One process span per route and message: 2 + 5 + 5, with the shared route's
            // consumer group.
            eventually("12 process spans", || {
                telemetry.spans_of(SpanKind::Consumer).len() >= 12
            })
            .await;
            let process = telemetry.spans_of(SpanKind::Consumer);
            assert_eq!(process.len(), 12, "{process:#?}");
            let shared: Vec<_> = process
                .iter()
                .filter(|span| string(span, "messaging.consumer.group.name").as_deref() == Some("g"))
                .collect();
            assert_eq!(shared.len(), 5);
            for span in shared {
                assert_eq!(span.name, "process home/#");
                assert_eq!(
                    string(span, "messaging.destination.template").as_deref(),
                    Some("home/#")
                );
            }
            assert!(rx.try_recv().is_err(), "no further message");
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_failed_message_stays_unacknowledged_and_is_redelivered_after_reconnect() {
            let mut broker = Broker::builder().persistence(true).start();
            let telemetry = Telemetry::new();
            let runs = Arc::new(AtomicUsize::new(0));
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut options = kit::with_id(&broker, &unique_client_id("worker"));
            kit::persistent(&mut options);
            let handler_runs = Arc::clone(&runs);
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                options,
                10,
                kit::instrumentation(&telemetry),
            )
            .ack_policy(AckPolicy::AfterSuccess)
            .route("jobs/#", QoS::AtLeastOnce, move |message: Message| {
                let tx = tx.clone();
                let run = handler_runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = tx.send((
                        String::from_utf8_lossy(message.payload()).into_owned(),
                        message.duplicate(),
                    ));
                    if run == 0 {
                        return Err(std::io::Error::other("database unavailable").into());
                    }
                    Ok(())
                }
            })
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed");

            let publisher = publisher(&broker, &telemetry).await;
            publisher
                .publish_confirmed("jobs/1", QoS::AtLeastOnce, false, "job-1")
                .await
                .expect("publish");
            assert_eq!(next(&mut rx, "first run").await, ("job-1".to_owned(), false));
            let failed = wait_spans(&telemetry, SpanKind::Consumer, "jobs/1", 1).await;
            assert_error(&failed[0], "std::io::error::Error");

            // The broker keeps the unacknowledged message in the session across a restart;
            // the subscriber reconnects by itself, the session is present, and the broker
            // delivers the message again.
            broker.restart();
            assert_eq!(
                next(&mut rx, "redelivery").await,
                ("job-1".to_owned(), true),
                "redelivered with DUP"
            );
            let runs_spans = wait_spans(&telemetry, SpanKind::Consumer, "jobs/1", 2).await;
            assert_success(&runs_spans[1]);
            assert_eq!(
                attribute(&runs_spans[1], "messaging.mqtt.duplicate"),
                Some(&Value::Bool(true))
            );

            // Processing goes on with the next message, acknowledged this time.
            assert!(publisher.wait_connected().await);
            publisher
                .publish_confirmed("jobs/2", QoS::AtLeastOnce, false, "job-2")
                .await
                .expect("publish after restart");
            assert_eq!(next(&mut rx, "next job").await, ("job-2".to_owned(), false));
            assert_eq!(runs.load(Ordering::SeqCst), 3);
            subscriber.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn flush_then_exit_delivers_every_qos1_message() {
            const N: usize = 1000;
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let received = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
            let seen_by_handler = Arc::clone(&received);
            let subscriber = TracedSubscriber::builder(kit::options(&broker, "sub"), 10)
                .route("bulk/#", QoS::AtLeastOnce, move |message: Message| {
                    if let Ok(mut seen) = seen_by_handler.lock() {
                        seen.insert(String::from_utf8_lossy(message.payload()).into_owned());
                    }
                    std::future::ready(Ok(()))
                })
                .expect("valid filter")
                .start();
            subscriber.subscribed().await.expect("subscribed");

            let publisher = publisher(&broker, &telemetry).await;
            for i in 0..N {
                publisher
                    .publish(format!("bulk/{}", i % 10), QoS::AtLeastOnce, false, i.to_string())
                    .await
                    .expect("publish queued");
            }
            publisher.flush().await;
            assert_eq!(publisher.open_publishes(), 0);
            // Exit without DISCONNECT: the socket closes at once.
            drop(publisher);

            eventually("all messages at the subscriber", || {
                received.lock().map(|seen| seen.len()).unwrap_or(0) == N
            })
            .await;
            let produced = telemetry.spans_of(SpanKind::Producer);
            assert_eq!(produced.len(), N);
            assert!(produced.iter().all(|span| span.status == Status::Unset));
            subscriber.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_retained_message_reaches_a_late_subscriber_and_can_be_cleared() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            // Payloads unchanged (no MQTT 3.1.1 envelope), so that an empty payload clears.
            let publisher = TracedPublisher::with_instrumentation(
                kit::options(&broker, "pub"),
                10,
                telemetry.instrumentation(),
            );
            assert!(publisher.wait_connected().await);
            publisher
                .publish_confirmed("status/dev1", QoS::AtLeastOnce, true, "on")
                .await
                .expect("retained publish");

            let (late, mut rx) = collecting(&broker, &telemetry, "status/#").await;
            let (_, topic, payload, retained, _) = next(&mut rx, "retained message").await;
            assert_eq!((topic.as_str(), payload.as_str(), retained), ("status/dev1", "on", true));
            let process = wait_spans(&telemetry, SpanKind::Consumer, "status/dev1", 1).await;
            assert_eq!(
                attribute(&process[0], "messaging.mqtt.retained"),
                Some(&Value::Bool(true))
            );
            let receive = wait_spans(&telemetry, SpanKind::Client, "status/dev1", 1).await;
            assert_eq!(
                attribute(&receive[0], "messaging.mqtt.retained"),
                Some(&Value::Bool(true))
            );
            late.shutdown().await;

            publisher
                .clear_retained("status/dev1", QoS::AtLeastOnce)
                .await
                .expect("clear");
            let (later, mut rx) = collecting(&broker, &telemetry, "status/#").await;
            // A retained message would have been sent right after the SUBACK, before this.
            publisher
                .publish_confirmed("status/dev1", QoS::AtLeastOnce, false, "marker")
                .await
                .expect("marker");
            let (_, _, payload, retained, _) = next(&mut rx, "marker").await;
            assert_eq!((payload.as_str(), retained), ("marker", false));
            later.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_last_will_starts_a_new_trace_and_shutdown_sends_none() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (subscriber, mut rx) = collecting(&broker, &telemetry, "wills/#").await;

            // A clean shutdown sends DISCONNECT: the broker discards the will.
            let mut options = kit::options(&broker, "clean");
            kit::will(&mut options, "wills/clean", "gone");
            let clean =
                TracedPublisher::with_instrumentation(options, 10, kit::instrumentation(&telemetry));
            assert!(clean.wait_connected().await);
            clean.shutdown().await;

            // Dropping the publisher closes the socket without DISCONNECT: the will goes out.
            let mut options = kit::options(&broker, "cut");
            kit::will(&mut options, "wills/cut", "gone");
            let cut =
                TracedPublisher::with_instrumentation(options, 10, kit::instrumentation(&telemetry));
            assert!(cut.wait_connected().await);
            drop(cut);

            let (_, topic, payload, ..) = next(&mut rx, "last will").await;
            assert_eq!((topic.as_str(), payload.as_str()), ("wills/cut", "gone"));
            let process = wait_spans(&telemetry, SpanKind::Consumer, "wills/cut", 1).await;
            let receive = wait_spans(&telemetry, SpanKind::Client, "wills/cut", 1).await;
            assert_success(&process[0]);
            // No context in a will: the receive span is a root, the process span its child.
            assert_eq!(receive[0].parent_span_id, SpanId::INVALID);
            assert_eq!(process[0].parent_span_id, receive[0].span_context.span_id());
            let trace = process[0].span_context.trace_id();
            assert!(
                telemetry
                    .spans_of(SpanKind::Producer)
                    .iter()
                    .all(|span| span.span_context.trace_id() != trace),
                "a new trace"
            );
            subscriber.shutdown().await;
            assert!(spans_on(&telemetry, SpanKind::Consumer, "wills/clean").is_empty());
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_batch_publishes_n_messages_with_n_spans_in_order() {
            const N: usize = 20;
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (subscriber, mut rx) = collecting(&broker, &telemetry, "batch/#").await;
            let publisher = publisher(&broker, &telemetry).await;

            let results = publisher
                .publish_batch(
                    QoS::AtLeastOnce,
                    false,
                    (0..N).map(|i| (format!("batch/{i}"), i.to_string())),
                )
                .await;
            assert_eq!(results.len(), N);
            assert!(results.iter().all(Result::is_ok), "{results:?}");

            let batch = telemetry.spans_of(SpanKind::Internal);
            assert_eq!(batch.len(), 1);
            assert_eq!(batch[0].name, "publish_batch");
            assert_eq!(
                attribute(&batch[0], "messaging.batch.message_count"),
                Some(&Value::I64(N as i64))
            );
            assert_success(&batch[0]);
            let produced = telemetry.spans_of(SpanKind::Producer);
            assert_eq!(produced.len(), N);
            assert!(
                produced
                    .iter()
                    .all(|span| span.parent_span_id == batch[0].span_context.span_id())
            );
            for i in 0..N {
                let (_, topic, ..) = next(&mut rx, "batch message").await;
                assert_eq!(topic, format!("batch/{i}"), "in the order given");
            }
            subscriber.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn publish_with_retry_records_its_one_successful_attempt() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let publisher = publisher(&broker, &telemetry).await;
            let attempts = publisher
                .publish_with_retry("retry/ok", QoS::AtLeastOnce, false, "x", &RetryPolicy::new(3))
                .await
                .expect("published");
            assert_eq!(attempts, 1);
            let retry = telemetry.spans_of(SpanKind::Internal);
            assert_eq!(retry.len(), 1);
            assert_eq!(retry[0].name, "publish_with_retry retry/ok");
            assert_success(&retry[0]);
            let events: Vec<_> = retry[0].events.iter().collect();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].name, "mqtt.publish.attempt");
            let produced = telemetry.spans_of(SpanKind::Producer);
            assert_eq!(produced.len(), 1);
            assert_eq!(produced[0].parent_span_id, retry[0].span_context.span_id());
            publisher.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn dropping_the_subscriber_closes_its_connection_even_if_a_handler_holds_a_publisher() {
            let broker = Broker::start();
            let id = unique_client_id("sub");
            let builder = TracedSubscriber::builder(kit::with_id(&broker, &id), 10);
            let forward = builder.publisher();
            let subscriber = builder
                .route("in/+", QoS::AtLeastOnce, move |message: Message| {
                    let forward = forward.clone();
                    async move {
                        forward
                            .publish("out/x", QoS::AtLeastOnce, false, message.payload().clone())
                            .await?;
                        Ok(())
                    }
                })
                .expect("valid filter")
                .start();
            subscriber.subscribed().await.expect("subscribed");
            assert!(broker.is_client_connected(&id));
            drop(subscriber);
            assert!(
                broker.wait_for_client(&id, false, DEADLINE),
                "the connection closes: {:?}",
                broker.connected_clients()
            );
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_gateway_serves_both_roles_on_one_connection() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let (sink, mut rx) = collecting(&broker, &telemetry, "out/#").await;

            let gateway_id = unique_client_id("gateway");
            let builder = TracedSubscriber::builder_with_instrumentation(
                kit::with_id(&broker, &gateway_id),
                10,
                kit::instrumentation(&telemetry),
            );
            let upstream = builder.client().clone();
            let gateway = builder
                .route("in/+", QoS::AtLeastOnce, move |message: Message| {
                    let upstream = upstream.clone();
                    async move {
                        let topic = message.topic().replacen("in/", "out/", 1);
                        upstream
                            .publish(topic, QoS::AtLeastOnce, false, message.payload().clone())
                            .await?;
                        Ok(())
                    }
                })
                .expect("valid filter")
                .start();
            gateway.subscribed().await.expect("subscribed");

            let source = publisher(&broker, &telemetry).await;
            source
                .publish_confirmed("in/1", QoS::AtLeastOnce, false, "reading")
                .await
                .expect("publish");
            let (_, topic, payload, ..) = next(&mut rx, "forwarded message").await;
            assert_eq!((topic.as_str(), payload.as_str()), ("out/1", "reading"));
            gateway.publisher().flush().await;

            // One client id, one connection: source, gateway and sink.
            assert!(broker.wait_for_client_count(3, DEADLINE), "{:?}", broker.connected_clients());
            assert!(broker.is_client_connected(&gateway_id));
            assert!(
                !broker.log().contains(&format!("Client {gateway_id} already connected")),
                "no second connection with the gateway's id"
            );

            // The forwarding publish is a child of the gateway's process span, and the trace
            // runs from the source to the sink.
            let gateway_process = wait_spans(&telemetry, SpanKind::Consumer, "in/1", 1).await;
            let forward = wait_spans(&telemetry, SpanKind::Producer, "out/1", 1).await;
            let sink_process = wait_spans(&telemetry, SpanKind::Consumer, "out/1", 1).await;
            let source_publish = wait_spans(&telemetry, SpanKind::Producer, "in/1", 1).await;
            assert_success(&forward[0]);
            assert_eq!(
                forward[0].parent_span_id,
                gateway_process[0].span_context.span_id()
            );
            assert_eq!(sink_process[0].parent_span_id, forward[0].span_context.span_id());
            assert_eq!(
                sink_process[0].span_context.trace_id(),
                source_publish[0].span_context.trace_id()
            );
            gateway.shutdown().await;
            sink.shutdown().await;
            assert!(broker.wait_for_client_count(1, DEADLINE));
        }
    };
}

mod v4 {
    use super::v4_kit as kit;
    role_tests!();
}

mod v5 {
    use super::v5_kit as kit;
    role_tests!();
}
