//! Subscriber throughput with a handler that waits on I/O: `v5::TracedSubscriber` at
//! `concurrency(1)`, `(16)` and `(64)` against a plain rumqttc loop that spawns a task per
//! message, against the same mosquitto, in the same run, interleaved.
//!
//! One plain rumqttc publisher sends N QoS 1 messages of 64 B over T topics (message `i` on topic
//! `i % T`) as fast as it can; the subscriber's handler awaits a timer of 2 ms (the stand-in for
//! a database insert or an HTTP call) and records the message. The clock runs from the first
//! publish to the N-th handler's end. Variants:
//!
//! - `plain`: `rumqttc::v5::AsyncClient` with rumqttc's automatic acknowledgements; the poll
//!   loop spawns a task per incoming PUBLISH that runs the handler. What a new user writes first;
//!   it keeps no order and no bound, and acknowledges before the handler ran.
//! - `c1`, `c16`, `c64`: `v5::TracedSubscriber` with `concurrency(n)`, per-topic order (the
//!   default), acknowledgements after the handler in arrival order, recording spans (the SDK's
//!   batch processor into an exporter that drops them) and metrics. It announces a Receive
//!   Maximum of `n + queue_capacity` (1024), so the broker's in-flight window is not what limits
//!   it. With per-topic order at most one run per topic is in flight: 50 topics cap `c64` at 50
//!   runs.
//! - `c64u`: the same with `unordered()`, which lifts that cap.
//!
//! Every run checks that each handler ran exactly once per message, and reports whether the
//! messages of each topic were handled in publish order (the ordered traced variants must keep
//! it; a run that does not fails) and how many handlers ran at once at most. The table shows the median
//! rate per variant and its ratio to `plain`'s median of the same run: the machine is shared, so
//! only ratios are comparable between runs.
//!
//! ```text
//! cargo bench --bench subscriber
//! ```
//!
//! Knobs (environment variables): `SUBSCRIBER_N` (2000), `SUBSCRIBER_TOPICS` (50),
//! `SUBSCRIBER_HANDLER_US` (2000; 0: the handler only yields), `SUBSCRIBER_PAYLOAD` (64), `SUBSCRIBER_RUNS` (3),
//! `SUBSCRIBER_CONCURRENCY` (`1,16,64,64u`: `u` for unordered), `SUBSCRIBER_PLAIN` (1: include `plain`),
//! `SUBSCRIBER_TIMEOUT_S` (60: a run fails when it takes longer). Run by `cargo test
//! --all-targets` (no `--bench` argument), it does a smoke run with 100 messages.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc_opentelemetry::Instrumentation;
use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};
use tokio::sync::Notify;

use support::{Broker, Telemetry, env_list, env_usize, unique};

/// What one run does.
#[derive(Debug, Clone)]
struct Config {
    port: u16,
    n: usize,
    topics: usize,
    handler: Duration,
    payload: usize,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    /// Concurrency, and whether per-topic order is kept.
    Traced(usize, bool),
}

impl Variant {
    fn key(self) -> String {
        match self {
            Variant::Plain => "plain".to_owned(),
            Variant::Traced(n, true) => format!("c{n}"),
            Variant::Traced(n, false) => format!("c{n}u"),
        }
    }

    fn describe(self) -> String {
        match self {
            Variant::Plain => "plain rumqttc, a task per message".to_owned(),
            Variant::Traced(n, true) => format!("TracedSubscriber, concurrency({n})"),
            Variant::Traced(n, false) => {
                format!("TracedSubscriber, concurrency({n}).unordered()")
            }
        }
    }
}

/// What the handlers of one run record.
struct Tally {
    /// Per topic, the sequence numbers in the order their handlers ran.
    per_topic: Vec<Mutex<Vec<usize>>>,
    done: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    all_done: Notify,
    n: usize,
}

impl Tally {
    fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            per_topic: (0..config.topics).map(|_| Mutex::new(Vec::new())).collect(),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            all_done: Notify::new(),
            n: config.n,
        })
    }

    /// The handler: waits `pause`, records the message whose payload is `payload`.
    async fn handle(&self, payload: &[u8], pause: Duration) {
        let active = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_active.fetch_max(active, Ordering::AcqRel);
        if pause.is_zero() {
            // `sleep(0)` would still wait for the timer's next tick (1 ms).
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pause).await;
        }
        // Recorded before the run counts as ended, so the order seen is the order of starts
        // within a topic whenever runs of a topic do not overlap.
        if let Some((topic, seq)) = parse(payload)
            && let Some(slot) = self.per_topic.get(topic)
            && let Ok(mut seen) = slot.lock()
        {
            seen.push(seq);
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.all_done.notify_one();
        }
    }

    /// Messages handled out of publish order within their topic, and messages handled other than
    /// exactly once.
    fn check(&self) -> (usize, usize) {
        let mut inversions = 0;
        let mut seen_total = vec![0usize; self.n];
        for slot in &self.per_topic {
            let seen = slot.lock().map(|seen| seen.clone()).unwrap_or_default();
            inversions += seen.windows(2).filter(|pair| pair[1] < pair[0]).count();
            for seq in seen {
                if let Some(count) = seen_total.get_mut(seq) {
                    *count += 1;
                }
            }
        }
        let not_once = seen_total.iter().filter(|&&count| count != 1).count();
        (inversions, not_once)
    }
}

