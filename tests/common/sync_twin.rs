//! One interface over the blocking twins of MQTT 3.1.1 and MQTT 5 (`TracedSyncClient`,
//! `TracedConnection`), so that a test of what both share is written once and run for each, and
//! a thread that drives a connection ([`drive`]). Events are translated into the
//! version-independent [`Ev`] of `common::traced`. Included by `tests/sync.rs` only.
// Fields read only through `Debug`, in failure messages.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc_opentelemetry::reconnect::ReconnectBackoff;
use rumqttc_opentelemetry::{Error, Instrumentation};

use crate::common::Broker;
use crate::common::traced::{Config, DEADLINE, Ev};

/// What one receive of a `TracedConnection` returned.
#[derive(Debug)]
pub enum Recv {
    Event(Ev),
    /// A connection error (the next receive reconnects).
    Error(String),
    /// `Timeout` / `Empty`.
    Nothing,
    /// `RecvError` / `Disconnected`: every client is gone.
    Done,
}

/// The blocking twins of one MQTT version.
pub trait Twin: 'static {
    type Client: Clone + Send + 'static;
    type Connection: Send + 'static;

    /// `TracedSyncClient::with_instrumentation` with the options of `config`.
    fn connect(
        broker: &Broker,
        config: &Config,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (Self::Client, Self::Connection);
    /// A QoS 1 `publish`; whether rumqttc took it.
    fn publish(client: &Self::Client, topic: &str, payload: Vec<u8>) -> bool;
    /// A QoS 1 `publish_confirmed`.
    fn publish_confirmed(client: &Self::Client, topic: &str, payload: Vec<u8>)
    -> Result<(), Error>;
    /// A QoS 1 `subscribe`; panics when the request cannot be queued.
    fn subscribe(client: &Self::Client, filter: &str);
    fn recv(connection: &mut Self::Connection) -> Recv;
    /// `recv_traced`: an incoming PUBLISH comes with its `Delivery`.
    fn recv_traced(connection: &mut Self::Connection) -> Recv;
    fn try_recv(connection: &mut Self::Connection) -> Recv;
    fn recv_timeout(connection: &mut Self::Connection, timeout: Duration) -> Recv;
    /// Collects what `iter()` hands out up to the first event for which `last` holds, bounded
    /// by [`DEADLINE`] (checked after each item: the connection needs a short keep-alive).
    fn iterate_until(
        connection: &mut Self::Connection,
        last: impl FnMut(&Ev) -> bool,
    ) -> Vec<Result<Ev, String>>;
    fn open_spans(connection: &Self::Connection) -> usize;
    fn set_reconnect_backoff(connection: &mut Self::Connection, backoff: ReconnectBackoff);
}

/// Receives until `f` returns `Some`, bounded by [`DEADLINE`]; connection errors fail.
pub fn recv_until<T: Twin, R>(
    connection: &mut T::Connection,
    what: &str,
    mut f: impl FnMut(&Ev) -> Option<R>,
) -> R {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match T::recv_timeout(connection, Duration::from_millis(100)) {
            Recv::Event(event) => {
                if let Some(found) = f(&event) {
                    return found;
                }
            }
            Recv::Nothing => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    panic!("{what}: not within {DEADLINE:?}");
}

/// Waits (bounded by [`DEADLINE`]) until `condition` holds, checking every few milliseconds.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The items of `items` up to the first event for which `last` holds, bounded by [`DEADLINE`].
fn collect_until(
    items: impl Iterator<Item = Result<Ev, String>>,
    mut last: impl FnMut(&Ev) -> bool,
) -> Vec<Result<Ev, String>> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    for item in items {
        let done = item.as_ref().is_ok_and(&mut last);
        seen.push(item);
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not within {DEADLINE:?}: {seen:?}"
        );
    }
    panic!("the iterator ended: {seen:?}");
}

