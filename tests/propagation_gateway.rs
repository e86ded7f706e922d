//! A gateway built on the crate forwards the W3C trace context whole, through a real mosquitto,
//! between independent peers: `mosquitto_pub` publishes with several `tracestate` user
//! properties (one with keys opentelemetry 0.33's `TraceState` refuses) and the
//! `random-trace-id` flag; a `v5::TracedSubscriber` handler republishes through the subscriber's
//! publisher (the crate's own inject path: `process` span -> `publish` span); a plain rumqttc
//! client reads what arrives.
//!
//! Section names are those of the current W3C Trace Context text (`tests/w3c-trace-context`).

mod common;

use std::time::Duration;

use common::telemetry::Telemetry;
use common::{Broker, unique_client_id};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(15);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";

fn options(broker: &Broker, prefix: &str) -> MqttOptions {
    MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port())
}

/// A plain rumqttc subscriber on `filter`, subscribed (SUBACK seen), handing out PUBLISHes.
async fn plain_subscriber(
    broker: &Broker,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Publish>) {
    let (client, mut eventloop) = AsyncClient::new(options(broker, "down"), 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queued");
    timeout(DEADLINE, async {
        while !matches!(
            eventloop.poll().await.expect("connected"),
            Event::Incoming(Packet::SubAck(_))
        ) {}
    })
    .await
    .expect("SUBACK within the deadline");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event
                && tx.send(publish).is_err()
            {
                return;
            }
        }
    });
    (client, rx)
}

/// "tracestate Header Field Values" (several properties are one list, in order), "Key" (the
/// current grammar: `foo@@bar`, 241 + `@` + 14 characters, which the SDK refuses) and "Random
/// Trace ID Flag" (a continued trace keeps it), end to end with the SDK's default sampler.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_forwards_the_random_flag_and_the_whole_tracestate() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_down, mut arrivals) = plain_subscriber(&broker, "gw/out").await;

    let builder = TracedSubscriber::builder_with_instrumentation(
        options(&broker, "gw"),
        10,
        telemetry.instrumentation(),
    );
    let publisher = builder.publisher();
    let gateway = builder
        .route("gw/in", QoS::AtLeastOnce, move |message: Message| {
            let publisher = publisher.clone();
            async move {
                let payload = message.payload().clone();
                publisher
                    .publish("gw/out", QoS::AtLeastOnce, false, payload)
                    .await?;
                Ok(())
            }
        })
        .expect("a valid filter")
        .start();
    timeout(DEADLINE, gateway.subscribed())
        .await
        .expect("subscribed within the deadline")
        .expect("the broker accepts the subscription");

    let long_key = format!("{}@{}", "t".repeat(241), "v".repeat(14));
    let third = format!("{long_key}=3");
    let args = [
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "gw/in",
        "-m",
        "21.5",
        "-D",
        "publish",
        "user-property",
        "traceparent",
        TRACEPARENT,
        "-D",
        "publish",
        "user-property",
        "tracestate",
        "foo@@bar=1",
        "-D",
        "publish",
        "user-property",
        "tracestate",
        "rojo=2, foo@@bar=9",
        "-D",
        "publish",
        "user-property",
        "tracestate",
        &third,
    ];
    let output = block_in_place(|| broker.mosquitto_pub(&args));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let forwarded = timeout(DEADLINE, arrivals.recv())
        .await
        .expect("the gateway forwards within the deadline")
        .expect("a message");
    assert_eq!(&forwarded.payload[..], b"21.5");
    let properties = forwarded.properties.expect("user properties");
    let values = |name: &str| -> Vec<String> {
        properties
            .user_properties
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect()
    };
    let traceparent = values("traceparent");
    assert_eq!(traceparent.len(), 1, "{properties:?}");
    assert_eq!(&traceparent[0][..35], &TRACEPARENT[..35], "same trace");
    assert_ne!(
        &traceparent[0][36..52],
        &TRACEPARENT[36..52],
        "new parent-id"
    );
    assert!(traceparent[0].ends_with("-03"), "flags: {}", traceparent[0]);
    // One list, in order, the duplicated key's left-most member kept, nothing the SDK refuses
    // lost.
    assert_eq!(
        values("tracestate"),
        [format!("foo@@bar=1,rojo=2,{long_key}=3")]
    );
    gateway.shutdown().await;
}