/// The payload of message `seq`: `"{topic} {seq} "` padded with `x` to `size` bytes.
fn payload(topic: usize, seq: usize, size: usize) -> Bytes {
    let mut text = format!("{topic} {seq} ");
    while text.len() < size {
        text.push('x');
    }
    Bytes::from(text)
}

fn parse(payload: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split(' ');
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn options(config: &Config, prefix: &str) -> MqttOptions {
    let mut options = MqttOptions::new(unique(prefix), "127.0.0.1", config.port);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// A subscriber of one variant, ready (subscribed); dropping or ending it ends its tasks.
enum Subscriber {
    Plain {
        client: AsyncClient,
        task: tokio::task::JoinHandle<()>,
    },
    Traced(TracedSubscriber, Telemetry),
}

impl Subscriber {
    async fn start(
        config: &Config,
        variant: Variant,
        filter: &str,
        tally: &Arc<Tally>,
    ) -> Result<Self, String> {
        let pause = config.handler;
        match variant {
            Variant::Plain => {
                let (client, mut eventloop) = AsyncClient::new(options(config, "plain-sub"), 100);
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|error| error.to_string())?;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => break,
                        Ok(_) => {}
                        Err(error) => return Err(format!("plain subscriber: {error}")),
                    }
                }
                let tally = Arc::clone(tally);
                let task = tokio::spawn(async move {
                    while let Ok(event) = eventloop.poll().await {
                        if let Event::Incoming(Packet::Publish(publish)) = event {
                            let tally = Arc::clone(&tally);
                            tokio::spawn(
                                async move { tally.handle(&publish.payload, pause).await },
                            );
                        }
                    }
                });
                Ok(Subscriber::Plain { client, task })
            }
            Variant::Traced(concurrency, ordered) => {
                let telemetry = Telemetry::new(true);
                let instrumentation = Instrumentation::builder()
                    .tracer_provider(&telemetry.tracer_provider)
                    .meter_provider(&telemetry.meter_provider)
                    .build();
                let tally = Arc::clone(tally);
                let builder = TracedSubscriber::builder_with_instrumentation(
                    options(config, "traced-sub"),
                    100,
                    instrumentation,
                )
                .concurrency(concurrency);
                let builder = if ordered {
                    builder
                } else {
                    builder.unordered()
                };
                let subscriber = builder
                    .route(filter, QoS::AtLeastOnce, move |message: Message| {
                        let tally = Arc::clone(&tally);
                        async move { tally.handle(message.payload(), pause).await }
                    })
                    .map_err(|error| error.to_string())?
                    .start();
                subscriber
                    .subscribed()
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(Subscriber::Traced(subscriber, telemetry))
            }
        }
    }

    async fn stop(self) {
        match self {
            Subscriber::Plain { client, task } => {
                let _ = client.disconnect().await;
                task.abort();
            }
            Subscriber::Traced(subscriber, telemetry) => {
                subscriber.shutdown().await;
                telemetry.shutdown();
            }
        }
    }
}

/// What one run measured.
struct Outcome {
    elapsed: Duration,
    inversions: usize,
    max_active: usize,
}

