//! A data collector: subscribes the readings and stores each in SQLite, inside an
//! `INSERT readings` database span (semconv `db.*` attributes) that is a child of the message's
//! `process` span. Up to `--concurrency` readings are handled at once; their inserts go to one
//! writer thread that commits those waiting together. A message that is not a reading fails its handler (the `process` span ends as
//! an error and is counted), is not stored, and the collector goes on.
//!
//! ```text
//! # straight from the sensors
//! cargo run --features examples --example collector -- --db readings.db
//! # behind the gateway (the three-hop set-up)
//! cargo run --features examples --example collector -- --topic 'cloud/+/telemetry'
//! ```
//!
//! Runs until Ctrl-C. Exit codes: 0 done, 1 broker unreachable within `--connect-timeout` or
//! database error, 2 bad command line.

mod common;

use std::process::ExitCode;

use common::cli::{self, Args, CONNECTION_FLAGS, Failure, value};
use common::collector::{self, CollectorConfig};
use common::telemetry::{self, Exporter, Service, Sinks};

const USAGE: &str = "\
usage: collector [options]

  --broker HOST:PORT        MQTT broker (default localhost:1883)
  --mqtt 3|5                MQTT version (default 5: trace context in user properties)
  --envelope                with --mqtt 3: the publishers use the trace-context envelope
                            (it is recognised on receipt either way)
  --client-id ID            client id (default data-collector)
  --topic FILTER            what to store (default home/+/temperature; behind the gateway:
                            cloud/+/telemetry)
  --db PATH                 SQLite database file (default readings.db; :memory: for none)
  --concurrency N           readings handled at the same time (default 16); raise it when
                            inserts wait on a slow disk, 1 stores them strictly in turn
  --connect-timeout DUR     give up when the broker does not answer (default 5s)
  --exporter stdout|otlp|none
                            where spans and metrics go (default stdout, or otlp when
                            OTEL_EXPORTER_OTLP_ENDPOINT is set; otlp needs --features otlp)

Logs go to stderr, filtered by RUST_LOG (default info).";

fn main() -> ExitCode {
    common::run_main(USAGE, run)
}

async fn run(args: Vec<String>) -> Result<(), Failure> {
    let mut flags = CONNECTION_FLAGS.to_vec();
    flags.extend([
        value("topic"),
        value("db"),
        value("concurrency"),
        value("exporter"),
    ]);
    let args = Args::parse(&flags, &args)?;
    let config = CollectorConfig {
        connection: cli::connection(&args, "data-collector")?,
        filter: args.get("topic").unwrap_or("home/+/temperature").to_owned(),
        db: args.get("db").unwrap_or("readings.db").to_owned(),
        concurrency: usize::try_from(
            args.count("concurrency", collector::DEFAULT_CONCURRENCY as u64)?,
        )
        .unwrap_or(usize::MAX),
    };
    rumqttc_opentelemetry::topic::validate_topic_filter(&config.filter)
        .map_err(|error| cli::usage(format!("`--topic`: {error}")))?;
    let exporter = Exporter::choose(&args, Exporter::Stdout)?;
    let service = Service::new("collector", &Sinks::exporter(exporter))?;
    telemetry::init_logs_and_traces("info", &service);
    let instrumentation = collector::instrumentation(&config, service.instrumentation());
    let outcome = async {
        let collector = collector::start(&config, instrumentation, &service).await?;
        cli::ctrl_c().await;
        tracing::info!("stopping");
        let (stored, rejected) = (collector.stored(), collector.rejected());
        collector.shutdown().await;
        eprintln!(
            "{stored} reading(s) stored in {}, {rejected} message(s) rejected",
            config.db
        );
        Ok::<(), common::BoxError>(())
    }
    .await;
    service.shutdown();
    Ok(outcome?)
}
