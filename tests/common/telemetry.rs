//! In-memory telemetry for integration tests: a tracer provider with the SDK's
//! `InMemorySpanExporter` (simple processor, so every ended span is exported at once) and
//! helpers to find spans and attributes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanProcessor};
use rumqttc_opentelemetry::{Instrumentation, InstrumentationBuilder};

/// A span exporter that drops every batch.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// A tracer provider exporting to memory, and the builder of an instrumentation that uses it.
pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

impl Telemetry {
    /// A provider whose spans go through the SDK's batch processor to an exporter that keeps
    /// nothing (for soak tests: the pipeline runs, memory must not grow). `exporter` stays empty.
    pub fn discarding() -> Self {
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Discard)
            .build();
        Self {
            exporter: InMemorySpanExporter::default(),
            provider,
        }
    }

    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    /// An instrumentation builder wired to this provider.
    pub fn builder(&self) -> InstrumentationBuilder {
        Instrumentation::builder().tracer_provider(&self.provider)
    }

    /// The default instrumentation, wired to this provider.
    pub fn instrumentation(&self) -> Instrumentation {
        self.builder().build()
    }

    /// Every span exported so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter
            .get_finished_spans()
            .expect("the in-memory exporter is not shut down")
    }

    /// The exported spans of one kind.
    pub fn spans_of(&self, kind: SpanKind) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|span| span.span_kind == kind)
            .collect()
    }
}

/// The value of attribute `key` on `span`.
pub fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// A tracer provider whose span processor appends every ended span, synchronously inside
/// `Span::end`, to a shared log. Unlike the in-memory exporter it can say how many spans ended
/// without copying them, and hand out only the spans ended since a given count, so a test can
/// check after every event exactly which spans that event ended.
#[derive(Clone, Debug)]
pub struct SpanLog {
    ended: Arc<Mutex<Vec<SpanData>>>,
    pub provider: SdkTracerProvider,
}

#[derive(Debug)]
struct LogProcessor {
    ended: Arc<Mutex<Vec<SpanData>>>,
}

impl SpanProcessor for LogProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.ended.lock().unwrap().push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl SpanLog {
    pub fn new() -> Self {
        let ended = Arc::new(Mutex::new(Vec::new()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LogProcessor {
                ended: Arc::clone(&ended),
            })
            .build();
        Self { ended, provider }
    }

    /// An instrumentation builder wired to this provider.
    pub fn builder(&self) -> InstrumentationBuilder {
        Instrumentation::builder().tracer_provider(&self.provider)
    }

    /// The default instrumentation, wired to this provider.
    pub fn instrumentation(&self) -> Instrumentation {
        self.builder().build()
    }

    /// How many spans have ended so far.
    pub fn len(&self) -> usize {
        self.ended.lock().unwrap().len()
    }

    /// The spans ended after the first `n`.
    pub fn since(&self, n: usize) -> Vec<SpanData> {
        let ended = self.ended.lock().unwrap();
        ended.get(n..).map(<[SpanData]>::to_vec).unwrap_or_default()
    }

    /// Every span ended so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.since(0)
    }

    /// The ended spans of one kind.
    pub fn spans_of(&self, kind: SpanKind) -> Vec<SpanData> {
        let ended = self.ended.lock().unwrap();
        ended
            .iter()
            .filter(|span| span.span_kind == kind)
            .cloned()
            .collect()
    }

    /// How many spans of one kind have ended.
    pub fn count_of(&self, kind: SpanKind) -> usize {
        let ended = self.ended.lock().unwrap();
        ended.iter().filter(|span| span.span_kind == kind).count()
    }
}

/// The string value of attribute `key` on `span`.
pub fn string_attribute(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(|value| value.as_str().into_owned())
}

/// The integer value of attribute `key` on `span`.
pub fn int_attribute(span: &SpanData, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::I64(value)) => Some(*value),
        _ => None,
    }
}

/// `messaging.mqtt.packet_id` of a span.
pub fn packet_id(span: &SpanData) -> Option<i64> {
    int_attribute(span, "messaging.mqtt.packet_id")
}

/// `error.type` of a span.
pub fn error_type(span: &SpanData) -> Option<String> {
    string_attribute(span, "error.type")
}

/// `messaging.destination.name` (the topic) of a span.
pub fn destination(span: &SpanData) -> Option<String> {
    string_attribute(span, "messaging.destination.name")
}

/// The W3C `traceparent` (version 00) of a span, as a propagator writes it.
pub fn traceparent_of(span: &SpanData) -> String {
    let context = &span.span_context;
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// Asserts that a span ended as an error with this `error.type`.
#[track_caller]
pub fn assert_error(span: &SpanData, expected: &str) {
    assert_eq!(
        error_type(span).as_deref(),
        Some(expected),
        "error.type of {span:#?}"
    );
    assert!(
        matches!(&span.status, Status::Error { .. }),
        "status of {span:#?}"
    );
}

/// Asserts that a span ended successfully: status unset, no `error.type`.
#[track_caller]
pub fn assert_success(span: &SpanData) {
    assert_eq!(span.status, Status::Unset, "status of {span:#?}");
    assert_eq!(error_type(span), None, "error.type of {span:#?}");
}

/// The attribute keys that occur more than once on `span`, each named once, in order of first
/// repetition.
pub fn repeated_attribute_keys(span: &SpanData) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut repeated = Vec::new();
    for kv in &span.attributes {
        let key = kv.key.as_str();
        if !seen.insert(key) && !repeated.iter().any(|k: &String| k == key) {
            repeated.push(key.to_owned());
        }
    }
    repeated
}

/// Asserts that every span has each attribute key at most once. OpenTelemetry's common
/// attribute rules (and OTLP) require the keys of an attribute collection to be unique; the SDK
/// appends, so setting a key twice on a span exports it twice. On failure names every offending
/// span (name, span id) with its repeated keys and their values, and how many spans offend.
#[track_caller]
pub fn assert_unique_attribute_keys<'a>(spans: impl IntoIterator<Item = &'a SpanData>) {
    let mut offenders = Vec::new();
    let mut checked = 0;
    let mut offending_spans = 0;
    for span in spans {
        checked += 1;
        let repeated = repeated_attribute_keys(span);
        offending_spans += usize::from(!repeated.is_empty());
        for key in repeated {
            let values: Vec<String> = span
                .attributes
                .iter()
                .filter(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
                .collect();
            offenders.push(format!(
                "span {:?} ({}): key {key} {} times: {values:?}",
                span.name,
                span.span_context.span_id(),
                values.len()
            ));
        }
    }
    assert!(
        offenders.is_empty(),
        "{} of {checked} spans repeat an attribute key (attribute keys must be unique); first ones:\n{}",
        offending_spans,
        offenders[..offenders.len().min(5)].join("\n")
    );
}

impl Telemetry {
    /// The exported spans of `kind` whose `messaging.destination.name` is `topic`.
    pub fn spans_on(&self, kind: SpanKind, topic: &str) -> Vec<SpanData> {
        self.spans_of(kind)
            .into_iter()
            .filter(|span| destination(span).as_deref() == Some(topic))
            .collect()
    }

    /// Waits (bounded by `traced::DEADLINE`) until `n` spans of `kind` on `topic` were
    /// exported, and returns them.
    pub async fn wait_spans(&self, kind: SpanKind, topic: &str, n: usize) -> Vec<SpanData> {
        super::traced::wait_until(&format!("{n} {kind:?} span(s) on {topic}"), || {
            self.spans_on(kind.clone(), topic).len() >= n
        })
        .await;
        self.spans_on(kind, topic)
    }
}
