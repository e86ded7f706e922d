//! [`Instrumentation`]: what the traced clients record, where it goes, and how context travels.
//!
//! Every setting has a default that works without configuration, so
//! `Instrumentation::default()` (what `TracedClient::new` uses) is a complete set-up:
//!
//! | setting | default |
//! |---|---|
//! | tracer provider | the global one, read when the `Instrumentation` is built |
//! | meter provider | the global one, read when the `Instrumentation` is built |
//! | propagator | the application's global one, read when the `Instrumentation` is built: when none is installed, or it writes exactly `traceparent`/`tracestate` (and `baggage`), the built-in strict [`W3CPropagator`] does the same (with baggage when there is no global one or it writes baggage); any other (B3, Jaeger, the application's own) is used as it is, through the same carriers |
//! | consumer parent | [`ParentMode::CreationContext`] |
//! | MQTT 3.1.1 propagation | [`V4Propagation::None`]: payload bytes never change |
//! | publisher destination templates | none: span names use the topic |
//! | raw topic in metric attributes | off |
//! | client id in connection metrics | off |
//! | body and envelope sizes on spans, body-size histogram | off (opt-in in semconv; a measurement per message) |
//! | acknowledgement bound | 60 s |
//!
//! Build the `Instrumentation` after the application has installed its providers: the global
//! tracer and meter are looked up once, at [`InstrumentationBuilder::build`].
//!
//! ```
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use rumqttc_opentelemetry::{Instrumentation, ParentMode, V4Propagation};
//!
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter).build();
//! let instrumentation = Instrumentation::builder()
//!     .tracer_provider(&provider)
//!     .parent_mode(ParentMode::Link)
//!     .v4_propagation(V4Propagation::Envelope)
//!     .publish_template("home/+/temperature")?
//!     .build();
//! # Ok::<(), rumqttc_opentelemetry::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Tracer, TracerProvider};
use opentelemetry::{InstrumentationScope, KeyValue};

use crate::error::Error;
use crate::hooks::{OnEnd, OnStart, StartContext};
use crate::metrics::Metrics;
use crate::propagation::{GlobalChoice, W3CPropagator, default_propagator};
use crate::semconv::{MessageFacts, Operation};
use crate::topic::TopicFilterSet;

/// The instrumentation scope name of this crate's tracer and meter.
pub const SCOPE_NAME: &str = env!("CARGO_PKG_NAME");

/// Where a consumer's span (receive, process) takes its parent from.
///
/// OpenTelemetry messaging semconv lets an instrumentation either parent a consumer span on the
/// producer's context or link to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentMode {
    /// The default: the producer's span (the context in the message) is the parent, so a
    /// trace shows publisher, broker hop and subscriber as one waterfall. A span that is current
    /// where the message is received (an ambient span), if any, becomes a link.
    #[default]
    CreationContext,
    /// Semconv's strict form: the consumer span is a child of the ambient context (or a root),
    /// and links to the producer's context.
    Link,
}

/// How MQTT 3.1.1 publishes carry context. MQTT 3.1.1 has no user properties, so any choice but
/// [`V4Propagation::None`] changes the payload bytes.
///
/// Receivers built on this crate always recognise and strip an envelope, whatever their own
/// setting, so the application sees the original payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum V4Propagation {
    /// The default: no context is sent and payload bytes never change, so a swapped-in client
    /// stays wire-compatible with consumers that are not instrumented. Each MQTT 3.1.1 message
    /// starts a new trace at its receiver.
    #[default]
    None,
    /// Wrap the payload in the envelope of [`crate::propagation::envelope`]. Only consumers that
    /// understand the envelope (this crate, or a port of its format) see the original payload.
    Envelope,
    /// Add `traceparent`/`tracestate`/`baggage` members to JSON-object payloads, as the W3C MQTT
    /// binding recommends; payloads that are not JSON objects are sent unchanged. Receivers with
    /// this setting read the members back; the members stay in the payload.
    JsonFields,
}

/// The propagator the instrumentation injects and extracts with.
#[derive(Clone)]
pub(crate) enum Propagator {
    /// The built-in strict W3C propagator (fast path).
    W3C(W3CPropagator),
    /// Any other `TextMapPropagator` the application supplied.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for Propagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::W3C(propagator) => propagator.fmt(f),
            Self::Custom(propagator) => propagator.fmt(f),
        }
    }
}

/// What the traced clients record, where it goes, and how context travels. Cheap to clone.
///
/// See the [module documentation](self) for the defaults.
#[derive(Clone)]
pub struct Instrumentation {
    pub(crate) inner: Arc<Settings>,
}

