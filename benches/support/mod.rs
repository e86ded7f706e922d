//! Shared by the end-to-end benches (`throughput`, `memory`): a mosquitto broker of their own,
//! the telemetry set-ups they compare, and environment-variable knobs.
//!
//! The broker is not the one of `tests/common/broker.rs` on purpose: that fixture logs every
//! packet (`log_type all`, needed by tests that read the log), which would make the broker, not
//! the clients, the thing a throughput run measures.
#![allow(dead_code)]

use std::fmt;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};

/// A `usize` from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// A comma-separated list from the environment (lower-cased), or `default`.
pub fn env_list(name: &str, default: &[&str]) -> Vec<String> {
    match std::env::var(name) {
        Ok(value) => value
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(_) => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// A mosquitto process on a free loopback port with its own config file; SIGKILLed (and its
/// directory removed) on drop. Logging is off except errors, so the broker costs what it costs
/// in production.
pub struct Broker {
    child: Option<Child>,
    /// `sh -c 'read _; kill -9 PID; rm -rf DIR'` with its stdin piped from this process: if the
    /// bench dies without running `Drop` (killed, aborted), the pipe closes and the broker goes
    /// too.
    watchdog: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn mosquitto_binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if std::path::Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("mosquitto not found: apt-get install -y mosquitto");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl Broker {
    /// Starts mosquitto with `extra` config lines appended to the base config.
    pub fn start(extra: &[&str]) -> Broker {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("rumqttc-otel-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create broker dir");
        let mut last_error = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let mut conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n"
            );
            for line in extra {
                conf.push_str(line);
                conf.push('\n');
            }
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
            let log = std::fs::File::create(dir.join("broker.log")).expect("broker.log");
            let mut child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log)
                .spawn()
                .expect("spawn mosquitto");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "attempt {attempt}: mosquitto exited ({status}): {}",
                        std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let watchdog = Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "read _; kill -9 {} 2>/dev/null; rm -rf '{}'",
                            child.id(),
                            dir.display()
                        ))
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok();
                    return Broker {
                        child: Some(child),
                        watchdog,
                        port,
                        dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("attempt {attempt}: mosquitto not listening after 10 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start mosquitto: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: the broker stops reading and acknowledging; connections stay open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// CPU time the broker has used so far (see [`cpu_time_of`]).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(&self.pid().to_string())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process still dies from SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // Closing its stdin ends its `read`; the broker is already gone.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time used so far by the live threads of process `pid` (`"self"` for this one): the sum of
/// the first field of `/proc/PID/task/*/schedstat` (nanoseconds on CPU), so it has nanosecond
/// resolution instead of the 10 ms ticks of `/proc/PID/stat`.
pub fn cpu_time_of(pid: &str) -> Duration {
    let mut nanos = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                nanos += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(nanos)
}

/// A span exporter that drops every batch, counting the spans it was given, so a run can check
/// that the batch processor did not drop spans on a full queue (which would make tracing look
/// cheaper than it is).
#[derive(Clone, Default)]
pub struct NoopExporter {
    exported: Arc<AtomicU64>,
}

impl fmt::Debug for NoopExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoopExporter")
    }
}

impl SpanExporter for NoopExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.exported
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        drop(batch);
        std::future::ready(Ok(()))
    }
}

/// A metric exporter that drops everything. Behind a `PeriodicReader` with a one-hour interval
/// it is never called during a run; the SDK still aggregates every measurement.
#[derive(Debug, Default)]
pub struct NoopMetricExporter;

