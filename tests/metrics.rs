//! Messaging metrics (OpenTelemetry semconv, DESIGN.md "Metrics") and MQTT connection-health
//! metrics, recorded by the traced clients against a real mosquitto and read back through the
//! SDK's `InMemoryMetricExporter`.

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::time::{Duration, Instant};

use common::telemetry::{Telemetry, attribute};
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::trace::{SpanKind, Status};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::Instrumentation;
use rumqttc_opentelemetry::metrics::{
    CONNECTION_ATTEMPTS, CONNECTION_DURATION, INFLIGHT, KEEPALIVE_RTT, RECONNECTS,
};
use rumqttc_opentelemetry::semconv::metric::{
    MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_OPERATION_DURATION,
    MESSAGING_CLIENT_SENT_MESSAGES,
};
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(15);

/// Polls an event loop in a task, forwarding incoming publishes and CONNACKs; pauses briefly
/// after an error because rumqttc reconnects without any delay.
fn drive(mut eventloop: TracedEventLoop) -> (mpsc::UnboundedReceiver<Event>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if matches!(
                        event,
                        Event::Incoming(
                            Packet::Publish(_) | Packet::ConnAck(_) | Packet::SubAck(_)
                        )
                    ) && tx.send(event).is_err()
                    {
                        return;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    (rx, task)
}

async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    what: &str,
    f: impl Fn(&Event) -> bool,
) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = rx.recv().await.expect("event loop running");
            if f(&event) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within the deadline"));
}

/// Waits, bounded, until `condition` holds; checks every 20 ms.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what} did not happen within the deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn instrumentation(telemetry: &Telemetry, reader: &MetricReader) -> Instrumentation {
    telemetry.builder().meter_provider(&reader.provider).build()
}

/// DESIGN.md "Metrics": sent and consumed counters equal the number of messages exactly, and the
/// operation-duration histogram has one point per publish, for QoS 0, 1 and 2.
#[tokio::test(flavor = "multi_thread")]
async fn counters_and_histograms_count_every_message() {
    const N: usize = 40;
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();

    let (subscriber, sub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("sub"), broker.host(), broker.port()),
        10,
        instrumentation(&telemetry, &reader),
    );
    let (mut deliveries, _sub_task) = drive(sub_loop);
    subscriber.subscribe("m/#", QoS::ExactlyOnce).await.unwrap();
    next_matching(&mut deliveries, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    let (publisher, pub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("pub"), broker.host(), broker.port()),
        10,
        instrumentation(&telemetry, &reader),
    );
    let (_acks, _pub_task) = drive(pub_loop);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..N {
            publisher
                .publish_confirmed(format!("m/{}/{i}", qos as u8), qos, false, "x", None)
                .await
                .unwrap();
        }
    }
    let mut received = 0;
    while received < 3 * N {
        next_matching(&mut deliveries, "a delivery", |e| {
            matches!(e, Event::Incoming(Packet::Publish(_)))
        })
        .await;
        received += 1;
    }

    assert_eq!(reader.total(MESSAGING_CLIENT_SENT_MESSAGES), (3 * N) as f64);
    assert_eq!(
        reader.count(MESSAGING_CLIENT_OPERATION_DURATION),
        (3 * N) as u64
    );
    assert_eq!(
        reader.unit(MESSAGING_CLIENT_OPERATION_DURATION).as_deref(),
        Some("s")
    );
    eventually("every delivery counted", || {
        reader.total(MESSAGING_CLIENT_CONSUMED_MESSAGES) == (3 * N) as f64
    })
    .await;
    for qos in 0..3_i64 {
        let per_qos: f64 = reader
            .points(MESSAGING_CLIENT_SENT_MESSAGES)
            .iter()
            .filter(|p| p.attribute("messaging.mqtt.qos") == Some(&qos.into()))
            .map(|p| p.value)
            .sum();
        assert_eq!(per_qos, N as f64, "QoS {qos}");
    }
    for point in reader.points(MESSAGING_CLIENT_OPERATION_DURATION) {
        assert_eq!(point.attribute("messaging.system"), Some(&"mqtt".into()));
        assert_eq!(
            point.attribute("messaging.operation.name"),
            Some(&"publish".into())
        );
        assert_eq!(
            point.attribute("server.port"),
            Some(&i64::from(broker.port()).into())
        );
        assert!(point.attribute("error.type").is_none());
        assert!(
            point.attribute("messaging.destination.name").is_none(),
            "raw topics are opt-in"
        );
    }
}

