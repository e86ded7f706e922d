//! The blocking adapter over the one traced core: [`wait`] runs a request of the traced client to
//! its end on the calling thread, and [`Connection`] drives the traced event loop from a runtime
//! of its own, as rumqttc's blocking `Client` and `Connection` do over its `AsyncClient` and
//! `EventLoop`. The public `TracedSyncClient` / `TracedConnection` of each version wrap them.
//!
//! # How the blocking side drives the async core
//!
//! **Requests.** rumqttc's blocking `Client` puts a request on its flume channel with flume's
//! blocking `send`. A traced publish must go through `PublishTracker::send`, which holds the
//! send lock (a `tokio::sync::Mutex`) while it queues the open span in the correlation table and
//! sends the request, so that the table's order is the channel's. Rather than a second, blocking
//! copy of that path (it would need a blocking lock next to the async one, and tokio's
//! `blocking_lock` panics inside a runtime), the blocking client runs the very future of the
//! async client with [`wait`]: a minimal executor that polls it on the calling thread and parks
//! the thread until its waker unparks it. What that future waits for (the tokio mutex, flume's
//! `send_async`, the oneshot of `publish_confirmed`) is woken by whoever releases or sends it,
//! with no runtime involved: a blocking publish needs none, does not panic inside one, and,
//! like rumqttc's, blocks the calling thread while the request channel is full.
//!
//! **The event loop.** rumqttc's event loop needs tokio's sockets and timers. As rumqttc's
//! `Connection` does, [`Connection`] owns a current-thread runtime (made with `enable_all` when
//! the connection is made) and `block_on`s one `EventLoop::poll_traced` per receive: directly
//! for `recv`, inside `tokio::time::timeout` for `recv_timeout`, and polled once inside the
//! runtime's context for `try_recv` (rumqttc's `now_or_never`). A poll that times out or is not
//! ready is dropped, as rumqttc drops its own. The traced event loop allows that: it changes its
//! spans and recovery state only after rumqttc's poll returned, and a reconnect backoff keeps its
//! deadline across dropped polls.
//!
//! **Inside an async runtime.** tokio refuses to block a thread that drives async tasks:
//! `Runtime::block_on` panics there ("Cannot start a runtime from within a runtime"), so the
//! receive methods of a `TracedConnection` panic when called from async code, exactly as
//! rumqttc's `Connection` does; so does dropping the connection there, since that drops its
//! runtime. The blocking twins are for threads outside any runtime (or `spawn_blocking`); async
//! code uses `TracedClient` / `TracedEventLoop`.

use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use tokio::runtime::Runtime;

use super::consume::Delivery;
use super::event_loop::EventLoop;
use super::protocol::Protocol;

/// Wakes a thread parked in [`wait`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to its end on the calling thread, parked while it waits. For the client's
/// requests, which wait only for runtime-independent things (see the module docs).
pub(crate) fn wait<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        // A wake-up that came before the park makes it return at once; a spurious one only
        // polls again.
        thread::park();
    }
}

/// How long a receive waits for the next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until there is one (`recv`, the iterator).
    Forever,
    /// At most this long (`recv_timeout`).
    For(Duration),
    /// Not at all (`try_recv`).
    No,
}

/// Why a receive has no event: rumqttc's `RecvError`, `TryRecvError`, `RecvTimeoutError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    /// The request channel is closed (`ConnectionError::RequestsDone`). rumqttc 0.25.1's event
    /// loop holds a sender of it itself, so with rumqttc's own types this does not happen while
    /// the event loop lives (rumqtt issue 975); it is mapped as rumqttc maps it all the same.
    Done,
    /// No event within the wait.
    Timeout,
}

impl Missed {
    /// The error of the calling method: `done` for [`Missed::Done`], else `timeout`.
    pub(crate) fn pick<E>(self, done: E, timeout: E) -> E {
        match self {
            Self::Done => done,
            Self::Timeout => timeout,
        }
    }
}

/// What one receive returns: rumqttc's event or connection error, with the [`Delivery`] of an
/// incoming PUBLISH.
pub(crate) type Received<P> =
    Result<(<P as Protocol>::Event, Option<Delivery>), <P as Protocol>::ConnectionError>;

/// The traced event loop of protocol `P` with the runtime that drives it.
pub(crate) struct Connection<P: Protocol> {
    // Declared first, so dropped first: its open publish spans end (`event_loop_dropped`) and
    // its sockets close while the runtime they belong to still exists.
    event_loop: EventLoop<P>,
    runtime: Runtime,
}

impl<P: Protocol> Connection<P> {
    /// A connection that drives `event_loop`, with a current-thread runtime of its own, as
    /// rumqttc's `Client::new` makes one.
    ///
    /// # Panics
    ///
    /// When the operating system refuses what a tokio runtime needs (an I/O driver, a timer),
    /// as rumqttc's `Client::new` does.
    pub(crate) fn new(event_loop: EventLoop<P>) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| {
                panic!("cannot make the tokio runtime of a blocking MQTT connection: {error}")
            });
        Self {
            event_loop,
            runtime,
        }
    }

    /// The traced event loop.
    pub(crate) fn event_loop(&self) -> &EventLoop<P> {
        &self.event_loop
    }

    /// The traced event loop, mutably.
    pub(crate) fn event_loop_mut(&mut self) -> &mut EventLoop<P> {
        &mut self.event_loop
    }

    /// Polls the traced event loop once, waiting at most as `wait` says. rumqttc's
    /// `ConnectionError::RequestsDone` becomes [`Missed::Done`]; every other error is handed
    /// out, as rumqttc's `Connection` does (the next receive reconnects).
    ///
    /// # Panics
    ///
    /// From inside an async runtime, except for [`Wait::No`] (see the module docs).
    pub(crate) fn receive(&mut self, wait: Wait) -> Result<Received<P>, Missed> {
        let poll = self.event_loop.poll_traced();
        let received = match wait {
            Wait::Forever => self.runtime.block_on(poll),
            Wait::For(duration) => self
                .runtime
                // The timer is made inside the runtime, which it needs.
                .block_on(async { tokio::time::timeout(duration, poll).await })
                .map_err(|_| Missed::Timeout)?,
            Wait::No => {
                let _context = self.runtime.enter();
                let waker = Waker::noop();
                match pin!(poll).poll(&mut Context::from_waker(waker)) {
                    Poll::Ready(received) => received,
                    Poll::Pending => return Err(Missed::Timeout),
                }
            }
        };
        match received {
            Err(error) if P::requests_done(&error) => Err(Missed::Done),
            received => Ok(received),
        }
    }

    /// [`Connection::receive`] without the [`Delivery`].
    pub(crate) fn receive_event(
        &mut self,
        wait: Wait,
    ) -> Result<Result<P::Event, P::ConnectionError>, Missed> {
        self.receive(wait)
            .map(|received| received.map(|(event, _)| event))
    }

    /// An iterator that receives until the request channel is closed.
    pub(crate) fn iter(&mut self) -> Iter<'_, P> {
        Iter { connection: self }
    }
}

/// rumqttc's `Iter`: each `next` is a `recv`; it ends where that finds the request channel
/// closed.
pub(crate) struct Iter<'a, P: Protocol> {
    connection: &'a mut Connection<P>,
}

impl<P: Protocol> Iterator for Iter<'_, P> {
    type Item = Result<P::Event, P::ConnectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.connection.receive_event(Wait::Forever).ok()
    }
}

#[cfg(test)]
#[path = "blocking_tests.rs"]
mod tests;
