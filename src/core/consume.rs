//! The consumer side: the `receive` span of a message handed out by the event loop (and the
//! [`Delivery`] the application continues the trace from), and the `process` span of a handler
//! run.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Link, Span, SpanContext, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::telemetry::Telemetry;
use crate::instrumentation::{ParentMode, Propagator};
use crate::propagation::TraceparentError;
use crate::semconv::{ERROR_TYPE, MessageFacts, Operation};
use crate::topic::{matching_filter, most_specific, parse_shared};

/// What the application gets with a received message: the context it was created in and the
/// receive span.
#[derive(Debug, Clone)]
pub struct Delivery {
    creation: Option<Context>,
    receive: SpanContext,
    destination: Option<Arc<str>>,
}

impl Delivery {
    /// The producer's context carried by the message (with its baggage), when the message
    /// carried a valid one.
    pub fn creation_context(&self) -> Option<&Context> {
        self.creation.as_ref()
    }

    /// The span context of the `receive` span recorded for this message.
    pub fn receive_span_context(&self) -> &SpanContext {
        &self.receive
    }

    /// The subscription filter that matched the topic (as it was subscribed, so a shared
    /// subscription keeps its `$share/{group}/` prefix), when the client subscribed through this
    /// crate.
    pub fn subscription(&self) -> Option<&str> {
        self.destination.as_deref()
    }
}

/// A running `process` span: the context to run the handler in (the span is its active span),
/// and what the process-duration metric needs.
#[derive(Debug)]
pub(crate) struct Processing {
    pub(crate) context: Context,
    started: Instant,
    metric_attributes: Arc<[KeyValue]>,
}

/// Where a message's trace context was read from, and what was wrong with it.
pub(crate) struct Carrier<'a> {
    /// Reads the propagation fields; none for a plain MQTT 3.1.1 payload.
    pub(crate) extractor: Option<&'a dyn Extractor>,
    /// The payload size on the wire, when an envelope made it larger than the body.
    pub(crate) envelope_size: Option<usize>,
    /// What was wrong with the carrier (a malformed envelope), recorded as an event.
    pub(crate) problem: Option<&'a dyn Display>,
}

impl Telemetry {
    /// Remembers a filter subscribed through the traced client.
    pub(crate) fn subscribed(&self, filter: &str) {
        let mut set = self
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An invalid filter is refused by the broker; it cannot name a destination.
        let _ = set.insert(filter, Arc::from(filter));
    }

    /// Forgets a filter unsubscribed through the traced client.
    pub(crate) fn unsubscribed(&self, filter: &str) {
        let mut set = self
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(filter);
    }

    fn subscription_for(&self, topic: &str) -> Option<Arc<str>> {
        let set = self
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        most_specific(set.matches(topic)).cloned()
    }

