//! OpenTelemetry tracing, context propagation and metrics for MQTT applications built on
//! [`rumqttc`], for MQTT 3.1.1 and MQTT 5.
//!
//! # Status
//!
//! This release is the foundation the traced clients are built on:
//!
//! - [`semconv`]: the OpenTelemetry messaging attribute names for MQTT (current names only, with
//!   the deprecated ones mapped in its docs), [`semconv::MqttQoS`], [`semconv::ProtocolVersion`],
//!   and builders that turn the facts of a publish, receive or process into attributes.
//! - [`topic`]: MQTT topic name and filter validation, a matcher that follows the specification
//!   (including the `$` rule that `rumqttc::matches` gets wrong), and a filter trie that finds
//!   every filter matching a topic.
//! - [`propagation`]: W3C Trace Context and Baggage over MQTT 5 user properties with strict
//!   validation, the MQTT 3.1.1 [`propagation::envelope`], and
//!   [`propagation::json_fields`] for JSON-object payloads.
//!
//! The drop-in `TracedClient`/`TracedEventLoop` pairs, the publisher and subscriber roles and the
//! metrics come next; the README lists what works today.
//!
//! # Errors
//!
//! Everything this crate adds reports through [`Error`]; rumqttc's own errors pass through
//! unchanged. Nothing here panics on input from the network: malformed trace context starts a new
//! trace, a malformed envelope is delivered as the plain payload it then is, and each case comes
//! back as a typed error the caller can record.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod propagation;
pub mod semconv;
pub mod topic;

pub use error::Error;
