//! Hooks at the start and the end of the spans this crate records (publish, receive, process,
//! settle), in the style of tower-http's `MakeSpan` / `OnResponse` and reqwest-tracing's span
//! backend: a small trait per moment, implemented for closures and for `()` (no hook), with the
//! crate's own defaults public so that a hook can build on them.
//!
//! - [`OnStart`] runs before a span starts: it sees the operation and the facts of the message
//!   (never the payload), may add attributes (given to the sampler with the span's own) and may
//!   rename the span.
//! - [`OnEnd`] runs before a span ends: it sees the operation and the outcome (`Err` carries the
//!   `error.type` the span records) and may add attributes and events to the span.
//!
//! Hooks run only for spans that are built: not when the tracer records nothing, and not for
//! topics left untraced with [`InstrumentationBuilder::untraced`](crate::InstrumentationBuilder::untraced).
//!
//! ```
//! use opentelemetry::KeyValue;
//! use rumqttc_opentelemetry::Instrumentation;
//! use rumqttc_opentelemetry::hooks::{EndContext, StartContext, topic_level};
//! use rumqttc_opentelemetry::semconv::Operation;
//!
//! let instrumentation = Instrumentation::builder()
//!     // `home/{device}/temperature`: the device as an attribute, and a shorter name for
//!     // receive spans.
//!     .on_start(|start: &mut StartContext<'_>| {
//!         if let Some(device) = topic_level(start.facts().topic, 1) {
//!             start.add_attribute(KeyValue::new("device.id", device.to_owned()));
//!         }
//!         if start.operation() == Operation::Receive {
//!             start.set_name(format!("got {}", start.facts().destination()));
//!         }
//!     })
//!     .on_end(|end: &mut EndContext<'_>| {
//!         if let Err(error_type) = end.outcome() {
//!             end.add_event("mqtt.publish.failed", vec![KeyValue::new("reason", error_type)]);
//!         }
//!     })
//!     .untraced("$SYS/#")?
//!     .build();
//! # Ok::<(), rumqttc_opentelemetry::Error>(())
//! ```

use std::borrow::Cow;

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, SpanRef};

use crate::semconv::{MessageFacts, Operation};

/// What a start hook sees of a span about to start, and what it can change.
#[derive(Debug)]
pub struct StartContext<'a> {
    operation: Operation,
    facts: &'a MessageFacts<'a>,
    destination: &'a str,
    name: Option<Cow<'static, str>>,
    attributes: Vec<KeyValue>,
}

impl<'a> StartContext<'a> {
    pub(crate) fn new(
        operation: Operation,
        facts: &'a MessageFacts<'a>,
        destination: &'a str,
    ) -> Self {
        Self {
            operation,
            facts,
            destination,
            name: None,
            attributes: Vec::new(),
        }
    }

    /// The operation of the span.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The facts of the message (topic, template, QoS, flags; never the payload).
    pub fn facts(&self) -> &MessageFacts<'a> {
        self.facts
    }

    /// The name the span gets unless a hook sets another: `{operation} {destination}`, the
    /// destination being the template, subscription filter or topic.
    pub fn default_name(&self) -> String {
        self.operation.span_name(self.destination)
    }

    /// Names the span `name` instead of [`Self::default_name`].
    pub fn set_name(&mut self, name: impl Into<Cow<'static, str>>) {
        self.name = Some(name.into());
    }

    /// Adds an attribute to the span, given to the sampler with the span's own. An attribute of
    /// a key the span already has (the crate's or an earlier hook's) replaces it, so each key
    /// appears once.
    pub fn add_attribute(&mut self, attribute: KeyValue) {
        self.attributes.retain(|kv| kv.key != attribute.key);
        self.attributes.push(attribute);
    }

    /// The attributes hooks have added so far.
    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    pub(crate) fn into_parts(self) -> (Option<Cow<'static, str>>, Vec<KeyValue>) {
        (self.name, self.attributes)
    }
}

/// A hook that runs before each span starts.
pub trait OnStart: Send + Sync + 'static {
    /// Called with what the span is about; may add attributes and rename it.
    fn on_start(&self, start: &mut StartContext<'_>);
}

