//! Unit tests of the generic traced event loop over the scripted fake: holding never-written
//! requests, feeding them back within the in-flight window, collision recovery, resending after a
//! session loss, and a refused CONNACK. The broker tests (`tests/reconnect.rs`, `tests/resend.rs`,
//! `tests/faults.rs`) check the same against mosquitto.

use bytes::Bytes;
use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use rumqttc::Outgoing;

use super::client::Client;
use super::event_loop::EventLoop;
use super::fake::{
    self, Fake, FakeEvent, FakeEventLoop, FakeOptions, FakePublish, FakeRequest, Setup, written,
};
use super::protocol::PublishRequest;
use crate::semconv::{ERROR_TYPE, MESSAGING_MQTT_DUPLICATE, MqttQoS};

/// A connected fake client with in-flight limit `limit`.
async fn connected(limit: u16) -> Setup {
    let options = FakeOptions {
        limit,
        manual_acks: false,
    };
    fake::connected(options, true).await
}

/// A QoS 1 publish whose topic and payload are `name`.
async fn publish(client: &Client<Fake>, name: &'static str) {
    let request = PublishRequest::new(
        name.to_owned(),
        MqttQoS::AtLeastOnce,
        false,
        Bytes::from_static(name.as_bytes()),
    );
    assert!(client.publish(request).await.is_ok());
}

/// Polls `n` times; every poll must succeed.
async fn poll_ok(eventloop: &mut EventLoop<Fake>, n: usize) {
    for step in 0..n {
        if let Err(error) = eventloop.poll().await {
            panic!("poll {step} failed: {error}");
        }
    }
}

/// The ended publish spans, in the order they ended: (name, error.type).
fn ended(exporter: &InMemorySpanExporter) -> Vec<(String, Option<String>)> {
    let spans: Vec<SpanData> = exporter.get_finished_spans().unwrap_or_default();
    spans
        .iter()
        .map(|span| {
            let error = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == ERROR_TYPE)
                .map(|kv| kv.value.to_string());
            assert_eq!(error.is_some(), matches!(span.status, Status::Error { .. }));
            (span.name.to_string(), error)
        })
        .collect()
}

/// Each ended span's `messaging.mqtt.duplicate`, checking that no span has a key twice (OTLP
/// requires unique attribute keys).
fn duplicate_flags(exporter: &InMemorySpanExporter) -> Vec<(String, bool)> {
    let spans: Vec<SpanData> = exporter.get_finished_spans().unwrap_or_default();
    spans
        .iter()
        .map(|span| {
            let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
            let all = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), all, "a key repeats on {}", span.name);
            let duplicate = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == MESSAGING_MQTT_DUPLICATE)
                .map(|kv| kv.value == opentelemetry::Value::Bool(true));
            (
                span.name.to_string(),
                duplicate.unwrap_or_else(|| panic!("no DUP on {}", span.name)),
            )
        })
        .collect()
}

fn ok(names: &[&str]) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|name| (format!("publish {name}"), None))
        .collect()
}

/// The connection breaks before rumqttc took any request; after the reconnect they are fed back
/// one publish at a time and only while the in-flight window has room, instead of all at once
/// (rumqttc's own replay of `pending` ignores its in-flight limit, see `crate::reconnect`).
#[tokio::test]
async fn never_written_requests_are_held_and_fed_within_the_window() {
    let Setup {
        client,
        mut eventloop,
        exporter,
        _provider,
    } = connected(2).await;
    for name in ["a", "b", "c", "d"] {
        publish(&client, name).await;
    }
    eventloop.inner_mut().then(FakeEventLoop::break_connection);
    assert!(eventloop.poll().await.is_err());
    assert!(eventloop.inner().pending.is_empty(), "held, not in pending");
    eventloop
        .inner_mut()
        .then(|el| {
            assert!(el.pending.is_empty(), "nothing is fed while connecting");
            Ok(FakeEvent::ConnAck {
                session_present: true,
            })
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["a@0"]);
            el.write()
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["b@0"]);
            el.write()
        })
        .then(|el| {
            assert!(el.pending.is_empty(), "the window of 2 is full");
            el.puback(1)
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["c@0"]);
            el.write()
        })
        .then(|el| el.puback(2))
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["d@0"]);
            el.write()
        })
        .then(|el| el.puback(3))
        .then(|el| el.puback(4));
    poll_ok(&mut eventloop, 9).await;
    assert_eq!(eventloop.open_publish_spans(), 0);
    assert_eq!(ended(&exporter), ok(&["a", "b", "c", "d"]));
}

