//! Publish-span correlation under load, pkid reuse and pkid collisions, for MQTT 3.1.1 and 5,
//! against a real mosquitto.
//!
//! rumqttc reports its own publishes only by packet id (DESIGN.md "Spans": `Outgoing::Publish`,
//! `Outgoing::AwaitAck`, PUBACK). These tests check, event by event, that the span a PUBACK ends
//! is the one of the publish that carried its packet id.

mod common;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use common::Broker;
use common::telemetry::{SpanLog, assert_success, destination, packet_id};
use common::traced::{
    Config, DEADLINE, Ev, TracedLoop, TracedPublish, freeze, poll_until, thaw, v4, v5,
};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt};
use rumqttc_opentelemetry::{Instrumentation, V4Propagation};
use tokio::sync::mpsc;
use tokio::time::timeout;

const TASKS: usize = 4;
const PER_TASK: usize = 125;
const TOTAL: usize = TASKS * PER_TASK;
const INFLIGHT: u16 = 10;

/// Aborts a spawned task when dropped, so a failing test does not leave it running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// 500 QoS 1 publishes from 4 tasks sharing clones of one traced client, in-flight limit 10, so
/// packet ids 1..=10 are each reused about 50 times.
///
/// Checks DESIGN.md "Spans": a QoS 1 publish span ends at its PUBACK, and "correlation must hold
/// under concurrent publishers, pkid reuse": after every poll, the producer spans that poll ended
/// are exactly one span with `messaging.mqtt.packet_id` = the pkid of the PUBACK it returned
/// (none for any other event); every span ends exactly once and successfully. MQTT 3.1.1 / 5
/// section 2.2.1 (3.1.1) / 2.2.1 (5): a packet identifier becomes reusable once its
/// acknowledgement is processed. And the receive side ("Propagation", ParentMode
/// CreationContext): every one of the 500 receive spans is a child of the producer span of its
/// topic.
///
/// `publisher` builds the publisher's instrumentation: MQTT 3.1.1 needs
/// `V4Propagation::Envelope` to carry the context at all.
async fn five_hundred_publishes<C: TracedPublish>(publisher: fn(&SpanLog) -> Instrumentation) {
    let broker = Broker::start();
    let pub_log = SpanLog::new();
    let sub_log = SpanLog::new();

    let (subscriber, mut sub_loop) =
        C::connect(&broker, &Config::default(), 10, sub_log.instrumentation());
    subscriber.subscribe("load/#", 1).await;
    poll_until(&mut sub_loop, "subscriber SUBACK", |e| {
        matches!(e, Ev::SubAck).then_some(())
    })
    .await;
    let (received_tx, mut received_rx) = mpsc::unbounded_channel();
    let _sub_task = AbortOnDrop(tokio::spawn(async move {
        loop {
            match sub_loop.next().await {
                Ok(Ev::Message {
                    topic, delivery, ..
                }) => {
                    if received_tx.send((topic, delivery)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("subscriber connection: {error}"),
            }
        }
    }));

    let config = Config {
        inflight: Some(INFLIGHT),
        ..Config::default()
    };
    let (publisher, mut pub_loop) = C::connect(&broker, &config, 10, publisher(&pub_log));
    poll_until(&mut pub_loop, "publisher CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let topic = format!("load/{task}/{i}");
                    let payload = Bytes::from(format!("{task}/{i}"));
                    publisher.publish(topic, 1, payload).await;
                }
            })
        })
        .collect();

    let (mut acks, mut written, mut collisions) = (0, 0, 0);
    timeout(DEADLINE, async {
        while acks < TOTAL {
            let before = pub_log.len();
            let event = pub_loop.next().await.expect("publisher connection");
            let ended = pub_log.since(before);
            match event {
                Ev::PubAck(pkid) => {
                    assert_eq!(
                        ended.len(),
                        1,
                        "PUBACK {pkid} must end one span: {ended:#?}"
                    );
                    assert_eq!(
                        packet_id(&ended[0]),
                        Some(i64::from(pkid)),
                        "PUBACK {pkid} ended {:#?}",
                        ended[0]
                    );
                    assert_success(&ended[0]);
                    acks += 1;
                }
                Ev::Written(pkid) => {
                    assert!((1..=INFLIGHT).contains(&pkid), "pkid {pkid}");
                    assert!(ended.is_empty(), "written {pkid} ended {ended:#?}");
                    written += 1;
                }
                Ev::AwaitAck(pkid) => {
                    assert!(ended.is_empty(), "collision on {pkid} ended {ended:#?}");
                    collisions += 1;
                }
                other => assert!(ended.is_empty(), "{other:?} ended {ended:#?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{acks} of {TOTAL} PUBACKs within {DEADLINE:?}"));
    for task in tasks {
        task.await.expect("publishing task");
    }
    assert_eq!(written, TOTAL, "one PUBLISH written per publish");
    eprintln!("pkid collisions seen: {collisions}");
    assert_eq!(pub_loop.open_spans(), 0);

    let producers = pub_log.spans_of(SpanKind::Producer);
    assert_eq!(producers.len(), TOTAL);
    assert_eq!(
        pub_log.len(),
        TOTAL,
        "the publisher records only producer spans"
    );
    let span_ids: HashSet<SpanId> = producers.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(span_ids.len(), TOTAL, "every span ended once");
    let by_topic: HashMap<String, _> = producers
        .iter()
        .map(|span| (destination(span).expect("destination"), span))
        .collect();
    assert_eq!(by_topic.len(), TOTAL, "one span per topic");
    for span in &producers {
        assert_success(span);
        let pkid = packet_id(span).expect("packet id");
        assert!((1..=i64::from(INFLIGHT)).contains(&pkid), "pkid {pkid}");
        assert_eq!(span.name, format!("publish {}", destination(span).unwrap()));
    }

    let mut received = Vec::with_capacity(TOTAL);
    timeout(DEADLINE, async {
        while received.len() < TOTAL {
            received.push(received_rx.recv().await.expect("subscriber task alive"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {TOTAL} messages received", received.len()));
    let topics: HashSet<&String> = received.iter().map(|(topic, _)| topic).collect();
    assert_eq!(topics.len(), TOTAL, "every message once");
    for (topic, delivery) in &received {
        let producer = by_topic[topic];
        let creation = delivery
            .as_ref()
            .and_then(|d| d.creation_context())
            .expect("a creation context");
        assert_eq!(
            creation.span().span_context().span_id(),
            producer.span_context.span_id(),
            "{topic}"
        );
    }
    let receives = sub_log.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), TOTAL);
    for receive in &receives {
        let topic = destination(receive).expect("destination");
        let producer = by_topic[&topic];
        assert_eq!(
            receive.parent_span_id,
            producer.span_context.span_id(),
            "{topic}"
        );
        assert_eq!(
            receive.span_context.trace_id(),
            producer.span_context.trace_id(),
            "{topic}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_five_hundred_concurrent_publishes_correlate_by_packet_id() {
    five_hundred_publishes::<v5::TracedClient>(SpanLog::instrumentation).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_five_hundred_concurrent_publishes_correlate_by_packet_id() {
    five_hundred_publishes::<v4::TracedClient>(|log| {
        log.builder()
            .v4_propagation(V4Propagation::Envelope)
            .build()
    })
    .await;
}

/// A deterministic packet-id collision (`Outgoing::AwaitAck`). With an in-flight limit of 2,
/// rumqttc hands out pkids 1, 2, 1, ... to publishes and subscribes alike; a SUBSCRIBE takes
/// pkid 2 without occupying an in-flight slot, so the next publish gets pkid 1 while the first
/// publish (pkid 1) is still unacknowledged: the broker is frozen (SIGSTOP), so no PUBACK can
/// arrive. rumqttc parks it (`AwaitAck(1)`) and writes it when PUBACK 1 frees the pkid.
///
/// Checks DESIGN.md "Spans": "PKIDs ... can collide (`Outgoing::AwaitAck`): correlation must
/// hold": nothing ends while parked; the first PUBACK 1 ends the first publish's span, the
/// second PUBACK 1 the parked one's, both with `messaging.mqtt.packet_id` = 1. (MQTT 3.1.1
/// section 2.3.1 / MQTT 5 section 2.2.1: a client must not reuse a packet identifier before its
/// acknowledgement.)
async fn parked_collision<C: TracedPublish>() {
    let broker = Broker::start();
    let log = SpanLog::new();
    let config = Config {
        inflight: Some(2),
        ..Config::default()
    };
    let (client, mut eventloop) = C::connect(&broker, &config, 10, log.instrumentation());
    poll_until(&mut eventloop, "CONNACK", |e| {
        matches!(e, Ev::ConnAck { .. }).then_some(())
    })
    .await;

    freeze(&broker);
    client
        .publish("collide/first".into(), 1, Bytes::from_static(b"1"))
        .await;
    client.subscribe("unrelated/#", 1).await;
    client
        .publish("collide/second".into(), 1, Bytes::from_static(b"2"))
        .await;
    let mut before_thaw = Vec::new();
    poll_until(&mut eventloop, "AwaitAck", |e| {
        before_thaw.push(e.clone());
        matches!(e, Ev::AwaitAck(_)).then_some(())
    })
    .await;
    let written: Vec<u16> = before_thaw
        .iter()
        .filter_map(|e| match e {
            Ev::Written(pkid) => Some(*pkid),
            _ => None,
        })
        .collect();
    assert_eq!(written, [1], "{before_thaw:?}");
    assert!(
        matches!(before_thaw.last(), Some(Ev::AwaitAck(1))),
        "{before_thaw:?}"
    );
    assert_eq!(
        log.len(),
        0,
        "nothing is acknowledged while the broker is frozen"
    );
    assert_eq!(eventloop.open_spans(), 2);

    thaw(&broker);
    let mut order = Vec::new();
    timeout(DEADLINE, async {
        while order
            .iter()
            .filter(|(e, _)| matches!(e, Ev::PubAck(_)))
            .count()
            < 2
        {
            let before = log.len();
            let event = eventloop.next().await.expect("connection");
            let ended = log.since(before);
            if let Ev::PubAck(pkid) = event {
                assert_eq!(ended.len(), 1, "{ended:#?}");
                assert_eq!(packet_id(&ended[0]), Some(i64::from(pkid)));
                assert_success(&ended[0]);
            } else {
                assert!(ended.is_empty(), "{event:?} ended {ended:#?}");
            }
            order.push((event, ended.first().map(|s| s.name.to_string())));
        }
    })
    .await
    .expect("both PUBACKs");
    let acks: Vec<(u16, String)> = order
        .iter()
        .filter_map(|(e, name)| match e {
            Ev::PubAck(pkid) => Some((*pkid, name.clone().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        [
            (1, "publish collide/first".to_owned()),
            (1, "publish collide/second".to_owned())
        ],
        "{order:?}"
    );
    let first_ack = order
        .iter()
        .position(|(e, _)| matches!(e, Ev::PubAck(_)))
        .unwrap();
    let parked_written = order
        .iter()
        .position(|(e, _)| matches!(e, Ev::Written(1)))
        .expect("the parked publish is written");
    assert!(first_ack < parked_written, "{order:?}");
    assert_eq!(eventloop.open_spans(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_parked_collision_ends_each_span_at_its_own_puback() {
    parked_collision::<v5::TracedClient>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_parked_collision_ends_each_span_at_its_own_puback() {
    parked_collision::<v4::TracedClient>().await;
}
