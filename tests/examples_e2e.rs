//! End-to-end tests of the examples against a real mosquitto broker (tests/common/broker.rs).
//!
//! The examples keep their logic in `examples/common/`; this test includes that module and runs
//! the same temperature sensor, gateway and collector in-process, each with its own tracer and
//! meter provider (`service.name`), all recording into one in-memory `Recorder`. That is what the
//! example binaries run, minus the command-line `main`, and it lets the test follow each reading
//! through its spans.
//!
//! Needs the `examples` feature (SQLite for the collector):
//! `cargo test --features examples --test examples_e2e`.

mod common;
#[path = "../examples/common/mod.rs"]
mod example_common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;

use common::Broker;
use example_common::cli::{self, Args, CONNECTION_FLAGS, Failure};
use example_common::collector::{self, CollectorConfig};
use example_common::gateway::{self, GatewayConfig};
use example_common::mqtt::{BrokerAddress, Connection, Publisher, Version};
use example_common::report;
use example_common::sensor::{self, SensorConfig};
use example_common::telemetry::{Exporter, RecordedSpan, Recorder, Service, Sinks};

const WAIT: Duration = Duration::from_secs(20);

/// The three services of one test, recording into one recorder.
struct Services {
    recorder: Recorder,
    metrics: InMemoryMetricExporter,
    sensor: Service,
    gateway: Service,
    collector: Service,
}

impl Services {
    fn new() -> Self {
        let recorder = Recorder::default();
        let metrics = InMemoryMetricExporter::default();
        let sinks = Sinks {
            exporter: Exporter::None,
            recorder: Some(recorder.clone()),
            metrics: Some(metrics.clone()),
        };
        Self {
            sensor: Service::new("temperature-sensor", &sinks).unwrap(),
            gateway: Service::new("gateway", &sinks).unwrap(),
            collector: Service::new("collector", &sinks).unwrap(),
            recorder,
            metrics,
        }
    }

    fn shutdown(&self) {
        for service in [&self.sensor, &self.gateway, &self.collector] {
            service.shutdown();
        }
    }
}

fn connection(broker: &Broker, role: &str, version: Version) -> Connection {
    Connection {
        broker: BrokerAddress {
            host: broker.host().to_owned(),
            port: broker.port(),
        },
        version,
        client_id: common::unique_client_id(role),
        connect_timeout: Duration::from_secs(10),
    }
}

/// A database file of its own, removed when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "{}-{}.db",
            common::unique_client_id(name),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        Self(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// Rows of the readings table, read through a connection of its own.
    fn count(&self) -> i64 {
        let db = rusqlite::Connection::open(&self.0).unwrap();
        db.query_row("SELECT COUNT(*) FROM readings", [], |row| row.get(0))
            .unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A collector of `home/+/temperature` over MQTT 5 into `db`, started and subscribed.
async fn readings_collector(
    broker: &Broker,
    services: &Services,
    db: &TempDb,
) -> collector::Collector {
    let config = CollectorConfig {
        connection: connection(broker, "collector", Version::V5),
        filter: "home/+/temperature".to_owned(),
        db: db.path(),
        concurrency: collector::DEFAULT_CONCURRENCY,
    };
    collector::start(
        &config,
        collector::instrumentation(&config, services.collector.instrumentation()),
        &services.collector,
    )
    .await
    .unwrap()
}

/// The spans of the trace `trace_id` (hex).
fn in_trace<'a>(spans: &'a [RecordedSpan], trace_id: &str) -> Vec<&'a RecordedSpan> {
    spans
        .iter()
        .filter(|s| s.span.span_context.trace_id().to_string() == trace_id)
        .collect()
}

/// The one span of `trace` recorded by `service` with this kind and name.
fn one<'a>(
    spans: &'a [&'a RecordedSpan],
    service: &str,
    kind: SpanKind,
    name: &str,
) -> &'a RecordedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| &*s.service == service && s.span.span_kind == kind && s.span.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind:?} span `{name}` of {service}, trace has: {:#?}",
        spans
            .iter()
            .map(|s| format!("{} {:?} {}", s.service, s.span.span_kind, s.span.name))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn span_id(span: &RecordedSpan) -> SpanId {
    span.span.span_context.span_id()
}

