//! Messaging metrics (OpenTelemetry semconv) and MQTT connection-health metrics.
//!
//! The traced clients record everything here by themselves. The three groups are also public
//! types, built on the same instruments, so an application can record by hand what happens
//! outside the traced clients (a publish through another client, a reconnection it handles
//! itself).
//!
//! | name | instrument | unit | attributes | recorded |
//! |---|---|---|---|---|
//! | `messaging.client.operation.duration` | histogram | `s` | system, operation name/type, destination template, `messaging.mqtt.qos`, server address/port, `error.type` on failure | when a publish ends: written (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2), or failed; equal to the publish span's duration. Also per manual acknowledgement (operation `ack`, type `settle`, the subscription filter as template) when rumqttc took it (or refused it: `request_failed`); equal to the settle span's duration |
//! | `messaging.client.sent.messages` | counter | `{message}` | as above, without `error.type` | once per publish, when the PUBLISH is first written (not when queued, not on a replay) |
//! | `messaging.client.consumed.messages` | counter | `{message}` | system, `receive`, subscription filter as template, QoS, server address/port, consumer group | once per PUBLISH handed out by the event loop |
//! | `messaging.process.duration` | histogram | `s` | system, `process`, filter as template, QoS, server address/port, consumer group, `error.type` on failure | when a subscriber's handler returns |
//! | `mqtt.client.message.body.size` | histogram | `By` | system, operation name/type, template, server address/port | per publish sent and per message received, only with [`crate::InstrumentationBuilder::record_sizes`] (it is not a semconv metric, and costs a measurement per message) |
//! | `mqtt.client.connection.attempts` | counter | `{attempt}` | server address/port, `error.type` when the attempt failed | per connection attempt (each poll of a disconnected event loop) |
//! | `mqtt.client.reconnects` | counter | `{reconnect}` | server address/port | per successful connection after the first |
//! | `mqtt.client.connection.duration` | histogram | `s` | server address/port, `error.type` when the connection broke | when a connection ends |
//! | `mqtt.client.keepalive.rtt` | histogram | `s` | server address/port | per PINGRESP, from its PINGREQ |
//! | `mqtt.client.resent` | counter | `{request}` | server address/port | requests put back and sent again after the broker lost the session (see [`crate::reconnect`]) |
//! | `mqtt.client.connected` | observable gauge | `{connection}` | server address/port | connected clients (0 or 1 per client) |
//! | `mqtt.client.inflight` | observable gauge | `{message}` | server address/port | publishes written and not yet acknowledged (rumqttc's `state.inflight()`) |
//! | `mqtt.client.pending` | observable gauge | `{request}` | server address/port | requests rumqttc holds for replay after a reconnect (`pending.len()`) |
//!
//! Durations use the bucket boundaries semconv gives for messaging
//! ([`crate::semconv::metric::DURATION_BUCKETS`]). The raw topic is added to the messaging
//! metrics only with [`crate::InstrumentationBuilder::metric_topics`]; the client id is added to
//! the connection metrics only with [`crate::InstrumentationBuilder::metric_client_id`], because a
//! fleet of thousands of clients would otherwise create thousands of time series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::semconv::{ERROR_TYPE, metric};

mod summed;

pub(crate) use summed::CounterCell;

/// A duration histogram bound to one attribute set.
#[cfg(feature = "bound-instruments")]
pub(crate) type BoundDuration = opentelemetry::metrics::BoundHistogram<f64>;
use summed::SummedCounter;

/// `mqtt.client.message.body.size`.
pub const MESSAGE_BODY_SIZE: &str = "mqtt.client.message.body.size";
/// `mqtt.client.connection.attempts`.
pub const CONNECTION_ATTEMPTS: &str = "mqtt.client.connection.attempts";
/// `mqtt.client.reconnects`.
pub const RECONNECTS: &str = "mqtt.client.reconnects";
/// `mqtt.client.connection.duration`.
pub const CONNECTION_DURATION: &str = "mqtt.client.connection.duration";
/// `mqtt.client.keepalive.rtt`.
pub const KEEPALIVE_RTT: &str = "mqtt.client.keepalive.rtt";
/// `mqtt.client.resent`.
pub const RESENT: &str = "mqtt.client.resent";
/// `mqtt.client.connected`.
pub const CONNECTED: &str = "mqtt.client.connected";
/// `mqtt.client.inflight`.
pub const INFLIGHT: &str = "mqtt.client.inflight";
/// `mqtt.client.pending`.
pub const PENDING: &str = "mqtt.client.pending";

fn duration_histogram(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(metric::DURATION_BUCKETS.to_vec())
        .build()
}

fn body_size_histogram(meter: &Meter) -> Histogram<u64> {
    meter
        .u64_histogram(MESSAGE_BODY_SIZE)
        .with_unit("By")
        .with_description("Size of MQTT message payloads, as the application sees them")
        .build()
}