impl<F> OnStart for F
where
    F: Fn(&mut StartContext<'_>) + Send + Sync + 'static,
{
    fn on_start(&self, start: &mut StartContext<'_>) {
        self(start)
    }
}

/// No hook.
impl OnStart for () {
    fn on_start(&self, _start: &mut StartContext<'_>) {}
}

/// The span an end hook writes to.
enum Target<'a> {
    Owned(&'a mut BoxedSpan),
    Current(SpanRef<'a>),
}

/// What an end hook sees of a span about to end, and what it can add to it.
pub struct EndContext<'a> {
    operation: Operation,
    outcome: Result<(), &'static str>,
    span: Target<'a>,
}

impl std::fmt::Debug for EndContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndContext")
            .field("operation", &self.operation)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl<'a> EndContext<'a> {
    pub(crate) fn owned(
        operation: Operation,
        outcome: Result<(), &'static str>,
        span: &'a mut BoxedSpan,
    ) -> Self {
        Self {
            operation,
            outcome,
            span: Target::Owned(span),
        }
    }

    pub(crate) fn current(
        operation: Operation,
        outcome: Result<(), &'static str>,
        span: SpanRef<'a>,
    ) -> Self {
        Self {
            operation,
            outcome,
            span: Target::Current(span),
        }
    }

    /// The operation of the span.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// How the operation ended: `Err` carries the `error.type` the span records.
    pub fn outcome(&self) -> Result<(), &'static str> {
        self.outcome
    }

    /// The span's context.
    pub fn span_context(&self) -> &SpanContext {
        match &self.span {
            Target::Owned(span) => span.span_context(),
            Target::Current(span) => span.span_context(),
        }
    }

    /// Whether the span records (a sampled-out span ignores what is added to it).
    pub fn is_recording(&self) -> bool {
        match &self.span {
            Target::Owned(span) => span.is_recording(),
            Target::Current(span) => span.is_recording(),
        }
    }

    /// Sets an attribute on the span. Give it a key the span has no attribute of yet (the
    /// crate's keys are in [`crate::semconv`]): OpenTelemetry appends attributes, and OTLP wants
    /// each key once per span.
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        match &mut self.span {
            Target::Owned(span) => span.set_attribute(attribute),
            Target::Current(span) => span.set_attribute(attribute),
        }
    }

    /// Adds an event to the span.
    pub fn add_event(&mut self, name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        match &mut self.span {
            Target::Owned(span) => span.add_event(name, attributes),
            Target::Current(span) => span.add_event(name, attributes),
        }
    }
}

/// A hook that runs before each span ends.
pub trait OnEnd: Send + Sync + 'static {
    /// Called with how the operation ended and the span; may add attributes and events.
    fn on_end(&self, end: &mut EndContext<'_>);
}

impl<F> OnEnd for F
where
    F: Fn(&mut EndContext<'_>) + Send + Sync + 'static,
{
    fn on_end(&self, end: &mut EndContext<'_>) {
        self(end)
    }
}

/// No hook.
impl OnEnd for () {
    fn on_end(&self, _end: &mut EndContext<'_>) {}
}

/// Level `index` (from 0) of a topic name or filter: `topic_level("home/kitchen/temperature", 1)`
/// is `Some("kitchen")`. A helper for hooks that take attributes from the topic.
pub fn topic_level(topic: &str, index: usize) -> Option<&str> {
    topic.split('/').nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semconv::MqttQoS;

    #[test]
    fn a_hook_attribute_replaces_one_of_the_same_key_and_the_name_can_change() {
        let facts = MessageFacts::new("home/kitchen/temperature", MqttQoS::AtLeastOnce);
        let mut start = StartContext::new(Operation::Publish, &facts, "home/+/temperature");
        assert_eq!(start.default_name(), "publish home/+/temperature");
        start.add_attribute(KeyValue::new("device.id", "a"));
        start.add_attribute(KeyValue::new("device.id", "kitchen"));
        start.set_name("custom");
        let (name, attributes) = start.into_parts();
        assert_eq!(name.as_deref(), Some("custom"));
        assert_eq!(attributes, [KeyValue::new("device.id", "kitchen")]);
        assert_eq!(topic_level("home/kitchen/temperature", 1), Some("kitchen"));
        assert_eq!(topic_level("home", 3), None);
    }
}
