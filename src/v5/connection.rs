//! [`TracedConnection`]: rumqttc's blocking `v5::Connection` over the traced event loop, the
//! blocking twin of [`TracedEventLoop`](super::TracedEventLoop), and [`TracedIter`], its
//! iterator.

use std::time::Duration;

use rumqttc::v5::{ConnectionError, Event, EventLoop, RecvError, RecvTimeoutError, TryRecvError};

use super::protocol::V5;
use crate::core::{Connection, Delivery, Iter, Wait};
use crate::reconnect::ReconnectBackoff;

/// A traced `rumqttc::v5::Connection`: `iter()`, `recv()`, `try_recv()` and `recv_timeout()`
/// return what rumqttc's do, and on the way end publish spans at their acknowledgement (an
/// MQTT 5 reason code of 0x80 or more makes the span an error named after the reason), record a
/// `receive` span for every incoming PUBLISH, continuing the trace its user properties carry,
/// feed the connection-health metrics, and keep what rumqttc loses around reconnects (see
/// [`crate::reconnect`]): the same traced event loop as
/// [`TracedEventLoop`](super::TracedEventLoop)'s, driven by a current-thread tokio runtime of
/// its own, as rumqttc's `Connection` is.
///
/// Dropping it ends every publish span still open with `error.type = event_loop_dropped`.
///
/// # Outside async code only
///
/// `iter()`, `recv()` and `recv_timeout()` block the calling thread on the connection's
/// runtime, which tokio refuses inside an async context: called from a task (or under
/// `#[tokio::main]`), they panic with "Cannot start a runtime from within a runtime", as
/// rumqttc's do. Run the connection on a thread of its own (`std::thread`, `spawn_blocking`),
/// or use [`TracedEventLoop`](super::TracedEventLoop) in async code. `try_recv()` does not
/// block and works anywhere. Dropping the connection inside async code panics too ("Cannot drop
/// a runtime in a context where blocking is not allowed"), as dropping rumqttc's does.
///
/// rumqttc's `Connection` has a public `eventloop` field; here [`TracedConnection::inner`] and
/// [`TracedConnection::inner_mut`] give the same access.
///
/// ```no_run
/// use std::time::Duration;
/// use rumqttc::v5::mqttbytes::QoS;
/// use rumqttc::v5::{MqttOptions, RecvTimeoutError};
/// use rumqttc_opentelemetry::v5::TracedSyncClient;
///
/// let (client, mut connection) = TracedSyncClient::new(MqttOptions::new("agent-1", "localhost", 1883), 10);
/// client.subscribe("agent/1/commands", QoS::AtLeastOnce).unwrap();
/// loop {
///     match connection.recv_timeout(Duration::from_secs(1)) {
///         Ok(Ok(event)) => println!("{event:?}"),
///         Ok(Err(error)) => eprintln!("{error}; reconnecting on the next receive"),
///         Err(RecvTimeoutError::Timeout) => continue,
///         Err(RecvTimeoutError::Disconnected) => break,
///     }
/// }
/// ```
pub struct TracedConnection {
    inner: Connection<V5>,
}

impl std::fmt::Debug for TracedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.event_loop().fmt(f)
    }
}

impl TracedConnection {
    pub(crate) fn from_generic(event_loop: crate::core::EventLoop<V5>) -> Self {
        Self {
            inner: Connection::new(event_loop),
        }
    }

