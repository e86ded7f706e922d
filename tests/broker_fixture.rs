//! Proves the mosquitto fixture in `tests/common/broker.rs` against the real broker with
//! plain rumqttc (no OpenTelemetry).

mod common;

use std::fmt::Debug;
use std::time::Duration;

use common::broker::{connected_clients_from_log, pid_alive};
use common::{Broker, unique_client_id};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for every wait on the network; nothing waits with a fixed sleep.
const DEADLINE: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The poll results of a rumqttc event loop driven by a task; dropping it aborts the
/// task, which drops the event loop and closes its socket.
struct Events<E, Er> {
    rx: mpsc::UnboundedReceiver<Result<E, Er>>,
    task: tokio::task::JoinHandle<()>,
}

impl<E, Er> Drop for Events<E, Er> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drives a rumqttc event loop (v4 or v5, given as its `poll`) in a task.
macro_rules! spawn_event_loop {
    ($el:expr) => {{
        let mut el = $el;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await;
                let failed = ev.is_err();
                if tx.send(ev).is_err() {
                    break;
                }
                if failed {
                    // rumqttc reconnects on the next poll without any delay: pace retries.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Events { rx, task }
    }};
}

fn spawn_v4(el: rumqttc::EventLoop) -> V4Events {
    spawn_event_loop!(el)
}

fn spawn_v5(el: rumqttc::v5::EventLoop) -> V5Events {
    spawn_event_loop!(el)
}

/// Waits (bounded by [`DEADLINE`]) for the first event `f` maps to `Some`. Connection
/// errors are printed and skipped (they are expected around broker restarts).
async fn next_event<E: Debug, Er: Debug, T>(
    events: &mut Events<E, Er>,
    what: &str,
    mut f: impl FnMut(&E) -> Option<T>,
) -> T {
    let found = timeout(DEADLINE, async {
        loop {
            match events.rx.recv().await {
                Some(Ok(ev)) => {
                    if let Some(t) = f(&ev) {
                        return t;
                    }
                }
                Some(Err(e)) => eprintln!("{what}: connection error: {e:?}"),
                None => panic!("{what}: event loop task ended"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

mod v4 {
    pub use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
}

mod v5 {
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Packet, PubAckReason, PublishProperties,
    };
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
}

fn v4_options(broker: &Broker, client_id: &str) -> v4::MqttOptions {
    let mut opts = v4::MqttOptions::new(client_id, broker.host(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts
}

fn v5_options(broker: &Broker, client_id: &str) -> v5::MqttOptions {
    let mut opts = v5::MqttOptions::new(client_id, broker.host(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts
}

type V4Events = Events<rumqttc::Event, rumqttc::ConnectionError>;
type V5Events = Events<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

/// Connects a v4 client and waits for its ConnAck; returns it with `session_present`.
async fn connect_v4(opts: v4::MqttOptions) -> (v4::AsyncClient, V4Events, bool) {
    let (client, el) = v4::AsyncClient::new(opts, 16);
    let mut events = spawn_v4(el);
    let session_present = next_event(&mut events, "v4 ConnAck", |ev| match ev {
        v4::Event::Incoming(v4::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, v4::ConnectReturnCode::Success);
            Some(ack.session_present)
        }
        _ => None,
    })
    .await;
    (client, events, session_present)
}

async fn connect_v5(opts: v5::MqttOptions) -> (v5::AsyncClient, V5Events) {
    let (client, el) = v5::AsyncClient::new(opts, 16);
    let mut events = spawn_v5(el);
    next_event(&mut events, "v5 ConnAck", |ev| match ev {
        v5::Event::Incoming(v5::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::Success);
            Some(())
        }
        _ => None,
    })
    .await;
    (client, events)
}

async fn suback_v4(events: &mut V4Events) {
    next_event(events, "v4 SubAck", |ev| {
        matches!(ev, v4::Event::Incoming(v4::Packet::SubAck(_))).then_some(())
    })
    .await
}

async fn suback_v5(events: &mut V5Events) {
    next_event(events, "v5 SubAck", |ev| {
        matches!(ev, v5::Event::Incoming(v5::Packet::SubAck(_))).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_and_v5_clients_publish_and_receive() {
    let broker = Broker::start();

    let (c4, mut e4, _) = connect_v4(v4_options(&broker, &unique_client_id("v4"))).await;
    c4.subscribe("fixture/v4", v4::QoS::AtLeastOnce)
        .await
        .unwrap();
    suback_v4(&mut e4).await;
    c4.publish("fixture/v4", v4::QoS::AtLeastOnce, false, "hello v4")
        .await
        .unwrap();
    let payload = next_event(&mut e4, "v4 Publish", |ev| match ev {
        v4::Event::Incoming(v4::Packet::Publish(p)) if p.topic == "fixture/v4" => {
            Some(p.payload.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(&payload[..], b"hello v4");

    let (c5, mut e5) = connect_v5(v5_options(&broker, &unique_client_id("v5"))).await;
    c5.subscribe("fixture/v5", v5::QoS::AtLeastOnce)
        .await
        .unwrap();
    suback_v5(&mut e5).await;
    // Cross-version: the v4 client publishes, the v5 client receives.
    c4.publish("fixture/v5", v4::QoS::AtLeastOnce, false, "hello v5")
        .await
        .unwrap();
    let payload = next_event(&mut e5, "v5 Publish", |ev| match ev {
        v5::Event::Incoming(v5::Packet::Publish(p)) if p.topic == "fixture/v5" => {
            Some(p.payload.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(&payload[..], b"hello v5");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_count_follows_connects_and_disconnects() {
    let broker = Broker::start();
    assert_eq!(broker.client_count(), 0, "{}", broker.log());

    let id4 = unique_client_id("count-v4");
    let id5 = unique_client_id("count-v5");
    let (c4, mut e4, _) = connect_v4(v4_options(&broker, &id4)).await;
    let (c5, e5) = connect_v5(v5_options(&broker, &id5)).await;
    assert!(
        broker.wait_for_client_count(2, DEADLINE),
        "{}",
        broker.log()
    );
    assert!(broker.is_client_connected(&id4) && broker.is_client_connected(&id5));

    c4.disconnect().await.unwrap();
    next_event(&mut e4, "v4 Disconnect sent", |ev| {
        matches!(ev, v4::Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())
    })
    .await;
    assert!(
        broker.wait_for_client(&id4, false, DEADLINE),
        "{}",
        broker.log()
    );
    assert_eq!(broker.client_count(), 1);

    // An abrupt close (event loop dropped, socket closed without DISCONNECT) counts too.
    drop(e5);
    assert!(
        broker.wait_for_client(&id5, false, DEADLINE),
        "{}",
        broker.log()
    );
    assert_eq!(broker.client_count(), 0, "{}", broker.log());
    drop(c5);
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_v5_user_property() {
    let broker = Broker::start();
    let sub = broker.mosquitto_sub(&[
        "-V",
        "mqttv5",
        "-F",
        "%j",
        "-t",
        "fixture/props",
        "-C",
        "1",
        "-W",
        "10",
    ]);

    let (c5, mut e5) = connect_v5(v5_options(&broker, &unique_client_id("v5-pub"))).await;
    let props = v5::PublishProperties {
        user_properties: vec![("traceparent".into(), TRACEPARENT.into())],
        ..Default::default()
    };
    c5.publish_with_properties(
        "fixture/props",
        v5::QoS::AtLeastOnce,
        false,
        "payload",
        props,
    )
    .await
    .unwrap();
    next_event(&mut e5, "v5 PubAck", |ev| match ev {
        v5::Event::Incoming(v5::Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;

    let out = sub.wait_timeout(DEADLINE);
    println!("mosquitto_sub -F '%j' printed: {:?}", out.lines);
    assert_eq!(out.lines.len(), 1, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.lines[0]).unwrap();
    assert_eq!(json["topic"], "fixture/props");
    assert_eq!(json["payload"], "payload");
    assert_eq!(
        json["properties"]["user-properties"]["traceparent"],
        TRACEPARENT
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_user_property_reaches_rumqttc_v5() {
    let broker = Broker::start();
    let (c5, mut e5) = connect_v5(v5_options(&broker, &unique_client_id("v5-sub"))).await;
    c5.subscribe("fixture/from-cli", v5::QoS::AtLeastOnce)
        .await
        .unwrap();
    suback_v5(&mut e5).await;

    let out = broker.mosquitto_pub(&[
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "fixture/from-cli",
        "-m",
        "from cli",
        "-D",
        "publish",
        "user-property",
        "traceparent",
        TRACEPARENT,
    ]);
    assert!(out.status.success(), "{out:?}");

    let publish = next_event(&mut e5, "v5 Publish", |ev| match ev {
        v5::Event::Incoming(v5::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&publish.topic[..], b"fixture/from-cli");
    assert_eq!(&publish.payload[..], b"from cli");
    let props = publish.properties.expect("publish properties");
    assert_eq!(
        props.user_properties,
        vec![("traceparent".to_string(), TRACEPARENT.to_string())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_deny_gives_not_authorized_puback() {
    let broker = Broker::builder().acl(&["fixture/denied"]).start();
    let (c5, mut e5) = connect_v5(v5_options(&broker, &unique_client_id("v5-acl"))).await;

    c5.publish("fixture/denied", v5::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let reason = next_event(&mut e5, "PubAck for denied topic", |ev| match ev {
        v5::Event::Incoming(v5::Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, v5::PubAckReason::NotAuthorized);

    // Allowed topic, nobody subscribed: mosquitto answers 0x10 NoMatchingSubscribers.
    c5.publish("fixture/allowed", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let reason = next_event(&mut e5, "PubAck for allowed topic", |ev| match ev {
        v5::Event::Incoming(v5::Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, v5::PubAckReason::NoMatchingSubscribers);

    // The independent client sees the same: exit 0, a warning on stderr.
    let out = broker.mosquitto_pub(&["-V", "mqttv5", "-q", "1", "-t", "fixture/denied", "-m", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Not authorized"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_with_persistence_keeps_the_session() {
    let mut broker = Broker::builder().persistence(true).start();
    let port = broker.port();
    let first_pid = broker.pid().unwrap();

    let mut opts = v4_options(&broker, &unique_client_id("persistent"));
    opts.set_clean_session(false);
    let (c4, mut e4, session_present) = connect_v4(opts).await;
    assert!(!session_present);
    c4.subscribe("fixture/persist", v4::QoS::AtLeastOnce)
        .await
        .unwrap();
    suback_v4(&mut e4).await;

    broker.restart();
    assert_eq!(broker.port(), port);
    assert_ne!(broker.pid().unwrap(), first_pid);

    // rumqttc reports the dropped connection as an error, then reconnects on the next poll.
    let session_present = next_event(&mut e4, "ConnAck after restart", |ev| match ev {
        v4::Event::Incoming(v4::Packet::ConnAck(ack)) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(session_present, "{}", broker.log());

    // The subscription survived: no new SUBSCRIBE, yet the message arrives.
    let out = broker.mosquitto_pub(&["-q", "1", "-t", "fixture/persist", "-m", "after"]);
    assert!(out.status.success(), "{out:?}");
    let payload = next_event(&mut e4, "Publish after restart", |ev| match ev {
        v4::Event::Incoming(v4::Packet::Publish(p)) => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_autosave_keeps_the_session() {
    let mut broker = Broker::builder().persistence(true).start();
    let client_id = unique_client_id("crash");
    let mut opts = v4_options(&broker, &client_id);
    opts.set_clean_session(false);
    let (c4, mut e4, _) = connect_v4(opts).await;
    c4.subscribe("fixture/crash", v4::QoS::AtLeastOnce)
        .await
        .unwrap();
    suback_v4(&mut e4).await;
    // autosave_on_changes + autosave_interval 1: a save follows the subscription.
    assert!(
        broker.wait_for_log_after(
            &format!("Sending SUBACK to {client_id}"),
            "Saving in-memory database",
            DEADLINE
        ),
        "{}",
        broker.log()
    );

    broker.kill();
    broker.start_again();
    let session_present = next_event(&mut e4, "ConnAck after crash", |ev| match ev {
        v4::Event::Incoming(v4::Packet::ConnAck(ack)) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(session_present, "{}", broker.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn password_users_and_anonymous_refusal() {
    let broker = Broker::builder()
        .password("alice", "secret")
        .allow_anonymous(false)
        .start();

    let (_c, el) = v4::AsyncClient::new(v4_options(&broker, &unique_client_id("anon")), 16);
    let mut events = spawn_v4(el);
    let err = timeout(DEADLINE, events.rx.recv())
        .await
        .expect("anonymous connect result")
        .expect("event")
        .expect_err("anonymous connect must be refused");
    assert!(
        matches!(
            err,
            rumqttc::ConnectionError::ConnectionRefused(v4::ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );

    let mut opts = v4_options(&broker, &unique_client_id("alice"));
    opts.set_credentials("alice", "secret");
    connect_v4(opts).await;

    let out = broker.mosquitto_pub(&["-u", "alice", "-P", "secret", "-t", "x", "-m", "y"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn stop_kill_start_again_and_drop() {
    let mut broker = Broker::start();
    let port = broker.port();
    let pid = broker.pid().unwrap();
    assert!(pid_alive(pid));

    broker.kill();
    assert!(!pid_alive(pid));
    assert!(std::net::TcpStream::connect(broker.addr()).is_err());
    broker.start_again();
    assert_eq!(broker.port(), port);
    assert!(std::net::TcpStream::connect(broker.addr()).is_ok());

    broker.stop();
    assert!(broker.log().contains("terminating"), "{}", broker.log());
    broker.start_again();

    let pid = broker.pid().unwrap();
    let dir = broker.dir().to_path_buf();
    assert!(pid_alive(pid) && dir.exists());
    drop(broker);
    assert!(!pid_alive(pid), "mosquitto {pid} survived the drop");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn mosquitto_sub_helper_collects_lines() {
    let broker = Broker::start();
    let sub = broker.mosquitto_sub(&["-t", "fixture/cli", "-C", "2", "-W", "10"]);
    for m in ["one", "two"] {
        let out = broker.mosquitto_pub(&["-t", "fixture/cli", "-m", m]);
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(sub.wait(), vec!["one", "two"]);
}

#[test]
fn client_log_parser() {
    let log = "\
1795671647: mosquitto version 2.0.11 starting
1795671647: New connection from 127.0.0.1:44160 on port 18883.
1795671647: Client <unknown> closed its connection.
1795671647: New client connected from 127.0.0.1:44174 as same (p2, c1, k60).
1795671647: New client connected from 127.0.0.1:44175 as a b (p5, c1, k60, u'alice').
1795671647: New client connected from 127.0.0.1:44176 as gone (p2, c1, k60).
1795671647: New client connected from 127.0.0.1:44177 as timeout (p2, c1, k60).
1795671647: New client connected from 127.0.0.1:44179 as sock (p2, c1, k60).
1795671648: Client same already connected, closing old connection.
1795671648: New client connected from 127.0.0.1:44178 as same (p2, c1, k60).
1795671648: Client gone disconnected.
1795671648: Client timeout has exceeded timeout, disconnecting.
1795671648: Socket error on client sock, disconnecting.
";
    let clients: Vec<String> = connected_clients_from_log(log).into_iter().collect();
    assert_eq!(clients, vec!["a b", "same"]);
    let restarted = format!("{log}1795671650: mosquitto version 2.0.11 starting\n");
    assert!(connected_clients_from_log(&restarted).is_empty());
}
