//! Traced MQTT 5: drop-in twins of `rumqttc::v5::{AsyncClient, EventLoop}` and of the blocking
//! `rumqttc::v5::{Client, Connection}`, and the publisher and subscriber roles.
//!
//! Context travels in user properties named `traceparent`, `tracestate` (and `baggage`), as the
//! W3C "Trace Context: MQTT" draft specifies; the application's own user properties are kept, in
//! order. A publish acknowledged with a reason code of 0x80 or more (`NotAuthorized`,
//! `QuotaExceeded`, ...) ends its span as an error with `error.type` set to the reason's name;
//! `NoMatchingSubscribers` (0x10) is a success.
//!
//! The swap is one line:
//!
//! ```no_run
//! use rumqttc::v5::MqttOptions;
//! use rumqttc::v5::mqttbytes::QoS;
//! // was: use rumqttc::v5::AsyncClient;
//! use rumqttc_opentelemetry::v5::TracedClient as AsyncClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let options = MqttOptions::new("sensor-1", "localhost", 1883);
//! let (client, mut eventloop) = AsyncClient::new(options, 10);
//! client.publish("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5").await?;
//! loop {
//!     let event = eventloop.poll().await?;
//!     println!("{event:?}");
//! }
//! # }
//! ```
//!
//! For rumqttc's blocking `v5::Client` and `v5::Connection` (threads, no async runtime) it is
//! [`TracedSyncClient`] and [`TracedConnection`]:
//!
//! ```no_run
//! use rumqttc::v5::MqttOptions;
//! use rumqttc::v5::mqttbytes::QoS;
//! // was: use rumqttc::v5::Client;
//! use rumqttc_opentelemetry::v5::TracedSyncClient as Client;
//!
//! let (client, mut connection) = Client::new(MqttOptions::new("sensor-1", "localhost", 1883), 10);
//! std::thread::spawn(move || client.publish("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5"));
//! for notification in connection.iter() {
//!     println!("{notification:?}");
//! }
//! ```

