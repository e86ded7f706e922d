//! [`Telemetry`]: what the spans and metrics of one connection are made from: the settings, the
//! connection's attributes, the filters it subscribed, and metric attribute sets built once per
//! destination and QoS; and how a span is started so that a span that does not record costs as
//! little as it can.

use std::sync::{Arc, OnceLock, RwLock};

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Link, Span, SpanContext, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::aliases::TopicAliases;
use super::conversations::Conversations;
use crate::hooks::{EndContext, StartContext};
use crate::instrumentation::{Instrumentation, Settings};
use crate::metrics::{ConnectionGauges, CounterCell};
use crate::semconv::{
    ConnectionAttributes, MESSAGING_CLIENT_ID, MessageFacts, Operation, SERVER_ADDRESS, SERVER_PORT,
};
use crate::topic::TopicFilterSet;

/// The metric attributes of one operation on one destination at one QoS, and the running count
/// recorded on them (sent messages for a publish, consumed ones for a receive).
#[derive(Debug)]
pub(crate) struct MetricSet {
    pub(crate) attributes: Arc<[KeyValue]>,
    pub(crate) count: Option<Arc<CounterCell>>,
    /// The duration histogram bound to these attributes, for successful operations; bound at
    /// the first success, so a set that never succeeds exports no empty histogram point.
    #[cfg(feature = "bound-instruments")]
    duration: Option<OnceLock<crate::metrics::BoundDuration>>,
}

impl MetricSet {
    /// Records the duration of a publish (`Operation::Publish`), acknowledgement
    /// (`Operation::Settle`, on the same histogram) or handler run (`Operation::Process`) on this
    /// set: bound when it succeeded and the set is bound.
    pub(crate) fn record_duration(
        &self,
        settings: &Settings,
        operation: Operation,
        duration: std::time::Duration,
        error_type: Option<&'static str>,
    ) {
        let metrics = &settings.metrics;
        #[cfg(feature = "bound-instruments")]
        if error_type.is_none()
            && let Some(bound) = &self.duration
        {
            let bound = bound.get_or_init(|| match operation {
                Operation::Process => metrics.subscriber.bind_duration(&self.attributes),
                Operation::Publish | Operation::Receive | Operation::Settle => {
                    metrics.publisher.bind_duration(&self.attributes)
                }
            });
            bound.record(duration.as_secs_f64());
            return;
        }
        match operation {
            Operation::Process => {
                metrics
                    .subscriber
                    .record_process(duration, &self.attributes, error_type)
            }
            Operation::Publish | Operation::Receive | Operation::Settle => metrics
                .publisher
                .record_publish(duration, &self.attributes, error_type),
        }
    }
}

/// The metric sets of one destination, one per QoS, built on first use.
#[derive(Debug, Default)]
pub(crate) struct MetricSlots([OnceLock<Arc<MetricSet>>; 3]);

/// A filter subscribed through the traced client, with the metric sets of the messages it
/// matches.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) filter: Arc<str>,
    slots: MetricSlots,
    /// The metric sets of the acknowledgements of those messages.
    settle_slots: MetricSlots,
}

/// Up to this many subscriptions, matching each filter in turn is faster than the trie.
const LINEAR_SCAN_MAX: usize = 8;

/// The subscriptions of a connection: a trie for many, a list for a few.
#[derive(Debug, Default)]
struct Subscriptions {
    set: TopicFilterSet<Arc<Subscription>>,
    list: Vec<Arc<Subscription>>,
}

/// How a span is started.
pub(super) struct SpanStart<'a> {
    pub(super) operation: Operation,
    /// The destination in the span name.
    pub(super) destination: &'a str,
    pub(super) facts: &'a MessageFacts<'a>,
    /// The destination template as a shared string (cloned instead of copied).
    pub(super) template: Option<&'a Arc<str>>,
    /// Whether `messaging.mqtt.duplicate` is set now (a publish span sets it when it ends).
    pub(super) with_duplicate: bool,
    pub(super) parent: &'a Context,
    pub(super) link: Option<SpanContext>,
}