fn string_attribute(span: &RecordedSpan, key: &str) -> Option<String> {
    report::attribute(&span.span.attributes, key).map(|v| v.as_str().into_owned())
}

/// Sensor -> gateway -> collector over `version`: every reading is acknowledged, forwarded and
/// stored once, and each stored row's trace links sensor publish -> gateway process -> gateway
/// publish -> collector process -> database insert, parent by parent.
async fn three_hops(version: Version, readings: u64) {
    let broker = Broker::start();
    let services = Services::new();
    let db = TempDb::new("readings");

    let collector_config = CollectorConfig {
        connection: connection(&broker, "collector", version),
        filter: gateway::CLOUD_TEMPLATE.to_owned(),
        db: db.path(),
        concurrency: collector::DEFAULT_CONCURRENCY,
    };
    let collector = collector::start(
        &collector_config,
        collector::instrumentation(&collector_config, services.collector.instrumentation()),
        &services.collector,
    )
    .await
    .expect("collector starts");
    let gateway_config = GatewayConfig {
        connection: connection(&broker, "gateway", version),
        filter: "home/#".to_owned(),
    };
    let gateway = gateway::start(
        &gateway_config,
        gateway::instrumentation(&gateway_config, services.gateway.instrumentation()).unwrap(),
    )
    .await
    .expect("gateway starts");
    let sensor_config = SensorConfig {
        connection: connection(&broker, "sensor", version),
        room: "kitchen".to_owned(),
        interval: Duration::from_millis(20),
        count: Some(readings),
    };
    let acknowledged = sensor::run(
        &sensor_config,
        sensor::instrumentation(&sensor_config, services.sensor.instrumentation()).unwrap(),
        std::future::pending(),
    )
    .await
    .expect("sensor runs");
    assert_eq!(acknowledged, readings, "every reading acknowledged");
    assert!(
        collector.wait_stored(readings, WAIT).await,
        "{} of {readings} readings stored",
        collector.stored()
    );
    gateway.shutdown().await;
    let rows = collector.rows().await.unwrap();
    collector.shutdown().await;
    services.shutdown();

    // The database file itself holds exactly N rows.
    assert_eq!(db.count(), readings as i64);
    assert_eq!(rows.len() as u64, readings);
    for row in &rows {
        assert_eq!(row.sensor_id, sensor_config.connection.client_id);
        assert_eq!(row.room.as_deref(), Some("kitchen"));
        assert!(row.topic.starts_with("cloud/") && row.topic.ends_with("/telemetry"));
    }
    let traces: HashSet<&str> = rows.iter().map(|row| row.trace_id.as_str()).collect();
    assert_eq!(traces.len() as u64, readings, "one trace per reading");

    let spans = services.recorder.spans();
    for row in &rows {
        let trace_spans = in_trace(&spans, &row.trace_id);
        let publish = one(
            &trace_spans,
            "temperature-sensor",
            SpanKind::Producer,
            "publish home/+/temperature",
        );
        let gateway_process = one(
            &trace_spans,
            "gateway",
            SpanKind::Consumer,
            "process home/#",
        );
        let forward = one(
            &trace_spans,
            "gateway",
            SpanKind::Producer,
            "publish cloud/+/telemetry",
        );
        let collector_process = one(
            &trace_spans,
            "collector",
            SpanKind::Consumer,
            "process cloud/+/telemetry",
        );
        let insert = one(
            &trace_spans,
            "collector",
            SpanKind::Client,
            "INSERT readings",
        );

        assert_eq!(
            publish.span.parent_span_id,
            SpanId::INVALID,
            "the sensor starts the trace"
        );
        assert_eq!(gateway_process.span.parent_span_id, span_id(publish));
        assert_eq!(forward.span.parent_span_id, span_id(gateway_process));
        assert_eq!(collector_process.span.parent_span_id, span_id(forward));
        assert_eq!(insert.span.parent_span_id, span_id(collector_process));
        for span in [publish, gateway_process, forward, collector_process, insert] {
            assert_eq!(span.span.status, Status::Unset, "{} failed", span.span.name);
        }

        assert_eq!(
            string_attribute(insert, "db.system.name").as_deref(),
            Some("sqlite")
        );
        assert_eq!(
            string_attribute(insert, "db.operation.name").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            string_attribute(insert, "db.collection.name").as_deref(),
            Some("readings")
        );
        let query = string_attribute(insert, "db.query.text").unwrap();
        assert_eq!(query, collector::INSERT);
        assert!(
            !query.contains(&row.sensor_id) && !query.contains(&row.temperature.to_string()),
            "db.query.text carries no values: {query}"
        );
    }

    // The demo's waterfall finds the same complete traces.
    let complete = report::complete_traces(
        &spans,
        &["temperature-sensor", "gateway", "collector"],
        "INSERT readings",
    );
    assert_eq!(complete.len() as u64, readings);
    let waterfall = report::waterfall(&spans, complete[0], false);
    assert!(waterfall.contains("7 spans, 3 services"), "{waterfall}");

    // The metrics summary has the messaging and database instruments of each service.
    let exports = services.metrics.get_finished_metrics().unwrap();
    let lines = report::metric_lines(&exports, &["temperature-sensor", "gateway", "collector"]);
    let count = |service: &str, metric: &str, attributes: &str| {
        lines
            .iter()
            .find(|l| l.service == service && l.metric == metric && l.attributes == attributes)
            .map(|l| l.count)
    };
    let n = readings as f64;
    assert_eq!(
        count(
            "temperature-sensor",
            "messaging.client.sent.messages",
            "publish home/+/temperature"
        ),
        Some(n)
    );
    assert_eq!(
        count("gateway", "messaging.process.duration", "process home/#"),
        Some(n)
    );
    assert_eq!(
        count(
            "collector",
            "db.client.operation.duration",
            "INSERT readings"
        ),
        Some(n)
    );
    assert_eq!(
        count("collector", "collector.readings", "outcome=stored"),
        Some(n)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_every_reading_is_stored_with_one_trace_across_three_hops() {
    three_hops(Version::V5, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt3_envelope_every_reading_is_stored_with_one_trace_across_three_hops() {
    three_hops(Version::V4 { envelope: true }, 5).await;
}

/// Readings of many sensors at once: the collector handles them concurrently, the writer thread
/// commits them in shared transactions, and each is stored once, its `INSERT readings` span a
/// child of its own `process` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readings_of_many_sensors_are_each_stored_once_under_their_own_span() {
    const SENSORS: u64 = 20;
    const PER_SENSOR: u64 = 10;
    let broker = Broker::start();
    let services = Services::new();
    let db = TempDb::new("concurrent");
    let collector = readings_collector(&broker, &services, &db).await;
    let sensors = connection(&broker, "sensors", Version::V5);
    let publisher = Publisher::start(&sensors, services.sensor.instrumentation().build(), None);
    publisher.connected(&sensors).await.unwrap();
    // All at once, so that the collector has many readings in hand.
    let mut published = tokio::task::JoinSet::new();
    for n in 0..PER_SENSOR {
        for sensor in 0..SENSORS {
            let publisher = publisher.clone();
            published.spawn(async move {
                let body = sensor::reading(&format!("s{sensor}"), n).to_string();
                publisher
                    .publish_confirmed(format!("home/room{sensor}/temperature"), false, body)
                    .await
            });
        }
    }
    while let Some(outcome) = published.join_next().await {
        outcome.unwrap().unwrap();
    }
    let readings = SENSORS * PER_SENSOR;
    assert!(
        collector.wait_stored(readings, WAIT).await,
        "{} of {readings} readings stored",
        collector.stored()
    );
    let rows = collector.rows().await.unwrap();
    collector.shutdown().await;
    publisher.shutdown().await;
    services.shutdown();
    assert_eq!(db.count(), readings as i64);
    let traces: HashSet<&str> = rows.iter().map(|row| row.trace_id.as_str()).collect();
    assert_eq!(
        traces.len() as u64,
        readings,
        "each reading once, in its own trace"
    );

    let spans = services.recorder.spans();
    for row in &rows {
        let trace_spans = in_trace(&spans, &row.trace_id);
        let process = one(
            &trace_spans,
            "collector",
            SpanKind::Consumer,
            "process home/+/temperature",
        );
        let insert = one(
            &trace_spans,
            "collector",
            SpanKind::Client,
            "INSERT readings",
        );
        assert_eq!(insert.span.parent_span_id, span_id(process));
        assert_eq!(insert.span.status, Status::Unset);
        assert!(
            insert.span.end_time <= process.span.end_time,
            "stored before acknowledged"
        );
    }
}

/// A message that is not a reading fails its handler (an error `process` span, counted as
/// rejected), nothing is stored, and the next reading is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_is_a_handler_error_and_the_collector_goes_on() {
    let broker = Broker::start();
    let services = Services::new();
    let db = TempDb::new("malformed");
    let collector = readings_collector(&broker, &services, &db).await;

    // mosquitto_pub: an independent, uninstrumented publisher.
    for payload in ["{not json", r#"{"sensor_id":"s1"}"#] {
        let out = broker.mosquitto_pub(&[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "home/attic/temperature",
            "-m",
            payload,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let good = sensor::reading("s2", 1).to_string();
    let out = broker.mosquitto_pub(&[
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "home/attic/temperature",
        "-m",
        &good,
    ]);
    assert!(out.status.success());

    assert!(
        collector.wait_stored(1, WAIT).await,
        "the good reading is stored"
    );
    assert_eq!(collector.rejected(), 2);
    let rows = collector.rows().await.unwrap();
    collector.shutdown().await;
    services.shutdown();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sensor_id, "s2");
    assert_eq!(db.count(), 1);

    let spans = services.recorder.spans();
    let process: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| s.span.name == "process home/+/temperature")
        .collect();
    assert_eq!(process.len(), 3);
    let failed: Vec<_> = process
        .iter()
        .filter(|s| matches!(s.span.status, Status::Error { .. }))
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "the two malformed messages fail their handler"
    );
    for span in failed {
        let error_type = string_attribute(span, "error.type").unwrap();
        assert!(error_type.ends_with("HandlerError"), "{error_type}");
        let failed_id = span_id(span);
        assert!(
            !spans
                .iter()
                .any(|s| s.span.name == "INSERT readings" && s.span.parent_span_id == failed_id),
            "nothing inserted for a malformed message"
        );
    }
    let exports = services.metrics.get_finished_metrics().unwrap();
    let lines = report::metric_lines(&exports, &["collector"]);
    assert!(lines.iter().any(|l| l.metric == "collector.readings"
        && l.attributes == "outcome=rejected"
        && l.count == 2.0));
    assert!(
        lines
            .iter()
            .any(|l| l.metric == "messaging.process.duration"
                && l.attributes.contains("error.type=")
                && l.count == 2.0),
        "{lines:#?}"
    );
}

/// The sensor leaves its last reading retained (JSON with `sensor_id`, `temperature`,
/// `humidity`, `timestamp`) and `offline` in its status topic after a clean shutdown; its last
/// will says `offline` too when the connection drops without DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_leaves_the_retained_last_reading_and_its_status() {
    let broker = Broker::start();
    let services = Services::new();
    let config = SensorConfig {
        connection: connection(&broker, "sensor", Version::V5),
        room: "hall".to_owned(),
        interval: Duration::from_millis(10),
        count: Some(3),
    };
    let acknowledged = sensor::run(
        &config,
        sensor::instrumentation(&config, services.sensor.instrumentation()).unwrap(),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(acknowledged, 3);

    let retained = broker
        .mosquitto_sub(&["-t", "home/hall/temperature", "-C", "1", "-W", "10"])
        .wait();
    let reading: serde_json::Value = serde_json::from_str(&retained[0]).unwrap();
    assert_eq!(reading["sensor_id"], config.connection.client_id.as_str());
    for field in ["temperature", "humidity", "timestamp"] {
        assert!(reading[field].is_number(), "{field} in {reading}");
    }
    // The retained status after the clean shutdown, then the last will when a connection with
    // the same will drops without DISCONNECT.
    let status = broker.mosquitto_sub(&["-t", &config.status_topic(), "-C", "2", "-W", "10"]);
    let again = Publisher::start(
        &config.connection,
        services.sensor.instrumentation().build(),
        Some(&sensor::last_will(&config)),
    );
    again.connected(&config.connection).await.unwrap();
    drop(again);
    let status = status.wait();
    assert_eq!(status.len(), 2, "{status:?}");
    let clean: serde_json::Value = serde_json::from_str(&status[0]).unwrap();
    assert_eq!(clean["status"], "offline");
    assert!(clean.get("reason").is_none(), "{clean}");
    let will: serde_json::Value = serde_json::from_str(&status[1]).unwrap();
    assert_eq!(will["status"], "offline");
    assert_eq!(will["reason"], "connection lost");
    services.shutdown();
}

fn closed_port() -> u16 {
    // Bound and dropped: nothing listens there right after.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// An unreachable broker is a clear error within the connection timeout, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_an_error_within_the_connect_timeout() {
    let services = Services::new();
    let connection = Connection {
        broker: BrokerAddress {
            host: "127.0.0.1".to_owned(),
            port: closed_port(),
        },
        version: Version::V5,
        client_id: "sensor-nowhere".to_owned(),
        connect_timeout: Duration::from_secs(1),
    };
    let config = SensorConfig {
        connection: connection.clone(),
        room: "hall".to_owned(),
        interval: Duration::from_millis(10),
        count: Some(1),
    };
    let started = Instant::now();
    let error = sensor::run(
        &config,
        sensor::instrumentation(&config, services.sensor.instrumentation()).unwrap(),
        std::future::pending(),
    )
    .await
    .expect_err("no broker there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        error
            .to_string()
            .contains("could not connect to the MQTT broker at 127.0.0.1:"),
        "{error}"
    );

    let collector = CollectorConfig {
        connection: Connection {
            client_id: "collector-nowhere".to_owned(),
            ..connection
        },
        filter: "home/+/temperature".to_owned(),
        db: ":memory:".to_owned(),
        concurrency: collector::DEFAULT_CONCURRENCY,
    };
    let started = Instant::now();
    let error = collector::start(
        &collector,
        collector::instrumentation(&collector, services.collector.instrumentation()),
        &services.collector,
    )
    .await
    .expect_err("no broker there");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(error.to_string().contains("could not connect"), "{error}");
}

/// Bad command lines are usage errors (exit code 2), good ones parse.
#[test]
fn command_line() {
    let parse = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Args::parse(&CONNECTION_FLAGS, &args).and_then(|args| cli::connection(&args, "id"))
    };
    for bad in [
        &["--broker", "localhost"][..],
        &["--broker", "localhost:0"],
        &["--broker", "localhost:99999"],
        &["--broker", ":1883"],
        &["--broker", "exa mple:1883"],
        &["--broker"],
        &["--mqtt", "4.5"],
        &["--envelope"],
        &["--connect-timeout", "soon"],
        &["--nonsense"],
        &["positional"],
    ] {
        assert!(
            matches!(parse(bad), Err(Failure::Usage(_))),
            "{bad:?} should be a usage error"
        );
        let code = cli::exit_code("usage", parse(bad).map(|_| ()));
        assert_eq!(
            format!("{code:?}"),
            format!("{:?}", std::process::ExitCode::from(2))
        );
    }
    let good = parse(&[
        "--broker=[::1]:1884",
        "--mqtt",
        "3",
        "--envelope",
        "--client-id",
        "x",
    ])
    .unwrap();
    assert_eq!(good.broker.host, "::1");
    assert_eq!(good.broker.port, 1884);
    assert_eq!(good.version, Version::V4 { envelope: true });
    assert_eq!(good.client_id, "x");
    let default = parse(&[]).unwrap();
    assert_eq!(default.broker.to_string(), "localhost:1883");
    assert_eq!(default.version, Version::V5);
}
