//! [`Message`]: what an MQTT 3.1.1 subscriber's handler gets: rumqttc's `Publish` (an envelope
//! already stripped), the route, and the delivery record.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::{Publish, QoS};

use super::protocol::V4;
use crate::core::Delivery;
use crate::roles::worker::Incoming;

/// A message handed to a handler of a [`TracedSubscriber`](super::TracedSubscriber): rumqttc's
/// `Publish` (an envelope already stripped from the payload), the route it runs for, and what
/// the event loop recorded when it arrived.
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