/// `attributes` plus `error.type` when there is one; borrows when there is none.
fn with_error<'a>(
    attributes: &'a [KeyValue],
    error_type: Option<&'static str>,
) -> std::borrow::Cow<'a, [KeyValue]> {
    match error_type {
        None => std::borrow::Cow::Borrowed(attributes),
        Some(error_type) => {
            let mut owned = attributes.to_vec();
            owned.push(KeyValue::new(ERROR_TYPE, error_type));
            std::borrow::Cow::Owned(owned)
        }
    }
}

/// The publisher's instruments: operation duration, sent messages, body size.
#[derive(Debug, Clone)]
pub struct MqttPublisherMetrics {
    operation_duration: Histogram<f64>,
    sent_messages: SummedCounter,
    body_size: Histogram<u64>,
}

impl MqttPublisherMetrics {
    /// The publisher instruments of `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: duration_histogram(
                meter,
                metric::MESSAGING_CLIENT_OPERATION_DURATION,
                "Duration of a messaging operation: a publish until the broker acknowledged it, \
                 a manual acknowledgement until rumqttc took it",
            ),
            sent_messages: SummedCounter::new(
                meter,
                metric::MESSAGING_CLIENT_SENT_MESSAGES,
                "{message}",
                "Messages written to the network",
            ),
            body_size: body_size_histogram(meter),
        }
    }

    /// Records a publish that ended after `duration`: successfully, or with `error_type`. With
    /// the attributes of operation `ack` (type `settle`), it records a manual acknowledgement on
    /// the same `messaging.client.operation.duration` histogram.
    pub fn record_publish(
        &self,
        duration: Duration,
        attributes: &[KeyValue],
        error_type: Option<&'static str>,
    ) {
        self.operation_duration
            .record(duration.as_secs_f64(), &with_error(attributes, error_type));
    }

    /// The operation-duration histogram bound to `attributes` (successful publishes).
    #[cfg(feature = "bound-instruments")]
    pub(crate) fn bind_duration(&self, attributes: &[KeyValue]) -> BoundDuration {
        self.operation_duration.bind(attributes)
    }

    /// Records a message written to the network.
    pub fn record_sent(&self, attributes: &[KeyValue]) {
        self.sent_messages.add(1, attributes);
    }

    /// The running count of sent messages with `attributes`, for a caller that keeps it.
    pub(crate) fn sent_cell(&self, attributes: &Arc<[KeyValue]>) -> Arc<CounterCell> {
        self.sent_messages.cell(attributes)
    }

    /// Records the payload size of a message sent (`mqtt.client.message.body.size`).
    pub fn record_body_size(&self, body_size: usize, attributes: &[KeyValue]) {
        self.body_size.record(body_size as u64, attributes);
    }
}

/// The subscriber's instruments: consumed messages, process duration, body size.
#[derive(Debug, Clone)]
pub struct MqttSubscriberMetrics {
    consumed_messages: SummedCounter,
    process_duration: Histogram<f64>,
    body_size: Histogram<u64>,
}

impl MqttSubscriberMetrics {
    /// The subscriber instruments of `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            consumed_messages: SummedCounter::new(
                meter,
                metric::MESSAGING_CLIENT_CONSUMED_MESSAGES,
                "{message}",
                "Messages delivered to the application",
            ),
            process_duration: duration_histogram(
                meter,
                metric::MESSAGING_PROCESS_DURATION,
                "Time a handler spent on one message",
            ),
            body_size: body_size_histogram(meter),
        }
    }

    /// Records a delivered message.
    pub fn record_consumed(&self, attributes: &[KeyValue]) {
        self.consumed_messages.add(1, attributes);
    }

    /// The running count of consumed messages with `attributes`, for a caller that keeps it.
    pub(crate) fn consumed_cell(&self, attributes: &Arc<[KeyValue]>) -> Arc<CounterCell> {
        self.consumed_messages.cell(attributes)
    }

    /// Records the payload size of a message received (`mqtt.client.message.body.size`).
    pub fn record_body_size(&self, body_size: usize, attributes: &[KeyValue]) {
        self.body_size.record(body_size as u64, attributes);
    }

    /// The process-duration histogram bound to `attributes` (successful runs).
    #[cfg(feature = "bound-instruments")]
    pub(crate) fn bind_duration(&self, attributes: &[KeyValue]) -> BoundDuration {
        self.process_duration.bind(attributes)
    }

    /// Records a handler run of `duration`: successful, or failed with `error_type`.
    pub fn record_process(
        &self,
        duration: Duration,
        attributes: &[KeyValue],
        error_type: Option<&'static str>,
    ) {
        self.process_duration
            .record(duration.as_secs_f64(), &with_error(attributes, error_type));
    }
}

/// The state of one connection that the observable gauges read.
#[derive(Debug, Default)]
pub(crate) struct ConnectionGauges {
    pub(crate) connected: AtomicU64,
    pub(crate) inflight: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) attributes: Vec<KeyValue>,
}

/// The connections whose gauges one set of instruments reports; weak, so a dropped client stops
/// reporting.
type Registry = Arc<Mutex<Vec<Weak<ConnectionGauges>>>>;