/// The telemetry of one connection, shared by its traced client and event loop.
pub(crate) struct Telemetry {
    pub(crate) settings: Arc<Settings>,
    pub(crate) connection: ConnectionAttributes,
    /// Server address and port (and the client id when opted in) for connection metrics.
    pub(crate) connection_metric_attributes: Vec<KeyValue>,
    /// What the connected / in-flight / pending gauges read.
    pub(crate) gauges: Arc<ConnectionGauges>,
    /// The filters subscribed through the traced client, for receive span names.
    subscriptions: RwLock<Subscriptions>,
    /// Metric sets of publishes, by publisher template (its index), and of publishes and
    /// receives without a template or subscription.
    template_slots: Vec<MetricSlots>,
    untemplated_publish: MetricSlots,
    unsubscribed_receive: MetricSlots,
    /// MQTT 5 Topic Alias mappings, both ways.
    pub(crate) aliases: TopicAliases,
    /// MQTT 5 requests waiting for replies.
    pub(crate) conversations: Conversations,
    unsubscribed_settle: MetricSlots,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub(crate) fn new(instrumentation: &Instrumentation, connection: ConnectionAttributes) -> Self {
        let settings = Arc::clone(&instrumentation.inner);
        let mut connection_metric_attributes = vec![
            KeyValue::new(SERVER_ADDRESS, connection.server().host().to_owned()),
            KeyValue::new(SERVER_PORT, i64::from(connection.server().port())),
        ];
        if settings.metric_client_id {
            connection_metric_attributes.push(KeyValue::new(
                MESSAGING_CLIENT_ID,
                connection.client_id().to_owned(),
            ));
        }
        let gauges = settings
            .metrics
            .connection
            .register(connection_metric_attributes.clone());
        let template_slots = (0..settings.publish_templates.len())
            .map(|_| MetricSlots::default())
            .collect();
        Self {
            settings,
            connection,
            connection_metric_attributes,
            gauges,
            subscriptions: RwLock::new(Subscriptions::default()),
            template_slots,
            untemplated_publish: MetricSlots::default(),
            unsubscribed_receive: MetricSlots::default(),
            aliases: TopicAliases::default(),
            conversations: Conversations::default(),
            unsubscribed_settle: MetricSlots::default(),
        }
    }

    /// Starts a span, or returns `None` when the tracer records nothing at all (see
    /// `Settings::tracing`): the caller then carries the parent's span context, as the no-op
    /// span would. A span gets the sampling-relevant attributes at creation and the others only
    /// when it records.
    pub(super) fn start_span(&self, start: SpanStart<'_>) -> Option<BoxedSpan> {
        let settings = &self.settings;
        if !settings.tracing() || !settings.traces(start.facts.topic) {
            return None;
        }
        let SpanStart {
            operation,
            destination,
            facts,
            template,
            with_duplicate,
            parent,
            link,
        } = start;
        let (name, extra) = if settings.on_start.is_empty() {
            (None, Vec::new())
        } else {
            let mut hooked = StartContext::new(operation, facts, destination);
            for hook in &settings.on_start {
                hook.on_start(&mut hooked);
            }
            hooked.into_parts()
        };
        let mut attributes = self
            .connection
            .sampling_attributes(operation, facts, template);
        if !extra.is_empty() {
            // A hook's attribute replaces the crate's of the same key: each key once.
            attributes.retain(|kv| !extra.iter().any(|hooked| hooked.key == kv.key));
            attributes.extend(extra.iter().cloned());
        }
        let tracer = &settings.tracer;
        let name = name.unwrap_or_else(|| operation.span_name(destination).into());
        let mut builder = tracer
            .span_builder(name)
            .with_kind(operation.span_kind())
            .with_attributes(attributes);
        if let Some(link) = link {
            builder = builder.with_links(vec![Link::with_context(link)]);
        }
        let mut span = builder.start_with_context(tracer, parent);
        if span.is_recording() {
            let mut rest = Vec::with_capacity(9);
            self.connection
                .push_recording_attributes(&mut rest, facts, with_duplicate);
            if !extra.is_empty() {
                rest.retain(|kv| !extra.iter().any(|hooked| hooked.key == kv.key));
            }
            span.set_attributes(rest);
        } else if !span.span_context().is_valid() && !parent.span().span_context().is_valid() {
            // A root span with no valid context: this tracer records nothing, now or later.
            settings.turn_tracing_off();
        }
        Some(span)
    }

    /// Runs the end hooks on a span about to end.
    pub(super) fn end_hooks(&self, mut end: EndContext<'_>) {
        for hook in &self.settings.on_end {
            hook.on_end(&mut end);
        }
    }

