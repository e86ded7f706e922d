//! One publisher and one subscriber type over both MQTT versions, so each role is written once
//! and runs with `--mqtt 5` (the default: trace context in user properties) or `--mqtt 3`
//! (MQTT 3.1.1; with `--envelope` the trace context travels in this crate's payload envelope).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc_opentelemetry::{Instrumentation, InstrumentationBuilder, V4Propagation, v4, v5};

use super::{BoxError, Result};

/// The MQTT version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1; `envelope` wraps payloads in the trace-context envelope.
    V4 {
        /// Whether publishes carry the trace context in the envelope.
        envelope: bool,
    },
    /// MQTT 5.
    V5,
}

impl Version {
    /// Applies the version's propagation setting to an instrumentation.
    pub fn configure(self, builder: InstrumentationBuilder) -> InstrumentationBuilder {
        match self {
            Self::V4 { envelope: true } => builder.v4_propagation(V4Propagation::Envelope),
            _ => builder,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4 { envelope: true } => {
                f.write_str("MQTT 3.1.1 with the trace-context envelope")
            }
            Self::V4 { envelope: false } => {
                f.write_str("MQTT 3.1.1 without propagation (each hop starts a new trace)")
            }
            Self::V5 => f.write_str("MQTT 5 (trace context in user properties)"),
        }
    }
}

/// `host:port` of a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddress {
    /// Parses `host:port` (`[::1]:1883` for IPv6).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`--broker` must be host:port (like localhost:1883), got `{text}`");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where and how a role connects.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The broker.
    pub broker: BrokerAddress,
    /// The MQTT version.
    pub version: Version,
    /// The client id (unique per broker).
    pub client_id: String,
    /// How long to wait for the first CONNACK before giving up.
    pub connect_timeout: Duration,
}

/// A last will: published by the broker when the connection drops without DISCONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The broker did not answer in time.
#[derive(Debug)]
pub struct Unreachable {
    broker: BrokerAddress,
    timeout: Duration,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not connect to the MQTT broker at {} within {:?} (is a broker running there? \
             pass another one with --broker host:port)",
            self.broker, self.timeout
        )
    }
}

impl std::error::Error for Unreachable {}

