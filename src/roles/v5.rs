//! The roles for MQTT 5: [`Protocol`] over `crate::v5`, the handler's [`Message`], and the
//! public types.

// rumqttc's error types are large; they pass through unchanged.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, Publish, PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{ClientError, ConnectionError, Event, MqttOptions};

use super::worker::Incoming;
pub use super::{AckPolicy, RetryPolicy};
use super::{Polled, Protocol, PublishView};
use crate::Error;
use crate::core::{Core, Delivery};
use crate::instrumentation::Instrumentation;
use crate::v5::{TracedClient, TracedEventLoop};

/// MQTT 5.
pub(crate) struct V5;

/// The `error.type`-style name of a refused MQTT 5 subscription, `None` when granted.
fn suback_failure(code: &SubscribeReasonCode) -> Option<&'static str> {
    Some(match code {
        SubscribeReasonCode::Success(_) => return None,
        SubscribeReasonCode::Failure => "failure",
        SubscribeReasonCode::Unspecified => "unspecified_error",
        SubscribeReasonCode::ImplementationSpecific => "implementation_specific_error",
        SubscribeReasonCode::NotAuthorized => "not_authorized",
        SubscribeReasonCode::TopicFilterInvalid => "topic_filter_invalid",
        SubscribeReasonCode::PkidInUse => "packet_identifier_in_use",
        SubscribeReasonCode::QuotaExceeded => "quota_exceeded",
        SubscribeReasonCode::SharedSubscriptionsNotSupported => {
            "shared_subscriptions_not_supported"
        }
        SubscribeReasonCode::SubscriptionIdNotSupported => "subscription_identifiers_not_supported",
        SubscribeReasonCode::WildcardSubscriptionsNotSupported => {
            "wildcard_subscriptions_not_supported"
        }
    })
}

impl Protocol for V5 {
    type Options = MqttOptions;
    type Client = TracedClient;
    type EventLoop = TracedEventLoop;
    type QoS = QoS;
    type Publish = Publish;
    type Event = Event;
    type PollError = ConnectionError;
    type ClientError = ClientError;

    const SUBSCRIPTION_IDS: bool = true;

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
                // Absent means available (MQTT 5 section 3.2.2.3.12).
                subscription_ids: connack
                    .properties
                    .as_ref()
                    .and_then(|properties| properties.subscription_identifiers_available)
                    != Some(0),
            },
            Event::Incoming(Packet::SubAck(suback)) => {
                Polled::SubAck(suback.return_codes.iter().map(suback_failure).collect())
            }
            Event::Incoming(Packet::Publish(publish)) => Polled::Publish(publish, delivery),
            Event::Outgoing(Outgoing::Disconnect) => Polled::Disconnect,
            _ => Polled::Other,
        }
    }

    fn view(publish: &Publish) -> PublishView<'_> {
        PublishView {
            topic: String::from_utf8_lossy(&publish.topic),
            qos: publish.qos.into(),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            body_size: publish.payload.len(),
        }
    }

    fn subscription_ids(publish: &Publish) -> &[usize] {
        publish
            .properties
            .as_ref()
            .map_or(&[], |properties| &properties.subscription_identifiers)
    }

    async fn ack(client: &TracedClient, publish: &Publish) -> bool {
        client.ack(publish).await.is_ok()
    }

    async fn subscribe(
        client: &TracedClient,
        filters: Vec<(String, QoS)>,
        id: Option<usize>,
    ) -> bool {
        let filters = filters
            .into_iter()
            .map(|(filter, qos)| Filter::new(filter, qos));
        let sent = match id {
            Some(id) => {
                let properties = SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                };
                client
                    .subscribe_many_with_properties(filters, properties)
                    .await
            }
            None => client.subscribe_many(filters).await,
        };
        sent.is_ok()
    }

    fn publish(
        client: &TracedClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        client.publish(topic, qos, retain, payload)
    }

    fn publish_confirmed(
        client: &TracedClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        client.publish_confirmed(topic, qos, retain, payload, None)
    }

    async fn disconnect(client: &TracedClient) -> bool {
        client.disconnect().await.is_ok()
    }
}

/// A message handed to a handler of a [`TracedSubscriber`]: rumqttc's `Publish`, the route it
/// runs for, and what the event loop recorded when it arrived.
#[derive(Debug, Clone)]
pub struct Message {
    publish: Publish,
    route: Arc<str>,
    delivery: Delivery,
}

