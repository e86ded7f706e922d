//! Topic matching benchmarks.
//!
//! - `topic_match/{ours,rumqttc}/{case}`: one `matches(topic, filter)` call on a 4-level topic,
//!   ours against `rumqttc::matches`.
//! - `filter_set/{trie,linear_scan}/{n}`: all filters matching a topic among `n` generated IoT
//!   filters, with [`TopicFilterSet`] and with a scan over a `Vec` using our `matches`.
//!
//! Run with `cargo bench --bench topic`. Compare ratios rather than absolute times.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use rumqttc_opentelemetry::topic::{TopicFilterSet, matches};

const TOPIC: &str = "home/kitchen/sensor-01/temperature";

const CASES: &[(&str, &str)] = &[
    ("exact", "home/kitchen/sensor-01/temperature"),
    ("plus_level", "home/+/sensor-01/temperature"),
    ("hash_tail", "home/kitchen/#"),
    ("early_miss", "site/kitchen/sensor-01/temperature"),
];

fn topic_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_match");
    for &(case, filter) in CASES {
        assert_eq!(
            matches(TOPIC, filter),
            rumqttc::matches(TOPIC, filter),
            "{case}: both must agree for the comparison to be fair"
        );
        group.bench_with_input(BenchmarkId::new("ours", case), &filter, |b, &filter| {
            b.iter(|| matches(black_box(TOPIC), black_box(filter)));
        });
        group.bench_with_input(BenchmarkId::new("rumqttc", case), &filter, |b, &filter| {
            b.iter(|| rumqttc::matches(black_box(TOPIC), black_box(filter)));
        });
    }
    group.finish();
}

/// A small deterministic generator (64-bit LCG, high bits), so runs are comparable.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // `n` is small; the high 32 bits are the good ones.
        usize::try_from(self.0 >> 32).unwrap_or(0) % n.max(1)
    }
}

/// `n` distinct filters in the shapes an IoT backend subscribes to.
fn iot_filters(n: usize) -> Vec<String> {
    let rooms = (n / 20).max(2);
    let sites = (n / 5).max(2);
    let lines = (n / 10).max(2);
    let mut rng = Lcg(0x5EED);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut i = 0_usize;
    while out.len() < n {
        let filter = match i % 5 {
            0 => format!(
                "home/room{}/dev{}/temperature",
                rng.below(rooms),
                rng.below(50)
            ),
            1 => format!("home/room{}/+/humidity", rng.below(rooms)),
            2 => format!("site/{}/#", rng.below(sites)),
            3 => format!("home/room{}/dev{}/+", rng.below(rooms), rng.below(50)),
            _ => format!("factory/line{}/+/status", rng.below(lines)),
        };
        i += 1;
        if seen.insert(filter.clone()) {
            out.push(filter);
        }
    }
    out
}

/// 64 topics from the same space: most match something, some match nothing.
fn iot_topics(n: usize) -> Vec<String> {
    let rooms = (n / 20).max(2);
    let sites = (n / 5).max(2);
    let lines = (n / 10).max(2);
    let mut rng = Lcg(0x70_91C5);
    (0..64)
        .map(|i| match i % 5 {
            0 => format!(
                "home/room{}/dev{}/temperature",
                rng.below(rooms),
                rng.below(50)
            ),
            1 => format!(
                "home/room{}/dev{}/humidity",
                rng.below(rooms),
                rng.below(50)
            ),
            2 => format!("site/{}/gateway/status", rng.below(sites)),
            3 => format!("factory/line{}/m{}/status", rng.below(lines), rng.below(9)),
            _ => format!("office/floor{}/printer/toner", rng.below(9)),
        })
        .collect()
}

fn filter_set(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter_set");
    for n in [10_usize, 1_000, 100_000] {
        let filters = iot_filters(n);
        let topics = iot_topics(n);
        let mut set = TopicFilterSet::new();
        for (i, filter) in filters.iter().enumerate() {
            if let Err(e) = set.insert(filter, i) {
                panic!("generated filter {filter:?} is invalid: {e}");
            }
        }
        // Both sides must find the same filters.
        for topic in &topics {
            let trie = set.matches(topic).count();
            let scan = filters.iter().filter(|f| matches(topic, f)).count();
            assert_eq!(trie, scan, "{topic}");
        }

        group.sampling_mode(if n >= 10_000 {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        group.bench_with_input(BenchmarkId::new("trie", n), &n, |b, _| {
            let mut i = 0_usize;
            b.iter(|| {
                let topic = topics[i % topics.len()].as_str();
                i = i.wrapping_add(1);
                set.matches(black_box(topic)).count()
            });
        });
        group.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            let mut i = 0_usize;
            b.iter(|| {
                let topic = topics[i % topics.len()].as_str();
                i = i.wrapping_add(1);
                filters
                    .iter()
                    .filter(|f| matches(black_box(topic), f))
                    .count()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = topic_match, filter_set
}
criterion_main!(benches);
