//! The roles for MQTT 3.1.1: [`Protocol`] over `crate::v4`, the handler's [`Message`], and the
//! public types.

// rumqttc's error types are large; they pass through unchanged.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::{
    ClientError, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};

use super::worker::Incoming;
pub use super::{AckPolicy, RetryPolicy};
use super::{Polled, Protocol, PublishView};
use crate::Error;
use crate::core::{Core, Delivery};
use crate::instrumentation::Instrumentation;
use crate::v4::{TracedClient, TracedEventLoop};

/// MQTT 3.1.1.
pub(crate) struct V4;

impl Protocol for V4 {
    type Options = MqttOptions;
    type Client = TracedClient;
    type EventLoop = TracedEventLoop;
    type QoS = QoS;
    type Publish = Publish;
    type Event = Event;
    type PollError = ConnectionError;
    type ClientError = ClientError;

    const SUBSCRIPTION_IDS: bool = false;

    fn pair(
        options: MqttOptions,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (TracedClient, TracedEventLoop) {
        TracedClient::with_instrumentation(options, cap, instrumentation)
    }

    fn enable_manual_acks(options: &mut MqttOptions) {
        options.set_manual_acks(true);
    }

    fn core(client: &TracedClient) -> &Arc<Core> {
        client.core()
    }

    fn poll(
        eventloop: &mut TracedEventLoop,
    ) -> impl Future<Output = Result<(Event, Option<Delivery>), ConnectionError>> + Send {
        eventloop.poll_traced()
    }

    fn classify(event: Event, delivery: Option<Delivery>) -> Polled<Self> {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => Polled::ConnAck {
                session_present: connack.session_present,
                subscription_ids: false,
            },
            Event::Incoming(Packet::SubAck(suback)) => Polled::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        SubscribeReasonCode::Success(_) => None,
                        SubscribeReasonCode::Failure => Some("failure"),
                    })
                    .collect(),
            ),
            Event::Incoming(Packet::Publish(publish)) => Polled::Publish(publish, delivery),
            Event::Outgoing(Outgoing::Disconnect) => Polled::Disconnect,
            _ => Polled::Other,
        }
    }

    fn view(publish: &Publish) -> PublishView<'_> {
        PublishView {
            topic: Cow::Borrowed(&publish.topic),
            qos: publish.qos.into(),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            body_size: publish.payload.len(),
        }
    }

    fn subscription_ids(_publish: &Publish) -> &[usize] {
        &[]
    }

    async fn ack(client: &TracedClient, publish: &Publish) -> bool {
        client.ack(publish).await.is_ok()
    }

    async fn subscribe(
        client: &TracedClient,
        filters: Vec<(String, QoS)>,
        _id: Option<usize>,
    ) -> bool {
        let filters = filters
            .into_iter()
            .map(|(filter, qos)| SubscribeFilter::new(filter, qos));
        client.subscribe_many(filters).await.is_ok()
    }

    fn publish(
        client: &TracedClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        client.publish_bytes(topic, qos, retain, payload)
    }

    fn publish_confirmed(
        client: &TracedClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        client.publish_confirmed(topic, qos, retain, Vec::from(payload))
    }

    async fn disconnect(client: &TracedClient) -> bool {
        client.disconnect().await.is_ok()
    }
}

/// A message handed to a handler of a [`TracedSubscriber`]: rumqttc's `Publish` (an envelope
/// already stripped from the payload), the route it runs for, and what the event loop recorded
/// when it arrived.
#[derive(Debug, Clone)]
pub struct Message {
    publish: Publish,
    route: Arc<str>,
    delivery: Delivery,
}

impl Message {
    pub(crate) fn from_incoming(incoming: Incoming<V4>) -> Self {
        Self {
            publish: incoming.publish,
            route: incoming.route,
            delivery: incoming.delivery,
        }
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.publish.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.publish.payload
    }

    /// The QoS the message was delivered at.
    pub fn qos(&self) -> QoS {
        self.publish.qos
    }

    /// The RETAIN flag: the broker kept this message for new subscribers, and this
    /// subscription got it when it was made.
    pub fn retained(&self) -> bool {
        self.publish.retain
    }

    /// The DUP flag: the broker may have delivered this message before (a redelivery).
    pub fn duplicate(&self) -> bool {
        self.publish.dup
    }

    /// The filter of the route this handler runs for, as registered (a `$share/{group}/`
    /// prefix included).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The producer's context, when the message carried one, and the receive span.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The rumqttc `Publish`.
    pub fn publish(&self) -> &Publish {
        &self.publish
    }

