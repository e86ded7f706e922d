//! The error type of what this crate adds to rumqttc.
//!
//! rumqttc's own errors (`ClientError`, `ConnectionError`) pass through the traced clients
//! unchanged; [`Error`] covers only what this crate does on top: topic validation and the
//! propagation codecs.

use crate::propagation::TraceparentError;
use crate::propagation::envelope::EnvelopeError;
use crate::propagation::json_fields::JsonFieldsError;
use crate::topic::TopicError;

/// Everything that can go wrong in what this crate adds to rumqttc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic name or filter breaks a rule of MQTT section 4.7.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// An MQTT 3.1.1 envelope could not be written or read.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A JSON payload could not carry or give up propagation fields.
    #[error(transparent)]
    JsonFields(#[from] JsonFieldsError),
    /// A `traceparent` was rejected.
    #[error(transparent)]
    Traceparent(#[from] TraceparentError),
    /// A publish ended without success; the value is the `error.type` recorded on its span
    /// (`not_authorized`, `session_lost`, `ack_timeout`, ...).
    #[error("publish failed: {0}")]
    PublishFailed(&'static str),
    /// rumqttc did not accept a request: its event loop is gone, its queue is full, or the topic
    /// is invalid. The value is rumqttc's message.
    #[error("request not accepted by rumqttc: {0}")]
    RequestRejected(String),
    /// A publish with retries failed on every attempt; `last` is the last attempt's error.
    #[error("publish failed after {attempts} attempt(s): {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// The broker refused a subscription (a SUBACK failure code).
    #[error("the broker refused the subscription to {filter:?}: {reason}")]
    SubscriptionRefused {
        /// The filter as subscribed.
        filter: String,
        /// The broker's reason.
        reason: String,
    },
}
