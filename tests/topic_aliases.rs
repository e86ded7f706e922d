//! MQTT 5 Topic Aliases (section 3.3.2.3.4) through the traced client and event loop.
//!
//! "A sender can send a PUBLISH packet that contains a Topic Alias and a zero length Topic
//! Name"; the receiver uses the mapping an earlier PUBLISH with both set. Spans, destination
//! templates and metrics name the real topic, never the empty topic name, and "a receiver MUST
//! NOT carry forward any Topic Alias mappings from one Network Connection to another"
//! [MQTT-3.3.2-7].
//!
//! - Outgoing, against mosquitto (its `max_topic_alias` is 10 by default): a third-party
//!   subscriber receives the full topic; the publisher's spans, template and metrics name it;
//!   aliases the broker would take for a protocol error are refused before the queue
//!   ([MQTT-3.3.2-8], [MQTT-3.3.2-9], section 3.3.2.1); after a reconnect (through the fault
//!   proxy, which records every PUBLISH on the wire) an alias is set again, and a publish
//!   queued across the reconnect goes out with its topic.
//! - Incoming: mosquitto 2.0.11 sends full topics even to a client that allows aliases, so a
//!   scripted broker in this file (rumqttc's own packet codec over TCP) sends them.

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use bytes::BytesMut;
use common::fault_proxy::FaultProxy;
use common::telemetry::{
    SpanLog, Telemetry, assert_success, assert_unique_attribute_keys, destination, string_attribute,
};
use common::traced::{DEADLINE, RECONNECT_PAUSE, wait_until};
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, Packet, Publish, PublishProperties};
use rumqttc::v5::{ClientError, Event, MqttOptions};
use rumqttc_opentelemetry::Error;
use rumqttc_opentelemetry::semconv::metric::{
    MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_OPERATION_DURATION,
    MESSAGING_CLIENT_SENT_MESSAGES,
};
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// What the driver task saw.
#[derive(Debug)]
enum Polled {
    Event(Box<Event>),
    Error(String),
}

/// Polls `eventloop` in a task, handing every event and error out (rumqttc reconnects on the
/// next poll; the pause only keeps a refused connection from spinning).
fn drive(mut eventloop: TracedEventLoop) -> mpsc::UnboundedReceiver<Polled> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let polled = match eventloop.poll().await {
                Ok(event) => Polled::Event(Box::new(event)),
                Err(error) => Polled::Error(error.to_string()),
            };
            let failed = matches!(polled, Polled::Error(_));
            if tx.send(polled).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    });
    rx
}

