//! The blocking twins (`TracedSyncClient`, `TracedConnection`) of MQTT 3.1.1 and MQTT 5 against
//! a real mosquitto, from std threads with no async runtime of their own: publish spans that
//! end at their PUBACK, one trace from publisher to receiver, a trace from `mosquitto_pub`
//! continued, a broker restart with persistent sessions, a dropped connection, and rumqttc's
//! `recv` / `try_recv` / `recv_timeout` / `iter` semantics (rumqttc 0.25.1 `src/client.rs`,
//! `src/v5/client.rs`). Each scenario is written once over `common::sync_twin::Twin` and run for
//! both versions.

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;
#[path = "common/sync_twin.rs"]
mod sync_twin;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::Duration;

use common::telemetry::{
    SpanLog, assert_error, assert_success, assert_unique_attribute_keys, destination, packet_id,
};
use common::traced::{Config, Ev};
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::Context;
use opentelemetry::trace::{
    Span as _, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use rumqttc_opentelemetry::propagation::envelope;
use rumqttc_opentelemetry::{Error, InstrumentationBuilder, V4Propagation};
use sync_twin::{Recv, Twin, V4, V5, drive, recv_until, wait_until};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// What differs between the versions beyond the twins' own methods.
trait Version: Twin {
    /// The instrumentation that carries the context: the envelope for MQTT 3.1.1 (it has no
    /// properties), user properties (the default) for MQTT 5.
    fn propagating(builder: InstrumentationBuilder) -> InstrumentationBuilder;
    /// `mosquitto_pub` of `message` to `topic` at QoS 1, carrying `traceparent` as this version
    /// can: an MQTT 5 user property (`-D publish user-property`), or for MQTT 3.1.1 the
    /// envelope (its bytes made with the crate's codec, sent with `-f`).
    fn mosquitto_pub(broker: &Broker, topic: &str, message: &str, traceparent: &str);
}

impl Version for V4 {
    fn propagating(builder: InstrumentationBuilder) -> InstrumentationBuilder {
        builder.v4_propagation(V4Propagation::Envelope)
    }

    fn mosquitto_pub(broker: &Broker, topic: &str, message: &str, traceparent: &str) {
        let wrapped = envelope::encode(&[("traceparent", traceparent)], message.as_bytes())
            .expect("a small envelope");
        let file = broker
            .dir()
            .join(format!("envelope-{}", unique_client_id("f")));
        std::fs::write(&file, wrapped).expect("write the envelope");
        let file = file.to_string_lossy().into_owned();
        let args = [
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-t",
            topic,
            "-f",
            file.as_str(),
        ];
        check(&args, broker.mosquitto_pub(&args));
    }
}

impl Version for V5 {
    fn propagating(builder: InstrumentationBuilder) -> InstrumentationBuilder {
        builder
    }

    fn mosquitto_pub(broker: &Broker, topic: &str, message: &str, traceparent: &str) {
        let args = [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
            "-D",
            "publish",
            "user-property",
            "traceparent",
            traceparent,
        ];
        check(&args, broker.mosquitto_pub(&args));
    }
}

fn check(args: &[&str], output: std::process::Output) {
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A connection whose CONNACK has been received.
fn connected<T: Twin>(
    broker: &Broker,
    config: &Config,
    cap: usize,
    log: &SpanLog,
) -> (T::Client, T::Connection) {
    let (client, mut connection) = T::connect(broker, config, cap, log.instrumentation());
    recv_until::<T, _>(&mut connection, "CONNACK", |event| {
        matches!(event, Ev::ConnAck { .. }).then_some(())
    });
    (client, connection)
}

/// DESIGN.md "Spans" (QoS 1 ends at PUBACK) for the blocking twins: N QoS 1 publishes made on
/// another std thread, inside a span of that thread. After every event the connection hands
/// out, exactly the spans that event ends have ended: none at a write, and at each PUBACK
/// exactly one span, successful, whose `messaging.mqtt.packet_id` is the PUBACK's (MQTT 3.1.1
/// section 4.3.2 / MQTT 5 section 4.3.2: the PUBACK acknowledges the PUBLISH of its packet
/// id). Every span is a child of the thread's span (the blocking publish starts it in the
/// calling thread's context), and the metrics count N sent messages and N operation durations
/// (DESIGN.md "Metrics").
fn publishes_from_another_thread_end_at_their_puback<T: Twin>() {
    const N: usize = 50;
    let broker = Broker::start();
    let log = SpanLog::new();
    let reader = MetricReader::new();
    let instrumentation = log.builder().meter_provider(&reader.provider).build();
    let (client, mut connection) = T::connect(&broker, &Config::default(), N, instrumentation);
    let tracer = log.provider.tracer("agent");
    let agent = tracer.start("agent");
    let agent_id = agent.span_context().span_id();
    let parent = Context::current_with_span(agent);
    let publisher = thread::spawn(move || {
        let _attached = parent.attach();
        for i in 0..N {
            assert!(T::publish(&client, &format!("sync/{i}"), vec![1; i]));
        }
        client
    });

    let mut acked = 0;
    let mut ended = Vec::new();
    while acked < N {
        let before = log.len();
        let event = recv_until::<T, _>(&mut connection, "the next event", |event| {
            Some(event.clone())
        });
        // The publish spans it ended (the thread's own span ends when the thread does).
        let now: Vec<_> = log
            .since(before)
            .into_iter()
            .filter(|span| span.span_kind == SpanKind::Producer)
            .collect();
        match event {
            Ev::PubAck(pkid) => {
                acked += 1;
                assert_eq!(now.len(), 1, "PUBACK {pkid} ended {now:#?}");
                assert_eq!(packet_id(&now[0]), Some(i64::from(pkid)), "{now:#?}");
                assert_success(&now[0]);
            }
            other => assert!(now.is_empty(), "{other:?} ended {now:#?}"),
        }
        ended.extend(now);
    }
    let _client = publisher.join().expect("the publishing thread");
    assert_eq!(T::open_spans(&connection), 0);

    let topics: HashSet<String> = ended.iter().filter_map(destination).collect();
    assert_eq!(topics.len(), N, "one span per publish");
    for span in &ended {
        assert_eq!(span.span_kind, SpanKind::Producer);
        assert_eq!(span.parent_span_id, agent_id, "{span:#?}");
    }
    assert_unique_attribute_keys(&ended);
    assert_eq!(reader.total("messaging.client.sent.messages"), N as f64);
    assert_eq!(
        reader.count("messaging.client.operation.duration"),
        N as u64
    );
}

#[test]
fn v4_publishes_from_another_thread_end_at_their_puback() {
    publishes_from_another_thread_end_at_their_puback::<V4>();
}

#[test]
fn v5_publishes_from_another_thread_end_at_their_puback() {
    publishes_from_another_thread_end_at_their_puback::<V5>();
}

/// DESIGN.md "Propagation" through the blocking twins on both sides: a `publish_confirmed` on
/// one thread returns once acknowledged, and the receiving connection (on another) hands out
/// the payload as published (for MQTT 3.1.1 the envelope is stripped) with a receive span in
/// the publish span's trace, its child (default `ParentMode::CreationContext`), named after
/// the subscription filter.
fn publish_and_receive_share_one_trace<T: Version>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let instrumentation = || T::propagating(log.builder()).build();
    let (subscriber, mut sub_connection) =
        T::connect(&broker, &Config::default(), 10, instrumentation());
    T::subscribe(&subscriber, "sync/+/temperature");
    recv_until::<T, _>(&mut sub_connection, "SUBACK", |event| {
        matches!(event, Ev::SubAck).then_some(())
    });
    let received = thread::spawn(move || {
        let payload = recv_until::<T, _>(&mut sub_connection, "the message", |event| match event {
            Ev::Message { payload, .. } => Some(payload.clone()),
            _ => None,
        });
        (payload, sub_connection)
    });

    let (publisher, connection) = T::connect(&broker, &Config::default(), 10, instrumentation());
    let driven = drive::<T>(connection);
    assert_eq!(
        T::publish_confirmed(&publisher, "sync/kitchen/temperature", b"21.5".to_vec()).ok(),
        Some(())
    );
    let (payload, _sub_connection) = received.join().expect("the receiving thread");
    assert_eq!(&payload[..], b"21.5");
    drop(driven);

    let producer = log.spans_of(SpanKind::Producer);
    let receive = log.spans_of(SpanKind::Client);
    assert_eq!(producer.len(), 1, "{producer:#?}");
    assert_eq!(receive.len(), 1, "{receive:#?}");
    assert_success(&producer[0]);
    assert_eq!(receive[0].name, "receive sync/+/temperature");
    assert_eq!(
        receive[0].span_context.trace_id(),
        producer[0].span_context.trace_id()
    );
    assert_eq!(
        receive[0].parent_span_id,
        producer[0].span_context.span_id()
    );
    assert_unique_attribute_keys(&log.spans());
}

#[test]
fn v4_publish_and_receive_share_one_trace() {
    publish_and_receive_share_one_trace::<V4>();
}

#[test]
fn v5_publish_and_receive_share_one_trace() {
    publish_and_receive_share_one_trace::<V5>();
}

/// W3C Trace Context section 3.2 `traceparent` from an independent peer: `mosquitto_pub -D
/// publish user-property traceparent ...` (MQTT 5, W3C "Trace Context: MQTT" draft), or an
/// envelope sent by `mosquitto_pub -f` (MQTT 3.1.1, DESIGN.md "Envelope format"). The receive
/// span of the blocking connection continues that trace as a child of the given parent-id,
/// `recv_traced` hands out the producer's context as the creation context, and the application
/// sees the message without the envelope.
fn traceparent_from_mosquitto_pub_is_continued<T: Version>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    // A short keep-alive (MQTT 5 in rumqttc: at least 5 s): the blocking `recv_traced` below
    // returns at least that often.
    let config = Config {
        keep_alive: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (client, mut connection) = T::connect(&broker, &config, 10, log.instrumentation());
    T::subscribe(&client, "interop/#");
    recv_until::<T, _>(&mut connection, "SUBACK", |event| {
        matches!(event, Ev::SubAck).then_some(())
    });
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    T::mosquitto_pub(&broker, "interop/in", "hello", &traceparent);

    let deadline = std::time::Instant::now() + common::traced::DEADLINE;
    let (payload, delivery) = loop {
        assert!(std::time::Instant::now() < deadline, "no message in time");
        match T::recv_traced(&mut connection) {
            Recv::Event(Ev::Message {
                payload, delivery, ..
            }) => break (payload, delivery.expect("a delivery for every PUBLISH")),
            Recv::Event(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(&payload[..], b"hello");
    let receive = log.spans_of(SpanKind::Client);
    assert_eq!(receive.len(), 1, "{receive:#?}");
    assert_eq!(
        receive[0].span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).expect("hex")
    );
    assert_eq!(
        receive[0].parent_span_id,
        SpanId::from_hex(SPAN_ID).expect("hex")
    );
    assert!(receive[0].parent_span_is_remote);
    let creation = delivery.creation_context().expect("a creation context");
    assert_eq!(
        creation.span().span_context().span_id(),
        SpanId::from_hex(SPAN_ID).expect("hex")
    );
    assert_unique_attribute_keys(&receive);
}

#[test]
fn v4_envelope_from_mosquitto_pub_is_continued() {
    traceparent_from_mosquitto_pub_is_continued::<V4>();
}

#[test]
fn v5_traceparent_from_mosquitto_pub_is_continued() {
    traceparent_from_mosquitto_pub_is_continued::<V5>();
}

/// The in-flight window of the restart test: mosquitto's default receive maximum.
const WINDOW: u16 = 20;

/// A broker restart in the middle of N QoS 1 publishes from a std thread, with persistent
/// sessions (MQTT 3.1.1 section 3.1.2.4 CleanSession = 0; MQTT 5 sections 3.1.2.4 and
/// 3.1.2.11.2, Clean Start = 0 with a Session Expiry Interval) that the broker keeps across the
/// restart (`persistence true`, saved on SIGTERM). As in `tests/reconnect.rs`: half of the
/// publishes are made before the stop (at most the in-flight window of them unacknowledged),
/// the other half after the publisher's connection saw the error. Both connections are driven
/// by their own threads (`recv_timeout` with a reconnect backoff). MQTT section 4.4:
/// unacknowledged PUBLISH packets are re-sent on a resumed session. Checks DESIGN.md
/// "Spans" (correlation under reconnect replay): every distinct payload arrives, every publish
/// span ends exactly once, successfully, and the CONNACKs after the restart have a session.
fn persistent_session_survives_broker_restart<T: Twin>() {
    const N: usize = 100;
    let mut broker = Broker::builder().persistence(true).start();
    let pub_log = SpanLog::new();
    let sub_log = SpanLog::new();
    let persistent = Config {
        persistent: true,
        inflight: Some(WINDOW),
        ..Config::default()
    };
    let (subscriber, mut sub_connection) =
        T::connect(&broker, &persistent, 10, sub_log.instrumentation());
    T::subscribe(&subscriber, "restart/#");
    recv_until::<T, _>(&mut sub_connection, "SUBACK", |event| {
        matches!(event, Ev::SubAck).then_some(())
    });
    let sub = drive::<T>(sub_connection);
    let (publisher, connection) = connected::<T>(&broker, &persistent, 2 * N, &pub_log);
    let publisher_connection = drive::<T>(connection);

    let publish_range = |range: std::ops::Range<usize>| {
        let publisher = publisher.clone();
        thread::spawn(move || {
            for i in range {
                assert!(T::publish(
                    &publisher,
                    &format!("restart/{i}"),
                    i.to_string().into()
                ));
            }
        })
        .join()
        .expect("the publishing thread");
    };
    publish_range(0..N / 2);
    wait_until("the first PUBACKs", || {
        pub_log.len() >= N / 2 - usize::from(WINDOW)
    });
    broker.stop();
    wait_until("the publisher saw the connection drop", || {
        publisher_connection.error_count() > 0
    });
    publish_range(N / 2..N);
    broker.start_again();

    let mut received = HashSet::new();
    while received.len() < N {
        if let Ev::Message { payload, .. } = sub.next("the next message") {
            received.insert(String::from_utf8(payload.to_vec()).expect("UTF-8"));
        }
    }
    let expected: HashSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
    wait_until("every publish span ended", || pub_log.len() >= N);
    drop(publisher_connection);

    let producers = pub_log.spans_of(SpanKind::Producer);
    assert_eq!(producers.len(), N, "one span per publish");
    assert_eq!(pub_log.len(), N, "no span ended twice");
    let ids: HashSet<SpanId> = producers.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), N);
    for span in &producers {
        assert_success(span);
    }
    assert_unique_attribute_keys(&pub_log.spans());
    assert_unique_attribute_keys(&sub_log.spans());
}

#[test]
fn v4_persistent_session_survives_broker_restart() {
    persistent_session_survives_broker_restart::<V4>();
}

#[test]
fn v5_persistent_session_survives_broker_restart() {
    persistent_session_survives_broker_restart::<V5>();
}

/// DESIGN.md "Spans" (no span leaks) for the blocking twins: dropping the `TracedConnection`
/// ends every publish span still open, written and unacknowledged or still queued, with
/// `error.type = event_loop_dropped`; a thread blocked in `publish_confirmed` returns
/// `Error::PublishFailed("event_loop_dropped")`; a publish after that is refused by rumqttc
/// (its request channel is closed) and its span ends as `request_failed`.
fn dropping_the_connection_ends_open_publishes<T: Twin>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let (client, mut connection) = connected::<T>(&broker, &Config::default(), 10, &log);
    assert!(T::publish(&client, "drop/written", b"1".to_vec()));
    // Written; its PUBACK is never handed out.
    recv_until::<T, _>(&mut connection, "PUBLISH written", |event| {
        matches!(event, Ev::Written(_)).then_some(())
    });
    let confirming = {
        let client = client.clone();
        thread::spawn(move || T::publish_confirmed(&client, "drop/confirmed", b"2".to_vec()))
    };
    wait_until("the confirmed publish is queued", || {
        T::open_spans(&connection) == 2
    });
    assert_eq!(log.len(), 0);

    drop(connection);
    let ended = log.spans_of(SpanKind::Producer);
    assert_eq!(ended.len(), 2, "{ended:#?}");
    let by_topic: HashMap<String, _> = ended
        .iter()
        .map(|span| (destination(span).unwrap_or_default(), span))
        .collect();
    assert_error(by_topic["drop/written"], "event_loop_dropped");
    assert_error(by_topic["drop/confirmed"], "event_loop_dropped");
    match confirming.join().expect("the confirming thread") {
        Err(Error::PublishFailed(error_type)) => assert_eq!(error_type, "event_loop_dropped"),
        other => panic!("{other:?}"),
    }

    assert!(
        !T::publish(&client, "drop/late", b"3".to_vec()),
        "rumqttc refuses a request without its connection"
    );
    let late = log.since(2);
    assert_eq!(late.len(), 1, "{late:#?}");
    assert_error(&late[0], "request_failed");
    assert_unique_attribute_keys(&log.spans());
}

