//! Memory: heap bytes per outstanding publish (this crate's correlation table and open spans,
//! over what plain rumqttc holds for the same publish), and the resident set size of a process
//! with one plain or one traced client.
//!
//! Run: `cargo bench --bench memory` (about 30 s). Knobs: `MEMORY_K` (outstanding publishes,
//! 10000), `MEMORY_RSS_MESSAGES` (messages each RSS child sends and receives, 10000).
//!
//! **Bytes per outstanding publish.** A counting global allocator tracks the live heap bytes
//! (sizes as requested from the allocator, so malloc's own per-block overhead, ~8-16 B, is not
//! included) and live allocations of the whole process. A client connects, then K QoS 1
//! publishes are made that cannot complete, and (live after - live before) / K is what each
//! outstanding publish holds. Two states:
//! - `queued`: the event loop is not polled after the CONNACK, so all K requests wait in
//!   rumqttc's request channel (capacity K) and, for traced clients, in the table's FIFO.
//! - `in flight`: the broker is frozen (SIGSTOP) and the event loop keeps running, so all K are
//!   written and wait for a PUBACK that does not come: rumqttc holds them in its in-flight
//!   array (in-flight limit K), the traced client in the table's by-packet-id map.
//!
//! The same is measured for plain rumqttc, and the difference is what this crate adds. Traced
//! clients record as in `benches/throughput.rs`: `rec` = AlwaysOn sampler, `off` = AlwaysOff
//! (the span of an outstanding publish is open, so a recording span holds its whole
//! `SpanData`).
//!
//! **RSS.** Each variant runs in a child process (this binary, re-executed): VmRSS after the
//! tokio runtime exists (the base), after the client (and telemetry) is built, and after the
//! client has published and received `MEMORY_RSS_MESSAGES` QoS 1 messages through a broker with
//! mosquitto's default limits (its own subscription),
//! plus VmHWM (peak). Traced children use the SDK defaults of a batch span processor (queue of
//! 2,048 spans) so the numbers are what an application gets without tuning. rumqttc's options
//! are its defaults: note that a default `rumqttc::v5::EventLoop` allocates an in-flight array
//! for 65,535 packet ids (~14 MB) at construction, which dominates the v5 rows.

#[path = "support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc_opentelemetry::{Instrumentation, v4, v5};

use support::{Broker, Ev, Loop, Telemetry, env_usize, unique};

/// Counts live heap bytes and live allocations of the whole process.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call unchanged to the system allocator and only updates two atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (i64, i64) {
    (
        LIVE_BYTES.load(Ordering::SeqCst),
        LIVE_BLOCKS.load(Ordering::SeqCst),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    V4,
    V5,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Plain,
    Recording,
    NonRecording,
    Noop,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Plain => "plain rumqttc",
            Variant::Recording => "traced, recording",
            Variant::NonRecording => "traced, non-recording",
            Variant::Noop => "traced, no-op providers",
        }
    }
}

enum Client {
    V4(rumqttc::AsyncClient),
    V4T(v4::TracedClient),
    V5(rumqttc::v5::AsyncClient),
    V5T(v5::TracedClient),
}

impl Loop {
    async fn until_connack(&mut self) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.next()).await {
                Ok(Ok(Ev::ConnAck)) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connect: {e}"),
                Err(_) => panic!("no CONNACK within 10 s"),
            }
        }
    }
}