/// A connection received from on a thread of its own, until it is dropped.
pub struct Driven {
    pub events: mpsc::Receiver<Ev>,
    errors: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Driven {
    /// Connection errors seen so far.
    pub fn error_count(&self) -> usize {
        self.errors.load(Ordering::SeqCst)
    }

    /// The next event, bounded by [`DEADLINE`].
    pub fn next(&self, what: &str) -> Ev {
        self.events
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{what}: no event within {DEADLINE:?}"))
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Receives from `connection` on a std thread (`recv_timeout` of 50 ms, so that it sees the stop
/// flag), sending every event to [`Driven::events`] and counting connection errors. A reconnect
/// backoff of 50..200 ms keeps a down broker from being asked in a tight loop.
pub fn drive<T: Twin>(mut connection: T::Connection) -> Driven {
    T::set_reconnect_backoff(
        &mut connection,
        ReconnectBackoff::new(Duration::from_millis(50), Duration::from_millis(200)),
    );
    let (sender, events) = mpsc::channel();
    let errors = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let errors = Arc::clone(&errors);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match T::recv_timeout(&mut connection, Duration::from_millis(50)) {
                    Recv::Event(event) => {
                        let _ = sender.send(event);
                    }
                    Recv::Error(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    Recv::Nothing => {}
                    Recv::Done => break,
                }
            }
        })
    };
    Driven {
        events,
        errors,
        stop,
        thread: Some(thread),
    }
}

/// MQTT 3.1.1.
pub struct V4;
/// MQTT 5.
pub struct V5;

pub mod v4 {
    use super::*;
    use crate::common::traced::v4::{options, translate};
    use rumqttc::{QoS, RecvTimeoutError, TryRecvError};
    pub use rumqttc_opentelemetry::v4::{TracedConnection, TracedSyncClient};

    fn received(
        received: Result<
            Result<
                (rumqttc::Event, Option<rumqttc_opentelemetry::Delivery>),
                rumqttc::ConnectionError,
            >,
            (),
        >,
    ) -> Recv {
        match received {
            Ok(Ok((event, delivery))) => Recv::Event(translate(event, delivery)),
            Ok(Err(error)) => Recv::Error(format!("{error:?}")),
            Err(()) => Recv::Done,
        }
    }

    fn event(received: Result<rumqttc::Event, rumqttc::ConnectionError>) -> Recv {
        match received {
            Ok(event) => Recv::Event(translate(event, None)),
            Err(error) => Recv::Error(format!("{error:?}")),
        }
    }

    impl Twin for V4 {
        type Client = TracedSyncClient;
        type Connection = TracedConnection;

        fn connect(
            broker: &Broker,
            config: &Config,
            cap: usize,
            instrumentation: Instrumentation,
        ) -> (TracedSyncClient, TracedConnection) {
            TracedSyncClient::with_instrumentation(options(broker, config), cap, instrumentation)
        }

        fn publish(client: &TracedSyncClient, topic: &str, payload: Vec<u8>) -> bool {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .is_ok()
        }

        fn publish_confirmed(
            client: &TracedSyncClient,
            topic: &str,
            payload: Vec<u8>,
        ) -> Result<(), Error> {
            client.publish_confirmed(topic, QoS::AtLeastOnce, false, payload)
        }

        fn subscribe(client: &TracedSyncClient, filter: &str) {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .expect("subscribe request queued");
        }

        fn recv(connection: &mut TracedConnection) -> Recv {
            connection.recv().map_or(Recv::Done, event)
        }

        fn recv_traced(connection: &mut TracedConnection) -> Recv {
            received(connection.recv_traced().map_err(|_| ()))
        }

        fn try_recv(connection: &mut TracedConnection) -> Recv {
            match connection.try_recv() {
                Ok(received) => event(received),
                Err(TryRecvError::Empty) => Recv::Nothing,
                Err(TryRecvError::Disconnected) => Recv::Done,
            }
        }

        fn recv_timeout(connection: &mut TracedConnection, timeout: Duration) -> Recv {
            match connection.recv_timeout(timeout) {
                Ok(received) => event(received),
                Err(RecvTimeoutError::Timeout) => Recv::Nothing,
                Err(RecvTimeoutError::Disconnected) => Recv::Done,
            }
        }

