//! End-to-end throughput: plain rumqttc against this crate's traced clients, against the same
//! mosquitto, in the same run, interleaved.
//!
//! One publisher sends N messages of 64 B to one subscriber through a local mosquitto. The clock
//! runs from the first `publish().await` to the N-th delivery at the subscriber (QoS 1: and the
//! N-th PUBACK at the publisher). Every run uses fresh clients (and, for traced runs, a fresh
//! tracer and meter provider). Per scenario (TCP mode x version x QoS) the variants run
//! interleaved,
//! `plain, rec, off, wire, ...`, and that round is repeated `THROUGHPUT_RUNS` times; the table
//! shows medians and the ratio of each variant's median to plain's.
//!
//! Variants:
//! - `plain`: `rumqttc::AsyncClient` / `rumqttc::v5::AsyncClient` on both sides.
//! - `rec`: traced publisher and traced subscriber; `Sampler::AlwaysOn`, the SDK's batch span
//!   processor (default batch size and delay, queue raised to 65,536 so no span is dropped) into
//!   an exporter that drops everything, and a real `SdkMeterProvider` whose only reader never
//!   collects during a run (a `PeriodicReader` with a one-hour interval into a no-op exporter:
//!   every measurement is aggregated, nothing is exported). MQTT 3.1.1 runs use
//!   `V4Propagation::Envelope`, so the context travels as it does on MQTT 5.
//! - `off`: as `rec` with `Sampler::AlwaysOff` (non-recording spans; metrics still recorded).
//! - `wire`: plain rumqttc on both sides, but every publish carries what a traced one puts on the
//!   wire: a fixed `traceparent` user property (MQTT 5) or a fixed envelope (MQTT 3.1.1). No
//!   spans, no metrics: the cost of the bytes alone.
//! - `rec-v4none` (MQTT 3.1.1 only): as `rec` with the default `V4Propagation::None` (payload
//!   unchanged, spans and metrics only).
//! - `noop`: traced clients on OpenTelemetry's global no-op tracer
//!   and meter (no provider installed): what this crate costs by itself, without the SDK.
//!
//! Shapes: `spawned` publishes from a task spawned on the runtime, like the event loops; `main`
//! publishes from the task `block_on` runs (the main task of a `#[tokio::main]` program, which
//! is not a worker thread), the shape of many device programs: every request then crosses
//! threads to the event loop. Both run by default.
//!
//! TCP modes: `Nagle` is rumqttc's default (`tcp_nodelay` false). At QoS 1 its timing (Nagle plus
//! delayed ACKs, with an in-flight window of 100 for v4 and mosquitto's receive maximum of 20 for
//! v5) paces the run more than CPU does, and a slower client can come out faster. `nodelay` sets
//! TCP_NODELAY on every client and measures what tracing costs in CPU. Both run by default.
//!
//! Run everything (the full numbers, ~25 minutes on 2 cores):
//!
//! ```text
//! cargo bench --bench throughput
//! ```
//!
//! Knobs (environment variables): `THROUGHPUT_QOS0_N` (200000), `THROUGHPUT_QOS1_N` (50000),
//! `THROUGHPUT_RUNS` (5), `THROUGHPUT_PAYLOAD` (64), `THROUGHPUT_CAP` (request channel capacity,
//! 10), `THROUGHPUT_VERSIONS` (`v4,v5`), `THROUGHPUT_QOS` (`0,1`), `THROUGHPUT_VARIANTS`
//! (`plain,rec,off,noop,wire,rec-v4none`), `THROUGHPUT_NODELAY` (`0,1`: Nagle, TCP_NODELAY),
//! `THROUGHPUT_SHAPE` (`spawned,main`), `THROUGHPUT_WARMUP` (1: one discarded round at N/10), `BENCH_BSP_QUEUE` (65536),
//! `THROUGHPUT_IDLE_TIMEOUT_S` (20: a run fails when nothing arrives for that long),
//! `THROUGHPUT_BROKER_PORT` (use a broker already listening on 127.0.0.1:PORT instead of
//! starting one, e.g. to keep it out of `perf stat`). A quick smoke run:
//!
//! ```text
//! THROUGHPUT_QOS0_N=20000 THROUGHPUT_QOS1_N=5000 THROUGHPUT_RUNS=2 cargo bench --bench throughput
//! ```
//!
//! Run without `--bench` (`cargo test --release --bench throughput`, as CI does), it makes one
//! round of every scenario with TCP_NODELAY and a few hundred messages: it proves the bench runs, and its
//! numbers mean nothing.
//!
//! The lines at the end compare each scenario with the targets of the hot-path work (the
//! project's issue 12); they report, and never fail the run.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc_opentelemetry::propagation::envelope;
use rumqttc_opentelemetry::{Instrumentation, V4Propagation, v4, v5};