    /// Like rumqttc's `Connection::iter`: an iterator whose every `next` is a [`Self::recv`].
    /// It hands out connection errors too (the next item reconnects) and ends only where
    /// `recv` returns `RecvError`, which rumqttc 0.25.1 never makes happen (see
    /// [`Self::recv`]): as with rumqttc, leave the loop on a condition of your own (rumqttc's
    /// examples leave it at the first error, which follows a `disconnect()`).
    #[must_use = "Connection should be iterated over a loop to make progress"]
    pub fn iter(&mut self) -> TracedIter<'_> {
        TracedIter {
            inner: self.inner.iter(),
        }
    }

    /// Like rumqttc's `Connection::recv`: blocks for the next event or connection error (the
    /// next receive reconnects). `RecvError` when rumqttc reports its request channel closed
    /// (`ConnectionError::RequestsDone`); rumqttc 0.25.1's event loop holds a sender of that
    /// channel itself, so this does not happen while the connection lives, not even when every
    /// [`TracedSyncClient`](super::TracedSyncClient) is dropped (rumqtt issue 975).
    pub fn recv(&mut self) -> Result<Result<Event, ConnectionError>, RecvError> {
        self.inner
            .receive_event(Wait::Forever)
            .map_err(|_| RecvError)
    }

    /// Like rumqttc's `Connection::try_recv`: the next event if it is ready now, else
    /// `TryRecvError::Empty`; `TryRecvError::Disconnected` where [`Self::recv`] would return
    /// `RecvError`. As with rumqttc, nothing on the network moves between calls: the
    /// connection's runtime runs only while a receive waits.
    pub fn try_recv(&mut self) -> Result<Result<Event, ConnectionError>, TryRecvError> {
        self.inner
            .receive_event(Wait::No)
            .map_err(|missed| missed.pick(TryRecvError::Disconnected, TryRecvError::Empty))
    }

    /// Like rumqttc's `Connection::recv_timeout`: `RecvTimeoutError::Timeout` when nothing came
    /// within `duration`, `RecvTimeoutError::Disconnected` where [`Self::recv`] would return
    /// `RecvError`.
    pub fn recv_timeout(
        &mut self,
        duration: Duration,
    ) -> Result<Result<Event, ConnectionError>, RecvTimeoutError> {
        self.inner
            .receive_event(Wait::For(duration))
            .map_err(|missed| {
                missed.pick(RecvTimeoutError::Disconnected, RecvTimeoutError::Timeout)
            })
    }

    /// Like [`Self::recv`], and for an incoming PUBLISH also the [`Delivery`]: the producer's
    /// context (when the message carried one) and the receive span, to continue the trace in
    /// the application.
    pub fn recv_traced(
        &mut self,
    ) -> Result<Result<(Event, Option<Delivery>), ConnectionError>, RecvError> {
        self.inner.receive(Wait::Forever).map_err(|_| RecvError)
    }

    /// The wrapped rumqttc event loop (rumqttc's `Connection::eventloop`: its options, state
    /// and `pending` queue).
    pub fn inner(&self) -> &EventLoop {
        self.inner.event_loop().inner()
    }

    /// The wrapped rumqttc event loop, mutably (for example to change its network options).
    /// Polling it directly bypasses the tracing of the events it returns.
    pub fn inner_mut(&mut self) -> &mut EventLoop {
        self.inner.event_loop_mut().inner_mut()
    }

    /// Publish spans not ended yet: queued, written and waiting for an acknowledgement, or
    /// parked on a packet-id collision.
    pub fn open_publish_spans(&self) -> usize {
        self.inner.event_loop().open_publish_spans()
    }

    /// Whether publishes rumqttc would drop when the broker forgets the session are put back
    /// and sent again (default `true`; see [`crate::reconnect`]).
    pub fn set_resend_after_session_loss(&mut self, resend: bool) -> &mut Self {
        self.inner
            .event_loop_mut()
            .set_resend_after_session_loss(resend);
        self
    }

    /// Waits between failed connection attempts (default: no wait, as rumqttc; see
    /// [`crate::reconnect`]). A receive that times out during the wait does not start it over.
    pub fn set_reconnect_backoff(&mut self, backoff: Option<ReconnectBackoff>) -> &mut Self {
        self.inner.event_loop_mut().set_reconnect_backoff(backoff);
        self
    }
}

/// The iterator of [`TracedConnection::iter`], like rumqttc's `Iter`: each item is an event or
/// a connection error, from one [`TracedConnection::recv`].
///
/// ```no_run
/// use rumqttc::v5::MqttOptions;
/// use rumqttc_opentelemetry::v5::{TracedIter, TracedSyncClient};
///
/// let (_client, mut connection) =
///     TracedSyncClient::new(MqttOptions::new("agent-1", "localhost", 1883), 10);
/// let events: TracedIter<'_> = connection.iter();
/// // The CONNACK, or the error of the first connection attempt, then two more.
/// for event in events.take(3) {
///     println!("{event:?}");
/// }
/// ```
pub struct TracedIter<'a> {
    inner: Iter<'a, V5>,
}

impl std::fmt::Debug for TracedIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedIter").finish_non_exhaustive()
    }
}

impl Iterator for TracedIter<'_> {
    type Item = Result<Event, ConnectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}
