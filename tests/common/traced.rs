//! One interface over the MQTT 3.1.1 (`v4`) and MQTT 5 (`v5`) traced clients, so that a test of
//! behaviour both versions share (correlation, reconnects) is written once and run for each.
//!
//! [`Ev`] is the part of rumqttc's `Event` these tests look at, in version-independent form;
//! [`TracedLoop`] polls a traced event loop into it; [`TracedPublish`] publishes and subscribes.
//! [`Config`] holds the client options the tests vary. [`freeze`] and [`thaw`] stop and resume
//! the broker process (SIGSTOP / SIGCONT), so that it holds every acknowledgement without closing
//! any connection.

use std::fmt::Debug;
use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc_opentelemetry::{Delivery, Instrumentation};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::broker::{Broker, unique_client_id};

/// Bound on any single wait for the network in these tests. Nothing waits with a fixed sleep.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The pause after a connection error: rumqttc reconnects on the next poll without any delay.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// What a poll returned, in the terms both MQTT versions share.
#[derive(Debug, Clone)]
pub enum Ev {
    ConnAck {
        session_present: bool,
    },
    /// `Outgoing::Publish(pkid)`: a PUBLISH was written.
    Written(u16),
    /// `Outgoing::AwaitAck(pkid)`: a publish collided with a pkid in use and was parked.
    AwaitAck(u16),
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    SubAck,
    /// An incoming PUBLISH, with what the traced event loop says about it.
    Message {
        topic: String,
        payload: Bytes,
        dup: bool,
        delivery: Option<Delivery>,
    },
    /// Anything else (pings, outgoing acks, ...).
    Other,
}

/// The options a test varies.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Outgoing in-flight limit: `set_inflight` (v4), `set_outgoing_inflight_upper_limit` (v5).
    pub inflight: Option<u16>,
    /// A session that outlives the connection: `clean_session(false)` (v4), or
    /// `clean_start(false)` with a one-hour session expiry (v5).
    pub persistent: bool,
    pub keep_alive: Option<Duration>,
    /// The client id; a unique one when `None`.
    pub client_id: Option<String>,
    /// Connect to this port on 127.0.0.1 instead of the broker's (a fault proxy in between).
    pub port: Option<u16>,
    /// `TracedEventLoop::set_resend_after_session_loss`; the crate's default (on) when `None`.
    pub resend_after_session_loss: Option<bool>,
}

/// A traced event loop of either MQTT version.
pub trait TracedLoop: Send + 'static {
    /// `poll_traced`, translated.
    fn next(&mut self) -> impl Future<Output = Result<Ev, String>> + Send;
    /// `open_publish_spans`.
    fn open_spans(&self) -> usize;
    /// Publishes in rumqttc's `pending` queue (kept across a reconnect).
    fn pending_publishes(&self) -> usize;
}

/// A traced client of either MQTT version.
pub trait TracedPublish: Clone + Send + Sync + 'static {
    type Loop: TracedLoop;
    /// `TracedClient::with_instrumentation` with the options of `config`.
    fn connect(
        broker: &Broker,
        config: &Config,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> (Self, Self::Loop);
    /// Publishes (QoS 0, 1 or 2); panics when the request cannot be queued.
    fn publish(&self, topic: String, qos: u8, payload: Bytes) -> impl Future<Output = ()> + Send;
    /// Publishes; returns whether the request could be queued.
    fn try_publish_async(
        &self,
        topic: String,
        qos: u8,
        payload: Bytes,
    ) -> impl Future<Output = bool> + Send;
    /// Subscribes (QoS 0, 1 or 2); panics when the request cannot be queued.
    fn subscribe(&self, filter: &str, qos: u8) -> impl Future<Output = ()> + Send;
}

pub mod v4 {
    use super::*;
    use rumqttc::{Event, MqttOptions, Packet, QoS, Request};
    pub use rumqttc_opentelemetry::v4::{TracedClient, TracedEventLoop};

    pub fn qos(level: u8) -> QoS {
        rumqttc::qos(level).expect("QoS 0, 1 or 2")
    }

    pub fn options(broker: &Broker, config: &Config) -> MqttOptions {
        let id = config
            .client_id
            .clone()
            .unwrap_or_else(|| unique_client_id("v4"));
        let port = config.port.unwrap_or(broker.port());
        let mut options = MqttOptions::new(id, broker.host(), port);
        if let Some(inflight) = config.inflight {
            options.set_inflight(inflight);
        }
        if config.persistent {
            options.set_clean_session(false);
        }
        if let Some(keep_alive) = config.keep_alive {
            options.set_keep_alive(keep_alive);
        }
        options
    }

