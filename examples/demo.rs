//! The one-command demo: a temperature sensor, a gateway and a collector, each a service of its
//! own (`service.name` = `temperature-sensor`, `gateway`, `collector`), talk over MQTT in one
//! process; then the demo prints the waterfall of one complete trace
//! (sensor publish -> gateway process -> gateway publish -> collector process -> SQLite insert)
//! and a summary of the metrics, and exits.
//!
//! ```text
//! scripts/demo.sh                      # = cargo run --release --features demo --example demo
//! scripts/demo.sh --readings 10 --mqtt 3
//! scripts/demo.sh --broker localhost:1883   # any broker instead of the embedded one
//! ```
//!
//! Without `--broker` it starts rumqttd 0.20 inside the process (feature `embedded-broker`) on
//! a free loopback port. Spans and metrics are always recorded in memory for the waterfall and
//! the table; `--verbose` also prints them with the stdout exporter, and with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set (and `--features otlp`) they also go over OTLP, so the same
//! run shows up in Jaeger, Tempo or an OpenTelemetry Collector.

mod common;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use common::cli::{self, Args, Failure, switch, value};
use common::collector::{self, CollectorConfig};
use common::gateway::{self, GatewayConfig};
use common::mqtt::{BrokerAddress, Connection, Version};
use common::report;
use common::sensor::{self, SensorConfig};
use common::telemetry::{self, Exporter, Recorder, Service, Sinks};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;

const USAGE: &str = "\
usage: demo [options]            (scripts/demo.sh [options])

  --readings N              how many readings the sensor publishes (default 5)
  --interval DURATION       pause between readings: 200ms, 1s (default 200ms)
  --mqtt 3|5                MQTT version (default 5; with 3 the trace context travels in the
                            payload envelope)
  --broker HOST:PORT        use this broker instead of the embedded rumqttd
  --db PATH                 SQLite database of the collector (default :memory:)
  --connect-timeout DUR     give up when the broker does not answer (default 5s)
  --verbose                 also print every span and metric with the stdout exporter
  --exporter stdout|otlp|none
                            where spans and metrics go besides the waterfall (default none,
                            or otlp when OTEL_EXPORTER_OTLP_ENDPOINT is set; otlp needs
                            --features otlp)

Logs go to stderr, filtered by RUST_LOG (default warn).";

const SERVICES: [&str; 3] = ["temperature-sensor", "gateway", "collector"];

/// How long the readings may take from the sensor to the database once all are published.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    common::run_main(USAGE, run)
}