/// Sums one gauge over the live connections, per attribute set, and observes the sums.
fn observe_sum(
    registry: &Registry,
    read: impl Fn(&ConnectionGauges) -> u64,
    observe: impl Fn(u64, &[KeyValue]),
) {
    let mut sums: Vec<(Vec<KeyValue>, u64)> = Vec::new();
    {
        let mut connections = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connections.retain(|connection| connection.strong_count() > 0);
        for connection in connections.iter().filter_map(Weak::upgrade) {
            let value = read(&connection);
            match sums
                .iter_mut()
                .find(|(attributes, _)| *attributes == connection.attributes)
            {
                Some((_, sum)) => *sum += value,
                None => sums.push((connection.attributes.clone(), value)),
            }
        }
    }
    for (attributes, sum) in &sums {
        observe(*sum, attributes);
    }
}

/// Connection health: attempts, reconnects, connection lifetime, keep-alive round trip, and the
/// connected / in-flight / pending gauges.
#[derive(Debug, Clone)]
pub struct MqttConnectionMetrics {
    attempts: Counter<u64>,
    reconnects: Counter<u64>,
    lifetime: Histogram<f64>,
    keepalive_rtt: Histogram<f64>,
    resent: Counter<u64>,
    registry: Registry,
}

impl MqttConnectionMetrics {
    /// The connection instruments of `meter`, with the observable gauges registered on it.
    pub fn new(meter: &Meter) -> Self {
        let registry: Registry = Arc::default();
        let gauge = |name: &'static str,
                     unit: &'static str,
                     description: &'static str,
                     read: fn(&ConnectionGauges) -> u64| {
            let registry = Arc::clone(&registry);
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |instrument| {
                    observe_sum(&registry, read, |value, attributes| {
                        instrument.observe(value, attributes)
                    })
                })
                .build()
        };
        gauge(CONNECTED, "{connection}", "Connected MQTT clients", |g| {
            g.connected.load(Ordering::Relaxed)
        });
        gauge(
            INFLIGHT,
            "{message}",
            "Publishes written and not yet acknowledged",
            |g| g.inflight.load(Ordering::Relaxed),
        );
        gauge(
            PENDING,
            "{request}",
            "Requests held for replay after a reconnect",
            |g| g.pending.load(Ordering::Relaxed),
        );
        Self {
            attempts: meter
                .u64_counter(CONNECTION_ATTEMPTS)
                .with_unit("{attempt}")
                .with_description("Connection attempts, with error.type when one failed")
                .build(),
            reconnects: meter
                .u64_counter(RECONNECTS)
                .with_unit("{reconnect}")
                .with_description("Successful connections after the first")
                .build(),
            lifetime: duration_histogram(
                meter,
                CONNECTION_DURATION,
                "How long a connection lasted, recorded when it ends",
            ),
            keepalive_rtt: duration_histogram(
                meter,
                KEEPALIVE_RTT,
                "Keep-alive round trip, PINGREQ to PINGRESP",
            ),
            resent: meter
                .u64_counter(RESENT)
                .with_unit("{request}")
                .with_description(
                    "Requests put back and sent again after the broker lost the session",
                )
                .build(),
            registry,
        }
    }

    /// Records `count` requests sent again after a session loss.
    pub fn record_resent(&self, count: u64, attributes: &[KeyValue]) {
        if count > 0 {
            self.resent.add(count, attributes);
        }
    }

    /// Records a connection attempt: successful, or failed with `error_type`.
    pub fn record_connection_attempt(
        &self,
        attributes: &[KeyValue],
        error_type: Option<&'static str>,
    ) {
        self.attempts.add(1, &with_error(attributes, error_type));
    }

    /// Records a successful reconnection.
    pub fn record_reconnection(&self, attributes: &[KeyValue]) {
        self.reconnects.add(1, attributes);
    }

    /// Records the end of a connection that lasted `lifetime`: closed cleanly, or broken with
    /// `error_type` as the reason.
    pub fn record_connection_end(
        &self,
        lifetime: Duration,
        attributes: &[KeyValue],
        error_type: Option<&'static str>,
    ) {
        self.lifetime
            .record(lifetime.as_secs_f64(), &with_error(attributes, error_type));
    }

    /// Records one keep-alive round trip.
    pub fn record_keepalive_rtt(&self, rtt: Duration, attributes: &[KeyValue]) {
        self.keepalive_rtt.record(rtt.as_secs_f64(), attributes);
    }

    /// Registers a connection's gauges; they are reported until the returned handle is dropped.
    pub(crate) fn register(&self, attributes: Vec<KeyValue>) -> Arc<ConnectionGauges> {
        let gauges = Arc::new(ConnectionGauges {
            attributes,
            ..ConnectionGauges::default()
        });
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&gauges));
        gauges
    }
}

/// All instruments of one [`crate::Instrumentation`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Metrics {
    /// Publisher instruments.
    pub publisher: MqttPublisherMetrics,
    /// Subscriber instruments.
    pub subscriber: MqttSubscriberMetrics,
    /// Connection-health instruments.
    pub connection: MqttConnectionMetrics,
}

impl Metrics {
    /// Every instrument of `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            publisher: MqttPublisherMetrics::new(meter),
            subscriber: MqttSubscriberMetrics::new(meter),
            connection: MqttConnectionMetrics::new(meter),
        }
    }
}