    pub fn translate(event: Event, delivery: Option<Delivery>) -> Ev {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => Ev::ConnAck {
                session_present: ack.session_present,
            },
            Event::Incoming(Packet::PubAck(ack)) => Ev::PubAck(ack.pkid),
            Event::Incoming(Packet::PubRec(rec)) => Ev::PubRec(rec.pkid),
            Event::Incoming(Packet::PubComp(comp)) => Ev::PubComp(comp.pkid),
            Event::Incoming(Packet::SubAck(_)) => Ev::SubAck,
            Event::Incoming(Packet::Publish(publish)) => Ev::Message {
                topic: publish.topic,
                payload: publish.payload,
                dup: publish.dup,
                delivery,
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Written(pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ev::AwaitAck(pkid),
            _ => Ev::Other,
        }
    }

    impl TracedLoop for TracedEventLoop {
        async fn next(&mut self) -> Result<Ev, String> {
            match self.poll_traced().await {
                Ok((event, delivery)) => Ok(translate(event, delivery)),
                Err(error) => Err(format!("{error:?}")),
            }
        }

        fn open_spans(&self) -> usize {
            self.open_publish_spans()
        }

        fn pending_publishes(&self) -> usize {
            self.inner()
                .pending
                .iter()
                .filter(|request| matches!(request, Request::Publish(_)))
                .count()
        }
    }

    impl TracedPublish for TracedClient {
        type Loop = TracedEventLoop;

        fn connect(
            broker: &Broker,
            config: &Config,
            cap: usize,
            instrumentation: Instrumentation,
        ) -> (Self, Self::Loop) {
            let (client, mut eventloop) =
                TracedClient::with_instrumentation(options(broker, config), cap, instrumentation);
            if let Some(resend) = config.resend_after_session_loss {
                eventloop.set_resend_after_session_loss(resend);
            }
            (client, eventloop)
        }

        async fn publish(&self, topic: String, level: u8, payload: Bytes) {
            TracedClient::publish_bytes(self, topic, qos(level), false, payload)
                .await
                .expect("publish request queued");
        }

        async fn try_publish_async(&self, topic: String, level: u8, payload: Bytes) -> bool {
            TracedClient::publish_bytes(self, topic, qos(level), false, payload)
                .await
                .is_ok()
        }

        async fn subscribe(&self, filter: &str, level: u8) {
            TracedClient::subscribe(self, filter, qos(level))
                .await
                .expect("subscribe request queued");
        }
    }
}

pub mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event, MqttOptions, Request};
    pub use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};

    pub fn qos(level: u8) -> QoS {
        rumqttc::v5::mqttbytes::qos(level).expect("QoS 0, 1 or 2")
    }

    pub fn options(broker: &Broker, config: &Config) -> MqttOptions {
        let id = config
            .client_id
            .clone()
            .unwrap_or_else(|| unique_client_id("v5"));
        let port = config.port.unwrap_or(broker.port());
        let mut options = MqttOptions::new(id, broker.host(), port);
        if let Some(inflight) = config.inflight {
            options.set_outgoing_inflight_upper_limit(inflight);
        }
        if config.persistent {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(3600));
        }
        if let Some(keep_alive) = config.keep_alive {
            options.set_keep_alive(keep_alive);
        }
        options
    }

    pub fn translate(event: Event, delivery: Option<Delivery>) -> Ev {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => Ev::ConnAck {
                session_present: ack.session_present,
            },
            Event::Incoming(Packet::PubAck(ack)) => Ev::PubAck(ack.pkid),
            Event::Incoming(Packet::PubRec(rec)) => Ev::PubRec(rec.pkid),
            Event::Incoming(Packet::PubComp(comp)) => Ev::PubComp(comp.pkid),
            Event::Incoming(Packet::SubAck(_)) => Ev::SubAck,
            Event::Incoming(Packet::Publish(publish)) => Ev::Message {
                topic: String::from_utf8(publish.topic.to_vec()).expect("UTF-8 topic"),
                payload: publish.payload,
                dup: publish.dup,
                delivery,
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Written(pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ev::AwaitAck(pkid),
            _ => Ev::Other,
        }
    }

    impl TracedLoop for TracedEventLoop {
        async fn next(&mut self) -> Result<Ev, String> {
            match self.poll_traced().await {
                Ok((event, delivery)) => Ok(translate(event, delivery)),
                Err(error) => Err(format!("{error:?}")),
            }
        }

        fn open_spans(&self) -> usize {
            self.open_publish_spans()
        }

        fn pending_publishes(&self) -> usize {
            self.inner()
                .pending
                .iter()
                .filter(|request| matches!(request, Request::Publish(_)))
                .count()
        }
    }

    impl TracedPublish for TracedClient {
        type Loop = TracedEventLoop;

        fn connect(
            broker: &Broker,
            config: &Config,
            cap: usize,
            instrumentation: Instrumentation,
        ) -> (Self, Self::Loop) {
            let (client, mut eventloop) =
                TracedClient::with_instrumentation(options(broker, config), cap, instrumentation);
            if let Some(resend) = config.resend_after_session_loss {
                eventloop.set_resend_after_session_loss(resend);
            }
            (client, eventloop)
        }

        async fn publish(&self, topic: String, level: u8, payload: Bytes) {
            TracedClient::publish_bytes(self, topic, qos(level), false, payload)
                .await
                .expect("publish request queued");
        }

        async fn try_publish_async(&self, topic: String, level: u8, payload: Bytes) -> bool {
            TracedClient::publish_bytes(self, topic, qos(level), false, payload)
                .await
                .is_ok()
        }

        async fn subscribe(&self, filter: &str, level: u8) {
            TracedClient::subscribe(self, filter, qos(level))
                .await
                .expect("subscribe request queued");
        }
    }
}

