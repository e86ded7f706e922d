//! The life of one publish span: started as a child of the current context, its context injected
//! into the message, counted when first written, and ended with its outcome and duration.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::global::BoxedSpan;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::{Span, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tokio::sync::oneshot;

use super::correlation::Failure;
use super::telemetry::Telemetry;
use crate::instrumentation::Propagator;
use crate::semconv::{ERROR_TYPE, MESSAGING_MQTT_DUPLICATE, MessageFacts, MqttQoS, Operation};

/// A publish span that has not ended yet, with what its metrics need.
#[derive(Debug)]
pub(crate) struct OpenPublish {
    pub(super) span: BoxedSpan,
    pub(super) pkid: Option<u16>,
    /// Whether the PUBLISH was sent again (rumqttc's replay after a reconnect, or a resend after
    /// a session loss): its DUP flag, recorded as `messaging.mqtt.duplicate` when the span ends.
    retransmitted: bool,
    started: Instant,
    body_size: usize,
    /// Whether the PUBLISH was written (counted in `messaging.client.sent.messages`).
    written: bool,
    metric_attributes: Arc<[KeyValue]>,
    /// Told how the publish ended, for callers that wait for the acknowledgement.
    outcome: Option<oneshot::Sender<Result<(), &'static str>>>,
}

impl OpenPublish {
    /// The PUBLISH is sent again, with the DUP flag ([MQTT-3.3.1-1]).
    pub(super) fn retransmitted(&mut self) {
        self.retransmitted = true;
        self.span
            .add_event("mqtt.publish.retransmitted", Vec::new());
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
    /// Starts the PRODUCER span of a publish as a child of the current context. Returns the
    /// open span, and the context to inject (the parent's baggage with the new span).
    pub(crate) fn start_publish(
        &self,
        topic: &str,
        qos: MqttQoS,
        retain: bool,
        body_size: usize,
    ) -> (OpenPublish, Context) {
        let parent = Context::current();
        let template = self.settings.publish_template(topic);
        let facts = MessageFacts::new(topic, qos)
            .with_template(template.map(|t| &**t))
            .with_retained(retain)
            .with_sizes(Some(body_size), None);
        let facts = self.sized(facts, None);
        let tracer = &self.settings.tracer;
        let span = tracer
            .span_builder(Operation::Publish.span_name(facts.destination()))
            .with_kind(Operation::Publish.span_kind())
            .with_attributes(self.attributes(Operation::Publish, &facts))
            .start_with_context(tracer, &parent);
        let metric_attributes =
            self.metric_attributes(Operation::Publish, &facts, template.cloned());
        let open = OpenPublish {
            span,
            pkid: None,
            retransmitted: false,
            started: Instant::now(),
            body_size,
            written: false,
            metric_attributes,
            outcome: None,
        };
        (open, parent)
    }

    /// Writes the propagation fields of an open publish span, with the baggage of `parent`,
    /// through `injector`.
    pub(crate) fn inject(&self, open: &OpenPublish, parent: &Context, injector: &mut dyn Injector) {
        let span_context = open.span.span_context();
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
        open.span.add_event(
            "mqtt.propagation.skipped",
            vec![KeyValue::new("reason", problem.to_string())],
        );
    }

    /// Counts a publish as sent, once, when its PUBLISH is first written.
    pub(super) fn count_written(&self, open: &mut OpenPublish) {
        if !open.written {
            open.written = true;
            let metrics = &self.settings.metrics.publisher;
            metrics.record_sent(&open.metric_attributes);
            if self.settings.record_sizes {
                metrics.record_body_size(open.body_size, &open.metric_attributes);
            }
        }
    }

    /// Ends a publish span and records its duration.
    pub(super) fn finish(&self, mut open: OpenPublish, result: Result<(), Failure>) {
        let error_type = result.err().map(Failure::error_type);
        open.span
            .set_attribute(KeyValue::new(MESSAGING_MQTT_DUPLICATE, open.retransmitted));
        match error_type {
            // A QoS 0 publish ends when it is written.
            None => self.count_written(&mut open),
            Some(error_type) => {
                open.span
                    .set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                open.span.set_status(Status::error(error_type));
            }
        }
        self.settings.metrics.publisher.record_publish(
            open.started.elapsed(),
            &open.metric_attributes,
            error_type,
        );
        open.span.end();
        if let Some(outcome) = open.outcome.take() {
            // The waiter may have given up; nothing to tell then.
            let _ = outcome.send(error_type.map_or(Ok(()), Err));
        }
    }
}
