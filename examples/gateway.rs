//! A home gateway: one MQTT connection subscribes `home/#`, enriches each JSON reading (room,
//! gateway id, forwarding time) and republishes it to `cloud/{device}/telemetry`. The forwarding
//! publish is a child of the gateway's `process home/#` span, itself a child of the sensor's
//! publish span, so one trace runs sensor -> gateway -> collector.
//!
//! ```text
//! cargo run --features examples --example gateway -- --broker localhost:1883
//! ```
//!
//! Runs until Ctrl-C, then finishes the messages it has, flushes and disconnects. Exit codes:
//! 0 done, 1 broker unreachable within `--connect-timeout`, 2 bad command line.

mod common;

use std::process::ExitCode;

use common::cli::{self, Args, CONNECTION_FLAGS, Failure, value};
use common::gateway::{self, GatewayConfig};
use common::telemetry::{self, Exporter, Service, Sinks};

const USAGE: &str = "\
usage: gateway [options]

  --broker HOST:PORT        MQTT broker (default localhost:1883)
  --mqtt 3|5                MQTT version (default 5: trace context in user properties)
  --envelope                with --mqtt 3: carry the trace context in a payload envelope
  --client-id ID            client id, also written into the forwarded readings
                            (default home-gateway)
  --topic FILTER            what to forward (default home/#)
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
    flags.extend([value("topic"), value("exporter")]);
    let args = Args::parse(&flags, &args)?;
    let config = GatewayConfig {
        connection: cli::connection(&args, "home-gateway")?,
        filter: args.get("topic").unwrap_or("home/#").to_owned(),
    };
    rumqttc_opentelemetry::topic::validate_topic_filter(&config.filter)
        .map_err(|error| cli::usage(format!("`--topic`: {error}")))?;
    let exporter = Exporter::choose(&args, Exporter::Stdout)?;
    let service = Service::new("gateway", &Sinks::exporter(exporter))?;
    telemetry::init_logs_and_traces("info", &service);
    let instrumentation = gateway::instrumentation(&config, service.instrumentation())?;
    let outcome = async {
        let gateway = gateway::start(&config, instrumentation).await?;
        cli::ctrl_c().await;
        tracing::info!("stopping");
        gateway.shutdown().await;
        Ok::<(), common::BoxError>(())
    }
    .await;
    service.shutdown();
    Ok(outcome?)
}