    /// `facts` with the opt-in sizes kept only when the instrumentation records them.
    pub(super) fn sized<'a>(
        &self,
        facts: MessageFacts<'a>,
        envelope_size: Option<usize>,
    ) -> MessageFacts<'a> {
        if self.settings.record_sizes {
            let body = facts.body_size;
            facts.with_sizes(body, envelope_size.or(body))
        } else {
            facts.with_sizes(None, None)
        }
    }

    /// The metric set of a publish, by its template (`None`: no template matched).
    pub(super) fn publish_metrics(
        &self,
        facts: &MessageFacts<'_>,
        template: Option<usize>,
    ) -> Arc<MetricSet> {
        let slots = match template.and_then(|index| self.template_slots.get(index)) {
            Some(slots) => slots,
            None => &self.untemplated_publish,
        };
        self.metric_set(Operation::Publish, facts, slots)
    }

    /// The metric set of a receive, by the subscription that matched.
    pub(super) fn receive_metrics(
        &self,
        facts: &MessageFacts<'_>,
        subscription: Option<&Subscription>,
    ) -> Arc<MetricSet> {
        let slots = subscription.map_or(&self.unsubscribed_receive, |s| &s.slots);
        self.metric_set(Operation::Receive, facts, slots)
    }

    /// The metric set of an acknowledgement, by the subscription that matched.
    pub(super) fn settle_metrics(
        &self,
        facts: &MessageFacts<'_>,
        subscription: Option<&Subscription>,
    ) -> Arc<MetricSet> {
        let slots = subscription.map_or(&self.unsubscribed_settle, |s| &s.settle_slots);
        self.metric_set(Operation::Settle, facts, slots)
    }

    /// The metric set of `operation` on a message from `slots`: built once per QoS, unless raw
    /// topics go into metric attributes (then every message has its own).
    pub(crate) fn metric_set(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
        slots: &MetricSlots,
    ) -> Arc<MetricSet> {
        let build = || {
            let attributes: Arc<[KeyValue]> = self
                .connection
                .metric_attributes(operation, facts, self.settings.metric_topics)
                .into();
            let metrics = &self.settings.metrics;
            let count = match operation {
                Operation::Publish => Some(metrics.publisher.sent_cell(&attributes)),
                Operation::Receive => Some(metrics.subscriber.consumed_cell(&attributes)),
                Operation::Process | Operation::Settle => None,
            };
            // Per-message sets (raw topics) are not worth binding.
            #[cfg(feature = "bound-instruments")]
            let duration = match operation {
                _ if self.settings.metric_topics => None,
                Operation::Publish | Operation::Process | Operation::Settle => {
                    Some(OnceLock::new())
                }
                Operation::Receive => None,
            };
            Arc::new(MetricSet {
                attributes,
                count,
                #[cfg(feature = "bound-instruments")]
                duration,
            })
        };
        if self.settings.metric_topics {
            return build();
        }
        let slot = &slots.0[usize::from(facts.qos.as_u8()).min(2)];
        Arc::clone(slot.get_or_init(build))
    }

    /// Remembers a filter subscribed through the traced client.
    pub(crate) fn subscribed(&self, filter: &str) {
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let subscription = Arc::new(Subscription {
            filter: Arc::from(filter),
            slots: MetricSlots::default(),
            settle_slots: MetricSlots::default(),
        });
        // An invalid filter is refused by the broker; it cannot name a destination.
        if subscriptions
            .set
            .insert(filter, Arc::clone(&subscription))
            .is_ok()
        {
            subscriptions.list.retain(|s| &*s.filter != filter);
            subscriptions.list.push(subscription);
        }
    }

    /// Forgets a filter unsubscribed through the traced client.
    pub(crate) fn unsubscribed(&self, filter: &str) {
        let mut subscriptions = self
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subscriptions.set.remove(filter);
        subscriptions.list.retain(|s| &*s.filter != filter);
    }

    /// The most specific subscription whose filter matches `topic`.
    pub(super) fn subscription_for(&self, topic: &str) -> Option<Arc<Subscription>> {
        let subscriptions = self
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = &subscriptions.list;
        let found = if list.len() <= LINEAR_SCAN_MAX {
            let matching = list
                .iter()
                .filter(|s| crate::topic::matches(topic, &s.filter));
            crate::topic::most_specific(matching, |s| &s.filter)
        } else {
            crate::topic::most_specific(subscriptions.set.matches(topic), |s| &s.filter)
        };
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few subscriptions are scanned one by one, many go through the trie: the answer is the
    /// same, the most specific matching filter.
    #[test]
    fn the_most_specific_subscription_whatever_their_number() {
        let instrumentation = Instrumentation::builder().build();
        let connection = ConnectionAttributes::new(
            "c",
            "broker.test",
            1883,
            crate::semconv::ProtocolVersion::V5,
        );
        let telemetry = Telemetry::new(&instrumentation, connection);
        let found = |topic| {
            telemetry
                .subscription_for(topic)
                .map(|s| s.filter.to_string())
        };
        for filter in ["home/#", "home/+/temperature", "$share/g/home/kitchen/+"] {
            telemetry.subscribed(filter);
        }
        let few = [
            found("home/kitchen/temperature"),
            found("home/hall"),
            found("office"),
        ];
        assert_eq!(
            few,
            [
                Some("home/+/temperature".to_owned()),
                Some("home/#".to_owned()),
                None
            ]
        );
        for i in 0..LINEAR_SCAN_MAX {
            telemetry.subscribed(&format!("other/{i}/#"));
        }
        let many = [
            found("home/kitchen/temperature"),
            found("home/hall"),
            found("office"),
        ];
        assert_eq!(few, many);
        telemetry.unsubscribed("$share/g/home/kitchen/+");
        assert_eq!(
            found("home/kitchen/temperature").as_deref(),
            Some("home/+/temperature")
        );
    }
}
