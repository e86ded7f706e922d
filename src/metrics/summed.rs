//! [`SummedCounter`]: a monotonic counter whose sums this crate keeps itself, one atomic per
//! attribute set, and reports through an observable counter of the same name, unit and
//! description. A message then costs one atomic add on a cached attribute set instead of the
//! SDK's per-measurement attribute lookup (which hashes every attribute); the exported data is
//! the same monotonic sum.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::Meter;
use opentelemetry::{KeyValue, Value};

/// How many attribute sets one counter keeps apart; beyond, measurements go to one set with
/// `otel.metric.overflow = true`, as the SDK's own cardinality limit does (2,000 by default), so
/// that per-topic attributes cannot grow memory without bound.
pub(crate) const CARDINALITY_LIMIT: usize = 2000;

/// The attribute of the overflow set.
const OVERFLOW: &str = "otel.metric.overflow";

/// The running sum of one attribute set.
#[derive(Debug)]
pub(crate) struct CounterCell {
    attributes: Arc<[KeyValue]>,
    value: AtomicU64,
}

impl CounterCell {
    /// Adds `value` to the sum.
    pub(crate) fn add(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
}

/// Attribute sets compared and hashed by key and value (an `f64` by its bits).
#[derive(Debug, Clone)]
struct AttributeSet(Arc<[KeyValue]>);

fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    match value {
        Value::Bool(b) => (0_u8, b).hash(state),
        Value::I64(i) => (1_u8, i).hash(state),
        Value::F64(f) => (2_u8, f.to_bits()).hash(state),
        Value::String(s) => (3_u8, s.as_str()).hash(state),
        // Arrays are rare in metric attributes; their text is a faithful key.
        other => (4_u8, other.to_string()).hash(state),
    }
}

impl Hash for AttributeSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for kv in self.0.iter() {
            kv.key.hash(state);
            hash_value(&kv.value, state);
        }
    }
}