fn v5_options(connection: &Connection, will: Option<&Will>) -> rumqttc::v5::MqttOptions {
    let broker = &connection.broker;
    let mut options =
        rumqttc::v5::MqttOptions::new(&connection.client_id, &broker.host, broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_connection_timeout(connection.connect_timeout.as_secs().max(1));
    if let Some(will) = will {
        options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            &will.topic,
            will.payload.clone(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    options
}

fn v4_options(connection: &Connection, will: Option<&Will>) -> rumqttc::MqttOptions {
    let broker = &connection.broker;
    let mut options = rumqttc::MqttOptions::new(&connection.client_id, &broker.host, broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(will) = will {
        options.set_last_will(rumqttc::LastWill::new(
            &will.topic,
            will.payload.clone(),
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
    }
    options
}

/// Waits until `connected` resolves to `true`, at most `connection.connect_timeout`.
async fn connected_within(
    connection: &Connection,
    connected: impl Future<Output = bool>,
) -> Result<()> {
    match tokio::time::timeout(connection.connect_timeout, connected).await {
        Ok(true) => Ok(()),
        _ => Err(Unreachable {
            broker: connection.broker.clone(),
            timeout: connection.connect_timeout,
        }
        .into()),
    }
}

/// A traced publisher of either version. All publishes are QoS 1.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// MQTT 3.1.1.
    V4(v4::TracedPublisher),
    /// MQTT 5.
    V5(v5::TracedPublisher),
}

impl Publisher {
    /// Starts a connection (in a task of its own) with an optional last will.
    pub fn start(
        connection: &Connection,
        instrumentation: Instrumentation,
        will: Option<&Will>,
    ) -> Self {
        match connection.version {
            Version::V5 => Self::V5(v5::TracedPublisher::with_instrumentation(
                v5_options(connection, will),
                64,
                instrumentation,
            )),
            Version::V4 { .. } => Self::V4(v4::TracedPublisher::with_instrumentation(
                v4_options(connection, will),
                64,
                instrumentation,
            )),
        }
    }

    /// Waits for the first CONNACK, at most the connection timeout.
    pub async fn connected(&self, connection: &Connection) -> Result<()> {
        match self {
            Self::V4(publisher) => connected_within(connection, publisher.wait_connected()).await,
            Self::V5(publisher) => connected_within(connection, publisher.wait_connected()).await,
        }
    }

    /// Publishes at QoS 1 and waits until the broker has acknowledged it (the publish span ends
    /// then too).
    pub async fn publish_confirmed(
        &self,
        topic: String,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> Result<(), rumqttc_opentelemetry::Error> {
        let payload = payload.into();
        match self {
            Self::V4(publisher) => {
                publisher
                    .publish_confirmed(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                    .await
            }
            Self::V5(publisher) => {
                publisher
                    .publish_confirmed(
                        topic,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        retain,
                        payload,
                    )
                    .await
            }
        }
    }

    /// Waits until every publish so far has ended.
    pub async fn flush(&self) {
        match self {
            Self::V4(publisher) => publisher.flush().await,
            Self::V5(publisher) => publisher.flush().await,
        }
    }

    /// Flushes, sends DISCONNECT and waits for the connection task to end.
    pub async fn shutdown(self) {
        match self {
            Self::V4(publisher) => publisher.shutdown().await,
            Self::V5(publisher) => publisher.shutdown().await,
        }
    }
}

/// A message as the roles' handlers see it, whatever the version.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The topic.
    pub topic: String,
    /// The payload (an envelope already stripped).
    pub payload: Bytes,
    /// The RETAIN flag: a stored message the broker sent because the subscription is new.
    pub retained: bool,
}

/// What a handler returns when it fails: the `process` span ends as an error whose
/// `error.type` is this type's name, with the message as status description.
#[derive(Debug)]
pub struct HandlerError(pub String);

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A handler: runs once per message, inside the message's `process` span.
pub type Handler = Arc<dyn Fn(Incoming) -> HandlerFuture + Send + Sync>;

/// A traced subscriber of either version with one route.
#[derive(Debug)]
pub enum Subscriber {
    /// MQTT 3.1.1.
    V4(v4::TracedSubscriber),
    /// MQTT 5.
    V5(v5::TracedSubscriber),
}

impl Subscriber {
    /// Starts a subscriber of `filter` at QoS 1 that runs up to `concurrency` handlers at a
    /// time (messages of one topic one after the other), each inside a `tracing` span `handler`
    /// (a child of its `process` span where tracing-opentelemetry is set up: see
    /// [`init_logs_and_traces`](super::telemetry::init_logs_and_traces)). `make_handler` gets a publisher on the
    /// same connection (one client id, one connection: what a gateway forwards goes out on it).
    pub fn start(
        connection: &Connection,
        instrumentation: Instrumentation,
        filter: &str,
        concurrency: usize,
        make_handler: impl FnOnce(Publisher) -> Handler,
    ) -> Result<Self> {
        Ok(match connection.version {
            Version::V5 => {
                let builder = v5::TracedSubscriber::builder_with_instrumentation(
                    v5_options(connection, None),
                    64,
                    instrumentation,
                );
                let handler = make_handler(Publisher::V5(builder.publisher()));
                let builder = builder.concurrency(concurrency).handler_span(true).route(
                    filter,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    move |message: v5::Message| {
                        let run = handler(Incoming {
                            topic: message.topic().to_owned(),
                            payload: message.payload().clone(),
                            retained: message.retained(),
                        });
                        // `?` keeps the type name `HandlerError` for `error.type`.
                        async move { Ok(run.await?) }
                    },
                )?;
                Self::V5(builder.start())
            }
            Version::V4 { .. } => {
                let builder = v4::TracedSubscriber::builder_with_instrumentation(
                    v4_options(connection, None),
                    64,
                    instrumentation,
                );
                let handler = make_handler(Publisher::V4(builder.publisher()));
                let builder = builder.concurrency(concurrency).handler_span(true).route(
                    filter,
                    rumqttc::QoS::AtLeastOnce,
                    move |message: v4::Message| {
                        let run = handler(Incoming {
                            topic: message.topic().to_owned(),
                            payload: message.payload().clone(),
                            retained: message.retained(),
                        });
                        // `?` keeps the type name `HandlerError` for `error.type`.
                        async move { Ok(run.await?) }
                    },
                )?;
                Self::V4(builder.start())
            }
        })
    }

    /// Waits until connected and subscribed, at most the connection timeout.
    pub async fn ready(&self, connection: &Connection) -> Result<()> {
        let subscribed = async {
            match self {
                Self::V4(subscriber) => {
                    if !subscriber.wait_connected().await {
                        return Ok(false);
                    }
                    subscriber.subscribed().await.map(|()| true)
                }
                Self::V5(subscriber) => {
                    if !subscriber.wait_connected().await {
                        return Ok(false);
                    }
                    subscriber.subscribed().await.map(|()| true)
                }
            }
        };
        match tokio::time::timeout(connection.connect_timeout, subscribed).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Err(refused)) => Err(refused.into()),
            _ => Err(Unreachable {
                broker: connection.broker.clone(),
                timeout: connection.connect_timeout,
            }
            .into()),
        }
    }

    /// Processes the messages already received, flushes, disconnects.
    pub async fn shutdown(self) {
        match self {
            Self::V4(subscriber) => subscriber.shutdown().await,
            Self::V5(subscriber) => subscriber.shutdown().await,
        }
    }
}

/// Turns any error into a [`HandlerError`].
pub fn handler_error(error: impl Into<BoxError>) -> HandlerError {
    HandlerError(error.into().to_string())
}