async fn run(args: Vec<String>) -> Result<(), Failure> {
    let flags = [
        value("readings"),
        value("interval"),
        value("mqtt"),
        switch("envelope"),
        value("broker"),
        value("db"),
        value("connect-timeout"),
        switch("verbose"),
        value("exporter"),
    ];
    let args = Args::parse(&flags, &args)?;
    let readings = args.count("readings", 5)?;
    let interval = args.duration("interval", Duration::from_millis(200))?;
    // MQTT 3.1.1 has no user properties: the demo always uses the envelope there, or the
    // waterfall would end at the first hop.
    let version = match args.version()? {
        Version::V4 { .. } => Version::V4 { envelope: true },
        Version::V5 => Version::V5,
    };
    let external = args
        .get("broker")
        .map(BrokerAddress::parse)
        .transpose()
        .map_err(cli::usage)?;
    let connect_timeout = args.duration("connect-timeout", Duration::from_secs(5))?;
    let db = args.get("db").unwrap_or(":memory:").to_owned();
    let default_exporter = if args.has("verbose") {
        Exporter::Stdout
    } else {
        Exporter::None
    };
    let exporter = Exporter::choose(&args, default_exporter)?;
    telemetry::init_logs("warn,rumqttd=off");

    let (broker, where_) = match external {
        Some(broker) => (broker.clone(), format!("the broker at {broker}")),
        None => {
            let address = common::embedded_broker::start(version)?;
            let broker = BrokerAddress {
                host: address.ip().to_string(),
                port: address.port(),
            };
            (
                broker.clone(),
                format!("an embedded rumqttd broker on {broker}"),
            )
        }
    };
    println!(
        "rumqttc-opentelemetry demo: temperature-sensor -> gateway -> collector, {readings} \
         reading(s) over {version}, on {where_}"
    );
    if exporter == Exporter::Otlp {
        println!(
            "spans and metrics also go over OTLP to {}",
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
        );
    }

    let recorder = Recorder::default();
    let metrics = InMemoryMetricExporter::default();
    let sinks = Sinks {
        exporter,
        recorder: Some(recorder.clone()),
        metrics: Some(metrics.clone()),
    };
    let services = SERVICES
        .iter()
        .map(|name| Service::new(name, &sinks))
        .collect::<Result<Vec<_>, _>>()?;
    let [sensor_service, gateway_service, collector_service] = &services[..] else {
        unreachable!("three services");
    };

    // Client ids unique per run, so that a demo on a shared broker takes no one's session.
    let pid = std::process::id();
    let connection = |role: &str| Connection {
        broker: broker.clone(),
        version,
        client_id: format!("demo-{role}-{pid}"),
        connect_timeout,
    };
    let outcome = async {
        let collector_config = CollectorConfig {
            connection: connection("collector"),
            filter: gateway::CLOUD_TEMPLATE.to_owned(),
            db: db.clone(),
            concurrency: collector::DEFAULT_CONCURRENCY,
        };
        let collector = collector::start(
            &collector_config,
            collector::instrumentation(&collector_config, collector_service.instrumentation()),
            collector_service,
        )
        .await?;
        let gateway_config = GatewayConfig {
            connection: connection("gateway"),
            filter: "home/#".to_owned(),
        };
        let gateway = gateway::start(
            &gateway_config,
            gateway::instrumentation(&gateway_config, gateway_service.instrumentation())?,
        )
        .await?;
        let sensor_config = SensorConfig {
            connection: connection("sensor"),
            room: "living-room".to_owned(),
            interval,
            count: Some(readings),
        };
        let acknowledged = sensor::run(
            &sensor_config,
            sensor::instrumentation(&sensor_config, sensor_service.instrumentation())?,
            std::future::pending(),
        )
        .await?;
        let delivered = collector.wait_stored(acknowledged, DELIVERY_TIMEOUT).await;
        gateway.shutdown().await;
        let rows = collector.rows().await?;
        collector.shutdown().await;
        Ok::<_, common::BoxError>((acknowledged, delivered, rows))
    }
    .await;
    // Ends the providers: metrics are exported to memory (and stdout / OTLP), spans flushed.
    for service in &services {
        service.shutdown();
    }
    let (acknowledged, delivered, rows) = outcome?;

    let spans = recorder.spans();
    let traces = report::complete_traces(&spans, &SERVICES, "INSERT readings");
    println!(
        "\n{acknowledged} of {readings} reading(s) acknowledged by the broker, {} row(s) in \
         SQLite ({db}), {} complete trace(s) sensor -> gateway -> collector\n",
        rows.len(),
        traces.len()
    );
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match traces.last() {
        Some(trace) => print!("{}", report::waterfall(&spans, *trace, colour)),
        None => println!("no complete trace was recorded"),
    }
    let exports = metrics.get_finished_metrics().unwrap_or_default();
    let lines = report::metric_lines(&exports, &SERVICES);
    println!("\nmetrics (count; min / p50 / max of histograms, p50 estimated from the buckets)\n");
    print!("{}", report::metrics_table(&lines));

    if !delivered || traces.len() < rows.len() || (rows.len() as u64) < readings {
        return Err(format!(
            "incomplete: {} of {readings} reading(s) stored, {} complete trace(s)",
            rows.len(),
            traces.len()
        )
        .into());
    }
    Ok(())
}
