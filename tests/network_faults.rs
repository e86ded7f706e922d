//! Network faults between a traced publisher and mosquitto, through the fault proxy of
//! `tests/common/fault_proxy.rs`, for MQTT 3.1.1 and MQTT 5, QoS 1, persistent sessions
//! (MQTT 3.1.1 section 3.1.2.4 CleanSession = 0; MQTT 5 section 3.1.2.4 Clean Start = 0 with a
//! Session Expiry Interval):
//!
//! * a silent partition longer than two keep-alive intervals;
//! * TCP resets (RST) in the middle of the stream;
//! * a connection cut in the middle of a PUBLISH;
//! * 200 ms of latency each way;
//! * resets under latency with a full in-flight window.
//!
//! The subscriber connects to the broker directly, the publisher through the proxy. Every
//! scenario checks DESIGN.md "Spans" (correlation under reconnect replay; nothing handed to
//! `publish()` vanishes) and the README's "Metrics" table:
//! - no distinct payload is lost at the subscriber (QoS 1 may deliver twice, MQTT section 4.3.2);
//! - every publish span ends exactly once, without error (the README's `error.type` table has no
//!   row for a fault that a resumed session repairs);
//! - the reconnect is counted in `mqtt.client.reconnects`, and the broken connection's lifetime
//!   (`mqtt.client.connection.duration`) carries the fault's `error.type`;
//! - the partition is detected within two keep-alive intervals (MQTT section 3.1.2.10: the
//!   client sends PINGREQ when the keep-alive elapses; rumqttc fails the connection when the
//!   next one is due and the PINGRESP has not come);
//! - each attribute key at most once per span (OpenTelemetry attribute collections; OTLP).
//!
//! `*_redelivered_publishes_carry_the_dup_flag` read the DUP flag of every PUBLISH the client
//! sent, on the wire ([MQTT-3.3.1-1]).

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use common::fault_proxy::{FaultProxy, PublishRecord};
use common::telemetry::{SpanLog, assert_unique_attribute_keys, destination, error_type};
use common::traced::{
    Config, DEADLINE, Driven, Ev, TracedPublish, drive, poll_until, v4, v5, wait_until,
};
use metric_reader::MetricReader;
use opentelemetry::trace::{SpanId, SpanKind, Status};
use rumqttc_opentelemetry::metrics::{CONNECTION_DURATION, RECONNECTS};
use tokio::time::{Instant, timeout};

/// The publisher's in-flight window (mosquitto's default receive maximum is also 20).
const WINDOW: u16 = 20;
/// Messages per scenario.
const N: usize = 300;
/// Latency of the latency scenarios, each way.
const LATENCY: Duration = Duration::from_millis(200);
/// Scheduling slack on top of protocol bounds (a loaded two-core machine).
const SLACK: Duration = Duration::from_secs(1);

/// A broker, a fault proxy, a persistent subscriber on the broker and a persistent publisher
/// through the proxy.
struct Rig<C: TracedPublish> {
    tag: &'static str,
    proxy: FaultProxy,
    pub_log: SpanLog,
    sub_log: SpanLog,
    reader: MetricReader,
    publisher: C,
    publisher_loop: Driven,
    _subscriber: C,
    subscriber_loop: Driven,
    received: HashSet<String>,
    deliveries: usize,
    started: Instant,
    // Last: the broker outlives the clients' tasks and the proxy.
    _broker: Broker,
}

/// What a scenario measured.
#[derive(Debug)]
struct Outcome {
    elapsed: Duration,
    deliveries: usize,
    /// PUBLISH packets the broker got from the publisher beyond one per message.
    retransmissions: usize,
    connection_errors: Vec<String>,
    reconnects: f64,
    /// `error.type` of every ended connection lifetime.
    lifetime_errors: BTreeMap<String, u64>,
}

impl<C: TracedPublish> Rig<C> {
    async fn start(tag: &'static str, keep_alive: Option<Duration>) -> Self {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.addr());
        let pub_log = SpanLog::new();
        let sub_log = SpanLog::new();
        let reader = MetricReader::new();

        let sub_config = Config {
            persistent: true,
            ..Config::default()
        };
        let (subscriber, mut sub_loop) =
            C::connect(&broker, &sub_config, 10, sub_log.instrumentation());
        subscriber.subscribe(&format!("nf/{tag}/#"), 1).await;
        poll_until(&mut sub_loop, "SUBACK", |e| {
            matches!(e, Ev::SubAck).then_some(())
        })
        .await;

        let pub_config = Config {
            persistent: true,
            inflight: Some(WINDOW),
            keep_alive,
            port: Some(proxy.port()),
            ..Config::default()
        };
        let instrumentation = pub_log.builder().meter_provider(&reader.provider).build();
        let (publisher, mut pub_loop) = C::connect(&broker, &pub_config, 2 * N, instrumentation);
        poll_until(&mut pub_loop, "CONNACK", |e| {
            matches!(e, Ev::ConnAck { .. }).then_some(())
        })
        .await;
        Rig {
            tag,
            proxy,
            pub_log,
            sub_log,
            reader,
            publisher,
            publisher_loop: drive(pub_loop),
            _subscriber: subscriber,
            subscriber_loop: drive(sub_loop),
            received: HashSet::new(),
            deliveries: 0,
            started: Instant::now(),
            _broker: broker,
        }
    }

