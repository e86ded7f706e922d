//! Telemetry set-up of the examples.
//!
//! Each role is a *service* with its own `service.name`, its own `SdkTracerProvider` and its own
//! `SdkMeterProvider`, so that a back end (or the demo's waterfall) shows which program did what,
//! even when the demo runs all three in one process. Where spans and metrics go:
//!
//! | exporter | chosen by | what it does |
//! |---|---|---|
//! | `stdout` | default of the sensor, gateway and collector; `--verbose` in the demo | opentelemetry-stdout: each span (batched) and the metrics (every 60 s and at exit) on stdout |
//! | `otlp` | `OTEL_EXPORTER_OTLP_ENDPOINT` set (needs the `otlp` feature) | OTLP http/protobuf to `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces` and `/v1/metrics` (Jaeger, Tempo, an OpenTelemetry Collector) |
//! | `none` | `--exporter none`; the demo's default | nothing leaves the process |
//!
//! `--exporter stdout|otlp|none` overrides the choice. The demo also records every span and metric
//! in memory ([`Recorder`], an `InMemoryMetricExporter`) for its waterfall and summary table.
//! Logs go to stderr through `tracing-subscriber`, filtered by `RUST_LOG` (`info`, `debug`,
//! `gateway=debug,warn`, ...).

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use rumqttc_opentelemetry::{Instrumentation, InstrumentationBuilder};

use super::Result;
use super::cli::{Args, Failure, usage};

/// Where spans and metrics are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// opentelemetry-stdout.
    Stdout,
    /// OTLP http/protobuf (feature `otlp`).
    Otlp,
    /// Nowhere (only the in-memory recorder, if any).
    None,
}

impl Exporter {
    /// `--exporter`, else OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else `default`.
    pub fn choose(args: &Args, default: Exporter) -> Result<Exporter, Failure> {
        let endpoint_set = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .is_ok_and(|endpoint| !endpoint.trim().is_empty());
        let chosen = match args.get("exporter") {
            Some("stdout" | "console") => Exporter::Stdout,
            Some("otlp") => Exporter::Otlp,
            Some("none") => Exporter::None,
            Some(other) => {
                return Err(usage(format!(
                    "`--exporter` must be stdout, otlp or none, got `{other}`"
                )));
            }
            None if endpoint_set => Exporter::Otlp,
            None => default,
        };
        if chosen == Exporter::Otlp && !cfg!(feature = "otlp") {
            if args.has("exporter") {
                return Err(usage(
                    "this example was built without OTLP support: add `--features otlp` to cargo",
                ));
            }
            eprintln!(
                "warning: OTEL_EXPORTER_OTLP_ENDPOINT is set, but this example was built without \
                 the `otlp` feature (cargo run --features otlp ...); not exporting over OTLP"
            );
            return Ok(default);
        }
        Ok(chosen)
    }
}

/// Sets up log output on stderr: `RUST_LOG` if set (`info`, `debug`, `gateway=debug,warn`, ...),
/// else `default` (for example `info`).
pub fn init_logs(default: &str) {
    init(default, None);
}

/// Like [`init_logs`], and also turns the `tracing` spans of the process into OpenTelemetry spans
/// of `service` with tracing-opentelemetry, as a Rust service would set it up: the `handler` span
/// that `handler_span(true)` opens around each handler becomes a child of the message's `process`
/// span, and what a handler logs inside it becomes an event of that span, in the message's trace.
pub fn init_logs_and_traces(default: &str, service: &Service) {
    use opentelemetry::trace::TracerProvider as _;
    init(
        default,
        Some(service.tracer_provider.tracer(service.name.clone())),
    );
}

fn init(default: &str, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned());
    let filter: tracing_subscriber::filter::Targets = directives.parse().unwrap_or_else(|error| {
        eprintln!(
            "warning: RUST_LOG=`{directives}` is not understood ({error}); using `{default}`"
        );
        default.parse().unwrap_or_default()
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let traces = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    // A second initialisation (tests) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(traces)
        .with(filter)
        .try_init();
}

/// An ended span and the service that recorded it.
#[derive(Debug, Clone)]
pub struct RecordedSpan {
    /// `service.name` of the provider that recorded the span.
    pub service: Arc<str>,
    /// The span.
    pub span: SpanData,
}

/// Collects every ended span of several tracer providers, each tagged with its service (the
/// SDK's `SpanData` does not carry the resource). Cheap to clone; clones share the spans.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    spans: Arc<Mutex<Vec<RecordedSpan>>>,
}