#[test]
fn v4_dropping_the_connection_ends_open_publishes() {
    dropping_the_connection_ends_open_publishes::<V4>();
}

#[test]
fn v5_dropping_the_connection_ends_open_publishes() {
    dropping_the_connection_ends_open_publishes::<V5>();
}

/// rumqttc 0.25.1 `Connection` (`src/client.rs`, `src/v5/client.rs`): on an idle connection
/// `try_recv` is `TryRecvError::Empty` and `recv_timeout` is `RecvTimeoutError::Timeout`;
/// `iter()` hands out each event. Dropping every client does not end the connection: rumqttc
/// 0.25.1's event loop keeps a sender of its own request channel, so it never returns
/// `ConnectionError::RequestsDone` (rumqtt issue 975), and the twins, like rumqttc's
/// `Connection`, keep receiving (what `RequestsDone` becomes is checked over the scripted fake
/// in `src/core/blocking_tests.rs`). Should a rumqttc release change that, this test says so.
fn receives_follow_rumqttc<T: Twin>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let config = Config {
        // `iter()` blocks: pings bound the wait for each item.
        keep_alive: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (client, mut connection) = connected::<T>(&broker, &config, 10, &log);
    assert!(matches!(T::try_recv(&mut connection), Recv::Nothing));
    assert!(matches!(
        T::recv_timeout(&mut connection, Duration::from_millis(100)),
        Recv::Nothing
    ));
    T::subscribe(&client, "idle/#");
    let items = T::iterate_until(&mut connection, |event| matches!(event, Ev::SubAck));
    assert!(items.iter().all(Result::is_ok), "{items:?}");

    drop(client);
    for _ in 0..3 {
        match T::recv_timeout(&mut connection, Duration::from_millis(100)) {
            Recv::Nothing | Recv::Event(_) => {}
            other => panic!("after the last client is gone: {other:?}"),
        }
    }
    assert_eq!(T::open_spans(&connection), 0);
    assert_eq!(log.len(), 0, "no publish, no receive: no span");
}

#[test]
fn v4_receives_follow_rumqttc() {
    receives_follow_rumqttc::<V4>();
}

#[test]
fn v5_receives_follow_rumqttc() {
    receives_follow_rumqttc::<V5>();
}

/// Like rumqttc's, the blocking twins move to other threads: the client is `Send + Sync +
/// Clone`, the connection `Send`, and the iterator borrows it.
#[test]
fn twins_are_send() {
    fn send<S: Send>() {}
    fn shared<S: Send + Sync + Clone>() {}
    shared::<rumqttc_opentelemetry::v4::TracedSyncClient>();
    shared::<rumqttc_opentelemetry::v5::TracedSyncClient>();
    send::<rumqttc_opentelemetry::v4::TracedConnection>();
    send::<rumqttc_opentelemetry::v5::TracedConnection>();
}
