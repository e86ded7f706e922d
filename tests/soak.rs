//! Soak: 1,000,000 traced messages at QoS 0 and at QoS 1 against mosquitto. The process's
//! resident memory must stay flat (within 10 %) between the 100,000th and the 1,000,000th
//! message, and the correlation table never holds more open publish spans than rumqttc's
//! in-flight limit plus the request channel's capacity (DESIGN.md "Spans": "the correlation table
//! is bounded; nothing leaks").
//!
//! Too slow for every CI run; run it with:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_N` overrides the message count.

mod common;

use std::time::Duration;

use common::telemetry::Telemetry;
use common::{Broker, unique_client_id};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::v5::TracedClient;
use tokio::sync::{mpsc, watch};

const INFLIGHT: u16 = 100;
const CAP: usize = 100;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

async fn soak(qos: QoS) {
    let n: usize = std::env::var("SOAK_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let broker = Broker::builder()
        .extra_config("log_type error\nmax_queued_messages 0\nmax_inflight_messages 0")
        .start();
    // Spans go to an exporter that keeps nothing: the SDK pipeline runs, memory must not grow.
    let telemetry = Telemetry::discarding();

    let (subscriber, mut sub_loop) = TracedClient::with_instrumentation(
        MqttOptions::new(unique_client_id("soak-sub"), broker.host(), broker.port()),
        CAP,
        telemetry.instrumentation(),
    );
    subscriber.subscribe("soak/#", qos).await.unwrap();
    let (received_tx, mut received) = mpsc::unbounded_channel::<()>();
    let sub_task = tokio::spawn(async move {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_) | Packet::Publish(_))) => {
                    if received_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // The broker is killed when the test ends.
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("SUBACK");

    let mut options = MqttOptions::new(unique_client_id("soak-pub"), broker.host(), broker.port());
    options.set_outgoing_inflight_upper_limit(INFLIGHT);
    let (publisher, mut pub_loop) =
        TracedClient::with_instrumentation(options, CAP, telemetry.instrumentation());
    let (most_open_tx, most_open) = watch::channel(0_usize);
    let pub_task = tokio::spawn(async move {
        loop {
            match pub_loop.poll().await {
                Ok(_) => {
                    let open = pub_loop.open_publish_spans();
                    most_open_tx.send_if_modified(|most| {
                        let grew = open > *most;
                        *most = (*most).max(open);
                        grew
                    });
                }
                Err(_) => return,
            }
        }
    });
    let producer = tokio::spawn(async move {
        for i in 0..n as u32 {
            publisher
                .publish("soak/stream", qos, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });

    let mut rss_at_100k = 0;
    for i in 1..=n {
        tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} did not arrive"));
        if i == n / 10 {
            rss_at_100k = resident_kib();
        }
    }
    let rss_at_end = resident_kib();
    producer.await.unwrap();
    pub_task.abort();
    sub_task.abort();
    let most_open = *most_open.borrow();
    eprintln!(
        "soak {qos:?}: {n} messages; RSS {rss_at_100k} KiB at {} -> {rss_at_end} KiB at {n}; \
         at most {most_open} open publish spans",
        n / 10
    );
    assert!(
        rss_at_end * 10 <= rss_at_100k * 11,
        "resident memory grew more than 10 %: {rss_at_100k} -> {rss_at_end} KiB"
    );
    assert!(
        most_open <= usize::from(INFLIGHT) + CAP + 1,
        "{most_open} open publish spans"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: 1,000,000 messages; run with --release --ignored"]
async fn a_million_qos0_messages_keep_memory_flat() {
    soak(QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: 1,000,000 messages; run with --release --ignored"]
async fn a_million_qos1_messages_keep_memory_flat() {
    soak(QoS::AtLeastOnce).await;
}