async fn run_once(config: &Config, variant: Variant) -> Result<Outcome, String> {
    let tally = Tally::new(config);
    let prefix = unique("bench");
    let subscriber = Subscriber::start(config, variant, &format!("{prefix}/+"), &tally).await?;

    let (publisher, mut eventloop) = AsyncClient::new(options(config, "pub"), 100);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    let (n, topics, size) = (config.n, config.topics, config.payload);
    let sender = publisher.clone();
    let publishing = tokio::spawn(async move {
        for seq in 0..n {
            let topic = seq % topics;
            sender
                .publish(
                    format!("{prefix}/{topic}"),
                    QoS::AtLeastOnce,
                    false,
                    payload(topic, seq, size),
                )
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok::<(), String>(())
    });
    let finished = tokio::time::timeout(config.timeout, tally.all_done.notified()).await;
    let elapsed = started.elapsed();
    let published = publishing.await.map_err(|error| error.to_string())?;
    let _ = publisher.disconnect().await;
    pump.abort();
    subscriber.stop().await;
    published?;
    if finished.is_err() {
        return Err(format!(
            "{} of {} handled within {:?}",
            tally.done.load(Ordering::Acquire),
            config.n,
            config.timeout
        ));
    }
    let (inversions, not_once) = tally.check();
    if not_once > 0 {
        return Err(format!("{not_once} messages not handled exactly once"));
    }
    if inversions > 0 && matches!(variant, Variant::Traced(_, true)) {
        return Err(format!("per-topic order broken {inversions} times"));
    }
    Ok(Outcome {
        elapsed,
        inversions,
        max_active: tally.max_active.load(Ordering::Acquire),
    })
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Per variant: the rates of its runs, the most runs seen at once, the order inversions.
type Samples = (Vec<f64>, usize, usize, Vec<String>);

fn main() {
    let smoke = support::is_smoke_run();
    let n = env_usize("SUBSCRIBER_N", if smoke { 100 } else { 2000 });
    let runs = env_usize("SUBSCRIBER_RUNS", if smoke { 1 } else { 3 });
    let mut variants: Vec<Variant> = Vec::new();
    if env_usize("SUBSCRIBER_PLAIN", 1) == 1 {
        variants.push(Variant::Plain);
    }
    for level in env_list("SUBSCRIBER_CONCURRENCY", &["1", "16", "64", "64u"]) {
        let (number, ordered) = match level.strip_suffix('u') {
            Some(number) => (number, false),
            None => (level.as_str(), true),
        };
        let number: usize = number
            .parse()
            .unwrap_or_else(|_| panic!("SUBSCRIBER_CONCURRENCY: {level:?} is not N or Nu"));
        variants.push(Variant::Traced(number, ordered));
    }
    let broker = Broker::start(&["max_queued_messages 0"]);
    let config = Config {
        port: broker.port(),
        n,
        topics: env_usize("SUBSCRIBER_TOPICS", 50).max(1),
        handler: Duration::from_micros(env_usize("SUBSCRIBER_HANDLER_US", 2000) as u64),
        payload: env_usize("SUBSCRIBER_PAYLOAD", 64),
        timeout: Duration::from_secs(env_usize("SUBSCRIBER_TIMEOUT_S", 60) as u64),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "rumqttc-opentelemetry: subscriber throughput, handler awaiting I/O (benches/subscriber.rs)"
    );
    println!("machine: {}", support::machine());
    println!(
        "broker: mosquitto on 127.0.0.1:{} (logging off, max_queued_messages 0); MQTT 5, QoS 1; \
         {} messages of {} B over {} topics; handler awaits {:?}; {runs} interleaved round(s); medians",
        config.port, config.n, config.payload, config.topics, config.handler
    );
    println!();

    let mut samples: Vec<Samples> = variants
        .iter()
        .map(|_| (Vec::new(), 0, 0, Vec::new()))
        .collect();
    for round in 0..runs {
        for (variant, (rates, max_active, inversions, failures)) in
            variants.iter().zip(samples.iter_mut())
        {
            match runtime.block_on(run_once(&config, *variant)) {
                Ok(outcome) => {
                    let rate = config.n as f64 / outcome.elapsed.as_secs_f64();
                    eprintln!(
                        "  {:<6} run {}/{runs}: {rate:>9.0} msg/s, at most {} handlers at once, \
                         {} per-topic inversions",
                        variant.key(),
                        round + 1,
                        outcome.max_active,
                        outcome.inversions
                    );
                    rates.push(rate);
                    *max_active = (*max_active).max(outcome.max_active);
                    *inversions += outcome.inversions;
                }
                Err(error) => {
                    eprintln!(
                        "  {:<6} run {}/{runs}: FAILED: {error}",
                        variant.key(),
                        round + 1
                    );
                    failures.push(error);
                }
            }
        }
    }

    let plain = variants
        .iter()
        .position(|variant| *variant == Variant::Plain)
        .and_then(|index| median(&mut samples[index].0.clone()));
    println!(
        "| variant | what | msg/s (median) | vs plain | most handlers at once | per-topic order |"
    );
    println!("|---|---|---:|---:|---:|---|");
    let mut failed = false;
    for (variant, (rates, max_active, inversions, failures)) in variants.iter().zip(&mut samples) {
        let rate = median(rates);
        let ratio = match (rate, plain) {
            (Some(rate), Some(plain)) if *variant != Variant::Plain => {
                format!("{:.2}", rate / plain)
            }
            _ => "-".to_owned(),
        };
        let order = if *inversions == 0 {
            "kept".to_owned()
        } else {
            format!("{inversions} inversions")
        };
        println!(
            "| {} | {} | {} | {ratio} | {max_active} | {order} |",
            variant.key(),
            variant.describe(),
            rate.map(|rate| format!("{rate:.0}"))
                .unwrap_or_else(|| "failed".to_owned()),
        );
        if !failures.is_empty() {
            failed = true;
            println!("  failures of {}: {failures:?}", variant.key());
        }
    }
    drop(broker);
    if failed {
        std::process::exit(1);
    }
}
