//! TLS (issue #8 item 7): the traced clients over rumqttc's own TLS transport, against a
//! mosquitto TLS listener whose CA and certificates are made at test time.
//!
//! The library depends on rumqttc without features and leaves TLS to the application; here the
//! `[dev-dependencies]` entry turns on rumqttc's `use-rustls-no-provider` (feature unification,
//! test builds only) and rustls's `ring` provider. One mosquitto has its usual plain listener
//! plus two TLS listeners: one presents a certificate for `DNS:localhost,IP:127.0.0.1`, the other
//! one for another host name, both signed by the test CA.
//!
//! * The same MQTT 5 publish/subscribe exchange, once over plain TCP and once over TLS, gives
//!   the same spans (names, kinds, statuses, attributes, events, parents) and the same metrics;
//!   only `server.port` differs, and it is the TLS port over TLS.
//! * A client that trusts another CA, or that reaches a server whose certificate names another
//!   host, fails to connect: rustls rejects the certificate, and the attempt is counted on
//!   `mqtt.client.connection.attempts` with `error.type = tls` (MQTT 5 and 3.1.1).

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;
#[path = "common/tls/pki.rs"]
mod pki;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use common::telemetry::Telemetry;
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::SpanData;
use pki::{Ca, Pki};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{ConnectionError, Event, MqttOptions};
use rumqttc::{Outgoing, TlsError, Transport};
use rumqttc_opentelemetry::metrics::{CONNECTION_ATTEMPTS, CONNECTION_DURATION, RECONNECTS};
use rumqttc_opentelemetry::semconv::metric::{
    MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_SENT_MESSAGES,
};
use rumqttc_opentelemetry::v5::{TracedClient, TracedEventLoop};
use rustls::CertificateError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Bound on every wait.
const DEADLINE: Duration = Duration::from_secs(15);
/// Every broker listener is on the loopback address; the server certificate names it.
const HOST: &str = "127.0.0.1";
const FILTER: &str = "tls-check/#";
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
/// Broker start attempts with fresh TLS ports (a port picked free may be taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// rumqttc's `use-rustls-no-provider` leaves the rustls crypto provider to the application.
fn install_ring_provider() {
    // Err only when a provider is already installed (another test of this binary did it).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Two distinct ports that are free now (both held while the second is picked).
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0");
    let b = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0");
    (
        a.local_addr().expect("local_addr").port(),
        b.local_addr().expect("local_addr").port(),
    )
}

/// A mosquitto with its plain listener, a TLS listener with a good certificate, and a TLS
/// listener whose certificate names another host; the test PKI lives as long as it does.
struct TlsBroker {
    broker: Broker,
    pki: Pki,
    ca: Ca,
    tls_port: u16,
    wrong_name_port: u16,
}