impl PartialEq for AttributeSet {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for AttributeSet {}

#[derive(Debug, Default)]
struct Cells {
    by_attributes: HashMap<AttributeSet, Arc<CounterCell>>,
    overflow: Option<Arc<CounterCell>>,
}

/// A monotonic `u64` counter summed in this crate and exported by an observable counter.
#[derive(Debug, Clone)]
pub(crate) struct SummedCounter {
    cells: Arc<Mutex<Cells>>,
}

impl SummedCounter {
    /// Registers the observable counter `name` on `meter`.
    pub(crate) fn new(
        meter: &Meter,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        let cells: Arc<Mutex<Cells>> = Arc::default();
        let observed = Arc::clone(&cells);
        // The callback stays registered with the meter provider; the handle is not needed.
        let _ = meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                let cells = observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for cell in cells.by_attributes.values().chain(cells.overflow.iter()) {
                    observer.observe(cell.value.load(Ordering::Relaxed), &cell.attributes);
                }
            })
            .build();
        Self { cells }
    }

    /// The cell of `attributes`, made on first use: the hot path keeps it and adds to it.
    pub(crate) fn cell(&self, attributes: &Arc<[KeyValue]>) -> Arc<CounterCell> {
        let mut cells = self
            .cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = cells.by_attributes.len() >= CARDINALITY_LIMIT;
        match cells
            .by_attributes
            .entry(AttributeSet(Arc::clone(attributes)))
        {
            Entry::Occupied(entry) => Arc::clone(entry.get()),
            Entry::Vacant(entry) if !full => {
                let cell = Arc::new(CounterCell {
                    attributes: Arc::clone(attributes),
                    value: AtomicU64::new(0),
                });
                entry.insert(Arc::clone(&cell));
                cell
            }
            Entry::Vacant(_) => Arc::clone(cells.overflow.get_or_insert_with(|| {
                Arc::new(CounterCell {
                    attributes: Arc::from([KeyValue::new(OVERFLOW, true)]),
                    value: AtomicU64::new(0),
                })
            })),
        }
    }

    /// Adds `value` for `attributes` (the slower path, for attribute sets that are not cached).
    pub(crate) fn add(&self, value: u64, attributes: &[KeyValue]) {
        self.cell(&Arc::from(attributes)).add(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_attribute_set_and_an_overflow_beyond_the_limit() {
        let meter = opentelemetry::global::meter("test");
        let counter = SummedCounter::new(&meter, "c", "{x}", "test");
        let a: Arc<[KeyValue]> = Arc::from([KeyValue::new("k", "a"), KeyValue::new("f", 1.5)]);
        let same: Arc<[KeyValue]> = Arc::from([KeyValue::new("k", "a"), KeyValue::new("f", 1.5)]);
        assert!(Arc::ptr_eq(&counter.cell(&a), &counter.cell(&same)));
        counter.add(2, &a);
        counter.cell(&same).add(3);
        assert_eq!(counter.cell(&a).value.load(Ordering::Relaxed), 5);
        for i in 0..CARDINALITY_LIMIT {
            counter.add(1, &[KeyValue::new("i", i as i64)]);
        }
        let overflow = counter.cell(&Arc::from([KeyValue::new("i", -1_i64)]));
        assert_eq!(&*overflow.attributes, [KeyValue::new(OVERFLOW, true)]);
        // Known sets still find their own cells.
        assert_eq!(counter.cell(&a).value.load(Ordering::Relaxed), 5);
    }

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, InMemoryMetricExporterBuilder, PeriodicReader, SdkMeterProvider,
        Temporality,
    };

    /// What one collection exports of metric `name`: its unit, description, monotonicity,
    /// temporality, and the (attributes, value) points sorted; `None` when it has no points.
    type Exported = Option<(String, String, bool, Temporality, Vec<(Vec<KeyValue>, u64)>)>;

    /// Collects once and returns what was exported of each of `names`.
    fn collect(
        exporter: &InMemoryMetricExporter,
        provider: &SdkMeterProvider,
        names: [&str; 2],
    ) -> [Exported; 2] {
        exporter.reset();
        provider.force_flush().expect("flush");
        let exports = exporter.get_finished_metrics().expect("metrics");
        names.map(|name| {
            let metric = exports
                .iter()
                .flat_map(|export| export.scope_metrics())
                .flat_map(|scope| scope.metrics())
                .find(|m| m.name() == name)?;
            let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                panic!("{name} is not a u64 sum");
            };
            let mut points: Vec<(Vec<KeyValue>, u64)> = sum
                .data_points()
                .map(|p| (p.attributes().cloned().collect(), p.value()))
                .filter(|(_, value)| *value > 0 || sum.temporality() == Temporality::Cumulative)
                .collect();
            points.sort_by_key(|(attributes, _)| format!("{attributes:?}"));
            Some((
                metric.unit().to_owned(),
                metric.description().to_owned(),
                sum.is_monotonic(),
                sum.temporality(),
                points,
            ))
        })
    }

    /// The same measurements through a summed counter and through the SDK's own counter export
    /// the same data (unit, description, monotonic sum, temporality, points), with cumulative and
    /// with delta temporality: the swap changes nothing an exporter sees.
    #[test]
    fn exports_what_the_sdk_counter_exports() {
        for temporality in [Temporality::Cumulative, Temporality::Delta] {
            let exporter = InMemoryMetricExporterBuilder::new()
                .with_temporality(temporality)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(exporter.clone()).build())
                .build();
            let meter = provider.meter("test");
            let summed = SummedCounter::new(&meter, "summed", "{message}", "Messages");
            let sdk = meter
                .u64_counter("sdk")
                .with_unit("{message}")
                .with_description("Messages")
                .build();
            let a: Arc<[KeyValue]> = Arc::from([KeyValue::new("k", "a")]);
            let b = [KeyValue::new("k", "b")];
            let cell = summed.cell(&a);
            for round in 1..=2_u64 {
                cell.add(round);
                sdk.add(round, &a);
                summed.add(10 * round, &b);
                sdk.add(10 * round, &b);
                let [ours, theirs] = collect(&exporter, &provider, ["summed", "sdk"]);
                assert_eq!(ours, theirs, "{temporality:?}, round {round}");
                let (_, _, monotonic, exported, points) = ours.expect("exported");
                assert!(monotonic);
                assert_eq!(exported, temporality);
                let expected = match temporality {
                    Temporality::Delta => vec![(a.to_vec(), round), (b.to_vec(), 10 * round)],
                    _ => {
                        let sum = round * (round + 1) / 2;
                        vec![(a.to_vec(), sum), (b.to_vec(), 10 * sum)]
                    }
                };
                assert_eq!(points, expected, "{temporality:?}, round {round}");
            }
        }
    }
}
