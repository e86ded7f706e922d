//! The life of one publish span: started as a child of the current context, its context injected
//! into the message, counted when first written, and ended with its outcome and duration.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::global::BoxedSpan;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::{Span, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use tokio::sync::oneshot;

use super::correlation::Failure;
use super::logs;
use super::telemetry::{MetricSet, SpanStart, Telemetry};
use crate::hooks::EndContext;
use crate::instrumentation::Propagator;
use crate::semconv::{ERROR_TYPE, MESSAGING_MQTT_DUPLICATE, MessageFacts, MqttQoS, Operation};

/// A publish span that has not ended yet, with what its metrics need.
#[derive(Debug)]
pub(crate) struct OpenPublish {
    /// `None` when the tracer records nothing (see `Telemetry::start_span`).
    pub(super) span: Option<BoxedSpan>,
    pub(super) pkid: Option<u16>,
    /// Whether the PUBLISH was sent again (rumqttc's replay after a reconnect, or a resend after
    /// a session loss): its DUP flag, recorded as `messaging.mqtt.duplicate` when the span ends.
    retransmitted: bool,
    started: Instant,
    body_size: usize,
    /// Whether the PUBLISH was written (counted in `messaging.client.sent.messages`).
    written: bool,
    metrics: Arc<MetricSet>,
    /// Told how the publish ended, for callers that wait for the acknowledgement.
    outcome: Option<oneshot::Sender<Result<(), &'static str>>>,
}

impl OpenPublish {
    /// The PUBLISH is sent again, with the DUP flag ([MQTT-3.3.1-1]).
    pub(super) fn retransmitted(&mut self) {
        self.retransmitted = true;
        if let Some(span) = &mut self.span {
            span.add_event("mqtt.publish.retransmitted", Vec::new());
        }
    }

    /// The context of the span, when it records (a link to a span that is not exported leads
    /// nowhere).
    pub(crate) fn recording_context(&self) -> Option<SpanContext> {
        self.span
            .as_ref()
            .filter(|span| span.is_recording())
            .map(|span| span.span_context().clone())
    }

    /// Asks to be told how this publish ends: `Ok` when acknowledged (QoS 1 and 2) or written
    /// (QoS 0), `Err(error.type)` otherwise.
    pub(crate) fn watch(&mut self) -> Outcome {
        let (sender, receiver) = oneshot::channel();
        self.outcome = Some(sender);
        receiver
    }
}

/// How a watched publish ends: `Err` carries its `error.type`.
pub(crate) type Outcome = oneshot::Receiver<Result<(), &'static str>>;

/// Waits for the outcome of a publish that was handed over (or says why it was not).
pub(crate) async fn confirmed<E: Display>(
    handed_over: Result<Outcome, E>,
) -> Result<(), crate::error::Error> {
    match handed_over {
        Err(error) => Err(crate::error::Error::RequestRejected(error.to_string())),
        Ok(outcome) => match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error_type)) => Err(crate::error::Error::PublishFailed(error_type)),
            Err(_) => Err(crate::error::Error::PublishFailed(
                Failure::EventLoopDropped.error_type(),
            )),
        },
    }
}

impl Telemetry {
    /// Starts the PRODUCER span of a publish to `topic` (the topic its Topic Alias stands for,
    /// when the topic name is empty) as a child of the current context; `conversation_id` is the
    /// MQTT 5 Correlation Data. Returns the open span, and the context to inject (the parent's
    /// baggage with the new span).
    pub(crate) fn start_publish(
        &self,
        topic: &str,
        conversation_id: Option<&[u8]>,
        qos: MqttQoS,
        retain: bool,
        body_size: usize,
    ) -> (OpenPublish, Context) {
        let parent = Context::current();
        let template = self.settings.publish_template(topic);
        let facts = MessageFacts::new(topic, qos)
            .with_template(template.map(|t| &*t.filter))
            .with_retained(retain)
            .with_sizes(Some(body_size), None)
            .with_conversation_id(conversation_id);
        let facts = self.sized(facts, None);
        let span = self.start_span(SpanStart {
            operation: Operation::Publish,
            destination: facts.destination(),
            facts: &facts,
            template: template.map(|t| &t.filter),
            with_duplicate: false,
            parent: &parent,
            link: None,
        });
        let metrics = self.publish_metrics(&facts, template.map(|t| t.index));
        let open = OpenPublish {
            span,
            pkid: None,
            retransmitted: false,
            started: Instant::now(),
            body_size,
            written: false,
            metrics,
            outcome: None,
        };
        (open, parent)
    }

