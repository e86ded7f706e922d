//! A temperature sensor: publishes a JSON reading (`sensor_id`, `temperature`, `humidity`,
//! `timestamp`) to `home/{room}/temperature` every `--interval`, retained and at QoS 1, with a
//! last will that sets `device/{id}/status` to offline when the connection drops. Each publish
//! is a PRODUCER span `publish home/+/temperature` that ends when the broker acknowledges it.
//!
//! ```text
//! cargo run --features examples --example temperature_sensor -- --broker localhost:1883 --count 10
//! ```
//!
//! After `--count` readings (or Ctrl-C) it publishes `offline`, flushes and disconnects, so no
//! reading is lost. Exit codes: 0 done, 1 broker unreachable within `--connect-timeout`, 2 bad
//! command line.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::cli::{self, Args, CONNECTION_FLAGS, Failure, value};
use common::sensor::{self, SensorConfig};
use common::telemetry::{self, Exporter, Service, Sinks};

const USAGE: &str = "\
usage: temperature_sensor [options]

  --broker HOST:PORT        MQTT broker (default localhost:1883)
  --mqtt 3|5                MQTT version (default 5: trace context in user properties)
  --envelope                with --mqtt 3: carry the trace context in a payload envelope
  --client-id ID            client and sensor id (default temp-sensor-001)
  --room ROOM               readings go to home/ROOM/temperature (default living-room)
  --interval DURATION       pause between readings: 2s, 500ms (default 2s)
  --count N                 stop after N readings (default: run until Ctrl-C)
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
        value("room"),
        value("interval"),
        value("count"),
        value("exporter"),
    ]);
    let args = Args::parse(&flags, &args)?;
    let config = SensorConfig {
        connection: cli::connection(&args, "temp-sensor-001")?,
        room: common::gateway::topic_level(args.get("room").unwrap_or("living-room")),
        interval: args.duration("interval", Duration::from_secs(2))?,
        count: args
            .has("count")
            .then(|| args.count("count", 1))
            .transpose()?,
    };
    let exporter = Exporter::choose(&args, Exporter::Stdout)?;
    telemetry::init_logs("info");

    let service = Service::new("temperature-sensor", &Sinks::exporter(exporter))?;
    let instrumentation = sensor::instrumentation(&config, service.instrumentation())?;
    let outcome = sensor::run(&config, instrumentation, cli::ctrl_c()).await;
    service.shutdown();
    let acknowledged = outcome?;
    eprintln!("{acknowledged} reading(s) acknowledged by the broker");
    Ok(())
}