/// A publish parked on a packet-id collision blocks feeding: rumqttc keeps one collision slot
/// only, and a second collision would overwrite (lose) the first.
#[tokio::test]
async fn nothing_is_fed_while_a_publish_is_parked_on_a_collision() {
    let Setup {
        client,
        mut eventloop,
        exporter,
        _provider,
    } = connected(10).await;
    publish(&client, "a").await;
    eventloop.inner_mut().then(FakeEventLoop::break_connection);
    assert!(eventloop.poll().await.is_err());
    eventloop
        .inner_mut()
        .then(|el| {
            el.collision = Some(FakePublish {
                topic: "x".to_owned(),
                qos: MqttQoS::AtLeastOnce,
                pkid: 9,
                dup: false,
                payload: Bytes::from_static(b"x"),
            });
            Ok(FakeEvent::ConnAck {
                session_present: true,
            })
        })
        .then(|el| {
            assert!(el.pending.is_empty(), "a collision is parked");
            el.collision = None;
            Ok(FakeEvent::Outgoing(Outgoing::PingReq))
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["a@0"]);
            el.write()
        })
        .then(|el| el.puback(1));
    poll_ok(&mut eventloop, 4).await;
    assert_eq!(ended(&exporter), ok(&["a"]));
}

/// Written QoS 1 publishes, one parked on a collision and one never written, when the connection
/// breaks: rumqttc keeps the written ones in `pending`, the traced event loop holds the other.
async fn broken_with_written_parked_and_unsent(limit: u16) -> Setup {
    let setup = connected(limit).await;
    for name in ["a", "b", "p", "c"] {
        publish(&setup.client, name).await;
    }
    let mut eventloop = setup.eventloop;
    eventloop
        .inner_mut()
        .then(FakeEventLoop::write)
        .then(FakeEventLoop::write)
        .then(|el| {
            let Some(FakeRequest::Publish(mut parked)) =
                el.channel.lock().ok().and_then(|mut c| c.pop_front())
            else {
                panic!("p is next in the channel");
            };
            parked.pkid = 1;
            el.collision = Some(parked);
            Ok(FakeEvent::Outgoing(Outgoing::AwaitAck(1)))
        })
        .then(|el| {
            el.pending.extend([written("a", 1), written("b", 2)]);
            el.break_connection()
        });
    poll_ok(&mut eventloop, 3).await;
    assert!(eventloop.poll().await.is_err());
    // rumqttc replays them with their packet ids; the DUP flag is set ([MQTT-3.3.1-1]).
    assert_eq!(eventloop.inner().pending_payloads(), ["a@1d", "b@2d"]);
    Setup { eventloop, ..setup }
}

/// The broker lost the session (CONNACK with `session_present = false`) and rumqttc cleared
/// `pending`: the written publishes and the parked one are put back with fresh packet ids, in
/// their order, before the never-written one, and the collision slot is emptied (rumqtt issue
/// 1056: a parked publish would otherwise wait forever for an acknowledgement). The written ones
/// go out with the DUP flag and their spans record `messaging.mqtt.duplicate = true`; the
/// others were never sent, so they are first deliveries.
#[tokio::test]
async fn after_a_session_loss_written_and_parked_publishes_are_resent_in_order() {
    let Setup {
        client: _client,
        mut eventloop,
        exporter,
        _provider,
    } = broken_with_written_parked_and_unsent(2).await;
    eventloop
        .inner_mut()
        .then(|el| {
            el.pending.clear();
            Ok(FakeEvent::ConnAck {
                session_present: false,
            })
        })
        .then(|el| {
            assert!(el.collision.is_none(), "the parked publish was taken out");
            assert_eq!(el.pending_payloads(), ["a@0d"], "fresh packet id, DUP set");
            el.write()
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["b@0d"]);
            el.write()
        })
        .then(|el| el.puback(3))
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["p@0"]);
            el.write()
        })
        .then(|el| el.puback(4))
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["c@0"]);
            el.write()
        })
        .then(|el| el.puback(5))
        .then(|el| el.puback(6));
    poll_ok(&mut eventloop, 9).await;
    assert_eq!(eventloop.open_publish_spans(), 0);
    assert_eq!(ended(&exporter), ok(&["a", "b", "p", "c"]));
    let flags: Vec<(String, bool)> = [("a", true), ("b", true), ("p", false), ("c", false)]
        .iter()
        .map(|(name, dup)| (format!("publish {name}"), *dup))
        .collect();
    assert_eq!(duplicate_flags(&exporter), flags);
}