    /// Whether [`Telemetry::inject`] can write anything: not with the built-in propagator when
    /// there is no valid span context and no baggage (the usual case of a tracer that records
    /// nothing and a publish outside any trace).
    pub(crate) fn injects(&self, open: &OpenPublish, parent: &Context) -> bool {
        match &self.settings.propagator {
            Propagator::W3C(_) => {
                let valid = match &open.span {
                    Some(span) => span.span_context().is_valid(),
                    None => parent.span().span_context().is_valid(),
                };
                valid || !parent.baggage().is_empty()
            }
            Propagator::Custom(_) => true,
        }
    }

    /// Writes the propagation fields of an open publish span, with the baggage of `parent`,
    /// through `injector`.
    pub(crate) fn inject(&self, open: &OpenPublish, parent: &Context, injector: &mut dyn Injector) {
        let parent_span = parent.span();
        let span_context = match &open.span {
            Some(span) => span.span_context(),
            // What the no-op span carries: the parent's context.
            None => parent_span.span_context(),
        };
        match &self.settings.propagator {
            Propagator::W3C(propagator) => propagator.inject_parts(span_context, parent, injector),
            Propagator::Custom(propagator) => propagator.inject_context(
                &parent.with_remote_span_context(span_context.clone()),
                injector,
            ),
        }
    }

    /// Records on an open publish span that its context could not be carried.
    pub(crate) fn note_propagation_problem(&self, open: &mut OpenPublish, problem: &dyn Display) {
        logs::not_carried(self, problem);
        if let Some(span) = &mut open.span {
            span.add_event(
                "mqtt.propagation.skipped",
                vec![KeyValue::new("reason", problem.to_string())],
            );
        }
    }

    /// Counts a publish as sent, once, when its PUBLISH is first written.
    pub(super) fn count_written(&self, open: &mut OpenPublish) {
        if !open.written {
            open.written = true;
            if let Some(count) = &open.metrics.count {
                count.add(1);
            }
            if self.settings.record_sizes {
                self.settings
                    .metrics
                    .publisher
                    .record_body_size(open.body_size, &open.metrics.attributes);
            }
        }
    }

    /// Ends a publish span and records its duration.
    pub(super) fn finish(&self, mut open: OpenPublish, result: Result<(), Failure>) {
        let error_type = result.err().map(Failure::error_type);
        match error_type {
            // A QoS 0 publish ends when it is written.
            None => self.count_written(&mut open),
            Some(error_type) => logs::publish_failed(self, error_type, open.pkid),
        }
        open.metrics.record_duration(
            &self.settings,
            Operation::Publish,
            open.started.elapsed(),
            error_type,
        );
        if let Some(mut span) = open.span.take() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new(MESSAGING_MQTT_DUPLICATE, open.retransmitted));
                if let Some(error_type) = error_type {
                    span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                    span.set_status(Status::error(error_type));
                }
            }
            if !self.settings.on_end.is_empty() {
                let outcome = error_type.map_or(Ok(()), Err);
                self.end_hooks(EndContext::owned(Operation::Publish, outcome, &mut span));
            }
            span.end();
        }
        if let Some(outcome) = open.outcome.take() {
            // The waiter may have given up; nothing to tell then.
            let _ = outcome.send(error_type.map_or(Ok(()), Err));
        }
    }
}