    /// Records the CLIENT `receive` span of a message handed out by the event loop, and returns
    /// what the application needs to continue the trace.
    pub(crate) fn receive(&self, facts: MessageFacts<'_>, carrier: Carrier<'_>) -> Delivery {
        let ambient = Context::current();
        let mut traceparent_error: Option<TraceparentError> = None;
        let creation = carrier
            .extractor
            .map(|extractor| match &self.settings.propagator {
                Propagator::W3C(propagator) => {
                    let extracted = propagator.extract_checked(&Context::new(), extractor);
                    traceparent_error = extracted.traceparent_error;
                    extracted.context
                }
                Propagator::Custom(propagator) => propagator.extract(extractor),
            });
        let creation = creation.filter(|cx| cx.span().span_context().is_valid());
        let subscription = self.subscription_for(facts.topic);
        let (template, group) = match subscription.as_deref() {
            Some(filter) => (
                Some(matching_filter(filter)),
                parse_shared(filter).map(|(group, _)| group),
            ),
            None => (None, None),
        };
        let facts = self.sized(
            facts.with_template(template).with_consumer_group(group),
            carrier.envelope_size,
        );
        let (parent, link) = self.consumer_parent(&ambient, creation.as_ref());
        let tracer = &self.settings.tracer;
        let mut builder = tracer
            .span_builder(Operation::Receive.span_name(facts.destination()))
            .with_kind(Operation::Receive.span_kind())
            .with_attributes(self.attributes(Operation::Receive, &facts));
        if let Some(link) = link {
            builder = builder.with_links(vec![Link::with_context(link)]);
        }
        let mut span = builder.start_with_context(tracer, &parent);
        if let Some(error) = traceparent_error {
            span.add_event(
                "mqtt.propagation.rejected",
                vec![KeyValue::new("reason", error.to_string())],
            );
        }
        if let Some(problem) = carrier.problem {
            span.add_event(
                "mqtt.propagation.rejected",
                vec![KeyValue::new("reason", problem.to_string())],
            );
        }
        let receive = span.span_context().clone();
        span.end();
        let metric_attributes =
            self.metric_attributes(Operation::Receive, &facts, subscription.clone());
        let metrics = &self.settings.metrics.subscriber;
        metrics.record_consumed(&metric_attributes);
        if self.settings.record_sizes {
            metrics.record_body_size(facts.body_size.unwrap_or_default(), &metric_attributes);
        }
        Delivery {
            creation,
            receive,
            destination: subscription,
        }
    }

    /// Starts the CONSUMER `process {filter}` span of a handler run on a delivered message.
    ///
    /// `filter` is the route's filter as subscribed (a `$share/{group}/` prefix gives the
    /// consumer group). The parent follows the [`ParentMode`], like the receive span's.
    pub(crate) fn start_process(
        &self,
        delivery: &Delivery,
        filter: &str,
        facts: MessageFacts<'_>,
    ) -> Processing {
        let ambient = Context::current();
        let facts = self.sized(
            facts
                .with_template(Some(matching_filter(filter)))
                .with_consumer_group(parse_shared(filter).map(|(group, _)| group)),
            None,
        );
        let (parent, link) = self.consumer_parent(&ambient, delivery.creation.as_ref());
        let tracer = &self.settings.tracer;
        let mut builder = tracer
            .span_builder(Operation::Process.span_name(matching_filter(filter)))
            .with_kind(Operation::Process.span_kind())
            .with_attributes(self.attributes(Operation::Process, &facts));
        if let Some(link) = link {
            builder = builder.with_links(vec![Link::with_context(link)]);
        }
        let span = builder.start_with_context(tracer, &parent);
        let metric_attributes =
            self.metric_attributes(Operation::Process, &facts, Some(Arc::from(filter)));
        Processing {
            context: parent.with_span(span),
            started: Instant::now(),
            metric_attributes,
        }
    }

    /// Ends a process span: successfully, or with `error_type` and the error's message.
    pub(crate) fn end_process(
        &self,
        processing: Processing,
        error: Option<(&'static str, &dyn Display)>,
    ) {
        let span = processing.context.span();
        if let Some((error_type, message)) = error {
            span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
            span.set_status(Status::error(message.to_string()));
        }
        span.end();
        self.settings.metrics.subscriber.record_process(
            processing.started.elapsed(),
            &processing.metric_attributes,
            error.map(|(error_type, _)| error_type),
        );
    }

    /// The parent and the optional link of a consumer span, by the [`ParentMode`].
    fn consumer_parent(
        &self,
        ambient: &Context,
        creation: Option<&Context>,
    ) -> (Context, Option<SpanContext>) {
        let ambient_span = ambient.span().span_context().clone();
        match (self.settings.parent_mode, creation) {
            (ParentMode::CreationContext, Some(created)) => (
                created.clone(),
                ambient_span.is_valid().then_some(ambient_span),
            ),
            (ParentMode::Link, Some(created)) => {
                (ambient.clone(), Some(created.span().span_context().clone()))
            }
            (_, None) => (ambient.clone(), None),
        }
    }
}
