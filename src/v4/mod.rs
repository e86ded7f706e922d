//! Traced MQTT 3.1.1: drop-in twins of `rumqttc::{AsyncClient, EventLoop}` and of the blocking
//! `rumqttc::{Client, Connection}`, and the publisher and subscriber roles. The module is named after rumqttc's (MQTT 3.1.1 is protocol level 4).
//!
//! MQTT 3.1.1 has no user properties. By default ([`V4Propagation::None`]) publishes keep their
//! payload byte for byte and each message starts a new trace at its receiver; with
//! [`V4Propagation::Envelope`] or [`V4Propagation::JsonFields`] the context rides in the
//! payload (see [`crate::propagation`]). Whatever the local setting, [`TracedEventLoop`]
//! recognises an envelope and strips it, so the application always sees the payload the
//! publisher passed.
//!
//! [`V4Propagation::None`]: crate::V4Propagation::None
//! [`V4Propagation::Envelope`]: crate::V4Propagation::Envelope
//! [`V4Propagation::JsonFields`]: crate::V4Propagation::JsonFields
//!
//! The swap is one line:
//!
//! ```no_run
//! use rumqttc::{MqttOptions, QoS};
//! // was: use rumqttc::AsyncClient;
//! use rumqttc_opentelemetry::v4::TracedClient as AsyncClient;
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
//! For rumqttc's blocking `Client` and `Connection` (threads, no async runtime) it is
//! [`TracedSyncClient`] and [`TracedConnection`]:
//!
//! ```no_run
//! use rumqttc::{MqttOptions, QoS};
//! // was: use rumqttc::Client;
//! use rumqttc_opentelemetry::v4::TracedSyncClient as Client;
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
pub(crate) use protocol::V4;
pub use publisher::TracedPublisher;
pub use subscriber::{SubscriberBuilder, TracedSubscriber};
pub use sync_client::TracedSyncClient;
