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

// The methods return rumqttc's own error type, unchanged, so that the swap is one line; its size
// is rumqttc's choice.
#![allow(clippy::result_large_err)]

mod client;
mod connection;
mod event_loop;
mod message;
mod protocol;
mod publisher;
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
