//! [`TracedEventLoop`]: `rumqttc::v5::EventLoop` that ends publish spans at their acknowledgement
//! and records a receive span per incoming PUBLISH.

use rumqttc::v5::{ConnectionError, Event, EventLoop};

use super::protocol::V5;
use crate::core::Delivery;
use crate::reconnect::ReconnectBackoff;

/// A traced `rumqttc::v5::EventLoop`: [`TracedEventLoop::poll`] returns what rumqttc's does,
/// and on the way ends publish spans at their acknowledgement (an MQTT 5 reason code of 0x80 or
/// more makes the span an error named after the reason), records a `receive` span for every
/// incoming PUBLISH, feeds the connection-health metrics, and keeps what rumqttc loses around
/// reconnects (see [`crate::reconnect`]).
///
/// An incoming PUBLISH with an empty topic name and a Topic Alias is handed out with the topic
/// the alias stands for (see [Topic aliases](crate::v5#topic-aliases)); a reply to a request of
/// this client has its receive span linked to the request's publish span (see
/// [Request/response](crate::v5#requestresponse)).
///
/// Dropping it ends every publish span still open with `error.type = event_loop_dropped`.
pub struct TracedEventLoop {
    inner: crate::core::EventLoop<V5>,
}

impl std::fmt::Debug for TracedEventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TracedEventLoop {
    pub(crate) fn from_inner(inner: crate::core::EventLoop<V5>) -> Self {
        Self { inner }
    }

    pub(crate) fn into_generic(self) -> crate::core::EventLoop<V5> {
        self.inner
    }

    /// Like rumqttc's `EventLoop::poll`: the same events and errors, in the same order.
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        self.inner.poll().await
    }

    /// Like [`Self::poll`], and for an incoming PUBLISH also the [`Delivery`]: the producer's
    /// context (when the message carried one) and the receive span, to continue the trace in
    /// the application.
    pub async fn poll_traced(&mut self) -> Result<(Event, Option<Delivery>), ConnectionError> {
        self.inner.poll_traced().await
    }

    /// The wrapped rumqttc event loop (its options, state and `pending` queue).
    pub fn inner(&self) -> &EventLoop {
        self.inner.inner()
    }

    /// The wrapped rumqttc event loop, mutably (for example to change its network options).
    /// Polling it directly bypasses the tracing of the events it returns.
    pub fn inner_mut(&mut self) -> &mut EventLoop {
        self.inner.inner_mut()
    }

    /// Publish spans not ended yet: queued, written and waiting for an acknowledgement, or
    /// parked on a packet-id collision.
    pub fn open_publish_spans(&self) -> usize {
        self.inner.open_publish_spans()
    }

    /// Whether publishes rumqttc would drop when the broker forgets the session are put back
    /// and sent again (default `true`; see [`crate::reconnect`]).
    pub fn set_resend_after_session_loss(&mut self, resend: bool) -> &mut Self {
        self.inner.set_resend_after_session_loss(resend);
        self
    }

    /// Waits between failed connection attempts (default: no wait, as rumqttc; see
    /// [`crate::reconnect`]).
    pub fn set_reconnect_backoff(&mut self, backoff: Option<ReconnectBackoff>) -> &mut Self {
        self.inner.set_reconnect_backoff(backoff);
        self
    }
}