/// MQTT 5 section 3.4.2.1: a PUBACK reason code of 0x87 (Not authorized) fails the publish; the
/// span and the duration metric carry the same `error.type`.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_publish_has_the_same_error_type_on_span_and_metric() {
    let broker = Broker::builder().acl(&["denied/#"]).start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let (client, eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("denied"), broker.host(), broker.port()),
        10,
        instrumentation(&telemetry, &reader),
    );
    let (_events, _task) = drive(eventloop);
    let outcome = client
        .publish_confirmed("denied/x", QoS::AtLeastOnce, false, "x", None)
        .await;
    assert!(
        matches!(
            outcome,
            Err(rumqttc_opentelemetry::Error::PublishFailed(
                "not_authorized"
            ))
        ),
        "{outcome:?}"
    );
    let spans = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(spans.len(), 1);
    assert!(matches!(spans[0].status, Status::Error { .. }));
    assert_eq!(
        attribute(&spans[0], "error.type"),
        Some(&"not_authorized".into())
    );
    let points = reader.points(MESSAGING_CLIENT_OPERATION_DURATION);
    assert_eq!(points.len(), 1);
    assert_eq!(
        points[0].attribute("error.type"),
        Some(&"not_authorized".into())
    );
    assert_eq!(
        reader.total(MESSAGING_CLIENT_SENT_MESSAGES),
        1.0,
        "it was written"
    );
}

/// Connection health: an attempt against a port nothing listens on is counted with
/// `error.type = connection_refused`.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connections_are_counted_with_their_error_type() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let (_client, mut eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("refused"), "127.0.0.1", port),
        10,
        instrumentation(&telemetry, &reader),
    );
    for _ in 0..3 {
        assert!(eventloop.poll().await.is_err());
    }
    let points = reader.points(CONNECTION_ATTEMPTS);
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].value, 3.0);
    assert_eq!(
        points[0].attribute("error.type"),
        Some(&"connection_refused".into())
    );
    assert_eq!(
        points[0].attribute("server.port"),
        Some(&i64::from(port).into())
    );
    assert!(
        points[0].attribute("messaging.client.id").is_none(),
        "client id is opt-in"
    );
}