use support::{Broker, Ev, FIXED_TRACEPARENT, Loop, Telemetry, env_list, env_usize, unique};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

impl Version {
    fn label(self) -> &'static str {
        match self {
            Version::V4 => "v4 (3.1.1)",
            Version::V5 => "v5",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Plain,
    Recording,
    NonRecording,
    Wire,
    RecordingV4None,
    Noop,
}

impl Variant {
    fn key(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Recording => "rec",
            Variant::NonRecording => "off",
            Variant::Wire => "wire",
            Variant::RecordingV4None => "rec-v4none",
            Variant::Noop => "noop",
        }
    }

    fn from_key(key: &str) -> Variant {
        match key {
            "plain" => Variant::Plain,
            "rec" => Variant::Recording,
            "off" => Variant::NonRecording,
            "wire" => Variant::Wire,
            "rec-v4none" => Variant::RecordingV4None,
            "noop" => Variant::Noop,
            other => panic!("unknown variant {other:?} (plain, rec, off, wire, rec-v4none, noop)"),
        }
    }

    fn describe(self, version: Version) -> &'static str {
        match (self, version) {
            (Variant::Plain, _) => "plain rumqttc",
            (Variant::Recording, Version::V4) => "traced, recording, envelope",
            (Variant::Recording, Version::V5) => "traced, recording",
            (Variant::NonRecording, Version::V4) => "traced, non-recording, envelope",
            (Variant::NonRecording, Version::V5) => "traced, non-recording",
            (Variant::Wire, Version::V4) => "wire only (fixed envelope)",
            (Variant::Wire, Version::V5) => "wire only (fixed traceparent)",
            (Variant::RecordingV4None, _) => "traced, recording, no propagation",
            (Variant::Noop, Version::V4) => "traced, no-op providers, envelope",
            (Variant::Noop, Version::V5) => "traced, no-op providers",
        }
    }

    fn traced(self) -> bool {
        matches!(
            self,
            Variant::Recording | Variant::NonRecording | Variant::RecordingV4None | Variant::Noop
        )
    }

    fn recording(self) -> bool {
        matches!(self, Variant::Recording | Variant::RecordingV4None)
    }

    fn applies_to(self, version: Version) -> bool {
        !(self == Variant::RecordingV4None && version == Version::V5)
    }
}

#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V4T(v4::TracedClient),
    V5(rumqttc::v5::AsyncClient),
    V5T(v5::TracedClient),
}