pub(crate) struct Settings {
    pub(crate) tracer: BoxedTracer,
    pub(crate) meter: Meter,
    pub(crate) propagator: Propagator,
    pub(crate) parent_mode: ParentMode,
    pub(crate) v4_propagation: V4Propagation,
    pub(crate) v4_filters: Option<TopicFilterSet<()>>,
    pub(crate) publish_templates: TopicFilterSet<Template>,
    pub(crate) metric_topics: bool,
    pub(crate) metric_client_id: bool,
    pub(crate) record_sizes: bool,
    pub(crate) ack_timeout: Duration,
    pub(crate) on_start: Vec<Arc<dyn OnStart>>,
    pub(crate) on_end: Vec<Arc<dyn OnEnd>>,
    /// Topics no span is recorded for.
    pub(crate) untraced: Option<TopicFilterSet<()>>,
    pub(crate) metrics: Metrics,
    /// Set once a root span came back without a valid context: the tracer records nothing (the
    /// no-op tracer of an application without a provider, or a provider that was shut down), so
    /// spans are not built at all, as if each were the no-op span that carries its parent's
    /// context.
    tracing_off: AtomicBool,
}

/// A publisher destination template, with its place among the configured ones.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// Where the per-connection caches keep what is built for it.
    pub(crate) index: usize,
    pub(crate) filter: Arc<str>,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.inner;
        f.debug_struct("Instrumentation")
            .field("propagator", &settings.propagator)
            .field("parent_mode", &settings.parent_mode)
            .field("v4_propagation", &settings.v4_propagation)
            .field("publish_templates", &settings.publish_templates.len())
            .field("metric_topics", &settings.metric_topics)
            .field("record_sizes", &settings.record_sizes)
            .field("ack_timeout", &settings.ack_timeout)
            .field("on_start", &settings.on_start.len())
            .field("on_end", &settings.on_end.len())
            .finish_non_exhaustive()
    }
}

impl Default for Instrumentation {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Instrumentation {
    /// A builder starting from the defaults.
    pub fn builder() -> InstrumentationBuilder {
        InstrumentationBuilder::default()
    }

    /// The consumer parent mode.
    pub fn parent_mode(&self) -> ParentMode {
        self.inner.parent_mode
    }

    /// The MQTT 3.1.1 propagation mode.
    pub fn v4_propagation(&self) -> V4Propagation {
        self.inner.v4_propagation
    }

    /// The meter the instruments of this instrumentation come from.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The instruments the traced clients record on, to record by hand what happens outside
    /// them.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The tracer spans come from.
    pub fn tracer(&self) -> &impl Tracer {
        &self.inner.tracer
    }
}

impl Settings {
    /// The publisher template matching `topic`, if one was configured. When several match, the
    /// most specific (fewest wildcards, then longest) wins, so the choice does not depend on
    /// insertion order.
    pub(crate) fn publish_template<'a>(&'a self, topic: &'a str) -> Option<&'a Template> {
        if self.publish_templates.is_empty() {
            return None;
        }
        crate::topic::most_specific(self.publish_templates.matches(topic), |t| &t.filter)
    }

    /// Whether spans are built at all (see `tracing_off`).
    pub(crate) fn tracing(&self) -> bool {
        !self.tracing_off.load(Ordering::Relaxed)
    }

    /// Whether messages on `topic` are traced (see [`InstrumentationBuilder::untraced`]).
    pub(crate) fn traces(&self, topic: &str) -> bool {
        self.untraced
            .as_ref()
            .is_none_or(|filters| filters.matches(topic).next().is_none())
    }

    /// The tracer gave a root span no valid context: it records nothing.
    pub(crate) fn turn_tracing_off(&self) {
        self.tracing_off.store(true, Ordering::Relaxed);
    }