impl PushMetricExporter for NoopMetricExporter {
    fn export(
        &self,
        _metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(Ok(()))
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The telemetry pipeline a traced run records into.
pub struct Telemetry {
    pub tracer_provider: SdkTracerProvider,
    pub meter_provider: SdkMeterProvider,
    exported: Arc<AtomicU64>,
}

impl Telemetry {
    /// `recording`: `Sampler::AlwaysOn`, else `Sampler::AlwaysOff`. Either way spans that end
    /// go through the SDK's (thread-based) `BatchSpanProcessor` into a [`NoopExporter`]. The
    /// processor has the default batch size (512) and delay (5 s) but a queue of
    /// `BENCH_BSP_QUEUE` spans (default 65,536 instead of 2,048): at ~150,000 spans/s on two
    /// busy cores the default queue overflows and the SDK drops spans, which would make tracing
    /// look cheaper than it is. [`Telemetry::flush_and_count`] tells whether any were dropped.
    /// And metrics go to a real `SdkMeterProvider` whose only reader is a
    /// `PeriodicReader` with a one-hour interval into a [`NoopMetricExporter`], so it never
    /// collects during a run: every instrument aggregates every measurement, as in
    /// production, but nothing is exported. (The SDK's `ManualReader` would do the same but
    /// needs its `experimental_metrics_custom_reader` feature.)
    pub fn new(recording: bool) -> Self {
        Self::with_queue(recording, env_usize("BENCH_BSP_QUEUE", 65_536))
    }

    /// Like [`Telemetry::new`] with a batch-processor queue of `queue` spans (the SDK's default
    /// is 2,048).
    pub fn with_queue(recording: bool, queue: usize) -> Self {
        let exporter = NoopExporter::default();
        let exported = Arc::clone(&exporter.exported);
        let tracer_provider = SdkTracerProvider::builder()
            .with_sampler(if recording {
                Sampler::AlwaysOn
            } else {
                Sampler::AlwaysOff
            })
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(
                        BatchConfigBuilder::default()
                            .with_max_queue_size(queue)
                            .build(),
                    )
                    .build(),
            )
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(NoopMetricExporter)
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        Self {
            tracer_provider,
            meter_provider,
            exported,
        }
    }

    /// Flushes the batch processor and returns how many spans reached the exporter.
    pub fn flush_and_count(&self) -> u64 {
        let _ = self.tracer_provider.force_flush();
        self.exported.load(Ordering::Relaxed)
    }

    pub fn shutdown(self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

/// A fixed, valid W3C traceparent, for the wire-only variants.
pub const FIXED_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A process-unique suffix for client ids and topics.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `nproc` and the CPU model, for the header of a report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), load average {load}")
}

/// Whether this run was started by `cargo test --all-targets`, which runs bench binaries
/// without the `--bench` argument that `cargo bench` passes: the benches then do a smoke run
/// with tiny sizes, which checks in seconds that the harness works.
pub fn is_smoke_run() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// An event loop of any of the four kinds the benches drive: plain or traced, MQTT 3.1.1 or 5.
// The variants stay unboxed so that plain and traced loops are polled the same way.
#[allow(clippy::large_enum_variant)]
pub enum Loop {
    V4(rumqttc::EventLoop),
    V4T(rumqttc_opentelemetry::v4::TracedEventLoop),
    V5(rumqttc::v5::EventLoop),
    V5T(rumqttc_opentelemetry::v5::TracedEventLoop),
}

/// The events the benches count, from any of the four event loop kinds.
#[derive(Debug, PartialEq, Eq)]
pub enum Ev {
    ConnAck,
    SubAck,
    OutgoingPublish,
    PubAck,
    Publish,
    Other,
}

fn ev4(event: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Outgoing, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Ev::ConnAck,
        Event::Incoming(Packet::SubAck(_)) => Ev::SubAck,
        Event::Incoming(Packet::PubAck(_)) => Ev::PubAck,
        Event::Incoming(Packet::Publish(_)) => Ev::Publish,
        Event::Outgoing(Outgoing::Publish(_)) => Ev::OutgoingPublish,
        _ => Ev::Other,
    }
}

fn ev5(event: rumqttc::v5::Event) -> Ev {
    use rumqttc::Outgoing;
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::Packet;
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Ev::ConnAck,
        Event::Incoming(Packet::SubAck(_)) => Ev::SubAck,
        Event::Incoming(Packet::PubAck(_)) => Ev::PubAck,
        Event::Incoming(Packet::Publish(_)) => Ev::Publish,
        Event::Outgoing(Outgoing::Publish(_)) => Ev::OutgoingPublish,
        _ => Ev::Other,
    }
}

impl Loop {
    /// Polls once and classifies the event.
    pub async fn next(&mut self) -> Result<Ev, String> {
        match self {
            Loop::V4(el) => el.poll().await.map(ev4).map_err(|e| e.to_string()),
            Loop::V4T(el) => el.poll().await.map(ev4).map_err(|e| e.to_string()),
            Loop::V5(el) => el.poll().await.map(ev5).map_err(|e| e.to_string()),
            Loop::V5T(el) => el.poll().await.map(ev5).map_err(|e| e.to_string()),
        }
    }
}