/// What one publish sends: the payload (and for the v5 wire variant, the properties).
#[derive(Clone)]
enum Message {
    V4(Vec<u8>),
    V5(Bytes, Option<PublishProperties>),
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Client {
    /// One publish, through the API an application would use (`publish`, or
    /// `publish_with_properties` for the v5 wire variant). The topic is a fresh `String` and the
    /// payload a clone (a new `Vec` for v4, a ref-counted `Bytes` for v5) for every variant.
    async fn publish(&self, topic: &str, qos: u8, message: &Message) -> Result<(), String> {
        let result = match (self, message) {
            (Client::V4(c), Message::V4(p)) => c.publish(topic, qos4(qos), false, p.clone()).await,
            (Client::V4T(c), Message::V4(p)) => c.publish(topic, qos4(qos), false, p.clone()).await,
            (Client::V5(c), Message::V5(p, None)) => {
                return c
                    .publish(topic, qos5(qos), false, p.clone())
                    .await
                    .map_err(|e| e.to_string());
            }
            (Client::V5(c), Message::V5(p, Some(props))) => {
                return c
                    .publish_with_properties(topic, qos5(qos), false, p.clone(), props.clone())
                    .await
                    .map_err(|e| e.to_string());
            }
            (Client::V5T(c), Message::V5(p, _)) => {
                return c
                    .publish(topic, qos5(qos), false, p.clone())
                    .await
                    .map_err(|e| e.to_string());
            }
            _ => unreachable!("message type matches the client version"),
        };
        result.map_err(|e| e.to_string())
    }

    async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V4T(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V5T(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(drop),
            Client::V4T(c) => c.disconnect().await.map_err(drop),
            Client::V5(c) => c.disconnect().await.map_err(drop),
            Client::V5T(c) => c.disconnect().await.map_err(drop),
        };
    }
}

fn make_client(
    version: Version,
    config: &Config,
    instrumentation: Option<&Instrumentation>,
) -> (Client, Loop) {
    let (port, cap) = (config.port, config.cap);
    let id = unique("bench");
    match version {
        Version::V4 => {
            let options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
            let (client, mut el) = match instrumentation {
                None => {
                    let (c, l) = rumqttc::AsyncClient::new(options, cap);
                    (Client::V4(c), Loop::V4(l))
                }
                Some(i) => {
                    let (c, l) = v4::TracedClient::with_instrumentation(options, cap, i.clone());
                    (Client::V4T(c), Loop::V4T(l))
                }
            };
            if config.nodelay {
                match &mut el {
                    Loop::V4(l) => l.network_options.set_tcp_nodelay(true),
                    Loop::V4T(l) => l.inner_mut().network_options.set_tcp_nodelay(true),
                    _ => unreachable!(),
                }
            }
            (client, el)
        }
        Version::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
            if config.nodelay {
                let mut network = options.network_options();
                network.set_tcp_nodelay(true);
                options.set_network_options(network);
            }
            match instrumentation {
                None => {
                    let (c, l) = rumqttc::v5::AsyncClient::new(options, cap);
                    (Client::V5(c), Loop::V5(l))
                }
                Some(i) => {
                    let (c, l) = v5::TracedClient::with_instrumentation(options, cap, i.clone());
                    (Client::V5T(c), Loop::V5T(l))
                }
            }
        }
    }
}

/// Counters one event-loop task updates and the controlling task reads.
#[derive(Default)]
struct Progress {
    connected: AtomicBool,
    subacks: AtomicU64,
    count: AtomicU64,
    done_at: Mutex<Option<Instant>>,
    error: Mutex<Option<String>>,
    stopping: AtomicBool,
}

/// Drives an event loop until it fails; counts `Publish` (subscriber) or `PubAck` (publisher)
/// events and notes the instant the `target`-th arrived.
fn drive(
    mut el: Loop,
    progress: Arc<Progress>,
    count_publishes: bool,
    target: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match el.next().await {
                Ok(Ev::ConnAck) => progress.connected.store(true, Ordering::Release),
                Ok(Ev::SubAck) => {
                    progress.subacks.fetch_add(1, Ordering::Release);
                }
                Ok(Ev::Publish) if count_publishes => {
                    if progress.count.fetch_add(1, Ordering::AcqRel) + 1 == target {
                        *progress.done_at.lock().unwrap() = Some(Instant::now());
                    }
                }
                Ok(Ev::PubAck) if !count_publishes => {
                    if progress.count.fetch_add(1, Ordering::AcqRel) + 1 == target {
                        *progress.done_at.lock().unwrap() = Some(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    if !progress.stopping.load(Ordering::Acquire) {
                        *progress.error.lock().unwrap() = Some(error);
                    }
                    break;
                }
            }
        }
    })
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Where the timed publishes are made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A task spawned on the runtime.
    Spawned,
    /// The task `block_on` runs (the main task of `#[tokio::main]`).
    Main,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Spawned => "spawned",
            Shape::Main => "main",
        }
    }
}

struct Config {
    port: u16,
    shape: Shape,
    payload: usize,
    cap: usize,
    broker_pid: Option<u32>,
    nodelay: bool,
    idle_timeout: Duration,
}

