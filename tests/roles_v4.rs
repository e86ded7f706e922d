//! MQTT 3.1.1 specifics of the roles against a real mosquitto: the default acknowledgement
//! policy, the envelope and retained-message clearing, and what mosquitto sends for overlapping
//! subscriptions (the basis of the MQTT 3.1.1 dispatch rule).

mod common;

use std::time::Duration;

use common::telemetry::{Telemetry, assert_error};
use common::{Broker, unique_client_id};
use opentelemetry::trace::SpanKind;
use rumqttc::{MqttOptions, QoS};
use rumqttc_opentelemetry::V4Propagation;
use rumqttc_opentelemetry::v4::{Message, TracedPublisher, TracedSubscriber};
use tokio::sync::mpsc;
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

fn options(broker: &Broker, id: &str) -> MqttOptions {
    MqttOptions::new(id, broker.host(), broker.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_failed_message_is_acknowledged_after_its_handler() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = unique_client_id("sub");
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        options(&broker, &id),
        10,
        telemetry.instrumentation(),
    )
    .route("jobs/+", QoS::AtLeastOnce, move |message: Message| {
        let _ = tx.send(message.topic().to_owned());
        std::future::ready(Err(std::io::Error::other("always fails").into()))
    })
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::new(options(&broker, &unique_client_id("pub")), 10);
    publisher
        .publish_confirmed("jobs/1", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(next(&mut rx, "the run").await, "jobs/1");
    eventually("the PUBACK after the failed run", || {
        broker.log().contains(&format!("Received PUBACK from {id}"))
    })
    .await;
    eventually("the process span", || {
        !telemetry.spans_of(SpanKind::Consumer).is_empty()
    })
    .await;
    assert_error(
        &telemetry.spans_of(SpanKind::Consumer)[0],
        "std::io::error::Error",
    );
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enveloped_payload_is_stripped_and_clearing_retained_refuses_to_envelope() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry
        .builder()
        .v4_propagation(V4Propagation::Envelope)
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        options(&broker, &unique_client_id("sub")),
        10,
        telemetry.instrumentation(),
    )
    .route("status/+", QoS::AtLeastOnce, move |message: Message| {
        let _ = tx.send((message.payload().clone(), message.retained()));
        std::future::ready(Ok(()))
    })
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::with_instrumentation(
        options(&broker, &unique_client_id("pub")),
        10,
        instrumentation,
    );
    publisher
        .publish_confirmed("status/dev1", QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish");
    let (payload, _) = next(&mut rx, "the message").await;
    assert_eq!(&payload[..], b"on", "the handler sees the original payload");

    // An empty retained payload clears the retained message (MQTT 3.1.1 section 3.3.1.3); the
    // traced client never wraps it in an envelope, which would store the envelope instead.
    publisher
        .publish_confirmed("status/dev1", QoS::AtLeastOnce, true, "retained")
        .await
        .expect("retain");
    let produced_before = telemetry.spans_of(SpanKind::Producer).len();
    publisher
        .clear_retained("status/dev1", QoS::AtLeastOnce)
        .await
        .expect("clear");
    assert_eq!(
        telemetry.spans_of(SpanKind::Producer).len(),
        produced_before + 1
    );
    let late = broker.mosquitto_sub(&[
        "-t",
        "status/dev1",
        "--retained-only",
        "-W",
        "2",
        "-F",
        "%p",
    ]);
    let output = late.wait_timeout(Duration::from_secs(10));
    assert!(
        output.lines.is_empty(),
        "no retained message is left: {:?}",
        output.lines
    );
    subscriber.shutdown().await;
    publisher.shutdown().await;
}

/// The observation the MQTT 3.1.1 dispatch rule rests on: for an MQTT 3.1.1 client, mosquitto
/// sends one copy of a message however many of the client's subscriptions (shared ones
/// included) match it. The client here is a plain `mosquitto_sub`.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sends_one_copy_per_message_to_an_mqtt_311_client_with_overlapping_filters() {
    let broker = Broker::start();
    let sub = broker.mosquitto_sub(&[
        "-V",
        "311",
        "-q",
        "1",
        "-v",
        "-t",
        "home/#",
        "-t",
        "home/+/temperature",
        "-t",
        "$share/g/home/#",
        "-C",
        "4",
        "-W",
        "20",
    ]);
    let id = sub.client_id().to_owned();
    for topic in [
        "home/kitchen/temperature",
        "home/kitchen/humidity",
        "home",
        "home/end/temperature",
    ] {
        let out = broker.mosquitto_pub(&["-V", "311", "-q", "1", "-t", topic, "-m", topic]);
        assert!(out.status.success(), "{out:?}");
    }
    let lines = sub.wait();
    assert_eq!(
        lines,
        [
            "home/kitchen/temperature home/kitchen/temperature",
            "home/kitchen/humidity home/kitchen/humidity",
            "home home",
            "home/end/temperature home/end/temperature",
        ]
    );
    // And no second copy: the broker sent exactly four PUBLISH packets to the subscriber.
    assert_eq!(
        broker
            .log()
            .matches(&format!("Sending PUBLISH to {id} "))
            .count(),
        4
    );
}