/// With resending off, the publishes rumqttc dropped end as `session_lost`; the one that was
/// never written is still sent (sending it cannot duplicate anything).
#[tokio::test]
async fn without_resend_dropped_publishes_end_as_session_lost() {
    let Setup {
        client: _client,
        mut eventloop,
        exporter,
        _provider,
    } = broken_with_written_parked_and_unsent(2).await;
    eventloop.set_resend_after_session_loss(false);
    eventloop
        .inner_mut()
        .then(|el| {
            el.pending.clear();
            Ok(FakeEvent::ConnAck {
                session_present: false,
            })
        })
        .then(|el| {
            assert!(el.collision.is_none());
            assert_eq!(el.pending_payloads(), ["c@0"]);
            el.write()
        })
        .then(|el| el.puback(3));
    poll_ok(&mut eventloop, 3).await;
    let lost = Some("session_lost".to_owned());
    assert_eq!(
        ended(&exporter),
        [
            ("publish a".to_owned(), lost.clone()),
            ("publish b".to_owned(), lost.clone()),
            ("publish p".to_owned(), lost),
            ("publish c".to_owned(), None),
        ]
    );
}

/// A connection attempt refused after rumqttc cleared `pending` for a session-less CONNACK
/// started no session: everything is kept for the next attempt.
#[tokio::test]
async fn a_refused_connection_attempt_keeps_pending() {
    let Setup {
        client: _client,
        mut eventloop,
        _provider,
        ..
    } = broken_with_written_parked_and_unsent(2).await;
    eventloop.inner_mut().then(|el| {
        el.pending.clear();
        Err(super::fake::FakeError("not_authorized"))
    });
    assert!(eventloop.poll().await.is_err());
    assert_eq!(eventloop.inner().pending_payloads(), ["a@1d", "b@2d"]);
    assert_eq!(eventloop.open_publish_spans(), 4);
}

/// A publish fed back but not yet written when the connection breaks again is older than
/// everything else held, and stays first.
#[tokio::test]
async fn a_fed_publish_that_was_not_written_stays_first() {
    let Setup {
        client,
        mut eventloop,
        exporter,
        _provider,
    } = connected(10).await;
    publish(&client, "a").await;
    publish(&client, "c").await;
    eventloop.inner_mut().then(FakeEventLoop::break_connection);
    assert!(eventloop.poll().await.is_err());
    eventloop.inner_mut().then(|_| {
        Ok(FakeEvent::ConnAck {
            session_present: true,
        })
    });
    poll_ok(&mut eventloop, 1).await;
    publish(&client, "b").await;
    eventloop.inner_mut().then(|el| {
        assert_eq!(el.pending_payloads(), ["a@0"]);
        el.break_connection()
    });
    assert!(eventloop.poll().await.is_err());
    eventloop
        .inner_mut()
        .then(|_| {
            Ok(FakeEvent::ConnAck {
                session_present: true,
            })
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["a@0"]);
            el.write()
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["c@0"]);
            el.write()
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["b@0"]);
            el.write()
        })
        .then(|el| el.puback(1))
        .then(|el| el.puback(2))
        .then(|el| el.puback(3));
    poll_ok(&mut eventloop, 7).await;
    assert_eq!(ended(&exporter), ok(&["a", "c", "b"]));
}

/// rumqttc replays written publishes and releases (PUBREL) itself, with their packet ids: they
/// stay in `pending`. A QoS 2 publish ends at PUBCOMP, not at PUBREC; an incoming PUBLISH gets a
/// receive span and a `Delivery`.
#[tokio::test]
async fn releases_stay_with_rumqttc_and_qos2_ends_at_pubcomp() {
    let Setup {
        client,
        mut eventloop,
        exporter,
        _provider,
    } = connected(10).await;
    let request = PublishRequest::new(
        "q2".to_owned(),
        MqttQoS::ExactlyOnce,
        false,
        Bytes::from_static(b"q2"),
    );
    assert!(client.publish(request).await.is_ok());
    eventloop
        .inner_mut()
        .then(FakeEventLoop::write)
        .then(|_| Ok(FakeEvent::PubRec(1)))
        .then(|el| {
            el.pending.extend([FakeRequest::PubRel(1), written("w", 2)]);
            el.break_connection()
        });
    poll_ok(&mut eventloop, 2).await;
    assert!(
        ended(&exporter).is_empty(),
        "PUBREC does not end a QoS 2 publish"
    );
    assert!(eventloop.poll().await.is_err());
    assert_eq!(eventloop.inner().pending_payloads(), ["PubRel(1)", "w@2d"]);
    eventloop
        .inner_mut()
        .then(|_| {
            Ok(FakeEvent::ConnAck {
                session_present: true,
            })
        })
        .then(|el| {
            el.pending.clear();
            Ok(FakeEvent::PubComp(1))
        })
        .then(|_| {
            Ok(FakeEvent::Publish(FakePublish {
                topic: "in".to_owned(),
                qos: MqttQoS::AtMostOnce,
                pkid: 0,
                dup: false,
                payload: Bytes::from_static(b"hello"),
            }))
        });
    poll_ok(&mut eventloop, 2).await;
    assert_eq!(ended(&exporter), ok(&["q2"]));
    let delivered = eventloop.poll_traced().await;
    let Ok((FakeEvent::Publish(_), Some(delivery))) = delivered else {
        panic!("an incoming PUBLISH comes with its delivery");
    };
    assert!(
        delivery.creation_context().is_none(),
        "it carried no context"
    );
    let names: Vec<String> = ended(&exporter).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["publish q2", "receive in"]);
}

