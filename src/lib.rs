//! OpenTelemetry tracing, context propagation and metrics for MQTT applications built on
//! [`rumqttc`], for MQTT 3.1.1 and MQTT 5.
//!
//! # The one-line swap
//!
//! Replace `rumqttc::AsyncClient` (MQTT 3.1.1) by [`v4::TracedClient`], or
//! `rumqttc::v5::AsyncClient` by [`v5::TracedClient`]. Constructors, methods, errors and the
//! events of `poll()` are rumqttc's own:
//!
//! ```no_run
//! use rumqttc::v5::MqttOptions;
//! use rumqttc::v5::mqttbytes::QoS;
//! use rumqttc_opentelemetry::v5::TracedClient as AsyncClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("gw-1", "localhost", 1883), 10);
//! client.subscribe("home/+/temperature", QoS::AtLeastOnce).await?;
//! loop {
//!     let event = eventloop.poll().await?;
//!     println!("{event:?}");
//! }
//! # }
//! ```
//!
//! Spans and metrics go to the global providers unless an [`Instrumentation`] names others
//! (`TracedClient::with_instrumentation`).
//!
//! | rumqttc 0.25 | this crate |
//! |---|---|
//! | `rumqttc::AsyncClient`, `EventLoop` | [`v4::TracedClient`], [`v4::TracedEventLoop`] |
//! | `rumqttc::v5::AsyncClient`, `EventLoop` | [`v5::TracedClient`], [`v5::TracedEventLoop`] |
//! | `rumqttc::Client`, `Connection` (blocking) | [`v4::TracedSyncClient`], [`v4::TracedConnection`] |
//! | `rumqttc::v5::Client`, `Connection` (blocking) | [`v5::TracedSyncClient`], [`v5::TracedConnection`] |
//!
//! The blocking twins are for threads without an async runtime, like rumqttc's: the same spans,
//! propagation, metrics and reconnect handling, from the same core (see [`v4::TracedConnection`]
//! for their one limit).
//!
//! # Spans
//!
//! | what | kind | name | `messaging.operation.type` / `.name` |
//! |---|---|---|---|
//! | a publish | PRODUCER | `publish {destination}` | `send` / `publish` |
//! | a PUBLISH handed out by `TracedEventLoop::poll()` | CLIENT | `receive {destination}` | `receive` / `receive` |
//! | a handler run by a subscriber | CONSUMER | `process {filter}` | `process` / `process` |
//! | a manual acknowledgement, `ack(&publish)` | CLIENT | `ack {destination}` | `settle` / `ack` |
//!
//! `{destination}` is the subscription filter that matched, or a publisher template configured
//! with [`InstrumentationBuilder::publish_template`], else the topic.
//!
//! A publish span lasts until the broker has the message: QoS 0 ends when the event loop
//! writes the PUBLISH, QoS 1 at PUBACK, QoS 2 at PUBCOMP. MQTT 5 reason codes of 0x80 and more end
//! it as an error whose `error.type` is the reason's name (`not_authorized`, `quota_exceeded`, ...);
//! 0x10 "no matching subscribers" is a success. A publish rumqttc drops on a reconnect without
//! session ends with `error.type = session_lost`, one never acknowledged within the bound with
//! `ack_timeout`, one still open when the event loop is dropped with `event_loop_dropped`: no span
//! is left open and the correlation table cannot grow without bound.
//!
//! An `ack` span is recorded with rumqttc's manual acknowledgements on
//! (`MqttOptions::set_manual_acks(true)`, see [`v5::TracedClient::ack`]) and for the
//! acknowledgements of a subscriber with [`v5::AckPolicy::AfterSuccess`]; it links to the
//! message's receive span and creation context, and ends when rumqttc has taken the
//! acknowledgement.
//!
//! Publish spans are matched to rumqttc's events by the order of its request channel and by
//! packet id, exactly, also with several tasks publishing through clones of one client, packet
//! ids reused or colliding, and replays after a reconnect. Publish through the traced client:
//! a publish sent through `inner()` takes a place in the queue the correlation does not know.
//!
//! # Consumer parent
//!
//! [`ParentMode::CreationContext`] (the default) makes the producer's span the parent of the
//! receive and process spans, so one waterfall shows the whole path; a span current where the
//! message is received becomes a link. [`ParentMode::Link`] is semconv's strict form: the consumer
//! span is a child of the current context and links to the producer.
//!
//! # Errors
//!
//! Everything this crate adds reports through [`Error`]; rumqttc's own errors pass through
//! unchanged. Nothing here panics on input from the network: malformed trace context starts a new
//! trace (the reason is recorded as a span event), a malformed envelope is delivered as the plain
//! payload it then is, and each case comes back as a typed error the caller can record.
//!
//! # Modules
//!
//! - [`v4`], [`v5`]: the traced clients; [`instrumentation`]: their settings.
//! - [`semconv`]: attribute names and builders; [`topic`]: validation, matching and a filter
//!   trie; [`propagation`]: W3C Trace Context and Baggage over user properties, the MQTT 3.1.1
//!   envelope, and JSON fields.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod core;
pub mod error;
pub mod hooks;
pub mod instrumentation;
pub mod metrics;
pub mod propagation;
pub mod reconnect;
mod roles;
pub mod semconv;
pub mod topic;
pub mod v4;
pub mod v5;

pub use crate::core::Delivery;
pub use error::Error;
pub use instrumentation::{Instrumentation, InstrumentationBuilder, ParentMode, V4Propagation};