/// Aborts a spawned task when dropped, so a failing test does not leave it running.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An event loop polled in a task by [`drive`].
pub struct Driven {
    /// Every event, in order.
    pub events: mpsc::UnboundedReceiver<Ev>,
    /// Every connection error, with the time the poll returned it.
    pub errors: Arc<Mutex<Vec<(Instant, String)>>>,
    pub task: AbortOnDrop<()>,
}

impl Driven {
    /// Connection errors seen so far.
    pub fn error_count(&self) -> usize {
        self.errors.lock().unwrap().len()
    }

    /// The connection errors seen so far.
    pub fn errors(&self) -> Vec<(Instant, String)> {
        self.errors.lock().unwrap().clone()
    }
}

/// Drives an event loop in a task through connection errors (pausing [`RECONNECT_PAUSE`] after
/// each, since rumqttc reconnects on the next poll without delay), forwarding every event and
/// recording every error.
pub fn drive<L: TracedLoop>(mut eventloop: L) -> Driven {
    let (tx, events) = mpsc::unbounded_channel();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.next().await {
                Ok(event) => {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    seen.lock().unwrap().push((Instant::now(), error));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    });
    Driven {
        events,
        errors,
        task: AbortOnDrop(task),
    }
}

/// Polls until `f` maps an event to `Some`, bounded by [`DEADLINE`]; a connection error fails
/// the test.
pub async fn poll_until<L: TracedLoop, T>(
    eventloop: &mut L,
    what: &str,
    mut f: impl FnMut(&Ev) -> Option<T>,
) -> T {
    timeout(DEADLINE, async {
        loop {
            match eventloop.next().await {
                Ok(event) => {
                    if let Some(found) = f(&event) {
                        return found;
                    }
                }
                Err(error) => panic!("{what}: connection error {error}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// Polls through connection errors (pausing [`RECONNECT_PAUSE`] after each) until `f` maps an
/// event to `Some`, bounded by [`DEADLINE`].
pub async fn poll_through_errors_until<L: TracedLoop, T>(
    eventloop: &mut L,
    what: &str,
    mut f: impl FnMut(&Ev) -> Option<T>,
) -> T {
    timeout(DEADLINE, async {
        loop {
            match eventloop.next().await {
                Ok(event) => {
                    if let Some(found) = f(&event) {
                        return found;
                    }
                }
                Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// Polls until the next connection error, bounded by [`DEADLINE`]; returns the events seen on
/// the way.
pub async fn poll_until_error<L: TracedLoop>(eventloop: &mut L, what: &str) -> Vec<Ev> {
    timeout(DEADLINE, async {
        let mut seen = Vec::new();
        loop {
            match eventloop.next().await {
                Ok(event) => seen.push(event),
                Err(_) => return seen,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no connection error within {DEADLINE:?}"))
}

/// Waits (bounded by [`DEADLINE`]) until `condition` holds, checking every few milliseconds.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn signal(broker: &Broker, signal: &str) {
    let pid = broker.pid().expect("the broker is running");
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Stops the broker process (SIGSTOP): its connections stay open, the kernel still accepts
/// bytes into its socket buffers, but it answers nothing until [`thaw`]. The fixture's
/// SIGKILL on drop ends a stopped process too.
pub fn freeze(broker: &Broker) {
    signal(broker, "-STOP");
    // SIGSTOP is asynchronous; wait until the kernel reports the process stopped.
    let pid = broker.pid().expect("the broker is running");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state == Some('T') {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "broker {pid} did not stop: {stat}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Resumes a broker stopped by [`freeze`] (SIGCONT).
pub fn thaw(broker: &Broker) {
    signal(broker, "-CONT");
}

/// A TCP socket of this machine connected to the broker's port, from `/proc/net/tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSocket {
    /// The kernel's state code: `01` ESTABLISHED, `08` CLOSE_WAIT (the peer's FIN arrived).
    pub state: String,
    /// Bytes received and not yet read by the application.
    pub rx_queue: u64,
}

/// The client side of every IPv4 TCP connection to `port` on this machine.
pub fn client_sockets_to(port: u16) -> Vec<ClientSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let wanted = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, queues) = (fields.get(2)?, fields.get(3)?, fields.get(4)?);
            if !remote.ends_with(&wanted) {
                return None;
            }
            let rx_queue = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
            Some(ClientSocket {
                state: (*state).to_owned(),
                rx_queue,
            })
        })
        .collect()
}
