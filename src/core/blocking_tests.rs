//! Unit tests of the blocking adapter over the scripted fake: what `recv`, `try_recv`,
//! `recv_timeout` and the iterator return (rumqttc 0.25.1 `src/client.rs` `Connection`), a
//! reconnect backoff across timed-out receives, the runtime-free [`wait`], and the panic inside
//! an async runtime. `tests/sync_v4.rs` and `tests/sync_v5.rs` check the twins against mosquitto.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Connection, Missed, Wait, wait};
use crate::core::client::Client;
use crate::core::fake::{Fake, FakeError, FakeEvent, FakeOptions, connack};
use crate::core::protocol::PublishRequest;
use crate::instrumentation::Instrumentation;
use crate::reconnect::ReconnectBackoff;
use crate::semconv::MqttQoS;

const DEADLINE: Duration = Duration::from_secs(10);

fn connection() -> (Client<Fake>, Connection<Fake>) {
    let instrumentation = Instrumentation::builder().build();
    let (client, event_loop) = Client::<Fake>::new(
        FakeOptions {
            limit: 10,
            manual_acks: false,
        },
        10,
        &instrumentation,
    );
    (client, Connection::new(event_loop))
}

/// rumqttc's `resolve_event`: an event and a connection error are handed out (the iterator goes
/// on after an error, since the next poll reconnects); `RequestsDone` ends the iterator, and
/// `recv` then returns `RecvError` (`Missed::Done`).
#[test]
fn events_and_errors_are_handed_out_until_requests_are_done() {
    let (_client, mut connection) = connection();
    connection
        .event_loop_mut()
        .inner_mut()
        .then(|_| connack(true))
        .then(|_| Err(FakeError("connection_reset")))
        .then(|_| connack(true))
        .then(|_| Err(FakeError("requests_done")))
        .then(|_| Ok(FakeEvent::PubAck(9)));
    let seen: Vec<_> = connection.iter().collect();
    assert_eq!(
        seen,
        [
            Ok(FakeEvent::ConnAck {
                session_present: true
            }),
            Err(FakeError("connection_reset")),
            Ok(FakeEvent::ConnAck {
                session_present: true
            }),
        ]
    );
    // Like rumqttc's, a receive after the end polls again.
    assert_eq!(
        connection.receive_event(Wait::Forever),
        Ok(Ok(FakeEvent::PubAck(9)))
    );
    assert_eq!(
        connection.receive_event(Wait::Forever),
        Ok(Err(FakeError("the script has ended")))
    );
}

/// `try_recv` and `recv_timeout` return a ready event; `RequestsDone` is `Disconnected`
/// (`Missed::Done`) for them too.
#[test]
fn try_and_timed_receives_hand_out_ready_events() {
    let (_client, mut connection) = connection();
    connection
        .event_loop_mut()
        .inner_mut()
        .then(|_| connack(true))
        .then(|_| Ok(FakeEvent::PubAck(1)))
        .then(|_| Err(FakeError("requests_done")))
        .then(|_| Err(FakeError("requests_done")));
    assert!(matches!(
        connection.receive_event(Wait::No),
        Ok(Ok(FakeEvent::ConnAck { .. }))
    ));
    assert_eq!(
        connection.receive_event(Wait::For(DEADLINE)),
        Ok(Ok(FakeEvent::PubAck(1)))
    );
    assert_eq!(connection.receive_event(Wait::No), Err(Missed::Done));
    assert_eq!(
        connection.receive_event(Wait::For(DEADLINE)),
        Err(Missed::Done)
    );
}

/// A failed connection attempt with a reconnect backoff of 300 ms: the next poll waits. A
/// `try_recv` then finds nothing (`Empty`), and `recv_timeout` calls of 20 ms time out, but the
/// wait is not started over by each of them: the next attempt happens about 300 ms after the
/// failure, not never.
#[test]
fn backoff_deadline_survives_timed_out_receives() {
    let (_client, mut connection) = connection();
    let backoff = ReconnectBackoff::new(Duration::from_millis(300), Duration::from_millis(300))
        .with_jitter(0.0);
    connection
        .event_loop_mut()
        .set_reconnect_backoff(Some(backoff));
    connection
        .event_loop_mut()
        .inner_mut()
        .then(|_| Err(FakeError("connection_refused")))
        .then(|_| connack(true));
    assert_eq!(
        connection.receive_event(Wait::Forever),
        Ok(Err(FakeError("connection_refused")))
    );
    let failed = Instant::now();
    assert_eq!(connection.receive_event(Wait::No), Err(Missed::Timeout));
    let mut timeouts = 0;
    let event = loop {
        match connection.receive_event(Wait::For(Duration::from_millis(20))) {
            Err(Missed::Timeout) => timeouts += 1,
            other => break other,
        }
        assert!(
            failed.elapsed() < DEADLINE,
            "no new attempt after {timeouts} timed-out receives"
        );
    };
    assert!(
        matches!(event, Ok(Ok(FakeEvent::ConnAck { .. }))),
        "{event:?}"
    );
    assert!(failed.elapsed() >= Duration::from_millis(290));
    assert!(
        timeouts >= 5,
        "{timeouts} timed-out receives during the wait"
    );
}

/// [`wait`] runs the traced client's publish future without a runtime, and wakes up when a
/// future it waits for is completed from another thread.
#[test]
fn wait_needs_no_runtime() {
    let (client, connection) = connection();
    let request = PublishRequest::new(
        "t".to_owned(),
        MqttQoS::AtLeastOnce,
        false,
        Bytes::from_static(b"1"),
    );
    assert_eq!(wait(client.publish(request)), Ok(()));
    assert_eq!(connection.event_loop().open_publish_spans(), 1);

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let sending = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        sender.send(7)
    });
    assert_eq!(wait(receiver), Ok(7));
    assert_eq!(sending.join().ok(), Some(Ok(())));
}

/// From async code a blocking receive panics with tokio's message, as rumqttc's `Connection`
/// does: the blocking twins are for threads outside a runtime.
#[test]
#[should_panic(expected = "Cannot start a runtime from within a runtime")]
fn blocking_receive_inside_a_runtime_panics() {
    let (_client, mut connection) = connection();
    connection
        .event_loop_mut()
        .inner_mut()
        .then(|_| connack(true));
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    // The connection stays outside: a runtime must not be dropped in async code either.
    outer.block_on(async {
        let _ = connection.receive_event(Wait::Forever);
    });
}

/// Dropping a connection in async code drops its runtime, which tokio refuses there too, as
/// for rumqttc's `Connection`.
#[test]
#[should_panic(expected = "Cannot drop a runtime in a context where blocking is not allowed")]
fn dropping_a_connection_inside_a_runtime_panics() {
    let (_client, connection) = connection();
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    outer.block_on(async move { drop(connection) });
}

/// `try_recv` does not block, so it works from async code as well.
#[test]
fn try_receive_inside_a_runtime_does_not_panic() {
    let (_client, mut connection) = connection();
    connection
        .event_loop_mut()
        .inner_mut()
        .then(|_| connack(true));
    let outer = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    let received = outer.block_on(async { connection.receive_event(Wait::No) });
    assert!(
        matches!(received, Ok(Ok(FakeEvent::ConnAck { .. }))),
        "{received:?}"
    );
}