    /// The rumqttc `Publish`, by value.
    pub fn into_publish(self) -> Publish {
        self.publish
    }
}

super::facade::roles_facade! {
    protocol = V4,
    publisher_example = r#"
# Example

A sensor: publishes its readings at QoS 1, then shuts down; every reading is acknowledged by
the broker before the program exits. Its last will says `offline` if the connection is lost.

```no_run
use rumqttc::{LastWill, MqttOptions, QoS};
use rumqttc_opentelemetry::v4::TracedPublisher;

# async fn run() -> Result<(), Box<dyn std::error::Error>> {
let mut options = MqttOptions::new("sensor-1", "localhost", 1883);
options.set_last_will(LastWill::new("home/sensor-1/status", "offline", QoS::AtLeastOnce, true));
let publisher = TracedPublisher::new(options, 10);

publisher
    .publish_confirmed("home/sensor-1/status", QoS::AtLeastOnce, true, "online")
    .await?;
for reading in ["21.5", "21.6", "21.4"] {
    publisher
        .publish("home/kitchen/temperature", QoS::AtLeastOnce, false, reading)
        .await?;
}
publisher.shutdown().await;
# Ok(())
# }
```
"#,
    subscriber_example = r#"
# Example

At-least-once processing: a reading is acknowledged only once stored, and a persistent session
makes the broker deliver it again after a failure.

```no_run
use rumqttc::{MqttOptions, QoS};
use rumqttc_opentelemetry::v4::{AckPolicy, Message, TracedSubscriber};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn store(message: Message) -> Result<(), BoxError> {
    let celsius: f64 = std::str::from_utf8(message.payload())?.parse()?;
    println!("{}: {celsius}", message.topic());
    Ok(())
}

# async fn run() -> Result<(), Box<dyn std::error::Error>> {
let mut options = MqttOptions::new("collector-1", "localhost", 1883);
options.set_clean_session(false);
let subscriber = TracedSubscriber::builder(options, 10)
    .ack_policy(AckPolicy::AfterSuccess)
    .route("home/+/temperature", QoS::AtLeastOnce, store)?
    .start();
subscriber.subscribed().await?;
tokio::signal::ctrl_c().await?;
subscriber.shutdown().await;
# Ok(())
# }
```
"#,
    builder_example = r#"
# Example

```
use rumqttc::{MqttOptions, QoS};
use rumqttc_opentelemetry::v4::{Message, TracedSubscriber};

async fn log(message: Message) -> Result<(), std::io::Error> {
    println!("{} via {}", message.topic(), message.route());
    Ok(())
}

let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
    .route("home/+/temperature", QoS::AtLeastOnce, log)?
    .route("home/#", QoS::AtMostOnce, log)?
    .route("$share/loggers/home/#", QoS::AtLeastOnce, log)?;

// With MQTT 3.1.1, a message runs every route whose filter matches its topic.
assert_eq!(
    builder.matching_routes("home/kitchen/temperature"),
    ["home/+/temperature", "home/#", "$share/loggers/home/#"]
);
assert_eq!(builder.matching_routes("home"), ["home/#", "$share/loggers/home/#"]);
assert!(builder.matching_routes("office/printer").is_empty());
assert!(builder.route("home/#/x", QoS::AtMostOnce, log).is_err());
# Ok::<(), rumqttc_opentelemetry::Error>(())
```
"#,
    dispatch = r#"
MQTT 3.1.1 messages carry no subscription identity, so a message runs the handler of every
route whose filter matches its topic (MQTT section 4.7, `$share/{group}/{filter}` matched as
`{filter}`), in registration order, and is acknowledged once, after all of them.

This gives each route exactly the messages MQTT says it matches when the broker sends one copy
of a message to a client however many of its subscriptions match, as mosquitto 2.0 does for
MQTT 3.1.1 clients (checked with mosquitto 2.0.11: a client subscribed to `home/#`,
`home/+/temperature` and `$share/g/home/#` gets one copy each of `home/kitchen/temperature`,
`home/kitchen/humidity` and `home`). Limits that MQTT 3.1.1 cannot lift:

- a broker that sends one copy per matching subscription (which MQTT 3.1.1 allows) makes each
  matching handler run once per copy;
- a shared route also runs on a message that reached this client through an overlapping
  non-shared route, even when the broker gave the group's copy to another member of the group.
  Where that matters, do not overlap shared and non-shared routes on one MQTT 3.1.1
  connection, or use MQTT 5, whose subscription identifiers say which subscription each copy
  is for.
"#,
}
