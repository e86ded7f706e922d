//! No silent loss on a reconnect without session (DESIGN.md "Spans": "nothing the application
//! handed to `publish()` should vanish silently"; crate docs of `reconnect`). rumqttc clears its
//! `pending` queue when the broker answers CONNACK with `session_present = false`; the traced
//! event loop puts those requests back and sends them on the new connection.

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::telemetry::{Telemetry, assert_unique_attribute_keys, attribute};
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::trace::{SpanKind, Status};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::metrics::RESENT;
use rumqttc_opentelemetry::semconv::metric::MESSAGING_CLIENT_SENT_MESSAGES;
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use tokio::sync::{Notify, mpsc};

const DEADLINE: Duration = Duration::from_secs(30);

fn signal(broker: &Broker, name: &str) {
    let pid = broker.pid().expect("broker running").to_string();
    let status = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name}");
}

/// Polls the publisher's event loop; after a connection error it waits for `resume` before it
/// reconnects, so the test decides when the publisher comes back.
fn drive_publisher(
    mut eventloop: TracedEventLoop,
    resume: Arc<Notify>,
) -> tokio::task::JoinHandle<TracedEventLoop> {
    tokio::spawn(async move {
        let mut waited = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(_))) => return eventloop,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return eventloop,
                Ok(_) => {}
                Err(_) if !waited => {
                    resume.notified().await;
                    waited = true;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
}

/// Subscribes on every CONNACK (the broker forgets subscriptions with the session) and forwards
/// the payloads and SUBACKs.
fn drive_subscriber(
    client: TracedClient,
    mut eventloop: TracedEventLoop,
) -> (
    mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("resend/#", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = tx.send(Some(publish.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Option<Vec<u8>>>) -> Option<Vec<u8>> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("subscriber event within the deadline")
        .expect("subscriber running")
}

/// 1,000 QoS 1 publishes, 100 in flight and 900 queued, when a broker without persistence is
/// killed and restarted: after the session-less CONNACK every one of them arrives, and every
/// publish span ends once, without error.
#[tokio::test(flavor = "multi_thread")]
async fn publishes_survive_a_broker_that_forgot_the_session() {
    const N: usize = 1000;
    let mut broker = Broker::start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let instrumentation = || telemetry.builder().meter_provider(&reader.provider).build();

    let (sub_client, sub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("resend-sub"), broker.host(), broker.port()),
        10,
        instrumentation(),
    );
    let (mut received, _sub_task) = drive_subscriber(sub_client, sub_loop);
    assert_eq!(next(&mut received).await, None, "SUBACK");

    let (publisher, pub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("resend-pub"), broker.host(), broker.port()),
        N + 10,
        instrumentation(),
    );
    let resume = Arc::new(Notify::new());
    let pub_task = drive_publisher(pub_loop, Arc::clone(&resume));
    // Connected before the broker freezes.
    publisher
        .publish_confirmed("resend/warmup", QoS::AtLeastOnce, false, "warmup", None)
        .await
        .unwrap();
    assert_eq!(next(&mut received).await.as_deref(), Some(&b"warmup"[..]));

    signal(&broker, "-STOP");
    for i in 0..N {
        publisher
            .publish(
                format!("resend/{i}"),
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    broker.kill();
    broker.start_again();
    // The subscriber re-subscribes on the new, empty broker before the publisher comes back.
    assert_eq!(next(&mut received).await, None, "SUBACK after the restart");
    resume.notify_one();

    let mut payloads = BTreeSet::new();
    let start = Instant::now();
    while payloads.len() < N {
        assert!(
            start.elapsed() < DEADLINE,
            "only {} of {N} arrived",
            payloads.len()
        );
        if let Some(payload) = next(&mut received).await {
            payloads.insert(String::from_utf8(payload).unwrap());
        }
    }
    let expected: BTreeSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);

    // Every publish span ends, at the PUBACK of its resent PUBLISH.
    let resent_spans = || -> Vec<_> {
        telemetry
            .spans_of(SpanKind::Producer)
            .into_iter()
            .filter(|span| {
                attribute(span, "messaging.destination.name") != Some(&"resend/warmup".into())
            })
            .collect()
    };
    let start = Instant::now();
    while resent_spans().len() < N {
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {N} spans ended",
            resent_spans().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.disconnect().await.unwrap();
    let pub_loop = tokio::time::timeout(DEADLINE, pub_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pub_loop.open_publish_spans(), 0);
    let spans = resent_spans();
    assert_eq!(spans.len(), N, "one span per publish");
    assert!(
        spans.iter().all(|span| span.status == Status::Unset),
        "no publish failed"
    );
    // What was written and not acknowledged (at most the broker's receive maximum) is resent;
    // what was never written was held and sent normally.
    let resent = reader.total(RESENT);
    assert!(
        resent > 0.0 && resent < N as f64,
        "resent counted: {resent}"
    );
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&telemetry.spans());
}

/// With resending turned off, rumqttc's behaviour returns for what it had written: those
/// publishes end with `error.type = session_lost`. Publishes never written (the traced event loop
/// holds them across the reconnect) are sent on the new connection, since they cannot be
/// duplicates. Every span ends; none is left open.
#[tokio::test(flavor = "multi_thread")]
async fn without_resending_dropped_publishes_end_as_session_lost() {
    const N: usize = 50;
    let mut broker = Broker::start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let (publisher, mut pub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("lost"), broker.host(), broker.port()),
        N + 10,
        telemetry.builder().meter_provider(&reader.provider).build(),
    );
    pub_loop.set_resend_after_session_loss(false);
    let resume = Arc::new(Notify::new());
    let pub_task = drive_publisher(pub_loop, Arc::clone(&resume));
    publisher
        .publish_confirmed("lost/warmup", QoS::AtLeastOnce, false, "x", None)
        .await
        .unwrap();
    signal(&broker, "-STOP");
    for i in 0..N {
        publisher
            .publish(format!("lost/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    // Some of them are written (counted as sent) before the broker dies.
    let start = Instant::now();
    while reader.total(MESSAGING_CLIENT_SENT_MESSAGES) < 2.0 {
        assert!(start.elapsed() < DEADLINE, "nothing written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    broker.start_again();
    resume.notify_one();
    let start = Instant::now();
    let topic_spans = || -> Vec<_> {
        telemetry
            .spans_of(SpanKind::Producer)
            .into_iter()
            .filter(|span| {
                attribute(span, "messaging.destination.name") != Some(&"lost/warmup".into())
            })
            .collect()
    };
    while topic_spans().len() < N {
        let ended = topic_spans().len();
        assert!(start.elapsed() < DEADLINE, "{ended} of {N} spans ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = topic_spans();
    let lost: Vec<_> = spans
        .iter()
        .filter(|span| span.status != Status::Unset)
        .collect();
    assert!(!lost.is_empty(), "the written publishes were dropped");
    for span in &lost {
        assert_eq!(attribute(span, "error.type"), Some(&"session_lost".into()));
        let written = attribute(span, "messaging.mqtt.packet_id").is_some();
        assert!(written, "only written publishes are lost");
    }
    for span in spans.iter().filter(|span| span.status == Status::Unset) {
        let sent = attribute(span, "messaging.mqtt.packet_id").is_some();
        assert!(sent, "sent after the reconnect");
    }
    publisher.disconnect().await.unwrap();
    let pub_loop = tokio::time::timeout(DEADLINE, pub_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pub_loop.open_publish_spans(), 0);
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&telemetry.spans());
}