/// The next polled item that `pick` accepts; every error on the way is returned in `errors`.
async fn next_matching<T>(
    events: &mut mpsc::UnboundedReceiver<Polled>,
    errors: &mut Vec<String>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let found = timeout(DEADLINE, async {
        while let Some(polled) = events.recv().await {
            match polled {
                Polled::Event(event) => {
                    if let Some(found) = pick(&event) {
                        return Some(found);
                    }
                }
                Polled::Error(error) => errors.push(error),
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(found)) => found,
        Ok(None) => panic!("the event loop ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; errors: {errors:?}"),
    }
}

async fn connack(events: &mut mpsc::UnboundedReceiver<Polled>, errors: &mut Vec<String>) {
    next_matching(events, errors, "a CONNACK", |event| {
        matches!(event, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
}

fn alias(alias: u16) -> PublishProperties {
    PublishProperties {
        topic_alias: Some(alias),
        ..PublishProperties::default()
    }
}

/// Publishes at QoS 1 with Topic Alias `n` and waits for the PUBACK.
async fn publish(client: &TracedClient, topic: &str, n: u16, payload: &str) {
    client
        .publish_confirmed(
            topic,
            QoS::AtLeastOnce,
            false,
            payload.to_owned(),
            Some(alias(n)),
        )
        .await
        .unwrap_or_else(|error| panic!("publish {payload:?} to {topic:?}: {error}"));
}

/// Topic names `topic`: a third-party subscriber (mosquitto_sub) receives the full topic of
/// every aliased publish (section 3.3.2.3.4: the broker substitutes the mapped topic); each of
/// the publisher's spans is `publish {template}` with `messaging.destination.name` the topic;
/// the sent-messages and duration metrics are on the template.
#[tokio::test(flavor = "multi_thread")]
async fn outgoing_aliases_name_the_real_topic_in_spans_templates_and_metrics() {
    let broker = Broker::start();
    let sub = broker.mosquitto_sub(&[
        "-V", "mqttv5", "-t", "plant/#", "-F", "%t %p", "-C", "4", "-W", "30",
    ]);
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let instrumentation = telemetry
        .builder()
        .meter_provider(&reader.provider)
        .publish_template("plant/+/speed")
        .expect("a valid template")
        .build();
    let options = MqttOptions::new(unique_client_id("alias-pub"), broker.host(), broker.port());
    let (client, eventloop) = TracedClient::with_instrumentation(options, 10, instrumentation);
    let mut events = drive(eventloop);
    let mut errors = Vec::new();
    connack(&mut events, &mut errors).await;

    publish(&client, "plant/line-1/speed", 1, "1").await;
    for payload in ["2", "3", "4"] {
        publish(&client, "", 1, payload).await;
    }

    let lines = sub.wait_for_lines(4, DEADLINE);
    assert_eq!(
        lines,
        [
            "plant/line-1/speed 1",
            "plant/line-1/speed 2",
            "plant/line-1/speed 3",
            "plant/line-1/speed 4"
        ]
    );
    let spans = telemetry.spans_of(SpanKind::Producer);
    assert_eq!(spans.len(), 4);
    for span in &spans {
        assert_eq!(span.name, "publish plant/+/speed");
        assert_eq!(destination(span).as_deref(), Some("plant/line-1/speed"));
        assert_eq!(
            string_attribute(span, "messaging.destination.template").as_deref(),
            Some("plant/+/speed")
        );
        assert_success(span);
    }
    assert_unique_attribute_keys(&spans);
    assert_eq!(reader.total(MESSAGING_CLIENT_SENT_MESSAGES), 4.0);
    let durations = reader.points(MESSAGING_CLIENT_OPERATION_DURATION);
    assert_eq!(durations.iter().map(|point| point.count).sum::<u64>(), 4);
    for point in reader
        .points(MESSAGING_CLIENT_SENT_MESSAGES)
        .iter()
        .chain(&durations)
    {
        assert_eq!(
            point
                .attribute("messaging.destination.template")
                .map(|value| value.as_str().into_owned())
                .as_deref(),
            Some("plant/+/speed"),
            "{point:?}"
        );
    }
    // The broker took every alias: the connection never broke.
    assert!(errors.is_empty(), "{errors:?}");
}

/// Publishes the broker would answer by closing the connection (and rumqttc would replay at
/// QoS 1 on every reconnect) are refused with rumqttc's own error, before the queue and without
/// a span, as a topic name with a wildcard is: an empty topic name without an alias (section
/// 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no Topic
/// Alias"), alias 0 [MQTT-3.3.2-8], an alias above the broker's Topic Alias Maximum of 10
/// [MQTT-3.3.2-9], an empty topic name with an alias this client never set.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_the_broker_would_refuse_are_refused_before_the_queue() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let options = MqttOptions::new(unique_client_id("alias-bad"), broker.host(), broker.port());
    let (client, eventloop) =
        TracedClient::with_instrumentation(options, 10, telemetry.instrumentation());
    let mut events = drive(eventloop);
    let mut errors = Vec::new();
    connack(&mut events, &mut errors).await;

    let refused: [(&str, Option<u16>, &str); 4] = [
        ("", None, "empty topic name without a topic alias"),
        ("plant/x", Some(0), "topic alias 0 is not allowed"),
        ("plant/x", Some(11), "above the broker's maximum of 10"),
        (
            "",
            Some(7),
            "topic alias 7, which no publish of this client set",
        ),
    ];
    for (topic, n, reason) in refused {
        let properties = PublishProperties {
            topic_alias: n,
            ..PublishProperties::default()
        };
        let qos = QoS::AtLeastOnce;
        assert!(matches!(
            client
                .publish_with_properties(topic, qos, false, "x", properties.clone())
                .await,
            Err(ClientError::Request(_))
        ));
        assert!(matches!(
            client.try_publish_with_properties(topic, qos, false, "x", properties.clone()),
            Err(ClientError::TryRequest(_))
        ));
        match client
            .publish_confirmed(topic, qos, false, "x", Some(properties))
            .await
        {
            Err(Error::RequestRejected(message)) => {
                assert!(message.contains(reason), "{message:?} for {topic:?} {n:?}")
            }
            other => panic!("{topic:?} {n:?}: {other:?}"),
        }
    }
    assert!(
        telemetry.spans().is_empty(),
        "no span for a refused publish"
    );
    // The connection is intact and takes a valid alias.
    publish(&client, "plant/ok", 10, "ok").await;
    publish(&client, "", 10, "ok").await;
    let spans = telemetry
        .wait_spans(SpanKind::Producer, "plant/ok", 2)
        .await;
    spans.iter().for_each(assert_success);
    assert!(errors.is_empty(), "{errors:?}");
}

/// [MQTT-3.3.2-7]: after a reconnect the broker knows no alias. The first publish that uses
/// alias 2 alone after the reconnect goes out with its topic again, the next one with the alias
/// alone. A publish written with the alias alone and left unacknowledged by a partition is
/// replayed by rumqttc on the new connection (persistent session); it goes out with its topic
/// (else mosquitto would close the connection for a protocol error, and again after every
/// reconnect). The fault proxy reads each PUBLISH on the wire.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_reconnect_aliases_are_set_again_and_queued_publishes_carry_their_topic() {
    const TOPIC: &str = "plant/line-2/speed";
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.addr());
    let sub = broker.mosquitto_sub(&[
        "-V", "mqttv5", "-t", "plant/#", "-F", "%t %p", "-C", "5", "-W", "30",
    ]);
    let log = SpanLog::new();
    let mut options = MqttOptions::new(unique_client_id("alias-re"), proxy.host(), proxy.port());
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(3600));
    let (client, eventloop) =
        TracedClient::with_instrumentation(options, 10, log.instrumentation());
    let mut events = drive(eventloop);
    let mut errors = Vec::new();
    connack(&mut events, &mut errors).await;
    publish(&client, TOPIC, 2, "a").await;
    publish(&client, "", 2, "b").await;

    // Written into the partition, never acknowledged.
    proxy.blackhole();
    client
        .publish_with_properties("", QoS::AtLeastOnce, false, "c", alias(2))
        .await
        .expect("queued");
    next_matching(&mut events, &mut errors, "the write of c", |event| {
        matches!(event, Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0).then_some(())
    })
    .await;
    // A reset breaks the connection that holds c, and the partition ends; rumqttc reconnects
    // and replays c.
    proxy.reset();
    proxy.pass();
    connack(&mut events, &mut errors).await;
    assert!(!errors.is_empty(), "the reset is seen");
    publish(&client, "", 2, "d").await;
    publish(&client, "", 2, "e").await;
    wait_until("c acknowledged", || log.count_of(SpanKind::Producer) == 5).await;

    let mut lines = sub.wait_for_lines(5, DEADLINE);
    lines.sort();
    assert_eq!(
        lines,
        ["a", "b", "c", "d", "e"].map(|payload| format!("{TOPIC} {payload}"))
    );
    let wire: Vec<(usize, String, String, bool)> = proxy
        .publishes()
        .into_iter()
        .map(|p| {
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            (p.connection, p.topic, payload, p.dup)
        })
        .collect();
    let on = |connection: usize| -> Vec<(String, String, bool)> {
        wire.iter()
            .filter(|(c, ..)| *c == connection)
            .map(|(_, topic, payload, dup)| (topic.clone(), payload.clone(), *dup))
            .collect()
    };
    let entry = |topic: &str, payload: &str, dup: bool| (topic.to_owned(), payload.to_owned(), dup);
    assert_eq!(on(0), [entry(TOPIC, "a", false), entry("", "b", false)]);
    assert_eq!(
        on(1),
        [
            // The replay, with its topic and the DUP flag [MQTT-3.3.1-1].
            entry(TOPIC, "c", true),
            // The first publish of the new connection on alias 2 sets it again.
            entry(TOPIC, "d", false),
            entry("", "e", false),
        ]
    );
    // Two CONNECTs reached the broker: no connection was closed for a protocol error.
    assert_eq!(proxy.connects().len(), 2, "{:?}", proxy.connects());
    let spans = log.spans_of(SpanKind::Producer);
    for span in &spans {
        assert_eq!(span.name, format!("publish {TOPIC}"));
        assert_eq!(destination(span).as_deref(), Some(TOPIC));
        assert_success(span);
    }
    assert_unique_attribute_keys(&spans);
}

/// A broker played by the test, over TCP with rumqttc's own packet codec: it answers each
/// CONNECT with a CONNACK and then writes the PUBLISHes scripted for that connection.
struct ScriptedBroker {
    port: u16,
    /// Closes the current connection.
    close: mpsc::UnboundedSender<()>,
}

impl ScriptedBroker {
    fn start(connections: Vec<Vec<Publish>>) -> ScriptedBroker {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let (close, mut closing) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            for publishes in connections {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                if read_connect(&mut stream).await.is_none() {
                    return;
                }
                let mut out = BytesMut::new();
                let connack = ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::Success,
                    properties: None,
                };
                let packets = std::iter::once(Packet::ConnAck(connack))
                    .chain(publishes.into_iter().map(Packet::Publish));
                for packet in packets {
                    packet.write(&mut out, None).expect("encode");
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                // Whatever the client sends is read and dropped until the test closes it.
                let mut sink = [0_u8; 1024];
                loop {
                    tokio::select! {
                        _ = closing.recv() => break,
                        read = stream.read(&mut sink) => match read {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        },
                    }
                }
            }
            // The last connection stays open until the test ends.
            std::future::pending::<()>().await;
        });
        ScriptedBroker { port, close }
    }
}