    async fn publish(&self, range: Range<usize>) {
        for i in range {
            self.publisher
                .publish(
                    format!("nf/{}/{i}", self.tag),
                    1,
                    Bytes::from(i.to_string()),
                )
                .await;
        }
    }

    /// Publish spans ended so far.
    fn ended(&self) -> usize {
        self.pub_log.count_of(SpanKind::Producer)
    }

    async fn wait_ended(&self, n: usize) {
        wait_until(&format!("{n} publish spans ended"), || self.ended() >= n).await;
    }

    /// PUBLISH packets forwarded on the proxy's newest connection.
    fn publishes_on_newest_connection(&self) -> usize {
        let Some(newest) = self.proxy.connects().last().map(|c| c.connection) else {
            return 0;
        };
        self.proxy
            .publishes()
            .iter()
            .filter(|p| p.connection == newest)
            .count()
    }

    /// Waits until the publisher has reconnected through the proxy `n` times in all.
    async fn wait_reconnects(&self, n: f64) {
        wait_until(&format!("{n} reconnects counted"), || {
            self.reader.total(RECONNECTS) >= n
        })
        .await;
    }

    /// Waits until every message arrived at the subscriber and every publish span ended; checks
    /// that no distinct payload was lost.
    async fn wait_complete(&mut self, n: usize) {
        let Rig {
            received,
            deliveries,
            subscriber_loop,
            ..
        } = self;
        timeout(DEADLINE, async {
            while received.len() < n {
                if let Some(Ev::Message { payload, .. }) = subscriber_loop.events.recv().await {
                    *deliveries += 1;
                    received.insert(String::from_utf8(payload.to_vec()).unwrap());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {n} distinct payloads arrived", received.len()));
        let expected: HashSet<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(self.received, expected, "no distinct payload lost");
        self.wait_ended(n).await;
    }

    /// [`wait_complete`](Self::wait_complete), then checks the scenario invariants (module
    /// docs) and returns what was measured.
    async fn finish(&mut self, n: usize) -> Outcome {
        self.wait_complete(n).await;
        let producers = self.pub_log.spans_of(SpanKind::Producer);
        assert_eq!(producers.len(), n, "one span per publish");
        let ids: HashSet<SpanId> = producers.iter().map(|s| s.span_context.span_id()).collect();
        assert_eq!(ids.len(), n, "every span ended once");
        let topics: HashSet<String> = producers.iter().filter_map(destination).collect();
        assert_eq!(topics.len(), n, "one span per message");
        let failed: Vec<(String, Option<String>)> = producers
            .iter()
            .filter(|span| span.status != Status::Unset || error_type(span).is_some())
            .map(|span| (span.name.to_string(), error_type(span)))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {n} publish spans ended in error, none of them for a reason the README's \
             error.type table gives; first: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );

        let lifetime_errors = self
            .reader
            .points(CONNECTION_DURATION)
            .iter()
            .filter_map(|p| {
                p.attribute("error.type")
                    .map(|v| (v.as_str().into_owned(), p.count))
            })
            .fold(BTreeMap::new(), |mut map, (error, count)| {
                *map.entry(error).or_insert(0) += count;
                map
            });
        let outcome = Outcome {
            elapsed: self.started.elapsed(),
            deliveries: self.deliveries,
            retransmissions: self.proxy.publishes().len().saturating_sub(n),
            connection_errors: self
                .publisher_loop
                .errors()
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
            reconnects: self.reader.total(RECONNECTS),
            lifetime_errors,
        };
        eprintln!(
            "{}: {n} messages in {:?}, {} deliveries, {outcome:?}",
            self.tag, outcome.elapsed, outcome.deliveries
        );
        outcome
    }

    /// Each attribute key at most once per span, on every span of both clients. The scenarios
    /// check it last, after their own invariants.
    fn check_attribute_keys(&self) {
        assert_unique_attribute_keys(&self.pub_log.spans());
        assert_unique_attribute_keys(&self.sub_log.spans());
    }
}

/// The reconnect is counted and the broken lifetime carries one of `expected` as `error.type`.
fn assert_fault_counted(outcome: &Outcome, reconnects: f64, expected: &[&str]) {
    assert!(
        outcome.reconnects >= reconnects,
        "mqtt.client.reconnects {} < {reconnects}; {outcome:?}",
        outcome.reconnects
    );
    assert!(
        outcome
            .lifetime_errors
            .keys()
            .any(|e| expected.contains(&e.as_str())),
        "no connection lifetime ended with {expected:?}; {outcome:?}"
    );
}

/// A silent partition longer than two keep-alive intervals, in the middle of the stream.
async fn silent_partition<C: TracedPublish>(tag: &'static str, keep_alive: Duration) {
    let mut rig = Rig::<C>::start(tag, Some(keep_alive)).await;
    rig.publish(0..N / 2).await;
    rig.wait_ended(N / 4).await;
    let errors_before = rig.publisher_loop.error_count();
    let partition_start = Instant::now();
    rig.proxy.blackhole();
    rig.publish(N / 2..N).await;
    // Detected within two keep-alive intervals (module docs).
    let bound = 2 * keep_alive + SLACK;
    wait_until("the partition detected", || {
        rig.publisher_loop.error_count() > errors_before
    })
    .await;
    let (detected_at, error) = rig.publisher_loop.errors()[errors_before].clone();
    let detection = detected_at - partition_start;
    eprintln!("{tag}: partition detected after {detection:?} ({error})");
    assert!(
        detection <= bound,
        "detected after {detection:?}, more than two keep-alives ({keep_alive:?} each) plus {SLACK:?}"
    );
    // Longer than two keep-alive intervals in all. The pause sets the partition's length; what
    // follows waits on conditions.
    tokio::time::sleep_until(partition_start + 5 * keep_alive / 2).await;
    rig.proxy.pass();
    let outcome = rig.finish(N).await;
    assert_fault_counted(&outcome, 1.0, &["keepalive_timeout"]);
    rig.check_attribute_keys();
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_silent_partition_is_detected_within_two_keep_alives_and_loses_nothing() {
    silent_partition::<v4::TracedClient>("v4-partition", Duration::from_secs(1)).await;
}

/// rumqttc's MQTT 5 options refuse a keep-alive under 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn v5_silent_partition_is_detected_within_two_keep_alives_and_loses_nothing() {
    silent_partition::<v5::TracedClient>("v5-partition", Duration::from_secs(5)).await;
}

/// Two TCP resets in the middle of the stream.
async fn resets<C: TracedPublish>(tag: &'static str) {
    let mut rig = Rig::<C>::start(tag, None).await;
    for (round, range) in [0..N / 3, N / 3..2 * N / 3].into_iter().enumerate() {
        let start = range.start;
        rig.publish(range).await;
        wait_until("some of the round forwarded", || {
            rig.proxy.publishes().iter().any(|p| {
                std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|text| text.parse::<usize>().ok())
                    .is_some_and(|i| i >= start)
            })
        })
        .await;
        rig.proxy.reset();
        rig.wait_reconnects(round as f64 + 1.0).await;
    }
    rig.publish(2 * N / 3..N).await;
    let outcome = rig.finish(N).await;
    assert_fault_counted(&outcome, 2.0, &["connection_reset"]);
    rig.check_attribute_keys();
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_connection_resets_lose_nothing() {
    resets::<v4::TracedClient>("v4-reset").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_connection_resets_lose_nothing() {
    resets::<v5::TracedClient>("v5-reset").await;
}

/// A connection cut after the first 6 bytes of a PUBLISH (its fixed header and part of the
/// topic): the broker sees a truncated packet and the end of the stream.
async fn cut_mid_publish<C: TracedPublish>(tag: &'static str) {
    let mut rig = Rig::<C>::start(tag, None).await;
    rig.publish(0..N / 2).await;
    rig.wait_ended(N / 2).await;
    rig.proxy.cut_next_publish(6);
    rig.publish(N / 2..N).await;
    wait_until("the cut", || rig.proxy.cuts_done() == 1).await;
    let outcome = rig.finish(N).await;
    assert_fault_counted(&outcome, 1.0, &["connection_closed", "connection_reset"]);
    rig.check_attribute_keys();
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_a_connection_cut_in_the_middle_of_a_publish_loses_nothing() {
    cut_mid_publish::<v4::TracedClient>("v4-cut").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_a_connection_cut_in_the_middle_of_a_publish_loses_nothing() {
    cut_mid_publish::<v5::TracedClient>("v5-cut").await;
}

/// 200 ms each way for the whole stream: nothing fails, nothing reconnects.
async fn latency<C: TracedPublish>(tag: &'static str) {
    let mut rig = Rig::<C>::start(tag, None).await;
    rig.proxy.set_latency(LATENCY, LATENCY);
    rig.publish(0..N).await;
    let outcome = rig.finish(N).await;
    assert_eq!(outcome.reconnects, 0.0, "{outcome:?}");
    assert!(outcome.connection_errors.is_empty(), "{outcome:?}");
    rig.check_attribute_keys();
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_latency_of_200_ms_each_way_loses_nothing() {
    latency::<v4::TracedClient>("v4-latency").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_latency_of_200_ms_each_way_loses_nothing() {
    latency::<v5::TracedClient>("v5-latency").await;
}

/// Resets while the in-flight window is full: `RESETS` times, the proxy waits until the whole
/// window was written on the current connection (the acknowledgements are then on their way
/// back, 200 ms late) and resets it, so that every reconnect replays a full window.
const RESETS: usize = 3;

/// Publishes the stream under 200 ms latency each way and resets each connection once its
/// in-flight window is full.
async fn resets_under_latency_run<C: TracedPublish>(tag: &'static str) -> Rig<C> {
    let rig = Rig::<C>::start(tag, None).await;
    rig.proxy.set_latency(LATENCY, LATENCY);
    rig.publish(0..N).await;
    for round in 0..RESETS {
        wait_until("a full window written", || {
            rig.publishes_on_newest_connection() >= usize::from(WINDOW)
        })
        .await;
        rig.proxy.reset();
        rig.wait_reconnects(round as f64 + 1.0).await;
    }
    rig
}

async fn resets_under_latency<C: TracedPublish>(tag: &'static str) {
    let mut rig = resets_under_latency_run::<C>(tag).await;
    let outcome = rig.finish(N).await;
    assert_fault_counted(&outcome, RESETS as f64, &["connection_reset"]);
    assert!(
        outcome.retransmissions >= RESETS,
        "each reset replays its window: {outcome:?}"
    );
    rig.check_attribute_keys();
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_resets_under_latency_with_a_full_inflight_window_lose_nothing() {
    resets_under_latency::<v4::TracedClient>("v4-latency-resets").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_resets_under_latency_with_a_full_inflight_window_lose_nothing() {
    resets_under_latency::<v5::TracedClient>("v5-latency-resets").await;
}

/// Checks the DUP flag of every PUBLISH the publisher sent ([MQTT-3.3.1-1]: the DUP flag MUST
/// be set to 1 by the Client when it attempts to re-deliver a PUBLISH packet; MQTT 3.1.1 and 5
/// section 3.3.1.1: DUP = 0 means the first attempt). A message's first transmission must have
/// DUP = 0; each later one with the same packet id on a later connection (a re-delivery in the
/// resumed session, MQTT section 4.4) must have DUP = 1.
fn assert_dup_flags(records: &[PublishRecord]) {
    let mut first: BTreeMap<&[u8], &PublishRecord> = BTreeMap::new();
    let mut wrong_first = Vec::new();
    let mut redeliveries = 0;
    let mut unflagged = Vec::new();
    for record in records {
        match first.get(record.payload.as_slice()) {
            None => {
                if record.dup {
                    wrong_first.push(record.clone());
                }
                first.insert(&record.payload, record);
            }
            Some(earlier) => {
                assert_eq!(
                    record.pkid, earlier.pkid,
                    "a re-delivery keeps its packet id (MQTT section 4.4): {earlier:?} then {record:?}"
                );
                assert!(
                    record.connection > earlier.connection,
                    "re-sent on the same connection: {earlier:?} then {record:?}"
                );
                redeliveries += 1;
                if !record.dup {
                    unflagged.push(record.clone());
                }
            }
        }
    }
    assert!(redeliveries > 0, "the scenario re-delivered nothing");
    assert!(
        wrong_first.is_empty(),
        "first transmissions with DUP = 1: {wrong_first:?}"
    );
    let connections: BTreeSet<usize> = unflagged.iter().map(|r| r.connection).collect();
    assert!(
        unflagged.is_empty(),
        "[MQTT-3.3.1-1] {} of {redeliveries} re-delivered PUBLISH packets have DUP = 0 (on \
         connections {connections:?}); first: {:?}",
        unflagged.len(),
        unflagged.first()
    );
}

async fn redelivered_publishes_carry_the_dup_flag<C: TracedPublish>(tag: &'static str) {
    let mut rig = resets_under_latency_run::<C>(tag).await;
    // The stream completes first, so the record holds every transmission. The spans are the
    // other tests' business: this one reads the wire only.
    rig.wait_complete(N).await;
    assert_dup_flags(&rig.proxy.publishes());
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_redelivered_publishes_carry_the_dup_flag() {
    redelivered_publishes_carry_the_dup_flag::<v4::TracedClient>("v4-dup").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_redelivered_publishes_carry_the_dup_flag() {
    redelivered_publishes_carry_the_dup_flag::<v5::TracedClient>("v5-dup").await;
}
