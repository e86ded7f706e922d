//! Beyond one broker: one trace across two mosquitto brokers joined by a bridge, and a shared
//! subscription split among consumers in separate processes.
//!
//! * Bridge: broker A bridges `bridge/#` to broker B (mosquitto.conf `connection`, `topic
//!   bridge/# both 1`). A publisher on A, a `TracedSubscriber` on B: the subscriber's process
//!   span is a child of the publish span, in the same trace. MQTT 5 (bridge protocol `mqttv50`):
//!   the trace context travels in user properties, which a broker must forward unaltered (MQTT 5
//!   section 3.3.2.3.7, [MQTT-3.3.2-17]). MQTT 3.1.1 (bridge protocol `mqttv311`): in the
//!   payload envelope (`V4Propagation::Envelope`), which a broker forwards as payload bytes.
//! * Shared subscription (MQTT 5 section 4.8.2): consumers in separate processes (this test
//!   binary, re-executed with `MULTI_BROKER_CONSUMER` set, running the ignored test
//!   `share_consumer_process`) subscribe `$share/workers/jobs/#`; one stream of messages is split
//!   among them, each message is processed exactly once overall, and each process span is a
//!   child of its message's publish span.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::telemetry::{SpanLog, Telemetry, assert_success, destination};
use common::traced::{DEADLINE, wait_until};
use common::{Broker, unique_client_id};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;

/// Two brokers: B, and A with a bridge to B over `protocol`, connected.
fn bridged_brokers(protocol: &str) -> (Broker, Broker) {
    let b = Broker::start();
    let name = unique_client_id("bridge");
    let a = Broker::builder()
        .bridge(&name, &b, "bridge/#", protocol)
        .start();
    assert!(
        b.wait_for_bridge(&name, DEADLINE),
        "the bridge {name} did not connect; A's log:\n{}",
        a.log_tail(20)
    );
    (a, b)
}

/// The bridge test, written once; `kit` is the version's module above.
macro_rules! bridge_tests {
    () => {
        use super::*;
        use kit::{Message, QoS, TracedPublisher, TracedSubscriber};

        #[tokio::test(flavor = "multi_thread")]
        async fn one_trace_across_a_bridge_from_publisher_to_subscriber() {
            let (a, b) = bridged_brokers(kit::BRIDGE_PROTOCOL);
            let publishers = Telemetry::new();
            let subscribers = Telemetry::new();
            let payloads = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&payloads);
            let subscriber = TracedSubscriber::builder_with_instrumentation(
                kit::options(&unique_client_id("sub-b"), b.port()),
                10,
                kit::instrumentation(&subscribers),
            )
            .route("bridge/#", QoS::AtLeastOnce, move |message: Message| {
                seen.lock().unwrap().push(message.payload().to_vec());
                std::future::ready(Ok(()))
            })
            .expect("valid filter")
            .start();
            subscriber.subscribed().await.expect("subscribed on B");

            let publisher = TracedPublisher::with_instrumentation(
                kit::options(&unique_client_id("pub-a"), a.port()),
                10,
                kit::instrumentation(&publishers),
            );
            assert!(publisher.wait_connected().await, "publisher connects to A");
            let topics: Vec<String> = (0..5).map(|i| format!("bridge/site/{i}")).collect();
            for topic in &topics {
                publisher
                    .publish_confirmed(topic.as_str(), QoS::AtLeastOnce, false, "21.5")
                    .await
                    .expect("A acknowledges");
            }
            for topic in &topics {
                let produced = publishers.wait_spans(SpanKind::Producer, topic, 1).await;
                let processed = subscribers.wait_spans(SpanKind::Consumer, topic, 1).await;
                let (producer, process) = (&produced[0], &processed[0]);
                assert_eq!(processed.len(), 1, "processed once on B");
                assert_eq!(
                    process.span_context.trace_id(),
                    producer.span_context.trace_id(),
                    "one trace across the bridge"
                );
                assert_eq!(process.parent_span_id, producer.span_context.span_id());
                assert_success(producer);
                assert_success(process);
            }
            // The envelope is stripped: the application sees the original payload.
            assert!(payloads.lock().unwrap().iter().all(|p| p == b"21.5"));
            publisher.shutdown().await;
            subscriber.shutdown().await;
        }
    };
}

mod v4 {
    use super::common::kit::v4 as kit;
    bridge_tests!();
}

mod v5 {
    use super::common::kit::v5 as kit;
    bridge_tests!();
}

/// Environment of a consumer process: `port client-id` of its broker and its client id.
const CONSUMER_ENV: &str = "MULTI_BROKER_CONSUMER";
/// The shared subscription of the consumers.
const SHARED_FILTER: &str = "$share/workers/jobs/#";

