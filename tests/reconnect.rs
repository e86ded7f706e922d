//! Publish spans across broker restarts, lost sessions, a dropped event loop and a broker that
//! never answers, for MQTT 3.1.1 and 5, against a real mosquitto.
//!
//! DESIGN.md "Spans": "A publish lost to a reconnect without session (rumqttc drops its pending
//! queue silently) or never acknowledged within a bound ends as an error, so no span and no map
//! entry leaks", and correlation "must hold under ... reconnect replay".

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use common::telemetry::{
    SpanLog, assert_error, assert_success, assert_unique_attribute_keys, destination, packet_id,
};
use common::traced::{
    Config, DEADLINE, Ev, RECONNECT_PAUSE, TracedLoop, TracedPublish, client_sockets_to, drive,
    freeze, poll_through_errors_until, poll_until, poll_until_error, thaw, v4, v5, wait_until,
};
use opentelemetry::trace::{SpanId, SpanKind};
use tokio::task::block_in_place;
use tokio::time::timeout;

const N: usize = 200;
/// The in-flight window of the restart test: mosquitto's default receive maximum.
const WINDOW: u16 = 20;

/// (a) A persistent session across a broker restart in the middle of 200 QoS 1 publishes.
///
/// Publisher and subscriber keep their sessions (MQTT 3.1.1 section 3.1.2.4 CleanSession = 0;
/// MQTT 5 section 3.1.2.4 Clean Start = 0 with a Session Expiry Interval, 3.1.2.11.2), the broker
/// persists them (`persistence true`, saved on SIGTERM). Half of the publishes are made before
/// the broker stops (some acknowledged, some in flight), the other half while it is down.
/// The in-flight window is 20 (mosquitto's default receive maximum), and the broker stops only
/// when at most 20 publishes are unacknowledged, and the second half is published only after the
/// client saw the connection error, so that rumqttc never replays more than its window at once
/// (beyond it, rumqttc 0.25.1 loses publishes: see `pending_replay_beyond_the_inflight_window`).
/// MQTT section 4.4 (both versions): unacknowledged PUBLISH packets are re-sent on a session
/// resumed. Checks DESIGN.md "Spans" (correlation under reconnect replay): every distinct
/// payload arrives (duplicates allowed, QoS 1 is at-least-once), and every publish span ends
/// exactly once, successfully, with no span left open.
async fn persistent_session_survives_restart<C: TracedPublish>() {
    let mut broker = Broker::builder().persistence(true).start();
    let pub_log = SpanLog::new();
    let sub_log = SpanLog::new();
    let persistent = Config {
        persistent: true,
        inflight: Some(WINDOW),
        ..Config::default()
    };

    let (subscriber, mut sub_loop) =
        C::connect(&broker, &persistent, 10, sub_log.instrumentation());
    subscriber.subscribe("restart/#", 1).await;
    poll_until(&mut sub_loop, "SUBACK", |e| {
        matches!(e, Ev::SubAck).then_some(())
    })
    .await;
    let mut sub = drive(sub_loop);

    let (publisher, mut pub_loop) =
        C::connect(&broker, &persistent, 2 * N, pub_log.instrumentation());
    poll_until(&mut pub_loop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;
    let mut publisher_loop = drive(pub_loop);

    for i in 0..N / 2 {
        publisher
            .publish(format!("restart/{i}"), 1, Bytes::from(i.to_string()))
            .await;
    }
    // Restart in the middle: with at most WINDOW of the first half unacknowledged.
    wait_until("first PUBACKs", || {
        pub_log.len() >= N / 2 - usize::from(WINDOW)
    })
    .await;
    block_in_place(|| broker.stop());
    wait_until("the publisher saw the connection drop", || {
        publisher_loop.error_count() > 0
    })
    .await;
    for i in N / 2..N {
        publisher
            .publish(format!("restart/{i}"), 1, Bytes::from(i.to_string()))
            .await;
    }
    block_in_place(|| broker.start_again());

    let mut received: HashSet<String> = HashSet::new();
    let mut deliveries = 0;
    timeout(DEADLINE, async {
        while received.len() < N {
            if let Some(Ev::Message { payload, .. }) = sub.events.recv().await {
                deliveries += 1;
                received.insert(String::from_utf8(payload.to_vec()).unwrap());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {N} distinct payloads arrived", received.len()));
    let expected: HashSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
    eprintln!("{deliveries} deliveries of {N} messages");

    wait_until("every publish span ended", || pub_log.len() >= N).await;
    // The session came back: the publisher's CONNACKs, in order, say so after the first.
    let mut sessions = Vec::new();
    while let Ok(event) = publisher_loop.events.try_recv() {
        if let Ev::ConnAck { session_present } = event {
            sessions.push(session_present);
        }
    }
    assert!(
        sessions.iter().all(|present| *present),
        "CONNACKs after the restart: {sessions:?}"
    );
    assert!(!sessions.is_empty(), "the publisher reconnected");

    let producers = pub_log.spans_of(SpanKind::Producer);
    assert_eq!(producers.len(), N, "one span per publish");
    assert_eq!(pub_log.len(), N);
    let ids: HashSet<SpanId> = producers.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), N, "every span ended once");
    let topics: HashSet<String> = producers.iter().filter_map(destination).collect();
    assert_eq!(topics.len(), N);
    for span in &producers {
        assert_success(span);
        assert!(packet_id(span).is_some(), "{span:#?}");
    }
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&pub_log.spans());
    assert_unique_attribute_keys(&sub_log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_persistent_session_survives_broker_restart() {
    persistent_session_survives_restart::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_persistent_session_survives_broker_restart() {
    persistent_session_survives_restart::<v4::TracedClient>().await;
}

/// Freezes the broker (SIGSTOP) so that `count` QoS 1 publishes stay unacknowledged: with an
/// in-flight limit of 3, three are written and the others stay in rumqttc's request channel.
/// Then kills it and starts a fresh one (no persistence) on the same port, whose CONNACK will
/// have Session Present = 0 (MQTT 3.1.1 section 3.2.2.2, MQTT 5 section 3.2.2.1.1): rumqttc
/// clears its `pending` queue. Returns before the client reconnects.
async fn lose_session_with_open_publishes<C: TracedPublish>(
    broker: &mut Broker,
    log: &SpanLog,
    config: Config,
    count: usize,
) -> (C, C::Loop) {
    assert!(count >= 3);
    let config = Config {
        inflight: Some(3),
        ..config
    };
    let (client, mut eventloop) = C::connect(broker, &config, 10, log.instrumentation());
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    freeze(broker);
    for i in 0..count {
        client
            .publish(format!("lost/{i}"), 1, Bytes::from(i.to_string()))
            .await;
    }
    let mut written = Vec::new();
    poll_until(&mut eventloop, "three PUBLISHes written", |e| {
        if let Ev::Written(pkid) = e {
            written.push(*pkid);
        }
        (written.len() == 3).then_some(())
    })
    .await;
    assert_eq!(written, [1, 2, 3]);
    assert_eq!(eventloop.open_spans(), count);
    assert_eq!(log.len(), 0);

    broker.kill();
    poll_until_error(&mut eventloop, "connection lost").await;
    // rumqttc keeps the three written publishes for a session; the traced event loop holds the
    // others (never written) itself and feeds them back within the in-flight window, because
    // rumqttc would send them all at once after the reconnect (crate docs of `reconnect`).
    assert_eq!(
        eventloop.pending_publishes(),
        3,
        "rumqttc keeps the written ones for a session"
    );
    broker.start_again();
    (client, eventloop)
}

async fn next_connack<L: TracedLoop>(eventloop: &mut L) -> bool {
    poll_through_errors_until(eventloop, "CONNACK", |e| match e {
        Ev::ConnAck { session_present } => Some(*session_present),
        _ => None,
    })
    .await
}

/// (b) A reconnect without session, with resending off (`set_resend_after_session_loss(false)`:
/// rumqttc's own behaviour): three written and two never-written publishes are dropped by
/// rumqttc (see [`lose_session_with_open_publishes`]).
///
/// Checks DESIGN.md "Spans" ("A publish lost to a reconnect without session (rumqttc drops its
/// pending queue silently) ... ends as an error"; crate docs of `reconnect`): the five spans end
/// with `error.type = session_lost` and status Error, nothing stays open, and the next publish
/// on the new session correlates normally.
async fn lost_session_ends_dropped_publishes<C: TracedPublish>() {
    let mut broker = Broker::start();
    let log = SpanLog::new();
    let config = Config {
        resend_after_session_loss: Some(false),
        ..Config::default()
    };
    let (client, mut eventloop) =
        lose_session_with_open_publishes::<C>(&mut broker, &log, config, 5).await;
    assert!(
        !next_connack(&mut eventloop).await,
        "a fresh broker has no session"
    );
    assert_eq!(eventloop.pending_publishes(), 0, "rumqttc dropped them");

    // The three written and unacknowledged publishes are what rumqttc dropped: they end as
    // `session_lost`. The two never written were held by the traced event loop: sending them
    // cannot duplicate anything, so they go out after the reconnect and succeed.
    let lost = log.spans_of(SpanKind::Producer);
    assert_eq!(lost.len(), 3, "{lost:#?}");
    let topics: HashSet<String> = lost.iter().filter_map(destination).collect();
    assert_eq!(topics, (0..3).map(|i| format!("lost/{i}")).collect());
    for span in &lost {
        assert_error(span, "session_lost");
    }
    poll_until(&mut eventloop, "the held publishes acknowledged", |_| {
        (log.spans_of(SpanKind::Producer).len() == 5).then_some(())
    })
    .await;
    for span in log.spans_of(SpanKind::Producer) {
        if destination(&span).is_some_and(|topic| topic == "lost/3" || topic == "lost/4") {
            assert_success(&span);
        }
    }
    assert_eq!(eventloop.open_spans(), 0);

    // The table is in step with rumqttc again.
    client
        .publish("lost/after".into(), 1, Bytes::from_static(b"after"))
        .await;
    let before = log.len();
    let pkid = poll_until(&mut eventloop, "PUBACK", |e| match e {
        Ev::PubAck(pkid) => Some(*pkid),
        _ => None,
    })
    .await;
    let ended = log.since(before);
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_success(&ended[0]);
    assert_eq!(destination(&ended[0]).as_deref(), Some("lost/after"));
    assert_eq!(packet_id(&ended[0]), Some(i64::from(pkid)));
    assert_eq!(eventloop.open_spans(), 0);
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

/// (b') The same lost session with the crate's default, resending on (crate docs of
/// `reconnect`: the traced event loop puts the publishes rumqttc dropped back, in order, with
/// fresh packet ids), for `count` publishes (see [`lose_session_with_open_publishes`]). With
/// `freeze`, the new broker is frozen (SIGSTOP) from its CONNACK until rumqttc has sent what it
/// can, so that no PUBACK frees a packet id while the resent publishes are written.
///
/// Checks DESIGN.md "Spans" ("nothing the application handed to `publish()` should vanish
/// silently"; correlation "must hold under ... reconnect"): a subscriber of the new broker
/// receives every payload once, and each span ends successfully at the PUBACK whose packet id
/// it carries.
async fn lost_session_resends_dropped_publishes<C: TracedPublish>(count: usize, freeze_new: bool) {
    let mut broker = Broker::start();
    let log = SpanLog::new();
    let (_client, mut eventloop) =
        lose_session_with_open_publishes::<C>(&mut broker, &log, Config::default(), count).await;
    let sub_log = SpanLog::new();
    let (subscriber, mut sub_loop) =
        C::connect(&broker, &Config::default(), 10, sub_log.instrumentation());
    subscriber.subscribe("lost/#", 1).await;
    poll_until(&mut sub_loop, "SUBACK", |e| {
        matches!(e, Ev::SubAck).then_some(())
    })
    .await;

    assert!(
        !next_connack(&mut eventloop).await,
        "a fresh broker has no session"
    );
    assert_eq!(
        log.len(),
        0,
        "nothing ends at the CONNACK: {:#?}",
        log.spans()
    );
    if freeze_new {
        freeze(&broker);
        let resent = poll_until_pending_drained_or_idle(&mut eventloop).await;
        eprintln!("resent while frozen: {resent:?}");
        thaw(&broker);
    }
    let mut acks = 0;
    timeout(DEADLINE, async {
        while log.len() < count {
            let before = log.len();
            let event = eventloop.next().await.expect("connection");
            let ended = log.since(before);
            if let Ev::PubAck(pkid) = event {
                assert_eq!(ended.len(), 1, "{ended:#?}");
                assert_success(&ended[0]);
                assert_eq!(packet_id(&ended[0]), Some(i64::from(pkid)));
                acks += 1;
            } else {
                assert!(ended.is_empty(), "{event:?} ended {ended:#?}");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{acks} of {count} PUBACKs"));
    for span in log.spans() {
        assert_success(&span);
    }
    assert_eq!(eventloop.open_spans(), 0);
    let topics: HashSet<String> = log.spans().iter().filter_map(destination).collect();
    assert_eq!(topics, (0..count).map(|i| format!("lost/{i}")).collect());

    let mut payloads = Vec::new();
    poll_until(&mut sub_loop, "every message", |e| {
        if let Ev::Message { payload, .. } = e {
            payloads.push(String::from_utf8(payload.to_vec()).unwrap());
        }
        (payloads.len() == count).then_some(())
    })
    .await;
    payloads.sort();
    let expected: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
    assert_unique_attribute_keys(&sub_log.spans());
}

/// Three written publishes: the resend fits in the in-flight window.
#[tokio::test(flavor = "multi_thread")]
async fn v5_lost_session_resends_dropped_publishes_by_default() {
    lost_session_resends_dropped_publishes::<v5::TracedClient>(3, true).await;
}

/// Three written publishes: the resend fits in the in-flight window.
#[tokio::test(flavor = "multi_thread")]
async fn v4_lost_session_resends_dropped_publishes_by_default() {
    lost_session_resends_dropped_publishes::<v4::TracedClient>(3, true).await;
}

/// Three written and two never-written publishes: five resent into a window of three.
#[tokio::test(flavor = "multi_thread")]
async fn v5_lost_session_resends_more_than_the_inflight_window() {
    lost_session_resends_dropped_publishes::<v5::TracedClient>(5, true).await;
}

/// Three written and two never-written publishes: five resent into a window of three.
#[tokio::test(flavor = "multi_thread")]
async fn v4_lost_session_resends_more_than_the_inflight_window() {
    lost_session_resends_dropped_publishes::<v4::TracedClient>(5, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_lost_session_ends_dropped_publishes_as_session_lost() {
    lost_session_ends_dropped_publishes::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_lost_session_ends_dropped_publishes_as_session_lost() {
    lost_session_ends_dropped_publishes::<v4::TracedClient>().await;
}

/// (c) Dropping the event loop ends every publish span still open (written and unacknowledged,
/// or still queued) with `error.type = event_loop_dropped` (DESIGN.md "Spans": no span leaks);
/// a publish made after that, which rumqttc refuses, ends as `request_failed`.
async fn dropped_event_loop_ends_open_spans<C: TracedPublish>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let (client, mut eventloop) =
        C::connect(&broker, &Config::default(), 10, log.instrumentation());
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;
    client
        .publish("drop/written".into(), 1, Bytes::from_static(b"1"))
        .await;
    // Written, but its PUBACK is never handed out.
    poll_until(&mut eventloop, "PUBLISH written", |e| {
        matches!(e, Ev::Written(_)).then_some(())
    })
    .await;
    client
        .publish("drop/queued".into(), 2, Bytes::from_static(b"2"))
        .await;
    assert_eq!(eventloop.open_spans(), 2);
    assert_eq!(log.len(), 0);

    drop(eventloop);
    let ended = log.spans_of(SpanKind::Producer);
    assert_eq!(ended.len(), 2, "{ended:#?}");
    let by_topic: HashMap<String, _> = ended
        .iter()
        .map(|span| (destination(span).unwrap(), span))
        .collect();
    assert_error(by_topic["drop/written"], "event_loop_dropped");
    assert_error(by_topic["drop/queued"], "event_loop_dropped");

    assert!(
        !client
            .try_publish_async("drop/late".into(), 1, Bytes::from_static(b"3"))
            .await,
        "rumqttc refuses a request without its event loop"
    );
    let late = log.since(2);
    assert_eq!(late.len(), 1, "{late:#?}");
    assert_error(&late[0], "request_failed");
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_dropped_event_loop_ends_open_spans() {
    dropped_event_loop_ends_open_spans::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_dropped_event_loop_ends_open_spans() {
    dropped_event_loop_ends_open_spans::<v4::TracedClient>().await;
}

const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// (d) `ack_timeout` while other traffic keeps the event loop busy. The broker is frozen
/// (SIGSTOP), so the QoS 1 publish is never acknowledged; the application keeps publishing
/// QoS 0 messages (written to the socket buffer) and polling. Checks the builder's contract
/// (`InstrumentationBuilder::ack_timeout`) and DESIGN.md "Spans" ("never acknowledged within a
/// bound ends as an error"): the span ends with `error.type = ack_timeout`; when the broker
/// resumes, its late PUBACK ends nothing, and the next QoS 1 publish correlates normally.
async fn ack_timeout_with_traffic<C: TracedPublish>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let instrumentation = log.builder().ack_timeout(ACK_TIMEOUT).build();
    let (client, mut eventloop) = C::connect(&broker, &Config::default(), 10, instrumentation);
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    freeze(&broker);
    client
        .publish("slow/acked".into(), 1, Bytes::from_static(b"1"))
        .await;
    let pkid = poll_until(&mut eventloop, "PUBLISH written", |e| match e {
        Ev::Written(pkid) => Some(*pkid),
        _ => None,
    })
    .await;
    let timed_out = timeout(DEADLINE, async {
        loop {
            client
                .publish("slow/nudge".into(), 0, Bytes::from_static(b"n"))
                .await;
            poll_until(&mut eventloop, "QoS 0 written", |e| {
                matches!(e, Ev::Written(0)).then_some(())
            })
            .await;
            let found = log
                .spans()
                .into_iter()
                .find(|span| destination(span).as_deref() == Some("slow/acked"));
            if let Some(span) = found {
                return span;
            }
            // Paces the nudges; the loop ends on the condition above, not on this pause.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the publish span ends as ack_timeout");
    assert_error(&timed_out, "ack_timeout");
    assert_eq!(packet_id(&timed_out), Some(i64::from(pkid)));
    assert_eq!(eventloop.open_spans(), 0);

    thaw(&broker);
    let before = log.len();
    poll_until(&mut eventloop, "late PUBACK", |e| {
        matches!(e, Ev::PubAck(p) if *p == pkid).then_some(())
    })
    .await;
    assert_eq!(log.len(), before, "a late PUBACK ends nothing");
    client
        .publish("slow/next".into(), 1, Bytes::from_static(b"2"))
        .await;
    let before = log.len();
    let next_pkid = poll_until(&mut eventloop, "PUBACK", |e| match e {
        Ev::PubAck(p) => Some(*p),
        _ => None,
    })
    .await;
    let ended = log.since(before);
    let producers: Vec<_> = ended
        .iter()
        .filter(|s| destination(s).as_deref() != Some("slow/nudge"))
        .collect();
    assert_eq!(producers.len(), 1, "{ended:#?}");
    assert_success(producers[0]);
    assert_eq!(destination(producers[0]).as_deref(), Some("slow/next"));
    assert_eq!(packet_id(producers[0]), Some(i64::from(next_pkid)));
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_ack_timeout_ends_unacknowledged_span_while_traffic_continues() {
    ack_timeout_with_traffic::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_ack_timeout_ends_unacknowledged_span_while_traffic_continues() {
    ack_timeout_with_traffic::<v4::TracedClient>().await;
}

/// (d) `ack_timeout` on an idle connection: the broker is frozen (SIGSTOP) and never answers,
/// the application publishes once and keeps polling (keep-alive 5 s, so `poll` returns a
/// PINGREQ, then the keep-alive failure, then connection timeouts). Checks the builder's
/// contract ("so that no span is held forever when a broker never answers") and DESIGN.md
/// "Spans" ("never acknowledged within a bound ends as an error, so no span ... leaks"): the
/// span ends with `error.type = ack_timeout` while polling continues.
async fn ack_timeout_idle<C: TracedPublish>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let instrumentation = log.builder().ack_timeout(ACK_TIMEOUT).build();
    let config = Config {
        keep_alive: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (client, mut eventloop) = C::connect(&broker, &config, 10, instrumentation);
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    freeze(&broker);
    client
        .publish("idle/acked".into(), 1, Bytes::from_static(b"1"))
        .await;
    poll_until(&mut eventloop, "PUBLISH written", |e| {
        matches!(e, Ev::Written(_)).then_some(())
    })
    .await;
    let mut polls = Vec::new();
    timeout(DEADLINE, async {
        while log.len() == 0 {
            match eventloop.next().await {
                Ok(event) => polls.push(format!("{event:?}")),
                Err(error) => {
                    polls.push(error);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("no span ended within {DEADLINE:?} of polling; polls returned {polls:?}")
    });
    let ended = log.spans();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_error(&ended[0], "ack_timeout");
    drop(broker);
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_ack_timeout_ends_unacknowledged_span_on_idle_connection() {
    ack_timeout_idle::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_ack_timeout_ends_unacknowledged_span_on_idle_connection() {
    ack_timeout_idle::<v4::TracedClient>().await;
}

/// (b) A lost session when rumqttc still holds an event from the dead connection. With an
/// in-flight limit of 1, publish 1 is written and publishes 2 and 3 wait in the request channel.
/// The broker acknowledges publish 1 and dies (SIGKILL, so its FIN follows the PUBACK) before
/// the client reads anything: the next poll reads the PUBACK and then the end of the stream, so
/// rumqttc queues the `PubAck` event, fails, and moves publishes 2 and 3 into `pending`. A fresh
/// broker (no session) then answers the reconnect: rumqttc drops `pending`. (MQTT 5 rumqttc
/// queues the CONNACK event behind the stale `PubAck`; MQTT 3.1.1 rumqttc returns it first.)
///
/// Checks DESIGN.md "Spans" ("nothing the application handed to `publish()` should vanish
/// silently"; correlation "must hold under ... reconnect"): publish 1, which the broker did
/// acknowledge, ends successfully at that (late) PUBACK; publishes 2 and 3 end as `session_lost`
/// (resending off) or are resent and end successfully (resending on, the default; crate docs of
/// `reconnect`); nothing stays open, and the next publish's span ends at its own PUBACK.
///
/// With `check_acked` false, the outcome of publish 1 is not checked (only that its span ended),
/// so the rest of the scenario keeps running while that check is a known bug.
async fn stale_event_then_lost_session<C: TracedPublish>(resend: bool, check_acked: bool) {
    let mut broker = Broker::start();
    let log = SpanLog::new();
    let config = Config {
        inflight: Some(1),
        resend_after_session_loss: Some(resend),
        ..Config::default()
    };
    let (client, mut eventloop) = C::connect(&broker, &config, 10, log.instrumentation());
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    client
        .publish("stale/1".into(), 1, Bytes::from_static(b"1"))
        .await;
    poll_until(&mut eventloop, "PUBLISH 1 written", |e| {
        matches!(e, Ev::Written(1)).then_some(())
    })
    .await;
    // The in-flight window is full: these stay in rumqttc's request channel.
    for i in 2..=3 {
        client
            .publish(format!("stale/{i}"), 1, Bytes::from(i.to_string()))
            .await;
    }
    let port = broker.port();
    wait_until("the PUBACK reached the client's socket", || {
        client_sockets_to(port)
            .iter()
            .any(|socket| socket.rx_queue > 0)
    })
    .await;
    broker.kill();
    wait_until("the broker's FIN reached the client's socket", || {
        // TIME_WAIT (`06`) entries are earlier connections, such as the fixture's readiness probe.
        let sockets = client_sockets_to(port);
        sockets.iter().any(|socket| socket.state == "08")
            && !sockets.iter().any(|socket| socket.state == "01")
    })
    .await;
    broker.start_again();

    let mut events = Vec::new();
    poll_through_errors_until(&mut eventloop, "CONNACK", |e| {
        events.push(e.clone());
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;
    assert!(
        matches!(
            events.last(),
            Some(Ev::ConnAck {
                session_present: false
            })
        ),
        "{events:?}"
    );
    // rumqttc hands out the PUBACK it read before the end of the stream after the reconnect:
    // before the CONNACK (MQTT 5) or after it (MQTT 3.1.1).
    if !events.iter().any(|e| matches!(e, Ev::PubAck(1))) {
        poll_until(&mut eventloop, "stale PUBACK", |e| {
            matches!(e, Ev::PubAck(1)).then_some(())
        })
        .await;
    }
    let ended_topics = |log: &SpanLog| -> HashMap<String, _> {
        log.spans()
            .into_iter()
            .map(|span| (destination(&span).unwrap(), span))
            .collect()
    };
    // Publishes 2 and 3 were never written: the traced event loop held them and sends them
    // after the reconnect whatever the resend setting (they cannot be duplicates).
    poll_until(&mut eventloop, "PUBACKs of the held publishes", |_| {
        let ended = ended_topics(&log);
        (ended.contains_key("stale/2") && ended.contains_key("stale/3")).then_some(())
    })
    .await;
    let by_topic = ended_topics(&log);
    let acked = by_topic.get("stale/1").expect("span of publish 1 ended");
    if check_acked {
        assert_success(acked);
    }
    for topic in ["stale/2", "stale/3"] {
        let span = by_topic
            .get(topic)
            .unwrap_or_else(|| panic!("span of {topic} ended"));
        assert_success(span);
    }
    assert_eq!(eventloop.open_spans(), 0);

    client
        .publish("stale/4".into(), 1, Bytes::from_static(b"4"))
        .await;
    let before = log.len();
    let pkid = poll_until(&mut eventloop, "PUBACK 4", |e| match e {
        Ev::PubAck(pkid) => Some(*pkid),
        _ => None,
    })
    .await;
    let ended = log.since(before);
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(destination(&ended[0]).as_deref(), Some("stale/4"));
    assert_success(&ended[0]);
    assert_eq!(packet_id(&ended[0]), Some(i64::from(pkid)));
    assert_eq!(eventloop.open_spans(), 0);
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_stale_puback_then_lost_session_without_resend_acked_publish_succeeds() {
    stale_event_then_lost_session::<v5::TracedClient>(false, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_stale_puback_then_lost_session_without_resend_acked_publish_succeeds() {
    stale_event_then_lost_session::<v4::TracedClient>(false, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_stale_puback_then_lost_session_with_resend_acked_publish_succeeds() {
    stale_event_then_lost_session::<v5::TracedClient>(true, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_stale_puback_then_lost_session_with_resend_acked_publish_succeeds() {
    stale_event_then_lost_session::<v4::TracedClient>(true, true).await;
}

/// Polls until rumqttc's `pending` queue is empty, or until a poll has nothing to return for a
/// while (the event loop waits on the frozen broker); returns the events seen.
async fn poll_until_pending_drained_or_idle<L: TracedLoop>(eventloop: &mut L) -> Vec<Ev> {
    const IDLE: Duration = Duration::from_secs(1);
    let mut seen = Vec::new();
    timeout(DEADLINE, async {
        while eventloop.pending_publishes() > 0 {
            match timeout(IDLE, eventloop.next()).await {
                Ok(Ok(event)) => seen.push(event),
                Ok(Err(error)) => panic!("connection error {error}; events {seen:?}"),
                // Blocked on the frozen broker: nothing more happens until it resumes.
                Err(_) => break,
            }
        }
    })
    .await
    .expect("pending drained or idle");
    seen
}

/// A resumed session whose replay is larger than the in-flight window. With a window of 2, the
/// broker frozen (SIGSTOP), six QoS 1 publishes: two written, four in the request channel. The
/// broker dies (its persisted session survives); on the error rumqttc moves all six into
/// `pending`. A new broker resumes the session (Session Present = 1) and is frozen right after
/// its CONNACK, so no PUBACK can come while rumqttc replays: rumqttc 0.25.1 drains `pending`
/// without its in-flight limit, the four publishes without a packet id get pkids 1, 2, 1, 2,
/// which are still in use, and each `AwaitAck` parks one publish in `state.collision`, a single
/// slot, overwriting the one parked before.
///
/// Checks DESIGN.md "Spans" ("nothing the application handed to `publish()` should vanish
/// silently"; "PKIDs ... can collide (`Outgoing::AwaitAck`): correlation must hold under ...
/// collisions and reconnect replay") and MQTT section 4.4 (both versions: the client re-sends
/// unacknowledged PUBLISH packets when the session resumes): once the broker resumes, it receives
/// all six messages, and all six spans end successfully.
async fn pending_replay_beyond_the_inflight_window<C: TracedPublish>() {
    let mut broker = Broker::builder().persistence(true).start();
    let log = SpanLog::new();
    let client_id = common::unique_client_id("replay");
    let config = Config {
        inflight: Some(2),
        persistent: true,
        client_id: Some(client_id.clone()),
        ..Config::default()
    };
    let (client, mut eventloop) = C::connect(&broker, &config, 10, log.instrumentation());
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;
    // A subscription makes mosquitto keep an MQTT 3.1.1 session in its autosave; the session is
    // on disk before the broker dies.
    client.subscribe("replay-unused/#", 1).await;
    poll_until(&mut eventloop, "SUBACK", |e| {
        matches!(e, Ev::SubAck).then_some(())
    })
    .await;
    assert!(block_in_place(|| broker.wait_for_log_after(
        &format!("Sending SUBACK to {client_id}"),
        "Saving in-memory database",
        DEADLINE
    )));

    freeze(&broker);
    for i in 0..6 {
        client
            .publish(format!("replay/{i}"), 1, Bytes::from(i.to_string()))
            .await;
    }
    let mut written = 0;
    poll_until(&mut eventloop, "two PUBLISHes written", |e| {
        written += usize::from(matches!(e, Ev::Written(_)));
        (written == 2).then_some(())
    })
    .await;
    broker.kill();
    poll_until_error(&mut eventloop, "connection lost").await;
    // rumqttc keeps the two written publishes for the replay; the traced event loop holds the four
    // never written and feeds them back within the window.
    assert_eq!(eventloop.pending_publishes(), 2);
    broker.start_again();
    assert!(
        next_connack(&mut eventloop).await,
        "the session was resumed"
    );
    freeze(&broker);
    let replay = poll_until_pending_drained_or_idle(&mut eventloop).await;
    eprintln!("replay while frozen: {replay:?}");
    thaw(&broker);

    poll_until(&mut eventloop, "all six spans ended", |_| {
        (log.len() == 6).then_some(())
    })
    .await;
    for span in log.spans() {
        assert_success(&span);
    }
    assert_eq!(eventloop.open_spans(), 0);
    let received = |log: &str| -> HashSet<String> {
        let prefix = format!("Received PUBLISH from {client_id} (");
        log.lines()
            .filter(|line| line.contains(&prefix))
            .filter_map(|line| line.split('\'').nth(1).map(str::to_owned))
            .collect()
    };
    let expected: HashSet<String> = (0..6).map(|i| format!("replay/{i}")).collect();
    wait_until("the broker received all six", || {
        received(&broker.log()) == expected
    })
    .await;
    // Each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
    assert_unique_attribute_keys(&log.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_pending_replay_beyond_the_inflight_window_keeps_every_publish() {
    pending_replay_beyond_the_inflight_window::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_pending_replay_beyond_the_inflight_window_keeps_every_publish() {
    pending_replay_beyond_the_inflight_window::<v4::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_stale_puback_then_lost_session_without_resend() {
    stale_event_then_lost_session::<v5::TracedClient>(false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_stale_puback_then_lost_session_without_resend() {
    stale_event_then_lost_session::<v4::TracedClient>(false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_stale_puback_then_lost_session_with_resend() {
    stale_event_then_lost_session::<v5::TracedClient>(true, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_stale_puback_then_lost_session_with_resend() {
    stale_event_then_lost_session::<v4::TracedClient>(true, false).await;
}
