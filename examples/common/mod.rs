//! Code shared by the examples (`temperature_sensor`, `gateway`, `collector`, `demo`) and by
//! `tests/examples_e2e.rs`, which includes this module with
//! `#[path = "../examples/common/mod.rs"] mod example_common;` and runs the same sensor, gateway
//! and collector in-process against a mosquitto broker.
//!
//! - [`cli`]: a small command-line parser (no clap: the examples need a few flags only).
//! - [`telemetry`]: one tracer and meter provider per service (`service.name`), exporting to
//!   stdout, OTLP (feature `otlp`) or nowhere, and optionally to an in-memory [`telemetry::Recorder`];
//!   logs through `tracing-subscriber` with `RUST_LOG`.
//! - [`mqtt`]: one publisher / subscriber type over both protocol versions (`--mqtt 3|5`).
//! - [`sensor`], [`gateway`], [`collector`]: the three roles.
//! - [`report`]: the waterfall of one trace and the metrics summary the demo prints.
//! - `embedded_broker` (feature `embedded-broker`): rumqttd in a thread, for the demo.

// Each example uses only a part of this module.
#![allow(dead_code)]

pub mod cli;
pub mod collector;
#[cfg(feature = "embedded-broker")]
pub mod embedded_broker;
pub mod gateway;
pub mod mqtt;
pub mod report;
pub mod sensor;
pub mod telemetry;

/// The error type of the examples: anything, with a message for the user.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of the examples.
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Runs `main` on a multi-thread Tokio runtime and turns its outcome into the process exit
/// code: 0 on success, 2 for a usage error (the usage text is printed), 1 for any other error
/// (its message is printed). `--help` prints the usage and exits 0.
pub fn run_main<F, Fut>(usage: &str, main: F) -> std::process::ExitCode
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), cli::Failure>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{usage}");
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(main(args));
    // Tasks still running (a connection being torn down) must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    cli::exit_code(usage, outcome)
}