/// After a reconnect with the session, rumqttc first replays what it had written; those replays
/// fill the in-flight window before any held publish is fed, or the fed one would take a packet
/// id still in use by a replay and be parked on a collision.
#[tokio::test]
async fn replays_in_pending_take_their_places_in_the_window() {
    let Setup {
        client,
        mut eventloop,
        exporter,
        _provider,
    } = connected(2).await;
    for name in ["a", "b", "c"] {
        publish(&client, name).await;
    }
    eventloop
        .inner_mut()
        .then(FakeEventLoop::write)
        .then(FakeEventLoop::write)
        .then(|el| {
            el.pending.extend([written("a", 1), written("b", 2)]);
            el.break_connection()
        });
    poll_ok(&mut eventloop, 2).await;
    assert!(eventloop.poll().await.is_err());
    eventloop
        .inner_mut()
        .then(|_| {
            Ok(FakeEvent::ConnAck {
                session_present: true,
            })
        })
        .then(|el| {
            assert_eq!(
                el.pending_payloads(),
                ["a@1d", "b@2d"],
                "c waits: the window is full"
            );
            el.write()
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["b@2d"]);
            el.write()
        })
        .then(|el| {
            assert!(el.pending.is_empty());
            el.puback(1)
        })
        .then(|el| {
            assert_eq!(el.pending_payloads(), ["c@0"]);
            el.write()
        })
        .then(|el| el.puback(2))
        .then(|el| el.puback(3));
    poll_ok(&mut eventloop, 7).await;
    assert_eq!(ended(&exporter), ok(&["a", "b", "c"]));
    let flags: Vec<(String, bool)> = [("a", true), ("b", true), ("c", false)]
        .iter()
        .map(|(name, dup)| (format!("publish {name}"), *dup))
        .collect();
    assert_eq!(duplicate_flags(&exporter), flags);
}

/// Topic Aliases follow rumqttc 5's order of events: the CONNACK of a new connection comes
/// after the events left from the old one. The broker's aliases of the old connection resolve
/// the messages of the old connection still queued, and end [MQTT-3.3.2-7] when the new CONNACK
/// is handed out; the broker's Topic Alias Maximum is taken from the CONNACK as soon as the
/// connection is made.
#[tokio::test]
async fn incoming_aliases_end_when_the_next_connack_is_handed_out() {
    use super::aliases::{Refusal, Unresolved};
    let Setup {
        client,
        mut eventloop,
        ..
    } = connected(10).await;
    let aliases = &client.core().telemetry.aliases;
    assert_eq!(
        aliases.send("t", 6),
        Err(Refusal::AliasAboveMaximum {
            alias: 6,
            maximum: 5
        })
    );
    assert_eq!(
        aliases.receive(&mut Bytes::from_static(b"old/topic"), 3),
        Ok(())
    );
    let resolves = || {
        let mut topic = Bytes::new();
        aliases.receive(&mut topic, 3).map(|()| topic)
    };
    let old = FakePublish {
        topic: "old/topic".to_owned(),
        qos: MqttQoS::AtMostOnce,
        pkid: 0,
        dup: false,
        payload: Bytes::from_static(b"late"),
    };
    eventloop.inner_mut().then(FakeEventLoop::break_connection);
    eventloop.inner_mut().then(move |el| {
        el.events.push_back(FakeEvent::ConnAck {
            session_present: true,
        });
        Ok(FakeEvent::Publish(old))
    });
    eventloop.inner_mut().then(|el| {
        el.events
            .pop_front()
            .ok_or(super::fake::FakeError("no CONNACK queued"))
    });
    assert!(eventloop.poll().await.is_err());
    assert!(matches!(eventloop.poll().await, Ok(FakeEvent::Publish(_))));
    assert_eq!(resolves(), Ok(Bytes::from_static(b"old/topic")));
    assert!(matches!(
        eventloop.poll().await,
        Ok(FakeEvent::ConnAck { .. })
    ));
    assert_eq!(resolves(), Err(Unresolved::Unknown));
}