/// Reads one CONNECT.
async fn read_connect(stream: &mut TcpStream) -> Option<()> {
    let mut buffer = BytesMut::new();
    loop {
        match Packet::read(&mut buffer, None) {
            Ok(Packet::Connect(..)) => return Some(()),
            Ok(_) => return None,
            Err(_) => {
                let mut chunk = [0_u8; 512];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn broker_publish(topic: &str, n: u16, payload: &'static str) -> Publish {
    Publish::new(topic, QoS::AtMostOnce, payload, Some(alias(n)))
}

fn rejected(span: &SpanData) -> Vec<(String, i64)> {
    span.events
        .iter()
        .filter(|event| event.name == "mqtt.topic_alias.rejected")
        .map(|event| {
            let attribute = |key: &str| {
                event
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.clone())
            };
            let reason = attribute("reason").map(|v| v.as_str().into_owned());
            let alias = match attribute("mqtt.topic_alias") {
                Some(opentelemetry::Value::I64(n)) => n,
                _ => -1,
            };
            (reason.unwrap_or_default(), alias)
        })
        .collect()
}

/// Section 3.3.2.3.4 from the receiving side, with a broker that uses aliases: alias 4 set with
/// a topic name, then sent alone, resolves; the application gets the topic in the PUBLISH
/// (rumqttc 0.25.1 resolves it only in a copy of its own), the receive span and the consumed
/// metric name the subscription. On the next connection alias 4 alone is unknown
/// [MQTT-3.3.2-7]: the span has no destination and says why. Aliases the client never allowed,
/// 0 [MQTT-3.3.2-8] and above its Topic Alias Maximum of 10 [MQTT-3.3.2-11], are recorded and
/// not kept.
#[tokio::test(flavor = "multi_thread")]
async fn incoming_aliases_resolve_within_their_connection_from_a_broker_that_sends_them() {
    const TOPIC: &str = "plant/line-3/speed";
    let broker = ScriptedBroker::start(vec![
        vec![broker_publish(TOPIC, 4, "1"), broker_publish("", 4, "2")],
        vec![
            broker_publish("", 4, "3"),
            broker_publish("other/zero", 0, "4"),
            broker_publish("other/above", 11, "5"),
        ],
    ]);
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let instrumentation = telemetry.builder().meter_provider(&reader.provider).build();
    let mut options = MqttOptions::new(unique_client_id("alias-in"), "127.0.0.1", broker.port);
    options.set_topic_alias_max(Some(10));
    let (client, eventloop) = TracedClient::with_instrumentation(options, 10, instrumentation);
    // Remembered for the receive spans; the scripted broker does not answer it.
    client
        .subscribe("plant/#", QoS::AtMostOnce)
        .await
        .expect("queued");
    let mut events = drive(eventloop);
    let mut errors = Vec::new();
    let mut received = Vec::new();
    let mut incoming = |event: &Event| match event {
        Event::Incoming(Packet::Publish(publish)) => Some((
            String::from_utf8_lossy(&publish.topic).into_owned(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        )),
        _ => None,
    };
    for _ in 0..2 {
        received.push(next_matching(&mut events, &mut errors, "a message", &mut incoming).await);
    }
    broker.close.send(()).expect("the broker runs");
    for _ in 0..3 {
        received.push(next_matching(&mut events, &mut errors, "a message", &mut incoming).await);
    }
    let pair = |topic: &str, payload: &str| (topic.to_owned(), payload.to_owned());
    assert_eq!(
        received,
        [
            pair(TOPIC, "1"),
            pair(TOPIC, "2"),
            pair("", "3"),
            pair("other/zero", "4"),
            pair("other/above", "5"),
        ]
    );

    wait_until("five receive spans", || {
        telemetry.spans_of(SpanKind::Client).len() == 5
    })
    .await;
    let spans = telemetry.spans_of(SpanKind::Client);
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "receive plant/#",
            "receive plant/#",
            "receive",
            "receive other/zero",
            "receive other/above"
        ]
    );
    let destinations: Vec<Option<String>> = spans.iter().map(destination).collect();
    assert_eq!(
        destinations,
        [
            Some(TOPIC),
            Some(TOPIC),
            Some(""),
            Some("other/zero"),
            Some("other/above")
        ]
        .map(|topic| topic.map(str::to_owned))
    );
    let problems: Vec<Vec<(String, i64)>> = spans.iter().map(rejected).collect();
    assert_eq!(
        problems,
        [
            vec![],
            vec![],
            vec![("unknown".to_owned(), 4)],
            vec![("zero".to_owned(), 0)],
            vec![("above_maximum".to_owned(), 11)],
        ]
    );
    assert_unique_attribute_keys(&spans);
    let on_template: f64 = reader
        .points(MESSAGING_CLIENT_CONSUMED_MESSAGES)
        .iter()
        .filter(|point| {
            point
                .attribute("messaging.destination.template")
                .is_some_and(|value| value.as_str() == "plant/#")
        })
        .map(|point| point.value)
        .sum();
    assert_eq!(on_template, 2.0);
    assert_eq!(
        errors.len(),
        1,
        "the one connection the broker closed: {errors:?}"
    );
}