impl TlsBroker {
    fn start() -> TlsBroker {
        install_ring_provider();
        let pki = Pki::new();
        let ca = pki.ca("trusted-ca");
        let good = ca.issue_server("server", "DNS:localhost,IP:127.0.0.1");
        let wrong_name = ca.issue_server("wrong-name", "DNS:another-host.invalid");
        for attempt in 1..=START_ATTEMPTS {
            let (tls_port, wrong_name_port) = two_free_ports();
            let builder = Broker::builder()
                .extra_config(&good.mosquitto_listener(tls_port, &ca))
                .extra_config(&wrong_name.mosquitto_listener(wrong_name_port, &ca));
            // The fixture retries its own port; a TLS port taken meanwhile fails every retry.
            match catch_unwind(AssertUnwindSafe(|| builder.start())) {
                Ok(broker) => {
                    for port in [tls_port, wrong_name_port] {
                        // mosquitto opens every listener before it logs "running".
                        assert!(
                            broker.wait_for_log(
                                &format!("Opening ipv4 listen socket on port {port}."),
                                DEADLINE
                            ),
                            "TLS listener on {port} not opened:\n{}",
                            broker.log_tail(30)
                        );
                    }
                    return TlsBroker {
                        broker,
                        pki,
                        ca,
                        tls_port,
                        wrong_name_port,
                    };
                }
                Err(panic) if attempt == START_ATTEMPTS => resume_unwind(panic),
                Err(_) => eprintln!("mosquitto with TLS listeners did not start; new ports"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// rumqttc's TLS transport trusting only `ca`.
    fn transport(ca: &Ca) -> Transport {
        Transport::tls(ca.pem(), None, None)
    }

    /// The listener port that `client_id` connected to, from the broker log: `New client
    /// connected from ADDR as ID (...)` follows `New connection from ADDR on port P.`.
    fn listener_port_of(&self, client_id: &str) -> Option<u16> {
        let log = self.broker.log();
        let mut ports = BTreeMap::new();
        let mut found = None;
        let own = format!("{client_id} (");
        for line in log.lines() {
            if let Some((_, rest)) = line.split_once("New connection from ")
                && let Some((addr, port)) = rest.split_once(" on port ")
            {
                let port = port.trim_end_matches('.').parse::<u16>().ok();
                ports.insert(addr.to_string(), port);
            } else if let Some((_, rest)) = line.split_once("New client connected from ")
                && let Some((addr, id)) = rest.split_once(" as ")
                && id.starts_with(&own)
            {
                found = ports.get(addr).copied().flatten();
            }
        }
        found
    }

    /// Waits, bounded, until the broker logged a connection on `port` (`New connection from
    /// ADDR on port P.`, logged on accept, before any TLS handshake); `false` on timeout.
    fn wait_for_connection_on(&self, port: u16) -> bool {
        let needle = format!(" on port {port}.");
        let start = Instant::now();
        loop {
            let log = self.broker.log();
            if log
                .lines()
                .any(|l| l.contains("New connection from ") && l.ends_with(&needle))
            {
                return true;
            }
            if start.elapsed() >= DEADLINE {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Polls an event loop in a task and forwards what the test waits for (CONNACK, SUBACK,
/// incoming PUBLISH), or the first error; ends after the DISCONNECT is written.
fn drive(
    mut eventloop: TracedEventLoop,
) -> (
    mpsc::UnboundedReceiver<Result<Event, String>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(event) => {
                    if matches!(
                        event,
                        Event::Incoming(
                            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::Publish(_)
                        )
                    ) {
                        let _ = tx.send(Ok(event));
                    }
                }
                Err(error) => {
                    let _ = tx.send(Err(format!("{error:?}")));
                    return;
                }
            }
        }
    });
    (rx, task)
}

/// The next forwarded event, which must satisfy `f`; bounded by [`DEADLINE`].
async fn expect_event<T>(
    rx: &mut mpsc::UnboundedReceiver<Result<Event, String>>,
    what: &str,
    f: impl Fn(&Event) -> Option<T>,
) -> T {
    timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Some(Ok(event)) => {
                    if let Some(found) = f(&event) {
                        return found;
                    }
                }
                Some(Err(error)) => panic!("connection error while waiting for {what}: {error}"),
                None => panic!("event loop ended while waiting for {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

/// Waits, bounded, until `condition` holds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one run of [`exchange`] recorded.
struct Run {
    telemetry: Telemetry,
    reader: MetricReader,
    port: u16,
    /// client id -> its role, to compare runs whose client ids differ.
    roles: BTreeMap<String, &'static str>,
}

/// A subscriber (QoS 2 on [`FILTER`]) and a publisher (one confirmed publish per QoS) over
/// `transport` to `HOST:port`, both with the same in-memory telemetry; both disconnect at the
/// end.
async fn exchange(port: u16, transport: Transport) -> Run {
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let instrumentation = || telemetry.builder().meter_provider(&reader.provider).build();
    let options = |id: &str| {
        let mut options = MqttOptions::new(id, HOST, port);
        options.set_transport(transport.clone());
        options
    };
    let sub_id = unique_client_id("tls-sub");
    let pub_id = unique_client_id("tls-pub");

    let (subscriber, sub_loop) =
        TracedClient::with_instrumentation(options(&sub_id), 10, instrumentation());
    let (mut sub_events, sub_task) = drive(sub_loop);
    subscriber
        .subscribe(FILTER, QoS::ExactlyOnce)
        .await
        .unwrap();
    expect_event(&mut sub_events, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;

    let (publisher, pub_loop) =
        TracedClient::with_instrumentation(options(&pub_id), 10, instrumentation());
    let (mut pub_events, pub_task) = drive(pub_loop);
    for (i, qos) in QOS.into_iter().enumerate() {
        timeout(
            DEADLINE,
            publisher.publish_confirmed(
                format!("tls-check/{i}"),
                qos,
                false,
                format!("reading {i}"),
                None,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("publish {i} confirmed within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("publish {i}: {e:?}"));
    }
    let mut received = Vec::new();
    for _ in QOS {
        received.push(
            expect_event(&mut sub_events, "an incoming PUBLISH", |e| match e {
                Event::Incoming(Packet::Publish(p)) => Some((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )),
                _ => None,
            })
            .await,
        );
    }
    received.sort();
    assert_eq!(
        received,
        (0..QOS.len())
            .map(|i| (format!("tls-check/{i}"), format!("reading {i}")))
            .collect::<Vec<_>>()
    );
    eventually("three receive spans", || {
        telemetry.spans_of(SpanKind::Client).len() == QOS.len()
    })
    .await;

    for (client, task) in [(&publisher, pub_task), (&subscriber, sub_task)] {
        client.disconnect().await.unwrap();
        timeout(DEADLINE, task)
            .await
            .expect("DISCONNECT written within the deadline")
            .expect("event loop task");
    }
    for events in [&mut pub_events, &mut sub_events] {
        while let Ok(event) = events.try_recv() {
            if let Err(error) = event {
                panic!("connection error: {error}");
            }
        }
    }

    Run {
        telemetry,
        reader,
        port,
        roles: BTreeMap::from([(sub_id, "<subscriber>"), (pub_id, "<publisher>")]),
    }
}

/// A span with everything that may differ between two runs taken out: ids, times, the client
/// ids (replaced by the role) and `server.port` (replaced by `<port>`, after checking it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SpanShape {
    name: String,
    kind: String,
    status: String,
    attributes: Vec<(String, String)>,
    events: Vec<String>,
    links: usize,
    /// The name of the parent span among the run's spans, if the parent is one of them.
    parent: Option<String>,
}

/// A metric data point with the port and, for durations, the measured value taken out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PointShape {
    metric: String,
    unit: String,
    attributes: Vec<(String, String)>,
    count: u64,
    /// `None` for durations (unit `s`), which are measured and cannot match.
    value: Option<String>,
}

impl Run {
    /// Normalizes one attribute, checking what it replaces.
    fn normalize(&self, key: &str, value: &Value) -> String {
        match key {
            "server.port" => {
                assert_eq!(value, &Value::I64(i64::from(self.port)), "server.port");
                "<port>".to_string()
            }
            "messaging.client.id" => self
                .roles
                .get(value.as_str().as_ref())
                .unwrap_or_else(|| panic!("unknown client id {value:?}"))
                .to_string(),
            _ => match value {
                // By type and content (the SDK's internal string representation may vary).
                Value::Bool(v) => format!("bool {v}"),
                Value::I64(v) => format!("int {v}"),
                Value::F64(v) => format!("double {v}"),
                Value::String(v) => format!("string {}", v.as_str()),
                other => format!("{other:?}"),
            },
        }
    }

    fn span_shapes(&self) -> Vec<SpanShape> {
        let spans = self.telemetry.spans();
        let name_of = |id: SpanId| -> Option<String> {
            spans
                .iter()
                .find(|s| s.span_context.span_id() == id)
                .map(|s| s.name.to_string())
        };
        let mut shapes: Vec<SpanShape> = spans
            .iter()
            .map(|span: &SpanData| {
                let mut attributes: Vec<(String, String)> = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.as_str().to_string(),
                            self.normalize(kv.key.as_str(), &kv.value),
                        )
                    })
                    .collect();
                attributes.sort();
                SpanShape {
                    name: span.name.to_string(),
                    kind: format!("{:?}", span.span_kind),
                    status: format!("{:?}", span.status),
                    attributes,
                    events: span.events.iter().map(|e| e.name.to_string()).collect(),
                    links: span.links.len(),
                    parent: name_of(span.parent_span_id),
                }
            })
            .collect();
        shapes.sort();
        shapes
    }

    /// Every data point of every metric the run exported.
    fn point_shapes(&self) -> Vec<PointShape> {
        self.reader.provider.force_flush().expect("flush metrics");
        let exports = self
            .reader
            .exporter
            .get_finished_metrics()
            .expect("metrics");
        let export = exports.last().expect("one export after a flush");
        let names: Vec<String> = export
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .map(|m| m.name().to_string())
            .collect();
        let mut shapes = Vec::new();
        for name in names {
            let unit = self.reader.unit(&name).unwrap_or_default();
            for point in self.reader.points(&name) {
                let mut attributes: Vec<(String, String)> = point
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.as_str().to_string(),
                            self.normalize(kv.key.as_str(), &kv.value),
                        )
                    })
                    .collect();
                attributes.sort();
                shapes.push(PointShape {
                    metric: name.clone(),
                    unit: unit.clone(),
                    attributes,
                    count: point.count,
                    value: (unit != "s").then(|| point.value.to_string()),
                });
            }
        }
        shapes.sort();
        shapes
    }
}

fn string_attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn int_attribute(span: &SpanData, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| match kv.value {
            Value::I64(v) => Some(v),
            _ => None,
        })
}

/// The certificate error rustls raised under a rumqttc TLS error, if that is what it is.
fn certificate_error(error: &TlsError) -> Option<CertificateError> {
    let rustls_error = match error {
        TlsError::TLS(e) => Some(e),
        // tokio-rustls reports handshake failures as io::Error(InvalidData, rustls::Error).
        TlsError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(e)) => Some(e.clone()),
        _ => None,
    }
}

/// `mqtt.client.connection.attempts` has one stream: `failures` attempts against
/// `127.0.0.1:port`, each with `error.type = tls`; there was never a connection.
fn assert_tls_connection_failures(reader: &MetricReader, port: u16, failures: u32) {
    let points = reader.points(CONNECTION_ATTEMPTS);
    assert_eq!(points.len(), 1, "one stream: {points:?}");
    let point = &points[0];
    assert_eq!(point.value, f64::from(failures), "{point:?}");
    assert_eq!(point.attribute("error.type"), Some(&"tls".into()));
    assert_eq!(point.attribute("server.address"), Some(&HOST.into()));
    assert_eq!(
        point.attribute("server.port"),
        Some(&i64::from(port).into())
    );
    assert_eq!(reader.total(RECONNECTS), 0.0);
    assert_eq!(reader.count(CONNECTION_DURATION), 0, "never connected");
}

/// The same traced MQTT 5 exchange over plain TCP and over TLS records the same spans and the
/// same metrics; over TLS they carry the TLS listener's port.
#[tokio::test(flavor = "multi_thread")]
async fn tracing_and_metrics_over_tls_are_those_of_plain_tcp() {
    let fixture = TlsBroker::start();
    let broker = &fixture.broker;
    assert_ne!(fixture.tls_port, broker.port());

    let tcp = exchange(broker.port(), Transport::Tcp).await;
    let tls = exchange(fixture.tls_port, TlsBroker::transport(&fixture.ca)).await;
    // Each run's clients really went through its listener.
    for (run, port) in [(&tcp, broker.port()), (&tls, fixture.tls_port)] {
        for client_id in run.roles.keys() {
            assert_eq!(
                fixture.listener_port_of(client_id),
                Some(port),
                "{client_id}:\n{}",
                broker.log_tail(60)
            );
        }
    }

    // The TLS run on its own: the span names, kinds and connection attributes.
    let spans = tls.telemetry.spans();
    let mut names: Vec<(String, SpanKind)> = spans
        .iter()
        .map(|s| (s.name.to_string(), s.span_kind.clone()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("publish tls-check/0".to_string(), SpanKind::Producer),
            ("publish tls-check/1".to_string(), SpanKind::Producer),
            ("publish tls-check/2".to_string(), SpanKind::Producer),
            ("receive tls-check/#".to_string(), SpanKind::Client),
            ("receive tls-check/#".to_string(), SpanKind::Client),
            ("receive tls-check/#".to_string(), SpanKind::Client),
        ],
        "{spans:#?}"
    );
    for span in &spans {
        assert_eq!(
            string_attribute(span, "server.address").as_deref(),
            Some(HOST)
        );
        assert_eq!(
            int_attribute(span, "server.port"),
            Some(i64::from(fixture.tls_port))
        );
        assert_eq!(
            string_attribute(span, "network.protocol.name").as_deref(),
            Some("mqtt")
        );
        assert_eq!(
            string_attribute(span, "network.protocol.version").as_deref(),
            Some("5")
        );
        assert_eq!(
            string_attribute(span, "messaging.system").as_deref(),
            Some("mqtt")
        );
        assert_eq!(string_attribute(span, "error.type"), None, "{span:#?}");
    }
    // The context crossed the TLS connection: each receive span's parent is its publish span.
    for receive in spans.iter().filter(|s| s.span_kind == SpanKind::Client) {
        let publish = spans
            .iter()
            .find(|s| s.span_context.span_id() == receive.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {receive:#?}"));
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(
            receive.span_context.trace_id(),
            publish.span_context.trace_id()
        );
    }
    // And its metrics: what was sent and consumed, two successful connection attempts.
    assert_eq!(tls.reader.total(MESSAGING_CLIENT_SENT_MESSAGES), 3.0);
    assert_eq!(tls.reader.total(MESSAGING_CLIENT_CONSUMED_MESSAGES), 3.0);
    let attempts = tls.reader.points(CONNECTION_ATTEMPTS);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].value, 2.0);
    assert_eq!(attempts[0].attribute("error.type"), None);
    assert_eq!(
        attempts[0].attribute("server.port"),
        Some(&i64::from(fixture.tls_port).into())
    );

    // Over TCP the same, attribute for attribute, point for point.
    let tcp_spans = tcp.span_shapes();
    assert_eq!(tcp_spans.len(), 6, "{tcp_spans:#?}");
    assert_eq!(tls.span_shapes(), tcp_spans);
    let tcp_points = tcp.point_shapes();
    assert!(
        tcp_points
            .iter()
            .any(|p| p.metric == MESSAGING_CLIENT_SENT_MESSAGES),
        "{tcp_points:#?}"
    );
    assert_eq!(tls.point_shapes(), tcp_points);
}

/// An MQTT 5 client that trusts another CA rejects the broker's certificate (rustls:
/// `UnknownIssuer`); each attempt is a connection failure with `error.type = tls`.
#[tokio::test(flavor = "multi_thread")]
async fn v5_a_server_certificate_from_an_unknown_ca_is_a_tls_connection_failure() {
    let fixture = TlsBroker::start();
    let other_ca = fixture.pki.ca("other-ca");
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let mut options = MqttOptions::new(unique_client_id("tls-other-ca"), HOST, fixture.tls_port);
    options.set_transport(TlsBroker::transport(&other_ca));
    let (_client, mut eventloop) = TracedClient::with_instrumentation(
        options,
        10,
        telemetry.builder().meter_provider(&reader.provider).build(),
    );
    for _ in 0..2 {
        let error = timeout(DEADLINE, eventloop.poll())
            .await
            .expect("the attempt ends within the deadline")
            .expect_err("the handshake must fail");
        match &error {
            ConnectionError::Tls(tls) => assert_eq!(
                certificate_error(tls),
                Some(CertificateError::UnknownIssuer),
                "{error:?}"
            ),
            other => panic!("not a TLS error: {other:?}"),
        }
    }
    assert_tls_connection_failures(&reader, fixture.tls_port, 2);
    assert!(
        fixture.wait_for_connection_on(fixture.tls_port),
        "it reached the TLS listener"
    );
    assert!(fixture.broker.connected_clients().is_empty());
    assert!(telemetry.spans().is_empty());
}

/// The same with an MQTT 3.1.1 client (`rumqttc_opentelemetry::v4`).
#[tokio::test(flavor = "multi_thread")]
async fn v4_a_server_certificate_from_an_unknown_ca_is_a_tls_connection_failure() {
    let fixture = TlsBroker::start();
    let other_ca = fixture.pki.ca("other-ca");
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let mut options =
        rumqttc::MqttOptions::new(unique_client_id("tls-v4-other-ca"), HOST, fixture.tls_port);
    options.set_transport(TlsBroker::transport(&other_ca));
    let (_client, mut eventloop) = rumqttc_opentelemetry::v4::TracedClient::with_instrumentation(
        options,
        10,
        telemetry.builder().meter_provider(&reader.provider).build(),
    );
    for _ in 0..2 {
        let error = timeout(DEADLINE, eventloop.poll())
            .await
            .expect("the attempt ends within the deadline")
            .expect_err("the handshake must fail");
        match &error {
            rumqttc::ConnectionError::Tls(tls) => assert_eq!(
                certificate_error(tls),
                Some(CertificateError::UnknownIssuer),
                "{error:?}"
            ),
            other => panic!("not a TLS error: {other:?}"),
        }
    }
    assert_tls_connection_failures(&reader, fixture.tls_port, 2);
    assert!(fixture.broker.connected_clients().is_empty());
}

/// A server certificate from the trusted CA but for another host name (no `127.0.0.1` in its
/// subjectAltName) is rejected too (rustls: not valid for the name), with `error.type = tls`;
/// the same client settings succeed against the listener whose certificate names the host.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_for_another_host_name_is_a_tls_connection_failure() {
    let fixture = TlsBroker::start();
    let reader = MetricReader::new();
    let telemetry = Telemetry::new();
    let options = |port: u16| {
        let mut options = MqttOptions::new(unique_client_id("tls-name"), HOST, port);
        options.set_transport(TlsBroker::transport(&fixture.ca));
        options
    };
    let (_client, mut eventloop) = TracedClient::with_instrumentation(
        options(fixture.wrong_name_port),
        10,
        telemetry.builder().meter_provider(&reader.provider).build(),
    );
    for _ in 0..2 {
        let error = timeout(DEADLINE, eventloop.poll())
            .await
            .expect("the attempt ends within the deadline")
            .expect_err("the handshake must fail");
        let rejected = match &error {
            ConnectionError::Tls(tls) => certificate_error(tls),
            other => panic!("not a TLS error: {other:?}"),
        };
        assert!(
            matches!(
                rejected,
                Some(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{error:?}"
        );
    }
    assert_tls_connection_failures(&reader, fixture.wrong_name_port, 2);
    assert!(fixture.broker.connected_clients().is_empty());

    // The control: the same CA and host, the listener with the right certificate.
    let control_reader = MetricReader::new();
    let (_control, mut control_loop) = TracedClient::with_instrumentation(
        options(fixture.tls_port),
        10,
        telemetry
            .builder()
            .meter_provider(&control_reader.provider)
            .build(),
    );
    let event = timeout(DEADLINE, control_loop.poll())
        .await
        .expect("CONNACK within the deadline")
        .expect("a connection to the listener with the right certificate");
    assert!(
        matches!(event, Event::Incoming(Packet::ConnAck(_))),
        "{event:?}"
    );
    let attempts = control_reader.points(CONNECTION_ATTEMPTS);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].value, 1.0);
    assert_eq!(attempts[0].attribute("error.type"), None);
}