impl Message {
    pub(crate) fn from_incoming(incoming: Incoming<V5>) -> Self {
        Self {
            publish: incoming.publish,
            route: incoming.route,
            delivery: incoming.delivery,
        }
    }

    /// The topic name (MQTT 5 topics are UTF-8; invalid bytes are replaced).
    pub fn topic(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.publish.topic)
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

    /// The PUBLISH properties, when there are any.
    pub fn properties(&self) -> Option<&PublishProperties> {
        self.publish.properties.as_ref()
    }

    /// The user properties, in order (the `traceparent`, `tracestate` and `baggage` of the
    /// trace context included).
    pub fn user_properties(&self) -> &[(String, String)] {
        self.properties()
            .map_or(&[], |properties| &properties.user_properties)
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
    protocol = V5,
    publisher_example = r#"
# Example

A sensor: publishes its readings at QoS 1, then shuts down; every reading is acknowledged by
the broker before the program exits. A reading the broker refuses (an MQTT 5 reason code such
as `not_authorized`) is retried three times, then reported.

```no_run
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{RetryPolicy, TracedPublisher};

# async fn run() -> Result<(), Box<dyn std::error::Error>> {
let publisher = TracedPublisher::new(MqttOptions::new("sensor-1", "localhost", 1883), 10);

let readings = [("home/kitchen/temperature", "21.5"), ("home/kitchen/humidity", "40")];
for outcome in publisher.publish_batch(QoS::AtLeastOnce, false, readings).await {
    outcome?;
}
let attempts = publisher
    .publish_with_retry("home/kitchen/alarm", QoS::AtLeastOnce, false, "smoke", &RetryPolicy::new(3))
    .await?;
println!("alarm delivered after {attempts} attempt(s)");
publisher.shutdown().await;
# Ok(())
# }
```
"#,
    subscriber_example = r#"
# Example

A gateway: one connection (one client id) receives the readings and forwards each to the
cloud topic. The forwarding publish is a child of the handler's `process` span, so the trace
goes sensor -> gateway -> cloud consumer.

```no_run
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::TracedSubscriber;

# async fn run() -> Result<(), Box<dyn std::error::Error>> {
let builder = TracedSubscriber::builder(MqttOptions::new("gateway-1", "localhost", 1883), 10);
let upstream = builder.client().clone();
let subscriber = builder
    .route("home/+/temperature", QoS::AtLeastOnce, move |message| {
        let upstream = upstream.clone();
        async move {
            let topic = format!("cloud/{}", message.topic());
            upstream
                .publish(topic, QoS::AtLeastOnce, false, message.payload().clone())
                .await
        }
    })?
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
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{AckPolicy, Message, TracedSubscriber};

async fn log(message: Message) -> Result<(), std::io::Error> {
    println!("{} via {}", message.topic(), message.route());
    Ok(())
}

let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
    .ack_policy(AckPolicy::AfterSuccess)
    .route("home/+/temperature", QoS::AtLeastOnce, log)?
    .route("$share/loggers/home/#", QoS::AtLeastOnce, log)?;
assert_eq!(
    builder.matching_routes("home/kitchen/temperature"),
    ["home/+/temperature", "$share/loggers/home/#"]
);
assert_eq!(builder.matching_routes("home"), ["$share/loggers/home/#"]);
# Ok::<(), rumqttc_opentelemetry::Error>(())
```
"#,
    dispatch = r#"
Every route is subscribed with a subscription identifier of its own (MQTT 5 section
3.8.2.1.2), and each copy of a message runs exactly the routes whose identifiers it carries
(and whose filter matches its topic), in registration order; it is acknowledged once, after
all of them. Where subscriptions overlap,
a broker either sends one copy per matching subscription, each with its identifier (mosquitto
2.0 does, shared subscriptions included), or one copy with all their identifiers: either way
each route runs once for each message it matches, and a shared route
(`$share/{group}/{filter}`) runs only on the copies the broker gives this client as a member of
the group. A copy that carries none of the routes' identifiers (it came from a subscription
made through the client directly) runs no handler. Messages a persistent session kept from
before the routes changed carry the identifiers of the old subscriptions: they run the route
that now has the identifier only if its filter matches the topic.

When the broker's CONNACK says it has no subscription identifiers, the routes are subscribed
without them and each message runs every route whose filter matches its topic, as with
MQTT 3.1.1 (see `v4::TracedSubscriber`).
"#,
}
