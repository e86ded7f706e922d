//! The consumer side: the `receive` span of a message handed out by the event loop (and the
//! [`Delivery`] the application continues the trace from), and the `process` span of a handler
//! run.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Span, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::aliases::Unresolved;
use super::logs;
use super::telemetry::{MetricSet, MetricSlots, SpanStart, Telemetry};
use crate::hooks::EndContext;
use crate::instrumentation::{ParentMode, Propagator};
use crate::propagation::TraceparentError;
use crate::semconv::{ERROR_TYPE, MessageFacts, Operation};
use crate::topic::{matching_filter, parse_shared};

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
    /// Whether `context`'s span is this run's (it is the parent's when the tracer records
    /// nothing, and must not be ended here).
    owns_span: bool,
    started: Instant,
    metrics: Arc<MetricSet>,
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

/// What MQTT 5 adds to a receive span: the request a reply answers, and why the message's Topic
/// Alias named no topic.
#[derive(Debug, Default)]
pub(crate) struct Reception {
    /// The publish span of the request this message replies to: a link.
    pub(crate) request: Option<SpanContext>,
    /// The Topic Alias and what was wrong with it: an `mqtt.topic_alias.rejected` event.
    pub(crate) alias: Option<(u16, Unresolved)>,
}

impl Telemetry {
    /// Records the CLIENT `receive` span of a message handed out by the event loop, and returns
    /// what the application needs to continue the trace.
    pub(crate) fn receive(&self, facts: MessageFacts<'_>, carrier: Carrier<'_>) -> Delivery {
        self.receive_with(facts, carrier, Reception::default())
    }

    /// [`Telemetry::receive`], with what MQTT 5 adds.
    pub(crate) fn receive_with(
        &self,
        facts: MessageFacts<'_>,
        carrier: Carrier<'_>,
        reception: Reception,
    ) -> Delivery {
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
        if let Some(error) = &traceparent_error {
            logs::rejected_context(self, facts.topic, error);
        }
        if let Some(problem) = carrier.problem {
            logs::carrier_problem(self, facts.topic, problem);
        }
        if let Some((alias, unresolved)) = &reception.alias {
            logs::unresolved_alias(self, *alias, unresolved.reason());
        }
        let subscription = self.subscription_for(facts.topic);
        let (template, group) = match subscription.as_deref() {
            Some(subscription) => (
                Some(matching_filter(&subscription.filter)),
                parse_shared(&subscription.filter).map(|(group, _)| group),
            ),
            None => (None, None),
        };
        let facts = self.sized(
            facts.with_template(template).with_consumer_group(group),
            carrier.envelope_size,
        );
        let (parent, link) = self.consumer_parent(&ambient, creation.as_ref());
        let span = self.start_span(SpanStart {
            operation: Operation::Receive,
            destination: facts.destination(),
            facts: &facts,
            template: None,
            with_duplicate: true,
            parent: &parent,
            link,
        });
        let receive = match span {
            Some(mut span) => {
                if span.is_recording() {
                    for problem in traceparent_error
                        .map(|error| error.to_string())
                        .into_iter()
                        .chain(carrier.problem.map(ToString::to_string))
                    {
                        span.add_event(
                            "mqtt.propagation.rejected",
                            vec![KeyValue::new("reason", problem)],
                        );
                    }
                    if let Some((alias, unresolved)) = reception.alias {
                        span.add_event(
                            "mqtt.topic_alias.rejected",
                            vec![
                                KeyValue::new("reason", unresolved.reason()),
                                KeyValue::new("mqtt.topic_alias", i64::from(alias)),
                            ],
                        );
                    }
                    if let Some(request) = reception.request {
                        span.add_link(request, Vec::new());
                    }
                }
                if !self.settings.on_end.is_empty() {
                    self.end_hooks(EndContext::owned(Operation::Receive, Ok(()), &mut span));
                }
                let receive = span.span_context().clone();
                span.end();
                receive
            }
            // What the no-op span carries: its parent's context.
            None => parent.span().span_context().clone(),
        };
        let metrics = self.receive_metrics(&facts, subscription.as_deref());
        if let Some(count) = &metrics.count {
            count.add(1);
        }
        if self.settings.record_sizes {
            self.settings
                .metrics
                .subscriber
                .record_body_size(facts.body_size.unwrap_or_default(), &metrics.attributes);
        }
        Delivery {
            creation,
            receive,
            destination: subscription.map(|s| Arc::clone(&s.filter)),
        }
    }

    /// Starts the CONSUMER `process {filter}` span of a handler run on a delivered message.
    ///
    /// `filter` is the route's filter as subscribed (a `$share/{group}/` prefix gives the
    /// consumer group), `slots` its metric sets. The parent follows the [`ParentMode`], like the
    /// receive span's.
    pub(crate) fn start_process(
        &self,
        delivery: &Delivery,
        filter: &str,
        slots: &MetricSlots,
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
        let span = self.start_span(SpanStart {
            operation: Operation::Process,
            destination: matching_filter(filter),
            facts: &facts,
            template: None,
            with_duplicate: true,
            parent: &parent,
            link,
        });
        let metrics = self.metric_set(Operation::Process, &facts, slots);
        let (context, owns_span) = match span {
            Some(span) => (parent.with_span(span), true),
            None => (parent, false),
        };
        Processing {
            context,
            owns_span,
            started: Instant::now(),
            metrics,
        }
    }

    /// Ends a process span: successfully, or with `error_type` and the error's message.
    pub(crate) fn end_process(
        &self,
        processing: Processing,
        error: Option<(&'static str, &dyn Display)>,
    ) {
        if processing.owns_span {
            let span = processing.context.span();
            if let Some((error_type, message)) = error
                && span.is_recording()
            {
                span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                span.set_status(Status::error(message.to_string()));
            }
            if !self.settings.on_end.is_empty() {
                let outcome = error.map_or(Ok(()), |(error_type, _)| Err(error_type));
                let hooked = processing.context.span();
                self.end_hooks(EndContext::current(Operation::Process, outcome, hooked));
            }
            span.end();
        }
        processing.metrics.record_duration(
            &self.settings,
            Operation::Process,
            processing.started.elapsed(),
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