impl Recorder {
    /// Every span ended so far.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.spans
            .lock()
            .map(|spans| spans.clone())
            .unwrap_or_default()
    }

    fn processor(&self, service: &str) -> RecorderProcessor {
        RecorderProcessor {
            service: Arc::from(service),
            recorder: self.clone(),
        }
    }
}

#[derive(Debug)]
struct RecorderProcessor {
    service: Arc<str>,
    recorder: Recorder,
}

impl SpanProcessor for RecorderProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if let Ok(mut spans) = self.recorder.spans.lock() {
            spans.push(RecordedSpan {
                service: self.service.clone(),
                span,
            });
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Where one service's telemetry goes.
#[derive(Debug, Clone)]
pub struct Sinks {
    /// The exporter.
    pub exporter: Exporter,
    /// Also record spans here.
    pub recorder: Option<Recorder>,
    /// Also export metrics here (on `force_flush`, at shutdown, and every 60 s).
    pub metrics: Option<InMemoryMetricExporter>,
}

impl Sinks {
    /// Only `exporter`.
    pub fn exporter(exporter: Exporter) -> Self {
        Self {
            exporter,
            recorder: None,
            metrics: None,
        }
    }
}

/// One service: its tracer and meter provider.
#[derive(Debug, Clone)]
pub struct Service {
    /// `service.name`.
    pub name: String,
    /// Spans of this service.
    pub tracer_provider: SdkTracerProvider,
    /// Metrics of this service.
    pub meter_provider: SdkMeterProvider,
}

impl Service {
    /// Builds the providers of service `name`.
    pub fn new(name: &str, sinks: &Sinks) -> Result<Self> {
        let resource = Resource::builder()
            .with_service_name(name.to_owned())
            .build();
        let mut traces = SdkTracerProvider::builder().with_resource(resource.clone());
        let mut metrics = SdkMeterProvider::builder().with_resource(resource);
        match sinks.exporter {
            Exporter::Stdout => {
                traces = traces.with_batch_exporter(opentelemetry_stdout::SpanExporter::default());
                metrics = metrics.with_reader(
                    PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                        .build(),
                );
            }
            Exporter::Otlp => {
                #[cfg(feature = "otlp")]
                {
                    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
                    let spans = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .build()?;
                    let points = opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .build()?;
                    traces = traces.with_batch_exporter(spans);
                    metrics = metrics.with_reader(PeriodicReader::builder(points).build());
                }
                #[cfg(not(feature = "otlp"))]
                return Err("built without the `otlp` feature".into());
            }
            Exporter::None => {}
        }
        if let Some(recorder) = &sinks.recorder {
            traces = traces.with_span_processor(recorder.processor(name));
        }
        if let Some(memory) = &sinks.metrics {
            metrics = metrics.with_reader(PeriodicReader::builder(memory.clone()).build());
        } else if sinks.exporter == Exporter::None {
            // A provider without any reader refuses observable instruments (and logs an error
            // per gauge); a reader whose exports nobody looks at keeps it quiet.
            metrics = metrics.with_reader(
                PeriodicReader::builder(InMemoryMetricExporter::default())
                    .with_interval(Duration::from_secs(24 * 3600))
                    .build(),
            );
        }
        Ok(Self {
            name: name.to_owned(),
            tracer_provider: traces.build(),
            meter_provider: metrics.build(),
        })
    }

    /// An instrumentation builder on this service's providers.
    pub fn instrumentation(&self) -> InstrumentationBuilder {
        Instrumentation::builder()
            .tracer_provider(&self.tracer_provider)
            .meter_provider(&self.meter_provider)
    }

    /// Exports what is buffered (spans of the batch processor, metrics of every reader).
    pub fn flush(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
    }

    /// Shuts the providers down, which exports what is left (spans, a last collection of the
    /// metrics). Called last: spans ended afterwards are lost.
    pub fn shutdown(&self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}