impl Client {
    async fn publish(&self, topic: &str, qos1: bool, payload: &Bytes) {
        let result = match self {
            Client::V4(c) => {
                let qos = if qos1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.publish(topic, qos, false, payload.to_vec())
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V4T(c) => {
                let qos = if qos1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.publish(topic, qos, false, payload.to_vec())
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => c
                .publish(topic, qos5(qos1), false, payload.clone())
                .await
                .map_err(|e| e.to_string()),
            Client::V5T(c) => c
                .publish(topic, qos5(qos1), false, payload.clone())
                .await
                .map_err(|e| e.to_string()),
        };
        result.expect("publish");
    }

    async fn subscribe(&self, filter: &str) {
        let result = match self {
            Client::V4(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Client::V4T(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, qos5(true))
                .await
                .map_err(|e| e.to_string()),
            Client::V5T(c) => c
                .subscribe(filter, qos5(true))
                .await
                .map_err(|e| e.to_string()),
        };
        result.expect("subscribe");
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

fn qos5(qos1: bool) -> rumqttc::v5::mqttbytes::QoS {
    if qos1 {
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
    } else {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce
    }
}

/// A client with `cap` request-channel slots and, when `inflight` is given, that in-flight limit
/// (otherwise rumqttc's defaults).
fn make_client(
    version: Version,
    port: u16,
    cap: usize,
    inflight: Option<u16>,
    instrumentation: Option<&Instrumentation>,
) -> (Client, Loop) {
    let id = unique("mem");
    match version {
        Version::V4 => {
            let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
            if let Some(limit) = inflight {
                options.set_inflight(limit);
            }
            match instrumentation {
                None => {
                    let (c, l) = rumqttc::AsyncClient::new(options, cap);
                    (Client::V4(c), Loop::V4(l))
                }
                Some(i) => {
                    let (c, l) = v4::TracedClient::with_instrumentation(options, cap, i.clone());
                    (Client::V4T(c), Loop::V4T(l))
                }
            }
        }
        Version::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
            if let Some(limit) = inflight {
                options.set_outgoing_inflight_upper_limit(limit);
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

fn instrumentation_for(telemetry: Option<&Telemetry>) -> Option<Instrumentation> {
    telemetry.map(|t| {
        Instrumentation::builder()
            .tracer_provider(&t.tracer_provider)
            .meter_provider(&t.meter_provider)
            .build()
    })
}

/// The instrumentation of a variant: SDK pipelines for `rec` / `off`, OpenTelemetry's global
/// no-op providers (none is installed in this process) for `noop`, which leaves what this
/// crate itself holds.
fn variant_instrumentation(variant: Variant) -> (Option<Telemetry>, Option<Instrumentation>) {
    let telemetry = match variant {
        Variant::Plain | Variant::Noop => None,
        Variant::Recording => Some(Telemetry::new(true)),
        Variant::NonRecording => Some(Telemetry::new(false)),
    };
    let instrumentation = match variant {
        Variant::Noop => Some(Instrumentation::default()),
        _ => instrumentation_for(telemetry.as_ref()),
    };
    (telemetry, instrumentation)
}

#[derive(Clone, Copy)]
struct Outstanding {
    bytes: f64,
    blocks: f64,
    /// Publishes that reached the state measured (all K unless the broker's limits interfered).
    reached: usize,
}

/// K QoS 1 publishes that stay outstanding; returns live heap bytes and blocks per publish.
async fn outstanding(
    broker: &Broker,
    version: Version,
    variant: Variant,
    in_flight: bool,
    k: usize,
) -> Outstanding {
    let (telemetry, instrumentation) = variant_instrumentation(variant);
    let limit = u16::try_from(k.min(u16::MAX as usize - 1)).unwrap();
    let (client, mut el) = make_client(
        version,
        broker.port(),
        k,
        Some(limit),
        instrumentation.as_ref(),
    );
    el.until_connack().await;
    let topic = format!("{}/data", unique("mem"));
    let payload = Bytes::from(vec![0xA5_u8; 64]);

    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut idle_loop = Some(el);
    let driver = if in_flight {
        let mut el = idle_loop.take().expect("event loop");
        broker.freeze();
        let written = Arc::clone(&written);
        let stop = Arc::clone(&stop);
        Some(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                match el.next().await {
                    Ok(Ev::OutgoingPublish) => {
                        written.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            el
        }))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    for _ in 0..k {
        client.publish(&topic, true, &payload).await;
    }
    let mut reached = k;
    if in_flight {
        let deadline = Instant::now() + Duration::from_secs(20);
        while (written.load(Ordering::Acquire) as usize) < k && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reached = written.load(Ordering::Acquire) as usize;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = live();
    if in_flight {
        broker.thaw();
    }
    stop.store(true, Ordering::Release);
    // Queued: the channel is full and nobody polls; dropping the event loop makes the
    // disconnect fail at once instead of waiting for a slot.
    drop(idle_loop.take());
    client.disconnect().await;
    if let Some(driver) = driver {
        let abort = driver.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    drop((idle_loop, client, instrumentation));
    if let Some(t) = telemetry {
        t.shutdown();
    }
    Outstanding {
        bytes: (after.0 - before.0) as f64 / k as f64,
        blocks: (after.1 - before.1) as f64 / k as f64,
        reached,
    }
}

/// VmRSS and VmHWM of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The child side of the RSS measurement: prints `RSS base built after hwm heap` in KiB, `heap`
/// being the live heap after the messages minus the live heap at `base`.
fn rss_child(spec: &str, port: u16, messages: usize) {
    let (version, variant) = match spec {
        "v4-plain" => (Version::V4, Variant::Plain),
        "v4-traced" => (Version::V4, Variant::Recording),
        "v4-noop" => (Version::V4, Variant::Noop),
        "v5-plain" => (Version::V5, Variant::Plain),
        "v5-traced" => (Version::V5, Variant::Recording),
        "v5-noop" => (Version::V5, Variant::Noop),
        other => panic!("unknown RSS child {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let base = rss_kib().0;
        let heap_base = live().0;
        // The SDK's default batch-processor queue: what an application gets untuned.
        let telemetry = (variant == Variant::Recording).then(|| Telemetry::with_queue(true, 2048));
        let instrumentation = match variant {
            Variant::Noop => Some(Instrumentation::default()),
            _ => instrumentation_for(telemetry.as_ref()),
        };
        let (client, mut el) = make_client(version, port, 10, None, instrumentation.as_ref());
        let built = rss_kib().0;
        el.until_connack().await;
        let topic = format!("{}/data", unique("rss"));
        client.subscribe(&topic).await;
        let received = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let subscribed = Arc::new(AtomicBool::new(false));
        let driver = {
            let (received, acked, subscribed) = (
                Arc::clone(&received),
                Arc::clone(&acked),
                Arc::clone(&subscribed),
            );
            tokio::spawn(async move {
                loop {
                    match el.next().await {
                        Ok(Ev::SubAck) => subscribed.store(true, Ordering::Release),
                        Ok(Ev::Publish) => {
                            received.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(Ev::PubAck) => {
                            acked.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        while !subscribed.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let payload = Bytes::from(vec![0xA5_u8; 64]);
        for _ in 0..messages {
            client.publish(&topic, true, &payload).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while (received.load(Ordering::Acquire) as usize) < messages
            || (acked.load(Ordering::Acquire) as usize) < messages
        {
            assert!(
                Instant::now() < deadline,
                "RSS child: messages did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (after, hwm) = rss_kib();
        let heap = (live().0 - heap_base) / 1024;
        println!("RSS {base} {built} {after} {hwm} {heap}");
        client.disconnect().await;
        driver.abort();
        drop(telemetry);
    });
}

fn main() {
    if let Ok(spec) = std::env::var("MEMORY_RSS_CHILD") {
        let port: u16 = std::env::var("MEMORY_RSS_PORT").unwrap().parse().unwrap();
        rss_child(&spec, port, env_usize("MEMORY_RSS_MESSAGES", 10_000));
        return;
    }
    let smoke = support::is_smoke_run();
    let k = env_usize("MEMORY_K", if smoke { 100 } else { 10_000 });
    let messages = env_usize("MEMORY_RSS_MESSAGES", if smoke { 100 } else { 10_000 });
    // No in-flight limit from the broker (mosquitto's default receive maximum is 20), no queue
    // limit, so K publishes can be outstanding.
    let broker = Broker::start(&["max_inflight_messages 0", "max_queued_messages 0"]);

    println!("rumqttc-opentelemetry: memory (benches/memory.rs)");
    println!("machine: {}", support::machine());
    println!();
    println!(
        "Heap per outstanding QoS 1 publish (64 B payload, K = {k}), live bytes as requested from the allocator:"
    );
    println!(
        "{:<8} {:<10} {:<24} {:>12} {:>12} {:>16}",
        "version", "state", "variant", "bytes/publ.", "blocks/publ.", "added vs plain"
    );
    println!("{}", "-".repeat(88));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for version in [Version::V4, Version::V5] {
        for in_flight in [false, true] {
            let mut plain_bytes = None;
            for variant in [
                Variant::Plain,
                Variant::Recording,
                Variant::NonRecording,
                Variant::Noop,
            ] {
                let m = runtime.block_on(outstanding(&broker, version, variant, in_flight, k));
                let added = match plain_bytes {
                    None => {
                        plain_bytes = Some(m.bytes);
                        "-".to_string()
                    }
                    Some(plain) => format!("{:+.0} B", m.bytes - plain),
                };
                let note = if m.reached < k {
                    format!("  (only {} of {k} reached the state)", m.reached)
                } else {
                    String::new()
                };
                println!(
                    "{:<8} {:<10} {:<24} {:>12.0} {:>12.1} {:>16}{note}",
                    format!("{version:?}").to_lowercase(),
                    if in_flight { "in flight" } else { "queued" },
                    variant.label(),
                    m.bytes,
                    m.blocks,
                    added
                );
            }
        }
    }
    drop(runtime);

    println!();
    println!(
        "for reference: size_of KeyValue = {} B, opentelemetry_sdk::trace::Span = {} B, SpanData = {} B, \
         opentelemetry::Context = {} B",
        std::mem::size_of::<opentelemetry::KeyValue>(),
        std::mem::size_of::<opentelemetry_sdk::trace::Span>(),
        std::mem::size_of::<opentelemetry_sdk::trace::SpanData>(),
        std::mem::size_of::<opentelemetry::Context>(),
    );
    println!();
    println!(
        "RSS of a process with one client (separate processes; rumqttc default options, channel capacity 10;"
    );
    println!(
        "traced = recording, SDK-default batch span processor, metrics into a PeriodicReader never collected;"
    );
    println!(
        "noop = traced client on OpenTelemetry's no-op global providers: this crate's own share),"
    );
    println!(
        "after publishing and receiving {messages} QoS 1 messages of 64 B (own subscription) through a mosquitto with default limits:"
    );
    println!(
        "{:<12} {:>11} {:>13} {:>13} {:>11} {:>14} {:>10} {:>15}",
        "client",
        "base KiB",
        "+client KiB",
        "+after KiB",
        "peak KiB",
        "vs plain KiB",
        "heap KiB",
        "heap vs plain"
    );
    println!("{}", "-".repeat(107));
    // The RSS children talk to a broker with mosquitto's default limits (receive maximum 20 for
    // MQTT 5), as an application would; the broker above lifts them so K publishes can be
    // outstanding.
    drop(broker);
    let broker = Broker::start(&[]);
    let exe = std::env::current_exe().expect("current_exe");
    let (mut plain_after, mut plain_heap) = (0i64, 0i64);
    for spec in [
        "v4-plain",
        "v4-traced",
        "v4-noop",
        "v5-plain",
        "v5-traced",
        "v5-noop",
    ] {
        let output = Command::new(&exe)
            .env("MEMORY_RSS_CHILD", spec)
            .env("MEMORY_RSS_PORT", broker.port().to_string())
            .env("MEMORY_RSS_MESSAGES", messages.to_string())
            .output()
            .expect("run RSS child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(line) = stdout.lines().find(|l| l.starts_with("RSS ")) else {
            println!(
                "{spec:<12} FAILED: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            continue;
        };
        let v: Vec<i64> = line[4..]
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let (base, built, after, hwm, heap) = (v[0], v[1], v[2], v[3], v[4]);
        let (vs_plain, heap_vs_plain) = if spec.ends_with("plain") {
            (plain_after, plain_heap) = (after, heap);
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:+}", after - plain_after),
                format!("{:+}", heap - plain_heap),
            )
        };
        println!(
            "{spec:<12} {base:>11} {:>+13} {:>+13} {hwm:>11} {vs_plain:>14} {heap:>10} {heap_vs_plain:>15}",
            built - base,
            after - base
        );
    }
    println!();
    println!(
        "+client: VmRSS after building the client (and its telemetry) minus base; +after: after the messages,"
    );
    println!(
        "minus base; peak: VmHWM of the child; vs plain: final VmRSS minus the plain client's of the same version."
    );
    println!(
        "heap: live heap bytes after the messages minus those at base (the counting allocator, exact); heap vs plain:"
    );
    println!("the same minus the plain client's: with noop, the crate's own share per connection.");
}
