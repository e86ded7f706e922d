//! What the demo prints: the waterfall of one trace (service, span, kind, offset and duration as
//! a bar, indented by parent) and a summary of the metrics (counts, min / p50 / max).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

use super::telemetry::RecordedSpan;

/// Width of the bars of the waterfall, in characters.
const BAR_WIDTH: usize = 40;

/// ANSI colours for the services, in order of appearance.
const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

/// The value of attribute `key`.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The spans of `trace`.
pub fn spans_of(spans: &[RecordedSpan], trace: TraceId) -> Vec<&RecordedSpan> {
    spans
        .iter()
        .filter(|recorded| recorded.span.span_context.trace_id() == trace)
        .collect()
}

/// Traces that contain a span of every one of `services` and a span named `last_span`, in the
/// order their first span started.
pub fn complete_traces(spans: &[RecordedSpan], services: &[&str], last_span: &str) -> Vec<TraceId> {
    let mut seen: HashMap<TraceId, (SystemTime, HashSet<&str>, bool)> = HashMap::new();
    for recorded in spans {
        let entry = seen
            .entry(recorded.span.span_context.trace_id())
            .or_insert_with(|| (recorded.span.start_time, HashSet::new(), false));
        entry.0 = entry.0.min(recorded.span.start_time);
        entry.1.insert(&recorded.service);
        entry.2 |= recorded.span.name == last_span;
    }
    let mut complete: Vec<(SystemTime, TraceId)> = seen
        .into_iter()
        .filter(|(_, (_, present, last))| *last && services.iter().all(|s| present.contains(s)))
        .map(|(trace, (start, _, _))| (start, trace))
        .collect();
    complete.sort_by_key(|(start, _)| *start);
    complete.into_iter().map(|(_, trace)| trace).collect()
}

fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// `1.23 ms`, `456 µs`, `2.50 s`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1e6 {
        format!("{:.2} ms", micros / 1000.0)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

fn since(start: SystemTime, time: SystemTime) -> Duration {
    time.duration_since(start).unwrap_or_default()
}

fn paint(text: &str, colour: Option<&str>) -> String {
    match colour {
        Some(code) => format!("\x1b[{code}m{text}\x1b[0m"),
        None => text.to_owned(),
    }
}