        fn iterate_until(
            connection: &mut TracedConnection,
            last: impl FnMut(&Ev) -> bool,
        ) -> Vec<Result<Ev, String>> {
            collect_until(
                connection.iter().map(|item| {
                    item.map(|event| translate(event, None))
                        .map_err(|error| format!("{error:?}"))
                }),
                last,
            )
        }

        fn open_spans(connection: &TracedConnection) -> usize {
            connection.open_publish_spans()
        }

        fn set_reconnect_backoff(connection: &mut TracedConnection, backoff: ReconnectBackoff) {
            connection.set_reconnect_backoff(Some(backoff));
        }
    }
}

pub mod v5 {
    use super::*;
    use crate::common::traced::v5::{options, translate};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{RecvTimeoutError, TryRecvError};
    pub use rumqttc_opentelemetry::v5::{TracedConnection, TracedSyncClient};

    fn received(
        received: Result<
            Result<
                (rumqttc::v5::Event, Option<rumqttc_opentelemetry::Delivery>),
                rumqttc::v5::ConnectionError,
            >,
            (),
        >,
    ) -> Recv {
        match received {
            Ok(Ok((event, delivery))) => Recv::Event(translate(event, delivery)),
            Ok(Err(error)) => Recv::Error(format!("{error:?}")),
            Err(()) => Recv::Done,
        }
    }

    fn event(received: Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>) -> Recv {
        match received {
            Ok(event) => Recv::Event(translate(event, None)),
            Err(error) => Recv::Error(format!("{error:?}")),
        }
    }

    impl Twin for V5 {
        type Client = TracedSyncClient;
        type Connection = TracedConnection;

        fn connect(
            broker: &Broker,
            config: &Config,
            cap: usize,
            instrumentation: Instrumentation,
        ) -> (TracedSyncClient, TracedConnection) {
            TracedSyncClient::with_instrumentation(options(broker, config), cap, instrumentation)
        }

        fn publish(client: &TracedSyncClient, topic: &str, payload: Vec<u8>) -> bool {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .is_ok()
        }

        fn publish_confirmed(
            client: &TracedSyncClient,
            topic: &str,
            payload: Vec<u8>,
        ) -> Result<(), Error> {
            client.publish_confirmed(topic, QoS::AtLeastOnce, false, payload, None)
        }

        fn subscribe(client: &TracedSyncClient, filter: &str) {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .expect("subscribe request queued");
        }

        fn recv(connection: &mut TracedConnection) -> Recv {
            connection.recv().map_or(Recv::Done, event)
        }

        fn recv_traced(connection: &mut TracedConnection) -> Recv {
            received(connection.recv_traced().map_err(|_| ()))
        }

        fn try_recv(connection: &mut TracedConnection) -> Recv {
            match connection.try_recv() {
                Ok(received) => event(received),
                Err(TryRecvError::Empty) => Recv::Nothing,
                Err(TryRecvError::Disconnected) => Recv::Done,
            }
        }

        fn recv_timeout(connection: &mut TracedConnection, timeout: Duration) -> Recv {
            match connection.recv_timeout(timeout) {
                Ok(received) => event(received),
                Err(RecvTimeoutError::Timeout) => Recv::Nothing,
                Err(RecvTimeoutError::Disconnected) => Recv::Done,
            }
        }

        fn iterate_until(
            connection: &mut TracedConnection,
            last: impl FnMut(&Ev) -> bool,
        ) -> Vec<Result<Ev, String>> {
            collect_until(
                connection.iter().map(|item| {
                    item.map(|event| translate(event, None))
                        .map_err(|error| format!("{error:?}"))
                }),
                last,
            )
        }

        fn open_spans(connection: &TracedConnection) -> usize {
            connection.open_publish_spans()
        }

        fn set_reconnect_backoff(connection: &mut TracedConnection, backoff: ReconnectBackoff) {
            connection.set_reconnect_backoff(Some(backoff));
        }
    }
}