//!
//! # Request/response
//!
//! A publish with Correlation Data (section 3.3.2.3.6) records it as
//! `messaging.message.conversation_id` on its publish span, and so do the receive and process
//! spans of the message ([`crate::semconv::conversation_id`] turns the bytes into the string:
//! UTF-8 text as it is, otherwise lowercase hex, at most 128 bytes); it is never a metric
//! attribute. A request, a publish with a Response Topic as well (section 4.10), is remembered
//! by its connection: the receive span of every reply (a message on the Response Topic with the
//! same Correlation Data) links to the request's publish span, besides its parent by
//! [`crate::ParentMode`]. A responder that answers from a [`TracedSubscriber`] handler through
//! `client()` publishes inside the handler's `process` span, so the reply continues the
//! request's trace.
//!
//! A request waits for replies 60 s, and every reply within that time links to it (several
//! responders, or one answering in parts); a newer request with the same Correlation Data takes
//! its place; at most 1,024 requests are remembered, the oldest go first; a request whose
//! Correlation Data or Response Topic is longer than 1,024 bytes is not. Requests outlive a
//! reconnect: a persistent session delivers a reply that came while the client was away.
//!
//! ```no_run
//! use bytes::Bytes;
//! use rumqttc::v5::MqttOptions;
//! use rumqttc::v5::mqttbytes::QoS;
//! use rumqttc::v5::mqttbytes::v5::PublishProperties;
//! use rumqttc_opentelemetry::v5::TracedClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut eventloop) = TracedClient::new(MqttOptions::new("app-1", "localhost", 1883), 10);
//! tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
//! client.subscribe("replies/app-1", QoS::AtLeastOnce).await?;
//! let request = PublishProperties {
//!     response_topic: Some("replies/app-1".into()),
//!     correlation_data: Some(Bytes::from_static(b"req-42")),
//!     ..PublishProperties::default()
//! };
//! // `conversation_id = "req-42"`; the receive spans of the replies link to this span.
//! client
//!     .publish_with_properties("services/clock/get", QoS::AtLeastOnce, false, "now?", request)
//!     .await?;
//!
//! // Topic alias 1 set, then used alone: both spans are `publish plant/line-1/speed`.
//! let alias = PublishProperties { topic_alias: Some(1), ..PublishProperties::default() };
//! client
//!     .publish_with_properties("plant/line-1/speed", QoS::AtMostOnce, false, "12", alias.clone())
//!     .await?;
//! client.publish_with_properties("", QoS::AtMostOnce, false, "13", alias).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Topic aliases
//!
//! A PUBLISH with a Topic Alias and a topic name sets the alias (section 3.3.2.3.4); one with
//! the alias and an empty topic name, as in rumqttc's `topic_alias` example, is named after the
//! topic the alias stands for: its span name, `messaging.destination.name`, the publisher
//! template or subscription it matches, and its metrics. The traced event loop also puts that
//! topic into the incoming `Publish` it hands out (rumqttc 0.25.1 resolves an incoming alias
//! only in a copy of its own: the application would see an empty topic); the alias property
//! stays.
//!
//! Mappings last one network connection [MQTT-3.3.2-7]:
//!
//! - Incoming: the broker's aliases end when the CONNACK of the next connection is handed out.
//!   An empty topic name with an alias the broker did not set on this connection, alias 0, or
//!   one above the client's Topic Alias Maximum (`MqttOptions::set_topic_alias_max`; none, so
//!   no aliases, by default) names no topic: the receive span is named `receive`, its
//!   `messaging.destination.name` is empty, and an `mqtt.topic_alias.rejected` event says why
//!   (`reason` = `unknown`, `zero` or `above_maximum`; `mqtt.topic_alias`). Such aliases are
//!   not kept.
//! - Outgoing: the client keeps the topic of each alias for its whole life. After a lost
//!   connection the first publish that uses an alias alone is sent with its topic again (which
//!   sets the alias on the new connection), and the publishes queued for the next connection
//!   (rumqttc's `pending` queue and collision slot) that use an alias alone get their topic
//!   back: rumqttc 0.25.1 replays them as they were, the broker closes the connection for a
//!   protocol error, and so on at every reconnect.
//! - Refused before the queue, with rumqttc's `ClientError::Request` (`TryRequest` from the
//!   `try_` methods, `Error::RequestRejected` from `publish_confirmed`) and no span, as a topic
//!   name with a wildcard is: an empty topic name without an alias (section 3.3.2.1), alias 0
//!   [MQTT-3.3.2-8], an alias above the broker's Topic Alias Maximum from the last CONNACK
//!   [MQTT-3.3.2-9] (before the first CONNACK rumqttc checks it when it writes, and fails the
//!   connection), an empty topic name with an alias this client never set. The broker would
//!   close the connection for each, and rumqttc would replay a QoS 1 or 2 one after every
//!   reconnect.
//!
//! Aliases are taken in the order publishes start, so two tasks racing on one alias race on the
//! wire as well; an alias set through `inner()` is not known. Two cases stay as rumqttc sends
//! them: a publish that uses an alias alone and waits on a full request queue across a
//! reconnect (the broker closes that connection; the publish is then replayed with its topic),
//! and a queued publish that uses an alias alone when a later queued one gave the alias another
//! topic (the topic it meant is no longer known).

// The methods return rumqttc's own error type, unchanged, so that the swap is one line; its size
// is rumqttc's choice.
#![allow(clippy::result_large_err)]

mod client;
mod connection;
mod event_loop;
mod message;
mod protocol;
#[cfg(test)]
mod protocol_tests;
mod publisher;
mod reasons;
mod subscriber;
mod sync_client;

pub use crate::roles::{AckPolicy, HandlerError, HandlerOutput, HandlerResult, RetryPolicy};
pub use client::TracedClient;
pub use connection::{TracedConnection, TracedIter};
pub use event_loop::TracedEventLoop;
pub use message::Message;
#[cfg(test)]
pub(crate) use protocol::V5;
pub use publisher::TracedPublisher;
pub use subscriber::{SubscriberBuilder, TracedSubscriber};
pub use sync_client::TracedSyncClient;