/// Renders the waterfall of `trace`: one line per span in tree order (children by start time),
/// with its service, name indented by depth, kind, offset from the trace's start, duration, and
/// a bar on the common time axis. A span whose parent is not in the trace is a root. With
/// `colour`, each service has its ANSI colour.
pub fn waterfall(spans: &[RecordedSpan], trace: TraceId, colour: bool) -> String {
    let spans = spans_of(spans, trace);
    let Some(start) = spans.iter().map(|s| s.span.start_time).min() else {
        return format!("trace {trace}: no spans\n");
    };
    let end = spans.iter().map(|s| s.span.end_time).max().unwrap_or(start);
    let total = since(start, end).max(Duration::from_micros(1));
    let ids: HashSet<SpanId> = spans
        .iter()
        .map(|s| s.span.span_context.span_id())
        .collect();
    let mut children: HashMap<Option<SpanId>, Vec<&RecordedSpan>> = HashMap::new();
    for recorded in &spans {
        let parent = recorded.span.parent_span_id;
        let key = (parent != SpanId::INVALID && ids.contains(&parent)).then_some(parent);
        children.entry(key).or_default().push(recorded);
    }
    for siblings in children.values_mut() {
        siblings.sort_by_key(|s| (s.span.start_time, s.span.end_time));
    }
    // Depth-first, tree order.
    let mut rows: Vec<(usize, &RecordedSpan)> = Vec::new();
    let mut stack: Vec<(usize, &RecordedSpan)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (0, *s)).collect())
        .unwrap_or_default();
    while let Some((depth, recorded)) = stack.pop() {
        rows.push((depth, recorded));
        if let Some(kids) = children.get(&Some(recorded.span.span_context.span_id())) {
            stack.extend(kids.iter().rev().map(|kid| (depth + 1, *kid)));
        }
    }

    let mut services: Vec<&str> = Vec::new();
    for (_, recorded) in &rows {
        if !services.contains(&&*recorded.service) {
            services.push(&recorded.service);
        }
    }
    let colour_of = |service: &str| {
        colour.then(|| {
            let index = services.iter().position(|s| *s == service).unwrap_or(0);
            COLOURS[index % COLOURS.len()]
        })
    };
    let service_width = services.iter().map(|s| s.len()).max().unwrap_or(7).max(7);
    let name_width = rows
        .iter()
        .map(|(depth, s)| depth * 2 + s.span.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {trace}: {} spans, {} services, {}",
        rows.len(),
        services.len(),
        format_duration(since(start, end))
    );
    let axis = format!("0{:>width$}", format_duration(total), width = BAR_WIDTH - 1);
    let _ = writeln!(
        out,
        "{:<service_width$}  {:<name_width$}  {:<8}  {:>9}  {:>9}  {axis}",
        "service", "span", "kind", "start", "duration"
    );
    for (depth, recorded) in rows {
        let span = &recorded.span;
        let offset = since(start, span.start_time);
        let duration = since(span.start_time, span.end_time);
        let scale = BAR_WIDTH as f64 / total.as_secs_f64();
        let from = ((offset.as_secs_f64() * scale).floor() as usize).min(BAR_WIDTH - 1);
        let to = (((offset + duration).as_secs_f64() * scale).ceil() as usize)
            .clamp(from + 1, BAR_WIDTH);
        let bar: String = (0..BAR_WIDTH)
            .map(|i| if (from..to).contains(&i) { '█' } else { '·' })
            .collect();
        let name = format!("{}{}", "  ".repeat(depth), span.name);
        let error = match &span.status {
            Status::Error { .. } => {
                let kind = attribute(&span.attributes, "error.type")
                    .map(|v| v.as_str().into_owned())
                    .unwrap_or_else(|| "error".into());
                format!("  ✗ {kind}")
            }
            _ => String::new(),
        };
        let colour = colour_of(&recorded.service);
        let _ = writeln!(
            out,
            "{}  {:<name_width$}  {:<8}  {:>9}  {:>9}  {}{error}",
            paint(&format!("{:<service_width$}", recorded.service), colour),
            name,
            kind_name(&span.span_kind),
            format_duration(offset),
            format_duration(duration),
            paint(&bar, colour),
        );
    }
    out
}

/// Attributes that every point has, left out of the summary.
const COMMON_ATTRIBUTES: [&str; 8] = [
    "messaging.system",
    "messaging.operation.type",
    "server.address",
    "server.port",
    "network.protocol.name",
    "network.protocol.version",
    "db.system.name",
    "messaging.mqtt.qos",
];

fn describe(attributes: &[KeyValue]) -> String {
    let mut parts = Vec::new();
    let operation = attribute(attributes, "messaging.operation.name")
        .or_else(|| attribute(attributes, "db.operation.name"));
    let target = attribute(attributes, "messaging.destination.template")
        .or_else(|| attribute(attributes, "messaging.destination.name"))
        .or_else(|| attribute(attributes, "db.collection.name"));
    match (operation, target) {
        (Some(op), Some(target)) => parts.push(format!("{} {}", op.as_str(), target.as_str())),
        (Some(op), None) => parts.push(op.as_str().into_owned()),
        _ => {}
    }
    let mut rest: Vec<&KeyValue> = attributes
        .iter()
        .filter(|kv| {
            let key = kv.key.as_str();
            !COMMON_ATTRIBUTES.contains(&key)
                && !matches!(
                    key,
                    "messaging.operation.name"
                        | "db.operation.name"
                        | "messaging.destination.template"
                        | "messaging.destination.name"
                        | "db.collection.name"
                )
        })
        .collect();
    rest.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    parts.extend(rest.iter().map(|kv| format!("{}={}", kv.key, kv.value)));
    parts.join(" ")
}

/// The `q` quantile of a histogram estimated from its buckets, interpolating linearly inside
/// the bucket (bounded by the exact min and max).
pub fn quantile(bounds: &[f64], counts: &[u64], min: f64, max: f64, q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (below + count) as f64 >= rank {
            let lower = if i == 0 { min } else { bounds[i - 1].max(min) };
            let upper = bounds.get(i).map_or(max, |bound| bound.min(max));
            let within = (rank - below as f64) / count as f64;
            return lower + (upper - lower) * within.clamp(0.0, 1.0);
        }
        below += count;
    }
    max
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "s" => format_duration(Duration::from_secs_f64(value.max(0.0))),
        "By" => format!("{value:.0} B"),
        _ => format!("{value}"),
    }
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct Line {
    /// `service.name`.
    pub service: String,
    /// The instrument.
    pub metric: String,
    /// The interesting attributes.
    pub attributes: String,
    /// A counter's sum, or a histogram's count.
    pub count: f64,
    /// Min, p50 and max of a histogram, formatted in its unit.
    pub spread: Option<(String, String, String)>,
}

