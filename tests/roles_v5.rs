//! MQTT 5 specifics of the roles against a real mosquitto: the retry helper giving up on a
//! broker refusal, `ParentMode::Link`, dispatch by subscription identifier next to a
//! subscription that is not a route, and QoS 0 shedding when the handlers fall behind.

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::time::Duration;

use common::telemetry::{Telemetry, assert_error, assert_success, attribute, destination};
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{Message, RetryPolicy, TracedPublisher, TracedSubscriber};
use rumqttc_opentelemetry::{Error, ParentMode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    match timeout(DEADLINE, rx.recv()).await {
        Ok(Some(value)) => value,
        Ok(None) => panic!("channel closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn options(broker: &Broker, prefix: &str) -> MqttOptions {
    MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port())
}

fn spans_on(telemetry: &Telemetry, kind: SpanKind, topic: &str) -> Vec<SpanData> {
    telemetry
        .spans_of(kind)
        .into_iter()
        .filter(|span| destination(span).as_deref() == Some(topic))
        .collect()
}

async fn wait_spans(telemetry: &Telemetry, kind: SpanKind, topic: &str, n: usize) -> Vec<SpanData> {
    eventually(&format!("{n} {kind:?} span(s) on {topic}"), || {
        spans_on(telemetry, kind.clone(), topic).len() >= n
    })
    .await;
    spans_on(telemetry, kind, topic)
}

fn int_value(attributes: &[opentelemetry::KeyValue], key: &str) -> Option<i64> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| match kv.value {
            Value::I64(value) => Some(value),
            _ => None,
        })
}