    /// Whether an MQTT 3.1.1 publish on `topic` carries context.
    pub(crate) fn v4_propagates(&self, topic: &str) -> bool {
        self.v4_propagation != V4Propagation::None
            && self
                .v4_filters
                .as_ref()
                .is_none_or(|filters| filters.matches(topic).next().is_some())
    }
}

/// Builds an [`Instrumentation`].
#[must_use]
pub struct InstrumentationBuilder {
    tracer: Option<BoxedTracer>,
    meter: Option<Meter>,
    /// `None`: follow the global propagator at `build`.
    propagator: Option<Propagator>,
    parent_mode: ParentMode,
    v4_propagation: V4Propagation,
    v4_filters: Option<TopicFilterSet<()>>,
    publish_templates: TopicFilterSet<Template>,
    metric_topics: bool,
    metric_client_id: bool,
    record_sizes: bool,
    ack_timeout: Duration,
    on_start: Vec<Arc<dyn OnStart>>,
    on_end: Vec<Arc<dyn OnEnd>>,
    untraced: Option<TopicFilterSet<()>>,
}

impl Default for InstrumentationBuilder {
    fn default() -> Self {
        Self {
            tracer: None,
            meter: None,
            propagator: None,
            parent_mode: ParentMode::default(),
            v4_propagation: V4Propagation::default(),
            v4_filters: None,
            publish_templates: TopicFilterSet::new(),
            metric_topics: false,
            metric_client_id: false,
            record_sizes: false,
            ack_timeout: Duration::from_secs(60),
            on_start: Vec::new(),
            on_end: Vec::new(),
            untraced: None,
        }
    }
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("propagator", &self.propagator)
            .field("parent_mode", &self.parent_mode)
            .field("v4_propagation", &self.v4_propagation)
            .finish_non_exhaustive()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl InstrumentationBuilder {
    /// Takes spans to a tracer of `provider` instead of the global provider.
    pub fn tracer_provider<P, T, S>(mut self, provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        self.tracer = Some(BoxedTracer::new(Box::new(
            provider.tracer_with_scope(scope()),
        )));
        self
    }

    /// Takes metrics to a meter of `provider` instead of the global provider.
    pub fn meter_provider<P: MeterProvider + ?Sized>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Injects and extracts with `propagator` instead of following the global one (see the
    /// [module documentation](self)). It gets MQTT 5 user properties, envelope headers or JSON
    /// members through the carriers of [`crate::propagation`]. The built-in strict one is
    /// [`W3CPropagator`]; the global one, looked up at every use, is
    /// [`GlobalPropagator`](crate::propagation::GlobalPropagator):
    ///
    /// ```
    /// use rumqttc_opentelemetry::Instrumentation;
    /// use rumqttc_opentelemetry::propagation::{GlobalPropagator, W3CPropagator};
    ///
    /// let strict = Instrumentation::builder().propagator(W3CPropagator::new()).build();
    /// let global = Instrumentation::builder().propagator(GlobalPropagator::new()).build();
    /// ```
    pub fn propagator(
        mut self,
        propagator: impl TextMapPropagator + Send + Sync + 'static,
    ) -> Self {
        let builtin = (&propagator as &dyn std::any::Any)
            .downcast_ref::<W3CPropagator>()
            .copied();
        self.propagator = Some(match builtin {
            // The built-in one keeps its fast path and its reports of rejected context.
            Some(builtin) => Propagator::W3C(builtin),
            None => Propagator::Custom(Arc::new(propagator)),
        });
        self
    }

    /// Uses the built-in W3C propagator without `baggage`.
    pub fn without_baggage(mut self) -> Self {
        self.propagator = Some(Propagator::W3C(W3CPropagator::without_baggage()));
        self
    }

    /// Where consumer spans take their parent from (default [`ParentMode::CreationContext`]).
    pub fn parent_mode(mut self, mode: ParentMode) -> Self {
        self.parent_mode = mode;
        self
    }

    /// How MQTT 3.1.1 publishes carry context (default [`V4Propagation::None`]).
    pub fn v4_propagation(mut self, mode: V4Propagation) -> Self {
        self.v4_propagation = mode;
        self
    }

    /// Restricts MQTT 3.1.1 propagation to topics matching `filter` (call again to add more);
    /// publishes on other topics keep their payload unchanged.
    pub fn v4_propagation_filter(mut self, filter: &str) -> Result<Self, Error> {
        self.v4_filters
            .get_or_insert_with(TopicFilterSet::new)
            .insert(filter, ())?;
        Ok(self)
    }

    /// Declares a publisher destination template: a publish whose topic matches `filter` is
    /// named `publish {filter}` and records `messaging.destination.template = filter`, and its
    /// metrics are aggregated under the template instead of the topic.
    pub fn publish_template(mut self, filter: &str) -> Result<Self, Error> {
        let index = match self.publish_templates.get(filter) {
            Some(template) => template.index,
            None => self.publish_templates.len(),
        };
        let template = Template {
            index,
            filter: Arc::from(filter),
        };
        self.publish_templates.insert(filter, template)?;
        Ok(self)
    }

    /// Adds the raw topic (`messaging.destination.name`) to metric attributes. Off by default:
    /// per-device topics would give every device its own time series.
    pub fn metric_topics(mut self, on: bool) -> Self {
        self.metric_topics = on;
        self
    }

    /// Adds `messaging.client.id` to the connection-health metrics. Off by default: a fleet of
    /// thousands of clients would create thousands of time series.
    pub fn metric_client_id(mut self, on: bool) -> Self {
        self.metric_client_id = on;
        self
    }

    /// Records the opt-in `messaging.message.body.size` and `messaging.message.envelope.size`
    /// on spans, and the `mqtt.client.message.body.size` histogram (one more measurement per
    /// message, so it is off by default).
    pub fn record_sizes(mut self, on: bool) -> Self {
        self.record_sizes = on;
        self
    }

    /// How long a QoS 1 or 2 publish may wait for its acknowledgement before its span ends as an
    /// error (`error.type = ack_timeout`), so that no span is held forever when a broker never
    /// answers. Default 60 s. A late acknowledgement after that changes nothing (it is logged at
    /// `debug`, see the README's "Logs").
    pub fn ack_timeout(mut self, bound: Duration) -> Self {
        self.ack_timeout = bound;
        self
    }

    /// Adds a hook that runs before every span starts (see [`crate::hooks`]); hooks run in the
    /// order they were added.
    pub fn on_start(mut self, hook: impl OnStart) -> Self {
        self.on_start.push(Arc::new(hook));
        self
    }

    /// Adds a hook that runs before every span ends (see [`crate::hooks`]).
    pub fn on_end(mut self, hook: impl OnEnd) -> Self {
        self.on_end.push(Arc::new(hook));
        self
    }

    /// Adds attributes to every message span: a start hook ([`Self::on_start`]) that sees the
    /// operation and the facts of the message and pushes attributes.
    ///
    /// ```
    /// use opentelemetry::KeyValue;
    /// use rumqttc_opentelemetry::Instrumentation;
    ///
    /// // `home/{device}/temperature` -> device.id
    /// let instrumentation = Instrumentation::builder()
    ///     .span_attributes(|_operation, facts, attributes| {
    ///         if let Some(device) = facts.topic.split('/').nth(1) {
    ///             attributes.push(KeyValue::new("device.id", device.to_owned()));
    ///         }
    ///     })
    ///     .build();
    /// ```
    pub fn span_attributes<F>(self, hook: F) -> Self
    where
        F: Fn(Operation, &MessageFacts<'_>, &mut Vec<KeyValue>) + Send + Sync + 'static,
    {
        self.on_start(move |start: &mut StartContext<'_>| {
            let mut attributes = Vec::new();
            hook(start.operation(), start.facts(), &mut attributes);
            for attribute in attributes {
                start.add_attribute(attribute);
            }
        })
    }

    /// Leaves messages on topics matching `filter` untraced (call again to add more): no
    /// publish, receive or process span is recorded for them, and a publish carries the context
    /// current where it was made unchanged (as the no-op span would). Broker topics (`$SYS/#`)
    /// and heartbeats are typical. Their messages are still counted in the messaging metrics
    /// (`messaging.client.sent.messages`, `.consumed.messages` and the duration histograms),
    /// under their template or subscription like any other.
    ///
    /// # Errors
    ///
    /// [`Error::Topic`] when `filter` is not a valid topic filter.
    pub fn untraced(mut self, filter: &str) -> Result<Self, Error> {
        self.untraced
            .get_or_insert_with(TopicFilterSet::new)
            .insert(filter, ())?;
        Ok(self)
    }

    /// The instrumentation.
    pub fn build(self) -> Instrumentation {
        let meter = self
            .meter
            .unwrap_or_else(|| global::meter_provider().meter_with_scope(scope()));
        Instrumentation {
            inner: Arc::new(Settings {
                tracer: self
                    .tracer
                    .unwrap_or_else(|| global::tracer_with_scope(scope())),
                metrics: Metrics::new(&meter),
                meter,
                propagator: self
                    .propagator
                    .unwrap_or_else(|| match default_propagator() {
                        GlobalChoice::W3C(builtin) => Propagator::W3C(builtin),
                        GlobalChoice::Global(global) => Propagator::Custom(Arc::new(global)),
                    }),
                parent_mode: self.parent_mode,
                v4_propagation: self.v4_propagation,
                v4_filters: self.v4_filters,
                publish_templates: self.publish_templates,
                metric_topics: self.metric_topics,
                metric_client_id: self.metric_client_id,
                record_sizes: self.record_sizes,
                ack_timeout: self.ack_timeout,
                on_start: self.on_start,
                on_end: self.on_end,
                untraced: self.untraced,
                tracing_off: AtomicBool::new(false),
            }),
        }
    }
}