/// Connection health: a broker restart gives one reconnect, one connection-lifetime point with
/// the reason, and two successful attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_counts_one_reconnect_and_one_lifetime() {
    let mut broker = Broker::start();
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let (_client, eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("restart"), broker.host(), broker.port()),
        10,
        instrumentation(&telemetry, &reader),
    );
    let (mut events, _task) = drive(eventloop);
    next_matching(&mut events, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    broker.restart();
    next_matching(&mut events, "second CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;

    assert_eq!(reader.total(RECONNECTS), 1.0);
    let lifetimes = reader.points(CONNECTION_DURATION);
    assert_eq!(
        lifetimes.iter().map(|p| p.count).sum::<u64>(),
        1,
        "{lifetimes:?}"
    );
    assert!(
        lifetimes[0].attribute("error.type").is_some(),
        "{lifetimes:?}"
    );
    let successes: f64 = reader
        .points(CONNECTION_ATTEMPTS)
        .iter()
        .filter(|p| p.attribute("error.type").is_none())
        .map(|p| p.value)
        .sum();
    assert_eq!(successes, 2.0);
}

/// Connection health: with a 1 s keep-alive, PINGREQ/PINGRESP round trips are recorded. (MQTT
/// 3.1.1: rumqttc's MQTT 5 options refuse a keep-alive under 5 s.)
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_round_trips_are_recorded() {
    let broker = Broker::start();
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let mut options =
        rumqttc::MqttOptions::new(unique_client_id("ping"), broker.host(), broker.port());
    options.set_keep_alive(Duration::from_secs(1));
    let (_client, mut eventloop) = rumqttc_opentelemetry::v4::TracedClient::with_instrumentation(
        options,
        10,
        instrumentation(&telemetry, &reader),
    );
    let _task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    eventually("two keep-alive round trips", || {
        reader.count(KEEPALIVE_RTT) >= 2
    })
    .await;
    assert_eq!(reader.unit(KEEPALIVE_RTT).as_deref(), Some("s"));
    _task.abort();
}

/// The in-flight gauge reads rumqttc's state: above zero while QoS 1 acknowledgements are
/// outstanding (the broker is frozen with SIGSTOP), zero once they came.
#[tokio::test(flavor = "multi_thread")]
async fn the_inflight_gauge_follows_outstanding_acks() {
    let broker = Broker::start();
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let (client, eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("inflight"), broker.host(), broker.port()),
        10,
        instrumentation(&telemetry, &reader),
    );
    let (mut events, _task) = drive(eventloop);
    next_matching(&mut events, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let pid = broker.pid().expect("broker running").to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    for i in 0..3 {
        client
            .publish(format!("g/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let gauge = || reader.points(INFLIGHT).iter().map(|p| p.value).sum::<f64>();
    eventually("in-flight publishes", || gauge() == 3.0).await;
    signal("-CONT");
    eventually("acknowledgements", || gauge() == 0.0).await;
}

/// Cardinality: 1,000 per-device topics under a configured template make one metric stream, not
/// 1,000 (raw topics stay out of metric attributes by default).
#[tokio::test(flavor = "multi_thread")]
async fn per_device_topics_aggregate_under_their_template() {
    let broker = Broker::start();
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry
        .builder()
        .meter_provider(&reader.provider)
        .publish_template("devices/+/telemetry")
        .unwrap()
        .build();
    let (client, eventloop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("fleet"), broker.host(), broker.port()),
        100,
        instrumentation,
    );
    let (_events, _task) = drive(eventloop);
    for device in 0..1000 {
        client
            .publish(
                format!("devices/{device}/telemetry"),
                QoS::AtMostOnce,
                false,
                "x",
            )
            .await
            .unwrap();
    }
    eventually("1,000 sent", || {
        reader.total(MESSAGING_CLIENT_SENT_MESSAGES) == 1000.0
    })
    .await;
    let points = reader.points(MESSAGING_CLIENT_SENT_MESSAGES);
    assert_eq!(points.len(), 1, "one stream");
    assert_eq!(
        points[0].attribute("messaging.destination.template"),
        Some(&"devices/+/telemetry".into())
    );
    let spans = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(spans[0].name, "publish devices/+/telemetry");
}

/// The seed's instrument structs are public and can be driven by hand, on the same instruments
/// the traced clients use.
#[test]
fn metric_structs_can_be_driven_by_hand() {
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider;
    use rumqttc_opentelemetry::metrics::{
        MqttConnectionMetrics, MqttPublisherMetrics, MqttSubscriberMetrics,
    };
    use rumqttc_opentelemetry::semconv::metric::MESSAGING_PROCESS_DURATION;

    let reader = MetricReader::new();
    let meter = reader.provider.meter("by-hand");
    let attributes = [KeyValue::new("messaging.system", "mqtt")];
    let publisher = MqttPublisherMetrics::new(&meter);
    publisher.record_sent(&attributes);
    publisher.record_body_size(12, &attributes);
    publisher.record_publish(Duration::from_millis(3), &attributes, None);
    publisher.record_publish(Duration::from_millis(4), &attributes, Some("ack_timeout"));
    let subscriber = MqttSubscriberMetrics::new(&meter);
    subscriber.record_consumed(&attributes);
    subscriber.record_process(Duration::from_millis(2), &attributes, None);
    let connection = MqttConnectionMetrics::new(&meter);
    connection.record_reconnection(&attributes);
    connection.record_connection_attempt(&attributes, Some("timeout"));

    assert_eq!(reader.total(MESSAGING_CLIENT_SENT_MESSAGES), 1.0);
    assert_eq!(reader.count(MESSAGING_CLIENT_OPERATION_DURATION), 2);
    let failed: Vec<_> = reader
        .points(MESSAGING_CLIENT_OPERATION_DURATION)
        .into_iter()
        .filter(|p| p.attribute("error.type") == Some(&"ack_timeout".into()))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(reader.total(MESSAGING_CLIENT_CONSUMED_MESSAGES), 1.0);
    assert_eq!(reader.count(MESSAGING_PROCESS_DURATION), 1);
    assert_eq!(reader.total(RECONNECTS), 1.0);
    assert_eq!(reader.total(CONNECTION_ATTEMPTS), 1.0);
    let buckets: Vec<f64> = {
        // The duration histograms use the semconv boundaries.
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        reader.provider.force_flush().unwrap();
        let exports = reader.exporter.get_finished_metrics().unwrap();
        let export = exports.last().unwrap();
        let metric = export
            .scope_metrics()
            .flat_map(|s| s.metrics())
            .find(|m| m.name() == MESSAGING_CLIENT_OPERATION_DURATION)
            .unwrap();
        match metric.data() {
            AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                h.data_points().next().unwrap().bounds().collect()
            }
            other => panic!("not an f64 histogram: {other:?}"),
        }
    };
    assert_eq!(
        buckets,
        rumqttc_opentelemetry::semconv::metric::DURATION_BUCKETS.to_vec()
    );
}