fn str_value(attributes: &[opentelemetry::KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_records_every_attempt_and_gives_up_after_the_configured_count() {
    let broker = Broker::builder().acl(&["denied/#"]).start();
    let telemetry = Telemetry::new();
    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    assert!(publisher.wait_connected().await);
    let policy = RetryPolicy::new(3).initial_backoff(Duration::from_millis(10));

    let outcome = publisher
        .publish_with_retry("denied/x", QoS::AtLeastOnce, false, "secret", &policy)
        .await;
    assert_eq!(
        outcome,
        Err(Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(Error::PublishFailed("not_authorized")),
        })
    );

    let retry = telemetry.spans_of(SpanKind::Internal);
    assert_eq!(retry.len(), 1);
    let retry = &retry[0];
    assert_eq!(retry.name, "publish_with_retry denied/x");
    assert_error(retry, "not_authorized");
    assert!(
        matches!(&retry.status, Status::Error { description } if description.contains("gave up after 3 attempt(s)")),
        "{:?}",
        retry.status
    );
    assert_eq!(
        attribute(retry, "mqtt.publish.max_attempts"),
        Some(&Value::I64(3))
    );
    let events: Vec<_> = retry.events.iter().collect();
    assert_eq!(events.len(), 3, "one event per attempt");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.name, "mqtt.publish.attempt");
        assert_eq!(
            int_value(&event.attributes, "mqtt.publish.attempt"),
            Some(i as i64 + 1)
        );
        assert_eq!(
            str_value(&event.attributes, "error.type").as_deref(),
            Some("not_authorized")
        );
        // A pause follows every attempt but the last.
        let backoff = event
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "mqtt.publish.backoff");
        assert_eq!(backoff, i < 2, "event {i}");
    }
    // Each attempt is a normal publish span, child of the retry span, ended by the broker's
    // refusal.
    let attempts = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, retry.span_context.span_id());
        assert_error(attempt, "not_authorized");
    }
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn link_mode_parents_the_process_span_on_the_receive_span_and_links_the_producer() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        options(&broker, "sub"),
        10,
        telemetry.builder().parent_mode(ParentMode::Link).build(),
    )
    .route(
        "home/+/temperature",
        QoS::AtLeastOnce,
        move |message: Message| {
            let _ = tx.send(message.topic().to_owned());
            std::future::ready(Ok(()))
        },
    )
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    publisher
        .publish_confirmed("home/kitchen/temperature", QoS::AtLeastOnce, false, "21")
        .await
        .expect("publish");
    next(&mut rx, "message").await;

    let producer = wait_spans(
        &telemetry,
        SpanKind::Producer,
        "home/kitchen/temperature",
        1,
    )
    .await;
    let receive = wait_spans(&telemetry, SpanKind::Client, "home/kitchen/temperature", 1).await;
    let process = wait_spans(
        &telemetry,
        SpanKind::Consumer,
        "home/kitchen/temperature",
        1,
    )
    .await;
    let (producer, receive, process) = (&producer[0], &receive[0], &process[0]);
    assert_eq!(process.parent_span_id, receive.span_context.span_id());
    let links: Vec<_> = process.links.iter().collect();
    assert_eq!(links.len(), 1);
    assert_eq!(
        links[0].span_context.span_id(),
        producer.span_context.span_id()
    );
    assert_eq!(
        links[0].span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_success(process);
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_for_a_subscription_that_is_no_route_runs_nothing_and_is_acknowledged() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriber_id = unique_client_id("sub");
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(subscriber_id.clone(), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    )
    .route("a/+", QoS::AtLeastOnce, move |message: Message| {
        let _ = tx.send(message.topic().to_owned());
        std::future::ready(Ok(()))
    })
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    // A subscription that is not a route: mosquitto sends its own copy, without identifier.
    subscriber
        .client()
        .subscribe("a/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe request");
    assert!(broker.wait_for_log(&format!("{subscriber_id} 1 a/#"), DEADLINE));
    eventually("the second SUBACK", || {
        broker
            .log()
            .matches(&format!("Sending SUBACK to {subscriber_id}"))
            .count()
            == 2
    })
    .await;

    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    for topic in ["a/1", "a/2"] {
        publisher
            .publish_confirmed(topic, QoS::AtLeastOnce, false, topic)
            .await
            .expect("publish");
    }
    assert_eq!(next(&mut rx, "a/1").await, "a/1");
    assert_eq!(next(&mut rx, "a/2").await, "a/2");
    // Two copies each arrived (two receive spans), one ran the route.
    wait_spans(&telemetry, SpanKind::Client, "a/2", 2).await;
    wait_spans(&telemetry, SpanKind::Consumer, "a/2", 1).await;
    assert_eq!(telemetry.spans_of(SpanKind::Consumer).len(), 2);
    // Every copy the broker sent was acknowledged, the unrouted ones too.
    eventually("four PUBACKs", || {
        broker
            .log()
            .matches(&format!("Received PUBACK from {subscriber_id}"))
            .count()
            == 4
    })
    .await;
    assert_eq!(
        broker
            .log()
            .matches(&format!("Sending PUBLISH to {subscriber_id}"))
            .count(),
        4
    );
    assert!(rx.try_recv().is_err());
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos0_messages_beyond_the_queue_capacity_are_shed_visibly() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release) = oneshot::channel::<()>();
    let release = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release)));
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        options(&broker, "sub"),
        10,
        telemetry.instrumentation(),
    )
    .queue_capacity(1)
    .route("load/+", QoS::AtMostOnce, move |message: Message| {
        let started_tx = started_tx.clone();
        let release = std::sync::Arc::clone(&release);
        async move {
            let _ = started_tx.send(message.topic().to_owned());
            // The first message holds the worker until the test releases it.
            let gate = release.lock().await.take();
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Ok(())
        }
    })
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    publisher
        .publish_confirmed("load/1", QoS::AtMostOnce, false, "1")
        .await
        .expect("publish");
    assert_eq!(next(&mut started, "the first handler run").await, "load/1");
    // The worker is busy: load/2 waits in the queue (1 = the capacity), load/3 is shed.
    for topic in ["load/2", "load/3"] {
        publisher
            .publish_confirmed(topic, QoS::AtMostOnce, false, topic)
            .await
            .expect("publish");
    }
    let shed = wait_spans(&telemetry, SpanKind::Consumer, "load/3", 1).await;
    assert_error(&shed[0], "queue_full");
    assert_eq!(shed[0].name, "process load/+");
    assert_eq!(subscriber.queued(), 1);

    let _ = release_tx.send(());
    assert_eq!(next(&mut started, "the queued message").await, "load/2");
    let processed = wait_spans(&telemetry, SpanKind::Consumer, "load/2", 1).await;
    assert_success(&processed[0]);
    assert!(started.try_recv().is_err(), "load/3 ran no handler");
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_metrics_carry_the_consumer_group_and_the_error_type() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let metrics = MetricReader::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        options(&broker, "sub"),
        10,
        telemetry
            .builder()
            .meter_provider(&metrics.provider)
            .build(),
    )
    .route(
        "$share/loggers/m/+",
        QoS::AtLeastOnce,
        move |message: Message| {
            let tx = tx.clone();
            async move {
                if message.payload().as_ref() == b"boom" {
                    panic!("boom");
                }
                let _ = tx.send(message.topic().to_owned());
                Ok(())
            }
        },
    )
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, "pub"),
        10,
        telemetry.instrumentation(),
    );
    for (topic, payload) in [("m/1", "boom"), ("m/2", "fine")] {
        publisher
            .publish_confirmed(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    assert_eq!(next(&mut rx, "the second message").await, "m/2");
    wait_spans(&telemetry, SpanKind::Consumer, "m/2", 1).await;

    let points = metrics.points("messaging.process.duration");
    assert_eq!(points.len(), 2, "{points:#?}");
    for point in &points {
        assert_eq!(
            point.attribute("messaging.consumer.group.name"),
            Some(&Value::from("loggers"))
        );
        assert_eq!(
            point.attribute("messaging.destination.template"),
            Some(&Value::from("m/+"))
        );
        assert_eq!(point.count, 1);
    }
    let errors: Vec<_> = points
        .iter()
        .filter_map(|point| point.attribute("error.type"))
        .collect();
    assert_eq!(errors, [&Value::from("panic")]);
    // The spans carry the group too.
    for span in telemetry.spans_of(SpanKind::Consumer) {
        assert_eq!(
            attribute(&span, "messaging.consumer.group.name"),
            Some(&Value::from("loggers"))
        );
        assert_eq!(span.name, "process m/+");
    }
    subscriber.shutdown().await;
    publisher.shutdown().await;
}
