//! Fault injection against mosquitto (DESIGN.md "Spans": correlation under reconnect replay;
//! nothing handed to `publish()` vanishes): a 100,000-message QoS 1 stream while the broker is
//! restarted 5 times, with persistent sessions on both sides. Every payload arrives, and every
//! publish span ends exactly once, without error.
//!
//! `FAULTS_N` overrides the message count (default 100,000).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::telemetry::repeated_attribute_keys;
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use rumqttc_opentelemetry::Instrumentation;
use rumqttc_opentelemetry::v4::{TracedClient, TracedEventLoop};
use tokio::sync::{mpsc, watch};

/// Keeps what the test checks of each exported span, not the spans: 100,000 of them in memory
/// would weigh hundreds of megabytes.
#[derive(Debug, Default, Clone)]
struct Counting {
    producer: Arc<Mutex<ProducerSpans>>,
}

#[derive(Debug, Default)]
struct ProducerSpans {
    ids: HashSet<SpanId>,
    ended: usize,
    failed: Vec<String>,
    /// Spans of any kind that repeat an attribute key: how many, and the first few.
    repeated_keys: usize,
    repeated_examples: Vec<String>,
}

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut producer = self.producer.lock().unwrap();
        for span in &batch {
            let repeated = repeated_attribute_keys(span);
            if !repeated.is_empty() {
                producer.repeated_keys += 1;
                if producer.repeated_examples.len() < 5 {
                    producer
                        .repeated_examples
                        .push(format!("span {:?}: {repeated:?}", span.name));
                }
            }
        }
        for span in batch
            .into_iter()
            .filter(|s| s.span_kind == SpanKind::Producer)
        {
            producer.ended += 1;
            producer.ids.insert(span.span_context.span_id());
            if let Status::Error { description } = &span.status {
                producer.failed.push(description.to_string());
            }
        }
        Ok(())
    }
}

fn message_count() -> usize {
    std::env::var("FAULTS_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// Polls until told to stop, pausing briefly after errors (rumqttc reconnects without delay);
/// forwards the payloads of incoming publishes, and `None` for a SUBACK; hands the event loop
/// back at the end.
fn drive(
    mut eventloop: TracedEventLoop,
    mut stop: watch::Receiver<bool>,
    deliveries: Option<mpsc::UnboundedSender<Option<u32>>>,
) -> tokio::task::JoinHandle<TracedEventLoop> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return eventloop,
                polled = eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let (Some(tx), Ok(bytes)) = (&deliveries, <[u8; 4]>::try_from(&publish.payload[..])) {
                            let _ = tx.send(Some(u32::from_be_bytes(bytes)));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = &deliveries {
                            let _ = tx.send(None);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qos1_stream_survives_five_broker_restarts() {
    let n = message_count();
    let deadline = Duration::from_secs(600);
    // mosquitto drops QoS 1 messages for an offline subscriber past `max_queued_messages` (1000
    // by default); while both clients reconnect, the publisher may get ahead by more than that.
    // Restarts stop the broker with SIGTERM, which saves its database; the fixture's default of
    // saving after every change would make the broker itself the bottleneck of this stream.
    let mut broker = Broker::builder()
        .persistence(true)
        .max_queued(0)
        .extra_config("autosave_on_changes false\nautosave_interval 3600")
        .start();
    let exporter = Counting::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation = || {
        Instrumentation::builder()
            .tracer_provider(&provider)
            .build()
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut sub_options =
        MqttOptions::new(unique_client_id("faults-sub"), broker.host(), broker.port());
    sub_options.set_clean_session(false);
    let (subscriber, sub_loop) =
        TracedClient::with_instrumentation(sub_options, 100, instrumentation());
    subscriber
        .subscribe("faults/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut deliveries) = mpsc::unbounded_channel();
    let sub_task = drive(sub_loop, stop_rx.clone(), Some(tx));
    // The subscription exists before the first publish.
    let suback = tokio::time::timeout(Duration::from_secs(10), deliveries.recv()).await;
    assert!(matches!(suback, Ok(Some(None))), "SUBACK: {suback:?}");

    let mut pub_options =
        MqttOptions::new(unique_client_id("faults-pub"), broker.host(), broker.port());
    pub_options.set_clean_session(false);
    let (publisher, pub_loop) =
        TracedClient::with_instrumentation(pub_options, 1000, instrumentation());
    let pub_task = drive(pub_loop, stop_rx, None);
    let producer = tokio::spawn(async move {
        for i in 0..n as u32 {
            publisher
                .publish(
                    "faults/stream",
                    QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .expect("the event loop is running");
        }
    });

    let start = Instant::now();
    let mut seen = vec![false; n];
    let mut distinct = 0;
    let mut restarts = 0;
    while distinct < n {
        assert!(start.elapsed() < deadline, "{distinct} of {n} arrived");
        let Ok(Some(Some(id))) =
            tokio::time::timeout(Duration::from_secs(30), deliveries.recv()).await
        else {
            let log = broker.log();
            let missing: Vec<usize> = (0..n).filter(|&i| !seen[i]).take(10).collect();
            panic!(
                "no delivery for 30 s; {distinct} of {n} arrived, {restarts} restarts; first missing \
                 {missing:?}; the broker logged {} PUBLISH received, {} sent to the subscriber; \
                 {} publish spans ended",
                log.matches("Received PUBLISH from faults-pub").count(),
                log.matches("Sending PUBLISH to faults-sub").count(),
                exporter.producer.lock().unwrap().ended,
            );
        };
        if let Some(slot) = seen.get_mut(id as usize)
            && !*slot
        {
            *slot = true;
            distinct += 1;
            if restarts < 5 && distinct >= (restarts + 1) * n / 6 {
                tokio::task::block_in_place(|| broker.restart());
                restarts += 1;
            }
        }
    }
    assert_eq!(restarts, 5);
    producer.await.unwrap();

    // Every publish span ends once: wait for the last acknowledgements.
    while exporter.producer.lock().unwrap().ended < n {
        assert!(
            start.elapsed() < deadline,
            "{} of {n} spans ended",
            exporter.producer.lock().unwrap().ended
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    let pub_loop = pub_task.await.unwrap();
    let _sub_loop = sub_task.await.unwrap();
    assert_eq!(pub_loop.open_publish_spans(), 0);
    let producer = exporter.producer.lock().unwrap();
    assert_eq!(producer.ended, n, "each span ended exactly once");
    assert_eq!(producer.ids.len(), n);
    assert!(
        producer.failed.is_empty(),
        "failed: {:?}",
        &producer.failed[..producer.failed.len().min(5)]
    );
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_eq!(
        producer.repeated_keys, 0,
        "spans that repeat an attribute key, first ones: {:?}",
        producer.repeated_examples
    );
}