struct RunResult {
    elapsed: Duration,
    /// CPU time of this process (all threads) during the timed part.
    cpu: Duration,
    /// CPU time of the broker during the timed part (when this bench started it).
    broker_cpu: Option<Duration>,
    /// Spans expected and spans that reached the exporter (recording runs only).
    spans: Option<(u64, u64)>,
}

/// CPU time of this process so far (all live threads).
fn process_cpu() -> Duration {
    support::cpu_time_of("self")
}

async fn run_once(
    config: &Config,
    version: Version,
    variant: Variant,
    qos: u8,
    n: u64,
) -> Result<RunResult, String> {
    let telemetry =
        (variant.traced() && variant != Variant::Noop).then(|| Telemetry::new(variant.recording()));
    let instrumentation = variant.traced().then(|| {
        let builder = match &telemetry {
            Some(t) => Instrumentation::builder()
                .tracer_provider(&t.tracer_provider)
                .meter_provider(&t.meter_provider),
            // No global provider is installed: OpenTelemetry's no-op tracer and meter.
            None => Instrumentation::builder(),
        };
        let builder = if version == Version::V4 && variant != Variant::RecordingV4None {
            builder.v4_propagation(V4Propagation::Envelope)
        } else {
            builder
        };
        builder.build()
    });

    let payload = vec![0xA5_u8; config.payload];
    let message = match (version, variant) {
        (Version::V4, Variant::Wire) => Message::V4(
            envelope::encode(&[("traceparent", FIXED_TRACEPARENT)], &payload)
                .map_err(|e| e.to_string())?,
        ),
        (Version::V4, _) => Message::V4(payload),
        (Version::V5, Variant::Wire) => {
            let properties = PublishProperties {
                user_properties: vec![("traceparent".to_owned(), FIXED_TRACEPARENT.to_owned())],
                ..PublishProperties::default()
            };
            Message::V5(Bytes::from(payload), Some(properties))
        }
        (Version::V5, _) => Message::V5(Bytes::from(payload), None),
    };

    let base = unique("bench");
    let topic = format!("{base}/sensor-1/data");
    let filter = format!("{base}/+/data");

    let (subscriber, sub_loop) = make_client(version, config, instrumentation.as_ref());
    let (publisher, pub_loop) = make_client(version, config, instrumentation.as_ref());
    let sub_progress = Arc::new(Progress::default());
    let pub_progress = Arc::new(Progress::default());
    let sub_task = drive(sub_loop, Arc::clone(&sub_progress), true, n);
    let pub_task = drive(pub_loop, Arc::clone(&pub_progress), false, n);

    let setup = async {
        wait_for("CONNACKs", Duration::from_secs(10), || {
            sub_progress.connected.load(Ordering::Acquire)
                && pub_progress.connected.load(Ordering::Acquire)
        })
        .await?;
        subscriber.subscribe(&filter, qos).await?;
        wait_for("SUBACK", Duration::from_secs(10), || {
            sub_progress.subacks.load(Ordering::Acquire) > 0
        })
        .await
    };
    let outcome = match setup.await {
        Err(e) => Err(e),
        Ok(()) => {
            // The timed part: publish n messages as fast as publish().await allows, in a task
            // of the runtime like the event loops.
            let cpu_before = process_cpu();
            let broker_before = config
                .broker_pid
                .map(|pid| support::cpu_time_of(&pid.to_string()));
            let start = Instant::now();
            let publish_all = {
                let publisher = publisher.clone();
                let topic = topic.clone();
                async move {
                    for _ in 0..n {
                        publisher.publish(&topic, qos, &message).await?;
                    }
                    Ok::<(), String>(())
                }
            };
            let published = match config.shape {
                Shape::Spawned => tokio::spawn(publish_all)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r),
                Shape::Main => publish_all.await,
            };
            let mut result = published.map(|()| Duration::ZERO);
            if result.is_ok() {
                // Wait for the last delivery (and PUBACK), failing when nothing moves for a while.
                let mut last = (u64::MAX, u64::MAX);
                let mut last_change = Instant::now();
                loop {
                    let now = (
                        sub_progress.count.load(Ordering::Acquire),
                        pub_progress.count.load(Ordering::Acquire),
                    );
                    let acked = qos == 0 || now.1 >= n;
                    if now.0 >= n && acked {
                        break;
                    }
                    if let Some(e) = sub_progress.error.lock().unwrap().clone() {
                        result = Err(format!("subscriber: {e}"));
                        break;
                    }
                    if let Some(e) = pub_progress.error.lock().unwrap().clone() {
                        result = Err(format!("publisher: {e}"));
                        break;
                    }
                    if now != last {
                        last = now;
                        last_change = Instant::now();
                    } else if last_change.elapsed() > config.idle_timeout {
                        result = Err(format!(
                            "stalled: {} of {n} delivered, {} of {n} acknowledged",
                            now.0,
                            if qos == 0 { n } else { now.1 }
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let cpu = process_cpu().saturating_sub(cpu_before);
            let broker_cpu = broker_before.map(|before| {
                support::cpu_time_of(&config.broker_pid.unwrap().to_string()).saturating_sub(before)
            });
            result.map(|_| {
                let delivered = sub_progress.done_at.lock().unwrap().expect("delivered");
                let end = if qos == 0 {
                    delivered
                } else {
                    delivered.max(pub_progress.done_at.lock().unwrap().expect("acked"))
                };
                (end - start, cpu, broker_cpu)
            })
        }
    };

    // Tear down: DISCONNECT both, let the loops see it, then stop them.
    sub_progress.stopping.store(true, Ordering::Release);
    pub_progress.stopping.store(true, Ordering::Release);
    publisher.disconnect().await;
    subscriber.disconnect().await;
    for task in [sub_task, pub_task] {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    drop((publisher, subscriber, instrumentation));
    let spans = telemetry.map(|t| {
        let exported = t.flush_and_count();
        t.shutdown();
        exported
    });
    let (elapsed, cpu, broker_cpu) = outcome?;
    Ok(RunResult {
        elapsed,
        cpu,
        broker_cpu,
        spans: match (variant.recording(), spans) {
            // One publish span and one receive span per message.
            (true, Some(exported)) => Some((2 * n, exported)),
            _ => None,
        },
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[derive(Default)]
struct Samples {
    /// msg/s of each successful run, by round (None: failed).
    rates: Vec<Option<f64>>,
    /// client CPU microseconds per message.
    cpu_us: Vec<f64>,
    /// broker CPU microseconds per message.
    broker_us: Vec<f64>,
    spans_expected: u64,
    spans_exported: u64,
    failures: Vec<String>,
}

/// One scenario's results: shape, TCP mode, version, QoS, N, and the samples of each variant.
type Scenario = (Shape, bool, Version, u8, u64, Vec<(Variant, Samples)>);

fn fmt_rate(rate: f64) -> String {
    if rate.is_nan() {
        return "-".into();
    }
    let r = rate.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let smoke = support::is_smoke_run();
    let n0 = env_usize("THROUGHPUT_QOS0_N", if smoke { 300 } else { 200_000 }) as u64;
    let n1 = env_usize("THROUGHPUT_QOS1_N", if smoke { 100 } else { 50_000 }) as u64;
    let runs = env_usize("THROUGHPUT_RUNS", if smoke { 1 } else { 5 }).max(1);
    let warmup = env_usize("THROUGHPUT_WARMUP", usize::from(!smoke));
    let payload = env_usize("THROUGHPUT_PAYLOAD", 64);
    let cap = env_usize("THROUGHPUT_CAP", 10);
    let idle = env_usize("THROUGHPUT_IDLE_TIMEOUT_S", 20) as u64;
    let versions: Vec<Version> = env_list("THROUGHPUT_VERSIONS", &["v4", "v5"])
        .iter()
        .map(|v| match v.as_str() {
            "v4" | "4" | "3.1.1" => Version::V4,
            "v5" | "5" => Version::V5,
            other => panic!("unknown version {other:?} (v4, v5)"),
        })
        .collect();
    let qoses: Vec<u8> = env_list("THROUGHPUT_QOS", &["0", "1"])
        .iter()
        .map(|q| match q.as_str() {
            "0" => 0,
            "1" => 1,
            other => panic!("unknown QoS {other:?} (0, 1)"),
        })
        .collect();
    // A smoke run takes TCP_NODELAY only, which halves its runs.
    let nodelay_default: &[&str] = if smoke { &["1"] } else { &["0", "1"] };
    let nodelays: Vec<bool> = env_list("THROUGHPUT_NODELAY", nodelay_default)
        .iter()
        .map(|v| match v.as_str() {
            "0" | "off" | "nagle" => false,
            "1" | "on" | "nodelay" => true,
            other => {
                panic!("THROUGHPUT_NODELAY={other:?}: a list of 0 (Nagle, rumqttc's default) and 1")
            }
        })
        .collect();
    let shapes: Vec<Shape> = env_list("THROUGHPUT_SHAPE", &["spawned", "main"])
        .iter()
        .map(|v| match v.as_str() {
            "spawned" => Shape::Spawned,
            "main" => Shape::Main,
            other => panic!("THROUGHPUT_SHAPE={other:?}: a list of spawned and main"),
        })
        .collect();
    let variants: Vec<Variant> = env_list(
        "THROUGHPUT_VARIANTS",
        &["plain", "rec", "off", "noop", "wire", "rec-v4none"],
    )
    .iter()
    .map(|v| Variant::from_key(v))
    .collect();

    // mosquitto defaults except: no logging, and no per-client queue limit (the default of
    // 1000 queued messages would silently drop QoS 0 messages for a subscriber that falls
    // behind, and a run would never end).
    let broker = match std::env::var("THROUGHPUT_BROKER_PORT") {
        Ok(port) => {
            eprintln!("using the broker on 127.0.0.1:{port}");
            None
        }
        Err(_) => Some(Broker::start(&["max_queued_messages 0"])),
    };
    let port = broker.as_ref().map(Broker::port).unwrap_or_else(|| {
        std::env::var("THROUGHPUT_BROKER_PORT")
            .unwrap()
            .parse()
            .expect("THROUGHPUT_BROKER_PORT is a port")
    });
    let mut config = Config {
        port,
        shape: Shape::Spawned,
        payload,
        cap,
        broker_pid: broker.as_ref().map(Broker::pid),
        nodelay: false,
        idle_timeout: Duration::from_secs(idle),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "rumqttc-opentelemetry: end-to-end throughput, plain rumqttc vs traced (benches/throughput.rs)"
    );
    println!("machine: {}", support::machine());
    println!(
        "broker: mosquitto on 127.0.0.1:{port} (logging off, max_queued_messages 0); tokio multi-thread runtime, {} workers",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "one publisher -> one subscriber, {payload} B payload, request channel capacity {cap}; \
         {runs} interleaved rounds per scenario (+{warmup} warm-up round at N/10, discarded); medians"
    );
    println!();

    let mut table: Vec<Scenario> = Vec::new();
    for (&shape, &nodelay) in shapes
        .iter()
        .flat_map(|shape| nodelays.iter().map(move |nodelay| (shape, nodelay)))
    {
        config.shape = shape;
        config.nodelay = nodelay;
        for &version in &versions {
            for &qos in &qoses {
                let n = if qos == 0 { n0 } else { n1 };
                let scenario_variants: Vec<Variant> = variants
                    .iter()
                    .copied()
                    .filter(|v| v.applies_to(version))
                    .collect();
                let mut samples: Vec<(Variant, Samples)> = scenario_variants
                    .iter()
                    .map(|&v| (v, Samples::default()))
                    .collect();
                for round in 0..(warmup + runs) {
                    let warm = round < warmup;
                    let count = if warm { (n / 10).max(1) } else { n };
                    for (variant, s) in samples.iter_mut() {
                        let result =
                            runtime.block_on(run_once(&config, version, *variant, qos, count));
                        let tag = format!(
                            "{:<7} {:<7} {} QoS {qos} {:<11} {}",
                            shape.label(),
                            tcp_label(nodelay),
                            version.label(),
                            variant.key(),
                            if warm {
                                "warm-up".to_string()
                            } else {
                                format!("run {}/{runs}", round - warmup + 1)
                            }
                        );
                        match result {
                            Ok(r) => {
                                let rate = count as f64 / r.elapsed.as_secs_f64();
                                let cpu_us = r.cpu.as_secs_f64() * 1e6 / count as f64;
                                let spans = match r.spans {
                                    Some((expected, exported)) if exported < expected => {
                                        format!("  ({} of {expected} spans exported)", exported)
                                    }
                                    _ => String::new(),
                                };
                                eprintln!(
                                    "  {tag}: {:>9} msg/s, CPU us/msg: client {cpu_us:5.2}, broker {}{spans}",
                                    fmt_rate(rate),
                                    r.broker_cpu
                                        .map(|b| format!(
                                            "{:5.2}",
                                            b.as_secs_f64() * 1e6 / count as f64
                                        ))
                                        .unwrap_or_else(|| "-".into())
                                );
                                if !warm {
                                    s.rates.push(Some(rate));
                                    s.cpu_us.push(cpu_us);
                                    if let Some(b) = r.broker_cpu {
                                        s.broker_us.push(b.as_secs_f64() * 1e6 / count as f64);
                                    }
                                    if let Some((expected, exported)) = r.spans {
                                        s.spans_expected += expected;
                                        s.spans_exported += exported;
                                    }
                                }
                            }
                            Err(error) => {
                                eprintln!("  {tag}: FAILED: {error}");
                                if !warm {
                                    s.rates.push(None);
                                    s.failures.push(error);
                                }
                            }
                        }
                    }
                }
                table.push((shape, nodelay, version, qos, n, samples));
            }
        }
    }

    println!();
    println!(
        "{:<7} {:<7} {:<10} {:<3} {:<34} {:>6} {:>8} {:>6} {:>10} {:>7} {:>6} {:>6} {:>6} {:>5}",
        "shape",
        "TCP",
        "version",
        "QoS",
        "variant",
        "N",
        "msg/s",
        "ratio",
        "per-run",
        "+us/msg",
        "client",
        "broker",
        "CPU r.",
        "spans"
    );
    println!("{}", "-".repeat(137));
    let mut checks: Vec<String> = Vec::new();
    for (shape, nodelay, version, qos, n, samples) in &table {
        let plain_rates: Vec<Option<f64>> = samples
            .iter()
            .find(|(v, _)| *v == Variant::Plain)
            .map(|(_, s)| s.rates.clone())
            .unwrap_or_default();
        let mut plain_ok: Vec<f64> = plain_rates.iter().flatten().copied().collect();
        let plain_median = median(&mut plain_ok);
        // CPU per message of the whole system (clients + broker), plain.
        let plain_cpu = samples
            .iter()
            .find(|(v, _)| *v == Variant::Plain)
            .map(|(_, s)| median(&mut s.cpu_us.clone()) + median(&mut s.broker_us.clone()))
            .unwrap_or(f64::NAN);
        for (variant, s) in samples {
            let mut ok: Vec<f64> = s.rates.iter().flatten().copied().collect();
            let med = median(&mut ok);
            let ratio = med / plain_median;
            // Ratios within each round (variant run / the plain run of the same round).
            let mut round_ratios: Vec<f64> = s
                .rates
                .iter()
                .zip(plain_rates.iter())
                .filter_map(|(a, b)| Some((*a)? / (*b)?))
                .collect();
            round_ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let spread = if *variant == Variant::Plain || round_ratios.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.2}..{:.2}",
                    round_ratios.first().unwrap(),
                    round_ratios.last().unwrap()
                )
            };
            let extra_us = if *variant == Variant::Plain {
                "-".to_string()
            } else {
                format!("{:+.2}", 1e6 / med - 1e6 / plain_median)
            };
            let client_us = median(&mut s.cpu_us.clone());
            let broker_us = median(&mut s.broker_us.clone());
            let cpu_ratio = plain_cpu / (client_us + broker_us);
            let fmt_us = |v: f64| {
                if v.is_nan() {
                    "-".to_string()
                } else {
                    format!("{v:.2}")
                }
            };
            let spans = if variant.recording() && s.spans_expected > 0 {
                if s.spans_exported == s.spans_expected {
                    "all".to_string()
                } else {
                    format!(
                        "{:.1}% lost",
                        100.0 * (s.spans_expected - s.spans_exported) as f64
                            / s.spans_expected as f64
                    )
                }
            } else {
                "-".to_string()
            };
            let failed = if s.failures.is_empty() {
                String::new()
            } else {
                format!("  [{} failed run(s): {}]", s.failures.len(), s.failures[0])
            };
            println!(
                "{:<7} {:<7} {:<10} {:<3} {:<34} {:>6} {:>8} {:>6} {:>10} {:>7} {:>6} {:>6} {:>6} {:>5}{failed}",
                shape.label(),
                tcp_label(*nodelay),
                version.label(),
                qos,
                variant.describe(*version),
                n,
                fmt_rate(med),
                if ratio.is_nan() {
                    "-".to_string()
                } else {
                    format!("{ratio:.3}")
                },
                spread,
                extra_us,
                fmt_us(client_us),
                fmt_us(broker_us),
                if cpu_ratio.is_nan() {
                    "-".to_string()
                } else {
                    format!("{cpu_ratio:.3}")
                },
                spans,
            );
            let scenario = format!(
                "{:<7} {:<7} {:<10} QoS {qos} {:<33}",
                shape.label(),
                tcp_label(*nodelay),
                version.label(),
                variant.describe(*version)
            );
            let met = |ok: bool| if ok { "met" } else { "NOT met" };
            match (variant, qos, *nodelay) {
                (Variant::Noop, _, _) => {
                    let plain_client = samples
                        .iter()
                        .find(|(v, _)| *v == Variant::Plain)
                        .map(|(_, s)| median(&mut s.cpu_us.clone()))
                        .unwrap_or(f64::NAN);
                    let added = client_us - plain_client;
                    checks.push(format!(
                        "{scenario} client CPU {added:+.2} us/msg over plain (target <= +0.40): {}",
                        met(added <= 0.40)
                    ));
                }
                (Variant::NonRecording, 0, _) => checks.push(format!(
                    "{scenario} ratio {ratio:.3}, CPU ratio {cpu_ratio:.3} (targets >= 0.92, >= 0.88): {}",
                    met(ratio >= 0.92 && cpu_ratio >= 0.88)
                )),
                (Variant::Recording, 0, _) => checks.push(format!(
                    "{scenario} ratio {ratio:.3}, CPU ratio {cpu_ratio:.3} (targets >= 0.88, >= 0.82): {}",
                    met(ratio >= 0.88 && cpu_ratio >= 0.82)
                )),
                (Variant::Recording, 1, true) => checks.push(format!(
                    "{scenario} ratio {ratio:.3} (target >= 0.92): {}",
                    met(ratio >= 0.92)
                )),
                _ => {}
            }
        }
        println!();
    }
    println!(
        "ratio: variant median / plain median. per-run ratios: min..max over rounds of (variant / plain of the same round)."
    );
    println!(
        "+us/msg: 1/rate(variant) - 1/rate(plain), the added wall time per message. client / broker: CPU microseconds per"
    );
    println!(
        "message (medians) of this process (publisher, subscriber, SDK threads) and of mosquitto, from /proc/*/task/*/schedstat."
    );
    println!(
        "CPU r.: (client + broker CPU of plain) / (client + broker CPU of the variant): the throughput ratio to expect when"
    );
    println!("the cores are the bottleneck; steadier than wall-clock ratios on a shared machine.");
    println!(
        "spans: whether every publish and receive span reached the (no-op) exporter, i.e. the batch processor dropped none."
    );
    println!(
        "TCP: Nagle = rumqttc's default (tcp_nodelay false); nodelay = TCP_NODELAY on every client. With Nagle, QoS 1"
    );
    println!(
        "runs are paced by Nagle/delayed-ACK timing rather than by CPU, so a slower client can come out faster; the"
    );
    println!(
        "nodelay rows measure the CPU cost of tracing. QoS 0 streams fill segments either way."
    );
    println!();
    if smoke {
        println!("smoke run (a few hundred messages per run): the lines below mean nothing");
    }
    for check in checks {
        println!("{check}");
    }
    drop(broker);
}

fn tcp_label(nodelay: bool) -> &'static str {
    if nodelay { "nodelay" } else { "Nagle" }
}