/// The summary lines of the last export of each service: counters and histograms (gauges are
/// left out: at exit they read 0), ordered by `services` then by name.
pub fn metric_lines(exports: &[ResourceMetrics], services: &[&str]) -> Vec<Line> {
    // Exports are cumulative: the last one of each service has everything.
    let mut last: BTreeMap<String, &ResourceMetrics> = BTreeMap::new();
    for export in exports {
        let service = export
            .resource()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.as_str().into_owned())
            .unwrap_or_default();
        last.insert(service, export);
    }
    let mut lines = Vec::new();
    for (service, export) in &last {
        for scope in export.scope_metrics() {
            for metric in scope.metrics() {
                let unit = metric.unit();
                let mut push = |attributes: Vec<KeyValue>, count: f64, spread| {
                    lines.push(Line {
                        service: service.clone(),
                        metric: metric.name().to_owned(),
                        attributes: describe(&attributes),
                        count,
                        spread,
                    });
                };
                match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                        for point in histogram.data_points() {
                            let bounds: Vec<f64> = point.bounds().collect();
                            let counts: Vec<u64> = point.bucket_counts().collect();
                            let min = point.min().unwrap_or(0.0);
                            let max = point.max().unwrap_or(0.0);
                            let p50 = quantile(&bounds, &counts, min, max, 0.5);
                            push(
                                point.attributes().cloned().collect(),
                                point.count() as f64,
                                Some((
                                    format_value(min, unit),
                                    format_value(p50, unit),
                                    format_value(max, unit),
                                )),
                            );
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(histogram)) => {
                        for point in histogram.data_points() {
                            let bounds: Vec<f64> = point.bounds().collect();
                            let counts: Vec<u64> = point.bucket_counts().collect();
                            let min = point.min().unwrap_or(0) as f64;
                            let max = point.max().unwrap_or(0) as f64;
                            let p50 = quantile(&bounds, &counts, min, max, 0.5);
                            push(
                                point.attributes().cloned().collect(),
                                point.count() as f64,
                                Some((
                                    format_value(min, unit),
                                    format_value(p50, unit),
                                    format_value(max, unit),
                                )),
                            );
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for point in sum.data_points() {
                            push(
                                point.attributes().cloned().collect(),
                                point.value() as f64,
                                None,
                            );
                        }
                    }
                    AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                        for point in sum.data_points() {
                            push(
                                point.attributes().cloned().collect(),
                                point.value() as f64,
                                None,
                            );
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Sum(sum)) => {
                        for point in sum.data_points() {
                            push(point.attributes().cloned().collect(), point.value(), None);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let rank = |service: &str| {
        services
            .iter()
            .position(|s| *s == service)
            .unwrap_or(usize::MAX)
    };
    lines.sort_by(|a, b| {
        (rank(&a.service), &a.metric, &a.attributes).cmp(&(
            rank(&b.service),
            &b.metric,
            &b.attributes,
        ))
    });
    lines
}

/// The summary table of `lines`.
pub fn metrics_table(lines: &[Line]) -> String {
    let service_width = lines
        .iter()
        .map(|l| l.service.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let metric_width = lines
        .iter()
        .map(|l| l.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let attributes_width = lines
        .iter()
        .map(|l| l.attributes.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<service_width$}  {:<metric_width$}  {:<attributes_width$}  {:>6}  {:>9}  {:>9}  {:>9}",
        "service", "metric", "attributes", "count", "min", "p50", "max"
    );
    for line in lines {
        let (min, p50, max) = line
            .spread
            .clone()
            .unwrap_or_else(|| (String::new(), String::new(), String::new()));
        let _ = writeln!(
            out,
            "{:<service_width$}  {:<metric_width$}  {:<attributes_width$}  {:>6}  {:>9}  {:>9}  {:>9}",
            line.service, line.metric, line.attributes, line.count, min, p50, max
        );
    }
    out
}