/// A consumer process (started by `shared_subscription_splits_one_stream_across_processes`):
/// a v5 `TracedSubscriber` on `$share/workers/jobs/#` that prints, for every process span that
/// ends, `PROCESSED {topic} {trace id} {parent span id} {ok|error}` on stdout, and `READY` once
/// subscribed. It runs until its parent kills it or closes its stdin. Without
/// `MULTI_BROKER_CONSUMER` it does nothing.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a consumer process of shared_subscription_splits_one_stream_across_processes, which runs it"]
async fn share_consumer_process() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};

    let Ok(setting) = std::env::var(CONSUMER_ENV) else {
        return;
    };
    let (port, id) = setting.split_once(' ').expect("`port client-id`");
    let log = SpanLog::new();
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        common::kit::v5::options(id, port.parse().expect("port")),
        10,
        log.instrumentation(),
    )
    .route(SHARED_FILTER, QoS::AtLeastOnce, |_message: Message| {
        std::future::ready(Ok(()))
    })
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    let mut out = std::io::stdout();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    // Ends when the parent closes stdin (or kills this process).
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    tokio::pin!(stdin_closed);
    let mut reported = 0;
    loop {
        for span in log.since(reported) {
            reported += 1;
            if span.span_kind == SpanKind::Consumer {
                let status = if span.status == opentelemetry::trace::Status::Unset {
                    "ok"
                } else {
                    "error"
                };
                writeln!(
                    out,
                    "PROCESSED {} {} {} {status}",
                    destination(&span).unwrap_or_default(),
                    span.span_context.trace_id(),
                    span.parent_span_id
                )
                .unwrap();
                out.flush().unwrap();
            }
        }
        tokio::select! {
            _ = &mut stdin_closed => break,
            // Paces the report; the parent waits on the lines, not on this interval.
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    subscriber.shutdown().await;
}

/// A consumer process, killed on drop; its stdout lines are collected.
struct Consumer {
    id: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Consumer {
    fn spawn(broker: &Broker, id: String) -> Consumer {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "share_consumer_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CONSUMER_ENV, format!("{} {id}", broker.port()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a consumer process");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Consumer { id, child, lines }
    }

    fn ready(&self) -> bool {
        // libtest prints `test share_consumer_process ... ` before the test's own output.
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.ends_with("READY"))
    }

    /// (topic, trace id, parent span id, status) of every message it processed.
    fn processed(&self) -> Vec<(String, String, String, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| line.split_once("PROCESSED ").map(|(_, rest)| rest))
            .map(|rest| {
                let fields: Vec<&str> = rest.split(' ').collect();
                assert_eq!(fields.len(), 4, "{rest}");
                (
                    fields[0].to_owned(),
                    fields[1].to_owned(),
                    fields[2].to_owned(),
                    fields[3].to_owned(),
                )
            })
            .collect()
    }
}

/// Three consumer processes share `$share/workers/jobs/#`; 60 QoS 1 messages, one topic each,
/// from one traced publisher. MQTT 5 section 4.8.2: each message of a shared subscription goes
/// to one session of the group. Checks: every message is processed exactly once overall, every
/// consumer gets a part of the stream, and every process span is a child of its message's
/// publish span (same trace id, parent = the publish span) and ends without error.
#[tokio::test(flavor = "multi_thread")]
async fn shared_subscription_splits_one_stream_across_processes() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc_opentelemetry::v5::TracedPublisher;

    const CONSUMERS: usize = 3;
    const M: usize = 60;
    let broker = Broker::start();
    let consumers: Vec<Consumer> = (0..CONSUMERS)
        .map(|_| Consumer::spawn(&broker, unique_client_id("worker")))
        .collect();
    wait_until("every consumer subscribed", || {
        consumers.iter().all(Consumer::ready)
    })
    .await;
    for consumer in &consumers {
        assert!(broker.is_client_connected(&consumer.id), "{}", consumer.id);
    }

    let telemetry = Telemetry::new();
    let publisher = TracedPublisher::with_instrumentation(
        common::kit::v5::options(&unique_client_id("producer"), broker.port()),
        M + 10,
        telemetry.instrumentation(),
    );
    assert!(publisher.wait_connected().await);
    let topics: Vec<String> = (0..M).map(|i| format!("jobs/{i}")).collect();
    for topic in &topics {
        publisher
            .publish(topic.as_str(), QoS::AtLeastOnce, false, "job")
            .await
            .expect("queued");
    }
    publisher.flush().await;
    let total = || consumers.iter().map(|c| c.processed().len()).sum::<usize>();
    wait_until(&format!("{M} messages processed"), || total() >= M).await;

    let producers: HashMap<String, SpanData> = telemetry
        .spans_of(SpanKind::Producer)
        .into_iter()
        .map(|span| (destination(&span).unwrap(), span))
        .collect();
    let mut by_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for consumer in &consumers {
        let processed = consumer.processed();
        assert!(
            !processed.is_empty(),
            "{} got no part of the stream",
            consumer.id
        );
        eprintln!("{} processed {}", consumer.id, processed.len());
        for (topic, trace_id, parent, status) in processed {
            let producer = &producers[&topic];
            assert_success(producer);
            assert_eq!(
                trace_id,
                producer.span_context.trace_id().to_string(),
                "{topic}: the process span is in its sender's trace"
            );
            assert_eq!(parent, producer.span_context.span_id().to_string());
            assert_eq!(status, "ok", "{topic}");
            by_topic.entry(topic).or_default().push(consumer.id.clone());
        }
    }
    assert_eq!(by_topic.len(), M, "every message processed");
    for (topic, ids) in &by_topic {
        assert_eq!(ids.len(), 1, "{topic} processed by {ids:?}");
    }
    publisher.shutdown().await;
}
