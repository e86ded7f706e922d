//! [`Message`]: what an MQTT 5 subscriber's handler gets: rumqttc's `Publish`, the route, and
//! the delivery record.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use super::protocol::V5;
use crate::core::Delivery;
use crate::roles::worker::Incoming;

/// A message handed to a handler of a [`TracedSubscriber`](super::TracedSubscriber): rumqttc's
/// `Publish`, the route it runs for, and what the event loop recorded when it arrived.
#[derive(Debug, Clone)]
pub struct Message {
    publish: Publish,
    route: Arc<str>,
    delivery: Delivery,
    /// The topic with invalid UTF-8 replaced, only when it has some (MQTT 5 section 1.5.4 says
    /// it must not; a broker may still send it).
    repaired_topic: Box<str>,
}

impl Message {
    pub(crate) fn from_incoming(incoming: Incoming<V5>) -> Self {
        let repaired_topic = match std::str::from_utf8(&incoming.publish.topic) {
            Ok(_) => Box::default(),
            Err(_) => String::from_utf8_lossy(&incoming.publish.topic).into(),
        };
        Self {
            publish: incoming.publish,
            route: incoming.route,
            delivery: incoming.delivery,
            repaired_topic,
        }
    }

    /// The topic name. MQTT 5 topics are UTF-8; a topic that is not has its invalid bytes
    /// replaced by U+FFFD (the raw bytes are in [`Message::publish`]).
    pub fn topic(&self) -> &str {
        std::str::from_utf8(&self.publish.topic).unwrap_or(&self.repaired_topic)
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
