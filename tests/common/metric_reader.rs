//! In-memory metrics for integration tests: a meter provider whose periodic reader exports to
//! the SDK's `InMemoryMetricExporter`, collected on demand with `force_flush`.
//! Include with `#[path = "common/metric_reader.rs"] mod metric_reader;`.
#![allow(dead_code)]

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

pub struct MetricReader {
    pub exporter: InMemoryMetricExporter,
    pub provider: SdkMeterProvider,
}

/// One exported data point, flattened: its attributes and its value (a counter's sum, a
/// gauge's value, or a histogram's count and sum).
#[derive(Debug, Clone)]
pub struct Point {
    pub attributes: Vec<KeyValue>,
    pub value: f64,
    pub count: u64,
}

impl Point {
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }
}

fn flatten<T: Copy>(data: &MetricData<T>, to_f64: impl Fn(T) -> f64) -> Vec<Point> {
    match data {
        MetricData::Sum(sum) => sum
            .data_points()
            .map(|p| Point {
                attributes: p.attributes().cloned().collect(),
                value: to_f64(p.value()),
                count: 1,
            })
            .collect(),
        MetricData::Gauge(gauge) => gauge
            .data_points()
            .map(|p| Point {
                attributes: p.attributes().cloned().collect(),
                value: to_f64(p.value()),
                count: 1,
            })
            .collect(),
        MetricData::Histogram(histogram) => histogram
            .data_points()
            .map(|p| Point {
                attributes: p.attributes().cloned().collect(),
                value: to_f64(p.sum()),
                count: p.count(),
            })
            .collect(),
        MetricData::ExponentialHistogram(_) => Vec::new(),
    }
}

impl MetricReader {
    pub fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Self { exporter, provider }
    }

    /// Collects now and returns the newest export.
    fn collect(&self) -> ResourceMetrics {
        self.exporter.reset();
        self.provider.force_flush().expect("flush metrics");
        let mut exports = self.exporter.get_finished_metrics().expect("metrics");
        exports.pop().expect("one export after a flush")
    }

    /// The data points of metric `name` (empty when it was never recorded).
    pub fn points(&self, name: &str) -> Vec<Point> {
        let export = self.collect();
        let mut points = Vec::new();
        for scope in export.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                points.extend(match metric.data() {
                    AggregatedMetrics::F64(data) => flatten(data, |v| v),
                    // Test values are small: the conversion is exact.
                    AggregatedMetrics::U64(data) => flatten(data, |v| v as f64),
                    AggregatedMetrics::I64(data) => flatten(data, |v| v as f64),
                });
            }
        }
        points
    }

    /// The unit of metric `name`.
    pub fn unit(&self, name: &str) -> Option<String> {
        let export = self.collect();
        export
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|m| m.name() == name)
            .map(|m| m.unit().to_owned())
    }

    /// Sum of the values of metric `name` over every point (a counter's total).
    pub fn total(&self, name: &str) -> f64 {
        self.points(name).iter().map(|p| p.value).sum()
    }

    /// Sum of the histogram counts of metric `name` over every point.
    pub fn count(&self, name: &str) -> u64 {
        self.points(name).iter().map(|p| p.count).sum()
    }
}
